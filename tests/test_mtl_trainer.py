"""MultiTaskTrainer and the sharing architectures: per-task gradients, aggregation paths,
MGDA-UB, task sampling, diagnostics, exact resume, data loaders (small, seconds)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pyzsl.mtl import aggregators as A
from pyzsl.mtl import (CAGrad, CrossStitch, Equal, Fixed, GradNorm, HardSharing, HeadsAtDepths, IMTLG, MGDA,
                       MultiTaskTrainer, PCGrad, Uncertainty, evaluate, load_multidigits, load_wordtasks,
                       multilenet, multilenet_cross_stitch, word_mlp_depths)


pytestmark = pytest.mark.usefixtures("one_thread")


TASKS = ("a", "b", "c")


def _data(n=96, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g)
    W = torch.randn(d, len(TASKS), generator=g)
    ys = {t: (X @ W[:, i] > 0).long() + (X[:, i] > 1).long() for i, t in enumerate(TASKS)}
    return X, ys


def _model(dropout=0.0, tasks=TASKS, d=6):
    torch.manual_seed(1)
    trunk = nn.Sequential(nn.Linear(d, 16), nn.Tanh(), nn.Dropout(dropout), nn.Linear(16, 8), nn.ReLU())
    return HardSharing(trunk, {t: nn.Linear(8, 3) for t in tasks})


def _trainer(agg, model=None, lr=0.05, opt="adam", **kw):
    model = model or _model()
    o = (torch.optim.Adam if opt == "adam" else torch.optim.SGD)(model.parameters(), lr=lr)
    return MultiTaskTrainer(model, agg, o, **kw)


def _params(m):
    return torch.cat([p.detach().reshape(-1) for p in m.parameters()])


class _Capture(A.Aggregator):
    """Records G and returns the plain sum."""

    def forward(self, G, losses=None, gram=None):
        self.G = G.clone()
        return G.sum(0)


def test_task_gradients_match_autograd():
    X, ys = _data()
    for mode in ("loop", "batched"):
        agg = _Capture()
        tr = _trainer(agg, grad_mode=mode, diagnostics_every=0)
        m = tr.model
        ref = []
        for t in TASKS:
            m.zero_grad()
            F.cross_entropy(m(X[:32], tasks=[t])[t], ys[t][:32]).backward()
            ref.append(torch.cat([p.grad.reshape(-1) for p in m.shared_parameters()]))
        tr.step(X[:32], {t: y[:32] for t, y in ys.items()})
        torch.testing.assert_close(agg.G, torch.stack(ref), rtol=1e-5, atol=1e-7)


def test_single_backward_path_equals_per_task_path():
    X, ys = _data()
    # diagnostics_every=1 forces per-task gradients at every step; 0 uses one weighted backward
    for agg_fn in (lambda: Equal(), lambda: Equal("mean"), lambda: Fixed([0.2, 1.0, 3.0]), lambda: Uncertainty(3)):
        a = _trainer(agg_fn(), diagnostics_every=0)
        b = _trainer(agg_fn(), diagnostics_every=1)
        a.fit((X, ys), steps=6, batch_size=32, progress=False)
        b.fit((X, ys), steps=6, batch_size=32, progress=False)
        torch.testing.assert_close(_params(a.model), _params(b.model), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("agg", [Equal(), PCGrad(), MGDA(), CAGrad(), IMTLG(), GradNorm(3), Uncertainty(3),
                                 Fixed([1.0, 0.5, 0.25])], ids=lambda a: type(a).__name__)
def test_every_aggregator_trains(agg):
    X, ys = _data(n=128)
    tr = _trainer(agg, log_every=5, diagnostics_every=2)
    first = {t: F.cross_entropy(tr.model(X)[t], ys[t]).item() for t in TASKS}
    tr.fit((X, ys), steps=40, batch_size=32, progress=False)
    last = {t: F.cross_entropy(tr.model(X)[t], ys[t]).item() for t in TASKS}
    assert all(torch.isfinite(p).all() for p in tr.model.parameters())
    assert sum(last.values()) < 0.8 * sum(first.values()), (first, last)
    assert len(tr.history) == 8 and set(tr.history[-1]) == {"step", *TASKS}
    d = tr.diagnostics()
    assert d["pair_probes"][0][1] == 20


def test_heads_get_only_their_task_gradient():
    X, ys = _data()
    agg = _Capture()
    tr = _trainer(agg, opt="sgd", lr=1.0, diagnostics_every=0)
    m = tr.model
    before = {t: [p.detach().clone() for p in m.heads[t].parameters()] for t in TASKS}
    m.zero_grad()
    F.cross_entropy(m(X[:32], tasks=["b"])["b"], ys["b"][:32]).backward()
    gb = [p.grad.clone() for p in m.heads["b"].parameters()]
    m.zero_grad()
    tr.step(X[:32], {t: y[:32] for t, y in ys.items()})
    for p0, p, g in zip(before["b"], m.heads["b"].parameters(), gb):
        torch.testing.assert_close(p0 - g, p.detach(), rtol=1e-5, atol=1e-7)


def test_mgda_ub_uses_representation_gradients():
    X, ys = _data()
    tr = _trainer(MGDA(), opt="sgd", lr=1.0, mgda_ub=True, diagnostics_every=0)
    m = tr.model
    ref = _model()
    ref.load_state_dict(m.state_dict())
    x, yb = X[:32], {t: y[:32] for t, y in ys.items()}
    # by hand: Gram of dL_i/dz, min-norm weights, one backward of sum w_i L_i through the trunk
    z = ref.representation(x)
    zd = z.detach().requires_grad_()
    Ls = [F.cross_entropy(ref.heads[t](zd), yb[t]) for t in TASKS]
    Gz = torch.stack([torch.autograd.grad(L, zd, retain_graph=True)[0].reshape(-1) for L in Ls])
    w = A.min_norm_weights(Gz.double() @ Gz.double().T).float()
    z.backward((w @ Gz).view_as(z))
    sum(Ls).backward()
    with torch.no_grad():
        for p in ref.parameters():
            p -= p.grad
    tr.step(x, yb)
    torch.testing.assert_close(_params(m), _params(ref), rtol=1e-4, atol=1e-6)
    # loss-normalised MGDA gets its losses on this path too
    for norm in ("loss", "loss+"):
        _trainer(MGDA(normalize=norm), mgda_ub=True, diagnostics_every=1).step(x, yb)
    frozen = _model()
    frozen.trunk.requires_grad_(False)
    with pytest.raises(ValueError, match="needs shared parameters"):
        _trainer(MGDA(), frozen, mgda_ub=True)


def test_task_sampling():
    X, ys = _data()
    tr = _trainer(PCGrad(), tasks_per_step=1, diagnostics_every=0)
    seen = set()
    for _ in range(12):
        before = {t: _params(tr.model.heads[t]).clone() for t in TASKS}
        out = tr.step(X[:16], {t: y[:16] for t, y in ys.items()})
        assert len(out) == 1
        (t,) = out
        seen.add(t)
        moved = [u for u in TASKS if not torch.equal(before[u], _params(tr.model.heads[u]))]
        assert moved == [t]
    assert seen == set(TASKS)
    # the logged means are over the steps each task took part in
    tr = _trainer(PCGrad(), lr=0.0, tasks_per_step=1, diagnostics_every=0, log_every=30)
    got = {t: [] for t in TASKS}
    for _ in range(30):
        for t, v in tr.step(X[:16], {t: y[:16] for t, y in ys.items()}).items():
            got[t].append(v)
    for t in TASKS:
        want = sum(got[t]) / len(got[t]) if got[t] else float("nan")
        assert tr.history[-1][t] == pytest.approx(want, rel=1e-6, nan_ok=True)
    with pytest.raises(ValueError, match="per-task state"):
        _trainer(GradNorm(3), tasks_per_step=2)


def test_per_task_inputs():
    X, ys = _data()
    data = {t: (X[i * 20:(i + 1) * 20 + 40], ys[t][i * 20:(i + 1) * 20 + 40]) for i, t in enumerate(TASKS)}
    tr = _trainer(MGDA(), diagnostics_every=3)
    tr.fit(data, steps=10, batch_size=16, progress=False)
    assert tr.step_count == 10 and set(tr._streams) == set(TASKS)
    with pytest.raises(ValueError, match="shared input"):
        _trainer(MGDA(), mgda_ub=True).step({t: X[:8] for t in TASKS}, {t: y[:8] for t, y in ys.items()})


class _Opposed(nn.Module):
    """Two regression tasks on one linear map, targets y and -2y: gradients exactly opposed."""

    tasks = ["up", "down"]

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 1)

    def forward(self, x, tasks=None):
        z = self.lin(x).squeeze(1)
        return {t: z for t in (tasks or self.tasks)}

    def shared_parameters(self):
        return list(self.lin.parameters())

    def task_parameters(self, task):
        return []


def test_diagnostics_count_conflicts_and_pcgrad_removes_them():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(64, 4, generator=g)
    y = X @ torch.randn(4, generator=g)
    ys = {"up": y, "down": -2 * y}
    out = {}
    for name, agg in (("equal", Equal()), ("pcgrad", PCGrad())):
        torch.manual_seed(0)
        m = _Opposed()
        with torch.no_grad():
            m.lin.weight.zero_()
            m.lin.bias.zero_()
        tr = MultiTaskTrainer(m, agg, torch.optim.SGD(m.parameters(), lr=1e-3), F.mse_loss,
                              diagnostics_every=1)
        tr.fit((X, ys), steps=5, batch_size=16, progress=False)
        out[name] = tr.diagnostics()
        assert "up / down" in tr.conflict_table()
    for d in out.values():
        assert d["pair_probes"][0][1] == 5 and d["pair_conflict_frac"][0][1] == 1.0
        assert d["pair_mean_cos"][0][1] == pytest.approx(-1.0, abs=1e-5)
    # equal weighting: the larger task wins, the update opposes "up" every time
    assert out["equal"]["update_conflict_frac"] == [1.0, 0.0]
    assert out["equal"]["pair_conflict_after_frac"][0][1] == 1.0
    # PCGrad: no update opposes a task and no projected pair conflicts
    assert out["pcgrad"]["update_conflict_frac"] == [0.0, 0.0]
    assert out["pcgrad"]["pair_conflict_after_frac"][0][1] == 0.0


def _fit_pieces(tmp_path, agg_fn, split):
    X, ys = _data(n=80)

    def fresh():
        m = _model(dropout=0.2)
        return MultiTaskTrainer(m, agg_fn(), torch.optim.Adam(m.parameters(), lr=0.01), seed=3,
                                diagnostics_every=2, log_every=3)

    torch.manual_seed(123)
    full = fresh().fit((X, ys), steps=13, batch_size=16, progress=False)
    torch.manual_seed(123)
    ck = tmp_path / "ck.pt"
    fresh().fit((X, ys), steps=split, batch_size=16, progress=False, checkpoint=ck, checkpoint_every=4)
    torch.manual_seed(999)  # resume must not depend on the RNG state of the new process
    b = fresh().load(ck)
    assert b.step_count == split
    b.fit((X, ys), steps=13, batch_size=16, progress=False)
    return full, b


@pytest.mark.parametrize("agg_fn", [PCGrad, lambda: GradNorm(3), MGDA, lambda: Uncertainty(3)],
                         ids=["pcgrad", "gradnorm", "mgda", "uncertainty"])
def test_checkpoint_resume_is_exact(tmp_path, agg_fn):
    full, resumed = _fit_pieces(tmp_path, agg_fn, split=6)
    assert torch.equal(_params(full.model), _params(resumed.model))
    assert full.history == resumed.history
    assert full.diagnostics() == resumed.diagnostics()
    assert torch.equal(full.aggregator.state_dict().get("w", torch.zeros(1)),
                       resumed.aggregator.state_dict().get("w", torch.zeros(1)))
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]  # no temporary file left


def test_checkpoint_errors(tmp_path):
    tr = _trainer(Equal())
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        tr.load(tmp_path / "nope.pt")
    tr.save(tmp_path / "x.pt")
    m2 = _model(tasks=("a", "b"))
    other = MultiTaskTrainer(m2, Equal(), torch.optim.SGD(m2.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="tasks"):
        other.load(tmp_path / "x.pt")


def test_trainer_input_errors():
    m = _model()
    with pytest.raises(ValueError, match="optimizer does not hold"):
        MultiTaskTrainer(m, Equal(), torch.optim.SGD(m.trunk.parameters(), lr=0.1))
    bad = _model()
    bad.extra = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="neither shared nor task-specific.*extra"):
        MultiTaskTrainer(bad, Equal(), torch.optim.SGD(bad.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="Gram-based"):
        _trainer(PCGrad(), mgda_ub=True)
    with pytest.raises(ValueError, match="loss_fns has no entry"):
        _trainer(Equal(), loss_fns={"a": F.cross_entropy})
    X, ys = _data()
    tr = _trainer(Equal())
    with pytest.raises(ValueError, match="no labels for task"):
        tr.fit((X, {"a": ys["a"]}), steps=1, batch_size=8, progress=False)
    with pytest.raises(ValueError, match="fewer than batch_size"):
        tr.fit((X, ys), steps=1, batch_size=1000, progress=False)
    for k in (0, len(TASKS) + 1):  # guards the 1..T range check
        with pytest.raises(ValueError, match="tasks_per_step must be in 1..3"):
            _trainer(PCGrad(), tasks_per_step=k)
    dup = _model()
    dup.task_parameters = lambda t: list(dup.heads[t].parameters()) + list(dup.trunk[0].parameters())
    with pytest.raises(ValueError, match="in both shared"):  # a parameter counted twice
        MultiTaskTrainer(dup, Equal(), torch.optim.SGD(dup.parameters(), lr=0.1))


def test_cross_stitch_unit_and_model():
    m = multilenet_cross_stitch(("left", "right"), self_weight=0.9)
    assert len(m.units) == 3
    torch.testing.assert_close(m.units[0].alpha.detach(), torch.tensor([[0.9, 0.1], [0.1, 0.9]]))
    x = torch.rand(4, 1, 28, 28)
    out = m(x)
    assert out["left"].shape == (4, 10) and out["right"].shape == (4, 10)
    F.cross_entropy(out["left"], torch.zeros(4, dtype=torch.long)).backward()
    # the left loss reaches the right column through α, and α itself
    assert m.units[1].alpha.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.columns["right"].parameters())
    # α = identity: the columns are independent single-task networks
    with torch.no_grad():
        for u in m.units:
            u.alpha.copy_(torch.eye(2))
    m.zero_grad()
    F.cross_entropy(m(x)["left"], torch.zeros(4, dtype=torch.long)).backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in m.columns["right"].parameters())
    ids = {id(p) for p in m.shared_parameters()} | {id(p) for t in m.tasks for p in m.task_parameters(t)}
    assert ids == {id(p) for p in m.parameters()}


def test_heads_at_depths():
    m = word_mlp_depths({"pos": 4, "supersense": 45}, {"pos": 1, "supersense": 2}, d_in=10, hidden=12)
    x = torch.randn(5, 10)
    out = m(x)
    assert out["pos"].shape == (5, 4) and out["supersense"].shape == (5, 45)
    agg = _Capture()
    tr = MultiTaskTrainer(m, agg, torch.optim.SGD(m.parameters(), lr=0.1), diagnostics_every=0)
    tr.step(x, {"pos": torch.zeros(5, dtype=torch.long), "supersense": torch.ones(5, dtype=torch.long)})
    n1 = sum(p.numel() for p in m.stages[0].parameters())
    pos_row, ss_row = agg.G
    assert pos_row[n1:].abs().sum() == 0 and pos_row[:n1].abs().sum() > 0  # POS never sees layer 2
    assert ss_row[n1:].abs().sum() > 0
    with pytest.raises(ValueError, match="depths"):
        HeadsAtDepths([nn.Linear(2, 2)], {"a": nn.Linear(2, 2)}, {"a": 2})
    # a stage no head reads would be "shared" yet never trained
    with pytest.raises(ValueError, match="no head reads past stage 1 of 2"):
        HeadsAtDepths([nn.Linear(2, 2), nn.Linear(2, 2)], {"a": nn.Linear(2, 2)}, {"a": 1})
    assert len(word_mlp_depths({"pos": 4, "supersense": 45}, {"pos": 1, "supersense": 1}, d_in=10, hidden=12).stages) == 1


def test_cross_stitch_generic_shapes():
    m = CrossStitch(["a", "b", "c"], lambda: [nn.Linear(3, 5), nn.Linear(5, 4)],
                    {t: nn.Linear(4, 2) for t in "abc"}, self_weight=0.8)
    a = m.units[0].alpha.detach()
    torch.testing.assert_close(a.sum(1), torch.ones(3))
    assert m(torch.randn(7, 3), tasks=["b"])["b"].shape == (7, 2)
    with pytest.raises(KeyError, match="unknown task"):
        m(torch.randn(2, 3), tasks=["z"])


def test_evaluate():
    X, ys = _data()
    m = _model()
    acc = evaluate(m, X, {t: ys[t] for t in ("a", "b")}, batch_size=7)
    out = m(X)
    for t in ("a", "b"):
        assert acc[t] == pytest.approx((out[t].argmax(1) == ys[t]).float().mean().item())


def test_shared_data_loaders_and_multilenet(shared_data):
    X, ys = load_multidigits("test", root=shared_data / "mtl", limit=64)
    assert X.shape == (64, 1, 28, 28) and X.dtype == torch.float32 and 0 <= float(X.min()) <= float(X.max()) <= 1
    assert set(ys) == {"left", "right"} and ys["left"].dtype == torch.int64 and int(ys["left"].max()) <= 9
    m = multilenet()
    tr = MultiTaskTrainer(m, PCGrad(), torch.optim.Adam(m.parameters(), lr=1e-3), diagnostics_every=1)
    tr.fit((X, ys), steps=2, batch_size=32, progress=False)
    assert tr.diagnostics()["pair_probes"][0][1] == 2
    W, yw = load_wordtasks("val", root=shared_data / "mtl", limit=50)
    assert W.shape == (50, 384) and W.dtype == torch.float32
    assert int(yw["pos"].max()) < 4 and int(yw["supersense"].max()) < 45
    with pytest.raises(ValueError, match="split"):
        load_wordtasks("dev", root=shared_data / "mtl")
    with pytest.raises(FileNotFoundError, match="multidigits.npz"):
        load_multidigits("test", root=shared_data)


def test_batched_grad_mode_matches_loop_including_heads():
    # the batched backward must give each head its own task's gradient row (not row 0's)
    X, ys = _data()
    x, yb = X[:32], {t: y[:32] for t, y in ys.items()}
    models = []
    for mode in ("loop", "batched"):
        tr = _trainer(_Capture(), opt="sgd", lr=0.5, grad_mode=mode, diagnostics_every=0)
        tr.step(x, yb)
        models.append(tr.model)
    for t in TASKS:
        torch.testing.assert_close(_params(models[0].heads[t]), _params(models[1].heads[t]), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(_params(models[0]), _params(models[1]), rtol=1e-5, atol=1e-7)


def test_unused_parameters_get_zero_not_stale_gradients(monkeypatch):
    # buffers come from torch.empty: poison them so a missing zero-fill for a None gradient
    # (a step on POS alone never reaches stage 2) shows up as NaN instead of reading zeros
    real_empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda *a, **k: real_empty(*a, **k).fill_(float("nan")))
    for mode, agg in (("loop", _Capture()), ("batched", _Capture()), ("loop", Equal())):
        torch.manual_seed(0)
        m = word_mlp_depths({"pos": 4, "supersense": 5}, {"pos": 1, "supersense": 2}, d_in=6, hidden=8)
        tr = MultiTaskTrainer(m, agg, torch.optim.SGD(m.parameters(), lr=0.1), grad_mode=mode, diagnostics_every=0)
        stage2 = _params(m.stages[1]).clone()
        x = real_empty(5, 6).normal_()
        tr.step(x, {"pos": torch.zeros(5, dtype=torch.long)}, tasks=["pos"])
        n1 = sum(p.numel() for p in m.stages[0].parameters())
        if isinstance(agg, _Capture):
            assert torch.isfinite(agg.G).all() and agg.G[0, n1:].abs().sum() == 0, mode
        assert all(torch.isfinite(p).all() for p in m.parameters()), mode
        assert torch.equal(_params(m.stages[1]), stage2), mode


def test_mgda_ub_with_fixed_weights_is_the_weighted_loss_step():
    # trunk gets sum w_i dL_i/dz backpropagated, and each head w_i * its own gradient:
    # together exactly one SGD step on sum_i w_i L_i
    X, ys = _data()
    w = [0.2, 1.0, 3.0]
    tr = _trainer(Fixed(w), opt="sgd", lr=0.5, mgda_ub=True, diagnostics_every=0)
    ref = _model()
    ref.load_state_dict(tr.model.state_dict())
    x, yb = X[:32], {t: y[:32] for t, y in ys.items()}
    sum(wi * F.cross_entropy(ref(x)[t], yb[t]) for wi, t in zip(w, TASKS)).backward()
    with torch.no_grad():
        for p in ref.parameters():
            p -= 0.5 * p.grad
    tr.step(x, yb)
    torch.testing.assert_close(_params(tr.model), _params(ref), rtol=1e-5, atol=1e-6)


def test_mgda_ub_diagnostics_use_representation_gradients():
    X, ys = _data()
    tr = _trainer(MGDA(), opt="sgd", lr=0.1, mgda_ub=True, diagnostics_every=1)
    m = tr.model
    x, yb = X[:32], {t: y[:32] for t, y in ys.items()}
    zd = m.representation(x).detach().double().requires_grad_()
    heads = {t: nn.Linear(8, 3).double() for t in TASKS}
    for t in TASKS:
        heads[t].load_state_dict(m.heads[t].state_dict())
    Gz = torch.stack([torch.autograd.grad(F.cross_entropy(heads[t](zd), yb[t]), zd)[0].reshape(-1) for t in TASKS])
    w = A.min_norm_weights(Gz @ Gz.T)
    d = w @ Gz
    nrm = Gz.norm(dim=1)
    cos = (Gz @ Gz.T) / (nrm[:, None] * nrm[None, :])
    ucos = (Gz @ d) / (nrm * d.norm())  # cosine of the update with each task's gradient
    L = [F.cross_entropy(heads[t](zd), yb[t]).item() for t in TASKS]
    out = tr.step(x, yb)
    assert [out[t] for t in TASKS] == pytest.approx(L, rel=1e-5)  # the raw losses come back
    (probe,) = tr.probes
    torch.testing.assert_close(torch.tensor(probe["cos"], dtype=torch.float64), cos, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.tensor(probe["update_cos"], dtype=torch.float64), ucos, rtol=1e-4, atol=1e-5)


class _Orthogonal(_Opposed):
    """Two regression tasks on disjoint rows of one linear map: gradients exactly orthogonal."""

    tasks = ["a", "b"]

    def __init__(self):
        nn.Module.__init__(self)
        self.lin = nn.Linear(4, 2)

    def forward(self, x, tasks=None):
        z = self.lin(x)
        return {t: z[:, i] for i, t in enumerate(self.tasks) if t in (tasks or self.tasks)}


def test_orthogonal_gradients_are_not_conflicts():
    # cos == 0 exactly is no conflict (strict cos < 0), and the update helps both tasks
    g = torch.Generator().manual_seed(0)
    X = torch.randn(32, 4, generator=g)
    ys = {"a": X[:, 0] + 1, "b": -X[:, 1]}
    m = _Orthogonal()
    tr = MultiTaskTrainer(m, Equal(), torch.optim.SGD(m.parameters(), lr=1e-2), F.mse_loss, diagnostics_every=1)
    tr.fit((X, ys), steps=4, batch_size=16, progress=False)
    d = tr.diagnostics()
    assert d["pair_probes"][0][1] == 4
    assert d["pair_conflict_frac"][0][1] == 0.0 and d["pair_conflict_after_frac"][0][1] == 0.0
    assert d["pair_mean_cos"][0][1] == 0.0
    assert d["update_conflict_frac"] == [0.0, 0.0]


def test_log_windows_and_probe_schedule():
    # each history entry is the mean over its own log_every window (accumulators reset);
    # probes run at steps 0, k, 2k, ...
    X, ys = _data()
    tr = _trainer(Equal(), log_every=3, diagnostics_every=3)
    got = []
    for s in range(9):
        b = slice(8 * s, 8 * s + 8)
        got.append(tr.step(X[b], {t: y[b] for t, y in ys.items()}))
    assert [h["step"] for h in tr.history] == [3, 6, 9]
    for k, h in enumerate(tr.history):
        for t in TASKS:
            assert h[t] == pytest.approx(sum(o[t] for o in got[3 * k: 3 * k + 3]) / 3, rel=1e-6)
    assert [p["step"] for p in tr.probes] == [0, 3, 6]


def test_fit_batches_are_epochs_without_replacement():
    # n = 2 batches exactly: each epoch's two batches partition the rows; epoch counts them
    n, bs = 32, 16
    X, ys = _data(n=n)
    seen = []

    def rec(out, y):
        seen.append(y.clone())
        return F.cross_entropy(out, y % 3)

    lab = {t: torch.arange(n) for t in TASKS}
    tr = _trainer(Equal(), loss_fns={"a": rec, "b": lambda o, y: F.cross_entropy(o, y % 3),
                                     "c": lambda o, y: F.cross_entropy(o, y % 3)}, diagnostics_every=0)
    epochs = []
    for s in range(1, 7):
        tr.fit((X, lab), steps=s, batch_size=bs, progress=False)
        epochs.append(tr.epoch)
    assert epochs == pytest.approx([0.5, 1.0, 1.5, 2.0, 2.5, 3.0])
    assert len(seen) == 6 and all(len(b) == bs for b in seen)
    for e in range(3):
        assert sorted(torch.cat(seen[2 * e: 2 * e + 2]).tolist()) == list(range(n))


def test_zero_gradient_task_has_zero_not_nan_cosines():
    # task "b" is already fit (zero weights, zero targets): its gradient is 0, its cosines 0
    g = torch.Generator().manual_seed(0)
    X = torch.randn(16, 4, generator=g)
    m = _Orthogonal()
    with torch.no_grad():
        m.lin.weight.zero_()
        m.lin.bias.zero_()
    tr = MultiTaskTrainer(m, Equal(), torch.optim.SGD(m.parameters(), lr=1e-2), F.mse_loss, diagnostics_every=1)
    tr.step(X, {"a": X[:, 0] + 1, "b": torch.zeros(16)})
    (probe,) = tr.probes
    assert probe["cos"] == [[1.0, 0.0], [0.0, 0.0]]
    assert probe["update_cos"][1] == 0.0 and probe["update_cos"][0] == pytest.approx(1.0)
    assert tr.diagnostics()["pair_mean_cos"] == [[1.0, 0.0], [0.0, 0.0]]


def test_resume_mid_log_window_keeps_partial_means_and_probes(tmp_path):
    # split 7 with log_every=3: the checkpoint holds one step of an unfinished window
    full, resumed = _fit_pieces(tmp_path, PCGrad, split=7)
    assert torch.equal(_params(full.model), _params(resumed.model))
    assert full.history == resumed.history and len(full.history) == 4
    assert full.probes == resumed.probes and len(full.probes) == 7


def test_sampled_tasks_count_only_their_probes():
    # with tasks_per_step, a pair is probed only on steps where both tasks were drawn
    X, ys = _data()
    tr = _trainer(MGDA(), tasks_per_step=2, diagnostics_every=1)
    drawn = []
    for s in range(8):
        drawn.append(set(tr.step(X[:16], {t: y[:16] for t, y in ys.items()})))
    d = tr.diagnostics()
    for i, a in enumerate(TASKS):
        assert d["update_probes"][i] == sum(a in s for s in drawn)
        for j, b in enumerate(TASKS):
            assert d["pair_probes"][i][j] == sum(a in s and b in s for s in drawn)
    assert 0 < d["pair_probes"][0][1] < 8


def test_evaluate_is_deterministic_and_step_trains():
    # evaluate switches dropout off; the next step switches it back on
    X, ys = _data()
    tr = _trainer(Equal(), model=_model(dropout=0.5), diagnostics_every=0)
    m = tr.model
    a = evaluate(m, X, ys, batch_size=32)
    b = evaluate(m, X, ys, batch_size=32)
    assert a == b and not m.training
    with torch.no_grad():
        out = {t: v.argmax(1) for t, v in m(X).items()}  # m is in eval mode here
    assert a == {t: pytest.approx((out[t] == ys[t]).float().mean().item()) for t in TASKS}
    tr.step(X[:16], {t: y[:16] for t, y in ys.items()})
    assert m.training


def test_step_weights_follow_the_task_not_its_position():
    # Fixed weights belong to the model's tasks: naming them in another order must not swap them
    X, ys = _data()
    after = []
    for order in (["a", "b", "c"], ["c", "a", "b"]):
        tr = _trainer(Fixed([1.0, 0.0, 0.0]), opt="sgd", diagnostics_every=0)
        tr.step(X, ys, tasks=order)
        after.append(_params(tr.model))
    assert torch.equal(after[0], after[1])
    tr = _trainer(Fixed([1.0, 0.0, 0.0]), diagnostics_every=0)
    with pytest.raises(ValueError, match="given twice"):
        tr.step(X, ys, tasks=["a", "a", "b"])
    with pytest.raises(ValueError, match=r"ys: no labels for task\(s\) \['c'\]"):
        tr.step(X, {t: ys[t] for t in "ab"}, tasks=["a", "b", "c"])
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        tr.fit((X, ys), steps=1, batch_size=0)
