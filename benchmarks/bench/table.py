"""The standard table: every (pair, precision, method), with SemCKD's speed-up over the reference."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from typing import Any

from semckd.atomic import write_text_atomic
from semckd.errors import UserError

from .config import (
    METHODS,
    PRECISIONS,
    BenchConfig,
    _threads,
    default_precision,
    machine_info,
    resolve_counts,
    resolve_device,
)
from .peak import matmul_peak_gflops
from .timing import _measure_isolated, measure


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
    steps, warmup, repeats, isolate = resolve_counts(dev, steps, warmup, repeats, isolate)
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
    add_speedups(results)
    return {"machine": machine_info(dev),
            "settings": {"batch_size": batch_size, "steps": steps, "warmup": warmup, "repeats": repeats,
                         "isolated_processes": isolate,
                         "timing": "median over repeats of the mean step time"},
            "results": results}

def add_speedups(rows: list[dict[str, Any]]) -> None:
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
             f"Memory: {rows[0]['mem_kind'] if rows else ''} (see `python -m benchmarks bench --help`); "
             "saved = "
             "activations autograd keeps for backward in one step (exact, excludes parameters and inputs); "
             "ratios are reference / SemCKD (> 1: SemCKD uses less)."]
    if peak:
        per = sorted({(r["precision"], r["peak_gflops"], r["peak_source"])
                      for r in rows if r.get("peak_gflops")})
        notes.append("% of peak against "
                     + "; ".join(f"{p}: {g:.0f} GFLOP/s ({src})" for p, g, src in per) + ".")
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"

def write_json(path: str | os.PathLike, obj: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")
