"""Zero-shot classification on bilinear compatibility models.

* :class:`ZeroShotClassifier`: ``M`` trained with the fused DeViSE hinge loss
  (:func:`pyzsl.ops.bilinear_hinge_loss`; Frome et al. 2013).
* :class:`ESZSL`: the closed form of Romera-Paredes & Torr (2015).
* :class:`CosineZSL`: the untrained floor, ``argmax_j cos(x, t_j)``.
* GZSL: per-class mean top-1 and S/U/H (Xian et al. 2018), calibrated stacking
  (Chao et al. 2016) with the penalty chosen on validation data.

All models predict with :func:`pyzsl.ops.bilinear_topk` (no B×C score matrix).
"""
from pyzsl.zsl._base import BilinearZSL, load_model
from pyzsl.zsl.classifier import CosineZSL, ZeroShotClassifier
from pyzsl.zsl.data import ZSLData, load_zsl
from pyzsl.zsl.eszsl import ESZSL
from pyzsl.zsl.gzsl import (
    CalibrationCurve,
    GZSLResult,
    calibration_curve,
    choose_seen_penalty,
    evaluate_gzsl,
    evaluate_zsl,
    gzsl_accuracy,
    harmonic_mean,
    per_class_accuracy,
)
from pyzsl.zsl.protocol import ProtocolResult, run_protocol

__all__ = [
    "BilinearZSL",
    "ZeroShotClassifier",
    "ESZSL",
    "CosineZSL",
    "load_model",
    "ZSLData",
    "load_zsl",
    "per_class_accuracy",
    "harmonic_mean",
    "GZSLResult",
    "gzsl_accuracy",
    "evaluate_zsl",
    "evaluate_gzsl",
    "CalibrationCurve",
    "calibration_curve",
    "choose_seen_penalty",
    "ProtocolResult",
    "run_protocol",
]
