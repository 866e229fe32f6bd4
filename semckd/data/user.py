"""A user's own data: tensors/arrays, a map-style ``Dataset``, a ``MODULE:FUNCTION`` factory, a CSV manifest.

Why here and not in the engine: each form becomes a :class:`~semckd.data.registry.DatasetSpec` whose
builder returns the same loaders as the built-in datasets, so everything downstream (validation split,
``limit_train``, CRD's sample index, DDP sharding, exact resume) is the built-ins' code.

Two paths, chosen per dataset:

* **in memory** (the default when the decoded images fit ``SEMCKD_MEMORY_LIMIT_MB``, 4096 MB, and no
  ``transform`` is given): images are decoded once, stacked into one uint8 NCHW tensor, moved to the
  training device and augmented there in batches (:class:`~semckd.data.loader.DeviceLoader`). Images of
  at most 64 px get a random crop with ``size // 8`` zero padding + horizontal flip; larger ones a
  random-resized crop (scale 0.08–1) back to their own size + flip. Evaluation uses the images as they are.
* **streamed** (a ``transform``, ``in_memory=False``, or too large): items are read in DataLoader workers
  (:class:`~semckd.data.imagefolder.ImageFolderLoader`). The user's ``transform`` (training) and
  ``eval_transform`` (validation/test; default ``transform``) run there, with torch/random/numpy seeded
  per (seed, epoch, sample) so results do not depend on workers and resume exactly. A transform that
  returns a float tensor owns normalisation (the loader passes it through); one that returns a PIL image
  or a uint8 tensor gets the library's normalisation.

Items are ``(image, label)``: image a PIL image, a uint8 tensor/array (CHW, HWC or HW) or a float one
(values in [0, 1]); label an int (a Python/numpy int or a 0-d integer tensor).
"""

from __future__ import annotations

import csv
import inspect
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UserError
from ..importpath import import_callable
from .assemble import memory_splits
from .loader import crop_flip, derive_seed, resized_crop_flip
from .registry import DataRequest, DatasetSpec, DataSplits
from .split import stratified_holdout

__all__ = ["UserData", "csv_splits", "factory_spec", "user_spec"]

SMALL_IMAGE = 64  # px: at most this, crop+pad+flip; above it, random-resized crop
_PATH_COLS = ("path", "file", "filename", "image", "img")
_LABEL_COLS = ("label", "class", "target", "y")


def _memory_limit() -> int:
    return int(float(os.environ.get("SEMCKD_MEMORY_LIMIT_MB", "4096")) * 2 ** 20)


# ---------------------------------------------------------------------- one item
def _to_uint8_chw(img: Any, where: str) -> torch.Tensor:
    """A PIL image / tensor / array as a uint8 (C, H, W) tensor; one error line for anything else."""
    if hasattr(img, "mode") and hasattr(img, "size") and hasattr(img, "convert"):  # PIL
        if img.mode not in ("L", "RGB"):
            img = img.convert("RGBA" if "A" in img.mode else ("L" if img.mode in ("1", "I", "I;16", "F")
                                                              else "RGB"))
            if img.mode == "RGBA":
                img = img.convert("RGB")
        arr = np.asarray(img, dtype=np.uint8)
        t = torch.from_numpy(arr.copy())
        return t.unsqueeze(0) if t.dim() == 2 else t.permute(2, 0, 1).contiguous()
    if isinstance(img, np.ndarray):
        img = torch.from_numpy(np.ascontiguousarray(img))
    if not isinstance(img, torch.Tensor):
        raise UserError(f"{where}: the image is a {type(img).__name__}; return a PIL image, a tensor or a "
                        "numpy array (or pass transform= that makes one)")
    if img.dim() == 2:
        img = img.unsqueeze(0)
    if img.dim() != 3:
        raise UserError(f"{where}: image of shape {tuple(img.shape)}; expected (C, H, W), (H, W, C) or "
                        f"(H, W)")
    if img.shape[0] not in (1, 3) and img.shape[-1] in (1, 3, 4):  # HWC
        img = img.permute(2, 0, 1)
        if img.shape[0] == 4:
            img = img[:3]
    return _quantise(img, where).contiguous()


