"""Model registry: one name → one constructor, so configs and the CLI can name any model.

Every registered model is an ordinary ``nn.Module`` that also declares

* ``stage_names``: module names (as in ``named_modules()``) whose outputs are the stage feature maps,
  shallow to deep; the last one is the final feature map before global pooling.
* ``head_name``: module name of the final classifier (``nn.Linear``); its *input* is the pooled embedding.

so feature taps work with zero configuration and no special forward signature.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

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


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`, sorted."""
    return sorted(_MODELS)


def create_model(name: str, num_classes: int = 100, in_channels: int = 3, **kwargs) -> nn.Module:
    """Build a registered model; unknown names fail with the list of valid ones."""
    key = name.lower()
    if key not in _MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}")
    model = _MODELS[key](num_classes=num_classes, in_channels=in_channels, **kwargs)
    model.model_name = key  # type: ignore[assignment]
    return model
