"""Benchmark of pyzsl.ops.pcgrad (issue 4): our kernel vs plain PyTorch vs the memory floor.

In one run, for each (T, P):
  pyzsl       pyzsl.ops.pcgrad(G, order)                        (allocates its output)
  pyzsl_out   the same into a preallocated buffer (out=)
  torch_loop  the per-pair loop of the common PyTorch ports      (pyzsl.ops._reference.pcgrad)
  torch_gram  the Gram formulation in plain PyTorch: K = G Gᵀ, the T×T solve on the host, wᵀG
  floor       two reads of G and one write of the update at the copy bandwidth measured in
              the same run ((2·T·P + P)·itemsize / bandwidth; copy bandwidth = 2·bytes / time of
              dst.copy_(src) on a buffer far larger than the caches)

Times are p20/p50/p80 (and min) in ms; x_floor = p50 / floor, x_floor_min = min / floor
(the floor itself comes from the best copy, so on a busy machine min/floor compares like with
like); peak memory is the extra memory of one call (CUDA: the
allocator's peak; CPU: peak RSS sampled during the call). Rows are appended to
benchmarks/results/pcgrad.csv. The bench lock (/tmp/pyzsl-bench.lock) is held for the run.

    python benchmarks/pcgrad.py                       # CPU: T 4 8 16 32, P 1e6 1e7
    python benchmarks/pcgrad.py --device cuda         # adds P = 1e8
    python benchmarks/pcgrad.py --T 8 --P 1e7         # the issue's CPU target row
"""
from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
try:  # an installed (or PYTHONPATH) pyzsl first, else this checkout
    import pyzsl  # noqa: F401
except ImportError:
    sys.path.insert(0, str(ROOT))

import pyzsl  # noqa: E402
from pyzsl.ops import _reference, pcgrad  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import bench_lock, extra_peak_mb, machine, timeit, write_rows  # noqa: E402


# ---- setup --------------------------------------------------------------------------------

def make_inputs(T: int, P: int, dtype: torch.dtype, device: torch.device, seed: int = 0):
    """T task gradients with conflicts (every other task leans against task 0) and the orders."""
    g = torch.Generator(device=device).manual_seed(seed)  # drawn where G lives (1e8 on a GPU)
    G = torch.randn(T, P, generator=g, dtype=dtype, device=device)
    G[1::2].sub_(0.5 * G[0])
    gc = torch.Generator().manual_seed(seed)
    order = torch.stack([torch.randperm(T, generator=gc) for _ in range(T)])
    return G, order


