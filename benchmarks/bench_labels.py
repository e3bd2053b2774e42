"""Label-generation throughput: the whole pipeline against its parts, measured in the same run.

    python benchmarks/bench_labels.py --teacher efficientnet_lite0 --data photos --images 4 --crops 128
    python benchmarks/bench_labels.py --teacher fashion_mnist_cnn --data fashion-mnist --images 500 --crops 32

Prints crops/s for (1) the teacher forward alone on pre-cut crops (the reference), (2) cutting crops alone with
transforms.v2, and (3) ``generate_labels`` end to end (decode, cut, forward, quantise, write), and the ratio
pipeline / reference: how much of the teacher's raw speed the pipeline keeps.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch

from softlab.data import load_dataset
from softlab.data.crops import CropParams, cut_crops, sample_crops
from softlab.labels import generate_labels
from softlab.labels.generate import default_device, teacher_probs
from softlab.teachers import create_teacher


def crops_of(dataset, teacher, count: int, num_crops: int) -> list[torch.Tensor]:
    size = tuple(teacher.input_size[1:])
    out = []
    for index in range(count):
        image, _ = dataset[index]
        coords, flips = sample_crops(*image.shape[-2:], num_crops, CropParams(), 0, index)
        out.append(cut_crops(image, coords, flips, size))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="efficientnet_lite0")
    parser.add_argument("--data", default="photos")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--crops", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    device = torch.device(args.device) if args.device else default_device()
    dataset = load_dataset(args.data, limit=args.images)
    teacher = create_teacher(args.teacher).to(device)
    total = args.images * args.crops

    started = time.perf_counter()
    crops = torch.cat(crops_of(dataset, teacher, args.images, args.crops))
    cut_seconds = time.perf_counter() - started

    teacher_probs(teacher, crops[: min(8, total)], device, 1.0)  # warm-up
    started = time.perf_counter()
    for batch in crops.split(args.batch_size):
        teacher_probs(teacher, batch, device, 1.0)
    forward_seconds = time.perf_counter() - started

    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        generate_labels(dataset, teacher, f"{folder}/store", num_crops=args.crops, batch_size=args.batch_size,
                        device=device, progress=False)
        pipeline_seconds = time.perf_counter() - started

    print(f"{args.teacher} on {args.data}: {args.images} images x {args.crops} crops = {total} crops, {device.type}, "
          f"{torch.get_num_threads()} threads")
    print(f"  teacher forward only (reference): {total / forward_seconds:9.1f} crops/s")
    print(f"  cutting crops only (v2)         : {total / cut_seconds:9.1f} crops/s")
    print(f"  generate_labels end to end      : {total / pipeline_seconds:9.1f} crops/s")
    print(f"  ratio pipeline / reference      : {forward_seconds / pipeline_seconds:9.3f}")


if __name__ == "__main__":
    main()
