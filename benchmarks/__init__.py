"""Measurement code and the scripts behind BENCHMARKS.md; part of the source checkout, not of the installed
``semckd`` package (pyproject ships ``semckd*`` only)."""
