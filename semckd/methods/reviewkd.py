"""ReviewKD: Distilling Knowledge via Knowledge Review (Chen, Liu, Zhao & Jia, CVPR 2021).

"Review": a student level is supervised by the teacher's same *and* shallower levels. The paper's final
design realises this on the student side: the student's levels are fused from deep to shallow by
attention-based fusion (ABF) modules, so the feature compared with teacher level ``i`` is built from
student levels ``i..L``; every teacher level thus supervises all deeper student levels through the
fusion path. The comparison is the hierarchical context loss (HCL): MSE at full resolution plus MSE after
adaptive average pooling to 4×4, 2×2, 1×1 (weights 1, ½, ¼, ⅛, normalised), summed over levels.

Levels (dvlab-research/ReviewKD ``CIFAR-100/model/reviewkd.py`` and ``train.py``): the stage outputs
after the stem plus the pooled embedding as a 1×1 map, for both networks (the authors' ``feat[1:]``).
Defaults: CE 1, ReviewKD weight 1.0 ramped linearly over the first 20 epochs
(``min(1, epoch / 20)``, as ``--kd-warm-up 20``), no KD term. The authors' CIFAR scripts raise the
weight per pair (5.0 for resnet32x4→resnet8x4, 8.0 for →ShuffleNetV2); the recipes set those.

Teacher levels are pre-activation, as in the authors' ``teacher(images, is_feat=True, preact=True)``
(``teacher_preact=True``): the zoo models declare ``preact_stage_names`` (CIFAR ResNets and ImageNet
ResNets: each stage's residual sum before its last ReLU; VGG: each block before its ReLU; WRN: each group
through the next BN), tapped by a second hook on the teacher. A teacher that declares none (MobileNetV2,
ShuffleNets, models outside the zoo) and ``teacher_preact=False`` use the post-activation stage outputs;
student levels are always post-activation (the authors' ``STU_PREACT = False``). Deliberate difference,
documented in ``docs/methods.md``: when the two networks have different numbers of levels the deepest
``min(S, T)`` are paired (the authors hand-pick per architecture pair).
"""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from torch import nn

from ..features import FeatureTap, unwrap
from .base import BuildContext, Distiller, Outputs
from .options import Count, Range, Weight
from .registry import register_method

__all__ = ["ABF", "ReviewKD", "hcl_loss"]


class ABF(nn.Module):
    """Attention-based fusion: 1×1 conv of this level, gated sum with the deeper level's residual, 3×3 out.

    Returns ``(output for the loss, residual passed to the next shallower level)``.
    """

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, mid_channels, kernel_size=1, bias=False),
                                   nn.BatchNorm2d(mid_channels))
        self.conv2 = nn.Sequential(
            nn.Conv2d(mid_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels))
        self.att_conv = (nn.Sequential(nn.Conv2d(mid_channels * 2, 2, kernel_size=1), nn.Sigmoid())
                         if fuse else None)
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None,
                out_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.conv1(x)
        if self.att_conv is not None:
            assert residual is not None
            residual = F.interpolate(residual, size=x.shape[-2:], mode="nearest")
            z = self.att_conv(torch.cat([x, residual], dim=1))
            x = x * z[:, 0:1] + residual * z[:, 1:2]
        if tuple(x.shape[-2:]) != tuple(out_size):
            x = F.interpolate(x, size=out_size, mode="nearest")
        return self.conv2(x), x


def hcl_loss(f_s: list[torch.Tensor], f_t: list[torch.Tensor]) -> torch.Tensor:
    """Hierarchical context loss, summed over level pairs (shapes must match pairwise)."""
    total = f_s[0].new_zeros((), dtype=torch.float32)
    for fs, ft in zip(f_s, f_t, strict=True):
        fs, ft = fs.float(), ft.float()
        h = fs.shape[-2]
        loss = F.mse_loss(fs, ft)
        cnt, tot = 1.0, 1.0
        for level in (4, 2, 1):
            if level >= h:
                continue
            cnt /= 2.0
            loss = loss + cnt * F.mse_loss(F.adaptive_avg_pool2d(fs, level), F.adaptive_avg_pool2d(ft, level))
            tot += cnt
        total = total + loss / tot
    return total


