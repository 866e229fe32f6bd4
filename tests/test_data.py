"""Data layer: IDX / CIFAR / image-folder readers, safe unpickling and download, the on-device loader."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from semckd.data import DeviceLoader, build_splits, crop_flip, epoch_order, load_arrays
from semckd.data import cifar as cifar_mod
from semckd.data.download import download_file, safe_extract
from semckd.data.idx import find_idx_dir, load_idx_dataset, read_idx
from semckd.errors import UserError

REAL_FMNIST = Path("/usr/share/datasets/fashion-mnist")


# ---------------------------------------------------------------------------------------------- IDX
def write_idx(path: Path, arr: np.ndarray, gz: bool) -> Path:
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    payload = header + arr.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


def make_idx_dir(root: Path, gz: bool, n_train: int = 12, n_test: int = 5, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    data = {"xtr": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
            "ytr": rng.integers(0, 10, n_train, dtype=np.uint8),
            "xte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
            "yte": rng.integers(0, 10, n_test, dtype=np.uint8)}
    write_idx(root / "train-images-idx3-ubyte", data["xtr"], gz)
    write_idx(root / "train-labels-idx1-ubyte", data["ytr"], gz)
    write_idx(root / "t10k-images-idx3-ubyte", data["xte"], gz)
    write_idx(root / "t10k-labels-idx1-ubyte", data["yte"], gz)
    return data


@pytest.mark.parametrize("gz", [True, False])
def test_idx_loads_gz_and_raw(tmp_path, gz):
    ref = make_idx_dir(tmp_path, gz)
    xtr, ytr, xte, yte = load_idx_dataset("fashion_mnist", tmp_path)
    assert xtr.shape == (12, 1, 28, 28) and xte.shape == (5, 1, 28, 28)
    assert xtr.dtype == np.uint8 and ytr.dtype == np.int64
    np.testing.assert_array_equal(xtr[:, 0], ref["xtr"])
    np.testing.assert_array_equal(ytr, ref["ytr"])
    np.testing.assert_array_equal(xte[:, 0], ref["xte"])
    np.testing.assert_array_equal(yte, ref["yte"])


def test_mnist_name_and_torchvision_layout(tmp_path):
    ref = make_idx_dir(tmp_path / "MNIST" / "raw", gz=False, n_train=7)
    xtr, ytr, _, _ = load_idx_dataset("mnist", tmp_path)
    np.testing.assert_array_equal(xtr[:, 0], ref["xtr"])
    _, _, _, info = build_splits("mnist", str(tmp_path), 4)
    assert info["num_train"] == 7 and info["flip"] is False and info["in_channels"] == 1


def test_idx_bad_magic(tmp_path):
    make_idx_dir(tmp_path, gz=False)
    f = tmp_path / "train-images-idx3-ubyte"
    raw = bytearray(f.read_bytes())
    raw[2] = 0x0D  # float element type
    f.write_bytes(bytes(raw))
    with pytest.raises(UserError, match="train-images-idx3-ubyte: bad IDX magic.*dataset-fashion-mnist"):
        load_idx_dataset("fashion_mnist", tmp_path)


def test_idx_labels_file_in_place_of_images(tmp_path):
    make_idx_dir(tmp_path, gz=False)
    (tmp_path / "train-images-idx3-ubyte").write_bytes((tmp_path / "train-labels-idx1-ubyte").read_bytes())
    with pytest.raises(UserError, match="bad IDX magic"):
        load_idx_dataset("fashion_mnist", tmp_path)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_truncated(tmp_path, gz):
    make_idx_dir(tmp_path, gz=gz)
    f = tmp_path / ("train-images-idx3-ubyte" + (".gz" if gz else ""))
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(UserError, match="train-images-idx3-ubyte.*(truncated|unreadable)"):
        load_idx_dataset("fashion_mnist", tmp_path)


def test_idx_missing_file_and_dir(tmp_path):
    make_idx_dir(tmp_path, gz=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(UserError, match="t10k-labels-idx1-ubyte.*missing.*--data-dir"):
        load_idx_dataset("fashion_mnist", tmp_path)
    with pytest.raises(UserError, match="--data-dir .*nowhere' does not exist; pass the folder"):
        build_splits("mnist", str(tmp_path / "nowhere"), 4)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="MNIST not found: no train-images.*empty.*pass the folder"):
        build_splits("mnist", str(tmp_path / "empty"), 4)


def test_fashion_mnist_missing_dir(tmp_path, monkeypatch):
    monkeypatch.setattr("semckd.data.idx.FASHION_MNIST_DIR", str(tmp_path / "no-system-copy"))
    monkeypatch.setenv("SEMCKD_DATA_DIR", str(tmp_path / "default"))
    with pytest.raises(UserError, match="not found.*dataset-fashion-mnist"):
        build_splits("fashion_mnist", None, 4)


def test_named_data_dir_is_never_swapped_for_the_system_copy(tmp_path, monkeypatch):
    system = tmp_path / "system"
    make_idx_dir(system, gz=True)
    monkeypatch.setattr("semckd.data.idx.FASHION_MNIST_DIR", str(system))
    monkeypatch.setenv("SEMCKD_DATA_DIR", str(tmp_path / "default"))
    assert find_idx_dir("fashion_mnist", None) == system  # no --data-dir: the system copy
    (tmp_path / "afile").write_text("x")
    (tmp_path / "empty").mkdir()
    for bad, why in (("nowhere", "does not exist"), ("afile", "is a file"), ("empty", "not found")):
        with pytest.raises(UserError, match=why + ".*leave out --data-dir to use the system copy"):
            find_idx_dir("fashion_mnist", tmp_path / bad)


@pytest.mark.skipif(not REAL_FMNIST.is_dir(), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_falls_back_to_system_copy(tmp_path, monkeypatch):
    monkeypatch.setenv("SEMCKD_DATA_DIR", str(tmp_path))  # an empty default folder
    assert find_idx_dir("fashion_mnist", None) == REAL_FMNIST
    with pytest.raises(UserError, match="Fashion-MNIST not found"):  # but not for a folder the user named
        find_idx_dir("fashion_mnist", tmp_path)


def test_idx_count_mismatch(tmp_path):
    make_idx_dir(tmp_path, gz=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(11, np.uint8), gz=False)
    with pytest.raises(UserError, match="12 images but .* 11 labels"):
        load_idx_dataset("fashion_mnist", tmp_path)


def test_read_idx_trailing_bytes(tmp_path):
    p = write_idx(tmp_path / "x", np.zeros((2, 3), np.uint8), gz=False)
    p.write_bytes(p.read_bytes() + b"\0")
    with pytest.raises(UserError, match="trailing bytes"):
        read_idx(p, 2)


@pytest.mark.skipif(not REAL_FMNIST.is_dir(), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist():
    xtr, ytr, xte, yte, classes = load_arrays("fashion_mnist")
    assert xtr.shape == (60000, 1, 28, 28) and xte.shape == (10000, 1, 28, 28)
    assert torch.bincount(ytr).tolist() == [6000] * 10 and torch.bincount(yte).tolist() == [1000] * 10
    assert len(classes) == 10
    mean = xtr.float().div(255).mean().item()
    assert abs(mean - 0.2860) < 1e-3  # the normalisation constant build_splits uses


# -------------------------------------------------------------------------------------------- CIFAR
def _dump(obj, path: Path) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=4))


def make_cifar(root: Path, kind: str, n_per_batch: int = 4, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    if kind == "cifar10":
        folder, label_key = root / "cifar-10-batches-py", b"labels"
        train_files, test_files, ncls = [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], 10
    else:
        folder, label_key = root / "cifar-100-python", b"fine_labels"
        train_files, test_files, ncls = ["train"], ["test"], 100
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, files in (("train", train_files), ("test", test_files)):
        xs, ys = [], []
        for f in files:
            x = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
            y = rng.integers(0, ncls, n_per_batch).tolist()
            d = {b"batch_label": b"training batch", b"data": x, label_key: y,
                 b"filenames": [b"img.png"] * n_per_batch}
            if kind == "cifar100":
                d[b"coarse_labels"] = [0] * n_per_batch
            _dump(d, folder / f)
            xs.append(x)
            ys += y
        out[split] = (np.concatenate(xs), np.array(ys))
    if kind == "cifar10":
        _dump({b"label_names": [f"c{i}".encode() for i in range(10)], b"num_cases_per_batch": n_per_batch},
              folder / "batches.meta")
    else:
        _dump({b"fine_label_names": [f"f{i}".encode() for i in range(100)]}, folder / "meta")
    return out


@pytest.mark.parametrize("kind", ["cifar10", "cifar100"])
def test_cifar_layouts_load(tmp_path, kind):
    ref = make_cifar(tmp_path, kind)
    xtr, ytr, xte, yte, classes = cifar_mod.load_cifar(kind, tmp_path)
    n_train = 20 if kind == "cifar10" else 4
    assert xtr.shape == (n_train, 3, 32, 32) and xte.shape == (4, 3, 32, 32)
    # Rows are R, G, B planes of 32×32, row-major.
    assert xtr[1, 0, 0, 5] == ref["train"][0][1, 5]
    assert xtr[1, 1, 2, 3] == ref["train"][0][1, 1024 + 2 * 32 + 3]
    assert xtr[1, 2, 31, 31] == ref["train"][0][1, 3071]
    np.testing.assert_array_equal(ytr, ref["train"][1])
    np.testing.assert_array_equal(yte, ref["test"][1])
    assert classes[3] == ("c3" if kind == "cifar10" else "f3")
    train, _, test, info = build_splits(kind, str(tmp_path), 3)
    assert info["num_classes"] == (10 if kind == "cifar10" else 100) and info["pad"] == 4
    x, y, i = next(iter(train))
    assert x.shape == (3, 3, 32, 32) and x.dtype == torch.float32


class _Py2Pickler(pickle._Pickler):
    """Writes bytes as Python-2 ``str`` opcodes, as in the real CIFAR files (pickled by Python 2)."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj):
        n = len(obj)
        self.write((pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else
                    pickle.BINSTRING + struct.pack("<i", n)) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def test_cifar_python2_style_pickle(tmp_path):
    x = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump({b"data": x, b"labels": [3, 7]})
    raw = buf.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    assert b"numpy.core.multiarray\n_reconstruct" in raw and b"_codecs" not in raw
    p = tmp_path / "data_batch_1"
    p.write_bytes(raw)
    d = cifar_mod.safe_unpickle(p)
    np.testing.assert_array_equal(d["data"], x)
    assert d["labels"] == [3, 7]


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


class _EvalEvil:
    def __reduce__(self):
        return (eval, ("1+1",))


@pytest.mark.parametrize("payload,name", [(_Evil(), "system"), (_EvalEvil(), "builtins.eval")])
def test_malicious_pickle_rejected(tmp_path, monkeypatch, payload, name):
    monkeypatch.chdir(tmp_path)
    make_cifar(tmp_path, "cifar10")
    target = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    target.write_bytes(pickle.dumps({b"data": payload, b"labels": []}, protocol=4))
    with pytest.raises(UserError, match=f"refusing to unpickle .*data_batch_3.*{name}"):
        cifar_mod.load_cifar("cifar10", tmp_path)
    assert not (tmp_path / "pwned").exists()


def test_cifar_corrupt_and_wrong_content(tmp_path):
    make_cifar(tmp_path, "cifar10")
    folder = tmp_path / "cifar-10-batches-py"
    (folder / "data_batch_2").write_bytes((folder / "data_batch_2").read_bytes()[:50])
    with pytest.raises(UserError, match="data_batch_2: corrupt"):
        cifar_mod.load_cifar("cifar10", tmp_path)
    _dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, folder / "data_batch_2")
    with pytest.raises(UserError, match="N×3072"):
        cifar_mod.load_cifar("cifar10", tmp_path)


