"""SemCKD's cost as candidate layers (stages → every block) and the batch grow."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from torch import nn

from semckd.errors import UserError

from .breakdown import component_breakdown
from .config import (
    PRECISIONS,
    BenchConfig,
    _threads,
    default_precision,
    machine_info,
    resolve_counts,
    resolve_device,
)
from .table import _f, add_speedups
from .timing import _measure_isolated, measure


def _stage_blocks(model: nn.Module) -> list[tuple[str, list[str]]]:
    """``[(stage, [block names])]`` for the declared stages after the stem.

    A stage that is an ``nn.Sequential``/``nn.ModuleList`` lists its children (its output is the last
    child's output); any other stage is its own single block. The first declared stage is skipped when
    it is not a container: it is the stem, which SemCKD leaves out by default (the authors use
    ``feat[1:-1]``), so the sweep starts from exactly the layers a default run matches.
    """
    from semckd.features import unwrap

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
    steps, warmup, repeats, isolate = resolve_counts(dev, steps, warmup, repeats, isolate)
    with _threads(threads):
        return _run_scaling(student, teacher, input_size, in_channels, num_classes, batch_sizes, methods,
                            precision, dev, steps, warmup, repeats, isolate, layer_points, base_batch,
                            threads, log)

def _run_scaling(student, teacher, input_size, in_channels, num_classes, batch_sizes, methods, precision, dev,
                 steps, warmup, repeats, isolate, layer_points, base_batch, threads, log) -> dict[str, Any]:
    from semckd.models import create_model

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
    add_speedups(layers_rows)
    add_speedups(batch_rows)
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
