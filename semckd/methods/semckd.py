"""SemCKD as a distillation method: 1·CE + 1·KD(T=4) + 400·SemCKD, the authors' CIFAR-100 recipe.

Layers: the authors feed ``feat[1:-1]`` of their ``is_feat`` lists to ``SelfA`` — every stage map after
the stem, e.g. ``layer1``–``layer3`` of a CIFAR ResNet (the 32×32 stem output and the pooled vector are
left out). Zoo ``stage_names`` are those lists with the declared ``stem_name`` first, so with the
default taps the stem map of each network is dropped (:meth:`Distiller.student_stages`, the rule every
method shares); layers named explicitly (``student_layers=`` / ``teacher_layers=``) are all used.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from ..semckd import MODES, SemCKD
from .base import BuildContext, Distiller, Outputs
from .registry import register_method

__all__ = ["SemCKDDistiller"]


@register_method
class SemCKDDistiller(Distiller):
    """Chen et al., "Cross-Layer Distillation with Semantic Calibration" (AAAI 2021, TKDE 2022).

    Every student stage is matched to every teacher stage, weighted per sample by a learned attention
    (see :class:`semckd.semckd.SemCKD`). ``mode="faithful"`` ties the attention MLPs to the training
    batch size (the engine then drops the last partial batch); ``mode="batch_free"`` accepts any batch
    size (not the paper's numbers). ``factor`` sets the embedding width ``batch_size // factor``.
    ``beta_warmup=E`` (opt-in, 0 = the paper) ramps the feature term in linearly over the first ``E``
    epochs, ``beta · min(epoch / E, 1)``, as DKD and ReviewKD do: early on the projectors are random and
    a large ``beta`` can drown the CE term in a short budget. The epoch is tracked in the ``epoch``
    buffer (only when the ramp is on), so a resumed run continues it. ``torch_compile=true`` (opt-in)
    compiles the criterion: 1.07-1.26x faster per step on CPU once compiled, but compiling takes 1-3
    minutes, which only long runs repay (BENCHMARKS.md §8.1); it falls back to eager if compiling fails.
    """

    name = "semckd"
    paper = "Chen et al. 2021, arXiv:2012.03236"
    any_batch_size_options: ClassVar[dict[str, Any]] = {"mode": "batch_free"}

    @classmethod
    def needs_full_batches(cls, options: Mapping[str, Any]) -> bool:
        """Faithful mode (the default) sizes the attention MLPs by the training batch size."""
        return options.get("mode", "faithful") == "faithful"

    def __init__(self, student: nn.Module, teacher: nn.Module | None, ctx: BuildContext, *,
                 beta: float = 400.0, mode: str = "faithful", factor: int = 4, beta_warmup: int = 0,
                 torch_compile: bool = False, ce_weight: float = 1.0, kd_weight: float = 1.0,
                 temperature: float = 4.0, **kw: Any) -> None:
        if mode not in MODES:
            raise ValueError(f"semckd mode must be one of {', '.join(MODES)}, got {mode!r}")
        if int(beta_warmup) != beta_warmup or beta_warmup < 0:
            raise ValueError(f"semckd beta_warmup must be a whole number of epochs >= 0, got {beta_warmup!r}")
        super().__init__(student, teacher, ctx, ce_weight=ce_weight, kd_weight=kd_weight,
                         temperature=temperature, **kw)
        assert teacher is not None and self.t_tap is not None
        self.beta = float(beta)
        self.mode = mode
        s, t = self.probe(ctx.example_input)
        assert t is not None
        fs, ft = self.layers(s, t)
        for side, feats in (("student", fs), ("teacher", ft)):
            if not feats:
                raise ValueError(f"semckd found no {side} feature maps after the stem; "
                                 f"pass {side}_layers=[...] to name them")
            for f in feats:
                if f.dim() != 4:
                    raise ValueError(f"semckd needs 4-D {side} feature maps, got shape {tuple(f.shape)}; "
                                     f"pass {side}_layers=[...] naming convolutional stages")
        self.semckd = SemCKD([f.shape[1] for f in fs], [f.shape[1] for f in ft], batch_size=ctx.batch_size,
                             factor=factor, mode=mode, torch_compile=bool(torch_compile)
                             ).to(ctx.example_input.device)
        self._att_sum: torch.Tensor | None = None
        self._att_n = 0
        self.beta_warmup = int(beta_warmup)
        if self.beta_warmup:
            self.track_epoch()

    def beta_factor(self) -> torch.Tensor | float:
        """``min(max(epoch, 1) / beta_warmup, 1)`` (1 without a ramp); a tensor, so no host sync."""
        if not self.beta_warmup:
            return 1.0
        return (self.epoch.clamp(min=1).float() / self.beta_warmup).clamp(max=1.0)

    def layers(self, s: Outputs, t: Outputs) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The (student, teacher) maps SemCKD matches: stages after the stem, or every named layer."""
        return self.student_stages(s.feats), self.teacher_stages(t.feats)

    def distill_losses(self, s: Outputs, t: Outputs | None, targets: torch.Tensor,
                       index: torch.Tensor | None) -> dict[str, torch.Tensor]:
        assert t is not None
        loss, _ = self.semckd(*self.layers(s, t))
        return {"semckd": self.beta * self.beta_factor() * loss}

    @property
    def fixed_batch_size(self) -> int | None:
        return self.semckd.batch_size if self.mode == "faithful" else None

    # ------------------------------------------------------------------ attention logging
    @torch.no_grad()
    def observe(self, images: torch.Tensor, targets: torch.Tensor) -> None:
        """Accumulate the mean attention over test batches (batches faithful mode cannot take are skipped)."""
        if self.mode == "faithful" and images.shape[0] != self.semckd.batch_size:
            return
        s = self.student_forward(images)
        t = self.teacher_forward(images)
        assert t is not None
        att = self.semckd.attention(*self.layers(s, t))  # (B, S, T), float32
        dtype = torch.float32 if att.device.type == "mps" else torch.float64
        batch_sum = att.sum(dim=0).to(dtype)
        self._att_sum = batch_sum if self._att_sum is None else self._att_sum + batch_sum
        self._att_n += att.shape[0]

    def pop_summary(self) -> dict[str, Any]:
        """``{"attention": S×T mean α}`` over the batches observed since the last call (``{}`` if none)."""
        if self._att_sum is None or self._att_n == 0:
            return {}
        mean = (self._att_sum / self._att_n).tolist()
        self._att_sum, self._att_n = None, 0
        return {"attention": mean}
