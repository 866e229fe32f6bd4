"""The measurement package ``benchmarks/``: one entry (``python -m benchmarks <job>``), run from the checkout
without any ``sys.path`` edit, the bench's own precision names, and nothing of it in the installed CLI."""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import benchmarks
from benchmarks.__main__ import JOBS
from benchmarks.__main__ import main as entry
from benchmarks.bench import NAMES, PRECISIONS, default_precision, name_of, precision_of
from semckd.precision import Precision

ROOT = Path(__file__).resolve().parent.parent


def test_every_job_is_a_module_with_main_and_listed_in_the_usage(capsys):
    assert entry([]) == 0
    out = capsys.readouterr().out
    for job, (module, line) in JOBS.items():
        assert callable(importlib.import_module(module).main), job
        assert re.search(rf"^  {job} +{re.escape(line)}$", out, re.M), job
    # every script under benchmarks/ with a main() is reachable through the entry
    scripts = {p.stem for p in (ROOT / "benchmarks").glob("*.py")
               if p.stem != "__main__" and re.search(r"^def main\(", p.read_text(), re.M)}
    assert scripts == {m.rsplit(".", 1)[1] for m, _ in JOBS.values()} - {"cli"}


def test_unknown_job_is_one_line_with_the_close_match(capsys):
    assert entry(["protcol"]) == 2
    (err,) = capsys.readouterr().err.splitlines()
    assert "unknown job 'protcol'; did you mean 'protocol'?" in err


def test_benchmarks_and_semckd_from_different_checkouts_refuse(monkeypatch, capsys):
    import semckd

    monkeypatch.setattr(semckd, "__file__", "/elsewhere/semckd/__init__.py")
    assert entry(["protocol", "--table", "short", "--report"]) == 2
    (err,) = capsys.readouterr().err.splitlines()
    assert "semckd from /elsewhere" in err and f"PYTHONPATH={ROOT}" in err


def test_the_entry_runs_from_the_checkout_root_as_a_command():
    p = subprocess.run([sys.executable, "-m", "benchmarks", "bench", "--help"], capture_output=True,
                       text=True, cwd=ROOT, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("usage: python -m benchmarks bench") and "--scaling" in p.stdout
    assert Path(benchmarks.__file__).resolve().parent == ROOT / "benchmarks"


def test_the_installed_cli_has_no_bench_command(capsys):
    from semckd.cli import main

    with pytest.raises(SystemExit) as e:
        main(["bench", "--pairs", "fmnist"])
    assert e.value.code == 2 and "invalid choice: 'bench'" in capsys.readouterr().err


def test_no_import_path_edits_in_benchmarks_tests_or_scripts():
    """The checkout root is on the path through ``python -m`` (cwd) or pytest's ``pythonpath``; a module
    that edits ``sys.path`` would import a different checkout's code than the one it reports."""
    edit = re.compile(r"sys\.path\s*(\.(insert|append|extend|remove)|\[[^\]]*\]\s*=|\+=|=)")
    hits = [f"{p.relative_to(ROOT)}:{i}" for folder in ("benchmarks", "tests", "scripts")
            for p in (ROOT / folder).rglob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1) if edit.search(line)]
    assert hits == []


def test_tests_import_no_private_names():
    """Tests hold the library to its public behaviour: a private name imported here would have to stay
    alive through every refactor. (Names are checked at import lines; ``_`` helpers of a test file are
    its own.)"""
    private = re.compile(r"^\s*from (semckd|benchmarks)[\w.]* import (.*)$")
    hits = []
    for p in (ROOT / "tests").glob("*.py"):
        for i, line in enumerate(p.read_text().splitlines(), 1):
            m = private.match(line)
            names = [n.strip().split(" as ")[0] for n in m.group(2).strip("()").split(",")] if m else []
            if any(n.startswith("_") for n in names):
                hits.append(f"{p.name}:{i}: {line.strip()}")
    assert hits == []


