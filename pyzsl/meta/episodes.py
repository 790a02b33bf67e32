"""Task samplers: N-way K-shot episodes (Vinyals et al., 2016) and sinusoid regression
(Finn et al., 2017, Sec. 5.1).

A sampler returns a :class:`TaskBatch` (support/query tensors with a leading task
dimension, the layout :func:`pyzsl.meta.maml_loss` takes) from ``sample(n_tasks)``; it draws
from its own ``torch.Generator`` whose state is saved with ``state_dict()`` so that a resumed
meta-training run sees the same tasks as an uninterrupted one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["TaskBatch", "EpisodeSampler", "SinusoidTasks"]


@dataclass
class TaskBatch:
    """T tasks: ``support_x`` (T×S×...), ``support_y`` (T×S), ``query_x``, ``query_y``;
    ``context`` an optional per-task tensor (T×...) given to the model as second input;
    ``info`` sampler-specific extras (episode classes, sinusoid amplitudes, ...)."""

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    context: Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.support_x.shape[0]

    def to(self, device: torch.device | str) -> "TaskBatch":
        mv = lambda t: t.to(device) if isinstance(t, Tensor) else t  # noqa: E731
        return TaskBatch(mv(self.support_x), mv(self.support_y), mv(self.query_x),
                         mv(self.query_y), mv(self.context), dict(self.info))


class _Seeded:
    """A task source with its own ``torch.Generator``: callable, and checkpointable through
    ``state_dict`` / ``load_state_dict`` so that a resumed run draws the same tasks."""

    generator: torch.Generator

    def sample(self, n_tasks: int = 1) -> TaskBatch:  # pragma: no cover - overridden
        raise NotImplementedError

    def __call__(self, n_tasks: int = 1) -> TaskBatch:
        return self.sample(n_tasks)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


class EpisodeSampler(_Seeded):
    """Seeded N-way K-shot episodes from the examples of ``classes``.

    Each episode draws ``n_way`` distinct classes, then ``k_shot + q_queries`` distinct
    examples of each (no example appears twice in an episode); labels are relabelled
    0..n_way-1 in the order the classes were drawn, support and query are class-major.
    ``label_emb`` (C×d, indexed by the original class ids), if given, is returned per
    episode as ``context`` (n_way×d, in label order) for zero-/few-shot heads.
    Memory: one index list per class; an episode copies only its rows.
    """

    def __init__(self, X: Tensor | np.ndarray, y: Tensor | np.ndarray, n_way: int, k_shot: int,
                 q_queries: int, classes: Sequence[int] | Tensor | np.ndarray | None = None,
                 seed: int = 0, label_emb: Tensor | np.ndarray | None = None) -> None:
        X = torch.as_tensor(X)
        y = torch.as_tensor(y)
        if X.shape[0] != y.shape[0]:
            raise ValueError(f"EpisodeSampler: X has {X.shape[0]} rows but y has {y.shape[0]}")
        if y.dim() != 1 or y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
            raise ValueError(f"EpisodeSampler: y must be a 1-d integer tensor, got {y.dtype} "
                             f"{tuple(y.shape)}")
        for name, v in (("n_way", n_way), ("k_shot", k_shot), ("q_queries", q_queries)):
            if int(v) != v or v < (1 if name == "n_way" else 0):
                raise ValueError(f"EpisodeSampler: {name} must be a "
                                 f"{'positive' if name == 'n_way' else 'non-negative'} int, got {v}")
        if k_shot + q_queries == 0:
            raise ValueError("EpisodeSampler: k_shot + q_queries must be > 0")
        if classes is None:
            classes_t = torch.unique(y).to(torch.int64)
        else:
            c = np.asarray(classes)
            if c.ndim != 1 or not (np.issubdtype(c.dtype, np.integer) or c.size == 0):
                raise ValueError(f"EpisodeSampler: classes must be a 1-d list of integer class "
                                 f"ids, got {c.dtype} {c.shape}")
            classes_t = torch.as_tensor(c, dtype=torch.int64)
        if len(classes_t) < n_way:
            raise ValueError(f"EpisodeSampler: n_way={n_way} but only {len(classes_t)} classes")
        if len(torch.unique(classes_t)) != len(classes_t):
            raise ValueError("EpisodeSampler: classes contains duplicates")
        need = k_shot + q_queries
        self._index: list[Tensor] = []
        for c in classes_t.tolist():
            idx = torch.nonzero(y == c).flatten()
            if len(idx) < need:
                raise ValueError(f"EpisodeSampler: class {c} has {len(idx)} examples, fewer than "
                                 f"k_shot + q_queries = {need}")
            self._index.append(idx)
        self.X, self.y = X, y
        self.classes = classes_t
        self.n_way, self.k_shot, self.q_queries = int(n_way), int(k_shot), int(q_queries)
        self.label_emb = None if label_emb is None else torch.as_tensor(label_emb)
        if self.label_emb is not None and (int(classes_t.min()) < 0 or
                                           self.label_emb.shape[0] <= int(classes_t.max())):
            raise ValueError(f"EpisodeSampler: label_emb rows are indexed by class id, so ids "
                             f"must be in [0, {self.label_emb.shape[0]}); got "
                             f"[{int(classes_t.min())}, {int(classes_t.max())}]")
        self.generator = torch.Generator().manual_seed(int(seed))

    def _episode_indices(self) -> tuple[Tensor, Tensor, Tensor]:
        g = self.generator
        pick = torch.randperm(len(self._index), generator=g)[: self.n_way]
        sup, qry = [], []
        for j in pick.tolist():
            idx = self._index[j]
            chosen = idx[torch.randperm(len(idx), generator=g)[: self.k_shot + self.q_queries]]
            sup.append(chosen[: self.k_shot])
            qry.append(chosen[self.k_shot:])
        return torch.cat(sup), torch.cat(qry), self.classes[pick]

    def sample(self, n_tasks: int = 1) -> TaskBatch:
        """``n_tasks`` episodes stacked: support_x (T × n_way·k_shot × d), labels int64."""
        if n_tasks < 1:
            raise ValueError(f"EpisodeSampler.sample: n_tasks must be >= 1, got {n_tasks}")
        s_idx, q_idx, cls = zip(*(self._episode_indices() for _ in range(n_tasks)))
        s_idx, q_idx, cls = torch.stack(s_idx), torch.stack(q_idx), torch.stack(cls)
        lab = torch.arange(self.n_way, device=self.X.device)  # labels beside the inputs
        sy = lab.repeat_interleave(self.k_shot).expand(n_tasks, -1).contiguous()
        qy = lab.repeat_interleave(self.q_queries).expand(n_tasks, -1).contiguous()
        ctx = None if self.label_emb is None else self.label_emb[cls]
        return TaskBatch(self.X[s_idx], sy, self.X[q_idx], qy, ctx,
                         {"classes": cls, "support_index": s_idx, "query_index": q_idx})


class SinusoidTasks(_Seeded):
    """Sinusoid regression tasks of the MAML paper: ``y = A sin(x - phi)``, A ~ U[0.1, 5],
    phi ~ U[0, pi], x ~ U[-5, 5]; ``k_shot`` support and ``q_queries`` query points per task.
    ``info`` holds the amplitudes and phases (T,)."""

    def __init__(self, k_shot: int, q_queries: int, seed: int = 0,
                 amplitude: tuple[float, float] = (0.1, 5.0),
                 phase: tuple[float, float] = (0.0, math.pi),
                 x_range: tuple[float, float] = (-5.0, 5.0),
                 dtype: torch.dtype = torch.float32) -> None:
        if k_shot < 0 or q_queries < 0:
            raise ValueError(f"SinusoidTasks: k_shot and q_queries must be >= 0, got "
                             f"{k_shot}, {q_queries}")
        self.k_shot, self.q_queries = int(k_shot), int(q_queries)
        self.amplitude, self.phase, self.x_range = amplitude, phase, x_range
        self.dtype = dtype
        self.generator = torch.Generator().manual_seed(int(seed))

    def _u(self, shape: tuple[int, ...], lo: float, hi: float) -> Tensor:
        return torch.rand(shape, generator=self.generator, dtype=self.dtype) * (hi - lo) + lo

    def sample(self, n_tasks: int = 1) -> TaskBatch:
        if n_tasks < 1:
            raise ValueError(f"SinusoidTasks.sample: n_tasks must be >= 1, got {n_tasks}")
        a = self._u((n_tasks, 1, 1), *self.amplitude)
        ph = self._u((n_tasks, 1, 1), *self.phase)
        x = self._u((n_tasks, self.k_shot + self.q_queries, 1), *self.x_range)
        y = a * torch.sin(x - ph)
        k = self.k_shot
        return TaskBatch(x[:, :k], y[:, :k], x[:, k:], y[:, k:], None,
                         {"amplitude": a.flatten(), "phase": ph.flatten()})
