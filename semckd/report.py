"""Summarise finished runs as a markdown table: mean ± std over seeds and the paper's ARI.

Runs are grouped by (dataset, teacher, student, method with its non-default options) and only when
every other setting that changes the result (epochs, data size, lr, teacher file...; see
``_NOT_SETTING`` for what does not) agrees too, so a row's runs differ by seed alone; a row of another
setting names what differs (``semckd {epochs=3}``). Each group shows how many seeds it has, the
mean ± sample standard deviation (n−1) of the final and the best test accuracy, and the mean wall
time of one run.

**ARI** (Average Relative Improvement) is the SemCKD paper's measure of how much further SemCKD goes
beyond a compared method, relative to what that method itself gained over the plain student::

    ARI(X) = 1/M · Σ_i (Acc_i[SemCKD] − Acc_i[X]) / (Acc_i[X] − Acc_i[vanilla student]) · 100 %

over the M teacher/student combinations i (Chen et al., AAAI 2021, Sec. "Experiments"; the authors'
README: "the extent to which SemCKD further improves on the basis of existing approaches compared to
improvements made by these approaches upon the baseline student model"). A large ARI means method X
gained little over the student while SemCKD gained much more. Each row of the table shows the per-pair
term (M = 1) for its method X, and a second table averages it over all pairs. The reference method
(``semckd`` by default, ``--ari-ref`` changes it) is computed from the mean over seeds of the best
test accuracy (``--metric final`` uses the last epoch's instead).

A run folder is read through :mod:`semckd.runfolder`'s typed records (the schema the engine writes):
``run.json`` (:class:`~semckd.runfolder.RunSummary`) when present, else ``config.yaml`` +
``metrics.jsonl`` (:class:`~semckd.runfolder.EpochRecord`), so interrupted runs still report.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .defaults import BASELINE_METHOD, DEFAULT_METHOD, REPORT_FIRST
from .diagnostics import attention_pinned
from .errors import UserError
from .runfolder import (
    METRICS,
    SUMMARY,
    RunSummary,
    _num,
    read_config,
    read_epochs,
    read_summary,
)

__all__ = ["Group", "RunInfo", "ari_table", "build_report", "find_runs", "group_runs", "load_run",
           "method_label", "relative_improvement"]

NONE = "—"
_METHOD_ORDER = {m: i for i, m in enumerate(REPORT_FIRST)}


# ---------------------------------------------------------------------- reading one run


@dataclass
class RunInfo:
    """What the report needs from one run folder."""

    path: Path
    name: str
    dataset: str
    teacher: str  # teacher architecture (or checkpoint stem); "—" when the run had no teacher
    student: str
    method: str
    seed: int | None
    final_acc: float | None
    best_acc: float | None
    wall_time_s: float | None
    epochs: int
    kind: str = "distill"
    best_val_acc: float | None = None  # validation accuracy of the selected epoch (runs with --val-split)
    # every other setting that changes what is trained (epochs, data size, lr, teacher file...): runs are
    # seeds of one experiment only when these agree too
    setting: tuple[tuple[str, str], ...] = ()
    notes: tuple[str, ...] = ()  # e.g. the last epoch's learned attention pinned at a corner


def _teacher_name(value: Any, run_dir: Path) -> str:
    """A readable teacher label: a model name stays; a checkpoint path becomes its architecture when
    the teacher's own run folder says so (run.json / config.yaml beside it), else the file's stem."""
    if value in (None, "", "none", "None"):
        return NONE
    s = str(value)
    if "/" not in s and "\\" not in s and not s.endswith((".pt", ".pth")):
        return s
    p = Path(s)
    if not p.is_absolute() and not p.exists():
        p = run_dir / p
    folder = p.parent if p.suffix else p
    if folder.is_dir():
        summary = read_summary(folder)
        for model in (summary.model if summary else None, read_config(folder).get("model")):
            if isinstance(model, str):
                return model
    if p.suffix and p.stem in ("best", "last", "ckpt", "checkpoint", "model"):
        return p.parent.name or p.stem  # runs/t_resnet32x4/best.pt → the run's name says more
    return p.stem if p.suffix else p.name


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def method_label(method: str, method_args: Any) -> str:
    """``method`` plus the options that differ from its defaults, e.g. ``semckd [mode=batch_free]``.

    Runs of one method with different settings must not be averaged together; options equal to the
    defaults (a recipe that spells out ``beta: 400``) do not change the label.
    """
    if not isinstance(method_args, dict) or not method_args:
        return method
    try:
        from .methods import method_options
    except Exception:  # noqa: BLE001 - without the method registry, fall back to listing every option
        method_options = None  # type: ignore[assignment]
    parts = [p.strip() for p in method.split("+") if p.strip()]
    diffs = []
    for part in parts:
        sub = method_args.get(part, {}) if len(parts) > 1 else method_args
        if not isinstance(sub, dict):
            continue
        try:
            defaults = method_options(part) if method_options is not None else {}
        except ValueError:
            defaults = {}
        prefix = f"{part}." if len(parts) > 1 else ""
        diffs += [f"{prefix}{k}={v}" for k, v in sorted(sub.items())
                  if not (k in defaults and _same(defaults[k], v))]
    return f"{method} [{', '.join(diffs)}]" if diffs else method


def load_run(run_dir: str | os.PathLike) -> RunInfo:
    """Collect a run's identity and results from ``run.json``, ``config.yaml`` and ``metrics.jsonl``."""
    d = Path(run_dir)
    if not d.is_dir():
        raise UserError(f"run folder {d} does not exist; pass a folder made by semckd train-teacher/distill")
    has_summary = (d / SUMMARY).is_file()
    summary = read_summary(d) or RunSummary()
    cfg = read_config(d)
    records = read_epochs(d)
    if not (has_summary or cfg or records):
        raise UserError(f"{d} has no run.json, config.yaml or metrics.jsonl; is it a semckd run folder?")

    def pick(key: str) -> Any:
        """The run's own summary first (what it finished as), then its resolved config."""
        v = getattr(summary, key, None)
        return v if v is not None else cfg.get(key)

    kind = str(pick("kind") or "distill")
    method = summary.method or (BASELINE_METHOD if kind == "teacher" else cfg.get("method")) or "?"
    student = pick("model") or "?"
    teacher_raw = pick("teacher_model")
    if teacher_raw is None and str(method) != BASELINE_METHOD:  # vanilla ignores any teacher in its config
        teacher_raw = pick("teacher")
    dataset = pick("dataset") or "?"
    seed = pick("seed")

    final = _num(summary.final_acc)
    best = _num(summary.best_acc)
    best_val = _num(summary.best_val_acc)
    wall = _num(summary.train_time_s)
    epochs = len(records)
    if records:
        accs = [a for a in (r.test_acc for r in records) if a is not None]
        if final is None and accs:
            final = accs[-1]
        if best is None:
            bests = [b for b in (r.best_acc for r in records) if b is not None]
            best = bests[-1] if bests else (max(accs) if accs else None)
        if best_val is None:
            vals = [v for v in (r.best_val_acc for r in records) if v is not None]
            best_val = vals[-1] if vals else None
        if wall is None:
            times = [t for t in (r.epoch_time_s for r in records) if t is not None]
            wall = sum(times) if times else None
    margs = cfg.get("method_args")
    label = method_label(str(method), margs) if str(method) != BASELINE_METHOD else BASELINE_METHOD
    setting = tuple(sorted((k, json.dumps(v, sort_keys=True, default=str)) for k, v in cfg.items()
                           if k not in _NOT_SETTING)) if cfg else ()
    pinned = attention_pinned(records[-1].extras) if records else None
    notes = tuple(summary.notes or ()) or ((pinned,) if pinned else ())
    return RunInfo(path=d, name=d.name, dataset=str(dataset), teacher=_teacher_name(teacher_raw, d),
                   student=str(student), method=label,
                   seed=int(seed) if _num(seed) is not None else None,  # type: ignore[arg-type]
                   final_acc=final, best_acc=best, wall_time_s=wall, epochs=epochs, kind=kind,
                   best_val_acc=best_val, setting=setting, notes=notes)


