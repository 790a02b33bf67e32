"""pyzsl.zsl: classifier, ESZSL, calibrated stacking, metrics, persistence, input checks."""
import os
import re

import numpy as np
import pytest
import torch

from pyzsl.zsl import (
    ESZSL,
    CalibrationCurve,
    CosineZSL,
    ZeroShotClassifier,
    calibration_curve,
    choose_seen_penalty,
    evaluate_gzsl,
    evaluate_zsl,
    gzsl_accuracy,
    harmonic_mean,
    load_model,
    load_zsl,
    per_class_accuracy,
    run_protocol,
)


def toy(C=14, dv=8, dt=8, per_class=6, seed=0, noise=0.3):
    """Inputs x = A t_y + noise: a linear map links inputs and classes, so it transfers to unseen classes."""
    g = np.random.default_rng(seed)
    T = g.standard_normal((C, dt))
    A = g.standard_normal((dv, dt))
    y = np.repeat(np.arange(C), per_class)
    X = T[y] @ A.T + noise * g.standard_normal((y.size, dv))
    return X.astype(np.float32), y, T.astype(np.float32)


def small(**kw):
    kw.setdefault("epochs", 3)
    kw.setdefault("batch_size", 32)
    kw.setdefault("progress", False)
    return ZeroShotClassifier(**kw)


# --------------------------------------------------------------------------- shapes and candidates
@pytest.mark.parametrize("dv,dt", [(8, 8), (7, 5)])
def test_fit_predict_shapes(dv, dt, device):
    X, y, T = toy(dv=dv, dt=dt)
    seen = y < 9
    m = small(device=device).fit(X[seen], y[seen], T)
    assert m.M_.shape == (dt, dv)
    np.testing.assert_array_equal(m.classes_, np.arange(9))
    assert len(m.loss_curve_) == 3 and all(np.isfinite(m.loss_curve_))
    pred = m.predict(X, T)
    assert pred.shape == (X.shape[0],) and pred.dtype == np.int64
    idx, val = m.predict_topk(X, T, k=4)
    assert idx.shape == val.shape == (X.shape[0], 4)
    assert np.all(np.diff(val, axis=1) <= 0)
    S = m.decision_function(X, T)
    assert S.shape == (X.shape[0], T.shape[0])
    np.testing.assert_array_equal(S.argmax(1), pred)
    np.testing.assert_allclose(np.take_along_axis(S, idx, 1), val, rtol=1e-5, atol=1e-5)


