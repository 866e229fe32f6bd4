"""Loss-weight selection on a validation split: one method over a grid of option values and seeds.

Why it exists: a distillation weight tuned for one dataset and budget (SemCKD's β = 400 on 240 CIFAR-100
epochs) can be far off for another, and choosing it by test accuracy makes the test number optimistic.
A sweep trains every (value, seed) cell on the same training images with a stratified validation split
held out, picks the value with the highest mean *validation* accuracy, and reports the test accuracy of
each cell for the record only.

The cells are trials of one Optuna study (:mod:`semckd.study`): a journal file in ``--out`` by default,
or ``--storage`` (a shared journal file, a ``postgresql://`` database) so that the same command on
several machines shares one sweep, each cell trained once. The sweep is resumable cell by cell: a cell
the study records as done is not rerun; a cell whose ``run.json`` says it finished is read; a cell with a
``last.pt`` (a killed worker's) is resumed; a cell folder without a checkpoint is started again.
``--prune`` stops cells whose per-epoch validation accuracy falls behind (successive halving or
Hyperband, after ``--prune-min-epochs``); ``--search tpe`` samples ``--range`` options instead of a grid.
``sweep.json`` / ``sweep.md`` are rewritten (atomically) after every cell, so an interrupted sweep still
leaves a partial table.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import TrainConfig, _parse_scalar, check_method
from .errors import UserError

if TYPE_CHECKING:  # optuna is imported only when a sweep runs
    from .study import CellStudy

__all__ = ["SweepResult", "cell_label", "grid_points", "parse_grid", "parse_ranges", "plan_cell", "run_sweep",
           "select_value", "summarise"]


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
        full = [r for r in cells if r.get("pruned_at") is None]  # a pruned run's best is not comparable
        vm, vs = _mean_std([r.get("best_val_acc") for r in full])
        tm, ts = _mean_std([r.get("best_acc") for r in full])
        rows.append({"values": values, "label": cell_label(values), "seeds": sorted(r["seed"] for r in cells),
                     "val_mean": vm, "val_std": vs, "test_mean": tm, "test_std": ts,
                     "pruned": sorted((r["seed"], r["pruned_at"]) for r in cells if r not in full),
                     "time_s": sum(r.get("train_time_s") or 0.0 for r in cells)})
    return rows


def select_value(summary: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The grid point with the highest mean validation accuracy (the first in grid order on a tie).

    Only ``val_mean`` is read: test accuracy must never influence the choice. A point with a pruned
    cell is not a candidate (the pruner judged it behind; its survivors' mean would be biased upward).
    """
    done = [r for r in summary if r["val_mean"] is not None and not r.get("pruned")]
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
        cells = " | ".join(str(r["values"].get(k, "")) for k in grid)
        pruned = r.get("pruned") or []
        note = (" (pruned: " + ", ".join(f"seed {s} at epoch {e}" for s, e in pruned) + ")") if pruned else ""
        lines.append(f"| {cells} | {len(r['seeds'])}/{len(seeds)}{note} | {f(r['val_mean'], r['val_std'])} | "
                     f"{f(r['test_mean'], r['test_std'])} | {'**yes**' if r['label'] == sel else ''} |")
    lines += ["", "val acc: validation accuracy of each run's selected epoch (mean ± std over seeds); the "
              "value "
              "is chosen on it alone. test acc: test accuracy of the same epochs, recorded only."]
    if any(r.get("pruned") for r in result.summary):
        lines += ["", "pruned: cells stopped early by --prune (their validation accuracy fell behind); "
                  "a value with a pruned cell is not a candidate and its means cover its full runs only."]
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
    if numeric:  # sampled points (--search tpe) come in trial order
        rows.sort(key=lambda r: float(r["values"][keys[0]]))
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


