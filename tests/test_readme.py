"""Every README line runs as written: the shell and Python code blocks of README.md (and the runnable
example of docs/recipe_sources.md) are extracted and run, in a fresh folder each, on a slice of the real
Fashion-MNIST (``$SEMCKD_DATA_DIR``, which the README documents, points at it).

What the harness may change, and nothing else:

* ``--epochs 1 --limit-train 128`` appended to each command that trains (train-teacher, distill, sweep,
  demo, quickstart.sh) and ``--steps 1 --warmup 0 --repeats 1`` to ``semckd bench``: the README says
  both are safe (they shorten a run, never change what it does). :func:`test_readme_documents_the_
  shrinking_flags` holds the README to that sentence.
* ``semckd`` is started as ``sys.executable -m semckd`` (the console script's own entry point), so the
  interpreter under test runs it whatever is on PATH (tests/test_launch.py).
* the lines in :data:`SUBSTITUTE` hold placeholders (``PATH``, ``...``, ``runs/a runs/b``): each has
  its concrete form here, and a table entry whose line left the README fails the harness.
* the set-up block's two commands are not run recursively: ``bash quickstart.sh`` runs a copy of the
  script with ``$PYTHON`` (which it honours) intercepting its ``pip install`` (the demo itself runs), and
  the pip + pytest line is the command that runs this harness — it is checked against .ci/run instead.

Fast parts (the Python blocks, the table checks, the mutation tests) run in CI's first stage; the blocks
that train (``readme_long``) in its own stage, ``python3 -m pytest -q -m readme_long`` (.ci/run)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from fmnist_subset import fashion_mnist_subset

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
N_TRAIN = 128
SHRINK = ["--epochs", "1", "--limit-train", str(N_TRAIN)]
BENCH_SHRINK = ["--steps", "1", "--warmup", "0", "--repeats", "1"]
TRAINS = {"train-teacher", "distill", "sweep", "demo"}
CIFAR_TEACHER = "teachers/resnet32x4.pt"  # an untrained resnet32x4 state_dict (the recipe's teacher_model)
RECIPE = "semckd distill --config configs/cifar100/resnet32x4_resnet8x4/semckd.yaml --teacher"

# (file, command as written, comments dropped) -> the command the harness runs, with why
SUBSTITUTE: dict[tuple[str, str], tuple[str, str]] = {
    ("README.md", f"{RECIPE} PATH"):
        (f"{RECIPE} {CIFAR_TEACHER}",
         "PATH: a teacher checkpoint; CIFAR-100 is a small synthetic set in the documented layout"),
    ("README.md", "semckd distill ... --resume"):
        ("semckd distill --dataset fashion_mnist --teacher runs/t/best.pt --model resnet8 --method semckd "
         "--epochs 8 --milestones 5 6 7 --out runs/s --resume", "...: the distill line above"),
    ("README.md", "semckd plot curves runs/a runs/b --out curves.png"):
        ("semckd plot curves runs/t runs/s --out curves.png", "runs/a runs/b: two runs the block made"),
    ("README.md", "semckd sweep --teacher t.pt --model resnet8 --dataset fashion_mnist --method semckd "
                  "--grid beta=25,100,400 --seeds 0,1,2 --val-split 1000 --epochs 6 --out /shared/sweep "
                  "--storage postgresql://USER:PASSWORD@HOST:5432/semckd"):
        ("semckd sweep --teacher runs/t/best.pt --model resnet8 --dataset fashion_mnist --method semckd "
         "--grid beta=25,100,400 --seeds 0,1,2 --val-split 1000 --epochs 6 --out shared/sweep "
         "--storage shared/beta.journal",
         "t.pt, /shared, the server: the teacher above, a folder here, the documented journal-file form"),
    ("docs/recipe_sources.md", f"{RECIPE} path/to/your/resnet32x4.pt"):
        (f"{RECIPE} {CIFAR_TEACHER}", "the placeholder path: a teacher checkpoint"),
}
QUICKSTART = "bash quickstart.sh"
TEST_LINE = 'python3 -m pip install torch==2.13.0 -e ".[dev]" && python3 -m pytest -q'


@dataclass
class Block:
    file: str
    line: int  # of the opening fence
    lang: str
    code: str
    section: str
    commands: list[tuple[int, str]] = field(default_factory=list)  # (README line, command text)


def extract_blocks(text: str, file: str = "README.md") -> list[Block]:
    """The ``bash`` and ``python`` fenced blocks (indented ones too), with their section heading."""
    blocks, section = [], ""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        ln = lines[i]
        if ln.startswith("#"):
            section = ln.lstrip("#").strip()
        m = re.match(r"^(\s*)```(\w*)\s*$", ln)
        if m:
            indent, lang = m.group(1), m.group(2)
            j = i + 1
            while not re.match(rf"^{indent}```\s*$", lines[j]):
                j += 1
            code = "\n".join(x[len(indent):] for x in lines[i + 1:j]) + "\n"
            if lang in ("bash", "sh", "python"):
                b = Block(file, i + 1, lang, code, section)
                if lang != "python":
                    b.commands = _commands(code, first_line=i + 2)
                blocks.append(b)
            i = j
        i += 1
    return blocks


def _commands(code: str, first_line: int) -> list[tuple[int, str]]:
    """One entry per command: backslash continuations joined, comments and blank lines dropped."""
    out, buf, start = [], "", 0
    for k, ln in enumerate(code.splitlines()):
        if not buf:
            start = first_line + k
        buf += ln
        if buf.endswith("\\"):
            buf = buf[:-1] + " "
            continue
        text = " ".join(re.split(r"(?:^|\s)#", buf, maxsplit=1)[0].split())  # no '#' inside quotes here
        if text:
            out.append((start, text))
        buf = ""
    return out


# ---------------------------------------------------------------------- running
@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """Fashion-MNIST slice (1200 train: room for --val-split 1000 + 128; 256 test) and a synthetic
    CIFAR-100 in the layout the README documents, in one $SEMCKD_DATA_DIR."""
    root = tmp_path_factory.mktemp("readme-data")
    fashion_mnist_subset(root / "fashion-mnist", n_train=1200, n_test=256)
    from test_data import make_cifar

    make_cifar(root, "cifar100", n_per_batch=N_TRAIN)
    return root


def _env(data_root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEMCKD_")}
    # one thread: on 2 shared cores the tiny runs are fastest so (conftest.one_thread); no numerics asserted
    env.update(SEMCKD_DATA_DIR=str(data_root), PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    return env


def to_argv(file: str, command: str) -> list[str]:
    """What the harness runs for one README command (see the module docstring)."""
    command = SUBSTITUTE.get((file, command), (command, ""))[0]
    words = shlex.split(command)
    if words[0] == "semckd":
        sub = words[1] if len(words) > 1 else ""
        extra = SHRINK if sub in TRAINS else BENCH_SHRINK if sub == "bench" else []
        return [sys.executable, "-m", "semckd", *words[1:], *extra]
    if re.fullmatch(r"python3?", words[0]) and words[1:2] == ["-m"]:
        return [sys.executable, *words[1:]]
    raise AssertionError(f"{file}: no rule to run {command!r}; add one to tests/test_readme.py")


def _prepare(work: Path) -> None:
    """What a reader has before a block: the checkout's configs, and a teacher where a line says PATH."""
    (work / "configs").symlink_to(ROOT / "configs")
    t = work / CIFAR_TEACHER
    t.parent.mkdir(parents=True, exist_ok=True)
    from semckd.models import create_model

    torch.save(create_model("resnet32x4", num_classes=100).state_dict(), t)


