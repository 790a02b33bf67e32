"""The ``pyzsl`` command line.

    pyzsl bli align [SRC TGT] [--train-dict F | --seed identical|numerals|none|N] [--test-dict F]
                    [--method procrustes|rcsls] [--self-learning] [--retrieval nn|csls|isf]
                    [--backend auto|pyzsl|faiss|torch] [--device cpu|cuda]
                    [--out-lexicon F.tsv] [--save-mapping W.npy] [--save-aligned F.vec]
                    [--save-alignment A.npz] [--report F.json]
    pyzsl bli translate WORD... [--src F --tgt F] [--alignment A.npz | --mapping W.npy] [-k 5]
    pyzsl bli eval [SRC TGT] --test-dict F [--alignment A.npz | --mapping W.npy]

With no files, ``align`` runs on the embedded French–Finnish default (``data/``). Bad input
(missing or malformed files, unknown words, impossible options) ends with a one-line message
on stderr and exit status 2, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

EXIT_BAD_INPUT = 2
DEFAULT_NORMALIZE = "unit,center,unit"


class UsageError(Exception):
    """A problem with the command line or its files, reported without a traceback."""


def _say(args, msg: str) -> None:
    if not getattr(args, "quiet", False):
        print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- parser

def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("embeddings and retrieval")
    g.add_argument("--max-vocab", type=int, default=None, metavar="N",
                   help="read only the N most frequent words of each file")
    g.add_argument("--lower", action="store_true", help="lowercase the words (first occurrence kept)")
    g.add_argument("--normalize", default=None, metavar="STEPS",
                   help="normalisation steps before mapping (default: unit,center,unit; 'iterative': "
                        "Zhang et al. 2019, better with few or no seed pairs; eval of spaces given "
                        "as aligned: unit, the cosine MUSE evaluates with)")
    g.add_argument("--knn", type=int, default=10,
                   help="CSLS neighbourhood size: retrieval, self-learning's induction, RCSLS (default 10)")
    g.add_argument("--beta", type=float, default=10.0,
                   help="inverted softmax inverse temperature (default 10)")
    g.add_argument("--backend", choices=("auto", "pyzsl", "faiss", "torch"), default="auto",
                   help="similarity top-k backend (default auto: our fused kernel)")
    g.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    g.add_argument("--quiet", "-q", action="store_true", help="no progress messages")


def _supervision(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("mapping")
    g.add_argument("--train-dict", type=Path, metavar="F", help="train dictionary (MUSE format)")
    g.add_argument("--seed", metavar="KIND",
                   help="identical | numerals | none (fully unsupervised, with --self-learning) | N "
                        "(the first N pairs of --train-dict, e.g. 50)")
    g.add_argument("--method", choices=("procrustes", "rcsls"), default="procrustes")
    g.add_argument("--self-learning", action="store_true",
                   help="iterate mapping and CSLS dictionary induction (Artetxe et al. 2018)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="pyzsl", description="pyzsl: embedding-space learning")
    sub = ap.add_subparsers(dest="group", metavar="{bli}")
    bli = sub.add_parser("bli", help="bilingual lexicon induction",
                         description="Bilingual lexicon induction: align two embedding spaces, "
                                     "translate, evaluate.")
    bsub = bli.add_subparsers(dest="command", metavar="{align,translate,eval}")
    ap._bli = bli  # for the help printed when no command is given

    a = bsub.add_parser("align", help="map SRC onto TGT, evaluate, export",
                        description="Map SRC onto TGT (fastText .vec/.vec.gz/.bin or .npy). "
                                    "With no files: the embedded French-Finnish default.")
    a.add_argument("src", nargs="?", type=Path, metavar="SRC")
    a.add_argument("tgt", nargs="?", type=Path, metavar="TGT")
    _supervision(a)
    a.add_argument("--test-dict", type=Path, metavar="F", help="test dictionary: P@1/5/10 NN and CSLS")
    a.add_argument("--retrieval", choices=("nn", "csls", "isf"), default="csls",
                   help="retrieval for the lexicon (and evaluated besides NN and CSLS)")
    a.add_argument("--oov-wrong", action="store_true",
                   help="count out-of-vocabulary test words as wrong (fastText convention)")
    o = a.add_argument_group("outputs")
    o.add_argument("--out-lexicon", type=Path, metavar="F.tsv",
                   help="source<TAB>target<TAB>score lines (the retrieval's score; --no-scores: "
                        "'source target', a MUSE dictionary)")
    o.add_argument("--no-scores", action="store_true", help="lexicon without the score column")
    o.add_argument("--lexicon-k", type=int, default=1, metavar="K", help="translations per word in the lexicon")
    o.add_argument("--save-mapping", type=Path, metavar="W.npy",
                   help="the source map W, applied to vectors normalised with --normalize (as "
                        "pyzsl bli eval --mapping does); .npz: the full alignment")
    o.add_argument("--save-aligned", type=Path, metavar="F.vec",
                   help="mapped source vectors (.vec/.vec.gz/.npy); the target goes to F.tgt.vec")
    o.add_argument("--save-alignment", type=Path, metavar="A.npz", help="alignment for translate/eval")
    o.add_argument("--report", type=Path, metavar="F.json", help="settings, results and timings as JSON")
    _common(a)
    a.set_defaults(func=cmd_align)

    t = bsub.add_parser("translate", help="translate words",
                        description="Translate words with a saved alignment or mapping, or one "
                                    "fitted now (default data: its train dictionary).")
    t.add_argument("words", nargs="*", metavar="WORD")
    t.add_argument("--input", type=Path, metavar="FILE", help="words to translate, one per line")
    t.add_argument("--src", type=Path, metavar="SRC")
    t.add_argument("--tgt", type=Path, metavar="TGT")
    t.add_argument("--alignment", type=Path, metavar="A.npz")
    t.add_argument("--mapping", type=Path, metavar="W.npy")
    t.add_argument("-k", type=int, default=5, help="translations per word (default 5)")
    t.add_argument("--retrieval", choices=("nn", "csls", "isf"), default="csls")
    _supervision(t)
    _common(t)
    t.set_defaults(func=cmd_translate)

    e = bsub.add_parser("eval", help="P@1/5/10 on a test dictionary",
                        description="Evaluate SRC → TGT translation on a test dictionary: with "
                                    "--alignment/--mapping, or a map fitted now, or the two "
                                    "spaces as given (already aligned).")
    e.add_argument("src", nargs="?", type=Path, metavar="SRC")
    e.add_argument("tgt", nargs="?", type=Path, metavar="TGT")
    e.add_argument("--test-dict", type=Path, metavar="F")
    e.add_argument("--alignment", type=Path, metavar="A.npz")
    e.add_argument("--mapping", type=Path, metavar="W.npy")
    e.add_argument("--retrieval", nargs="+", choices=("nn", "csls", "isf"), default=["nn", "csls"])
    e.add_argument("--oov-wrong", action="store_true")
    e.add_argument("--report", type=Path, metavar="F.json")
    _supervision(e)
    _common(e)
    e.set_defaults(func=cmd_eval)
    return ap


# --------------------------------------------------------------------------- checks

def _check_input(path: Path | None, what: str) -> None:
    if path is None:
        return
    if not path.exists():
        raise UsageError(f"{what}: file not found: {path}")
    if path.is_dir():
        raise UsageError(f"{what}: {path} is a folder, not a file")


def _check_output(path: Path | None, what: str, suffixes: Sequence[str] | None = None) -> None:
    if path is None:
        return
    if suffixes and not any(path.name.lower().endswith(s) for s in suffixes):
        raise UsageError(f"{what}: {path} should end with {' or '.join(suffixes)}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"{what}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"{what}: folder {parent} is not writable")
    if path.is_dir():
        raise UsageError(f"{what}: {path} is a folder")


class _Staged:
    """Outputs written under temporary names beside their targets (same folder, same suffixes,
    so each writer picks its format as for the real name), renamed into place together when
    the ``with`` block ends; an exception (an error, Ctrl-C) removes them instead, so a run
    stopped half-way leaves none of its outputs and replaces no old file."""

    def __init__(self) -> None:
        self.moves: list[tuple[Path, Path]] = []

    def path(self, final: Path, vocab: bool = False) -> Path:
        tmp = final.with_name(f".pyzsl-{os.getpid()}-{final.name}")
        self.moves.append((tmp, final))
        if vocab and final.suffix.lower() == ".npy":  # save_embeddings writes the words beside
            self.moves.append((tmp.with_suffix(".vocab"), final.with_suffix(".vocab")))
        return tmp

    def __enter__(self) -> "_Staged":
        return self

    def __exit__(self, exc_type, *_) -> None:
        for tmp, final in self.moves:
            if exc_type is None and tmp.exists():
                os.replace(tmp, final)
            else:
                tmp.unlink(missing_ok=True)


def _distinct_outputs(args) -> None:
    """No two outputs (derived names included: F.tgt.vec, .vocab beside .npy) on one path."""
    outs: dict[Path, str] = {}

    def add(path: Path | None, what: str) -> None:
        if path is None:
            return
        key = path.resolve()
        if key in outs:
            raise UsageError(f"{what} and {outs[key]} would both write {path}")
        outs[key] = what

    add(args.out_lexicon, "--out-lexicon")
    add(args.save_mapping, "--save-mapping")
    add(args.save_alignment, "--save-alignment")
    add(args.report, "--report")
    if args.save_aligned is not None:
        for p in (args.save_aligned, _aligned_target_path(args.save_aligned)):
            add(p, "--save-aligned")
            if p.suffix.lower() == ".npy":
                add(p.with_suffix(".vocab"), "--save-aligned")


def _seed_arg(args) -> str | int | None:
    """--seed → None, 'identical', 'numerals' or an int (validated against the other options)."""
    s = args.seed
    if s is None:
        return None
    if s.isdigit():
        if int(s) < 1:
            raise UsageError("--seed N: N must be at least 1")
        return int(s)
    if s not in ("identical", "numerals", "none"):
        raise UsageError(f"--seed: expected identical, numerals, none or a number, got {s!r}")
    if args.train_dict is not None:
        raise UsageError(f"--seed {s} and --train-dict exclude each other")
    if s == "none" and not args.self_learning:
        raise UsageError("--seed none (no dictionary at all) needs --self-learning")
    return None if s == "none" else s


def _resolve_files(args, src: Path | None, tgt: Path | None) -> tuple[Path, Path, dict | None]:
    """(src, tgt, default-data paths or None)."""
    if (src is None) != (tgt is None):
        raise UsageError("give both SRC and TGT embedding files (or neither, for the default data)")
    if src is None:
        from pyzsl.bli.io import default_data

        try:
            dd = default_data()
        except FileNotFoundError as e:
            raise UsageError(str(e)) from None
        return dd["src"], dd["tgt"], dd
    _check_input(src, "SRC")
    _check_input(tgt, "TGT")
    return src, tgt, None


def _check_numbers(args, *names: str) -> None:
    """Checked before any work, by flag name: counts >= 1, and --beta a finite number > 0."""
    for name in names:
        v = getattr(args, name, None)
        if v is not None and v < 1:
            raise UsageError(f"--{name.replace('_', '-')}: expected a positive number, got {v}")
    beta = getattr(args, "beta", None)
    if beta is not None and not (math.isfinite(beta) and beta > 0):
        raise UsageError(f"--beta: expected a finite number > 0, got {beta}")


# --------------------------------------------------------------------------- alignment

def _fit(args, src: Path, tgt: Path, default: dict | None, *, required: bool):
    """align() from the command line's supervision options; None when none is given and
    ``required`` is False. On the default data, its train dictionary is the default
    supervision (unless --seed identical|numerals|none)."""
    from pyzsl.bli import align

    seed = _seed_arg(args)
    train = args.train_dict
    if train is None and default is not None and args.seed not in ("identical", "numerals", "none"):
        train = default["train"]
    if isinstance(seed, int) and train is None:
        raise UsageError(f"--seed {seed}: a numeric seed takes the first {seed} pairs of --train-dict")
    if train is None and seed is None and not args.self_learning:
        if not required:
            if args.method != "procrustes":  # would be silently ignored by the pre-aligned eval
                raise UsageError(f"--method {args.method}: fits a map, which needs --train-dict F or "
                                 "--seed identical|numerals (or pass --mapping/--alignment)")
            return None
        raise UsageError("no supervision: give --train-dict F, --seed identical|numerals, "
                         "or --self-learning --seed none (fully unsupervised)")
    _check_input(train, "--train-dict")
    what = (f"seed: first {seed} pairs of {train}" if isinstance(seed, int) else
            f"train dictionary {train}" if train is not None else
            f"seed: {seed}" if seed else "no seed (unsupervised)")
    _say(args, f"mapping {src.name} → {tgt.name}: {args.method}"
               f"{' + self-learning' if args.self_learning else ''}; {what}")
    return align(src, tgt, train_dict=train, seed=seed, method=args.method,
                 self_learning=args.self_learning, normalize=args.normalize or DEFAULT_NORMALIZE,
                 max_vocab=args.max_vocab, lower=args.lower, knn=args.knn, beta=args.beta,
                 backend=args.backend, device=args.device, progress=not args.quiet)


def _from_saved(args, src: Path | None, tgt: Path | None, default: dict | None):
    """An Alignment from --alignment or --mapping (None when neither is given)."""
    import numpy as np
    import torch

    from pyzsl.bli import Alignment, LinearMap, load_embeddings

    if args.alignment is not None and args.mapping is not None:
        raise UsageError("--alignment and --mapping exclude each other")
    flag, saved = ("--alignment", args.alignment) if args.alignment is not None else ("--mapping", args.mapping)
    if saved is None:
        return None
    _check_input(saved, flag)
    whole = flag == "--alignment" or saved.suffix.lower() == ".npz"
    # options that would fit a map, or (for a saved alignment) read the spaces otherwise than
    # it stores: refused rather than silently ignored (and recorded in --report as if used)
    given = [o for o, on in (("--train-dict", args.train_dict is not None), ("--seed", args.seed is not None),
                             ("--method", args.method != "procrustes"), ("--self-learning", args.self_learning),
                             ("--max-vocab", whole and args.max_vocab is not None), ("--lower", whole and args.lower),
                             ("--normalize", whole and args.normalize is not None),
                             ("--knn", whole and args.knn != 10), ("--beta", whole and args.beta != 10.0)) if on]
    if given:
        raise UsageError(f"{', '.join(given)}: not used with {flag} {saved.name} (" +
                         ("the alignment stores how its spaces are read, normalised and searched)" if whole
                          else "the map is given, nothing is fitted)"))
    if whole:
        return Alignment.load(saved, src, tgt, backend=args.backend, device=args.device)
    if src is None:
        src, tgt = default["src"], default["tgt"]
    try:
        W = np.load(args.mapping, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise UsageError(f"--mapping {args.mapping}: not a readable .npy matrix ({e})") from None
    if W.ndim != 2 or W.dtype.kind != "f":
        raise UsageError(f"--mapping {args.mapping}: expected a 2-D float matrix, got shape {W.shape} {W.dtype}")
    s = load_embeddings(src, max_vocab=args.max_vocab, lower=args.lower)
    t = load_embeddings(tgt, max_vocab=args.max_vocab, lower=args.lower)
    if W.shape != (s.dim, t.dim):
        raise UsageError(f"--mapping {args.mapping}: shape {W.shape}, expected ({s.dim}, {t.dim}) "
                         "for these embeddings")
    return Alignment(s, t, LinearMap(torch.from_numpy(W.astype(np.float32))), args.normalize or DEFAULT_NORMALIZE,
                     knn=args.knn, beta=args.beta, backend=args.backend, device=args.device,
                     info={"method": f"mapping {args.mapping}", "lower": args.lower})


# --------------------------------------------------------------------------- output

def _table(rows: list[dict], retrievals: Sequence[str]) -> str:
    # "over": the denominator of P@k (the covered words; all test words with --oov-wrong)
    head = f"{'retrieval':<10} {'P@1':>7} {'P@5':>7} {'P@10':>7} {'coverage':>9} {'queries':>8} {'over':>6}"
    lines = [head, "-" * len(head)]
    for r in retrievals:
        res = rows[r]
        over = res["n_source_words"] if res.get("oov") == "wrong" else res["n_queries"]
        lines.append(f"{r.upper():<10} {100 * res['p@1']:>7.2f} {100 * res['p@5']:>7.2f} "
                     f"{100 * res['p@10']:>7.2f} {100 * res['coverage']:>8.1f}% {res['n_queries']:>8} {over:>6}")
    return "\n".join(lines)


def _write_json(path: Path, obj: Any) -> None:
    """Plain write: callers pass a path from :class:`_Staged`, which makes it atomic."""
    from pyzsl.bli.alignment import _jsonable

    with open(path, "w", encoding="utf-8") as f:
        json.dump(_jsonable(obj), f, indent=2, ensure_ascii=False)
        f.write("\n")


def _write_lexicon(path: Path, rows, scores: bool = True) -> None:
    """Plain write, as :func:`_write_json`."""
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for s, t, v in rows:
            f.write(f"{s}\t{t}\t{v:.6f}\n" if scores else f"{s} {t}\n")


def _aligned_target_path(path: Path) -> Path:
    name = path.name
    for ext in (".vec.gz", ".txt.gz", ".vec", ".txt", ".npy"):
        if name.lower().endswith(ext):
            return path.with_name(name[: -len(ext)] + ".tgt" + name[-len(ext):])
    return path.with_name(name + ".tgt")


def _evaluate_all(args, al, test: Path, retrievals: Sequence[str]) -> dict:
    from pyzsl.bli.dictionary import load_dictionary

    d = load_dictionary(test, lower=bool(al.info.get("lower", False)))  # as the embeddings were read
    out = {}
    for r in retrievals:
        _say(args, f"evaluating {r.upper()} on {test.name} …")
        out[r] = al.evaluate(d, retrieval=r, oov="wrong" if args.oov_wrong else "ignore")
    first = out[retrievals[0]]
    if first["coverage"] < 0.5:  # said even with -q: the figures above mean little
        print(f"pyzsl: warning: {test}: only {first['n_queries']} of {first['n_source_words']} source "
              f"words ({100 * first['coverage']:.1f}%) are in the source vocabulary (the wrong "
              "direction, or a vocabulary cut by --max-vocab?)", file=sys.stderr, flush=True)
    return out


# --------------------------------------------------------------------------- commands

def cmd_align(args) -> int:
    t_start = time.perf_counter()
    _check_numbers(args, "max_vocab", "knn", "lexicon_k")
    src, tgt, default = _resolve_files(args, args.src, args.tgt)
    if default is not None:
        _say(args, f"no files given: the embedded French–Finnish default ({src.parent})")
    test = args.test_dict if args.test_dict is not None else (default["test"] if default else None)
    _check_input(test, "--test-dict")
    _check_output(args.out_lexicon, "--out-lexicon")
    _check_output(args.save_mapping, "--save-mapping", (".npy", ".npz"))
    _check_output(args.save_aligned, "--save-aligned", (".vec", ".vec.gz", ".txt", ".txt.gz", ".npy"))
    _check_output(args.save_alignment, "--save-alignment", (".npz",))
    _check_output(args.report, "--report")
    _distinct_outputs(args)

    al = _fit(args, src, tgt, default, required=True)
    timings = dict(al.info.get("timings", {}))
    _say(args, f"loaded {len(al.src)} × {len(al.tgt)} words ({timings.get('load', 0):.1f} s); "
               f"mapped in {timings.get('map', 0):.1f} s")
    td = al.info.get("train_dict")
    if td:
        dr, sd = td["dropped"], al.info.get("seed", {})
        used = (f"{sd['pairs']} of its {td['pairs']} in-vocabulary pairs used as the seed ({sd['kind']}, "
                f"{sd['source_words']} source words)" if "source_words" in sd else f"{td['pairs']} pairs used")
        _say(args, f"train dictionary: {used}; {dr['pairs']} dropped as out of "
                   f"vocabulary (source word missing: {dr['src_oov']}, target word missing: {dr['tgt_oov']})")
    retrievals = ["nn", "csls"] + (["isf"] if args.retrieval == "isf" else [])
    results = None
    if test is not None:
        t0 = time.perf_counter()
        results = _evaluate_all(args, al, test, retrievals)
        timings["evaluate"] = time.perf_counter() - t0
    files: dict[str, str] = {}
    with _Staged() as staged:  # every output appears at the end, or none does (an error, Ctrl-C)
        if args.out_lexicon is not None:
            t0 = time.perf_counter()
            _say(args, f"lexicon ({args.retrieval.upper()}, {args.lexicon_k} per word) → {args.out_lexicon}")
            _write_lexicon(staged.path(args.out_lexicon),
                           al.lexicon(args.retrieval, k=args.lexicon_k, progress=not args.quiet),
                           scores=not args.no_scores)
            timings["lexicon"] = time.perf_counter() - t0
            files["lexicon"] = str(args.out_lexicon)
        if args.save_mapping is not None:
            if args.save_mapping.suffix.lower() == ".npz":
                al.save(staged.path(args.save_mapping))
            else:
                if al.mapping.tgt is not None:
                    raise UsageError("--save-mapping: this map also transforms the target space; "
                                     "save it as .npz (the full alignment)")
                import numpy as np

                with open(staged.path(args.save_mapping), "wb") as f:
                    np.save(f, al.mapping.src.detach().cpu().numpy())
            files["mapping"] = str(args.save_mapping)
        if args.save_alignment is not None:
            al.save(staged.path(args.save_alignment))
            files["alignment"] = str(args.save_alignment)
        if args.save_aligned is not None:
            from pyzsl.bli.io import save_embeddings

            ms, mt = al.mapped()
            tgt_out = _aligned_target_path(args.save_aligned)
            _say(args, f"aligned vectors → {args.save_aligned} (source), {tgt_out} (target)")
            save_embeddings(staged.path(args.save_aligned, vocab=True), ms)
            save_embeddings(staged.path(tgt_out, vocab=True), mt)
            files["aligned_src"], files["aligned_tgt"] = str(args.save_aligned), str(tgt_out)
        timings["total"] = time.perf_counter() - t_start
        if args.report is not None:
            _write_json(staged.path(args.report),
                        dict(command="bli align", src=str(src), tgt=str(tgt), test_dict=str(test) if test else None,
                             settings=_settings(args, al), alignment=al.info, results=results,
                             timings=timings, files=files))
    print(f"\n{src.name} → {tgt.name}: {len(al.src)} × {len(al.tgt)} words, {al.info.get('method')}"
          f"{' + self-learning' if al.info.get('self_learning') else ''}")
    if results is not None:
        print(f"test dictionary {test}: {results['csls']['n_queries']} of "
              f"{results['csls']['n_source_words']} source words covered"
              f"{' (OOV counted as wrong)' if args.oov_wrong else ' (MUSE protocol)'}")
        print(_table(results, retrievals))
    print("time: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
    for k, v in files.items():
        print(f"wrote {k}: {v}")
    if args.report is not None:
        print(f"wrote report: {args.report}")
    return 0


def _settings(args, al) -> dict:
    """The command line as parsed, with the normalisation actually applied."""
    out = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
           if k not in ("func", "group", "command") and not k.startswith("_")}
    return {**out, "normalize": al.normalize}


def _read_words(args) -> list[str]:
    words = list(args.words)
    if args.input is not None:
        _check_input(args.input, "--input")
        try:
            text = args.input.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise UsageError(f"--input {args.input}: not valid UTF-8 ({e.reason})") from None
        words += [w.strip() for w in text.splitlines() if w.strip()]
    if not words:
        raise UsageError("nothing to translate: give words, or --input FILE")
    return words


def cmd_translate(args) -> int:
    _check_numbers(args, "k", "max_vocab", "knn")
    words = _read_words(args)
    src, tgt, default = (args.src, args.tgt, None)
    if args.alignment is None:
        src, tgt, default = _resolve_files(args, args.src, args.tgt)
    elif (args.src is None) != (args.tgt is None):
        raise UsageError("give both --src and --tgt, or neither")
    al = _from_saved(args, src, tgt, default)
    if al is None:
        al = _fit(args, src, tgt, default, required=True)
    if al.info.get("lower"):
        words = [w.lower() for w in words]
    known = [w for w in words if w in al.src.index]
    unknown = [w for w in words if w not in al.src.index]
    result = dict(zip(known, al.translate(known, k=args.k, retrieval=args.retrieval, with_scores=True))) if known else {}
    width = max(len(w) for w in words)
    for w in words:
        if w in result:
            print(f"{w:<{width}}  " + "  ".join(f"{t} ({v:.3f})" for t, v in result[w]))
        else:
            print(f"{w:<{width}}  (not in the source vocabulary)")
    if unknown and not known:
        raise UsageError(f"none of the words is in the source vocabulary ({len(al.src)} words)")
    return 0


def _default_test_of(al) -> Path:
    """The default test dictionary when ``al`` maps the embedded default data, else a UsageError."""
    from pyzsl.bli.io import default_data

    try:
        d = default_data()
    except FileNotFoundError:
        d = None
    if d is not None and al.src.source and Path(al.src.source).resolve() == d["src"].resolve():
        return d["test"]
    raise UsageError(f"--test-dict F is required: the alignment maps {al.src.source}, not the embedded default")


def cmd_eval(args) -> int:
    t_start = time.perf_counter()
    _check_numbers(args, "knn", "max_vocab")
    src, tgt, default = args.src, args.tgt, None
    if args.alignment is None:
        src, tgt, default = _resolve_files(args, args.src, args.tgt)
    elif (args.src is None) != (args.tgt is None):
        raise UsageError("give both SRC and TGT, or neither")
    test = args.test_dict if args.test_dict is not None else (default["test"] if default else None)
    if test is None and args.alignment is None:
        raise UsageError("--test-dict F is required with your own embedding files")
    _check_output(args.report, "--report")
    al = _from_saved(args, src, tgt, default)
    if test is None:  # a saved alignment of the embedded default data: its test dictionary
        test = _default_test_of(al)
    _check_input(test, "--test-dict")
    if al is None:
        al = _fit(args, src, tgt, default, required=False)
    if al is None:  # the spaces as given: already aligned (e.g. exported by another tool)
        import torch

        from pyzsl.bli import Alignment, LinearMap, load_embeddings

        s = load_embeddings(src, max_vocab=args.max_vocab, lower=args.lower)
        t = load_embeddings(tgt, max_vocab=args.max_vocab, lower=args.lower)
        if s.dim != t.dim:
            raise UsageError(f"SRC has {s.dim} dims, TGT {t.dim}: not one space; give --mapping or --train-dict")
        _say(args, "no mapping given: evaluating the two spaces as they are (already aligned)")
        al = Alignment(s, t, LinearMap(torch.eye(s.dim)), args.normalize or "unit", knn=args.knn,
                       beta=args.beta, backend=args.backend, device=args.device,
                       info={"method": "identity (pre-aligned)", "lower": args.lower})
    retrievals = list(dict.fromkeys(args.retrieval))
    results = _evaluate_all(args, al, test, retrievals)
    elapsed = time.perf_counter() - t_start
    if args.report is not None:
        with _Staged() as staged:
            _write_json(staged.path(args.report),
                        dict(command="bli eval", src=str(al.src.source), tgt=str(al.tgt.source), test_dict=str(test),
                             settings=_settings(args, al), results=results, seconds=elapsed))
    first = results[retrievals[0]]
    print(f"\n{Path(str(al.src.source)).name} → {Path(str(al.tgt.source)).name}, {test}: "
          f"{first['n_queries']} of {first['n_source_words']} source words covered")
    print(_table(results, retrievals))
    print(f"time: {elapsed:.1f} s")
    return 0


# --------------------------------------------------------------------------- entry point

def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 bad input)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error, already printed by argparse (2)
        return int(e.code or 0) if isinstance(e.code, (int, type(None))) else EXIT_BAD_INPUT
    if args.group is None:
        parser.print_help(sys.stderr)
        return EXIT_BAD_INPUT
    if getattr(args, "command", None) is None:
        parser._bli.print_help(sys.stderr)
        return EXIT_BAD_INPUT
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except UsageError as e:
        print(f"pyzsl: error: {e}", file=sys.stderr)
    except (ValueError, KeyError, FileNotFoundError, IsADirectoryError, PermissionError,
            ImportError, RuntimeError, OSError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"pyzsl: error: {msg}", file=sys.stderr)
    except KeyboardInterrupt:
        print("pyzsl: interrupted", file=sys.stderr)
        return 130
    return EXIT_BAD_INPUT


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
