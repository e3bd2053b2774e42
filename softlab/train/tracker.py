"""A run's progress as numbers, computed from its events: fraction done, ETA, throughput and curves.

:class:`ProgressTracker` is fed events (it is a consumer: ``tracker(event)``) and renders nothing; a terminal
bar, a notebook widget or a test reads its attributes (fastprogress's split of progress logic from rendering).
Times are the events' own ``time`` stamps, so the numbers are exact functions of the events seen.

ETA = remaining steps × seconds per step, with seconds per step measured over this session of the run: from the
start event to the latest step event, minus the time spent paused, divided by the steps done since the start
(a resumed run starts at ``start_step``; epoch-end evaluations are part of the measured time).
"""
from __future__ import annotations

import math
from collections import deque

from .events import EndEvent, EpochEvent, ErrorEvent, StartEvent, StepEvent

ACTIVE = ("waiting", "running", "paused")


def format_duration(seconds: float | None) -> str:
    """``"0:07"``, ``"12:05"``, ``"1:02:03"``; ``"–"`` for None."""
    if seconds is None or not math.isfinite(seconds):
        return "–"
    total = int(round(max(seconds, 0.0)))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class ProgressTracker:
    """The state of one run, updated by its events.

    ``status``: waiting → running (→ paused → running) → finished | stopped | error. Per-step curves
    (``curve_x`` in epochs, ``curve_loss``, ``curve_accuracy``) and the per-epoch ``history`` (the metrics.jsonl
    lines).
    ``throughput_window`` steps are averaged for :attr:`images_per_s`.
    """

    def __init__(self, throughput_window: int = 10):
        self._state = "waiting"
        self.run = self.run_dir = self.error = self.traceback = self.checkpoint = None
        self.epochs = self.epoch = self.steps_per_epoch = self.total_steps = self.start_step = self.step = 0
        self.loss = self.accuracy = self.lr = None
        self.history: list[dict] = []
        self.curve_x: list[float] = []
        self.curve_loss: list[float] = []
        self.curve_accuracy: list[float] = []
        self._rates: deque = deque(maxlen=throughput_window)
        self._started_at = self._last_at = self._paused_at = None
        self._paused_seconds = 0.0

    # ----- feeding
    def __call__(self, event) -> None:
        handler = getattr(self, f"on_{event.kind}", None)
        if handler is not None:
            handler(event)

    def on_start(self, event: StartEvent) -> None:
        self._state, self.run, self.run_dir = "running", event.run, event.run_dir
        self.epochs, self.steps_per_epoch = event.epochs, event.steps_per_epoch
        self.total_steps, self.start_step, self.step = event.total_steps, event.start_step, event.start_step
        self.epoch = event.start_step // max(event.steps_per_epoch, 1)
        self._started_at = self._last_at = event.time
        if self._paused_at is not None:  # paused during setup: the run waits from its first step on
            self._paused_at = max(self._paused_at, event.time)

    def on_step(self, event: StepEvent) -> None:
        self.step, self.epoch, self.total_steps = event.step, event.epoch, event.total_steps
        self.loss, self.accuracy, self.lr = event.loss, event.accuracy, event.lr
        self._rates.append(event.images_per_s)
        self._last_at = event.time
        self.curve_x.append(event.step / max(self.steps_per_epoch, 1))
        self.curve_loss.append(event.loss)
        self.curve_accuracy.append(event.accuracy)

    def on_epoch(self, event: EpochEvent) -> None:
        self.epoch = event.epoch
        self.history.append(event.metrics)

    def on_end(self, event: EndEvent) -> None:
        self._state, self.step, self.checkpoint = event.status, event.step, event.checkpoint
        self.epoch = event.epoch
        self._resume_clock(event.time)
        self._last_at = event.time

    def on_error(self, event: ErrorEvent) -> None:
        self._state, self.error, self.traceback = "error", event.error, event.traceback
        self._resume_clock(event.time)

    def seed_history(self, history: list[dict]) -> None:
        """Epochs finished before this session (a resumed run): they precede the ones its events will bring."""
        self.history = list(history) + self.history

    # ----- pauses (a control action, not an event: the front end reports when it paused and resumed)
    def pause(self, at: float) -> None:
        if self.status in ("waiting", "running"):
            self._paused_at = at

    def resume(self, at: float) -> None:
        if self.status == "paused":
            self._resume_clock(at)

    def _resume_clock(self, at: float) -> None:
        if self._paused_at is not None:
            self._paused_seconds += max(0.0, at - self._paused_at)
            self._paused_at = None

    # ----- numbers
    @property
    def status(self) -> str:
        """waiting | running | paused | finished | stopped | error."""
        if self._paused_at is not None and self._state in ("waiting", "running"):
            return "paused"
        return self._state

    @property
    def active(self) -> bool:
        """The run has not ended (waiting for its start event, running or paused)."""
        return self.status in ACTIVE

    @property
    def fraction(self) -> float:
        return self.step / self.total_steps if self.total_steps else 0.0

    @property
    def elapsed(self) -> float:
        """Seconds of this session up to the latest event, pauses excluded."""
        if self._started_at is None:
            return 0.0
        return max(0.0, self._last_at - self._started_at - self._paused_seconds)

    @property
    def seconds_per_step(self) -> float | None:
        done = self.step - self.start_step
        return self.elapsed / done if done > 0 else None

    @property
    def eta(self) -> float | None:
        """Seconds left (0 once the run ended; None before the first step of a running run)."""
        if self.status in ("finished", "stopped", "error"):
            return 0.0
        rate = self.seconds_per_step
        return None if rate is None else (self.total_steps - self.step) * rate

    @property
    def images_per_s(self) -> float | None:
        """Mean student inputs (crops) per second over the last ``throughput_window`` steps."""
        return sum(self._rates) / len(self._rates) if self._rates else None

    def describe(self) -> str:
        """One line: ``"step 3/8 · epoch 1/2 · 120 img/s · 0:06 elapsed · ETA 0:10"``."""
        if self._state == "waiting":
            return "preparing the run…" + (" (paused)" if self.status == "paused" else "")
        parts = [f"step {self.step}/{self.total_steps}", f"epoch {self.epoch}/{self.epochs}"]
        if self.images_per_s is not None:
            parts.append(f"{self.images_per_s:.0f} img/s")
        parts.append(f"{format_duration(self.elapsed)} elapsed")
        if self.active:
            parts.append("paused" if self.status == "paused" else f"ETA {format_duration(self.eta)}")
        else:
            parts.append(self.status)
        return " · ".join(parts)

    def step_curve(self, values: list[float], max_points: int = 500) -> tuple[list[float], list[float]]:
        """(x in epochs, values) of a per-step curve, averaged over consecutive runs of steps when there are
        more than ``max_points`` (so that a long run's live figure stays small)."""
        x = self.curve_x[:len(values)]
        if len(values) <= max_points:
            return list(x), list(values)
        size = math.ceil(len(values) / max_points)
        chunks = range(0, len(values), size)
        return ([sum(x[i:i + size]) / len(x[i:i + size]) for i in chunks],
                [sum(values[i:i + size]) / len(values[i:i + size]) for i in chunks])
