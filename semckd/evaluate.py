"""Accuracy of a network on a test set: the per-batch :func:`evaluate` (used by the training loop each
epoch) and ``semckd eval`` (:func:`evaluate_checkpoint`), a reader of the run folder like report and
export that reads checkpoints the same way they do (:mod:`semckd.runfolder`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import distributed as D
from .device import resolve_device
from .errors import UserError
from .precision import Precision, state_writes_guard

__all__ = ["evaluate", "evaluate_checkpoint", "topk_correct"]


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, k: int) -> torch.Tensor:
    """How many rows of ``logits`` have their target among the ``k`` highest scores."""
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    return (top == targets[:, None]).any(dim=1).sum()


@torch.no_grad()
def evaluate(model: nn.Module, loader: Any, device: torch.device, *, amp: str | Precision = "none",
             observer: Any = None, observe_batch: int | None = None,
             env: D.DistEnv | None = None) -> dict[str, float]:
    """Top-1 / top-5 accuracy (%) and mean CE of ``model`` on ``loader``, summed over DDP ranks.

    ``observer`` (a distiller with ``observe``) sees every test batch — only full batches of
    ``observe_batch`` when its modules are tied to one batch size.
    """
    env = env or D.DistEnv()
    was = model.training
    model.eval()
    dt = torch.float32 if device.type == "mps" else torch.float64
    sums = torch.zeros(4, dtype=dt, device=device)  # loss, top1, top5, n
    amp = Precision.resolve(amp, False, device)  # a run passes its own, already resolved
    try:
        for batch in loader:
            images, targets = batch[0], batch[1]
            with amp.autocast(device):
                logits = model(images)
            sums[0] += F.cross_entropy(logits.float(), targets, reduction="sum").to(dt)
            sums[1] += (logits.argmax(1) == targets).sum().to(dt)
            sums[2] += topk_correct(logits, targets, 5).to(dt)
            sums[3] += targets.numel()
            if observer is not None and (observe_batch is None or images.shape[0] == observe_batch):
                with amp.autocast(device), state_writes_guard():
                    observer.observe(images, targets)
    finally:
        model.train(was)
    D.all_reduce_sum(sums, env)
    loss, c1, c5, n = (float(x) for x in sums.tolist())
    if n == 0:
        raise UserError("the test set is empty; check --dataset / --data-dir")
    return {"test_loss": loss / n, "test_acc": 100.0 * c1 / n, "test_top5": 100.0 * c5 / n, "test_n": int(n)}


def evaluate_checkpoint(path: str, *, dataset: str | None = None, data_dir: str | None = None,
                        model: str | None = None, batch_size: int = 256, device: str = "auto",
                        amp: str = "auto") -> dict[str, Any]:
    """Accuracy of a saved network (semckd checkpoint, or plain state_dict with ``model``) on a test set."""
    from .checkpoint import head_of, load_state_dict_checked, split_checkpoint
    from .data import build_splits
    from .models import create_model
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
    saved_dataset = meta.get("dataset") or cfg.get("dataset")
    dataset = dataset or saved_dataset
    # the run's data options (hf columns, csv files) find its data again; another --dataset drops them
    opts = {k: cfg.get(k) for k in ("image_column", "label_column", "train_csv", "test_csv")
            if dataset == saved_dataset and isinstance(cfg.get(k), str)}
    if not dataset:
        raise UserError(f"checkpoint {path!r} does not name its dataset; pass --dataset NAME")
    if data_dir is None:  # the training run's folder when it is still there, else the default lookup
        saved = cfg.get("data_dir")
        data_dir = saved if isinstance(saved, str) and Path(saved).expanduser().is_dir() else None
    dev = resolve_device(device)
    splits = build_splits(dataset, data_dir, batch_size, device=dev, eval_batch_size=batch_size,
                          augment=False, limit_train=1, **opts)
    test_loader, info = splits.test, splits.info
    ncls, cin = int(info["num_classes"]), int(info["in_channels"])
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
