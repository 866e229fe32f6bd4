"""The Distiller contract, for every registered method: it builds on a tiny pair, trains one step with
every engine hook called, round-trips its state through ``extras_state_dict``, answers the registry's
declarations without being built, and has its own section in docs/methods.md.

The list comes from ``list_methods()``, so a new method is covered without editing this file — and a
method that breaks any part of the contract fails here instead of being skipped.
"""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import pytest
import torch
from method_helpers import Tiny

from semckd.features import declared_stem
from semckd.methods import (
    BuildContext,
    Distiller,
    build_distiller,
    get_method,
    list_methods,
    method_options,
    registry,
)

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "methods.md"
# the library's own methods (test modules register helper methods of their own at run time)
LIBRARY_METHODS = [n for n in list_methods() if get_method(n).__module__.startswith("semckd.methods.")]
BATCH, SAMPLES = 8, 16

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_library_registers_its_methods():
    assert {"vanilla", "kd", "semckd", "fitnet", "at", "sp", "vid", "pkt", "rkd", "cc", "irg", "dkd", "crd",
            "hkd", "simkd", "reviewkd"} <= set(LIBRARY_METHODS)


def _build(name: str, seed: int = 0) -> tuple[Distiller, torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    student, teacher = Tiny((4, 4, 8, 8)), Tiny((8, 8, 16, 12)).eval()
    x, y = torch.randn(BATCH, 1, 8, 8), torch.randint(0, 5, (BATCH,))
    ctx = BuildContext(x, batch_size=BATCH, num_classes=5, num_samples=SAMPLES,
                       train_targets=torch.arange(SAMPLES) % 5)
    return build_distiller(name, student, teacher if get_method(name).needs_teacher else None, ctx), x, y, \
        torch.arange(BATCH)


@pytest.mark.parametrize("name", LIBRARY_METHODS)
def test_method_keeps_the_distiller_contract(name: str) -> None:
    cls = get_method(name)
    assert cls.name == name and cls.paper, "set name and paper"
    defaults = method_options(name)
    assert {"ce_weight", "kd_weight", "student_layers", "teacher_layers"} <= set(defaults)
    # class-level declarations answer from the name and options alone (nothing built yet)
    assert isinstance(registry.needs_teacher(name), bool)
    full = registry.needs_full_batches(name, {})
    assert isinstance(full, bool) and isinstance(registry.deployable_is_student(name), bool)
    for k in cls.any_batch_size_options:
        assert k in defaults, f"any_batch_size_options names an unknown option {k!r}"
    if cls.any_batch_size_options:
        assert not registry.needs_full_batches(name, dict(cls.any_batch_size_options))

    d, x, y, idx = _build(name)
    assert d.fixed_batch_size == (BATCH if full else None)  # the declaration matches what was built
    # one engine-like step: every hook is a real method on every distiller
    d.on_epoch_start(3)
    assert d.current_epoch == 3
    d.train()
    opt = torch.optim.SGD(d.trainable_parameters(), lr=0.01)
    logits, losses = d(x, y, idx)
    assert logits.shape == (BATCH, 5) and losses
    total = sum(losses.values())
    assert math.isfinite(total.item())
    opt.zero_grad()
    total.backward()
    opt.step()
    d.eval()
    with torch.no_grad():
        if d.observes:
            d.observe(x, y)
        assert isinstance(d.pop_summary(), dict)
        dep = d.deployable_student()
        assert dep(x).shape == (BATCH, 5)
        assert (dep is d.student) == cls.deployable_is_student
    # state round trip: a fresh build differs only in what extras_state_dict restores
    sd = {k: v.clone() for k, v in d.extras_state_dict().items()}
    assert not any({"student", "teacher"} & set(k.split(".")) for k in sd)
    d.remove_taps()
    d2, *_ = _build(name, seed=1)
    d2.load_extras_state_dict(sd)
    for k, v in d2.extras_state_dict().items():
        assert torch.equal(v, sd[k]), k
    if "epoch" in sd:  # a tracked epoch comes back on the host too
        assert d2.current_epoch == 3
    d2.remove_taps()


def test_every_method_has_a_section_in_the_docs() -> None:
    text = DOCS.read_text()
    headed = set(re.findall(r"^## .*`([a-z_0-9]+)`\s*$", text, re.M))
    missing = sorted(set(LIBRARY_METHODS) - headed)
    assert not missing, f"docs/methods.md has no '## Title — `name`' section for {missing}"


def test_one_stem_rule_for_every_method() -> None:
    """Declared stem → dropped; layers named explicitly → all used; a model that declares stages but
    no stem is an error that names the declaration to add."""
    d, *_ = _build("at")
    assert d.stem_dropped == (True, True)
    assert declared_stem(d.student) == "stem"
    d.remove_taps()
    torch.manual_seed(0)
    s, t = Tiny((4, 4, 8, 8)), Tiny((8, 8, 16, 12))
    ctx = BuildContext(torch.randn(BATCH, 1, 8, 8), BATCH, 5, SAMPLES)
    e = build_distiller("hkd", s, t, ctx, {"student_layers": ["layer1", "layer2", "layer3"]})
    assert e.stem_dropped == (False, True)  # per network: the teacher still drops its declared stem
    e.remove_taps()
    del s.stem_name
    with pytest.raises(ValueError, match="declares stage_names but no stem_name; declare stem_name = 'stem'"):
        declared_stem(s)
    with pytest.raises(ValueError, match="no stem_name"):
        build_distiller("at", s, t, ctx)
    s.stem_name = None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert declared_stem(s) is None
        f = build_distiller("at", s, t, ctx)
    assert f.stem_dropped == (False, True)
    f.remove_taps()


# files that may spell a method's name: the registry and build docs, the names the library itself uses
# (semckd/defaults.py), the SemCKD criterion and the demo command that runs SemCKD by design
_NAME_ALLOWED = {"methods/registry.py", "methods/build.py", "defaults.py", "semckd.py", "commands/demo.py",
                 "cli.py"}
# spellings that are not method names: the package's own name, and the loss key of the KD term every
# Distiller may add (base class) and a combination keeps once
_NOT_A_METHOD = {("__init__.py", "semckd"), ("methods/base.py", "kd"), ("methods/combine.py", "kd")}


def test_no_method_name_outside_its_own_file() -> None:
    """Adding or renaming a method touches one file: no other module tests for a method's name (the
    engine, export and report ask the registry's declarations instead)."""
    root = Path(__file__).resolve().parent.parent / "semckd"
    own = {name: f"methods/{get_method(name).__module__.rsplit('.', 1)[-1]}.py" for name in list_methods()}
    leaks = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel in _NAME_ALLOWED:
            continue
        code = "\n".join(line.split("#", 1)[0] for line in path.read_text().splitlines())  # not comments
        for name, home in own.items():
            quoted = re.search(rf"""["']{re.escape(name)}["']""", code)
            if rel != home and (rel, name) not in _NOT_A_METHOD and quoted:
                leaks.append(f"{rel}: {name!r}")
    assert not leaks, leaks
