"""ImageNet-style class folders (``root/train/<class>/*.jpg``, ``root/val/<class>/...``).

Images are decoded and augmented with Pillow in DataLoader workers (torchvision is optional and not
needed): training uses RandomResizedCrop(224, scale 0.08–1, ratio 3/4–4/3) + horizontal flip, evaluation
resize-shorter-side(256) + center crop(224), each done as a single ``Image.resize(box=...)``. Workers
return uint8 tensors (4× less inter-process traffic than float); normalisation runs on the training
device. Crop/flip randomness is seeded per (seed, epoch, sample), so results do not depend on the number
of workers or ranks, and the loader yields the same ``(images, targets, index)`` triple as
:class:`~semckd.data.loader.DeviceLoader`.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import UserError
from .loader import Batch, Normalizer, derive_seed, epoch_order, shard_size

__all__ = ["IMG_EXTENSIONS", "ImageFolderDataset", "ImageFolderLoader", "center_crop_box", "find_classes",
           "random_resized_crop_box", "require_pil"]

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".webp", ".tif", ".tiff")
_VAL_NAMES = ("val", "validation", "test")


def require_pil() -> Any:
    """PIL's ``Image`` module, or a one-line error naming the install: Pillow is an optional dependency."""
    try:
        from PIL import Image
    except ImportError:
        raise UserError("image-folder datasets need Pillow to decode images: pip install pillow") from None
    return Image


def random_resized_crop_box(width: int, height: int, rng: random.Random,
                            scale: tuple[float, float] = (0.08, 1.0),
                            ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """``(left, top, right, bottom)`` of a RandomResizedCrop window (Szegedy et al. / torchvision rule).

    Up to 10 tries for a window with area in ``scale`` × image area and log-uniform aspect ``ratio``
    that fits; otherwise the largest centred window whose aspect is clamped into ``ratio``.
    """
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = rng.randint(0, height - h)
            left = rng.randint(0, width - w)
            return left, top, left + w, top + h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    top, left = (height - h) // 2, (width - w) // 2
    return left, top, left + w, top + h


def center_crop_box(width: int, height: int, resize: int, size: int) -> tuple[float, float, float, float]:
    """Source-pixel box equal to resize(shorter side → ``resize``) then center-crop ``size``.

    Lets the eval transform be one resample of just the needed region instead of resize + crop.
    """
    s = resize / min(width, height)
    new_w, new_h = width * s, height * s
    left = round((new_w - size) / 2.0)
    top = round((new_h - size) / 2.0)
    return left / s, top / s, (left + size) / s, (top + size) / s


def find_classes(directory: Path) -> list[str]:
    if not directory.is_dir():
        raise UserError(f"{directory} is not a folder; expected <data-dir>/train/<class>/*.jpg "
                        "(ImageNet layout)")
    classes = sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise UserError(f"{directory} has no class subfolders; expected {directory}/<class>/<image files>")
    return classes


def _scan(directory: Path, class_to_idx: dict[str, int]) -> list[tuple[str, int]]:
    samples: list[tuple[str, int]] = []
    for cls in sorted(class_to_idx):
        cdir = directory / cls
        if not cdir.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(cdir, followlinks=True):
            dirnames.sort()
            for fn in sorted(filenames):
                if fn.lower().endswith(IMG_EXTENSIONS):
                    samples.append((os.path.join(dirpath, fn), class_to_idx[cls]))
    return samples


class ImageFolderDataset(Dataset):
    """Items are ``(uint8 CHW tensor, target, index)``; keys are ``index`` or ``(index, epoch)``."""

    def __init__(self, directory: str | os.PathLike, *, classes: Sequence[str] | None = None,
                 train: bool = True, image_size: int = 224, resize: int = 256, seed: int = 0,
                 augment: bool = True) -> None:
        self.root = Path(directory)
        self.classes = list(classes) if classes is not None else find_classes(self.root)
        if classes is not None:
            extra = sorted(set(find_classes(self.root)) - set(self.classes))
            if extra:
                raise UserError(f"{self.root} has class folders missing from the training set: "
                                f"{', '.join(extra[:5])}; train and val need the same class names")
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.samples = _scan(self.root, self.class_to_idx)
        if not self.samples:
            raise UserError(f"no images ({', '.join(IMG_EXTENSIONS)}) under {self.root}/<class>/; "
                            "check --data-dir")
        self.targets = [t for _, t in self.samples]
        self.train, self.augment = train, augment
        self.image_size, self.resize, self.seed = image_size, resize, seed

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int, epoch: int = 0) -> torch.Tensor:
        """Decode + transform one image to a uint8 (3, S, S) tensor."""
        image_mod = require_pil()
        path, _ = self.samples[index]
        try:
            with image_mod.open(path) as im:
                img = im.convert("RGB")
        except Exception as e:  # noqa: BLE001 - PIL raises several types for bad files
            raise UserError(f"{path}: cannot decode image ({type(e).__name__}: {e}); remove or replace "
                            "the file") from None
        w, h, s = img.width, img.height, self.image_size
        if self.train and self.augment:
            rng = random.Random(derive_seed(self.seed, epoch, f"img{index}"))
            box = random_resized_crop_box(w, h, rng)
            img = img.resize((s, s), image_mod.BILINEAR, box=box)
            if rng.random() < 0.5:
                img = img.transpose(image_mod.FLIP_LEFT_RIGHT)
        else:
            img = img.resize((s, s), image_mod.BILINEAR, box=center_crop_box(w, h, self.resize, s))
        arr = np.asarray(img, dtype=np.uint8)
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int, int]:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        return self.load(index, epoch), self.targets[index], index


