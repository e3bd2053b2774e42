"""FKD region soft-label generation: crops per image, batched teacher passes, a resumable chunked store.

The teacher's batch size is measured per teacher and device (:mod:`softlab.labels.autotune`); crops of small
images are cut for many images at once (:func:`~softlab.data.crops.cut_crops_batched`, the same pixels as
the per-crop ``resized_crop`` up to float rounding).

Under ``torchrun`` (after :func:`softlab.distributed.init`) the pending chunks are shared out among the ranks:
rank 0 creates (or checks) the store and fixes the teacher's batch size first, every rank then writes its own
chunks' rows and markers into the same memory-mapped store, and rank 0 finalises it after a barrier. A chunk's
rows depend only on the chunk and the batch size (the crop batcher is flushed at every chunk end), so the store
is byte for byte the one a single process makes.
"""
from __future__ import annotations

import collections
import contextlib
import json
import operator
import os
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import distributed
from ..data.base import BadImageError, ImageDataset
from ..data.crops import (CUTTERS, CropParams, batched_cut_pays, cut_crops, cut_crops_batched, pixel_boxes,
                          sample_crops_many)
from .autotune import BatchChoice, pick_batch_size
from .quantize import entropy, parse_label_type, quantize
from .store import LAYOUTS, LabelStore, StoreError, store_layout, write_json_atomic

# A store made with these settings can be resumed only with the same values ("crops" includes the cutter; a
# store without one was cut "exact"). The teacher's batch size is not among them: it is recorded under
# "generation", and a resumed run reuses it, since fp32 results may differ in the last bits across batch sizes.
_RESUME_KEYS = (("dataset", "fingerprint"), ("dataset", "num_images"), ("teacher", "spec"),
                ("teacher", "weights_sha256"), ("crops",), ("label",), ("chunk_size",), ("layout",))


BAD_IMAGE_MODES = ("fail", "skip")
SAMPLE_BLOCK = 64  # images decoded ahead of cutting whose crops are sampled together


class SkippedImagesWarning(UserWarning):
    """Some images could not be decoded and were left without labels (``on_bad_image="skip"``)."""


def skipped_images(store) -> list[dict]:
    """The images a generation left without labels because they could not be decoded, from the manifest:
    ``[{"index", "id", "path", "reason", "detail"}, ...]`` in index order (empty when none were skipped);
    the same as :attr:`LabelStore.skipped <softlab.labels.LabelStore.skipped>`.

    Their rows hold no labels: ``y_s`` and ``entropy`` are NaN, probabilities, class indices and crop
    coordinates are 0 and flips False."""
    return store.skipped


def describe_skipped(skipped: list[dict], num_images: int, manifest_path, show: int = 3) -> str:
    """One line for people: how many images were skipped, the first ``show`` of them and why."""
    names = ", ".join(f"{entry.get('path') or entry['id']} (image {entry['index']}: {entry['reason']})"
                      for entry in skipped[:show])
    more = f" and {len(skipped) - show} more" if len(skipped) > show else ""
    return (f"skipped {len(skipped)} of {num_images} images that could not be decoded; they have no labels "
            f"(y_s NaN, probabilities 0): {names}{more}. All are listed under \"skipped\" in {manifest_path}")


def _check_count(name: str, value, hint: str = "") -> int:
    try:
        number = operator.index(value)
    except TypeError:
        number = None
    if number is None or isinstance(value, bool) or number < 1:
        raise ValueError(f"{name} must be a positive whole number, got {value!r}" + (f" ({hint})" if hint else ""))
    return number


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def build_manifest(dataset: ImageDataset, teacher, num_crops: int, label_type, temperature: float,
                   crop_params: CropParams, seed: int, chunk_size: int, cutter: str = "exact",
                   layout: str = "compact") -> dict:
    label_type = parse_label_type(label_type)
    if teacher.num_classes != dataset.num_classes:
        raise ValueError(f"teacher {teacher.spec} predicts {teacher.num_classes} classes but {dataset.name} has "
                         f"{dataset.num_classes}; pick a teacher trained on this data set")
    label_type.check(dataset.num_classes)
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if num_crops < 1:
        raise ValueError(f"num_crops must be at least 1, got {num_crops}")
    return {
        "dataset": {"name": dataset.name, "fingerprint": dataset.fingerprint(), "num_images": len(dataset),
                    "classes": list(dataset.classes)},
        "teacher": teacher.describe(),
        "crops": {**crop_params.to_dict(), "num_crops": int(num_crops), "seed": int(seed),
                  "teacher_input_size": list(teacher.input_size), "cutter": cutter},
        "label": {"type": label_type.name, "k": label_type.stored_k(dataset.num_classes),
                  "temperature": float(temperature), "num_classes": dataset.num_classes,
                  "y_s": "teacher probability of the ground-truth class at temperature T"},
        "chunk_size": int(chunk_size),
        "layout": layout,
    }


