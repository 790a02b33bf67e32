"""Loader for the shared few-shot data (``shared/data/fewshot/wordcats.npz``: 200 WordNet
categories of MiniLM word vectors, meta-train/val/test class split, label embeddings).
The folder is ``$PYZSL_FEWSHOT_DATA`` if set, else ``$PYZSL_SHARED_DATA/fewshot``, else
``<repo>/../shared/data/fewshot``."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["WordCats", "load_wordcats", "default_root"]


def default_root() -> Path:
    env = os.environ.get("PYZSL_FEWSHOT_DATA")
    if env:
        return Path(env)
    shared = os.environ.get("PYZSL_SHARED_DATA")
    if shared:
        return Path(shared) / "fewshot"
    return Path(__file__).resolve().parents[2].parent / "shared" / "data" / "fewshot"


@dataclass
class WordCats:
    """X (N×384 float32, unit rows), y (N,) int64, label_emb (200×384 float32), names, and
    the meta-train/val/test class indices."""

    X: Tensor
    y: Tensor
    label_emb: Tensor
    names: list[str]
    words: list[str]
    splits: dict[str, Tensor]


def load_wordcats(root: str | os.PathLike[str] | None = None) -> WordCats:
    path = (Path(root) if root is not None else default_root()) / "wordcats.npz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: pass root= (the folder holding wordcats.npz) "
                                "or set PYZSL_FEWSHOT_DATA")
    with np.load(path) as z:  # no pickle: plain arrays and unicode strings
        X = torch.from_numpy(z["X"].astype(np.float32))  # stored float16
        return WordCats(
            X=X, y=torch.from_numpy(z["y"].astype(np.int64)),
            label_emb=torch.from_numpy(z["label_emb"].astype(np.float32)),
            names=[str(s) for s in z["category_names"]], words=[str(s) for s in z["words"]],
            splits={s: torch.from_numpy(z[f"meta_{s}_classes"].astype(np.int64))
                    for s in ("train", "val", "test")})
