"""SimKD: Knowledge Distillation with the Reused Teacher Classifier (Chen et al., CVPR 2022).

The student's final feature map is mapped by a small projector to the teacher's final feature space and
trained with a plain MSE to the teacher's final map; the teacher's (frozen) classifier is then *reused*
on the pooled projected feature, so the student's predictions at train **and** test time are
``teacher_head(avgpool(projector(student_final_map)))``. The student's own classifier is never used and
is frozen here (it would otherwise receive no gradient, which also breaks DDP's unused-parameter check).

Because inference needs the projector and the teacher's classifier, the trained student alone is not the
deployable model: use :meth:`SimKD.deployable_student` for evaluation and export.

Projector (DefangChen/SimKD ``models/util.py``, class ``SimKD``): 1×1 conv → BN → ReLU → 3×3 conv → BN →
ReLU → 1×1 conv → BN → ReLU, bottleneck width ``t_channels // factor`` (factor 2). The final BN-ReLU is
in the authors' code (the teacher's final map it regresses onto is itself post-ReLU). Spatial
alignment: the larger of the two final maps is adaptive-average-pooled to the smaller one's size.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from ..features import unwrap
from .base import BuildContext, Distiller, Outputs
from .options import Count, Weight
from .registry import register_method

__all__ = ["SimKD", "SimKDProjector", "SimKDStudent"]


class SimKDProjector(nn.Module):
    """Bottleneck 1×1-3×3-1×1 conv projector from ``s_channels`` to ``t_channels``."""

    def __init__(self, s_channels: int, t_channels: int, factor: int = 2) -> None:
        super().__init__()
        mid = max(1, t_channels // factor)
        self.transfer = nn.Sequential(
            nn.Conv2d(s_channels, mid, kernel_size=1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, t_channels, kernel_size=1, bias=False),
            nn.BatchNorm2d(t_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.transfer(x)


def _align(f_s: torch.Tensor, f_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pool the spatially larger map down to the smaller one's size (as the authors do)."""
    hs, ws = f_s.shape[-2:]
    ht, wt = f_t.shape[-2:]
    if hs * ws > ht * wt:
        f_s = F.adaptive_avg_pool2d(f_s, (ht, wt))
    elif hs * ws < ht * wt:
        f_t = F.adaptive_avg_pool2d(f_t, (hs, ws))
    return f_s, f_t


def _reuse_head(head: nn.Linear, feat_map: torch.Tensor) -> torch.Tensor:
    # F.linear instead of head(...): calling the module would fire the teacher tap's pre-hook on it
    pooled = F.adaptive_avg_pool2d(feat_map, 1).flatten(1)
    return F.linear(pooled, head.weight, head.bias)


class SimKDStudent(nn.Module):
    """The deployable SimKD model: student backbone → projector → teacher classifier.

    It shares (does not copy) the distiller's student, projector and the teacher's classifier, so it
    always reflects the current weights. The student's final map is read with a forward hook that lives
    only for the duration of each call, so the module has no lingering hooks and deep-copies cleanly.
    """

    def __init__(self, student: nn.Module, final_name: str, projector: SimKDProjector,
                 head: nn.Linear) -> None:
        super().__init__()
        self.student = student
        self.final_name = final_name
        self.projector = projector
        self.head = head
        for p in self.head.parameters():
            p.requires_grad_(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        box: list[torch.Tensor] = []
        mod = dict(unwrap(self.student).named_modules())[self.final_name]
        handle = mod.register_forward_hook(
            lambda _m, _i, out: box.append(out[0] if isinstance(out, tuple) else out))
        try:
            self.student(images)
        finally:
            handle.remove()
        return _reuse_head(self.head, self.projector(box[-1]))


@register_method
class SimKD(Distiller):
    """Projector to the teacher's final feature space + MSE, logits from the reused teacher classifier.

    Defaults are the paper's (DefangChen/SimKD ``-c 0 -d 0 -b 1``, factor 2): no CE, no KD, MSE weight 1.
    """

    name = "simkd"
    paper = ("Chen et al., Knowledge Distillation with the Reused Teacher Classifier, CVPR 2022 "
             "(arXiv:2203.14001)")
    deployable_is_student = False  # it answers through the projector and the teacher's classifier

    def __init__(self, student: nn.Module, teacher: nn.Module | None, ctx: BuildContext, *,
                 ce_weight: Weight = 0.0, kd_weight: Weight = 0.0, beta: Weight = 1.0, factor: Count = 2,
                 **kw) -> None:
        super().__init__(student, teacher, ctx, ce_weight=ce_weight, kd_weight=kd_weight, **kw)
        assert teacher is not None
        self.beta = beta
        t_head = dict(unwrap(teacher).named_modules())[self.t_head_name]
        if not isinstance(t_head, nn.Linear):
            raise ValueError(f"simkd reuses the teacher's classifier, which must be an nn.Linear; "
                             f"{self.t_head_name!r} is {type(t_head).__name__}")
        s, t = self.probe(ctx.example_input)
        assert t is not None
        s_c, t_c = s.feats[-1].shape[1], t.feats[-1].shape[1]
        if t_c != t_head.in_features:
            raise ValueError(f"the teacher's last tapped stage has {t_c} channels but its classifier takes "
                             f"{t_head.in_features}; pass teacher_layers=[<module whose output is pooled "
                             "into the classifier>] (e.g. 'conv2' for mobilenetv2)")
        self.projector = SimKDProjector(s_c, t_c, factor).to(ctx.example_input.device)
        # the student's own classifier is discarded by SimKD: freeze it so no optimizer/DDP touches it
        s_head = dict(unwrap(student).named_modules())[self.s_head_name]
        for p in s_head.parameters():
            p.requires_grad_(False)
        self._t_head = [t_head]  # a list: not registered twice (it already lives inside the teacher)
        self._final_name = self.s_tap.names[-1]

    def simkd_forward(self, s: Outputs, t: Outputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(projected student map, aligned teacher map, reused-classifier logits)."""
        f_s, f_t = _align(s.feats[-1], t.feats[-1])
        proj = self.projector(f_s)
        return proj, f_t, _reuse_head(self._t_head[0], proj)

    def forward(self, images: torch.Tensor, targets: torch.Tensor,
                index: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        t = self.teacher_forward(images)
        s = self.student_forward(images)
        assert t is not None
        proj, f_t, logits = self.simkd_forward(s, t)
        s = dataclasses.replace(s, logits=logits)
        losses = self.base_losses(s, t, targets)
        losses["simkd"] = self.beta * F.mse_loss(proj.float(), f_t.float())
        return logits, losses

    def deployable_student(self) -> nn.Module:
        """An ``nn.Module`` mapping images to SimKD's logits; evaluate and export this, not the student."""
        return SimKDStudent(self.student, self._final_name, self.projector, self._t_head[0])
