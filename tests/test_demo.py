"""The embedded default (`semckd demo`): shipped teacher record, end-to-end run on tiny data, bad input."""

from __future__ import annotations

import json

import pytest
import torch
from engine_helpers import make_fashion_mnist

from semckd.cli import main
from semckd.commands import demo
from semckd.data.download import file_sha256


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory):
    return make_fashion_mnist(tmp_path_factory.mktemp("fmnist"), n_train=192, n_test=64)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_shipped_teacher_matches_its_record():
    """The checked-in weights are what their JSON says: hash, architecture, classes, accuracy, command."""
    from semckd.checkpoint import load_teacher

    path, record = demo.shipped_teacher()
    assert file_sha256(path) == record["sha256"]
    demo.verify_teacher(path, record)
    assert path.stat().st_size < 4 * 2**20  # "a few MB at most"
    teacher, meta = load_teacher(path, arch=None, num_classes=10, in_channels=1, dataset="fashion_mnist")
    assert meta["model"] == record["model"] == "resnet20"
    assert 85.0 < record["test_acc"] < 100.0
    assert "semckd train-teacher" in record["command"]
    with torch.no_grad():
        assert teacher.eval()(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("model", ["wrn_40_2", "vgg13"])
def test_cross_architecture_teachers_match_their_records(model):
    """The teachers of the cross-architecture tables: hash, architecture and card as recorded; float16
    weights load into the float32 model and give the same predictions as upcast by hand."""
    from semckd.checkpoint import load_teacher

    path = demo.WEIGHTS_DIR / f"fashion_mnist_{model}.pt"
    record = json.loads(path.with_suffix(".json").read_text())
    assert file_sha256(path) == record["sha256"] and path.stat().st_size == record["bytes"]
    assert record["weights_dtype"] == "float16" and path.stat().st_size < 20 * 2**20
    assert record["model"] == model and record["epoch"] == 8 and 90.0 < record["test_acc"] < 100.0
    assert "semckd train-teacher" in record["command"] and f"--model {model}" in record["command"]
    teacher, meta = load_teacher(path, arch=None, num_classes=10, in_channels=1, dataset="fashion_mnist")
    assert meta["model"] == model
    raw = torch.load(path, weights_only=True)["student"]
    assert all(v.dtype == torch.float16 for v in raw.values() if v.is_floating_point())
    assert all(p.dtype == torch.float32 for p in teacher.parameters())
    sd = teacher.state_dict()
    assert all(torch.equal(sd[k], v.to(sd[k].dtype)) for k, v in raw.items())
    with torch.no_grad():
        assert teacher.eval()(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_corrupt_shipped_teacher_is_refused(tmp_path, monkeypatch, fmnist, capsys):
    path, record = demo.shipped_teacher()
    fake = tmp_path / "weights"
    fake.mkdir()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    (fake / path.name).write_bytes(bytes(data))
    (fake / f"{demo.TEACHER_NAME}.json").write_text(json.dumps(record))
    monkeypatch.setattr(demo, "WEIGHTS_DIR", fake)
    assert main(["demo", "--data-dir", str(fmnist), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("semckd: error:") and "corrupt" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_missing_data_names_the_fix(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("semckd.data.idx.FASHION_MNIST_DIR", str(tmp_path / "nowhere"))
    assert main(["demo", "--data-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "empty' does not exist" in err and "dataset-fashion-mnist" in err


def test_demo_end_to_end_on_tiny_data(tmp_path, fmnist, capsys):
    teacher_dir = tmp_path / "teacher"
    assert main(["train-teacher", "--dataset", "fashion_mnist", "--data-dir", str(fmnist),
                 "--model", "resnet8", "--epochs", "1", "--batch-size", "32", "--out", str(teacher_dir),
                 "--quiet", "--no-tensorboard", "--device", "cpu"]) == 0
    out = tmp_path / "demo"
    args = ["demo", "--data-dir", str(fmnist), "--teacher", str(teacher_dir / "best.pt"), "--out", str(out),
            "--epochs", "2", "--limit-train", "128", "--val-split", "32", "--batch-size", "32",
            "--device", "cpu", "--quiet"]
    assert main(args) == 0
    text = capsys.readouterr().out
    for name in ("vanilla", "semckd"):
        run = json.loads((out / name / "run.json").read_text())
        assert run["method"] == name and run["model"] == "resnet8"
        lines = [json.loads(x) for x in (out / name / "metrics.jsonl").read_text().splitlines()]
        assert [x["epoch"] for x in lines] == [1, 2]
        assert lines[0]["train_images"] == 128
        assert f"{run['best_acc']:6.2f}%" in text  # the printed table is the runs' own numbers
    cfg = json.loads(json.dumps(torch.load(out / "semckd" / "last.pt", weights_only=True)["config"]))
    assert cfg["method_args"] == {"beta": 100.0} and cfg["seed"] == 0  # the protocol's choice, not 400
    assert cfg["val_split"] == 32 and cfg["val_seed"] == 0
    for name in ("vanilla", "semckd"):  # the best epoch is chosen on validation, not on the test set
        assert json.loads((out / name / "run.json").read_text())["selected_by"] == "val_acc"
    assert "best epoch on 32 validation images" in text
    png = out / "semckd" / "attention.png"
    if _has_matplotlib():
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a second demo into the same folder is refused, with the fix named, and leaves the runs intact
    before = (out / "semckd" / "last.pt").read_bytes()
    assert main(args) == 2
    assert "--force" in capsys.readouterr().err
    assert (out / "semckd" / "last.pt").read_bytes() == before


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def test_demo_val_split_zero_chooses_on_test_accuracy(tmp_path, fmnist, monkeypatch, capsys):
    """``--val-split 0`` (documented as "0 = none") reaches the runs as no validation split; it used to
    end in "'val_split' expects an integer, got None" (exit 2)."""
    import semckd.engine
    import semckd.evaluate
    import semckd.plot

    seen = []
    monkeypatch.setattr(semckd.evaluate, "evaluate_checkpoint",
                        lambda *a, **k: {"model": "resnet20", "test_acc": 90.0})
    monkeypatch.setattr(semckd.engine, "train", lambda cfg: seen.append(cfg) or {"best_acc": 80.0})
    monkeypatch.setattr(semckd.plot, "plot_attention", lambda *a, **k: None)
    out = tmp_path / "demo"
    assert main(["demo", "--data-dir", str(fmnist), "--out", str(out), "--val-split", "0", "--epochs", "1",
                 "--device", "cpu", "--quiet"]) == 0
    assert [c.val_split for c in seen] == [0, 0] and [c.method for c in seen] == ["vanilla", "semckd"]
    text = capsys.readouterr().out
    assert "test accuracy, best epoch (1 epochs" in text and "validation" not in text
