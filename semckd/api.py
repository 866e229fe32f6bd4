"""``semckd.train``: one call from Python, a user's own data and settings named like the CLI flags.

Why a wrapper: :func:`semckd.engine.train` takes a resolved :class:`~semckd.config.TrainConfig`; a user
with a Dataset in hand should not need to know the config layers first.
"""

from __future__ import annotations

from typing import Any

__all__ = ["train"]


def train(train_data: Any, test_data: Any, *, val_data: Any = None, kind: str | None = None,
          **settings: Any) -> dict[str, Any]:
    """Train a teacher (no ``teacher=``) or distill a student (``teacher=CHECKPOINT``) on the user's data.

    ``settings`` are the config keys (``model``, ``teacher``, ``method``, ``epochs``, ``batch_size``,
    ``val_split``, ``out``, ``resume``, ...; see ``semckd distill --help``) and the data options of
    :func:`semckd.data.user.user_spec` (``num_classes``, ``in_channels``, ``image_size``, ``classes``,
    ``transform``, ``eval_transform``, ``mean``, ``std``, ``augmentation``, ``in_memory``). Returns the
    run's summary (what ``run.json`` holds).
    """
    from .config import resolve_config
    from .data.user import _OPTIONS
    from .engine import train as engine_train

    data_options = {k: settings.pop(k) for k in _OPTIONS if k in settings}
    settings.setdefault("dataset", "user")
    kind = kind or ("distill" if settings.get("teacher") else "teacher")
    cfg, _ = resolve_config(kind, flags=settings)
    return engine_train(cfg, train_data, test_data, val_data, **data_options)
