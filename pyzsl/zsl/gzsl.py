"""Zero-shot metrics and calibrated stacking for generalized zero-shot learning.

* Per-class mean top-1 accuracy (Xian et al. 2018, "Zero-shot learning — a comprehensive
  evaluation of the good, the bad and the ugly"): the mean over the classes present in
  the evaluated set of each class's accuracy.
* GZSL: predict over seen ∪ unseen classes; S = that accuracy on seen-class samples,
  U = on unseen-class samples, H = 2SU / (S + U) (Xian et al. 2018).
* Calibrated stacking (Chao et al. 2016, "An empirical study and analysis of generalized
  zero-shot learning"): subtract a penalty γ from every seen class's score. γ is chosen
  on validation data (never test) to maximise H.

The whole S(γ)/U(γ) curve is cheap: with each sample's best seen class (score s₁, index
j₁) and best unseen class (s₂, j₂), the prediction at γ is j₁ when ``s₁ − γ > s₂`` and j₂
otherwise (equality: the smaller index, as the kernel breaks ties), so two top-1 passes of
:func:`pyzsl.ops.bilinear_topk` give every γ at once. Memory O(N) beyond those passes.
The curve decides ``s₁ − s₂ > γ`` in float64, ``predict`` adds −γ to float32 scores: the
two can differ for a sample whose breakpoint s₁ − s₂ lies within a float32 rounding step
(~1e-7 relative) of γ. The γ the curve picks lies midway between breakpoints, as far from
them as the data allow.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pyzsl.zsl._base import ArrayLike, BilinearZSL, as_class_set

__all__ = [
    "per_class_accuracy",
    "harmonic_mean",
    "GZSLResult",
    "gzsl_accuracy",
    "CalibrationCurve",
    "calibration_curve",
    "choose_seen_penalty",
    "evaluate_zsl",
    "evaluate_gzsl",
]


def _labels(a: ArrayLike, name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array of class indices, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name}: expected integer class indices, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _class_weights(y_true: np.ndarray) -> np.ndarray:
    """w_i = 1 / (n_classes_present · n_{y_i}): Σ_i w_i·correct_i = per-class mean accuracy."""
    _, inv, counts = np.unique(y_true, return_inverse=True, return_counts=True)
    return 1.0 / (counts.size * counts[inv])


def per_class_accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Mean over the classes present in ``y_true`` of each class's top-1 accuracy (Xian et al. 2018)."""
    yt, yp = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    if yt.shape != yp.shape:
        raise ValueError(f"y_true and y_pred differ in length: {yt.shape[0]} vs {yp.shape[0]}")
    if yt.size == 0:
        raise ValueError("y_true is empty: per-class accuracy is undefined")
    return float(np.sum(_class_weights(yt) * (yt == yp)))


def harmonic_mean(seen: float, unseen: float) -> float:
    """H = 2SU / (S + U); 0 when both are 0."""
    return 0.0 if seen + unseen == 0 else 2.0 * seen * unseen / (seen + unseen)


@dataclass(frozen=True)
class GZSLResult:
    """Per-class mean top-1 on seen-class samples (S), unseen-class samples (U), and H."""

    seen: float
    unseen: float
    H: float

    def __str__(self) -> str:
        return f"S {self.seen:.4f} / U {self.unseen:.4f} / H {self.H:.4f}"


def gzsl_accuracy(y_seen_true: ArrayLike, y_seen_pred: ArrayLike,
                  y_unseen_true: ArrayLike, y_unseen_pred: ArrayLike) -> GZSLResult:
    """S, U and H from predictions made over all (seen ∪ unseen) classes."""
    s = per_class_accuracy(y_seen_true, y_seen_pred)
    u = per_class_accuracy(y_unseen_true, y_unseen_pred)
    return GZSLResult(s, u, harmonic_mean(s, u))


def evaluate_zsl(model: BilinearZSL, class_embeddings: ArrayLike, X: ArrayLike, y: ArrayLike,
                 candidates: ArrayLike) -> float:
    """ZSL: per-class mean top-1 of ``model`` predicting among ``candidates`` (the unseen classes)."""
    _check_predictable(class_embeddings, candidates, y=y)
    return per_class_accuracy(y, model.predict(X, class_embeddings, candidates=candidates))


