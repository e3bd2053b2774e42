"""The label store: one folder per label set, a JSON manifest and memory-mapped ``.npy`` arrays.

Layout of ``<store>/`` (``"compact"``, what ``softlab labels generate`` writes)::

    manifest.json        data set fingerprint, teacher, crop parameters, seed, label type, k, T, checksums
    image_size.npy       int32   [N, 2]      each image's (height, width) when its crops were sampled
    topk_idx.npy         uint8 [N, n, k]     class indices, up to 256 classes (absent for label type "full")
    topk_code.npy        uint8 [N, n, k]     instead, above 256 classes: codes into each image's class palette
    palettes/<c>.npy     int16               chunk c's palettes: each image's distinct classes (:mod:`.palette`)
    topk_prob.npy        float16 [N, n, k]   raw teacher probabilities of the kept classes ([N, n, C] for "full")
    y_s.npy              float16 [N, n]      teacher probability of the ground-truth class (NaN: no label)
    entropy.npy          float16 [N, n]      entropy (nats) of the teacher distribution
    targets.npy          int64   [N]
    image_ids.json       stable image names (relative paths for folders)
    chunks/<c>.json      one marker per finished chunk of images, with the sha256 of its rows (and, from
                         `softlab labels generate`, the chunk's skipped images)

A generated store's crop regions are a pure function of (seed, image index, image size)
(:func:`~softlab.data.crops.sample_crops`), so the compact layout does not store them: ``store.coords``
(float16 ``[N, n, 4]``, FKD's normalised (i/H, j/W, h/H, w/W)) and ``store.flip`` (bool ``[N, n]``) are
recomputed chunk by chunk on first use, and each chunk's are checked against the sha256 its marker recorded when
the labels were generated. The ``"plain"`` layout (``--layout plain``; imported FKD labels; stores of format
version 1) keeps them as ``coords.npy`` and ``flip.npy``, with ``y_s`` and ``entropy`` in float32 and class
indices in int16/int32.

Above 256 classes, the compact layout keeps one byte per class index all the same, as one image's crops keep few
distinct classes: ``store.topk_idx`` (int16) is decoded from the codes and the palettes chunk by chunk, on first
use, and checked against the sha256 of the class indices in the chunk's marker.

Images that could not be decoded when the labels were generated (``on_bad_image="skip"``) keep their index but
have no labels: the manifest lists them under ``"skipped"`` (``{index, id, path, reason, detail}``), and their rows
hold NaN ``y_s`` and ``entropy``, zero probabilities, class indices, coordinates and image size, and no flips
(:attr:`LabelStore.skipped`, :meth:`LabelStore.skipped_mask`). Training and calibration leave them out.

Arrays are preallocated; a chunk's rows count as written only once its marker exists (the marker is written
after the rows are flushed, then atomically renamed into place), so an interrupted writer never leaves a chunk
that a reader would accept. Reading needs numpy only: no pickle anywhere.

Opening a store checks it (see :meth:`LabelStore.open`): the files against the manifest and every finished row's
values against their possible range, always; the sha256 checksums the first time a process opens the store, or on
request (``verify="full"``, ``softlab labels verify``). A damaged store raises :class:`StoreError` naming the file,
what is wrong and how to repair it, instead of feeding corrupt labels to a student.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from .palette import MAX_CLASSES, decode_codes, encode_chunk, palette_rows
from .quantize import dense_labels, parse_label_type

FORMAT = "softlab-labels"
# 2: the compact layout; 3: its class palettes (more than 256 classes); plain stores are still version 1
FORMAT_VERSION = 3
PER_CROP_ARRAYS = ("coords", "flip", "topk_idx", "topk_prob", "y_s", "entropy")
# written chunk by chunk, their rows' sha256 in the markers
CHUNK_ARRAYS = PER_CROP_ARRAYS + ("image_size", "topk_code")
DERIVED_ARRAYS = ("coords", "flip")  # recomputed, not stored, in the compact layout
LAYOUTS = ("compact", "plain")
VERIFY_LEVELS = ("auto", "full", "cheap", "none")
SCAN_BLOCK_BYTES = 4 << 20  # value checks read memory-mapped arrays in blocks of about this many bytes
# a compact store keeps its recomputed crop regions (9 B per crop) up to this size, recomputes them per read above
# (ImageNet at FKD's 500 crops per image: 5.8 GB); the environment variable SOFTLAB_REGION_CACHE_GB overrides it
REGION_CACHE_BYTES = 8 << 30

# Stores whose checksums this process has verified (or computed, in finalize): a complete store's key holds its
# resolved path, the manifest's checksums and its array files' (size, mtime, inode); an incomplete store's finished
# chunks are keyed by path, chunk, marker file and the array files. Later opens of an unchanged store then do the
# cheap checks only.
_VERIFIED: set = set()


class StoreError(RuntimeError):
    """A label store is missing, incomplete, corrupt or does not match the requested settings."""


def write_json_atomic(path: Path, data) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def array_specs(num_images: int, num_crops: int, num_classes: int, label_type, layout: str = "plain",
                palette: bool = False) -> dict:
    """name → (dtype, shape) of every array file of a store (``palette``: class indices as per-image palette
    codes, ``topk_code.npy``, see :func:`uses_palette`)."""
    label_type = parse_label_type(label_type)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    k = label_type.stored_k(num_classes)
    compact = layout == "compact"
    scalar = "float16" if compact else "float32"
    specs = {
        "coords": ("float16", (num_images, num_crops, 4)),
        "flip": ("bool", (num_images, num_crops)),
        "topk_prob": ("float16", (num_images, num_crops, k)),
        "y_s": (scalar, (num_images, num_crops)),
        "entropy": (scalar, (num_images, num_crops)),
        "targets": ("int64", (num_images,)),
    }
    if compact:
        del specs["coords"], specs["flip"]
        specs["image_size"] = ("int32", (num_images, 2))
    if palette:
        specs["topk_code"] = ("uint8", (num_images, num_crops, k))
    elif label_type.kind != "full":
        specs["topk_idx"] = (index_dtype(num_classes, compact), (num_images, num_crops, k))
    return specs


def uses_palette(num_classes: int, label_type, layout: str) -> bool:
    """Whether a new store keeps its class indices as per-image palette codes (:mod:`.palette`): the compact
    layout's top-k labels over more than 256 classes (up to 256, a class index is one byte anyway)."""
    return (layout == "compact" and parse_label_type(label_type).kind != "full"
            and 256 < num_classes <= MAX_CLASSES)


def manifest_palette(manifest: dict) -> bool:
    arrays = manifest.get("arrays")
    return isinstance(arrays, dict) and "topk_code" in arrays


def index_dtype(num_classes: int, compact: bool) -> str:
    if compact and num_classes <= 256:
        return "uint8"
    return "int16" if num_classes <= np.iinfo(np.int16).max else "int32"


def store_layout(manifest: dict) -> str:
    """A manifest's layout: ``"compact"`` or ``"plain"`` (stores from before the choice)."""
    return manifest.get("layout", "plain") if isinstance(manifest, dict) else "plain"


