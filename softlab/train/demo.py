"""``softlab demo`` and ``softlab compare``: the main job on Fashion-MNIST, every method at the same budget.

teacher (trained and cached on first use) → FKD region labels → FerKD calibration → students trained by each
recipe with the same student, seed, steps, images and crops per step → evaluation on the test split → a table,
``summary.json`` and ``report.html``. ``compare`` repeats the students over several seeds (mean ± std).
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np

from ..calibrate import Calibration, calibrate
from ..data import load_dataset
from ..data.crops import CropParams
from ..evaluate import EvalImages, classification_metrics, predict
from ..labels import generate_labels
from .config import TrainConfig
from .engine import RunResult
from .recipes import get_recipe, list_recipes
from .run import train

DEMO_RECIPES = ("hard", "kd", "fkd", "ferkd")
TEACHER = "fashion_mnist_cnn"
# FerKD thresholds for the Fashion-MNIST teacher's crops (scale 0.25–1), read off its y_s distribution on the
# demo's 8000 × 32 regions (seed 0; the paper's own values are not public):
# - T_L = 0.05: 2.2% of crops; the teacher's argmax is wrong on all of them, confidently (entropy 0.7 nats): it
#   sees another class (a shirt's sleeve as a pullover). Their soft labels teach the wrong class → discarded.
# - T_M = 0.3: the next 9.2%; argmax wrong on 99%, entropy 1.05 nats: uncertain, misleading soft labels → these
#   hard regions get the softened ground truth (1 − ε = 0.9).
# - T_T = 0.999: 17.3% of crops, entropy 0.003 nats (one-hot labels without dark knowledge), mostly Trouser (67%
#   of its crops), Sandal (45%) and Bag (38%) → trivially easy, discarded.
# Absolute rather than per-image quantile thresholds: easiness is a property of the crop and class, and quantiles
# would discard the same share of every image, informative Shirt crops included.
DEMO_CALIBRATION = {"t_low": 0.05, "t_mid": 0.3, "t_top": 0.999, "epsilon": 0.1, "mode": "absolute"}


@dataclass(frozen=True)
class DemoSettings:
    """The budget every method of a demo gets (same student, steps, images and crops per step, seed)."""

    mode: str
    train_images: int | None            # the first N training images (None: all 60,000)
    test_images: int | None             # the first N test images (None: all 10,000)
    stored_crops: int                   # regions labelled per training image
    num_crops: int                      # regions per image per step (FKD's multi-crop loading)
    batch_images: int
    epochs: int
    student: str = "resnet10t_narrow"
    student_kwargs: dict = field(default_factory=dict)
    optimizer: str = "sgd"
    lr: float = 0.2
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    label_type: str = "marginal_smoothing_k5"
    crop_scale: tuple = (0.25, 1.0)     # RandomResizedCrop area range of the regions (the teacher's)
    calibration: dict = field(default_factory=lambda: dict(DEMO_CALIBRATION))
    teacher_kwargs: dict = field(default_factory=dict)   # passed to the teacher factory (small mode: quick one)
    recipe_overrides: dict = field(default_factory=dict)  # recipe → TrainConfig fields (e.g. mixing, recipe_options)

    def to_dict(self) -> dict:
        return asdict(self)


_STUDENT = {"channels": [8, 16, 32, 64], "stem_width": 8}  # half the teacher's widths, a quarter of its weights
MODES = {
    "small": DemoSettings("small", train_images=600, test_images=2000, stored_crops=16, num_crops=4,
                          batch_images=50, epochs=3, student_kwargs=_STUDENT,
                          teacher_kwargs={"epochs": 1, "limit": 6000}),
    "default": DemoSettings("default", train_images=8000, test_images=None, stored_crops=32, num_crops=4,
                            batch_images=100, epochs=10, student_kwargs=_STUDENT),
    "full": DemoSettings("full", train_images=None, test_images=None, stored_crops=32, num_crops=4,
                         batch_images=256, epochs=10, student_kwargs=_STUDENT),
}


def settings_for(mode: str, **overrides) -> DemoSettings:
    if mode not in MODES:
        raise ValueError(f"demo mode must be one of {', '.join(MODES)}, not {mode!r}")
    known = {f.name for f in fields(DemoSettings)} - {"mode"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown demo setting(s) {', '.join(unknown)}; the settings: {', '.join(sorted(known))}")
    return replace(MODES[mode], **{k: v for k, v in overrides.items() if v is not None})


def check_recipes(recipes) -> list[str]:
    """The recipe names of a demo or comparison, checked before any work: each registered, none twice."""
    import difflib

    names = [part.strip() for part in recipes.split(",")] if isinstance(recipes, str) else list(recipes)
    names = [name for name in names if name]
    known = list_recipes()
    if not names:
        raise ValueError(f"give at least one recipe; known recipes: {', '.join(known)}")
    unknown = [name for name in names if name not in known]
    if unknown:
        close = [difflib.get_close_matches(name, known, n=1) for name in unknown]
        maybe = "; ".join(f"did you mean {c[0]!r} for {name!r}?" for name, c in zip(unknown, close) if c)
        raise ValueError(f"unknown recipe{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}"
                         f"{' (' + maybe + ')' if maybe else ''}; known recipes: {', '.join(known)}")
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ValueError(f"recipe{'s' if len(twice) > 1 else ''} {', '.join(map(repr, twice))} listed more than once")
    return names


def check_seeds(seeds) -> list[int]:
    seeds = list(seeds)
    if not seeds:
        raise ValueError("give at least one seed")
    if not all(isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) for seed in seeds):
        raise ValueError(f"seeds are integers, got {seeds}")
    if len(set(seeds)) < len(seeds):
        raise ValueError(f"seeds {seeds} repeat a seed: each seed's runs share one folder per recipe")
    return [int(seed) for seed in seeds]


# ----- the shared pipeline
@dataclass
class DemoContext:
    settings: DemoSettings
    out: Path
    teacher: object
    train: object
    test: EvalImages
    store: object
    view: object
    reference: object                  # the teacher's test predictions
    teacher_metrics: dict
    timings: dict
    progress: bool = True


def demo_teacher(settings: DemoSettings, progress: bool = True):
    """The in-project teacher (trained and cached on first use). Small mode takes the cached full teacher when
    there is one, else trains a quick one (its own cache folder) so that it finishes in about two minutes."""
    from ..teachers import create_teacher
    from ..teachers.fashion_mnist import default_checkpoint_path, softlab_home

    if not settings.teacher_kwargs or default_checkpoint_path().is_file():
        return create_teacher(TEACHER)
    quick = softlab_home() / "teachers" / f"quick-{_short_hash(settings.teacher_kwargs)}"
    return create_teacher(TEACHER, cache_dir=quick, progress=progress, **settings.teacher_kwargs)


def prepare(settings: DemoSettings, out, progress: bool = True) -> DemoContext:
    """Teacher, data, region labels, FerKD view and the teacher's own test metrics."""
    out, timings = Path(out), {}
    started = time.perf_counter()
    teacher = demo_teacher(settings, progress)
    timings["teacher"] = time.perf_counter() - started
    recorded = "not recorded" if teacher.accuracy is None else f"{teacher.accuracy:.4f}"
    _say(progress, f"teacher: {teacher.spec} (test top-1 recorded at training: {recorded})")
    train_set = load_dataset("fashion-mnist", limit=settings.train_images)
    test_set = load_dataset("fashion-mnist:test", limit=settings.test_images)
    started = time.perf_counter()
    scale = "-".join(f"{v:g}" for v in settings.crop_scale)
    folder = out / f"labels-{len(train_set)}x{settings.stored_crops}-s{scale}-{(teacher.weights_sha256() or 'x')[:8]}"
    store = generate_labels(train_set, teacher, folder, num_crops=settings.stored_crops,
                            label_type=settings.label_type, crop_params=CropParams(scale=tuple(settings.crop_scale)),
                            progress=progress)
    timings["labels"] = time.perf_counter() - started
    view = calibrate(store, Calibration.from_dict(settings.calibration))
    started = time.perf_counter()
    test = EvalImages.for_classifier(test_set, teacher)
    logits = predict(teacher, test)
    teacher_metrics = classification_metrics(logits, test.targets, class_names=test.class_names)
    timings["teacher_eval"] = time.perf_counter() - started
    return DemoContext(settings, out, teacher, train_set, test, store, view, logits.argmax(-1), teacher_metrics,
                       timings, progress)


