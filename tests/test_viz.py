"""The figures' data (not their pixels) against statistics computed independently here."""
import re

import numpy as np
import plotly.graph_objects as go
import pytest
import torch
from torch import nn

from softlab.calibrate import CATEGORIES, Calibration, calibrate
from softlab.data.crops import cut_crops
from softlab.labels import generate_labels
from softlab.teachers.base import Teacher
from softlab import viz
from tiny import LinearTeacher, NoiseImages

CAL = Calibration(t_low=0.1, t_mid=0.3, t_top=0.9, epsilon=0.2)
QUANTILE = Calibration(t_low=0.1, t_mid=0.4, t_top=0.9, mode="quantile")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    data = NoiseImages(count=8, num_classes=6)
    store = generate_labels(data, LinearTeacher(num_classes=6, scale=4.0), tmp_path_factory.mktemp("viz") / "s",
                            num_crops=60, label_type="marginal_smoothing_k3", progress=False)
    return data, store


def brute_force_boxes(coords, height, width):
    """Pixel boxes from normalised coords, written out without the library's helper."""
    boxes = []
    for i, j, h, w in np.asarray(coords, dtype=np.float64):
        bh, bw = min(max(round(h * height), 1), height), min(max(round(w * width), 1), width)
        top, left = min(max(round(i * height), 0), height - bh), min(max(round(j * width), 0), width - bw)
        boxes.append((top, left, bh, bw))
    return np.array(boxes)


def category_of(store, index, calibration):
    return calibrate(store, calibration).categories[index]


# ----- colours and counts
def test_category_colours_follow_the_calibration_categories():
    assert tuple(viz.CATEGORY_COLORS) == CATEGORIES
    assert len(set(viz.CATEGORY_COLORS.values())) == len(CATEGORIES)
    for code, name in enumerate(CATEGORIES):
        assert viz.category_color(code) == viz.category_color(name) == viz.CATEGORY_COLORS[name]


def test_category_counts_equal_calibration_stats(setup):
    _, store = setup
    view = calibrate(store, CAL)
    assert viz.category_counts(view.categories) == view.stats()["counts"]


# ----- crop boxes
@pytest.mark.parametrize("calibration", [CAL, QUANTILE])
def test_box_traces_match_stored_boxes_colours_and_counts(setup, calibration):
    data, store = setup
    index = 3
    image = data[index][0]
    height, width = image.shape[-2:]
    figure = viz.crop_boxes_figure(image, store, index, calibration, max_boxes=None)
    categories = category_of(store, index, calibration)
    expected_boxes = brute_force_boxes(store.coords[index], height, width)
    assert isinstance(figure.data[0], go.Image) and len(figure.data) == 1 + len(CATEGORIES)
    for code, (name, trace) in enumerate(zip(CATEGORIES, figure.data[1:])):
        members = np.flatnonzero(categories == code)
        assert trace.name.endswith(f"({len(members)})")
        assert trace.line.color == viz.CATEGORY_COLORS[name]
        if not len(members):  # a gap point keeps the category in the legend
            assert np.isnan(np.asarray(trace.x, dtype=float)).all()
            continue
        x = np.asarray(trace.x, dtype=float).reshape(-1, 6)
        y = np.asarray(trace.y, dtype=float).reshape(-1, 6)
        top, left, h, w = expected_boxes[members].T
        np.testing.assert_array_equal(x[:, :5], np.stack([left, left + w, left + w, left, left], 1))
        np.testing.assert_array_equal(y[:, :5], np.stack([top, top, top + h, top + h, top], 1))
        assert np.isnan(x[:, 5]).all() and np.isnan(y[:, 5]).all()
        stored = np.asarray(store.coords[index], dtype=np.float64)[members]
        assert np.abs(x[:, 0] - stored[:, 1] * width).max(initial=0) <= 0.5 + 1e-6
        assert np.abs(y[:, 0] - stored[:, 0] * height).max(initial=0) <= 0.5 + 1e-6


def test_a_calibrated_store_view_works_like_its_calibration(setup):
    data, store = setup
    by_view = viz.crop_boxes_figure(data[2][0], store, 2, calibrate(store, QUANTILE), max_boxes=None)
    by_setting = viz.crop_boxes_figure(data[2][0], store, 2, QUANTILE, max_boxes=None)
    assert [t.name for t in by_view.data] == [t.name for t in by_setting.data]
    np.testing.assert_array_equal(by_view.data[2].x, by_setting.data[2].x)


