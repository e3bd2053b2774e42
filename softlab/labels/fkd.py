"""Interop with FKD's soft-label files (one ``torch.save([coords, flip, labels])`` ``.tar`` per image).

FKD ("A Fast Knowledge Distillation Framework for Visual Recognition", Shen & Xing, ECCV 2022) and its published
soft-label zoo store, for an image with n crops, at ``<root>/train/<class_dir>/<image_stem>.tar``, where FKD's
image stem is the part of the file name before its FIRST dot (``name.split('.')[0]``: ``a.b.png`` → ``a.tar``;
FKD's trainer applies the split to ``train/<class_dir>/<name>``, so class folders must not contain dots):
``coords`` float ``[n, 4]`` (i/H, j/W, h/H, w/W), ``flip`` bool ``[n]`` and ``labels``: ``hard`` ``[n]`` class
indices, ``smoothing`` ``[n, 2]`` (index, prob), ``marginal_*`` ``[n, 2, k]`` (row 0: top-k indices stored as
floats, row 1: their probabilities); float32, or float16 with FKD's ``--use_fp16``.

Files are read with ``torch.load(weights_only=True)``, allowing only numpy's array reconstruction.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .quantize import LabelType, dense_labels, entropy, parse_label_type
from .store import LabelStore, StoreError

CLASSES_FILE = "classes.json"  # written by export_fkd: class names and each file's class (FKD ignores it)
FKD_TYPES = ("hard", "smoothing", "marginal_smoothing_k<k>", "marginal_renorm_k<k>")


def _numpy_safe_globals() -> list:
    reconstruct = np._core.multiarray._reconstruct if hasattr(np, "_core") else np.core.multiarray._reconstruct
    allowed = [reconstruct, (reconstruct, "numpy.core.multiarray._reconstruct"), np.ndarray, np.dtype]
    allowed += [getattr(np.dtypes, name) for name in ("Float16DType", "Float32DType", "Float64DType", "BoolDType",
                                                      "Int64DType", "Int32DType") if hasattr(np, "dtypes")]
    return allowed


def load_fkd_file(path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One FKD ``.tar`` → (coords float32 ``[n, 4]``, flip bool ``[n]``, labels as stored)."""
    with torch.serialization.safe_globals(_numpy_safe_globals()):
        try:
            content = torch.load(path, weights_only=True, map_location="cpu")
        except Exception as error:
            raise StoreError(f"{path} is not a readable FKD soft-label file: {error}") from error
    if not isinstance(content, (list, tuple)) or len(content) != 3:
        raise StoreError(f"{path}: expected [coords, flip, labels], found {type(content).__name__}")
    coords, flip, labels = (np.asarray(part.numpy() if torch.is_tensor(part) else part) for part in content)
    if coords.ndim != 2 or coords.shape[1] != 4 or flip.shape != (coords.shape[0],) or len(labels) != len(coords):
        raise StoreError(f"{path}: inconsistent shapes coords {coords.shape}, flip {flip.shape}, labels {labels.shape}")
    return coords.astype(np.float32), flip.astype(bool), labels


def infer_label_type(labels: np.ndarray) -> LabelType:
    """From the shape of FKD's labels; marginal files are read as marginal_smoothing (FKD's recommended type),
    since smoothing and renorm files look alike: pass ``label_type`` to read them as marginal_renorm."""
    if labels.ndim == 1:
        return LabelType("hard", 1)
    if labels.ndim == 2 and labels.shape[1] == 2:
        return LabelType("smoothing", 1)
    if labels.ndim == 3 and labels.shape[1] == 2:
        return LabelType("marginal_smoothing", labels.shape[2])
    raise StoreError(f"labels of shape {labels.shape} match no FKD label type ({', '.join(FKD_TYPES)})")