def run_config(ctx: DemoContext, recipe: str, seed: int, name: str) -> TrainConfig:
    s = ctx.settings
    return TrainConfig(
        recipe=recipe, name=name, out=str(ctx.out), data="fashion-mnist", data_limit=s.train_images,
        eval_data="fashion-mnist:test", eval_limit=s.test_images,
        store=str(ctx.store.path) if get_recipe(recipe).crops == "stored" else None,
        calibration=s.calibration if recipe == "ferkd" else None,
        teacher=TEACHER if get_recipe(recipe).needs_teacher else None,
        student=s.student, student_kwargs=dict(s.student_kwargs), input_size=ctx.teacher.input_size[1],
        epochs=s.epochs, batch_images=s.batch_images, num_crops=s.num_crops,
        crop={k: v for k, v in ctx.store.manifest["crops"].items() if k in ("scale", "ratio", "flip_p",
                                                                             "interpolation")},
        optimizer=s.optimizer, lr=s.lr, weight_decay=s.weight_decay, warmup_epochs=s.warmup_epochs, seed=seed,
        progress=ctx.progress).replace(**s.recipe_overrides.get(recipe, {}))


def train_method(ctx: DemoContext, recipe: str, seed: int = 0, name: str | None = None, fresh: bool = False) -> dict:
    """Train one student (or pick up a finished/interrupted run with the same config) → its result row."""
    config = run_config(ctx, recipe, seed, name or recipe)
    resume = not fresh and _same_config(ctx.out / config.run_name, config)
    labels = calibrate(ctx.store, Calibration.from_dict(config.calibration)) if config.calibration else ctx.store
    result = train(config, dataset=ctx.train, store=labels if config.store else None,
                   teacher=ctx.teacher if config.teacher else None, eval_data=ctx.test, reference=ctx.reference,
                   resume=resume, overwrite=not resume)
    return result_row(ctx, recipe, result)


