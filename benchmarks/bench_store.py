"""Label-store size and random reads against FKD's per-image ``.tar`` files (P2).

    python benchmarks/bench_store.py --teacher efficientnet_lite0 --data photos --images 20 --crops 50
    python benchmarks/bench_store.py --teacher fashion_mnist_cnn --data fashion-mnist --images 2000 --crops 32

Generates one store of each layout with the same settings (``compact``, the default: crop regions recomputed from
the seed, float16 y_s/entropy, one-byte class indices: uint8 up to 256 classes, per-image palette codes above;
``plain``: regions stored, float32 y_s/entropy, int16 class indices), and exports the compact store as FKD files in
float16 (FKD's ``--use_fp16``, its published label zoo) and float32. Prints bytes per crop of each, counting every
file in the folder (manifest, image ids and chunk markers included), and the fixed per-crop bytes of the arrays
alone, which is what a large store tends to.

Then reads ``--reads`` random (image, crop) pairs as training does, each with its box, flip and dense soft label:
softlab from a freshly opened store (so the compact store pays for recomputing the regions, and reading the class
palettes, of every chunk it touches), in batches of ``--batch`` pairs and one pair per call; FKD as its data loader
does, one ``torch.load`` of the image's file per pair, then the dense label of that crop. Alternated over
``--repeats``; prints medians and the ratios. As a what-if for compressed chunks, also prints the bytes per crop of
the compact arrays compressed chunk by chunk with zlib, and what decompressing one chunk costs (a random read would
pay it).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import torch

from softlab.data import load_dataset
from softlab.labels import LabelStore, dense_labels, generate_labels
from softlab.labels.fkd import _safe, export_fkd, fkd_key, split_fkd_labels
from softlab.labels.generate import default_device
from softlab.teachers import create_teacher


def folder_bytes(folder: Path, pattern: str = "*") -> int:
    return sum(path.stat().st_size for path in folder.rglob(pattern) if path.is_file())


def palette_arrays(store: LabelStore) -> list[np.ndarray]:
    """The chunks' class palettes of a store over more than 256 classes (none otherwise)."""
    return [np.load(path, allow_pickle=False) for path in sorted((store.path / "palettes").glob("*.npy"))]


def array_bytes_per_crop(store: LabelStore) -> float:
    """Bytes of the arrays' data per crop (class palettes included), without file headers: a large store's size
    per crop."""
    data = sum(array.dtype.itemsize * array.size for array in store.arrays.values())
    data += sum(array.nbytes for array in palette_arrays(store))
    return data / (store.num_images * store.num_crops)


def read_softlab(path: Path, pairs: np.ndarray, batch: int) -> float:
    """Seconds to read the pairs' boxes, flips and dense labels from a freshly opened store."""
    started = time.perf_counter()
    store = LabelStore.open(path, verify="none")
    for start in range(0, len(pairs), batch):
        images, crops = pairs[start:start + batch].T
        np.asarray(store.coords[images, crops], dtype=np.float32), np.asarray(store.flip[images, crops])
        store.labels(images, crops)
    return time.perf_counter() - started


def read_fkd(files: list[Path], store: LabelStore, pairs: np.ndarray) -> float:
    """Seconds to read the pairs FKD's way: the image's whole file per sample, then one crop's dense label.

    FKD's loader calls a plain ``torch.load``: so does this reference (on files this script just wrote), which is
    faster than softlab's own safe importer; softlab never unpickles."""
    label_type, classes = store.label_type, store.num_classes
    started = time.perf_counter()
    for image, crop in pairs:
        coords, flip, labels = torch.load(files[image], weights_only=False)
        indices, probs = split_fkd_labels(np.asarray(labels)[crop:crop + 1], label_type)
        dense_labels(torch.from_numpy(indices), torch.from_numpy(probs), label_type, classes)
        np.asarray(coords[crop], dtype=np.float32), bool(flip[crop])
    return time.perf_counter() - started


