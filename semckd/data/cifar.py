"""CIFAR-10/100 from the authors' python-pickle archives, read with a restricted unpickler.

The official batches are Python-2 pickles of dicts holding a numpy uint8 array (``data``, N×3072, rows
are R, G, B planes of 32×32) and label lists. Unpickling an arbitrary file can run arbitrary code, so
:func:`safe_unpickle` resolves exactly the globals numpy needs to rebuild an array (``_reconstruct``,
``ndarray``, ``dtype``) and rejects every other global before anything is called.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from .download import download_and_extract

__all__ = ["CIFAR_SOURCES", "load_cifar", "safe_unpickle"]

# URL, archive name, md5 published on https://www.cs.toronto.edu/~kriz/cifar.html, extracted folder.
CIFAR_SOURCES: dict[str, dict[str, Any]] = {
    "cifar10": {
        "url": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "filename": "cifar-10-python.tar.gz",
        "md5": "c58f30108f718f92721af3b95e74349a",
        "folder": "cifar-10-batches-py",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "meta": ("batches.meta", "label_names"),
        "labels": "labels",
        "num_classes": 10,
        "size_mb": 163,
    },
    "cifar100": {
        "url": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "filename": "cifar-100-python.tar.gz",
        "md5": "eb9058c3a382ffc7106e4002c42a8d85",
        "folder": "cifar-100-python",
        "train": ["train"],
        "test": ["test"],
        "meta": ("meta", "fine_label_names"),
        "labels": "fine_labels",
        "num_classes": 100,
        "size_mb": 161,
    },
}


def _allowed_globals() -> dict[tuple[str, str], Any]:
    try:  # numpy >= 2 keeps the implementation in numpy._core; old pickles name numpy.core
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, path: Path) -> None:
        super().__init__(file, encoding="latin1")  # py2 str → str; numpy accepts latin1 array data
        self._path = path
        self._allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise UserError(f"refusing to unpickle {self._path}: it references {module}.{name}, which a "
                            "CIFAR file never does (tampered or not CIFAR); delete it and re-run with "
                            "--download") from None


def safe_unpickle(path: str | os.PathLike) -> Any:
    """Load a pickle that may only contain builtin containers/scalars and numpy arrays."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return _RestrictedUnpickler(f, path).load()
    except UserError:
        raise
    except FileNotFoundError:
        raise UserError(f"{path} is missing; re-run with --download or fix --data-dir") from None
    except Exception as e:  # noqa: BLE001 - any parse failure means a corrupt file
        raise UserError(f"{path}: corrupt or not a CIFAR pickle ({type(e).__name__}: {e}); delete it and "
                        "re-run with --download") from None


def _str_keys(d: Any, path: Path) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise UserError(f"{path}: expected a pickled dict, got {type(d).__name__}; not a CIFAR batch file")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in d.items()}


def _read_batch(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    d = _str_keys(safe_unpickle(path), path)
    if "data" not in d or label_key not in d:
        raise UserError(f"{path}: missing 'data' or '{label_key}' entries; not a "
                        f"{'CIFAR-100' if num_classes == 100 else 'CIFAR-10'} batch file (check --data-dir)")
    data, labels = d["data"], np.asarray(d[label_key])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        raise UserError(f"{path}: 'data' must be a uint8 N×3072 array, got {type(data).__name__} {shape}; "
                        "corrupt file, delete it and re-run with --download")
    if labels.dtype.kind not in "iu" or labels.shape != (data.shape[0],):
        raise UserError(f"{path}: {data.shape[0]} images but {labels.size} {labels.dtype} labels; corrupt "
                        "file, delete it and re-run with --download")
    labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise UserError(f"{path}: labels outside 0..{num_classes - 1}; wrong dataset for this name?")
    return data.reshape(-1, 3, 32, 32), labels


def _locate(root: Path, src: dict[str, Any]) -> Path | None:
    for d in (root / src["folder"], root):
        if all((d / f).is_file() for f in src["train"] + src["test"]):
            return d
    return None


def load_cifar(name: str, data_dir: str | os.PathLike | None, *, download: bool = False
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """``(train_x (N,3,32,32) uint8, train_y int64, test_x, test_y, class_names)``."""
    src = CIFAR_SOURCES[name]
    root = Path(data_dir if data_dir is not None else os.environ.get("SEMCKD_DATA_DIR", "data")).expanduser()
    folder = _locate(root, src)
    if folder is None:
        pretty = "CIFAR-10" if name == "cifar10" else "CIFAR-100"
        if not download:
            expected = root / src["folder"] / src["train"][0]
            raise UserError(f"{pretty} not found in {root} (expected {expected}); "
                            f"pass --download to fetch it ({src['size_mb']} MB) or --data-dir pointing to it")
        download_and_extract(src["url"], root, src["filename"], src["md5"])
        folder = _locate(root, src)
        if folder is None:
            raise UserError(f"{root / src['filename']} did not contain {src['folder']}/; delete it and retry")
    parts = {}
    for split in ("train", "test"):
        xs, ys = zip(*(_read_batch(folder / f, src["labels"], src["num_classes"]) for f in src[split]),
                     strict=True)
        parts[split] = (np.concatenate(xs), np.concatenate(ys))
    classes = [str(i) for i in range(src["num_classes"])]
    meta_file, meta_key = src["meta"]
    if (folder / meta_file).is_file():
        meta = _str_keys(safe_unpickle(folder / meta_file), folder / meta_file)
        names = meta.get(meta_key)
        if isinstance(names, list) and len(names) == src["num_classes"]:
            classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    return parts["train"][0], parts["train"][1], parts["test"][0], parts["test"][1], classes
