"""amp="auto": which precision a run picks, that the engine uses and records it, and the bench's "auto"."""

from __future__ import annotations

import contextlib

import pytest
import torch
from engine_helpers import TINY, make_fashion_mnist, register_tiny

from semckd import engine, precision
from semckd.config import resolve_config
from semckd.evaluate import evaluate_checkpoint
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
    res = evaluate_checkpoint(str(tmp_path / "r" / "best.pt"), device="cpu")
    assert res["amp"] == "none" and res["test_acc"] == pytest.approx(summary["best_acc"])


def test_bench_auto_measures_the_default_precision_once(monkeypatch):
    from benchmarks import bench

    rows = bench.run_bench([("tiny", "resnet8", "resnet14", 8, 3, 10)], methods=["vanilla"],
                           precisions=["auto", "fp32"], batch_size=4, device="cpu", steps=1, warmup=0,
                           repeats=1, isolate=False, count_flops=False, threads=1)["results"]
    want = bench.default_precision(torch.device("cpu"))
    assert want == {"none": "fp32", "bf16": "bf16-cl"}[resolve_amp("auto", "cpu")[0]]
    assert [r["precision"] for r in rows] == list(dict.fromkeys([want, "fp32"]))
    assert [r["is_default"] for r in rows] == [r["precision"] == want for r in rows]
    assert "(default)" in bench.format_table({"results": rows, "machine": bench.machine_info(
        torch.device("cpu")), "settings": {"batch_size": 4, "warmup": 0, "repeats": 1, "steps": 1}})
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert bench.default_precision(torch.device("cpu")) == "bf16-cl"
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert bench.default_precision(torch.device("cpu")) == "fp32"


def test_channels_last_defaults_on_only_for_bf16_on_cpu():
    from semckd.precision import resolve_channels_last

    assert resolve_channels_last(None, "bf16", "cpu") is True
    for amp in ("none", "fp16", "bf16-emulated"):
        assert resolve_channels_last(None, amp, "cpu") is False
    assert resolve_channels_last(None, "bf16", "meta") is False  # only measured on CPU
    assert resolve_channels_last(False, "bf16", "cpu") is False and resolve_channels_last(True, "none", "cpu")


@pytest.mark.parametrize("amp,flag,want", [("bf16", None, True), ("none", None, False),
                                           ("bf16", False, False), ("none", True, True)])
def test_engine_follows_the_channels_last_rule(tmp_path, amp, flag, want):
    """A run's networks, input pipeline and run.json follow the rule: unset means on for CPU bf16 only."""
    register_tiny()
    data = str(make_fashion_mnist(tmp_path / "d", n_train=64, n_test=32))
    flags = dict(dataset="fashion_mnist", data_dir=data, model=TINY, epochs=1, batch_size=32, amp=amp,
                 out=str(tmp_path / "r"), device="cpu", tensorboard=False, milestones=[], quiet=True)
    if flag is not None:
        flags["channels_last"] = flag
    with engine.open_run(resolve_config("teacher", flags=flags)[0]) as run:
        conv = next(m for m in run.models.student.modules()
                    if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1)
        assert run.precision.channels_last is want
        assert run.data.train.channels_last is want
        assert conv.weight.is_contiguous(memory_format=torch.channels_last) is want
        assert engine.Trainer(run).fit()["channels_last"] is want


# ---------------------------------------------------------------------- bf16 emulation
def _bf16(t: torch.Tensor) -> torch.Tensor:
    return t.bfloat16().float()


def test_emulation_rounds_low_precision_ops_forward_and_backward():
    import torch.nn.functional as F

    from semckd.precision import emulate_bf16, emulation_active, no_autocast

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 5, generator=g, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, generator=g, requires_grad=True)
    assert not emulation_active()
    with emulate_bf16():
        y = F.conv2d(x, w, padding=1)
        r = y.relu()  # elementwise: not rounded (autocast would keep bf16; the emulation is a lower bound)
        with no_autocast("cpu"):  # SemCKD's fp32 blocks switch the emulation off, as they do autocast
            exact = F.conv2d(x, w, padding=1)
        out = torch.nn.functional.linear(r.flatten(1), torch.ones(2, 100))
    assert not emulation_active()
    torch.testing.assert_close(y, _bf16(F.conv2d(_bf16(x), _bf16(w), padding=1)), rtol=0, atol=0)
    assert not torch.equal(y, F.conv2d(x, w, padding=1))
    assert torch.equal(exact, F.conv2d(x, w, padding=1))
    assert torch.equal(r, y.relu())
    out.sum().backward()
    # every gradient leaving a rounded op is a bf16 value, as in a bf16 backward
    assert torch.equal(x.grad, _bf16(x.grad)) and torch.equal(w.grad, _bf16(w.grad))
    # ... which plain fp32 gradients are not (so the check above can fail)
    x32 = x.detach().requires_grad_()
    F.linear(F.conv2d(x32, w, padding=1).relu().flatten(1), torch.ones(2, 100)).sum().backward()
    assert not torch.equal(x32.grad, _bf16(x32.grad))


