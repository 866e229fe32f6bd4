"""Model registry: one name → one constructor, so configs and the CLI can name any model.

Every registered model is an ordinary ``nn.Module`` that also declares

* ``stem_name``: module name of the stem (the authors' ``is_feat`` f0), declared apart from the stages
  so the one "drop the stem" rule needs no guess (:func:`semckd.features.declared_stem`);
* ``stage_names``: module names (as in ``named_modules()``) whose outputs are the default feature taps,
  shallow to deep, ``stem_name`` first; the last one is the final feature map before global pooling.
* ``head_name``: module name of the final classifier (``nn.Linear``); its *input* is the pooled embedding.

so feature taps work with zero configuration and no special forward signature.

A model outside the zoo needs no registration to be used from the CLI or a config: a name of the form
``pkg.module:factory`` is imported, and installed packages can publish factories under the
``semckd.models`` entry-point group. Either factory is called like a zoo constructor (``num_classes``,
and ``in_channels`` when it accepts it) and may return any ``nn.Module``; models that declare no
``stage_names``/``head_name`` get them from a dry run (:func:`semckd.features.model_layout`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from importlib import metadata

from torch import nn

from ..errors import UserError
from ..importpath import import_callable

ENTRY_POINT_GROUP = "semckd.models"

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str | None = None) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator adding a constructor ``fn(num_classes=..., in_channels=..., **kw)`` under ``name``."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = (name or fn.__name__).lower()
        if key in _MODELS:
            raise ValueError(f"model {key!r} is registered twice")
        _MODELS[key] = fn
        return fn

    return deco


def _entry_points() -> dict[str, metadata.EntryPoint]:
    """Factories installed packages publish under ``[project.entry-points."semckd.models"]``."""
    return {ep.name.lower(): ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def list_models() -> list[str]:
    """Registered names (the zoo and ``@register_model``), sorted. :func:`create_model` also accepts
    ``pkg.module:factory`` import paths and installed ``semckd.models`` entry points."""
    return sorted(_MODELS)


def is_import_path(name: str) -> bool:
    """``pkg.module:factory`` (a colon) names a factory to import rather than a registered model."""
    return ":" in name


def _import_factory(spec: str) -> Callable[..., nn.Module]:
    return import_callable(spec, what="model", form="MODULE:FACTORY", example="mypkg.nets:build_student",
                           not_callable="a callable that builds a model; point at a function or an "
                                        "nn.Module class")


def resolve_model(name: str) -> Callable[..., nn.Module]:
    """The constructor ``name`` refers to: a registered model (case-insensitive), an import path
    ``pkg.module:factory``, or a ``semckd.models`` entry point. Unknown names fail with one line."""
    if is_import_path(name):
        return _import_factory(name)
    key = name.lower()
    if key in _MODELS:
        return _MODELS[key]
    eps = _entry_points()
    if key in eps:
        try:
            fn = eps[key].load()
        except Exception as e:  # noqa: BLE001 - the installed package may raise anything
            raise UserError(f"model {name!r}: loading entry point {eps[key].value!r} failed "
                            f"({type(e).__name__}: {e})") from e
        if not callable(fn):
            raise UserError(f"model {name!r}: entry point {eps[key].value!r} is not callable")
        return fn
    installed = f", installed: {', '.join(sorted(eps))}" if eps else ""
    raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}{installed}, "
                     "or name your own as pkg.module:factory")


def _accepts(fn: Callable[..., object], arg: str) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature: assume the zoo convention
        return True
    return any(p.name == arg or p.kind is p.VAR_KEYWORD for p in params)


def create_model(name: str, num_classes: int = 100, in_channels: int = 3, **kwargs) -> nn.Module:
    """Build a model by name (see :func:`resolve_model`); unknown names fail with the list of valid ones.

    A factory is called with ``num_classes`` (and ``in_channels`` when it accepts it), so a user's
    function for single-channel data may simply omit that argument.
    """
    fn = resolve_model(name)
    foreign = name.lower() not in _MODELS
    if foreign:
        if not _accepts(fn, "num_classes"):
            raise UserError(f"model {name!r}: its factory must accept num_classes=N (the dataset's class "
                            "count); add that parameter")
        if "in_channels" not in kwargs and _accepts(fn, "in_channels"):
            kwargs["in_channels"] = in_channels
        try:
            model = fn(num_classes=num_classes, **kwargs)
        except Exception as e:  # noqa: BLE001 - the user's factory may raise anything
            first = (str(e).strip().splitlines() or [""])[0]
            raise UserError(f"model {name!r}: building it with num_classes={num_classes} failed "
                            f"({type(e).__name__}: {first}); SEMCKD_DEBUG=1 shows the traceback") from e
        if not isinstance(model, nn.Module):
            raise UserError(f"model {name!r}: the factory returned {type(model).__name__}, not a "
                            "torch.nn.Module")
        return model
    return fn(num_classes=num_classes, in_channels=in_channels, **kwargs)
