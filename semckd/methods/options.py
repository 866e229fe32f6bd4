"""Typed method options: the type and range of every option, read from the method's signature.

A method's options are the keyword-only arguments of its constructor (and of its ``Distiller`` bases).
Their annotations are the declaration: a plain type (``bool``, ``str | int``, ``list[int] | None``) or an
``Annotated`` one carrying a :class:`Range` (numbers) or :class:`OneOf` (string choices). The aliases
below name the common ones, so a signature reads ``beta: Weight = 400.0``. :func:`check_value` is the one
rule every door applies (config load, ``--method-args``, ``--set``, sweep grids, ``build_distiller``);
methods do not re-check their options.

Only this module knows how a type is checked; it knows nothing of the registry.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from ..features import LayerName

__all__ = [
    "Count",
    "Epochs",
    "Index",
    "LayerList",
    "LayerName",
    "OneOf",
    "OptionSpec",
    "Positive",
    "Range",
    "Weight",
    "check_value",
    "describe",
    "example",
    "is_declared",
]

LayerList = list[LayerName] | LayerName
"""Layers to tap: a list of :data:`LayerName` or one name (``student_layers=layer1`` and ``=[1,3,5]``)."""


@dataclass(frozen=True)
class Range:
    """Bounds of a numeric option (``None``: unbounded on that side). Values must also be finite."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def contains(self, x: float) -> bool:
        return ((self.ge is None or x >= self.ge) and (self.gt is None or x > self.gt)
                and (self.le is None or x <= self.le) and (self.lt is None or x < self.lt))

    def __str__(self) -> str:
        parts = [f"{op} {_num(v)}" for op, v in ((">=", self.ge), (">", self.gt), ("<=", self.le),
                                                  ("<", self.lt)) if v is not None]
        return " and ".join(parts)


@dataclass(frozen=True)
class OneOf:
    """The values a string option may take (the method's own constant, so the choices live once)."""

    choices: tuple[str, ...]

    def __init__(self, choices: Sequence[str]) -> None:
        object.__setattr__(self, "choices", tuple(choices))


Weight = Annotated[float, Range(ge=0)]  # a loss weight
Positive = Annotated[float, Range(gt=0)]  # a temperature, an exponent, a scale
Count = Annotated[int, Range(ge=1, le=2**20)]  # a width, a sample count, a divisor (10**30 overflows)
Epochs = Annotated[int, Range(ge=0)]  # a warm-up length (0 = none)
Index = Annotated[int, Range()]  # a stage index: any integer, negative counts from the end


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(v)


def _split(tp: Any) -> tuple[Any, list[Any]]:
    """``Annotated[T, m...]`` → ``(T, [m...])``; anything else → ``(tp, [])``."""
    if typing.get_origin(tp) is Annotated:
        base, *meta = typing.get_args(tp)
        return base, list(meta)
    return tp, []


def _union_args(tp: Any) -> tuple[Any, ...] | None:
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        return typing.get_args(tp)
    return None


@dataclass(frozen=True)
class OptionSpec:
    """One option of one method: its name, annotation (``None`` when undeclared) and default."""

    method: str
    name: str
    annotation: Any
    default: Any


def is_declared(tp: Any) -> bool:
    """Whether ``tp`` declares a type *and* a range: numbers carry a :class:`Range`, strings a
    :class:`OneOf` (or are layer names), lists declare their items; ``bool`` needs nothing more."""
    if tp is None or tp is Any:
        return False
    base, meta = _split(tp)
    args = _union_args(base)
    if args is not None:  # str | int together is a LayerName: any module name or index
        return all(a is type(None) or (a in (str, int) and _is_layer(args)) or is_declared(a) for a in args)
    if typing.get_origin(base) is list:
        (item,) = typing.get_args(base) or (None,)
        return is_declared(item)
    if base is bool:
        return True
    if base in (int, float):
        return any(isinstance(m, Range) for m in meta)
    if base is str:
        return any(isinstance(m, OneOf) for m in meta)
    return False


def _is_layer(args: tuple[Any, ...]) -> bool:
    return str in args and int in args