def _quantise(x: torch.Tensor, where: str) -> torch.Tensor:
    if x.dtype == torch.uint8:
        return x
    ints = (torch.int16, torch.int32, torch.int64)
    if x.dtype == torch.bool or not (x.is_floating_point() or x.dtype in ints):
        raise UserError(f"{where}: images of dtype {x.dtype}; use uint8 (0..255) or float (0..1)")
    if x.is_floating_point():
        lo, hi = float(x.min()), float(x.max())
        if lo < 0 or hi > 1.0 + 1e-6:
            raise UserError(f"{where}: float images must lie in [0, 1] (found {lo:.3g}..{hi:.3g}); pass "
                            f"uint8 "
                            "0..255, or transform= to feed already-normalised tensors as they are")
        return (x * 255).round().to(torch.uint8)
    if int(x.min()) < 0 or int(x.max()) > 255:
        raise UserError(f"{where}: integer images must lie in 0..255")
    return x.to(torch.uint8)


def _label(y: Any, where: str) -> int:
    if isinstance(y, torch.Tensor):
        if y.numel() != 1:
            raise UserError(f"{where}: the label is a tensor of shape {tuple(y.shape)}; return one int "
                            f"per item")
        if y.is_floating_point() or y.dtype == torch.bool:
            raise UserError(f"{where}: label {y.item()!r} is not an integer; labels are class numbers 0..K-1")
        return int(y.item())
    if isinstance(y, (bool, np.bool_)) or not isinstance(y, (int, np.integer)):
        raise UserError(f"{where}: label {y!r} ({type(y).__name__}) is not an integer; labels are class "
                        "numbers 0..K-1 (map names to numbers, or use --dataset csv which accepts names)")
    return int(y)


def _item(ds: Any, i: int, what: str) -> tuple[Any, int]:
    try:
        item = ds[i]
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - the user's __getitem__ may raise anything
        first = (str(e).strip().splitlines() or [""])[0]
        raise UserError(f"{what} item {i}: reading it failed ({type(e).__name__}: {first})") from e
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        kind = f"a {len(item)}-tuple" if isinstance(item, (tuple, list)) else f"a {type(item).__name__}"
        raise UserError(f"{what} item {i} is {kind}; each item must be (image, label)")
    return item[0], _label(item[1], f"{what} item {i}")


# ---------------------------------------------------------------------- one split
@dataclass
class _Split:
    """One split of a user's data: either ``images`` (uint8 NCHW, in memory) or ``dataset`` (streamed)."""

    targets: torch.Tensor
    images: torch.Tensor | None = None
    dataset: Any = None
    indices: list[int] | None = None  # into ``dataset``


def _is_pair(data: Any) -> bool:
    return (isinstance(data, (tuple, list)) and len(data) == 2
            and isinstance(data[0], (torch.Tensor, np.ndarray)) and getattr(data[0], "ndim", 0) >= 3)


def _pair_split(data: Any, what: str) -> _Split:
    x, y = data
    x = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
    y = torch.from_numpy(np.asarray(y)) if not isinstance(y, torch.Tensor) else y
    if x.shape[0] == 0:
        raise UserError(f"{what} is empty; give at least one image per class")
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise UserError(f"{what}: {x.shape[0]} images but labels of shape {tuple(y.shape)}; give one "
                        f"int label "
                        "per image")
    if y.is_floating_point() or y.dtype == torch.bool:
        raise UserError(f"{what}: labels are {y.dtype}, not integers; labels are class numbers 0..K-1")
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() != 4:
        raise UserError(f"{what}: images of shape {tuple(x.shape)}; expected (N, C, H, W), (N, H, W, C) "
                        f"or (N, H, W)")
    if x.shape[1] not in (1, 3) and x.shape[-1] in (1, 3):
        x = x.permute(0, 3, 1, 2)
    return _Split(targets=y.to(torch.int64), images=_quantise(x, what).contiguous())


