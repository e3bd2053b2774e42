import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from softlab.data.crops import CropParams, cut_crops, sample_crops
from softlab.labels import LabelStore, StoreError, dense_labels, generate_labels, quantize
from tiny import LinearTeacher, NoiseImages

ARRAYS = ("coords", "flip", "topk_idx", "topk_prob", "y_s", "entropy", "targets")


def generate(out, **kwargs):
    settings = dict(num_crops=5, label_type="marginal_smoothing_k3", chunk_size=4, batch_size=7, seed=3,
                    progress=False)
    settings.update(kwargs)
    return generate_labels(NoiseImages(), LinearTeacher(), out, **settings)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("ref") / "store")


def test_store_holds_the_teachers_quantised_labels(reference):
    dataset, teacher = NoiseImages(), LinearTeacher()
    image, target = dataset[5]
    coords, flips = sample_crops(*image.shape[-2:], 5, CropParams(), seed=3, image_index=5)
    with torch.no_grad():
        probs = torch.softmax(teacher(cut_crops(image, coords, flips, (12, 12))), dim=1)
    indices, values = quantize(probs, "marginal_smoothing_k3")
    expected = dense_labels(indices, values, "marginal_smoothing_k3", 6)
    torch.testing.assert_close(reference.labels(np.full(5, 5), np.arange(5)), expected)
    np.testing.assert_array_equal(reference.coords[5], coords.astype(np.float16))
    np.testing.assert_array_equal(reference.flip[5], flips)
    np.testing.assert_allclose(reference.y_s[5], probs[:, target].numpy(), rtol=1e-6)
    np.testing.assert_allclose(reference.entropy[5], -(probs * probs.log()).sum(1).numpy(), rtol=1e-5)
    assert reference.targets[5] == target


def test_manifest_records_the_settings(reference):
    manifest = json.loads((reference.path / "manifest.json").read_text())
    assert manifest["complete"] and manifest["format_version"] == 1
    assert manifest["label"] == {**manifest["label"], "type": "marginal_smoothing_k3", "k": 3, "temperature": 1.0}
    assert manifest["crops"]["seed"] == 3 and manifest["crops"]["scale"] == [0.08, 0.936]
    assert manifest["dataset"]["fingerprint"] == NoiseImages().fingerprint()
    assert set(manifest["checksums"]) == set(ARRAYS)
    reference.verify()


def test_arrays_have_the_documented_dtypes_and_need_no_pickle(reference):
    dtypes = {"coords": np.float16, "flip": np.bool_, "topk_idx": np.int16, "topk_prob": np.float16,
              "y_s": np.float32, "entropy": np.float32, "targets": np.int64}
    for name, dtype in dtypes.items():
        array = np.load(reference.path / f"{name}.npy", allow_pickle=False)
        assert array.dtype == dtype, name
    assert reference.coords.shape == (23, 5, 4) and reference.topk_idx.shape == (23, 5, 3)


def test_batched_reads_are_vectorised_and_match_single_reads(reference):
    images, crops = np.array([0, 22, 7, 7]), np.array([4, 0, 1, 2])
    batch = reference.labels(images, crops)
    singles = torch.cat([reference.labels([i], [c]) for i, c in zip(images, crops)])
    torch.testing.assert_close(batch, singles)
    torch.testing.assert_close(batch.sum(1), torch.ones(4))


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


KILL_SCRIPT = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from test_store import generate
def hook(chunk):
    if chunk == 3:
        os.kill(os.getpid(), signal.SIGKILL)
generate({out!r}, before_marker=hook)
"""


def test_resume_after_kill_9(tmp_path, reference):
    out = tmp_path / "store"
    script = KILL_SCRIPT.format(tests=str(Path(__file__).parent), out=str(out))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
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


def test_full_and_hard_label_types(tmp_path):
    full = generate(tmp_path / "full", label_type="full")
    assert "topk_idx" not in full.arrays and full.topk_prob.shape == (23, 5, 6)
    torch.testing.assert_close(full.labels([1, 2], [0, 0]).sum(1), torch.ones(2))
    hard = generate(tmp_path / "hard", label_type="hard")
    labels = hard.labels(np.arange(23), np.zeros(23, dtype=int))
    assert set(labels.flatten().tolist()) == {0.0, 1.0}
    assert (labels.argmax(1).numpy() == full.labels(np.arange(23), np.zeros(23, dtype=int)).argmax(1).numpy()).all()


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
