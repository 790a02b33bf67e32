"""Word embedding files: load and save fastText/word2vec text, gzip, fastText ``.bin``, ``.npy``.

``load_embeddings("fr.vec")`` returns an :class:`Embeddings` (words, float32 matrix, index).
The text parser is C++ (``pyzsl._C.parse_vec``): the file is memory-mapped (or, for ``.gz``,
decompressed in pieces of ``_GZ_PIECE`` bytes) and parsed in one pass with no per-float
Python work. Memory: the float32 matrix (n·d·4 bytes) plus the words; a plain file is mapped,
not copied; a ``.gz`` file holds one decompressed piece at a time, or all of it when
``max_vocab`` is None.

Formats (chosen by the file name):

============================ ================================================================
``*.vec``, ``*.txt``, other  text: optional header ``N D``, then ``word v_1 ... v_D`` per line
``*.gz``                     the same, gzip-compressed
``*.bin``                    fastText binary model (needs ``pip install pyzsl[fasttext]``)
``*.npy``                    float matrix; words in ``vocab=`` or the sibling ``*.vocab`` file
                             (one word per line, UTF-8)
============================ ================================================================
"""
from __future__ import annotations

import gzip
import logging
import mmap
import os
import warnings
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from pyzsl._atomic import atomic_write

log = logging.getLogger(__name__)

ERRORS = ("raise", "skip")
_GZ_PIECE = 64 << 20  # decompressed bytes parsed at a time from a .gz with max_vocab


class Embeddings:
    """Words and their vectors: ``words`` (list of str), ``vectors`` (n × d float32 numpy),
    ``index`` (word → row). Words are unique.

    ``info`` holds what loading found: ``lines`` parsed, ``skipped`` malformed lines,
    ``duplicates`` dropped (the first occurrence is kept), ``header`` (N, D) or None.
    """

    def __init__(self, words: Sequence[str], vectors, source: str | None = None,
                 info: dict | None = None) -> None:
        words = list(words)
        vectors = np.asarray(vectors)
        if vectors.ndim != 2:
            raise ValueError(f"Embeddings: vectors must be a 2-D matrix, got shape {vectors.shape}")
        if vectors.shape[0] != len(words):
            raise ValueError(f"Embeddings: {len(words)} words but {vectors.shape[0]} vectors")
        if vectors.dtype != np.float32:
            vectors = vectors.astype(np.float32)
        index = {w: i for i, w in enumerate(words)}
        if len(index) != len(words):
            dup = next(w for w, c in Counter(words).items() if c > 1)
            raise ValueError(f"Embeddings: duplicate word {dup!r} (words must be unique)")
        self.words = words
        self.vectors = np.ascontiguousarray(vectors)
        self.index = index
        self.source = source
        self.info = dict(info or {})

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: object) -> bool:
        return word in self.index

    def __getitem__(self, word: str) -> np.ndarray:
        return self.vectors[self.index[word]]

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def head(self, n: int) -> "Embeddings":
        """The first ``n`` words (files are usually sorted by frequency)."""
        return Embeddings(self.words[:n], self.vectors[:n], self.source, self.info)

    def lowercased(self) -> "Embeddings":
        """The words lowercased; a word that becomes a duplicate is dropped (the first kept),
        as ``load_embeddings(..., lower=True)`` does."""
        low = [w.lower() for w in self.words]
        if low == self.words:
            return self
        words: list[str] = []
        rows = _dedupe(low, {}, words)
        return Embeddings(words, self.vectors[rows], self.source, self.info)

    def subset(self, words: Iterable[str]) -> "Embeddings":
        """The given words, in the given order; unknown words are a KeyError naming them."""
        words = list(dict.fromkeys(words))
        missing = [w for w in words if w not in self.index]
        if missing:
            raise KeyError(f"{len(missing)} word(s) not in the vocabulary, e.g. {missing[:5]}")
        rows = [self.index[w] for w in words]
        return Embeddings(words, self.vectors[rows], self.source, self.info)

    def __repr__(self) -> str:
        src = f", source={self.source!r}" if self.source else ""
        return f"Embeddings({len(self)} words × {self.dim}{src})"


