"""SemCKD as a distillation method: 1·CE + 1·KD(T=4) + 400·SemCKD, the authors' CIFAR-100 recipe.

Layers: the authors feed ``feat[1:-1]`` of their ``is_feat`` lists to ``SelfA`` — every stage map after
the stem, e.g. ``layer1``–``layer3`` of a CIFAR ResNet (the 32×32 stem output and the pooled vector are
left out). Zoo ``stage_names`` are those lists with the declared ``stem_name`` first, so with the
default taps the stem map of each network is dropped (:meth:`Distiller.student_stages`, the rule every
method shares); layers named explicitly (``student_layers=`` / ``teacher_layers=``) are all used.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar

import torch
from torch import nn

from ..criterion import ATTENTIONS, MODES, SemCKD, softmax_box
from .base import BuildContext, Distiller, Outputs
from .options import Count, Epochs, OneOf, Positive, Weight
from .registry import register_method

__all__ = ["SemCKDDistiller"]


@register_method
class SemCKDDistiller(Distiller):
    """Chen et al., "Cross-Layer Distillation with Semantic Calibration" (AAAI 2021, TKDE 2022).

    Every student stage is matched to every teacher stage, weighted per sample by a learned attention
    (see :class:`semckd.criterion.SemCKD`). ``mode="faithful"`` ties the attention MLPs to the training
    batch size (the engine then drops the last partial batch); ``mode="batch_free"`` accepts any batch
    size (not the paper's numbers). ``factor`` sets the embedding width ``batch_size // factor``.
    ``beta_warmup=E`` (opt-in, 0 = the paper) ramps the feature term in linearly over the first ``E``
    epochs, ``beta · min(epoch / E, 1)``, as DKD and ReviewKD do: early on the projectors are random and
    a large ``beta`` can drown the CE term in a short budget. The epoch is tracked in the ``epoch``
    buffer (only when the ramp is on), so a resumed run continues it. ``torch_compile=true`` (opt-in)
    compiles the criterion: faster steps after a compile that only long runs repay (BENCHMARKS.md §8.1);
    it falls back to eager if compiling fails.

    Ablations and options, not the paper: ``attention=uniform|one_to_one`` replaces the learned α by a
    fixed weighting (everything else unchanged; see :class:`semckd.criterion.SemCKD`), and
    ``attention_temperature`` is the authors' later softmax temperature (SimKD's ``--soft``; 1 = the
    paper). It is not ``temperature``, which every method already uses for its KD term (T = 4).
    Each epoch's summary holds, per (student, teacher) pair, the mean α, the mean projected MSE and
    (learned) the mean logit, taken on the validation split when the run has one.
    """

    name = "semckd"
    paper = "Chen et al. 2021, arXiv:2012.03236"
    any_batch_size_options: ClassVar[dict[str, Any]] = {"mode": "batch_free"}

    @classmethod
    def needs_full_batches(cls, options: Mapping[str, Any]) -> bool:
        """Faithful mode (the default) sizes the attention MLPs by the training batch size."""
        return options.get("mode", "faithful") == "faithful"

    def __init__(self, student: nn.Module, teacher: nn.Module | None, ctx: BuildContext, *,
                 beta: Weight = 400.0, mode: Annotated[str, OneOf(MODES)] = "faithful", factor: Count = 4,
                 beta_warmup: Epochs = 0, torch_compile: bool = False,
                 attention: Annotated[str, OneOf(ATTENTIONS)] = "learned",
                 attention_temperature: Positive = 1.0,
                 ce_weight: Weight = 1.0, kd_weight: Weight = 1.0, temperature: Positive = 4.0,
                 **kw: Any) -> None:
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
                             factor=factor, mode=mode, torch_compile=bool(torch_compile), attention=attention,
                             temperature=float(attention_temperature)).to(ctx.example_input.device)
        self._sums: dict[str, torch.Tensor] = {}
        self._att_n = 0
        self.beta_warmup = int(beta_warmup)
        if self.beta_warmup:
            self.track_epoch()

    def beta_factor(self) -> torch.Tensor | float:
        """:meth:`~Distiller.ramp` of ``beta_warmup`` (1.0 without a ramp). During a ramp it is a 0-dim
        float32 CPU tensor (no device sync), so ``beta · factor`` is rounded in float32 as it always was
        and the ramp's numbers are unchanged."""
        if not self.beta_warmup:
            return 1.0
        return torch.tensor(self.ramp(self.beta_warmup), dtype=torch.float32)

    def layers(self, s: Outputs, t: Outputs) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The (student, teacher) maps SemCKD matches: stages after the stem, or every named layer."""
        return self.student_stages(s.feats), self.teacher_stages(t.feats)

    def distill_losses(self, s: Outputs, t: Outputs | None, targets: torch.Tensor,
                       index: torch.Tensor | None) -> dict[str, torch.Tensor]:
        assert t is not None
        loss, _ = self.semckd(*self.layers(s, t))
        return {"semckd": self.beta * self.beta_factor() * loss}

    # ------------------------------------------------------------------ attention logging
    @torch.no_grad()
    def observe(self, images: torch.Tensor, targets: torch.Tensor) -> None:
        """Accumulate α, projected MSE and logits over evaluation batches (batches faithful mode cannot
        take are skipped)."""
        if self.mode == "faithful" and images.shape[0] != self.semckd.batch_size:
            return
        s = self.student_forward(images)
        t = self.teacher_forward(images)
        assert t is not None
        diag = self.semckd.diagnose(*self.layers(s, t))  # each (B, S, T)
        dtype = torch.float32 if images.device.type == "mps" else torch.float64
        for key, value in diag.items():
            batch_sum = value.float().sum(dim=0).to(dtype)
            self._sums[key] = batch_sum if key not in self._sums else self._sums[key] + batch_sum
        self._att_n += images.shape[0]

    def pop_summary(self) -> dict[str, Any]:
        """Per (student, teacher) pair, over the batches observed since the last call: ``attention``
        (mean α), ``pair_mse`` (mean projected MSE; None for pairs one_to_one leaves out) and, for learned
        attention, ``attention_logit`` (mean ⟨q, k⟩); with the mode, temperature and the range
        ``attention_box`` a learned weight can take. ``{}`` if nothing was observed."""
        if not self._sums or self._att_n == 0:
            return {}
        means = {k: (v / self._att_n).tolist() for k, v in self._sums.items()}
        self._sums, self._att_n = {}, 0
        out: dict[str, Any] = {"attention": means["attention"]}
        out["pair_mse"] = [[None if v != v else v for v in row] for row in means["pair_mse"]]
        if "logits" in means:
            out["attention_logit"] = means["logits"]
        out["attention_mode"] = self.semckd.attention_mode
        out["attention_temperature"] = self.semckd.temperature
        out["attention_box"] = list(softmax_box(self.semckd.num_teacher, self.semckd.temperature))
        return out
