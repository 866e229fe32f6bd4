"""``semckd sweep``: one method over a grid of its options and seeds, chosen on a validation split."""

from __future__ import annotations

import argparse

from ._common import add_config_arguments, config_from_args


def _seeds(text: str) -> list[int]:
    from ..errors import UserError

    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds expects comma-separated integers, e.g. 0,1,2; got {text!r}") from None


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "sweep", help="train a method over a grid of option values and seeds; select on validation accuracy",
        description="Train --method at every point of --grid (method options) for each of --seeds, on a "
                    "validation split (--val-split N) held out of the training images. Writes one run "
                    "folder per cell under --out, plus sweep.md (table), sweep.json and sweep.png "
                    "(validation and test accuracy against each value), and names the value with the "
                    "highest mean validation accuracy. Test accuracy is recorded, never used to choose. "
                    "Rerunning the same command skips finished cells and resumes interrupted ones; the same "
                    "command on several machines (--storage shared) shares the cells of one Optuna study.",
        epilog="example: semckd sweep --dataset fashion_mnist --model resnet8 --teacher t.pt --method semckd "
               "--grid beta=25,50,100,200,400 --seeds 0,1,2 --val-split 1000 --epochs 6 --out runs/sweep")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="a method option and its values (repeatable: the grid is their product); dotted "
                        "keys reach combined methods' options, e.g. semckd.beta=100,400 for semckd+crd")
    p.add_argument("--search", choices=["grid", "tpe"], default="grid",
                   help="grid (default): every --grid point; tpe: --trials points sampled from --range "
                        "by Optuna's TPE sampler")
    p.add_argument("--range", action="append", default=[], metavar="KEY=LOW:HIGH[:log]", dest="ranges",
                   help="with --search tpe: an option's interval, e.g. beta=10:1000:log (repeatable)")
    p.add_argument("--trials", type=int, default=None, metavar="N", help="with --search tpe: points to try")
    p.add_argument("--prune", nargs="?", const="halving", choices=["halving", "hyperband"], default=None,
                   help="stop cells whose per-epoch validation accuracy falls behind (successive halving, "
                        "or hyperband); off by default: the full grid")
    p.add_argument("--prune-min-epochs", type=int, default=None, metavar="K",
                   help="epochs every cell trains before it can be pruned (default: epochs/4, at least 1)")
    p.add_argument("--storage", default=None, metavar="URL",
                   help="the Optuna study's storage: a journal file shared by several workers, or "
                        "postgresql://USER:PASSWORD@HOST:PORT/DB (default: DIR/study.journal in --out); "
                        "start the same command on each machine")
    p.add_argument("--study-name", default=None, metavar="NAME",
                   help="the study in --storage (default: sweep); a new name starts a new study")
    p.add_argument("--seeds", type=_seeds, default=[0], metavar="S1,S2,...",
                   help="training seeds of every grid point (default: 0); the validation split stays "
                        "the same for all (--val-seed)")
    add_config_arguments(p, "distill")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import UserError
    from ..sweep import parse_grid, parse_ranges, run_sweep

    if getattr(args, "resume", False) or getattr(args, "force", False):
        raise UserError("semckd sweep resumes finished and interrupted cells by itself; drop "
                        "--resume/--force "
                        "(use another --out to start a fresh sweep)")
    if not getattr(args, "out", None):
        raise UserError("semckd sweep needs --out DIR (one run folder per grid point and seed goes under it)")
    grid = parse_grid(args.grid) if args.grid or args.search == "grid" else None
    ranges = parse_ranges(args.ranges) if args.ranges or args.search == "tpe" else None
    base = config_from_args(args, "distill")
    result = run_sweep(base, grid, args.seeds, args.out, storage=args.storage, study_name=args.study_name,
                       prune=args.prune, prune_min_epochs=args.prune_min_epochs, search=args.search,
                       trials=args.trials, ranges=ranges)
    print((result.out / "sweep.md").read_text(), end="")
    if result.selected:
        print(f"selected {result.selected['label']} by mean validation accuracy "
              f"({result.selected['val_mean']:.2f}%); table: {result.out / 'sweep.md'}")
    return 0
