"""Validation split, selection on validation accuracy only, and ``semckd sweep``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from engine_helpers import TINY, make_fashion_mnist, register_probe_methods, register_tiny

from benchmarks import protocol
from semckd import engine
from semckd.cli import main as cli_main
from semckd.config import resolve_config
from semckd.data import build_splits, stratified_holdout
from semckd.errors import UserError
from semckd.report import build_report
from semckd.sweep import parse_grid, run_sweep, select_value, summarise

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    register_tiny()
    register_probe_methods()
    return str(make_fashion_mnist(tmp_path_factory.mktemp("fmnist"), n_train=200, n_test=64))


def _cfg(data_dir: str, out: Path, **kw):
    flags = dict(dataset="fashion_mnist", data_dir=data_dir, model=TINY, epochs=1, batch_size=32,
                 out=str(out), device="cpu", quiet=True, tensorboard=False, milestones=[],
                 method="engine_probe", val_split=40)
    flags.update(kw)
    return resolve_config("distill", flags=flags)[0]


# ---------------------------------------------------------------------- the split itself
def test_holdout_is_stratified_disjoint_and_fixed_by_its_own_seed():
    y = torch.arange(10).repeat_interleave(torch.tensor([50, 30, 20, 40, 60, 10, 25, 35, 15, 15]))
    tr, va = stratified_holdout(y, 60, seed=0)
    assert len(va) == 60 and len(tr) == len(y) - 60
    assert set(tr.tolist()).isdisjoint(va.tolist())
    assert sorted(tr.tolist() + va.tolist()) == list(range(len(y)))
    counts = torch.bincount(y[va], minlength=10)
    expected = torch.bincount(y, minlength=10).double() * 60 / len(y)
    assert (counts.double() - expected).abs().max() < 1  # each class its share (largest remainder)
    assert torch.equal(stratified_holdout(y, 60, seed=0)[1], va)
    assert not torch.equal(stratified_holdout(y, 60, seed=1)[1], va)
    assert torch.equal(tr, torch.sort(tr).values)  # the rest keeps its order (--limit-train = first N)
    with pytest.raises(UserError, match="leaves no training images"):
        stratified_holdout(y, len(y))
    with pytest.raises(UserError, match="one image of each"):
        stratified_holdout(y, 5)


def test_build_splits_holds_out_before_limit_and_ignores_the_run_seed(data_dir):
    a = build_splits("fashion_mnist", data_dir, 16, val_split=40, limit_train=100, seed=0)
    b = build_splits("fashion_mnist", data_dir, 16, val_split=40, limit_train=100, seed=7)
    assert a.info["num_train"] == 100 and a.info["num_val"] == 40 and a.val.num_samples == 40
    va = torch.cat([x for x, _, _ in a.val])
    assert torch.equal(va, torch.cat([x for x, _, _ in b.val]))  # same images for every training seed
    train_imgs = {bytes(t.numpy()) for t in a.train.images}
    assert not any(bytes(t.numpy()) in train_imgs for t in a.val.images)
    none = build_splits("fashion_mnist", data_dir, 16)
    assert none.val is None and none.info["num_train"] == 200


def test_imagefolder_validation_split(tmp_path):
    pytest.importorskip("PIL")
    from PIL import Image

    for split in ("train", "val"):
        for c in ("a", "b"):
            d = tmp_path / split / c
            d.mkdir(parents=True)
            for i in range(6):
                Image.new("RGB", (10, 10), (40 * i, 0, 0)).save(d / f"{i}.png")
    s = build_splits("imagefolder", str(tmp_path), 2, image_size=8, workers=0, val_split=4)
    assert s.info["num_train"] == 8 and s.val.num_samples == 4
    names = {Path(p).name + Path(p).parent.name for p, _ in s.val.dataset.samples}
    assert names.isdisjoint({Path(p).name + Path(p).parent.name for p, _ in s.train.dataset.samples})
    assert sorted(s.val.dataset.targets) == [0, 0, 1, 1] and not s.val.dataset.train


# ---------------------------------------------------------------------- engine: val drives, test records
def test_best_epoch_is_chosen_on_validation_accuracy_never_on_test(data_dir, tmp_path, monkeypatch):
    """Scripted accuracies where validation and test disagree: best.pt must follow validation."""
    real = engine.evaluate
    val_by_epoch, test_by_epoch = [50.0, 70.0, 60.0], [90.0, 10.0, 95.0]
    calls = {"val": 0, "test": 0}

    def scripted(model, loader, device, **kw):
        res = real(model, loader, device, **kw)
        which = "val" if loader.num_samples == 40 else "test"
        res["test_acc"] = (val_by_epoch if which == "val" else test_by_epoch)[calls[which]]
        calls[which] += 1
        return res

    monkeypatch.setattr(engine, "evaluate", scripted)
    out = tmp_path / "r"
    summary = engine.train(_cfg(data_dir, out, epochs=3))
    assert summary["selected_by"] == "val_acc" and summary["best_epoch"] == 2
    assert summary["best_val_acc"] == 70.0 and summary["best_acc"] == 10.0  # the test score of epoch 2
    assert torch.load(out / "best.pt", weights_only=True)["epoch"] == 2
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["val_acc"] for r in rows] == val_by_epoch and [r["test_acc"] for r in rows] == test_by_epoch
    assert [r["best_val_acc"] for r in rows] == [50.0, 70.0, 70.0]
    # resume keeps the validation-chosen best
    summary = engine.train(_cfg(data_dir, out, epochs=3, resume=True))
    assert summary["best_epoch"] == 2


def test_report_shows_validation_and_test_apart(data_dir, tmp_path):
    engine.train(_cfg(data_dir, tmp_path / "runs" / "a"))
    text = build_report([tmp_path / "runs"])
    assert "best val acc" in text.splitlines()[0] and "recorded, never used" in text


# ---------------------------------------------------------------------- sweep
def test_parse_grid():
    assert parse_grid(["beta=25,50", "mode=faithful"]) == {"beta": [25, 50], "mode": ["faithful"]}
    assert parse_grid(["layers=[1,2],[3]"]) == {"layers": [[1, 2], [3]]}
    for bad in (["beta"], ["beta="], ["beta=1,1"], []):
        with pytest.raises(UserError):
            parse_grid(bad)


def test_selection_reads_validation_only():
    """A value with the better test but worse validation accuracy must not be chosen."""
    points = [{"beta": 1}, {"beta": 2}]
    recs = [{"values": {"beta": 1}, "seed": s, "best_val_acc": 80.0 + s, "best_acc": 50.0} for s in (0, 1)]
    recs += [{"values": {"beta": 2}, "seed": s, "best_val_acc": 70.0 + s, "best_acc": 99.0} for s in (0, 1)]
    summary = summarise(recs, points)
    assert select_value(summary)["values"] == {"beta": 1}
    for r in recs:  # swapping the test numbers changes nothing
        r["best_acc"] = 100.0 - r["best_acc"]
    assert select_value(summarise(recs, points))["values"] == {"beta": 1}
    ties = summarise([{"values": p, "seed": 0, "best_val_acc": 5.0, "best_acc": 0.0} for p in points], points)
    assert select_value(ties)["values"] == {"beta": 1}  # first in grid order


def test_sweep_end_to_end_resumes_and_restarts(data_dir, tmp_path):
    base = _cfg(data_dir, tmp_path / "unused")
    out = tmp_path / "sweep"
    calls: list[tuple[str, bool, bool]] = []

    def counting(cfg, **kw):
        calls.append((Path(cfg.out).parent.name + "/" + Path(cfg.out).name, cfg.resume, cfg.force))
        return engine.train(cfg, **kw)

    res = run_sweep(base, {"weight": [0.1, 1.0]}, [0, 1], out, train_fn=counting, log=lambda s: None)
    assert len(calls) == 4 and all(not r and not f for _, r, f in calls)
    assert {r["label"] for r in res.summary} == {"weight=0.1", "weight=1.0"}
    assert res.selected is not None and res.selected["label"] in ("weight=0.1", "weight=1.0")
    best = max(res.summary, key=lambda r: r["val_mean"])
    assert res.selected["label"] == best["label"]
    saved = json.loads((out / "sweep.json").read_text())
    assert saved["selected"]["label"] == res.selected["label"] and len(saved["records"]) == 4
    assert "selected" in (out / "sweep.md").read_text()
    # the same sweep again: nothing is retrained
    calls.clear()
    run_sweep(base, {"weight": [0.1, 1.0]}, [0, 1], out, train_fn=counting, log=lambda s: None)
    assert calls == []
    # one more epoch: every cell resumes from its last.pt; a cell killed before its first checkpoint
    # (a folder without last.pt) is started again
    for f in (out / "weight=1.0" / "seed1").iterdir():
        f.unlink()
    (out / "weight=1.0" / "seed1" / "config.yaml").write_text("kind: distill\n")
    base2 = _cfg(data_dir, tmp_path / "unused", epochs=2)
    with pytest.raises(UserError, match="created for other settings.*epochs: 1 there, 2 here.*--study-name"):
        run_sweep(base2, {"weight": [0.1, 1.0]}, [0, 1], out, train_fn=counting, log=lambda s: None)
    assert calls == []
    res = run_sweep(base2, {"weight": [0.1, 1.0]}, [0, 1], out, train_fn=counting, log=lambda s: None,
                    study_name="two-epochs")
    assert sorted(calls) == sorted([("weight=0.1/seed0", True, False), ("weight=0.1/seed1", True, False),
                                    ("weight=1.0/seed0", True, False), ("weight=1.0/seed1", False, True)])
    assert all(len((Path(r["out"]) / "metrics.jsonl").read_text().splitlines()) == 2 for r in res.records)


def test_sweep_refuses_without_validation_split_and_bad_options(data_dir, tmp_path):
    with pytest.raises(UserError, match="--val-split"):
        run_sweep(_cfg(data_dir, tmp_path / "x", val_split=0), {"weight": [1]}, [0], tmp_path / "s")
    with pytest.raises(UserError, match="no option 'wieght'"):
        run_sweep(_cfg(data_dir, tmp_path / "x"), {"wieght": [1]}, [0], tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_sweep_cli(data_dir, tmp_path, capsys):
    rc = cli_main(["sweep", "--dataset", "fashion_mnist", "--data-dir", data_dir, "--model", TINY,
                   "--method", "engine_probe", "--grid", "weight=0.1,1", "--seeds", "0", "--val-split", "40",
                   "--epochs", "1", "--batch-size", "32", "--milestones", "--device", "cpu", "--quiet",
                   "--no-tensorboard", "--out", str(tmp_path / "sw")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "by mean validation accuracy" in out and (tmp_path / "sw" / "sweep.md").is_file()
    rc = cli_main(["sweep", "--dataset", "fashion_mnist", "--data-dir", data_dir, "--model", TINY,
                   "--method", "engine_probe", "--grid", "weight=1", "--out", str(tmp_path / "sw2")])
    assert rc == 2 and "--val-split" in capsys.readouterr().err


def test_sweep_plot(data_dir, tmp_path):
    pytest.importorskip("matplotlib")
    res = run_sweep(_cfg(data_dir, tmp_path / "u"), {"weight": [0.1, 1.0]}, [0], tmp_path / "sw",
                    log=lambda s: None)
    assert res.selected and (tmp_path / "sw" / "sweep.png").stat().st_size > 1000


# ---------------------------------------------------------------------- the benchmark protocol's logic
def test_protocol_selects_on_validation_and_tables_three_seeds():
    grid = protocol.grid_for(protocol.TABLES["short"], "semckd")
    assert grid == {"beta": [25.0, 100.0, 400.0, 1600.0]}  # the paper's value is in every grid
    for m in protocol.TABLES["short"]["methods"]:
        key, paper, _ = protocol.METHODS[m]
        assert key is None or paper in protocol.grid_for(protocol.TABLES["short"], m)[key]
        assert key is None or paper in protocol.grid_for(protocol.TABLES["large"], m)[key]
    recs = [{"method": "semckd", "values": {"beta": b}, "seed": 0, "best_val_acc": v, "best_acc": t}
            for b, v, t in ((25.0, 80.0, 70.0), (100.0, 85.0, 60.0), (400.0, 70.0, 99.0),
                            (1600.0, 60.0, 99.0))]
    assert protocol.selected_values(recs, "semckd", grid) == {"beta": 100.0}
    assert protocol.selected_values(recs[:3], "semckd", grid) is None  # tuning not finished
    recs += [{"method": "semckd", "values": {"beta": 100.0}, "seed": s, "best_val_acc": 84.0,
              "best_acc": 61.0 + s, "train_time_s": 10.0} for s in (1, 2)]
    recs += [{"method": "vanilla", "values": {}, "seed": s, "best_val_acc": 70.0, "best_acc": 55.0,
              "train_time_s": 5.0} for s in (0, 1, 2)]
    text = protocol.table_md("short", recs)
    row = next(line for line in text.splitlines() if line.startswith("| semckd |"))
    assert "beta=100.0" in row and "3/3" in row and "61.67 ± 1.53" in row  # seed 0 (60) is in the mean
    assert "60.00, 62.00, 63.00" in row


def test_protocol_smoke_refuses_to_mix_budgets():
    """A smoke budget (--epochs) needs its own --results, so it never lands in the real table."""
    r = subprocess.run([sys.executable, "-m", "benchmarks", "protocol", "--table", "short", "--epochs", "1"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "--results" in r.stderr and "Traceback" not in r.stderr


def test_protocol_by_file_path_points_at_the_one_entry():
    """``python3 benchmarks/protocol.py`` (older notes) trains nothing: one line naming the package entry
    with the same flags, exit 2 (only that entry checks that ``semckd`` is this checkout's)."""
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "protocol.py"), "--table", "short",
                        "--report"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and r.stdout == "", r.stderr
    assert r.stderr.splitlines() == [r.stderr.strip()]
    assert "`python -m benchmarks protocol --table short --report`" in r.stderr