def _dataset_split(ds: Any, what: str, in_memory: bool | str, transform: Any) -> _Split:
    if not (hasattr(ds, "__len__") and hasattr(ds, "__getitem__")):
        raise UserError(f"{what} is a {type(ds).__name__}; give a map-style Dataset of (image, label) items "
                        "or an (images, labels) pair of tensors/arrays")
    n = len(ds)
    if n == 0:
        raise UserError(f"{what} is empty; give at least one image per class")
    img0, _ = _item(ds, 0, what)
    stream = transform is not None or in_memory is False
    if not stream:
        first = _to_uint8_chw(img0, f"{what} item 0")
        if in_memory == "auto" and first.numel() * n > _memory_limit():
            stream = True
    if stream:
        targets = getattr(ds, "targets", None)
        if targets is not None and len(targets) == n:
            ys = [_label(t, f"{what} target {i}") for i, t in enumerate(targets)]
        else:  # labels are needed up front (stratified split, CRD, the class count)
            ys = [_item(ds, i, what)[1] for i in range(n)]
        return _Split(targets=torch.tensor(ys, dtype=torch.int64), dataset=ds, indices=list(range(n)))
    imgs, ys = [], []
    for i in range(n):
        img, y = _item(ds, i, what) if i else (img0, _item(ds, 0, what)[1])
        t = first if i == 0 else _to_uint8_chw(img, f"{what} item {i}")
        if t.shape != first.shape:
            a, b = "×".join(map(str, first.shape)), "×".join(map(str, t.shape))
            raise UserError(f"{what}: images of mixed sizes or channel counts (C×H×W {a} at item 0, {b} "
                            f"at item "
                            f"{i}) and no transform; pass transform= that resizes them to one size (or "
                            f"resize "
                            "the files)")
        imgs.append(t)
        ys.append(y)
    return _Split(targets=torch.tensor(ys, dtype=torch.int64), images=torch.stack(imgs))


def _split(data: Any, what: str, in_memory: bool | str, transform: Any) -> _Split:
    if _is_pair(data):
        return _pair_split(data, what)
    return _dataset_split(data, what, in_memory, transform)


