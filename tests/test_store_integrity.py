"""A damaged or half-written label store is refused with a message that names the file, the fault and the fix."""
import hashlib
import json
import os
import shutil

import numpy as np
import pytest
import torch

from softlab.cli import main
from softlab.labels import LabelStore, StoreError, generate_labels, quantize
from softlab.labels import store as store_module
from softlab.labels.store import probability_sum_tolerance
from tiny import LinearTeacher, NoiseImages

REMEDY = "Regenerate it with the same `softlab labels generate` command plus --overwrite"


def generate(out, **kwargs):
    settings = dict(num_crops=5, label_type="marginal_smoothing_k3", chunk_size=4, batch_size=7, seed=3,
                    progress=False, device="cpu")
    settings.update(kwargs)
    return generate_labels(NoiseImages(), LinearTeacher(), out, **settings)


class Interrupt(Exception):
    pass


def interrupt_at(chunk_to_break):
    def hook(chunk):
        if chunk == chunk_to_break:
            raise Interrupt
    return hook


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A complete store: 23 images × 5 crops, 6 chunks of 4 images."""
    return generate(tmp_path_factory.mktemp("reference") / "store").path


@pytest.fixture(scope="module")
def plain_reference(tmp_path_factory):
    """The same store in the plain layout, which keeps the crop regions in coords.npy and flip.npy."""
    return generate(tmp_path_factory.mktemp("plain") / "store", layout="plain").path


@pytest.fixture(scope="module")
def partial(tmp_path_factory):
    """The same store interrupted after chunks 0-2 (images 0-11) were finished."""
    out = tmp_path_factory.mktemp("partial") / "store"
    with pytest.raises(Interrupt):
        generate(out, before_marker=interrupt_at(3))
    return out


def copy_of(store, tmp_path, name="store"):
    return shutil.copytree(store, tmp_path / name)


def snapshot(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def npy_data_offset(file):
    return np.load(file, mmap_mode="r").offset


def edit(folder, name, change):
    """Apply ``change`` to the memory-mapped ``<name>.npy`` of a store and flush it."""
    array = np.load(folder / f"{name}.npy", mmap_mode="r+")
    change(array)
    array.flush()
    del array


def open_error(path, **kwargs) -> str:
    with pytest.raises(StoreError) as caught:
        LabelStore.open(path, **kwargs)
    return str(caught.value)


# ----- fault 1: values out of range are refused on every open; in-range changes by the checksums


def test_flipped_bytes_in_topk_prob_are_refused_on_open(reference, tmp_path, capsys):
    store = copy_of(reference, tmp_path)
    # image 3, crops 1 and 2 (3 fp16 values each): bytes 0x7b7b read as 61280
    with open(store / "topk_prob.npy", "r+b") as handle:
        handle.seek(npy_data_offset(store / "topk_prob.npy") + (3 * 5 + 1) * 3 * 2)
        handle.write(b"\x7b\x7b" * 6)
    before = snapshot(store)
    for level in ("auto", "cheap", "full"):
        message = open_error(store, verify=level)
        assert f"label store {store} is damaged" in message
        assert ("topk_prob.npy: 2 crops have probabilities outside [0, 1] (first: image 3, crop 1, value 6.13e+04)"
                in message)
        assert REMEDY in message and "restore it from a copy" in message
    # every command that reads labels refuses the store
    for command in (["calibrate", str(store)], ["labels", "inspect", str(store)],
                    ["labels", "export-fkd", str(store), str(tmp_path / "fkd")], ["labels", "verify", str(store)]):
        assert main(command) == 2, command
        assert "topk_prob.npy: 2 crops have probabilities outside [0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "fkd").exists()
    assert snapshot(store) == before
    # only an explicit opt-out reads it as it is
    assert float(LabelStore.open(store, verify="none").topk_prob[3, 1, 0]) == 61280.0


RANGE_FAULTS = {
    "topk_idx": (lambda a: a.__setitem__((2, 1, 0), 200),  # uint8 in the compact layout (6 classes)
                 "topk_idx.npy: 1 crop has class indices outside [0, 6) (first: image 2, crop 1, value 200)"),
    "image_size": (lambda a: a.__setitem__((6, 1), 0),
                   "image_size.npy: 1 image has a height or width below 1 (first: image 6, value 0)"),
    "flip": (lambda a: a.view(np.uint8).__setitem__((4, 3), 7),
             "flip.npy: 1 crop has flip bytes other than 0 or 1 (first: image 4, crop 3, value 7)"),
    "coords": (lambda a: a.__setitem__((9, 4, 2), 1.5),
               "coords.npy: 1 crop has coordinates outside [0, 1] (first: image 9, crop 4, value 1.5)"),
    "entropy": (lambda a: a.__setitem__((6, slice(0, 2)), [np.nan, 5.0]),
                "entropy.npy: 2 crops have an entropy outside [0, ln 6 = 1.792] nats, or not finite "
                "(first: image 6, crop 0, value nan)"),
    "y_s": (lambda a: a.__setitem__((8, 1), np.nan),  # image 8 has a label: NaN is not allowed
            "y_s.npy: 1 crop has a ground-truth probability outside [0, 1], or NaN for a labelled image "
            "(first: image 8, crop 1, value nan)"),
    "topk_prob": (lambda a: a.__setitem__((10, 3), [0.6, 0.5, 0.1]),
                  "topk_prob.npy: 1 crop has probabilities summing to more than 1 + 4.9e-04 "
                  "(first: image 10, crop 3, sum 1.2)"),
    "targets": (lambda a: a.__setitem__(11, 9),
                "targets.npy: 1 image has a class outside [-1, 6) (first: image 11, value 9)"),
}


@pytest.mark.parametrize("name", sorted(RANGE_FAULTS))
def test_cheap_checks_name_the_array_and_the_first_bad_crop(reference, plain_reference, tmp_path, name):
    store = copy_of(plain_reference if name in ("coords", "flip") else reference, tmp_path)
    change, expected = RANGE_FAULTS[name]
    edit(store, name, change)
    message = open_error(store, verify="cheap")
    assert expected in message and REMEDY in message


def test_full_labels_must_sum_to_one(tmp_path):
    store = generate(tmp_path / "full", label_type="full").path
    assert LabelStore.open(store, verify="cheap").topk_prob.shape == (23, 5, 6)
    edit(store, "topk_prob", lambda a: a.__setitem__((7, 2), a[7, 2] * np.float16(0.9)))
    message = open_error(store, verify="cheap")
    assert "topk_prob.npy: 1 crop has probabilities not summing to 1 ± 4.9e-04 (first: image 7, crop 2, sum 0.9" \
        in message


def test_probability_tolerance_covers_float16_rounding():
    # peaked and flat float32 softmax outputs, stored as fp16 as generation does: the worst stored sums stay
    # within the tolerance, which is still far below the 1.2 of a damaged crop (and one fp16 step at 1, 2^-10)
    generator = torch.Generator().manual_seed(0)
    for num_classes, k in ((6, 3), (10, 5), (1000, 5)):
        logits = torch.randn(20000, num_classes, generator=generator) * torch.logspace(-1, 1.5, 20000)[:, None]
        probs = torch.softmax(logits, dim=-1)
        tolerance = probability_sum_tolerance(num_classes, k)
        assert 2 ** -11 < tolerance < 2 ** -10
        _, top = quantize(probs, f"marginal_smoothing_k{k}")
        assert top.float().sum(-1).max().item() <= 1 + tolerance
        if num_classes <= 10:
            _, full = quantize(probs, "full")
            assert (full.float().sum(-1) - 1).abs().max().item() <= probability_sum_tolerance(num_classes,
                                                                                               num_classes)


def test_in_range_changes_are_caught_only_by_checksums(reference, tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "_VERIFIED", set())
    store = copy_of(reference, tmp_path)
    edit(store, "topk_prob", lambda a: a.__setitem__((5, 2), a[5, 2] * np.float16(0.5)))  # still in [0, 1]
    assert LabelStore.open(store, verify="cheap").num_images == 23  # the values look plausible
    message = open_error(store)  # the first open in this process computes the checksums
    assert ("checksum mismatch in topk_prob: the contents of topk_prob.npy differ from the sha256 recorded in "
            "manifest.json") in message and REMEDY in message
    message = open_error(store, verify="full")
    assert "checksum mismatch in topk_prob" in message
    assert ("topk_prob.npy: the rows of 1 chunk (1) differ from the sha256 in their markers "
            "(first: chunk 1, images 4-7)") in message


def test_checksums_are_computed_once_per_process(reference, tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "_VERIFIED", set())
    calls = {"hash": 0, "scan": 0}
    hash_pass, scan_values = LabelStore._hash_pass, LabelStore._scan_values

    def counting_hash(self, *args, **kwargs):
        calls["hash"] += 1
        return hash_pass(self, *args, **kwargs)

    def counting_scan(self, *args, **kwargs):
        calls["scan"] += 1
        return scan_values(self, *args, **kwargs)

    monkeypatch.setattr(LabelStore, "_hash_pass", counting_hash)
    monkeypatch.setattr(LabelStore, "_scan_values", counting_scan)
    store = copy_of(reference, tmp_path)
    LabelStore.open(store)
    assert calls == {"hash": 1, "scan": 1}
    LabelStore.open(store)  # same store, unchanged: cheap checks only
    (tmp_path / "link").symlink_to(store)
    LabelStore.open(tmp_path / "link")  # the same folder by another path
    assert calls == {"hash": 1, "scan": 3}
    LabelStore.open(store, verify="cheap")
    LabelStore.open(store, verify="none")
    assert calls == {"hash": 1, "scan": 4}
    LabelStore.open(store, verify="full")  # asked for: always
    assert calls == {"hash": 2, "scan": 5}
    LabelStore.open(copy_of(reference, tmp_path, "other"))  # another store
    assert calls == {"hash": 3, "scan": 6}
    # a file changed since: checked again, and the change is found
    edit(store, "y_s", lambda a: a.__setitem__((3, 1), a[3, 1] * 0.5))
    os.utime(store / "y_s.npy", ns=(1, 1))
    with pytest.raises(StoreError, match="checksum mismatch in y_s"):
        LabelStore.open(store)
    assert calls["hash"] == 4
    with pytest.raises(ValueError, match="verify must be one of 'auto', 'full', 'cheap', 'none'"):
        LabelStore.open(store, verify="fast")


# ----- fault 2: chunk markers


def test_missing_markers_of_a_complete_store_are_reported(reference, tmp_path, capsys):
    store = copy_of(reference, tmp_path)
    (store / "chunks" / "000001.json").unlink()
    (store / "chunks" / "000004.json").unlink()
    before = snapshot(store)
    expected = ("manifest.json marks the store complete but 2 of 6 chunk markers are missing: chunks/000001.json, "
                "chunks/000004.json (8 of 23 images: 4-7, 16-19)")
    for level in ("auto", "cheap", "full"):
        message = open_error(store, verify=level, allow_partial=True)
        assert expected in message and REMEDY in message
    assert main(["labels", "inspect", str(store), "--verify"]) == 2
    captured = capsys.readouterr()
    assert expected in captured.err and "OK" not in captured.out
    assert main(["labels", "verify", str(store)]) == 2
    assert expected in capsys.readouterr().err
    assert snapshot(store) == before


def test_full_verify_checks_each_markers_sha256(reference, tmp_path):
    store = copy_of(reference, tmp_path)
    marker = store / "chunks" / "000002.json"
    content = json.loads(marker.read_text())
    content["sha256"]["entropy"] = "0" * 64
    marker.write_text(json.dumps(content))
    message = open_error(store, verify="full")
    assert ("entropy.npy: the rows of 1 chunk (2) differ from the sha256 in their markers "
            "(first: chunk 2, images 8-11)") in message
    (store / "chunks" / "000003.json").write_text('{"chunk": 3, "st')
    message = open_error(store, verify="full")
    assert "chunks/000003.json is unreadable (truncated or not valid JSON)" in message


def test_incomplete_store_checks_its_finished_chunks(partial, reference, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(store_module, "_VERIFIED", set())
    # unfinished rows (images 12-22) are still zeros: they are not checked
    assert main(["labels", "verify", str(partial)]) == 0
    out = capsys.readouterr().out
    assert "60 crops of 12 finished images in range" in out and "3/6 chunk markers present, 3 chunks' rows match" \
        in out and "OK: 12 images, 60 crops, 8 arrays verified (incomplete: 3/6 chunks finished)" in out
    store = copy_of(partial, tmp_path)
    edit(store, "y_s", lambda a: a.__setitem__((5, 0), a[5, 0] * 0.5))  # chunk 1, in range
    message = open_error(store, allow_partial=True)  # the first open in this process checks the finished chunks
    assert ("y_s.npy: the rows of 1 chunk (1) differ from the sha256 in their markers (first: chunk 1, "
            "images 4-7)") in message
    assert ("delete the markers of the chunks named above and rerun the same `softlab labels generate` command "
            "to resume it") in message
    # following that advice regenerates chunk 1 and finishes the store exactly as an uninterrupted run
    (store / "chunks" / "000001.json").unlink()
    resumed = generate(store)
    assert resumed.manifest["checksums"] == LabelStore.open(reference).manifest["checksums"]


def test_finalize_refuses_rows_damaged_after_they_were_written(partial, tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "_VERIFIED", set())
    store = copy_of(partial, tmp_path)
    LabelStore.open(store, allow_partial=True)  # verified now (and cached): the damage comes later
    edit(store, "entropy", lambda a: a.__setitem__((9, 4), a[9, 4] * 0.5))
    with pytest.raises(StoreError, match=r"entropy.npy: the rows of 1 chunk \(2\) differ"):
        generate(store)
    assert not json.loads((store / "manifest.json").read_text())["complete"]


# ----- fault 3: the verify command


def test_labels_verify_command(reference, plain_reference, tmp_path, capsys):
    assert main(["labels", "verify", str(reference)]) == 0
    out = capsys.readouterr().out
    assert f"label store {reference}: complete, 23 images x 5 crops, marginal_smoothing_k3" in out
    assert "6 arrays (entropy, image_size, targets, topk_idx, topk_prob, y_s) and image_ids.json match" in out
    assert ("regions    coords and flip recomputed from the seed and image sizes (compact layout), matching each "
            "finished chunk's sha256") in out
    assert "115 crops of 23 finished images in range" in out and "6/6 chunk markers present, 6 chunks' rows" in out
    assert "checksums  8 arrays match" in out and out.rstrip().endswith("OK: 23 images, 115 crops, 8 arrays verified")
    assert main(["labels", "verify", str(reference), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["crops_checked"] == 115 and report["chunk_digests_checked"] == 6 and report["complete"]
    assert report["layout"] == "compact" and report["recomputed"] == ["coords", "flip"]

    assert main(["labels", "verify", str(plain_reference)]) == 0
    out = capsys.readouterr().out
    assert "7 arrays (coords, entropy, flip, targets, topk_idx, topk_prob, y_s) and image_ids.json match" in out
    assert "regions" not in out and out.rstrip().endswith("OK: 23 images, 115 crops, 7 arrays verified")
    store = copy_of(plain_reference, tmp_path)
    edit(store, "coords", lambda a: a.__setitem__((0, 0, 0), a[0, 0, 0] * np.float16(0.5) + np.float16(0.01)))
    assert main(["labels", "verify", str(store)]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"error: label store {store} is damaged:")
    assert "checksum mismatch in coords" in captured.err and "--overwrite" in captured.err
    assert "OK" not in captured.out


# ----- the compact layout's recomputed regions


# kept once recomputed, or recomputed on every read (a store larger than REGION_CACHE_BYTES)
CACHE_SIZES = pytest.mark.parametrize("cache_bytes", [1 << 30, 0], ids=["kept", "per read"])


@CACHE_SIZES
def test_recomputed_regions_are_checked_against_the_chunk_markers(reference, tmp_path, monkeypatch, capsys,
                                                                   cache_bytes):
    monkeypatch.setattr(store_module, "REGION_CACHE_BYTES", cache_bytes)
    monkeypatch.setattr(store_module, "_VERIFIED", set())
    store = copy_of(reference, tmp_path)
    edit(store, "image_size", lambda a: a.__setitem__((5, 1), a[5, 1] + 1))  # image 5 (chunk 1), still in range
    # the first open in a process compares image_size.npy with its checksum
    assert "checksum mismatch in image_size" in open_error(store)
    # without the checksums, the regions of chunk 1 are refused as soon as they are read; the others are fine
    opened = LabelStore.open(store, verify="cheap")
    np.testing.assert_array_equal(opened.coords[:4], LabelStore.open(reference).coords[:4])
    with pytest.raises(StoreError) as caught:
        opened.crops(6)
    message = str(caught.value)
    assert ("the crop boxes recomputed for chunk 1 (images 4-7) from the seed and image_size.npy differ from the "
            "sha256 that chunks/000001.json recorded when the labels were generated") in message
    assert REMEDY in message and "--layout plain" in message
    assert main(["labels", "verify", str(store)]) == 2
    assert "the crop boxes recomputed for chunk 1 (images 4-7)" in capsys.readouterr().err

    # a marker whose flips' digest was changed: the flips of its chunk are refused
    store = copy_of(reference, tmp_path, "marker")
    marker = store / "chunks" / "000004.json"
    content = json.loads(marker.read_text())
    content["sha256"]["flip"] = "0" * 64
    marker.write_text(json.dumps(content))
    opened = LabelStore.open(store, verify="cheap")
    with pytest.raises(StoreError, match=r"the crop flips recomputed for chunk 4 \(images 16-19\)"):
        opened.flip[[2, 17]]
    assert opened.flip[[2, 21]].shape == (2, 5)


@CACHE_SIZES
def test_recomputed_regions_of_unfinished_images_are_zero(partial, reference, monkeypatch, cache_bytes):
    monkeypatch.setattr(store_module, "REGION_CACHE_BYTES", cache_bytes)
    store = LabelStore.open(partial, allow_partial=True)
    assert store.derived["coords"].source.cached == (cache_bytes > 0)
    assert not np.asarray(store.coords[[12, 0, 22]][[0, 2]]).any() and not store.flip[22].any()
    assert not np.asarray(store.coords[12:]).any() and not np.asarray(store.flip[12:]).any()
    np.testing.assert_array_equal(store.coords[:12], LabelStore.open(reference).coords[:12])
    assert (store.coords[:12, :, 2:] > 0).all()  # every finished crop has a height and a width


# ----- fault 4: unreadable files


def _truncate(file, keep):
    file.write_bytes(file.read_bytes()[:keep])


def _overwrite(file, at, data):
    content = bytearray(file.read_bytes())
    content[at:at + len(data)] = data
    file.write_bytes(bytes(content))


FILE_FAULTS = {
    "truncated npy": (lambda s: _truncate(s / "topk_prob.npy", 600),
                      "topk_prob.npy is truncated: 600 bytes, expected 818"),
    "broken header": (lambda s: _overwrite(s / "y_s.npy", 20, b"garbage!garbage!garb"),
                      "y_s.npy has a damaged header: it cannot be read as a .npy file"),
    "no magic": (lambda s: _overwrite(s / "image_size.npy", 0, bytes(6)),
                 "image_size.npy has a damaged header: it cannot be read as a .npy file"),
    "missing npy": (lambda s: (s / "entropy.npy").unlink(), "entropy.npy is missing"),
    "wrong shape": (lambda s: np.save(s / "targets.npy", np.zeros(20, np.int64)),
                    "targets.npy holds int64 (20,); the manifest expects int64 (23,)"),
    "truncated manifest": (lambda s: _truncate(s / "manifest.json", 400),
                           "manifest.json is truncated or not valid JSON (parsing stopped at line"),
    "empty manifest": (lambda s: _truncate(s / "manifest.json", 0), "manifest.json is empty"),
    "missing image ids": (lambda s: (s / "image_ids.json").unlink(), "image_ids.json is missing"),
    "truncated image ids": (lambda s: _truncate(s / "image_ids.json", 50),
                            "image_ids.json is truncated or not valid JSON (parsing stopped at line 1, column 50)"),
}


@pytest.mark.parametrize("fault", list(FILE_FAULTS))
def test_unreadable_files_are_named_with_the_fix(reference, tmp_path, capsys, fault):
    store = copy_of(reference, tmp_path)
    damage, expected = FILE_FAULTS[fault]
    damage(store)
    before = snapshot(store)
    with pytest.raises(StoreError) as caught:
        LabelStore.open(store, verify="none")
    message = str(caught.value)
    assert f"label store {store} is damaged: {expected}" in message
    assert "--overwrite" in message and "restore it from a copy" in message
    error = caught.value  # no chained parser or numpy exception under it
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)
    assert main(["labels", "inspect", str(store)]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err and "Expecting" not in err and "mmap" not in err
    assert snapshot(store) == before


# ----- fault 5: a store whose creation was killed


def test_half_created_store_suggests_overwrite(reference, tmp_path):
    store = copy_of(reference, tmp_path)
    # LabelStore.create writes the arrays and image ids first and manifest.json last
    (store / "manifest.json").unlink()
    for marker in (store / "chunks").glob("*.json"):
        marker.unlink()
    before = snapshot(store)
    with pytest.raises(StoreError) as caught:
        generate(store)
    message = str(caught.value)
    assert "exists and is not a label store; choose an empty or new folder, or rerun with --overwrite " \
           "(overwrite=True from Python)" in message
    assert ("creation was interrupted before its manifest.json was written (chunks, entropy.npy, image_ids.json, "
            "image_size.npy, …)") in message
    assert snapshot(store) == before
    assert generate(store, overwrite=True).manifest["checksums"] == LabelStore.open(reference).manifest["checksums"]

    other = tmp_path / "notes"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(StoreError, match=r"or pass --overwrite \(overwrite=True from Python\) to delete everything "
                                         r"in it \(1 entry: notes.txt\)"):
        generate(other)
    assert (other / "notes.txt").read_text() == "keep me"


# ----- fault 6: inspecting an image that has no labels yet


def test_inspect_an_unfinished_image(partial, capsys):
    assert main(["labels", "inspect", str(partial), "--image", "13"]) == 2
    err = capsys.readouterr().err
    assert (f"image 13's labels are not generated yet: its chunk 3 (images 12-15) is not finished in {partial} "
            "(3/6 chunks written); rerun the same `softlab labels generate` command to resume it") in err
    assert main(["labels", "inspect", str(partial), "--image", "11", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["image"] == 11 and len(shown["crops"]) == 5 and shown["crops"][0]["y_s"] > 0
