"""One ``semckd sweep`` worker process for the multi-worker tests (the tiny model and probe method
registered, each epoch slowed by ``--slow`` seconds after its checkpoint so a test can kill it mid-trial).

    python tests/sweep_worker.py DATA_DIR OUT STORAGE EPOCHS SLOW   (study name: OUT's folder name)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from engine_helpers import TINY, register_probe_methods, register_tiny  # tests/: the script's own folder

from semckd import engine
from semckd.config import resolve_config
from semckd.sweep import run_sweep

GRID = {"weight": [0.1, 1.0, 3.0]}
SEEDS = [0, 1]


def base_cfg(data_dir: str, epochs: int):
    flags = dict(dataset="fashion_mnist", data_dir=data_dir, model=TINY, epochs=epochs, batch_size=32,
                 out="unused", device="cpu", quiet=True, tensorboard=False, milestones=[],
                 method="engine_probe", val_split=40)
    return resolve_config("distill", flags=flags)[0]


def main() -> None:
    data_dir, out, storage, epochs, slow = sys.argv[1:6]
    torch.set_num_threads(1)
    register_tiny()
    register_probe_methods()

    def train(cfg, on_epoch=None):
        def cb(epoch, val_acc):
            time.sleep(float(slow))
            if on_epoch is not None:
                on_epoch(epoch, val_acc)
        return engine.train(cfg, on_epoch=cb)

    res = run_sweep(base_cfg(data_dir, int(epochs)), GRID, SEEDS, out, train_fn=train,
                    storage=None if storage == "-" else storage, study_name=Path(out).name,
                    heartbeat_s=0.5, grace_s=5.0, poll_s=0.5,
                    log=lambda s: print(s, flush=True))
    print(f"SELECTED {res.selected['label'] if res.selected else None}", flush=True)


if __name__ == "__main__":
    main()
