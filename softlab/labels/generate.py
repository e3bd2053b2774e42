"""FKD region soft-label generation: crops per image, one batched teacher pass, a resumable chunked store."""
from __future__ import annotations

import contextlib
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.base import ImageDataset
from ..data.crops import CropParams, cut_crops, sample_crops
from .quantize import entropy, parse_label_type, quantize
from .store import LabelStore, StoreError

# A store made with these settings can be resumed only with the same values.
_RESUME_KEYS = (("dataset", "fingerprint"), ("dataset", "num_images"), ("teacher", "spec"),
                ("teacher", "weights_sha256"), ("crops",), ("label",), ("chunk_size",))


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def build_manifest(dataset: ImageDataset, teacher, num_crops: int, label_type, temperature: float,
                   crop_params: CropParams, seed: int, chunk_size: int) -> dict:
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
                  "teacher_input_size": list(teacher.input_size)},
        "label": {"type": label_type.name, "k": label_type.stored_k(dataset.num_classes),
                  "temperature": float(temperature), "num_classes": dataset.num_classes,
                  "y_s": "teacher probability of the ground-truth class at temperature T"},
        "chunk_size": int(chunk_size),
    }


def _mismatches(old: dict, new: dict) -> list[str]:
    out = []
    for path in _RESUME_KEYS:
        a, b = old, new
        for key in path:
            a, b = (a or {}).get(key), (b or {}).get(key)
        if a != b:
            out.append(f"{'.'.join(path)}: store has {a!r}, asked for {b!r}")
    return out


def open_or_create(out, manifest: dict, dataset: ImageDataset, overwrite: bool) -> LabelStore:
    out = Path(out)
    if overwrite and out.exists():
        shutil.rmtree(out)
    if (out / "manifest.json").is_file():
        store = LabelStore.open(out, allow_partial=True)
        problems = _mismatches(store.manifest, manifest)
        if problems:
            raise StoreError(f"{out} holds labels made with other settings ({'; '.join(problems)}). "
                             "Use another output folder, or --overwrite to replace it.")
        return LabelStore(out, store.manifest, mode="r+")
    if out.exists() and any(out.iterdir()):
        raise StoreError(f"{out} exists and is not a label store; choose an empty or new folder")
    image_ids = [dataset.image_id(i) for i in range(len(dataset))]
    return LabelStore.create(out, manifest, image_ids, dataset.targets)


class _CropBatcher:
    """Collects crops image by image and runs the teacher on full batches (across crops and images)."""

    def __init__(self, teacher, batch_size: int, device: torch.device, temperature: float):
        self.teacher, self.batch_size, self.device, self.temperature = teacher, batch_size, device, temperature
        self.pending: list[torch.Tensor] = []
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

    def _run(self, size: int) -> None:
        stacked = torch.cat(self.pending)
        batch, rest = stacked[:size], stacked[size:]
        self.pending, self.count = ([rest] if len(rest) else []), len(rest)
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


def _chunk_rows(dataset, teacher, store: LabelStore, start: int, stop: int, batcher: _CropBatcher,
                device: torch.device, progress) -> dict:
    params = CropParams.from_dict(store.manifest["crops"])
    seed, num_crops = store.manifest["crops"]["seed"], store.num_crops
    size = tuple(teacher.input_size[1:])
    coords_all, flips_all, targets = [], [], []
    for index in range(start, stop):
        image, target = dataset[index]
        if device.type == "cuda":
            image = image.pin_memory().to(device, non_blocking=True)
        height, width = image.shape[-2:]
        coords, flips = sample_crops(height, width, num_crops, params, seed, index)
        batcher.add(cut_crops(image, coords, flips, size, params.interpolation))
        coords_all.append(coords)
        flips_all.append(flips)
        targets.append(target)
        progress.update(1)
    probs = batcher.finish().reshape(stop - start, num_crops, -1)
    indices, values = quantize(probs.reshape(-1, probs.shape[-1]), store.label_type)
    targets = torch.tensor(targets)
    gathered = probs.gather(2, targets.clamp_min(0).view(-1, 1, 1).expand(-1, num_crops, 1)).squeeze(2)
    y_s = torch.where(targets.view(-1, 1) >= 0, gathered, torch.full_like(gathered, float("nan")))
    rows = {"coords": np.stack(coords_all), "flip": np.stack(flips_all),
            "topk_prob": values.reshape(stop - start, num_crops, -1).numpy(),
            "y_s": y_s.numpy(), "entropy": entropy(probs).numpy()}
    if indices is not None:
        rows["topk_idx"] = indices.reshape(stop - start, num_crops, -1).numpy()
    return rows


def generate_labels(dataset: ImageDataset, teacher, out, num_crops: int | None = None,
                    label_type="marginal_smoothing_k5", temperature: float = 1.0, crop_params: CropParams | None = None,
                    seed: int = 0, chunk_size: int | None = None, batch_size: int = 256, device=None,
                    overwrite: bool = False, progress: bool = True, before_marker=None) -> LabelStore:
    """Generate (or resume) a region soft-label store for ``dataset`` with ``teacher`` into folder ``out``.

    Each image is decoded once; its ``num_crops`` RandomResizedCrop regions (seeded per image) are cut with
    transforms.v2 at the teacher's input size and fed to the teacher in batches of ``batch_size`` crops that
    span images. Results are written per chunk of ``chunk_size`` images; rerunning the same call after an
    interruption (Ctrl-C, kill -9) continues with the first unfinished chunk and gives identical arrays.
    """
    device = torch.device(device) if device is not None else default_device()
    num_crops = num_crops or dataset.default_crops
    chunk_size = chunk_size or max(1, 4096 // num_crops)
    manifest = build_manifest(dataset, teacher, num_crops, label_type, temperature, crop_params or CropParams(),
                              seed, chunk_size)
    store = open_or_create(out, manifest, dataset, overwrite)
    pending = store.pending_chunks()
    teacher = teacher.to(device).eval()
    if device.type == "cuda":
        teacher = teacher.to(memory_format=torch.channels_last)
    batcher = _CropBatcher(teacher, batch_size, device, temperature)
    todo = sum(store.chunk_bounds(c)[1] - store.chunk_bounds(c)[0] for c in pending)
    started = time.perf_counter()
    bar = tqdm(total=todo, unit="img", desc=f"labels {Path(out).name}", disable=not progress)
    try:
        for chunk in pending:
            start, stop = store.chunk_bounds(chunk)
            rows = _chunk_rows(dataset, teacher, store, start, stop, batcher, device, bar)
            store.write_chunk(chunk, rows, before_marker=before_marker)
            elapsed = time.perf_counter() - started
            bar.set_postfix(crops_per_s=f"{bar.n * num_crops / max(elapsed, 1e-9):.0f}")
    except KeyboardInterrupt:
        bar.close()
        done = len(store.finished_chunks())
        print(f"interrupted: {done}/{store.num_chunks} chunks are safely written; rerun the same command to resume")
        raise
    bar.close()
    elapsed = time.perf_counter() - started
    crops_done = todo * num_crops
    throughput = {"crops": crops_done, "seconds": round(elapsed, 3),
                  "crops_per_s": round(crops_done / elapsed, 1) if elapsed > 0 else None, "device": device.type}
    if progress and crops_done:
        print(f"generated {crops_done} crop labels in {elapsed:.1f} s: {throughput['crops_per_s']} crops/s "
              f"on {device.type} ({teacher.spec})")
    if not store.manifest.get("complete"):
        store.finalize({"generation": throughput})
    return LabelStore.open(out)
