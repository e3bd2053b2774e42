"""Rendering run events in a terminal with tqdm (a notebook widget consumes the same events)."""
from __future__ import annotations

from tqdm.auto import tqdm

from .events import EndEvent, EpochEvent, ErrorEvent, NoteEvent, StartEvent, StepEvent


class TqdmProgress:
    """One bar per run over its optimisation steps, a line per note and per epoch, a line at the end."""

    def __init__(self, position: int | None = None, leave: bool = True, epoch_lines: bool = True):
        self.position, self.leave, self.epoch_lines = position, leave, epoch_lines
        self.bar = None

    def __call__(self, event) -> None:
        handler = getattr(self, f"on_{event.kind}", None)
        if handler is not None:
            handler(event)

    def on_start(self, event: StartEvent) -> None:
        self.bar = tqdm(total=event.total_steps, initial=event.start_step, desc=event.run, unit="step",
                        position=self.position, leave=self.leave, dynamic_ncols=True)

    def on_step(self, event: StepEvent) -> None:
        if self.bar is None:
            return
        self.bar.update(event.step - self.bar.n)
        self.bar.set_postfix(epoch=event.epoch, loss=f"{event.loss:.3f}", acc=f"{event.accuracy:.2f}",
                             lr=f"{event.lr:.2g}", img_s=f"{event.images_per_s:.0f}", refresh=False)

    def on_note(self, event: NoteEvent) -> None:
        tqdm.write(f"{event.run} note: {event.text}")

    def on_epoch(self, event: EpochEvent) -> None:
        if not self.epoch_lines:
            return
        m = event.metrics
        test = f" test top-1 {m['test_top1']:.4f} ECE {m['test_ece']:.4f}" if "test_top1" in m else ""
        tqdm.write(f"{event.run} epoch {event.epoch}/{event.epochs}: train loss {m['train_loss']:.4f} "
                   f"top-1 {m['train_top1']:.4f}{test} ({m['images_per_s']:.0f} img/s)")

    def on_end(self, event: EndEvent) -> None:
        self.close()
        if event.status == "stopped":
            tqdm.write(f"{event.run} stopped at epoch {event.epoch}, step {event.step}; checkpoint {event.checkpoint} "
                       "(resume with the same command plus --resume)")

    def on_error(self, event: ErrorEvent) -> None:
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
