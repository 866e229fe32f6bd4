"""What ``semckd sweep --prune`` saves on the protocol's tuning grids, and whether it picks the same value.

    python -m benchmarks prune_study                      # both budgets, SemCKD and KD, successive halving
    python -m benchmarks prune_study --pruner hyperband --budgets short --methods semckd
    python -m benchmarks prune_study --report             # only the table from what is recorded

For each budget (the protocol's ``short`` and ``large`` tables) and method, the protocol's seed-0 tuning
grid is run again as a pruned sweep (:func:`semckd.sweep.run_sweep`, the code behind ``semckd sweep
--prune``, with exactly the protocol's configuration), and compared with the full grid the protocol
recorded in ``benchmarks/results/fmnist_<budget>.jsonl`` (never rerun here):

* selection: the pruned sweep's value vs the full grid's; "within noise" when the full grid's seed-0
  validation accuracy at the pruned choice is within one standard deviation (over the protocol's 3 seeds
  at its selection) of the full grid's best;
* compute: epochs trained by the pruned sweep / epochs of the full grid (cells × epochs).

The issue's target: the same selection (or one within noise) at <= 40% of the compute. Results go to
``benchmarks/results/fmnist_prune.jsonl`` (one line per budget, method and pruner) and ``fmnist_prune.md``.
CPU cost: the un-pruned cells are trained in full, so expect roughly the protocol's tuning time (an hour
or more per budget on a 2-core CPU); the run folders (resumable) go under ``--out-dir``.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

from benchmarks import protocol
from semckd.atomic import write_text_atomic
from semckd.runfolder import read_jsonl
from semckd.sweep import cell_label, grid_points, run_sweep, select_value, summarise

ROOT = Path(__file__).resolve().parent.parent

RESULTS = ROOT / "benchmarks" / "results" / "fmnist_prune.jsonl"


def full_grid(budget: str, method: str) -> dict[str, Any]:
    """The protocol's recorded seed-0 grid: per-point validation accuracy, its selection and noise."""
    table = protocol.TABLES[budget]
    grid = protocol.grid_for(table, method)
    recs = [r for r in protocol.read_results(protocol.RESULTS / f"fmnist_{budget}.jsonl")
            if r["method"] == method]
    points = grid_points(grid)
    tuning = summarise([r for r in recs if r["seed"] == 0], points)
    if any(not s["seeds"] for s in tuning):
        raise SystemExit(f"{budget}/{method}: the protocol's tuning grid is not complete; run "
                         f"python -m benchmarks protocol --table {budget} first")
    sel = select_value(tuning)
    seeds = [r["best_val_acc"] for r in recs
             if r["values"] == sel["values"] and r["best_val_acc"] is not None]
    return {"grid": grid, "val": {s["label"]: s["val_mean"] for s in tuning}, "selected": sel["label"],
            "noise": statistics.stdev(seeds) if len(seeds) > 1 else 0.0, "epochs": table["epochs"],
            "cells": len(points)}


def measure(budget: str, method: str, pruner: str, out_dir: Path) -> dict[str, Any]:
    full = full_grid(budget, method)
    table = protocol.TABLES[budget]
    out = out_dir / f"{budget}-{method}-{pruner}"
    base = protocol.cell_config(table, method, {}, 0, out / "unused")
    res = run_sweep(base, full["grid"], [0], out, prune=pruner, log=lambda s: print(f"[{out.name}] {s}",
                                                                                   flush=True))
    trained = sum(r.get("epochs_trained") or 0 for r in res.records)
    choice = res.selected["label"] if res.selected else None
    best, got = full["val"][full["selected"]], full["val"].get(choice)
    return {"budget": budget, "method": method, "pruner": pruner, "selected_full": full["selected"],
            "selected_pruned": choice, "same": choice == full["selected"],
            "within_noise": got is not None and best - got <= full["noise"],
            "noise": full["noise"], "epochs_trained": trained, "epochs_full": full["cells"] * full["epochs"],
            "compute": trained / (full["cells"] * full["epochs"]),
            "pruned": {cell_label(r["values"]): r["pruned_at"] for r in res.records if r["pruned_at"]},
            **protocol.machine()}


def table_md(recs: list[dict[str, Any]]) -> str:
    lines = ["| budget | method | pruner | full grid selects | pruned selects | same / within noise | "
             "epochs trained / full grid | pruned cells (epoch) |", "|---|---|---|---|---|---|---:|---|"]
    for r in recs:
        pr = ", ".join(f"{k} ({v})" for k, v in r["pruned"].items()) or "none"
        lines.append(f"| {r['budget']} | {r['method']} | {r['pruner']} | {r['selected_full']} | "
                     f"{r['selected_pruned']} | {'yes' if r['same'] else 'no'} / "
                     f"{'yes' if r['within_noise'] else 'no'} (σ {r['noise']:.2f}) | "
                     f"{r['epochs_trained']}/{r['epochs_full']} = {100 * r['compute']:.0f}% | {pr} |")
    return "\n".join(lines) + "\n\nTarget: the same selection (or within σ, the std over 3 seeds at the " \
        "full grid's choice) at <= 40% of the full grid's epochs.\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budgets", default="short,large")
    p.add_argument("--methods", default="semckd,kd")
    p.add_argument("--pruner", choices=["halving", "hyperband"], default="halving")
    p.add_argument("--out-dir", default=str(ROOT / "runs" / "prune"))
    p.add_argument("--report", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    a = p.parse_args(argv)
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    if not a.report:
        for budget in a.budgets.split(","):
            for method in a.methods.split(","):
                done = [r for r in read_jsonl(RESULTS) if (r["budget"], r["method"], r["pruner"]) ==
                        (budget, method, a.pruner)]
                if done:
                    continue
                rec = measure(budget, method, a.pruner, Path(a.out_dir))
                protocol.append_result(RESULTS, rec)  # one line per finished measurement, fsynced
    text = table_md(read_jsonl(RESULTS)) if RESULTS.exists() else "nothing recorded yet\n"
    if RESULTS.exists():
        write_text_atomic(RESULTS.with_suffix(".md"), text)
    print(text, end="")
    return 0

