import json

import numpy as np
import pytest
import torch

from softlab.calibrate import (CATEGORIES, Calibration, calibrate, categorise, softened_hard_labels,
                               thresholds_per_image)
from softlab.labels import generate_labels
from tiny import LinearTeacher, NoiseImages

D, H, I, E = range(4)  # discarded_hard, hard, important, discarded_easy


def test_absolute_categories_on_hand_built_y_s():
    y_s = np.array([[0.01, 0.05, 0.2, 0.3, 0.5, 0.99, 0.999]])
    cal = Calibration(t_low=0.05, t_mid=0.3, t_top=0.99)
    # y < 0.05 discard; 0.05 <= y < 0.3 hard; 0.3 <= y <= 0.99 important; y > 0.99 discard-easy
    assert categorise(y_s, cal).tolist() == [[D, H, H, I, I, I, E]]


def test_quantile_thresholds_are_per_image():
    row = np.linspace(0, 1, 11)  # 0.0, 0.1, ..., 1.0: quantile levels 0.1/0.5/0.9 land on 0.1/0.5/0.9
    y_s = np.stack([row, row / 2])  # second image: same ranks, halved values
    cal = Calibration(t_low=0.1, t_mid=0.5, t_top=0.9, mode="quantile")
    expected = [D, H, H, H, H, I, I, I, I, I, E]
    assert categorise(y_s, cal).tolist() == [expected, expected]


def test_quantile_extremes_discard_nothing():
    y_s = np.random.default_rng(0).random((4, 9))
    assert (categorise(y_s, Calibration(0.0, 0.0, 1.0, mode="quantile")) == I).all()


@pytest.mark.parametrize("settings,message", [
    (dict(t_low=0.5, t_mid=0.2), "t_low <= t_mid <= t_top"),
    (dict(t_mid=0.9, t_top=0.5), "t_low <= t_mid <= t_top"),
    (dict(t_top=1.5), r"t_top must be a number in \[0, 1\]"),
    (dict(t_low=-0.1), r"t_low must be a number in \[0, 1\]"),
    (dict(epsilon=1.0), r"epsilon must lie in \[0, 1\)"),
    (dict(epsilon=-0.2), r"epsilon must lie in \[0, 1\)"),
    (dict(mode="rank"), "mode must be"),
    (dict(t_low=float("nan")), "t_low must be a number"),
])
def test_invalid_settings_are_rejected(settings, message):
    with pytest.raises(ValueError, match=message):
        Calibration(**settings)


def test_softened_hard_label():
    labels = softened_hard_labels(torch.tensor([2, 0]), 5, 0.2)
    expected = torch.tensor([[0.05, 0.05, 0.8, 0.05, 0.05], [0.8, 0.05, 0.05, 0.05, 0.05]])
    torch.testing.assert_close(labels, expected, rtol=0, atol=1e-7)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return generate_labels(NoiseImages(), LinearTeacher(), tmp_path_factory.mktemp("cal") / "s", num_crops=8,
                           label_type="marginal_smoothing_k2", progress=False)


def test_calibrated_labels_per_category(store):
    y_s = np.asarray(store.y_s)
    t_low, t_mid, t_top = np.quantile(y_s, [0.2, 0.5, 0.9])
    view = calibrate(store, t_low=float(t_low), t_mid=float(t_mid), t_top=float(t_top), epsilon=0.3)
    categories = view.categories
    hard = np.argwhere(categories == H)[0]
    important = np.argwhere(categories == I)[0]
    expected_hard = torch.full((6,), 0.3 / 5)
    expected_hard[int(store.targets[hard[0]])] = 0.7
    torch.testing.assert_close(view.labels([hard[0]], [hard[1]])[0], expected_hard)
    torch.testing.assert_close(view.labels([important[0]], [important[1]]), store.labels([important[0]], [important[1]]))
    discarded = np.argwhere(categories == D)[0]
    with pytest.raises(ValueError, match="discarded by this calibration"):
        view.labels([discarded[0]], [discarded[1]])
    assert set(view.kept_crops(int(hard[0]))) == set(np.flatnonzero(np.isin(categories[hard[0]], [H, I])))


def test_stats_count_categories_overall_and_per_class(store):
    view = calibrate(store, t_low=0.1, t_mid=0.4, t_top=0.9)
    stats = view.stats()
    y_s = np.asarray(store.y_s)
    expected = {"discarded_hard": int((y_s < 0.1).sum()), "hard": int(((y_s >= 0.1) & (y_s < 0.4)).sum()),
                "important": int(((y_s >= 0.4) & (y_s <= 0.9)).sum()), "discarded_easy": int((y_s > 0.9).sum())}
    assert stats["counts"] == expected and stats["crops"] == 23 * 8
    assert stats["fractions"]["hard"] == pytest.approx(expected["hard"] / (23 * 8))
    class_2 = np.asarray(store.targets) == 2
    assert stats["per_class"]["c2"]["counts"]["discarded_hard"] == int((y_s[class_2] < 0.1).sum())
    assert sum(row["counts"]["important"] for row in stats["per_class"].values()) == expected["important"]
    json.dumps(stats)  # plain JSON-able data


