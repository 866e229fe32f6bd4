"""Shared helpers for the engine/CLI tests: tiny synthetic Fashion-MNIST IDX files and a tiny model."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch
from torch import nn

TINY = "tiny_engine_net"


def write_idx(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 8, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def make_fashion_mnist(root: Path, n_train: int = 256, n_test: int = 128, size: int = 28,
                       seed: int = 0) -> Path:
    """Write a learnable toy dataset in the Fashion-MNIST IDX layout (class = brightness pattern)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        base = np.zeros((n, size, size), np.float32)
        for i, y in enumerate(labels):  # a bright horizontal band whose position encodes the class
            r = int(y) * (size // 10)
            base[i, r:r + max(size // 10, 1)] = 200
        images = np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8)
        write_idx(root / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", labels)
    return root


class TinyNet(nn.Module):
    """Two conv stages + linear head, declaring stem_name/stage_names/head_name like every zoo model."""

    stem_name = "conv1"
    stage_names = ["conv1", "conv2"]
    head_name = "fc"

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, width, 3, 2, 1), nn.BatchNorm2d(width), nn.ReLU())
        self.conv2 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, 2, 1), nn.BatchNorm2d(2 * width), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.conv2(self.conv1(x))).flatten(1))


def register_tiny() -> None:
    from semckd.models import list_models, register_model

    if TINY not in list_models():
        register_model(TINY)(
            lambda num_classes=10, in_channels=1, **kw: TinyNet(num_classes, in_channels, **kw))
        register_model(TINY + "_wide")(
            lambda num_classes=10, in_channels=1, **kw: TinyNet(num_classes, in_channels, width=12, **kw))


def register_probe_methods() -> None:
    """Test-only distillers exercising every engine hook, extras state, RNG use and failure paths."""
    from semckd.methods import Distiller, list_methods, register_method

    if "engine_probe" in list_methods():
        return

    class Probe(Distiller):
        name = "engine_probe"
        needs_teacher = False

        def __init__(self, student, teacher, ctx, *, fixed: bool = False, blowup_epoch: int = 0,
                     noise: float = 0.0, weight: float = 0.1, **kw) -> None:
            super().__init__(student, teacher, ctx, **kw)
            s, _ = self.probe(ctx.example_input)
            self.proj = nn.Linear(s.embedding.shape[1], 4)
            self.register_buffer("bank", torch.zeros(ctx.num_samples, 4, device=ctx.example_input.device))
            self.fixed, self.batch = fixed, ctx.batch_size
            self.blowup_epoch, self.noise, self.weight = blowup_epoch, noise, weight
            self.epochs_seen: list[int] = []
            self.observed: list[int] = []
            self.train_batches: list[int] = []
            self._epoch = 0

        @classmethod
        def needs_full_batches(cls, options):
            return bool(options.get("fixed", False))

        @property
        def fixed_batch_size(self):
            return self.batch if self.fixed else None

        def on_epoch_start(self, epoch: int) -> None:
            self.epochs_seen.append(epoch)
            self._epoch = epoch

        def observe(self, images, targets) -> None:
            assert not self.training and not torch.is_grad_enabled()
            self.observed.append(int(images.shape[0]))

        def pop_summary(self):
            out = {"observed": list(self.observed)}
            self.observed.clear()
            return out

        def distill_losses(self, s, t, targets, index):
            self.train_batches.append(int(targets.shape[0]))
            z = self.proj(s.embedding)
            if self.noise:
                z = z + self.noise * torch.randn_like(z)  # consumes the global RNG: resume must restore it
            loss = ((z - self.bank[index]) ** 2).mean()
            with torch.no_grad():
                self.bank[index] = z.detach()
            if self.blowup_epoch and self._epoch >= self.blowup_epoch:
                loss = loss * float("inf")
            return {"probe": self.weight * loss}

    class ProbeT(Probe):
        name = "engine_probe_t"
        needs_teacher = True

    register_method(Probe)
    register_method(ProbeT)


def tiny_distill_setup(root: Path) -> tuple[Path, str, str]:
    """``(root, data_dir, teacher_checkpoint)``: tiny IDX data and a wide tiny teacher saved in the
    engine's checkpoint format, for subprocess distillation runs."""
    from semckd.runfolder import FORMAT

    register_tiny()
    register_probe_methods()
    data = make_fashion_mnist(root / "data", n_train=160, n_test=64)
    torch.manual_seed(1)
    teacher = root / "teacher.pt"
    torch.save({"format": FORMAT, "model": TINY + "_wide", "num_classes": 10, "in_channels": 1,
                "student": TinyNet(10, 1, width=12).state_dict()}, teacher)
    return root, str(data), str(teacher)
