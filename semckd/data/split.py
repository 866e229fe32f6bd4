"""A validation split held out of the training images, so that choices (the best epoch, a loss weight)
are made on data the test set never sees.

The split is stratified (each class keeps its share, so a small split still covers every class) and
drawn from its own seed, not the run's: every method and every training seed of a table validates on
the very same images, and a table can compare them fairly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import UserError
from .loader import _generator

__all__ = ["stratified_holdout"]


def stratified_holdout(targets: torch.Tensor | Sequence[int], n_val: int, seed: int = 0
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train_idx, val_idx)``: ``n_val`` indices drawn class by class in proportion to class sizes
    (largest remainder, so the total is exactly ``n_val``), the rest kept for training in their original
    order (so ``--limit-train N`` still means "the first N", now of the remaining images)."""
    y = torch.as_tensor(targets, dtype=torch.int64).cpu()
    n = int(y.numel())
    if n_val < 0:
        raise UserError(f"--val-split must be >= 0, got {n_val}")
    if n_val >= n:
        raise UserError(f"--val-split {n_val} leaves no training images (the training set has {n}); "
                        "use a smaller --val-split")
    classes, counts = torch.unique(y, return_counts=True)
    if n_val < len(classes):
        raise UserError(f"--val-split {n_val} cannot hold one image of each of the {len(classes)} classes; "
                        f"use at least {len(classes)}")
    quota = counts.double() * n_val / n
    take = quota.floor().long()
    rest = n_val - int(take.sum())
    if rest:  # largest remainders first; ties broken by class order (deterministic)
        order = torch.argsort(quota - take.double(), descending=True, stable=True)
        take[order[:rest]] += 1
    g = _generator(seed, 0, "val_split")
    picked = []
    for c, k in zip(classes.tolist(), take.tolist(), strict=True):
        members = (y == c).nonzero().flatten()
        picked.append(members[torch.randperm(len(members), generator=g)[:k]])
    val = torch.sort(torch.cat(picked)).values
    keep = torch.ones(n, dtype=torch.bool)
    keep[val] = False
    return keep.nonzero().flatten(), val
