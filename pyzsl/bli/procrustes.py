"""Orthogonal Procrustes and VecMap's supervised refinements (Artetxe et al., 2018 AAAI).

A mapping is a :class:`LinearMap`: source vectors are mapped as ``X @ src`` and target vectors as
``Z @ tgt`` (``tgt=None``: the target space is left as it is), and translation retrieves mapped
targets for mapped sources by cosine / CSLS.

``procrustes(X, Z, pairs)`` with the defaults is the orthogonal Procrustes solution
``W = U V^T`` from the SVD ``X_D^T Z_D = U S V^T`` of the dictionary's cross-covariance
(Schönemann, 1966; Xing et al., 2015; Smith et al., 2017), the "VecMap --orthogonal" and MUSE
``supervised.py`` iteration-0 mapping. The keyword options are the steps of Artetxe et al.'s
(2018 AAAI) multi-step framework, applied in this order:

1. ``whiten``: both dictionary sub-matrices are whitened, ``W1 = (X_D^T X_D)^{-1/2}``,
   ``W2 = (Z_D^T Z_D)^{-1/2}``;
2. orthogonal mapping: ``U, S, V`` from the SVD of the (whitened) cross-covariance, both sides
   rotated into the common space (``X W1 U``, ``Z W2 V``);
3. re-weighting: columns scaled by ``S ** src_reweight`` / ``S ** tgt_reweight``;
4. de-whitening: ``src_dewhiten="src"`` multiplies by ``U^T W1^{-1} U`` (``"tgt"``: by
   ``V^T W2^{-1} V``), likewise ``tgt_dewhiten``;
5. ``dim``: keep the first ``dim`` dimensions of the common space.

``VECMAP_SUPERVISED`` holds VecMap's ``--supervised`` preset (whiten, re-weight 0.5/0.5,
de-whiten src/tgt). Cost: O(n·d² + d³) for n dictionary pairs; memory O(n·d + d²).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

VECMAP_SUPERVISED: dict[str, Any] = dict(
    whiten=True, src_reweight=0.5, tgt_reweight=0.5, src_dewhiten="src", tgt_dewhiten="tgt"
)


@dataclass
class LinearMap:
    """A linear map of both spaces into a common one: ``X @ src`` and ``Z @ tgt``.

    ``src``: d_src × d (float tensor); ``tgt``: d_tgt × d, or ``None`` for the identity (the
    usual case of an orthogonal map of the source onto the target space).
    """

    src: Tensor
    tgt: Tensor | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.src, Tensor) or self.src.dim() != 2:
            raise ValueError(f"LinearMap.src must be a 2-D tensor, got {_shape_of(self.src)}")
        if self.tgt is not None:
            if not isinstance(self.tgt, Tensor) or self.tgt.dim() != 2:
                raise ValueError(f"LinearMap.tgt must be a 2-D tensor or None, got {_shape_of(self.tgt)}")
            if self.tgt.shape[1] != self.src.shape[1]:
                raise ValueError(
                    f"LinearMap: src maps to {self.src.shape[1]} dims but tgt to {self.tgt.shape[1]}"
                )

    def __repr__(self) -> str:  # the shapes, not the d×d matrices
        tgt = "identity" if self.tgt is None else f"{tuple(self.tgt.shape)}"
        return f"LinearMap(src={tuple(self.src.shape)} {self.src.dtype}, tgt={tgt})"

    @property
    def dim(self) -> int:
        """Dimension of the common space."""
        return int(self.src.shape[1])

    def map_src(self, X: Tensor) -> Tensor:
        """Source vectors (n × d_src) → common space."""
        _check_cols(X, self.src.shape[0], "map_src: X")
        return X.to(self.src.dtype) @ self.src.to(X.device)

    def map_tgt(self, Z: Tensor) -> Tensor:
        """Target vectors (n × d_tgt) → common space (unchanged when ``tgt`` is None)."""
        if self.tgt is None:
            if Z.shape[-1] != self.src.shape[1]:
                raise ValueError(
                    f"map_tgt: Z has {Z.shape[-1]} columns, the common space has {self.src.shape[1]}"
                )
            return Z
        _check_cols(Z, self.tgt.shape[0], "map_tgt: Z")
        return Z.to(self.tgt.dtype) @ self.tgt.to(Z.device)

    def to(self, device=None, dtype=None) -> "LinearMap":
        return LinearMap(
            self.src.to(device=device, dtype=dtype),
            None if self.tgt is None else self.tgt.to(device=device, dtype=dtype),
        )

    def is_orthogonal(self, atol: float = 1e-4) -> bool:
        """True when ``tgt`` is None and ``src`` has orthonormal columns (or rows)."""
        if self.tgt is not None:
            return False
        W = self.src.double()
        G = W.T @ W if W.shape[0] >= W.shape[1] else W @ W.T
        return bool(torch.allclose(G, torch.eye(G.shape[0], dtype=G.dtype, device=G.device), atol=atol))

    def state_dict(self) -> dict[str, np.ndarray | None]:
        """Plain numpy arrays (for ``np.savez`` / JSON-free saving)."""
        return {
            "src": self.src.detach().cpu().numpy(),
            "tgt": None if self.tgt is None else self.tgt.detach().cpu().numpy(),
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> "LinearMap":
        tgt = state.get("tgt")
        return cls(torch.as_tensor(np.asarray(state["src"])),
                   None if tgt is None else torch.as_tensor(np.asarray(tgt)))


def _shape_of(x) -> str:
    return f"shape {tuple(x.shape)}" if hasattr(x, "shape") else type(x).__name__


def _check_cols(X, d: int, name: str) -> None:
    if not isinstance(X, Tensor) or X.dim() != 2:
        raise ValueError(f"{name} must be a 2-D tensor, got {_shape_of(X)}")
    if X.shape[1] != d:
        raise ValueError(f"{name} has {X.shape[1]} columns, the map expects {d}")


def as_pairs(pairs, n_src: int, n_tgt: int, name: str = "pairs") -> Tensor:
    """Validate a dictionary as an int64 tensor (n, 2) of (source row, target row)."""
    if isinstance(pairs, np.ndarray) or isinstance(pairs, (list, tuple)):
        a = np.asarray(pairs) if len(pairs) else np.zeros((0, 2), np.int64)
        if a.dtype.kind not in "iu":  # never truncate 0.7 to 0 or parse "1"
            raise TypeError(f"{name} must hold integer row indices, got {a.dtype}")
        pairs = torch.as_tensor(a.astype(np.int64).reshape(-1, 2))
    if not isinstance(pairs, Tensor):
        raise TypeError(f"{name} must be an int tensor (n, 2), got {type(pairs).__name__}")
    if pairs.dtype.is_floating_point or pairs.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer row indices, got {pairs.dtype}")
    if pairs.dim() != 2 or pairs.shape[1] != 2:
        raise ValueError(f"{name} must have shape (n, 2), got {tuple(pairs.shape)}")
    if pairs.shape[0] == 0:
        raise ValueError(f"{name} is empty: at least one (source, target) pair is needed")
    pairs = pairs.long().cpu()
    for col, n, side in ((0, n_src, "source"), (1, n_tgt, "target")):
        lo, hi = int(pairs[:, col].min()), int(pairs[:, col].max())
        if lo < 0 or hi >= n:
            raise IndexError(f"{name}: {side} index {hi if hi >= n else lo} out of range [0, {n})")
    return pairs


def _check_matrix(X, name: str) -> Tensor:
    if isinstance(X, np.ndarray):
        X = torch.from_numpy(X)
    if not isinstance(X, Tensor) or X.dim() != 2:
        raise ValueError(f"{name} must be a 2-D tensor (words × dims), got {_shape_of(X)}")
    if not X.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {X.dtype}")
    return X


def _inv_sqrt_psd(A: Tensor, power: float, rtol: float = 1e-6) -> Tensor:
    """``A ** power`` for a symmetric PSD matrix (float64); eigenvalues floored at rtol·max."""
    evals, evecs = torch.linalg.eigh(A)
    floor = evals.max().clamp_min(1e-300) * rtol
    evals = evals.clamp_min(floor)
    return (evecs * evals.pow(power)) @ evecs.T


def orthogonal_procrustes(A: Tensor, B: Tensor) -> Tensor:
    """``argmax_W tr(W^T A^T B)`` over W with orthonormal columns or rows (d_a × d_b):
    ``W = U V^T``; for square W this is ``argmin_W ||A W − B||_F`` over orthogonal maps.

    ``U, S, V^T = svd(A^T B)``; computed in float64, returned in A's dtype.
    """
    A = _check_matrix(A, "A")
    B = _check_matrix(B, "B")
    if A.shape[0] != B.shape[0]:
        raise ValueError(f"orthogonal_procrustes: A has {A.shape[0]} rows, B has {B.shape[0]}")
    U, _, Vt = torch.linalg.svd(A.double().T @ B.double(), full_matrices=False)
    return (U @ Vt).to(A.dtype)


def procrustes(
    X: Tensor,
    Z: Tensor,
    pairs: Tensor | None = None,
    *,
    whiten: bool = False,
    src_reweight: float = 0.0,
    tgt_reweight: float = 0.0,
    src_dewhiten: str | None = None,
    tgt_dewhiten: str | None = None,
    dim: int | None = None,
) -> LinearMap:
    """Fit a :class:`LinearMap` on a dictionary.

    ``X`` (n_src × d_src), ``Z`` (n_tgt × d_tgt): the (normalised) embeddings; ``pairs``: int
    tensor (n, 2) of (source row, target row). With ``pairs=None``, ``X`` and ``Z`` are the
    dictionary's rows already (row i of X translates to row i of Z).

    Defaults: orthogonal Procrustes, returned as ``LinearMap(W, None)``. See the module docstring
    for ``whiten`` / ``*_reweight`` / ``*_dewhiten`` / ``dim`` (Artetxe et al., 2018 AAAI) and
    ``VECMAP_SUPERVISED`` for VecMap's preset: ``procrustes(X, Z, D, **VECMAP_SUPERVISED)``.
    """
    X = _check_matrix(X, "X")
    Z = _check_matrix(Z, "Z")
    if pairs is None:
        if X.shape[0] != Z.shape[0]:
            raise ValueError(
                f"procrustes: without pairs, X and Z must have the same rows, got {X.shape[0]} and {Z.shape[0]}"
            )
        if X.shape[0] == 0:
            raise ValueError("procrustes: empty dictionary")
        Xd, Zd = X, Z
    else:
        pairs = as_pairs(pairs, X.shape[0], Z.shape[0])
        idx = pairs.to(X.device)
        Xd, Zd = X[idx[:, 0]], Z[idx[:, 1].to(Z.device)]
    for v, name in ((src_dewhiten, "src_dewhiten"), (tgt_dewhiten, "tgt_dewhiten")):
        if v not in (None, "src", "tgt"):
            raise ValueError(f"procrustes: {name} must be None, 'src' or 'tgt', got {v!r}")
        if v is not None and not whiten:
            raise ValueError(f"procrustes: {name}={v!r} needs whiten=True (de-whitening undoes whitening)")
    dtype = X.dtype
    Xd = Xd.double()
    Zd = Zd.double().to(Xd.device)
    if not whiten and not src_reweight and not tgt_reweight and dim is None:
        U, _, Vt = torch.linalg.svd(Xd.T @ Zd, full_matrices=False)
        return LinearMap((U @ Vt).to(dtype))

    ds, dt = Xd.shape[1], Zd.shape[1]
    W1 = torch.eye(ds, dtype=torch.float64, device=Xd.device)
    W2 = torch.eye(dt, dtype=torch.float64, device=Xd.device)
    if whiten:
        if Xd.shape[0] < max(ds, dt):
            warnings.warn(
                f"procrustes: whitening with {Xd.shape[0]} pairs in {max(ds, dt)} dims: the dictionary's "
                "covariance is singular (eigenvalues are floored); prefer whiten=False for small dictionaries",
                stacklevel=2,
            )
        W1 = _inv_sqrt_psd(Xd.T @ Xd, -0.5)
        W2 = _inv_sqrt_psd(Zd.T @ Zd, -0.5)
    U, S, Vt = torch.linalg.svd((Xd @ W1).T @ (Zd @ W2), full_matrices=False)
    V = Vt.T
    A = W1 @ U * S.pow(src_reweight)  # X → common space (before de-whitening)
    B = W2 @ V * S.pow(tgt_reweight)
    if src_dewhiten == "src":
        A = A @ (U.T @ torch.linalg.inv(W1) @ U)
    elif src_dewhiten == "tgt":
        A = A @ (V.T @ torch.linalg.inv(W2) @ V)
    if tgt_dewhiten == "src":
        B = B @ (U.T @ torch.linalg.inv(W1) @ U)
    elif tgt_dewhiten == "tgt":
        B = B @ (V.T @ torch.linalg.inv(W2) @ V)
    if dim is not None:
        if not 1 <= dim <= A.shape[1]:
            raise ValueError(f"procrustes: dim must be in [1, {A.shape[1]}], got {dim}")
        A, B = A[:, :dim], B[:, :dim]
    return LinearMap(A.to(dtype).contiguous(), B.to(dtype).contiguous())