def _check_predictable(class_embeddings: ArrayLike, candidates: ArrayLike | None, **labels: ArrayLike) -> None:
    """A label outside ``candidates`` (indices or a boolean mask, as ``predict`` takes them)
    could only count as wrong: refuse it by name."""
    if candidates is None:
        return
    cand = as_class_set(candidates, "candidates", _n_rows(class_embeddings))
    for name, y in labels.items():
        out = np.setdiff1d(_labels(y, name), cand)
        if out.size:
            raise ValueError(f"{name}: {out.size} class(es) not among the candidates, which could never be "
                             f"predicted (first: {out[:5].tolist()}); pass candidates that hold every label")


def evaluate_gzsl(model: BilinearZSL, class_embeddings: ArrayLike, X_seen: ArrayLike, y_seen: ArrayLike,
                  X_unseen: ArrayLike, y_unseen: ArrayLike, candidates: ArrayLike | None = None,
                  seen_penalty: float = 0.0) -> GZSLResult:
    """GZSL S/U/H predicting over ``candidates`` (default: every class), with calibrated stacking."""
    _check_predictable(class_embeddings, candidates, y_seen=y_seen, y_unseen=y_unseen)
    ps = model.predict(X_seen, class_embeddings, candidates=candidates, seen_penalty=seen_penalty)
    pu = model.predict(X_unseen, class_embeddings, candidates=candidates, seen_penalty=seen_penalty)
    return gzsl_accuracy(y_seen, ps, y_unseen, pu)


@dataclass(frozen=True)
class CalibrationCurve:
    """S(γ), U(γ) and H(γ) of calibrated stacking at the penalties ``penalties`` (sorted)."""

    penalties: np.ndarray
    seen: np.ndarray
    unseen: np.ndarray
    H: np.ndarray

    def best(self) -> tuple[float, int]:
        """(γ, index) maximising H; among equal H the smallest |γ|."""
        top = np.flatnonzero(self.H == self.H.max())
        i = int(top[np.argmin(np.abs(self.penalties[top]))])
        return float(self.penalties[i]), i


class _Split:
    """One evaluation set reduced to what calibrated stacking needs, per sample."""

    def __init__(self, model: BilinearZSL, T: ArrayLike, X: ArrayLike, y: ArrayLike, name: str,
                 seen_c: np.ndarray, unseen_c: np.ndarray) -> None:
        y = _labels(y, name)
        if y.size == 0:
            raise ValueError(f"{name}: empty evaluation set")
        n = y.shape[0]
        s1 = np.full(n, -np.inf)
        s2 = np.full(n, -np.inf)
        j1 = np.full(n, -1, dtype=np.int64)
        j2 = np.full(n, -1, dtype=np.int64)
        if seen_c.size:
            i, v = model.predict_topk(X, T, 1, candidates=seen_c)
            j1, s1 = i[:, 0], v[:, 0].astype(np.float64)
        if unseen_c.size:
            i, v = model.predict_topk(X, T, 1, candidates=unseen_c)
            j2, s2 = i[:, 0], v[:, 0].astype(np.float64)
        for j in (j1, j2):  # both sides: with no seen candidate j1 is only a placeholder
            if j.shape[0] != n:
                raise ValueError(f"{name}: {n} labels but X has {j.shape[0]} rows")
        w = _class_weights(y)
        with np.errstate(invalid="ignore"):
            d = s1 - s2                               # seen wins while γ < d
        d = np.where(np.isnan(d), np.inf, d)          # (no unseen candidate: s2 = −inf)
        seen_tie = j1 < j2 if unseen_c.size and seen_c.size else np.full(n, bool(seen_c.size))
        self.d = d
        # Weight won when the seen side is chosen / when the unseen side is chosen.
        self.w_seen_side = w * (j1 == y)
        self.w_unseen_side = w * (j2 == y)
        self.seen_tie = seen_tie

    def accuracy(self, penalties: np.ndarray) -> np.ndarray:
        """Per-class mean accuracy at each penalty γ (vectorised over γ)."""
        acc = np.zeros(penalties.shape[0])
        for tie_to_seen in (True, False):
            sel = self.seen_tie == tie_to_seen
            d = self.d[sel]
            order = np.argsort(d, kind="stable")
            d = d[order]
            cs = np.concatenate([[0.0], np.cumsum(self.w_seen_side[sel][order])])
            cu = np.concatenate([[0.0], np.cumsum(self.w_unseen_side[sel][order])])
            # seen side chosen iff d > γ (d ≥ γ when a tie goes to the seen class)
            k = np.searchsorted(d, penalties, side="left" if tie_to_seen else "right")
            acc += (cs[-1] - cs[k]) + cu[k]
        return acc


