"""``semckd plot attention RUN_DIR`` and ``semckd plot curves RUN_DIR... --out curves.png``."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("plot", help="figures: layer attention, training curves (needs matplotlib)",
                              description="Draw figures from run folders (needs matplotlib).")
    sub = p.add_subparsers(dest="what", metavar="FIGURE")
    sub.required = True
    a = sub.add_parser("attention", help="heatmaps of SemCKD's student×teacher layer attention per epoch")
    a.add_argument("run", metavar="RUN_DIR")
    a.add_argument("--out", metavar="FILE", help="output image (default: RUN_DIR/attention.png)")
    a.add_argument("--epoch", type=int, help="only this epoch (default: first, middle and last epochs)")
    a.set_defaults(func=run_attention)
    c = sub.add_parser("curves", help="train loss and test accuracy against epoch for several runs")
    c.add_argument("runs", nargs="+", metavar="RUN_DIR")
    c.add_argument("--out", metavar="FILE", default="curves.png", help="output image (default: curves.png)")
    c.set_defaults(func=run_curves)


def run_attention(args: argparse.Namespace) -> int:
    from ..plot import plot_attention

    print(plot_attention(args.run, args.out, epoch=args.epoch))
    return 0


def run_curves(args: argparse.Namespace) -> int:
    from ..plot import plot_curves

    print(plot_curves(args.runs, args.out))
    return 0
