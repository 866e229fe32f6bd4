"""SemCKD: cross-layer distillation with semantic calibration (Chen et al., AAAI 2021 / TKDE 2022).

Every student layer ``s`` is matched against every teacher layer ``t``. A per-layer MLP turns each
sample's row of the batch Gram matrix ``A = F Fᵀ`` (``F`` = feature map flattened per sample, *not*
normalised, as in the authors' code) into a query (student) or key (teacher). The softmax over teacher
layers of ``<q_s, k_t>`` (no temperature, as in the authors' code) gives per-sample weights
``α[b, s, t]``. A projector per pair maps the student map onto the teacher's channels; the larger map is
average-pooled to the smaller one (the student before projection), and

    loss = Σ_b Σ_s Σ_t α[b, s, t] · mean_{c,h,w}(proj_st(s_b) − t_b)² / (B · S).

Gradients reach the student features (through the projectors *and* the Gram/query path) and the
query/key MLPs through ``α``; teacher features are detached, like the authors' training loop.

The authors' code is tied to one batch size (the MLP input is a Gram row of length B). ``mode="faithful"``
keeps that; ``mode="batch_free"`` is this library's batch-size-independent variant (see :class:`SemCKD`).

Generalisations relative to the authors' ``SelfA`` (identical results on their square maps):
non-square maps are pooled per dimension to ``(min(Hs, Ht), min(Ws, Wt))``; the authors pool to a
square of the student's/teacher's height only.
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
# fuse="auto": below this mean 3×3-conv work per pair and sample (multiply-adds) the projectors are
# overhead-bound and fusing pays. Measured on a 2-core AVX-512 CPU, B=64: 12×11 pairs at 4×4, mid 16
# (37k MACs) fused 1.9× faster; 6×6 pairs at 8×8/4×4, mid 32/64 (590k) and resnet8x4←32x4 (≥9M) loop
# 8–10% faster.
_FUSE_MAX_MACS = 1 << 18
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
    """The SemCKD criterion: ``loss, attention = SemCKD(...)(student_feats, teacher_feats)``.

    ``attention`` is ``α`` with shape (B, S, T); ``loss`` is a float32 scalar (float64 for a float64
    module). Each argument is a list of (B, C, H, W) maps, shallow → deep; maps may be non-square and of
    any size per layer.

    Modes:

    * ``"faithful"`` (default) — the paper/authors' method: a query/key MLP reads a sample's row of the
      B×B batch Gram matrix, so the MLP input size *is* ``batch_size`` and every batch must have exactly
      that size (a ``ValueError`` says so otherwise; drop the last partial batch).
    * ``"batch_free"`` — this library's variant for any batch size ≥ 1 (last partial batch, batch 1,
      evaluation one image at a time). The Gram row (how a sample relates to the *other samples of the
      batch* at that layer) is replaced by a per-sample descriptor: the map average-pooled to a 2×2 grid
      and flattened (4·C values, independent of B and of H×W), fed to the same MLP shape
      (4·C → 2d → d, d = batch_size // factor, so ``batch_size`` only sets the width here). Everything
      else — attention, projectors, loss — is unchanged. Trade-off: the attention no longer sees batch
      relations (the paper's "semantic" similarity structure), only each sample's own coarse
      activations; in exchange it is deterministic per sample (independent of what else is in the
      batch), works at any batch size, and its MLP size scales with channels instead of batch size.
      Its numbers are not the paper's; use faithful mode to reproduce the paper.

    Attention (``attention=``; ``"learned"`` is the paper, the others are ablations that keep every
    module, initialisation and the loss formula and change only α): ``"uniform"`` fixes α = 1/T for
    every pair; ``"one_to_one"`` weights each student layer 1 on one teacher layer
    (:func:`one_to_one_pairs`, by relative depth) and 0 elsewhere, so only those S projectors train.
    ``temperature`` divides the logits before the softmax (the authors' later SimKD code, ``--soft``;
    1 = the paper); the learned weights then range over :func:`softmax_box`.

    Speed: the hot path is the S·T projectors, i.e. convolutions, so exact fp32 gains on big maps are
    small. The student map is pooled once per distinct target size and the teacher once per size; the
    attention MLPs of all layers run as one batched matmul; the loss is one batched weighting of the
    (B, S, T) per-pair errors. ``channels_last=None`` uses channels-last activations on CPU and under
    autocast (oneDNN's faster layout; ~2× with bf16 autocast on an AVX-512 CPU, no measurable gain in
    fp32 on an AVX2 one); maps are converted only where no extra copy is kept for backward (pooled
    inputs, first-conv outputs), so activation memory equals the per-pair reference's. Fusing
    (``fuse=True``) gives pairs that read the same pooled student input one 1×1 conv (concatenated
    weights), and pairs that share a teacher layer and size grouped 3×3 / 1×1 convs, one BN over the
    concatenated channels (exact: BN is per channel) and one batched MSE; it keeps concatenated weights
    for backward (parameter-sized extra memory). Numbers are equal either way (1e-6 rel.). Grouped
    convs are slower than separate ones on big maps but remove per-pair overhead on small ones, so
    ``fuse="auto"``
    fuses only when the mean per-pair 3×3 work is small (see ``_FUSE_MAX_MACS``; measured on CPU only —
    check ``python benchmarks/reference.py --device cuda`` on a GPU). The attention branch and the loss
    reductions always run in float32 (autocast disabled); projectors follow the ambient autocast.

    ``torch_compile=True`` (or a ``torch.compile`` backend name) runs the loss through ``torch.compile``
    (static shapes; one compile per input shape and mode), falling back to eager with a warning if
    compiling fails. Opt-in: on a 2-core CPU it made the criterion's forward+backward 1.07–1.26× faster
    but took 70–170 s to compile (BENCHMARKS.md, "SemCKD criterion: exact FLOP/time savings"); numbers
    within 1e-5 (loss) / 1e-6 (attention). ``state_dict`` keys are unchanged (the module is not wrapped).
    """

    def __init__(self, student_channels: Sequence[int], teacher_channels: Sequence[int], batch_size: int = 64,
                 factor: int = 4, mode: str = "faithful", *, fuse: bool | str = "auto",
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
        if fuse not in (True, False, "auto"):
            raise ValueError(f"fuse must be True, False or 'auto', got {fuse!r}")
        self.fuse = fuse
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

    def _auto_fuse(self, sizes: _PairSizes) -> bool:
        """Fuse when pairs are small: mean 3×3-conv work per pair and sample below ``_FUSE_MAX_MACS``."""
        macs = [(2 * self.teacher_channels[t]) ** 2 * 9 * h * w for (_, t), (h, w) in sizes.items()]
        return sum(macs) / len(macs) < _FUSE_MAX_MACS

    def _inputs(self, fs: list[torch.Tensor], ft: list[torch.Tensor], sizes: _PairSizes,
                targets: bool = True):
        """Pooled student inputs per (s, size) and (``targets``) pooled teacher targets per (t, size), each
        made once."""
        device = fs[0].device
        cl = self._use_channels_last(device)
        if not autocast_enabled(device.type):
            dtype = self.projectors[0][0][0].weight.dtype
            fs = [f.to(dtype) for f in fs]
        xs: dict[tuple[int, tuple[int, int]], torch.Tensor] = {}
        ys: dict[tuple[int, tuple[int, int]], torch.Tensor] = {}
        for (s, t), size in sizes.items():
            if (s, size) not in xs:
                x = _pool(fs[s], size)
                # a pooled map is a new tensor: converting it costs nothing extra. An unpooled one is the
                # student's own map (already saved for backward); a channels-last copy of it would be
                # saved again by the first conv, so it is converted after that conv instead.
                pooled = x is not fs[s]
                xs[(s, size)] = x.contiguous(memory_format=torch.channels_last) if cl and pooled else x
            if targets and (t, size) not in ys:
                ys[(t, size)] = _pool(ft[t], size)
        return xs, ys

    @staticmethod
    def _sample_mse(out: torch.Tensor, target: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Per-sample mean squared error over C·H·W, in ``dtype`` (float32 under autocast)."""
        return (out.to(dtype) - target.to(dtype)).pow(2).mean(dim=(-3, -2, -1))

    def _pair_losses_loop(self, fs, ft, sizes) -> torch.Tensor:
        dtype = self._work_dtype()
        xs, _ = self._inputs(fs, ft, sizes, targets=False)
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

    def _fused_bn(self, x: torch.Tensor, bns: list[nn.BatchNorm2d]) -> torch.Tensor:
        """One batch_norm over concatenated channels of several BN layers (identical: BN is per channel)."""
        if len(bns) == 1:
            return bns[0](x)
        weight = torch.cat([b.weight for b in bns])
        bias = torch.cat([b.bias for b in bns])
        rm = torch.cat([b.running_mean for b in bns])
        rv = torch.cat([b.running_var for b in bns])
        training = self.training
        momentum = bns[0].momentum if bns[0].momentum is not None else 0.1
        y = F.batch_norm(x, rm, rv, weight, bias, training, momentum, bns[0].eps)
        if training:
            with torch.no_grad():
                off = 0
                for b in bns:
                    n = b.num_features
                    b.running_mean.copy_(rm[off:off + n])
                    b.running_var.copy_(rv[off:off + n])
                    b.num_batches_tracked.add_(1)
                    off += n
        return y

    def _pair_losses_fused(self, fs, ft, sizes) -> torch.Tensor:
        dtype = self._work_dtype()
        xs, ys = self._inputs(fs, ft, sizes)
        cl = self._use_channels_last(fs[0].device)
        fmt = torch.channels_last if cl else torch.contiguous_format
        # 1×1 convs fused over pairs reading the same pooled student input
        first: dict[tuple[int, int], torch.Tensor] = {}
        for (s, size), x in xs.items():
            ts = [t for t in range(self.num_teacher) if sizes[(s, t)] == size]
            convs = [self.projectors[s][t][0] for t in ts]
            w = convs[0].weight if len(convs) == 1 else torch.cat([c.weight for c in convs])
            y = F.conv2d(x, w)
            parts = torch.split(y, [c.out_channels for c in convs], dim=1)
            for t, part in zip(ts, parts, strict=True):
                first[(s, t)] = part
        # the rest grouped over pairs sharing a teacher layer and size
        cols: dict[tuple[int, int], torch.Tensor] = {}
        for (t, size), target in ys.items():
            ss = [s for s in range(self.num_student) if sizes[(s, t)] == size]
            mods = [self.projectors[s][t] for s in ss]
            n = len(ss)
            h = first[(ss[0], t)] if n == 1 else torch.cat([first[(s, t)] for s in ss], dim=1)
            h = F.relu(self._fused_bn(h.contiguous(memory_format=fmt), [m[1] for m in mods]))
            w3 = mods[0][3].weight if n == 1 else torch.cat([m[3].weight for m in mods])
            h = F.conv2d(h, w3, padding=1, groups=n)
            h = F.relu(self._fused_bn(h, [m[4] for m in mods]))
            w6 = mods[0][6].weight if n == 1 else torch.cat([m[6].weight for m in mods])
            out = F.conv2d(h, w6, groups=n)
            out = out.unflatten(1, (n, self.teacher_channels[t]))  # (B, n, C_t, h, w)
            mse = self._sample_mse(out, target.unsqueeze(1), dtype)  # (B, n)
            for k, s in enumerate(ss):
                cols[(s, t)] = mse[:, k]
        order = [cols[(s, t)] for s in range(self.num_student) for t in range(self.num_teacher)]
        return torch.stack(order, dim=1).view(-1, self.num_student, self.num_teacher)

    def pair_losses(self, student_feats: Sequence[torch.Tensor], teacher_feats: Sequence[torch.Tensor]
                    ) -> torch.Tensor:
        """Per-sample MSE of every projected pair, (B, S, T), before the attention weighting."""
        fs, ft = self._prepare(student_feats, teacher_feats)
        return self._pair_losses(fs, ft)

    def _pair_losses(self, fs: list[torch.Tensor], ft: list[torch.Tensor]) -> torch.Tensor:
        sizes = self._sizes(fs, ft)
        fuse = self._auto_fuse(sizes) if self.fuse == "auto" else self.fuse
        if fuse and len(sizes) == self.num_student * self.num_teacher:  # the fused path needs every pair
            return self._pair_losses_fused(fs, ft, sizes)
        return self._pair_losses_loop(fs, ft, sizes)

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