class LabelStore:
    """Read access (and chunked write access for generators/importers) to one label store."""

    def __init__(self, path, manifest: dict, mode: str = "r"):
        self.path = Path(path)
        self.manifest = manifest
        self.mode = mode
        _check_manifest(self.path, manifest)
        _check_skipped(self.path, manifest)
        self.label_type = parse_label_type(manifest["label"]["type"])
        self.layout = store_layout(manifest)
        self.arrays = {name: _map_array(self.path, name, spec, mode, manifest)
                       for name, spec in manifest["arrays"].items()}
        self.image_ids = _read_image_ids(self.path, manifest)
        # the compact layout's crop regions, recomputed on first use, and class indices decoded from palette codes
        # (see the module docstring)
        self.derived = RecomputedCrops(self).arrays() if self.layout == "compact" else {}
        if "topk_code" in self.arrays:
            self.derived["topk_idx"] = PaletteIndices(self).array()

    # ----- creation and writing
    @classmethod
    def create(cls, path, manifest: dict, image_ids: list[str], targets) -> "LabelStore":
        """Preallocate a store described by ``manifest`` (which needs dataset/label/crops/chunk_size entries)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / "chunks").mkdir(exist_ok=True)
        dataset, label = manifest["dataset"], manifest["label"]
        layout = store_layout(manifest)
        palette = uses_palette(label["num_classes"], label["type"], layout)
        if palette:
            (path / "palettes").mkdir(exist_ok=True)
        specs = array_specs(dataset["num_images"], manifest["crops"]["num_crops"], label["num_classes"], label["type"],
                            layout, palette)
        if layout == "compact" and manifest["crops"].get("seed") is None:
            raise ValueError("the compact layout recomputes crop regions from their seed: a store without one "
                             "(imported labels) needs layout \"plain\"")
        version = (3 if palette else 2) if layout == "compact" else 1
        manifest = {**manifest, "format": FORMAT, "format_version": version,
                    "complete": False,
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

    def _palette_file(self, chunk: int) -> Path:
        return self.path / "palettes" / f"{chunk:06d}.npy"

    def finished_chunks(self) -> set[int]:
        """Chunks whose marker exists (files in ``chunks/`` that name no chunk of this store are ignored)."""
        found = {int(p.stem) for p in (self.path / "chunks").glob("*.json") if p.stem.isdigit()}
        return {chunk for chunk in found if chunk < self.num_chunks}

    def chunk_of(self, image: int) -> int:
        return int(image) // self.manifest["chunk_size"]

    @property
    def resume_hint(self) -> str:
        """What to do to finish an incomplete store."""
        if _imported(self.manifest):
            return ("an interrupted FKD import cannot be resumed: run `softlab labels import-fkd` again into a new "
                    "folder")
        return "rerun the same `softlab labels generate` command to resume it"

    def pending_chunks(self) -> list[int]:
        done = self.finished_chunks()
        return [c for c in range(self.num_chunks) if c not in done]

    def write_chunk(self, chunk: int, rows: dict, before_marker=None, marker_extra: dict | None = None) -> None:
        """Write one chunk's rows, flush them, then publish the chunk's marker (with the entries of
        ``marker_extra`` besides its own: a generator records the chunk's skipped images there).

        The compact layout writes no ``coords`` or ``flip``: their rows' sha256 goes into the marker, for the
        check of the regions that readers recompute. A store with class palettes writes ``topk_idx`` as codes
        (``topk_code.npy``) and the chunk's palettes (``palettes/<chunk>.npy``), and the marker keeps the sha256 of
        the class indices themselves too, which decoding checks."""
        start, stop = self.chunk_bounds(chunk)
        digests = {}
        if "topk_code" in self.arrays:
            codes, palettes = encode_chunk(np.asarray(rows["topk_idx"]))
            rows = {**rows, "topk_code": codes}
            _save_npy_atomic(self._palette_file(chunk), palettes)
        for name in CHUNK_ARRAYS:
            if name in self.arrays:
                target = self.arrays[name]
            elif name in self.derived:
                target = self.derived[name]
            else:
                continue
            data = np.asarray(rows[name], dtype=target.dtype)
            if data.shape != (stop - start, *target.shape[1:]):
                raise StoreError(f"chunk {chunk}: {name} has shape {data.shape}, "
                                 f"expected {(stop - start, *target.shape[1:])}")
            if name in self.arrays:
                target[start:stop] = data
                target.flush()
            digests[name] = hashlib.sha256(np.ascontiguousarray(data).tobytes()).hexdigest()
        if before_marker is not None:
            before_marker(chunk)
        write_json_atomic(self._marker(chunk), {**(marker_extra or {}), "chunk": chunk, "start": start, "stop": stop,
                                                "sha256": digests})

    def finalize(self, extra: dict | None = None) -> None:
        """Mark the store complete, recording whole-array checksums (after every chunk has its marker).

        The same read checks every chunk's rows against the sha256 in its marker, so rows damaged after they were
        written (for instance before an interrupted run was resumed) are reported, never sealed into checksums.
        """
        missing = self.pending_chunks()
        if missing:
            raise StoreError(f"cannot finalise {self.path}: chunks {missing[:5]}... not written")
        checksums, digests = self._hash_pass(whole=True, chunks=range(self.num_chunks), derived=True)
        problems = self._compare_chunk_digests(digests)
        if problems:
            raise _damaged(self.path, problems, self.manifest)
        self.manifest.update(extra or {})
        self.manifest["checksums"] = checksums
        self.manifest["complete"] = True
        write_json_atomic(self.path / "manifest.json", self.manifest)
        _VERIFIED.add(self._checksum_key())  # just computed from these very files: no need to hash them again

    def compute_checksums(self) -> dict:
        return {name: _sha256_rows(array) for name, array in {**self.arrays, **self.derived}.items()}

    # ----- opening and reading
    @classmethod
    def open(cls, path, allow_partial: bool = False, verify: str | bool = "auto") -> "LabelStore":
        """Open a store for reading, after checking it; a damaged store raises :class:`StoreError`.

        ``verify`` chooses how much is checked:

        - ``"cheap"`` (or False): every array file exists and matches the manifest's dtype and shape, and every
          finished row's values lie in their possible ranges (probabilities in [0, 1] summing to at most 1, class
          indices below the class count, flips 0/1, coordinates in [0, 1], finite entropies up to log C); a
          complete store must have all its chunk markers. Vectorised, in blocks: some 40 ms for 60,000 images
          × 32 crops (the checksums of such a store take some 70 ms more).
        - ``"auto"`` (default): the cheap checks, plus the sha256 checksums the first time this process opens
          the store (whole arrays against the manifest; the finished chunks' rows against their markers for an
          incomplete store). Later opens of the unchanged store in the same process skip the checksums.
        - ``"full"`` (or True): the cheap checks, the checksums and every chunk marker's own sha256, always.
        - ``"none"``: only what reading needs (the manifest, the files and their headers).
        """
        level = _verify_level(verify)
        path = Path(path)
        manifest = read_manifest(path)
        store = cls(path, manifest)
        if not manifest.get("complete") and not allow_partial:
            done = len(store.finished_chunks())
            raise StoreError(f"label store {path} is incomplete ({done}/{store.num_chunks} chunks written): "
                             f"{store.resume_hint}, or open with allow_partial=True")
        if level != "none":
            store.verify(level)
        return store

    def verify(self, level: str | bool = "full") -> dict:
        """Check the store at ``level`` (see :meth:`open`; default ``"full"``) → a report of what was checked.

        Raises :class:`StoreError` naming every damaged file and what is wrong with it.
        """
        level = _verify_level(level)
        finished = sorted(self.finished_chunks())
        complete = bool(self.manifest.get("complete"))
        report = {"store": str(self.path), "level": level, "complete": complete, "images": self.num_images,
                  "crops_per_image": self.num_crops, "label_type": self.label_type.name,
                  "layout": self.layout, "arrays": sorted(self.arrays),
                  "recomputed": sorted(self.derived) if level == "full" else [],
                  "chunks": self.num_chunks, "chunks_finished": len(finished),
                  "images_checked": 0, "crops_checked": 0, "chunk_digests_checked": 0, "checksums": "skipped"}
        if level == "none":
            return report
        problems = []
        if complete and len(finished) < self.num_chunks:
            problems.append(self._missing_markers(sorted(set(range(self.num_chunks)) - set(finished))))
        scan_problems, images = self._scan_values(finished)
        problems += scan_problems
        report["images_checked"], report["crops_checked"] = images, images * self.num_crops
        if problems:
            raise _damaged(self.path, problems, self.manifest)
        if level == "cheap":
            return report
        if complete:
            if not self.manifest.get("checksums"):
                raise _damaged(self.path, ["manifest.json marks the store complete but records no checksums"],
                               self.manifest)
            key = self._checksum_key()
            if level == "auto" and key in _VERIFIED:
                report["checksums"] = "verified earlier in this process"
                return report
            full = level == "full"
            checksums, digests = self._hash_pass(whole=True, chunks=finished if full else (), derived=full)
            expected = self.manifest["checksums"]
            bad = [name for name in checksums if expected.get(name) != checksums[name]]
            if bad:
                problems.append(f"checksum mismatch in {', '.join(bad)}: the contents of "
                                f"{', '.join(name + '.npy' for name in bad)} differ from the sha256 recorded in "
                                "manifest.json")
            problems += self._compare_chunk_digests(digests)
            if problems:
                raise _damaged(self.path, problems, self.manifest)
            _VERIFIED.add(key)
            report["checksums"] = f"{len(checksums)} arrays match"
            report["chunk_digests_checked"] = len(digests)
            return report
        state = self._files_state()
        todo = [chunk for chunk in finished if level == "full" or self._chunk_key(chunk, state) not in _VERIFIED]
        _, digests = self._hash_pass(whole=False, chunks=todo, derived=level == "full")
        problems = self._compare_chunk_digests(digests)
        if problems:
            hint = None if _imported(self.manifest) else (
                f"Or delete the markers of the chunks named above and {self.resume_hint} (that regenerates just "
                "those chunks).")
            raise _damaged(self.path, problems, self.manifest, hint=hint)
        _VERIFIED.update(self._chunk_key(chunk, state) for chunk in todo)
        report["chunk_digests_checked"] = len(todo)
        report["checksums"] = "none yet (incomplete store)"
        return report

    # ----- checks
    def _files_state(self) -> tuple:
        """(name, size, mtime, inode) of every array file: a change to any of them voids earlier verification."""
        files = []
        for name in sorted(self.arrays):
            stat = (self.path / f"{name}.npy").stat()
            files.append((name, stat.st_size, stat.st_mtime_ns, stat.st_ino))
        return tuple(files)

    def _checksum_key(self) -> tuple:
        return (str(self.path.resolve()), json.dumps(self.manifest.get("checksums"), sort_keys=True),
                self._files_state())

    def _chunk_key(self, chunk: int, files_state: tuple) -> tuple:
        stat = self._marker(chunk).stat()
        return (str(self.path.resolve()), chunk, stat.st_ino, stat.st_mtime_ns, stat.st_size, files_state)

    def _hash_pass(self, whole: bool, chunks, derived: bool = False) -> tuple[dict, dict]:
        """One read of the arrays → (whole-array sha256 per array, or {} unless ``whole``; {chunk: {array: sha256
        of the chunk's rows}} for ``chunks``, over the chunk-written arrays, as :meth:`write_chunk` records them).

        ``derived`` includes the compact layout's recomputed regions (their recomputation checks each chunk against
        its marker by itself); without it only the files are read."""
        chunks = set(chunks)
        checksums, digests = {}, {chunk: {} for chunk in chunks}
        order = range(self.num_chunks) if whole else sorted(chunks)
        for name, array in {**self.arrays, **(self.derived if derived else {})}.items():
            if name not in CHUNK_ARRAYS:
                if whole:
                    checksums[name] = _sha256_rows(array)
                continue
            digest = hashlib.sha256()
            for chunk in order:
                start, stop = self.chunk_bounds(chunk)
                rows = np.ascontiguousarray(array[start:stop])
                if whole:
                    digest.update(rows)
                if chunk in chunks:
                    digests[chunk][name] = hashlib.sha256(rows).hexdigest()
            if whole:
                checksums[name] = digest.hexdigest()
        return checksums, digests

    def _compare_chunk_digests(self, digests: dict) -> list[str]:
        """Problems found comparing computed chunk digests with the chunks' markers."""
        problems, mismatched = [], {}
        for chunk in sorted(digests):
            marker = self._marker(chunk)
            where = f"chunks/{marker.name}"
            try:
                content = json.loads(marker.read_text())
            except (OSError, ValueError):
                problems.append(f"{where} is unreadable (truncated or not valid JSON)")
                continue
            start, stop = self.chunk_bounds(chunk)
            recorded = content.get("sha256") if isinstance(content, dict) else None
            if not isinstance(recorded, dict) or (content.get("chunk"), content.get("start"), content.get("stop")) \
                    != (chunk, start, stop):
                problems.append(f"{where} does not describe chunk {chunk} (images {start}-{stop - 1})")
                continue
            for name, digest in digests[chunk].items():
                if recorded.get(name) != digest:
                    mismatched.setdefault(name, []).append(chunk)
        for name, bad in mismatched.items():
            start, stop = self.chunk_bounds(bad[0])
            listed = ", ".join(str(chunk) for chunk in bad[:5]) + (", …" if len(bad) > 5 else "")
            problems.append(f"{name}.npy: the rows of {len(bad)} chunk{'s' if len(bad) > 1 else ''} ({listed}) "
                            f"differ from the sha256 in their markers (first: chunk {bad[0]}, images "
                            f"{start}-{stop - 1})")
        return problems

    def _missing_markers(self, missing: list[int]) -> str:
        files = ", ".join(f"chunks/{self._marker(chunk).name}" for chunk in missing[:5])
        files += f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        spans = _merge_ranges([self.chunk_bounds(chunk) for chunk in missing])
        images = sum(stop - start for start, stop in spans)
        shown = ", ".join(f"{start}-{stop - 1}" for start, stop in spans[:5]) + (", …" if len(spans) > 5 else "")
        return (f"manifest.json marks the store complete but {len(missing)} of {self.num_chunks} chunk markers are "
                f"missing: {files} ({images} of {self.num_images} images: {shown})")

    def _scan_values(self, chunks) -> tuple[list[str], int]:
        """Range checks of every finished row (unfinished rows are still zeros) → (problems, images checked)."""
        spans = _merge_ranges([self.chunk_bounds(chunk) for chunk in sorted(chunks)])
        num_classes, k = self.num_classes, self.topk_prob.shape[-1]
        full = self.label_type.kind == "full"
        prob_tol = probability_sum_tolerance(num_classes, k)
        max_entropy = math.log(num_classes)
        # a label recovered from float16 values may sum to 1 + prob_tol, and a vector summing to s has an entropy
        # of at most s·ln(C/s) ≈ ln C + (s − 1)(ln C − 1): (1 + ln C)·prob_tol covers that and float32 rounding;
        # an entropy stored in float16 (compact layout) may round up by half a float16 step, 2^-11 relative
        entropy_tol = (1 + max_entropy) * prob_tol
        if "entropy" in self.arrays and self.arrays["entropy"].dtype == np.float16:
            entropy_tol += max_entropy * 2.0 ** -11
        targets = np.asarray(self.targets)
        labelled = targets >= 0
        # images listed as skipped hold the "no label" pattern instead; the other images get the usual checks
        skip = self.skipped_mask()
        finished = np.zeros(self.num_images, dtype=bool)
        for start, stop in spans:
            finished[start:stop] = True
        skipped_rows = np.flatnonzero(skip & finished)
        listed = "an image that manifest.json lists as skipped (undecodable, so without labels)"
        tallies = {
            "coords": _Tally("coords.npy", "coordinates outside [0, 1]"),
            "flip": _Tally("flip.npy", "flip bytes other than 0 or 1"),
            "topk_idx": _Tally("topk_idx.npy", f"class indices outside [0, {num_classes})"),
            "topk_prob": _Tally("topk_prob.npy", "probabilities outside [0, 1]"),
            "sum": _Tally("topk_prob.npy", f"probabilities not summing to 1 ± {prob_tol:.1e}" if full else
                          f"probabilities summing to more than 1 + {prob_tol:.1e}", label="sum"),
            "y_s": _Tally("y_s.npy", "a ground-truth probability outside [0, 1], or NaN for a labelled image"),
            "entropy": _Tally("entropy.npy", f"an entropy outside [0, ln {num_classes} = {max_entropy:.4g}] nats, "
                              "or not finite"),
            "targets": _Tally("targets.npy", f"a class outside [-1, {num_classes})", per_crop=False),
            "image_size": _Tally("image_size.npy", "a height or width below 1", per_crop=False),
            "skipped image_size": _Tally("image_size.npy", f"a size other than 0 × 0 for {listed}", per_crop=False),
        }
        no_label = {"coords": (f"coordinates other than 0 in {listed}", lambda block: block == 0),
                    "flip": (f"a flip in {listed}", lambda block: block.view(np.uint8) == 0),
                    "topk_idx": (f"a class index other than 0 in {listed}", lambda block: block == 0),
                    "topk_prob": (f"a probability other than 0 in {listed}", lambda block: block == 0),
                    "y_s": (f"a value other than NaN in {listed}", np.isnan),
                    "entropy": (f"a value other than NaN in {listed}", np.isnan)}
        for name, (what, fine) in no_label.items():
            tallies["skipped " + name] = _Tally(f"{name}.npy", what)
        bad_targets = (targets < -1) | (targets >= num_classes)
        tallies["targets"].add(bad_targets, 0, targets)
        if "image_size" in self.arrays:
            sizes = np.asarray(self.arrays["image_size"])
            smallest = sizes.min(axis=1)
            tallies["image_size"].add(finished & ~skip & (smallest < 1), 0, smallest)
            tallies["skipped image_size"].add(finished & skip & (sizes != 0).any(axis=1), 0, sizes.max(axis=1))

        for name in PER_CROP_ARRAYS:
            if name not in self.arrays:
                continue
            array = self.arrays[name]
            row_bytes = max(1, array.dtype.itemsize * int(np.prod(array.shape[1:])))
            step = max(1, SCAN_BLOCK_BYTES // row_bytes)
            for span_start, span_stop in spans:
                for start in range(span_start, span_stop, step):
                    block = np.asarray(array[start:min(start + step, span_stop)])
                    # [rows, 1]: the rows of skipped images, checked below against the "no label" pattern only
                    other = ~skip[start:start + len(block), None]
                    if name in ("coords", "topk_prob"):
                        bits = block.view(np.uint16)  # float16 in [0, 1] ⇔ bits ≤ 0x3C00 (1.0), or −0.0 (0x8000)
                        if bits.max() > 0x3C00:
                            outside = (bits > 0x3C00) & (bits != 0x8000)
                            tallies[name].add(outside.any(-1) & other, start, block, outside)
                        else:
                            outside = None
                        if name == "topk_prob" and (full or k > 1):
                            sums = block[..., 0].astype(np.float32)
                            for column in range(1, k):
                                sums += block[..., column]
                            wrong = np.abs(sums - 1) > prob_tol if full else sums > 1 + prob_tol
                            if outside is not None:
                                wrong &= ~outside.any(-1)
                            tallies["sum"].add(wrong & other, start, sums)
                    elif name == "flip":
                        raw = block.view(np.uint8)
                        if raw.max() > 1:
                            tallies[name].add((raw > 1) & other, start, raw)
                    elif name == "topk_idx":
                        if block.min() < 0 or block.max() >= num_classes:
                            outside = (block < 0) | (block >= num_classes)
                            tallies[name].add(outside.any(-1) & other, start, block, outside)
                    elif name == "y_s":
                        fine = (block >= 0) & (block <= 1 + Y_S_TOLERANCE)
                        fine |= np.isnan(block) & ~labelled[start:start + len(block), None]
                        tallies[name].add(~fine & other, start, block)
                    elif name == "entropy":
                        fine = (block >= -entropy_tol) & (block <= max_entropy + entropy_tol)
                        tallies[name].add(~fine & other, start, block)
            if len(skipped_rows):
                block = np.asarray(array[skipped_rows])
                fine = no_label[name][1](block)
                wrong = ~fine.reshape(*block.shape[:2], -1)  # [m, n, k] (k = 1 for the per-crop scalars)
                tallies["skipped " + name].add(wrong.any(-1), 0, block, wrong if block.ndim == 3 else None,
                                               rows=skipped_rows)
        problems = [tally.message() for tally in tallies.values() if tally.count]
        return problems, sum(stop - start for start, stop in spans)

    def image_done(self) -> np.ndarray:
        """bool ``[N]``: which images belong to finished chunks."""
        done = np.zeros(self.num_images, dtype=bool)
        for chunk in self.finished_chunks():
            start, stop = self.chunk_bounds(chunk)
            done[start:stop] = True
        return done

    @property
    def skipped(self) -> list[dict]:
        """The images left without labels because they could not be decoded (``on_bad_image="skip"``), as the
        manifest lists them: ``[{"index", "id", "path", "reason", "detail"}, ...]`` in index order, ``[]`` when
        none were skipped. Their rows hold NaN ``y_s`` and ``entropy`` and zeros elsewhere."""
        return sorted((dict(entry) for entry in self.manifest.get("skipped") or []), key=lambda entry: entry["index"])

    def skipped_mask(self) -> np.ndarray:
        """bool ``[N]``: which images are listed as skipped (:attr:`skipped`)."""
        mask = np.zeros(self.num_images, dtype=bool)
        mask[[int(entry["index"]) for entry in self.manifest.get("skipped") or []]] = True
        return mask

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
        for group in ("arrays", "derived"):
            arrays = self.__dict__.get(group, {})
            if name in arrays:
                return arrays[name]
        raise AttributeError(name)

    def __len__(self) -> int:
        return self.num_images

    @property
    def has_indices(self) -> bool:
        """Whether the labels keep class indices (``topk_idx``): all label types but ``full``."""
        return "topk_idx" in self.arrays or "topk_idx" in self.derived

    def crops(self, image: int) -> tuple[np.ndarray, np.ndarray]:
        """One image's (coords float32 ``[n, 4]``, flips bool ``[n]``)."""
        return np.asarray(self.coords[image], dtype=np.float32), np.asarray(self.flip[image])

    def raw(self, image_idx, crop_idx) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Stored (indices, values) for pairs of (image, crop) indices (broadcast together)."""
        image_idx, crop_idx = np.broadcast_arrays(np.asarray(image_idx), np.asarray(crop_idx))
        values = torch.from_numpy(np.asarray(self.topk_prob[image_idx.ravel(), crop_idx.ravel()], dtype=np.float32))
        if not self.has_indices:
            return None, values
        indices = torch.from_numpy(np.asarray(self.topk_idx[image_idx.ravel(), crop_idx.ravel()], dtype=np.int64))
        return indices, values

    def labels(self, image_idx, crop_idx) -> torch.Tensor:
        """Dense float32 soft labels ``[B, C]`` for (image, crop) index pairs, vectorised."""
        indices, values = self.raw(image_idx, crop_idx)
        return dense_labels(indices, values, self.label_type, self.num_classes)

    def summary(self) -> dict:
        """What the store holds; the y_s and entropy statistics are over the finished images that have labels
        (skipped images, listed in :attr:`skipped`, are left out, as are NaN y_s of images without a class)."""
        y_s = np.asarray(self.y_s, dtype=np.float64)
        done = self.image_done()
        skipped = self.skipped_mask()
        used = done & ~skipped
        labelled = y_s[used][~np.isnan(y_s[used])]
        return {
            "path": str(self.path),
            "dataset": self.manifest["dataset"]["name"],
            "images": self.num_images,
            "images_done": int(done.sum()),
            "skipped_images": int(skipped.sum()),
            "crops_per_image": self.num_crops,
            "classes": self.num_classes,
            "label_type": self.label_type.name,
            "layout": self.layout,
            "temperature": self.temperature,
            "teacher": self.manifest["teacher"].get("spec"),
            "seed": self.manifest["crops"]["seed"],
            "complete": bool(self.manifest.get("complete")),
            "bytes_on_disk": sum(p.stat().st_size for pattern in ("*.npy", "palettes/*.npy")
                                 for p in self.path.glob(pattern)),
            "y_s_mean": float(labelled.mean()) if labelled.size else float("nan"),
            "y_s_quartiles": np.quantile(labelled, [0.25, 0.5, 0.75]).round(4).tolist() if labelled.size else [],
            "entropy_mean": float(np.asarray(self.entropy, dtype=np.float64)[used].mean()) if used.any() else float("nan"),
        }


class _ChunkSource:
    """Arrays that a store derives chunk by chunk, on first use: :meth:`ensure` derives (and checks) the finished
    chunks not derived yet, :meth:`_derive` does one."""

    def __init__(self, store: "LabelStore"):
        self.store = store
        self.ready = np.zeros(store.num_chunks, dtype=bool)

    def ensure(self, chunks) -> None:
        """Derive (and check) the given chunks' rows, those of finished chunks not done yet."""
        todo = [int(chunk) for chunk in chunks if not self.ready[chunk]]
        if not todo:
            return
        # a complete store has every chunk (open checks its markers); a partial one is listed once per call
        finished = None if self.store.manifest.get("complete") else self.store.finished_chunks()
        for chunk in todo:
            if finished is None or chunk in finished:
                self._derive(chunk)
                self.ready[chunk] = True

    def _derive(self, chunk: int) -> None:
        raise NotImplementedError

    def _recorded_sha256(self, chunk: int) -> dict:
        marker = self.store._marker(chunk)
        try:
            recorded = json.loads(marker.read_text()).get("sha256")
        except (OSError, ValueError, AttributeError):
            raise _damaged(self.store.path, [f"chunks/{marker.name} is unreadable (truncated or not valid JSON)"],
                           self.store.manifest) from None
        return recorded if isinstance(recorded, dict) else {}


class RecomputedCrops(_ChunkSource):
    """A compact store's crop regions: recomputed from (seed, image index, image size), and checked a chunk at a
    time, on first use, against the sha256 of the rows the generator had (its chunk marker) before anything reads
    them.

    A store whose regions take up to :func:`region_cache_bytes` (8 GiB unless ``SOFTLAB_REGION_CACHE_GB`` says
    otherwise; 9 B per crop, 5.8 GB for ImageNet at FKD's 500 crops per image) keeps them in memory once
    recomputed, in every process that reads it. A larger one keeps none: each read recomputes the regions of the
    images it touches (0.1-0.3 ms per image of 32-500 crops), after their chunk's first check.

    Rows of unfinished chunks read as zeros, like a plain store's preallocated rows; skipped images (size 0 × 0)
    have zero coordinates and no flips, as the generator wrote them.
    """

    def __init__(self, store: "LabelStore"):
        from ..data.crops import CropParams  # the data layer imports torchvision: only compact stores need it

        super().__init__(store)
        self.params = CropParams.from_dict(store.manifest["crops"])
        self.seed = store.manifest["crops"]["seed"]
        shape = (store.num_images, store.num_crops)
        self.specs = {"coords": (np.dtype(np.float16), (*shape, 4)), "flip": (np.dtype(bool), shape)}
        self.cached = math.prod(shape) * 9 <= region_cache_bytes()
        # np.zeros maps untouched pages lazily: memory grows only with the chunks actually recomputed
        self.data = {name: np.zeros(shape, dtype) for name, (dtype, shape) in self.specs.items()} \
            if self.cached else None
        self._last = None  # (images, rows) of the latest uncached read: coords and flip of one read share it

    def arrays(self) -> dict:
        return {name: RecomputedArray(self, name) for name in DERIVED_ARRAYS}

    def _regions(self, sizes: np.ndarray, images) -> dict:
        from ..data.crops import sample_crops_many

        coords, flips = sample_crops_many(sizes, self.store.num_crops, self.params, self.seed, images)
        return {"coords": coords.astype(np.float16), "flip": flips}

    def _compute(self, images: np.ndarray) -> dict:
        sizes = np.asarray(self.store.arrays["image_size"][images])
        sizes[~self.ready[images // self.store.manifest["chunk_size"]]] = 0  # unfinished: zeros, as stored
        return self._regions(sizes, images)

    def _derive(self, chunk: int) -> None:
        start, stop = self.store.chunk_bounds(chunk)
        rows = self._regions(np.asarray(self.store.arrays["image_size"][start:stop]), range(start, stop))
        recorded = self._recorded_sha256(chunk)
        differ = [name for name, data in rows.items()
                  if recorded.get(name) != hashlib.sha256(np.ascontiguousarray(data)).hexdigest()]
        if differ:
            marker = self.store._marker(chunk).name
            raise _damaged(self.store.path, [
                f"the crop {' and '.join('boxes' if name == 'coords' else 'flips' for name in differ)} recomputed "
                f"for chunk {chunk} (images {start}-{stop - 1}) from the seed and image_size.npy differ from the "
                f"sha256 that chunks/{marker} recorded when the labels were generated (image_size.npy or the "
                "marker was changed, or this numpy samples the regions differently from the generating one)"],
                self.store.manifest, hint="To keep regions exactly as generated, store them: --layout plain.")
        if self.cached:
            for name, data in rows.items():
                self.data[name][start:stop] = data
        self._last = None  # it may hold this chunk's images as unfinished

    def read(self, name: str, key) -> np.ndarray:
        """``array[key]`` of the (checked) regions."""
        if self.cached:
            return self.data[name][key]
        images, local = _localise(key, self.store.num_images)
        if self._last is None or not np.array_equal(self._last[0], images):
            self._last = (images, self._compute(images))
        return self._last[1][name][local]


def region_cache_bytes() -> int:
    """Up to how many bytes of recomputed crop regions a compact store keeps in memory (see
    :class:`RecomputedCrops`): ``$SOFTLAB_REGION_CACHE_GB`` if set, else :data:`REGION_CACHE_BYTES`."""
    value = os.environ.get("SOFTLAB_REGION_CACHE_GB")
    if value is None:
        return REGION_CACHE_BYTES
    try:
        gigabytes = float(value)
    except ValueError:
        gigabytes = float("nan")
    if not gigabytes >= 0 or math.isinf(gigabytes):
        raise ValueError(f"SOFTLAB_REGION_CACHE_GB={value!r}: give a number of gigabytes (GiB) of memory, 0 or more, "
                         "for the crop regions a compact label store keeps once recomputed (0: recompute them on "
                         "every read)")
    return int(gigabytes * (1 << 30))


def _localise(key, count: int) -> tuple[np.ndarray, tuple]:
    """(images, local key): the images (first-axis rows) that ``key`` reads from an array of ``count`` rows, and a
    key that reads the same from those rows stacked in that order: ``array[key] == array[images][local]``."""
    parts = key if isinstance(key, tuple) else (key,)
    first = parts[0] if parts else Ellipsis
    rest = parts[1:]
    if first is Ellipsis:
        return np.arange(count), parts
    if isinstance(first, slice):
        return np.arange(count)[first], (slice(None), *rest)
    if isinstance(first, (int, np.integer)):
        if not -count <= first < count:
            raise IndexError(f"index {first} is out of bounds for axis 0 with size {count}")
        return np.array([int(first) % count]), (0, *rest)
    first = np.asarray(first)
    if first.dtype == bool:
        if first.shape != (count,):
            raise IndexError(f"boolean index of shape {first.shape} does not match axis 0 of size {count}")
        images = np.flatnonzero(first)
        return images, (np.arange(len(images)), *rest)
    if first.size and (first.min() < -count or first.max() >= count):
        raise IndexError(f"index {first.max() if first.max() >= count else first.min()} is out of bounds for "
                         f"axis 0 with size {count}")
    images, inverse = np.unique(first % count, return_inverse=True)
    return images, (inverse.reshape(first.shape), *rest)


class PaletteIndices(_ChunkSource):
    """A store's class indices kept as per-image palette codes (:mod:`.palette`): each chunk's palettes are read on
    first use, and the chunk's decoded indices checked against the sha256 its marker recorded before anything
    reads them. Decoding is a gather, ``palettes[image, code]`` (plus the high bytes of wide images)."""

    def __init__(self, store: "LabelStore"):
        super().__init__(store)
        self.codes = store.arrays["topk_code"]
        self.shape = self.codes.shape
        self.palettes = np.zeros((self.shape[0], 256), dtype=np.int16)  # pages mapped as chunks are read
        # each element's image index, for any key: a broadcast view, no memory of its own
        self.images = np.broadcast_to(np.arange(self.shape[0]).reshape(-1, 1, 1), self.shape)
        self.high = None  # uint8 [N, n, k] once a chunk with a wide image (> 256 classes) is read

    def array(self) -> "DecodedIndices":
        return DecodedIndices(self)

    def _derive(self, chunk: int) -> None:
        start, stop = self.store.chunk_bounds(chunk)
        file = self.store._palette_file(chunk)
        where = f"palettes/{file.name}"
        try:
            array = np.load(file, allow_pickle=False)
            rows, highs = palette_rows(array, stop - start, *self.shape[1:])
        except FileNotFoundError:
            raise _damaged(self.store.path, [f"{where} is missing (chunk {chunk}, images {start}-{stop - 1})"],
                           self.store.manifest) from None
        except Exception as error:  # a damaged .npy raises ValueError, EOFError, OSError… depending on the bytes
            raise _damaged(self.store.path, [f"{where} cannot be read as chunk {chunk}'s class palettes "
                                             f"({error})"], self.store.manifest) from None
        decoded = decode_codes(np.asarray(self.codes[start:stop]), rows, highs)
        if self._recorded_sha256(chunk).get("topk_idx") != hashlib.sha256(decoded).hexdigest():
            raise _damaged(self.store.path, [
                f"the class indices of chunk {chunk} (images {start}-{stop - 1}) decoded from topk_code.npy and "
                f"{where} differ from the sha256 that chunks/{self.store._marker(chunk).name} recorded when the "
                "labels were generated"], self.store.manifest)
        self.palettes[start:stop] = rows
        if highs:
            if self.high is None:
                self.high = np.zeros(self.shape, dtype=np.uint8)  # pages mapped for the wide images only
            for image, high in highs.items():
                self.high[start + image] = high

    def decode(self, key) -> np.ndarray:
        codes = np.asarray(self.codes[key])
        indices = self.palettes[self.images[key], codes]
        if self.high is not None:
            indices += self.high[key].astype(np.int16) << 8
        return indices


class _ChunkView:
    """Read-only array view of a :class:`_ChunkSource`'s array: indexing derives the chunks of the images it
    touches, then reads; ``np.asarray`` derives them all."""

    def __init__(self, source: _ChunkSource, dtype, shape: tuple):
        self.source, self.dtype, self.shape = source, np.dtype(dtype), tuple(shape)
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def _read(self, key) -> np.ndarray:
        raise NotImplementedError

    def _images(self, key) -> np.ndarray | range:
        first = key[0] if isinstance(key, tuple) and key else key
        count = self.shape[0]
        if first is Ellipsis or (isinstance(key, tuple) and not key):
            return range(count)
        if isinstance(first, slice):
            return range(count)[first]
        if isinstance(first, (int, np.integer)):
            return [int(first) % count] if -count <= first < count else []
        first = np.asarray(first)
        if first.dtype == bool:
            return np.flatnonzero(first)
        return np.unique(first.ravel() % count) if first.size else []

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)) and -self.shape[0] <= key < self.shape[0]:  # one image: the hot path
            chunk = int(key) % self.shape[0] // self.source.store.manifest["chunk_size"]
            if not self.source.ready[chunk]:
                self.source.ensure([chunk])
            return self._read(key)
        images = self._images(key)
        if len(images):
            size = self.source.store.manifest["chunk_size"]
            if isinstance(images, range):
                chunks = range(min(images) // size, max(images) // size + 1)
            else:
                chunks = np.unique(np.asarray(images) // size)
            self.source.ensure(chunks)
        return self._read(key)

    def __array__(self, dtype=None, copy=None):
        self.source.ensure(range(self.source.store.num_chunks))
        return np.asarray(self._read(Ellipsis), dtype=dtype)


class RecomputedArray(_ChunkView):
    """``coords`` or ``flip`` of a compact store, recomputed (:class:`RecomputedCrops`)."""

    def __init__(self, source: RecomputedCrops, name: str):
        super().__init__(source, *source.specs[name])
        self.name = name

    def _read(self, key) -> np.ndarray:
        return self.source.read(self.name, key)

    def __repr__(self) -> str:
        return f"RecomputedArray({self.name}, dtype={self.dtype}, shape={self.shape})"


class DecodedIndices(_ChunkView):
    """``topk_idx`` of a store with class palettes, decoded from ``topk_code`` (:class:`PaletteIndices`)."""

    def __init__(self, source: PaletteIndices):
        super().__init__(source, np.int16, source.shape)

    def _read(self, key) -> np.ndarray:
        return self.source.decode(key)

    def __repr__(self) -> str:
        return f"DecodedIndices(topk_idx, dtype={self.dtype}, shape={self.shape})"


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as handle:
        np.save(handle, array, allow_pickle=False)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _sha256_rows(array: np.ndarray, rows_per_block: int = 4096) -> str:
    digest = hashlib.sha256()
    for start in range(0, max(len(array), 1), rows_per_block):
        digest.update(np.ascontiguousarray(array[start:start + rows_per_block]))
    return digest.hexdigest()


# ----- checking stores
# y_s is a float32 probability: a softmax output, or a value divided by a sum that includes it; such divisions can
# round a hair above 1 (a few float32 steps, 2^-23 each).
Y_S_TOLERANCE = 2.0 ** -20


def probability_sum_tolerance(num_classes: int, k: int) -> float:
    """How far above 1 the sum of a crop's ``k`` stored float16 probabilities (of ``num_classes``) may lie.

    Each stored value is a float32 probability p rounded to float16: rounding to nearest moves it by at most half
    a float16 step, a relative 2^-11 (≈ 4.9e-4) for normal numbers, 2^-25 absolute for subnormals (p < 2^-14).
    So k probabilities with an exact sum s ≤ 1 sum to at most s·(1 + 2^-11) + k·2^-25 once stored, and the C
    probabilities of a "full" label (s = 1) to 1 ± that. The float32 probabilities carry the softmax's own
    rounding (their sum is within about C·2^-24 of 1), and the check sums the k values in float32 (k·2^-24 more):
    2^-11 + (C + k)·2^-23 bounds all of it with a factor 2 to spare on the float32 terms.
    """
    return 2.0 ** -11 + (num_classes + k) * 2.0 ** -23


class _Tally:
    """Counts damaged crops (or images) of one check and remembers the first, for the error message."""

    def __init__(self, file: str, what: str, per_crop: bool = True, label: str = "value"):
        self.file, self.what, self.per_crop, self.label = file, what, per_crop, label
        self.count, self.first = 0, None

    def add(self, bad: np.ndarray, offset: int, values: np.ndarray, bad_values: np.ndarray | None = None,
            rows: np.ndarray | None = None) -> None:
        """Count ``bad`` ([rows, crops], or [rows] per image); row r is image ``offset + r``, or ``rows[r]``."""
        count = int(np.count_nonzero(bad))
        if not count:
            return
        if self.first is None:
            index = np.unravel_index(int(np.flatnonzero(bad)[0]), bad.shape)
            value = values[index]
            if bad_values is not None:  # [.., k] values of a crop: show the first that is out of range
                value = value[bad_values[index]][0]
            image = offset + int(index[0]) if rows is None else int(rows[index[0]])
            where = f"image {image}" + (f", crop {int(index[1])}" if self.per_crop else "")
            self.first = f"{where}, {self.label} {_format_value(value)}"
        self.count += count

    def message(self) -> str:
        unit = "crop" if self.per_crop else "image"
        counted = f"1 {unit} has" if self.count == 1 else f"{self.count} {unit}s have"
        return f"{self.file}: {counted} {self.what} (first: {self.first})"


def _format_value(value) -> str:
    value = value.item() if hasattr(value, "item") else value
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _merge_ranges(ranges) -> list[tuple[int, int]]:
    merged: list[list[int]] = []
    for start, stop in sorted(ranges):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], stop)
        else:
            merged.append([start, stop])
    return [(start, stop) for start, stop in merged]


def _verify_level(verify) -> str:
    if verify is True:
        return "full"
    if verify is False:
        return "cheap"
    if verify not in VERIFY_LEVELS:
        raise ValueError(f"verify must be one of {', '.join(map(repr, VERIFY_LEVELS))} (or True for 'full', False "
                         f"for 'cheap'), got {verify!r}")
    return verify


def _imported(manifest: dict | None) -> bool:
    teacher = (manifest or {}).get("teacher") if isinstance(manifest, dict) else None
    return isinstance(teacher, dict) and str(teacher.get("spec") or "").startswith("fkd-import:")


def _remedy(manifest: dict | None) -> str:
    if _imported(manifest):
        return ("Import the FKD files again with `softlab labels import-fkd` into a new folder, or restore it from "
                "a copy.")
    if manifest is None:
        return ("Regenerate it with the same `softlab labels generate` command plus --overwrite (for imported "
                "labels: `softlab labels import-fkd` into a new folder), or restore it from a copy.")
    return ("Regenerate it with the same `softlab labels generate` command plus --overwrite (overwrite=True from "
            "Python), or restore it from a copy.")


def _damaged(path, problems: list[str], manifest: dict | None, hint: str | None = None) -> StoreError:
    body = f" {problems[0]}" if len(problems) == 1 else "\n  " + "\n  ".join(problems)
    return StoreError(f"label store {path} is damaged:{body}\n{_remedy(manifest)}" + (f" {hint}" if hint else ""))


def _read_json(path: Path, file: str, manifest: dict | None):
    """A store's JSON file, or a StoreError naming it (missing, unreadable, truncated or not JSON)."""
    target = path / file
    if not target.is_file():
        raise _damaged(path, [f"{file} is missing"], manifest)
    try:
        text = target.read_text()
    except (OSError, UnicodeDecodeError):
        raise _damaged(path, [f"{file} is unreadable (not a text file)"], manifest) from None
    try:
        return json.loads(text)
    except ValueError as error:
        where = f" (parsing stopped at line {error.lineno}, column {error.colno})" \
            if isinstance(error, json.JSONDecodeError) else ""
        state = "empty" if not text.strip() else f"truncated or not valid JSON{where}"
        raise _damaged(path, [f"{file} is {state}"], manifest) from None


def read_manifest(path) -> dict:
    """``<path>/manifest.json``, checked to be a softlab label manifest this version can read."""
    path = Path(path)
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        raise StoreError(f"{path} is not a label store (no manifest.json); make one with `softlab labels "
                         "generate` or `softlab labels import-fkd`")
    manifest = _read_json(path, "manifest.json", None)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise StoreError(f"{manifest_path} is not a softlab label manifest (format={found!r})")
    version = manifest.get("format_version", 0)
    if not isinstance(version, int):
        raise _damaged(path, [f"manifest.json has format_version {version!r}, not an integer"], manifest)
    if version > FORMAT_VERSION:
        raise StoreError(f"{path} has format version {manifest['format_version']}; this softlab reads up to "
                         f"{FORMAT_VERSION}: upgrade softlab")
    return manifest


_REQUIRED = (("dataset", "num_images"), ("dataset", "classes"), ("crops", "num_crops"), ("label", "type"),
             ("label", "num_classes"), ("chunk_size",), ("arrays",))


def _check_manifest(path: Path, manifest: dict) -> None:
    """The manifest has the entries a store needs, and its arrays are those its settings imply."""
    missing = []
    for keys in _REQUIRED:
        node = manifest
        for key in keys:
            node = node.get(key) if isinstance(node, dict) else None
        if node is None:
            missing.append(".".join(keys))
    if missing:
        raise _damaged(path, [f"manifest.json lacks {', '.join(missing)}"], manifest)
    counts = {"dataset.num_images": (manifest["dataset"]["num_images"], 0),
              "crops.num_crops": (manifest["crops"]["num_crops"], 1),
              "label.num_classes": (manifest["label"]["num_classes"], 1), "chunk_size": (manifest["chunk_size"], 1)}
    wrong = [f"{key}={value!r}" for key, (value, least) in counts.items()
             if not isinstance(value, int) or isinstance(value, bool) or value < least]
    if wrong:
        raise _damaged(path, [f"manifest.json has invalid counts: {', '.join(wrong)}"], manifest)
    layout = store_layout(manifest)
    if layout not in LAYOUTS:
        raise _damaged(path, [f"manifest.json has an unknown layout {layout!r} (softlab knows "
                              f"{', '.join(LAYOUTS)})"], manifest)
    if layout == "compact":
        seed, crops = manifest["crops"].get("seed"), manifest["crops"]
        needed = ("scale", "ratio", "flip_p", "interpolation")
        if not isinstance(seed, int) or isinstance(seed, bool) or any(crops.get(key) is None for key in needed):
            raise _damaged(path, ["manifest.json's crops lack the seed or crop settings that the compact layout "
                                  "recomputes the crop regions from"], manifest)
    try:
        palette = manifest_palette(manifest)
        if palette and not uses_palette(manifest["label"]["num_classes"], manifest["label"]["type"], layout):
            raise _damaged(path, ["manifest.json lists class palette codes (topk_code) for a store whose layout, "
                                  "label type or class count has none"], manifest)
        specs = array_specs(manifest["dataset"]["num_images"], manifest["crops"]["num_crops"],
                            manifest["label"]["num_classes"], manifest["label"]["type"], layout, palette)
    except (ValueError, TypeError):
        raise _damaged(path, [f"manifest.json has an unknown label type {manifest['label']['type']!r}"],
                       manifest) from None
    expected = {name: {"dtype": dtype, "shape": list(shape)} for name, (dtype, shape) in specs.items()}
    arrays = manifest["arrays"] if isinstance(manifest["arrays"], dict) else {}
    differ = [name for name in expected if arrays.get(name) != expected[name]]
    # arrays beyond the expected ones (from a later softlab) are mapped and checksummed, not range-checked
    differ += [name for name, spec in arrays.items() if name not in expected and not (
        isinstance(spec, dict) and isinstance(spec.get("dtype"), str) and isinstance(spec.get("shape"), list))]
    if differ:
        shown = "; ".join(f"{name}: {arrays.get(name)} instead of {expected.get(name, 'a dtype and a shape')}"
                          for name in differ[:3])
        raise _damaged(path, [f"manifest.json's arrays disagree with its own settings ({shown})"], manifest)


def _check_skipped(path: Path, manifest: dict) -> None:
    """The manifest's list of skipped images (absent: none) names each image of the store at most once."""
    listed = manifest.get("skipped")
    if listed is None:
        return
    if not isinstance(listed, list):
        raise _damaged(path, [f"manifest.json's \"skipped\" is a JSON {type(listed).__name__}, not a list of "
                              "skipped images"], manifest)
    count, seen, problems = manifest["dataset"]["num_images"], set(), []
    for position, entry in enumerate(listed):
        index = entry.get("index") if isinstance(entry, dict) else None
        if not isinstance(index, int) or isinstance(index, bool):
            problems.append(f"entry {position} ({entry!r}) has no integer \"index\"")
        elif not 0 <= index < count:
            problems.append(f"entry {position} names image {index}, outside [0, {count})")
        elif index in seen:
            problems.append(f"image {index} is listed more than once")
        else:
            seen.add(index)
        if len(problems) == 3:
            break
    if problems:
        raise _damaged(path, [f"manifest.json's list of skipped images is invalid: {'; '.join(problems)}"],
                       manifest)


def _map_array(path: Path, name: str, spec: dict, mode: str, manifest: dict) -> np.ndarray:
    """Memory-map ``<name>.npy`` after checking its header and size against the manifest's ``spec``."""
    file = path / f"{name}.npy"
    try:
        dtype, shape = np.dtype(spec["dtype"]), tuple(int(size) for size in spec["shape"])
    except (TypeError, ValueError):
        raise _damaged(path, [f"manifest.json gives {name} an invalid dtype or shape ({spec})"], manifest) from None
    if not file.is_file():
        raise _damaged(path, [f"{name}.npy is missing"], manifest)
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    try:
        with open(file, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            found_shape, fortran, found_dtype = readers[version](handle)
            offset = handle.tell()
    except Exception:  # numpy raises ValueError for most damaged headers; KeyError, SyntaxError… for odd bytes
        raise _damaged(path, [f"{name}.npy has a damaged header: it cannot be read as a .npy file"],
                       manifest) from None
    if found_dtype != dtype or tuple(found_shape) != shape or fortran:
        order = ", Fortran order" if fortran else ""
        raise _damaged(path, [f"{name}.npy holds {found_dtype} {tuple(found_shape)}{order}; the manifest expects "
                              f"{dtype} {shape}"], manifest)
    expected = offset + dtype.itemsize * math.prod(shape)
    size = file.stat().st_size
    if size < expected:
        raise _damaged(path, [f"{name}.npy is truncated: {size:,} bytes, expected {expected:,}"], manifest)
    return np.memmap(file, dtype=dtype, mode=mode, offset=offset, shape=shape, order="C")


def _read_image_ids(path: Path, manifest: dict) -> list[str]:
    image_ids = _read_json(path, "image_ids.json", manifest)
    count = manifest["dataset"]["num_images"]
    if not isinstance(image_ids, list) or len(image_ids) != count or not all(isinstance(i, str) for i in image_ids):
        found = f"{len(image_ids)} entries" if isinstance(image_ids, list) else f"a JSON {type(image_ids).__name__}"
        raise _damaged(path, [f"image_ids.json holds {found}; the manifest expects {count} image names"], manifest)
    return image_ids
