"""Whole training epochs, data + step: the conventional setup against this library's defaults.

*baseline*: a DataLoader with per-image PIL augmentation (random crop with padding + flip + normalise,
what the KD code bases do with torchvision) feeding the paper-faithful SemCKD step (per-pair Python
loops, float32: :class:`benchmarks.reference.ReferenceSemCKD`).
*semckd*: the on-device batched augmentation (:class:`semckd.data.DeviceLoader`) feeding the SemCKD step
with what a user gets by default (``amp="auto"``: bf16/fp16 autocast where the hardware runs it
natively, float32 elsewhere).

Both train the same student/teacher pair from the same weights (1·CE + 1·KD + 400·SemCKD, SGD momentum
0.9, wd 5e-4), batch 64, over the same uint8 images, one full pass each; the time is the wall time of
the pass including every batch's loading, augmentation, transfer and step. The networks are untrained
(the teacher gets real BatchNorm statistics from a few batches), and with them the paper's lr 0.05
makes the β=400 loss diverge within ten steps on random CIFAR-format data — in the per-pair baseline
as in ours — so ``--lr`` defaults to 0.01; the learning rate changes no arithmetic, only the values.
Datasets:

* ``fashion_mnist``: the real IDX files (resnet8 ← resnet20, the demo's pair);
* ``cifar``: CIFAR-format data (resnet8x4 ← resnet32x4, the paper's headline pair) read by the real
  CIFAR-100 loader from ``--cifar-dir``; without one, random images are written in the CIFAR-100 python
  pickle format to a temporary folder first (same format and sizes, so the same work per image).

    python3 -m benchmarks epoch --limit 1280 --cifar-limit 256   # CPU-sized
    python3 -m benchmarks epoch --device cuda                     # full epochs on a GPU
"""

from __future__ import annotations

import argparse
import json
import pickle
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.baseline import baseline_loader
from benchmarks.bench import (
    PAIRS,
    _reference_swap,
    _sync,
    default_precision,
    resolve_device,
    train_step,
)
from semckd.data import DeviceLoader, dataset_defaults, load_arrays
from semckd.methods import BuildContext, build_distiller
from semckd.models import create_model

# dataset → the bench's pair for it: (student, teacher, input size, in channels, classes)
DATASET_PAIRS = {"fashion_mnist": PAIRS["fmnist"], "cifar100": PAIRS["cifar100"]}


