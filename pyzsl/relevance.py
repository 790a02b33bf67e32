"""Task relevance: how similar two models' features are on the same inputs.

* :func:`cca_similarity` — mean canonical correlation (the ρ̄ of SVCCA, Raghu et al., 2017):
  invariant to any invertible linear map of either feature set (it only sees their column
  spaces after centring). Optional SVD truncation first (``keep``: SVCCA proper), which gives up
  exact invariance for robustness to noise directions.
* :func:`linear_cka` — linear centred kernel alignment (Kornblith et al., 2019): invariant to
  orthogonal maps and isotropic scaling, not to arbitrary invertible maps.
* :func:`pick_checkpoint` — rank candidate checkpoints for a new task by either measure.

Inputs are N×d arrays (torch or numpy) of features on the same N inputs, N ≫ d: with
``rank(X) + rank(Y) > N`` some canonical correlations are 1 by construction (a warning says so).
Computation in float64; memory O(N·(d1 + d2)) for the inputs plus the d×d (CCA; CKA:
min(N, d)²) products.
"""
from __future__ import annotations

import warnings
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["canonical_correlations", "cca_similarity", "linear_cka", "pick_checkpoint", "MEASURES"]


def _as64(X, name: str) -> Tensor:
    if isinstance(X, np.ndarray):
        X = torch.from_numpy(np.ascontiguousarray(X))  # torch refuses negative strides (X[:, ::-1])
    if not isinstance(X, Tensor):
        raise TypeError(f"{name} must be a torch tensor or numpy array, got {type(X).__name__}")
    if X.dim() != 2:
        raise ValueError(f"{name} must be 2-D (N inputs × d features), got shape {tuple(X.shape)}")
    X = X.detach().to("cpu", torch.float64)
    if not torch.isfinite(X).all():
        raise ValueError(f"{name} has non-finite entries")
    return X


def _pair(X, Y) -> tuple[Tensor, Tensor]:
    X, Y = _as64(X, "X"), _as64(Y, "Y")
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"X and Y must hold features of the same inputs: {X.shape[0]} vs {Y.shape[0]} rows")
    if X.shape[0] < 2:
        raise ValueError("need at least 2 inputs")
    return X - X.mean(0), Y - Y.mean(0)


def _basis(X: Tensor, keep: float | None, rtol: float) -> Tensor:
    """Orthonormal basis of the (centred) column space, optionally only its top-variance part."""
    U, s, _ = torch.linalg.svd(X, full_matrices=False)
    if s.numel() == 0 or float(s[0]) == 0.0:
        return U[:, :0]
    r = int((s > rtol * s[0]).sum())
    if keep is not None:
        if not 0 < keep <= 1:
            raise ValueError(f"keep must be in (0, 1], got {keep}")
        var = s[:r] ** 2
        k = int(torch.searchsorted(torch.cumsum(var, 0) / var.sum(), torch.tensor(keep, dtype=var.dtype))) + 1
        r = min(k, r)  # rounding can leave the cumulative share just below keep: never past the rank
    return U[:, :r]


def canonical_correlations(X, Y, keep: float | None = None, rtol: float = 1e-10) -> Tensor:
    """Canonical correlations between the column spaces of X and Y (descending, in [0, 1])."""
    Xc, Yc = _pair(X, Y)
    Ux, Uy = _basis(Xc, keep, rtol), _basis(Yc, keep, rtol)
    if Ux.shape[1] == 0 or Uy.shape[1] == 0:
        raise ValueError("X or Y is constant across inputs (zero rank after centring): no correlation defined")
    if Ux.shape[1] + Uy.shape[1] > Xc.shape[0] - 1:
        warnings.warn(f"rank(X) + rank(Y) = {Ux.shape[1] + Uy.shape[1]} exceeds N - 1 = {Xc.shape[0] - 1}: "
                      f"some canonical correlations are 1 by construction; use more inputs or keep=",
                      RuntimeWarning, stacklevel=3)
    return torch.linalg.svdvals(Ux.T @ Uy).clamp(0.0, 1.0)


def cca_similarity(X, Y, keep: float | None = None, rtol: float = 1e-10) -> float:
    """Mean canonical correlation of X (N×d1) and Y (N×d2) (Raghu et al., 2017).

    Equal for ``(X, Y)`` and ``(X A, Y B)`` for any invertible A, B (when ``keep`` is None).
    """
    return float(canonical_correlations(X, Y, keep, rtol).mean())


def linear_cka(X, Y) -> float:
    """Linear CKA (Kornblith et al., 2019): ``||Yᵀ X||_F² / (||Xᵀ X||_F ||Yᵀ Y||_F)`` after centring.

    In feature space (d×d products) when N ≥ the widths, else in input space with the N×N Grams
    ``K = X Xᵀ``, ``L = Y Yᵀ``: ``<K, L> / (||K|| ||L||)``, the same number; memory
    O(min(N, d)²) beyond the inputs either way."""
    Xc, Yc = _pair(X, Y)
    if Xc.shape[0] < max(Xc.shape[1], Yc.shape[1]):
        K, L = Xc @ Xc.T, Yc @ Yc.T
        num, den = (K * L).sum(), torch.linalg.matrix_norm(K) * torch.linalg.matrix_norm(L)
    else:
        num = torch.linalg.matrix_norm(Yc.T @ Xc) ** 2
        den = torch.linalg.matrix_norm(Xc.T @ Xc) * torch.linalg.matrix_norm(Yc.T @ Yc)
    if float(den) == 0.0:
        raise ValueError("X or Y is constant across inputs: CKA undefined")
    return float(num / den)


MEASURES = {"cca": cca_similarity, "cka": linear_cka}


def pick_checkpoint(candidates: Mapping[str, object] | Sequence[object], new_task_features,
                    measure: str = "cca", **kwargs) -> list[tuple[str | int, float]]:
    """Rank checkpoints for a new task, most similar first.

    ``candidates`` maps a checkpoint name (or, for a sequence, its index) to its features on N
    inputs of the new task; ``new_task_features`` are features of the new task on the same inputs
    (e.g. a small probe model trained on it, or its one-hot labels). ``measure``: "cca" (mean
    canonical correlation, default) or "cka". Returns ``[(name, score), ...]`` sorted by score,
    ties kept in input order; the first entry is the checkpoint to start from.
    """
    if measure not in MEASURES:
        raise ValueError(f"measure must be one of {sorted(MEASURES)}, got {measure!r}")
    items = list(candidates.items()) if isinstance(candidates, Mapping) else list(enumerate(candidates))
    if not items:
        raise ValueError("candidates is empty")
    fn = MEASURES[measure]
    scored = []
    for name, feats in items:
        try:
            scored.append((name, fn(feats, new_task_features, **kwargs)))
        except (ValueError, TypeError) as e:
            raise type(e)(f"candidate {name!r}: {e}") from e
    return sorted(scored, key=lambda kv: -kv[1])
