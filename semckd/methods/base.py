"""The Distiller protocol: the only thing the training engine knows about a distillation method.

A distiller owns the student, the (frozen) teacher, the feature taps on both, and whatever trainable
modules the method adds (projectors, embeddings, memory banks). ``forward(images, targets, index)``
returns ``(student_logits, {loss_name: weighted_loss})``; the engine sums the dict, logs each key and
never branches on a method's name. Adding a method means one new file with a registered subclass.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..features import FeatureTap, LayerName, model_layout, unwrap
from ..precision import state_writes_guard

__all__ = [
    "BuildContext",
    "Distiller",
    "Outputs",
    "build_distiller",
    "declares_stages",
    "kd_loss",
    "list_methods",
    "register_method",
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


def declares_stages(model: nn.Module | None) -> bool:
    """Whether ``model`` names its stages (zoo models: stem first, which methods following the authors
    skip); layers discovered on other models, like layers named explicitly, are all used."""
    return model is None or getattr(unwrap(model), "stage_names", None) is not None


class Distiller(nn.Module):
    """Base class: CE on the labels, optional Hinton KD, and the method's own terms.

    Layers are tapped by name: ``student_layers``/``teacher_layers`` (dotted module paths or top-level
    child indices) and ``student_head``/``teacher_head`` (``head_name`` sets both) default to what the
    model declares (``stage_names``/``head_name``) and, for a model that declares nothing, to what one
    dry run finds (:func:`semckd.features.model_layout`).

    Subclasses set ``name`` and ``paper`` and override :meth:`distill_losses` (and, only if the method
    changes the forward pass itself, :meth:`forward`). Constructor keyword arguments are the method's
    options; their defaults are the original paper's / authors' settings, and unknown keys are rejected
    by :func:`build_distiller`.

    The teacher is registered as a submodule so ``.to(device)`` moves it, but it is frozen, always in
    eval mode, excluded from :meth:`trainable_parameters` and from :meth:`extras_state_dict`.
    """

    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    needs_teacher: ClassVar[bool] = True

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        ctx: BuildContext,
        *,
        ce_weight: float = 1.0,
        kd_weight: float = 0.0,
        temperature: float = 4.0,
        logit_std: bool = False,
        student_layers: list[LayerName] | None = None,
        teacher_layers: list[LayerName] | None = None,
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

    # ------------------------------------------------------------------ engine helpers
    @property
    def fixed_batch_size(self) -> int | None:
        """A batch size the method's modules are tied to (SemCKD's faithful mode), else None."""
        return None

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
        self.s_tap.remove()
        if self.t_tap is not None:
            self.t_tap.remove()


# ---------------------------------------------------------------------- registry
_METHODS: dict[str, type[Distiller]] = {}


def register_method(cls: type[Distiller]) -> type[Distiller]:
    """Class decorator: make ``cls`` selectable as ``--method cls.name``."""
    if not cls.name or cls.name in _METHODS:
        raise ValueError(f"method name {cls.name!r} is empty or taken")
    _METHODS[cls.name] = cls
    return cls


def list_methods() -> list[str]:
    return sorted(_METHODS)


def method_options(name: str) -> dict[str, Any]:
    """The options a method accepts, with their defaults."""
    cls = get_method(name)
    out: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        if klass is object or not issubclass(klass, Distiller):
            continue
        for p in inspect.signature(klass.__init__).parameters.values():
            if p.kind is p.KEYWORD_ONLY and not p.name.startswith("_"):
                out[p.name] = p.default
    return out


def get_method(name: str) -> type[Distiller]:
    if name not in _METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of: {', '.join(list_methods())} "
                         "(combine with '+', e.g. semckd+crd)")
    return _METHODS[name]


def _check_options(name: str, opts: dict[str, Any]) -> None:
    valid = method_options(name)
    for k in opts:
        if k not in valid:
            raise ValueError(f"method {name!r} has no option {k!r}; "
                             f"valid options: {', '.join(sorted(valid))}")


def build_distiller(spec: str, student: nn.Module, teacher: nn.Module | None, ctx: BuildContext,
                    options: dict[str, Any] | None = None) -> Distiller:
    """Build ``spec`` (``"semckd"`` or a combination ``"semckd+crd"``) with validated options.

    For one method, ``options`` is a flat dict of its keyword options. For a combination it maps each
    method name to its own dict: ``{"semckd": {"beta": 400}, "crd": {"beta": 0.8}}``.
    """
    options = dict(options or {})
    names = [n.strip() for n in spec.split("+") if n.strip()]
    if not names:
        raise ValueError("empty method name; e.g. --method semckd")
    for n in names:
        get_method(n)
    if len(names) == 1:
        _check_options(names[0], options)
        return get_method(names[0])(student, teacher, ctx, **options)
    from .combine import Combined  # local import: combine imports this module

    for k in options:
        if k not in names:
            raise ValueError(f"options for a combination are keyed by method name "
                             f"({', '.join(names)}); got {k!r}")
    for n in names:
        _check_options(n, options.get(n, {}))
    return Combined(student, teacher, ctx, methods=names, method_options=options)


MethodFactory = Callable[..., Distiller]
