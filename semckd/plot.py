"""Figures from run folders: SemCKD's learned layer attention, and training curves of several runs.

matplotlib is optional (``pip install matplotlib`` or the ``plot`` extra); it is imported only when a
figure is drawn. Figures are built with ``matplotlib.figure.Figure`` and the Agg canvas directly, so
no GUI backend is needed and a user's pyplot state is never touched.

The attention heatmaps read ``extras.attention`` (an S×T nested list: student layer × teacher layer,
the soft association α averaged over the validation split, or the test set in a run without one) and,
where recorded, ``pair_mse``, ``attention_logit`` and ``attention_box`` from each epoch's line in
``metrics.jsonl``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .atomic import atomic_path
from .diagnostics import attention_pinned
from .errors import UserError
from .report import load_run
from .runfolder import EpochRecord, read_config, read_epochs

__all__ = ["attention_by_epoch", "pick_epochs", "plot_attention", "plot_curves", "split_label"]

_MISSING = "plotting needs matplotlib, which is not installed: pip install matplotlib"


def _figure(**kw: Any):
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise UserError(_MISSING) from e
    return Figure(**kw)


def _save(fig, out_path: str | os.PathLike) -> Path:
    """Render with the Agg canvas into a temp file beside the target, then replace it atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    out = Path(out_path)
    fmt = out.suffix.lstrip(".").lower() or "png"
    FigureCanvasAgg(fig)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format=fmt, dpi=120, bbox_inches="tight")
    return out


def attention_by_epoch(run_dir: str | os.PathLike) -> list[tuple[int, list[list[float]], dict[str, Any]]]:
    """``[(epoch, S×T matrix, extras)]`` for every epoch whose metrics line carries an attention matrix."""
    out = []
    for rec in read_epochs(run_dir):
        extras = rec.extras or {}
        att = extras.get("attention")
        if not att or not isinstance(att, list) or not all(isinstance(r, list) and r for r in att):
            continue
        width = len(att[0])
        if any(len(r) != width for r in att):
            raise UserError(f"epoch {rec.epoch} of {run_dir} has a ragged attention matrix; "
                            "each student row needs one weight per teacher layer")
        out.append((rec.epoch, [[float(v) for v in r] for r in att], extras))
    return out


def pick_epochs(epochs: Sequence[int], max_panels: int = 4) -> list[int]:
    """First, evenly spaced middle ones, and last: a short story of how the attention settled."""
    if len(epochs) <= max_panels:
        return list(epochs)
    n = len(epochs)
    idx = sorted({round(k * (n - 1) / (max_panels - 1)) for k in range(max_panels)})
    return [epochs[i] for i in idx]


def _layer_labels(extras: dict[str, Any], key: str, n: int, prefix: str) -> list[str]:
    names = extras.get(key)
    if isinstance(names, list) and len(names) == n:
        return [str(x) for x in names]
    return [f"{prefix}{i + 1}" for i in range(n)]


def split_label(run_dir: Path, extras: dict[str, Any]) -> str:
    """Which images the summary was averaged over: the record says; older records follow the engine's
    rule (the validation split when the run has one, else the test set)."""
    where = extras.get("observed_on")
    if where is None:
        where = "val" if read_config(run_dir).get("val_split") else "test"
    return "validation-split mean" if where == "val" else "test-set mean"


def _annotate(ax, mat: list[list[float | None]], logits: list[list[float]] | None, bright: float) -> None:
    if len(mat) * len(mat[0]) > 64:
        return
    for i, row in enumerate(mat):
        for j, v in enumerate(row):
            text = "—" if v is None else f"{v:.2f}" if v < 100 else f"{v:.3g}"
            if logits is not None:
                text += f"\n{logits[i][j]:+.2f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=7,
                    color="black" if v is not None and v > bright else "white")


