"""``semckd train-teacher``: train a network from scratch (method ``vanilla``) to serve as a teacher."""

from __future__ import annotations

import argparse

from ._common import add_config_arguments, run_training


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train-teacher", help="train a teacher (or baseline student) from scratch",
        description="Train a network with cross-entropy only. Its best.pt is a teacher for `semckd distill`.",
        epilog="example: semckd train-teacher --dataset fashion_mnist --model resnet20 --epochs 15 "
               "--out runs/t")
    add_config_arguments(p, "teacher")
    p.set_defaults(func=lambda a: run_training(a, "teacher"))