def test_view_never_rewrites_the_store(store):
    before = {name: (store.path / f"{name}.npy").stat().st_mtime_ns for name in ("y_s", "topk_prob")}
    for t_mid in np.linspace(0, 1, 5):
        calibrate(store, t_low=0.0, t_mid=float(t_mid), t_top=1.0).stats()
    after = {name: (store.path / f"{name}.npy").stat().st_mtime_ns for name in ("y_s", "topk_prob")}
    assert before == after


def test_unlabelled_images_cannot_be_calibrated():
    with pytest.raises(ValueError, match="no ground-truth label"):
        categorise(np.array([[0.2, np.nan]]), Calibration())


def test_category_names():
    assert CATEGORIES == ("discarded_hard", "hard", "important", "discarded_easy")


def category_by_rule(y, low, mid, top):
    """FerKD's rule for one crop, written out: easy first, then discarded hard, hard, important."""
    if y > top:
        return E
    if y < low:
        return D
    return H if y < mid else I


def loop_categories(y_s, calibration, skipped):
    """A per-crop loop: thresholds of each image (np.quantile of its own row in quantile mode), then the rule."""
    levels = np.array([calibration.t_low, calibration.t_mid, calibration.t_top])
    expected = np.full(y_s.shape, -1, dtype=np.int8)
    for image, row in enumerate(y_s):
        if skipped[image]:
            continue
        thresholds = levels if calibration.mode == "absolute" else np.quantile(row, levels)
        low, mid, top = (np.float32(t) for t in thresholds)
        for crop, y in enumerate(row):
            expected[image, crop] = category_by_rule(y, low, mid, top)
    return expected


CALIBRATIONS = [Calibration(0.1, 0.3, 0.9), Calibration(0.05, 0.05, 0.7), Calibration(0.2, 0.6, 0.6),
                Calibration(0.0, 0.0, 1.0), Calibration(0.0, 0.0, 0.0), Calibration(1.0, 1.0, 1.0),
                Calibration(0.3, 0.3, 0.3)]


@pytest.mark.parametrize("crops", [11, 17])
@pytest.mark.parametrize("mode", ["absolute", "quantile"])
@pytest.mark.parametrize("calibration", CALIBRATIONS)
def test_categories_equal_a_loop_over_crops(calibration, mode, crops):
    calibration = calibration.replace(mode=mode)
    rng = np.random.default_rng(crops)
    y_s = rng.random((60, crops)).astype(np.float32)
    y_s[:, :5] = np.round(y_s[:, :5], 1)  # ties, and values exactly at 0.1, 0.3, ... (absolute thresholds)
    levels = np.float32([calibration.t_low, calibration.t_mid, calibration.t_top])
    y_s[::3, 5:8] = levels  # exactly on the absolute thresholds
    y_s[1::4, 8] = np.nextafter(levels[2], np.float32(2))  # the first float above T_T
    y_s[2::4, 8] = np.nextafter(levels[0], np.float32(-1))  # the last float below T_L
    y_s[::7] = rng.integers(0, 3, size=crops) / np.float32(2)  # whole rows of ties (quantiles on data values)
    skipped = np.zeros(len(y_s), dtype=bool)
    skipped[[4, 19, 33]] = True
    y_s[skipped] = np.nan  # no labels: skipped at generation
    y_s[33, :3] = 0.5  # a skipped image with some numbers left in it is skipped all the same
    expected = loop_categories(y_s, calibration, skipped)
    assert np.array_equal(categorise(y_s, calibration, skipped), expected)
    labelled = ~skipped
    assert np.array_equal(categorise(y_s[labelled], calibration), expected[labelled])
    assert categorise(y_s, calibration, skipped).dtype == np.int8


@pytest.mark.parametrize("levels", [(0.1, 0.3, 0.9), (0.0, 0.5, 1.0), (0.25, 0.25, 0.75), (0.33, 0.61, 0.97)])
def test_quantile_thresholds_equal_numpy_exactly(levels):
    rng = np.random.default_rng(1)
    y_s = rng.random((50, 13)).astype(np.float32)
    y_s[:, :6] = np.round(y_s[:, :6], 1)
    y_s[3] = np.nan
    y_s[7, 2] = np.nan  # rows with a NaN (skipped images) give NaN thresholds, as numpy's
    expected = np.quantile(y_s, np.array(levels), axis=1).T
    assert np.array_equal(thresholds_per_image(y_s, Calibration(*levels, mode="quantile")), expected, equal_nan=True)


def test_cut_points_follow_the_rule_for_any_threshold_order():
    from softlab.calibrate.ferkd import _cut_points

    rng = np.random.default_rng(2)
    thresholds = np.round(rng.random((200, 3)), 1).astype(np.float32)  # unordered, some equal
    y_s = np.round(rng.random((200, 9)), 1).astype(np.float32)
    low, mid, top = _cut_points(thresholds)
    got = (y_s >= low).astype(np.int8) + (y_s >= mid) + (y_s > top)
    expected = [[category_by_rule(y, *t) for y in row] for row, t in zip(y_s, thresholds)]
    assert got.tolist() == expected
