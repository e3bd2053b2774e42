"""Command-line subcommands ``train``, ``evaluate``, ``demo`` and ``compare`` (registered by :func:`add_commands`)."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import threading


def add_commands(subparsers) -> None:
    """Register the four subcommands on an ``argparse`` subparsers object; each sets ``func(args) -> int``."""
    _add_train(subparsers)
    _add_evaluate(subparsers)
    _add_demo(subparsers)
    _add_compare(subparsers)


# ----- train
def _add_train(sub) -> None:
    from .recipes import list_recipes

    p = sub.add_parser("train", help="train one student by a recipe (resumable run folder under --out/--name)")
    p.add_argument("--recipe", required=True, choices=list_recipes())
    p.add_argument("--name", default=None, help="run name (default: the recipe)")
    p.add_argument("--out", default="runs", help="runs folder")
    p.add_argument("--resume", action="store_true", help="continue the run from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run of that name")
    g = p.add_argument_group("data and labels")
    g.add_argument("--data", default="fashion-mnist", help="training images (the store's, for fkd/ferkd)")
    g.add_argument("--limit", type=int, default=None, help="first N training images (as when the store was made)")
    g.add_argument("--eval-data", default="fashion-mnist:test", help="evaluation data ('none' to skip)")
    g.add_argument("--eval-limit", type=int, default=None)
    g.add_argument("--store", default=None, help="label store folder (fkd, ferkd)")
    g.add_argument("--teacher", default=None, help="teacher spec for online recipes (kd, funmatch, meal_v2, nkd)")
    c = p.add_argument_group("FerKD calibration (ferkd; optional for fkd)")
    c.add_argument("--t-low", type=float, default=None)
    c.add_argument("--t-mid", type=float, default=None)
    c.add_argument("--t-top", type=float, default=None)
    c.add_argument("--epsilon", type=float, default=0.1)
    c.add_argument("--calibration-mode", choices=("absolute", "quantile"), default="absolute")
    s = p.add_argument_group("student and budget")
    s.add_argument("--student", default="resnet10t_narrow", help="registered name, timm:<name> or torchvision:<name>")
    s.add_argument("--input-size", type=int, default=None, help="crop side (default: the store's teacher input)")
    s.add_argument("--epochs", type=int, default=10)
    s.add_argument("--batch-images", type=int, default=64, help="images per step")
    s.add_argument("--num-crops", type=int, default=4, help="crops per image per step")
    o = p.add_argument_group("optimisation")
    o.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd")
    o.add_argument("--lr", type=float, default=0.1)
    o.add_argument("--weight-decay", type=float, default=5e-4)
    o.add_argument("--warmup-epochs", type=float, default=1.0)
    o.add_argument("--label-temperature", type=float, default=1.0)
    o.add_argument("--mixing", choices=("none", "selfmix", "cross"), default=None, help="override the recipe's")
    o.add_argument("--mixup-alpha", type=float, default=0.8)
    o.add_argument("--cutmix-alpha", type=float, default=1.0)
    o.add_argument("--mix-prob", type=float, default=0.5)
    o.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="recipe option, e.g. alpha=0.5 or temperature=4 (repeatable)")
    r = p.add_argument_group("runtime")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    r.add_argument("--compile", action="store_true", help="torch.compile the student")
    r.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_train)


def parse_options(items) -> dict:
    options = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ValueError(f"--option takes KEY=VALUE, got {item!r}")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def config_from_args(args):
    from .config import TrainConfig

    thresholds = (args.t_low, args.t_mid, args.t_top)
    calibration = None
    if any(t is not None for t in thresholds):
        if any(t is None for t in thresholds):
            raise ValueError("give all three FerKD thresholds: --t-low, --t-mid and --t-top")
        calibration = {"t_low": args.t_low, "t_mid": args.t_mid, "t_top": args.t_top, "epsilon": args.epsilon,
                       "mode": args.calibration_mode}
    mixing = None
    if args.mixing is not None:
        mixing = {"mode": args.mixing, "mixup_alpha": args.mixup_alpha, "cutmix_alpha": args.cutmix_alpha,
                  "prob": args.mix_prob}
    return TrainConfig(
        recipe=args.recipe, name=args.name, out=args.out, data=args.data, data_limit=args.limit,
        eval_data=None if args.eval_data in (None, "none") else args.eval_data, eval_limit=args.eval_limit,
        store=args.store, calibration=calibration, teacher=args.teacher, student=args.student,
        input_size=args.input_size, epochs=args.epochs, batch_images=args.batch_images, num_crops=args.num_crops,
        optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs,
        label_temperature=args.label_temperature, mixing=mixing, recipe_options=parse_options(args.option),
        seed=args.seed, device=args.device, compile=args.compile, progress=not args.no_progress)


@contextlib.contextmanager
def stop_on_interrupt(control):
    """First Ctrl-C asks the run to stop after the current step (with a checkpoint); a second one aborts."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if control.stop_requested:
            raise KeyboardInterrupt
        print("\nstopping after this step (Ctrl-C again to abort)…", flush=True)
        control.request_stop()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def print_notes(event) -> None:
    if event.kind == "note":
        print(f"{event.run} note: {event.text}", flush=True)


