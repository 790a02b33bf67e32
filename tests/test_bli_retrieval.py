"""pyzsl.bli.retrieval (NN, CSLS, inverted softmax on every backend) and pyzsl.bli.evaluate."""
import numpy as np
import pytest
import torch

from pyzsl.bli import retrieval as R
from pyzsl.bli.dictionary import Dictionary
from pyzsl.bli.evaluate import evaluate, evaluate_all
from pyzsl.bli.io import Embeddings
from pyzsl.ops import _reference

try:
    import faiss  # noqa: F401
    HAVE_FAISS = True
except ImportError:
    HAVE_FAISS = False

BACKENDS = ["pyzsl", "torch", pytest.param("faiss", marks=pytest.mark.skipif(
    not HAVE_FAISS, reason="faiss not installed (pip install pyzsl[faiss])"))]


def check_knn_with_draws(v, i, v_ref, i_ref, atol):
    """faiss's contrib.evaluation.check_ref_knn_with_draws: equal values; where the ids differ,
    the sets of ids at each tied value are equal (except at the k-th boundary, where any
    subset of the tied ids is allowed)."""
    v, i, v_ref, i_ref = (x.cpu().numpy() for x in (v, i, v_ref, i_ref))
    np.testing.assert_allclose(v, v_ref, atol=atol, rtol=0)
    for row in range(v.shape[0]):
        if (i[row] == i_ref[row]).all():
            continue
        vals = v_ref[row]
        kth = vals[-1]
        for val in np.unique(vals):
            sel = np.abs(vals - val) <= atol
            a, b = set(i[row][sel]), set(i_ref[row][sel])
            if abs(val - kth) <= atol:  # boundary ties may pick other ids of equal value
                assert len(a) == len(b)
            else:
                assert a == b, f"row {row}: ids {a} vs {b} at value {val}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("B,C,d,k", [(1, 1, 3, 1), (7, 13, 5, 4), (37, 101, 16, 10), (64, 257, 8, 7)])
