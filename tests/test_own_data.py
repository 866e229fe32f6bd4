"""A user's own data, end to end, on real Fashion-MNIST images the tests convert: tensors, a Dataset of PIL
images, a CSV manifest of PNG files, a ``MODULE:FUNCTION`` factory; and each bad input as one error line.

Kept tiny (320 training images, 1-2 epochs of resnet8) so the file runs in CI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import semckd
from semckd.cli import main
from semckd.data import build_splits, get_spec, list_datasets, register_dataset, train_targets
from semckd.data.idx import FASHION_MNIST_DIR
from semckd.data.registry import DatasetSpec
from semckd.data.user import user_spec
from semckd.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
TEACHER = ROOT / "semckd" / "weights" / "fashion_mnist_resnet20.pt"
N_TRAIN, N_TEST = 320, 160
NAMES = ["tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(not Path(FASHION_MNIST_DIR).is_dir(), reason="needs dataset-fashion-mnist")]


@pytest.fixture(scope="module")
def fm() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from semckd.data import load_arrays
    xtr, ytr, xte, yte, _ = load_arrays("fashion_mnist")
    return xtr[:N_TRAIN], ytr[:N_TRAIN], xte[:N_TEST], yte[:N_TEST]


class PILDataset(torch.utils.data.Dataset):
    """What a user typically has: a Dataset of (PIL image, int)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        return Image.fromarray(self.x[i, 0].numpy()), int(self.y[i])


