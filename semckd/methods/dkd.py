"""Decoupled KD: split the KD loss into target-class (TCKD) and non-target-class (NCKD) parts."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import BuildContext, Distiller, Outputs, standardize_logits
from .options import Epochs, Weight
from .registry import register_method

__all__ = ["DKD", "dkd_loss"]


def dkd_loss(s_logits: torch.Tensor, t_logits: torch.Tensor, targets: torch.Tensor, alpha: float = 1.0,
             beta: float = 8.0, temperature: float = 4.0, standardize: bool = False) -> torch.Tensor:
    """``alpha·TCKD + beta·NCKD`` (Zhao et al. eq. 7), each a batch-mean KL times T².

    TCKD compares the binary distributions ``[p_gt, 1 - p_gt]``; NCKD compares the softmax over the
    non-target classes only. Computed in log space so a confident teacher (p_gt → 1) stays finite.
    """
    if standardize:
        s_logits, t_logits = standardize_logits(s_logits), standardize_logits(t_logits)
    z_s = s_logits.float() / temperature
    z_t = t_logits.float() / temperature
    gt = F.one_hot(targets, z_s.shape[1]).bool()

    def binary_log_probs(z: torch.Tensor) -> torch.Tensor:
        log_all = torch.logsumexp(z, dim=1)
        log_gt = z.gather(1, targets.view(-1, 1)).squeeze(1) - log_all
        log_other = torch.logsumexp(z.masked_fill(gt, float("-inf")), dim=1) - log_all
        return torch.stack([log_gt, log_other], dim=1)

    tckd = F.kl_div(binary_log_probs(z_s), binary_log_probs(z_t), reduction="batchmean", log_target=True)
    # softmax over the non-target classes only; the target column is then zeroed so it adds exactly 0
    # (masking instead of indexing keeps shapes static and avoids a host sync)
    nt_s = F.log_softmax(z_s.masked_fill(gt, float("-inf")), dim=1).masked_fill(gt, 0.0)
    nt_t = F.log_softmax(z_t.masked_fill(gt, float("-inf")), dim=1).masked_fill(gt, 0.0)
    nckd = F.kl_div(nt_s, nt_t, reduction="batchmean", log_target=True)
    return (alpha * tckd + beta * nckd) * temperature**2


@register_method
class DKD(Distiller):
    """Zhao et al., "Decoupled Knowledge Distillation" (CVPR 2022), mdistiller's CIFAR settings.

    ``1·CE + warm(epoch)·(1·TCKD + 8·NCKD)`` at T=4, where ``warm = min(epoch / 20, 1)`` ramps the
    distillation term in linearly over the first 20 epochs (epochs numbered from 1, as mdistiller; an
    epoch of 0 counts as the first). The epoch is the base class's (:meth:`~Distiller.on_epoch_start`,
    tracked in the ``epoch`` buffer), so it is saved with the checkpoint and a resumed run continues the
    ramp. No Hinton KD term
    (``kd_weight=0``). ``logit_std=True`` standardises both logits first (Sun et al., CVPR 2024);
    ``temperature`` is then the base temperature.
    """

    name = "dkd"
    paper = "Zhao et al. 2022, arXiv:2203.08679"

    def __init__(self, student: nn.Module, teacher: nn.Module | None, ctx: BuildContext, *,
                 alpha: Weight = 1.0, beta: Weight = 8.0, warmup: Epochs = 20, ce_weight: Weight = 1.0,
                 kd_weight: Weight = 0.0, **kw) -> None:
        super().__init__(student, teacher, ctx, ce_weight=ce_weight, kd_weight=kd_weight, **kw)
        self.alpha, self.beta, self.warmup = alpha, beta, warmup
        self.track_epoch()

    def distill_losses(self, s: Outputs, t: Outputs | None, targets: torch.Tensor,
                       index: torch.Tensor | None) -> dict[str, torch.Tensor]:
        assert t is not None
        loss = dkd_loss(s.logits, t.logits, targets, self.alpha, self.beta, self.temperature, self.logit_std)
        return {"dkd": self.ramp(self.warmup) * loss}
