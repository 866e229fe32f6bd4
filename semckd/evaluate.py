"""``semckd eval``: the accuracy of a saved network on a test set, with no training.

Kept apart from the training loop (:mod:`semckd.engine`, which still provides the per-batch
:func:`~semckd.engine.evaluate` both use): evaluating a file is a reader of the run folder, like report
and export, and it reads checkpoints the same way they do (:mod:`semckd.runfolder`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .errors import UserError

__all__ = ["evaluate_checkpoint"]


def evaluate_checkpoint(path: str, *, dataset: str | None = None, data_dir: str | None = None,
                        model: str | None = None, batch_size: int = 256, device: str = "auto",
                        amp: str = "auto") -> dict[str, Any]:
    """Accuracy of a saved network (semckd checkpoint, or plain state_dict with ``model``) on a test set."""
    from .checkpoint import head_of, load_state_dict_checked, split_checkpoint
    from .data import build_data
    from .engine import _info, evaluate, resolve_device
    from .models import create_model
    from .precision import Precision
    from .runfolder import load_checkpoint

    obj = load_checkpoint(path)
    sd, meta = split_checkpoint(obj, path)
    cfg = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    arch = meta.get("model") if isinstance(meta.get("model"), str) else None
    if model and arch and model.lower() != arch.lower():
        raise UserError(f"checkpoint {path!r} holds a {arch} but --model says {model}; drop --model")
    arch = arch or model
    if not arch:
        raise UserError(f"checkpoint {path!r} does not name its architecture; pass --model NAME")
    dataset = dataset or meta.get("dataset") or cfg.get("dataset")
    if not dataset:
        raise UserError(f"checkpoint {path!r} does not name its dataset; pass --dataset NAME")
    if data_dir is None:  # the training run's folder when it is still there, else the default lookup
        saved = cfg.get("data_dir")
        data_dir = saved if isinstance(saved, str) and Path(saved).expanduser().is_dir() else None
    dev = resolve_device(device)
    _, test_loader, info = build_data(dataset, data_dir, batch_size, device=dev, eval_batch_size=batch_size,
                                      augment=False, limit_train=1)
    ncls, cin = int(_info(info, "num_classes")), int(_info(info, "in_channels"))
    if "num_classes" in meta and int(meta["num_classes"]) != ncls:
        raise UserError(f"checkpoint {path!r} has {int(meta['num_classes'])} classes but {dataset} has "
                        f"{ncls}; evaluate on the dataset it was trained on")
    from .export import build_deployable, is_composite

    if is_composite(cfg) and isinstance(obj, dict) and "student" in obj:
        net = build_deployable(obj).module  # SimKD: backbone + projector + the teacher's classifier
    else:
        net = create_model(arch, num_classes=ncls, in_channels=cin)
        load_state_dict_checked(net, sd, f"checkpoint {path!r}", arch, head_of(net))
    net.to(dev)
    precision = Precision.resolve(amp, False, dev)  # once: the loop and the record use the same
    t0 = time.perf_counter()
    res = evaluate(net, test_loader, dev, amp=precision)
    res.update(amp=precision.amp, model=arch, dataset=dataset, checkpoint=str(path),
               eval_time_s=time.perf_counter() - t0)
    if ncls <= 5:
        res.pop("test_top5")
    return res