def split_fkd_labels(labels: np.ndarray, label_type: LabelType) -> tuple[np.ndarray, np.ndarray]:
    """FKD labels → (indices int64 ``[n, k]``, probs float32 ``[n, k]``)."""
    if label_type.kind == "hard":
        return labels.astype(np.int64).reshape(-1, 1), np.ones((len(labels), 1), dtype=np.float32)
    if label_type.kind == "smoothing":
        return np.rint(labels[:, 0:1].astype(np.float64)).astype(np.int64), labels[:, 1:2].astype(np.float32)
    return np.rint(labels[:, 0, :].astype(np.float64)).astype(np.int64), labels[:, 1, :].astype(np.float32)


def join_fkd_labels(indices: np.ndarray, probs: np.ndarray, label_type: LabelType, fp16: bool) -> np.ndarray:
    dtype = np.float16 if fp16 else np.float32
    if label_type.kind == "hard":
        return indices[:, 0].astype(dtype if fp16 else np.int64)
    if label_type.kind == "smoothing":
        return np.stack([indices[:, 0], probs[:, 0]], axis=1).astype(dtype)
    return np.stack([indices.astype(np.float64), probs.astype(np.float64)], axis=1).astype(dtype)


def fkd_key(image_id: str) -> str:
    """FKD's name for an image's label file, without ``.tar``: ``<folders>/<name before its first dot>``.

    ``cat/a.b.png``, ``cat/a.b`` (a folder image's id) and ``cat/a`` all give ``cat/a``.
    """
    path = Path(image_id)
    return (path.parent / path.name.split(".")[0]).as_posix()


def _unique_keys(names: list[str], what: str) -> list[str]:
    """FKD keys of ``names``; two names with the same key would share one file: an error naming both."""
    keys, seen = [], {}
    for name in names:
        key = fkd_key(name)
        if key in seen:
            raise StoreError(f"{what} {seen[key]!r} and {name!r} both map to FKD's label file {key}.tar (FKD names "
                             "a label file by the image name up to its first dot); rename one of them")
        seen[key] = name
        keys.append(key)
    return keys


def _fkd_root(folder: Path) -> Path:
    return folder / "train" if (folder / "train").is_dir() else folder


def _scan(folder: Path) -> dict[str, Path]:
    root = _fkd_root(folder)
    files = {str(p.relative_to(root).with_suffix("")): p for p in sorted(root.rglob("*.tar"))}
    if not files:
        raise StoreError(f"no FKD .tar soft-label files under {root} (expected <root>/train/<class_dir>/<image>.tar)")
    return files


def import_fkd(folder, out, dataset=None, label_type=None, num_classes: int | None = None, class_names=None,
               chunk_size: int = 256, progress: bool = True, workers: int | str = "auto") -> LabelStore:
    """Import a folder of FKD ``.tar`` files into a new label store at ``out``.

    With ``dataset`` (e.g. the ImageFolder the labels were made for) images are matched as FKD's trainer finds
    them, by ``<class_dir>/<name up to its first dot>`` (:func:`fkd_key`); every image must have a file and every
    file an image, and the store keeps the dataset's image ids. Without it, images are the files in sorted order
    (ids: their paths without ``.tar``), their classes the sorted class folders (ImageFolder's convention).

    ``workers`` processes read the files (each through ``torch.load(weights_only=True)``, about 1 ms a file);
    "auto" uses one per CPU core, up to 8, for more than 1,000 files. The store is the same either way.
    """
    folder, out = Path(folder), Path(out)
    files = _scan(folder)
    classes_file = _fkd_root(folder) / CLASSES_FILE
    keys, paths, targets, classes = _match_images(files, dataset, class_names,
                                                  classes_file if classes_file.is_file() else None)
    num_classes = num_classes or len(classes)
    if len(classes) != num_classes:
        classes = [str(c) for c in range(num_classes)]
    first_coords, _, first_labels = load_fkd_file(paths[0])
    label_type = parse_label_type(label_type) if label_type else infer_label_type(first_labels)
    num_crops = len(first_coords)
    digest = hashlib.sha256("\n".join(keys).encode()).hexdigest()
    manifest = {
        "dataset": {"name": dataset.name if dataset is not None else f"fkd:{folder.name}",
                    "fingerprint": dataset.fingerprint() if dataset is not None else digest,
                    "num_images": len(keys), "classes": list(classes)},
        "teacher": {"spec": f"fkd-import:{folder.resolve()}", "weights_sha256": None},
        "crops": {"num_crops": num_crops, "seed": None, "scale": None, "ratio": None, "flip_p": None,
                  "interpolation": "bicubic", "source": "FKD files"},
        "label": {"type": label_type.name, "k": label_type.k, "temperature": 1.0, "num_classes": num_classes,
                  "y_s": "probability of the ground-truth class in the recovered dense label"},
        "chunk_size": chunk_size,
    }
    if (out / "manifest.json").exists() or (out.exists() and any(out.iterdir())):
        raise StoreError(f"{out} already exists; import into a new folder")
    workers = import_workers(workers, len(paths))
    store = LabelStore.create(out, manifest, keys, targets)
    bar = tqdm(total=len(keys), unit="img", desc="import FKD", disable=not progress)
    files = _FkdFiles(paths, label_type, num_crops, num_classes, [int(t) for t in targets])
    if workers == 0:
        read = (files[i] for i in range(len(files)))
    else:  # batches of rows as numpy arrays: one message per 64 files between the processes, not one per array
        batches = torch.utils.data.DataLoader(files, batch_size=64, num_workers=workers, collate_fn=_as_list)
        read = (row for batch in batches for row in batch)
    for chunk in range(store.num_chunks):
        start, stop = store.chunk_bounds(chunk)
        rows = [next(read) for _ in range(start, stop)]
        failed = next((row for row in rows if isinstance(row, StoreError)), None)
        if failed is not None:
            bar.close()
            raise failed
        store.write_chunk(chunk, {name: np.stack([row[name] for row in rows]) for name in rows[0]})
        bar.update(stop - start)
    bar.close()
    store.finalize()
    return LabelStore.open(out)


