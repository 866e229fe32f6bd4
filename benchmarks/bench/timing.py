"""Building one benchmark step and measuring it: time, memory (CUDA counters / CPU peak RSS, in a fresh
process), activations saved for backward, FLOPs."""

from __future__ import annotations

import multiprocessing as mp
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import torch
from torch import nn

from semckd.errors import UserError
from semckd.step import make_train_step

from .config import PRECISIONS, BenchConfig, _sync, _threads, precision_of, resolve_device


def _reference_swap(distiller: nn.Module) -> None:
    """Replace the SemCKD criterion inside a ``semckd`` distiller by the per-pair-loop reference, with
    identical weights, so only the criterion's implementation differs between the two rows."""
    from semckd.criterion import SemCKD

    from ..reference import ReferenceSemCKD

    def swap(parent: nn.Module) -> bool:
        for name, child in parent.named_children():
            if isinstance(child, SemCKD):
                ref = ReferenceSemCKD(child.student_channels, child.teacher_channels,
                                      batch_size=child.batch_size, factor=child.factor, mode=child.mode)
                ref.load_state_dict(child.state_dict())
                p = next(child.parameters())
                setattr(parent, name, ref.to(p.device))
                return True
            if swap(child):
                return True
        return False

    if not swap(distiller):
        raise RuntimeError("the semckd distiller holds no SemCKD module to swap for the reference")

