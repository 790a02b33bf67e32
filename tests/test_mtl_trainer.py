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
