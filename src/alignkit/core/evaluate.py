"""Shared evaluation: retrieval, zero-shot, multi-label AUROC, linear probe, kNN, embedding export.

The first part holds pure metric functions on tensors (float32 embeddings or
similarities, shapes in each docstring). The last part holds the registered
evaluators (``EVALUATORS``: ``retrieval``, ``zero_shot``, ``linear_probe``,
``knn``): each embeds a split with :func:`embed_loader`, calls the metric
functions and writes PNG figures (:mod:`alignkit.core.plots`).

Rank rule used everywhere (retrieval and top-k accuracy): ties count against the
query. For one query with score row ``s`` (G,) and correct set ``P``::

    rank = 1 + #{ j not in P : s_j >= max_{p in P} s_p }

so the best-scored correct item decides (any correct item is a hit), and a wrong
item scored equal to it is ranked ahead of it. A constant similarity therefore
gives rank G, never a lucky rank 1.
"""
from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn
from tqdm.auto import tqdm

from alignkit.core import plots
from alignkit.core.registry import EVALUATORS, ConfigError

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
    """Recall@k for k = 1..max_k of a (Q, G) similarity, as float (max_k,) (for :func:`plots.plot_recall_at_k`)."""
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


# --------------------------------------------------------------------------- linear probe


@dataclass
class LinearProbeResult:
    """Test metrics of :func:`linear_probe` and the probe's test logits."""

    metrics: Dict[str, float]  # classification_metrics on test + "weight_decay" + "val_<selection metric>"
    test_scores: Tensor  # (N_test, C) logits


def masked_bce_with_logits(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean binary cross-entropy over the entries of ``(B, C)`` targets that are not -1 (0 if none)."""
    keep = targets >= 0
    if not keep.any():
        return logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logits[keep], targets[keep].float())


def _probe_loss(logits: Tensor, y: Tensor, multilabel: bool) -> Tensor:
    """Mean cross-entropy (labels (N,)) or :func:`masked_bce_with_logits` (labels (N, C), -1 ignored)."""
    return masked_bce_with_logits(logits, y) if multilabel else F.cross_entropy(logits, y)


def _fit_logistic(x: Tensor, y: Tensor, num_outputs: int, multilabel: bool, weight_decay: float,
                  max_iter: int) -> nn.Linear:
    """Full-batch L-BFGS on ``loss + weight_decay * ||W||^2`` from zero weights (deterministic)."""
    linear = nn.Linear(x.shape[1], num_outputs)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    opt = torch.optim.LBFGS(linear.parameters(), lr=1.0, max_iter=max_iter, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = _probe_loss(linear(x), y, multilabel) + weight_decay * linear.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return linear


def _standardize(fit: Tensor, *others: Tensor) -> List[Tensor]:
    """Shift and scale every tensor by the per-feature mean and std of ``fit`` (N, D)."""
    mean, std = fit.mean(0), fit.std(0).clamp_min(1e-6)
    return [(t - mean) / std for t in (fit, *others)]


def _selection_score(scores: Tensor, y: Tensor, multilabel: bool) -> float:
    """Validation score used to pick the weight decay: top-1 accuracy or mean AUROC (NaN -> -inf)."""
    value = (multilabel_auroc(scores, y)["mean"] if multilabel else topk_accuracy(scores, y, (1,))["top1"])
    return -math.inf if math.isnan(value) else value


def linear_probe(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, *, multilabel: bool = False,
                 val_fraction: float = 0.1,
                 weight_decays: Sequence[float] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0),
                 max_epochs: int = 100, seed: int = 0,
                 class_names: Optional[Sequence[str]] = None) -> LinearProbeResult:
    """Logistic regression on frozen embeddings, weight decay chosen on a validation split.

    Features are standardised with the statistics of the data each probe is fit on.
    A ``val_fraction`` of train (random, ``seed``) is held out; for every weight
    decay ``lambda`` a probe minimises ``mean loss + lambda ||W||^2`` with full-batch
    L-BFGS (``max_epochs`` iterations, zero init); the best validation top-1
    (single-label) or mean AUROC (multi-label) wins, the larger ``lambda`` on ties.
    The winner is refit on all of train and scored on test.

    Args:
        train_x: (N, D), train_y: (N,) int labels, or (N, C) in {0, 1, -1 = ignore} if multilabel.
        test_x: (M, D), test_y: like train_y.
        class_names: names of the C classes (single-label: C = len(class_names), else max label + 1).
    Returns:
        :class:`LinearProbeResult`; metrics are :func:`classification_metrics` of the test
        logits plus ``weight_decay`` and ``val_top1`` / ``val_auroc_mean``.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1); got {val_fraction}")
    n = len(train_x)
    n_val = max(1, round(n * val_fraction))
    if n - n_val < 1:
        raise ValueError(f"linear probe needs more than {n} train items to hold out a validation split")
    if multilabel:
        num_outputs = train_y.shape[1]
    else:
        num_outputs = len(class_names) if class_names is not None else int(max(train_y.max(), test_y.max())) + 1
    train_y = train_y.float() if multilabel else train_y.long()
    # Evaluators may run under Lightning's inference mode; the probe needs autograd on ordinary tensors.
    with torch.inference_mode(False), torch.enable_grad():
        x, tx, y = train_x.float().clone(), test_x.float().clone(), train_y.clone()
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        val, fit = perm[:n_val], perm[n_val:]
        fit_x, val_x = _standardize(x[fit], x[val])
        best_wd, best_val = weight_decays[0], -math.inf
        for wd in sorted(weight_decays, reverse=True):
            probe = _fit_logistic(fit_x, y[fit], num_outputs, multilabel, wd, max_epochs)
            with torch.no_grad():
                score = _selection_score(probe(val_x), y[val], multilabel)
            if score > best_val:
                best_wd, best_val = wd, score
        all_x, test_std = _standardize(x, tx)
        probe = _fit_logistic(all_x, y, num_outputs, multilabel, best_wd, max_epochs)
        with torch.no_grad():
            test_scores = probe(test_std)
    metrics = classification_metrics(test_scores, test_y, multilabel=multilabel, ks=(1,), class_names=class_names)
    metrics["weight_decay"] = float(best_wd)
    metrics["val_auroc_mean" if multilabel else "val_top1"] = best_val
    return LinearProbeResult(metrics, test_scores)


