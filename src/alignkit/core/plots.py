"""PNG figures for evaluation: similarity matrix, confusion matrix, recall@K and ROC curves.

Figures are drawn on matplotlib's Agg canvas directly (``Figure`` +
``FigureCanvasAgg``), never through ``pyplot``: no global backend switch, no
figure registry to leak, safe in headless and multi-process runs. Each function
writes one PNG, creates the parent folder, and returns the path.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

from alignkit.core.metrics import binary_auroc, roc_curve

ArrayLike = Union[Tensor, np.ndarray, Sequence[float]]
_MAX_TICK_LABELS = 64  # axes with more items than this get no per-item tick labels
_MAX_ANNOTATED = 20  # confusion matrices up to this many classes print their cell values


def _numpy(x: ArrayLike) -> np.ndarray:
    return x.detach().cpu().double().numpy() if isinstance(x, Tensor) else np.asarray(x, dtype=np.float64)


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: Union[str, Path]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    fig.clear()
    return path


def _item_ticks(ax, labels: Sequence[str], axis: str) -> None:
    """Label every row/column when there are few enough items to read them."""
    if len(labels) > _MAX_TICK_LABELS:
        return
    size = 8 if len(labels) <= 20 else 5
    pos = np.arange(len(labels))
    if axis == "x":
        ax.set_xticks(pos, labels=[str(s) for s in labels], rotation=90, fontsize=size)
    else:
        ax.set_yticks(pos, labels=[str(s) for s in labels], fontsize=size)


def plot_similarity_matrix(sim: ArrayLike, path: Union[str, Path], labels: Optional[Sequence[str]] = None,
                           max_items: int = 64) -> Path:
    """Heat map of the top-left ``max_items`` x ``max_items`` block of a (Q, G) similarity.

    ``labels`` name the items (rows and columns share them, as for paired data).
    """
    s = _numpy(sim)[:max_items, :max_items]
    fig = new_figure(7, 6)
    ax = fig.add_subplot()
    im = ax.imshow(s, cmap="viridis", aspect="auto", interpolation="nearest")
    fig.colorbar(im, ax=ax, label="similarity")
    ax.set_xlabel("gallery item")
    ax.set_ylabel("query item")
    ax.set_title(f"similarity (first {s.shape[0]} x {s.shape[1]})")
    if labels is not None:
        _item_ticks(ax, list(labels)[: s.shape[1]], "x")
        _item_ticks(ax, list(labels)[: s.shape[0]], "y")
    return save_figure(fig, path)


def plot_confusion_matrix(cm: ArrayLike, class_names: Sequence[str], path: Union[str, Path],
                          normalize: bool = True) -> Path:
    """Confusion matrix (C, C), rows = true class, columns = prediction.

    With ``normalize`` each row is divided by its sum (per-class recall; empty rows stay 0).
    """
    m = _numpy(cm)
    if m.shape != (len(class_names), len(class_names)):
        raise ValueError(f"confusion matrix {m.shape} does not match {len(class_names)} class names")
    if normalize:
        m = m / np.maximum(m.sum(1, keepdims=True), 1)
    side = min(4 + 0.3 * len(class_names), 16)
    fig = new_figure(side + 1, side)
    ax = fig.add_subplot()
    im = ax.imshow(m, cmap="Blues", vmin=0, vmax=1 if normalize else None, interpolation="nearest")
    fig.colorbar(im, ax=ax, label="fraction of true class" if normalize else "count")
    _item_ticks(ax, class_names, "x")
    _item_ticks(ax, class_names, "y")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(class_names) <= _MAX_ANNOTATED:
        high = m.max() / 2
        for (i, j), v in np.ndenumerate(m):
            ax.text(j, i, f"{v:.2f}" if normalize else f"{int(v)}", ha="center", va="center", fontsize=7,
                    color="white" if v > high else "black")
    return save_figure(fig, path)


def plot_recall_at_k(curves: Mapping[str, ArrayLike], path: Union[str, Path]) -> Path:
    """Recall@k against k (entry k-1 of each curve is R@k), one line per named curve."""
    fig = new_figure(6, 4.5)
    ax = fig.add_subplot()
    longest = 1
    for name, curve in curves.items():
        y = _numpy(curve)
        ax.plot(np.arange(1, len(y) + 1), y, marker="." if len(y) <= 20 else None, label=name)
        longest = max(longest, len(y))
    if longest > 10:
        ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("k")
    ax.set_ylabel("recall@k")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def plot_roc_curves(scores: ArrayLike, targets: ArrayLike, class_names: Sequence[str],
                    path: Union[str, Path]) -> Path:
    """One ROC curve per class of scores (N, C) vs targets (N, C) in {0, 1, -1 = ignore}; AUROC in the legend.

    Classes whose kept targets hold a single class have no ROC and are listed as ``n/a``.
    """
    s, t = torch.as_tensor(_numpy(scores)), torch.as_tensor(_numpy(targets))
    if s.shape != t.shape or s.shape[1] != len(class_names):
        raise ValueError(f"scores {tuple(s.shape)}, targets {tuple(t.shape)} and {len(class_names)} class names "
                         "must agree as (N, C), (N, C), C")
    fig = new_figure(6.5, 5.5)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=0.8)
    for c, name in enumerate(class_names):
        auc = binary_auroc(s[:, c], t[:, c])
        if np.isnan(auc):
            ax.plot([], [], label=f"{name} (n/a)")
            continue
        fpr, tpr, _ = roc_curve(s[:, c], t[:, c])
        ax.plot(fpr.numpy(), tpr.numpy(), label=f"{name} ({auc:.3f})")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("ROC (AUROC)")
    ax.legend(fontsize=7 if len(class_names) > 8 else 9, ncols=1 + len(class_names) // 16)
    return save_figure(fig, path)


__all__ = ["plot_similarity_matrix", "plot_confusion_matrix", "plot_recall_at_k", "plot_roc_curves"]
