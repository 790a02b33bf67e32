"""pyzsl.bli mapping methods: normalize, procrustes (+ VecMap steps), rcsls, self_learning."""
import importlib
import math
import warnings

import numpy as np
import pytest
import torch

from pyzsl.bli.normalize import ITERATIVE, normalize
from pyzsl.bli.procrustes import VECMAP_SUPERVISED, LinearMap, orthogonal_procrustes, procrustes
from pyzsl.bli.rcsls import rcsls, rcsls_objective
from pyzsl.bli.self_learning import (_best_excluded_bound, induce_dictionary, self_learning,
                                     unsupervised_seed)
sl_module = importlib.import_module("pyzsl.bli.self_learning")  # pyzsl.bli.self_learning is also the function


def _rotation(d, g, dtype=torch.float64):
    Q, R = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=dtype))
    return Q * torch.sign(torch.diagonal(R))


def _isometric_pair(n, d, noise, seed, dtype=torch.float32):
    """X (n × d, normalised), Z = rows of X Q permuted (+ noise), and the true pairs."""
    g = torch.Generator().manual_seed(seed)
    X = normalize(torch.randn(n, d, generator=g, dtype=torch.float64))
    Q = _rotation(d, g)
    perm = torch.randperm(n, generator=g)  # source i ↦ target row inv[i]
    Z = (X @ Q)[perm] + noise * torch.randn(n, d, generator=g, dtype=torch.float64)
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(n)
    truth = torch.stack([torch.arange(n), inv], 1)
    return X.to(dtype), normalize(Z, "unit").to(dtype), Q, truth


# ---------------------------------------------------------------------------- normalize
def test_normalize_steps():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(50, 7, generator=g, dtype=torch.float64) * 3 + 1
    X0 = X.clone()
    U = normalize(X, "unit")
    torch.testing.assert_close(U.norm(dim=1), torch.ones(50, dtype=torch.float64))
    C = normalize(X, "center")
    torch.testing.assert_close(C.mean(0), torch.zeros(7, dtype=torch.float64), atol=1e-12, rtol=0)
    D = normalize(X, ["unitdim"])
    torch.testing.assert_close(D.norm(dim=0), torch.ones(7, dtype=torch.float64))
    E = normalize(X, "centeremb")
    torch.testing.assert_close(E.mean(1), torch.zeros(50, dtype=torch.float64), atol=1e-12, rtol=0)
    UCU = normalize(X)  # default unit,center,unit
    torch.testing.assert_close(UCU, normalize(normalize(normalize(X, "unit"), "center"), "unit"))
    torch.testing.assert_close(normalize(X, "none"), X)
    torch.testing.assert_close(X, X0)  # the input is not modified
    # zero rows stay zero
    Xz = X.clone()
    Xz[3] = 0
    assert normalize(Xz, "unit")[3].abs().max() == 0


def test_normalize_iterative_is_unit_and_centred():
    """Zhang et al. (2019): after 5 rounds rows are unit length and the mean is (nearly) zero."""
    g = torch.Generator().manual_seed(1)
    X = torch.randn(200, 9, generator=g, dtype=torch.float64) + 2  # far from centred
    once = normalize(X)
    It = normalize(X, ITERATIVE)
    torch.testing.assert_close(It.norm(dim=1), torch.ones(200, dtype=torch.float64))
    assert float(It.mean(0).norm()) < 0.1 * float(once.mean(0).norm())
    torch.testing.assert_close(normalize(X, "iterative"), It, rtol=0, atol=0)  # the step's name
    torch.testing.assert_close(normalize(X, "center,iterative"), normalize(X, "center," + ITERATIVE), rtol=0, atol=0)


