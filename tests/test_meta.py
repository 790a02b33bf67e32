"""pyzsl.meta: MAML meta-gradients against float64 references, samplers, trainer, aggregators."""
from __future__ import annotations


import pytest
import torch
from torch import nn
from torch.nn import functional as F

from pyzsl.meta import MAML, EpisodeSampler, MetaTrainer, SinusoidTasks, maml_loss

D = torch.float64


def tiny_net(seed: int = 0, dtype: torch.dtype = D) -> nn.Module:
    torch.manual_seed(seed)
    # tanh: a non-zero Hessian, so second order and first order really differ
    return nn.Sequential(nn.Linear(2, 5), nn.Tanh(), nn.Linear(5, 3), nn.Tanh(),
                         nn.Linear(3, 1)).to(dtype)


def tasks(n: int = 3, k: int = 4, q: int = 6, seed: int = 1, dtype: torch.dtype = D):
    g = torch.Generator().manual_seed(seed)
    sx, qx = torch.randn(n, k, 2, generator=g, dtype=dtype), torch.randn(n, q, 2, generator=g,
                                                                         dtype=dtype)
    w = torch.randn(n, 2, 1, generator=g, dtype=dtype)
    return sx, torch.sin(sx @ w), qx, torch.sin(qx @ w)


def reference_meta_grad(model: nn.Module, sx, sy, qx, qy, lr: float, steps: int,
                        first_order: bool, adapted: list[int] | None = None) -> list[torch.Tensor]:
    """The textbook loop on plain tensors: explicit forward, autograd.grad(create_graph=True).

    ``adapted``: indices (in ``model.parameters()`` order) of the tensors the inner loop adapts
    (default all); the others enter the support and query losses unadapted (ANIL)."""
    theta = [p.detach().clone().requires_grad_(True) for p in model.parameters()]
    idx = list(range(len(theta))) if adapted is None else adapted

    def fwd(ps, x):
        h = torch.tanh(x @ ps[0].T + ps[1])
        h = torch.tanh(h @ ps[2].T + ps[3])
        return h @ ps[4].T + ps[5]

    total = 0.0
    for t in range(sx.shape[0]):
        ps = list(theta)
        for _ in range(steps):
            if first_order:  # every input of the inner gradient detached, the fixed ones too
                at = [p.detach().requires_grad_(True) for p in ps]
                g = torch.autograd.grad(F.mse_loss(fwd(at, sx[t]), sy[t]), [at[i] for i in idx])
            else:
                g = torch.autograd.grad(F.mse_loss(fwd(ps, sx[t]), sy[t]), [ps[i] for i in idx],
                                        create_graph=True)
            ps = list(ps)
            for i, gi in zip(idx, g):
                ps[i] = ps[i] - lr * gi
        total = total + F.mse_loss(fwd(ps, qx[t]), qy[t])
    return list(torch.autograd.grad(total / sx.shape[0], theta))


def fo_definition(model: nn.Module, sx, sy, qx, qy, lr: float, steps: int) -> list[torch.Tensor]:
    """FO-MAML by its definition: mean over tasks of the query gradient at the adapted θ'."""
    out = [torch.zeros_like(p) for p in model.parameters()]
    for t in range(sx.shape[0]):
        m = tiny_net()
        m.load_state_dict(model.state_dict())
        opt = torch.optim.SGD(m.parameters(), lr=lr)
        for _ in range(steps):
            opt.zero_grad()
            F.mse_loss(m(sx[t]), sy[t]).backward()
            opt.step()
        g = torch.autograd.grad(F.mse_loss(m(qx[t]), qy[t]), list(m.parameters()))
        out = [o + gi / sx.shape[0] for o, gi in zip(out, g)]
    return out


