"""DistributedDataParallel plumbing, detected from ``torchrun``'s environment variables.

``torchrun --nproc_per_node N -m semckd.cli distill ...`` sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``;
everything else (backend, device, which process writes files) follows from them, so the same command
line works with one process or many. NCCL is used when training on CUDA, gloo otherwise (CPU CI).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from .errors import UserError

__all__ = ["DistEnv", "all_reduce_sum", "average_buffers", "broadcast_error", "env_world", "init", "shutdown"]

T = TypeVar("T")


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from the launcher's environment (``(0, 1, 0)`` without one)."""
    try:
        ws = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as e:
        raise UserError(f"bad distributed environment variable: {e}") from None
    return rank, ws, local


def init(device_type: str) -> DistEnv:
    """Join the process group when launched by torchrun; a no-op for a single process."""
    rank, ws, local = env_world()
    if ws <= 1:
        return DistEnv()
    if dist.is_initialized():  # e.g. a notebook that set it up itself
        return DistEnv(dist.get_rank(), dist.get_world_size(), local, False)
    if not dist.is_available():
        raise UserError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(local)
    dist.init_process_group(backend=backend, rank=rank, world_size=ws,
                            timeout=datetime.timedelta(minutes=30))
    return DistEnv(rank, ws, local, True)


def shutdown(env: DistEnv) -> None:
    if env.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Sum ``t`` over ranks in place (gloo cannot reduce on CUDA, nccl cannot on CPU: follow ``t``)."""
    if env.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_max(t: torch.Tensor, env: DistEnv) -> torch.Tensor:
    if env.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


@torch.no_grad()
def average_buffers(module: nn.Module, env: DistEnv) -> None:
    """Average floating-point buffers (BN running stats) over ranks.

    DDP runs with ``broadcast_buffers=False`` (memory banks are per-rank state that rank 0 must not
    overwrite every step), so each rank's BN statistics drift on its own shard. Averaging them at epoch
    end makes every rank evaluate and save the same network.
    """
    if not env.enabled:
        return
    for b in module.buffers():
        if b.is_floating_point():
            dist.all_reduce(b, op=dist.ReduceOp.SUM)
            b.div_(env.world_size)


def broadcast_error(fn: Callable[[], T], env: DistEnv) -> T | None:
    """Run ``fn`` on rank 0 only; if it raises a user error, raise the same message on every rank.

    Checks that touch the file system (does ``--out`` hold another run?) must be decided once, or one
    rank fails while the others wait forever in the next collective.
    """
    if not env.enabled:
        return fn()
    result: Any = None
    msg: list[Any] = [None]
    if env.is_main:
        try:
            result = fn()
        except (UserError, ValueError, FileNotFoundError) as e:
            msg[0] = str(e)
    dist.broadcast_object_list(msg, src=0)
    if msg[0] is not None:
        raise UserError(msg[0])
    return result


def param_divergence(module: nn.Module, env: DistEnv) -> float:
    """Largest |difference| of any parameter between rank 0 and another rank (0.0 = in sync)."""
    if not env.enabled:
        return 0.0
    flat = torch.cat([p.detach().reshape(-1).double() for p in module.parameters()])
    ref = flat.clone()
    dist.broadcast(ref, src=0)
    diff = (flat - ref).abs().max().reshape(1)
    all_reduce_max(diff, env)
    return float(diff.item())
