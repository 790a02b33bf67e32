"""Multi-task architectures: hard sharing, cross-stitch soft sharing, heads at different depths.

Every model maps ``model(x, tasks=None) -> {task: output}`` and splits its parameters into
``shared_parameters()`` (those whose per-task gradients are aggregated) and
``task_parameters(task)`` (updated by that task's loss alone). The two sets cover every
parameter exactly once (checked by :class:`~pyzsl.mtl.trainer.MultiTaskTrainer`).
"""
from __future__ import annotations

from typing import Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "MultiTaskModel",
    "HardSharing",
    "CrossStitch",
    "CrossStitchUnit",
    "HeadsAtDepths",
    "lenet_stages",
    "lenet_head",
    "multilenet",
    "multilenet_cross_stitch",
    "word_mlp",
    "word_mlp_cross_stitch",
    "word_mlp_depths",
]


class MultiTaskModel(nn.Module):
    """Base: a list of task names, a forward returning one output per requested task."""

    tasks: list[str]

    def _select(self, tasks: Iterable[str] | None) -> list[str]:
        if tasks is None:
            return list(self.tasks)
        tasks = list(tasks)
        unknown = [t for t in tasks if t not in self.tasks]
        if unknown:
            raise KeyError(f"unknown task(s) {unknown}; this model has {self.tasks}")
        return tasks

    def shared_parameters(self) -> list[nn.Parameter]:  # pragma: no cover - overridden
        raise NotImplementedError

    def task_parameters(self, task: str) -> list[nn.Parameter]:  # pragma: no cover - overridden
        raise NotImplementedError


class HardSharing(MultiTaskModel):
    """Hard parameter sharing: one trunk, one head per task (Caruana, 1997).

    ``representation(x)`` is the trunk output (used by MGDA-UB, Sener & Koltun 2018).
    """

    def __init__(self, trunk: nn.Module, heads: Mapping[str, nn.Module]) -> None:
        super().__init__()
        if not heads:
            raise ValueError("heads must name at least one task")
        self.trunk = trunk
        self.heads = nn.ModuleDict(dict(heads))
        self.tasks = list(heads)

    def representation(self, x: Tensor) -> Tensor:
        return self.trunk(x)

    def heads_forward(self, z: Tensor, tasks: Iterable[str] | None = None) -> dict[str, Tensor]:
        return {t: self.heads[t](z) for t in self._select(tasks)}

    def forward(self, x: Tensor, tasks: Iterable[str] | None = None) -> dict[str, Tensor]:
        return self.heads_forward(self.trunk(x), tasks)

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.trunk.parameters())

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return list(self.heads[task].parameters())


class CrossStitchUnit(nn.Module):
    """Cross-stitch unit (Misra et al., 2016): ``x̃_t = sum_s α_ts x_s``, α learnable (T×T).

    Initialised near the identity: ``α_tt = self_weight``, the rest shared equally.
    """

    def __init__(self, n_tasks: int, self_weight: float = 0.9) -> None:
        super().__init__()
        if n_tasks == 1:
            a = torch.ones(1, 1)
        else:
            a = torch.full((n_tasks, n_tasks), (1.0 - self_weight) / (n_tasks - 1))
            a.fill_diagonal_(self_weight)
        self.alpha = nn.Parameter(a)

    def forward(self, xs: Sequence[Tensor]) -> list[Tensor]:
        X = torch.stack(list(xs))  # T × ...
        return list(torch.tensordot(self.alpha, X, dims=([1], [0])).unbind(0))


class CrossStitch(MultiTaskModel):
    """Soft sharing with cross-stitch units (Misra et al., 2016).

    One column of stages per task (built by ``make_stages()``, so shapes agree), a cross-stitch
    unit after every stage, then each task's head on its own column. Columns and units are the
    shared parameters (every task's loss reaches them through α); heads are task parameters.
    Memory and compute: T columns, i.e. T× a single-task trunk.
    """

    def __init__(self, tasks: Sequence[str], make_stages: Callable[[], Sequence[nn.Module]],
                 heads: Mapping[str, nn.Module], self_weight: float = 0.9) -> None:
        super().__init__()
        self.tasks = list(tasks)
        if set(heads) != set(self.tasks):
            raise ValueError(f"heads {sorted(heads)} must match tasks {sorted(self.tasks)}")
        self.columns = nn.ModuleDict({t: nn.ModuleList(make_stages()) for t in self.tasks})
        n_stages = {len(c) for c in self.columns.values()}
        if len(n_stages) != 1 or 0 in n_stages:
            raise ValueError("make_stages() must return the same, non-zero number of stages each call")
        self.units = nn.ModuleList(CrossStitchUnit(len(self.tasks), self_weight) for _ in range(n_stages.pop()))
        self.heads = nn.ModuleDict({t: heads[t] for t in self.tasks})

    def forward(self, x: Tensor, tasks: Iterable[str] | None = None) -> dict[str, Tensor]:
        want = self._select(tasks)
        hs = [x] * len(self.tasks)
        for k, unit in enumerate(self.units):
            hs = unit([self.columns[t][k](h) for t, h in zip(self.tasks, hs)])
        out = dict(zip(self.tasks, hs))
        return {t: self.heads[t](out[t]) for t in want}

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.columns.parameters()) + list(self.units.parameters())

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return list(self.heads[task].parameters())