def test_normalize_bad_inputs():
    X = torch.randn(4, 3)
    with pytest.raises(ValueError, match="unknown step.*'renorm'"):
        normalize(X, "unit,renorm")
    Xn = X.clone()
    Xn[2, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN/inf.*row 2"):
        normalize(Xn)
    with pytest.raises(ValueError, match="2-D"):
        normalize(torch.randn(3))
    with pytest.raises(TypeError, match="floating"):
        normalize(torch.ones(3, 3, dtype=torch.int64))


def test_normalize_iterative_matches_five_rounds_by_hand():
    """Zhang et al. (2019): exactly five rounds of (unit length, then centring), then unit length;
    guards the round count and the order within a round."""
    g = torch.Generator().manual_seed(18)
    A = (torch.randn(40, 5, generator=g, dtype=torch.float64) + 3).numpy()
    R = A.copy()
    for _ in range(5):
        R = R / np.linalg.norm(R, axis=1, keepdims=True)
        R = R - R.mean(0, keepdims=True)
    R = R / np.linalg.norm(R, axis=1, keepdims=True)
    torch.testing.assert_close(normalize(torch.from_numpy(A), "iterative"), torch.from_numpy(R),
                               atol=1e-12, rtol=0)


def test_normalize_edge_cases():
    X = torch.randn(6, 4, dtype=torch.float64)
    X[:, 2] = 0
    D = normalize(X, "unitdim")  # an all-zero column stays zero (no 0/0)
    assert torch.equal(D[:, 2], torch.zeros(6, dtype=torch.float64))
    torch.testing.assert_close(D[:, [0, 1, 3]].norm(dim=0), torch.ones(3, dtype=torch.float64))
    for dt in (torch.float16, torch.bfloat16):  # half precision is promoted, never kept
        assert normalize(X.to(dt), "unit").dtype == torch.float32
    for bad in (float("inf"), -float("inf")):  # inf, not only NaN, is refused
        Xi = X.clone()
        Xi[4, 0] = bad
        with pytest.raises(ValueError, match="NaN/inf.*row 4"):
            normalize(Xi)


# ---------------------------------------------------------------------------- procrustes
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_procrustes_recovers_rotation(dtype):
    X, Z, Q, truth = _isometric_pair(200, 16, 0.0, seed=1, dtype=dtype)
    m = procrustes(X, Z, truth[:40])  # 40 pairs in 16 dims determine Q
    assert m.tgt is None and m.src.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(m.src.double(), Q, atol=tol, rtol=0)
    assert m.is_orthogonal()
    # all source words land exactly on their targets
    torch.testing.assert_close(m.map_src(X)[truth[:, 0]], m.map_tgt(Z)[truth[:, 1]], atol=10 * tol, rtol=0)
    # pairs=None: already aligned rows
    torch.testing.assert_close(procrustes(X[truth[:40, 0]], Z[truth[:40, 1]]).src, m.src)


def test_orthogonal_procrustes_rectangular():
    g = torch.Generator().manual_seed(2)
    A = torch.linalg.qr(torch.randn(30, 6, generator=g, dtype=torch.float64))[0]  # A^T A = I
    Q = _rotation(6, g)[:, :4]  # 6 → 4 dims, orthonormal columns
    W = orthogonal_procrustes(A, A @ Q)
    torch.testing.assert_close(W, Q, atol=1e-10, rtol=0)


def test_vecmap_steps_on_an_isometry():
    # with Z an exact rotation of X, whitening + re-weighting + de-whitening must map both
    # spaces onto the same points (Artetxe et al., 2018 AAAI, every step is symmetric)
    X, Z, _, truth = _isometric_pair(300, 12, 0.0, seed=3, dtype=torch.float64)
    m = procrustes(X, Z, truth, **VECMAP_SUPERVISED)
    assert m.tgt is not None
    torch.testing.assert_close(m.map_src(X)[truth[:, 0]], m.map_tgt(Z)[truth[:, 1]], atol=1e-8, rtol=0)
    m5 = procrustes(X, Z, truth, whiten=True, dim=5)
    assert m5.dim == 5
    torch.testing.assert_close(m5.map_src(X)[truth[:, 0]], m5.map_tgt(Z)[truth[:, 1]], atol=1e-8, rtol=0)
    # on noisy data the whitened map differs from the orthogonal one
    Xn, Zn, _, tn = _isometric_pair(300, 12, 0.3, seed=3, dtype=torch.float64)
    assert not torch.allclose(procrustes(Xn, Zn, tn, whiten=True).src, procrustes(Xn, Zn, tn).src, atol=1e-3)


def test_linear_map_state_roundtrip():
    m = LinearMap(torch.randn(4, 3), torch.randn(5, 3))
    m2 = LinearMap.from_state_dict(m.state_dict())
    torch.testing.assert_close(m2.src, m.src)
    torch.testing.assert_close(m2.tgt, m.tgt)
    assert LinearMap.from_state_dict(LinearMap(torch.eye(3)).state_dict()).tgt is None


def test_procrustes_bad_inputs():
    X, Z = torch.randn(10, 4), torch.randn(12, 4)
    with pytest.raises(IndexError, match="target index 12 out of range"):
        procrustes(X, Z, torch.tensor([[0, 1], [2, 12]]))
    with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
        procrustes(X, Z, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="empty"):
        procrustes(X, Z, torch.zeros(0, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        procrustes(X, Z, torch.tensor([[0.0, 1.0]]))
    for pairs in ([[0.7, 1.9]], [["1", "2"]], np.array([[0.0, 1.0]])):  # never truncated or parsed
        with pytest.raises(TypeError, match="integer row indices"):
            procrustes(X, Z, pairs)
    with pytest.raises(ValueError, match="same rows"):
        procrustes(X, Z)
    with pytest.raises(ValueError, match="needs whiten=True"):
        procrustes(X, Z, torch.tensor([[0, 1]]), src_dewhiten="src")
    with pytest.raises(ValueError, match="src_dewhiten must be"):
        procrustes(X, Z, torch.tensor([[0, 1]]), whiten=True, src_dewhiten="both")
    with pytest.raises(ValueError, match="map_src: X has 5 columns"):
        LinearMap(torch.eye(4)).map_src(torch.randn(2, 5))
    with pytest.warns(UserWarning, match="singular"):
        procrustes(X, Z, torch.tensor([[0, 1], [1, 2]]), whiten=True)


def _dense_vecmap(Xd, Zd, whiten=False, src_reweight=0.0, tgt_reweight=0.0, src_dewhiten=None,
                  tgt_dewhiten=None, dim=None):
    """Artetxe et al. (2018 AAAI) steps 1-5 in numpy: (A, B) with X ↦ X A, Z ↦ Z B."""
    Xd, Zd = Xd.numpy(), Zd.numpy()

    def power(C, p):
        w, V = np.linalg.eigh(C)
        return (V * w ** p) @ V.T

    Cx, Cz = Xd.T @ Xd, Zd.T @ Zd
    W1 = power(Cx, -0.5) if whiten else np.eye(Xd.shape[1])
    W2 = power(Cz, -0.5) if whiten else np.eye(Zd.shape[1])
    U, S, Vt = np.linalg.svd((Xd @ W1).T @ (Zd @ W2), full_matrices=False)
    V = Vt.T
    A, B = W1 @ U @ np.diag(S ** src_reweight), W2 @ V @ np.diag(S ** tgt_reweight)
    dew = {"src": U.T @ power(Cx, 0.5) @ U, "tgt": V.T @ power(Cz, 0.5) @ V}  # W^-1 = C^(1/2)
    if src_dewhiten:
        A = A @ dew[src_dewhiten]
    if tgt_dewhiten:
        B = B @ dew[tgt_dewhiten]
    if dim is not None:
        A, B = A[:, :dim], B[:, :dim]
    return torch.from_numpy(A), torch.from_numpy(B)


@pytest.mark.parametrize("opts", [
    dict(whiten=True, src_reweight=1.0),  # re-weighting one side only
    dict(whiten=True, src_reweight=0.5, tgt_reweight=0.25, src_dewhiten="tgt", tgt_dewhiten="src"),
    dict(whiten=True, src_reweight=0.5, tgt_reweight=0.5, src_dewhiten="src", tgt_dewhiten="tgt"),
    dict(whiten=True, dim=3),  # the leading (largest singular value) dimensions
    dict(dim=3),  # dim without whitening must not take the plain orthogonal shortcut
    dict(tgt_reweight=0.5),  # nor re-weighting without whitening
])
def test_vecmap_steps_match_dense_reference(opts):
    """Noisy data, d_src = 7 != d_tgt = 5. The SVD's column signs are arbitrary, so the
    sign-invariant products A A^T, A B^T, B B^T are compared (A B^T gives every cross similarity)."""
    g = torch.Generator().manual_seed(19)
    X = normalize(torch.randn(80, 7, generator=g, dtype=torch.float64))
    Z = normalize(X @ torch.randn(7, 5, generator=g, dtype=torch.float64)
                  + 0.5 * torch.randn(80, 5, generator=g, dtype=torch.float64))
    pairs = torch.stack([torch.arange(60), torch.randperm(80, generator=g)[:60]], 1)
    m = procrustes(X, Z, pairs, **opts)
    A, B = _dense_vecmap(X[pairs[:, 0]], Z[pairs[:, 1]], **opts)
    tA, tB = m.src, m.map_tgt(torch.eye(5, dtype=torch.float64))
    for got, ref in ((tA @ tA.T, A @ A.T), (tA @ tB.T, A @ B.T), (tB @ tB.T, B @ B.T)):
        torch.testing.assert_close(got, ref, atol=1e-9, rtol=1e-9)


def test_vecmap_supervised_preset():
    """VECMAP_SUPERVISED is VecMap's --supervised: whiten, re-weight 0.5 / 0.5, de-whiten each side
    with its own whitening (src: src, tgt: tgt)."""
    X, Z, _, truth = _isometric_pair(100, 6, 0.4, seed=20, dtype=torch.float64)
    m = procrustes(X, Z, truth[:70], **VECMAP_SUPERVISED)
    A, B = _dense_vecmap(X[truth[:70, 0]], Z[truth[:70, 1]], whiten=True, src_reweight=0.5,
                         tgt_reweight=0.5, src_dewhiten="src", tgt_dewhiten="tgt")
    torch.testing.assert_close(m.src @ m.tgt.T, A @ B.T, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(m.src @ m.src.T, A @ A.T, atol=1e-9, rtol=1e-9)


def test_procrustes_option_checks():
    g = torch.Generator().manual_seed(22)
    X = torch.randn(30, 5, generator=g, dtype=torch.float64)
    Z = torch.randn(30, 10, generator=g, dtype=torch.float64)
    p = torch.stack([torch.arange(8)] * 2, 1)
    for dim in (0, 6):  # the common space has min(5, 10) = 5 dims
        with pytest.raises(ValueError, match=r"dim must be in \[1, 5\]"):
            procrustes(X, Z, torch.stack([torch.arange(30)] * 2, 1), whiten=True, dim=dim)
    # 8 pairs: X's 5 × 5 covariance is regular, Z's 10 × 10 one is singular: warn
    with pytest.warns(UserWarning, match="8 pairs in 10 dims"):
        m = procrustes(X, Z, p, whiten=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        procrustes(X, Z, torch.stack([torch.arange(12)] * 2, 1), whiten=True)  # 12 >= 10: no warning
    # singular covariances are floored, not inverted: a bounded map (an exact or rounding-level
    # zero eigenvalue would give inf or ~1e8)
    with pytest.warns(UserWarning, match="singular"):
        m = procrustes(X, Z[:, :5], torch.stack([torch.arange(3)] * 2, 1), whiten=True)
    assert torch.isfinite(m.src).all() and torch.isfinite(m.tgt).all()
    assert float(torch.linalg.matrix_norm(m.src, 2)) < 1e4 and float(torch.linalg.matrix_norm(m.tgt, 2)) < 1e4


def test_linear_map_orthogonality_and_shapes():
    g = torch.Generator().manual_seed(23)
    Q = _rotation(6, g)
    assert LinearMap(Q[:, :4]).is_orthogonal()  # 6 → 4: orthonormal columns
    assert LinearMap(Q[:4, :]).is_orthogonal()  # 4 → 6: orthonormal rows
    assert not LinearMap(2 * Q).is_orthogonal()
    assert not LinearMap(Q, Q).is_orthogonal()  # a two-sided map is not an orthogonal one
    with pytest.raises(ValueError, match="map_tgt: Z has 6 columns, the common space has 4"):
        LinearMap(Q[:, :4]).map_tgt(torch.randn(3, 6, dtype=torch.float64))
    with pytest.raises(ValueError, match="src maps to 4 dims but tgt to 6"):
        LinearMap(Q[:, :4], Q)



# ---------------------------------------------------------------------------- induction
def _dense_induction(xw, zw, knn, direction="union"):
    S = xw @ zw.T
    rs = S.topk(knn, 1).values.mean(1)
    rt = S.topk(knn, 0).values.mean(0)
    C = 2 * S - rs[:, None] - rt[None, :]
    n, m = S.shape
    f, b = C.argmax(1), C.argmax(0)
    fwd = torch.stack([torch.arange(n), f], 1)
    bwd = torch.stack([b, torch.arange(m)], 1)
    obj = (C.max(1).values.mean() + C.max(0).values.mean()) / 2
    pairs = {"forward": fwd, "backward": bwd, "union": torch.cat([fwd, bwd]),
             "intersection": fwd[b[f] == torch.arange(n)]}[direction]  # mutual nearest neighbours
    return pairs, float(obj)


# every direction (a wrong intersection, e.g. all forward pairs, went unnoticed with union alone)
@pytest.mark.parametrize("direction", ["forward", "backward", "union", "intersection"])
@pytest.mark.parametrize("n,m,cand,knn", [(120, 97, 1, 1), (120, 97, 4, 3), (61, 150, 11, 3), (40, 40, 64, 3)])
def test_induction_is_exact_csls(n, m, cand, knn, direction):
    g = torch.Generator().manual_seed(n + m)
    xw = normalize(torch.randn(n, 8, generator=g, dtype=torch.float64))
    zw = normalize(torch.randn(m, 8, generator=g, dtype=torch.float64))
    ind = induce_dictionary(xw, zw, csls_knn=knn, n_candidates=cand, direction=direction, backend="torch")
    ref, obj = _dense_induction(xw, zw, knn, direction)
    if direction == "intersection":
        assert 0 < len(ref) < min(n, m)  # a proper subset: neither empty nor every forward pair
    assert torch.equal(ind.best_pairs, ref)
    assert torch.equal(ind.pairs, ref)
    assert math.isclose(ind.objective, obj, rel_tol=1e-9)
    if cand == 1:
        assert ind.exact_fallback > 0  # the certificate rejected some rows: the fallback was exercised


def test_excluded_bound_matches_brute_force():
    g = torch.Generator().manual_seed(5)
    a, b = torch.rand(9, generator=g), torch.rand(13, generator=g)
    rr, rc = torch.rand(9, generator=g), torch.rand(13, generator=g)
    brute = (2 * torch.minimum(a[:, None], b[None, :]) - rr[:, None] - rc[None, :]).max(1).values
    torch.testing.assert_close(_best_excluded_bound(a, b, rr, rc), brute)


def test_stochastic_induction_changes_the_dictionary():
    X, Z, _, truth = _isometric_pair(200, 8, 0.2, seed=6, dtype=torch.float64)
    full = induce_dictionary(X, Z, csls_knn=5, keep_prob=1.0, backend="torch")
    drop = induce_dictionary(X, Z, csls_knn=5, keep_prob=0.2, backend="torch",
                             generator=torch.Generator().manual_seed(0))
    assert torch.equal(drop.best_pairs, full.best_pairs)  # the objective's pairs stay exact
    assert drop.objective == full.objective
    assert not torch.equal(drop.pairs, full.pairs)


@pytest.mark.parametrize("keep_prob", [0.2, 0.9])
def test_stochastic_induction_drops_at_the_keep_rate(keep_prob):
    """Every target is a candidate of every source (n_candidates >= m), so a source row's pair
    changes exactly when its best target is dropped and another of its m is kept:
    P = (1 - p)(1 - (1 - p)^(m - 1)). Guards an inverted keep mask (keeping 1 - p)."""
    n, m = 2000, 40
    g = torch.Generator().manual_seed(21)
    xw = normalize(torch.randn(n, 6, generator=g, dtype=torch.float64))
    zw = normalize(torch.randn(m, 6, generator=g, dtype=torch.float64))
    ind = induce_dictionary(xw, zw, csls_knn=3, direction="forward", keep_prob=keep_prob,
                            n_candidates=m, backend="torch", generator=torch.Generator().manual_seed(3))
    ref, _ = _dense_induction(xw, zw, 3, "forward")
    assert torch.equal(ind.best_pairs, ref)
    changed = float((ind.pairs[:, 1] != ref[:, 1]).double().mean())
    q = 1 - keep_prob
    expected = q * (1 - q ** (m - 1))
    tol = 5 * math.sqrt(expected * (1 - expected) / n)  # 5 binomial standard deviations
    assert abs(changed - expected) < tol, (changed, expected, tol)


# ---------------------------------------------------------------------------- self-learning
def test_self_learning_recovers_permutation_from_few_seeds():
    X, Z, _, truth = _isometric_pair(400, 10, 0.02, seed=7)
    seed = truth[:6]  # 6 pairs in 10 dims: Procrustes alone is underdetermined
    p0 = procrustes(X, Z, seed)
    acc0 = float((p0.map_src(X) @ Z.T).argmax(1).eq(truth[:, 1]).float().mean())
    res = self_learning(X, Z, seed, csls_knn=5, progress=False, backend="torch", max_iter=30)
    fwd = res.dictionary[: X.shape[0]]
    assert torch.equal(fwd[:, 0], torch.arange(X.shape[0]))
    acc = float(fwd[:, 1].eq(truth[:, 1]).float().mean())
    assert acc0 < 0.5 and acc == 1.0, (acc0, acc)
    assert res.converged and res.history[-1]["keep_prob"] == 1.0
    assert res.objective == max(h["objective"] for h in res.history)


def test_self_learning_unsupervised_recovers_permutation():
    X, Z, _, truth = _isometric_pair(300, 10, 0.0, seed=8)
    seed = unsupervised_seed(X, Z, vocab=300, csls_knn=5)
    assert seed.shape == (600, 2)
    res = self_learning(X, Z, "unsupervised", csls_knn=5, progress=False, backend="torch",
                        unsupervised_vocab=300, max_iter=40)
    fwd = res.dictionary[:300]
    assert float(fwd[:, 1].eq(truth[:, 1]).float().mean()) == 1.0
    assert res.history[0]["keep_prob"] == 0.1



def test_self_learning_stochastic_phase_on_frequent_words():
    """keep_prob < 1 searches among the first ``stochastic_cutoff`` words, then the whole cutoff."""
    g = torch.Generator().manual_seed(12)
    X = normalize(torch.randn(300, 10, generator=g, dtype=torch.float64))
    # "frequency ranks" of translations agree up to a jitter, as in real vocabularies
    order = torch.argsort(torch.arange(300) + 10 * torch.randn(300, generator=g))
    Z = normalize((X @ _rotation(10, g))[order] + 0.01 * torch.randn(300, 10, generator=g,
                                                                      dtype=torch.float64), "unit")
    truth = torch.stack([order, torch.arange(300)], 1)[torch.argsort(order)]
    res = self_learning(X, Z, "unsupervised", csls_knn=5, progress=False, backend="torch",
                        unsupervised_vocab=150, stochastic_cutoff=100, vocab_cutoff=300,
                        stochastic_interval=2, max_iter=60, direction="union")
    cuts = [(h["keep_prob"] < 1, h["cutoff"]) for h in res.history]
    assert {c for s, c in cuts if s} == {100} and {c for s, c in cuts if not s} == {300}
    assert res.converged and res.history[-1]["keep_prob"] == 1.0
    final = [h["objective"] for h in res.history if h["cutoff"] == 300]
    assert res.objective == max(final)  # selected within the full-cutoff phase only
    fwd = res.dictionary[:300]
    assert torch.equal(fwd[:, 0], torch.arange(300))
    assert float(fwd[:, 1].eq(truth[:, 1]).float().mean()) == 1.0
    with pytest.raises(ValueError, match="stochastic_cutoff"):
        self_learning(X, Z, "unsupervised", stochastic_cutoff=0, progress=False)
    with pytest.raises(ValueError, match="patience"):
        self_learning(X, Z, "unsupervised", patience=0, progress=False)

def test_self_learning_seeds_from_words():
    X, Z, _, truth = _isometric_pair(50, 4, 0.0, seed=9)
    src = [f"w{i}" for i in range(50)]
    tgt = [f"v{i}" for i in range(50)]
    for i in range(5):  # five true pairs spelled the same
        s, t = truth[i].tolist()
        tgt[t] = src[s]
    res = self_learning(X, Z, "identical", src_words=src, tgt_words=tgt, progress=False,
                        backend="torch", csls_knn=3, max_iter=5)
    assert torch.equal(res.seed, truth[:5])
    with pytest.raises(ValueError, match="share no identical numerals"):
        self_learning(X, Z, "numerals", src_words=src, tgt_words=tgt, progress=False)


def _recording(monkeypatch, name):
    """Replace ``sl_module.<name>`` by a wrapper that records each call's (args, kwargs)."""
    calls, fn = [], getattr(sl_module, name)

    def wrapper(*args, **kwargs):
        calls.append((args, kwargs))
        return fn(*args, **kwargs)

    monkeypatch.setattr(sl_module, name, wrapper)
    return calls


def _pair_set(pairs):
    return {tuple(p) for p in torch.as_tensor(pairs).tolist()}


def test_self_learning_keeps_given_seed_pairs(monkeypatch):
    """keep_seed (default for pairs): the seed is added to every induced dictionary and to the
    final one, even its wrong pairs; keep_seed=False lets the induction drop them."""
    X, Z, _, truth = _isometric_pair(120, 6, 0.0, seed=13, dtype=torch.float64)
    wrong = torch.tensor([[truth[0, 0], truth[1, 1]], [truth[2, 0], truth[3, 1]]])
    seed = torch.cat([truth[:30], wrong])
    fits = _recording(monkeypatch, "procrustes")
    res = self_learning(X, Z, seed, csls_knn=3, direction="forward", progress=False,
                        backend="torch", max_iter=4)
    assert len(fits) == res.n_iter + 1 >= 3  # one fit per iteration, then the final one
    # the loop's fits after the first: induced (n forward pairs) + seed
    for args, _ in fits[1:-1]:
        assert len(args[2]) == 120 + len(seed) and _pair_set(seed) <= _pair_set(args[2])
    assert res.dictionary.shape == (120 + len(seed), 2)  # the final dictionary too
    assert _pair_set(seed) <= _pair_set(res.dictionary)
    assert _pair_set(fits[-1][0][2]) == _pair_set(res.dictionary)

    fits.clear()
    res = self_learning(X, Z, seed, csls_knn=3, direction="forward", progress=False,
                        backend="torch", max_iter=4, keep_seed=False)
    assert res.dictionary.shape == (120, 2)
    assert not _pair_set(wrong) & _pair_set(res.dictionary)  # the wrong seed pairs are gone
    assert all(len(args[2]) == 120 for args, _ in fits[1:])
    assert torch.equal(res.dictionary, truth)  # the 30 true pairs sufficed


def test_self_learning_does_not_keep_heuristic_seeds():
    """"identical" / "unsupervised" seeds are not kept by default: their wrong pairs would stay."""
    X, Z, _, truth = _isometric_pair(60, 4, 0.0, seed=9, dtype=torch.float64)
    src = [f"w{i}" for i in range(60)]
    tgt = [f"v{i}" for i in range(60)]
    for i in range(8):  # eight true pairs spelled the same, and one wrong one
        tgt[truth[i, 1]] = src[truth[i, 0]]
    tgt[truth[8, 1]] = src[truth[9, 0]]
    res = self_learning(X, Z, "identical", src_words=src, tgt_words=tgt, direction="forward",
                        progress=False, backend="torch", csls_knn=3, max_iter=4)
    assert (int(truth[9, 0]), int(truth[8, 1])) in _pair_set(res.seed)
    assert res.dictionary.shape == (60, 2)  # forward pairs only, no seed appended
    assert torch.equal(res.dictionary, truth)
    res = self_learning(X, Z, "unsupervised", unsupervised_vocab=60, progress=False,
                        backend="torch", csls_knn=3, max_iter=2)
    assert len(res.seed) == 120 and res.dictionary.shape == (120, 2)  # union of 60 + 60


def test_self_learning_stops_patience_iterations_after_the_last_gain():
    """Exact isometry, identity correspondence, csls_knn = n_candidates = 1: every induction
    (stochastic or not, at any cutoff) is the true dictionary, every objective the same (0).
    So: the first iteration gains (from nothing), the loop stalls ``stochastic_interval``
    iterations later, raises keep_prob to 1 with a larger cutoff, whose first objective is a gain
    again (objectives of different cutoffs are not compared), and ends ``patience`` after it."""
    g = torch.Generator().manual_seed(14)
    X = normalize(torch.randn(300, 8, generator=g, dtype=torch.float64))
    Z = X @ _rotation(8, g)
    truth = torch.stack([torch.arange(300)] * 2, 1)
    kw = dict(csls_knn=1, n_candidates=1, progress=False, backend="torch", max_iter=30)
    for patience in (2, 3):
        res = self_learning(X, Z, truth[:40], patience=patience, **kw)
        assert res.converged and res.n_iter == 1 + patience  # guards `>` for `>=`
        assert all(abs(h["objective"]) < 1e-9 for h in res.history)
    res = self_learning(X, Z, truth[:40], keep_prob=0.5, stochastic_cutoff=100, vocab_cutoff=300,
                        stochastic_interval=2, patience=2, **kw)
    # guards keeping best_obj across the cutoff change (would end one iteration early)
    assert [(h["keep_prob"], h["cutoff"]) for h in res.history] == [(0.5, 100)] * 3 + [(1.0, 300)] * 3
    assert res.converged and torch.equal(res.dictionary[:300], truth)


def test_self_learning_default_direction(monkeypatch):
    """Default direction: mutual nearest neighbours ("intersection") at keep_prob 1, "union" for
    a stochastic start (VecMap)."""
    X, Z, _, truth = _isometric_pair(80, 6, 0.0, seed=15, dtype=torch.float64)
    calls = _recording(monkeypatch, "induce_dictionary")
    self_learning(X, Z, truth[:20], progress=False, backend="torch", csls_knn=3, max_iter=3)
    assert calls and {kw["direction"] for _, kw in calls} == {"intersection"}
    calls.clear()
    self_learning(X, Z, truth[:20], keep_prob=0.5, progress=False, backend="torch", csls_knn=3, max_iter=2)
    assert calls[0][1]["direction"] == "union"
    calls.clear()
    self_learning(X, Z, truth[:20], direction="forward", progress=False, backend="torch", csls_knn=3, max_iter=2)
    assert {kw["direction"] for _, kw in calls} == {"forward"}


def test_self_learning_final_options():
    """final_options: the last fit uses them (VecMap's whitening etc.), on the selected dictionary;
    None keeps the orthogonal map of that dictionary."""
    X, Z, _, truth = _isometric_pair(150, 6, 0.3, seed=16, dtype=torch.float64)
    kw = dict(csls_knn=3, progress=False, backend="torch", max_iter=5)
    plain = self_learning(X, Z, truth[:60], **kw)
    assert plain.mapping.tgt is None
    torch.testing.assert_close(plain.mapping.src, procrustes(X, Z, plain.dictionary).src)
    res = self_learning(X, Z, truth[:60], final_options=VECMAP_SUPERVISED, **kw)
    assert torch.equal(res.dictionary, plain.dictionary)
    ref = procrustes(X, Z, res.dictionary, **VECMAP_SUPERVISED)
    assert res.mapping.tgt is not None
    torch.testing.assert_close(res.mapping.src, ref.src)
    torch.testing.assert_close(res.mapping.tgt, ref.tgt)
    assert not torch.allclose(res.mapping.map_src(X), plain.mapping.map_src(X), atol=1e-3)


def test_self_learning_bad_inputs():
    X, Z = torch.randn(10, 4), torch.randn(12, 4)
    with pytest.raises(ValueError, match="seed is required"):
        self_learning(X, Z, None)
    with pytest.raises(ValueError, match="unknown seed 'random'"):
        self_learning(X, Z, "random")
    with pytest.raises(ValueError, match="needs src_words and tgt_words"):
        self_learning(X, Z, "identical")
    with pytest.raises(IndexError, match="seed: source index 10"):
        self_learning(X, Z, torch.tensor([[10, 0]]))
    with pytest.raises(ValueError, match="X has 4 dims, Z has 5"):
        self_learning(X, torch.randn(12, 5), torch.tensor([[0, 0]]))
    with pytest.raises(ValueError, match="keep_prob"):
        self_learning(X, Z, torch.tensor([[0, 0]]), keep_prob=0.0)
    with pytest.raises(ValueError, match="direction"):
        self_learning(X, Z, torch.tensor([[0, 0]]), direction="both")
    with pytest.raises(ValueError, match="max_iter must be >= 1"):
        self_learning(X, Z, torch.tensor([[0, 0]]), max_iter=0)
    with pytest.raises(ValueError, match="X is torch.float32, Z is torch.float64"):
        self_learning(X, Z.double(), torch.tensor([[0, 0]]))
    with pytest.raises(ValueError, match="direction must be one of"):
        unsupervised_seed(X, Z, direction="bogus")


def test_unsupervised_seed_directions():
    X, Z, _, truth = _isometric_pair(120, 8, 0.3, seed=4)
    fwd, bwd = (unsupervised_seed(X, Z, vocab=120, csls_knn=5, direction=d) for d in ("forward", "backward"))
    mutual = unsupervised_seed(X, Z, vocab=120, csls_knn=5, direction="intersection")
    both = {tuple(p) for p in fwd.tolist()} & {tuple(p) for p in bwd.tolist()}
    assert {tuple(p) for p in mutual.tolist()} == both and 0 < len(mutual) < len(fwd)
    assert len(unsupervised_seed(X, Z, vocab=120, csls_knn=5)) == 2 * len(fwd)  # union


def _dense_unsupervised_seed(X, Z, knn):
    """Artetxe et al. (2018 ACL) section 3.2, densely: sqrt(M M^T) by eigendecomposition, rows
    sorted, unit/center/unit, then CSLS with both r-terms; union of both directions' argmax."""
    def profile(M):
        ev, V = torch.linalg.eigh(M.double() @ M.double().T)
        P = (V * ev.clamp_min(0).sqrt()) @ V.T
        P = P.sort(1, descending=True).values  # the same order on both sides: any order works
        P = P / P.norm(dim=1, keepdim=True)
        P = P - P.mean(0)
        return P / P.norm(dim=1, keepdim=True)

    S = profile(X) @ profile(Z).T
    C = S - S.topk(knn, 1).values.mean(1)[:, None] / 2 - S.topk(knn, 0).values.mean(0)[None, :] / 2
    n = S.shape[0]
    return torch.cat([torch.stack([torch.arange(n), C.argmax(1)], 1),
                      torch.stack([C.argmax(0), torch.arange(n)], 1)])


def test_unsupervised_seed_matches_dense_reference():
    # guards the CSLS terms (r_f and r_b) and the square root of the similarities
    X, Z, _, _ = _isometric_pair(70, 9, 0.5, seed=17, dtype=torch.float64)
    X, Z = torch.cat([X, torch.randn(10, 9, dtype=torch.float64)]), torch.cat([Z, torch.randn(5, 9, dtype=torch.float64)])
    got = unsupervised_seed(X, Z, vocab=70, csls_knn=4)
    ref = _dense_unsupervised_seed(X[:70], Z[:70], 4)
    assert torch.equal(got, ref)


def test_self_learning_selects_in_the_full_target_cutoff_too():
    """Fewer source words than stochastic_cutoff: only the target cutoff grows, and the map is
    still selected among the iterations at the full cutoff."""
    g = torch.Generator().manual_seed(5)
    X = normalize(torch.randn(60, 8, generator=g, dtype=torch.float64))
    Z = normalize(torch.cat([X @ _rotation(8, g), torch.randn(240, 8, generator=g, dtype=torch.float64)]))
    res = self_learning(X, Z, "unsupervised", csls_knn=5, progress=False, backend="torch",
                        unsupervised_vocab=60, stochastic_cutoff=100, vocab_cutoff=300,
                        stochastic_interval=2, max_iter=40)
    final = [h["objective"] for h in res.history if h["keep_prob"] == 1.0]
    assert final and res.objective == max(final)


# ---------------------------------------------------------------------------- RCSLS
def _dense_rcsls(Xd, Yd, Zs, Zt, W, k):
    XW = Xd @ W
    f_t = (XW @ Zt.T).topk(k, 1).values.mean(1)
    f_s = (Yd @ (Zs @ W).T).topk(k, 1).values.mean(1)
    return (2 * (XW * Yd).sum(1) - f_t - f_s).mean()


@pytest.mark.parametrize("backend", ["torch", "pyzsl"])
def test_rcsls_objective_and_gradient_match_autograd(backend):
    X, Z, _, truth = _isometric_pair(60, 5, 0.3, seed=10, dtype=torch.float64)
    W = torch.randn(5, 5, dtype=torch.float64, requires_grad=True)
    # words with several translations: repeated sources and targets (searched once inside)
    pairs = torch.cat([truth[:20], truth[[0, 0, 3]], torch.stack([truth[[1, 2], 0], truth[[2, 1], 1]], 1)])
    Xd, Yd = X[pairs[:, 0]], Z[pairs[:, 1]]
    f_ref = _dense_rcsls(Xd, Yd, X, Z, W, 4)
    f_ref.backward()
    f, g = rcsls_objective(Xd, Yd, X, Z, W.detach(), 4, backend=backend, grad=True)
    assert math.isclose(f, float(f_ref.detach()), rel_tol=1e-10)
    torch.testing.assert_close(g, W.grad, atol=1e-10, rtol=0)


@pytest.mark.parametrize("constraint", [None, "spectral", "orthogonal"])
def test_rcsls_does_not_decrease_the_criterion(constraint):
    X, Z, _, truth = _isometric_pair(300, 12, 0.4, seed=11)
    res = rcsls(X, Z, truth[:120], knn=5, n_iter=15, lr=1.0, constraint=constraint,
                progress=False, backend="torch")
    objs = [h["objective"] for h in res.history]
    assert all(b >= a for a, b in zip(objs, objs[1:]))
    assert res.objective == objs[-1]
    p0 = procrustes(X, Z, truth[:120]).src
    Xd, Yd = X[truth[:120, 0]], Z[truth[:120, 1]]
    assert math.isclose(objs[0], float(_dense_rcsls(Xd, Yd, X, Z, p0, 5)), rel_tol=1e-5)
    if constraint == "orthogonal":
        assert res.mapping.is_orthogonal()
    else:
        assert res.objective > objs[0] + 1e-3  # it does train
    if constraint == "spectral":
        assert torch.linalg.svdvals(res.mapping.src.double()).max() <= 1 + 1e-5


def test_rcsls_bad_inputs():
    X, Z = torch.randn(10, 4), torch.randn(12, 4)
    p = torch.tensor([[0, 1], [2, 3]])
    with pytest.raises(ValueError, match="constraint"):
        rcsls(X, Z, p, constraint="unitary", progress=False)
    with pytest.raises(ValueError, match="knn must be a positive int"):
        rcsls(X, Z, p, knn=0, progress=False)
    with pytest.raises(ValueError, match="init map has shape"):
        rcsls(X, Z, p, init=torch.eye(3), progress=False)
    with pytest.raises(ValueError, match="LinearMap.tgt=None"):
        rcsls(X, Z, p, init=LinearMap(torch.eye(4), torch.eye(4)), progress=False)
    with pytest.raises(IndexError, match="source index 10"):
        rcsls(X, Z, torch.tensor([[10, 1]]), progress=False)


def _dense_rcsls_training(Xd, Yd, Zs, Zt, W, k, n_iter, lr, min_lr, constraint, reg):
    """fastText's align.py loop, densely: autograd gradient, ascent step, projection by numpy SVD;
    a step that lowers the criterion is undone and halves lr. Returns (W, [(accepted, lr)])."""
    def crit(W):
        return float(_dense_rcsls(Xd, Yd, Zs, Zt, W, k))

    def project(W):
        if constraint is None:
            return W
        U, S, Vt = np.linalg.svd(W.numpy())
        S = np.ones_like(S) if constraint == "orthogonal" else np.clip(S, 0, 1)
        return torch.from_numpy((U * S) @ Vt)

    steps = []
    for _ in range(n_iter):
        if lr < min_lr:
            break
        Wg = W.clone().requires_grad_(True)
        _dense_rcsls(Xd, Yd, Zs, Zt, Wg, k).backward()
        W_new = project(W * (1 - lr * reg) + lr * Wg.grad)
        accepted = crit(W_new) >= crit(W)
        if accepted:
            W = W_new
        else:
            lr /= 2
        steps.append((accepted, lr))
    return W, steps


@pytest.mark.parametrize("constraint,lr,min_lr,reg", [
    (None, 100.0, 1e-4, 0.0),  # several steps undone: lr halved each time
    ("spectral", 100.0, 10.0, 0.0),  # stops once lr < min_lr
    ("orthogonal", 10.0, 1e-4, 0.0),
    (None, 2.0, 1e-4, 0.05),  # weight decay
])
def test_rcsls_training_matches_dense_reference(constraint, lr, min_lr, reg):
    X, Z, _, truth = _isometric_pair(150, 8, 0.4, seed=24, dtype=torch.float64)
    p = truth[:60]
    res = rcsls(X, Z, p, knn=4, n_iter=8, lr=lr, min_lr=min_lr, constraint=constraint, reg=reg,
                progress=False, backend="torch")
    Xd, Yd = X[p[:, 0]], Z[p[:, 1]]
    U, _, Vt = np.linalg.svd(Xd.numpy().T @ Yd.numpy())
    W, steps = _dense_rcsls_training(Xd, Yd, X, Z, torch.from_numpy(U @ Vt), 4, 8, lr, min_lr,
                                     constraint, reg)
    assert [(h["accepted"], h["lr"]) for h in res.history[1:]] == steps
    assert [h["iter"] for h in res.history] == list(range(len(steps) + 1))
    if constraint is None and reg == 0:
        assert sum(not a for a, _ in steps) >= 2  # the halving was exercised
    if min_lr > 1e-4:
        assert len(steps) < 8  # the early stop was exercised
    else:
        assert len(steps) == 8  # n_iter steps, no more, no fewer
    torch.testing.assert_close(res.mapping.src, W, atol=1e-9, rtol=0)
    objs = [h["objective"] for h in res.history]
    assert math.isclose(objs[-1], float(_dense_rcsls(Xd, Yd, X, Z, W, 4)), rel_tol=1e-9)
    assert res.objective == objs[-1]
    assert all(b >= a for a, b in zip(objs, objs[1:]))  # an undone step keeps the old criterion


def test_rcsls_accepts_a_step_that_keeps_the_criterion():
    """Exact isometry, identity pairs, knn=1: every word's nearest neighbour is its translation,
    so the gradient is exactly 0 and each step leaves W and the criterion unchanged. Only a step
    that *lowers* the criterion is undone: lr must stay (guards `>` for `>=`)."""
    g = torch.Generator().manual_seed(25)
    X = normalize(torch.randn(40, 6, generator=g, dtype=torch.float64))
    Z = X @ _rotation(6, g)
    res = rcsls(X, Z, torch.stack([torch.arange(40)] * 2, 1), knn=1, n_iter=3, constraint=None,
                progress=False, backend="torch")
    assert [(h["accepted"], h["lr"]) for h in res.history] == [(True, 1.0)] * 4


def test_rcsls_init_and_vocabularies():
    """init (a LinearMap or a tensor) is the starting map; max_neg cuts both k-NN vocabularies;
    n_iter=0 returns the start and its criterion."""
    X, Z, _, truth = _isometric_pair(120, 6, 0.3, seed=26, dtype=torch.float64)
    p = truth[:50]
    Xd, Yd = X[p[:, 0]], Z[p[:, 1]]
    W0 = _rotation(6, torch.Generator().manual_seed(27))
    for init in (LinearMap(W0), W0):
        res = rcsls(X, Z, p, init=init, knn=5, n_iter=0, max_neg=30, progress=False, backend="torch")
        assert torch.equal(res.mapping.src, W0)
        ref = float(_dense_rcsls(Xd, Yd, X[:30], Z[:30], W0, 5))
        assert math.isclose(res.objective, ref, rel_tol=1e-10)
        assert not math.isclose(ref, float(_dense_rcsls(Xd, Yd, X, Z, W0, 5)), rel_tol=1e-3)
    # fewer source words than knn: each k-NN term uses min(knn, its own vocabulary)
    Zs = X[:4]
    f = rcsls_objective(Xd, Yd, Zs, Z, W0, 10, backend="torch")
    f_t = (Xd @ W0 @ Z.T).topk(10, 1).values.mean(1)
    f_s = (Yd @ (Zs @ W0).T).mean(1)  # all 4
    assert math.isclose(f, float((2 * ((Xd @ W0) * Yd).sum(1) - f_t - f_s).mean()), rel_tol=1e-10)


def test_rcsls_minibatch_reports_the_full_criterion():
    """batch_size < pairs: steps are judged per batch, but the result's criterion is that of the
    final map on all training pairs."""
    X, Z, _, truth = _isometric_pair(150, 8, 0.4, seed=28, dtype=torch.float64)
    p = truth[:90]
    res = rcsls(X, Z, p, knn=4, n_iter=5, batch_size=20, progress=False, backend="torch")
    ref = float(_dense_rcsls(X[p[:, 0]], Z[p[:, 1]], X, Z, res.mapping.src, 4))
    assert math.isclose(res.objective, ref, rel_tol=1e-9)
    assert not math.isclose(res.history[-1]["objective"], ref, rel_tol=1e-3)  # a batch's is not


def test_rcsls_default_constraint_is_spectral():
    """fastText's --model spectral: the default keeps every singular value <= 1."""
    X, Z, _, truth = _isometric_pair(150, 8, 0.4, seed=31, dtype=torch.float64)
    kw = dict(knn=4, n_iter=6, lr=5.0, progress=False, backend="torch")
    free = rcsls(X, Z, truth[:60], constraint=None, **kw)
    assert torch.linalg.svdvals(free.mapping.src).max() > 1.05  # the constraint has work to do
    dflt = rcsls(X, Z, truth[:60], **kw)
    assert torch.linalg.svdvals(dflt.mapping.src).max() <= 1 + 1e-9


# ---------------------------------------------------------------------------- shared data
def test_procrustes_on_shared_slice(shared_data):
    """A few-second check on the real fr→fi data: first 3000 words of each side."""
    from pyzsl.bli.dictionary import load_dictionary
    from pyzsl.bli.io import load_embeddings
    from pyzsl.bli import retrieval

    d = shared_data / "bli"
    fr = load_embeddings(d / "fr.vec.gz", max_vocab=3000)
    fi = load_embeddings(d / "fi.vec.gz", max_vocab=3000)
    X = normalize(torch.from_numpy(fr.vectors))
    Z = normalize(torch.from_numpy(fi.vectors))
    train = torch.as_tensor(load_dictionary(d / "fr-fi.train.txt", fr, fi).indices(fr, fi))
    test = load_dictionary(d / "fr-fi.test.txt", fr, fi)
    m = procrustes(X, Z, train)
    gold = test.translations()
    words = list(gold)
    _, idx = retrieval.csls(m.map_src(X)[[fr.index[w] for w in words]], Z, 1, src=m.map_src(X))
    hits = sum(fi.words[j] in gold[w] for w, j in zip(words, idx[:, 0].tolist()))
    p1 = hits / len(words)
    # a random map gets ~0; the full-size bar is 0.4847
    assert len(words) > 100 and p1 > 0.35, (len(words), p1)
