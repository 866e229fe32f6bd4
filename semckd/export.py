"""Export the distilled student alone, for deployment without semckd (or without Python, via ONNX).

From a training checkpoint (``semckd-ckpt-v1``, see docs/ARCHITECTURE.md) this writes:

* ``student.pt``: a plain ``state_dict`` (tensors only), loadable with ``torch.load(weights_only=True)``
  into ``semckd.create_model(arch, num_classes=..., in_channels=...)``;
* ``student.torchscript.pt``: a traced TorchScript module, loadable with ``torch.jit.load`` by a Python
  that has only torch (no semckd);
* ``student.onnx``: opset :data:`ONNX_OPSET`, dynamic batch axis, when the ``onnx`` package (and the
  exporter it needs) is installed, else skipped with a message;
* ``model.json``: architecture, classes, input channels and size, the normalisation to apply
  (``(x/255 − mean) / std`` per channel), accuracy and provenance.

The teacher and the method's training-only modules (projectors, attention MLPs, memory banks) are
dropped: they only shape the student's training. The exception is SimKD, whose deployed network *is*
student backbone → projector → the teacher's classifier; for it the distiller is rebuilt (teacher
checkpoint from the run's config) and its ``deployable_student()`` is exported.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .atomic import atomic_path, write_text_atomic
from .defaults import BASELINE_METHOD
from .errors import UserError
from .runfolder import checkpoint_meta, load_training_checkpoint, read_metrics, strip_wrapper_prefixes

__all__ = ["ALL_FORMATS", "ONNX_OPSET", "ExportResult", "build_deployable", "export_checkpoint",
           "is_composite"]

ALL_FORMATS = ("state_dict", "torchscript", "onnx")
# Pinned rather than left to the exporter's default, so a torch upgrade cannot change what the README and
# model.json promise; ONNX Runtime >= 1.17 runs it (tests/test_export_ort.py checks it against PyTorch).
ONNX_OPSET = 20

def _teacher_from_config(cfg: dict[str, Any], num_classes: int, in_channels: int) -> nn.Module:
    """Rebuild the run's teacher (SimKD needs its classifier) from the checkpoint the config names."""
    from .checkpoint import load_teacher

    path = cfg.get("teacher")
    if not path or not Path(path).is_file():
        raise UserError(f"this SimKD checkpoint's deployable network includes the teacher's classifier, "
                        f"but the teacher checkpoint {path!r} from its config is not found; run export "
                        "from the folder the run was started in, or restore that file")
    teacher, _ = load_teacher(path, arch=cfg.get("teacher_model"), num_classes=num_classes,
                              in_channels=in_channels, dataset=str(cfg.get("dataset", "the dataset")))
    return teacher.eval()


@dataclass
class Deployable:
    """The network to export plus what model.json records about it."""

    module: nn.Module
    arch: str
    num_classes: int
    in_channels: int
    input_size: int
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    config: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    plain: bool = True  # True: the state_dict loads into create_model(arch)


def is_composite(cfg: dict[str, Any]) -> bool:
    """Whether a run's deployable network is more than its student (SimKD: + projector + the teacher's
    classifier); ``cfg`` is the config a checkpoint records. Each method declares it
    (``Distiller.deployable_is_student``), so this reads the method name alone."""
    from .methods.registry import deployable_is_student

    return cfg.get("kind", "distill") != "teacher" and not deployable_is_student(str(cfg.get("method", "")))


def build_deployable(ckpt: dict[str, Any]) -> Deployable:
    """Rebuild the student of a checkpoint (eval mode, CPU) with its trained weights."""
    from .models import create_model

    meta = checkpoint_meta(ckpt)
    arch = str(ckpt["model"])
    cfg = meta.config
    if meta.num_classes is None or meta.in_channels is None:
        raise UserError(f"the checkpoint of {arch!r} does not record its number of classes and input "
                        "channels; export needs a checkpoint written by semckd train-teacher/distill")
    num_classes, in_channels = meta.num_classes, meta.in_channels
    if meta.input_size is None:
        raise UserError(f"the checkpoint of {arch!r} records no input size and its dataset "
                        f"({meta.dataset or 'not recorded'}) is not one semckd knows; export needs the input "
                        "size to trace the network")
    if meta.input_size[0] != meta.input_size[1]:
        raise UserError(f"the checkpoint's input size {list(meta.input_size)} is not square; export traces "
                        "square inputs only")
    input_size = meta.input_size[0]
    mean, std = meta.mean, meta.std
    student = create_model(arch, num_classes=num_classes, in_channels=in_channels)
    try:
        student.load_state_dict(strip_wrapper_prefixes(ckpt["student"]))
    except RuntimeError as e:
        raise UserError(f"the checkpoint's student weights do not fit {arch!r} "
                        f"({str(e).splitlines()[0]}); was it written by another semckd version?") from e
    student.eval()
    dep = Deployable(student, arch, num_classes, in_channels, input_size, mean, std, cfg, list(meta.notes))
    if is_composite(cfg):
        dep.module = _composite_deployable(student, ckpt, cfg, input_size, in_channels, num_classes)
        dep.plain = False
        method = str(cfg["method"])
        dep.arch = f"{method}({arch})"
        dep.notes.append(f"{method}: the network is the student backbone + the method's trained modules "
                         "(SimKD: the projector + the teacher's classifier); student.pt holds that "
                         f"composite's state_dict, which does not load into create_model({arch!r}). Use the "
                         "TorchScript/ONNX files to deploy.")
    return dep


