"""Generate the YAML training recipes under ``configs/`` from one table, so they stay consistent.

    python benchmarks/make_recipes.py            # (re)write configs/cifar100/** and configs/imagenet/**
    python benchmarks/make_recipes.py --check    # exit 1 if a checked-in recipe differs from the table

Each recipe is a complete ``semckd distill --config FILE`` run: dataset, student (``model``), teacher
architecture and checkpoint path, method and options, and the SemCKD paper's training schedule. The
``teacher:`` path is a placeholder (``save/teachers/<teacher>_<dataset>.pt``): point it at your own
trained teacher (``semckd train-teacher``) or pass ``--teacher``.

``reported:`` is metadata (the config loader ignores it): the top-1 accuracy the literature reports for
that pair and method, with its source. Only numbers that were checked against a readable copy of the
source are filled in; every other recipe says ``source: not reported`` and why. Numbers from different
papers come from different training settings (e.g. the CRD paper's KD row is 0.1·CE + 0.9·KD, the SemCKD
and SimKD papers use 1·CE + 1·KD), which the ``note`` states where it matters.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent

# ------------------------------------------------------------------------------------------- schedules
# SemCKD / RepDistiller train_student.py: SGD 0.9, wd 5e-4, batch 64, 240 epochs, ×0.1 at 150/180/210,
# lr 0.05 (0.01 for MobileNetV2 / ShuffleNet students)
CIFAR = {"epochs": 240, "batch_size": 64, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "multistep",
         "milestones": [150, 180, 210], "lr_decay": 0.1}
LOW_LR_STUDENTS = ("mobilenetv2", "shufflenetv1", "shufflenetv2")
# SemCKD README, ImageNet command: batch 256, 90 epochs, lr 0.1, ×0.1 at 30/60, wd 1e-4
IMAGENET = {"epochs": 90, "batch_size": 256, "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4,
            "schedule": "multistep", "milestones": [30, 60], "lr_decay": 0.1}

# -------------------------------------------------------------------------------------------- methods
# recipe file name → (method spec, method_args). Method defaults are the SemCKD paper's settings
# (1·CE + 1·KD + β·term); only deviations are spelled out.
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "vanilla": ("vanilla", {}),
    "kd": ("kd", {"ce_weight": 1.0, "kd_weight": 1.0}),  # SemCKD: -r 1 -a 1 -b 0
    "fitnet": ("fitnet", {}),
    "at": ("at", {}),
    "sp": ("sp", {}),
    "vid": ("vid", {}),
    "hkd": ("hkd", {}),
    "crd": ("crd", {}),
    "pkt": ("pkt", {}),
    "rkd": ("rkd", {}),
    "cc": ("cc", {}),
    "irg": ("irg", {}),
    "semckd": ("semckd", {}),
    "semckd+crd": ("semckd+crd", {}),
    "simkd": ("simkd", {}),
    "dkd": ("dkd", {}),
    "reviewkd": ("reviewkd", {}),
    # extras: logit standardisation (Sun et al., CVPR 2024) on KD and DKD
    "kd_ls": ("kd", {"ce_weight": 1.0, "kd_weight": 1.0, "logit_std": True}),
    "dkd_ls": ("dkd", {"logit_std": True}),
}

# per-pair option overrides from the methods' own papers/code (merged into METHODS' args)
PAIR_ARGS: dict[tuple[str, str], dict[str, dict[str, Any]]] = {
    # dvlab-research/ReviewKD CIFAR-100/script/reviewKD.sh; mdistiller configs/cifar100/reviewkd.yaml
    ("resnet32x4", "resnet8x4"): {"reviewkd": {"beta": 5.0}},
    ("resnet32x4", "shufflenetv2"): {"reviewkd": {"beta": 8.0}},
    # megvii-research/mdistiller configs/cifar100/dkd/vgg13_vgg8.yaml (DKD.BETA 6.0; default 8.0)
    ("vgg13", "vgg8"): {"dkd": {"beta": 6.0}, "dkd_ls": {"beta": 6.0}},
    # ImageNet: SemCKD README (-b 50); mdistiller configs/imagenet/r34_r18/{dkd,reviewkd}.yaml
    ("resnet34", "resnet18"): {
        "semckd": {"beta": 50.0},
        "semckd+crd": {"semckd": {"beta": 50.0}},
        "dkd": {"beta": 0.5, "temperature": 1.0, "warmup": 1},
        "dkd_ls": {"beta": 0.5, "temperature": 1.0, "warmup": 1},
        "reviewkd": {"warmup_epochs": 1.0},
    },
}

# --------------------------------------------------------------------------------- reported numbers
SIMKD = "SimKD, Chen et al. CVPR 2022, CIFAR-100 table (DefangChen/SimKD README); SemCKD code base, 1·CE+1·KD"
CRD = ("CRD, Tian et al. ICLR 2020, Tables 1-2 (HobbitLong/RepDistiller README); KD row 0.1·CE+0.9·KD, "
       "other rows CE + method term without KD")
REVIEWKD = "ReviewKD, Chen et al. CVPR 2021, Tables 1-2 (as reproduced in later papers' tables)"
DKD = "DKD, Zhao et al. CVPR 2022, Tables 1-2 (megvii-research/mdistiller README)"
DKD_IMNET = ("DKD, Zhao et al. CVPR 2022, ImageNet table (megvii-research/mdistiller README); "
             "their schedule: batch 512, lr 0.2, 100 epochs")

# (teacher, student) → {recipe name: (top-1, source)}
REPORTED: dict[tuple[str, str], dict[str, tuple[float, str]]] = {
    ("resnet32x4", "resnet8x4"): {
        "vanilla": (73.09, SIMKD), "kd": (74.42, SIMKD), "fitnet": (74.32, SIMKD), "at": (75.07, SIMKD),
        "sp": (74.29, SIMKD), "vid": (74.55, SIMKD), "crd": (75.59, SIMKD), "semckd": (76.23, SIMKD),
        "simkd": (78.08, SIMKD),
        "cc": (72.97, CRD), "rkd": (71.90, CRD), "pkt": (73.64, CRD),
        "reviewkd": (75.63, REVIEWKD), "dkd": (76.32, DKD),
    },
    ("resnet32x4", "vgg8"): {
        "vanilla": (70.46, SIMKD), "kd": (72.73, SIMKD), "fitnet": (72.91, SIMKD), "at": (71.90, SIMKD),
        "sp": (73.12, SIMKD), "vid": (73.19, SIMKD), "crd": (73.54, SIMKD), "semckd": (75.27, SIMKD),
        "simkd": (75.76, SIMKD),
    },
    ("vgg13", "vgg8"): {
        "vanilla": (70.36, CRD), "kd": (72.98, CRD), "fitnet": (71.02, CRD), "at": (71.43, CRD),
        "sp": (72.68, CRD), "cc": (70.71, CRD), "vid": (71.23, CRD), "rkd": (71.48, CRD), "pkt": (72.88, CRD),
        "crd": (73.94, CRD), "reviewkd": (74.84, REVIEWKD), "dkd": (74.68, DKD),
    },
    ("resnet32x4", "shufflenetv2"): {
        "vanilla": (71.82, CRD), "kd": (74.45, CRD), "fitnet": (73.54, CRD), "at": (72.73, CRD),
        "sp": (74.56, CRD), "cc": (71.29, CRD), "vid": (73.40, CRD), "rkd": (73.21, CRD), "pkt": (74.69, CRD),
        "crd": (75.65, CRD), "reviewkd": (77.78, REVIEWKD), "dkd": (77.07, DKD),
    },
    ("resnet34", "resnet18"): {"kd": (71.03, DKD_IMNET), "dkd": (71.70, DKD_IMNET)},
}

NOT_REPORTED_NOTE = ("no number for this pair and method was verified against a readable source; the "
                     "SemCKD paper (AAAI 2021 Tables 1-2 / TKDE 2022) may list one")
HKD_NOTE = ("the SemCKD paper's HKD runs distil from an auxiliary double-width student trained with PKT "
            "(two-pass); this recipe distils from the teacher directly (see docs/methods_b.md)")

# the SemCKD paper's seven CIFAR-100 teacher → student pairs
CIFAR_PAIRS = [
    ("resnet32x4", "vgg8"),
    ("resnet32x4", "vgg13"),
    ("vgg13", "shufflenetv2"),
    ("resnet32x4", "shufflenetv2"),
    ("wrn_40_2", "mobilenetv2"),
    ("vgg13", "vgg8"),
    ("resnet32x4", "resnet8x4"),
]
IMAGENET_PAIRS = [("resnet34", "resnet18")]


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def recipe(dataset: str, teacher: str, student: str, name: str) -> dict[str, Any]:
    """One recipe as a plain dict (key order is the file's order)."""
    spec, args = METHODS[name]
    args = _merge(args, PAIR_ARGS.get((teacher, student), {}).get(name, {}))
    imagenet = dataset == "imagefolder"
    r: dict[str, Any] = {"dataset": dataset}
    if imagenet:
        r["data_dir"] = "data/imagenet"
    r["model"] = student
    if spec != "vanilla":
        r["teacher_model"] = teacher
        r["teacher"] = f"save/teachers/{teacher}_{'imagenet' if imagenet else dataset}.pt"
    r["method"] = spec
    r["method_args"] = args
    if imagenet:
        r.update(IMAGENET)
    else:
        lr = 0.01 if student.startswith(LOW_LR_STUDENTS) else 0.05
        r.update({"epochs": CIFAR["epochs"], "batch_size": CIFAR["batch_size"], "lr": lr})
        r.update({k: v for k, v in CIFAR.items() if k not in r})
    reported = REPORTED.get((teacher, student), {}).get(name)
    if reported is not None:
        rep: dict[str, Any] = {"top1": reported[0], "source": reported[1]}
    else:
        rep = {"source": "not reported", "note": NOT_REPORTED_NOTE}
    if name == "hkd":
        rep["note"] = f"{rep['note']}; {HKD_NOTE}" if "note" in rep else HKD_NOTE
    r["reported"] = rep
    return r


def all_recipes() -> dict[Path, dict[str, Any]]:
    """Relative path → recipe, for every pair and method."""
    out: dict[Path, dict[str, Any]] = {}
    groups = (("cifar100", CIFAR_PAIRS, "cifar100"), ("imagefolder", IMAGENET_PAIRS, "imagenet"))
    for dataset, pairs, folder in groups:
        for teacher, student in pairs:
            for name in METHODS:
                out[Path("configs") / folder / f"{teacher}_{student}" / f"{name}.yaml"] = recipe(
                    dataset, teacher, student, name)
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


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=str(ROOT), help="repository root (default: this checkout)")
    ap.add_argument("--check", action="store_true", help="only compare; exit 1 on any difference")
    args = ap.parse_args(argv)
    root = Path(args.root)
    stale = []
    for rel, r in all_recipes().items():
        text = render(rel, r)
        dst = root / rel
        if args.check:
            if not dst.is_file() or dst.read_text() != text:
                stale.append(str(rel))
        elif not dst.is_file() or dst.read_text() != text:
            _write(dst, text)
    if stale:
        print(f"{len(stale)} recipe(s) differ from benchmarks/make_recipes.py, e.g. {stale[0]}; "
              "run: python benchmarks/make_recipes.py", file=sys.stderr)
        return 1
    if not args.check:
        print(f"wrote {len(all_recipes())} recipes under {root / 'configs'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
