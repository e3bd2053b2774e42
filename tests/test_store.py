import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from softlab.data.crops import CropParams, crop_rng, cut_crops, pixel_boxes, sample_crop_boxes, sample_crops
from softlab.labels import LabelStore, StoreError, dense_labels, generate_labels, quantize
from tiny import LinearTeacher, NoiseImages, clear_argmax

ARRAYS = ("coords", "flip", "topk_idx", "topk_prob", "y_s", "entropy", "targets")


def generate(out, **kwargs):
    # On the CPU the teacher runs in fp32, the precision the direct passes below are compared at (on CUDA,
    # generation uses bf16 autocast, whose error is some 1e-2).
    settings = dict(num_crops=5, label_type="marginal_smoothing_k3", chunk_size=4, batch_size=7, seed=3,
                    progress=False, device="cpu")
    settings.update(kwargs)
    return generate_labels(NoiseImages(), LinearTeacher(), out, **settings)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("ref") / "store")


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("plain") / "store", layout="plain")


# float16 rounding moves a value by at most half a float16 step: 2^-11 relative for normal numbers
FP16_RTOL = 2.0 ** -11


def test_store_holds_the_teachers_quantised_labels(reference):
    dataset, teacher = NoiseImages(), LinearTeacher()
    image, target = dataset[5]
    height, width = image.shape[-2:]
    coords, flips = sample_crops(height, width, 5, CropParams(), seed=3, image_index=5)
    # crop geometry is the same seeded numpy computation as in the store (no batching): compared exactly,
    # and the fp16 coords must round back to the sampled integer pixel boxes
    np.testing.assert_array_equal(reference.coords[5], coords.astype(np.float16))
    boxes, _ = sample_crop_boxes(height, width, 5, CropParams(), crop_rng(3, 5))
    np.testing.assert_array_equal(pixel_boxes(reference.coords[5], height, width), boxes)
    np.testing.assert_array_equal(reference.flip[5], flips)
    assert reference.targets[5] == target

    # The store ran image 5's crops in 7-crop batches spanning images 4-6; this pass runs them as one 5-crop
    # batch. The two fp32 results differ by rounding (~1e-7 relative here; more with other BLAS kernels, thread
    # counts or instruction sets), so the probabilities are compared at rtol 1e-4, plus the float16 rounding of
    # the stored y_s and entropy.
    with torch.no_grad():
        probs = torch.softmax(teacher(cut_crops(image, coords, flips, (12, 12))), dim=1)
    np.testing.assert_allclose(reference.y_s[5], probs[:, target].numpy(), rtol=1e-4 + FP16_RTOL, atol=1e-7)
    expected_entropy = torch.special.entr(probs.double()).sum(1).numpy()  # −Σ p ln p, 0 ln 0 = 0
    np.testing.assert_allclose(reference.entropy[5], expected_entropy, rtol=1e-4 + FP16_RTOL, atol=1e-6)

    # The labels hold fp16 probabilities: rounding noise can move a value to the neighbouring fp16 number
    # (at most 2^-11 ≈ 4.9e-4 apart below 1). The kept top-3 classes are the same for both passes only if the
    # 3rd and 4th probabilities are further apart than the noise: check that this is so for these crops.
    ranked = probs.sort(dim=1, descending=True).values
    assert (ranked[:, 2] - ranked[:, 3] > 1e-4).all()
    indices, values = quantize(probs, "marginal_smoothing_k3")
    np.testing.assert_array_equal(np.sort(reference.topk_idx[5], axis=1), np.sort(indices.numpy(), axis=1))
    expected = dense_labels(indices, values, "marginal_smoothing_k3", 6)
    torch.testing.assert_close(reference.labels(np.full(5, 5), np.arange(5)), expected, rtol=0, atol=1e-3)


def test_manifest_records_the_settings(reference):
    manifest = json.loads((reference.path / "manifest.json").read_text())
    assert manifest["complete"] and manifest["format_version"] == 2 and manifest["layout"] == "compact"
    assert manifest["label"] == {**manifest["label"], "type": "marginal_smoothing_k3", "k": 3, "temperature": 1.0}
    assert manifest["crops"]["seed"] == 3 and manifest["crops"]["scale"] == [0.08, 0.936]
    assert manifest["dataset"]["fingerprint"] == NoiseImages().fingerprint()
    # the recomputed regions have whole-store checksums too, for `softlab labels verify`
    assert set(manifest["checksums"]) == set(ARRAYS) | {"image_size"}
    assert reference.verify()["checksums"] == "8 arrays match"


