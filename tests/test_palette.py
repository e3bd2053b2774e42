"""Per-image class palettes: the compact layout's one-byte class codes for more than 256 classes."""
import shutil

import numpy as np
import pytest
import torch

from softlab.cli import main
from softlab.labels import LabelStore, StoreError, generate_labels
from softlab.labels.fkd import export_fkd, import_fkd
from softlab.labels import store as store_module
from softlab.labels.palette import decode_chunk, encode_chunk, palette_rows
from tiny import LinearTeacher, NoiseImages

CLASSES = 300


def generate(out, **kwargs):
    settings = dict(num_crops=60, label_type="marginal_smoothing_k5", chunk_size=4, batch_size=7, seed=3,
                    progress=False, device="cpu")
    settings.update(kwargs)
    # a flat teacher (scale 0.5): each image's crops keep some 20 distinct classes among their top-5
    return generate_labels(NoiseImages(num_classes=CLASSES), LinearTeacher(num_classes=CLASSES, scale=0.5), out,
                           **settings)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    folder = tmp_path_factory.mktemp("palette")
    return generate(folder / "compact"), generate(folder / "plain", layout="plain")


class Interrupt(Exception):
    pass


# ----- the codec


def test_codes_index_each_images_sorted_distinct_classes():
    indices = np.array([[[5, 300], [300, 7]],
                        [[2, 2], [2, 2]]])
    codes, array = encode_chunk(indices)
    # image 0's palette is [5, 7, 300], image 1's [2]; the sizes come first, then the palettes
    np.testing.assert_array_equal(codes, [[[0, 2], [2, 1]], [[0, 0], [0, 0]]])
    assert codes.dtype == np.uint8
    np.testing.assert_array_equal(array, [3, 1, 5, 7, 300, 2])
    assert array.dtype == np.int16
    np.testing.assert_array_equal(decode_chunk(codes, array), indices)


