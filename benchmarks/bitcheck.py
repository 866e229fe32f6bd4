"""Do two commits train bit for bit the same? The check a restructuring must pass ("behaviour unchanged").

    python -m benchmarks bitcheck --base 2482bb4              # that commit vs the working tree
    python -m benchmarks bitcheck --base 2482bb4 --head main  # two commits

Each side (``git archive`` of the commit, or this checkout for the working tree) runs, single-threaded and
with its own ``semckd`` on the import path: ``semckd demo``; a 3-epoch SemCKD distill (ResNet-20 →
ResNet-8, 1000 images, 200 for validation) in fp32 and in bf16; and the fp32 distill killed with SIGKILL
after its first epoch, then resumed with ``--resume``. A run's digest is the sha256 of every tensor of
``student`` and ``extras`` in last.pt and best.pt (read with ``weights_only=True``) and of metrics.jsonl
without its timing fields. The check passes when every digest of the two sides is equal and the
killed-and-resumed run equals the uninterrupted fp32 run. Exit 0 when it passes, 1 when not.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TIMING = frozenset({"images_per_s", "epoch_time_s", "train_time_s"})  # wall clock: never bit-identical
RUNS = ("demo/vanilla", "demo/semckd", "fp32", "bf16", "killed")


def _tensors(obj: Any, prefix: str = ""):
    import torch

    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k in sorted(obj, key=str):
            yield from _tensors(obj[k], f"{prefix}/{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{prefix}/{i}")


def digest(run: Path) -> dict[str, str]:
    """sha256 (16 hex digits) of the weights in last.pt and best.pt and of the metrics minus timings."""
    import torch

    out: dict[str, str] = {}
    for ck in ("last.pt", "best.pt"):
        if not (run / ck).is_file():
            out.update({f"{ck}:{key}": "missing" for key in ("student", "extras")})
            continue
        state = torch.load(run / ck, weights_only=True, map_location="cpu")
        for key in ("student", "extras"):
            h = hashlib.sha256()
            for name, t in _tensors(state.get(key) or {}):
                h.update(name.encode())
                h.update(str(t.dtype).encode())
                h.update(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
            out[f"{ck}:{key}"] = h.hexdigest()[:16]
    metrics = run / "metrics.jsonl"
    # strict, unlike runfolder.read_jsonl (which skips a line a kill tore): a torn line is a difference
    rows = [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (metrics.read_text().splitlines() if metrics.is_file() else []) if line.strip()]
    out["metrics"] = hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()[:16]
    out["epochs"] = str(len(rows))
    return out


def compare(base: dict[str, dict[str, str]], head: dict[str, dict[str, str]]) -> list[str]:
    """The differences that fail the check, one line each (empty: the check passes)."""
    bad = [f"{run}: {k} {base[run].get(k)} -> {head.get(run, {}).get(k)}"
           for run in base for k in base[run] if head.get(run, {}).get(k) != base[run][k]]
    bad += [f"{run}: only in head" for run in head if run not in base]
    for side, d in (("base", base), ("head", head)):
        if "killed" in d and "fp32" in d and d["killed"] != d["fp32"]:
            bad.append(f"{side}: killed and resumed differs from the uninterrupted fp32 run")
        bad += [f"{side}: {run}: {k} missing" for run in d for k, v in d[run].items() if v == "missing"]
    return bad


def _tree(rev: str | None, where: Path) -> Path:
    """The source tree of ``rev`` (None: this checkout as it is on disk)."""
    if rev is None:
        return ROOT
    archive = subprocess.run(["git", "archive", rev], cwd=ROOT, capture_output=True, check=False)
    if archive.returncode:
        raise ValueError(f"git archive {rev}: {archive.stderr.decode().strip()}; give a commit of this "
                         "repository")
    where.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(where)], input=archive.stdout, check=True)
    return where


def run_side(tree: Path, out: Path, epochs: int = 3,
             log: Callable[[str], None] = print) -> dict[str, dict[str, str]]:
    """Train the check's runs with the ``semckd`` of ``tree`` into ``out``; their digests."""
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    teacher = tree / "semckd" / "weights" / "fashion_mnist_resnet20.pt"
    distill = [sys.executable, "-m", "semckd", "distill", "--dataset", "fashion_mnist", "--model", "resnet8",
               "--teacher", str(teacher), "--method", "semckd", "--epochs", str(epochs), "--limit-train",
               "1000", "--val-split", "200", "--seed", "0", "--quiet"]
    jobs = {"demo": [sys.executable, "-m", "semckd", "demo", "--out", str(out / "demo"), "--quiet"],
            "fp32": [*distill, "--amp", "none", "--out", str(out / "fp32")],
            "bf16": [*distill, "--amp", "bf16", "--out", str(out / "bf16")]}
    out.mkdir(parents=True, exist_ok=True)
    for name, cmd in jobs.items():
        log(f"[{tree}] {name}")
        subprocess.run(cmd, env=env, cwd=out, check=True, stdout=subprocess.DEVNULL)
    killed = [*distill, "--amp", "none", "--out", str(out / "killed")]
    log(f"[{tree}] killed after epoch 1, then --resume")
    p = subprocess.Popen(killed, env=env, cwd=out, stdout=subprocess.DEVNULL)
    metrics = out / "killed" / "metrics.jsonl"
    while p.poll() is None and not (metrics.is_file() and metrics.read_text().count("\n") >= 1):
        time.sleep(0.1)
    if p.poll() is not None:
        raise RuntimeError("the run to kill ended before its first epoch was logged")
    p.send_signal(signal.SIGKILL)
    p.wait()
    subprocess.run([*killed, "--resume"], env=env, cwd=out, check=True, stdout=subprocess.DEVNULL)
    return {run: digest(out / run) for run in RUNS}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", required=True, help="the commit before the change (e.g. 2482bb4)")
    p.add_argument("--head", default=None, help="the commit after it (default: this checkout as it is)")
    p.add_argument("--out", default=str(ROOT / "runs" / "bitcheck"), help="run folders and trees")
    a = p.parse_args(argv)
    out = Path(a.out)
    for name in ("base", "head", "base-src", "head-src"):  # never train over an earlier check's runs, nor
        if (out / name).exists():                           # with a source tree of another commit
            raise ValueError(f"{out / name} exists (an earlier check); remove it or pass another --out")
    sides = {}
    for side, rev in (("base", a.base), ("head", a.head)):
        tree = _tree(rev, out / f"{side}-src")
        sides[side] = run_side(tree, out / side)
    for run in RUNS:
        print(f"{run:<14} base {json.dumps(sides['base'][run], sort_keys=True)}")
        print(f"{'':<14} head {json.dumps(sides['head'][run], sort_keys=True)}")
    bad = compare(sides["base"], sides["head"])
    head = a.head or "the working tree"
    print("\n".join(bad) if bad else f"bit-identical: {a.base} and {head} (weights and metrics of every run; "
          "killed+resumed equals uninterrupted)")
    return 1 if bad else 0
