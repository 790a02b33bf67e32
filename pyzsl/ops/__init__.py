"""pyzsl's kernels, each with a plain-PyTorch reference in :mod:`pyzsl.ops._reference`."""
from pyzsl.ops.bilinear_hinge import bilinear_hinge_loss
from pyzsl.ops.topk import bilinear_topk, topk_both_ways

__all__ = ["bilinear_hinge_loss", "bilinear_topk", "topk_both_ways"]

# --- pcgrad (issue 4) ---
from pyzsl.ops.pcgrad import PCGradDiagnostics, gram, pcgrad  # noqa: E402

__all__ += ["gram", "pcgrad", "PCGradDiagnostics"]
