"""Word categories (shared/data/fewshot/wordcats): 5-way 1-shot and 5-shot accuracy on the
meta-test categories, 600 episodes of 15 queries per class, mean ± 95 % CI.

Methods, all on the same MiniLM word vectors and one network shape, a residual MLP
``x + W2 relu(W1 x)`` (384-256-384, W2 zero-initialised, so it starts as the identity) with a
5-way linear head initialised at zero:

* nearest class mean / nearest neighbour (cosine), no training (the README's baseline);
* fine-tuning (Chen et al., 2019, "Baseline"): the network pretrained with a 128-way head on
  the meta-train categories, then per episode a fresh zero head trained by SGD on the support
  set (head only or all layers, learning rate and steps chosen on meta-val episodes);
* MAML and FO-MAML (Finn et al., 2017): meta-trained on meta-train episodes (same K), all
  layers adapted with 5 inner SGD steps, per-layer learned step sizes (Li et al., 2017), the
  head's zero initialisation kept (not meta-learned), the checkpoint (the initial one included)
  chosen on meta-val episodes;
* the few-shot zero-shot bilinear head (DeViSE score t_cᵀ M x with the category-name vectors
  t_c, M meta-learned, FO-MAML on the fused hinge loss; 0-shot = no inner step).

Zero-initialising the head follows Ye & Chao (2022, "How to train your MAML to excel in
few-shot classification"): the episode's label order is arbitrary, so a learned head init can
only add noise. Run with the bench lock:

    flock /tmp/pyzsl-bench.lock python3 benchmarks/maml_wordcats.py
"""
from __future__ import annotations

import argparse
import itertools
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from maml_common import append_rows, fmt_ci, print_table  # noqa: E402
from pyzsl.meta import MAML, EpisodeSampler, MetaTrainer, evaluate_tasks, mean_ci95  # noqa: E402
from pyzsl.meta.baselines import (finetune_predict, nearest_class_mean,  # noqa: E402
                                  nearest_neighbour, pretrain_classifier)
from pyzsl.meta.data import load_wordcats  # noqa: E402
from pyzsl.meta.heads import BilinearMetricHead, bilinear_accuracy, bilinear_maml  # noqa: E402

README_NCM = {1: (0.4443, 0.0083), 5: (0.6269, 0.0074)}  # fewshot/README.md, numpy sampler


class Body(nn.Module):
    """``x + W2 relu(W1 x + b1) + b2``, W2 and b2 zero: the identity at initialisation."""

    def __init__(self, d: int = 384, hidden: int = 256) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d, hidden)
        self.fc2 = nn.Linear(hidden, d)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(F.relu(self.fc1(x)))


