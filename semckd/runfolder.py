"""The run folder: which files a training run writes, their typed records, and the one way to read each.

Why one module: the engine wrote these files and four tools (report, plot, sweep, eval/export, plus
``benchmarks/protocol.py``) each read them their own way: two checkpoint loaders with different
contracts, three state_dict prefix strippers, a report guessing at a dozen key spellings the engine never
wrote, an export looking up input size and normalisation that the checkpoint did not record. Here the
writer (the engine) and every reader share one schema:

* ``config.yaml`` — the resolved :class:`~semckd.config.TrainConfig` (``TrainConfig.save_yaml``);
  :func:`read_config`;
* ``metrics.jsonl`` — one :class:`EpochRecord` per epoch, strict JSON (non-finite → ``null``);
  :func:`read_epochs` / :func:`read_metrics`; :func:`write_metrics` rewrites it atomically;
* ``run.json`` — the :class:`RunSummary`; :func:`read_summary` / :func:`write_summary`;
* ``last.pt`` / ``best.pt`` — checkpoints (``semckd-ckpt-v1``): a :class:`CheckpointRecord`, which also
  records what eval and export need to rebuild and feed the network (:class:`CheckpointMeta`: model
  name, classes, input channels, input size, mean/std); :func:`load_checkpoint` is the one loader
  (``torch.load(weights_only=True)``), :func:`checkpoint_meta` reads the metadata, with fallbacks for
  checkpoints written before a field existed.

It also guards the folder for the engine: :func:`check_run_dir` (never write over another run; what
``--resume`` continues), :func:`prepare_run_dir` (clear a replaced run, drop temp files a kill left,
write config.yaml), :func:`recover_best` and :class:`MetricsLog` (the per-epoch metrics writer).
Every write goes through :mod:`semckd.atomic` (temp file + ``os.replace``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import pickle
import re
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .atomic import atomic_copy, is_temp_of, write_text_atomic
from .errors import UserError

if TYPE_CHECKING:
    from .config import TrainConfig

__all__ = ["BEST", "CONFIG", "FORMAT", "LAST", "METRICS", "RUN_FILES", "SUMMARY", "CheckpointMeta",
           "CheckpointRecord", "EpochRecord", "MetricsLog", "RunSummary", "check_run_dir", "checkpoint_meta",
           "is_training_checkpoint", "json_safe", "load_checkpoint", "load_training_checkpoint",
           "prepare_run_dir", "read_config", "read_epochs", "read_jsonl", "read_metrics", "read_summary",
           "recover_best", "remove_temp_files", "strip_wrapper_prefixes", "write_metrics", "write_summary"]

CONFIG, METRICS, LAST, BEST, SUMMARY = "config.yaml", "metrics.jsonl", "last.pt", "best.pt", "run.json"
RUN_FILES = (CONFIG, METRICS, LAST, BEST, SUMMARY)
FORMAT = "semckd-ckpt-v1"


# ---------------------------------------------------------------------- JSON
def json_safe(v: Any) -> Any:
    """NaN/inf → ``null``: metrics.jsonl must stay valid JSON (``json.dumps`` writes bare ``NaN``)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    return v


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


# ---------------------------------------------------------------------- metrics.jsonl
# fixed keys of a metrics line, in the order the engine writes them; train_<term> keys sit after train_acc
_HEAD = ("epoch", "lr", "train_loss", "train_acc")
_TAIL = ("train_images", "images_per_s", "val_loss", "val_acc", "test_loss", "test_acc", "test_top5",
         "best_val_acc", "best_acc", "epoch_time_s", "extras")