def cmd_train(args) -> int:
    """Train in this process, or as one of the processes torchrun started (``torchrun --nproc_per_node N -m
    softlab.cli train …``: rank 0 prints and writes the run folder; a SIGINT to any worker stops every one at the
    same step with a checkpoint)."""
    from .. import distributed
    from .events import RunControl
    from .run import train

    config = config_from_args(args)
    control = RunControl()
    main = not distributed.launched_by_torchrun() or int(os.environ.get("RANK", 0)) == 0
    # the progress display prints notes; without it they still reach the terminal
    callbacks = [print_notes] if args.no_progress and main else []
    try:
        with stop_on_interrupt(control):
            result = train(config, control=control, resume=args.resume, overwrite=args.overwrite,
                           callbacks=callbacks)
    finally:
        distributed.shutdown()
    if not main:
        return 0
    final = result.final or {}
    if result.status == "stopped":
        print(f"stopped; resume with the same command plus --resume (checkpoint {result.checkpoint})")
        return 0
    top1, ece = final.get("top1"), final.get("ece")
    scores = f": test top-1 {top1:.4f}, ECE {ece:.4f}" if top1 is not None else ""
    print(f"{config.run_name} finished{scores} ({result.seconds:.1f} s); run folder {result.run_dir}")
    return 0


# ----- evaluate
def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="evaluate a run checkpoint or a teacher spec on a data set")
    p.add_argument("model", help="a run checkpoint (runs/<name>/checkpoints/last.pt) or a teacher spec")
    p.add_argument("--data", default="fashion-mnist:test")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--teacher", default=None, help="teacher spec to measure agreement with")
    p.add_argument("--device", default=None)
    p.add_argument("--json", action="store_true", help="print every metric as JSON")
    p.set_defaults(func=cmd_evaluate)


def looks_like_path(spec: str) -> bool:
    """A run folder or checkpoint rather than a teacher spec: it has a path separator or a .pt/.pth suffix and no
    ``scheme:`` prefix (``file:<path>@<arch>`` and ``ensemble:…`` are teacher specs)."""
    import os
    import re

    if re.match(r"[A-Za-z_][\w]+:", spec):
        return False
    return "/" in spec or os.sep in spec or spec.endswith((".pt", ".pth"))


