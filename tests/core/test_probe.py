"""Tests for alignkit.core.probe: linear probe and weighted kNN."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from alignkit.core import probe

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- linear probe and kNN


def _separable(n: int, dim: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    w = torch.randn(dim, 3, generator=g)
    return x, (x @ w).argmax(1)


def test_linear_probe_separable_and_random_labels():
    x, y = _separable(600, 8, seed=0)
    res = probe.linear_probe(x[:400], y[:400], x[400:], y[400:], max_epochs=50, weight_decays=(1e-4, 1e-2))
    assert res.metrics["top1"] > 0.95
    assert res.test_scores.shape == (200, 3)
    assert res.metrics["weight_decay"] in (1e-4, 1e-2) and "val_top1" in res.metrics
    again = probe.linear_probe(x[:400], y[:400], x[400:], y[400:], max_epochs=50, weight_decays=(1e-4, 1e-2))
    assert torch.equal(res.test_scores, again.test_scores)

    g = torch.Generator().manual_seed(1)
    rx, ry = torch.randn(800, 16, generator=g), torch.randint(0, 2, (800,), generator=g)
    rand = probe.linear_probe(rx[:400], ry[:400], rx[400:], ry[400:], max_epochs=50, weight_decays=(1e-4, 1e-1))
    assert rand.metrics["top1"] < 0.7


def test_linear_probe_multilabel_and_inference_mode():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(300, 6, generator=g)
    y = (x[:, :3] > 0).float()
    y[torch.rand(300, 3, generator=g) < 0.1] = -1
    with torch.inference_mode():  # as inside Lightning's validation/test loops
        x_inf, y_inf = x.clone(), y.clone()
        res = probe.linear_probe(x_inf[:200], y_inf[:200], x_inf[200:], y_inf[200:], multilabel=True,
                                 max_epochs=30, weight_decays=(1e-4,), class_names=["p", "q", "r"])
    assert res.metrics["auroc_mean"] > 0.95 and set(res.metrics) >= {"auroc/p", "auroc/r", "val_auroc_mean"}


def test_knn_weights_and_clusters():
    train_x = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    train_y = torch.tensor([0, 1, 1])
    out = probe.knn_classify(train_x, train_y, torch.tensor([[1.0, 0.0]]), k=2, temperature=0.5)
    w0, w1 = math.exp(1.0 / 0.5), math.exp(0.8 / 0.5)  # item 2 (sim 0) is not among the 2 nearest
    assert torch.allclose(out.probs, torch.tensor([[w0 / (w0 + w1), w1 / (w0 + w1)]]))
    assert out.pred.tolist() == [0]

    g = torch.Generator().manual_seed(3)
    centers = F.normalize(torch.randn(5, 16, generator=g), dim=-1) * 3
    ytr, yte = torch.arange(200) % 5, torch.arange(100) % 5
    xtr = centers[ytr] + 0.5 * torch.randn(200, 16, generator=g)
    xte = centers[yte] + 0.5 * torch.randn(100, 16, generator=g)
    acc = probe.knn_accuracy(xtr, ytr, xte, yte, k=10)
    assert acc["top1"] > 0.95 and acc["top5"] == 1.0
    assert probe.knn_accuracy(xtr, ytr[torch.randperm(200, generator=g)], xte, yte, k=10)["top1"] < 0.45
