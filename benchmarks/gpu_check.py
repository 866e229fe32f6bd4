"""One ready-made check of everything that only a GPU can show, in under 8 minutes.

This repository is developed on CPU-only machines; a GPU is lent rarely and briefly, so the whole GPU
check has to be a single prepared command that cannot waste the loan. It runs, in order:

1. ``cuda-tests``: the test suite's CUDA tests (``pytest -m cuda``; the ``cuda`` marker also skips a
   test where no GPU is visible, see ``tests/conftest.py``);
2. ``bench``: ``python -m benchmarks bench`` on both preset pairs (cifar100, fmnist), every method
   including the paper-faithful ``reference``, at ``auto`` (what training uses by default: bf16/fp16)
   and fp32;
3. ``ddp``: a 2-process NCCL ``torchrun`` distillation (1 epoch on 2048 Fashion-MNIST images, or a
   synthetic set in the same format when the real one is absent), skipped with "needs 2 GPUs" when
   fewer are visible;
4. ``epoch``: ``python -m benchmarks epoch``, whole epochs of data + step, briefly;
5. one summary (status, wall seconds and key figures per step), printed and written to
   ``OUT/summary.json`` and ``OUT/summary.md``.

Every step has its own timeout (and the run an overall budget), so one hung step cannot eat the loan;
a failing step does not stop the later ones; the exit status is 1 if any step failed. Without a CUDA
device it refuses (exit 2) unless ``--dry-run``, which prints the commands and exits 0.

    bash benchmarks/gpu_check.sh                  # on the GPU machine (= python -m benchmarks gpu_check)
    bash benchmarks/gpu_check.sh --dry-run        # anywhere: what it would run

Every command runs from the checkout root with ``python -m``, so it measures this checkout's code.
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import json
import math
import os
import re
import shlex
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TEACHER = ROOT / "semckd" / "weights" / "fashion_mnist_resnet20.pt"  # shipped; the DDP run needs no training
PAIRS = ("cifar100", "fmnist")
METHODS = ("vanilla", "kd", "semckd", "reference")
PRECISIONS = ("auto", "fp32")
# Per-step limits (s). They sum to 450 s, under the 8-minute promise with room for start-up and the summary;
# the expected times on one modern GPU are a fraction of these (tens of seconds each).
TIMEOUTS = {"cuda-tests": 60.0, "bench": 180.0, "ddp": 90.0, "epoch": 120.0}
BUDGET_S = 465.0
NO_CUDA = "gpu_check: no CUDA device visible; run this on a GPU machine (--dry-run prints the commands)"

Figures = dict[str, Any]


@dataclass
class Step:
    """One step: commands run in order (stopping at the first failure) under one timeout.

    ``figures`` reads the step's key numbers from its output folder and log; ``check`` turns figures
    that a zero exit status would hide (e.g. "0 tests passed") into a failure reason.
    """

    name: str
    title: str
    cmds: list[list[str]]
    timeout_s: float
    skip: str | None = None  # reason, when the step cannot run on this machine
    env: dict[str, str] = field(default_factory=dict)
    figures: Callable[[Path, str], Figures] | None = None
    check: Callable[[Figures], str | None] | None = None


@dataclass
class StepResult:
    name: str
    title: str
    status: str  # "ok", "FAILED" or "skipped"
    reason: str = ""
    wall_s: float = 0.0
    figures: Figures = field(default_factory=dict)
    log: str = ""
    commands: list[str] = field(default_factory=list)


@dataclass
class Context:
    """What the plan depends on: where outputs go, which Python, how many GPUs, which data."""

    out: Path
    python: str = sys.executable
    gpus: int = 0
    fmnist_dir: Path | None = None
    fmnist_kind: str = "real"  # or "synthetic"


# ---------------------------------------------------------------------------------------------- data
def _write_idx(path: Path, arr: Any) -> None:
    header = bytes([0, 0, 8, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype("uint8").tobytes())


def write_fake_fmnist(root: Path, n_train: int = 2048, n_test: int = 512, seed: int = 0) -> Path:
    """A learnable stand-in in the Fashion-MNIST IDX layout (class = position of a bright band).

    GPU machines are not guaranteed to have the dataset and cannot download it, yet the DDP run and
    the epoch benchmark only need the format and the sizes to exercise the same code.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        base = np.zeros((n, 28, 28), np.float32)
        for i, y in enumerate(labels):
            base[i, int(y) * 2:int(y) * 2 + 3] = 200
        images = np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8)
        _write_idx(root / f"{split}-images-idx3-ubyte.gz", images)
        _write_idx(root / f"{split}-labels-idx1-ubyte.gz", labels)
    return root