# --------------------------------------------------------------------------- kNN


@dataclass
class KNNResult:
    """Weighted-kNN predictions."""

    pred: Tensor  # (M,) long, first argmax of probs
    probs: Tensor  # (M, C) float, rows sum to 1


def knn_classify(train_x: Tensor, train_y: Tensor, test_x: Tensor, k: int = 20, temperature: float = 0.07,
                 num_classes: Optional[int] = None, batch_size: int = 1024) -> KNNResult:
    """Temperature-weighted kNN vote on cosine similarity (InstDisc / DINO).

    For a test item with its k most similar train items j (similarity s_j):
    ``probs_c = sum_j w_j [y_j = c]``, ``w_j = exp(s_j / T) / sum_j' exp(s_j' / T)``.

    Args:
        train_x: (N, D), train_y: (N,) int, test_x: (M, D); rows are L2-normalised here.
        num_classes: C; default ``max(train_y) + 1``.
    """
    c = int(train_y.max()) + 1 if num_classes is None else num_classes
    train_x = F.normalize(train_x.float(), dim=-1)
    train_y = train_y.long()
    k = min(k, len(train_x))
    probs = []
    for chunk in F.normalize(test_x.float(), dim=-1).split(batch_size):
        sim, idx = (chunk @ train_x.T).topk(k, dim=1)
        weight = (sim / temperature).softmax(1)
        probs.append(torch.zeros(len(chunk), c).scatter_add_(1, train_y[idx], weight))
    p = torch.cat(probs) if probs else torch.zeros(0, c)
    return KNNResult(p.argmax(1), p)


def knn_accuracy(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, k: int = 20,
                 temperature: float = 0.07, ks: Sequence[int] = (1, 5)) -> Dict[str, float]:
    """:func:`topk_accuracy` of the :func:`knn_classify` probabilities; keys ``top{k}``."""
    c = int(max(train_y.max(), test_y.max())) + 1
    return topk_accuracy(knn_classify(train_x, train_y, test_x, k, temperature, c).probs, test_y, ks)