def parse_ranges(items: Sequence[str]) -> dict[str, tuple[float, float, bool]]:
    """``["beta=10:1000:log"]`` → ``{"beta": (10.0, 1000.0, True)}`` (``:lin`` or nothing: uniform)."""
    out: dict[str, tuple[float, float, bool]] = {}
    for item in items:
        key, _, text = (s.strip() for s in item.partition("="))
        parts = text.split(":")
        scale = parts[2].strip().lower() if len(parts) == 3 else "lin"
        try:
            if not key or len(parts) not in (2, 3) or scale not in ("log", "lin"):
                raise ValueError
            lo, hi = float(parts[0]), float(parts[1])
        except ValueError:
            raise UserError(f"--range expects KEY=LOW:HIGH[:log], got {item!r} (e.g. --range "
                            "beta=10:1000:log)") from None
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo >= hi:
            raise UserError(f"--range {item!r}: LOW must be below HIGH (e.g. --range {key}=10:1000:log)")
        if scale == "log" and lo <= 0:
            raise UserError(f"--range {item!r}: a log range needs LOW > 0; use {key}={hi / 100:g}:{hi:g}:log "
                            "or drop :log")
        if key in out:
            raise UserError(f"--range names {key!r} twice; give it once")
        out[key] = (lo, hi, scale == "log")
    if not out:
        raise UserError("--search tpe needs at least one --range KEY=LOW:HIGH[:log]")
    return out


class _Pruned(Exception):
    def __init__(self, epoch: int) -> None:
        super().__init__(f"pruned at epoch {epoch}")
        self.epoch = epoch


def _pruner(prune: str | None, min_epochs: int, epochs: int) -> Any:
    import optuna

    if prune is None:
        return optuna.pruners.NopPruner()
    if prune == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=min_epochs, reduction_factor=3)
    if prune == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=min_epochs, max_resource=epochs,
                                              reduction_factor=3)
    raise UserError(f"--prune {prune!r}: choose halving or hyperband")


def _record(values: dict[str, Any], seed: int, run_dir: Path, method: str, run: dict[str, Any],
            pruned_at: int | None = None) -> dict[str, Any]:
    return {"values": values, "seed": seed, "out": str(run_dir), "method": method,
            "best_val_acc": run.get("best_val_acc"), "best_acc": run.get("best_acc"),
            "final_acc": run.get("final_acc"), "best_epoch": run.get("best_epoch"),
            "train_time_s": run.get("train_time_s"), "epochs_trained": run.get("epochs_trained"),
            "pruned_at": pruned_at}


def _partial_run(run_dir: Path) -> dict[str, Any]:
    """What a pruned cell's ``metrics.jsonl`` says: its best-validation epoch so far."""
    from .runfolder import METRICS, read_jsonl

    rows = [r for r in read_jsonl(run_dir / METRICS) if r.get("val_acc") is not None]
    if not rows:
        return {"epochs_trained": 0}
    best = max(rows, key=lambda r: (r["val_acc"], -r["epoch"]))
    return {"best_val_acc": best["val_acc"], "best_acc": best.get("test_acc"), "best_epoch": best["epoch"],
            "final_acc": rows[-1].get("test_acc"), "epochs_trained": rows[-1]["epoch"],
            "train_time_s": sum(r.get("epoch_time_s") or 0.0 for r in rows)}


def _train_cell(held: Any, cfg: TrainConfig, run_dir: Path, values: dict[str, Any], seed: int,
                train_fn: Callable[..., dict[str, Any]], log: Callable[[str], None],
                prefix: str) -> dict[str, Any] | None:
    """Train (or resume, or read) one held cell; its record, or None when the cell was taken over."""
    from .finite import NonFiniteLossError
    from .runfolder import METRICS, read_jsonl
    from .study import CellLost

    run, cfg, how = plan_cell(cfg, run_dir)
    if run is not None:
        log(f"{prefix}: {how}, read from {run_dir}")
        run = {**run, "epochs_trained": 0}
        return _record(values, seed, run_dir, cfg.method_spec, run)
    if cfg.resume:  # a killed cell: its earlier epochs go to the pruner too, so it compares like with like
        for r in read_jsonl(run_dir / METRICS):
            if r.get("val_acc") is not None:
                held.trial.report(float(r["val_acc"]), int(r["epoch"]))
    start = len(read_jsonl(run_dir / METRICS)) if cfg.resume else 0
    log(f"{prefix}: {how} → {run_dir} (trial {held.number})")

    def on_epoch(epoch: int, val_acc: float | None) -> None:
        if held.report(epoch, val_acc) and epoch < cfg.epochs:
            raise _Pruned(epoch)

    try:
        run = train_fn(cfg, on_epoch=on_epoch)
        run = {**run, "epochs_trained": cfg.epochs - start}
        return _record(values, seed, run_dir, cfg.method_spec, run)
    except _Pruned as p:
        log(f"{prefix}: pruned after epoch {p.epoch}")
        run = _partial_run(run_dir)
        run["epochs_trained"] = p.epoch - start
        return _record(values, seed, run_dir, cfg.method_spec, run, pruned_at=p.epoch)
    except CellLost as e:
        log(str(e))
        return None
    except NonFiniteLossError as e:  # a diverged setting is a result too: recorded, never selected
        log(f"{prefix}: diverged ({str(e).splitlines()[0]})")
        run = {**_partial_run(run_dir), "best_val_acc": None, "best_acc": None}
        return {**_record(values, seed, run_dir, cfg.method_spec, run), "diverged": str(e).splitlines()[0]}
    except BaseException:
        held.release("interrupted or failed; retried by the next worker")
        raise