@pytest.fixture(scope="module")
def csv_dir(fm, tmp_path_factory) -> Path:
    """DIR/train.csv, DIR/test.csv with class-name labels; PNGs in DIR/img/ (paths relative to the CSV)."""
    d = tmp_path_factory.mktemp("csvdata")
    (d / "img").mkdir()
    xtr, ytr, xte, yte = fm
    for split, x, y in (("train", xtr, ytr), ("test", xte, yte)):
        rows = ["path,label"]
        for i in range(len(y)):
            name = f"img/{split}{i}.png"
            Image.fromarray(x[i, 0].numpy()).save(d / name)
            rows.append(f"{name},{NAMES[int(y[i])]}")
        (d / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return d


FACTORY = textwrap.dedent('''
    """A user's data module: returns (train, test) as the factory contract says."""
    import numpy as np
    import torch
    from semckd.data import load_arrays

    def load(data_dir=None):
        xtr, ytr, xte, yte, _ = load_arrays("fashion_mnist")
        return (xtr[:320].numpy().transpose(0, 2, 3, 1), ytr[:320].numpy()), (xte[:160], yte[:160])

    def streamed(data_dir=None):
        from torch.utils.data import TensorDataset
        xtr, ytr, xte, yte, _ = load_arrays("fashion_mnist")
        return {"train": TensorDataset(xtr[:320], ytr[:320]), "test": TensorDataset(xte[:160], yte[:160]),
                "in_memory": False}

    def wrong():
        return 42

    def boom():
        raise RuntimeError("disk on fire")

    def bad_items():
        return [1, 2, 3], [4, 5]
''')


@pytest.fixture(scope="module")
def mod_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("owndata")
    (d / "mydata.py").write_text(FACTORY)
    with pytest.MonkeyPatch.context() as mp:  # the import path as a user's own module folder would be
        mp.syspath_prepend(str(d))
        yield d
    sys.modules.pop("mydata", None)


def splits(train, test, val=None, **kw):
    opts = {k: kw.pop(k) for k in list(kw) if k in ("num_classes", "in_channels", "image_size", "transform",
                                                   "eval_transform", "in_memory", "augmentation", "classes")}
    kw.setdefault("workers", 0)
    return build_splits(user_spec(train, test, val, **opts), None, 64, **kw)


def first_batch(loader):
    loader.set_epoch(1)
    return next(iter(loader))


# ---------------------------------------------------------------------- item 6: one registry
def test_builtins_are_registered_specs_and_a_new_dataset_is_one_decorator(fm) -> None:
    assert list_datasets()[:5] == ["fashion_mnist", "mnist", "cifar10", "cifar100", "imagefolder"]
    spec = get_spec("FMNIST")
    assert isinstance(spec, DatasetSpec) and spec.name == "fashion_mnist"
    assert (spec.num_classes, spec.in_channels, spec.image_size, spec.pad) == (10, 1, 28, 2)
    assert get_spec("imagenet").augmentation == "resized_crop"
    xtr, ytr, xte, yte = fm

    @register_dataset("test_tiny_fm", num_classes=10, in_channels=1, image_size=28)
    def _tiny(spec, req):
        return user_spec((xtr, ytr), (xte, yte), name=spec.name).build(req)

    s = build_splits("test_tiny_fm", None, 32, workers=0)
    assert s.info["name"] == "test_tiny_fm" and s.info["num_train"] == N_TRAIN
    with pytest.raises(ValueError, match="registered twice"):
        register_dataset("test_tiny_fm")(_tiny)
    with pytest.raises(UserError, match="MODULE:FUNCTION"):
        get_spec("no_such_data")


# ---------------------------------------------------------------------- item 1: Python forms
def test_tensors_pil_dataset_and_hwc_arrays_give_the_same_batches(fm) -> None:
    xtr, ytr, xte, yte = fm
    a = splits((xtr, ytr), (xte, yte))
    b = splits(PILDataset(xtr, ytr), PILDataset(xte, yte))
    c = splits((xtr.numpy().transpose(0, 2, 3, 1), ytr.numpy()), (xte.float() / 255, yte))  # HWC, float 0..1
    assert a.info["num_classes"] == 10 and a.info["in_channels"] == 1 and a.info["image_size"] == 28
    assert a.info["pad"] == 3 and a.info["mean"] == b.info["mean"] == c.info["mean"]
    assert 0.2 < a.info["mean"][0] < 0.4  # measured on the images (Fashion-MNIST's is 0.286)
    for u, v in ((a, b), (a, c)):
        (x1, y1, i1), (x2, y2, i2) = first_batch(u.train), first_batch(v.train)
        assert torch.equal(x1, x2) and torch.equal(y1, y2) and torch.equal(i1, i2)
        assert torch.equal(next(iter(u.test))[0], next(iter(v.test))[0])
    assert type(a.train).__name__ == "DeviceLoader"  # in memory, augmented in batches
    x, _, _ = first_batch(a.train)
    assert x.shape == (64, 1, 28, 28) and not torch.equal(x, next(iter(a.test))[0])  # augmented


def test_val_split_is_stratified_limit_train_index_and_crd_targets(fm) -> None:
    xtr, ytr, xte, yte = fm
    s = splits((xtr, ytr), (xte, yte), val_split=50, limit_train=200)
    assert s.info["num_train"] == 200 and s.info["num_val"] == 50 and s.val is not None
    yv = torch.cat([b[1] for b in s.val])
    assert len(yv) == 50 and len(torch.unique(yv)) == 10  # every class in a small split
    t = train_targets(s.train)
    assert t is not None and len(t) == 200
    _, y, idx = first_batch(s.train)
    assert torch.equal(t[idx], y)  # CRD's index points at the sample's label
    given = splits((xtr[:250], ytr[:250]), (xte, yte), (xtr[250:], ytr[250:]))
    assert given.info["num_val"] == 70


def test_ddp_shards_are_disjoint_and_equal(fm) -> None:
    xtr, ytr, xte, yte = fm
    r0, r1 = (splits((xtr, ytr), (xte, yte), rank=r, world_size=2) for r in (0, 1))
    i0, i1 = first_batch(r0.train)[2], first_batch(r1.train)[2]
    assert len(r0.train) == len(r1.train) and not set(i0.tolist()) & set(i1.tolist())
    t0 = torch.cat([b[2] for b in r0.test])
    t1 = torch.cat([b[2] for b in r1.test])
    assert sorted(t0.tolist() + t1.tolist()) == list(range(N_TEST))


def test_streamed_dataset_is_deterministic_and_transform_is_used(fm) -> None:
    xtr, ytr, xte, yte = fm
    s = splits(PILDataset(xtr, ytr), PILDataset(xte, yte), in_memory=False)
    assert type(s.train).__name__ == "ImageFolderLoader"
    (x1, y1, i1), (x2, y2, i2) = first_batch(s.train), first_batch(s.train)
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and torch.equal(i1, i2)  # same epoch, same batch
    mem = splits(PILDataset(xtr, ytr), PILDataset(xte, yte))
    assert torch.equal(next(iter(s.test))[0], next(iter(mem.test))[0])  # same normalisation
    seen = []

    def transform(img):  # a user's own transform: already normalised floats pass through unchanged
        seen.append(1)
        return torch.from_numpy(np.asarray(img, np.float32))[None] / 255 - 0.5

    t = splits(PILDataset(xtr, ytr), PILDataset(xte, yte), transform=transform)
    x, _, _ = next(iter(t.test))
    assert seen and torch.allclose(x, xte[:64].float() / 255 - 0.5, atol=1e-6)
    pair = splits((xtr, ytr), (xte, yte), transform=lambda im: im.float() / 255 - 0.5)  # tensors + transform
    assert type(pair.train).__name__ == "ImageFolderLoader"
    assert torch.allclose(next(iter(pair.test))[0], xte[:64].float() / 255 - 0.5, atol=1e-6)


def test_large_images_get_resized_crop_in_memory() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 255, (40, 3, 80, 80), dtype=torch.uint8, generator=g)
    y = torch.arange(40) % 4
    s = splits((x, y), (x[:8], y[:8]))
    assert s.train.resized_crop and s.info["image_size"] == 80 and s.info["in_channels"] == 3
    xb, _, _ = first_batch(s.train)
    assert xb.shape == (40, 3, 80, 80) and torch.isfinite(xb).all()


