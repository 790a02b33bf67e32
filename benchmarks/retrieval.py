"""Retrieval: full CSLS and top-10 search over N random unit vectors (d = 300).

    python benchmarks/retrieval.py                 # N = 20k, 50k on the CPU
    python benchmarks/retrieval.py --device cuda   # N = 20k, 200k [--tf32]

Ours (the fused similarity top-k, ``backend="pyzsl"``; CSLS in two GEMM passes, the
final one feeding both the r_Q top-10 and the biased top-1) beside plain PyTorch (chunked
matmul + topk, ``backend="torch"``) and faiss-cpu's exact IndexFlatIP (CPU only), with
the floor: the bare matrix products the computation needs (three N×N passes for CSLS as
plain PyTorch and faiss do it, one for top-10), each timed in the same run as chunked GEMMs
into a reused buffer with torch's and with numpy's BLAS, the faster one counting.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import extra_peak_mb, table, timeit, write_rows  # noqa: E402


def unit_vectors(n, d, device, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    return (x / x.norm(dim=1, keepdim=True)).to(device)


def bare_pass(X, Z, blas="torch", rows=4096, cols=16384):
    """One N×N matrix product in tiles, results discarded: the floor of one pass.
    ``blas``: torch.mm (MKL in torch's wheels) or numpy.matmul (OpenBLAS in numpy's)."""
    buf = torch.empty(rows * min(cols, Z.shape[0]), dtype=X.dtype, device=X.device)
    for r0 in range(0, X.shape[0], rows):
        Xb = X[r0:r0 + rows]
        for c0 in range(0, Z.shape[0], cols):
            Zc = Z[c0:c0 + cols]
            out = buf[: Xb.shape[0] * Zc.shape[0]].view(Xb.shape[0], Zc.shape[0])
            if blas == "numpy":
                np.matmul(Xb.numpy(), Zc.numpy().T, out=out.numpy())
            else:
                torch.mm(Xb, Zc.T, out=out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--sizes", default=None, help="comma list of N (default 20000,50000 CPU; 20000,200000 CUDA)")
    p.add_argument("--dim", type=int, default=300)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--tf32", action="store_true")
    p.add_argument("--backends", default=None, help="default: pyzsl,torch[,faiss on the CPU]")
    p.add_argument("--modes", default="csls,top10")
    p.add_argument("--no-floor", action="store_true", help="skip the floor (e.g. a memory check at N = 200k)")
    a = p.parse_args(argv)
    if a.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
    from pyzsl.bli.retrieval import csls, topk
    from pyzsl.ops._tensor import cpu_gemm

    cuda = a.device.startswith("cuda")
    sizes = [int(s) for s in (a.sizes or ("20000,200000" if cuda else "20000,50000")).split(",")]
    backends = a.backends.split(",") if a.backends else (["pyzsl", "torch"] if cuda else ["pyzsl", "torch", "faiss"])
    mode_sfx = " tf32" if a.tf32 else ""
    rows = []
    for N in sizes:
        X, Z = unit_vectors(N, a.dim, a.device, 0), unit_vectors(N, a.dim, a.device, 1)
        rep = a.repeat if N <= 50000 or cuda else 1  # one sample only for CPU runs at 200k (minutes each)
        # the floor is the faster BLAS of the two on this machine, whichever ours uses
        floors = {blas: timeit(lambda: bare_pass(X, Z, blas), repeat=rep, warmup=1, device=a.device)["p50_ms"]
                  for blas in ([] if a.no_floor else ["torch"] if cuda else ["torch", "numpy"])}
        floor = min(floors.values(), default=float("nan"))
        print(f"N={N}: one bare GEMM pass: " + ", ".join(f"{b} {t:.0f} ms" for b, t in floors.items())
              + (f"; ours computes its tiles with {cpu_gemm()}" if not cuda else ""), flush=True)
        res = {}
        for be in backends:
            for mode, fn, passes in [
                ("csls", lambda: csls(X, Z, 1, knn=10, normalize=False, backend=be), 3),
                ("top10", lambda: topk(X, Z, 10, backend=be), 1),
            ]:
                if mode not in a.modes.split(","):
                    continue
                # the first call gives the extra memory (CUDA: the allocator's peak; CPU: RSS
                # sampled during the call) and is every implementation's warm-up, the floor's too
                mem = extra_peak_mb(fn, a.device)
                t = timeit(fn, repeat=rep, warmup=1 if N <= 20000 else 0, device=a.device)
                res[(be, mode)] = t
                rows.append({"impl": be, "mode": mode + mode_sfx, "size": f"N={N} d={a.dim}", **t,
                             "floor_ms": passes * floor, "vs_floor": t["p50_ms"] / (passes * floor),
                             "peak_mb": mem})
        for r in rows:
            if r["size"] == f"N={N} d={a.dim}":
                m = r["mode"].split()[0]
                r["vs_torch"] = res[("torch", m)]["p50_ms"] / r["p50_ms"] if ("torch", m) in res else float("nan")
                r["vs_faiss"] = res[("faiss", m)]["p50_ms"] / r["p50_ms"] if ("faiss", m) in res else float("nan")
        # agreement: the kernel's CSLS picks equal the reference's (its r_T pass costs N×N twice)
        if N <= 50000 and "torch" in backends:
            _, i1 = csls(X[:2000], Z, 1, knn=10, src=X, normalize=False, backend="pyzsl")
            _, i2 = csls(X[:2000], Z, 1, knn=10, src=X, normalize=False, backend="torch")
            print(f"N={N}: CSLS top-1 agreement pyzsl vs torch on 2000 queries: {(i1 == i2).float().mean().item():.4f}")
        print(table([r for r in rows if r["size"] == f"N={N} d={a.dim}"],
                    ["size", "mode", "impl", "p50_ms", "floor_ms", "vs_floor", "vs_torch", "vs_faiss",
                     "peak_mb"]), flush=True)
    print(table(rows, ["size", "mode", "impl", "p50_ms", "p20_ms", "p80_ms", "floor_ms", "vs_floor", "vs_torch",
                       "vs_faiss"]))
    print("vs_floor: time / the bare matrix products (1.0 = the GEMMs alone); vs_torch, vs_faiss: their time / this "
          "time (>1: this is faster)")
    print("csv:", write_rows("retrieval", rows, device=a.device))


if __name__ == "__main__":
    main()