def _mismatches(old: dict, new: dict) -> list[str]:
    out = []
    for path in _RESUME_KEYS:
        a, b = old, new
        for key in path:
            a, b = (a or {}).get(key), (b or {}).get(key)
        if path == ("crops",) and isinstance(a, dict) and "cutter" not in a:
            a = {**a, "cutter": "exact"}  # stores from before the choice of cutter
        if path == ("layout",):
            a = store_layout(old)  # stores from before the choice of layout are plain
        if a != b:
            out.append(f"{'.'.join(path)}: store has {a!r}, asked for {b!r}")
    return out


def open_or_create(out, manifest: dict, dataset: ImageDataset, overwrite: bool) -> LabelStore:
    out = Path(out)
    if overwrite and out.exists():
        shutil.rmtree(out)
    if (out / "manifest.json").is_file():
        _list_marker_skipped(out)
        store = LabelStore.open(out, allow_partial=True)
        problems = _mismatches(store.manifest, manifest)
        if problems:
            raise StoreError(f"{out} holds labels made with other settings ({'; '.join(problems)}). "
                             "Use another output folder, or --overwrite to replace it.")
        return LabelStore(out, store.manifest, mode="r+")
    if out.exists() and any(out.iterdir()):
        entries = sorted(p.name for p in out.iterdir())
        # LabelStore.create writes manifest.json last: these files without it are a store whose creation was killed
        known = {"chunks", "image_ids.json", "manifest.json.tmp", "coords.npy", "flip.npy", "topk_idx.npy",
                 "topk_prob.npy", "y_s.npy", "entropy.npy", "targets.npy", "image_size.npy",
                 "topk_code.npy", "palettes"}
        store_files = [name for name in entries if name in known]
        if store_files:
            raise StoreError(f"{out} exists and is not a label store; choose an empty or new folder, or rerun with "
                             "--overwrite (overwrite=True from Python) to start it again: it holds the files of a "
                             f"label store whose creation was interrupted before its manifest.json was written "
                             f"({', '.join(store_files[:4])}{', …' if len(store_files) > 4 else ''})")
        shown = ", ".join(entries[:3]) + (", …" if len(entries) > 3 else "")
        count = f"{len(entries)} {'entry' if len(entries) == 1 else 'entries'}"
        raise StoreError(f"{out} exists and is not a label store; choose an empty or new folder, or pass --overwrite "
                         f"(overwrite=True from Python) to delete everything in it ({count}: {shown}) and write the "
                         "store there")
    image_ids = [dataset.image_id(i) for i in range(len(dataset))]
    return LabelStore.create(out, manifest, image_ids, dataset.targets)


_GROUP_CROPS = 1024  # crops cut at once by cut_crops_batched


