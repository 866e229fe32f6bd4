"""``semckd export CHECKPOINT --out DIR``: the distilled student alone, ready to deploy."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export", help="write the student as a state_dict, TorchScript and ONNX (+ model.json)",
        description="Export the student of a training checkpoint (or a run folder's best.pt) without the "
                    "teacher and the method's training-only modules.")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="best.pt / last.pt, or a run folder")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--format", default="state_dict,torchscript,onnx", metavar="LIST",
                   help="comma-separated: state_dict, torchscript, onnx (default: all; onnx is skipped "
                        "when the onnx package is missing)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..export import export_checkpoint

    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    res = export_checkpoint(args.checkpoint, args.out, formats)
    for fmt, path in res.files.items():
        print(f"{fmt:12s} {path}")
    for fmt, why in res.skipped.items():
        print(f"{fmt:12s} skipped: {why}")
    acc = res.info.get("test_acc", res.info.get("best_acc"))
    print(f"arch {res.info['arch']}, {res.info['num_classes']} classes, input "
          f"{res.info['in_channels']}×{res.info['input_size'][0]}×{res.info['input_size'][1]}"
          + (f", accuracy {acc:.2f}" if isinstance(acc, (int, float)) else ""))
    return 0
