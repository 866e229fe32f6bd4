"""Checkpoints: saving, teacher import, and RNG state as plain tensors.

Everything is saved as tensors and plain Python values so ``torch.load(weights_only=True)`` can read
it back: loading a checkpoint must never execute code from the file. Writes go through the one atomic
writer (:mod:`semckd.atomic`), so a crash or a full disk mid-save leaves the previous checkpoint intact
instead of a truncated one. Loading (``load_checkpoint``), the checkpoint format and the prefix
stripping live in :mod:`semckd.runfolder`, the module that owns run-folder files.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .atomic import atomic_write
from .errors import UserError
from .runfolder import FORMAT, load_checkpoint, strip_wrapper_prefixes

__all__ = [
    "atomic_save",
    "capture_rng",
    "head_of",
    "load_state_dict_checked",
    "load_teacher",
    "restore_rng",
    "split_checkpoint",
]

# ---------------------------------------------------------------------- atomic writes
def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` that either fully replaces ``path`` or leaves it untouched."""
    atomic_write(path, lambda f: torch.save(obj, f))


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def split_checkpoint(obj: Any, path: str | Path = "checkpoint"
                     ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Return ``(state_dict, meta)`` from a semckd checkpoint, the authors' ``{"model": sd}``,
    a ``{"state_dict": sd}`` file, or a plain state_dict. ``meta`` holds whatever names the run
    (``model``, ``num_classes``, ``in_channels``, ``config``...) when the file says so."""
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        skip = ("student", "extras", "optimizer", "scheduler", "scaler", "rng")
        meta = {k: v for k, v in obj.items() if k not in skip}
        return strip_wrapper_prefixes(obj["student"]), meta
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "student", "net"):
            if _is_state_dict(obj.get(key)):
                meta = {k: v for k, v in obj.items() if k != key and isinstance(v, (int, float, str))}
                return strip_wrapper_prefixes(obj[key]), meta
        if _is_state_dict(obj):
            return strip_wrapper_prefixes(obj), {}
    raise UserError(f"{str(path)!r} holds no model weights (expected a semckd checkpoint, a state_dict, "
                    "or a dict with a 'model'/'state_dict' entry)")


def head_of(model: nn.Module) -> str | None:
    """The classifier's name (declared, else the last ``nn.Linear``), for a clearer class-count error."""
    from .features import discover_head

    try:
        return discover_head(model)
    except ValueError:
        return None


def load_state_dict_checked(model: nn.Module, sd: dict[str, torch.Tensor], what: str, arch: str,
                            head_name: str | None = None) -> None:
    """Strict ``load_state_dict`` whose failure is one line naming expected vs found."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        raise UserError(
            f"{what} does not fit architecture {arch!r}: {len(missing)} missing keys (e.g. {missing[:2]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:2]}); pass the architecture it was trained as"
        )
    for k, v in own.items():
        if tuple(sd[k].shape) != tuple(v.shape):
            if head_name and k.startswith(head_name + "."):
                raise UserError(f"{what} has {sd[k].shape[0]} output classes but the model needs "
                                f"{v.shape[0]} (the dataset's); use a checkpoint trained on this dataset")
            raise UserError(f"{what} does not fit architecture {arch!r}: {k} is {list(sd[k].shape)} in the "
                            f"file but {list(v.shape)} in the model")
    model.load_state_dict(sd, strict=True)


# the authors' model_dict names that differ from the zoo's registry names (lower-cased)
_AUTHOR_ARCH_NAMES = {"shufflev1": "shufflenetv1", "shufflev2": "shufflenetv2", "mobilenetv2": "mobilenetv2"}


def _guess_arch_from_path(path: Path, known: list[str]) -> str | None:
    """The authors store teachers as ``<arch>_vanilla/ckpt_epoch_240.pth`` (``wrn_40_2_vanilla``,
    ``ShuffleV2_vanilla``...) and students as ``S:<arch>_T:...``; their ``model_dict`` names
    (``ShuffleV1``/``ShuffleV2``) map onto the zoo's (``shufflenetv1``/``shufflenetv2``)."""
    directory = path.resolve().parent.name
    m = re.match(r"S:(.+?)_T:", directory)
    candidates = [m.group(1)] if m else []
    seg = directory.split("_")
    if len(seg) >= 3:
        candidates.append("_".join(seg[:3]))
    candidates.append(seg[0])
    for c in candidates:
        name = _AUTHOR_ARCH_NAMES.get(c.lower(), c.lower())
        if name in known:
            return name
    return None


def load_teacher(path: str | Path, *, arch: str | None, num_classes: int, in_channels: int,
                 dataset: str = "the dataset") -> tuple[nn.Module, dict[str, Any]]:
    """Build the teacher network and load its weights from ``path``.

    The architecture comes from the checkpoint (semckd checkpoints name it), else ``arch``
    (``--teacher-model``), else the authors' folder naming; when both file and ``arch`` name one they
    must agree. Class count and input channels are checked against the dataset before loading.
    """
    from .models import create_model, list_models

    obj = load_checkpoint(path, "teacher checkpoint")
    sd, meta = split_checkpoint(obj, path)
    found = meta.get("model") if isinstance(meta.get("model"), str) else None
    if found and arch and found.lower() != arch.lower():
        raise UserError(f"teacher checkpoint {str(path)!r} holds a {found} but --teacher-model says {arch}; "
                        "drop --teacher-model or pass the matching checkpoint")
    name = found or arch or _guess_arch_from_path(Path(path), list_models())
    if not name:
        raise UserError(f"teacher checkpoint {str(path)!r} does not name its architecture; "
                        "pass --teacher-model NAME (see the model list in the docs)")
    if "num_classes" in meta and int(meta["num_classes"]) != num_classes:
        raise UserError(f"teacher checkpoint {str(path)!r} has {int(meta['num_classes'])} classes but "
                        f"{dataset} has {num_classes}; use a teacher trained on {dataset}")
    if "in_channels" in meta and int(meta["in_channels"]) != in_channels:
        raise UserError(f"teacher checkpoint {str(path)!r} takes {int(meta['in_channels'])}-channel images "
                        f"but {dataset} has {in_channels}; use a teacher trained on {dataset}")
    teacher = create_model(name, num_classes=num_classes, in_channels=in_channels)
    load_state_dict_checked(teacher, sd, f"teacher checkpoint {str(path)!r}", name, head_of(teacher))
    meta = dict(meta, model=name)
    return teacher, meta


# ---------------------------------------------------------------------- RNG state
def capture_rng() -> dict[str, Any]:
    """All generator states as tensors / ints (loadable with ``weights_only=True``)."""
    py = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "cuda": (list(torch.cuda.get_rng_state_all())
                 if torch.cuda.is_available() and torch.cuda.is_initialized() else []),
        "python": {"version": int(py[0]), "state": torch.tensor(py[1], dtype=torch.int64),
                   "gauss": py[2]},
    }
    try:
        import numpy as np

        key, keys, pos, has_gauss, cached = np.random.get_state()
        state["numpy"] = {"key": str(key), "state": torch.from_numpy(keys.astype("int64")), "pos": int(pos),
                          "has_gauss": int(has_gauss), "cached": float(cached)}
    except ImportError:  # pragma: no cover - numpy is a dependency
        pass
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
    py = state.get("python")
    if py:
        random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    nps = state.get("numpy")
    if nps:
        import numpy as np

        np.random.set_state((nps["key"], nps["state"].numpy().astype("uint32"), nps["pos"], nps["has_gauss"],
                             nps["cached"]))
