"""Evaluation metrics on tensors: retrieval ranks, recall@K, zero-shot scores, top-k, confusion, ROC/AUROC, F1.

Pure functions on float32 embeddings, similarities or class scores (shapes in each
docstring); no model, loader or file. The registered evaluators
(:mod:`alignkit.core.evaluators`) and the figures (:mod:`alignkit.core.plots`) build on them.

Rank rule used everywhere (retrieval and top-k accuracy): ties count against the
query. For one query with score row ``s`` (G,) and correct set ``P``::

    rank = 1 + #{ j not in P : s_j >= max_{p in P} s_p }

so the best-scored correct item decides (any correct item is a hit), and a wrong
item scored equal to it is ranked ahead of it. A constant similarity therefore
gives rank G, never a lucky rank 1.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

# --------------------------------------------------------------------------- retrieval


def _positive_mask(sim: Tensor, positives: Optional[Tensor]) -> Tensor:
    """Bool (Q, G) mask of the correct gallery items of each query.

    ``positives``: None -> query i matches gallery item i (needs Q == G);
    integer (Q,) -> gallery index of each query's match; bool (Q, G) -> as is.
    """
    q, g = sim.shape
    if positives is None:
        if q != g:
            raise ValueError(f"similarity is {q}x{g}; without `positives` query i must match gallery item i, "
                             "so pass positives as bool (Q, G) or a gallery index per query")
        return torch.eye(q, dtype=torch.bool, device=sim.device)
    if positives.dtype == torch.bool:
        if positives.shape != sim.shape:
            raise ValueError(f"bool positives have shape {tuple(positives.shape)}, similarity {tuple(sim.shape)}; "
                             "they must be equal")
        return positives.to(sim.device)
    if positives.shape != (q,) or positives.is_floating_point():
        raise ValueError(f"positives must be bool (Q, G) or integer (Q,) with Q={q}; "
                         f"got {positives.dtype} {tuple(positives.shape)}")
    if q and (positives.min() < 0 or positives.max() >= g):
        raise ValueError(f"gallery index in positives out of range [0, {g}): "
                         f"min {int(positives.min())}, max {int(positives.max())}")
    return F.one_hot(positives.long(), g).bool().to(sim.device)


def retrieval_ranks(sim: Tensor, positives: Optional[Tensor] = None) -> Tensor:
    """1-based rank of the best correct gallery item per query; ties count against the query.

    ``rank_i = 1 + #{j wrong for i : sim[i, j] >= max_{p correct for i} sim[i, p]}``.

    Args:
        sim: (Q, G) scores, higher = more similar.
        positives: None (query i <-> gallery i), integer (Q,) gallery index per
            query, or bool (Q, G) marking every correct gallery item.
    Returns:
        LongTensor (Q,) with values in [1, G].
    """
    if sim.dim() != 2:
        raise ValueError(f"similarity must be (Q, G); got shape {tuple(sim.shape)}")
    if torch.isnan(sim).any():
        raise ValueError("similarity contains NaN; check the embeddings (all-zero vectors normalise to NaN)")
    pos = _positive_mask(sim, positives)
    missing = (~pos.any(1)).nonzero().flatten()
    if len(missing):
        raise ValueError(f"queries {missing[:5].tolist()} have no correct gallery item; every query needs one")
    best = sim.masked_fill(~pos, -math.inf).amax(1, keepdim=True)
    return 1 + ((sim >= best) & ~pos).sum(1)


def rank_metrics(ranks: Tensor, ks: Sequence[int] = (1, 5, 10), prefix: str = "") -> Dict[str, float]:
    """``{prefix}R@k`` = fraction of ranks <= k, ``{prefix}median_rank`` (numpy-style median,
    the mean of the two middle ranks for an even count) and ``{prefix}mean_rank`` of ranks (Q,)."""
    r = ranks.double()
    out = {f"{prefix}R@{k}": float((r <= k).double().mean()) for k in ks}
    out[f"{prefix}median_rank"] = float(r.quantile(0.5))
    out[f"{prefix}mean_rank"] = float(r.mean())
    return out


def retrieval_metrics(sim: Tensor, positives: Optional[Tensor] = None,
                      ks: Sequence[int] = (1, 5, 10)) -> Dict[str, float]:
    """R@k, median and mean rank of a (Q, G) similarity; see :func:`retrieval_ranks` for ``positives``
    and the tie rule. Keys: ``R@1``, ..., ``median_rank``, ``mean_rank``."""
    return rank_metrics(retrieval_ranks(sim, positives), ks)


def recall_curve_from_ranks(ranks: Tensor, max_k: int) -> Tensor:
    """Float (max_k,): entry k-1 is the fraction of ranks (Q,) that are <= k."""
    k = torch.arange(1, max_k + 1, device=ranks.device)
    return (ranks[:, None] <= k[None, :]).double().mean(0).float()


def recall_at_k_curve(sim: Tensor, positives: Optional[Tensor], max_k: int) -> Tensor:
    """Recall@k for k = 1..max_k of a (Q, G) similarity, as float (max_k,)
    (for :func:`~alignkit.core.plots.plot_recall_at_k`)."""
    return recall_curve_from_ranks(retrieval_ranks(sim, positives), max_k)


def _group_positives(groups_a: Optional[Tensor], groups_b: Optional[Tensor], n_a: int, n_b: int) -> Optional[Tensor]:
    """Bool (n_a, n_b) ``groups_a[i] == groups_b[j]``, or None (paired: item i <-> item i)."""
    if (groups_a is None) != (groups_b is None):
        raise ValueError("pass both groups_a and groups_b, or neither")
    if groups_a is None:
        return None
    if groups_a.shape != (n_a,) or groups_b.shape != (n_b,):
        raise ValueError(f"groups_a {tuple(groups_a.shape)} / groups_b {tuple(groups_b.shape)} must be "
                         f"({n_a},) / ({n_b},), one group id per embedding")
    return groups_a[:, None] == groups_b[None, :]


def group_ids(values: Union[Tensor, List[str]]) -> Tensor:
    """LongTensor (N,) from a numeric tensor or a list of strings (equal strings -> equal ids), e.g. the
    ``group`` field of :func:`~alignkit.core.embeddings.embed_loader` for :func:`bidirectional_ranks`."""
    if isinstance(values, Tensor):
        return values.long()
    index: Dict[str, int] = {}
    return torch.tensor([index.setdefault(v, len(index)) for v in values])


def candidate_blocks(n: int, num_candidates: Optional[int], seed: int = 0) -> List[Tensor]:
    """Index blocks for retrieval among ``num_candidates`` items.

    None -> one block of all ``n`` items. Otherwise the items are shuffled with
    ``seed`` and cut into ``n // num_candidates`` consecutive blocks of exactly
    ``num_candidates`` (the remainder is dropped, as in the 5x1K COCO protocol);
    if ``n < num_candidates`` one block of all items is used, with a warning.
    """
    if num_candidates is None or num_candidates >= n:
        if num_candidates is not None and num_candidates > n:
            warnings.warn(f"num_candidates={num_candidates} exceeds the {n} test items; evaluating all {n}")
        return [torch.arange(n)]
    if num_candidates < 1:
        raise ValueError(f"num_candidates must be >= 1 or None; got {num_candidates}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return list(perm[: (n // num_candidates) * num_candidates].split(num_candidates))


def bidirectional_ranks(a: Tensor, b: Tensor, groups_a: Optional[Tensor] = None, groups_b: Optional[Tensor] = None,
                        num_candidates: Optional[int] = None, seed: int = 0) -> Tuple[Tensor, Tensor]:
    """Ranks for a->b and b->a retrieval with cosine similarity ``a @ b.T``.

    Args:
        a: (N, D) and b: (M, D) L2-normalised embeddings.
        groups_a, groups_b: optional integer (N,), (M,): a and b items are correct
            for each other iff their group ids are equal. Without groups, a[i]
            matches only b[i] (needs N == M).
        num_candidates: if set, a and b must be paired (N == M); retrieval runs
            inside each block of :func:`candidate_blocks` and ranks are pooled.
    Returns:
        (ranks_a2b, ranks_b2a): LongTensors, 1-based, tie rule of :func:`retrieval_ranks`.
    """
    if num_candidates is None:
        sim = a @ b.T
        pos = _group_positives(groups_a, groups_b, len(a), len(b))
        return retrieval_ranks(sim, pos), retrieval_ranks(sim.T, None if pos is None else pos.T)
    if len(a) != len(b):
        raise ValueError(f"num_candidates needs paired embeddings (N == M); got {len(a)} and {len(b)}")
    a2b, b2a = [], []
    for idx in candidate_blocks(len(a), num_candidates, seed):
        ga = None if groups_a is None else groups_a[idx]
        gb = None if groups_b is None else groups_b[idx]
        r_ab, r_ba = bidirectional_ranks(a[idx], b[idx], ga, gb)
        a2b.append(r_ab)
        b2a.append(r_ba)
    return torch.cat(a2b), torch.cat(b2a)


def bidirectional_retrieval(a: Tensor, b: Tensor, groups_a: Optional[Tensor] = None,
                            groups_b: Optional[Tensor] = None, ks: Sequence[int] = (1, 5, 10),
                            names: Tuple[str, str] = ("a", "b"), num_candidates: Optional[int] = None,
                            seed: int = 0) -> Dict[str, float]:
    """Retrieval metrics both ways between embeddings a (N, D) and b (M, D).

    Keys ``{names[0]}2{names[1]}_R@k``, ``..._median_rank``, ``..._mean_rank`` and the
    same for ``{names[1]}2{names[0]}``; e.g. ``names=("image", "text")`` gives
    ``image2text_R@1`` and ``text2image_R@1``. Arguments as :func:`bidirectional_ranks`.
    """
    r_ab, r_ba = bidirectional_ranks(a, b, groups_a, groups_b, num_candidates, seed)
    return {**rank_metrics(r_ab, ks, f"{names[0]}2{names[1]}_"), **rank_metrics(r_ba, ks, f"{names[1]}2{names[0]}_")}


# --------------------------------------------------------------------------- zero-shot and single-label


def class_embeddings(embed_text: Callable[[List[str]], Tensor], class_names: Sequence[str],
                     templates: Sequence[str] = ("{}",), batch_size: int = 256) -> Tensor:
    """Prompt-ensemble class embeddings (CLIP's zero-shot recipe).

    Every template has a ``{}`` placeholder replaced by each class name;
    ``e_c = normalize(mean_t normalize(embed_text(template_t(c))))``.

    Args:
        embed_text: list of T strings -> (T, D) embeddings; called in chunks of ``batch_size``.
    Returns:
        (C, D) float32, rows L2-normalised, in ``class_names`` order.
    """
    bad = [t for t in templates if "{}" not in t]
    if bad or not templates:
        raise ValueError(f"every template needs a '{{}}' placeholder for the class name; bad: {bad or templates}")
    prompts = [t.replace("{}", name) for name in class_names for t in templates]
    emb = torch.cat([embed_text(prompts[i:i + batch_size]) for i in range(0, len(prompts), batch_size)])
    emb = F.normalize(emb.float(), dim=-1).view(len(class_names), len(templates), -1).mean(1)
    return F.normalize(emb, dim=-1)


def zero_shot_predict(embeds: Tensor, class_embeds: Tensor) -> Tensor:
    """Cosine-similarity logits (N, C) = normalize(embeds (N, D)) @ normalize(class_embeds (C, D)).T."""
    return F.normalize(embeds.float(), dim=-1) @ F.normalize(class_embeds.float(), dim=-1).T


def topk_accuracy(logits: Tensor, labels: Tensor, ks: Sequence[int] = (1, 5)) -> Dict[str, float]:
    """``top{k}``: fraction of rows of logits (N, C) whose label (N,) ranks <= k.

    Ties count against the prediction (rank rule in the module docstring), so a
    label tied with another class is not a top-1 hit. For k >= C the accuracy is 1.
    """
    ranks = retrieval_ranks(logits, labels.long())
    return {f"top{k}": float((ranks <= k).double().mean()) for k in ks}


def confusion_matrix(pred: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """LongTensor (C, C); entry [t, p] counts items of true class t predicted as p. pred, labels: (N,)."""
    idx = labels.long() * num_classes + pred.long()
    return torch.bincount(idx, minlength=num_classes * num_classes).view(num_classes, num_classes)


def per_class_accuracy(pred: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Float (C,): recall of each class, ``cm[c, c] / sum_p cm[c, p]``; NaN for classes absent from labels."""
    cm = confusion_matrix(pred, labels, num_classes).double()
    return (cm.diagonal() / cm.sum(1)).float()


# --------------------------------------------------------------------------- multi-label


def _threshold_counts(scores: Tensor, targets: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """Cumulative (thresholds, tp, fp) when predicting ``score >= threshold``, over the distinct
    scores in descending order. scores, targets: (N,), targets in {0, 1, -1}; -1 entries are dropped."""
    if not bool(((targets == 0) | (targets == 1) | (targets == -1)).all()):
        raise ValueError(f"targets must be 0, 1 or -1 (ignore); got values {targets.unique()[:10].tolist()}")
    keep = targets >= 0
    s, t = scores[keep].double(), targets[keep].double()
    order = torch.argsort(s, descending=True, stable=True)
    s, t = s[order], t[order]
    last = torch.ones_like(s, dtype=torch.bool)
    last[:-1] = s[1:] != s[:-1]
    return s[last], torch.cumsum(t, 0)[last], torch.cumsum(1 - t, 0)[last]


def roc_curve(scores: Tensor, targets: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """ROC of one binary task: (fpr, tpr, thresholds), each (T+1,), starting at (0, 0) with threshold +inf.

    scores, targets: (N,); targets 1 = positive, 0 = negative, -1 = ignored.
    NaN rates if the kept targets hold no positives (tpr) or no negatives (fpr).
    """
    thr, tp, fp = _threshold_counts(scores, targets)
    zero = torch.zeros(1, dtype=torch.float64)
    p, n = (tp[-1], fp[-1]) if len(tp) else (zero[0], zero[0])
    return torch.cat([zero, fp]) / n, torch.cat([zero, tp]) / p, torch.cat([zero + math.inf, thr])


def binary_auroc(scores: Tensor, targets: Tensor) -> float:
    """Area under the ROC of scores (N,) vs targets (N,) in {0, 1, -1 = ignore}.

    Trapezoids between distinct thresholds, so tied scores count 1/2 (the
    Mann-Whitney U statistic, same as ``sklearn.metrics.roc_auc_score``).
    NaN when the kept targets hold only one class.
    """
    fpr, tpr, _ = roc_curve(scores, targets)
    if torch.isnan(fpr).any() or torch.isnan(tpr).any():
        return math.nan
    return float(torch.trapezoid(tpr, fpr))


def multilabel_auroc(scores: Tensor, targets: Tensor,
                     class_names: Optional[Sequence[str]] = None) -> Dict[str, float]:
    """Per-class AUROC of scores (N, C) vs targets (N, C) in {0, 1, -1 = ignore}, plus their mean.

    Keys: each class name (``str(c)`` without names) and ``"mean"``. A class whose
    kept targets hold only positives or only negatives has no AUROC: it is
    reported as NaN and left out of the mean (NaN if no class has one).
    """
    if scores.shape != targets.shape or scores.dim() != 2:
        raise ValueError(f"scores {tuple(scores.shape)} and targets {tuple(targets.shape)} must both be (N, C)")
    names = [str(c) for c in range(scores.shape[1])] if class_names is None else list(class_names)
    if len(names) != scores.shape[1]:
        raise ValueError(f"{len(names)} class names for {scores.shape[1]} score columns")
    out = {name: binary_auroc(scores[:, c], targets[:, c]) for c, name in enumerate(names)}
    defined = [v for v in out.values() if not math.isnan(v)]
    out["mean"] = sum(defined) / len(defined) if defined else math.nan
    return out


@dataclass
class ThresholdF1:
    """Best F1 per class and the threshold reaching it (predict positive iff score >= threshold)."""

    f1: Tensor  # (C,) float, NaN for classes without positives
    threshold: Tensor  # (C,) float, NaN for classes without positives


def f1_at_optimal_threshold(scores: Tensor, targets: Tensor) -> ThresholdF1:
    """Per class, the highest F1 over thresholds at the distinct scores of that class.

    scores, targets: (N, C), targets in {0, 1, -1 = ignore}. With the rule
    ``positive iff score >= t``: ``F1(t) = 2 TP / (2 TP + FP + FN) = 2 TP / (TP + FP + P)``.
    Among equal F1 the highest threshold wins. Classes without kept positives get NaN.
    """
    if scores.shape != targets.shape or scores.dim() != 2:
        raise ValueError(f"scores {tuple(scores.shape)} and targets {tuple(targets.shape)} must both be (N, C)")
    f1s, thrs = [], []
    for c in range(scores.shape[1]):
        thr, tp, fp = _threshold_counts(scores[:, c], targets[:, c])
        if not len(tp) or tp[-1] == 0:
            f1s.append(math.nan)
            thrs.append(math.nan)
            continue
        f1 = 2 * tp / (tp + fp + tp[-1])
        best = int(f1.argmax())  # first maximum = highest threshold (thresholds descend)
        f1s.append(float(f1[best]))
        thrs.append(float(thr[best]))
    return ThresholdF1(torch.tensor(f1s), torch.tensor(thrs))


def classification_metrics(scores: Tensor, labels: Tensor, *, multilabel: bool = False,
                           ks: Sequence[int] = (1, 5),
                           class_names: Optional[Sequence[str]] = None) -> Dict[str, float]:
    """Metrics of class scores (N, C).

    Single-label (labels (N,) int): ``top{k}`` (:func:`topk_accuracy`) and
    ``mean_per_class_acc`` (mean of :func:`per_class_accuracy` over classes present,
    prediction = first argmax). Multi-label (labels (N, C) in {0, 1, -1}):
    ``auroc_mean`` and ``auroc/<class>`` (:func:`multilabel_auroc`).
    """
    if multilabel:
        auroc = multilabel_auroc(scores, labels, class_names)
        mean = auroc.pop("mean")
        return {"auroc_mean": mean, **{f"auroc/{name}": v for name, v in auroc.items()}}
    acc = per_class_accuracy(scores.argmax(1), labels, scores.shape[1])
    return {**topk_accuracy(scores, labels, ks), "mean_per_class_acc": float(acc.nanmean())}


__all__ = [
    "retrieval_ranks", "rank_metrics", "retrieval_metrics", "recall_curve_from_ranks", "recall_at_k_curve",
    "group_ids", "candidate_blocks", "bidirectional_ranks", "bidirectional_retrieval", "class_embeddings",
    "zero_shot_predict", "topk_accuracy", "confusion_matrix", "per_class_accuracy", "roc_curve", "binary_auroc",
    "multilabel_auroc", "ThresholdF1", "f1_at_optimal_threshold", "classification_metrics",
]
