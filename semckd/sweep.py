"""Loss-weight selection on a validation split: one method over a grid of option values and seeds.

Why it exists: a distillation weight tuned for one dataset and budget (SemCKD's β = 400 on 240 CIFAR-100
epochs) can be far off for another, and choosing it by test accuracy makes the test number optimistic.
A sweep trains every (value, seed) cell on the same training images with a stratified validation split
held out, picks the value with the highest mean *validation* accuracy, and reports the test accuracy of
each cell for the record only.

The sweep is resumable cell by cell: a cell whose ``run.json`` says it finished is read, not rerun; a cell
with a ``last.pt`` is resumed; a cell folder without a checkpoint (killed in its first epoch) is started
again. ``sweep.json`` / ``sweep.md`` are rewritten (atomically) after every cell, so an interrupted sweep
still leaves a partial table.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import TrainConfig, _parse_scalar, check_method
from .errors import UserError

__all__ = ["SweepResult", "cell_label", "grid_points", "parse_grid", "plan_cell", "run_sweep", "select_value",
           "summarise"]


def _split_values(text: str) -> list[str]:
    """``"25,50,[1,2]"`` → ``["25", "50", "[1,2]"]``: commas inside brackets do not split."""
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    out.append(cur)
    return [v.strip() for v in out]


def parse_grid(items: Sequence[str]) -> dict[str, list[Any]]:
    """``["beta=25,50", "beta_warmup=0,2"]`` → ``{"beta": [25, 50], "beta_warmup": [0, 2]}``."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"--grid expects KEY=V1,V2,..., got {item!r} (e.g. --grid beta=25,50,100)")
        key, text = (s.strip() for s in item.split("=", 1))
        values = [_parse_scalar(v) for v in _split_values(text)]
        if not key or not text or any(v == "" for v in values):
            raise UserError(f"--grid {item!r}: empty key or value; write KEY=V1,V2,...")
        if key in grid:
            raise UserError(f"--grid names {key!r} twice; give all its values in one --grid {key}=...")
        if len(set(map(repr, values))) != len(values):
            raise UserError(f"--grid {key}: a value is repeated ({text})")
        grid[key] = values
    if not grid:
        raise UserError("semckd sweep needs at least one --grid KEY=V1,V2,...")
    return grid


def grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every point of the grid's product, in grid order (``{}`` alone for an empty grid)."""
    return [dict(zip(grid, combo, strict=True)) for combo in itertools.product(*grid.values())]


def cell_label(values: dict[str, Any]) -> str:
    """Folder-safe name of one grid point, e.g. ``beta=25`` or ``beta=25,beta_warmup=2``."""
    return ",".join(f"{k}={v}" for k, v in values.items()).replace("/", "_").replace(" ", "")


def _set_option(method_args: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """Dotted keys reach into combined methods' options (``semckd.beta`` for ``semckd+crd``)."""
    out = json.loads(json.dumps(method_args))  # deep copy of plain data
    node = out
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return out


@dataclass
class SweepResult:
    """Every finished cell, the per-value summary and the value chosen on validation accuracy."""

    records: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    selected: dict[str, Any] | None
    out: Path

    def as_dict(self) -> dict[str, Any]:
        return {"records": self.records, "summary": self.summary, "selected": self.selected}


def _mean_std(xs: list[float]) -> tuple[float | None, float | None]:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    if not xs:
        return None, None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def summarise(records: Sequence[dict[str, Any]], points: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per grid point (in grid order): seeds done, mean ± std of validation and test accuracy."""
    rows = []
    for values in points:
        cells = [r for r in records if r["values"] == values]
        vm, vs = _mean_std([r.get("best_val_acc") for r in cells])
        tm, ts = _mean_std([r.get("best_acc") for r in cells])
        rows.append({"values": values, "label": cell_label(values), "seeds": sorted(r["seed"] for r in cells),
                     "val_mean": vm, "val_std": vs, "test_mean": tm, "test_std": ts,
                     "time_s": sum(r.get("train_time_s") or 0.0 for r in cells)})
    return rows


def select_value(summary: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The grid point with the highest mean validation accuracy (the first in grid order on a tie).

    Only ``val_mean`` is read: test accuracy must never influence the choice.
    """
    done = [r for r in summary if r["val_mean"] is not None]
    if not done:
        return None
    best = max(done, key=lambda r: (r["val_mean"], -summary.index(r)))
    return {"values": best["values"], "label": best["label"], "val_mean": best["val_mean"]}


def plan_cell(cfg: TrainConfig, run_dir: Path) -> tuple[dict[str, Any] | None, TrainConfig, str]:
    """How to (re)start one cell in ``run_dir``: ``(summary, cfg, how)``.

    ``summary`` is the finished run's ``run.json`` when it trained all ``cfg.epochs`` (an unreadable one
    counts as unfinished), and then there is nothing to train; otherwise ``cfg`` resumes from a ``last.pt``,
    or overwrites a folder killed before its first checkpoint (nothing to keep), or starts afresh. Shared
    by the sweep and ``benchmarks/protocol.py`` so both restart a killed cell the same way.
    """
    from .runfolder import LAST, read_summary

    run = read_summary(run_dir, strict=False)
    if run is not None and run.epochs == cfg.epochs:
        return run.to_dict(), cfg, "finished earlier"
    if (run_dir / LAST).is_file():
        return None, dataclasses.replace(cfg, resume=True), "resuming"
    if run_dir.exists() and any(run_dir.iterdir()):
        return None, dataclasses.replace(cfg, force=True), "restarting (no checkpoint yet)"
    return None, cfg, "training"


def _table(result: SweepResult, grid: dict[str, list[Any]], seeds: Sequence[int]) -> str:
    def f(m: float | None, s: float | None) -> str:
        return "—" if m is None else f"{m:.2f} ± {s:.2f}"

    sel = result.selected["label"] if result.selected else None
    lines = [f"| {' | '.join(grid)} | seeds | val acc | test acc | selected |",
             "|" + "---|" * len(grid) + "---:|---:|---:|:---:|"]
    for r in result.summary:
        cells = " | ".join(str(r["values"][k]) for k in grid)
        lines.append(f"| {cells} | {len(r['seeds'])}/{len(seeds)} | {f(r['val_mean'], r['val_std'])} | "
                     f"{f(r['test_mean'], r['test_std'])} | {'**yes**' if r['label'] == sel else ''} |")
    lines += ["", "val acc: validation accuracy of each run's selected epoch (mean ± std over seeds); the "
              "value "
              "is chosen on it alone. test acc: test accuracy of the same epochs, recorded only."]
    if result.selected:
        lines += ["", f"selected: {result.selected['label']} (mean validation accuracy "
                  f"{result.selected['val_mean']:.2f}%)"]
    return "\n".join(lines) + "\n"


def plot_sweep(result: SweepResult, grid: dict[str, list[Any]], out_path: Path) -> Path | None:
    """Validation and test accuracy (mean ± std over seeds) against each grid point; None without
    matplotlib (the table still says everything)."""
    try:
        from .plot import _figure, _save
        fig = _figure(figsize=(6.5, 4))
    except Exception:  # noqa: BLE001 - matplotlib is an optional extra
        return None
    ax = fig.subplots()
    rows = [r for r in result.summary if r["val_mean"] is not None]
    if not rows:
        return None
    keys = list(grid)
    numeric = len(keys) == 1 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                     for v in grid[keys[0]])
    xs = [float(r["values"][keys[0]]) for r in rows] if numeric else list(range(len(rows)))
    for what, marker in (("val", "o"), ("test", "s")):
        ax.errorbar(xs, [r[f"{what}_mean"] for r in rows], yerr=[r[f"{what}_std"] for r in rows],
                    marker=marker, capsize=3, label="validation" if what == "val" else "test (recorded only)")
    if numeric:
        positive = [x for x in xs if x > 0]
        if len(positive) == len(xs) and max(xs) / min(xs) >= 10:
            ax.set_xscale("log")
        ax.set_xticks(xs, [str(r["values"][keys[0]]) for r in rows])
        ax.set_xlabel(keys[0])
    else:
        ax.set_xticks(xs, [r["label"] for r in rows], rotation=30, ha="right")
    if result.selected:
        sel = next(i for i, r in enumerate(rows) if r["label"] == result.selected["label"])
        ax.axvline(xs[sel], color="grey", linestyle=":", label=f"selected: {result.selected['label']}")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{result.records[0].get('method', '')}: accuracy against {', '.join(keys)}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out_path)


