"""The training engine: one run of a recipe, with events, stop/pause, per-epoch metrics and exact resume.

A run lives in ``<out>/<name>/``::

    config.json          the TrainConfig plus what was resolved from it (sizes, normalisation, store, teacher)
    metrics.jsonl        one JSON line per finished epoch
    eval.json            the final evaluation (top-1/5, NLL, ECE with reliability bins, per-class, agreement)
    checkpoints/last.pt  model, optimizer, scheduler, RNG states, recipe state, position (epoch, step)

Batches and mixing draws are functions of (seed, epoch, step), and the checkpoint carries every other state,
so a run stopped between two steps and resumed computes the same metrics as an uninterrupted one (on the CPU).
"""
from __future__ import annotations

import contextlib
import json
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import __version__
from ..evaluate import EvalImages, classification_metrics, predict
from . import build, checkpoint
from .config import TrainConfig
from .events import Broadcaster, EndEvent, EpochEvent, ErrorEvent, RunControl, StartEvent, StepEvent
from .progress import TqdmProgress
from .recipes import StepContext, create_recipe, get_recipe

TIMING_KEYS = ("seconds", "eval_seconds", "elapsed", "images_per_s")


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
        self.emit = Broadcaster([*callbacks, TqdmProgress() if config.progress else None])
        self.resume, self.overwrite = resume, overwrite
        self.run_dir = Path(config.out) / config.run_name

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
        recipe = get_recipe(config.recipe)
        self.dataset = build.training_data(config, objects["dataset"])
        self.store, labels = build.open_labels(config, self.dataset, objects["store"])
        self.teacher = self._teacher(recipe)
        channels, self.size = build.input_geometry(config, self.dataset, self.store, self.teacher)
        mean, std = (config.mean, config.std) if config.mean and config.std else build.image_stats(self.dataset)
        num_classes = self.dataset.num_classes
        self.student = build.build_student(config, num_classes, channels, self.size, mean, std, objects["student"])
        self.student.to(self.device)
        if self.device.type == "cuda" and config.channels_last:
            self.student.to(memory_format=torch.channels_last)
        trained = torch.compile(self.student) if config.compile else self.student
        self.distiller = create_recipe(config.recipe, trained, self.teacher, num_classes=num_classes,
                                       mixing=config.mixing, label_temperature=config.label_temperature,
                                       num_images=len(self.dataset), targets=self.dataset.targets,
                                       **config.recipe_options)
        source = build.crop_source(config, labels, self.store)
        self.loader = build.build_loader(config, self.dataset, source, self.size, self.device)
        self.optimizer = build.build_optimizer(config, self.student)
        self.schedule = build.build_schedule(config, self.optimizer, self.loader.steps_per_epoch)
        self.eval_images = self._eval_images()
        self.reference = self._reference()
        self.resolved = self._describe()

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
                "eval_images": len(self.eval_images) if self.eval_images is not None else 0}

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
                raise FileExistsError(f"run {self.run_dir} exists: resume it (--resume / resume=True), choose another "
                                      "--name, or overwrite it (--overwrite / overwrite=True)")
            stored = TrainConfig.from_dict(json.loads(config_path.read_text())["config"])
            changed = stored.differences(self.config)
            if changed:
                raise ValueError(f"cannot resume {self.run_dir}: the config differs in {', '.join(changed)}")
            if last.exists():
                return checkpoint.load(last, map_location="cpu")  # RNG states must stay on the CPU
        if self.overwrite and self.run_dir.exists():
            import shutil

            shutil.rmtree(self.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "metrics.jsonl").write_text("")
        config_path.write_text(json.dumps({"config": self.config.to_dict(), "resolved": self.resolved,
                                           "softlab_version": __version__,
                                           "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=2) + "\n")
        return None

    def _restore(self, state: dict) -> tuple[int, int, _EpochStats, list[dict]]:
        self.student.load_state_dict(state["student"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["scheduler"])
        self.distiller.load_extra_state(state["recipe"])
        checkpoint.set_rng_state(state["rng"])
        self.elapsed = float(state["elapsed"])
        history = [json.loads(line) for line in (self.run_dir / "metrics.jsonl").read_text().splitlines() if line]
        history = [m for m in history if m["epoch"] <= state["epoch"]]
        self._write_history(history)
        return int(state["epoch"]), int(state["step"]), _EpochStats(**state["epoch_stats"]), history

    def _write_history(self, history: list[dict]) -> None:
        lines = "".join(json.dumps(m) + "\n" for m in history)
        (self.run_dir / "metrics.jsonl").write_text(lines)

    def _save(self, epoch: int, step: int, stats: _EpochStats) -> str:
        """Checkpoint at a position: ``epoch`` epochs done and ``step`` steps of the next one."""
        payload = {"epoch": epoch, "step": step, "student": self.student.state_dict(),
                   "student_info": self.student.describe(), "optimizer": self.optimizer.state_dict(),
                   "scheduler": self.schedule.state_dict(), "recipe": self.distiller.extra_state(),
                   "rng": checkpoint.rng_state(), "epoch_stats": stats.to_dict(), "elapsed": self.elapsed,
                   "config": self.config.to_dict()}
        path = checkpoint.save(self.run_dir / "checkpoints" / "last.pt", **payload)
        if self.config.keep_epoch_checkpoints and step == 0:
            checkpoint.save(self.run_dir / "checkpoints" / f"epoch_{epoch:03d}.pt", **payload)
        return str(path)

    # ----- the loop
    def _train(self) -> RunResult:
        config, loader = self.config, self.loader
        checkpoint.seed_everything(config.seed)
        self.elapsed = 0.0
        state = self._open_run_dir()
        epoch, step, stats, history = (0, 0, _EpochStats(), []) if state is None else self._restore(state)
        steps_per_epoch, total = loader.steps_per_epoch, config.epochs * loader.steps_per_epoch
        name = config.run_name
        self.emit(StartEvent(run=name, recipe=config.recipe, epochs=config.epochs, steps_per_epoch=steps_per_epoch,
                             total_steps=total, start_step=epoch * steps_per_epoch + step, run_dir=str(self.run_dir)))
        self.distiller.train()
        last_checkpoint = None
        while epoch < config.epochs:
            order = loader.epoch_order(epoch)
            while step < steps_per_epoch:
                self.control.wait_while_paused()
                if self.control.stop_requested:
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
                         self.distiller.teacher_forwards)

    def _autocast(self):
        if self.device.type == "cuda" and self.config.amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _step(self, epoch: int, step: int, order, stats: _EpochStats) -> None:
        started = time.perf_counter()
        config = self.config
        batch = self.loader.batch(epoch, step, order)
        if self.device.type == "cuda" and config.channels_last:
            batch.images = batch.images.contiguous(memory_format=torch.channels_last)
        ctx = StepContext(epoch=epoch, epochs=config.epochs, step=epoch * self.loader.steps_per_epoch + step,
                          rng=build.step_rng(config.seed, epoch, step))
        with self._autocast():
            logits, parts = self.distiller.forward_train(batch, ctx)
        loss = sum(parts.values())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch + 1}, step {step + 1}; "
                                     "lower the learning rate")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        lr = self.optimizer.param_groups[0]["lr"]
        self.schedule.step()
        count = len(batch)
        correct = int((logits.detach().argmax(-1) == batch.targets).sum())
        stats.loss_sum += float(loss.detach()) * count
        stats.correct += correct
        stats.seen += count
        seconds = time.perf_counter() - started
        stats.seconds += seconds
        self.elapsed += seconds
        self.emit(StepEvent(run=config.run_name, epoch=epoch + 1, step=ctx.step + 1,
                            total_steps=config.epochs * self.loader.steps_per_epoch, loss=float(loss.detach()),
                            lr=lr, accuracy=correct / count, images_per_s=count / max(seconds, 1e-9),
                            teacher_forwards=self.distiller.teacher_forwards))

    def _end_epoch(self, epoch: int, stats: _EpochStats) -> dict:
        config = self.config
        metrics = {"epoch": epoch + 1, "step": (epoch + 1) * self.loader.steps_per_epoch,
                   "train_loss": stats.loss_sum / max(stats.seen, 1), "train_top1": stats.correct / max(stats.seen, 1),
                   "lr": self.optimizer.param_groups[0]["lr"], "crops_seen": (epoch + 1) * self.loader.num_images
                   * self.loader.source.num_crops, "teacher_forwards": self.distiller.teacher_forwards}
        if self.eval_images is not None and ((epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs):
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
        if self.eval_images is None:
            return None
        logits = predict(self.student, self.eval_images, device=self.device, amp=self.config.amp)
        result = classification_metrics(logits, self.eval_images.targets, self.reference,
                                        self.eval_images.class_names or None)
        result = {"data": self.eval_images.name, **result}
        (self.run_dir / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
        return result

    def _stopped(self, epoch: int, step: int, stats: _EpochStats, history: list[dict]) -> RunResult:
        path = self._save(epoch, step, stats)
        self.emit(EndEvent(run=self.config.run_name, status="stopped", epoch=epoch + 1 if step else epoch,
                           step=epoch * self.loader.steps_per_epoch + step, seconds=round(self.elapsed, 3),
                           checkpoint=path, metrics=history[-1] if history else {}))
        return RunResult(self.config.run_name, str(self.run_dir), "stopped", history, None, path, self.elapsed,
                         self.distiller.teacher_forwards)


def metrics_without_timing(history: list[dict]) -> list[dict]:
    """Metrics lines minus wall-clock fields (what must match between a resumed and an uninterrupted run)."""
    return [{k: v for k, v in m.items() if k not in TIMING_KEYS} for m in history]
