"""``align(src, tgt, ...)``: two monolingual embedding spaces → an :class:`Alignment`.

The pipeline of MUSE / VecMap / fastText's alignment scripts in one call: load (paths or
:class:`~pyzsl.bli.io.Embeddings`), normalise (``unit,center,unit``), fit a map on a train
dictionary or a seed (orthogonal Procrustes, Schönemann 1966 / Xing et al. 2015; RCSLS,
Joulin et al. 2018; self-learning, Artetxe et al. 2017/2018), then translate, build a
lexicon or evaluate with NN / CSLS (Conneau et al., 2018) / inverted softmax (Smith et al.,
2017) retrieval on the fused top-k. Model selection never sees a test dictionary.

Memory: the two normalised spaces (float32, (n_src + n_tgt)·d·4 bytes) plus their mapped
copies, and the retrieval's bounded buffers (:mod:`pyzsl.bli.retrieval`).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import zipfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from pyzsl._atomic import atomic_write
from pyzsl.bli.dictionary import Dictionary, as_dictionary, build_seed, load_dictionary
from pyzsl.bli.evaluate import evaluate as _evaluate
from pyzsl.bli.io import Embeddings, load_embeddings
from pyzsl.bli.normalize import normalize as _normalize
from pyzsl.bli.procrustes import LinearMap, procrustes
from pyzsl.bli.retrieval import METHODS, Retriever

log = logging.getLogger(__name__)

MAPPING_METHODS = ("procrustes", "rcsls")
_FORMAT = "pyzsl.bli.Alignment/1"


def _as_embeddings(x, name: str, max_vocab, lower) -> Embeddings:
    if isinstance(x, Embeddings):
        x = x.head(max_vocab) if max_vocab is not None and len(x) > max_vocab else x
        return x.lowercased() if lower else x
    if isinstance(x, (str, os.PathLike)):
        return load_embeddings(x, max_vocab=max_vocab, lower=lower)
    raise TypeError(f"{name}: expected a path or an Embeddings, got {type(x).__name__}")


def _device(device) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' but torch sees no CUDA device; use device='cpu'")
    return dev


class Alignment:
    """Two embedding spaces and the map that aligns them.

    ``src``/``tgt``: the :class:`Embeddings` as loaded; ``mapping``: a
    :class:`~pyzsl.bli.procrustes.LinearMap` applied to the normalised vectors
    (``normalize(src) @ mapping.src``); ``info``: what the fit did (method, dictionary sizes,
    timings, self-learning history).
    """

    def __init__(self, src: Embeddings, tgt: Embeddings, mapping: LinearMap,
                 normalize: str = "unit,center,unit", *, knn: int = 10, beta: float = 10.0,
                 backend: str = "auto", device: str | torch.device = "cpu",
                 info: dict[str, Any] | None = None) -> None:
        self.src, self.tgt, self.mapping = src, tgt, mapping
        self.normalize = normalize
        self.knn, self.beta, self.backend = knn, beta, backend
        self.device = _device(device)
        self.info: dict[str, Any] = dict(info or {})
        self._retriever: Retriever | None = None
        self._X: Tensor | None = None
        self._Z: Tensor | None = None

    # ---- mapped spaces ---------------------------------------------------------------
    def _spaces(self) -> tuple[Tensor, Tensor]:
        if self._X is None:
            X = _normalize(torch.from_numpy(self.src.vectors).to(self.device), self.normalize)
            Z = _normalize(torch.from_numpy(self.tgt.vectors).to(self.device), self.normalize)
            m = self.mapping.to(device=self.device, dtype=X.dtype)
            self._X, self._Z = m.map_src(X).contiguous(), m.map_tgt(Z).contiguous()
        return self._X, self._Z

    @property
    def retriever(self) -> Retriever:
        """The cached :class:`Retriever` over the mapped spaces (CSLS/ISF terms computed once)."""
        if self._retriever is None:
            X, Z = self._spaces()
            self._retriever = Retriever(X, Z, knn=self.knn, beta=self.beta, backend=self.backend)
        return self._retriever

    def mapped(self) -> tuple[Embeddings, Embeddings]:
        """The source and target spaces after normalisation and mapping (shared space)."""
        X, Z = self._spaces()
        return (Embeddings(self.src.words, X.float().cpu().numpy(), self.src.source),
                Embeddings(self.tgt.words, Z.float().cpu().numpy(), self.tgt.source))

    # ---- use -------------------------------------------------------------------------
    def translate(self, words: str | Sequence[str], k: int = 1, retrieval: str = "csls",
                  with_scores: bool = False) -> list[list[Any]]:
        """The ``k`` best translations of each word: a list (one per word) of target words,
        or of ``(word, score)`` with ``with_scores``. An unknown word is a KeyError naming it."""
        if isinstance(words, str):
            words = [words]
        words = list(words)
        missing = [w for w in words if w not in self.src.index]
        if missing:
            raise KeyError(f"not in the source vocabulary: {', '.join(map(repr, missing[:10]))}"
                           + (f" (+{len(missing) - 10} more)" if len(missing) > 10 else ""))
        if not words:
            return []
        rows = [self.src.index[w] for w in words]
        vals, idx = self.retriever.search(rows, k=min(k, len(self.tgt)), method=retrieval)
        vals, idx = vals.cpu().tolist(), idx.cpu().tolist()
        tw = self.tgt.words
        if with_scores:
            return [[(tw[j], float(v)) for v, j in zip(vr, ir)] for vr, ir in zip(vals, idx)]
        return [[tw[j] for j in ir] for ir in idx]

    def lexicon(self, retrieval: str = "csls", k: int = 1, max_words: int | None = None,
                batch: int = 4096, progress: bool = False) -> list[tuple[str, str, float]]:
        """``(source, target, score)`` for the first ``max_words`` source words (all by
        default), ``k`` rows per word, best first. Memory per batch: O(batch·k)."""
        from tqdm.auto import tqdm

        n = len(self.src) if max_words is None else min(max_words, len(self.src))
        out: list[tuple[str, str, float]] = []
        sw, tw = self.src.words, self.tgt.words
        k = min(k, len(self.tgt))
        self.retriever  # noqa: B018 - build the cached terms before the bar starts
        for i in tqdm(range(0, n, batch), desc="lexicon", unit="batch", disable=not progress, leave=False):
            vals, idx = self.retriever.search(torch.arange(i, min(n, i + batch)), k=k, method=retrieval)
            for r, (vr, ir) in enumerate(zip(vals.cpu().tolist(), idx.cpu().tolist())):
                out.extend((sw[i + r], tw[j], float(v)) for v, j in zip(vr, ir))
        return out

    def evaluate(self, dictionary, retrieval: str = "csls", ks: Sequence[int] = (1, 5, 10),
                 oov: str = "ignore") -> dict:
        """P@k on a test dictionary (path, Dictionary or pairs), MUSE protocol: a dict with
        ``"p@1"``, ``"p@5"``, ``"p@10"`` (fractions), ``"coverage"`` and counts.
        ``oov="wrong"`` counts out-of-vocabulary source words as misses (fastText). A path is
        read lowercased when the embeddings were (``lower=True``), as the train dictionary was."""
        if isinstance(dictionary, (str, os.PathLike)):
            dictionary = load_dictionary(dictionary, lower=bool(self.info.get("lower", False)))
        return _evaluate(self.src, self.tgt, dictionary, retrieval=retrieval, ks=ks, oov=oov,
                         retriever=self.retriever)

    # ---- persistence -----------------------------------------------------------------
    def save(self, path: str | os.PathLike, include_embeddings: bool = False) -> None:
        """Write the map and its settings to ``path`` (``.npz``) atomically. The embeddings
        are referenced by path unless ``include_embeddings`` (then stored in the file)."""
        path = Path(path)
        meta = dict(format=_FORMAT, normalize=self.normalize, knn=self.knn, beta=self.beta,
                    src_path=_abspath(self.src.source), tgt_path=_abspath(self.tgt.source),
                    src_words=[len(self.src), _digest(self.src.words)],
                    tgt_words=[len(self.tgt), _digest(self.tgt.words)],
                    info=_jsonable(self.info), include_embeddings=include_embeddings)
        arrays = {"meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
                  "map_src": self.mapping.src.detach().cpu().numpy()}
        if self.mapping.tgt is not None:
            arrays["map_tgt"] = self.mapping.tgt.detach().cpu().numpy()
        if include_embeddings:
            arrays.update(src_vectors=self.src.vectors, tgt_vectors=self.tgt.vectors,
                          src_words=np.array(self.src.words), tgt_words=np.array(self.tgt.words))
        with atomic_write(path) as f:
            np.savez(f, **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike, src=None, tgt=None, *, backend: str = "auto",
             device: str | torch.device = "cpu") -> "Alignment":
        """Read an :meth:`save` file; ``src``/``tgt`` (paths or Embeddings) override the
        stored embedding paths. Embeddings read again from the stored paths must be the words
        the alignment was fit on (same count and order), else a ValueError says so."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"alignment file not found: {path}")
        try:
            with open(path, "rb") as f:  # ours to close, whatever np.load makes of the bytes
                z = np.load(f, allow_pickle=False)
                if not isinstance(z, np.lib.npyio.NpzFile):
                    raise ValueError("a single .npy array; a bare map W is read with --mapping / LinearMap")
                meta = json.loads(bytes(z["meta"]).decode())
                arrays = {k: z[k] for k in z.files if k != "meta"}
        except (ValueError, KeyError, OSError, EOFError, UnicodeDecodeError, zipfile.BadZipFile) as e:
            raise ValueError(f"{path}: not a pyzsl alignment file ({e})") from e
        if meta.get("format") != _FORMAT:
            raise ValueError(f"{path}: not a pyzsl alignment file (format {meta.get('format')!r})")
        info = meta.get("info", {})
        max_vocab, lower = info.get("max_vocab"), info.get("lower", False)

        def side(x, key):
            if x is not None:
                return _as_embeddings(x, key, max_vocab, lower)
            if meta.get("include_embeddings"):
                return Embeddings(arrays[f"{key}_words"].tolist(), arrays[f"{key}_vectors"],
                                  meta.get(f"{key}_path"))
            p = meta.get(f"{key}_path")
            if not p:
                raise ValueError(f"{path}: stores no {key} embeddings path; pass {key}=...")
            n, digest = meta.get(f"{key}_words", (max_vocab, None))
            e = _as_embeddings(p, key, n, lower)
            if digest is not None and (len(e) != n or _digest(e.words) != digest):
                raise ValueError(f"{path}: the {key} embeddings read again from {p} are not the "
                                 f"{n} words the alignment was fit on (the file changed, or they "
                                 f"were loaded with other options); pass {key}=... explicitly")
            return e

        s, t = side(src, "src"), side(tgt, "tgt")
        mapping = LinearMap(torch.from_numpy(arrays["map_src"]),
                            torch.from_numpy(arrays["map_tgt"]) if "map_tgt" in arrays else None)
        if mapping.src.shape[0] != s.dim:
            raise ValueError(f"{path}: the map takes {mapping.src.shape[0]}-d source vectors, "
                             f"the source embeddings have {s.dim}")
        return cls(s, t, mapping, meta["normalize"], knn=meta["knn"], beta=meta["beta"],
                   backend=backend, device=device, info=info)

    def __repr__(self) -> str:
        return (f"Alignment({len(self.src)} × {len(self.tgt)} words, method="
                f"{self.info.get('method', '?')}, normalize={self.normalize!r})")


