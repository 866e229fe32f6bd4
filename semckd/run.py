"""Setting up a training run: named steps that build one typed :class:`Run` for the engine's loop.

:func:`build_run` calls the steps in this order (the order is part of the numbers: the seeds are set
before the loaders and again before the models, so a run's weights do not depend on how much the
loaders drew from the RNG):

1. :func:`check_models` — ``--model``/``--teacher-model`` resolve, before any data is read;
2. :func:`setup_env` — DDP process group, device, per-process batch size;
3. :func:`setup_run_folder` — the folder guard (:func:`semckd.runfolder.check_run_dir`) and the
   ``--resume`` checkpoint;
4. :func:`setup_data_loaders` — train/val/test loaders (full batches only when the method is tied to the
   batch size);
5. :func:`setup_teacher_student_models` — student built, teacher loaded, both on the device;
6. :func:`setup_distiller` — the method around them, and its fixed batch size checked;
7. :func:`setup_optimizer` — SGD, the lr schedule (:func:`lr_factor`), the fp16 grad scaler;
8. :func:`setup_resume` — the checkpoint's state loaded into the above (:class:`TrainState`);
9. :func:`setup_model` — ``torch.compile`` and the DDP wrapper;
10. :func:`open_run_folder` — the folder written (config.yaml) and the metrics log opened.

Each step takes what it needs and returns what it made; nothing is read back from a half-built object.
Resources that need closing (process group, forward hooks, TensorBoard) are registered on the caller's
``ExitStack`` as soon as they exist, so a failed step releases what the earlier ones took.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import distributed as D
from .checkpoint import head_of, load_state_dict_checked, load_teacher
from .config import TrainConfig
from .device import backend_device_type, resolve_device
from .errors import UserError
from .precision import Precision
from .runfolder import (
    FORMAT,
    LAST,
    CheckpointRecord,
    MetricsLog,
    check_run_dir,
    load_checkpoint,
    prepare_run_dir,
    recover_best,
    strip_wrapper_prefixes,
)

__all__ = ["Data", "Log", "Models", "Run", "TrainState", "build_run", "check_models", "determinism",
           "lr_factor", "open_run_folder", "seed_all", "setup_data_loaders", "setup_distiller", "setup_env",
           "setup_model", "setup_optimizer", "setup_resume", "setup_run_folder",
           "setup_teacher_student_models"]


# ---------------------------------------------------------------------- the run object
@dataclass(frozen=True)
class Log:
    """Messages of rank 0: ``note`` (stderr, always) and ``say`` (stdout, unless ``--quiet``)."""

    env: D.DistEnv
    quiet: bool

    def note(self, msg: str) -> None:
        if self.env.is_main:
            print(f"semckd: {msg}", file=sys.stderr, flush=True)

    def say(self, msg: str) -> None:
        if self.env.is_main and not self.quiet:
            print(msg, flush=True)


@dataclass
class Data:
    """The loaders of a run and what they say about the data."""

    train: Any
    val: Any | None
    test: Any
    info: dict[str, Any]  # build_splits' info: num_classes, in_channels, num_train, mean, std...
    batch: int  # per process
    eval_batch: int
    example: torch.Tensor  # the first training batch's images (sizes the method's modules)
    input_size: list[int]  # [H, W] as the network is fed (recorded for eval/export)
    full_batches: bool  # the method is tied to the batch size: the training loader drops partial batches

    @property
    def num_classes(self) -> int:
        return int(self.info["num_classes"])

    @property
    def in_channels(self) -> int:
        return int(self.info["in_channels"])

    @property
    def num_train(self) -> int:
        return int(self.info["num_train"])


@dataclass
class Models:
    """The networks: ``model`` is what trains (the distiller, DDP-wrapped under torchrun); ``eval_model``
    what test accuracy measures (:meth:`Distiller.deployable_student`)."""

    student: nn.Module
    teacher: nn.Module | None
    teacher_meta: dict[str, Any]
    distiller: Any  # semckd.methods.Distiller
    model: nn.Module
    eval_model: nn.Module
    fixed_batch: int | None  # the per-process batch the method is built for, when it is tied to one

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.student.parameters())


@dataclass
class TrainState:
    """Where training stands: fresh (epoch 1), or what a ``--resume`` checkpoint recorded. The engine
    updates it after every epoch."""

    start_epoch: int = 1
    best_acc: float = 0.0  # test accuracy of the selected (best) epoch
    best_val_acc: float | None = None  # its validation accuracy, with a validation split
    best_epoch: int = 0
    last_saved: int = 0  # epoch of the newest last.pt (0: none yet)
    rng: dict[str, Any] | None = None  # this rank's RNG streams to restore before the first epoch
    rows: list[dict[str, Any]] | None = None  # the checkpoint's metrics rows


@dataclass
class Run:
    """Everything one training run is made of, built by :func:`build_run` and read by the engine."""

    cfg: TrainConfig
    env: D.DistEnv
    device: torch.device
    precision: Precision
    log: Log
    data: Data
    models: Models
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None
    state: TrainState
    metrics: MetricsLog
    out: Path = field(init=False)

    def __post_init__(self) -> None:
        self.out = Path(self.cfg.out)


# ---------------------------------------------------------------------- seeds, determinism, schedule
def seed_all(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)  # all devices
    with contextlib.suppress(ImportError):
        import numpy as np

        np.random.seed(seed % 2**32)


@contextlib.contextmanager
def determinism(enabled: bool) -> Iterator[None]:
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


# ---------------------------------------------------------------------- the steps
def check_models(cfg: TrainConfig) -> None:
    """Fail before loading any data when a model name does not resolve (a ``pkg.module:factory`` path is
    imported here)."""
    from .models import resolve_model

    for flag, name in (("--model", cfg.model), ("--teacher-model", cfg.teacher_model)):
        if name:
            try:
                resolve_model(name)
            except (UserError, ValueError) as e:
                raise UserError(f"{e} ({flag})") from e


def setup_env(cfg: TrainConfig, cleanup: contextlib.ExitStack) -> tuple[D.DistEnv, torch.device, int]:
    """``(env, device, per-process batch)``: joins the process group under torchrun."""
    env = D.init(backend_device_type(cfg.device))
    cleanup.callback(D.shutdown, env)
    device = resolve_device(cfg.device, env.local_rank)
    if cfg.batch_size % env.world_size:
        raise UserError(f"--batch-size {cfg.batch_size} does not split over {env.world_size} processes; "
                        f"use a multiple of {env.world_size}")
    return env, device, cfg.batch_size // env.world_size


def setup_run_folder(cfg: TrainConfig, env: D.DistEnv, log: Log
                     ) -> tuple[list[Path], dict[str, Any] | None]:
    """``(files to replace, resume checkpoint)``: the guard decided on rank 0's view and shared, so every
    rank fails alike; the checkpoint only with ``--resume`` and a ``last.pt``."""
    to_delete, fresh_note = D.broadcast_error(lambda: check_run_dir(cfg), env) or ([], None)
    if fresh_note:
        log.note(fresh_note)
    last = Path(cfg.out) / LAST
    if not (cfg.resume and last.is_file()):
        return to_delete, None
    ck = load_checkpoint(last, "resume checkpoint")
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise UserError(f"--resume: {str(last)!r} is not a semckd training checkpoint")
    return to_delete, ck


def setup_data_loaders(cfg: TrainConfig, env: D.DistEnv, device: torch.device, precision: Precision,
                       batch: int, log: Log, data_spec: Any = None) -> Data:
    """The train/val/test loaders: of ``cfg.dataset``, or of ``data_spec`` (a user's data given from
    Python, :func:`semckd.data.user.user_spec`). A method tied to the batch size (SemCKD's faithful mode)
    says so before the data is built: its training loader then yields full batches only."""
    from .data import build_splits
    from .methods.registry import any_batch_size_hint, needs_full_batches

    spec = cfg.method_spec
    full = needs_full_batches(spec, cfg.method_args)
    eval_bs = cfg.eval_batch_size or batch
    seed_all(cfg.seed)
    train, val, test, info = build_splits(
        data_spec or cfg.dataset, cfg.data_dir, batch, device=device, download=cfg.download,
        limit_train=cfg.limit_train, eval_batch_size=eval_bs, drop_last_train=full, seed=cfg.seed,
        rank=env.rank, world_size=env.world_size, channels_last=precision.channels_last,
        workers=cfg.workers, augment=cfg.augment, val_split=cfg.val_split, val_seed=cfg.val_seed,
        image_column=cfg.image_column, label_column=cfg.label_column, train_csv=cfg.train_csv,
        test_csv=cfg.test_csv)
    num_train = int(info["num_train"])
    per_rank = -(-num_train // env.world_size)  # shards are padded to equal size
    if full and per_rank < batch:
        lift = any_batch_size_hint(spec, cfg.method_args)
        raise UserError(f"method {spec!r} needs full batches of {batch} but each process has "
                        f"only {per_rank} training images; lower --batch-size or raise --limit-train"
                        + (f" or --method-args {lift}" if lift else ""))
    if full and per_rank % batch:
        log.note(f"method {spec!r} is tied to batch size {batch}: the last partial training "
                 f"batch ({per_rank % batch} images per process) is dropped every epoch")
    if len(train) == 0:
        raise UserError(f"no training batches (dataset {cfg.dataset!r} has {num_train} training images "
                        f"for {env.world_size} process(es)); lower --batch-size or raise --limit-train")
    example = next(iter(train))[0]
    return Data(train, val, test, info, batch, eval_bs, example,
                [int(example.shape[-2]), int(example.shape[-1])], full)


def setup_teacher_student_models(cfg: TrainConfig, data: Data, device: torch.device, precision: Precision,
                                 log: Log) -> tuple[nn.Module, nn.Module | None, dict[str, Any]]:
    """``(student, teacher or None, teacher checkpoint's metadata)``, on the device in the run's memory
    format. The seed is set again first: model init does not depend on how the loaders used the RNG."""
    from .methods.registry import needs_teacher
    from .models import create_model

    spec = cfg.method_spec
    seed_all(cfg.seed)
    student = create_model(cfg.model, num_classes=data.num_classes, in_channels=data.in_channels)
    teacher, teacher_meta = None, {}
    if needs_teacher(spec):
        if not cfg.teacher:
            raise UserError(f"method {spec!r} needs a teacher; pass --teacher CHECKPOINT "
                            "(train one with `semckd train-teacher`)")
        teacher, teacher_meta = load_teacher(cfg.teacher, arch=cfg.teacher_model,
                                             num_classes=data.num_classes, in_channels=data.in_channels,
                                             dataset=cfg.dataset)
    elif cfg.teacher:
        log.note(f"method {spec!r} uses no teacher; ignoring --teacher {cfg.teacher}")
    student.to(device, memory_format=precision.memory_format)
    if teacher is not None:
        teacher.to(device, memory_format=precision.memory_format)
    return student, teacher, teacher_meta


def setup_distiller(cfg: TrainConfig, data: Data, student: nn.Module, teacher: nn.Module | None,
                    device: torch.device, precision: Precision, env: D.DistEnv, log: Log,
                    cleanup: contextlib.ExitStack) -> tuple[Any, nn.Module]:
    """``(distiller, network to evaluate)``: the method around student and teacher. A method built for
    one batch size must train with it and must have declared so (``needs_full_batches``), so its loader
    drops partial batches. What test accuracy measures is the network a user deploys (SimKD's student
    answers through the projector and the teacher's classifier, so its own head would be at chance)."""
    from .data import train_targets
    from .methods import BuildContext, build_distiller
    from .methods.registry import any_batch_size_hint

    spec = cfg.method_spec
    ctx = BuildContext(example_input=data.example, batch_size=data.batch, num_classes=data.num_classes,
                       num_samples=data.num_train, train_targets=train_targets(data.train))
    distiller = build_distiller(spec, student, teacher, ctx, cfg.method_args)
    cleanup.callback(distiller.remove_taps)
    distiller.to(device, memory_format=precision.memory_format)
    eval_model = distiller.deployable_student()
    fixed = distiller.fixed_batch_size
    if fixed is None:
        return distiller, eval_model
    if fixed != data.batch:
        lift = any_batch_size_hint(spec, cfg.method_args)
        raise UserError(f"method {spec!r} is built for batch size {fixed} but each process "
                        f"trains with {data.batch}; use --batch-size {fixed * env.world_size}"
                        + (f" or --method-args {lift}" if lift else ""))
    if not data.full_batches:
        raise UserError(f"method {spec!r} reports fixed_batch_size but does not declare "
                        "needs_full_batches(options); declare that classmethod (True for these options) so "
                        "the loader drops partial batches (see docs/ARCHITECTURE.md, Declarations)")
    if data.eval_batch != fixed and distiller.observes:
        log.note(f"method {spec!r} summarises test batches of {fixed} only; with "
                 f"--eval-batch-size {data.eval_batch} its per-epoch summary (extras) stays empty")
    return distiller, eval_model


def setup_optimizer(cfg: TrainConfig, distiller: Any, device: torch.device, precision: Precision
                    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR,
                               torch.amp.GradScaler | None]:
    """SGD over the distiller's trainable parameters, the lr schedule, and the fp16 grad scaler."""
    optimizer = torch.optim.SGD(distiller.trainable_parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: lr_factor(e, cfg))
    return optimizer, scheduler, precision.grad_scaler(device)


def setup_resume(cfg: TrainConfig, ck: dict[str, Any] | None, student: nn.Module, distiller: Any,
                 optimizer: torch.optim.Optimizer, scheduler: Any, scaler: torch.amp.GradScaler | None,
                 env: D.DistEnv, log: Log) -> TrainState:
    """Load a ``--resume`` checkpoint into the run's objects; the state it records (or a fresh one)."""
    if ck is None:
        return TrainState()
    rec = CheckpointRecord.from_dict(ck)
    where = f"resume checkpoint in {cfg.out!r}"
    for name in ("student", "optimizer", "scheduler", "epoch"):
        if getattr(rec, name) is None:
            raise UserError(f"--resume: the {where} has no {name!r} (damaged); pass --force to start over")
    load_state_dict_checked(student, strip_wrapper_prefixes(rec.student), where, cfg.model, head_of(student))
    per_rank = rec.rng_per_rank or []
    saved_ws = int(rec.world_size or max(len(per_rank), 1))
    ws = env.world_size
    try:
        distiller.load_extras_state_dict(rec.extras or {})
        optimizer.load_state_dict(rec.optimizer)
    except (ValueError, KeyError, RuntimeError) as e:
        if saved_ws != ws:
            bs = cfg.batch_size
            raise UserError(
                f"--resume: the checkpoint in {cfg.out!r} was written by {saved_ws} process(es) "
                f"(batch {bs // saved_ws} each) but this run has {ws} (batch {bs // ws} each), and "
                f"method {cfg.method_spec!r} sizes its modules by the per-process batch; resume "
                f"with {saved_ws} process(es)"
                + (f" (torchrun --nproc-per-node {saved_ws} ...)" if saved_ws > 1 else " (no torchrun)")
            ) from None
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UserError(f"--resume: checkpoint does not match this method/config ({first})") from None
    if saved_ws != ws:
        log.note(f"resuming a {saved_ws}-process run with {ws} process(es): training continues, but "
                 "not bit-identically (data shards and random streams differ)")
    scheduler.load_state_dict(rec.scheduler)
    if scaler is not None and rec.scaler:
        scaler.load_state_dict(rec.scaler)
    epoch = int(rec.epoch)
    state = TrainState(start_epoch=epoch + 1, best_acc=float(rec.best_acc or 0.0),
                       best_val_acc=rec.best_val_acc, best_epoch=int(rec.best_epoch or 0), last_saved=epoch,
                       rng=per_rank[env.rank] if len(per_rank) == ws else rec.rng, rows=rec.metrics)
    log.note(f"resuming {cfg.out} after epoch {epoch} (best {state.best_acc:.2f}%)")
    return state


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


def setup_model(cfg: TrainConfig, distiller: Any, student: nn.Module, teacher: nn.Module | None,
                device: torch.device, env: D.DistEnv) -> nn.Module:
    """What trains: the distiller (networks compiled with ``--compile``), DDP-wrapped under torchrun."""
    if cfg.compile:
        student.compile()
        if teacher is not None:
            teacher.compile()
    return _wrap_ddp(distiller, device, cfg.find_unused_parameters) if env.enabled else distiller


def open_run_folder(cfg: TrainConfig, env: D.DistEnv, to_delete: list[Path], state: TrainState,
                    resumed: bool, log: Log, cleanup: contextlib.ExitStack) -> MetricsLog:
    """Rank 0 writes the folder (now that setup succeeded: a replaced run is deleted only here) and every
    rank opens the metrics log, rebuilt from the checkpoint's rows on resume."""
    out = Path(cfg.out)
    if env.is_main:
        prepare_run_dir(cfg, to_delete)
        if to_delete and cfg.force:
            log.note(f"--force: replaced the previous run in {cfg.out}")
    metrics = MetricsLog(out, env.is_main, cfg.tensorboard,
                         keep_upto=state.start_epoch - 1 if resumed else None,
                         rows=state.rows if resumed else None)
    cleanup.callback(metrics.close)
    if resumed and env.is_main and recover_best(out, state.start_epoch - 1, state.best_epoch):
        log.note(f"restored {out / 'best.pt'} from last.pt (the run stopped while writing it)")
    return metrics


def build_run(cfg: TrainConfig, cleanup: contextlib.ExitStack, data_spec: Any = None) -> Run:
    """The steps above, in order, into one :class:`Run` (see the module docstring); ``data_spec`` is a
    user's data given from Python, in place of ``cfg.dataset``."""
    check_models(cfg)
    env, device, batch = setup_env(cfg, cleanup)
    log = Log(env, cfg.quiet)
    to_delete, ck = setup_run_folder(cfg, env, log)
    precision = Precision.resolve(cfg.amp, cfg.channels_last, device)  # the run's one decision
    data = setup_data_loaders(cfg, env, device, precision, batch, log, data_spec)
    student, teacher, teacher_meta = setup_teacher_student_models(cfg, data, device, precision, log)
    distiller, eval_model = setup_distiller(cfg, data, student, teacher, device, precision, env, log, cleanup)
    optimizer, scheduler, scaler = setup_optimizer(cfg, distiller, device, precision)
    state = setup_resume(cfg, ck, student, distiller, optimizer, scheduler, scaler, env, log)
    model = setup_model(cfg, distiller, student, teacher, device, env)
    metrics = open_run_folder(cfg, env, to_delete, state, ck is not None, log, cleanup)
    models = Models(student, teacher, teacher_meta, distiller, model, eval_model, distiller.fixed_batch_size)
    if env.enabled:  # identical init everywhere (above); from here on, independent random streams
        seed_all(cfg.seed + 1000003 * env.rank)
    return Run(cfg, env, device, precision, log, data, models, optimizer, scheduler, scaler, state, metrics)
