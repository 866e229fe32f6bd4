"""A deliberately plain SemCKD (measurement code: lives in the checkout's benchmarks/, not in the
installed package), written the way the authors' code is organised: the speed/number baseline.

One module per (student, teacher) pair, Python loops over layers and pairs, every pair pools its own
inputs, float32 throughout (autocast is switched off inside). Same constructor, forward signature and
weight layout as :class:`semckd.criterion.SemCKD` (``state_dict`` *and*, through :mod:`semckd.interop`,
the authors' official layout), so a benchmark can load one set of weights into both and compare time and
numbers::

    ref = ReferenceSemCKD(s_ch, t_ch, batch_size=64)
    fast = SemCKD(s_ch, t_ch, batch_size=64)
    fast.load_state_dict(ref.state_dict())

``python -m benchmarks reference`` (from the checkout root) times both on resnet8x4 ← resnet32x4 feature
shapes.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import torch
from torch import nn

from semckd.criterion import _FREE_GRID, MLPEmbed, SemCKD, _check_sizes, make_projector
from semckd.precision import no_autocast

__all__ = ["ReferenceSemCKD", "benchmark"]


class ReferenceSemCKD(nn.Module):
    """Per-pair-loop SemCKD (float32 only); see :class:`semckd.criterion.SemCKD` for the method and modes."""

    def __init__(self, student_channels: Sequence[int], teacher_channels: Sequence[int], batch_size: int = 64,
                 factor: int = 4, mode: str = "faithful") -> None:
        super().__init__()
        _check_sizes(student_channels, teacher_channels, batch_size, factor, mode)
        self.student_channels = [int(c) for c in student_channels]
        self.teacher_channels = [int(c) for c in teacher_channels]
        self.num_student, self.num_teacher = len(self.student_channels), len(self.teacher_channels)
        self.batch_size, self.factor, self.mode = int(batch_size), int(factor), mode
        dim = self.batch_size // self.factor
        cells = _FREE_GRID[0] * _FREE_GRID[1]
        self.query = nn.ModuleList()
        for c in self.student_channels:
            self.query.append(MLPEmbed(self.batch_size if mode == "faithful" else cells * c, dim))
        self.key = nn.ModuleList()
        for c in self.teacher_channels:
            self.key.append(MLPEmbed(self.batch_size if mode == "faithful" else cells * c, dim))
        self.projectors = nn.ModuleList()
        for cs in self.student_channels:
            row = nn.ModuleList()
            for ct in self.teacher_channels:
                row.append(make_projector(cs, ct))
            self.projectors.append(row)

    def _describe(self, f: torch.Tensor) -> torch.Tensor:
        bsz = f.shape[0]
        if self.mode == "faithful":
            flat = f.reshape(bsz, -1)
            return torch.matmul(flat, flat.t())
        return nn.functional.adaptive_avg_pool2d(f, _FREE_GRID).reshape(bsz, -1)

    def forward(self, student_feats: Sequence[torch.Tensor], teacher_feats: Sequence[torch.Tensor]
                ) -> tuple[torch.Tensor, torch.Tensor]:
        with no_autocast(student_feats[0].device.type):
            feat_s = [f.float() for f in student_feats]
            feat_t = [f.detach().float() for f in teacher_feats]
            bsz = feat_s[0].shape[0]
            if self.mode == "faithful" and bsz != self.batch_size:
                raise ValueError(
                    f"SemCKD (faithful mode) was built for batch size {self.batch_size} but got a batch of "
                    f"{bsz}; drop the last partial batch (drop_last=True) or use mode='batch_free'")

            queries = []
            for i in range(self.num_student):
                queries.append(self.query[i](self._describe(feat_s[i])))
            keys = []
            for j in range(self.num_teacher):
                keys.append(self.key[j](self._describe(feat_t[j])))
            energy = torch.bmm(torch.stack(queries, dim=1), torch.stack(keys, dim=2))  # B × S × T
            attention = torch.softmax(energy, dim=-1)

            per_pair = torch.zeros(bsz, self.num_student, self.num_teacher, device=feat_s[0].device)
            for i in range(self.num_student):
                for j in range(self.num_teacher):
                    h = min(feat_s[i].shape[2], feat_t[j].shape[2])
                    w = min(feat_s[i].shape[3], feat_t[j].shape[3])
                    source = feat_s[i]
                    if tuple(source.shape[2:]) != (h, w):
                        source = nn.functional.adaptive_avg_pool2d(source, (h, w))
                    target = feat_t[j]
                    if tuple(target.shape[2:]) != (h, w):
                        target = nn.functional.adaptive_avg_pool2d(target, (h, w))
                    projected = self.projectors[i][j](source)
                    per_pair[:, i, j] = ((projected - target) ** 2).reshape(bsz, -1).mean(-1)

            loss = (attention * per_pair).sum() / (1.0 * bsz * self.num_student)
        return loss, attention


# ---------------------------------------------------------------------- benchmark
# resnet8x4 / resnet32x4 as the authors' SemCKD run uses them: feat[1:-1] = outputs of layer1..layer3
RESNET8X4_FEATS = [(64, 32, 32), (128, 16, 16), (256, 8, 8)]
RESNET32X4_FEATS = [(64, 32, 32), (128, 16, 16), (256, 8, 8)]


def _step(module: nn.Module, fs: list[torch.Tensor], ft: list[torch.Tensor], bf16: bool
          ) -> tuple[float, float]:
    """One forward+backward of the criterion; returns (wall seconds, process CPU seconds)."""
    device = fs[0].device.type
    for f in fs:
        f.grad = None
    module.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.synchronize()
    start, cpu = time.perf_counter(), time.process_time()
    with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
        loss, _ = module(fs, ft)
    loss.backward()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, time.process_time() - cpu


def benchmark(batch_size: int = 64, repeats: int = 5, warmup: int = 1, device: str = "cpu",
              student: Sequence[tuple[int, int, int]] = tuple(RESNET8X4_FEATS),
              teacher: Sequence[tuple[int, int, int]] = tuple(RESNET32X4_FEATS),
              seed: int = 0) -> dict[str, dict[str, float]]:
    """Forward+backward of the criterion alone: the reference (fp32) against the fast module's variants.

    All modules hold the same weights (the two classes share one ``state_dict`` layout). Variants are
    interleaved step by step and the minimum and median step time of ``repeats`` steps are kept, so a shared,
    noisy machine biases every variant alike; the process CPU time per step (``cpu_s``, minimum) is the
    steadier figure on a shared machine with one thread. Returns ``{variant: {"min_s", "median_s",
    "cpu_s", "steps_per_s", "speedup", "rel_loss_diff"}}``; speed-up and steps/s use the wall minimum.
    """
    torch.manual_seed(seed)
    dev = torch.device(device)
    fs = [torch.randn(batch_size, *shape, device=dev).relu_().requires_grad_() for shape in student]
    ft = [torch.randn(batch_size, *shape, device=dev).relu_() for shape in teacher]
    s_ch, t_ch = [s[0] for s in student], [t[0] for t in teacher]
    ref = ReferenceSemCKD(s_ch, t_ch, batch_size=batch_size).to(dev)
    weights = {k: v.clone() for k, v in ref.state_dict().items()}  # same internal layout as SemCKD
    variants: dict[str, tuple[nn.Module, bool]] = {"reference_fp32": (ref, False)}
    for bf16 in (False, True):
        fast = SemCKD(s_ch, t_ch, batch_size=batch_size).to(dev)
        fast.load_state_dict(weights)
        variants[f"fast_{'bf16' if bf16 else 'fp32'}"] = (fast, bf16)
    # numbers first, on identical fresh weights and BN state (train mode: batch statistics)
    with torch.no_grad():
        ref_loss = float(ref(fs, ft)[0])
        diffs = {}
        for name, (m, bf16) in variants.items():
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                diffs[name] = abs(float(m(fs, ft)[0]) - ref_loss) / abs(ref_loss)
    times: dict[str, list[float]] = {k: [] for k in variants}
    cpus: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(warmup + repeats):
        for name, (m, bf16) in variants.items():
            t, c = _step(m, fs, ft, bf16)
            if r >= warmup:
                times[name].append(t)
                cpus[name].append(c)
    out: dict[str, dict[str, float]] = {}
    base = min(times["reference_fp32"])
    for name, ts in times.items():
        ts = sorted(ts)
        out[name] = {"min_s": ts[0], "median_s": ts[len(ts) // 2], "cpu_s": min(cpus[name]),
                     "steps_per_s": 1.0 / ts[0],
                     "speedup": base / ts[0], "rel_loss_diff": diffs[name]}
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Time SemCKD (criterion only): reference vs. fast.")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    res = benchmark(args.batch_size, args.repeats, args.warmup, args.device)
    print(f"device={args.device} threads={torch.get_num_threads()} batch={args.batch_size} "
          f"student={RESNET8X4_FEATS} teacher={RESNET32X4_FEATS}")
    head = ("variant", "min s/step", "median", "cpu s", "steps/s", "speedup", "rel diff")
    print(f"{head[0]:18s} " + " ".join(f"{h:>10s}" for h in head[1:]))
    for k, v in res.items():
        print(f"{k:18s} {v['min_s']:10.3f} {v['median_s']:10.3f} {v['cpu_s']:10.3f} {v['steps_per_s']:10.3f} "
              f"{v['speedup']:9.2f}x {v['rel_loss_diff']:10.1e}")
