"""Bilingual dictionaries (MUSE format) and seed dictionaries.

A dictionary file has one pair per line, ``source target``, separated by spaces or a tab
(a tab-separated line may hold multi-word entries); a source word may have several lines
(several translations). This is the format of MUSE (Conneau et al., 2018), VecMap and the
FreeDict files in ``shared/data/bli``.

``load_dictionary(path, src, tgt)`` keeps the pairs whose two words are in the vocabularies
and counts what it dropped (``Dictionary.dropped``). Seed builders for weakly supervised
mapping (Artetxe et al., 2017): :func:`identical_seed` (identical strings) and
:func:`numeral_seed` (identical numerals).
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from pyzsl._atomic import atomic_write

log = logging.getLogger(__name__)

_NUMERAL = re.compile(r"^[0-9]+$")  # VecMap's --init_numerals rule
_SPACES = re.compile(r" +")


def _vocab_index(v) -> dict[str, int] | None:
    """An Embeddings, a word→row dict or a word list → word→row dict (None stays None)."""
    if v is None:
        return None
    if hasattr(v, "index") and isinstance(v.index, dict):
        return v.index
    if isinstance(v, dict):
        return v
    return {w: i for i, w in enumerate(v)}


class Dictionary:
    """Word pairs ``(source, target)`` in file order, duplicates merged.

    Attributes:
        pairs: the kept pairs.
        source_words_total: distinct source words in the file (before any vocabulary
            filtering), the denominator of coverage.
        dropped: counts of dropped pairs: ``{"pairs", "src_oov", "tgt_oov"}`` (a pair with
            both words out of vocabulary counts once in ``pairs`` and in both others).
        path: the file it came from, if any.
    """

    def __init__(self, pairs: Iterable[tuple[str, str]], path: str | None = None,
                 source_words_total: int | None = None, dropped: dict | None = None) -> None:
        self.pairs: list[tuple[str, str]] = list(dict.fromkeys((str(s), str(t)) for s, t in pairs))
        self.path = path
        self.source_words_total = (len(self.source_words()) if source_words_total is None
                                   else source_words_total)
        self.dropped = dict(dropped or {"pairs": 0, "src_oov": 0, "tgt_oov": 0})

    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self):
        return iter(self.pairs)

    def __repr__(self) -> str:
        where = f" from {self.path}" if self.path else ""
        return (f"Dictionary({len(self.pairs)} pairs, {len(self.source_words())} source words{where}; "
                f"dropped {self.dropped['pairs']} out-of-vocabulary pairs)")

    def source_words(self) -> list[str]:
        """Distinct source words, in order of first appearance."""
        return list(dict.fromkeys(s for s, _ in self.pairs))

    def translations(self) -> dict[str, list[str]]:
        """source word → its targets (file order)."""
        out: dict[str, list[str]] = {}
        for s, t in self.pairs:
            out.setdefault(s, []).append(t)
        return out

    def first(self, n_pairs: int) -> "Dictionary":
        """The first ``n_pairs`` pairs in file order (the "50 seed pairs" protocol: a file's
        first 50 lines, its most frequent source words)."""
        return Dictionary(self.pairs[:n_pairs], self.path)

    def head(self, n_source_words: int) -> "Dictionary":
        """The pairs of the first ``n_source_words`` source words (e.g. a 50-word seed)."""
        keep = set(self.source_words()[:n_source_words])
        return Dictionary([p for p in self.pairs if p[0] in keep], self.path)

    def restrict(self, src, tgt) -> "Dictionary":
        """The pairs whose source word is in ``src`` and target word in ``tgt`` (Embeddings,
        word lists or word→row dicts); drop counts are added to ``dropped``."""
        s_ix, t_ix = _vocab_index(src), _vocab_index(tgt)
        kept, d = [], dict(self.dropped)
        for s, t in self.pairs:
            s_ok = s_ix is None or s in s_ix
            t_ok = t_ix is None or t in t_ix
            if s_ok and t_ok:
                kept.append((s, t))
                continue
            d["pairs"] += 1
            d["src_oov"] += not s_ok
            d["tgt_oov"] += not t_ok
        return Dictionary(kept, self.path, self.source_words_total, d)

    def indices(self, src, tgt) -> np.ndarray:
        """int64 (n, 2) array of (source row, target row); every word must be in vocabulary
        (call :meth:`restrict` first), else KeyError naming the word."""
        s_ix, t_ix = _vocab_index(src), _vocab_index(tgt)
        out = np.empty((len(self.pairs), 2), dtype=np.int64)
        for i, (s, t) in enumerate(self.pairs):
            try:
                out[i, 0] = s_ix[s]
                out[i, 1] = t_ix[t]
            except KeyError as e:
                raise KeyError(f"dictionary word {e.args[0]!r} is not in the vocabulary "
                               "(use Dictionary.restrict first)") from None
        return out

    def save(self, path: str | os.PathLike) -> None:
        """Write ``source<TAB>target`` lines atomically."""
        with atomic_write(path, "w", encoding="utf-8", newline="\n") as f:
            for s, t in self.pairs:
                f.write(f"{s}\t{t}\n")


def load_dictionary(path: str | os.PathLike, src=None, tgt=None, lower: bool = False) -> Dictionary:
    """Read a MUSE-format dictionary; with ``src``/``tgt`` vocabularies (Embeddings, word lists
    or dicts) keep only in-vocabulary pairs and log how many were dropped.

    A line must hold exactly two fields (``source target``, or tab-separated); anything else
    raises ``ValueError("file:line: ...")``. Blank lines are ignored.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"dictionary file not found: {path}")
    if path.is_dir():
        raise IsADirectoryError(f"dictionary path is a directory, not a file: {path}")
    raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    pairs = []
    for no, line in enumerate(raw.split(b"\n"), 1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}:{no}: not valid UTF-8 ({e.reason})") from None
        text = text.strip(" \t\r")
        if not text:
            continue
        # the separators of the vector files (a U+00A0 inside a word stays part of it)
        fields = [f.strip(" ") for f in text.split("\t")] if "\t" in text else _SPACES.split(text)
        if len(fields) != 2 or not all(fields):
            raise ValueError(f"{path}:{no}: expected 'source target' (2 fields separated by "
                             f"spaces or a tab), got {len(fields)} field(s): {text[:60]!r}")
        s, t = fields
        if lower:
            s, t = s.lower(), t.lower()
        pairs.append((s, t))
    if not pairs:
        raise ValueError(f"{path}: no word pairs found")
    d = Dictionary(pairs, str(path))
    if src is not None or tgt is not None:
        d = d.restrict(src, tgt)
        log.info("%s: %d pairs kept, %d dropped (source word not in vocabulary: %d, target: %d)",
                 path, len(d), d.dropped["pairs"], d.dropped["src_oov"], d.dropped["tgt_oov"])
        if not d.pairs:
            raise ValueError(f"{path}: none of its {d.dropped['pairs']} pairs has both words in the "
                             "vocabularies (wrong direction, or a lowercase/case mismatch?)")
    return d


