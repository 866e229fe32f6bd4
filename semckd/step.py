"""One training step, the same for the engine and for the benchmarks.

Why one function: the benchmarks claim to time "what the engine does per batch". When each kept its own
copy of the step (zero_grad, autocast, forward, loss sum, backward with or without a loss scaler,
optimizer step), a change to one (a scaler, a memory format, an op order) silently made the bench
measure something else. :func:`train_step` is that sequence once; the engine calls it per batch and
``benchmarks/bench`` wraps it in :func:`make_train_step`.

Op order (kept exactly; the kill -9/resume tests and the demo's numbers depend on it): ``zero_grad``
(``set_to_none``), forward of the distiller under the precision's autocast, the loss dict summed in its
own order outside autocast, backward (scaled when there is a :class:`torch.amp.GradScaler`), optimizer
step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .errors import UserError
from .precision import Precision

__all__ = ["StepResult", "make_train_step", "train_step"]


@dataclass
class StepResult:
    """What one step returns: the summed loss, the student's logits and each weighted term (all
    detached: the graph is gone after backward)."""

    loss: torch.Tensor
    logits: torch.Tensor
    losses: dict[str, torch.Tensor]


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
               targets: torch.Tensor, index: torch.Tensor | None, *, precision: Precision,
               device: torch.device, scaler: torch.amp.GradScaler | None = None,
               name: str = "the method") -> StepResult:
    """One optimisation step of ``model`` (a distiller, or its DDP wrapper: ``forward(images, targets,
    index) -> (logits, {name: weighted loss})``). ``name`` is how an error names the method."""
    optimizer.zero_grad(set_to_none=True)
    with precision.autocast(device):
        logits, losses = model(images, targets, index)
    if not losses:
        raise UserError(f"{name} returned no loss terms")
    loss = sum(losses.values())
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return StepResult(loss.detach(), logits.detach(), {k: v.detach() for k, v in losses.items()})


def make_train_step(model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device,
                    precision: Precision
                    ) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]:
    """``step(images, targets, index) -> loss``: :func:`train_step` bound to a model, optimizer and
    precision (with the precision's loss scaler), for timing outside the engine."""
    scaler = precision.grad_scaler(device)

    def step(x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
        return train_step(model, optimizer, x, y, idx, precision=precision, device=device,
                          scaler=scaler).loss

    return step
