"""Datasets and loaders: one call, :func:`build_splits`, gives the engine its train/val/test loaders.

Every dataset is a :class:`DatasetSpec` in one registry (:mod:`semckd.data.registry`): the built-ins
(:mod:`semckd.data.builtin`), ``csv`` manifests, a user's ``MODULE:FUNCTION`` factory and data given
from Python (:mod:`semckd.data.user`).

Small datasets (Fashion-MNIST, MNIST, CIFAR-10/100) are held as one uint8 tensor on the training device
and batched by :class:`DeviceLoader` (on-device random crop + flip + normalisation); ImageNet-style class
folders go through a worker DataLoader with Pillow (:class:`ImageFolderLoader`). Both yield
``(images float32 normalised NCHW, targets int64, index int64)`` on the device, where ``index`` is the
sample's position in the full training set, and both take ``set_epoch(epoch)`` so order and
augmentation are a pure function of ``(seed, epoch)`` (exact resume, DDP-consistent).
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import UserError
from .loader import DeviceLoader, Normalizer, crop_flip, derive_seed, epoch_order
from .registry import (
    DataRequest,
    DatasetSpec,
    DataSplits,
    canonical_name,
    get_spec,
    list_datasets,
    register_dataset,
)
from .split import stratified_holdout

__all__ = ["DATASETS", "DataRequest", "DataSplits", "DatasetSpec", "DeviceLoader", "ImageFolderLoader",
           "Normalizer", "build_splits", "canonical_name", "crop_flip", "dataset_defaults",
           "derive_seed", "epoch_order", "get_spec", "list_datasets", "load_arrays", "register_dataset",
           "stratified_holdout", "train_targets"]

DATASETS = ("fashion_mnist", "mnist", "cifar10", "cifar100", "imagefolder")  # the built-in image datasets


def __getattr__(name: str) -> Any:  # ImageFolderLoader pulls in DataLoader machinery: load on demand
    if name == "ImageFolderLoader":
        from .imagefolder import ImageFolderLoader
        return ImageFolderLoader
    raise AttributeError(f"module 'semckd.data' has no attribute {name!r}")


def dataset_defaults(dataset: str) -> dict[str, Any]:
    """Normalisation stats and augmentation defaults of a registered dataset (a copy of its spec's)."""
    return get_spec(dataset).defaults()


def load_arrays(dataset: str, data_dir: str | None = None, *, download: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    """CPU ``(train_x uint8 NCHW, train_y int64, test_x, test_y, class_names)`` of a small dataset."""
    spec = get_spec(dataset)
    kind = spec.extra.get("arrays")
    if kind == "idx":
        from .builtin import FASHION_CLASSES
        from .idx import load_idx_dataset
        xtr, ytr, xte, yte = load_idx_dataset(spec.name, data_dir)
        classes = FASHION_CLASSES if spec.name == "fashion_mnist" else [str(i) for i in range(10)]
    elif kind == "cifar":
        from .cifar import load_cifar
        xtr, ytr, xte, yte, classes = load_cifar(spec.name, data_dir, download=download)
    else:
        raise UserError(f"{dataset!r} is not held in memory; use build_splits for image folders")
    return (torch.from_numpy(xtr), torch.from_numpy(ytr), torch.from_numpy(xte), torch.from_numpy(yte),
            classes)


def build_splits(dataset: str | DatasetSpec, data_dir: str | None, batch_size: int, *,
                 device: torch.device | str = "cpu", download: bool = False, limit_train: int | None = None,
                 limit_test: int | None = None, eval_batch_size: int | None = None,
                 drop_last_train: bool = False, seed: int = 0, rank: int = 0, world_size: int = 1,
                 channels_last: bool = False, workers: int = 2, augment: bool = True, pad: int | None = None,
                 flip: bool | None = None, image_size: int | None = None, resize: int | None = None,
                 val_split: int = 0, val_seed: int = 0, image_column: str | None = None,
                 label_column: str | None = None, train_csv: str | None = None,
                 test_csv: str | None = None) -> DataSplits:
    """Build the train / validation / test loaders for the engine.

    ``dataset`` is a registered name (:func:`list_datasets`), ``MODULE:FUNCTION`` (a user's factory),
    or a :class:`DatasetSpec` (a user's data given from Python); its spec's builder makes the loaders.

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
    ``image_column``/``label_column`` (``hf:PATH``, ``csv``) and ``train_csv``/``test_csv`` (``csv``) are
    read only by the specs that list them in ``options``; given to another they are one error line.
    """
    spec = dataset if isinstance(dataset, DatasetSpec) else get_spec(dataset)
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
    if pad is not None and int(pad) < 0:
        raise UserError(f"crop padding must be >= 0, got {pad}")
    opts = dict(image_column=image_column, label_column=label_column, train_csv=train_csv, test_csv=test_csv)
    for k, v in opts.items():
        if v is not None and k not in spec.options:
            raise UserError(f"--{k.replace('_', '-')} does not apply to dataset {spec.name!r}; only "
                            "hf:PATH and csv read --image-column/--label-column, only csv "
                            "--train-csv/--test-csv")
    req = DataRequest(data_dir=data_dir, batch_size=batch_size, eval_batch_size=eval_bs,
                      device=torch.device(device), download=download, limit_train=limit_train,
                      limit_test=limit_test, drop_last_train=drop_last_train, seed=seed, rank=rank,
                      world_size=world_size, channels_last=channels_last, workers=workers, augment=augment,
                      pad=pad, flip=flip, image_size=image_size, resize=resize, val_split=val_split,
                      val_seed=val_seed, **opts)
    return spec.build(req)


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
