"""CRD: Contrastive Representation Distillation (Tian, Krishnan & Isola, ICLR 2020).

The student's and the teacher's pooled embeddings (the classifier inputs) are projected by linear
"embed" heads to a 128-d unit sphere. Two memory banks hold one slowly updated (momentum 0.5)
embedding per training sample: ``memory_s`` for the student, ``memory_t`` for the teacher. For every
sample the current teacher embedding is contrasted against the student bank (positive = the sample's
own slot, ``nce_k`` random negatives) and vice versa, with the NCE objective of the paper. This is why
the method needs the data pipeline's sample ``index``.

Negatives: ``mode="exact"`` (default, the authors' ``--mode exact``: RepDistiller/SemCKD
``CIFAR100InstanceSample``) draws the ``nce_k`` negatives uniformly, with replacement, from the training
samples of *other* classes, which needs the training labels (``BuildContext.train_targets``; the engine
passes them); ``mode="uniform"`` draws them over the whole training set (``torch.randint``), so with 100
classes about 1 % share the anchor's class. The authors' "relax" mode (a random same-class positive) is
not offered.

Differences to the reference code (HobbitLong/RepDistiller ``crd/``), all deliberate:

* negatives are sampled on the training device from a label-sorted index (no per-sample class lists);
* ``nce_k`` is clipped to ``num_samples - 1`` so tiny data sets work;
* under ``torch.distributed`` the banks are updated with the all-gathered (embedding, index) pairs of
  every rank and the normalisation constants are averaged once, so all ranks keep identical banks
  even though the engine does not broadcast buffers.
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .base import BuildContext, Distiller, Outputs
from .options import Count, OneOf, Positive, Range, Weight
from .registry import register_method

__all__ = ["CRD", "MODES", "ContrastMemory", "Embed", "nce_loss"]

MODES = ("exact", "uniform")


class Embed(nn.Module):
    """Linear projection onto the unit sphere (the paper's ``g^S`` / ``g^T``)."""

    def __init__(self, dim_in: int, dim_out: int = 128) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.linear(x.flatten(1)), dim=1)


def nce_loss(scores: torch.Tensor, num_samples: int, eps: float = 1e-7) -> torch.Tensor:
    """NCE loss of CRD eq. (11) for ``scores`` (B, 1+K): column 0 positive, the rest noise samples.

    ``scores`` are the normalised similarities ``exp(v·m/τ)/Z``; the noise distribution is uniform over
    the training set, ``P_n = 1/N``, so a sample is "real" with probability ``P/(P + K·P_n)``.
    Returned as the sum over the 1+K terms, averaged over the batch (as in the reference).
    """
    bsz, k1 = scores.shape
    m_pn = (k1 - 1) / float(num_samples)
    pos = scores[:, 0]
    neg = scores[:, 1:]
    log_d1 = torch.log(pos / (pos + m_pn + eps))
    log_d0 = torch.log(m_pn / (neg + m_pn + eps))
    return -(log_d1.sum() + log_d0.sum()) / bsz


