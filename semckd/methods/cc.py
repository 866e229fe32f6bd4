"""Correlation congruence: match the batch's instance-correlation matrices of embedded features."""

from __future__ import annotations

import math
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import nn

from .base import BuildContext, Distiller, Outputs
from .options import Count, OneOf, Positive, Range, Weight
from .registry import register_method

__all__ = ["CC", "cc_loss", "cc_loss_repdistiller", "gaussian_correlation"]

VARIANTS = ("gaussian", "repdistiller")


def gaussian_correlation(f: torch.Tensor, gamma: float = 0.4, order: int = 2) -> torch.Tensor:
    """Order-P Taylor approximation of the Gaussian RBF kernel between L2-normalised rows of ``f``.

    For unit vectors ``exp(-γ||x-y||²) = exp(-2γ)·exp(2γ·x·y)``; expanding the second factor to order P
    gives ``Σ_p exp(-2γ)(2γ)^p / p! · (x·y)^p`` (Peng et al. eq. 8).
    """
    f = F.normalize(f.float().flatten(1), dim=1)
    sim = f @ f.t()
    out = torch.zeros_like(sim)
    for p in range(order + 1):
        out = out + math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) * sim.pow(p)
    return out


def cc_loss(f_s: torch.Tensor, f_t: torch.Tensor, gamma: float = 0.4, order: int = 2) -> torch.Tensor:
    """``||C_t - C_s||²_F / B²``: mean squared difference of the two correlation matrices."""
    return F.mse_loss(gaussian_correlation(f_s, gamma, order), gaussian_correlation(f_t, gamma, order))


def cc_loss_repdistiller(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """The ``Correlation`` loss in RepDistiller/SemCKD's code (credited to Peng et al. by e-mail).

    ``mean_i Σ_d |Δ_i|·|Δ_{i+1}|`` with ``Δ = f_s - f_t``: a product of neighbouring samples' embedding
    errors rather than a kernel matrix; needs equal embed widths (both sides use ``feat_dim``).
    """
    delta = (f_s.float() - f_t.float()).abs()
    return (delta[:-1] * delta[1:]).sum(1).mean()


@register_method
class CC(Distiller):
    """Peng et al., "Correlation Congruence for Knowledge Distillation" (ICCV 2019).

    Both pooled embeddings go through their own trainable linear ``Embed`` to ``feat_dim=128`` (as in the
    RepDistiller/SemCKD code, which trains the teacher-side embed too), weighted by beta=0.02 on top of
    1·CE + 1·KD (SemCKD's ``--distill correlation -r 1 -a 1 -b 0.02``). The default
    ``variant="repdistiller"`` is the loss the SemCKD paper's CC row was trained with: the code's
    ``Correlation`` (``distiller_zoo/CC.py``), a kernel-free product of neighbouring samples' embedding
    errors, for which 0.02 was tuned. ``variant="gaussian"`` is the paper's formula instead (order-P
    Taylor-approximated Gaussian kernel, γ=0.4); it is ~1e-5 at that weight, so raise ``beta`` with it
    (see docs/methods.md).
    """

    name = "cc"
    paper = "Peng et al. 2019, arXiv:1904.01802"

    def __init__(self, student: nn.Module, teacher: nn.Module | None, ctx: BuildContext, *,
                 beta: Weight = 0.02, feat_dim: Count = 128, gamma: Positive = 0.4,
                 order: Annotated[int, Range(ge=0)] = 2,
                 variant: Annotated[str, OneOf(VARIANTS)] = "repdistiller",
                 ce_weight: Weight = 1.0, kd_weight: Weight = 1.0, **kw) -> None:
        super().__init__(student, teacher, ctx, ce_weight=ce_weight, kd_weight=kd_weight, **kw)
        self.beta, self.gamma, self.order, self.variant = beta, gamma, order, variant
        s, t = self.probe(ctx.example_input)
        assert t is not None
        dev = ctx.example_input.device
        # not named "student"/"teacher": those key components are filtered out of extras_state_dict
        self.embed_s = nn.Linear(s.embedding.shape[1], feat_dim).to(dev)
        self.embed_t = nn.Linear(t.embedding.shape[1], feat_dim).to(dev)

    def distill_losses(self, s: Outputs, t: Outputs | None, targets: torch.Tensor,
                       index: torch.Tensor | None) -> dict[str, torch.Tensor]:
        assert t is not None
        e_s, e_t = self.embed_s(s.embedding), self.embed_t(t.embedding)
        if self.variant == "gaussian":
            loss = cc_loss(e_s, e_t, self.gamma, self.order)
        else:
            loss = cc_loss_repdistiller(e_s, e_t)
        return {"cc": self.beta * loss}
