"""Generate the YAML training recipes under ``configs/`` from one table, so they stay consistent.

    python benchmarks/make_recipes.py          # (re)write configs/{cifar100,imagenet}/**, docs/recipes.md
    python benchmarks/make_recipes.py --check  # exit 1 if a checked-in file differs from the table

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
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent

# ------------------------------------------------------------------------------------------- schedules
# Every recipe trains on the schedule of the source it cites (``source:``), so the reported number can be
# reproduced. SemCKD / RepDistiller train_student.py: SGD 0.9, wd 5e-4, batch 64, 240 epochs, ×0.1 at
# 150/180/210, lr 0.05 (0.01 for MobileNetV2 / ShuffleNet students); mdistiller and the logit-
# standardisation repository use the same CIFAR schedule (their per-pair configs set LR 0.01 likewise).
CIFAR = {"epochs": 240, "batch_size": 64, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "multistep",
         "milestones": [150, 180, 210], "lr_decay": 0.1}
LOW_LR_STUDENTS = ("mobilenetv2", "shufflenetv1", "shufflenetv2")
# dvlab-research/ReviewKD CIFAR-100/train.py defaults (its script passes no --lr/--batch_size): batch 128,
# lr 0.1 for every student, wd 5e-4, 240 epochs, ×0.1 at 150/180/210
REVIEWKD_CIFAR = {"epochs": 240, "batch_size": 128, "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4,
                  "schedule": "multistep", "milestones": [150, 180, 210], "lr_decay": 0.1}
# SemCKD README, ImageNet command: batch 256, 90 epochs, lr 0.1, ×0.1 at 30/60, wd 1e-4
IMAGENET = {"epochs": 90, "batch_size": 256, "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4,
            "schedule": "multistep", "milestones": [30, 60], "lr_decay": 0.1}
# SemCKD fitnet.sh (the ImageNet FitNet command): as the README but ×0.1 at 30/60/90
IMAGENET_FITNET = dict(IMAGENET, milestones=[30, 60, 90])
# SimKD README, ImageNet command: batch 256, 120 epochs, lr 0.1, ×0.1 at 30/60/90, wd 1e-4
IMAGENET_SIMKD = dict(IMAGENET, epochs=120, milestones=[30, 60, 90])
# mdistiller configs/imagenet/r34_r18/{kd,dkd}.yaml: batch 512, lr 0.2, 100 epochs, ×0.1 at 30/60/90
IMAGENET_MDISTILLER = {"epochs": 100, "batch_size": 512, "lr": 0.2, "momentum": 0.9, "weight_decay": 1e-4,
                       "schedule": "multistep", "milestones": [30, 60, 90], "lr_decay": 0.1}
# mdistiller configs/imagenet/r34_r18/reviewkd.yaml: batch 256, lr 0.1, 100 epochs, ×0.1 at 30/60/90
IMAGENET_MDISTILLER_REVIEWKD = dict(IMAGENET_MDISTILLER, batch_size=256, lr=0.1)

# -------------------------------------------------------------------------------------------- methods
# recipe file name → (method spec, method_args). Method defaults are the SemCKD paper's settings
# (1·CE + 1·KD + β·term, the authors' code's layers and variants); only deviations are spelled out.
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "vanilla": ("vanilla", {}),
    "kd": ("kd", {}),
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
    # extras: logit standardisation (Sun et al., CVPR 2024) on KD and DKD; settings per pair below
    "kd_ls": ("kd", {"logit_std": True}),
    "dkd_ls": ("dkd", {"logit_std": True}),
}

# the authors' model_dict names (for the commands quoted in ``source.flags``)
AUTHOR_NAMES = {"shufflenetv2": "ShuffleV2", "shufflenetv1": "ShuffleV1", "mobilenetv2": "MobileNetV2",
                "resnet18": "ResNet18", "resnet34": "ResNet34"}

# SemCKD scripts/run_cifar_distill.sh: the --distill name and -b of each method (always -r 1 -a 1)
SEMCKD_FLAGS = {
    "kd": ("kd", 0), "fitnet": ("hint", 100), "at": ("attention", 1000), "sp": ("similarity", 3000),
    "vid": ("vid", 1), "rkd": ("rkd", 1), "pkt": ("pkt", 30000), "crd": ("crd", 0.8), "irg": ("irg", 0.005),
    "semckd": ("semckd", 400), "cc": ("correlation", 0.02), "hkd": ("hkd", 1),
}
SEMCKD_DEFAULTS = {  # train_student.py defaults the method relies on
    "fitnet": "train_student.py default --hint_layer 1",
    "crd": "train_student.py defaults --mode exact --nce_k 16384 --nce_t 0.07 --nce_m 0.5 --feat_dim 128",
    "hkd": "--hkd_initial_weight 100 --hkd_decay 0.7 (defaults); teacher: a PKT-trained double-width "
           "student (two-pass)",
    "cc": "distiller_zoo/CC.py Correlation",
}

# dvlab-research/ReviewKD CIFAR-100/script/reviewKD.sh --kd-loss-weight per pair (train.py default 1.0)
REVIEWKD_WEIGHT = {("resnet32x4", "resnet8x4"): 5.0, ("resnet32x4", "shufflenetv2"): 8.0}
# megvii-research/mdistiller configs/cifar100/dkd/<file>.yaml per pair (DKD.BETA where it is set)
MDISTILLER_DKD = {("resnet32x4", "resnet8x4"): ("res32x4_res8x4.yaml", {}),
                  ("resnet32x4", "shufflenetv2"): ("res32x4_shuv2.yaml", {}),
                  ("vgg13", "vgg8"): ("vgg13_vgg8.yaml", {"beta": 6.0})}
LS_REPO = "sunshangquan/logit-standardization-KD"
# logit standardisation: the README commands (--logit-stand --base-temp 2 --kd-weight 9) unless the pair's
# training log, named KD_TYPE,TEACHER,STUDENT,BASE_TEMPERATURE,KD_WEIGHT[,DKD.BETA], says otherwise
# (pair → (config name, {recipe: (base temperature, kd weight, DKD.BETA or None, top-1 or None)}))
LS_PAIRS: dict[tuple[str, str], tuple[str, dict[str, tuple[float, float, float | None, float | None]]]] = {
    ("resnet32x4", "resnet8x4"): ("resnet32x4_resnet8x4", {"kd_ls": (2, 9, None, 76.62),
                                                          "dkd_ls": (2, 9, None, 77.01)}),
    ("vgg13", "vgg8"): ("vgg13_vgg8", {"kd_ls": (3, 9, None, 74.36), "dkd_ls": (2, 15, 2.0, 74.81)}),
    ("resnet32x4", "shufflenetv2"): ("resnet32x4_ShuffleV2", {"kd_ls": (2, 9, None, 75.56),
                                                             "dkd_ls": (2, 9, None, 77.37)}),
    ("wrn_40_2", "mobilenetv2"): ("wrn_40_2_MobileNetV2", {"kd_ls": (3, 9, None, 69.23),
                                                          "dkd_ls": (2, 15, 2.0, 70.01)}),
    ("resnet32x4", "vgg8"): ("resnet32x4_vgg8", {}),
}
# the logit-standardisation repo's configs for these pairs (others fall back to the cfg.py defaults)
LS_DKD_CONFIGS = {("resnet32x4", "resnet8x4"), ("vgg13", "vgg8"), ("resnet32x4", "shufflenetv2")}
LS_README = ("Sun et al., Logit Standardization in KD, CVPR 2024, CIFAR-100 tables "
             "(logit-standardization-KD README)")


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
            "(two-pass); this recipe distils from the teacher directly (see docs/methods.md)")

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


def _name(arch: str) -> str:
    return AUTHOR_NAMES.get(arch, arch)


def _ls_args(dataset: str, teacher: str, student: str, name: str) -> tuple[dict[str, Any], dict[str, Any],
                                                                           tuple[float, str] | None]:
    """(method_args, source, reported) of a logit-standardisation recipe, from tools/train.py's rule:
    KD: KD_WEIGHT = --kd-weight, TEMPERATURE = --base-temp (CE_WEIGHT from the config: 0.1 on CIFAR, 1.0
    on ImageNet); DKD: ALPHA ×= --kd-weight, BETA ×= --kd-weight, T = --base-temp."""
    imagenet = dataset == "imagefolder"
    if imagenet:
        temp, weight, dkd_beta, top1 = 2.0, 9.0, None, (71.45 if name == "kd_ls" else None)
        cfg = f"configs/imagenet/r34_r18/{name[:-3]}.yaml"
        log = "logs/imagenet/r34_r18_kd_ours.txt" if name == "kd_ls" else None
    else:
        cfg_pair, table = LS_PAIRS.get((teacher, student), (None, {}))
        temp, weight, dkd_beta, top1 = table.get(name, (2.0, 9.0, None, None))
        sub = name[:-3]
        has_cfg = cfg_pair is not None and (sub == "kd" or (teacher, student) in LS_DKD_CONFIGS)
        cfg = (f"configs/cifar100/{sub}/{cfg_pair}.yaml" if has_cfg
               else f"(none for this pair in configs/cifar100/{sub}/: mdistiller/engine/cfg.py defaults)")
        log = (f"logs/{sub.upper()}/{sub},{teacher},"
               f"{_name(student)},{temp:g},{weight:g}{f',{dkd_beta}' if dkd_beta is not None else ''}.txt"
               if top1 is not None else None)
    flags = f"--cfg {cfg} --logit-stand --base-temp {temp:g} --kd-weight {weight:g}"
    if name == "kd_ls":
        ce = 1.0 if imagenet else 0.1
        args = {"ce_weight": ce, "kd_weight": float(weight), "temperature": float(temp), "logit_std": True}
    else:
        base_beta = dkd_beta if dkd_beta is not None else (0.5 if imagenet else
                                                           MDISTILLER_DKD.get((teacher, student),
                                                                              ("", {}))[1].get("beta", 8.0))
        if dkd_beta is not None:
            flags += f" DKD.BETA {dkd_beta}"
        args = {"alpha": float(weight), "beta": float(base_beta * weight), "temperature": float(temp),
                "logit_std": True}
        if imagenet:
            args["warmup"] = 1
    src: dict[str, Any] = {"repo": LS_REPO, "script": "tools/train.py", "flags": flags}
    if log:
        src["note"] = f"settings from the training log {log} (README: the log name gives them)"
    elif imagenet and name == "dkd_ls":
        src["note"] = "the README gives no ImageNet DKD command; tools/train.py's rule applied to dkd.yaml"
    else:
        src["note"] = "the README's default command; no log for this pair"
    rep = None
    if top1 is not None:
        rep = (top1, f"logit-standardization-KD log {log}" if imagenet else LS_README)
    return args, src, rep


def source_and_schedule(dataset: str, teacher: str, student: str, name: str
                        ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(extra method_args, ``source`` mapping, training schedule) of one recipe, from the source it cites."""
    imagenet = dataset == "imagefolder"
    lr = 0.01 if student.startswith(LOW_LR_STUDENTS) else 0.05
    cifar = dict(CIFAR, lr=lr)
    s_name, t_name = _name(student), _name(teacher)
    if name in ("kd_ls", "dkd_ls"):
        args, src, _ = _ls_args(dataset, teacher, student, name)
        return args, src, (IMAGENET_MDISTILLER if imagenet else cifar)
    if name == "dkd":
        if imagenet:
            return ({"beta": 0.5, "temperature": 1.0, "warmup": 1},
                    {"repo": "megvii-research/mdistiller", "script": "tools/train.py",
                     "flags": "--cfg configs/imagenet/r34_r18/dkd.yaml (DKD: CE 1, ALPHA 1, BETA 0.5, T 1, "
                              "WARMUP 1)"}, IMAGENET_MDISTILLER)
        file, args = MDISTILLER_DKD.get((teacher, student), (None, {}))
        flags = (f"--cfg configs/cifar100/dkd/{file}" + (f" (DKD.BETA {args['beta']})" if args else "")
                 if file else "no configs/cifar100/dkd/ file for this pair: engine/cfg.py defaults "
                              "(DKD: CE 1, ALPHA 1, BETA 8, T 4, WARMUP 20)")
        return dict(args), {"repo": "megvii-research/mdistiller", "script": "tools/train.py",
                            "flags": flags}, cifar
    if name == "kd" and imagenet:
        return ({"ce_weight": 1.0, "kd_weight": 0.5, "temperature": 1.0},
                {"repo": "megvii-research/mdistiller", "script": "tools/train.py",
                 "flags": "--cfg configs/imagenet/r34_r18/kd.yaml (KD: CE 1.0, KD 0.5, T 1)"},
                IMAGENET_MDISTILLER)
    if name == "reviewkd":
        if imagenet:
            return ({"warmup_epochs": 1.0},
                    {"repo": "megvii-research/mdistiller", "script": "tools/train.py",
                     "flags": "--cfg configs/imagenet/r34_r18/reviewkd.yaml (REVIEWKD: CE 1, weight 1, "
                              "WARMUP_EPOCHS 1, STU_PREACT True)",
                     "note": "student levels stay post-activation here (STU_PREACT is not offered)"},
                    IMAGENET_MDISTILLER_REVIEWKD)
        w = REVIEWKD_WEIGHT.get((teacher, student))
        flags = (f"--model {s_name.lower()} --teacher {t_name} --kd-loss-weight {w}" if w is not None
                 else "train.py defaults: --kd-loss-weight 1.0 --kd-warm-up 20 (the script has no line for "
                      "this pair)")
        src = {"repo": "dvlab-research/ReviewKD",
               "script": "CIFAR-100/script/reviewKD.sh" if w is not None else "CIFAR-100/train.py",
               "flags": flags + "; train.py: batch 128, lr 0.1, teacher features preact=True"}
        return ({"beta": w} if w is not None else {}), src, REVIEWKD_CIFAR
    if name == "simkd":
        flags = f"--distill simkd --model_s {s_name} -c 0 -d 0 -b 1 (factor -f 2)"
        if imagenet:
            return {}, {"repo": "DefangChen/SimKD", "script": "README.md (ImageNet command)",
                        "flags": flags + " --batch_size 256 --epochs 120 --learning_rate 0.1 "
                                         "--lr_decay_epochs 30,60,90 --weight_decay 1e-4"}, IMAGENET_SIMKD
        return {}, {"repo": "DefangChen/SimKD", "script": "scripts/run_distill.sh", "flags": flags}, cifar
    if name == "vanilla":
        flags = f"python train_teacher.py --model {s_name}"
        if imagenet:
            return {}, {"repo": "DefangChen/SemCKD", "script": "train_teacher.py",
                        "flags": flags + " on the README's ImageNet schedule",
                        "note": "the paper's ImageNet student row is torchvision's ResNet-18"}, IMAGENET
        return {}, {"repo": "DefangChen/SemCKD", "script": "scripts/run_cifar_vanilla.sh + train_teacher.py",
                    "flags": flags}, cifar
    reported = REPORTED.get((teacher, student), {}).get(name)
    if reported is not None and reported[1] == CRD:
        # the number comes from the CRD paper, i.e. RepDistiller's commands: -r 1 -a 0 -b β (no KD term),
        # KD -r 0.1 -a 0.9, --hint_layer 2 (its default); same schedule
        repo = {"repo": "HobbitLong/RepDistiller", "script": "scripts/run_cifar_distill.sh"}
        if name == "vanilla":
            return {}, dict(repo, script="train_teacher.py",
                            flags=f"python train_teacher.py --model {s_name}"), cifar
        if name == "kd":
            return ({"ce_weight": 0.1, "kd_weight": 0.9},
                    dict(repo, flags=f"--distill kd --model_s {s_name} -r 0.1 -a 0.9 -b 0"), cifar)
        distill, beta = SEMCKD_FLAGS[name]
        flags = f"--distill {distill} --model_s {s_name} -a 0 -b {beta:g}"
        args: dict[str, Any] = {"kd_weight": 0.0}
        if name == "fitnet":
            flags += "; train_student.py default --hint_layer 2"
            args["hint_layer"] = 2
        elif name == "crd":
            flags += "; train_student.py defaults --mode exact --nce_k 16384"
        elif name == "cc":
            flags += "; distiller_zoo/CC.py Correlation"
        return args, dict(repo, flags=flags), cifar
    # the SemCKD code base: scripts/run_cifar_distill.sh (CIFAR), README / fitnet.sh (ImageNet)
    extra: dict[str, Any] = {}
    if name == "semckd+crd":
        flags = ("the members' commands: --distill semckd -r 1 -a 1 -b 400 and --distill crd -b 0.8 "
                 "(train_student.py runs one --distill at a time; the combination is the paper's "
                 "SemCKD+CRD row)")
        if imagenet:
            extra = {"semckd": {"beta": 50.0}}
            flags = flags.replace("-b 400", "-b 50")
    else:
        distill, beta = SEMCKD_FLAGS[name]
        if imagenet and name == "semckd":
            beta, extra = 50, {"beta": 50.0}
        flags = f"--distill {distill} --model_s {s_name} -r 1 -a 1 -b {beta:g}"
        if name in SEMCKD_DEFAULTS:
            flags += f"; {SEMCKD_DEFAULTS[name]}"
    if imagenet:
        if name == "fitnet":
            return extra, {"repo": "DefangChen/SemCKD", "script": "fitnet.sh",
                           "flags": "--distill hint --model_s ResNet18 -r 1 -a 1 -b 100 --hint_layer 1 "
                                    "--batch_size 256 --epochs 90 --learning_rate 0.1 --lr_decay_epochs "
                                    "30,60,90 --weight_decay 1e-4"}, IMAGENET_FITNET
        src = {"repo": "DefangChen/SemCKD", "script": "README.md (ImageNet command)",
               "flags": flags + " --batch_size 256 --epochs 90 --learning_rate 0.1 --lr_decay_epochs 30,60 "
                                "--weight_decay 1e-4"}
        if name != "semckd":
            src["note"] = "the README quotes only SemCKD's ImageNet command; the CIFAR -b is kept"
        return extra, src, IMAGENET
    return extra, {"repo": "DefangChen/SemCKD", "script": "scripts/run_cifar_distill.sh",
                   "flags": flags}, cifar


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def recipe(dataset: str, teacher: str, student: str, name: str) -> dict[str, Any]:
    """One recipe as a plain dict (key order is the file's order)."""
    spec, args = METHODS[name]
    extra, source, schedule = source_and_schedule(dataset, teacher, student, name)
    args = _merge(args, extra)
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
    r.update({k: schedule[k] for k in ("epochs", "batch_size", "lr")})
    r.update({k: v for k, v in schedule.items() if k not in r})
    r["source"] = source
    reported = REPORTED.get((teacher, student), {}).get(name)
    if name in ("kd_ls", "dkd_ls"):
        reported = _ls_args(dataset, teacher, student, name)[2]
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
        print(f"{len(stale)} recipe file(s) differ from benchmarks/make_recipes.py, e.g. {stale[0]}; "
              "run: python benchmarks/make_recipes.py", file=sys.stderr)
        return 1
    if not args.check:
        print(f"wrote {len(recipes)} recipes under {root / 'configs'} and {root / DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
