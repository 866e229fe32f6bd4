"""Exact resume: stopping after epoch k (cleanly or by SIGKILL) and resuming ends bit-identical."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from engine_helpers import (
    TINY,
    tiny_distill_setup,
)

from semckd.cli import main

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return tiny_distill_setup(tmp_path_factory.mktemp("resume"))


pytestmark = pytest.mark.usefixtures("one_thread")


def args(data: str, teacher: str, out: Path, epochs: int = 3) -> list[str]:
    # the method draws random noise (global RNG) and keeps a memory bank (extras): both must resume
    return ["distill", "--dataset", "fashion_mnist", "--data-dir", data, "--model", TINY,
            "--teacher", teacher, "--method", "engine_probe_t", "--method-args", "noise=0.1",
            "--epochs", str(epochs), "--batch-size", "32", "--milestones", "2", "--deterministic",
            "--device", "cpu", "--quiet", "--no-tensorboard", "--out", str(out)]


def state(out: Path) -> dict:
    return torch.load(out / "last.pt", weights_only=True)


def assert_same_run(a: Path, b: Path) -> None:
    sa, sb = state(a), state(b)
    assert sa["epoch"] == sb["epoch"] == 3
    for part in ("student", "extras"):
        assert sa[part].keys() == sb[part].keys()
        for k in sa[part]:
            assert torch.equal(sa[part][k], sb[part][k]), (part, k)
    for pid, st in sa["optimizer"]["state"].items():
        assert torch.equal(st["momentum_buffer"], sb["optimizer"]["state"][pid]["momentum_buffer"])
    assert sa["scheduler"]["last_epoch"] == sb["scheduler"]["last_epoch"]

    def metrics(p: Path) -> list[dict]:
        drop = {"epoch_time_s", "images_per_s"}
        return [{k: v for k, v in json.loads(x).items() if k not in drop}
                for x in (p / "metrics.jsonl").read_text().splitlines()]

    assert metrics(a) == metrics(b)


@pytest.fixture(scope="module")
def straight(setup):
    root, data, teacher = setup
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(args(data, teacher, root / "straight")) == 0
    finally:
        torch.set_num_threads(n)
    return root / "straight"


def test_stop_after_epoch_one_then_resume_is_bit_identical(setup, straight):
    root, data, teacher = setup
    out = root / "split"
    assert main(args(data, teacher, out, epochs=1)) == 0
    assert state(out)["epoch"] == 1
    # --resume with a longer --epochs (allowed: it only extends the run)
    assert main(args(data, teacher, out, epochs=3) + ["--resume"]) == 0
    assert_same_run(straight, out)


_KILLER = """
import sys, time, torch
torch.set_num_threads(1)
from engine_helpers import register_tiny, register_probe_methods, tiny_distill_setup
register_tiny(); register_probe_methods()
import semckd.engine as E
orig = E.Trainer.train_epoch
def patched(self, epoch):
    if epoch == 2:
        open({marker!r}, "w").close()
        time.sleep(600)  # killed here, mid-run
    return orig(self, epoch)
E.Trainer.train_epoch = patched
from semckd.cli import main
sys.exit(main({argv!r}))
"""


def test_sigkill_mid_run_then_resume_is_bit_identical(setup, straight):
    root, data, teacher = setup
    out, marker = root / "killed", root / "marker"
    code = _KILLER.format(marker=str(marker), argv=args(data, teacher, out))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join((str(TESTS), str(ROOT)))})
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
            assert time.monotonic() < deadline, "training subprocess never reached epoch 2"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert state(out)["epoch"] == 1
    with open(out / "metrics.jsonl", "a") as f:  # as if the kill had also cut a metrics line short
        f.write('{"epoch": 2, "lr": 0.0')
    # continue from the folder alone: the saved config.yaml supplies every other setting
    assert main(["distill", "--out", str(out), "--resume", "--quiet"]) == 0
    assert_same_run(straight, out)


def test_resume_refuses_different_settings(setup, straight, capsys):
    rc = main(["distill", "--out", str(straight), "--resume", "--lr", "0.2"])
    err = capsys.readouterr().err
    assert rc == 2 and "settings differ" in err and "lr: 0.05 → 0.2" in err


def test_resume_of_finished_run_changes_nothing(setup, straight, capsys):
    before = (straight / "last.pt").read_bytes()
    assert main(["distill", "--out", str(straight), "--resume"]) == 0
    assert "already finished 3 epochs" in capsys.readouterr().err
    assert (straight / "last.pt").read_bytes() == before
    assert len((straight / "metrics.jsonl").read_text().splitlines()) == 3


_FAULTED = """
import sys, torch
torch.set_num_threads(1)
from engine_helpers import register_tiny, register_probe_methods, tiny_distill_setup
register_tiny(); register_probe_methods()
from semckd.cli import main
sys.exit(main({argv!r}))
"""

# (SEMCKD_FAULT, what the moment is): 5 steps per epoch, one write of each file per epoch
KILL_MOMENTS = [
    ("step@3", "mid-epoch 1, before the first checkpoint"),
    ("write:last.pt@1", "epoch 1's last.pt half written"),
    ("written:last.pt@1", "epoch 1's last.pt complete in its temp file, not renamed"),
    ("write:best.pt@1", "after last.pt, while best.pt is written"),
    ("write:metrics.jsonl@1", "after both checkpoints, while the metrics row is written"),
    ("step@8", "mid-epoch 2"),
    ("written:metrics.jsonl@3", "the final checkpoint written, its metrics row not"),
    ("write:run.json@1", "after the last epoch, while run.json is written"),
]


@pytest.mark.slow  # one killed subprocess per moment (~2-3 s each on 2 busy cores)
@pytest.mark.parametrize("fault", [f for f, _ in KILL_MOMENTS])
def test_kill9_at_any_moment_then_the_same_command_ends_identical(setup, straight, fault):
    """SIGKILL at each moment of a short run; the same command (plus --resume once a checkpoint exists)
    ends with the weights, metrics and run summary of the uninterrupted run, and no stray files."""
    root, data, teacher = setup
    out = root / ("k_" + fault.replace(":", "_").replace("@", "_").replace(".", "_"))
    argv = args(data, teacher, out)
    code = _FAULTED.format(argv=argv)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "SEMCKD_FAULT": fault,
                            "PYTHONPATH": os.pathsep.join((str(TESTS), str(ROOT)))})
    assert p.returncode == -signal.SIGKILL, (fault, p.returncode, p.stderr[-2000:])
    again = argv + (["--resume"] if (out / "last.pt").exists() else [])
    assert main(again) == 0
    assert sorted(x.name for x in out.iterdir()) == ["best.pt", "config.yaml", "last.pt", "metrics.jsonl",
                                                     "run.json"]
    assert_same_run(straight, out)
    best = torch.load(out / "best.pt", weights_only=True)
    ref = torch.load(straight / "best.pt", weights_only=True)
    assert best["epoch"] == ref["epoch"] and all(torch.equal(best["student"][k], v)
                                                 for k, v in ref["student"].items())
    times = {"train_time_s"}
    run_a, run_b = (json.loads((d / "run.json").read_text()) for d in (straight, out))
    assert {k: v for k, v in run_a.items() if k not in times} == {k: v for k, v in run_b.items()
                                                                   if k not in times}
