"""The GPU check's CPU-side logic (``python -m benchmarks gpu_check``): it must be right the first time it
meets a GPU, since GPU time is lent rarely and briefly. Refusal, dry-run commands (validated against the
real parsers), step running with failures/timeouts, and the summary built from a real bench JSON."""

from __future__ import annotations

import copy
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks import gpu_check as gc

ROOT = Path(__file__).resolve().parent.parent
WRAPPER = ROOT / "benchmarks" / "gpu_check.sh"
# refuses even on a GPU box; PYTHON: the wrapper starts this interpreter, not PATH's python3
# (tests/test_launch.py)
NO_GPU_ENV = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT), "PYTHON": sys.executable}



def py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


# ------------------------------------------------------------------------------ refusal and dry run
def test_refuses_without_cuda_in_one_line(tmp_path):
    assert os.access(WRAPPER, os.X_OK)
    out = tmp_path / "o"
    p = subprocess.run([str(WRAPPER), "--out", str(out)], capture_output=True, text=True, env=NO_GPU_ENV,
                       timeout=60)
    assert p.returncode == 2
    assert p.stderr.splitlines() == [gc.NO_CUDA]
    assert "no CUDA device visible; run this on a GPU machine" in p.stderr
    assert p.stdout == "" and "Traceback" not in p.stderr
    assert not out.exists()  # nothing started, nothing written


def _dry_run_steps(text: str) -> dict[str, dict]:
    """``[i] name (...): title`` headers with their indented ``$ command`` / note lines."""
    steps: dict[str, dict] = {}
    cur = None
    for line in text.splitlines():
        if line.startswith("["):
            name = line.split("] ", 1)[1].split(" ", 1)[0].rstrip(":")
            cur = steps[name] = {"header": line, "cmds": [], "notes": []}
        elif cur is not None and line.startswith("    $ "):
            cur["cmds"].append(shlex.split(line[6:]))
        elif cur is not None and line.startswith("    "):
            cur["notes"].append(line.strip())
    return steps


def _after(cmd: list[str], flag: str) -> str:
    return cmd[cmd.index(flag) + 1]


def test_dry_run_lists_all_five_steps_with_their_commands(tmp_path):
    out = tmp_path / "o"
    p = subprocess.run([str(WRAPPER), "--dry-run", "--out", str(out)], capture_output=True, text=True,
                       env=NO_GPU_ENV, timeout=60)
    assert p.returncode == 0, p.stderr
    assert not out.exists()  # a dry run writes nothing
    steps = _dry_run_steps(p.stdout)
    assert list(steps) == ["cuda-tests", "bench", "ddp", "epoch", "summary"]
    assert [s["header"][:3] for s in steps.values()] == ["[1]", "[2]", "[3]", "[4]", "[5]"]

    (tests,) = steps["cuda-tests"]["cmds"]
    assert tests[1:3] == ["-m", "pytest"]
    assert tests[tests.index("pytest") + 1:tests.index("pytest") + 3] == ["-m", "cuda"]

    (bench,) = steps["bench"]["cmds"]
    assert bench[1:4] == ["-m", "benchmarks", "bench"]
    assert _after(bench, "--pairs").split(",") == ["cifar100", "fmnist"]
    assert _after(bench, "--amp").split(",") == ["auto", "fp32"]
    assert "reference" in _after(bench, "--methods").split(",")
    assert _after(bench, "--device") == "cuda"
    assert Path(_after(bench, "--json")).parent == out

    (ddp,) = steps["ddp"]["cmds"]
    assert ddp[1:3] == ["-m", "torch.distributed.run"]  # torchrun's module
    assert _after(ddp, "--nproc_per_node") == "2"
    at = ddp.index("--nproc_per_node") + 2
    assert ddp[at:at + 3] == ["-m", "semckd", "distill"]
    assert _after(ddp, "--device") == "cuda" and _after(ddp, "--epochs") == "1"
    assert "backend nccl" in steps["ddp"]["header"]
    assert "would be skipped here: needs 2 GPUs (0 visible)" in steps["ddp"]["notes"]

    (epoch,) = steps["epoch"]["cmds"]
    assert epoch[1:4] == ["-m", "benchmarks", "epoch"] and _after(epoch, "--device") == "cuda"
    assert Path(_after(epoch, "--json")).parent == out
    assert str(out / "summary.json") in steps["summary"]["header"]


