"""Fashion-MNIST and MNIST from their IDX files (gzipped or raw).

The IDX header is validated (magic, element type, number of dims, sizes against the payload) so a
truncated download or a wrong file fails with a one-line message naming the file and the fix instead
of a reshape error deep in training.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from ..errors import UserError

__all__ = ["FASHION_MNIST_DIR", "find_idx_dir", "load_idx_dataset", "read_idx"]

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # Debian package dataset-fashion-mnist

_FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}
# Subfolders people commonly point --data-dir above (torchvision's layout included).
_SUBDIRS = {"fashion_mnist": ("fashion-mnist", "fashion_mnist", "FashionMNIST/raw"),
            "mnist": ("mnist", "MNIST/raw")}
_PRETTY = {"fashion_mnist": "Fashion-MNIST", "mnist": "MNIST"}


def _fix_hint(name: str) -> str:
    if name == "fashion_mnist":
        return "install dataset-fashion-mnist (apt) or pass --data-dir with the IDX files"
    return "pass --data-dir with the MNIST IDX files (train-images-idx3-ubyte[.gz], ...)"


def _candidates(stem: str) -> list[str]:
    # MNIST mirrors also ship "train-images.idx3-ubyte" (dot instead of dash).
    dotted = stem.replace("-idx", ".idx")
    return [stem + ".gz", stem, dotted + ".gz", dotted]


def _find_file(directory: Path, stem: str) -> Path | None:
    for cand in _candidates(stem):
        p = directory / cand
        if p.is_file():
            return p
    return None


def find_idx_dir(name: str, data_dir: str | os.PathLike | None) -> Path:
    """The folder holding ``name``'s IDX files: ``data_dir`` or a usual subfolder of it.

    With no ``data_dir`` the default folder (``$SEMCKD_DATA_DIR`` or ``./data``) is searched and then,
    for Fashion-MNIST, the system copy from the ``dataset-fashion-mnist`` package. A folder the user named
    is never silently swapped for another: training on the wrong data would look like success.
    """
    given = data_dir is not None
    root = Path(data_dir if given else os.environ.get("SEMCKD_DATA_DIR", "data")).expanduser()  # type: ignore[arg-type]
    fallback = ""
    if name == "fashion_mnist":
        fallback = (f", or leave out --data-dir to use the system copy in {FASHION_MNIST_DIR}"
                    if Path(FASHION_MNIST_DIR).is_dir() else
                    ", or install dataset-fashion-mnist (apt) and leave out --data-dir")
    if given and not root.exists():
        raise UserError(f"--data-dir {str(root)!r} does not exist; pass the folder holding the "
                        f"{_PRETTY[name]} IDX files{fallback}")
    if given and not root.is_dir():
        raise UserError(f"--data-dir {str(root)!r} is a file; pass the folder that holds it{fallback}")
    tried = [root] + [root / sub for sub in _SUBDIRS[name]]
    if name == "fashion_mnist" and not given:
        tried.append(Path(FASHION_MNIST_DIR))
    for d in tried:
        if _find_file(d, _FILES[("train", "images")]) is not None:
            return d
    hint = f"pass the folder holding them{fallback}" if given else _fix_hint(name)
    raise UserError(f"{_PRETTY[name]} not found: no {_FILES[('train', 'images')]}[.gz] in {root} "
                    f"(or its {', '.join(_SUBDIRS[name])} subfolders); {hint}")


def _read_bytes(path: Path, hint: str) -> bytes:
    try:
        with open(path, "rb") as f:
            head = f.read(2)
        if head == b"\x1f\x8b":  # gzip magic, whatever the extension says
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (EOFError, OSError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise UserError(f"{path}: unreadable or truncated ({type(e).__name__}: {e}); {hint}") from None


def read_idx(path: str | os.PathLike, ndim: int, hint: str = "re-download the file") -> np.ndarray:
    """Parse one uint8 IDX file with exactly ``ndim`` dimensions into a numpy array."""
    path = Path(path)
    raw = _read_bytes(path, hint)
    if len(raw) < 4 + 4 * ndim:
        raise UserError(f"{path}: truncated IDX file ({len(raw)} bytes, header alone needs {4 + 4 * ndim}); "
                        f"{hint}")
    magic = raw[:4]
    if magic[:2] != b"\x00\x00" or magic[2] != 0x08 or magic[3] != ndim:
        expected = bytes([0, 0, 8, ndim]).hex()
        raise UserError(f"{path}: bad IDX magic 0x{magic.hex()} (expected 0x{expected}: uint8, {ndim} dims); "
                        f"not a {ndim}-D IDX file or corrupt; {hint}")
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    body = memoryview(raw)[4 + 4 * ndim:]
    expected_len = int(np.prod(dims, dtype=np.int64))
    if len(body) != expected_len:
        what = "truncated" if len(body) < expected_len else "has trailing bytes"
        raise UserError(f"{path}: {what}: header says {'×'.join(map(str, dims))} = {expected_len} bytes, "
                        f"file holds {len(body)}; {hint}")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims).copy()


def load_idx_dataset(name: str, data_dir: str | os.PathLike | None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(train_images (N,1,28,28), train_labels, test_images, test_labels)`` as uint8 / int64 arrays."""
    if name not in _SUBDIRS:
        raise ValueError(f"not an IDX dataset: {name!r}")
    directory = find_idx_dir(name, data_dir)
    hint = _fix_hint(name)
    out: list[np.ndarray] = []
    for split in ("train", "test"):
        paths = {}
        for kind in ("images", "labels"):
            p = _find_file(directory, _FILES[(split, kind)])
            if p is None:
                raise UserError(f"{_PRETTY[name]} file {_FILES[(split, kind)]}[.gz] missing in {directory}; "
                                f"{hint}")
            paths[kind] = p
        images = read_idx(paths["images"], 3, hint)
        labels = read_idx(paths["labels"], 1, hint)
        if images.shape[0] != labels.shape[0]:
            raise UserError(f"{paths['images']} has {images.shape[0]} images but {paths['labels']} has "
                            f"{labels.shape[0]} labels; {hint}")
        if labels.size and int(labels.max()) >= 10:
            raise UserError(f"{paths['labels']}: label {int(labels.max())} outside 0..9; {hint}")
        out += [images[:, None], labels.astype(np.int64)]
    return out[0], out[1], out[2], out[3]
