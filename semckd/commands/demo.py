"""``semckd demo``: the embedded default — distil the shipped Fashion-MNIST teacher into a small student.

It is the README's first command. In a few CPU minutes it shows the whole library working on real
data: the checked-in ResNet-20 teacher (weights verified against their recorded sha256) is evaluated,
then a ResNet-8 student is trained twice from the same seed on the same images — once alone (the
vanilla reference) and once with SemCKD (1·CE + 1·KD + β·SemCKD, the paper's loss) — and the three
accuracies are printed with the run folders and the learned layer-attention heatmap.

The default budget (6 epochs on the first 3000 of the 60000 training images) keeps the demo to a few
minutes on 2 CPU cores and is a data-poor regime, where a teacher trained on all the data has the most
to give. Its settings are the ones the equal-budget protocol (``python -m benchmarks protocol --table short``)
chose for this budget on a validation split: β=100 (the paper's CIFAR-100 β=400 is far worse here:
58.7% on seed 0, below vanilla), and 1000 training images held out (stratified, ``--val-seed 0``) so
the best epoch is chosen on validation accuracy, never on the test set. Its gain over vanilla holds on
seeds 0, 1 and 2 (BENCHMARKS.md, "The demo").
Longer recipes: ``configs/fashion_mnist/``.

The runs are ordinary ``semckd distill`` runs (same engine, same run-folder layout), so everything the
demo writes can be inspected with ``semckd eval/plot/report/export`` and resumed with ``--resume``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from ..errors import UserError

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
TEACHER_NAME = "fashion_mnist_resnet20"


def shipped_teacher() -> tuple[Path, dict[str, Any]]:
    """The checked-in teacher's weight file and its record (accuracy, sha256, reproducing command)."""
    pt, meta = WEIGHTS_DIR / f"{TEACHER_NAME}.pt", WEIGHTS_DIR / f"{TEACHER_NAME}.json"
    if not pt.is_file() or not meta.is_file():
        raise UserError(f"the shipped teacher {pt} (or its .json) is missing; reinstall semckd or pass "
                        "--teacher CHECKPOINT")
    return pt, json.loads(meta.read_text())


