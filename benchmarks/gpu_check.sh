#!/usr/bin/env bash
# The prepared GPU check (BENCHMARKS.md "GPU check"): CUDA tests, `python -m benchmarks bench` on both
# pairs, a 2-process NCCL torchrun distill, the whole-epoch benchmark, then one summary — under 8 minutes.
#   bash benchmarks/gpu_check.sh [--out DIR] [--dry-run]
# Exit status: 0 all ok, 1 a step failed, 2 no CUDA device visible. The logic is in gpu_check.py; this
# wrapper only runs `python -m benchmarks gpu_check` from the checkout root, so it works from any folder.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" -m benchmarks gpu_check "$@"
