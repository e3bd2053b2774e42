"""Reading run folders back: what a runs folder holds (status, top-1, ECE, wall time) and each run's history.

Everything comes from the files the engine writes (see :mod:`softlab.train.engine`): ``config.json``,
``metrics.jsonl`` (one line per finished epoch), ``eval.json`` (the final evaluation) and
``checkpoints/last.pt``. A run's status follows from them:

- ``finished``: every configured epoch has its metrics line;
- ``stopped``: not finished, with a checkpoint to resume from (``resume=True`` / ``--resume``), or still running;
- ``incomplete``: not finished and no checkpoint (still in its first epoch, or ended by an error).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

STATUSES = ("finished", "stopped", "incomplete")


@dataclass
class RunSummary:
    """One run folder at a glance. ``top1``/``ece`` are the final evaluation's when the run finished with one,
    else the last evaluated epoch's (None before any); ``wall_seconds`` is training plus per-epoch evaluation time
    up to the last finished epoch, summed over resumes (None before the first epoch ends)."""

    name: str
    run_dir: str
    recipe: str
    student: str
    status: str
    epochs_done: int
    epochs: int
    top1: float | None
    ece: float | None
    wall_seconds: float | None
    created: str

    def to_dict(self) -> dict:
        return asdict(self)


def read_json(path) -> dict | None:
    """A JSON file's content, or None when it is missing or not (yet) valid JSON."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def load_history(run_dir) -> list[dict]:
    """The run's ``metrics.jsonl`` lines (a half-written last line is skipped)."""
    try:
        text = (Path(run_dir) / "metrics.jsonl").read_text()
    except OSError:
        return []
    history = []
    for line in text.splitlines():
        try:
            history.append(json.loads(line))
        except ValueError:
            continue
    return history


def run_status(epochs_done: int, epochs: int, has_checkpoint: bool) -> str:
    if epochs_done >= epochs:
        return "finished"
    return "stopped" if has_checkpoint else "incomplete"


def last_evaluated(history: list[dict]) -> dict:
    """The last metrics line with test metrics ({} when no epoch was evaluated)."""
    return next((m for m in reversed(history) if "test_top1" in m), {})


def read_run(run_dir) -> RunSummary | None:
    """A :class:`RunSummary` of one run folder, or None when it holds no readable ``config.json``."""
    run_dir = Path(run_dir)
    stored = read_json(run_dir / "config.json")
    if not stored or "config" not in stored:
        return None
    config, history = stored["config"], load_history(run_dir)
    epochs, done = int(config["epochs"]), len(history)
    status = run_status(done, epochs, (run_dir / "checkpoints" / "last.pt").is_file())
    final = read_json(run_dir / "eval.json") if status == "finished" else None
    tested = last_evaluated(history)
    top1 = final["top1"] if final else tested.get("test_top1")
    ece = final["ece"] if final else tested.get("test_ece")
    wall = history[-1].get("elapsed") if history else None
    return RunSummary(name=run_dir.name, run_dir=str(run_dir), recipe=config["recipe"], student=config["student"],
                      status=status, epochs_done=done, epochs=epochs, top1=top1, ece=ece, wall_seconds=wall,
                      created=stored.get("created", ""))


def list_runs(folder) -> list[RunSummary]:
    """Every run in ``folder`` (its sub-folders with a ``config.json``), oldest first (then by name)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    runs = [read_run(path) for path in folder.iterdir() if path.is_dir()]
    return sorted((run for run in runs if run is not None), key=lambda run: (run.created, run.name))


def run_histories(runs) -> dict[str, list[dict]]:
    """``{run name: history}`` for :class:`RunSummary` objects or run folders, in the given order (what
    :func:`softlab.viz.accuracy_curves` overlays)."""
    out = {}
    for run in runs:
        run_dir = Path(run.run_dir if isinstance(run, RunSummary) else run)
        out[run_dir.name] = load_history(run_dir)
    return out


def next_run_name(folder, base: str) -> str:
    """``base`` when ``folder/base`` does not exist yet, else the first free ``base-2``, ``base-3``, …"""
    folder, name, number = Path(folder), base, 1
    while (folder / name).exists():
        number += 1
        name = f"{base}-{number}"
    return name