def test_planned_commands_parse_with_the_real_parsers(tmp_path, monkeypatch):
    """A flag typo would only show on the GPU machine: parse every planned command here instead."""
    from benchmarks import epoch
    from benchmarks.bench.cli import build_parser as bench_parser
    from semckd.cli import build_parser

    steps = {s.name: s for s in gc.plan(gc.Context(out=tmp_path, gpus=2, fmnist_dir=tmp_path / "fm"))}
    assert steps["ddp"].skip is None and steps["ddp"].env == {"NCCL_DEBUG": "VERSION"}
    parser = build_parser()
    b = bench_parser().parse_args(steps["bench"].cmds[0][4:])
    assert (b.pairs, b.amp, b.device) == ("cifar100,fmnist", "auto,fp32", "cuda")
    assert b.methods.split(",") == ["vanilla", "kd", "semckd", "reference"]
    ddp = steps["ddp"].cmds[0]
    d = parser.parse_args(ddp[ddp.index("semckd") + 1:])
    assert (d.command, d.device, d.model) == ("distill", "cuda", "resnet8")
    assert (str(d.epochs), str(d.limit_train)) == ("1", "2048")  # config flags stay strings until resolved
    assert Path(d.teacher).is_file() and d.data_dir == str(tmp_path / "fm")

    seen = {}

    class Parsed(Exception):
        pass

    def stop(spec):
        seen["device"] = spec
        raise Parsed

    monkeypatch.setattr(epoch, "resolve_device", stop)  # the first thing main does after parsing
    with pytest.raises(Parsed):
        epoch.main(steps["epoch"].cmds[0][4:])
    assert seen == {"device": "cuda"}

    # the pytest selection is not empty: the marker exists and marks at least the CUDA loader test
    sel = steps["cuda-tests"].cmds[0] + ["--co"]
    p = subprocess.run(sel, capture_output=True, text=True, env=NO_GPU_ENV, cwd=ROOT, timeout=120)
    assert p.returncode == 0, p.stdout[-2000:]
    assert "test_device_loader_cuda_matches_cpu" in p.stdout and "PytestUnknownMarkWarning" not in p.stdout


def test_timeouts_fit_the_eight_minutes():
    steps = gc.plan(gc.Context(out=Path("/x"), gpus=2))
    assert sum(s.timeout_s for s in steps) <= gc.BUDGET_S < 8 * 60 - 10
    assert all(s.timeout_s > 0 for s in steps)


# ---------------------------------------------------------------------------------- running steps
def test_failing_and_timed_out_steps_are_marked_and_later_steps_still_run(tmp_path):
    marker, orphan = tmp_path / "later_ran", tmp_path / "orphan_wrote"
    child = f"import time; time.sleep(2); open({str(orphan)!r}, 'w').write('x')"
    steps = [
        gc.Step("good", "prints", [py("print('hello')")], 10,
                figures=lambda _o, log: {"said_hello": "hello" in log}),
        gc.Step("fails", "exit 3", [py("print('boom'); raise SystemExit(3)"), py("print('never')")], 10),
        gc.Step("hangs", "sleeps past its timeout, with a child",
                [py(f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {child!r}]); "
                    "time.sleep(60)")], 1.0),
        gc.Step("ddp", "needs GPUs", [py("raise SystemExit(1)")], 10, skip="needs 2 GPUs (1 visible)"),
        gc.Step("later", "still runs", [py(f"open({str(marker)!r}, 'w').write('x')")], 10),
        gc.Step("bad-figures", "exit 0 but the check objects", [py("pass")], 10,
                figures=lambda _o, _l: {"passed": 0}, check=gc.pytest_check),
        gc.Step("no-output", "exit 0 but its JSON is missing", [py("pass")], 10,
                figures=lambda o, _l: gc.bench_figures(o / "missing.json")),
    ]
    said: list[str] = []
    t0 = time.perf_counter()
    res = {r.name: r for r in gc.run_steps(steps, tmp_path, budget_s=60, say=said.append)}
    assert time.perf_counter() - t0 < 20
    assert [(r.status, r.reason) for r in res.values()] == [
        ("ok", ""), ("FAILED", "exit status 3"), ("FAILED", "timed out after 1.0 s"),
        ("skipped", "needs 2 GPUs (1 visible)"), ("ok", ""), ("FAILED", "no CUDA test passed"),
        ("FAILED", res["no-output"].reason)]
    assert res["no-output"].reason.startswith("could not read its figures: FileNotFoundError")
    assert res["good"].figures == {"said_hello": True}
    log = Path(res["fails"].log).read_text()
    assert "boom" in log and "never" not in log  # a step stops at its first failing command
    assert res["hangs"].wall_s < 8 and marker.exists()
    assert res["ddp"].wall_s == 0 and res["ddp"].log == ""
    assert any("| boom" in s for s in said)  # a failure's log tail is shown at once
    time.sleep(2.5)
    assert not orphan.exists()  # the timed-out step's whole process group was killed


