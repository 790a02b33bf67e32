"""Fused bilinear hinge loss, forward + backward: ours vs plain PyTorch vs the GEMM floor.

    python benchmarks/bilinear_hinge.py            # CPU sizes of issue 2
    python benchmarks/bilinear_hinge.py --device cuda [--tf32]

Each (impl, size) runs in its own process so that its peak memory (resident set on the
CPU, max_memory_allocated on CUDA, both over what the inputs already hold) is its own.
The floor is the six GEMMs any formulation needs (U = V Mᵀ, S = U Tᵀ, dU = G T, dT = Gᵀ U,
dV = dU M, dM = dUᵀ V), timed on the same inputs in the same run; on the CPU with torch's BLAS
(the one the fused loss uses) and with numpy's, and ratios are taken to the faster floor.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import peak_rss_mb, rss_mb, table, timeit, write_rows  # noqa: E402

CPU_SIZES = [(1024, 2048, 300, 21841), (4096, 384, 300, 100000)]
GPU_SIZES = [(8192, 300, 300, 200000)]


def setup(B, dv, dt, C, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    V = torch.randn(B, dv, generator=g).to(device).requires_grad_()
    M = (torch.randn(dt, dv, generator=g) / dv ** 0.5).to(device).requires_grad_()
    T = (torch.randn(C, dt, generator=g) / dt ** 0.5).to(device).requires_grad_()
    y = torch.randint(0, C, (B,), generator=g).to(device)
    return V, M, T, y


def make_step(impl, V, M, T, y):
    from pyzsl.ops import _reference, bilinear_hinge_loss

    def fused():
        loss = bilinear_hinge_loss(V, M, T, y, 0.1, backend="pyzsl")
        loss.backward()

    def plain():
        loss = _reference.bilinear_hinge_loss(V, M, T, y, 0.1)
        loss.backward()

    def gemms(mm, V, M, T):
        U = mm(V, M.T)
        S = mm(U, T.T)
        dU = mm(S, T)
        dT = mm(S.T, U)
        mm(dU, M)
        mm(dU.T, V)
        del S, dT

    def floor():
        with torch.no_grad():
            gemms(torch.matmul, V, M, T)

    def floor_numpy():
        import numpy as np

        with np.errstate(all="ignore"):
            gemms(np.matmul, *(x.detach().numpy() for x in (V, M, T)))

    if impl == "torch.compile":
        compiled = torch.compile(_reference.bilinear_hinge_loss)
        return lambda: compiled(V, M, T, y, 0.1).backward()
    return {"pyzsl": fused, "torch": plain, "gemm floor": floor, "gemm floor numpy": floor_numpy}[impl]


def child(impl, size, device, tf32, repeat):
    if tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
    V, M, T, y = setup(*size, device)
    step = make_step(impl, V, M, T, y)
    cuda = torch.device(device).type == "cuda"  # "cuda:0" too
    if cuda:
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        base = rss_mb()
    t = timeit(step, repeat=repeat, warmup=1, device=device)
    peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20 if cuda else peak_rss_mb() - base
    print(json.dumps({**t, "peak_mb": peak}))


def run(impl, size, device, tf32, repeat):
    cmd = [sys.executable, __file__, "--child", impl, "--size", ",".join(map(str, size)),
           "--device", device, "--repeat", str(repeat)] + (["--tf32"] if tf32 else [])
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{impl} {size} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--tf32", action="store_true", help="allow TF32 GEMMs (CUDA)")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--size", help="B,dv,dt,C (default: the issue's sizes)")
    p.add_argument("--impls", default=None, help="comma list (default: pyzsl,torch,gemm floor[,torch.compile on CUDA])")
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        return child(a.child, tuple(map(int, a.size.split(","))), a.device, a.tf32, a.repeat)
    sizes = [tuple(map(int, a.size.split(",")))] if a.size else (GPU_SIZES if a.device == "cuda" else CPU_SIZES)
    impls = a.impls.split(",") if a.impls else (
        ["pyzsl", "torch", "torch.compile", "gemm floor"] if a.device == "cuda"
        else ["pyzsl", "torch", "gemm floor", "gemm floor numpy"])
    rows = []
    mode = "fwd+bwd" + (" tf32" if a.tf32 else "")
    for size in sizes:
        res = {impl: run(impl, size, a.device, a.tf32, a.repeat if size[3] < 50000 else max(2, a.repeat // 2))
               for impl in impls}
        # ratios to the impls that ran (nan where --impls left the baseline or the floor out)
        floor = min((r["p50_ms"] for k, r in res.items() if k.startswith("gemm floor")), default=float("nan"))
        plain = res.get("torch", {"p50_ms": float("nan"), "peak_mb": float("nan")})
        for impl, r in res.items():
            rows.append({"impl": impl, "mode": mode, "size": "B={} dv={} dt={} C={}".format(*size), **r,
                         "vs_torch": plain["p50_ms"] / r["p50_ms"],
                         "vs_floor": r["p50_ms"] / floor,
                         "mem_vs_torch": r["peak_mb"] / max(plain["peak_mb"], 1e-9)})
    print(table(rows, ["size", "impl", "mode", "p50_ms", "p20_ms", "p80_ms", "peak_mb", "vs_torch", "vs_floor",
                       "mem_vs_torch"]))
    print("vs_torch: plain PyTorch time / this time (>1 is faster); vs_floor: this time / the GEMMs alone "
          "(the faster BLAS); "
          "mem_vs_torch: peak extra memory / plain PyTorch's")
    print("csv:", write_rows("bilinear_hinge", rows, device=a.device))


if __name__ == "__main__":
    main()