def test_bench_precision_names_map_onto_the_librarys_precision(monkeypatch):
    from semckd import precision

    cpu = torch.device("cpu")
    assert PRECISIONS == tuple(NAMES) == ("fp32", "fp32-cl", "bf16", "bf16-cl", "fp16")
    for name, (amp, cl) in NAMES.items():
        p = precision_of(name, cpu)
        assert (p.amp, p.channels_last, name_of(p)) == (amp, cl, name)
    assert name_of(precision_of("bf16-emulated", cpu)) == "bf16-emulated"  # the engine's name passes
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    monkeypatch.delenv("SEMCKD_AMP", raising=False)
    auto = precision_of("auto", cpu)
    assert auto == Precision.resolve("auto", None, cpu) and default_precision(cpu) == "bf16-cl"
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert default_precision(cpu) == "fp32"
    with pytest.raises(ValueError, match="unknown precision 'fp8'; choose from auto, fp32"):
        precision_of("fp8", cpu)
    for gone in ("BENCH_ALIASES", "from_alias", "alias"):  # the library keeps only amp + channels_last
        assert not hasattr(precision, gone) and not hasattr(Precision, gone)


def _fake_run(folder: Path, weight: float, epochs: int = 2, speed: float = 100.0) -> Path:
    folder.mkdir(parents=True)
    state = {"student": {"conv.weight": torch.full((2, 3), weight)}, "extras": {"proj.0": torch.ones(4)}}
    for ck in ("last.pt", "best.pt"):
        torch.save(state, folder / ck)
    rows = [{"epoch": e, "test_acc": 50.0 + e, "images_per_s": speed * e, "epoch_time_s": speed} for e in
            range(1, epochs + 1)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_bitcheck_digest_ignores_timings_and_sees_one_changed_bit(tmp_path):
    """The restructuring check compares weights and metrics bit for bit, never wall-clock fields."""
    from benchmarks.bitcheck import compare, digest

    a = digest(_fake_run(tmp_path / "a", 0.5))
    assert digest(_fake_run(tmp_path / "b", 0.5, speed=7.0)) == a  # only the timings differ
    flipped = torch.tensor(0.5).view(torch.int32) ^ 1  # the last mantissa bit
    c = digest(_fake_run(tmp_path / "c", flipped.view(torch.float32).item()))
    assert c["last.pt:student"] != a["last.pt:student"] and c["metrics"] == a["metrics"]
    assert c["last.pt:extras"] == a["last.pt:extras"]
    d = digest(_fake_run(tmp_path / "d", 0.5, epochs=1))
    assert d["metrics"] != a["metrics"] and d["epochs"] == "1"

    side = {"fp32": a, "killed": a}
    assert compare(side, dict(side)) == []
    assert compare(side, {"fp32": a, "killed": c}) == [
        f"killed: last.pt:student {a['last.pt:student']} -> {c['last.pt:student']}",
        f"killed: best.pt:student {a['best.pt:student']} -> {c['best.pt:student']}",
        "head: killed and resumed differs from the uninterrupted fp32 run"]
    lines = compare({"fp32": a, "killed": c}, {"fp32": a, "killed": c})
    assert lines == ["base: killed and resumed differs from the uninterrupted fp32 run",
                     "head: killed and resumed differs from the uninterrupted fp32 run"]
    (tmp_path / "e").mkdir()
    assert "missing" in compare({"r": digest(tmp_path / "e")}, {"r": digest(tmp_path / "e")})[0]


def test_bitcheck_refuses_an_unknown_commit_and_an_earlier_check_in_one_line(tmp_path, capsys):
    assert entry(["bitcheck", "--base", "no-such-commit", "--out", str(tmp_path / "x")]) == 2
    (err,) = capsys.readouterr().err.splitlines()
    assert "git archive no-such-commit" in err and "give a commit" in err
    for earlier in ("head", "base-src"):  # its runs, or a source tree perhaps of another commit
        (tmp_path / earlier / earlier).mkdir(parents=True)
        assert entry(["bitcheck", "--base", "HEAD", "--out", str(tmp_path / earlier)]) == 2
        (err,) = capsys.readouterr().err.splitlines()
        assert "an earlier check" in err and "remove it or pass another --out" in err