def _spec(base: TrainConfig, search: dict[str, Any], seeds: Sequence[int], prune: str | None,
          min_epochs: int) -> dict[str, Any]:
    """What a study is for: a worker with other settings must not add its cells to it. (Not the teacher's
    path, which differs between machines sharing one study.)"""
    return {"kind": "semckd sweep", "method": base.method_spec, "method_args": base.method_args,
            "model": base.model, "dataset": base.dataset, "epochs": base.epochs,
            "limit_train": base.limit_train, "val_split": base.val_split, "val_seed": base.val_seed,
            "lr": base.lr, "batch_size": base.batch_size, "seeds": list(seeds), **search,
            "prune": prune, "prune_min_epochs": min_epochs if prune else None}


def _write_outputs(result: SweepResult, keys: dict[str, Any], seeds: Sequence[int], out: Path) -> None:
    from .atomic import write_text_atomic

    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "sweep.json", json.dumps(result.as_dict(), indent=2) + "\n")
    write_text_atomic(out / "sweep.md", _table(result, keys, seeds))


def run_sweep(base: TrainConfig, grid: dict[str, list[Any]] | None, seeds: Sequence[int], out: str | Path, *,
              train_fn: Callable[..., dict[str, Any]] | None = None,
              log: Callable[[str], None] = print, storage: str | None = None,
              study_name: str | None = None, prune: str | None = None, prune_min_epochs: int | None = None,
              search: str = "grid", trials: int | None = None,
              ranges: dict[str, tuple[float, float, bool]] | None = None,
              heartbeat_s: float = 10.0, grace_s: float = 60.0, poll_s: float = 5.0) -> SweepResult:
    """Train ``base`` at every point of ``grid`` (method options) × ``seeds`` under ``out`` and select.

    The cells are trials of one Optuna study (:mod:`semckd.study`; default storage a journal file
    ``out/study.journal``), so the same call in several processes or machines (``storage`` a shared
    journal file or ``postgresql://`` URL) shares the work, each cell trained once. ``prune``
    (``"halving"`` / ``"hyperband"``) stops cells whose per-epoch validation accuracy falls behind after
    ``prune_min_epochs``; ``search="tpe"`` samples ``trials`` points of ``ranges`` instead of a grid.
    ``base`` must have a validation split: selection uses validation accuracy only. ``train_fn``
    (default :func:`semckd.engine.train`, called with ``on_epoch=``) is injectable for tests.
    """
    min_epochs = _check_sweep_args(base, grid, seeds, search, ranges, trials, prune, prune_min_epochs)
    if train_fn is None:
        from .engine import train as train_fn
    from .study import CellStudy, open_storage

    out = Path(out)
    points = grid_points(grid) if search == "grid" else []
    checks = points if search == "grid" else [{k: r[i] for k, r in (ranges or {}).items()} for i in (0, 1)]
    for values in checks:  # every value checked (name, type, range) before the first run (or the study)
        check_method(base.method_spec, _args_at(base.method_args, values))
    pruner = _pruner(prune, min_epochs, base.epochs)
    if search == "grid":
        what: dict[str, Any] = {"search": "grid", "grid": grid}
    else:
        what = {"search": "tpe", "trials": trials,
                "ranges": {k: list(v) for k, v in (ranges or {}).items()}}
    import optuna

    sampler = optuna.samplers.TPESampler(seed=0, n_startup_trials=min(5, trials or 5)) if search == "tpe" \
        else None
    default = out / "study.journal"
    st = open_storage(storage, default)
    name = study_name or "sweep"
    cs = CellStudy(st, name, _spec(base, what, seeds, prune, min_epochs), pruner=pruner, sampler=sampler,
                   heartbeat_s=heartbeat_s, grace_s=grace_s, log=log,
                   where=storage and _redacted(storage) or str(default))

    def cfg_at(values: dict[str, Any], seed: int, run_dir: Path) -> TrainConfig:
        args = check_method(base.method_spec, _args_at(base.method_args, values))  # as the methods take them
        return dataclasses.replace(base, method_args=args, seed=seed,
                                   out=str(run_dir), resume=False, force=False)

    if search == "grid":
        result = _run_grid(cs, grid or {}, points, seeds, out, cfg_at, train_fn, log, poll_s)
        keys: dict[str, Any] = grid
    else:
        result = _tpe(cs, base, ranges or {}, trials or 0, seeds, out, cfg_at, train_fn, log, poll_s)
        keys = {k: [r["values"][k] for r in result.summary] for k in ranges or {}}
    _write_outputs(result, keys, seeds, out)
    plot_sweep(result, keys, out / "sweep.png")
    return result


