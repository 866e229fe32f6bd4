"""SemCKD's attention options (learned = the paper, uniform / one_to_one ablations, the softmax
temperature) and the diagnostics that show what the learned attention does."""

from __future__ import annotations

import json
import math

import pytest
import torch
from engine_helpers import make_fashion_mnist

from benchmarks.reference import ReferenceSemCKD
from semckd.criterion import SemCKD, one_to_one_pairs, softmax_box
from semckd.diagnostics import attention_pinned, corner_weights

S_CH, T_CH, B = [4, 8], [6, 12, 12], 8


pytestmark = pytest.mark.usefixtures("one_thread")  # the shared fixture in conftest.py


def feats(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    fs = [torch.randn(B, 4, 8, 8, generator=g), torch.randn(B, 8, 4, 4, generator=g)]
    ft = [torch.randn(B, 6, 8, 8, generator=g), torch.randn(B, 12, 4, 4, generator=g),
          torch.randn(B, 12, 2, 2, generator=g)]
    return [f.requires_grad_() for f in fs], ft


def build(**kw) -> SemCKD:
    torch.manual_seed(0)
    return SemCKD(S_CH, T_CH, batch_size=B, **kw)


def test_default_is_the_paper_bit_for_bit() -> None:
    """The default (learned, τ = 1) equals the explicit options and the independent per-pair reference
    built from the same weights, and keeps the paper's state-dict layout: fails if the default moves."""
    fs, ft = feats()
    default, explicit = build(), build(attention="learned", temperature=1.0)
    assert list(default.state_dict()) == list(explicit.state_dict())
    assert not any(k.startswith("fixed") for k in default.state_dict())
    l1, a1 = default(fs, ft)
    l2, a2 = explicit(fs, ft)
    assert torch.equal(l1, l2) and torch.equal(a1, a2)
    ref = ReferenceSemCKD(S_CH, T_CH, batch_size=B)
    ref.load_state_dict(default.state_dict())
    lr, ar = ref(fs, ft)
    torch.testing.assert_close(a1, ar, rtol=0, atol=1e-6)
    torch.testing.assert_close(l1, lr, rtol=1e-5, atol=1e-6)


def test_uniform_is_exactly_one_over_t() -> None:
    fs, ft = feats()
    m = build(attention="uniform")
    loss, att = m(fs, ft)
    assert att.shape == (B, 2, 3)
    assert torch.equal(att, torch.full_like(att, 1.0 / 3))
    pair = m.pair_losses(fs, ft)
    torch.testing.assert_close(loss, pair.sum() / 3 / (B * 2), rtol=1e-6, atol=0)
    loss.backward()
    # the MLPs cannot get gradient and are frozen; every projector trains
    assert all(not p.requires_grad for p in [*m.query.parameters(), *m.key.parameters()])
    assert all(p.grad is not None for p in m.projectors.parameters())


def test_uniform_shares_the_papers_initialisation() -> None:
    """Same parameters and initial values as the learned run: a paired run differs only in α."""
    learned, uniform = build(), build(attention="uniform")
    a, b = learned.state_dict(), uniform.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("s,t,want", [(3, 3, [0, 1, 2]), (4, 3, [0, 1, 1, 2]), (3, 4, [0, 2, 3]),
                                      (2, 3, [0, 2]), (1, 3, [2]), (3, 1, [0, 0, 0])])
def test_one_to_one_pairs_by_relative_depth(s: int, t: int, want: list[int]) -> None:
    assert one_to_one_pairs(s, t) == want


def test_one_to_one_weights_one_pair_per_student_layer() -> None:
    fs, ft = feats()
    m = build(attention="one_to_one")
    loss, att = m(fs, ft)
    pairs = one_to_one_pairs(2, 3)  # [0, 2]
    want = torch.zeros(2, 3)
    want[[0, 1], pairs] = 1.0
    assert torch.equal(att, want.expand(B, -1, -1))
    # only the paired projectors run: the loss is their MSE alone, equal to the full computation's
    full = build().pair_losses(fs, ft)  # same initialisation → same projectors
    expect = (full[:, 0, pairs[0]] + full[:, 1, pairs[1]]).sum() / (B * 2)
    torch.testing.assert_close(loss, expect, rtol=1e-6, atol=0)
    loss.backward()
    for s in range(2):
        for t in range(3):
            grads = [p.grad for p in m.projectors[s][t].parameters()]
            assert all(g is not None for g in grads) == (t == pairs[s])


def test_temperature_divides_the_logits() -> None:
    fs, ft = feats()
    m1, m2 = build(), build(temperature=0.5)
    with torch.no_grad():
        logits = m1.diagnose(fs, ft)["logits"]
        a2 = m2.attention(fs, ft)
    torch.testing.assert_close(a2, (logits / 0.5).softmax(-1), rtol=0, atol=1e-6)
    lo, hi = softmax_box(3, 0.5)
    assert lo - 1e-6 <= a2.min() and a2.max() <= hi + 1e-6
    with pytest.raises(ValueError, match="temperature"):
        build(temperature=0.0)
    with pytest.raises(ValueError, match="attention must be one of"):
        build(attention="fixed")


def test_box_bounds_and_corners() -> None:
    lo, hi = softmax_box(3)
    assert lo == pytest.approx(0.0634, abs=1e-4) and hi == pytest.approx(0.7870, abs=1e-4)
    high, low = corner_weights(3, 2)
    assert (high, low) == pytest.approx((0.4683, 0.0634), abs=1e-4)  # the demo's 0.47 / 0.47 / 0.06
    assert corner_weights(3, 1) == pytest.approx((hi, math.exp(-1) / (math.e + 2 * math.exp(-1))))


def test_attention_pinned_flags_only_a_collapsed_learned_attention() -> None:
    pinned = {"attention": [[0.47, 0.47, 0.06]] * 3, "attention_logit": [[0.98, 0.97, -0.99]] * 3,
              "attention_mode": "learned", "attention_temperature": 1.0}
    note = attention_pinned(pinned)
    assert note and "pinned at a corner" in note and "0.47 / 0.47 / 0.06" in note
    free = dict(pinned, attention_logit=[[0.4, 0.9, -0.99]] * 3)
    assert attention_pinned(free) is None
    assert attention_pinned(dict(pinned, attention_mode="uniform")) is None
    # α-only records (before logits were logged): recognised from the corner values themselves
    assert attention_pinned({"attention": [[0.468, 0.468, 0.064]] * 3})
    assert attention_pinned({"attention": [[0.40, 0.40, 0.20]] * 3}) is None
    assert attention_pinned(None) is None and attention_pinned({}) is None


def test_options_reach_a_combined_method() -> None:
    """``semckd+X``: the member's options (``semckd.attention=...``) reach its criterion."""
    from torch import nn

    from semckd.methods import BuildContext, build_distiller

    class Net(nn.Module):
        def __init__(self, w: int) -> None:
            super().__init__()
            self.stem = nn.Conv2d(1, w, 3, padding=1)
            self.stage1 = nn.Conv2d(w, 2 * w, 3, padding=1)
            self.stage2 = nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1)
            self.fc = nn.Linear(4 * w, 5)
            self.stem_name, self.stage_names, self.head_name = "stem", ["stem", "stage1", "stage2"], "fc"

        def forward(self, x):
            return self.fc(self.stage2(self.stage1(self.stem(x))).mean((2, 3)))

    torch.manual_seed(0)
    x = torch.randn(B, 1, 8, 8)
    ctx = BuildContext(example_input=x, batch_size=B, num_classes=5, num_samples=64,
                       train_targets=torch.arange(64) % 5)
    d = build_distiller("semckd+crd", Net(4), Net(6), ctx,
                        {"semckd": {"attention": "uniform", "beta": 10.0}, "crd": {"beta": 0.1}})
    crit = d.parts["semckd"].semckd
    assert crit.attention_mode == "uniform"
    _, losses = d(x, torch.randint(0, 5, (B,)), torch.arange(B))
    assert {"semckd", "crd"} <= set(losses) and all(torch.isfinite(v) for v in losses.values())


