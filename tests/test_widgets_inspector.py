"""SoftLabelInspector driven from Python: clicks pick crops; bars, info and attributions follow the library."""
import numpy as np
import pytest
import torch
from plotly.callbacks import Points
from torch import nn

from softlab.calibrate import Calibration
from softlab.labels import generate_labels
from softlab.teachers.base import Teacher
from softlab import viz
from softlab.widgets import CalibrationExplorer, SoftLabelInspector
from tiny import NoiseImages


class TinyConvNet(nn.Module):
    def __init__(self, classes=4):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(6, classes)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3))) * 6


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.manual_seed(0)
    teacher = Teacher(TinyConvNet(), spec="test:tinyconv", input_size=(3, 16, 16), mean=(0.5,) * 3, std=(0.25,) * 3,
                      class_names=["c0", "c1", "c2", "c3"])
    data = NoiseImages(count=5, num_classes=4, channels=3)
    store = generate_labels(data, teacher, tmp_path_factory.mktemp("insp") / "s", num_crops=30,
                            label_type="marginal_smoothing_k2", progress=False)
    return data, store, teacher


def category_by_rule(y, calibration):
    low, mid, top = np.float32([calibration.t_low, calibration.t_mid, calibration.t_top])
    return 0 if y < low else 3 if y > top else 1 if y < mid else 2


def test_it_opens_on_the_images_lowest_y_s_crop(setup):
    data, store, teacher = setup
    inspector = SoftLabelInspector(store=store, dataset=data, teacher=teacher, image=2)
    y_s = np.asarray(store.y_s[2], dtype=np.float32)
    assert inspector.crop == int(np.argmin(y_s))
    assert f"y_s = <b class='softlab-y-s'>{y_s.min():.4f}</b>" in inspector.info.value


def test_clicking_an_outline_picks_that_crop_and_its_labels_are_shown(setup):
    data, store, teacher = setup
    calibration = Calibration(0.2, 0.3, 0.9, epsilon=0.2)
    inspector = SoftLabelInspector(store=store, dataset=data, teacher=teacher, calibration=calibration, image=1)
    trace = next(t for t in inspector.boxes_figure.data[1:] if len(t.x) > 6)
    crop = int(trace.customdata[7])  # the second box of that trace
    trace._dispatch_on_click(Points(point_inds=[7], xs=[0], ys=[0]), None)
    assert inspector.crop == crop
    y = np.float32(store.y_s[1, crop])
    category = ("discarded_hard", "hard", "important", "discarded_easy")[category_by_rule(y, calibration)]
    assert viz.CATEGORY_LABELS[category] in inspector.info.value
    raw = store.labels([1], [crop])[0].numpy()
    bars = inspector.bars_figure.data
    top = np.argsort(-raw, kind="stable")[:2]
    shown = [int(name.rsplit("[", 1)[1].rstrip("]")) for name in bars[0].y]
    assert shown[:2] == top.tolist()
    np.testing.assert_allclose(bars[0].x, raw[shown], rtol=1e-6, atol=0)
    if category == "hard":  # softened ground truth: 1 − ε on the class, ε / 3 elsewhere
        expected = np.where(np.array(shown) == int(store.targets[1]), 0.8, 0.2 / 3)
        np.testing.assert_allclose(bars[1].x, expected, rtol=1e-6, atol=0)
    highlight = inspector.boxes_figure.layout.shapes[0]
    height, width = data[1][0].shape[-2:]
    i, j, h, w = np.asarray(store.coords[1, crop], dtype=np.float64)
    assert (highlight.x0, highlight.y0) == (round(j * width), round(i * height))


def test_clicking_a_tile_of_the_crop_grid_picks_its_crop(setup):
    data, store, teacher = setup
    inspector = SoftLabelInspector(store=store, dataset=data, teacher=teacher)
    tile = inspector.grid_figure.data[3]
    tile._dispatch_on_click(Points(point_inds=[0], xs=[1], ys=[1]), None)
    y_s = np.asarray(store.y_s[0], dtype=np.float64)
    order = np.argsort(y_s, kind="stable")
    spread = order[np.unique(np.linspace(0, len(order) - 1, num=12).round().astype(int))]
    assert inspector.crop == int(spread[3])


def test_it_follows_the_explorers_image_and_calibration(setup):
    data, store, teacher = setup
    explorer = CalibrationExplorer(store=store, dataset=data, debounce=0)
    inspector = SoftLabelInspector(explorer=explorer, teacher=teacher)
    explorer.image = 3
    assert inspector.image == 3
    explorer.calibration = Calibration(0.0, 1.0, 1.0)  # every crop is hard
    assert "hard / context" in inspector.info.value
    assert inspector.calibration == explorer.calibration


def test_explain_draws_the_chosen_attribution_of_the_picked_crop(setup):
    data, store, teacher = setup
    inspector = SoftLabelInspector(store=store, dataset=data, teacher=teacher, image=4, crop=5)
    inspector.method.value = "grad_cam"
    inspector.explain()
    assert inspector.attribution_box.layout.display is None
    assert inspector.spinner.busy is False
    crop = viz.teacher_crop(data[4][0], store, 4, 5, teacher)
    expected = viz.attribution_maps(teacher, crop, int(store.targets[4]), ("grad_cam",))["grad_cam"]
    np.testing.assert_allclose(np.asarray(inspector.attribution_figure.data[2].z, dtype=np.float64), expected,
                               rtol=1e-5, atol=1e-6)
    inspector.crop = 6
    assert "press Explain crop" in inspector.attribution_figure.layout.title.text


def test_a_failing_attribution_shows_its_reason(setup):
    data, store, teacher = setup

    class BrokenNet(TinyConvNet):
        def forward(self, x):
            raise RuntimeError("the teacher's weights are gone")

    broken = Teacher(BrokenNet(), spec="test:broken", input_size=(3, 16, 16), mean=(0.5,) * 3, std=(0.25,) * 3,
                     class_names=teacher.class_names)
    inspector = SoftLabelInspector(store=store, dataset=data, teacher=broken)
    inspector.explain()
    assert inspector.message.kind == "error"
    assert "the teacher's weights are gone" in inspector.message.text
    assert inspector.explain_button.disabled is False


def test_without_a_teacher_explain_is_disabled_and_says_why(setup):
    data, store, _ = setup
    inspector = SoftLabelInspector(store=store, dataset=data)
    assert inspector.explain_button.disabled
    inspector.explain()
    assert inspector.message.text == "No teacher to explain: pass teacher= (or a workspace with one)."
