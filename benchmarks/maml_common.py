"""Shared helpers of the MAML benchmarks: result rows to CSV (atomic append), tables, machine."""
from __future__ import annotations

import csv
import datetime as _dt
import io
import os
import platform
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import locked  # noqa: E402

from pyzsl._atomic import atomic_write  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
FIELDS = ["date", "bench", "method", "setting", "metric", "value", "ci95", "n", "extra",
          "machine", "torch", "threads", "command"]


def machine() -> str:
    return f"{platform.machine()}-{os.cpu_count()}cpu"


def append_rows(name: str, rows: Sequence[dict[str, Any]]) -> Path:
    """Append ``rows`` to ``benchmarks/results/<name>.csv`` (header once), atomically: the
    old content plus the new rows go to a temporary file that replaces the CSV."""
    path = RESULTS / f"{name}.csv"
    with locked(path):  # concurrent runs wait for each other instead of dropping rows
        return _append(path, rows)


def _append(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    old = path.read_text() if path.exists() else ""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=FIELDS, extrasaction="raise")
    if not old:
        w.writeheader()
    now = _dt.datetime.now().isoformat(timespec="seconds")
    cmd = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
    for r in rows:
        full = {"date": now, "machine": machine(), "torch": torch.__version__,
                "threads": torch.get_num_threads(), "command": cmd, "extra": "", "ci95": "",
                "n": ""}
        full.update(r)
        w.writerow(full)
    with atomic_write(path, "w") as f:
        f.write(old + buf.getvalue())
    return path


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n{title}")
    print("| " + " | ".join(c.ljust(w) for c, w in zip(cells[0], widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in cells[1:]:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
    sys.stdout.flush()


def fmt_ci(mean: float, ci: float, digits: int = 3) -> str:
    return f"{mean:.{digits}f} ± {ci:.{digits}f}"
