"""The machine's practical peak FLOP/s, for the "% of peak" column."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .config import _sync, precision_of


def _best_time(fn: Callable[[], Any], device: torch.device, repeats: int, inner: int) -> float:
    for _ in range(2):
        fn()
    best = math.inf
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        _sync(device)
        best = min(best, (time.perf_counter() - t0) / inner)
    return best

@torch.no_grad()
def matmul_peak_gflops(device: torch.device, precision: str, n: int | None = None, repeats: int = 5) -> float:
    """Best GFLOP/s of a large dense matmul and a large 3×3 convolution measured here: a practical
    stand-in for the machine's peak (vendor peaks are rarely reachable; CPU BLAS and oneDNN differ, so
    the faster of the two is used)."""
    dtype = precision_of(precision, device).dtype or torch.float32
    cuda = device.type == "cuda"
    n = n or (8192 if cuda else 1536)
    inner = 10 if cuda else 1
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    mm = 2 * n**3 / _best_time(lambda: a @ b, device, repeats, inner)
    batch, ch, hw = (256, 256, 32) if cuda else (32, 256, 16)
    x = torch.randn(batch, ch, hw, hw, device=device, dtype=dtype)
    w = torch.randn(ch, ch, 3, 3, device=device, dtype=dtype)
    conv_flops = 2 * batch * ch * ch * 9 * hw * hw
    conv = conv_flops / _best_time(lambda: nn.functional.conv2d(x, w, padding=1), device, repeats, inner)
    return max(mm, conv) / 1e9
