"""``--dataset hf:PATH``: a Hugging Face ``datasets`` dataset on disk (the optional ``semckd[hf]`` extra).

Why one spec: PATH is whatever ``datasets`` reads locally — a ``DatasetDict`` written by
``save_to_disk`` (its ``train``/``test`` splits, ``validation`` as the validation data), a folder with one
``save_to_disk`` Dataset per split (``PATH/train``, ``PATH/test``), or parquet / image-folder files that
``datasets.load_dataset(PATH)`` splits by their names. The splits become a user's data
(:mod:`semckd.data.user`), so the in-memory/streamed choice, validation, resume and DDP are the same code.

Columns: ``image_column``/``label_column`` (``--image-column``/``--label-column``) or detected: the one
``Image`` feature (else a column named image/img), the one ``ClassLabel`` feature (else label/labels).
Class names come from the ``ClassLabel``. No hub access: only local paths are read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import UserError
from .registry import DataRequest, DatasetSpec, DataSplits

__all__ = ["hf_spec"]

PREFIX = "hf:"
_IMAGE_NAMES = ("image", "img", "pixel_values")
_LABEL_NAMES = ("label", "labels", "target")
_VAL_NAMES = ("validation", "val", "valid")


def _datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise UserError('--dataset hf:PATH needs the Hugging Face datasets library: pip install '
                        '"semckd[hf]"') from None
    return datasets


def hf_spec(name: str) -> DatasetSpec:
    """The spec of ``hf:PATH`` (the library is checked now, the files when the loaders are built)."""
    path = name[len(PREFIX):].strip()
    if not path:
        raise UserError("--dataset hf: needs a path, e.g. --dataset hf:data/mydataset (a save_to_disk "
                        "folder, or parquet / image files)")
    _datasets()
    return DatasetSpec(name=name, builder=_build_hf, description="a Hugging Face dataset on disk",
                       options=("image_column", "label_column"), extra={"path": path})


def _load(path: Path) -> dict[str, Any]:
    ds = _datasets()
    if not path.exists():
        raise UserError(f"hf:{path}: no such file or folder; give the folder written by save_to_disk (or "
                        "holding parquet / image files)")
    try:
        if (path / "dataset_dict.json").is_file():
            return dict(ds.load_from_disk(str(path)))
        if (path / "state.json").is_file():
            raise UserError(f"hf:{path} is a single Dataset; save a DatasetDict(train=..., test=...) or put "
                            f"one save_to_disk Dataset per split in {path}/train and {path}/test")
        per_split = {p.name: p for p in path.iterdir() if p.is_dir() and (p / "state.json").is_file()} \
            if path.is_dir() else {}
        if per_split:
            return {k: ds.load_from_disk(str(p)) for k, p in per_split.items()}
        loaded = ds.load_dataset(str(path))
        return dict(loaded)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - datasets raises many types for unreadable folders
        first = (str(e).strip().splitlines() or [""])[0]
        raise UserError(f"hf:{path}: datasets cannot read it ({type(e).__name__}: {first}); give a "
                        "save_to_disk folder or parquet / image files") from None


def _pick(features: dict[str, Any], given: str | None, kind: type, names: tuple[str, ...], what: str,
          flag: str, where: str) -> str:
    cols = list(features)
    if given is not None:
        if given not in features:
            raise UserError(f"{where}: no column {given!r} ({', '.join(cols)}); pass {flag} one of them")
        return given
    typed = [c for c, f in features.items() if isinstance(f, kind)]
    if len(typed) == 1:
        return typed[0]
    named = [c for c in names if c in features]
    if len(typed) == 0 and named:
        return named[0]
    found = f"{len(typed)} {kind.__name__} columns ({', '.join(typed)})" if typed else "no such column"
    raise UserError(f"{where}: cannot tell the {what} column ({found}; columns: {', '.join(cols)}); pass "
                    f"{flag} NAME")


class HFItems:
    """(image, label) items of one split; ``targets`` read from the label column without decoding images."""

    def __init__(self, ds: Any, image: str, label: str, where: str) -> None:
        import numpy as np
        self.ds, self.image, self.label = ds, image, label
        raw = ds.data.column(label).to_pylist()
        if any(v is None for v in raw):
            raise UserError(f"{where}: column {label!r} has missing labels; every row needs a class number")
        bad = next((v for v in raw if isinstance(v, bool) or not isinstance(v, (int, np.integer))), None)
        if bad is not None:
            fix = (f"ds.class_encode_column({label!r}) makes class numbers of names" if isinstance(bad, str)
                   else "labels are class numbers 0..K-1")
            raise UserError(f"{where}: label {bad!r} in column {label!r} is not an integer; {fix} (or pass "
                            "--label-column)")
        self.targets = [int(v) for v in raw]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        img = self.ds[int(i)][self.image]
        if isinstance(img, (list, tuple)):
            import numpy as np
            img = np.asarray(img)
        return img, self.targets[i]


def _build_hf(spec: DatasetSpec, req: DataRequest) -> DataSplits:
    from .user import UserData, _build_user

    datasets = _datasets()
    path = Path(spec.extra["path"]).expanduser()
    splits = _load(path)
    missing = [s for s in ("train", "test") if s not in splits]
    if missing:
        raise UserError(f"hf:{path} has split(s) {', '.join(sorted(splits)) or 'none'} but no "
                        f"{' or '.join(missing)}; name the splits train and test (optional validation)")
    val_name = next((v for v in _VAL_NAMES if v in splits), None)
    if val_name and req.val_split:
        raise UserError(f"hf:{path} has a {val_name!r} split (used for validation); drop --val-split")
    where = f"hf:{path} train split"
    feats = splits["train"].features
    image = _pick(feats, req.image_column, datasets.Image, _IMAGE_NAMES, "image", "--image-column", where)
    label = _pick(feats, req.label_column, datasets.ClassLabel, _LABEL_NAMES, "label", "--label-column",
                  where)
    if image == label:
        raise UserError(f"{where}: the image and label columns are both {image!r}; name two columns")
    items = {}
    for s in ("train", "test", val_name):
        if s is None:
            continue
        w = f"hf:{path} {s} split"
        for col, flag in ((image, "--image-column"), (label, "--label-column")):
            if col not in splits[s].features:
                raise UserError(f"{w}: no column {col!r} ({', '.join(splits[s].features)}); pass {flag}")
        items[s] = HFItems(splits[s], image, label, w)
    lf = feats[label]
    classes = list(lf.names) if isinstance(lf, datasets.ClassLabel) else None
    ud = UserData(items["train"], items["test"], items.get(val_name) if val_name else None, classes=classes,
                  num_classes=len(classes) if classes else None)
    return _build_user(spec.with_(extra={"data": ud}), req)
