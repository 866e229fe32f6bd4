"""The conventional pipeline, kept as the speed baseline for :class:`~semckd.data.loader.DeviceLoader`.

Per image, in DataLoader workers: PIL image → RandomCrop(padding, fill 0) → RandomHorizontalFlip →
ToTensor → Normalize, i.e. what ``torchvision.transforms`` does in the reference KD code bases, written
with PIL + numpy because torchvision is optional. Same uint8 data, same crop/flip distribution, same
``(images, targets, index)`` batches; only where and how the work happens differs.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from semckd.data.imagefolder import require_pil

__all__ = ["PILAugmentDataset", "baseline_loader"]


class PILAugmentDataset(Dataset):
    """``(float32 CHW normalised, target, index)`` per item from uint8 (N, C, H, W) images."""

    def __init__(self, images: np.ndarray | torch.Tensor, targets: np.ndarray | torch.Tensor, *,
                 mean: Sequence[float], std: Sequence[float], pad: int = 4, flip: bool = True,
                 augment: bool = True) -> None:
        images = images.cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {images.shape}")
        # PIL wants HW (grey) or HWC (RGB) arrays.
        if images.shape[1] == 1:
            self.images = images[:, 0]
        else:
            self.images = np.ascontiguousarray(images.transpose(0, 2, 3, 1))
        if isinstance(targets, torch.Tensor):
            targets = targets.cpu().numpy()
        self.targets = np.asarray(targets, dtype=np.int64)
        self.mean = np.asarray(mean, dtype=np.float32).reshape(-1, 1, 1)
        self.std = np.asarray(std, dtype=np.float32).reshape(-1, 1, 1)
        self.pad, self.flip, self.augment = pad, flip, augment
        self._image = require_pil()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        image_mod = self._image
        img = image_mod.fromarray(self.images[i])
        if self.augment:
            w, h = img.size
            if self.pad:
                padded = image_mod.new(img.mode, (w + 2 * self.pad, h + 2 * self.pad), 0)
                padded.paste(img, (self.pad, self.pad))
                img = padded
            x0 = random.randint(0, 2 * self.pad)
            y0 = random.randint(0, 2 * self.pad)
            img = img.crop((x0, y0, x0 + w, y0 + h))
            if self.flip and random.random() < 0.5:
                img = img.transpose(image_mod.FLIP_LEFT_RIGHT)
        arr = np.asarray(img, dtype=np.float32) / 255.0  # ToTensor
        arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        arr = (arr - self.mean) / self.std  # Normalize
        return torch.from_numpy(np.ascontiguousarray(arr)), int(self.targets[i]), i


def baseline_loader(images: np.ndarray | torch.Tensor, targets: np.ndarray | torch.Tensor, *, batch_size: int,
                    mean: Sequence[float], std: Sequence[float], pad: int = 4, flip: bool = True,
                    workers: int = 2, shuffle: bool = True, drop_last: bool = False,
                    pin_memory: bool = False) -> DataLoader:
    """A plain shuffled DataLoader over :class:`PILAugmentDataset` (the usual KD-repo setup)."""
    ds = PILAugmentDataset(images, targets, mean=mean, std=std, pad=pad, flip=flip)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, num_workers=workers, drop_last=drop_last,
                      pin_memory=pin_memory, persistent_workers=workers > 0)
