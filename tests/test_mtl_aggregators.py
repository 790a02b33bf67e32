"""Aggregators: properties shared by all (finite, permutation-equivariant, scaling, zero rows,
T=1) and each method against its defining condition (min-norm KKT, CAGrad's worst-task
improvement, IMTL-G's equal projections, PCGrad's projections)."""
import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from pyzsl.ops import _reference
from pyzsl.mtl.aggregators import (CAGrad, Equal, Fixed, GradNorm, IMTLG, MGDA, PCGrad, Uncertainty,
                                   make_aggregator, min_norm_weights)
from pyzsl.mtl.aggregators import _AdamBuffers


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


def _exact_min_norm(M):
    """min over the simplex of a·M·a, exactly: the support S whose equality-constrained solution
    a_S ∝ M_S⁻¹1 is non-negative and satisfies the KKT conditions (M a)_i >= a·M·a off S."""
    T = M.shape[0]
    for k in range(1, T + 1):
        for S in itertools.combinations(range(T), k):
            S = list(S)
            x = np.linalg.solve(M[np.ix_(S, S)], np.ones(k))
            if x.sum() <= 0 or (x < 0).any():
                continue
            a = np.zeros(T)
            a[S] = x / x.sum()
            if (M @ a >= (a @ M @ a) * (1 - 1e-12)).all():
                return a
    raise AssertionError("no KKT point found")


@pytest.mark.parametrize("T", [2, 3])
@pytest.mark.parametrize("normalize", ["none", "l2", "loss", "loss+"])
def test_mgda_normalisation_matches_scaled_gram(T, normalize):
    # Sener & Koltun (2018) normalise g_i by d_i = 1, ||g_i||, L_i or L_i ||g_i||, solve min-norm on
    # the normalised Gram D⁻¹MD⁻¹, and (as the docstring says) apply α to the raw gradients unscaled.
    # Guards against: the raw Gram for every mode, squared norms for "l2", "loss"/"loss+" swapped.
    g = torch.Generator().manual_seed(1)
    G = torch.randn(3, 6, generator=g, dtype=torch.float64) * torch.tensor([[1.0], [4.0], [0.3]], dtype=torch.float64)
    G[0] -= 0.3 * G[1]
    G = G[:T]
    L = torch.tensor([0.7, 2.5, 0.2], dtype=torch.float64)[:T]
    M = G @ G.T
    n = M.diagonal().sqrt()
    d = {"none": torch.ones(T, dtype=torch.float64), "l2": n, "loss": L, "loss+": L * n}[normalize]
    Mn = (M / d[:, None] / d[None, :]).numpy()
    if T == 2:  # closed form: γ g1 + (1 − γ) g2 with γ = (M22 − M12) / (M11 + M22 − 2 M12), clipped
        gam = np.clip((Mn[1, 1] - Mn[0, 1]) / (Mn[0, 0] + Mn[1, 1] - 2 * Mn[0, 1]), 0, 1)
        ref = np.array([gam, 1 - gam])
    else:
        ref = _exact_min_norm(Mn)
    assert (ref > 1e-3).all()  # interior: every task counts, so every scale matters
    agg = MGDA(normalize=normalize, max_iter=5000, tol=1e-14)
    w = agg.weights(M, L)
    np.testing.assert_allclose(w.numpy(), ref, rtol=0, atol=1e-10)
    # the update applies α to the raw gradients, not to the normalised ones
    torch.testing.assert_close(agg(G, losses=L), torch.from_numpy(ref) @ G, rtol=1e-9, atol=1e-12)


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


def _cagrad_reference(G, c, rescale):
    """Liu et al. (2021), the authors' code: w = argmin_{w∈Δ} g_w·g0 + c||g0|| ||g_w|| by SLSQP,
    d = g0 + c||g0|| g_w / ||g_w||, divided by 1 + c² (their default), 1 + c or nothing."""
    Gn = G.numpy()
    T = Gn.shape[0]
    A = Gn @ Gn.T
    b = np.full(T, 1.0 / T)
    radius = c * np.sqrt(b @ A @ b)
    res = minimize(lambda x: x @ A @ b + radius * np.sqrt(x @ A @ x), b, method="SLSQP",
                   bounds=[(0, 1)] * T, constraints=({"type": "eq", "fun": lambda x: 1 - x.sum()},),
                   options={"ftol": 1e-15, "maxiter": 1000})
    gw = res.x @ Gn
    g0 = b @ Gn
    d = g0 + radius / np.linalg.norm(gw) * gw
    return torch.from_numpy(d / {"1+c^2": 1 + c * c, "1+c": 1 + c, "none": 1.0}[rescale])


