"""The training engine: one run of a recipe, with events, stop/pause, per-epoch metrics and exact resume.

A run lives in ``<out>/<name>/``::

    config.json          the TrainConfig plus what was resolved from it (sizes, normalisation, store, teacher)
    metrics.jsonl        one JSON line per finished epoch
    eval.json            the final evaluation (top-1/5, NLL, ECE with reliability bins, per-class, agreement)
    checkpoints/last.pt  model, optimizer, scheduler, RNG states, recipe state, position (epoch, step)

Batches and mixing draws are functions of (seed, epoch, step), and the checkpoint carries every other state,
so a run stopped between two steps and resumed computes the same metrics as an uninterrupted one (on the CPU).

A non-finite loss, gradient or weight stops the run with :class:`TrainingDivergedError` at that step; a checkpoint
is never written with non-finite weights, so the last good one stays in place.

Under ``torchrun`` (``torchrun --nproc_per_node N -m softlab.cli train …``) each process trains on its block of
every step's images (the same seeded epoch order everywhere, so the global batch and the steps per epoch are the
config's), the student is wrapped in ``DistributedDataParallel`` and each process's loss is weighted by its share,
so the averaged gradient is the single-process batch mean. Metrics are summed over processes; evaluation, the
run folder, checkpoints and metrics are rank 0's. Recipes that keep per-image state (pskd) are refused.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import __version__, distributed
from ..evaluate import EvalImages, classification_metrics, predict
from . import build, checkpoint
from .config import TrainConfig
from .events import Broadcaster, EndEvent, EpochEvent, ErrorEvent, NoteEvent, RunControl, StartEvent, StepEvent
from .progress import TqdmProgress
from .recipes import StepContext, create_recipe, get_recipe

TIMING_KEYS = ("seconds", "eval_seconds", "elapsed", "images_per_s")


class TrainingDivergedError(RuntimeError, FloatingPointError):
    """Training produced a non-finite loss, gradient or weight; nothing non-finite was written to a checkpoint.

    ``epoch`` and ``step`` are 1-based (the step within the epoch), ``lr`` the learning rate of that step and
    ``checkpoint`` the last good checkpoint of the run (None when there is none)."""

    def __init__(self, message: str, *, epoch: int, step: int, lr: float, checkpoint: str | None):
        super().__init__(message)
        self.epoch, self.step, self.lr, self.checkpoint = epoch, step, lr, checkpoint


@dataclass
class RunResult:
    name: str
    run_dir: str
    status: str                       # finished | stopped
    history: list[dict]               # metrics.jsonl lines
    final: dict | None                # eval.json (None when stopped early)
    checkpoint: str | None
    seconds: float                    # training + evaluation wall time, summed over resumes of the run
    teacher_forwards: int
    extra: dict = field(default_factory=dict)


@dataclass
class _EpochStats:
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"loss_sum": self.loss_sum, "correct": self.correct, "seen": self.seen, "seconds": self.seconds}


class Trainer:
    """Train one student by one recipe. Objects (dataset, store or calibrated view, teacher, student module,
    evaluation data, reference predictions for agreement) may be passed instead of being built from the config.
    ``callbacks`` receive every event; with ``config.progress`` a tqdm renderer is added."""

    def __init__(self, config: TrainConfig, *, dataset=None, store=None, teacher=None, student=None,
                 eval_data=None, reference=None, callbacks=(), control: RunControl | None = None,
                 resume: bool = False, overwrite: bool = False):
        self.config = config
        self.objects = {"dataset": dataset, "store": store, "teacher": teacher, "student": student,
                        "eval_data": eval_data, "reference": reference}
        self.control = control or RunControl()
        shown = config.progress and _launch_rank() == 0  # under torchrun, one progress bar: rank 0's
        self.emit = Broadcaster([*callbacks, TqdmProgress() if shown else None])
        self.resume, self.overwrite = resume, overwrite
        self.run_dir = Path(config.out) / config.run_name
        self.notes: list[dict] = []
        self.good_checkpoint: tuple[str, int, int] | None = None  # (path, epochs done, steps into the next)
        self.dist = distributed.Context()  # rank 0 of 1 until _prepare joins a torchrun process group

    # ----- public
    def run(self) -> RunResult:
        try:
            self._prepare()
            return self._train()
        except BaseException as error:
            self.emit(ErrorEvent(run=self.config.run_name, error=f"{type(error).__name__}: {error}",
                                 traceback=traceback.format_exc()))
            raise

    # ----- setup
    def _prepare(self) -> None:
        config, objects = self.config, self.objects
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        self.device = build.resolve_device(config)
        self.dist = self._join_process_group()
        recipe = get_recipe(config.recipe)
        with distributed.main_first():  # under torchrun rank 0 fetches data and teacher weights first (caches)
            self.dataset = build.training_data(config, objects["dataset"])
            self.store, labels = build.open_labels(config, self.dataset, objects["store"])
            build.check_store_classes(self.store, self.dataset)
            self.teacher = self._teacher(recipe)
        build.check_teacher_classes(self.teacher, self.dataset, self.device)
        channels, self.size = build.input_geometry(config, self.dataset, self.store, self.teacher)
        mean, std = (config.mean, config.std) if config.mean and config.std else build.image_stats(self.dataset)
        num_classes = self.dataset.num_classes
        self.student = build.build_student(config, num_classes, channels, self.size, mean, std, objects["student"])
        self.student.to(self.device)
        if self.device.type == "cuda" and config.channels_last:
            self.student.to(memory_format=torch.channels_last)
        if objects["student"] is not None:  # a given module: its head may not fit the data
            build.check_student_classes(self.student, self.dataset, self.device)
        trained = self._wrap_distributed() if self.dist.distributed else self.student
        trained = torch.compile(trained) if config.compile else trained
        self.distiller = create_recipe(config.recipe, trained, self.teacher, num_classes=num_classes,
                                       mixing=config.mixing, label_temperature=config.label_temperature,
                                       num_images=len(self.dataset), targets=self.dataset.targets,
                                       **config.recipe_options)
        source = build.crop_source(config, labels, self.store)
        self.loader = build.build_loader(config, self.dataset, source, self.size, self.device)
        self.optimizer = build.build_optimizer(config, self.student)
        self.schedule = build.build_schedule(config, self.optimizer, self.loader.steps_per_epoch)
        with distributed.main_first():
            self.eval_images = self._eval_images()
        build.check_eval_classes(self.eval_images, self.dataset)
        self.reference = self._reference() if self.dist.is_main else None  # evaluation is rank 0's
        self.crop_counts = build.kept_crop_counts(self.loader.source)
        self.notes = self._notes()
        if self.dist.distributed:
            self._check_distributed()
            self.notes += self._distributed_notes()
        self.resolved = self._describe()

    # ----- torchrun
    def _join_process_group(self) -> distributed.Context:
        """Join torchrun's process group (gloo on the CPU, NCCL on CUDA, each process on the GPU of its
        ``LOCAL_RANK``); rank 0 of 1 without torchrun."""
        if not distributed.launched_by_torchrun():
            return distributed.context()
        if self.device.type == "cuda":
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return distributed.init(self.device)

    def _wrap_distributed(self) -> torch.nn.Module:
        """The student in DistributedDataParallel (on CUDA with synchronised batch norm, so normalisation sees the
        whole step's batch as in one process)."""
        from torch.nn.parallel import DistributedDataParallel

        if self.device.type == "cuda":
            self.student = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.student)
            return DistributedDataParallel(self.student, device_ids=[self.device.index],
                                           output_device=self.device.index)
        return DistributedDataParallel(self.student)

    def _check_distributed(self) -> None:
        """What torchrun cannot train as one process would: per-image recipe state, and steps with fewer images
        than processes."""
        world, loader = self.dist.world_size, self.loader
        kept = set(self.distiller.extra_state()) - {"teacher_forwards"}
        if kept:
            raise ValueError(f"recipe {self.config.recipe!r} keeps per-image state ({', '.join(sorted(kept))}) that "
                             "each process would update only for its own images: it is not supported under "
                             "torchrun; train it in one process (without torchrun)")
        fewest = min(loader.step_images(0), loader.step_images(loader.steps_per_epoch - 1))
        if fewest < world:
            raise ValueError(f"a step of {fewest} images cannot be shared by {world} processes: --batch-images "
                             f"({self.config.batch_images}) and the last step of an epoch ({len(self.dataset)} images"
                             f") must have at least one image per process")

    def _distributed_notes(self) -> list[dict]:
        """How a torchrun run differs from one process (shown at the start and kept in config.json)."""
        notes, world = [], self.dist.world_size
        has_batch_norm = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in self.student.modules())
        if has_batch_norm and self.device.type != "cuda":
            notes.append({"topic": "distributed_batch_norm", "text":
                          f"on the CPU each of the {world} processes normalises batch-norm layers over its own share "
                          "of a step (synchronised batch norm needs CUDA), so training differs slightly from one "
                          "process; the running statistics saved are rank 0's"})
        if self.distiller.mixing.active and self.distiller.mixing.mode == "cross":
            notes.append({"topic": "distributed_cross_mixing", "text":
                          "cross-image mixing pairs each sample with the mirrored sample of its own process's share "
                          "(one process pairs across the whole step's batch); the mixing draws are the same"})
        return notes

    def _open_run_dir_distributed(self) -> dict | None:
        """Rank 0 creates or reopens the run folder; the other ranks wait for it, then read the checkpoint it
        resumes from (or fail with rank 0's error), so no rank ever sees a half-made folder."""
        outcome, failure = None, None
        if self.dist.is_main:
            try:
                state = self._open_run_dir()
                outcome = ("ok", state is not None)
            except Exception as error:  # the other ranks are told, then rank 0 raises it
                failure, outcome = error, ("error", f"{type(error).__name__}: {error}")
        box = [outcome]
        torch.distributed.broadcast_object_list(box, src=0)
        if failure is not None:
            raise failure
        if self.dist.is_main:
            return state
        kind, value = box[0]
        if kind == "error":
            raise RuntimeError(f"rank 0 could not open the run folder {self.run_dir}: {value}")
        return checkpoint.load(self.run_dir / "checkpoints" / "last.pt", map_location="cpu") if value else None

    def _describe(self) -> dict:
        """What the config resolved to (written beside it in config.json)."""
        return {"device": self.device.type, "input_size": list(self.student.input_size),
                "mean": list(self.student.mean), "std": list(self.student.std), "num_classes": self.student.num_classes,
                "train_images": len(self.dataset), "train_data": self.dataset.name,
                "steps_per_epoch": self.loader.steps_per_epoch, "crops_per_step": self.loader.crops_per_step,
                "eligible_images": int(len(self.loader.eligible)),
                "store": str(self.store.path) if self.store is not None else None,
                "teacher": getattr(self.teacher, "spec", None), "student": self.student.describe(),
                "mixing": self.distiller.mixing.to_dict(), "recipe_options": self.distiller.options,
                "eval_images": len(self.eval_images) if self.eval_images is not None else 0,
                **self.crop_counts, "notes": [note["text"] for note in self.notes]}

    def _notes(self) -> list[dict]:
        """What the user should know about how crops are drawn: images skipped when the labels were generated
        (undecodable, so without labels) and images a calibration leaves without a kept crop (both never trained
        on), and images with fewer kept crops than ``num_crops`` (drawn with replacement)."""
        counts, loader, notes = self.crop_counts, self.loader, []
        if not counts:
            return notes
        calibration = self.config.calibration
        by = ("the FerKD calibration (" + ", ".join(f"{k}={v}" for k, v in calibration.items()) + ")"
              if calibration else "the label store's kept-crop mask")
        total, without = loader.num_images, counts["images_without_kept_crops"]
        skipped = counts.get("skipped_images", 0)
        trained = total - without - skipped
        visits = (f"each epoch visits the other {trained} images once and {total - trained} more drawn at random "
                  "among them (with replacement), so every epoch still takes "
                  f"{loader.steps_per_epoch} steps over {total} image visits")
        if skipped:
            manifest = Path(loader.source.store.path) / "manifest.json"
            notes.append({"topic": "skipped_images", "text":
                          f"{skipped} of {total} training images {'was' if skipped == 1 else 'were'} skipped when "
                          f"the labels were generated (undecodable; listed under \"skipped\" in {manifest}): "
                          f"{'it has no labels and is' if skipped == 1 else 'they have no labels and are'} never "
                          "trained on" + ("" if without else f"; {visits}")})
        if without:
            notes.append({"topic": "images_without_kept_crops", "text":
                          f"{without} of {total} training images {'has' if without == 1 else 'have'} no crop kept by "
                          f"{by}: {'it is' if without == 1 else 'they are'} never trained on; {visits}"})
        few = counts["images_with_crops_drawn_with_replacement"]
        if few:
            mask, num_crops = loader.source.kept, loader.source.num_crops
            per_image = mask.sum(axis=1)
            per_image = per_image[(per_image > 0) & (per_image < num_crops)]
            low, high = int(per_image.min()), int(per_image.max())
            listed = getattr(loader.source, "skipped", None)  # skipped images have no crop, stored or kept
            labelled = mask if listed is None else mask[~listed]
            kept = "kept" if calibration or not labelled.all() else "stored"
            span = f"{low}" if low == high else f"{low} to {high}"
            notes.append({"topic": "images_with_crops_drawn_with_replacement", "text":
                          f"--num-crops {self.config.num_crops} is more than the {kept} crops of {few} of "
                          f"{trained} trained images (they have {span}): for those images the "
                          f"{self.config.num_crops} crops of a step are drawn with replacement among their {kept} "
                          "crops, so some crops repeat within a step"
                          + (" (the other images' are drawn without replacement)" if few < trained else "")})
        return notes

    def _teacher(self, recipe):
        teacher = self.objects["teacher"]
        if recipe.needs_teacher and teacher is None:
            if not self.config.teacher:
                raise ValueError(f"recipe {self.config.recipe!r} runs a teacher at every step: give one (--teacher)")
            from ..teachers import create_teacher

            teacher = create_teacher(self.config.teacher)
        if teacher is not None and recipe.needs_teacher:
            teacher = teacher.to(self.device).eval()
            if self.device.type == "cuda" and self.config.channels_last:
                teacher = teacher.to(memory_format=torch.channels_last)
        return teacher if recipe.needs_teacher else None

    def _eval_images(self):
        data = self.objects["eval_data"]
        if data is None and self.config.eval_data:
            from ..data import load_dataset

            data = load_dataset(self.config.eval_data, limit=self.config.eval_limit)
        self.eval_dataset = data
        if data is None or isinstance(data, EvalImages):
            return data
        return EvalImages(data, (self.size, self.size))

    def _reference(self):
        """Reference predictions on the evaluation images (for agreement): given, or the teacher's."""
        reference = self.objects["reference"]
        if reference is None and self.teacher is not None and self.eval_images is not None:
            reference = self.teacher
        if reference is None or not hasattr(reference, "forward"):
            return reference
        size = tuple(reference.input_size[1:])
        images = self.eval_images
        if size != (self.size, self.size):
            if isinstance(self.eval_dataset, EvalImages):
                raise ValueError("give the evaluation data set (not EvalImages) when the reference classifier "
                                 "takes another input size than the student")
            images = EvalImages(self.eval_dataset, size, getattr(reference, "interpolation", "bicubic"))
        return predict(reference, images, device=self.device).argmax(-1)

    # ----- run folder
    def _open_run_dir(self) -> dict | None:
        """Create the run folder (or reopen it to resume); returns the checkpoint to resume from, if any."""
        last = self.run_dir / "checkpoints" / "last.pt"
        config_path = self.run_dir / "config.json"
        if config_path.exists() and not self.overwrite:
            if not self.resume:
                if not last.exists():
                    raise FileExistsError(f"run {self.run_dir} exists but has no checkpoint (an earlier attempt "
                                          "ended before writing one): start it again with --overwrite / "
                                          "overwrite=True, or with --resume / resume=True if the settings are the "
                                          "same, or choose another --name")
                raise FileExistsError(f"run {self.run_dir} exists: resume it (--resume / resume=True), choose another "
                                      "--name, or overwrite it (--overwrite / overwrite=True)")
            stored = self._stored_config(config_path, last)
            changed = stored.differences(self.config) if stored is not None else []
            if changed:
                raise ValueError(f"cannot resume {self.run_dir}: the config differs in {', '.join(changed)} (a run "
                                 "resumes with the settings it started with); to train with the new settings, "
                                 "overwrite it (--overwrite / overwrite=True) or choose another --name")
            if last.exists():
                return checkpoint.load(last, map_location="cpu")  # RNG states must stay on the CPU
        if self.overwrite and self.run_dir.exists():
            import shutil

            shutil.rmtree(self.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        checkpoint.write_text_atomic(self.run_dir / "metrics.jsonl", "")
        checkpoint.write_text_atomic(config_path, json.dumps({
            "config": self.config.to_dict(), "resolved": self.resolved, "softlab_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=2) + "\n")
        return None

    def _stored_config(self, config_path: Path, last: Path) -> TrainConfig | None:
        """The config a run started with; None when config.json is unreadable and nothing was trained yet (the
        run then starts afresh)."""
        try:
            return TrainConfig.from_dict(json.loads(config_path.read_text())["config"])
        except (ValueError, KeyError, TypeError) as error:
            if not last.exists():
                return None
            raise ValueError(f"cannot resume {self.run_dir}: {config_path.name} is unreadable ({error}); the "
                             "checkpoint's own copy of the settings is in checkpoints/last.pt — restore "
                             "config.json from a copy, or start again with --overwrite") from None

    def _restore(self, state: dict) -> tuple[int, int, _EpochStats, list[dict]]:
        self.student.load_state_dict(state["student"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["scheduler"])
        self.distiller.load_extra_state(state["recipe"])
        ranks = state.get("rng_ranks")  # a torchrun run's checkpoint: every process's RNG states
        if self.dist.distributed and ranks is not None and len(ranks) == self.dist.world_size:
            checkpoint.set_rng_state(ranks[self.dist.rank])
        else:
            checkpoint.set_rng_state(state["rng"])
        self.elapsed = float(state["elapsed"])
        # The history is the metrics lines of the epochs the checkpoint has done. Lines of later epochs (written
        # before a kill stopped their checkpoint) and unreadable lines (a torn last line left by an older,
        # non-atomic writer) are dropped; a line missing for a finished epoch cannot be recomputed, so it is
        # reported and the run goes on from its checkpoint.
        done = int(state["epoch"])
        path = self.run_dir / "metrics.jsonl"
        by_epoch = {}
        for line in (path.read_text().splitlines() if path.is_file() else []):
            try:
                metrics = json.loads(line)
                epoch = int(metrics["epoch"])
            except (ValueError, TypeError, KeyError, IndexError):
                continue
            if 1 <= epoch <= done:
                by_epoch[epoch] = metrics
        missing = [epoch for epoch in range(1, done + 1) if epoch not in by_epoch]
        if missing:
            import warnings

            warnings.warn(f"{path} has no readable line for epoch(s) {', '.join(map(str, missing))}; resuming from "
                          f"the checkpoint after epoch {done} with those lines missing from the history",
                          RuntimeWarning, stacklevel=2)
        history = [by_epoch[epoch] for epoch in sorted(by_epoch)]
        self._write_history(history)
        return done, int(state["step"]), _EpochStats(**state["epoch_stats"]), history

    def _write_history(self, history: list[dict]) -> None:
        """Rewrite metrics.jsonl atomically: a process killed at any moment leaves the old history or the new one."""
        if not self.dist.is_main:
            return
        checkpoint.write_text_atomic(self.run_dir / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in history))

    def _save(self, epoch: int, step: int, stats: _EpochStats) -> str:
        """Checkpoint at a position: ``epoch`` epochs done and ``step`` steps of the next one. Refuses (raising
        :class:`TrainingDivergedError`) to write non-finite weights, so the last good checkpoint stays."""
        bad = [name for name, value in self.student.state_dict().items()
               if value.is_floating_point() and not bool(torch.isfinite(value).all())]
        ranks = None
        if self.dist.distributed:  # every process's RNG states (and any non-finite value) come to every rank
            gathered = [None] * self.dist.world_size
            torch.distributed.all_gather_object(gathered, (checkpoint.rng_state(), bad))
            ranks = [rng for rng, _ in gathered]
            bad = list(dict.fromkeys(name for _, names in gathered for name in names))
        if bad:
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            position = f"after epoch {epoch}" + (f", step {step}" if step else "")
            raise self._diverged(epoch - 1 if step == 0 else epoch, (step or self.loader.steps_per_epoch) - 1,
                                 f"the student's {bad[0]}{more} is not finite, so the checkpoint {position} is not "
                                 "written")
        payload = {"epoch": epoch, "step": step, "student": self.student.state_dict(),
                   "student_info": self.student.describe(), "optimizer": self.optimizer.state_dict(),
                   "scheduler": self.schedule.state_dict(), "recipe": self.distiller.extra_state(),
                   "rng": checkpoint.rng_state(), "epoch_stats": stats.to_dict(), "elapsed": self.elapsed,
                   "config": self.config.to_dict()}
        if ranks is not None:
            payload.update(rng=ranks[0], rng_ranks=ranks, world_size=self.dist.world_size)
        if not self.dist.is_main:  # rank 0 writes; the others know where
            path = self.run_dir / "checkpoints" / "last.pt"
            self.good_checkpoint = (str(path), epoch, step)
            return str(path)
        path = checkpoint.save(self.run_dir / "checkpoints" / "last.pt", **payload)
        if self.config.keep_epoch_checkpoints and step == 0:
            checkpoint.save(self.run_dir / "checkpoints" / f"epoch_{epoch:03d}.pt", **payload)
        self.good_checkpoint = (str(path), epoch, step)
        return str(path)

    def _diverged(self, epoch: int, step: int, what: str) -> TrainingDivergedError:
        """The error for a non-finite loss, gradient or weight at ``step`` of ``epoch`` (0-based): where, the
        learning rate, what to change and what became of the run's checkpoint."""
        config, steps = self.config, self.loader.steps_per_epoch
        lr = self.optimizer.param_groups[0]["lr"]
        hint = f"lower the learning rate (--lr {config.lr:g}; {lr:.3g} at this step)"
        if config.warmup_epochs < config.epochs:
            hint += f" or warm it up over more epochs (--warmup-epochs, now {config.warmup_epochs:g})"
        if self.good_checkpoint is not None:
            path, done, within = self.good_checkpoint
            position = f"epoch {done}" + (f", step {within}" if within else "")
            kept = (f"The last good checkpoint, after {position}, is kept ({path}); --resume continues from it but "
                    "keeps the run's settings, so to change them rerun with --overwrite or another --name.")
        else:
            kept = ("No checkpoint was written: rerun with --overwrite (or another --name); --resume with the same "
                    "settings starts over.")
        return TrainingDivergedError(
            f"training diverged at epoch {epoch + 1}, step {step + 1} of {steps}"
            + (f" (step {epoch * steps + step + 1} of {config.epochs * steps} overall)" if config.epochs > 1 else "")
            + f": {what}. To fix it, {hint}. {kept}",
            epoch=epoch + 1, step=step + 1, lr=lr,
            checkpoint=self.good_checkpoint[0] if self.good_checkpoint else None)

    # ----- the loop
    def _train(self) -> RunResult:
        config, loader = self.config, self.loader
        checkpoint.seed_everything(config.seed)
        self.elapsed = 0.0
        self.good_checkpoint = None
        state = self._open_run_dir_distributed() if self.dist.distributed else self._open_run_dir()
        self._stop_agreed = False
        epoch, step, stats, history = (0, 0, _EpochStats(), []) if state is None else self._restore(state)
        if state is not None:
            self.good_checkpoint = (str(self.run_dir / "checkpoints" / "last.pt"), epoch, step)
        steps_per_epoch, total = loader.steps_per_epoch, config.epochs * loader.steps_per_epoch
        name = config.run_name
        self.emit(StartEvent(run=name, recipe=config.recipe, epochs=config.epochs, steps_per_epoch=steps_per_epoch,
                             total_steps=total, start_step=epoch * steps_per_epoch + step, run_dir=str(self.run_dir)))
        for note in self.notes:
            self.emit(NoteEvent(run=name, text=note["text"], topic=note["topic"]))
        self.distiller.train()
        last_checkpoint = None
        while epoch < config.epochs:
            order = loader.epoch_order(epoch)
            while step < steps_per_epoch:
                self.control.wait_while_paused()
                if (self._stop_agreed if self.dist.distributed else self.control.stop_requested):
                    return self._stopped(epoch, step, stats, history)
                self._step(epoch, step, order, stats)
                step += 1
            metrics = self._end_epoch(epoch, stats)
            history.append(metrics)
            self._write_history(history)
            epoch, step, stats = epoch + 1, 0, _EpochStats()
            if epoch % config.checkpoint_every == 0 or epoch == config.epochs:
                last_checkpoint = self._save(epoch, 0, stats)
            self.emit(EpochEvent(run=name, epoch=epoch, epochs=config.epochs, metrics=metrics))
        final = self._final_eval()
        self.emit(EndEvent(run=name, status="finished", epoch=epoch, step=epoch * steps_per_epoch,
                           seconds=round(self.elapsed, 3), checkpoint=last_checkpoint,
                           metrics=history[-1] if history else {}))
        return RunResult(name, str(self.run_dir), "finished", history, final, last_checkpoint, self.elapsed,
                         self.distiller.teacher_forwards, {"notes": [note["text"] for note in self.notes]})

    def _autocast(self):
        if self.device.type == "cuda" and self.config.amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _step(self, epoch: int, step: int, order, stats: _EpochStats) -> None:
        started = time.perf_counter()
        config = self.config
        if self.dist.distributed:
            return self._step_distributed(epoch, step, order, stats, started)
        batch = self.loader.batch(epoch, step, order)
        if self.device.type == "cuda" and config.channels_last:
            batch.images = batch.images.contiguous(memory_format=torch.channels_last)
        ctx = StepContext(epoch=epoch, epochs=config.epochs, step=epoch * self.loader.steps_per_epoch + step,
                          rng=build.step_rng(config.seed, epoch, step))
        with self._autocast():
            logits, parts = self.distiller.forward_train(batch, ctx)
        loss = sum(parts.values())
        if not torch.isfinite(loss):
            raise self._diverged(epoch, step, f"the loss is {loss.item()}")
        lr = self._update(loss, epoch, step, loss.item())
        count = len(batch)
        correct = int((logits.detach().argmax(-1) == batch.targets).sum())
        mean_loss = float(loss.detach())
        self._record(stats, epoch, ctx.step, started, mean_loss, mean_loss * count, correct, count, lr)

    def _update(self, loss: torch.Tensor, epoch: int, step: int, shown_loss: float) -> float:
        """Backward, then the optimiser and schedule steps, stopping the run on non-finite gradients (checked
        before the update, which would spread them) or weights → the learning rate of this step."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        gradients = [p.grad for p in self.student.parameters() if p.grad is not None]
        if gradients and not _finite(gradients):
            raise self._diverged(epoch, step, f"the gradients are not finite (loss {shown_loss:.4g})")
        self.optimizer.step()
        if not _finite([*self.student.parameters(), *(b for b in self.student.buffers() if b.is_floating_point())]):
            raise self._diverged(epoch, step, f"this step's update made the weights non-finite (loss "
                                              f"{shown_loss:.4g})")
        lr = self.optimizer.param_groups[0]["lr"]
        self.schedule.step()
        return lr

    def _record(self, stats: _EpochStats, epoch: int, global_step: int, started: float, mean_loss: float,
                loss_sum: float, correct: int, seen: int, lr: float) -> None:
        """Add a finished step to the epoch's statistics and announce it (a StepEvent)."""
        stats.loss_sum += loss_sum
        stats.correct += correct
        stats.seen += seen
        seconds = time.perf_counter() - started
        stats.seconds += seconds
        self.elapsed += seconds
        self.emit(StepEvent(run=self.config.run_name, epoch=epoch + 1, step=global_step + 1,
                            total_steps=self.config.epochs * self.loader.steps_per_epoch, loss=mean_loss,
                            lr=lr, accuracy=correct / seen, images_per_s=seen / max(seconds, 1e-9),
                            teacher_forwards=self.distiller.teacher_forwards))

    def _step_distributed(self, epoch: int, step: int, order, stats: _EpochStats, started: float) -> None:
        """One step under torchrun: this process's block of the step's images, its loss weighted by its share
        (DDP averages the gradients, so the update is the single-process batch mean's), and the step's loss sum,
        correct count, sample count, teacher forwards, a non-finite-loss flag and stop requests summed over all
        processes (one small all-reduce), so every rank sees the same metrics and stops at the same step."""
        config, world = self.config, self.dist.world_size
        batch = self.loader.batch(epoch, step, order, share=(self.dist.rank, world))
        if self.device.type == "cuda" and config.channels_last:
            batch.images = batch.images.contiguous(memory_format=torch.channels_last)
        rng = _ShareDraws(build.step_rng(config.seed, epoch, step), batch.offset, len(batch), batch.total)
        ctx = StepContext(epoch=epoch, epochs=config.epochs, step=epoch * self.loader.steps_per_epoch + step, rng=rng)
        forwards = self.distiller.teacher_forwards
        with self._autocast():
            logits, parts = self.distiller.forward_train(batch, ctx)
        loss = sum(parts.values())
        count = len(batch)
        local_loss = loss.detach().double()
        summed = torch.stack([
            local_loss * count, (logits.detach().argmax(-1) == batch.targets).sum().double(),
            torch.tensor(float(count), dtype=torch.float64, device=local_loss.device),
            torch.tensor(float(self.distiller.teacher_forwards - forwards), dtype=torch.float64,
                         device=local_loss.device),
            (~torch.isfinite(local_loss)).double(),
            torch.tensor(float(self.control.stop_requested), dtype=torch.float64, device=local_loss.device)])
        torch.distributed.all_reduce(summed)
        loss_sum, correct, seen, forwards_done, non_finite, stop = summed.tolist()
        correct, seen = int(round(correct)), int(round(seen))
        mean_loss = loss_sum / seen
        self.distiller.teacher_forwards = forwards + int(round(forwards_done))
        if non_finite:
            raise self._diverged(epoch, step, f"the loss is {mean_loss}")
        # DDP divides the summed gradients by world: weighting by the share makes them the step's mean gradient,
        # the same on every rank
        lr = self._update(loss * (count * world / batch.total), epoch, step, mean_loss)
        self._stop_agreed = stop > 0
        self._record(stats, epoch, ctx.step, started, mean_loss, loss_sum, correct, seen, lr)

    def _end_epoch(self, epoch: int, stats: _EpochStats) -> dict:
        config = self.config
        metrics = {"epoch": epoch + 1, "step": (epoch + 1) * self.loader.steps_per_epoch,
                   "train_loss": stats.loss_sum / max(stats.seen, 1), "train_top1": stats.correct / max(stats.seen, 1),
                   "lr": self.optimizer.param_groups[0]["lr"], "crops_seen": (epoch + 1) * self.loader.num_images
                   * self.loader.source.num_crops, "teacher_forwards": self.distiller.teacher_forwards}
        if self.eval_images is not None and self.dist.is_main and ((epoch + 1) % config.eval_every == 0
                                                                  or epoch + 1 == config.epochs):
            started = time.perf_counter()
            logits = predict(self.student, self.eval_images, device=self.device, amp=config.amp)
            result = classification_metrics(logits, self.eval_images.targets, self.reference)
            metrics.update({f"test_{k}": result[k] for k in ("top1", "top5", "nll", "ece", "agreement")
                            if k in result})
            metrics["eval_seconds"] = round(time.perf_counter() - started, 3)
            self.elapsed += metrics["eval_seconds"]
        metrics.update({"seconds": round(stats.seconds, 3), "elapsed": round(self.elapsed, 3),
                        "images_per_s": round(stats.seen / max(stats.seconds, 1e-9), 1)})
        return metrics

    def _final_eval(self) -> dict | None:
        if self.eval_images is None or not self.dist.is_main:
            return None
        logits = predict(self.student, self.eval_images, device=self.device, amp=self.config.amp)
        result = classification_metrics(logits, self.eval_images.targets, self.reference,
                                        self.eval_images.class_names or None)
        result = {"data": self.eval_images.name, **result}
        checkpoint.write_text_atomic(self.run_dir / "eval.json", json.dumps(result, indent=2) + "\n")
        return result

    def _stopped(self, epoch: int, step: int, stats: _EpochStats, history: list[dict]) -> RunResult:
        path = self._save(epoch, step, stats)
        self.emit(EndEvent(run=self.config.run_name, status="stopped", epoch=epoch + 1 if step else epoch,
                           step=epoch * self.loader.steps_per_epoch + step, seconds=round(self.elapsed, 3),
                           checkpoint=path, metrics=history[-1] if history else {}))
        return RunResult(self.config.run_name, str(self.run_dir), "stopped", history, None, path, self.elapsed,
                         self.distiller.teacher_forwards, {"notes": [note["text"] for note in self.notes]})


class _ShareDraws:
    """A step's generator as seen by one process's share: a draw of one value per sample of the share is made
    for the whole step's batch and sliced at the share's samples, so every sample gets the draw one process would
    give it (mixing draws one value per sample, in a fixed order)."""

    _SIZE_FIRST = ("random", "standard_normal", "standard_exponential")

    def __init__(self, rng: np.random.Generator, offset: int, count: int, total: int):
        self.rng, self.offset, self.count, self.total = rng, int(offset), int(count), int(total)

    def __getattr__(self, name):
        method = getattr(self.rng, name)
        if not callable(method):
            return method

        def draw(*args, **kwargs):
            if name in self._SIZE_FIRST and args and "size" not in kwargs:
                kwargs["size"], args = args[0], args[1:]
            size = kwargs.get("size")
            if isinstance(size, (int, np.integer)) and int(size) == self.count:
                kwargs["size"] = self.total
                return method(*args, **kwargs)[self.offset:self.offset + self.count]
            return method(*args, **kwargs)

        return draw


def _launch_rank() -> int:
    """This process's rank as torchrun set it (0 without torchrun), readable before the group is joined."""
    return int(os.environ.get("RANK", 0)) if distributed.launched_by_torchrun() else 0


def _finite(tensors) -> bool:
    """Whether every value of every tensor is finite: one max-abs reduction (NaN and ±inf propagate, large finite
    values cannot overflow it) and one device sync."""
    return bool(torch.isfinite(torch.nn.utils.get_total_norm(tensors, float("inf"))))


def metrics_without_timing(history: list[dict]) -> list[dict]:
    """Metrics lines minus wall-clock fields (what must match between a resumed and an uninterrupted run)."""
    return [{k: v for k, v in m.items() if k not in TIMING_KEYS} for m in history]
