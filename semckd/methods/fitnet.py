"""FitNet: regress one student stage onto the teacher's corresponding stage (a "hint")."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import BuildContext, Distiller, Outputs, register_method

__all__ = ["ConvReg", "FitNet"]


class ConvReg(nn.Module):
    """Map a student feature map to the teacher's channel count and spatial size (conv → BN → ReLU).

    The spatial rule is RepDistiller's: a stride-2 3×3 conv when the student map is twice as large, a
    stride-2 transposed conv when it is half as large, otherwise a valid conv whose kernel absorbs the size
    difference (1×1 when sizes match). The final ReLU matches teacher targets taken after a ReLU.
    """

    def __init__(self, s_shape: torch.Size, t_shape: torch.Size, use_relu: bool = True) -> None:
        super().__init__()
        s_c, s_h, s_w = int(s_shape[1]), int(s_shape[2]), int(s_shape[3])
        t_c, t_h, t_w = int(t_shape[1]), int(t_shape[2]), int(t_shape[3])
        if s_h == 2 * t_h and s_w == 2 * t_w:
            self.conv: nn.Module = nn.Conv2d(s_c, t_c, kernel_size=3, stride=2, padding=1)
        elif 2 * s_h == t_h and 2 * s_w == t_w:
            self.conv = nn.ConvTranspose2d(s_c, t_c, kernel_size=4, stride=2, padding=1)
        elif s_h >= t_h and s_w >= t_w:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=(1 + s_h - t_h, 1 + s_w - t_w))
        else:
            raise ValueError(f"cannot regress a {s_h}x{s_w} student map onto a {t_h}x{t_w} teacher map; pick "
                             "hint layers whose teacher map is not larger (hint_layer=/teacher_hint_layer=)")
        self.bn = nn.BatchNorm2d(t_c)
        self.use_relu = use_relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return F.relu(x) if self.use_relu else x


REPDISTILLER_HINT_LAYER = 2  # RepDistiller's --hint_layer default: index into the is_feat list (stem = 0)


@register_method
class FitNet(Distiller):
    """Romero et al., "FitNets: Hints for Thin Deep Nets" (ICLR 2015).

    One student stage (the "guided layer") is passed through a trainable :class:`ConvReg` and regressed
    (MSE) onto the teacher's stage (the "hint"). The paper's two-stage schedule (hint pre-training, then
    KD) is replaced, as in RepDistiller and the SemCKD code, by one joint objective
    ``1·CE + 1·KD + 100·MSE``. ``hint_layer`` indexes the tapped stage list of both networks, like
    RepDistiller's flag (zoo stage lists are the authors' ``is_feat`` maps, stem = 0); the default
    ``None`` means RepDistiller's 2 — the middle stage of the CIFAR ResNets/WRNs — or the deepest tapped
    stage when fewer than three are tapped. ``teacher_hint_layer`` overrides the teacher side.
    """

    name = "fitnet"
    paper = "Romero et al. 2015, arXiv:1412.6550"

    def __init__(self, student: nn.Module, teacher: nn.Module | None, ctx: BuildContext, *,
                 beta: float = 100.0, hint_layer: int | None = None, teacher_hint_layer: int | None = None,
                 ce_weight: float = 1.0, kd_weight: float = 1.0, **kw) -> None:
        super().__init__(student, teacher, ctx, ce_weight=ce_weight, kd_weight=kd_weight, **kw)
        self.beta = beta
        s, t = self.probe(ctx.example_input)
        assert t is not None
        if hint_layer is None:
            s_idx = min(REPDISTILLER_HINT_LAYER, len(s.feats) - 1)
            t_idx = min(REPDISTILLER_HINT_LAYER, len(t.feats) - 1)
        else:
            s_idx = t_idx = hint_layer
        if teacher_hint_layer is not None:
            t_idx = teacher_hint_layer
        for side, idx, n in (("student", s_idx, len(s.feats)), ("teacher", t_idx, len(t.feats))):
            if not -n <= idx < n:
                raise ValueError(f"{side} hint layer {idx} is out of range: the {side} has {n} tapped stages")
        self.s_idx, self.t_idx = s_idx, t_idx
        self.regressor = ConvReg(s.feats[s_idx].shape, t.feats[t_idx].shape).to(ctx.example_input.device)

    def distill_losses(self, s: Outputs, t: Outputs | None, targets: torch.Tensor,
                       index: torch.Tensor | None) -> dict[str, torch.Tensor]:
        assert t is not None
        pred = self.regressor(s.feats[self.s_idx])
        return {"fitnet": self.beta * F.mse_loss(pred.float(), t.feats[self.t_idx].float())}
