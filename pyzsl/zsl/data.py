"""Loading the zero-shot splits (`gloss2word.npz`, `supersense.npz`).

The files follow Xian et al. (2018) "proposed splits" with 0-based indices, plus
``val_seen_loc`` (a seen-class held-out part of ``train_loc`` for tuning GZSL
calibration on validation data only). Vectors are stored as float16 and cast to
float32 here. Memory: the arrays of one file (gloss2word: 23,744 × 384 inputs,
6,622 × 384 classes, about 40 MB in float32).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["ZSLData", "load_zsl", "SPLIT_KEYS", "CLASS_KEYS"]

SPLIT_KEYS = ("trainval_loc", "test_seen_loc", "test_unseen_loc", "train_loc", "val_loc", "val_seen_loc")
CLASS_KEYS = ("seen_classes", "unseen_classes", "train_classes", "val_classes")


@dataclass(frozen=True)
class ZSLData:
    """One zero-shot data set: inputs ``X`` (N×dv), labels ``y`` (N,), ``class_emb`` (C×dt), splits.

    Split arrays are sample indices into ``X``/``y``; class arrays are indices into ``class_emb``.
    """

    name: str
    X: np.ndarray
    y: np.ndarray
    class_emb: np.ndarray
    class_names: np.ndarray
    seen_classes: np.ndarray
    unseen_classes: np.ndarray
    train_classes: np.ndarray
    val_classes: np.ndarray
    trainval_loc: np.ndarray
    test_seen_loc: np.ndarray
    test_unseen_loc: np.ndarray
    train_loc: np.ndarray
    val_loc: np.ndarray
    val_seen_loc: np.ndarray
    extra: dict = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:  # the sizes, not the arrays
        return (f"ZSLData({self.name!r}: {self.X.shape[0]} samples × {self.X.shape[1]}, "
                f"{self.n_classes} classes ({len(self.seen_classes)} seen / {len(self.unseen_classes)} unseen))")

    @property
    def n_classes(self) -> int:
        return int(self.class_emb.shape[0])

    @property
    def train_fit_loc(self) -> np.ndarray:
        """``train_loc`` minus ``val_seen_loc``: the fit set of the validation protocol."""
        return np.setdiff1d(self.train_loc, self.val_seen_loc)

    @property
    def train_val_classes(self) -> np.ndarray:
        """Train ∪ val classes (= the seen classes): the GZSL candidates on validation."""
        return np.union1d(self.train_classes, self.val_classes)

    @property
    def all_classes(self) -> np.ndarray:
        return np.arange(self.n_classes)


def load_zsl(path: str | os.PathLike, class_emb: str = "class_emb") -> ZSLData:
    """Load a zero-shot ``.npz`` file (see ``shared/data/zsl/README.md``) as float32 arrays.

    ``class_emb`` names the array used as class embeddings (supersense also has
    ``class_emb_name``). Checks that the splits are consistent and raises
    ``ValueError`` naming the file and the array otherwise.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"zero-shot data file not found: {path}")
    with np.load(path, allow_pickle=False) as z:
        missing = [k for k in ("X", "y", class_emb, *SPLIT_KEYS, *CLASS_KEYS) if k not in z.files]
        if missing:
            raise ValueError(f"{path}: missing arrays {missing} (have {sorted(z.files)})")
        arrays = {k: z[k] for k in z.files}
    X = arrays.pop("X").astype(np.float32)
    y = arrays.pop("y").astype(np.int64)
    T = arrays[class_emb].astype(np.float32)
    names = arrays.get("class_names", np.array([str(i) for i in range(T.shape[0])]))
    N, C = X.shape[0], T.shape[0]
    if y.shape != (N,):
        raise ValueError(f"{path}: y has shape {y.shape}, expected ({N},)")
    if y.min() < 0 or y.max() >= C:
        raise ValueError(f"{path}: labels outside 0..{C - 1}")
    kw = {}
    for k in SPLIT_KEYS:
        a = arrays[k].astype(np.int64)
        if a.size and (a.min() < 0 or a.max() >= N):
            raise ValueError(f"{path}: {k} indexes outside 0..{N - 1}")
        kw[k] = a
    for k in CLASS_KEYS:
        a = arrays[k].astype(np.int64)
        if a.size and (a.min() < 0 or a.max() >= C):
            raise ValueError(f"{path}: {k} indexes outside 0..{C - 1}")
        kw[k] = a
    # Cheap protocol checks: test_unseen holds only unseen classes, val_loc no train class.
    if np.isin(y[kw["test_unseen_loc"]], kw["seen_classes"]).any():
        raise ValueError(f"{path}: test_unseen_loc contains seen-class samples")
    if np.isin(y[kw["val_loc"]], kw["train_classes"]).any():
        raise ValueError(f"{path}: val_loc contains train-class samples")
    extra = {k: v for k, v in arrays.items() if k not in (*SPLIT_KEYS, *CLASS_KEYS, "class_names")}
    return ZSLData(name=path.stem, X=X, y=y, class_emb=T, class_names=names, extra=extra, **kw)