def build_step(cfg: BenchConfig, device: torch.device):
    """(step function, distiller, optimizer, batch) for ``cfg``; weights are random (speed does not
    depend on them)."""
    from semckd.methods import BuildContext, build_distiller
    from semckd.models import create_model

    torch.manual_seed(cfg.seed)
    student = create_model(cfg.student, num_classes=cfg.num_classes, in_channels=cfg.in_channels).to(device)
    teacher = create_model(cfg.teacher, num_classes=cfg.num_classes, in_channels=cfg.in_channels).to(device)
    x = torch.randn(cfg.batch_size, cfg.in_channels, cfg.input_size, cfg.input_size, device=device)
    y = torch.randint(0, cfg.num_classes, (cfg.batch_size,), device=device)
    idx = torch.arange(cfg.batch_size, device=device)
    n = max(cfg.batch_size, 50_000)
    ctx = BuildContext(example_input=x, batch_size=cfg.batch_size, num_classes=cfg.num_classes,
                       num_samples=n, train_targets=torch.arange(n, device=device) % cfg.num_classes)
    method = "semckd" if cfg.method == "reference" else cfg.method
    opts = dict(cfg.method_options)
    if cfg.student_layers is not None:
        opts["student_layers"] = list(cfg.student_layers)
    if cfg.teacher_layers is not None:
        opts["teacher_layers"] = list(cfg.teacher_layers)
    distiller = build_distiller(method, student, teacher if method != "vanilla" else None, ctx, opts)
    distiller = distiller.to(device)
    if cfg.precision not in PRECISIONS:
        raise UserError(f"unknown precision {cfg.precision!r}; use one of {', '.join(PRECISIONS)}")
    precision = precision_of(cfg.precision, device)
    if cfg.method == "reference":
        _reference_swap(distiller)
    elif precision.channels_last:
        distiller.to(memory_format=torch.channels_last)  # what `--channels-last` does in the engine
        x = x.contiguous(memory_format=torch.channels_last)
    distiller.train()
    opt = torch.optim.SGD(distiller.trainable_parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    train = make_train_step(distiller, opt, device, precision)
    return (lambda: train(x, y, idx)), distiller, opt, (x, y, idx)

def train_step(distiller: nn.Module, opt: torch.optim.Optimizer, device: torch.device, precision: str
               ) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """``step(images, targets, index) -> loss`` at a bench precision name: the engine's own step
    (:func:`semckd.step.make_train_step`), for timing outside the engine."""
    return make_train_step(distiller, opt, device, precision_of(precision, device))

def _maxrss_mb() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 2**20 if sys.platform == "darwin" else r / 1024  # bytes on macOS, KiB on Linux

def saved_for_backward_mb(fn: Callable[[], Any], exclude: Iterable[torch.Tensor] = ()) -> float:
    """MB of distinct tensor storages autograd keeps for backward while ``fn()`` runs.

    Activations saved for backward are what sets a training step's peak memory beyond the fixed
    parameter/gradient/optimizer state, and unlike process RSS this count is exact and repeatable, so
    two implementations of one method can be compared to the byte. Storages of ``exclude`` (parameters,
    inputs — memory that exists anyway) are not counted; tensors made inside ``fn`` (concatenated
    weights, layout copies) are.
    """
    skip = {(t.untyped_storage().data_ptr(), t.device) for t in exclude}
    kept: dict[tuple[int, torch.device], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        key = (st.data_ptr(), t.device)
        if key not in skip:
            kept[key] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(kept.values()) / 2**20

def count_step_flops(step: Callable[[], torch.Tensor]) -> int:
    """FLOPs of one call of ``step`` (forward + backward matmuls/convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return int(counter.get_total_flops())

def _time_blocks(step: Callable[[], Any], device: torch.device, steps: int, repeats: int,
                 last: list[Any] | None = None) -> list[float]:
    """Mean seconds per call of ``step`` in each of ``repeats`` blocks; ``last`` receives the final result."""
    times = []
    out = None
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            out = step()
        _sync(device)
        times.append((time.perf_counter() - t0) / steps)
    if last is not None:
        last.append(out)
    return times

def measure(cfg: BenchConfig) -> dict[str, Any]:
    """Measure one configuration in this process; see the module docstring for what each number means."""
    if cfg.steps < 1 or cfg.repeats < 1 or cfg.warmup < 0:
        raise UserError("--steps and --repeats must be ≥ 1 and --warmup ≥ 0")
    with _threads(cfg.threads):
        return _measure(cfg)

def _measure(cfg: BenchConfig) -> dict[str, Any]:
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    step, distiller, _, batch = build_step(cfg, device)
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = _maxrss_mb()
    for _ in range(cfg.warmup):
        step()
    last: list[torch.Tensor] = []
    times = _time_blocks(step, device, cfg.steps, cfg.repeats, last)
    loss = last[0]
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
        step_mem = peak - base / 2**20
        mem_kind = "cuda max_memory_allocated"
    else:
        peak = _maxrss_mb()
        step_mem = peak - base
        mem_kind = "cpu ru_maxrss growth"
    flops = count_step_flops(step) if cfg.count_flops else None
    saved = saved_for_backward_mb(step, [*distiller.parameters(), *distiller.buffers(), *batch])
    sec = statistics.median(times)
    n_s, n_t = _matched_layers(distiller)
    return {
        "pair": cfg.pair, "student": cfg.student, "teacher": cfg.teacher, "method": cfg.method,
        "precision": cfg.precision, "batch_size": cfg.batch_size, "device": str(device),
        "input": [cfg.in_channels, cfg.input_size, cfg.input_size], "num_classes": cfg.num_classes,
        "student_layers": n_s, "teacher_layers": n_t,
        "ms_per_step": sec * 1e3, "ms_per_step_all": [t * 1e3 for t in times],
        "images_per_s": cfg.batch_size / sec,
        "step_mem_mb": step_mem, "peak_mem_mb": peak, "mem_kind": mem_kind, "saved_mb": saved,
        "gflop_per_step": flops / 1e9 if flops is not None else None,
        "achieved_gflops": flops / 1e9 / sec if flops is not None else None,
        "loss": float(loss.float().item()),
        "steps": cfg.steps, "warmup": cfg.warmup, "repeats": cfg.repeats, "threads": torch.get_num_threads(),
    }

def _matched_layers(distiller: nn.Module) -> tuple[int, int]:
    """(S, T) layers the method matches: the SemCKD criterion's when there is one, else the taps'."""
    for m in distiller.modules():
        if hasattr(m, "num_student") and hasattr(m, "num_teacher"):
            return int(m.num_student), int(m.num_teacher)
    t_tap = getattr(distiller, "t_tap", None)
    return len(distiller.s_tap.names), (len(t_tap.names) if t_tap is not None else 0)

def _measure_isolated(cfg: BenchConfig) -> dict[str, Any]:
    """Run :func:`measure` in a fresh process, so CPU peak-RSS growth belongs to this config alone."""
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(measure, cfg).result()