def _check_sweep_args(base: TrainConfig, grid: dict[str, list[Any]] | None, seeds: Sequence[int],
                      search: str, ranges: dict[str, tuple[float, float, bool]] | None, trials: int | None,
                      prune: str | None, prune_min_epochs: int | None) -> int:
    """Refuse a sweep that cannot select fairly or whose flags contradict, before any study exists;
    return the epochs every cell keeps before the pruner may stop it."""
    if base.kind != "distill":
        raise UserError("semckd sweep runs a distillation method; use it with --method (not train-teacher)")
    if base.val_split <= 0:
        raise UserError("semckd sweep selects on a validation split; pass --val-split N (e.g. 1000) so the "
                        "test set never drives the choice")
    if not seeds:
        raise UserError("--seeds is empty; pass e.g. --seeds 0,1,2")
    if len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds repeats a seed ({', '.join(map(str, seeds))})")
    if search not in ("grid", "tpe"):
        raise UserError(f"--search {search!r}: choose grid or tpe")
    if search == "grid" and not grid:
        raise UserError("semckd sweep needs at least one --grid KEY=V1,V2,... (or --search tpe --range ...)")
    if search == "tpe":
        if grid:
            raise UserError("--search tpe samples --range options; drop --grid (or use --search grid)")
        if not ranges:
            raise UserError("--search tpe needs at least one --range KEY=LOW:HIGH[:log]")
        if not trials or trials < 1:
            raise UserError("--search tpe needs --trials N (N >= 1), e.g. --trials 12")
        if prune and len(seeds) > 1:
            raise UserError("--prune with --search tpe compares single runs; pass one seed (--seeds 0) or "
                            "drop --prune")
    elif ranges or trials:
        raise UserError("--range/--trials go with --search tpe; add --search tpe or use --grid")
    min_epochs = prune_min_epochs if prune_min_epochs is not None else max(1, base.epochs // 4)
    if prune and not 1 <= min_epochs < base.epochs:
        raise UserError(f"--prune-min-epochs {min_epochs}: must be at least 1 and below --epochs "
                        f"{base.epochs} (the epochs every cell keeps before it can be stopped)")
    return min_epochs


def _run_grid(cs: CellStudy, grid: dict[str, list[Any]], points: list[dict[str, Any]], seeds: Sequence[int],
              out: Path, cfg_at: Callable[[dict[str, Any], int, Path], TrainConfig],
              train_fn: Callable[..., dict[str, Any]], log: Callable[[str], None],
              poll_s: float) -> SweepResult:
    """Claim and train every free cell, seed-major (the pruner compares values before seeds repeat);
    then wait for cells other workers hold until the study is complete."""
    cells = [(values, seed) for seed in seeds for values in points]  # seed-major: the pruner compares
    total = len(cells)                                                # values before seeds repeat

    def key_of(values: dict[str, Any], seed: int) -> str:
        return f"{cell_label(values)}/seed{seed}"

    while True:
        waiting = False
        for i, (values, seed) in enumerate(cells, 1):
            key = key_of(values, seed)
            held = cs.claim(key, attrs={"values": values, "seed": seed})
            if held is None:
                waiting |= cs.state_of(key)[0] != "done"
                continue
            run_dir = out / cell_label(values) / f"seed{seed}"
            rec = _train_cell(held, cfg_at(values, seed, run_dir), run_dir, values, seed, train_fn, log,
                              f"[{i}/{total}] {cell_label(values)} seed {seed}")
            if rec is not None:  # a diverged cell is done too (value 0: never the study's best)
                held.finish(rec["best_val_acc"] if rec["best_val_acc"] is not None else 0.0,
                            pruned=rec["pruned_at"] is not None, record=rec)
            _write_outputs(_result(cs, points, out, None), grid, seeds, out)
        if not waiting:
            break
        cs.wait_note("cells", poll_s)
    return _result(cs, points, out, [key_of(v, s) for v, s in cells])


def _redacted(url: str) -> str:
    from .study import _redact

    return _redact(url)


def _args_at(method_args: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    args = method_args
    for k, v in values.items():
        args = _set_option(args, k, v)
    return args


def _result(cs: Any, points: list[dict[str, Any]], out: Path, expect: list[str] | None) -> SweepResult:
    """The sweep's records (from the study, so every worker writes the same table) and selection, which
    is made only once every expected cell is done."""
    done = cs.done_trials()
    records = [t.user_attrs["record"] for t in done.values() if "record" in t.user_attrs]
    order = {repr(p): i for i, p in enumerate(points)}
    records.sort(key=lambda r: (order.get(repr(r["values"]), len(order)), r["seed"]))
    res = SweepResult(records, summarise(records, points), None, out)
    if expect is not None and all(k in done for k in expect):
        res.selected = select_value(res.summary)
    return res


def _tpe(cs: Any, base: TrainConfig, ranges: dict[str, tuple[float, float, bool]], trials: int,
         seeds: Sequence[int], out: Path, cfg_at: Callable[..., TrainConfig], train_fn: Callable[..., Any],
         log: Callable[[str], None], poll_s: float) -> SweepResult:
    """Sample ``trials`` points of ``ranges`` (TPE); each trial trains every seed at its point. A trial
    whose worker died is retried at the same point, resuming its runs."""
    import optuna

    TS = optuna.trial.TrialState
    dists = {k: optuna.distributions.FloatDistribution(lo, hi, log=lg) for k, (lo, hi, lg) in ranges.items()}
    from .study import KEY

    def run_point(held: Any, values: dict[str, Any]) -> None:
        recs = []
        for seed in seeds:
            run_dir = out / "trials" / cell_label(values) / f"seed{seed}"
            rec = _train_cell(held, cfg_at(values, seed, run_dir), run_dir, values, seed, train_fn, log,
                              f"[trial {held.number}] {cell_label(values)} seed {seed}")
            if rec is None:
                return
            recs.append(rec)
            if rec["pruned_at"] is not None:
                break
        vals = [r["best_val_acc"] for r in recs if r["best_val_acc"] is not None]
        pruned = any(r["pruned_at"] is not None for r in recs)
        held.set("records", recs)
        held.finish(statistics.fmean(vals) if vals else 0.0, pruned=pruned, record=recs[0])

    while True:
        all_trials = cs.trials()
        retried = False
        for t in all_trials:  # a dead worker's point: the same values again, resuming its run folders
            if (t.state == TS.FAIL and not t.user_attrs.get("duplicate") and t.user_attrs.get(KEY)
                    and t.params):
                if cs.state_of(t.user_attrs[KEY])[0] == "free":
                    held = cs.claim(t.user_attrs[KEY], attrs={"values": t.params}, params=t.params,
                                    distributions=dists)
                    if held is not None:
                        retried = True
                        run_point(held, dict(t.user_attrs.get("values") or t.params))
        if retried:
            continue
        all_trials = cs.trials()
        now = time.time()
        live = [t for t in all_trials if t.state == TS.RUNNING and not t.user_attrs.get("duplicate")
                and not cs._stale(t, now)]
        done = [t for t in all_trials
                if t.state in (TS.COMPLETE, TS.PRUNED) and not t.user_attrs.get("duplicate")]
        if len(done) + len(live) < trials:
            held = cs.ask({})
            values = {k: held.trial.suggest_float(k, lo, hi, log=lg) for k, (lo, hi, lg) in ranges.items()}
            values = {k: float(f"{v:.4g}") for k, v in values.items()}
            held.key = cell_label(values)
            held.set(KEY, held.key)
            held.set("values", values)
            run_point(held, values)
            continue
        if not live:
            break
        cs.wait_note("trials", poll_s)
    done_t = sorted(cs.done_trials().values(), key=lambda t: t.number)
    records = [r for t in done_t for r in t.user_attrs.get("records", [t.user_attrs.get("record")]) if r]
    points = [t.user_attrs["values"] for t in done_t]
    res = SweepResult(records, summarise(records, points), None, out)
    res.selected = select_value(res.summary)
    return res
