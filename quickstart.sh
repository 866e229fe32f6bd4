#!/usr/bin/env bash
# The embedded default on a fresh machine (the README's first command):
#   1. installs semckd (and PyTorch, if this Python has none) from this checkout,
#   2. gets Fashion-MNIST from Debian's dataset-fashion-mnist package where apt is available,
#   3. runs `semckd demo`: the shipped ResNet-20 teacher → ResNet-8 student, vanilla vs SemCKD.
# Extra arguments go to `semckd demo` (e.g. `bash quickstart.sh --force` to run it again).
set -euo pipefail
cd "$(dirname "$0")"

PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" 2>/dev/null; then
    # 2.13.0 is the CPU build these instructions were tested with; any torch >= 2.1 works
    "$PY" -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
fi
"$PY" -m pip install -q -e ".[plot]"

FMNIST=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
if [ ! -e "$FMNIST" ] && command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then SUDO=sudo; fi
    echo "installing Fashion-MNIST (Debian package dataset-fashion-mnist)"
    $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
        || { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null; } \
        || echo "could not apt-get dataset-fashion-mnist; pass --data-dir DIR with the four IDX files"
fi

exec "$PY" -m semckd demo "$@"
