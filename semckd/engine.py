"""The training loop: method-agnostic, resumable, DDP-aware.

The engine knows a distillation method only through the :class:`~semckd.methods.Distiller` protocol:
``forward(images, targets, index) -> (logits, {name: weighted loss})`` plus the base class's hooks
(every method has them; the defaults do nothing) and the registry's answers about a method spec
(teacher needed, tied to the batch size) asked before any data is built. Training a
teacher is the same loop with method ``vanilla`` and no teacher, so both commands share every feature
(AMP, channels-last, DDP, exact resume, metrics).

Exact resume: a checkpoint is written only at an epoch boundary and holds the student, the method's own
modules (``extras_state_dict``), optimizer, scheduler, grad scaler and all RNG states; the data
loaders derive their order and augmentation from ``(seed, epoch)``. On CPU in deterministic mode a run
stopped after epoch k and resumed ends with the same weights, bit for bit, as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import math
import os
import random
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch import nn

from . import distributed as D
from .checkpoint import (
    atomic_copy,
    atomic_save,
    capture_rng,
    fault_point,
    head_of,
    is_temp_of,
    load_state_dict_checked,
    load_teacher,
    restore_rng,
    split_checkpoint,
)
from .config import TrainConfig, config_diff
from .diagnostics import attention_pinned
from .errors import UserError
from .precision import Precision, state_writes_guard
from .runfolder import (
    FORMAT,
    RUN_FILES,
    EpochRecord,
    RunSummary,
    load_checkpoint,
    read_metrics,
    write_metrics,
    write_summary,
)
from .runfolder import json_safe as _json_safe
from .step import train_step

__all__ = ["NonFiniteLossError", "evaluate", "evaluate_checkpoint", "resolve_device", "train"]


class NonFiniteLossError(UserError):
    """The loss became NaN/inf; training stopped before any checkpoint could be overwritten."""


# ---------------------------------------------------------------------- small helpers
def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """``auto`` → this process's GPU when there is one, else CPU. ``cuda`` → ``cuda:LOCAL_RANK``."""
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
        return torch.device("cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {spec} requested but CUDA is not available; use --device cpu")
        return torch.device(spec) if ":" in spec else torch.device("cuda", local_rank)
    if spec == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError("--device mps requested but MPS is not available; use --device cpu")
    return torch.device(spec)


def _info(info: Any, key: str) -> Any:
    return info[key] if isinstance(info, dict) else getattr(info, key)


def _seed_all(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)  # all devices
    with contextlib.suppress(ImportError):
        import numpy as np

        np.random.seed(seed % 2**32)


@contextlib.contextmanager
def _determinism(enabled: bool) -> Iterator[None]:
    """Deterministic kernels for the duration of a run; the caller's global settings are restored."""
    prev = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
            torch.backends.cudnn.benchmark)
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    else:
        torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        if enabled != prev[0]:  # the call imports torch._inductor (seconds): only when it changes anything
            torch.use_deterministic_algorithms(prev[0])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = prev[1], prev[2]


def _autocast(device: torch.device, amp: str | Precision) -> contextlib.AbstractContextManager:
    """The mixed-precision context of a precision (see :class:`semckd.precision.Precision`)."""
    return Precision.resolve(amp, False, device).autocast(device)


def lr_factor(epoch_index: int, cfg: TrainConfig) -> float:
    """Multiplier of the base lr for 0-based ``epoch_index`` (what LambdaLR calls).

    Multistep matches the authors' ``adjust_learning_rate``: epochs 1..150 at lr, 151..180 at 0.1·lr...
    """
    f = 1.0
    if cfg.schedule == "multistep":
        f = cfg.lr_decay ** sum(epoch_index >= m for m in cfg.milestones)
    elif cfg.schedule == "cosine":
        f = 0.5 * (1.0 + math.cos(math.pi * min(epoch_index, cfg.epochs) / cfg.epochs))
    if cfg.warmup_epochs and epoch_index < cfg.warmup_epochs:
        f *= (epoch_index + 1) / cfg.warmup_epochs
    return f


def _method_names(spec: str) -> list[str]:
    from .methods.registry import method_names

    return method_names(spec)


def _check_method_args(spec: str, args: dict[str, Any]) -> None:
    """Reject unknown method options by name with a close match (before any model is built)."""
    from .methods import get_method, method_options

    names = _method_names(spec)
    for n in names:
        get_method(n)  # unknown method → ValueError listing valid ones
    groups = [(names[0], args)] if len(names) == 1 else []
    if len(names) > 1:
        for k, v in args.items():
            if k not in names:
                raise UserError(f"options for {spec!r} are keyed by method name ({', '.join(names)}), e.g. "
                                f"--method-args {names[0]}.{k}=...; got {k!r}")
            if not isinstance(v, dict):
                raise UserError(f"--method-args {k}=... must hold that method's options (e.g. {k}.beta=1)")
            groups.append((k, v))
    for n, opts in groups:
        valid = sorted(method_options(n))
        for k in opts:
            if k not in valid:
                close = difflib.get_close_matches(k, valid, n=1)
                hint = f"did you mean '{close[0]}'?" if close else f"valid options: {', '.join(valid)}"
                raise UserError(f"method {n!r} has no option {k!r}; {hint}")


