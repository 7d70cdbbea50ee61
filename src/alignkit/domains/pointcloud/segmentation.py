"""Point-cloud semantic segmentation evaluation: confusion matrices, IoU, the majority baseline, plots, evaluator.

Conventions: labels are class indices in ``[0, K)``; points labelled ``ignore_index`` (default
:data:`~alignkit.domains.pointcloud.rgbd.files.IGNORE_INDEX`) are left out of every count. A confusion matrix
``cm (K, K)`` counts points of true class ``t`` (row) predicted as ``p`` (column).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from alignkit.core import plots
from alignkit.core.metrics import confusion_matrix
from alignkit.core.params import NON_NEGATIVE, OneOf
from alignkit.core.registry import EVALUATORS, ConfigError
from alignkit.domains.pointcloud.rgbd.files import IGNORE_INDEX

UNLABELED_COLOR = (0.8, 0.8, 0.8)


def segmentation_confusion(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """LongTensor ``(K, K)`` over the points of ``pred``, ``target`` (same shape, any) whose target is labeled.

    Raises ``ValueError`` for a labeled target or a prediction outside ``[0, K)``.
    """
    if pred.shape != target.shape:
        raise ValueError(f"predictions {tuple(pred.shape)} and targets {tuple(target.shape)} must have one shape")
    keep = target != ignore_index
    p, t = pred[keep].long().flatten(), target[keep].long().flatten()
    for name, x in (("target", t), ("prediction", p)):
        if len(x) and (int(x.min()) < 0 or int(x.max()) >= num_classes):
            raise ValueError(f"{name} class {int(x.min()) if int(x.min()) < 0 else int(x.max())} is outside "
                             f"[0, {num_classes}) (ignore_index is {ignore_index})")
    return confusion_matrix(p.cpu(), t.cpu(), num_classes)


def iou_per_class(cm: Tensor) -> Tensor:
    """Float64 ``(K,)``: ``IoU_c = cm[c, c] / (sum_p cm[c, p] + sum_t cm[t, c] - cm[c, c])``.

    NaN for a class absent from both the truth and the predictions (its union is empty).
    """
    cm = cm.double()
    tp = cm.diagonal()
    union = cm.sum(1) + cm.sum(0) - tp
    return torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))


def mean_iou(cm: Tensor) -> float:
    """mIoU: the mean of :func:`iou_per_class` over the classes present in the truth or the predictions.

    Classes absent from both are excluded from the mean (not counted as 0 or 1); a class only
    predicted (never true) counts with IoU 0. NaN when no point is counted at all.
    """
    iou = iou_per_class(cm)
    present = ~iou.isnan()
    return float(iou[present].mean()) if bool(present.any()) else float("nan")


@dataclass
class SegmentationScores:
    """Scores of one confusion matrix ``confusion (K, K)``.

    ``miou`` (:func:`mean_iou`), ``per_class_iou (K,)`` (NaN: class absent from truth and predictions),
    ``overall_accuracy`` = ``trace / total``, ``mean_class_accuracy`` = mean over classes present in the
    truth of ``cm[c, c] / sum_p cm[c, p]``.
    """

    confusion: Tensor
    miou: float
    per_class_iou: Tensor
    overall_accuracy: float
    mean_class_accuracy: float

    def metrics(self, class_names: Sequence[str]) -> Dict[str, float]:
        """``mIoU``, ``overall_accuracy``, ``mean_class_accuracy`` and ``iou/<class>`` per class."""
        out = {"mIoU": self.miou, "overall_accuracy": self.overall_accuracy,
               "mean_class_accuracy": self.mean_class_accuracy}
        out.update({f"iou/{name}": float(v) for name, v in zip(class_names, self.per_class_iou)})
        return out


def segmentation_scores(cm: Tensor) -> SegmentationScores:
    """:class:`SegmentationScores` of a confusion matrix ``(K, K)``."""
    cm = cm.long()
    total = int(cm.sum())
    truth = cm.sum(1).double()
    recall = cm.diagonal().double() / truth.clamp_min(1)
    present = truth > 0
    return SegmentationScores(
        confusion=cm, miou=mean_iou(cm), per_class_iou=iou_per_class(cm),
        overall_accuracy=float(cm.diagonal().sum()) / total if total else float("nan"),
        mean_class_accuracy=float(recall[present].mean()) if bool(present.any()) else float("nan"))


def majority_class(labels: Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> int:
    """The most frequent labeled class of ``labels`` (any shape); ties go to the lowest index."""
    kept = labels[labels != ignore_index].long().flatten()
    if not len(kept):
        raise ValueError("no labeled point to take a majority class from")
    return int(torch.bincount(kept, minlength=num_classes).argmax())


def majority_baseline(fit_labels: Tensor, test_labels: Tensor, num_classes: int,
                      ignore_index: int = IGNORE_INDEX) -> SegmentationScores:
    """Scores on ``test_labels`` of predicting everywhere the majority class of ``fit_labels`` (e.g. the train split).

    Its mIoU is ``IoU_m / |present|`` with ``IoU_m`` the majority class's frequency in the test truth (0 if
    absent) and ``|present|`` the classes in the test truth plus the majority class.
    """
    cls = majority_class(fit_labels, num_classes, ignore_index)
    return segmentation_scores(segmentation_confusion(torch.full_like(test_labels, cls), test_labels, num_classes,
                                                      ignore_index))


# --------------------------------------------------------------------------- plots


def class_colors(num_classes: int) -> np.ndarray:
    """``(K, 3)`` RGB colours of classes: matplotlib's ``tab10`` (``tab20`` beyond 10 classes, cycled)."""
    from matplotlib import colormaps
    cmap = colormaps["tab10" if num_classes <= 10 else "tab20"]
    return np.array([cmap(k % cmap.N)[:3] for k in range(num_classes)])


