"""Process settings that softlab applies in its own processes: the ``softlab`` command and notebook workspaces.

glibc's malloc hands out large blocks (activations of a 224 px teacher batch: tens of MB each) as fresh memory
maps and unmaps them when freed, so every forward pays page faults for memory it just gave back: label generation
with EfficientNet-Lite0 on 2 CPU cores ran at 34-39 crops/s so, and at 70-82 with freed memory kept for reuse
(``benchmarks/results.md``). PyTorch's CPU tuning guide recommends jemalloc or tcmalloc for the same reason; this
gets the gain without preloading a library.
"""
from __future__ import annotations

import ctypes
import os
import platform

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # mallopt parameters, from glibc's malloc.h
KEEP_FREED_BYTES = 1 << 30
OPT_OUT = "SOFTLAB_KEEP_FREED_MEMORY"
_applied = False


def keep_freed_memory() -> bool:
    """Have glibc serve large blocks from the heap and keep up to 1 GiB of freed memory for reuse, instead of
    mapping and unmapping pages for each large tensor. Returns whether it was applied: only on glibc (Linux),
    and not if the environment variable ``SOFTLAB_KEEP_FREED_MEMORY`` is ``0``.

    The process then keeps its peak heap (beyond 1 GiB free, the top of the heap is returned to the system)."""
    if os.environ.get(OPT_OUT, "1").strip() == "0":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    global _applied
    _applied = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, KEEP_FREED_BYTES))
    return _applied


def allocator() -> str:
    """``"kept"`` once :func:`keep_freed_memory` applied in this process, else ``"default"`` (what a measured
    batch size depends on too)."""
    return "kept" if _applied else "default"