def test_protocol_studies_run_every_point_and_pair_seeds():
    """Study tables (warm-up, precision) select nothing: every grid point gets 3 seeds, run settings such
    as ``amp`` reach the run config (not the method options), and differences are paired by seed."""
    table = protocol.TABLES["bf16"]
    cfg = protocol.cell_config(table, "semckd", {"amp": "bf16"}, 1, Path("/tmp/unused"))
    assert cfg.amp == "bf16" and cfg.method_args == {"beta": 100.0} and cfg.seed == 1
    short = protocol.cell_config(protocol.TABLES["short"], "semckd", {"beta": 25.0}, 0, Path("/x"))
    assert short.amp == "none"
    recs = [{"method": "semckd", "values": {"amp": a}, "seed": s, "best_val_acc": 80.0,
             "best_acc": 80.0 + s + (0.5 if a == "bf16" else 0.0), "train_time_s": 1.0}
            for a in ("none", "bf16") for s in (0, 1, 2)]
    recs[4]["best_acc"] = None  # bf16 seed 1 diverged: missing from the pairing, not a zero
    text = protocol.table_md("bf16", recs)
    assert "| semckd beta=100.0, amp=bf16 |" in text and "| semckd beta=100.0, amp=none |" in text
    paired = next(line for line in text.splitlines() if line.startswith("Paired"))
    assert "seed 0: +0.50" in paired and "seed 2: +0.50" in paired and "seed 1" not in paired
    w = protocol.table_md("warmup", [dict(r, values={"beta_warmup": 0 if r["values"]["amp"] == "none" else 2})
                                     for r in recs])
    assert "beta_warmup=2" in w and "Paired test difference" in w