def classifier(n_way: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(Body(), nn.Linear(384, n_way))
    nn.init.zeros_(net[1].weight)
    nn.init.zeros_(net[1].bias)
    return net


def accuracy(out: torch.Tensor, y: torch.Tensor) -> float:
    return float((out.argmax(-1) == y).double().mean())


def episodes(d, split: str, k: int, n: int, seed: int, label_emb: bool = False):
    return EpisodeSampler(d.X, d.y, 5, k, 15, d.splits[split], seed=seed,
                          label_emb=d.label_emb if label_emb else None).sample(n)


def per_episode(pred: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    return (pred == y).double().mean(1).numpy()


def run_maml(d, k: int, first_order: bool, iters: int, seed: int, val):
    maml = MAML(classifier(5, seed), 1.0, 5, first_order, learn_inner_lr="layer",
                loss_fn=F.cross_entropy)
    # The zero head is adapted in the inner loop but never moved by the outer step (Ye & Chao,
    # 2022): with random label orders its meta-gradient is noise. The step sizes get a larger
    # outer learning rate than the body, so that the outer loss can set the logit scale through
    # them instead of by inflating the body's residual branch (which does not transfer).
    body = [p for n, p in maml.named_parameters() if n.startswith("model.0.")]
    lrs = list(maml.inner_lrs.parameters())
    opt = torch.optim.Adam([{"params": body, "lr": 1e-4}, {"params": lrs, "lr": 3e-2}])
    trainer = MetaTrainer(maml, EpisodeSampler(d.X, d.y, 5, k, 15, d.splits["train"], seed=seed),
                          meta_batch_size=8, optimizer=opt, val_tasks=val,
                          val_every=max(1, iters // 8), val_metric=accuracy,
                          higher_is_better=True)
    t0 = time.perf_counter()
    trainer.fit(iters)
    return maml, time.perf_counter() - t0, trainer


def run_finetune(d, k: int, val, test, seed: int, epochs: int):
    tr = d.splits["train"]
    mask = torch.isin(d.y, tr)
    remap = torch.full((len(d.names),), -1, dtype=torch.int64)
    remap[tr] = torch.arange(len(tr))
    t0 = time.perf_counter()
    body = pretrain_classifier(classifier(5, seed)[0], d.X[mask], remap[d.y[mask]], len(tr), 384,
                               epochs=epochs, lr=1e-3, seed=seed)
    grid = (list(itertools.product(("head",), (0.1, 0.5, 2.0), (20, 100)))
            + list(itertools.product(("all",), (0.1, 0.5), (20, 50))))
    scores = {}
    for train, lr, steps in grid:
        p = finetune_predict(body, 384, val.support_x, val.support_y, val.query_x, 5, steps, lr,
                             train)
        scores[(train, lr, steps)] = per_episode(p, val.query_y).mean()
    best = max(scores, key=scores.get)
    p = finetune_predict(body, 384, test.support_x, test.support_y, test.query_x, 5, best[2],
                         best[1], best[0])
    return per_episode(p, test.query_y), best, time.perf_counter() - t0


def run_bilinear(d, k: int, iters: int, seed: int, val, test):
    torch.manual_seed(seed)
    head = BilinearMetricHead(384, 384)
    steps = 0 if k == 0 else 3
    maml = bilinear_maml(head, 1.0, steps, first_order=True, learn_inner_lr="layer")
    t0 = time.perf_counter()
    if iters and k:
        trainer = MetaTrainer(maml, EpisodeSampler(d.X, d.y, 5, k, 15, d.splits["train"],
                                                   seed=seed, label_emb=d.label_emb),
                              meta_batch_size=8, lr=1e-3, val_tasks=val,
                              val_every=max(1, iters // 8), val_metric=bilinear_accuracy,
                              higher_is_better=True)
        trainer.fit(iters)
    acc = evaluate_tasks(maml, test, bilinear_accuracy)
    return acc, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    ap.add_argument("--iters", type=int, default=400, help="MAML outer steps per K")
    ap.add_argument("--bilinear-iters", type=int, default=200)
    ap.add_argument("--episodes", type=int, default=600)
    ap.add_argument("--val-episodes", type=int, default=200)
    ap.add_argument("--pretrain-epochs", type=int, default=20)
    ap.add_argument("--methods", nargs="+",
                    default=["ncm", "nn", "finetune", "maml", "fomaml", "bilinear"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    d = load_wordcats()

    rows, csv_rows = [], []

    def record(k: int, name: str, accs, seconds: float, note: str = "") -> None:
        mean, ci = mean_ci95(accs)
        ref = fmt_ci(*README_NCM[k], 3) if name == "nearest class mean" and k in README_NCM else ""
        rows.append([f"5-way {k}-shot", name, fmt_ci(mean, ci), ref, f"{seconds:.0f}", note])
        csv_rows.append({"bench": "wordcats", "method": name, "setting": f"5-way {k}-shot",
                         "metric": "accuracy", "value": f"{mean:.4f}", "ci95": f"{ci:.4f}",
                         "n": len(accs), "extra": f"{note};train_s={seconds:.0f}"})
        print(f"{k}-shot {name}: {fmt_ci(mean, ci)} ({seconds:.0f} s) {note}", flush=True)

    if "bilinear" in args.methods:  # zero-shot row: the category-name vectors alone
        test0 = episodes(d, "test", 0, args.episodes, 10_000, label_emb=True)
        accs, sec = run_bilinear(d, 0, 0, args.seed, None, test0)
        record(0, "bilinear head, name vectors only (0-shot)", accs, sec)
    for k in args.shots:
        test = episodes(d, "test", k, args.episodes, 10_000 + k)
        val = episodes(d, "val", k, args.val_episodes, 20_000 + k)
        if "ncm" in args.methods:
            t0 = time.perf_counter()
            p = torch.stack([nearest_class_mean(test.support_x[t], test.support_y[t],
                                                test.query_x[t], 5) for t in range(len(test))])
            record(k, "nearest class mean", per_episode(p, test.query_y), time.perf_counter() - t0)
        if "nn" in args.methods:
            t0 = time.perf_counter()
            p = torch.stack([nearest_neighbour(test.support_x[t], test.support_y[t],
                                               test.query_x[t]) for t in range(len(test))])
            record(k, "nearest neighbour", per_episode(p, test.query_y), time.perf_counter() - t0)
        if "finetune" in args.methods:
            accs, best, sec = run_finetune(d, k, val, test, args.seed, args.pretrain_epochs)
            record(k, "fine-tuning (pretrained)", accs, sec,
                   f"train={best[0]} lr={best[1]} steps={best[2]} (chosen on meta-val)")
        for name, fo in (("MAML", False), ("FO-MAML", True)):
            if ("fomaml" if fo else "maml") not in args.methods:
                continue
            maml, sec, tr = run_maml(d, k, fo, args.iters, args.seed, val)
            accs = evaluate_tasks(maml, test, accuracy)
            record(k, name, accs, sec, f"iters={args.iters} best_step={tr.best_step} "
                                       f"val={tr.best_score:.4f}")
        if "bilinear" in args.methods:
            test_l = episodes(d, "test", k, args.episodes, 10_000 + k, label_emb=True)
            val_l = episodes(d, "val", k, args.val_episodes, 20_000 + k, label_emb=True)
            accs, sec = run_bilinear(d, k, args.bilinear_iters, args.seed, val_l, test_l)
            record(k, "bilinear head + FO-MAML (fused hinge)", accs, sec,
                   f"iters={args.bilinear_iters}")
    print_table(f"wordcats meta-test, {args.episodes} episodes x 15 queries/class, accuracy "
                "± 95 % CI", ["task", "method", "accuracy", "README NCM", "train s", "notes"],
                rows)
    print(f"rows -> {append_rows('maml_wordcats', csv_rows)}")


if __name__ == "__main__":
    main()
