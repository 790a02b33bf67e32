"""Sinusoid regression, the MAML paper's setup (Finn et al., 2017, Sec. 5.1).

Tasks y = A sin(x - phi), A ~ U[0.1, 5], phi ~ U[0, pi], x ~ U[-5, 5]; a 1-40-40-1 ReLU
network; K support points and K query points per meta-training task; one inner SGD step of
0.01; meta-batch 25; Adam on the outer loop (cosine-decayed learning rate). Test: 600 new
tasks, K support points, MSE on 100 query points after 1 and 10 inner steps of 0.01, mean over
tasks with its 95 % CI, beside the published MAML figures (Li et al., 2017, Meta-SGD, Table 1:
1.13 ± 0.18 / 0.77 ± 0.11 / 0.48 ± 0.08 for K = 5 / 10 / 20, one step) and a baseline
pretrained on all tasks jointly (plain regression, same network, same number of tasks seen)
fine-tuned with the same steps. Plots the adapted curves (K = 10) to
benchmarks/results/maml_sinusoid.png. Run with the bench lock:

    flock /tmp/pyzsl-bench.lock python3 benchmarks/maml_sinusoid.py
"""
from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from maml_common import RESULTS, append_rows, fmt_ci, print_table  # noqa: E402
from pyzsl._atomic import atomic_write  # noqa: E402
from pyzsl.meta import MAML, MetaTrainer, SinusoidTasks, evaluate_tasks, mean_ci95  # noqa: E402

PUBLISHED = {5: (1.13, 0.18), 10: (0.77, 0.11), 20: (0.48, 0.08)}  # Meta-SGD Table 1, MAML row


def mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(),
                         nn.Linear(40, 1))


def cosine(opt: torch.optim.Optimizer, iters: int, floor: float = 0.02):
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(i, iters) / iters)))