def test_arrays_have_the_documented_dtypes_and_need_no_pickle(reference, plain):
    compact = {"image_size": np.int32, "topk_idx": np.uint8, "topk_prob": np.float16, "y_s": np.float16,
               "entropy": np.float16, "targets": np.int64}
    stored = {"coords": np.float16, "flip": np.bool_, "topk_idx": np.int16, "topk_prob": np.float16,
              "y_s": np.float32, "entropy": np.float32, "targets": np.int64}
    for store, dtypes in ((reference, compact), (plain, stored)):
        files = {path.stem for path in store.path.glob("*.npy")}
        assert files == set(dtypes), store.layout
        for name, dtype in dtypes.items():
            array = np.load(store.path / f"{name}.npy", allow_pickle=False)
            assert array.dtype == dtype, name
        assert store.coords.shape == (23, 5, 4) and store.topk_idx.shape == (23, 5, 3)
    sizes = np.load(reference.path / "image_size.npy")
    assert [tuple(size) for size in sizes[:3]] == [tuple(NoiseImages()[i][0].shape[-2:]) for i in range(3)]


def test_compact_and_plain_layouts_hold_the_same_labels(reference, plain):
    # one process, the same batches: the same float32 teacher outputs, so the compact arrays are the plain
    # ones, exactly, once rounded to the compact dtypes; the recomputed regions are the stored ones
    for name in ("coords", "flip", "topk_idx", "topk_prob", "targets"):
        np.testing.assert_array_equal(np.asarray(getattr(reference, name)), np.asarray(getattr(plain, name)),
                                      err_msg=name)
    for name in ("y_s", "entropy"):
        np.testing.assert_array_equal(np.asarray(getattr(reference, name)),
                                      np.asarray(getattr(plain, name)).astype(np.float16), err_msg=name)
    assert reference.manifest["checksums"]["coords"] == plain.manifest["checksums"]["coords"]
    assert reference.manifest["checksums"]["flip"] == plain.manifest["checksums"]["flip"]
    per_crop = {store.layout: sum(p.stat().st_size for p in store.path.glob("*.npy")) for store in (reference, plain)}
    # per crop: 3 + 6 + 2 + 2 bytes against 8 + 1 + 6 + 6 + 4 + 4 (each file also has a 128-byte header)
    headers = {"compact": 6 * 128, "plain": 7 * 128}
    per_image = {"compact": 8 + 8, "plain": 8}  # targets, and compact's image sizes
    for layout, size in per_crop.items():
        crop_bytes = (size - headers[layout] - 23 * per_image[layout]) / (23 * 5)
        assert crop_bytes == {"compact": 13, "plain": 29}[layout], layout


def test_recomputed_regions_index_like_arrays(reference, plain):
    images, crops = np.array([0, 22, 7, 7]), np.array([4, 0, 1, 2])
    for key in (5, -1, slice(3, 9), slice(None, None, -4), (images, crops), np.arange(23) % 3 == 0, (Ellipsis, 2),
                (slice(None), 1, 2)):
        np.testing.assert_array_equal(reference.coords[key], plain.coords[key], err_msg=str(key))
        np.testing.assert_array_equal(reference.flip[key if not isinstance(key, tuple) or len(key) < 3 else key[:2]],
                                      plain.flip[key if not isinstance(key, tuple) or len(key) < 3 else key[:2]])
    coords, flips = reference.crops(9)
    assert coords.dtype == np.float32 and coords.shape == (5, 4) and flips.shape == (5,)
    assert len(reference.coords) == 23 and reference.coords.ndim == 3 and reference.flip.dtype == np.bool_


def test_batched_reads_are_vectorised_and_match_single_reads(reference):
    images, crops = np.array([0, 22, 7, 7]), np.array([4, 0, 1, 2])
    batch = reference.labels(images, crops)
    singles = torch.cat([reference.labels([i], [c]) for i, c in zip(images, crops)])
    torch.testing.assert_close(batch, singles)
    # the stored top-3 are fp16, so their sum may exceed 1 by a few fp16 steps (the rest is then floored at 0)
    torch.testing.assert_close(batch.sum(1), torch.ones(4), rtol=0, atol=1e-3)