def test_topk_matches_reference(backend, B, C, d, k, device):
    g = torch.Generator().manual_seed(B * C)
    Q = torch.randn(B, d, generator=g).to(device)
    T = torch.randn(C, d, generator=g).to(device)
    bias = torch.randn(C, generator=g).to(device)
    for b in (None, bias):
        v, i = R.topk(Q, T, k, b, backend=backend)
        v_ref, i_ref = _reference.bilinear_topk(Q, None, T, k, class_bias=b)
        assert v.shape == (B, k) and i.dtype == torch.int64
        check_knn_with_draws(v, i, v_ref, i_ref, atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("B,C", [(1, 1), (13, 7), (37, 101)])
def test_topk_both_ways_matches_reference(backend, B, C, device):
    g = torch.Generator().manual_seed(B + C)
    Q = torch.randn(B, 5, generator=g).to(device)
    T = torch.randn(C, 5, generator=g).to(device)
    (v, i), (vc, ic) = R.topk_both_ways(Q, T, 4, backend=backend)
    check_knn_with_draws(v, i, *_reference.bilinear_topk(Q, None, T, min(4, C)), atol=1e-4)
    check_knn_with_draws(vc, ic, *_reference.bilinear_topk(T, None, Q, min(4, B)), atol=1e-4)
    with pytest.raises(ValueError, match="at least one row"):
        R.topk_both_ways(Q[:0], T, 4, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_topk_ties(backend, device):
    # integer vectors: many exactly equal scores
    g = torch.Generator().manual_seed(0)
    Q = torch.randint(-1, 2, (29, 4), generator=g).float().to(device)
    T = torch.randint(-1, 2, (53, 4), generator=g).float().to(device)
    v, i = R.topk(Q, T, 6, backend=backend)
    v_ref, i_ref = _reference.bilinear_topk(Q, None, T, 6)
    check_knn_with_draws(v, i, v_ref, i_ref, atol=0)
    # inside the returned list, equal values are ordered by increasing index
    vv, ii = v.cpu().numpy(), i.cpu().numpy()
    for r in range(vv.shape[0]):
        for a in range(5):
            if vv[r, a] == vv[r, a + 1]:
                assert ii[r, a] < ii[r, a + 1]
    if backend == "pyzsl":  # the kernel follows the reference's rule exactly
        assert torch.equal(i, i_ref)


def test_topk_float64_exact(device):
    if device.type == "cuda":
        pytest.skip("the kernel takes float32 on CUDA")
    g = torch.Generator().manual_seed(1)
    Q, T = torch.randn(19, 6, generator=g, dtype=torch.float64), torch.randn(31, 6, generator=g, dtype=torch.float64)
    v, i = R.topk(Q, T, 5, backend="pyzsl")
    v_ref, i_ref = _reference.bilinear_topk(Q, None, T, 5)
    assert torch.equal(i, i_ref)
    torch.testing.assert_close(v, v_ref, atol=1e-12, rtol=0)


def dense_isf(Q, T, S, beta):
    Q, T, S = R.unit(Q), R.unit(T), R.unit(S)
    lse = torch.logsumexp(beta * (T @ S.T), dim=1)
    return beta * (Q @ T.T) - lse[None, :]


def unit_ref(x):
    """Rows at unit length, zero rows kept at zero (independent of R.unit)."""
    n = x.norm(dim=1, keepdim=True)
    return x / n.clamp_min(1e-300)


def dense_scores(Q, T, method, knn=10, beta=10.0, src=None):
    """The B × C score matrix of NN / CSLS / inverted softmax straight from the papers'
    formulas: cos; 2 cos − r_T − r_Q (r: mean of the knn largest cosines, r_T over ``src``);
    β cos − log Σ_{s ∈ src} exp(β cos(s, t))."""
    Q, T = unit_ref(Q), unit_ref(T)
    S = Q if src is None else unit_ref(src)
    cos = Q @ T.T
    if method == "nn":
        return cos
    if method == "csls":
        r_T = (T @ S.T).topk(min(knn, S.shape[0]), dim=1).values.mean(1)
        r_Q = cos.topk(min(knn, T.shape[0]), dim=1).values.mean(1)
        return 2 * cos - r_T[None, :] - r_Q[:, None]
    assert method == "isf"
    return beta * cos - torch.logsumexp(beta * (T @ S.T), dim=1)[None, :]


def dense_p_at(scores, queries, gold, k):
    """P@k: the share of queries with any of their gold targets among their k best scores."""
    top = scores[queries].topk(k, dim=1).indices.tolist()
    return sum(1 for q, row in zip(queries, top) if gold[q] & set(row)) / len(queries)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("with_src", [False, True])
def test_csls_and_isf_match_dense(backend, with_src, device):
    g = torch.Generator().manual_seed(2)
    dtype = torch.float32 if backend == "faiss" or device.type == "cuda" else torch.float64
    Q = torch.randn(23, 12, generator=g, dtype=dtype).to(device)
    T = torch.randn(41, 12, generator=g, dtype=dtype).to(device)
    S = torch.randn(59, 12, generator=g, dtype=dtype).to(device) if with_src else None
    src = S if with_src else Q
    atol = 1e-4 if dtype == torch.float32 else 1e-10
    dense = R._dense_csls(Q, T, src, knn=5)
    v, i = R.csls(Q, T, k=4, knn=5, src=S, backend=backend)
    v_ref, i_ref = dense.sort(dim=1, descending=True, stable=True)
    check_knn_with_draws(v, i, v_ref[:, :4], i_ref[:, :4], atol=atol)
    dense = dense_isf(Q, T, src, beta=7.0)
    v, i = R.inverted_softmax(Q, T, k=4, beta=7.0, src=S, backend=backend)
    v_ref, i_ref = dense.sort(dim=1, descending=True, stable=True)
    check_knn_with_draws(v, i, v_ref[:, :4], i_ref[:, :4], atol=atol * 10)
    v, i = R.nn(Q, T, k=3, backend=backend)
    v_ref, i_ref = (R.unit(Q) @ R.unit(T).T).sort(dim=1, descending=True, stable=True)
    check_knn_with_draws(v, i, v_ref[:, :3], i_ref[:, :3], atol=atol)


def test_csls_changes_ranking_on_hubs():
    # a real hub: every query carries a shared direction u (a mapping bias) and the target u
    # sits on it, so NN picks it for many queries; CSLS's r_T(u) is large, so CSLS demotes it
    g = torch.Generator().manual_seed(0)
    u = torch.zeros(1, 8, dtype=torch.float64)
    u[0, 0] = 1
    Z = torch.randn(30, 8, generator=g, dtype=torch.float64)
    Q = Z + 0.3 * torch.randn(30, 8, generator=g, dtype=torch.float64) + 3.0 * u
    T = torch.cat([Z, u])  # target 30 is the hub; query j's translation is target j
    _, i_nn = R.nn(Q, T, k=1)
    _, i_cs = R.csls(Q, T, k=1, knn=3)
    correct = torch.arange(30)
    nn_hub, cs_hub = (i_nn[:, 0] == 30).sum().item(), (i_cs[:, 0] == 30).sum().item()
    assert nn_hub >= 10  # the hub is one: NN returns it for a third of the queries or more
    assert cs_hub < nn_hub
    assert (i_cs[:, 0] == correct).sum() > (i_nn[:, 0] == correct).sum()


@pytest.mark.parametrize("chunk_bytes", [64, 1000])
def test_torch_backend_chunks_match_dense(chunk_bytes):
    # chunk_bytes=64: one query (and one target of the normaliser) per chunk; 1000: chunks of
    # 3 queries / 2 targets with a shorter last one. Guards the bias reaching every chunk and
    # each normaliser chunk summing over the whole source space.
    g = torch.Generator().manual_seed(5)
    Q = torch.randn(23, 12, generator=g, dtype=torch.float64)
    T = torch.randn(41, 12, generator=g, dtype=torch.float64)
    S = torch.randn(59, 12, generator=g, dtype=torch.float64)
    bias = torch.randn(41, generator=g, dtype=torch.float64)
    kw = dict(backend="torch", chunk_bytes=chunk_bytes)
    v, i = R.topk(Q, T, 5, bias, **kw)
    v_ref, i_ref = (Q @ T.T + bias).sort(dim=1, descending=True, stable=True)
    check_knn_with_draws(v, i, v_ref[:, :5], i_ref[:, :5], atol=1e-10)
    torch.testing.assert_close(R.log_sum_exp_over(T, S, 3.0, chunk_bytes=chunk_bytes),
                               torch.logsumexp(3.0 * (T @ S.T), dim=1), atol=1e-10, rtol=0)
    for method, fn, extra in (("csls", R.csls, dict(knn=4)), ("isf", R.inverted_softmax, dict(beta=3.0))):
        for src in (None, S):
            v, i = fn(Q, T, 5, src=src, **extra, **kw)
            dense = dense_scores(Q, T, method, src=src, **extra)
            v_ref, i_ref = dense.sort(dim=1, descending=True, stable=True)
            check_knn_with_draws(v, i, v_ref[:, :5], i_ref[:, :5], atol=1e-10)


def test_unit_keeps_zero_rows_and_retrieval_stays_finite():
    # a zero vector (e.g. an all-zero embedding) must not turn into NaN rows
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0]], dtype=torch.float64)
    assert torch.equal(R.unit(x), torch.tensor([[0.6, 0.8], [0.0, 0.0]], dtype=torch.float64))
    g = torch.Generator().manual_seed(6)
    Q = torch.randn(5, 4, generator=g, dtype=torch.float64)
    T = torch.randn(7, 4, generator=g, dtype=torch.float64)
    T[3] = 0  # a zero target: cosine 0 with every query
    for backend in ("pyzsl", "torch"):
        for method, fn in (("nn", R.nn), ("csls", R.csls)):
            v, i = fn(Q, T, 7, backend=backend)
            assert torch.isfinite(v).all(), (method, backend)
            v_ref, i_ref = dense_scores(Q, T, method).sort(dim=1, descending=True, stable=True)
            check_knn_with_draws(v, i, v_ref, i_ref, atol=1e-10)