def train_maml(k: int, iters: int, lr: float, seed: int, first_order: bool) -> MAML:
    maml = MAML(mlp(seed), 0.01, 1, first_order=first_order, loss_fn=F.mse_loss)
    opt = torch.optim.Adam(maml.parameters(), lr=lr)
    trainer = MetaTrainer(maml, SinusoidTasks(k, k, seed=seed), meta_batch_size=25,
                          optimizer=opt, scheduler=cosine(opt, iters),
                          val_tasks=SinusoidTasks(k, 100, seed=10_000 + k), n_val_tasks=200,
                          val_every=max(1, iters // 10), log_every=max(1, iters // 10))
    trainer.fit(iters)
    return maml


def train_pretrained(k: int, iters: int, lr: float, seed: int) -> nn.Module:
    """The paper's "pretrained" baseline: one network regressed on all tasks jointly."""
    net = mlp(seed)
    tasks = SinusoidTasks(k, k, seed=seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = cosine(opt, iters)
    for _ in range(iters):
        b = tasks.sample(25)
        x = torch.cat([b.support_x, b.query_x], 1).reshape(-1, 1)
        y = torch.cat([b.support_y, b.query_y], 1).reshape(-1, 1)
        opt.zero_grad(set_to_none=True)
        F.mse_loss(net(x), y).backward()
        opt.step()
        sched.step()
    return net


def plot(models: dict[str, MAML], tasks, path: Path) -> None:
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError("the sinusoid plot needs matplotlib: pip install pyzsl[plot] "
                          "(or pass --no-plot)") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = torch.linspace(-5, 5, 200)[None, :, None].expand(len(tasks), -1, -1)
    fig, axes = plt.subplots(len(models), len(tasks), figsize=(4.2 * len(tasks),
                                                               3.2 * len(models)), squeeze=False)
    for r, (name, m) in enumerate(models.items()):
        for c in range(len(tasks)):
            ax = axes[r][c]
            a, ph = tasks.info["amplitude"][c], tasks.info["phase"][c]
            ax.plot(xs[0, :, 0], a * torch.sin(xs[0, :, 0] - ph), "r", lw=2, label="ground truth")
            for steps, style in ((0, ":"), (1, "-"), (10, "--")):
                p = m.adapt(tasks.support_x, tasks.support_y, inner_steps=steps)
                out = m.predict(p, xs)
                ax.plot(xs[0, :, 0], out[c, :, 0], style, color="C0" if steps else "gray",
                        label=f"{steps} step{'s' if steps != 1 else ''}")
            ax.plot(tasks.support_x[c, :, 0], tasks.support_y[c, :, 0], "k^", label="support")
            ax.set_title(f"{name}, K={tasks.support_x.shape[1]}, task {c}")
            ax.set_ylim(-5.5, 5.5)
    axes[0][0].legend(loc="lower left", fontsize=7)
    fig.tight_layout()
    with atomic_write(path) as f:
        fig.savefig(f, dpi=110, format="png")
    plt.close(fig)
    print(f"plot -> {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shots", type=int, nargs="+", default=[5, 10, 20])
    ap.add_argument("--iters", type=int, default=15000, help="outer steps per K")
    ap.add_argument("--lr", type=float, default=3e-3, help="peak outer Adam learning rate")
    ap.add_argument("--test-tasks", type=int, default=600)
    ap.add_argument("--test-query", type=int, default=100)
    ap.add_argument("--first-order", action="store_true", help="also train FO-MAML")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-plot", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)

    rows, csv_rows = [], []
    plot_models: dict[str, MAML] = {}
    for k in args.shots:
        test = SinusoidTasks(k, args.test_query, seed=20_000 + k).sample(args.test_tasks)
        variants = [("MAML", False)] + ([("FO-MAML", True)] if args.first_order else [])
        models: dict[str, MAML] = {}
        for name, fo in variants:
            t0 = time.perf_counter()
            models[name] = train_maml(k, args.iters, args.lr, args.seed, fo)
            models[name].train_seconds = time.perf_counter() - t0  # type: ignore[attr-defined]
        t0 = time.perf_counter()
        pre = MAML(train_pretrained(k, args.iters, args.lr, args.seed), 0.01, 1,
                   loss_fn=F.mse_loss)
        pre.train_seconds = time.perf_counter() - t0  # type: ignore[attr-defined]
        models["pretrained"] = pre
        for name, m in models.items():
            res = {s: mean_ci95(evaluate_tasks(m, test, inner_steps=s)) for s in (1, 10)}
            pub = fmt_ci(*PUBLISHED[k], 2) if name == "MAML" and k in PUBLISHED else ""
            rows.append([k, name, fmt_ci(*res[1]), fmt_ci(*res[10]), pub,
                         f"{m.train_seconds:.0f}"])  # type: ignore[attr-defined]
            for s, (mean, ci) in res.items():
                csv_rows.append({"bench": "sinusoid", "method": name,
                                 "setting": f"K={k},steps={s}", "metric": "mse", "value": mean,
                                 "ci95": ci, "n": args.test_tasks,
                                 "extra": f"iters={args.iters},lr={args.lr},"
                                          f"train_s={m.train_seconds:.0f}"})  # type: ignore
        if k == 10:
            plot_models = {"MAML": models["MAML"], "pretrained": models["pretrained"]}
            plot_tasks = SinusoidTasks(10, 0, seed=7).sample(3)
    print_table(f"Sinusoid regression, MSE on {args.test_tasks} test tasks "
                f"({args.test_query} query points each), mean ± 95 % CI; {args.iters} outer steps",
                ["K", "method", "1 step", "10 steps", "published MAML (1 step)", "train s"], rows)
    path = append_rows("maml_sinusoid", csv_rows)
    print(f"rows -> {path}")
    if plot_models and not args.no_plot:
        plot(plot_models, plot_tasks, RESULTS / "maml_sinusoid.png")


if __name__ == "__main__":
    main()