def _needs_teacher(spec: str) -> bool:
    from .methods.registry import needs_teacher

    return needs_teacher(spec)


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, k: int) -> torch.Tensor:
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    return (top == targets[:, None]).any(dim=1).sum()


# ---------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model: nn.Module, loader: Any, device: torch.device, *, amp: str | Precision = "none",
             observer: Any = None, observe_batch: int | None = None,
             env: D.DistEnv | None = None) -> dict[str, float]:
    """Top-1 / top-5 accuracy (%) and mean CE of ``model`` on ``loader``, summed over DDP ranks.

    ``observer`` (a distiller with ``observe``) sees every test batch — only full batches of
    ``observe_batch`` when its modules are tied to one batch size.
    """
    env = env or D.DistEnv()
    was = model.training
    model.eval()
    dt = torch.float32 if device.type == "mps" else torch.float64
    sums = torch.zeros(4, dtype=dt, device=device)  # loss, top1, top5, n
    amp = Precision.resolve(amp, False, device)  # a run passes its own, already resolved
    try:
        for batch in loader:
            images, targets = batch[0], batch[1]
            with _autocast(device, amp):
                logits = model(images)
            sums[0] += F.cross_entropy(logits.float(), targets, reduction="sum").to(dt)
            sums[1] += (logits.argmax(1) == targets).sum().to(dt)
            sums[2] += topk_correct(logits, targets, 5).to(dt)
            sums[3] += targets.numel()
            if observer is not None and (observe_batch is None or images.shape[0] == observe_batch):
                with _autocast(device, amp), state_writes_guard():
                    observer.observe(images, targets)
    finally:
        model.train(was)
    D.all_reduce_sum(sums, env)
    loss, c1, c5, n = (float(x) for x in sums.tolist())
    if n == 0:
        raise UserError("the test set is empty; check --dataset / --data-dir")
    return {"test_loss": loss / n, "test_acc": 100.0 * c1 / n, "test_top5": 100.0 * c5 / n, "test_n": int(n)}


# ---------------------------------------------------------------------- run folder
def _check_run_dir(cfg: TrainConfig) -> tuple[list[Path], str | None]:
    """Refuse to write over another run; decide whether ``--resume`` has a checkpoint to continue.

    Returns ``(files to delete, note)``. The files (``--force``, or the leftovers of a run that never
    wrote ``last.pt``) are deleted only once the new run has been set up without error, so a typo in a
    forced command does not destroy the old run for nothing. A folder without ``last.pt`` holds no
    resumable state: the same command, with or without ``--resume``, starts it from epoch 1 (the note
    says so), so a run killed before its first checkpoint is never a dead end.
    """
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {cfg.out!r} is a file; pass a folder")
    present = [out / n for n in RUN_FILES if (out / n).exists()]
    diff: list[str] = []
    if (out / "config.yaml").is_file():
        try:
            diff = config_diff(yaml.safe_load((out / "config.yaml").read_text()) or {}, cfg.to_dict())
        except yaml.YAMLError:
            diff = [] if cfg.resume else ["config.yaml unreadable"]
    has_ckpt = (out / "last.pt").is_file()
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
    if not has_ckpt and (not diff or not (out / "best.pt").exists()):
        what = "the same settings" if not diff else f"other settings ({'; '.join(diff[:3])})"
        return present, (f"{cfg.out} holds no checkpoint of a run with {what} (it stopped before its "
                         "first epoch ended); starting over")
    if diff:
        raise UserError(f"--out {cfg.out!r} holds another run ({'; '.join(diff[:3])}); choose another --out, "
                        "or pass --force to replace it")
    raise UserError(f"--out {cfg.out!r} already holds this run; pass --resume to continue it, --force to "
                    "start over, or choose another --out")


def eta_note(epochs_left: int, epoch_s: float, device: torch.device | str) -> str | None:
    """A warning when the rest of the run takes over an hour at the first epoch's speed.

    The defaults are the paper's 240 epochs: fine on a GPU, days on a CPU. Without a word a new user
    cannot tell a slow machine from a hung run.
    """
    left = epochs_left * epoch_s
    if left < 3600:
        return None
    tip = ("; for a quick run pass --epochs N (and --milestones) or --limit-train N"
           if torch.device(device).type == "cpu" else "")
    return f"{epochs_left} epochs left at {epoch_s:.0f} s each: about {left / 3600:.1f} h on {device}{tip}"


