"""Retrieval with the targets sharded across ``torch.distributed`` ranks.

When one machine cannot hold (or sweep) the whole target vocabulary, each rank holds a slice of
it, ``T_r`` = rows ``[offset_r, offset_r + C_r)`` of the global ``T`` in rank order (shards may
differ in size), and every rank holds the same queries. A top-k is then exact and cheap to
combine: each rank sweeps its shard with the fused top-k (:func:`pyzsl.bli.retrieval.topk`),
the B × k candidates (values and global indices) are all-gathered, and every rank merges them
to the same answer (ties between shards: the smaller global index; within a shard as the
backend keeps them, see :mod:`pyzsl.bli.retrieval`).

- :func:`sharded_topk`: top-k of ``Q @ T.T + bias``.
- :func:`sharded_csls`: CSLS (Conneau et al., 2018). ``r_T`` of a target needs only its own
  rank's shard and the source space (given in full to every rank, as the queries are);
  ``r_Q`` needs every shard: its top-``knn`` is merged like the retrieval, and on the kernel
  both come out of one sweep of the shard.

Communication per call: ``world × B × k`` values and indices (for CSLS also ``× knn``), never
scores. Memory per rank: its shard, the queries and the source space, O(world·B·k) for the
merge, plus the kernel's one score tile. Any process group works (gloo for CPU tensors, NCCL
for CUDA); ``group=None`` is the default group.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from pyzsl.bli.retrieval import (_as_matrix, _as_vector, _near_and_biased, _positive_int, _spaces, _tie_sort,
                                 knn_mean, topk)

__all__ = ["sharded_topk", "sharded_csls"]


def _check_dist(group) -> int:
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("sharded retrieval needs torch.distributed initialised "
                           "(torch.distributed.init_process_group) on every rank")
    return dist.get_world_size(group)


def _layout(Q: Tensor, n_local: int, group) -> tuple[int, int]:
    """``(offset of this rank's shard, total targets)`` from one all-gather of every rank's
    (queries, dims, shard rows); every rank must hold the same queries (the merges' all-gathers
    need equal shapes) and some rank a target. Every rank raises alike, none hangs."""
    world = _check_dist(group)
    mine = torch.tensor([Q.shape[0], Q.shape[1], n_local], dtype=torch.int64, device=Q.device)
    every = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(every, mine, group=group)
    if any(not torch.equal(e[:2], every[0][:2]) for e in every):
        raise ValueError("Q: every rank must hold the same queries; got shapes "
                         + ", ".join(str(tuple(e[:2].tolist())) for e in every))
    counts = [int(e[2]) for e in every]
    if sum(counts) == 0:
        raise ValueError("T_shard: no rank holds any target")
    return sum(counts[:dist.get_rank(group)]), sum(counts)


def _gather_merge(v: Tensor, j: Tensor, k: int, group) -> tuple[Tensor, Tensor]:
    """All-gather every rank's (B × k) candidates and keep the best k per row."""
    world = dist.get_world_size(group)
    vs = [torch.empty_like(v) for _ in range(world)]
    js = [torch.empty_like(j) for _ in range(world)]
    dist.all_gather(vs, v.contiguous(), group=group)
    dist.all_gather(js, j.contiguous(), group=group)
    v, j = _tie_sort(torch.cat(vs, 1), torch.cat(js, 1))
    return v[:, :k], j[:, :k]


def _pad(v: Tensor, j: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Widen a shard's candidates to k columns (a shard may hold fewer than k targets): the
    padding (−inf, an index past every target) sorts after every real candidate."""
    if v.shape[1] == k:
        return v, j
    pad = k - v.shape[1]
    v = torch.cat([v, v.new_full((v.shape[0], pad), float("-inf"))], 1)
    j = torch.cat([j, j.new_full((j.shape[0], pad), torch.iinfo(torch.int64).max)], 1)
    return v, j


def _local_topk(Q: Tensor, T: Tensor, k: int, bias: Tensor | None, offset: int, backend: str):
    if T.shape[0] == 0:
        return _pad(Q.new_empty(Q.shape[0], 0), torch.empty(Q.shape[0], 0, dtype=torch.int64,
                                                             device=Q.device), k)
    v, j = topk(Q, T, min(k, T.shape[0]), bias, backend=backend)
    return _pad(v, j + offset, k)


def sharded_topk(Q, T_shard, k: int, bias: Tensor | None = None, *, group=None,
                 backend: str = "auto") -> tuple[Tensor, Tensor]:
    """Top-``k`` of ``Q @ T.T + bias`` over the targets of every rank: ``(values, global
    indices)``, B × k, the same on every rank. ``T_shard``: this rank's rows of T (may be
    empty); ``bias``: this rank's part of the bias. Raw inner products, as
    :func:`pyzsl.bli.retrieval.topk`; ``k`` is clipped to the total number of targets.
    """
    Q = _as_matrix(Q, "Q")
    T = _as_matrix(T_shard, "T_shard", like=Q)
    _positive_int(k, "k")
    if bias is not None:
        bias = _as_vector(bias, "bias", T.shape[0], like=Q).contiguous()
    offset, total = _layout(Q, T.shape[0], group)
    k = min(k, total)
    v, j = _local_topk(Q, T, k, bias, offset, backend)
    return _gather_merge(v, j, k, group)


def sharded_csls(Q, T_shard, k: int = 1, *, knn: int = 10, src=None, normalize: bool = True,
                 group=None, backend: str = "auto") -> tuple[Tensor, Tensor]:
    """CSLS over the targets of every rank: ``(2 cos − r_T − r_Q, global indices)``, B × k.

    ``src``: the (mapped) source space whose neighbourhoods define ``r_T`` (default ``Q``), the
    same on every rank. Equals :func:`pyzsl.bli.retrieval.csls` on the concatenated shards.
    """
    _positive_int(k, "k")
    _positive_int(knn, "knn")
    Q = _as_matrix(Q, "Q")
    Q, T, S = _spaces(Q, _as_matrix(T_shard, "T_shard", like=Q), src, normalize)  # errors name T_shard
    offset, total = _layout(Q, T.shape[0], group)
    # r_Q's neighbours are targets (at most ``total``); r_T's are source words, clipped by knn_mean
    k, knn_q = min(k, total), min(knn, total)
    if T.shape[0]:
        c = T.shape[0]
        bias = -0.5 * knn_mean(T, S, knn, backend=backend)
        (nv, nj), (v, j) = _near_and_biased(Q, T, min(knn_q, c), min(k, c), bias, backend)
        near, _ = _pad(nv, nj + offset, knn_q)
        v, j = _pad(v, j + offset, k)
    else:  # an empty shard offers only padding
        near, _ = _local_topk(Q, T, knn_q, None, offset, backend)
        v, j = _local_topk(Q, T, k, None, offset, backend)
    near, _ = _gather_merge(near, torch.zeros_like(near, dtype=torch.int64), knn_q, group)
    v, j = _gather_merge(v, j, k, group)
    return 2 * v - near.mean(dim=1, keepdim=True), j
