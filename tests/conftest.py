"""Shared fixtures."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

# the measurement code (benchmarks/: bench, reference SemCKD, PIL baseline) is not installed with the
# package; tests that compare against it import it from this checkout
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)


@pytest.fixture
def one_thread():
    """Tiny models run fastest single-threaded: on a shared 2-core box extra threads only add barrier
    waits. Also keeps kernels identical between a test and the subprocesses it compares against."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
