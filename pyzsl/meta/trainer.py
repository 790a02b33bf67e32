"""Meta-training loop for :class:`pyzsl.meta.MAML` (Finn et al., 2017, Algorithm 1).

Each step samples a meta-batch of tasks, adapts on their support sets, takes the query loss
and makes one outer optimiser step. The outer gradient is the mean of the per-task
meta-gradients, or, with ``aggregator=agg``, ``agg(G)`` where G is the T×P matrix of per-task
meta-gradients (flattened over :meth:`MAML.outer_parameters`): the tasks of a meta-batch play
the role of the conflicting tasks of multi-task learning, e.g. ``aggregator=pyzsl.mtl.PCGrad()``
(Yu et al., 2020). Memory of an aggregated step: O(T·P) for G on top of the meta-batch graph.

Meta-validation (fixed tasks, scored every ``val_every`` steps) selects the model kept at the
end; checkpoints (model, step sizes, optimiser, sampler and RNG state, best model) are written
atomically (temporary file + ``os.replace``) and ``fit(..., resume=True)`` continues a run
exactly where it stopped.
"""
from __future__ import annotations

import copy
import logging
import math
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor
from torch.utils._pytree import tree_map

from pyzsl._atomic import atomic_torch_save

from .episodes import TaskBatch
from .maml import MAML, LossFn

__all__ = ["MetaTrainer", "evaluate_tasks", "mean_ci95", "atomic_torch_save"]

logger = logging.getLogger(__name__)

Aggregator = Callable[[Tensor], Tensor]
Metric = Callable[[Any, Tensor], float]


