"""Meta-training throughput: vmapped functional MAML vs a per-task loop with module cloning.

Same model (the sinusoid 1-40-40-1 ReLU network), same tasks (meta-batch 25, K = 10 support
and 10 query points), same Adam outer step, one process, interleaved rounds. Rows:

* ``pyzsl vmap``: :class:`pyzsl.meta.MAML` (``torch.func`` grad inside vmap over the tasks);
* ``pyzsl loop``: the same functional inner loop, one task at a time (``vectorize=False``);
* ``clone loop`` (the baseline): what learn2learn's ``MAML.clone()/adapt()`` does, re-written
  here: per task, a shallow copy of every module whose parameters are ``p.clone()`` (so the
  graph reaches the originals), ``autograd.grad(create_graph=not first_order)``, the
  parameters replaced by ``p - lr * g`` in the copy, query loss, backward;
* ``floor``: one plain forward + backward of the same network over all the meta-batch's points
  (no inner loop): what a meta-step cannot beat.

Tasks per second = 25 / median step time; p20/p50/p80 of the step times; the three meta
gradients are checked equal first. Run with the bench lock:

    flock /tmp/pyzsl-bench.lock python3 benchmarks/maml_speed.py
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from maml_common import append_rows, print_table  # noqa: E402
from pyzsl.meta import MAML, SinusoidTasks  # noqa: E402


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(),
                         nn.Linear(40, 1))


# -- the baseline: learn2learn-style cloning (re-implemented) --------------------------------
def clone_module(module: nn.Module) -> nn.Module:
    """A copy of ``module`` sharing nothing mutable, whose parameters are ``p.clone()`` of the
    originals (differentiable back to them), as learn2learn's ``clone_module`` builds it."""
    clone = module.__new__(type(module))
    clone.__dict__ = module.__dict__.copy()
    clone._parameters = {k: (None if p is None else p.clone())
                         for k, p in module._parameters.items()}
    clone._buffers = module._buffers.copy()
    clone._modules = {k: (None if m is None else clone_module(m))
                      for k, m in module._modules.items()}
    return clone


def update_module(module: nn.Module, updates: dict[str, torch.Tensor]) -> None:
    """Replace each parameter ``name`` of the (cloned) module by ``updates[name]`` in place."""
    for name, new in updates.items():
        *path, leaf = name.split(".")
        m = module
        for part in path:
            m = m._modules[part]
        m._parameters[leaf] = new


def clone_loop_step(model: nn.Module, opt, batch, lr: float, first_order: bool) -> float:
    opt.zero_grad(set_to_none=True)
    total = 0.0
    T = len(batch)
    for t in range(T):
        learner = clone_module(model)
        names = [k for k, _ in learner.named_parameters()]
        params = [p for _, p in learner.named_parameters()]
        loss = F.mse_loss(learner(batch.support_x[t]), batch.support_y[t])
        grads = torch.autograd.grad(loss, params, create_graph=not first_order)
        update_module(learner, {k: p - lr * g for k, p, g in zip(names, params, grads)})
        q = F.mse_loss(learner(batch.query_x[t]), batch.query_y[t]) / T
        q.backward()
        total += float(q.detach())
    opt.step()
    return total


def ours_step(maml: MAML, opt, batch) -> float:
    opt.zero_grad(set_to_none=True)
    loss = maml(batch.support_x, batch.support_y, batch.query_x, batch.query_y)
    loss.backward()
    opt.step()
    return float(loss.detach())


def floor_step(model: nn.Module, opt, batch) -> float:
    opt.zero_grad(set_to_none=True)
    x = torch.cat([batch.support_x, batch.query_x], 1).reshape(-1, 1)
    y = torch.cat([batch.support_y, batch.query_y], 1).reshape(-1, 1)
    loss = F.mse_loss(model(x), y)
    loss.backward()
    opt.step()
    return float(loss.detach())