# --------------------------------------------------------------------------- embedding files

_STRING_FIELDS = "alignkit_string_fields"


def export_embeddings(path: Union[str, Path], **fields: Union[Tensor, np.ndarray, Sequence[Any]]) -> Path:
    """Write named embeddings, labels and ids to one safetensors file.

    Tensors and arrays are stored as tensors; sequences of numbers become tensors;
    sequences of strings (e.g. sample ids) go into the file's metadata as JSON
    under ``alignkit_string_fields``. Read back with :func:`load_embeddings`.
    """
    tensors: Dict[str, Tensor] = {}
    strings: Dict[str, List[str]] = {}
    for name, value in fields.items():
        if isinstance(value, Tensor):
            tensors[name] = value.detach().cpu().contiguous().clone()
        elif isinstance(value, np.ndarray):
            tensors[name] = torch.from_numpy(np.ascontiguousarray(value).copy())
        elif isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            strings[name] = list(value)
        elif isinstance(value, (list, tuple)):
            tensors[name] = torch.as_tensor(value)
        else:
            raise TypeError(f"export_embeddings field '{name}' is a {type(value).__name__}; "
                            "pass a tensor, an array, or a list of numbers or strings")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={_STRING_FIELDS: json.dumps(strings)})
    return path


def load_embeddings(path: Union[str, Path]) -> Dict[str, Union[Tensor, List[str]]]:
    """Fields written by :func:`export_embeddings`: tensors, and lists of strings from the metadata."""
    with safe_open(str(path), framework="pt") as f:
        out: Dict[str, Union[Tensor, List[str]]] = {name: f.get_tensor(name) for name in f.keys()}
        out.update(json.loads((f.metadata() or {}).get(_STRING_FIELDS, "{}")))
    return out


# --------------------------------------------------------------------------- running a model over a loader


def _concat(parts: List[Any], field: str) -> Union[Tensor, List[Any]]:
    """Join per-batch values of one field: tensors are concatenated, lists flattened (numbers -> tensor)."""
    if all(isinstance(p, Tensor) for p in parts):
        return torch.cat(parts).cpu()
    flat = [v for p in parts for v in (p.tolist() if isinstance(p, Tensor) else p)]
    if all(isinstance(v, str) for v in flat):
        return flat
    try:
        return torch.as_tensor(flat)
    except (TypeError, ValueError) as err:
        raise TypeError(f"field '{field}' mixes values that are neither all strings nor all numbers") from err


def embed_loader(model: Any, loader: Any, modalities: Sequence[str], progress: bool = True,
                 fields: Sequence[str] = ("label", "id", "group")) -> Dict[str, Union[Tensor, List[str]]]:
    """Embed every batch of ``loader`` with ``model.embed(modality, batch[modality])``.

    Batches are collated dicts. Runs under ``torch.no_grad``; an ``nn.Module`` model
    is put in eval mode and restored afterwards. ``model.embed`` receives inputs as
    the loader yields them (on CPU) and moves them to its device.

    Returns:
        ``{modality: float32 (N, D) on CPU}`` plus each of ``fields`` present in the
        first batch: tensors (N, ...) for numbers, ``list[str]`` for strings.
    """
    parts: Dict[str, List[Any]] = {}
    was_training = isinstance(model, nn.Module) and model.training
    if isinstance(model, nn.Module):
        model.eval()
    try:
        with torch.no_grad():
            for i, batch in enumerate(tqdm(loader, desc=f"embed {'+'.join(modalities)}", disable=not progress,
                                           leave=False)):
                if i == 0:
                    missing = [m for m in modalities if m not in batch]
                    if missing:
                        raise KeyError(f"batches lack modalities {missing}; keys are {sorted(batch)}. "
                                       "Check the evaluator's modality names against the dataset")
                    keys = list(modalities) + [f for f in fields if f in batch and f not in modalities]
                for key in keys:
                    if key not in batch:
                        raise KeyError(f"batch {i} lacks '{key}', which the first batch had")
                    value = batch[key]
                    parts.setdefault(key, []).append(
                        model.embed(key, value).float().cpu() if key in modalities else value)
    finally:
        if isinstance(model, nn.Module):
            model.train(was_training)
    if not parts:
        raise ValueError("the loader yielded no batches; nothing to evaluate")
    return {key: _concat(values, key) for key, values in parts.items()}


