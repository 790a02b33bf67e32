"""Fused similarity top-k: ``topk(V @ M.T @ T.T + bias)`` without the B×C matrix.

One kernel serves prediction (zero-shot classes), retrieval (nearest neighbours across
embedding spaces: ``M=None``, or the mapping) and CSLS (the bias is ``-r_T / 2``).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from pyzsl.ops import _reference
from pyzsl.ops._tensor import (
    as_tensor,
    check,
    gemm,
    load_extension,
    map_classes_first,
    mm_tile,
    pick_backend,
    raise_if_nonfinite,
    scan_threads,
    stream,
    tile_shape,
    view,
)

FLOATS = (torch.float32, torch.float64)


def _check_matrices(V, M, T):
    V = check(as_tensor(V, "V"), "V", ndim=2, dtypes=FLOATS)
    T = check(as_tensor(T, "T"), "T", ndim=2, dtypes=FLOATS, like=V)
    if M is not None:
        M = check(as_tensor(M, "M"), "M", ndim=2, dtypes=FLOATS, like=V, shape=(T.shape[1], V.shape[1]))
    elif V.shape[1] != T.shape[1]:
        raise ValueError(f"V has {V.shape[1]} columns but T has {T.shape[1]} (M=None: no map)")
    return V, M, T


def _check_head(V, C, k, class_mask, class_bias):
    """One (k, class_mask, class_bias) request over C classes, validated against V."""
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 1 <= k <= C:
        raise ValueError(f"k: expected an int in [1, {C}] (the number of classes), got {k!r}")
    k = int(k)
    if class_mask is not None:
        class_mask = check(as_tensor(class_mask, "class_mask"), "class_mask", dtypes=(torch.bool,),
                           like=V, shape=(C,), contiguous=True)
    if class_bias is not None:
        class_bias = check(as_tensor(class_bias, "class_bias"), "class_bias", dtypes=FLOATS, like=V, shape=(C,),
                           contiguous=True)
    return k, class_mask, class_bias


@torch.no_grad()
def bilinear_topk(
    V: Tensor,
    M: Tensor | None,
    T: Tensor,
    k: int,
    class_mask: Tensor | None = None,
    class_bias: Tensor | None = None,
    *,
    backend: str = "auto",
    tile_elems: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Top-k of ``s_bj = t_jᵀ M v_b + class_bias_j`` per row, over classes allowed by ``class_mask``.

    Equals ``torch.topk(V @ M.T @ T.T + class_bias, k)`` (masked classes excluded) without
    forming the B×C matrix: the caller's BLAS computes one B×n score tile at a time and the
    kernel merges it into the running top-k. The map goes on the cheaper side: ``V @ M.T``, or
    ``T @ M`` when there are fewer classes than queries. Extra memory: O(min(B·dt, C·dv) + B·k)
    plus one tile of ``tile_elems`` elements (default 32M: 128 MB float32). At 200k × 200k
    words, d = 300, float32: 240 MB per matrix, 16 MB of results, one tile: about 0.6 GB in all.

    Args:
        V: B×dv queries (float32/float64 on the CPU, float32 on CUDA; numpy accepted).
        M: dt×dv map applied first (a bilinear compatibility or a cross-lingual mapping),
            or None for plain inner products (dv == dt).
        T: C×dt class (or target-word) embeddings.
        k: results per row, 1 ≤ k ≤ C.
        class_mask: (C,) bool; False classes are never returned.
        class_bias: (C,) added to every row's scores (calibrated stacking, CSLS's -r/2).
        backend: ``"pyzsl"`` (the kernel; an error where it cannot run), ``"torch"``
            (the plain reference, B×C memory) or ``"auto"`` (the kernel where it runs).

    Returns:
        ``(values, indices)``, both B×k, sorted by decreasing score; ties go to the smaller
        class index. Where fewer than k classes are allowed, the missing slots hold
        ``-inf`` and index ``-1``. Unlike ``torch.topk``, the values carry no gradient (for a
        differentiable score of the winners, recompute ``(V @ M.T * T[indices]).sum(-1)``).
    """
    V, M, T = _check_matrices(V, M, T)
    head = _check_head(V, T.shape[0], k, class_mask, class_bias)
    be = pick_backend(backend, V)
    if backend == "auto" and not k_supported(V, head[0]):  # backend="pyzsl": the kernel says k's limit
        be = "torch"
    if be == "torch":
        return _reference.bilinear_topk(V, M, T, *head)
    return _sweep(V, M, T, [head], tile_elems)[0]


# The largest k of the CUDA kernel (csrc/topk/topk.cu keeps each lane's list in registers).
CUDA_MAX_K = 256


def k_supported(x: Tensor, k: int) -> bool:
    """Whether the kernel takes a top-``k`` on ``x``'s device (any k on the CPU)."""
    return not x.is_cuda or k <= CUDA_MAX_K