def run_commands(block: Block, work: Path, env: dict[str, str], only: list[int] | None = None) -> list[str]:
    """Run the block's commands in order in ``work``; the failures, one message each (empty: all ran)."""
    failures = []
    for k, (line, command) in enumerate(block.commands):
        if only is not None and k not in only:
            continue
        try:
            argv = to_argv(block.file, command)
        except AssertionError as e:
            failures.append(str(e))
            continue
        p = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=900)
        if p.returncode != 0:
            tail = (p.stderr.strip() or p.stdout.strip())[-1500:]
            failures.append(f"{block.file}:{line} `{command}` exited {p.returncode}:\n{tail}")
            break  # later lines build on this one
    return failures


def run_python(block: Block, work: Path, env: dict[str, str]) -> list[str]:
    p = subprocess.run([sys.executable, "-c", block.code], cwd=work, env=env, capture_output=True, text=True,
                       timeout=600)
    if p.returncode != 0:
        return [f"{block.file}:{block.line} python block ({block.section}) exited {p.returncode}:\n"
                f"{p.stderr.strip()[-1500:]}"]
    return []


def _blocks(section: str, lang: str, file: str = "README.md") -> list[Block]:
    text = (ROOT / file).read_text()
    return [b for b in extract_blocks(text, file) if b.section == section and b.lang == lang]


def _one(section: str, lang: str, file: str = "README.md") -> Block:
    found = _blocks(section, lang, file)
    assert len(found) == 1, f"{file}: expected one {lang} block under {section!r}, found {len(found)}"
    return found[0]


def _readme_sections() -> list[str]:
    return [ln.lstrip("#").strip() for ln in README.read_text().splitlines() if ln.startswith("## ")]


