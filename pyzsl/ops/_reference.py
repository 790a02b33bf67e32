"""Plain-PyTorch references of every kernel.

These are the oracles of the tests and the baselines of the benchmarks: each one
computes exactly what the fused kernel computes, the obvious way, materialising
whatever it likes (the B×C score matrix included).
"""
from __future__ import annotations

import torch
from torch import Tensor


def bilinear_scores(V: Tensor, M: Tensor | None, T: Tensor) -> Tensor:
    """``S = V @ M.T @ T.T`` (B×C); ``M=None`` means the identity map."""
    U = V if M is None else V @ M.T
    return U @ T.T


def bilinear_hinge_loss(
    V: Tensor,
    M: Tensor,
    T: Tensor,
    y: Tensor,
    margin: float = 0.1,
    reduction: str = "mean",
    class_mask: Tensor | None = None,
    negatives: str = "sum",
) -> Tensor:
    """DeViSE hinge: ``sum_{j != y_b, mask_j} max(0, margin - s_{b,y_b} + s_bj)`` per row.

    ``negatives="max"`` keeps only the largest term of each row (the hardest violator).
    """
    S = bilinear_scores(V, M, T)
    pos = S.gather(1, y[:, None])
    H = (margin - pos + S).clamp_min(0)
    keep = torch.ones_like(H, dtype=torch.bool)
    keep.scatter_(1, y[:, None], False)
    if class_mask is not None:
        keep &= class_mask[None, :].to(torch.bool)
    H = H.masked_fill(~keep, 0)
    per_row = H.sum(1) if negatives == "sum" else H.max(1).values
    if reduction == "none":
        return per_row
    if reduction == "sum":
        return per_row.sum()
    return per_row.mean()


def bilinear_topk(
    V: Tensor,
    M: Tensor | None,
    T: Tensor,
    k: int,
    class_mask: Tensor | None = None,
    class_bias: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Top-k classes of ``V @ M.T @ T.T + class_bias`` per row, masked classes excluded.

    Ties are broken towards the smaller class index (a stable sort), the rule the
    kernel follows too; slots beyond the allowed classes hold -inf and index -1.
    """
    S = bilinear_scores(V, M, T)
    if class_bias is not None:
        S = S + class_bias[None, :]
    if class_mask is not None:
        S = S.masked_fill(~class_mask[None, :].to(torch.bool), float("-inf"))
    order = torch.sort(S, dim=1, descending=True, stable=True)
    values, indices = order.values[:, :k], order.indices[:, :k]
    return values, indices.masked_fill(values == float("-inf"), -1)


# --- pcgrad (issue 4) ------------------------------------------------------------------------


def gram(G: Tensor) -> Tensor:
    """``G @ G.T`` (T×T) in G's dtype."""
    return G @ G.T


def pcgrad(G: Tensor, order: Tensor, reduction: str = "sum") -> Tensor:
    """PCGrad (Yu et al. 2020) as the common PyTorch ports write it: a loop over task pairs.

    Row i of ``order`` (T×T, a permutation of 0..T-1) is the order in which g_i is projected
    onto the normal plane of each original g_j it conflicts with (``g_i·g_j < 0``, g_i the
    current projection); its own index is skipped, and so are zero gradients. Runs in G's dtype
    (float64 for the tests' oracle). Memory: the T projected copies of G.
    """
    rows = []
    for i in range(G.shape[0]):
        g = G[i].clone()
        for j in order[i].tolist():
            if j == i:
                continue
            gj = G[j]
            d = torch.dot(g, gj)
            nj = torch.dot(gj, gj)
            if d < 0 and nj > 0:
                g -= (d / nj) * gj
        rows.append(g)
    out = torch.stack(rows).sum(0)
    return out / G.shape[0] if reduction == "mean" else out
