"""The equal-budget Fashion-MNIST protocol: every method's main distillation weight chosen on a validation
split, then 3 seeds at the chosen value; one command per table, from the checkout root.

    python -m benchmarks protocol --table short     # 3000 training images, 6 epochs, 10 methods
    python -m benchmarks protocol --table large     # 10000 training images, 12 epochs, 6 methods
    python -m benchmarks protocol --table warmup    # SemCKD at beta=400 with and without beta_warmup
    python -m benchmarks protocol --table bf16      # SemCKD fp32 vs bf16 autocast, paired seeds
    python -m benchmarks protocol --table attention        # SemCKD learned vs uniform vs one_to_one (short)
    python -m benchmarks protocol --table attention_large  # the same at the large budget
    python -m benchmarks protocol --table cross_wrn_40_2_mobilenetv2   # the paper's cross-architecture pairs
    python -m benchmarks protocol --table cross_vgg13_mobilenetv2
    python -m benchmarks protocol --table cross_wrn_40_2_shufflenetv1
    python -m benchmarks protocol --table short --report   # only print the table from what is recorded

``python3 benchmarks/protocol.py`` (the spelling of older notes) is not an entry: it says in one line to
use ``python -m benchmarks protocol``, whose guard checks that ``semckd`` is this checkout's.

Protocol (the same for every method, so no method gets more tuning than another):

* data: real Fashion-MNIST. A stratified validation split of 1000 images is held out of the 60000
  training images (``--val-split 1000``, ``--val-seed 0``: the same images for every method and seed);
  the budget's N training images are the first N of the rest. The test set (10000) is evaluated for the
  record and never used to choose anything: not the epoch (best checkpoint by validation accuracy), not
  the weight. The shipped teacher (ResNet-20, 92.42%) was trained on all 60000 training images, so it
  has seen the validation images; that holds for every distilled method alike.
* student ResNet-8 from the shipped teacher; SGD lr 0.05, momentum 0.9, wd 5e-4, batch 64, the paper's
  milestones scaled to the budget; float32 (``--amp none``) so a table finished over several sittings
  on CPUs of different kinds computes the same thing.
* tuning: the method's main weight over the grid ``paper/16, paper/4, paper, 4·paper`` (short) or
  ``paper/16, paper/4, paper`` (large), seed 0; selected by the best-epoch validation accuracy
  (:func:`semckd.sweep.select_value`, the code behind ``semckd sweep``); then seeds 1 and 2 at the
  selected value. Vanilla has no weight: seeds 0-2. Every other option stays at the library default,
  except KD (the SemCKD code's 1·CE + 1·KD) and DKD's warm-up, scaled with the budget like the
  milestones (20 of 240 epochs → ``max(1, round(epochs/12))``).
* row tables (``attention*``, ``cross_*``): each row is a method with fixed options and, where a value
  is a list, a grid tuned on seed 0 exactly as above; options at their default are dropped from a
  cell, so a row that only spells a default (``attention_temperature=1``) shares the paper row's runs.
  The cross-architecture tables use the pair's shipped teacher and the student's default learning rate
  (0.01 for MobileNetV2/ShuffleNet, the authors' rule), and report paired per-seed differences of the
  SemCKD ablation rows against learned SemCKD.
* results: one JSON line per finished run appended to ``benchmarks/results/fmnist_<table>.jsonl``
  (committed, with machine, CPU kind, precision, commit), so the table can be finished over several
  sessions; a recorded cell is never rerun. Run folders (checkpoints) go under ``--out-dir`` (runs/,
  ignored by git); a killed run resumes from its ``last.pt``.
* workers: several processes may run the same table at once, on one machine (e.g. two 1-thread workers
  on a 2-core box, which beats one 2-thread process there) or several (``--storage`` a shared journal
  file or ``postgresql://`` URL). The cells are trials of one Optuna study (:mod:`semckd.study`, default
  a journal file ``<out-dir>/<table>/study.journal``): a worker holds a cell's one live trial while it
  trains it, a dead worker's cell is retried from its ``last.pt``, and a worker that finds its next cells
  held waits for them instead of ending, so test seeds still follow tuning. The results JSONL stays the
  record: a cell with a line there (from any worker, or an older protocol.py) is never rerun.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from semckd.atomic import write_text_atomic
from semckd.config import resolve_config, scaled_milestones
from semckd.runfolder import read_jsonl
from semckd.sweep import cell_label, grid_points, plan_cell, select_value, summarise

ROOT = Path(__file__).resolve().parent.parent

TEACHER = ROOT / "semckd" / "weights" / "fashion_mnist_resnet20.pt"
RESULTS = ROOT / "benchmarks" / "results"

# method → (the option the grid varies, the paper's value, fixed options)
METHODS: dict[str, tuple[str | None, float | None, dict[str, Any]]] = {
    "vanilla": (None, None, {}),
    "semckd": ("beta", 400.0, {}),
    "kd": ("kd_weight", 1.0, {"ce_weight": 1.0}),
    "fitnet": ("beta", 100.0, {}),
    "crd": ("beta", 0.8, {}),
    "dkd": ("beta", 8.0, {}),
    "at": ("beta", 1000.0, {}),
    "sp": ("beta", 3000.0, {}),
    "vid": ("beta", 1.0, {}),
    "semckd+crd": ("semckd.beta", 400.0, {}),
}

TABLES: dict[str, dict[str, Any]] = {
    "short": {"limit_train": 3000, "epochs": 6, "factors": (1 / 16, 1 / 4, 1, 4),
              "methods": ["vanilla", "semckd", "kd", "fitnet", "crd", "dkd", "at", "sp", "vid",
                          "semckd+crd"]},
    "large": {"limit_train": 10000, "epochs": 12, "factors": (1 / 16, 1 / 4, 1),
              "methods": ["vanilla", "semckd", "kd", "fitnet", "crd", "dkd"]},
    # studies (every grid point × 3 seeds, nothing selected; paired per-seed differences reported):
    # beta_warmup: beta fixed at the paper's 400, the ramp on or off
    "warmup": {"limit_train": 3000, "epochs": 6, "methods": ["semckd"], "study": True,
               "grid": {"semckd": {"beta_warmup": [0, 2]}}, "fixed": {"semckd": {"beta": 400.0}}},
    # precision: SemCKD at the short table's selected beta (the demo's setting) and vanilla, float32 vs
    # bf16 autocast (the `auto` default on a CPU with native bf16, channels-last by default there);
    # meaningful only on such a CPU
    "bf16": {"limit_train": 3000, "epochs": 6, "methods": ["semckd", "vanilla"], "study": True,
             "grid": {"semckd": {"amp": ["none", "bf16"]}, "vanilla": {"amp": ["none", "bf16"]}},
             "fixed": {"semckd": {"beta": 100.0}}},
}

def _grid(paper: float, factors: tuple[float, ...] = (1 / 16, 1 / 4, 1, 4)) -> list[float]:
    return [float(f"{paper * f:.6g}") for f in factors]


# options whose default is dropped from a cell's values (so the paper's row and a row spelling the
# default share runs)
OPTION_DEFAULTS: dict[str, dict[str, Any]] = {
    "semckd": {"attention": "learned", "attention_temperature": 1.0}}
TEMPERATURES = [0.25, 1.0, 4.0]  # SemCKD's attention softmax temperature grid (1 = the paper)
ABLATION_ROWS = [("semckd learned (paper)", "semckd", {}),
                 ("semckd uniform", "semckd", {"attention": "uniform"}),
                 ("semckd one_to_one", "semckd", {"attention": "one_to_one"}),
                 ("semckd learned, temperature tuned", "semckd", {"attention_temperature": TEMPERATURES})]


CROSS_FACTORS = (1 / 16, 1 / 4, 1)  # the large table's grid: 3 points per row, the paper's value included


def _cross_rows() -> list[tuple[str, str, dict[str, Any]]]:
    rows: list[tuple[str, str, dict[str, Any]]] = [("vanilla", "vanilla", {})]
    for m in ("kd", "fitnet", "at"):
        key, paper, _ = METHODS[m]
        rows.append((m, m, {key: _grid(paper, CROSS_FACTORS)}))
    beta = _grid(METHODS["semckd"][1], CROSS_FACTORS)
    rows += [("semckd learned (paper)", "semckd", {"beta": beta}),
             ("semckd uniform", "semckd", {"attention": "uniform", "beta": beta}),
             ("semckd one_to_one", "semckd", {"attention": "one_to_one", "beta": beta})]
    return rows


def _cross(teacher_model: str, student: str) -> dict[str, Any]:
    return {"limit_train": 3000, "epochs": 6, "rows": _cross_rows(), "student": student,
            "teacher": ROOT / "semckd" / "weights" / f"fashion_mnist_{teacher_model}.pt",
            "lr": None, "paired_to": "semckd learned (paper)"}


# SemCKD at the beta each budget's table chose on validation (short 100, large 25)
TABLES["attention"] = {"limit_train": 3000, "epochs": 6, "rows": ABLATION_ROWS,
                       "fixed": {"semckd": {"beta": 100.0}}, "paired_to": "semckd learned (paper)"}
TABLES["attention_large"] = {"limit_train": 10000, "epochs": 12, "rows": ABLATION_ROWS,
                             "fixed": {"semckd": {"beta": 25.0}}, "paired_to": "semckd learned (paper)"}
TABLES["cross_wrn_40_2_mobilenetv2"] = _cross("wrn_40_2", "mobilenetv2")
TABLES["cross_vgg13_mobilenetv2"] = _cross("vgg13", "mobilenetv2")
# the paper's WRN-40-2 -> ShuffleNetV1 pair: its SemCKD rows cost ~1.5x the MobileNetV2 pair's on a CPU,
# where VGG-13's 16 projector pairs cost ~16x FitNet (BENCHMARKS.md)
TABLES["cross_wrn_40_2_shufflenetv1"] = _cross("wrn_40_2", "shufflenetv1")

# grid keys that are run settings, not method options
RUN_KEYS = ("amp",)
SEEDS = (0, 1, 2)
VAL_SPLIT = 1000


def grid_for(table: dict[str, Any], method: str) -> dict[str, list[Any]]:
    if "grid" in table:
        return table["grid"].get(method, {})
    key, paper, _ = METHODS[method]
    if key is None:
        return {}
    return {key: _grid(paper, table["factors"])}


def machine() -> dict[str, Any]:
    import torch

    from semckd.precision import cpu_has_native_bf16

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "cpu_bf16": cpu_has_native_bf16(), "torch": torch.__version__, "commit": commit}


read_results = read_jsonl  # the results file: a line cut by a kill is skipped


def append_result(path: Path, rec: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(rec) + "\n")
        f.flush()
        os.fsync(f.fileno())


def cell_config(table: dict[str, Any], method: str, values: dict[str, Any], seed: int, out: Path):
    epochs = table["epochs"]
    args: dict[str, Any] = json.loads(json.dumps(METHODS[method][2]))
    args.update(table.get("fixed", {}).get(method, {}))
    if method == "dkd":
        args["warmup"] = max(1, round(epochs / 12))
    for k, v in values.items():
        if k in RUN_KEYS:
            continue
        node = args
        *head, last = k.split(".")
        for h in head:
            node = node.setdefault(h, {})
        node[last] = v
    flags = dict(dataset="fashion_mnist", model=table.get("student", "resnet8"), method=method,
                 method_args=args,
                 epochs=epochs, milestones=scaled_milestones(epochs), limit_train=table["limit_train"],
                 val_split=VAL_SPLIT, val_seed=0, seed=seed, batch_size=64, lr=table.get("lr", 0.05),
                 amp=values.get("amp", "none"),
                 device="cpu", out=str(out), quiet=True, tensorboard=False)
    if method != "vanilla":
        flags["teacher"] = str(table.get("teacher", TEACHER))
    cfg, _ = resolve_config("distill", flags=flags)
    return cfg


def cell_path(method: str, values: dict[str, Any], seed: int) -> Path:
    """A cell's place under a table's folder (``method/label/seedN``); its study key is named after it."""
    return Path(method.replace("+", "-"), cell_label(values) or "default", f"seed{seed}")


def run_cell(name: str, table: dict[str, Any], method: str, values: dict[str, Any], seed: int,
             out_dir: Path, results: Path, info: dict[str, Any]) -> dict[str, Any]:
    from semckd.engine import train
    from semckd.finite import NonFiniteLossError

    label = cell_label(values) or "default"
    run_dir = out_dir / name / cell_path(method, values, seed)
    cfg = cell_config(table, method, values, seed, run_dir)
    run, cfg, _ = plan_cell(cfg, run_dir)
    if run is None:
        print(f"[{name}] {method} {label} seed {seed} → {run_dir}", flush=True)
        t0 = time.time()
        try:
            run = train(cfg)
        except NonFiniteLossError as e:  # a diverged setting is a result too: recorded, never selected
            print(f"[{name}] {method} {label} seed {seed}: diverged ({e})", flush=True)
            run = {"best_val_acc": None, "best_acc": None, "diverged": str(e).splitlines()[0],
                   "train_time_s": time.time() - t0}
        if run.get("best_val_acc") is not None:
            print(f"[{name}] {method} {label} seed {seed}: val {run['best_val_acc']:.2f} "
                  f"test {run['best_acc']:.2f} "
                  f"({time.time() - t0:.0f} s)", flush=True)
    rec = {"table": name, "method": method, "values": values, "label": label, "seed": seed,
           "best_val_acc": run.get("best_val_acc"), "best_acc": run.get("best_acc"),
           "final_acc": run.get("final_acc"), "best_epoch": run.get("best_epoch"),
           "train_time_s": run.get("train_time_s"), "diverged": run.get("diverged"),
           "method_args": cfg.method_args, "amp": run.get("amp") or cfg.amp,
           "epochs": cfg.epochs, "limit_train": cfg.limit_train, "val_split": cfg.val_split, **info}
    append_result(results, rec)
    return rec


HEARTBEAT_S, GRACE_S = 30.0, 300.0  # a worker silent for 5 minutes is taken for dead (cells take minutes)


def open_study(name: str, table: dict[str, Any], out_dir: Path, storage: str | None):
    """The table's study: one per table and budget (a smoke budget gets its own study)."""
    from semckd.study import CellStudy, open_storage

    st = open_storage(storage, out_dir / name / "study.journal")
    spec = {"kind": "protocol", "table": name, "epochs": table["epochs"], "limit_train": table["limit_train"]}
    budget = (table["epochs"], table["limit_train"])
    official = budget == (TABLES[name]["epochs"], TABLES[name]["limit_train"])
    study = f"protocol-{name}" + ("" if official else f"-e{budget[0]}-n{budget[1]}")
    return CellStudy(st, study, spec, heartbeat_s=HEARTBEAT_S, grace_s=GRACE_S,
                     log=lambda s: print(f"[{name}] {s}", flush=True), where=storage or str(out_dir / name))


