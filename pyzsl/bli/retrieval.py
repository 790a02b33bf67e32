"""Cross-space retrieval: nearest neighbour, CSLS and inverted softmax, on any backend.

For queries ``Q`` (B × d) and targets ``T`` (C × d), rows compared by cosine (rows are scaled
to unit length unless ``normalize=False``):

- **NN**: the targets of largest ``cos(q, t)``.
- **CSLS** (Conneau et al., 2018): ``2 cos(q, t) − r_T(t) − r_Q(q)``, where ``r_T(t)`` is the
  mean cosine of ``t`` with its ``knn`` nearest *source* vectors (``src``: the whole mapped
  source space, default ``Q``) and ``r_Q(q)`` the mean cosine of ``q`` with its ``knn``
  nearest targets. Computed as three top-k passes (r_T, r_Q, then the final retrieval as a
  top-k of ``cos − r_T/2``); the B × C (or C × |src|) matrix is never formed.
- **Inverted softmax** (Smith et al., 2017): ``log P(t | q) = β cos(q, t) − log Σ_{s ∈ src}
  exp(β cos(s, t))``: the softmax normalised over the source words, which penalises hubs.
  The per-target log-sum-exp is one chunked matmul pass (exact, on every backend), then a
  top-k with bias ``−LSE(t)/β``.

Backends (``backend=``):

- ``"pyzsl"``: :func:`pyzsl.ops.bilinear_topk`, the fused similarity top-k (CPU float32/64,
  CUDA float32): tiles of the similarity matrix are reduced to the running top-k.
  Extra memory O((B + C)·k) plus one score tile (128 MB).
- ``"faiss"``: an exact inner-product index (``IndexFlatIP``; a GPU index when faiss has GPU
  support and the data is on CUDA); a bias is an extra coordinate. Extra memory: a float32
  copy of Q and T (plus one column). Needs ``pip install pyzsl[faiss]``.
- ``"torch"``: plain PyTorch, ``Q_chunk @ T.T`` then ``torch.topk``, over query chunks of at
  most ``chunk_bytes`` (default 256 MB) of scores.
- ``"auto"``: ``pyzsl`` where the kernel runs (our benchmarks: it beats the others), else
  faiss when installed, else torch.

Ties: results are sorted by decreasing score, equal scores by increasing target index. Which
of several targets tied exactly at the k-th score is returned may differ between backends
(``pyzsl`` and the reference keep the smallest indices).
"""
from __future__ import annotations

import functools
from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

#: a matrix argument: a torch tensor, or a numpy array read without a copy
Matrix = Union[Tensor, np.ndarray]

BACKENDS = ("auto", "pyzsl", "faiss", "torch")
METHODS = ("nn", "csls", "isf")
_CHUNK_BYTES = 256 << 20


# --------------------------------------------------------------------------- helpers

def _as_matrix(x, name: str, like: Tensor | None = None) -> Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor or numpy array, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name}: expected a 2-D matrix (rows × dims), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name}: expected floating point values, got {x.dtype}")
    if x.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{name}: expected float32 or float64, got {x.dtype} (cast it with .float())")
    if like is not None:
        if x.shape[1] != like.shape[1]:
            raise ValueError(f"{name}: has {x.shape[1]} dims, the queries have {like.shape[1]}")
        if (x.device, x.dtype) != (like.device, like.dtype):
            # a silent copy of a 200k-row matrix would double memory: the caller decides
            raise ValueError(f"{name}: is {x.dtype} on {x.device}, the queries are {like.dtype} on "
                             f"{like.device}; move or cast one of them first")
    return x


def _as_vector(x, name: str, n: int, like: Tensor) -> Tensor:
    x = torch.as_tensor(x)
    if (x.device, x.dtype) != (like.device, like.dtype):
        raise ValueError(f"{name}: is {x.dtype} on {x.device}, the queries are {like.dtype} on {like.device}")
    x = x.reshape(-1)
    if x.shape[0] != n:
        raise ValueError(f"{name}: expected {n} values (one per target), got {x.shape[0]}")
    return x


def unit(x: Tensor) -> Tensor:
    """Rows scaled to L2 norm 1 (zero rows stay zero); a copy."""
    n = x.norm(dim=1, keepdim=True)
    return x / torch.where(n > 0, n, torch.ones_like(n))


@functools.cache
def _faiss():
    try:
        import faiss  # type: ignore
    except ImportError as e:
        raise ImportError("backend='faiss' needs the faiss package: pip install pyzsl[faiss]") from e
    return faiss