@dataclass
class EpochRecord:
    """One line of ``metrics.jsonl``: one finished epoch.

    ``terms`` holds the per-loss-term training means (written as ``train_<name>``, e.g. ``train_ce``);
    optional fields (validation, top-5, ``extras`` such as SemCKD's attention) are omitted from the line
    when None. ``best_acc`` is the test accuracy of the epoch selected so far (on validation accuracy when
    the run has a split).
    """

    epoch: int
    lr: float | None = None
    train_loss: float | None = None
    train_acc: float | None = None
    terms: dict[str, float | None] = field(default_factory=dict)
    train_images: int | None = None
    images_per_s: float | None = None
    val_loss: float | None = None
    val_acc: float | None = None
    test_loss: float | None = None
    test_acc: float | None = None
    test_top5: float | None = None
    best_val_acc: float | None = None
    best_acc: float | None = None
    epoch_time_s: float | None = None
    extras: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The line's JSON object, keys in the engine's order (None optionals left out)."""
        out: dict[str, Any] = {k: getattr(self, k) for k in _HEAD}
        out.update((f"train_{k}", v) for k, v in self.terms.items())
        for k in _TAIL:
            v = getattr(self, k)
            if v is not None or k in ("test_loss", "test_acc", "best_acc"):
                out[k] = v
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any], index: int = 0) -> EpochRecord:
        """A record from a metrics line (lenient: missing keys are None, ``index`` stands in for a missing
        epoch number; values that are not numbers become None)."""
        known = set(_HEAD) | set(_TAIL)
        terms = {k[len("train_"):]: _num(v) for k, v in d.items()
                 if k.startswith("train_") and k not in known}
        kw: dict[str, Any] = {k: _num(d.get(k)) for k in (*_HEAD, *_TAIL) if k not in ("epoch", "extras")}
        epoch = _num(d.get("epoch"))
        kw["epoch"] = int(epoch) if epoch is not None else index
        kw["train_images"] = int(kw["train_images"]) if kw["train_images"] is not None else None
        extras = d.get("extras")
        kw["extras"] = extras if isinstance(extras, dict) else None
        return cls(terms=terms, **kw)

    def get(self, key: str) -> Any:
        """The value written under ``key`` in the line (``train_ce`` → ``terms["ce"]``), else None."""
        if key.startswith("train_") and key[len("train_"):] in self.terms:
            return self.terms[key[len("train_"):]]
        return getattr(self, key, None) if key in _HEAD or key in _TAIL else None


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file (``[]`` when absent); a line cut short by a kill mid-append is
    skipped, so a file that is appended to while a run can die stays readable."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            rows.append(obj)
    return rows


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The per-epoch JSON objects of a run as written; a truncated last line (killed mid-write, by older
    versions that appended) is skipped."""
    return read_jsonl(Path(run_dir) / METRICS)


def read_epochs(run_dir: str | os.PathLike) -> list[EpochRecord]:
    """:func:`read_metrics` as typed records."""
    return [EpochRecord.from_dict(r, i) for i, r in enumerate(read_metrics(run_dir))]


def write_metrics(run_dir: str | os.PathLike, rows: list[dict[str, Any]]) -> None:
    """Rewrite ``metrics.jsonl`` atomically with ``rows`` (strict JSON)."""
    write_text_atomic(Path(run_dir) / METRICS,
                      "".join(json.dumps(json_safe(r), allow_nan=False) + "\n" for r in rows))


