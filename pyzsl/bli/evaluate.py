"""Bilingual lexicon induction accuracy: P@k with NN, CSLS or inverted-softmax retrieval.

MUSE protocol (Conneau et al., 2018): the queries are the distinct source words of the test
dictionary that have at least one pair with both words in the vocabularies; a query is
correct at k when any of its listed (in-vocabulary) translations is among its k retrieved
target words; retrieval is over the whole target vocabulary, and CSLS's neighbourhoods span
the whole vocabularies. ``coverage`` = queries / distinct source words of the file.
``oov="wrong"`` (fastText's ``eval.py`` convention) divides by all the file's source words
instead, i.e. an out-of-vocabulary word counts as a miss.

Cost: the retrieval's top-k passes (see :mod:`pyzsl.bli.retrieval`); for CSLS the r-term of
every target word over the whole source space dominates (one |tgt| × |src| top-k pass).
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Sequence

from pyzsl.bli.dictionary import Dictionary, as_dictionary
from pyzsl.bli.retrieval import METHODS, Matrix, Retriever

if TYPE_CHECKING:
    from pyzsl.bli.io import Embeddings

OOV = ("ignore", "wrong")


def _words_of(x, words, name):
    if words is not None:
        return list(words)
    if hasattr(x, "words"):
        return x.words
    raise ValueError(f"{name}: pass an Embeddings or the word list ({name}_words=...)")


def _matrix_of(x):
    return x.vectors if hasattr(x, "vectors") else x


def evaluate(
    X: "Embeddings | Matrix",
    Z: "Embeddings | Matrix",
    dictionary: "str | os.PathLike | Dictionary | Sequence[tuple[str, str]]",
    *,
    src_words: Sequence[str] | None = None,
    tgt_words: Sequence[str] | None = None,
    retrieval: str = "csls",
    ks: Sequence[int] = (1, 5, 10),
    knn: int = 10,
    beta: float = 10.0,
    oov: str = "ignore",
    backend: str = "auto",
    retriever: Retriever | None = None,
) -> dict:
    """P@k of translating the dictionary's source words from ``X`` into ``Z``.

    ``X``, ``Z``: mapped source and target spaces (Embeddings, or matrices with
    ``src_words``/``tgt_words``); ``dictionary``: a path, :class:`Dictionary` or word pairs;
    ``retriever``: a :class:`Retriever` over (X, Z) to reuse its cached terms.

    Returns a dict: ``"p@1"``, ``"p@5"``, ``"p@10"`` (fractions, one per ``ks``),
    ``"coverage"``, ``"n_queries"``, ``"n_source_words"``, ``"n_pairs"``, ``"retrieval"``,
    ``"oov"``.
    """
    if retrieval not in METHODS:
        raise ValueError(f"retrieval: expected one of {METHODS}, got {retrieval!r}")
    if oov not in OOV:
        raise ValueError(f"oov: expected 'ignore' (MUSE) or 'wrong' (fastText), got {oov!r}")
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"ks: expected positive ints, got {ks!r}")
    sw = _words_of(X, src_words, "src")
    tw = _words_of(Z, tgt_words, "tgt")
    s_ix = {w: i for i, w in enumerate(sw)} if not hasattr(X, "index") or src_words is not None else X.index
    t_ix = {w: i for i, w in enumerate(tw)} if not hasattr(Z, "index") or tgt_words is not None else Z.index
    d = as_dictionary(dictionary)
    total = d.source_words_total
    d = d.restrict(s_ix, t_ix)
    gold: dict[int, set[int]] = {}
    for s, t in d.pairs:
        gold.setdefault(s_ix[s], set()).add(t_ix[t])
    queries = list(gold)
    out = {f"p@{k}": 0.0 for k in ks}
    out.update(coverage=len(queries) / total if total else 0.0, n_queries=len(queries),
               n_source_words=total, n_pairs=len(d.pairs), retrieval=retrieval, oov=oov)
    if not queries:
        return out
    if retriever is None:
        retriever = Retriever(_matrix_of(X), _matrix_of(Z), knn=knn, beta=beta, backend=backend)
    _, idx = retriever.search(queries, k=min(max(ks), len(tw)), method=retrieval)
    idx = idx.cpu().numpy()
    denom = total if oov == "wrong" else len(queries)
    for k in ks:
        hits = sum(1 for q, row in zip(queries, idx[:, :k]) if gold[q].intersection(row.tolist()))
        out[f"p@{k}"] = hits / denom
    return out


def evaluate_all(X, Z, dictionary, retrievals: Sequence[str] = ("nn", "csls"), **kwargs) -> dict[str, dict]:
    """:func:`evaluate` for several retrieval methods, sharing one :class:`Retriever`."""
    if kwargs.get("retriever") is None:
        kwargs["retriever"] = Retriever(_matrix_of(X), _matrix_of(Z), knn=kwargs.get("knn", 10),
                                        beta=kwargs.get("beta", 10.0), backend=kwargs.get("backend", "auto"))
    d = as_dictionary(dictionary)
    return {r: evaluate(X, Z, d, retrieval=r, **kwargs) for r in retrievals}


__all__ = ["evaluate", "evaluate_all", "OOV"]
