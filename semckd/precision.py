"""Which mixed precision a run uses: ``amp="auto"`` (the default) picks the fastest one the hardware
runs natively, and falls back to exact float32 where low precision would be slower.

Why not always bf16: on a CPU without native bfloat16 instructions oneDNN emulates them, and a SemCKD
step becomes tens of times *slower* (measured on a 2-core AVX2 EPYC: one 128→128 3×3 convolution at
32×32, 9.6 s in bf16 against 0.135 s in fp32). Where the hardware has them (recent NVIDIA GPUs,
CPUs with AVX512-BF16 or AMX), autocast halves the bytes moved and uses the faster units (measured on an
AVX-512 CPU: SemCKD step 2.12× the fp32 per-pair baseline).

Rules of ``"auto"``:

* CUDA: ``bf16`` where ``torch.cuda.is_bf16_supported()`` (Ampere and newer), else ``fp16`` (with the
  engine's GradScaler);
* CPU: ``bf16`` where the CPU has AVX512-BF16 or AMX tiles, else ``none`` (float32);
* anything else (MPS, ...): ``none``.

``SEMCKD_AMP=none|bf16|fp16`` in the environment overrides what ``"auto"`` picks (e.g. to force exact
float32 everywhere in a CI job) without editing configs.

``"bf16-emulated"`` is a numerics check, not a speed mode: on hardware without bfloat16 it trains in
float32 but rounds to bfloat16 the operands and results of every op that autocast runs in bf16
(convolutions, linear layers, matmuls), forward *and* backward (incoming and outgoing gradients),
so one can see whether a distillation recipe survives bf16 before renting bf16 hardware. It is a lower
bound on bf16's rounding: elementwise ops (BN, ReLU, residual adds), which real autocast also runs in
bf16 after a bf16 convolution, stay float32 here. Blocks that switch autocast off
(:func:`no_autocast`, e.g. SemCKD's attention and loss reductions) switch it off too.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map

__all__ = ["AMP_CHOICES", "Precision", "autocast_dtype", "autocast_enabled", "cast_state_writes",
           "cpu_has_native_bf16", "emulate_bf16", "emulation_active", "no_autocast", "resolve_amp",
           "resolve_channels_last", "state_writes_guard", "suspend_emulation"]

AMP_CHOICES = ("auto", "none", "bf16", "fp16", "bf16-emulated")
_ENV = "SEMCKD_AMP"
# autocast's lower-precision op list (CPU and CUDA), by function name
_LOW_PRECISION_OPS = frozenset({
    "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "conv_tbc",
    "_convolution", "convolution", "linear", "matmul", "__matmul__", "__rmatmul__", "mm", "bmm", "addmm",
    "baddbmm", "addbmm", "prelu", "scaled_dot_product_attention",
})
_state = threading.local()


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a precision name (``bf16``/``fp16``); None for the float32 ones (``none``,
    ``bf16-emulated``, which rounds in float32 instead)."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def cpu_has_native_bf16() -> bool:
    """True where the CPU computes bfloat16 natively (AVX512-BF16 or AMX), so bf16 autocast is fast."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    for name in checks:
        fn = getattr(torch.cpu, name, None)
        try:
            if fn is not None and fn():
                return True
        except Exception:  # pragma: no cover - a torch build without the probe
            continue
    return False


def resolve_amp(amp: str, device: torch.device | str) -> tuple[str, str]:
    """``(precision, why)``: ``amp`` itself unless it is ``"auto"``; then the rule above, with a reason
    that the engine logs so a run says what it computed in and why."""
    if amp not in AMP_CHOICES:
        raise ValueError(f"amp must be one of {', '.join(AMP_CHOICES)}, got {amp!r}")
    if amp != "auto":
        return amp, "set explicitly"
    forced = os.environ.get(_ENV, "").strip().lower()
    if forced:
        if forced not in AMP_CHOICES[1:]:
            raise ValueError(f"{_ENV}={forced!r} is not a precision; use none, bf16, fp16 or bf16-emulated "
                             "(or unset it)")
        return forced, f"auto, overridden by {_ENV}"
    dev = torch.device(device)
    if dev.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", "auto: this GPU supports bfloat16"
        return "fp16", "auto: this GPU has no bfloat16; float16 with loss scaling"
    if dev.type == "cpu":
        if cpu_has_native_bf16():
            return "bf16", "auto: this CPU has native bfloat16 (AVX512-BF16/AMX)"
        return "none", "auto: this CPU has no native bfloat16 (AVX512-BF16/AMX), so bf16 would be slower"
    return "none", f"auto: no mixed precision on {dev.type}; float32"


