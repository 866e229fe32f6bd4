"""Figures from run folders: SemCKD's learned layer attention, and training curves of several runs.

matplotlib is optional (``pip install matplotlib`` or the ``plot`` extra); it is imported only when a
figure is drawn. Figures are built with ``matplotlib.figure.Figure`` and the Agg canvas directly, so
no GUI backend is needed and a user's pyplot state is never touched.

The attention heatmaps read ``extras.attention`` (an S×T nested list: student layer × teacher layer,
the soft association α averaged over the test set) from each epoch's line in ``metrics.jsonl``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .atomic import atomic_path
from .errors import UserError
from .report import load_run
from .runfolder import EpochRecord, read_epochs

__all__ = ["attention_by_epoch", "pick_epochs", "plot_attention", "plot_curves"]

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


def plot_attention(run_dir: str | os.PathLike, out_path: str | os.PathLike | None = None,
                   epoch: int | None = None, max_panels: int = 4) -> Path:
    """Heatmaps of the learned student×teacher layer attention; returns the written file.

    One panel per chosen epoch (``epoch=None``: first, a few middle ones, last), all on one 0..1
    colour scale so panels are comparable. Default output: ``RUN_DIR/attention.png``.
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
    s_dim, t_dim = len(by_epoch[chosen[0]][0]), len(by_epoch[chosen[0]][0][0])
    panel_w = max(2.4, 0.55 * t_dim + 1.2)
    panel_h = max(2.2, 0.45 * s_dim + 1.0)
    fig = _figure(figsize=(panel_w * len(chosen) + 1.0, panel_h + 0.6))
    axes = fig.subplots(1, len(chosen), squeeze=False)[0]
    image = None
    for ax, e in zip(axes, chosen, strict=True):
        mat, extras = by_epoch[e]
        image = ax.imshow(mat, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
        ax.set_title(f"epoch {e}")
        ax.set_xticks(range(len(mat[0])), _layer_labels(extras, "teacher_layers", len(mat[0]), "t"),
                      rotation=45, ha="right")
        ax.set_yticks(range(len(mat)), _layer_labels(extras, "student_layers", len(mat), "s"))
        ax.set_xlabel("teacher layer")
        if len(mat) * len(mat[0]) <= 64:
            for i, row in enumerate(mat):
                for j, v in enumerate(row):
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                            color="black" if v > 0.6 else "white")
    axes[0].set_ylabel("student layer")
    assert image is not None
    fig.colorbar(image, ax=list(axes), fraction=0.046 / max(1, len(chosen)) + 0.02, label="attention α")
    fig.suptitle(f"{run_dir.name}: learned layer attention (test-set mean)", fontsize=10)
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
