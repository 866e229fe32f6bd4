"""A Hugging Face ``datasets`` dataset on disk as ``--dataset hf:PATH``, built here from real Fashion-MNIST
images (no hub access); ``--train-csv/--test-csv``; a user's data under bf16, ``semckd sweep`` and DDP;
streamed items of mixed shapes. Kept tiny (320 training images, 1-2 epochs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from test_own_data import (
    N_TEST,
    N_TRAIN,
    NAMES,
    TEACHER,
    _cli_bad,
    _kill_then_resume,
    _same_state,
    fm,  # noqa: F401 - the module fixture
    splits,
)

from semckd.cli import main
from semckd.data import build_splits
from semckd.data.idx import FASHION_MNIST_DIR
from semckd.data.user import user_spec
from semckd.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(not Path(FASHION_MNIST_DIR).is_dir(), reason="needs dataset-fashion-mnist")]
datasets = pytest.importorskip("datasets", reason="the hf extra: pip install 'semckd[hf]'")


@pytest.fixture(scope="module")
def hf_dirs(fm, tmp_path_factory) -> dict[str, Path]:  # noqa: F811
    """The same images three ways: a save_to_disk DatasetDict, one saved Dataset per split, parquet files."""
    d = tmp_path_factory.mktemp("hfdata")
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=NAMES)})
    xtr, ytr, xte, yte = fm
    parts = {s: datasets.Dataset.from_dict({"image": [Image.fromarray(im[0].numpy()) for im in x],
                                            "label": y.tolist()}, features=feats)
             for s, x, y in (("train", xtr, ytr), ("test", xte, yte))}
    datasets.DatasetDict(parts).save_to_disk(str(d / "dict"))
    for s, ds in parts.items():
        ds.save_to_disk(str(d / "per_split" / s))
        (d / "parquet").mkdir(exist_ok=True)
        ds.to_parquet(str(d / "parquet" / f"{s}.parquet"))
    renamed = datasets.DatasetDict({s: p.rename_columns({"image": "pic", "label": "kind"})
                                    .cast_column("kind", datasets.Value("int64")) for s, p in parts.items()})
    renamed.save_to_disk(str(d / "renamed"))  # no ClassLabel, unusual names: --image-column/--label-column
    floats = datasets.DatasetDict({s: p.cast_column("label", datasets.Value("float32"))
                                   for s, p in parts.items()})
    floats.save_to_disk(str(d / "floats"))
    return {p.name: p for p in d.iterdir()}


def test_hf_forms_give_the_same_batches_as_tensors_and_classes_from_classlabel(fm, hf_dirs) -> None:  # noqa: F811
    xtr, ytr, xte, yte = fm
    ref = splits((xtr, ytr), (xte, yte))
    for form in ("dict", "per_split", "parquet"):
        s = build_splits(f"hf:{hf_dirs[form]}", None, 64, workers=0)
        assert s.info["classes"] == NAMES and s.info["num_train"] == N_TRAIN and s.info["num_test"] == N_TEST
        assert type(s.train).__name__ == "DeviceLoader"  # small: held in memory like the built-ins
        for a, b in ((s.train, ref.train), (s.test, ref.test)):
            a.set_epoch(1)
            b.set_epoch(1)
            (x1, y1, i1), (x2, y2, i2) = next(iter(a)), next(iter(b))
            assert torch.equal(x1, x2) and torch.equal(y1, y2) and torch.equal(i1, i2), form
    named = build_splits(f"hf:{hf_dirs['renamed']}", None, 64, workers=0, image_column="pic",
                         label_column="kind")
    assert named.info["classes"] == [str(i) for i in range(10)] and named.info["num_train"] == N_TRAIN
    with pytest.raises(UserError, match="cannot tell the label column"):
        build_splits(f"hf:{hf_dirs['renamed']}", None, 64, workers=0)
    with pytest.raises(UserError, match="does not apply to dataset 'fashion_mnist'"):
        build_splits("fashion_mnist", None, 64, image_column="pic")


def test_cli_hf_distills_semckd_resumes_bit_identically_evaluates_and_exports(hf_dirs, tmp_path,
                                                                               monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    spec = f"hf:{hf_dirs['dict']}"
    base = ["distill", "--dataset", spec, "--teacher", str(TEACHER), "--model", "resnet8", "--method",
            "semckd", "--method-args", "beta=100", "--epochs", "2", "--batch-size", "64", "--val-split", "40",
            "--quiet", "--workers", "0"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(base + ["--out", str(a)]) == 0
    _kill_then_resume(base + ["--out", str(b)], b, tmp_path, step=6)  # 280 images: 5 steps per epoch
    _same_state(a, b)
    ck = torch.load(a / "best.pt", weights_only=True)
    assert ck["dataset"] == spec and ck["num_classes"] == 10 and ck["input_size"] == [28, 28]
    assert json.loads((a / "run.json").read_text())["final_acc"] > 10.0  # the teacher's knowledge shows
    from semckd.evaluate import evaluate_checkpoint
    res = evaluate_checkpoint(str(a / "best.pt"), device="cpu")
    assert res["dataset"] == spec and res["test_n"] == N_TEST
    assert main(["export", str(a), "--out", str(tmp_path / "deploy")]) == 0
    t = tmp_path / "t"  # named columns are recorded in the run: eval and --resume find them again
    argv = ["train-teacher", "--dataset", f"hf:{hf_dirs['renamed']}", "--image-column", "pic",
            "--label-column", "kind", "--model", "resnet8", "--epochs", "1", "--batch-size", "64", "--quiet",
            "--workers", "0", "--out", str(t)]
    assert main(argv) == 0
    assert evaluate_checkpoint(str(t / "best.pt"), device="cpu")["test_n"] == N_TEST
    assert main(["train-teacher", "--out", str(t), "--resume", "--quiet"]) == 0


@pytest.mark.parametrize("case, expect", [
    ("missing", "no such file or folder"),
    ("column", "no column 'nope' (image, label); pass --label-column one of them"),
    ("floats", "is not an integer"),
    ("no_test", "but no test"),
    ("not_installed", 'pip install "semckd[hf]"'),
])
def test_cli_bad_hf(case, expect, hf_dirs, capsys, tmp_path, monkeypatch) -> None:
    path, extra = hf_dirs["dict"], []
    if case == "missing":
        path = tmp_path / "nowhere"
    elif case == "column":
        extra = ["--label-column", "nope"]
    elif case == "floats":
        path = hf_dirs["floats"]
    elif case == "no_test":
        path = hf_dirs["per_split"] / "train"  # one saved Dataset: no splits
        expect = "is a single Dataset"
    elif case == "not_installed":
        monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    err = _cli_bad(["train-teacher", "--dataset", f"hf:{path}", "--model", "resnet8", *extra], capsys,
                   tmp_path)
    assert expect in err


def test_train_csv_test_csv_in_other_folders_resolve_paths_against_each_file(fm, tmp_path,  # noqa: F811
                                                                              monkeypatch) -> None:
    xtr, ytr, xte, yte = fm
    for split, x, y in (("train", xtr[:200], ytr[:200]), ("test", xte[:64], yte[:64])):
        folder = tmp_path / f"{split}_set"
        (folder / "png").mkdir(parents=True)
        rows = ["file,species"]
        for i in range(len(y)):
            Image.fromarray(x[i, 0].numpy()).save(folder / "png" / f"{i}.png")
            rows.append(f"png/{i}.png,{NAMES[int(y[i])]}")
        (folder / "list.csv").write_text("\n".join(rows) + "\n")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    argv = ["train-teacher", "--train-csv", "train_set/list.csv", "--test-csv", "test_set/list.csv",
            "--label-column", "species", "--model", "resnet8", "--epochs", "1", "--batch-size", "64",
            "--quiet", "--workers", "0", "--amp", "bf16", "--out", str(out)]
    assert main(argv) == 0  # --train-csv names the data: --dataset csv is implied
    ck = torch.load(out / "best.pt", weights_only=True)
    assert ck["dataset"] == "csv" and ck["config"]["train_csv"] == "train_set/list.csv"
    assert json.loads((out / "run.json").read_text())["amp"] == "bf16"  # a user's data under bf16
    from semckd.evaluate import evaluate_checkpoint
    assert evaluate_checkpoint(str(out / "best.pt"), device="cpu")["test_n"] == 64


class _MixedStream(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int):
        return torch.zeros(1, 8 + 4 * (i == 5), 8, dtype=torch.uint8), i % 2


def test_streamed_mixed_shapes_without_transform_is_one_line_not_a_collate_traceback() -> None:
    with pytest.raises(UserError, match="mixed sizes or channel counts .* pass transform=") as e:
        splits(_MixedStream(), _MixedStream(), in_memory=False)  # seen while measuring mean/std
    assert "\n" not in str(e.value)
    s = build_splits(user_spec(_MixedStream(), _MixedStream(), in_memory=False, mean=(0.5,), std=(0.5,)),
                     None, 64, workers=0)
    s.train.set_epoch(0)
    with pytest.raises(UserError, match="mixed sizes or channel counts .* pass transform=") as e:
        for _ in s.train:  # seen at the batch that has them, not as a collate traceback
            pass
    assert "\n" not in str(e.value)


def test_sweep_on_a_users_hf_dataset(hf_dirs, tmp_path) -> None:
    from engine_helpers import TINY, register_probe_methods, register_tiny
    register_tiny()
    register_probe_methods()
    rc = main(["sweep", "--dataset", f"hf:{hf_dirs['parquet']}", "--model", TINY, "--method", "engine_probe",
               "--grid", "weight=0.1,1", "--seeds", "0", "--val-split", "40", "--epochs", "1", "--batch-size",
               "64", "--milestones", "--device", "cpu", "--quiet", "--no-tensorboard", "--workers", "0",
               "--out", str(tmp_path / "sw")])
    assert rc == 0
    saved = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert len(saved["records"]) == 2 and saved["selected"] is not None


@pytest.mark.slow  # two torchrun processes
@pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
def test_torchrun_two_processes_shard_a_users_hf_dataset(hf_dirs, tmp_path) -> None:
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "semckd.cli", "train-teacher", "--dataset", f"hf:{hf_dirs['dict']}", "--model", "resnet8",
           "--epochs", "1", "--batch-size", "64", "--device", "cpu", "--no-tensorboard", "--workers", "0",
           "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    run = json.loads((out / "run.json").read_text())
    assert run["world_size"] == 2 and run["ddp_param_max_abs_diff"] == 0.0
    m = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert m["train_images"] == N_TRAIN  # 160 per process: each image once, none twice
    from semckd.evaluate import evaluate_checkpoint
    assert evaluate_checkpoint(str(out / "last.pt"), device="cpu")["test_n"] == N_TEST