def test_cifar_missing_mentions_download(tmp_path):
    with pytest.raises(UserError, match="--download"):
        build_splits("cifar100", str(tmp_path), 8)


def _tar_dir(src_root: Path, folder: str, dest: Path) -> str:
    with tarfile.open(dest, "w:gz") as tar:
        tar.add(src_root / folder, arcname=folder)
    return hashlib.md5(dest.read_bytes()).hexdigest()


def test_download_good_and_bad_checksum(tmp_path, monkeypatch):
    src = tmp_path / "src"
    ref = make_cifar(src, "cifar10")
    archive = tmp_path / "served.tar.gz"
    md5 = _tar_dir(src, "cifar-10-batches-py", archive)
    entry = dict(cifar_mod.CIFAR_SOURCES["cifar10"], url=archive.as_uri())
    monkeypatch.setitem(cifar_mod.CIFAR_SOURCES, "cifar10", dict(entry, md5="0" * 32))
    dest = tmp_path / "data"
    with pytest.raises(UserError, match="checksum"):
        cifar_mod.load_cifar("cifar10", dest, download=True)
    assert not dest.exists() or not any(dest.iterdir())  # nothing partial left behind

    monkeypatch.setitem(cifar_mod.CIFAR_SOURCES, "cifar10", dict(entry, md5=md5))
    xtr, ytr, *_ = cifar_mod.load_cifar("cifar10", dest, download=True)
    np.testing.assert_array_equal(ytr, ref["train"][1])
    assert sorted(p.name for p in dest.iterdir()) == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]
    # A second call finds the extracted files and never fetches again.
    monkeypatch.setattr("semckd.data.download._urlopen", lambda url: pytest.fail("fetched twice"))
    cifar_mod.load_cifar("cifar10", dest, download=True)


