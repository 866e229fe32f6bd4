"""The Fashion-MNIST accuracy table: train one teacher, distil it with each method and seed, then report.

    python -m benchmarks accuracy_table                              # the full table (hours on a CPU)
    python -m benchmarks accuracy_table --methods vanilla,kd,semckd --seeds 0 --epochs 1 \\
        --teacher-epochs 1 --limit-train 512 --out-dir runs/fmnist_smoke   # a smoke run (minutes)

Every run goes through the public CLI (``python -m semckd train-teacher / distill / report``) with one
fixed recipe, so the table measures exactly what a user gets. The recipe (all overridable by flags):

* data: Fashion-MNIST (28×28 grey, 10 classes), random crop (pad 2) + flip, the data layer's defaults;
* teacher: ``resnet20`` trained for ``--teacher-epochs`` with the settings below, seed 0, once;
* students: ``resnet8``, one run per (method, seed), ``--epochs`` epochs;
* optimisation (as ``configs/fashion_mnist/``): SGD lr 0.05, momentum 0.9, weight decay 5e-4, batch 64,
  15 epochs, lr ×0.1 after 62.5 %, 75 % and 87.5 % of the epochs (the paper's 150/180/210 of 240);
* methods: each method's defaults, which are the SemCKD paper's settings, except KD, which uses the
  paper's 1·CE + 1·KD (as in ``configs/``) rather than the library's 0.1/0.9 CRD-code default.

Finished runs (a ``run.json`` in their folder) are skipped, so an interrupted table resumes where it
stopped. The last step prints ``semckd report`` (mean ± std over seeds and the paper's ARI) and writes
it to ``OUT_DIR/table.md``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

from semckd.config import scaled_milestones

ROOT = Path(__file__).resolve().parent.parent

# per-method options that differ from the library defaults (same choice as configs/)
METHOD_ARGS: dict[str, list[str]] = {"kd": ["ce_weight=1", "kd_weight=1"]}


def _csv(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def milestones(epochs: int) -> list[str]:
    """The paper's decay points (150/180/210 of 240 epochs) scaled to ``epochs``: 15 → 9, 11, 13."""
    return [str(m) for m in scaled_milestones(epochs)]


def _semckd(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "semckd", *args]


def _run(cmd: list[str], dry_run: bool) -> None:
    print("$ " + shlex.join(cmd[2:] if cmd[:2] == [sys.executable, "-m"] else cmd), flush=True)
    if dry_run:
        return
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    proc = subprocess.run(cmd, env=env)
    if proc.returncode != 0:
        sys.exit(f"accuracy_table: command failed with exit code {proc.returncode}: {shlex.join(cmd)}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default="vanilla,kd,fitnet,at,crd,semckd",
                   help="comma-separated methods (default: vanilla,kd,fitnet,at,crd,semckd)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default: 0,1,2)")
    p.add_argument("--epochs", type=int, default=15, help="student epochs (default: 15)")
    p.add_argument("--teacher-epochs", type=int, default=15, help="teacher epochs (default: 15)")
    p.add_argument("--limit-train", type=int, help="use only the first N training images (smoke runs)")
    p.add_argument("--out-dir", default="runs/fmnist_table", help="folder for all runs and table.md")
    p.add_argument("--teacher", help="reuse this teacher checkpoint instead of training one")
    p.add_argument("--teacher-model", default="resnet20", help="teacher architecture (default: resnet20)")
    p.add_argument("--student", default="resnet8", help="student architecture (default: resnet8)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", default="auto",
                   help="students' precision (default: auto, the library default); bf16-emulated checks "
                        "bf16 numerics on hardware without bf16")
    p.add_argument("--data-dir", default="data",
                   help="dataset folder (Fashion-MNIST falls back to the system copy when absent)")
    p.add_argument("--dry-run", action="store_true", help="print the commands without running them")
    args = p.parse_args(argv)

    methods, seeds = _csv(args.methods), [int(s) for s in _csv(args.seeds)]
    if not methods or not seeds:
        p.error("--methods and --seeds must not be empty")
    out = Path(args.out_dir)
    common = ["--dataset", "fashion_mnist", "--data-dir", args.data_dir, "--batch-size", str(args.batch_size),
              "--lr", str(args.lr), "--momentum", "0.9", "--weight-decay", "5e-4", "--schedule", "multistep",
              "--device", args.device, "--no-tensorboard"]
    if args.limit_train:
        common += ["--limit-train", str(args.limit_train)]

    teacher = args.teacher
    if teacher is None:
        t_dir = out / f"teacher_{args.teacher_model}"
        teacher = str(t_dir / "best.pt")
        if not (t_dir / "run.json").is_file():
            cmd = ["train-teacher", *common, "--model", args.teacher_model,
                   "--epochs", str(args.teacher_epochs), "--milestones", *milestones(args.teacher_epochs),
                   "--seed", "0", "--out", str(t_dir), "--force"]
            _run(_semckd(cmd), args.dry_run)
    elif not Path(teacher).is_file():
        p.error(f"--teacher {teacher} does not exist")

    runs = []
    for method in methods:
        for seed in seeds:
            run_dir = out / f"{args.student}_{method}_s{seed}"
            runs.append(run_dir)
            if (run_dir / "run.json").is_file():
                print(f"# {run_dir} is finished; skipping", flush=True)
                continue
            cmd = ["distill", *common, "--model", args.student, "--teacher", teacher, "--method", method,
                   "--epochs", str(args.epochs), "--milestones", *milestones(args.epochs),
                   "--seed", str(seed), "--out", str(run_dir), "--force", "--amp", args.amp]
            if METHOD_ARGS.get(method):
                cmd += ["--method-args", *METHOD_ARGS[method]]
            _run(_semckd(cmd), args.dry_run)

    _run(_semckd(["report", *map(str, runs), "--out", str(out / "table.md")]), args.dry_run)
    return 0
