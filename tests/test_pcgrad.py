"""pyzsl.ops.gram / pyzsl.ops.pcgrad against the per-pair PyTorch reference (issue 4).

float64 is checked tightly (relative error < 1e-10) at T in {1, 2, 3, 17, 64} and P in
{1, 7, 1000003}; degenerate cases (P = 1, exact anti-parallel pairs) leave an update that is
zero up to rounding, so the error is measured against the scale of the inputs (Σ_i |g_i|).
"""
import numpy as np
import pytest
import torch

from pyzsl.ops import PCGradDiagnostics, _reference, gram, pcgrad
from pyzsl.ops._tensor import load_extension


def _orders(T, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(T, generator=g) for _ in range(T)])


def _grads(T, P, seed=0, dtype=torch.float64, conflicts=True):
    g = torch.Generator().manual_seed(seed)
    G = torch.randn(T, P, generator=g, dtype=torch.float64)
    if conflicts and T >= 3:  # force conflicts: g_2 nearly opposes g_0, g_1 is mixed in reversed
        G[2] = -G[0] + 0.1 * G[2]
        G[1] = -0.5 * G[1] - 0.3 * G[0]
    return G.to(dtype)


def _errors(ours, ref, G, reduction="sum"):
    """(error relative to the inputs' scale, error relative to the reference's norm)."""
    ours = torch.as_tensor(ours).double().cpu()
    ref = ref.double().cpu()
    diff = (ours - ref).norm().item()
    scale = G.double().norm(dim=1).sum().item() / (G.shape[0] if reduction == "mean" else 1)
    return diff / max(scale, 1e-300), diff / max(ref.norm().item(), 1e-300)


def _check_close(ours, ref, G, reduction="sum", tol=1e-10):
    e_scale, e_rel = _errors(ours, ref, G, reduction)
    assert e_scale < tol, f"error {e_scale:.3e} relative to Σ|g_i|"
    if G.shape[1] >= 7 and ref.norm() > 1e-6 * G.double().norm():  # not degenerate
        assert e_rel < tol, f"relative error {e_rel:.3e}"


@pytest.mark.parametrize("T", [1, 2, 3, 17, 64])
@pytest.mark.parametrize("P", [1, 7, 1009])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_matches_reference_float64(device, T, P, reduction):
    G = _grads(T, P, seed=T * 1000 + P).to(device)
    order = _orders(T, seed=T + P)
    ref = _reference.pcgrad(G.cpu(), order, reduction)
    out = pcgrad(G, order, reduction=reduction)
    assert out.device == G.device and out.dtype == G.dtype and out.shape == (P,)
    _check_close(out, ref, G, reduction)
    K = gram(G)
    torch.testing.assert_close(K.cpu(), G.cpu() @ G.cpu().T, rtol=1e-12, atol=1e-12 * G.norm().item() ** 2)


@pytest.mark.parametrize("T", [2, 3, pytest.param(17, marks=pytest.mark.slow)])
def test_matches_reference_large_p(device, T):
    P = 1000003  # prime: no chunk or vector width divides it
    G = _grads(T, P, seed=T).to(device)
    order = _orders(T, seed=1)
    ref = _reference.pcgrad(G.cpu(), order)
    out, diag = pcgrad(G, order, return_diagnostics=True)
    _check_close(out, ref, G)
    Kref = G.cpu() @ G.cpu().T
    assert ((diag.gram.cpu() - Kref).abs().max() / Kref.abs().max()).item() < 1e-12


def test_float32_is_as_accurate_as_float32_torch(device):
    T, P = 8, 20011
    G32 = _grads(T, P, seed=5, dtype=torch.float32)
    order = _orders(T, seed=5)
    truth = _reference.pcgrad(G32.double(), order)  # exact inputs, float64 arithmetic
    ours = pcgrad(G32.to(device), order).cpu()
    assert ours.dtype == torch.float32
    torch32 = _reference.pcgrad(G32, order)
    err_ours = (ours.double() - truth).norm() / truth.norm()
    err_torch = (torch32.double() - truth).norm() / truth.norm()
    # float64 accumulation: only the final rounding to float32 remains
    assert err_ours < 1e-7 and err_ours <= err_torch + 1e-7, (err_ours, err_torch)
    K = gram(G32.to(device), dtype=torch.float64).cpu()
    torch.testing.assert_close(K, G32.double() @ G32.double().T, rtol=1e-13, atol=1e-9)