def rel_err(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    num = torch.sqrt(sum(((x - y) ** 2).sum() for x, y in zip(a, b)))
    return float(num / torch.sqrt(sum((y ** 2).sum() for y in b)))


def ours(model, batch, lr, steps, first_order, vectorize=True):
    model.zero_grad()
    maml_loss(model, *batch, F.mse_loss, lr, steps, first_order, vectorize=vectorize).backward()
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("vectorize", [True, False])
@pytest.mark.parametrize("steps", [1, 3])
def test_second_order_equals_double_backward_reference(vectorize, steps):
    model, batch = tiny_net(), tasks()
    got = ours(model, batch, 0.3, steps, False, vectorize)
    ref = reference_meta_grad(model, *batch, 0.3, steps, False)
    assert rel_err(got, ref) < 1e-10
    # and the Hessian terms matter here: first order is far from it
    fo = reference_meta_grad(model, *batch, 0.3, steps, True)
    assert rel_err(fo, ref) > 1e-2


def test_second_order_equals_finite_differences():
    model, batch = tiny_net(), tasks(n=2)
    got = torch.cat([g.flatten() for g in ours(model, batch, 0.3, 2, False)])
    theta = torch.nn.utils.parameters_to_vector(model.parameters()).detach()

    def f(vec):
        torch.nn.utils.vector_to_parameters(vec, model.parameters())
        return float(maml_loss(model, *batch, F.mse_loss, 0.3, 2).detach())

    eps = 1e-6
    fd = torch.empty_like(theta)
    for i in range(theta.numel()):
        e = torch.zeros_like(theta)
        e[i] = eps
        fd[i] = (f(theta + e) - f(theta - e)) / (2 * eps)
    torch.nn.utils.vector_to_parameters(theta, model.parameters())
    assert float((got - fd).norm() / fd.norm()) < 1e-6


@pytest.mark.parametrize("vectorize", [True, False])
@pytest.mark.parametrize("steps", [1, 2])
def test_first_order_equals_definition(vectorize, steps):
    model, batch = tiny_net(), tasks()
    got = ours(model, batch, 0.3, steps, True, vectorize)
    assert rel_err(got, fo_definition(model, *batch, 0.3, steps)) < 1e-10


def test_zero_inner_steps_is_plain_query_loss():
    model, batch = tiny_net(), tasks()
    got = ours(model, batch, 0.3, 0, False)
    model.zero_grad()
    torch.stack([F.mse_loss(model(batch[2][t]), batch[3][t]) for t in range(3)]).mean().backward()
    assert rel_err(got, [p.grad for p in model.parameters()]) < 1e-12


@pytest.mark.parametrize("mode", ["layer", "element"])
def test_learned_inner_lr_gradient(mode):
    model, batch = tiny_net(), tasks()
    maml = MAML(model, 0.3, 2, learn_inner_lr=mode, loss_fn=F.mse_loss)
    with torch.no_grad():  # make the step sizes differ from each other
        for i, p in enumerate(maml.inner_lrs.values()):
            p.mul_(1 + 0.1 * i)
    maml(*batch).backward()
    got = [p.grad.clone() for p in maml.inner_lrs.values()]
    # reference: torch.autograd.gradcheck-style central differences on each step size
    names = list(maml.inner_lrs.keys())
    for name, g in zip(names, got):
        lr = maml.inner_lrs[name]
        fd = torch.empty_like(lr)
        for i in range(lr.numel()):
            with torch.no_grad():
                old = lr.view(-1)[i].item()
                lr.view(-1)[i] = old + 1e-6
                up = float(maml(*batch))
                lr.view(-1)[i] = old - 1e-6
                down = float(maml(*batch))
                lr.view(-1)[i] = old
            fd.view(-1)[i] = (up - down) / 2e-6
        assert torch.allclose(g, fd, rtol=1e-6, atol=1e-9), name
    assert all(g.abs().sum() > 0 for g in got)


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("vectorize", [True, False])
def test_task_gradients_mean_is_meta_gradient(first_order, vectorize):
    model, batch = tiny_net(), tasks(n=4)
    maml = MAML(model, 0.3, 2, first_order, learn_inner_lr=True, loss_fn=F.mse_loss,
                vectorize=vectorize)
    losses, G = maml.task_gradients(*batch)
    P = sum(p.numel() for _, p in maml.outer_parameters())
    assert G.shape == (4, P) and losses.shape == (4,)
    maml.zero_grad()
    maml(*batch).backward()
    want = torch.cat([p.grad.flatten() for _, p in maml.outer_parameters()])
    assert torch.allclose(G.mean(0), want, rtol=1e-10, atol=1e-12)
    # rows are really per task: each row is the gradient of that task alone
    maml.zero_grad()
    maml(*(t[1:2] for t in batch)).backward()
    row1 = torch.cat([p.grad.flatten() for _, p in maml.outer_parameters()])
    assert torch.allclose(G[1], row1, rtol=1e-10, atol=1e-12)


def test_adapt_params_keeps_others_fixed_in_inner_loop():
    model, batch = tiny_net(), tasks()
    maml = MAML(model, 0.3, 1, adapt_params=["4"], loss_fn=F.mse_loss)
    params = maml.adapt(batch[0], batch[1])
    assert set(params) == {"4.weight", "4.bias"}
    # reference: adapt only the last layer by hand
    m = tiny_net()
    feats = m[:4](batch[0])
    W, b = m[4].weight.detach().requires_grad_(), m[4].bias.detach().requires_grad_()
    gW, gb = torch.autograd.grad(F.mse_loss(feats[0].detach() @ W.T + b, batch[1][0]), (W, b))
    assert torch.allclose(params["4.weight"][0], W - 0.3 * gW, atol=1e-12)
    # the outer step still reaches the non-adapted layers
    maml(*batch).backward()
    assert model[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="adapt_params"):
        MAML(model, 0.3, adapt_params=["nope"])


def flat(ts) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in ts])