def _is_run(d: Path) -> bool:
    return any((d / f).is_file() for f in (SUMMARY, METRICS))


def find_runs(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Run folders named directly, or found anywhere below a folder that is not itself a run."""
    out: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise UserError(f"{p} does not exist; pass run folders (or a folder that contains them)")
        if not p.is_dir():
            raise UserError(f"{p} is a file; pass the run folder that contains it")
        if _is_run(p):
            out.append(p)
            continue
        found = sorted({m.parent for pat in (SUMMARY, METRICS) for m in p.rglob(pat)})
        if not found:
            raise UserError(f"no runs under {p}: expected folders with run.json or metrics.jsonl")
        out.extend(found)
    seen: set[Path] = set()
    return [p for p in out if not (p.resolve() in seen or seen.add(p.resolve()))]


# ---------------------------------------------------------------------- grouping
def _mean_std(xs: Sequence[float]) -> tuple[float | None, float | None]:
    if not xs:
        return None, None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


@dataclass
class Group:
    """All seeds of one (dataset, teacher, student, method) setting."""

    dataset: str
    teacher: str
    student: str
    method: str
    runs: list[RunInfo] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, str, str, str]:
        return self.dataset, self.teacher, self.student, self.method

    def _vals(self, attr: str) -> list[float]:
        return [v for v in (getattr(r, attr) for r in self.runs) if v is not None]

    @property
    def n(self) -> int:
        return len(self.runs)

    def final(self) -> tuple[float | None, float | None]:
        return _mean_std(self._vals("final_acc"))

    def best(self) -> tuple[float | None, float | None]:
        return _mean_std(self._vals("best_acc"))

    def val(self) -> tuple[float | None, float | None]:
        return _mean_std(self._vals("best_val_acc"))

    def wall(self) -> float | None:
        return _mean_std(self._vals("wall_time_s"))[0]

    def acc(self, metric: str) -> float | None:
        return (self.best() if metric == "best" else self.final())[0]


def group_runs(runs: Iterable[RunInfo]) -> list[Group]:
    """Group runs that differ by seed alone; order: dataset, student, vanilla first, then by teacher.

    Runs that share dataset, teacher, student and method but differ in another setting (epochs,
    ``limit_train``, lr, the teacher file...) or repeat a seed are separate rows; their method label
    names what differs, e.g. ``semckd {epochs=3}``.
    """
    buckets: dict[tuple[Any, ...], list[RunInfo]] = {}
    for r in runs:
        buckets.setdefault((r.dataset, r.teacher, r.student, r.method, r.setting), []).append(r)
    split: list[tuple[tuple[Any, ...], list[RunInfo]]] = []
    for key, rs in buckets.items():  # a repeated seed is a repeat, not another seed: its own row
        copies: list[list[RunInfo]] = []
        for r in rs:
            row = next((c for c in copies if r.seed is None or all(x.seed != r.seed for x in c)), None)
            if row is None:
                copies.append(row := [])
            row.append(r)
        split += [(key, c) for c in copies]
    by_label: dict[tuple[str, str, str, str], list[tuple[tuple[Any, ...], list[RunInfo]]]] = {}
    for key, rs in split:
        by_label.setdefault(key[:4], []).append((key, rs))
    groups: list[Group] = []
    for label, members in by_label.items():
        ref = dict(max(members, key=lambda m: len(m[1]))[0][4])  # the most-run setting keeps the plain label
        seen: dict[str, int] = {}
        for key, rs in members:
            mine = dict(key[4])
            shown = [f"{k}={json.loads(mine[k]) if k in mine else None}"
                     for k in sorted(set(mine) | set(ref)) if mine.get(k) != ref.get(k)]
            tag = ", ".join(shown)
            seen[tag] = seen.get(tag, 0) + 1
            if seen[tag] > 1:
                tag = ", ".join([*shown, f"repeat {seen[tag]}"])
            g = Group(label[0], label[1], label[2], f"{label[3]} {{{tag}}}" if tag else label[3])
            g.runs.extend(rs)
            groups.append(g)
    return sorted(groups, key=lambda g: (g.dataset, g.student, g.teacher != NONE, g.teacher,
                                         _METHOD_ORDER.get(g.method, 2), g.method))


# config keys that do not change what a run computes (where it runs, how it logs) or that are the seed
_NOT_SETTING = frozenset({
    "seed", "out", "resume", "force", "quiet", "tensorboard", "device", "workers", "log_every", "save_every",
    "download", "data_dir", "compile", "kind", "deterministic", "channels_last", "eval_batch_size",
    "method", "method_args", "model", "dataset", "teacher_model",
})


def relative_improvement(ref_acc: float, method_acc: float, vanilla_acc: float) -> float | None:
    """One pair's ARI term in %: (ref − X) / (X − vanilla) · 100; None when X equals vanilla."""
    denom = method_acc - vanilla_acc
    if denom == 0:
        return None
    return (ref_acc - method_acc) / denom * 100.0


def _vanilla_for(groups: Sequence[Group], g: Group) -> Group | None:
    """The plain student of ``g``: same dataset and student, trained without a teacher (the teacher
    column does not matter for vanilla; a matching one is preferred when the config recorded it)."""
    cands = [h for h in groups
             if h.method == BASELINE_METHOD and h.dataset == g.dataset and h.student == g.student]
    same = [h for h in cands if h.teacher == g.teacher]
    return (same or cands or [None])[0]


def _row_ri(groups: Sequence[Group], g: Group, ref: str, metric: str) -> float | None:
    if g.method in (ref, BASELINE_METHOD):
        return None
    ref_g = next((h for h in groups if h.key == (g.dataset, g.teacher, g.student, ref)), None)
    van = _vanilla_for(groups, g)
    if ref_g is None or van is None:
        return None
    a_ref, a_x, a_v = ref_g.acc(metric), g.acc(metric), van.acc(metric)
    if a_ref is None or a_x is None or a_v is None:
        return None
    return relative_improvement(a_ref, a_x, a_v)


def ari_table(groups: Sequence[Group], ref: str = DEFAULT_METHOD,
              metric: str = "best") -> dict[str, tuple[float, int]]:
    """``{method: (ARI %, number of pairs M)}`` for every method with at least one complete pair."""
    per: dict[str, list[float]] = {}
    for g in groups:
        ri = _row_ri(groups, g, ref, metric)
        if ri is not None:
            per.setdefault(g.method, []).append(ri)
    return {m: (statistics.fmean(v), len(v)) for m, v in sorted(per.items())}


# ---------------------------------------------------------------------- formatting
def _fmt_acc(ms: tuple[float | None, float | None], n: int) -> str:
    m, s = ms
    if m is None:
        return NONE
    return f"{m:.2f}" if n < 2 or s is None else f"{m:.2f} ± {s:.2f}"


def _fmt_time(t: float | None) -> str:
    if t is None:
        return NONE
    if t < 120:
        return f"{t:.1f} s"
    if t < 7200:
        return f"{t / 60:.1f} min"
    return f"{t / 3600:.2f} h"


def build_report(run_dirs: Iterable[str | os.PathLike], metric: str = "best",
                 ari_ref: str = DEFAULT_METHOD) -> str:
    """The markdown report for the given run folders (or folders containing runs)."""
    if metric not in ("best", "final"):
        raise UserError(f"--metric must be 'best' or 'final', got {metric!r}")
    runs = [load_run(p) for p in find_runs(run_dirs)]
    groups = group_runs(runs)
    ri_head = f"ARI vs {ari_ref} (%)"
    has_val = any(r.best_val_acc is not None for r in runs)
    val_head, val_rule = (" best val acc |", "---:|") if has_val else ("", "")
    lines = [f"| dataset | teacher | student | method | seeds | final acc |{val_head} best acc | "
             f"wall time / run | {ri_head} |",
             f"|---|---|---|---|---:|---:|{val_rule}---:|---:|---:|"]
    for g in groups:
        ri = _row_ri(groups, g, ari_ref, metric)
        val_cell = f" {_fmt_acc(g.val(), g.n)} |" if has_val else ""
        lines.append(f"| {g.dataset} | {g.teacher} | {g.student} | {g.method} | {g.n} | "
                     f"{_fmt_acc(g.final(), g.n)} |{val_cell} {_fmt_acc(g.best(), g.n)} | "
                     f"{_fmt_time(g.wall())} | "
                     f"{NONE if ri is None else f'{ri:.1f}'} |")
    if has_val:
        lines += ["", "Runs with a validation split: \"best val acc\" is the validation accuracy of the "
                  "epoch "
                  "chosen on it, and \"best acc\" the test accuracy of that same epoch (recorded, never used "
                  "to choose)."]
    lines += ["", f"Accuracies: mean ± sample std over seeds. ARI column: the pair's term "
              f"({ari_ref} − method) / (method − vanilla) · 100 on the mean {metric} accuracy "
              f"(Chen et al., AAAI 2021); {NONE} where the pair lacks a {ari_ref} or a vanilla row."]
    ari = ari_table(groups, ari_ref, metric)
    if ari:
        lines += ["", f"| method | ARI vs {ari_ref} (%) | pairs |", "|---|---:|---:|"]
        lines += [f"| {m} | {v:.1f} | {k} |" for m, (v, k) in ari.items()]
    noted = [r for r in runs if r.notes]
    if noted:
        lines += ["", "Notes:"] + [f"- {r.path}: {n}" for r in noted for n in r.notes]
    return "\n".join(lines) + "\n"
