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
                    "Rerunning the same command skips finished cells and resumes interrupted ones.",
        epilog="example: semckd sweep --dataset fashion_mnist --model resnet8 --teacher t.pt --method semckd "
               "--grid beta=25,50,100,200,400 --seeds 0,1,2 --val-split 1000 --epochs 6 --out runs/sweep")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...", required=True,
                   help="a method option and its values (repeatable: the grid is their product); dotted "
                        "keys reach combined methods' options, e.g. semckd.beta=100,400 for semckd+crd")
    p.add_argument("--seeds", type=_seeds, default=[0], metavar="S1,S2,...",
                   help="training seeds of every grid point (default: 0); the validation split stays "
                        "the same for all (--val-seed)")
    add_config_arguments(p, "distill")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import UserError
    from ..sweep import parse_grid, run_sweep

    if getattr(args, "resume", False) or getattr(args, "force", False):
        raise UserError("semckd sweep resumes finished and interrupted cells by itself; drop "
                        "--resume/--force "
                        "(use another --out to start a fresh sweep)")
    if not getattr(args, "out", None):
        raise UserError("semckd sweep needs --out DIR (one run folder per grid point and seed goes under it)")
    grid = parse_grid(args.grid)
    base = config_from_args(args, "distill")
    result = run_sweep(base, grid, args.seeds, args.out)
    print((result.out / "sweep.md").read_text(), end="")
    if result.selected:
        print(f"selected {result.selected['label']} by mean validation accuracy "
              f"({result.selected['val_mean']:.2f}%); table: {result.out / 'sweep.md'}")
    return 0
