"""Data-side throughput: on-device batched augmentation vs. DataLoader + per-image PIL augmentation.

Times whole training epochs of both pipelines over the same uint8 Fashion-MNIST data (real IDX files
by default) with the same augmentation (random crop with padding + horizontal flip + normalise), each
batch ending on the training device. Only the data side is measured; no model runs.

    python3 -m benchmarks data_pipeline [--device cuda] [--batch-size 128] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from benchmarks.baseline import baseline_loader
from semckd.data import DeviceLoader, dataset_defaults, load_arrays


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_epochs(loader, device: torch.device, epochs: int, to_device: bool) -> tuple[float, int]:
    """Best wall time of ``epochs`` full passes (each batch moved to ``device`` if needed)."""
    best, n = float("inf"), 0
    for epoch in range(epochs):
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        _sync(device)
        t0 = time.perf_counter()
        n = 0
        for x, y, _ in loader:
            if to_device:
                x = x.to(device, non_blocking=True)
                y = y.to(device, non_blocking=True)
            n += x.shape[0]
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best, n


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers for the baseline")
    p.add_argument("--epochs", type=int, default=2, help="timed epochs per pipeline (best is reported)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N training images")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for the main process")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    xtr, ytr, _, _, _ = load_arrays(args.dataset, args.data_dir)
    if args.limit:
        xtr, ytr = xtr[: args.limit], ytr[: args.limit]
    d = dataset_defaults(args.dataset)

    fast = DeviceLoader(xtr, ytr, batch_size=args.batch_size, mean=d["mean"], std=d["std"], shuffle=True,
                        augment=True, pad=d["pad"], flip=d["flip"], device=device)
    base = baseline_loader(xtr, ytr, batch_size=args.batch_size, mean=d["mean"], std=d["std"], pad=d["pad"],
                           flip=d["flip"], workers=args.workers, pin_memory=device.type == "cuda")
    t_fast, n_fast = time_epochs(fast, device, args.epochs, to_device=False)
    t_base, n_base = time_epochs(base, device, args.epochs, to_device=True)
    result = {
        "dataset": args.dataset, "images": n_fast, "device": str(device), "batch_size": args.batch_size,
        "threads": torch.get_num_threads(), "baseline_workers": args.workers,
        "device_loader_epoch_s": round(t_fast, 4), "device_loader_images_per_s": round(n_fast / t_fast),
        "baseline_epoch_s": round(t_base, 4), "baseline_images_per_s": round(n_base / t_base),
        "speedup": round(t_base / t_fast, 2),
    }
    for k, v in result.items():
        print(f"{k:28s} {v}")
    print(json.dumps(result))
    return result
