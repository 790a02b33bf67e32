"""Shared machinery of the bilinear zero-shot models: input checks, prediction, save/load.

Every model here scores an input ``x`` (dv) against a class embedding ``t`` (dt) as
``s = t̃ᵀ M x̃`` where ``x̃``/``t̃`` are the (optionally centred and L2-normalised)
vectors and ``M`` is dt×dv (``None``: the identity, i.e. plain cosine/inner product).
Prediction goes through ``pyzsl.ops.bilinear_topk``, which never forms the B×C
score matrix: extra memory is O((B + C)·d) whatever the number of classes.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import numbers
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pyzsl import ops as _ops
from pyzsl._atomic import atomic_write

__all__ = ["BilinearZSL", "load_model"]

ArrayLike = Any  # numpy array, torch tensor or nested sequence


# --------------------------------------------------------------------------- input checks
def as_matrix(a: ArrayLike, name: str, dtype: torch.dtype, device: torch.device | str,
              row_ids: np.ndarray | None = None) -> Tensor:
    """2-D, non-empty, finite float tensor on ``device`` (a copy only where dtype/device differ).
    ``row_ids[i]``: the caller's index of row i, for messages (rows picked out of a larger array)."""
    if isinstance(a, Tensor):
        t = a.detach()
    else:
        arr = np.asarray(a)
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise TypeError(f"{name}: expected a numeric array, got dtype {arr.dtype}")
        if not arr.flags.writeable:  # torch.from_numpy warns on read-only memory (np.load mmap, views)
            arr = arr.copy()
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.dim() != 2:
        raise ValueError(f"{name}: expected a 2-D array (rows × features), got shape {tuple(t.shape)}")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{name}: empty array of shape {tuple(t.shape)}")
    if t.is_complex():
        raise TypeError(f"{name}: complex values are not supported")
    t = t.to(device=device, dtype=dtype).contiguous()
    if not torch.isfinite(t).all():
        bad = (~torch.isfinite(t)).nonzero()[0].tolist()
        row = bad[0] if row_ids is None else int(row_ids[bad[0]])
        raise ValueError(f"{name}: contains NaN or infinite values (first at row {row}, column {bad[1]})")
    return t


def _real(v: Any) -> bool:
    """A real number (Python or numpy scalar), not a bool."""
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))


def as_labels(y: ArrayLike, name: str, n_rows: int, n_classes: int) -> np.ndarray:
    """1-D int64 labels of length ``n_rows`` in ``0 .. n_classes-1``."""
    arr = y.detach().cpu().numpy() if isinstance(y, Tensor) else np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array of class indices, got shape {arr.shape}")
    if arr.shape[0] != n_rows:
        raise ValueError(f"{name}: has {arr.shape[0]} labels but X has {n_rows} rows")
    if arr.size and np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise ValueError(f"{name}: contains NaN or inf")
    if not np.issubdtype(arr.dtype, np.integer) and not (
            arr.size and np.issubdtype(arr.dtype, np.floating) and np.all(arr == np.round(arr))):
        raise TypeError(f"{name}: expected integer class indices, got dtype {arr.dtype}")
    out = (arr < 0) | (arr >= n_classes)  # on the values as given: the int64 cast wraps 1e30
    if out.any():
        bad = arr[out][0]
        shown = f"{bad:g}" if np.issubdtype(arr.dtype, np.floating) else str(int(bad))
        raise ValueError(f"{name}: label {shown} is out of range: class_embeddings has {n_classes} rows (0..{n_classes - 1})")
    return arr.astype(np.int64, copy=False)


def as_class_set(c: ArrayLike, name: str, n_classes: int) -> np.ndarray:
    """Sorted unique int64 class indices in range; non-empty."""
    arr = c.detach().cpu().numpy() if isinstance(c, Tensor) else np.asarray(c)
    if arr.dtype == bool:
        if arr.shape != (n_classes,):
            raise ValueError(f"{name}: a boolean mask needs shape ({n_classes},), got {arr.shape}")
        arr = np.flatnonzero(arr)
    arr = arr.reshape(-1) if arr.ndim == 0 else arr
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array of class indices, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name}: is empty; give at least one class index")
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name}: expected integer class indices, got dtype {arr.dtype}")
    arr = np.unique(arr.astype(np.int64))
    if arr[0] < 0 or arr[-1] >= n_classes:
        bad = int(arr[(arr < 0) | (arr >= n_classes)][0])
        raise ValueError(f"{name}: class {bad} is out of range: class_embeddings has {n_classes} rows")
    return arr


