"""RCSLS: a linear map trained on the relaxed CSLS criterion (Joulin et al., 2018 EMNLP).

For dictionary pairs (x_i, y_i), target vocabulary ``Z_T`` and source vocabulary ``Z_S`` (the
first ``max_neg`` words of each space), the criterion maximised over W (``x ↦ x W``) is

    RCSLS(W) = 1/n Σ_i [ 2 ⟨x_i W, y_i⟩ − 1/k Σ_{y ∈ N_T(x_i W)} ⟨x_i W, y⟩
                                      − 1/k Σ_{z ∈ N_S(y_i)} ⟨z W, y_i⟩ ]

with N_T(x_i W) the k targets nearest to the mapped source word and N_S(y_i) the k mapped
source words nearest to the target word: CSLS with the unit-norm constraint on x W relaxed.
Training as fastText's ``alignment/align.py``: W starts from orthogonal Procrustes, full-batch
(or ``batch_size`` SGD) gradient steps with step ``lr``; a step that lowers the criterion is
undone and halves ``lr``; stop after ``n_iter`` steps or when ``lr < min_lr``. Optional
``constraint``: ``"spectral"`` (singular values clipped to [0, 1] after every step, as
fastText's ``--model spectral``) or ``"orthogonal"`` (projected to the nearest orthogonal map).

Both k-NN terms go through the fused similarity top-k (:func:`pyzsl.bli.retrieval.topk`), so
the B × |vocabulary| score matrices are never formed: extra memory per step is
O(B·(k + d)) for a batch of B pairs (the neighbours' sum), plus the kernel's tile, plus d²;
the vocabularies themselves are only read. At 200k × 200k words × 300 d this is the two
embedding matrices (2 × 240 MB float32) plus a few MB.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from pyzsl.bli.procrustes import LinearMap, _check_matrix, as_pairs, procrustes
from pyzsl.bli.retrieval import topk

log = logging.getLogger(__name__)

CONSTRAINTS = (None, "none", "spectral", "orthogonal")


@dataclass
class RCSLSResult:
    """``mapping``: the trained :class:`LinearMap` (``tgt`` is None); ``objective``: its RCSLS
    criterion on the training pairs; ``history``: one dict per step (``iter, objective, lr``)."""

    mapping: LinearMap
    objective: float
    history: list[dict[str, Any]] = field(default_factory=list)


def _neighbour_sum(Q: Tensor, T: Tensor, k: int, backend: str, chunk: int = 4096) -> tuple[Tensor, Tensor]:
    """For each row q of Q: (mean of its k largest ⟨q, t⟩, mean of those k rows t), O(B·(k+d)).

    Repeated rows (a word with several translations) are searched once."""
    Q, inv = torch.unique(Q, dim=0, return_inverse=True)
    vals, sums = [], []
    for i in range(0, Q.shape[0], chunk):
        v, j = topk(Q[i:i + chunk], T, k, backend=backend)
        vals.append(v.mean(1))
        sums.append(F.embedding_bag(j, T, mode="mean"))  # the k rows averaged without a B×k×d gather
    return torch.cat(vals)[inv], torch.cat(sums)[inv]


def rcsls_objective(Xd: Tensor, Yd: Tensor, Zs: Tensor, Zt: Tensor, W: Tensor, knn: int = 10,
                    backend: str = "auto", grad: bool = False):
    """The RCSLS criterion (to maximise) of ``W`` on pairs ``(Xd[i], Yd[i])`` with source /
    target vocabularies ``Zs`` / ``Zt``; with ``grad=True`` also its gradient wrt W."""
    n = Xd.shape[0]
    XW = Xd @ W
    k_t, k_s = min(knn, Zt.shape[0]), min(knn, Zs.shape[0])
    # N_T(x_i W): targets nearest to the mapped source word
    f_t, nbr_t = _neighbour_sum(XW, Zt, k_t, backend)
    # N_S(y_i): mapped source words z W nearest to y_i, i.e. top-k of ⟨z, y_i W^T⟩
    f_s, nbr_s = _neighbour_sum(Yd @ W.T, Zs, k_s, backend)
    f = (2 * (XW * Yd).sum(1) - f_t - f_s).mean()
    if not grad:
        return float(f)
    # d⟨x W, y⟩/dW = x^T y
    g = (2 * Xd.T @ Yd - Xd.T @ nbr_t - nbr_s.T @ Yd) / n
    return float(f), g


def _project(W: Tensor, constraint: str | None) -> Tensor:
    if constraint in (None, "none"):
        return W
    U, S, Vt = torch.linalg.svd(W.double(), full_matrices=False)
    if constraint == "orthogonal":
        return (U @ Vt).to(W.dtype)
    return ((U * S.clamp(0.0, 1.0)) @ Vt).to(W.dtype)  # spectral


def rcsls(
    X: Tensor,
    Z: Tensor,
    pairs: Tensor,
    *,
    init: LinearMap | Tensor | None = None,
    knn: int = 10,
    n_iter: int = 30,
    lr: float = 1.0,
    min_lr: float = 1e-4,
    batch_size: int = 10000,
    max_neg: int = 200000,
    constraint: str | None = "spectral",
    reg: float = 0.0,
    device: str | torch.device | None = None,
    backend: str = "auto",
    random_state: int = 0,
    progress: bool = True,
) -> RCSLSResult:
    """Train an RCSLS map from ``X`` (n_src × d, normalised) to ``Z`` (n_tgt × d) on ``pairs``.

    ``init``: a starting map (``LinearMap`` with ``tgt=None`` or a d × d tensor; default:
    orthogonal Procrustes on ``pairs``). ``max_neg``: the first ``max_neg`` words of each space
    form the vocabularies of the k-NN terms (fastText: 200000). ``batch_size``: pairs per step
    (all of them when there are fewer: deterministic, and the criterion never decreases).
    ``constraint``: None, ``"spectral"`` or ``"orthogonal"``; ``reg``: weight decay on W.
    """
    X = _check_matrix(X, "X")
    Z = _check_matrix(Z, "Z")
    pairs = as_pairs(pairs, X.shape[0], Z.shape[0])
    if constraint not in CONSTRAINTS:
        raise ValueError(f"rcsls: constraint must be None, 'spectral' or 'orthogonal', got {constraint!r}")
    for name, v in (("knn", knn), ("batch_size", batch_size), ("max_neg", max_neg)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"rcsls: {name} must be a positive int, got {v!r}")
    if not isinstance(n_iter, int) or n_iter < 0:
        raise ValueError(f"rcsls: n_iter must be an int >= 0, got {n_iter!r}")
    if not lr > 0:
        raise ValueError(f"rcsls: lr must be > 0, got {lr!r}")
    device = torch.device(device) if device is not None else X.device
    X, Z = X.to(device), Z.to(device, X.dtype)
    if init is None:
        W = procrustes(X, Z, pairs).src
    elif isinstance(init, LinearMap):
        if init.tgt is not None:
            raise ValueError("rcsls: init must map the source onto the target space (LinearMap.tgt=None)")
        W = init.src
    elif isinstance(init, Tensor):
        W = init
    else:
        raise TypeError(f"rcsls: init must be a LinearMap, a tensor or None, got {type(init).__name__}")
    if W.shape != (X.shape[1], Z.shape[1]):
        raise ValueError(f"rcsls: init map has shape {tuple(W.shape)}, expected {(X.shape[1], Z.shape[1])}")
    W = W.to(device, X.dtype).clone()
    idx = pairs.to(device)
    Xd, Yd = X[idx[:, 0]], Z[idx[:, 1]]
    Zs, Zt = X[:max_neg], Z[:max_neg]
    n = Xd.shape[0]
    full = batch_size >= n
    gen = torch.Generator().manual_seed(random_state)

    from tqdm.auto import tqdm

    history: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    f, g = rcsls_objective(Xd, Yd, Zs, Zt, W, knn, backend, grad=True) if full else (None, None)
    if full:
        history.append(dict(iter=0, objective=f, lr=lr, accepted=True, seconds=time.perf_counter() - t0))
    bar = tqdm(total=n_iter, desc="RCSLS", unit="step", disable=not progress, leave=False)
    try:
        for it in range(1, n_iter + 1):
            if lr < min_lr:
                break
            t0 = time.perf_counter()
            if not full:  # a fresh batch; the step is judged on that same batch
                sel = torch.randperm(n, generator=gen)[:batch_size].to(device)
                xb, yb = Xd[sel], Yd[sel]
                f, g = rcsls_objective(xb, yb, Zs, Zt, W, knn, backend, grad=True)
            else:
                xb, yb = Xd, Yd
            W_new = W * (1 - lr * reg) if reg > 0 else W
            W_new = _project(W_new + lr * g, constraint)  # gradient ascent on the criterion
            if full:
                f_new, g_new = rcsls_objective(xb, yb, Zs, Zt, W_new, knn, backend, grad=True)
            else:
                f_new, g_new = rcsls_objective(xb, yb, Zs, Zt, W_new, knn, backend), None
            accepted = f_new >= f
            if accepted:
                W, f, g = W_new, f_new, g_new
            else:  # the step lowered the criterion: undo it and halve the step (fastText)
                lr /= 2
            history.append(dict(iter=it, objective=f, lr=lr, accepted=accepted,
                                seconds=time.perf_counter() - t0))
            log.info("RCSLS step %d: criterion %.5f, lr %.3g%s", it, f, lr, "" if accepted else " (undone)")
            bar.update(1)
            bar.set_postfix(obj=f"{f:.4f}", lr=f"{lr:.3g}")
    finally:
        bar.close()
    objective = f if full else rcsls_objective(Xd, Yd, Zs, Zt, W, knn, backend)
    return RCSLSResult(LinearMap(W.contiguous()), objective, history)
