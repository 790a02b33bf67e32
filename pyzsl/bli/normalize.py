"""Embedding normalisation steps, composable (Artetxe et al., 2018 AAAI; MUSE's ``renorm,center,renorm``).

``normalize(X, "unit,center,unit")`` is the default pre-processing of every mapping method in
:mod:`pyzsl.bli`: unit length rows, mean-centred columns, unit length again.

Steps (applied left to right):

========== ==========================================================================
``unit``       each row (word vector) scaled to L2 norm 1; all-zero rows stay zero
``center``     the mean vector (over words) subtracted from every row
``unitdim``    each column (dimension) scaled to L2 norm 1 over the words
               (VecMap's ``unitdim``); all-zero columns stay zero
``centeremb``  each row's own mean (over its dimensions) subtracted from it
``none``       nothing (so ``steps="none"`` or ``""`` copies the input)
========== ==========================================================================

``iterative`` (a name for the step list ``ITERATIVE``: ``"unit,center"`` five times, then
``"unit"``) is the iterative normalisation of Zhang et al. (2019, "Are girls neko or shōjo?"):
repeating length and mean normalisation brings both spaces close to unit-length *and* zero-mean
at once, which makes orthogonal maps between distant languages easier to learn. It is the
pre-processing of self-learning from few seeds and of the unsupervised mapping in
``benchmarks/bli.py`` (French → Finnish, 50 seeds: CSLS P@1 0.364 → 0.404 on the train pairs
held out from the seeds, where it was chosen): ``align(..., normalize="iterative")``, ``--normalize iterative``.

Memory: one copy of ``X`` (the input is never modified).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

STEPS = ("unit", "center", "unitdim", "centeremb", "none")
ITERATIVE = ",".join(["unit", "center"] * 5 + ["unit"])  # Zhang et al. (2019), 5 rounds


def parse_steps(steps: str | Sequence[str] | None) -> list[str]:
    """``"unit,center,unit"`` (or a list of names) → validated list of step names."""
    if steps is None:
        return []
    if isinstance(steps, str):
        names = [s.strip() for s in steps.replace(" ", ",").split(",")]
    else:
        names = [str(s).strip() for s in steps]
    names = [n for s in names if s for n in (ITERATIVE.split(",") if s == "iterative" else [s])]
    bad = [s for s in names if s not in STEPS]
    if bad:
        raise ValueError(
            f"normalize: unknown step(s) {bad} in steps={steps!r}; known steps: {', '.join(STEPS)}, "
            "iterative"
        )
    return [s for s in names if s != "none"]


def _as_tensor(X, name: str = "X") -> Tensor:
    if isinstance(X, np.ndarray):
        X = torch.from_numpy(X)
    if not isinstance(X, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(X).__name__}")
    if X.dim() != 2:
        raise ValueError(f"{name} must be a 2-D matrix (words × dims), got shape {tuple(X.shape)}")
    if not X.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {X.dtype}")
    return X


def normalize(X: "Tensor | np.ndarray", steps: str | Sequence[str] | None = "unit,center,unit") -> Tensor:
    """Return a normalised copy of the embedding matrix ``X`` (n × d).

    ``X`` may be a torch tensor or a numpy array; the result is a torch tensor of the same
    floating dtype (float16/bfloat16 are promoted to float32) on ``X``'s device.
    Raises ``ValueError`` on an unknown step or on NaN/inf values (they would spread to every
    row through ``center``).
    """
    X = _as_tensor(X)
    names = parse_steps(steps)
    if X.dtype not in (torch.float32, torch.float64):
        X = X.float()
    if X.numel() and not bool(torch.isfinite(X).all()):
        bad = (~torch.isfinite(X)).any(1).nonzero()[0, 0].item()
        raise ValueError(f"normalize: X has NaN/inf values (first in row {bad})")
    X = X.clone()
    for step in names:
        if step == "unit":
            n = X.norm(dim=1, keepdim=True)
            X /= torch.where(n > 0, n, torch.ones_like(n))
        elif step == "center":
            if X.shape[0]:
                X -= X.mean(dim=0, keepdim=True)
        elif step == "unitdim":
            n = X.norm(dim=0, keepdim=True)
            X /= torch.where(n > 0, n, torch.ones_like(n))
        elif step == "centeremb":
            X -= X.mean(dim=1, keepdim=True)
    return X