def test_download_network_error(tmp_path):
    with pytest.raises(UserError, match="could not download"):
        download_file((tmp_path / "absent.tar.gz").as_uri(), tmp_path / "x.tar.gz", "0" * 32)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_safe_extract_rejects_unsafe_members(tmp_path, kind):
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo({"dotdot": "ok/../../escape.txt", "absolute": "/tmp/escape.txt",
                                "symlink": "link"}[kind])
        if kind == "symlink":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
        else:
            info.size = 3
            tar.addfile(info, io.BytesIO(b"bad"))
    out = tmp_path / "out"
    with pytest.raises(UserError, match="refusing to extract"):
        safe_extract(archive, out)
    assert not (tmp_path / "escape.txt").exists() and list(out.iterdir()) == []


# ------------------------------------------------------------------------------------ DeviceLoader
def tiny(n=10, c=1, h=6, w=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=g),
            torch.randint(0, 10, (n,), generator=g))


def loader(x, y, **kw):
    opts = dict(batch_size=4, mean=[0.5] * x.shape[1], std=[0.25] * x.shape[1], shuffle=True, augment=True,
                pad=2, flip=True, seed=0)
    opts.update(kw)
    return DeviceLoader(x, y, **opts)


def collect(ld, epoch=None):
    if epoch is not None:
        ld.set_epoch(epoch)
    return [tuple(t.clone() for t in b) for b in ld]