def identical_seed(src, tgt, max_pairs: int | None = None) -> Dictionary:
    """Pairs ``(w, w)`` for the words present in both vocabularies, in source order
    (Artetxe et al., 2017; Smith et al., 2017's pseudo-dictionary)."""
    return _seed(src, tgt, lambda w: True, "identical strings", max_pairs)


def numeral_seed(src, tgt, max_pairs: int | None = None) -> Dictionary:
    """Pairs ``(n, n)`` for the numerals (digits only) present in both vocabularies
    (Artetxe et al., 2017)."""
    return _seed(src, tgt, lambda w: bool(_NUMERAL.match(w)), "identical numerals", max_pairs)


def _seed(src, tgt, keep, what: str, max_pairs) -> Dictionary:
    s_words = src.words if hasattr(src, "words") else list(_vocab_index(src))
    t_ix = _vocab_index(tgt)
    pairs = [(w, w) for w in s_words if w in t_ix and keep(w)]
    if max_pairs is not None:
        pairs = pairs[:max_pairs]
    if not pairs:
        raise ValueError(f"seed: the two vocabularies share no {what}; pass a train dictionary "
                         "or use a fully unsupervised initialisation")
    return Dictionary(pairs, f"<seed: {what}>")


SEEDS = {"identical": identical_seed, "numerals": numeral_seed}


def build_seed(kind: str, src, tgt) -> Dictionary:
    """``kind`` in ``{"identical", "numerals"}``."""
    if kind not in SEEDS:
        raise ValueError(f"seed: expected one of {sorted(SEEDS)}, got {kind!r}")
    return SEEDS[kind](src, tgt)


def as_dictionary(d, src=None, tgt=None, lower: bool = False) -> Dictionary:
    """A path, a Dictionary or a sequence of (source, target) word pairs → Dictionary,
    restricted to the vocabularies when given."""
    if isinstance(d, (str, os.PathLike)):
        return load_dictionary(d, src, tgt, lower)
    if not isinstance(d, Dictionary):
        if not isinstance(d, Sequence) or not all(isinstance(p, (tuple, list)) and len(p) == 2 for p in d):
            raise TypeError("dictionary: expected a path, a Dictionary or a list of (source, target) pairs")
        d = Dictionary([tuple(p) for p in d])
    if lower:
        d = Dictionary([(s.lower(), t.lower()) for s, t in d], d.path, dropped=d.dropped)
    if src is not None or tgt is not None:
        d = d.restrict(src, tgt)
    return d