def test_two_tasks_closed_form(device):
    g1 = torch.tensor([1.0, 0.0, 2.0], dtype=torch.float64)
    g2 = torch.tensor([-1.0, 1.0, -1.0], dtype=torch.float64)
    G = torch.stack([g1, g2]).to(device)
    p1 = g1 - (g1 @ g2) / (g2 @ g2) * g2
    p2 = g2 - (g2 @ g1) / (g1 @ g1) * g1
    out, diag = pcgrad(G, return_diagnostics=True)
    torch.testing.assert_close(out.cpu(), p1 + p2, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(pcgrad(G, reduction="mean").cpu(), (p1 + p2) / 2, rtol=1e-14, atol=1e-14)
    assert int(diag.n_conflicts) == 1
    cos = (g1 @ g2) / (g1.norm() * g2.norm())
    torch.testing.assert_close(diag.cosine.cpu(), torch.tensor([[1.0, cos], [cos, 1.0]], dtype=torch.float64))
    # the update does not oppose either task
    assert ((G.cpu() @ out.cpu()) >= -1e-12).all()
    # no conflict: the plain sum
    G2 = torch.stack([g1, g1 + 1]).to(device)
    torch.testing.assert_close(pcgrad(G2).cpu(), G2.cpu().sum(0))


def test_anti_parallel_pair_cancels(device):
    g = torch.randn(11, dtype=torch.float64)
    G = torch.stack([g, -g]).to(device)
    out = pcgrad(G)
    assert out.abs().max().item() < 1e-14 * g.norm().item()


def test_zero_gradients_no_division_by_zero(device):
    G = _grads(6, 33, seed=2)
    G[1] = 0
    G[4] = 0
    order = _orders(6, seed=3)
    out, diag = pcgrad(G.to(device), order, return_diagnostics=True)
    assert torch.isfinite(out).all()
    _check_close(out, _reference.pcgrad(G, order), G)
    assert (diag.cosine.cpu()[1] == 0).all() and (diag.cosine.cpu()[:, 4] == 0).all()
    Z = torch.zeros(3, 5, dtype=torch.float64, device=device)
    assert (pcgrad(Z) == 0).all()


def test_diagnostics(device):
    T, P = 9, 301
    G = _grads(T, P, seed=7).to(device)
    _, diag = pcgrad(G, _orders(T), return_diagnostics=True)
    assert isinstance(diag, PCGradDiagnostics)
    K = G.cpu() @ G.cpu().T
    torch.testing.assert_close(diag.gram.cpu(), K, rtol=1e-12, atol=1e-12)
    n = K.diagonal().sqrt()
    torch.testing.assert_close(diag.cosine.cpu(), K / n[:, None] / n[None, :], rtol=1e-12, atol=1e-12)
    assert diag.n_conflicts.dim() == 0
    assert int(diag.n_conflicts) == int((K.triu(1) < 0).sum()) > 0


def test_list_of_blocks_equals_per_block_calls(device):
    T = 5
    sizes = [1, 7, 1000, 3, 4099]
    blocks = [_grads(T, p, seed=p).to(device) for p in sizes]
    order = _orders(T, seed=4)
    outs, diag = pcgrad(blocks, order, reduction="mean", return_diagnostics=True)
    assert isinstance(outs, list) and len(outs) == len(sizes)
    assert diag.gram.shape == (len(sizes), T, T) and diag.n_conflicts.shape == (len(sizes),)
    for l, (g, o) in enumerate(zip(blocks, outs)):
        single, d1 = pcgrad(g, order, reduction="mean", return_diagnostics=True)
        torch.testing.assert_close(o, single, rtol=1e-12, atol=1e-13)
        torch.testing.assert_close(diag.gram[l], d1.gram, rtol=1e-12, atol=1e-13)
        assert int(diag.n_conflicts[l]) == int(d1.n_conflicts)
        _check_close(o, _reference.pcgrad(g.cpu(), order, "mean"), g.cpu(), "mean")
    Ks = gram(blocks)
    assert Ks.shape == (len(sizes), T, T)


def test_numpy_in_numpy_out():
    G = _grads(4, 50, seed=1)
    order = _orders(4, seed=2)
    out = pcgrad(G.numpy(), order.numpy())
    assert isinstance(out, np.ndarray) and out.dtype == np.float64
    np.testing.assert_allclose(out, pcgrad(G, order).numpy(), rtol=0, atol=0)
    out32, diag = pcgrad(G.float().numpy(), order, return_diagnostics=True)
    assert out32.dtype == np.float32 and isinstance(diag.gram, np.ndarray)
    K = gram(G.numpy())
    assert isinstance(K, np.ndarray)
    np.testing.assert_allclose(K, (G @ G.T).numpy(), rtol=1e-12)
    outs = pcgrad([G.numpy(), G[:, :7].numpy()], order)
    assert all(isinstance(o, np.ndarray) for o in outs)


def test_generator_draws_the_reference_orders(device):
    T = 6
    G = _grads(T, 40, seed=8).to(device)
    a = pcgrad(G, generator=torch.Generator().manual_seed(3))
    b = pcgrad(G, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    explicit = pcgrad(G, _orders(T, seed=3))  # one randperm per row from the same generator
    assert torch.equal(a, explicit)


def test_out_buffer_and_strided_rows(device):
    T, P = 4, 1001
    big = _grads(T, P + 13, seed=9).to(device)
    G = big[:, 5:5 + P]  # rows of a bigger buffer: row stride P + 13, unit column stride
    order = _orders(T)
    buf = torch.full((P,), 7.0, dtype=torch.float64, device=device)
    res = pcgrad(G, order, out=buf)
    assert res is buf
    _check_close(buf, _reference.pcgrad(G.cpu(), order), G.cpu())


@pytest.mark.parametrize("isa", ["generic", "avx2"])
def test_lower_cpu_code_paths(monkeypatch, isa):
    monkeypatch.setenv("PYZSL_PCGRAD_ISA", isa)
    assert load_extension().pcgrad_cpu_isa() in (isa, "generic")
    for T, P, dtype in [(3, 1, torch.float64), (17, 1009, torch.float64), (8, 523, torch.float32)]:
        G = _grads(T, P, seed=T, dtype=dtype)
        order = _orders(T)
        _check_close(pcgrad(G, order), _reference.pcgrad(G.double(), order), G.double(),
                     tol=1e-10 if dtype == torch.float64 else 1e-6)


def test_nan_and_inf_are_errors(device):
    G = _grads(3, 20).to(device)
    G[1, 7] = float("nan")
    with pytest.raises(ValueError, match="G: contains NaN or inf"):
        pcgrad(G)
    with pytest.raises(ValueError, match="NaN or inf"):
        gram(G)
    H = _grads(3, 20).to(device)
    H[0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or inf"):
        pcgrad(H)
    with pytest.raises(ValueError, match=r"G\[1\]: contains NaN"):
        pcgrad([H.nan_to_num(posinf=0.0), G])
    # check=False: no error, and no silently finite answer either
    assert torch.isnan(pcgrad(G, check=False)).all()
    upd, diag = pcgrad(G, check=False, return_diagnostics=True)
    assert torch.isnan(diag.cosine).all() and int(diag.n_conflicts) == -1  # not left uninitialised
    # a list: only the non-finite block is NaN, on every device
    good = _grads(3, 20).to(device)
    order = _orders(3).to(device)
    (ug, ub), diag = pcgrad([good, G], order, check=False, return_diagnostics=True)
    torch.testing.assert_close(ug, pcgrad(good, order))
    assert torch.isnan(ub).all() and torch.isfinite(diag.cosine[0]).all() and diag.n_conflicts[1] == -1


def test_bad_arguments():
    G = _grads(3, 10)
    with pytest.raises(TypeError, match="G: expected dtype float32 or float64, got int64"):
        pcgrad(torch.ones(3, 4, dtype=torch.int64))
    with pytest.raises(TypeError, match="float16"):
        pcgrad(G.half())
    with pytest.raises(TypeError, match="G: expected a torch.Tensor or numpy.ndarray"):
        pcgrad(3.0)
    with pytest.raises(TypeError, match=r"G\[0\]: expected a torch.Tensor or numpy.ndarray"):
        pcgrad([[1.0, 2.0]])  # a list is a list of blocks
    with pytest.raises(ValueError, match="2-D"):
        pcgrad(G[0])
    with pytest.raises(ValueError, match="T >= 1"):
        pcgrad(torch.zeros(0, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="unit stride"):
        pcgrad(G[:, ::2])
    with pytest.raises(ValueError, match=r"G\[1\]: has 2 task rows"):
        pcgrad([G, G[:2]])
    with pytest.raises(TypeError, match=r"G\[1\]: dtype"):
        pcgrad([G, G.float()])
    with pytest.raises(ValueError, match="empty list"):
        pcgrad([])
    with pytest.raises(ValueError, match="reduction"):
        pcgrad(G, reduction="max")
    with pytest.raises(TypeError, match="order: expected dtype int64"):
        pcgrad(G, _orders(3).int())
    with pytest.raises(ValueError, match=r"order: expected shape \(3, 3\)"):
        pcgrad(G, _orders(4))
    bad = _orders(3)
    bad[1] = torch.tensor([0, 0, 2])
    with pytest.raises(ValueError, match="order: row 1 is not a permutation"):
        pcgrad(G, bad)
    bad[1] = torch.tensor([0, 1, 3])
    with pytest.raises(ValueError, match="order: row 1"):
        pcgrad(G, bad)
    with pytest.raises(ValueError, match="out: expected a contiguous"):
        pcgrad(G, out=torch.empty(9, dtype=torch.float64))
