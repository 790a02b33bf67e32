"""Bilinear zero-shot classifier trained with the fused DeViSE hinge loss.

``ZeroShotClassifier`` learns a compatibility ``M`` (dt×dv) so that the score
``t_jᵀ M x`` of an input's true class beats every other training class by a margin
(DeViSE, Frome et al. 2013; ``negatives="max"``: only the hardest violator, as in
SJE, Akata et al. 2015). Training calls :func:`pyzsl.ops.bilinear_hinge_loss`, which
never forms the batch×classes score matrix; prediction calls
:func:`pyzsl.ops.bilinear_topk`. Inductive: ``fit`` reads only the rows of
``class_embeddings`` of the classes present in ``y``.

``CosineZSL`` is the untrained floor: ``argmax_j cos(x, t_j)`` (``M`` = identity).
"""
from __future__ import annotations

import logging
import math
import time
import numpy as np
import torch
from tqdm import tqdm

from pyzsl import ops as _ops
from pyzsl.zsl._base import ArrayLike, BilinearZSL, _real, as_labels, as_matrix, l2_normalize

__all__ = ["ZeroShotClassifier", "CosineZSL"]

log = logging.getLogger(__name__)

_BACKENDS = ("auto", "pyzsl", "torch")


class _Prep(BilinearZSL):
    """What the models share: the common constructor arguments, and the fit-time checks,
    seen-class re-indexing and centring."""

    def _set_common(self, normalize_inputs: bool, normalize_classes: bool, center: bool,
                    device: str | torch.device, dtype: torch.dtype, backend: str, csls_k: int) -> None:
        """Check and store the arguments every model takes (before any of its own)."""
        for name, v in (("normalize_inputs", normalize_inputs), ("normalize_classes", normalize_classes),
                        ("center", center)):
            if not isinstance(v, (bool, np.bool_)):
                raise TypeError(f"{name} must be a bool, got {v!r}")
        if backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
        if not isinstance(csls_k, (int, np.integer)) or isinstance(csls_k, bool) or csls_k < 0:
            raise ValueError(f"csls_k must be an integer >= 0 (0: no hubness correction), got {csls_k!r}")
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
        self.normalize_inputs = bool(normalize_inputs)
        self.normalize_classes = bool(normalize_classes)
        self.center = bool(center)
        self.device = str(device)
        self.dtype = dtype
        self.backend = backend
        self.csls_k = int(csls_k)

    def _fit_prep(self, X: ArrayLike, y: ArrayLike, class_embeddings: ArrayLike):
        for a in ("M_", "classes_"):  # a fit that fails leaves the model unfitted, not half-fitted
            self.__dict__.pop(a, None)
        V = as_matrix(X, "X", self.dtype, self.device)
        # Only the rows of the training classes are read (and checked): nothing about
        # unseen classes can reach the model.
        Tall = class_embeddings if isinstance(class_embeddings, torch.Tensor) else np.asarray(class_embeddings)
        if Tall.ndim != 2:
            raise ValueError(f"class_embeddings: expected a 2-D array (classes × features), got shape {tuple(Tall.shape)}")
        labels = as_labels(y, "y", V.shape[0], int(Tall.shape[0]))
        classes = np.unique(labels)
        if classes.size < 2:
            raise ValueError(f"y: needs at least 2 distinct classes to train on, got {classes.size}")
        rows = Tall[torch.from_numpy(classes)] if isinstance(Tall, torch.Tensor) else Tall[classes]
        T = as_matrix(rows, "class_embeddings (rows of the classes in y)", self.dtype, self.device, classes)
        self.classes_ = classes
        self.n_features_in_ = int(V.shape[1])
        self.n_class_features_ = int(T.shape[1])
        if self.center:
            # Means of the training inputs and of the *training* classes' embeddings only.
            self.input_mean_ = V.mean(0)
            self.class_mean_ = T.mean(0)
            V, T = V - self.input_mean_, T - self.class_mean_
        else:
            self.input_mean_ = self.class_mean_ = None
        if self.normalize_inputs:
            V = l2_normalize(V, "X")
        if self.normalize_classes:
            T = l2_normalize(T, "class_embeddings", classes)
        # CSLS reference set: the (prepared) training inputs; the cache belongs to the old fit.
        self.reference_ = V.clone() if self.csls_k else None
        self._hub_cache = None
        y_local = torch.from_numpy(np.searchsorted(classes, labels)).to(self.device)
        return V, T, y_local


