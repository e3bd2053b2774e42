"""Label generation's speed choices: the teacher batch size picked by measurement (and cached), and the batched
crop cutter, which must cut the same pixels as the per-crop resized_crop."""
import json

import numpy as np
import pytest
import torch

from softlab.data.crops import (CropParams, batched_cut_pays, cut_crops, cut_crops_batched, cut_crops_grid,
                                pixel_boxes, sample_crops)
from softlab.labels import LabelStore, StoreError, generate_labels
from softlab.labels.autotune import measure, pick_batch_size
from tiny import LinearTeacher, NoiseImages


# ----- batch size selection
class FakeClock:
    """A clock that advances only when the fake forward runs: ``cost(size)`` seconds per call."""

    def __init__(self, cost):
        self.now, self.cost, self.calls = 0.0, cost, []

    def __call__(self):
        return self.now

    def forward(self, size):
        self.calls.append(size)
        self.now += self.cost(size)


def test_measure_picks_the_best_rate_and_stops_past_the_peak():
    # 8 → 80 crops/s, 16 → 100, 32 → 80, 64 → 64: two sizes slower than 16 in a row end the search
    costs = {8: 0.1, 16: 0.16, 32: 0.4, 64: 1.0, 128: 1.0, 256: 1.0}
    clock = FakeClock(costs.get)
    rates = measure(clock.forward, [8, 16, 32, 64, 128, 256], repeats=2, budget_s=100, timer=clock)
    assert rates == pytest.approx({8: 80, 16: 100, 32: 80, 64: 64})
    assert clock.calls == [8] * 3 + [16] * 3 + [32] * 3 + [64] * 3  # a warm-up and two timed calls each


def test_measure_stays_within_its_budget():
    clock = FakeClock(lambda size: size / 40)  # 40 crops/s at every size: 8 crops take 0.2 s
    rates = measure(clock.forward, [8, 16, 32, 64], repeats=2, budget_s=3.0, timer=clock)
    # 8: 0.6 s, 16: 1.2 s (1.8 s spent); 32 would need 2.4 s more: stop
    assert sorted(rates) == [8, 16] and clock.now <= 3.0


def test_pick_batch_size_caches_its_choice(tmp_path):
    teacher, path = LinearTeacher(), tmp_path / "batch_size.json"
    clock = FakeClock(lambda size: 0.01 + size / 1000)  # fixed overhead: larger batches are faster
    first = pick_batch_size(teacher, "cpu", max_crops=100, forward=clock.forward, timer=clock, path=path)
    assert first.source == "measured" and first.batch_size == 64  # candidates capped by the 100 crops there are
    assert sorted(first.crops_per_s) == [8, 16, 32, 64]
    calls = len(clock.calls)
    second = pick_batch_size(teacher, "cpu", max_crops=100, forward=clock.forward, timer=clock, path=path)
    assert second.source == "cached" and second.batch_size == 64 and len(clock.calls) == calls  # nothing measured
    entry, = json.loads(path.read_text()).values()
    assert entry["batch_size"] == 64
    # another teacher (or device, input size, thread count) is another key: measured again
    other = pick_batch_size(LinearTeacher(), "cpu", input_size=(1, 16, 16), max_crops=100, forward=clock.forward,
                            timer=clock, path=path)
    assert other.source == "measured" and len(json.loads(path.read_text())) == 2


def test_a_batch_size_measured_with_freed_memory_kept_is_another_choice(tmp_path, monkeypatch):
    from softlab import runtime

    teacher, path = LinearTeacher(), tmp_path / "batch_size.json"
    clock = FakeClock(lambda size: 0.01 + size / 1000)
    monkeypatch.setattr(runtime, "_applied", False)
    pick_batch_size(teacher, "cpu", max_crops=100, forward=clock.forward, timer=clock, path=path)
    monkeypatch.setattr(runtime, "_applied", True)
    kept = pick_batch_size(teacher, "cpu", max_crops=100, forward=clock.forward, timer=clock, path=path)
    assert kept.source == "measured"
    assert sorted(json.loads(key)["allocator"] for key in json.loads(path.read_text())) == ["default", "kept"]


def test_pick_batch_size_with_fewer_crops_than_any_candidate(tmp_path):
    choice = pick_batch_size(LinearTeacher(), "cpu", max_crops=5, forward=lambda size: None,
                             path=tmp_path / "cache.json")
    assert choice.batch_size == 5 and not (tmp_path / "cache.json").exists()


