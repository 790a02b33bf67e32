"""Multi-task gradient aggregators: T task gradients (rows of ``G``, T×P) → one update (P).

Every aggregator is an ``nn.Module`` called as ``agg(G, losses=None, gram=None) -> update``.
Gram-based ones also expose ``agg.weights(gram, losses=None) -> w`` (T,) with ``update = w @ G``: everything
they decide follows from the T×T Gram ``G @ G.T`` (computed once, in one pass over G, by
``pyzsl.ops.gram``), and the update is one more pass. The small T×T problems (min-norm, CAGrad's
dual, IMTL-G's system) are solved on the host in float64: T is small, P is not. Memory: O(T²)
beyond G and the update.

Learnable, loss-based aggregators (GradNorm, uncertainty weighting) keep their weights in
buffers and update them in ``agg.observe(G, losses)``, which the trainer calls once per step
after the update was taken; their state is part of ``state_dict()`` (exact resume).

| class | paper | needs |
|---|---|---|
| :class:`Equal` | — | nothing (sum or mean) |
| :class:`Fixed` | — | user weights |
| :class:`PCGrad` | Yu et al. 2020 | G (kernel ``pyzsl.ops.pcgrad``: Gram + coefficients) |
| :class:`MGDA` | Sener & Koltun 2018 | Gram |
| :class:`CAGrad` | Liu et al. 2021 (NeurIPS) | Gram |
| :class:`IMTLG` | Liu et al. 2021 (ICLR) | Gram (norms are its diagonal) |
| :class:`GradNorm` | Chen et al. 2018 | gradient norms + losses |
| :class:`Uncertainty` | Kendall et al. 2018 | losses |
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from pyzsl.ops import gram as _ops_gram
from pyzsl.ops import pcgrad as _ops_pcgrad

__all__ = [
    "Aggregator",
    "Equal",
    "Fixed",
    "PCGrad",
    "MGDA",
    "CAGrad",
    "IMTLG",
    "GradNorm",
    "Uncertainty",
    "AGGREGATORS",
    "make_aggregator",
    "min_norm_weights",
]


def _gram(G: Tensor) -> Tensor:
    """T×T Gram of the task gradients in float64, the one place every aggregator gets it from
    (``pyzsl.ops.gram``: one pass over G, accumulated in float64)."""
    return _ops_gram(G, dtype=torch.float64, check=False)  # callers check it with _finite


def _pcgrad(G: Tensor, order: Tensor | None, generator: torch.Generator | None, reduction: str) -> Tensor:
    return _ops_pcgrad(G, order=order, generator=generator, reduction=reduction)


def _check_G(G: Tensor, name: str = "G") -> Tensor:
    if not isinstance(G, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (T×P task gradients), got {type(G).__name__}")
    if G.dim() != 2:
        raise ValueError(f"{name} must be 2-D (T tasks × P parameters), got shape {tuple(G.shape)}")
    if G.shape[0] == 0:
        raise ValueError(f"{name} has no rows: at least one task gradient is needed")
    return G


def _finite(G: Tensor, result: Tensor) -> Tensor:
    """Raise if ``result`` (the Gram, O(T²), or the update, O(P)) is not finite, naming G's bad
    rows; checking the result instead of G saves a T×P pass (NaN/inf in G always reach it)."""
    if not bool(torch.isfinite(result).all()):
        bad = (~torch.isfinite(G)).any(1).nonzero().flatten().tolist()
        if bad:
            raise ValueError(f"G has non-finite entries (NaN/inf) in task rows {bad}")
        raise ValueError("the aggregated update overflowed (non-finite) although G is finite")
    return result


def _check_losses(losses: Tensor | None, T: int, who: str) -> Tensor:
    if losses is None:
        raise ValueError(f"{who} is loss-based: call it as agg(G, losses) with losses of shape ({T},)")
    losses = torch.as_tensor(losses).detach().flatten()
    if losses.numel() != T:
        raise ValueError(f"{who}: losses has {losses.numel()} entries but G has {T} task rows")
    if not torch.isfinite(losses).all():
        raise ValueError(f"{who}: losses has non-finite entries: {losses.tolist()}")
    return losses


class Aggregator(nn.Module):
    """Base class. ``forward(G, losses=None, gram=None) -> update`` (P,).

    ``needs_task_gradients``: False when the update is a fixed linear combination that a single
    backward of the weighted loss gives directly (the trainer then skips the per-task backward
    passes except on diagnostic steps). ``head_weights()`` are the weights applied to each
    task's loss for its task-specific parameters (ones unless the method weights losses).
    """

    gram_based: bool = False
    needs_task_gradients: bool = True
    needs_losses: bool = False

    def weights(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:  # pragma: no cover - overridden
        raise NotImplementedError(f"{type(self).__name__} is not a Gram-space weighting")

    def forward(self, G: Tensor, losses: Tensor | None = None, gram: Tensor | None = None) -> Tensor:
        G = _check_G(G)
        if gram is None:
            gram = _finite(G, _gram(G))
        w = self.weights(gram, losses)
        return w.to(G.dtype) @ G

    def loss_weights(self, T: int) -> Tensor:
        """Weights of the task losses in a single weighted backward (``needs_task_gradients`` False)."""
        raise NotImplementedError(f"{type(self).__name__} needs per-task gradients")

    def head_weights(self, T: int) -> Tensor:
        return torch.ones(T, dtype=torch.float64)

    def observe(self, G: Tensor | None, losses: Tensor) -> None:
        """Update learnable weights after a step (no-op for stateless aggregators)."""

    def effective_gram(self, gram: Tensor) -> Tensor:
        """Gram of the per-task contributions the last update was built from (diagnostics).

        Weightings scale each g_i by a positive weight, which leaves every cosine unchanged, so
        the default is ``gram`` itself; PCGrad returns the Gram of its projected gradients.
        """
        return gram

    def extra_repr(self) -> str:
        return ""


class _LossWeighting(Aggregator):
    """An update ``sum_i w_i g_i`` for weights ``_w(T)`` that do not depend on G: the same weights
    scale the losses in a single weighted backward and the task-specific heads."""

    def _w(self, T: int) -> Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    def weights(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        return self._w(gram.shape[0]).to(gram.device)

    def forward(self, G: Tensor, losses: Tensor | None = None, gram: Tensor | None = None) -> Tensor:
        G = _check_G(G)
        return _finite(G, self._w(G.shape[0]).to(G) @ G)

    def loss_weights(self, T: int) -> Tensor:
        return self._w(T)

    def head_weights(self, T: int) -> Tensor:
        return self._w(T).clone()


class Equal(_LossWeighting):
    """Equal weighting: ``sum_i g_i`` (``reduction="sum"``) or their mean. Needs nothing."""

    gram_based = True
    needs_task_gradients = False

    def __init__(self, reduction: str = "sum") -> None:
        super().__init__()
        if reduction not in ("sum", "mean"):
            raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
        self.reduction = reduction

    def _w(self, T: int) -> Tensor:
        w = torch.ones(T, dtype=torch.float64)
        return w / T if self.reduction == "mean" else w

    def forward(self, G: Tensor, losses: Tensor | None = None, gram: Tensor | None = None) -> Tensor:
        G = _check_G(G)
        return _finite(G, G.sum(0) if self.reduction == "sum" else G.mean(0))

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"


class Fixed(_LossWeighting):
    """Fixed weights: ``sum_i w_i g_i`` for user-given ``w`` (T,). Needs nothing."""

    gram_based = True
    needs_task_gradients = False

    def __init__(self, weights: Sequence[float] | Tensor) -> None:
        super().__init__()
        w = torch.as_tensor(weights, dtype=torch.float64).flatten()
        if w.numel() == 0 or not torch.isfinite(w).all():
            raise ValueError(f"weights must be a non-empty finite vector, got {weights!r}")
        self.register_buffer("w", w)

    def _w(self, T: int) -> Tensor:
        if T != self.w.numel():
            raise ValueError(f"Fixed has {self.w.numel()} weights but G has {T} task rows")
        return self.w


class PCGrad(Aggregator):
    """PCGrad, "Gradient Surgery for Multi-Task Learning" (Yu et al., 2020).

    Each g_i is projected, in a random task order, onto the normal plane of every original g_j it
    conflicts with (g_i·g_j < 0); the projected gradients are summed (or averaged). Needs G; the
    kernel ``pyzsl.ops.pcgrad`` does it from the Gram in two passes over G. The random orders (row
    i: the order in which g_i meets the others) are drawn here from this module's own generator
    (seeded, saved in ``state_dict`` for exact resume, identical on every DDP rank) and passed to
    the kernel; ``effective_gram`` gives the projected gradients' Gram for the diagnostics.
    """

    def __init__(self, reduction: str = "sum", seed: int = 0) -> None:
        super().__init__()
        if reduction not in ("sum", "mean"):
            raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
        self.reduction = reduction
        self.generator = torch.Generator().manual_seed(int(seed))
        self.last_order: Tensor | None = None

    def forward(self, G: Tensor, losses: Tensor | None = None, gram: Tensor | None = None,
                order: Tensor | None = None) -> Tensor:
        G = _check_G(G)
        T = G.shape[0]
        if order is None:  # drawn here, so that diagnostics know the order the kernel used
            order = torch.stack([torch.randperm(T, generator=self.generator) for _ in range(T)])
        self.last_order = order
        return _pcgrad(G, order, None, self.reduction)

    def effective_gram(self, gram: Tensor) -> Tensor:
        """Gram ``C M Cᵀ`` of the projected gradients g'_i = sum_k C_ik g_k of the last call.

        Diagnostics only (T×T work): the same sequential projections as the kernel, in Gram space.
        """
        M = gram.detach().to("cpu", torch.float64)
        T = M.shape[0]
        order = self.last_order.cpu()
        C = torch.eye(T, dtype=torch.float64)
        for i in range(T):
            for j in order[i].tolist():
                if j == i or M[j, j] <= 0:
                    continue
                d = C[i] @ M[:, j]  # g'_i · g_j
                if d < 0:
                    C[i, j] -= d / M[j, j]
        return C @ M @ C.T

    def get_extra_state(self) -> dict:
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state: dict) -> None:
        self.generator.set_state(state["generator"])

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"


# ---------------------------------------------------------------------------------------------
# T×T solvers (host, float64). The Gram is normalised by its largest diagonal entry first: every
# solution below is invariant to a global scale of G, so this only helps the conditioning.


def _normalised(gram: Tensor) -> tuple[np.ndarray, float]:
    M = gram.detach().to("cpu", torch.float64).numpy()
    M = 0.5 * (M + M.T)
    s = float(np.max(np.diag(M))) if M.size else 0.0
    return (M / s if s > 0 else M), s


def _min_norm_2(v11: float, v12: float, v22: float) -> float:
    """argmin over γ∈[0,1] of ||γ a + (1−γ) b||² given a·a, a·b, b·b."""
    den = v11 + v22 - 2.0 * v12
    if den <= 1e-18:
        return 0.5 if abs(v11 - v22) <= 1e-18 else (1.0 if v11 < v22 else 0.0)
    return float(min(1.0, max(0.0, (v22 - v12) / den)))


def min_norm_weights(gram: Tensor, max_iter: int = 250, tol: float = 1e-6) -> Tensor:
    """Weights α on the simplex minimising ``||α @ G||²`` given ``gram = G @ G.T``.

    Frank–Wolfe with exact line search, started from the best pair, as in Sener & Koltun (2018).
    """
    T = gram.shape[0]
    M, s = _normalised(gram)
    if T == 1 or s == 0.0:
        return torch.full((T,), 1.0 / T, dtype=torch.float64)
    # Start: the best of all pairs (closed form), like Sener & Koltun's MinNormSolver.
    best, alpha = math.inf, None
    for i in range(T):
        for j in range(i + 1, T):
            g = _min_norm_2(M[i, i], M[i, j], M[j, j])
            cost = g * g * M[i, i] + 2 * g * (1 - g) * M[i, j] + (1 - g) ** 2 * M[j, j]
            if cost < best - 1e-15:
                best, alpha = cost, np.zeros(T)
                alpha[i], alpha[j] = g, 1 - g
    assert alpha is not None
    if T == 2:  # the pair solution is exact
        return torch.from_numpy(alpha)
    for _ in range(max_iter):
        grad = M @ alpha
        t = int(np.argmin(grad))
        v11 = float(alpha @ grad)
        if v11 - float(grad[t]) <= tol * max(v11, 1e-12):  # Frank–Wolfe duality gap
            break
        v12 = float(grad[t])
        v22 = float(M[t, t])
        g = _min_norm_2(v11, v12, v22)  # weight kept on the current point
        new = g * alpha
        new[t] += 1 - g
        if np.abs(new - alpha).sum() < tol:
            alpha = new
            break
        alpha = new
    return torch.from_numpy(alpha)


class MGDA(Aggregator):
    """MGDA, "Multi-Task Learning as Multi-Objective Optimization" (Sener & Koltun, 2018).

    The min-norm point of the convex hull of the task gradients, ``α = argmin_{α∈Δ} ||α @ G||²``,
    by Frank–Wolfe on the Gram. Needs the Gram only. ``MultiTaskTrainer(mgda_ub=True)`` gives
    MGDA-UB: the same solver on the Gram of the gradients w.r.t. the shared representation (one
    cheap backward through the heads), then one backward of ``sum α_i L_i``.
    ``normalize``: Sener & Koltun's gradient normalisation before solving: "none", "l2"
    (unit-norm gradients), "loss" (g_i / L_i), "loss+" (g_i / (L_i ||g_i||)); as in their code,
    α is found on the normalised gradients and applied to the raw ones (``update = α @ G``).
    """

    gram_based = True

    def __init__(self, normalize: str = "none", max_iter: int = 250, tol: float = 1e-6) -> None:
        super().__init__()
        if normalize not in ("none", "l2", "loss", "loss+"):
            raise ValueError(f"normalize must be one of none, l2, loss, loss+; got {normalize!r}")
        self.normalize, self.max_iter, self.tol = normalize, max_iter, tol
        self.needs_losses = normalize in ("loss", "loss+")

    def _scales(self, gram: Tensor, losses: Tensor | None) -> Tensor:
        T = gram.shape[0]
        one = torch.ones(T, dtype=torch.float64)
        if self.normalize == "none":
            return one
        n = gram.detach().diagonal().to("cpu", torch.float64).clamp_min(0).sqrt()
        if self.normalize == "l2":
            d = n
        else:
            L = _check_losses(losses, T, "MGDA(normalize='loss')").to(torch.float64).cpu()
            d = L if self.normalize == "loss" else L * n
        return torch.where(d > 0, 1.0 / d.clamp_min(1e-300), one)

    def weights(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        c = self._scales(gram, losses)
        g = gram.detach().to("cpu", torch.float64) * c[:, None] * c[None, :]
        return min_norm_weights(g, self.max_iter, self.tol).to(gram.device)

    def extra_repr(self) -> str:
        return f"normalize={self.normalize!r}"


def _project_simplex(v: np.ndarray) -> np.ndarray:
    """Euclidean projection onto the probability simplex (Duchi et al., 2008)."""
    u = np.sort(v)[::-1]
    css = np.cumsum(u) - 1.0
    k = np.arange(1, v.size + 1)
    rho = np.nonzero(u - css / k > 0)[0][-1]
    return np.maximum(v - css[rho] / (rho + 1), 0.0)


class CAGrad(Aggregator):
    """CAGrad, "Conflict-Averse Gradient Descent for Multi-task Learning" (Liu et al., 2021).

    Maximises the worst task's improvement within a ball of radius ``c·||g0||`` around the mean
    gradient g0. Dual on the simplex: ``w = argmin_w w·M·1/T + c||g0|| sqrt(w·M·w)`` (M the Gram,
    solved by projected gradient with backtracking), then
    ``update = (g0 + c||g0|| g_w/||g_w||) / rescale``. Needs the Gram only.
    ``rescale``: "1+c" (default: at T=1 the update is the gradient itself), "1+c^2" (the
    authors' default) or "none"; with Adam-type optimisers the choice only changes the step scale.
    """

    gram_based = True

    def __init__(self, c: float = 0.4, rescale: str = "1+c", max_iter: int = 500, tol: float = 1e-10) -> None:
        super().__init__()
        if not (math.isfinite(c) and c >= 0):  # inf: the dual solve divides by it
            raise ValueError(f"c must be a finite number >= 0, got {c}")
        if rescale not in ("1+c", "1+c^2", "none"):
            raise ValueError(f"rescale must be '1+c', '1+c^2' or 'none', got {rescale!r}")
        self.c, self.rescale, self.max_iter, self.tol = float(c), rescale, max_iter, tol

    def weights(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        T = gram.shape[0]
        M, s = _normalised(gram)
        b = np.full(T, 1.0 / T)
        div = {"1+c": 1 + self.c, "1+c^2": 1 + self.c ** 2, "none": 1.0}[self.rescale]
        if s == 0.0:
            return torch.from_numpy(b / div).to(gram.device)
        g0_norm = math.sqrt(max(float(b @ M @ b), 0.0))
        c = self.c * g0_norm
        eps = 1e-12
        Mb = M @ b

        def f(w: np.ndarray) -> float:
            return float(w @ Mb + c * math.sqrt(max(float(w @ M @ w), 0.0) + eps))

        if T == 2:  # one-dimensional and convex: golden-section search on w = (γ, 1 − γ)
            lo, hi, phi = 0.0, 1.0, (math.sqrt(5) - 1) / 2
            for _ in range(80):
                m1, m2 = hi - phi * (hi - lo), lo + phi * (hi - lo)
                if f(np.array([m1, 1 - m1])) <= f(np.array([m2, 1 - m2])):
                    hi = m2
                else:
                    lo = m1
            gam = 0.5 * (lo + hi)
            cands = [np.array([gam, 1 - gam]), np.array([0.0, 1.0]), np.array([1.0, 0.0])]
            w = min(cands, key=f)
            return self._finish(M, b, c, w, div, gram)
        w = b.copy()
        fw, step = f(w), 1.0
        for _ in range(self.max_iter):
            Mw = M @ w
            grad = Mb + c * Mw / math.sqrt(max(float(w @ Mw), 0.0) + eps)
            while True:  # backtracking (Armijo on the projected step)
                new = _project_simplex(w - step * grad)
                fn = f(new)
                if fn <= fw + grad @ (new - w) + 0.5 / step * float((new - w) @ (new - w)) or step < 1e-12:
                    break
                step *= 0.5
            done = abs(fw - fn) <= self.tol * max(1.0, abs(fw))
            w, fw = new, fn
            step *= 2.0
            if done:
                break
        return self._finish(M, b, c, w, div, gram)

    @staticmethod
    def _finish(M: np.ndarray, b: np.ndarray, c: float, w: np.ndarray, div: float, gram: Tensor) -> Tensor:
        gw_norm = math.sqrt(max(float(w @ M @ w), 0.0))
        lam = c / (gw_norm + 1e-12)
        return torch.from_numpy((b + lam * w) / div).to(gram.device)

    def extra_repr(self) -> str:
        return f"c={self.c}, rescale={self.rescale!r}"


class IMTLG(Aggregator):
    """IMTL-G, "Towards Impartial Multi-task Learning" (Liu et al., ICLR 2021), gradient part.

    The update ``g = sum α_i g_i`` (``sum α = 1``) has equal projections on every task's unit
    gradient u_i: ``α_{2:T} = g_1 Uᵀ (D Uᵀ)⁻¹`` with rows ``D_j = g_1 − g_j``,
    ``U_j = u_1 − u_j``. Every product is a Gram entry divided by norms (the Gram's diagonal),
    so it needs the Gram only. Tasks with a zero gradient get weight 0 (their direction is
    undefined); singular systems (collinear gradients) use the least-squares solution.
    """

    gram_based = True

    def weights(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        T = gram.shape[0]
        M, s = _normalised(gram)
        alpha = np.zeros(T)
        if s == 0.0:
            return torch.from_numpy(alpha).to(gram.device)
        n = np.sqrt(np.clip(np.diag(M), 0, None))
        K = np.nonzero(n > 1e-12)[0]
        if K.size == 1:
            alpha[K[0]] = 1.0
            return torch.from_numpy(alpha).to(gram.device)
        a, rest = K[0], K[1:]
        # rhs_j = g_1·(u_1 − u_j); A[r, j] = (g_1 − g_r)·(u_1 − u_j)
        rhs = M[a, a] / n[a] - M[a, rest] / n[rest]
        A = (M[a, a] / n[a] - M[a, rest][None, :] / n[rest][None, :]
             - M[rest, a][:, None] / n[a] + M[np.ix_(rest, rest)] / n[rest][None, :])
        # row vector x with x A = rhs  ⇔  Aᵀ xᵀ = rhsᵀ
        x = np.linalg.lstsq(A.T, rhs, rcond=None)[0]
        alpha[rest] = x
        alpha[a] = 1.0 - x.sum()
        return torch.from_numpy(alpha).to(gram.device)


class _AdamBuffers(nn.Module):
    """A tiny Adam on one weight vector, its moments in buffers (checkpointed with the module)."""

    def __init__(self, n: int, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        super().__init__()
        self.lr, self.betas, self.eps = lr, betas, eps
        self.register_buffer("m", torch.zeros(n, dtype=torch.float64))
        self.register_buffer("v", torch.zeros(n, dtype=torch.float64))
        self.register_buffer("t", torch.zeros((), dtype=torch.int64))

    def step(self, param: Tensor, grad: Tensor) -> None:
        b1, b2 = self.betas
        self.t += 1
        self.m.mul_(b1).add_(grad, alpha=1 - b1)
        self.v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        t = int(self.t)
        mhat = self.m / (1 - b1 ** t)
        vhat = self.v / (1 - b2 ** t)
        param.sub_(self.lr * mhat / (vhat.sqrt() + self.eps))


class GradNorm(_LossWeighting):
    """GradNorm (Chen et al., 2018): loss weights w_i that equalise the weighted gradient norms.

    ``update = sum_i w_i g_i``. After each step, ``observe`` takes one Adam step on w for
    GradNorm's own loss ``sum_i |w_i ||g_i|| − mean_j(w_j ||g_j||) · r_i^alpha|`` (target held
    constant, r_i the relative inverse training rate ``(L_i/L_i(0)) / mean_j(L_j/L_j(0))``), then
    renormalises ``sum w = T``. Needs the gradient norms (the Gram's diagonal; Chen et al. use the
    last shared layer, we use all shared parameters since G is at hand) and the losses.
    """

    needs_losses = True

    def __init__(self, n_tasks: int, alpha: float = 1.5, lr: float = 0.025) -> None:
        super().__init__()
        if n_tasks < 1:
            raise ValueError(f"n_tasks must be >= 1, got {n_tasks}")
        self.alpha = float(alpha)
        self.register_buffer("w", torch.ones(n_tasks, dtype=torch.float64))
        self.register_buffer("initial_losses", torch.zeros(n_tasks, dtype=torch.float64))
        self.register_buffer("started", torch.zeros((), dtype=torch.bool))
        self.opt = _AdamBuffers(n_tasks, lr)

    def _w(self, T: int) -> Tensor:
        if T != self.w.numel():
            raise ValueError(f"GradNorm was built for {self.w.numel()} tasks but G has {T} rows")
        return self.w

    @torch.no_grad()
    def observe(self, G: Tensor | None, losses: Tensor) -> None:
        if G is None:
            raise ValueError("GradNorm.observe needs the task gradients G")
        T = G.shape[0]
        w = self._w(T)
        L = _check_losses(losses, T, "GradNorm").to(torch.float64).cpu()
        if not bool(self.started):
            self.initial_losses.copy_(L.clamp_min(1e-12))
            self.started.fill_(True)
        norms = torch.linalg.vector_norm(G.detach(), dim=1).to("cpu", torch.float64)  # no float64 copy of G
        wn = w * norms
        ratio = L / self.initial_losses
        r = ratio / ratio.mean().clamp_min(1e-12)
        target = wn.mean() * r.pow(self.alpha)
        grad = torch.sign(wn - target) * norms
        self.opt.step(self.w, grad)
        self.w.clamp_(min=1e-6)
        self.w.mul_(T / self.w.sum())

    def extra_repr(self) -> str:
        return f"n_tasks={self.w.numel()}, alpha={self.alpha}, lr={self.opt.lr}"


class Uncertainty(_LossWeighting):
    """Uncertainty weighting (Kendall, Gal & Cipolla, 2018).

    Learnable log-variances s_i; total loss ``sum_i exp(−s_i) L_i + s_i``, so the update is
    ``sum_i exp(−s_i) g_i`` and ``observe`` takes one Adam step on s with the gradient
    ``1 − exp(−s_i) L_i``. Needs the losses only (no per-task gradients: one weighted backward).
    """

    needs_task_gradients = False
    needs_losses = True

    def __init__(self, n_tasks: int, lr: float = 0.01) -> None:
        super().__init__()
        if n_tasks < 1:
            raise ValueError(f"n_tasks must be >= 1, got {n_tasks}")
        self.register_buffer("log_var", torch.zeros(n_tasks, dtype=torch.float64))
        self.opt = _AdamBuffers(n_tasks, lr)

    def _w(self, T: int) -> Tensor:
        if T != self.log_var.numel():
            raise ValueError(f"Uncertainty was built for {self.log_var.numel()} tasks but got {T}")
        return torch.exp(-self.log_var)

    @torch.no_grad()
    def observe(self, G: Tensor | None, losses: Tensor) -> None:
        T = self.log_var.numel()
        L = _check_losses(losses, T, "Uncertainty").to(torch.float64).cpu()
        self.opt.step(self.log_var, 1.0 - torch.exp(-self.log_var) * L)

    def extra_repr(self) -> str:
        return f"n_tasks={self.log_var.numel()}, lr={self.opt.lr}"


AGGREGATORS = {
    "equal": Equal,
    "fixed": Fixed,
    "pcgrad": PCGrad,
    "mgda": MGDA,
    "cagrad": CAGrad,
    "imtlg": IMTLG,
    "gradnorm": GradNorm,
    "uncertainty": Uncertainty,
}


def make_aggregator(name: str, n_tasks: int, **kwargs) -> Aggregator:
    """Build an aggregator by name (``equal``, ``pcgrad``, ``mgda``, ...); ``n_tasks`` where needed."""
    key = name.lower().replace("-", "").replace("_", "")
    if key not in AGGREGATORS:
        raise ValueError(f"unknown aggregator {name!r}; choose from {sorted(AGGREGATORS)}")
    cls = AGGREGATORS[key]
    if cls in (GradNorm, Uncertainty):
        return cls(n_tasks, **kwargs)
    return cls(**kwargs)
