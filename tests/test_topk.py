"""The fused similarity top-k against the plain-PyTorch reference."""
import numpy as np
import pytest
import torch

from pyzsl.ops import _reference as ref
from pyzsl.ops import bilinear_topk
from pyzsl.ops.topk import bilinear_topk_heads, topk_both_ways

SIZES = [(1, 1, 1, 1, 1), (1, 3, 2, 7, 3), (7, 5, 4, 13, 13), (31, 17, 11, 257, 10), (2, 3, 3, 1009, 50), (13, 8, 6, 2, 1),
         (37, 9, 7, 5, 3)]


def test_sizes_take_both_associations():
    from pyzsl.ops._tensor import map_classes_first

    # V Mᵀ against T, and V against T M (fewer classes than queries)
    assert {map_classes_first(B, C, dv, dt) for B, dv, dt, C, _ in SIZES} == {False, True}


def kernel_dtype(device):
    """float64 on the CPU (tight checks); CUDA kernels take float32."""
    return torch.float64 if torch.device(device).type == "cpu" else torch.float32


def make(B, dv, dt, C, device, dtype=None, seed=0):
    dtype = dtype or kernel_dtype(device)
    g = torch.Generator().manual_seed(seed)
    V = torch.randn(B, dv, generator=g, dtype=dtype).to(device)
    M = torch.randn(dt, dv, generator=g, dtype=dtype).to(device)
    T = torch.randn(C, dt, generator=g, dtype=dtype).to(device)
    return V, M, T


def assert_same_topk(ours, want, rtol=1e-12):
    (v, i), (v2, i2) = ours, want
    if v.dtype == torch.float32:  # CUDA: float32 against float32 reference; near-ties may swap
        rtol = 1e-5
    assert v.shape == v2.shape and i.shape == i2.shape
    fin = torch.isfinite(v2)
    assert torch.equal(torch.isfinite(v), fin)
    assert torch.allclose(v[fin], v2[fin], rtol=rtol, atol=0)
    assert torch.equal(i, i2)


@pytest.mark.parametrize("B,dv,dt,C,k", SIZES)
@pytest.mark.parametrize("with_map", [True, False])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("biased", [False, True])
def test_matches_reference(device, B, dv, dt, C, k, with_map, masked, biased):
    V, M, T = make(B, dv, dt, C, device)
    if not with_map:
        V = V[:, :dt].contiguous() if dv >= dt else torch.randn(B, dt, dtype=V.dtype, device=device)
        M = None
    mask = (torch.rand(C, device=device) > 0.4) if masked else None
    bias = torch.randn(C, dtype=V.dtype, device=device) if biased else None
    ours = bilinear_topk(V, M, T, k, mask, bias, backend="pyzsl", tile_elems=2 * B + 1)
    assert_same_topk(ours, ref.bilinear_topk(V, M, T, k, mask, bias))


def test_fewer_allowed_than_k_fills_with_minus_one(device):
    V, M, T = make(3, 4, 4, 9, device)
    mask = torch.zeros(9, dtype=torch.bool, device=device)
    mask[[2, 5]] = True
    v, i = bilinear_topk(V, M, T, 4, mask, backend="pyzsl")
    assert set(i[:, :2].flatten().tolist()) <= {2, 5}
    assert (i[:, 2:] == -1).all() and torch.isinf(v[:, 2:]).all()
    assert_same_topk((v, i), ref.bilinear_topk(V, M, T, 4, mask))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ties_go_to_the_smaller_index(device, dtype):
    # duplicated class rows score exactly alike (small integers: every GEMM order is exact):
    # the kernel must pick the smaller index first, across tiles too (tiles of 2 columns)
    T = torch.randint(-4, 5, (5, 8)).to(dtype=dtype, device=device)
    T = torch.cat([T, T, T])  # class j, j+5, j+10 tie
    V = torch.randint(-4, 5, (6, 8)).to(dtype=dtype, device=device)
    if torch.device(device).type == "cuda" and dtype == torch.float64:
        pytest.skip("CUDA kernels take float32")
    v, i = bilinear_topk(V, None, T, 7, backend="pyzsl", tile_elems=12)
    v2, i2 = ref.bilinear_topk(V, None, T, 7)
    assert torch.equal(i, i2)
    assert torch.equal(v, v2)
    # the three copies of the best class come out in index order
    assert (i[:, 0] < 5).all() and torch.equal(i[:, 1], i[:, 0] + 5) and torch.equal(i[:, 2], i[:, 0] + 10)