def test_many_boxes_are_thinned_but_counted_in_full(setup):
    data, store = setup
    figure = viz.crop_boxes_figure(data[0][0], store, 0, CAL, max_boxes=10)
    drawn = sum(np.isnan(np.asarray(t.x, dtype=float)).sum() for t in figure.data[1:] if len(t.x) > 1)
    assert drawn == 10 and "10 of 60" in figure.layout.title.text
    counts = np.bincount(category_of(store, 0, CAL), minlength=4)
    assert [t.name for t in figure.data[1:]] == [viz.category_legend(c, n) for c, n in zip(CATEGORIES, counts)]


def test_box_hover_shows_y_s_and_top3_classes(setup):
    data, store = setup
    index = 2
    figure = viz.crop_boxes_figure(data[index][0], store, index, CAL, max_boxes=None)
    categories = category_of(store, index, CAL)
    for code, trace in enumerate(figure.data[1:]):
        members = np.flatnonzero(categories == code)
        for crop, text in zip(members, list(trace.text)[::6]):
            dense = store.labels([index], [crop])[0].numpy()
            top3 = [store.class_names[c] for c in np.argsort(-dense, kind="stable")[:3]]
            assert text.startswith(f"crop {crop}")
            assert f"y_s = {float(store.y_s[index, crop]):.3f}" in text
            assert re.findall(r"<br>(c\d) ", text) == top3


# ----- the hard-region mask
def brute_force_pixel(boxes, y_s, categories, row, col):
    covering = [k for k, (i, j, h, w) in enumerate(boxes) if i <= row < i + h and j <= col < j + w]
    if not covering:
        return 0, np.nan, np.nan, -1
    counts = np.bincount(categories[covering], minlength=len(CATEGORIES))
    return len(covering), float(np.mean(y_s[covering])), float(np.min(y_s[covering])), int(np.argmax(counts))


def brute_force_local(boxes, values, row, col, height, width, locality=2.0):
    total = weights = 0.0
    for (i, j, h, w), value in zip(boxes, values):
        if i <= row < i + h and j <= col < j + w:
            weight = (h * w / (height * width)) ** -locality
            total, weights = total + weight * value, weights + weight
    return total / weights if weights else np.nan


def random_coords(rng, n):
    return np.column_stack([rng.uniform(0, 0.7, n), rng.uniform(0, 0.7, n), rng.uniform(0.05, 0.5, n),
                            rng.uniform(0.05, 0.5, n)]).astype(np.float32)


def test_full_resolution_mask_equals_a_loop_over_crops():
    rng = np.random.default_rng(1)
    height, width, n = 37, 53, 80
    coords, y_s, categories = random_coords(rng, n), rng.uniform(size=n), rng.integers(0, 4, n)
    mask = viz.hard_region_mask(coords, y_s, categories, height, width, grid=None, min_grid=max(height, width))
    boxes = brute_force_boxes(coords, height, width)
    assert mask["coverage"].shape == (height, width) and mask["stride"] == 1
    for row in range(0, height, 3):
        for col in range(0, width, 4):
            count, mean, minimum, majority = brute_force_pixel(boxes, y_s, categories, row, col)
            assert mask["coverage"][row, col] == count
            assert mask["majority"][row, col] == majority
            np.testing.assert_allclose(mask["mean_y_s"][row, col], mean, rtol=1e-5, equal_nan=True)
            np.testing.assert_allclose(mask["min_y_s"][row, col], minimum, rtol=1e-6, equal_nan=True)
            local = brute_force_local(boxes, y_s, row, col, height, width)
            np.testing.assert_allclose(mask["local_y_s"][row, col], local, rtol=1e-5, equal_nan=True)
            hard = brute_force_local(boxes, categories < 2, row, col, height, width)
            np.testing.assert_allclose(mask["local_hard_share"][row, col], hard, rtol=1e-5, atol=1e-7, equal_nan=True)
    assert (mask["category_coverage"].sum(axis=0) == mask["coverage"]).all()


