"""Shared benchmark plumbing: timing percentiles, peak memory, tables, CSV rows.

Every benchmark measures ours, the plain-PyTorch baseline and the floor in the same
run and prints ratios; rows go to ``benchmarks/results/<op>.csv`` with op, impl, mode,
size, machine and version, so that plots and the README table come from the CSV.
"""
from __future__ import annotations

import contextlib
import csv
import fcntl
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Iterable

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"


def sync(device: str | torch.device = "cpu") -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timeit(fn: Callable[[], object], repeat: int = 5, warmup: int = 1, device="cpu") -> dict:
    """p20/p50/p80 wall time in ms over ``repeat`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    q = statistics.quantiles(times, n=10, method="inclusive") if len(times) > 1 else times * 9
    return {"p20_ms": q[1], "p50_ms": statistics.median(times), "p80_ms": q[7]}


def rss_mb() -> float:
    """Current resident set size (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_rows(op: str, rows: Iterable[dict]) -> Path:
    """Appends rows to benchmarks/results/<op>.csv (header written once)."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{op}.csv"
    rows = list(rows)
    if not rows:
        return path
    import pyzsl

    fields = ["op", "impl", "mode", "size", "machine", "version"] + [
        k for k in rows[0] if k not in ("op", "impl", "mode", "size")]
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        if new:
            w.writeheader()
        for r in rows:
            w.writerow({"op": op, "machine": machine(), "version": pyzsl.__version__, **r})
    return path


def table(rows: list[dict], cols: list[str]) -> str:
    """A plain-text table of ``cols`` (floats to 3 significant digits)."""
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)

    cells = [[fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(cols)]
    line = lambda xs: "  ".join(x.rjust(w) for x, w in zip(xs, widths))
    return "\n".join([line(cols), line(["-" * w for w in widths])] + [line(x) for x in cells])


@contextlib.contextmanager
def bench_lock(enabled: bool = True, path: str = "/tmp/pyzsl-bench.lock"):
    """Holds the machine's benchmark lock (the one ``flock /tmp/pyzsl-bench.lock`` takes) while
    timing; says so when it has to wait, then queues like flock(1)."""
    if not enabled:
        yield
        return
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for {path} (another benchmark is timing) …", file=sys.stderr, flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