def resolve_channels_last(channels_last: bool | None, amp: str, device: torch.device | str) -> bool:
    """The memory format a run uses: ``channels_last`` itself when set; by default (None) channels-last
    only for bf16 autocast on a CPU, the one case measured faster for both benchmark pairs (oneDNN's
    bf16 convolutions are NHWC-native, so NCHW pays a reorder per layer; in fp32 on CPU it was slower
    for the CIFAR pair, and on GPUs it is not measured yet; BENCHMARKS.md, "bf16 on CPU")."""
    if channels_last is not None:
        return bool(channels_last)
    return amp == "bf16" and torch.device(device).type == "cpu"


_DESCRIPTIONS = {"none": "float32", "bf16": "bfloat16 autocast", "fp16": "float16 autocast",
                 "bf16-emulated": "float32 with bfloat16 rounding (emulation)"}


@dataclass(frozen=True)
class Precision:
    """One resolved precision: what a run (or an evaluation, or a benchmark row) computes in.

    Why one object: the autocast dtype, the bf16 emulation, the memory format, the fp16 loss scaler and
    the log line were derived from the ``amp`` string separately in the engine, ``evaluate`` and the
    bench, each with its own vocabulary. Resolving ``"auto"`` once into this value and passing it
    around keeps them from drifting apart.

    ``amp`` is a resolved name (``none``, ``bf16``, ``fp16``, ``bf16-emulated``; never ``auto``),
    ``channels_last`` the memory format of networks and inputs, ``reason`` why (logged by the engine).
    """

    amp: str
    channels_last: bool = False
    reason: str = "set explicitly"

    def __post_init__(self) -> None:
        if self.amp not in AMP_CHOICES[1:]:
            raise ValueError(f"a resolved precision is one of {', '.join(AMP_CHOICES[1:])}, got {self.amp!r}")

    @classmethod
    def resolve(cls, amp: str | Precision, channels_last: bool | None, device: torch.device | str
                ) -> Precision:
        """``amp`` (``"auto"`` included, see :func:`resolve_amp`) and ``channels_last`` (None: the
        default of :func:`resolve_channels_last`) on ``device``; a :class:`Precision` is returned as is."""
        if isinstance(amp, Precision):
            return amp
        name, why = resolve_amp(amp, device)
        return cls(name, resolve_channels_last(channels_last, name, device), why)

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype; None for the float32 precisions."""
        return autocast_dtype(self.amp)

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.preserve_format

    def autocast(self, device: torch.device | str) -> contextlib.AbstractContextManager:
        """The mixed-precision context for a forward pass on ``device``."""
        if self.amp == "bf16-emulated":
            return emulate_bf16()
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=torch.device(device).type, dtype=self.dtype)

    def grad_scaler(self, device: torch.device | str) -> torch.amp.GradScaler | None:
        """A loss scaler where the precision needs one (fp16 on CUDA), else None."""
        if self.amp == "fp16" and torch.device(device).type == "cuda":
            return torch.amp.GradScaler("cuda")
        return None

    def describe(self) -> str:
        """The engine's log line: ``bfloat16 autocast (why), channels-last``."""
        layout = ", channels-last" if self.channels_last else ""
        return f"{_DESCRIPTIONS[self.amp]} ({self.reason}){layout}"