def test_gridded_mask_is_exact_at_cell_centres():
    rng = np.random.default_rng(4)
    height, width, n = 100, 61, 60
    coords, y_s, categories = random_coords(rng, n), rng.uniform(size=n), rng.integers(0, 4, n)
    mask = viz.hard_region_mask(coords, y_s, categories, height, width, grid=25, min_grid=25)
    boxes = brute_force_boxes(coords, height, width)
    assert mask["stride"] == 4 and mask["coverage"].shape == (25, 16)
    assert mask["rows"].tolist() == list(range(2, 100, 4)) and mask["cols"][-1] == 60
    for a, row in enumerate(mask["rows"]):
        for b, col in enumerate(mask["cols"]):
            count, mean, minimum, majority = brute_force_pixel(boxes, y_s, categories, row, col)
            assert (mask["coverage"][a, b], mask["majority"][a, b]) == (count, majority)
            np.testing.assert_allclose(mask["mean_y_s"][a, b], mean, rtol=1e-5, equal_nan=True)
            np.testing.assert_allclose(mask["min_y_s"][a, b], minimum, rtol=1e-6, equal_nan=True)
    spread = viz.pixel_map(mask, "coverage")
    assert spread.shape == (height, width) and spread[9, 60] == mask["coverage"][2, 15]


