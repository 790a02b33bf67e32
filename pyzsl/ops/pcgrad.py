"""Gram matrix and batched PCGrad (Yu et al. 2020, "Gradient Surgery for Multi-Task Learning").

PCGrad projects each task gradient ``g_i``, task by task in a random order, onto the normal
plane of every original ``g_j`` it conflicts with (``g_i'·g_j < 0``, ``g_i'`` the current
projection), and sums (or averages) the projections. Every projected ``g_i'`` is a linear
combination of the original gradients and every dot product it needs is an entry of the Gram
matrix, so the kernel reads G twice and never forms the T projected copies:

1. Gram ``K = G Gᵀ`` in one pass (accumulated in float64: the products of float32 are exact);
2. the T×T coefficients from K alone, on G's device (no host synchronisation);
3. ``out = wᵀ G`` in a second pass, ``w_j = Σ_i c_ij``.

This equals the per-pair loop of the common PyTorch ports (:func:`pyzsl.ops._reference.pcgrad`)
with O(T·P) fewer memory: extra memory is O(T²) per block on the CPU, plus O(#CUDA blocks · T²)
partial Grams on CUDA. A list of blocks (``T×P_l``, e.g. one per layer) is layer-wise PCGrad in
one call: each block gets its own Gram and coefficients, with the same task order.

CPU: OpenMP over fixed column groups (the Gram does not depend on the thread count); on
Linux, large outputs are advised to use transparent huge pages before their first write
(first-touch 4 KB page faults on a fresh 40 MB update cost more than the pass that writes it);
``out=`` avoids the fresh allocation altogether. CUDA: three launches on the current stream.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from pyzsl.ops._tensor import as_tensor, load_extension, stream, view

FLOATS = (torch.float32, torch.float64)
REDUCTIONS = ("sum", "mean")
Array = Union[Tensor, np.ndarray]


class PCGradDiagnostics(NamedTuple):
    """Negative-transfer diagnostics of one :func:`pcgrad` call (float64, G's type and device).

    For a single T×P matrix: ``gram`` and ``cosine`` are T×T and ``n_conflicts`` is 0-d; for a
    list of L blocks they are L×T×T and (L,).
    """

    gram: Any         # K = G Gᵀ
    cosine: Any       # K_ij / sqrt(K_ii K_jj), 0 where a gradient is zero
    n_conflicts: Any  # number of task pairs i < j with K_ij < 0


def _blocks(G: Array | Sequence[Array]) -> tuple[list[Tensor], bool, bool]:
    """G as a list of validated T×P_l tensors, whether it was a list, whether it was numpy."""
    is_list = isinstance(G, (list, tuple))
    items = list(G) if is_list else [G]
    if not items:
        raise ValueError("G: empty list of gradient blocks")
    names = [f"G[{l}]" for l in range(len(items))] if is_list else ["G"]
    is_numpy = [isinstance(x, np.ndarray) for x in items]
    if any(is_numpy) and not all(is_numpy):
        raise TypeError("G: mixes numpy arrays and torch tensors; pass one kind")
    blocks = [as_tensor(x, n) for x, n in zip(items, names)]
    first = blocks[0]
    for g, n in zip(blocks, names):
        if g.dim() != 2:
            raise ValueError(f"{n}: expected a 2-D T×P matrix of task gradients, got shape {tuple(g.shape)}")
        if g.dtype not in FLOATS:
            raise TypeError(f"{n}: expected dtype float32 or float64, got {str(g.dtype).replace('torch.', '')}")
        if g.device != first.device:
            raise ValueError(f"{n}: is on {g.device} but {names[0]} is on {first.device}")
        if g.dtype != first.dtype:
            raise TypeError(f"{n}: dtype {g.dtype} differs from {names[0]}'s {first.dtype}")
        if g.shape[0] != first.shape[0]:
            raise ValueError(f"{n}: has {g.shape[0]} task rows but {names[0]} has {first.shape[0]}")
        if g.shape[1] > 1 and g.stride(1) != 1:
            raise ValueError(f"{n}: columns must be contiguous (unit stride); pass .contiguous() "
                             "(pyzsl never copies silently)")
    if first.shape[0] == 0:
        raise ValueError(f"{names[0]}: needs at least one task gradient (T >= 1)")
    if first.device.type not in ("cpu", "cuda"):
        raise ValueError(f"G: the kernels run on the CPU and CUDA, got {first.device}")
    if first.is_cuda and not load_extension().build_info()["cuda"]:
        raise RuntimeError("pyzsl was built without CUDA support (pyzsl.build_info()['cuda'] is False): "
                           "rebuild with a CUDA toolkit, or pass CPU tensors")
    return blocks, is_list, all(is_numpy)


def _order(order: Array | None, generator: torch.Generator | None, T: int, device: torch.device) -> Tensor:
    """T×T int64 on ``device``: row i the order in which g_i meets the others.

    That each row is a permutation is checked by the kernel (CPU: before any work; CUDA: on
    the device, reported through the status word), not here: no host synchronisation.
    """
    if order is None:
        # one randperm per row, like the common ports; CPU default generator unless told
        gdev = generator.device if generator is not None else torch.device("cpu")
        order = torch.stack([torch.randperm(T, generator=generator, device=gdev) for _ in range(T)])
    else:
        order = as_tensor(order, "order")
        if order.dtype != torch.int64:
            raise TypeError(f"order: expected dtype int64, got {str(order.dtype).replace('torch.', '')}")
        if tuple(order.shape) != (T, T):
            raise ValueError(f"order: expected shape ({T}, {T}) (row i a permutation of 0..{T - 1}), "
                             f"got {tuple(order.shape)}")
    return order.to(device, non_blocking=True).contiguous()


def _outputs(out: Array | Sequence[Array] | None, blocks: list[Tensor], is_list: bool) -> list[Tensor]:
    if out is None:
        return [torch.empty(g.shape[1], dtype=g.dtype, device=g.device) for g in blocks]
    items = list(out) if isinstance(out, (list, tuple)) else [out]
    if len(items) != len(blocks) or isinstance(out, (list, tuple)) != is_list:
        raise ValueError(f"out: expected {'a list of ' + str(len(blocks)) if is_list else 'one'} "
                         "buffer(s) matching G")
    res = []
    for l, (o, g) in enumerate(zip(items, blocks)):
        name = f"out[{l}]" if is_list else "out"
        o = as_tensor(o, name)
        if o.shape != (g.shape[1],) or o.dtype != g.dtype or o.device != g.device or not o.is_contiguous():
            raise ValueError(f"{name}: expected a contiguous ({g.shape[1]},) {g.dtype} tensor on {g.device}, "
                             f"got {tuple(o.shape)} {o.dtype} on {o.device}")
        res.append(o)
    return res


def _run(blocks: list[Tensor], order: Tensor | None, outs: list[Tensor], mean: bool,
         diagnostics: bool, check: bool) -> tuple[Tensor, Tensor | None, Tensor | None]:
    ext = load_extension()
    g0 = blocks[0]
    L, T, dev = len(blocks), g0.shape[0], g0.device
    # one float64 buffer (Gram, weights, cosines) and one int64 buffer (conflicts, workspace):
    # few allocations, as host time counts at small P on CUDA
    TT, nw = T * T, (T if order is not None else 0)
    f64 = torch.empty(L * (TT * (2 if diagnostics else 1) + nw), dtype=torch.float64, device=dev)
    gram = f64[: L * TT].view(L, T, T)
    weights = f64[L * TT: L * (TT + nw)].view(L, T) if order is not None else None
    cosine = f64[L * (TT + nw):].view(L, T, T) if diagnostics else None
    nbytes = 0
    if g0.is_cuda:
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        nbytes = ext.pcgrad_workspace_bytes(T, [g.shape[1] for g in blocks], g0.dtype == torch.float64, index)
    nws = (nbytes + 7) // 8
    i64 = torch.empty(nws + (L if diagnostics else 0), dtype=torch.int64, device=dev)
    workspace = i64[:nws] if g0.is_cuda else None  # first: the allocation's alignment
    conflicts = i64[nws:] if diagnostics else None
    status = torch.empty(1, dtype=torch.int32, device=dev)  # zeroed by the kernel
    if diagnostics and not check:
        # the kernel skips the diagnostics of a non-finite Gram (or a bad CUDA order): what it
        # leaves must read as "no value", not as uninitialised memory
        cosine.fill_(float("nan"))
        conflicts.fill_(-1)
    ext.pcgrad([view(g) for g in blocks], view(order), [view(o) for o in outs], view(gram),
               view(weights), view(cosine), view(conflicts), view(status), view(workspace), mean,
               stream(g0))
    if check:
        code = int(status.item())  # CUDA: one host synchronisation, after all launches
        if code & 1:
            bad = [l for l in range(L) if not torch.isfinite(gram[l]).all()]
            where = "G" if L == 1 else ", ".join(f"G[{l}]" for l in bad)
            raise ValueError(f"{where}: contains NaN or inf (its Gram matrix is not finite; for float64, "
                             "|g|² may also overflow)")
        if code & 2:
            raise ValueError(f"order: a row is not a permutation of 0..{T - 1}")
    return gram, cosine, conflicts


def _back(x: Tensor | None, is_numpy: bool) -> Any:
    return x.numpy() if (is_numpy and x is not None) else x


def gram(G: Array | Sequence[Array], *, dtype: torch.dtype | None = None, check: bool = True) -> Any:
    """Gram matrix ``G @ G.T`` of T task gradients, in one pass over G.

    Equals ``G @ G.T`` but accumulated in float64 whatever G's dtype (the products of
    float32 are exact in float64). Extra memory O(T²) (CPU), O(#CUDA blocks · T²) (CUDA).

    Args:
        G: T×P float32/float64 torch tensor (CPU or CUDA) or numpy array, unit column stride;
            or a list of T×P_l blocks: then one Gram per block, stacked L×T×T.
        dtype: of the result; default G's dtype. ``torch.float64`` keeps the full accumulation.
        check: raise on NaN/inf in G (on CUDA: one host synchronisation after the launch).

    Returns:
        T×T (or L×T×T) Gram, G's type (tensor or numpy) and device.
    """
    blocks, is_list, is_numpy = _blocks(G)
    K, _, _ = _run(blocks, None, [], False, False, check)
    K = K.to(blocks[0].dtype if dtype is None else dtype)
    return _back(K if is_list else K[0], is_numpy)


def pcgrad(
    G: Array | Sequence[Array],
    order: Array | None = None,
    generator: torch.Generator | None = None,
    reduction: str = "sum",
    return_diagnostics: bool = False,
    *,
    out: Array | Sequence[Array] | None = None,
    check: bool = True,
) -> Any:
    """The PCGrad update of T task gradients (Yu et al. 2020), from the Gram matrix.

    Equals the per-pair loop :func:`pyzsl.ops._reference.pcgrad` (``for i: for j in
    order[i]: if g_i·g_j < 0: g_i -= (g_i·g_j / |g_j|²) g_j``, then ``Σ_i g_i``) without the
    T projected copies: two reads of G, extra memory O(T²). Zero gradients are skipped (no
    division by zero). Not differentiable (it maps gradients to an update).

    Args:
        G: T×P float32/float64 torch tensor (CPU or CUDA) or numpy array of task gradients
            (unit column stride); or a list of T×P_l blocks, handled in one call (layer-wise
            PCGrad: each block projected with its own Gram, the task orders shared).
        order: T×T int64, row i a permutation of 0..T-1: the order in which g_i is projected
            against the others (its own index skipped). Given, CPU, CUDA and the reference
            make the same projections, except where a dot product is within rounding of 0
            (each sums in its own order).
        generator: draws ``order`` when it is not given (one ``randperm(T)`` per row, on the
            generator's device; the default CPU generator when None).
        reduction: ``"sum"`` of the projected gradients, or their ``"mean"``.
        return_diagnostics: also return :class:`PCGradDiagnostics` (Gram, cosines, number of
            conflicting pairs).
        out: optional preallocated (P,) buffer (a list for a list G), G's dtype and device.
        check: raise ValueError on NaN/inf in G or a bad CUDA ``order``. On CUDA this reads one
            status word (one host synchronisation, after all launches); with False the call
            stays asynchronous and a NaN in G gives a NaN update (NaN cosines, -1 conflicts)
            for the block that holds it; the other blocks of a list are computed as usual.

    Returns:
        The (P,) update of G's type and device (a list of (P_l,) for a list G), and with
        ``return_diagnostics`` a ``(update, PCGradDiagnostics)`` pair.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction: expected one of {REDUCTIONS}, got {reduction!r}")
    blocks, is_list, is_numpy = _blocks(G)
    T = blocks[0].shape[0]
    order_t = _order(order, generator, T, blocks[0].device)
    outs = _outputs(out, blocks, is_list)
    K, cos, conf = _run(blocks, order_t, outs, reduction == "mean", return_diagnostics, check)
    update = [_back(o, is_numpy) for o in outs] if is_list else _back(outs[0], is_numpy)
    if not return_diagnostics:
        return update
    if not is_list:
        K, cos, conf = K[0], cos[0], conf[0]
    return update, PCGradDiagnostics(_back(K, is_numpy), _back(cos, is_numpy), _back(conf, is_numpy))
