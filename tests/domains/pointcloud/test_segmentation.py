"""Segmentation metrics on hand-built confusion cases, the majority baseline, the plot and the evaluator."""
from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import List, Sequence

import pytest
import torch
from PIL import Image
from torch import Tensor, nn

from alignkit.core.registry import EVALUATORS, ConfigError
from alignkit.domains.pointcloud.rgbd.files import IGNORE_INDEX
from alignkit.domains.pointcloud.segmentation import (iou_per_class, majority_baseline, majority_class, mean_iou,
                                                      plot_segmentation, segmentation_confusion, segmentation_scores)

X = IGNORE_INDEX


def test_confusion_counts_labeled_points_only():
    target = torch.tensor([[0, 0, 1, X], [2, 1, 1, X]])
    pred = torch.tensor([[0, 1, 1, 2], [0, 1, 2, 0]])
    cm = segmentation_confusion(pred, target, num_classes=3)
    # rows true, columns predicted: (0->0), (0->1), (1->1), (2->0), (1->1), (1->2)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 1], [1, 0, 0]]
    with pytest.raises(ValueError, match="target class 3 is outside"):
        segmentation_confusion(pred, torch.tensor([[0, 0, 1, 3], [2, 1, 1, X]]), num_classes=3)
    with pytest.raises(ValueError, match="prediction class -1"):
        segmentation_confusion(torch.full_like(pred, -1), target, num_classes=3)


def test_iou_excludes_classes_absent_from_truth_and_prediction():
    # class 0: tp 3, fn 1 (->1), fp 1 (<-1) -> 3/5; class 1: tp 2, fn 2 (->0, ->2), fp 1 (<-0) -> 2/5;
    # class 2: never true, predicted once -> 0/1 = 0 (counted); class 3: absent everywhere -> NaN (excluded)
    cm = torch.tensor([[3, 1, 0, 0], [1, 2, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    iou = iou_per_class(cm)
    torch.testing.assert_close(iou[:3], torch.tensor([3 / 5, 2 / 5, 0.0], dtype=torch.float64))
    assert math.isnan(float(iou[3]))
    assert mean_iou(cm) == pytest.approx((3 / 5 + 2 / 5 + 0.0) / 3)
    assert math.isnan(mean_iou(torch.zeros(2, 2, dtype=torch.long)))


def test_scores_accuracy_and_per_class_names():
    cm = torch.tensor([[3, 1, 0], [1, 2, 1], [0, 0, 0]])
    scores = segmentation_scores(cm)
    assert scores.overall_accuracy == pytest.approx(5 / 8)
    assert scores.mean_class_accuracy == pytest.approx((3 / 4 + 2 / 4) / 2)  # class 2 is never true
    metrics = scores.metrics(["floor", "chair", "lamp"])
    assert metrics["iou/floor"] == pytest.approx(3 / 5) and metrics["iou/lamp"] == 0.0
    assert metrics["mIoU"] == pytest.approx((3 / 5 + 2 / 5 + 0) / 3)
    perfect = segmentation_scores(torch.diag(torch.tensor([5, 2, 0])))
    assert perfect.miou == 1.0 and math.isnan(float(perfect.per_class_iou[2]))


def test_majority_baseline_predicts_the_fit_majority_everywhere():
    fit = torch.tensor([0, 1, 1, 1, 2, X, X, X])
    assert majority_class(fit, 3) == 1
    assert majority_class(torch.tensor([2, 0, 0, 2]), 3) == 0  # ties: lowest index
    test = torch.tensor([1, 1, 0, 0, 0, 2, X])
    base = majority_baseline(fit, test, 3)
    # predicting 1 everywhere: IoU_1 = 2/6, classes 0 and 2 are true but never predicted -> 0
    assert base.miou == pytest.approx((2 / 6) / 3)
    assert base.overall_accuracy == pytest.approx(2 / 6)
    with pytest.raises(ValueError, match="no labeled point"):
        majority_class(torch.full((3,), X), 3)


def test_plot_segmentation_writes_true_and_predicted_panels(tmp_path: Path):
    torch.manual_seed(0)
    points = torch.randn(2, 50, 6)
    true = torch.randint(0, 3, (2, 50))
    true[0, :5] = X
    path = plot_segmentation(points, true, true.flip(1), ["a", "b", "c"], tmp_path / "seg.png", titles=["s0", "s1"])
    with Image.open(path) as img:
        width, height = img.size
    assert height > width * 0.6  # two rows of (true | predicted)
    with pytest.raises(ValueError, match="expected points"):
        plot_segmentation(points[0], true, true, ["a", "b", "c"], tmp_path / "bad.png")


class SignSegmenter(nn.Module):
    """Predicts class 1 where x > 0, else class 0 (a hand-checkable model)."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))
        self.calls: List[Sequence[str]] = []

    def segment_logits(self, points: Tensor, class_names: Sequence[str]) -> Tensor:
        self.calls.append(list(class_names))
        positive = (points[..., 0] > 0).long()
        return torch.nn.functional.one_hot(positive, len(class_names)).float() + 0 * self.anchor


def _batches(xs: List[List[float]], segs: List[List[int]]) -> List[dict]:
    points = torch.zeros(len(xs), len(xs[0]), 6)
    points[..., 0] = torch.tensor(xs)
    return [{"points": points, "seg": torch.tensor(segs), "id": [f"f{i}" for i in range(len(xs))]}]


def test_segmentation_evaluator_metrics_baseline_and_plots(tmp_path: Path):
    test = _batches([[-1, 1, 1, -1], [1, 1, -1, 1]], [[0, 1, 0, X], [1, 1, 0, 2]])
    train = _batches([[0, 0, 0, 0]], [[2, 2, 0, 1]])
    model = SignSegmenter()
    evaluator = EVALUATORS.build("segmentation", class_names=["floor", "chair", "lamp"], plot_clouds=1, progress=False)
    wrapped = SimpleNamespace(module=model)  # like an AlignedModel around the Lightning module
    metrics = evaluator(wrapped, train, test, tmp_path)
    # labeled: (0,0) (1,1) (0,1) | (1,1) (1,1) (0,0) (2,1) -> cm [[2,1,0],[0,3,0],[0,1,0]]
    expected = segmentation_scores(torch.tensor([[2, 1, 0], [0, 3, 0], [0, 1, 0]]))
    assert metrics["segmentation/mIoU"] == pytest.approx(expected.miou)
    assert metrics["segmentation/iou/chair"] == pytest.approx(3 / 5)
    assert metrics["segmentation/overall_accuracy"] == pytest.approx(5 / 7)
    # majority of the train labels is class 2 ("lamp"): test has 1 lamp point of 7
    assert metrics["segmentation/majority_mIoU"] == pytest.approx((1 / 7) / 3)
    assert model.calls == [["floor", "chair", "lamp"]] and model.training
    assert (tmp_path / "segmentation_clouds.png").is_file() and (tmp_path / "segmentation_confusion.png").is_file()
    with pytest.raises(ConfigError, match="segment_logits"):
        evaluator(nn.Linear(2, 2), None, test, tmp_path)
    with pytest.raises(ConfigError, match="class names"):
        EVALUATORS.build("segmentation", progress=False)(model, None, test, tmp_path)