# ---------------------------------------------------------------------- the table itself
def test_every_block_is_run_by_a_test():
    """A block added anywhere in the README must be one these tests run (or the set-up block)."""
    covered = {("", "bash"), ("Use it as a library", "python"), ("Command line", "bash"),
               ("Your own model", "python"), ("Your own model", "bash"), ("Your own data", "python"),
               ("Your own data", "bash")}
    found = {(b.section if b.section in _readme_sections() else "", b.lang)
             for b in extract_blocks(README.read_text())}
    assert found == covered, f"README code blocks changed: {sorted(found ^ covered)}; run the new ones here"


def test_substitutions_name_lines_that_exist():
    """A placeholder line that left the docs leaves a stale entry: fail, so the table stays true."""
    for (file, command), (_, why) in SUBSTITUTE.items():
        commands = {c for b in extract_blocks((ROOT / file).read_text(), file) for _, c in b.commands}
        assert command in commands, f"{file} no longer has `{command}` ({why}); drop its SUBSTITUTE entry"


def test_readme_documents_the_shrinking_flags():
    text = " ".join(README.read_text().split())
    assert "`--epochs 1 --limit-train N`" in text and "`--steps 1 --warmup 0 --repeats 1`" in text
    assert "tests/test_readme.py" in text


def test_setup_block_is_handled_explicitly_not_recursively():
    """The README's first block: quickstart.sh (run by test_setup_block_quickstart_runs, through a copy)
    and the test command — which is this suite, so it is compared with what CI runs, not run."""
    (setup,) = [b for b in extract_blocks(README.read_text()) if b.section == "semckd"]
    assert [c for _, c in setup.commands] == [QUICKSTART, TEST_LINE]
    ci = (ROOT / ".ci" / "run").read_text()
    assert _ci_runs(ci, TEST_LINE), "README's test command and .ci/run's first stage differ; keep in sync"
    assert "-m readme_long" in ci  # the long README blocks have their own CI stage


def _ci_runs(ci: str, line: str) -> bool:
    """.ci/run runs the README's test line (pip's -q aside)."""
    want = [w for w in shlex.split(line) if w != "-q"]
    return any([w for w in shlex.split(ln, comments=True) if w != "-q"] == want
               for ln in ci.splitlines() if "pytest" in ln)


# ---------------------------------------------------------------------- fast: the Python blocks
@pytest.mark.parametrize("section", ["Use it as a library", "Your own model", "Your own data"])
def test_python_block_runs(section, tmp_path, data_root):
    assert run_python(_one(section, "python"), tmp_path, _env(data_root)) == []


def test_a_broken_python_line_fails_the_harness(tmp_path, data_root):
    text = README.read_text()
    good = 'create_model("resnet8x4", num_classes=100)'
    broken = text.replace(good, good.replace("num_classes", "num_clases"))
    assert broken != text, "the mutated line left the README; pick another"
    (block,) = [b for b in extract_blocks(broken) if b.section == "Use it as a library"]
    failures = run_python(block, tmp_path, _env(data_root))
    assert len(failures) == 1 and "num_clases" in failures[0] and "README.md:" in failures[0]


def test_a_broken_shell_line_fails_the_harness(tmp_path, data_root):
    """A README edit that breaks a command (here a model name) fails at that line, before any training."""
    text = README.read_text()
    broken = text.replace("train-teacher --dataset fashion_mnist --model resnet20",
                          "train-teacher --dataset fashion_mnist --model resnet21", 1)
    assert broken != text
    block = [b for b in extract_blocks(broken) if b.section == "Command line"][0]
    failures = run_commands(block, tmp_path, _env(data_root), only=[0])
    assert len(failures) == 1 and "resnet21" in failures[0] and "exited 2" in failures[0]
    # and a new placeholder line, which runs as written and cannot
    broken = text.replace("semckd eval --checkpoint runs/s/best.pt", "semckd eval --checkpoint PATH", 1)
    block = [b for b in extract_blocks(broken) if b.section == "Command line"][0]
    k = [c for _, c in block.commands].index("semckd eval --checkpoint PATH")
    failures = run_commands(block, tmp_path, _env(data_root), only=[k])
    assert len(failures) == 1 and "exited 2" in failures[0] and "PATH" in failures[0]


def test_the_shrinking_flags_are_added_to_training_commands_only():
    assert to_argv("README.md", "semckd demo")[-4:] == SHRINK
    assert to_argv("README.md", "semckd sweep --teacher t.pt --grid beta=1")[-4:] == SHRINK
    assert to_argv("README.md", "semckd eval --checkpoint runs/s/best.pt")[3:] == ["eval", "--checkpoint",
                                                                                   "runs/s/best.pt"]
    assert to_argv("README.md", "semckd bench --pairs cifar100")[-6:] == BENCH_SHRINK
    with pytest.raises(AssertionError, match="no rule to run"):
        to_argv("README.md", "torchrun --nproc_per_node 2 -m semckd distill")


