"""The authors' key layout: SemCKD criterion weights to and from their ``SelfA`` state-dict names.

The authors' code (github.com/DefangChen/SemCKD) stores the criterion as ``query_weight{i}``,
``key_weight{j}`` and ``regressor{i}{j}.regressor``; this library keeps ``query[i]``, ``key[j]``
(:class:`~semckd.criterion.MLPEmbed`) and ``projectors[i][j]`` (:func:`~semckd.criterion.make_projector`).
Both functions take any module with that layout and ``num_student`` / ``num_teacher`` attributes
(:class:`~semckd.criterion.SemCKD`, ``benchmarks.reference.ReferenceSemCKD``)::

    from semckd.interop import load_official_state_dict, official_state_dict
    load_official_state_dict(crit, torch.load("selfa.pth", weights_only=True))

The authors name pair modules ``'regressor' + str(i) + str(j)``; from 10 layers on two pairs can get
one name (``regressor110`` is (1, 10) and (11, 0)) and their ``setattr`` silently overwrites one
module with the other. Since S and T are known here, a name is decoded unambiguously whenever only
one split is valid; when two valid pairs share a name, the official layout cannot represent the
module and both directions raise ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

__all__ = ["load_official_state_dict", "official_state_dict"]


def _official_prefixes(module: nn.Module) -> dict[str, str]:
    """internal prefix → official prefix, for every parameterised submodule."""
    num_student, num_teacher = int(module.num_student), int(module.num_teacher)
    out: dict[str, str] = {}
    for i in range(num_student):
        out[f"query.{i}."] = f"query_weight{i}."
    for j in range(num_teacher):
        out[f"key.{j}."] = f"key_weight{j}."
    owner: dict[str, tuple[int, int]] = {}
    for i in range(num_student):
        for j in range(num_teacher):
            name = f"regressor{i}{j}"
            if name in owner:
                raise ValueError(
                    f"the authors' key layout is ambiguous for {num_student} student × {num_teacher} "
                    f"teacher layers: pairs {owner[name]} and {(i, j)} are both {name!r}; save/load with "
                    "state_dict() instead of the official layout")
            owner[name] = (i, j)
            out[f"projectors.{i}.{j}."] = f"{name}.regressor."
    return out


def official_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """``module``'s state in the authors' ``SelfA`` key layout (``query_weight0.linear1.weight``, ...)."""
    prefixes = _official_prefixes(module)
    out: dict[str, torch.Tensor] = {}
    for key, value in module.state_dict().items():
        for ours, theirs in prefixes.items():
            if key.startswith(ours):
                out[theirs + key[len(ours):]] = value
                break
        else:  # pragma: no cover - every parameter lives under one of the prefixes
            raise RuntimeError(f"no official name for {key!r}")
    return out


def load_official_state_dict(module: nn.Module, sd: Mapping[str, torch.Tensor]) -> None:
    """Load weights saved from the authors' ``SelfA`` into ``module`` (a leading ``module.`` from DDP is
    stripped).

    The dict must match exactly: the first missing, unexpected or mis-shaped key is named in the
    ``ValueError`` and nothing is loaded. A faithful-mode module only accepts weights trained at its own
    batch size.
    """
    if not isinstance(sd, Mapping):
        raise ValueError(f"expected a state dict (mapping of names to tensors), got {type(sd).__name__}")
    sd = dict(sd)
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    own = official_state_dict(module)
    hint = (f"this module has {module.num_student} student and {module.num_teacher} teacher layers, "
            f"batch_size={getattr(module, 'batch_size', '?')}, factor={getattr(module, 'factor', '?')}")
    for k in own:
        if k not in sd:
            raise ValueError(f"official SemCKD state dict is missing key {k!r} ({hint})")
    for k in sd:
        if k not in own:
            raise ValueError(f"official SemCKD state dict has unexpected key {k!r} ({hint})")
    for k, v in own.items():
        got = sd[k]
        if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(v.shape):
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            raise ValueError(f"official SemCKD key {k!r} has shape {shape}, expected {tuple(v.shape)} "
                             f"({hint})")
    back = {theirs: ours for ours, theirs in _official_prefixes(module).items()}
    internal: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        for theirs, ours in back.items():
            if k.startswith(theirs):
                internal[ours + k[len(theirs):]] = v
                break
    module.load_state_dict(internal, strict=True)
