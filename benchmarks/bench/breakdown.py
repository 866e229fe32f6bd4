"""Where one SemCKD step's time goes: components, and the criterion's time by op family (profiler)."""

from __future__ import annotations

import contextlib
import os
import re
import statistics
import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from .config import BenchConfig, _sync, _threads, precision_of, resolve_device
from .timing import _time_blocks, build_step


def component_breakdown(cfg: BenchConfig, repeats: int = 3) -> dict[str, Any]:
    """Where one step's time goes: teacher forward, student forward+backward (CE only), the method's
    criterion forward+backward on fixed features, the optimizer step; plus, from ``torch.profiler``, the
    criterion's time split by op family (Gram/MLP matmuls and softmax = attention; conv/BN/ReLU/pool =
    projectors; sub/pow/mean/mse = MSE loss)."""
    with _threads(cfg.threads):
        return _component_breakdown(cfg, repeats)

def _component_breakdown(cfg: BenchConfig, repeats: int) -> dict[str, Any]:
    from semckd.methods.base import Outputs

    device = resolve_device(cfg.device)
    step, distiller, opt, (x, y, idx) = build_step(cfg, device)
    step()  # warm up, allocate optimizer state

    precision = precision_of(cfg.precision, device)

    def autocast():
        return precision.autocast(device)

    def teacher_fwd():
        with autocast():
            distiller.teacher_forward(x)

    def student_fwd_bwd():
        with autocast():
            s = distiller.student_forward(x)
            loss = nn.functional.cross_entropy(s.logits.float(), y)
        loss.backward()

    with autocast():
        t_out = distiller.teacher_forward(x)
        s_out = distiller.student_forward(x)
    s_leaf = Outputs(s_out.logits.detach().requires_grad_(),
                     [f.detach().requires_grad_() for f in s_out.feats],
                     s_out.embedding.detach().requires_grad_())

    def criterion_fwd_bwd():
        with autocast():
            losses = distiller.distill_losses(s_leaf, t_out, y, idx)
        if losses:
            sum(losses.values()).backward()

    def opt_step():
        opt.step()

    parts = {"teacher forward": teacher_fwd, "student forward+backward": student_fwd_bwd,
             "criterion forward+backward": criterion_fwd_bwd, "optimizer step": opt_step}
    out: dict[str, Any] = {"components_ms": {}}
    for name, fn in parts.items():
        fn()
        out["components_ms"][name] = statistics.median(_time_blocks(fn, device, 1, repeats)) * 1e3
    out["full_step_ms"] = statistics.median(_time_blocks(step, device, 1, repeats)) * 1e3
    opt.zero_grad(set_to_none=True)
    out["criterion_ops_ms"] = _profile_families(criterion_fwd_bwd, device)
    return out

_ATT_MM, _ATT_NORM = "attention: Gram + MLP matmuls", "attention: softmax / normalize"

_PROJ_CONV, _PROJ_BN = "projectors: conv", "projectors: BN + ReLU"

_RESIZE, _MSE, _OTHER = "resize: adaptive pool", "MSE: sub/pow/mean/mul", "other (copies, casts, cat/stack)"

def op_family(op: str) -> str:
    """Op family of a profiler event name (forward ``aten::x`` and backward ``XBackward0`` alike).

    In the SemCKD criterion matmuls only occur in the attention branch (Gram matrix, query/key MLPs,
    q·k), convolutions/BN/ReLU only in the projectors, and sub/pow/mean in the per-pair MSE.
    """
    k = op.split("::")[-1].split(":")[-1].strip().lower().replace("_", "")
    if "conv" in k:
        return _PROJ_CONV
    if "batchnorm" in k or "relu" in k or "threshold" in k:
        return _PROJ_BN
    if "avgpool" in k:
        return _RESIZE
    if "softmax" in k or "norm" in k:
        return _ATT_NORM
    base = re.sub(r"backward\d*$", "", k)
    if base in ("mm", "bmm", "addmm", "baddbmm", "matmul", "linear", "mv"):
        return _ATT_MM
    if base in ("sub", "rsub", "pow", "mean", "mseloss", "sum", "mul", "square"):
        return _MSE
    return _OTHER

@contextlib.contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """Silence the profiler backend's native start/stop log lines (written straight to fd 2)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real fd 2 (embedded interpreters): nothing to silence
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)

def _profile_families(fn: Callable[[], None], device: torch.device) -> dict[str, float]:
    """Self time per op family of ``fn`` (one call, after a warm-up call)."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    fn()
    _sync(device)
    with _quiet_native_stderr(), profile(activities=acts) as prof:
        fn()
        _sync(device)
    totals: dict[str, float] = {}
    for ev in prof.key_averages():
        if device.type == "cuda":
            us = getattr(ev, "self_device_time_total", None)
            if us is None:
                us = getattr(ev, "self_cuda_time_total", 0.0)
        else:
            us = ev.self_cpu_time_total
        if not us or ev.key.startswith(("ProfilerStep", "[memory]")):
            continue
        fam = op_family(ev.key)
        totals[fam] = totals.get(fam, 0.0) + us / 1e3
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))
