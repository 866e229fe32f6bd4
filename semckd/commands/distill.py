"""``semckd distill``: train a student from a frozen teacher with any registered method (default SemCKD)."""

from __future__ import annotations

import argparse

from ._common import add_config_arguments, run_training


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "distill", help="distil a teacher checkpoint into a student",
        description="Train --model from --teacher with --method (semckd, kd, ..., or a combination a+b).",
        epilog="example: semckd distill --dataset fashion_mnist --teacher runs/t/best.pt --model resnet8 "
               "--method semckd --out runs/s")
    add_config_arguments(p, "distill")
    p.set_defaults(func=lambda a: run_training(a, "distill"))
