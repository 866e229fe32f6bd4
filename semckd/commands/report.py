"""``semckd report RUN_DIR... [--out table.md]``: accuracy table over seeds with the paper's ARI."""

from __future__ import annotations

import argparse

from ..defaults import DEFAULT_METHOD


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report", help="markdown table of runs: mean ± std accuracy over seeds, wall time, ARI",
        description="Group runs by (dataset, teacher, student, method) and print mean ± std of the final "
                    "and best test accuracy over seeds, the mean wall time per run and the SemCKD "
                    "paper's Average Relative Improvement (ARI).")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR",
                   help="run folders, or folders containing run folders")
    p.add_argument("--out", metavar="FILE", help="also write the table to this markdown file")
    p.add_argument("--metric", choices=("best", "final"), default="best",
                   help="accuracy used for ARI (default: best, as in the paper)")
    p.add_argument("--ari-ref", default=DEFAULT_METHOD, metavar="METHOD",
                   help="the method ARI measures against the others (default: semckd)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..atomic import write_text_atomic
    from ..report import build_report

    text = build_report(args.runs, metric=args.metric, ari_ref=args.ari_ref)
    print(text, end="")
    if args.out:
        write_text_atomic(args.out, text)
    return 0