# ---------------------------------------------------------------------- end to end from Python
def test_python_train_then_distill_semckd_and_crd_on_a_pil_dataset(fm, tmp_path) -> None:
    xtr, ytr, xte, yte = fm
    train_ds, test_ds = PILDataset(xtr, ytr), PILDataset(xte, yte)
    common = dict(epochs=1, batch_size=64, quiet=True, val_split=40, workers=0)
    r = semckd.train(train_ds, test_ds, model="resnet8", out=str(tmp_path / "t"), **common)
    assert r["kind"] == "teacher" and r["dataset"] == "user" and r["best_val_acc"] is not None
    for method in ("semckd", "crd"):
        r = semckd.train(train_ds, test_ds, model="resnet8", teacher=str(TEACHER), method=method,
                         out=str(tmp_path / method), **common)
        assert r["method"] == method and r["final_acc"] > 10.0  # the teacher's knowledge shows after 1 epoch
    ck = torch.load(tmp_path / "semckd" / "last.pt", weights_only=True)
    assert ck["dataset"] == "user" and ck["input_size"] == [28, 28] and ck["num_classes"] == 10
    rc = main(["eval", "--checkpoint", str(tmp_path / "semckd" / "best.pt")])
    assert rc == 2  # no name finds Python-given data again: one line says to name a factory instead


# ---------------------------------------------------------------------- item 2: the CLI
def _kill_then_resume(argv: list[str], out: Path, cwd: Path, step: int) -> None:
    """SIGKILL at training step ``step`` in a subprocess, then ``--resume`` in-process."""
    code = f"import sys; from semckd.cli import main; sys.exit(main({argv!r}))"
    env = {**os.environ, "SEMCKD_FAULT": f"step@{step}", "PYTHONPATH": os.pathsep.join([str(ROOT), str(cwd)]),
           "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env,
                       cwd=cwd)
    assert p.returncode == -9, p.stderr[-2000:]
    assert main(argv + ["--resume"]) == 0


def _same_state(a: Path, b: Path) -> None:
    sa, sb = (torch.load(p / "last.pt", weights_only=True) for p in (a, b))
    assert sa["epoch"] == sb["epoch"] == 2
    for k, v in sa["student"].items():
        assert torch.equal(v, sb["student"][k]), k
    drop = {"epoch_time_s", "images_per_s"}
    rows = [[{k: v for k, v in json.loads(x).items() if k not in drop}
             for x in (p / "metrics.jsonl").read_text().splitlines()] for p in (a, b)]
    assert rows[0] == rows[1]