def find_fmnist() -> Path | None:
    """The real Fashion-MNIST folder the library itself would use (``$SEMCKD_DATA_DIR``, ./data, the
    Debian package's copy), or None."""
    from semckd.data.idx import find_idx_dir
    from semckd.errors import UserError

    try:
        return find_idx_dir("fashion_mnist", None)
    except UserError:
        return None


# ------------------------------------------------------------------------------------------ figures
_PYTEST_COUNT = re.compile(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed)")


def pytest_figures(_out: Path, log: str) -> Figures:
    """Counts from pytest's final summary line (``1 passed, 3 deselected in 2.1s``)."""
    counts: dict[str, int] = {}
    for line in reversed(log.splitlines()):
        found = _PYTEST_COUNT.findall(line)
        if found:
            for n, kind in found:
                counts["error" if kind.startswith("error") else kind] = int(n)
            break
    return counts


def pytest_check(f: Figures) -> str | None:
    if not f.get("passed"):
        return "no CUDA test passed" + (f" ({f['skipped']} skipped)" if f.get("skipped") else "")
    return None


def bench_figures(path: Path) -> Figures:
    """ms/step per (pair, precision, method) and SemCKD's speed-up over the fp32 reference, from the
    ``python -m benchmarks bench --json`` file."""
    data = json.loads(path.read_text())
    rows: list[dict[str, Any]] = []
    for r in data["results"]:
        rows.append({"pair": r["pair"], "precision": r["precision"], "default": bool(r.get("is_default")),
                     "method": r["method"], "ms_per_step": r["ms_per_step"],
                     "images_per_s": r.get("images_per_s"),
                     "speedup_vs_reference": r.get("speedup_vs_reference")})
    m = data.get("machine", {})
    return {"device": m.get("gpu") or m.get("device"), "torch": m.get("torch"), "rows": rows}


def bench_check(f: Figures, pairs: Sequence[str] = PAIRS) -> str | None:
    rows = f.get("rows") or []
    missing = [p for p in pairs if not any(r["pair"] == p and r["method"] == "reference" for r in rows)]
    if missing:
        return f"no reference row for {', '.join(missing)}"
    if not any(r["default"] for r in rows):
        return "no row at the default (auto) precision"
    def finite(v: Any) -> bool:
        return isinstance(v, int | float) and math.isfinite(v) and v > 0

    bad = [r for r in rows if not finite(r["ms_per_step"])]
    if bad:
        return f"non-finite ms/step for {bad[0]['pair']} {bad[0]['precision']} {bad[0]['method']}"
    if not any(r["speedup_vs_reference"] for r in rows if r["method"] == "semckd"):
        return "no SemCKD speed-up vs reference"
    return None


def ddp_figures(run_dir: Path, log: str) -> Figures:
    """The DDP run's record (processes, device, precision, time, accuracy, rank divergence)."""
    run = json.loads((run_dir / "run.json").read_text())
    f = {k: run.get(k) for k in ("world_size", "device", "amp", "train_time_s", "final_acc",
                                 "ddp_param_max_abs_diff")}
    nccl = re.search(r"NCCL version ([0-9][0-9.+a-z]*)", log)
    f["nccl_version"] = nccl.group(1) if nccl else None
    return f


def ddp_check(f: Figures) -> str | None:
    if f.get("world_size") != 2:
        return f"run.json world_size {f.get('world_size')}, expected 2"
    if not str(f.get("device", "")).startswith("cuda"):
        return f"trained on {f.get('device')}, not CUDA (so not NCCL)"
    if f.get("ddp_param_max_abs_diff") != 0.0:
        return f"students differ across ranks (max |diff| {f.get('ddp_param_max_abs_diff')})"
    return None


def epoch_figures(path: Path, fmnist_kind: str = "real") -> Figures:
    """Per dataset: baseline and SemCKD-default epoch seconds and the whole-epoch speed-up.

    ``fmnist_kind`` corrects epoch.py's label: it calls any Fashion-MNIST folder "real", and this check
    may have handed it the synthetic stand-in.
    """
    rows = json.loads(path.read_text())
    out: dict[str, Any] = {}
    for r in rows:
        data = fmnist_kind if r["dataset"] == "fashion_mnist" else r.get("data")
        d = out.setdefault(r["dataset"], {"images": r["images"], "data": data})
        d[f"{r['variant']}_s"] = r["epoch_s"]
        d[f"{r['variant']}_images_per_s"] = r["images_per_s"]
        if r["variant"] == "semckd":
            d["precision"] = r["precision"]
            d["speedup_vs_baseline"] = r.get("speedup_vs_baseline")
    return {"datasets": out}