def zlib_what_if(store: LabelStore) -> tuple[float, float]:
    """(bytes per crop of the compact arrays compressed chunk by chunk with zlib level 6, median µs to decompress
    one chunk of all of them)."""
    total, times = 0, []
    for chunk in range(store.num_chunks):
        start, stop = store.chunk_bounds(chunk)
        blobs = [zlib.compress(np.ascontiguousarray(array[start:stop]).tobytes(), 6)
                 for name, array in store.arrays.items() if name != "targets"]
        if (store.path / "palettes").is_dir():
            blobs.append(zlib.compress(np.load(store.path / "palettes" / f"{chunk:06d}.npy").tobytes(), 6))
        total += sum(len(blob) for blob in blobs)
        began = time.perf_counter()
        for blob in blobs:
            zlib.decompress(blob)
        times.append(time.perf_counter() - began)
    total += store.arrays["targets"].nbytes
    return total / (store.num_images * store.num_crops), statistics.median(times) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="efficientnet_lite0")
    parser.add_argument("--data", default="photos")
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--crops", type=int, default=50)
    parser.add_argument("--label-type", default="marginal_smoothing_k5")
    parser.add_argument("--reads", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=256, help="pairs per softlab read call")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    device = torch.device(args.device) if args.device else default_device()
    dataset = load_dataset(args.data, limit=args.images)
    teacher = create_teacher(args.teacher)
    crops = args.images * args.crops
    print(f"{args.teacher} on {args.data}: {args.images} images x {args.crops} crops = {crops} crops, "
          f"{args.label_type}, {dataset.num_classes} classes, torch {torch.__version__}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        stores = {layout: generate_labels(dataset, teacher, tmp / layout, num_crops=args.crops,
                                          label_type=args.label_type, device=device, progress=False, layout=layout)
                  for layout in ("compact", "plain")}
        for fp16 in (True, False):
            export_fkd(stores["compact"], tmp / f"fkd{'16' if fp16 else '32'}", fp16=fp16, progress=False)
        sizes = {f"softlab {layout}": folder_bytes(tmp / layout) for layout in stores}
        sizes["FKD .tar float16"] = folder_bytes(tmp / "fkd16", "*.tar")
        sizes["FKD .tar float32"] = folder_bytes(tmp / "fkd32", "*.tar")
        reference = sizes["FKD .tar float16"]
        print("bytes per crop (every file of the folder; FKD: its .tar files):")
        for name, size in sizes.items():
            print(f"  {name:18s} {size / crops:8.1f}   {size / reference:5.2f}x FKD float16")
        for layout, store in stores.items():
            print(f"  {layout} arrays alone (a large store): {array_bytes_per_crop(store):.1f} B/crop")
        packed, unpack_us = zlib_what_if(stores["compact"])
        print(f"  what-if: compact arrays zlib-compressed per chunk ({stores['compact'].manifest['chunk_size']} "
              f"images): {packed:.1f} B/crop, {packed * crops / reference:.2f}x FKD float16; decompressing one "
              f"chunk: {unpack_us:.0f} us")

        rng = np.random.default_rng(0)
        pairs = np.stack([rng.integers(0, args.images, args.reads), rng.integers(0, args.crops, args.reads)], 1)
        store = stores["compact"]
        files = []  # each image's file, named as export_fkd names it
        for image, image_id in enumerate(store.image_ids):
            if "/" not in image_id:
                image_id = f"{_safe(store.class_names[int(store.targets[image])])}/{image_id}"
            files.append(tmp / "fkd16" / "train" / f"{fkd_key(image_id)}.tar")
        missing = [path for path in files if not path.is_file()]
        if missing:
            raise SystemExit(f"{len(missing)} FKD files not found, e.g. {missing[0]}")
        timings = {"compact, batched": [], "compact, one per call": [], "plain, batched": [], "FKD float16": []}
        for repeat in range(args.repeats):
            timings["compact, batched"].append(read_softlab(tmp / "compact", pairs, args.batch))
            timings["compact, one per call"].append(read_softlab(tmp / "compact", pairs, 1))
            timings["plain, batched"].append(read_softlab(tmp / "plain", pairs, args.batch))
            timings["FKD float16"].append(read_fkd(files, store, pairs))
            print(f"  repeat {repeat}: " + ", ".join(f"{k} {v[-1] * 1e3:.1f} ms" for k, v in timings.items()),
                  flush=True)
        print(f"random reads of {args.reads} (box, flip, dense label), medians over {args.repeats} repeats:")
        fkd = statistics.median(timings["FKD float16"])
        for name, values in timings.items():
            seconds = statistics.median(values)
            print(f"  {name:22s} {seconds * 1e3:9.1f} ms   {args.reads / seconds:11.0f} reads/s   "
                  f"{fkd / seconds:7.1f}x FKD")


if __name__ == "__main__":
    sys.exit(main())
