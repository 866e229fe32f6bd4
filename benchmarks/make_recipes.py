"""Render the YAML training recipes under ``configs/`` and ``docs/recipes.md`` from one table,
``benchmarks/recipes.yaml`` (the sources, their settings and reported numbers), so they stay consistent.

    python -m benchmarks make_recipes          # (re)write configs/{cifar100,imagenet}/**, docs/recipes.md
    python -m benchmarks make_recipes --check  # exit 1 if a checked-in file differs from the table

(``python benchmarks/make_recipes.py`` is the same: this file imports only the library.)

Each recipe is a complete ``semckd distill --config FILE`` run: dataset, student (``model``), teacher
architecture and checkpoint path, method and options, and the cited source's training schedule. The
``teacher:`` path is a placeholder (``save/teachers/<teacher>_<dataset>.pt``): point it at your own
trained teacher (``semckd train-teacher``) or pass ``--teacher``. ``lr: default`` in a schedule is the
library's own rule (:func:`semckd.config.default_lr`, the authors' per-student learning rate).

``reported:`` is metadata (the config loader ignores it): the top-1 accuracy the literature reports for
that pair and method, with its source; every other recipe says ``source: not reported`` and why.
Numbers from different papers come from different training settings (e.g. the CRD paper's KD row is
0.1·CE + 0.9·KD, the SemCKD and SimKD papers use 1·CE + 1·KD), which the ``note`` states where it matters.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from semckd.config import default_lr

ROOT = Path(__file__).resolve().parent.parent
TABLE = Path(__file__).resolve().parent / "recipes.yaml"
SCHEDULE_HEAD = ("epochs", "batch_size", "lr")  # the file's order; the rest as the table lists them


def load_table(path: Path = TABLE) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _holds(when: dict[str, Any], dataset: str, pair: str, reported: list | None) -> bool:
    return (when.get("dataset", dataset) == dataset and pair in when.get("pairs", [pair])
            and ("reported" not in when or (reported is not None and reported[1] == when["reported"])))


def recipe(table: dict[str, Any], dataset: str, teacher: str, student: str, name: str) -> dict[str, Any]:
    """One recipe as a plain dict (key order is the file's order): the first case of the recipe, then of
    its family, whose ``when`` holds for this dataset and pair."""
    spec, ds = table["recipes"][name], table["datasets"][dataset]
    family = table["families"].get(spec.get("family"), {"vars": {}, "cases": []})
    pair = f"{teacher}_{student}"
    reported = table["reported"].get(pair, {}).get(name)
    case = next((c for c in spec.get("cases", []) + family["cases"]
                 if _holds(c.get("when", {}), dataset, pair, reported)), None)
    if case is None:
        raise ValueError(f"recipes.yaml: no case of recipe {name!r} holds for {dataset} {pair}; give it a "
                         "last case without `when`")
    names = table["author_names"]
    words = {**family["vars"], **spec.get("vars", {}), "student": names.get(student, student),
             "teacher": names.get(teacher, teacher), "student_id": student, "teacher_id": teacher}
    schedule = dict(table["schedules"][case["schedule"]])
    if schedule["lr"] == "default":
        schedule["lr"] = default_lr(student)
    r: dict[str, Any] = {"dataset": dataset}
    if "data_dir" in ds:
        r["data_dir"] = ds["data_dir"]
    r["model"] = student
    if spec["method"] != "vanilla":
        r["teacher_model"] = teacher
        r["teacher"] = f"save/teachers/{teacher}_{ds.get('teacher_tag', dataset)}.pt"
    r["method"] = spec["method"]
    r["method_args"] = _merge(spec.get("args", {}), case.get("args", {}))
    r.update({k: schedule[k] for k in SCHEDULE_HEAD})
    r.update({k: v for k, v in schedule.items() if k not in r})
    r["source"] = {k: case[k].format(**words) for k in ("repo", "script", "flags", "note") if k in case}
    if reported is not None:
        rep: dict[str, Any] = {"top1": reported[0], "source": table["citations"][reported[1]]}
    else:
        rep = {"source": "not reported", "note": table["not_reported_note"]}
    if "reported_note" in spec:
        rep["note"] = f"{rep['note']}; {spec['reported_note']}" if "note" in rep else spec["reported_note"]
    r["reported"] = rep
    return r


def all_recipes(table: dict[str, Any] | None = None) -> dict[Path, dict[str, Any]]:
    """Relative path → recipe, for every pair and recipe of the table."""
    table = load_table() if table is None else table
    out: dict[Path, dict[str, Any]] = {}
    for dataset, ds in table["datasets"].items():
        for teacher, student in ds["pairs"]:
            for name in table["recipes"]:
                out[Path("configs") / ds["folder"] / f"{teacher}_{student}" / f"{name}.yaml"] = recipe(
                    table, dataset, teacher, student, name)
    return out


class _Dumper(yaml.SafeDumper):
    """Block style, except short lists (milestones) on one line."""


_Dumper.add_representer(list, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))


def render(path: Path, r: dict[str, Any]) -> str:
    what = (f"teacher {r['teacher_model']} → student {r['model']}" if "teacher_model" in r
            else f"student {r['model']} alone (the pair's baseline row)")
    head = (f"# {path.as_posix()}: {r['method']}, {what}, {r['dataset']}\n"
            "# Generated by benchmarks/make_recipes.py; edit the table there, not this file.\n")
    if "teacher" in r:
        head += "# `teacher` is a placeholder: point it at your trained teacher checkpoint (or --teacher).\n"
    return head + yaml.dump(r, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=110)


DOC = Path("docs") / "recipes.md"


def _fmt_args(args: dict[str, Any]) -> str:
    parts = []
    for k, v in args.items():
        parts.append(f"{k}: {{{_fmt_args(v)}}}" if isinstance(v, dict) else f"{k}={v}")
    return ", ".join(parts) if parts else "defaults"


def render_table(recipes: dict[Path, dict[str, Any]]) -> str:
    """docs/recipes.md: one row per recipe — its source, settings and the reported top-1."""
    lines = [
        "# Recipes: sources, settings, reported accuracy",
        "",
        "Generated by `python benchmarks/make_recipes.py` from the same table as `configs/` (do not edit by",
        "hand; `tests/test_recipes.py` checks that this file is what the script writes). Each recipe trains",
        "with the settings of the source it cites (`source:` in the file: repository, script, flags), so the",
        "*reported* top-1 is what that source published for that setting. Cell `—`: no number was checked",
        "against a readable source (see the recipe's `reported.note`). Method options not listed are the",
        "method's defaults, which follow the SemCKD code (docs/methods.md).",
        "",
    ]
    by_pair: dict[str, list[tuple[Path, dict[str, Any]]]] = {}
    for rel, r in recipes.items():
        by_pair.setdefault(f"{rel.parent.parent.name}/{rel.parent.name}", []).append((rel, r))
    for pair, rows in by_pair.items():
        lines += [f"## {pair}", "",
                  "| recipe | source (repo · script) | flags | method, options | batch · lr · epochs "
                  "| reported top-1 |",
                  "|---|---|---|---|---|---|"]
        for rel, r in rows:
            src, rep = r["source"], r["reported"]
            flags = src["flags"].replace("|", "\\|")
            if src.get("note"):
                flags += f" ({src['note']})"
            top1 = f"{rep['top1']:.2f} ({rep['source']})" if "top1" in rep else "—"
            lines.append(f"| `{rel.stem}` | {src['repo']} · `{src['script']}` | {flags} | "
                         f"`{r['method']}`: {_fmt_args(r['method_args'])} | "
                         f"{r['batch_size']} · {r['lr']:g} · {r['epochs']} | {top1} |")
        lines.append("")
    return "\n".join(lines)


def _write(path: Path, text: str) -> None:
    from semckd.atomic import write_text_atomic

    write_text_atomic(path, text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=str(ROOT), help="repository root (default: this checkout)")
    ap.add_argument("--check", action="store_true", help="only compare; exit 1 on any difference")
    args = ap.parse_args(argv)
    root = Path(args.root)
    stale = []
    recipes = all_recipes()
    outputs = {rel: render(rel, r) for rel, r in recipes.items()}
    outputs[DOC] = render_table(recipes)
    for rel, text in outputs.items():
        dst = root / rel
        if args.check:
            if not dst.is_file() or dst.read_text() != text:
                stale.append(str(rel))
        elif not dst.is_file() or dst.read_text() != text:
            _write(dst, text)
    if stale:
        print(f"{len(stale)} recipe file(s) differ from benchmarks/recipes.yaml, e.g. {stale[0]}; "
              "run: python -m benchmarks make_recipes", file=sys.stderr)
        return 1
    if not args.check:
        print(f"wrote {len(recipes)} recipes under {root / 'configs'} and {root / DOC}")
    return 0


if __name__ == "__main__":  # one entry per job (benchmarks/__main__.py): the file path only points there
    cmd = " ".join(["python -m benchmarks make_recipes", *sys.argv[1:]])
    print(f"make_recipes: error: run `{cmd}` from the checkout root", file=sys.stderr)
    sys.exit(2)
