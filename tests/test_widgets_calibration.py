"""CalibrationExplorer driven from Python: controls → figures and counts equal what the library computes."""
import asyncio

import numpy as np
import pytest

from softlab.calibrate import Calibration, calibrate
from softlab.labels import generate_labels
from softlab.viz import histogram_data
from softlab.widgets import CalibrationExplorer
from softlab.widgets.base import Debouncer, sync_figure
from tiny import LinearTeacher, NoiseImages

CATEGORY_NAMES = ["discarded (hard)", "hard / context", "important", "discarded (easy)"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    data = NoiseImages(count=10, num_classes=6)
    store = generate_labels(data, LinearTeacher(num_classes=6, scale=4.0), tmp_path_factory.mktemp("ex") / "s",
                            num_crops=40, label_type="marginal_smoothing_k3", progress=False)
    return data, store


def categories_by_rule(y_s, calibration):
    if calibration.mode == "quantile":
        low, mid, top = np.quantile(y_s, [calibration.t_low, calibration.t_mid, calibration.t_top]).astype(np.float32)
    else:
        low, mid, top = np.float32([calibration.t_low, calibration.t_mid, calibration.t_top])
    return np.select([y_s < low, y_s > top, y_s < mid], [0, 3, 1], default=2)


def legend_counts(figure):
    """The counts in the box figure's legend entries ("hard / context (12)")."""
    return [int(trace.name.rsplit("(", 1)[1].rstrip(")")) for trace in figure.data[1:]]


def test_moving_a_threshold_redraws_with_the_librarys_categories(setup):
    data, store = setup
    explorer = CalibrationExplorer(store=store, dataset=data, image=4, debounce=0)
    explorer.sliders["t_low"].value = 0.08
    explorer.sliders["t_mid"].value = 0.2
    explorer.sliders["t_top"].value = 0.6
    calibration = Calibration(0.08, 0.2, 0.6, epsilon=0.1)
    assert explorer.calibration == calibration
    y_s = np.asarray(store.y_s[4], dtype=np.float32)
    expected = np.bincount(categories_by_rule(y_s, calibration), minlength=4)
    assert legend_counts(explorer.boxes_figure) == expected.tolist()
    histogram = histogram_data(y_s, categories_by_rule(y_s, calibration))
    for code, trace in enumerate(explorer.histogram_figure.data):
        assert list(trace.y) == histogram["counts"][code].tolist()
    assert [shape.x0 for shape in explorer.histogram_figure.layout.shapes] == pytest.approx([0.08, 0.2, 0.6])
    shares = np.array([trace.x[0] for trace in explorer.shares_figure.data])
    np.testing.assert_allclose(shares, expected / expected.sum(), rtol=0, atol=1e-12)


def test_store_wide_and_per_class_counts_equal_the_calibrated_view(setup):
    data, store = setup
    calibration = Calibration(0.1, 0.25, 0.7, mode="quantile")
    explorer = CalibrationExplorer(store=store, dataset=data, calibration=calibration, debounce=0)
    stats = calibrate(store, calibration).stats()
    overall = np.array([trace.x[1] for trace in explorer.shares_figure.data])
    np.testing.assert_allclose(overall, list(stats["fractions"].values()), rtol=0, atol=1e-12)
    class_rows = list(explorer.shares_figure.data[0].y)[2:]
    assert len(class_rows) == 6
    for row, name in enumerate(store.class_names):
        counts = [int(trace.customdata[row + 2]) for trace in explorer.shares_figure.data]
        assert counts == list(stats["per_class"][name]["counts"].values())
    assert f"Images with no kept crop: <b>{stats['images_without_kept_crops']}</b>" in explorer.summary.value


def test_thresholds_stay_ordered_when_one_is_dragged_past_another(setup):
    data, store = setup
    explorer = CalibrationExplorer(store=store, dataset=data, calibration=Calibration(0.1, 0.3, 0.9), debounce=0)
    explorer.sliders["t_low"].value = 0.5
    assert (explorer.calibration.t_low, explorer.calibration.t_mid, explorer.calibration.t_top) == (0.5, 0.5, 0.9)
    explorer.sliders["t_top"].value = 0.2
    assert (explorer.calibration.t_low, explorer.calibration.t_mid, explorer.calibration.t_top) == (0.2, 0.2, 0.2)


def test_images_left_without_crops_are_reported(setup):
    data, store = setup
    explorer = CalibrationExplorer(store=store, dataset=data, debounce=0)
    explorer.calibration = Calibration(0.999, 0.999, 0.999)
    kept = np.asarray(store.y_s) == np.float32(0.999)
    missing = int((~kept.any(axis=1)).sum())
    assert missing == 10  # no crop has y_s exactly 0.999
    assert explorer.message.kind == "warning"
    assert explorer.message.text.startswith("10 of 10 images keep no crop")
    explorer.calibration = Calibration(0.0, 0.3, 1.0)
    assert explorer.message.kind is None


def test_quantile_mode_cuts_each_image_at_its_own_quantiles(setup):
    data, store = setup
    explorer = CalibrationExplorer(store=store, dataset=data, image=2, debounce=0)
    explorer.mode.value = "quantile"
    assert explorer.sliders["t_low"].description == "T_L q"
    y_s = np.asarray(store.y_s[2], dtype=np.float32)
    low, mid, top = np.quantile(y_s, [0.05, 0.3, 1.0])
    assert f"T_L = {low:.3f}, T_M = {mid:.3f}, T_T = {top:.3f}" in explorer.summary.value
    expected = np.bincount(categories_by_rule(y_s, explorer.calibration), minlength=4)
    assert legend_counts(explorer.boxes_figure) == expected.tolist()


def test_picking_an_image_shows_its_pixels_and_boxes(setup):
    data, store = setup
    explorer = CalibrationExplorer(store=store, dataset=data, debounce=0)
    explorer.next_image.click()
    explorer.next_image.click()
    assert explorer.image == 2
    pixels = data[2][0].numpy()[0]
    z = np.asarray(explorer.boxes_figure.data[0].z)
    assert z.shape == (*pixels.shape, 3)
    assert np.array_equal(z[..., 0], pixels)
    assert explorer.image_label.value == "<b>image 2: c2</b>"
    explorer.previous_image.click()
    assert explorer.image == 1


def test_linked_widgets_hear_every_change_and_the_setter_redraws(setup):
    data, store = setup
    explorer = CalibrationExplorer(store=store, dataset=data, debounce=0)
    heard = []
    explorer.on_config_change(lambda widget: heard.append(widget.calibration))
    explorer.epsilon.value = 0.25
    explorer.calibration = Calibration(0.2, 0.4, 0.8, epsilon=0.05)
    assert heard[0].epsilon == 0.25
    assert heard[-1] == Calibration(0.2, 0.4, 0.8, epsilon=0.05)
    assert [shape.x0 for shape in explorer.histogram_figure.layout.shapes] == pytest.approx([0.2, 0.4, 0.8])


def test_opacity_and_mask_statistic_controls_restyle_the_mask(setup):
    data, store = setup
    explorer = CalibrationExplorer(store=store, dataset=data, debounce=0)
    explorer.opacity.value = 0.9
    assert explorer.mask_figure.data[1].opacity == 0.9
    explorer.statistic.value = "coverage"
    assert explorer.mask_figure.data[1].name == "crops covering the pixel"


def test_a_data_set_that_does_not_match_the_store_is_refused(setup):
    data, store = setup
    with pytest.raises(ValueError, match="the store labels 10 images but the data set has 7"):
        CalibrationExplorer(store=store, dataset=NoiseImages(count=7))
    with pytest.raises(ValueError, match="needs a label store"):
        CalibrationExplorer()


def test_debouncer_runs_once_after_a_burst_inside_an_event_loop():
    calls = []
    debounced = Debouncer(lambda: calls.append(1), delay=0.05)

    async def burst():
        for _ in range(5):
            debounced()
        assert calls == []
        await asyncio.sleep(0.2)

    asyncio.run(burst())
    assert calls == [1]


def test_sync_figure_updates_only_the_traces_asked_for():
    import plotly.graph_objects as go

    widget = go.FigureWidget(go.Figure([go.Bar(x=[1], y=[1]), go.Bar(x=[1], y=[2])]))
    sync_figure(widget, go.Figure([go.Bar(x=[1], y=[5]), go.Bar(x=[1], y=[6])], layout=dict(title="t")),
                traces=[1], layout_keys=("title",))
    assert (list(widget.data[0].y), list(widget.data[1].y), widget.layout.title.text) == ([1], [6], "t")
    sync_figure(widget, go.Figure([go.Scatter(x=[0], y=[0])]))
    assert [trace.type for trace in widget.data] == ["scatter"]
