"""Training throughput: the parts of a step against each other, measured alternately in the same run.

    python benchmarks/bench_train.py                                  # Fashion-MNIST, the demo's student
    python benchmarks/bench_train.py --teacher-widths 48,96,192,384   # a wide teacher, ≥ 10× the student's step
    python benchmarks/bench_train.py --teacher-widths 48,96,192,384 --profile 5

Prints crops/s for (1) the student's forward + backward alone on ready crops (the reference), (2) the teacher's
forward alone on the same crops (its cost in student steps), (3) multi-crop loading with the batched
cutter and (4) with the per-crop transforms.v2 cutter, (5) a whole FKD step (load, stored labels, forward,
backward) with ``--num-crops`` crops per decoded image and (6) with one crop per image (``num_crops`` times as
many images, the same crops per step), and (7) a whole KD step (fresh crops plus an online teacher forward).
Every measure runs ``--steps`` steps per round; rounds alternate all measures and the medians of ``--repeats``
rounds are reported, with the ratios of the medians. Goals: batched cutting ≥ 3× the per-crop cutter; an FKD step
keeps ≥ 75% of the student's raw speed; FKD ≥ 2× KD with a teacher ≥ 10× the student's step (FKD pays for the
teacher once, at label generation, whose time is printed too).

The student defaults to the demo's (``resnet10t_narrow`` at widths 8/16/32/64). ``--teacher-widths`` builds the
Fashion-MNIST teacher's architecture at those widths, untrained (throughput does not depend on the weights);
otherwise ``--teacher`` is created as the project does (the trained Fashion-MNIST teacher by default).
``--profile N`` adds a cProfile of N FKD steps: the time of what is not the student's forward and backward.
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import tempfile
import time

import numpy as np
import torch

from softlab.data import FASHION_MNIST_CLASSES, load_dataset
from softlab.data.crops import CropParams, cut_crops
from softlab.labels import generate_labels
from softlab.teachers import Teacher, create_teacher
from softlab.teachers.fashion_mnist import MEAN, STD, build_model
from softlab.train import MultiCropLoader, RandomCrops, StoredCrops, TrainConfig, create_recipe, create_student
from softlab.train.build import build_optimizer
from softlab.train.recipes import StepContext


def wide_teacher(widths: list[int]) -> Teacher:
    """The Fashion-MNIST teacher's network (resnet10t, no stem max-pool) at other widths, untrained."""
    model = build_model(10, 1, "resnet10t", False, channels=widths, stem_width=widths[0])
    return Teacher(model, spec=f"fashion_mnist_cnn at widths {widths} (untrained)", input_size=(1, 28, 28),
                   mean=MEAN, std=STD, class_names=FASHION_MNIST_CLASSES)