def l2_normalize(A: Tensor, name: str = "A", row_ids: np.ndarray | None = None) -> Tensor:
    """Rows to unit norm; a zero row is an error naming it (``row_ids[i]``: the caller's index of row i)."""
    n = A.norm(dim=1, keepdim=True)
    if bool((n == 0).any()):
        row = int((n[:, 0] == 0).nonzero()[0])
        raise ValueError(f"{name}: cannot L2-normalise a zero vector (row {row if row_ids is None else int(row_ids[row])})")
    return A / n


# --------------------------------------------------------------------------- models
_REGISTRY: dict[str, type["BilinearZSL"]] = {}


class BilinearZSL:
    """Base class: score ``t̃ᵀ M x̃`` with fitted ``M_`` (dt×dv, or ``None`` for the identity).

    Subclasses implement ``fit`` and set ``M_``, ``classes_`` (sorted training classes),
    ``input_mean_``/``class_mean_`` (``None`` unless centring) and ``n_features_in_``.
    ``classes_`` is what calibrated stacking penalises ("seen" classes).
    """

    #: constructor arguments saved with the model (subclasses override)
    _param_names: tuple[str, ...] = ()

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        _REGISTRY[cls.__name__] = cls

    normalize_inputs: bool = True
    normalize_classes: bool = True
    dtype: torch.dtype = torch.float32
    device: str = "cpu"
    backend: str = "auto"
    csls_k: int = 0
    reference_: Tensor | None = None

    # -- helpers ---------------------------------------------------------------------
    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor arguments, as given: ``type(m)(**m.get_params())`` is an unfitted
        copy (scikit-learn's convention; ``deep`` is accepted for it and has no effect)."""
        return {k: getattr(self, k) for k in self._param_names}

    def set_params(self, **params: Any) -> "BilinearZSL":
        """Change constructor arguments (checked as the constructor does); returns self. A fitted
        model keeps its fit, moved to a new ``dtype``/``device``; the other settings apply to the
        next ``fit`` or prediction."""
        bad = sorted(set(params) - set(self._param_names))
        if bad:
            raise ValueError(f"{type(self).__name__}.set_params: unknown parameter(s) {bad}; "
                             f"valid: {list(self._param_names)}")
        new = {**self.get_params(), **params}
        type(self)(**new)  # checks every value before anything of self changes
        type(self).__init__(self, **new)  # type: ignore[misc]
        for name in ("M_", "input_mean_", "class_mean_", "reference_"):  # the fit follows dtype/device
            v = getattr(self, name, None)
            if isinstance(v, Tensor):
                setattr(self, name, v.to(self.device, self.dtype))
        self._hub_cache = None
        return self

    def __repr__(self) -> str:
        defaults = {k: p.default for k, p in inspect.signature(type(self).__init__).parameters.items()}
        changed = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items()
                            if k not in defaults or defaults[k] != v)
        return f"{type(self).__name__}({changed})"

    def _check_fitted(self) -> None:
        if "classes_" not in self.__dict__ or "M_" not in self.__dict__:
            raise RuntimeError(f"this {type(self).__name__} is not fitted yet: call fit(X, y, class_embeddings) first")

    def _prep(self, A: ArrayLike, name: str, width: int, mean: Tensor | None, unit: bool) -> Tensor:
        A = as_matrix(A, name, self.dtype, self.device)
        if A.shape[1] != width:
            raise ValueError(f"{name}: has {A.shape[1]} features, the model was fitted with {width}")
        if mean is not None:
            A = A - mean
        return l2_normalize(A, name) if unit else A

    def _prep_inputs(self, X: ArrayLike, name: str = "X") -> Tensor:
        return self._prep(X, name, self.n_features_in_, self.input_mean_, self.normalize_inputs)

    def _prep_classes(self, T: ArrayLike, name: str = "class_embeddings") -> Tensor:
        return self._prep(T, name, self.n_class_features_, self.class_mean_, self.normalize_classes)

    def _prepared(self, X: ArrayLike, class_embeddings: ArrayLike) -> tuple[Tensor, Tensor]:
        """The prediction methods' start: a fitted model, and X and the classes as it sees them."""
        self._check_fitted()
        return self._prep_inputs(X), self._prep_classes(class_embeddings)

    def _mask_and_bias(self, T: Tensor, candidates: ArrayLike | None, seen_penalty: float, csls: bool = True
                       ) -> tuple[Tensor | None, Tensor | None]:
        C = T.shape[0]
        mask = None
        if candidates is not None:
            cand = as_class_set(candidates, "candidates", C)
            mask = torch.zeros(C, dtype=torch.bool, device=self.device)
            mask[torch.from_numpy(cand).to(self.device)] = True
        bias = None
        if seen_penalty:
            if not np.isfinite(seen_penalty):
                raise ValueError(f"seen_penalty must be finite, got {seen_penalty}")
            if self.classes_[-1] >= C:
                raise ValueError(f"class_embeddings has {C} rows but the model was trained on class {int(self.classes_[-1])}")
            # Calibrated stacking (Chao et al. 2016): subtract the penalty from every seen class.
            bias = torch.zeros(C, dtype=self.dtype, device=self.device)
            bias[torch.from_numpy(self.classes_).to(self.device)] = -float(seen_penalty)
        if self.csls_k and csls:
            hub = -0.5 * self._class_hubness(T, mask)
            bias = hub if bias is None else bias + hub
        return mask, bias

    def _class_hubness(self, T: Tensor, mask: Tensor | None) -> Tensor:
        """r_j: mean of class j's ``csls_k`` highest scores against the reference (training) inputs.

        CSLS (Conneau et al. 2018) for zero-shot hubness (Dinu et al. 2015): ``s − r_j/2``
        ranks like ``2s − r_T(x) − r_j``. Only classes allowed by ``mask`` are computed
        (others are left at 0); cost O(C·N_ref·d) through ``bilinear_topk`` (no C×N_ref
        buffer), each class computed once per ``T``.
        """
        # Cache per T: r for the rows computed so far (predict calls alternate candidate sets).
        key = (self.csls_k, hashlib.blake2b(T.detach().cpu().numpy().tobytes(), digest_size=16).hexdigest())
        cache = getattr(self, "_hub_cache", None)
        if cache is None or cache[0] != key:
            cache = (key, torch.zeros(T.shape[0], dtype=self.dtype, device=self.device),
                     torch.zeros(T.shape[0], dtype=torch.bool, device=self.device))
            self._hub_cache = cache
        _, r, done = cache
        want = torch.ones_like(done) if mask is None else mask
        rows = (want & ~done).nonzero()[:, 0]
        if rows.numel():
            with torch.no_grad():
                r[rows] = self._prototype_hubness(T[rows] if self.M_ is None else T[rows] @ self.M_)
                done[rows] = True
        return r

    def _prototype_hubness(self, P: Tensor) -> Tensor:
        """Mean of the ``csls_k`` highest scores of each prototype row of ``P`` (input space:
        ``Mᵀ t``, as ``tᵀ M x = (Mᵀ t)ᵀ x``) against the reference inputs."""
        R = self.reference_
        if R is None:
            raise RuntimeError("csls_k > 0 but the model holds no reference inputs (fit it again)")
        vals, _ = _ops.bilinear_topk(P.contiguous(), None, R, min(int(self.csls_k), R.shape[0]),
                                     backend=self.backend)
        return vals.mean(1)

    # -- prediction ------------------------------------------------------------------
    def predict_topk(
        self,
        X: ArrayLike,
        class_embeddings: ArrayLike,
        k: int = 5,
        candidates: ArrayLike | None = None,
        seen_penalty: float = 0.0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` class indices (rows of ``class_embeddings``) and their scores, best first.

        ``candidates``: class indices (or a boolean mask) allowed; others are never returned.
        ``seen_penalty``: calibrated stacking, subtracted from the scores of ``classes_``.
        Ties go to the smaller class index. Returns int64 (B×k) and float (B×k) arrays.
        """
        V, T = self._prepared(X, class_embeddings)
        mask, bias = self._mask_and_bias(T, candidates, seen_penalty)
        n_allowed = T.shape[0] if mask is None else int(mask.sum())
        if not isinstance(k, (int, np.integer)) or k < 1 or k > n_allowed:
            raise ValueError(f"k must be an integer in 1..{n_allowed} (the number of candidate classes), got {k}")
        with torch.no_grad():
            vals, idx = _ops.bilinear_topk(V, self.M_, T, int(k), class_mask=mask, class_bias=bias,
                                          backend=self.backend)
        return idx.cpu().numpy().astype(np.int64), vals.cpu().numpy()

    def predict(
        self,
        X: ArrayLike,
        class_embeddings: ArrayLike,
        candidates: ArrayLike | None = None,
        seen_penalty: float = 0.0,
    ) -> np.ndarray:
        """Best class index per row of ``X`` among ``candidates`` (default: all rows of ``class_embeddings``)."""
        return self.predict_topk(X, class_embeddings, 1, candidates, seen_penalty)[0][:, 0]

    def predict_transductive(
        self,
        X: ArrayLike,
        class_embeddings: ArrayLike,
        candidates: ArrayLike | None = None,
        seen_penalty: float = 0.0,
        strength: float = 2.0,
        max_iter: int = 10,
    ) -> np.ndarray:
        """Transductive prediction: the class prototypes adapt to the unlabelled inputs ``X``.

        Each class's prototype in input space, ``p_c = Mᵀ t̃_c``, moves towards the mean of the
        inputs currently assigned to it: ``q_c = ‖p_c‖ · unit(unit(p_c) + strength · unit(mean_c))``
        (classes with no input keep ``p_c``), and the inputs are re-assigned, until no
        assignment changes or ``max_iter`` rounds (k-means started from the class embeddings,
        as in the visual-structure prototypes of Wan et al. 2019). The scores keep the model's
        scale, so ``seen_penalty`` applies unchanged; the CSLS correction (``csls_k``) is
        recomputed for the prototypes that moved in a round (O(C·N_ref·d) at most a round;
        keeping the initial prototypes' hub terms costs 3 points on supersense).
        ``strength = 0`` is :meth:`predict`. Labels are never used: this is the transductive
        setting (a batch of unlabelled inputs classified together), not the inductive one.
        Extra memory O((B + C)·d), no B×C matrix.
        """
        if not np.isfinite(strength) or strength < 0:
            raise ValueError(f"strength must be a finite number >= 0, got {strength}")
        if not isinstance(max_iter, (int, np.integer)) or max_iter < 0:
            raise ValueError(f"max_iter must be an integer >= 0, got {max_iter}")
        V, T = self._prepared(X, class_embeddings)
        mask, penalty = self._mask_and_bias(T, candidates, seen_penalty, csls=False)
        rows = torch.arange(T.shape[0], device=T.device) if mask is None else mask.nonzero()[:, 0]
        with torch.no_grad():
            P = T if self.M_ is None else T @ self.M_          # tᵀ M x = (Mᵀ t)ᵀ x
            tiny = torch.finfo(P.dtype).tiny
            scale = P.norm(dim=1, keepdim=True).clamp_min(tiny)
            base = P / scale
            Q, assign = P, None
            # the unmoved prototypes' hub terms are predict's (cached per class set)
            hub = -0.5 * self._class_hubness(T, mask) if self.csls_k else None
            stale = rows[:0]  # the prototypes whose hub term is out of date
            for _ in range(int(max_iter) + 1):
                bias = penalty
                if hub is not None:
                    if stale.numel():
                        hub[stale] = -0.5 * self._prototype_hubness(Q[stale])
                    bias = hub if bias is None else bias + hub
                new = _ops.bilinear_topk(V, None, Q.contiguous(), 1, class_mask=mask, class_bias=bias,
                                         backend=self.backend)[1][:, 0].long()
                done = strength == 0 or (assign is not None and torch.equal(new, assign))
                assign = new
                if done:
                    break
                sums = torch.zeros_like(P).index_add_(0, assign, V)
                norms = sums.norm(dim=1, keepdim=True)
                has = norms[:, 0] > 0
                moved = base[has] + strength * sums[has] / norms[has]
                Q_old, Q = Q, P.clone()
                Q[has] = scale[has] * moved / moved.norm(dim=1, keepdim=True).clamp_min(tiny)
                stale = rows[(Q[rows] != Q_old[rows]).any(1)]
        return assign.cpu().numpy().astype(np.int64)

    def decision_function(
        self,
        X: ArrayLike,
        class_embeddings: ArrayLike,
        candidates: ArrayLike | None = None,
        seen_penalty: float = 0.0,
    ) -> np.ndarray:
        """Scores ``t̃ᵀ M x̃`` as a B×C array (B×len(candidates), sorted candidates, if given).

        This one does form the B×C matrix (that is what it returns); use ``predict_topk``
        to rank many classes without it.
        """
        V, T = self._prepared(X, class_embeddings)
        cols = None if candidates is None else as_class_set(candidates, "candidates", T.shape[0])
        _, bias = self._mask_and_bias(T, cols, seen_penalty)
        with torch.no_grad():
            Tc = T if cols is None else T[torch.from_numpy(cols).to(self.device)]
            S = (V if self.M_ is None else V @ self.M_.T) @ Tc.T
            if bias is not None:
                S = S + (bias if cols is None else bias[torch.from_numpy(cols).to(self.device)])
        return S.cpu().numpy()

    # -- persistence -----------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Save to an ``.npz`` file atomically (temporary file + ``os.replace``); no pickle."""
        self._check_fitted()
        meta = {
            "kind": type(self).__name__,
            "params": {k: str(v).replace("torch.", "") if k == "dtype" else v
                       for k, v in self.get_params().items()},
            "n_features_in": int(self.n_features_in_),
            "n_class_features": int(self.n_class_features_),
            "format": 1,
            # what the fit recorded, kept for inspection (absent in older files)
            "fit_time": getattr(self, "fit_time_", None),
            "loss_curve": getattr(self, "loss_curve_", None),
        }
        arrays = {"meta": np.array(json.dumps(meta)), "classes": self.classes_}
        if self.M_ is not None:
            arrays["M"] = self.M_.detach().cpu().numpy()
        if self.input_mean_ is not None:
            arrays["input_mean"] = self.input_mean_.cpu().numpy()
        if self.class_mean_ is not None:
            arrays["class_mean"] = self.class_mean_.cpu().numpy()
        if self.reference_ is not None:
            arrays["reference"] = self.reference_.cpu().numpy()
        with atomic_write(path, parents=True) as f:
            np.savez(f, **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device | None = None) -> "BilinearZSL":
        """Load a model written by ``save``; ``device`` overrides the saved one."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"model file not found: {path}")
        try:
            with open(path, "rb") as f:  # ours to close, whatever np.load makes of the bytes
                z = np.load(f, allow_pickle=False)
                if not isinstance(z, np.lib.npyio.NpzFile):
                    raise ValueError("a single .npy array")
                if "meta" not in z.files:
                    raise ValueError("no 'meta' entry")
                meta = json.loads(str(z["meta"]))
                arrays = {k: z[k] for k in z.files if k != "meta"}
            kind = meta.get("kind")
            params = dict(meta["params"])
            n_in, n_cls, classes = int(meta["n_features_in"]), int(meta["n_class_features"]), arrays["classes"]
        except (ValueError, KeyError, TypeError, AttributeError, OSError, EOFError, UnicodeDecodeError,
                zipfile.BadZipFile) as e:
            raise ValueError(f"{path}: not a pyzsl.zsl model file ({type(e).__name__}: {e})") from e
        if kind not in _REGISTRY:
            raise ValueError(f"{path}: unknown model kind {kind!r}")
        target = _REGISTRY[kind]
        if cls is not BilinearZSL and not issubclass(target, cls):
            raise ValueError(f"{path}: holds a {kind}, not a {cls.__name__}")
        if "dtype" in params:
            params["dtype"] = getattr(torch, params["dtype"])
        if device is not None:
            params["device"] = str(device)
        model = target(**params)
        dev = model.device

        def tensor(name: str) -> Tensor | None:
            return torch.from_numpy(arrays[name]).to(dev, model.dtype) if name in arrays else None

        model.classes_ = classes.astype(np.int64)
        model.n_features_in_, model.n_class_features_ = n_in, n_cls
        for key in ("fit_time", "loss_curve"):
            if meta.get(key) is not None:
                setattr(model, key + "_", meta[key])
        model.M_ = tensor("M")
        model.input_mean_ = tensor("input_mean")
        model.class_mean_ = tensor("class_mean")
        model.reference_ = tensor("reference")
        return model


def load_model(path: str | os.PathLike, device: str | torch.device | None = None) -> BilinearZSL:
    """Load any ``pyzsl.zsl`` model saved with ``.save(path)``."""
    return BilinearZSL.load(path, device=device)