def _nonfinite_tensors(parts: dict[str, Any]) -> list[str]:
    """Names of floating tensors holding NaN/inf in nested state (parameters, buffers, optimizer state)."""
    bad: list[str] = []

    def walk(prefix: str, obj: Any) -> None:
        if isinstance(obj, torch.Tensor):
            if obj.is_floating_point() and not bool(torch.isfinite(obj).all()):
                bad.append(prefix)
        elif isinstance(obj, dict):
            for k, v in obj.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                walk(f"{prefix}.{i}", v)

    walk("", parts)
    return bad


class _Metrics:
    """metrics.jsonl (+ TensorBoard if installed), written by rank 0 only.

    The rows so far also travel in every checkpoint, and the file is rewritten atomically each epoch:
    on resume it is rebuilt from the checkpoint's rows, so a kill between the checkpoint and the
    metrics write can neither lose an epoch's row nor leave half a line.
    """

    def __init__(self, out: Path, enabled: bool, tensorboard: bool, keep_upto: int | None,
                 rows: list[dict[str, Any]] | None = None) -> None:
        self.path = out / "metrics.jsonl"
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


def _wrap_ddp(distiller: nn.Module, device: torch.device, find_unused: bool) -> nn.Module:
    """DDP without per-step buffer broadcasts.

    Buffers are synced once at construction (all ranks start identical), but not before every forward:
    a memory bank (CRD) is per-rank state that rank 0's copy must not overwrite each step, and BN
    statistics are averaged at epoch end instead (:func:`distributed.average_buffers`). The teacher's
    parameters have ``requires_grad=False`` so DDP neither reduces nor waits for them.
    """
    import inspect

    kw: dict[str, Any] = {"device_ids": [device.index] if device.type == "cuda" else None,
                          "find_unused_parameters": find_unused, "gradient_as_bucket_view": True}
    params = inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters
    kw["forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"] = False
    return nn.parallel.DistributedDataParallel(distiller, **kw)


