"""Feature taps: read intermediate activations of any ``nn.Module`` through forward hooks.

Distillation methods need a network's intermediate feature maps. The authors' code threads an
``is_feat=True`` flag through every model's ``forward``; taps instead address modules by their name in
``named_modules()``, so a user's own model (a torchvision ResNet, a timm model) can be distilled without
editing it.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["FeatureTap", "LayerName", "declared_stem", "discover_head", "discover_stages", "model_layout",
           "unwrap"]


def unwrap(model: nn.Module) -> nn.Module:
    """Return the user's module inside DDP/DataParallel/torch.compile wrappers, so names stay stable."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def _unwrap_name(name: str, modules: dict[str, nn.Module]) -> str:
    """Drop DDP/compile prefixes (``module.layer1`` → ``layer1``) that names copied from a wrapper carry."""
    while name not in modules and name.startswith(_WRAPPER_PREFIXES):
        name = name.split(".", 1)[1]
    return name


LayerName = str | int
"""A module of a model: its dotted path in ``named_modules()`` (``"layer1.0.conv1"``, ``"features[3]"``),
or an integer index among the model's top-level children (``3`` or ``"3"``: an ``nn.Sequential`` index;
negative counts from the end)."""


def _as_names(names: Sequence[LayerName] | LayerName | None) -> list[LayerName]:
    """One name or a list of names (``student_layers=layer1`` and ``=[1,3,5]`` both work)."""
    if names is None:
        return []
    if isinstance(names, (str, int)):
        return [names]
    return list(names)


def _layer_name(name: LayerName, base: nn.Module, modules: dict[str, nn.Module]) -> str | None:
    """The ``named_modules()`` key ``name`` refers to, or None."""
    if isinstance(name, bool) or not isinstance(name, (str, int)):
        return None
    text = re.sub(r"\[\s*(-?\d+)\s*\]", r".\1", str(name).strip()).strip(".")  # features[3] → features.3
    if text in modules:
        return text
    text = _unwrap_name(text, modules)
    if text in modules:
        return text
    if re.fullmatch(r"-?\d+", text):  # index of a top-level child (nn.Sequential: 0, 1, ..., -1)
        children = [n for n, _ in base.named_children()]
        i = int(text)
        if -len(children) <= i < len(children):
            return children[i]
    return None


def _resolve(model: nn.Module, names: Sequence[LayerName]) -> tuple[list[str], list[nn.Module]]:
    """Map names to modules of the unwrapped model; returns the unwrapped names and the modules."""
    base = unwrap(model)
    modules = dict(base.named_modules())
    out: list[str] = []
    for n in names:
        key = _layer_name(n, base, modules)
        if key is None:
            raise ValueError(f"no module named {n!r} in {type(base).__name__}{_hint(n, base, modules)}")
        out.append(key)
    return out, [modules[n] for n in out]


def _hint(name: object, base: nn.Module, modules: dict[str, nn.Module]) -> str:
    """What to write instead: a close match, else a sample of valid names (one line)."""
    valid = [k for k in modules if k]
    numeric = isinstance(name, int) or re.fullmatch(r"\s*-?\d+\s*", str(name)) is not None
    close = [] if numeric else difflib.get_close_matches(str(name), valid, n=1)
    did = f" (did you mean {close[0]!r}?)" if close else ""
    children = [n for n, _ in base.named_children()]
    top = ", ".join(children[:12]) + (", ..." if len(children) > 12 else "")
    nested = next((k for k in valid if "." in k), None)
    how = f"top level: {top}" + (f"; nested as dotted paths, e.g. {nested}" if nested else "")
    idx = f" or a top-level index 0..{len(children) - 1}" if children else ""
    return f"{did}; use a name from model.named_modules() ({how}){idx}"