def _abspath(source: str | None) -> str | None:
    return str(Path(source).resolve()) if source and Path(source).exists() else source


def _digest(words: Sequence[str]) -> str:
    return hashlib.sha1("\n".join(words).encode()).hexdigest()


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.integer, np.floating)):
        return x.item()
    if isinstance(x, Tensor):
        return x.tolist() if x.numel() <= 16 else f"<tensor {tuple(x.shape)}>"
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return str(x)


def _orthogonal_procrustes(X: Tensor, Z: Tensor, pairs: Tensor) -> LinearMap:
    return procrustes(X, Z, pairs)


def align(
    src: str | os.PathLike | Embeddings,
    tgt: str | os.PathLike | Embeddings,
    train_dict: str | os.PathLike | Dictionary | Sequence[tuple[str, str]] | None = None,
    seed: str | int | None = None,
    method: str = "procrustes",
    self_learning: bool = False,
    *,
    normalize: str = "unit,center,unit",
    max_vocab: int | None = None,
    lower: bool = False,
    knn: int = 10,
    beta: float = 10.0,
    backend: str = "auto",
    device: str | torch.device = "cpu",
    progress: bool = False,
    method_options: dict[str, Any] | None = None,
    self_learning_options: dict[str, Any] | None = None,
) -> Alignment:
    """Align ``src`` onto ``tgt`` (paths or :class:`~pyzsl.bli.io.Embeddings`).

    Supervision (one of):

    - ``train_dict``: a dictionary (path, :class:`Dictionary` or word pairs); with an int
      ``seed=N``, only its first N pairs in file order, among those in the vocabularies (a
      small seed: the "50 seed pairs" protocol);
    - ``seed="identical"`` / ``"numerals"``: identical strings / numerals as the dictionary;
    - nothing, with ``self_learning=True``: fully unsupervised (similarity-distribution
      initialisation, Artetxe et al., 2018).

    ``method``: ``"procrustes"`` (orthogonal; ``method_options`` e.g. VecMap's whitening) or
    ``"rcsls"`` (Joulin et al., 2018). ``self_learning``: iterate mapping ↔ CSLS dictionary
    induction from that start (its model selection uses no test data).
    ``knn``: the CSLS neighbourhood, of the retrieval and of self-learning's induction and
    RCSLS's criterion (unless their options say otherwise); ``beta``: the inverted-softmax
    temperature of the retrieval.
    """
    if method not in MAPPING_METHODS:
        raise ValueError(f"method: expected one of {MAPPING_METHODS}, got {method!r}")
    if seed == "none":
        seed = None
    if isinstance(seed, str) and seed not in ("identical", "numerals"):
        raise ValueError(f"seed: expected 'identical', 'numerals', 'none' or an int, got {seed!r}")
    if isinstance(seed, bool) or (seed is not None and not isinstance(seed, (str, int))):
        raise TypeError(f"seed: expected a string or an int, got {type(seed).__name__}")
    if isinstance(seed, int) and (train_dict is None or seed < 1):
        raise ValueError("seed=N (an int) takes the first N pairs of train_dict: "
                         "pass train_dict and N >= 1")
    if isinstance(seed, str) and train_dict is not None:
        raise ValueError(f"pass either train_dict or seed={seed!r}, not both")
    if train_dict is None and seed is None and not self_learning:
        raise ValueError("no supervision: pass train_dict, seed='identical'/'numerals', or "
                         "self_learning=True for the fully unsupervised mode")
    dev = _device(device)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    s = _as_embeddings(src, "src", max_vocab, lower)
    t = _as_embeddings(tgt, "tgt", max_vocab, lower)
    timings["load"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    info: dict[str, Any] = dict(method=method, self_learning=self_learning, normalize=normalize,
                                max_vocab=max_vocab, lower=lower,
                                src_words=len(s), tgt_words=len(t))
    if train_dict is not None:
        d = as_dictionary(train_dict, s, t, lower)
        info["train_dict"] = dict(path=d.path, pairs=len(d), dropped=d.dropped)
        if isinstance(seed, int):
            if seed > len(d):
                log.warning("seed=%d but train_dict has %d pairs in the vocabularies: all are used", seed, len(d))
            d = d.first(seed)
            info["seed"] = dict(kind=f"first {seed} pairs", pairs=len(d), source_words=len(d.source_words()))
        if not d.pairs:
            raise ValueError(f"train_dict {d.path or ''}: no pair has both words in the vocabularies")
    elif seed is not None:
        d = build_seed(seed, s, t)
        info["seed"] = dict(kind=seed, pairs=len(d))
    else:
        d = None
        info["seed"] = dict(kind="unsupervised", pairs=0)
    pairs = None if d is None else torch.as_tensor(d.indices(s, t))

    X = _normalize(torch.from_numpy(s.vectors).to(dev), normalize)
    Z = _normalize(torch.from_numpy(t.vectors).to(dev), normalize)
    timings["prepare"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    opts = dict(method_options or {})
    if self_learning:
        from pyzsl.bli.self_learning import self_learning as _self_learning

        sl_opts = {"csls_knn": knn,
                   # heuristic seeds (identical strings, numerals) hold wrong pairs: never kept
                   "keep_seed": not isinstance(seed, str),
                   # the Procrustes options (e.g. VecMap's whitening) shape the final fit
                   **({"final_options": opts} if opts and method == "procrustes" else {}),
                   **(self_learning_options or {})}
        res = _self_learning(X, Z, pairs if pairs is not None else "unsupervised",
                             src_words=s.words, tgt_words=t.words, backend=backend,
                             device=dev, progress=progress, **sl_opts)
        mapping = res.mapping
        info["self_learning_result"] = dict(objective=res.objective, iterations=res.n_iter,
                                     converged=res.converged, induced_pairs=int(res.dictionary.shape[0]),
                                     history=res.history)
        if method == "rcsls":  # RCSLS refit on the dictionary that self-learning selected
            mapping = _rcsls(X, Z, res.dictionary, backend, progress, {"knn": knn, **opts}, info)
    elif method == "rcsls":
        mapping = _rcsls(X, Z, pairs, backend, progress, {"knn": knn, **opts}, info)
    else:
        mapping = procrustes(X, Z, pairs, **opts) if opts else _orthogonal_procrustes(X, Z, pairs)
    timings["map"] = time.perf_counter() - t0
    info["timings"] = timings
    al = Alignment(s, t, mapping, normalize, knn=knn, beta=beta, backend=backend,
                   device=dev, info=info)
    m = mapping.to(device=dev, dtype=X.dtype)
    al._X, al._Z = m.map_src(X).contiguous(), m.map_tgt(Z).contiguous()
    return al


def _rcsls(X: Tensor, Z: Tensor, pairs, backend: str, progress: bool, opts: dict,
           info: dict) -> LinearMap:
    from pyzsl.bli.rcsls import rcsls

    out = rcsls(X, Z, pairs, backend=backend, progress=progress, **opts)
    if isinstance(out, LinearMap):
        return out
    info["rcsls_result"] = dict(objective=getattr(out, "objective", None),
                                history=getattr(out, "history", None))
    return out.mapping


__all__ = ["align", "Alignment", "MAPPING_METHODS", "METHODS"]
