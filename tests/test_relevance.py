"""Task relevance: CCA similarity (invariant to invertible linear maps), linear CKA, ranking."""
import numpy as np
import pytest
import torch

from pyzsl.relevance import canonical_correlations, cca_similarity, linear_cka, pick_checkpoint


def _rng(seed=0):
    return torch.Generator().manual_seed(seed)


def _related(n=600, d1=12, d2=9, noise=0.5, seed=0):
    g = _rng(seed)
    randn = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    Z = randn(n, 6)  # common latent factors
    X = Z @ randn(6, d1) + noise * randn(n, d1)
    Y = Z @ randn(6, d2) + noise * randn(n, d2)
    return X, Y


def _invertible(d, seed, cond=30.0):
    g = _rng(seed)
    Q1, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    Q2, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    s = torch.logspace(0, np.log10(cond), d, dtype=torch.float64)
    return Q1 @ torch.diag(s) @ Q2


def test_cca_invariant_to_invertible_linear_maps():
    X, Y = _related()
    A, B = _invertible(X.shape[1], 1), _invertible(Y.shape[1], 2)
    ref = cca_similarity(X, Y)
    assert 0.2 < ref < 0.95
    assert cca_similarity(X @ A, Y @ B) == pytest.approx(ref, abs=1e-9)
    # plus a shift (centring removes it) and a float32 / numpy input
    assert cca_similarity((X @ A + 5.0).numpy(), (Y @ B).float()) == pytest.approx(ref, abs=1e-4)
    # symmetric
    assert cca_similarity(Y, X) == pytest.approx(ref, abs=1e-12)


def test_canonical_correlations_match_covariance_formula():
    X, Y = _related(n=400, d1=5, d2=4)
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    Sxx, Syy, Sxy = Xc.T @ Xc, Yc.T @ Yc, Xc.T @ Yc

    def inv_sqrt(S):
        w, V = torch.linalg.eigh(S)
        return V @ torch.diag(w.rsqrt()) @ V.T

    ref = torch.linalg.svdvals(inv_sqrt(Sxx) @ Sxy @ inv_sqrt(Syy))
    torch.testing.assert_close(canonical_correlations(X, Y), ref, rtol=1e-9, atol=1e-12)


def test_cca_extremes():
    X, _ = _related()
    A = _invertible(X.shape[1], 3)
    assert cca_similarity(X, X @ A) == pytest.approx(1.0, abs=1e-9)
    g = _rng(5)
    U = torch.randn(5000, 3, generator=g, dtype=torch.float64)
    V = torch.randn(5000, 3, generator=g, dtype=torch.float64)
    assert cca_similarity(U, V) < 0.05


def test_cca_keep_truncates_directions():
    X, Y = _related()
    full = canonical_correlations(X, Y)
    kept = canonical_correlations(X, Y, keep=0.5)
    assert kept.numel() < full.numel()
    assert 0 <= float(kept.min()) and float(kept.max()) <= 1
    # keep=1 keeps the numerical rank, never a null-space direction that rounding lets in
    g = _rng(3)
    low = torch.randn(80, 12, generator=g, dtype=torch.float64) @ torch.randn(12, 20, generator=g, dtype=torch.float64)
    Z = torch.randn(80, 5, generator=g, dtype=torch.float64)
    for seed in range(30):
        Xs = low @ torch.linalg.qr(torch.randn(20, 20, generator=_rng(seed), dtype=torch.float64))[0]
        assert torch.equal(canonical_correlations(Xs, Z, keep=1.0), canonical_correlations(Xs, Z))


def test_linear_cka_properties():
    X, Y = _related()
    ref = linear_cka(X, Y)
    assert 0 < ref < 1
    Q, _ = torch.linalg.qr(torch.randn(X.shape[1], X.shape[1], generator=_rng(7), dtype=torch.float64))
    assert linear_cka(3.0 * X @ Q + 1.0, Y) == pytest.approx(ref, abs=1e-10)  # orthogonal + scale + shift
    assert linear_cka(X, X) == pytest.approx(1.0, abs=1e-12)
    # unlike CCA, CKA changes under a general invertible (anisotropic) map
    A = _invertible(X.shape[1], 8, cond=100.0)
    assert abs(linear_cka(X @ A, Y) - ref) > 1e-3
    # kernel form: HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) with K = X Xᵀ, H the centring matrix
    n = X.shape[0]
    H = torch.eye(n, dtype=torch.float64) - 1.0 / n
    K, L = H @ X @ X.T @ H, H @ Y @ Y.T @ H
    hsic = lambda a, b: (a * b).sum()
    assert ref == pytest.approx(float(hsic(K, L) / (hsic(K, K) * hsic(L, L)).sqrt()), rel=1e-10)
    # fewer inputs than features: the N×N form gives the same number as the d×d one
    W, V = X[:6], Y[:6]
    H6 = torch.eye(6, dtype=torch.float64) - 1.0 / 6
    K, L = H6 @ W @ W.T @ H6, H6 @ V @ V.T @ H6
    assert linear_cka(W, V) == pytest.approx(float(hsic(K, L) / (hsic(K, K) * hsic(L, L)).sqrt()), rel=1e-10)
    # numpy views with negative strides are read as they are
    Xn, Yn = X.numpy(), Y.numpy()
    assert linear_cka(Xn[:, ::-1], Yn) == pytest.approx(ref, rel=1e-10)


def test_pick_checkpoint_ranks_related_first():
    X, Y = _related(noise=0.3, seed=11)
    g = _rng(12)
    new = Y
    cands = {
        "unrelated": torch.randn(X.shape[0], 12, generator=g, dtype=torch.float64),
        "related_mapped": X @ _invertible(X.shape[1], 13),  # same information, scrambled basis
        "half": torch.cat([X[:, :3], torch.randn(X.shape[0], 9, generator=g, dtype=torch.float64)], 1),
    }
    for measure in ("cca", "cka"):
        ranking = pick_checkpoint(cands, new, measure=measure)
        assert [name for name, _ in ranking][-1] == "unrelated"
        scores = [s for _, s in ranking]
        assert scores == sorted(scores, reverse=True)
    assert pick_checkpoint(cands, new)[0][0] == "related_mapped"
    assert pick_checkpoint(list(cands.values()), new)[0][0] == 1


def test_errors():
    X, Y = _related()
    with pytest.raises(ValueError, match="same inputs"):
        cca_similarity(X, Y[:-1])
    with pytest.raises(ValueError, match="2-D"):
        linear_cka(X[:, 0], Y)
    with pytest.raises(ValueError, match="constant"):
        cca_similarity(torch.ones(10, 3), Y[:10])
    with pytest.raises(ValueError, match="candidate 'bad'.*same inputs"):
        pick_checkpoint({"ok": X, "bad": X[:5]}, Y)
    with pytest.raises(ValueError, match="measure"):
        pick_checkpoint({"ok": X}, Y, measure="svcca")
    with pytest.raises(ValueError, match="empty"):
        pick_checkpoint({}, Y)
    with pytest.warns(RuntimeWarning, match="by construction"):
        cca_similarity(X[:15], Y[:15])
