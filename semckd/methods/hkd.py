"""HKD as the SemCKD authors ran it: Passalis, Tzelepi & Tefas, "Heterogeneous Knowledge Distillation
using Information Flow Modeling", CVPR 2020.

The method matches the *information flow* of the two networks: at each paired layer, the batch's
pairwise-similarity structure is turned into conditional probabilities (each row of a similarity
matrix normalised to sum to one) and the student's are pulled towards the teacher's with a symmetric
(Jeffreys) divergence. Two kernels are combined, as in the authors' ``'combined'`` setting: cosine
similarity mapped to [0, 1], and a Student-t kernel ``1/(1 + ‖a−b‖)`` on Euclidean distances.

What the SemCKD code base (DefangChen/SemCKD ``distiller_zoo/HKD.py`` and ``helper/loops.py``) does,
and this module reproduces:

* layers: the student's and teacher's stage outputs after the stem (the authors' ``feat[1:-1]``, here
  ``Outputs.feats[1:]``), paired in order from the shallowest (``zip`` stops at the shorter list);
* loss: ``init_weight·L_0 + Σ_{i≥1} L_i`` (the shallowest pair ×100; the ``decay`` argument of the
  authors' class is computed but never applied), weighted by ``-b 1`` next to CE 1 and KD 1;
* the "teacher" of that run is an *auxiliary* network — a double-width copy of the student
  (``resnet8x4_double``, ``vgg8_bn_double``, ...) first trained with PKT from the real teacher
  (``-b 30000``) — because HKD's premise is that a heterogeneous, much larger teacher should be bridged
  by a proxy of the student's own architecture.

This implementation is the student-side step; it runs with any teacher. For the faithful two-pass
protocol, train the auxiliary network first (``semckd distill --method pkt --model <wider student>``)
and pass its checkpoint as the teacher of the ``hkd`` run. Used directly with the real teacher (what
the recipes do by default) it is a one-pass simplification, documented in ``docs/methods.md``.

``critical_period=True`` switches to the original paper's schedule instead (passalis/pkth
``exp2_proposed.py``): the deepest pair keeps weight 1, every other pair has weight
``init_weight·decay^epoch``, so intermediate layers only guide the early, "critical" epochs.
"""

from __future__ import annotations

from typing import Annotated

import torch
from torch import nn

from .base import BuildContext, Distiller, Outputs
from .options import OneOf, Range, Weight
from .registry import register_method

__all__ = ["HKD", "PAIRINGS", "information_flow_loss"]

PAIRINGS = ("first", "deepest")


def _cosine_probs(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    x = x / (x.norm(dim=1, keepdim=True) + eps)
    sim = (x @ x.t() + 1.0) / 2.0
    return sim / sim.sum(dim=1, keepdim=True)


def _student_t_probs(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    sq = (x * x).sum(dim=1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * (x @ x.t())).clamp_min(0.0)
    sim = 1.0 / (1.0 + torch.sqrt(d2 + eps))
    return sim / sim.sum(dim=1, keepdim=True)


def _jeffreys(p: torch.Tensor, q: torch.Tensor, tiny: float = 1e-12) -> torch.Tensor:
    return ((p - q) * (torch.log(p.clamp_min(tiny)) - torch.log(q.clamp_min(tiny)))).mean()


def information_flow_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """Jeffreys divergence between the two networks' similarity-induced distributions at one layer.

    Features are flattened per sample, so the two layers may have any (different) shapes; only the
    batch size must agree. The cosine and Student-t (d=1) kernels are each averaged over the B×B
    matrix and summed, as in the authors' ``'combined'`` kernel/loss setting.
    """
    s = f_s.flatten(1).float()
    t = f_t.flatten(1).float()
    return _jeffreys(_cosine_probs(t), _cosine_probs(s)) + _jeffreys(_student_t_probs(t), _student_t_probs(s))


@register_method
class HKD(Distiller):
    """Information-flow matching over paired stage features (Passalis et al., CVPR 2020).

    Defaults: SemCKD's run ``-r 1 -a 1 -b 1 --hkd_initial_weight 100 --hkd_decay 0.7``. When student and
    teacher have different numbers of stages, ``pairing="first"`` (default) pairs the shallowest
    ``min(S, T)`` stages, as the authors' ``zip(f_t, f_s)`` does; ``pairing="deepest"`` pairs the deepest
    ones instead (so the final stage maps always meet). Pass ``student_layers`` / ``teacher_layers`` to
    choose the pairs yourself (then all tapped layers of that network are used).
    """

    name = "hkd"
    paper = ("Passalis et al., Heterogeneous Knowledge Distillation using Information Flow Modeling, "
             "CVPR 2020 (arXiv:2005.00727)")

    def __init__(self, student: nn.Module, teacher: nn.Module | None, ctx: BuildContext, *,
                 ce_weight: Weight = 1.0, kd_weight: Weight = 1.0, beta: Weight = 1.0,
                 init_weight: Weight = 100.0, decay: Annotated[float, Range(ge=0, le=1)] = 0.7,
                 critical_period: bool = False, pairing: Annotated[str, OneOf(PAIRINGS)] = "first",
                 **kw) -> None:
        self.pairing = pairing
        super().__init__(student, teacher, ctx, ce_weight=ce_weight, kd_weight=kd_weight, **kw)
        self.beta = beta
        self.init_weight = init_weight
        self.decay = decay
        self.critical_period = critical_period
        self.track_epoch()  # the critical-period schedule survives a checkpoint
        s, t = self.probe(ctx.example_input)
        assert t is not None
        n = len(self._pairs(s.feats, t.feats)[0])
        if n == 0:
            raise ValueError("hkd found no stage pairs: the student or teacher has only a stem stage; "
                             "pass student_layers=[...] and teacher_layers=[...]")

    def _pairs(self, fs: list[torch.Tensor],
               ft: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        fs, ft = self.student_stages(fs), self.teacher_stages(ft)  # the authors' feat[1:-1]
        n = min(len(fs), len(ft))
        if self.pairing == "first":  # the authors' zip(f_t, f_s)
            return fs[:n], ft[:n]
        return fs[len(fs) - n:], ft[len(ft) - n:]

    def layer_weights(self, n: int) -> list[float]:
        """Per-pair weights, shallow → deep, for the current epoch."""
        if n == 0:
            return []
        if self.critical_period:
            w = self.init_weight * self.decay ** self.current_epoch
            return [w] * (n - 1) + [1.0]
        return [self.init_weight] + [1.0] * (n - 1)

    def distill_losses(self, s: Outputs, t: Outputs | None, targets: torch.Tensor,
                       index: torch.Tensor | None) -> dict[str, torch.Tensor]:
        assert t is not None
        fs, ft = self._pairs(s.feats, t.feats)
        weights = self.layer_weights(len(fs))
        loss = sum(w * information_flow_loss(a, b) for w, a, b in zip(weights, fs, ft, strict=True))
        return {"hkd": self.beta * loss}