def alternated_rates(measures: dict, steps: int, repeats: int) -> dict[str, float]:
    """Median crops/s of each ``name: (fn(step), crops per step)``, the measures alternated round by round."""
    for fn, _ in measures.values():
        fn(0)  # warm-up
    rates = {name: [] for name in measures}
    for round_ in range(repeats):
        for name, (fn, crops) in measures.items():
            started = time.perf_counter()
            for step in range(1, steps + 1):
                fn(round_ * steps + step)
            rates[name].append(steps * crops / (time.perf_counter() - started))
    return {name: statistics.median(values) for name, values in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="fashion_mnist_cnn")
    parser.add_argument("--teacher-widths", default="", help="e.g. 48,96,192,384: an untrained wide teacher")
    parser.add_argument("--student", default="resnet10t_narrow")
    parser.add_argument("--widths", default="8,16,32,64", help="resnet10t_narrow channels ('' for its default)")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--stored-crops", type=int, default=16)
    parser.add_argument("--batch-images", type=int, default=100)
    parser.add_argument("--num-crops", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5, help="steps per measure and round")
    parser.add_argument("--repeats", type=int, default=3, help="alternated rounds (medians reported)")
    parser.add_argument("--profile", type=int, default=0, help="cProfile this many FKD steps")
    args = parser.parse_args()

    torch.manual_seed(0)
    dataset = load_dataset("fashion-mnist", limit=args.images)
    if args.teacher_widths:
        teacher = wide_teacher([int(w) for w in args.teacher_widths.split(",")])
    else:
        teacher = create_teacher(args.teacher)
    size = teacher.input_size[1]
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        store = generate_labels(dataset, teacher, f"{folder}/store", num_crops=args.stored_crops, progress=False)
        generation = time.perf_counter() - started
        stored = MultiCropLoader(dataset, StoredCrops(store, args.num_crops, 0), args.batch_images, size, 0)
        single = MultiCropLoader(dataset, StoredCrops(store, 1, 0), args.batch_images * args.num_crops, size, 0)
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

        def teacher_only(step):
            with torch.no_grad():
                teacher(crops)

        def per_crop_cutting(step):
            for index in range(args.batch_images):
                image = dataset[(step * args.batch_images + index) % len(dataset)][0]
                coords, flips, _ = fresh.source.draw(0, index, 28, 28)
                cut_crops(image, coords, flips, size)

        def whole_step(recipe, loader):
            distiller = create_recipe(recipe, student, teacher, num_classes=10)

            def run(step):
                batch = loader.batch(step // loader.steps_per_epoch, step % loader.steps_per_epoch)
                ctx = StepContext(0, 1, step, np.random.default_rng(step))
                _, parts = distiller.forward_train(batch, ctx)
                optimizer.zero_grad()
                sum(parts.values()).backward()
                optimizer.step()
            return run

        measures = {
            "student forward+backward (reference)": (student_only, per_step),
            "teacher forward alone": (teacher_only, per_step),
            "loading, batched cutter": (lambda s: stored.batch(0, s % stored.steps_per_epoch), per_step),
            "loading, per-crop transforms.v2 cutter": (per_crop_cutting, per_step),
            f"FKD step, {args.num_crops} crops per image": (whole_step("fkd", stored), per_step),
            "FKD step, 1 crop per image": (whole_step("fkd", single), single.crops_per_step),
            f"KD step (online teacher), {args.num_crops} crops per image": (whole_step("kd", fresh), per_step),
        }
        results = alternated_rates(measures, args.steps, args.repeats)
        if args.profile:
            profile_fkd(whole_step("fkd", stored), args.profile)
    names = list(results)
    reference = results[names[0]]
    print(f"{args.batch_images} images × {args.num_crops} crops per step ({per_step} crops), student {args.student} "
          f"{args.widths}, teacher {teacher.spec}, {torch.get_num_threads()} threads, medians of {args.repeats} "
          f"alternated rounds of {args.steps} steps")
    print(f"label generation: {args.images} images × {args.stored_crops} crops in {generation:.1f} s "
          f"({args.images * args.stored_crops / generation:.0f} crops/s)")
    for name, value in results.items():
        print(f"{name:<46} {value:>9.0f} crops/s   {value / reference:5.2f}× reference")
    fkd, fkd_single, kd = results[names[4]], results[names[5]], results[names[6]]
    print(f"teacher forward / student step (cost): {reference / results[names[1]]:.1f}×")
    print(f"batched cutter / per-crop cutter: {results[names[2]] / results[names[3]]:.1f}×")
    print(f"FKD step / KD step: {fkd / kd:.2f}×   (goal ≥ 2×)")
    print(f"FKD {args.num_crops} crops per image / 1 crop per image: {fkd / fkd_single:.2f}×")


def profile_fkd(step, steps: int) -> None:
    """cProfile of ``steps`` FKD steps, by cumulative time (what the loader, labels and optimiser cost)."""
    step(0)
    profiler = cProfile.Profile()
    profiler.enable()
    for index in range(1, steps + 1):
        step(index)
    profiler.disable()
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(30)


if __name__ == "__main__":
    main()