def _distill(tmp_path, name, data, teacher, *extra: str) -> tuple[int, str, str]:
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "semckd", "distill", "--dataset", "fashion_mnist", "--data-dir", str(data),
           "--teacher", str(teacher), "--model", "resnet8", "--method", "semckd", "--epochs", "2",
           "--milestones", "1", "--batch-size", "16", "--limit-train", "96", "--val-split", "32",
           "--device", "cpu", "--no-tensorboard", "--out", str(tmp_path / name), *extra]
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    import os

    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, **env})
    return p.returncode, p.stdout, p.stderr


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from semckd.models import create_model
    from semckd.runfolder import FORMAT

    root = tmp_path_factory.mktemp("att")
    data = make_fashion_mnist(root / "data", n_train=160, n_test=48)
    torch.manual_seed(0)
    teacher = root / "teacher.pt"
    torch.save({"format": FORMAT, "model": "resnet8", "num_classes": 10, "in_channels": 1,
                "student": create_model("resnet8", num_classes=10, in_channels=1).state_dict()}, teacher)
    return root, data, teacher


@pytest.mark.parametrize("opts", [["attention=uniform"],
                                  ["attention=one_to_one", "mode=batch_free", "--amp", "bf16"],
                                  ["attention_temperature=0.5"]])
def test_options_train_end_to_end_with_diagnostics(tmp_path, tiny, opts) -> None:
    """From the CLI: the run trains, every epoch records α, the projected MSE (and, learned, the logits)
    per pair with the split they were taken on, and the plot draws them."""
    _, data, teacher = tiny
    rc, out, err = _distill(tmp_path, "run", data, teacher, "--method-args", "beta=10", *opts)
    assert rc == 0, err[-2000:]
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    for r in rows:
        ex = r["extras"]
        assert ex["observed_on"] == "val"
        att, mse = ex["attention"], ex["pair_mse"]
        assert len(att) == len(mse) == 3 and all(len(row) == 3 for row in att + mse)
        mode = next((o.split("=")[1] for o in opts if o.startswith("attention=")), "learned")
        assert r.get("test_acc") is not None
        assert ex["attention_mode"] == mode
        if mode == "uniform":
            assert all(v == pytest.approx(1 / 3, abs=1e-7) for row in att for v in row)  # float32 1/3
            assert all(v is not None and v >= 0 for row in mse for v in row)
        elif mode == "one_to_one":
            assert att == [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
            assert [[v is None for v in row] for row in mse] == [[j != i for j in range(3)] for i in range(3)]
        else:
            assert ex["attention_temperature"] == 0.5
            logits = ex["attention_logit"]
            assert all(-1 - 1e-6 <= v <= 1 + 1e-6 for row in logits for v in row)
            lo, hi = ex["attention_box"]
            assert (lo, hi) == pytest.approx(softmax_box(3, 0.5))
            assert all(lo - 1e-6 <= v <= hi + 1e-6 for row in att for v in row)
    pytest.importorskip("matplotlib")
    from semckd.plot import plot_attention

    assert plot_attention(tmp_path / "run").stat().st_size > 0


def test_pinned_attention_is_noted_in_run_json_report_and_plot(tmp_path, tiny) -> None:
    """A run whose last epoch's learned attention is pinned: the run's end says so, run.json keeps the
    note and `semckd report` flags the run (here the records are rewritten to a pinned attention)."""
    _, data, teacher = tiny
    rc, out, err = _distill(tmp_path, "run", data, teacher, "--method-args", "beta=10")
    assert rc == 0, err[-2000:]
    run = tmp_path / "run"
    from semckd.report import build_report

    summary = json.loads((run / "run.json").read_text())
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["extras"]
    expected = attention_pinned(last)
    assert summary.get("notes") == ([expected] if expected else None)
    assert (expected is not None) == ("pinned at a corner" in err)
    # make the last epoch pinned, drop the summary's note: the report reads the records itself
    lines = (run / "metrics.jsonl").read_text().splitlines()
    rec = json.loads(lines[-1])
    rec["extras"]["attention_logit"] = [[0.99, 0.98, -0.99]] * 3
    rec["extras"]["attention"] = [[0.47, 0.47, 0.06]] * 3
    (run / "metrics.jsonl").write_text("\n".join(lines[:-1] + [json.dumps(rec)]) + "\n")
    summary["notes"] = None
    (run / "run.json").write_text(json.dumps(summary))
    report = build_report([run])
    assert "Notes:" in report and "pinned at a corner" in report
    pytest.importorskip("matplotlib")
    from semckd.plot import split_label

    assert split_label(run, rec["extras"]) == "validation-split mean"
    assert split_label(run, {}) == "validation-split mean"  # older records: the run's val split


def test_resume_with_a_fixed_attention_is_bit_identical(tmp_path, tiny) -> None:
    """Two epochs straight vs one epoch then --resume to two: same student weights."""
    _, data, teacher = tiny
    opts = ["--method-args", "beta=10", "attention=one_to_one"]
    rc, _, err = _distill(tmp_path, "straight", data, teacher, *opts)
    assert rc == 0, err[-2000:]
    rc, _, err = _distill(tmp_path, "split", data, teacher, *opts, "--epochs", "1")
    assert rc == 0, err[-2000:]
    rc, _, err = _distill(tmp_path, "split", data, teacher, *opts, "--resume")
    assert rc == 0, err[-2000:]
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)["student"]
    b = torch.load(tmp_path / "split" / "last.pt", weights_only=True)["student"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
