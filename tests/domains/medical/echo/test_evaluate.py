"""Echo metrics against hand-computed references: regression, ridge, study-level retrieval figures, views, plots."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from alignkit.core.registry import EVALUATORS, ConfigError
from alignkit.domains.medical.echo.evaluate import (plot_section_attention, regression_metrics, ridge_regression,
                                                    study_metrics, view_metrics)
from alignkit.domains.medical.echo.interpret import StudySet


def test_regression_metrics_reference():
    out = regression_metrics(torch.tensor([1.0, 2.0, 5.0, float("nan")]), torch.tensor([1.0, 3.0, 3.0, 4.0]))
    assert out["mae"] == pytest.approx(1.0)  # (0 + 1 + 2) / 3
    assert out["r2"] == pytest.approx(1 - 5.0 / (8.0 / 3.0))  # SS_res 0+1+4; SS_tot about the mean 7/3


def test_ridge_recovers_a_linear_target():
    torch.manual_seed(0)
    x = torch.randn(200, 5)
    y = x @ torch.tensor([1.0, -2.0, 0.0, 0.5, 3.0]) + 40.0
    y[3] = float("nan")  # unknown targets are left out
    pred = ridge_regression(x, y, x[:10], alpha=1e-3)
    assert torch.allclose(pred[4:], y[4:10], atol=1e-2)


def study_set(video: torch.Tensor, study: torch.Tensor, report: torch.Tensor, ef, labels) -> StudySet:
    return StudySet(video=F.normalize(video, dim=-1), view_logits=torch.eye(3)[torch.arange(len(video)) % 3],
                    view_labels=torch.arange(len(video)) % 3, study=study,
                    study_ids=[f"S{i}" for i in range(len(report))], report=F.normalize(report, dim=-1),
                    sections=[["x: y"]] * len(report), ef=torch.tensor(ef), labels=torch.tensor(labels))


def test_study_metrics_on_perfect_embeddings():
    """Test videos equal their study's report direction: retrieval finds the training study with that direction."""
    basis = torch.eye(4)
    train = study_set(basis.repeat_interleave(2, 0), torch.arange(4).repeat_interleave(2), basis,
                      [20.0, 40.0, 60.0, 80.0], [[1.0], [0.0], [1.0], [0.0]])
    test = study_set(basis[[2, 2, 0, 1, 3]], torch.tensor([0, 0, 1, 2, 3]), basis[[2, 0, 1, 3]],
                     [60.0, 20.0, 40.0, 80.0], [[1.0], [1.0], [0.0], [0.0]])
    m = study_metrics(train, test, ["finding"], k=1, ks=(1,))
    assert m["ef/retrieval_mae"] == pytest.approx(0.0) and m["ef/retrieval_r2"] == pytest.approx(1.0)
    assert m["ef/mean_mae"] == pytest.approx(20.0)  # |60-50| + |20-50| + |40-50| + |80-50| over 4
    assert m["findings/auroc/finding"] == 1.0 and m["findings/auroc_mean"] == 1.0
    assert m["retrieval/video2report_R@1"] == 1.0 and m["retrieval/report2video_R@1"] == 1.0


def test_view_metrics_and_plots(tmp_path: Path):
    test = study_set(torch.randn(6, 4), torch.zeros(6, dtype=torch.long), torch.randn(1, 4), [50.0], [[0.0]])
    test.view_logits[0] = torch.tensor([0.0, 0.0, 9.0])  # video 0 (view 0) predicted as view 2
    assert view_metrics(test, ["A2C", "A4C", "SSN"], tmp_path)["view/accuracy"] == pytest.approx(5 / 6)
    assert (tmp_path / "view_confusion.png").stat().st_size > 0
    path = plot_section_attention(torch.tensor([[0.5, 0.5], [0.9, 0.1]]), ["lv", "pericardium"], ["a", "b"],
                                  tmp_path / "attention.png")
    assert path.stat().st_size > 0
    with pytest.raises(ValueError, match="does not match"):
        plot_section_attention(torch.ones(2, 3), ["lv"], ["a"], tmp_path / "bad.png")


def test_evaluator_needs_an_echo_model(tmp_path: Path):
    evaluator = EVALUATORS.build("echo_study", k=3)
    with pytest.raises(ConfigError, match="echo-clip"):
        evaluator(torch.nn.Linear(2, 2), None, None, tmp_path)
