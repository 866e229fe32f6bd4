"""Attention transfer: match normalised spatial attention maps of paired stages."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import BuildContext, Distiller, Outputs
from .options import Positive, Weight
from .registry import register_method

__all__ = ["AT", "attention_map", "at_loss", "match_spatial", "stage_pairs"]


def stage_pairs(d: Distiller, s: Outputs, t: Outputs) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The authors' ``zip(feat_s[1:-1], feat_t[1:-1])`` on the tapped stages of ``d``'s networks.

    The stem is dropped by the shared rule (:meth:`Distiller.student_stages`: the declared stem of a
    zoo model; layers named explicitly are all used). When the counts differ, ``zip`` pairs the
    shallowest stages in order and leaves the longer network's deepest extra stages unused, exactly as
    in RepDistiller/SemCKD.
    """
    return list(zip(d.student_stages(s.feats), d.teacher_stages(t.feats), strict=False))


def match_spatial(f_s: torch.Tensor, f_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pool the larger map down to the smaller one's size (RepDistiller's rule)."""
    hs, ws = f_s.shape[-2:]
    ht, wt = f_t.shape[-2:]
    if (hs, ws) == (ht, wt):
        return f_s, f_t
    h, w = min(hs, ht), min(ws, wt)
    if (hs, ws) != (h, w):
        f_s = F.adaptive_avg_pool2d(f_s, (h, w))
    if (ht, wt) != (h, w):
        f_t = F.adaptive_avg_pool2d(f_t, (h, w))
    return f_s, f_t


def attention_map(f: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Channel-mean of ``|f|^p``, flattened and L2-normalised per sample: (B, H·W)."""
    return F.normalize(f.float().pow(p).mean(1).flatten(1), dim=1)


def at_loss(f_s: torch.Tensor, f_t: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Mean squared difference of the two attention maps (RepDistiller's form, used by the SemCKD code)."""
    f_s, f_t = match_spatial(f_s, f_t)
    return (attention_map(f_s, p) - attention_map(f_t, p)).pow(2).mean()


@register_method
class AT(Distiller):
    """Zagoruyko & Komodakis, "Paying More Attention to Attention" (ICLR 2017).

    Every stage pair after the stem (see :func:`stage_pairs`) contributes
    ``mean((Q_s - Q_t)^2)`` with ``Q = normalize(mean_c f^p)``, p=2; the sum is weighted by beta=1000 on
    top of 1·CE + 1·KD (SemCKD's ``-r 1 -a 1 -b 1000``).
    """

    name = "at"
    paper = "Zagoruyko & Komodakis 2017, arXiv:1612.03928"

    def __init__(self, student: nn.Module, teacher: nn.Module | None, ctx: BuildContext, *,
                 beta: Weight = 1000.0, p: Positive = 2.0, ce_weight: Weight = 1.0, kd_weight: Weight = 1.0,
                 **kw) -> None:
        super().__init__(student, teacher, ctx, ce_weight=ce_weight, kd_weight=kd_weight, **kw)
        self.beta = beta
        self.p = p
        assert teacher is not None and self.t_tap is not None
        s, t = self.probe(ctx.example_input)
        assert t is not None
        if not self.pairs(s, t):
            raise ValueError("at found no stage pairs after the stem; pass student_layers=/teacher_layers=")

    def pairs(self, s: Outputs, t: Outputs) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return stage_pairs(self, s, t)

    def distill_losses(self, s: Outputs, t: Outputs | None, targets: torch.Tensor,
                       index: torch.Tensor | None) -> dict[str, torch.Tensor]:
        assert t is not None
        total = sum(at_loss(fs, ft, self.p) for fs, ft in self.pairs(s, t))
        return {"at": self.beta * total}
