"""The method registry: method names → :class:`~semckd.methods.base.Distiller` subclasses.

It lives apart from ``base.py`` so the base class knows nothing about the registry or about
combinations (``combine.py`` imports this module, never the other way round), and it is the one place
that turns a method *spec* — ``"semckd"`` or a combination ``"semckd+crd"`` — plus its options into
answers the engine, the config loader and the exporter need before any model or data exists: which
methods, do they need a teacher, are they tied to the training batch size, is the deployable network
the bare student. Each of those is a declaration on the method's class, so no code outside a method's
own file ever tests for a method's name.

:func:`check_options` is the one check of a spec's options (names with a close match, types and ranges
from the signature, see :mod:`semckd.methods.options`); config load and ``build_distiller`` call it.
"""

from __future__ import annotations

import difflib
import inspect
import typing
from collections import Counter
from collections.abc import Mapping
from typing import Any

from .base import Distiller
from .options import OptionSpec, check_value

__all__ = [
    "any_batch_size_hint",
    "changes_forward",
    "check_options",
    "deployable_is_student",
    "get_method",
    "list_methods",
    "method_names",
    "method_options",
    "needs_full_batches",
    "option_specs",
    "needs_teacher",
    "register_method",
    "split_options",
]

_METHODS: dict[str, type[Distiller]] = {}


def register_method(cls: type[Distiller]) -> type[Distiller]:
    """Class decorator: make ``cls`` selectable as ``--method cls.name``."""
    if not cls.name or cls.name in _METHODS:
        raise ValueError(f"method name {cls.name!r} is empty or taken")
    _METHODS[cls.name] = cls
    return cls


def list_methods() -> list[str]:
    return sorted(_METHODS)