# ---------------------------------------------------------------------- bf16 emulation (numerics check)
class _RoundToBF16(torch.autograd.Function):
    """Round to the nearest bfloat16 value and back, in the forward pass and on the gradient."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.bfloat16).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad.to(torch.bfloat16).to(grad.dtype)


def _round(x: Any) -> Any:
    if isinstance(x, torch.Tensor) and x.dtype in (torch.float32, torch.float64):
        return _RoundToBF16.apply(x)
    return x


def emulation_active() -> bool:
    """True inside :func:`emulate_bf16` and outside any :func:`suspend_emulation` block."""
    return getattr(_state, "depth", 0) > 0 and not getattr(_state, "suspended", False)


class _BF16Emulation(TorchFunctionMode):
    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if emulation_active() and getattr(func, "__name__", "") in _LOW_PRECISION_OPS:
            # operands rounded (their gradients too, on the way back), maths in fp32 as bf16 units
            # accumulate, result rounded as a bf16 output would be
            return tree_map(_round, func(*tree_map(_round, args), **tree_map(_round, kwargs)))
        return func(*args, **kwargs)


@contextlib.contextmanager
def emulate_bf16() -> Iterator[None]:
    """Run the block with bfloat16 rounding of autocast's low-precision ops (see the module doc)."""
    _state.depth = getattr(_state, "depth", 0) + 1
    try:
        with _BF16Emulation():
            yield
    finally:
        _state.depth -= 1


@contextlib.contextmanager
def suspend_emulation() -> Iterator[None]:
    """Exact float32 inside the block even under :func:`emulate_bf16` (what autocast(enabled=False) is
    to real autocast)."""
    before = getattr(_state, "suspended", False)
    _state.suspended = True
    try:
        yield
    finally:
        _state.suspended = before


def autocast_enabled(device_type: str) -> bool:
    """``torch.is_autocast_enabled(device_type)``, also on torch < 2.4 (which took no argument)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # pragma: no cover - old torch
        return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()


@contextlib.contextmanager
def no_autocast(device_type: str) -> Iterator[None]:
    """Switch autocast (and the bf16 emulation of ``amp="bf16-emulated"``) off for a block: float32
    maths — a no-op where neither is on."""
    with contextlib.ExitStack() as stack:
        if autocast_enabled(device_type):
            stack.enter_context(torch.autocast(device_type, enabled=False))
        if emulation_active():
            stack.enter_context(suspend_emulation())
        yield


# ---------------------------------------------------------------------- state writes under autocast
# in-place indexed writes that refuse a source of another dtype, and the position / keyword of the source
_INDEXED_WRITES = {
    "__setitem__": (2, "value"), "index_put_": (2, "values"), "index_put": (2, "values"),
    "index_copy_": (3, "source"), "index_copy": (3, "source"), "index_add_": (3, "source"),
    "index_add": (3, "source"), "index_reduce_": (3, "source"), "scatter_": (3, "src"),
    "scatter_add_": (3, "src"), "scatter_reduce_": (3, "src"), "masked_scatter_": (2, "source"),
    "put_": (2, "source"),
}


class _CastStateWrites(TorchFunctionMode):
    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        where = _INDEXED_WRITES.get(getattr(func, "__name__", ""))
        if where is not None and args and isinstance(args[0], torch.Tensor):
            dst, (pos, key) = args[0], where
            if pos < len(args):
                src = args[pos]
                if isinstance(src, torch.Tensor) and src.dtype != dst.dtype and src.is_floating_point():
                    args = (*args[:pos], src.to(dst.dtype), *args[pos + 1:])
            elif isinstance(kwargs.get(key), torch.Tensor) and kwargs[key].dtype != dst.dtype:
                kwargs = {**kwargs, key: kwargs[key].to(dst.dtype)}
        return func(*args, **kwargs)


@contextlib.contextmanager
def cast_state_writes() -> Iterator[None]:
    """Inside the block, an indexed in-place write (``bank[idx] = z``, ``index_copy_``, ``scatter_``, ...)
    casts its source to the destination's dtype.

    Why: under bf16/fp16 autocast a method's activations come out in low precision while its float32
    buffers (memory banks, running statistics) stay float32, and PyTorch refuses such writes ("Index put
    requires the source and destination dtypes match"). A buffer keeps its dtype, as it would in a
    float32 run. The engine runs every method's :meth:`~semckd.methods.Distiller.distill_losses` and
    ``observe`` inside this block while autocast is on; outside autocast it is not entered (no overhead).
    """
    with _CastStateWrites():
        yield


def state_writes_guard() -> contextlib.AbstractContextManager:
    """:func:`cast_state_writes` inside a ``torch.autocast`` block (CPU or CUDA), else a no-op context."""
    if torch.is_autocast_enabled("cpu") or torch.is_autocast_enabled("cuda"):
        return cast_state_writes()
    return contextlib.nullcontext()