def _point_colors(labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    colors = np.tile(np.asarray(UNLABELED_COLOR), (len(labels), 1))
    known = (labels >= 0) & (labels < len(palette))
    colors[known] = palette[labels[known]]
    return colors


def plot_segmentation(points: Union[Tensor, np.ndarray], true: Union[Tensor, np.ndarray],
                      pred: Union[Tensor, np.ndarray], class_names: Sequence[str], path: Union[str, Path],
                      axes: Tuple[int, int] = (0, 1), invert_vertical: bool = True,
                      titles: Optional[Sequence[str]] = None) -> Path:
    """PNG of ``S`` clouds, one row each: true labels (left) and predictions (right), as 2D scatters.

    ``points (S, N, >=3)`` are projected on the coordinate ``axes`` (horizontal, vertical); the default
    ``(0, 1)`` with ``invert_vertical`` shows camera-frame clouds (y down) as their image. Unlabeled points
    are light grey; one legend names the classes.
    """
    xyz = np.asarray(points.detach().cpu() if isinstance(points, Tensor) else points)[..., :3]
    t = np.asarray(true.detach().cpu() if isinstance(true, Tensor) else true).astype(np.int64)
    p = np.asarray(pred.detach().cpu() if isinstance(pred, Tensor) else pred).astype(np.int64)
    if xyz.ndim != 3 or t.shape != xyz.shape[:2] or p.shape != t.shape:
        raise ValueError(f"expected points (S, N, 3), true (S, N), pred (S, N); got {xyz.shape}, {t.shape}, {p.shape}")
    palette = class_colors(len(class_names))
    rows = len(xyz)
    fig = plots.new_figure(8, 3.2 * rows + 0.8)
    for s in range(rows):
        for col, (labels, what) in enumerate(((t[s], "true"), (p[s], "predicted"))):
            ax = fig.add_subplot(rows, 2, 2 * s + col + 1)
            ax.scatter(xyz[s, :, axes[0]], xyz[s, :, axes[1]], c=_point_colors(labels, palette), s=3, linewidths=0)
            ax.set_aspect("equal", adjustable="datalim")
            if invert_vertical:
                ax.invert_yaxis()
            ax.set_xticks([])
            ax.set_yticks([])
            name = titles[s] if titles is not None else f"cloud {s}"
            ax.set_title(f"{name}: {what}", fontsize=9)
    handles = [_legend_handle(palette[k], name) for k, name in enumerate(class_names)]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(class_names), 6), fontsize=8)
    return plots.save_figure(fig, path)


def _legend_handle(color: np.ndarray, label: str) -> Any:
    """A legend entry: a filled marker of ``color`` named ``label``."""
    from matplotlib.lines import Line2D
    return Line2D([], [], marker="o", linestyle="", markerfacecolor=color, markeredgewidth=0, label=label)


# --------------------------------------------------------------------------- evaluator


def _segmenter(model: Any) -> Any:
    """``model`` or the module it wraps (an ``AlignedModel``), whichever has ``segment_logits``."""
    for candidate in (model, getattr(model, "module", None)):
        if candidate is not None and hasattr(candidate, "segment_logits"):
            return candidate
    raise ConfigError(f"the segmentation evaluator needs a model with segment_logits(points, class_names) -> "
                      f"(B, N, K) logits (e.g. text4point-seg); {type(model).__name__} has none")


def _labels_of(loader: Any, label_key: str) -> Tensor:
    return torch.cat([batch[label_key].flatten() for batch in loader])


