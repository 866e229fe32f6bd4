"""``MODULE:NAME`` import paths, the one rule behind ``--model pkg.mod:factory`` and ``--dataset mod:load``.

Written here rather than taken from ``importlib``/``pkgutil.resolve_name`` because the CLI needs two things
those do not give: the current folder searched when the ``semckd`` executable does not see it, and every
failure (no module, the module raising at import, no such attribute, not callable) as one named line.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from typing import Any

from .errors import UserError

__all__ = ["import_callable"]


def import_callable(spec: str, *, what: str, form: str, example: str,
                    not_callable: str) -> Callable[..., Any]:
    """The callable ``spec`` (``module:attr``, ``attr`` may be dotted) names. ``what`` starts each error
    (``model``, ``dataset``), ``form``/``example`` show the expected shape, ``not_callable`` ends the error
    for an attribute that is not callable."""
    mod_name, _, attr = spec.partition(":")
    mod_name, attr = mod_name.strip(), attr.strip()
    if not mod_name or not attr:
        raise UserError(f"{what} {spec!r}: expected {form}, e.g. {example}")
    try:
        try:
            obj: Any = importlib.import_module(mod_name)
        except ModuleNotFoundError as e:
            # the `semckd` executable, unlike `python -m`, does not see the current folder: look there too
            cwd = os.getcwd()
            if e.name != mod_name.split(".")[0] or "" in sys.path or cwd in sys.path:
                raise
            sys.path.append(cwd)
            obj = importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        if e.name and (mod_name == e.name or mod_name.startswith(e.name + ".")):
            raise UserError(f"{what} {spec!r}: no module named {e.name!r}; run from the folder that holds it "
                            "or add that folder to PYTHONPATH") from e
        raise UserError(f"{what} {spec!r}: importing {mod_name!r} failed: {e}") from e
    except Exception as e:  # noqa: BLE001 - the user's module may raise anything at import time
        first = (str(e).strip().splitlines() or [""])[0]
        raise UserError(f"{what} {spec!r}: importing {mod_name!r} failed ({type(e).__name__}: {first}); "
                        "SEMCKD_DEBUG=1 shows the traceback") from e
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = sorted(k for k, v in vars(obj).items() if callable(v) and not k.startswith("_"))
            raise UserError(f"{what} {spec!r}: {mod_name!r} has no attribute {attr!r}; "
                            f"it defines: {', '.join(names[:12]) or 'nothing callable'}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UserError(f"{what} {spec!r}: {attr!r} is a {type(obj).__name__}, not {not_callable}")
    return obj