def epoch_check(f: Figures) -> str | None:
    got = f.get("datasets") or {}
    missing = [d for d in ("fashion_mnist", "cifar100") if not (got.get(d) or {}).get("speedup_vs_baseline")]
    return f"no whole-epoch speed-up for {', '.join(missing)}" if missing else None


# --------------------------------------------------------------------------------------------- plan
def plan(ctx: Context) -> list[Step]:
    """The four measuring steps for this machine (the summary is written by :func:`main`)."""
    py, out = ctx.python, ctx.out
    data = str(ctx.fmnist_dir) if ctx.fmnist_dir else str(out / "data" / "fashion_mnist")
    bench_json, epoch_json, ddp_out = out / "bench.json", out / "epoch.json", out / "ddp_run"
    # torch.distributed.run is torchrun's module: the same launcher without relying on PATH.
    torchrun = [py, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    ddp_skip = None if ctx.gpus >= 2 else f"needs 2 GPUs ({ctx.gpus} visible)"
    return [
        Step("cuda-tests", "test suite, CUDA tests (pytest -m cuda)",
             [[py, "-m", "pytest", "-m", "cuda", "-q", "-rs", "-p", "no:cacheprovider", str(ROOT / "tests")]],
             TIMEOUTS["cuda-tests"], figures=pytest_figures, check=pytest_check),
        Step("bench", "benchmarks bench: both pairs, auto + fp32, all methods incl. reference",
             [[py, "-m", "benchmarks", "bench", "--pairs", ",".join(PAIRS), "--methods", ",".join(METHODS),
               "--amp", ",".join(PRECISIONS), "--device", "cuda", "--json", str(bench_json)]],
             TIMEOUTS["bench"], figures=lambda _o, _l: bench_figures(bench_json), check=bench_check),
        Step("ddp", "2-process torchrun distill, backend nccl (semckd picks NCCL for --device cuda)",
             [[*torchrun, "-m", "semckd", "distill", "--dataset", "fashion_mnist", "--data-dir", data,
               "--teacher", str(TEACHER), "--model", "resnet8", "--method", "semckd", "--epochs", "1",
               "--batch-size", "128", "--limit-train", "2048", "--device", "cuda", "--no-tensorboard",
               "--quiet", "--force", "--out", str(ddp_out)]],
             TIMEOUTS["ddp"], skip=ddp_skip, env={"NCCL_DEBUG": "VERSION"},
             figures=lambda _o, log: ddp_figures(ddp_out, log), check=ddp_check),
        Step("epoch", "benchmarks epoch: whole epochs, baseline vs SemCKD default",
             [[py, "-m", "benchmarks", "epoch", "--device", "cuda",
               "--datasets", "fashion_mnist,cifar", "--limit", "12800", "--cifar-limit", "6400",
               "--fmnist-dir", data, "--json", str(epoch_json)]],
             TIMEOUTS["epoch"], figures=lambda _o, _l: epoch_figures(epoch_json, ctx.fmnist_kind),
             check=epoch_check),
    ]


# ---------------------------------------------------------------------------------------------- run
def _secs(x: float) -> str:
    return f"{x:.0f}" if x >= 10 else f"{x:.1f}"


def _kill_group(p: subprocess.Popen) -> None:
    """Stop a command and everything it started (torchrun's workers would otherwise keep the GPUs)."""
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            return
        try:
            p.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_step(step: Step, out: Path, timeout_s: float | None = None) -> StepResult:
    """Run one step's commands with its log in ``OUT/<name>.log``; never raises for a failing step."""
    res = StepResult(step.name, step.title, "ok", commands=[shlex.join(c) for c in step.cmds])
    if step.skip:
        res.status, res.reason = "skipped", step.skip
        return res
    limit = step.timeout_s if timeout_s is None else timeout_s
    log_path = out / f"{step.name}.log"
    res.log = str(log_path)
    env = {**os.environ, **step.env}  # cwd=ROOT + `python -m`: this checkout's semckd and benchmarks
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        for cmd in step.cmds:
            left = limit - (time.perf_counter() - t0)
            if left <= 0:
                res.status, res.reason = "FAILED", f"timed out after {_secs(limit)} s"
                break
            log.write(f"$ {shlex.join(cmd)}\n")
            log.flush()
            try:
                p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env, cwd=ROOT, start_new_session=True)
            except OSError as e:
                res.status, res.reason = "FAILED", f"could not start {cmd[0]}: {e}"
                break
            try:
                rc = p.wait(left)
            except subprocess.TimeoutExpired:
                _kill_group(p)
                res.status, res.reason = "FAILED", f"timed out after {_secs(limit)} s"
                break
            if rc != 0:
                res.status, res.reason = "FAILED", f"exit status {rc}" + (" (no tests selected)" if rc == 5
                                                                          and "pytest" in cmd else "")
                break
    res.wall_s = time.perf_counter() - t0
    text = log_path.read_text(errors="replace")
    if step.figures is not None:
        try:
            res.figures = step.figures(out, text)
        except (OSError, ValueError, KeyError, TypeError) as e:  # a missing/garbled output file
            if res.status == "ok":
                res.status, res.reason = "FAILED", f"could not read its figures: {type(e).__name__}: {e}"
    if res.status == "ok" and step.check is not None:
        problem = step.check(res.figures)
        if problem:
            res.status, res.reason = "FAILED", problem
    return res


