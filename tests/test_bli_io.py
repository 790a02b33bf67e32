"""pyzsl.bli.io (the C++ .vec parser, gzip, .npy, saving) and pyzsl.bli.dictionary."""
import gzip
import warnings
import re

import numpy as np
import pytest

from pyzsl.bli import io as bio
from pyzsl.bli.dictionary import (Dictionary, identical_seed, load_dictionary, numeral_seed)
from pyzsl.bli.io import Embeddings, load_embeddings, save_embeddings


def write(path, text, mode="w"):
    if mode == "wb":
        path.write_bytes(text)
    else:
        path.write_bytes(text.encode("utf-8"))
    return path


def py_parse(text):
    """The obvious parser, as the oracle."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if len(lines[0].split()) == 2 and all(t.isdigit() for t in lines[0].split()):
        lines = lines[1:]
    words, rows = [], []
    for ln in lines:
        parts = ln.split()
        if parts[0] in words:
            continue
        words.append(parts[0])
        rows.append([np.float32(float(v)) for v in parts[1:]])
    return words, np.array(rows, dtype=np.float32)


def random_emb(n=37, d=11, seed=0, words=None):
    rng = np.random.default_rng(seed)
    X = (rng.standard_normal((n, d)) * rng.choice([1e-3, 0.1, 1, 30], size=(n, 1))).astype(np.float32)
    return Embeddings(words or [f"w{i}é" for i in range(n)], X)


# --------------------------------------------------------------------------- round trips

@pytest.mark.parametrize("name", ["e.vec", "e.txt", "e.vec.gz", "e.npy"])
def test_roundtrip_exact(tmp_path, name):
    emb = random_emb()
    save_embeddings(tmp_path / name, emb)
    back = load_embeddings(tmp_path / name)
    assert back.words == emb.words
    assert back.vectors.dtype == np.float32
    np.testing.assert_array_equal(back.vectors, emb.vectors)  # shortest round-trip repr: exact
    assert back.index == {w: i for i, w in enumerate(emb.words)}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [name] + (["e.vocab"] if name.endswith(".npy") else []))  # no temporary left over


def test_precision_and_header(tmp_path):
    emb = random_emb(n=5, d=3)
    save_embeddings(tmp_path / "p.vec", emb, precision=4)
    text = (tmp_path / "p.vec").read_text()
    assert text.splitlines()[0] == "5 3"
    first = text.splitlines()[1].split()
    assert first[0] == emb.words[0] and first[1] == "%.4g" % emb.vectors[0, 0]
    back = load_embeddings(tmp_path / "p.vec")
    np.testing.assert_allclose(back.vectors, emb.vectors, rtol=1e-3)


def test_parser_matches_python_on_varied_number_formats(tmp_path):
    rng = np.random.default_rng(1)
    toks = []
    for i in range(400):
        v = rng.standard_normal() * 10.0 ** rng.integers(-8, 8)
        fmt = ["%.9g", "%.3e", "%.5f", "%.1g", "%.17g", "%.0f"][i % 6]
        toks.append(fmt % v)
    toks += ["+0.5", "-0", ".5", "5.", "1e-50", "-1e-45", "3.4028234e38", "12345678901234567890123",
             "0.000000000000000000000000000001234", "1E5", "-2.5E-3"]
    d = 7
    toks = toks[: len(toks) // d * d]
    lines = [f"x{r} " + " ".join(toks[r * d:(r + 1) * d]) for r in range(len(toks) // d)]
    text = "\n".join(lines) + "\n"
    path = write(tmp_path / "f.vec", text)
    words, X = py_parse(text)
    emb = load_embeddings(path)
    assert emb.words == words
    np.testing.assert_array_equal(emb.vectors, X)


def test_no_header_crlf_tabs_bom_blank_lines(tmp_path):
    text = "\ufeffa 1 2 3\r\nb\t4\t5  6 \r\n\r\nc -1 -2 -3\n\n"
    emb = load_embeddings(write(tmp_path / "x.txt", text))
    assert emb.words == ["a", "b", "c"]
    np.testing.assert_array_equal(emb.vectors, [[1, 2, 3], [4, 5, 6], [-1, -2, -3]])
    assert emb.info["header"] is None


def test_last_line_without_newline(tmp_path):
    emb = load_embeddings(write(tmp_path / "x.vec", "2 2\na 1 2\nb 3 4"))
    assert emb.words == ["a", "b"] and emb.vectors[1, 1] == 4


def test_duplicates_keep_first_and_lower(tmp_path):
    text = "4 2\nChat 1 1\nchien 2 2\nChat 3 3\nchat 4 4\n"
    path = write(tmp_path / "d.vec", text)
    emb = load_embeddings(path)
    assert emb.words == ["Chat", "chien", "chat"] and emb.info["duplicates"] == 1
    np.testing.assert_array_equal(emb["Chat"], [1, 1])
    low = load_embeddings(path, lower=True)
    assert low.words == ["chat", "chien"] and low.info["duplicates"] == 2
    np.testing.assert_array_equal(low["chat"], [1, 1])


def test_max_vocab_counts_distinct_words(tmp_path):
    text = "6 1\na 1\na 2\nb 3\nA 4\nc 5\nd 6\n"
    path = write(tmp_path / "m.vec", text)
    emb = load_embeddings(path, max_vocab=3, lower=True)
    assert emb.words == ["a", "b", "c"]
    np.testing.assert_array_equal(emb.vectors[:, 0], [1, 3, 5])
    assert load_embeddings(path, max_vocab=100).words == ["a", "b", "A", "c", "d"]


def test_gzip_pieces_match_whole_file(tmp_path, monkeypatch):
    emb = random_emb(n=301, d=5, seed=3)
    save_embeddings(tmp_path / "g.vec.gz", emb)
    whole = load_embeddings(tmp_path / "g.vec.gz")
    monkeypatch.setattr(bio, "_GZ_PIECE", 97)  # pieces cut inside lines and inside the header
    for mv in (1, 150, 301, 1000):
        part = load_embeddings(tmp_path / "g.vec.gz", max_vocab=mv)
        n = min(mv, 301)
        assert part.words == whole.words[:n]
        np.testing.assert_array_equal(part.vectors, whole.vectors[:n])


def test_shared_french_head_matches_python(shared_data):
    with gzip.open(shared_data / "bli" / "fr.vec.gz", "rt", encoding="utf-8") as f:
        head = [next(f) for _ in range(301)]
    words, X = py_parse("".join(head))
    emb = load_embeddings(shared_data / "bli" / "fr.vec.gz", max_vocab=300)
    assert emb.words == words and emb.dim == 300
    np.testing.assert_array_equal(emb.vectors, X)


# --------------------------------------------------------------------------- malformed files

BAD = [
    ("3 2\na 1 2\nb 1\nc 1 2\n", 3, "expected 2 values after the word, found 1"),
    ("3 2\na 1 2\nb 1 2 3\nc 1 2\n", 3, "expected 2 values after the word, found 3"),
    ("3 2\na 1 2\nb 1 x2\n", 3, "not a number: 'x2'"),
    ("3 2\na 1 2\nb 1 2.5.1\n", 3, "not a number"),
    ("3 2\na 1 2\nb 1 nan\n", 3, "non-finite"),
    ("3 2\na 1 2\nb inf 1\n", 3, "non-finite"),
    ("3 2\na 1 2\nb 1 -Infinity\n", 3, "non-finite"),
    ("3 2\na 1 2\nb 1 1e39\n", 3, "out of float32 range"),
    ("3 2\na 1 2\nb 1 1e309\n", 3, "out of float32 range"),  # out of double range too
    ("3 2\na 1 2\nb -1e123456 1\n", 3, "out of float32 range"),
    ("3 2\na 1 2\nb 1 1" + "0" * 400 + "\n", 3, "out of float32 range"),
    ("3 2\na 1 2\n 1 2\n", 3, "empty word"),
    ("3 2\na 1 2\nb\n", 3, "no values after the word"),
    ("a 1 2\nb 3 4\nc 5 6\nd 1\n", 4, "expected 2 values"),
    ("a 1\nb 3 4\nc 5 6\nd 1 2\n", 1, "expected 2 values"),  # the first line is the odd one
    ("a 1 2\nb 1\n", 2, "expected 2 values after the word, found 1"),  # a tie: the first line wins
]


@pytest.mark.parametrize("text,line,what", BAD)
def test_malformed_line_names_file_and_line(tmp_path, text, line, what):
    path = write(tmp_path / "bad.vec", text)
    with pytest.raises(ValueError, match=re.escape(f"{path}:{line}: ") + ".*" + re.escape(what)):
        load_embeddings(path)


@pytest.mark.parametrize("text,line,what", BAD[:8])
def test_malformed_gz_names_line(tmp_path, text, line, what):
    path = tmp_path / "bad.vec.gz"
    path.write_bytes(gzip.compress(text.encode()))
    with pytest.raises(ValueError, match=re.escape(f"{path}:{line}: ")):
        load_embeddings(path)


def test_invalid_utf8_word(tmp_path):
    path = write(tmp_path / "u.vec", b"2 1\nok 1\nb\xffad 2\n", mode="wb")
    with pytest.raises(ValueError, match=re.escape(f"{path}:3: word is not valid UTF-8")):
        load_embeddings(path)
    with pytest.warns(UserWarning, match="skipped 1 malformed"):
        emb = load_embeddings(path, errors="skip")
    assert emb.words == ["ok"]


def test_underflow_rounds_to_zero_even_below_double_range(tmp_path):
    path = write(tmp_path / "u.vec", "1 4\na 1e-50 -1e-400 0.0000001e-320 0." + "0" * 400 + "1\n")
    assert load_embeddings(path).vectors.tolist() == [[0, 0, 0, 0]]


def test_messages_with_broken_or_non_utf8_text_stay_readable(tmp_path):
    # a 24-byte excerpt would cut the Cyrillic word inside a character; a bad byte in a value
    path = write(tmp_path / "c.vec", "2 2\naпримечательность\nb 1 2\nc 1 \udcff\n".encode("utf-8", "surrogateescape"),
                 mode="wb")
    with pytest.raises(ValueError, match=re.escape(f"{path}:2: no values after the word 'aпримечательн...'")):
        load_embeddings(path)
    with pytest.warns(UserWarning, match="skipped 2 malformed"):
        assert load_embeddings(path, errors="skip").words == ["b"]
    path = write(tmp_path / "d.vec", b"1 2\nc 1 \xff\n", mode="wb")
    with pytest.raises(ValueError, match=re.escape("not a number: '\\xff'")):
        load_embeddings(path)


def test_errors_skip_counts_and_warns(tmp_path):
    text = "5 2\na 1 2\nb 1\nc nan 1\nd 3 4\ne 5 6 7\n"
    path = write(tmp_path / "s.vec", text)
    with pytest.warns(UserWarning, match=re.escape(f"skipped 3 malformed line(s); first: {path}:3:")):
        emb = load_embeddings(path, errors="skip")
    assert emb.words == ["a", "d"] and emb.info["skipped"] == 3
    np.testing.assert_array_equal(emb.vectors, [[1, 2], [3, 4]])


def test_bad_arguments_and_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.vec"):
        load_embeddings(tmp_path / "nope.vec")
    with pytest.raises(ValueError, match="errors"):
        load_embeddings(write(tmp_path / "a.vec", "a 1\n"), errors="ignore")
    with pytest.raises(ValueError, match="max_vocab"):
        load_embeddings(tmp_path / "a.vec", max_vocab=0)
    with pytest.raises(ValueError, match="empty file"):
        load_embeddings(write(tmp_path / "e.vec", ""))
    with pytest.raises(ValueError, match="no word vectors"):
        load_embeddings(write(tmp_path / "h.vec", "0 300\n"))
    with pytest.raises(ValueError, match="cannot decompress"):
        load_embeddings(write(tmp_path / "x.vec.gz", "not gzip"))


def test_header_count_mismatch_warns(tmp_path):
    with pytest.warns(UserWarning, match="header announces 5 words, the file has 2"):
        emb = load_embeddings(write(tmp_path / "h.vec", "5 1\na 1\nb 2\n"))
    assert len(emb) == 2


def test_npy_vocab_errors(tmp_path):
    np.save(tmp_path / "m.npy", np.ones((3, 2), np.float32))
    with pytest.raises(FileNotFoundError, match="m.vocab"):
        load_embeddings(tmp_path / "m.npy")
    write(tmp_path / "m.vocab", "a\nb\n")
    with pytest.raises(ValueError, match="2 words but .* 3 rows"):
        load_embeddings(tmp_path / "m.npy")
    X = np.ones((3, 2), np.float32)
    X[1, 0] = np.nan
    np.save(tmp_path / "m.npy", X)
    write(tmp_path / "m.vocab", "a\nb\nc\n")
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'm.vocab'}:2: ") + ".*NaN/inf"):
        load_embeddings(tmp_path / "m.npy")
    with pytest.warns(UserWarning, match="skipped 1"):
        assert load_embeddings(tmp_path / "m.npy", errors="skip").words == ["a", "c"]


def test_fasttext_bin_needs_the_extra(tmp_path):
    try:
        import fasttext  # noqa: F401
        pytest.skip("fasttext is installed: the missing-extra message cannot be seen")
    except ImportError:
        pass
    with pytest.raises(ImportError, match=re.escape("pip install pyzsl[fasttext]")):
        load_embeddings(write(tmp_path / "m.bin", "x"))


def test_fasttext_bin_with_a_stand_in_module(tmp_path, monkeypatch):
    import types

    vecs = {"Chat": [1.0, 2.0], "chien": [3.0, 4.0], "chat": [5.0, 6.0]}

    class Model:
        def get_words(self, on_unicode_error="strict"):
            return list(vecs)

        def get_dimension(self):
            return 2

        def get_word_vector(self, w):
            return np.array(vecs[w], np.float32)

    fake = types.SimpleNamespace(load_model=lambda p: Model())
    monkeypatch.setitem(__import__("sys").modules, "fasttext", fake)
    path = write(tmp_path / "m.bin", "x")
    emb = load_embeddings(path)
    assert emb.words == ["Chat", "chien", "chat"] and emb.vectors.tolist()[2] == [5, 6]
    low = load_embeddings(path, lower=True, max_vocab=2)
    assert low.words == ["chat", "chien"] and low.vectors.tolist()[0] == [1, 2]
    # without max_vocab the lowercased duplicate "chat" is counted (3 words, 2 kept)
    assert load_embeddings(path, lower=True).info["duplicates"] == 1


# --------------------------------------------------------------------------- atomic saving

def test_failed_save_leaves_nothing_and_keeps_old_file(tmp_path):
    good = random_emb(n=4, d=2)
    save_embeddings(tmp_path / "o.vec", good)
    before = (tmp_path / "o.vec").read_bytes()
    for w in ("b c", "b\tc", "b\nc", ""):
        bad = Embeddings(["a", w], np.ones((2, 2), np.float32))
        with pytest.raises(ValueError, match=f"{re.escape(repr(w))} is empty or contains a space"):
            save_embeddings(tmp_path / "o.vec", bad)
    nan = Embeddings(["a", "b"], np.array([[1, 2], [np.inf, 0]], np.float32))
    for name in ("o.vec", "o.npy", "n.vec.gz"):
        with pytest.raises(ValueError, match="'b' \\(row 1\\).*NaN/inf"):
            save_embeddings(tmp_path / name, nan)
    assert (tmp_path / "o.vec").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.vec"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        save_embeddings(tmp_path / "missing" / "x.vec", good)


def test_unicode_spaces_inside_words_round_trip(tmp_path):
    emb = Embeddings(["new\u00a0york", "a\u2009b"], np.ones((2, 2), np.float32))
    save_embeddings(tmp_path / "w.vec", emb)  # the reader splits on space and tab only
    assert load_embeddings(tmp_path / "w.vec").words == emb.words


def test_embeddings_validation():
    with pytest.raises(ValueError, match="duplicate word 'a'"):
        Embeddings(["a", "a"], np.zeros((2, 2)))
    with pytest.raises(ValueError, match="2 words but 3 vectors"):
        Embeddings(["a", "b"], np.zeros((3, 2)))
    e = Embeddings(["a", "b", "c"], np.arange(6).reshape(3, 2))
    assert e.vectors.dtype == np.float32 and e.head(2).words == ["a", "b"]
    assert e.subset(["c", "a"]).vectors.tolist() == [[4, 5], [0, 1]]
    with pytest.raises(KeyError, match="zz"):
        e.subset(["zz"])


# --------------------------------------------------------------------------- dictionaries

def test_dictionary_formats_and_oov_report(tmp_path):
    path = write(tmp_path / "d.txt", "chat kissa\nchat kisu\nchien\tkoira\n\nmaison talo\nchat kissa\nzzz yyy\n")
    d = load_dictionary(path)
    assert d.pairs == [("chat", "kissa"), ("chat", "kisu"), ("chien", "koira"), ("maison", "talo"),
                       ("zzz", "yyy")]
    assert d.translations()["chat"] == ["kissa", "kisu"] and d.source_words_total == 4
    r = load_dictionary(path, src=["chat", "chien", "maison"], tgt={"kissa": 0, "koira": 1})
    assert r.pairs == [("chat", "kissa"), ("chien", "koira")]
    assert r.dropped == {"pairs": 3, "src_oov": 1, "tgt_oov": 3}
    assert r.source_words_total == 4
    assert r.indices(["chat", "chien"], ["koira", "kissa"]).tolist() == [[0, 1], [1, 0]]
    assert d.head(1).pairs == [("chat", "kissa"), ("chat", "kisu")]


@pytest.mark.parametrize("text,line", [("a b\nc\n", 2), ("a b\nc d e\n", 2), ("a\tb\tc\n", 1),
                                        ("x y\n\na\t\tb\n", 3)])
def test_dictionary_malformed_line(tmp_path, text, line):
    path = write(tmp_path / "bad.txt", text)
    with pytest.raises(ValueError, match=re.escape(f"{path}:{line}: expected 'source target'")):
        load_dictionary(path)


def test_dictionary_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="dictionary file not found"):
        load_dictionary(tmp_path / "none.txt")
    with pytest.raises(ValueError, match="no word pairs"):
        load_dictionary(write(tmp_path / "e.txt", "\n\n"))
    with pytest.raises(ValueError, match="none of its 1 pairs"):
        load_dictionary(write(tmp_path / "o.txt", "a b\n"), src=["x"], tgt=["y"])
    path = write(tmp_path / "u.txt", b"a b\nc \xff\n", mode="wb")
    with pytest.raises(ValueError, match=re.escape(f"{path}:2: not valid UTF-8")):
        load_dictionary(path)


def test_seeds():
    src = ["le", "2019", "paris", "chat", "42"]
    tgt = ["paris", "42", "kissa", "2019", "le"]
    assert identical_seed(src, tgt).pairs == [("le", "le"), ("2019", "2019"), ("paris", "paris"), ("42", "42")]
    assert numeral_seed(src, tgt).pairs == [("2019", "2019"), ("42", "42")]
    with pytest.raises(ValueError, match="share no identical numerals"):
        numeral_seed(["a"], ["a"])
    assert isinstance(identical_seed(src, tgt), Dictionary)
    assert identical_seed(src, tgt).indices(src, tgt).tolist() == [[0, 4], [1, 3], [2, 0], [4, 1]]


# --------------------------------------------------------------------------- audit additions

def test_npy_lower_max_vocab_duplicates_and_crlf_vocab(tmp_path):
    X = np.arange(12, dtype=np.float32).reshape(6, 2)
    X[4, 1] = np.nan
    np.save(tmp_path / "m.npy", X)
    write(tmp_path / "m.vocab", "Chat\r\nchien\r\nchat\r\nA\r\nbad\r\nb\r\n")  # a CRLF vocabulary
    with pytest.warns(UserWarning, match="skipped 1"):
        emb = load_embeddings(tmp_path / "m.npy", errors="skip")
    assert emb.words == ["Chat", "chien", "chat", "A", "b"]  # no '\r' left on the words
    assert emb.info["duplicates"] == 0 and emb.info["skipped"] == 1
    with pytest.warns(UserWarning, match="skipped 1"):
        low = load_embeddings(tmp_path / "m.npy", lower=True, errors="skip")
    # lower: "chat" (row 2) is a duplicate of row 0 and dropped; the NaN row is skipped, not a duplicate
    assert low.words == ["chat", "chien", "a", "b"] and low.info["duplicates"] == 1
    np.testing.assert_array_equal(low.vectors, X[[0, 1, 3, 5]])
    with pytest.warns(UserWarning, match="skipped 1"):
        mv = load_embeddings(tmp_path / "m.npy", lower=True, max_vocab=3, errors="skip")
    # max_vocab counts distinct (lowercased) words: chat, chien, a
    assert mv.words == ["chat", "chien", "a"]
    np.testing.assert_array_equal(mv.vectors, X[[0, 1, 3]])


def test_gz_last_line_without_newline_and_first_error_across_pieces(tmp_path, monkeypatch):
    path = tmp_path / "n.vec.gz"
    path.write_bytes(gzip.compress(b"a 1\nb 2"))
    # the text after the last line break is still a line when reading in pieces (max_vocab)
    assert load_embeddings(path, max_vocab=5).words == ["a", "b"]
    path = tmp_path / "s.vec.gz"
    path.write_bytes(gzip.compress(b"5 2\na 1 2\nb 1\nc 3 4\nd 5\ne 7 8\n"))
    monkeypatch.setattr(bio, "_GZ_PIECE", 8)  # about one line per piece
    # the warning names the first malformed line (3), not the last piece's (5)
    with pytest.warns(UserWarning, match=re.escape(f"skipped 2 malformed line(s); first: {path}:3:")):
        emb = load_embeddings(path, max_vocab=10, errors="skip")
    assert emb.words == ["a", "c", "e"]


def test_gz_save_is_reproducible_and_files_get_umask_permissions(tmp_path):
    import os
    import stat

    emb = random_emb(n=3, d=2)
    save_embeddings(tmp_path / "r.vec.gz", emb)
    raw = (tmp_path / "r.vec.gz").read_bytes()
    # RFC 1952 header: magic 1f 8b, method 8, FLG without FNAME (0x08), MTIME (bytes 4..7) zero
    assert raw[:3] == b"\x1f\x8b\x08" and not raw[3] & 0x08 and raw[4:8] == b"\0\0\0\0"
    old = os.umask(0o027)
    try:
        save_embeddings(tmp_path / "p.vec", emb)
        save_embeddings(tmp_path / "p.npy", emb)
        Dictionary([("a", "b")]).save(tmp_path / "d.txt")
    finally:
        os.umask(old)
    # the permissions a plain open() would give (0o666 & ~umask), not mkstemp's 0o600
    for name in ("p.vec", "p.npy", "p.vocab", "d.txt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o640, name


def test_save_refusals(tmp_path):
    emb = random_emb(n=2, d=2)
    for p in (0, 10, 2.5, "3"):
        with pytest.raises(ValueError, match="precision"):
            save_embeddings(tmp_path / "x.vec", emb, precision=p)
    with pytest.raises(TypeError, match="expected an Embeddings"):
        save_embeddings(tmp_path / "x.vec", {"a": [1.0]})
    with pytest.raises(ValueError, match="line break"):
        save_embeddings(tmp_path / "x.npy", Embeddings(["a", "b\nc"], np.ones((2, 2))))
    assert list(tmp_path.iterdir()) == []
    # .npy keeps words with spaces (text formats cannot)
    sp = Embeddings(["new york", "b"], np.ones((2, 2)))
    save_embeddings(tmp_path / "s.npy", sp)
    assert load_embeddings(tmp_path / "s.npy").words == ["new york", "b"]


def test_dictionary_lower_bom_first_restrict_save(tmp_path):
    path = write(tmp_path / "d.txt", "\ufeffChat Kissa\nchat kissa\nchien\tkoira\nNew York\tUusi York\nmaison talo\n")
    d = load_dictionary(path)
    assert d.pairs[0] == ("Chat", "Kissa")  # the byte order mark is not part of the first word
    assert d.first(2).pairs == [("Chat", "Kissa"), ("chat", "kissa")]
    low = load_dictionary(path, lower=True)  # both sides lowered; the two "chat kissa" merge
    assert low.pairs == [("chat", "kissa"), ("chien", "koira"), ("new york", "uusi york"), ("maison", "talo")]
    # restrict adds to the counts already there
    r = load_dictionary(path, src=["chat", "chien", "New York"]).restrict(None, ["kissa", "Uusi York"])
    assert r.pairs == [("chat", "kissa"), ("New York", "Uusi York")]
    assert r.dropped == {"pairs": 3, "src_oov": 2, "tgt_oov": 1}
    # save/load round trip, multi-word entries included (tab-separated), no temporary left
    d.save(tmp_path / "out.txt")
    assert load_dictionary(tmp_path / "out.txt").pairs == d.pairs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.txt", "out.txt"]


def test_seed_numeral_rule_and_max_pairs():
    src = ["42abc", "2019s", "12", "x", "7", "3.5", "1999"]
    tgt = ["7", "3.5", "2019s", "42abc", "x", "1999", "12"]
    assert numeral_seed(src, tgt).pairs == [("12", "12"), ("7", "7"), ("1999", "1999")]  # digits only
    assert numeral_seed(src, tgt, max_pairs=2).pairs == [("12", "12"), ("7", "7")]
    assert identical_seed(src, tgt, max_pairs=3).pairs == [("42abc", "42abc"), ("2019s", "2019s"), ("12", "12")]


# --------------------------------------------------------------------------- differential fuzz
# Random files, valid lines mixed with malformed ones, against a slow oracle of the documented
# grammar: separators are runs of ' '/'\t', trailing '\r'/' '/'\t' are dropped, a value is a
# decimal (strtof syntax without hex/inf/nan) correctly rounded to float32, a word must be UTF-8
# (as Python decodes it), the first occurrence of a word wins; "raise" names the first bad line.
_DEC = re.compile(rb"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_BAD_VALUES = [b"nan", b"inf", b"-inf", b"1e400", b"3.5e38", b"abc", b"1.2.3", b"1e", b"+-1", b"0x10",
               b"1_0", b"\xff", b"1,5", b"e5", b".", b"+", b"1e+", b"infinity"]
_BAD_WORDS = [b"\xc3(", b"\xed\xa0\x80", b"\xc0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82"]  # cut, surrogate,
# overlong, above U+10FFFF, truncated


def _f32(tok: bytes):
    """Correctly rounded float32 of a decimal token (ties to even), None if it overflows."""
    from fractions import Fraction

    q = Fraction(tok.decode())
    top = np.finfo(np.float32).max
    if abs(q) >= Fraction(float(top)) + 2 ** 103:  # half an ulp (2^104) above the largest float32
        return None
    near = np.float32(float(q)) if abs(q) <= Fraction(float(top)) else np.copysign(top, float(q))
    with np.errstate(over="ignore"):
        cands = [c for c in (near, np.nextafter(near, np.float32(np.inf)), np.nextafter(near, np.float32(-np.inf)))
                 if np.isfinite(c)]
    return min(cands, key=lambda c: (abs(Fraction(float(c)) - q), int(c.view(np.int32)) & 1))


def _oracle_line(raw: bytes, dim: int):
    s = raw.rstrip(b"\r \t")
    if not s:
        return "blank"
    toks = re.split(rb"[ \t]+", s)
    if not toks[0] or len(toks) != dim + 1 or not all(_DEC.fullmatch(v) for v in toks[1:]):
        return None
    vals = [_f32(v) for v in toks[1:]]
    try:
        return (toks[0].decode("utf-8"), vals) if all(v is not None for v in vals) else None
    except UnicodeDecodeError:
        return None


def _oracle(data: bytes, dim: int, header: bool, max_vocab, skip):
    lines = data.split(b"\n")[: -1 if data.endswith(b"\n") else None]
    words, rows, bad = {}, [], 0
    for no, raw in enumerate(lines[int(header):], start=int(header) + 1):
        if max_vocab is not None and len(words) >= max_vocab:
            break
        r = _oracle_line(raw, dim)
        if r is None and not skip:
            return f":{no}: "
        bad += r is None
        if r not in (None, "blank") and r[0] not in words:
            words[r[0]] = len(rows)
            rows.append(r[1])
    return list(words), np.array(rows, dtype=np.float32).reshape(-1, dim), bad


def _random_file(rng, dim: int, header: bool) -> bytes:
    def value():
        k = rng.random()
        if k < 0.6:
            return f"{rng.uniform(-3, 3):.{rng.integers(1, 10)}g}".encode()
        if k < 0.75:
            return f"{rng.uniform(-1, 1) * 10.0 ** rng.integers(-50, 40):.{rng.integers(1, 10)}e}".encode()
        return rng.choice([b"0", b"-0", b"+1", b"1.", b".5", b"-.5", b"1E-3", b"00012", b"3.4028234e38",
                           b"0.000000000000000000000123", b"12345678901234567890123", b"1e-45", b"-1e-400"])

    lines = []
    for i in range(int(rng.integers(1, 30))):
        sep = rng.choice([b" ", b"\t", b"  ", b" \t"])
        toks = [rng.choice(["le", "été", "日本", "a-b", "x'y"]).encode() + (b"%d" % i if rng.random() < 0.7 else b"")]
        toks += [value() for _ in range(dim)]
        if i and rng.random() < 0.2:  # one defect
            m = int(rng.integers(5))
            if m == 0:
                toks[int(rng.integers(1, dim + 1))] = rng.choice(_BAD_VALUES)
            elif m == 1:
                toks = toks + [b"0.5"] if rng.random() < 0.5 else toks[:-1]
            elif m == 2:
                toks[0] = rng.choice(_BAD_WORDS) + toks[0] if rng.random() < 0.5 else toks[0] + rng.choice(_BAD_WORDS)
            elif m == 3:
                toks = [b""] + toks
            else:
                toks = toks[:1]
        lines.append(sep.join(toks) + (rng.choice([b"\r", b" ", b"\t"]) if rng.random() < 0.2 else b""))
        if rng.random() < 0.05:
            lines.append(rng.choice([b"", b"  ", b"\r"]))
    data = b"\n".join(lines) + (b"\n" if rng.random() < 0.8 else b"")
    return (b"%d %d\n" % (len(lines), dim) + data) if header else data


@pytest.mark.parametrize("seed", range(4))
def test_parser_matches_the_oracle_on_random_malformed_files(tmp_path, monkeypatch, seed):
    rng = np.random.default_rng(seed)
    checked = 0
    for case in range(150):
        dim, header = int(rng.choice([1, 2, 5])), bool(rng.random() < 0.5)
        data = _random_file(rng, dim, header)
        if not header and not isinstance(_oracle_line(data.split(b"\n")[0], dim), tuple):
            continue  # without a header the first lines set the dimension: keep that unambiguous
        gz, skip, max_vocab = rng.random() < 0.3, bool(rng.random() < 0.5), rng.choice([None, None, 1, 3])
        monkeypatch.setattr(bio, "_GZ_PIECE", int(rng.choice([1, 7, 64 << 20])))  # pieces cut anywhere
        path = tmp_path / f"{case}.vec{'.gz' if gz else ''}"
        path.write_bytes(gzip.compress(data) if gz else data)
        want = _oracle(data, dim, header, max_vocab, skip)
        if isinstance(want, str):
            with pytest.raises(ValueError, match=re.escape(f"{path}{want}")):
                load_embeddings(path, max_vocab=max_vocab)
        elif not want[0]:
            with pytest.raises(ValueError, match="no word vectors"), pytest.warns(UserWarning):
                load_embeddings(path, max_vocab=max_vocab, errors="skip")
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                emb = load_embeddings(path, max_vocab=max_vocab, errors="skip" if skip else "raise")
            assert emb.words == want[0], (case, data)
            np.testing.assert_array_equal(emb.vectors, want[1])
            if max_vocab is None:
                assert emb.info["skipped"] == want[2]
        checked += 1
    assert checked > 100


def test_dictionary_splits_as_the_vector_files_do(tmp_path):
    # a no-break space inside a word stays part of it, as in the .vec reader
    d = load_dictionary(write(tmp_path / "d.txt", "new\u00a0york uusi\u00a0york\nchat  kissa \r\n"))
    assert d.pairs == [("new\u00a0york", "uusi\u00a0york"), ("chat", "kissa")]