# ---------------------------------------------------------------------- run.json
@dataclass
class RunSummary:
    """``run.json``: a finished run's identity, final numbers and how it was computed.

    ``best_acc`` is the test accuracy of the selected epoch (``selected_by``: ``val_acc`` with a
    validation split, else ``test_acc``); ``final_*`` are the last epoch's. ``amp`` is the precision
    ``auto`` resolved to.
    """

    kind: str | None = None
    model: str | None = None
    dataset: str | None = None
    method: str | None = None
    teacher: str | None = None
    teacher_model: str | None = None
    epochs: int | None = None
    best_acc: float | None = None
    best_epoch: int | None = None
    selected_by: str | None = None
    best_val_acc: float | None = None
    val_split: int | None = None
    seed: int | None = None
    final_acc: float | None = None
    final_top5: float | None = None
    final_val_acc: float | None = None
    num_params: int | None = None
    world_size: int | None = None
    device: str | None = None
    amp: str | None = None
    channels_last: bool | None = None
    train_time_s: float | None = None
    ddp_param_max_abs_diff: float | None = None
    notes: list[str] | None = None  # what a reader should know, e.g. an attention pinned at a corner

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunSummary:
        """Lenient: unknown keys are ignored, missing ones are None (older versions wrote fewer)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        obj = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e.msg}); fix or delete it") from e
    return obj if isinstance(obj, dict) else {}


def read_summary(run_dir: str | os.PathLike, *, strict: bool = True) -> RunSummary | None:
    """``run.json`` of a run, or None when the run has not finished (no file). A corrupt file is a
    :class:`UserError` (``strict``) or None."""
    try:
        d = _read_json(Path(run_dir) / SUMMARY)
    except UserError:
        if strict:
            raise
        return None
    return RunSummary.from_dict(d) if d else None


def write_summary(run_dir: str | os.PathLike, summary: RunSummary | dict[str, Any]) -> None:
    d = summary.to_dict() if isinstance(summary, RunSummary) else summary
    write_text_atomic(Path(run_dir) / SUMMARY, json.dumps(d, indent=2) + "\n")


# ---------------------------------------------------------------------- config.yaml
def read_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    """``config.yaml`` as a dict (``{}`` when absent); invalid YAML is a one-line :class:`UserError`."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        return {}
    import yaml

    try:
        obj = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise UserError(f"{path} is not valid YAML; fix or delete it ({str(e).splitlines()[0]})") from e
    return obj if isinstance(obj, dict) else {}


# ---------------------------------------------------------------------- checkpoints
_PREFIXES = ("module.", "_orig_mod.")


def strip_wrapper_prefixes(sd: dict[str, Any]) -> dict[str, Any]:
    """Drop DDP (``module.``) and ``torch.compile`` (``_orig_mod.``) prefixes, in any nesting, from keys."""
    out = {}
    for k, v in sd.items():
        changed = True
        while changed:
            changed = False
            for p in _PREFIXES:
                if k.startswith(p):
                    k, changed = k[len(p):], True
        out[k] = v
    return out


def _short(text: str, limit: int = 100) -> str:
    """The first non-empty line of ``text``, cut at a word boundary (never mid-word) when too long."""
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    if len(line) <= limit:
        return line
    return line[:limit].rsplit(" ", 1)[0].rstrip(" ,;:") + " …"