def _ext():
    from pyzsl.ops._tensor import load_extension

    C = load_extension()
    if not hasattr(C, "parse_vec"):
        raise ImportError("pyzsl._C has no parse_vec: rebuild the extension "
                          "(`python3 setup.py build_ext --inplace` in a checkout, or `pip install .`)")
    return C


def _check_errors(errors: str) -> bool:
    if errors not in ERRORS:
        raise ValueError(f"errors: expected 'raise' or 'skip', got {errors!r}")
    return errors == "skip"


# --------------------------------------------------------------------------- loading

def load_embeddings(
    path: str | os.PathLike,
    max_vocab: int | None = None,
    lower: bool = False,
    errors: str = "raise",
    *,
    vocab: str | os.PathLike | None = None,
) -> Embeddings:
    """Load word vectors from ``path`` (format by file name; see the module docstring).

    Args:
        max_vocab: keep the first ``max_vocab`` distinct words (files are sorted by frequency);
            reading stops there.
        lower: lowercase the words; a word that becomes a duplicate is dropped (first kept).
        errors: ``"raise"``: a malformed line (wrong number of values, non-numeric value,
            NaN/inf, invalid UTF-8) raises ``ValueError("file:line: ...")``; ``"skip"``: such
            lines are skipped, counted in ``info["skipped"]`` and reported by one warning.
        vocab: for ``.npy``: the vocabulary file (default: ``<stem>.vocab`` next to it).

    Duplicate words keep their first occurrence (counted in ``info["duplicates"]``).
    """
    skip = _check_errors(errors)
    if max_vocab is not None and (not isinstance(max_vocab, int) or max_vocab < 1):
        raise ValueError(f"max_vocab: expected a positive int or None, got {max_vocab!r}")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"embeddings file not found: {path}")
    if path.is_dir():
        raise IsADirectoryError(f"embeddings path is a directory, not a file: {path}")
    name = path.name.lower()
    if name.endswith(".npy"):
        emb = _load_npy(path, vocab, max_vocab, lower, skip)
    elif name.endswith(".bin"):
        emb = _load_fasttext_bin(path, max_vocab, lower)
    elif name.endswith(".gz"):
        emb = _load_text(_gz_pieces(path, max_vocab), str(path), max_vocab, lower, skip)
    else:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise ValueError(f"{path}: empty file")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                emb = _load_text(iter([mm]), str(path), max_vocab, lower, skip)
    if len(emb) == 0:
        raise ValueError(f"{path}: no word vectors found")
    if emb.info.get("skipped"):
        warnings.warn(f"{path}: skipped {emb.info['skipped']} malformed line(s); first: "
                      f"{emb.info['first_error']}", stacklevel=2)
    log.info("loaded %s: %d words × %d (%d duplicates dropped)", path, len(emb), emb.dim,
             emb.info.get("duplicates", 0))
    return emb


def _gz_pieces(path: Path, max_vocab: int | None) -> Iterator[bytes]:
    """Decompressed text cut at line ends: all at once, or pieces of ~_GZ_PIECE with max_vocab."""
    try:
        with gzip.open(path, "rb") as f:
            if max_vocab is None:
                data = f.read()
                if not data:
                    raise ValueError(f"{path}: empty file")
                yield data
                return
            carry = b""
            first = True
            while True:
                block = f.read(_GZ_PIECE)
                if not block:
                    if carry:
                        yield carry
                    elif first:
                        raise ValueError(f"{path}: empty file")
                    return
                first = False
                block = carry + block
                cut = block.rfind(b"\n") + 1
                if cut == 0:  # no line end yet: keep reading
                    carry = block
                    continue
                carry = block[cut:]
                yield block[:cut]
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise ValueError(f"{path}: cannot decompress: {e}") from e