def describe(tp: Any) -> str:
    """``Weight`` → ``"a number >= 0"``; the "expects ..." part of an error."""
    base, meta = _split(tp)
    args = _union_args(base)
    if args is not None:
        inner = []
        for a in args:
            if a is type(None):
                continue
            if a in (str, int) and _is_layer(args):
                inner.append("a layer name or index")
            elif typing.get_origin(a) is list and _is_layer(args):
                inner.append("a list of them")
            else:
                inner.append(describe(a))
        text = ", or ".join(dict.fromkeys(sorted(inner, key=lambda t: t == "a list of them")))
        return text + " or none" if type(None) in args else text
    if typing.get_origin(base) is list:
        (item,) = typing.get_args(base)
        item_args = _union_args(item)
        if item_args is not None and _is_layer(item_args):
            return "a list of layer names or indices"
        plural = {int: "whole numbers", float: "numbers", str: "strings", bool: "true/false values"}
        return f"a list of {plural.get(_split(item)[0], describe(item))}"
    rng = next((m for m in meta if isinstance(m, Range)), None)
    one = next((m for m in meta if isinstance(m, OneOf)), None)
    if one is not None:
        return "one of " + ", ".join(one.choices)
    names = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}
    name = names.get(base, str(base))
    return f"{name} {rng}" if rng is not None and str(rng) else name


def example(spec: OptionSpec) -> str:
    """A value that passes, as ``--method-args`` would take it (the default when it has one)."""
    if spec.default is not None:
        return _as_arg(spec.default)
    base, _ = _split(spec.annotation)
    args = [a for a in (_union_args(base) or (base,)) if a is not type(None)]
    if any(typing.get_origin(a) is list for a in args):
        (item,) = typing.get_args(next(a for a in args if typing.get_origin(a) is list))
        return "[layer1,layer2]" if _is_layer(_union_args(item) or ()) else "[1,2]"
    if _is_layer(tuple(args)):
        return "layer3"
    b, meta = _split(args[0])
    if b in (int, float):
        rng = next((m for m in meta if isinstance(m, Range)), Range())
        lo = rng.ge if rng.ge is not None else rng.gt + 1 if rng.gt is not None else 1
        return _as_arg(int(lo) if b is int else float(lo))
    one = next((m for m in meta if isinstance(m, OneOf)), None)
    return one.choices[0] if one is not None else "VALUE"


def _as_arg(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_as_arg(x) for x in v) + "]"
    return str(v)


class _Bad(Exception):
    """The value does not fit (caught by :func:`check_value`, which names the option)."""


def _check(tp: Any, value: Any) -> Any:
    base, meta = _split(tp)
    args = _union_args(base)
    if args is not None:
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _check(a, value)
            except _Bad:
                continue
        raise _Bad
    if typing.get_origin(base) is list or base is list:
        (item,) = typing.get_args(base) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise _Bad
        return [_check(item, v) for v in value]
    if base is Any:
        return value
    if base is bool:
        if not isinstance(value, bool):
            raise _Bad
        out: Any = value
    elif base is int:
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Bad
        out = value
    elif base is float:
        if isinstance(value, str):  # YAML 1.1 reads ``1e3`` (no dot) as a string
            try:
                value = float(value.strip())
            except ValueError:
                raise _Bad from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _Bad
        out = value
    elif base is str:
        if not isinstance(value, str) or not value.strip():
            raise _Bad
        out = value
    else:  # pragma: no cover - an annotation this module does not know is accepted as given
        return value
    for m in meta:
        if isinstance(m, Range) and not m.contains(out):
            raise _Bad
        if isinstance(m, OneOf) and out not in m.choices:
            raise _Bad
    return out


def check_value(spec: OptionSpec, value: Any, prefix: str = "") -> Any:
    """``value`` checked against ``spec`` (a number given as a string, ``"1e3"``, becomes a float; a
    whole float for an integer option becomes an int); anything else raises a one-line ``ValueError``
    naming the option, the value, the expected type and an example. Undeclared options pass as given."""
    if spec.annotation is None:
        return value
    try:
        return _check(spec.annotation, value)
    except _Bad:
        raise ValueError(f"method {spec.method!r} option {spec.name!r} expects {describe(spec.annotation)}, "
                         f"got {value!r} (e.g. --method-args {prefix}{spec.name}={example(spec)})") from None
