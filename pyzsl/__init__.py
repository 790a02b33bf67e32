"""pyzsl: embedding-space learning on fused C++/CUDA kernels.

Bilingual lexicon induction (:mod:`pyzsl.bli`), zero-shot classification
(:mod:`pyzsl.zsl`), multi-task learning (:mod:`pyzsl.mtl`) and meta-learning
(:mod:`pyzsl.meta`), on the kernels of :mod:`pyzsl.ops`.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBMODULES = ("ops", "bli", "zsl", "mtl", "meta", "relevance", "cli")


def build_info() -> dict[str, Any]:
    """What the compiled core was built with.

    Keys: ``version``, ``compiler``, ``openmp``, ``omp_threads``, ``cuda`` (CUDA
    kernels compiled in), ``cuda_runtime``, ``cuda_archs`` and ``cuda_devices``
    (devices visible now; 0 without a GPU or driver).
    """
    from pyzsl.ops._tensor import load_extension

    return dict(load_extension().build_info())


def __getattr__(name: str) -> Any:
    # Subpackages load on first use: `import pyzsl` stays cheap.
    if name in _SUBMODULES:
        return importlib.import_module(f"pyzsl.{name}")
    raise AttributeError(f"module 'pyzsl' has no attribute {name!r}")


__all__ = ["build_info", "__version__", *_SUBMODULES]