class ZeroShotClassifier(_Prep):
    """Bilinear compatibility ``s(x, t) = t̃ᵀ M x̃`` trained with the DeViSE hinge loss.

    Frome et al. 2013 (DeViSE); Akata et al. 2015 (SJE, hardest negative). ``M`` starts
    at the identity when dt == dv (``init="auto"``), so training starts from the cosine
    baseline, and ``weight_decay`` pulls it back towards that start: an L2 penalty on
    ``M − M₀`` (M₀ = identity, or zero for ``init="random"``).

    Args:
        margin: hinge margin (scores are cosines at the start when both sides are normalised).
        negatives: ``"sum"`` over all violating training classes (DeViSE) or ``"max"``.
        normalize_inputs, normalize_classes: L2-normalise x and t (after centring).
        center: subtract the mean training input and the mean *training-class* embedding.
        lr, epochs, batch_size: Adam learning rate, passes over the data, rows per step.
        lr_schedule: ``"cosine"`` (annealed to 0 over all steps) or ``"constant"``.
        weight_decay: coefficient of ``‖M − M₀‖²_F`` added to each step's mean loss.
        init: ``"auto"`` (identity if dt == dv, else random), ``"identity"`` or ``"random"``.
        device, dtype: where and in what precision ``M`` lives (float32/float64 CPU, float32 CUDA).
        backend: loss/top-k implementation: ``"pyzsl"`` (fused kernels, an error where they
            cannot run), ``"torch"`` (the plain-PyTorch reference, for comparisons) or
            ``"auto"`` (the kernels where they run).
        csls_k: hubness correction at prediction time (0: off): each class's score drops by
            half the mean of its ``csls_k`` best scores against the training inputs (CSLS,
            Conneau et al. 2018; hubness in ZSL: Dinu et al. 2015). The model then keeps
            its training inputs (``reference_``, N×dv) and saves them.
        seed: seeds the initialisation and the shuffling.
        progress: show a tqdm bar over epochs.

    The defaults (margin 0.05, lr 1e-3 cosine-annealed over 5 epochs of 256-row batches,
    sum over negatives, L2-normalised inputs and classes) were chosen on gloss2word's
    validation split (``benchmarks/zsl.py --tune``).

    Memory: O((B + C_seen)·d + d²) per step with the fused loss (B = batch_size).
    Fitted attributes: ``M_``, ``classes_`` (the training classes), ``loss_curve_``,
    ``fit_time_``, ``input_mean_``/``class_mean_``.
    """

    _param_names = ("margin", "negatives", "normalize_inputs", "normalize_classes", "center", "lr",
                    "epochs", "batch_size", "lr_schedule", "weight_decay", "init", "device", "dtype", "backend",
                    "csls_k", "seed", "progress")

    def __init__(
        self,
        margin: float = 0.05,
        negatives: str = "sum",
        normalize_inputs: bool = True,
        normalize_classes: bool = True,
        center: bool = False,
        lr: float = 1e-3,
        epochs: int = 5,
        batch_size: int = 256,
        lr_schedule: str = "cosine",
        weight_decay: float = 0.0,
        init: str = "auto",
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        backend: str = "auto",
        csls_k: int = 0,
        seed: int = 0,
        progress: bool = True,
    ) -> None:
        self._set_common(normalize_inputs, normalize_classes, center, device, dtype, backend, csls_k)
        if not (_real(margin) and math.isfinite(margin) and margin >= 0):
            raise ValueError(f"margin must be a finite number >= 0, got {margin!r}")
        if negatives not in ("sum", "max"):
            raise ValueError(f"negatives must be 'sum' or 'max', got {negatives!r}")
        if not (_real(lr) and math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
        for name, v in (("epochs", epochs), ("batch_size", batch_size)):
            if not isinstance(v, (int, np.integer)) or v < (0 if name == "epochs" else 1):
                raise ValueError(f"{name} must be an integer >= {0 if name == 'epochs' else 1}, got {v!r}")
        if lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {lr_schedule!r}")
        if not (_real(weight_decay) and math.isfinite(weight_decay) and weight_decay >= 0):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
        if init not in ("auto", "identity", "random"):
            raise ValueError(f"init must be 'auto', 'identity' or 'random', got {init!r}")
        self.margin = float(margin)
        self.negatives = negatives
        self.lr = float(lr)
        self.epochs = int(epochs)
        self.batch_size = int(batch_size)
        self.lr_schedule = lr_schedule
        self.weight_decay = float(weight_decay)
        self.init = init
        self.seed = int(seed)
        self.progress = bool(progress)

    def _initial_M(self, dt: int, dv: int, gen: torch.Generator) -> torch.Tensor:
        init = self.init
        if init == "auto":
            init = "identity" if dt == dv else "random"
        if init == "identity":
            if dt != dv:
                raise ValueError(f"init='identity' needs dt == dv, got class dim {dt} and input dim {dv}")
            return torch.eye(dt, dtype=self.dtype)
        return torch.randn(dt, dv, generator=gen, dtype=self.dtype) / math.sqrt(dv)

    def _train_step(self, M: torch.Tensor, opt: torch.optim.Optimizer, V: torch.Tensor, T: torch.Tensor,
                    y: torch.Tensor, decay_to: torch.Tensor) -> torch.Tensor:
        """One optimiser step on a batch (fused hinge + the pull towards ``decay_to``); returns the
        batch's mean hinge loss, detached. (The zsl benchmark times this very step.)"""
        loss = _ops.bilinear_hinge_loss(V, M, T, y, margin=self.margin, reduction="mean",
                                        negatives=self.negatives, backend=self.backend)
        full = loss + self.weight_decay * (M - decay_to).square().sum() if self.weight_decay else loss
        opt.zero_grad(set_to_none=True)
        full.backward()
        opt.step()
        return loss.detach()

    def fit(self, X: ArrayLike, y: ArrayLike, class_embeddings: ArrayLike) -> "ZeroShotClassifier":
        """Learn ``M`` from inputs ``X`` (N×dv), labels ``y`` (N,) and ``class_embeddings`` (C×dt).

        ``class_embeddings`` may hold more classes than ``y`` uses; only the rows of the
        classes in ``y`` are read, and they are the only positives and negatives.
        """
        t0 = time.perf_counter()
        V, T, yl = self._fit_prep(X, y, class_embeddings)
        gen = torch.Generator().manual_seed(self.seed)
        M0 = self._initial_M(T.shape[1], V.shape[1], gen).to(self.device)
        decay_to = M0 if self.init != "random" and T.shape[1] == V.shape[1] else torch.zeros_like(M0)
        M = M0.clone().requires_grad_(True)
        opt = torch.optim.Adam([M], lr=self.lr)
        N = V.shape[0]
        steps = self.epochs * math.ceil(N / self.batch_size)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1)) \
            if self.lr_schedule == "cosine" else None
        self.loss_curve_: list[float] = []
        bar = tqdm(range(self.epochs), desc=f"{type(self).__name__} fit", disable=not self.progress,
                   unit="epoch", leave=False)
        for _ in bar:
            perm = torch.randperm(N, generator=gen).to(self.device)
            total = torch.zeros((), dtype=torch.float64, device=self.device)
            for i in range(0, N, self.batch_size):
                b = perm[i:i + self.batch_size]
                total += self._train_step(M, opt, V[b], T, yl[b], decay_to) * b.numel()
                if sched is not None:
                    sched.step()
            self.loss_curve_.append(float(total) / N)
            bar.set_postfix(loss=f"{self.loss_curve_[-1]:.4f}")
        bar.close()
        if not torch.isfinite(M).all():
            raise FloatingPointError("training diverged: M holds NaN/inf; lower lr")
        self.M_ = M.detach()
        self.fit_time_ = time.perf_counter() - t0
        log.info("fitted %s on %d rows, %d classes in %.2fs", type(self).__name__, N, len(self.classes_),
                 self.fit_time_)
        return self


class CosineZSL(_Prep):
    """Untrained floor: ``argmax_j cos(x, t_j)`` (no map, dv == dt); ``fit`` only records classes.

    ``csls_k > 0`` applies the same hubness correction as ``ZeroShotClassifier``.
    """

    _param_names = ("normalize_inputs", "normalize_classes", "center", "device", "dtype", "backend", "csls_k")

    def __init__(
        self,
        normalize_inputs: bool = True,
        normalize_classes: bool = True,
        center: bool = False,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        backend: str = "auto",
        csls_k: int = 0,
    ) -> None:
        self._set_common(normalize_inputs, normalize_classes, center, device, dtype, backend, csls_k)

    def fit(self, X: ArrayLike, y: ArrayLike, class_embeddings: ArrayLike) -> "CosineZSL":
        """Record the seen classes (and the means when ``center``); no parameters are learned."""
        t0 = time.perf_counter()
        V, T, _ = self._fit_prep(X, y, class_embeddings)
        if V.shape[1] != T.shape[1]:
            raise ValueError(f"CosineZSL needs inputs and class embeddings of the same width, got {V.shape[1]} and {T.shape[1]}")
        self.M_ = None
        self.fit_time_ = time.perf_counter() - t0
        return self