def run_sweep(base: TrainConfig, grid: dict[str, list[Any]], seeds: Sequence[int], out: str | Path, *,
              train_fn: Callable[[TrainConfig], dict[str, Any]] | None = None,
              log: Callable[[str], None] = print) -> SweepResult:
    """Train ``base`` at every point of ``grid`` (method options) × ``seeds`` under ``out`` and select.

    ``base`` must have a validation split (``val_split > 0``): selection uses validation accuracy only.
    ``train_fn`` (default :func:`semckd.engine.train`) is injectable for tests.
    """
    if base.kind != "distill":
        raise UserError("semckd sweep runs a distillation method; use it with --method (not train-teacher)")
    if base.val_split <= 0:
        raise UserError("semckd sweep selects on a validation split; pass --val-split N (e.g. 1000) so the "
                        "test set never drives the choice")
    if not seeds:
        raise UserError("--seeds is empty; pass e.g. --seeds 0,1,2")
    if len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds repeats a seed ({', '.join(map(str, seeds))})")
    if train_fn is None:
        from .engine import train as train_fn
    from .atomic import write_text_atomic

    out = Path(out)
    points = grid_points(grid)
    cell_args = []
    for values in points:  # every grid value checked (name, type, range) before the first run starts
        args = base.method_args
        for k, v in values.items():
            args = _set_option(args, k, v)
        cell_args.append(check_method(base.method_spec, args))
    records: list[dict[str, Any]] = []
    result = SweepResult(records, summarise(records, points), None, out)
    total = len(points) * len(seeds)
    done = 0
    for values, args in zip(points, cell_args, strict=True):
        for seed in seeds:
            done += 1
            run_dir = out / cell_label(values) / f"seed{seed}"
            cfg = dataclasses.replace(base, method_args=args, seed=seed, out=str(run_dir), resume=False,
                                      force=False)
            run, cfg, how = plan_cell(cfg, run_dir)
            if run is not None:
                log(f"[{done}/{total}] {cell_label(values)} seed {seed}: {how}, read from {run_dir}")
            else:
                log(f"[{done}/{total}] {cell_label(values)} seed {seed}: {how} → {run_dir}")
                run = train_fn(cfg)
            records.append({"values": values, "seed": seed, "out": str(run_dir), "method": base.method_spec,
                            "best_val_acc": run.get("best_val_acc"), "best_acc": run.get("best_acc"),
                            "final_acc": run.get("final_acc"), "best_epoch": run.get("best_epoch"),
                            "train_time_s": run.get("train_time_s")})
            result.summary = summarise(records, points)
            result.selected = select_value(result.summary) if done == total else None
            out.mkdir(parents=True, exist_ok=True)
            write_text_atomic(out / "sweep.json", json.dumps(result.as_dict(), indent=2) + "\n")
            write_text_atomic(out / "sweep.md", _table(result, grid, seeds))
    plot_sweep(result, grid, out / "sweep.png")
    return result