def test_retrieve_dispatches_to_each_method():
    g = torch.Generator().manual_seed(7)
    Q = torch.randn(20, 6, generator=g, dtype=torch.float64)
    T = torch.randn(25, 6, generator=g, dtype=torch.float64)
    S = torch.randn(30, 6, generator=g, dtype=torch.float64)
    kw = dict(knn=2, beta=4.0, src=S)  # each method drops the arguments it does not take
    expected = {"nn": R.nn(Q, T, 3), "csls": R.csls(Q, T, 3, knn=2, src=S),
                "isf": R.inverted_softmax(Q, T, 3, beta=4.0, src=S)}
    # the three differ here, so a dispatch to the wrong function shows
    for a, b in (("nn", "csls"), ("nn", "isf"), ("csls", "isf")):
        assert not torch.equal(expected[a][1], expected[b][1])
    for method, (v_ref, i_ref) in expected.items():
        v, i = R.retrieve(Q, T, 3, method=method, **kw)
        assert torch.equal(i, i_ref), method
        torch.testing.assert_close(v, v_ref, atol=1e-12, rtol=0)
    v, i = R.retrieve(Q, T, 3, knn=2, src=S)  # the default method is CSLS
    assert torch.equal(i, expected["csls"][1])


def test_retriever_caches_and_matches_functions(device):
    g = torch.Generator().manual_seed(4)
    X = torch.randn(50, 10, generator=g, dtype=torch.float64).to(device)
    Z = torch.randn(60, 10, generator=g, dtype=torch.float64).to(device)
    if device.type == "cuda":
        X, Z = X.float(), Z.float()
    r = R.Retriever(X, Z, knn=4, beta=9.0)
    rows = [3, 17, 0, 49]
    for method, fn, kw in (("nn", R.nn, {}), ("csls", R.csls, dict(knn=4, src=X)),
                           ("isf", R.inverted_softmax, dict(beta=9.0, src=X))):
        v, i = r.search(rows, k=5, method=method)
        v2, i2 = fn(X[rows], Z, 5, **kw)
        assert torch.equal(i, i2)
        torch.testing.assert_close(v, v2)
    r_T = r.r_T
    r.search(rows, k=2, method="csls")
    assert r.r_T is r_T


