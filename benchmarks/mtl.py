"""Multi-task learning on shared/data/mtl: aggregators and sharing architectures, 3 seeds.

    flock /tmp/pyzsl-bench.lock python benchmarks/mtl.py              # full run (~45 min, 2 idle cores)
    python benchmarks/mtl.py --quick                                   # a smoke run (~1 min)
    python benchmarks/mtl.py --datasets multidigits --methods equal pcgrad mgda --timing-rounds 0

multidigits (left / right digit, MultiLeNet of Sener & Koltun 2018, Adam 1e-3, batch 256, 24 epochs;
test accuracy at the epoch with the best mean validation accuracy, chosen per method and seed on the
val split, never on test; ``--md-select last`` gives the data README's last-epoch protocol; 24, not
the README's 8 epochs: at 8 (and at 16) the best validation epoch was the last one or next to last
in every run, i.e. training had not converged; every method gains ~1.7 points from 8 to 16 and
~0.6 more from 16 to 24 (equal weighting 93.09 → 94.66 → 95.25 on the left digit);
MGDA with Sener & Koltun's 'l2' gradient normalisation, chosen on validation, see --mgda-normalize;
channels-last convolutions) and wordtasks (POS / supersense from MiniLM
word vectors, MLP 384→512, Adam 1e-3 wd 1e-5, batch 128, test accuracy at the epoch with the best
mean validation accuracy). Methods: single-task models, hard sharing with equal weighting,
PCGrad, MGDA, CAGrad, GradNorm, cross-stitch (equal weighting); optional extras mgda-ub, imtlg,
uncertainty, depths (wordtasks: POS head on layer 1, supersense on layer 2). Every method uses the
same model, steps, batches and seeds (the trainer's sampler is seeded by the seed, not by the
method).

Printed: per-task test accuracy mean ± std over the seeds, the gradient-conflict diagnostics
(share of probes with cos(g_i, g_j) < 0 between the raw task gradients and between the
contributions each method sums, i.e. after PCGrad's projections), and a paired step-time table
(methods take turns on the same batches) beside the plain-PyTorch step (forward, summed loss, one
backward, Adam: also the floor any method pays) and a plain-PyTorch PCGrad port (per-pair loop).
Rows are appended to benchmarks/results/mtl.csv; the accuracy pairs are plotted to
benchmarks/results/mtl_pareto.png (needs matplotlib: ``pip install pyzsl[plot]``).
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import RESULTS, table, write_rows  # noqa: E402

from pyzsl._atomic import atomic_write  # noqa: E402

DATASETS = {
    "multidigits": {"tasks": ("left", "right"), "batch": 256, "lr": 1e-3, "wd": 0.0, "select": "best_val"},
    "wordtasks": {"tasks": ("pos", "supersense"), "batch": 128, "lr": 1e-3, "wd": 1e-5, "select": "best_val"},
}
CORE = ["single", "equal", "pcgrad", "mgda", "cagrad", "gradnorm", "cross-stitch"]
EXTRA = ["mgda-ub", "imtlg", "uncertainty", "depths"]
LABEL = {"single": "single-task", "equal": "equal weighting", "pcgrad": "PCGrad", "mgda": "MGDA",
         "cagrad": "CAGrad", "gradnorm": "GradNorm", "cross-stitch": "cross-stitch (equal)",
         "mgda-ub": "MGDA-UB", "imtlg": "IMTL-G", "uncertainty": "uncertainty", "depths": "heads at depths"}
_CACHE: dict = {}


def _data(dataset: str, split: str, limit: int | None):
    from pyzsl.mtl import load_multidigits, load_wordtasks

    key = (dataset, split, limit)
    if key not in _CACHE:
        fn = load_multidigits if dataset == "multidigits" else load_wordtasks
        _CACHE[key] = fn(split, limit=limit)
    return _CACHE[key]


def _build(dataset: str, method: str, tasks: tuple[str, ...], mgda_normalize: str = "none"):
    from pyzsl.mtl import (make_aggregator, multilenet, multilenet_cross_stitch, word_mlp,
                           word_mlp_cross_stitch, word_mlp_depths)
    from pyzsl.mtl.data import N_CLASSES

    ncls = {t: N_CLASSES[t] for t in tasks}
    md = dataset == "multidigits"
    if method == "cross-stitch":
        model = multilenet_cross_stitch(tasks) if md else word_mlp_cross_stitch(ncls)
    elif method == "depths":
        if md:
            raise ValueError("'depths' is a wordtasks method (POS supervised at a lower layer)")
        model = word_mlp_depths(ncls, {"pos": 1, "supersense": 2})
    else:
        model = multilenet(tasks) if md else word_mlp(ncls)
    name = {"single": "equal", "cross-stitch": "equal", "depths": "equal", "mgda-ub": "mgda"}.get(method, method)
    kwargs = {"normalize": mgda_normalize} if name == "mgda" else {}
    return model, make_aggregator(name, len(tasks), **kwargs)


def run_job(job: dict) -> dict:
    """Train one (dataset, method, seed[, task]) and evaluate it; runs in a worker process."""
    from pyzsl.mtl import MultiTaskTrainer, evaluate

    torch.set_num_threads(job["threads"])
    ds, cfg = job["dataset"], DATASETS[job["dataset"]]
    tasks = tuple(job["tasks"])
    Xtr, ytr = _data(ds, "train", job["limit"])
    Xva, yva = _data(ds, "val", job["eval_limit"])
    Xte, yte = _data(ds, "test", job["eval_limit"])
    ytr, yva, yte = ({t: y[t] for t in tasks} for y in (ytr, yva, yte))
    torch.manual_seed(job["seed"])
    model, agg = _build(ds, job["method"], tasks, job.get("mgda_normalize", "none"))
    if ds == "multidigits":  # channels-last convolutions: ~25 % less CPU time per step, same math
        model = model.to(memory_format=torch.channels_last)
        Xtr, Xva, Xte = (x.contiguous(memory_format=torch.channels_last) for x in (Xtr, Xva, Xte))
    opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"], weight_decay=cfg["wd"])
    trainer = MultiTaskTrainer(model, agg, opt, seed=job["seed"], mgda_ub=job["method"] == "mgda-ub",
                               diagnostics_every=10 if len(tasks) > 1 else 0, log_every=10**9)
    spe = Xtr.shape[0] // cfg["batch"]
    steps = int(round(job["epochs"] * spe))
    best = {"score": -1.0}
    select = job.get("select") or cfg["select"]

    curve = []

    def on_step(tr):  # wordtasks: keep the test accuracy of the best validation epoch
        if job.get("curves") and tr.step_count % spe == 0:
            curve.append(evaluate(model, Xte, yte))
            model.train()
        if select == "best_val" and tr.step_count % spe == 0:
            va = evaluate(model, Xva, yva)
            score = sum(va.values()) / len(va)
            if score > best["score"]:
                best.update(score=score, val=va, test=evaluate(model, Xte, yte), epoch=tr.step_count // spe)

    t0 = time.perf_counter()
    trainer.fit((Xtr, ytr), steps=steps, batch_size=cfg["batch"], progress=False, callback=on_step)
    wall = time.perf_counter() - t0
    if select == "last" or best["score"] < 0:
        best.update(val=evaluate(model, Xva, yva), test=evaluate(model, Xte, yte), epoch=steps / spe)
    st = sorted(trainer.step_times)
    return {**{k: job[k] for k in ("dataset", "method", "seed", "tasks")}, "steps": steps,
            "epochs": job["epochs"], "test": best["test"], "val": best["val"], "best_epoch": best["epoch"],
            "ms_median": 1e3 * st[len(st) // 2], "ms_mean": 1e3 * sum(st) / len(st), "wall_s": wall,
            "diag": trainer.diagnostics() if len(tasks) > 1 else None, "curve": curve}


# --- paired step timing --------------------------------------------------------------------------


class _PCGradLoop:
    """Plain-PyTorch PCGrad as common ports write it: per-task grads, per-pair Python loop."""

    def __init__(self, seed=0):
        self.g = torch.Generator().manual_seed(seed)

    def __call__(self, G):
        T = G.shape[0]
        out = torch.zeros_like(G[0])
        for i in range(T):
            gi = G[i].clone()
            for j in torch.randperm(T, generator=self.g).tolist():
                if j == i:
                    continue
                d = gi @ G[j]
                if d < 0:
                    gi -= d / (G[j] @ G[j]).clamp_min(1e-20) * G[j]
            out += gi
        return out


def paired_timing(dataset: str, methods: list[str], rounds: int, threads: int) -> list[dict]:
    """Median ms per training step, every method taking turns step by step on the same batches."""
    from pyzsl.mtl import MultiTaskTrainer

    torch.set_num_threads(threads)
    cfg = DATASETS[dataset]
    tasks = cfg["tasks"]
    X, ys = _data(dataset, "train", cfg["batch"] * 8)
    cl = dataset == "multidigits"  # channels-last, as in the trainings
    if cl:
        X = X.contiguous(memory_format=torch.channels_last)

    def build(m, tk):
        model, agg = _build(dataset, m, tk)
        return (model.to(memory_format=torch.channels_last) if cl else model), agg
    batches = [(X[i * cfg["batch"]:(i + 1) * cfg["batch"]], {t: ys[t][i * cfg["batch"]:(i + 1) * cfg["batch"]]
                                                             for t in tasks}) for i in range(8)]
    steppers = {}
    torch.manual_seed(0)
    # plain PyTorch: forward, summed loss, one backward, Adam (the floor of any method here)
    base_model, _ = build("equal", tasks)
    base_opt = torch.optim.Adam(base_model.parameters(), lr=cfg["lr"])

    def plain(x, y):
        out = base_model(x)
        sum(F.cross_entropy(out[t], y[t]) for t in tasks).backward()
        base_opt.step()
        base_opt.zero_grad(set_to_none=True)

    steppers["plain torch (sum of losses)"] = plain
    # plain PyTorch PCGrad port: one autograd.grad per task + per-pair loop
    pm, _ = build("equal", tasks)
    popt = torch.optim.Adam(pm.parameters(), lr=cfg["lr"])
    loop = _PCGradLoop()
    shared = pm.shared_parameters()

    def pcgrad_port(x, y):
        out = pm(x)
        Ls = [F.cross_entropy(out[t], y[t]) for t in tasks]
        rows = []
        for i, L in enumerate(Ls):
            gs = torch.autograd.grad(L, shared, retain_graph=True)
            rows.append(torch.cat([g.reshape(-1) for g in gs]))
        sum(Ls).backward(inputs=[p for t in tasks for p in pm.task_parameters(t)])
        u = loop(torch.stack(rows))
        off = 0
        for p in shared:
            p.grad = u[off:off + p.numel()].view_as(p)
            off += p.numel()
        popt.step()
        popt.zero_grad(set_to_none=True)

    steppers["pcgrad (plain-torch port)"] = pcgrad_port
    for m in methods:
        single = m == "single"
        tk = tasks[:1] if single else tasks
        model, agg = build(m, tk)
        opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
        tr = MultiTaskTrainer(model, agg, opt, mgda_ub=m == "mgda-ub", diagnostics_every=0, log_every=10**9)
        steppers[m if not single else f"single ({tk[0]})"] = (
            lambda x, y, tr=tr, tk=tk: tr.step(x, {t: y[t] for t in tk}, tasks=list(tk)))
    times = {k: [] for k in steppers}
    for r in range(rounds + 3):
        x, y = batches[r % len(batches)]
        for k, fn in steppers.items():
            t0 = time.perf_counter()
            fn(x, y)
            if r >= 3:
                times[k].append(time.perf_counter() - t0)
    base = statistics.median(times["plain torch (sum of losses)"])
    return [{"dataset": dataset, "impl": k, "ms": 1e3 * statistics.median(v),
             "p20": 1e3 * statistics.quantiles(v, n=10)[1], "p80": 1e3 * statistics.quantiles(v, n=10)[7],
             "x_plain": statistics.median(v) / base} for k, v in times.items()]


# --- summary -------------------------------------------------------------------------------------


def _ms(vals):
    m = sum(vals) / len(vals)
    s = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return m, s


def summarise(results: list[dict], dataset: str, methods: list[str]) -> list[dict]:
    tasks = DATASETS[dataset]["tasks"]
    rows = []
    for m in methods:
        rs = [r for r in results if r["dataset"] == dataset and r["method"] == m]
        if not rs:
            continue
        row = {"method": LABEL[m], "key": m, "seeds": len({r["seed"] for r in rs})}
        for t in tasks:
            accs = [100 * r["test"][t] for r in rs if t in r["test"]]
            row[t], row[t + "_std"] = _ms(accs)
            row[t + "_seeds"] = accs
        row["ms_step"] = statistics.mean(r["ms_median"] for r in rs)
        diags = [r["diag"] for r in rs if r["diag"]]
        if diags:
            row["cos<0 %"] = 100 * statistics.mean(d["pair_conflict_frac"][0][1] for d in diags)
            row["after %"] = 100 * statistics.mean(d["pair_conflict_after_frac"][0][1] for d in diags)
            row["mean cos"] = statistics.mean(d["pair_mean_cos"][0][1] for d in diags)
            for i, t in enumerate(tasks):
                row[f"upd·g_{t}<0 %"] = 100 * statistics.mean(d["update_conflict_frac"][i] for d in diags)
        rows.append(row)
    return rows


def print_tables(rows: list[dict], dataset: str) -> None:
    tasks = DATASETS[dataset]["tasks"]
    out = []
    for r in rows:
        d = {"method": r["method"]}
        for t in tasks:
            d[f"{t} acc %"] = f"{r[t]:.2f} ± {r[t + '_std']:.2f}"
        d["ms/step (train)"] = f"{r['ms_step']:.1f}"
        out.append(d)
    print(f"\n== {dataset}: test accuracy, mean ± std over seeds ==")
    print(table(out, list(out[0])))
    dg = [r for r in rows if "cos<0 %" in r]
    if dg:
        print(f"\n== {dataset}: gradient conflicts (every 10th step; cos between the two task gradients "
              f"w.r.t. the shared parameters) ==")
        cols = ["method", "cos<0 %", "after %", "mean cos"] + [f"upd·g_{t}<0 %" for t in tasks]
        print(table([{c: (f"{r[c]:.1f}" if isinstance(r[c], float) and c != "mean cos" else
                          (f"{r[c]:.3f}" if c == "mean cos" else r[c])) for c in cols} for r in dg], cols))
        print("cos<0: probes whose raw task gradients conflict; after: the same for the contributions the "
              "update sums (PCGrad: projected gradients; weightings leave cosines unchanged); "
              "upd·g<0: probes where the update opposes that task.")


def plot(summaries: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(summaries), figsize=(6 * len(summaries), 5), squeeze=False)
    for ax, (ds, rows) in zip(axes[0], summaries.items()):
        a, b = DATASETS[ds]["tasks"]
        markers = iter("osD^vPX<>hp" * 2)
        for r in rows:
            marker = "*" if r["key"] == "single" else next(markers)
            ax.errorbar(r[a], r[b], xerr=r[a + "_std"], yerr=r[b + "_std"], fmt=marker, ms=11 if marker == "*" else 6,
                        capsize=3, label=r["method"])
        ax.set_xlabel(f"{a} test accuracy (%)")
        ax.set_ylabel(f"{b} test accuracy (%)")
        ax.set_title(f"{ds}: mean ± std over seeds (up-right is better)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_write(path) as f:
        fig.savefig(f, dpi=120, format=path.suffix[1:])
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    ap.add_argument("--methods", nargs="+", default=CORE, choices=CORE + EXTRA)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--md-epochs", type=float, default=24.0,
                    help="multidigits epochs; test accuracy at the epoch with the best mean validation accuracy "
                         "(per method and seed, chosen on the val split); the data README's figures: 8, last epoch")
    ap.add_argument("--md-select", default="best_val", choices=["best_val", "last"],
                    help="multidigits: evaluate at the best validation epoch (default) or after the last epoch")
    ap.add_argument("--wt-epochs", type=float, default=15.0,
                    help="wordtasks epochs, test accuracy at the best validation epoch (data README: 60)")
    ap.add_argument("--workers", type=int, default=2, help="training processes in parallel")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per training process")
    ap.add_argument("--timing-rounds", type=int, default=30, help="paired step-time rounds (0: skip)")
    ap.add_argument("--limit", type=int, default=None, help="use only the first N training rows")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 seed, tiny budgets")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--json", type=Path, default=None, help="also write all per-seed results here")
    ap.add_argument("--curves", action="store_true", help="also record test accuracy after every epoch")
    ap.add_argument("--mgda-normalize", default="l2", choices=["none", "l2", "loss", "loss+"],
                    help="MGDA's gradient normalisation (Sener & Koltun 2018): weights found on g_i / d_i, "
                         "applied to the raw g_i as in their code. Default 'l2' (d_i = ||g_i||): on multidigits' "
                         "val split (3 seeds) the mean val accuracy was, at 8 epochs, l2 91.20, none 91.20, "
                         "loss+ 91.11 (equal weighting 91.29); at 16 epochs l2 93.15, loss+ 93.05, "
                         "loss 93.02, none 92.85 (equal weighting 93.09)")
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.md_epochs, args.wt_epochs, args.limit, args.timing_rounds = [0], 0.5, 2, 6000, 5
    if not args.no_plot:  # fail now, not after the training
        try:
            import matplotlib  # noqa: F401
        except ImportError as e:
            raise SystemExit(f"the Pareto plot needs matplotlib: pip install pyzsl[plot] (or pass --no-plot): {e}")

    jobs = []
    for ds in args.datasets:
        tasks = DATASETS[ds]["tasks"]
        epochs = args.md_epochs if ds == "multidigits" else args.wt_epochs
        eval_limit = 2000 if args.quick else None
        for m in args.methods:
            if m == "depths" and ds != "wordtasks":
                continue
            for s in args.seeds:
                for tk in ([(t,) for t in tasks] if m == "single" else [tasks]):
                    jobs.append({"dataset": ds, "method": m, "seed": s, "tasks": tk, "epochs": epochs,
                                 "threads": args.threads, "limit": args.limit, "eval_limit": eval_limit,
                                 "curves": args.curves, "mgda_normalize": args.mgda_normalize,
                                 "select": args.md_select if ds == "multidigits" else None})
    # longest first (multidigits, per-task backward, two columns) for a balanced pool
    cost = {"cross-stitch": 3, "single": 1, "equal": 1.2, "uncertainty": 1.2, "depths": 1.2, "mgda-ub": 1.3}
    jobs.sort(key=lambda j: -(10 if j["dataset"] == "multidigits" else 1) * j["epochs"] * cost.get(j["method"], 1.6))
    print(f"{len(jobs)} trainings on {args.workers} worker(s) × {args.threads} thread(s); "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    t0 = time.perf_counter()
    results = []
    ctx = mp.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=args.workers, mp_context=ctx) as pool:
        futs = {pool.submit(run_job, j): j for j in jobs}
        for f in cf.as_completed(futs):
            r = f.result()
            results.append(r)
            acc = "  ".join(f"{t} {100 * a:.2f}" for t, a in r["test"].items())
            print(f"[{time.perf_counter() - t0:6.0f}s] {r['dataset']:<11} {r['method']:<12} seed {r['seed']}  "
                  f"{acc}  (epoch {r['best_epoch']}, {r['ms_median']:.1f} ms/step, {r['wall_s']:.0f} s)", flush=True)
    train_wall = time.perf_counter() - t0

    summaries = {}
    csv_rows = []
    for ds in args.datasets:
        rows = summarise(results, ds, args.methods)
        summaries[ds] = rows
        print_tables(rows, ds)
        for r in results:
            if r["dataset"] != ds:
                continue
            for t, a in r["test"].items():
                csv_rows.append({"impl": _impl(r["method"], args), "mode": f"{ds}/{t}", "size": f"seed{r['seed']}",
                                 "epochs": r["epochs"], "steps": r["steps"], "test_acc": a, "val_acc": r["val"][t],
                                 "ms_step": r["ms_median"], "threads": args.threads})
        for r in rows:
            for t in DATASETS[ds]["tasks"]:
                csv_rows.append({"impl": _impl(r["key"], args), "mode": f"{ds}/{t}", "size": f"mean{r['seeds']}seeds",
                                 "test_acc": r[t] / 100, "test_acc_std": r[t + "_std"] / 100,
                                 "ms_step": r["ms_step"], "threads": args.threads,
                                 "conflict_frac": r.get("cos<0 %", ""), "conflict_after_frac": r.get("after %", "")})
    if "multidigits" in summaries:
        _check_bar(summaries["multidigits"], results)

    timing = []
    if args.timing_rounds > 0:
        for ds in args.datasets:
            ms = [m for m in args.methods if not (m == "depths" and ds != "wordtasks")]
            timing += paired_timing(ds, ms, args.timing_rounds, args.threads)
        print(f"\n== paired step time ({args.timing_rounds} rounds, {args.threads} thread(s); "
              f"load average {os.getloadavg()[0]:.1f}) ==")
        print(table([{"dataset": r["dataset"], "impl": r["impl"], "ms p50": r["ms"], "p20": r["p20"],
                      "p80": r["p80"], "× plain": r["x_plain"]} for r in timing],
                    ["dataset", "impl", "ms p50", "p20", "p80", "× plain"]))
        for r in timing:
            csv_rows.append({"impl": r["impl"], "mode": f"{r['dataset']}/step_time",
                             "size": f"batch{DATASETS[r['dataset']]['batch']}",
                             "ms_step": r["ms"], "ms_p20": r["p20"], "ms_p80": r["p80"], "x_plain": r["x_plain"],
                             "threads": args.threads})
    path = write_rows("mtl", _uniform(csv_rows))
    print(f"\nrows appended to {path}; training wall time {train_wall:.0f} s, total {time.perf_counter() - t0:.0f} s")
    if args.json:
        with atomic_write(args.json, "w") as f:
            json.dump({"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                       "results": results, "timing": timing}, f, indent=1)
    if not args.no_plot:
        RESULTS.mkdir(exist_ok=True)
        out = RESULTS / "mtl_pareto.png"
        plot(summaries, out)
        print(f"Pareto plot: {out}")
    return 0


CSV_COLUMNS = ["impl", "mode", "size", "epochs", "steps", "test_acc", "test_acc_std", "val_acc", "ms_step",
               "ms_p20", "ms_p80", "x_plain", "conflict_frac", "conflict_after_frac", "threads"]


def _impl(method: str, args) -> str:
    """CSV name of a method; MGDA's names carry the gradient normalisation (``mgda[loss+]``)."""
    return f"{method}[{args.mgda_normalize}]" if method in ("mgda", "mgda-ub") else method


