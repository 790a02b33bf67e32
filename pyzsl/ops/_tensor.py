"""The one place where user tensors are validated and handed to the extension.

torch tensors cross into ``pyzsl._C`` as array-protocol views: a CPU tensor as
``tensor.numpy()`` (zero-copy), a CUDA tensor as itself (``__cuda_array_interface__``),
with the caller's current CUDA stream. numpy arrays are accepted and wrapped with
:func:`torch.from_numpy` (zero-copy). Nothing here copies: a wrong dtype, device,
shape or layout is an error that names the argument.
"""
from __future__ import annotations

import functools
import os
from types import ModuleType
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

BACKENDS = ("auto", "pyzsl", "torch")


@functools.cache
def load_extension() -> ModuleType:
    # Our OpenMP runtime and torch's are two thread pools on the same cores: threads that
    # spin after a parallel region steal the cores from the next GEMM. Waiting passively
    # costs a few microseconds per tile; the user's own setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        from pyzsl import _C
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError(
            "pyzsl's compiled core (pyzsl._C) is not built: install the package with "
            "`pip install .` (or `python setup.py build_ext --inplace` in a checkout)"
        ) from e
    return _C


def as_tensor(x: Any, name: str) -> Tensor:
    """A torch view of ``x`` (tensor or numpy array); anything else is a TypeError."""
    if isinstance(x, Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x)
    raise TypeError(f"{name}: expected a torch.Tensor or numpy.ndarray, got {type(x).__name__}")


def check(
    x: Tensor,
    name: str,
    *,
    ndim: int | None = None,
    dtypes: Sequence[torch.dtype] | None = None,
    like: Tensor | None = None,
    shape: Sequence[int | None] | None = None,
    contiguous: bool = False,
) -> Tensor:
    """Validates one argument; ``like`` requires the same device (and, for floats, dtype)."""
    if ndim is not None and x.dim() != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D tensor, got shape {tuple(x.shape)}")
    if dtypes is not None and x.dtype not in dtypes:
        want = " or ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name}: expected dtype {want}, got {str(x.dtype).replace('torch.', '')}")
    if like is not None:
        if x.device != like.device:
            raise ValueError(f"{name}: is on {x.device} but the inputs are on {like.device}")
        if x.is_floating_point() and like.is_floating_point() and x.dtype != like.dtype:
            raise TypeError(f"{name}: dtype {x.dtype} differs from the inputs' {like.dtype}")
    if shape is not None:
        if len(shape) != x.dim() or any(s is not None and s != d for s, d in zip(shape, x.shape)):
            want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
            raise ValueError(f"{name}: expected shape {want}, got {tuple(x.shape)}")
    if contiguous and not x.is_contiguous():
        raise ValueError(f"{name}: must be contiguous (call .contiguous(); pyzsl never copies silently)")
    return x


def view(x: Tensor | None) -> Any:
    """The array-protocol object the extension reads; None stays None."""
    if x is None:
        return None
    x = x.detach()
    return x if x.is_cuda else x.numpy()


def stream(x: Tensor) -> int:
    """The caller's current CUDA stream on ``x``'s device (0 on the CPU)."""
    return torch.cuda.current_stream(x.device).cuda_stream if x.is_cuda else 0


def kernel_supports(x: Tensor) -> bool:
    """Whether our kernels run on ``x``: CPU float32/64, or CUDA float32 in a CUDA build."""
    if x.device.type == "cpu":
        return x.dtype in (torch.float32, torch.float64)
    if x.device.type == "cuda":
        return x.dtype == torch.float32 and bool(load_extension().build_info()["cuda"])
    return False


def pick_backend(backend: str, x: Tensor) -> str:
    """``pyzsl`` or ``torch``; ``auto`` is the only way to end up on the reference quietly."""
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "pyzsl" if kernel_supports(x) else "torch"
    if backend == "pyzsl" and not kernel_supports(x):
        if x.is_cuda and not load_extension().build_info()["cuda"]:
            raise RuntimeError(
                "pyzsl was built without CUDA support (pyzsl.build_info()['cuda'] is False): "
                "rebuild with a CUDA toolkit, pass CPU tensors, or use backend='auto'/'torch'"
            )
        raise TypeError(
            f"the pyzsl kernels take float32/float64 on the CPU and float32 on CUDA, got "
            f"{x.dtype} on {x.device}; use backend='auto' or 'torch' for the reference"
        )
    return backend


