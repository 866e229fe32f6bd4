"""Nothing lost, no dead ends (#14): what a run folder holds after faults, bad input and resumes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from engine_helpers import (
    TINY,
    tiny_distill_setup,
)

from semckd.cli import main
from semckd.evaluate import evaluate_checkpoint
from semckd.report import build_report, group_runs, load_run
from semckd.runfolder import MetricsLog

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return tiny_distill_setup(tmp_path_factory.mktemp("runfolder"))


def distill(data: str, teacher: str, out: Path, *extra: str, method: str = "kd",
            epochs: int = 1) -> list[str]:
    return ["distill", "--dataset", "fashion_mnist", "--data-dir", data, "--model", TINY, "--teacher",
            teacher, "--method", method, "--epochs", str(epochs), "--batch-size", "32", "--device", "cpu",
            "--quiet", "--no-tensorboard", "--out", str(out), *extra]


def test_poisoned_state_is_never_called_a_good_checkpoint(setup, capsys):
    """lr 100: the loss stays finite while BatchNorm statistics overflow to inf."""
    root, data, teacher = setup
    out = root / "lr100"
    assert main(distill(data, teacher, out, "--lr", "100", epochs=3)) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "model state became non-finite" in err and "running_var" in err, err
    assert "without writing that epoch's checkpoint" in err and "(epoch 1) is kept" in err, err
    ck = torch.load(out / "last.pt", weights_only=True)
    assert ck["epoch"] == 1
    tensors = [*ck["student"].values(), *(t for s in ck["optimizer"]["state"].values() for t in s.values())]
    assert all(torch.isfinite(t).all() for t in tensors if t.is_floating_point())
    res = evaluate_checkpoint(str(out / "last.pt"), device="cpu", amp="none")
    assert torch.isfinite(torch.tensor(res["test_loss"]))
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1]


def test_metrics_jsonl_is_strict_json_and_readers_take_null(tmp_path):
    m = MetricsLog(tmp_path, True, False, None)
    m.write({"epoch": 1, "test_loss": float("nan"), "test_acc": 10.0, "extras": {"a": [float("inf"), 1.0]}})
    line = (tmp_path / "metrics.jsonl").read_text()

    def refuse(name: str) -> None:
        raise ValueError(f"bare {name} in metrics.jsonl")

    rec = json.loads(line, parse_constant=refuse)
    assert rec["test_loss"] is None and rec["extras"]["a"] == [None, 1.0]
    assert load_run(tmp_path).final_acc == 10.0


def test_kill_before_the_first_checkpoint_is_no_dead_end(setup, capsys):
    """A NaN in epoch 1 leaves config.yaml but no checkpoint: a plain rerun (even with a fixed lr) and
    --resume both start over instead of pointing at each other."""
    root, data, teacher = setup
    out = root / "nockpt"
    bad = distill(data, teacher, out, "--method-args", "blowup_epoch=1", method="engine_probe_t")
    assert main(bad) == 2
    assert (out / "config.yaml").exists() and not (out / "last.pt").exists()
    capsys.readouterr()
    assert main(distill(data, teacher, out, method="engine_probe_t")) == 0  # the fixed command
    assert "holds no checkpoint" in capsys.readouterr().err
    assert (out / "last.pt").exists()
    # --resume where nothing was ever written starts too (one command for first start and restart)
    fresh = root / "fresh"
    assert main(distill(data, teacher, fresh, "--resume")) == 0
    assert "no checkpoint in" in capsys.readouterr().err
    assert torch.load(fresh / "last.pt", weights_only=True)["epoch"] == 1


def test_kill_between_checkpoint_writes_loses_no_metrics_row(setup, tmp_path):
    """Killed after last.pt, before best.pt and metrics.jsonl were written (and with temp files left):
    the resumed run has every row, a right best.pt and no stray files."""
    root, data, teacher = setup
    straight, out = tmp_path / "straight", tmp_path / "cut"
    args = ["--deterministic", "--milestones", "2"]
    assert main(distill(data, teacher, straight, *args, epochs=2)) == 0
    assert main(distill(data, teacher, out, *args, epochs=2)) == 0
    # roll the folder back to the moment after epoch 1's last.pt: stale best.pt/metrics, temp files
    ck1 = torch.load(straight / "last.pt", weights_only=True)  # epoch 2 state, to craft epoch 1's
    assert main(distill(data, teacher, tmp_path / "e1", *args, epochs=1)) == 0
    (out / "last.pt").write_bytes((tmp_path / "e1" / "last.pt").read_bytes())
    (out / "best.pt").unlink()
    (out / "metrics.jsonl").write_text("")
    (out / "run.json").unlink()
    for junk in (".best.pt.abc123.tmp.pt", ".last.pt.def456.tmp.pt", ".config.yaml.x1.tmp.yaml"):
        (out / junk).write_bytes(b"partial")
    assert main(distill(data, teacher, out, *args, "--resume", epochs=2)) == 0
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "config.yaml", "last.pt", "metrics.jsonl",
                                                     "run.json"]

    def rows(p: Path) -> list[dict]:
        return [{k: v for k, v in json.loads(x).items() if k not in ("epoch_time_s", "images_per_s")}
                for x in (p / "metrics.jsonl").read_text().splitlines()]

    assert rows(out) == rows(straight) and len(rows(out)) == 2
    a, b = (torch.load(p / "last.pt", weights_only=True) for p in (out, straight))
    assert all(torch.equal(a["student"][k], b["student"][k]) for k in b["student"])
    assert ck1["best_epoch"] == torch.load(out / "best.pt", weights_only=True)["epoch"]


def test_resume_on_another_process_count_says_what_differs(setup, tmp_path, capsys):
    """Faithful SemCKD's MLPs are sized by the per-process batch: a 2-process checkpoint (batch 16 each)
    cannot continue in 1 process (batch 32), and the error says how to resume instead of a traceback."""
    root, data, teacher = setup
    out = tmp_path / "ddp"
    assert main(distill(data, teacher, out, "--batch-size", "16", "--method-args", "beta=1",
                        method="semckd")) == 0
    # make it what `torchrun --nproc-per-node 2 ... --batch-size 32` writes: same files, 2 processes
    ck = torch.load(out / "last.pt", weights_only=True)
    ck["config"]["batch_size"] = 32
    ck["world_size"] = 2
    ck["rng_per_rank"] = [ck["rng"], ck["rng"]]
    torch.save(ck, out / "last.pt")
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    cfg["batch_size"] = 32
    (out / "config.yaml").write_text(yaml.safe_dump(cfg))
    capsys.readouterr()
    assert main(["distill", "--out", str(out), "--resume", "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "written by 2 process(es) (batch 16 each) but this run has 1 (batch 32 each)" in err
    assert "torchrun --nproc-per-node 2" in err


def test_resume_accepts_the_same_teacher_spelled_relative(setup, tmp_path, monkeypatch):
    root, data, teacher = setup
    out = tmp_path / "rel"
    assert main(distill(data, teacher, out)) == 0
    monkeypatch.chdir(Path(teacher).parent)
    assert main(distill(data, Path(teacher).name, out, "--resume", epochs=2)) == 0
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 2


def test_batch_free_semckd_trains_with_batch_size_one(setup, tmp_path):
    root, data, teacher = setup
    out = tmp_path / "b1"
    assert main(distill(data, teacher, out, "--batch-size", "1", "--limit-train", "3", "--method-args",
                        "mode=batch_free", method="semckd")) == 0
    row = json.loads((out / "metrics.jsonl").read_text())
    assert row["train_images"] == 3 and "train_semckd" in row


@pytest.mark.parametrize("bad", ["nowhere", "afile"])
@pytest.mark.parametrize("cmd", ["distill", "eval"])
def test_a_named_data_dir_that_is_wrong_is_an_error_not_the_system_copy(setup, tmp_path, capsys, bad, cmd):
    root, data, teacher = setup
    (tmp_path / "afile").write_text("x")
    path = str(tmp_path / bad)
    if cmd == "distill":
        argv = distill(path, teacher, tmp_path / "o")
    else:
        argv = ["eval", "--checkpoint", teacher, "--dataset", "fashion_mnist", "--data-dir", path,
                "--device", "cpu"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert ("does not exist" if bad == "nowhere" else "is a file") in err and "--data-dir" in err
    assert not (tmp_path / "o" / "config.yaml").exists()


def _fake_run(d: Path, seed: int, acc: float, **cfg) -> Path:
    d.mkdir(parents=True)
    base = {"kind": "distill", "dataset": "fashion_mnist", "model": "resnet8", "method": "semckd",
            "teacher": "runs/t/best.pt", "teacher_model": "resnet20", "epochs": 10, "limit_train": None,
            "lr": 0.05, "seed": seed, "out": str(d), "device": "cpu"}
    (d / "config.yaml").write_text(yaml.safe_dump({**base, **cfg}))
    (d / "run.json").write_text(json.dumps({"kind": "distill", "dataset": "fashion_mnist", "model": "resnet8",
                                            "method": "semckd", "teacher_model": "resnet20", "best_acc": acc,
                                            "final_acc": acc, "seed": seed}))
    return d


def test_report_groups_only_runs_that_differ_by_seed_alone(tmp_path):
    runs = [_fake_run(tmp_path / "a", 0, 80.0), _fake_run(tmp_path / "b", 1, 82.0, device="cuda"),
            _fake_run(tmp_path / "c", 0, 10.0, epochs=1), _fake_run(tmp_path / "d", 0, 60.0, limit_train=500),
            _fake_run(tmp_path / "e", 0, 70.0, teacher="runs/t2/best.pt"),
            _fake_run(tmp_path / "f", 0, 81.0)]  # the same setting and seed as "a": a repeat, not a seed
    groups = group_runs(load_run(r) for r in runs)
    sizes = sorted((g.n, g.method) for g in groups)
    assert [n for n, _ in sizes] == [1, 1, 1, 1, 2], sizes
    two = next(g for g in groups if g.n == 2)
    assert sorted(r.name for r in two.runs) in (["a", "b"], ["b", "f"])
    labels = [g.method for g in groups]
    assert any("epochs=1" in m for m in labels) and any("limit_train=500" in m for m in labels)
    assert len(set(labels)) == len(labels)
    assert "| 5 |" not in build_report([str(tmp_path)]) and "| 6 |" not in build_report([str(tmp_path)])


def test_all_run_files_share_one_mode(setup, tmp_path):
    root, data, teacher = setup
    out = tmp_path / "modes"
    old = os.umask(0o022)
    try:
        assert main(distill(data, teacher, out)) == 0
    finally:
        os.umask(old)
    assert {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()} == dict.fromkeys(
        ["best.pt", "config.yaml", "last.pt", "metrics.jsonl", "run.json"], 0o644)


def test_a_long_run_says_how_long_after_its_first_epoch():
    from semckd.engine import eta_note

    assert eta_note(239, 10.0, "cpu") is None  # 40 minutes: no warning
    note = eta_note(239, 120.0, "cpu")
    assert note is not None and "about 8.0 h on cpu" in note and "--epochs" in note
    assert "--epochs" not in (eta_note(239, 120.0, "cuda:0") or "")


def test_checkpoint_record_is_what_the_engine_writes_and_readers_take_it_back(setup):
    """last.pt is a CheckpointRecord: the same keys in the record's order; ``from_dict`` reads it (and
    foreign dicts, leniently) and ``checkpoint_meta`` reads the network's description through it."""
    from semckd.runfolder import FORMAT, CheckpointRecord, checkpoint_meta

    root, data, teacher = setup
    out = root / "record"
    assert main(distill(data, teacher, out)) == 0
    ck = torch.load(out / "last.pt", weights_only=True)
    assert list(ck) == list(CheckpointRecord().to_dict())
    rec = CheckpointRecord.from_dict(ck)
    assert (rec.format, rec.epoch, rec.model, rec.method, rec.world_size) == (FORMAT, 1, TINY, "kd", 1)
    assert rec.to_dict().keys() == ck.keys() and rec.student is ck["student"]  # not copied
    assert len(rec.metrics) == 1 and rec.metrics[0]["epoch"] == 1
    meta = checkpoint_meta(ck)
    assert (meta.model, meta.num_classes, meta.in_channels, meta.notes) == (TINY, 10, 1, [])
    foreign = CheckpointRecord.from_dict({"model": "resnet8", "state_dict": {}, "epoch": 3})
    assert (foreign.format, foreign.model, foreign.epoch, foreign.student) == ("", "resnet8", 3, None)


def test_a_damaged_resume_checkpoint_is_one_line_naming_what_is_missing(setup, capsys):
    root, data, teacher = setup
    out = root / "damaged"
    assert main(distill(data, teacher, out)) == 0
    ck = torch.load(out / "last.pt", weights_only=True)
    del ck["optimizer"]
    torch.save(ck, out / "last.pt")
    assert main(distill(data, teacher, out, "--resume", epochs=2)) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "has no 'optimizer'" in err and "--force" in err, err
