"""Probes of frozen embeddings: a logistic-regression linear probe and a temperature-weighted kNN vote.

Inputs are embeddings (N, D) with integer labels (N,) (or multi-hot targets (N, C) in
{0, 1, -1 = ignore} for the multi-label probe); outputs are class scores scored with
:mod:`alignkit.core.metrics`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alignkit.core.metrics import classification_metrics, multilabel_auroc, topk_accuracy

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
        :class:`LinearProbeResult`; metrics are :func:`~alignkit.core.metrics.classification_metrics` of the test
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
    """:func:`~alignkit.core.metrics.topk_accuracy` of the :func:`knn_classify` probabilities; keys ``top{k}``."""
    c = int(max(train_y.max(), test_y.max())) + 1
    return topk_accuracy(knn_classify(train_x, train_y, test_x, k, temperature, c).probs, test_y, ks)


__all__ = ["LinearProbeResult", "masked_bce_with_logits", "linear_probe", "KNNResult", "knn_classify", "knn_accuracy"]
