"""Training-step benchmarks: throughput, memory and FLOP/s of vanilla, KD and SemCKD, and where the
time of a SemCKD step goes.

One *step* is what the engine does per batch: teacher forward (no grad), student forward, the method's
losses, backward, optimizer step (SGD with momentum, as the paper trains). Inputs are random tensors
already on the device, so the numbers are the model/method cost without data loading.

Rows:

* ``vanilla`` / ``kd`` / ``semckd``: the library's distillers in float32 (``fp32``, ``fp32-cl``) or
  under autocast (``bf16``, ``fp16``); ``auto`` stands for the precision training's default picks here;
* ``reference``: the same SemCKD step with the criterion swapped for
  :class:`benchmarks.reference.ReferenceSemCKD` — per-pair Python loops, float32, as the authors wrote it —
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

Layout (one module per job): ``cli`` (``python -m benchmarks bench``), ``config`` (what a row
measures, presets, the precision names, machine), ``timing`` (build a step, time it, memory, FLOPs),
``peak`` (the machine's practical peak), ``table`` (the standard table), ``scaling`` (layers and batch
sweeps), ``breakdown`` (where a step's time goes). The step itself is the engine's (:mod:`semckd.step`)
and the precisions are :class:`semckd.precision.Precision` values; the names here (``fp32``,
``fp32-cl``, ``bf16``, ``bf16-cl``, ``fp16``, ``auto``) are the bench's names for those
(:func:`precision_of`, :func:`name_of`); the library itself knows only ``amp`` and ``channels_last``.
"""

from __future__ import annotations

from .breakdown import component_breakdown, op_family
from .config import (
    METHODS,
    NAMES,
    PAIRS,
    PRECISIONS,
    BenchConfig,
    _sync,
    _threads,
    default_counts,
    default_precision,
    machine_info,
    name_of,
    precision_of,
    resolve_device,
)
from .peak import matmul_peak_gflops
from .scaling import block_layers, format_scaling, layer_sweep, run_scaling
from .table import format_table, run_bench, write_json
from .timing import (
    _measure_isolated,
    _reference_swap,
    build_step,
    count_step_flops,
    measure,
    saved_for_backward_mb,
    train_step,
)

__all__ = ["METHODS", "NAMES", "PAIRS", "PRECISIONS", "BenchConfig", "block_layers", "build_step",
           "component_breakdown", "count_step_flops", "default_counts", "default_precision", "format_scaling",
           "format_table", "layer_sweep", "machine_info", "matmul_peak_gflops", "measure", "name_of",
           "precision_of", "resolve_device", "run_bench", "run_scaling", "saved_for_backward_mb",
           "train_step", "write_json", "op_family", "_measure_isolated", "_reference_swap", "_sync",
           "_threads"]
