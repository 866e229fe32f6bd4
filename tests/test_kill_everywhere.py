"""Kill -9 and Ctrl-C wherever a command writes (issue 23, item 6): ``semckd sweep`` between cells and
mid-cell, ``semckd export`` and ``semckd plot`` mid-write. After the same command is rerun: no temp files,
nothing lost, and the sweep's cells end bit-identical to an uninterrupted sweep's.

Each moment is landed exactly with the ``SEMCKD_FAULT`` hook (:func:`semckd.atomic.fault_point`):
``NAME@N`` SIGKILLs the process the N-th time it passes ``NAME``, ``int:NAME@N`` sends it SIGINT.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from engine_helpers import TINY, tiny_distill_setup

from semckd.cli import main

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
pytestmark = pytest.mark.usefixtures("one_thread")

# Ctrl-C raises KeyboardInterrupt as in a terminal, even where the runner started us with SIGINT ignored
# (a background job, nohup), which a child would otherwise inherit
_CHILD = """
import signal
signal.signal(signal.SIGINT, signal.default_int_handler)
import sys, torch
torch.set_num_threads(1)
from engine_helpers import register_tiny
register_tiny()
from semckd.cli import main
sys.exit(main({argv!r}))
"""


def child(argv: list[str], fault: str) -> subprocess.CompletedProcess:
    """``semckd ARGV`` in a subprocess that the fault hook stops at ``fault``."""
    return subprocess.run([sys.executable, "-c", _CHILD.format(argv=argv)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "SEMCKD_FAULT": fault, "OMP_NUM_THREADS": "1",
                                            "PYTHONPATH": os.pathsep.join((str(TESTS), str(ROOT)))})


def stopped(p: subprocess.CompletedProcess, fault: str) -> None:
    """The child died of the kill -9, or ended its Ctrl-C in one line with exit 130."""
    if fault.startswith("int:"):
        assert p.returncode == 130 and p.stderr.strip().splitlines()[-1] == "semckd: interrupted", p.stderr
        assert "Traceback" not in p.stderr, p.stderr
    else:
        assert p.returncode == -signal.SIGKILL, (p.returncode, p.stderr[-2000:])


def temps(d: Path) -> list[str]:
    return sorted(str(f.relative_to(d)) for f in d.rglob("*") if ".tmp" in f.name)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return tiny_distill_setup(tmp_path_factory.mktemp("killall"))


# ---------------------------------------------------------------------- sweep
def sweep_args(data: str, teacher: str, out: Path) -> list[str]:
    # 120 training images after the 40 held out: 4 steps per epoch, 8 per cell (2 epochs)
    return ["sweep", "--dataset", "fashion_mnist", "--data-dir", data, "--model", TINY, "--teacher", teacher,
            "--method", "kd", "--grid", "temperature=2,4", "--seeds", "0", "--val-split", "40", "--epochs",
            "2", "--batch-size", "32", "--milestones", "1", "--deterministic", "--device", "cpu", "--quiet",
            "--no-tensorboard", "--out", str(out)]


CELLS = ["temperature=2/seed0", "temperature=4/seed0"]


@pytest.fixture(scope="module")
def straight_sweep(setup):
    root, data, teacher = setup
    out = root / "sweep-straight"
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # as the children run (module fixtures come before one_thread)
    try:
        assert main(sweep_args(data, teacher, out)) == 0
    finally:
        torch.set_num_threads(n)
    return out


def _records(out: Path) -> list[dict]:
    drop = {"train_time_s", "out", "epochs_trained"}  # where and how long; a resumed cell trains fewer
    return [{k: v for k, v in r.items() if k not in drop}
            for r in json.loads((out / "sweep.json").read_text())["records"]]


# (fault, moment): cell 1 trains steps 1-8 and writes its run.json, then the sweep writes its tables
SWEEP_MOMENTS = [
    ("write:sweep.md@1", "between cells: cell 1 done, the table half written"),
    ("int:written:sweep.json@1", "Ctrl-C between cells: cell 1 done, sweep.json not yet renamed"),
    ("step@11", "mid-cell 2, epoch 1 (no checkpoint yet)"),
    ("int:step@15", "Ctrl-C mid-cell 2, epoch 2 (its epoch-1 last.pt on disk)"),
]


@pytest.mark.parametrize("fault", [f for f, _ in SWEEP_MOMENTS])
def test_sweep_stopped_then_rerun_ends_as_uninterrupted(setup, straight_sweep, fault):
    root, data, teacher = setup
    out = root / ("sweep-" + fault.replace(":", "_").replace("@", "_").replace(".", "_"))
    argv = sweep_args(data, teacher, out)
    stopped(child(argv, fault), fault)
    assert main(argv) == 0  # the same command
    assert temps(out) == []
    assert _records(out) == _records(straight_sweep)
    sel = [json.loads((d / "sweep.json").read_text())["selected"] for d in (out, straight_sweep)]
    assert sel[0] == sel[1] and sel[0] is not None
    for cell in CELLS:
        a, b = (torch.load(d / cell / "last.pt", weights_only=True) for d in (out, straight_sweep))
        assert a["epoch"] == b["epoch"] == 2
        assert all(torch.equal(a["student"][k], v) for k, v in b["student"].items()), cell
        epochs = [json.loads(x)["epoch"] for x in (out / cell / "metrics.jsonl").read_text().splitlines()]
        assert epochs == [1, 2], (cell, epochs)  # nothing lost, nothing trained twice
        assert sorted(x.name for x in (out / cell).iterdir()) == ["best.pt", "config.yaml", "last.pt",
                                                                 "metrics.jsonl", "run.json"]
    assert (out / "sweep.md").read_text() == (straight_sweep / "sweep.md").read_text()


# ---------------------------------------------------------------------- export, plot
@pytest.fixture(scope="module")
def trained(setup):
    root, data, teacher = setup
    run = root / "run"
    assert main(["distill", "--dataset", "fashion_mnist", "--data-dir", data, "--model", TINY, "--teacher",
                 teacher, "--method", "kd", "--epochs", "2", "--batch-size", "32", "--milestones", "1",
                 "--device", "cpu", "--quiet", "--no-tensorboard", "--out", str(run)]) == 0
    ref = root / "export-straight"
    assert main(["export", str(run / "best.pt"), "--out", str(ref), "--format",
                 "state_dict,torchscript"]) == 0
    return run, ref


EXPORT_MOMENTS = ["write:student.pt@1", "written:student.torchscript.pt@1", "int:write:model.json@1"]


@pytest.mark.parametrize("fault", EXPORT_MOMENTS)
def test_export_stopped_then_rerun_leaves_only_the_export(setup, trained, fault):
    root = setup[0]
    run, ref = trained
    out = root / ("export-" + fault.replace(":", "_").replace("@", "_").replace(".", "_"))
    argv = ["export", str(run / "best.pt"), "--out", str(out), "--format", "state_dict,torchscript"]
    stopped(child(argv, fault), fault)
    assert main(argv) == 0
    assert temps(out) == []
    assert sorted(x.name for x in out.iterdir()) == sorted(x.name for x in ref.iterdir())
    a, b = (torch.load(d / "student.pt", weights_only=True) for d in (out, ref))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.randn(3, 1, 28, 28)
    ya, yb = (torch.jit.load(str(d / "student.torchscript.pt"))(x) for d in (out, ref))
    assert torch.equal(ya, yb)
    info = [json.loads((d / "model.json").read_text()) for d in (out, ref)]
    assert {k: v for k, v in info[0].items() if k != "files"} == {k: v for k, v in info[1].items()
                                                                  if k != "files"}


@pytest.mark.parametrize("fault", ["written:curves.png@1", "int:written:curves.png@1"])
def test_plot_stopped_then_rerun_leaves_only_the_figure(setup, trained, fault):
    pytest.importorskip("matplotlib")
    root = setup[0]
    run, _ = trained
    where = root / ("plot-" + fault.replace(":", "_").replace("@", "_").replace(".", "_"))
    where.mkdir()
    png = where / "curves.png"
    argv = ["plot", "curves", str(run), "--out", str(png)]
    stopped(child(argv, fault), fault)
    assert not png.exists()  # stopped before the rename: no half figure under the real name
    assert main(argv) == 0
    assert temps(where) == [] and [x.name for x in where.iterdir()] == ["curves.png"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