def write_cifar100(root: Path, n_train: int, n_test: int = 64, seed: int = 0) -> Path:
    """Random images in the CIFAR-100 python format (``cifar-100-python/{train,test,meta}``)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", n_train), ("test", n_test)):
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"fine_labels": rng.integers(0, 100, n).tolist()}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=4))
    names = {b"fine_label_names": [f"c{i}".encode() for i in range(100)]}
    (folder / "meta").write_bytes(pickle.dumps(names, protocol=4))
    return root


@torch.no_grad()
def _calibrate(teacher: torch.nn.Module, images: torch.Tensor, d: dict, device: torch.device) -> None:
    """Give the untrained teacher real BatchNorm statistics (cumulative average over a few batches), so
    its features have sane magnitudes and the β=400 SemCKD loss stays finite on random weights."""
    bns = [m for m in teacher.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    mean = torch.tensor(d["mean"], device=device).view(1, -1, 1, 1)
    std = torch.tensor(d["std"], device=device).view(1, -1, 1, 1)
    teacher.train()
    for chunk in images.split(64):
        teacher((chunk.to(device).float() / 255 - mean) / std)
    teacher.eval()
    for m in bns:
        m.momentum = 0.1


def time_epoch(dataset: str, images: torch.Tensor, targets: torch.Tensor, variant: str, device: torch.device,
               batch_size: int, workers: int, seed: int = 0, lr: float = 0.01) -> dict:
    d = dataset_defaults(dataset)
    student_arch, teacher_arch, _, cin, ncls = DATASET_PAIRS[dataset]
    torch.manual_seed(seed)
    student = create_model(student_arch, num_classes=ncls, in_channels=cin).to(device)
    teacher = create_model(teacher_arch, num_classes=ncls, in_channels=cin).to(device)
    example = torch.zeros(batch_size, cin, images.shape[2], images.shape[3], device=device)
    ctx = BuildContext(example_input=example, batch_size=batch_size, num_classes=ncls,
                       num_samples=len(images))
    _calibrate(teacher, images[:4 * batch_size], d, device)
    distiller = build_distiller("semckd", student, teacher, ctx, {}).to(device)
    if variant == "baseline":
        _reference_swap(distiller)
        precision = "fp32"
        loader = baseline_loader(images, targets, batch_size=batch_size, mean=d["mean"], std=d["std"],
                                 pad=d["pad"], flip=d["flip"], workers=workers, drop_last=True,
                                 pin_memory=device.type == "cuda")
    else:
        precision = default_precision(device)
        loader = DeviceLoader(images, targets, batch_size=batch_size, mean=d["mean"], std=d["std"],
                              shuffle=True, augment=True, pad=d["pad"], flip=d["flip"], device=device,
                              drop_last=True)
    distiller.train()
    opt = torch.optim.SGD(distiller.trainable_parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    step = train_step(distiller, opt, device, precision)
    iterator = iter(loader)
    _sync(device)
    t0 = time.perf_counter()
    n = 0
    for x, y, idx in iterator:
        x, y, idx = (t.to(device, non_blocking=True) for t in (x, y, idx))
        loss = step(x, y, idx)
        n += x.shape[0]
    _sync(device)
    sec = time.perf_counter() - t0
    if not torch.isfinite(loss):
        raise RuntimeError(f"{variant}: non-finite loss")
    criterion = next(type(m).__name__ for m in distiller.modules() if hasattr(m, "num_teacher"))
    return {"variant": variant, "precision": precision, "criterion": criterion,
            "loader": type(loader).__name__, "images": n, "epoch_s": sec, "images_per_s": n / sec}


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", default="fashion_mnist,cifar", help="fashion_mnist and/or cifar")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the baseline")
    p.add_argument("--lr", type=float, default=0.01, help="SGD learning rate (default 0.01, see above)")
    p.add_argument("--limit", type=int, default=None, help="first N Fashion-MNIST training images")
    p.add_argument("--cifar-dir", default=None, help="a CIFAR-100 folder (default: write random CIFAR-format "
                                                     "data to a temporary folder)")
    p.add_argument("--cifar-limit", type=int, default=None,
                   help="first N CIFAR images (also the number written when --cifar-dir is not given; "
                        "default 50000)")
    p.add_argument("--fmnist-dir", default=None, help="Fashion-MNIST IDX folder (default: the usual places)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--json", default=None, help="also write the rows to this file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in [s.strip() for s in args.datasets.split(",") if s.strip()]:
            if name == "cifar":
                dataset, limit = "cifar100", args.cifar_limit
                root = args.cifar_dir or str(write_cifar100(Path(tmp), limit or 50_000))
            elif name == "fashion_mnist":
                dataset, limit, root = "fashion_mnist", args.limit, args.fmnist_dir
            else:
                p.error(f"unknown dataset {name!r}; use fashion_mnist or cifar")
            xtr, ytr, _, _, _ = load_arrays(dataset, root)
            if limit:
                xtr, ytr = xtr[:limit], ytr[:limit]
            pair = []
            for variant in ("baseline", "semckd"):
                row = time_epoch(dataset, xtr, ytr, variant, device, args.batch_size, args.workers,
                                 lr=args.lr)
                row.update(dataset=dataset, data="real" if name == "fashion_mnist" or args.cifar_dir
                           else "random, CIFAR-100 format", device=str(device), batch_size=args.batch_size,
                           threads=torch.get_num_threads())
                pair.append(row)
                print(f"{dataset:14s} {variant:9s} {row['precision']:5s} {row['images']:6d} images  "
                      f"{row['epoch_s']:8.1f} s  {row['images_per_s']:8.1f} images/s", flush=True)
            pair[1]["speedup_vs_baseline"] = pair[0]["epoch_s"] / pair[1]["epoch_s"]
            print(f"{dataset:14s} whole-epoch speed-up: {pair[1]['speedup_vs_baseline']:.2f}x", flush=True)
            rows += pair
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return rows
