"""Loaders for the shared multi-task data (``shared/data/mtl``): multidigits and wordtasks.

Both return ``(X, {task: y})`` for one split: one input, one label vector per task (the format
``MultiTaskTrainer.fit`` takes). The folder is ``$PYZSL_SHARED_DATA/mtl`` if that variable is
set, else ``<repo>/../shared/data/mtl``.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["default_root", "load_multidigits", "load_wordtasks"]

_SPLITS = ("train", "val", "test")


def default_root() -> Path:
    env = os.environ.get("PYZSL_SHARED_DATA")
    if env:
        return Path(env) / "mtl"
    return Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mtl"


def _open(root: str | os.PathLike | None, name: str) -> Path:
    path = Path(root) if root is not None else default_root()
    f = path / name
    if not f.is_file():
        raise FileNotFoundError(
            f"{f} not found: pass root= (the folder holding {name}) or set PYZSL_SHARED_DATA")
    return f


def _check_split(split: str) -> None:
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")


def load_multidigits(split: str = "train", root: str | os.PathLike | None = None,
                     limit: int | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """multidigits (MultiMNIST-style): images (N, 1, 28, 28) float32 in [0, 1], tasks left/right.

    ``limit`` keeps the first ``limit`` composites (for small tests).
    """
    _check_split(split)
    with np.load(_open(root, "multidigits.npz")) as z:
        sl = slice(None) if limit is None else slice(0, int(limit))
        x = z[f"{split}_images"][sl]
        ys = {"left": z[f"{split}_y_left"][sl], "right": z[f"{split}_y_right"][sl]}
    X = torch.from_numpy(x.astype(np.float32) / 255.0)[:, None]
    return X, {k: torch.from_numpy(v.astype(np.int64)) for k, v in ys.items()}


def load_wordtasks(split: str = "train", root: str | os.PathLike | None = None,
                   limit: int | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """wordtasks: MiniLM word vectors (N, 384) float32 (stored float16), tasks pos (4) / supersense (45)."""
    _check_split(split)
    with np.load(_open(root, "wordtasks.npz")) as z:
        idx = z[f"{split}_idx"]
        if limit is not None:
            idx = idx[: int(limit)]
        X = z["X"][idx].astype(np.float32)
        ys = {"pos": z["y_pos"][idx], "supersense": z["y_supersense"][idx]}
    return torch.from_numpy(X), {k: torch.from_numpy(v.astype(np.int64)) for k, v in ys.items()}


N_CLASSES = {"left": 10, "right": 10, "pos": 4, "supersense": 45}