def _uniform(rows: list[dict]) -> list[dict]:
    """Every row with the same columns (the CSV header is taken from the first row)."""
    return [{c: r.get(c, "") for c in CSV_COLUMNS} for r in rows]


def _check_bar(rows: list[dict], results: list[dict]) -> None:
    """Issue 4's bar: PCGrad and MGDA each ≥ equal weighting on both tasks (3-seed means, this
    run); also the per-seed differences, paired by seed (same initialisation and batch order)."""
    by = {r["key"]: r for r in rows}
    if "equal" not in by:
        return
    eq = by["equal"]
    per_seed = {(r["method"], r["seed"]): r["test"] for r in results if r["dataset"] == "multidigits"}
    print("\n== bar: PCGrad and MGDA ≥ equal weighting on both tasks (seed means, this run) ==")
    for m in ("pcgrad", "mgda", "mgda-ub", "cagrad", "gradnorm", "imtlg", "uncertainty", "cross-stitch"):
        if m not in by:
            continue
        r = by[m]
        ok = all(r[t] >= eq[t] for t in ("left", "right"))
        paired = []
        for t in ("left", "right"):
            d = [100 * (per_seed[(m, s)][t] - per_seed[("equal", s)][t]) for s in sorted({k[1] for k in per_seed})
                 if (m, s) in per_seed and ("equal", s) in per_seed]
            paired.append(f"{t} " + " ".join(f"{x:+.2f}" for x in d))
        print(f"{LABEL[m]:<22} mean left {r['left'] - eq['left']:+.2f}  right {r['right'] - eq['right']:+.2f}  "
              f"{'PASS' if ok else 'below':<5}  per seed: {'; '.join(paired)}")


if __name__ == "__main__":
    sys.exit(main())
