"""The Distiller protocol: the only thing the training engine knows about a distillation method.

A distiller owns the student, the (frozen) teacher, the feature taps on both, and whatever trainable
modules the method adds (projectors, embeddings, memory banks). ``forward(images, targets, index)``
returns ``(student_logits, {loss_name: weighted_loss})``; the engine sums the dict, logs each key and
never branches on a method's name. Everything else the engine, the exporter and a combination need is
a real method or declaration on :class:`Distiller` with a no-op default — hooks
(:meth:`~Distiller.on_epoch_start`, :meth:`~Distiller.observe`, :meth:`~Distiller.pop_summary`,
:meth:`~Distiller.deployable_student`) and class-level declarations read before anything is built
(``needs_teacher``, :meth:`~Distiller.needs_full_batches`, ``deployable_is_student``) — so nothing
probes for optional attributes. Adding a method means one new file with a registered subclass; the
registry is :mod:`semckd.methods.registry`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..features import FeatureTap, LayerName, declared_stem, model_layout
from ..precision import state_writes_guard
from .options import LayerList, Positive, Weight

__all__ = [
    "BuildContext",
    "Distiller",
    "Outputs",
    "kd_loss",
    "standardize_logits",
]


@dataclass
class BuildContext:
    """What a method may need to size its modules, known before training starts."""

    example_input: torch.Tensor  # one batch of inputs, on the training device
    batch_size: int  # the per-process training batch size
    num_classes: int
    num_samples: int  # training-set size (memory banks index into it)
    # the training labels by sample index, when the data pipeline knows them (CRD's "exact" negatives)
    train_targets: torch.Tensor | None = None


@dataclass
class Outputs:
    """One network's outputs from a single forward pass, as collected by the taps."""

    logits: torch.Tensor
    feats: list[torch.Tensor]  # stage feature maps, shallow → deep (pre-pooling)
    embedding: torch.Tensor  # (B, D): the classifier's input, i.e. the pooled penultimate feature