def test_cli_csv_manifest_distills_resumes_bit_identically_and_evaluates(csv_dir, tmp_path,
                                                                         monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    base = ["distill", "--dataset", "csv", "--data-dir", str(csv_dir), "--teacher", str(TEACHER), "--model",
            "resnet8", "--method", "semckd", "--method-args", "beta=100", "--epochs", "2",
            "--batch-size", "64",
            "--val-split", "40", "--quiet", "--workers", "0"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(base + ["--out", str(a)]) == 0
    _kill_then_resume(base + ["--out", str(b)], b, tmp_path, step=6)  # 280 images: 5 steps per epoch
    _same_state(a, b)
    ck = torch.load(a / "best.pt", weights_only=True)
    assert ck["dataset"] == "csv" and ck["num_classes"] == 10
    assert main(["eval", "--checkpoint", str(a / "best.pt")]) == 0  # the run's csv folder, found again
    from semckd.evaluate import evaluate_checkpoint
    res = evaluate_checkpoint(str(a / "best.pt"), device="cpu")
    assert res["dataset"] == "csv" and 0 <= res["test_acc"] <= 100


def test_cli_factory_is_recorded_and_found_again_by_eval_resume_and_export(mod_dir, tmp_path,
                                                                          monkeypatch) -> None:
    monkeypatch.chdir(mod_dir)
    out = tmp_path / "t"
    argv = ["train-teacher", "--dataset", "mydata:load", "--model", "resnet8", "--epochs", "2",
            "--batch-size", "64", "--quiet", "--workers", "0", "--out", str(out)]
    assert main(argv) == 0
    ck = torch.load(out / "best.pt", weights_only=True)
    assert ck["dataset"] == "mydata:load" and ck["in_channels"] == 1 and ck["input_size"] == [28, 28]
    from semckd.evaluate import evaluate_checkpoint
    assert evaluate_checkpoint(str(out / "best.pt"), device="cpu")["dataset"] == "mydata:load"
    assert main(["train-teacher", "--out", str(out), "--resume", "--quiet"]) == 0  # finished: found again
    assert main(["export", str(out), "--out", str(tmp_path / "deploy")]) == 0
    streamed = tmp_path / "s"
    b = ["train-teacher", "--dataset", "mydata:streamed", "--model", "resnet8", "--epochs", "2",
         "--batch-size", "64", "--quiet", "--workers", "1"]
    assert main(b + ["--out", str(streamed)]) == 0
    _kill_then_resume(b + ["--out", str(tmp_path / "s2")], tmp_path / "s2", mod_dir, step=7)
    _same_state(streamed, tmp_path / "s2")


# ---------------------------------------------------------------------- item 5: bad input
class _NotPairs(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int):
        return torch.zeros(1, 8, 8, dtype=torch.uint8)


class _Mixed(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int):
        return torch.zeros(1, 8 + 4 * (i == 3), 8, dtype=torch.uint8), i % 2


def _bad(train, test=None, *, val_split=0, **opts) -> str:
    x = torch.zeros(8, 1, 8, 8, dtype=torch.uint8)
    test = test if test is not None else (x, torch.arange(8) % 2)
    with pytest.raises(UserError) as e:
        splits(train, test, val_split=val_split, **opts)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_bad_python_inputs_each_one_line_with_the_fix() -> None:
    x = torch.zeros(8, 1, 8, 8, dtype=torch.uint8)
    assert "each item must be (image, label)" in _bad(_NotPairs())
    assert "not integers; labels are class numbers" in _bad((x, torch.linspace(0, 1, 8)))
    assert "not an integer" in _bad([(x[0], 0.5)] * 4)
    assert "outside 0..1" in _bad((x, torch.arange(8) % 2), (x, torch.arange(8)))
    assert "outside 0..2" in _bad((x, torch.arange(8) % 2 - (torch.arange(8) == 0).long() * 3), num_classes=3)
    assert "mixed sizes or channel counts" in _bad(_Mixed())
    assert "is empty" in _bad((x[:0], torch.zeros(0, dtype=torch.int64)))
    assert "class 1 of 0..2 has no training images" in _bad((x, (torch.arange(8) % 2) * 2))
    assert "leaves no training images" in _bad((x, torch.arange(8) % 2), val_split=8)
    assert "in_channels=3 but the images have 1" in _bad((x, torch.arange(8) % 2), in_channels=3)


def _cli_bad(argv: list[str], capsys, tmp_path: Path) -> str:
    out = tmp_path / "never"
    rc = main(argv + ["--epochs", "1", "--quiet", "--workers", "0", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert not out.exists()  # nothing written
    return err


@pytest.mark.parametrize("factory, expect", [
    ("nosuchmod:load", "no module named 'nosuchmod'"),
    ("mydata:nothing", "has no attribute 'nothing'"),
    ("mydata:wrong", "the factory returned int"),
    ("mydata:boom", "disk on fire"),
    ("mydata:bad_items", "is a int"),
])
def test_cli_bad_factory(factory, expect, mod_dir, capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(mod_dir)
    err = _cli_bad(["train-teacher", "--dataset", factory, "--model", "resnet8"], capsys, tmp_path)
    assert expect in err


@pytest.mark.parametrize("case, expect", [
    ("missing_file", "does not exist (paths are relative to the CSV's folder)"),
    ("bad_dir", "is not a folder"),
    ("no_label_column", "no label column in the header (path, species)"),
    ("unknown_label", "never appears in train.csv"),
    ("val_too_big", "leaves no training images"),
])
def test_cli_bad_csv(case, expect, csv_dir, capsys, tmp_path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    (d / "img").symlink_to(csv_dir / "img")
    train = (csv_dir / "train.csv").read_text()
    test = (csv_dir / "test.csv").read_text()
    extra: list[str] = []
    if case == "missing_file":
        train = train.replace("img/train5.png", "img/gone.png")
    elif case == "no_label_column":
        train = train.replace("path,label", "path,species", 1)
    elif case == "unknown_label":
        test = test + "img/test0.png,unicorn\n"
    elif case == "val_too_big":
        extra = ["--val-split", "400"]
    (d / "train.csv").write_text(train)
    (d / "test.csv").write_text(test)
    data_dir = str(tmp_path / "nowhere") if case == "bad_dir" else str(d)
    argv = ["train-teacher", "--dataset", "csv", "--data-dir", data_dir, "--model", "resnet8"]
    err = _cli_bad(argv + extra, capsys, tmp_path)
    assert expect in err