# --------------------------------------------------------------------------- evaluators


def _dataset_class_names(loader: Any, given: Optional[Sequence[str]], evaluator: str,
                         required: bool) -> Optional[List[str]]:
    """``given`` if set, else the loader dataset's ``class_names`` attribute (error if required and absent)."""
    if given is not None:
        return list(given)
    names = getattr(getattr(loader, "dataset", None), "class_names", None)
    if names is None and required:
        raise ConfigError(f"evaluator '{evaluator}' needs class names: pass class_names in its params "
                          "or give the dataset a `class_names` attribute")
    return None if names is None else list(names)


def group_ids(values: Union[Tensor, List[str]]) -> Tensor:
    """LongTensor (N,) from a numeric tensor or a list of strings (equal strings -> equal ids)."""
    if isinstance(values, Tensor):
        return values.long()
    index: Dict[str, int] = {}
    return torch.tensor([index.setdefault(v, len(index)) for v in values])


def _classification_plots(scores: Tensor, labels: Tensor, class_names: Optional[Sequence[str]], multilabel: bool,
                          stem: Path) -> None:
    """ROC curves (multi-label) or the confusion matrix (single-label) to ``{stem}_roc.png`` / ``_confusion.png``."""
    c = scores.shape[1]
    names = list(class_names) if class_names is not None else [str(i) for i in range(c)]
    if multilabel:
        plots.plot_roc_curves(scores, labels, names, stem.with_name(stem.name + "_roc.png"))
    else:
        cm = confusion_matrix(scores.argmax(1), labels, c)
        plots.plot_confusion_matrix(cm, names, stem.with_name(stem.name + "_confusion.png"))


def _prefixed(prefix: str, metrics: Mapping[str, float]) -> Dict[str, float]:
    return {f"{prefix}/{k}": float(v) for k, v in metrics.items()}


@EVALUATORS.register("retrieval")
class RetrievalEvaluator:
    """Cross-modal retrieval both ways on the test split.

    Metrics ``retrieval/{query}2{gallery}_R@k``, ``..._median_rank``, ``..._mean_rank`` and the
    reverse direction. Without ``match_key`` only an item's own pair is correct;
    with it (e.g. ``"group"``, ``"label"``) every gallery item whose field equals the
    query's is. ``num_candidates`` evaluates inside shuffled blocks of that many items
    (:func:`candidate_blocks`) and pools the ranks. Writes
    ``retrieval_{query}2{gallery}_similarity.png`` (first ``plot_items`` items) and
    ``retrieval_{query}_{gallery}_recall_at_k.png``.
    """

    def __init__(self, query: str = "text", gallery: str = "image", match_key: Optional[str] = None,
                 num_candidates: Optional[int] = None, ks: Sequence[int] = (1, 5, 10), seed: int = 0,
                 plot_items: int = 64, max_plot_k: int = 50, progress: bool = True):
        if query == gallery:
            raise ConfigError(f"retrieval query and gallery are both '{query}'; name two different modalities")
        self.query, self.gallery, self.match_key = query, gallery, match_key
        self.num_candidates, self.ks, self.seed = num_candidates, tuple(ks), seed
        self.plot_items, self.max_plot_k, self.progress = plot_items, max_plot_k, progress

    def __call__(self, model: Any, train_loader: Any, test_loader: Any, out_dir: Path) -> Dict[str, float]:
        q, g = self.query, self.gallery
        fields = ["id"] + ([self.match_key] if self.match_key else [])
        out = embed_loader(model, test_loader, [q, g], self.progress, fields)
        if self.match_key is not None and self.match_key not in out:
            raise ConfigError(f"retrieval match_key '{self.match_key}' is not a field of the test batches; "
                              f"fields: {sorted(out)}")
        groups = None if self.match_key is None else group_ids(out[self.match_key])
        r_qg, r_gq = bidirectional_ranks(out[q], out[g], groups, groups, self.num_candidates, self.seed)
        metrics = {**rank_metrics(r_qg, self.ks, f"{q}2{g}_"), **rank_metrics(r_gq, self.ks, f"{g}2{q}_")}

        out_dir = Path(out_dir)
        n = self.plot_items
        ids = out.get("id")
        plots.plot_similarity_matrix(out[q][:n] @ out[g][:n].T, out_dir / f"retrieval_{q}2{g}_similarity.png",
                                     labels=ids[:n] if isinstance(ids, list) else None, max_items=n)
        gallery_size = min(len(out[g]), self.num_candidates or len(out[g]))
        max_k = max(1, min(self.max_plot_k, gallery_size))
        plots.plot_recall_at_k({f"{q}2{g}": recall_curve_from_ranks(r_qg, max_k),
                                f"{g}2{q}": recall_curve_from_ranks(r_gq, max_k)},
                               out_dir / f"retrieval_{q}_{g}_recall_at_k.png")
        return _prefixed("retrieval", metrics)


