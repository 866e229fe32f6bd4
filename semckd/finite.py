"""Finiteness guards: a run stops at the first NaN/inf, before any checkpoint could be overwritten.

Two checks, both agreed over DDP ranks (all-reduced max) so every process stops together:
:func:`check_loss_finite` on the running loss sums during an epoch, and :func:`check_state_finite` on the
whole state after it (a finite loss can still leave inf in BatchNorm statistics or optimizer state).
``kept`` in both gives the engine's sentence about which checkpoint survives (asked only on failure).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from . import distributed as D
from .errors import UserError

__all__ = ["NonFiniteLossError", "check_loss_finite", "check_state_finite", "nonfinite_tensors"]

_FIX = "lower --lr or the method's loss weights"


class NonFiniteLossError(UserError):
    """The loss became NaN/inf; training stopped before any checkpoint could be overwritten."""


def nonfinite_tensors(parts: dict[str, Any]) -> list[str]:
    """Names of floating tensors holding NaN/inf in nested state (parameters, buffers, optimizer state)."""
    bad: list[str] = []

    def walk(prefix: str, obj: Any) -> None:
        if isinstance(obj, torch.Tensor):
            if obj.is_floating_point() and not bool(torch.isfinite(obj).all()):
                bad.append(prefix)
        elif isinstance(obj, dict):
            for k, v in obj.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                walk(f"{prefix}.{i}", v)

    walk("", parts)
    return bad


def check_loss_finite(sums: torch.Tensor, names: list[str], epoch: int, step: int, env: D.DistEnv,
                      kept: Callable[[], str]) -> None:
    """Stop when the running total loss (``sums[0]``; ``sums[3:]`` are the terms ``names``) is not finite."""
    bad = (~torch.isfinite(sums[:1])).to(torch.float32)
    D.all_reduce_max(bad, env)
    if bad.item() == 0:
        return
    terms = [n for i, n in enumerate(names) if not math.isfinite(float(sums[3 + i]))]
    raise NonFiniteLossError(
        f"loss became non-finite at epoch {epoch}, step {step} (terms: {', '.join(terms) or 'total'}); "
        f"training stopped and {kept()}; {_FIX}")


def check_state_finite(state: dict[str, Any], test_loss: float, epoch: int, device: torch.device,
                       env: D.DistEnv, kept: Callable[[], str]) -> None:
    """A checkpoint is only called good if every tensor in ``state``, and its test loss, is finite.

    Such a checkpoint would evaluate at chance and poison every resume from it.
    """
    bad = nonfinite_tensors(state)
    flag = torch.tensor([float(bool(bad)) + 2.0 * (not math.isfinite(test_loss))], device=device)
    D.all_reduce_max(flag, env)
    f = int(flag.item())
    if f == 0:
        return
    if bad:
        what = f"{len(bad)} tensor(s) of the model state became non-finite (e.g. {', '.join(bad[:3])})"
    elif f & 1:
        what = "the model state became non-finite on another process"
    else:
        what = f"the test loss became non-finite ({test_loss})"
    raise NonFiniteLossError(f"after epoch {epoch} {what}; training stopped without writing that "
                             f"epoch's checkpoint and {kept()}; {_FIX}")