class EpochSampler(Sampler):
    """Yields ``(index, epoch)`` keys in :func:`epoch_order` order; lives in the main process."""

    def __init__(self, n: int, *, shuffle: bool, seed: int, rank: int, world_size: int, even: bool,
                 drop_tail: bool) -> None:
        self.n, self.shuffle, self.seed = n, shuffle, seed
        self.rank, self.world_size, self.even, self.drop_tail = rank, world_size, even, drop_tail
        self.epoch = 0

    def __len__(self) -> int:
        return shard_size(self.n, self.world_size, self.rank, even=self.even, drop_tail=self.drop_tail)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = epoch_order(self.n, shuffle=self.shuffle, seed=self.seed, epoch=self.epoch, rank=self.rank,
                            world_size=self.world_size, even=self.even, drop_tail=self.drop_tail)
        epoch = self.epoch
        for i in order.tolist():
            yield i, epoch


def _clean_worker_error(e: Exception) -> UserError | None:
    """DataLoader re-raises worker errors with a traceback as the message; keep the UserError line."""
    prefix = "semckd.errors.UserError: "
    for line in reversed(str(e).strip().splitlines()):
        if line.startswith(prefix):
            return UserError(line[len(prefix):])
    return None


class ImageFolderLoader:
    """DataLoader over an :class:`ImageFolderDataset` with the :class:`DeviceLoader` interface."""

    def __init__(self, dataset: ImageFolderDataset, *, batch_size: int, mean: Sequence[float],
                 std: Sequence[float], shuffle: bool = False, drop_last: bool = False, seed: int = 0,
                 rank: int = 0, world_size: int = 1, even_shards: bool = True, workers: int = 2,
                 device: torch.device | str = "cpu", channels_last: bool = False) -> None:
        if batch_size < 1:
            raise UserError(f"batch size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise UserError(f"invalid DDP rank {rank} for world size {world_size}")
        if workers < 0:
            raise UserError(f"workers must be >= 0, got {workers}")
        self.dataset = dataset
        self.device = torch.device(device)
        self.batch_size, self.drop_last = batch_size, drop_last
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self.normalize = Normalizer(mean, std, self.device, channels_last)
        self.sampler = EpochSampler(len(dataset), shuffle=shuffle, seed=seed, rank=rank,
                                    world_size=world_size, even=even_shards, drop_tail=drop_last)
        self._loader = DataLoader(dataset, batch_size=batch_size, sampler=self.sampler, num_workers=workers,
                                  pin_memory=self.device.type == "cuda", drop_last=drop_last,
                                  persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None)
        self._epoch = 0

    @property
    def dataset_size(self) -> int:
        return len(self.dataset)

    @property
    def num_samples(self) -> int:
        return len(self.sampler)

    @property
    def epoch(self) -> int:
        return self._epoch

    def __len__(self) -> int:
        return len(self._loader)

    def set_epoch(self, epoch: int) -> None:
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self._epoch = int(epoch)

    def __iter__(self) -> Iterator[Batch]:
        self.sampler.epoch = self._epoch
        self._epoch += 1
        nb = self.device.type == "cuda"
        it = iter(self._loader)
        while True:
            try:
                x, y, idx = next(it)
            except StopIteration:
                return
            except UserError:
                raise
            except Exception as e:
                cleaned = _clean_worker_error(e)
                if cleaned is None:
                    raise
                raise cleaned from None
            yield (self.normalize(x.to(self.device, non_blocking=nb)),
                   y.to(self.device, torch.int64, non_blocking=nb),
                   idx.to(self.device, torch.int64, non_blocking=nb))