def test_candidates_restrict_predictions(device):
    X, y, T = toy()
    m = small(device=device).fit(X[y < 9], y[y < 9], T)
    cand = np.array([13, 9, 11])
    pred = m.predict(X, T, candidates=cand)
    assert set(np.unique(pred)) <= set(cand.tolist())
    idx, _ = m.predict_topk(X, T, k=3, candidates=cand)
    assert np.all(np.sort(idx, 1) == np.array([9, 11, 13]))
    S_full = m.decision_function(X, T)
    S_c = m.decision_function(X, T, candidates=cand)
    np.testing.assert_allclose(S_c, S_full[:, [9, 11, 13]], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(pred, np.array([9, 11, 13])[S_c.argmax(1)])
    mask = np.zeros(T.shape[0], bool)
    mask[cand] = True
    np.testing.assert_array_equal(m.predict(X, T, candidates=mask), pred)


def test_training_beats_cosine_on_unseen_classes():
    # cos(x, t) is uninformative here (x = A t + noise with a random A); the learned M transfers.
    X, y, T = toy(C=40, dv=10, dt=10, per_class=10, noise=0.1)
    seen, unseen = np.arange(30), np.arange(30, 40)
    tr, te = np.isin(y, seen), np.isin(y, unseen)
    m = ZeroShotClassifier(epochs=15, lr=5e-2, batch_size=150, progress=False).fit(X[tr], y[tr], T)
    ours = per_class_accuracy(y[te], m.predict(X[te], T, candidates=unseen))
    cos = per_class_accuracy(y[te], CosineZSL().fit(X[tr], y[tr], T).predict(X[te], T, candidates=unseen))
    assert m.loss_curve_[-1] < 0.5 * m.loss_curve_[0]
    assert ours > cos + 0.3, (ours, cos)


@pytest.mark.parametrize("negatives", ["sum", "max"])
def test_fused_and_reference_backends_train_the_same_model(negatives):
    X, y, T = toy(dv=7, dt=5)
    kw = dict(dtype=torch.float64, negatives=negatives, margin=0.5, lr=1e-2)
    a = small(backend="pyzsl", **kw).fit(X, y, T)
    b = small(backend="torch", **kw).fit(X, y, T)
    torch.testing.assert_close(a.M_, b.M_, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(a.loss_curve_, b.loss_curve_, rtol=1e-9)


def test_seed_makes_training_deterministic():
    X, y, T = toy()
    a, b = small(seed=3).fit(X, y, T), small(seed=3).fit(X, y, T)
    assert torch.equal(a.M_, b.M_)
    assert not torch.equal(a.M_, small(seed=4).fit(X, y, T).M_)


def test_identity_residual_decay_path_ends_at_the_cosine():
    # M = I + Δ with weight decay on ‖Δ‖²: the distance to the identity shrinks as the decay
    # grows, and a very strong decay gives the untrained cosine's predictions.
    X, y, T = toy(C=20, dv=8, dt=8, per_class=8)
    seen, unseen = np.arange(14), np.arange(14, 20)
    tr, te = np.isin(y, seen), np.isin(y, unseen)
    kw = dict(init="identity", lr=1e-2, epochs=5, dtype=torch.float64)
    dist = []
    for wd in (0.0, 0.01, 1.0, 1e4):
        m = small(weight_decay=wd, **kw).fit(X[tr], y[tr], T)
        dist.append(float((m.M_ - torch.eye(8, dtype=torch.float64)).norm()))
    assert dist[0] > dist[1] > dist[2] > dist[3] >= 0, dist
    assert dist[0] > 0.1 and dist[3] < 0.02, dist  # Adam steps are ~lr whatever the gradient scale
    cos = CosineZSL(dtype=torch.float64).fit(X[tr], y[tr], T).predict(X[te], T, candidates=unseen)
    agree = np.mean(m.predict(X[te], T, candidates=unseen) == cos)
    assert agree >= 0.95, agree  # near-ties may still flip at ‖M − I‖ ≈ 0.005
    # "auto" is the identity start when the widths match; "random" decays towards zero instead.
    a = small(weight_decay=0.01, init="auto", lr=1e-2, dtype=torch.float64).fit(X[tr], y[tr], T)
    b = small(weight_decay=0.01, init="identity", lr=1e-2, dtype=torch.float64).fit(X[tr], y[tr], T)
    torch.testing.assert_close(a.M_, b.M_, rtol=0, atol=0)
    r0 = small(init="random", lr=5e-2, epochs=10, dtype=torch.float64).fit(X[tr], y[tr], T)
    r = small(weight_decay=1e4, init="random", lr=5e-2, epochs=10, dtype=torch.float64).fit(X[tr], y[tr], T)
    assert float(r.M_.norm()) < 0.2 * float(r0.M_.norm()), (float(r.M_.norm()), float(r0.M_.norm()))


# --------------------------------------------------------------------------- no leakage
@pytest.mark.parametrize("make", [lambda: small(center=True), lambda: small(init="random"),
                                  lambda: ESZSL(normalize_classes=True, center=True)])
def test_unseen_class_embeddings_do_not_reach_the_model(make):
    X, y, T = toy()
    seen = y < 9
    T2 = T.copy()
    T2[9:] = np.random.default_rng(5).standard_normal((T.shape[0] - 9, T.shape[1])) * 100
    a = make().fit(X[seen], y[seen], T)
    b = make().fit(X[seen], y[seen], T2)
    T3 = T.copy()
    T3[9:] = np.nan  # never read by fit
    c = make().fit(X[seen], y[seen], T3)
    assert torch.equal(a.M_, b.M_) and torch.equal(a.M_, c.M_)
    if a.class_mean_ is not None:
        assert torch.equal(a.class_mean_, b.class_mean_)
    # ...and the unseen classes really are scored by their own embeddings at prediction time
    assert not np.array_equal(a.decision_function(X, T), b.decision_function(X, T2))


# --------------------------------------------------------------------------- persistence
@pytest.mark.parametrize("make", [lambda: small(center=True, dtype=torch.float64), lambda: ESZSL(gamma=0.5),
                                  lambda: CosineZSL()])
def test_save_load_round_trip(tmp_path, make):
    X, y, T = toy()
    m = make().fit(X[y < 9], y[y < 9], T)
    path = tmp_path / "sub" / "model.npz"
    m.save(path)
    assert sorted(os.listdir(path.parent)) == ["model.npz"]  # no temporary file left behind
    r = load_model(path)
    assert type(r) is type(m) and r.get_params() == m.get_params()
    np.testing.assert_array_equal(r.classes_, m.classes_)
    if m.M_ is None:
        assert r.M_ is None
    else:
        assert torch.equal(r.M_, m.M_) and r.M_.dtype == m.dtype
    np.testing.assert_array_equal(r.predict_topk(X, T, 5)[0], m.predict_topk(X, T, 5)[0])
    np.testing.assert_array_equal(r.decision_function(X, T), m.decision_function(X, T))
    assert type(type(m).load(path)) is type(m)
    assert r.fit_time_ == m.fit_time_ and getattr(r, "loss_curve_", None) == getattr(m, "loss_curve_", None)
    m.save(path)  # overwriting works (os.replace)
    assert sorted(os.listdir(path.parent)) == ["model.npz"]


def test_load_rejects_wrong_files(tmp_path):
    X, y, T = toy()
    ESZSL().fit(X, y, T).save(tmp_path / "e.npz")
    with pytest.raises(ValueError, match="holds a ESZSL, not a ZeroShotClassifier"):
        ZeroShotClassifier.load(tmp_path / "e.npz")
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="not a pyzsl.zsl model"):
        load_model(tmp_path / "other.npz")
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_model(tmp_path / "missing.npz")
    # damaged or foreign files: a ValueError naming the file, whatever numpy raised
    good = (tmp_path / "e.npz").read_bytes()
    np.save(tmp_path / "a.npy", np.zeros(3))
    np.savez(tmp_path / "meta.npz", meta=np.array('{"kind": "ESZSL"}'))
    bad = {"trunc.npz": good[: len(good) // 2], "junk.npz": bytes(range(256)) * 3,
           "a.npz": (tmp_path / "a.npy").read_bytes(), "meta.npz": (tmp_path / "meta.npz").read_bytes()}
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=re.escape(f"{tmp_path / name}: not a pyzsl.zsl model file")):
            load_model(tmp_path / name)
    with pytest.raises(RuntimeError, match="not fitted"):
        ESZSL().save(tmp_path / "x.npz")


# --------------------------------------------------------------------------- ESZSL
@pytest.mark.parametrize("targets", ["onehot", "pm1"])
def test_eszsl_closed_form_equals_direct_solve(targets):
    X, y, T = toy(C=6, dv=5, dt=4, per_class=4)
    X, T = X.astype(np.float64), T.astype(np.float64)
    gamma, lam = 0.7, 1.3
    m = ESZSL(gamma=gamma, lam=lam, targets=targets, dtype=torch.float64).fit(X, y, T)
    Y = np.eye(6)[y] if targets == "onehot" else 2 * np.eye(6)[y] - 1
    # the normal equations (XᵀX + γI) V (SᵀS + λI) = XᵀYS as one Kronecker system
    A, B, W = X.T @ X + gamma * np.eye(5), T.T @ T + lam * np.eye(4), X.T @ Y @ T
    vecV = np.linalg.solve(np.kron(B.T, A), W.reshape(-1, order="F"))
    V = vecV.reshape(5, 4, order="F")
    np.testing.assert_allclose(m.M_.numpy(), V.T, rtol=1e-10, atol=1e-12)
    # and V minimises the ESZSL objective: its gradient vanishes there
    Vt = torch.tensor(V, requires_grad=True)
    Xt, Tt, Yt = map(torch.tensor, (X, T, Y))
    obj = ((Xt @ Vt @ Tt.T - Yt) ** 2).sum() + gamma * ((Vt @ Tt.T) ** 2).sum() \
        + lam * ((Xt @ Vt) ** 2).sum() + gamma * lam * (Vt ** 2).sum()
    (grad,) = torch.autograd.grad(obj, Vt)
    assert grad.abs().max() < 1e-9


def test_eszsl_reads_only_training_classes():
    X, y, T = toy(C=6, dv=5, dt=4)
    a = ESZSL().fit(X[y < 4], y[y < 4], T)
    b = ESZSL().fit(X[y < 4], y[y < 4], T[:4])  # fewer rows, same training classes
    assert torch.equal(a.M_, b.M_)


# --------------------------------------------------------------------------- metrics
def test_per_class_accuracy_by_hand():
    # class 0: 2 of 3 right, class 1: 1 of 1, class 5: 0 of 2 → (2/3 + 1 + 0) / 3
    yt = [0, 0, 0, 1, 5, 5]
    yp = [0, 0, 1, 1, 0, 1]
    assert per_class_accuracy(yt, yp) == pytest.approx((2 / 3 + 1 + 0) / 3, abs=1e-15)
    assert per_class_accuracy([3, 3], [3, 3]) == 1.0
    # sample-weighted accuracy would be 3/6; the per-class mean is not
    assert per_class_accuracy(yt, yp) != pytest.approx(0.5)
    with pytest.raises(ValueError, match="differ in length"):
        per_class_accuracy([0, 1], [0])
    with pytest.raises(ValueError, match="empty"):
        per_class_accuracy([], [])
    with pytest.raises(TypeError, match="integer"):
        per_class_accuracy([0.5, 1.0], [0, 1])


def test_harmonic_mean_and_gzsl_by_hand():
    assert harmonic_mean(0.5, 0.25) == pytest.approx(1 / 3)
    assert harmonic_mean(0.0, 0.0) == 0.0 and harmonic_mean(0.0, 0.9) == 0.0
    r = gzsl_accuracy([0, 0, 1], [0, 1, 1], [7, 8], [7, 0])
    assert (r.seen, r.unseen, r.H) == pytest.approx((0.75, 0.5, 0.6))


# --------------------------------------------------------------------------- calibrated stacking
@pytest.fixture(scope="module")
def gzsl_setup():
    X, y, T = toy(C=30, dv=8, dt=8, per_class=8, noise=0.5, seed=2)
    seen, unseen = np.arange(20), np.arange(20, 30)
    rng = np.random.default_rng(0)
    held = np.zeros(y.size, bool)
    for c in seen:
        held[rng.choice(np.flatnonzero(y == c), 2, replace=False)] = True
    tr = np.isin(y, seen) & ~held
    m = ZeroShotClassifier(epochs=10, lr=2e-2, batch_size=64, progress=False).fit(X[tr], y[tr], T)
    te_u = np.isin(y, unseen)
    return m, X, y, T, held, te_u


def test_calibration_curve_is_monotone_and_matches_predict(gzsl_setup):
    m, X, y, T, held, te_u = gzsl_setup
    curve = calibration_curve(m, T, X[held], y[held], X[te_u], y[te_u])
    assert curve.penalties.size > 10 and np.all(np.diff(curve.penalties) > 0)
    # a larger seen-class penalty never helps seen samples nor hurts unseen ones
    assert np.all(np.diff(curve.seen) <= 1e-12) and np.all(np.diff(curve.unseen) >= -1e-12)
    assert curve.seen[0] > curve.seen[-1] and curve.unseen[-1] > curve.unseen[0]
    assert curve.unseen[0] == 0.0 and curve.seen[-1] == 0.0   # the two extremes
    for i in np.linspace(0, curve.penalties.size - 1, 7).astype(int):
        r = evaluate_gzsl(m, T, X[held], y[held], X[te_u], y[te_u], seen_penalty=curve.penalties[i])
        assert (r.seen, r.unseen, r.H) == pytest.approx((curve.seen[i], curve.unseen[i], curve.H[i]), abs=1e-12)
    # on a user grid too
    g = np.linspace(-1, 3, 9)
    c2 = calibration_curve(m, T, X[held], y[held], X[te_u], y[te_u], penalties=g)
    for i, p in enumerate(g):
        r = evaluate_gzsl(m, T, X[held], y[held], X[te_u], y[te_u], seen_penalty=p)
        assert (r.seen, r.unseen) == pytest.approx((c2.seen[i], c2.unseen[i]), abs=1e-12)


def test_choose_seen_penalty_maximises_H(gzsl_setup):
    m, X, y, T, held, te_u = gzsl_setup
    gamma, curve = choose_seen_penalty(m, T, X[held], y[held], X[te_u], y[te_u])
    h = evaluate_gzsl(m, T, X[held], y[held], X[te_u], y[te_u], seen_penalty=gamma).H
    h0 = evaluate_gzsl(m, T, X[held], y[held], X[te_u], y[te_u]).H
    assert h == pytest.approx(curve.H.max()) and h >= h0
    assert gamma > 0  # a model trained on seen classes over-predicts them
    assert 0.0 in curve.penalties


def test_calibration_with_candidates_without_unseen_classes(gzsl_setup):
    m, X, y, T, held, te_u = gzsl_setup
    c = calibration_curve(m, T, X[held], y[held], X[held], y[held], candidates=m.classes_)
    assert np.all(c.seen == c.seen[0]) and np.all(c.unseen == c.seen[0])  # nothing to trade off
    # no seen candidate: the seen samples could never be right, which is refused by name
    unseen = np.arange(20, 30)
    with pytest.raises(ValueError, match=r"y_seen: \d+ class\(es\) not among the candidates"):
        calibration_curve(m, T, X[held], y[held], X[te_u], y[te_u], candidates=unseen)
    with pytest.raises(ValueError, match=r"y_unseen: \d+ labels but X has 1 rows"):
        calibration_curve(m, T, X[held], y[held], X[te_u][:1], y[te_u])


def _exact_tie_setup(dtype, device, seed=0):
    """A model whose scores are the inputs themselves (T = I, no normalisation): every score, and so
    every breakpoint s₁ − s₂, is a small integer, exact in float32 and float64. Seen classes
    {0, 3, 4} interleave the unseen {1, 2, 5}, so the best seen class is sometimes the smaller index
    and sometimes the larger one."""
    seen, unseen = np.array([0, 3, 4]), np.array([1, 2, 5])
    T = np.eye(6)
    m = CosineZSL(normalize_inputs=False, normalize_classes=False, dtype=dtype, device=device)
    m.fit(np.ones((3, 6)), seen, T)
    g = np.random.default_rng(seed)
    rows = []
    for j1 in seen:
        for j2 in unseen:
            for d in (-1, 0, 1, 2):
                s2 = int(g.integers(-2, 3))
                x = np.full(6, -10.0)
                x[j1], x[j2] = s2 + d, s2
                rows.append((x, j1, j2))
    # an uneven random subset: a flipped tie rule cannot cancel out in the per-class means
    keep = g.permutation(len(rows))
    xs = [rows[i] for i in keep[:28]]
    xu = [rows[i] for i in keep[8:]]
    Xs, ys = np.array([r[0] for r in xs]), np.array([r[1] for r in xs])
    Xu, yu = np.array([r[0] for r in xu]), np.array([r[2] for r in xu])
    return m, T, Xs, ys, Xu, yu, seen


def _stacking_by_hand(X, seen, gamma, ties_to="smaller"):
    """argmax of x − γ·[seen], ties to the smaller class index (np.argmax) or to the larger one."""
    S = X - gamma * np.isin(np.arange(X.shape[1]), seen)
    return S.argmax(1) if ties_to == "smaller" else S.shape[1] - 1 - S[:, ::-1].argmax(1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_calibration_curve_exact_ties_follow_the_kernel(dtype, device):
    # At γ = s₁ − s₂ exactly the seen and unseen winners tie; predict gives the smaller index, and
    # the curve must too (guards `seen_tie = j1 < j2` and the searchsorted side per tie group).
    m, T, Xs, ys, Xu, yu, seen = _exact_tie_setup(dtype, device)
    g = np.array([-1.5, -1, -0.5, 0, 0.5, 1, 1.5, 2, 2.5])   # every breakpoint and its neighbours
    c = calibration_curve(m, T, Xs, ys, Xu, yu, penalties=g)
    np.testing.assert_array_equal(c.penalties, g)
    flips = 0
    for i, p in enumerate(g):
        S = per_class_accuracy(ys, _stacking_by_hand(Xs, seen, p))
        U = per_class_accuracy(yu, _stacking_by_hand(Xu, seen, p))
        r = evaluate_gzsl(m, T, Xs, ys, Xu, yu, seen_penalty=p)
        assert (r.seen, r.unseen) == pytest.approx((S, U), abs=1e-12), p      # the kernel's rule
        assert (c.seen[i], c.unseen[i]) == pytest.approx((S, U), abs=1e-12), p
        assert c.H[i] == pytest.approx(harmonic_mean(S, U), abs=1e-12)
        # the data do exercise ties: at each breakpoint, ties to the larger index score otherwise
        big = (per_class_accuracy(ys, _stacking_by_hand(Xs, seen, p, "larger")),
               per_class_accuracy(yu, _stacking_by_hand(Xu, seen, p, "larger")))
        flips += big != (S, U)
    assert flips == 4  # γ = −1, 0, 1, 2


def test_calibration_curve_sorts_a_user_grid(device):
    # An unsorted grid comes back sorted, with S/U/H at each of its penalties.
    m, T, Xs, ys, Xu, yu, seen = _exact_tie_setup(torch.float64, device, seed=1)
    g = np.array([2, -1, 0.5, 0, 2.5, -1.5, 1, -0.5, 1.5])
    c = calibration_curve(m, T, Xs, ys, Xu, yu, penalties=g)
    np.testing.assert_array_equal(c.penalties, np.sort(g))
    for i, p in enumerate(np.sort(g)):
        r = evaluate_gzsl(m, T, Xs, ys, Xu, yu, seen_penalty=p)
        assert (c.seen[i], c.unseen[i], c.H[i]) == pytest.approx((r.seen, r.unseen, r.H), abs=1e-12), p


def test_calibration_curve_best_prefers_the_smallest_penalty_among_ties():
    # Among equal H, best() returns the γ of smallest |γ| (neither the first nor the last tie).
    g = np.array([-2.0, -0.5, 0.25, 1.0, 3.0])
    h = np.array([0.8, 0.3, 0.8, 0.5, 0.8])
    c = CalibrationCurve(g, h, h, h)
    assert c.best() == (0.25, 2)
    # |γ|, not γ: −0.1 beats −3 and 0.2
    g = np.array([-3.0, -0.1, 0.2, 2.0])
    h = np.array([0.7, 0.7, 0.7, 0.1])
    assert CalibrationCurve(g, h, h, h).best() == (-0.1, 1)


# --------------------------------------------------------------------------- CSLS hubness correction
@pytest.mark.parametrize("make", [lambda: small(csls_k=3, center=True), lambda: CosineZSL(csls_k=4),
                                  lambda: ESZSL(csls_k=2)])
def test_csls_equals_the_direct_formula(make, tmp_path):
    X, y, T = toy()
    seen = y < 9
    m = make().fit(X[seen], y[seen], T)
    plain = type(m)(**dict(m.get_params(), csls_k=0, dtype=m.dtype))
    for a in ("M_", "classes_", "input_mean_", "class_mean_", "n_features_in_", "n_class_features_"):
        setattr(plain, a, getattr(m, a))
    S = plain.decision_function(X, T)                              # t̃ᵀ M x̃ without correction
    ref = plain.decision_function(X[seen], T)                      # training inputs × classes
    r = np.sort(ref, 0)[-m.csls_k:].mean(0)                        # mean of each class's k best
    np.testing.assert_allclose(m.decision_function(X, T), S - r / 2, rtol=1e-5, atol=1e-6)
    cand = [2, 10, 11, 12]
    np.testing.assert_allclose(m.decision_function(X, T, candidates=cand), (S - r / 2)[:, cand],
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(m.predict(X, T, candidates=cand),
                                  np.array(cand)[(S - r / 2)[:, cand].argmax(1)])
    # the per-T cache does not leak between class-embedding sets
    T2 = T * np.linspace(1, 2, T.shape[1], dtype=np.float32)
    S2, r2 = plain.decision_function(X, T2), np.sort(plain.decision_function(X[seen], T2), 0)[-m.csls_k:].mean(0)
    np.testing.assert_allclose(m.decision_function(X, T2), S2 - r2 / 2, rtol=1e-5, atol=1e-6)
    m.save(tmp_path / "m.npz")
    np.testing.assert_array_equal(load_model(tmp_path / "m.npz").decision_function(X, T), m.decision_function(X, T))


def test_refit_resets_the_csls_cache():
    X, y, T = toy()
    m = CosineZSL(csls_k=2).fit(X[y < 9], y[y < 9], T)
    a = m.decision_function(X, T)
    m.fit(X[y < 5], y[y < 5], T)
    b = m.decision_function(X, T)
    fresh = CosineZSL(csls_k=2).fit(X[y < 5], y[y < 5], T).decision_function(X, T)
    np.testing.assert_array_equal(b, fresh)
    assert not np.array_equal(a, b)


# --------------------------------------------------------------------------- bad inputs
def test_bad_inputs_raise_clear_errors():
    X, y, T = toy()
    m = small()
    with pytest.raises(ValueError, match="X: expected a 2-D"):
        m.fit(X[0], y[:1], T)
    with pytest.raises(ValueError, match="y: has 83 labels but X has 84"):
        m.fit(X, y[:-1], T)
    y_bad = y.copy()
    y_bad[3] = 14
    with pytest.raises(ValueError, match="label 14 is out of range"):
        m.fit(X, y_bad, T)
    with pytest.raises(ValueError, match="label -1 is out of range"):
        m.fit(X, np.where(y == 0, -1, y), T)
    with pytest.raises(TypeError, match="integer class indices"):
        m.fit(X, y + 0.5, T)
    for v, msg in ((1e30, r"label 1e\+30 is out of range"), (np.inf, "y: contains NaN or inf")):
        with pytest.raises(ValueError, match=msg):  # not cast to int64 first (1e30 wrapped)
            m.fit(X, np.where(y == 0, v, y.astype(float)), T)
    Xz = X.copy()
    Xz[4] = 0
    with pytest.raises(ValueError, match=r"X: cannot L2-normalise a zero vector \(row 4\)"):
        m.fit(Xz, y, T)
    with pytest.raises(ValueError, match=r"class_embeddings: cannot L2-normalise a zero vector \(row 2\)"):
        m.fit(X, y, np.where(np.arange(len(T))[:, None] == 2, 0, T))
    Xn = X.copy()
    Xn[5, 2] = np.nan
    with pytest.raises(ValueError, match=r"X: contains NaN.*row 5, column 2"):
        m.fit(Xn, y, T)
    Tn = T.copy()
    Tn[0, 0] = np.inf
    with pytest.raises(ValueError, match="class_embeddings.*NaN or infinite"):
        m.fit(X, y, Tn)
    with pytest.raises(ValueError, match="class_embeddings: expected a 2-D"):
        m.fit(X, y, T[0])
    with pytest.raises(ValueError, match="at least 2 distinct classes"):
        m.fit(X[y == 0], y[y == 0], T)
    with pytest.raises(RuntimeError, match="not fitted"):
        m.predict(X, T)
    m.fit(X, y, T)
    with pytest.raises(ValueError, match="X: has 5 features, the model was fitted with 8"):
        m.predict(X[:, :5], T)
    with pytest.raises(ValueError, match="class_embeddings: has 3 features"):
        m.predict(X, T[:, :3])
    with pytest.raises(ValueError, match="X: contains NaN"):
        m.predict(Xn, T)
    with pytest.raises(ValueError, match="candidates: class 99 is out of range"):
        m.predict(X, T, candidates=[1, 99])
    with pytest.raises(ValueError, match="candidates: is empty"):
        m.predict(X, T, candidates=[])
    with pytest.raises(ValueError, match="k must be an integer in 1..3"):
        m.predict_topk(X, T, k=4, candidates=[1, 2, 3])
    with pytest.raises(ValueError, match="seen_penalty must be finite"):
        m.predict(X, T, seen_penalty=float("nan"))
    with pytest.raises(ValueError, match="trained on class 13"):
        m.predict(X, T[:10], seen_penalty=1.0)


@pytest.mark.parametrize("kw,msg", [
    (dict(margin=-1), "margin"), (dict(negatives="mean"), "negatives"), (dict(lr=0), "lr"),
    (dict(epochs=-1), "epochs"), (dict(batch_size=0), "batch_size"), (dict(weight_decay=float("nan")), "weight_decay"),
    (dict(init="zeros"), "init"), (dict(dtype=torch.float16), "dtype"), (dict(backend="cuda"), "backend"),
    (dict(normalize_inputs="yes"), "normalize_inputs"), (dict(csls_k=-1), "csls_k"),
    (dict(lr_schedule="step"), "lr_schedule"),
])
def test_bad_hyperparameters(kw, msg):
    with pytest.raises((ValueError, TypeError), match=msg):
        ZeroShotClassifier(**kw)


def test_csls_k_changed_after_fit_is_used():
    X, y, T = toy()
    m = CosineZSL(csls_k=3).fit(X[y < 9], y[y < 9], T)
    before = m.decision_function(X, T)
    m.csls_k = 1  # tuning the correction at prediction time: the cached hub terms must follow
    np.testing.assert_array_equal(m.decision_function(X, T),
                                  CosineZSL(csls_k=1).fit(X[y < 9], y[y < 9], T).decision_function(X, T))
    assert not np.array_equal(before, m.decision_function(X, T))


def test_params_round_trip_and_repr():
    X, y, T = toy()
    for m in (small(csls_k=3, dtype=torch.float64), ESZSL(gamma=0.5), CosineZSL(csls_k=2)):
        copy = type(m)(**m.get_params(deep=True))  # scikit-learn's clone does this
        assert copy.get_params() == m.get_params() and repr(copy) == repr(m)
    m = small().fit(X[y < 9], y[y < 9], T)
    before = m.predict(X, T)
    with pytest.raises(ValueError, match="epochs"):
        m.set_params(lr=0.5, epochs=-1)
    assert m.lr != 0.5  # a refused change changes nothing
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['foo'\]"):
        m.set_params(foo=1)
    assert m.set_params(csls_k=2) is m and m.csls_k == 2
    np.testing.assert_array_equal(m.set_params(csls_k=0).predict(X, T), before)  # the fit is kept
    assert repr(ESZSL(gamma=2.0)) == "ESZSL(gamma=2.0)"


def test_eszsl_needs_positive_regularisation():
    for kw in (dict(gamma=0), dict(lam=0.0), dict(lam=-1)):
        with pytest.raises(ValueError, match="must be a finite number > 0"):
            ESZSL(**kw)


@pytest.mark.parametrize("model", [CosineZSL, ESZSL])
@pytest.mark.parametrize("kw,msg", [
    (dict(dtype=torch.float16), "dtype"), (dict(backend="cuda"), "backend"),
    (dict(normalize_classes=1), "normalize_classes"), (dict(center="no"), "center"), (dict(csls_k=1.5), "csls_k"),
])
def test_bad_shared_arguments(model, kw, msg):
    """The arguments every model takes are checked the same way in each."""
    with pytest.raises((ValueError, TypeError), match=msg):
        model(**kw)


def test_identity_init_needs_square_map():
    X, y, T = toy(dv=7, dt=5)
    with pytest.raises(ValueError, match="init='identity' needs dt == dv"):
        small(init="identity").fit(X, y, T)
    with pytest.raises(ValueError, match="same width"):
        CosineZSL().fit(X, y, T)
    with pytest.raises(ValueError, match="targets"):
        ESZSL(targets="ones")


# --------------------------------------------------------------------------- shared data (small)
def test_shared_supersense_protocol_reproduces_the_readme(shared_data):
    # shared/data/zsl/README.md, measured there with plain numpy: cosine and ESZSL (one-hot, γ = λ = 1)
    d = load_zsl(shared_data / "zsl" / "supersense.npz")
    assert d.X.dtype == np.float32 and d.X.shape == (19698, 384) and d.n_classes == 25
    assert np.intersect1d(d.train_fit_loc, d.val_seen_loc).size == 0
    cos = run_protocol(CosineZSL, d, transductive_strengths=(0.5, 2.0))
    assert cos.zsl == pytest.approx(0.5961, abs=5e-5)
    # prototypes adapted to the unlabelled test inputs (strength chosen on val_loc): far above
    assert cos.transductive_strength in (0.5, 2.0) and cos.zsl_transductive > cos.zsl + 0.05
    assert cos.zsl_val_transductive > cos.zsl_val
    assert (cos.gzsl.seen, cos.gzsl.unseen, cos.gzsl.H) == pytest.approx((0.3594, 0.4511, 0.4000), abs=5e-5)
    esz = run_protocol(ESZSL, d)
    assert esz.zsl == pytest.approx(0.2497, abs=5e-5)
    assert (esz.gzsl.seen, esz.gzsl.unseen, esz.gzsl.H) == pytest.approx((0.7185, 0.0017, 0.0035), abs=5e-5)
    # calibrated stacking, γ chosen on validation only, lifts ESZSL's H there and on test
    assert esz.val_H_calibrated > esz.val_H and esz.gzsl_calibrated.H > 0.25


def test_shared_gloss2word_short_fit(shared_data):
    d = load_zsl(shared_data / "zsl" / "gloss2word.npz")
    loc = d.trainval_loc[::10]
    m = small(epochs=1, batch_size=256, csls_k=3).fit(d.X[loc], d.y[loc], d.class_emb)
    np.testing.assert_array_equal(m.classes_, np.unique(d.y[loc]))
    assert np.isin(m.classes_, d.seen_classes).all()
    tu = d.test_unseen_loc[:300]
    pred = m.predict(d.X[tu], d.class_emb, candidates=d.unseen_classes)
    assert np.isin(pred, d.unseen_classes).all()


def test_load_zsl_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.npz"):
        load_zsl(tmp_path / "nothere.npz")
    np.savez(tmp_path / "bad.npz", X=np.zeros((3, 2), np.float16), y=np.zeros(3, np.int64))
    with pytest.raises(ValueError, match=r"bad.npz: missing arrays \['class_emb'"):
        load_zsl(tmp_path / "bad.npz")


def test_progress_bar_goes_to_stderr(capsys):
    X, y, T = toy()
    ZeroShotClassifier(epochs=2, batch_size=64, progress=True).fit(X, y, T)
    assert "ZeroShotClassifier fit" in capsys.readouterr().err


# --------------------------------------------------------------------------- transductive prediction
def _transductive_reference(V, P, bias, strength, max_iter, R=None, k=0):
    """Dense float64 oracle: full score matrix, k-means-style prototype moves (the docstring's
    rule), CSLS hub terms of the moved prototypes against the reference inputs R when k > 0."""
    unit = lambda A: A / np.linalg.norm(A, axis=1, keepdims=True)  # noqa: E731
    scale = np.linalg.norm(P, axis=1, keepdims=True)
    Q, assign = P, None
    for _ in range(max_iter + 1):
        hub = -0.5 * np.sort(Q @ R.T, axis=1)[:, ::-1][:, :k].mean(1) if k else 0.0
        new = (V @ Q.T + bias + hub).argmax(1)
        if assign is not None and (new == assign).all():
            break
        assign = new
        Q = P.copy()
        for c in np.unique(assign):
            Q[c] = scale[c] * unit(unit(P[c:c + 1]) + strength * unit(V[assign == c].sum(0, keepdims=True)))
    return new


@pytest.mark.parametrize("csls_k,penalty", [(0, 0.0), (3, 0.2)])
def test_predict_transductive_matches_dense_reference(csls_k, penalty, device):
    X, y, T = toy(C=13, dv=7, dt=5, per_class=5, noise=0.5)
    m = small(device=device, dtype=torch.float64, csls_k=csls_k).fit(X[y < 8], y[y < 8], T)
    cand = np.arange(3, 13)
    for strength, it in [(0.5, 1), (2.0, 10), (3.0, 0)]:
        got = m.predict_transductive(X, T, candidates=cand, seen_penalty=penalty, strength=strength, max_iter=it)
        V = m._prep_inputs(X).cpu().numpy()
        Tp = m._prep_classes(T)
        mask, bias = m._mask_and_bias(Tp, cand, penalty, csls=False)  # no CSLS in this mode
        b = np.where(mask.cpu().numpy(), 0.0, -np.inf) + (0 if bias is None else bias.cpu().numpy())
        R = None if m.reference_ is None else m.reference_.cpu().numpy()
        want = _transductive_reference(V, (Tp @ m.M_).cpu().numpy(), b, strength, it, R, csls_k)
        np.testing.assert_array_equal(got, want)
        assert np.isin(got, cand).all()
    # strength 0 (or no round) is the inductive prediction
    np.testing.assert_array_equal(m.predict_transductive(X, T, cand, penalty, strength=0.0),
                                  m.predict(X, T, cand, penalty))
    np.testing.assert_array_equal(m.predict_transductive(X, T, cand, penalty, max_iter=0),
                                  m.predict(X, T, cand, penalty))


def test_predict_transductive_finds_shifted_clusters():
    # class embeddings point between the true cluster centres: each is nearest its own cluster only
    # by a small margin, so many inputs go to the wrong class; the clusters themselves are tight
    g = np.random.default_rng(3)
    C, d, n = 6, 16, 40
    centres = np.linalg.qr(g.standard_normal((d, C)))[0].T
    T = centres + 0.9 * centres[np.roll(np.arange(C), 1)]
    y = np.repeat(np.arange(C), n)
    X = (centres[y] + 0.15 * g.standard_normal((y.size, d))).astype(np.float32)
    T = T.astype(np.float32)
    m = CosineZSL().fit(X[:2 * n:n], y[:2 * n:n], T)
    acc_ind = per_class_accuracy(y, m.predict(X, T))
    acc_tr = per_class_accuracy(y, m.predict_transductive(X, T, strength=2.0))
    assert acc_ind < 0.9 and acc_tr > 0.97


def test_predict_transductive_bad_arguments():
    X, y, T = toy()
    with pytest.raises(RuntimeError, match="not fitted"):
        CosineZSL().predict_transductive(X, T)
    m = CosineZSL().fit(X, y, T)
    for s in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="strength"):
            m.predict_transductive(X, T, strength=s)
    with pytest.raises(ValueError, match="max_iter"):
        m.predict_transductive(X, T, max_iter=-1)
    with pytest.raises(ValueError, match="NaN"):
        m.predict_transductive(np.full_like(X, np.nan), T)


# --------------------------------------------------------------------------- audit (zsl2): training recipe, CSLS cache, load
def _devise_by_hand(X, y, T, margin, negatives, lr, epochs, schedule, wd):
    """Plain-PyTorch DeViSE trainer, full batch, float64: M₀ = I, Adam on the reference hinge
    (mean over rows) + wd·‖M − I‖²_F, lr_t = lr·(1 + cos(π t / steps))/2 set by hand."""
    from pyzsl.ops import _reference as ref
    classes = np.unique(y)
    unit = lambda A: A / A.norm(dim=1, keepdim=True)  # noqa: E731
    V = unit(torch.tensor(X, dtype=torch.float64))
    S = unit(torch.tensor(T[classes], dtype=torch.float64))
    yl = torch.from_numpy(np.searchsorted(classes, y))
    M0 = torch.eye(S.shape[1], dtype=torch.float64)
    M = M0.clone().requires_grad_(True)
    opt = torch.optim.Adam([M], lr=lr)
    curve = []
    for t in range(epochs):
        for group in opt.param_groups:
            group["lr"] = lr * (1 + np.cos(np.pi * t / epochs)) / 2 if schedule == "cosine" else lr
        loss = ref.bilinear_hinge_loss(V, M, S, yl, margin=margin, reduction="mean", negatives=negatives)
        opt.zero_grad()
        (loss + wd * (M - M0).square().sum()).backward()
        opt.step()
        curve.append(float(loss.detach()))
    return M.detach(), curve


@pytest.mark.parametrize("negatives,schedule,wd", [("sum", "cosine", 0.05), ("max", "constant", 0.0)])
def test_training_follows_the_documented_recipe(negatives, schedule, wd):
    # Guards: margin/negatives forwarded to the loss, the cosine schedule (annealed to 0 over all
    # steps) or none, and the decay as wd·‖M − M₀‖²_F (a sum, not a mean) on the mean loss.
    X, y, T = toy(C=10, dv=6, dt=6, per_class=4)
    kw = dict(margin=0.3, negatives=negatives, lr=2e-2, epochs=6, lr_schedule=schedule, weight_decay=wd)
    m = small(dtype=torch.float64, batch_size=len(y), init="identity", **kw).fit(X, y, T)
    M, curve = _devise_by_hand(X, y, T, 0.3, negatives, 2e-2, 6, schedule, wd)
    torch.testing.assert_close(m.M_, M, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(m.loss_curve_, curve, rtol=1e-9)
    # the other schedule would have trained another map (the check above can tell them apart)
    other = _devise_by_hand(X, y, T, 0.3, negatives, 2e-2, 6, {"cosine": "constant"}.get(schedule, "cosine"), wd)[0]
    assert float((other - M).abs().max()) > 1e-4


def test_loss_curve_is_the_row_weighted_epoch_mean():
    # With a vanishing lr M stays at I: each epoch's entry is the mean hinge over all N rows,
    # batches of 32, 32 and 20 weighted by their sizes (not the last batch, not a batch mean).
    from pyzsl.ops import _reference as ref
    X, y, T = toy()  # N = 84
    m = small(lr=1e-12, batch_size=32, margin=0.2, dtype=torch.float64, init="identity").fit(X, y, T)
    unit = lambda A: A / A.norm(dim=1, keepdim=True)  # noqa: E731
    V, S = unit(torch.tensor(X, dtype=torch.float64)), unit(torch.tensor(T, dtype=torch.float64))
    want = float(ref.bilinear_hinge_loss(V, torch.eye(8, dtype=torch.float64), S, torch.from_numpy(y), margin=0.2))
    assert want > 0.1
    np.testing.assert_allclose(m.loss_curve_, [want] * 3, rtol=1e-8)


def _csls_by_hand(model, X, Xref, T, k):
    """Dense CSLS: S − r/2, r_j the mean of class j's k best scores against the reference rows."""
    plain = CosineZSL(dtype=model.dtype).fit(Xref, np.arange(len(Xref)) % 2, T)
    S, ref = plain.decision_function(X, T), plain.decision_function(Xref, T)
    return S - np.sort(ref, 0)[::-1][:k].mean(0) / 2


def test_csls_cache_fills_in_classes_outside_earlier_candidate_sets():
    # A candidate-restricted call computes only those classes' hub terms; a later call on other
    # classes must compute theirs, not read the unfilled zeros of the cache.
    X, y, T = toy()
    m = CosineZSL(csls_k=3, dtype=torch.float64).fit(X[y < 9], y[y < 9], T)
    want = _csls_by_hand(m, X, X[y < 9], T, 3)
    np.testing.assert_allclose(m.decision_function(X, T, candidates=[0, 1, 2]), want[:, :3], rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(m.predict(X, T, candidates=[9, 10, 11, 12, 13]),
                                  9 + want[:, 9:].argmax(1))
    np.testing.assert_allclose(m.decision_function(X, T), want, rtol=1e-10, atol=1e-12)


def test_csls_k_above_the_reference_size_uses_every_reference_row():
    # csls_k = 50 with 12 training rows: r_j is the mean over all 12 (and no error from top-k).
    X, y, T = toy()
    tr = np.isin(y, [0, 1])
    m = CosineZSL(csls_k=50, dtype=torch.float64).fit(X[tr], y[tr], T)
    np.testing.assert_allclose(m.decision_function(X, T), _csls_by_hand(m, X, X[tr], T, 12), rtol=1e-10, atol=1e-12)


def test_load_device_overrides_the_saved_one(tmp_path):
    # A model saved from a GPU run loads on the CPU when asked: device= wins over the file's.
    import json
    X, y, T = toy()
    m = ESZSL(gamma=0.5).fit(X[y < 9], y[y < 9], T)
    m.save(tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz") as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["meta"]))
    meta["params"]["device"] = "cuda:7"
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(tmp_path / "gpu.npz", **arrays)
    r = load_model(tmp_path / "gpu.npz", device="cpu")
    assert r.device == "cpu" and r.M_.device.type == "cpu"
    np.testing.assert_array_equal(r.decision_function(X, T), m.decision_function(X, T))


def test_set_params_moves_a_fitted_model_to_the_new_dtype():
    X, y, T = toy()
    m = ESZSL().fit(X[y < 9], y[y < 9], T)
    before = m.decision_function(X, T)
    m.set_params(dtype=torch.float64)
    assert m.M_.dtype == torch.float64
    np.testing.assert_allclose(m.decision_function(X, T), before, rtol=1e-5, atol=1e-6)


def test_labels_outside_the_candidates_are_refused():
    X, y, T = toy()
    m = CosineZSL().fit(X[y < 9], y[y < 9], T)
    unseen = y >= 9
    with pytest.raises(ValueError, match=r"y: \d+ class\(es\) not among the candidates"):
        evaluate_zsl(m, T, X[unseen], y[unseen], candidates=np.unique(y[unseen])[:1])


def test_fit_errors_name_the_row_of_class_embeddings():
    X, y, T = toy()
    classes = np.unique(y[y < 9])
    T = np.array(T, dtype=np.float32)
    T[classes[-1]] = 0
    with pytest.raises(ValueError, match=rf"zero vector \(row {classes[-1]}\)"):
        ESZSL(normalize_classes=True).fit(X[y < 9], y[y < 9], T)
    T[classes[-1]] = np.nan
    with pytest.raises(ValueError, match=rf"first at row {classes[-1]},"):
        small().fit(X[y < 9], y[y < 9], T)


def test_candidates_as_a_mask_are_checked_as_indices():
    X, y, T = toy()
    m = CosineZSL().fit(X[y < 9], y[y < 9], T)
    unseen = y >= 9
    mask = np.zeros(len(T), dtype=bool)
    mask[9:] = True
    assert evaluate_zsl(m, T, X[unseen], y[unseen], candidates=mask) == \
        evaluate_zsl(m, T, X[unseen], y[unseen], candidates=np.arange(9, len(T)))