def _composite_deployable(student: nn.Module, ckpt: dict[str, Any], cfg: dict[str, Any], input_size: int,
                          in_channels: int, num_classes: int) -> nn.Module:
    from .methods import BuildContext, build_distiller

    teacher = _teacher_from_config(cfg, num_classes, in_channels)
    example = torch.zeros(2, in_channels, input_size, input_size)
    ctx = BuildContext(example_input=example, batch_size=int(cfg.get("batch_size", 64)),
                       num_classes=num_classes, num_samples=1)
    distiller = build_distiller(str(cfg["method"]), student, teacher, ctx, dict(cfg.get("method_args") or {}))
    distiller.load_extras_state_dict(dict(ckpt.get("extras") or {}))
    module = distiller.deployable_student()
    return module.eval()


@dataclass
class ExportResult:
    """Files written (format → path) and formats skipped (format → why)."""

    out_dir: Path
    files: dict[str, Path] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


def _accuracy(ckpt: dict[str, Any], ckpt_path: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"epoch": ckpt.get("epoch"), "best_acc": ckpt.get("best_acc")}
    rows = read_metrics(ckpt_path.parent)
    epoch = ckpt.get("epoch")
    hit = [r for r in rows if r.get("epoch") == epoch and "test_acc" in r]
    if hit:
        out["test_acc"] = hit[-1]["test_acc"]
    return out


def _export_torchscript(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.* is deprecated in torch ≥ 2.9 but still the
        traced = torch.jit.trace(module, example, check_trace=False)  # only torch-only loadable format
        with atomic_path(path) as tmp:
            torch.jit.save(traced, str(tmp))


def _export_onnx(module: nn.Module, example: torch.Tensor, path: Path) -> str | None:
    """Write ONNX; returns why it was skipped, or None on success."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        return ("the onnx package is not installed (pip install onnx onnxscript, or the checkout's onnx "
                "extra: pip install -e '.[onnx]')")
    errors = []
    for dynamo in (False, True):
        try:
            with warnings.catch_warnings(), atomic_path(path) as tmp:
                warnings.simplefilter("ignore")
                kw: dict[str, Any] = dict(input_names=["images"], output_names=["logits"], dynamo=dynamo,
                                          opset_version=ONNX_OPSET)
                if dynamo:
                    kw["dynamic_shapes"] = ({0: torch.export.Dim("batch")},)
                    kw["external_data"] = False
                else:
                    kw["dynamic_axes"] = {"images": {0: "batch"}, "logits": {0: "batch"}}
                torch.onnx.export(module, (example,), str(tmp), **kw)
            return None
        except Exception as e:  # noqa: BLE001 - exporter failures come in many types
            errors.append(f"{'dynamo' if dynamo else 'torchscript'} exporter: {type(e).__name__}: "
                          f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}")
    return "torch.onnx.export failed (" + "; ".join(errors) + "); pip install onnxscript may help"


def export_checkpoint(checkpoint: str | os.PathLike, out_dir: str | os.PathLike,
                      formats: Sequence[str] = ALL_FORMATS) -> ExportResult:
    """Export the student of ``checkpoint`` into ``out_dir`` in the requested formats (+ model.json)."""
    bad = [f for f in formats if f not in ALL_FORMATS]
    if bad or not formats:
        raise UserError(f"unknown export format {bad[0] if bad else ''!r}; "
                        f"choose from {', '.join(ALL_FORMATS)}")
    ckpt, ckpt_path = load_training_checkpoint(checkpoint)
    dep = build_deployable(ckpt)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    res = ExportResult(out)
    example = torch.zeros(2, dep.in_channels, dep.input_size, dep.input_size)
    if "state_dict" in formats:
        from .checkpoint import atomic_save

        atomic_save({k: v.detach().cpu().clone() for k, v in dep.module.state_dict().items()},
                    out / "student.pt")
        res.files["state_dict"] = out / "student.pt"
    if "torchscript" in formats:
        _export_torchscript(dep.module, example, out / "student.torchscript.pt")
        res.files["torchscript"] = out / "student.torchscript.pt"
    if "onnx" in formats:
        why = _export_onnx(dep.module, example, out / "student.onnx")
        if why is None:
            res.files["onnx"] = out / "student.onnx"
        else:
            res.skipped["onnx"] = why
    cfg = dep.config
    res.info = {
        "format": "semckd-export-v1",
        "arch": dep.arch,
        "loads_into_create_model": dep.plain,
        "num_classes": dep.num_classes,
        "in_channels": dep.in_channels,
        "input_size": [dep.input_size, dep.input_size],
        "input": "float32 NCHW, x = (pixel/255 - mean) / std per channel",
        "mean": list(dep.mean) if dep.mean else None,
        "std": list(dep.std) if dep.std else None,
        "dataset": cfg.get("dataset"),
        "method": BASELINE_METHOD if cfg.get("kind") == "teacher" else cfg.get("method"),
        "teacher": cfg.get("teacher"),
        **_accuracy(ckpt, ckpt_path),
        "source_checkpoint": str(ckpt_path),
        "files": {k: v.name for k, v in res.files.items()},
        **({"onnx_opset": ONNX_OPSET} if "onnx" in res.files else {}),
        "notes": dep.notes,
    }
    write_text_atomic(out / "model.json", json.dumps(res.info, indent=2) + "\n")
    res.files["model.json"] = out / "model.json"
    return res