def test_argument_errors():
    Q, T = torch.randn(3, 4), torch.randn(5, 4)
    with pytest.raises(ValueError, match="backend"):
        R.topk(Q, T, 1, backend="numpy")
    with pytest.raises(ValueError, match="k: expected a positive int"):
        R.topk(Q, T, 0)
    with pytest.raises(ValueError, match="T: has 3 dims, the queries have 4"):
        R.topk(Q, torch.randn(5, 3), 1)
    with pytest.raises(ValueError, match="bias: expected 5 values"):
        R.topk(Q, T, 1, torch.zeros(4))
    with pytest.raises(ValueError, match="retrieval"):
        R.retrieve(Q, T, 1, method="cosine")
    with pytest.raises(ValueError, match="beta"):
        R.inverted_softmax(Q, T, beta=0)
    with pytest.raises(TypeError, match="floating point"):
        R.nn(torch.ones(3, 4, dtype=torch.int64), T)
    # nothing is cast or moved behind the caller's back
    with pytest.raises(TypeError, match="Q: expected float32 or float64, got torch.float16"):
        R.topk(Q.half(), T, 1)
    with pytest.raises(ValueError, match="T: is torch.float64 on cpu, the queries are torch.float32"):
        R.topk(Q, T.double(), 1)
    with pytest.raises(ValueError, match="bias: is torch.float64"):
        R.topk(Q, T, 1, torch.zeros(5, dtype=torch.float64))
    assert R.topk(Q, T, 99)[1].shape == (3, 5)  # k clipped to the number of targets
    assert R.knn_mean(Q, T, knn=50).shape == (3,)
    for backend in ("pyzsl", "torch"):  # the argument at fault is named, on every backend
        with pytest.raises(ValueError, match="knn: expected a positive int, got 0"):
            R.csls(Q, T, 1, knn=0, backend=backend)
        with pytest.raises(ValueError, match="T: no targets"):
            R.csls(Q, T[:0], 1, backend=backend)
    if HAVE_FAISS:  # faiss would compute float64 data in float32 and relabel it
        with pytest.raises(ValueError, match="faiss.*float32 only, got torch.float64"):
            R.topk(Q.double(), T.double(), 1, backend="faiss")


