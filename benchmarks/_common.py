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
import threading
import time
from pathlib import Path
from typing import Callable, Iterable

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def machine(device: str | torch.device | None = None) -> str:
    """The GPU's name (``device`` cuda, or any CUDA device when None), else the CPU model and threads."""
    if (device is None and torch.cuda.is_available()) or (device is not None and torch.device(device).type == "cuda"):
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu} x{torch.get_num_threads()} threads"


def sync(device: str | torch.device = "cpu") -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timeit(fn: Callable[[], object], repeat: int = 5, warmup: int = 1, device="cpu",
           budget_s: float | None = None) -> dict:
    """p20/p50/p80 and min wall time in ms over ``repeat`` runs after ``warmup`` runs.

    CUDA: timed with events around each call. ``budget_s``: stop repeating once this many
    seconds have passed (after at least 3 runs), for slow baselines.
    """
    for _ in range(warmup):
        fn()
    sync(device)
    cuda = torch.device(device).type == "cuda"
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeat and (budget_s is None or len(times) < 3
                                   or time.perf_counter() - start < budget_s):
        if cuda:  # events on the device's current stream (not cuda:0's for a cuda:1 run)
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            stream = torch.cuda.current_stream(device)
            a.record(stream)
            fn()
            b.record(stream)
            b.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    q = statistics.quantiles(times, n=10, method="inclusive") if len(times) > 1 else times * 9
    return {"p20_ms": q[1], "p50_ms": statistics.median(times), "p80_ms": q[7], "min_ms": min(times)}


def rss_mb() -> float:
    """Current resident set size (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """The process's peak resident set size so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def extra_peak_mb(fn: Callable[[], object], device="cpu") -> float:
    """Extra memory of one call of ``fn``: the CUDA allocator's peak, or on the CPU the resident
    set sampled every ~0.5 ms during the call (the process-wide peak would hide a small call)."""
    if torch.device(device).type == "cuda":
        sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        sync(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    base, peak, done = rss_mb(), [0.0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_mb())
            time.sleep(0.0005)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    fn()
    done.set()
    th.join()
    return max(0.0, max(peak[0], rss_mb()) - base)


def write_rows(op: str, rows: Iterable[dict], path: Path | None = None, device: str | torch.device = "cpu") -> Path:
    """Appends rows to ``path`` (default benchmarks/results/<op>.csv), atomically.

    Columns: op, impl, mode, size, machine, version, then the file's other columns, then any
    new ones; a row without a column leaves it empty (new columns rewrite the header, so old and
    new rows stay aligned). The whole file goes to a temporary file that replaces it, under a
    lock, so that benchmarks running side by side do not drop each other's rows. ``machine``:
    that of ``device`` (a CPU run on a GPU host is the CPU's row).
    """
    path = Path(path) if path is not None else RESULTS / f"{op}.csv"
    rows = list(rows)
    if not rows:
        return path
    with locked(path):
        _rewrite_rows(op, rows, path, device)
    return path


@contextlib.contextmanager
def locked(path: Path):
    """An exclusive lock beside ``path`` for a read-modify-replace of it (other benchmarks
    writing the same CSV wait instead of dropping each other's rows)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _rewrite_rows(op: str, rows: list[dict], path: Path, device) -> None:
    import pyzsl
    from pyzsl._atomic import atomic_write

    old: list[dict] = []
    fields = ["op", "impl", "mode", "size", "machine", "version"]
    if path.exists():
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            old = list(reader)
            fields += [c for c in reader.fieldnames or [] if c not in fields]
        for i, r in enumerate(old):
            if None in r:  # DictReader's key for values beyond the header
                raise ValueError(f"{path}: line {i + 2} has more values than the header; fix the file first")
    rows = [{"op": op, "machine": machine(device), "version": pyzsl.__version__, **r} for r in rows]
    for r in rows:
        fields += [c for c in r if c not in fields]
    with atomic_write(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, restval="")
        w.writeheader()
        w.writerows(old + rows)


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
