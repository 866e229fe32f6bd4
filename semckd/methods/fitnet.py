"""FitNet: regress one student stage onto the teacher's corresponding stage (a "hint")."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import BuildContext, Distiller, Outputs
from .options import Index, Weight
from .registry import register_method

__all__ = ["REPDISTILLER_HINT_LAYER", "SEMCKD_HINT_LAYER", "ConvReg", "FitNet"]


class ConvReg(nn.Module):
    """Map a student feature map to the teacher's channel count and spatial size (conv → BN → ReLU).

    The spatial rule is the SemCKD code's (``models/util.py`` ``ConvReg``): a stride-2 3×3 conv when the
    student map is twice as large, a stride-2 transposed conv when it is half as large, a valid conv whose
    kernel absorbs the size difference when it is larger (1×1 when sizes match), and — the fourth case,
    a student map smaller but not half the teacher's — a same-size 3×3 conv, with the *teacher* map
    average-pooled down to the student's size (:meth:`match_target`). The final ReLU matches teacher
    targets taken after a ReLU.
    """

    def __init__(self, s_shape: torch.Size, t_shape: torch.Size, use_relu: bool = True) -> None:
        super().__init__()
        for side, shape in (("student", s_shape), ("teacher", t_shape)):
            if len(shape) != 4:
                raise ValueError(f"FitNet regresses feature maps (N, C, H, W) but the {side}'s hint layer "
                                 f"gives shape {tuple(shape)}; tap a convolutional stage "
                                 f"({side}_layers=/hint_layer=)")
        s_c, s_h, s_w = int(s_shape[1]), int(s_shape[2]), int(s_shape[3])
        t_c, t_h, t_w = int(t_shape[1]), int(t_shape[2]), int(t_shape[3])
        target_size: tuple[int, int] | None = None  # set when the teacher map must shrink to the student's
        if s_h == 2 * t_h and s_w == 2 * t_w:
            self.conv: nn.Module = nn.Conv2d(s_c, t_c, kernel_size=3, stride=2, padding=1)
        elif 2 * s_h == t_h and 2 * s_w == t_w:
            self.conv = nn.ConvTranspose2d(s_c, t_c, kernel_size=4, stride=2, padding=1)
        elif s_h >= t_h and s_w >= t_w:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=(1 + s_h - t_h, 1 + s_w - t_w))
        elif s_h <= t_h and s_w <= t_w:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=3, stride=1, padding=1)
            target_size = (s_h, s_w)
        else:
            raise ValueError(f"cannot regress a {s_h}x{s_w} student map onto a {t_h}x{t_w} teacher map (one "
                             "side larger, the other smaller); pick other hint layers "
                             "(hint_layer=/teacher_hint_layer=)")
        self.target_size = target_size
        self.bn = nn.BatchNorm2d(t_c)
        self.use_relu = use_relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return F.relu(x) if self.use_relu else x

    def match_target(self, t: torch.Tensor) -> torch.Tensor:
        """The teacher map the output is compared with: pooled to the student's size in the fourth case."""
        return t if self.target_size is None else F.adaptive_avg_pool2d(t, self.target_size)


SEMCKD_HINT_LAYER = 1  # SemCKD/SimKD train_student.py --hint_layer default: index into is_feat (stem = 0)
REPDISTILLER_HINT_LAYER = 2  # RepDistiller's (CRD paper's) --hint_layer default


@register_method
class FitNet(Distiller):
    """Romero et al., "FitNets: Hints for Thin Deep Nets" (ICLR 2015).

    One student stage (the "guided layer") is passed through a trainable :class:`ConvReg` and regressed
    (MSE) onto the teacher's stage (the "hint"). The paper's two-stage schedule (hint pre-training, then
    KD) is replaced, as in RepDistiller and the SemCKD code, by one joint objective
    ``1·CE + 1·KD + 100·MSE`` (SemCKD ``--distill hint -r 1 -a 1 -b 100``). ``hint_layer`` indexes the
    tapped stage list of both networks, like the authors' flag (zoo stage lists are the authors'
    ``is_feat`` maps, stem = 0); the default ``None`` means the SemCKD/SimKD scripts' ``--hint_layer 1``
    (the first stage after the stem; the SemCKD/SimKD tables' FitNet rows use it), or the deepest tapped
    stage when fewer than two are tapped. RepDistiller, and so the CRD paper's FitNet rows, default to
    ``hint_layer=2``. ``teacher_hint_layer`` overrides the teacher side.
    """

    name = "fitnet"
    paper = "Romero et al. 2015, arXiv:1412.6550"

    def __init__(self, student: nn.Module, teacher: nn.Module | None, ctx: BuildContext, *,
                 beta: Weight = 100.0, hint_layer: Index | None = None,
                 teacher_hint_layer: Index | None = None,
                 ce_weight: Weight = 1.0, kd_weight: Weight = 1.0, **kw) -> None:
        super().__init__(student, teacher, ctx, ce_weight=ce_weight, kd_weight=kd_weight, **kw)
        self.beta = beta
        s, t = self.probe(ctx.example_input)
        assert t is not None
        if hint_layer is None:
            s_idx = min(SEMCKD_HINT_LAYER, len(s.feats) - 1)
            t_idx = min(SEMCKD_HINT_LAYER, len(t.feats) - 1)
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
        target = self.regressor.match_target(t.feats[self.t_idx])
        return {"fitnet": self.beta * F.mse_loss(pred.float(), target.float())}
