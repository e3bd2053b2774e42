"""Running under ``torchrun``: the process group, this process's rank, and rank-0-only work.

softlab never launches processes itself: ``torchrun --nproc_per_node N -m softlab.cli …`` (or a multi-node
rendezvous) starts them and sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``.
:func:`init` joins the group those variables describe (NCCL on CUDA, gloo on the CPU); without them everything
here is the single-process case (rank 0 of 1) and costs nothing.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Context:
    """Where this process stands: ``rank`` of ``world_size`` (``local_rank`` on its node)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """Whether the environment describes a process group (torchrun sets these variables)."""
    return all(os.environ.get(name) for name in LAUNCH_VARIABLES) and int(os.environ["WORLD_SIZE"]) > 1


def init(device: torch.device | str | None = None) -> Context:
    """Join the process group torchrun describes (once; later calls return the same context) → :class:`Context`.

    The backend is NCCL when ``device`` is CUDA, gloo otherwise; a CUDA process uses the GPU of its
    ``LOCAL_RANK``. Without torchrun's variables: rank 0 of 1, no group.
    """
    if dist.is_available() and dist.is_initialized():
        return context()
    if not launched_by_torchrun():
        return Context()
    if not dist.is_available():
        raise RuntimeError("this torch build has no torch.distributed: run one process, or install a torch with it")
    device = torch.device(device) if device is not None else None
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    cuda = device is not None and device.type == "cuda"
    if cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if cuda else "gloo")
    return context()


def context() -> Context:
    """This process's :class:`Context` (rank 0 of 1 outside a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return Context()
    return Context(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def barrier() -> None:
    """Wait for every rank (nothing to wait for in a single process)."""
    if context().distributed:
        dist.barrier()


@contextlib.contextmanager
def main_first():
    """Rank 0 runs the block first (e.g. creating a folder or a store), the other ranks after it."""
    ctx = context()
    if not ctx.is_main:
        barrier()
    yield
    if ctx.is_main:
        barrier()


def shutdown() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
