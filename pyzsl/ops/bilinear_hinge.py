"""Fused bilinear hinge loss (DeViSE, Frome et al. 2013; ``negatives="max"`` as in SJE,
Akata et al. 2015, and VSE++, Faghri et al. 2018).

Equals ``hinge(V @ M.T @ T.T)`` summed over the negatives, without the B×C matrix:
the map goes on the cheaper side, ``U = V @ M.T`` (B×dt) or, when there are fewer classes
than rows, ``P = T @ M`` (C×dv; ``s_bj = p_jᵀ v_b``, up to B/C times fewer FLOPs); then
the classes are swept in tiles of ``n`` columns: the caller's BLAS computes each B×n score
tile, the kernel turns it into loss terms and, in place, into dL/dS, and two more GEMMs
fold that tile into the gradients of the two swept factors.
Tiles without a margin violator contribute an exactly zero gradient and are skipped on
the CPU. For ``reduction`` sum/mean the gradients are produced in the forward sweep
(three GEMM passes in all, as the plain formulation does); ``"none"`` re-sweeps in the
backward with the per-row weights (four passes).

GEMMs run in the caller's precision settings: on CUDA, float32 GEMMs use TF32 exactly
when ``torch.backends.cuda.matmul.allow_tf32`` (or ``fp32_precision="tf32"``) is on. The
positive score ``s_{b,y_b}`` is always a full float32 dot product, so under TF32 it differs
from the reference's (taken from its TF32 score matrix) by TF32's rounding (~1e-3 relative).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from pyzsl.ops import _reference
from pyzsl.ops._tensor import (
    as_tensor,
    check,
    load_extension,
    map_classes_first,
    pick_backend,
    raise_if_nonfinite,
    stream,
    tile_columns,
    view,
)

FLOATS = (torch.float32, torch.float64)
REDUCTIONS = ("none", "sum", "mean")
NEGATIVES = ("sum", "max")


def _columns(B: int, C: int, x: Tensor, tile_elems: int | None) -> int:
    """Classes per B×n tile: ``tile_elems`` if given; else 32M elements on CUDA (128 MB) and,
    on the CPU, at most 2048 columns and 16M elements (64 MB float32). Narrow tiles measured
    fastest for the three GEMMs on 2 cores: B=1024, C=21841 fwd+bwd 262 ms with 2048 columns
    against 312 ms with 16384; B=256 74 against 105 ms; B=4096, C=100k 4.53 s, the same as
    4096 columns."""
    if tile_elems is not None:
        return tile_columns(B, C, tile_elems)
    return tile_columns(B, C, 1 << 25) if x.is_cuda else min(2048, tile_columns(B, C, 1 << 24))


def _sweep(U, T, y, margin, class_mask, hardest, want_grad, row_weight, tile_elems, inputs, want_dU=True,
           want_dT=True):
    """One pass over the class tiles.

    Returns per-row loss (B,), the hardest violator per row (B,) and, with ``want_grad``
    (sum mode), dU (B×d, None unless ``want_dU``) and dT (C×d, None unless ``want_dT``) of
    ``sum_b w_b loss_b`` (w = row_weight or 1).
    """
    ext = load_extension()
    B, C = U.shape[0], T.shape[0]
    dev, dt = U.device, U.dtype
    f64 = dict(dtype=torch.float64, device=dev)
    loss = torch.zeros(B, **f64)
    count = torch.zeros(B, **f64)
    best = torch.zeros(B, **f64)
    best_idx = torch.full((B,), -1, dtype=torch.int64, device=dev)
    status = torch.zeros(1, dtype=torch.int32, device=dev)
    Ty = T.index_select(0, y)  # index_select: 7x faster than T[y] on the CPU
    positive = torch.linalg.vecdot(U, Ty)
    dU = dT = None
    if want_grad:
        dU = torch.zeros_like(U) if want_dU else None
        dT = torch.zeros_like(T) if want_dT else None
        WU = U if row_weight is None or not want_dT else U * row_weight[:, None]  # dT's only
    n = _columns(B, C, U, tile_elems)
    buf = torch.empty(B * n, dtype=dt, device=dev)
    # torch's BLAS, not mm_tile's choice: numpy's OpenBLAS threads, spinning between GEMMs, slow
    # down the torch ops around them (2 cores, B=256 C=3001: 16 ms against 1.9 ms) and gain
    # nothing at the benchmark's size
    s = stream(U)
    for c0 in range(0, C, n):
        c1 = min(C, c0 + n)
        Tc = T[c0:c1]
        S = torch.mm(U, Tc.T, out=buf[: B * (c1 - c0)].view(B, c1 - c0))
        violators = ext.hinge_tile(view(S), view(positive), view(y), view(class_mask), view(loss),
                                   view(count), view(best), view(best_idx), view(status), c0, C,
                                   float(margin), hardest, want_grad, s)
        if want_grad and violators != 0:  # S now holds dL/dS of the tile (0/1)
            if want_dU:
                dU.addmm_(S, Tc)
            if want_dT:
                torch.mm(S.T, WU, out=dT[c0:c1])
    raise_if_nonfinite(status, inputs)  # the caller's arguments, named for the error
    if want_grad:
        # the true class's column: dL/ds_{b,y_b} = -count_b
        cnt = count.to(dt)
        if want_dU:
            dU.addcmul_(cnt[:, None], Ty, value=-1)
            if row_weight is not None:
                dU.mul_(row_weight[:, None])
        if want_dT:
            dT.index_add_(0, y, -cnt[:, None] * WU)
    per_row = (best if hardest else loss).to(dt)
    return per_row, best_idx, dU, dT


class _BilinearHinge(torch.autograd.Function):
    """Scores ``L @ R.T`` with (L, R) = (V Mᵀ, T) or (V, T M), whichever is cheaper; the sweep
    gives dL and dR, which the chain rule takes back to V, M and T."""

    @staticmethod
    def forward(ctx, V, M, T, y, margin, reduction, class_mask, hardest, tile_elems):
        need_v, need_m, need_t = ctx.needs_input_grad[:3]
        by_cols = map_classes_first(V.shape[0], T.shape[0], V.shape[1], T.shape[1], (need_v, need_m, need_t))
        L, R = (V, T @ M) if by_cols else (V @ M.T, T)
        want_dL = need_v if by_cols else need_v or need_m
        want_dR = need_m or need_t if by_cols else need_t
        early = (want_dL or want_dR) and not hardest and reduction != "none"
        per_row, best_idx, dL, dR = _sweep(L, R, y, margin, class_mask, hardest, early, None, tile_elems,
                                           {"V": V, "M": M, "T": T}, want_dU=want_dL, want_dT=want_dR)
        B = V.shape[0]
        scale = 1.0 / max(B, 1) if reduction == "mean" else 1.0
        ctx.reduction, ctx.hardest, ctx.margin, ctx.tile_elems = reduction, hardest, margin, tile_elems
        ctx.scale, ctx.by_cols, ctx.want = scale, by_cols, (want_dL, want_dR)
        ctx.save_for_backward(V, M, T, y, L, R, best_idx, dL, dR, class_mask)
        if reduction == "none":
            return per_row
        # the mean of no rows is NaN, as torch's; its gradients stay zero
        return per_row.sum() * (scale if B or reduction == "sum" else math.nan)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        V, M, T, y, L, R, best_idx, dL, dR, class_mask = ctx.saved_tensors
        want_dL, want_dR = ctx.want
        B = V.shape[0]
        if ctx.hardest:
            w = g if ctx.reduction == "none" else g.expand(B) * ctx.scale
            w = w * (best_idx >= 0)
            j = best_idx.clamp_min(0)
            dL = w[:, None] * (R.index_select(0, j) - R.index_select(0, y))
            wL = w[:, None] * L
            dR = torch.zeros_like(R).index_add_(0, j, wL).index_add_(0, y, -wL)
        elif ctx.reduction == "none":
            _, _, dL, dR = _sweep(L, R, y, ctx.margin, class_mask, False, True, g.to(L.dtype),
                                  ctx.tile_elems, {"V": V, "M": M, "T": T}, want_dU=want_dL, want_dT=want_dR)
        else:
            dL = dL * (g * ctx.scale) if dL is not None else None
            dR = dR * (g * ctx.scale) if dR is not None else None
        need_v, need_m, need_t = ctx.needs_input_grad[:3]
        if ctx.by_cols:  # L = V, R = T M
            dV = dL if need_v else None
            dM = T.T @ dR if need_m else None
            dT = dR @ M.T if need_t else None
        else:            # L = V Mᵀ, R = T
            dV = dL @ M if need_v else None
            dM = dL.T @ V if need_m else None
            dT = dR if need_t else None
        return dV, dM, dT, None, None, None, None, None, None


def bilinear_hinge_loss(
    V: Tensor,
    M: Tensor,
    T: Tensor,
    y: Tensor,
    margin: float = 0.1,
    reduction: str = "mean",
    class_mask: Tensor | None = None,
    negatives: str = "sum",
    *,
    backend: str = "auto",
    tile_elems: int | None = None,
) -> Tensor:
    """DeViSE hinge loss (Frome et al. 2013) of the bilinear score ``s_bj = t_jᵀ M v_b``, fused.

    Per row: ``sum_{j != y_b, class_mask_j} max(0, margin - s_{b,y_b} + s_bj)``; with
    ``negatives="max"`` only the largest of those terms. Equals
    :func:`pyzsl.ops._reference.bilinear_hinge_loss` (which builds ``V @ M.T @ T.T``)
    without allocating the B×C matrix. Extra memory: O((B + C)·d) for U (or T M) and the
    gradients, plus one B×n tile of ``tile_elems`` elements (default on the CPU: n ≤ 2048
    and at most 64 MB; on CUDA 128 MB).

    Args:
        V: B×dv inputs. M: dt×dv compatibility. T: C×dt class embeddings. All three
            float32 or float64 on the CPU, float32 on CUDA, differentiable.
        y: (B,) int64 true classes in [0, C).
        margin: the hinge margin.
        reduction: ``"none"`` (B,), ``"sum"`` or ``"mean"`` over rows.
        class_mask: (C,) bool: the classes allowed as negatives (e.g. the seen classes).
        negatives: ``"sum"`` over violators (DeViSE) or ``"max"``, the hardest one (SJE,
            Akata et al. 2015).
        backend: ``"pyzsl"`` (the fused kernel), ``"torch"`` (the reference) or ``"auto"``.
        tile_elems: elements of one score tile (the memory above); None: the defaults.

    Returns:
        The loss: a 0-d tensor (``"sum"``/``"mean"``) or (B,) (``"none"``), V's dtype.

    Raises:
        TypeError / ValueError naming the argument for a wrong dtype, device or shape, a
        label out of range, or NaN/inf in the inputs. Double backward is not supported.
    """
    V = check(as_tensor(V, "V"), "V", ndim=2, dtypes=FLOATS)
    T = check(as_tensor(T, "T"), "T", ndim=2, dtypes=FLOATS, like=V)
    M = check(as_tensor(M, "M"), "M", ndim=2, dtypes=FLOATS, like=V, shape=(T.shape[1], V.shape[1]))
    B, C = V.shape[0], T.shape[0]
    y = check(as_tensor(y, "y"), "y", dtypes=(torch.int64,), like=V, shape=(B,), contiguous=True)
    if class_mask is not None:
        class_mask = check(as_tensor(class_mask, "class_mask"), "class_mask", dtypes=(torch.bool,),
                           like=V, shape=(C,), contiguous=True)
    margin = float(margin)
    if not math.isfinite(margin) or abs(margin) > torch.finfo(V.dtype).max:
        raise ValueError(f"margin: expected a finite number, got {margin!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction: expected one of {REDUCTIONS}, got {reduction!r}")
    if negatives not in NEGATIVES:
        raise ValueError(f"negatives: expected one of {NEGATIVES}, got {negatives!r}")
    if B and C == 0:
        raise ValueError("T: no classes (C = 0)")
    if B:
        lo, hi = torch.aminmax(y)  # one host sync on CUDA, before any launch
        if lo.item() < 0 or hi.item() >= C:
            raise ValueError(f"y: labels must be in [0, {C}), got values in [{lo.item()}, {hi.item()}]")
    if pick_backend(backend, V) == "torch":
        return _reference.bilinear_hinge_loss(V, M, T, y, margin, reduction, class_mask, negatives)
    return _BilinearHinge.apply(V, M, T, y, margin, reduction, class_mask,
                                negatives == "max", tile_elems)