@EVALUATORS.register("zero_shot")
class ZeroShotEvaluator:
    """Zero-shot classification with prompt-ensemble class embeddings (:func:`class_embeddings`).

    Single-label: ``zero_shot/top{k}``, ``zero_shot/mean_per_class_acc``, with ``per_class`` also
    ``zero_shot/acc/<class>`` (:func:`per_class_accuracy`, NaN for classes absent from the split), and
    ``zero_shot_confusion.png``. Multi-label (labels (C,) per item in {0, 1, -1}):
    ``zero_shot/auroc_mean``, ``zero_shot/auroc/<class>`` and ``zero_shot_roc.png``.
    Class names default to the test dataset's ``class_names`` attribute.
    """

    def __init__(self, modality: str = "image", text_modality: str = "text",
                 class_names: Optional[List[str]] = None, templates: Sequence[str] = ("{}",),
                 label_key: str = "label", multilabel: bool = False, ks: Sequence[int] = (1, 5),
                 per_class: bool = False, progress: bool = True):
        self.modality, self.text_modality = modality, text_modality
        self.per_class = per_class
        self.class_names, self.templates = class_names, list(templates)
        self.label_key, self.multilabel, self.ks, self.progress = label_key, multilabel, tuple(ks), progress

    def __call__(self, model: Any, train_loader: Any, test_loader: Any, out_dir: Path) -> Dict[str, float]:
        names = _dataset_class_names(test_loader, self.class_names, "zero_shot", required=True)
        out = embed_loader(model, test_loader, [self.modality], self.progress, [self.label_key])
        labels = out[self.label_key]
        with torch.no_grad():
            classes = class_embeddings(lambda texts: model.embed(self.text_modality, texts).float().cpu(),
                                       names, self.templates)
        scores = zero_shot_predict(out[self.modality], classes)
        metrics = classification_metrics(scores, labels, multilabel=self.multilabel, ks=self.ks, class_names=names)
        if self.per_class and not self.multilabel:
            accuracy = per_class_accuracy(scores.argmax(1), labels, len(names))
            metrics.update({f"acc/{name}": float(a) for name, a in zip(names, accuracy)})
        _classification_plots(scores, labels, names, self.multilabel, Path(out_dir) / "zero_shot")
        return _prefixed("zero_shot", metrics)


@EVALUATORS.register("linear_probe")
class LinearProbeEvaluator:
    """Logistic-regression probe on frozen embeddings of train, scored on test (:func:`linear_probe`).

    Metrics ``linear_probe/top1`` and ``.../mean_per_class_acc`` (or ``.../auroc_mean`` and
    per-class AUROC if ``multilabel``), ``.../weight_decay``, ``.../val_top1`` (``val_auroc_mean``);
    writes ``linear_probe_confusion.png`` or ``linear_probe_roc.png``.
    """

    def __init__(self, modality: str = "image", label_key: str = "label", multilabel: bool = False,
                 val_fraction: float = 0.1,
                 weight_decays: Sequence[float] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0),
                 max_epochs: int = 100, seed: int = 0, progress: bool = True):
        self.modality, self.label_key, self.multilabel = modality, label_key, multilabel
        self.val_fraction, self.weight_decays = val_fraction, tuple(weight_decays)
        self.max_epochs, self.seed, self.progress = max_epochs, seed, progress

    def __call__(self, model: Any, train_loader: Any, test_loader: Any, out_dir: Path) -> Dict[str, float]:
        if train_loader is None:
            raise ConfigError("linear_probe needs a train split to fit on; the dataset has none")
        train = embed_loader(model, train_loader, [self.modality], self.progress, [self.label_key])
        test = embed_loader(model, test_loader, [self.modality], self.progress, [self.label_key])
        names = _dataset_class_names(test_loader, None, "linear_probe", required=False)
        result = linear_probe(train[self.modality], train[self.label_key], test[self.modality],
                              test[self.label_key], multilabel=self.multilabel, val_fraction=self.val_fraction,
                              weight_decays=self.weight_decays, max_epochs=self.max_epochs, seed=self.seed,
                              class_names=names)
        _classification_plots(result.test_scores, test[self.label_key], names, self.multilabel,
                              Path(out_dir) / "linear_probe")
        return _prefixed("linear_probe", result.metrics)


