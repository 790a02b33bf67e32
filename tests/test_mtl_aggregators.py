"""Aggregators: properties shared by all (finite, permutation-equivariant, scaling, zero rows,
T=1) and each method against its defining condition (min-norm KKT, CAGrad's worst-task
improvement, IMTL-G's equal projections, PCGrad's projections)."""
import itertools

import numpy as np
import pytest
import torch

from pyzsl.ops import _reference
from pyzsl.mtl.aggregators import (CAGrad, Equal, Fixed, GradNorm, IMTLG, MGDA, PCGrad, Uncertainty,
                                   make_aggregator, min_norm_weights)


def _projected_rows(G, order):
    """PCGrad's projected gradients, row by row (Yu et al. 2020), for the diagnostics test."""
    rows = []
    for i in range(G.shape[0]):
        g = G[i].clone()
        for j in order[i].tolist():
            if j != i and g @ G[j] < 0:
                g = g - (g @ G[j]) / (G[j] @ G[j]) * G[j]
        rows.append(g)
    return torch.stack(rows)


pytestmark = pytest.mark.usefixtures("one_thread")


def _order(T, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(T, generator=g) for _ in range(T)])


# name -> (factory(T), call(agg, G, losses, order))
def _call(agg, G, losses=None, order=None):
    if isinstance(agg, PCGrad):
        return agg(G, order=order)
    return agg(G, losses=losses)


FACTORIES = {
    "equal": lambda T: Equal(),
    "equal_mean": lambda T: Equal("mean"),
    "fixed": lambda T: Fixed(torch.arange(1, T + 1, dtype=torch.float64) / T),
    "pcgrad": lambda T: PCGrad(),
    "mgda": lambda T: MGDA(),
    "mgda_l2": lambda T: MGDA(normalize="l2"),
    "cagrad": lambda T: CAGrad(c=0.5),
    "imtlg": lambda T: IMTLG(),
    "gradnorm": lambda T: GradNorm(T),
    "uncertainty": lambda T: Uncertainty(T),
}
# aggregators whose update ignores a task with zero gradient (equals the update without it)
IGNORES_ZERO_ROW = {"equal", "pcgrad", "imtlg", "gradnorm", "uncertainty"}


def _G(T, P, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(T, P, generator=g, dtype=dtype)


@pytest.mark.parametrize("name", sorted(FACTORIES))
@pytest.mark.parametrize("T", [1, 2, 3, 5])
def test_finite_shape_dtype(name, T):
    for dtype in (torch.float32, torch.float64):
        G = _G(T, 37, seed=T, dtype=dtype)
        out = _call(FACTORIES[name](T), G, torch.rand(T, dtype=torch.float64) + 0.5, _order(T))
        assert out.shape == (37,) and out.dtype == dtype
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(FACTORIES))
@pytest.mark.parametrize("T", [2, 3, 5])
def test_permutation_equivariant(name, T):
    G = _G(T, 23, seed=10 + T)
    order = _order(T, seed=T)
    perm = torch.randperm(T, generator=torch.Generator().manual_seed(T + 1))
    inv = torch.argsort(perm)
    agg = FACTORIES[name](T)
    ref = _call(agg, G, torch.ones(T), order)
    if isinstance(agg, Fixed):  # the weights travel with their tasks
        agg = Fixed(agg.w[perm])
    # row k of G[perm] is task perm[k]; it is projected against the others in the same order
    order_p = inv[order[perm]]
    out = _call(agg, G[perm], torch.ones(T), order_p)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", sorted(FACTORIES))
