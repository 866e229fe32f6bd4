"""semckd.methods.options / registry.check_options: every option typed, checked once, one line at the CLI."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from semckd.cli import main
from semckd.methods import Distiller, get_method, list_methods
from semckd.methods.options import Weight, check_value, is_declared
from semckd.methods.registry import check_options, option_specs

ROOT = Path(__file__).resolve().parent.parent
LIBRARY_METHODS = [n for n in list_methods() if get_method(n).__module__.startswith("semckd.methods.")]


@pytest.mark.parametrize("name", LIBRARY_METHODS)
def test_every_option_of_every_method_declares_type_and_range(name: str) -> None:
    specs = option_specs(name)
    assert specs
    undeclared = [k for k, s in specs.items() if not is_declared(s.annotation)]
    assert not undeclared, (f"{name}: options {undeclared} need an annotation with a type and a range "
                            "(e.g. beta: Weight = 1.0; see semckd.methods.options)")
    for k, s in specs.items():  # every default passes its own declaration
        assert check_options(name, {k: s.default}) == {k: s.default}, k


def test_the_declaration_check_catches_an_untyped_or_unbounded_option() -> None:
    class Untyped(Distiller):
        def __init__(self, student, teacher, ctx, *, a=1.0, b: float = 1.0, c: str = "x",
                     d: Weight = 1.0, e: bool = False, **kw) -> None:  # pragma: no cover - never built
            super().__init__(student, teacher, ctx, **kw)

    specs = option_specs(Untyped)  # not registered: the class itself
    assert {k for k, s in specs.items() if not is_declared(s.annotation)} == {"a", "b", "c"}
    assert check_value(specs["a"], [1]) == [1]  # undeclared: passed as given
    with pytest.raises(ValueError, match="option 'd' expects a number >= 0"):
        check_value(specs["d"], -1.0)


@pytest.mark.parametrize("spec, opts, message", [
    ("semckd", {"beta": [1, 2]}, "method 'semckd' option 'beta' expects a number >= 0, got [1, 2] "
                                 "(e.g. --method-args beta=400.0)"),
    ("semckd", {"beta": -1}, "expects a number >= 0, got -1"),
    ("semckd", {"beta": math.nan}, "got nan"),
    ("semckd", {"beta": math.inf}, "got inf"),
    ("semckd", {"beta": True}, "got True"),
    ("semckd", {"beta": "abc"}, "got 'abc'"),
    ("semckd", {"temperature": 0}, "option 'temperature' expects a number > 0, got 0"),
    ("semckd", {"mode": "fast"}, "option 'mode' expects one of faithful, batch_free, got 'fast'"),
    ("semckd", {"attention": 1}, "expects one of learned, uniform, one_to_one"),
    ("semckd", {"factor": 0}, "option 'factor' expects a whole number >= 1 and <= 1048576, got 0"),
    ("semckd", {"beta_warmup": 1.5}, "option 'beta_warmup' expects a whole number >= 0, got 1.5"),
    ("semckd", {"torch_compile": "yes please"}, "expects true or false"),
    ("semckd", {"student_layers": [["layer1"]]}, "option 'student_layers' expects a layer name or index"),
    ("semckd", {"student_layers": {"a": 1}}, "option 'student_layers'"),
    ("semckd", {"head_name": ""}, "option 'head_name'"),
    ("crd", {"nce_m": 1.0}, "option 'nce_m' expects a number >= 0 and < 1, got 1.0"),
    ("irg", {"transform_layers": ["a"]}, "expects a list of whole numbers or none"),
    ("semckd+crd", {"semckd": {"beta": "x"}}, "(e.g. --method-args semckd.beta=400.0)"),
    ("semckd", {"bta": 1}, "method 'semckd' has no option 'bta' (method_args); did you mean 'beta'?"),
    ("semckd+crd", {"beta": 1}, "keyed by method name (semckd, crd)"),
    ("semckd+crd", {"crd": 3}, "method_args.crd must be a mapping"),
    ("semckd+semckd", {}, "listed twice"),
    ("at+simkd", {}, "cannot be combined"),
    ("semkcd", {}, "did you mean 'semckd'?"),
])
def test_bad_options_are_one_line_errors(spec: str, opts: dict, message: str) -> None:
    with pytest.raises(ValueError) as e:
        check_options(spec, opts)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_valid_options_come_back_as_the_methods_take_them() -> None:
    assert check_options("semckd", {"beta": "1e3", "factor": 2.0, "student_layers": "layer1"}) == \
        {"beta": 1000.0, "factor": 2, "student_layers": "layer1"}  # YAML 1.1 reads 1e3 as a string
    assert check_options("fitnet", {"hint_layer": -1, "teacher_hint_layer": None}) == \
        {"hint_layer": -1, "teacher_hint_layer": None}
    assert check_options("semckd", {"student_layers": [1, "layer2.0"], "beta": 100}) == \
        {"student_layers": [1, "layer2.0"], "beta": 100}  # an int stays an int (the same numbers)
    assert check_options("semckd+crd", {"crd": {"mode": "uniform"}}) == {"crd": {"mode": "uniform"}}


# ---------------------------------------------------------------------- every door of the CLI
def _distill(out: Path, *extra: str) -> list[str]:
    return ["distill", "--dataset", "fashion_mnist", "--model", "resnet8", "--teacher",
            "semckd/weights/fashion_mnist_resnet20.pt", "--method", "semckd", "--epochs", "1",
            "--device", "cpu", "--quiet", "--out", str(out), *extra]


EXPECTED = "method 'semckd' option 'beta' expects a number >= 0, got [1, 2] (e.g. --method-args beta=400.0)"


@pytest.mark.parametrize("door", ["yaml", "method-args", "set", "sweep-grid"])
def test_a_mistyped_option_is_one_line_and_writes_nothing(door: str, tmp_path: Path, capsys,
                                                          monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("a run folder's file")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("method_args: {beta: [1, 2]}\n")
    argv = {
        "yaml": _distill(out, "--config", str(recipe)),
        "method-args": _distill(out, "--method-args", "beta=[1,2]"),
        "set": _distill(out, "--set", "method_args.beta=[1, 2]"),
        "sweep-grid": ["sweep", *_distill(out, "--val-split", "100")[1:], "--grid", "beta=100,[1,2]"],
    }[door]
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert lines == [f"semckd: error: {EXPECTED}"], err
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]  # nothing written into the run folder


def test_a_list_valued_beta_in_a_recipe_exits_2_without_a_traceback(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("method: semckd\nmethod_args: {beta: [1, 2]}\n")
    p = subprocess.run([sys.executable, "-m", "semckd", *_distill(tmp_path / "run", "--config", str(recipe))],
                       capture_output=True, text=True, cwd=ROOT, timeout=120,
                       env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert p.returncode == 2, p.stderr
    assert p.stderr == f"semckd: error: {EXPECTED}\n"
    assert not (tmp_path / "run").exists()
