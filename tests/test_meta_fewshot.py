"""pyzsl.meta few-shot parts: bilinear metric head on the fused hinge loss, baselines, wordcats."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pyzsl.meta import MAML, EpisodeSampler, TaskBatch, evaluate_tasks, maml_loss
from pyzsl.meta.baselines import (finetune_predict, nearest_class_mean, nearest_neighbour,
                                  pretrain_classifier, prototypes)
from pyzsl.meta.heads import (BilinearHingeLoss, BilinearMetricHead, bilinear_accuracy,
                              bilinear_maml)

D = torch.float64


def bilinear_tasks(n=3, way=4, k=3, q=5, d=6, seed=0, dtype=D):
    g = torch.Generator().manual_seed(seed)
    T = torch.randn(n, way, d, generator=g, dtype=dtype)
    sy = torch.arange(way).repeat_interleave(k).expand(n, -1).contiguous()
    qy = torch.arange(way).repeat_interleave(q).expand(n, -1).contiguous()
    # inputs near their class's label embedding, so the head has something to learn
    sx = T.gather(1, sy[..., None].expand(-1, -1, d)) + 0.8 * torch.randn(n, way * k, d, generator=g,
                                                                           dtype=dtype)
    qx = T.gather(1, qy[..., None].expand(-1, -1, d)) + 0.8 * torch.randn(n, way * q, d, generator=g,
                                                                           dtype=dtype)
    return sx, sy, qx, qy, T


def head_with_encoder(seed=0, d=6):
    torch.manual_seed(seed)
    enc = nn.Sequential(nn.Linear(d, d), nn.Tanh()).to(D)
    h = BilinearMetricHead(d, d, enc).to(D)
    with torch.no_grad():
        h.M.add_(0.1 * torch.randn(d, d, dtype=D))
    return h


def meta_grad(head, loss, first_order, steps=2, adapt=("M",)):
    sx, sy, qx, qy, T = bilinear_tasks()
    m = MAML(head, 0.2, steps, first_order, loss_fn=loss, vectorize=False,
             adapt_params=list(adapt))
    head.zero_grad()
    m(sx, sy, qx, qy, context=T).backward()
    return [p.grad.clone() for p in head.parameters()]


def test_fused_loss_refuses_second_order():
    head = head_with_encoder()
    with pytest.raises(ValueError, match="first_order=True"):
        bilinear_maml(head, 0.1, 1, first_order=False)
    sx, sy, qx, qy, T = bilinear_tasks()
    with pytest.raises(ValueError, match="no double backward"):
        maml_loss(head, sx, sy, qx, qy, BilinearHingeLoss(impl="fused"), 0.1, context=T,
                  vectorize=False)
    bilinear_maml(head, 0.1, 1, first_order=False, loss=BilinearHingeLoss(impl="reference"))


def test_fused_first_order_meta_gradient_equals_reference_loss():
    head = head_with_encoder()
    fused = meta_grad(head, BilinearHingeLoss(impl="fused"), True)
    ref = meta_grad(head, BilinearHingeLoss(impl="reference"), True)
    for a, b in zip(fused, ref):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)
    assert all(g.abs().sum() > 0 for g in fused)  # encoder and M both get a meta-gradient


def test_reference_loss_second_order_differs_from_first_order():
    # the inner gradient w.r.t. M depends on the encoder, so second order adds real terms
    head = head_with_encoder()
    so = meta_grad(head, BilinearHingeLoss(impl="reference"), False)
    fo = meta_grad(head, BilinearHingeLoss(impl="reference"), True)
    assert not torch.allclose(so[1], fo[1], atol=1e-8)  # encoder weight


def test_zero_steps_is_zero_shot_label_embedding_classifier():
    sx, sy, qx, qy, T = bilinear_tasks()
    m = bilinear_maml(BilinearMetricHead(6, 6).to(D), 0.1, 0)
    got = evaluate_tasks(m, TaskBatch(sx, sy, qx, qy, T), bilinear_accuracy)
    want = [(torch.argmax(qx[t] @ T[t].T, 1) == qy[t]).double().mean().item() for t in range(3)]
    assert np.allclose(got, want)
    # and a few inner steps on the support set lower the support loss
    adapted = bilinear_maml(BilinearMetricHead(6, 6).to(D), 0.1, 5)
    p0, p5 = m.adapt(sx, sy, context=T), adapted.adapt(sx, sy, context=T)
    loss = BilinearHingeLoss(impl="reference")
    before = sum(float(loss((sx[t], p0["M"][t], T[t]), sy[t])) for t in range(3))
    after = sum(float(loss((sx[t], p5["M"][t], T[t]), sy[t])) for t in range(3))
    assert after < before


# -- baselines ------------------------------------------------------------------------------

def test_nearest_class_mean_and_neighbour_match_numpy():
    g = torch.Generator().manual_seed(0)
    sx, qx = torch.randn(15, 7, generator=g, dtype=D), torch.randn(11, 7, generator=g, dtype=D)
    sy = torch.arange(5).repeat_interleave(3)
    S, Q = sx.numpy(), qx.numpy()
    Su, Qu = S / np.linalg.norm(S, axis=1, keepdims=True), Q / np.linalg.norm(Q, axis=1,
                                                                              keepdims=True)
    P = np.stack([Su[sy.numpy() == c].mean(0) for c in range(5)])
    P /= np.linalg.norm(P, axis=1, keepdims=True)
    assert nearest_class_mean(sx, sy, qx, 5).tolist() == np.argmax(Qu @ P.T, 1).tolist()
    Pe = np.stack([S[sy.numpy() == c].mean(0) for c in range(5)])
    d2 = ((Q[:, None] - Pe[None]) ** 2).sum(-1)
    assert nearest_class_mean(sx, sy, qx, 5, "euclidean").tolist() == np.argmin(d2, 1).tolist()
    assert nearest_neighbour(sx, sy, qx).tolist() == sy.numpy()[np.argmax(Qu @ Su.T, 1)].tolist()
    d2n = ((Q[:, None] - S[None]) ** 2).sum(-1)
    assert (nearest_neighbour(sx, sy, qx, "euclidean").tolist()
            == sy.numpy()[np.argmin(d2n, 1)].tolist())
    with pytest.raises(ValueError, match="each label"):
        prototypes(sx, torch.zeros(15, dtype=torch.int64), 5)


def test_finetune_one_step_from_zero_head_is_dot_product_prototypes():
    # one SGD step of cross-entropy from a zero head: W = lr/S Σ (onehot - 1/N) φᵀ, b = 0, so
    # the argmax is that of μ_c·φ(q) -- a check that the baseline really trains the head
    g = torch.Generator().manual_seed(1)
    sx, qx = torch.randn(2, 10, 4, generator=g, dtype=D), torch.randn(2, 8, 4, generator=g, dtype=D)
    sy = torch.arange(5).repeat_interleave(2).expand(2, -1).contiguous()
    body = nn.Sequential(nn.Linear(4, 6), nn.Tanh()).to(D)
    pred = finetune_predict(body, 6, sx, sy, qx, 5, steps=1, lr=0.5)
    with torch.no_grad():
        for t in range(2):
            P = prototypes(body(sx[t]), sy[t], 5)
            assert pred[t].tolist() == torch.argmax(body(qx[t]) @ P.T, 1).tolist()
    many = finetune_predict(body, 6, sx, sy, sx, 5, steps=60, lr=3.0, train="all")
    assert (many == sy).double().mean() > 0.9  # fits its own support set


def test_pretrain_classifier_learns():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(300, 5, generator=g)
    y = (X[:, 0] > 0).long() + 2 * (X[:, 1] > 0).long()
    body = nn.Sequential(nn.Linear(5, 16), nn.ReLU())
    torch.manual_seed(0)
    head_free = pretrain_classifier(body, X, y, 4, 16, epochs=8, lr=3e-2)
    assert head_free is body
    # the pretrained features separate the 4 classes (a class-mean classifier on them)
    with torch.no_grad():
        pred = nearest_class_mean(body(X[:150]), y[:150], body(X[150:]), 4, "euclidean")
    assert (pred == y[150:]).double().mean() > 0.85
    with pytest.raises(ValueError, match="labels"):
        pretrain_classifier(body, X, y + 10, 4, 16, epochs=1)
    # ``seed`` fixes the whole run, the head's initialisation included
    start = {k: v.clone() for k, v in nn.Linear(5, 3).state_dict().items()}
    runs = []
    for global_seed in (1, 2):
        b = nn.Linear(5, 3)
        b.load_state_dict(start)
        torch.manual_seed(global_seed)  # a different global random state each time
        runs.append(pretrain_classifier(b, X, y, 4, 3, epochs=1, seed=7).state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in start)


# -- shared data: a few episodes only -----------------------------------------------------------

@pytest.fixture(scope="module")
def wordcats():
    import os
    from pathlib import Path

    from pyzsl.meta.data import load_wordcats

    # the suite's data root (as tests/conftest.py finds it), not the installed package's
    root = Path(os.environ.get("PYZSL_SHARED_DATA",
                               Path(__file__).resolve().parents[2] / "shared" / "data")) / "fewshot"
    if not (root / "wordcats.npz").is_file():
        pytest.skip(f"shared few-shot data not found at {root} (set PYZSL_SHARED_DATA)")
    return load_wordcats(root)


def test_wordcats_splits_and_ncm(wordcats):
    d = wordcats
    s = d.splits
    assert (len(s["train"]), len(s["val"]), len(s["test"])) == (128, 32, 40)
    allc = torch.cat([s["train"], s["val"], s["test"]])
    assert len(torch.unique(allc)) == 200
    assert torch.allclose(d.X[:50].norm(dim=1), torch.ones(50), atol=2e-3)
    ep = EpisodeSampler(d.X, d.y, 5, 5, 15, s["test"], seed=0, label_emb=d.label_emb).sample(40)
    assert bool(torch.isin(ep.info["classes"], s["test"]).all())
    assert torch.equal(ep.context, d.label_emb[ep.info["classes"]])
    accs = [(nearest_class_mean(ep.support_x[t], ep.support_y[t], ep.query_x[t], 5)
             == ep.query_y[t]).double().mean().item() for t in range(40)]
    # README: 0.627 ± 0.007 over 600 episodes; 40 episodes have a CI about 4x wider
    assert 0.55 < np.mean(accs) < 0.71
    # the zero-shot bilinear head is the category-name classifier: README 0.551 on 600
    zs = bilinear_maml(BilinearMetricHead(384, 384), 0.1, 0)
    acc0 = evaluate_tasks(zs, ep, bilinear_accuracy).mean()
    assert 0.47 < acc0 < 0.63