def test_coarse_min_is_the_min_at_each_coarse_cell_centre():
    rng = np.random.default_rng(2)
    height, width, n = 64, 48, 50
    coords = rng.uniform(0.05, 0.6, size=(n, 4)).astype(np.float32)
    y_s = rng.uniform(size=n)
    mask = viz.hard_region_mask(coords, y_s, np.zeros(n, int), height, width, grid=None, min_grid=8)
    boxes = brute_force_boxes(coords, height, width)
    for row in range(height):
        for col in range(0, width, 5):
            centre_row = min(row // 8 * 8 + 4, height - 1)
            centre_col = min(col // 8 * 8 + 4, width - 1)
            expected = brute_force_pixel(boxes, y_s, np.zeros(n, int), centre_row, centre_col)[2]
            np.testing.assert_allclose(mask["min_y_s"][row, col], expected, equal_nan=True)


def test_a_flipped_crop_shows_the_pixels_of_its_box_mirrored(setup):
    data, store = setup
    index = 1
    image = data[index][0]
    coords, flips = store.crops(index)
    crop = int(np.flatnonzero(flips)[0])
    shown = viz.crop_pixels(image, store, index, [crop], size=12)[0, ..., 0]
    i, j, h, w = brute_force_boxes(coords[crop:crop + 1], *image.shape[-2:])[0]
    unflipped = cut_crops(image[:, i:i + h, j:j + w], np.array([[0, 0, 1, 1]]), [False], 12)[0, 0]
    np.testing.assert_array_equal(shown, (unflipped.flip(-1) * 255).round().to(torch.uint8).numpy())


def test_mask_figure_draws_the_mask_statistics(setup):
    data, store = setup
    index = 4
    image = data[index][0]
    mask = viz.image_mask(image, store, index, CAL)
    figure = viz.hard_region_figure(image, store, index, CAL, opacity=0.3)
    heatmaps = figure.data[1:]
    assert [h.visible for h in heatmaps] == [True, False, False, False, False]
    assert all(h.opacity == 0.3 for h in heatmaps)
    np.testing.assert_allclose(np.asarray(heatmaps[0].z, dtype=float), mask["local_y_s"], equal_nan=True)
    np.testing.assert_allclose(np.asarray(heatmaps[1].z, dtype=float), mask["local_hard_share"], equal_nan=True)
    np.testing.assert_allclose(np.asarray(heatmaps[3].z, dtype=float), mask["mean_y_s"], equal_nan=True)
    majority = np.asarray(heatmaps[2].z, dtype=float)
    np.testing.assert_array_equal(np.nan_to_num(majority, nan=-1), mask["majority"])
    np.testing.assert_array_equal(heatmaps[0].x, np.arange(image.shape[-1]) + 0.5)
    assert len(figure.layout.sliders[0].steps) == 11
    outlined = viz.hard_region_figure(image, store, index, CAL, crops=[3, 7], mask=mask).data[len(figure.data):]
    xs = np.concatenate([np.asarray(t.x, dtype=float).reshape(-1, 6) for t in outlined])
    boxes = brute_force_boxes(store.coords[index][[3, 7]], *image.shape[-2:])
    assert sorted(xs[:, 0].tolist()) == sorted(boxes[:, 1].tolist())


def test_large_masks_are_thinned_for_display():
    rng = np.random.default_rng(3)
    mask = viz.hard_region_mask(random_coords(rng, 30), rng.uniform(size=30), rng.integers(0, 4, 30), 100, 60,
                                grid=None)
    heatmap = viz.regions.mask_heatmap(mask, "coverage", 0.5, max_display=25)
    np.testing.assert_array_equal(heatmap["z"], mask["coverage"][::4, ::4])
    np.testing.assert_array_equal(heatmap["x"], np.arange(0, 60, 4) + 0.5)


# ----- y_s and entropy histograms
@pytest.mark.parametrize("index", [None, 5])
def test_y_s_histogram_bars_equal_np_histogram_by_category(setup, index):
    _, store = setup
    figure = viz.ys_histogram_figure(store, CAL, index=index, bins=20)
    images = slice(None) if index is None else [index]
    y_s = np.asarray(store.y_s[images], dtype=np.float64).ravel()
    categories = calibrate(store, CAL).categories[images].ravel()
    assert np.asarray(figure.data[0].x).size == 20
    total = np.zeros(20)
    for code, trace in enumerate(figure.data):
        expected = np.histogram(y_s[categories == code], bins=20, range=(0, 1))[0]
        np.testing.assert_array_equal(trace.y, expected)
        assert trace.marker.color == viz.CATEGORY_COLORS[CATEGORIES[code]]
        assert trace.name.endswith(f"({expected.sum()})")
        total += trace.y
    np.testing.assert_array_equal(total, np.histogram(y_s, bins=20, range=(0, 1))[0])
    if index is None:
        counts = calibrate(store, CAL).stats()["counts"]
        assert [trace.name for trace in figure.data] == [viz.category_legend(c, counts[c]) for c in CATEGORIES]
    assert [shape.x0 for shape in figure.layout.shapes] == [0.1, 0.3, 0.9]


def test_quantile_threshold_lines_of_one_image(setup):
    _, store = setup
    figure = viz.ys_histogram_figure(store, QUANTILE, index=6)
    expected = np.quantile(np.asarray(store.y_s[6], dtype=np.float32), [0.1, 0.4, 0.9])
    np.testing.assert_allclose([shape.x0 for shape in figure.layout.shapes], expected, rtol=1e-6)


def test_entropy_histogram_equals_np_histogram(setup):
    _, store = setup
    figure = viz.entropy_histogram_figure(store, CAL, bins=15)
    entropy = np.asarray(store.entropy, dtype=np.float64).ravel()
    np.testing.assert_array_equal(sum(np.asarray(t.y) for t in figure.data),
                                  np.histogram(entropy, bins=15, range=(0, entropy.max()))[0])


# ----- soft labels
def test_topk_bars_show_raw_and_calibrated_labels(setup):
    _, store = setup
    index = 0
    categories = category_of(store, index, CAL)
    view = calibrate(store, CAL)
    for code in np.unique(categories):
        crop = int(np.flatnonzero(categories == code)[0])
        figure = viz.topk_bars_figure(store, index, crop, CAL, k=6)
        dense = store.labels([index], [crop])[0].numpy()
        classes = [int(re.search(r"\[(\d+)\]$", name).group(1)) for name in figure.data[0].y]
        assert classes[:3] == store.topk_idx[index, crop].tolist()  # k is capped at the 3 stored classes
        assert len(classes) <= 4
        assert int(store.targets[index]) in classes
        np.testing.assert_allclose(figure.data[0].x, dense[classes])
        if CATEGORIES[code] in ("hard", "important"):
            np.testing.assert_allclose(figure.data[1].x, view.labels([index], [crop])[0].numpy()[classes], rtol=1e-6)
        else:
            assert len(figure.data[1].x) == 0 and "discarded" in figure.layout.title.text


def test_non_target_mass_heatmap_equals_a_brute_force_sum(setup):
    _, store = setup
    figure = viz.non_target_mass_figure(store, CAL, categories=("important", "hard"), columns=6)
    categories = calibrate(store, CAL).categories
    rows = sorted(set(np.asarray(store.targets).tolist()))
    sums, counts = np.zeros((len(rows), store.num_classes)), np.zeros(len(rows))
    for image in range(store.num_images):
        row = rows.index(int(store.targets[image]))
        for crop in range(store.num_crops):
            if CATEGORIES[categories[image, crop]] not in ("important", "hard"):
                continue
            counts[row] += 1
            for cls, prob in zip(store.topk_idx[image, crop], store.topk_prob[image, crop]):
                if cls != store.targets[image]:
                    sums[row, cls] += float(prob)
    expected = sums / np.maximum(counts, 1)[:, None]
    columns = [int(re.search(r"\[(\d+)\]$", name).group(1)) for name in figure.data[0].x]
    np.testing.assert_allclose(np.asarray(figure.data[0].z), expected[:, columns], rtol=1e-6)
    assert sorted(columns) == list(range(6))


def test_crop_grid_shows_the_cut_pixels(setup):
    data, store = setup
    index = 7
    image = data[index][0]
    figure = viz.crop_grid_figure(image, store, index, CAL, crops=[5, 0, 9], size=16)
    coords, flips = store.crops(index)
    expected = (cut_crops(image, coords[[5, 0, 9]], flips[[5, 0, 9]], 16) * 255).round().to(torch.uint8)
    categories = category_of(store, index, CAL)
    for tile, crop in enumerate([5, 0, 9]):
        shown = np.asarray(figure.data[tile].z)
        np.testing.assert_array_equal(shown[..., 0], expected[tile, 0].numpy())
        title = figure.layout.annotations[tile]
        assert title.text.startswith(CATEGORIES[categories[crop]].replace("_", "-"))
        assert title.font.color == viz.CATEGORY_COLORS[CATEGORIES[categories[crop]]]


# ----- training figures
HISTORIES = {
    "fkd": [{"epoch": e, "train_loss": 2.0 / (e + 1), "test_top1": 0.5 + 0.05 * e} for e in range(4)],
    "ferkd": [{"epoch": e, "train_loss": 1.8 / (e + 1), "test_top1": 0.55 + 0.05 * e} for e in range(4)],
}


def test_accuracy_curves_trace_the_histories():
    figure = viz.accuracy_curves(HISTORIES, metrics=["test_top1", "train_loss"])
    traces = iter(figure.data)
    for metric in ("test_top1", "train_loss"):
        for method, records in HISTORIES.items():
            trace = next(traces)
            assert trace.name == method
            assert list(trace.x) == [r["epoch"] for r in records]
            assert list(trace.y) == [r[metric] for r in records]


def test_reliability_diagram_plots_the_bins_and_ece():
    rng = np.random.default_rng(0)
    confidence = (np.arange(15) + rng.uniform(0.2, 0.8, 15)) / 15
    accuracy, count = np.clip(confidence + rng.normal(0, 0.05, 15), 0, 1), rng.integers(0, 50, 15)
    count[3] = 0
    figure = viz.reliability_diagram({"bin_confidence": confidence, "bin_accuracy": accuracy, "bin_count": count})
    shown = np.asarray(figure.data[0].y, dtype=float)
    assert np.isnan(shown[3])
    np.testing.assert_allclose(np.delete(shown, 3), np.delete(accuracy, 3))
    np.testing.assert_allclose(figure.data[0].x, (np.arange(15) + 0.5) / 15)
    ece = sum(c * abs(a - p) for a, p, c in zip(accuracy, confidence, count)) / count.sum()
    assert f"ECE {ece:.4f}" in figure.layout.title.text
    assert viz.reliability_diagram(confidence, accuracy, count).layout.title.text == figure.layout.title.text


def test_comparison_bars_have_means_and_error_bars():
    summary = {"hard": {"mean": 0.71, "std": 0.01}, "fkd": {"mean": 0.74, "std": 0.02}, "ferkd": {"mean": 0.75}}
    figure = viz.comparison_bars(summary, "test_top1")
    assert list(figure.data[0].x) == list(summary)
    np.testing.assert_allclose(figure.data[0].y, [0.71, 0.74, 0.75])
    np.testing.assert_allclose(figure.data[0].error_y.array, [0.01, 0.02, 0.0])


# ----- the HTML report
def test_report_is_one_offline_file_with_every_figure(setup, tmp_path):
    from plotly.offline import get_plotlyjs

    data, store = setup
    figures = [("Boxes of image 0", viz.crop_boxes_figure(data[0][0], store, 0, CAL)),
               ("Curves <per method>", viz.accuracy_curves(HISTORIES)),
               ("Comparison", viz.comparison_bars({"a": {"mean": 1, "std": 0.1}}))]
    path = viz.write_report(tmp_path / "out" / "report.html", figures, title="Run 1", intro_html="<p>intro</p>")
    text = path.read_text()
    assert text.count(get_plotlyjs()[:200]) == 1
    assert not re.search(r"<script[^>]+src=[\"']?(https?:)?//", text)
    assert "Boxes of image 0" in text and "Curves &lt;per method&gt;" in text and "<p>intro</p>" in text
    assert text.count("Plotly.newPlot") == 3
    assert text.count("data:image\\u002fjpeg;base64,") == 1  # plotly escapes "/" inside the JSON
    assert viz.write_report(tmp_path / "d.html", dict(figures), "Run 1").read_text().count("Plotly.newPlot") == 3


# ----- captum attributions
class TinyConvNet(nn.Module):
    def __init__(self, classes=3):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1),
                                      nn.ReLU())
        self.head = nn.Linear(6, classes)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def tiny_teacher():
    torch.manual_seed(0)
    return Teacher(TinyConvNet(), spec="test:tinyconv", input_size=(3, 16, 16), mean=(0.5,) * 3, std=(0.25,) * 3,
                   class_names=["a", "b", "c"])