def _same_config(run_dir: Path, config: TrainConfig) -> bool:
    path = run_dir / "config.json"
    if not path.is_file():
        return False
    stored = TrainConfig.from_dict(json.loads(path.read_text())["config"])
    return not stored.differences(config)


def result_row(ctx: DemoContext, recipe: str, result: RunResult) -> dict:
    final = result.final or {}
    train_seconds = sum(m["seconds"] for m in result.history)
    crops = result.history[-1]["crops_seen"] if result.history else 0
    stored = get_recipe(recipe).crops == "stored"
    return {"recipe": recipe, "run_dir": result.run_dir, "status": result.status,
            "test_top1": final.get("top1"), "test_top5": final.get("top5"), "test_nll": final.get("nll"),
            "test_ece": final.get("ece"), "teacher_agreement": final.get("agreement"),
            "wall_seconds": round(result.seconds, 2), "train_seconds": round(train_seconds, 2),
            "images_per_s": round(crops / train_seconds, 1) if train_seconds else None, "crops_seen": crops,
            "teacher_forwards": store_forwards(ctx.store) if stored else result.teacher_forwards,
            "teacher_forwards_when": "once, at label generation (shared)" if stored else
            ("every step" if result.teacher_forwards else "none"),
            "reliability": final.get("reliability"), "per_class_accuracy": final.get("per_class_accuracy"),
            "history": result.history}


def store_forwards(store) -> int:
    return int(store.num_images * store.num_crops)


# ----- demo
def run_demo(mode: str = "default", out="runs/demo", seed: int = 0, recipes=DEMO_RECIPES, fresh: bool = False,
             progress: bool = True, **overrides) -> dict:
    """The main job; returns the summary also written to ``<out>/summary.json`` (and ``<out>/report.html``)."""
    started = time.perf_counter()
    recipes = check_recipes(recipes)  # before any work: a typo must not cost the teacher and the labels
    settings = settings_for(mode, **overrides)
    _say(progress, f"softlab demo ({mode} mode): {', '.join(recipes)} at the same budget, seed {seed}")
    ctx = prepare(settings, out, progress)
    stats = ctx.view.stats()
    if progress:
        from .report import print_calibration

        print_calibration(stats)
    rows = {}
    for recipe in recipes:
        t0 = time.perf_counter()
        rows[recipe] = train_method(ctx, recipe, seed, fresh=fresh)
        ctx.timings[f"student_{recipe}"] = time.perf_counter() - t0
    ctx.timings["total"] = time.perf_counter() - started
    summary = demo_summary(ctx, rows, stats, seed)
    return finish(summary, Path(out), progress, kind="demo")


def demo_summary(ctx: DemoContext, rows: dict, stats: dict, seed: int) -> dict:
    teacher = {"spec": ctx.teacher.spec, **{k: ctx.teacher_metrics[k] for k in ("top1", "top5", "nll", "ece")},
               "reliability": ctx.teacher_metrics["reliability"]}
    return {"kind": "demo", "mode": ctx.settings.mode, "seed": seed, "settings": ctx.settings.to_dict(),
            "budget": budget(ctx), "teacher": teacher, "store": {"path": str(ctx.store.path),
                                                                 "images": ctx.store.num_images,
                                                                 "crops_per_image": ctx.store.num_crops,
                                                                 "teacher_forwards": store_forwards(ctx.store)},
            "calibration": {"settings": stats["calibration"], "fractions": stats["fractions"],
                            "kept_fraction": stats["kept_fraction"],
                            "images_without_kept_crops": stats["images_without_kept_crops"]},
            "test_images": len(ctx.test), "methods": rows,
            "timings": {k: round(v, 2) for k, v in ctx.timings.items()}}


