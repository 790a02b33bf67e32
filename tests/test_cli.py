"""The command line (pyzsl.cli.main) on tiny generated files, on the default data, and on bad input."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pyzsl.bli import Alignment, align
from pyzsl.bli.io import Embeddings, save_embeddings
from pyzsl.cli import main

REPO_DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture
def toy(tmp_path):
    """Target = rotated source + small noise; words s_i ↔ t_i (and a few identical strings)."""
    rng = np.random.default_rng(0)
    n, d = 80, 12
    X = rng.standard_normal((n, d)).astype(np.float32)
    Qm, _ = np.linalg.qr(rng.standard_normal((d, d)))
    Z = (X @ Qm + 0.01 * rng.standard_normal((n, d))).astype(np.float32)
    sw = [f"s{i}" for i in range(n)]
    tw = [f"t{i}" for i in range(n)]
    for i in range(0, n, 4):  # shared strings for --seed identical
        sw[i] = tw[i] = f"w{i}"
    save_embeddings(tmp_path / "src.vec", Embeddings(sw, X))
    save_embeddings(tmp_path / "tgt.vec.gz", Embeddings(tw, Z))
    (tmp_path / "train.txt").write_text("".join(f"{sw[i]} {tw[i]}\n" for i in range(50)))
    (tmp_path / "test.txt").write_text("".join(f"{sw[i]}\t{tw[i]}\n" for i in range(50, n))
                                       + "unknownword t1\n")
    return tmp_path


def run(argv, capsys):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_align_all_outputs(toy, capsys):
    p = toy
    rc, out, err = run(["bli", "align", p / "src.vec", p / "tgt.vec.gz", "--train-dict", p / "train.txt",
                        "--test-dict", p / "test.txt", "--retrieval", "isf", "--report", p / "r.json",
                        "--out-lexicon", p / "lex.tsv", "--lexicon-k", "2", "--save-mapping", p / "W.npy",
                        "--save-aligned", p / "al.vec", "--save-alignment", p / "a.npz", "-q"], capsys)
    assert rc == 0, err
    assert "CSLS" in out and "NN" in out and "ISF" in out and "P@10" in out
    rep = json.loads((p / "r.json").read_text())
    for r in ("nn", "csls", "isf"):
        assert rep["results"][r]["p@1"] == 1.0
        assert rep["results"][r]["n_queries"] == 30 and rep["results"][r]["n_source_words"] == 31
    assert rep["alignment"]["train_dict"]["pairs"] == 50
    lex = (p / "lex.tsv").read_text().splitlines()
    assert len(lex) == 160 and lex[2].split("\t")[:2] == ["s1", "t1"]
    W = np.load(p / "W.npy")
    assert W.shape == (12, 12) and np.allclose(W.T @ W, np.eye(12), atol=1e-4)
    assert (p / "al.vec").exists() and (p / "al.tgt.vec").exists()
    assert not [f for f in p.iterdir() if f.name.endswith(".tmp")]

    # translate with the saved alignment, and with the bare mapping
    rc, out, err = run(["bli", "translate", "s51", "w52", "nope", "--alignment", p / "a.npz", "-k", "2", "-q"], capsys)
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["s51", "t51"] and lines[1].split()[:2] == ["w52", "w52"]
    assert "not in the source vocabulary" in lines[2]
    rc, out, err = run(["bli", "translate", "s77", "--src", p / "src.vec", "--tgt", p / "tgt.vec.gz",
                        "--mapping", p / "W.npy", "-q"], capsys)
    assert rc == 0 and out.split()[:2] == ["s77", "t77"], err

    # eval: with the mapping, and on the exported aligned spaces as they are
    rc, out, err = run(["bli", "eval", p / "src.vec", p / "tgt.vec.gz", "--test-dict", p / "test.txt",
                        "--mapping", p / "W.npy", "--report", p / "e.json", "-q"], capsys)
    assert rc == 0, err
    assert json.loads((p / "e.json").read_text())["results"]["csls"]["p@1"] == 1.0
    rc, out, err = run(["bli", "eval", p / "al.vec", p / "al.tgt.vec", "--test-dict", p / "test.txt",
                        "--normalize", "none", "--retrieval", "nn", "-q"], capsys)
    assert rc == 0 and "100.00" in out, err


def test_align_with_identical_seed(toy, capsys):
    rc, out, err = run(["bli", "align", toy / "src.vec", toy / "tgt.vec.gz", "--seed", "identical",
                        "--test-dict", toy / "test.txt", "--report", toy / "r.json", "-q"], capsys)
    assert rc == 0, err
    rep = json.loads((toy / "r.json").read_text())
    assert rep["alignment"]["seed"] == {"kind": "identical", "pairs": 20}
    assert rep["results"]["csls"]["p@1"] == 1.0


def test_api_alignment_roundtrip(toy):
    al = align(toy / "src.vec", toy / "tgt.vec.gz", train_dict=toy / "train.txt")
    res = al.evaluate(toy / "test.txt", retrieval="csls")
    assert set(res) >= {"p@1", "p@5", "p@10", "coverage"} and res["p@1"] == 1.0
    assert al.translate(["s61", "w60"], k=1) == [["t61"], ["w60"]]
    assert al.lexicon(k=1, max_words=3)[1][:2] == ("s1", "t1")
    al.save(toy / "a.npz")
    back = Alignment.load(toy / "a.npz")
    assert back.translate("s70", k=3) == al.translate("s70", k=3)
    emb = Alignment.load(toy / "a.npz", src=al.src, tgt=al.tgt)
    assert emb.evaluate(toy / "test.txt")["p@1"] == 1.0
    with pytest.raises(KeyError, match="'zz'"):
        al.translate(["zz"])
    with pytest.raises(ValueError, match="not a pyzsl alignment file.*single .npy array"):
        np.save(toy / "W.npy", np.eye(12))
        Alignment.load(toy / "W.npy")
    (toy / "cut.npz").write_bytes((toy / "a.npz").read_bytes()[:100])
    with pytest.raises(ValueError, match="not a pyzsl alignment file"):
        Alignment.load(toy / "cut.npz")
    with pytest.raises(ValueError, match="no supervision"):
        align(al.src, al.tgt)


def test_saved_alignment_reads_the_same_words_again(toy, tmp_path, monkeypatch):
    from pyzsl.bli import load_embeddings

    small = load_embeddings(toy / "src.vec", max_vocab=40)  # loaded by the user, not by align
    al = align(small, toy / "tgt.vec.gz", train_dict=toy / "train.txt")
    monkeypatch.chdir(toy)
    rel = align("src.vec", "tgt.vec.gz", train_dict="train.txt")  # relative paths
    al.save(toy / "a.npz")
    rel.save(toy / "r.npz")
    monkeypatch.chdir(tmp_path.parent)  # elsewhere: the stored paths still resolve
    back = Alignment.load(toy / "a.npz")
    assert back.src.words == small.words and back.translate("s30", k=3) == al.translate("s30", k=3)
    assert len(Alignment.load(toy / "r.npz").src) == 80
    save_embeddings(toy / "src.vec", Embeddings(["x" + w for w in al.src.words], al.src.vectors))
    with pytest.raises(ValueError, match="not the 40 words the alignment was fit on"):
        Alignment.load(toy / "a.npz")


def test_lower_applies_to_the_test_dictionary(toy, capsys):
    p = toy
    (p / "upper.txt").write_text((p / "test.txt").read_text().upper())
    rc, out, err = run(["bli", "align", p / "src.vec", p / "tgt.vec.gz", "--train-dict", p / "train.txt",
                        "--test-dict", p / "upper.txt", "--lower", "--save-alignment", p / "a.npz", "-q"], capsys)
    assert rc == 0 and "30 of 31 source words covered" in out, out
    assert Alignment.load(p / "a.npz").evaluate(p / "upper.txt")["n_queries"] == 30
    bad(["bli", "translate", "s1", "--alignment", p / "a.npz", "--max-vocab", "3"], capsys,
        "--max-vocab: not used with --alignment a.npz")
    rc, out, err = run(["bli", "translate", "S61", "--alignment", p / "a.npz"], capsys)
    assert rc == 0 and out.split()[:2] == ["s61", "t61"], out  # the query is lowercased as the words were


def test_options_a_saved_map_does_not_use_are_refused(toy, capsys):
    p = toy
    rc, _, err = run(["bli", "align", p / "src.vec", p / "tgt.vec.gz", "--train-dict", p / "train.txt",
                      "--save-alignment", p / "a.npz", "--save-mapping", p / "W.npy", "-q"], capsys)
    assert rc == 0, err
    test = ["--test-dict", p / "test.txt"]
    bad(["bli", "eval", "--alignment", p / "a.npz", *test, "--knn", "1", "--method", "rcsls", "--self-learning"],
        capsys, "--method, --self-learning, --knn: not used with --alignment a.npz")
    bad(["bli", "eval", "--alignment", p / "a.npz", *test, "--normalize", "none"], capsys, "--normalize: not used")
    bad(["bli", "eval", p / "src.vec", p / "tgt.vec.gz", "--mapping", p / "W.npy", *test, "--train-dict",
         p / "train.txt"], capsys, "--train-dict: not used with --mapping W.npy (the map is given")
    # with a bare map, the retrieval options do apply
    rc, out, err = run(["bli", "eval", p / "src.vec", p / "tgt.vec.gz", "--mapping", p / "W.npy", *test,
                        "--knn", "3", "--report", p / "r.json", "-q"], capsys)
    assert rc == 0, err
    rep = json.loads((p / "r.json").read_text())
    assert rep["settings"]["knn"] == 3 and rep["settings"]["normalize"] == "unit,center,unit"


def test_seed_n_is_the_first_n_pairs_and_outputs_do_not_collide(toy, capsys):
    p = toy
    rc, out, err = run(["bli", "align", p / "src.vec", p / "tgt.vec.gz", "--train-dict", p / "train.txt",
                        "--seed", "7", "--self-learning", "--report", p / "r.json",
                        "--out-lexicon", p / "l.txt", "--no-scores"], capsys)
    assert rc == 0, err
    seed = json.loads((p / "r.json").read_text())["alignment"]["seed"]
    assert seed == {"kind": "first 7 pairs", "pairs": 7, "source_words": 7}
    assert "7 of its 50 in-vocabulary pairs used as the seed" in err
    lines = (p / "l.txt").read_text().splitlines()
    assert lines[1] == "s1 t1"  # a MUSE dictionary: pyzsl and MUSE read it back
    from pyzsl.bli import load_dictionary
    assert len(load_dictionary(p / "l.txt")) == 80
    bad(["bli", "align", p / "src.vec", p / "tgt.vec.gz", "--train-dict", p / "train.txt",
         "--out-lexicon", p / "same.json", "--report", p / "same.json"], capsys,
        "--report and --out-lexicon would both write")
    bad(["bli", "align", p / "src.vec", p / "tgt.vec.gz", "--train-dict", p / "train.txt",
         "--save-aligned", p / "c.vec", "--out-lexicon", p / "c.tgt.vec"], capsys,
        "--save-aligned and --out-lexicon would both write")


def test_eval_of_given_spaces_and_coverage_warning(toy, capsys, monkeypatch):
    p = toy
    # spaces given as aligned are compared by cosine alone (MUSE's evaluation), not re-centred
    (p / "self.txt").write_text("s1 s1\ns2 s2\n")
    rc, out, err = run(["bli", "eval", p / "src.vec", p / "src.vec", "--test-dict", p / "self.txt",
                        "--report", p / "e.json", "-q"], capsys)
    assert rc == 0 and "100.00" in out, (out, err)
    assert json.loads((p / "e.json").read_text())["settings"]["normalize"] == "unit"
    (p / "few.txt").write_text("s1 t1\nzz1 t1\nzz2 t1\nzz3 t1\n")
    rc, out, err = run(["bli", "align", p / "src.vec", p / "tgt.vec.gz", "--train-dict", p / "train.txt",
                        "--test-dict", p / "few.txt", "--oov-wrong", "-q"], capsys)
    assert rc == 0 and "only 1 of 4 source words (25.0%)" in err
    assert out.splitlines()[-2].split()[-1] == "4"  # P@k over all 4 words with --oov-wrong
    monkeypatch.setenv("PYZSL_DATA", str(p / "nope"))
    bad(["bli", "align"], capsys, "PYZSL_DATA=")


def test_outputs_appear_together_or_not_at_all(toy, capsys, monkeypatch):
    p = toy
    (p / "old.tsv").write_text("keep me\n")
    import pyzsl.bli.io as io

    def broken(path, emb, *a, **k):  # fails after the lexicon and the mapping were written
        raise KeyboardInterrupt

    monkeypatch.setattr(io, "save_embeddings", broken)
    argv = ["bli", "align", p / "src.vec", p / "tgt.vec.gz", "--train-dict", p / "train.txt", "-q",
            "--out-lexicon", p / "old.tsv", "--save-mapping", p / "W.npy", "--save-aligned", p / "x.vec",
            "--report", p / "r.json"]
    rc, _, err = run(argv, capsys)
    assert rc == 130 and "interrupted" in err
    assert (p / "old.tsv").read_text() == "keep me\n"  # not replaced by a run that did not finish
    assert not any((p / n).exists() for n in ("W.npy", "x.vec", "x.tgt.vec", "r.json"))
    assert not [f.name for f in p.iterdir() if f.name.startswith(".")]  # no temporary left
    monkeypatch.undo()
    rc, _, err = run(argv, capsys)
    assert rc == 0, err
    assert all((p / n).exists() for n in ("W.npy", "x.vec", "x.tgt.vec", "r.json"))
    assert (p / "old.tsv").read_text().startswith("w0\tw0\t")


def test_default_run(capsys, monkeypatch):
    if not (REPO_DATA / "fr.vec.gz").exists():
        pytest.skip(f"default data not built in {REPO_DATA} (tools/build_default_data.py)")
    monkeypatch.setenv("PYZSL_DATA", str(REPO_DATA))
    rc, out, err = run(["bli", "align"], capsys)
    assert rc == 0, err
    assert "embedded French–Finnish default" in err
    csls = next(line for line in out.splitlines() if line.startswith("CSLS")).split()
    # data/README.md: Procrustes CSLS P@1 52.24 on 245 test words; a broken pipeline gives ~0
    assert float(csls[1]) > 45.0 and csls[-1] == "245"


def test_python_m_pyzsl_help():
    r = subprocess.run([sys.executable, "-m", "pyzsl", "bli", "align", "--help"], capture_output=True,
                       text=True, cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert r.returncode == 0 and "--train-dict" in r.stdout and "--save-aligned" in r.stdout


# --------------------------------------------------------------------------- bad input

def bad(argv, capsys, *needles):
    rc, out, err = run(argv, capsys)
    assert rc == 2, (out, err)
    assert "Traceback" not in err
    for n in needles:
        assert str(n) in err, err
    return err


def test_bad_inputs(toy, capsys):
    p = toy
    base = ["bli", "align", p / "src.vec", p / "tgt.vec.gz"]
    bad(["bli", "align", p / "nope.vec", p / "tgt.vec.gz", "--train-dict", p / "train.txt"], capsys,
        "file not found", "nope.vec")
    bad(["bli", "align", p / "src.vec"], capsys, "both SRC and TGT")
    bad(base, capsys, "no supervision")
    bad(base + ["--seed", "none"], capsys, "needs --self-learning")
    bad(base + ["--seed", "identical", "--train-dict", p / "train.txt"], capsys, "exclude each other")
    bad(base + ["--seed", "banana"], capsys, "--seed")
    bad(base + ["--seed", "numerals"], capsys, "share no identical numerals")
    bad(base + ["--train-dict", p / "nope.txt"], capsys, "nope.txt")
    bad(base + ["--train-dict", p / "train.txt", "--report", p / "no" / "r.json"], capsys, "does not exist")
    bad(base + ["--train-dict", p / "train.txt", "--save-mapping", p / "W.txt"], capsys, ".npy or .npz")
    bad(base + ["--train-dict", p / "train.txt", "--knn", "0"], capsys, "--knn")
    bad(["bli", "align", "--method", "svd"], capsys, "invalid choice")
    bad(["bli", "translate", "--src", p / "src.vec", "--tgt", p / "tgt.vec.gz", "--train-dict",
         p / "train.txt", "-q"], capsys, "nothing to translate")
    bad(["bli", "translate", "zz", "--src", p / "src.vec", "--tgt", p / "tgt.vec.gz", "--train-dict",
         p / "train.txt", "-q"], capsys, "none of the words")
    bad(["bli", "eval", p / "src.vec", p / "tgt.vec.gz"], capsys, "--test-dict")
    bad(["bli", "eval", p / "src.vec", p / "tgt.vec.gz", "--test-dict", p / "test.txt", "--mapping",
         p / "train.txt"], capsys, "train.txt")
    bad(["bli", "translate", "s1", "--alignment", p / "test.txt"], capsys, "not a pyzsl alignment file")
    bad(["bli"], capsys)
    assert not [f for f in p.iterdir() if f.suffix in (".json", ".npy", ".tmp")]


def test_malformed_files_name_file_and_line_and_write_nothing(toy, capsys):
    p = toy
    (p / "bad.vec").write_text("3 12\n" + "a " + " ".join(["1"] * 12) + "\nb 1 2 nan\n")
    outs = ["--report", p / "r.json", "--out-lexicon", p / "l.tsv", "--save-aligned", p / "x.vec"]
    bad(["bli", "align", p / "bad.vec", p / "tgt.vec.gz", "--train-dict", p / "train.txt", *outs], capsys,
        f"{p / 'bad.vec'}:3:")
    (p / "bad_dict.txt").write_text("s1 t1\ns2 t2 t3\n")
    bad(["bli", "align", p / "src.vec", p / "tgt.vec.gz", "--train-dict", p / "bad_dict.txt", *outs], capsys,
        f"{p / 'bad_dict.txt'}:2:")
    bad(["bli", "align", p / "src.vec", p / "tgt.vec.gz", "--train-dict", p / "train.txt", "--test-dict",
         p / "bad_dict.txt", *outs], capsys, f"{p / 'bad_dict.txt'}:2:")
    assert not any((p / n).exists() for n in ("r.json", "l.tsv", "x.vec", "x.tgt.vec"))
    assert not [f for f in p.iterdir() if f.name.endswith(".tmp")]


def test_align_passes_seed_and_options_to_self_learning(toy, monkeypatch):
    # heuristic seeds hold wrong pairs: self-learning must not keep them; the Procrustes options
    # shape its final fit instead of being dropped
    from pyzsl.bli.procrustes import VECMAP_SUPERVISED

    sl = sys.modules["pyzsl.bli.self_learning"]  # the package exports a function of that name

    seen = []
    real = sl.self_learning
    monkeypatch.setattr(sl, "self_learning", lambda *a, **kw: seen.append(kw) or real(*a, **kw))
    align(toy / "src.vec", toy / "tgt.vec.gz", seed="identical", self_learning=True, progress=False)
    al = align(toy / "src.vec", toy / "tgt.vec.gz", train_dict=toy / "train.txt", self_learning=True,
               method_options=VECMAP_SUPERVISED, progress=False)
    assert seen[0]["keep_seed"] is False and "final_options" not in seen[0]
    assert seen[1]["keep_seed"] is True and seen[1]["final_options"] == VECMAP_SUPERVISED
    assert al.mapping.tgt is not None  # VecMap's re-weighting maps the target side too


def test_lower_applies_to_every_input(toy):
    from pyzsl.bli.io import load_embeddings

    s, t = load_embeddings(toy / "src.vec"), load_embeddings(toy / "tgt.vec.gz")
    upper = Embeddings([w.upper() for w in s.words], s.vectors)
    pairs = [(a.upper(), b.upper()) for a, b in (line.split() for line in (toy / "train.txt").read_text().splitlines())]
    al = align(upper, t, train_dict=pairs, lower=True, progress=False)
    assert al.info["train_dict"]["pairs"] == 50 and al.src.words == s.words
    assert al.evaluate(toy / "test.txt")["p@1"] == 1.0
    dup = Embeddings(["A", "a", "b"], np.eye(3, dtype=np.float32)).lowercased()
    assert dup.words == ["a", "b"] and np.array_equal(dup.vectors, np.eye(3, dtype=np.float32)[[0, 2]])


def test_bad_numbers_are_refused_by_flag_before_any_work(capsys):
    for argv, flag in ((["align", "--beta", "0", "--retrieval", "isf"], "--beta"),
                       (["translate", "chat", "--max-vocab", "0"], "--max-vocab"),
                       (["eval", "--beta", "nan"], "--beta")):
        assert main(["bli", *argv, "-q"]) != 0
        assert f"error: {flag}:" in capsys.readouterr().err


def test_eval_refuses_a_method_it_cannot_fit(toy, capsys):
    rc, _, err = run(["bli", "eval", toy / "src.vec", toy / "tgt.vec.gz", "--test-dict", toy / "test.txt",
                      "--method", "rcsls", "-q"], capsys)
    assert rc != 0 and "--method rcsls: fits a map, which needs --train-dict" in err


def test_eval_of_a_saved_alignment_finds_its_test_dictionary(toy, capsys):
    # fitted on the embedded default: its test dictionary; on other files: --test-dict is needed
    rc, _, err = run(["bli", "align", "--save-alignment", toy / "d.npz", "-q"], capsys)
    assert rc == 0, err
    rc, out, err = run(["bli", "eval", "--alignment", toy / "d.npz", "-q"], capsys)
    assert rc == 0 and "CSLS" in out, err
    rc, _, err = run(["bli", "align", toy / "src.vec", toy / "tgt.vec.gz", "--train-dict", toy / "train.txt",
                      "--save-alignment", toy / "a.npz", "-q"], capsys)
    assert rc == 0, err
    rc, _, err = run(["bli", "eval", "--alignment", toy / "a.npz", "-q"], capsys)
    assert rc != 0 and "--test-dict F is required: the alignment maps" in err
