"""One run-folder schema (semckd.runfolder), one precision type, one training step (#12 parts 2 and 3)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from engine_helpers import TINY, make_fashion_mnist, register_tiny
from torch import nn

from semckd import runfolder
from semckd.errors import UserError
from semckd.precision import Precision

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_run_folder_round_trips_through_its_typed_records(tmp_path):
    """What the engine writes is exactly what the records read back (no key the readers must guess)."""
    from semckd import engine
    from semckd.config import resolve_config

    register_tiny()
    data = str(make_fashion_mnist(tmp_path / "d", n_train=64, n_test=32))
    folder = tmp_path / "r"
    cfg = resolve_config("teacher", flags=dict(dataset="fashion_mnist", data_dir=data, model=TINY, epochs=2,
                                               batch_size=32, out=str(folder), device="cpu", quiet=True,
                                               tensorboard=False, milestones=[]))[0]
    engine.train(cfg)
    run = runfolder.read_summary(folder)
    assert run is not None and run.kind == "teacher" and run.best_epoch >= 1 and run.amp in ("none", "bf16")
    assert json.loads((folder / "run.json").read_text()) == run.to_dict()
    rows = runfolder.read_metrics(folder)
    assert [r["epoch"] for r in rows] == [1, 2]
    for row in rows:
        assert runfolder.EpochRecord.from_dict(row).to_dict() == row  # same keys, same order, same values
        assert list(runfolder.EpochRecord.from_dict(row).to_dict()) == list(row)
    ck = runfolder.load_checkpoint(folder / "best.pt")
    meta = runfolder.checkpoint_meta(ck)
    # what eval and export need is in the file itself, not looked up from the dataset name
    assert (meta.input_size, meta.in_channels, meta.num_classes) == ((28, 28), 1, 10) and not meta.notes
    assert meta.mean == pytest.approx((0.2860,)) and meta.std == pytest.approx((0.3530,))
    assert ck["input_size"] == [28, 28] and ck["mean"] == pytest.approx([0.2860])


def test_old_checkpoints_without_input_fields_still_load_with_a_note():
    old = {"format": runfolder.FORMAT, "model": "resnet8", "num_classes": 10, "in_channels": 1, "student": {},
           "config": {"dataset": "cifar100"}}
    meta = runfolder.checkpoint_meta(old)
    assert meta.input_size == (32, 32) and meta.mean == pytest.approx((0.5071, 0.4867, 0.4408))
    assert "does not record" in meta.notes[0] and "cifar100" in meta.notes[0]
    unknown = runfolder.checkpoint_meta({**old, "config": {"dataset": "my_own"}})
    assert unknown.input_size is None and "not one semckd knows" in unknown.notes[0]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.* is deprecated, still supported
def test_export_of_an_old_checkpoint_says_where_its_input_size_came_from(tmp_path):
    from semckd.export import export_checkpoint
    from semckd.models import create_model

    sd = create_model("resnet8", num_classes=10, in_channels=1).state_dict()
    ck = {"format": runfolder.FORMAT, "model": "resnet8", "num_classes": 10, "in_channels": 1,
          "student": {"module." + k: v for k, v in sd.items()}, "epoch": 1,
          "config": {"kind": "teacher", "dataset": "fashion_mnist"}}
    torch.save(ck, tmp_path / "old.pt")
    res = export_checkpoint(tmp_path / "old.pt", tmp_path / "o", ["state_dict"])
    assert res.info["input_size"] == [28, 28] and any("does not record" in n for n in res.info["notes"])
    torch.save({**ck, "config": {"kind": "teacher", "dataset": "my_own"}}, tmp_path / "odd.pt")
    with pytest.raises(UserError, match="records no input size"):
        export_checkpoint(tmp_path / "odd.pt", tmp_path / "o2", ["state_dict"])


def test_one_prefix_stripper_and_one_loader_everywhere():
    assert runfolder.strip_wrapper_prefixes({"module._orig_mod.a": 1, "b": 2}) == {"a": 1, "b": 2}


def test_precision_is_one_resolved_type(monkeypatch):
    from semckd import precision

    cpu = torch.device("cpu")
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    monkeypatch.delenv("SEMCKD_AMP", raising=False)
    auto = Precision.resolve("auto", None, cpu)
    assert (auto.amp, auto.channels_last) == ("bf16", True)
    assert Precision.resolve(auto, False, cpu) is auto
    assert "bfloat16 autocast (auto: this CPU has native" in auto.describe()
    assert auto.describe().endswith(", channels-last") and auto.grad_scaler(cpu) is None
    with auto.autocast(cpu):
        assert torch.is_autocast_enabled("cpu")
    assert Precision("none").dtype is None and Precision("fp16").dtype == torch.float16
    with pytest.raises(ValueError):
        Precision("auto")  # a Precision is always resolved


class _Toy(nn.Module):
    """The distiller protocol in miniature: forward(images, targets, index) -> (logits, {name: loss})."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))

    def forward(self, x, y, idx):
        logits = self.net(x)
        return logits, {"ce": nn.functional.cross_entropy(logits, y), "l2": 0.1 * logits.pow(2).mean()}


def test_the_one_step_is_the_engines_op_order_bit_for_bit():
    from semckd.step import make_train_step, train_step

    torch.manual_seed(0)
    a = _Toy()
    b = _Toy()
    b.load_state_dict(a.state_dict())
    oa = torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.9)
    ob = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(5, 6), torch.tensor([0, 1, 2, 0, 1])
    step = make_train_step(b, ob, torch.device("cpu"), Precision("none"))
    for _ in range(3):
        _, losses = a(x, y, None)  # the engine's former inline step
        loss = sum(losses.values())
        oa.zero_grad(set_to_none=True)
        loss.backward()
        oa.step()
        assert torch.equal(step(x, y, None), loss.detach())
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    res = train_step(b, ob, x, y, None, precision=Precision("none"), device=torch.device("cpu"))
    assert set(res.losses) == {"ce", "l2"} and res.logits.shape == (5, 3)

    class Empty(_Toy):
        def forward(self, x, y, idx):
            return self.net(x), {}

    with pytest.raises(UserError, match="method 'x' returned no loss terms"):
        train_step(Empty(), ob, x, y, None, precision=Precision("none"), device=torch.device("cpu"),
                   name="method 'x'")


def test_the_installed_package_ships_no_measurement_code():
    import semckd

    pkg = Path(semckd.__file__).parent
    assert not (pkg / "bench.py").exists() and not (pkg / "reference.py").exists()
    assert not (pkg / "commands" / "bench.py").exists()  # the bench is `python -m benchmarks bench`
    assert not (pkg / "data" / "baseline.py").exists()
    text = (pkg.parent / "pyproject.toml").read_text()
    assert 'include = ["semckd*"]' in text and '"benchmarks*"' in text
