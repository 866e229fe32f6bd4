"""User-facing tools: ``semckd plot / report / export / bench`` on synthetic run folders and tiny models.

Run folders and checkpoints are written here in the documented format (docs/ARCHITECTURE.md) so these
tests do not depend on the training engine.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from semckd.cli import main
from semckd.errors import UserError
from semckd.models import create_model

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------- synthetic run folders
def make_run(root: Path, name: str, *, method: str, seed: int, accs: list[float], student: str = "resnet8",
             teacher: str | None = "resnet32x4", dataset: str = "fashion_mnist", attention: bool = False,
             run_json: bool = True, epoch_time: float = 2.0, method_args: dict | None = None) -> Path:
    d = root / name
    d.mkdir(parents=True)
    cfg = {"kind": "distill", "dataset": dataset, "model": student, "method": method, "seed": seed,
           "teacher": f"runs/{teacher}/best.pt" if teacher else None, "teacher_model": None,
           "method_args": method_args or {}}
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    rng = random.Random(seed)
    best = 0.0
    with open(d / "metrics.jsonl", "w") as f:
        for e, acc in enumerate(accs, 1):
            best = max(best, acc)
            line = {"epoch": e, "lr": 0.05, "train_loss": 2.0 / e + rng.random() * 0.01, "train_acc": acc - 1,
                    "test_loss": 1.0 / e, "test_acc": acc, "best_acc": best, "epoch_time_s": epoch_time,
                    "images_per_s": 1000.0}
            if attention:
                rows = []
                for _ in range(3):
                    w = [rng.random() + 1e-3 for _ in range(4)]
                    rows.append([x / sum(w) for x in w])
                line["extras"] = {"attention": rows}
            f.write(json.dumps(line) + "\n")
    if run_json:
        summary = {"kind": "distill", "model": student, "dataset": dataset, "method": method,
                   "teacher": cfg["teacher"], "teacher_model": teacher if method != "vanilla" else None,
                   "epochs": len(accs), "best_acc": best, "best_epoch": accs.index(best) + 1,
                   "final_acc": accs[-1], "train_time_s": epoch_time * len(accs)}
        (d / "run.json").write_text(json.dumps(summary))
    return d


def _png_ok(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    import matplotlib.image as mpimg

    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50
    assert float(img[..., :3].std()) > 0.01  # not a blank canvas


# ---------------------------------------------------------------------- plot
def test_plot_attention_png(tmp_path):
    pytest.importorskip("matplotlib")
    from semckd.plot import attention_by_epoch, pick_epochs, plot_attention

    run = make_run(tmp_path, "sem", method="semckd", seed=0, accs=[50, 60, 65, 70, 72, 73], attention=True)
    out = plot_attention(run)
    assert out == run / "attention.png"
    _png_ok(out)
    assert [e for e, _, _ in attention_by_epoch(run)] == [1, 2, 3, 4, 5, 6]
    assert pick_epochs([1, 2, 3, 4, 5, 6]) == [1, 3, 4, 6]  # first, middle ones, last
    assert pick_epochs([1, 2]) == [1, 2]
    single = plot_attention(run, tmp_path / "one.png", epoch=4)
    _png_ok(single)
    with pytest.raises(UserError, match="available: 1, 2, 3, 4, 5, 6"):
        plot_attention(run, tmp_path / "x.png", epoch=9)
    plain = make_run(tmp_path, "kd", method="kd", seed=0, accs=[50, 60])
    with pytest.raises(UserError, match="extras.attention"):
        plot_attention(plain)


def test_plot_curves_png_and_cli(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    a = make_run(tmp_path, "a", method="semckd", seed=0, accs=[50, 60, 70])
    b = make_run(tmp_path, "b", method="kd", seed=0, accs=[40, 55, 66], run_json=False)
    out = tmp_path / "figs" / "curves.png"
    assert main(["plot", "curves", str(a), str(b), "--out", str(out)]) == 0
    _png_ok(out)
    assert not list(out.parent.glob(".*tmp*"))  # the atomic write left no temp file behind
    capsys.readouterr()
    assert main(["plot", "curves", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "missing" in capsys.readouterr().err


def test_plot_without_matplotlib_is_one_line_error(tmp_path, monkeypatch, capsys):
    run = make_run(tmp_path, "sem", method="semckd", seed=0, accs=[50, 60], attention=True)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    assert main(["plot", "attention", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install matplotlib" in err


# ---------------------------------------------------------------------- report
def _table_rows(text: str) -> dict[tuple[str, str, str, str], list[str]]:
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 9 and cells[0] not in ("dataset", "---"):
            rows[tuple(cells[:4])] = cells[4:]
    return rows


def _mean_std(cell: str) -> tuple[float, float]:
    m = re.fullmatch(r"([\d.]+) ± ([\d.]+)", cell)
    assert m, cell
    return float(m.group(1)), float(m.group(2))


def test_report_mean_std_and_ari(tmp_path):
    from semckd.report import build_report, relative_improvement

    rng = random.Random(1)
    finals: dict[tuple[str, str], list[float]] = {}
    bests: dict[tuple[str, str], list[float]] = {}
    centre = {"vanilla": 80.0, "kd": 83.0, "semckd": 85.0, "fitnet": 81.0}
    for student in ("resnet8", "resnet14"):
        for method, c in centre.items():
            for seed in range(3):
                accs = [c - 10 + rng.random(), c + rng.random(), c - 0.5 + rng.random()]
                make_run(tmp_path / "runs", f"{student}_{method}_{seed}", method=method, seed=seed, accs=accs,
                         student=student, run_json=(seed != 1))  # one seed without run.json: still read
                finals.setdefault((student, method), []).append(accs[-1])
                bests.setdefault((student, method), []).append(max(accs))
    text = build_report([tmp_path / "runs"])
    rows = _table_rows(text)
    assert len(rows) == 8
    for (student, method), fin in finals.items():
        teacher = "—" if method == "vanilla" else "resnet32x4"
        cells = rows[("fashion_mnist", teacher, student, method)]
        assert cells[0] == "3"
        m, s = _mean_std(cells[1])
        assert m == pytest.approx(statistics.fmean(fin), abs=0.006)
        assert s == pytest.approx(statistics.stdev(fin), abs=0.006)
        m, s = _mean_std(cells[2])
        assert m == pytest.approx(statistics.fmean(bests[(student, method)]), abs=0.006)
        assert s == pytest.approx(statistics.stdev(bests[(student, method)]), abs=0.006)
        assert cells[3] == "6.0 s"  # 3 epochs × 2 s
    # ARI (paper): mean over pairs of (SemCKD − X) / (X − vanilla) · 100, on mean best accuracy
    expected = {}
    for method in ("kd", "fitnet"):
        terms = []
        for student in ("resnet8", "resnet14"):
            mb = {k: statistics.fmean(bests[(student, k)]) for k in ("semckd", method, "vanilla")}
            terms.append((mb["semckd"] - mb[method]) / (mb[method] - mb["vanilla"]) * 100)
            cell = rows[("fashion_mnist", "resnet32x4", student, method)][4]
            assert float(cell) == pytest.approx(terms[-1], abs=0.06)
        expected[method] = statistics.fmean(terms)
    summary = {m: float(v) for m, v, _ in re.findall(r"^\| (\w+) \| (-?[\d.]+) \| (\d+) \|$", text, re.M)}
    assert summary == pytest.approx(expected, abs=0.06)
    for student in ("resnet8", "resnet14"):
        assert rows[("fashion_mnist", "resnet32x4", student, "semckd")][4] == "—"
    assert relative_improvement(85.0, 83.0, 80.0) == pytest.approx(200 / 3)
    assert relative_improvement(85.0, 80.0, 80.0) is None


def test_report_separates_non_default_method_options(tmp_path):
    from semckd.report import build_report

    make_run(tmp_path, "a", method="semckd", seed=0, accs=[70.0],
             method_args={"beta": 400, "mode": "faithful"})  # the defaults spelled out: same setting
    make_run(tmp_path, "b", method="semckd", seed=1, accs=[72.0])
    make_run(tmp_path, "c", method="semckd", seed=0, accs=[60.0], method_args={"mode": "batch_free"})
    rows = _table_rows(build_report([tmp_path]))
    assert rows[("fashion_mnist", "resnet32x4", "resnet8", "semckd")][:2] == ["2", "71.00 ± 1.41"]
    assert rows[("fashion_mnist", "resnet32x4", "resnet8", "semckd [mode=batch_free]")][:2] == ["1", "60.00"]


def test_report_ari_missing_rows_and_cli(tmp_path, capsys):
    make_run(tmp_path, "kd0", method="kd", seed=0, accs=[70.0, 71.0])
    make_run(tmp_path, "kd1", method="kd", seed=1, accs=[70.0, 72.0])
    out = tmp_path / "t.md"
    assert main(["report", str(tmp_path / "kd0"), str(tmp_path / "kd1"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert out.read_text() == printed
    row = _table_rows(printed)[("fashion_mnist", "resnet32x4", "resnet8", "kd")]
    assert row[0] == "2" and row[1] == "71.50 ± 0.71" and row[4] == "—"  # no vanilla/semckd: no ARI
    assert main(["report", str(tmp_path / "nope")]) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", str(empty)]) == 2
    assert "no runs under" in capsys.readouterr().err


# ---------------------------------------------------------------------- export
def trained_checkpoint(tmp_path: Path, *, method: str = "semckd",
                        extra_cfg: dict | None = None) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    model = create_model("resnet8", num_classes=10, in_channels=1)
    model.train()
    with torch.no_grad():  # move BN running stats away from their init so eval mode is a real test
        for _ in range(3):
            model(torch.randn(8, 1, 28, 28) * 2 + 0.5)
    model.eval()
    run = tmp_path / "run"
    run.mkdir()
    cfg = {"kind": "distill", "dataset": "fashion_mnist", "model": "resnet8", "method": method,
           "teacher": None, "batch_size": 8, "method_args": {}, **(extra_cfg or {})}
    ckpt = {"format": "semckd-ckpt-v1", "model": "resnet8", "num_classes": 10, "in_channels": 1,
            "student": model.state_dict(), "extras": {}, "optimizer": {}, "scheduler": {}, "rng": {},
            "epoch": 2, "best_acc": 88.5, "config": cfg}
    torch.save(ckpt, run / "best.pt")
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "test_acc": 80.0}) + "\n"
                                       + json.dumps({"epoch": 2, "test_acc": 88.5}) + "\n")
    return run / "best.pt", model


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.* is deprecated, still supported
def test_export_state_dict_and_torchscript(tmp_path, capsys):
    ckpt, model = trained_checkpoint(tmp_path)
    out = tmp_path / "export"
    assert main(["export", str(ckpt.parent), "--out", str(out), "--format", "state_dict,torchscript"]) == 0
    assert "torchscript" in capsys.readouterr().out
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        expected = model(x)
    sd = torch.load(out / "student.pt", weights_only=True)
    fresh = create_model("resnet8", num_classes=10, in_channels=1)
    fresh.load_state_dict(sd)
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(x), expected)
    scripted = torch.jit.load(str(out / "student.torchscript.pt"))
    with torch.no_grad():
        assert torch.allclose(scripted(x), expected, rtol=1e-5, atol=1e-5)
    info = json.loads((out / "model.json").read_text())
    assert info["arch"] == "resnet8" and info["num_classes"] == 10 and info["in_channels"] == 1
    assert info["input_size"] == [28, 28] and info["mean"] == pytest.approx([0.2860])
    assert info["std"] == pytest.approx([0.3530]) and info["test_acc"] == 88.5 and info["epoch"] == 2
    assert info["loads_into_create_model"] is True
    assert not (out / "student.onnx").exists()

    # TorchScript loads with torch alone: a Python that cannot import semckd
    torch.save({"x": x, "y": expected}, tmp_path / "io.pt")
    script = (
        "import sys\n"
        "class NoSemckd:  # an editable install makes semckd importable even under -I: forbid it\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'semckd':\n"
        "            raise ImportError('semckd must not be needed')\n"
        "sys.meta_path.insert(0, NoSemckd())\n"
        "import torch\n"
        f"m = torch.jit.load({str(out / 'student.torchscript.pt')!r})\n"
        f"d = torch.load({str(tmp_path / 'io.pt')!r}, weights_only=True)\n"
        "with torch.no_grad():\n"
        "    assert torch.allclose(m(d['x']), d['y'], rtol=1e-5, atol=1e-5)\n"
        "print('ok')\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-I", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "ok"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_export_simkd_deploys_projector_and_teacher_head(tmp_path):
    from semckd.export import export_checkpoint
    from semckd.methods import BuildContext, build_distiller

    torch.manual_seed(1)
    teacher = create_model("resnet14", num_classes=10, in_channels=1).eval()
    t_path = tmp_path / "teacher.pt"
    torch.save({"format": "semckd-ckpt-v1", "model": "resnet14", "num_classes": 10, "in_channels": 1,
                "student": teacher.state_dict(), "extras": {}, "epoch": 1, "best_acc": 90.0,
                "config": {"kind": "teacher"}}, t_path)
    student = create_model("resnet8", num_classes=10, in_channels=1)
    ctx = BuildContext(example_input=torch.randn(4, 1, 28, 28), batch_size=4, num_classes=10, num_samples=100)
    distiller = build_distiller("simkd", student, teacher, ctx, {})
    with torch.no_grad():
        for p in distiller.projector.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    distiller.eval()
    deploy = distiller.deployable_student().eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        expected = deploy(x)
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"format": "semckd-ckpt-v1", "model": "resnet8", "num_classes": 10, "in_channels": 1,
                "student": student.state_dict(), "extras": distiller.extras_state_dict(), "epoch": 1,
                "best_acc": 50.0, "config": {"kind": "distill", "dataset": "fashion_mnist",
                                             "model": "resnet8", "method": "simkd", "teacher": str(t_path),
                                             "batch_size": 4}},
               run / "best.pt")
    res = export_checkpoint(run / "best.pt", tmp_path / "out", ["torchscript"])
    assert res.info["arch"] == "simkd(resnet8)" and res.info["loads_into_create_model"] is False
    with torch.no_grad():
        got = torch.jit.load(str(res.files["torchscript"]))(x)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6)
    torch.save({"format": "semckd-ckpt-v1", "model": "resnet8", "num_classes": 10, "in_channels": 1,
                "student": student.state_dict(), "extras": {}, "epoch": 1, "best_acc": 50.0,
                "config": {"kind": "distill", "dataset": "fashion_mnist", "method": "simkd",
                           "teacher": str(tmp_path / "gone.pt")}}, run / "best.pt")
    with pytest.raises(UserError, match="teacher checkpoint"):
        export_checkpoint(run / "best.pt", tmp_path / "out2", ["state_dict"])


def test_export_bad_inputs(tmp_path):
    from semckd.export import export_checkpoint

    ckpt, _ = trained_checkpoint(tmp_path)
    with pytest.raises(UserError, match="unknown export format"):
        export_checkpoint(ckpt, tmp_path / "o", ["pickle"])
    torch.save({"a": torch.zeros(1)}, tmp_path / "plain.pt")
    with pytest.raises(UserError, match="not a semckd training checkpoint"):
        export_checkpoint(tmp_path / "plain.pt", tmp_path / "o", ["state_dict"])
    with pytest.raises(UserError, match="does not exist"):
        export_checkpoint(tmp_path / "nope.pt", tmp_path / "o", ["state_dict"])


# ---------------------------------------------------------------------- bench
_ROW_KEYS = {"pair", "student", "teacher", "method", "precision", "batch_size", "device", "ms_per_step",
             "images_per_s", "step_mem_mb", "peak_mem_mb", "mem_kind", "gflop_per_step", "achieved_gflops",
             "loss", "student_layers", "teacher_layers"}


def test_bench_tiny_config_finite_numbers():
    from benchmarks.bench import format_table, run_bench

    methods = ["vanilla", "kd", "semckd", "reference"]  # a missing method or module fails here
    torch.set_num_threads(2)  # the bench runs single-threaded below and must restore this afterwards
    rep = run_bench([("tiny", "resnet8", "resnet14", 8, 3, 10)], methods=methods, precisions=["fp32", "bf16"],
                    batch_size=4, device="cpu", steps=1, warmup=0, repeats=1, isolate=False,
                    peak_gflops=100.0, threads=1)
    rows = rep["results"]
    expected = [(p, m) for p in ("fp32", "bf16") for m in methods if not (m == "reference" and p == "bf16")]
    assert [(r["precision"], r["method"]) for r in rows] == expected
    for r in rows:
        assert _ROW_KEYS <= set(r)
        for k in ("ms_per_step", "images_per_s", "peak_mem_mb", "gflop_per_step", "achieved_gflops", "loss"):
            assert math.isfinite(r[k]) and r[k] > 0, (k, r[k])
        assert math.isfinite(r["step_mem_mb"])
        assert r["images_per_s"] == pytest.approx(4 / (r["ms_per_step"] / 1e3))
        assert r["pct_of_peak"] == pytest.approx(r["achieved_gflops"])  # peak 100 GFLOP/s
    flops = {(r["precision"], r["method"]): r["gflop_per_step"] for r in rows}
    assert flops[("fp32", "kd")] > flops[("fp32", "vanilla")]  # KD adds the teacher's forward
    sem = next(r for r in rows if r["method"] == "semckd" and r["precision"] == "fp32")
    ref = next(r for r in rows if r["method"] == "reference")
    assert sem["gflop_per_step"] > flops[("fp32", "kd")]  # projectors cost FLOPs
    assert sem["speedup_vs_reference"] == pytest.approx(ref["ms_per_step"] / sem["ms_per_step"])
    # same activations kept for backward as the reference (exact count), none for vanilla's teacher
    # (+ the attention MLP's stacked weights, a few kB here; see test_semckd's exact bound)
    assert 0 < sem["saved_mb"] <= ref["saved_mb"] + 0.05
    assert sem["saved_ratio_vs_reference"] == pytest.approx(ref["saved_mb"] / sem["saved_mb"])
    assert "speedup vs ref" in format_table(rep)
    text = format_table(rep)
    assert text.count("| tiny |") == len(rows)
    assert all(r["threads"] == 1 for r in rows) and torch.get_num_threads() == 2


def test_saved_for_backward_counts_distinct_storages():
    from benchmarks.bench import saved_for_backward_mb

    x = torch.ones(256, 1024, requires_grad=True)  # 1 MiB
    w = torch.ones(1024, 512, requires_grad=True)  # 2 MiB
    # x @ w saves both operands; x.exp() saves its 1 MiB result; the view of x is x's storage again
    assert saved_for_backward_mb(lambda: (x @ w).sum()) == pytest.approx(3.0)
    assert saved_for_backward_mb(lambda: (x @ w).sum(), exclude=[w]) == pytest.approx(1.0)
    # (+ 4 bytes: the scalar factor, which the product saves too)
    assert saved_for_backward_mb(lambda: (x.exp() * x[:, :3].sum()).sum(), exclude=[x]) == pytest.approx(1.0,
                                                                                                  abs=1e-4)
    with torch.no_grad():
        assert saved_for_backward_mb(lambda: (x @ w).sum()) == 0.0


def test_bench_counts_default_what_is_unset_and_keep_zero_warmup():
    from benchmarks.bench.config import default_counts, resolve_counts

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_counts(cpu, None, None, None, None) == (*default_counts(cpu), True)
    assert resolve_counts(cuda, None, None, None, None) == (*default_counts(cuda), False)
    assert resolve_counts(cpu, 7, 0, 2, False) == (7, 0, 2, False)  # 0 warm-up is a choice
    steps, _, repeats, _ = resolve_counts(cpu, 0, None, 0, None)  # 0 steps or repeats: the default
    assert (steps, repeats) == (default_counts(cpu)[0], default_counts(cpu)[2])


def test_bench_isolated_process_and_cli_json(tmp_path, capsys):
    from benchmarks.__main__ import main as benchmarks

    out = tmp_path / "b.json"
    rc = benchmarks(["bench", "--student", "resnet8", "--teacher", "resnet8", "--input-size", "8",
               "--num-classes", "5", "--batch-size", "2", "--steps", "1", "--warmup", "0", "--repeats", "1",
               "--methods", "kd", "--amp", "fp32", "--device", "cpu", "--no-flops", "--json", str(out),
               "--quiet", "--threads", "1"])
    assert rc == 0
    rep = json.loads(out.read_text())
    (row,) = rep["results"]
    assert rep["settings"]["isolated_processes"] is True and row["mem_kind"] == "cpu ru_maxrss growth"
    assert row["peak_mem_mb"] > 50 and math.isfinite(row["ms_per_step"]) and row["gflop_per_step"] is None
    from benchmarks.bench import default_precision

    label = "fp32 (default)" if default_precision(torch.device("cpu")) == "fp32" else "fp32"
    assert f"| custom | resnet8 ← resnet8 | {label} | kd |" in capsys.readouterr().out
    # bad input: one line naming the problem and the fix, exit 2 (the package entry's rule)
    assert benchmarks(["bench", "--methods", "nope", "--device", "cpu"]) == 2
    (err,) = capsys.readouterr().err.splitlines()
    assert err.startswith("benchmarks bench: error: ") and "nope" in err
    assert benchmarks(["bench", "--student", "resnet8", "--device", "cpu"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "benchmarks bench: error: a custom pair needs both --student and --teacher (or use --pairs)"]


def test_bench_layer_sweep_and_op_families():
    from benchmarks.bench import block_layers, layer_sweep, op_family

    s, t = create_model("resnet8"), create_model("resnet20")
    assert block_layers(s) == ["layer1.0", "layer2.0", "layer3.0"]  # the stem is not a candidate
    assert block_layers(t) == [f"layer{i}.{j}" for i in (1, 2, 3) for j in range(3)]
    sweep = layer_sweep(s, t, points=3)
    assert sweep[0] == (["layer1.0", "layer2.0", "layer3.0"], ["layer1.2", "layer2.2", "layer3.2"])
    assert sweep[-1] == (block_layers(s), block_layers(t))
    pairs = [len(a) * len(b) for a, b in sweep]
    assert pairs == sorted(pairs) and len(set(pairs)) == len(pairs) == 3
    for _, names in sweep:
        assert {"layer1.2", "layer2.2", "layer3.2"} <= set(names)  # stage outputs are always candidates
    assert op_family("aten::convolution") == op_family("ConvolutionBackward0") == "projectors: conv"
    assert op_family("aten::bmm") == op_family("BmmBackward0") == "attention: Gram + MLP matmuls"
    assert op_family("aten::native_batch_norm") == "projectors: BN + ReLU"
    assert op_family("aten::_softmax") == "attention: softmax / normalize"
    assert op_family("aten::pow") == op_family("PowBackward0") == "MSE: sub/pow/mean/mul"
    assert op_family("aten::copy_").startswith("other")


def test_bench_component_breakdown_semckd():
    from benchmarks.bench import BenchConfig, component_breakdown

    cfg = BenchConfig("resnet8", "resnet14", 8, 3, 10, method="semckd", batch_size=4, steps=1, warmup=0,
                      repeats=1, device="cpu", threads=1)
    threads = torch.get_num_threads()
    b = component_breakdown(cfg, repeats=1)
    comp = b["components_ms"]
    assert set(comp) == {"teacher forward", "student forward+backward", "criterion forward+backward",
                         "optimizer step"}
    assert all(math.isfinite(v) and v > 0 for v in comp.values())
    fams = b["criterion_ops_ms"]
    assert "projectors: conv" in fams and "attention: Gram + MLP matmuls" in fams
    assert all(v >= 0 for v in fams.values())
    assert torch.get_num_threads() == threads  # the thread setting was restored


def test_bench_fp32_channels_last_mode_is_the_same_computation():
    """fp32-cl only changes the memory format of the networks and inputs, not the numbers."""
    from benchmarks.bench import BenchConfig, build_step

    losses = {}
    for prec in ("fp32", "fp32-cl"):
        cfg = BenchConfig("resnet8", "resnet14", 8, 3, 10, method="kd", precision=prec, batch_size=4,
                          device="cpu")
        step, distiller, _, (x, _, _) = build_step(cfg, torch.device("cpu"))
        assert x.is_contiguous(memory_format=torch.channels_last) == (prec == "fp32-cl")
        conv = next(m for m in distiller.student.modules() if isinstance(m, torch.nn.Conv2d))
        assert conv.weight.is_contiguous(memory_format=torch.channels_last) == (prec == "fp32-cl")
        losses[prec] = [step().item() for _ in range(2)]
    assert losses["fp32-cl"] == pytest.approx(losses["fp32"], rel=1e-5)
