"""A small slice of the real Fashion-MNIST (the Debian package's files), written in its IDX layout.

Tests that run commands as a user would (the README harness, the ONNX Runtime check) point
``$SEMCKD_DATA_DIR`` or ``--data-dir`` at it: real images, so accuracies and argmaxes mean something,
but a test set of a few hundred images, so each epoch's evaluation takes a fraction of a second."""

from __future__ import annotations

from pathlib import Path

import pytest
from engine_helpers import write_idx

from semckd.data.idx import FASHION_MNIST_DIR, read_idx

REAL = Path(FASHION_MNIST_DIR)


def fashion_mnist_subset(root: Path, n_train: int = 1200, n_test: int = 256) -> Path:
    """The first ``n_train`` training and ``n_test`` test images of the system copy, in ``root``."""
    if not (REAL / "train-images-idx3-ubyte.gz").is_file():  # CI installs it: missing is a broken setup
        pytest.fail(f"Fashion-MNIST not found in {REAL}; apt-get install dataset-fashion-mnist "
                    "(bash quickstart.sh does)")
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        for kind, ndim in (("images", 3), ("labels", 1)):
            arr = read_idx(REAL / f"{split}-{kind}-idx{ndim}-ubyte.gz", ndim)
            write_idx(root / f"{split}-{kind}-idx{ndim}-ubyte.gz", arr[:n])
    return root