def test_auto_batch_size_is_recorded_and_reused_on_resume(tmp_path, monkeypatch):
    monkeypatch.setenv("SOFTLAB_HOME", str(tmp_path / "home"))
    settings = dict(num_crops=5, label_type="marginal_smoothing_k3", chunk_size=4, seed=3, progress=False,
                    device="cpu")
    store = generate_labels(NoiseImages(), LinearTeacher(), tmp_path / "auto", **settings)
    generation = store.manifest["generation"]
    assert generation["batch_size_from"] == "measured" and generation["batch_size"] in (8, 16, 32, 64)
    assert (tmp_path / "home" / "autotune" / "batch_size.json").is_file()
    # a run interrupted after two chunks resumes with the batch size its first run recorded
    def stop(chunk):
        if chunk == 2:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        generate_labels(NoiseImages(), LinearTeacher(), tmp_path / "resumed", batch_size=7, before_marker=stop,
                        **settings)
    resumed = generate_labels(NoiseImages(), LinearTeacher(), tmp_path / "resumed", **settings)
    assert resumed.manifest["generation"]["batch_size"] == 7
    assert resumed.manifest["generation"]["batch_size_from"] == "store"
    # the cached choice makes later runs skip the measurement
    again = generate_labels(NoiseImages(), LinearTeacher(), tmp_path / "again", **settings)
    assert again.manifest["generation"]["batch_size_from"] == "cached"
    assert again.manifest["generation"]["batch_size"] == generation["batch_size"]


# ----- cutters
def _smooth_image(channels, height, width, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (channels, height, width), dtype=torch.uint8, generator=generator)


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
@pytest.mark.parametrize("shape,size", [((1, 28, 28), 28), ((3, 40, 52), 24), ((1, 16, 18), 12)])
def test_batched_cutter_matches_resized_crop(interpolation, shape, size):
    # The same antialiased kernel and weights, only summed in another order: float32 rounding, some 1e-7
    # per product over at most a few dozen taps per axis. 2e-5 leaves room; a kernel or edge error shows as 1e-2.
    images = torch.stack([_smooth_image(*shape, seed=s) for s in range(3)])
    coords, flips = zip(*(sample_crops(*shape[1:], 16, CropParams(interpolation=interpolation), 0, s)
                          for s in range(3)))
    boxes = np.stack([pixel_boxes(c, *shape[1:]) for c in coords])
    fast = cut_crops_batched(images, boxes, np.stack(flips), size, interpolation)
    exact = torch.cat([cut_crops(image, c, f, size, interpolation) for image, c, f in zip(images, coords, flips)])
    assert fast.shape == exact.shape
    torch.testing.assert_close(fast, exact, rtol=0, atol=2e-5)


def test_batched_cutter_matches_in_chunks_and_on_downsampled_boxes():
    image = _smooth_image(3, 64, 64)
    boxes = np.array([[[0, 0, 64, 64], [5, 3, 50, 31], [10, 20, 8, 9]]])  # down-, mixed- and upsampled
    flips = np.array([[False, True, True]])
    coords = boxes[0] / 64.0
    exact = cut_crops(image, coords, flips[0], 20)
    fast = cut_crops_batched(image[None], boxes, flips, 20, max_crops=2)
    torch.testing.assert_close(fast, exact, rtol=0, atol=2e-5)


def test_grid_cutter_is_close_to_resized_crop_on_upsampled_boxes():
    # grid_sample's bicubic (a = -0.75, reading the pixels around the box) against resized_crop's antialiased
    # cubic (a = -0.5, renormalised over the box): on a smooth image the kernels disagree by a few percent of
    # local pixel differences; a mean of 0.01 leaves room, a wrong box or flip gives ~0.1.
    smooth = torch.nn.functional.avg_pool2d(torch.rand(1, 1, 40, 40), 5, 1, 2)[0]
    coords, flips = sample_crops(40, 40, 32, CropParams(scale=(0.05, 0.3)), seed=1, image_index=0)
    boxes = pixel_boxes(coords, 40, 40)
    assert (boxes[:, 2:] <= 28).all()  # every crop upsampled to 28
    fast = cut_crops_grid(smooth[None], boxes[None], flips[None], 28)
    exact = cut_crops(smooth, coords, flips, 28)
    assert (fast - exact).abs().mean() < 0.01