# ---------------------------------------------------------------------- streamed items
class _StreamDataset(torch.utils.data.Dataset):
    """Items ``(image tensor, target, index)`` for keys ``(index, epoch)``, seeded per sample."""

    def __init__(self, split: _Split, *, train: bool, augment: bool, transform: Any, seed: int,
                 augmentation: str, pad: int, flip: bool) -> None:
        self.base, self.indices = split.dataset, list(split.indices or [])
        self.targets = split.targets.tolist()
        self.train, self.augment, self.transform, self.seed = train, augment, transform, seed
        self.augmentation, self.pad, self.flip = augmentation, pad, flip
        self.shape: tuple[int, ...] | None = None  # set by the builder: every item must have it

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int, int]:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        s = derive_seed(self.seed, epoch, f"img{index}" if self.train else f"eval{index}")
        where = f"item {self.indices[index]}"
        # the user's transform draws from the global RNGs: seed them per sample, restore them after (CPU
        # generator only: torch.manual_seed would also seed, and lazily initialise, CUDA every item)
        py_state, np_state, t_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
        torch.default_generator.manual_seed(s)
        random.seed(s)
        np.random.seed(s % 2 ** 32)
        try:
            img, _ = _item(self.base, self.indices[index], "data")
            if self.transform is not None:
                img = self.transform(img)
                if isinstance(img, torch.Tensor) and img.is_floating_point():
                    out = img.float()
                else:
                    out = _to_uint8_chw(img, where).float()
            else:
                out = _to_uint8_chw(img, where)
                if self.train and self.augment and self.augmentation != "none":
                    out = self._augment(out, torch.Generator().manual_seed(s))
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
            torch.set_rng_state(t_state)
        if self.shape is not None and tuple(out.shape) != self.shape:  # else a collate traceback
            a, b = "×".join(map(str, self.shape)), "×".join(map(str, out.shape))
            fix = ("the transform returned them; make it end in one size (e.g. a Resize + CenterCrop)"
                   if self.transform is not None else "pass transform= that resizes them to one size (or "
                   "resize the files)")
            raise UserError(f"images of mixed sizes or channel counts (C×H×W {a} expected, {b} at item "
                            f"{self.indices[index]}); {fix}")
        return out, self.targets[index], index

    def _augment(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        flip = (torch.randint(0, 2, (1,), generator=g).bool() if self.flip
                else torch.zeros(1, dtype=torch.bool))
        if self.augmentation == "resized_crop":
            from .imagefolder import random_resized_crop_box
            h, w = int(x.shape[-2]), int(x.shape[-1])
            l_, t_, r_, b_ = random_resized_crop_box(w, h, random.Random(int(torch.randint(0, 2 ** 62, (1,),
                                                                                         generator=g))))
            box = torch.tensor([[l_, t_, r_ - l_, b_ - t_]], dtype=torch.float32)
            return resized_crop_flip(x[None], box, flip)[0].round().clamp(0, 255).to(torch.uint8)
        o = torch.randint(0, 2 * self.pad + 1, (2, 1), generator=g)
        return crop_flip(x[None], o[0], o[1], flip, self.pad)[0]


def _as_stream(s: _Split) -> _Split:
    """In-memory images as (image, label) items, for the streamed path (a transform given)."""
    if s.images is None:
        return s
    return _Split(targets=s.targets, dataset=_TensorItems(s.images, s.targets),
                  indices=list(range(len(s.targets))))


def _subset(split: _Split, idx: torch.Tensor | list[int]) -> _Split:
    idx_t = torch.as_tensor(idx, dtype=torch.int64)
    if split.images is not None:
        return _Split(targets=split.targets[idx_t], images=split.images[idx_t])
    assert split.indices is not None
    return _Split(targets=split.targets[idx_t], dataset=split.dataset,
                  indices=[split.indices[i] for i in idx_t.tolist()])


def _head(split: _Split, n: int | None) -> _Split:
    return split if n is None or n >= len(split.targets) else _subset(split, list(range(n)))


# ---------------------------------------------------------------------- the spec
@dataclass
class UserData:
    """A user's data as given from Python (or returned by a factory); see :func:`user_spec`."""

    train: Any
    test: Any
    val: Any = None
    num_classes: int | None = None
    in_channels: int | None = None
    image_size: int | None = None
    classes: Sequence[str] | None = None
    transform: Callable[[Any], Any] | None = None
    eval_transform: Callable[[Any], Any] | None = None
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    augmentation: str | None = None
    in_memory: bool | str = "auto"
    extra: dict[str, Any] = field(default_factory=dict)


_OPTIONS = ("num_classes", "in_channels", "image_size", "classes", "transform", "eval_transform", "mean",
            "std", "augmentation", "in_memory")


def user_spec(train_data: Any, test_data: Any, val_data: Any = None, *, name: str = "user",
              **options: Any) -> DatasetSpec:
    """The :class:`DatasetSpec` of a user's data (what ``semckd.train(train_data=..., ...)`` builds).

    ``options``: ``num_classes``, ``in_channels``, ``image_size`` (inferred when left out; given values
    are checked against the data), ``classes`` (names), ``transform``/``eval_transform``, ``mean``/``std``
    (default: measured on the training images), ``augmentation`` (``crop_flip``, ``resized_crop`` or
    ``none``; default by image size), ``in_memory`` (``"auto"``, True, False).
    """
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise UserError(f"unknown data option(s) {', '.join(unknown)}; choose from {', '.join(_OPTIONS)}")
    if train_data is None:
        raise UserError("no training data; pass train_data= (a Dataset of (image, label) or (images, "
                        "labels))")
    if test_data is None:
        raise UserError("no test data; pass test_data= (the engine reports test accuracy every epoch)")
    ud = UserData(train_data, test_data, val_data, **options)
    return DatasetSpec(name=name, builder=_build_user, description="a user's data", extra={"data": ud})


def _build_user(spec: DatasetSpec, req: DataRequest) -> DataSplits:
    ud: UserData = spec.extra["data"]
    in_memory = ud.in_memory
    if in_memory not in ("auto", True, False):
        raise UserError(f"in_memory must be 'auto', True or False, got {in_memory!r}")
    tr = _split(ud.train, "the training data", in_memory, ud.transform)
    te = _split(ud.test, "the test data", in_memory, ud.eval_transform or ud.transform)
    va = _split(ud.val, "the validation data", in_memory, ud.eval_transform or ud.transform) \
        if ud.val is not None else None
    if va is not None and req.val_split:
        raise UserError("both validation data and --val-split given; pass one of them")
    ncls = _check_labels(tr, te, va, ud)
    classes = list(ud.classes) if ud.classes is not None else [str(i) for i in range(ncls)]
    if len(classes) != ncls:
        raise UserError(f"classes= names {len(classes)} classes but the data has {ncls}; give one name "
                        f"per class")

    # shape: from the in-memory images, else from one decoded (transformed) item
    ev = ud.eval_transform or ud.transform
    in_memory_run = ev is None and all(s.images is not None for s in (tr, te, va) if s is not None)
    if in_memory_run:
        sample = tr.images[0]
    else:  # what the loader will yield: one item through the (eval) transform
        probe = _StreamDataset(_as_stream(tr), train=False, augment=False, transform=ev, seed=req.seed,
                               augmentation="none", pad=0, flip=False)
        sample = probe[0][0]
    cin, size = int(sample.shape[0]), int(sample.shape[-1])
    for other, what in ((te, "test"), (va, "validation")):
        if other is not None and other.images is not None and tr.images is not None \
                and other.images.shape[1:] != tr.images.shape[1:]:
            raise UserError(f"the {what} images are {'×'.join(map(str, other.images.shape[1:]))} "
                            f"(C×H×W) but the "
                            f"training images {'×'.join(map(str, tr.images.shape[1:]))}; give both one size "
                            "(or pass transform=)")
    for key, val in (("in_channels", cin), ("image_size", size)):
        given = getattr(ud, key)
        if given is not None and int(given) != val:
            raise UserError(f"{key}={given} but the images have {val}; drop {key}= or fix the data")
    aug = ud.augmentation or ("crop_flip" if size <= SMALL_IMAGE else "resized_crop")
    if aug not in ("crop_flip", "resized_crop", "none"):
        raise UserError(f"augmentation must be crop_flip, resized_crop or none, got {aug!r}")
    pad = size // 8 if req.pad is None else int(req.pad)
    flip = True if req.flip is None else bool(req.flip)
    own_norm = ud.transform is not None and isinstance(sample, torch.Tensor) and sample.is_floating_point()
    if own_norm:  # the transform's floats pass through: (x/255 - 0) / (1/255) = x
        mean, std = (0.0,) * cin, (1 / 255,) * cin
    elif ud.mean is not None or ud.std is not None:
        if ud.mean is None or ud.std is None or len(ud.mean) != cin or len(ud.std) != cin:
            raise UserError(f"mean= and std= need {cin} values each (one per channel)")
        mean, std = tuple(map(float, ud.mean)), tuple(map(float, ud.std))
    else:
        mean, std = _stats(tr, req.seed, ev)

    if in_memory_run:
        return memory_splits(spec.name, req, tr.images, tr.targets, te.images, te.targets, classes,
                             num_classes=ncls, mean=mean, std=std, pad=pad, flip=flip, augmentation=aug,
                             xva=va.images if va is not None else None,
                             yva=va.targets if va is not None else None)
    return _stream_splits(spec, req, tr, te, va, ud, classes=classes, ncls=ncls, mean=mean, std=std, pad=pad,
                          flip=flip, aug=aug, cin=cin, size=size, shape=tuple(sample.shape))


def _check_labels(tr: _Split, te: _Split, va: _Split | None, ud: UserData) -> int:
    ytr = tr.targets
    lo = int(ytr.min())
    ncls = int(ud.num_classes) if ud.num_classes is not None else int(ytr.max()) + 1
    for split, what in ((tr, "training"), (te, "test"), (va, "validation")):
        if split is None:
            continue
        y = split.targets
        bad = y[(y < 0) | (y >= ncls)]
        if bad.numel():
            rng = f"0..{ncls - 1}" + (" (num_classes=)" if ud.num_classes is not None else
                                      " (from the training labels)")
            raise UserError(f"{what} label {int(bad[0])} is outside {rng}; labels must be class numbers "
                            "0..K-1" + ("" if ud.num_classes is not None else ", or pass num_classes="))
    counts = torch.bincount(ytr, minlength=ncls)
    empty = (counts == 0).nonzero().flatten()
    if empty.numel():
        raise UserError(f"class {int(empty[0])} of 0..{ncls - 1} has no training images (lowest label {lo}); "
                        "renumber the classes 0..K-1 without gaps, or add images of that class")
    if ncls < 2:
        raise UserError("the training data has a single class; classification needs at least 2")
    return ncls


def _stats(split: _Split, seed: int, transform: Any = None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std of pixel/255 over the training images (up to 2000 evenly spaced when streamed,
    through the eval transform when there is one)."""
    if split.images is not None and transform is None:
        x = split.images
        step = max(1, x.shape[0] // 20000)
        x = x[::step].float().div_(255)
    else:
        n = len(split.targets)
        picks = sorted({i * n // min(n, 2000) for i in range(min(n, 2000))})
        probe = _StreamDataset(_as_stream(split), train=False, augment=False, transform=transform, seed=seed,
                               augmentation="none", pad=0, flip=False)
        probe.shape = tuple(probe[picks[0]][0].shape)  # mixed shapes: one error line, not a stack error
        x = torch.stack([probe[i][0] for i in picks]).float().div_(255)
    dims = [0, 2, 3]
    mean = x.mean(dim=dims)
    std = x.std(dim=dims).clamp_min(1e-3)
    return tuple(round(float(m), 4) for m in mean), tuple(round(float(s), 4) for s in std)


def _stream_splits(spec: DatasetSpec, req: DataRequest, tr: _Split, te: _Split, va: _Split | None,
                   ud: UserData, *, classes: list[str], ncls: int, mean: Sequence[float],
                   std: Sequence[float], pad: int, flip: bool, aug: str, cin: int, size: int,
                   shape: tuple[int, ...]) -> DataSplits:
    from .imagefolder import ImageFolderLoader

    common = dict(mean=mean, std=std, rank=req.rank, world_size=req.world_size,
                  channels_last=req.channels_last, device=req.device, seed=req.seed, workers=req.workers)
    tr, te = _as_stream(tr), _as_stream(te)
    num_val = req.val_split
    if req.val_split:
        tr_idx, va_idx = stratified_holdout(tr.targets, req.val_split, req.val_seed)
        va = _subset(tr, va_idx)
        tr = _subset(tr, tr_idx)
    elif va is not None:
        va = _as_stream(va)
        num_val = len(va.targets)
    tr, te = _head(tr, req.limit_train), _head(te, req.limit_test)
    kw = dict(augmentation=aug, pad=pad, flip=flip, seed=req.seed)
    ev = ud.eval_transform or ud.transform
    train_ds = _StreamDataset(tr, train=True, augment=req.augment, transform=ud.transform, **kw)
    test_ds = _StreamDataset(te, train=False, augment=False, transform=ev, **kw)
    val_ds = _StreamDataset(va, train=False, augment=False, transform=ev, **kw) if va is not None else None
    # one shape per batch or a collate traceback: the probed (eval) item's, for the training items too
    # unless the user's training transform differs from the eval one (it may crop to another size)
    for d in (train_ds if ud.transform is ev else None, test_ds, val_ds):
        if d is not None:
            d.shape = shape
    train = ImageFolderLoader(train_ds, batch_size=req.batch_size, shuffle=True,
                              drop_last=req.drop_last_train, even_shards=True, **common)
    test = ImageFolderLoader(test_ds, batch_size=req.eval_batch_size, shuffle=False, even_shards=False,
                             **common)
    val = None
    if val_ds is not None:
        val = ImageFolderLoader(val_ds,
                                batch_size=req.eval_batch_size, shuffle=False, even_shards=False, **common)
    info = dict(name=spec.name, num_classes=ncls, in_channels=cin, image_size=size, num_train=len(tr.targets),
                num_test=len(te.targets), num_val=num_val, mean=list(mean), std=list(std), classes=classes,
                pad=pad, flip=flip)
    return DataSplits(train, val, test, info)


class _TensorItems:
    """(image, label) items over in-memory tensors, for the streamed path (a transform given)."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor) -> None:
        self.images, self.targets = images, targets.tolist()

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], self.targets[i]


# ---------------------------------------------------------------------- MODULE:FUNCTION
def _import(spec: str) -> Callable[..., Any]:
    return import_callable(spec, what="dataset", form="MODULE:FUNCTION", example="mydata:load",
                           not_callable="a function returning the datasets")


def factory_spec(name: str) -> DatasetSpec:
    """The spec of ``MODULE:FUNCTION``: imported now (a typo fails before anything is built), called by the
    builder with ``data_dir=`` when it takes that parameter."""
    fn = _import(name)
    return DatasetSpec(name=name, builder=_build_factory, description="a user's factory", extra={"fn": fn})


def _build_factory(spec: DatasetSpec, req: DataRequest) -> DataSplits:
    fn = spec.extra["fn"]
    try:
        params = inspect.signature(fn).parameters
        takes_dir = "data_dir" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
    except (TypeError, ValueError):
        takes_dir = False
    try:
        out = fn(data_dir=req.data_dir) if takes_dir else fn()
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - the user's factory may raise anything
        first = (str(e).strip().splitlines() or [""])[0]
        raise UserError(f"dataset {spec.name!r}: calling it failed ({type(e).__name__}: {first}); "
                        "SEMCKD_DEBUG=1 shows the traceback") from e
    contract = ("return (train, test), (train, test, val) or a dict with 'train', 'test' (and optional "
                "'val', "
                "'num_classes', 'classes', 'transform', ...)")
    if isinstance(out, UserData):
        ud = out
    elif isinstance(out, dict):
        if "train" not in out or "test" not in out:
            raise UserError(f"dataset {spec.name!r}: the factory returned a dict with keys "
                            f"{sorted(out)}; {contract}")
        ud = user_spec(out.pop("train"), out.pop("test"), out.pop("val", None), name=spec.name,
                       **out).extra["data"]
    elif isinstance(out, (tuple, list)) and len(out) in (2, 3) and not _is_pair(out):
        ud = UserData(*out)
    else:
        raise UserError(f"dataset {spec.name!r}: the factory returned {type(out).__name__}; {contract}")
    return _build_user(spec.with_(extra={"data": ud}), req)


# ---------------------------------------------------------------------- CSV manifests
class _FileDataset:
    """(PIL image, label) items of a manifest's files, converted to one colour mode."""

    def __init__(self, paths: list[str], targets: list[int], mode: str) -> None:
        self.paths, self.targets, self.mode = paths, targets, mode

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        from .imagefolder import require_pil
        image_mod = require_pil()
        try:
            with image_mod.open(self.paths[i]) as im:
                img = im.convert(self.mode)
        except Exception as e:  # noqa: BLE001 - PIL raises several types for bad files
            raise UserError(f"{self.paths[i]}: cannot decode image ({type(e).__name__}: {e}); remove or "
                            f"replace "
                            "the file") from None
        return img, self.targets[i]


def _read_csv(path: Path, path_col: str | None = None, label_col: str | None = None
              ) -> tuple[list[str], list[str]]:
    """Rows of a manifest; ``path_col``/``label_col`` (``--image-column``/``--label-column``) name header
    columns, else a header is recognised by the usual names, else the rows are path,label."""
    try:
        rows = [r for r in csv.reader(path.read_text(encoding="utf-8-sig").splitlines()) if r and any(r)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{path}: unreadable CSV ({type(e).__name__}: {e}); write path,label rows") from None
    if not rows:
        raise UserError(f"{path} is empty; write one path,label row per image")
    head = [c.strip().lower() for c in rows[0]]
    for given, flag in ((path_col, "--image-column"), (label_col, "--label-column")):
        if given is not None and given.strip().lower() not in head:
            raise UserError(f"{path}: no column {given!r} in the header ({', '.join(rows[0])}); pass {flag} "
                            "one of them")
    if path_col or label_col or any(c in _PATH_COLS for c in head) or any(c in _LABEL_COLS for c in head):
        pcol = head.index(path_col.strip().lower()) if path_col else \
            next((head.index(c) for c in _PATH_COLS if c in head), None)
        lcol = head.index(label_col.strip().lower()) if label_col else \
            next((head.index(c) for c in _LABEL_COLS if c in head), None)
        if pcol is None or lcol is None:
            missing = "path" if pcol is None else "label"
            names = _PATH_COLS if pcol is None else _LABEL_COLS
            flag = "--image-column" if pcol is None else "--label-column"
            raise UserError(f"{path}: no {missing} column in the header ({', '.join(rows[0])}); name it "
                            f"one of {', '.join(names)} or pass {flag} NAME")
        rows = rows[1:]
    else:
        pcol, lcol = 0, 1
    paths, labels = [], []
    for k, r in enumerate(rows, start=2 if pcol != 0 or lcol != 1 or head[0] in _PATH_COLS else 1):
        if len(r) <= max(pcol, lcol):
            raise UserError(f"{path} line {k}: {len(r)} column(s); each row needs a path and a label")
        paths.append(r[pcol].strip())
        labels.append(r[lcol].strip())
    if not paths:
        raise UserError(f"{path} has a header but no rows; write one path,label row per image")
    return paths, labels


def csv_splits(spec: DatasetSpec, req: DataRequest) -> DataSplits:
    """``--dataset csv --data-dir DIR``: DIR/train.csv, DIR/test.csv, optional DIR/val.csv; ``--train-csv``/
    ``--test-csv`` name either file instead (paths in each file are relative to that file's folder)."""
    given = {"train": req.train_csv, "test": req.test_csv}
    if req.data_dir is None and not (req.train_csv and req.test_csv):
        raise UserError("--dataset csv needs --data-dir DIR holding train.csv and test.csv, or --train-csv "
                        "FILE and --test-csv FILE (path,label rows)")
    files: dict[str, Path] = {}
    if req.data_dir is not None and not (req.train_csv and req.test_csv):
        root = Path(req.data_dir).expanduser()
        if not root.is_dir():
            raise UserError(f"--data-dir {str(root)!r} is not a folder; pass the folder holding train.csv "
                            f"and test.csv")
        files = {s: root / f"{s}.csv" for s in ("train", "test", "val")}
    for s in ("train", "test"):
        if given[s]:
            files[s] = Path(str(given[s])).expanduser()
            if not files[s].is_file():
                raise UserError(f"--{s}-csv {str(files[s])!r} does not exist; pass the {s} manifest's path")
        elif not files[s].is_file():
            raise UserError(f"{files[s]} does not exist; --dataset csv reads DIR/train.csv and DIR/test.csv "
                            f"(or pass --{s}-csv FILE)")
    raw = {s: _read_csv(p, req.image_column, req.label_column) for s, p in files.items() if p.is_file()}
    all_labels = [lab for _, labs in raw.values() for lab in labs]
    numeric = all(lab.lstrip("-").isdigit() for lab in all_labels)
    if numeric:
        classes = None
        names_of: dict[str, int] = {}
    else:
        names = sorted(set(raw["train"][1]))
        names_of = {n: i for i, n in enumerate(names)}
        classes = names
    splits = {}
    mode = None
    for s, (paths, labels) in raw.items():
        full = []
        for k, p in enumerate(paths):
            fp = Path(p) if Path(p).is_absolute() else files[s].parent / p
            if not fp.is_file():
                raise UserError(f"{files[s]} row {k + 1}: file {p!r} does not exist (paths are relative "
                                f"to the "
                                "CSV's folder); fix the row or add the file")
            full.append(str(fp))
        if numeric:
            ys = [int(lab) for lab in labels]
        else:
            unknown = [lab for lab in labels if lab not in names_of]
            if unknown:
                raise UserError(f"{files[s]}: label {unknown[0]!r} never appears in train.csv; every class "
                                "needs training images")
            ys = [names_of[lab] for lab in labels]
        if mode is None:
            from .imagefolder import require_pil
            try:
                with require_pil().open(full[0]) as im:
                    mode = "L" if im.mode in ("1", "L", "LA", "I", "I;16", "F") else "RGB"
            except Exception as e:  # noqa: BLE001
                raise UserError(f"{full[0]}: cannot decode image ({type(e).__name__}: {e}); remove or "
                                f"replace "
                                "the file") from None
        splits[s] = _FileDataset(full, ys, mode)
    ud = UserData(splits["train"], splits["test"], splits.get("val"), classes=classes)
    return _build_user(spec.with_(extra={"data": ud}), req)
