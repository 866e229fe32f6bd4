"""Typed training configuration: defaults → (resumed run) → YAML file → CLI flags → ``--set`` overrides.

One flat dataclass describes a run, so every key can be named the same way everywhere: in YAML
(``epochs: 3``), as a flag (``--epochs 3``) and as an override (``--set epochs=3``). Typos are the most
common configuration bug, so unknown keys are rejected by name with a close-match suggestion, and values
are type-checked with a one-line message instead of failing deep inside training.

Defaults are the SemCKD paper's CIFAR-100 recipe (SGD, lr 0.05, momentum 0.9, weight decay 5e-4,
batch 64, 240 epochs, ×0.1 at epochs 150/180/210). ``lr`` left unset resolves to 0.01 for MobileNetV2
and ShuffleNet students, as in the authors' ``train_student.py``/``train_teacher.py``; an explicit
``lr`` always wins. The resolved value is what ``config.yaml`` records.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .defaults import BASELINE_METHOD, DEFAULT_METHOD
from .errors import UserError
from .precision import AMP_CHOICES

__all__ = [
    "RESUMABLE_KEYS",
    "TrainConfig",
    "config_diff",
    "default_lr",
    "scaled_milestones",
    "parse_key_values",
    "resolve_config",
]

SCHEDULES = ("multistep", "cosine", "constant")
KINDS = ("teacher", "distill")

# students the authors train with lr 0.01 instead of 0.05 (prefix match on the registry name)
_LOW_LR_PREFIXES = ("mobilenet", "shufflev1", "shufflev2", "shufflenet")


def default_lr(model: str) -> float:
    """The authors' learning rate for ``model``: 0.01 for MobileNetV2/ShuffleNet, else 0.05."""
    return 0.01 if model.lower().startswith(_LOW_LR_PREFIXES) else 0.05


def scaled_milestones(epochs: int) -> list[int]:
    """The paper's ×0.1 points (150/180/210 of 240 epochs) scaled to ``epochs``: 15 → [9, 11, 13].

    A point at or after the last epoch would never take effect, so it is left out (6 → [4, 5]).
    """
    return sorted({max(1, round(f * epochs)) for f in (0.625, 0.75, 0.875)} - {epochs})