def same(a, b):
    return len(a) == len(b) and all(torch.equal(u, v) for ba, bb in zip(a, b, strict=True)
                                    for u, v in zip(ba, bb, strict=True))


def test_device_loader_deterministic_per_seed_and_epoch():
    x, y = tiny()
    a, b = loader(x, y), loader(x, y)
    assert same(collect(a, 3), collect(b, 3))
    assert not same(collect(a, 3), collect(a, 4))
    assert not same(collect(a, 3), collect(loader(x, y, seed=1), 3))


def test_device_loader_auto_advances_to_the_next_epoch():
    x, y = tiny(n=20)
    ld = loader(x, y)
    ld.set_epoch(7)
    e7, e8 = collect(ld), collect(ld)  # no set_epoch: the next iteration is the next epoch
    assert same(e7, collect(loader(x, y), 7)) and same(e8, collect(loader(x, y), 8))


def test_device_loader_index_and_normalisation():
    x, y = tiny(n=11, c=3)
    ld = loader(x, y, augment=False)
    seen = []
    for xb, yb, ib in collect(ld, 2):
        expect = (x[ib].float() / 255 - 0.5) / 0.25
        torch.testing.assert_close(xb, expect)
        assert torch.equal(yb, y[ib]) and yb.dtype == torch.int64 and ib.dtype == torch.int64
        seen += ib.tolist()
    assert sorted(seen) == list(range(11))


