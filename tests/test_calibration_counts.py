"""Store-wide category counts (the explorer's fast path) against a per-crop loop and the lazy view's stats."""
import numpy as np
import pytest

from softlab.calibrate import CATEGORIES, Calibration, CategoryCounter, calibrate, sorted_row_quantiles
from softlab.labels import generate_labels
from softlab.viz import category_share_figure, category_shares
from tiny import LinearTeacher, NoiseImages


def category_by_rule(y, low, mid, top):
    """FerKD's rule for one crop, written out."""
    if y < low:
        return 0
    if y > top:
        return 3
    return 1 if y < mid else 2


def loop_counts(y_s, thresholds):
    counts = np.zeros((len(y_s), 4), dtype=np.int64)
    for image, (row, (low, mid, top)) in enumerate(zip(y_s, thresholds)):
        for y in row:
            counts[image, category_by_rule(y, low, mid, top)] += 1
    return counts


@pytest.fixture
def y_s_with_ties():
    rng = np.random.default_rng(3)
    y_s = rng.random((40, 17)).astype(np.float32)
    y_s[:, :6] = np.round(y_s[:, :6], 1)  # ties, some exactly at the thresholds below
    return y_s


@pytest.mark.parametrize("levels", [(0.0, 0.5, 1.0), (0.1, 0.3, 0.9), (0.25, 0.25, 0.75), (0.33, 0.61, 0.97)])
def test_quantiles_of_sorted_rows_equal_numpy_exactly(y_s_with_ties, levels):
    expected = np.quantile(y_s_with_ties, levels, axis=1).T
    assert np.array_equal(sorted_row_quantiles(np.sort(y_s_with_ties, axis=1), levels), expected)


@pytest.mark.parametrize("calibration", [Calibration(0.1, 0.3, 0.9), Calibration(0.2, 0.2, 0.7),
                                         Calibration(0.0, 0.5, 1.0), Calibration(0.1, 0.4, 0.9, mode="quantile"),
                                         Calibration(0.25, 0.5, 0.5, mode="quantile")])
def test_counts_equal_a_loop_over_crops(y_s_with_ties, calibration):
    targets = np.arange(len(y_s_with_ties)) % 3
    levels = [calibration.t_low, calibration.t_mid, calibration.t_top]
    if calibration.mode == "absolute":
        thresholds = np.tile(np.float32(levels), (len(y_s_with_ties), 1))
    else:
        thresholds = np.quantile(y_s_with_ties, levels, axis=1).T.astype(np.float32)
    expected = loop_counts(y_s_with_ties, thresholds)
    counts = CategoryCounter(y_s_with_ties, targets, 3).counts(calibration)
    assert np.array_equal(counts["per_image"], expected)
    assert np.array_equal(counts["per_class"], [expected[targets == c].sum(axis=0) for c in range(3)])
    assert np.array_equal(counts["overall"], expected.sum(axis=0))
    assert counts["images_without_kept_crops"] == int(((expected[:, 1] + expected[:, 2]) == 0).sum())


def test_an_image_with_nothing_kept_is_counted():
    y_s = np.array([[0.01, 0.02, 0.99], [0.2, 0.5, 0.6]], dtype=np.float32)
    counts = CategoryCounter(y_s, [0, 1], 2).counts(Calibration(0.05, 0.3, 0.95))
    assert counts["per_image"].tolist() == [[2, 0, 0, 1], [0, 1, 2, 0]]
    assert counts["images_without_kept_crops"] == 1


def test_unlabelled_images_are_refused():
    y_s = np.array([[0.2, np.nan], [0.3, 0.4]], dtype=np.float32)
    with pytest.raises(ValueError, match="1 images have no ground-truth label"):
        CategoryCounter(y_s, [0, -1], 2)


def test_counts_match_the_calibrated_view_on_a_store(tmp_path):
    store = generate_labels(NoiseImages(count=12), LinearTeacher(), tmp_path / "s", num_crops=9, progress=False)
    counter = CategoryCounter.for_store(store)
    for calibration in (Calibration(0.1, 0.3, 0.8), Calibration(0.2, 0.5, 0.9, mode="quantile")):
        stats = calibrate(store, calibration).stats()
        counts = counter.counts(calibration)
        assert dict(zip(CATEGORIES, counts["overall"].tolist())) == stats["counts"]
        assert counts["images_without_kept_crops"] == stats["images_without_kept_crops"]
        for label, row in enumerate(counts["per_class"]):
            assert dict(zip(CATEGORIES, row.tolist())) == stats["per_class"][store.class_names[label]]["counts"]


def test_share_figure_shows_each_rows_shares_in_category_order():
    rows = {"image 0": [1, 2, 3, 4], "all": [0, 0, 0, 0], "class a": [5, 0, 15, 0]}
    figure = category_share_figure(rows)
    assert [trace.name for trace in figure.data] == ["discarded (hard)", "hard / context", "important",
                                                    "discarded (easy)"]
    assert list(figure.data[0].y) == ["image 0", "all", "class a"]
    np.testing.assert_allclose(np.stack([trace.x for trace in figure.data], axis=1),
                               [[0.1, 0.2, 0.3, 0.4], [0, 0, 0, 0], [0.25, 0, 0.75, 0]], rtol=0, atol=1e-12)
    assert [list(trace.customdata) for trace in figure.data][2] == [3, 0, 15]
    assert category_shares([[2, 2, 0, 0]]).tolist() == [[0.5, 0.5, 0.0, 0.0]]