def test_protocol_pairs_study_rows_within_a_method():
    recs = [{"method": m, "values": {"amp": a}, "seed": s, "best_val_acc": 1.0, "train_time_s": 1.0,
             "best_acc": {"semckd": 80.0, "vanilla": 70.0}[m] + (1.0 if a == "bf16" else 0.0)}
            for m in ("semckd", "vanilla") for a in ("none", "bf16") for s in (0, 1, 2)]
    paired = [x for x in protocol.table_md("bf16", recs).splitlines() if x.startswith("Paired")]
    assert len(paired) == 2 and all("seed 0: +1.00" in x for x in paired)
    assert "vanilla, amp=bf16 − vanilla, amp=none" in paired[1]


def test_protocol_row_tables_tune_on_validation_and_pair_ablations():
    """Row tables (attention ablation, cross-architecture): untuned rows get 3 seeds, tuned rows are
    selected on seed-0 validation only, a row spelling a default shares the paper row's cells, per-pair
    settings reach the config, and the ablation rows are paired by seed with learned SemCKD."""
    table = protocol.TABLES["attention"]
    learned, uniform, _, tuned = table["rows"]
    assert protocol.row_points(learned) == ([{}], False)
    points, is_tuned = protocol.row_points(tuned)
    assert is_tuned and {} in points  # τ = 1 is the paper's cell
    cfg = protocol.cell_config(table, "semckd", {"attention": "uniform"}, 2, Path("/x"))
    assert cfg.method_args == {"beta": 100.0, "attention": "uniform"} and cfg.model == "resnet8"
    assert protocol.row_plan([], tuned) == [(p, 0) for p in points]  # tuning first
    recs = [{"method": "semckd", "values": v, "seed": s, "best_val_acc": 80.0 + s,
             "best_acc": 70.0 + s + d, "train_time_s": 1.0}
            for v, d in (({}, 0.0), ({"attention": "uniform"}, 0.5), ({"attention": "one_to_one"}, -1.0))
            for s in (0, 1, 2)]
    # τ = 0.25 has the best validation (but the worst test) accuracy: it must be the selection
    recs += [{"method": "semckd", "values": {"attention_temperature": t}, "seed": 0, "best_val_acc": v,
              "best_acc": a, "train_time_s": 1.0} for t, v, a in ((0.25, 90.0, 10.0), (4.0, 70.0, 99.0))]
    assert protocol.row_selected(recs, tuned) == {"attention_temperature": 0.25}
    assert protocol.row_plan(recs, tuned)[-2:] == [({"attention_temperature": 0.25}, 1),
                                                   ({"attention_temperature": 0.25}, 2)]
    text = protocol.table_md("attention", recs, table)
    assert "| semckd uniform | — | — | 3/3 |" in text
    paired = [x for x in text.splitlines() if x.startswith("Paired")]
    assert "semckd uniform − semckd learned (paper): seed 0: +0.50" in paired[0]
    assert "seed 0: -1.00" in paired[1]
    cross = protocol.TABLES["cross_wrn_40_2_mobilenetv2"]
    ccfg = protocol.cell_config(cross, "semckd", {"attention": "one_to_one", "beta": 25.0}, 0, Path("/x"))
    assert ccfg.model == "mobilenetv2" and ccfg.lr == 0.01
    assert ccfg.teacher.endswith("fashion_mnist_wrn_40_2.pt")
    grids = [protocol.row_points(r)[0] for r in cross["rows"]]
    assert all(len(g) == 3 for g in grids[1:])  # the same budget for every tuned row
    shuffle = protocol.TABLES["cross_wrn_40_2_shufflenetv1"]
    scfg = protocol.cell_config(shuffle, "semckd", {"attention": "uniform", "beta": 100.0}, 1, Path("/x"))
    assert scfg.model == "shufflenetv1" and scfg.lr == 0.01 and scfg.seed == 1
    assert scfg.teacher.endswith("fashion_mnist_wrn_40_2.pt")
    assert [r[0] for r in shuffle["rows"]] == [r[0] for r in cross["rows"]]  # the same rows as the first pair