def standardize_logits(z: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Z-score logits per sample (Sun et al., CVPR 2024, "Logit Standardization in KD")."""
    return (z - z.mean(dim=1, keepdim=True)) / (z.std(dim=1, keepdim=True) + eps)


def kd_loss(s_logits: torch.Tensor, t_logits: torch.Tensor, temperature: float = 4.0,
            standardize: bool = False) -> torch.Tensor:
    """Hinton KD: KL(p_t^T || p_s^T)·T², batch mean. ``standardize`` applies logit standardisation."""
    if standardize:
        s_logits, t_logits = standardize_logits(s_logits), standardize_logits(t_logits)
    log_p_s = F.log_softmax(s_logits.float() / temperature, dim=1)
    log_p_t = F.log_softmax(t_logits.float() / temperature, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * temperature**2


def _drops_stem(model: nn.Module, layers: Any, tap: FeatureTap) -> bool:
    """Whether the first map of ``tap`` is ``model``'s declared stem and is to be skipped: only when the
    layers were not named explicitly (``layers is None``) and the model declares a stem."""
    if layers is not None or not tap.names:
        return False
    stem = declared_stem(model)
    return stem is not None and tap.names[0] == stem


class Distiller(nn.Module):
    """Base class: CE on the labels, optional Hinton KD, and the method's own terms.

    Layers are tapped by name: ``student_layers``/``teacher_layers`` (dotted module paths or top-level
    child indices) and ``student_head``/``teacher_head`` (``head_name`` sets both) default to what the
    model declares (``stage_names``/``head_name``) and, for a model that declares nothing, to what one
    dry run finds (:func:`semckd.features.model_layout`).

    Subclasses set ``name`` and ``paper`` and override :meth:`distill_losses` (and, only if the method
    changes the forward pass itself, :meth:`forward`). Constructor keyword arguments are the method's
    options; their defaults are the original paper's / authors' settings and their annotations declare
    type and range (``beta: Weight = 400.0``; see :mod:`semckd.methods.options`). Options are checked
    once, against those annotations, by :func:`~semckd.methods.registry.check_options` (config load and
    :func:`~semckd.methods.build_distiller`), so a method does not check them again.

    The engine calls every hook below on every method; each has a working default, so a method
    overrides only what it uses:

    * :meth:`on_epoch_start` — the epoch about to be trained; read it as :attr:`current_epoch`
      (call :meth:`track_epoch` in ``__init__`` to keep it in the checkpointed ``epoch`` buffer);
    * :meth:`observe` / :meth:`pop_summary` — per-epoch diagnostics on evaluation batches
      (:attr:`observes` says whether there are any);
    * :meth:`deployable_student` — the network evaluated and exported (the student by default).

    Class-level declarations are read from the method name and options alone, before any data or
    model exists: ``needs_teacher``, :meth:`needs_full_batches` (+ ``any_batch_size_options``) and
    ``deployable_is_student``.

    The teacher is registered as a submodule so ``.to(device)`` moves it, but it is frozen, always in
    eval mode, excluded from :meth:`trainable_parameters` and from :meth:`extras_state_dict`.
    """

    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    needs_teacher: ClassVar[bool] = True
    #: whether :meth:`deployable_student` is the bare student, i.e. a checkpoint's student weights are
    #: the whole deployable network (False for SimKD: projector + the teacher's classifier). Read from
    #: the method name alone by ``semckd eval``/``export``, which rebuild the distiller only if False.
    deployable_is_student: ClassVar[bool] = True
    #: options that lift :meth:`needs_full_batches` (shown in batch-size errors), e.g. ``{"mode": ...}``
    any_batch_size_options: ClassVar[dict[str, Any]] = {}

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        ctx: BuildContext,
        *,
        ce_weight: Weight = 1.0,
        kd_weight: Weight = 0.0,
        temperature: Positive = 4.0,
        logit_std: bool = False,
        student_layers: LayerList | None = None,
        teacher_layers: LayerList | None = None,
        student_head: LayerName | None = None,
        teacher_head: LayerName | None = None,
        head_name: LayerName | None = None,
        _taps: tuple[FeatureTap, FeatureTap | None] | None = None,
    ) -> None:
        super().__init__()
        if self.needs_teacher and teacher is None:
            raise ValueError(f"method {self.name!r} needs a teacher; pass --teacher CHECKPOINT")
        self.student = student
        self.teacher = teacher
        if teacher is not None:
            teacher.eval()
            for p in teacher.parameters():
                p.requires_grad_(False)
        self.ce_weight = ce_weight
        self.kd_weight = kd_weight
        self.temperature = temperature
        self.logit_std = logit_std
        if _taps is not None:
            self.s_tap, self.t_tap = _taps
        else:
            # layers/head: as given, else the model's declared stage_names/head_name, else discovered
            # from one dry run (any nn.Module works without editing it)
            x = ctx.example_input
            s_layers, s_head = model_layout(student, x, student_layers,
                                            head_name if student_head is None else student_head)
            self.s_tap = FeatureTap(student, s_layers, input_of=[s_head])
            self.t_tap = None
            if teacher is not None:
                t_layers, t_head = model_layout(teacher, x, teacher_layers,
                                                head_name if teacher_head is None else teacher_head)
                self.t_tap = FeatureTap(teacher, t_layers, input_of=[t_head], detach=True)
        self.s_head_name: str = self.s_tap.input_names[0]
        self.t_head_name: str | None = self.t_tap.input_names[0] if self.t_tap is not None else None
        # the one "drop the stem" rule, decided per network (see student_stages)
        self.stem_dropped: tuple[bool, bool] = (
            _drops_stem(student, student_layers, self.s_tap),
            teacher is not None and self.t_tap is not None
            and _drops_stem(teacher, teacher_layers, self.t_tap))
        self._current_epoch = 0  # no epoch started yet; the engine counts from 1
        self._fixed_batch_size: int | None = None  # set by build_distiller from needs_full_batches
        self._tracks_epoch = False
        self._state_device = ctx.example_input.device

    # ------------------------------------------------------------------ forward passes
    def student_forward(self, images: torch.Tensor) -> Outputs:
        logits = self.student(images)
        return Outputs(logits, self.s_tap.features, self.s_tap.inputs[0].flatten(1))

    def teacher_forward(self, images: torch.Tensor) -> Outputs | None:
        if self.teacher is None:
            return None
        with torch.no_grad():
            logits = self.teacher(images)
        assert self.t_tap is not None
        return Outputs(logits.detach(), self.t_tap.features, self.t_tap.inputs[0].flatten(1))

    @torch.no_grad()
    def probe(self, example_input: torch.Tensor) -> tuple[Outputs, Outputs | None]:
        """Run both networks once in eval mode so a method can size its modules from real shapes."""
        was = self.student.training
        self.student.eval()
        try:
            s = self.student_forward(example_input)
            t = self.teacher_forward(example_input)
        finally:
            self.student.train(was)
        return s, t

    def student_stages(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The student's maps after its stem: ``feats[1:]`` when the stem is dropped, else all.

        The one rule every method that follows the authors' ``feat[1:]`` uses: the stem is dropped
        when the tapped layers are the model's declared ones and begin with its declared
        ``stem_name`` (zoo models; see :func:`semckd.features.declared_stem`). Layers named
        explicitly, and layers discovered on a model that declares nothing, are all used.
        """
        return list(feats[1:] if self.stem_dropped[0] else feats)

    def teacher_stages(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The teacher's maps after its stem (same rule as :meth:`student_stages`)."""
        return list(feats[1:] if self.stem_dropped[1] else feats)

    def base_losses(self, s: Outputs, t: Outputs | None, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        losses: dict[str, torch.Tensor] = {}
        if self.ce_weight:
            losses["ce"] = self.ce_weight * F.cross_entropy(s.logits.float(), targets)
        if self.kd_weight and t is not None:
            losses["kd"] = self.kd_weight * kd_loss(s.logits, t.logits, self.temperature, self.logit_std)
        return losses

    def distill_losses(self, s: Outputs, t: Outputs | None, targets: torch.Tensor,
                       index: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """The method's own weighted terms. Vanilla and KD add none."""
        return {}

    def forward(self, images: torch.Tensor, targets: torch.Tensor,
                index: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        t = self.teacher_forward(images)
        s = self.student_forward(images)
        losses = self.base_losses(s, t, targets)
        with state_writes_guard():  # a method's float32 buffers accept its bf16/fp16 activations
            losses.update(self.distill_losses(s, t, targets, index))
        return s.logits, losses

    # ------------------------------------------------------------------ declarations
    @classmethod
    def needs_full_batches(cls, options: Mapping[str, Any]) -> bool:
        """Whether the method built with ``options`` is tied to the training batch size (its modules
        are sized by ``BuildContext.batch_size``, e.g. SemCKD's faithful mode), so every training
        batch must be full. Answered from the options alone, before any data is built: the engine
        then builds a training loader that drops the last partial batch. Default: any batch works."""
        return False

    @property
    def fixed_batch_size(self) -> int | None:
        """The batch size the built modules are tied to, else None. Not a second declaration: set by
        :func:`~semckd.methods.build_distiller` to ``ctx.batch_size`` exactly when
        :meth:`needs_full_batches` says so, the one place that decision is made."""
        return self._fixed_batch_size

    # ------------------------------------------------------------------ hooks (engine calls all of them)
    def on_epoch_start(self, epoch: int) -> None:
        """Called by the engine before each training epoch (1-based, as in mdistiller), on a resumed
        run too, so this is the single source of the epoch. Schedules read :attr:`current_epoch`.
        Override to do more, calling ``super().on_epoch_start(epoch)``."""
        self._current_epoch = int(epoch)
        if self._tracks_epoch:
            self.epoch.fill_(self._current_epoch)

    @property
    def current_epoch(self) -> int:
        """The epoch passed to the last :meth:`on_epoch_start` (0 before any), as a host int, so a
        schedule costs no device sync; restored by ``load_state_dict`` when the epoch is tracked."""
        return self._current_epoch

    def ramp(self, epochs: float) -> float:
        """The linear warm-up factor ``min(max(epoch, 1) / epochs, 1)`` of :attr:`current_epoch`
        (1.0 when ``epochs`` is 0): epochs are numbered from 1, as in mdistiller, and an epoch of 0 —
        before the engine starts the first — counts as the first. The one ramp every method uses
        (DKD's ``warmup``, ReviewKD's ``warmup_epochs``, SemCKD's ``beta_warmup``); a host float, so
        it costs no device sync. Call :meth:`track_epoch` so a resumed run continues it."""
        if epochs <= 0:
            return 1.0
        return min(max(self._current_epoch, 1) / epochs, 1.0)

    def track_epoch(self) -> None:
        """Keep the epoch in the ``epoch`` buffer too, so it is saved with :meth:`extras_state_dict`
        and restored by loading it (a schedule then survives a checkpoint outside the engine, and
        tensor code can read it). Call in ``__init__`` when the losses depend on the epoch; methods
        that do not leave their state unchanged (older checkpoints still load)."""
        if not self._tracks_epoch:
            self.register_buffer("epoch", torch.full((), self._current_epoch, dtype=torch.long,
                                                     device=self._state_device))
            self._tracks_epoch = True

    def _load_from_state_dict(self, state_dict: Mapping[str, Any], prefix: str, *args: Any,
                              **kwargs: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if self._tracks_epoch:  # the buffer is the saved copy; the host int follows it
            self._current_epoch = int(self.epoch)

    def observe(self, images: torch.Tensor, targets: torch.Tensor) -> None:
        """Called under ``no_grad`` in eval mode on each evaluation batch (validation when the run has
        a validation split, else test), to collect a per-epoch summary. Default: nothing."""

    def pop_summary(self) -> dict[str, Any]:
        """The summary of the batches observed since the last call (written to the epoch's metrics
        line under ``"extras"``); ``{}`` when there is none."""
        return {}

    @property
    def observes(self) -> bool:
        """Whether :meth:`observe` does anything; the engine skips the extra forward passes if not.
        True exactly when a subclass overrides ``observe``."""
        return type(self).observe is not Distiller.observe

    def deployable_student(self) -> nn.Module:
        """The network that answers at test time: what the engine evaluates and ``semckd export``
        writes. The student itself unless the method answers through extra modules (then also set
        ``deployable_is_student = False``)."""
        return self.student

    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Student parameters plus the method's own modules; never the teacher's."""
        frozen = {id(p) for p in self.teacher.parameters()} if self.teacher is not None else set()
        seen: set[int] = set()
        out = []
        for p in self.parameters():
            if id(p) in frozen or id(p) in seen or not p.requires_grad:
                continue
            seen.add(id(p))
            out.append(p)
        return out

    @staticmethod
    def _is_extra(key: str) -> bool:
        return not ({"student", "teacher"} & set(key.split(".")))

    def extras_state_dict(self) -> dict[str, torch.Tensor]:
        """State of the method's own modules (projectors, banks): saved in checkpoints beside the student."""
        return {k: v for k, v in self.state_dict().items() if self._is_extra(k)}

    def load_extras_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        own = self.extras_state_dict()
        missing = sorted(set(own) - set(sd))
        unexpected = sorted(set(sd) - set(own))
        if missing or unexpected:
            raise ValueError(f"distiller state does not match method {self.name!r}: "
                             f"missing {missing[:3]}, unexpected {unexpected[:3]}")
        self.load_state_dict(sd, strict=False)

    def remove_taps(self) -> None:
        """Remove the forward hooks on student and teacher (the models are usable on their own again)."""
        self.s_tap.remove()
        if self.t_tap is not None:
            self.t_tap.remove()