def run_steps(steps: Sequence[Step], out: Path, budget_s: float = BUDGET_S,
              say: Callable[[str], None] = print) -> list[StepResult]:
    """All steps in order, each under min(its timeout, what is left of the budget); failures don't stop
    the later steps, and a failed step's log tail is shown at once (the summary comes only at the end)."""
    deadline = time.perf_counter() + budget_s
    results = []
    for i, step in enumerate(steps, 1):
        left = deadline - time.perf_counter()
        say(f"[{i}/{len(steps)}] {step.name}: {step.title}")
        if not step.skip and left < 1:
            r = StepResult(step.name, step.title, "FAILED", commands=[shlex.join(c) for c in step.cmds],
                           reason=f"not run: the {_secs(budget_s)} s budget was spent")
        else:
            r = run_step(step, out, min(step.timeout_s, left))
        results.append(r)
        say(f"    {_status(r)} ({r.wall_s:.1f} s)")
        if r.status == "FAILED" and r.log and Path(r.log).exists():
            tail = Path(r.log).read_text(errors="replace").splitlines()[-15:]
            say("\n".join("    | " + t for t in tail))
    return results


# ------------------------------------------------------------------------------------------ summary
def _status(r: StepResult | dict[str, Any]) -> str:
    d = asdict(r) if isinstance(r, StepResult) else r
    return d["status"] + (f": {d['reason']}" if d.get("reason") else "")


