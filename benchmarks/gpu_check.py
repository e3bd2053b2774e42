"""The GPU path, end to end against its bare parts: label generation and training on one device.

    python benchmarks/gpu_check.py                 # CUDA when available, else the CPU smoke sizes
    python benchmarks/gpu_check.py --device cpu    # the CPU fallback (what CI runs)

(1) Label generation with EfficientNet-Lite0 at 224 px on the photos: ``generate_labels`` end to end (decode,
cut, bf16 channels_last forward on CUDA, quantise, write) against the teacher's forward alone on pre-cut crops at
its best batch size (generation runs at that batch size). (2) Training: an ``fkd`` run of the real engine (pinned memory, bf16 autocast and
channels_last on CUDA) on Fashion-MNIST against the bare student step (forward, backward, optimiser step on ready
crops under the same autocast and layout). Prints crops/s, images/s and the ratios; ``benchmarks/gpu_check.sh``
wraps it with a time limit.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from bench_labels import bare_forward, precut, regions_of  # noqa: E402
from bench_train import wide_teacher  # noqa: E402

from softlab.data import load_dataset  # noqa: E402
from softlab.labels import generate_labels  # noqa: E402
from softlab.teachers import create_teacher  # noqa: E402
from softlab.train import TrainConfig, train  # noqa: E402
from softlab.train.build import build_optimizer  # noqa: E402
from softlab.train.students import create_student  # noqa: E402

SIZES = {  # (photos, crops per photo, teacher batch sizes, training images, images per step, crops, epochs)
    "cuda": (20, 256, (64, 128, 256, 512), 20000, 256, 4, 2),
    "cpu": (1, 16, (8, 16), 256, 32, 2, 1),
}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def label_generation(device: torch.device, photos: int, crops: int, sizes) -> dict:
    dataset = load_dataset("photos", limit=photos)
    teacher = create_teacher("efficientnet_lite0").to(device).eval()
    if device.type == "cuda":
        teacher = teacher.to(memory_format=torch.channels_last)
    pixels = precut(dataset, regions_of(dataset, photos, crops), teacher.input_size[-1])
    rates = bare_forward(teacher, pixels, sizes, device)
    best = max(rates, key=rates.get)
    with tempfile.TemporaryDirectory() as folder:  # at the best batch size: steady state, no batch-size search
        started = time.perf_counter()
        generate_labels(dataset, teacher, f"{folder}/store", num_crops=crops, batch_size=best, device=device,
                        progress=False)
        pipeline = photos * crops / (time.perf_counter() - started)
    return {"bare": rates[best], "bare_batch": best, "pipeline": pipeline}


def training(device: torch.device, images: int, batch_images: int, num_crops: int, epochs: int) -> dict:
    dataset = load_dataset("fashion-mnist", limit=images)
    teacher = wide_teacher([16, 32, 64, 128])  # the project teacher's network; speed does not need its weights
    rates = []

    def on_event(event):
        if event.kind == "step" and event.step > 2:  # past the first steps (allocator, autotuning, caches)
            rates.append(event.images_per_s)

    with tempfile.TemporaryDirectory() as folder:
        store = generate_labels(dataset, teacher, f"{folder}/store", num_crops=8, device=device, progress=False)
        config = TrainConfig(recipe="fkd", out=f"{folder}/runs", epochs=epochs, batch_images=batch_images,
                             num_crops=num_crops, eval_data=None, progress=False, device=device.type)
        result = train(config, dataset=dataset, store=store, callbacks=[on_event])
        student = create_student(config.student, 10, (1, 28, 28), (0.286,), (0.353,)).to(device)
    crops = torch.rand(batch_images * num_crops, 1, 28, 28, device=device)
    if device.type == "cuda":
        student, crops = student.to(memory_format=torch.channels_last), crops.contiguous(
            memory_format=torch.channels_last)
    optimizer = build_optimizer(config, student)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()

    def step():
        with autocast:
            loss = student(crops).float().logsumexp(-1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(3):
        step()
    synchronize(device)
    steps = max(5, len(rates))
    started = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    bare = steps * len(crops) / (time.perf_counter() - started)
    rates.sort()
    return {"pipeline": rates[len(rates) // 2] if rates else float("nan"), "bare": bare, "steps": len(rates),
            "status": result.status}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    photos, crops, sizes, images, batch_images, num_crops, epochs = SIZES[device.type]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}", flush=True)
    labels = label_generation(device, photos, crops, sizes)
    print(f"label generation, EfficientNet-Lite0 224 px, {photos} photos × {crops} crops:\n"
          f"  teacher forward alone (best batch {labels['bare_batch']}) {labels['bare']:10.1f} crops/s\n"
          f"  generate_labels end to end               {labels['pipeline']:10.1f} crops/s\n"
          f"  pipeline / bare forward                  {labels['pipeline'] / labels['bare']:10.2f}", flush=True)
    run = training(device, images, batch_images, num_crops, epochs)
    print(f"training, fkd on Fashion-MNIST, {batch_images} images × {num_crops} crops per step ({run['status']}, "
          f"median of {run['steps']} steps):\n"
          f"  bare student step                        {run['bare']:10.1f} crops/s\n"
          f"  training engine                          {run['pipeline']:10.1f} crops/s\n"
          f"  engine / bare student step               {run['pipeline'] / run['bare']:10.2f}", flush=True)


if __name__ == "__main__":
    main()
