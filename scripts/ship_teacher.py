"""Package a trained teacher run as the demo's checked-in weight file plus its record.

    python3 -m semckd train-teacher --config configs/fashion_mnist/teacher_resnet20.yaml \\
        --epochs 8 --milestones 5 6 7 --seed 0 --out runs/fashion_mnist/teacher_resnet20
    python3 scripts/ship_teacher.py runs/fashion_mnist/teacher_resnet20

Keeps only what a teacher needs (architecture, class/channel counts, dataset, weights, the run's config)
— no optimizer or RNG state — so the file stays small, then re-evaluates it on the test set and writes
``semckd/weights/<name>.json`` with the accuracy, sha256 and the commands above.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

import torch

from semckd.atomic import write_text_atomic
from semckd.checkpoint import atomic_save
from semckd.commands.demo import TEACHER_NAME, WEIGHTS_DIR
from semckd.data.download import file_sha256
from semckd.evaluate import evaluate_checkpoint
from semckd.runfolder import load_checkpoint

ROOT = Path(__file__).resolve().parent.parent

KEEP = ("format", "kind", "model", "num_classes", "in_channels", "dataset", "epoch", "best_acc", "config")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a finished `semckd train-teacher` run folder")
    p.add_argument("--name", default=TEACHER_NAME)
    p.add_argument("--half", action="store_true",
                   help="store floating-point weights as float16 (half the file; they load into float32 "
                        "models unchanged in shape, and the recorded accuracy is the shipped file's)")
    p.add_argument("--command", default="python3 -m semckd train-teacher --config "
                   "configs/fashion_mnist/teacher_resnet20.yaml --epochs 8 --milestones 5 6 7 --seed 0 "
                   "--out runs/fashion_mnist/teacher_resnet20",
                   help="the exact command that trained the run (recorded in the JSON)")
    args = p.parse_args(argv)
    run = Path(args.run_dir)
    ck = load_checkpoint(run / "best.pt")
    slim = {k: ck[k] for k in KEEP if k in ck}
    slim["config"] = dict(slim.get("config") or {}, out="", data_dir="data")  # no local paths
    slim["student"] = {k: (v.detach().half() if args.half and v.is_floating_point() else v.detach()).clone()
                       for k, v in ck["student"].items()}
    WEIGHTS_DIR.mkdir(parents=True, exist_ok=True)
    pt = WEIGHTS_DIR / f"{args.name}.pt"
    atomic_save(slim, pt)
    res = evaluate_checkpoint(str(pt), dataset=ck["dataset"], data_dir=ck["config"].get("data_dir"),
                              device="cpu")
    summary = json.loads((run / "run.json").read_text()) if (run / "run.json").exists() else {}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    record = {
        "model": ck["model"], "dataset": ck["dataset"], "num_classes": ck["num_classes"],
        "in_channels": ck["in_channels"], "epoch": ck["epoch"], "test_acc": round(res["test_acc"], 2),
        "test_top5": round(res.get("test_top5", float("nan")), 2), "test_n": res["test_n"],
        "sha256": file_sha256(pt), "bytes": pt.stat().st_size,
        "weights_dtype": "float16" if args.half else "float32",
        "command": args.command + f" && python3 scripts/ship_teacher.py {args.run_dir} --name {args.name}"
                   + (" --half" if args.half else ""),
        "train_time_s": round(float(summary.get("train_time_s", summary.get("wall_time_s", 0.0))), 1),
        "trained_with": {"torch": torch.__version__, "python": platform.python_version(),
                         "machine": f"{platform.machine()}, {torch.get_num_threads()} CPU threads",
                         "commit": commit},
    }
    write_text_atomic(WEIGHTS_DIR / f"{args.name}.json", json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    if WEIGHTS_DIR.resolve().parent.parent != ROOT:  # never write into another checkout's semckd/weights
        print(f"ship_teacher: error: `import semckd` finds {WEIGHTS_DIR.resolve().parent.parent}, not this "
              f"checkout {ROOT}; set PYTHONPATH={ROOT} (or pip install -e . here)", file=sys.stderr)
        sys.exit(2)
    sys.exit(main())
