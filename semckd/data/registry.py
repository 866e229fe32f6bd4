"""Dataset registry: one name → one :class:`DatasetSpec`, the built-in datasets included.

Why: the data builder (:func:`semckd.data.build_splits`) has no per-name branches; every dataset, the
built-in ones (:mod:`semckd.data.builtin`) and a user's, is a spec whose ``builder`` turns a
:class:`DataRequest` into loaders, and whose numbers (classes, channels, input size, mean/std,
augmentation) are what eval and export fall back on for checkpoints that do not record them.

Names are looked up case-insensitively with ``-`` read as ``_``. Besides registered names,
:func:`get_spec` resolves ``hf:PATH`` (a Hugging Face dataset on disk, :mod:`semckd.data.hf`),
``MODULE:FUNCTION`` (a user's factory, :mod:`semckd.data.user`) and
``csv`` (a ``path,label`` manifest).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import torch

from ..errors import UserError

__all__ = ["AUGMENTATIONS", "DataRequest", "DataSplits", "DatasetSpec", "get_spec", "list_datasets",
           "register_dataset"]

# crop_flip: random crop of the image's own size from a zero-padded copy + horizontal flip (small images);
# resized_crop: random-resized crop (scale 0.08–1, aspect 3/4–4/3) + flip (large images); none.
AUGMENTATIONS = ("crop_flip", "resized_crop", "none")


class DataSplits(NamedTuple):
    """The loaders of one run: ``val`` is None without a validation split."""

    train: Any
    val: Any | None
    test: Any
    info: dict[str, Any]


@dataclass(frozen=True)
class DataRequest:
    """Everything a builder needs to make one run's loaders (already validated by ``build_splits``)."""

    data_dir: str | None
    batch_size: int
    eval_batch_size: int
    device: torch.device
    download: bool = False
    limit_train: int | None = None
    limit_test: int | None = None
    drop_last_train: bool = False
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    channels_last: bool = False
    workers: int = 2
    augment: bool = True
    pad: int | None = None
    flip: bool | None = None
    image_size: int | None = None
    resize: int | None = None
    val_split: int = 0
    val_seed: int = 0
    image_column: str | None = None
    label_column: str | None = None
    train_csv: str | None = None
    test_csv: str | None = None


# the request fields only some specs read: a spec lists the ones it reads in ``options``, and
# build_splits refuses the others in one line rather than ignoring them
OPTION_FIELDS = ("image_column", "label_column", "train_csv", "test_csv")


Builder = Callable[["DatasetSpec", DataRequest], DataSplits]


@dataclass(frozen=True)
class DatasetSpec:
    """What a dataset is: its numbers and how to build its loaders.

    ``num_classes``/``in_channels``/``image_size``/``mean``/``std`` may be None when only the data knows
    (an image folder's class count, a user's images): the builder then fills them in ``info``.
    ``pad``/``flip`` are the ``crop_flip`` defaults (``--pad``-style overrides win).
    """

    name: str
    builder: Builder
    num_classes: int | None = None
    in_channels: int | None = None
    image_size: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    augmentation: str = "crop_flip"
    pad: int = 0
    flip: bool = True
    aliases: tuple[str, ...] = ()
    description: str = ""
    options: tuple[str, ...] = ()  # which of OPTION_FIELDS the builder reads
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.augmentation not in AUGMENTATIONS:
            raise ValueError(f"dataset {self.name!r}: augmentation must be one of {AUGMENTATIONS}, got "
                             f"{self.augmentation!r}")
        if (self.mean is None) != (self.std is None) or (self.mean is not None and self.std is not None
                                                         and len(self.mean) != len(self.std)):
            raise ValueError(f"dataset {self.name!r}: mean and std need one value per channel")

    def build(self, req: DataRequest) -> DataSplits:
        return self.builder(self, req)

    def with_(self, **kw: Any) -> DatasetSpec:
        return replace(self, **kw)

    def defaults(self) -> dict[str, Any]:
        """The spec's numbers as a dict (what :func:`semckd.data.dataset_defaults` returns)."""
        d: dict[str, Any] = {"mean": self.mean, "std": self.std, "pad": self.pad, "flip": self.flip,
                             "augmentation": self.augmentation}
        for k in ("num_classes", "in_channels", "image_size"):
            if getattr(self, k) is not None:
                d[k] = getattr(self, k)
        return d


_SPECS: dict[str, DatasetSpec] = {}
_ALIASES: dict[str, str] = {}


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def register_dataset(name: str | None = None, **spec_fields: Any) -> Callable[[Builder], Builder]:
    """Decorator registering ``builder(spec, request) -> DataSplits`` under ``name`` with the spec's numbers.

    ``@register_dataset("mydata", num_classes=5, in_channels=3, image_size=64, mean=..., std=...)``;
    any :class:`DatasetSpec` field may be given. A name registered twice is an error.
    """

    def deco(fn: Builder) -> Builder:
        key = _key(name or fn.__name__)
        if key in _SPECS or key in _ALIASES:
            raise ValueError(f"dataset {key!r} is registered twice")
        spec = DatasetSpec(name=key, builder=fn, **spec_fields)
        _SPECS[key] = spec
        for a in spec.aliases:
            _ALIASES[_key(a)] = key
        return fn

    return deco


def list_datasets() -> list[str]:
    """Registered names, in registration order (the built-ins first)."""
    _load_builtins()
    return list(_SPECS)


def canonical_name(dataset: str) -> str:
    """The registered name ``dataset`` refers to (aliases, case and ``-`` forgiven); one error line else."""
    _load_builtins()
    key = _key(dataset)
    key = _ALIASES.get(key, key)
    if key == "user":
        raise UserError("this run's data was given from Python (semckd.train), so no name finds it again; "
                        "pass --dataset MODULE:FUNCTION returning the same data (or csv --data-dir DIR)")
    if key not in _SPECS:
        raise UserError(f"unknown dataset {dataset!r}; choose one of: {', '.join(_SPECS)}, or name "
                        "your own as MODULE:FUNCTION")
    return key


def get_spec(dataset: str) -> DatasetSpec:
    """The spec ``dataset`` names: a registered name, ``hf:PATH``, ``MODULE:FUNCTION`` or ``csv``."""
    _load_builtins()
    if dataset.strip().lower().startswith("hf:"):  # checked first: ``hf:`` is never a module name
        from .hf import hf_spec
        return hf_spec(dataset.strip())
    if ":" in dataset:
        from .user import factory_spec
        return factory_spec(dataset)
    return _SPECS[canonical_name(dataset)]


def _load_builtins() -> None:
    if not _SPECS:
        from . import builtin  # noqa: F401 - registers the built-in datasets