class HeadsAtDepths(MultiTaskModel):
    """Heads attached at different depths of one trunk (Søgaard & Goldberg, 2016).

    ``depths[t] = d`` feeds task t's head with the output of the first d stages, so a lower-level
    task (e.g. POS) is supervised at a lower layer than a higher-level one (e.g. supersense).
    The forward runs only as many stages as the deepest requested task needs.
    """

    def __init__(self, stages: Sequence[nn.Module], heads: Mapping[str, nn.Module],
                 depths: Mapping[str, int]) -> None:
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.heads = nn.ModuleDict(dict(heads))
        self.tasks = list(heads)
        if set(depths) != set(heads):
            raise ValueError(f"depths {sorted(depths)} must name exactly the tasks {sorted(heads)}")
        for t, d in depths.items():
            if not 1 <= int(d) <= len(self.stages):
                raise ValueError(f"depths[{t!r}] = {d} must be in 1..{len(self.stages)} (number of stages)")
        self.depths = {t: int(d) for t, d in depths.items()}
        if max(self.depths.values()) < len(self.stages):  # a stage no head reads never trains
            raise ValueError(f"no head reads past stage {max(self.depths.values())} of "
                             f"{len(self.stages)}: drop the stages beyond it")

    def forward(self, x: Tensor, tasks: Iterable[str] | None = None) -> dict[str, Tensor]:
        want = self._select(tasks)
        by_depth: dict[int, list[str]] = {}
        for t in want:
            by_depth.setdefault(self.depths[t], []).append(t)
        out: dict[str, Tensor] = {}
        h = x
        for d in range(1, max(by_depth) + 1):
            h = self.stages[d - 1](h)
            for t in by_depth.get(d, []):
                out[t] = self.heads[t](h)
        return {t: out[t] for t in want}

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.stages.parameters())

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return list(self.heads[task].parameters())


# --- ready-made models for the benchmarks (shapes from the data READMEs) ---------------------


def lenet_stages() -> list[nn.Module]:
    """MultiLeNet trunk of Sener & Koltun (2018) as three stages: conv, conv, fc → 50-d."""
    return [
        nn.Sequential(nn.Conv2d(1, 10, 5), nn.MaxPool2d(2), nn.ReLU()),
        nn.Sequential(nn.Conv2d(10, 20, 5), nn.MaxPool2d(2), nn.ReLU()),
        nn.Sequential(nn.Flatten(), nn.Linear(320, 50), nn.ReLU()),
    ]


def lenet_head(n_classes: int = 10) -> nn.Module:
    return nn.Sequential(nn.Linear(50, 50), nn.ReLU(), nn.Linear(50, n_classes))


def multilenet(tasks: Sequence[str] = ("left", "right")) -> HardSharing:
    """Shared MultiLeNet trunk + one fc(50→50)→ReLU→fc(50→10) head per task."""
    return HardSharing(nn.Sequential(*lenet_stages()), {t: lenet_head() for t in tasks})


def multilenet_cross_stitch(tasks: Sequence[str] = ("left", "right"), self_weight: float = 0.9) -> CrossStitch:
    """One MultiLeNet column per task, cross-stitched after each of its three stages."""
    return CrossStitch(tasks, lenet_stages, {t: lenet_head() for t in tasks}, self_weight)


def _mlp_stage(d_in: int, hidden: int, dropout: float) -> nn.Module:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Dropout(dropout))


def word_mlp(n_classes: Mapping[str, int], d_in: int = 384, hidden: int = 512, dropout: float = 0.3) -> HardSharing:
    """wordtasks MLP: trunk Linear(384→512)→ReLU→Dropout(0.3), one linear head per task."""
    return HardSharing(_mlp_stage(d_in, hidden, dropout), {t: nn.Linear(hidden, c) for t, c in n_classes.items()})


def word_mlp_cross_stitch(n_classes: Mapping[str, int], d_in: int = 384, hidden: int = 512,
                          dropout: float = 0.3, self_weight: float = 0.9) -> CrossStitch:
    """One MLP trunk per task, cross-stitched after the hidden layer."""
    return CrossStitch(list(n_classes), lambda: [_mlp_stage(d_in, hidden, dropout)],
                       {t: nn.Linear(hidden, c) for t, c in n_classes.items()}, self_weight)


def word_mlp_depths(n_classes: Mapping[str, int], depths: Mapping[str, int], d_in: int = 384,
                    hidden: int = 512, dropout: float = 0.3) -> HeadsAtDepths:
    """Up to two hidden layers; each task's linear head reads the layer ``depths[task]`` (1 or 2)
    (as many layers as the deepest head reads)."""
    stages = [_mlp_stage(d_in, hidden, dropout), _mlp_stage(hidden, hidden, dropout)][:max(depths.values())]
    return HeadsAtDepths(stages, {t: nn.Linear(hidden, c) for t, c in n_classes.items()}, depths)
