"""The kernels pyzsl.meta uses, in one place: the fused ops of :mod:`pyzsl.ops`, or their
plain-PyTorch references where the compiled core cannot be loaded (a source checkout that was
not built). ``FUSED`` says which."""
from __future__ import annotations

import logging

from pyzsl.ops import _reference

logger = logging.getLogger(__name__)

try:
    from pyzsl.ops import bilinear_hinge_loss, bilinear_topk

    FUSED = True
except ImportError as exc:  # the one switch: only the import of the ops package may fail here
    logger.info("pyzsl.ops unavailable (%s): pyzsl.meta uses pyzsl.ops._reference", exc)
    bilinear_hinge_loss = _reference.bilinear_hinge_loss
    bilinear_topk = _reference.bilinear_topk
    FUSED = False

reference_bilinear_hinge_loss = _reference.bilinear_hinge_loss
reference_bilinear_topk = _reference.bilinear_topk

__all__ = ["bilinear_hinge_loss", "bilinear_topk", "reference_bilinear_hinge_loss",
           "reference_bilinear_topk", "FUSED"]