def check_same_gradients(batch, first_order: bool) -> float:
    m1, m2 = mlp(), mlp()
    maml = MAML(m1, 0.01, 1, first_order, loss_fn=F.mse_loss)
    maml(batch.support_x, batch.support_y, batch.query_x, batch.query_y).backward()
    opt = torch.optim.SGD(m2.parameters(), lr=0.0)
    clone_loop_step(m2, opt, batch, 0.01, first_order)
    a = torch.cat([p.grad.flatten() for p in m1.parameters()])
    b = torch.cat([p.grad.flatten() for p in m2.parameters()])
    return float((a - b).norm() / b.norm())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--meta-batch", type=int, default=25)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds of --steps each")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tasks = SinusoidTasks(10, 10, seed=0)
    batches = [tasks.sample(args.meta_batch) for _ in range(args.steps)]

    rows, csv_rows = [], []
    for fo in (False, True):
        mode = "first order" if fo else "second order"
        err = check_same_gradients(batches[0], fo)
        if err > 1e-5:
            raise AssertionError(f"{mode}: vmap and clone-loop meta-gradients differ (rel {err:.2e})")
        impls = {}
        m_v = mlp()
        maml_v = MAML(m_v, 0.01, 1, fo, loss_fn=F.mse_loss)
        o_v = torch.optim.Adam(maml_v.parameters(), 1e-3)
        impls["pyzsl vmap"] = lambda b, m=maml_v, o=o_v: ours_step(m, o, b)
        m_l = mlp()
        maml_l = MAML(m_l, 0.01, 1, fo, loss_fn=F.mse_loss, vectorize=False)
        o_l = torch.optim.Adam(maml_l.parameters(), 1e-3)
        impls["pyzsl loop"] = lambda b, m=maml_l, o=o_l: ours_step(m, o, b)
        m_c = mlp()
        o_c = torch.optim.Adam(m_c.parameters(), 1e-3)
        impls["clone loop (baseline)"] = lambda b, m=m_c, o=o_c: clone_loop_step(m, o, b, 0.01, fo)
        m_f = mlp()
        o_f = torch.optim.Adam(m_f.parameters(), 1e-3)
        impls["floor (no inner loop)"] = lambda b, m=m_f, o=o_f: floor_step(m, o, b)
        times: dict[str, list[float]] = {k: [] for k in impls}
        for name, f in impls.items():  # warm-up
            for b in batches[:3]:
                f(b)
        for _ in range(args.rounds):  # interleaved, so that load changes hit every row alike
            for name, f in impls.items():
                for b in batches:
                    t0 = time.perf_counter()
                    f(b)
                    times[name].append(time.perf_counter() - t0)
        base = np.median(times["clone loop (baseline)"])
        for name, ts in times.items():
            p20, p50, p80 = np.percentile(ts, [20, 50, 80]) * 1e3
            tps = args.meta_batch / (p50 / 1e3)
            rows.append([mode, name, f"{p20:.2f}", f"{p50:.2f}", f"{p80:.2f}", f"{tps:.0f}",
                         f"{base / (p50 / 1e3):.2f}x"])
            csv_rows.append({"bench": "speed", "method": name,
                             "setting": f"{mode},meta_batch={args.meta_batch},K=10",
                             "metric": "tasks_per_s", "value": f"{tps:.1f}",
                             "n": len(ts), "extra": f"p20_ms={p20:.3f},p50_ms={p50:.3f},"
                                                    f"p80_ms={p80:.3f},grad_rel_err={err:.1e}"})
        print(f"{mode}: vmap vs clone-loop meta-gradient rel. error {err:.1e}")
    print_table(f"Meta-training step, meta-batch {args.meta_batch}, 1-40-40-1 MLP, K=10, "
                f"CPU, {args.threads} thread(s); speed-up vs the clone loop",
                ["mode", "impl", "p20 ms", "p50 ms", "p80 ms", "tasks/s", "vs clone loop"], rows)
    print(f"rows -> {append_rows('maml_speed', csv_rows)}")


if __name__ == "__main__":
    main()
