"""``semckd eval``: test-set accuracy of a saved network, with no training."""

from __future__ import annotations

import argparse
import json


def _run(args: argparse.Namespace) -> int:
    from ..errors import UserError
    from ..evaluate import evaluate_checkpoint

    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    res = evaluate_checkpoint(args.checkpoint, dataset=args.dataset, data_dir=args.data_dir, model=args.model,
                              batch_size=args.batch_size, device=args.device, amp=args.amp)
    if args.json:
        print(json.dumps(res))
    else:
        top5 = f"  top-5 {res['test_top5']:.2f}%" if "test_top5" in res else ""
        print(f"{res['dataset']} test accuracy: top-1 {res['test_acc']:.2f}%{top5}  "
              f"({res['test_n']} images, {res['model']}, {res['checkpoint']})")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..precision import AMP_CHOICES

    p = subparsers.add_parser("eval", help="evaluate a checkpoint on a test set",
                              description="Print top-1 (and top-5) test accuracy of a checkpoint.",
                              epilog="example: semckd eval --checkpoint runs/s/best.pt")
    p.add_argument("--checkpoint", required=True, help="semckd checkpoint or state_dict (.pt)")
    p.add_argument("--dataset", default=None, help="dataset (default: the one the checkpoint was trained on)")
    p.add_argument("--data-dir", default=None, help="dataset folder (default: the training run's)")
    p.add_argument("--model", default=None,
                   help="architecture (zoo name or pkg.module:factory), for checkpoints that do not name it")
    p.add_argument("--batch-size", type=int, default=256, help="test batch size (default: 256)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--amp", default="auto", choices=list(AMP_CHOICES),
                   help="mixed precision (default: auto = what training picks on this hardware: bf16/fp16 "
                        "where native, else float32)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=_run)