def test_the_overall_budget_cuts_a_step_and_fails_the_rest(tmp_path):
    steps = [gc.Step("slow", "", [py("import time; time.sleep(30)")], 30),
             gc.Step("after", "", [py("pass")], 30)]
    res = gc.run_steps(steps, tmp_path, budget_s=1.5, say=lambda s: None)
    assert (res[0].status, res[0].reason) == ("FAILED", "timed out after 1.5 s")  # min(30, what was left)
    assert res[0].wall_s < 6
    assert (res[1].status, res[1].reason) == ("FAILED", "not run: the 1.5 s budget was spent")


def test_main_writes_the_summary_and_exits_1_when_a_step_failed(tmp_path, capsys):
    seen = {}

    def fake_plan(ctx):
        seen["ctx"] = ctx
        return [gc.Step("one", "ok", [py("pass")], 10),
                gc.Step("two", "fails", [py("raise SystemExit(4)")], 10)]

    out = tmp_path / "o"
    assert gc.main(["--pretend-gpus", "1", "--out", str(out)], make_plan=fake_plan) == 1
    assert seen["ctx"].gpus == 1 and seen["ctx"].out == out.resolve()
    s = json.loads((out / "summary.json").read_text())
    assert (s["ok"], s["failed"]) == (False, ["two"])
    assert [(x["name"], x["status"], x["reason"]) for x in s["steps"]] == [
        ("one", "ok", ""), ("two", "FAILED", "exit status 4")]
    md = (out / "summary.md").read_text()
    assert "| two | FAILED: exit status 4 |" in md and "Result: FAILED: two" in md
    assert md in capsys.readouterr().out  # printed once at the end as well
    ok_plan = lambda ctx: [gc.Step("one", "ok", [py("pass")], 10)]  # noqa: E731
    assert gc.main(["--pretend-gpus", "1", "--out", str(tmp_path / "p")], make_plan=ok_plan) == 0


def test_fake_fmnist_loads_with_the_library(tmp_path):
    from semckd.data import load_arrays

    xtr, ytr, xte, yte, classes = load_arrays("fashion_mnist", str(gc.write_fake_fmnist(tmp_path, 64, 32)))
    assert tuple(xtr.shape) == (64, 1, 28, 28) and tuple(xte.shape) == (32, 1, 28, 28)
    assert len(classes) == 10 and int(ytr.max()) <= 9 and len(set(yte.tolist())) > 1


