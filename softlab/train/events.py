"""A run's progress as plain events, and the control a front end (terminal, notebook widget) holds over a run.

Events are dataclasses of JSON values (``dataclasses.asdict`` works); every consumer is a callable taking one
event. :class:`RunControl` lets another thread pause, resume or stop a run: the trainer checks it between
steps, so a stop ends the run cleanly with a checkpoint.
"""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Callable


@dataclass
class StartEvent:
    run: str
    recipe: str
    epochs: int
    steps_per_epoch: int
    total_steps: int
    start_step: int
    run_dir: str
    kind: str = "start"
    time: float = field(default_factory=time.time)


@dataclass
class StepEvent:
    run: str
    epoch: int              # 1-based
    step: int               # global, 1-based
    total_steps: int
    loss: float
    lr: float
    accuracy: float         # top-1 against the ground truth on this step's crops
    images_per_s: float     # crops (student inputs) per second over recent steps
    teacher_forwards: int   # cumulative teacher forwards of this run
    kind: str = "step"
    time: float = field(default_factory=time.time)


@dataclass
class EpochEvent:
    run: str
    epoch: int
    epochs: int
    metrics: dict           # the line written to metrics.jsonl
    kind: str = "epoch"
    time: float = field(default_factory=time.time)


@dataclass
class EndEvent:
    run: str
    status: str             # "finished" | "stopped"
    epoch: int
    step: int
    seconds: float
    checkpoint: str | None
    metrics: dict           # the last epoch's metrics ({} if none)
    kind: str = "end"
    time: float = field(default_factory=time.time)


@dataclass
class ErrorEvent:
    run: str
    error: str
    traceback: str
    kind: str = "error"
    time: float = field(default_factory=time.time)


@dataclass
class NoteEvent:
    """Something about the run the user should know that is not an error (e.g. images a FerKD calibration
    leaves without a kept crop); emitted after the start event, also listed in config.json's ``resolved``."""

    run: str
    text: str
    topic: str = ""          # a short key, e.g. "images_without_kept_crops"
    kind: str = "note"
    time: float = field(default_factory=time.time)


Event = StartEvent | StepEvent | EpochEvent | EndEvent | ErrorEvent | NoteEvent


def to_dict(event) -> dict:
    return asdict(event)


class RunControl:
    """Thread-safe pause/resume/stop requests, honoured between training steps."""

    def __init__(self):
        self._stop = threading.Event()
        self._running = threading.Event()
        self._running.set()

    def request_stop(self) -> None:
        self._stop.set()
        self._running.set()  # a paused run wakes up to stop

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    def wait_while_paused(self, poll: float = 0.1) -> None:
        while not self._running.wait(poll):
            pass


class Broadcaster:
    """Calls every consumer with each event; a failing consumer is reported once and then skipped."""

    def __init__(self, consumers=()):
        self.consumers: list[Callable] = [c for c in consumers if c is not None]
        self._broken: set[int] = set()

    def __call__(self, event) -> None:
        for index, consumer in enumerate(self.consumers):
            if index in self._broken:
                continue
            try:
                consumer(event)
            except Exception as error:  # a display problem must not kill a training run
                self._broken.add(index)
                print(f"progress consumer {consumer!r} failed and is switched off: {error}")


class EventQueue:
    """A consumer that queues events for another thread (e.g. a notebook widget polling a background run)."""

    def __init__(self, maxsize: int = 0):
        self.queue: queue.Queue = queue.Queue(maxsize)

    def __call__(self, event) -> None:
        try:
            self.queue.put_nowait(event)
        except queue.Full:
            pass  # step events may be dropped under back-pressure; the run goes on

    def drain(self) -> list:
        events = []
        while True:
            try:
                events.append(self.queue.get_nowait())
            except queue.Empty:
                return events
