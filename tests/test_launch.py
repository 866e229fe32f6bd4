"""The suite passes however it is launched: every test and script that starts Python uses the running
interpreter (``sys.executable``; shell scripts ``${PYTHON:-python3}``), never whatever ``python3`` comes
first on PATH. Run as ``.venv/bin/python -m pytest`` without activating the venv, PATH's ``python3`` is
another interpreter, often one without torch."""

from __future__ import annotations

import os
import re
import site
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WRONG = 97  # exit status of the impostor python3 below


def _venv_with_this_interpreters_packages(tmp_path: Path) -> Path:
    """A fresh venv (no pip: fast) that sees the running interpreter's packages (torch, pytest) even when
    that interpreter is itself a venv, whose packages --system-site-packages would not bring."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)],
                   check=True, capture_output=True, timeout=120)
    dirs = [*site.getsitepackages(), site.getusersitepackages()]
    (lib,) = (venv / "lib").glob("python3*/site-packages")
    (lib / "_parent_site.pth").write_text(
        "".join(f"import site; site.addsitedir({d!r})\n" for d in dirs if Path(d).is_dir()))
    return venv / "bin" / "python"


def _impostor_bin(tmp_path: Path) -> Path:
    """A PATH folder whose ``python3``/``python`` is not the interpreter running the tests."""
    fake = tmp_path / "fakebin"
    fake.mkdir()
    for name in ("python3", "python"):
        p = fake / name
        p.write_text(f"#!/bin/sh\necho \"PATH's {name} was run instead of the test's interpreter\" >&2\n"
                     f"exit {WRONG}\n")
        p.chmod(0o755)
    return fake


@pytest.mark.slow  # a venv and a pytest subprocess (~10 s on 2 busy cores)
def test_suite_runs_with_an_interpreter_path_and_no_activated_venv(tmp_path):
    python = _venv_with_this_interpreters_packages(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME", "PYTHON")}
    env["PATH"] = os.pathsep.join([str(_impostor_bin(tmp_path)), "/usr/bin", "/bin"])
    env["PYTHONPATH"] = str(ROOT)
    # the tests that start Python through a shell script and through sys.executable
    sel = ["tests/test_gpu_check.py", "-k", "refuses_without_cuda or dry_run_lists"]
    p = subprocess.run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", *sel], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-3000:]
    assert re.search(r"\b2 passed\b", out), out[-3000:]


def test_the_impostor_is_what_a_bare_python3_finds(tmp_path):
    """The launch test above is only a test if a bare ``python3`` under its PATH fails."""
    fake = _impostor_bin(tmp_path)
    p = subprocess.run(["python3", "-c", "print(1)"], env={"PATH": f"{fake}{os.pathsep}/usr/bin:/bin"},
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == WRONG and "instead of the test's interpreter" in p.stderr


_BARE_PY = re.compile(r"(?<![\w{:/-])python3?(?=\s)")  # python3 at a command position, not ${PYTHON:-python3}


def _shell_commands(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


@pytest.mark.parametrize("script", sorted(p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*.sh")
                                          if ".git" not in p.parts and "runs" not in p.parts))
def test_shell_scripts_start_python_through_PYTHON(script):
    """Each shell script of the checkout starts Python as "${PYTHON:-python3}" (or a variable set from
    it), so `PYTHON=/path/to/python bash script.sh` and the launch test reach the right interpreter."""
    text = (ROOT / script).read_text()
    bare = [ln for ln in _shell_commands(text) if _BARE_PY.search(ln.replace("${PYTHON:-python3}", ""))]
    assert not bare, f"{script} calls python from PATH: {bare}"


def test_tests_and_benchmarks_never_start_python_from_PATH():
    """Subprocess argument lists start with sys.executable, never the literal name."""
    literal = re.compile(r"""[\[(]\s*["']python3?["']\s*,""")
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in [*ROOT.glob("tests/*.py"), *ROOT.glob("benchmarks/**/*.py"),
                                                    *ROOT.glob("scripts/*.py"), *ROOT.glob("semckd/**/*.py")]
            if p.name != "test_launch.py"  # this file runs the bare name on purpose, under the impostor PATH
            for i, ln in enumerate(p.read_text().splitlines(), 1) if literal.search(ln)]
    assert not hits, f"python started from PATH at {hits}; use sys.executable"
