"""semckd.device: the one device rule (training, eval and the bench)."""

from __future__ import annotations

import pytest
import torch

from semckd.device import backend_device_type, resolve_device
from semckd.errors import UserError


def test_cpu_and_auto_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto", local_rank=3) == torch.device("cpu")
    assert backend_device_type("auto") == "cpu" and backend_device_type("cuda:1") == "cuda"


def test_cuda_follows_the_local_rank(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda", local_rank=1) == torch.device("cuda", 1)
    assert resolve_device("cuda:0", local_rank=1) == torch.device("cuda", 0)
    assert resolve_device("auto", local_rank=3) == torch.device("cuda", 1)


def test_unavailable_or_unknown_devices_are_one_line_errors(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="CUDA is not available; use --device cpu"):
        resolve_device("cuda")
    with pytest.raises(UserError, match="'gpu0' is not a device; use auto, cpu"):
        resolve_device("gpu0")


def test_the_bench_uses_the_same_rule():
    from benchmarks.bench import resolve_device as bench_resolve

    assert bench_resolve is resolve_device
