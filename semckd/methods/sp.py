"""Similarity-preserving KD: match the batch's sample-similarity (Gram) matrices."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import BuildContext, Distiller, Outputs
from .options import Weight
from .registry import register_method

__all__ = ["SP", "sp_loss"]


def sp_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """``||norm(G_t) - norm(G_s)||_F^2 / B^2`` with ``G = F F^T`` row-L2-normalised (Tung & Mori eq. 2–4).

    Only the batch dimension must agree: channel counts and spatial sizes may differ.
    """
    b = f_s.shape[0]
    a_s = f_s.float().reshape(b, -1)
    a_t = f_t.float().reshape(b, -1)
    g_s = F.normalize(a_s @ a_s.t(), dim=1)
    g_t = F.normalize(a_t @ a_t.t(), dim=1)
    return (g_t - g_s).pow(2).sum() / (b * b)


@register_method
class SP(Distiller):
    """Tung & Mori, "Similarity-Preserving Knowledge Distillation" (ICCV 2019).

    Applied to the last tapped stage of each network (the authors' ``feat[-2]``, the final map before
    pooling), weighted by beta=3000 on top of 1·CE + 1·KD (SemCKD's ``-r 1 -a 1 -b 3000``).
    """

    name = "sp"
    paper = "Tung & Mori 2019, arXiv:1907.09682"

    def __init__(self, student: nn.Module, teacher: nn.Module | None, ctx: BuildContext, *,
                 beta: Weight = 3000.0, ce_weight: Weight = 1.0, kd_weight: Weight = 1.0, **kw) -> None:
        super().__init__(student, teacher, ctx, ce_weight=ce_weight, kd_weight=kd_weight, **kw)
        self.beta = beta

    def distill_losses(self, s: Outputs, t: Outputs | None, targets: torch.Tensor,
                       index: torch.Tensor | None) -> dict[str, torch.Tensor]:
        assert t is not None
        return {"sp": self.beta * sp_loss(s.feats[-1], t.feats[-1])}
