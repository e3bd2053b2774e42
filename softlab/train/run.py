"""Starting runs: :func:`train` in the calling thread, :func:`start_run` in a background thread (for notebooks:
the caller keeps the prompt, follows events and can pause, resume or stop the run)."""
from __future__ import annotations

import threading

from .config import TrainConfig
from .engine import RunResult, Trainer
from .events import EventQueue, RunControl


def _config(config=None, **settings) -> TrainConfig:
    if config is None:
        return TrainConfig(**settings)
    if isinstance(config, dict):
        config = TrainConfig.from_dict(config)
    return config.replace(**settings) if settings else config


def train(config: TrainConfig | dict | None = None, *, dataset=None, store=None, teacher=None, student=None,
          eval_data=None, reference=None, callbacks=(), control: RunControl | None = None, resume: bool = False,
          overwrite: bool = False, **settings) -> RunResult:
    """Run a training job to its end (or until ``control.request_stop()``); keyword settings override ``config``.

    ``train(recipe="fkd", store="stores/fmnist", data_limit=2000, epochs=10)``
    """
    trainer = Trainer(_config(config, **settings), dataset=dataset, store=store, teacher=teacher, student=student,
                      eval_data=eval_data, reference=reference, callbacks=callbacks, control=control,
                      resume=resume, overwrite=overwrite)
    return trainer.run()


class RunHandle:
    """A run in a background thread: ``control`` (pause/resume/request_stop), ``events`` (an EventQueue to
    drain), ``result()`` (waits; re-raises the run's error), ``done``."""

    def __init__(self, thread: threading.Thread, control: RunControl, events: EventQueue):
        self.thread, self.control, self.events = thread, control, events
        self._result: RunResult | None = None
        self._error: BaseException | None = None

    @property
    def done(self) -> bool:
        return not self.thread.is_alive()

    def stop(self, wait: bool = True) -> RunResult | None:
        self.control.request_stop()
        return self.result() if wait else None

    def result(self, timeout: float | None = None) -> RunResult | None:
        self.thread.join(timeout)
        if self._error is not None:
            raise self._error
        return self._result


def start_run(config: TrainConfig | dict | None = None, *, callbacks=(), **kwargs) -> RunHandle:
    """Start :func:`train` in a daemon thread and return its :class:`RunHandle` at once."""
    control = kwargs.pop("control", None) or RunControl()
    events = EventQueue()
    handle: RunHandle

    def target():
        try:
            handle._result = train(config, callbacks=(events, *callbacks), control=control, **kwargs)
        except BaseException as error:  # kept for result(); the ErrorEvent has already been emitted
            handle._error = error

    thread = threading.Thread(target=target, name="softlab-run", daemon=True)
    handle = RunHandle(thread, control, events)
    thread.start()
    return handle
