"""`semckd export` checked where its files are used: a student trained for a few steps on real
Fashion-MNIST images is exported through the CLI, and the ONNX file run in ONNX Runtime and the
TorchScript file in torch.jit must give PyTorch's logits (<= 1e-4) and argmax at the export's traced
batch size and at others (the batch axis is dynamic).

onnxruntime comes with the ``onnx`` extra, which ``.[dev]`` (what the README's test line and CI install)
includes: without it this test fails, naming the install, rather than skipping."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fmnist_subset import fashion_mnist_subset

from semckd.cli import main
from semckd.data.idx import read_idx
from semckd.export import ONNX_OPSET, build_deployable
from semckd.runfolder import load_training_checkpoint

ROOT = Path(__file__).resolve().parent.parent
TOL = 1e-4
pytestmark = pytest.mark.usefixtures("one_thread")


def _need(module: str):
    try:
        return __import__(module)
    except ImportError:
        pytest.fail(f"{module} is not installed; pip install -e '.[dev]' (it brings the onnx extra: onnx, "
                    "onnxscript, onnxruntime)")


def _trained_run(tmp_path: Path) -> Path:
    data = fashion_mnist_subset(tmp_path / "data", n_train=96, n_test=64)
    # lr 0.01: at the default 0.05, six steps of batch 16 blow the logits up to ~1e3, where float32
    # rounding alone (PyTorch vs float64) is 1.6e-4 and an absolute 1e-4 bound would test nothing real
    common = ["--dataset", "fashion_mnist", "--data-dir", str(data), "--epochs", "1", "--limit-train", "96",
              "--batch-size", "16", "--lr", "0.01", "--quiet", "--amp", "none"]
    assert main(["train-teacher", *common, "--model", "resnet8", "--out", str(tmp_path / "t")]) == 0
    assert main(["distill", *common, "--teacher", str(tmp_path / "t" / "best.pt"), "--model", "resnet8",
                 "--method", "semckd", "--out", str(tmp_path / "s")]) == 0
    return tmp_path / "s"


def _images(n: int) -> torch.Tensor:
    """The first ``n`` real test images, normalised as model.json says."""
    from fmnist_subset import REAL

    x = torch.from_numpy(read_idx(REAL / "t10k-images-idx3-ubyte.gz", 3)[:n]).float().div(255).unsqueeze(1)
    return (x - 0.2860) / 0.3530


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.* is deprecated, still supported
def test_exported_onnx_and_torchscript_match_pytorch(tmp_path):
    onnx, ort = _need("onnx"), _need("onnxruntime")
    run = _trained_run(tmp_path)
    out = tmp_path / "deploy"
    p = subprocess.run([sys.executable, "-m", "semckd", "export", str(run), "--out", str(out)], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode == 0, p.stderr[-2000:]
    assert "skipped" not in p.stdout, p.stdout  # every format written, ONNX included
    info = json.loads((out / "model.json").read_text())
    assert info["onnx_opset"] == ONNX_OPSET and info["mean"] == pytest.approx([0.2860])

    model = onnx.load(str(out / "student.onnx"))
    onnx.checker.check_model(model)
    assert {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")} == {ONNX_OPSET}
    (inp,) = model.graph.input
    assert inp.type.tensor_type.shape.dim[0].dim_param  # symbolic: the batch axis is dynamic

    ckpt, _ = load_training_checkpoint(run / "best.pt")
    student = build_deployable(ckpt).module  # PyTorch's answer, from the checkpoint itself
    sess = ort.InferenceSession(str(out / "student.onnx"), providers=["CPUExecutionProvider"])
    scripted = torch.jit.load(str(out / "student.torchscript.pt"))
    x_all = _images(64)
    for batch in (2, 7, 64):  # 2: the batch the export traced with
        x = x_all[:batch].contiguous()
        with torch.no_grad():
            want = student(x)
            got_ts = scripted(x)
        got_ort = torch.from_numpy(sess.run(["logits"], {"images": x.numpy()})[0])
        assert want.shape == (batch, 10) and got_ort.shape == want.shape == got_ts.shape
        assert want.std() > 1e-3 and want.abs().max() < 100  # trained, neither constant nor blown up
        for name, got in (("onnxruntime", got_ort), ("torchscript", got_ts)):
            err = (got - want).abs().max().item()
            assert err <= TOL, f"{name} logits differ by {err:.2e} at batch {batch}"
            assert torch.equal(got.argmax(1), want.argmax(1)), f"{name} argmax differs at batch {batch}"


def test_readme_states_the_opset_and_dynamic_batch():
    text = (ROOT / "README.md").read_text()
    para = text[text.index("**Export.**"):].split("\n\n", 1)[0]
    assert f"ONNX opset {ONNX_OPSET}, dynamic batch axis" in para


def test_export_without_onnx_says_how_to_get_it(tmp_path, monkeypatch, capsys):
    """Where the onnx package is missing, export writes the other formats and names the install."""
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx -> ImportError
    from test_tools import trained_checkpoint

    ckpt, _ = trained_checkpoint(tmp_path)
    assert main(["export", str(ckpt), "--out", str(tmp_path / "e")]) == 0
    out = capsys.readouterr().out
    assert "onnx         skipped: the onnx package is not installed" in out and "'.[onnx]'" in out
    e = tmp_path / "e"
    assert (e / "student.torchscript.pt").is_file() and not (e / "student.onnx").exists()
    assert "onnx_opset" not in json.loads((e / "model.json").read_text())