@pytest.mark.parametrize("T", [2, 3])
@pytest.mark.parametrize("rescale", ["1+c^2", "1+c", "none"])
def test_cagrad_matches_authors_formula(T, rescale):
    # the whole update against an independent solve of the dual: guards the radius c||g0||, the
    # step along g_w/||g_w|| and each rescaling (e.g. "1+c^2" dividing by 1 + c)
    G = _G(T, 7, seed=31 + T)
    G[0] -= 0.9 * G[1]  # conflict, so that the ball constraint is active
    c = 0.6
    out = CAGrad(c=c, rescale=rescale, max_iter=5000, tol=1e-14)(G)
    torch.testing.assert_close(out, _cagrad_reference(G, c, rescale), rtol=1e-5, atol=1e-7)  # SLSQP: ~1e-7 in w


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
    for _ in range(1000):
        agg.observe(None, L)
    w = torch.exp(-agg.log_var)
    # the stationary point exp(−s) = 1/L, reached to rounding (the Adam steps themselves are
    # checked against torch.optim.Adam in test_uncertainty_observe_is_adam_on_its_loss)
    torch.testing.assert_close(w, 1 / L.double(), rtol=1e-9, atol=0)


def _adam_reference(lr):
    """torch.optim.Adam (single-tensor path) as the independent reference for _AdamBuffers."""
    def make(x0):
        p = x0.clone().requires_grad_(True)
        return p, torch.optim.Adam([p], lr=lr, betas=(0.9, 0.999), eps=1e-8, foreach=False)
    return make


def test_adam_buffers_match_torch_adam():
    # the internal Adam against torch's on the same gradients, step by step: guards both bias
    # corrections (1 − β1^t, 1 − β2^t), the moment updates and eps's place
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(4, generator=g, dtype=torch.float64)
    ours = x0.clone()
    buf = _AdamBuffers(4, lr=0.03)
    p, opt = _adam_reference(0.03)(x0)
    for k in range(6):
        grad = torch.randn(4, generator=g, dtype=torch.float64) * 10.0 ** (k % 3 - 1)
        buf.step(ours, grad)
        p.grad = grad.clone()
        opt.step()
        torch.testing.assert_close(ours, p.detach(), rtol=0, atol=1e-12)
    assert int(buf.t) == 6


def test_uncertainty_observe_is_adam_on_its_loss():
    # one Adam step per observe on sum_i exp(−s_i) L_i + s_i, the gradient taken by autograd
    agg = Uncertainty(3, lr=0.05)
    p, opt = _adam_reference(0.05)(torch.zeros(3, dtype=torch.float64))
    for L in ([0.5, 4.0, 1.0], [0.6, 3.0, 1.5], [0.4, 5.0, 0.9], [0.5, 4.0, 1.2]):
        L = torch.tensor(L, dtype=torch.float64)
        agg.observe(None, L)
        opt.zero_grad()
        (torch.exp(-p) * L + p).sum().backward()
        opt.step()
        torch.testing.assert_close(agg.log_var, p.detach(), rtol=0, atol=1e-12)


def test_gradnorm_observe_by_hand():
    # GradNorm (Chen et al. 2018) from non-unit initial losses and alpha != 1, computed by hand:
    # r_i = (L_i/L_i(0)) / mean_j(L_j/L_j(0)), target_i = mean_j(w_j ||g_j||) r_i^alpha (constant),
    # grad_i = sign(w_i ||g_i|| − target_i) ||g_i||, one Adam step, clamp, renormalise to sum T.
    # Guards dropping alpha, the sign, or the initial losses L(0).
    T, alpha, lr = 3, 2.5, 0.1
    G = _G(T, 5, seed=21) * torch.tensor([[1.0], [2.0], [0.5]], dtype=torch.float64)
    norms = G.norm(dim=1)
    losses = [torch.tensor(x, dtype=torch.float64)
              for x in ([4.0, 0.5, 2.0], [2.0, 0.45, 1.9], [1.0, 0.4, 1.5], [0.9, 0.2, 1.4])]
    agg = GradNorm(T, alpha=alpha, lr=lr)
    w, opt = _adam_reference(lr)(torch.ones(T, dtype=torch.float64))
    L0 = losses[0]
    for L in losses:
        agg.observe(G, L)
        with torch.no_grad():
            wn = w * norms
            ratio = L / L0
            r = ratio / ratio.mean()
            target = wn.mean() * r ** alpha
            w.grad = torch.sign(wn - target) * norms
            opt.step()
            w.clamp_(min=1e-6)
            w.mul_(T / w.sum())
        torch.testing.assert_close(agg.w, w.detach(), rtol=0, atol=1e-12)
    assert (agg.w - 1).abs().max() > 0.05  # the weights moved


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


def test_cagrad_refuses_an_infinite_c():
    with pytest.raises(ValueError, match="c must be a finite number"):
        CAGrad(c=float("inf"))