def _f(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    """Everything that defines a training run. Field docs double as ``--help`` text."""

    kind: str = _f("distill", "what the run trains: 'teacher' (train-teacher) or 'distill'", cli=False)
    # ---- what to train
    dataset: str = _f("cifar100", "dataset: fashion_mnist, mnist, cifar10, cifar100, imagefolder, csv (with "
                                  "--data-dir holding train.csv/test.csv, or --train-csv/--test-csv), "
                                  "hf:PATH (a Hugging Face dataset on disk), or your own factory as "
                                  "MODULE:FUNCTION")
    data_dir: str | None = _f(None, "folder holding the dataset files (default: $SEMCKD_DATA_DIR or ./data, "
                                    "then, for Fashion-MNIST, /usr/share/datasets/fashion-mnist)")
    download: bool = _f(False, "download the dataset if it is missing")
    train_csv: str | None = _f(None, "--dataset csv: the training manifest (path,label rows; paths "
                                     "relative to the file), in place of DATA_DIR/train.csv")
    test_csv: str | None = _f(None, "--dataset csv: the test manifest, in place of DATA_DIR/test.csv")
    image_column: str | None = _f(None, "hf:PATH: the image column (default: the Image feature); csv: "
                                        "the path column")
    label_column: str | None = _f(None, "hf:PATH: the label column (default: the ClassLabel feature); "
                                        "csv: the label column")
    model: str = _f("", "student (or teacher, for train-teacher) architecture: a zoo name (resnet8x4), "
                        "your own factory as pkg.module:function, or a semckd.models entry point")
    teacher: str | None = _f(None, "teacher checkpoint (.pt) for distillation")
    teacher_model: str | None = _f(None, "teacher architecture (as --model) when the checkpoint does not "
                                         "name it")
    method: str = _f(DEFAULT_METHOD, "distillation method, e.g. semckd, kd, or a combination semckd+crd")
    method_args: dict = _f({}, "method options as KEY=VALUE (e.g. beta=400 mode=batch_free)")
    # ---- optimisation
    epochs: int = _f(240, "number of training epochs")
    batch_size: int = _f(64, "global training batch size (split evenly over DDP processes)")
    eval_batch_size: int | None = _f(None, "per-process test batch size (default: the per-process "
                                           "training batch size)")
    lr: float | None = _f(None, "initial learning rate (default: 0.05; 0.01 for MobileNetV2/ShuffleNet)")
    momentum: float = _f(0.9, "SGD momentum")
    weight_decay: float = _f(5e-4, "weight decay on the student and the method's own modules")
    nesterov: bool = _f(False, "Nesterov momentum")
    schedule: str = _f("multistep", "learning-rate schedule: multistep, cosine or constant")
    milestones: list[int] = _f([150, 180, 210], "epochs after which multistep multiplies lr by lr_decay")
    lr_decay: float = _f(0.1, "multistep decay factor")
    warmup_epochs: int = _f(0, "linear learning-rate warm-up epochs")
    # ---- data
    limit_train: int | None = _f(None, "use only the first N training images (quick runs)")
    val_split: int = _f(0, "hold out N training images (stratified) as a validation split: the best "
                           "epoch is then chosen on it and the test set is only recorded")
    val_seed: int = _f(0, "seed of the validation split (kept apart from --seed so every run of a "
                          "table validates on the same images)")
    augment: bool = _f(True, "random crop + flip training augmentation")
    workers: int = _f(2, "data-loading workers (image folders only)")
    # ---- runtime
    seed: int = _f(0, "random seed (model init, data order, augmentation)")
    deterministic: bool = _f(False, "bitwise-reproducible kernels (slower); needed for exact resume on GPU")
    amp: str = _f("auto", "mixed precision: auto (bf16/fp16 where the hardware runs it natively, else "
                          "float32), none, bf16, fp16 (with a GradScaler on CUDA) or bf16-emulated "
                          "(float32 with bf16 rounding: checks bf16 numerics on any hardware)")
    channels_last: bool | None = _f(None, "NHWC memory format; unset: on for bf16 autocast on a CPU "
                                           "(measured faster there), else off")
    compile: bool = _f(False, "torch.compile the student and teacher")
    device: str = _f("auto", "auto, cpu, cuda, cuda:N or mps")
    find_unused_parameters: bool = _f(False, "DDP: allow parameters that get no gradient in a step")
    # ---- output
    out: str = _f("", "run folder (default: runs/<dataset>/<model>_<method>)")
    resume: bool = _f(False, "continue the run in --out from its last.pt")
    force: bool = _f(False, "start over in an --out folder that holds another run (its files are replaced)")
    save_every: int = _f(1, "write last.pt every N epochs (and always after the final epoch)")
    log_every: int = _f(20, "progress-bar / non-finite-loss check interval in steps")
    quiet: bool = _f(False, "no progress bar and no per-epoch lines")
    tensorboard: bool = _f(True, "also write TensorBoard logs when tensorboard is installed")

    # ------------------------------------------------------------------ helpers
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save_yaml(self, path: str | Path) -> None:
        from .atomic import write_text_atomic

        write_text_atomic(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    @property
    def method_spec(self) -> str:
        return BASELINE_METHOD if self.kind == "teacher" else self.method


# keys that may differ between a run and its --resume (they do not change what is being computed,
# or, for epochs, only extend it)
RESUMABLE_KEYS = frozenset({
    "data_dir", "train_csv", "test_csv", "download", "device", "workers", "out", "resume", "force",
    "save_every", "log_every",
    "quiet", "tensorboard", "epochs", "compile",
})

_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def config_fields() -> dict[str, dataclasses.Field]:
    return dict(_FIELDS)


# ---------------------------------------------------------------------- type checking
_NONE_WORDS = {"none", "null", "~", ""}
_NUMBER = re.compile(r"[-+]?[\d.]+(e[-+]?\d+)?", re.I)


def _type_name(tp: Any) -> str:
    args = typing.get_args(tp)
    if _is_optional(tp):
        return _type_name(next(a for a in args if a is not type(None))) + " or none"
    origin = typing.get_origin(tp)
    if origin is list:
        return f"a list of {_type_name(args[0])}s" if args else "a list"
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string",
            dict: "a mapping of KEY: VALUE"}.get(tp, str(tp))


def _is_optional(tp: Any) -> bool:
    origin = typing.get_origin(tp)
    return (origin is typing.Union or origin is types.UnionType) and type(None) in typing.get_args(tp)


def _resolved_type(name: str) -> Any:
    hints = typing.get_type_hints(TrainConfig)
    return hints[name]


def _coerce(name: str, tp: Any, value: Any, source: str, from_string: bool) -> Any:
    """Check/convert ``value`` for field ``name``; ``from_string`` values come from the command line."""
    bad = UserError(f"{source}: '{name}' expects {_type_name(tp)}, got {value!r}")
    if _is_optional(tp):
        if value is None or (from_string and isinstance(value, str) and value.strip().lower() in _NONE_WORDS):
            return None
        inner = next(a for a in typing.get_args(tp) if a is not type(None))
        return _coerce(name, inner, value, source, from_string)
    origin = typing.get_origin(tp)
    if origin is list or tp is list:
        (item_tp,) = typing.get_args(tp) or (str,)
        if from_string and isinstance(value, str):
            value = [v for v in re.split(r"[,\s]+", value.strip().strip("[]")) if v]
        if not isinstance(value, (list, tuple)):
            raise bad
        return [_coerce(name, item_tp, v, source, from_string) for v in value]
    if tp is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise bad
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if from_string and isinstance(value, str):
            low = value.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
        raise bad
    if tp is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if from_string and isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                raise bad from None
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise bad
    if tp is float:
        if isinstance(value, bool):
            raise bad
        out: float | None = None
        if isinstance(value, (int, float)):
            try:
                out = float(value)
            except OverflowError:  # an integer beyond any float
                raise bad from None
        # YAML 1.1 reads ``5e-4`` (no dot) as a string; accept it
        elif isinstance(value, str) and (from_string or _NUMBER.fullmatch(value.strip())):
            try:
                out = float(value.strip())
            except ValueError:
                raise bad from None
        if out is None:
            raise bad
        if not math.isfinite(out):  # lr=inf would train to NaN; no float key means anything non-finite
            raise UserError(f"{source}: '{name}' expects a finite number, got {value!r}")
        return out
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad
    raise TypeError(f"unsupported config type {tp!r} for {name}")  # pragma: no cover


def _unknown_key(key: str, source: str, valid: list[str]) -> UserError:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(valid)}"
    return UserError(f"{source}: unknown config key '{key}'{hint}")