@functools.cache
def cpu_gemm() -> str:
    """Whose BLAS computes the CPU score tiles: ``"numpy"`` (OpenBLAS in numpy's wheels) or
    ``"torch"`` (MKL in torch's). ``PYZSL_CPU_GEMM=numpy|torch`` overrides the default.

    MKL takes a slower sgemm path on AMD CPUs: on this project's AMD EPYC, numpy's OpenBLAS
    computed 2048×8192 score tiles 10-35 % faster than ``torch.mm``. With the 8192×4096 tiles
    of :func:`tile_shape` the two are within a few percent (N = 50k CSLS 17.6 s against
    17.5-17.9 s, its bare GEMMs 7.9 s against 8.3 s), OpenBLAS the steadier. Elsewhere torch's
    BLAS is the default.
    """
    choice = os.environ.get("PYZSL_CPU_GEMM", "").strip().lower()
    if choice in ("numpy", "torch"):
        return choice
    if choice:
        raise ValueError(f"PYZSL_CPU_GEMM: expected 'numpy' or 'torch', got {choice!r}")
    try:
        with open("/proc/cpuinfo") as f:
            amd = "AuthenticAMD" in f.read(4096)
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]["name"]
    except (OSError, KeyError, TypeError):  # no /proc (not Linux) or an older numpy
        return "torch"
    return "numpy" if amd and "openblas" in str(blas).lower() else "torch"


def gemm(a: Tensor, b: Tensor, out: Tensor) -> Tensor:
    """``out = a @ b`` with the faster BLAS of :func:`cpu_gemm` (transposed views are fine: no
    copies)."""
    if a.is_cuda or cpu_gemm() == "torch":
        return torch.mm(a, b, out=out)
    with np.errstate(all="ignore"):  # inf/NaN inputs are the kernels' to report, as with torch.mm
        np.matmul(a.detach().numpy(), b.detach().numpy(), out=out.detach().numpy())
    return out


def mm_tile(a: Tensor, b: Tensor, out: Tensor) -> Tensor:
    """``out = a @ b.T`` (a score tile) with the faster BLAS of :func:`cpu_gemm`; no copies."""
    return gemm(a, b.T, out)


def scan_threads(x: Tensor) -> int:
    """OpenMP threads for a kernel's pass over a score tile that :func:`mm_tile` just wrote
    (0: OpenMP's default).

    OpenBLAS's own threads spin for a while after each GEMM: a parallel scan fights them for
    the cores (measured: 20k × 20k top-10, 16M tiles, 2 cores, 1.81 s parallel against 1.62 s
    serial; 6.6 s against 1.8 s with 0.5M tiles). The scan is ~5 % of the work.
    """
    return 1 if not x.is_cuda and cpu_gemm() == "numpy" else 0


def tile_columns(rows: int, cols: int, tile_elems: int) -> int:
    """Columns per score tile: a rows×n tile of at most ``tile_elems`` elements (at least one)."""
    return max(1, min(cols, tile_elems // max(rows, 1)))


def tile_shape(rows: int, cols: int, tile_elems: int | None) -> tuple[int, int]:
    """(row block, columns) of a score tile for a sweep over both rows and columns.

    Row blocks of at most 8192 rows, tiles of at most ``tile_elems`` elements (default 32M,
    128 MB float32, on both devices). Tall and narrow beats the reverse: on 2 AMD cores,
    50k × 50k top-10, 8192×4096 tiles take 8.3 s, 2048×8192 ones 9.2 s (OpenBLAS; MKL 8.3
    against 8.6 s), the bare GEMMs 8.0 s: the packed right operand is reused over more rows.
    """
    block = max(min(rows, 8192), 1)
    return block, tile_columns(block, cols, (1 << 25) if tile_elems is None else tile_elems)


def map_classes_first(B: int, C: int, dv: int, dt: int, needs: tuple[bool, bool, bool] = (False, False, False)
                      ) -> bool:
    """Where the map of a bilinear score ``t_jᵀ M v_b`` goes: True if ``P = T @ M`` (C×dv)
    costs fewer multiply-adds than ``U = V @ M.T`` (B×dt), counting the score GEMMs and the
    gradient GEMMs that ``needs`` (dV, dM, dT) asks for. Roughly: fewer classes than rows."""
    need_v, need_m, need_t = needs
    by_rows = B * dv * dt + B * C * dt * (1 + (need_v or need_m) + need_t) + B * dt * dv * (need_v + need_m)
    by_cols = C * dt * dv + B * C * dv * (1 + need_v + (need_m or need_t)) + C * dt * dv * (need_m + need_t)
    return by_cols < by_rows


def raise_if_nonfinite(status: Tensor, inputs: dict[str, Any]) -> None:
    """After a kernel: a non-finite score is an error naming the inputs that hold NaN/inf
    (``inputs``: name → tensor, None or a list of them), or saying the scores overflowed."""
    if int(status.item()) == 0:
        return
    given = {n: [t for t in (x if isinstance(x, (list, tuple)) else [x]) if t is not None]
             for n, x in inputs.items()}
    given = {n: ts for n, ts in given.items() if ts}
    names = [n for n, ts in given.items() if not all(bool(torch.isfinite(t).all()) for t in ts)]
    if names:
        raise ValueError(f"non-finite value (NaN/inf) in {', '.join(names)}")
    raise ValueError(f"non-finite score: {', '.join(given)} are "
                     "finite, but their products overflowed the floating-point range (scale the inputs down)")