def _has(recs: list[dict[str, Any]], method: str, values: dict[str, Any], seed: int) -> bool:
    return any(r["method"] == method and r["values"] == values and r["seed"] == seed for r in recs)


def selected_values(recs: list[dict[str, Any]], method: str, grid: dict[str, list[Any]]) -> dict | None:
    """The grid point chosen on validation accuracy of the seed-0 tuning runs (None until all ran)."""
    if not grid:
        return {}
    points = grid_points(grid)
    tuning = [r for r in recs if r["method"] == method and r["seed"] == 0]
    summary = summarise(tuning, points)
    if any(not s["seeds"] for s in summary):
        return None
    sel = select_value(summary)
    return sel["values"] if sel else None


# ---------------------------------------------------------------------- row tables
def _norm(method: str, values: dict[str, Any]) -> dict[str, Any]:
    """A cell's values without options at their default (so equal runs are one cell)."""
    defaults = OPTION_DEFAULTS.get(method, {})
    return {k: v for k, v in values.items() if not (k in defaults and defaults[k] == v)}


def row_points(row: tuple[str, str, dict[str, Any]]) -> tuple[list[dict[str, Any]], bool]:
    """A row's cells (normalised) and whether it is tuned (some option is a list)."""
    _, method, opts = row
    fixed = {k: v for k, v in opts.items() if not isinstance(v, list)}
    grid = {k: v for k, v in opts.items() if isinstance(v, list)}
    return [_norm(method, {**fixed, **p}) for p in grid_points(grid)], bool(grid)


