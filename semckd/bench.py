"""Training-step benchmarks: throughput, memory and FLOP/s of vanilla, KD and SemCKD, and where the
time of a SemCKD step goes.

One *step* is what the engine does per batch: teacher forward (no grad), student forward, the method's
losses, backward, optimizer step (SGD with momentum, as the paper trains). Inputs are random tensors
already on the device, so the numbers are the model/method cost without data loading.

Rows:

* ``vanilla`` / ``kd`` / ``semckd``: the library's distillers in float32 (``fp32``, ``fp32-cl``) or
  under autocast (``bf16``, ``fp16``); ``auto`` stands for the precision training's default picks here;
* ``reference``: the same SemCKD step with the criterion swapped for
  :class:`semckd.reference.ReferenceSemCKD` — per-pair Python loops, float32, as the authors wrote it —
  measured in the same run on the same machine, so ``speedup`` (reference time / SemCKD time) and
  ``mem ratio`` (reference memory / SemCKD memory) compare like with like.

Timing: ``warmup`` steps, then ``repeats`` blocks of ``steps`` steps; the reported time per step is
the median block mean (CUDA is synchronised around each block).

Memory, ``step mem``: how much memory the training step itself needs on top of the built models —
activations kept for backward, gradients, optimizer state, workspace. On CUDA it is
``max_memory_allocated`` during the steps minus what was allocated before the first step. On CPU
there is no allocator counter for torch, so each configuration runs in a fresh process and reports the
growth of the process's peak resident set size (``ru_maxrss``) from after model construction to after
the steps — it includes allocator caching and fragmentation, so read it as an upper bound with
~±10 MB noise (measured run to run on a 2-core VM: up to ±50 MB). ``peak mem`` is the absolute figure
(CUDA: max allocated; CPU: the process's peak RSS, including the Python interpreter and torch itself).
``saved`` is exact on every device: the MB of distinct storages autograd keeps for backward during one
step (:func:`saved_for_backward_mb`; parameters, buffers and the input batch excluded) — the activation
memory, the part of a step's peak that differs between two implementations of one method.

FLOPs: one step is counted with ``torch.utils.flop_counter.FlopCounterMode`` (matmuls and
convolutions, forward and backward; elementwise ops are not counted). Achieved FLOP/s = FLOPs / time.
The peak to compare against is ``--peak-gflops`` when given, else an *estimate*: the best throughput of
a large dense matmul or 3×3 convolution in the same precision measured on this machine (labelled
``est.``; a loaded machine lowers it, so a row can exceed 100 %).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import multiprocessing as mp
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .errors import UserError
from .precision import autocast_dtype

__all__ = ["PAIRS", "BenchConfig", "block_layers", "component_breakdown", "format_scaling", "format_table",
           "layer_sweep", "machine_info", "matmul_peak_gflops", "measure", "run_bench", "run_scaling",
           "saved_for_backward_mb", "train_step"]

# name → (student, teacher, input size, in channels, classes)
PAIRS: dict[str, tuple[str, str, int, int, int]] = {
    "cifar100": ("resnet8x4", "resnet32x4", 32, 3, 100),
    "fmnist": ("resnet8", "resnet20", 28, 1, 10),  # the pair of configs/fashion_mnist + accuracy_table.py
}
METHODS = ("vanilla", "kd", "semckd", "reference")
# fp32-cl / bf16-cl: fp32 / bf16 with the networks and inputs in channels-last (NHWC) memory format; the
# numbers of fp32 / bf16.
# "auto" is not measured as such: it becomes the precision training's default (amp="auto") picks here.
PRECISIONS = ("fp32", "fp32-cl", "bf16", "bf16-cl", "fp16")
_AMP_TO_PRECISION = {"none": "fp32", "bf16": "bf16", "fp16": "fp16"}


def default_precision(device: torch.device) -> str:
    """The bench precision matching what training uses by default on ``device`` (``amp="auto"``, and the
    memory format that precision defaults to)."""
    from .precision import resolve_amp, resolve_channels_last

    amp = resolve_amp("auto", device)[0]
    return _AMP_TO_PRECISION[amp] + ("-cl" if resolve_channels_last(None, amp, device) else "")


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available here; use --device cpu")
    return dev


@dataclass
class BenchConfig:
    """One measured configuration (picklable: it crosses into a fresh process on CPU)."""

    student: str
    teacher: str
    input_size: int
    in_channels: int
    num_classes: int
    method: str = "semckd"
    precision: str = "fp32"
    batch_size: int = 64
    device: str = "cpu"
    steps: int = 10
    warmup: int = 3
    repeats: int = 5
    pair: str = "custom"
    student_layers: list[str] | None = None
    teacher_layers: list[str] | None = None
    method_options: dict[str, Any] = field(default_factory=dict)
    count_flops: bool = True
    seed: int = 0
    threads: int | None = None  # torch intra-op threads (None: torch's default)


# ---------------------------------------------------------------------- building one step
def _reference_swap(distiller: nn.Module) -> None:
    """Replace the SemCKD criterion inside a ``semckd`` distiller by the per-pair-loop reference, with
    identical weights, so only the criterion's implementation differs between the two rows."""
    from .reference import ReferenceSemCKD
    from .semckd import SemCKD

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
    from .methods import BuildContext, build_distiller
    from .models import create_model

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
    if cfg.method == "reference":
        _reference_swap(distiller)
    elif cfg.precision.endswith("-cl"):
        distiller.to(memory_format=torch.channels_last)  # what `--channels-last` does in the engine
        x = x.contiguous(memory_format=torch.channels_last)
    distiller.train()
    opt = torch.optim.SGD(distiller.trainable_parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    if cfg.precision not in PRECISIONS:
        raise UserError(f"unknown precision {cfg.precision!r}; use one of {', '.join(PRECISIONS)}")
    train = train_step(distiller, opt, device, cfg.precision)
    return (lambda: train(x, y, idx)), distiller, opt, (x, y, idx)


def _autocast(device: torch.device, precision: str) -> torch.autocast:
    dtype = autocast_dtype(precision.removesuffix("-cl"))
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def train_step(distiller: nn.Module, opt: torch.optim.Optimizer, device: torch.device, precision: str
               ) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """``step(images, targets, index) -> loss``: one optimisation step as the engine takes it (autocast
    at ``precision``; fp16 with loss scaling on CUDA), for timing outside the engine."""
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" and device.type == "cuda" else None

    def step(x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        with _autocast(device, precision):
            _, losses = distiller(x, y, idx)
            loss = sum(losses.values())
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        return loss.detach()

    return step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """Use ``n`` torch CPU threads inside the block (None: leave as is), then restore."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n:
            torch.set_num_threads(before)


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
    dtype = autocast_dtype(precision.removesuffix("-cl")) or torch.float32
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


def machine_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"torch": torch.__version__, "python": platform.python_version(),
                            "platform": platform.platform(),
                            "cpu": platform.processor() or platform.machine(),
                            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                            "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


# ---------------------------------------------------------------------- the standard table
def default_counts(device: torch.device) -> tuple[int, int, int]:
    """(steps, warmup, repeats): CPU steps take seconds, GPU steps milliseconds."""
    return (20, 5, 5) if device.type == "cuda" else (2, 1, 3)


def run_bench(pairs: Sequence[tuple[str, str, str, int, int, int]], methods: Sequence[str] = METHODS,
              precisions: Sequence[str] = PRECISIONS, batch_size: int = 64, device: str = "auto",
              steps: int | None = None, warmup: int | None = None, repeats: int | None = None,
              isolate: bool | None = None, count_flops: bool = True, peak_gflops: float | None = None,
              threads: int | None = None, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure every (pair, precision, method); ``pairs`` items are (label, student, teacher, input
    size, in channels, classes). ``reference`` is measured in fp32 only (the authors' setting).
    ``"auto"`` in ``precisions`` stands for what training's default ``amp="auto"`` picks on this device
    (fp32 on a CPU without native bf16); rows measured in that precision carry ``is_default``.

    Returns ``{"machine", "settings", "results": [row...]}``; semckd rows carry ``speedup_vs_reference``
    and ``mem_ratio_vs_reference`` when a reference row of the same pair was measured.
    """
    for m in methods:
        if m not in METHODS:
            raise UserError(f"unknown bench method {m!r}; choose from {', '.join(METHODS)}")
    for p in precisions:
        if p not in PRECISIONS and p != "auto":
            raise UserError(f"unknown precision {p!r}; choose from auto, {', '.join(PRECISIONS)}")
    if batch_size < 1:
        raise UserError("--batch-size must be ≥ 1")
    dev = resolve_device(device)
    d_steps, d_warm, d_rep = default_counts(dev)
    steps, warmup, repeats = steps or d_steps, d_warm if warmup is None else warmup, repeats or d_rep
    isolate = dev.type == "cpu" if isolate is None else isolate
    with _threads(threads):  # also for the peak estimate
        return _run_bench(pairs, methods, precisions, batch_size, dev, steps, warmup, repeats, isolate,
                          count_flops, peak_gflops, threads, log)


def _run_bench(pairs, methods, precisions, batch_size, dev, steps, warmup, repeats, isolate, count_flops,
               peak_gflops, threads, log) -> dict[str, Any]:
    results: list[dict[str, Any]] = []
    peaks: dict[str, tuple[float, str]] = {}
    default = default_precision(dev)
    # "auto" → the precision training's default picks here, measured once even if also listed
    precisions = list(dict.fromkeys(default if p == "auto" else p for p in precisions))
    for prec in precisions:
        if peak_gflops:
            peaks[prec] = (float(peak_gflops), "user")
        elif count_flops:
            peaks[prec] = (matmul_peak_gflops(dev, prec), "est.: best measured matmul/conv")
    for label, student, teacher, size, chans, classes in pairs:
        for prec in precisions:
            for m in methods:
                if m == "reference" and prec != "fp32":  # the baseline is the authors' setting only
                    continue
                cfg = BenchConfig(student, teacher, size, chans, classes, method=m, precision=prec,
                                  batch_size=batch_size, device=str(dev), steps=steps, warmup=warmup,
                                  repeats=repeats, pair=label, count_flops=count_flops, threads=threads)
                if log:
                    log(f"bench: {label} {prec} {m} ...")
                row = _measure_isolated(cfg) if isolate else measure(cfg)
                if prec in peaks and row.get("achieved_gflops") is not None:
                    row["peak_gflops"], row["peak_source"] = peaks[prec]
                    row["pct_of_peak"] = 100.0 * row["achieved_gflops"] / peaks[prec][0]
                row["is_default"] = prec == default
                results.append(row)
    _add_speedups(results)
    return {"machine": machine_info(dev),
            "settings": {"batch_size": batch_size, "steps": steps, "warmup": warmup, "repeats": repeats,
                         "isolated_processes": isolate,
                         "timing": "median over repeats of the mean step time"},
            "results": results}


def _add_speedups(rows: list[dict[str, Any]]) -> None:
    refs = {(r["pair"], r["batch_size"], r["student_layers"], r["teacher_layers"]): r
            for r in rows if r["method"] == "reference"}
    for r in rows:
        ref = refs.get((r["pair"], r["batch_size"], r["student_layers"], r["teacher_layers"]))
        if r["method"] == "semckd" and ref is not None:
            r["speedup_vs_reference"] = ref["ms_per_step"] / r["ms_per_step"]
            if r["step_mem_mb"] > 0 and ref["step_mem_mb"] > 0:
                r["mem_ratio_vs_reference"] = ref["step_mem_mb"] / r["step_mem_mb"]
            if r.get("saved_mb") and ref.get("saved_mb"):
                r["saved_ratio_vs_reference"] = ref["saved_mb"] / r["saved_mb"]


def _f(v: Any, fmt: str = ".1f") -> str:
    return "—" if v is None else format(v, fmt)


def format_table(report: dict[str, Any]) -> str:
    """Markdown table of :func:`run_bench` results, with the measuring conditions underneath."""
    rows = report["results"]
    lines = ["| pair | student ← teacher | precision | method | ms/step | images/s | step mem (MB) | "
             "peak mem (MB) | saved (MB) | GFLOP/step | GFLOP/s | % of peak | speedup vs ref | "
             "mem ratio vs ref | saved ratio vs ref |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    def ratio(key: str) -> str:
        return f"{_f(r.get(key), '.2f')}{'×' if r.get(key) else ''}"

    for r in rows:
        lines.append(
            f"| {r['pair']} | {r['student']} ← {r['teacher']} | {r['precision']}"
            f"{' (default)' if r.get('is_default') and r['method'] != 'reference' else ''} | {r['method']} | "
            f"{_f(r['ms_per_step'])} | {_f(r['images_per_s'])} | {_f(r['step_mem_mb'], '.0f')} | "
            f"{_f(r['peak_mem_mb'], '.0f')} | {_f(r.get('saved_mb'), '.1f')} | "
            f"{_f(r['gflop_per_step'], '.2f')} | {_f(r['achieved_gflops'])} | {_f(r.get('pct_of_peak'))} | "
            f"{ratio('speedup_vs_reference')} | {ratio('mem_ratio_vs_reference')} | "
            f"{ratio('saved_ratio_vs_reference')} |")
    m, s = report["machine"], report["settings"]
    peak = next((r for r in rows if r.get("peak_gflops")), None)
    notes = [f"Machine: {m.get('gpu') or m['cpu']} ({m['device']}, {m['cpu_count']} CPUs, "
             f"{m['torch_threads']} torch threads), torch {m['torch']}. Batch {s['batch_size']}; "
             f"{s['warmup']} warm-up steps, then median of {s['repeats']} × {s['steps']} steps.",
             "One step = teacher forward + student forward/backward + method losses + SGD step; "
             "reference = SemCKD with the authors'-style per-pair-loop criterion (fp32).",
             f"Memory: {rows[0]['mem_kind'] if rows else ''} (see `semckd bench --help`); saved = "
             "activations autograd keeps for backward in one step (exact, excludes parameters and inputs); "
             "ratios are reference / SemCKD (> 1: SemCKD uses less)."]
    if peak:
        per = sorted({(r["precision"], r["peak_gflops"], r["peak_source"])
                      for r in rows if r.get("peak_gflops")})
        notes.append("% of peak against "
                     + "; ".join(f"{p}: {g:.0f} GFLOP/s ({src})" for p, g, src in per) + ".")
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


# ---------------------------------------------------------------------- scaling
def _stage_blocks(model: nn.Module) -> list[tuple[str, list[str]]]:
    """``[(stage, [block names])]`` for the declared stages after the stem.

    A stage that is an ``nn.Sequential``/``nn.ModuleList`` lists its children (its output is the last
    child's output); any other stage is its own single block. The first declared stage is skipped when
    it is not a container: it is the stem, which SemCKD leaves out by default (the authors use
    ``feat[1:-1]``), so the sweep starts from exactly the layers a default run matches.
    """
    from .features import unwrap

    base = unwrap(model)
    modules = dict(base.named_modules())
    out = []
    for i, name in enumerate(base.stage_names):
        mod = modules[name]
        kids = [k for k, _ in mod.named_children()] if isinstance(mod, (nn.Sequential, nn.ModuleList)) else []
        if not kids and i == 0:
            continue
        out.append((name, [f"{name}.{k}" for k in kids] if kids else [name]))
    return out


def block_layers(model: nn.Module) -> list[str]:
    """Every residual block output after the stem, shallow → deep (``layer1.0, layer1.1, ...``)."""
    return [b for _, blocks in _stage_blocks(model) for b in blocks]


def _stage_ends(model: nn.Module) -> list[str]:
    """The stages SemCKD uses by default, in block-level names (``layer1`` → its last block: the same
    tensor)."""
    return [blocks[-1] for _, blocks in _stage_blocks(model)]


def _grow(all_names: list[str], required: list[str], k: int) -> list[str]:
    """``k`` layers: the ``required`` ones plus others spread evenly over the rest, in network order."""
    rest = [n for n in all_names if n not in required]
    extra = max(0, min(len(rest), k - len(required)))
    if extra == 0:
        picked: set[str] = set()
    else:
        picked = {rest[round(i * (len(rest) - 1) / max(1, extra - 1))] for i in range(extra)}
        picked = picked if len(picked) == extra else set(rest[:extra])
    return [n for n in all_names if n in required or n in picked]


def layer_sweep(student: nn.Module, teacher: nn.Module, points: int = 4) -> list[tuple[list[str], list[str]]]:
    """Candidate-layer lists from the stages SemCKD uses by default up to every residual block of
    both networks (stem excluded throughout).

    Each intermediate point keeps every stage output and adds evenly spread blocks, so the pair count
    grows roughly linearly from S·T (stages) to all blocks × all blocks.
    """
    s_all, t_all = block_layers(student), block_layers(teacher)
    s_req, t_req = _stage_ends(student), _stage_ends(teacher)
    out = [(s_req, t_req)]
    for i in range(1, max(2, points)):
        frac = i / (max(2, points) - 1)
        ks = round(len(s_req) + frac * (len(s_all) - len(s_req)))
        kt = round(len(t_req) + frac * (len(t_all) - len(t_req)))
        pair = (_grow(s_all, s_req, ks), _grow(t_all, t_req, kt))
        if len(pair[0]) * len(pair[1]) > len(out[-1][0]) * len(out[-1][1]):
            out.append(pair)
    return out


def component_breakdown(cfg: BenchConfig, repeats: int = 3) -> dict[str, Any]:
    """Where one step's time goes: teacher forward, student forward+backward (CE only), the method's
    criterion forward+backward on fixed features, the optimizer step; plus, from ``torch.profiler``, the
    criterion's time split by op family (Gram/MLP matmuls and softmax = attention; conv/BN/ReLU/pool =
    projectors; sub/pow/mean/mse = MSE loss)."""
    with _threads(cfg.threads):
        return _component_breakdown(cfg, repeats)


def _component_breakdown(cfg: BenchConfig, repeats: int) -> dict[str, Any]:
    from .methods.base import Outputs

    device = resolve_device(cfg.device)
    step, distiller, opt, (x, y, idx) = build_step(cfg, device)
    step()  # warm up, allocate optimizer state

    def autocast():
        return _autocast(device, cfg.precision)

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


def _family(op: str) -> str:
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
        fam = _family(ev.key)
        totals[fam] = totals.get(fam, 0.0) + us / 1e3
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def run_scaling(student: str = "resnet8x4", teacher: str = "resnet32x4", input_size: int = 32,
                in_channels: int = 3, num_classes: int = 100,
                batch_sizes: Iterable[int] = (32, 64, 128, 256),
                methods: Sequence[str] = ("semckd", "reference"), precision: str = "fp32",
                device: str = "auto",
                steps: int | None = None, warmup: int | None = None, repeats: int | None = None,
                isolate: bool | None = None, layer_points: int = 4, base_batch: int = 64,
                threads: int | None = None, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """SemCKD step time and memory as candidate layers grow (stages → every block) and as the batch
    grows, plus a per-component breakdown at the base setting and at the largest layer set."""
    dev = resolve_device(device)
    if precision == "auto":
        precision = default_precision(dev)
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; choose from auto, {', '.join(PRECISIONS)}")
    d_steps, d_warm, d_rep = default_counts(dev)
    steps, warmup, repeats = steps or d_steps, d_warm if warmup is None else warmup, repeats or d_rep
    isolate = dev.type == "cpu" if isolate is None else isolate
    with _threads(threads):
        return _run_scaling(student, teacher, input_size, in_channels, num_classes, batch_sizes, methods,
                            precision, dev, steps, warmup, repeats, isolate, layer_points, base_batch,
                            threads, log)


def _run_scaling(student, teacher, input_size, in_channels, num_classes, batch_sizes, methods, precision, dev,
                 steps, warmup, repeats, isolate, layer_points, base_batch, threads, log) -> dict[str, Any]:
    from .models import create_model

    s_model = create_model(student, num_classes=num_classes, in_channels=in_channels)
    t_model = create_model(teacher, num_classes=num_classes, in_channels=in_channels)
    base = BenchConfig(student, teacher, input_size, in_channels, num_classes, precision=precision,
                       batch_size=base_batch, device=str(dev), steps=steps, warmup=warmup, repeats=repeats,
                       pair=f"{student}←{teacher}", count_flops=True, threads=threads)
    sweep = layer_sweep(s_model, t_model, layer_points)

    def run(cfg: BenchConfig) -> dict[str, Any]:
        if log:
            n_s = len(cfg.student_layers or _stage_ends(s_model))
            n_t = len(cfg.teacher_layers or _stage_ends(t_model))
            log(f"scaling: {cfg.method} batch {cfg.batch_size} layers {n_s}×{n_t}")
        row = _measure_isolated(cfg) if isolate else measure(cfg)
        row["student_layer_names"] = cfg.student_layers
        row["teacher_layer_names"] = cfg.teacher_layers
        return row

    layers_rows, batch_rows = [], []
    for s_names, t_names in sweep:
        for m in methods:
            layers_rows.append(run(dataclasses.replace(base, method=m, student_layers=s_names,
                                                       teacher_layers=t_names)))
    for b in batch_sizes:
        for m in methods:
            batch_rows.append(run(dataclasses.replace(base, method=m, batch_size=int(b))))
    _add_speedups(layers_rows)
    _add_speedups(batch_rows)
    if log:
        log("scaling: component breakdown ...")
    breakdown = {
        "stages": component_breakdown(dataclasses.replace(base, method="semckd"), repeats=repeats),
        "all blocks": component_breakdown(
            dataclasses.replace(base, method="semckd", student_layers=sweep[-1][0],
                                teacher_layers=sweep[-1][1]), repeats=repeats),
    }
    if "reference" in methods:
        breakdown["stages, reference"] = component_breakdown(dataclasses.replace(base, method="reference"),
                                                             repeats=repeats)
    return {"machine": machine_info(dev),
            "settings": {"base_batch": base_batch, "precision": precision, "steps": steps, "warmup": warmup,
                         "repeats": repeats, "isolated_processes": isolate},
            "layers": layers_rows, "batch": batch_rows, "breakdown": breakdown}


def format_scaling(rep: dict[str, Any]) -> str:
    """Markdown for :func:`run_scaling`: two scaling tables and the breakdowns, with a verdict line."""
    def table(rows: list[dict[str, Any]], first: str) -> list[str]:
        out = [f"| {first} | method | ms/step | images/s | step mem (MB) | GFLOP/step | speedup vs ref |",
               "|---|---|---:|---:|---:|---:|---:|"]
        for r in rows:
            n_s, n_t = r["student_layers"], r["teacher_layers"]
            key = f"{n_s}×{n_t} = {n_s * n_t} pairs" if first.startswith("layers") else str(r["batch_size"])
            sp = r.get("speedup_vs_reference")
            out.append(f"| {key} | {r['method']} | {_f(r['ms_per_step'])} | {_f(r['images_per_s'])} | "
                       f"{_f(r['step_mem_mb'], '.0f')} | {_f(r['gflop_per_step'], '.2f')} | "
                       f"{_f(sp, '.2f')}{'×' if sp else ''} |")
        return out

    s = rep["settings"]
    lines = [f"### Candidate layers (batch {s['base_batch']}, {s['precision']})", ""]
    lines += table(rep["layers"], "layers (S×T)")
    lines += ["", f"### Batch size ({s['precision']}, declared stages)", ""]
    lines += table(rep["batch"], "batch") + [""]
    for name, b in rep["breakdown"].items():
        comp = b["components_ms"]
        total = sum(comp.values())
        lines += [f"### Where a step goes ({name}; full step {b['full_step_ms']:.1f} ms)", "",
                  "| component | ms | share |", "|---|---:|---:|"]
        lines += [f"| {k} | {v:.1f} | {100 * v / total:.0f}% |" for k, v in comp.items()]
        ops = b["criterion_ops_ms"]
        ops_total = sum(ops.values()) or 1.0
        lines += ["", "| criterion op family (profiler self time) | ms | share |", "|---|---:|---:|"]
        lines += [f"| {k} | {v:.1f} | {100 * v / ops_total:.0f}% |" for k, v in ops.items()]
        top = max(comp, key=comp.get) if comp else "—"
        top_op = next(iter(ops), "—")
        lines += ["", f"Most of the step: **{top}**; inside the criterion: **{top_op}**.", ""]
    m = rep["machine"]
    lines.append(f"Machine: {m.get('gpu') or m['cpu']} ({m['device']}), torch {m['torch']}; "
                 f"median of {s['repeats']} × {s['steps']} steps after {s['warmup']} warm-up.")
    return "\n".join(lines) + "\n"


def write_json(path: str | os.PathLike, obj: dict[str, Any]) -> None:
    from .report import write_text_atomic

    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")
