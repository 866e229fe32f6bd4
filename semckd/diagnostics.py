"""Reading a layer attention from a run's per-epoch summary: is it pinned at a corner of its range?

A learned SemCKD weight is a softmax of cosines (divided by a temperature τ), so for T teacher layers it
lies in a box ``[lo, hi]`` (:func:`semckd.criterion.softmax_box`). When every mean logit sits at ±1 the
weights sit at a corner of that box: every sample's query has collapsed onto one vector and the
"calibration" no longer depends on the input. The engine notes it at the end of a run and ``semckd
report`` flags it, so a user sees it without opening a plot.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["PINNED_LOGIT", "attention_pinned", "corner_weights"]

# a mean cosine this close to ±1 means (almost) every sample's logit is at the bound
PINNED_LOGIT = 0.95
# α-only records (runs from before logits were logged): a row this close to a corner counts as pinned
_CORNER_TOL = 0.01


def corner_weights(num_teacher: int, num_high: int, temperature: float = 1.0) -> tuple[float, float]:
    """(high, low) weights of a row whose ``num_high`` logits are +1 and the rest −1."""
    up, down = math.exp(1.0 / temperature), math.exp(-1.0 / temperature)
    z = num_high * up + (num_teacher - num_high) * down
    return up / z, down / z


def _matrix(value: Any) -> list[list[float]] | None:
    if not isinstance(value, list) or not value or not all(isinstance(r, list) and r for r in value):
        return None
    try:
        return [[float(v) for v in r] for r in value]
    except (TypeError, ValueError):
        return None


def _row_at_corner(row: list[float], temperature: float) -> bool:
    t = len(row)
    for k in range(1, t):
        hi, lo = corner_weights(t, k, temperature)
        ranked = sorted(row, reverse=True)
        if all(abs(v - hi) <= _CORNER_TOL for v in ranked[:k]) and all(
                abs(v - lo) <= _CORNER_TOL for v in ranked[k:]):
            return True
    return False


def attention_pinned(extras: Mapping[str, Any] | None) -> str | None:
    """A one-line note when an epoch summary's learned attention is pinned at a corner, else None.

    Uses the mean logits when recorded (every |mean ⟨q, k⟩| ≥ :data:`PINNED_LOGIT`), else the weights
    themselves (every row within 0.01 of a corner at τ = 1). Fixed attentions are never "pinned"."""
    if not extras or extras.get("attention_mode", "learned") != "learned":
        return None
    att = _matrix(extras.get("attention"))
    if att is None or len(att[0]) < 2:
        return None
    temperature = float(extras.get("attention_temperature") or 1.0)
    logits = _matrix(extras.get("attention_logit"))
    if logits is not None:
        pinned = all(abs(v) >= PINNED_LOGIT for row in logits for v in row)
    else:
        pinned = all(_row_at_corner(row, temperature) for row in att)
    if not pinned:
        return None
    rows = sorted({" / ".join(f"{v:.2f}" for v in row) for row in att})
    return (f"learned attention pinned at a corner of its range (every mean logit at ±1): student rows "
            f"{'; '.join(rows)}; it no longer depends on the input — compare with "
            f"--method-args attention=uniform (semckd sweep --grid attention=learned,uniform,one_to_one)")
