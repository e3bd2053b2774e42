"""Run checkpoints: everything needed to resume exactly, readable with ``torch.load(weights_only=True)``.

RNG states are stored as tensors and plain values (torch CPU/CUDA generators, numpy's global MT19937, Python's
``random``), never as pickled objects.
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

FORMAT = "softlab-run"
VERSION = 1


def rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    numpy = state["numpy"]
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"], numpy["has_gauss"],
                         numpy["cached_gaussian"]))
    python = state["python"]
    random.setstate((python["version"], tuple(python["internal"]), python["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def save(path, **payload) -> Path:
    """Write ``{"format", "version", **payload}`` atomically: into ``<name>.tmp``, synced to disk, then renamed
    into place. A process killed at any moment leaves the previous checkpoint intact (and at worst a partial
    ``.tmp`` file, which the next save overwrites and :func:`load` never reads)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        torch.save({"format": FORMAT, "version": VERSION, **payload}, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path


def load(path, map_location="cpu") -> dict:
    data = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path} is not a softlab run checkpoint")
    if data.get("version", 0) > VERSION:
        raise ValueError(f"{path} has checkpoint version {data['version']}; upgrade softlab to read it")
    return data


def write_text_atomic(path, text: str) -> Path:
    """Write ``text`` to a synced temporary file renamed into place: a process killed at any moment leaves the
    old file or the new one, never a truncated one."""
    import os

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path
