"""DDP on CPU: two gloo processes via torchrun, faithful SemCKD with the per-process batch size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from engine_helpers import make_fashion_mnist

from semckd.evaluate import evaluate_checkpoint
from semckd.models import create_model
from semckd.runfolder import FORMAT

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # two torchrun processes (~15-20 s on 2 busy cores)
@pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
# one_to_one: frozen MLPs and projectors, which DDP must neither reduce nor wait for
@pytest.mark.parametrize("method_args", [[], ["--method-args", "attention=one_to_one"]])
def test_torchrun_two_processes_faithful_semckd(tmp_path, method_args):
    method = "semckd"  # no fallback: a missing or broken method must fail this test, not pass as KD
    data = make_fashion_mnist(tmp_path / "data", n_train=256, n_test=100)
    torch.manual_seed(0)
    teacher = tmp_path / "teacher.pt"
    torch.save({"format": FORMAT, "model": "resnet8", "num_classes": 10, "in_channels": 1,
                "student": create_model("resnet8", num_classes=10, in_channels=1).state_dict()}, teacher)
    out = tmp_path / "run"
    # global batch 64 → 32 per process; 200 images → 100 per process → 3 full batches, 4 images dropped
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "semckd.cli", "distill", "--dataset", "fashion_mnist", "--data-dir", str(data),
           "--teacher", str(teacher), "--model", "resnet8", "--method", method, "--epochs", "1",
           "--batch-size", "64", "--limit-train", "200", "--device", "cpu", "--no-tensorboard",
           "--out", str(out), *method_args]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count("epoch   1/1") == 1  # only rank 0 prints
    assert sorted(x.name for x in out.iterdir()) == ["best.pt", "config.yaml", "last.pt", "metrics.jsonl",
                                                     "run.json"]  # written once, no stray temp files
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1
    m = json.loads(lines[0])
    run = json.loads((out / "run.json").read_text())
    assert run["world_size"] == 2
    assert run["ddp_param_max_abs_diff"] == 0.0  # the ranks' students are identical after training
    assert m["train_images"] == 2 * 3 * 32  # full per-process batches of 32 only
    assert "train_semckd" in m
    att = m["extras"]["attention"]
    assert len(att) == 3 and all(len(r) == 3 for r in att)  # resnet8: 3 stages after the stem
    assert all(abs(sum(r) - 1) < 1e-4 for r in att)
    if method_args:
        assert att == [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    ck = torch.load(out / "last.pt", weights_only=True)
    assert ck["config"]["batch_size"] == 64
    # the logged accuracy is over the whole test set (correct counts summed across the two shards)
    res = evaluate_checkpoint(str(out / "last.pt"), device="cpu")
    assert res["test_n"] == 100 and res["test_acc"] == pytest.approx(m["test_acc"])