@pytest.mark.parametrize("c", [1e-3, 3.7])
def test_positively_homogeneous(name, c):
    T = 3
    G = _G(T, 29, seed=3)
    order = _order(T)
    ref = _call(FACTORIES[name](T), G, torch.ones(T), order)
    out = _call(FACTORIES[name](T), c * G, torch.ones(T), order)
    torch.testing.assert_close(out, c * ref, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_zero_rows(name):
    T, P = 3, 19
    Z = torch.zeros(T, P, dtype=torch.float64)
    out = _call(FACTORIES[name](T), Z, torch.ones(T), _order(T))
    assert torch.equal(out, torch.zeros(P, dtype=torch.float64))
    G = _G(T, P, seed=5)
    G[1] = 0
    out = _call(FACTORIES[name](T), G, torch.ones(T), _order(T))
    assert torch.isfinite(out).all()
    if name in IGNORES_ZERO_ROW:
        keep = [0, 2]
        order2 = torch.tensor([[0, 1], [1, 0]])
        agg2 = FACTORIES[name](2)
        torch.testing.assert_close(out, _call(agg2, G[keep], torch.ones(2), order2), rtol=1e-9, atol=1e-12)
    if name.startswith("mgda"):  # a zero gradient is in the hull: min-norm point is 0
        torch.testing.assert_close(out, torch.zeros(P, dtype=torch.float64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_single_task_returns_gradient(name):
    g = _G(1, 41, seed=7)
    agg = Fixed([1.0]) if name == "fixed" else FACTORIES[name](1)
    out = _call(agg, g, torch.ones(1), torch.zeros(1, 1, dtype=torch.int64))
    torch.testing.assert_close(out, g[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cls", [Equal, MGDA, CAGrad, IMTLG])
def test_weights_from_gram_give_update(cls):
    G = _G(4, 31, seed=11)
    agg = cls()
    w = agg.weights(G @ G.T)
    assert w.shape == (4,)
    torch.testing.assert_close(w.to(G) @ G, agg(G), rtol=1e-10, atol=1e-12)


def _simplex_grid(T, n):
    for c in itertools.product(range(n + 1), repeat=T - 1):
        if sum(c) <= n:
            yield np.array(list(c) + [n - sum(c)], dtype=np.float64) / n


@pytest.mark.parametrize("T", [2, 3, 4, 6])
def test_min_norm_kkt_and_grid(T):
    for seed in range(5):
        G = _G(T, 8, seed=100 * T + seed)
        if seed % 2:  # force conflicts: a task against the sum of the others
            G[0] = -0.7 * G[1:].sum(0)
        M = (G @ G.T)
        a = min_norm_weights(M, max_iter=2000, tol=1e-12).numpy()
        Mn = M.numpy()
        assert abs(a.sum() - 1) < 1e-12 and (a >= -1e-15).all()
        val = a @ Mn @ a
        # KKT of min over the simplex: (M a)_i >= a·M·a for all i (equality on the support)
        assert (Mn @ a >= val - 1e-5 * np.trace(Mn)).all()
        if T <= 3:
            best = min(w @ Mn @ w for w in _simplex_grid(T, 60))
            assert val <= best + 1e-9


def test_mgda_opposite_gradients_cancel():
    g = torch.tensor([1.0, 2.0, -1.0], dtype=torch.float64)
    out = MGDA()(torch.stack([g, -3 * g]))
    torch.testing.assert_close(out, torch.zeros(3, dtype=torch.float64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("T", [2, 3])
def test_cagrad_solves_its_dual(T):
    for seed in range(4):
        G = _G(T, 6, seed=seed + 10 * T)
        G[0] -= 0.8 * G[1]  # some conflict
        c = 0.5
        M = (G @ G.T).numpy()
        b = np.full(T, 1 / T)
        g0n = np.sqrt(b @ M @ b)

        def f(w):
            return w @ M @ b + c * g0n * np.sqrt(max(w @ M @ w, 0) + 1e-30)

        agg = CAGrad(c=c, rescale="none", max_iter=5000, tol=1e-14)
        wts = agg.weights(torch.from_numpy(M)).numpy()
        # recover w from the returned weights: weights = b + lam * w
        lam_w = wts - b
        w = lam_w / lam_w.sum()
        best = min(f(v) for v in _simplex_grid(T, 80))
        assert f(w) <= best + 1e-6 * abs(best) + 1e-9


@pytest.mark.parametrize("T", [2, 3, 5])
def test_cagrad_improves_worst_task_over_mean(T):
    for seed in range(5):
        G = _G(T, 20, seed=seed + 50)
        G[0] = -0.5 * G[1] + 0.1 * G[0]
        c = 0.5
        d = CAGrad(c=c, rescale="none")(G)
        g0 = G.mean(0)
        assert (d - g0).norm() <= c * g0.norm() * (1 + 1e-6)  # inside CAGrad's ball
        assert (G @ d).min() >= (G @ g0).min() - 1e-9  # worst task at least as well off


def test_cagrad_c0_is_mean():
    G = _G(3, 10)
    torch.testing.assert_close(CAGrad(c=0.0)(G), G.mean(0))


@pytest.mark.parametrize("T", [2, 3, 5])
def test_imtlg_equal_projections(T):
    for seed in range(4):
        G = _G(T, 30, seed=seed + 70) * torch.tensor([1.0, 10.0, 0.1, 3.0, 0.5][:T], dtype=torch.float64)[:, None]
        g = IMTLG()(G)
        proj = (G / G.norm(dim=1, keepdim=True)) @ g
        torch.testing.assert_close(proj, proj[:1].expand(T), rtol=1e-8, atol=1e-10)
        assert proj[0] > 0
        w = IMTLG().weights(G @ G.T)
        torch.testing.assert_close(w.sum(), torch.tensor(1.0, dtype=torch.float64))


def test_pcgrad_two_tasks_closed_form():
    g1 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    g2 = torch.tensor([-1.0, 1.0], dtype=torch.float64)
    G = torch.stack([g1, g2])
    p1 = g1 - (g1 @ g2) / (g2 @ g2) * g2
    p2 = g2 - (g2 @ g1) / (g1 @ g1) * g1
    torch.testing.assert_close(PCGrad()(G), p1 + p2)
    torch.testing.assert_close(PCGrad("mean")(G), (p1 + p2) / 2)
    # no conflict: plain sum
    G2 = torch.stack([g1, torch.tensor([1.0, 1.0], dtype=torch.float64)])
    torch.testing.assert_close(PCGrad()(G2), G2.sum(0))
    # the update never opposes either task (T = 2)
    for seed in range(20):
        G = _G(2, 9, seed=seed)
        u = PCGrad()(G)
        assert ((G @ u) >= -1e-12).all()


def test_pcgrad_effective_gram_is_projected_gram():
    G = _G(4, 25, seed=8)
    G[3] = -G[1] + 0.2 * G[3]
    agg = PCGrad(seed=2)
    agg(G)
    P = _projected_rows(G, agg.last_order)
    torch.testing.assert_close(agg.effective_gram(G @ G.T), P @ P.T, rtol=1e-9, atol=1e-12)
    assert (agg.effective_gram(G @ G.T) - G @ G.T).abs().max() > 1e-3  # something was projected


def test_pcgrad_matches_per_pair_oracle_and_is_seeded():
    G = _G(5, 40, seed=3)
    G[2] = -G[0] + 0.1 * G[2]
    order = _order(5, seed=9)
    torch.testing.assert_close(PCGrad()(G, order=order), _reference.pcgrad(G, order), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(PCGrad("mean")(G, order=order), _reference.pcgrad(G, order, "mean"),
                               rtol=1e-10, atol=1e-12)
    a, b = PCGrad(seed=4), PCGrad(seed=4)
    torch.testing.assert_close(a(G), b(G))
    # the generator state is checkpointed: a restored copy draws the same next orders
    c = PCGrad(seed=0)
    c.load_state_dict(a.state_dict())
    torch.testing.assert_close(a(G), c(G))


def test_gradnorm_balances_norms():
    agg = GradNorm(2, alpha=1.5, lr=0.05)
    G = torch.stack([torch.ones(10), 10 * torch.ones(10)]).double()
    for _ in range(100):
        agg.observe(G, torch.tensor([1.0, 1.0]))  # equal training rates: equalise w_i ||g_i||
    w = agg.w
    assert abs(float(w.sum()) - 2) < 1e-12
    assert w[0] > 1.5 and w[1] < 0.5
    assert abs(float(w[0] * 1 - w[1] * 10)) < 0.5 * float(w[0])


def test_gradnorm_favours_slow_task():
    agg = GradNorm(2, alpha=1.5, lr=0.05)
    G = torch.ones(2, 4, dtype=torch.float64)
    agg.observe(G, torch.tensor([1.0, 1.0]))
    for _ in range(50):
        agg.observe(G, torch.tensor([0.2, 0.9]))  # task 1 trains slower: its weight grows
    assert agg.w[1] > agg.w[0]


def test_uncertainty_weights_follow_inverse_loss():
    agg = Uncertainty(2, lr=0.05)
    L = torch.tensor([0.5, 4.0])
    for _ in range(3000):
        agg.observe(None, L)
    w = torch.exp(-agg.log_var)
    torch.testing.assert_close(w, 1 / L.double(), rtol=2e-2, atol=0)


def test_learnable_state_roundtrip():
    a = GradNorm(3)
    G = _G(3, 5)
    a.observe(G, torch.tensor([1.0, 2.0, 3.0]))
    a.observe(G, torch.tensor([0.9, 2.0, 2.0]))
    b = GradNorm(3)
    b.load_state_dict(a.state_dict())
    a.observe(G, torch.tensor([0.5, 1.0, 1.0]))
    b.observe(G, torch.tensor([0.5, 1.0, 1.0]))
    assert torch.equal(a.w, b.w)


def test_errors_are_clear():
    G = _G(2, 4)
    G[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"non-finite.*\[1\]"):
        MGDA()(G)
    with pytest.raises(ValueError, match="2-D"):
        Equal()(torch.ones(3))
    with pytest.raises(ValueError, match="loss-based"):
        GradNorm(2).observe(_G(2, 4), None)
    with pytest.raises(ValueError, match="3 weights but G has 2"):
        Fixed([1, 2, 3])(_G(2, 4))
    with pytest.raises(ValueError, match="unknown aggregator"):
        make_aggregator("nope", 2)
    with pytest.raises(ValueError, match="reduction"):
        Equal("max")
    assert isinstance(make_aggregator("PCGrad", 2), PCGrad)
    assert isinstance(make_aggregator("gradnorm", 2), GradNorm)
