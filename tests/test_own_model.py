"""A user's own model, unedited: layers found automatically, named in any form, loaded by import path.

The models live in a module written to a temporary folder (``tmpmod.py``), exactly as a user's file
would: a plain ``nn.Sequential`` CNN and two torchvision-style networks (ResNet naming
``conv1 … layer4/fc``, VGG naming ``features/avgpool/classifier``), none declaring ``stage_names`` or
``head_name`` and none registered.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from engine_helpers import make_fashion_mnist
from torch import nn

from semckd.cli import main
from semckd.config import check_method, resolve_config
from semckd.features import FeatureTap, discover_head, model_layout
from semckd.methods import BuildContext, build_distiller
from semckd.models import create_model, list_models

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.usefixtures("one_thread")

MODULE = textwrap.dedent('''
    """A user's models: plain torch, nothing semckd-specific."""
    import torch
    from torch import nn


    def sequential(num_classes, in_channels=1, width=8):
        w = width
        return nn.Sequential(
            nn.Conv2d(in_channels, w, 3, 1, 1), nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, 2, 1), nn.ReLU(),
            nn.Conv2d(2 * w, 4 * w, 3, 2, 1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * w, num_classes))


    def wide(num_classes, in_channels=1):
        return sequential(num_classes, in_channels, width=12)


    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.relu = nn.ReLU(inplace=True)  # called twice per block, as in torchvision
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.down = nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None

        def forward(self, x):
            out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
            return self.relu(out + (x if self.down is None else self.down(x)))


    class ResNetish(nn.Module):
        """torchvision ResNet naming."""

        def __init__(self, num_classes=1000, in_channels=3, width=4):
            super().__init__()
            w = width
            self.conv1 = nn.Conv2d(in_channels, w, 3, 1, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(w)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            self.layer1 = nn.Sequential(Block(w, w, 1))
            self.layer2 = nn.Sequential(Block(w, 2 * w, 2))
            self.layer3 = nn.Sequential(Block(2 * w, 4 * w, 2))
            self.layer4 = nn.Sequential(Block(4 * w, 8 * w, 2))
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(8 * w, num_classes)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(self.avgpool(x), 1))


    def resnetish(num_classes, in_channels=3):
        return ResNetish(num_classes, in_channels)


    class VGGish(nn.Module):
        """torchvision VGG naming: features, an adaptive avgpool that is not 1x1, an MLP classifier."""

        def __init__(self, num_classes=1000, in_channels=1, width=8):
            super().__init__()
            w = width
            self.features = nn.Sequential(
                nn.Conv2d(in_channels, w, 3, 1, 1), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(w, 2 * w, 3, 1, 1), nn.BatchNorm2d(2 * w), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(2 * w, 2 * w, 3, 1, 1), nn.ReLU())
            self.avgpool = nn.AdaptiveAvgPool2d((2, 2))
            self.classifier = nn.Sequential(nn.Linear(8 * w, 16), nn.ReLU(), nn.Linear(16, num_classes))

        def forward(self, x):
            return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


    def vggish(num_classes):  # no in_channels parameter: called without it
        return VGGish(num_classes)


    def not_a_model(num_classes):
        return 42


    def no_classes():
        return sequential(10)


    NOT_CALLABLE = 3
