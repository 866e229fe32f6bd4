"""Bad input: one ``semckd: error:`` line, exit code 2, no traceback, nothing overwritten."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from engine_helpers import TINY, TinyNet, make_fashion_mnist, register_probe_methods, register_tiny

from semckd.cli import main
from semckd.runfolder import FORMAT

ROOT = Path(__file__).resolve().parent.parent


class NotWeights:
    """Any non-tensor Python object: weights_only=True refuses to unpickle it."""

    def __init__(self) -> None:
        self.payload = "arbitrary code could run here"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    register_tiny()
    register_probe_methods()
    root = tmp_path_factory.mktemp("bad")
    data = make_fashion_mnist(root / "data", n_train=96, n_test=32)
    corrupt = root / "corrupt"
    corrupt.mkdir()
    for f in data.iterdir():
        (corrupt / f.name).write_bytes(f.read_bytes())
    raw = gzip.decompress((data / "train-images-idx3-ubyte.gz").read_bytes())
    (corrupt / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw[: len(raw) // 2]))
    (root / "empty").mkdir()
    sd = TinyNet(10, 1).state_dict()
    torch.save({"format": FORMAT, "model": TINY, "num_classes": 10, "in_channels": 1, "student": sd},
               root / "teacher.pt")
    torch.save({"format": FORMAT, "model": TINY, "num_classes": 100, "in_channels": 1,
                "student": TinyNet(100, 1).state_dict()}, root / "teacher100.pt")
    torch.save(sd, root / "plain.pt")
    torch.save(TinyNet(100, 1).state_dict(), root / "plain100.pt")
    torch.save({"model": NotWeights()}, root / "evil.pt")
    (root / "garbage.pt").write_bytes(b"\x00\x01 this is not a checkpoint" * 10)
    (root / "typo.yaml").write_text("epoch: 3\n")
    (root / "badtype.yaml").write_text("epochs: three\n")
    (root / "list.yaml").write_text("- epochs\n- 3\n")
    (root / "syntax.yaml").write_text("epochs: [1, 2\n")
    (root / "args.yaml").write_text("method_args: 5\n")
    # a finished run to protect
    other = root / "other"
    assert main(["train-teacher", "--dataset", "fashion_mnist", "--data-dir", str(data), "--model", TINY,
                 "--epochs", "1", "--batch-size", "32", "--device", "cpu", "--quiet", "--no-tensorboard",
                 "--out", str(other)]) == 0
    return root


def base(root: Path, *extra: str, data: str | None = None, method: str = "engine_probe") -> list[str]:
    return ["distill", "--dataset", "fashion_mnist", "--data-dir", data or str(root / "data"),
            "--model", TINY, "--method", method, "--epochs", "1", "--batch-size", "32", "--device", "cpu",
            "--quiet", "--no-tensorboard", "--out", str(root / "runs" / "x"), *extra]


CASES = {
    # (Fashion-MNIST falls back to the system copy; MNIST has none)
    "missing data files": (lambda r: base(r, "--dataset", "mnist", data=str(r / "empty")), "MNIST not found"),
    "corrupt data file": (lambda r: base(r, data=str(r / "corrupt")), "truncated"),
    "unknown model": (lambda r: base(r, "--model", "resnet9000"), "unknown model 'resnet9000'"),
    "unknown method": (lambda r: base(r, "--method", "semkdd"), "unknown method 'semkdd'"),
    "unknown dataset": (lambda r: base(r, "--dataset", "cifar1000"), "unknown dataset 'cifar1000'"),
    "unknown method option": (lambda r: base(r, "--method-args", "wieght=2"), "did you mean 'weight'"),
    "teacher arch mismatch": (
        lambda r: base(r, "--teacher", str(r / "teacher.pt"), "--teacher-model", TINY + "_wide", method="kd"),
        f"holds a {TINY} but --teacher-model says {TINY}_wide"),
    "state_dict does not fit": (
        lambda r: base(r, "--teacher", str(r / "plain.pt"), "--teacher-model", TINY + "_wide", method="kd"),
        f"does not fit architecture '{TINY}_wide'"),
    "teacher class count": (
        lambda r: base(r, "--teacher", str(r / "teacher100.pt"), method="kd"),
        "has 100 classes but fashion_mnist"),
    "plain teacher class count": (
        lambda r: base(r, "--teacher", str(r / "plain100.pt"), "--teacher-model", TINY, method="kd"),
        "has 100 output classes but the model needs 10"),
    "teacher without arch": (lambda r: base(r, "--teacher", str(r / "plain.pt"), method="kd"),
                             "does not name its architecture; pass --teacher-model"),
    "non-weights checkpoint": (lambda r: base(r, "--teacher", str(r / "evil.pt"), method="kd"),
                               "contains arbitrary Python objects"),
    "corrupt checkpoint": (lambda r: base(r, "--teacher", str(r / "garbage.pt"), method="kd"),
                           "corrupt or not a PyTorch file"),
    "missing checkpoint": (lambda r: base(r, "--teacher", str(r / "nope.pt"), method="kd"), "not found"),
    "batch the fixed-batch method cannot take": (
        lambda r: base(r, "--method-args", "fixed=true", "--limit-train", "16"),
        "needs full batches of 32 but each process has only 16"),
    "resume with other settings": (lambda r: ["train-teacher", "--out", str(r / "other"), "--resume", "--lr",
                                              "0.3"], "--resume: the settings differ"),
    "output dir holds another run": (lambda r: base(r, "--out", str(r / "other")), "holds another run"),
    "non-finite loss": (lambda r: base(r, "--method-args", "blowup_epoch=1"), "loss became non-finite"),
    "unknown yaml key": (lambda r: base(r, "--config", str(r / "typo.yaml")),
                         "unknown config key 'epoch'; did you mean 'epochs'?"),
    "unknown --set key": (lambda r: base(r, "--set", "lr_decy=0.2"), "did you mean 'lr_decay'?"),
    "wrong flag type": (lambda r: base(r, "--epochs", "three"), "'epochs' expects an integer, got 'three'"),
    "wrong yaml type": (lambda r: base(r, "--config", str(r / "badtype.yaml")),
                        "'epochs' expects an integer"),
    "yaml not a mapping": (lambda r: base(r, "--config", str(r / "list.yaml")), "must be a mapping"),
    "yaml syntax": (lambda r: base(r, "--config", str(r / "syntax.yaml")), "is not valid YAML"),
    "method_args not a mapping": (lambda r: base(r, "--config", str(r / "args.yaml")),
                                  "'method_args' expects a mapping"),
    "method-args without =": (lambda r: base(r, "--method-args", "weight"), "expected KEY=VALUE"),
    "bad enum": (lambda r: base(r, "--amp", "fp8"), "amp must be one of"),
    "bad range": (lambda r: base(r, "--lr", "-1"), "lr must be > 0"),
    "eval wrong dataset": (lambda r: ["eval", "--checkpoint", str(r / "teacher100.pt"), "--dataset",
                                      "fashion_mnist", "--data-dir", str(r / "data")],
                           "has 100 classes but fashion_mnist has 10"),
    "eval non-weights": (lambda r: ["eval", "--checkpoint", str(r / "evil.pt")], "arbitrary Python objects"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line(env, case, capsys):
    argv, expected = CASES[case]
    other_before = (env / "other" / "last.pt").read_bytes()
    rc = main(argv(env))
    out, err = capsys.readouterr()
    assert rc == 2, (out, err)
    lines = err.strip().splitlines()
    assert lines[-1].startswith("semckd: error: "), err
    assert expected in lines[-1], err
    assert "Traceback" not in err
    assert len([ln for ln in lines if ln.startswith("semckd: error")]) == 1
    assert (env / "other" / "last.pt").read_bytes() == other_before
    if case == "non-finite loss":
        assert not (env / "runs" / "x" / "last.pt").exists()  # nothing good to keep, nothing bad written


@pytest.mark.parametrize("argv, expected", [
    (["-m", "semckd.cli", "distill", "--dataset", "fashion_mnist", "--model", "resnet9000", "--method", "kd"],
     "unknown model"),
    (["-m", "semckd", "eval", "--checkpoint", "{root}/evil.pt"], "arbitrary Python objects"),
])
def test_subprocess_exit_code_and_no_traceback(env, argv, expected, tmp_path):
    argv = [a.format(root=env) for a in argv]
    if "distill" in argv:
        argv = argv + ["--device", "cpu"]
    p = subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=tmp_path, timeout=120,
                       env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert p.returncode == 2, p.stderr
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("semckd: error: ") and expected in p.stderr