def _faiss_gpu() -> bool:
    """Whether the installed faiss has GPU support and sees a GPU."""
    faiss = _faiss()
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def _faiss_available() -> bool:
    try:
        _faiss()
        return True
    except ImportError:
        return False


def resolve_backend(backend: str, x: Tensor, k: int = 1) -> str:
    """The backend that :func:`topk` will use for a top-``k`` on data like ``x`` (``auto``
    passes the kernel over where it cannot run, e.g. k > 256 on CUDA)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    if backend == "faiss" and x.dtype != torch.float32:
        raise ValueError(f"backend='faiss' computes in float32 only, got {x.dtype}: pass float32 "
                         "vectors, or use backend 'pyzsl' or 'torch'")
    if backend != "auto":
        return backend
    try:
        from pyzsl.ops._tensor import kernel_supports
        from pyzsl.ops.topk import k_supported

        if kernel_supports(x) and k_supported(x, k):
            return "pyzsl"
    except ImportError:  # no compiled core: fall through to the others
        pass
    # faiss on CUDA data only with its GPU index: a CPU index would copy both sides to the host
    if _faiss_available() and x.dtype == torch.float32 and (not x.is_cuda or _faiss_gpu()):
        return "faiss"
    return "torch"


def _tie_sort(values: Tensor, indices: Tensor) -> tuple[Tensor, Tensor]:
    """Orders each row by decreasing value, equal values by increasing index."""
    idx, o = indices.sort(dim=1)
    v = values.gather(1, o)
    v, o = v.sort(dim=1, descending=True, stable=True)
    return v, idx.gather(1, o)


def _chunk_rows(n_cols: int, elem: int, chunk_bytes: int) -> int:
    return max(1, chunk_bytes // max(1, n_cols * elem))


# --------------------------------------------------------------------------- core top-k

def topk(Q: Matrix, T: Matrix, k: int, bias: Tensor | None = None, *, backend: str = "auto",
         chunk_bytes: int = _CHUNK_BYTES) -> tuple[Tensor, Tensor]:
    """Top-``k`` of ``Q @ T.T + bias`` per row: ``(values, indices)``, both B × k.

    Equals ``torch.topk(Q @ T.T + bias, k)`` (ties: smaller index first) without the B × C
    matrix on the ``pyzsl`` backend; raw inner products, no normalisation. ``k`` is clipped
    to C. Memory: see the module docstring; ``chunk_bytes`` bounds the score buffer of the
    ``torch`` backend, the ``pyzsl`` kernel sizes its tiles itself (``pyzsl.ops.bilinear_topk``).
    """
    Q = _as_matrix(Q, "Q")
    T = _as_matrix(T, "T", like=Q)
    C = T.shape[0]
    if C == 0:
        raise ValueError("T: no targets to retrieve from")
    _positive_int(k, "k")
    k = min(k, C)
    if bias is not None:
        bias = _as_vector(bias, "bias", C, like=Q).contiguous()
    be = resolve_backend(backend, Q, k)
    if Q.shape[0] == 0:
        return (torch.empty(0, k, dtype=Q.dtype, device=Q.device),
                torch.empty(0, k, dtype=torch.int64, device=Q.device))
    if be == "pyzsl":
        return _pyzsl_topk(Q, T, k, bias)
    if be == "faiss":
        return _faiss_topk(Q, T, k, bias)
    return _torch_topk(Q, T, k, bias, chunk_bytes)


def _pyzsl_topk(Q: Tensor, T: Tensor, k: int, bias: Tensor | None):
    from pyzsl.ops import bilinear_topk

    # the kernel sweeps row blocks × column tiles itself (GEMM-friendly tiles for any B)
    return bilinear_topk(Q.contiguous(), None, T.contiguous(), k, class_bias=bias, backend="pyzsl")


def _torch_topk(Q: Tensor, T: Tensor, k: int, bias: Tensor | None, chunk_bytes: int):
    rows = _chunk_rows(T.shape[0], Q.element_size(), chunk_bytes)
    vals, idx = [], []
    for i in range(0, Q.shape[0], rows):
        S = Q[i:i + rows] @ T.T
        if bias is not None:
            S += bias
        v, j = torch.topk(S, k, dim=1)
        v, j = _tie_sort(v, j)
        vals.append(v)
        idx.append(j)
    return torch.cat(vals), torch.cat(idx)


def _faiss_topk(Q: Tensor, T: Tensor, k: int, bias: Tensor | None):
    faiss = _faiss()
    q = Q.detach().float().cpu().numpy()
    t = T.detach().float().cpu().numpy()
    if bias is not None:  # <[q, 1], [t, b]> = <q, t> + b
        q = np.hstack([q, np.ones((q.shape[0], 1), np.float32)])
        t = np.hstack([t, bias.detach().float().cpu().numpy()[:, None]])
    q, t = np.ascontiguousarray(q), np.ascontiguousarray(t)
    index = faiss.IndexFlatIP(t.shape[1])
    if Q.is_cuda and _faiss_gpu():
        res = faiss.StandardGpuResources()
        index = faiss.index_cpu_to_gpu(res, Q.device.index or 0, index)
    index.add(t)
    D, I = index.search(q, k)
    v = torch.from_numpy(D).to(device=Q.device, dtype=Q.dtype)
    j = torch.from_numpy(I).to(device=Q.device, dtype=torch.int64)
    return _tie_sort(v, j)


# --------------------------------------------------------------------------- r-terms, ISF

def knn_mean(A: Matrix, B: Matrix, knn: int = 10, *, backend: str = "auto", chunk_bytes: int = _CHUNK_BYTES) -> Tensor:
    """For each row of A: the mean of its ``knn`` largest inner products with the rows of B
    (CSLS's r-term; rows should be unit length). ``knn`` is clipped to len(B)."""
    _positive_int(knn, "knn")
    A = _as_matrix(A, "A")
    B = _as_matrix(B, "B", like=A)
    v, _ = topk(A, B, min(knn, B.shape[0]), backend=backend, chunk_bytes=chunk_bytes)
    return v.mean(dim=1)


def log_sum_exp_over(T: Matrix, S: Matrix, beta: float, *, chunk_bytes: int = _CHUNK_BYTES) -> Tensor:
    """For each row t of T: ``log Σ_{s ∈ S} exp(β ⟨s, t⟩)`` (the inverted softmax's
    normaliser), one chunked matmul pass: memory ``chunk_bytes`` of scores."""
    T = _as_matrix(T, "T")
    S = _as_matrix(S, "S", like=T)
    rows = _chunk_rows(S.shape[0], T.element_size(), chunk_bytes)
    out = [torch.logsumexp(beta * (T[i:i + rows] @ S.T), dim=1) for i in range(0, T.shape[0], rows)]
    return torch.cat(out) if out else torch.empty(0, dtype=T.dtype, device=T.device)


# --------------------------------------------------------------------------- retrieval

def nn(Q: Matrix, T: Matrix, k: int = 1, *, normalize: bool = True, backend: str = "auto",
       chunk_bytes: int = _CHUNK_BYTES) -> tuple[Tensor, Tensor]:
    """Nearest neighbours by cosine: ``(cos values, target indices)``, B × k."""
    Q = _as_matrix(Q, "Q")
    T = _as_matrix(T, "T", like=Q)
    if normalize:
        Q, T = unit(Q), unit(T)
    return topk(Q, T, k, backend=backend, chunk_bytes=chunk_bytes)


def _positive_int(value, name: str) -> None:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")


def _spaces(Q, T, src, normalize: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Queries, targets and the source space whose neighbourhoods score the targets
    (default: the queries), validated and, with ``normalize``, unit length."""
    Q = _as_matrix(Q, "Q")
    T = _as_matrix(T, "T", like=Q)
    S = None if src is None else _as_matrix(src, "src", like=Q)
    if normalize:
        Q, T = unit(Q), unit(T)
        S = None if S is None else unit(S)
    return Q, T, Q if S is None else S


def csls(Q: Matrix, T: Matrix, k: int = 1, *, knn: int = 10, src: Optional[Matrix] = None, r_T: Tensor | None = None,
         normalize: bool = True, backend: str = "auto",
         chunk_bytes: int = _CHUNK_BYTES) -> tuple[Tensor, Tensor]:
    """CSLS retrieval (Conneau et al., 2018): ``(2 cos − r_T − r_Q, target indices)``, B × k.

    Args:
        k: results returned per query. Not the CSLS neighbourhood: that is ``knn`` (MUSE's
            ``csls_knn_10`` is ``knn=10``; ``pyzsl.zsl`` calls it ``csls_k``).
        knn: neighbourhood size of the r-terms r_T and r_Q (default 10).
        src: the (mapped) source space whose neighbourhoods define ``r_T`` (MUSE: the whole
            source vocabulary); default ``Q`` itself, which is MUSE's CSLS only when ``Q`` is
            that whole space: for a batch of queries pass ``src`` (or ``r_T``).
        r_T: precomputed ``knn_mean(T, src, knn)`` (unit rows), to reuse across query batches.

    Cost: with the kernel, two GEMM passes (C × |src| for ``r_T``; B × C once for both ``r_Q``
    and the retrieval, each score tile feeding two top-k's); otherwise three. Memory as
    :func:`topk`, never B × C.
    """
    _positive_int(knn, "knn")
    Q, T, S = _spaces(Q, T, src if r_T is None else None, normalize)  # given r_T: src unused
    if T.shape[0] == 0:
        raise ValueError("T: no targets to retrieve from")
    if r_T is None:
        r_T = knn_mean(T, S, knn, backend=backend, chunk_bytes=chunk_bytes)
    else:
        r_T = _as_vector(r_T, "r_T", T.shape[0], like=Q)
    (near, _), (v, j) = _near_and_biased(Q, T, min(knn, T.shape[0]), min(k, T.shape[0]), -0.5 * r_T,
                                         backend, chunk_bytes)
    return 2 * v - near.mean(dim=1, keepdim=True), j


def topk_both_ways(Q: Matrix, T: Matrix, k: int, *, backend: str = "auto", chunk_bytes: int = _CHUNK_BYTES
                   ) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """``(top-k of each row of Q Tᵀ, top-k of each column)``, each ``(values, indices)``: the
    nearest neighbours both ways (dictionary induction). ``k`` is clipped to each side's size.
    With the kernel one sweep (:func:`pyzsl.ops.topk.topk_both_ways`), otherwise two
    :func:`topk` calls."""
    Q = _as_matrix(Q, "Q")
    T = _as_matrix(T, "T", like=Q)
    _positive_int(k, "k")
    if Q.shape[0] == 0 or T.shape[0] == 0:
        raise ValueError(f"Q and T: need at least one row each, got {Q.shape[0]} and {T.shape[0]}")
    if resolve_backend(backend, Q, k) == "pyzsl":
        from pyzsl.ops.topk import topk_both_ways as fused

        return fused(Q.contiguous(), T.contiguous(), min(k, T.shape[0]), min(k, Q.shape[0]))
    return (topk(Q, T, k, backend=backend, chunk_bytes=chunk_bytes),
            topk(T, Q, k, backend=backend, chunk_bytes=chunk_bytes))


def _near_and_biased(Q: Tensor, T: Tensor, knn: int, k: int, bias: Tensor, backend: str,
                     chunk_bytes: int = _CHUNK_BYTES):
    """``(top-knn of Q Tᵀ, top-k of Q Tᵀ + bias)``, each ``(values, indices)``: CSLS's r_Q and
    its retrieval. With the kernel one sweep (each score tile feeds both), otherwise two."""
    if resolve_backend(backend, Q, max(knn, k)) == "pyzsl" and Q.shape[0] > 0:
        from pyzsl.ops.topk import bilinear_topk_heads

        return bilinear_topk_heads(Q.contiguous(), None, T.contiguous(), [(knn, None, None), (k, None, bias)])
    return (topk(Q, T, knn, backend=backend, chunk_bytes=chunk_bytes),
            topk(Q, T, k, bias, backend=backend, chunk_bytes=chunk_bytes))


def inverted_softmax(Q: Matrix, T: Matrix, k: int = 1, *, beta: float = 10.0, src: Optional[Matrix] = None, lse: Tensor | None = None,
                     normalize: bool = True, backend: str = "auto",
                     chunk_bytes: int = _CHUNK_BYTES) -> tuple[Tensor, Tensor]:
    """Inverted softmax retrieval (Smith et al., 2017): ``(log P(t | q), target indices)``.

    ``P(t | q) = exp(β cos(q, t)) / Σ_{s ∈ src} exp(β cos(s, t))`` with ``src`` the (mapped)
    source space (default ``Q``); ``lse``: precomputed normalisers
    ``log_sum_exp_over(T, src, beta)``. The normaliser pass costs one C × |src| matmul in
    chunks of ``chunk_bytes``; the retrieval is a top-k with bias ``−lse/β``.
    ``beta`` (the inverse temperature; Smith et al. fit it on the training pairs) defaults to
    10: on unit vectors larger values sharpen the normaliser until hubs stop being penalised
    (on the default French-Finnish data, Procrustes: P@1 0.49 / 0.51 / 0.51 / 0.38 for
    β = 5 / 10 / 15 / 30, CSLS 0.52; pass your own β fitted on held-out pairs).
    """
    if not beta > 0:
        raise ValueError(f"beta: expected a positive inverse temperature, got {beta!r}")
    Q, T, S = _spaces(Q, T, src if lse is None else None, normalize)  # given lse: src unused
    if lse is None:
        lse = log_sum_exp_over(T, S, beta, chunk_bytes=chunk_bytes)
    else:
        lse = _as_vector(lse, "lse", T.shape[0], like=Q)
    v, j = topk(Q, T, k, -lse / beta, backend=backend, chunk_bytes=chunk_bytes)
    return beta * v, j


def retrieve(Q: Matrix, T: Matrix, k: int = 1, method: str = "csls", **kwargs) -> tuple[Tensor, Tensor]:
    """``method`` in ``{"nn", "csls", "isf"}``: :func:`nn`, :func:`csls` or
    :func:`inverted_softmax` with ``kwargs``."""
    if method not in METHODS:
        raise ValueError(f"retrieval: expected one of {METHODS}, got {method!r}")
    if method == "nn":
        kwargs = {k_: v for k_, v in kwargs.items() if k_ not in ("knn", "src", "beta", "r_T", "lse")}
        return nn(Q, T, k, **kwargs)
    if method == "csls":
        kwargs = {k_: v for k_, v in kwargs.items() if k_ not in ("beta", "lse")}
        return csls(Q, T, k, **kwargs)
    kwargs = {k_: v for k_, v in kwargs.items() if k_ not in ("knn", "r_T")}
    return inverted_softmax(Q, T, k, **kwargs)


class Retriever:
    """Retrieval from a fixed source space ``X`` into a fixed target space ``Z`` (both mapped,
    rows normalised once), caching the target-side terms (CSLS's r_T, ISF's normalisers) so
    that many query batches cost only their own passes.

    ``search(rows, k, method)`` queries with source rows (indices into X).
    """

    def __init__(self, X: Matrix, Z: Matrix, *, knn: int = 10, beta: float = 10.0, backend: str = "auto",
                 chunk_bytes: int = _CHUNK_BYTES) -> None:
        X = _as_matrix(X, "X")
        self.X = unit(X)
        self.Z = unit(_as_matrix(Z, "Z", like=X))
        self.knn, self.beta, self.backend, self.chunk_bytes = knn, beta, backend, chunk_bytes
        self._r_T: Tensor | None = None
        self._lse: Tensor | None = None

    def __repr__(self) -> str:
        return (f"Retriever({self.X.shape[0]} → {self.Z.shape[0]} words, d={self.X.shape[1]}, "
                f"knn={self.knn}, beta={self.beta}, backend={self.backend!r})")

    @property
    def r_T(self) -> Tensor:
        if self._r_T is None:
            self._r_T = knn_mean(self.Z, self.X, self.knn, backend=self.backend, chunk_bytes=self.chunk_bytes)
        return self._r_T

    @property
    def lse(self) -> Tensor:
        if self._lse is None:
            self._lse = log_sum_exp_over(self.Z, self.X, self.beta, chunk_bytes=self.chunk_bytes)
        return self._lse

    def search(self, rows: Sequence[int] | Tensor | None, k: int = 1,
               method: str = "csls") -> tuple[Tensor, Tensor]:
        """Top-k targets of the source rows ``rows`` (None: all rows)."""
        Q = self.X if rows is None else self.X[torch.as_tensor(rows, dtype=torch.int64, device=self.X.device)]
        common = dict(normalize=False, backend=self.backend, chunk_bytes=self.chunk_bytes)
        if method == "nn":
            return nn(Q, self.Z, k, **common)
        if method == "csls":
            return csls(Q, self.Z, k, knn=self.knn, r_T=self.r_T, **common)
        if method == "isf":
            return inverted_softmax(Q, self.Z, k, beta=self.beta, lse=self.lse, **common)
        raise ValueError(f"retrieval: expected one of {METHODS}, got {method!r}")


def _dense_csls(Q: Tensor, T: Tensor, src: Tensor, knn: int) -> Tensor:
    """The B × C CSLS matrix, the obvious way (for tests and small inputs only)."""
    Q, T, src = unit(Q), unit(T), unit(src)
    r_T = (T @ src.T).topk(min(knn, src.shape[0]), dim=1).values.mean(1)
    S = Q @ T.T
    r_Q = S.topk(min(knn, T.shape[0]), dim=1).values.mean(1)
    return 2 * S - r_T[None, :] - r_Q[:, None]


__all__ = ["topk", "topk_both_ways", "knn_mean", "log_sum_exp_over", "nn", "csls", "inverted_softmax", "retrieve",
           "Retriever", "unit", "resolve_backend", "BACKENDS", "METHODS"]
