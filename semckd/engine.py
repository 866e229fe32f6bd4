"""The training loop: method-agnostic, resumable, DDP-aware.

Reading a training run is reading :meth:`Trainer.fit` (epochs: train, evaluate, check, commit) and
:meth:`Trainer.train_epoch` (batches). Everything the loop works on is one :class:`~semckd.run.Run`,
built by the named setup steps of :mod:`semckd.run`; the run folder's files and guard are
:mod:`semckd.runfolder`'s, the NaN/inf checks :mod:`semckd.finite`'s, the per-batch accuracy
:func:`semckd.evaluate.evaluate`.

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
import json
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from . import distributed as D
from .atomic import atomic_copy, fault_point
from .checkpoint import atomic_save, capture_rng, restore_rng
from .config import TrainConfig, check_method
from .diagnostics import attention_pinned
from .errors import UserError
from .evaluate import evaluate
from .finite import check_loss_finite, check_state_finite
from .run import Run, build_run, determinism
from .runfolder import BEST, LAST, CheckpointRecord, EpochRecord, RunSummary, json_safe, write_summary
from .step import train_step

__all__ = ["Trainer", "eta_note", "open_run", "train"]


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


class Trainer:
    """Trains one :class:`~semckd.run.Run`: :meth:`fit` runs its remaining epochs."""

    def __init__(self, run: Run, on_epoch: Callable[[int, float | None], None] | None = None) -> None:
        self.run = run
        # called after each epoch's commit point with (epoch, val_acc or None); what it raises ends the
        # training there and the run stays resumable from that last.pt (a sweep's pruner stops cells so)
        self.on_epoch = on_epoch

    # -- one epoch
    def train_epoch(self, epoch: int) -> dict[str, Any]:
        """One pass over the training loader: ``train_loss``/``train_acc``, ``train_<term>`` means, images
        and throughput, summed over ranks; BN statistics averaged over ranks at the end."""
        r = self.run
        cfg, env, device, loader = r.cfg, r.env, r.device, r.data.train
        r.models.model.train()
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch - 1)  # loaders count epochs from 0 (like DistributedSampler)
        r.models.distiller.on_epoch_start(epoch)
        names: list[str] = []
        sums: torch.Tensor | None = None  # total loss, correct, n, per-term losses
        check_every = 1 if device.type == "cpu" else cfg.log_every
        bar = self._progress_bar(epoch)
        t0 = time.perf_counter()
        step = 0
        for batch in loader:
            images, targets = batch[0], batch[1]
            index = batch[2] if len(batch) > 2 else None
            step += 1
            fault_point("step")
            res = train_step(r.models.model, r.optimizer, images, targets, index, precision=r.precision,
                             device=device, scaler=r.scaler, name=f"method {cfg.method_spec!r}")
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
                check_loss_finite(sums, names, epoch, step, env, self._kept)
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
        check_loss_finite(sums, names, epoch, step, env, self._kept)
        train_time = time.perf_counter() - t0
        D.all_reduce_sum(sums, env)
        D.average_buffers(r.models.student, env)
        s = sums.tolist()
        n = s[2]
        rec: dict[str, Any] = {"train_loss": s[0] / n, "train_acc": 100.0 * s[1] / n}
        for i, name in enumerate(names):
            rec[f"train_{name}"] = s[3 + i] / n
        rec["train_images"] = int(n)
        rec["images_per_s"] = n / max(train_time, 1e-9)
        return rec

    def _progress_bar(self, epoch: int) -> Any:
        r = self.run
        if not (r.env.is_main and not r.cfg.quiet and sys.stderr.isatty()):
            return None
        from tqdm import tqdm

        return tqdm(total=len(r.data.train), desc=f"epoch {epoch}/{r.cfg.epochs}", leave=False,
                    dynamic_ncols=True, file=sys.stderr)

    def _evaluate(self) -> tuple[dict[str, float], dict[str, float], dict[str, Any] | None]:
        """``(val, test, extras)`` after an epoch. The method's summary (SemCKD's attention) is taken on
        the validation split when there is one: ten times fewer teacher forwards than on the test set,
        and no test-set diagnostics."""
        r = self.run
        distiller = r.models.distiller
        observer = distiller if distiller.observes else None
        kw = dict(amp=r.precision, observe_batch=r.models.fixed_batch, env=r.env)
        if observer is not None:
            distiller.eval()
        val: dict[str, float] = {}
        try:
            if r.data.val is not None:
                val = {k.replace("test_", "val_"): v for k, v in
                       evaluate(r.models.eval_model, r.data.val, r.device, observer=observer, **kw).items()}
            test = evaluate(r.models.eval_model, r.data.test, r.device, observer=None if val else observer,
                            **kw)
        finally:
            distiller.train()
        if val:
            test = {**test, "val_acc": val["val_acc"]}
        extras = observer.pop_summary() if observer is not None else None
        if extras:
            extras["observed_on"] = "val" if val else "test"
        return val, test, extras

    def _improved(self, test: dict[str, float], val: dict[str, float]) -> bool:
        """Whether this epoch becomes the best one: chosen on validation accuracy when there is a
        validation split (the test set must not drive any choice), else on test accuracy."""
        st = self.run.state
        if st.best_epoch == 0:
            return True
        if val:
            return st.best_val_acc is None or val["val_acc"] > st.best_val_acc
        return test["test_acc"] > st.best_acc

    # -- checkpoints
    def _checkpoint(self, epoch: int, test: dict[str, float], rngs: list[dict[str, Any]],
                    line: dict[str, Any]) -> CheckpointRecord:
        r = self.run
        cfg, info, st = r.cfg, r.data.info, r.state
        return CheckpointRecord(
            model=cfg.model, num_classes=r.data.num_classes, in_channels=r.data.in_channels,
            input_size=r.data.input_size, mean=[float(x) for x in info["mean"]],
            std=[float(x) for x in info["std"]], dataset=cfg.dataset, method=cfg.method_spec,
            teacher=cfg.teacher, teacher_model=r.models.teacher_meta.get("model"),
            student=r.models.student.state_dict(), extras=r.models.distiller.extras_state_dict(),
            optimizer=r.optimizer.state_dict(), scheduler=r.scheduler.state_dict(),
            scaler=r.scaler.state_dict() if r.scaler is not None else None,
            rng=rngs[0], rng_per_rank=rngs if len(rngs) > 1 else None,  # DDP: each rank its own streams
            world_size=r.env.world_size,
            # the metrics rows up to this epoch: checkpoint and row commit together (see MetricsLog)
            metrics=[json_safe(x) for x in r.metrics.rows + [line]],
            epoch=epoch, best_acc=st.best_acc, best_val_acc=st.best_val_acc, best_epoch=st.best_epoch,
            test_acc=test["test_acc"], val_acc=test.get("val_acc"), config=cfg.to_dict())

    def _save(self, epoch: int, test: dict[str, float], improved: bool, line: dict[str, Any]) -> None:
        r = self.run
        due = epoch % r.cfg.save_every == 0 or epoch == r.cfg.epochs
        if not (due or improved):  # the same on every rank: test accuracy is all-reduced
            return
        rngs = [capture_rng()]
        if r.env.enabled:
            rngs = [None] * r.env.world_size  # type: ignore[list-item]
            torch.distributed.all_gather_object(rngs, capture_rng())
        if due:
            r.state.last_saved = epoch
        if not r.env.is_main:
            return
        state = self._checkpoint(epoch, test, rngs, line).to_dict()
        if due:
            atomic_save(state, r.out / LAST)
        if improved:
            if due:
                atomic_copy(r.out / LAST, r.out / BEST)
            else:
                atomic_save(state, r.out / BEST)

    def _kept(self) -> str:
        """What survives a stop for NaN/inf, for the error message."""
        last = self.run.state.last_saved
        return (f"the last good checkpoint {str(self.run.out / LAST)!r} (epoch {last}) is kept"
                if last >= 1 else "no checkpoint had been written yet")

    def _check_state(self, epoch: int, test: dict[str, float]) -> None:
        r = self.run
        check_state_finite({"student": r.models.student.state_dict(),
                            "extras": r.models.distiller.extras_state_dict(),
                            "optimizer": r.optimizer.state_dict()["state"]},
                           test["test_loss"], epoch, r.device, r.env, self._kept)

    # -- the run
    def fit(self) -> dict[str, Any]:
        """Train the remaining epochs; each one commits (checkpoint, then its metrics line) as a unit.
        Returns the run.json summary."""
        r = self.run
        cfg, st, log = r.cfg, r.state, r.log
        if st.start_epoch > cfg.epochs:
            log.note(f"{cfg.out} already finished {st.start_epoch - 1} epochs; raise --epochs to train more")
        if st.rng is not None:
            restore_rng(st.rng)
        if st.start_epoch == 1:
            log.say(f"training {cfg.model} ({r.models.num_params / 1e6:.2f}M params) with {cfg.method_spec} "
                    f"on {cfg.dataset} for {cfg.epochs} epochs on {r.device}"
                    + (f" x{r.env.world_size} processes" if r.env.enabled else "") + f" → {cfg.out}")
            log.say(f"precision: {r.precision.describe()}")
        t_start = time.perf_counter()
        last_test: dict[str, float] = {}
        for epoch in range(st.start_epoch, cfg.epochs + 1):
            t0 = time.perf_counter()
            lr = r.optimizer.param_groups[0]["lr"]
            rec = self.train_epoch(epoch)
            r.scheduler.step()
            val, test, extras = self._evaluate()
            self._check_state(epoch, test)
            improved = self._improved(test, val)
            if improved:
                st.best_acc, st.best_epoch = test["test_acc"], epoch
                if val:
                    st.best_val_acc = val["val_acc"]
            line = EpochRecord(
                epoch=epoch, lr=lr, train_loss=rec["train_loss"], train_acc=rec["train_acc"],
                terms={k[len("train_"):]: v for k, v in rec.items()
                       if k not in ("train_loss", "train_acc", "train_images", "images_per_s")},
                train_images=rec["train_images"], images_per_s=rec["images_per_s"],
                val_loss=val.get("val_loss"), val_acc=val.get("val_acc"),
                test_loss=test["test_loss"], test_acc=test["test_acc"],
                test_top5=test["test_top5"] if r.data.num_classes > 5 else None,
                best_val_acc=st.best_val_acc if val else None, best_acc=st.best_acc,
                epoch_time_s=time.perf_counter() - t0, extras=extras or None).to_dict()
            self._save(epoch, test, improved, line)  # the commit point: last.pt holds this row too
            r.metrics.write(line)
            if self.on_epoch is not None:
                self.on_epoch(epoch, val.get("val_acc"))
            if not last_test:
                note = eta_note(cfg.epochs - epoch, line["epoch_time_s"], r.device)
                if note:
                    log.note(note)
            last_test = test
            shown = (f"val {val['val_acc']:.2f}% (best {st.best_val_acc:.2f}%)  test {test['test_acc']:.2f}%"
                     if val else f"test {test['test_acc']:.2f}% (best {st.best_acc:.2f}%)")
            log.say(f"epoch {epoch:>3}/{cfg.epochs}  lr {lr:.4g}  loss {rec['train_loss']:.4f}  "
                    f"train {rec['train_acc']:.2f}%  {shown}  "
                    f"{rec['images_per_s']:.0f} img/s  {line['epoch_time_s']:.1f}s")
        return self._finish(last_test, time.perf_counter() - t_start)

    def _finish(self, last_test: dict[str, float], train_time_s: float) -> dict[str, Any]:
        """Write run.json (rank 0) and say how the run ended. ``last_test`` is empty when no epoch ran now."""
        r = self.run
        cfg, env, st, log = r.cfg, r.env, r.state, r.log
        divergence = D.param_divergence(r.models.student, env)
        final = r.metrics.rows[-1] if r.metrics.rows else last_test
        pinned = attention_pinned(final.get("extras"))
        if env.enabled and divergence > 0:
            log.note(f"warning: student parameters differ across processes (max |diff| {divergence:.3g})")
        summary = RunSummary(
            kind=cfg.kind, model=cfg.model, dataset=cfg.dataset, method=cfg.method_spec,
            teacher=cfg.teacher, teacher_model=r.models.teacher_meta.get("model"),
            epochs=cfg.epochs, best_acc=st.best_acc, best_epoch=st.best_epoch,
            selected_by="val_acc" if r.data.val is not None else "test_acc",
            best_val_acc=st.best_val_acc, val_split=cfg.val_split, seed=cfg.seed,
            final_acc=final.get("test_acc"), final_top5=final.get("test_top5"),
            final_val_acc=final.get("val_acc"),
            num_params=r.models.num_params, world_size=env.world_size, device=str(r.device),
            amp=r.precision.amp, channels_last=r.precision.channels_last,
            train_time_s=train_time_s, ddp_param_max_abs_diff=divergence,
            notes=[pinned] if pinned else None,
        ).to_dict()
        if not env.is_main:
            return summary
        run_json = r.out / "run.json"
        if not last_test and run_json.exists():  # nothing trained now: keep the finished run's summary
            summary = json.loads(run_json.read_text())
        else:
            if not last_test:  # killed after its last checkpoint, before run.json: finish the record
                summary["train_time_s"] = sum(x.get("epoch_time_s") or 0.0 for x in r.metrics.rows)
            write_summary(r.out, summary)
        if r.data.val is not None:
            log.say(f"done: best validation accuracy {st.best_val_acc:.2f}% at epoch {st.best_epoch} "
                    f"(test {st.best_acc:.2f}%, recorded only); checkpoints in {cfg.out}")
        else:
            log.say(f"done: best test accuracy {st.best_acc:.2f}% (epoch {st.best_epoch}); "
                    f"checkpoints in {cfg.out}")
        for note in summary.get("notes") or []:
            log.note(note)
        return summary


@contextlib.contextmanager
def open_run(cfg: TrainConfig, data_spec: Any = None) -> Iterator[Run]:
    """The :class:`Run` of ``cfg`` (on ``data_spec``, a user's data, when given), set up in deterministic
    mode when asked; on exit its metrics log, forward hooks and process group are closed (also when
    setup fails halfway)."""
    # a TrainConfig built in Python skips load_config: the one option rule runs here too (idempotent)
    cfg.method_args = check_method(cfg.method_spec, cfg.method_args)
    with determinism(cfg.deterministic), contextlib.ExitStack() as cleanup:
        try:
            yield build_run(cfg, cleanup, data_spec)
        except torch.OutOfMemoryError:
            raise UserError(f"out of device memory with batch size {cfg.batch_size}; lower --batch-size "
                            "or try --amp bf16 (the last checkpoint, if any, is kept)") from None


def train(cfg: TrainConfig, train_data: Any = None, test_data: Any = None, val_data: Any = None, *,
          on_epoch: Callable[[int, float | None], None] | None = None, **data_options: Any) -> dict[str, Any]:
    """Run (or resume) the training described by ``cfg``; returns the run.json summary.

    ``on_epoch(epoch, val_acc)`` is called after each epoch's checkpoint (``val_acc`` None without a
    validation split); what it raises ends the training there, e.g. a sweep's pruner stopping a cell,
    which stays resumable from that ``last.pt``.

    ``train_data``/``test_data`` (and optional ``val_data``) replace ``cfg.dataset`` with a user's own
    data: a map-style Dataset of ``(image, label)`` or an ``(images, labels)`` pair; ``data_options`` are
    :func:`semckd.data.user.user_spec`'s (``num_classes``, ``transform``, ...).
    """
    spec = None
    if train_data is not None or test_data is not None or val_data is not None or data_options:
        from .data.user import user_spec
        spec = user_spec(train_data, test_data, val_data, name=cfg.dataset, **data_options)
    with open_run(cfg, spec) as run:
        return Trainer(run, on_epoch).fit()