def test_batched_cut_pays_for_small_images_only():
    assert batched_cut_pays((1, 28, 28), 28) and batched_cut_pays((3, 32, 32), 32)
    assert not batched_cut_pays((3, 512, 512), 224) and not batched_cut_pays((1, 28, 28), 28, "nearest")


def test_train_loader_still_exports_the_grid_cutter():
    from softlab.train import cut_crops_grid as exported
    from softlab.train.loader import crop_theta, cut_batch  # noqa: F401

    assert exported is cut_crops_grid


# ----- the cutter as a store setting
SETTINGS = dict(num_crops=5, label_type="marginal_smoothing_k3", chunk_size=4, batch_size=7, seed=3,
                progress=False, device="cpu")


def test_each_cutter_is_recorded_and_gives_the_same_labels(tmp_path):
    exact = generate_labels(NoiseImages(), LinearTeacher(), tmp_path / "exact", cutter="exact", **SETTINGS)
    auto = generate_labels(NoiseImages(), LinearTeacher(), tmp_path / "auto", **SETTINGS)
    assert exact.manifest["crops"]["cutter"] == "exact" and auto.manifest["crops"]["cutter"] == "auto"
    np.testing.assert_array_equal(exact.coords, auto.coords)
    # float32 labels ~1e-6 apart may round to neighbouring float16 values in the compact store: one step, 2^-10
    np.testing.assert_allclose(exact.y_s, auto.y_s, rtol=1e-4 + 2.0 ** -10, atol=1e-6)
    assert (exact.topk_idx[..., 0] == auto.topk_idx[..., 0]).mean() > 0.99
    with pytest.raises(StoreError, match="crops"):
        generate_labels(NoiseImages(), LinearTeacher(), tmp_path / "exact", cutter="auto", overwrite=False,
                        **{**SETTINGS, "chunk_size": 4})
    with pytest.raises(ValueError, match="cutter"):
        generate_labels(NoiseImages(), LinearTeacher(), tmp_path / "bad", cutter="grid", **SETTINGS)


def test_store_without_a_cutter_resumes_as_exact(tmp_path):
    def stop(chunk):
        if chunk == 2:
            raise KeyboardInterrupt
    out = tmp_path / "old"
    with pytest.raises(KeyboardInterrupt):
        generate_labels(NoiseImages(), LinearTeacher(), out, cutter="exact", before_marker=stop, **SETTINGS)
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["crops"]["cutter"]  # as written before the option existed
    (out / "manifest.json").write_text(json.dumps(manifest))
    store = generate_labels(NoiseImages(), LinearTeacher(), out, **SETTINGS)
    assert store.manifest["crops"].get("cutter", "exact") == "exact"
    reference = generate_labels(NoiseImages(), LinearTeacher(), tmp_path / "ref", cutter="exact", **SETTINGS)
    for name in ("coords", "topk_idx", "topk_prob", "y_s"):
        np.testing.assert_array_equal(getattr(store, name), getattr(reference, name))
    assert LabelStore.open(out).manifest["complete"]


class _Recorder(torch.nn.Module):
    """Records each batch it is given; its logits are the crops' first pixel in class 0."""

    def __init__(self):
        super().__init__()
        self.batches = []

    def forward(self, x):
        self.batches.append(x)
        return torch.nn.functional.pad(x[:, :1, 0, 0], (0, 1))


def test_crop_batcher_runs_full_batches_in_order_and_copies_a_crop_at_most_once():
    from softlab.labels.generate import _CropBatcher

    teacher = _Recorder()
    batcher = _CropBatcher(teacher, batch_size=8, device=torch.device("cpu"), temperature=1.0)
    images = [torch.arange(start, start + count, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 1, 2, 2).clone()
              for start, count in ((0, 20), (20, 3), (23, 9), (32, 5))]  # 37 crops, numbered in order
    for crops in images:
        batcher.add(crops)
    probs = batcher.finish()
    ids = [batch[:, 0, 0, 0].long().tolist() for batch in teacher.batches]
    assert ids == [list(range(start, min(start + 8, 37))) for start in range(0, 37, 8)]
    # the batches inside the first image's crops are views of them, not copies
    first = images[0]
    assert [batch.data_ptr() for batch in teacher.batches[:2]] == [first.data_ptr(), first[8:].data_ptr()]
    assert probs.shape == (37, 2)
    # softmax of (id, 0): class 0 gets 1 / (1 + e^-id)
    torch.testing.assert_close(probs[:, 0], torch.sigmoid(torch.arange(37, dtype=torch.float32)))
