"""amp="auto": which precision a run picks, that the engine uses and records it, and the bench's "auto"."""

from __future__ import annotations

import pytest
import torch
from engine_helpers import TINY, make_fashion_mnist, register_tiny

from semckd import engine, precision
from semckd.config import resolve_config
from semckd.precision import cpu_has_native_bf16, resolve_amp

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _no_env_override(monkeypatch):
    monkeypatch.delenv("SEMCKD_AMP", raising=False)


@pytest.mark.parametrize("amp", ["none", "bf16", "fp16"])
def test_explicit_precision_is_kept_on_every_device(amp):
    for dev in ("cpu", "cuda", "mps"):
        assert resolve_amp(amp, dev) == (amp, "set explicitly")


@pytest.mark.parametrize("native,want", [(True, "bf16"), (False, "none")])
def test_auto_on_cpu_uses_bf16_only_where_native(monkeypatch, native, want):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    got, why = resolve_amp("auto", torch.device("cpu"))
    assert got == want and why.startswith("auto")


@pytest.mark.parametrize("bf16,want", [(True, "bf16"), (False, "fp16")])
def test_auto_on_cuda_prefers_bf16_then_fp16(monkeypatch, bf16, want):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    assert resolve_amp("auto", "cuda:0")[0] == want
    assert resolve_amp("auto", "mps")[0] == "none"


def test_cpu_probe_agrees_with_torch_cpu_capabilities():
    probes = [getattr(torch.cpu, n, lambda: False)() for n in ("_is_avx512_bf16_supported",
                                                               "_is_amx_tile_supported")]
    assert cpu_has_native_bf16() is any(probes)


def test_environment_override_and_bad_values(monkeypatch):
    monkeypatch.setenv("SEMCKD_AMP", "bf16")
    assert resolve_amp("auto", "cpu")[0] == "bf16"
    assert resolve_amp("none", "cpu")[0] == "none"  # an explicit setting wins over the environment
    monkeypatch.setenv("SEMCKD_AMP", "fp8")
    with pytest.raises(ValueError, match="SEMCKD_AMP='fp8'"):
        resolve_amp("auto", "cpu")
    with pytest.raises(ValueError, match="amp must be one of"):
        resolve_amp("half", "cpu")


def test_training_default_is_auto_and_the_run_records_what_it_resolved_to(tmp_path, monkeypatch, capsys):
    register_tiny()
    data = str(make_fashion_mnist(tmp_path / "d", n_train=64, n_test=32))
    cfg = resolve_config("teacher", flags=dict(dataset="fashion_mnist", data_dir=data, model=TINY, epochs=1,
                                               batch_size=32, out=str(tmp_path / "r"), device="cpu",
                                               tensorboard=False, milestones=[]))[0]
    assert cfg.amp == "auto"
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    summary = engine.train(cfg)
    assert summary["amp"] == "none"
    assert "precision: float32 (auto: this CPU has no native bfloat16" in capsys.readouterr().out
    # evaluation of the checkpoint follows the same rule by default and says what it used
    res = engine.evaluate_checkpoint(str(tmp_path / "r" / "best.pt"), device="cpu")
    assert res["amp"] == "none" and res["test_acc"] == pytest.approx(summary["best_acc"])


def test_bench_auto_measures_the_default_precision_once(monkeypatch):
    from semckd import bench

    rows = bench.run_bench([("tiny", "resnet8", "resnet14", 8, 3, 10)], methods=["vanilla"],
                           precisions=["auto", "fp32"], batch_size=4, device="cpu", steps=1, warmup=0,
                           repeats=1, isolate=False, count_flops=False, threads=1)["results"]
    want = bench.default_precision(torch.device("cpu"))
    assert want == {"none": "fp32", "bf16": "bf16"}[resolve_amp("auto", "cpu")[0]]
    assert [r["precision"] for r in rows] == list(dict.fromkeys([want, "fp32"]))
    assert [r["is_default"] for r in rows] == [r["precision"] == want for r in rows]
    assert "(default)" in bench.format_table({"results": rows, "machine": bench.machine_info(
        torch.device("cpu")), "settings": {"batch_size": 4, "warmup": 0, "repeats": 1, "steps": 1}})
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert bench.default_precision(torch.device("cpu")) == "bf16"
