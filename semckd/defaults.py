"""The two method names the library itself refers to, kept here so no module outside a method's own file
and the registry spells one: the teacher-free baseline every report compares against, and the method a
run uses when none is given (the one this library is built around). Dependency-free, so the config
loader and the CLI can import it before torch or the method registry."""

from __future__ import annotations

__all__ = ["BASELINE_METHOD", "DEFAULT_METHOD", "REPORT_FIRST"]

BASELINE_METHOD = "vanilla"  # cross-entropy only, no teacher; what `train-teacher` runs
DEFAULT_METHOD = "semckd"
# rows a report lists first, in this order: no teacher, then plain logit distillation (the usual baselines)
REPORT_FIRST = (BASELINE_METHOD, "kd")