def _settable_keys() -> list[str]:
    return [n for n, f in _FIELDS.items() if f.metadata.get("cli", True)]


# ---------------------------------------------------------------------- KEY=VALUE parsing
def _parse_scalar(text: str) -> Any:
    """``400`` → 400, ``true`` → True, ``[1,2]`` → [1, 2], anything else stays a string."""
    try:
        return yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text


def parse_key_values(items: list[str], source: str) -> dict[str, Any]:
    """``["a=1", "b.c=x"]`` → ``{"a": 1, "b": {"c": "x"}}`` (dotted keys nest)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"{source}: expected KEY=VALUE, got {item!r}")
        key, text = item.split("=", 1)
        key = key.strip()
        if not key:
            raise UserError(f"{source}: empty key in {item!r}")
        parts = key.split(".")
        node = out
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise UserError(f"{source}: {key!r} sets a sub-key of a plain value")
            node = nxt
        node[parts[-1]] = _parse_scalar(text)
    return out


def _merge(dst: dict[str, Any], src: dict[str, Any]) -> dict[str, Any]:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _merge(dst[k], v)
        else:
            dst[k] = v
    return dst


# ---------------------------------------------------------------------- loading
def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file {str(p)!r} not found")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        where = f" (line {line + 1})" if line is not None else ""
        raise UserError(f"config file {str(p)!r} is not valid YAML{where}: "
                        f"{getattr(e, 'problem', None) or e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {str(p)!r} must be a mapping of key: value, got {type(data).__name__}")
    return data


# documentation-only keys a recipe file may carry (e.g. the paper's reported accuracy); not config
INFO_KEYS = frozenset({"reported", "source", "notes", "description"})
# ``source:`` in a recipe: where its settings come from (checked, so a recipe cannot cite half a source)
SOURCE_KEYS = ("repo", "script", "flags")
SOURCE_OPTIONAL = ("note",)


def check_source(source: Any, where: str) -> dict[str, str]:
    """Validate a recipe's ``source:`` mapping: ``repo`` (owner/name), ``script`` and ``flags`` (non-empty
    strings), optional ``note``; anything else is a typo and rejected."""
    if not isinstance(source, dict):
        raise UserError(f"{where}: 'source' must be a mapping with keys {', '.join(SOURCE_KEYS)}, "
                        f"got {type(source).__name__}")
    for k in source:
        if k not in SOURCE_KEYS + SOURCE_OPTIONAL:
            raise _unknown_key(f"source.{k}", where, [f"source.{n}" for n in SOURCE_KEYS + SOURCE_OPTIONAL])
    for k in SOURCE_KEYS:
        v = source.get(k)
        if not isinstance(v, str) or not v.strip():
            raise UserError(f"{where}: 'source.{k}' must be a non-empty string (the cited {k}), got {v!r}")
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", source["repo"]):
        raise UserError(f"{where}: 'source.repo' must be a GitHub owner/name, got {source['repo']!r}")
    return dict(source)


def _apply(values: dict[str, Any], layer: dict[str, Any], source: str, from_string: bool,
           explicit: set[str]) -> None:
    valid = _settable_keys()
    for key, raw in layer.items():
        if key in INFO_KEYS and source.startswith("config file"):
            continue
        if key not in _FIELDS or key not in valid:
            raise _unknown_key(str(key), source, valid)
        tp = _resolved_type(key)
        if key == "method_args":
            if isinstance(raw, str) and from_string:
                raw = _parse_scalar(raw)
            val = _coerce(key, tp, raw, source, False)
            values[key] = _merge(dict(values.get(key) or {}), val)
        else:
            values[key] = _coerce(key, tp, raw, source, from_string)
        explicit.add(key)


def _validate(cfg: TrainConfig) -> None:
    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise UserError(msg)

    need(cfg.kind in KINDS, f"kind must be one of {KINDS}, got {cfg.kind!r}")
    need(bool(cfg.model), "no model given; pass --model NAME (e.g. --model resnet8)")
    need(bool(cfg.dataset), "no dataset given; pass --dataset NAME")
    need(cfg.epochs >= 1, f"epochs must be >= 1, got {cfg.epochs}")
    need(cfg.batch_size >= 1, f"batch_size must be >= 1, got {cfg.batch_size}")
    need(cfg.eval_batch_size is None or cfg.eval_batch_size >= 1,
         f"eval_batch_size must be >= 1, got {cfg.eval_batch_size}")
    need(cfg.lr is not None and cfg.lr > 0, f"lr must be > 0, got {cfg.lr}")
    need(cfg.momentum >= 0, f"momentum must be >= 0, got {cfg.momentum}")
    need(cfg.weight_decay >= 0, f"weight_decay must be >= 0, got {cfg.weight_decay}")
    need(not cfg.nesterov or cfg.momentum > 0, "nesterov needs momentum > 0")
    need(cfg.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}, got {cfg.schedule!r}")
    need(all(m >= 1 for m in cfg.milestones) and cfg.milestones == sorted(cfg.milestones),
         f"milestones must be increasing positive epochs, got {cfg.milestones}")
    need(0 < cfg.lr_decay <= 1, f"lr_decay must be in (0, 1], got {cfg.lr_decay}")
    need(cfg.warmup_epochs >= 0, f"warmup_epochs must be >= 0, got {cfg.warmup_epochs}")
    need(cfg.limit_train is None or cfg.limit_train >= 1, f"limit_train must be >= 1, got {cfg.limit_train}")
    need(cfg.val_split >= 0, f"val_split must be >= 0 (0 = no validation split), got {cfg.val_split}")
    need(cfg.workers >= 0, f"workers must be >= 0, got {cfg.workers}")
    need(cfg.amp in AMP_CHOICES, f"amp must be one of {', '.join(AMP_CHOICES)}, got {cfg.amp!r}")
    need(re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", cfg.device) is not None,
         f"device must be auto, cpu, cuda, cuda:N or mps, got {cfg.device!r}")
    need(cfg.save_every >= 1, f"save_every must be >= 1, got {cfg.save_every}")
    need(cfg.log_every >= 1, f"log_every must be >= 1, got {cfg.log_every}")
    need(not (cfg.resume and cfg.force), "--resume and --force contradict each other; pick one")
    if cfg.kind == "teacher":
        need(cfg.teacher is None, "train-teacher trains from scratch; it takes no --teacher")
        need(cfg.method == BASELINE_METHOD,
             f"train-teacher always uses method {BASELINE_METHOD!r}, got {cfg.method!r}")


def resolve_config(
    kind: str,
    *,
    config_file: str | None = None,
    flags: dict[str, Any] | None = None,
    sets: list[str] | None = None,
    base: dict[str, Any] | None = None,
) -> tuple[TrainConfig, set[str]]:
    """Build a validated :class:`TrainConfig`.

    Layers, later wins: dataclass defaults, ``base`` (a resumed run's saved config), the YAML
    ``config_file``, ``flags`` (command-line values, strings or already typed), ``sets``
    (``KEY=VALUE`` strings, dotted keys reach into ``method_args``). Returns the config and the
    keys the user set explicitly (in the file or on the command line).
    """
    def layer(base: dict[str, Any] | None) -> tuple[dict[str, Any], set[str]]:
        values: dict[str, Any] = {}
        explicit: set[str] = set()
        if base:
            _apply(values, {k: v for k, v in base.items() if k != "kind"}, "saved run config", False, set())
        if config_file:
            file_values = load_yaml(config_file)
            # ``reported:`` is recipe metadata (the accuracy the literature reports; configs/**), not a
            # run setting: accepted in a config file and ignored (docs/recipe_sources.md)
            file_values.pop("reported", None)
            if "source" in file_values:  # recipe provenance (configs/**): checked, then dropped
                check_source(file_values.pop("source"), f"config file {config_file!r}")
            _apply(values, file_values, f"config file {config_file!r}", False, explicit)
        if flags:
            _apply(values, flags, "command line", True, explicit)
        if sets:
            _apply(values, parse_key_values(sets, "--set"), "--set", True, explicit)
        return values, explicit

    values, explicit = layer(base)
    if base is None and values.get("resume") and values.get("out"):
        # ``--resume --out DIR`` continues DIR's run: its saved config is the base layer, so the
        # original flags need not be repeated (any that are repeated must agree; the engine checks)
        saved = Path(values["out"]) / "config.yaml"
        if saved.is_file():
            base = load_yaml(saved)
            if base.get("kind", kind) != kind:
                cmd = "train-teacher" if base.get("kind") == "teacher" else "distill"
                raise UserError(f"{values['out']!r} holds a {base.get('kind')} run; "
                                f"resume it with `semckd {cmd}`")
            values, explicit = layer(base)
    if ("train_csv" in explicit or "test_csv" in explicit) and "dataset" not in explicit \
            and not values.get("resume"):
        values["dataset"] = "csv"  # --train-csv/--test-csv name the data
    if kind == "teacher" and "method" not in explicit:
        values["method"] = BASELINE_METHOD
    cfg = TrainConfig(kind=kind, **values)
    cfg.method_args = check_method(cfg.method, cfg.method_args)
    if cfg.lr is None and cfg.model:
        cfg.lr = default_lr(cfg.model)
    if not cfg.out and cfg.model:
        model = cfg.model.replace(":", "-")  # an import path pkg.mod:factory makes no odd folder name
        data = re.sub(r"[^\w.+-]+", "-", cfg.dataset).strip("-")  # hf:PATH or pkg:fn: one plain folder
        cfg.out = str(Path("runs") / data / f"{model}_{cfg.method_spec.replace('+', '-')}")
    _validate(cfg)
    return cfg, explicit


def check_method(spec: str, method_args: Any) -> dict[str, Any]:
    """The method spec and its options checked at load time, so a misspelt or mistyped recipe fails in
    one line before anything is built or written: every method and option name (with a close match),
    every value against the type and range its method's signature declares. The rule itself is
    :func:`semckd.methods.registry.check_options`; this is its door for YAML ``method_args``,
    ``--method-args``, ``--set method_args.x=`` and ``semckd sweep --grid`` values alike. Returns the
    options as the methods take them (e.g. YAML's string ``1e3`` → ``1000.0``)."""
    from .methods.registry import check_options  # local: methods pull in torch models

    try:
        return check_options(spec, method_args)
    except ValueError as e:
        raise UserError(f"{e} (--method {spec!r})" if "unknown method" in str(e) else str(e)) from None


def config_diff(a: dict[str, Any], b: dict[str, Any], ignore: frozenset[str] = RESUMABLE_KEYS) -> list[str]:
    """Human-readable ``key: old → new`` entries where two saved configs disagree."""
    out = []
    for k in sorted(set(a) | set(b)):
        if k in ignore:
            continue
        default = _FIELDS[k].default if k in _FIELDS else None  # a key added after the run was saved
        same_path = k in _PATH_KEYS and _same_path(a.get(k), b.get(k))
        if a.get(k, default) != b.get(k, default) and not same_path:
            out.append(f"{k}: {a.get(k)!r} → {b.get(k)!r}")
    return out


_PATH_KEYS = frozenset({"teacher"})


def _same_path(a: Any, b: Any) -> bool:
    """``runs/t/best.pt`` and ``/home/me/runs/t/best.pt`` name one teacher (relative to this folder)."""
    if not (isinstance(a, str) and isinstance(b, str)):
        return False
    return os.path.realpath(os.path.expanduser(a)) == os.path.realpath(os.path.expanduser(b))