class _CropBatcher:
    """Collects crops image by image and runs the teacher on full batches (across crops and images).

    A batch is a view of one image's crops where it can be, a concatenation of the pieces it spans otherwise: each
    crop is copied at most once, whatever the batch size and the crops per image."""

    def __init__(self, teacher, batch_size: int, device: torch.device, temperature: float):
        self.teacher, self.batch_size, self.device, self.temperature = teacher, batch_size, device, temperature
        self.pending: collections.deque[torch.Tensor] = collections.deque()
        self.count = 0
        self.outputs: list[torch.Tensor] = []

    def add(self, crops: torch.Tensor) -> None:
        self.pending.append(crops)
        self.count += len(crops)
        while self.count >= self.batch_size:
            self._run(self.batch_size)

    def finish(self) -> torch.Tensor:
        if self.count:
            self._run(self.count)
        probs, self.outputs = torch.cat(self.outputs), []
        return probs

    def _take(self, size: int) -> torch.Tensor:
        parts = []
        while size:
            head = self.pending[0]
            if len(head) <= size:
                parts.append(self.pending.popleft())
            else:
                parts.append(head[:size])
                self.pending[0] = head[size:]
            size -= len(parts[-1])
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _run(self, size: int) -> None:
        batch = self._take(size)
        self.count -= size
        self.outputs.append(teacher_probs(self.teacher, batch, self.device, self.temperature))


@torch.inference_mode()
def teacher_probs(teacher, crops: torch.Tensor, device: torch.device, temperature: float) -> torch.Tensor:
    """Softmax(teacher(crops) / T) in float32 on the CPU; bf16 autocast + channels_last on CUDA."""
    crops = crops.to(device, non_blocking=True)
    if device.type == "cuda":
        crops = crops.contiguous(memory_format=torch.channels_last)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    with autocast:
        logits = teacher(crops)
    return torch.softmax(logits.float() / temperature, dim=-1).cpu()


class _Decoded(torch.utils.data.Dataset):
    """``(index, image, target)`` of the images at ``indices``, in order; an image that cannot be decoded comes
    back as ``(index, its BadImageError, None)``, a value, so that the generator decides what to do with it
    whether it was decoded here or in a worker process."""

    def __init__(self, dataset: ImageDataset, indices: list[int]):
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int):
        index = self.indices[position]
        try:
            image, target = self.dataset[index]
        except BadImageError as error:
            return index, error, None
        return index, image.as_subclass(torch.Tensor), target


def decoded_images(dataset: ImageDataset, indices: list[int], workers: int, pin_memory: bool = False):
    """Iterate over ``_Decoded(dataset, indices)``: in this process (``workers=0``), or decoded ahead by
    ``workers`` DataLoader worker processes (in order), so that decoding overlaps the teacher's forward."""
    decoded = _Decoded(dataset, indices)
    if workers == 0:
        return (decoded[position] for position in range(len(decoded)))
    return iter(torch.utils.data.DataLoader(decoded, batch_size=None, shuffle=False, num_workers=workers,
                                            pin_memory=pin_memory, prefetch_factor=8))


def compile_backend(compile) -> str | None:
    """``generate_labels``' ``compile`` → a ``torch.compile`` backend name, or None for the eager teacher."""
    if compile is False or compile is None:
        return None
    if compile is True:
        return "inductor"
    if isinstance(compile, str) and compile:
        return compile
    raise ValueError(f"compile must be True (torch.compile with inductor), False or a torch.compile backend name "
                     f"such as \"inductor\", got {compile!r}")


def check_workers(workers, work: str):
    """``workers`` itself when it is "auto" or a whole number >= 0; else a ValueError saying what they do."""
    if isinstance(workers, str) and workers == "auto":
        return workers
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be a whole number >= 0 (processes that {work}; 0 does it in this process) "
                         f"or \"auto\", got {workers!r}")
    return workers