def test_crop_flip_is_identity_without_pad_and_flip():
    x, y = tiny(n=9)
    for xb, _, ib in collect(loader(x, y, pad=0, flip=False), 1):
        torch.testing.assert_close(xb, (x[ib].float() / 255 - 0.5) / 0.25)


def test_flip_only_gives_original_or_mirror_and_both_occur():
    x, y = tiny(n=40)
    kinds = set()
    for xb, _, ib in collect(loader(x, y, pad=0, flip=True, mean=[0.0], std=[1 / 255]), 0):
        for img, i in zip(xb, ib, strict=True):
            orig = x[i].float()
            if torch.equal(img, orig):
                kinds.add("orig")
            elif torch.equal(img, orig.flip(-1)):
                kinds.add("flip")
            else:
                pytest.fail("flip changed content")
    assert kinds == {"orig", "flip"}


def test_crop_flip_matches_per_image_reference():
    x, _ = tiny(n=16, c=3, h=5, w=7)
    pad = 3
    g = torch.Generator().manual_seed(0)
    oy, ox = torch.randint(0, 2 * pad + 1, (2, 16), generator=g)
    fl = torch.randint(0, 2, (16,), generator=g).bool()
    out = crop_flip(x, oy, ox, fl, pad)
    for k in range(16):
        padded = torch.zeros(3, 5 + 2 * pad, 7 + 2 * pad, dtype=torch.uint8)
        padded[:, pad:pad + 5, pad:pad + 7] = x[k]
        ref = padded[:, oy[k]:oy[k] + 5, ox[k]:ox[k] + 7]
        if fl[k]:
            ref = ref.flip(-1)
        assert torch.equal(out[k], ref)


def test_augmentation_per_sample_is_independent_of_world_size():
    x, y = tiny(n=12)
    one = {i.item(): img for xb, _, ib in collect(loader(x, y), 3) for img, i in zip(xb, ib, strict=True)}
    for rank in range(3):
        for xb, _, ib in collect(loader(x, y, rank=rank, world_size=3), 3):
            for img, i in zip(xb, ib, strict=True):
                assert torch.equal(img, one[i.item()])


@pytest.mark.parametrize("n,drop", [(12, False), (10, False), (10, True)])
def test_ddp_shards(n, drop):
    x, y = tiny(n=n)
    per_rank = []
    for rank in range(3):
        ld = loader(x, y, rank=rank, world_size=3, batch_size=2, drop_last=drop)
        idx = torch.cat([b[2] for b in collect(ld, 1)]).tolist()
        per_rank.append(idx)
        assert len(idx) == (len(ld) * 2 if drop else ld.num_samples)
    assert len({len(r) for r in per_rank}) == 1  # every rank runs the same number of steps
    flat = [i for r in per_rank for i in r]
    if n % 3 == 0 or drop:
        assert len(flat) == len(set(flat))  # disjoint
    if not drop:
        assert set(flat) == set(range(n))  # covers the whole set
    else:
        assert ld.num_samples == n // 3


def test_eval_shards_are_exact():
    order = [epoch_order(10, shuffle=False, seed=0, epoch=0, rank=r, world_size=3, even=False).tolist()
             for r in range(3)]
    assert sorted(sum(order, [])) == list(range(10)) and [len(o) for o in order] == [4, 3, 3]


@pytest.mark.parametrize("n,bs,drop,expect", [(10, 4, False, [4, 4, 2]), (10, 4, True, [4, 4]),
                                              (8, 4, True, [4, 4]), (3, 4, False, [3])])