@torch.no_grad()
def bilinear_topk_heads(
    V: Tensor,
    M: Tensor | None,
    T: Tensor,
    heads: list[tuple[int, Tensor | None, Tensor | None]],
    *,
    tile_elems: int | None = None,
) -> list[tuple[Tensor, Tensor]]:
    """Several top-k's of the same scores in one sweep: ``[bilinear_topk(V, M, T, k, mask, bias)
    for k, mask, bias in heads]`` with each score tile computed once (the kernel only).

    CSLS needs the plain top-``knn`` of ``Q Tᵀ`` (its ``r_Q`` term) and the top-k of
    ``Q Tᵀ − r_T / 2``: one GEMM pass instead of two. Memory as :func:`bilinear_topk`.
    """
    if not heads:
        raise ValueError("heads: expected at least one (k, class_mask, class_bias)")
    V, M, T = _check_matrices(V, M, T)
    heads = [_check_head(V, T.shape[0], *h) for h in heads]
    pick_backend("pyzsl", V)
    return _sweep(V, M, T, heads, tile_elems)


@torch.no_grad()
def topk_both_ways(
    V: Tensor, T: Tensor, k: int, k_cols: int | None = None, *, tile_elems: int | None = None
) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """Top-``k`` of every row and top-``k_cols`` of every column of ``S = V @ T.T``, one sweep.

    Equals ``(bilinear_topk(V, None, T, k), bilinear_topk(T, None, V, k_cols))`` (ties:
    smaller index first) with each score tile computed once: dictionary induction needs the
    nearest neighbours in both directions (CSLS both ways). The column side scans a copy of
    each tile transposed in memory, about a third of the tile's GEMM on 2 CPU cores: 20k × 20k,
    k = 32 takes 2.5-2.7 s against 3.2-3.4 s for two sweeps. Memory: as :func:`bilinear_topk`,
    plus the column results (C×k_cols) and a second tile.
    """
    V, _, T = _check_matrices(V, None, T)
    B, C = V.shape[0], T.shape[0]
    k = _check_head(V, C, k, None, None)[0]
    k_cols = min(k, B) if k_cols is None else k_cols  # k need not fit the other side
    if not isinstance(k_cols, int) or isinstance(k_cols, bool) or not 1 <= k_cols <= B:
        raise ValueError(f"k_cols: expected an int in [1, {B}] (the number of rows of V), got {k_cols!r}")
    pick_backend("pyzsl", V)
    *rows, cols = _sweep(V, None, T, [(k, None, None)], tile_elems, k_cols)
    return rows[0], cols


def _sweep(V, M, T, heads, tile_elems, k_cols=0):
    """The row heads' top-k's, then (``k_cols > 0``) the columns' top-``k_cols`` last."""
    C_ext = load_extension()
    B, C = V.shape[0], T.shape[0]
    inputs = {"V": V, "M": M, "T": T, "class_bias": [h[2] for h in heads]}
    if M is not None and map_classes_first(B, C, V.shape[1], T.shape[1]):
        T, M = gemm(T, M, out=T.new_empty(C, V.shape[1])), None  # few classes: score V against T M
    U = V if M is None else gemm(V, M.T, out=V.new_empty(B, M.shape[0]))  # the tiles' BLAS
    out = [(torch.full((B, k), float("-inf"), dtype=V.dtype, device=V.device),
             torch.full((B, k), -1, dtype=torch.int64, device=V.device)) for k, _, _ in heads]
    status = torch.zeros(1, dtype=torch.int32, device=V.device)
    rows, n = tile_shape(B, C, tile_elems)
    buf = torch.empty(rows * n, dtype=V.dtype, device=V.device)
    s = stream(V)
    masks_biases = [(view(mask), view(bias)) for _, mask, bias in heads]
    threads = scan_threads(V)
    if k_cols:
        out.append((torch.full((C, k_cols), float("-inf"), dtype=V.dtype, device=V.device),
                    torch.full((C, k_cols), -1, dtype=torch.int64, device=V.device)))
        tbuf = torch.empty_like(buf)
    # row blocks keep a block of U hot in cache while the column tiles stream past it
    for r0 in range(0, B, rows):
        r1 = min(B, r0 + rows)
        Ub = U[r0:r1]
        running = [(view(v[r0:r1]), view(i[r0:r1])) for v, i in out[: len(heads)]]
        for c0 in range(0, C, n):
            c1 = min(C, c0 + n)
            tile = mm_tile(Ub, T[c0:c1], buf[: (r1 - r0) * (c1 - c0)].view(r1 - r0, c1 - c0))
            S = view(tile)
            for (mask, bias), (vb, ib) in zip(masks_biases, running):
                C_ext.topk_tile(S, bias, mask, vb, ib, view(status), c0, C, s, threads)
            if k_cols:  # row blocks arrive in increasing r0: each column's running list stays ordered
                St = tbuf[: (c1 - c0) * (r1 - r0)].view(c1 - c0, r1 - r0).copy_(tile.T)
                cv, ci = out[-1]
                C_ext.topk_tile(view(St), None, None, view(cv[c0:c1]), view(ci[c0:c1]), view(status),
                                r0, B, s, threads)
    raise_if_nonfinite(status, inputs)
    return out
