"""Feature taps: read intermediate activations of any ``nn.Module`` through forward hooks.

Distillation methods need a network's intermediate feature maps. The authors' code threads an
``is_feat=True`` flag through every model's ``forward``; taps instead address modules by their name in
``named_modules()``, so a user's own model (a torchvision ResNet, a timm model) can be distilled without
editing it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["FeatureTap", "discover_stages", "unwrap"]


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


def _resolve(model: nn.Module, names: Sequence[str]) -> tuple[list[str], list[nn.Module]]:
    """Map names to modules of the unwrapped model; returns the unwrapped names and the modules."""
    modules = dict(unwrap(model).named_modules())
    names = [_unwrap_name(n, modules) for n in names]
    missing = [n for n in names if n not in modules]
    if missing:
        sample = ", ".join(list(k for k in modules if k)[:12])
        raise ValueError(
            f"no module named {missing[0]!r} in {type(unwrap(model)).__name__}; "
            f"use names from model.named_modules() (e.g. {sample}, ...)"
        )
    return names, [modules[n] for n in names]


class FeatureTap:
    """Collect outputs (and optionally inputs) of named submodules on every forward pass.

    ``names=None`` uses the model's declared ``stage_names`` (every zoo model has them); for other models
    call :func:`discover_stages` once. After each forward, ``tap.features`` holds the outputs in the order
    of ``names`` and ``tap.inputs`` the first positional input of each module in ``input_of`` (e.g. the
    classifier, whose input is the pooled embedding). Use as a context manager, or call ``remove()``.
    """

    def __init__(
        self,
        model: nn.Module,
        names: Sequence[str] | None = None,
        *,
        input_of: Sequence[str] = (),
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
        self.names, out_mods = _resolve(base, names)
        self.input_names, in_mods = _resolve(base, input_of)
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


@torch.no_grad()
def discover_stages(model: nn.Module, example_input: torch.Tensor) -> list[str]:
    """Find stage outputs: the last module to finish at each spatial resolution in one dry run.

    Forward hooks fire when a module *finishes*, so a block container (``layer1``) finishes after its
    children and is picked over them. 1×1 maps (global pooling) are not stages. Every module's train/eval
    mode is restored afterwards; BN statistics are not touched (the dry run is in eval mode). Names are
    those of the unwrapped model (no ``module.`` prefix under DDP).
    """
    base = unwrap(model)
    order: list[tuple[str, tuple[int, int]]] = []
    handles = []
    for name, mod in base.named_modules():
        if not name:
            continue

        def hook(_m, _i, out, name=name):
            if isinstance(out, (tuple, list)) and out:
                out = out[0]
            if isinstance(out, torch.Tensor) and out.dim() == 4 and out.shape[-1] * out.shape[-2] > 1:
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
    stages: list[str] = []
    for k, (name, res) in enumerate(order):
        nxt = order[k + 1][1] if k + 1 < len(order) else None
        if nxt != res and name not in stages:
            stages.append(name)
    if not stages:
        raise ValueError(f"{type(base).__name__} produced no 4-D feature maps; pass tap names explicitly")
    return stages