@register_method
class ReviewKD(Distiller):
    """Knowledge review: ABF fusion of the student's levels (deep → shallow) and HCL to the teacher's."""

    name = "reviewkd"
    paper = "Chen et al., Distilling Knowledge via Knowledge Review, CVPR 2021 (arXiv:2104.09044)"

    def __init__(self, student: nn.Module, teacher: nn.Module | None, ctx: BuildContext, *,
                 ce_weight: Weight = 1.0, kd_weight: Weight = 0.0, beta: Weight = 1.0,
                 warmup_epochs: Annotated[float, Range(ge=0)] = 20.0, max_mid_channels: Count = 512,
                 teacher_preact: bool = True, **kw) -> None:
        super().__init__(student, teacher, ctx, ce_weight=ce_weight, kd_weight=kd_weight, **kw)
        self.teacher_preact = teacher_preact
        preact_names = getattr(unwrap(teacher), "preact_stage_names", None) if teacher is not None else None
        # a second tap on the teacher (not the shared one), so this also holds inside a combination;
        # only in place of the declared stages (stem first, like them), never of layers named explicitly
        self._t_preact_tap: FeatureTap | None = None
        if teacher_preact and preact_names and self.stem_dropped[1]:
            self._t_preact_tap = FeatureTap(teacher, list(preact_names), detach=True)
        self.beta = beta
        self.warmup_epochs = warmup_epochs
        self.track_epoch()  # a resumed run continues the warm-up
        s, t = self.probe(ctx.example_input)
        assert t is not None
        ls, lt = self._paired(s, t)
        in_ch = [f.shape[1] for f in ls]
        out_ch = [f.shape[1] for f in lt]
        mid = min(max_mid_channels, in_ch[-1])
        # built shallow → deep; the deepest level has nothing deeper to fuse with
        n = len(in_ch)
        pairs = enumerate(zip(in_ch, out_ch, strict=True))
        self.abfs = nn.ModuleList(ABF(ci, mid, co, fuse=i < n - 1) for i, (ci, co) in pairs)
        self.abfs.to(ctx.example_input.device)

    def levels(self, o: Outputs, teacher: bool = False) -> list[torch.Tensor]:
        """Stage maps after the stem plus the pooled embedding as a 1×1 map, shallow → deep."""
        feats = self.teacher_stages(o.feats) if teacher else self.student_stages(o.feats)
        return feats + [o.embedding[:, :, None, None]]

    def teacher_outputs(self, t: Outputs) -> Outputs:
        """``t`` with its stage maps replaced by the pre-activation ones when those are tapped."""
        if self._t_preact_tap is None:
            return t
        return Outputs(t.logits, self._t_preact_tap.features, t.embedding)

    def _paired(self, s: Outputs, t: Outputs) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        ls, lt = self.levels(s), self.levels(self.teacher_outputs(t), teacher=True)
        n = min(len(ls), len(lt))
        return ls[len(ls) - n:], lt[len(lt) - n:]

    def levels_pair(self, s: Outputs, t: Outputs) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(reviewed student features, teacher targets), shallow → deep, pairwise equal shapes."""
        ls, lt = self._paired(s, t)
        out: list[torch.Tensor] = []
        residual = None
        for x, target, abf in zip(reversed(ls), reversed(lt), reversed(list(self.abfs)), strict=True):
            y, residual = abf(x, residual, tuple(target.shape[-2:]))
            out.insert(0, y)
        return out, lt

    def remove_taps(self) -> None:
        super().remove_taps()
        if self._t_preact_tap is not None:
            self._t_preact_tap.remove()

    def distill_losses(self, s: Outputs, t: Outputs | None, targets: torch.Tensor,
                       index: torch.Tensor | None) -> dict[str, torch.Tensor]:
        assert t is not None
        f_s, f_t = self.levels_pair(s, t)
        return {"reviewkd": self.beta * self.ramp(self.warmup_epochs) * hcl_loss(f_s, f_t)}