def test_protocol_worker_waits_for_held_cells_then_runs_test_seeds(tmp_path, monkeypatch):
    """A worker that finds a tuning cell held by another worker (a live trial of the table's study)
    neither skips the method's test seeds nor trains the held cell twice: it waits, and takes the cell
    over once its holder gives it up; a cell recorded in the results file (by any protocol.py) is never
    rerun."""
    results, out = tmp_path / "r.jsonl", tmp_path / "runs"
    trained: list[tuple] = []

    def fake_cell(name, table, method, values, seed, out_dir, results_path, info):
        trained.append((method, values.get("beta"), seed))
        rec = {"table": name, "method": method, "values": values, "label": "", "seed": seed,
               "best_val_acc": 80.0 + (values.get("beta") or 0.0), "best_acc": 70.0, "train_time_s": 1.0}
        protocol.append_result(results_path, rec)
        return rec

    monkeypatch.setattr(protocol, "run_cell", fake_cell)
    grid = protocol.grid_for(protocol.TABLES["large"], "crd")["beta"]
    # an older worker already recorded the first tuning cell (a line as the old protocol.py appends it)
    protocol.append_result(results, {"table": "large", "method": "crd", "values": {"beta": grid[0]},
                                     "label": "x", "seed": 0, "best_val_acc": 1.0, "best_acc": 1.0,
                                     "train_time_s": 1.0})
    other = protocol.open_study("large", protocol.TABLES["large"], out, None)  # another worker's study
    holder = other.claim(f"crd__beta={grid[-1]}__seed0")
    assert holder is not None
    sleeps = []

    def fake_sleep(s):  # the holder gives its cell up while the worker waits
        sleeps.append(s)
        holder.release("test")

    monkeypatch.setattr(protocol.time, "sleep", fake_sleep)
    assert protocol.main(["--table", "large", "--methods", "crd", "--results", str(results),
                          "--out-dir", str(out), "--poll", "0.5"]) == 0
    assert sleeps == [0.5]
    want = [("crd", b, 0) for b in grid[1:]] + [("crd", grid[-1], s) for s in (1, 2)]
    assert sorted(trained) == sorted(want)
    assert (out / "large" / "study.journal").is_file() and not (out / "large" / ".claims").exists()
    done = other.done_trials()
    assert sorted(done) == sorted(f"crd__beta={b}__seed{s}" for b, s in
                                  [(b, 0) for b in grid[1:]] + [(grid[-1], 1), (grid[-1], 2)])
    trained.clear()  # the same command again: everything is recorded, nothing runs
    assert protocol.main(["--table", "large", "--methods", "crd", "--results", str(results),
                          "--out-dir", str(out)]) == 0
    assert trained == []