class FeatureTap:
    """Collect outputs (and optionally inputs) of named submodules on every forward pass.

    ``names=None`` uses the model's declared ``stage_names`` (every zoo model has them); for other models
    call :func:`discover_stages` once. A name is a dotted module path or a top-level child's index
    (see :data:`LayerName`). After each forward, ``tap.features`` holds the outputs in the order
    of ``names`` and ``tap.inputs`` the first positional input of each module in ``input_of`` (e.g. the
    classifier, whose input is the pooled embedding). Use as a context manager, or call ``remove()``.
    """

    def __init__(
        self,
        model: nn.Module,
        names: Sequence[LayerName] | LayerName | None = None,
        *,
        input_of: Sequence[LayerName] | LayerName = (),
        detach: bool = False,
    ) -> None:
        base = unwrap(model)
        if names is None:
            names = getattr(base, "stage_names", None)
            if names is None:
                raise ValueError(
                    f"{type(base).__name__} declares no stage_names; pass names=... or use "
                    "semckd.discover_stages(model, example_input)"
                )
        self.names, out_mods = _resolve(base, _as_names(names))
        self.input_names, in_mods = _resolve(base, _as_names(input_of))
        self.detach = detach
        self._out: list[torch.Tensor | None] = [None] * len(self.names)
        self._in: list[torch.Tensor | None] = [None] * len(self.input_names)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        # a new forward pass of the whole model starts empty, so a module that did not run this time
        # raises instead of silently returning the previous batch's activation
        self._handles.append(base.register_forward_pre_hook(lambda _m, _i: self.clear()))
        for i, mod in enumerate(out_mods):
            self._handles.append(mod.register_forward_hook(self._make_out_hook(i)))
        for i, mod in enumerate(in_mods):
            self._handles.append(mod.register_forward_pre_hook(self._make_in_hook(i)))

    def _make_out_hook(self, i: int):
        def hook(_mod, _inp, out):
            if isinstance(out, (tuple, list)):
                out = out[0]
            self._out[i] = out.detach() if self.detach else out

        return hook

    def _make_in_hook(self, i: int):
        def hook(_mod, inp):
            x = inp[0] if isinstance(inp, tuple) else inp
            self._in[i] = x.detach() if self.detach else x

        return hook

    @staticmethod
    def _collect(items: list[torch.Tensor | None], names: list[str]) -> list[torch.Tensor]:
        for n, t in zip(names, items, strict=True):
            if t is None:
                raise RuntimeError(f"module {n!r} did not run in the last forward pass; check the tap names")
        return list(items)  # type: ignore[arg-type]

    @property
    def features(self) -> list[torch.Tensor]:
        """Outputs of ``names`` from the latest forward pass."""
        return self._collect(self._out, self.names)

    @property
    def inputs(self) -> list[torch.Tensor]:
        """First inputs of ``input_of`` modules from the latest forward pass."""
        return self._collect(self._in, self.input_names)

    def clear(self) -> None:
        """Drop references to the last activations (frees memory between steps)."""
        self._out = [None] * len(self.names)
        self._in = [None] * len(self.input_names)

    def remove(self) -> None:
        """Remove every hook this tap registered; the model is left exactly as it was."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.clear()

    def __enter__(self) -> FeatureTap:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


_RESAMPLERS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


@torch.no_grad()
def _dry_run(model: nn.Module, example_input: torch.Tensor
             ) -> tuple[list[tuple[str, tuple[int, int]]], list[str]]:
    """One eval-mode forward: (stage candidates in finishing order with their resolution, nn.Linear
    modules in finishing order). Modules that run more than once (a ReLU shared by a block's two
    convolutions) are not candidates: a tap on them would see only their last call."""
    base = unwrap(model)
    order: list[tuple[str, tuple[int, int]]] = []
    linears: list[str] = []
    calls: dict[str, int] = {}
    handles = []
    for name, mod in base.named_modules():
        if not name:
            continue

        def hook(m, _i, out, name=name):
            calls[name] = calls.get(name, 0) + 1
            if isinstance(m, nn.Linear):
                linears.append(name)
            if isinstance(out, (tuple, list)) and out:
                out = out[0]
            if (isinstance(out, torch.Tensor) and out.dim() == 4 and out.shape[-1] * out.shape[-2] > 1
                    and not isinstance(m, _RESAMPLERS)):  # adaptive pooling resamples, it is no stage
                order.append((name, (int(out.shape[-2]), int(out.shape[-1]))))

        handles.append(mod.register_forward_hook(hook))
    modes = {m: m.training for m in base.modules()}  # per module: e.g. a frozen BN stays in eval
    base.eval()
    try:
        base(example_input)
    finally:
        for m, mode in modes.items():
            m.training = mode
        for h in handles:
            h.remove()
    return [(n, r) for n, r in order if calls[n] == 1], linears


def _stages_from(order: list[tuple[str, tuple[int, int]]]) -> list[str]:
    stages: list[str] = []
    for k, (name, res) in enumerate(order):
        nxt = order[k + 1][1] if k + 1 < len(order) else None
        if nxt != res and name not in stages:
            stages.append(name)
    return stages


def discover_stages(model: nn.Module, example_input: torch.Tensor) -> list[str]:
    """Find stage outputs: the last module to finish at each spatial resolution in one dry run.

    Forward hooks fire when a module *finishes*, so a block container (``layer1``) finishes after its
    children and is picked over them. 1×1 maps (global pooling), adaptive-pooling outputs and modules
    called more than once per forward are not stages. Every module's train/eval mode is restored
    afterwards; BN statistics are not touched (the dry run is in eval mode). Names are those of the
    unwrapped model (no ``module.`` prefix under DDP).
    """
    stages = _stages_from(_dry_run(model, example_input)[0])
    if not stages:
        raise ValueError(f"{type(unwrap(model)).__name__} produced no 4-D feature maps; "
                         "pass tap names explicitly")
    return stages


def discover_head(model: nn.Module, example_input: torch.Tensor | None = None) -> str:
    """The classifier: the model's declared ``head_name``, else its last ``nn.Linear``.

    With ``example_input`` "last" means last to run in a dry run (robust to a model that registers
    its classifier before its features); without, last in registration order.
    """
    base = unwrap(model)
    declared = getattr(base, "head_name", None)
    if isinstance(declared, str):
        return declared
    if example_input is not None:
        linears = _dry_run(base, example_input)[1]
    else:
        linears = [n for n, m in base.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise _no_head(base)
    return linears[-1]


def _no_head(base: nn.Module) -> ValueError:
    return ValueError(f"{type(base).__name__} has no nn.Linear classifier to tap; name the module whose "
                      "input is the pooled embedding with --method-args student_head=NAME "
                      "(teacher_head=NAME for the teacher)")


def declared_stem(model: nn.Module) -> str | None:
    """The module whose output is ``model``'s stem map (the authors' ``is_feat`` f0), or None.

    Zoo models declare it as ``stem_name``, apart from their stages, so the one "drop the stem" rule
    (:meth:`semckd.methods.Distiller.student_stages`) needs no guess: methods that follow the authors'
    ``feat[1:]`` skip the stem when the tapped layers are the model's declared ones and start with it.
    ``stem_name = None`` declares a model without a stem. A model that declares ``stage_names`` must
    declare ``stem_name`` too (a ValueError says so): which of its stages is the stem is not guessed.
    """
    base = unwrap(model)
    if hasattr(base, "stem_name"):  # declared, possibly None
        stem = base.stem_name
    else:
        stages = _as_names(getattr(base, "stage_names", None))
        if not stages:
            return None
        raise ValueError(f"{type(base).__name__} declares stage_names but no stem_name; declare "
                         f"stem_name = {stages[0]!r} if its first stage is the stem (methods that follow the "
                         "authors' feat[1:] skip it), or stem_name = None for no stem")
    if stem is None:
        return None
    return _resolve(base, [stem])[0][0]


def model_layout(model: nn.Module, example_input: torch.Tensor,
                 layers: Sequence[LayerName] | LayerName | None = None,
                 head: LayerName | None = None) -> tuple[list[LayerName], LayerName]:
    """The stage layers and classifier a method taps on ``model``: what is given, else what the model
    declares (``stage_names``/``head_name``), else discovered from one dry run on ``example_input``
    (stages: :func:`discover_stages`; head: the last ``nn.Linear`` to run). Any model works unedited."""
    base = unwrap(model)
    names = _as_names(layers) if layers is not None else getattr(base, "stage_names", None)
    head = head if head is not None else getattr(base, "head_name", None)
    if names is None or head is None:
        order, linears = _dry_run(base, example_input[:2])
        if names is None:
            names = _stages_from(order)
            if not names:
                raise ValueError(f"{type(base).__name__} produced no 4-D feature maps to distil; name the "
                                 "layers with --method-args student_layers=[...] / teacher_layers=[...]")
        if head is None:
            if not linears:
                raise _no_head(base)
            head = linears[-1]
    return list(names), head
