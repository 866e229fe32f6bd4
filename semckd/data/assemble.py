"""Turning arrays into a run's loaders, shared by every in-memory dataset (built-in or a user's).

Why one function: the validation hold-out, ``limit_train``, sharding and the info dict must mean the
same for Fashion-MNIST and for a user's tensors, so they are written once.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .loader import DeviceLoader
from .registry import DataRequest, DataSplits
from .split import stratified_holdout

__all__ = ["memory_splits"]


def memory_splits(name: str, req: DataRequest, xtr: torch.Tensor, ytr: torch.Tensor, xte: torch.Tensor,
                  yte: torch.Tensor, classes: Sequence[str], *, num_classes: int,
                  mean: Sequence[float], std: Sequence[float], pad: int, flip: bool,
                  augmentation: str = "crop_flip", xva: torch.Tensor | None = None,
                  yva: torch.Tensor | None = None) -> DataSplits:
    """Loaders over uint8 NCHW tensors held on ``req.device`` (:class:`DeviceLoader`).

    ``val_split`` holds out that many training images (stratified, ``val_seed``) before ``limit_train``
    keeps the first N of the rest; ``xva``/``yva`` are a validation set the user gave instead.
    """
    common = dict(mean=mean, std=std, rank=req.rank, world_size=req.world_size,
                  channels_last=req.channels_last, device=req.device, seed=req.seed)
    val = None
    num_val = req.val_split
    if req.val_split:
        tr_idx, va_idx = stratified_holdout(ytr, req.val_split, req.val_seed)
        xva, yva = xtr[va_idx], ytr[va_idx]
        xtr, ytr = xtr[tr_idx], ytr[tr_idx]
    if xva is not None and yva is not None:
        val = DeviceLoader(xva, yva, batch_size=req.eval_batch_size, shuffle=False, drop_last=False,
                           augment=False, even_shards=False, **common)
        num_val = int(xva.shape[0])
    if req.limit_train is not None:
        xtr, ytr = xtr[:req.limit_train], ytr[:req.limit_train]
    if req.limit_test is not None:
        xte, yte = xte[:req.limit_test], yte[:req.limit_test]
    augment = req.augment and augmentation != "none"
    train = DeviceLoader(xtr, ytr, batch_size=req.batch_size, shuffle=True, drop_last=req.drop_last_train,
                         augment=augment, pad=pad, flip=flip, even_shards=True,
                         resized_crop=augmentation == "resized_crop", **common)
    test = DeviceLoader(xte, yte, batch_size=req.eval_batch_size, shuffle=False, drop_last=False,
                        augment=False, even_shards=False, **common)
    info = dict(name=name, num_classes=num_classes, in_channels=int(xtr.shape[1]),
                image_size=int(xtr.shape[-1]), num_train=int(xtr.shape[0]), num_test=int(xte.shape[0]),
                num_val=num_val, mean=list(mean), std=list(std), classes=list(classes), pad=pad, flip=flip)
    return DataSplits(train, val, test, info)