# ---------------------------------------------------------------------- training
class _Trainer:
    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.out = Path(cfg.out)

    # -- logging (rank 0)
    def note(self, msg: str) -> None:
        if self.env.is_main:
            print(f"semckd: {msg}", file=sys.stderr, flush=True)

    def say(self, msg: str) -> None:
        if self.env.is_main and not self.cfg.quiet:
            print(msg, flush=True)

    def setup(self) -> None:
        cfg = self.cfg
        from .data import build_splits, train_targets
        from .methods import BuildContext, build_distiller
        from .methods.registry import any_batch_size_hint, needs_full_batches
        from .models import create_model, resolve_model

        spec = cfg.method_spec
        _check_method_args(spec, cfg.method_args)
        # a method tied to the batch size (SemCKD's faithful mode) says so before the data is built:
        # its training loader then yields full batches only
        full = needs_full_batches(spec, cfg.method_args)
        lift = any_batch_size_hint(spec, cfg.method_args)
        hint = f" or --method-args {lift}" if lift else ""
        for flag, name in (("--model", cfg.model), ("--teacher-model", cfg.teacher_model)):
            if name:  # fail before loading any data (a pkg.module:factory path is imported here)
                try:
                    resolve_model(name)
                except (UserError, ValueError) as e:
                    raise UserError(f"{e} ({flag})") from e
        device_type = "cuda" if (cfg.device.startswith("cuda") or
                                 (cfg.device == "auto" and torch.cuda.is_available())) else "cpu"
        self.env = env = D.init(device_type)
        self.device = device = resolve_device(cfg.device, env.local_rank)
        if cfg.batch_size % env.world_size:
            raise UserError(f"--batch-size {cfg.batch_size} does not split over {env.world_size} processes; "
                            f"use a multiple of {env.world_size}")
        self.batch = cfg.batch_size // env.world_size
        self.to_delete, fresh_note = D.broadcast_error(lambda: _check_run_dir(cfg), env) or ([], None)
        if fresh_note:
            self.note(fresh_note)
        self.resume_ckpt = None
        if cfg.resume and (self.out / "last.pt").is_file():
            self.resume_ckpt = load_checkpoint(self.out / "last.pt", "resume checkpoint")
            if not isinstance(self.resume_ckpt, dict) or self.resume_ckpt.get("format") != FORMAT:
                raise UserError(f"--resume: {str(self.out / 'last.pt')!r} is not a semckd training "
                                "checkpoint")

        self.precision = Precision.resolve(cfg.amp, cfg.channels_last, device)  # the run's one decision
        _seed_all(cfg.seed)
        eval_bs = cfg.eval_batch_size or self.batch
        self.train_loader, self.val_loader, self.test_loader, info = build_splits(
            cfg.dataset, cfg.data_dir, self.batch, device=device, download=cfg.download,
            limit_train=cfg.limit_train, eval_batch_size=eval_bs, drop_last_train=full, seed=cfg.seed,
            rank=env.rank, world_size=env.world_size, channels_last=self.precision.channels_last,
            workers=cfg.workers, augment=cfg.augment, val_split=cfg.val_split, val_seed=cfg.val_seed)
        self.info = info
        self.num_classes = int(_info(info, "num_classes"))
        self.in_channels = int(_info(info, "in_channels"))
        self.data_info = info
        num_train = int(_info(info, "num_train"))
        per_rank = -(-num_train // env.world_size)  # shards are padded to equal size
        if full and per_rank < self.batch:
            raise UserError(f"method {spec!r} needs full batches of {self.batch} but each process has "
                            f"only {per_rank} training images; lower --batch-size or raise --limit-train"
                            f"{hint}")
        if full and per_rank % self.batch:
            self.note(f"method {spec!r} is tied to batch size {self.batch}: the last partial training "
                      f"batch ({per_rank % self.batch} images per process) is dropped every epoch")
        if len(self.train_loader) == 0:
            raise UserError(f"no training batches (dataset {cfg.dataset!r} has {num_train} training images "
                            f"for {env.world_size} process(es)); lower --batch-size or raise --limit-train")
        example = next(iter(self.train_loader))[0]
        self.input_size = [int(example.shape[-2]), int(example.shape[-1])]  # what eval/export feed it

        _seed_all(cfg.seed)  # model init does not depend on how the loaders used the RNG
        student = create_model(cfg.model, num_classes=self.num_classes, in_channels=self.in_channels)
        teacher = None
        self.teacher_meta: dict[str, Any] = {}
        if _needs_teacher(spec):
            if not cfg.teacher:
                raise UserError(f"method {spec!r} needs a teacher; pass --teacher CHECKPOINT "
                                "(train one with `semckd train-teacher`)")
            teacher, self.teacher_meta = load_teacher(
                cfg.teacher, arch=cfg.teacher_model, num_classes=self.num_classes,
                in_channels=self.in_channels, dataset=cfg.dataset)
        elif cfg.teacher:
            self.note(f"method {spec!r} uses no teacher; ignoring --teacher {cfg.teacher}")
        mf = torch.channels_last if self.precision.channels_last else torch.preserve_format
        student.to(device, memory_format=mf)
        if teacher is not None:
            teacher.to(device, memory_format=mf)
        ctx = BuildContext(example_input=example, batch_size=self.batch, num_classes=self.num_classes,
                           num_samples=num_train, train_targets=train_targets(self.train_loader))
        distiller = build_distiller(spec, student, teacher, ctx, cfg.method_args)
        distiller.to(device, memory_format=mf)
        self.distiller = distiller
        self.student = student
        # what test accuracy measures: the network a user deploys (SimKD's student answers through the
        # projector and the teacher's classifier, so its own head would be scored at chance)
        self.eval_model: nn.Module = distiller.deployable_student()

        self.fixed = distiller.fixed_batch_size
        self.skip_partial = False  # only for a method that reports a fixed size without declaring it
        if self.fixed is not None:
            if self.fixed != self.batch:
                good = self.fixed * env.world_size
                raise UserError(f"method {spec!r} is built for batch size {self.fixed} but each process "
                                f"trains with {self.batch}; use --batch-size {good}{hint}")
            if not full:
                self.skip_partial = True
                msg = (f"method {spec!r} reports fixed_batch_size but does not declare "
                       "needs_full_batches(options); partial training batches are skipped in the loop. "
                       "Declare the classmethod so the loader drops them (see docs/ARCHITECTURE.md)")
                warnings.warn(msg, FutureWarning, stacklevel=2)
                self.note(msg)
            if eval_bs != self.fixed and distiller.observes:
                self.note(f"method {spec!r} summarises test batches of {self.fixed} only; with "
                          f"--eval-batch-size {eval_bs} its per-epoch summary (extras) stays empty")

        params = distiller.trainable_parameters()
        self.optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                                         weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda e: lr_factor(e, cfg))
        self.scaler = self.precision.grad_scaler(device)
        self.start_epoch = 1
        self.best_acc = 0.0  # test accuracy of the selected (best) epoch
        self.best_val_acc: float | None = None  # its validation accuracy, with a validation split
        self.best_epoch = 0
        if self.resume_ckpt is not None:
            self._load_resume(self.resume_ckpt)

        if cfg.compile:
            student.compile()
            if teacher is not None:
                teacher.compile()
        self.model: nn.Module = distiller
        if env.enabled:
            self.model = _wrap_ddp(distiller, device, cfg.find_unused_parameters)
        if env.is_main:
            if self.to_delete:  # --force, or a folder that never got a checkpoint
                for p in self.to_delete:
                    p.unlink(missing_ok=True)
                shutil.rmtree(self.out / "tb", ignore_errors=True)
                if cfg.force:
                    self.note(f"--force: replaced the previous run in {cfg.out}")
            self.out.mkdir(parents=True, exist_ok=True)
            self._remove_temp_files()
            cfg.save_yaml(self.out / "config.yaml")
        ck = self.resume_ckpt
        self.metrics = _Metrics(self.out, env.is_main, cfg.tensorboard,
                                keep_upto=self.start_epoch - 1 if ck is not None else None,
                                rows=ck.get("metrics") if ck is not None else None)
        if ck is not None and env.is_main:
            self._recover_best(ck)
        self.num_params = sum(p.numel() for p in student.parameters())
        if env.enabled:  # identical init everywhere (above); from here on, independent random streams
            _seed_all(cfg.seed + 1000003 * env.rank)

    def _remove_temp_files(self) -> None:
        """Temp files a kill left mid-write (``.last.pt.XXXX.tmp``...): never committed, so never needed."""
        for f in self.out.iterdir():
            if any(is_temp_of(f.name, n) for n in RUN_FILES) and f.is_file():
                f.unlink(missing_ok=True)

    def _recover_best(self, ck: dict[str, Any]) -> None:
        """A kill between writing ``last.pt`` and ``best.pt`` leaves an older best.pt: redo that copy."""
        if int(ck.get("best_epoch", 0)) != int(ck["epoch"]):
            return
        best = self.out / "best.pt"
        with contextlib.suppress(Exception):
            b = load_checkpoint(best, "best checkpoint") if best.is_file() else None
            if isinstance(b, dict) and b.get("epoch") == ck["epoch"]:
                return
        atomic_copy(self.out / "last.pt", best)
        self.note(f"restored {best} from last.pt (the run stopped while writing it)")

    def _load_resume(self, ck: dict[str, Any]) -> None:
        sd, _ = split_checkpoint(ck)
        load_state_dict_checked(self.student, sd, f"resume checkpoint in {self.cfg.out!r}", self.cfg.model,
                                head_of(self.student))
        per_rank = ck.get("rng_per_rank") or []
        saved_ws = int(ck.get("world_size") or max(len(per_rank), 1))
        ws = self.env.world_size
        try:
            self.distiller.load_extras_state_dict(ck.get("extras") or {})
            self.optimizer.load_state_dict(ck["optimizer"])
        except (ValueError, KeyError, RuntimeError) as e:
            if saved_ws != ws:
                bs = self.cfg.batch_size
                raise UserError(
                    f"--resume: the checkpoint in {self.cfg.out!r} was written by {saved_ws} process(es) "
                    f"(batch {bs // saved_ws} each) but this run has {ws} (batch {bs // ws} each), and "
                    f"method {self.cfg.method_spec!r} sizes its modules by the per-process batch; resume "
                    f"with {saved_ws} process(es)"
                    + (f" (torchrun --nproc-per-node {saved_ws} ...)" if saved_ws > 1 else " (no torchrun)")
                ) from None
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise UserError(f"--resume: checkpoint does not match this method/config ({first})") from None
        if saved_ws != ws:
            self.note(f"resuming a {saved_ws}-process run with {ws} process(es): training continues, but "
                      "not bit-identically (data shards and random streams differ)")
        self.scheduler.load_state_dict(ck["scheduler"])
        if self.scaler is not None and ck.get("scaler"):
            self.scaler.load_state_dict(ck["scaler"])
        self.start_epoch = int(ck["epoch"]) + 1
        self.best_acc = float(ck.get("best_acc", 0.0))
        self.best_val_acc = ck.get("best_val_acc")
        self.best_epoch = int(ck.get("best_epoch", 0))
        self.rng_to_restore = (per_rank[self.env.rank] if len(per_rank) == self.env.world_size
                               else ck.get("rng"))
        self.note(f"resuming {self.cfg.out} after epoch {int(ck['epoch'])} (best {self.best_acc:.2f}%)")

    def _improved(self, test: dict[str, float], val: dict[str, float]) -> bool:
        """Whether this epoch becomes the best one: chosen on validation accuracy when there is a
        validation split (the test set must not drive any choice), else on test accuracy."""
        if self.best_epoch == 0:
            return True
        if val:
            return self.best_val_acc is None or val["val_acc"] > self.best_val_acc
        return test["test_acc"] > self.best_acc

    # -- checkpoints
    def _state(self, epoch: int, test: dict[str, float], rngs: list[dict[str, Any]],
               line: dict[str, Any]) -> dict[str, Any]:
        cfg = self.cfg
        return {
            "format": FORMAT,
            "model": cfg.model,
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "input_size": self.input_size,
            "mean": [float(x) for x in _info(self.data_info, "mean")],
            "std": [float(x) for x in _info(self.data_info, "std")],
            "dataset": cfg.dataset,
            "method": cfg.method_spec,
            "teacher": cfg.teacher,
            "teacher_model": self.teacher_meta.get("model"),
            "student": self.student.state_dict(),
            "extras": self.distiller.extras_state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": rngs[0],
            "rng_per_rank": rngs if len(rngs) > 1 else None,  # DDP: each rank resumes its own streams
            "world_size": self.env.world_size,
            # the metrics rows up to this epoch: checkpoint and row commit together (see _Metrics)
            "metrics": [_json_safe(r) for r in self.metrics.rows + [line]],
            "epoch": epoch,
            "best_acc": self.best_acc,
            "best_val_acc": self.best_val_acc,
            "best_epoch": self.best_epoch,
            "test_acc": test["test_acc"],
            "val_acc": test.get("val_acc"),
            "config": cfg.to_dict(),
        }

    def _save(self, epoch: int, test: dict[str, float], improved: bool, line: dict[str, Any]) -> None:
        due = epoch % self.cfg.save_every == 0 or epoch == self.cfg.epochs
        if not (due or improved):  # the same on every rank: test accuracy is all-reduced
            return
        rngs = [capture_rng()]
        if self.env.enabled:
            rngs = [None] * self.env.world_size  # type: ignore[list-item]
            torch.distributed.all_gather_object(rngs, capture_rng())
        if not self.env.is_main:
            return
        state = self._state(epoch, test, rngs, line)
        if due:
            atomic_save(state, self.out / "last.pt")
            self.last_saved = epoch
        if improved:
            if due:
                atomic_copy(self.out / "last.pt", self.out / "best.pt")
            else:
                atomic_save(state, self.out / "best.pt")

    def _last_good(self) -> str:
        last = getattr(self, "last_saved", self.start_epoch - 1)
        return (f"the last good checkpoint {str(self.out / 'last.pt')!r} (epoch {last}) is kept"
                if last >= 1 else "no checkpoint had been written yet")

    def _check_state_finite(self, epoch: int, test: dict[str, float]) -> None:
        """A checkpoint is only called good if every tensor in it, and its evaluation, is finite.

        A finite training loss can still leave inf in BatchNorm running statistics or in optimizer
        state (a huge lr); such a checkpoint evaluates at chance and poisons every resume from it.
        """
        bad = _nonfinite_tensors({"student": self.student.state_dict(),
                                  "extras": self.distiller.extras_state_dict(),
                                  "optimizer": self.optimizer.state_dict()["state"]})
        flag = torch.tensor([float(bool(bad)) + 2.0 * (not math.isfinite(test["test_loss"]))],
                            device=self.device)
        D.all_reduce_max(flag, self.env)
        f = int(flag.item())
        if f == 0:
            return
        if bad:
            what = f"{len(bad)} tensor(s) of the model state became non-finite (e.g. {', '.join(bad[:3])})"
        elif f & 1:
            what = "the model state became non-finite on another process"
        else:
            what = f"the test loss became non-finite ({test['test_loss']})"
        raise NonFiniteLossError(f"after epoch {epoch} {what}; training stopped without writing that "
                                 f"epoch's checkpoint and {self._last_good()}; lower --lr or the method's "
                                 "loss weights")

    # -- one epoch
    def _check_finite(self, sums: torch.Tensor, names: list[str], epoch: int, step: int) -> None:
        bad = (~torch.isfinite(sums[:1])).to(torch.float32)
        D.all_reduce_max(bad, self.env)
        if bad.item() == 0:
            return
        terms = [n for i, n in enumerate(names) if not math.isfinite(float(sums[3 + i]))]
        kept = self._last_good()
        raise NonFiniteLossError(
            f"loss became non-finite at epoch {epoch}, step {step} (terms: {', '.join(terms) or 'total'}); "
            f"training stopped and {kept}; lower --lr or the method's loss weights")

    def _train_epoch(self, epoch: int) -> dict[str, Any]:
        cfg, env, device = self.cfg, self.env, self.device
        self.model.train()
        if hasattr(self.train_loader, "set_epoch"):
            self.train_loader.set_epoch(epoch - 1)  # loaders count epochs from 0 (like DistributedSampler)
        self.distiller.on_epoch_start(epoch)
        names: list[str] = []
        sums: torch.Tensor | None = None  # total loss, correct, n, per-term losses
        check_every = 1 if device.type == "cpu" else cfg.log_every
        show = env.is_main and not cfg.quiet and sys.stderr.isatty()
        bar = None
        if show:
            from tqdm import tqdm

            bar = tqdm(total=len(self.train_loader), desc=f"epoch {epoch}/{cfg.epochs}", leave=False,
                       dynamic_ncols=True, file=sys.stderr)
        t0 = time.perf_counter()
        step = 0
        for batch in self.train_loader:
            images, targets = batch[0], batch[1]
            index = batch[2] if len(batch) > 2 else None
            if self.skip_partial and images.shape[0] != self.fixed:
                continue
            step += 1
            fault_point("step")
            res = train_step(self.model, self.optimizer, images, targets, index, precision=self.precision,
                             device=device, scaler=self.scaler, name=f"method {cfg.method_spec!r}")
            logits, losses, loss = res.logits, res.losses, res.loss
            with torch.no_grad():
                b = images.shape[0]
                if sums is None:
                    names = list(losses)
                    sums = torch.zeros(3 + len(names), dtype=torch.float64 if device.type != "mps"
                                       else torch.float32, device=device)
                vals = torch.stack([loss.detach().float(), (logits.argmax(1) == targets).sum().float(),
                                    torch.tensor(float(b), device=device)]
                                   + [losses[n].detach().float() for n in names])
                vals[0] *= b
                vals[3:] *= b
                sums += vals.to(sums.dtype)
            if step % check_every == 0:
                self._check_finite(sums, names, epoch, step)
            if bar is not None:
                bar.update(1)
                if step % cfg.log_every == 0:
                    s = sums.tolist()
                    bar.set_postfix(loss=f"{s[0] / s[2]:.3f}", acc=f"{100 * s[1] / s[2]:.1f}",
                                    img_s=f"{s[2] * env.world_size / (time.perf_counter() - t0):.0f}")
        if bar is not None:
            bar.close()
        if sums is None:
            raise UserError("no full training batch this epoch; lower --batch-size or raise --limit-train")
        self._check_finite(sums, names, epoch, step)
        train_time = time.perf_counter() - t0
        D.all_reduce_sum(sums, env)
        D.average_buffers(self.student, env)
        s = sums.tolist()
        n = s[2]
        rec: dict[str, Any] = {"train_loss": s[0] / n, "train_acc": 100.0 * s[1] / n}
        for i, name in enumerate(names):
            rec[f"train_{name}"] = s[3 + i] / n
        rec["train_images"] = int(n)
        rec["images_per_s"] = n / max(train_time, 1e-9)
        return rec

    def fit(self) -> dict[str, Any]:
        cfg, env = self.cfg, self.env
        if self.start_epoch > cfg.epochs:
            self.note(f"{cfg.out} already finished {self.start_epoch - 1} epochs; "
                      "raise --epochs to train more")
        if getattr(self, "rng_to_restore", None) is not None:
            restore_rng(self.rng_to_restore)
        if self.start_epoch == 1:
            self.say(f"training {cfg.model} ({self.num_params / 1e6:.2f}M params) with {cfg.method_spec} on "
                     f"{cfg.dataset} for {cfg.epochs} epochs on {self.device}"
                     + (f" x{env.world_size} processes" if env.enabled else "") + f" → {cfg.out}")
            self.say(f"precision: {self.precision.describe()}")
        observer = self.distiller if self.distiller.observes else None
        t_start = time.perf_counter()
        last_test: dict[str, float] = {}
        for epoch in range(self.start_epoch, cfg.epochs + 1):
            t0 = time.perf_counter()
            lr = self.optimizer.param_groups[0]["lr"]
            rec = self._train_epoch(epoch)
            self.scheduler.step()
            if observer is not None:
                self.distiller.eval()
            # the method's summary (SemCKD's attention) is taken on the validation split when there is
            # one: ten times fewer teacher forwards than on the test set, and no test-set diagnostics
            val: dict[str, float] = {}
            try:
                if self.val_loader is not None:
                    val = {k.replace("test_", "val_"): v for k, v in
                           evaluate(self.eval_model, self.val_loader, self.device, amp=self.precision,
                                    observer=observer, observe_batch=self.fixed, env=env).items()}
                test = evaluate(self.eval_model, self.test_loader, self.device, amp=self.precision,
                                observer=None if val else observer, observe_batch=self.fixed, env=env)
            finally:
                self.distiller.train()
            if val:
                test = {**test, "val_acc": val["val_acc"]}
            extras = observer.pop_summary() if observer is not None else None
            if extras:
                extras["observed_on"] = "val" if val else "test"
            self._check_state_finite(epoch, test)
            improved = self._improved(test, val)
            if improved:
                self.best_acc, self.best_epoch = test["test_acc"], epoch
                if val:
                    self.best_val_acc = val["val_acc"]
            line = EpochRecord(
                epoch=epoch, lr=lr, train_loss=rec["train_loss"], train_acc=rec["train_acc"],
                terms={k[len("train_"):]: v for k, v in rec.items()
                       if k not in ("train_loss", "train_acc", "train_images", "images_per_s")},
                train_images=rec["train_images"], images_per_s=rec["images_per_s"],
                val_loss=val.get("val_loss"), val_acc=val.get("val_acc"),
                test_loss=test["test_loss"], test_acc=test["test_acc"],
                test_top5=test["test_top5"] if self.num_classes > 5 else None,
                best_val_acc=self.best_val_acc if val else None, best_acc=self.best_acc,
                epoch_time_s=time.perf_counter() - t0, extras=extras or None).to_dict()
            self._save(epoch, test, improved, line)  # the commit point: last.pt holds this row too
            self.metrics.write(line)
            if getattr(self, "on_epoch", None) is not None:
                self.on_epoch(epoch, val.get("val_acc"))
            if not last_test:
                note = eta_note(cfg.epochs - epoch, line["epoch_time_s"], self.device)
                if note:
                    self.note(note)
            last_test = test
            shown = (f"val {val['val_acc']:.2f}% (best {self.best_val_acc:.2f}%)  "
                     f"test {test['test_acc']:.2f}%"
                     if val else f"test {test['test_acc']:.2f}% (best {self.best_acc:.2f}%)")
            self.say(f"epoch {epoch:>3}/{cfg.epochs}  lr {lr:.4g}  loss {rec['train_loss']:.4f}  "
                     f"train {rec['train_acc']:.2f}%  {shown}  "
                     f"{rec['images_per_s']:.0f} img/s  {line['epoch_time_s']:.1f}s")
        divergence = D.param_divergence(self.student, env)
        final = self.metrics.rows[-1] if self.metrics.rows else last_test
        pinned = attention_pinned(final.get("extras"))
        if env.enabled and divergence > 0:
            self.note(f"warning: student parameters differ across processes (max |diff| {divergence:.3g})")
        summary = RunSummary(
            kind=cfg.kind, model=cfg.model, dataset=cfg.dataset, method=cfg.method_spec,
            teacher=cfg.teacher, teacher_model=self.teacher_meta.get("model"),
            epochs=cfg.epochs, best_acc=self.best_acc, best_epoch=self.best_epoch,
            selected_by="val_acc" if self.val_loader is not None else "test_acc",
            best_val_acc=self.best_val_acc, val_split=cfg.val_split, seed=cfg.seed,
            final_acc=final.get("test_acc"), final_top5=final.get("test_top5"),
            final_val_acc=final.get("val_acc"),
            num_params=self.num_params, world_size=env.world_size, device=str(self.device),
            amp=self.precision.amp, channels_last=self.precision.channels_last,
            train_time_s=time.perf_counter() - t_start, ddp_param_max_abs_diff=divergence,
            notes=[pinned] if pinned else None,
        ).to_dict()
        if env.is_main:
            run_json = self.out / "run.json"
            if not last_test and run_json.exists():  # nothing trained now: keep the finished run's summary
                summary = json.loads(run_json.read_text())
            elif not last_test:  # killed after its last checkpoint, before run.json: finish the record
                summary["train_time_s"] = sum(r.get("epoch_time_s") or 0.0 for r in self.metrics.rows)
                write_summary(self.out, summary)
            else:
                write_summary(self.out, summary)
            if self.val_loader is not None:
                self.say(f"done: best validation accuracy {self.best_val_acc:.2f}% at epoch "
                         f"{self.best_epoch} "
                         f"(test {self.best_acc:.2f}%, recorded only); checkpoints in {cfg.out}")
            else:
                self.say(f"done: best test accuracy {self.best_acc:.2f}% (epoch {self.best_epoch}); "
                         f"checkpoints in {cfg.out}")
            for note in summary.get("notes") or []:
                self.note(note)
        return summary

    def close(self) -> None:
        m = getattr(self, "metrics", None)
        if m is not None:
            m.close()
        d = getattr(self, "distiller", None)
        if d is not None:
            d.remove_taps()
        env = getattr(self, "env", None)
        if env is not None:
            D.shutdown(env)


def train(cfg: TrainConfig, on_epoch: Callable[[int, float | None], None] | None = None) -> dict[str, Any]:
    """Run (or resume) the training described by ``cfg``; returns the run.json summary.

    ``on_epoch(epoch, val_acc)`` is called after each epoch's checkpoint (``val_acc`` None without a
    validation split); what it raises ends the training there, e.g. a sweep's pruner stopping a cell,
    which stays resumable from that ``last.pt``.
    """
    trainer = _Trainer(cfg)
    trainer.on_epoch = on_epoch
    with _determinism(cfg.deterministic):
        try:
            trainer.setup()
            return trainer.fit()
        except torch.OutOfMemoryError:
            raise UserError(f"out of device memory with batch size {cfg.batch_size}; lower --batch-size "
                            "or try --amp bf16 (the last checkpoint, if any, is kept)") from None
        finally:
            trainer.close()


# ---------------------------------------------------------------------- eval command
def evaluate_checkpoint(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """Moved to :func:`semckd.evaluate.evaluate_checkpoint`; kept here so existing imports keep working."""
    from .evaluate import evaluate_checkpoint as impl

    return impl(*args, **kwargs)
