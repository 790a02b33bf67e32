"""Bilingual lexicon induction: embeddings I/O, dictionaries, mapping, retrieval, evaluation.

    from pyzsl import bli
    al = bli.align("fr.vec", "fi.vec", train_dict="fr-fi.train.txt")
    al.translate(["chat", "maison"], k=5)
    al.evaluate("fr-fi.test.txt", retrieval="csls")   # {"p@1": ..., "p@5": ..., "p@10": ..., "coverage": ...}

Submodules: :mod:`~pyzsl.bli.io` (load/save vectors), :mod:`~pyzsl.bli.dictionary` (MUSE
dictionaries, seeds), :mod:`~pyzsl.bli.normalize`, :mod:`~pyzsl.bli.procrustes`,
:mod:`~pyzsl.bli.rcsls`, :mod:`~pyzsl.bli.self_learning` (mapping methods),
:mod:`~pyzsl.bli.retrieval` (NN, CSLS, inverted softmax), :mod:`~pyzsl.bli.sharded` (the
same with the targets split across ``torch.distributed`` ranks), :mod:`~pyzsl.bli.evaluate`,
:mod:`~pyzsl.bli.alignment` (the end-to-end pipeline).
"""
from __future__ import annotations

from pyzsl.bli.alignment import Alignment, align
from pyzsl.bli.dictionary import (Dictionary, build_seed, identical_seed, load_dictionary,
                                  numeral_seed)
from pyzsl.bli.evaluate import evaluate, evaluate_all
from pyzsl.bli.io import Embeddings, load_embeddings, save_embeddings
from pyzsl.bli.normalize import normalize
from pyzsl.bli.procrustes import LinearMap, procrustes
from pyzsl.bli.rcsls import rcsls
from pyzsl.bli.retrieval import Retriever, csls, inverted_softmax, knn_mean, nn, retrieve, topk
from pyzsl.bli.self_learning import self_learning, unsupervised_seed

# As in torch.nn.functional, the main function of a module shares its name: `bli.procrustes`,
# `bli.rcsls`, `bli.self_learning`, `bli.normalize` and `bli.evaluate` are functions. Their
# modules stay importable by path (`from pyzsl.bli.rcsls import rcsls_objective`).

__all__ = [
    "align", "Alignment", "Embeddings", "load_embeddings", "save_embeddings", "Dictionary",
    "load_dictionary", "identical_seed", "numeral_seed", "build_seed", "normalize",
    "LinearMap", "procrustes", "rcsls", "self_learning", "unsupervised_seed", "nn", "csls", "inverted_softmax",
    "retrieve", "topk", "knn_mean", "Retriever", "evaluate", "evaluate_all",
]