def decode_workers(workers, device: torch.device) -> int:
    """Worker processes that decode images ahead of the teacher: ``"auto"`` means none on the CPU (they would
    take cores from the teacher), and on CUDA up to 8, leaving a core per process on the node."""
    if check_workers(workers, "decode images") != "auto":
        return workers
    if device.type != "cuda":
        return 0
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    return max(0, min(8, (os.cpu_count() or 1) // max(per_node, 1) - 1))


def _chunk_rows(dataset, teacher, store: LabelStore, start: int, stop: int, batcher: _CropBatcher,
                device: torch.device, progress, on_bad_image: str, images) -> tuple[dict, list[dict]]:
    """One chunk's rows, and the images skipped in it (``on_bad_image="skip"``; "fail" raises instead).

    ``images`` yields the chunk's ``(index, image or BadImageError, target)`` (:func:`decoded_images`)."""
    params = CropParams.from_dict(store.manifest["crops"])
    seed, num_crops = store.manifest["crops"]["seed"], store.num_crops
    size = tuple(teacher.input_size[1:])
    count = stop - start
    coords_all = np.zeros((count, num_crops, 4), dtype=np.float32)
    flips_all = np.zeros((count, num_crops), dtype=bool)
    sizes = np.zeros((count, 2), dtype=np.int64)  # (0, 0): an image skipped as undecodable
    targets = torch.full((count,), -1, dtype=torch.int64)
    good = torch.ones(count, dtype=torch.bool)
    skipped = []
    cutter = store.manifest["crops"].get("cutter", "exact")
    group: list = []  # images waiting to be cut together: (image, coords, flips)

    def cut_group() -> None:
        if group:
            stacked = torch.stack([image for image, _, _ in group])
            boxes = np.stack([pixel_boxes(c, *stacked.shape[-2:]) for _, c, _ in group])
            batcher.add(cut_crops_batched(stacked, boxes, np.stack([f for _, _, f in group]), size,
                                          params.interpolation))
            group.clear()

    for offset, ((index, image, target), coords, flips) in enumerate(
            _with_crops(images, start, stop, num_crops, params, seed)):
        if isinstance(image, BadImageError):
            error = image
            if on_bad_image != "skip":
                raise _stopped_at(error, store, start, stop) from error
            skipped.append({"index": index, "id": dataset.image_id(index), "path": error.path,
                            "reason": error.reason, "detail": error.detail})
            good[offset] = False
            progress.update(1)
            continue
        if device.type == "cuda":
            image = (image if image.is_pinned() else image.pin_memory()).to(device, non_blocking=True)
        height, width = image.shape[-2:]
        if (cutter == "auto" and image.dim() == 3 and size[0] == size[1]
                and batched_cut_pays(image.shape, size[0], params.interpolation)):
            if group and (group[0][0].shape != image.shape or len(group) * num_crops >= _GROUP_CROPS):
                cut_group()
            group.append((image, coords, flips))
        else:
            cut_group()
            batcher.add(cut_crops(image, coords, flips, size, params.interpolation))
        coords_all[offset], flips_all[offset], targets[offset] = coords, flips, target
        sizes[offset] = height, width
        progress.update(1)
    cut_group()
    probs = torch.zeros(count, num_crops, store.num_classes)
    if good.any():
        probs[good] = batcher.finish().reshape(int(good.sum()), num_crops, -1)
    indices, values = quantize(probs.reshape(-1, probs.shape[-1]), store.label_type)
    gathered = probs.gather(2, targets.clamp_min(0).view(-1, 1, 1).expand(-1, num_crops, 1)).squeeze(2)
    y_s = torch.where(targets.view(-1, 1) >= 0, gathered, torch.full_like(gathered, float("nan")))
    rows = {"coords": coords_all, "flip": flips_all, "image_size": sizes,
            "topk_prob": values.reshape(count, num_crops, -1).numpy().copy(),
            "y_s": y_s.numpy().copy(), "entropy": entropy(probs).numpy().copy()}
    if indices is not None:
        rows["topk_idx"] = indices.reshape(count, num_crops, -1).numpy().copy()
    bad = (~good).numpy()
    if bad.any():  # no labels for images that could not be decoded
        rows["topk_prob"][bad] = 0
        rows["y_s"][bad] = np.nan
        rows["entropy"][bad] = np.nan
        if indices is not None:
            rows["topk_idx"][bad] = 0
    return rows, skipped


def _with_crops(images, start: int, stop: int, num_crops: int, params: CropParams, seed: int):
    """``((index, image, target), coords, flips)`` for images ``start``..``stop - 1`` of the ``images`` stream:
    the crops of up to ``SAMPLE_BLOCK`` decoded images are sampled together (:func:`sample_crops_many`, equal to
    sampling them one by one)."""
    for block_start in range(start, stop, SAMPLE_BLOCK):
        block = [next(images) for _ in range(min(SAMPLE_BLOCK, stop - block_start))]
        due = list(range(block_start, block_start + len(block)))
        if [index for index, _, _ in block] != due:
            raise RuntimeError(f"decoded images {[index for index, _, _ in block]} where images {due} were due")
        shapes = [(0, 0) if isinstance(image, BadImageError) else tuple(image.shape[-2:]) for _, image, _ in block]
        coords, flips = sample_crops_many(shapes, num_crops, params, seed, due)
        yield from zip(block, coords, flips)


def _stopped_at(error: BadImageError, store: LabelStore, start: int, stop: int) -> BadImageError:
    chunk, done = start // store.manifest["chunk_size"], len(store.finished_chunks())
    message = (f"{error}. Stopped before writing chunk {chunk} (images {start}-{stop - 1}); {done} of "
               f"{store.num_chunks} chunks are written and kept. Rerun with --on-bad-image skip "
               "(on_bad_image=\"skip\" in Python) to resume and leave undecodable images without labels, or repair "
               "the file and rerun")
    return BadImageError(message, index=error.index, path=error.path, reason=error.reason, detail=error.detail)


def _note_skipped(store: LabelStore, start: int, stop: int, skipped: list[dict]) -> None:
    """List a chunk's skipped images in the manifest before its marker is written, so that the manifest names
    every skipped image of the finished chunks at any time (a resumed run, a reader of a partial store)."""
    listed = store.manifest.get("skipped") or []
    kept = [entry for entry in listed if not start <= entry["index"] < stop]
    if not skipped and len(kept) == len(listed) and "skipped" in store.manifest:
        return
    store.manifest["skipped"] = sorted(kept + skipped, key=lambda entry: entry["index"])
    write_json_atomic(store.path / "manifest.json", store.manifest)


def _finished_skipped(store: LabelStore) -> list[dict]:
    """The skipped images of finished chunks: from their markers, or from the manifest for chunks whose marker
    names none (a crash between listing and marker can leave entries of unfinished chunks: they are dropped)."""
    return _merged_skipped(store.path, store.manifest)


def _merged_skipped(path: Path, manifest: dict) -> list[dict]:
    """Skipped images of the finished chunks of the store in ``path``. A marker written by :func:`generate_labels`
    lists its chunk's skipped images (``"skipped"``, possibly empty) and is authoritative for that chunk; for
    markers without the entry (stores from before it, imports) the manifest's entries are kept."""
    chunk_size, count = manifest["chunk_size"], manifest["dataset"]["num_images"]
    num_chunks = -(-count // chunk_size)
    listed: dict[int, list | None] = {}
    for marker in (path / "chunks").glob("*.json"):
        if not marker.stem.isdigit() or int(marker.stem) >= num_chunks:
            continue
        try:
            content = json.loads(marker.read_text())
        except (OSError, ValueError):
            content = None  # a damaged marker: the store's own checks report it
        entries = content.get("skipped") if isinstance(content, dict) else None
        ok = isinstance(entries, list) and all(isinstance(e, dict) and isinstance(e.get("index"), int)
                                               for e in entries)
        listed[int(marker.stem)] = entries if ok else None
    merged = {}
    for entry in manifest.get("skipped") or []:
        chunk = entry["index"] // chunk_size
        if chunk in listed and listed[chunk] is None:
            merged[entry["index"]] = entry
    for entries in listed.values():
        for entry in entries or ():
            merged[entry["index"]] = entry
    return sorted(merged.values(), key=lambda entry: entry["index"])


def _list_marker_skipped(out: Path) -> None:
    """Before an incomplete store is reopened: list the skipped images its chunk markers name in the manifest.

    Under torchrun the ranks record a chunk's skipped images in its marker only (one manifest, many writers
    would race); a run killed before rank 0 merged them leaves a manifest that does not name them, and the
    store's checks would take their label-less rows for damage. Only rank 0 (or a single process) calls this,
    before any other process opens the store."""
    path = out / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
        if not isinstance(manifest, dict) or manifest.get("complete"):
            return
        listed = manifest.get("skipped")
        if listed is not None and not (isinstance(listed, list) and all(
                isinstance(e, dict) and isinstance(e.get("index"), int) for e in listed)):
            return  # an invalid list: LabelStore.open reports it
        merged = _merged_skipped(out, manifest)
    except (OSError, ValueError, TypeError, KeyError, ZeroDivisionError, AttributeError):
        return  # a damaged manifest: LabelStore.open reports it
    if merged != (listed or []):
        manifest["skipped"] = merged
        write_json_atomic(path, manifest)


def generate_labels(dataset: ImageDataset, teacher, out, num_crops: int | None = None,
                    label_type="marginal_smoothing_k5", temperature: float = 1.0, crop_params: CropParams | None = None,
                    seed: int = 0, chunk_size: int | None = None, batch_size: int | str = "auto", device=None,
                    overwrite: bool = False, progress: bool = True, before_marker=None,
                    on_bad_image: str = "fail", cutter: str | None = None, layout: str | None = None,
                    workers: int | str = "auto", compile: bool | str = False) -> LabelStore:
    """Generate (or resume) a region soft-label store for ``dataset`` with ``teacher`` into folder ``out``.

    Each image is decoded once; its ``num_crops`` RandomResizedCrop regions (seeded per image) are cut at the
    teacher's input size and fed to the teacher in batches of ``batch_size`` crops that span images. Results
    are written per chunk of ``chunk_size`` images; rerunning the same call after an interruption (Ctrl-C,
    kill -9) continues with the first unfinished chunk and gives identical arrays.

    ``batch_size`` "auto" (the default) times the teacher's forward on a few batch sizes at the start and takes
    the fastest (:func:`softlab.labels.autotune.pick_batch_size`; cached under ``$SOFTLAB_HOME/autotune``); a
    resumed store reuses the batch size its first run recorded, so that resumed arrays stay identical to an
    uninterrupted run's. The choice and how it was made are recorded in the manifest's ``"generation"`` entry.

    ``cutter`` "exact" cuts each crop with ``transforms.v2.functional.resized_crop``; "auto" cuts the crops of
    small images (where it is faster: :func:`~softlab.data.crops.batched_cut_pays`) many images at once with
    :func:`~softlab.data.crops.cut_crops_batched`, the same antialiased resize to float rounding (pixels within
    ~1e-5), and larger images as "exact". It is a store setting (``manifest["crops"]["cutter"]``): None (the
    default) means the store's own when resuming (stores from before this option: "exact"), else "auto".

    ``layout`` "compact" (the default for a new store) stores no crop regions, since they are a pure function of
    (seed, image index, image size): readers recompute them and check them against each chunk's sha256; ``y_s``
    and ``entropy`` are float16 and class indices uint8 for up to 256 classes. "plain" stores the regions
    (``coords.npy``, ``flip.npy``) and float32 ``y_s``/``entropy``. None means the store's own when resuming.

    ``workers`` processes decode images ahead of the teacher (a DataLoader, in order; the store is the same
    byte for byte): "auto" (the default) means none on the CPU, where they would take the teacher's cores, and on
    CUDA up to 8 (:func:`decode_workers`), so that decoding never starves the GPU.

    ``compile`` runs the teacher through ``torch.compile`` (True: the inductor backend; a string: that backend)
    after the batch size is chosen on the plain module. The first batches pay the compilation; a compiled
    teacher's float32 outputs may differ from the eager ones in the last bits, as with another batch size.

    ``num_crops`` None means the data set's ``default_crops``. An image that cannot be decoded (not an image,
    truncated: :class:`~softlab.data.BadImageError`) stops the run before anything of its chunk is written
    (``on_bad_image="fail"``, the default; rerunning resumes), or, with ``on_bad_image="skip"``, is left without
    labels: its rows have NaN ``y_s``/``entropy`` and zero probabilities, and it is listed under ``"skipped"`` in
    the manifest (:func:`skipped_images`), reported by a :class:`SkippedImagesWarning`. The other images keep
    the crops they would have had, since crops are seeded per image index.

    Under ``torchrun`` (once :func:`softlab.distributed.init` has joined the process group, as ``softlab labels
    generate`` does) rank r of W takes the pending chunks ``pending[r::W]``, and a CUDA device means
    ``cuda:LOCAL_RANK``. Rank 0 creates or checks the store and chooses the batch size (recorded under
    ``"generation"``, read back by the others) before they open it; each chunk's skipped images go into its
    marker, and rank 0 lists them in the manifest when it finalises the store after every rank is done. The
    store is the one a single process writes; a run killed part way is resumed with any number of processes.
    Only rank 0 shows progress and warns; the other ranks return the store without checking it again.
    """
    if on_bad_image not in BAD_IMAGE_MODES:
        raise ValueError(f"on_bad_image must be one of {', '.join(BAD_IMAGE_MODES)}, got {on_bad_image!r}")
    device = torch.device(device) if device is not None else default_device()
    num_crops = _check_count("num_crops", dataset.default_crops if num_crops is None else num_crops,
                             "crops per image; None means the data set's default")
    chunk_size = _check_count("chunk_size", max(1, 4096 // num_crops) if chunk_size is None else chunk_size,
                              "images per chunk; None picks one")
    if not (isinstance(batch_size, str) and batch_size == "auto"):
        batch_size = _check_count("batch_size", batch_size, "crops per teacher forward, or \"auto\"")
    if cutter is not None and cutter not in CUTTERS:
        raise ValueError(f"cutter must be one of {', '.join(CUTTERS)}, got {cutter!r}")
    if layout is not None and layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    workers = decode_workers(workers, device)
    backend = compile_backend(compile)
    ctx = distributed.context()
    if ctx.distributed and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", ctx.local_rank)
    show = progress and ctx.is_main
    choice = None
    # rank 0 creates (or checks) the store and fixes the batch size before the other ranks open it
    with distributed.main_first():
        existing = _existing_manifest(out, overwrite and ctx.is_main)
        if cutter is None:
            crops = existing.get("crops") if existing else None
            cutter = crops.get("cutter", "exact") if isinstance(crops, dict) else "auto"
        if layout is None:
            layout = store_layout(existing) if existing else "compact"
        manifest = build_manifest(dataset, teacher, num_crops, label_type, temperature,
                                  crop_params or CropParams(), seed, chunk_size, cutter, layout)
        store = open_or_create(out, manifest, dataset, overwrite and ctx.is_main)
        pending = store.pending_chunks()
        teacher = teacher.to(device).eval()
        if device.type == "cuda":
            teacher = teacher.to(memory_format=torch.channels_last)
        todo = sum(store.chunk_bounds(c)[1] - store.chunk_bounds(c)[0] for c in pending)
        if todo and ctx.is_main:
            choice = _choose_batch_size(store, teacher, device, batch_size, todo * num_crops)
            if show:
                print(choice.describe(), flush=True)
            store.manifest["generation"] = {"batch_size": choice.batch_size, "batch_size_from": choice.source,
                                            "autotune": choice.to_dict()}
            write_json_atomic(store.path / "manifest.json", store.manifest)
    if todo and not ctx.is_main:  # rank 0's choice, read from the manifest it wrote before the others opened it
        choice = _choose_batch_size(store, teacher, device, batch_size, todo * num_crops)
        if choice.source not in ("given", "store"):
            raise StoreError(f"rank {ctx.rank}: {out} records no teacher batch size from rank 0")
    distributed.barrier()  # every rank has the same list of pending chunks before any marker is written
    mine = pending[ctx.rank::ctx.world_size]  # a balanced round-robin share of the pending chunks
    forward = torch.compile(teacher, backend=backend) if backend and todo else teacher
    batcher = _CropBatcher(forward, choice.batch_size if choice else 1, device, temperature)
    started = time.perf_counter()
    if show and not todo:
        print(f"labels {Path(out).name}: all {store.num_images} images are labelled already; reopening the store")
    # one bar, on rank 0: its own images as they go, every rank's finished chunks at each of its chunk ends
    bar = tqdm(total=todo, unit="img", desc=f"labels {Path(out).name}", disable=not show or not todo)

    def show_all_ranks() -> bool:
        finished = store.finished_chunks()
        done = sum(store.chunk_bounds(c)[1] - store.chunk_bounds(c)[0] for c in pending if c in finished)
        if done > bar.n:
            bar.update(done - bar.n)
        return done == todo

    skipped_now = 0
    mine_images = [index for chunk in mine for index in range(*store.chunk_bounds(chunk))]
    stream = decoded_images(dataset, mine_images, workers if mine_images else 0, pin_memory=device.type == "cuda")
    try:
        for chunk in mine:
            start, stop = store.chunk_bounds(chunk)
            rows, skipped = _chunk_rows(dataset, teacher, store, start, stop, batcher, device, bar, on_bad_image,
                                        images=stream)
            if not ctx.distributed:  # one writer: the manifest names the finished chunks' skipped images at once
                _note_skipped(store, start, stop, skipped)
            skipped_now += len(skipped)
            store.write_chunk(chunk, rows, before_marker=before_marker, marker_extra={"skipped": skipped})
            if ctx.distributed and not bar.disable:
                show_all_ranks()
            elapsed = time.perf_counter() - started
            bar.set_postfix(crops_per_s=f"{bar.n * num_crops / max(elapsed, 1e-9):.0f}")
        if ctx.distributed and not bar.disable:
            while not show_all_ranks():  # the other ranks' last chunks
                time.sleep(0.5)
    except KeyboardInterrupt:
        bar.close()
        if ctx.is_main:
            done = len(store.finished_chunks())
            print(f"interrupted: {done}/{store.num_chunks} chunks are safely written; rerun the same command to "
                  "resume")
        raise
    except BadImageError:
        bar.close()
        raise
    bar.close()
    distributed.barrier()  # every rank's chunks are written
    if ctx.is_main:
        elapsed = time.perf_counter() - started
        merged = _finished_skipped(store) if todo else []
        if ctx.distributed:  # the skipped images of every rank's chunks, from their markers
            redone = set(pending)
            skipped_now = sum(1 for entry in merged if store.chunk_of(entry["index"]) in redone)
        crops_done = (todo - skipped_now) * num_crops
        throughput = {**(store.manifest.get("generation") or {}), "compile": backend or None,
                      "crops": crops_done, "seconds": round(elapsed, 3),
                      "crops_per_s": round(crops_done / elapsed, 1) if elapsed > 0 else None,
                      "device": device.type}
        if ctx.distributed:
            throughput["world_size"] = ctx.world_size
        if show and crops_done:
            ranks = f" on {ctx.world_size} processes" if ctx.distributed else ""
            print(f"generated {crops_done} crop labels in {elapsed:.1f} s: {throughput['crops_per_s']} crops/s "
                  f"on {device.type}{ranks} ({teacher.spec})")
        if not store.manifest.get("complete"):
            store.finalize({"generation": throughput, "skipped": merged if todo else _finished_skipped(store)})
    distributed.barrier()  # rank 0 has finalised the store
    # rank 0 has just checked every checksum: the other ranks only map the files
    store = LabelStore.open(out) if ctx.is_main else LabelStore.open(out, verify="none")
    skipped = skipped_images(store)
    if skipped and ctx.is_main:
        warnings.warn(describe_skipped(skipped, store.num_images, store.path / "manifest.json"),
                      SkippedImagesWarning, stacklevel=2)
    return store


def _existing_manifest(out, overwrite: bool) -> dict | None:
    """The manifest of the store in ``out`` that this run would resume, or None when there is none (its settings
    that are not given, the cutter and the layout, are then the store's own)."""
    path = Path(out) / "manifest.json"
    if overwrite or not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # open_or_create reports the damage
    return manifest if isinstance(manifest, dict) else None


def _choose_batch_size(store: LabelStore, teacher, device: torch.device, batch_size, crops: int) -> BatchChoice:
    """An explicit batch size; else the one a resumed store's earlier run used; else the measured fastest."""
    if batch_size != "auto":
        return BatchChoice(int(batch_size), "given")
    earlier = (store.manifest.get("generation") or {}).get("batch_size")
    if isinstance(earlier, int) and not isinstance(earlier, bool) and earlier >= 1:
        return BatchChoice(earlier, "store")
    return pick_batch_size(teacher, device, tuple(teacher.input_size), max_crops=crops)
