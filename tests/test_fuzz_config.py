"""Property-based fuzz of the whole config surface (issue 23, item 2).

For every :class:`~semckd.config.TrainConfig` key and every option of every library method, Hypothesis
generates wrong values (wrong types, NaN/inf, negative, zero, huge, empty, nested lists, unicode, missing
paths) and passes them through each door: the YAML file (``--config``), the flag (``--key=value``,
``--method-args k=v``) and ``--set``. The outcome must be either a run that starts (setup done, every
number finite) or one ``semckd: error:`` line with exit 2 — never a traceback — and a refused command
must leave the existing run folder it was pointed at (with ``--force``) byte for byte as it was.

Kept fast for CI: a fixed, derandomized example budget, and ``Trainer.fit`` replaced by a stub, so a run
that starts stops right after setup (folder guard, data, models, method, optimizer) without training.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import itertools
import math
import os
import shutil
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from engine_helpers import TINY, tiny_distill_setup
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import semckd.engine
from semckd.cli import main
from semckd.config import TrainConfig, config_fields
from semckd.methods.registry import get_method, list_methods, option_specs

pytestmark = pytest.mark.usefixtures("one_thread")

KEYS = [n for n, f in config_fields().items() if f.metadata.get("cli", True)]
# library methods only (other test modules register probe methods in this process)
METHODS = [m for m in list_methods() if get_method(m).__module__.startswith("semckd.methods")]
OPTIONS = [(m, o) for m in METHODS for o in option_specs(m)]
# the canonical sweep meets the base class's scalar options (checked by the one rule before anything is
# built) through one method; what a method builds from (its own options, its layer taps) through each
_SHARED = {"ce_weight", "kd_weight", "temperature", "logit_std"}
OWN_OPTIONS = [(m, o) for m, o in OPTIONS if o not in _SHARED or m == "kd"]
_BOOL_KEYS = {n for n, tp in typing.get_type_hints(TrainConfig).items() if tp in (bool, bool | None)}

MISSING = "/nonexistent/semckd-fuzz/missing.pt"
_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=8)
BAD = st.one_of(
    st.sampled_from([0, -1, -7, 10**9, 2**63, 10**30, -10**30]),
    st.integers(min_value=-10**6, max_value=10**6),
    st.sampled_from([0.0, -0.5, 0.5, 1.5, 1e308, -1e-9, math.nan, math.inf, -math.inf]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.sampled_from(["", " ", MISSING, "é", "💥", "[]", "{}", "nan", "inf", "-inf", "1e400", "0x10",
                     "None", "~", "[1,[2]]", "a=b", "-", "--epochs"]),
    _text,
    st.lists(st.integers(min_value=-3, max_value=3), max_size=3),
    st.lists(st.lists(st.sampled_from([0, 1, "x", None]), max_size=2), min_size=1, max_size=2),
    st.dictionaries(st.sampled_from(["a", "beta", "é"]), st.integers(-2, 2), max_size=2),
)


_HARNESSES = itertools.count()
# the canonical wrong values every key and option meets once (Hypothesis adds random ones)
CANON = [math.nan, math.inf, -math.inf, -1, 0, 10**30, -0.5, "", "é💥", [[1, 2]], {"a": 1}, None, MISSING,
         True]
# options: the values that reached tracebacks or silent acceptance (none is the default, left to Hypothesis)
CANON_OPTION = [math.nan, math.inf, -1, 0, 10**30, "", [[1, 2]], {"a": 1}]
DOORS = ["yaml", "flag", "set"]


def render(v: Any) -> str:
    """``v`` as a user types it on the command line."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, list):
        return "[" + ",".join(render(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ",".join(f"{k}: {render(x)}" for k, x in v.items()) + "}"
    return str(v)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Tiny data, a tiny teacher, and a finished run folder (the template of "an existing run")."""
    root, data, teacher = tiny_distill_setup(tmp_path_factory.mktemp("fuzz"))
    template = root / "existing"
    assert main(["distill", "--dataset", "fashion_mnist", "--data-dir", data, "--model", TINY, "--teacher",
                 teacher, "--method", "kd", "--epochs", "1", "--batch-size", "32", "--limit-train", "64",
                 "--milestones", "1", "--device", "cpu", "--quiet", "--no-tensorboard", "--out",
                 str(template)]) == 0
    return root, data, teacher, template


def _snapshot(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())} if d.exists() else {}


class _Harness:
    """Runs fuzzed commands in-process with ``--force`` into a copy of an existing run folder (recopied
    after a run started in it)."""

    def __init__(self, world: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root, self.data, self.teacher, self.template = world
        self.work = self.root / f"work{next(_HARNESSES)}"
        self.started: list[TrainConfig] = []
        self.before = _snapshot(self.template)
        self.n = 0
        harness = self

        def fit(trainer: Any) -> dict[str, Any]:  # setup succeeded: the run has started
            harness.started.append(trainer.run.cfg)
            return {}

        monkeypatch.setattr(semckd.engine.Trainer, "fit", fit)
        monkeypatch.chdir(self.root)  # a default --out (runs/...) lands in the test's folder

    def base(self, method: str, out: Path, without: str = "") -> list[str]:
        """The valid rest of the command; ``without`` leaves a key to the YAML file (flags would win)."""
        flags = {"dataset": ["fashion_mnist"], "data_dir": [self.data], "model": [TINY],
                 "teacher": [self.teacher], "method": [method], "epochs": ["1"], "batch_size": ["32"],
                 "limit_train": ["64"], "milestones": ["1"], "device": ["cpu"], "quiet": [],
                 "tensorboard": None, "force": [], "out": [str(out)]}
        argv: list[str] = []
        for k, v in flags.items():
            if k != without:
                flag = "--" + k.replace("_", "-")
                argv += [flag.replace("--", "--no-")] if v is None else [flag, *v]
        return argv

    def run(self, base: list[str], extra: list[str], yaml_layer: dict[str, Any] | None) -> tuple[int, str]:
        argv = ["distill", *base]
        if yaml_layer is not None:
            cfg_file = self.root / "fuzz.yaml"
            cfg_file.write_text(yaml.safe_dump(yaml_layer, allow_unicode=True))
            argv += ["--config", str(cfg_file)]
        argv += extra
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                rc = main(argv)
            except SystemExit as e:  # argparse
                rc = e.code if isinstance(e.code, int) else 2
        return rc, err.getvalue()

    def check(self, method: str, door: str, key: str, value: Any) -> None:
        """One wrong value through one door: the run starts, or one error line, exit 2, folder kept."""
        self.n += 1
        out = self.work / "existing"
        if not out.exists():  # a fresh copy after a run started in (and replaced) the last one
            shutil.copytree(self.template, out)
        before = self.before
        base = self.base(method, out, without=key if door == "yaml" else "")
        dotted = key.split(".")
        extra: list[str] = []
        layer: dict[str, Any] | None = None
        if door == "yaml":
            layer = {dotted[0]: {dotted[1]: value}} if len(dotted) == 2 else {key: value}
        elif door == "set":
            extra = ["--set", f"{key}={render(value)}"]
        elif door == "flag" and key.startswith("method_args."):
            extra = ["--method-args", f"{dotted[1]}={render(value)}"]
        else:  # --key=value (the form argparse cannot mistake for another flag, e.g. --lr=-inf)
            extra = [f"--{key.replace('_', '-')}={render(value)}"]
        self.started.clear()
        rc, err = self.run(base, extra, layer)
        what = f"{door} {key}={value!r}"
        assert "Traceback" not in err, f"{what}: traceback\n{err}"
        if rc == 0:
            assert len(self.started) == 1, f"{what}: exit 0 but no run started\n{err}"
            _assert_sane(self.started[0], what)
            if Path(self.started[0].out).resolve() != out.resolve():  # a bad --out started elsewhere
                assert _snapshot(out) == before, f"{what}: a run elsewhere changed the existing run folder"
            shutil.rmtree(out)
            return
        lines = [x for x in err.strip().splitlines() if x.strip()]
        errors = [x for x in lines if "error:" in x]
        assert rc == 2, f"{what}: exit {rc}\n{err}"
        assert len(errors) == 1 and lines[-1] == errors[0] and errors[0].startswith("semckd: error: "), \
            f"{what}: not one error line\n{err}"
        assert not self.started, f"{what}: exit 2 after the run started\n{err}"
        assert _snapshot(out) == before, f"{what}: the refused command changed the existing run folder"


def _assert_sane(cfg: TrainConfig, what: str) -> None:
    """A run that starts has only finite numbers (NaN/inf must not pass silently)."""
    def leaves(v: Any) -> list[Any]:
        if isinstance(v, dict):
            return [x for y in v.values() for x in leaves(y)]
        if isinstance(v, (list, tuple)):
            return [x for y in v for x in leaves(y)]
        return [v]

    for f in dataclasses.fields(cfg):
        for x in leaves(getattr(cfg, f.name)):
            assert not (isinstance(x, float) and not math.isfinite(x)), f"{what}: started with {f.name}={x!r}"


_SETTINGS = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                     suppress_health_check=list(HealthCheck))


def _door(door: str, key: str) -> str:
    return "set" if door == "flag" and key in _BOOL_KEYS else door  # --augment/--no-augment take no value


def test_every_config_key_meets_every_canonical_wrong_value(world, monkeypatch):
    h = _Harness(world, monkeypatch)
    for i, (key, value) in enumerate(itertools.product(KEYS, CANON)):
        h.check("kd", _door(DOORS[i % 3], key), key, value)


def test_every_method_option_meets_every_canonical_wrong_value(world, monkeypatch):
    h = _Harness(world, monkeypatch)
    for i, ((method, name), value) in enumerate(itertools.product(OWN_OPTIONS, CANON_OPTION)):
        h.check(method, DOORS[i % 3], f"method_args.{name}", value)


def test_every_config_key_refuses_wrong_values_in_one_line(world, monkeypatch):
    h = _Harness(world, monkeypatch)

    @_SETTINGS
    @given(key=st.sampled_from(KEYS), door=st.sampled_from(["yaml", "flag", "set"]), value=BAD)
    def prop(key: str, door: str, value: Any) -> None:
        h.check("kd", _door(door, key), key, value)

    prop()
    assert h.n == 60


@pytest.mark.parametrize("door", ["yaml", "flag", "set"])
def test_every_method_option_refuses_wrong_values_in_one_line(world, monkeypatch, door):
    h = _Harness(world, monkeypatch)

    @_SETTINGS
    @given(opt=st.sampled_from(OPTIONS), value=BAD)
    def prop(opt: tuple[str, str], value: Any) -> None:
        method, name = opt
        h.check(method, door, f"method_args.{name}", value)

    prop()


def test_the_fuzz_reaches_every_key_and_option():
    """The strategies above draw from these lists: every key and every option is a candidate."""
    assert {"epochs", "lr", "method_args", "teacher", "data_dir", "seed", "out"} <= set(KEYS)
    assert len(METHODS) >= 10 and {"semckd", "kd", "crd"} <= set(METHODS)
    assert all(any(m == n for n, _ in OPTIONS) for m in METHODS if option_specs(m))
    assert os.sep in MISSING


# what the fuzz found on 32b514d, one case each (the same doors, without Hypothesis)
FOUND = [
    # accepted silently: the run started with a non-finite optimiser setting
    ("kd", "set", "lr", math.inf, "'lr' expects a finite number, got inf"),
    ("kd", "flag", "momentum", math.inf, "'momentum' expects a finite number, got inf"),
    ("kd", "yaml", "weight_decay", math.inf, "'weight_decay' expects a finite number, got inf"),
    # TypeError traceback inside torch.empty: "Overflow when unpacking long long"
    ("crd", "yaml", "method_args.feat_dim", 10**30, "option 'feat_dim' expects a whole number >= 1 and <= "),
    ("cc", "set", "method_args.feat_dim", 10**30, "option 'feat_dim' expects a whole number >= 1 and <= "),
    # IndexError traceback in fitnet.ConvReg: "tuple index out of range" (the tap was the 2-D head)
    ("fitnet", "flag", "method_args.student_layers", -1, "FitNet regresses feature maps (N, C, H, W)"),
    # OverflowError traceback in vid.VIDRegressor: "math range error"
    ("vid", "yaml", "method_args.init_pred_var", 10**30, "option 'init_pred_var' expects a number >"),
]


@pytest.mark.parametrize("method,door,key,value,message", FOUND,
                         ids=[f"{k}={v!r}" for _, _, k, v, _ in FOUND])
def test_what_the_fuzz_found_is_one_line(world, monkeypatch, method, door, key, value, message):
    h = _Harness(world, monkeypatch)
    h.check(method, door, key, value)  # one error line, exit 2, the existing folder untouched
    out = h.work / "again"
    shutil.copytree(h.template, out)
    dotted = key.split(".")
    layer = {dotted[0]: {dotted[1]: value}} if len(dotted) == 2 else {key: value}
    rc, err = h.run(h.base(method, out), [], layer)
    assert rc == 2 and message in err, err