def test_faiss_missing_message(monkeypatch):
    if HAVE_FAISS:
        pytest.skip("faiss is installed: the missing-extra message cannot be seen")
    with pytest.raises(ImportError, match=r"pip install pyzsl\[faiss\]"):
        R.topk(torch.randn(2, 3), torch.randn(4, 3), 1, backend="faiss")


# --------------------------------------------------------------------------- evaluation

def toy_spaces():
    # targets t0..t5; each source word s_j sits next to target t_perm[j]
    Z = torch.eye(6, dtype=torch.float64)
    perm = [2, 0, 1, 5, 4, 3]
    X = Z[perm] + 0.01 * torch.arange(6, dtype=torch.float64)[:, None]
    src = Embeddings([f"s{j}" for j in range(6)], X.numpy())
    tgt = Embeddings([f"t{j}" for j in range(6)], Z.numpy())
    return src, tgt, perm


def test_evaluate_muse_protocol_and_oov():
    src, tgt, perm = toy_spaces()
    pairs = [("s0", "t2"), ("s1", "t5"), ("s1", "t0"), ("s2", "t3"), ("s9", "t1"), ("s3", "t9")]
    d = Dictionary(pairs)
    res = evaluate(src, tgt, d, retrieval="nn", ks=(1, 5, 10))
    # in-vocabulary queries: s0 (gold t2: right), s1 (t5 or t0: right, t0), s2 (gold t3, NN t1: wrong)
    assert res["n_queries"] == 3 and res["n_source_words"] == 5
    assert res["p@1"] == pytest.approx(2 / 3) and res["coverage"] == pytest.approx(3 / 5)
    assert res["p@10"] == 1.0  # 6 targets: everything is within the top 10
    wrong = evaluate(src, tgt, d, retrieval="nn", oov="wrong")
    assert wrong["p@1"] == pytest.approx(2 / 5)
    both = evaluate_all(src.vectors, tgt.vectors, d, ("nn", "csls", "isf"), ks=(1, 2),
                        src_words=src.words, tgt_words=tgt.words)
    assert set(both) == {"nn", "csls", "isf"}
    # s2's runners-up tie under NN (t0 first: smaller index); CSLS and ISF penalise the targets
    # near many sources and rank its gold t3 second, so P@2 tells each method from NN
    assert both["nn"]["p@2"] == pytest.approx(2 / 3)
    Xd, Zd = (torch.from_numpy(e.vectors).double() for e in (src, tgt))
    gold = {0: {2}, 1: {5, 0}, 2: {3}}
    for method in ("csls", "isf"):
        dense = dense_scores(Xd, Zd, method)
        for k in (1, 2):
            assert both[method][f"p@{k}"] == pytest.approx(dense_p_at(dense, [0, 1, 2], gold, k))
        assert both[method]["p@2"] == 1.0
    with pytest.raises(ValueError, match="oov"):
        evaluate(src, tgt, d, oov="count")
    with pytest.raises(ValueError, match="src_words"):
        evaluate(src.vectors, tgt, d)


