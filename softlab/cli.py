"""The ``softlab`` command line: teachers, region labels, FKD interop, FerKD calibration, training and the demo."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

DEFAULT_DATA = "fashion-mnist"
DEFAULT_TEACHER = "fashion_mnist_cnn"


def _add_teacher_commands(sub) -> None:
    teacher = sub.add_parser("teacher", help="teachers: train the in-project Fashion-MNIST teacher, list, evaluate")
    commands = teacher.add_subparsers(dest="action", required=True)
    train = commands.add_parser("train", help="train (or retrain) the Fashion-MNIST teacher and cache it")
    train.add_argument("--epochs", type=int, default=None, help="training epochs (default: the tuned default)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--limit", type=int, default=None, help="train on the first N images only (quick checks)")
    train.add_argument("--root", default=None, help="folder holding the Fashion-MNIST IDX files")
    train.add_argument("--cache-dir", default=None, help="where to cache the teacher (default $SOFTLAB_HOME/teachers)")
    train.set_defaults(func=cmd_teacher_train)
    listing = commands.add_parser("list", help="list registered teacher names and spec forms")
    listing.set_defaults(func=cmd_teacher_list)
    evaluate = commands.add_parser("eval", help="top-1 accuracy of a teacher on a data set (whole images)")
    evaluate.add_argument("spec")
    evaluate.add_argument("--data", default="fashion-mnist:test")
    evaluate.add_argument("--teacher-weights", default=None)
    evaluate.add_argument("--limit", type=int, default=None)
    evaluate.set_defaults(func=cmd_teacher_eval)


def _whole_number(text: str, least: int, note: str, expected: str = "a whole number") -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"must be at least {least}, got {value} ({note})")
    return value


def _positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    return _whole_number(text, 1, "leave the option out for its default")


def _batch_size(text: str):
    """argparse type: "auto" or a whole number of at least 1."""
    return "auto" if text == "auto" else _positive_int(text)


def _workers(text: str):
    """argparse type: "auto" or a whole number of at least 0."""
    return "auto" if text == "auto" else _whole_number(text, 0, "0 decodes in the main process",
                                                       "a whole number or auto")


def _add_label_commands(sub) -> None:
    labels = sub.add_parser("labels", help="region soft labels: generate, inspect, import/export FKD format")
    commands = labels.add_subparsers(dest="action", required=True)
    gen = commands.add_parser("generate", help="generate (or resume) a region soft-label store")
    gen.add_argument("--data", default=DEFAULT_DATA, help="fashion-mnist, photos, photos:all or an image folder")
    gen.add_argument("--root", default=None, help="data root (Fashion-MNIST IDX folder)")
    gen.add_argument("--download", action="store_true", help="download the data set when online")
    gen.add_argument("--limit", type=int, default=None, help="first N images only")
    gen.add_argument("--teacher", default=DEFAULT_TEACHER, help="teacher spec (see `softlab teacher list`)")
    gen.add_argument("--teacher-weights", default=None, help="local weights file for a timm:/torchvision: teacher")
    gen.add_argument("--out", required=True, help="store folder; rerun the same command to resume")
    gen.add_argument("--crops", type=_positive_int, default=None, help="crops per image (default: the data set's)")
    gen.add_argument("--label-type", default="marginal_smoothing_k5")
    gen.add_argument("--temperature", type=float, default=1.0)
    gen.add_argument("--scale", type=float, nargs=2, default=(0.08, 0.936), metavar=("MIN", "MAX"))
    gen.add_argument("--ratio", type=float, nargs=2, default=(3 / 4, 4 / 3), metavar=("MIN", "MAX"))
    gen.add_argument("--flip-p", type=float, default=0.5)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--chunk-size", type=_positive_int, default=None, help="images per resumable chunk")
    gen.add_argument("--batch-size", type=_batch_size, default="auto",
                     help="crops per teacher forward, or auto (the default): the fastest of a few sizes, measured "
                          "at the start and cached per teacher and device under $SOFTLAB_HOME/autotune")
    gen.add_argument("--cutter", choices=("exact", "auto"), default=None,
                     help="how crops are cut: exact (one resized_crop per crop) or auto (small images' crops many "
                          "images at once, the same pixels up to float rounding); default: a resumed store's own, "
                          "else auto")
    gen.add_argument("--layout", choices=("compact", "plain"), default=None,
                     help="compact (crop regions recomputed from the seed and checked by sha256; float16 y_s and "
                          "entropy) or plain (regions stored as coords.npy/flip.npy); default: a resumed store's "
                          "own, else compact")
    gen.add_argument("--compile", action="store_true",
                     help="run the teacher through torch.compile (inductor); pays off on long GPU runs")
    gen.add_argument("--workers", type=_workers, default="auto",
                     help="processes that decode images ahead of the teacher (0: none), or auto (the default): none "
                          "on the CPU, up to 8 on CUDA")
    gen.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    gen.add_argument("--overwrite", action="store_true", help="replace an existing store with other settings")
    gen.add_argument("--on-bad-image", choices=("fail", "skip"), default="fail",
                     help="an image that cannot be decoded: stop naming it (fail, the default), or leave it without "
                          "labels, list it in the manifest and report it (skip)")
    gen.set_defaults(func=cmd_labels_generate)
    inspect = commands.add_parser("inspect", help="summarise a store, or show one image's crops")
    inspect.add_argument("store")
    inspect.add_argument("--image", type=int, default=None, help="show this image's crops")
    inspect.add_argument("--crops", type=int, default=10, help="how many crops to show with --image")
    inspect.add_argument("--verify", action="store_true", help="verify the store first (as `labels verify`)")
    inspect.add_argument("--json", action="store_true")
    inspect.set_defaults(func=cmd_labels_inspect)
    verify = commands.add_parser("verify", help="check a store: files, value ranges, chunk markers and checksums")
    verify.add_argument("store")
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    verify.set_defaults(func=cmd_labels_verify)
    imp = commands.add_parser("import-fkd", help="import a folder of FKD .tar soft-label files")
    imp.add_argument("folder")
    imp.add_argument("--out", required=True)
    imp.add_argument("--data", default=None, help="match files to this data set's images (e.g. an image folder)")
    imp.add_argument("--label-type", default=None, help="e.g. marginal_renorm_k5 (default: from the files)")
    imp.add_argument("--num-classes", type=int, default=None)
    imp.add_argument("--workers", type=_workers, default="auto",
                     help="processes that read the files (0: none), or auto (the default): one per core, up to 8, "
                          "for more than 1,000 files")
    imp.set_defaults(func=cmd_labels_import)
    exp = commands.add_parser("export-fkd", help="export a store as FKD .tar files")
    exp.add_argument("store")
    exp.add_argument("folder")
    exp.add_argument("--fp16", action="store_true", help="coords and labels as float16 (FKD's --use_fp16)")
    exp.set_defaults(func=cmd_labels_export)


def _add_calibrate_command(sub) -> None:
    cal = sub.add_parser("calibrate", help="FerKD calibration statistics of a store for given thresholds")
    cal.add_argument("store")
    cal.add_argument("--t-low", type=float, default=0.05)
    cal.add_argument("--t-mid", type=float, default=0.3)
    cal.add_argument("--t-top", type=float, default=1.0)
    cal.add_argument("--epsilon", type=float, default=0.1)
    cal.add_argument("--mode", choices=("absolute", "quantile"), default="absolute")
    cal.add_argument("--per-class", action="store_true", help="also print the table per class")
    cal.add_argument("--json", action="store_true")
    cal.set_defaults(func=cmd_calibrate)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="softlab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_teacher_commands(sub)
    _add_label_commands(sub)
    _add_calibrate_command(sub)
    from .train.commands import add_commands

    add_commands(sub)
    return parser


# ----- teachers
def cmd_teacher_train(args) -> int:
    from .teachers.fashion_mnist import train_fashion_mnist_teacher

    kwargs = {"seed": args.seed, "root": args.root, "cache_dir": args.cache_dir, "limit": args.limit}
    if args.epochs is not None:
        kwargs["epochs"] = args.epochs
    path = train_fashion_mnist_teacher(**kwargs)
    print(f"teacher saved to {path}")
    return 0


def cmd_teacher_list(args) -> int:
    from .teachers import list_teachers

    print("registered teachers:")
    for name in list_teachers():
        print(f"  {name}")
    print("other forms: timm:<name>, torchvision:<name>, file:<path>@<arch spec>, ensemble:<spec>+<spec>[+...]")
    return 0


def cmd_teacher_eval(args) -> int:
    from .data import load_dataset
    from .teachers import create_teacher
    from .teachers.base import eval_transform, evaluate_classifier

    dataset = load_dataset(args.data, limit=args.limit)
    teacher = create_teacher(args.spec, weights=args.teacher_weights)
    accuracy = evaluate_classifier(teacher, dataset)
    print(f"{teacher.spec} on {dataset.name}: top-1 {accuracy:.4f} ({len(dataset)} images; "
          f"{eval_transform(teacher).describe()})")
    return 0


# ----- labels
def cmd_labels_generate(args) -> int:
    from .data import load_dataset
    from .data.crops import CropParams
    import warnings

    import torch

    from . import distributed
    from .labels import generate_labels
    from .labels.generate import SkippedImagesWarning, default_device, describe_skipped, skipped_images
    from .teachers import create_teacher

    # under torchrun: one process per GPU (cuda:LOCAL_RANK), the pending chunks shared out among them
    device = torch.device(args.device) if args.device else default_device()
    ctx = distributed.init(device)
    try:
        with distributed.main_first():  # rank 0 downloads data or weights first; the others find them cached
            dataset = load_dataset(args.data, root=args.root, download=args.download, limit=args.limit)
            teacher = create_teacher(args.teacher, weights=args.teacher_weights)
        params = CropParams(scale=tuple(args.scale), ratio=tuple(args.ratio), flip_p=args.flip_p)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SkippedImagesWarning)  # reported below, after the summary
            store = generate_labels(dataset, teacher, args.out, num_crops=args.crops, label_type=args.label_type,
                                    temperature=args.temperature, crop_params=params, seed=args.seed,
                                    chunk_size=args.chunk_size, batch_size=args.batch_size, device=device,
                                    overwrite=args.overwrite, on_bad_image=args.on_bad_image, cutter=args.cutter,
                                    layout=args.layout, workers=args.workers, compile=args.compile)
    finally:
        distributed.shutdown()
    if not ctx.is_main:
        return 0
    _print_summary(store.summary())
    skipped = skipped_images(store)
    if skipped:
        print(describe_skipped(skipped, store.num_images, store.path / "manifest.json"))
    return 0


def _print_summary(summary: dict) -> None:
    width = max(len(key) for key in summary)
    for key, value in summary.items():
        print(f"{key:<{width}}  {value}")


def cmd_labels_inspect(args) -> int:
    from .labels import LabelStore

    store = LabelStore.open(args.store, allow_partial=True, verify="none" if args.verify else "auto")
    if args.verify:
        _print_verify_report(store.verify("full"))
    if args.image is None:
        summary = store.summary()
        print(json.dumps(summary, indent=2)) if args.json else _print_summary(summary)
        return 0
    if not 0 <= args.image < store.num_images:
        raise SystemExit(f"error: --image must lie in [0, {store.num_images})")
    _print_image(store, args.image, args.crops, args.json)
    return 0


def cmd_labels_verify(args) -> int:
    from .labels import LabelStore

    store = LabelStore.open(args.store, allow_partial=True, verify="none")
    report = store.verify("full")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_verify_report(report)
    return 0


def _print_verify_report(report: dict) -> None:
    state = "complete" if report["complete"] else "incomplete"
    print(f"label store {report['store']}: {state}, {report['images']} images x {report['crops_per_image']} crops, "
          f"{report['label_type']}")
    print(f"  files      {len(report['arrays'])} arrays ({', '.join(report['arrays'])}) and image_ids.json match "
          "the manifest")
    regions = [name for name in report.get("recomputed") or [] if name != "topk_idx"]
    if regions:
        print(f"  regions    {' and '.join(regions)} recomputed from the seed and image sizes "
              f"({report['layout']} layout), matching each finished chunk's sha256")
    if "topk_idx" in (report.get("recomputed") or []):
        print("  classes    topk_idx decoded from per-image palettes (topk_code.npy, palettes/), matching each "
              "finished chunk's sha256")
    print(f"  values     {report['crops_checked']} crops of {report['images_checked']} finished images in range")
    print(f"  markers    {report['chunks_finished']}/{report['chunks']} chunk markers present, "
          f"{report['chunk_digests_checked']} chunks' rows match their sha256")
    print(f"  checksums  {report['checksums']}")
    pending = "" if report["complete"] else \
        f" (incomplete: {report['chunks_finished']}/{report['chunks']} chunks finished)"
    arrays = len(report["arrays"]) + len(report.get("recomputed") or [])
    print(f"OK: {report['images_checked']} images, {report['crops_checked']} crops, {arrays} arrays verified{pending}")


def _print_image(store, image: int, count: int, as_json: bool) -> None:
    from .labels import StoreError

    chunk = store.chunk_of(image)
    if chunk not in store.finished_chunks():
        start, stop = store.chunk_bounds(chunk)
        done = len(store.finished_chunks())
        raise StoreError(f"image {image}'s labels are not generated yet: its chunk {chunk} (images {start}-"
                         f"{stop - 1}) is not finished in {store.path} ({done}/{store.num_chunks} chunks written); "
                         f"{store.resume_hint}")
    coords, flips = store.crops(image)
    target = int(store.targets[image])
    crops = np.arange(min(count, store.num_crops))
    labels = store.labels(np.full_like(crops, image), crops)
    rows = []
    for crop in crops:
        top = labels[crop].topk(min(3, store.num_classes))
        rows.append({"crop": int(crop), "box": [round(float(v), 4) for v in coords[crop]], "flip": bool(flips[crop]),
                     "y_s": float(store.y_s[image, crop]), "entropy": float(store.entropy[image, crop]),
                     "top": [(store.class_names[int(i)], round(float(p), 4)) for p, i in zip(*top)]})
    if as_json:
        print(json.dumps({"image": image, "id": store.image_ids[image], "target": target, "crops": rows}, indent=2))
        return
    name = store.class_names[target] if target >= 0 else "unlabelled"
    print(f"image {image} ({store.image_ids[image]}), class {target} {name}, {store.num_crops} crops")
    print(f"{'crop':>4}  {'i/H':>6} {'j/W':>6} {'h/H':>6} {'w/W':>6} flip  {'y_s':>6} {'H(p)':>5}  top classes")
    for row in rows:
        box = " ".join(f"{v:6.3f}" for v in row["box"])
        top = ", ".join(f"{label} {p:.3f}" for label, p in row["top"])
        print(f"{row['crop']:>4}  {box} {'yes ' if row['flip'] else 'no  '}  {row['y_s']:6.3f} {row['entropy']:5.2f}  {top}")


def cmd_labels_import(args) -> int:
    from .data import load_dataset
    from .labels.fkd import import_fkd

    dataset = load_dataset(args.data) if args.data else None
    store = import_fkd(args.folder, args.out, dataset=dataset, label_type=args.label_type,
                       num_classes=args.num_classes, workers=args.workers)
    _print_summary(store.summary())
    return 0


def cmd_labels_export(args) -> int:
    from .labels import LabelStore
    from .labels.fkd import export_fkd

    count = export_fkd(LabelStore.open(args.store), args.folder, fp16=args.fp16)
    print(f"wrote {count} FKD files under {Path(args.folder) / 'train'}")
    return 0


# ----- calibration
def cmd_calibrate(args) -> int:
    from .calibrate import Calibration, calibrate
    from .labels import LabelStore

    calibration = Calibration(args.t_low, args.t_mid, args.t_top, args.epsilon, args.mode)
    stats = calibrate(LabelStore.open(args.store), calibration).stats()
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    print_calibration_table(stats, per_class=args.per_class)
    return 0


def print_calibration_table(stats: dict, per_class: bool = False) -> None:
    from .calibrate import CATEGORIES

    settings = stats["calibration"]
    print(f"FerKD calibration ({settings['mode']}): T_L={settings['t_low']} T_M={settings['t_mid']} "
          f"T_T={settings['t_top']} ε={settings['epsilon']}  over {stats['crops']} crops")
    header = f"{'':<16}" + "".join(f"{name:>16}" for name in CATEGORIES)
    print(header)
    print(f"{'all':<16}" + "".join(f"{stats['counts'][c]:>9} {stats['fractions'][c]:>5.1%}" for c in CATEGORIES))
    if per_class:
        for name, row in stats["per_class"].items():
            print(f"{name[:15]:<16}" + "".join(f"{row['counts'][c]:>9} {row['fractions'][c]:>5.1%}" for c in CATEGORIES))
    print(f"kept for training: {stats['kept_fraction']:.1%}; images with no kept crop: "
          f"{stats['images_without_kept_crops']}")
    if stats.get("skipped_images"):
        print(f"skipped images: {stats['skipped_images']} (undecodable when the labels were generated: no labels, "
              "not counted above, never trained on)")


def main(argv=None) -> int:
    """The ``softlab`` command; ``argv`` None means this process is the command (the console script, torchrun),
    which then keeps freed memory for reuse (:func:`softlab.runtime.keep_freed_memory`)."""
    if argv is None:
        from .runtime import keep_freed_memory

        keep_freed_memory()
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as error:
        # RuntimeError covers softlab's StoreError and TrainingDivergedError; the messages say what to do
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