def row_selected(recs: list[dict[str, Any]], row: tuple[str, str, dict[str, Any]]) -> dict | None:
    """The row's cell chosen on seed-0 validation accuracy (its only cell if untuned; None until tuned)."""
    points, tuned = row_points(row)
    if not tuned:
        return points[0]
    summary = summarise([r for r in recs if r["method"] == row[1] and r["seed"] == 0], points)
    if any(not x["seeds"] for x in summary):
        return None
    sel = select_value(summary)
    return sel["values"] if sel else None


def row_plan(recs: list[dict[str, Any]], row: tuple[str, str, dict[str, Any]]) -> list[tuple[dict, int]]:
    """The cells to run now, in order: tuning cells (seed 0), then seeds 1-2 of the selection."""
    points, tuned = row_points(row)
    if not tuned:
        return [(points[0], s) for s in SEEDS]
    plan = [(p, 0) for p in points]
    sel = row_selected(recs, row)
    if sel is not None:
        plan += [(sel, s) for s in SEEDS[1:]]
    return plan


def rows_md(name: str, recs: list[dict[str, Any]], table: dict[str, Any]) -> str:
    """The row table: per row its tuning, selection, 3-seed test accuracy; then paired differences."""
    lines = ["| row | grid (seed-0 val acc) | selected | seeds | val acc | test acc | per-seed test | "
             "time / run |", "|---|---|---|---:|---:|---:|---|---:|"]
    by_row: dict[str, dict[int, float]] = {}
    for row in table["rows"]:
        label, method, _ = row
        points, tuned = row_points(row)
        sel = row_selected(recs, row)
        mine = [r for r in recs if r["method"] == method]
        rs = sorted((r for r in mine if sel is not None and r["values"] == sel), key=lambda r: r["seed"])
        tune = ", ".join(
            f"{cell_label(p) or 'default'}: " + next(
                ("diverged" if r.get("best_val_acc") is None else f"{r['best_val_acc']:.2f}"
                 for r in mine if r["values"] == p and r["seed"] == 0), "…")
            for p in points) if tuned else "—"
        t = [r["train_time_s"] for r in rs if r.get("train_time_s")]
        per_seed = ", ".join("diverged" if r.get("best_acc") is None else f"{r['best_acc']:.2f}" for r in rs)
        shown_sel = (cell_label(sel) or "default") if sel is not None else "(tuning)"
        lines.append(f"| {label} | {tune} | {shown_sel if tuned else '—'} | {len(rs)}/{len(SEEDS)} | "
                     f"{_ms([r['best_val_acc'] for r in rs])} | {_ms([r['best_acc'] for r in rs])} | "
                     f"{per_seed} | {f'{statistics.fmean(t):.0f} s' if t else '—'} |")
        by_row[label] = {r["seed"]: r["best_acc"] for r in rs if r.get("best_acc") is not None}
    base_label = table.get("paired_to")
    base = by_row.get(base_label or "", {})
    diffs = []
    for label, accs in by_row.items():
        if label == base_label or not base:
            continue
        line = paired_line(label, accs, base_label, base)
        if line:
            diffs.append(line)
    if diffs:
        lines += [""] + diffs
    lines += ["", machines_line(recs)]
    return "\n".join(lines) + "\n"


