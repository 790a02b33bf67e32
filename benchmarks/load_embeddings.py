#!/usr/bin/env python3
"""Loader speed: MB/s of .vec text parsed by ``pyzsl.bli.load_embeddings`` on one core.

Writes a random N × d ``.vec`` (default 200,000 × 300, values printed with 5 significant
digits like MUSE's wiki vectors: about 540 MB) to a temporary folder, then times, pinned to
one CPU core, in the same run:

- ``pyzsl``: ``load_embeddings(path)`` (mmap + the C++ parser + words + dedup check);
- ``baseline``: the plain Python/NumPy loop of MUSE/VecMap-style loaders (``line.split()``
  then ``np.array(..., dtype=float32)`` per line), on the first ``--baseline-lines`` lines
  (it is ~20x slower; its MB/s is extrapolated from that prefix);
- ``floor``: reading the file's bytes once (``f.read()`` from the page cache), the least
  any parser must do.

The bar (issue 3): ``pyzsl`` at least 150 MB/s. Rows go to benchmarks/results/load_embeddings.csv.
Holds /tmp/pyzsl-bench.lock while timing (pass --no-lock when already run under flock(1)).

    python3 benchmarks/load_embeddings.py [--n 200000] [--d 300] [--repeat 3]
"""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import bench_lock, extra_peak_mb, table, timeit, write_rows  # noqa: E402

from pyzsl.bli.io import Embeddings, load_embeddings, save_embeddings  # noqa: E402

BAR_MB_S = 150.0


@contextlib.contextmanager
def one_core():
    """Pin this process to one CPU (the parser is single-threaded; this makes it the bar's setting)."""
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(old)})
    try:
        yield min(old)
    finally:
        os.sched_setaffinity(0, old)


def write_vec(path: Path, n: int, d: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    X = (rng.standard_normal((n, d), dtype=np.float32) * 0.1).astype(np.float32)
    words = [f"w{i}" for i in range(n)]
    save_embeddings(path, Embeddings(words, X), precision=5)


def python_loop(path: Path, lines: int) -> tuple[int, int]:
    """The obvious loader, on the first ``lines`` data lines; returns (rows, bytes read)."""
    words, rows, nbytes = [], [], 0
    with open(path, "rb") as f:
        nbytes += len(f.readline())
        for _ in range(lines):
            raw = f.readline()
            if not raw:
                break
            nbytes += len(raw)
            parts = raw.decode("utf-8").rstrip("\n").split(" ")
            words.append(parts[0])
            rows.append(np.array(parts[1:], dtype=np.float32))
    np.stack(rows)
    return len(words), nbytes


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--d", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--baseline-lines", type=int, default=10_000)
    ap.add_argument("--no-lock", action="store_true", help="already running under flock /tmp/pyzsl-bench.lock")
    ap.add_argument("--tmpdir", default=None, help="where to write the temporary .vec (default: system temp)")
    args = ap.parse_args(argv)
    # a timeout's SIGTERM must still remove the ~0.5 GB temporary file
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    with tempfile.TemporaryDirectory(prefix="pyzsl-load-", dir=args.tmpdir) as tmp:
        path = Path(tmp) / "bench.vec"
        t0 = time.perf_counter()
        write_vec(path, args.n, args.d)
        size = path.stat().st_size
        mb = size / 1e6
        print(f"wrote {path.name}: {args.n} × {args.d}, {mb:.0f} MB in {time.perf_counter() - t0:.1f} s",
              file=sys.stderr)
        load_embeddings(path, max_vocab=10)  # warm the extension import and the page cache

        rows = []
        with bench_lock(not args.no_lock), one_core() as cpu:
            def read_all():
                with open(path, "rb") as f:
                    f.read()

            floor = timeit(read_all, repeat=args.repeat, warmup=1)
            emb = None

            def ours():
                nonlocal emb
                emb = load_embeddings(path)

            # memory of one load (the result included), sampled during the call; the process's
            # peak would also count torch, the file written above and the baseline
            load_mb = extra_peak_mb(ours)
            c0 = time.process_time()
            t_ours = timeit(ours, repeat=args.repeat, warmup=0)
            # CPU seconds per load: what the parser costs when it has the core to itself
            # (on a shared machine the wall time also counts waiting for the core)
            cpu_s = (time.process_time() - c0) / args.repeat
            t0 = time.perf_counter()
            n_base, base_bytes = python_loop(path, args.baseline_lines)
            t_base_s = time.perf_counter() - t0
        assert emb is not None and len(emb) == args.n and emb.dim == args.d

        base_mb_s = base_bytes / 1e6 / t_base_s
        for impl, ms, note in (("pyzsl", t_ours["p50_ms"], "load_embeddings"),
                               ("baseline", base_bytes and (size / base_bytes) * t_base_s * 1e3,
                                f"python loop, extrapolated from {n_base} lines"),
                               ("floor", floor["p50_ms"], "read the bytes once")):
            rows.append(dict(impl=impl, mode="load", size=f"{args.n}x{args.d}", p50_ms=ms,
                             mb_per_s=mb / (ms / 1e3), ratio_to_floor=ms / floor["p50_ms"],
                             note=note, core=cpu, file_mb=round(mb, 1)))
        ours_row = rows[0]
        ours_row.update(p20_ms=t_ours["p20_ms"], p80_ms=t_ours["p80_ms"], load_extra_mb=load_mb,
                        cpu_ms=cpu_s * 1e3, cpu_mb_per_s=mb / cpu_s)
        print(table(rows, ["impl", "size", "p50_ms", "mb_per_s", "cpu_mb_per_s", "ratio_to_floor", "note"]))
        speedup = ours_row["mb_per_s"] / base_mb_s
        ok = ours_row["mb_per_s"] >= BAR_MB_S
        print(f"\npyzsl: {ours_row['mb_per_s']:.0f} MB/s of text on one core, wall clock "
              f"({ours_row['cpu_mb_per_s']:.0f} MB/s per CPU second; bar {BAR_MB_S:.0f} MB/s: "
              f"{'met' if ok else 'NOT met'}); {speedup:.0f}x the Python loop; "
              f"{ours_row['ratio_to_floor']:.1f}x the time of reading the bytes")
        print(f"csv: {write_rows('load_embeddings', rows)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
