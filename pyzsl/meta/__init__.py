"""Meta-learning: functional MAML / FO-MAML (Finn et al., 2017), episodic few-shot sampling,
a meta-training loop, few-shot baselines and a bilinear few-shot zero-shot head."""
from .episodes import EpisodeSampler, SinusoidTasks, TaskBatch
from .maml import MAML, maml_loss
from .trainer import MetaTrainer, evaluate_tasks, mean_ci95

__all__ = ["MAML", "maml_loss", "EpisodeSampler", "SinusoidTasks", "TaskBatch", "MetaTrainer",
           "evaluate_tasks", "mean_ci95"]
