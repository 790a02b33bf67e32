"""Meta-learning: functional MAML / FO-MAML (Finn et al., 2017), episodic few-shot sampling,
a meta-training loop, few-shot baselines and a bilinear few-shot zero-shot head."""
from .baselines import finetune_predict, nearest_class_mean, nearest_neighbour, pretrain_classifier, prototypes
from .data import WordCats, load_wordcats
from .episodes import EpisodeSampler, SinusoidTasks, TaskBatch
from .heads import BilinearHingeLoss, BilinearMetricHead, bilinear_accuracy, bilinear_maml
from .maml import MAML, maml_loss
from .trainer import MetaTrainer, evaluate_tasks, mean_ci95

__all__ = ["MAML", "maml_loss", "EpisodeSampler", "SinusoidTasks", "TaskBatch", "MetaTrainer",
           "evaluate_tasks", "mean_ci95", "prototypes", "nearest_class_mean", "nearest_neighbour",
           "pretrain_classifier", "finetune_predict", "BilinearMetricHead", "BilinearHingeLoss",
           "bilinear_accuracy", "bilinear_maml", "WordCats", "load_wordcats"]
