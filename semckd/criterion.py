"""The SemCKD criterion: cross-layer distillation with semantic calibration (Chen et al., AAAI 2021).

Every student layer ``s`` is matched against every teacher layer ``t``. A per-layer MLP turns each sample's
row of the batch Gram matrix ``A = F Fᵀ`` (``F`` = the map flattened per sample, not normalised, as in the
authors' code) into a unit query (student) or key (teacher); ``α[b, s, t] = softmax_t(⟨q_s, k_t⟩ / τ)``.
A projector per pair maps the student map onto the teacher's channels at the smaller of the two sizes
(average-pooled per dimension; the authors pool to a square, the same on their square maps), and

    loss = Σ_b Σ_s Σ_t α[b, s, t] · mean_{c,h,w}(proj_st(s_b) − t_b)² / (B · S).

Gradients reach the student features (projectors and the Gram/query path) and the MLPs through α; teacher
features are detached, as in the authors' training loop. Their weight layout: :mod:`semckd.interop`.
Speed and memory measurements: BENCHMARKS.md (§2, §8.1).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .precision import autocast_enabled, no_autocast

__all__ = ["ATTENTIONS", "MODES", "MLPEmbed", "SemCKD", "make_projector", "one_to_one_pairs", "pair_size",
           "softmax_box"]

MODES = ("faithful", "batch_free")
# "learned" is the paper; "uniform" and "one_to_one" are ablations (fixed weights, everything else equal)
ATTENTIONS = ("learned", "uniform", "one_to_one")
# adaptive-pool grid of the batch_free descriptor: keeps coarse spatial layout, any input size works
_FREE_GRID = (2, 2)
_PairSizes = dict[tuple[int, int], tuple[int, int]]  # (s, t) → (h, w) the pair is compared at
# torch_compile=True / a backend name: one torch.compile'd loss function per backend, shared by all modules
# (kept off the instances so deepcopy / pickling / state_dict never see it; dynamo guards per module, shape)
_COMPILED: dict[str, Callable] = {}


class MLPEmbed(nn.Module):
    """Linear(in, 2d) → ReLU → Linear(2d, d) → row-wise L2 normalisation (the authors' ``MLPEmbed``)."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(dim_in, 2 * dim_out)
        self.linear2 = nn.Linear(2 * dim_out, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.linear2(F.relu(self.linear1(x.flatten(1)))), dim=1)


def make_projector(c_in: int, c_out: int) -> nn.Sequential:
    """1×1 conv → BN → ReLU → 3×3 conv → BN → ReLU → 1×1 conv, mid width 2·c_out, no conv bias.

    Indices 0, 1, 3, 4, 6 hold the parameters, matching the authors' ``AAEmbed.regressor`` so official
    weights map one to one.
    """
    mid = 2 * c_out
    return nn.Sequential(
        nn.Conv2d(c_in, mid, 1, bias=False),
        nn.BatchNorm2d(mid),
        nn.ReLU(inplace=True),
        nn.Conv2d(mid, mid, 3, padding=1, bias=False),
        nn.BatchNorm2d(mid),
        nn.ReLU(inplace=True),
        nn.Conv2d(mid, c_out, 1, bias=False),
    )


def pair_size(s_hw: Sequence[int], t_hw: Sequence[int]) -> tuple[int, int]:
    """Spatial size a (student, teacher) pair is compared at: the smaller map, per dimension."""
    return min(int(s_hw[0]), int(t_hw[0])), min(int(s_hw[1]), int(t_hw[1]))


def one_to_one_pairs(num_student: int, num_teacher: int) -> list[int]:
    """The teacher layer each student layer is pinned to by ``attention="one_to_one"``: by relative depth,
    ``floor(s·(T−1)/(S−1) + 1/2)`` — the i-th stage to the i-th when S = T, first to first and last to
    last otherwise (the pairing a FitNet-style user writes by hand); one student layer takes the last
    teacher layer."""
    if num_student == 1:
        return [num_teacher - 1]
    return [math.floor(s * (num_teacher - 1) / (num_student - 1) + 0.5) for s in range(num_student)]


def softmax_box(num_teacher: int, temperature: float = 1.0) -> tuple[float, float]:
    """The range ``[lo, hi]`` a learned weight can take: logits are cosines in [−1, 1], divided by the
    temperature, so a weight is largest with its logit at +1 and the rest at −1, and smallest the other
    way round."""
    e = math.exp(2.0 / temperature)
    return 1.0 / (1.0 + (num_teacher - 1) * e), e / (e + num_teacher - 1)


def _pool(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return x if tuple(x.shape[-2:]) == size else F.adaptive_avg_pool2d(x, size)


def _check_sizes(student_channels: Sequence[int], teacher_channels: Sequence[int], batch_size: int,
                 factor: int, mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown SemCKD mode {mode!r}; use one of {', '.join(MODES)}")
    if not student_channels or not teacher_channels:
        raise ValueError("SemCKD needs at least one student and one teacher layer; check the tap names")
    if any(int(c) < 1 for c in [*student_channels, *teacher_channels]):
        raise ValueError("SemCKD channel counts must be positive integers")
    if factor < 1 or batch_size < 1 or (batch_size < factor and mode == "faithful"):
        raise ValueError(f"SemCKD needs batch_size ≥ factor ≥ 1 (embedding width batch_size // factor), got "
                         f"batch_size={batch_size}, factor={factor}; use a larger batch or a smaller factor")


def _check_feats(name: str, feats: Sequence[torch.Tensor], channels: Sequence[int]) -> None:
    if len(feats) != len(channels):
        raise ValueError(f"SemCKD was built for {len(channels)} {name} layers but got {len(feats)}; "
                         "tap the same layers the module was sized from")
    for i, (f, c) in enumerate(zip(feats, channels, strict=True)):
        if f.dim() != 4 or f.shape[1] != c:
            raise ValueError(f"{name} feature {i} has shape {tuple(f.shape)}, expected (B, {c}, H, W)")


class SemCKD(nn.Module):
    """``loss, attention = SemCKD(s_channels, t_channels, batch_size)(student_feats, teacher_feats)``.

    Feature lists hold (B, C, H, W) maps, shallow → deep, of any size per layer; ``attention`` is α (B, S, T),
    ``loss`` a float32 scalar (float64 for a float64 module).

    * ``mode="faithful"`` (the paper): the MLPs read a Gram row of length ``batch_size``, so every batch
      must have that size (drop the last partial batch). ``"batch_free"`` (this library's variant, not the
      paper's numbers) reads each sample's map pooled to 2×2 instead: any batch size, and a sample's α does
      not depend on the rest of its batch (nor sees batch relations).
    * ``factor``: the embedding width is ``batch_size // factor``.
    * ``attention="learned"`` is the paper; ``"uniform"`` (α = 1/T) and ``"one_to_one"`` (1 on the teacher
      layer of :func:`one_to_one_pairs`) are ablations that change only α. ``temperature`` τ divides the
      logits (the authors' later ``--soft``; 1 = the paper); learned weights lie in :func:`softmax_box`.
    * ``torch_compile``: True or a backend name runs the loss through ``torch.compile`` (opt-in; eager
      with a warning if compiling fails). ``channels_last=None``: projector activations channels-last on
      CPU and under autocast (True/False force it).

    The attention and the loss reductions stay float32 under autocast; the projectors follow it.
    :meth:`diagnose` gives α next to each pair's projected MSE, for logging.
    """

    def __init__(self, student_channels: Sequence[int], teacher_channels: Sequence[int], batch_size: int = 64,
                 factor: int = 4, mode: str = "faithful", *,
                 channels_last: bool | None = None, torch_compile: bool | str = False,
                 attention: str = "learned", temperature: float = 1.0) -> None:
        super().__init__()
        _check_sizes(student_channels, teacher_channels, batch_size, factor, mode)
        if attention not in ATTENTIONS:
            raise ValueError(f"SemCKD attention must be one of {', '.join(ATTENTIONS)}, got {attention!r}")
        if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature <= 0:
            raise ValueError(f"SemCKD attention temperature must be a finite number > 0, got {temperature!r}")
        self.student_channels = [int(c) for c in student_channels]
        self.teacher_channels = [int(c) for c in teacher_channels]
        self.num_student, self.num_teacher = len(self.student_channels), len(self.teacher_channels)
        self.batch_size, self.factor, self.mode = int(batch_size), int(factor), mode
        self.channels_last = channels_last
        if not isinstance(torch_compile, (bool, str)):
            raise ValueError(f"torch_compile must be True, False or a torch.compile backend name, got "
                             f"{torch_compile!r}")
        self.torch_compile = torch_compile  # not ``compile``: that would shadow nn.Module.compile()
        self._compile_failed = False
        # batch_free takes any batch size ≥ 1; below ``factor`` the embedding keeps width 1
        dim = max(self.batch_size // self.factor, 1)
        if mode == "faithful":
            s_in = [self.batch_size] * self.num_student
            t_in = [self.batch_size] * self.num_teacher
        else:
            cells = _FREE_GRID[0] * _FREE_GRID[1]
            s_in = [cells * c for c in self.student_channels]
            t_in = [cells * c for c in self.teacher_channels]
        self.query = nn.ModuleList(MLPEmbed(n, dim) for n in s_in)
        self.key = nn.ModuleList(MLPEmbed(n, dim) for n in t_in)
        self.projectors = nn.ModuleList(
            nn.ModuleList(make_projector(cs, ct) for ct in self.teacher_channels)
            for cs in self.student_channels)
        self.attention_mode, self.temperature = attention, float(temperature)
        # the pairs whose projected MSE is computed; one_to_one drops the others (weight 0)
        self.active_pairs = [(s, t) for s in range(self.num_student) for t in range(self.num_teacher)]
        if attention != "learned":
            # every module is still built (same parameters, same initialisation, so a paired run differs
            # only in α); the ones that cannot receive gradient are frozen so DDP and the optimiser skip them
            fixed = torch.full((self.num_student, self.num_teacher), 1.0 / self.num_teacher)
            if attention == "one_to_one":
                pairs = one_to_one_pairs(self.num_student, self.num_teacher)
                fixed = torch.zeros_like(fixed)
                fixed[range(self.num_student), pairs] = 1.0
                self.active_pairs = list(enumerate(pairs))
                for s in range(self.num_student):
                    for t in range(self.num_teacher):
                        if (s, t) not in self.active_pairs:
                            self.projectors[s][t].requires_grad_(False)
            self.query.requires_grad_(False)
            self.key.requires_grad_(False)
            self.register_buffer("fixed_attention", fixed, persistent=False)

    def extra_repr(self) -> str:
        extra = "" if self.attention_mode == "learned" else f", attention={self.attention_mode!r}"
        if self.temperature != 1.0:
            extra += f", temperature={self.temperature:g}"
        return (f"student_channels={self.student_channels}, teacher_channels={self.teacher_channels}, "
                f"batch_size={self.batch_size}, factor={self.factor}, mode={self.mode!r}{extra}")

    # ------------------------------------------------------------------ input checks
    def _prepare(self, student_feats: Sequence[torch.Tensor], teacher_feats: Sequence[torch.Tensor]
                 ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        _check_feats("student", student_feats, self.student_channels)
        _check_feats("teacher", teacher_feats, self.teacher_channels)
        fs, ft = list(student_feats), [f.detach() for f in teacher_feats]
        b = fs[0].shape[0]
        if any(f.shape[0] != b for f in fs + ft):
            raise ValueError(f"SemCKD features disagree on the batch size: "
                             f"{[f.shape[0] for f in fs]} (student), {[f.shape[0] for f in ft]} (teacher)")
        if self.mode == "faithful" and b != self.batch_size:
            raise ValueError(
                f"SemCKD (faithful mode) was built for batch size {self.batch_size} but got a batch of {b}; "
                "drop the last partial batch (drop_last=True) or use mode='batch_free'")
        p = self.query[0].linear1.weight
        if fs[0].device != p.device:
            raise ValueError(f"SemCKD parameters are on {p.device} but the features are on {fs[0].device}; "
                             "move the module with .to(device)")
        return fs, ft

    def _work_dtype(self) -> torch.dtype:
        return torch.float64 if self.query[0].linear1.weight.dtype == torch.float64 else torch.float32

    # ------------------------------------------------------------------ attention
    def _descriptors(self, feats: list[torch.Tensor], dtype: torch.dtype) -> list[torch.Tensor]:
        if self.mode == "faithful":
            out = []
            for f in feats:
                flat = f.reshape(f.shape[0], -1).to(dtype)
                out.append(flat @ flat.t())  # the authors' unnormalised batch Gram matrix
            return out
        return [F.adaptive_avg_pool2d(f.to(dtype), _FREE_GRID).flatten(1) for f in feats]

    @staticmethod
    def _embed(mlps: nn.ModuleList, desc: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
        """Run layer ``i``'s MLP on ``desc[i]``; one batched matmul when all inputs have one shape."""
        if len(desc) > 1 and all(d.shape == desc[0].shape for d in desc):
            x = torch.stack(desc)  # (L, B, N)
            w1 = torch.stack([m.linear1.weight for m in mlps]).to(dtype)  # (L, 2d, N)
            b1 = torch.stack([m.linear1.bias for m in mlps]).to(dtype)
            w2 = torch.stack([m.linear2.weight for m in mlps]).to(dtype)
            b2 = torch.stack([m.linear2.bias for m in mlps]).to(dtype)
            h = torch.baddbmm(b1.unsqueeze(1), x, w1.transpose(1, 2)).relu()
            out = torch.baddbmm(b2.unsqueeze(1), h, w2.transpose(1, 2))
            return F.normalize(out, dim=2).transpose(0, 1)  # (B, L, d)
        outs = []
        for m, d in zip(mlps, desc, strict=True):
            h = F.linear(d, m.linear1.weight.to(dtype), m.linear1.bias.to(dtype)).relu()
            outs.append(F.normalize(F.linear(h, m.linear2.weight.to(dtype), m.linear2.bias.to(dtype)), dim=1))
        return torch.stack(outs, dim=1)

    def _logits(self, fs: list[torch.Tensor], ft: list[torch.Tensor]) -> torch.Tensor:
        """⟨q_s, k_t⟩ (B, S, T): cosines, as query and key are unit vectors."""
        dtype = self._work_dtype()
        with no_autocast(fs[0].device.type):
            q = self._embed(self.query, self._descriptors(fs, dtype), dtype)  # (B, S, d)
            k = self._embed(self.key, self._descriptors(ft, dtype), dtype)  # (B, T, d)
            return torch.bmm(q, k.transpose(1, 2))

    def _attention(self, fs: list[torch.Tensor], ft: list[torch.Tensor]) -> torch.Tensor:
        if self.attention_mode != "learned":
            fixed = self.fixed_attention.to(self._work_dtype())
            return fixed.unsqueeze(0).expand(fs[0].shape[0], -1, -1)
        return self._softmax(self._logits(fs, ft))

    def _softmax(self, logits: torch.Tensor) -> torch.Tensor:
        with no_autocast(logits.device.type):
            if self.temperature != 1.0:  # the authors' later code (SimKD's --soft): energy / soft
                logits = logits / self.temperature
            return logits.softmax(dim=-1)

    @torch.no_grad()
    def diagnose(self, student_feats: Sequence[torch.Tensor], teacher_feats: Sequence[torch.Tensor]
                 ) -> dict[str, torch.Tensor]:
        """Per-sample α, projected MSE and (learned attention only) logits, each (B, S, T), without
        gradient: what the method weights next to what it weights. MSE of a pair one_to_one leaves out
        is NaN (its projector is never trained)."""
        fs, ft = self._prepare(student_feats, teacher_feats)
        logits = self._logits(fs, ft) if self.attention_mode == "learned" else None
        attention = self._attention(fs, ft) if logits is None else self._softmax(logits)
        out = {"attention": attention, "pair_mse": self._pair_losses(fs, ft)}
        if len(self.active_pairs) < self.num_student * self.num_teacher:
            mask = torch.ones_like(out["pair_mse"], dtype=torch.bool)
            for s, t in self.active_pairs:
                mask[:, s, t] = False
            out["pair_mse"] = out["pair_mse"].masked_fill(mask, float("nan"))
        if logits is not None:
            out["logits"] = logits
        return out

    def attention(self, student_feats: Sequence[torch.Tensor], teacher_feats: Sequence[torch.Tensor]
                  ) -> torch.Tensor:
        """α (B, S, T) alone: skips the projectors (used to log attention on test batches)."""
        fs, ft = self._prepare(student_feats, teacher_feats)
        return self._attention(fs, ft)

    # ------------------------------------------------------------------ projectors and per-pair MSE
    def _use_channels_last(self, device: torch.device) -> bool:
        if self.channels_last is not None:
            return self.channels_last
        return device.type == "cpu" or autocast_enabled(device.type)

    def _sizes(self, fs: list[torch.Tensor], ft: list[torch.Tensor]) -> _PairSizes:
        return {(s, t): pair_size(fs[s].shape[-2:], ft[t].shape[-2:]) for s, t in self.active_pairs}

    def _student_inputs(self, fs: list[torch.Tensor], sizes: _PairSizes
                        ) -> dict[tuple[int, tuple[int, int]], torch.Tensor]:
        """Pooled student inputs per (s, size), each made once."""
        device = fs[0].device
        cl = self._use_channels_last(device)
        if not autocast_enabled(device.type):
            dtype = self.projectors[0][0][0].weight.dtype
            fs = [f.to(dtype) for f in fs]
        xs: dict[tuple[int, tuple[int, int]], torch.Tensor] = {}
        for (s, _), size in sizes.items():
            if (s, size) not in xs:
                x = _pool(fs[s], size)
                # a pooled map is a new tensor: converting it costs nothing extra. An unpooled one is the
                # student's own map (already saved for backward); a channels-last copy of it would be
                # saved again by the first conv, so it is converted after that conv instead.
                pooled = x is not fs[s]
                xs[(s, size)] = x.contiguous(memory_format=torch.channels_last) if cl and pooled else x
        return xs

    @staticmethod
    def _sample_mse(out: torch.Tensor, target: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Per-sample mean squared error over C·H·W, in ``dtype`` (float32 under autocast)."""
        return (out.to(dtype) - target.to(dtype)).pow(2).mean(dim=(-3, -2, -1))

    def _pair_losses(self, fs: list[torch.Tensor], ft: list[torch.Tensor]) -> torch.Tensor:
        sizes = self._sizes(fs, ft)
        dtype = self._work_dtype()
        xs = self._student_inputs(fs, sizes)
        cl = self._use_channels_last(fs[0].device)
        # grouped by pooled teacher target, made when its group starts and dropped when it ends: one
        # pooled target alive at a time (making them all first kept ~30 MB more on the CIFAR pair)
        groups: dict[tuple[int, tuple[int, int]], list[int]] = {}
        for (s, t), size in sizes.items():
            groups.setdefault((t, size), []).append(s)
        cols: dict[tuple[int, int], torch.Tensor] = {}
        for (t, size), students in groups.items():
            target = _pool(ft[t], size)
            for s in students:
                proj = self.projectors[s][t]
                h = proj[0](xs[(s, size)])
                if cl:
                    h = h.contiguous(memory_format=torch.channels_last)
                for layer in proj[1:]:
                    h = layer(h)
                cols[(s, t)] = self._sample_mse(h, target, dtype)
            del target
        zero = None if len(cols) == self.num_student * self.num_teacher else \
            torch.zeros_like(next(iter(cols.values())))
        order = [cols.get((s, t), zero) for s in range(self.num_student) for t in range(self.num_teacher)]
        return torch.stack(order, dim=1).view(-1, self.num_student, self.num_teacher)

    def pair_losses(self, student_feats: Sequence[torch.Tensor], teacher_feats: Sequence[torch.Tensor]
                    ) -> torch.Tensor:
        """Per-sample MSE of every projected pair, (B, S, T), before the attention weighting."""
        fs, ft = self._prepare(student_feats, teacher_feats)
        return self._pair_losses(fs, ft)

    def _loss(self, fs: list[torch.Tensor], ft: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        attention = self._attention(fs, ft)
        losses = self._pair_losses(fs, ft)
        b = attention.shape[0]
        loss = (attention * losses).sum() / (b * self.num_student)
        return loss, attention

    def _compiled_loss(self) -> Callable:
        """The ``torch.compile``'d :meth:`_loss` for ``self.torch_compile`` (made on first use)."""
        backend = "inductor" if self.torch_compile is True else str(self.torch_compile)
        if backend not in _COMPILED:
            _COMPILED[backend] = torch.compile(_loss_fn, backend=backend, dynamic=False)
        return _COMPILED[backend]

    def forward(self, student_feats: Sequence[torch.Tensor], teacher_feats: Sequence[torch.Tensor]
                ) -> tuple[torch.Tensor, torch.Tensor]:
        fs, ft = self._prepare(student_feats, teacher_feats)
        if self.torch_compile and not self._compile_failed:
            try:
                return self._compiled_loss()(self, fs, ft)
            except Exception as e:  # noqa: BLE001 - any compiler failure: fall back to eager, once
                self._compile_failed = True
                warnings.warn(f"SemCKD: torch.compile failed ({type(e).__name__}: {e}); running eager",
                              RuntimeWarning, stacklevel=2)
        return self._loss(fs, ft)


def _loss_fn(module: SemCKD, fs: list[torch.Tensor], ft: list[torch.Tensor]
             ) -> tuple[torch.Tensor, torch.Tensor]:
    return module._loss(fs, ft)
