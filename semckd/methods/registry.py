"""The method registry: method names → :class:`~semckd.methods.base.Distiller` subclasses.

It lives apart from ``base.py`` so the base class knows nothing about the registry or about
combinations (``combine.py`` imports this module, never the other way round), and it is the one place
that turns a method *spec* — ``"semckd"`` or a combination ``"semckd+crd"`` — plus its options into
answers the engine, the config loader and the exporter need before any model or data exists: which
methods, do they need a teacher, are they tied to the training batch size, is the deployable network
the bare student. Each of those is a declaration on the method's class, so no code outside a method's
own file ever tests for a method's name.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from .base import Distiller

__all__ = [
    "any_batch_size_hint",
    "check_options",
    "deployable_is_student",
    "get_method",
    "list_methods",
    "method_names",
    "method_options",
    "needs_full_batches",
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


def get_method(name: str) -> type[Distiller]:
    if name not in _METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of: {', '.join(list_methods())} "
                         "(combine with '+', e.g. semckd+crd)")
    return _METHODS[name]


def method_options(name: str) -> dict[str, Any]:
    """The options a method accepts, with their defaults (keyword-only constructor arguments of the
    class and its Distiller bases; a leading ``_`` marks an internal argument)."""
    cls = get_method(name)
    out: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        if klass is object or not issubclass(klass, Distiller):
            continue
        for p in inspect.signature(klass.__init__).parameters.values():
            if p.kind is p.KEYWORD_ONLY and not p.name.startswith("_"):
                out[p.name] = p.default
    return out


def check_options(name: str, opts: Mapping[str, Any]) -> None:
    """Reject options ``name`` does not accept (a typo must not silently train with a default)."""
    valid = method_options(name)
    for k in opts:
        if k not in valid:
            raise ValueError(f"method {name!r} has no option {k!r}; "
                             f"valid options: {', '.join(sorted(valid))}")


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
