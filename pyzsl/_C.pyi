"""Type stubs of pyzsl's compiled kernels (csrc/bindings.cpp).

Arrays are any object with ``__array_interface__`` (numpy, CPU tensors) or
``__cuda_array_interface__`` (CUDA tensors): the extension validates dtype, shape,
contiguity, writability and device, and never copies. Use the kernels through
``pyzsl.ops`` and ``pyzsl.bli.io``, which allocate the outputs.
"""
from collections.abc import Sequence
from typing import Any

from typing_extensions import Buffer

ArrayLike = Any  # __array_interface__ / __cuda_array_interface__ provider

def build_info() -> dict[str, Any]: ...

# --- bilinear_hinge ---------------------------------------------------------------
def hinge_tile(
    scores: ArrayLike,
    positive: ArrayLike,
    labels: ArrayLike,
    class_mask: ArrayLike | None,
    loss: ArrayLike,
    count: ArrayLike,
    best_value: ArrayLike,
    best_index: ArrayLike,
    status: ArrayLike,
    col0: int,
    num_classes: int,
    margin: float,
    hardest: bool,
    write_grad: bool,
    stream: int = 0,
) -> int:
    """Hinge terms of one B×n score tile; returns its violator count (CPU) or -1 (CUDA)."""

# --- topk -------------------------------------------------------------------------
def topk_tile(
    scores: ArrayLike,
    class_bias: ArrayLike | None,
    class_mask: ArrayLike | None,
    values: ArrayLike,
    indices: ArrayLike,
    status: ArrayLike,
    col0: int,
    num_classes: int,
    stream: int = 0,
    threads: int = 0,
) -> None:
    """Merges one B×n score tile into the running per-row top-k (values, indices)."""

# --- parse_vec --------------------------------------------------------------------
def count_lines(text: Buffer, offset: int = 0, limit: int = -1) -> int: ...
def parse_vec(
    text: Buffer,
    out: ArrayLike,
    offset: int,
    first_line: int,
    skip_errors: bool,
    source: str,
) -> tuple[bytes, int, int, int, int, str]:
    """Returns (words joined by '\\n', rows, skipped, next_offset, next_line, first_error)."""

def format_vec(values: ArrayLike, words: bytes, row0: int, row1: int, precision: int = 0) -> bytes: ...

# --- pcgrad -----------------------------------------------------------------------
def pcgrad(
    blocks: Sequence[ArrayLike],
    order: ArrayLike | None,
    out: Sequence[ArrayLike],
    gram: ArrayLike,
    weights: ArrayLike | None,
    cosine: ArrayLike | None,
    conflicts: ArrayLike | None,
    status: ArrayLike,
    workspace: ArrayLike | None,
    mean: bool,
    stream: int = 0,
) -> None: ...
def pcgrad_workspace_bytes(T: int, P: Sequence[int], float64: bool, device_index: int) -> int: ...
def pcgrad_cpu_isa() -> str: ...
