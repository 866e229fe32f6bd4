"""What one benchmark row measures (:class:`BenchConfig`), the preset pairs, and the machine it runs on."""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from semckd.device import resolve_device  # noqa: F401  (the library's one device rule; the bench jobs import it from here)
from semckd.precision import BENCH_ALIASES, Precision

# name → (student, teacher, input size, in channels, classes)
PAIRS: dict[str, tuple[str, str, int, int, int]] = {
    "cifar100": ("resnet8x4", "resnet32x4", 32, 3, 100),
    "fmnist": ("resnet8", "resnet20", 28, 1, 10),  # the pair of configs/fashion_mnist + accuracy_table.py
}

METHODS = ("vanilla", "kd", "semckd", "reference")

# fp32-cl / bf16-cl: fp32 / bf16 with the networks and inputs in channels-last (NHWC) memory format.
# "auto" is not measured as such: it becomes the precision training's default (amp="auto") picks here.
# These are user-facing names only: each maps onto one semckd.precision.Precision (BENCH_ALIASES).
PRECISIONS = tuple(BENCH_ALIASES)

def default_precision(device: torch.device) -> str:
    """The bench precision matching what training uses by default on ``device`` (``amp="auto"``, and the
    memory format that precision defaults to): :meth:`Precision.from_alias` of ``auto``, by its name."""
    return Precision.from_alias("auto", device).alias

@dataclass
class BenchConfig:
    """One measured configuration (picklable: it crosses into a fresh process on CPU)."""

    student: str
    teacher: str
    input_size: int
    in_channels: int
    num_classes: int
    method: str = "semckd"
    precision: str = "fp32"
    batch_size: int = 64
    device: str = "cpu"
    steps: int = 10
    warmup: int = 3
    repeats: int = 5
    pair: str = "custom"
    student_layers: list[str] | None = None
    teacher_layers: list[str] | None = None
    method_options: dict[str, Any] = field(default_factory=dict)
    count_flops: bool = True
    seed: int = 0
    threads: int | None = None  # torch intra-op threads (None: torch's default)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)

@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """Use ``n`` torch CPU threads inside the block (None: leave as is), then restore."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n:
            torch.set_num_threads(before)

def machine_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"torch": torch.__version__, "python": platform.python_version(),
                            "platform": platform.platform(),
                            "cpu": platform.processor() or platform.machine(),
                            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                            "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info

def default_counts(device: torch.device) -> tuple[int, int, int]:
    """(steps, warmup, repeats): CPU steps take seconds, GPU steps milliseconds."""
    return (20, 5, 5) if device.type == "cuda" else (2, 1, 3)


def resolve_counts(device: torch.device, steps: int | None, warmup: int | None, repeats: int | None,
                   isolate: bool | None) -> tuple[int, int, int, bool]:
    """The user's (steps, warmup, repeats, isolate) with the device's defaults for what is unset.

    Zero warm-up steps is a valid choice, zero steps or repeats is not (it means the default); on a
    CPU each measurement runs in its own process by default, so its peak-RSS growth is its own.
    """
    d_steps, d_warm, d_rep = default_counts(device)
    return (steps or d_steps, d_warm if warmup is None else warmup, repeats or d_rep,
            device.type == "cpu" if isolate is None else isolate)
