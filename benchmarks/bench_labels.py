"""Label-generation throughput against the teacher's best bare forward and against FKD's own generator.

    python benchmarks/bench_labels.py --teacher efficientnet_lite0 --data photos --images 4 --crops 64
    python benchmarks/bench_labels.py --teacher fashion_mnist_cnn --data fashion-mnist --images 1000 --crops 32
    python benchmarks/bench_labels.py --teacher fashion_mnist_cnn --data fashion-mnist --images 1000 --crops 32 \\
        --compare-cutters

Each repeat runs, alternated in one process: (1) ``generate_labels`` end to end (decode, cut, forward,
quantise, write; batch size "auto", cutter "auto"); (2) a re-implementation of FKD's generator
(``fkd_reference.py``: PIL crops per image, one forward per image, one ``torch.save`` per image) on the same
crops; (3) the teacher's bare forward on pre-cut crops at each batch size, whose best is the reference. Prints
medians over ``--repeats`` and the ratios softlab / best bare forward and softlab / FKD.

``--compare-cutters`` instead measures how far the batched cutters are from the exact per-crop one, in pixels
and in the teacher's labels (probability of the true class, top-1 class).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

from fkd_reference import fkd_generate  # noqa: E402

from softlab.data import load_dataset  # noqa: E402
from softlab.data.crops import (CropParams, cut_crops, cut_crops_batched, cut_crops_grid, pixel_boxes,  # noqa: E402
                                sample_crops)
from softlab.labels import generate_labels  # noqa: E402
from softlab.labels.autotune import CANDIDATES  # noqa: E402
from softlab.labels.generate import default_device, teacher_probs  # noqa: E402
from softlab.runtime import keep_freed_memory  # noqa: E402
from softlab.teachers import create_teacher  # noqa: E402


def regions_of(dataset, count: int, num_crops: int, seed: int = 0):
    out = []
    for index in range(count):
        image, _ = dataset[index]
        out.append(sample_crops(*image.shape[-2:], num_crops, CropParams(), seed, index))
    return out


def precut(dataset, regions, size: int) -> torch.Tensor:
    return torch.cat([cut_crops(dataset[i][0], c, f, size) for i, (c, f) in enumerate(regions)])


def bare_forward(teacher, crops: torch.Tensor, sizes, device) -> dict:
    """crops/s of the teacher alone on pre-cut crops, per batch size (one warm-up batch each)."""
    rates = {}
    for size in sizes:
        teacher_probs(teacher, crops[:size], device, 1.0)
        started = time.perf_counter()
        for batch in crops.split(size):
            teacher_probs(teacher, batch, device, 1.0)
        rates[size] = len(crops) / (time.perf_counter() - started)
    return rates


def compare_cutters(dataset, teacher, regions, size: int, device) -> None:
    targets = torch.as_tensor(np.asarray(dataset.targets[:len(regions)]))
    exact, batched, grid = [], [], []
    for index, (coords, flips) in enumerate(regions):
        image = dataset[index][0].as_subclass(torch.Tensor)
        boxes = pixel_boxes(coords, *image.shape[-2:])
        exact.append(cut_crops(image, coords, flips, size))
        batched.append(cut_crops_batched(image[None], boxes[None], flips[None], size))
        grid.append(cut_crops_grid(image[None], boxes[None], flips[None], size))
    exact, batched, grid = torch.cat(exact), torch.cat(batched), torch.cat(grid)
    upsampled = torch.from_numpy(np.concatenate([(pixel_boxes(c, *dataset[i][0].shape[-2:])[:, 2:] <= size).all(1)
                                                 for i, (c, _) in enumerate(regions)]))
    per_crop_target = targets.repeat_interleave(len(regions[0][0]))
    probs = {name: torch.cat([teacher_probs(teacher, b, device, 1.0) for b in crops.split(256)])
             for name, crops in (("exact", exact), ("auto (batched)", batched), ("grid", grid))}
    print(f"cutters on {len(exact)} crops of {len(regions)} images ({int(upsampled.sum())} upsampled or kept at "
          f"scale, where the grid cutter applies):")
    for name, crops in (("auto (batched)", batched), ("grid", grid)):
        pixels = (crops - exact).abs()[upsampled] if name == "grid" else (crops - exact).abs()
        y_exact = probs["exact"].gather(1, per_crop_target[:, None])[:, 0]
        y_other = probs[name].gather(1, per_crop_target[:, None])[:, 0]
        mask = upsampled if name == "grid" else torch.ones_like(upsampled)
        dy = (y_other - y_exact).abs()[mask]
        agree = (probs[name].argmax(1) == probs["exact"].argmax(1))[mask].float().mean()
        print(f"  {name:15s} vs exact: pixels max |Δ| {pixels.max():.2e}, mean |Δ| {pixels.mean():.2e}; "
              f"labels max |Δ y_s| {dy.max():.2e}, mean |Δ y_s| {dy.mean():.2e}, top-1 agreement {agree:.4%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="efficientnet_lite0")
    parser.add_argument("--data", default="photos")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--crops", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bare-sizes", type=int, nargs="+", default=list(CANDIDATES),
                        help="batch sizes of the bare forward (the best is the reference)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--compare-cutters", action="store_true")
    args = parser.parse_args()
    kept = keep_freed_memory()  # as the softlab command does; SOFTLAB_KEEP_FREED_MEMORY=0 measures without
    device = torch.device(args.device) if args.device else default_device()
    dataset = load_dataset(args.data, limit=args.images)
    teacher = create_teacher(args.teacher).to(device).eval()
    size = int(teacher.input_size[-1])
    regions = regions_of(dataset, args.images, args.crops)
    total = args.images * args.crops
    print(f"{args.teacher} on {args.data}: {args.images} images x {args.crops} crops = {total} crops at {size} px, "
          f"{device.type}, {torch.get_num_threads()} threads, torch {torch.__version__}, freed memory "
          f"{'kept for reuse' if kept else 'returned (the allocator default)'}", flush=True)
    if args.compare_cutters:
        compare_cutters(dataset, teacher, regions, size, device)
        return
    crops = precut(dataset, regions, size)
    sizes = [s for s in args.bare_sizes if s <= total] or [total]
    results = {"softlab": [], "fkd": [], "bare": []}
    with tempfile.TemporaryDirectory() as folder:
        for repeat in range(args.repeats):
            started = time.perf_counter()
            store = generate_labels(dataset, teacher, f"{folder}/store{repeat}", num_crops=args.crops, device=device,
                                    progress=False, overwrite=True)
            results["softlab"].append(total / (time.perf_counter() - started))
            generation = store.manifest["generation"]
            started = time.perf_counter()
            fkd_generate(dataset, teacher, regions, f"{folder}/fkd{repeat}", size)
            results["fkd"].append(total / (time.perf_counter() - started))
            rates = bare_forward(teacher, crops, sizes, device)
            results["bare"].append(max(rates.values()))
            print(f"  repeat {repeat}: softlab {results['softlab'][-1]:.1f} (batch {generation['batch_size']}, "
                  f"{generation['batch_size_from']}), FKD {results['fkd'][-1]:.1f}, bare by batch size "
                  + ", ".join(f"{k}: {v:.1f}" for k, v in rates.items()) + " crops/s", flush=True)
    median = {name: statistics.median(values) for name, values in results.items()}
    print(f"medians over {args.repeats} repeats (crops/s):")
    print(f"  softlab generate_labels (auto batch, auto cutter): {median['softlab']:10.1f}")
    print(f"  FKD generator re-implementation                  : {median['fkd']:10.1f}")
    print(f"  teacher best bare forward                        : {median['bare']:10.1f}")
    ratio_bare = statistics.median(s / b for s, b in zip(results["softlab"], results["bare"]))
    ratio_fkd = statistics.median(s / f for s, f in zip(results["softlab"], results["fkd"]))
    print(f"  softlab / best bare forward (goal >= 0.9)        : {ratio_bare:10.3f}")
    print(f"  softlab / FKD                                    : {ratio_fkd:10.3f}")


if __name__ == "__main__":
    main()
