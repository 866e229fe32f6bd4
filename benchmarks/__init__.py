"""Measurement code and the jobs behind BENCHMARKS.md: ``python -m benchmarks <job>`` from the checkout
root (``python -m benchmarks`` lists them). Part of the source checkout, not of the installed ``semckd``
package (pyproject ships ``semckd*`` only)."""
