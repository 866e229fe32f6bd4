"""Datasets and loaders: one call, :func:`build_splits`, gives the engine its train/val/test loaders.

Small datasets (Fashion-MNIST, MNIST, CIFAR-10/100) are held as one uint8 tensor on the training device
and batched by :class:`DeviceLoader` (on-device random crop + flip + normalisation); ImageNet-style class
folders go through a worker DataLoader with Pillow (:class:`ImageFolderLoader`). Both yield
``(images float32 normalised NCHW, targets int64, index int64)`` on the device, where ``index`` is the
sample's position in the full training set, and both take ``set_epoch(epoch)`` so order and
augmentation are a pure function of ``(seed, epoch)`` (exact resume, DDP-consistent).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, NamedTuple

import torch

from ..errors import UserError
from .loader import DeviceLoader, Normalizer, crop_flip, derive_seed, epoch_order
from .split import stratified_holdout

__all__ = ["DATASETS", "DataSplits", "DeviceLoader", "ImageFolderLoader", "Normalizer", "build_splits",
           "crop_flip", "dataset_defaults", "derive_seed", "epoch_order", "load_arrays",
           "stratified_holdout", "train_targets"]

DATASETS = ("fashion_mnist", "mnist", "cifar10", "cifar100", "imagefolder")
_ALIASES = {"fashionmnist": "fashion_mnist", "fmnist": "fashion_mnist", "cifar_10": "cifar10",
            "cifar_100": "cifar100", "imagenet": "imagefolder", "image_folder": "imagefolder"}

# Per-dataset defaults. Stats are the training-set channel mean/std of pixel/255 (Fashion-MNIST's were
# measured on the real files: 0.28604, 0.35302; CIFAR-100's are the ones the RepDistiller/SemCKD code
# uses). Crop padding follows common practice (4 px for 32×32 CIFAR, 2 px for 28×28 images); MNIST
# digits are not flip-invariant, so no flip there.
_DEFAULTS: dict[str, dict[str, Any]] = {
    "fashion_mnist": {"mean": (0.2860,), "std": (0.3530,), "pad": 2, "flip": True, "num_classes": 10},
    "mnist": {"mean": (0.1307,), "std": (0.3081,), "pad": 2, "flip": False, "num_classes": 10},
    "cifar10": {"mean": (0.4914, 0.4822, 0.4465), "std": (0.2470, 0.2435, 0.2616), "pad": 4, "flip": True,
                "num_classes": 10},
    "cifar100": {"mean": (0.5071, 0.4867, 0.4408), "std": (0.2675, 0.2565, 0.2761), "pad": 4, "flip": True,
                 "num_classes": 100},
    "imagefolder": {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "pad": 0, "flip": True},
}


def __getattr__(name: str) -> Any:  # ImageFolderLoader pulls in DataLoader machinery: load on demand
    if name == "ImageFolderLoader":
        from .imagefolder import ImageFolderLoader
        return ImageFolderLoader
    raise AttributeError(f"module 'semckd.data' has no attribute {name!r}")


def canonical_name(dataset: str) -> str:
    key = dataset.strip().lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise UserError(f"unknown dataset {dataset!r}; choose one of: {', '.join(DATASETS)}")
    return key


def dataset_defaults(dataset: str) -> dict[str, Any]:
    """Normalisation stats and augmentation defaults for a dataset name (a copy)."""
    return dict(_DEFAULTS[canonical_name(dataset)])


def load_arrays(dataset: str, data_dir: str | None = None, *, download: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    """CPU ``(train_x uint8 NCHW, train_y int64, test_x, test_y, class_names)`` of a small dataset."""
    name = canonical_name(dataset)
    if name in ("fashion_mnist", "mnist"):
        from .idx import load_idx_dataset
        xtr, ytr, xte, yte = load_idx_dataset(name, data_dir)
        classes = (["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                    "Bag", "Ankle boot"] if name == "fashion_mnist" else [str(i) for i in range(10)])
    elif name in ("cifar10", "cifar100"):
        from .cifar import load_cifar
        xtr, ytr, xte, yte, classes = load_cifar(name, data_dir, download=download)
    else:
        raise UserError(f"{dataset!r} is not held in memory; use build_splits for image folders")
    return (torch.from_numpy(xtr), torch.from_numpy(ytr), torch.from_numpy(xte), torch.from_numpy(yte),
            classes)


class DataSplits(NamedTuple):
    """The loaders of one run: ``val`` is None without a validation split."""

    train: DeviceLoader | Any
    val: DeviceLoader | Any | None
    test: DeviceLoader | Any
    info: dict[str, Any]


def build_splits(dataset: str, data_dir: str | None, batch_size: int, *, device: torch.device | str = "cpu",
                 download: bool = False, limit_train: int | None = None, limit_test: int | None = None,
                 eval_batch_size: int | None = None, drop_last_train: bool = False, seed: int = 0,
                 rank: int = 0, world_size: int = 1, channels_last: bool = False, workers: int = 2,
                 augment: bool = True, pad: int | None = None, flip: bool | None = None,
                 image_size: int | None = None, resize: int | None = None, val_split: int = 0,
                 val_seed: int = 0) -> DataSplits:
    """Build the train / validation / test loaders for the engine.

    ``val_split`` holds out that many training images (:func:`stratified_holdout`, drawn with
    ``val_seed``, the same for every run seed) *before* ``limit_train`` keeps the first N of the rest,
    so a limited budget still trains on N images. Validation batches are unaugmented and sharded like
    test batches.

    ``batch_size`` is per process (global batch = batch_size × world_size). Training batches are
    shuffled and augmented (unless ``augment=False``) and sharded like ``DistributedSampler`` (equal
    batch counts on every rank). Test batches are in order, unaugmented, and sharded disjointly without
    padding (ranks may differ by one sample, so sum correct/total across ranks rather than averaging
    per-rank accuracies). ``limit_train`` keeps the first N training samples (``index`` is their position
    among the training samples kept; image folders keep N evenly spaced files, renumbered 0..N-1, since
    their listing is sorted by class). ``pad``/``flip`` override the dataset's crop padding and flip defaults;
    ``image_size``/``resize`` the image-folder crop (224) and eval resize (256). ``info``: name,
    num_classes, in_channels, image_size, num_train, num_test, mean, std, classes, pad, flip.
    """
    name = canonical_name(dataset)
    if batch_size < 1:
        raise UserError(f"batch size must be >= 1, got {batch_size}")
    eval_bs = eval_batch_size or batch_size
    if eval_bs < 1:
        raise UserError(f"eval batch size must be >= 1, got {eval_bs}")
    if val_split < 0:
        raise UserError(f"--val-split must be >= 0, got {val_split}")
    for label, lim in (("--limit-train", limit_train), ("limit_test", limit_test)):
        if lim is not None and lim < 1:
            raise UserError(f"{label} must be >= 1, got {lim}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise UserError(f"invalid DDP rank {rank} for world size {world_size}")
    defaults = _DEFAULTS[name]
    pad_v = defaults["pad"] if pad is None else int(pad)
    flip_v = defaults["flip"] if flip is None else bool(flip)
    if pad_v < 0:
        raise UserError(f"crop padding must be >= 0, got {pad_v}")
    device = torch.device(device)
    mean, std = defaults["mean"], defaults["std"]
    common = dict(mean=mean, std=std, rank=rank, world_size=world_size, channels_last=channels_last,
                  device=device, seed=seed)

    if name == "imagefolder":
        from .imagefolder import _VAL_NAMES, ImageFolderDataset, ImageFolderLoader
        if data_dir is None:
            raise UserError("the imagefolder dataset needs --data-dir <root> holding train/<class>/ and "
                            "val/<class>/")
        root = Path(data_dir).expanduser()
        size = image_size or 224
        rsz = resize or round(size * 256 / 224)
        train_ds = ImageFolderDataset(root / "train", train=True, image_size=size, resize=rsz, seed=seed,
                                      augment=augment)
        val_dir = next((root / v for v in _VAL_NAMES if (root / v).is_dir()), None)
        if val_dir is None:
            raise UserError(f"{root} has no val/ folder; expected {root}/val/<class>/<images> next to train/")
        test_ds = ImageFolderDataset(val_dir, classes=train_ds.classes, train=False, image_size=size,
                                     resize=rsz, seed=seed)
        val = None
        if val_split:
            tr_idx, va_idx = stratified_holdout(train_ds.targets, val_split, val_seed)
            val_ds = copy.copy(train_ds)  # the training images, transformed like test images
            val_ds.train = False
            _select(val_ds, va_idx.tolist())
            _select(train_ds, tr_idx.tolist())
            val = ImageFolderLoader(val_ds, batch_size=eval_bs, shuffle=False, drop_last=False,
                                    workers=workers, even_shards=False, **common)
        if limit_train is not None:
            _limit(train_ds, limit_train)
        if limit_test is not None:
            _limit(test_ds, limit_test)
        train = ImageFolderLoader(train_ds, batch_size=batch_size, shuffle=True, drop_last=drop_last_train,
                                  workers=workers, even_shards=True, **common)
        test = ImageFolderLoader(test_ds, batch_size=eval_bs, shuffle=False, drop_last=False, workers=workers,
                                 even_shards=False, **common)
        info = dict(name=name, num_classes=len(train_ds.classes), in_channels=3, image_size=size,
                    num_train=len(train_ds), num_test=len(test_ds), num_val=val_split, mean=list(mean),
                    std=list(std), classes=list(train_ds.classes), pad=0, flip=True)
        return DataSplits(train, val, test, info)

    xtr, ytr, xte, yte, classes = load_arrays(name, data_dir, download=download)
    val = None
    if val_split:
        tr_idx, va_idx = stratified_holdout(ytr, val_split, val_seed)
        val = DeviceLoader(xtr[va_idx], ytr[va_idx], batch_size=eval_bs, shuffle=False, drop_last=False,
                           augment=False, even_shards=False, **common)
        xtr, ytr = xtr[tr_idx], ytr[tr_idx]
    if limit_train is not None:
        xtr, ytr = xtr[:limit_train], ytr[:limit_train]
    if limit_test is not None:
        xte, yte = xte[:limit_test], yte[:limit_test]
    train = DeviceLoader(xtr, ytr, batch_size=batch_size, shuffle=True, drop_last=drop_last_train,
                         augment=augment, pad=pad_v, flip=flip_v, even_shards=True, **common)
    test = DeviceLoader(xte, yte, batch_size=eval_bs, shuffle=False, drop_last=False, augment=False,
                        even_shards=False, **common)
    info = dict(name=name, num_classes=defaults["num_classes"], in_channels=int(xtr.shape[1]),
                image_size=int(xtr.shape[-1]), num_train=int(xtr.shape[0]), num_test=int(xte.shape[0]),
                num_val=val_split, mean=list(mean), std=list(std), classes=classes, pad=pad_v, flip=flip_v)
    return DataSplits(train, val, test, info)


def _select(ds: Any, keep: list[int]) -> None:
    ds.samples = [ds.samples[i] for i in keep]
    ds.targets = [ds.targets[i] for i in keep]


def _limit(ds: Any, n: int) -> None:
    """Keep ``n`` evenly spaced samples: folders are listed class by class, so a head would drop classes."""
    if n >= len(ds.samples):
        return
    keep = [i * len(ds.samples) // n for i in range(n)]
    ds.samples = [ds.samples[i] for i in keep]
    ds.targets = [ds.targets[i] for i in keep]


def train_targets(loader: Any) -> torch.Tensor | None:
    """The labels of every training sample, by sample index, or None when the loader does not hold them.

    CRD's "exact" negatives (drawn from other classes) need them before the first batch is seen.
    """
    targets = getattr(loader, "targets", None)
    if targets is None:
        targets = getattr(getattr(loader, "dataset", None), "targets", None)
    if targets is None:
        return None
    return torch.as_tensor(targets, dtype=torch.int64)