def load_checkpoint(path: str | os.PathLike, what: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)`` on CPU, with one-line errors for the usual failures.

    The one loader of ``.pt`` files (resume, teachers, eval, export): loading must never run code from
    the file, and every caller gets the same messages.
    """
    import torch

    p = Path(path)
    if not p.exists():
        raise UserError(f"{what} {str(p)!r} not found")
    if p.is_dir():
        raise UserError(f"{what} {str(p)!r} is a folder; pass the .pt file inside it (e.g. {p / 'best.pt'})")
    with open(p, "rb") as f:
        head = f.read(2)
    if head[:1] == b"\x80" and len(head) == 2 and head[1] >= 3:  # pickle protocol >= 3: not torch.save
        raise UserError(f"{what} {str(p)!r} is a plain pickle file (protocol {head[1]}), not a torch.save "
                        "file; load it in Python and re-save it with torch.save(obj, path)")
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol before failing
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        m = re.search(r"GLOBAL ([\w.]+)", msg)
        if m or "Unsupported global" in msg or "Unsupported class" in msg:
            obj = f" ({m.group(1)})" if m else ""
            raise UserError(
                f"{what} {str(p)!r} contains arbitrary Python objects{obj}, not just weights, and is refused "
                "for safety (weights_only=True); if you trust it, re-save its state_dict with torch.save"
            ) from None
        why = msg.split("WeightsUnpickler error:", 1)[-1] if "WeightsUnpickler error:" in msg else msg
        raise UserError(f"{what} {str(p)!r} is corrupt or not a PyTorch file ({_short(why)})") from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError, KeyError) as e:
        why = "not a zip or pickle archive" if isinstance(e, KeyError) else _short(str(e)) or type(e).__name__
        raise UserError(f"{what} {str(p)!r} is corrupt or not a PyTorch file ({why})") from None


def is_training_checkpoint(obj: Any) -> bool:
    """Whether ``obj`` is a checkpoint written by ``semckd train-teacher`` / ``distill``."""
    return isinstance(obj, dict) and "student" in obj and "model" in obj and (
        obj.get("format", FORMAT) == FORMAT)


def load_training_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any], Path]:
    """A semckd training checkpoint and its path; a run folder means its ``best.pt`` (else ``last.pt``)."""
    p = Path(path)
    if p.is_dir():
        for name in (BEST, LAST):
            if (p / name).is_file():
                p = p / name
                break
        else:
            raise UserError(f"{path} has no best.pt or last.pt; pass a checkpoint file")
    if not p.is_file():
        raise UserError(f"checkpoint {p} does not exist")
    ckpt = load_checkpoint(p)
    if not is_training_checkpoint(ckpt):
        raise UserError(f"{p} is not a semckd training checkpoint (needs 'model' and 'student' keys); "
                        "export works on best.pt/last.pt written by semckd train-teacher/distill")
    return ckpt, p


@dataclass
class CheckpointRecord:
    """``last.pt`` / ``best.pt`` (format ``semckd-ckpt-v1``): what the engine writes after an epoch.

    The first fields name and feed the network (read by eval and export through :func:`checkpoint_meta`);
    then the state an exact resume restores (student, the method's ``extras``, optimizer, scheduler,
    grad scaler, RNG streams — one per rank under DDP —, the metrics rows up to this epoch) and the
    epoch's selection record. Values are tensors and plain Python, so ``weights_only=True`` loads it.
    """

    model: str | None = None
    num_classes: int | None = None
    in_channels: int | None = None
    input_size: list[int] | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    dataset: str | None = None
    method: str | None = None
    teacher: str | None = None
    teacher_model: str | None = None
    student: dict[str, Any] | None = None
    extras: dict[str, Any] | None = None
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    scaler: dict[str, Any] | None = None
    rng: dict[str, Any] | None = None
    rng_per_rank: list[dict[str, Any]] | None = None
    world_size: int | None = None
    metrics: list[dict[str, Any]] | None = None
    epoch: int | None = None
    best_acc: float | None = None
    best_val_acc: float | None = None
    best_epoch: int | None = None
    test_acc: float | None = None
    val_acc: float | None = None
    config: dict[str, Any] | None = None
    format: str = FORMAT

    def to_dict(self) -> dict[str, Any]:
        """The dict ``torch.save`` writes (``format`` first; values not copied)."""
        out: dict[str, Any] = {"format": self.format}
        out.update((f.name, getattr(self, f.name)) for f in dataclasses.fields(self) if f.name != "format")
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CheckpointRecord:
        """Lenient: missing keys are None (older or foreign checkpoints), unknown keys are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        rec = cls(**{k: v for k, v in d.items() if k in names and k != "format"})
        rec.format = d.get("format", "")
        return rec


