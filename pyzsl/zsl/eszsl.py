"""ESZSL: "An embarrassingly simple approach to zero-shot learning" (Romera-Paredes & Torr, 2015).

Closed form, with X (N×dv) the inputs, S (z×dt) the embeddings of the z training
classes and Y (N×z) the targets::

    V = (XᵀX + γI)⁻¹ Xᵀ Y S (SᵀS + λI)⁻¹          (dv×dt),  score(x, t) = xᵀ V t

so ``M = Vᵀ``. ``XᵀY S = Xᵀ S[y]`` for one-hot Y, so the N×z matrix Y is never formed:
memory O(N·dv + z·dt + d²), time O(N·d² + d³). Solved in float64.

Targets: ``"onehot"`` ({0, 1}, the default) or ``"pm1"`` (Y = 2·onehot − 1, the paper's
choice). With many classes ±1 targets collapse: each row of Y S is ``2 s_y − Σ_j s_j``,
dominated by the common ``−Σ_j s_j`` (0.0012 vs 0.2715 per-class top-1 on gloss2word's
1,690 unseen classes).
"""
from __future__ import annotations

import math
import time

import torch

from pyzsl.zsl._base import ArrayLike, _real
from pyzsl.zsl.classifier import _Prep

__all__ = ["ESZSL"]


class ESZSL(_Prep):
    """Closed-form bilinear zero-shot model (Romera-Paredes & Torr 2015).

    Args:
        gamma: ridge on the input side (γ). lam: ridge on the class side (λ).
        targets: ``"onehot"`` or ``"pm1"`` (see the module docstring).
        normalize_inputs, normalize_classes, center: as in ``ZeroShotClassifier``
            (off by default: the paper's plain form).
        device, dtype, backend: where/how ``M`` is used at prediction time.
        csls_k: hubness correction at prediction time, as in ``ZeroShotClassifier`` (0: off).
    """

    _param_names = ("gamma", "lam", "targets", "normalize_inputs", "normalize_classes", "center",
                    "device", "dtype", "backend", "csls_k")

    def __init__(
        self,
        gamma: float = 1.0,
        lam: float = 1.0,
        targets: str = "onehot",
        normalize_inputs: bool = False,
        normalize_classes: bool = False,
        center: bool = False,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        backend: str = "auto",
        csls_k: int = 0,
    ) -> None:
        self._set_common(normalize_inputs, normalize_classes, center, device, dtype, backend, csls_k)
        for name, v in (("gamma", gamma), ("lam", lam)):
            # 0 would make the solves singular whenever N < dv or the seen classes < dt (15
            # classes in 384 dims on supersense), and solve returns finite garbage then
            if not (_real(v) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
        if targets not in ("onehot", "pm1"):
            raise ValueError(f"targets must be 'onehot' or 'pm1', got {targets!r}")
        self.gamma = float(gamma)
        self.lam = float(lam)
        self.targets = targets

    def fit(self, X: ArrayLike, y: ArrayLike, class_embeddings: ArrayLike) -> "ESZSL":
        """Solve for ``M`` from ``X`` (N×dv), ``y`` (N,) and ``class_embeddings`` (C×dt).

        Only the rows of ``class_embeddings`` of the classes in ``y`` are read.
        """
        t0 = time.perf_counter()
        V, S, yl = self._fit_prep(X, y, class_embeddings)
        Xd, Sd = V.double(), S.double()
        dv, dt = Xd.shape[1], Sd.shape[1]
        XtYS = Xd.T @ Sd[yl]                      # Xᵀ (one-hot Y) S, without Y
        if self.targets == "pm1":                 # Y = 2·onehot − 1
            XtYS = 2 * XtYS - torch.outer(Xd.sum(0), Sd.sum(0))
        A = Xd.T @ Xd + self.gamma * torch.eye(dv, dtype=torch.float64, device=Xd.device)
        B = Sd.T @ Sd + self.lam * torch.eye(dt, dtype=torch.float64, device=Xd.device)
        # V = A⁻¹ XᵀYS B⁻¹ via two solves (B symmetric: (B⁻¹ W)ᵀ = Wᵀ B⁻¹).
        W = torch.linalg.solve(A, XtYS)           # dv×dt
        Vmap = torch.linalg.solve(B, W.T).T       # dv×dt
        if not torch.isfinite(Vmap).all():
            raise FloatingPointError("ESZSL solve produced NaN/inf: increase gamma or lam")
        self.M_ = Vmap.T.contiguous().to(self.dtype)
        self.fit_time_ = time.perf_counter() - t0
        return self