@pytest.mark.parametrize("first_order", [False, True])
def test_partial_adaptation_meta_gradient_matches_reference(first_order):
    # ANIL: only the last Linear ("4") is adapted, the encoder is meta-learned by the outer step.
    # Guards the vmap path's handling of the non-adapted parameters: second order must keep the
    # encoder inside the inner gradient's graph (its d g / d encoder term), first order must
    # detach it too (no second-order leak), and task_gradients must not drop their columns.
    batch = tasks()
    want = flat(reference_meta_grad(tiny_net(), *batch, 0.3, 2, first_order, adapted=[4, 5]))
    if not first_order:  # the encoder's second-order term is not negligible here
        fo = flat(reference_meta_grad(tiny_net(), *batch, 0.3, 2, True, adapted=[4, 5]))
        assert float((fo - want).norm() / want.norm()) > 1e-2
    got = {}
    for vectorize in (True, False):
        model = tiny_net()
        maml = MAML(model, 0.3, 2, first_order, adapt_params=["4"], loss_fn=F.mse_loss,
                    vectorize=vectorize)
        maml(*batch).backward()
        got[vectorize] = flat(p.grad for p in model.parameters())
        assert torch.allclose(got[vectorize], want, rtol=0, atol=1e-12), vectorize
        # the per-task rows average to the same meta-gradient, encoder columns included
        _, G = maml.task_gradients(*batch)
        assert torch.allclose(G.mean(0), got[vectorize], rtol=0, atol=1e-12), vectorize
    assert torch.allclose(got[True], got[False], rtol=0, atol=1e-12)


def test_sum_reduction_is_tasks_times_mean():
    # reduction="sum" is the sum over the T tasks, not their mean
    model, batch = tiny_net(), tasks(n=3)
    for vectorize in (True, False):
        each = maml_loss(model, *batch, F.mse_loss, 0.3, 2, vectorize=vectorize, reduction="none")
        mean = maml_loss(model, *batch, F.mse_loss, 0.3, 2, vectorize=vectorize)
        total = maml_loss(model, *batch, F.mse_loss, 0.3, 2, vectorize=vectorize, reduction="sum")
        assert each.shape == (3,)
        assert total.item() == pytest.approx(3 * mean.item(), rel=1e-12)
        assert total.item() == pytest.approx(each.detach().sum().item(), rel=1e-12)