def _close(word: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(str(word), valid, n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else ""


def get_method(name: str) -> type[Distiller]:
    if name not in _METHODS:
        hint = _close(name, list_methods())
        raise ValueError(f"unknown method {name!r}; {hint or 'choose one of: ' + ', '.join(list_methods())} "
                         "(combine with '+', e.g. semckd+crd)")
    return _METHODS[name]


def option_specs(method: str | type[Distiller]) -> dict[str, OptionSpec]:
    """The options a method (a registered name, or a class not registered yet) accepts: keyword-only
    constructor arguments of the class and its Distiller bases (a leading ``_`` marks an internal
    argument), each with its annotation — type and range, see :mod:`semckd.methods.options` — and
    default. A subclass's annotation and default win."""
    cls = get_method(method) if isinstance(method, str) else method
    name = cls.name
    out: dict[str, OptionSpec] = {}
    for klass in reversed(cls.__mro__):
        if klass is object or not issubclass(klass, Distiller) or "__init__" not in vars(klass):
            continue
        init = vars(klass)["__init__"]
        try:
            hints = typing.get_type_hints(init, include_extras=True)
        except (NameError, TypeError):  # an annotation naming something local: those options go unchecked
            hints = {}
        for p in inspect.signature(init).parameters.values():
            if p.kind is p.KEYWORD_ONLY and not p.name.startswith("_"):
                out[p.name] = OptionSpec(name, p.name, hints.get(p.name), p.default)
    return out


def method_options(name: str) -> dict[str, Any]:
    """The options a method accepts, with their defaults (see :func:`option_specs`)."""
    return {k: s.default for k, s in option_specs(name).items()}


def changes_forward(cls: type[Distiller]) -> str | None:
    """Which forward-pass method ``cls`` overrides (it then cannot share a combination's pass)."""
    for attr in ("forward", "student_forward", "teacher_forward"):
        if getattr(cls, attr) is not getattr(Distiller, attr):
            return attr
    return None


def _check_one(name: str, opts: Any, where: str, prefix: str) -> dict[str, Any]:
    if not isinstance(opts, Mapping):
        raise ValueError(f"{where} must be a mapping of option: value, got {opts!r}")
    specs = option_specs(name)
    out: dict[str, Any] = {}
    for k, v in opts.items():
        if k not in specs:
            hint = _close(str(k), sorted(specs)) or f"valid options: {', '.join(sorted(specs))}"
            raise ValueError(f"method {name!r} has no option {k!r} ({where}); {hint}")
        out[k] = check_value(specs[k], v, prefix)
    return out


def check_options(spec: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The options of ``spec`` checked once: every method name known, every option name known (with a
    close match), every value of its declared type and range. A combination's options are keyed by
    member. Returns them as the methods take them (``"1e3"`` → ``1000.0``, see
    :func:`~semckd.methods.options.check_value`); raises a one-line ``ValueError`` otherwise."""
    names = method_names(spec)
    if not names:
        raise ValueError("empty method name; e.g. --method semckd")
    for n in names:
        get_method(n)
    options = {} if options is None else options
    if len(names) == 1:
        return _check_one(names[0], options, "method_args", "")
    dup = [m for m, c in Counter(names).items() if c > 1]
    if dup:
        raise ValueError(f"method {dup[0]!r} is listed twice in the combination; list each method once")
    for n in names:
        changed = changes_forward(get_method(n))
        if changed:
            raise ValueError(f"method {n!r} changes the forward pass ({get_method(n).__name__}.{changed}) "
                             f"and cannot be combined with others; run it alone (--method {n})")
    if not isinstance(options, Mapping):
        raise ValueError(f"method_args must be a mapping of method: options, got {options!r}")
    out: dict[str, Any] = {}
    for k, sub in options.items():
        if k not in names:
            raise ValueError(f"options for the combination {spec!r} are keyed by method name "
                             f"({', '.join(names)}), e.g. --method-args {names[0]}.{k}=...; got {k!r}")
        out[k] = _check_one(k, sub, f"method_args.{k}", f"{k}.")
    return out


# ---------------------------------------------------------------------- specs: "a" or "a+b"
def method_names(spec: str) -> list[str]:
    """``"semckd+crd"`` → ``["semckd", "crd"]`` (blanks dropped; names are not checked here)."""
    return [n.strip() for n in str(spec).split("+") if n.strip()]


def split_options(spec: str, options: Mapping[str, Any] | None) -> list[tuple[str, dict[str, Any]]]:
    """Each method of ``spec`` with its own options: a single method takes the flat dict, a
    combination a dict keyed by method name (``{"semckd": {"beta": 400}}``; a member may be absent)."""
    names = method_names(spec)
    options = dict(options or {})
    if len(names) == 1:
        return [(names[0], options)]
    return [(n, dict(options.get(n) or {})) for n in names]


def needs_teacher(spec: str) -> bool:
    """Whether any method of ``spec`` needs a teacher (unknown names raise ``ValueError``)."""
    return any(get_method(n).needs_teacher for n in method_names(spec))


def needs_full_batches(spec: str, options: Mapping[str, Any] | None = None) -> bool:
    """Whether ``spec`` built with ``options`` is tied to the training batch size, so every training
    batch must be full. Asked before any data is built: the engine then has the loader drop the last
    partial batch instead of every consumer checking batch sizes (see
    :meth:`Distiller.needs_full_batches`)."""
    return any(get_method(n).needs_full_batches(opts) for n, opts in split_options(spec, options))


def any_batch_size_hint(spec: str, options: Mapping[str, Any] | None = None) -> str:
    """The options that lift the full-batch requirement, as ``--method-args`` would take them
    (``"mode=batch_free"``), when ``spec`` is one method that declares them; else ``""``."""
    parts = split_options(spec, options)
    if len(parts) != 1:
        return ""
    lift = get_method(parts[0][0]).any_batch_size_options
    return " ".join(f"{k}={v}" for k, v in lift.items())


def deployable_is_student(spec: str) -> bool:
    """Whether the network a run of ``spec`` deploys is its bare student (every method but those
    that answer through extra modules, e.g. SimKD's projector + the teacher's classifier). A name
    this process has not registered (a user's method from another session) counts as a plain
    student: its checkpoint's student weights are all there is to load."""
    return all(n not in _METHODS or _METHODS[n].deployable_is_student for n in method_names(spec))