def test_an_image_with_more_than_256_classes_keeps_its_high_bytes():
    rng = np.random.default_rng(0)
    wide = rng.permutation(1000)[:400].reshape(100, 4)  # 400 distinct classes over 100 crops × top-4
    narrow = rng.integers(0, 1000, (100, 4)) % 50 + 600  # at most 50 distinct
    indices = np.stack([narrow, wide, np.zeros((100, 4), dtype=np.int64)])
    codes, array = encode_chunk(indices)
    np.testing.assert_array_equal(codes[1], wide % 256)  # the wide image's codes are its low bytes
    distinct = len(np.unique(narrow))
    np.testing.assert_array_equal(array[:3], [distinct, 0, 1])
    np.testing.assert_array_equal(array[3 + distinct + 1:], (wide // 256).ravel())  # high bytes, after the palettes
    rows, highs = palette_rows(array, 3, 100, 4)
    np.testing.assert_array_equal(rows[1], np.arange(256))
    assert list(highs) == [1]
    decoded = decode_chunk(codes, array)
    np.testing.assert_array_equal(decoded, indices)
    assert decoded.dtype == np.int16


@pytest.mark.parametrize("array, message", [
    (np.array([2, 5], dtype=np.int16), "2 values where the palette sizes imply 3"),
    (np.array([257] + [0] * 257, dtype=np.int16), r"palette sizes must lie in \[0, 256\], got \[257, 257\]"),
    (np.array([1, 5], dtype=np.int32), "expected a 1-D int16 array"),
])
def test_a_damaged_palette_array_is_refused(array, message):
    with pytest.raises(ValueError, match=message):
        palette_rows(array, 1, 2, 2)


# ----- in a store


def test_a_compact_store_over_300_classes_keeps_one_byte_codes_and_the_same_labels(stores):
    compact, plain = stores
    assert compact.manifest["format_version"] == 3 and compact.manifest["layout"] == "compact"
    assert {path.stem for path in compact.path.glob("*.npy")} == {"image_size", "topk_code", "topk_prob", "y_s",
                                                                   "entropy", "targets"}
    codes = np.load(compact.path / "topk_code.npy", allow_pickle=False)
    assert codes.dtype == np.uint8 and codes.shape == (23, 60, 5)
    assert sorted(path.name for path in (compact.path / "palettes").iterdir()) == [f"{c:06d}.npy" for c in range(6)]
    # decoded by hand from the files: each chunk's palettes, gathered by the codes
    by_hand = np.concatenate([decode_chunk(codes[start:start + 4],
                                           np.load(compact.path / "palettes" / f"{start // 4:06d}.npy"))
                              for start in range(0, 23, 4)])
    np.testing.assert_array_equal(by_hand, plain.topk_idx)
    images, crops = np.array([0, 22, 7, 7]), np.array([4, 0, 1, 39])
    for key in (5, -1, slice(3, 9), slice(None, None, -4), (images, crops), np.arange(23) % 3 == 0, (Ellipsis, 2),
                (slice(None), 1, 2), (7, slice(2, 4))):
        np.testing.assert_array_equal(compact.topk_idx[key], plain.topk_idx[key], err_msg=str(key))
    assert compact.topk_idx.dtype == np.int16 and compact.topk_idx.shape == (23, 60, 5)
    np.testing.assert_array_equal(np.asarray(compact.topk_idx), np.asarray(plain.topk_idx))
    torch.testing.assert_close(compact.labels(images, crops), plain.labels(images, crops))
    # the codes are 5 bytes per crop against int16's 10; each image's palette holds 2 bytes per distinct class
    palette_bytes = sum(len(np.unique(np.asarray(plain.topk_idx[image]))) * 2 + 2 for image in range(23))
    on_disk = sum(path.stat().st_size - 128 for path in (compact.path / "palettes").iterdir())
    assert on_disk == palette_bytes
    assert palette_bytes < 23 * 60 * 5  # what they save against int16 indices


def test_the_verify_command_decodes_and_checks_every_chunk(stores, capsys):
    compact, _ = stores
    assert main(["labels", "verify", str(compact.path)]) == 0
    out = capsys.readouterr().out
    assert "classes    topk_idx decoded from per-image palettes (topk_code.npy, palettes/), matching each " \
           "finished chunk's sha256" in out
    assert "regions    coords and flip recomputed" in out
    assert out.rstrip().endswith("OK: 23 images, 1380 crops, 9 arrays verified")
    assert set(compact.manifest["checksums"]) == {"coords", "flip", "topk_idx", "topk_code", "topk_prob", "y_s",
                                                  "entropy", "targets", "image_size"}


@pytest.mark.parametrize("damage, message", [
    ("palette", r"the class indices of chunk 1 \(images 4-7\) decoded from topk_code.npy and palettes/000001.npy "
                r"differ from the sha256 that chunks/000001.json recorded"),
    ("code", r"the class indices of chunk 1 \(images 4-7\) decoded"),
    ("truncated", r"palettes/000001.npy cannot be read as chunk 1's class palettes"),
    ("missing", r"palettes/000001.npy is missing \(chunk 1, images 4-7\)"),
])
def test_damaged_palettes_or_codes_are_refused_when_read(stores, tmp_path, monkeypatch, damage, message):
    monkeypatch.setattr(store_module, "_VERIFIED", set())
    folder = shutil.copytree(stores[0].path, tmp_path / "store")
    file = folder / "palettes" / "000001.npy"
    if damage == "palette":  # a class swapped for another in range: only the marker's sha256 can tell
        array = np.load(file)
        array[4] = (array[4] + 1) % CLASSES
        np.save(file, array)
    elif damage == "code":
        codes = np.load(folder / "topk_code.npy", mmap_mode="r+")
        codes[5, 0, 0] = codes[5, 0, 1]
        codes.flush()
        del codes
    elif damage == "truncated":
        file.write_bytes(file.read_bytes()[:-6])
    else:
        file.unlink()
    store = LabelStore.open(folder, verify="cheap")
    np.testing.assert_array_equal(store.topk_idx[:4], stores[1].topk_idx[:4])  # other chunks read as usual
    with pytest.raises(StoreError, match=message):
        store.labels([2, 6], [0, 0])
    with pytest.raises(StoreError, match=message):
        LabelStore.open(folder, verify="full")


def test_resume_after_interruption_gives_the_same_store(stores, tmp_path):
    out = tmp_path / "store"

    def interrupt(chunk):
        if chunk == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        generate(out, before_marker=interrupt)  # chunk 2's codes and palettes written, its marker not
    assert LabelStore.open(out, allow_partial=True).topk_idx[9].max() == 0  # unfinished rows read as zeros
    resumed = generate(out)
    assert resumed.manifest["checksums"] == stores[0].manifest["checksums"]
    for chunk in range(6):
        name = f"palettes/{chunk:06d}.npy"
        assert (resumed.path / name).read_bytes() == (stores[0].path / name).read_bytes(), name


def test_wide_images_in_a_store_round_trip(stores, tmp_path):
    """An image whose crops keep more than 256 distinct classes is stored losslessly (its high bytes beside)."""
    source = stores[0]
    manifest = {key: source.manifest[key] for key in ("dataset", "teacher", "crops", "label", "chunk_size", "layout")}
    store = LabelStore.create(tmp_path / "store", manifest, source.image_ids, np.asarray(source.targets))
    rng = np.random.default_rng(1)
    indices = np.asarray(source.topk_idx).copy()
    indices[5] = rng.permutation(CLASSES)[:256].repeat(2)[:300].reshape(60, 5)  # 150 distinct: a palette
    indices[6] = rng.permutation(CLASSES).reshape(60, 5)
    assert len(np.unique(indices[6])) == CLASSES  # 300 distinct: wide
    for chunk in range(store.num_chunks):
        start, stop = store.chunk_bounds(chunk)
        rows = {name: np.asarray(getattr(source, name)[start:stop])
                for name in ("coords", "flip", "topk_prob", "y_s", "entropy", "image_size")}
        store.write_chunk(chunk, {**rows, "topk_idx": indices[start:stop]})
    store.finalize()
    opened = LabelStore.open(tmp_path / "store", verify="full")
    np.testing.assert_array_equal(np.asarray(opened.topk_idx), indices)
    np.testing.assert_array_equal(opened.topk_idx[[6, 5, 6], [0, 3, 59]], indices[[6, 5, 6], [0, 3, 59]])
    sizes = np.load(tmp_path / "store" / "palettes" / "000001.npy")[:4]
    assert sizes[1] == 150 and sizes[2] == 0  # images 5 and 6 of chunk 1 (images 4-7)


def test_fkd_export_of_a_palette_store_imports_back_to_the_same_classes(stores, tmp_path):
    compact, plain = stores
    export_fkd(compact, tmp_path / "fkd", progress=False)
    imported = import_fkd(tmp_path / "fkd", tmp_path / "imported", num_classes=CLASSES, progress=False)
    order = [imported.image_ids.index(f"{compact.class_names[int(t)]}/{image_id}")
             for image_id, t in zip(compact.image_ids, compact.targets)]
    np.testing.assert_array_equal(np.asarray(imported.topk_idx)[order], np.asarray(plain.topk_idx))
    assert imported.layout == "plain" and "topk_code" not in imported.arrays