def mean_ci95(values: Any) -> tuple[float, float]:
    """Mean and half-width of its normal 95 % confidence interval, 1.96·std/√n (population
    std, as the wordcats README computes it)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        raise ValueError("mean_ci95: no values")
    return float(v.mean()), float(1.96 * v.std() / math.sqrt(v.size))


def evaluate_tasks(maml: MAML, tasks: TaskBatch, metric: Metric | None = None,
                   loss_fn: LossFn | None = None, inner_steps: int | None = None,
                   chunk: int = 100) -> np.ndarray:
    """Per-task score after adaptation: ``metric(output_t, query_y_t)`` (default: the loss)
    for each task, adapting on its support set with ``inner_steps`` steps (default: the
    model's). Runs in chunks of ``chunk`` tasks to bound memory, in eval mode (the mode the
    model was in is restored)."""
    if chunk < 1:
        raise ValueError(f"evaluate_tasks: chunk must be >= 1, got {chunk}")
    fn = maml._loss_fn(loss_fn)
    score = metric if metric is not None else (lambda out, y: float(fn(out, y)))
    res: list[float] = []
    n = len(tasks)
    was_training = maml.training
    maml.eval()
    try:
        for lo in range(0, n, chunk):
            hi = min(n, lo + chunk)
            ctx = None if tasks.context is None else tasks.context[lo:hi]
            params = maml.adapt(tasks.support_x[lo:hi], tasks.support_y[lo:hi], fn, ctx, inner_steps)
            out = maml.predict(params, tasks.query_x[lo:hi], ctx)
            for t in range(hi - lo):
                o = tree_map(lambda z: z[t], out)  # noqa: B023 (used at once)
                res.append(float(score(o, tasks.query_y[lo + t])))
    finally:
        maml.train(was_training)
    return np.asarray(res)


class MetaTrainer:
    """Meta-trains a :class:`MAML` on tasks from ``train_tasks`` (a sampler with
    ``sample(n) -> TaskBatch`` and ``state_dict``/``load_state_dict``).

    ``aggregator``: "mean" (plain MAML) or a callable ``agg(G: Tensor[T, P]) -> Tensor[P]``
    (a :mod:`pyzsl.mtl` aggregator: called as ``agg(G, losses)`` when it ``needs_losses``, its
    ``observe(G, losses)`` after each step and its ``state_dict`` saved in checkpoints). The
    update is used as it comes back: an aggregator that sums (PCGrad's default) gives T times
    the mean's scale.
    ``scheduler``: an optional learning-rate scheduler of ``optimizer``, stepped after every
    outer step (saved in checkpoints). ``val_tasks``: a fixed :class:`TaskBatch` (or a sampler, from which ``n_val_tasks`` are
    drawn once) scored every ``val_every`` steps with ``val_metric`` (default: query loss,
    lower is better; ``higher_is_better=True`` for accuracies); the best model is restored at
    the end of :meth:`fit` (``restore_best``); a later ``fit``, ``save`` or checkpoint goes on from the
    last step, as an uninterrupted run would. ``checkpoint``: a file path written every
    ``checkpoint_every`` steps and at the end of :meth:`fit`.
    """

    def __init__(self, maml: MAML, train_tasks: Any, *, meta_batch_size: int = 25,
                 loss_fn: LossFn | None = None, optimizer: torch.optim.Optimizer | None = None,
                 lr: float = 1e-3, scheduler: Any | None = None,
                 aggregator: str | Aggregator = "mean",
                 val_tasks: TaskBatch | Any | None = None, n_val_tasks: int = 100,
                 val_every: int = 500, val_metric: Metric | None = None,
                 higher_is_better: bool = False, restore_best: bool = True,
                 checkpoint: str | os.PathLike[str] | None = None, checkpoint_every: int = 1000,
                 grad_clip: float | None = None, progress: bool = True,
                 log_every: int = 100) -> None:
        if meta_batch_size < 1:
            raise ValueError(f"MetaTrainer: meta_batch_size must be >= 1, got {meta_batch_size}")
        if isinstance(aggregator, str) and aggregator != "mean":
            raise ValueError(f"MetaTrainer: aggregator must be 'mean' or a callable "
                             f"agg(G[T,P]) -> [P], got {aggregator!r}")
        if not isinstance(aggregator, str) and not callable(aggregator):
            raise TypeError(f"MetaTrainer: aggregator must be callable, got {type(aggregator)}")
        for name in ("sample", "state_dict", "load_state_dict"):
            if not hasattr(train_tasks, name):
                raise TypeError(f"MetaTrainer: train_tasks must have .{name}() "
                                f"(e.g. an EpisodeSampler), got {type(train_tasks).__name__}")
        self.maml = maml
        self.train_tasks = train_tasks
        self.meta_batch_size = int(meta_batch_size)
        self.loss_fn = maml._loss_fn(loss_fn)
        self.optimizer = optimizer or torch.optim.Adam(maml.parameters(), lr=lr)
        self.scheduler = scheduler
        self.aggregator = aggregator
        if val_tasks is not None and not isinstance(val_tasks, TaskBatch):
            val_tasks = val_tasks.sample(n_val_tasks)
        self.val_tasks: TaskBatch | None = val_tasks
        self.val_every = int(val_every)
        self.val_metric = val_metric
        self.higher_is_better = higher_is_better
        self.restore_best = restore_best
        self.checkpoint = None if checkpoint is None else Path(checkpoint)
        self.checkpoint_every = int(checkpoint_every)
        self.grad_clip = grad_clip
        self.progress = progress
        self.log_every = int(log_every)
        self.step_count = 0
        self.best_score: float | None = None
        self.best_step: int | None = None
        self._best_state: dict[str, Tensor] | None = None
        self._last_state: dict[str, Tensor] | None = None  # the live model while the best is shown
        self.history: dict[str, list[Any]] = {"step": [], "loss": [], "val_step": [], "val": []}

    # -- one outer step ------------------------------------------------------------------
    def step(self, batch: TaskBatch | None = None) -> float:
        """One meta-update on ``batch`` (default: a fresh meta-batch). Returns the mean query loss."""
        self.maml.train()
        batch = batch if batch is not None else self.train_tasks.sample(self.meta_batch_size)
        self.optimizer.zero_grad(set_to_none=True)
        if self.aggregator == "mean":
            loss = self.maml(batch.support_x, batch.support_y, batch.query_x, batch.query_y,
                             self.loss_fn, batch.context)
            loss.backward()
            value = float(loss.detach())
        else:
            losses, G = self.maml.task_gradients(batch.support_x, batch.support_y, batch.query_x,
                                                 batch.query_y, self.loss_fn, batch.context)
            # pyzsl.mtl aggregators: agg(G) or, loss-based ones, agg(G, losses)
            if getattr(self.aggregator, "needs_losses", False):
                update = self.aggregator(G, losses)
            else:
                update = self.aggregator(G)
            if not isinstance(update, Tensor) or update.shape != (G.shape[1],):
                raise ValueError(f"MetaTrainer: aggregator {self.aggregator!r} returned "
                                 f"{getattr(update, 'shape', type(update))}, expected a tensor of "
                                 f"shape ({G.shape[1]},) from G of shape {tuple(G.shape)}")
            if not torch.isfinite(update).all():
                raise FloatingPointError(f"MetaTrainer: aggregator {self.aggregator!r} returned "
                                         "non-finite values")
            off = 0
            for _, p in self.maml.outer_parameters():
                n = p.numel()
                p.grad = update[off:off + n].view_as(p).to(p.dtype).clone()
                off += n
            observe = getattr(self.aggregator, "observe", None)
            if observe is not None:  # learnable aggregators update their weights after the step
                observe(G, losses)
            value = float(losses.mean())
        if not math.isfinite(value):
            raise FloatingPointError(f"MetaTrainer: meta-loss is {value} at step "
                                     f"{self.step_count}; lower the learning rates")
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.maml.parameters(), self.grad_clip)
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        self.step_count += 1
        return value

    # -- validation ----------------------------------------------------------------------
    def validate(self) -> float:
        """Mean ``val_metric`` (default: query loss) over the fixed validation tasks."""
        if self.val_tasks is None:
            raise ValueError("MetaTrainer.validate: no val_tasks were given")
        return float(evaluate_tasks(self.maml, self.val_tasks, self.val_metric,
                                    self.loss_fn).mean())

    def _better(self, score: float) -> bool:
        if self.best_score is None:
            return True
        return score > self.best_score if self.higher_is_better else score < self.best_score

    def _record_val(self) -> float:
        score = self.validate()
        self.history["val_step"].append(self.step_count)
        self.history["val"].append(score)
        if self._better(score):
            self.best_score, self.best_step = score, self.step_count
            self._best_state = {k: v.detach().clone() for k, v in self.maml.state_dict().items()}
        return score

    # -- checkpoints ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        # after fit restored the best model, training state is the last step's, not the best's
        live = self._last_state if self._last_state is not None else self.maml.state_dict()
        return {"step": self.step_count, "maml": live,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
                "train_tasks": self.train_tasks.state_dict(),
                "torch_rng": torch.get_rng_state(), "best_score": self.best_score,
                "best_step": self.best_step, "best_state": self._best_state,
                "history": copy.deepcopy(self.history),
                "aggregator": (self.aggregator.state_dict()
                               if hasattr(self.aggregator, "state_dict") else None)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step_count = int(state["step"])
        self.maml.load_state_dict(state["maml"])
        self._last_state = None
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.train_tasks.load_state_dict(state["train_tasks"])
        torch.set_rng_state(state["torch_rng"])
        self.best_score, self.best_step = state["best_score"], state["best_step"]
        self._best_state = state["best_state"]
        self.history = copy.deepcopy(state["history"])
        if state.get("aggregator") is not None:
            self.aggregator.load_state_dict(state["aggregator"])

    def save(self, path: str | os.PathLike[str] | None = None) -> Path:
        """Write a checkpoint atomically to ``path`` (default: ``checkpoint=``); returns the path."""
        path = Path(path) if path is not None else self.checkpoint
        if path is None:
            raise ValueError("MetaTrainer.save: no path and no checkpoint= given")
        atomic_torch_save(self.state_dict(), path)
        logger.info("checkpoint step %d -> %s", self.step_count, path)
        return path

    def load(self, path: str | os.PathLike[str] | None = None) -> "MetaTrainer":
        """Resume from a checkpoint (default: ``checkpoint=``); returns self, as
        ``MultiTaskTrainer.load``."""
        path = Path(path) if path is not None else self.checkpoint
        if path is None or not path.exists():
            raise FileNotFoundError(f"MetaTrainer.load: no checkpoint at {path}")
        self.load_state_dict(torch.load(path, weights_only=True))
        logger.info("resumed from %s at step %d", path, self.step_count)
        return self

    # the names of earlier versions
    save_checkpoint = save
    load_checkpoint = load

    # -- the loop ------------------------------------------------------------------------
    def fit(self, steps: int, resume: bool = False) -> "MetaTrainer":
        """Meta-train until ``steps`` outer steps in total; ``resume=True`` first loads the
        checkpoint if it exists. Returns self (as ``MultiTaskTrainer.fit``); losses and
        validation scores are in ``history``."""
        from tqdm.auto import tqdm

        if resume:
            if self.checkpoint is None:
                raise ValueError("MetaTrainer.fit(resume=True) needs checkpoint=")
            if self.checkpoint.exists():
                self.load()
        if self._last_state is not None:  # go on from the last step, not from the best model
            self.maml.load_state_dict(self._last_state)
            self._last_state = None
        if self.val_tasks is not None and self.step_count == 0 and not self.history["val"]:
            # the initial model competes too: meta-training that only hurts is not kept
            self._record_val()
        bar = tqdm(total=steps, initial=self.step_count, disable=not self.progress,
                   desc="meta-train", dynamic_ncols=True)
        try:
            while self.step_count < steps:
                loss = self.step()
                self.history["step"].append(self.step_count)
                self.history["loss"].append(loss)
                bar.update(1)
                val = None
                if self.val_tasks is not None and self.step_count % self.val_every == 0:
                    val = self._record_val()
                    bar.set_postfix(loss=f"{loss:.4f}", val=f"{val:.4f}")
                if self.step_count % self.log_every == 0:
                    logger.info("step %d loss %.5f%s", self.step_count, loss,
                                "" if val is None else f" val {val:.5f}")
                if self.checkpoint is not None and self.step_count % self.checkpoint_every == 0:
                    self.save()
        finally:
            bar.close()
        if self.checkpoint is not None:
            self.save()
        if self.restore_best and self._best_state is not None:
            self._last_state = {k: v.detach().clone() for k, v in self.maml.state_dict().items()}
            self.maml.load_state_dict(self._best_state)
            logger.info("restored the best model (step %s, val %.5f)", self.best_step,
                        self.best_score)
        return self