def _ms(xs: list[float]) -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "—"
    return f"{statistics.fmean(xs):.2f} ± {statistics.stdev(xs):.2f}" if len(xs) > 1 else f"{xs[0]:.2f}"


def table_md(name: str, recs: list[dict[str, Any]], table: dict[str, Any] | None = None) -> str:
    table = table or TABLES[name]
    if "rows" in table:
        return rows_md(name, recs, table)
    rows, means = [], {}
    for m in table["methods"]:
        grid = grid_for(table, m)
        if table.get("study"):
            fixed = cell_label(table.get("fixed", {}).get(m, {}))
            for values in grid_points(grid):
                rs = [r for r in recs if r["method"] == m and r["values"] == values]
                label = ", ".join(x for x in (f"{m} {fixed}".strip(), cell_label(values)) if x)
                rows.append((label, "—", "—", rs))
            continue
        sel = selected_values(recs, m, grid)
        rs = [r for r in recs if r["method"] == m and sel is not None and r["values"] == sel]
        tune = [r for r in recs if r["method"] == m and r["seed"] == 0]
        tuned = (", ".join(f"{cell_label(r['values'])}: "
                           + ("diverged" if r.get("best_val_acc") is None else f"{r['best_val_acc']:.2f}")
                           for r in tune)
                 if grid else "—")
        rows.append((m, tuned, cell_label(sel) if sel else ("—" if not grid else "(tuning)"), rs))
        if len(rs) == len(SEEDS):
            means[m] = statistics.fmean(r["best_acc"] for r in rs)
    lines = ["| method | grid (seed-0 val acc) | selected | seeds | val acc | test acc | per-seed test | "
             "ARI vs SemCKD (%) | time / run |", "|---|---|---|---:|---:|---:|---|---:|---:|"]
    for m, tuned, sel, rs in rows:
        ari = "—"
        if m in means and "semckd" in means and "vanilla" in means and m not in ("semckd", "vanilla"):
            d = means[m] - means["vanilla"]
            ari = f"{(means['semckd'] - means[m]) / d * 100:.1f}" if d else "—"
        t = [r["train_time_s"] for r in rs if r.get("train_time_s")]
        per_seed = ", ".join("diverged" if r.get("best_acc") is None else f"{r['best_acc']:.2f}"
                             for r in sorted(rs, key=lambda r: r["seed"]))
        lines.append(f"| {m} | {tuned} | {sel} | {len(rs)}/{len(SEEDS)} | "
                     f"{_ms([r['best_val_acc'] for r in rs])} | "
                     f"{_ms([r['best_acc'] for r in rs])} | "
                     f"{per_seed} | {ari} | {f'{statistics.fmean(t):.0f} s' if t else '—'} |")
    if table.get("study"):
        lines += paired_lines(rows)
    lines += ["", machines_line(recs)]
    return "\n".join(lines) + "\n"


