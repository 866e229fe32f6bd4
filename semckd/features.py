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


def _resolve(model: nn.Module, names: Sequence[str]) -> list[nn.Module]:
    modules = dict(unwrap(model).named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        sample = ", ".join(list(k for k in modules if k)[:12])
        raise ValueError(
            f"no module named {missing[0]!r} in {type(unwrap(model)).__name__}; "
            f"use names from model.named_modules() (e.g. {sample}, ...)"
        )
    return [modules[n] for n in names]


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
        self.names = list(names)
        self.input_names = list(input_of)
        self.detach = detach
        self._out: list[torch.Tensor | None] = [None] * len(self.names)
        self._in: list[torch.Tensor | None] = [None] * len(self.input_names)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        for i, mod in enumerate(_resolve(base, self.names)):
            self._handles.append(mod.register_forward_hook(self._make_out_hook(i)))
        for i, mod in enumerate(_resolve(base, self.input_names)):
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
        for n, t in zip(names, items):
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
    children and is picked over them. 1×1 maps (global pooling) are not stages. The model's train/eval
    mode is restored afterwards; BN statistics are not touched (the dry run is in eval mode).
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
    was_training = base.training
    base.eval()
    try:
        base(example_input)
    finally:
        base.train(was_training)
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