def budget(ctx: DemoContext) -> dict:
    s = ctx.settings
    steps = -(-len(ctx.train) // s.batch_images) * s.epochs
    return {"train_images": len(ctx.train), "epochs": s.epochs, "steps": steps, "images_per_step": s.batch_images,
            "crops_per_image_per_step": s.num_crops, "crops_seen": len(ctx.train) * s.num_crops * s.epochs,
            "student": s.student, "student_kwargs": s.student_kwargs}


def finish(summary: dict, out: Path, progress: bool, kind: str) -> dict:
    from .report import print_table, write_run_report

    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    report = write_run_report(out / "report.html", summary)
    summary["files"] = {"summary": str(out / "summary.json"), "report": str(report)}
    if progress:
        print_table(summary)
        print(f"summary: {out / 'summary.json'}\nreport:  {report}")
    return summary


# ----- compare
def run_compare(recipes=DEMO_RECIPES, seeds=(0, 1, 2), mode: str = "default", out="runs/compare",
                fresh: bool = False, progress: bool = True, **overrides) -> dict:
    """Each recipe × each seed at the demo budget of ``mode``; mean ± std of the final metrics and per epoch."""
    started = time.perf_counter()
    recipes, seeds = check_recipes(recipes), check_seeds(seeds)  # before any work
    settings = settings_for(mode, **overrides)
    _say(progress, f"softlab compare ({mode} budget): {', '.join(recipes)} × seeds {', '.join(map(str, seeds))}")
    ctx = prepare(settings, out, progress)
    runs = {recipe: [] for recipe in recipes}
    for seed in seeds:
        for recipe in recipes:
            runs[recipe].append(train_method(ctx, recipe, seed, name=f"{recipe}-seed{seed}", fresh=fresh))
    ctx.timings["total"] = time.perf_counter() - started
    summary = compare_summary(ctx, runs, list(seeds))
    return finish(summary, Path(out), progress, kind="compare")


def mean_std(values) -> dict:
    values = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if not values.size:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if values.size > 1 else 0.0,
            "n": int(values.size)}


def mean_history(rows: list[dict]) -> list[dict]:
    """Per-epoch mean (and std) of every numeric metric over runs."""
    epochs = min(len(r["history"]) for r in rows)
    out = []
    for e in range(epochs):
        records = [r["history"][e] for r in rows]
        line = {"epoch": records[0]["epoch"]}
        for key in records[0]:
            if key != "epoch" and isinstance(records[0][key], (int, float)):
                stats = mean_std([rec.get(key) for rec in records])
                line[key], line[f"{key}_std"] = stats["mean"], stats["std"]
        out.append(line)
    return out


def compare_summary(ctx: DemoContext, runs: dict, seeds: list) -> dict:
    keys = ("test_top1", "test_ece", "test_nll", "teacher_agreement", "wall_seconds", "images_per_s")
    methods = {}
    for recipe, rows in runs.items():
        methods[recipe] = {key: mean_std([r[key] for r in rows]) for key in keys}
        methods[recipe]["teacher_forwards"] = rows[0]["teacher_forwards"]
        methods[recipe]["per_seed_top1"] = [r["test_top1"] for r in rows]
        methods[recipe]["history"] = mean_history(rows)
        methods[recipe]["reliability"] = rows[0]["reliability"]
    teacher = {"spec": ctx.teacher.spec, **{k: ctx.teacher_metrics[k] for k in ("top1", "top5", "nll", "ece")}}
    return {"kind": "compare", "mode": ctx.settings.mode, "seeds": seeds, "settings": ctx.settings.to_dict(),
            "budget": budget(ctx), "teacher": teacher, "test_images": len(ctx.test), "methods": methods,
            "runs": {recipe: [{k: v for k, v in r.items() if k not in ("history", "reliability", "per_class_accuracy")}
                              for r in rows] for recipe, rows in runs.items()},
            "timings": {k: round(v, 2) for k, v in ctx.timings.items()}}


def _short_hash(data) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:8]


def _say(progress: bool, text: str) -> None:
    if progress:
        print(text, flush=True)