def _match_images(files: dict, dataset, class_names, classes_file: Path | None = None):
    """→ (image ids, their files, targets, class names)."""
    if dataset is None:
        keys = sorted(files)
        class_dirs = sorted({Path(key).parent.as_posix() for key in keys})
        lookup = {name: index for index, name in enumerate(class_dirs)}
        if classes_file is not None:
            saved = json.loads(classes_file.read_text())
            unknown = [key for key in keys if key not in saved["targets"]]
            if unknown:
                raise StoreError(f"{len(unknown)} files (e.g. {unknown[:3]}) are not listed in {classes_file}")
            targets = np.array([saved["targets"][key] for key in keys], dtype=np.int64)
            return keys, [files[key] for key in keys], targets, list(class_names or saved["classes"])
        targets = np.array([lookup[Path(key).parent.as_posix()] for key in keys], dtype=np.int64)
        return keys, [files[key] for key in keys], targets, list(class_names or class_dirs)
    image_ids = [dataset.image_id(i) for i in range(len(dataset))]
    keys = _unique_keys(image_ids, "images")
    # files named by FKD's rule, or by an older export that kept all but the last suffix: both give the FKD key
    files = dict(zip(_unique_keys(list(files), "FKD files"), files.values()))
    missing = [key for key in keys if key not in files]
    extra = sorted(set(files) - set(keys))
    if missing or extra:
        raise StoreError(f"FKD files and {dataset.name} disagree: {len(missing)} images have no .tar "
                         f"(e.g. {missing[:3]}), {len(extra)} .tar files match no image (e.g. {extra[:3]}). "
                         "Point at the folder the labels were generated for, or import without a dataset.")
    return (image_ids, [files[key] for key in keys], np.asarray(dataset.targets, dtype=np.int64),
            list(class_names or dataset.classes))


def import_workers(workers, num_files: int) -> int:
    """Processes that read FKD files for an import: ``"auto"`` means one per CPU core, up to 8, for imports of more
    than 1,000 files (the safe unpickler costs about 1 ms per file), else none."""
    from .generate import check_workers

    if check_workers(workers, "read the files") == "auto":
        return min(8, os.cpu_count() or 1) if num_files > 1000 else 0
    return workers


def _as_list(rows: list) -> list:
    return rows