@pytest.mark.parametrize("vectorize", [True, False])
def test_adapt_inner_steps_override(vectorize):
    # adapt(inner_steps=k) takes k steps whatever MAML's own inner_steps (here 1)
    model, batch = tiny_net(), tasks()
    maml = MAML(model, 0.3, 1, loss_fn=F.mse_loss, vectorize=vectorize)
    names = [k for k, _ in model.named_parameters()]
    zero = maml.adapt(batch[0], batch[1], inner_steps=0)
    for k, v in model.named_parameters():
        assert zero[k].shape == (3, *v.shape) and torch.equal(zero[k], v.detach().expand_as(zero[k]))
    got = maml.adapt(batch[0], batch[1], inner_steps=3)
    for t in range(3):  # reference: three explicit SGD steps on a copy of the model
        m = tiny_net()
        m.load_state_dict(model.state_dict())
        opt = torch.optim.SGD(m.parameters(), lr=0.3)
        for _ in range(3):
            opt.zero_grad()
            F.mse_loss(m(batch[0][t]), batch[1][t]).backward()
            opt.step()
        for k, v in zip(names, m.parameters()):
            assert torch.allclose(got[k][t], v, rtol=0, atol=1e-12), (k, t)


def test_vmap_and_loop_predictions_agree():
    model, batch = tiny_net(), tasks()
    a = MAML(model, 0.3, 3, loss_fn=F.mse_loss)
    b = MAML(model, 0.3, 3, loss_fn=F.mse_loss, vectorize=False)
    pa, pb = a.adapt(batch[0], batch[1]), b.adapt(batch[0], batch[1])
    assert all(torch.allclose(pa[k], pb[k], atol=1e-12) for k in pa)
    assert torch.allclose(a.predict(pa, batch[2]), b.predict(pb, batch[2]), atol=1e-12)
    # adaptation helps on the support set it adapted to
    before = F.mse_loss(model(batch[0]), batch[1])
    after = F.mse_loss(a.predict(pa, batch[0]), batch[1])
    assert after < before


class TwoHeads(nn.Module):
    """A model whose output is a structure (list of tensors), as multi-head models return."""

    def __init__(self) -> None:
        super().__init__()
        self.body = tiny_net()

    def forward(self, x):
        h = self.body(x)
        return [h, 2 * h]


def test_structured_outputs_are_indexed_by_task_on_both_paths():
    from pyzsl.meta.trainer import evaluate_tasks
    from pyzsl.meta.episodes import TaskBatch

    sx, sy, qx, qy = tasks(n=2)
    batch = TaskBatch(sx, sy, qx, qy)

    def loss(out, y):
        return F.mse_loss(out[0], y)

    got = [evaluate_tasks(MAML(TwoHeads(), 0.3, 2, loss_fn=loss, vectorize=v), batch) for v in (True, False)]
    # the reference: each task on its own
    want = [evaluate_tasks(MAML(TwoHeads(), 0.3, 2, loss_fn=loss),
                           TaskBatch(sx[t:t + 1], sy[t:t + 1], qx[t:t + 1], qy[t:t + 1]))[0] for t in range(2)]
    assert got[0] == pytest.approx(want, rel=1e-12) and got[1] == pytest.approx(want, rel=1e-12)
    out = MAML(TwoHeads(), 0.3, loss_fn=loss, vectorize=False).predict({}, qx)
    assert isinstance(out, list) and out[1].shape == (2, 6, 1)  # the same structure as vmap's
    with pytest.raises(ValueError, match="chunk"):
        evaluate_tasks(MAML(TwoHeads(), 0.3, loss_fn=loss), batch, chunk=0)


def test_evaluation_runs_in_eval_mode_and_restores_the_mode():
    from pyzsl.meta.trainer import evaluate_tasks
    from pyzsl.meta.episodes import TaskBatch

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 16), nn.Dropout(0.5), nn.Linear(16, 1)).to(D)
    m = MAML(model, 0.1, 1, loss_fn=F.mse_loss)
    batch = TaskBatch(*tasks())
    for mode in (True, False):
        m.train(mode)
        a, b = evaluate_tasks(m, batch), evaluate_tasks(m, batch)
        assert (a == b).all()  # dropout off: deterministic
        assert m.training is mode and model[1].training is mode


