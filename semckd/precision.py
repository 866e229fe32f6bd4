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
"""

from __future__ import annotations

import os

import torch

__all__ = ["AMP_CHOICES", "cpu_has_native_bf16", "resolve_amp"]

AMP_CHOICES = ("auto", "none", "bf16", "fp16")
_ENV = "SEMCKD_AMP"


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
            raise ValueError(f"{_ENV}={forced!r} is not a precision; use none, bf16 or fp16 (or unset it)")
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