def test_float32_agrees_with_float64_ranking():
    V, M, T = make(50, 40, 30, 4001, "cpu", dtype=torch.float32)
    v, i = bilinear_topk(V, M, T, 10)
    v64, _ = ref.bilinear_topk(V.double(), M.double(), T.double(), 10)
    assert v.dtype == torch.float32
    assert torch.allclose(v.double(), v64, rtol=1e-4, atol=1e-4)
    # the returned ids really have the returned scores
    S = (V.double() @ M.double().T) @ T.double()[i].transpose(1, 2)
    assert torch.allclose(S.diagonal(dim1=0, dim2=1).T, v.double(), atol=1e-3)


def test_numpy_inputs():
    V, M, T = make(4, 3, 3, 20, "cpu")
    v, i = bilinear_topk(V.numpy(), M.numpy(), T.numpy(), 3)
    assert_same_topk((v, i), ref.bilinear_topk(V, M, T, 3))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(k=0), ValueError, r"k: expected an int in \[1, 11\]"),
        (dict(k=12), ValueError, "k: expected an int"),
        (dict(k=2.0), ValueError, "k: expected an int"),
        (dict(k=1, class_bias=torch.zeros(11, dtype=torch.float32)), TypeError, "class_bias: dtype"),
        (dict(k=1, class_bias=torch.zeros(10, dtype=torch.float64)), ValueError, "class_bias: expected shape"),
        (dict(k=1, class_mask=torch.ones(11)), TypeError, "class_mask: expected dtype bool"),
        (dict(k=1, backend="faiss"), ValueError, "backend"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    V, M, T = make(4, 3, 3, 11, "cpu")
    with pytest.raises(error, match=match):
        bilinear_topk(V, M, T, **kwargs)


def test_bad_inputs():
    V, M, T = make(4, 3, 2, 11, "cpu")
    with pytest.raises(ValueError, match="M: expected shape"):
        bilinear_topk(V, M.T, T, 1)
    with pytest.raises(ValueError, match="V has 3 columns but T has 2"):
        bilinear_topk(V, None, T, 1)
    with pytest.raises(TypeError, match="V: expected dtype"):
        bilinear_topk(V.long(), M, T, 1)
    with pytest.raises(TypeError, match="T: dtype"):
        bilinear_topk(V, M, T.float(), 1)
    # integer T or M: refused by name, never converted by the GEMM behind the caller's back
    with pytest.raises(TypeError, match="T: expected dtype float32 or float64, got int64"):
        bilinear_topk(V, M, T.long(), 1)
    with pytest.raises(TypeError, match="M: expected dtype float32 or float64, got int64"):
        bilinear_topk(V, M.long(), T, 1)
    with pytest.raises(TypeError, match="class_bias: expected dtype"):
        bilinear_topk(V, M, T, 1, class_bias=torch.zeros(11, dtype=torch.int64))
    # a finite score plus a finite bias that overflows is an error (as on CUDA), not a dropped class
    with pytest.raises(ValueError, match="non-finite"):
        bilinear_topk(torch.tensor([[1.0]]), None, torch.tensor([[3e38]]), 1, class_bias=torch.tensor([3e38]))
    bad = T.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        bilinear_topk(V, M, bad, 2)
    bias = torch.zeros(11, dtype=V.dtype)
    bias[4] = float("inf")
    with pytest.raises(ValueError, match="non-finite"):
        bilinear_topk(V, M, T, 2, class_bias=bias)


def test_extension_rejects_mismatched_views():
    from pyzsl.ops._tensor import load_extension

    C = load_extension()
    S = np.zeros((3, 5), np.float32)
    with pytest.raises(ValueError, match="values: expected shape"):
        C.topk_tile(S, None, None, np.zeros((2, 2), np.float32), np.zeros((2, 2), np.int64), np.zeros(1, np.int32), 0, 5)
    with pytest.raises(ValueError, match="values.*same dtype"):
        C.topk_tile(S, None, None, np.zeros((3, 2)), np.zeros((3, 2), np.int64), np.zeros(1, np.int32), 0, 5)
    with pytest.raises(ValueError, match="scores: expected a numpy array"):
        C.topk_tile([[1.0]], None, None, np.zeros((3, 2)), np.zeros((3, 2), np.int64), np.zeros(1, np.int32), 0, 5)
    with pytest.raises(ValueError, match="threads: expected 0"):
        C.topk_tile(S, None, None, np.zeros((3, 2), np.float32), np.zeros((3, 2), np.int64), np.zeros(1, np.int32),
                    0, 5, threads=-1)


def test_several_row_blocks(device):
    # more rows than one row block (8192): blocks must not mix their results
    V, M, T = make(8200, 4, 3, 37, device, seed=3)
    assert_same_topk(bilinear_topk(V, M, T, 5, backend="pyzsl", tile_elems=4096), ref.bilinear_topk(V, M, T, 5))


@pytest.mark.parametrize("B,dv,dt,C,k", SIZES)
def test_heads_equal_separate_sweeps(device, B, dv, dt, C, k):
    # one sweep, several (k, mask, bias) heads: each equals its own bilinear_topk
    V, M, T = make(B, dv, dt, C, device)
    heads = [(k, None, None),
             (max(1, k // 2), torch.rand(C, device=device) > 0.4, None),
             (k, None, torch.randn(C, dtype=V.dtype, device=device))]
    got = bilinear_topk_heads(V, M, T, heads, tile_elems=2 * B + 1)
    assert len(got) == len(heads)
    for ours, (kh, mask, bias) in zip(got, heads):
        assert_same_topk(ours, ref.bilinear_topk(V, M, T, kh, mask, bias))


def test_heads_bad_arguments():
    V, M, T = make(3, 4, 4, 9, "cpu")
    with pytest.raises(ValueError, match="heads: expected at least one"):
        bilinear_topk_heads(V, M, T, [])
    with pytest.raises(ValueError, match=r"k: expected an int in \[1, 9\]"):
        bilinear_topk_heads(V, M, T, [(1, None, None), (10, None, None)])
    with pytest.raises(ValueError, match="class_bias"):
        bilinear_topk_heads(V, M, T, [(1, None, torch.zeros(8, dtype=V.dtype))])
    with pytest.raises(TypeError, match="float16"):
        bilinear_topk_heads(V.half(), M.half(), T.half(), [(1, None, None)])


@pytest.mark.parametrize("gemm", ["numpy", "torch"])
def test_either_cpu_blas_gives_the_same_topk(monkeypatch, gemm):
    from pyzsl.ops import _tensor

    monkeypatch.setenv("PYZSL_CPU_GEMM", gemm)
    _tensor.cpu_gemm.cache_clear()
    try:
        assert _tensor.cpu_gemm() == gemm
        V, M, T = make(29, 7, 5, 211, "cpu")
        assert_same_topk(bilinear_topk(V, M, T, 6, backend="pyzsl", tile_elems=100),
                         ref.bilinear_topk(V, M, T, 6))
        monkeypatch.setenv("PYZSL_CPU_GEMM", "blis")
        _tensor.cpu_gemm.cache_clear()
        with pytest.raises(ValueError, match="PYZSL_CPU_GEMM: expected 'numpy' or 'torch', got 'blis'"):
            _tensor.cpu_gemm()
    finally:
        _tensor.cpu_gemm.cache_clear()


@pytest.mark.parametrize("B,dv,dt,C,k", SIZES + [(8200, 3, 3, 29, 4)])  # the last: two row blocks
def test_both_ways_equal_two_sweeps(device, B, dv, dt, C, k):
    V, _, T = make(B, dv, dv, C, device)  # V: B×dv, T: C×dv (no map)
    k_cols = min(B, k + 1)
    rows, cols = topk_both_ways(V, T, k, k_cols, tile_elems=2 * min(B, 8192) + 1)
    assert_same_topk(rows, ref.bilinear_topk(V, None, T, k))
    assert_same_topk(cols, ref.bilinear_topk(T, None, V, k_cols))


def test_both_ways_ties_go_to_the_smaller_index(device):
    V = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], dtype=kernel_dtype(device), device=device)
    T = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.5, 0.0]], dtype=V.dtype, device=device)
    (rv, ri), (cv, ci) = topk_both_ways(V, T, 2, 3, tile_elems=4)  # several tiles in both directions
    assert ri[0].tolist() == [1, 2] and ri[2].tolist() == [0, 1]
    assert ci[1].tolist() == [0, 1, 3] and ci[0].tolist() == [2, 0, 1]