def test_integrated_gradients_are_complete(tiny_teacher):
    crop = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    attributions, _ = viz.integrated_gradients(tiny_teacher, crop, target=1, steps=64)
    with torch.no_grad():
        gap = float(tiny_teacher(crop)[0, 1] - tiny_teacher(torch.zeros_like(crop))[0, 1])
    assert attributions.shape == crop.shape
    assert abs(float(attributions.sum()) - gap) <= 0.02 * abs(gap) + 1e-3


def test_grad_cam_and_occlusion_shapes(tiny_teacher):
    crop = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    assert viz.last_feature_layer(tiny_teacher.model, (3, 16, 16)) is tiny_teacher.model.features
    cam = viz.grad_cam(tiny_teacher, crop, target=0)
    assert cam.shape == (1, 1, 16, 16) and float(cam.min()) >= 0
    occluded = viz.occlusion(tiny_teacher, crop, target=0, window=4, stride=4)
    assert occluded.shape == crop.shape
    maps = viz.attribution_maps(tiny_teacher, crop, 0, ig_steps=8)
    assert list(maps) == list(viz.ATTRIBUTION_METHODS) and all(m.shape == (16, 16) for m in maps.values())
    figure = viz.attribution_figure(crop, maps, "tiny")
    assert len(figure.data) == 1 + 2 * len(maps)
    np.testing.assert_allclose(figure.data[2].z, maps["integrated_gradients"])