def _detect_format(buf, source: str, skip: bool) -> tuple[int, int, int, tuple[int, int] | None]:
    """→ (offset of the first data line, its line number, dim, header or None)."""
    off = 3 if bytes(buf[:3]) == b"\xef\xbb\xbf" else 0  # UTF-8 byte order mark
    # The first 100 lines (at most 4 MB) decide the dimension when there is no header.
    head = bytes(buf[off:off + (4 << 20)])
    lines = head.split(b"\n")[:101]
    if len(head) == 4 << 20 and len(lines) > 1:
        lines = lines[:-1]  # the last may be cut
    first = lines[0].split()
    if len(first) == 2 and first[0].isdigit() and first[1].isdigit():
        n, d = int(first[0]), int(first[1])
        if d < 1:
            raise ValueError(f"{source}:1: header '{lines[0].decode(errors='replace').strip()}' "
                             "gives dimension 0")
        return off + len(lines[0]) + 1, 2, d, (n, d)
    counts = [len(ln.split()) - 1 for ln in lines if ln.strip()]
    if not counts:
        raise ValueError(f"{source}: no word vectors found")
    # Majority of the first lines (the first line wins ties): a bad first line is then
    # reported as bad instead of making every other line "wrong".
    common = Counter(counts).most_common()
    best = max(c for _, c in common)
    dim = next(c for c in counts if dict(common)[c] == best)
    if dim < 1:
        raise ValueError(f"{source}:1: no values after the first word (is this an embedding file?)")
    return off, 1, dim, None


def _load_text(pieces: Iterator, source: str, max_vocab: int | None, lower: bool,
               skip: bool) -> Embeddings:
    C = _ext()
    blocks: list[np.ndarray] = []
    words: list[str] = []
    index: dict[str, int] = {}
    info = {"lines": 0, "skipped": 0, "duplicates": 0, "header": None, "first_error": ""}
    dim = None
    line = 1
    done = False
    for piece in pieces:
        off = 0
        if dim is None:
            off, line, dim, header = _detect_format(piece, source, skip)
            info["header"] = header
        end = len(piece)
        while off < end and not done:
            need = None if max_vocab is None else max_vocab - len(index)
            cap = C.count_lines(piece, off, -1 if need is None else need)
            X = np.empty((cap, dim), dtype=np.float32)
            blob, rows, skipped, off, line, first_error = C.parse_vec(
                piece, X, off, line, skip, source)
            info["skipped"] += skipped
            if first_error and not info["first_error"]:
                info["first_error"] = first_error
            info["lines"] = line - 1
            if rows == 0:
                continue
            new = blob.decode("utf-8").split("\n")  # the parser checked each word's UTF-8
            if lower:
                new = [w.lower() for w in new]
            keep = _dedupe(new, index, words)
            info["duplicates"] += rows - len(keep)
            if len(keep) == rows and rows >= 0.9 * cap:
                blocks.append(X[:rows])
            else:
                blocks.append(X[np.asarray(keep, dtype=np.int64)])
            if max_vocab is not None and len(index) >= max_vocab:
                done = True
        if done:
            break
    if dim is None:
        raise ValueError(f"{source}: empty file")
    header = info["header"]
    if (header is not None and max_vocab is None and not info["skipped"]
            and header[0] != len(words) + info["duplicates"]):
        warnings.warn(f"{source}: the header announces {header[0]} words, the file has "
                      f"{len(words) + info['duplicates']}", stacklevel=3)
    if not blocks:
        vectors = np.zeros((0, dim), dtype=np.float32)
    elif len(blocks) == 1:
        vectors = blocks[0]
    else:
        vectors = np.concatenate(blocks)
    emb = Embeddings.__new__(Embeddings)  # words are unique already: skip the re-check
    emb.words, emb.vectors, emb.index, emb.source, emb.info = words, vectors, index, source, info
    return emb


def _dedupe(new: list[str], index: dict[str, int], words: list[str]) -> list[int]:
    """Appends the new distinct words to ``words``/``index``; returns the rows kept."""
    if not index and len(set(new)) == len(new):
        index.update(zip(new, range(len(new))))
        words.extend(new)
        return list(range(len(new)))
    keep = []
    for i, w in enumerate(new):
        if w in index:
            continue
        index[w] = len(words)
        words.append(w)
        keep.append(i)
    return keep