class _FkdFiles(torch.utils.data.Dataset):
    """The store rows of each FKD file, in order (a StoreError, returned as a value, for a file that is not a valid
    FKD file), so that the files can be read in DataLoader worker processes."""

    def __init__(self, paths, label_type: LabelType, num_crops: int, num_classes: int, targets: list[int]):
        self.paths, self.label_type, self.num_crops = paths, label_type, num_crops
        self.num_classes, self.targets = num_classes, targets

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            return _read_image(self.paths[index], self.label_type, self.num_crops, self.num_classes,
                               self.targets[index])
        except StoreError as error:
            return error


def _read_image(path: Path, label_type: LabelType, num_crops: int, num_classes: int, target: int) -> dict:
    coords, flip, labels = load_fkd_file(path)
    if len(coords) != num_crops:
        raise StoreError(f"{path} has {len(coords)} crops; the other files have {num_crops}")
    found = infer_label_type(labels)
    if found.kind != label_type.kind and not (found.kind.startswith("marginal") and label_type.kind.startswith("marginal")):
        raise StoreError(f"{path} holds {found.name} labels, not {label_type.name}")
    if label_type.kind.startswith("marginal") and labels.shape[2] != label_type.k:
        raise StoreError(f"{path} keeps k={labels.shape[2]} classes per crop, expected k={label_type.k}")
    indices, probs = split_fkd_labels(labels, label_type)
    if indices.min() < 0 or indices.max() >= num_classes:
        raise StoreError(f"{path} has class indices outside [0, {num_classes}); pass num_classes")
    dense = dense_labels(torch.from_numpy(indices), torch.from_numpy(probs.astype(np.float16)), label_type,
                         num_classes)
    y_s = dense[:, target] if target >= 0 else torch.full((num_crops,), float("nan"))
    return {"coords": coords, "flip": flip, "topk_idx": indices, "topk_prob": probs,
            "y_s": y_s.numpy(), "entropy": entropy(dense).numpy()}


def export_fkd(store: LabelStore, folder, fp16: bool = False, progress: bool = True) -> int:
    """Write ``store`` as FKD ``.tar`` files under ``<folder>/train/`` → number of files written.

    Files are named as FKD's trainer looks for them (:func:`fkd_key`): ``<class_dir>/<name up to its first
    dot>.tar``. Images whose id has a folder part keep it; others go under their class name. Two images that
    would share a file raise :class:`StoreError` before anything is written. Images left without labels at
    generation (``on_bad_image="skip"``) get no file. ``classes.json`` beside the files records the class names
    and each file's class, which :func:`import_fkd` restores.
    """
    from .generate import skipped_images

    if store.label_type.kind == "full":
        raise StoreError("FKD has no 'full' label type: generate with hard, smoothing or marginal_* to export")
    root = Path(folder) / "train"
    names = store.class_names
    skipped = {int(entry["index"]) for entry in skipped_images(store)}
    images = [image for image in range(store.num_images) if image not in skipped]
    relatives = []
    for image in images:
        image_id, target = store.image_ids[image], int(store.targets[image])
        if Path(image_id).parent == Path("."):
            image_id = f"{_safe(names[target] if target >= 0 else 'unlabelled')}/{image_id}"
        relatives.append(image_id)
    keys = _unique_keys(relatives, "images")
    targets = {}
    for image, key in zip(tqdm(images, unit="img", desc="export FKD", disable=not progress), keys):
        targets[key] = int(store.targets[image])
        indices, probs = store.raw(image, np.arange(store.num_crops))
        coords = np.asarray(store.coords[image], dtype=np.float16 if fp16 else np.float32)
        labels = join_fkd_labels(indices.numpy(), probs.numpy(), store.label_type, fp16)
        path = root / f"{key}.tar"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save([coords, np.asarray(store.flip[image], dtype=bool), labels], path)
    root.mkdir(parents=True, exist_ok=True)
    (root / CLASSES_FILE).write_text(json.dumps({"classes": names, "targets": targets}, indent=1))
    return len(images)


def _safe(name: str) -> str:
    """A class name as a folder name FKD can use (no dots: FKD cuts label paths at the first dot)."""
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)
