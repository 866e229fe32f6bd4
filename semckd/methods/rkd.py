"""Relational KD: match pairwise distances and triplet angles among the batch's embeddings."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import BuildContext, Distiller, Outputs
from .options import Weight
from .registry import register_method

__all__ = ["RKD", "pairwise_distance", "rkd_angle_loss", "rkd_distance_loss"]


def pairwise_distance(e: torch.Tensor, squared: bool = False, eps: float = 1e-12) -> torch.Tensor:
    """(B, B) Euclidean distances with an exact zero diagonal (so its sqrt never sees 0 in backward)."""
    sq = e.pow(2).sum(dim=1)
    d = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * e @ e.t()).clamp(min=eps)
    if not squared:
        d = d.sqrt()
    eye = torch.eye(e.shape[0], dtype=torch.bool, device=e.device)
    return d.masked_fill(eye, 0.0)


def _normalised_distances(e: torch.Tensor) -> torch.Tensor:
    # mean over the off-diagonal entries (all > 0 after the clamp), without a host sync
    d = pairwise_distance(e)
    n = e.shape[0]
    return d / (d.sum() / max(n * (n - 1), 1))


def rkd_distance_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """Huber (smooth-L1) between distance matrices, each divided by its mean off-diagonal distance."""
    s = f_s.float().flatten(1)
    with torch.no_grad():
        t_d = _normalised_distances(f_t.float().flatten(1))
    return F.smooth_l1_loss(_normalised_distances(s), t_d)


def _angles(e: torch.Tensor) -> torch.Tensor:
    diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)  # [i, j] = unit(e_j - e_i)
    return torch.bmm(diff, diff.transpose(1, 2)).flatten()  # [i, j, k] = cos of angle j-i-k


def rkd_angle_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """Huber between the cosines of all B³ triplet angles (degenerate triplets contribute 0 on both sides)."""
    with torch.no_grad():
        t_a = _angles(f_t.float().flatten(1))
    return F.smooth_l1_loss(_angles(f_s.float().flatten(1)), t_a)


@register_method
class RKD(Distiller):
    """Park et al., "Relational Knowledge Distillation" (CVPR 2019).

    On the pooled embeddings: ``beta · (w_d · L_distance + w_a · L_angle)`` with the paper's w_d=25,
    w_a=50 and beta=1, on top of 1·CE + 1·KD (SemCKD's ``-r 1 -a 1 -b 1``).
    """

    name = "rkd"
    paper = "Park et al. 2019, arXiv:1904.05068"

    def __init__(self, student: nn.Module, teacher: nn.Module | None, ctx: BuildContext, *,
                 beta: Weight = 1.0, w_d: Weight = 25.0, w_a: Weight = 50.0, ce_weight: Weight = 1.0,
                 kd_weight: Weight = 1.0, **kw) -> None:
        super().__init__(student, teacher, ctx, ce_weight=ce_weight, kd_weight=kd_weight, **kw)
        self.beta, self.w_d, self.w_a = beta, w_d, w_a

    def distill_losses(self, s: Outputs, t: Outputs | None, targets: torch.Tensor,
                       index: torch.Tensor | None) -> dict[str, torch.Tensor]:
        assert t is not None
        loss = self.w_d * rkd_distance_loss(s.embedding, t.embedding)
        loss = loss + self.w_a * rkd_angle_loss(s.embedding, t.embedding)
        return {"rkd": self.beta * loss}