def test_batchnorm_running_stats_under_vmap_say_what_to_do():
    model = nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4), nn.Linear(4, 1)).to(D)
    sx, sy, qx, qy = tasks()
    m = MAML(model, 0.1, 1, loss_fn=F.mse_loss)
    for call in (lambda: m(sx, sy, qx, qy), lambda: m.adapt(sx, sy), lambda: m.task_gradients(sx, sy, qx, qy)):
        with pytest.raises(ValueError, match=r"'1' \(BatchNorm1d\).*vectorize=False"):
            call()
    MAML(model, 0.1, 1, loss_fn=F.mse_loss, vectorize=False)(sx, sy, qx, qy).backward()  # the loop can
    m.eval()
    m(sx, sy, qx, qy).backward()  # eval mode uses the running statistics: nothing to update


def test_bad_inputs_raise():
    model, batch = tiny_net(), tasks()
    sx, sy, qx, qy = batch
    with pytest.raises(ValueError, match="task"):
        maml_loss(model, sx, sy[:2], qx, qy, F.mse_loss, 0.1)
    with pytest.raises(ValueError, match="inner_steps"):
        maml_loss(model, sx, sy, qx, qy, F.mse_loss, 0.1, inner_steps=-1)
    with pytest.raises(ValueError, match="learn_inner_lr"):
        MAML(model, 0.1, learn_inner_lr="per-step")
    with pytest.raises(ValueError, match="loss_fn"):
        MAML(model, 0.1)(*batch)
    with pytest.raises(ValueError, match="inner_steps"):
        MAML(model, 0.1, loss_fn=F.mse_loss).adapt(sx, sy, inner_steps=-3)


def test_loss_without_double_backward_refuses_second_order():
    model, batch = tiny_net(), tasks()

    def fused_like(out, y):
        return F.mse_loss(out, y)

    fused_like.supports_double_backward = False
    with pytest.raises(ValueError, match="first_order=True"):
        maml_loss(model, *batch, fused_like, 0.1)
    maml_loss(model, *batch, fused_like, 0.1, first_order=True).backward()  # allowed


# -- samplers -------------------------------------------------------------------------------

def test_episode_sampler_shapes_labels_no_repeats():
    X = torch.arange(60, dtype=torch.float32)[:, None].repeat(1, 3)
    y = torch.arange(60) // 6  # 10 classes of 6
    s = EpisodeSampler(X, y, n_way=4, k_shot=2, q_queries=3, classes=[0, 2, 3, 5, 7, 9], seed=3)
    b = s.sample(8)
    assert b.support_x.shape == (8, 8, 3) and b.query_x.shape == (8, 12, 3)
    assert b.support_y[0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    for t in range(8):
        idx = torch.cat([b.info["support_index"][t], b.info["query_index"][t]])
        assert len(set(idx.tolist())) == 20  # without replacement inside an episode
        cls = b.info["classes"][t]
        assert len(set(cls.tolist())) == 4 and set(cls.tolist()) <= {0, 2, 3, 5, 7, 9}
        # every example carries its episode label: original class of row = classes[label]
        assert torch.equal(y[b.info["support_index"][t]], cls[b.support_y[t]])
        assert torch.equal(y[b.info["query_index"][t]], cls[b.query_y[t]])
    again = EpisodeSampler(X, y, 4, 2, 3, classes=[0, 2, 3, 5, 7, 9], seed=3).sample(8)
    assert torch.equal(again.support_x, b.support_x)
    other = EpisodeSampler(X, y, 4, 2, 3, classes=[0, 2, 3, 5, 7, 9], seed=4).sample(8)
    assert not torch.equal(other.support_x, b.support_x)
    with pytest.raises(ValueError, match="class 0 has 6"):
        EpisodeSampler(X, y, 4, 5, 3)
    with pytest.raises(ValueError, match="n_way"):
        EpisodeSampler(X, y, 11, 1, 1)
    with pytest.raises(ValueError, match="integer class ids"):
        EpisodeSampler(X, y, 2, 1, 1, classes=[0.9, 2.7])
    with pytest.raises(ValueError, match=r"ids must be in \[0, 10\); got \[-1, 3\]"):
        EpisodeSampler(X, y - 1, 2, 1, 1, classes=[-1, 3], label_emb=torch.eye(10))
    small = EpisodeSampler(X, y.to(torch.int8), 2, 1, 1).sample(1)  # any integer dtype
    assert small.support_y.dtype == torch.int64


def test_sinusoid_tasks_ranges():
    b = SinusoidTasks(10, 5, seed=0).sample(200)
    a, ph = b.info["amplitude"], b.info["phase"]
    assert b.support_x.shape == (200, 10, 1) and b.query_y.shape == (200, 5, 1)
    assert 0.1 <= a.min() and a.max() <= 5 and 0 <= ph.min() and ph.max() <= torch.pi
    assert b.support_x.abs().max() <= 5
    assert torch.allclose(b.support_y, a[:, None, None] * torch.sin(b.support_x - ph[:, None, None]))


# -- trainer --------------------------------------------------------------------------------

def small_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(1, 16), nn.ReLU(), nn.Linear(16, 1))