class Interrupt(Exception):
    pass


def _interrupt_at(chunk_to_break):
    def hook(chunk):
        if chunk == chunk_to_break:
            raise Interrupt
    return hook


def test_resume_after_interruption_is_identical(tmp_path, reference):
    out = tmp_path / "store"
    with pytest.raises(Interrupt):
        generate(out, before_marker=_interrupt_at(2))  # rows of chunk 2 written, marker not yet
    with pytest.raises(StoreError, match="incomplete"):
        LabelStore.open(out)
    partial = LabelStore.open(out, allow_partial=True)
    assert partial.finished_chunks() == {0, 1} and partial.image_done().sum() == 8
    resumed = generate(out)
    for name in ARRAYS:
        np.testing.assert_array_equal(getattr(resumed, name), getattr(reference, name), err_msg=name)
    assert resumed.manifest["checksums"] == reference.manifest["checksums"]


def test_resume_computes_nothing_already_finished(tmp_path):
    out = tmp_path / "store"
    with pytest.raises(Interrupt):
        generate(out, before_marker=_interrupt_at(3))
    calls = []
    generate(out, before_marker=calls.append)
    assert calls == [3, 4, 5]


# The killed writer uses this process's thread count, so its chunks are computed exactly as here: generation
# batches crops chunk by chunk (a chunk's batches never depend on where a run started), so resumed arrays are
# byte-identical to an uninterrupted run's.
KILL_SCRIPT = """
import os, signal, sys
import torch
torch.set_num_threads({threads})
sys.path.insert(0, {tests!r})
from test_store import generate
def hook(chunk):
    if chunk == 3:
        os.kill(os.getpid(), signal.SIGKILL)
generate({out!r}, before_marker=hook)
"""


def test_resume_after_kill_9(tmp_path, reference):
    out = tmp_path / "store"
    script = KILL_SCRIPT.format(tests=str(Path(__file__).parent), out=str(out), threads=torch.get_num_threads())
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=600)  # a hang guard only
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()[-2000:]
    assert LabelStore.open(out, allow_partial=True).finished_chunks() == {0, 1, 2}
    resumed = generate(out)
    for name in ARRAYS:
        np.testing.assert_array_equal(getattr(resumed, name), getattr(reference, name), err_msg=name)


def test_resume_with_other_settings_is_refused(tmp_path):
    out = tmp_path / "store"
    with pytest.raises(Interrupt):
        generate(out, before_marker=_interrupt_at(1))
    with pytest.raises(StoreError, match="other settings.*crops"):
        generate(out, seed=4)
    with pytest.raises(StoreError, match="label"):
        generate(out, temperature=2.0)
    assert generate(out, seed=4, overwrite=True).manifest["crops"]["seed"] == 4


def test_verify_detects_corruption(tmp_path):
    store = generate(tmp_path / "store")
    data = np.load(store.path / "y_s.npy", mmap_mode="r+")
    data[3, 1] += 0.5
    data.flush()
    with pytest.raises(StoreError, match="checksum mismatch in y_s"):
        LabelStore.open(store.path).verify()


def test_full_and_hard_label_types(tmp_path, reference):
    full = generate(tmp_path / "full", label_type="full")
    assert "topk_idx" not in full.arrays and full.topk_prob.shape == (23, 5, 6)
    torch.testing.assert_close(full.labels([1, 2], [0, 0]).sum(1), torch.ones(2))
    hard = generate(tmp_path / "hard", label_type="hard")
    images, first = np.arange(23), np.zeros(23, dtype=int)
    labels = hard.labels(images, first)
    assert set(labels.flatten().tolist()) == {0.0, 1.0}
    # same crops, same batches, same fp32 probabilities as the reference store: its top-1 class, exactly
    np.testing.assert_array_equal(labels.argmax(1).numpy(), reference.topk_idx[images, first, 0])
    # "full" keeps fp16 probabilities, which can round a near-tie into a tie: compare where the top two differ
    predicted, clear = clear_argmax(full.labels(images, first), 1e-3)
    assert clear.sum() >= 20
    np.testing.assert_array_equal(labels.argmax(1).numpy()[clear.numpy()], predicted.numpy()[clear.numpy()])


def test_temperature_flattens_the_distribution(tmp_path, reference):
    warm = generate(tmp_path / "warm", temperature=4.0)
    assert np.nanmean(warm.entropy) > np.nanmean(reference.entropy)