def test_evaluate_no_covered_word():
    src, tgt, _ = toy_spaces()
    res = evaluate(src, tgt, Dictionary([("x", "y")]))
    assert res["n_queries"] == 0 and res["p@1"] == 0.0 and res["coverage"] == 0.0


def test_evaluate_any_listed_translation_counts():
    # MUSE: a hit on any listed translation counts, not only on the first or smallest one
    src, tgt, _ = toy_spaces()
    # s0's nearest target is t2 and s3's is t5: each its larger-index listed translation
    d = Dictionary([("s0", "t1"), ("s0", "t2"), ("s3", "t3"), ("s3", "t5")])
    res = evaluate(src, tgt, d, retrieval="nn", ks=(1,))
    assert res["n_queries"] == 2 and res["p@1"] == 1.0


def test_evaluate_k_reaches_every_target():
    # 6 targets, ks=(6,): the whole vocabulary is retrieved, so P@6 = 1 even for a query whose
    # gold is ranked last (cosines 0.5 > 0.4 > ... > -0.1: strict order t0..t5)
    Z = torch.eye(6, dtype=torch.float64)
    X = torch.tensor([[0.5, 0.4, 0.3, 0.2, 0.1, -0.1]], dtype=torch.float64)
    d = Dictionary([("s0", "t5")])
    kw = dict(src_words=["s0"], tgt_words=[f"t{j}" for j in range(6)], retrieval="nn")
    assert evaluate(X, Z, d, ks=(6,), **kw)["p@6"] == 1.0
    res = evaluate(X, Z, d, ks=(1, 5, 6, 10), **kw)
    assert (res["p@1"], res["p@5"], res["p@6"], res["p@10"]) == (0.0, 0.0, 1.0, 1.0)


def hubby_bli_spaces():
    # 40 source and 40 target words, s_j ≈ t_j; the first 30 source words are the test queries
    g = torch.Generator().manual_seed(2)
    Z = torch.randn(40, 6, generator=g, dtype=torch.float64)
    X = Z + 0.8 * torch.randn(40, 6, generator=g, dtype=torch.float64)
    d = Dictionary([(f"s{j}", f"t{j}") for j in range(30)])
    words = dict(src_words=[f"s{j}" for j in range(40)], tgt_words=[f"t{j}" for j in range(40)])
    gold = {j: {j} for j in range(30)}
    return X, Z, d, words, gold


def test_evaluate_methods_knn_beta_match_dense():
    # each retrieval method, with its own knn / beta, against the dense formulas; on this data
    # the five settings give different P@1, so a method or parameter not passed through shows
    X, Z, d, words, gold = hubby_bli_spaces()
    q = list(range(30))
    settings = [("nn", {}), ("csls", dict(knn=10)), ("csls", dict(knn=1)),
                ("isf", dict(beta=10.0)), ("isf", dict(beta=3.0))]
    p1 = []
    for method, kw in settings:
        dense = dense_scores(X, Z, method, **kw)
        res = evaluate(X, Z, d, retrieval=method, ks=(1, 5), **kw, **words)
        for k in (1, 5):
            assert res[f"p@{k}"] == pytest.approx(dense_p_at(dense, q, gold, k)), (method, kw, k)
        p1.append(res["p@1"])
    assert len(set(p1)) == len(settings), p1  # the data separates every setting
    # evaluate_all shares one Retriever, built with the given knn and beta
    both = evaluate_all(X, Z, d, ("nn", "csls", "isf"), ks=(1,), knn=1, beta=3.0, **words)
    for method, kw in (("nn", {}), ("csls", dict(knn=1)), ("isf", dict(beta=3.0))):
        assert both[method]["p@1"] == pytest.approx(dense_p_at(dense_scores(X, Z, method, **kw), q, gold, 1))