def make_trainer(tmp_path, seed_model=0, **kw):
    maml = MAML(small_mlp(seed_model), 0.01, 1, loss_fn=F.mse_loss)
    return MetaTrainer(maml, SinusoidTasks(5, 5, seed=0), meta_batch_size=4, lr=1e-2,
                       val_tasks=SinusoidTasks(5, 20, seed=99), n_val_tasks=10, val_every=3,
                       checkpoint=tmp_path / "ckpt.pt", checkpoint_every=2, progress=False,
                       restore_best=False, **kw)


def test_trainer_learns_and_resumes_exactly(tmp_path):
    full = make_trainer(tmp_path / "a")
    before = full.validate()
    full.fit(40)
    assert full.validate() < before  # it learns

    first = make_trainer(tmp_path / "b")
    first.fit(17)  # "interrupted" run
    resumed = make_trainer(tmp_path / "b", seed_model=5)  # different init, then resume
    resumed.fit(40, resume=True)
    for p, q in zip(full.maml.parameters(), resumed.maml.parameters()):
        assert torch.equal(p, q)
    assert resumed.history["val"] == full.history["val"]
    assert not list((tmp_path / "b").glob(".*tmp*"))  # atomic save left no temporary file
    # save/load by path, as MultiTaskTrainer's (save_checkpoint/load_checkpoint: the old names)
    other = make_trainer(tmp_path / "c")
    assert other.load(resumed.save(tmp_path / "copy.pt")) is other
    assert other.step_count == 40 and other.history["val"] == full.history["val"]
    assert MetaTrainer.save_checkpoint is MetaTrainer.save and MetaTrainer.load_checkpoint is MetaTrainer.load
    with pytest.raises(FileNotFoundError, match="MetaTrainer.load: no checkpoint at"):
        other.load(tmp_path / "none.pt")


def test_trainer_model_selection_restores_best(tmp_path):
    t = make_trainer(tmp_path)
    t.restore_best = True
    t.fit(12)
    assert t.best_score == min(t.history["val"])
    assert abs(t.validate() - t.best_score) < 1e-6


def test_showing_the_best_model_does_not_change_the_training(tmp_path):
    # fit(n) then fit(2n), or a save and load between them, equals one fit(2n) even where the
    # best validation score is not the last one (a large step makes validation jumpy)
    def trainer(name, seed_model=0):
        maml = MAML(small_mlp(seed_model), 0.01, 1, loss_fn=F.mse_loss)
        return MetaTrainer(maml, SinusoidTasks(5, 5, seed=0), meta_batch_size=2, lr=0.2,
                           val_tasks=SinusoidTasks(5, 20, seed=99), n_val_tasks=4, val_every=1,
                           checkpoint=tmp_path / name / "ckpt.pt", progress=False)

    whole = trainer("w").fit(16)
    t = trainer("t").fit(8)
    assert t.best_step < 8  # the shown model is not the live one
    t.fit(16)
    u = trainer("u").fit(8)
    v = trainer("v", seed_model=5).load(u.save(tmp_path / "u8.pt")).fit(16)
    for other in (t, v):
        assert other.history == whole.history
        for p, q in zip(other.maml.parameters(), whole.maml.parameters()):
            assert torch.equal(p, q)


