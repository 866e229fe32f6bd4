"""Probabilistic knowledge transfer: match conditional-probability distributions over the batch."""

from __future__ import annotations

import torch
from torch import nn

from .base import BuildContext, Distiller, Outputs
from .options import Weight
from .registry import register_method

__all__ = ["PKT", "pkt_loss"]


def _conditional_probs(f: torch.Tensor, eps: float) -> torch.Tensor:
    f = f.float().flatten(1)
    f = f / (f.norm(dim=1, keepdim=True) + eps)
    sim = (f @ f.t() + 1.0) / 2.0  # cosine kernel mapped to [0, 1]
    return sim / sim.sum(dim=1, keepdim=True)


def pkt_loss(f_s: torch.Tensor, f_t: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Mean over all B² entries of ``p_t · log((p_t + eps) / (p_s + eps))`` (the authors' code).

    ``p_{j|i} = K(i, j) / Σ_j K(i, j)`` with the cosine kernel ``K = (cos + 1) / 2``, so student and
    teacher embedding widths may differ.
    """
    p_s = _conditional_probs(f_s, eps)
    p_t = _conditional_probs(f_t, eps)
    return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()


@register_method
class PKT(Distiller):
    """Passalis & Tefas, "Learning Deep Representations with Probabilistic Knowledge Transfer" (ECCV 2018).

    Applied to the pooled embedding (the classifier's input; the authors' ``feat[-1]``), weighted by
    beta=30000 on top of 1·CE + 1·KD (SemCKD's ``-r 1 -a 1 -b 30000``).
    """

    name = "pkt"
    paper = "Passalis & Tefas 2018, arXiv:1803.10837"

    def __init__(self, student: nn.Module, teacher: nn.Module | None, ctx: BuildContext, *,
                 beta: Weight = 30000.0, ce_weight: Weight = 1.0, kd_weight: Weight = 1.0, **kw) -> None:
        super().__init__(student, teacher, ctx, ce_weight=ce_weight, kd_weight=kd_weight, **kw)
        self.beta = beta

    def distill_losses(self, s: Outputs, t: Outputs | None, targets: torch.Tensor,
                       index: torch.Tensor | None) -> dict[str, torch.Tensor]:
        assert t is not None
        return {"pkt": self.beta * pkt_loss(s.embedding, t.embedding)}