@dataclass
class CheckpointMeta:
    """What a checkpoint says about the network it holds, for rebuilding (eval) and deploying (export).

    ``notes`` says which values were not recorded in the file and where they came from instead (the
    dataset's defaults, for checkpoints written before the engine recorded them); a value that could not
    be found at all stays None.
    """

    model: str | None
    num_classes: int | None
    in_channels: int | None
    input_size: tuple[int, int] | None
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    dataset: str | None
    config: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def _dataset_stats(dataset: str) -> tuple[int, tuple[float, ...], tuple[float, ...]] | None:
    """(input size, mean, std) the data layer uses for ``dataset``; None for an unknown name."""
    from .data import canonical_name, dataset_defaults

    try:
        name = canonical_name(dataset)
    except (UserError, ValueError):
        return None
    d = dataset_defaults(name)
    if d.get("mean") is None:  # a dataset whose numbers only its data knows (csv): nothing to fall back on
        return None
    size = int(d.get("image_size") or 0) or None  # the spec's input size (image folders: the 224 crop)
    return size, tuple(d["mean"]), tuple(d["std"])  # type: ignore[return-value]


def checkpoint_meta(ckpt: dict[str, Any]) -> CheckpointMeta:
    """:class:`CheckpointMeta` of a checkpoint dict (fields recorded in it first, then fallbacks)."""
    rec = CheckpointRecord.from_dict(ckpt)
    cfg = rec.config if isinstance(rec.config, dict) else {}
    model = rec.model if isinstance(rec.model, str) else None
    dataset = rec.dataset or cfg.get("dataset")
    dataset = str(dataset) if dataset else None
    ncls = int(rec.num_classes) if isinstance(rec.num_classes, int) else None
    cin = int(rec.in_channels) if isinstance(rec.in_channels, int) else None
    size = rec.input_size
    input_size = (int(size[0]), int(size[1])) if isinstance(size, (list, tuple)) and len(size) == 2 else None
    mean = tuple(float(x) for x in rec.mean) if rec.mean else None
    std = tuple(float(x) for x in rec.std) if rec.std else None
    meta = CheckpointMeta(model, ncls, cin, input_size, mean, std, dataset, cfg)
    if input_size is None or mean is None or std is None:
        stats = _dataset_stats(dataset) if dataset else None
        missing = [n for n, v in (("input size", input_size), ("mean/std", mean)) if v is None]
        if stats is not None:
            if input_size is None and stats[0]:
                meta.input_size = (stats[0], stats[0])
            meta.mean = meta.mean or stats[1]
            meta.std = meta.std or stats[2]
            meta.notes.append(f"the checkpoint does not record its {' and '.join(missing)} (written by an "
                              f"older semckd); used {dataset}'s defaults")
        else:
            meta.notes.append(f"the checkpoint records no {' and '.join(missing)} and its dataset "
                              f"({dataset or 'not recorded'}) is not one semckd knows")
    return meta


# ---------------------------------------------------------------------- run-folder guard (the engine's)
def check_run_dir(cfg: TrainConfig) -> tuple[list[Path], str | None]:
    """Refuse to write over another run; decide whether ``--resume`` has a checkpoint to continue.

    Returns ``(files to delete, note)``. The files (``--force``, or the leftovers of a run that never
    wrote ``last.pt``) are deleted only once the new run has been set up without error
    (:func:`prepare_run_dir`), so a typo in a forced command does not destroy the old run for nothing. A
    folder without ``last.pt`` holds no resumable state: the same command, with or without ``--resume``,
    starts it from epoch 1 (the note says so), so a run killed before its first checkpoint is never a
    dead end.
    """
    import yaml

    from .config import config_diff  # imports torch: only training needs it, not the readers here

    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {cfg.out!r} is a file; pass a folder")
    present = [out / n for n in RUN_FILES if (out / n).exists()]
    diff: list[str] = []
    if (out / CONFIG).is_file():
        try:
            diff = config_diff(yaml.safe_load((out / CONFIG).read_text()) or {}, cfg.to_dict())
        except yaml.YAMLError:
            diff = [] if cfg.resume else ["config.yaml unreadable"]
    has_ckpt = (out / LAST).is_file()
    if cfg.resume:
        if diff:
            raise UserError(f"--resume: the settings differ from the run in {cfg.out!r} "
                            f"({'; '.join(diff[:3])}); keep the settings or use another --out")
        if has_ckpt:
            return [], None
        note = (f"--resume: no checkpoint in {cfg.out} yet (stopped before its first epoch ended); "
                "starting from epoch 1")
        return present, note
    if not present or cfg.force:
        return present, None
    if not has_ckpt and (not diff or not (out / BEST).exists()):
        what = "the same settings" if not diff else f"other settings ({'; '.join(diff[:3])})"
        return present, (f"{cfg.out} holds no checkpoint of a run with {what} (it stopped before its "
                         "first epoch ended); starting over")
    if diff:
        raise UserError(f"--out {cfg.out!r} holds another run ({'; '.join(diff[:3])}); choose another --out, "
                        "or pass --force to replace it")
    raise UserError(f"--out {cfg.out!r} already holds this run; pass --resume to continue it, --force to "
                    "start over, or choose another --out")