def build_summary(results: Sequence[StepResult], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON summary: one entry per step (status, reason, wall seconds, key figures, commands)."""
    failed = [r.name for r in results if r.status == "FAILED"]
    return {"ok": not failed, "failed": failed, "total_wall_s": sum(r.wall_s for r in results),
            **(extra or {}), "steps": [asdict(r) for r in results]}


def _ms(v: Any) -> str:
    return f"{v:.2f}" if isinstance(v, int | float) else "—"


def _key_lines(step: dict[str, Any]) -> list[str]:
    """Markdown lines of a step's key figures."""
    f, name = step.get("figures") or {}, step["name"]
    if not f:
        return []
    if name == "bench" and f.get("rows"):
        rows = f["rows"]
        out = ["", f"bench on {f.get('device')} (torch {f.get('torch')}), ms/step:", "",
               "| pair | precision | " + " | ".join(METHODS) + " | SemCKD speed-up vs reference |",
               "|---|---|" + "---:|" * (len(METHODS) + 1)]
        for pair, prec in dict.fromkeys((r["pair"], r["precision"]) for r in rows):
            sel = [r for r in rows if r["pair"] == pair and r["precision"] == prec]
            by = {r["method"]: r for r in sel}  # reference: fp32 rows only, the baseline of every speed-up
            sp = (by.get("semckd") or {}).get("speedup_vs_reference")
            label = prec + (" (default)" if any(r["default"] for r in sel) else "")
            out.append(f"| {pair} | {label} | " + " | ".join(_ms((by.get(m) or {}).get("ms_per_step"))
                                                          for m in METHODS)
                       + f" | {f'{sp:.2f}x' if sp else '—'} |")
        return out
    if name == "epoch" and f.get("datasets"):
        out = ["", "| data | images | baseline s | SemCKD s (precision) | whole-epoch speed-up |",
               "|---|---:|---:|---:|---:|"]
        for ds, d in f["datasets"].items():
            sp = d.get("speedup_vs_baseline")
            out.append(f"| {ds} ({d.get('data')}) | {d.get('images')} | {_ms(d.get('baseline_s'))} | "
                       f"{_ms(d.get('semckd_s'))} ({d.get('precision')}) | {f'{sp:.2f}x' if sp else '—'} |")
        return out
    return ["", "  " + ", ".join(f"{k} {f'{v:.4g}' if isinstance(v, float) else v}" for k, v in f.items())]


def summary_markdown(summary: dict[str, Any]) -> str:
    """The human summary: one table row per step, then each step's key figures."""
    lines = ["# GPU check", ""]
    if summary.get("machine"):
        lines += [f"Machine: {summary['machine']}", ""]
    if summary.get("data"):
        lines += [f"Fashion-MNIST: {summary['data']}", ""]
    lines += ["| step | status | wall s |", "|---|---|---:|"]
    lines += [f"| {s['name']} | {_status(s)} | {s['wall_s']:.1f} |" for s in summary["steps"]]
    for s in summary["steps"]:
        key = _key_lines(s)
        if key:
            lines += ["", f"## {s['name']}", *key]
    verdict = "all steps ok" if summary["ok"] else f"FAILED: {', '.join(summary['failed'])}"
    lines += ["", f"Result: {verdict}; {summary['total_wall_s']:.0f} s in all.", ""]
    return "\n".join(lines)


def write_summary(summary: dict[str, Any], out: Path) -> str:
    md = summary_markdown(summary)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.md").write_text(md)
    return md


# --------------------------------------------------------------------------------------------- main
def _visible_gpus() -> tuple[int, str]:
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    names = ", ".join(torch.cuda.get_device_name(i) for i in range(n)) if n else "no CUDA device"
    return n, f"{names}; torch {torch.__version__}, CUDA {torch.version.cuda}"


def main(argv: list[str] | None = None, *, make_plan: Callable[[Context], list[Step]] = plan) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                epilog="Exit status: 0 all ok, 1 a step failed, 2 no CUDA device.")
    p.add_argument("--out", default=None, help="output folder (default: runs/gpu_check/<UTC time>)")
    p.add_argument("--dry-run", action="store_true", help="print the commands it would run and exit 0")
    p.add_argument("--budget", type=float, default=BUDGET_S, help=f"overall seconds (default {BUDGET_S:.0f})")
    # Test-only: plan and run as if N CUDA devices were visible (the real steps still need real GPUs).
    p.add_argument("--pretend-gpus", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    out = Path(args.out or ROOT / "runs" / "gpu_check" / stamp).expanduser().resolve()
    os.chdir(ROOT)  # the library's default data folder (./data) is relative to the checkout
    if args.pretend_gpus is not None:
        gpus, machine = args.pretend_gpus, f"pretend: {args.pretend_gpus} GPU(s)"
    else:
        gpus, machine = _visible_gpus()
    if gpus < 1 and not args.dry_run:
        print(NO_CUDA, file=sys.stderr)
        return 2
    real = find_fmnist()
    ctx = Context(out=out, gpus=gpus, fmnist_dir=real, fmnist_kind="real" if real else "synthetic")
    steps = make_plan(ctx)
    data_note = (f"real, {real}" if real else "synthetic (2048 train / 512 test images in the IDX format) "
                 f"written to {out}/data/fashion_mnist")
    if args.dry_run:
        print(f"gpu_check --dry-run ({machine}); outputs would go to {out}; budget {args.budget:.0f} s")
        print(f"data: Fashion-MNIST {data_note}")
        for i, s in enumerate(steps, 1):
            print(f"[{i}] {s.name} (timeout {s.timeout_s:.0f} s): {s.title}")
            if s.skip:
                print(f"    would be skipped here: {s.skip}")
            for k, v in s.env.items():
                print(f"    env {k}={v}")
            for c in s.cmds:
                print(f"    $ {shlex.join(c)}")
        print(f"[{len(steps) + 1}] summary: {out}/summary.json and {out}/summary.md")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    if real is None:
        write_fake_fmnist(out / "data" / "fashion_mnist")
    print(f"gpu_check: {machine}; outputs in {out}", flush=True)
    results = run_steps(steps, out, args.budget, say=lambda s: print(s, flush=True))
    summary = build_summary(results, {"machine": machine, "data": data_note, "out": str(out)})
    print("\n" + write_summary(summary, out))
    return 0 if summary["ok"] else 1
