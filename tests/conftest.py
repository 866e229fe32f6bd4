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


def pytest_collection_modifyitems(config, items):
    """``@pytest.mark.cuda`` both selects a test for the GPU check (``pytest -m cuda``) and skips it where
    no CUDA device is visible: one mark, so a GPU test cannot be left out of the check by forgetting it."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)
