"""Self-learning: iterate Procrustes ↔ CSLS dictionary induction (Artetxe et al., 2017 ACL; 2018 ACL).

Starting from a seed dictionary (given pairs, identical strings, numerals) or from nothing (the
similarity-distribution initialisation of Artetxe et al., 2018 ACL), each iteration

1. fits an orthogonal map on the current dictionary (:func:`pyzsl.bli.procrustes.procrustes`);
2. induces a new dictionary among the ``vocab_cutoff`` most frequent words of each side: every
   source word's CSLS nearest target and (``direction="union"``) every target word's CSLS nearest
   source (Conneau et al., 2018), with *stochastic dictionary induction*: each similarity is kept
   with probability ``keep_prob`` (0.1 for the unsupervised start), multiplied by
   ``stochastic_multiplier`` whenever the objective has not improved by ``threshold`` for
   ``stochastic_interval`` iterations; at ``keep_prob = 1`` the same stall ends the loop.

Objective and model selection (never a test dictionary): the mean CSLS score
``2 cos − r_src − r_tgt`` of the induced (deterministic) pairs; the mapping returned is the one
of the best objective, then (optionally) refitted on its dictionary with VecMap's
whitening/re-weighting (``final_options``, Artetxe et al., 2018 AAAI).

Few seeds: the deterministic search needs a start that already aligns part of the spaces. On the
shared fi→fr data, 3 of 4 random subsets of 28–35 of the first 50 train pairs ended on a spurious
fixed point (P@1 ≈ 0, objective about half that of an alignment) where the 50 pairs find the
alignment; ``keep_prob=0.1`` (VecMap's stochastic search, minutes instead of seconds) found it
from the two failing subsets tried, and ``seed="unsupervised"`` needs no seed at all.

Cost per iteration: one sweep of the fused top-k over the ``vocab_cutoff`` × ``vocab_cutoff``
similarities (never materialised), reduced both ways: each side's top-``n_candidates``
neighbours give both CSLS r-terms and the candidate translations. Without dropout the induction
is exact: a row is accepted only if its best candidate beats an upper bound on every non-candidate
(``2·min(kth_src, kth_tgt) − r_src − r_tgt``); the rare rows that fail go through one exact biased
top-1 pass. Extra memory O((n + m)·n_candidates) besides the embeddings.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import Tensor

from pyzsl.bli.normalize import normalize
from pyzsl.bli.procrustes import LinearMap, as_pairs, procrustes, _check_matrix
from pyzsl.bli.retrieval import topk, topk_both_ways

log = logging.getLogger(__name__)

SEEDS = ("unsupervised", "identical", "numerals")
DIRECTIONS = ("forward", "backward", "union", "intersection")


# --------------------------------------------------------------------------------------------
@dataclass
class SelfLearningResult:
    """What :func:`self_learning` returns.

    ``mapping``: the selected :class:`LinearMap`; ``dictionary``: the induced pairs (n, 2) it was
    fitted on (rows of the full X / Z); ``objective``: its mean CSLS; ``history``: one dict per
    iteration (``iter, objective, keep_prob, pairs, seconds``); ``seed``: the seed pairs used.
    """

    mapping: LinearMap
    dictionary: Tensor
    objective: float
    history: list[dict[str, Any]] = field(default_factory=list)
    seed: Tensor | None = None
    converged: bool = False

    @property
    def n_iter(self) -> int:
        return len(self.history)


def unsupervised_seed(
    X: Tensor,
    Z: Tensor,
    vocab: int = 4000,
    csls_knn: int = 10,
    direction: str = "union",
    normalization: str = "unit,center,unit",
) -> Tensor:
    """Seed pairs from the similarity distributions (Artetxe et al., 2018 ACL, section 3.2).

    For the ``vocab`` most frequent words of each side: ``sqrt(X X^T)`` (via the SVD of X),
    each row sorted, normalised; words whose sorted-similarity profiles match under CSLS are
    paired (forward, backward, both or mutual nearest neighbours). Memory O(vocab²).
    """
    X = _check_matrix(X, "X")
    Z = _check_matrix(Z, "Z")
    if direction not in DIRECTIONS:
        raise ValueError(f"unsupervised_seed: direction must be one of {DIRECTIONS}, got {direction!r}")
    n = min(vocab, X.shape[0], Z.shape[0])
    if n < 2:
        raise ValueError(f"unsupervised_seed: need at least 2 words on each side, got vocab={n}")

    def profile(M: Tensor) -> Tensor:
        U, S, _ = torch.linalg.svd(M[:n].double(), full_matrices=False)
        sim = (U * S) @ U.T  # = (M M^T)^{1/2}: sharper than the raw similarities (paper, eq. 2)
        sim = sim.sort(dim=1).values
        return normalize(sim.float(), normalization)

    xs, zs = profile(X), profile(Z).to(X.device)
    sim = xs @ zs.T
    if csls_knn > 0:
        k = min(csls_knn, n)
        r_f = sim.topk(k, dim=1).values.mean(1)
        r_b = sim.topk(k, dim=0).values.mean(0)
        sim = sim - r_f[:, None] / 2 - r_b[None, :] / 2
    ar = torch.arange(n, device=sim.device)
    fwd = torch.stack([ar, sim.argmax(1)], 1)
    bwd = torch.stack([sim.argmax(0), ar], 1)
    if direction == "forward":
        return fwd.cpu()
    if direction == "backward":
        return bwd.cpu()
    if direction == "intersection":  # mutual nearest neighbours
        return fwd[bwd[fwd[:, 1], 0] == ar].cpu()
    return torch.cat([fwd, bwd]).cpu()


# --------------------------------------------------------------------------------------------
def _best_excluded_bound(a: Tensor, b: Tensor, r_row: Tensor, r_col: Tensor) -> Tensor:
    """Per row i: max over all columns j of ``2·min(a_i, b_j) − r_row_i − r_col_j``.

    An upper bound on the CSLS score of any pair (i, j) that is in neither i's top-K list
    (so cos ≤ a_i, the K-th value of row i) nor j's (cos ≤ b_j). O((n + m) log m).
    """
    order = torch.argsort(b)
    bs, rs = b[order], r_col[order]
    m = bs.numel()
    # columns with b_j >= a_i: value 2 a_i − r_j → need min r_j over the suffix
    suf_min = torch.flip(torch.cummin(torch.flip(rs, [0]), 0).values, [0])
    # columns with b_j < a_i: value 2 b_j − r_j → need max over the prefix
    pre_max = torch.cummax(2 * bs - rs, 0).values
    pos = torch.searchsorted(bs, a.contiguous())  # first column with b_j >= a_i
    neg_inf = torch.full_like(a, -math.inf)
    v_suf = torch.where(pos < m, 2 * a - suf_min[pos.clamp_max(m - 1)], neg_inf)
    v_pre = torch.where(pos > 0, pre_max[(pos - 1).clamp_min(0)], neg_inf)
    return torch.maximum(v_suf, v_pre) - r_row


def _argmax_sparse(rows: Tensor, cols: Tensor, vals: Tensor, n_rows: int) -> tuple[Tensor, Tensor]:
    """Per row: (best value, its column; ties → smaller column) of a COO list; -inf/-1 if empty."""
    best = torch.full((n_rows,), -math.inf, dtype=vals.dtype, device=vals.device)
    best.scatter_reduce_(0, rows, vals, reduce="amax", include_self=True)
    hit = vals == best[rows]
    big = torch.iinfo(torch.int64).max
    col = torch.full((n_rows,), big, dtype=torch.int64, device=vals.device)
    col.scatter_reduce_(0, rows[hit], cols[hit], reduce="amin", include_self=True)
    col[col == big] = -1
    return best, col


@dataclass
class _Induced:
    pairs: Tensor          # (p, 2) source row, target row (the dictionary used for the next fit)
    best_pairs: Tensor     # the same without dropout (deterministic CSLS best pairs)
    objective: float       # mean CSLS of the deterministic best pairs
    exact_fallback: int    # rows that needed the exact pass


def induce_dictionary(
    xw: Tensor,
    zw: Tensor,
    csls_knn: int = 10,
    direction: str = "union",
    keep_prob: float = 1.0,
    n_candidates: int = 32,
    generator: torch.Generator | None = None,
    backend: str = "auto",
) -> _Induced:
    """CSLS dictionary induction between mapped spaces ``xw`` (n × d) and ``zw`` (m × d).

    Returns the pairs (forward: each source row's best target; backward: each target's best
    source; union: both) and the mean CSLS score of the deterministic best pairs. With
    ``keep_prob < 1`` each candidate similarity is dropped with probability ``1 − keep_prob``
    before the argmax (Artetxe et al., 2018 ACL) — among the ``n_candidates`` nearest neighbours
    of each side, which hold the best pair with probability ≥ 1 − (1 − keep_prob)^n_candidates.
    """
    n, m = xw.shape[0], zw.shape[0]
    K = min(max(n_candidates, csls_knn, 1), n, m)
    knn = min(csls_knn, K)
    # source rows → target neighbours, target rows → source neighbours
    (vf, jf), (vb, ib) = topk_both_ways(xw, zw, K, backend=backend)
    jf, ib = jf.long(), ib.long()
    if knn > 0:
        r_src, r_tgt = vf[:, :knn].mean(1), vb[:, :knn].mean(1)
    else:
        r_src, r_tgt = torch.zeros(n, device=xw.device), torch.zeros(m, device=xw.device)
    # all known (i, j, cos) from both lists; duplicates removed so dropout draws once per pair
    ar_n = torch.arange(n, device=xw.device).repeat_interleave(K)
    ar_m = torch.arange(m, device=xw.device).repeat_interleave(K)
    rows = torch.cat([ar_n, ib.reshape(-1)])
    cols = torch.cat([jf.reshape(-1), ar_m])
    cos = torch.cat([vf.reshape(-1), vb.reshape(-1)])
    key, first = torch.unique(rows * m + cols, return_inverse=True)
    uniq_cos = torch.empty(key.numel(), dtype=cos.dtype, device=cos.device).scatter_(0, first, cos)
    rows, cols, cos = key // m, key % m, uniq_cos
    csls = 2 * cos - r_src[rows] - r_tgt[cols]

    if direction not in DIRECTIONS:
        raise ValueError(f"induce_dictionary: direction must be one of {DIRECTIONS}, got {direction!r}")
    a_f, a_b = vf[:, K - 1], vb[:, K - 1]
    det, sto, objs, fallback = {}, {}, [], 0
    # both sides always: the objective scores the map, whatever dictionary is built from it
    for name, r, c, n_r, a, b, rr, rc, Q, T in (
        ("fwd", rows, cols, n, a_f, a_b, r_src, r_tgt, xw, zw),
        ("bwd", cols, rows, m, a_b, a_f, r_tgt, r_src, zw, xw),
    ):
        best, arg = _argmax_sparse(r, c, csls, n_r)
        if K < T.shape[0]:
            # exactness certificate: non-candidates cannot beat the bound
            bound = _best_excluded_bound(a, b, rr, rc)
            bad = (best < bound).nonzero().squeeze(1)
        else:
            bad = torch.empty(0, dtype=torch.long, device=Q.device)
        if bad.numel():
            fallback += int(bad.numel())
            _, j = topk(Q[bad], T, 1, bias=-rc / 2, backend=backend)
            j = j[:, 0].long()
            arg[bad] = j
            best[bad] = 2 * (Q[bad] * T[j]).sum(1) - rr[bad] - rc[j]
        objs.append(best.mean())
        det[name] = arg
        if keep_prob < 1.0:
            keep = torch.rand(csls.shape, generator=generator).to(csls.device) < keep_prob
            _, sarg = _argmax_sparse(r[keep], c[keep], csls[keep], n_r)
            # a row whose candidates were all dropped keeps its deterministic choice
            sto[name] = torch.where(sarg >= 0, sarg, arg)
        else:
            sto[name] = arg
    objective = float(torch.stack(objs).mean())
    return _Induced(_combine(sto, direction).cpu(), _combine(det, direction).cpu(), objective, fallback)


def _combine(best: dict[str, Tensor], direction: str) -> Tensor:
    """Per-side choices (``fwd[i]``: target of source i; ``bwd[j]``: source of target j) → pairs."""
    fwd, bwd = best["fwd"], best["bwd"]
    f_pairs = torch.stack([torch.arange(fwd.numel(), device=fwd.device), fwd], 1)
    b_pairs = torch.stack([bwd, torch.arange(bwd.numel(), device=bwd.device)], 1)
    if direction == "forward":
        return f_pairs
    if direction == "backward":
        return b_pairs
    if direction == "union":
        return torch.cat([f_pairs, b_pairs])
    return f_pairs[bwd[fwd] == f_pairs[:, 0]]  # intersection: mutual nearest neighbours



# --------------------------------------------------------------------------------------------
def _resolve_seed(seed, X, Z, src_words, tgt_words, unsup_vocab, csls_knn) -> Tensor:
    if seed is None:
        raise ValueError(
            "self_learning: seed is required: pairs (n, 2), 'identical', 'numerals' or 'unsupervised'"
        )
    if isinstance(seed, str):
        if seed not in SEEDS:
            raise ValueError(f"self_learning: unknown seed {seed!r}; use pairs or one of {SEEDS}")
        if seed == "unsupervised":
            return unsupervised_seed(X, Z, vocab=unsup_vocab, csls_knn=csls_knn)
        if src_words is None or tgt_words is None:
            raise ValueError(f"self_learning: seed={seed!r} needs src_words and tgt_words")
        from pyzsl.bli import dictionary

        fn = dictionary.identical_seed if seed == "identical" else dictionary.numeral_seed
        d = fn(src_words, tgt_words)  # raises when the vocabularies share no such word
        return torch.as_tensor(d.indices(src_words, tgt_words)).long().reshape(-1, 2)
    return as_pairs(seed, X.shape[0], Z.shape[0], name="seed")


def self_learning(
    X: Tensor,
    Z: Tensor,
    seed: Tensor | str | Sequence | None,
    *,
    src_words: Sequence[str] | None = None,
    tgt_words: Sequence[str] | None = None,
    vocab_cutoff: int = 10000,
    csls_knn: int = 10,
    direction: str | None = None,
    keep_prob: float | None = None,
    stochastic_multiplier: float = 2.0,
    stochastic_interval: int = 50,
    stochastic_cutoff: int | None = 4000,
    patience: int = 3,
    threshold: float = 1e-3,
    max_iter: int = 1000,
    keep_seed: bool | None = None,
    n_candidates: int = 32,
    unsupervised_vocab: int = 4000,
    final_options: dict[str, Any] | None = None,
    device: str | torch.device | None = None,
    backend: str = "auto",
    random_state: int = 0,
    progress: bool = True,
) -> SelfLearningResult:
    """Self-learning map from ``X`` (source, n × d) to ``Z`` (target, m × d).

    Both should be normalised (``normalize(X)``) and sorted by decreasing frequency (the first
    ``vocab_cutoff`` rows take part in the induction). ``seed``: int pairs (n, 2) of rows, or
    ``"identical"`` / ``"numerals"`` (need ``src_words``/``tgt_words``) or ``"unsupervised"``.
    ``keep_prob``: initial probability of stochastic induction (default 0.1 for the unsupervised
    seed, 1.0 otherwise). ``direction``: the dictionary induced at each iteration (default ``"union"``
    when ``keep_prob < 1``, as VecMap's stochastic search; ``"intersection"``, MUSE's mutual
    nearest neighbours, otherwise). ``keep_seed``: always add the seed pairs to the induced dictionary
    (default: for a given dictionary of pairs, not for the heuristic seeds ``"identical"``,
    ``"numerals"``, ``"unsupervised"``, whose wrong pairs would stay forever).
    ``stochastic_interval``: while ``keep_prob < 1``, iterations without an objective gain of
    ``threshold`` before ``keep_prob`` is multiplied by ``stochastic_multiplier`` (VecMap: 50);
    ``patience``: the same count at ``keep_prob = 1``, after which the loop ends.
    ``stochastic_cutoff``: vocabulary cutoff while ``keep_prob < 1`` (default 4000, the size of
    the unsupervised initialisation; ``None``: ``vocab_cutoff``). VecMap searches among its 20k
    words throughout; the stochastic phases take hundreds of iterations, so we run them on the
    most frequent words (the best-connected part of the spaces, as MUSE's refinement does) and
    move to ``vocab_cutoff`` for the deterministic phase. Objectives of different cutoffs are not
    comparable: the selected map is the best of the ``vocab_cutoff`` phase.
    ``final_options``: keyword options of :func:`procrustes` for the last fit
    (e.g. ``VECMAP_SUPERVISED``); ``None`` keeps the orthogonal map.
    """
    X = _check_matrix(X, "X")
    Z = _check_matrix(Z, "Z")
    if X.shape[1] != Z.shape[1]:
        raise ValueError(f"self_learning: X has {X.shape[1]} dims, Z has {Z.shape[1]} (orthogonal maps need equal dims)")
    if direction is not None and direction not in DIRECTIONS:
        raise ValueError(f"self_learning: direction must be one of {DIRECTIONS}, got {direction!r}")
    if vocab_cutoff < 1:
        raise ValueError(f"self_learning: vocab_cutoff must be >= 1, got {vocab_cutoff}")
    if keep_prob is not None and not 0 < keep_prob <= 1:
        raise ValueError(f"self_learning: keep_prob must be in (0, 1], got {keep_prob}")
    if max_iter < 1:
        raise ValueError(f"self_learning: max_iter must be >= 1, got {max_iter}")
    if stochastic_interval < 1 or patience < 1:
        raise ValueError(f"self_learning: stochastic_interval and patience must be >= 1, got "
                         f"{stochastic_interval} and {patience}")
    if stochastic_cutoff is not None and stochastic_cutoff < 1:
        raise ValueError(f"self_learning: stochastic_cutoff must be >= 1 or None, got {stochastic_cutoff}")
    if stochastic_multiplier <= 1:
        raise ValueError(f"self_learning: stochastic_multiplier must be > 1, got {stochastic_multiplier}")
    device = torch.device(device) if device is not None else X.device
    if X.dtype != Z.dtype or X.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"self_learning: X is {X.dtype}, Z is {Z.dtype}: give both as float32 or "
                         "both as float64")
    X, Z = X.to(device), Z.to(device)  # the map comes back in the input's dtype
    seed_pairs = _resolve_seed(seed, X, Z, src_words, tgt_words, unsupervised_vocab, csls_knn)
    if keep_prob is None:
        keep_prob = 0.1 if isinstance(seed, str) and seed == "unsupervised" else 1.0
    if direction is None:  # VecMap's union for its stochastic search, MUSE's mutual NN otherwise
        direction = "union" if keep_prob < 1.0 else "intersection"
    if keep_seed is None:
        keep_seed = not isinstance(seed, str)

    gen = torch.Generator().manual_seed(random_state)

    def cutoff(p: float) -> tuple[int, int]:
        c = vocab_cutoff if p >= 1.0 or stochastic_cutoff is None else min(stochastic_cutoff, vocab_cutoff)
        return min(c, X.shape[0]), min(c, Z.shape[0])

    from tqdm.auto import tqdm

    pairs = seed_pairs
    history: list[dict[str, Any]] = []
    best, best_cut = (-math.inf, None, None), None  # objective, mapping, dictionary; its cutoffs
    best_obj, last_improvement, converged = -math.inf, 0, False
    bar = tqdm(total=max_iter, desc="self-learning", unit="it", disable=not progress, leave=False)
    try:
        for it in range(max_iter):
            t0 = time.perf_counter()
            n_cut, m_cut = cutoff(keep_prob)
            W = procrustes(X, Z, pairs)
            ind = induce_dictionary(W.map_src(X[:n_cut]), Z[:m_cut], csls_knn=csls_knn,
                                    direction=direction, keep_prob=keep_prob,
                                    n_candidates=n_candidates, generator=gen, backend=backend)
            # the objective scores W (the pairs it induces deterministically)
            if ind.objective > best[0] or best_cut != (n_cut, m_cut):
                best, best_cut = (ind.objective, W, ind.best_pairs), (n_cut, m_cut)
            pairs = torch.cat([ind.pairs, seed_pairs]) if keep_seed else ind.pairs
            history.append(dict(iter=it, objective=ind.objective, keep_prob=keep_prob, cutoff=n_cut,
                                pairs=int(ind.pairs.shape[0]), exact_fallback=ind.exact_fallback,
                                seconds=time.perf_counter() - t0))
            bar.update(1)
            bar.set_postfix(obj=f"{ind.objective:.4f}", p=keep_prob)
            log.info("self-learning it %d: objective %.5f keep_prob %.3g cutoff %d (%d rows re-checked)",
                     it, ind.objective, keep_prob, n_cut, ind.exact_fallback)
            if ind.objective - best_obj >= threshold:
                best_obj, last_improvement = ind.objective, it
            if it - last_improvement >= (patience if keep_prob >= 1.0 else stochastic_interval):
                if keep_prob >= 1.0:
                    converged = True
                    break
                keep_prob = min(1.0, keep_prob * stochastic_multiplier)
                last_improvement = it
                if cutoff(keep_prob) != (n_cut, m_cut):
                    best_obj = -math.inf  # a new vocabulary: its objectives start afresh
    finally:
        bar.close()
    # one last fit on the dictionary that the selected map induces (deterministically)
    objective, W, dico = best
    if keep_seed:
        dico = torch.cat([dico, seed_pairs])
    W = procrustes(X, Z, dico, **(final_options or {}))
    return SelfLearningResult(W, dico, objective, history, seed_pairs, converged)