@pytest.mark.slow
def test_efficientnet_lite0_attributions_on_one_photo_crop(tmp_path):
    from softlab.data import load_dataset
    from softlab.teachers import create_teacher

    teacher = create_teacher("efficientnet_lite0")
    photos = load_dataset("photos", limit=1)
    # fp32 on the CPU, like the direct pass below (on CUDA, generation would use bf16)
    store = generate_labels(photos, teacher, tmp_path / "s", num_crops=2, device="cpu", progress=False)
    layer = viz.last_feature_layer(teacher.model, teacher.input_size)
    assert layer is teacher.model.bn2
    crop = viz.teacher_crop(photos[0][0], store, 0, 0, teacher)
    with torch.no_grad():
        probability = torch.softmax(teacher(crop), dim=-1)[0, int(store.targets[0])]
    # a 2-crop batch in the store, one crop here: fp32 rounding noise through the network's layers
    np.testing.assert_allclose(float(probability), float(store.y_s[0, 0]), rtol=1e-3, atol=1e-4)
    maps = viz.attribution_maps(teacher, crop, int(store.targets[0]), methods=("integrated_gradients", "grad_cam"),
                                ig_steps=4)
    assert all(m.shape == (224, 224) and np.isfinite(m).all() for m in maps.values())
    assert maps["grad_cam"].max() > 0