def load_model(spec: str, device=None):
    """A run folder or checkpoint path → its student; anything else → a teacher spec."""
    from pathlib import Path

    path, is_path = Path(spec), looks_like_path(spec)
    if path.is_dir():
        last = path / "checkpoints" / "last.pt"
        if last.is_file():
            path, is_path = last, True
        elif (path / "config.json").is_file():
            raise FileNotFoundError(f"run {spec} has no checkpoint yet ({last} is missing): it is still in its "
                                    "first epoch or ended before writing one; train it (--resume to continue, "
                                    "--overwrite to start again), then evaluate it")
        elif is_path:
            raise FileNotFoundError(f"{spec} is a folder but not a run folder (it has no checkpoints/last.pt nor "
                                    "config.json): give a run folder, its checkpoints/last.pt, or a teacher spec")
    elif not path.exists() and is_path:
        kind = "checkpoint" if spec.endswith((".pt", ".pth")) else "run folder"
        raise FileNotFoundError(f"{kind} {spec} does not exist: give a run folder (e.g. runs/<name>), its "
                                "checkpoints/last.pt, or a teacher spec (`softlab teacher list`)")
    if path.is_file() and is_path:
        import torch

        from .students import load_student

        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # not a torch file, or one holding more than tensors and plain values
            data = None
        if isinstance(data, dict) and data.get("format") == "softlab-run":
            return load_student(path).to(device or "cpu"), str(path)
        raise ValueError(f"{spec} is not a softlab run checkpoint (runs/<name>/checkpoints/last.pt); a teacher's "
                         "weights file is evaluated through a teacher spec, file:<path>@<arch spec>")
    from ..teachers import create_teacher

    teacher = create_teacher(spec, device=device)
    return teacher, teacher.spec


def cmd_evaluate(args) -> int:
    from ..data import load_dataset
    from ..evaluate import evaluate

    model, name = load_model(args.model, args.device)
    reference = load_model(args.teacher, args.device)[0] if args.teacher else None
    dataset = load_dataset(args.data, limit=args.limit)
    result = evaluate(model, dataset, reference=reference, device=args.device, progress=True)
    if args.json:
        print(json.dumps({"model": name, "data": dataset.name, **result}, indent=2))
        return 0
    print(f"{name} on {dataset.name} ({result['count']} images)")
    print(f"top-1 {result['top1']:.4f}  top-5 {result['top5']:.4f}  NLL {result['nll']:.4f}  ECE {result['ece']:.4f}"
          + (f"  agreement {result['agreement']:.4f}" if "agreement" in result else ""))
    for cls, accuracy in result["per_class_accuracy"].items():
        print(f"  {cls:<14} {'–' if accuracy is None else f'{accuracy:.4f}'}")
    return 0


# ----- demo and compare
def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="the main job: teacher → region labels → FerKD calibration → hard/kd/fkd/ferkd "
                                    "students at the same budget → table, summary.json, report.html")
    p.add_argument("--mode", choices=("default", "small", "full"), default="default",
                   help="small: about 2 minutes (tests); default: about 10 minutes on 2 CPU cores; full: all data")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--recipes", default="hard,kd,fkd,ferkd", help="comma-separated recipes")
    p.add_argument("--fresh", action="store_true", help="retrain students even when finished runs match")
    p.set_defaults(func=cmd_demo)


def _add_compare(sub) -> None:
    p = sub.add_parser("compare", help="several recipes × several seeds at the demo budget: mean ± std, curves")
    p.add_argument("--recipes", default="hard,kd,fkd,ferkd")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--mode", choices=("default", "small", "full"), default="default", help="whose budget to use")
    p.add_argument("--epochs", type=int, default=None, help="override the budget's epochs")
    p.add_argument("--out", default="runs/compare")
    p.add_argument("--fresh", action="store_true")
    p.set_defaults(func=cmd_compare)


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(mode=args.mode, out=args.out, seed=args.seed, recipes=_names(args.recipes), fresh=args.fresh)
    return 0


def cmd_compare(args) -> int:
    from .demo import run_compare

    try:
        seeds = [int(s) for s in _names(args.seeds)]
    except ValueError:
        raise ValueError(f"--seeds takes comma-separated integers, got {args.seeds!r}") from None
    run_compare(recipes=_names(args.recipes), seeds=seeds, mode=args.mode, out=args.out, fresh=args.fresh,
                epochs=args.epochs)
    return 0