def _load_npy(path: Path, vocab, max_vocab, lower, skip) -> Embeddings:
    vocab = Path(vocab) if vocab is not None else path.with_suffix(".vocab")
    if not vocab.exists():
        raise FileNotFoundError(f"{path}: vocabulary file not found: {vocab} (pass vocab=...)")
    try:
        X = np.load(path, allow_pickle=False)
    except ValueError as e:
        raise ValueError(f"{path}: not a readable .npy matrix: {e}") from e
    if X.ndim != 2 or X.dtype.kind not in "fiu":
        raise ValueError(f"{path}: expected a 2-D numeric matrix, got shape {X.shape} dtype {X.dtype}")
    with open(vocab, "rb") as f:
        raw = f.read()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if len(lines) != X.shape[0]:
        raise ValueError(f"{vocab}: {len(lines)} words but {path} has {X.shape[0]} rows")
    words, bad = [], []
    for i, w in enumerate(lines):
        w = w.rstrip(b"\r")
        why = None
        try:
            s = w.decode("utf-8")
        except UnicodeDecodeError:
            s, why = "", "word is not valid UTF-8"
        if why is None and not s.strip():
            why = "empty word"
        if why is None and not np.isfinite(X[i]).all():
            why = f"the vector of {s!r} (row {i} of {path.name}) has NaN/inf values"
        if why:
            if not skip:
                raise ValueError(f"{vocab}:{i + 1}: {why}")
            bad.append((i, f"{vocab}:{i + 1}: {why}"))
        words.append(s.lower() if lower else s)
    index: dict[str, int] = {}
    keep, kept_words = [], []
    bad_rows = {i for i, _ in bad}
    for i, w in enumerate(words):
        if i in bad_rows or w in index:
            continue
        index[w] = len(kept_words)
        kept_words.append(w)
        keep.append(i)
        if max_vocab is not None and len(kept_words) >= max_vocab:
            break
    info = {"lines": len(lines), "skipped": len(bad), "header": None,
            "duplicates": len(words) - len(bad) - len(keep) if max_vocab is None else 0,
            "first_error": bad[0][1] if bad else ""}
    return Embeddings(kept_words, X[keep].astype(np.float32), str(path), info)


def _load_fasttext_bin(path: Path, max_vocab, lower) -> Embeddings:
    try:
        import fasttext  # type: ignore
    except ImportError as e:
        raise ImportError(f"{path}: reading fastText .bin files needs the fasttext package: "
                          "pip install pyzsl[fasttext]") from e
    try:
        model = fasttext.load_model(str(path))
    except ValueError as e:
        raise ValueError(f"{path}: not a fastText model: {e}") from e
    words = model.get_words(on_unicode_error="replace")
    index: dict[str, int] = {}
    kept = []
    for w in words:
        key = w.lower() if lower else w
        if key in index:
            continue
        index[key] = len(kept)
        kept.append((key, w))
        if max_vocab is not None and len(kept) >= max_vocab:
            break
    X = np.empty((len(kept), model.get_dimension()), dtype=np.float32)
    for i, (_, w) in enumerate(kept):
        X[i] = model.get_word_vector(w)
    return Embeddings([k for k, _ in kept], X, str(path), {"lines": len(words), "skipped": 0,
                      "duplicates": len(words) - len(kept) if max_vocab is None else 0, "header": None})


# --------------------------------------------------------------------------- saving