def verify_teacher(path: Path, record: dict[str, Any]) -> None:
    """A corrupted or swapped weight file must not silently produce a wrong demo."""
    from ..data.download import file_sha256  # imported late: the CLI starts without torch

    got = file_sha256(path)
    if got != record.get("sha256"):
        want = str(record.get("sha256"))[:12]
        raise UserError(f"{path} has sha256 {got[:12]}… but its record says {want}…; the file is"
                        " corrupt or was replaced — reinstall semckd (git checkout the file)")


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..precision import AMP_CHOICES

    p = subparsers.add_parser(
        "demo", help="distil the shipped Fashion-MNIST teacher with SemCKD (a few CPU minutes)",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
        epilog="example: semckd demo --epochs 1 --limit-train 5000   (a quicker look)")
    p.add_argument("--data-dir", default=None,
                   help="folder with the Fashion-MNIST IDX files (default: the dataset-fashion-mnist "
                        "package's /usr/share/datasets/fashion-mnist)")
    p.add_argument("--out", default="runs/demo", help="folder for the two runs (default: runs/demo)")
    p.add_argument("--teacher", default=None, help="teacher checkpoint (default: the shipped ResNet-20)")
    p.add_argument("--student", default="resnet8", help="student architecture (default: resnet8)")
    p.add_argument("--epochs", type=int, default=6, help="epochs per student (default: 6)")
    p.add_argument("--limit-train", type=int, default=3000,
                   help="use the first N training images (default: 3000; 0 = all 60000)")
    p.add_argument("--batch-size", type=int, default=64, help="batch size (default: 64, the paper's)")
    p.add_argument("--beta", type=float, default=100.0,
                   help="SemCKD loss weight (default: 100, chosen on validation for this budget by "
                        "`python -m benchmarks protocol`; the paper's CIFAR-100 value is 400)")
    p.add_argument("--val-split", type=int, default=1000,
                   help="training images held out to choose the best epoch (default: 1000; 0 = none, "
                        "then the best epoch is chosen on test accuracy)")
    p.add_argument("--val-seed", type=int, default=0, help="seed of the validation split (default: 0)")
    p.add_argument("--amp", default="auto", choices=list(AMP_CHOICES),
                   help="mixed precision (default: auto = bf16/fp16 where the hardware runs it natively, "
                        "else float32)")
    p.add_argument("--seed", type=int, default=0, help="seed shared by both students (default: 0)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, ... (default: auto)")
    p.add_argument("--force", action="store_true", help="replace the runs a previous demo left in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from ..config import resolve_config, scaled_milestones
    from ..data.idx import find_idx_dir
    from ..engine import train
    from ..evaluate import evaluate_checkpoint

    if args.epochs < 1:
        raise UserError(f"--epochs must be >= 1, got {args.epochs}")
    if args.val_split < 0:
        raise UserError(f"--val-split must be >= 0 (0 = no validation split), got {args.val_split}")
    if args.limit_train < 0:
        raise UserError(f"--limit-train must be >= 0 (0 = all images), got {args.limit_train}")
    data_dir = str(find_idx_dir("fashion_mnist", args.data_dir))  # fails early, with the apt hint

    if args.teacher:
        teacher, record = Path(args.teacher), {}
        if not teacher.is_file():
            raise UserError(f"teacher checkpoint {teacher} does not exist")
    else:
        teacher, record = shipped_teacher()
        verify_teacher(teacher, record)

    out = Path(args.out)
    t0 = time.perf_counter()
    print(f"semckd demo: Fashion-MNIST from {data_dir}; teacher {teacher}", flush=True)
    t_res = evaluate_checkpoint(str(teacher), dataset="fashion_mnist", data_dir=data_dir, device=args.device)
    print(f"teacher {t_res['model']}: {t_res['test_acc']:.2f}% test accuracy"
          + (f" (recorded {record['test_acc']:.2f}%)" if "test_acc" in record else ""), flush=True)

    common = dict(dataset="fashion_mnist", data_dir=data_dir, model=args.student, epochs=args.epochs,
                  batch_size=args.batch_size, lr=0.05, milestones=scaled_milestones(args.epochs),
                  limit_train=args.limit_train or None, seed=args.seed, amp=args.amp, device=args.device,
                  val_split=args.val_split, val_seed=args.val_seed,
                  force=args.force, quiet=args.quiet, tensorboard=False)
    runs = {
        "vanilla": dict(common, method="vanilla", out=str(out / "vanilla")),
        "semckd": dict(common, method="semckd", teacher=str(teacher),
                       method_args={"beta": args.beta}, out=str(out / "semckd")),
    }
    for name in runs:
        if (out / name / "run.json").exists() and not args.force:
            raise UserError(f"{out / name} holds a finished demo run; pass --force to run the demo again "
                            "(its files are replaced) or --out ANOTHER_FOLDER")
    cfgs = {name: resolve_config("distill", flags=flags)[0] for name, flags in runs.items()}  # validate both
    results: dict[str, dict[str, Any]] = {}
    for name, cfg in cfgs.items():
        print(f"\n== {args.student} student, {name}"
              + (" (1·CE + 1·KD + β·SemCKD)" if name == "semckd" else " (cross-entropy only)"), flush=True)
        results[name] = train(cfg)

    picture = None
    try:
        from ..plot import plot_attention

        picture = plot_attention(out / "semckd", out / "semckd" / "attention.png")
    except UserError as e:  # matplotlib missing: the numbers are still the point
        print(f"(no attention heatmap: {e})")

    v, s = results["vanilla"]["best_acc"], results["semckd"]["best_acc"]
    n = args.limit_train or 60000
    chosen = f"best epoch on {args.val_split} validation images" if args.val_split else "best epoch"
    print(f"\nFashion-MNIST test accuracy, {chosen} ({args.epochs} epochs on {n} training images, "
          f"seed {args.seed}, β={args.beta:g}):")
    print(f"  teacher  {t_res['model']:<10} {t_res['test_acc']:6.2f}%")
    print(f"  student  {args.student:<10} {v:6.2f}%   vanilla (no teacher)   {out / 'vanilla'}")
    print(f"  student  {args.student:<10} {s:6.2f}%   SemCKD ({s - v:+.2f})          {out / 'semckd'}")
    if picture is not None:
        print(f"learned layer attention: {picture}")
    print(f"done in {time.perf_counter() - t0:.0f} s. Longer runs: configs/fashion_mnist/*.yaml")
    return 0
