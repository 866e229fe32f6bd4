"""Variational information distillation: maximise a Gaussian lower bound on I(teacher; student)."""

from __future__ import annotations

import math
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import nn

from .at import match_spatial, stage_pairs
from .base import BuildContext, Distiller, Outputs
from .options import Range, Weight
from .registry import register_method

__all__ = ["VID", "VIDRegressor", "vid_nll"]


def vid_nll(pred_mean: torch.Tensor, target: torch.Tensor, log_scale: torch.Tensor,
            eps: float = 1e-5) -> torch.Tensor:
    """Mean Gaussian negative log-likelihood (without the constant) with per-channel variance.

    ``var = softplus(log_scale) + eps``; loss = ``mean(0.5·((μ - t)^2 / var + log var))``.
    """
    var = (F.softplus(log_scale.float()) + eps).view(1, -1, 1, 1)
    return (0.5 * ((pred_mean.float() - target.float()).pow(2) / var + var.log())).mean()


class VIDRegressor(nn.Module):
    """Per-pair variational head: a 3-layer 1×1-conv MLP predicting the teacher map's mean, plus a
    learned per-channel variance (softplus-parameterised so it stays positive)."""

    def __init__(self, s_channels: int, t_channels: int, mid_channels: int | None = None,
                 init_pred_var: float = 5.0, eps: float = 1e-5) -> None:
        super().__init__()
        mid = mid_channels or t_channels
        self.mean = nn.Sequential(
            nn.Conv2d(s_channels, mid, 1, bias=False), nn.ReLU(),
            nn.Conv2d(mid, mid, 1, bias=False), nn.ReLU(),
            nn.Conv2d(mid, t_channels, 1, bias=False),
        )
        # inverse softplus, so the initial variance is exactly init_pred_var
        self.log_scale = nn.Parameter(torch.full((t_channels,), math.log(math.expm1(init_pred_var - eps))))
        self.eps = eps

    def forward(self, f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
        f_s, f_t = match_spatial(f_s, f_t)
        return vid_nll(self.mean(f_s), f_t, self.log_scale, self.eps)


@register_method
class VID(Distiller):
    """Ahn et al., "Variational Information Distillation for Knowledge Transfer" (CVPR 2019).

    One :class:`VIDRegressor` per stage pair after the stem (pairing as AT), mid width = teacher width,
    initial variance 5 (the authors' code); summed NLLs weighted by beta=1 on top of 1·CE + 1·KD.
    """

    name = "vid"
    paper = "Ahn et al. 2019, arXiv:1904.05835"

    def __init__(self, student: nn.Module, teacher: nn.Module | None, ctx: BuildContext, *,
                 beta: Weight = 1.0, init_pred_var: Annotated[float, Range(gt=1e-5, le=100)] = 5.0,
                 ce_weight: Weight = 1.0, kd_weight: Weight = 1.0, **kw) -> None:
        super().__init__(student, teacher, ctx, ce_weight=ce_weight, kd_weight=kd_weight, **kw)
        self.beta = beta
        assert teacher is not None and self.t_tap is not None
        s, t = self.probe(ctx.example_input)
        assert t is not None
        pairs = self.pairs(s, t)
        if not pairs:
            raise ValueError("vid found no stage pairs after the stem; pass student_layers=/teacher_layers=")
        self.regressors = nn.ModuleList(
            VIDRegressor(fs.shape[1], ft.shape[1], ft.shape[1], init_pred_var) for fs, ft in pairs
        ).to(ctx.example_input.device)

    def pairs(self, s: Outputs, t: Outputs) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return stage_pairs(self, s, t)

    def distill_losses(self, s: Outputs, t: Outputs | None, targets: torch.Tensor,
                       index: torch.Tensor | None) -> dict[str, torch.Tensor]:
        assert t is not None
        total = sum(reg(fs, ft) for reg, (fs, ft) in zip(self.regressors, self.pairs(s, t), strict=True))
        return {"vid": self.beta * total}
