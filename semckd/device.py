"""Device names → ``torch.device``: the one rule for training, ``semckd eval`` and the benchmarks."""

from __future__ import annotations

import torch

from .errors import UserError

__all__ = ["backend_device_type", "resolve_device"]


def backend_device_type(spec: str) -> str:
    """``"cuda"`` when ``spec`` trains on a GPU (``auto`` with one present), else ``"cpu"``: what the DDP
    backend (NCCL or gloo) is chosen by, before the process knows its local rank."""
    return "cuda" if spec.startswith("cuda") or (spec == "auto" and torch.cuda.is_available()) else "cpu"


def resolve_device(spec: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` → this process's GPU when there is one, else CPU. ``cuda`` → ``cuda:LOCAL_RANK``."""
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
        return torch.device("cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {spec} requested but CUDA is not available; use --device cpu")
        return torch.device(spec) if ":" in spec else torch.device("cuda", local_rank)
    if spec == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError("--device mps requested but MPS is not available; use --device cpu")
    try:
        return torch.device(spec)
    except RuntimeError:
        raise UserError(f"--device {spec!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
