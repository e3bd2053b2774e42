"""Pick the teacher's batch size for label generation by timing its forward, and remember the choice.

A large batch is not always the fastest: on a CPU a convolutional teacher can run several times faster on 8
crops at a time than on 256 (cache-sized activations), while a GPU wants large batches. :func:`pick_batch_size`
times the teacher's forward on a few candidate sizes and keeps the one with the most crops per second; the
choice is cached in ``$SOFTLAB_HOME/autotune/batch_size.json`` per (teacher spec and weights, device, input
size, torch threads, torch version), so later runs skip the measurement.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

CANDIDATES = (8, 16, 32, 64, 128, 256)
DEFAULT_BUDGET_S = 3.0  # stop measuring larger batches once this much time is spent


@dataclass
class BatchChoice:
    """The chosen batch size and how it was chosen: ``source`` is "measured", "cached", "store" (a resumed
    store's earlier choice), "given" (an explicit number) or "all crops" (fewer crops than any candidate); ``crops_per_s`` maps the sizes measured to their
    best throughput; ``seconds`` is the time the measurement took (0 when nothing was measured)."""

    batch_size: int
    source: str
    crops_per_s: dict = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        out = asdict(self)
        out["crops_per_s"] = {str(k): round(float(v), 1) for k, v in self.crops_per_s.items()}
        out["seconds"] = round(float(self.seconds), 3)
        return out

    def describe(self) -> str:
        if self.source != "measured":
            return f"teacher batch size {self.batch_size} ({self.source})"
        rates = ", ".join(f"{k}: {v:.0f}" for k, v in self.crops_per_s.items())
        return (f"teacher batch size {self.batch_size}, measured in {self.seconds:.1f} s "
                f"(crops/s by batch size: {rates})")


def cache_path() -> Path:
    """``$SOFTLAB_HOME/autotune/batch_size.json`` (``~/.cache/softlab`` when ``SOFTLAB_HOME`` is unset)."""
    from ..teachers.fashion_mnist import softlab_home

    return softlab_home() / "autotune" / "batch_size.json"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"{device.type}:{platform.machine()}:{platform.processor() or 'unknown'}"


def cache_key(teacher, device: torch.device, input_size) -> str:
    """What a measured choice depends on: the teacher (spec + weights sha256), the device type and name, the
    input size, torch's thread count and version, and whether freed memory is kept (:mod:`softlab.runtime`: a
    forward without it pays page faults that grow with the batch)."""
    from ..runtime import allocator

    info = teacher.describe() if hasattr(teacher, "describe") else {}
    parts = {"teacher": getattr(teacher, "spec", type(teacher).__name__), "weights": info.get("weights_sha256"),
             "device": device_name(device), "input_size": [int(v) for v in input_size],
             "threads": torch.get_num_threads(), "torch": torch.__version__, "allocator": allocator()}
    return json.dumps(parts, sort_keys=True)


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(path: Path, key: str, entry: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _read_cache(path)
        data[key] = entry
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError:  # a read-only home: the choice is just not remembered
        pass


def measure(forward, candidates, repeats: int = 2, budget_s: float = DEFAULT_BUDGET_S,
            timer=time.perf_counter) -> dict:
    """Best crops/s of ``forward(batch_size)`` for each candidate (ascending), ``{size: crops/s}``.

    Each size gets one untimed warm-up call and ``repeats`` timed ones (the fastest counts). Sizes are tried
    from small to large; the search stops once two sizes in a row were slower than the best so far (past the
    peak), or when the next size would not finish within what is left of ``budget_s`` (estimated from the
    last throughput). The smallest candidate is always measured.
    """
    rates: dict[int, float] = {}
    started, slower = timer(), 0
    for size in sorted(set(int(c) for c in candidates)):
        if rates:
            last = rates[max(rates)]
            if timer() - started + (repeats + 1) * size / max(last, 1e-9) > budget_s:
                break
        forward(size)  # warm-up: first calls at a new shape pay for allocation and kernel selection
        best = float("inf")
        for _ in range(max(1, repeats)):
            begin = timer()
            forward(size)
            best = min(best, timer() - begin)
        rate = size / max(best, 1e-12)
        slower = slower + 1 if rates and rate < max(rates.values()) else 0
        rates[size] = rate
        if slower >= 2:
            break
    return rates


def pick_batch_size(teacher, device, input_size=None, max_crops: int | None = None, candidates=CANDIDATES,
                    repeats: int = 2, budget_s: float = DEFAULT_BUDGET_S, use_cache: bool = True,
                    forward=None, timer=time.perf_counter, path: Path | None = None) -> BatchChoice:
    """The teacher batch size (crops per forward) with the most crops per second on ``device``.

    Looks the choice up in the cache (:func:`cache_path`, keyed by :func:`cache_key`); otherwise times the
    teacher's forward under ``torch.inference_mode`` (channels_last and bf16 autocast on CUDA, as label
    generation runs it) on random inputs of ``input_size`` (default ``teacher.input_size``) for each of
    ``candidates`` no larger than ``max_crops`` (the crops there are to label), with :func:`measure`, and caches
    the best. Ties go to the larger size. ``forward(batch_size)`` and ``timer`` replace the teacher call and
    the clock (tests). Costs a few forwards: well under a second for a small teacher; on a CPU, a big teacher's
    search stops at ``budget_s`` seconds.
    """
    device = torch.device(device)
    input_size = tuple(int(v) for v in (input_size or teacher.input_size))
    sizes = sorted({int(c) for c in candidates if max_crops is None or c <= max_crops})
    if not sizes:  # fewer crops than the smallest candidate: one forward takes them all
        return BatchChoice(max(1, int(max_crops or 1)), "all crops")
    key, path = cache_key(teacher, device, input_size), path or cache_path()
    if use_cache:
        entry = _read_cache(path).get(key)
        if isinstance(entry, dict) and entry.get("batch_size") in sizes:
            rates = {int(k): float(v) for k, v in (entry.get("crops_per_s") or {}).items()}
            return BatchChoice(int(entry["batch_size"]), "cached", rates)
    forward = forward or _teacher_forward(teacher, device, input_size, max(sizes))
    started = time.perf_counter()
    rates = measure(forward, sizes, repeats=repeats, budget_s=budget_s, timer=timer)
    best = max(rates, key=lambda size: (rates[size], size))
    choice = BatchChoice(best, "measured", rates, time.perf_counter() - started)
    if use_cache:
        _write_cache(path, key, {"batch_size": best, "crops_per_s": choice.to_dict()["crops_per_s"],
                                 "measured": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return choice


def _teacher_forward(teacher, device: torch.device, input_size, largest: int):
    inputs = torch.rand(largest, *input_size, generator=torch.Generator().manual_seed(0)).to(device)
    if device.type == "cuda":
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else \
        contextlib.nullcontext

    @torch.inference_mode()
    def forward(size: int) -> None:
        with autocast():
            out = teacher(inputs[:size])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        else:
            out.sum().item()

    return forward