@EVALUATORS.register("segmentation")
class SegmentationEvaluator:
    """Per-point semantic segmentation on the test split, beside the majority-class baseline.

    The model (or the module an ``AlignedModel`` wraps) must have ``segment_logits(points (B, N, F),
    class_names) -> (B, N, K)``. Class names come from ``class_names``, else the test dataset's attribute.
    Metrics (prefix ``segmentation/``): ``mIoU`` (classes absent from truth and predictions excluded),
    ``overall_accuracy``, ``mean_class_accuracy``, ``iou/<class>`` (null when excluded), and the same
    ``majority_*`` figures of predicting the train split's most frequent class everywhere (the test
    split's when there is no train split). Writes ``segmentation_clouds.png`` (true vs predicted labels of
    the first ``plot_clouds`` test clouds) and ``segmentation_confusion.png``.
    """

    def __init__(self, points_key: str = "points", label_key: str = "seg", class_names: Optional[List[str]] = None,
                 ignore_index: int = IGNORE_INDEX, plot_clouds: Annotated[int, NON_NEGATIVE] = 4,
                 plot_axes: Tuple[Annotated[int, OneOf((0, 1, 2))], Annotated[int, OneOf((0, 1, 2))]] = (0, 1),
                 invert_vertical: bool = True, progress: bool = True):
        self.points_key, self.label_key, self.class_names = points_key, label_key, class_names
        self.ignore_index, self.plot_clouds = int(ignore_index), int(plot_clouds)
        self.plot_axes, self.invert_vertical, self.progress = tuple(plot_axes), invert_vertical, progress

    def _names(self, loader: Any) -> List[str]:
        names = self.class_names or getattr(getattr(loader, "dataset", None), "class_names", None)
        if not names:
            raise ConfigError("the segmentation evaluator needs class names: pass class_names in its params or give "
                              "the dataset a class_names attribute")
        return list(names)

    def __call__(self, model: Any, train_loader: Any, test_loader: Any, out_dir: Path) -> Dict[str, float]:
        segmenter = _segmenter(model)
        names = self._names(test_loader)
        k = len(names)
        device = next(segmenter.parameters()).device if isinstance(segmenter, nn.Module) else torch.device("cpu")
        was_training = isinstance(segmenter, nn.Module) and segmenter.training
        if isinstance(segmenter, nn.Module):
            segmenter.eval()
        cm = torch.zeros(k, k, dtype=torch.long)
        labels: List[Tensor] = []
        shown: Dict[str, List[Any]] = {"points": [], "true": [], "pred": [], "ids": []}
        try:
            with torch.no_grad():
                for batch in tqdm(test_loader, desc="segmentation", disable=not self.progress, leave=False):
                    points, target = batch[self.points_key], batch[self.label_key]
                    pred = segmenter.segment_logits(points.to(device), names).argmax(-1).cpu()
                    cm += segmentation_confusion(pred, target, k, self.ignore_index)
                    labels.append(target.flatten())
                    room = self.plot_clouds - len(shown["points"])
                    if room > 0:
                        shown["points"].extend(points[:room, :, :3])
                        shown["true"].extend(target[:room])
                        shown["pred"].extend(pred[:room])
                        ids = batch.get("id") or [f"cloud {len(shown['ids']) + j}" for j in range(len(points))]
                        shown["ids"].extend(list(ids)[:room])
        finally:
            if isinstance(segmenter, nn.Module):
                segmenter.train(was_training)
        if not labels:
            raise ValueError("the test loader yielded no batches; nothing to evaluate")
        test_labels = torch.cat(labels)
        fit_labels = _labels_of(train_loader, self.label_key) if train_loader is not None else test_labels
        scores = segmentation_scores(cm)
        baseline = majority_baseline(fit_labels, test_labels, k, self.ignore_index)
        out_dir = Path(out_dir)
        if shown["points"]:
            plot_segmentation(torch.stack(shown["points"]), torch.stack(shown["true"]), torch.stack(shown["pred"]),
                              names, out_dir / "segmentation_clouds.png", self.plot_axes, self.invert_vertical,
                              shown["ids"])
        plots.plot_confusion_matrix(cm, names, out_dir / "segmentation_confusion.png")
        metrics = scores.metrics(names)
        metrics.update({f"majority_{key}": v for key, v in baseline.metrics(names).items() if "/" not in key})
        return {f"segmentation/{key}": float(v) for key, v in metrics.items()}


__all__ = ["segmentation_confusion", "iou_per_class", "mean_iou", "SegmentationScores", "segmentation_scores",
           "majority_class", "majority_baseline", "class_colors", "plot_segmentation", "SegmentationEvaluator"]