def test_trainer_aggregator_interface(tmp_path):
    seen = []

    def agg(G):  # a small local aggregator: the mean, recorded
        seen.append(G.shape)
        return G.mean(0)

    a = make_trainer(tmp_path / "a", aggregator=agg)
    b = make_trainer(tmp_path / "b")
    la, lb = a.step(a.train_tasks.sample(4)), b.step(b.train_tasks.sample(4))
    assert seen == [(4, sum(p.numel() for p in a.maml.parameters()))]
    assert la == pytest.approx(lb, rel=1e-6)
    for p, q in zip(a.maml.parameters(), b.maml.parameters()):
        assert torch.allclose(p, q, atol=1e-6)

    def first_task_only(G):
        return G[0]

    c = make_trainer(tmp_path / "c", aggregator=first_task_only)
    batch = c.train_tasks.sample(4)
    c.step(batch)
    d = make_trainer(tmp_path / "d")
    single = type(batch)(*(x[:1] for x in (batch.support_x, batch.support_y, batch.query_x,
                                            batch.query_y)))
    d.step(single)
    for p, q in zip(c.maml.parameters(), d.maml.parameters()):
        assert torch.allclose(p, q, atol=1e-6)

    bad = make_trainer(tmp_path / "e", aggregator=lambda G: G)
    with pytest.raises(ValueError, match="expected a tensor of shape"):
        bad.step()


def test_trainer_with_mtl_pcgrad(tmp_path):
    from pyzsl.mtl import aggregators
    from pyzsl.ops import _reference

    T = 4
    order = torch.stack([torch.roll(torch.arange(T), -i) for i in range(T)])
    pc = aggregators.PCGrad(reduction="mean")
    maml = MAML(small_mlp(), 0.01, 1, loss_fn=F.mse_loss)
    before = [p.detach().clone() for p in maml.parameters()]
    trainer = MetaTrainer(maml, SinusoidTasks(5, 5, seed=0), meta_batch_size=T,
                          optimizer=torch.optim.SGD(maml.parameters(), lr=1.0),
                          aggregator=lambda G: pc(G, order=order), progress=False)
    batch = trainer.train_tasks.sample(T)
    _, G = MAML(small_mlp(), 0.01, 1, loss_fn=F.mse_loss).task_gradients(
        batch.support_x, batch.support_y, batch.query_x, batch.query_y)
    want = _reference.pcgrad(G.double(), order, reduction="mean")
    assert (G @ G.T < 0).any()  # the tasks do conflict, so PCGrad is not the mean here
    assert not torch.allclose(want, G.double().mean(0), atol=1e-6)
    trainer.step(batch)
    got = torch.cat([(b - p.detach()).flatten() for b, p in zip(before, maml.parameters())])
    assert torch.allclose(got.double(), want, rtol=1e-4, atol=1e-6)
    # the aggregator's state (pyzsl.mtl modules have a state_dict) goes into checkpoints
    trainer.checkpoint = tmp_path / "ckpt.pt"
    trainer.aggregator = pc
    trainer.save()
    state = torch.load(tmp_path / "ckpt.pt", weights_only=False)
    assert state["aggregator"] is not None and state["step"] == 1


def test_maml_refuses_bad_step_settings():
    for kw, match in ((dict(inner_lr=float("nan")), "inner_lr must be a finite number"),
                      (dict(inner_lr=0.1, inner_steps=1.5), "inner_steps must be an int"),
                      (dict(inner_lr=0.1, inner_steps=True), "inner_steps must be an int")):
        with pytest.raises(ValueError, match=match):
            MAML(nn.Linear(2, 2), **kw)
