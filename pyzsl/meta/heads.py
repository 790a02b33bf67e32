"""Few-shot zero-shot metric head: bilinear compatibility with label embeddings.

``s(x, c) = t_cᵀ M φ(x)`` (DeViSE, Frome et al., 2013; ALE/SJE, Akata et al., 2015), where
``t_c`` is the label embedding of class c (e.g. the vector of its name) and comes with each
episode as the task ``context``. With M = identity and φ = identity it is the zero-shot
cosine classifier of the label embeddings; MAML (Finn et al., 2017) meta-learns M (and φ)
so that a few inner steps on the K support examples of each class improve it: zero-shot at
0 inner steps, few-shot after. Inner and outer losses are the bilinear hinge loss
(:func:`pyzsl.ops.bilinear_hinge_loss`, fused: the B×C score matrix is never formed) and
predictions come from :func:`pyzsl.ops.bilinear_topk`.

The fused loss has no double backward (its gradient is computed by the kernel, not by
differentiable operations): with it MAML must be first order, and second order raises a
``ValueError``; ``impl="reference"`` (plain PyTorch) allows second order.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from . import _ops
from .maml import MAML

__all__ = ["BilinearMetricHead", "BilinearHingeLoss", "bilinear_accuracy", "bilinear_maml"]


class BilinearMetricHead(nn.Module):
    """``forward(x, T) -> (V, M, T)`` with ``V = encoder(x)`` (B×dv), ``M`` (dt×dv) and the
    episode's label embeddings ``T`` (C×dt): the triple the bilinear loss and top-k take.

    ``init="identity"`` (needs dt == dv) starts from the plain inner product ``t_cᵀ v``.
    """

    def __init__(self, dv: int, dt: int, encoder: nn.Module | None = None,
                 init: str = "identity") -> None:
        super().__init__()
        if init == "identity":
            if dv != dt:
                raise ValueError(f"BilinearMetricHead: init='identity' needs dv == dt, got "
                                 f"dv={dv}, dt={dt}; use init='random'")
            M = torch.eye(dt, dv)
        elif init == "random":
            M = torch.randn(dt, dv) / dv ** 0.5
        else:
            raise ValueError(f"BilinearMetricHead: init must be 'identity' or 'random', got {init!r}")
        self.encoder = encoder if encoder is not None else nn.Identity()
        self.M = nn.Parameter(M)

    def forward(self, x: Tensor, T: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.encoder(x), self.M, T


class BilinearHingeLoss:
    """``loss(out, y)`` for ``out = (V, M, T)``: the DeViSE hinge loss over the episode's classes.

    ``impl="fused"``: :func:`pyzsl.ops.bilinear_hinge_loss` (first-order MAML only);
    ``impl="reference"``: the plain-PyTorch loss, which has a double backward.
    """

    def __init__(self, margin: float = 0.1, negatives: str = "sum", impl: str = "fused") -> None:
        if impl not in ("fused", "reference"):
            raise ValueError(f"BilinearHingeLoss: impl must be 'fused' or 'reference', got {impl!r}")
        self.margin, self.negatives, self.impl = float(margin), negatives, impl
        # read by maml_loss: a loss whose gradient is not differentiable refuses second order
        self.supports_double_backward = impl == "reference"
        self.__name__ = f"bilinear_hinge_loss[{impl}]"

    def __call__(self, out: tuple[Tensor, Tensor, Tensor], y: Tensor) -> Tensor:
        V, M, T = out
        fn = _ops.bilinear_hinge_loss if self.impl == "fused" else _ops.reference_bilinear_hinge_loss
        return fn(V, M, T, y, self.margin, "mean", None, self.negatives)


def bilinear_accuracy(out: tuple[Tensor, Tensor, Tensor], y: Tensor) -> float:
    """Top-1 accuracy of ``argmax_c t_cᵀ M v`` (ties to the smaller class), via bilinear_topk."""
    V, M, T = out
    _, idx = _ops.bilinear_topk(V.contiguous(), M.contiguous(), T.contiguous(), 1)
    return float((idx[:, 0] == y).double().mean())


def bilinear_maml(head: BilinearMetricHead, inner_lr: float, inner_steps: int = 1,
                  first_order: bool = True, loss: BilinearHingeLoss | None = None,
                  adapt_params: Any = ("M",), **kw: Any) -> MAML:
    """MAML over a :class:`BilinearMetricHead` adapting ``M`` in the inner loop (the encoder is
    meta-learned by the outer step only), with the fused hinge loss by default. Tasks loop
    rather than vmap: the fused kernel is an ``autograd.Function`` without a vmap rule.
    Raises ``ValueError`` for ``first_order=False`` with the fused loss."""
    loss = loss if loss is not None else BilinearHingeLoss()
    if not first_order and not loss.supports_double_backward:
        raise ValueError("bilinear_maml: second-order MAML (first_order=False) needs a loss with "
                         "a double backward, and the fused bilinear hinge loss has none; pass "
                         "first_order=True, or loss=BilinearHingeLoss(impl='reference')")
    return MAML(head, inner_lr, inner_steps, first_order, loss_fn=loss, vectorize=False,
                adapt_params=list(adapt_params) if adapt_params is not None else None, **kw)