''')

SEQ_STAGES = ["1", "3", "5"]  # the ReLU after each conv: 28×28, 14×14, 7×7
RES_STAGES = ["relu", "layer1", "layer2", "layer3", "layer4"]  # stem 28, then 14, 7, 4, 2
VGG_STAGES = ["features.2", "features.6", "features"]  # 28, 14, 7; the 2×2 adaptive pool is no stage


@pytest.fixture(scope="module")
def mod_dir(tmp_path_factory) -> Path:
    """``tmpmod.py`` (and an installed-package entry point ``tmp_ep_net``) importable in this process."""
    d = tmp_path_factory.mktemp("own")
    (d / "tmpmod.py").write_text(MODULE)
    (d / "broken.py").write_text("raise RuntimeError('boom at import')\n")
    info = d / "tmp_ep-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tmp-ep\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[semckd.models]\ntmp_ep_net = tmpmod:wide\n")
    with pytest.MonkeyPatch.context() as mp:  # a user's folder on the import path, for this module only
        mp.syspath_prepend(str(d))
        yield d
    for name in ("tmpmod", "broken"):
        sys.modules.pop(name, None)


def mk(factory: str) -> nn.Module:
    """A model of ``tmpmod`` for 1-channel 28×28 images and 10 classes, built by the user's own code."""
    import tmpmod

    fn = getattr(tmpmod, factory)
    return fn(10) if factory == "vggish" else fn(10, in_channels=1)


def _ctx(batch: int = 8) -> BuildContext:
    return BuildContext(example_input=torch.randn(batch, 1, 28, 28), batch_size=batch, num_classes=10,
                        num_samples=64)


def _train_step(d: nn.Module, ctx: BuildContext) -> dict[str, torch.Tensor]:
    logits, losses = d(ctx.example_input, torch.randint(0, 10, (ctx.batch_size,)),
                       torch.arange(ctx.batch_size))
    total = sum(losses.values())
    total.backward()
    assert logits.shape == (ctx.batch_size, 10)
    assert torch.isfinite(total)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in d.student.parameters())
    return losses


# ---------------------------------------------------------------------- Python API
@pytest.mark.parametrize("factory, stages, head", [
    ("sequential", SEQ_STAGES, "8"),
    ("resnetish", RES_STAGES, "fc"),
    ("vggish", VGG_STAGES, "classifier.2"),
])
def test_layout_is_discovered_from_a_dry_run(mod_dir, factory, stages, head) -> None:
    model = mk(factory)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert model_layout(model, torch.randn(4, 1, 28, 28)) == (stages, head)
    assert model.training and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(not m._forward_hooks for m in model.modules())


def test_zoo_models_keep_their_declared_layout() -> None:
    model = create_model("resnet8", num_classes=10)
    assert model_layout(model, torch.randn(2, 3, 32, 32)) == (model.stage_names, model.head_name)


def test_head_is_the_last_linear_to_run_not_the_last_registered() -> None:
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 3)  # registered first, runs last
            self.body = nn.Sequential(nn.Conv2d(1, 8, 3, 2, 1), nn.ReLU())
            self.proj = nn.Linear(8, 8)

        def forward(self, x):
            return self.fc(self.proj(self.body(x).mean((2, 3))))

    assert model_layout(Odd(), torch.randn(2, 1, 8, 8))[1] == "fc"
    assert discover_head(Odd()) == "proj"  # without a dry run: registration order


@pytest.mark.parametrize("method", ["semckd", "fitnet"])
@pytest.mark.parametrize("student, teacher", [("sequential", "wide"), ("vggish", "resnetish")])
def test_distil_own_models_with_no_options(mod_dir, method, student, teacher) -> None:
    torch.manual_seed(0)
    s, t = mk(student), mk(teacher)
    ctx = _ctx()
    d = build_distiller(method, s, t, ctx)
    losses = _train_step(d, ctx)
    assert method in losses
    assert d.s_tap.names == model_layout(s, ctx.example_input)[0]
    assert d.t_tap.names == model_layout(t, ctx.example_input)[0]
    if method == "semckd":  # discovered layers are all used (no stem dropped)
        so, to = d.probe(ctx.example_input)
        assert [len(f) for f in d.layers(so, to)] == [len(so.feats), len(to.feats)]
    d.remove_taps()


def test_head_name_options(mod_dir) -> None:
    assert check_method("semckd", {"head_name": "8"}) == {"head_name": "8"}  # a head option of every method
    assert check_method("semckd+fitnet", {"semckd": {"student_head": "8", "teacher_head": "fc"}}) == \
        {"semckd": {"student_head": "8", "teacher_head": "fc"}}
    ctx = _ctx()
    s, t = mk("sequential"), mk("wide")
    d = build_distiller("fitnet", s, t, ctx, {"head_name": 8})  # both heads; stages still discovered
    assert (d.s_head_name, d.t_head_name) == ("8", "8") and d.s_tap.names == SEQ_STAGES
    t = mk("resnetish")
    d = build_distiller("kd", s, t, ctx, {"student_head": "8", "teacher_head": "fc"})
    assert (d.s_head_name, d.t_head_name) == ("8", "fc")
    _train_step(d, ctx)
    # the head is the module whose input is the embedding: any module may be named
    d = build_distiller("kd", s, t, ctx, {"student_head": "7", "teacher_head": "avgpool"})
    assert d.student_forward(ctx.example_input).embedding.shape == (8, 32)


def test_a_declared_head_alone_gets_discovered_stages(mod_dir) -> None:
    s, t = mk("sequential"), mk("wide")
    s.head_name = t.head_name = "8"  # was: "Sequential declares no stage_names"
    ctx = _ctx()
    d = build_distiller("semckd", s, t, ctx)
    assert d.s_tap.names == d.t_tap.names == SEQ_STAGES
    _train_step(d, ctx)


def test_layer_names_of_any_form(mod_dir) -> None:
    s = mk("sequential")
    v = mk("vggish")
    r = mk("resnetish")
    assert FeatureTap(s, [1, 3, 5]).names == ["1", "3", "5"]  # was: AttributeError
    assert FeatureTap(s, "3").names == ["3"]
    assert FeatureTap(s, [-4]).names == ["5"]  # negative: counted from the end, like nn.Sequential
    assert FeatureTap(v, ["features[2]", "features.6", " features "]).names == VGG_STAGES
    assert FeatureTap(r, ["layer2.0.conv1", "module.layer3"]).names == ["layer2.0.conv1", "layer3"]
    ctx = _ctx()
    d = build_distiller("semckd+fitnet", s, mk("wide"), ctx,
                        {"semckd": {"student_layers": [1, 3, 5], "teacher_layers": [3, "5"]}})
    assert d.s_tap.names == ["1", "3", "5"] and d.t_tap.names == ["3", "5"]
    _train_step(d, ctx)
    with pytest.raises(ValueError, match=r"no module named 'layer9' in ResNetish \(did you mean 'layer\d'\?\)"
                                         r"; use a name from model\.named_modules\(\) \(top level: conv1, "
                                         r"bn1, relu, maxpool, layer1, .*, fc; nested as dotted paths, "
                                         r"e\.g\. layer1\.0\) or a top-level index 0\.\.9"):
        FeatureTap(r, ["layer9"])
    with pytest.raises(ValueError, match=r"no module named 9 in Sequential; .*top level: 0, 1, 2.* 0\.\.8"):
        FeatureTap(s, [1, 9])


# ---------------------------------------------------------------------- loading models by name
def test_create_model_by_import_path_and_entry_point(mod_dir) -> None:
    m = create_model("tmpmod:sequential", num_classes=7, in_channels=3)
    assert m(torch.randn(2, 3, 12, 12)).shape == (2, 7)
    x = torch.randn(2, 1, 28, 28)
    assert create_model("tmpmod:vggish", num_classes=4, in_channels=1)(x).shape == (2, 4)
    assert create_model("tmpmod:ResNetish", num_classes=5, in_channels=1)(x).shape == (2, 5)  # a class
    ep = create_model("tmp_ep_net", num_classes=3, in_channels=1)  # semckd.models entry point
    assert ep[0].out_channels == 12 and ep(torch.randn(2, 1, 28, 28)).shape == (2, 3)
    assert "tmp_ep_net" not in list_models()  # the registry lists registered models only
    with pytest.raises(ValueError, match="installed: tmp_ep_net, or name your own as pkg.module:factory"):
        create_model("nope_net")
    cfg, _ = resolve_config("distill", flags={"model": "tmpmod:sequential", "dataset": "fashion_mnist",
                                              "teacher": "t.pt"})
    assert cfg.out == str(Path("runs", "fashion_mnist", "tmpmod-sequential_semckd"))  # no ':' in folders


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    return str(make_fashion_mnist(tmp_path_factory.mktemp("owndata"), n_train=96, n_test=48))


def _common(data: str, out: Path) -> list[str]:
    return ["--dataset", "fashion_mnist", "--data-dir", data, "--device", "cpu", "--no-tensorboard",
            "--epochs", "1", "--batch-size", "32", "--quiet", "--out", str(out)]


@pytest.mark.parametrize("model, expected", [
    ("nosuchmod:f", "model 'nosuchmod:f': no module named 'nosuchmod'; run from the folder that holds it"),
    ("tmpmod:nope", "model 'tmpmod:nope': 'tmpmod' has no attribute 'nope'; it defines: "),
    ("tmpmod:NOT_CALLABLE", "'NOT_CALLABLE' is a int, not a callable that builds a model"),
    ("tmpmod:not_a_model", "the factory returned int, not a torch.nn.Module"),
    ("tmpmod:no_classes", "its factory must accept num_classes=N"),
    ("tmpmod:", "expected MODULE:FACTORY"),
    ("broken:f", "importing 'broken' failed (RuntimeError: boom at import)"),
    ("tmpmod", "unknown model 'tmpmod'"),
])
def test_bad_model_names_are_one_line(mod_dir, data, tmp_path, capsys, model, expected) -> None:
    rc = main(["train-teacher", *_common(data, tmp_path / "t"), "--model", model])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.count("\n") == 1 and err.startswith("semckd: error: ") and expected in err, err
    assert "(--model)" in err or "factory" in err


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.* is deprecated, still supported
def test_cli_distil_eval_export_own_models(mod_dir, data, tmp_path, capsys) -> None:
    t, s1, s2 = tmp_path / "t", tmp_path / "s1", tmp_path / "s2"
    assert main(["train-teacher", *_common(data, t), "--model", "tmpmod:resnetish"]) == 0
    assert main(["distill", *_common(data, s1), "--model", "tmpmod:sequential", "--teacher",
                 str(t / "best.pt"), "--method", "semckd"]) == 0
    run = json.loads((s1 / "run.json").read_text())
    assert run["model"] == "tmpmod:sequential" and run["teacher_model"] == "tmpmod:resnetish"
    assert "train_semckd" in json.loads((s1 / "metrics.jsonl").read_text().splitlines()[0])
    # a plain state_dict teacher names its architecture with --teacher-model; layers/heads by method args
    torch.save(torch.load(t / "best.pt", weights_only=True)["student"], tmp_path / "plain.pt")
    assert main(["distill", *_common(data, s2), "--model", "tmpmod:vggish", "--teacher",
                 str(tmp_path / "plain.pt"), "--teacher-model", "tmpmod:resnetish", "--method", "fitnet",
                 "--method-args", "student_layers=[features.2,features.6,features]",
                 "teacher_layers=[layer1,layer2,layer3]", "student_head=classifier.2",
                 "teacher_head=fc"]) == 0
    capsys.readouterr()
    # eval and export need no --model: the checkpoint records the import path
    assert main(["eval", "--checkpoint", str(s1 / "best.pt"), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["model"] == "tmpmod:sequential" and res["test_acc"] == pytest.approx(run["best_acc"])
    assert main(["export", str(s2), "--out", str(tmp_path / "exp"),
                 "--format", "state_dict,torchscript"]) == 0
    info = json.loads((tmp_path / "exp" / "model.json").read_text())
    assert info["arch"] == "tmpmod:vggish"
    net = mk("vggish")
    net.load_state_dict(torch.load(tmp_path / "exp" / "student.pt", weights_only=True))
    scripted = torch.jit.load(str(tmp_path / "exp" / "student.torchscript.pt"))
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(scripted(x), net.eval()(x))
    # an installed entry point works the same way, and its name is what the checkpoint records
    assert main(["train-teacher", *_common(data, tmp_path / "ep"), "--model", "tmp_ep_net",
                 "--limit-train", "32"]) == 0
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(tmp_path / "ep" / "best.pt"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model"] == "tmp_ep_net"
    # a wrong layer name is one line naming the valid choices, not a traceback
    rc = main(["distill", *_common(data, tmp_path / "bad"), "--model", "tmpmod:sequential", "--teacher",
               str(t / "best.pt"), "--method", "fitnet", "--method-args", "student_layers=[1,30]"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert "no module named 30 in Sequential; use a name from model.named_modules() (top level: 0, 1" in err


def test_semckd_executable_imports_from_the_current_folder(mod_dir, data, tmp_path) -> None:
    """The console script (not ``python -m``) does not put the current folder on sys.path; a model
    named by import path is still found there, and a run's checkpoint evaluates by itself."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "mynets.py").write_text(MODULE)
    launcher = tmp_path / "bin" / "semckd"
    launcher.parent.mkdir()
    launcher.write_text("import sys\nfrom semckd.cli import main\nsys.exit(main())\n")  # what pip writes
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SEMCKD_AMP": "none"}

    def semckd(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(launcher), *argv], cwd=work, env=env, capture_output=True,
                              text=True, timeout=300)

    p = semckd("train-teacher", *_common(data, work / "t"), "--model", "mynets:sequential",
               "--limit-train", "32")
    assert p.returncode == 0, p.stderr
    p = semckd("eval", "--checkpoint", "t/best.pt", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["model"] == "mynets:sequential"


# ---------------------------------------------------------------------- the README section
def test_readme_own_model_snippet_runs(mod_dir) -> None:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Your own model", 1)[1].split("\n## ", 1)[0]
    code = re.findall(r"```python\n(.*?)```", section, re.S)
    assert code, "README 'Your own model' has no python example"
    exec(compile(code[0], "README.md", "exec"), {})  # noqa: S102 - our own documentation