@EVALUATORS.register("knn")
class KNNEvaluator:
    """Weighted kNN (:func:`knn_classify`) with train embeddings as the memory bank; single-label only.

    Metrics ``knn/top{k}`` and ``knn/mean_per_class_acc``; writes ``knn_confusion.png``.
    """

    def __init__(self, modality: str = "image", label_key: str = "label", k: int = 20, temperature: float = 0.07,
                 ks: Sequence[int] = (1, 5), progress: bool = True):
        self.modality, self.label_key, self.k, self.temperature = modality, label_key, k, temperature
        self.ks, self.progress = tuple(ks), progress

    def __call__(self, model: Any, train_loader: Any, test_loader: Any, out_dir: Path) -> Dict[str, float]:
        if train_loader is None:
            raise ConfigError("knn needs a train split as its memory bank; the dataset has none")
        train = embed_loader(model, train_loader, [self.modality], self.progress, [self.label_key])
        test = embed_loader(model, test_loader, [self.modality], self.progress, [self.label_key])
        train_y, test_y = train[self.label_key].long(), test[self.label_key].long()
        names = _dataset_class_names(test_loader, None, "knn", required=False)
        c = len(names) if names is not None else int(max(train_y.max(), test_y.max())) + 1
        probs = knn_classify(train[self.modality], train_y, test[self.modality], self.k, self.temperature, c).probs
        metrics = classification_metrics(probs, test_y, ks=self.ks)
        _classification_plots(probs, test_y, names, False, Path(out_dir) / "knn")
        return _prefixed("knn", metrics)


@EVALUATORS.register("export_embeddings")
class EmbeddingExportEvaluator:
    """Embed the evaluated split and write ``embeddings.safetensors`` (one tensor per modality plus
    ``label``/``group`` when present; string ids in the metadata) for downstream heads. Returns
    ``export_embeddings/count``."""

    def __init__(self, modalities: Sequence[str] = ("image", "text"), filename: str = "embeddings.safetensors",
                 progress: bool = True):
        self.modalities, self.filename, self.progress = list(modalities), filename, progress

    def __call__(self, model: Any, train_loader: Any, test_loader: Any, out_dir: Path) -> Dict[str, float]:
        out = embed_loader(model, test_loader, self.modalities, self.progress)
        export_embeddings(Path(out_dir) / self.filename, **out)
        return {"export_embeddings/count": float(len(out[self.modalities[0]]))}


__all__ = [
    "EmbeddingExportEvaluator", "masked_bce_with_logits", "retrieval_ranks", "rank_metrics", "retrieval_metrics",
    "recall_curve_from_ranks", "recall_at_k_curve",
    "candidate_blocks", "bidirectional_ranks", "bidirectional_retrieval", "class_embeddings", "zero_shot_predict",
    "topk_accuracy", "confusion_matrix", "per_class_accuracy", "roc_curve", "binary_auroc", "multilabel_auroc",
    "ThresholdF1", "f1_at_optimal_threshold", "classification_metrics", "LinearProbeResult", "linear_probe",
    "KNNResult", "knn_classify", "knn_accuracy", "export_embeddings", "load_embeddings", "embed_loader",
    "RetrievalEvaluator", "ZeroShotEvaluator", "LinearProbeEvaluator", "KNNEvaluator",
]
