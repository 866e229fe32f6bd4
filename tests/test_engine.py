"""Engine: schedule, config layering, run folder contents, hooks, teacher handling, failures."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from engine_helpers import TINY, TinyNet, make_fashion_mnist, register_probe_methods, register_tiny

from semckd import engine
from semckd.checkpoint import atomic_save, capture_rng, load_teacher, restore_rng
from semckd.config import TrainConfig, default_lr, resolve_config
from semckd.errors import UserError
from semckd.evaluate import evaluate, evaluate_checkpoint
from semckd.finite import NonFiniteLossError
from semckd.models import create_model
from semckd.run import Run, lr_factor
from semckd.runfolder import FORMAT, load_checkpoint


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    register_tiny()
    register_probe_methods()
    return str(make_fashion_mnist(tmp_path_factory.mktemp("fmnist"), n_train=256, n_test=100))


pytestmark = pytest.mark.usefixtures("one_thread")


def cfg(data_dir: str, out: Path, kind: str = "distill", **kw) -> TrainConfig:
    flags = dict(dataset="fashion_mnist", data_dir=data_dir, model=TINY, epochs=1, batch_size=32,
                 out=str(out), device="cpu", quiet=True, tensorboard=False, milestones=[],
                 method="engine_probe")
    if kind == "teacher":
        flags.pop("method")
    flags.update(kw)
    return resolve_config(kind, flags=flags)[0]


@dataclass
class Trained:
    """A finished run: what the engine trained and the summary it returned."""

    run: Run
    summary: dict


def run(c: TrainConfig) -> Trained:
    with engine.open_run(c) as r:
        return Trained(r, engine.Trainer(r).fit())


# ---------------------------------------------------------------------- schedule & config
def test_multistep_schedule_matches_authors():
    c = TrainConfig(model="x", lr=0.05)  # paper defaults: 240 epochs, ×0.1 after 150/180/210
    # the authors decay when epoch (1-based) > milestone; LambdaLR sees the 0-based index
    lrs = [0.05 * lr_factor(e - 1, c) for e in (1, 150, 151, 180, 181, 210, 211, 240)]
    assert lrs == pytest.approx([0.05, 0.05, 0.005, 0.005, 0.0005, 0.0005, 0.00005, 0.00005])
    c = TrainConfig(model="x", lr=0.1, schedule="cosine", epochs=10, warmup_epochs=2)
    f = [lr_factor(e, c) for e in range(10)]
    assert f[0] == pytest.approx(0.5 * 0.5 * (1 + torch.cos(torch.tensor(0.0)).item()))
    assert f[2] > f[5] > f[9] > 0


def test_paper_defaults_and_low_lr_students():
    c, _ = resolve_config("distill", flags={"model": "resnet8x4"})
    assert (c.lr, c.momentum, c.weight_decay, c.batch_size, c.epochs, c.milestones, c.lr_decay) == (
        0.05, 0.9, 5e-4, 64, 240, [150, 180, 210], 0.1)
    assert default_lr("MobileNetV2") == default_lr("ShuffleV1") == 0.01 and default_lr("wrn_16_2") == 0.05
    assert resolve_config("distill", flags={"model": "mobilenetv2"})[0].lr == 0.01
    explicit = resolve_config("distill", flags={"model": "mobilenetv2", "lr": "0.2"})[0]
    assert explicit.lr == 0.2  # an explicit lr wins


def test_config_layers_yaml_then_flags_then_set(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model: resnet8\nepochs: 7\nweight_decay: 1e-4\nmethod_args: {beta: 100, mode: faithful}\n")
    c, explicit = resolve_config("distill", config_file=str(f),
                                 flags={"epochs": "3", "method_args": {"beta": 400}, "milestones": "2 3"},
                                 sets=["lr=0.1", "method_args.factor=2", "nesterov=true"])
    assert (c.model, c.epochs, c.weight_decay, c.lr, c.nesterov, c.milestones) == (
        "resnet8", 3, 1e-4, 0.1, True, [2, 3])
    assert c.method_args == {"beta": 400, "mode": "faithful", "factor": 2}  # merged, not replaced
    assert {"model", "epochs", "lr", "method_args"} <= explicit and "momentum" not in explicit
    t, _ = resolve_config("teacher", flags={"model": "resnet8"})
    assert t.method == "vanilla" and t.out == str(Path("runs/cifar100/resnet8_vanilla"))


# ---------------------------------------------------------------------- run folder
def test_training_writes_resumable_run_folder(data_dir, tmp_path):
    out = tmp_path / "t"
    t = run(cfg(data_dir, out, kind="teacher", epochs=2))
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "config.yaml", "last.pt", "metrics.jsonl",
                                                     "run.json"]
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2]
    for key in ("lr", "train_loss", "train_ce", "train_acc", "test_loss", "test_acc", "test_top5", "best_acc",
                "epoch_time_s", "images_per_s"):
        assert key in lines[0], key
    assert lines[0]["train_images"] == 256
    assert lines[1]["best_acc"] == max(x["test_acc"] for x in lines)
    ck = torch.load(out / "last.pt", weights_only=True)  # plain tensors and python values only
    assert ck["format"] == FORMAT and ck["model"] == TINY and ck["epoch"] == 2
    assert (ck["num_classes"], ck["in_channels"]) == (10, 1)
    assert set(ck) >= {"student", "extras", "optimizer", "scheduler", "rng", "best_acc", "config"}
    assert ck["config"] == yaml.safe_load((out / "config.yaml").read_text()) == t.run.cfg.to_dict()
    best = torch.load(out / "best.pt", weights_only=True)
    assert best["epoch"] == max(lines, key=lambda x: x["test_acc"])["epoch"]
    summary = json.loads((out / "run.json").read_text())
    assert summary["best_acc"] == t.summary["best_acc"] == lines[-1]["best_acc"]
    assert summary["kind"] == "teacher" and summary["method"] == "vanilla"
    # eval of the saved network reproduces the logged accuracy
    res = evaluate_checkpoint(str(out / "best.pt"), device="cpu")
    assert res["test_acc"] == pytest.approx(summary["best_acc"])
    assert res["test_n"] == 100


def test_hooks_fixed_batch_and_extras(data_dir, tmp_path, capsys):
    # 200 training images, batch 32: the partial batch of 8 is dropped; 100 test images at 32: 3 full + 4
    t = run(cfg(data_dir, tmp_path / "h", epochs=2, limit_train=200, method_args={"fixed": True}))
    d = t.run.models.distiller
    assert d.epochs_seen == [1, 2]  # 1-based, once per epoch
    assert set(d.train_batches) == {32} and len(d.train_batches) == 2 * 6
    lines = [json.loads(x) for x in (tmp_path / "h" / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["train_images"] == 192
    # observe() sees only full batches; the engine records which split they came from (no val split here)
    assert lines[0]["extras"] == {"observed": [32, 32, 32], "observed_on": "test"}
    assert "train_probe" in lines[0] and "train_ce" in lines[0]
    ck = torch.load(tmp_path / "h" / "last.pt", weights_only=True)
    assert set(ck["extras"]) == {"proj.weight", "proj.bias", "bank"} and ck["extras"]["bank"].abs().sum() > 0
    assert "partial training batch (8 images per process) is dropped" in capsys.readouterr().err
    # test batches of another size: training is unaffected, the summary sees nothing, the user is told
    t = run(cfg(data_dir, tmp_path / "h2", limit_train=200, eval_batch_size=50, method_args={"fixed": True}))
    assert "summarises test batches of 32 only" in capsys.readouterr().err
    line = json.loads((tmp_path / "h2" / "metrics.jsonl").read_text())
    assert line["extras"] == {"observed": [], "observed_on": "test"} and line["train_images"] == 192


def test_undeclared_fixed_batch_size_is_an_error_naming_the_declaration(data_dir, tmp_path, monkeypatch):
    """A method that reports ``fixed_batch_size`` without declaring ``needs_full_batches`` would train on
    partial batches its modules are not sized for: setup stops and names the classmethod to declare,
    before the run folder is written."""
    from semckd.methods import Distiller, get_method, registry

    class OldStyle(get_method("engine_probe")):
        name = "engine_probe_old"
        needs_full_batches = classmethod(Distiller.needs_full_batches.__func__)

    monkeypatch.setitem(registry._METHODS, OldStyle.name, OldStyle)
    with pytest.raises(UserError, match=r"reports fixed_batch_size but does not declare "
                                        r"needs_full_batches\(options\); declare that classmethod"):
        run(cfg(data_dir, tmp_path / "old", limit_train=200, method="engine_probe_old",
                method_args={"fixed": True}))
    assert not (tmp_path / "old").exists()


def test_teacher_frozen_and_optimizer_covers_student_and_method_modules(data_dir, tmp_path):
    run(cfg(data_dir, tmp_path / "t", kind="teacher", model=TINY + "_wide"))
    teacher_file = tmp_path / "t" / "best.pt"
    t = run(cfg(data_dir, tmp_path / "s", method="engine_probe_t", teacher=str(teacher_file), epochs=1))
    d = t.run.models.distiller
    saved = torch.load(teacher_file, weights_only=True)["student"]
    for k, v in d.teacher.state_dict().items():
        assert torch.equal(v, saved[k]), k  # weights and BN statistics untouched
    assert not d.teacher.training
    opt_ids = {id(p) for g in t.run.optimizer.param_groups for p in g["params"]}
    assert opt_ids == {id(p) for p in d.student.parameters()} | {id(p) for p in d.proj.parameters()}
    assert all(g["weight_decay"] == 5e-4 for g in t.run.optimizer.param_groups)
    assert t.summary["teacher_model"] == TINY + "_wide"


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(data_dir, tmp_path):
    out = tmp_path / "nan"
    c = cfg(data_dir, out, epochs=3, method_args={"blowup_epoch": 2})
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, step 1 .*probe.*epoch 1\) is kept"):
        run(c)
    ck = torch.load(out / "last.pt", weights_only=True)
    assert ck["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ck["student"].values() if v.is_floating_point())
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1


def test_failed_save_leaves_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    atomic_save({"a": torch.ones(3)}, path)
    before = path.read_bytes()

    def broken_save(obj, f, *a, **k):
        f.write(b"partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"a": torch.zeros(3)}, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["last.pt"]  # no temp file left behind


def test_teacher_checkpoint_formats(tmp_path):
    register_tiny()
    net = TinyNet(10, 1)
    sd = net.state_dict()
    semckd_ck = {"format": FORMAT, "model": TINY, "num_classes": 10, "in_channels": 1, "student": sd}
    authors = tmp_path / f"{TINY}_vanilla"  # the authors' folder naming names the architecture
    authors.mkdir()
    files = {
        "semckd": (tmp_path / "a.pt", semckd_ck, None),
        "plain": (tmp_path / "b.pt", sd, TINY),
        "ddp-prefixed": (tmp_path / "c.pt", {"state_dict": {"module." + k: v for k, v in sd.items()}}, TINY),
        "authors": (authors / "ckpt_epoch_240.pth", {"model": sd, "epoch": 240, "best_acc": 71.0}, None),
    }
    for label, (p, obj, arch) in files.items():
        torch.save(obj, p)
        t, meta = load_teacher(p, arch=arch, num_classes=10, in_channels=1)
        assert meta["model"] == TINY, label
        for k, v in t.state_dict().items():
            assert torch.equal(v, sd[k]), (label, k)


def test_teacher_arch_from_the_authors_shufflenet_folders(tmp_path):
    # the authors' model_dict names ShuffleV1/ShuffleV2; their run folders carry those names
    for folder, arch in (("ShuffleV1_vanilla", "shufflenetv1"), ("ShuffleV2_vanilla", "shufflenetv2"),
                         ("S:ShuffleV2_T:resnet32x4_cifar100_kd_r:1.0_a:1.0_b:0.0_1", "shufflenetv2")):
        sd = create_model(arch, num_classes=10).state_dict()
        (tmp_path / folder).mkdir()
        path = tmp_path / folder / "ckpt_epoch_240.pth"
        torch.save({"model": sd}, path)
        t, meta = load_teacher(path, arch=None, num_classes=10, in_channels=3)
        assert meta["model"] == arch, folder
        assert all(torch.equal(v, sd[k]) for k, v in t.state_dict().items())


def test_rng_state_roundtrip_is_weights_only(tmp_path):
    import random

    import numpy as np

    torch.manual_seed(3)
    random.seed(3)
    np.random.seed(3)
    state = capture_rng()
    torch.save(state, tmp_path / "rng.pt")
    expected = (torch.rand(3), random.random(), np.random.rand())
    restore_rng(load_checkpoint(tmp_path / "rng.pt"))
    got = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(got[0], expected[0]) and got[1:] == expected[1:]


@pytest.mark.parametrize("opts", [{"amp": "bf16"}, {"channels_last": True, "augment": False}])
def test_amp_and_channels_last_train(data_dir, tmp_path, opts):
    t = run(cfg(data_dir, tmp_path / "x", kind="teacher", limit_train=64, **opts))
    assert 0 <= t.summary["final_acc"] <= 100 and t.summary["best_acc"] == t.summary["final_acc"]


def test_every_shipped_recipe_resolves():
    files = sorted((Path(__file__).resolve().parent.parent / "configs").rglob("*.yaml"))
    assert any("fashion_mnist" in str(f) for f in files)
    for f in files:
        c, _ = resolve_config("teacher" if f.stem.startswith("teacher_") else "distill", config_file=str(f))
        assert c.model and c.epochs >= 1, f


def test_tensorboard_scalars_when_installed(data_dir, tmp_path, monkeypatch):
    import sys
    import types

    calls: list[tuple] = []

    class FakeWriter:
        def __init__(self, logdir):
            calls.append(("init", logdir))

        def add_scalar(self, tag, value, step):
            calls.append((tag, value, step))

        def flush(self):
            pass

        def close(self):
            calls.append(("close",))

    fake = types.SimpleNamespace(SummaryWriter=FakeWriter)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    run(cfg(data_dir, tmp_path / "tb", kind="teacher", epochs=2, limit_train=64, tensorboard=True))
    assert calls[0] == ("init", str(tmp_path / "tb" / "tb")) and calls[-1] == ("close",)
    acc = [(v, step) for tag, *rest in calls[1:-1] if tag == "test_acc" for v, step in [rest]]
    lines = [json.loads(x) for x in (tmp_path / "tb" / "metrics.jsonl").read_text().splitlines()]
    assert acc == [(x["test_acc"], x["epoch"]) for x in lines]


def test_out_of_memory_becomes_a_user_error(data_dir, tmp_path, monkeypatch):
    def oom(self, epoch):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(engine.Trainer, "train_epoch", oom)
    with pytest.raises(UserError, match="out of device memory with batch size 32; lower --batch-size"):
        engine.train(cfg(data_dir, tmp_path / "oom", kind="teacher", limit_train=64))


def test_simkd_accuracy_is_measured_on_the_deployable_network(data_dir, tmp_path):
    """SimKD answers through projector + teacher classifier; its own head is never trained."""
    tdir = tmp_path / "teacher"
    run(cfg(data_dir, tdir, kind="teacher", epochs=2))
    out = tmp_path / "simkd"
    t = run(cfg(data_dir, out, method="simkd", teacher=str(tdir / "best.pt"), epochs=2))
    dep = t.run.models.distiller.deployable_student()
    logged = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()][-1]["test_acc"]
    assert evaluate(dep, t.run.data.test, torch.device("cpu"))["test_acc"] == pytest.approx(logged)
    x = next(iter(t.run.data.test))[0]
    t.run.models.eval_model.eval()
    t.run.models.student.eval()
    with torch.no_grad():  # the engine scores the composite, not the bare student's untrained head
        assert torch.allclose(t.run.models.eval_model(x), dep(x))
        assert not torch.allclose(t.run.models.eval_model(x), t.run.models.student(x))
    res = evaluate_checkpoint(str(out / "last.pt"), device="cpu")
    assert res["test_acc"] == pytest.approx(logged)


def test_engine_gives_crd_the_training_labels_for_exact_negatives(data_dir, tmp_path):
    tdir = tmp_path / "teacher"
    run(cfg(data_dir, tdir, kind="teacher", limit_train=64))
    t = run(cfg(data_dir, tmp_path / "crd", method="crd", teacher=str(tdir / "best.pt"), limit_train=64,
                method_args={"nce_k": 8}))
    mem = t.run.models.distiller.contrast
    assert mem.mode == "exact" and mem._has_labels  # the authors' default, fed by the engine
    labels = t.run.data.train.targets
    assert labels.shape[0] == mem.num_samples == 64
    rows = mem.sample(torch.arange(64))
    assert not bool((labels[rows[:, 1:]] == labels[:, None]).any())  # no negative shares its anchor's class