def machines_line(recs: list[dict[str, Any]]) -> str:
    """Every (cpu, native bf16, precision, threads, commit) the table's runs were made on."""
    kinds = sorted({(r.get("cpu"), r.get("cpu_bf16"), r.get("amp"), r.get("threads"), r.get("commit"))
                    for r in recs}, key=str)
    return ("Machines (cpu, native bf16, precision, torch threads, commit): "
            + "; ".join(f"{c} / {'bf16' if b else 'no bf16'} / {a} / {t} / {k}" for c, b, a, t, k in kinds))


def paired_line(label: str, accs: dict[int, float], base_label: str, base: dict[int, float]) -> str | None:
    """``label − base_label`` test accuracy per shared seed, with the mean; None when no seed is shared."""
    d = [(s, accs[s] - base[s]) for s in sorted(accs) if s in base]
    if not d:
        return None
    return (f"Paired test difference, {label} − {base_label}: "
            + ", ".join(f"seed {s}: {x:+.2f}" for s, x in d) + f" (mean {_ms([x for _, x in d])})")


def paired_lines(rows: list[tuple[str, str, str, list[dict[str, Any]]]]) -> list[str]:
    """Per-seed test-accuracy differences of each study row against the first row of the same method
    (same seed, same data order, so the difference isolates the studied setting); a diverged run counts
    as missing."""
    out = [""]
    first: dict[str, tuple[str, dict[int, float]]] = {}
    for label, _, _, rs in rows:
        if not rs:
            continue
        method = rs[0]["method"]
        accs = {r["seed"]: r["best_acc"] for r in rs if r.get("best_acc") is not None}
        if method not in first:
            first[method] = (label, accs)
            continue
        base_label, base = first[method]
        line = paired_line(label, accs, base_label, base)
        if line:
            out.append(line)
    return out if len(out) > 1 else []


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--table", choices=sorted(TABLES), required=True)
    p.add_argument("--out-dir", default=str(ROOT / "runs" / "protocol"),
                   help="run folders (default runs/protocol)")
    p.add_argument("--results", default=None,
                   help="results JSONL (default benchmarks/results/fmnist_<table>.jsonl)")
    p.add_argument("--methods", default=None, help="comma list: only these rows (default: the table's)")
    p.add_argument("--report", action="store_true",
                   help="print the table from recorded results; train nothing")
    p.add_argument("--max-runs", type=int, default=None, help="stop after this many new runs")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--storage", default=None, metavar="URL",
                   help="the table's Optuna study: a journal file or postgresql:// URL shared by workers on "
                        "several machines (default <out-dir>/<table>/study.journal)")
    p.add_argument("--poll", type=float, default=60.0,
                   help="seconds between looks at cells other workers hold (default 60)")
    p.add_argument("--limit-train", type=int, default=None, help="smoke runs only: override the budget's "
                   "training images (needs --results elsewhere, so the real table is never mixed with it)")
    p.add_argument("--epochs", type=int, default=None, help="smoke runs only: override the budget's epochs")
    a = p.parse_args(argv)
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    name, table = a.table, dict(TABLES[a.table])
    if a.limit_train or a.epochs:
        if not a.results:
            p.error("--limit-train/--epochs change the budget: pass --results to a file outside "
                    "benchmarks/results")
        table.update({k: v for k, v in (("limit_train", a.limit_train), ("epochs", a.epochs)) if v})
    results = Path(a.results) if a.results else RESULTS / f"fmnist_{name}.jsonl"
    md = results.with_suffix(".md")
    methods = ([m.strip() for m in a.methods.split(",")] if a.methods
               else table.get("methods") or sorted({r[1] for r in table.get("rows", [])}))
    info = machine()
    new = 0
    if not a.report:
        cs = open_study(name, table, Path(a.out_dir), a.storage)

        def run(m: str, values: dict[str, Any], seed: int) -> str:
            """Run one cell unless recorded: 'done', 'busy' (another worker has it) or 'stop' (--max-runs)."""
            nonlocal new
            if _has(read_results(results), m, values, seed):
                return "done"
            if a.max_runs is not None and new >= a.max_runs:
                return "stop"
            key = "__".join(cell_path(m, values, seed).parts)
            held = cs.claim(key, attrs={"method": m, "values": values, "seed": seed})
            if held is None:
                state = cs.state_of(key)[0]
                if state == "done":  # the study has it but this results file does not: say so, go on
                    print(f"[{name}] {key}: done in the study but not in {results}; not rerun", flush=True)
                    return "done"
                return "busy"
            try:
                if _has(read_results(results), m, values, seed):  # finished while we claimed
                    held.finish(0.0)
                    return "done"
                rec = run_cell(name, table, m, values, seed, Path(a.out_dir), results, info)
            except BaseException:
                held.release("interrupted or failed; retried by the next worker")
                raise
            held.finish(rec.get("best_val_acc") if rec.get("best_val_acc") is not None else 0.0,
                        record={k: rec.get(k) for k in ("best_val_acc", "best_acc", "diverged")})
            new += 1
            write_text_atomic(md, table_md(name, read_results(results), table))
            return "done"

        def one_pass() -> str:
            """Every cell this worker can take now; 'busy' when some are held by other workers."""
            busy = False
            if "rows" in table:
                for row in table["rows"]:
                    if a.methods and row[1] not in methods:
                        continue
                    states = []
                    for values, seed in row_plan(read_results(results), row):
                        states.append(run(row[1], values, seed))
                        if states[-1] == "stop":
                            return "stop"
                    busy |= "busy" in states
                    if "busy" not in states:  # tuning just finished: the selection's seeds
                        for values, seed in row_plan(read_results(results), row):
                            st = run(row[1], values, seed)
                            if st == "stop":
                                return "stop"
                            busy |= st == "busy"
                return "busy" if busy else "done"
            for m in methods:
                grid = grid_for(table, m)
                points = grid_points(grid)
                plan = ([(v, s) for v in points for s in SEEDS] if table.get("study") or not grid
                        else [(v, 0) for v in points])
                states = []
                for values, seed in plan:
                    states.append(run(m, values, seed))
                    if states[-1] == "stop":
                        return "stop"
                busy |= "busy" in states
                if grid and not table.get("study") and "busy" not in states:
                    sel = selected_values(read_results(results), m, grid)
                    if sel is not None:
                        for seed in SEEDS[1:]:
                            st = run(m, sel, seed)
                            if st == "stop":
                                return "stop"
                            busy |= st == "busy"
            return "busy" if busy else "done"

        while one_pass() == "busy":
            print(f"[{name}] waiting for cells other workers hold (study {cs.study.study_name})", flush=True)
            time.sleep(a.poll)
    text = table_md(name, read_results(results), table)
    write_text_atomic(md, text)
    print(text, end="")
    return 0


if __name__ == "__main__":  # one entry per job (benchmarks/__main__.py): the file path only points there
    cmd = " ".join(["python -m benchmarks protocol", *sys.argv[1:]])
    print(f"protocol: error: run `{cmd}` from the checkout root {ROOT}", file=sys.stderr)
    sys.exit(2)
