"""A user's own data vs. the built-in loader: the same Fashion-MNIST images given four ways.

(a) the built-in IDX loader, (b) a user tensor pair, (c) a user ``Dataset`` of PIL images, (d) a CSV
manifest of PNG files, each through ``semckd.data.build_splits`` as the engine calls it. Reported per
form: setup seconds (reading/decoding, once per run) and loader images/s over whole training epochs
(batches on the training device, augmented and normalised; no model), plus (c) and (d) streamed through
DataLoader workers (``in_memory=False``) for data too large for memory. ``--train`` also times whole
training epochs of resnet8 (a) vs (b).

    python -m benchmarks own_data --threads 1 [--limit 10000] [--train]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from semckd.data import build_splits, load_arrays
from semckd.data.user import user_spec


class PILDataset(torch.utils.data.Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        from PIL import Image
        return Image.fromarray(self.x[i, 0].numpy()), int(self.y[i])


def write_csv(root: Path, x: torch.Tensor, y: torch.Tensor, xt: torch.Tensor, yt: torch.Tensor) -> None:
    from PIL import Image
    (root / "img").mkdir(parents=True, exist_ok=True)
    for split, xs, ys in (("train", x, y), ("test", xt, yt)):
        rows = ["path,label"]
        for i in range(len(ys)):
            Image.fromarray(xs[i, 0].numpy()).save(root / "img" / f"{split}{i}.png")
            rows.append(f"img/{split}{i}.png,{int(ys[i])}")
        (root / f"{split}.csv").write_text("\n".join(rows) + "\n")


def time_loader(loader, epochs: int) -> float:
    best = float("inf")
    for e in range(epochs):
        loader.set_epoch(e + 1)
        t0 = time.perf_counter()
        n = sum(x.shape[0] for x, _, _ in loader)
        best = min(best, time.perf_counter() - t0)
    return n / best


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--limit", type=int, default=10000, help="first N training images (all test images: 1000)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=3, help="timed epochs (best reported)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--train", action="store_true", help="also time training epochs of resnet8, (a) vs (b)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved training repeats (best reported)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    xtr, ytr, xte, yte, _ = load_arrays("fashion_mnist")
    xtr, ytr, xte, yte = xtr[:args.limit], ytr[:args.limit], xte[:1000], yte[:1000]
    tmp = Path(tempfile.mkdtemp())
    write_csv(tmp, xtr, ytr, xte, yte)
    kw = dict(device=args.device, workers=args.workers, limit_train=args.limit)
    forms = [
        ("(a) built-in IDX", lambda: build_splits("fashion_mnist", None, args.batch_size, **kw)),
        ("(b) user tensors", lambda: build_splits(user_spec((xtr, ytr), (xte, yte)), None, args.batch_size,
                                                  **kw)),
        ("(c) user PIL Dataset", lambda: build_splits(user_spec(PILDataset(xtr, ytr), PILDataset(xte, yte)),
                                                      None, args.batch_size, **kw)),
        ("(d) CSV of PNGs", lambda: build_splits("csv", str(tmp), args.batch_size, **kw)),
        ("(c) streamed", lambda: build_splits(user_spec(PILDataset(xtr, ytr), PILDataset(xte, yte),
                                                        in_memory=False), None, args.batch_size, **kw)),
    ]
    rows = []
    for name, make in forms:
        t0 = time.perf_counter()
        s = make()
        setup = time.perf_counter() - t0
        ips = time_loader(s.train, args.epochs)
        rows.append({"form": name, "setup_s": round(setup, 2), "loader_images_per_s": round(ips)})
        print(json.dumps(rows[-1]), flush=True)
    if args.train:
        from semckd.config import resolve_config
        from semckd.engine import train
        tensors = {"data": ((xtr, ytr), (xte, yte))}
        best: dict[str, float] = {}
        for rep in range(args.repeats):  # interleaved, best of each: a busy machine's load drifts
            for name, extra in (("(a) built-in IDX", {}), ("(b) user tensors", tensors)):
                flags = dict(dataset="fashion_mnist" if not extra else "user", model="resnet8", epochs=1,
                             batch_size=args.batch_size, limit_train=args.limit, out=str(tmp / name[:3]),
                             quiet=True, force=True, amp="none", workers=args.workers, device=args.device)
                cfg, _ = resolve_config("teacher", flags=flags)
                train(cfg, *extra["data"]) if extra else train(cfg)
                m = [json.loads(r) for r in (Path(cfg.out) / "metrics.jsonl").read_text().splitlines()]
                best[name] = max(best.get(name, 0.0), max(r["images_per_s"] for r in m))
                line = {"form": name, "rep": rep, "train_images_per_s": round(best[name])}
                print(json.dumps(line), flush=True)
        rows += [{"form": k, "train_images_per_s": round(v)} for k, v in best.items()]
    return rows