def test_len_and_drop_last(n, bs, drop, expect):
    x, y = tiny(n=n)
    ld = loader(x, y, batch_size=bs, drop_last=drop)
    assert len(ld) == len(expect)
    assert [b[0].shape[0] for b in collect(ld, 0)] == expect


def test_channels_last_and_device_follow():
    x, y = tiny(n=4, c=3)
    xb, _, _ = next(iter(loader(x, y, channels_last=True)))
    assert xb.is_contiguous(memory_format=torch.channels_last)
    assert xb.device == torch.device("cpu")


def test_cpu_batches_leave_thread_setting_alone():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        x, y = tiny(n=9)
        for _ in loader(x, y):
            assert torch.get_num_threads() == 2  # the consumer's compute keeps its threads
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.cuda  # skipped without CUDA (tests/conftest.py)
def test_device_loader_cuda_matches_cpu():
    x, y = tiny(n=50, c=3, h=8, w=8)
    cpu = collect(loader(x, y, batch_size=8), 4)
    gpu = collect(loader(x, y, batch_size=8, device="cuda"), 4)
    assert all(t.device.type == "cuda" for b in gpu for t in b)
    assert len(cpu) == len(gpu)
    for (xc, yc, ic), (xg, yg, ig) in zip(cpu, gpu, strict=True):  # same draws (CPU generators)
        assert torch.equal(ic, ig.cpu()) and torch.equal(yc, yg.cpu())
        torch.testing.assert_close(xc, xg.cpu(), rtol=0, atol=1e-5)  # FMA may differ in the last bit


def test_build_splits_limit_and_eval_loader(tmp_path):
    ref = make_idx_dir(tmp_path, gz=True, n_train=12, n_test=5)
    train, _, test, info = build_splits("fashion-mnist", str(tmp_path), 4, limit_train=7, eval_batch_size=2,
                                   augment=False)
    assert info["num_train"] == 7 and info["num_test"] == 5 and info["image_size"] == 28
    idx = torch.cat([b[2] for b in train])
    assert sorted(idx.tolist()) == list(range(7))
    assert len(test) == 3
    batches = list(test)
    assert torch.equal(torch.cat([b[2] for b in batches]), torch.arange(5))  # eval order is fixed
    assert torch.equal(torch.cat([b[1] for b in batches]), torch.from_numpy(ref["yte"]).long())
    img0 = (torch.from_numpy(ref["xte"][0]).float() / 255 - 0.2860) / 0.3530
    torch.testing.assert_close(batches[0][0][0, 0], img0)


def test_build_splits_rejects_bad_input(tmp_path):
    with pytest.raises(UserError, match="unknown dataset 'svhn'.*fashion_mnist, mnist, cifar10, cifar100"):
        build_splits("svhn", None, 8)
    make_idx_dir(tmp_path, gz=False)
    with pytest.raises(UserError, match="limit-train"):
        build_splits("fashion_mnist", str(tmp_path), 8, limit_train=0)
    with pytest.raises(UserError, match="rank"):
        build_splits("fashion_mnist", str(tmp_path), 8, rank=2, world_size=2)
    with pytest.raises(UserError, match="batch size"):
        build_splits("fashion_mnist", str(tmp_path), 0)