def _split_candidates(model: BilinearZSL, n_classes: int, candidates: ArrayLike | None):
    cand = np.arange(n_classes) if candidates is None else as_class_set(candidates, "candidates", n_classes)
    seen = np.intersect1d(cand, model.classes_)
    return seen, np.setdiff1d(cand, seen)


def _n_rows(T: ArrayLike) -> int:
    shape = getattr(T, "shape", None)
    if shape is None:
        shape = np.asarray(T).shape
    if len(shape) != 2:
        raise ValueError(f"class_embeddings: expected a 2-D array, got shape {tuple(shape)}")
    return int(shape[0])


def calibration_curve(model: BilinearZSL, class_embeddings: ArrayLike, X_seen: ArrayLike, y_seen: ArrayLike,
                      X_unseen: ArrayLike, y_unseen: ArrayLike, candidates: ArrayLike | None = None,
                      penalties: ArrayLike | None = None) -> CalibrationCurve:
    """S(γ), U(γ), H(γ) of calibrated stacking (Chao et al. 2016) over ``candidates``.

    "Seen" classes are ``model.classes_`` (its training classes). ``penalties=None``
    evaluates every distinct outcome: one γ between each pair of consecutive breakpoints
    ``s₁ − s₂`` of the samples, one beyond each end, and γ = 0.
    """
    model._check_fitted()
    _check_predictable(class_embeddings, candidates, y_seen=y_seen, y_unseen=y_unseen)
    seen_c, unseen_c = _split_candidates(model, _n_rows(class_embeddings), candidates)
    a = _Split(model, class_embeddings, X_seen, y_seen, "y_seen", seen_c, unseen_c)
    b = _Split(model, class_embeddings, X_unseen, y_unseen, "y_unseen", seen_c, unseen_c)
    if penalties is None:
        d = np.unique(np.concatenate([a.d, b.d]))
        d = d[np.isfinite(d)]
        if d.size == 0:
            g = np.array([0.0])
        else:
            pad = max(1.0, float(d[-1] - d[0])) * 1e-3
            g = np.concatenate([[d[0] - pad], (d[:-1] + d[1:]) / 2, [d[-1] + pad], [0.0]])
        g = np.unique(g)
    else:
        g = np.sort(np.asarray(penalties, dtype=np.float64).reshape(-1))
        if g.size == 0 or not np.isfinite(g).all():
            raise ValueError("penalties: expected a non-empty array of finite numbers")
    s, u = a.accuracy(g), b.accuracy(g)
    with np.errstate(invalid="ignore", divide="ignore"):
        h = np.where(s + u > 0, 2 * s * u / (s + u), 0.0)
    return CalibrationCurve(g, s, u, h)


def choose_seen_penalty(model: BilinearZSL, class_embeddings: ArrayLike, X_seen: ArrayLike, y_seen: ArrayLike,
                        X_unseen: ArrayLike, y_unseen: ArrayLike,
                        candidates: ArrayLike | None = None) -> tuple[float, CalibrationCurve]:
    """The calibrated-stacking penalty maximising H on *validation* data, and the curve.

    Give held-out seen-class samples and samples of classes the model did not train on
    (e.g. ``val_seen_loc`` and ``val_loc`` with a model fitted on the rest of
    ``train_loc``), never the test split.
    """
    curve = calibration_curve(model, class_embeddings, X_seen, y_seen, X_unseen, y_unseen, candidates)
    return curve.best()[0], curve
