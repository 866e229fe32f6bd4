"""Several methods trained together (``--method semckd+crd``): one forward pass, every method's terms.

Each member is built as usual — same student, same teacher, same options and defaults as when it runs
alone — but all share one pair of feature taps, so hooks are registered once and the student and
teacher run once per step. The combination then adds:

* ``ce`` and ``kd`` once: ``ce`` with the weight of the first member (in the order given) whose CE weight
  is non-zero, ``kd`` with the weight, temperature and ``logit_std`` of the first member whose KD weight
  is non-zero (so ``at+kd`` trains with AT's weights and ``kd+at`` with KD's, e.g. ``kd.ce_weight=0.1``);
* every member's own :meth:`~Distiller.distill_losses` terms; a key produced by two members (or named
  ``ce``/``kd``) is prefixed with the member's method name (``at_at``, ``crd_at``, ...).

Every :class:`~semckd.methods.base.Distiller` hook is forwarded to all members (each member's hook is
a no-op unless it uses it): ``on_epoch_start``, ``observe`` (only members that observe),
``pop_summary`` (merged like the loss terms) and ``remove_taps``.

A member that changes the forward pass itself (overrides ``forward``, ``student_forward`` or
``teacher_forward``, e.g. SimKD) cannot share a forward pass and is rejected, with every other option
rule, by :func:`~semckd.methods.registry.check_options` before anything is built. The combination's
``fixed_batch_size`` is set by ``build_distiller`` like any method's (all members share one batch size).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..features import _as_names
from .base import BuildContext, Distiller, Outputs
from .registry import get_method

__all__ = ["Combined"]

_TAP_OPTIONS = ("student_layers", "teacher_layers", "student_head", "teacher_head", "head_name")


def _merge(parts: Sequence[tuple[str, dict[str, Any]]], reserved: Sequence[str] = ()) -> dict[str, Any]:
    """Flatten per-member dicts; a key seen twice (or reserved) gets its member's name as a prefix."""
    counts = Counter(k for _, d in parts for k in d)
    out: dict[str, Any] = {}
    for name, d in parts:
        for k, v in d.items():
            key = f"{name}_{k}" if counts[k] > 1 or k in reserved else k
            if key in out or key in reserved:
                raise ValueError(f"methods in the combination both produce the term {key!r}; "
                                 "combine them separately or rename one term")
            out[key] = v
    return out


class Combined(Distiller):
    """The members' distillers, run from one shared forward pass (see the module docstring)."""

    name = "combined"
    paper = "—"
    needs_teacher = False  # each member checks its own need for a teacher

    def __init__(self, student: nn.Module, teacher: nn.Module | None, ctx: BuildContext, *,
                 methods: list[str], method_options: dict[str, dict[str, Any]] | None = None) -> None:
        # names, options and combinability were checked by check_options (build_distiller calls it)
        method_options = {k: dict(v) for k, v in (method_options or {}).items()}
        methods = [m.strip() for m in methods]
        classes = [get_method(m) for m in methods]
        # the taps are shared, so members must agree on which layers they watch
        tap_kw: dict[str, Any] = {}
        for key in _TAP_OPTIONS:
            given = {m: method_options[m][key] for m in methods
                     if method_options.get(m, {}).get(key) is not None}
            values = {tuple(_as_names(v)) if key.endswith("_layers") else v for v in given.values()}
            if len(values) > 1:
                raise ValueError(f"combined methods must tap the same layers; {key} differs between "
                                 f"{' and '.join(given)} — give it once, to one method")
            if values:
                v = values.pop()
                tap_kw[key] = list(v) if key.endswith("_layers") else v
        super().__init__(student, teacher, ctx, ce_weight=0.0, kd_weight=0.0, **tap_kw)
        self.method_names = methods
        self.parts = nn.ModuleDict()
        for m, cls in zip(methods, classes, strict=True):
            # every member is told the shared tap layers (the taps themselves come from _taps), so a
            # member that treats explicitly named layers differently sees them whoever named them
            opts = {**{k: v for k, v in method_options.get(m, {}).items() if k not in _TAP_OPTIONS}, **tap_kw}
            self.parts[m] = cls(student, teacher, ctx, _taps=(self.s_tap, self.t_tap), **opts)

        # ce / kd once, from the first member that has each
        members = list(self.parts.values())
        ce_src = next((p for p in members if p.ce_weight), None)
        kd_src = next((p for p in members if p.kd_weight and p.teacher is not None), None)
        self.ce_weight = ce_src.ce_weight if ce_src is not None else 0.0
        if kd_src is not None:
            self.kd_weight, self.temperature, self.logit_std = (kd_src.kd_weight, kd_src.temperature,
                                                                kd_src.logit_std)

    # ------------------------------------------------------------------ losses
    def distill_losses(self, s: Outputs, t: Outputs | None, targets: torch.Tensor,
                       index: torch.Tensor | None) -> dict[str, torch.Tensor]:
        per = [(m, p.distill_losses(s, t, targets, index)) for m, p in self.parts.items()]
        return _merge(per, reserved=("ce", "kd"))

    # ------------------------------------------------------------------ forwarded hooks
    def remove_taps(self) -> None:
        super().remove_taps()
        for part in self.parts.values():  # members may hold taps of their own (ReviewKD's preact tap)
            part.remove_taps()

    def on_epoch_start(self, epoch: int) -> None:
        super().on_epoch_start(epoch)
        for part in self.parts.values():
            part.on_epoch_start(epoch)

    @property
    def observes(self) -> bool:
        return any(p.observes for p in self.parts.values())

    def observe(self, images: torch.Tensor, targets: torch.Tensor) -> None:
        for part in self.parts.values():
            if part.observes:
                part.observe(images, targets)

    def pop_summary(self) -> dict[str, Any]:
        return _merge([(m, p.pop_summary() or {}) for m, p in self.parts.items()])