def test_protocol_bad_storage_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "benchmarks", "protocol", "--table", "short", "--methods", "kd",
                        "--results", str(tmp_path / "r.jsonl"), "--out-dir", str(tmp_path),
                        "--storage", "ftp://nowhere"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "unknown kind" in r.stderr


@pytest.mark.parametrize("name", ["short", "large", "warmup", "bf16", "attention",
                                  "cross_wrn_40_2_mobilenetv2", "cross_wrn_40_2_shufflenetv1"])
def test_committed_tables_are_what_their_results_give(name):
    """The tables in benchmarks/results are regenerated from the recorded runs, never edited by hand."""
    res = ROOT / "benchmarks" / "results" / f"fmnist_{name}.jsonl"
    recs = protocol.read_results(res)
    assert recs and all(r["table"] == name for r in recs)
    assert protocol.table_md(name, recs, protocol.TABLES[name]) == res.with_suffix(".md").read_text()


def test_readme_headline_numbers_come_from_the_protocol_tables():
    """Every test accuracy in the README's headline table is a row of a recorded protocol table."""
    import re

    readme = (ROOT / "README.md").read_text()
    head = readme[readme.index("**When SemCKD pays off"):readme.index("## Contents")]
    rows = {"short": [], "large": []}
    for line in head.splitlines():
        for name in rows:
            if line.startswith(f"| {name}:"):
                rows[name] = re.findall(r"\d+\.\d\d ± \d+\.\d\d", line)
    for name, cells in rows.items():
        assert len(cells) >= 6, name
        md = (ROOT / "benchmarks" / "results" / f"fmnist_{name}.md").read_text()
        test_cells = {line.split("|")[6].strip() for line in md.splitlines()[2:] if line.startswith("| ")}
        assert set(cells) <= test_cells, (name, set(cells) - test_cells)


def test_readme_attention_numbers_come_from_the_ablation_table():
    """The README's "what the learned attention is worth" figures are cells of the recorded studies (the
    ResNet ablation and the cross-architecture table)."""
    import re

    readme = (ROOT / "README.md").read_text()
    para = readme[readme.index("**What the learned attention is worth"):readme.index("## Contents")]
    md = "".join((ROOT / "benchmarks" / "results" / f"fmnist_{t}.md").read_text()
                 for t in ("attention", "cross_wrn_40_2_mobilenetv2", "cross_wrn_40_2_shufflenetv1"))
    found = re.findall(r"\d+\.\d\d ± \d+\.\d\d", para)
    assert len(found) >= 4
    for cell in found:
        assert cell in md or cell.replace("+", "") in md, cell
