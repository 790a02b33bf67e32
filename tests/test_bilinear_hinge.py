"""The fused bilinear hinge loss against the plain-PyTorch reference."""
import re

import numpy as np
import pytest
import torch

import pyzsl
from pyzsl.ops import _reference as ref
from pyzsl.ops import bilinear_hinge_loss

# (B, dv, dt, C): ones, primes, odd sizes, C >> B
SIZES = [(1, 1, 1, 1), (1, 3, 2, 7), (7, 5, 4, 13), (31, 17, 11, 257), (2, 3, 3, 1009), (13, 8, 6, 2)]


def make(B, dv, dt, C, device, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    V = torch.randn(B, dv, generator=g, dtype=dtype).to(device).requires_grad_()
    M = torch.randn(dt, dv, generator=g, dtype=dtype).div(dv ** 0.5).to(device).requires_grad_()
    T = torch.randn(C, dt, generator=g, dtype=dtype).to(device).requires_grad_()
    y = torch.randint(0, C, (B,), generator=g).to(device)
    return V, M, T, y


def kernel_dtype(device):
    """float64 on the CPU (tight checks); CUDA kernels take float32."""
    return torch.float64 if torch.device(device).type == "cpu" else torch.float32


def tol(device):
    return 1e-10 if torch.device(device).type == "cpu" else 1e-4


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


def test_build_info_reports_what_was_built():
    info = pyzsl.build_info()
    assert info["version"] == pyzsl.__version__
    assert info["omp_threads"] >= 1
    assert isinstance(info["cuda"], bool) and info["cuda_devices"] >= 0
    if info["cuda"]:
        assert info["cuda_archs"]


def test_type_stubs_match_the_extension():
    """pyzsl/_C.pyi declares every function of the extension with pybind's argument names."""
    from pathlib import Path

    from pyzsl import _C

    stub = (Path(pyzsl.__file__).parent / "_C.pyi").read_text()
    declared = dict(re.findall(r"^def (\w+)\((.*?)\) ->", stub, flags=re.M | re.S))
    compiled = {n: f for n, f in vars(_C).items() if callable(f) and not n.startswith("_")}
    assert set(declared) == set(compiled)
    for name, fn in compiled.items():
        # pybind's first docstring line: name(arg0: type, arg1: type = default) -> ret
        sig = fn.__doc__.splitlines()[0]
        want = re.findall(r"(\w+): ", sig[sig.index("(") : sig.rindex(") ->")])
        assert re.findall(r"(\w+): ", declared[name]) == want, name


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("negatives", ["sum", "max"])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("masked", [False, True])
def test_matches_reference(device, size, negatives, reduction, masked):
    V, M, T, y = make(*size, device, dtype=kernel_dtype(device))
    C = T.shape[0]
    mask = (torch.rand(C, device=device) > 0.3) if masked else None
    # a small tile forces several tiles and a partial last one
    ours = bilinear_hinge_loss(V, M, T, y, 0.5, reduction, mask, negatives, backend="pyzsl",
                               tile_elems=V.shape[0] * max(2, C // 3))
    # the truth in float64 (on CUDA: the float32 kernel against float64 math)
    V64, M64, T64 = (x.detach().double().requires_grad_() for x in (V, M, T))
    want = ref.bilinear_hinge_loss(V64, M64, T64, y, 0.5, reduction, mask, negatives)
    assert ours.shape == want.shape
    assert rel_err(ours.double(), want) < tol(device)
    w = torch.randn_like(want)
    g_ours = torch.autograd.grad((ours * w.to(ours.dtype)).sum(), (V, M, T))
    g_want = torch.autograd.grad((want * w).sum(), (V64, M64, T64))
    for name, a, b in zip("VMT", g_ours, g_want):
        assert rel_err(a.double(), b) < tol(device) or b.abs().max() == a.abs().max() == 0, name


@pytest.mark.parametrize("negatives", ["sum", "max"])
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_gradcheck(negatives, reduction):
    device = "cpu"  # float64 kernels: the CPU
    V, M, T, y = make(3, 4, 3, 5, device, seed=1)
    mask = torch.tensor([True, True, False, True, True], device=device)
    f = lambda V, M, T: bilinear_hinge_loss(V, M, T, y, 1.0, reduction, mask, negatives, backend="pyzsl",
                                            tile_elems=6)
    assert torch.autograd.gradcheck(f, (V, M, T), eps=1e-6, atol=1e-8)


def test_float32_no_worse_than_torch_float32(device):
    V, M, T, y = make(64, 48, 32, 3001, device, dtype=torch.float32, seed=2)
    truth = ref.bilinear_hinge_loss(V.double(), M.double(), T.double(), y, 0.1, "mean")
    plain = ref.bilinear_hinge_loss(V, M, T, y, 0.1, "mean")
    ours = bilinear_hinge_loss(V, M, T, y, 0.1, "mean", backend="pyzsl")
    assert ours.dtype == torch.float32
    assert abs(ours.double() - truth).item() <= abs(plain.double() - truth).item() + 1e-5 * truth.abs().item()
    g_truth = torch.autograd.grad(truth, (V, M, T))  # float32 leaves: grads come back as float32 of float64 math
    g_ours = torch.autograd.grad(ours, (V, M, T))
    g_plain = torch.autograd.grad(plain, (V, M, T))
    for name, a, b, t in zip("VMT", g_ours, g_plain, g_truth):
        err_ours = (a.double() - t.double()).abs().max().item()
        err_plain = (b.double() - t.double()).abs().max().item()
        assert err_ours <= err_plain + 1e-5 * t.abs().max().item(), (name, err_ours, err_plain)


def test_no_violator_gives_exact_zero_gradient(device):
    V, M, T, y = make(9, 4, 4, 50, device, dtype=kernel_dtype(device))
    loss = bilinear_hinge_loss(V, M, T, y, margin=-1e6, reduction="sum", backend="pyzsl")
    assert loss.item() == 0
    for g in torch.autograd.grad(loss, (V, M, T)):
        assert torch.count_nonzero(g) == 0


def test_mask_excluding_everything_but_the_positive(device):
    V, M, T, y = make(4, 3, 3, 6, device, dtype=kernel_dtype(device))
    mask = torch.zeros(6, dtype=torch.bool, device=device)
    assert bilinear_hinge_loss(V, M, T, y, 10.0, "sum", mask, backend="pyzsl").item() == 0


def test_numpy_inputs():
    V, M, T, y = make(5, 4, 3, 11, "cpu")
    a = bilinear_hinge_loss(V.detach().numpy(), M.detach().numpy(), T.detach().numpy(), y.numpy())
    b = ref.bilinear_hinge_loss(V, M, T, y)
    assert rel_err(a, b) < 1e-10


def test_backend_torch_is_the_reference(device):
    V, M, T, y = make(5, 4, 3, 11, device)
    assert bilinear_hinge_loss(V, M, T, y, backend="torch").item() == ref.bilinear_hinge_loss(V, M, T, y).item()


def test_double_backward_is_refused(device):
    V, M, T, y = make(3, 3, 3, 5, device, dtype=kernel_dtype(device))
    loss = bilinear_hinge_loss(V, M, T, y, 1.0, backend="pyzsl")
    (gV,) = torch.autograd.grad(loss, V, create_graph=True)
    with pytest.raises(RuntimeError):
        torch.autograd.grad(gV.sum(), M)


@pytest.mark.parametrize(
    "mutate, error, match",
    [
        (lambda V, M, T, y: (V.int(), M, T, y), TypeError, "V: expected dtype"),
        (lambda V, M, T, y: (V.half(), M, T, y), TypeError, "V: expected dtype"),
        (lambda V, M, T, y: (V, M.float(), T, y), TypeError, "M: dtype"),
        (lambda V, M, T, y: (V, M, T[:, :2], y), ValueError, "M: expected shape"),
        (lambda V, M, T, y: (V, M.T, T, y), ValueError, "M: expected shape"),
        (lambda V, M, T, y: (V[0], M, T, y), ValueError, "V: expected a 2-D"),
        (lambda V, M, T, y: (V, M, T, y.int()), TypeError, "y: expected dtype int64"),
        (lambda V, M, T, y: (V, M, T, y[:-1]), ValueError, "y: expected shape"),
        (lambda V, M, T, y: (V, M, T, y + 100), ValueError, r"y: labels must be in \[0, 11\)"),
        (lambda V, M, T, y: (V, M, T, y - 100), ValueError, "y: labels"),
        (lambda V, M, T, y: (V.detach().index_put((torch.tensor([1]), torch.tensor([2])), torch.tensor(float("nan"), dtype=V.dtype)), M, T, y), ValueError, "NaN"),
        (lambda V, M, T, y: (V, M, T.detach().index_put((torch.tensor([7]), torch.tensor([0])), torch.tensor(float("inf"), dtype=T.dtype)), y), ValueError, "NaN/inf"),
        (lambda V, M, T, y: ([[1.0]], M, T, y), TypeError, "V: expected a torch.Tensor"),
        (lambda V, M, T, y: (V, M, T.long(), y), TypeError, "T: expected dtype float32 or float64, got int64"),
        (lambda V, M, T, y: (V, M.long(), T, y), TypeError, "M: expected dtype float32 or float64, got int64"),
    ],
)
def test_bad_inputs(mutate, error, match):
    V, M, T, y = make(5, 4, 3, 11, "cpu")
    with pytest.raises(error, match=match):
        bilinear_hinge_loss(*mutate(V, M, T, y))


def test_bad_options():
    V, M, T, y = make(5, 4, 3, 11, "cpu")
    with pytest.raises(ValueError, match="reduction"):
        bilinear_hinge_loss(V, M, T, y, reduction="avg")
    with pytest.raises(ValueError, match="negatives"):
        bilinear_hinge_loss(V, M, T, y, negatives="min")
    for margin in (float("nan"), float("inf"), 1e309):  # named, not blamed on V, M or T
        for backend in ("pyzsl", "torch"):
            with pytest.raises(ValueError, match="margin: expected a finite number"):
                bilinear_hinge_loss(V, M, T, y, margin, backend=backend)
    with pytest.raises(ValueError, match="margin"):
        bilinear_hinge_loss(V.float(), M.float(), T.float(), y, 1e39)  # beyond float32
    with pytest.raises(ValueError, match="backend"):
        bilinear_hinge_loss(V, M, T, y, backend="cuda")
    with pytest.raises(TypeError, match="class_mask: expected dtype bool"):
        bilinear_hinge_loss(V, M, T, y, class_mask=torch.ones(11))
    with pytest.raises(ValueError, match="class_mask: expected shape"):
        bilinear_hinge_loss(V, M, T, y, class_mask=torch.ones(10, dtype=torch.bool))
    with pytest.raises(ValueError, match="class_mask: must be contiguous"):
        bilinear_hinge_loss(V, M, T, y, class_mask=torch.ones(22, dtype=torch.bool)[::2])


def test_cuda_float64_is_refused_by_the_kernel_not_run_elsewhere(device):
    if torch.device(device).type != "cuda":
        pytest.skip("needs a CUDA device (PYZSL_TEST_DEVICE=cuda)")
    V, M, T, y = make(3, 3, 3, 5, device)
    with pytest.raises(TypeError, match="float32 on CUDA"):
        bilinear_hinge_loss(V, M, T, y, backend="pyzsl")


def test_extension_rejects_strided_and_readonly_arrays():
    from pyzsl.ops._tensor import load_extension

    C = load_extension()
    S = np.zeros((4, 6), np.float32)
    args = dict(positive=np.zeros(4, np.float32), labels=np.zeros(4, np.int64), class_mask=None,
                loss=np.zeros(4), count=np.zeros(4), best_value=np.zeros(4),
                best_index=np.full(4, -1, np.int64), status=np.zeros(1, np.int32), col0=0,
                num_classes=6, margin=0.1, hardest=False, write_grad=False)
    with pytest.raises(ValueError, match="scores: must be C-contiguous"):
        C.hinge_tile(scores=S[:, ::2], **{**args, "num_classes": 3})
    ro = S.copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="scores: is read-only"):
        C.hinge_tile(scores=ro, **args)
    with pytest.raises(ValueError, match="labels: expected int64"):
        C.hinge_tile(scores=S, **{**args, "labels": np.zeros(4, np.int32)})
    with pytest.raises(ValueError, match="outside"):
        C.hinge_tile(scores=S, **{**args, "col0": 3})


@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_fixed_class_embeddings(device, reduction):
    # T without grad (zero-shot training): dT is skipped, dV and dM unchanged
    V, M, T, y = make(6, 5, 4, 23, device, dtype=kernel_dtype(device))
    T = T.detach()
    ours = bilinear_hinge_loss(V, M, T, y, 0.5, reduction, backend="pyzsl", tile_elems=12)
    want = ref.bilinear_hinge_loss(V, M, T, y, 0.5, reduction)
    w = torch.randn_like(want)
    for a, b in zip(torch.autograd.grad((ours * w).sum(), (V, M)), torch.autograd.grad((want * w).sum(), (V, M))):
        assert rel_err(a, b) < tol(device)


@pytest.mark.parametrize("needs", [(v, m, t) for v in (0, 1) for m in (0, 1) for t in (0, 1) if v or m or t])
@pytest.mark.parametrize("size", [(29, 7, 5, 3), (3, 7, 5, 29)])  # few classes: T M; many: V Mᵀ
@pytest.mark.parametrize("negatives", ["sum", "max"])
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_both_associations(device, needs, size, negatives, reduction):
    from pyzsl.ops._tensor import map_classes_first

    B, dv, dt, C = size
    assert map_classes_first(B, C, dv, dt, tuple(map(bool, needs))) == (C < B)  # both paths run here
    leaves = make(*size, device, dtype=kernel_dtype(device))
    V, M, T = (x.detach().requires_grad_(bool(n)) for x, n in zip(leaves[:3], needs))
    y = leaves[3]
    ours = bilinear_hinge_loss(V, M, T, y, 0.5, reduction, None, negatives, backend="pyzsl", tile_elems=2 * B)
    V64, M64, T64 = (x.detach().double().requires_grad_(bool(n)) for x, n in zip((V, M, T), needs))
    want = ref.bilinear_hinge_loss(V64, M64, T64, y, 0.5, reduction, None, negatives)
    assert rel_err(ours.double(), want) < tol(device)
    w = torch.randn_like(want)
    wrt = [x for x, n in zip((V, M, T), needs) if n]
    wrt64 = [x for x, n in zip((V64, M64, T64), needs) if n]
    for a, b in zip(torch.autograd.grad((ours * w.to(ours.dtype)).sum(), wrt),
                    torch.autograd.grad((want * w).sum(), wrt64)):
        assert rel_err(a.double(), b) < tol(device) or b.abs().max() == a.abs().max() == 0


@pytest.mark.parametrize("negatives", ["sum", "max"])
def test_gradcheck_few_classes(negatives):
    V, M, T, y = make(7, 4, 3, 3, "cpu", seed=3)  # C < B: the map goes on the classes
    f = lambda V, M, T: bilinear_hinge_loss(V, M, T, y, 1.0, "mean", None, negatives, backend="pyzsl",
                                            tile_elems=7)
    assert torch.autograd.gradcheck(f, (V, M, T), eps=1e-6, atol=1e-8)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_no_rows(reduction):
    # torch's conventions: the mean of no rows is NaN, the sum 0; every gradient is zero
    V, M, T, _ = make(1, 4, 3, 5, "cpu")
    V = V.detach()[:0].requires_grad_()
    y = torch.zeros(0, dtype=torch.int64)
    ours = bilinear_hinge_loss(V, M, T, y, reduction=reduction, backend="pyzsl")
    want = ref.bilinear_hinge_loss(V, M, T, y, reduction=reduction)
    assert ours.shape == want.shape and torch.equal(ours.isnan(), want.isnan())
    assert torch.equal(ours.nan_to_num(), want.nan_to_num())
    for g in torch.autograd.grad(ours.sum(), (V, M, T)):
        assert g.abs().sum() == 0


def test_nonfinite_errors_name_the_input_or_say_overflow():
    V, M, T = torch.randn(3, 4), torch.eye(4), torch.randn(5, 4)
    y = torch.tensor([0, 1, 2])
    for name in ("V", "M", "T"):
        args = {"V": V.clone(), "M": M.clone(), "T": T.clone()}
        args[name][0, 1] = float("nan")
        with pytest.raises(ValueError, match=rf"NaN/inf\) in {name}$"):
            bilinear_hinge_loss(args["V"], args["M"], args["T"], y)
    with pytest.raises(ValueError, match="V, M, T are finite, but their products overflowed"):
        bilinear_hinge_loss(V * 1e20, M, T * 1e20, y)
