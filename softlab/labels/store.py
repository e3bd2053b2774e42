"""The label store: one folder per label set, a JSON manifest and memory-mapped ``.npy`` arrays.

Layout of ``<store>/``::

    manifest.json        data set fingerprint, teacher, crop parameters, seed, label type, k, T, checksums
    coords.npy           float16 [N, n, 4]   FKD's normalised (i/H, j/W, h/H, w/W)
    flip.npy             bool    [N, n]
    topk_idx.npy         int16/int32 [N, n, k]   (absent for label type "full")
    topk_prob.npy        float16 [N, n, k]   raw teacher probabilities of the kept classes ([N, n, C] for "full")
    y_s.npy              float32 [N, n]      teacher probability of the ground-truth class (NaN: no label)
    entropy.npy          float32 [N, n]      entropy (nats) of the teacher distribution
    targets.npy          int64   [N]
    image_ids.json       stable image names (relative paths for folders)
    chunks/<c>.json      one marker per finished chunk of images, with the sha256 of its bytes

Arrays are preallocated; a chunk's rows count as written only once its marker exists (the marker is written
after the rows are flushed, then atomically renamed into place), so an interrupted writer never leaves a chunk
that a reader would accept. Reading needs numpy only: no pickle anywhere.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from .quantize import dense_labels, parse_label_type

FORMAT = "softlab-labels"
FORMAT_VERSION = 1
PER_CROP_ARRAYS = ("coords", "flip", "topk_idx", "topk_prob", "y_s", "entropy")


class StoreError(RuntimeError):
    """A label store is missing, incomplete, corrupt or does not match the requested settings."""


def write_json_atomic(path: Path, data) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def array_specs(num_images: int, num_crops: int, num_classes: int, label_type) -> dict:
    """name → (dtype, shape) of every array of a store."""
    label_type = parse_label_type(label_type)
    k = label_type.stored_k(num_classes)
    specs = {
        "coords": ("float16", (num_images, num_crops, 4)),
        "flip": ("bool", (num_images, num_crops)),
        "topk_prob": ("float16", (num_images, num_crops, k)),
        "y_s": ("float32", (num_images, num_crops)),
        "entropy": ("float32", (num_images, num_crops)),
        "targets": ("int64", (num_images,)),
    }
    if label_type.kind != "full":
        specs["topk_idx"] = ("int16" if num_classes <= np.iinfo(np.int16).max else "int32", (num_images, num_crops, k))
    return specs


class LabelStore:
    """Read access (and chunked write access for generators/importers) to one label store."""

    def __init__(self, path, manifest: dict, mode: str = "r"):
        self.path = Path(path)
        self.manifest = manifest
        self.mode = mode
        self.label_type = parse_label_type(manifest["label"]["type"])
        self.arrays = {name: np.load(self.path / f"{name}.npy", mmap_mode=mode)
                       for name in manifest["arrays"]}
        self.image_ids = json.loads((self.path / "image_ids.json").read_text())

    # ----- creation and writing
    @classmethod
    def create(cls, path, manifest: dict, image_ids: list[str], targets) -> "LabelStore":
        """Preallocate a store described by ``manifest`` (which needs dataset/label/crops/chunk_size entries)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / "chunks").mkdir(exist_ok=True)
        dataset, label = manifest["dataset"], manifest["label"]
        specs = array_specs(dataset["num_images"], manifest["crops"]["num_crops"], label["num_classes"], label["type"])
        manifest = {**manifest, "format": FORMAT, "format_version": FORMAT_VERSION, "complete": False,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "arrays": {name: {"dtype": dtype, "shape": list(shape)} for name, (dtype, shape) in specs.items()}}
        for name, (dtype, shape) in specs.items():
            array = np.lib.format.open_memmap(path / f"{name}.npy", mode="w+", dtype=dtype, shape=shape)
            if name == "targets":
                array[:] = np.asarray(targets, dtype=np.int64)
            array.flush()
            del array
        (path / "image_ids.json").write_text(json.dumps(list(image_ids)))
        write_json_atomic(path / "manifest.json", manifest)
        return cls(path, manifest, mode="r+")

    def chunk_bounds(self, chunk: int) -> tuple[int, int]:
        size = self.manifest["chunk_size"]
        return chunk * size, min((chunk + 1) * size, self.num_images)

    @property
    def num_chunks(self) -> int:
        return -(-self.num_images // self.manifest["chunk_size"])

    def _marker(self, chunk: int) -> Path:
        return self.path / "chunks" / f"{chunk:06d}.json"

    def finished_chunks(self) -> set[int]:
        return {int(p.stem) for p in (self.path / "chunks").glob("*.json")}

    def pending_chunks(self) -> list[int]:
        done = self.finished_chunks()
        return [c for c in range(self.num_chunks) if c not in done]

    def write_chunk(self, chunk: int, rows: dict, before_marker=None) -> None:
        """Write one chunk's per-crop rows, flush them, then publish the chunk's marker."""
        start, stop = self.chunk_bounds(chunk)
        digests = {}
        for name in PER_CROP_ARRAYS:
            if name not in self.arrays:
                continue
            data = np.asarray(rows[name], dtype=self.arrays[name].dtype)
            if data.shape != self.arrays[name][start:stop].shape:
                raise StoreError(f"chunk {chunk}: {name} has shape {data.shape}, "
                                 f"expected {self.arrays[name][start:stop].shape}")
            self.arrays[name][start:stop] = data
            self.arrays[name].flush()
            digests[name] = hashlib.sha256(np.ascontiguousarray(data).tobytes()).hexdigest()
        if before_marker is not None:
            before_marker(chunk)
        write_json_atomic(self._marker(chunk), {"chunk": chunk, "start": start, "stop": stop, "sha256": digests})

    def finalize(self, extra: dict | None = None) -> None:
        """Mark the store complete, recording whole-array checksums (after every chunk has its marker)."""
        missing = self.pending_chunks()
        if missing:
            raise StoreError(f"cannot finalise {self.path}: chunks {missing[:5]}... not written")
        self.manifest.update(extra or {})
        self.manifest["checksums"] = self.compute_checksums()
        self.manifest["complete"] = True
        write_json_atomic(self.path / "manifest.json", self.manifest)

    def compute_checksums(self) -> dict:
        return {name: _sha256_rows(array) for name, array in self.arrays.items()}

    # ----- opening and reading
    @classmethod
    def open(cls, path, allow_partial: bool = False) -> "LabelStore":
        path = Path(path)
        manifest_path = path / "manifest.json"
        if not manifest_path.is_file():
            raise StoreError(f"{path} is not a label store (no manifest.json); make one with `softlab labels "
                             "generate` or `softlab labels import-fkd`")
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("format") != FORMAT:
            raise StoreError(f"{manifest_path} is not a softlab label manifest (format={manifest.get('format')!r})")
        if manifest.get("format_version", 0) > FORMAT_VERSION:
            raise StoreError(f"{path} has format version {manifest['format_version']}; this softlab reads up to "
                             f"{FORMAT_VERSION}: upgrade softlab")
        store = cls(path, manifest)
        if not manifest.get("complete") and not allow_partial:
            done = len(store.finished_chunks())
            raise StoreError(f"label store {path} is incomplete ({done}/{store.num_chunks} chunks written): rerun the "
                             "same `softlab labels generate` command to resume it, or open with allow_partial=True")
        return store

    def verify(self) -> None:
        """Recompute the checksums of every array and compare them with the manifest's."""
        expected = self.manifest.get("checksums")
        if not expected:
            raise StoreError(f"{self.path} has no checksums (incomplete store)")
        bad = [name for name, digest in self.compute_checksums().items() if expected.get(name) != digest]
        if bad:
            raise StoreError(f"{self.path}: checksum mismatch in {', '.join(bad)}; the store is corrupt, regenerate it")

    def image_done(self) -> np.ndarray:
        """bool ``[N]``: which images belong to finished chunks."""
        done = np.zeros(self.num_images, dtype=bool)
        for chunk in self.finished_chunks():
            start, stop = self.chunk_bounds(chunk)
            done[start:stop] = True
        return done

    @property
    def num_images(self) -> int:
        return self.manifest["dataset"]["num_images"]

    @property
    def num_crops(self) -> int:
        return self.manifest["crops"]["num_crops"]

    @property
    def num_classes(self) -> int:
        return self.manifest["label"]["num_classes"]

    @property
    def class_names(self) -> list[str]:
        return self.manifest["dataset"]["classes"]

    @property
    def temperature(self) -> float:
        return self.manifest["label"]["temperature"]

    def __getattr__(self, name):
        arrays = self.__dict__.get("arrays", {})
        if name in arrays:
            return arrays[name]
        raise AttributeError(name)

    def __len__(self) -> int:
        return self.num_images

    def crops(self, image: int) -> tuple[np.ndarray, np.ndarray]:
        """One image's (coords float32 ``[n, 4]``, flips bool ``[n]``)."""
        return np.asarray(self.coords[image], dtype=np.float32), np.asarray(self.flip[image])

    def raw(self, image_idx, crop_idx) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Stored (indices, values) for pairs of (image, crop) indices (broadcast together)."""
        image_idx, crop_idx = np.broadcast_arrays(np.asarray(image_idx), np.asarray(crop_idx))
        values = torch.from_numpy(np.asarray(self.topk_prob[image_idx.ravel(), crop_idx.ravel()], dtype=np.float32))
        if "topk_idx" not in self.arrays:
            return None, values
        indices = torch.from_numpy(np.asarray(self.topk_idx[image_idx.ravel(), crop_idx.ravel()], dtype=np.int64))
        return indices, values

    def labels(self, image_idx, crop_idx) -> torch.Tensor:
        """Dense float32 soft labels ``[B, C]`` for (image, crop) index pairs, vectorised."""
        indices, values = self.raw(image_idx, crop_idx)
        return dense_labels(indices, values, self.label_type, self.num_classes)

    def summary(self) -> dict:
        y_s = np.asarray(self.y_s, dtype=np.float64)
        done = self.image_done()
        labelled = y_s[done][~np.isnan(y_s[done])]
        return {
            "path": str(self.path),
            "dataset": self.manifest["dataset"]["name"],
            "images": self.num_images,
            "images_done": int(done.sum()),
            "crops_per_image": self.num_crops,
            "classes": self.num_classes,
            "label_type": self.label_type.name,
            "temperature": self.temperature,
            "teacher": self.manifest["teacher"].get("spec"),
            "seed": self.manifest["crops"]["seed"],
            "complete": bool(self.manifest.get("complete")),
            "bytes_on_disk": sum(p.stat().st_size for p in self.path.glob("*.npy")),
            "y_s_mean": float(labelled.mean()) if labelled.size else float("nan"),
            "y_s_quartiles": np.quantile(labelled, [0.25, 0.5, 0.75]).round(4).tolist() if labelled.size else [],
            "entropy_mean": float(np.asarray(self.entropy, dtype=np.float64)[done].mean()) if done.any() else float("nan"),
        }


def _sha256_rows(array: np.ndarray, rows_per_block: int = 4096) -> str:
    digest = hashlib.sha256()
    for start in range(0, max(len(array), 1), rows_per_block):
        digest.update(np.ascontiguousarray(array[start:start + rows_per_block]).tobytes())
    return digest.hexdigest()
