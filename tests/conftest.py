"""Shared fixtures."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_thread():
    """Tiny models run fastest single-threaded: on a shared 2-core box extra threads only add barrier
    waits. Also keeps kernels identical between a test and the subprocesses it compares against."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