def save_embeddings(path: str | os.PathLike, emb: Embeddings, precision: int | None = None,
                    *, block_rows: int = 8192) -> None:
    """Write ``emb`` to ``path`` atomically (a temporary file in the same folder, then a rename).

    ``.vec``/``.txt`` (header ``N D``), ``.vec.gz`` (the same, gzip, reproducible: mtime 0), or
    ``.npy`` (the matrix; the words go to ``<stem>.vocab``). Text values are written with the
    shortest representation that reads back to the same float32 (``precision=None``), or with
    ``precision`` significant digits (``%.{precision}g``, 1..9).
    Words containing whitespace cannot be written as text (ValueError naming the word).
    """
    if not isinstance(emb, Embeddings):
        raise TypeError(f"save_embeddings: expected an Embeddings, got {type(emb).__name__}")
    if precision is not None and not (isinstance(precision, int) and 1 <= precision <= 9):
        raise ValueError(f"precision: expected an int in [1, 9] or None, got {precision!r}")
    path = Path(path)
    X = np.ascontiguousarray(emb.vectors, dtype=np.float32)
    if not np.isfinite(X).all():
        row = int(np.flatnonzero(~np.isfinite(X).all(axis=1))[0])
        raise ValueError(f"save_embeddings: the vector of {emb.words[row]!r} (row {row}) has NaN/inf values")
    if path.name.lower().endswith(".npy"):
        _save_npy(path, emb, X)
        return
    for w in emb.words:
        # the characters the reader splits on; other Unicode spaces (e.g. U+00A0 in "new york"
        # from fastText's Wikipedia vectors) are part of a word, as they are when read
        if not w or any(c in " \t\n\r" for c in w):
            raise ValueError(f"save_embeddings: word {w!r} is empty or contains a space, tab or "
                             "line break: it cannot be written to a text file (use .npy)")
    C = _ext()
    gz = path.name.lower().endswith(".gz")
    with atomic_write(path) as raw:
        f = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) if gz else raw
        f.write(f"{len(emb)} {emb.dim}\n".encode())
        for r0 in range(0, len(emb), block_rows):
            r1 = min(len(emb), r0 + block_rows)
            blob = "\n".join(emb.words[r0:r1]).encode("utf-8")
            f.write(C.format_vec(X, blob, r0, r1, precision or 0))
        if gz:
            f.close()


def _save_npy(path: Path, emb: Embeddings, X: np.ndarray) -> None:
    vocab = path.with_suffix(".vocab")
    for w in emb.words:
        if not w or "\n" in w or "\r" in w:
            raise ValueError(f"save_embeddings: word {w!r} is empty or contains a line break")
    # nested: both files are complete before either is renamed; an error removes both
    with atomic_write(vocab) as fv, atomic_write(path) as fx:
        fv.write(("\n".join(emb.words) + "\n").encode("utf-8"))
        np.save(fx, X, allow_pickle=False)


# --------------------------------------------------------------------------- default data

DEFAULT_FILES = {"src": "fr.vec.gz", "tgt": "fi.vec.gz", "train": "fr-fi.train.txt",
                 "test": "fr-fi.test.txt"}


def default_data_dir() -> Path:
    """The folder of the embedded French–Finnish default (built by
    ``tools/build_default_data.py``): ``$PYZSL_DATA``, else ``data/`` inside the installed
    package, else the checkout's ``data/`` next to the package, else ``./data``."""
    here = Path(__file__).resolve().parent.parent  # the pyzsl package
    env = os.environ.get("PYZSL_DATA")
    if env:  # given: it must hold the data, not be passed over for another copy
        missing = [f for f in DEFAULT_FILES.values() if not (Path(env) / f).is_file()]
        if missing:
            raise FileNotFoundError(f"PYZSL_DATA={env} lacks {', '.join(missing)} (build it with "
                                    "tools/build_default_data.py, or unset PYZSL_DATA)")
        return Path(env)
    candidates = [here / "data", here.parent / "data", Path.cwd() / "data"]
    for c in candidates:
        if all((c / f).is_file() for f in DEFAULT_FILES.values()):
            return c
    raise FileNotFoundError(
        "the default French–Finnish data was not found (looked in: "
        + ", ".join(str(c) for c in candidates)
        + "); set PYZSL_DATA to the folder built by tools/build_default_data.py, or pass files")


def default_data() -> dict[str, Path]:
    """Paths of the default data: ``src``, ``tgt`` (vectors), ``train``, ``test`` (dictionaries)."""
    d = default_data_dir()
    return {k: d / f for k, f in DEFAULT_FILES.items()}