def test_emulated_semckd_loss_matches_real_bf16_autocast_more_closely_than_fp32():
    from semckd.criterion import SemCKD
    from semckd.precision import emulate_bf16

    g = torch.Generator().manual_seed(1)
    m = SemCKD([8, 16], [12, 24], batch_size=8)
    fs = [torch.randn(8, 8, 8, 8, generator=g).relu(), torch.randn(8, 16, 4, 4, generator=g).relu()]
    ft = [torch.randn(8, 12, 8, 8, generator=g).relu(), torch.randn(8, 24, 4, 4, generator=g).relu()]
    fp32 = m(fs, ft)[0].item()
    with emulate_bf16():
        emulated = m(fs, ft)[0].item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        real = m(fs, ft)[0].item()
    assert emulated != fp32
    assert abs(emulated - real) <= abs(fp32 - real) and abs(emulated - real) < 1e-3 * abs(real)


def test_engine_trains_with_bf16_emulation(tmp_path):
    register_tiny()
    data = str(make_fashion_mnist(tmp_path / "d", n_train=64, n_test=32))
    cfg = resolve_config("teacher", flags=dict(dataset="fashion_mnist", data_dir=data, model=TINY, epochs=1,
                                               batch_size=32, out=str(tmp_path / "r"), device="cpu",
                                               quiet=True, tensorboard=False, milestones=[],
                                               amp="bf16-emulated"))[0]
    summary = engine.train(cfg)
    assert summary["amp"] == "bf16-emulated" and 0 <= summary["best_acc"] <= 100
    res = evaluate_checkpoint(str(tmp_path / "r" / "best.pt"), device="cpu", amp="bf16-emulated")
    assert res["test_acc"] == pytest.approx(summary["best_acc"])


def _register_user_bank_method() -> str:
    """A method written as a user would: float32 buffers updated in place from the step's activations."""
    from torch import nn

    from semckd.methods import Distiller, list_methods, register_method

    name = "user_bank_method"
    if name in list_methods():
        return name

    class UserBank(Distiller):
        needs_teacher = False

        def __init__(self, student, teacher, ctx, *, weight: float = 0.1, **kw) -> None:
            super().__init__(student, teacher, ctx, **kw)
            s, _ = self.probe(ctx.example_input)
            self.proj = nn.Linear(s.embedding.shape[1], 4)
            self.weight = weight
            self.register_buffer("bank", torch.zeros(ctx.num_samples, 4))
            self.register_buffer("copied", torch.zeros(ctx.num_samples, 4))
            self.register_buffer("scattered", torch.zeros(ctx.num_samples, 4))
            self.register_buffer("seen", torch.zeros(10, 4))

        def distill_losses(self, s, t, targets, index):
            z = self.proj(s.embedding)  # bf16/fp16 under autocast
            loss = ((z.float() - self.bank[index]) ** 2).mean()
            with torch.no_grad():
                self.bank[index] = z.detach()
                self.copied.index_copy_(0, index, z.detach())
                self.scattered.scatter_(0, index[:, None].expand(-1, 4), z.detach())
            return {"user": self.weight * loss}

        def observe(self, images, targets) -> None:
            self.seen[targets] = self.proj(self.student_forward(images).embedding)

    UserBank.name = name
    register_method(UserBank)
    return name


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_a_users_method_with_float32_buffers_trains_under_autocast(tmp_path, amp):
    """Autocast makes the activations low precision while buffers stay float32; writes must not crash."""
    register_tiny()
    method = _register_user_bank_method()
    data = str(make_fashion_mnist(tmp_path / "d", n_train=64, n_test=32))
    cfg = resolve_config("distill", flags=dict(dataset="fashion_mnist", data_dir=data, model=TINY, epochs=1,
                                               method=method, batch_size=32, out=str(tmp_path / "r"),
                                               device="cpu", quiet=True, tensorboard=False, milestones=[],
                                               amp=amp))[0]
    summary = engine.train(cfg)
    assert summary["amp"] == amp
    extras = torch.load(tmp_path / "r" / "last.pt", weights_only=True)["extras"]
    for key in ("bank", "copied", "scattered", "seen"):
        buf = extras[key]
        assert buf.dtype == torch.float32 and torch.isfinite(buf).all()
        assert buf.abs().sum() > 0, f"{key} was never written"
    assert torch.equal(extras["bank"], extras["copied"])


def test_state_writes_cast_only_inside_the_guard():
    bank, z, idx = torch.zeros(6, 3), torch.ones(2, 3, dtype=torch.bfloat16), torch.tensor([1, 4])
    with pytest.raises(RuntimeError, match="dtype"):
        bank[idx] = z
    with precision.cast_state_writes():
        bank[idx] = z
        bank.index_add_(0, idx, z)
    assert bank.dtype == torch.float32 and bank[[1, 4]].eq(2).all() and bank.sum() == 12
    assert isinstance(precision.state_writes_guard(), contextlib.nullcontext)  # no mode without autocast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with precision.state_writes_guard():
            bank[idx] = torch.nn.functional.linear(torch.ones(2, 3), torch.eye(3))
    assert bank[[1, 4]].eq(1).all()
