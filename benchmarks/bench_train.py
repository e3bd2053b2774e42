"""Training throughput: the parts of a step against each other, measured in the same run.

    python benchmarks/bench_train.py                      # Fashion-MNIST, the demo's student
    python benchmarks/bench_train.py --teacher fashion_mnist_cnn --steps 20 --batch-images 100

Prints crops/s for (1) the student's forward + backward alone on ready crops (the reference), (2) multi-crop
loading with the batched grid_sample cutter and (3) with the per-crop transforms.v2 cutter, (4) a whole FKD step
(load, stored labels, forward, backward), and (5) a whole KD step (the same plus a teacher forward), and the
ratios to the reference. Goals: batched cutting ≥ 3× the per-crop cutter; an FKD step keeps ≥ 75% of the
student's raw speed; KD pays for its teacher forward every step (FKD pays once, at label generation).
The student defaults to the demo's (``resnet10t_narrow`` at widths 8/16/32/64).
"""
from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

from softlab.data import load_dataset
from softlab.data.crops import CropParams, cut_crops
from softlab.labels import generate_labels
from softlab.teachers import create_teacher
from softlab.train import MultiCropLoader, RandomCrops, StoredCrops, TrainConfig, create_recipe, create_student
from softlab.train.build import build_optimizer
from softlab.train.recipes import StepContext


def rate(fn, steps: int, crops_per_step: int) -> float:
    fn(0)  # warm-up
    started = time.perf_counter()
    for step in range(1, steps + 1):
        fn(step)
    return steps * crops_per_step / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="fashion_mnist_cnn")
    parser.add_argument("--student", default="resnet10t_narrow")
    parser.add_argument("--widths", default="8,16,32,64", help="resnet10t_narrow channels ('' for its default)")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--stored-crops", type=int, default=16)
    parser.add_argument("--batch-images", type=int, default=100)
    parser.add_argument("--num-crops", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()

    torch.manual_seed(0)
    dataset = load_dataset("fashion-mnist", limit=args.images)
    teacher = create_teacher(args.teacher)
    size = teacher.input_size[1]
    with tempfile.TemporaryDirectory() as folder:
        store = generate_labels(dataset, teacher, f"{folder}/store", num_crops=args.stored_crops, progress=False)
        stored = MultiCropLoader(dataset, StoredCrops(store, args.num_crops, 0), args.batch_images, size, 0)
        fresh = MultiCropLoader(dataset, RandomCrops(CropParams(), args.num_crops, 0), args.batch_images, size, 0)
        per_step = stored.crops_per_step
        kwargs = {"channels": [int(w) for w in args.widths.split(",")]} if args.widths else {}
        student = create_student(args.student, 10, (1, size, size), (0.286,), (0.353,), **kwargs)
        optimizer = build_optimizer(TrainConfig(), student)
        crops = stored.batch(0, 0).images

        def student_only(step):
            loss = student(crops).logsumexp(-1).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        def per_crop_cutting(step):
            for index in range(args.batch_images):
                image = dataset[(step * args.batch_images + index) % len(dataset)][0]
                coords, flips, _ = fresh.source.draw(0, index, 28, 28)
                cut_crops(image, coords, flips, size)

        def whole_step(recipe):
            distiller = create_recipe(recipe, student, teacher, num_classes=10)

            def run(step):
                batch = (stored if recipe == "fkd" else fresh).batch(0, step % stored.steps_per_epoch)
                ctx = StepContext(0, 1, step, np.random.default_rng(step))
                _, parts = distiller.forward_train(batch, ctx)
                optimizer.zero_grad()
                sum(parts.values()).backward()
                optimizer.step()
            return run

        results = {
            "student forward+backward (reference)": rate(student_only, args.steps, per_step),
            "loading, batched grid_sample cutter": rate(lambda s: stored.batch(0, s % stored.steps_per_epoch),
                                                        args.steps, per_step),
            "loading, per-crop transforms.v2 cutter": rate(per_crop_cutting, args.steps, per_step),
            "FKD step (stored labels)": rate(whole_step("fkd"), args.steps, per_step),
            "KD step (online teacher)": rate(whole_step("kd"), args.steps, per_step),
        }
    reference = results["student forward+backward (reference)"]
    print(f"{args.batch_images} images × {args.num_crops} crops per step, student {args.student} {args.widths}, "
          f"teacher {args.teacher}, {torch.get_num_threads()} threads")
    for name, value in results.items():
        print(f"{name:<42} {value:>9.0f} crops/s   {value / reference:5.2f}× reference")
    batched = results["loading, batched grid_sample cutter"] / results["loading, per-crop transforms.v2 cutter"]
    print(f"batched cutter / per-crop cutter: {batched:.1f}×")
    print(f"FKD step / KD step: {results['FKD step (stored labels)'] / results['KD step (online teacher)']:.2f}×")


if __name__ == "__main__":
    main()