def test_both_ways_bad_arguments():
    V, T = torch.randn(4, 3), torch.randn(6, 3)
    with pytest.raises(ValueError, match=r"k: expected an int in \[1, 6\]"):
        topk_both_ways(V, T, 7)
    with pytest.raises(ValueError, match=r"k_cols: expected an int in \[1, 4\]"):
        topk_both_ways(V, T, 2, 5)  # k_cols counts the rows of V
    with pytest.raises(ValueError, match=r"k_cols: expected an int in \[1, 4\]"):
        topk_both_ways(V, T, 2, 0)
    (rv, rj), (cv, cj) = topk_both_ways(V, T, 6)  # a k valid for the rows: the columns take min(k, 4)
    assert rj.shape == (4, 6) and cj.shape == (6, 4)
    with pytest.raises(ValueError, match="columns"):
        topk_both_ways(V, torch.randn(6, 2), 2)


def test_masked_nonfinite_bias_is_an_error_too(device):
    # the CPU checks every bias of a tile; the CUDA kernel must agree for masked classes
    V, _, T = make(2, 4, 4, 3, device)
    for bad in (float("inf"), float("nan")):
        bias = torch.tensor([0.0, bad, 0.0], dtype=V.dtype, device=device)
        mask = torch.tensor([True, False, True], device=device)
        with pytest.raises(ValueError, match="non-finite"):
            bilinear_topk(V, None, T, 1, mask, bias, backend="pyzsl")