def torch_gram(G: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """PCGrad from the Gram matrix in plain PyTorch (G Gᵀ in G's dtype, the solve on the host)."""
    K = (G @ G.T).double().cpu()
    T = K.shape[0]
    c = torch.eye(T, dtype=torch.float64)
    Kl = K.tolist()
    for i in range(T):
        for k in order[i].tolist():
            if k == i or not Kl[k][k] > 0:
                continue
            d = float(c[i] @ K[:, k])
            if d < 0:
                c[i, k] -= d / Kl[k][k]
    w = c.sum(0).to(G.dtype).to(G.device)
    return w @ G


# ---- measurement --------------------------------------------------------------------------

def copy_bandwidth(device: torch.device, nbytes: int, repeat: int) -> float:
    """GB/s of dst.copy_(src): bytes read + written per second, best of `repeat`."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).normal_()
    dst = torch.empty_like(src)
    best = timeit(lambda: dst.copy_(src), repeat=repeat, device=device)["min_ms"]
    return 2 * nbytes / (best / 1e3) / 1e9


# ---- main ---------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (cuda when available)")
    ap.add_argument("--T", type=int, nargs="+", default=[4, 8, 16, 32])
    ap.add_argument("--P", type=float, nargs="+", default=None, help="default 1e6 1e7 (+1e8 on CUDA)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--impls", nargs="+", default=["pyzsl", "pyzsl_out", "torch_gram", "torch_loop"])
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--budget", type=float, default=6.0, help="seconds of repeats per slow row (min 3 runs)")
    ap.add_argument("--csv", type=Path, default=None, help="default benchmarks/results/pcgrad.csv")
    ap.add_argument("--no-csv", action="store_true")
    ap.add_argument("--no-lock", action="store_true", help="do not take /tmp/pyzsl-bench.lock")
    args = ap.parse_args(argv)

    name = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = torch.device("cpu" if name == "auto" else name)
    dtype = getattr(torch, args.dtype)
    Ps = [int(p) for p in (args.P or ([1e6, 1e7, 1e8] if device.type == "cuda" else [1e6, 1e7]))]
    with bench_lock(not args.no_lock):
        return run(args, device, dtype, Ps)


def run(args, device: torch.device, dtype: torch.dtype, Ps: list[int]) -> int:
    item = torch.finfo(dtype).bits // 8
    mach = machine(device)
    # Copy bandwidth on a buffer far beyond the last-level cache (CPU 512 MB, GPU 2 GB).
    bw = copy_bandwidth(device, (2 << 30) if device.type == "cuda" else (512 << 20), 10)
    print(f"pcgrad benchmark on {mach} ({device}), {str(dtype).replace('torch.', '')}, "
          f"pyzsl {pyzsl.__version__}; copy bandwidth {bw:.1f} GB/s")
    hdr = (f"{'T':>3} {'P':>10} | {'pyzsl':>9} {'out=':>9} {'gram-pt':>9} {'loop-pt':>9} {'floor':>8} | "
           f"{'x floor':>7} {'(min)':>6} {'loop/ours':>9} {'gram/ours':>9} | {'MB ours':>7} {'MB loop':>7} | err")
    print(hdr)
    print("-" * len(hdr))
    rows, when = [], dt.datetime.now().isoformat(timespec="seconds")
    for P in Ps:
        for T in args.T:
            G, order = make_inputs(T, P, dtype, device)
            out = torch.empty(P, dtype=dtype, device=device)
            order_dev = order.to(device)
            fns = {
                "pyzsl": lambda: pcgrad(G, order_dev),
                "pyzsl_out": lambda: pcgrad(G, order_dev, out=out),
                "torch_gram": lambda: torch_gram(G, order),
                "torch_loop": lambda: _reference.pcgrad(G, order),
            }
            floor = (2 * T * P + P) * item / (bw * 1e9) * 1e3
            res = {}
            ref = None
            for impl in args.impls:
                fn = fns[impl]
                # memory first: after the timed calls the allocator's cache would hide it
                mem = extra_peak_mb(fn, device)
                t = timeit(fn, repeat=args.repeat, device=device,
                           budget_s=args.budget if impl.startswith("torch") else 30.0)
                res[impl] = (t["p20_ms"], t["p50_ms"], t["p80_ms"], mem, t["min_ms"])
                if impl == "torch_loop":
                    ref = fn()
            err = float("nan")
            if ref is not None:
                ours = pcgrad(G, order_dev)
                err = ((ours.double() - ref.double()).norm() / ref.double().norm()).item()
            loop50 = res.get("torch_loop", (None, float("nan")))[1]
            for impl, (p20, p50, p80, mem, best) in res.items():
                rows.append(dict(impl=impl, mode="forward", size=f"T{T}xP{P}", device=device.type, dtype=str(dtype).replace("torch.", ""), T=T, P=P,
                                 p20_ms=f"{p20:.3f}", p50_ms=f"{p50:.3f}", p80_ms=f"{p80:.3f}",
                                 min_ms=f"{best:.3f}", peak_mb=f"{mem:.1f}", copy_gbs=f"{bw:.2f}",
                                 floor_ms=f"{floor:.3f}", x_floor=f"{p50 / floor:.3f}",
                                 x_floor_min=f"{best / floor:.3f}", x_loop=f"{loop50 / p50:.2f}",
                                 rel_err_vs_loop=f"{err:.2e}" if impl.startswith("pyzsl") else "", when=when))
            f = lambda k, i=1: res[k][i] if k in res else float("nan")  # noqa: E731
            ours = f("pyzsl")
            print(f"{T:>3} {P:>10.0e} | {ours:>9.3f} {f('pyzsl_out'):>9.3f} {f('torch_gram'):>9.3f} "
                  f"{f('torch_loop'):>9.3f} {floor:>8.3f} | {ours / floor:>7.2f} {f('pyzsl', 4) / floor:>6.2f} "
                  f"{f('torch_loop') / ours:>9.1f} "
                  f"{f('torch_gram') / ours:>9.1f} | {f('pyzsl', 3):>7.1f} {f('torch_loop', 3):>7.1f} | {err:.1e}",
                  flush=True)
            del G, out, order_dev
    if not args.no_csv:
        print(f"appended {len(rows)} rows to {write_rows('pcgrad', rows, args.csv, device=device)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
