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
from semckd.precision import AMP_CHOICES, Precision

# name → (student, teacher, input size, in channels, classes)
PAIRS: dict[str, tuple[str, str, int, int, int]] = {
    "cifar100": ("resnet8x4", "resnet32x4", 32, 3, 100),
    "fmnist": ("resnet8", "resnet20", 28, 1, 10),  # the pair of configs/fashion_mnist + accuracy_table.py
}

METHODS = ("vanilla", "kd", "semckd", "reference")

# The bench's precision names → (amp, channels_last). fp32-cl / bf16-cl: fp32 / bf16 with the networks
# and inputs in channels-last (NHWC) memory format. "auto" is not measured as such: it becomes the
# precision training's default (amp="auto") picks here. The names are the bench's vocabulary only: each
# maps onto one semckd.precision.Precision, the type training and evaluation use.
NAMES: dict[str, tuple[str, bool]] = {
    "fp32": ("none", False), "fp32-cl": ("none", True), "bf16": ("bf16", False), "bf16-cl": ("bf16", True),
    "fp16": ("fp16", False),
}
PRECISIONS = tuple(NAMES)


def precision_of(name: str, device: torch.device | str) -> Precision:
    """A bench precision name (``fp32``, ``fp32-cl``, ``bf16``, ``bf16-cl``, ``fp16``, ``auto``; the
    engine's ``none`` and ``bf16-emulated`` pass through) as one :class:`Precision`; ``auto`` is exactly
    what training picks by default on ``device``."""
    if name == "auto":
        return Precision.resolve("auto", None, device)
    if name in AMP_CHOICES[1:] and name not in NAMES:  # none, bf16-emulated: the engine's names
        return Precision(name, False, f"bench precision {name}")
    if name not in NAMES:
        raise ValueError(f"unknown precision {name!r}; choose from auto, {', '.join(NAMES)}")
    amp, cl = NAMES[name]
    return Precision(amp, cl, f"bench precision {name}")


def name_of(precision: Precision) -> str:
    """The bench's name for ``precision`` (``bf16-emulated`` has none and keeps its own)."""
    base = {"none": "fp32", "bf16": "bf16", "fp16": "fp16"}.get(precision.amp, precision.amp)
    return base + ("-cl" if precision.channels_last and precision.amp != "bf16-emulated" else "")


def default_precision(device: torch.device) -> str:
    """The bench precision matching what training uses by default on ``device`` (``amp="auto"``, and the
    memory format that precision defaults to), by its name."""
    return name_of(precision_of("auto", device))


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
