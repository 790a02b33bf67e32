"""Few-shot baselines of the classic table (Chen et al., 2019, "A Closer Look at Few-shot
Classification"): nearest neighbour and nearest class mean in feature space (Mensink et al.,
2013; prototypes as in Snell et al., 2017), and fine-tuning a pretrained network on the
support set.

Nearest neighbour / class mean retrieve with :func:`pyzsl.ops.bilinear_topk` (M = identity:
plain inner products, no Q×C score matrix kept). Fine-tuning is plain SGD from the pretrained
weights with a fresh zero-initialised linear head, run for all episodes at once with the
functional inner loop of :class:`pyzsl.meta.MAML` (vmap over episodes).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from . import _ops
from .maml import MAML

__all__ = ["prototypes", "nearest_class_mean", "nearest_neighbour", "pretrain_classifier",
           "finetune_predict"]


def _unit(x: Tensor) -> Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)


def prototypes(support_x: Tensor, support_y: Tensor, n_way: int) -> Tensor:
    """Class means of the support features (n_way×d); every label 0..n_way-1 must occur."""
    counts = torch.bincount(support_y, minlength=n_way)
    if len(counts) != n_way or (counts == 0).any():
        raise ValueError(f"prototypes: support_y must hold each label 0..{n_way - 1} at least once, "
                         f"got counts {counts.tolist()}")
    sums = torch.zeros(n_way, support_x.shape[1], dtype=support_x.dtype).index_add_(
        0, support_y, support_x)
    return sums / counts[:, None].to(support_x.dtype)


def nearest_class_mean(support_x: Tensor, support_y: Tensor, query_x: Tensor, n_way: int,
                       metric: str = "cosine") -> Tensor:
    """Label of the nearest prototype for each query. ``metric``: "cosine" (unit features,
    renormalised prototypes) or "euclidean"."""
    if metric not in ("cosine", "euclidean"):
        raise ValueError(f"nearest_class_mean: metric must be 'cosine' or 'euclidean', got {metric!r}")
    if metric == "cosine":
        P = _unit(prototypes(_unit(support_x), support_y, n_way))
        return _ops.bilinear_topk(_unit(query_x).contiguous(), None, P.contiguous(), 1)[1][:, 0]
    P = prototypes(support_x, support_y, n_way)
    # argmin ||q - p||² = argmax qᵀp - ||p||²/2: the bias term of bilinear_topk
    return _ops.bilinear_topk(query_x.contiguous(), None, P.contiguous(), 1,
                              class_bias=-(P * P).sum(1) / 2)[1][:, 0]


def nearest_neighbour(support_x: Tensor, support_y: Tensor, query_x: Tensor,
                      metric: str = "cosine") -> Tensor:
    """Label of the nearest support example (1-NN) for each query."""
    if metric == "cosine":
        idx = _ops.bilinear_topk(_unit(query_x).contiguous(), None,
                                 _unit(support_x).contiguous(), 1)[1][:, 0]
    elif metric == "euclidean":
        idx = _ops.bilinear_topk(query_x.contiguous(), None, support_x.contiguous(), 1,
                                 class_bias=-(support_x * support_x).sum(1) / 2)[1][:, 0]
    else:
        raise ValueError(f"nearest_neighbour: metric must be 'cosine' or 'euclidean', got {metric!r}")
    return support_y[idx]


def pretrain_classifier(backbone: nn.Module, X: Tensor, y: Tensor, n_classes: int, feat_dim: int,
                        epochs: int = 20, lr: float = 1e-3, batch_size: int = 128,
                        weight_decay: float = 0.0, seed: int = 0, progress: bool = False
                        ) -> nn.Module:
    """Train ``backbone`` + a linear ``n_classes``-way head with cross-entropy on (X, y)
    (the meta-train classes, labels 0..n_classes-1); returns the backbone (head dropped)."""
    from tqdm.auto import tqdm

    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"pretrain_classifier: labels must be in [0, {n_classes}), got "
                         f"[{int(y.min())}, {int(y.max())}]")
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # the head's init follows ``seed`` too
        torch.manual_seed(seed)
        head = nn.Linear(feat_dim, n_classes).to(X.dtype)
    net = nn.Sequential(backbone, head)
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    net.train()
    for _ in tqdm(range(epochs), disable=not progress, desc="pretrain"):
        perm = torch.randperm(len(X), generator=g)
        for i in range(0, len(X), batch_size):
            b = perm[i:i + batch_size]
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(X[b]), y[b]).backward()
            opt.step()
    net.eval()
    return backbone


def finetune_predict(backbone: nn.Module, feat_dim: int, support_x: Tensor, support_y: Tensor,
                     query_x: Tensor, n_way: int, steps: int = 100, lr: float = 0.1,
                     train: str | Sequence[str] = "head") -> Tensor:
    """Fine-tuning baseline: a zero-initialised ``n_way`` linear head on ``backbone``, trained
    with ``steps`` full-batch SGD steps of cross-entropy on each episode's support set
    (``train="head"``: the head only, Chen et al.'s "Baseline"; ``"all"``: the whole network),
    then the query logits' argmax. Inputs have a leading episode dimension (T×S×d, T×S, T×Q×d);
    returns T×Q predicted labels. Memory: one copy of the trained parameters per episode."""
    head = nn.Linear(feat_dim, n_way).to(support_x.dtype)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    if train == "head":
        # the backbone is frozen: its features are computed once, only the head is trained
        with torch.no_grad():
            fs = backbone(support_x.flatten(0, 1)).unflatten(0, support_x.shape[:2])
            fq = backbone(query_x.flatten(0, 1)).unflatten(0, query_x.shape[:2])
        m = MAML(head, lr, steps, first_order=True, loss_fn=F.cross_entropy)
        return m.predict(m.adapt(fs, support_y), fq).argmax(-1)
    net = nn.Sequential(backbone, head)
    if train == "all":
        adapt: Sequence[str] | None = None
    elif isinstance(train, str):
        raise ValueError(f"finetune_predict: train must be 'head', 'all' or a list of backbone "
                         f"parameter names, got {train!r}")
    else:
        adapt = ["1"] + [f"0.{p}" for p in train]
    m = MAML(net, lr, steps, first_order=True, loss_fn=F.cross_entropy, adapt_params=adapt)
    params = m.adapt(support_x, support_y)
    return m.predict(params, query_x).argmax(-1)
