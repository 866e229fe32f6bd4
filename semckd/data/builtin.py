"""The built-in datasets, registered exactly as a user's would be (:func:`register_dataset`).

Stats are the training-set channel mean/std of pixel/255 (Fashion-MNIST's were measured on the real
files: 0.28604, 0.35302; CIFAR-100's are the ones the RepDistiller/SemCKD code uses). Crop padding
follows common practice (4 px for 32×32 CIFAR, 2 px for 28×28 images); MNIST digits are not
flip-invariant, so no flip there.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from ..errors import UserError
from .assemble import memory_splits
from .registry import DataRequest, DatasetSpec, DataSplits, register_dataset
from .split import stratified_holdout

__all__: list[str] = []

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                   "Bag", "Ankle boot"]


def _memory(spec: DatasetSpec, req: DataRequest, arrays: tuple) -> DataSplits:
    xtr, ytr, xte, yte, classes = arrays
    pad = spec.pad if req.pad is None else int(req.pad)
    flip = spec.flip if req.flip is None else bool(req.flip)
    assert spec.num_classes is not None and spec.mean is not None and spec.std is not None
    return memory_splits(spec.name, req, xtr, ytr, xte, yte, classes, num_classes=spec.num_classes,
                         mean=spec.mean, std=spec.std, pad=pad, flip=flip, augmentation=spec.augmentation)


def _idx(spec: DatasetSpec, req: DataRequest) -> DataSplits:
    from .idx import load_idx_dataset
    xtr, ytr, xte, yte = load_idx_dataset(spec.name, req.data_dir)
    classes = FASHION_CLASSES if spec.name == "fashion_mnist" else [str(i) for i in range(10)]
    return _memory(spec, req, (torch.from_numpy(xtr), torch.from_numpy(ytr), torch.from_numpy(xte),
                               torch.from_numpy(yte), classes))


def _cifar(spec: DatasetSpec, req: DataRequest) -> DataSplits:
    from .cifar import load_cifar
    xtr, ytr, xte, yte, classes = load_cifar(spec.name, req.data_dir, download=req.download)
    return _memory(spec, req, (torch.from_numpy(xtr), torch.from_numpy(ytr), torch.from_numpy(xte),
                               torch.from_numpy(yte), classes))


register_dataset("fashion_mnist", num_classes=10, in_channels=1, image_size=28, mean=(0.2860,), std=(0.3530,),
                 pad=2, flip=True, aliases=("fashionmnist", "fmnist"), extra={"arrays": "idx"},
                 description="Fashion-MNIST IDX files")(_idx)
register_dataset("mnist", num_classes=10, in_channels=1, image_size=28, mean=(0.1307,), std=(0.3081,), pad=2,
                 flip=False, extra={"arrays": "idx"}, description="MNIST IDX files")(_idx)
register_dataset("cifar10", num_classes=10, in_channels=3, image_size=32, mean=(0.4914, 0.4822, 0.4465),
                 std=(0.2470, 0.2435, 0.2616), pad=4, flip=True, aliases=("cifar_10",),
                 extra={"arrays": "cifar"}, description="CIFAR-10 python batches")(_cifar)
register_dataset("cifar100", num_classes=100, in_channels=3, image_size=32, mean=(0.5071, 0.4867, 0.4408),
                 std=(0.2675, 0.2565, 0.2761), pad=4, flip=True, aliases=("cifar_100",),
                 extra={"arrays": "cifar"}, description="CIFAR-100 python batches")(_cifar)


@register_dataset("imagefolder", in_channels=3, image_size=224, mean=(0.485, 0.456, 0.406),
                  std=(0.229, 0.224, 0.225), augmentation="resized_crop", pad=0, flip=True,
                  aliases=("imagenet", "image_folder"), description="ImageNet-style class folders")
def _imagefolder(spec: DatasetSpec, req: DataRequest) -> DataSplits:
    from .imagefolder import _VAL_NAMES, ImageFolderDataset, ImageFolderLoader
    if req.data_dir is None:
        raise UserError("the imagefolder dataset needs --data-dir <root> holding train/<class>/ and "
                        "val/<class>/")
    assert spec.mean is not None and spec.std is not None
    mean, std = spec.mean, spec.std
    common = dict(mean=mean, std=std, rank=req.rank, world_size=req.world_size,
                  channels_last=req.channels_last, device=req.device, seed=req.seed)
    root = Path(req.data_dir).expanduser()
    size = req.image_size or 224
    rsz = req.resize or round(size * 256 / 224)
    train_ds = ImageFolderDataset(root / "train", train=True, image_size=size, resize=rsz, seed=req.seed,
                                  augment=req.augment)
    val_dir = next((root / v for v in _VAL_NAMES if (root / v).is_dir()), None)
    if val_dir is None:
        raise UserError(f"{root} has no val/ folder; expected {root}/val/<class>/<images> next to train/")
    test_ds = ImageFolderDataset(val_dir, classes=train_ds.classes, train=False, image_size=size,
                                 resize=rsz, seed=req.seed)
    val = None
    if req.val_split:
        tr_idx, va_idx = stratified_holdout(train_ds.targets, req.val_split, req.val_seed)
        val_ds = copy.copy(train_ds)  # the training images, transformed like test images
        val_ds.train = False
        _select(val_ds, va_idx.tolist())
        _select(train_ds, tr_idx.tolist())
        val = ImageFolderLoader(val_ds, batch_size=req.eval_batch_size, shuffle=False, drop_last=False,
                                workers=req.workers, even_shards=False, **common)
    if req.limit_train is not None:
        _limit(train_ds, req.limit_train)
    if req.limit_test is not None:
        _limit(test_ds, req.limit_test)
    train = ImageFolderLoader(train_ds, batch_size=req.batch_size, shuffle=True,
                              drop_last=req.drop_last_train, workers=req.workers, even_shards=True, **common)
    test = ImageFolderLoader(test_ds, batch_size=req.eval_batch_size, shuffle=False, drop_last=False,
                             workers=req.workers, even_shards=False, **common)
    info = dict(name=spec.name, num_classes=len(train_ds.classes), in_channels=3, image_size=size,
                num_train=len(train_ds), num_test=len(test_ds), num_val=req.val_split, mean=list(mean),
                std=list(std), classes=list(train_ds.classes), pad=0, flip=True)
    return DataSplits(train, val, test, info)


def _select(ds: object, keep: list[int]) -> None:
    ds.samples = [ds.samples[i] for i in keep]  # type: ignore[attr-defined]
    ds.targets = [ds.targets[i] for i in keep]  # type: ignore[attr-defined]


def _limit(ds: object, n: int) -> None:
    """Keep ``n`` evenly spaced samples: folders are listed class by class, so a head would drop classes."""
    samples = ds.samples  # type: ignore[attr-defined]
    if n >= len(samples):
        return
    _select(ds, [i * len(samples) // n for i in range(n)])


@register_dataset("csv", augmentation="crop_flip", aliases=("manifest",),
                  options=("image_column", "label_column", "train_csv", "test_csv"),
                  description="DIR/train.csv and DIR/test.csv (optional DIR/val.csv) of path,label rows")
def _csv(spec: DatasetSpec, req: DataRequest) -> DataSplits:
    from .user import csv_splits
    return csv_splits(spec, req)