def plot_attention(run_dir: str | os.PathLike, out_path: str | os.PathLike | None = None,
                   epoch: int | None = None, max_panels: int = 4) -> Path:
    """SemCKD's student×teacher layer attention next to what it weights; returns the written file.

    One row per chosen epoch (``epoch=None``: first, a few middle ones, last): the mean α (with the mean
    logit ⟨q, k⟩ under it, for learned attention) beside the mean projected MSE of each pair. α panels
    share one 0..1 scale; the range a learned weight can take (``attention_box``) is marked on its
    colour bar, so an attention pinned at a corner is visible. The title says which split the means
    were taken on. Default output: ``RUN_DIR/attention.png``.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run folder {run_dir} does not exist")
    data = attention_by_epoch(run_dir)
    if not data:
        raise UserError(f"{run_dir}/metrics.jsonl has no 'extras.attention' entries; attention is recorded "
                        "by methods that learn a layer association (e.g. --method semckd)")
    by_epoch = {e: (m, x) for e, m, x in data}
    if epoch is not None:
        if epoch not in by_epoch:
            raise UserError(f"epoch {epoch} has no attention in {run_dir}; available: "
                            f"{', '.join(map(str, sorted(by_epoch)))}")
        chosen = [epoch]
    else:
        chosen = pick_epochs(sorted(by_epoch), max_panels)
    last = by_epoch[chosen[-1]][1]
    has_mse = any(isinstance(by_epoch[e][1].get("pair_mse"), list) for e in chosen)
    s_dim, t_dim = len(by_epoch[chosen[0]][0]), len(by_epoch[chosen[0]][0][0])
    panel_w = max(2.6, 0.6 * t_dim + 1.2)
    panel_h = max(2.2, 0.5 * s_dim + 1.0)
    cols = 2 if has_mse else 1
    fig = _figure(figsize=(panel_w * cols + 2.0, panel_h * len(chosen) + 0.9), layout="constrained")
    axes = fig.subplots(len(chosen), cols, squeeze=False)
    mses = [v for e in chosen for row in (by_epoch[e][1].get("pair_mse") or []) for v in row
            if isinstance(v, (int, float))]
    mse_max = max(mses) if mses else 1.0
    image = mse_image = None
    for r, e in enumerate(chosen):
        mat, extras = by_epoch[e]
        t_labels = _layer_labels(extras, "teacher_layers", len(mat[0]), "t")
        s_labels = _layer_labels(extras, "student_layers", len(mat), "s")
        logits = extras.get("attention_logit") if isinstance(extras.get("attention_logit"), list) else None
        ax = axes[r][0]
        image = ax.imshow(mat, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
        mode = extras.get("attention_mode", "learned")
        ax.set_title(f"epoch {e}: α ({mode})" + (", logit below" if logits else ""), fontsize=9)
        _annotate(ax, mat, logits, 0.6)
        panels = [ax]
        if has_mse:
            mse = extras.get("pair_mse") or [[None] * len(mat[0]) for _ in mat]
            grid = [[float("nan") if v is None else float(v) for v in row] for row in mse]
            ax2 = axes[r][1]
            mse_image = ax2.imshow(grid, vmin=0.0, vmax=mse_max, cmap="magma", aspect="auto")
            ax2.set_title(f"epoch {e}: projected MSE", fontsize=9)
            _annotate(ax2, mse, None, 0.6 * mse_max)
            panels.append(ax2)
        for a in panels:
            a.set_xticks(range(len(mat[0])), t_labels, rotation=45, ha="right")
            a.set_yticks(range(len(mat)), s_labels)
        ax.set_ylabel("student layer")
        if r == len(chosen) - 1:
            for a in panels:
                a.set_xlabel("teacher layer")
    assert image is not None
    bar = fig.colorbar(image, ax=[row[0] for row in axes], label="attention α", shrink=0.9)
    box = last.get("attention_box")
    if last.get("attention_mode", "learned") == "learned" and isinstance(box, list) and len(box) == 2:
        for v in box:
            bar.ax.axhline(float(v), color="red", linewidth=1.5)
        bar.ax.set_title(f"range\n{box[0]:.2f}–\n{box[1]:.2f}", fontsize=7, color="red")
    if mse_image is not None:
        fig.colorbar(mse_image, ax=[row[1] for row in axes], label="projected MSE", shrink=0.9)
    pinned = attention_pinned(last)
    title = f"{run_dir.name}: layer attention, {split_label(run_dir, last)}"
    if pinned:
        title += "\npinned at a corner of its range (red lines): it no longer depends on the input"
    fig.suptitle(title, fontsize=10)
    return _save(fig, out_path if out_path is not None else run_dir / "attention.png")


def _series(rows: list[EpochRecord], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for r in rows:
        v = r.get(key)
        if isinstance(v, (int, float)):
            xs.append(r.epoch)
            ys.append(float(v))
    return xs, ys


def plot_curves(run_dirs: Sequence[str | os.PathLike], out_path: str | os.PathLike) -> Path:
    """Train loss and test (and validation, where the run has a split) accuracy against epoch, one line
    per run, labelled ``name (method)``."""
    if not run_dirs:
        raise UserError("plot curves needs at least one run folder")
    fig = _figure(figsize=(11, 4))
    ax_loss, ax_acc = fig.subplots(1, 2)
    has_val = False
    for d in run_dirs:
        rows = read_epochs(d)
        if not rows:
            raise UserError(f"{d} has no metrics.jsonl lines; pass folders of runs that finished an epoch")
        info = load_run(d)
        label = f"{info.name} ({info.method})"
        ax_loss.plot(*_series(rows, "train_loss"), marker=".", label=label)
        line = ax_acc.plot(*_series(rows, "test_acc"), marker=".", label=f"{label} test")[0]
        val = _series(rows, "val_acc")
        if val[0]:  # a validation split: val dashed, in the run's colour
            ax_acc.plot(*val, marker="x", linestyle="--", color=line.get_color(), label=f"{label} val")
            has_val = True
    ax_loss.set(xlabel="epoch", ylabel="train loss", title="training loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)",
               title="validation (dashed) and test accuracy" if has_val else "test accuracy")
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_acc.legend(fontsize=8, loc="lower right")
    return _save(fig, out_path)
