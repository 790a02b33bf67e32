"""The ZSL/GZSL evaluation protocol of Xian et al. (2018), with calibrated stacking tuned on validation.

1. Validation: fit on ``train_loc`` minus ``val_seen_loc`` (train classes only). ZSL-val =
   per-class top-1 on ``val_loc`` over the val classes. The calibrated-stacking penalty γ
   (Chao et al. 2016) maximises H of (``val_seen_loc`` as seen, ``val_loc`` as unseen)
   over train ∪ val classes.
2. Test: fit on ``trainval_loc``. ZSL = per-class top-1 on ``test_unseen_loc`` over the
   unseen classes; GZSL = S on ``test_seen_loc``, U on ``test_unseen_loc`` over all
   classes, at γ = 0 and at the γ from step 1. The test split is never used to choose anything.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from pyzsl.zsl._base import BilinearZSL
from pyzsl.zsl.data import ZSLData
from pyzsl.zsl.gzsl import (
    CalibrationCurve,
    GZSLResult,
    calibration_curve,
    evaluate_gzsl,
    evaluate_zsl,
    per_class_accuracy,
)

__all__ = ["ProtocolResult", "run_protocol"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProtocolResult:
    zsl: float                  # per-class top-1 on test_unseen over unseen classes
    # per-class top-1 on val_loc over val classes, of the validation model (fit on train_loc minus
    # val_seen_loc, the calibration model; shared/data's README fits its val figure on all of train_loc)
    zsl_val: float
    gzsl: GZSLResult            # test, no calibration
    gzsl_calibrated: GZSLResult  # test, γ chosen on validation
    seen_penalty: float         # that γ
    val_H: float                # validation H at γ = 0
    val_H_calibrated: float     # validation H at the chosen γ
    val_curve: CalibrationCurve
    test_curve: CalibrationCurve | None
    fit_time: float             # seconds to fit on trainval
    zsl_pred: np.ndarray = field(repr=False)  # ZSL predictions on test_unseen_loc
    zsl_transductive: float | None = None      # transductive ZSL on test_unseen (step 3)
    zsl_val_transductive: float | None = None  # the same on val_loc, at the chosen strength
    transductive_strength: float | None = None


def run_protocol(make_model: Callable[[], BilinearZSL], data: ZSLData, test_curve_points: int = 0,
                 transductive_strengths: Sequence[float] = ()) -> ProtocolResult:
    """Run the protocol for a fresh model from ``make_model()`` at each fit (two fits).

    ``test_curve_points > 0`` also returns S/U/H on test over that many penalties spanning
    the validation curve's range (for plotting only; nothing is chosen from it).
    """
    X, y, T = data.X, data.y, data.class_emb
    # -- validation -------------------------------------------------------------
    fit_loc = data.train_fit_loc
    m_val = make_model().fit(X[fit_loc], y[fit_loc], T)
    zsl_val = evaluate_zsl(m_val, T, X[data.val_loc], y[data.val_loc], data.val_classes)
    vs, vu = data.val_seen_loc, data.val_loc
    val_curve = calibration_curve(m_val, T, X[vs], y[vs], X[vu], y[vu], candidates=data.train_val_classes)
    gamma, i = val_curve.best()
    i0 = int(np.flatnonzero(val_curve.penalties == 0.0)[0])
    log.info("%s: validation γ = %.6g (H %.4f, at 0: %.4f)", data.name, gamma, val_curve.H[i], val_curve.H[i0])
    # -- test -------------------------------------------------------------------
    t0 = time.perf_counter()
    m = make_model().fit(X[data.trainval_loc], y[data.trainval_loc], T)
    fit_time = time.perf_counter() - t0
    zsl_pred = m.predict(X[data.test_unseen_loc], T, candidates=data.unseen_classes)
    zsl = per_class_accuracy(y[data.test_unseen_loc], zsl_pred)
    ts, tu = data.test_seen_loc, data.test_unseen_loc
    g0 = evaluate_gzsl(m, T, X[ts], y[ts], X[tu], y[tu])
    g1 = evaluate_gzsl(m, T, X[ts], y[ts], X[tu], y[tu], seen_penalty=gamma)
    tcurve = None
    if test_curve_points > 0:
        p = val_curve.penalties
        lo, hi = np.quantile(p, 0.01), np.quantile(p, 0.99)
        span = max(hi - lo, abs(gamma), 1e-6)
        grid = np.linspace(min(lo, 0.0, gamma) - 0.1 * span, max(hi, gamma) + 0.1 * span, test_curve_points)
        tcurve = calibration_curve(m, T, X[ts], y[ts], X[tu], y[tu], penalties=grid)
    trans = {}
    if len(transductive_strengths):
        xv, yv = X[data.val_loc], y[data.val_loc]
        val = [per_class_accuracy(yv, m_val.predict_transductive(xv, T, data.val_classes, strength=s))
               for s in transductive_strengths]
        j = int(np.argmax(val))  # ties: the first (list the strengths from weak to strong)
        strength = float(transductive_strengths[j])
        pt = m.predict_transductive(X[data.test_unseen_loc], T, data.unseen_classes, strength=strength)
        trans = dict(zsl_transductive=per_class_accuracy(y[data.test_unseen_loc], pt),
                     zsl_val_transductive=float(val[j]), transductive_strength=strength)
        log.info("%s: transductive strength %g (val ZSL %.4f)", data.name, strength, val[j])
    return ProtocolResult(zsl, zsl_val, g0, g1, gamma, float(val_curve.H[i0]), float(val_curve.H[i]),
                          val_curve, tcurve, fit_time, zsl_pred, **trans)