def _all_gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (rows may differ per rank) from every rank, in rank order."""
    world = dist.get_world_size()
    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    sizes_l = [int(s.item()) for s in sizes]
    mx = max(sizes_l)
    pad = x.new_zeros((mx - x.shape[0], *x.shape[1:]))
    buf = [x.new_empty((mx, *x.shape[1:])) for _ in range(world)]
    dist.all_gather(buf, torch.cat([x, pad], 0))
    return torch.cat([b[:s] for b, s in zip(buf, sizes_l, strict=True)], 0)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class ContrastMemory(nn.Module):
    """Two memory banks (student, teacher) of ``num_samples × dim`` unit vectors and the NCE scores.

    Everything is a buffer so checkpoints carry the banks and resume continues where training stopped.
    ``z`` holds the two normalisation constants (set once, on the first batch, as in the reference).
    """

    def __init__(self, dim: int, num_samples: int, nce_k: int, nce_t: float, momentum: float,
                 mode: str = "uniform", labels: torch.Tensor | None = None) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"crd mode {mode!r} is unknown; use one of {', '.join(MODES)}")
        self.mode = mode
        self.num_samples = num_samples
        self.nce_k = nce_k
        self.nce_t = nce_t
        self.momentum = momentum
        stdv = 1.0 / math.sqrt(dim / 3)
        self.register_buffer("memory_s", torch.rand(num_samples, dim).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("memory_t", torch.rand(num_samples, dim).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("z", torch.full((2,), -1.0))  # [Z_s, Z_t]; < 0 means "not set yet"
        self.register_buffer("synced", torch.zeros((), dtype=torch.bool))
        self._ready = False  # python-side cache of "z set and banks synced": avoids a device sync per step
        # "exact" mode: sample indices sorted by label, and per sample its class's [start, count) in that
        # order; not persistent (rebuilt from the labels, so checkpoints keep their keys)
        self._has_labels = False
        if labels is not None:
            self.set_labels(labels)

    def set_labels(self, labels: torch.Tensor) -> None:
        """Index the training labels (one per sample) for "exact" negatives."""
        labels = torch.as_tensor(labels, dtype=torch.int64).flatten()
        if labels.numel() != self.num_samples:
            raise ValueError(f"crd got {labels.numel()} training labels for a memory of {self.num_samples} "
                             "samples; BuildContext.train_targets must hold one label per training sample")
        dev = self.memory_s.device
        labels = labels.to(dev)
        order = torch.argsort(labels, stable=True)
        classes, counts = torch.unique(labels, return_counts=True)
        starts = torch.cumsum(counts, 0) - counts
        if classes.numel() < 2:
            raise ValueError("crd mode='exact' needs training samples of at least two classes; "
                             "pass mode=uniform")
        pos = torch.searchsorted(classes, labels)
        self.register_buffer("_order", order, persistent=False)
        self.register_buffer("_start", starts[pos], persistent=False)
        self.register_buffer("_count", counts[pos], persistent=False)
        self._has_labels = True

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._ready = False  # loaded z / synced flags must be re-read

    def sample(self, index: torch.Tensor) -> torch.Tensor:
        """(B, 1+K) bank rows: the sample itself, then K negatives (other classes in "exact" mode)."""
        b = index.shape[0]
        if self.mode == "uniform":
            neg = torch.randint(0, self.num_samples, (b, self.nce_k), device=index.device)
        else:
            if not self._has_labels:
                raise ValueError("crd mode='exact' draws negatives from other classes and needs the training "
                                 "labels (BuildContext.train_targets); pass mode=uniform to sample without")
            start, count = self._start[index].view(-1, 1), self._count[index].view(-1, 1)
            others = self.num_samples - count
            # uniform over the label-sorted positions outside the anchor's class block [start, start+count)
            r = (torch.rand(b, self.nce_k, device=index.device) * others).long().clamp_max(others - 1)
            neg = self._order[r + (r >= start).long() * count]
        return torch.cat([index.view(-1, 1), neg], 1)

    @torch.no_grad()
    def _sync_initial_state(self) -> None:
        """Make every rank start from rank 0's random banks (buffers are not broadcast by the engine)."""
        if _distributed() and not bool(self.synced):
            dist.broadcast(self.memory_s, 0)
            dist.broadcast(self.memory_t, 0)
        self.synced.fill_(True)

    def forward(self, v_s: torch.Tensor, v_t: torch.Tensor, index: torch.Tensor,
                contrast_idx: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores (B, 1+K) of the student embedding against the teacher bank and vice versa."""
        if not self._ready:
            self._sync_initial_state()
        if contrast_idx is None:
            contrast_idx = self.sample(index)
        b, k1 = contrast_idx.shape
        w_t = self.memory_t.index_select(0, contrast_idx.view(-1)).view(b, k1, -1)
        w_s = self.memory_s.index_select(0, contrast_idx.view(-1)).view(b, k1, -1)
        out_s = torch.exp(torch.bmm(w_t, v_s.unsqueeze(2)).squeeze(2) / self.nce_t)  # student vs teacher bank
        out_t = torch.exp(torch.bmm(w_s, v_t.unsqueeze(2)).squeeze(2) / self.nce_t)  # teacher vs student bank
        if not self._ready and bool((self.z < 0).any()):
            with torch.no_grad():
                z = torch.stack([out_s.mean(), out_t.mean()]) * self.num_samples
                if _distributed():
                    dist.all_reduce(z)
                    z /= dist.get_world_size()
                self.z.copy_(z)
        self._ready = True
        out_s = out_s / self.z[0]
        out_t = out_t / self.z[1]
        self.update(v_s.detach(), v_t.detach(), index)
        return out_s, out_t

    @torch.no_grad()
    def update(self, v_s: torch.Tensor, v_t: torch.Tensor, index: torch.Tensor) -> None:
        """Momentum update of the banks at ``index`` (all ranks' rows when distributed)."""
        if _distributed():
            v_s, v_t, index = _all_gather_rows(v_s), _all_gather_rows(v_t), _all_gather_rows(index)
        m = self.momentum
        for bank, v in ((self.memory_s, v_s), (self.memory_t, v_t)):
            new = bank.index_select(0, index).mul_(m).add_(v.to(bank.dtype), alpha=1 - m)
            bank.index_copy_(0, index, F.normalize(new, dim=1))


@register_method
class CRD(Distiller):
    """Contrastive Representation Distillation on the pooled embeddings (Tian et al., ICLR 2020).

    Defaults are the SemCKD authors' CRD runs (DefangChen/SemCKD ``scripts/run_cifar_distill.sh``:
    ``-r 1 -a 1 -b 0.8``, ``train_student.py`` defaults ``--mode exact --nce_k 16384``): CE 1, KD 1 (T=4),
    CRD 0.8, feat_dim 128, 16384 negatives from other classes, τ=0.07, momentum 0.5. The CRD paper's own
    "CRD" row is ``kd_weight=0``; its "CRD+KD" row is the default. ``mode="uniform"`` samples negatives
    over all classes (needs no labels).
    """

    name = "crd"
    paper = "Tian et al., Contrastive Representation Distillation, ICLR 2020 (arXiv:1910.10699)"

    def __init__(self, student: nn.Module, teacher: nn.Module | None, ctx: BuildContext, *,
                 ce_weight: Weight = 1.0, kd_weight: Weight = 1.0, beta: Weight = 0.8, feat_dim: Count = 128,
                 nce_k: Count = 16384, nce_t: Positive = 0.07,
                 nce_m: Annotated[float, Range(ge=0, lt=1)] = 0.5,
                 mode: Annotated[str, OneOf(MODES)] = "exact", **kw) -> None:
        super().__init__(student, teacher, ctx, ce_weight=ce_weight, kd_weight=kd_weight, **kw)
        if ctx.num_samples < 2:
            raise ValueError(f"crd needs a training set of at least 2 samples, got {ctx.num_samples}")
        self.beta = beta
        s, t = self.probe(ctx.example_input)
        assert t is not None
        dev = ctx.example_input.device
        self.embed_s = Embed(s.embedding.shape[1], feat_dim).to(dev)
        self.embed_t = Embed(t.embedding.shape[1], feat_dim).to(dev)
        k = min(nce_k, ctx.num_samples - 1)
        labels = ctx.train_targets if mode == "exact" else None
        self.contrast = ContrastMemory(feat_dim, ctx.num_samples, k, nce_t, nce_m, mode, labels).to(dev)
        self._index_checked = False

    def crd_loss(self, s_emb: torch.Tensor, t_emb: torch.Tensor, index: torch.Tensor,
                 contrast_idx: torch.Tensor | None = None) -> torch.Tensor:
        """Unweighted CRD loss; updates the memory banks at ``index``."""
        v_s = self.embed_s(s_emb.float())
        v_t = self.embed_t(t_emb.float())
        out_s, out_t = self.contrast(v_s, v_t, index, contrast_idx)
        n = self.contrast.num_samples
        return nce_loss(out_s, n) + nce_loss(out_t, n)

    def distill_losses(self, s: Outputs, t: Outputs | None, targets: torch.Tensor,
                       index: torch.Tensor | None) -> dict[str, torch.Tensor]:
        if index is None:
            raise ValueError("crd needs sample indices: the training loader must yield "
                             "(images, targets, index)")
        assert t is not None
        if not self._index_checked:  # once: a per-step check would force a device sync
            if int(index.max()) >= self.contrast.num_samples or int(index.min()) < 0:
                raise ValueError(f"sample index out of range for a memory of {self.contrast.num_samples} "
                                 "samples; BuildContext.num_samples must be the training-set size")
            self._index_checked = True
        return {"crd": self.beta * self.crd_loss(s.embedding, t.embedding, index.long())}