def test_bad_inputs_give_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="teacher .* predicts 6 classes .* has 4"):
        generate_labels(NoiseImages(num_classes=4), LinearTeacher(), tmp_path / "x", progress=False)
    with pytest.raises(StoreError, match="not a label store"):
        LabelStore.open(tmp_path)
    (tmp_path / "occupied").mkdir()
    (tmp_path / "occupied" / "file.txt").write_text("x")
    with pytest.raises(StoreError, match="not a label store; choose an empty"):
        generate(tmp_path / "occupied")


def test_decoding_in_worker_processes_gives_the_same_store(tmp_path, reference):
    store = generate(tmp_path / "store", workers=2)
    for path in sorted(reference.path.glob("*.npy")):
        assert (store.path / path.name).read_bytes() == path.read_bytes(), path.name
    assert store.manifest["checksums"] == reference.manifest["checksums"]


def test_a_compiled_teacher_writes_the_same_store(tmp_path, reference):
    # torch.compile's "eager" backend traces the teacher with dynamo and runs the captured graph as it is, so
    # the labels are the eager ones, exactly (inductor's fused kernels may differ in the last bits)
    store = generate(tmp_path / "store", compile="eager")
    assert store.manifest["generation"]["compile"] == "eager"
    assert store.manifest["checksums"] == reference.manifest["checksums"]
    assert reference.manifest["generation"]["compile"] is None
    with pytest.raises(ValueError, match="compile must be True"):
        generate(tmp_path / "other", compile=3)


def test_regions_of_a_store_above_the_cache_size_are_recomputed_per_read(reference, plain, monkeypatch):
    from softlab.labels import store as store_module

    monkeypatch.setattr(store_module, "REGION_CACHE_BYTES", 23 * 5 * 9)  # exactly this store's regions: kept
    assert LabelStore.open(reference.path).derived["coords"].source.cached
    monkeypatch.setattr(store_module, "REGION_CACHE_BYTES", 23 * 5 * 9 - 1)  # one byte short of them
    uncached = LabelStore.open(reference.path)
    source = uncached.derived["coords"].source
    assert not source.cached and source.data is None
    images, crops = np.array([0, 22, 7, 7, -3]), np.array([4, 0, 1, 2, 3])
    keys = (5, -1, np.int64(3), slice(3, 9), slice(None, None, -4), (images, crops), np.arange(23) % 3 == 0,
            (Ellipsis, 2), (slice(None), 1, 2), (slice(2, 5), [0, 4]), [[1, 2], [2, 20]], (), (7, slice(1, 3)))
    for key in keys:
        np.testing.assert_array_equal(uncached.coords[key], plain.coords[key], err_msg=str(key))
        flip_key = key if not isinstance(key, tuple) or len(key) < 3 else key[:2]
        np.testing.assert_array_equal(uncached.flip[flip_key], plain.flip[flip_key], err_msg=str(key))
    np.testing.assert_array_equal(np.asarray(uncached.coords), np.asarray(plain.coords))
    coords, flips = uncached.crops(9)
    np.testing.assert_array_equal(coords, plain.coords[9].astype(np.float32))
    assert uncached.coords.dtype == np.float16 and uncached.coords.shape == (23, 5, 4)
    for bad in (23, -24, [0, 23]):
        with pytest.raises(IndexError):
            uncached.coords[bad]
    with pytest.raises(IndexError):
        uncached.coords[np.ones(5, bool)]


def test_the_region_cache_size_comes_from_the_environment(reference, monkeypatch):
    from softlab.labels.store import region_cache_bytes

    monkeypatch.setenv("SOFTLAB_REGION_CACHE_GB", "0.5")
    assert region_cache_bytes() == 1 << 29
    monkeypatch.setenv("SOFTLAB_REGION_CACHE_GB", "0")
    assert not LabelStore.open(reference.path).derived["coords"].source.cached
    for bad in ("lots", "-1", "nan", "inf"):
        monkeypatch.setenv("SOFTLAB_REGION_CACHE_GB", bad)
        with pytest.raises(ValueError, match=f"SOFTLAB_REGION_CACHE_GB='{bad}': give a number of gigabytes"):
            region_cache_bytes()
    monkeypatch.delenv("SOFTLAB_REGION_CACHE_GB")
    assert region_cache_bytes() == 8 * 2 ** 30