# ------------------------------------------------------------------------------------- the summary
@pytest.fixture(scope="module")
def real_bench_json(tmp_path_factory) -> dict:
    """One real (tiny) ``python -m benchmarks bench --json`` file: the format the summary must read."""
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    cmd = [sys.executable, "-m", "benchmarks", "bench", "--pairs", "fmnist", "--methods", "kd", "--amp",
           "fp32", "--steps", "1", "--warmup", "0", "--repeats", "1", "--no-flops", "--quiet",
           "--json", str(path)]
    p = subprocess.run(cmd, capture_output=True, text=True, env={**NO_GPU_ENV, "OMP_NUM_THREADS": "1"},
                       cwd=ROOT, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(path.read_text())


def _gpu_like(real: dict) -> dict:
    """The real file grown into a check-sized one: rows copied from the real row with the bench's own
    speed-up code (benchmarks.bench.table.add_speedups) filling in the ratios."""
    from benchmarks.bench.table import add_speedups

    data = copy.deepcopy(real)
    (kd,) = data["results"]
    rows = []
    for pair in ("cifar100", "fmnist"):
        for prec, default, times in (
                ("bf16", True, {"vanilla": 2.0, "kd": 2.5, "semckd": 4.0}),
                ("fp32", False, {"vanilla": 3.0, "kd": 3.5, "semckd": 5.0, "reference": 10.0})):
            for method, ms in times.items():
                rows.append({**kd, "pair": pair, "method": method, "precision": prec, "is_default": default,
                             "ms_per_step": ms * (2 if pair == "cifar100" else 1)})
    add_speedups(rows)
    data["results"] = rows
    data["machine"].update(device="cuda:0", gpu="NVIDIA H200")
    return data


def test_bench_figures_from_the_real_format(real_bench_json, tmp_path):
    path = tmp_path / "b.json"
    path.write_text(json.dumps(real_bench_json))
    f = gc.bench_figures(path)
    (row,) = f["rows"]
    assert (row["pair"], row["method"], row["precision"]) == ("fmnist", "kd", "fp32")
    assert row["ms_per_step"] == real_bench_json["results"][0]["ms_per_step"] > 0
    assert f["torch"] == real_bench_json["machine"]["torch"]
    assert gc.bench_check(f, pairs=("fmnist",)) == "no reference row for fmnist"  # kd alone is not a check


def test_summary_builder_reports_every_step_and_its_figures(real_bench_json, tmp_path):
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps(_gpu_like(real_bench_json)))
    bf = gc.bench_figures(bench)
    assert gc.bench_check(bf) is None
    sp = {(r["pair"], r["precision"]): r["speedup_vs_reference"]
          for r in bf["rows"] if r["method"] == "semckd"}
    assert sp == {("cifar100", "bf16"): 2.5, ("cifar100", "fp32"): 2.0, ("fmnist", "bf16"): 2.5,
                  ("fmnist", "fp32"): 2.0}

    epoch = tmp_path / "epoch.json"  # rows as benchmarks/epoch.py writes them (copied from a real run)
    epoch.write_text(json.dumps([
        {"variant": "baseline", "precision": "fp32", "criterion": "ReferenceSemCKD", "loader": "DataLoader",
         "images": 12800, "epoch_s": 20.0, "images_per_s": 640.0, "dataset": "fashion_mnist", "data": "real",
         "device": "cuda:0", "batch_size": 64, "threads": 16},
        {"variant": "semckd", "precision": "bf16", "criterion": "SemCKD", "loader": "DeviceLoader",
         "images": 12800, "epoch_s": 4.0, "images_per_s": 3200.0, "dataset": "fashion_mnist", "data": "real",
         "device": "cuda:0", "batch_size": 64, "threads": 16, "speedup_vs_baseline": 5.0},
        {"variant": "baseline", "precision": "fp32", "criterion": "ReferenceSemCKD", "loader": "DataLoader",
         "images": 6400, "epoch_s": 30.0, "images_per_s": 213.3, "dataset": "cifar100",
         "data": "random, CIFAR-100 format", "device": "cuda:0", "batch_size": 64, "threads": 16},
        {"variant": "semckd", "precision": "bf16", "criterion": "SemCKD", "loader": "DeviceLoader",
         "images": 6400, "epoch_s": 10.0, "images_per_s": 640.0, "dataset": "cifar100",
         "data": "random, CIFAR-100 format", "device": "cuda:0", "batch_size": 64, "threads": 16,
         "speedup_vs_baseline": 3.0}]))
    ef = gc.epoch_figures(epoch, fmnist_kind="synthetic")
    assert gc.epoch_check(ef) is None
    assert ef["datasets"]["fashion_mnist"] == {"images": 12800, "data": "synthetic", "baseline_s": 20.0,
                                               "baseline_images_per_s": 640.0, "semckd_s": 4.0,
                                               "semckd_images_per_s": 3200.0, "precision": "bf16",
                                               "speedup_vs_baseline": 5.0}
    assert gc.epoch_check({"datasets": {"cifar100": ef["datasets"]["cifar100"]}}) == (
        "no whole-epoch speed-up for fashion_mnist")

    run = tmp_path / "ddp_run"  # run.json keys as the engine writes them
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"kind": "distill", "world_size": 2, "device": "cuda:0",
                                              "amp": "bf16", "train_time_s": 3.5, "final_acc": 71.2,
                                              "ddp_param_max_abs_diff": 0.0}))
    df = gc.ddp_figures(run, "[rank0] NCCL version 2.21.5+cuda12.4\n")
    assert df["nccl_version"] == "2.21.5+cuda12.4" and gc.ddp_check(df) is None
    assert gc.ddp_check({**df, "device": "cpu"}) == "trained on cpu, not CUDA (so not NCCL)"
    assert gc.ddp_check({**df, "world_size": 1}) == "run.json world_size 1, expected 2"
    assert gc._key_lines({"name": "ddp", "figures": df}) == [
        "", "  world_size 2, device cuda:0, amp bf16, train_time_s 3.5, final_acc 71.2, "
            "ddp_param_max_abs_diff 0, nccl_version 2.21.5+cuda12.4"]

    tf = gc.pytest_figures(tmp_path, "....\n1 passed, 3 skipped, 761 deselected in 3.38s\n")
    assert tf == {"passed": 1, "skipped": 3, "deselected": 761} and gc.pytest_check(tf) is None
    assert gc.pytest_check(gc.pytest_figures(tmp_path, "1 skipped, 761 deselected in 3s")) == (
        "no CUDA test passed (1 skipped)")

    results = [gc.StepResult("cuda-tests", "t", "ok", wall_s=9.5, figures=tf),
               gc.StepResult("bench", "b", "ok", wall_s=80.25, figures=bf),
               gc.StepResult("ddp", "d", "skipped", "needs 2 GPUs (1 visible)"),
               gc.StepResult("epoch", "e", "FAILED", "timed out after 120 s", wall_s=120.0, figures=ef)]
    s = gc.build_summary(results, {"machine": "NVIDIA H200", "data": "synthetic"})
    assert (s["ok"], s["failed"], s["machine"]) == (False, ["epoch"], "NVIDIA H200")
    assert s["total_wall_s"] == pytest.approx(209.75)
    assert [x["status"] for x in s["steps"]] == ["ok", "ok", "skipped", "FAILED"]
    json.dumps(s)  # serialisable as it stands

    gc.write_summary(s, tmp_path)
    assert json.loads((tmp_path / "summary.json").read_text()) == s
    md = (tmp_path / "summary.md").read_text()
    for line in ("| cuda-tests | ok | 9.5 |", "| bench | ok | 80.2 |",
                 "| ddp | skipped: needs 2 GPUs (1 visible) | 0.0 |",
                 "| epoch | FAILED: timed out after 120 s | 120.0 |",
                 "bench on NVIDIA H200 (torch " + real_bench_json["machine"]["torch"] + "), ms/step:",
                 "| cifar100 | bf16 (default) | 4.00 | 5.00 | 8.00 | — | 2.50x |",
                 "| cifar100 | fp32 | 6.00 | 7.00 | 10.00 | 20.00 | 2.00x |",
                 "| fmnist | bf16 (default) | 2.00 | 2.50 | 4.00 | — | 2.50x |",
                 "| fmnist | fp32 | 3.00 | 3.50 | 5.00 | 10.00 | 2.00x |",
                 "| fashion_mnist (synthetic) | 12800 | 20.00 | 4.00 (bf16) | 5.00x |",
                 "| cifar100 (random, CIFAR-100 format) | 6400 | 30.00 | 10.00 (bf16) | 3.00x |",
                 "passed 1, skipped 3, deselected 761",
                 "Result: FAILED: epoch; 210 s in all."):
        assert line in md, line
