"""CLI: train-teacher → distill → eval end to end, YAML + flag layering, run-folder protection."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from engine_helpers import TINY, make_fashion_mnist, register_probe_methods, register_tiny

from semckd.cli import main


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    register_tiny()
    register_probe_methods()
    return str(make_fashion_mnist(tmp_path_factory.mktemp("cli"), n_train=192, n_test=100))


pytestmark = pytest.mark.usefixtures("one_thread")


def common(data: str) -> list[str]:
    return ["--dataset", "fashion_mnist", "--data-dir", data, "--device", "cpu", "--no-tensorboard"]


def test_zoo_teacher_distill_eval_end_to_end(data, tmp_path, capsys):
    t, s = tmp_path / "t", tmp_path / "s"
    assert main(["train-teacher", *common(data), "--model", "resnet8", "--epochs", "1", "--batch-size", "64",
                 "--limit-train", "128", "--out", str(t)]) == 0
    out = capsys.readouterr().out
    assert "epoch   1/1" in out and "best test accuracy" in out
    assert main(["distill", *common(data), "--teacher", str(t / "best.pt"), "--model", "resnet8",
                 "--method", "kd", "--epochs", "1", "--batch-size", "64", "--limit-train", "128",
                 "--out", str(s), "--quiet"]) == 0
    assert capsys.readouterr().out == ""  # --quiet
    run = json.loads((s / "run.json").read_text())
    assert run["teacher_model"] == "resnet8" and run["method"] == "kd" and run["epochs"] == 1
    line = json.loads((s / "metrics.jsonl").read_text())
    assert {"train_ce", "train_kd"} <= set(line)
    assert main(["eval", "--checkpoint", str(s / "best.pt"), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["test_acc"] == pytest.approx(run["best_acc"]) and res["model"] == "resnet8"
    assert res["dataset"] == "fashion_mnist" and res["test_n"] == 100
    assert main(["eval", "--checkpoint", str(t / "best.pt"), "--dataset", "fashion_mnist",
                 "--data-dir", data]) == 0
    assert "fashion_mnist test accuracy: top-1" in capsys.readouterr().out
    # a bare state_dict (e.g. exported weights) needs --model and --dataset
    torch.save(torch.load(s / "best.pt", weights_only=True)["student"], tmp_path / "plain.pt")
    assert main(["eval", "--checkpoint", str(tmp_path / "plain.pt"), "--model", "resnet8", "--dataset",
                 "fashion_mnist", "--data-dir", data, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["test_acc"] == pytest.approx(run["best_acc"])


def test_yaml_config_then_flags_then_set(data, tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text(yaml.safe_dump({"dataset": "fashion_mnist", "data_dir": data, "model": TINY, "epochs": 5,
                                 "batch_size": 32, "lr": 0.02, "method": "engine_probe",
                                 "method_args": {"weight": 0.5, "noise": 0.0}, "device": "cpu",
                                 "tensorboard": False, "milestones": [1]}))
    out = tmp_path / "run"
    assert main(["distill", "--config", str(f), "--epochs", "2", "--method-args", "noise=0.01",
                 "--set", "method_args.weight=0.25", "--out", str(out), "--quiet"]) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["epochs"] == 2 and saved["lr"] == 0.02 and saved["batch_size"] == 32
    assert saved["method_args"] == {"weight": 0.25, "noise": 0.01}
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["lr"] for x in lines] == pytest.approx([0.02, 0.002])  # milestone 1 from the YAML


def test_output_folder_holding_a_run_is_protected(data, tmp_path, capsys):
    out = tmp_path / "o"
    base = ["train-teacher", *common(data), "--model", TINY, "--epochs", "1", "--batch-size", "64",
            "--out", str(out), "--quiet"]
    assert main(base) == 0
    first = (out / "last.pt").read_bytes()
    assert main(base) == 2
    assert "already holds this run; pass --resume" in capsys.readouterr().err
    assert main(base + ["--lr", "0.1"]) == 2
    assert "holds another run (lr: 0.05 → 0.1)" in capsys.readouterr().err
    assert (out / "last.pt").read_bytes() == first  # untouched by the refused runs
    assert main(base + ["--lr", "0.1", "--force", "--model", "no_such_net"]) == 2  # a failing forced run
    assert (out / "last.pt").read_bytes() == first  # ... deletes nothing
    capsys.readouterr()
    assert main(base + ["--lr", "0.1", "--force"]) == 0
    assert "--force: replaced" in capsys.readouterr().err
    assert yaml.safe_load((out / "config.yaml").read_text())["lr"] == 0.1
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1


@pytest.mark.parametrize("cmd", ["train-teacher", "distill", "eval"])
def test_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    if cmd != "eval":
        for flag in ("--config", "--set", "--epochs", "--limit-train", "--resume", "--force", "--amp",
                     "--no-deterministic", "--milestones"):
            assert flag in text, flag
        assert ("--teacher " in text) == (cmd == "distill")
        assert ("--method-args" in text)


def test_teacher_not_needed_is_ignored_and_needed_is_required(data, tmp_path, capsys):
    rc = main(["distill", *common(data), "--model", TINY, "--method", "engine_probe_t", "--epochs", "1",
               "--out", str(tmp_path / "x")])
    assert rc == 2 and "needs a teacher; pass --teacher" in capsys.readouterr().err
    assert not (Path(tmp_path / "x") / "config.yaml").exists()
    rc = main(["distill", *common(data), "--model", TINY, "--method", "engine_probe", "--epochs", "1",
               "--teacher", "does/not/matter.pt", "--out", str(tmp_path / "y"), "--quiet"])
    assert rc == 0 and "uses no teacher; ignoring --teacher" in capsys.readouterr().err
