"""Multi-task learning: gradient aggregators, sharing architectures, a trainer, data loaders.

    from pyzsl.mtl import MultiTaskTrainer, PCGrad, multilenet, load_multidigits
    X, ys = load_multidigits("train")
    model = multilenet(("left", "right"))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    MultiTaskTrainer(model, PCGrad(), opt).fit((X, ys), steps=1000, batch_size=256)
"""
from pyzsl.mtl.aggregators import (AGGREGATORS, CAGrad, Equal, Fixed, GradNorm, IMTLG, MGDA, PCGrad,
                                   Aggregator, Uncertainty, make_aggregator, min_norm_weights)
from pyzsl.mtl.data import load_multidigits, load_wordtasks
from pyzsl.mtl.models import (CrossStitch, CrossStitchUnit, HardSharing, HeadsAtDepths, MultiTaskModel,
                              lenet_head, lenet_stages, multilenet, multilenet_cross_stitch, word_mlp,
                              word_mlp_cross_stitch, word_mlp_depths)
from pyzsl.mtl.trainer import MultiTaskTrainer, evaluate

__all__ = [
    "AGGREGATORS", "Aggregator", "CAGrad", "Equal", "Fixed", "GradNorm", "IMTLG", "MGDA", "PCGrad",
    "Uncertainty", "make_aggregator", "min_norm_weights",
    "load_multidigits", "load_wordtasks",
    "CrossStitch", "CrossStitchUnit", "HardSharing", "HeadsAtDepths", "MultiTaskModel", "lenet_head",
    "lenet_stages", "multilenet", "multilenet_cross_stitch", "word_mlp", "word_mlp_cross_stitch",
    "word_mlp_depths",
    "MultiTaskTrainer", "evaluate",
]