# ---------------------------------------------------------------------------------------- ImageFolder
def make_folder(root: Path, sizes=((20, 14), (12, 18), (16, 16))) -> None:
    from PIL import Image
    colours = {"cat": (200, 10, 10), "dog": (10, 200, 10)}
    for split in ("train", "val"):
        for cls, col in colours.items():
            d = root / split / cls
            d.mkdir(parents=True)
            for k, (w, h) in enumerate(sizes if split == "train" else sizes[:2]):
                arr = np.zeros((h, w, 3), np.uint8)
                arr[:] = col
                arr[:, : w // 8] = 255 - np.array(col, np.uint8)  # left strip: makes flips visible
                mode = "L" if k == 2 else "RGB"  # greyscale files are converted to RGB
                Image.fromarray(arr).convert(mode).save(d / f"{k}.png")
    (root / "train" / "cat" / "notes.txt").write_text("ignored")


def test_imagefolder_loader(tmp_path):
    pytest.importorskip("PIL")
    make_folder(tmp_path)
    train, _, test, info = build_splits("imagefolder", str(tmp_path), 4, image_size=8, resize=10, workers=0)
    assert info["num_classes"] == 2 and info["classes"] == ["cat", "dog"] and info["num_train"] == 6
    assert info["num_test"] == 4 and len(train) == 2 and len(test) == 1
    e0 = collect(train, 0)
    assert [b[0].shape for b in e0] == [(4, 3, 8, 8), (2, 3, 8, 8)]
    assert sorted(torch.cat([b[2] for b in e0]).tolist()) == list(range(6))
    for _, yb, ib in e0:
        assert yb.tolist() == [train.dataset.targets[i] for i in ib.tolist()]
    assert same(e0, collect(train, 0)) and not same(e0, collect(train, 1))
    # Eval: resize shorter side 14 → 10 then center-crop 8 of a 20×14 red image whose 2-px left strip is
    # another colour: the crop starts at source x = 3 / (10/14) = 4.2, beyond the strip and the bilinear
    # filter's reach (~1.4 px), so it holds only the red body.
    xb, yb, ib = next(iter(test))
    assert yb.tolist() == [0, 0, 1, 1] and ib.tolist() == [0, 1, 2, 3]
    mean, std = torch.tensor(info["mean"]).view(3, 1, 1), torch.tensor(info["std"]).view(3, 1, 1)
    pixels = (xb[0] * std + mean) * 255
    torch.testing.assert_close(pixels, torch.tensor([200.0, 10, 10]).view(3, 1, 1).expand(3, 8, 8),
                               atol=1.0, rtol=0)


def test_imagefolder_limit_keeps_every_class(tmp_path):
    pytest.importorskip("PIL")
    make_folder(tmp_path)
    train, _, _, info = build_splits("imagefolder", str(tmp_path), 2, image_size=8, workers=0, limit_train=2)
    assert info["num_train"] == 2 and sorted(train.dataset.targets) == [0, 1]
    assert sorted(torch.cat([b[2] for b in train]).tolist()) == [0, 1]


def test_imagefolder_workers_do_not_change_batches(tmp_path):
    pytest.importorskip("PIL")
    make_folder(tmp_path)
    a, _, _, _ = build_splits("imagefolder", str(tmp_path), 3, image_size=8, workers=0, seed=5)
    b, _, _, _ = build_splits("imagefolder", str(tmp_path), 3, image_size=8, workers=2, seed=5)
    assert same(collect(a, 2), collect(b, 2))


def test_imagefolder_errors(tmp_path):
    pytest.importorskip("PIL")
    with pytest.raises(UserError, match="--data-dir"):
        build_splits("imagefolder", None, 4)
    make_folder(tmp_path)
    (tmp_path / "val" / "bird").mkdir()
    with pytest.raises(UserError, match="bird"):
        build_splits("imagefolder", str(tmp_path), 4)
    (tmp_path / "val" / "bird").rmdir()
    (tmp_path / "train" / "dog" / "0.png").write_bytes(b"not a png")
    train, _, _, _ = build_splits("imagefolder", str(tmp_path), 6, image_size=8, workers=1)
    with pytest.raises(UserError, match="0.png: cannot decode image"):
        list(train)


def test_pillow_missing_message(monkeypatch):
    import sys

    from semckd.data.imagefolder import require_pil
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(UserError, match="pip install pillow"):
        require_pil()


def test_random_resized_crop_box_bounds():
    import math
    import random

    from semckd.data.imagefolder import center_crop_box, random_resized_crop_box
    for seed in range(300):
        w, h = 30 + seed % 50, 20 + seed % 37
        left, top, right, bottom = random_resized_crop_box(w, h, random.Random(seed))
        assert 0 <= left < right <= w and 0 <= top < bottom <= h
        area = (right - left) * (bottom - top)
        fallback = (right - left, bottom - top) in {(w, h)} or area >= 0.5 * w * h
        in_range = 0.08 * w * h * 0.8 <= area and math.log(3 / 4) - 0.2 <= math.log(
            (right - left) / (bottom - top)) <= math.log(4 / 3) + 0.2
        assert in_range or fallback
    assert center_crop_box(20, 10, 10, 8) == (6.0, 1.0, 14.0, 9.0)


# ------------------------------------------------------------------------------------------ baseline
def test_baseline_dataset_matches_device_loader_semantics():
    pytest.importorskip("PIL")
    from benchmarks.baseline import PILAugmentDataset, baseline_loader
    x, y = tiny(n=6, c=3)
    ds = PILAugmentDataset(x, y, mean=[0.5] * 3, std=[0.25] * 3, pad=0, flip=False)
    img, t, i = ds[4]
    torch.testing.assert_close(img, (x[4].float() / 255 - 0.5) / 0.25)
    assert t == int(y[4]) and i == 4
    ds = PILAugmentDataset(x, y, mean=[0.0] * 3, std=[1 / 255] * 3, pad=2, flip=True)
    for k in range(6):
        img, _, _ = ds[k]
        padded = torch.zeros(3, 10, 10)
        padded[:, 2:8, 2:8] = x[k].float()
        windows = [padded[:, a:a + 6, b:b + 6] for a in range(5) for b in range(5)]
        assert any(torch.allclose(img, wdw, atol=1e-3) or torch.allclose(img, wdw.flip(-1), atol=1e-3)
                   for wdw in windows)
    dl = baseline_loader(x, y, batch_size=4, mean=[0.5] * 3, std=[0.25] * 3, workers=0)
    assert [b[0].shape[0] for b in dl] == [4, 2]


def test_benchmark_script_runs(tmp_path, capsys):
    pytest.importorskip("PIL")
    from benchmarks import data_pipeline

    make_idx_dir(tmp_path, gz=True, n_train=40)
    res = data_pipeline.main(["--data-dir", str(tmp_path), "--workers", "0", "--epochs", "1",
                              "--batch-size", "16", "--device", "cpu"])
    assert res["images"] == 40 and res["device_loader_images_per_s"] > 0 and res["baseline_images_per_s"] > 0
    assert "speedup" in capsys.readouterr().out


def test_whole_epoch_benchmark_runs_both_pipelines(tmp_path, capsys):
    pytest.importorskip("PIL")
    from benchmarks import epoch
    from benchmarks.bench import default_precision

    make_idx_dir(tmp_path / "fm", gz=True, n_train=20)
    rows = epoch.main(["--fmnist-dir", str(tmp_path / "fm"), "--cifar-limit", "16", "--batch-size", "8",
                     "--workers", "0", "--device", "cpu", "--json", str(tmp_path / "e.json")])
    assert [(r["dataset"], r["variant"]) for r in rows] == [
        (d, v) for d in ("fashion_mnist", "cifar100") for v in ("baseline", "semckd")]
    for base, ours in (rows[:2], rows[2:]):
        # the baseline is the per-pair fp32 criterion behind a PIL DataLoader; ours the defaults
        assert (base["criterion"], base["loader"]) == ("ReferenceSemCKD", "DataLoader")
        assert base["precision"] == "fp32"
        assert (ours["criterion"], ours["loader"]) == ("SemCKD", "DeviceLoader")
        assert ours["precision"] == default_precision(torch.device("cpu"))
        assert base["images"] == ours["images"] == 16  # full batches of 8 (drop_last)
        assert ours["speedup_vs_baseline"] == pytest.approx(base["epoch_s"] / ours["epoch_s"])
    assert rows[2]["data"] == "random, CIFAR-100 format"
    assert json.loads((tmp_path / "e.json").read_text()) == rows
    assert "whole-epoch speed-up" in capsys.readouterr().out