def test_k_above_the_cuda_limit(device):
    from pyzsl.bli.retrieval import resolve_backend
    from pyzsl.ops.topk import CUDA_MAX_K

    k = CUDA_MAX_K + 7
    V, _, T = make(3, 5, 5, k + 20, device)
    want = ref.bilinear_topk(V, None, T, k)
    assert_same_topk(bilinear_topk(V, None, T, k), want)  # auto: the kernel, or the reference on CUDA
    if torch.device(device).type == "cuda":
        with pytest.raises(ValueError, match=f"k <= {CUDA_MAX_K}"):
            bilinear_topk(V, None, T, k, backend="pyzsl")
        assert resolve_backend("auto", V, k) != "pyzsl" and resolve_backend("auto", V, CUDA_MAX_K) == "pyzsl"
    else:  # the CPU kernel takes any k
        assert_same_topk(bilinear_topk(V, None, T, k, backend="pyzsl"), want)
        assert resolve_backend("auto", V, k) == "pyzsl"


def test_nonfinite_errors_name_the_input_or_say_overflow():
    V, T = torch.randn(3, 4), torch.randn(5, 4)
    bias = torch.zeros(5)
    bias[2] = float("nan")
    with pytest.raises(ValueError, match=r"NaN/inf\) in class_bias$"):
        bilinear_topk(V, None, T, 2, class_bias=bias)
    with pytest.raises(ValueError, match=r"^non-finite score: V, T are finite, but their products overflowed"):
        bilinear_topk(V * 1e20, None, T * 1e20, 2)
