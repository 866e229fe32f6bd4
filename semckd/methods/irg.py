"""Instance relationship graph KD: match vertices, edges and cross-layer graph transformations."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .base import BuildContext, Distiller, Outputs
from .options import Index, Weight
from .registry import register_method

__all__ = ["IRG", "irg_edges", "irg_graph_loss", "irg_transform_loss"]


def irg_edges(f: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Edge matrix of the instance graph: squared Euclidean distances divided by their maximum.

    Max-normalisation (the IRG authors' code) makes student and teacher edges comparable although the
    feature scales differ.
    """
    e = f.float().flatten(1)
    sq = e.pow(2).sum(dim=1)
    d = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * e @ e.t()).clamp(min=eps)
    d = d.masked_fill(torch.eye(e.shape[0], dtype=torch.bool, device=e.device), 0.0)
    return d / (d.max() + eps)


def irg_graph_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """Edge MSE, plus vertex MSE ``||f_s - f_t||²`` when the two features have the same shape."""
    with torch.no_grad():
        e_t = irg_edges(f_t)
    loss = F.mse_loss(irg_edges(f_s), e_t)
    if f_s.shape == f_t.shape:
        loss = loss + F.mse_loss(f_s.float(), f_t.float())
    return loss


def irg_transform_loss(l1_s: torch.Tensor, l2_s: torch.Tensor, l1_t: torch.Tensor, l2_t: torch.Tensor,
                       edge_transform: bool = True) -> torch.Tensor:
    """How much the graph changes from layer l1 to l2, student vs teacher (IRG-t, paper Sec. 3.3).

    Edge transform: ``(MSE(E_s^1, E_s^2) - MSE(E_t^1, E_t^2))²``; vertex transform, only when l1 and l2
    have the same shape within each network: ``(MSE(l1_s, l2_s) - MSE(l1_t, l2_t))²``.
    """
    loss = l1_s.new_zeros((), dtype=torch.float32)
    if edge_transform:
        with torch.no_grad():
            t_change = F.mse_loss(irg_edges(l1_t), irg_edges(l2_t))
        loss = loss + (F.mse_loss(irg_edges(l1_s), irg_edges(l2_s)) - t_change).pow(2)
    if l1_s.shape == l2_s.shape and l1_t.shape == l2_t.shape:
        with torch.no_grad():
            t_change = F.mse_loss(l1_t.float(), l2_t.float())
        loss = loss + (F.mse_loss(l1_s.float(), l2_s.float()) - t_change).pow(2)
    return loss


def _check_layers(side: str, layers: Sequence[int], n: int) -> list[int]:
    layers = [int(i) for i in layers]
    if len(layers) % 2:
        raise ValueError(f"irg {side} transform layers must come in (from, to) pairs; got {layers}")
    bad = [i for i in layers if not -n <= i < n]
    if bad:
        raise ValueError(f"irg {side} transform layer {bad[0]} is out of range: "
                         f"the {side} has {n} tapped stages")
    return layers


@register_method
class IRG(Distiller):
    """Liu et al., "Knowledge Distillation via Instance Relationship Graph" (CVPR 2019).

    Follows the IRG authors' loss as shipped in the SemCKD code: the instance graph is built on the pooled
    embedding (vertex MSE when the widths agree, max-normalised squared-distance edges), weighted by
    ``w_graph=1``; optional IRG-t transformation terms between tapped stage pairs
    (``transform_layers=[a, b, c, d]`` → pairs (a, b), (c, d); ``teacher_transform_layers`` defaults to the
    same indices) weighted by ``w_transform=1``. The whole term is weighted by beta=0.005 on top of
    1·CE + 1·KD (SemCKD's ``-r 1 -a 1 -b 0.005``, which ran without transform layers).
    """

    name = "irg"
    paper = "Liu et al. 2019, CVPR, doi:10.1109/CVPR.2019.00726"

    def __init__(self, student: nn.Module, teacher: nn.Module | None, ctx: BuildContext, *,
                 beta: Weight = 0.005, w_graph: Weight = 1.0, w_transform: Weight = 1.0,
                 transform_layers: list[Index] | None = None,
                 teacher_transform_layers: list[Index] | None = None, edge_transform: bool = True,
                 ce_weight: Weight = 1.0, kd_weight: Weight = 1.0, **kw) -> None:
        super().__init__(student, teacher, ctx, ce_weight=ce_weight, kd_weight=kd_weight, **kw)
        self.beta, self.w_graph, self.w_transform = beta, w_graph, w_transform
        self.edge_transform = edge_transform
        s_layers = list(transform_layers or [])
        t_layers = list(teacher_transform_layers) if teacher_transform_layers is not None else s_layers
        if s_layers or t_layers:
            s, t = self.probe(ctx.example_input)
            assert t is not None
            s_layers = _check_layers("student", s_layers, len(s.feats))
            t_layers = _check_layers("teacher", t_layers, len(t.feats))
            if len(s_layers) != len(t_layers):
                raise ValueError(f"irg needs as many teacher as student transform layers; got {s_layers} "
                                 f"and {t_layers}")
        self.s_pairs = list(zip(s_layers[::2], s_layers[1::2], strict=True))
        self.t_pairs = list(zip(t_layers[::2], t_layers[1::2], strict=True))

    def distill_losses(self, s: Outputs, t: Outputs | None, targets: torch.Tensor,
                       index: torch.Tensor | None) -> dict[str, torch.Tensor]:
        assert t is not None
        loss = self.w_graph * irg_graph_loss(s.embedding, t.embedding)
        for (a_s, b_s), (a_t, b_t) in zip(self.s_pairs, self.t_pairs, strict=True):
            loss = loss + self.w_transform * irg_transform_loss(
                s.feats[a_s], s.feats[b_s], t.feats[a_t], t.feats[b_t], self.edge_transform)
        return {"irg": self.beta * loss}