# ---------------------------------------------------------------------- long: the blocks that train
@pytest.mark.readme_long
def test_command_line_block_runs(tmp_path, data_root):
    _prepare(tmp_path)
    block, shared = _blocks("Command line", "bash")  # the commands, then one sweep on several machines
    assert len(block.commands) >= 11
    assert run_commands(block, tmp_path, _env(data_root)) == []
    assert run_commands(shared, tmp_path, _env(data_root)) == []
    assert (tmp_path / "shared" / "beta.journal").is_file() and (tmp_path / "shared/sweep/sweep.md").is_file()
    for f in ("runs/s/best.pt", "runs/s/attention.png", "curves.png", "runs/sweep/sweep.md",
              "deploy/student.onnx", "deploy/student.torchscript.pt", "runs/demo/semckd/run.json"):
        assert (tmp_path / f).is_file(), f"{f} missing after the README's commands"


@pytest.mark.readme_long
def test_own_model_block_runs(tmp_path, data_root):
    """`mynets.py` is what the README says it is: the Python block's ``cnn`` plus the quoted ``big``."""
    text = README.read_text()
    code = _one("Your own model", "python").code
    defs = code.split("\n\n\nteacher, student", 1)[0]
    big = re.search(r"`(def big\(num_classes, in_channels=1\): return cnn\(.*?\))`", text)
    assert big, "README no longer quotes `def big(...)` for mynets.py"
    (tmp_path / "mynets.py").write_text(defs + "\n\n" + big.group(1) + "\n")
    block = _one("Your own model", "bash")
    assert run_commands(block, tmp_path, _env(data_root)) == []
    assert (tmp_path / "deploy" / "student.pt").is_file()


@pytest.mark.readme_long
def test_own_data_block_runs(tmp_path, data_root):
    """What the block's lines name: ``mydata/`` holding ``train.csv``/``test.csv`` of PNG files (written
    here from the Fashion-MNIST slice) and ``mydata.py`` with ``def load(data_dir=None)`` (as the comment
    says), returning tensors."""
    from PIL import Image

    from semckd.data import load_arrays

    xtr, ytr, xte, yte, _ = load_arrays("fashion_mnist", str(data_root / "fashion-mnist"))
    d = tmp_path / "mydata"
    (d / "img").mkdir(parents=True)
    for split, xs, ys in (("train", xtr[:N_TRAIN], ytr[:N_TRAIN]), ("test", xte[:64], yte[:64])):
        rows = ["path,label"]
        for i in range(len(ys)):
            Image.fromarray(xs[i, 0].numpy()).save(d / "img" / f"{split}{i}.png")
            rows.append(f"img/{split}{i}.png,{int(ys[i])}")
        (d / f"{split}.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "mydata.py").write_text(
        "def load(data_dir=None):\n"
        "    from semckd.data import load_arrays\n"
        "    xtr, ytr, xte, yte, _ = load_arrays('fashion_mnist')\n"
        f"    return (xtr[:{N_TRAIN}], ytr[:{N_TRAIN}]), (xte[:64], yte[:64])\n")
    block = _one("Your own data", "bash")
    assert run_commands(block, tmp_path, _env(data_root)) == []
    for run in ("runs/t", "runs/t2"):
        assert (tmp_path / run / "best.pt").is_file(), f"{run} missing after the README's commands"


@pytest.mark.readme_long
def test_recipe_sources_example_runs(tmp_path, data_root):
    _prepare(tmp_path)
    file = "docs/recipe_sources.md"
    (block,) = [b for b in extract_blocks((ROOT / file).read_text(), file) if b.lang == "bash"]
    assert run_commands(block, tmp_path, _env(data_root)) == []


@pytest.mark.readme_long
def test_setup_block_quickstart_runs(tmp_path, data_root):
    """`bash quickstart.sh` as written, on a copy (it cds to its own folder, where the demo writes runs/),
    with $PYTHON logging its pip installs instead of installing into the interpreter under test."""
    shutil.copy(ROOT / "quickstart.sh", tmp_path / "quickstart.sh")
    shim, log = tmp_path / "python-shim", tmp_path / "pip.log"
    shim.write_text(f'#!/bin/sh\nif [ "$1" = "-m" ] && [ "$2" = "pip" ]; then\n'
                    f'    echo "$@" >> {shlex.quote(str(log))}; exit 0\nfi\n'
                    f'exec {shlex.quote(sys.executable)} "$@"\n')
    shim.chmod(0o755)
    env = {**_env(data_root), "PYTHON": str(shim)}
    words = shlex.split(QUICKSTART)
    p = subprocess.run([*words, *SHRINK], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, (p.stderr or p.stdout)[-2000:]
    assert "student  resnet8" in p.stdout and "SemCKD (" in p.stdout
    assert log.read_text().split("\n")[0] == "-m pip install -q -e .[plot]"
    assert (tmp_path / "runs" / "demo" / "semckd" / "attention.png").is_file()
