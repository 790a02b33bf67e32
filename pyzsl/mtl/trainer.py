"""MultiTaskTrainer: per-task gradients of the shared parameters → aggregator → any optimiser.

One step: (optionally sample a subset of tasks) → forward → per-task losses → per-task gradients
of the shared parameters as rows of G (T×P; one backward per task through a retained graph, or one
batched backward with ``grad_mode="batched"``) → under ``torch.distributed``, G, the heads'
gradients and the losses are all-reduced (mean over ranks) *before* aggregation, so every rank
computes the identical update → ``aggregator(G)`` → ``.grad`` → ``optimizer.step()``.

Aggregators that are a fixed linear combination (equal, fixed, uncertainty weighting) skip the T
backward passes and do one backward of the weighted loss, except on diagnostic steps. With
``mgda_ub=True`` (Sener & Koltun, 2018) the Gram is that of the gradients w.r.t. the shared
representation (cheap: they only go through the heads), then one backward of ``sum w_i L_i``.

Diagnostics every ``diagnostics_every`` steps: the T×T cosine matrix of the task gradients,
counts of conflicting pairs (cos < 0) and of steps where the update itself opposes a task
(update·g_i < 0). Checkpoints hold model, optimiser, aggregator, sampler and RNG states and are
written atomically, so ``fit`` resumes to the bit. Memory: G is T×P (one copy of the shared
parameters per task) plus the retained graph.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Callable, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from pyzsl._atomic import atomic_torch_save
from pyzsl.mtl.aggregators import Aggregator, Fixed, GradNorm, Uncertainty, _finite, _gram
from pyzsl.mtl.models import MultiTaskModel

__all__ = ["MultiTaskTrainer", "evaluate"]

log = logging.getLogger(__name__)

_SHARED = "__shared__"  # the sampler stream used when all tasks share one input


def _cosines(gram: Tensor) -> Tensor:
    gram = gram.to(torch.float64)
    n = gram.diagonal().clamp_min(0).sqrt()
    denom = n[:, None] * n[None, :]
    return torch.where(denom > 0, gram / denom.clamp_min(1e-300), torch.zeros_like(gram))


def _dist() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class MultiTaskTrainer:
    """Train a :class:`~pyzsl.mtl.models.MultiTaskModel` with a gradient aggregator.

    Args:
        model: exposes ``shared_parameters()`` and ``task_parameters(task)`` covering every
            trainable parameter once (not wrapped in ``DistributedDataParallel``: the trainer
            all-reduces the per-task gradients itself).
        aggregator: a :mod:`pyzsl.mtl.aggregators` module.
        optimizer: any ``torch.optim`` optimiser over the model's parameters.
        loss_fns: one callable ``(output, target) -> scalar`` per task, or one for all
            (default: cross-entropy).
        tasks_per_step: sample this many tasks per step (default all); only for aggregators
            without per-task state (not Fixed, GradNorm, Uncertainty).
        mgda_ub: aggregate the gradients w.r.t. the shared representation (needs a Gram-based
            aggregator and a model with ``representation``/``heads_forward`` and shared inputs).
        diagnostics_every: probe the cosine matrix every this many steps (0: never).
        grad_mode: "loop" (one backward per task) or "batched" (``is_grads_batched``).
        seed: seeds the trainer's sampler (batches and task subsets).
    """

    def __init__(self, model: MultiTaskModel, aggregator: Aggregator, optimizer: torch.optim.Optimizer,
                 loss_fns: Mapping[str, Callable] | Callable | None = None, *,
                 tasks_per_step: int | None = None, mgda_ub: bool = False, diagnostics_every: int = 10,
                 grad_mode: str = "loop", seed: int = 0, log_every: int = 50) -> None:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            raise TypeError("pass the bare module, not DistributedDataParallel: MultiTaskTrainer "
                            "all-reduces the per-task gradients itself, before aggregation")
        if not hasattr(model, "shared_parameters") or not hasattr(model, "task_parameters"):
            raise TypeError("model must define shared_parameters() and task_parameters(task) "
                            "(see pyzsl.mtl.models)")
        if grad_mode not in ("loop", "batched"):
            raise ValueError(f"grad_mode must be 'loop' or 'batched', got {grad_mode!r}")
        self.model, self.aggregator, self.optimizer = model, aggregator, optimizer
        self.tasks: list[str] = list(model.tasks)
        T = len(self.tasks)
        if loss_fns is None:
            loss_fns = F.cross_entropy
        if callable(loss_fns):
            loss_fns = {t: loss_fns for t in self.tasks}
        missing = [t for t in self.tasks if t not in loss_fns]
        if missing:
            raise ValueError(f"loss_fns has no entry for task(s) {missing}")
        self.loss_fns = dict(loss_fns)
        if tasks_per_step is not None:
            if not 1 <= tasks_per_step <= T:
                raise ValueError(f"tasks_per_step must be in 1..{T}, got {tasks_per_step}")
            if isinstance(aggregator, (Fixed, GradNorm, Uncertainty)):
                raise ValueError(f"tasks_per_step needs an aggregator without per-task state; "
                                 f"{type(aggregator).__name__} keeps one weight per task")
        self.tasks_per_step = tasks_per_step
        if mgda_ub:
            if not aggregator.gram_based:
                raise ValueError(f"mgda_ub=True needs a Gram-based aggregator (MGDA, CAGrad, IMTLG, "
                                 f"Equal, Fixed), got {type(aggregator).__name__}")
            if not (hasattr(model, "representation") and hasattr(model, "heads_forward")):
                raise TypeError("mgda_ub=True needs a model with representation(x) and "
                                "heads_forward(z, tasks) (e.g. HardSharing)")
        self.mgda_ub = mgda_ub
        self.diagnostics_every = int(diagnostics_every)
        self.grad_mode = grad_mode
        self.log_every = max(1, int(log_every))

        self.shared = [p for p in model.shared_parameters() if p.requires_grad]
        self.task_params = {t: [p for p in model.task_parameters(t) if p.requires_grad] for t in self.tasks}
        self._check_partition()
        if mgda_ub and not self.shared:
            raise ValueError("mgda_ub=True needs shared parameters that require grad (the trunk "
                             "behind representation(x)); this model has none")
        self._sizes = [p.numel() for p in self.shared]
        self.P = sum(self._sizes)

        self.rank, self.world = _dist()
        if self.world > 1:  # identical starting point on every rank
            with torch.no_grad():
                for t in list(model.parameters()) + list(model.buffers()):
                    torch.distributed.broadcast(t.data, src=0)

        self.generator = torch.Generator().manual_seed(int(seed))
        self.step_count = 0
        self._streams: dict[str, dict] = {}
        self._pair_probes = torch.zeros(T, T, dtype=torch.int64)
        self._pair_conflicts = torch.zeros(T, T, dtype=torch.int64)
        self._pair_conflicts_after = torch.zeros(T, T, dtype=torch.int64)
        self._pair_cos_sum = torch.zeros(T, T, dtype=torch.float64)
        self._update_probes = torch.zeros(T, dtype=torch.int64)
        self._update_conflicts = torch.zeros(T, dtype=torch.int64)
        self.history: list[dict] = []  # per-task mean losses every log_every steps
        self.probes: list[dict] = []  # one entry per diagnostic step
        self.step_times: list[float] = []
        self._loss_acc = torch.zeros(T, dtype=torch.float64)
        self._loss_n = torch.zeros(T, dtype=torch.int64)  # steps each task took part in

    # ----------------------------------------------------------------------------------------
    def _check_partition(self) -> None:
        seen: dict[int, str] = {}
        for name, ps in [("shared", self.shared)] + [(f"task {t!r}", v) for t, v in self.task_params.items()]:
            for p in ps:
                if id(p) in seen:
                    raise ValueError(f"a parameter of shape {tuple(p.shape)} is in both {seen[id(p)]} "
                                     f"and {name} parameters")
                seen[id(p)] = name
        named = {id(p): n for n, p in self.model.named_parameters() if p.requires_grad}
        left = [n for i, n in named.items() if i not in seen]
        if left:
            raise ValueError(f"parameters neither shared nor task-specific (they would never train): {left}")
        in_opt = {id(p) for g in self.optimizer.param_groups for p in g["params"]}
        absent = [n for i, n in named.items() if i not in in_opt]
        if absent:
            raise ValueError(f"optimizer does not hold these model parameters: {absent}")

    # --- sampling ---------------------------------------------------------------------------
    def _next_indices(self, stream: str, n: int, batch_size: int) -> Tensor:
        st = self._streams.get(stream)
        if st is None or st["n"] != n:
            st = {"n": n, "perm": torch.randperm(n, generator=self.generator), "cursor": 0, "epoch": 0}
            self._streams[stream] = st
        if st["cursor"] + batch_size > n:  # drop the last partial batch, reshuffle
            st["perm"] = torch.randperm(n, generator=self.generator)
            st["cursor"] = 0
            st["epoch"] += 1
        idx = st["perm"][st["cursor"]: st["cursor"] + batch_size]
        st["cursor"] += batch_size
        return idx[self.rank:: self.world]

    def _sample_tasks(self) -> list[str]:
        if self.tasks_per_step is None or self.tasks_per_step == len(self.tasks):
            return list(self.tasks)
        pick = torch.randperm(len(self.tasks), generator=self.generator)[: self.tasks_per_step]
        return [self.tasks[i] for i in sorted(pick.tolist())]

    @property
    def epoch(self) -> float:
        """Epochs completed by the slowest data stream (fractional)."""
        if not self._streams:
            return 0.0
        return min(s["epoch"] + s["cursor"] / s["n"] for s in self._streams.values())

    # --- one step ---------------------------------------------------------------------------
    def _in_model_order(self, tasks: Iterable[str], ys: Mapping[str, Tensor]) -> list[str]:
        """The given tasks in the model's order: per-task weights (Fixed, GradNorm, Uncertainty,
        head_weights) go by position, so ["b", "a"] must not swap them."""
        given = list(tasks)
        unknown = [t for t in given if t not in self.tasks]
        if unknown:
            raise ValueError(f"tasks: unknown task(s) {unknown}; the model's tasks are {self.tasks}")
        if len(set(given)) != len(given):
            raise ValueError(f"tasks: a task is given twice in {given}")
        missing = [t for t in given if t not in ys]
        if missing:
            raise ValueError(f"ys: no labels for task(s) {missing}")
        return [t for t in self.tasks if t in given]

    def step(self, x: Tensor | Mapping[str, Tensor], ys: Mapping[str, Tensor],
             tasks: Iterable[str] | None = None) -> dict[str, float]:
        """One update on a batch; ``x`` is one tensor (shared input) or one per task.

        Returns the per-task losses (all-reduced means under DDP).
        """
        t0 = time.perf_counter()
        sel = self._in_model_order(tasks, ys) if tasks is not None else self._sample_tasks()
        shared_input = isinstance(x, Tensor)
        self.model.train()
        probe = self.diagnostics_every > 0 and self.step_count % self.diagnostics_every == 0

        if self.mgda_ub:
            if not shared_input:
                raise ValueError("mgda_ub=True needs one shared input tensor x for all tasks")
            losses, G, update = self._step_mgda_ub(x, ys, sel)
        else:
            outs = self._forward(x, sel, shared_input)
            L = torch.stack([self.loss_fns[t](outs[t], ys[t]) for t in sel])
            if not self.aggregator.needs_task_gradients and not probe:
                losses, G, update = self._step_weighted(L, sel)
            else:
                losses, G, update = self._step_per_task(L, sel)

        if probe and G is not None:
            self._record(G, update, sel, losses)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.world > 1:  # running statistics (BatchNorm): rank 0's on every rank, as DDP's broadcast_buffers
            with torch.no_grad():
                for b in self.model.buffers():
                    torch.distributed.broadcast(b, src=0)
        self.aggregator.observe(G, losses)
        self.step_count += 1
        idx = [self.tasks.index(t) for t in sel]
        self._loss_acc[idx] += losses.to("cpu", torch.float64)
        self._loss_n[idx] += 1
        if self.step_count % self.log_every == 0:
            self._flush_log()
        self.step_times.append(time.perf_counter() - t0)
        return {t: float(v) for t, v in zip(sel, losses)}

    def _forward(self, x, sel: list[str], shared_input: bool) -> dict[str, Tensor]:
        if shared_input:
            return self.model(x, tasks=sel)
        missing = [t for t in sel if t not in x]
        if missing:
            raise KeyError(f"x has no input for task(s) {missing}")
        return {t: self.model(x[t], tasks=[t])[t] for t in sel}

    def _allreduce_mean(self, flat: Tensor) -> Tensor:
        if self.world > 1:
            torch.distributed.all_reduce(flat)
            flat /= self.world
        return flat

    def _set_grads(self, params: list[nn.Parameter], flat: Tensor) -> None:
        off = 0
        for p in params:
            n = p.numel()
            p.grad = flat[off: off + n].view_as(p).to(p.dtype)
            off += n

    def _flat(self, grads: Iterable[Tensor | None], params: list[nn.Parameter], out: Tensor) -> Tensor:
        off = 0
        for g, p in zip(grads, params):
            n = p.numel()
            if g is None:
                out[off: off + n].zero_()
            else:
                out[off: off + n].copy_(g.reshape(-1))
            off += n
        return out

    def _head_list(self, sel: list[str]) -> list[nn.Parameter]:
        return [p for t in sel for p in self.task_params[t]]

    def _step_weighted(self, L: Tensor, sel: list[str]) -> tuple[Tensor, None, None]:
        """One backward of sum_i w_i L_i (linear, fixed-weight aggregators; no G needed)."""
        w = self.aggregator.loss_weights(len(sel)).to(L)
        params = self.shared + self._head_list(sel)
        grads = torch.autograd.grad((w * L).sum(), params, allow_unused=True)
        buf = torch.empty(sum(p.numel() for p in params) + len(sel), dtype=L.dtype, device=L.device)
        flat = self._flat(grads, params, buf)
        flat[-len(sel):] = L.detach()
        flat = self._allreduce_mean(flat)
        self._set_grads(params, flat[:-len(sel)])
        return flat[-len(sel):].clone(), None, None

    def _task_grads(self, L: Tensor, sel: list[str]) -> tuple[Tensor, list[Tensor]]:
        """G (T×P) and each selected task's flattened head gradient."""
        T, dtype = len(sel), L.dtype
        G = torch.empty(T, self.P, dtype=dtype, device=L.device)
        heads: list[Tensor] = []
        if self.grad_mode == "batched":
            params = self.shared + self._head_list(sel)
            eye = torch.eye(T, dtype=dtype, device=L.device)
            grads = torch.autograd.grad(L, params, grad_outputs=eye, is_grads_batched=True, allow_unused=True)
            ns = len(self.shared)
            off = 0
            for g, p in zip(grads[:ns], self.shared):
                n = p.numel()
                G[:, off: off + n] = 0 if g is None else g.reshape(T, n)
                off += n
            k = ns
            for i, t in enumerate(sel):
                ps = self.task_params[t]
                hp = torch.empty(sum(p.numel() for p in ps), dtype=dtype, device=L.device)
                heads.append(self._flat([None if g is None else g[i] for g in grads[k: k + len(ps)]], ps, hp))
                k += len(ps)
            return G, heads
        for i, t in enumerate(sel):
            params = self.shared + self.task_params[t]
            grads = torch.autograd.grad(L[i], params, retain_graph=i < T - 1, allow_unused=True)
            self._flat(grads[: len(self.shared)], self.shared, G[i])
            hp = self.task_params[t]
            buf = torch.empty(sum(p.numel() for p in hp), dtype=dtype, device=L.device)
            heads.append(self._flat(grads[len(self.shared):], hp, buf))
        return G, heads

    def _reduce_task_grads(self, G: Tensor, heads: list[Tensor], L: Tensor) -> tuple[Tensor, list[Tensor], Tensor]:
        if self.world == 1:
            return G, heads, L.detach()
        sizes = [h.numel() for h in heads]
        flat = torch.cat([G.reshape(-1)] + heads + [L.detach().reshape(-1)])
        flat = self._allreduce_mean(flat)
        G = flat[: G.numel()].view_as(G)
        out, off = [], G.numel()
        for n in sizes:
            out.append(flat[off: off + n])
            off += n
        return G, out, flat[off:].clone()

    def _aggregate(self, G: Tensor, losses: Tensor, sel: list[str]) -> tuple[Tensor, Tensor | None]:
        gram = _finite(G, _gram(G)) if self.aggregator.gram_based else None
        return self.aggregator(G, losses=losses, gram=gram), gram

    def _step_per_task(self, L: Tensor, sel: list[str]) -> tuple[Tensor, Tensor, Tensor]:
        G, heads = self._task_grads(L, sel)
        G, heads, losses = self._reduce_task_grads(G, heads, L)
        update, _ = self._aggregate(G, losses, sel)
        self._set_grads(self.shared, update)
        hw = self._head_weights(sel)
        for i, t in enumerate(sel):
            self._set_grads(self.task_params[t], heads[i] * hw[i])
        return losses, G, update

    def _head_weights(self, sel: list[str]) -> Tensor:
        # Aggregators with per-task state refuse task sampling, so len(sel) == T for them.
        return self.aggregator.head_weights(len(sel))

    def _step_mgda_ub(self, x: Tensor, ys: Mapping[str, Tensor], sel: list[str]) -> tuple[Tensor, Tensor, Tensor]:
        """MGDA-UB: weights from the Gram of ∂L_i/∂z (z the shared representation)."""
        z = self.model.representation(x)
        zd = z.detach().requires_grad_(True)
        outs = self.model.heads_forward(zd, sel)
        L = torch.stack([self.loss_fns[t](outs[t], ys[t]) for t in sel])
        T = len(sel)
        Gz = torch.empty(T, zd.numel(), dtype=zd.dtype, device=zd.device)
        heads = []
        for i, t in enumerate(sel):
            hp = self.task_params[t]
            grads = torch.autograd.grad(L[i], [zd] + hp, retain_graph=i < T - 1, allow_unused=True)
            Gz[i] = 0 if grads[0] is None else grads[0].reshape(-1)
            heads.append(self._flat(grads[1:], hp, torch.empty(sum(p.numel() for p in hp), dtype=zd.dtype,
                                                                           device=zd.device)))
        # Under DDP each rank holds its own rows of z: the full-batch Gram is the mean of the
        # local Grams divided by the world size (each local loss is a mean over its shard).
        gram_local = _gram(Gz)
        sizes = [h.numel() for h in heads]
        flat = torch.cat([gram_local.reshape(-1).to(zd.dtype) / self.world] + heads + [L.detach()])
        flat = self._allreduce_mean(flat)
        gram = flat[: T * T].view(T, T)
        off = T * T
        hs = []
        for n in sizes:
            hs.append(flat[off: off + n])
            off += n
        losses = flat[off:].clone()
        w = self.aggregator.weights(gram, losses).to(zd.dtype)
        self._ub_gram, self._ub_weights = gram, w
        # One backward through the trunk with the combined representation gradient.
        sg = torch.autograd.grad(z, self.shared, grad_outputs=(w @ Gz).view_as(z), allow_unused=True)
        buf = torch.empty(self.P, dtype=zd.dtype, device=zd.device)
        update = self._allreduce_mean(self._flat(sg, self.shared, buf))
        self._set_grads(self.shared, update)
        hw = self._head_weights(sel)
        for i, t in enumerate(sel):
            self._set_grads(self.task_params[t], hs[i] * hw[i])
        # Diagnostics use the Gram of the representation gradients (parameter gradients are
        # never formed); under DDP Gz holds this rank's rows only, the Gram is the global one.
        return losses, Gz, w @ Gz

    # --- diagnostics ------------------------------------------------------------------------
    @torch.no_grad()
    def _record(self, G: Tensor, update: Tensor | None, sel: list[str], losses: Tensor) -> None:
        # Statistics live on the CPU in float64 (T×T work, every diagnostics_every steps).
        if self.mgda_ub:  # the all-reduced Gram of the representation gradients and the weights
            gram, w = self._ub_gram.to("cpu", torch.float64), self._ub_weights.to("cpu", torch.float64)
        else:
            gram = _gram(G).to("cpu", torch.float64)
        n = gram.diagonal().clamp_min(0).sqrt()
        cos = _cosines(gram)
        idx = torch.tensor([self.tasks.index(t) for t in sel])
        ii, jj = torch.meshgrid(idx, idx, indexing="ij")
        self._pair_probes[ii, jj] += 1
        self._pair_conflicts[ii, jj] += (cos < 0).to(torch.int64)
        self._pair_cos_sum[ii, jj] += cos
        # After aggregation: cosines of the per-task contributions the update was built from
        # (PCGrad: the projected gradients; weightings: unchanged).
        eff = _cosines(self.aggregator.effective_gram(gram))
        self._pair_conflicts_after[ii, jj] += (eff < -1e-9).to(torch.int64)
        if self.mgda_ub:
            ug = gram @ w
            un = (w @ ug).clamp_min(0).sqrt()
        else:
            if update is None:  # single-backward aggregators: the update is the weighted sum
                update = self.aggregator.loss_weights(len(sel)).to(G) @ G
            # in G's dtype: a float64 copy of G would double its memory
            ug = torch.mv(G, update.to(G.dtype)).to("cpu", torch.float64)
            un = torch.linalg.vector_norm(update).to("cpu", torch.float64)
        ucos = torch.where((n > 0) & (un > 0), ug / (n * un).clamp_min(1e-300), torch.zeros_like(ug))
        self._update_probes[idx] += 1
        self._update_conflicts[idx] += (ug < 0).to(torch.int64)
        self.probes.append({"step": self.step_count, "tasks": list(sel), "cos": cos.tolist(),
                            "cos_after": eff.tolist(), "update_cos": ucos.tolist(),
                            "losses": losses.cpu().tolist()})

    def diagnostics(self) -> dict:
        """Conflict statistics so far. Per pair: probes, fraction with cos < 0 between the raw task
        gradients, the same after aggregation (cosines of the contributions the update was built
        from: PCGrad's projected gradients), mean raw cosine. Per task: the fraction of probes
        where the update opposed the task's gradient (update·g_i < 0)."""
        p = self._pair_probes.clamp_min(1).to(torch.float64)
        return {
            "tasks": list(self.tasks),
            "pair_probes": self._pair_probes.tolist(),
            "pair_conflict_frac": (self._pair_conflicts / p).tolist(),
            "pair_conflict_after_frac": (self._pair_conflicts_after / p).tolist(),
            "pair_mean_cos": (self._pair_cos_sum / p).tolist(),
            "update_probes": self._update_probes.tolist(),
            "update_conflict_frac": (self._update_conflicts / self._update_probes.clamp_min(1)).tolist(),
        }

    def conflict_table(self) -> str:
        """The diagnostics as a printable table (one row per task pair)."""
        d = self.diagnostics()
        T = len(self.tasks)
        lines = [f"{'pair':<28}{'probes':>8}{'cos<0':>8}{'after':>8}{'mean cos':>10}"]
        for i in range(T):
            for j in range(i + 1, T):
                lines.append(f"{self.tasks[i] + ' / ' + self.tasks[j]:<28}{d['pair_probes'][i][j]:>8}"
                             f"{100 * d['pair_conflict_frac'][i][j]:>7.1f}%"
                             f"{100 * d['pair_conflict_after_frac'][i][j]:>7.1f}%{d['pair_mean_cos'][i][j]:>10.3f}")
        lines.append(f"{'task':<28}{'probes':>8}{'upd·g<0':>8}")
        for i, t in enumerate(self.tasks):
            lines.append(f"{t:<28}{d['update_probes'][i]:>8}{100 * d['update_conflict_frac'][i]:>7.1f}%")
        return "\n".join(lines)

    def _flush_log(self) -> None:
        if not self._loss_n.any():
            return
        # a task sampled in no step of the window (tasks_per_step) has no mean: NaN
        mean = torch.where(self._loss_n > 0, self._loss_acc / self._loss_n.clamp_min(1), float("nan")).tolist()
        entry = {"step": self.step_count, **{t: v for t, v in zip(self.tasks, mean)}}
        self.history.append(entry)
        log.info("step %d  %s", self.step_count, "  ".join(f"{t}={v:.4f}" for t, v in zip(self.tasks, mean)))
        self._loss_acc.zero_()
        self._loss_n.zero_()

    # --- fit / checkpoint --------------------------------------------------------------------
    def fit(self, data, steps: int, batch_size: int = 256, *, checkpoint: str | os.PathLike | None = None,
            checkpoint_every: int = 0, progress: bool = True,
            callback: Callable[["MultiTaskTrainer"], None] | None = None) -> "MultiTaskTrainer":
        """Train until ``step_count == steps`` (so calling it again after ``load`` resumes).

        ``data`` is ``(X, {task: y})`` (one input for all tasks) or ``{task: (X_t, y_t)}``.
        Batches are drawn without replacement from the trainer's own generator (last partial
        batch dropped); under DDP each rank takes every world-th row of the global batch.
        ``checkpoint_every`` > 0 writes ``checkpoint`` atomically every so many steps and at the end.
        ``callback(trainer)`` runs after every step (e.g. evaluation every epoch).
        """
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if batch_size % self.world:
            raise ValueError(f"batch_size {batch_size} must be divisible by the world size {self.world}")
        shared_input, streams = self._parse_data(data)
        for name, (X, ys) in streams.items():
            if X.shape[0] < batch_size:
                raise ValueError(f"data stream {name!r} has {X.shape[0]} rows, fewer than batch_size {batch_size}")
        bar = tqdm(total=steps, initial=min(self.step_count, steps), disable=not progress or self.rank != 0,
                   desc=type(self.aggregator).__name__, dynamic_ncols=True)
        try:
            while self.step_count < steps:
                sel = self._sample_tasks()
                if shared_input:
                    X, ys = streams[_SHARED]
                    idx = self._next_indices(_SHARED, X.shape[0], batch_size)
                    out = self.step(X[idx], {t: ys[t][idx] for t in sel}, tasks=sel)
                else:
                    xb, yb = {}, {}
                    for t in sel:
                        X, yt = streams[t]
                        idx = self._next_indices(t, X.shape[0], batch_size)
                        xb[t], yb[t] = X[idx], yt[t][idx]
                    out = self.step(xb, yb, tasks=sel)
                bar.update(1)
                if self.step_count % self.log_every == 0:
                    bar.set_postfix({t: f"{v:.3f}" for t, v in out.items()})
                if checkpoint is not None and checkpoint_every > 0 and self.step_count % checkpoint_every == 0:
                    self.save(checkpoint)
                if callback is not None:
                    callback(self)
        finally:
            bar.close()
        if checkpoint is not None and checkpoint_every > 0:
            self.save(checkpoint)
        return self

    def _parse_data(self, data) -> tuple[bool, dict[str, tuple[Tensor, Mapping[str, Tensor]]]]:
        if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], Tensor):
            X, ys = data
            missing = [t for t in self.tasks if t not in ys]
            if missing:
                raise ValueError(f"data has no labels for task(s) {missing}")
            for t in self.tasks:
                if ys[t].shape[0] != X.shape[0]:
                    raise ValueError(f"labels of task {t!r} have {ys[t].shape[0]} rows, X has {X.shape[0]}")
            return True, {_SHARED: (X, ys)}
        if isinstance(data, Mapping):
            missing = [t for t in self.tasks if t not in data]
            if missing:
                raise ValueError(f"data has no (X, y) for task(s) {missing}")
            out = {}
            for t in self.tasks:
                X, y = data[t]
                if y.shape[0] != X.shape[0]:
                    raise ValueError(f"task {t!r}: y has {y.shape[0]} rows, X has {X.shape[0]}")
                out[t] = (X, {t: y})
            return False, out
        raise TypeError("data must be (X, {task: y}) or {task: (X, y)}")

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "aggregator": self.aggregator.state_dict(),
            "trainer": {
                "step_count": self.step_count,
                "generator": self.generator.get_state(),
                "torch_rng": torch.get_rng_state(),
                "streams": self._streams,
                "pair_probes": self._pair_probes, "pair_conflicts": self._pair_conflicts,
                "pair_conflicts_after": self._pair_conflicts_after,
                "pair_cos_sum": self._pair_cos_sum, "update_probes": self._update_probes,
                "update_conflicts": self._update_conflicts,
                "loss_acc": self._loss_acc, "loss_n": self._loss_n,
                "history": self.history, "probes": self.probes,
                "tasks": list(self.tasks), "world": self.world,
            },
        }

    def load_state_dict(self, state: Mapping) -> None:
        tr = state["trainer"]
        if list(tr["tasks"]) != self.tasks:
            raise ValueError(f"checkpoint tasks {tr['tasks']} differ from this model's {self.tasks}")
        if tr["world"] != self.world:
            raise ValueError(f"checkpoint was written with world size {tr['world']}, now {self.world}: "
                             f"an exact resume needs the same sharding")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.aggregator.load_state_dict(state["aggregator"])
        self.step_count = int(tr["step_count"])
        self.generator.set_state(tr["generator"])
        torch.set_rng_state(tr["torch_rng"])
        self._streams = {k: dict(v) for k, v in tr["streams"].items()}
        self._pair_probes = tr["pair_probes"].clone()
        self._pair_conflicts = tr["pair_conflicts"].clone()
        self._pair_conflicts_after = tr["pair_conflicts_after"].clone()
        self._pair_cos_sum = tr["pair_cos_sum"].clone()
        self._update_probes = tr["update_probes"].clone()
        self._update_conflicts = tr["update_conflicts"].clone()
        self._loss_acc = tr["loss_acc"].clone()
        n = torch.as_tensor(tr["loss_n"], dtype=torch.int64)
        self._loss_n = n.expand(len(self.tasks)).clone()  # checkpoints before per-task counts: one int
        self.history = list(tr["history"])
        self.probes = list(tr["probes"])

    def save(self, path: str | os.PathLike) -> None:
        """Write a checkpoint atomically (temporary file in the same folder, then ``os.replace``).
        Under DDP only rank 0 writes: parameters, buffers and optimiser state are the same on every
        rank, the torch RNG state is rank 0's (a resume is exact when the ranks seed torch alike,
        e.g. for dropout)."""
        if self.rank != 0:
            return
        atomic_torch_save(self.state_dict(), path)

    def load(self, path: str | os.PathLike) -> "MultiTaskTrainer":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {path} not found")
        self.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return self


@torch.no_grad()
def evaluate(model: nn.Module, X: Tensor, ys: Mapping[str, Tensor], batch_size: int = 2048) -> dict[str, float]:
    """Accuracy per task (argmax of each head) on ``(X, {task: y})``; the model is left in eval mode."""
    model.eval()
    tasks = list(ys)
    correct = {t: 0 for t in tasks}
    for s in range(0, X.shape[0], batch_size):
        out = model(X[s: s + batch_size], tasks=tasks)
        for t in tasks:
            correct[t] += int((out[t].argmax(1) == ys[t][s: s + batch_size]).sum())
    n = max(1, X.shape[0])
    return {t: correct[t] / n for t in tasks}