def remove_temp_files(out: Path) -> None:
    """Temp files a kill left mid-write (``.last.pt.XXXX.tmp``...): never committed, so never needed."""
    for f in out.iterdir():
        if any(is_temp_of(f.name, n) for n in RUN_FILES) and f.is_file():
            f.unlink(missing_ok=True)


def prepare_run_dir(cfg: TrainConfig, to_delete: list[Path]) -> None:
    """Open the folder for a run that has been set up without error: delete what :func:`check_run_dir`
    said to replace (and its TensorBoard logs), drop temp files, write ``config.yaml``."""
    out = Path(cfg.out)
    if to_delete:
        for p in to_delete:
            p.unlink(missing_ok=True)
        shutil.rmtree(out / "tb", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    remove_temp_files(out)
    cfg.save_yaml(out / CONFIG)


def recover_best(out: Path, epoch: int, best_epoch: int) -> bool:
    """A kill between writing ``last.pt`` (of ``epoch``) and ``best.pt`` leaves an older best.pt: redo that
    copy. True when it was redone."""
    if best_epoch != epoch:
        return False
    best = out / BEST
    with contextlib.suppress(Exception):
        b = load_checkpoint(best, "best checkpoint") if best.is_file() else None
        if isinstance(b, dict) and b.get("epoch") == epoch:
            return False
    atomic_copy(out / LAST, best)
    return True


class MetricsLog:
    """metrics.jsonl (+ TensorBoard if installed), written by rank 0 only.

    The rows so far also travel in every checkpoint, and the file is rewritten atomically each epoch:
    on resume it is rebuilt from the checkpoint's rows, so a kill between the checkpoint and the
    metrics write can neither lose an epoch's row nor leave half a line.
    """

    def __init__(self, out: Path, enabled: bool, tensorboard: bool, keep_upto: int | None,
                 rows: list[dict[str, Any]] | None = None) -> None:
        self.path = out / METRICS
        self.enabled = enabled
        self.rows: list[dict[str, Any]] = []
        self.tb = None
        if keep_upto is not None:
            if rows is not None:  # the checkpoint's own record of its epochs
                self.rows = [r for r in rows if r.get("epoch", 0) <= keep_upto]
            else:  # a checkpoint from before rows were saved: the file's complete lines
                self.rows = [r for r in read_metrics(out) if r.get("epoch", 0) <= keep_upto]
        if not enabled:
            return
        if keep_upto is not None:
            self._flush()
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out / "tb"))
            except ImportError:  # optional dependency
                self.tb = None

    def _flush(self) -> None:
        write_metrics(self.path.parent, self.rows)

    def write(self, rec: dict[str, Any]) -> None:
        self.rows.append(rec)
        if not self.enabled:
            return
        self._flush()
        if self.tb is not None:
            for k, v in rec.items():
                if isinstance(v, (int, float)) and k != "epoch":
                    self.tb.add_scalar(k, v, rec["epoch"])
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
