"""Tests for alignkit.core.plots: every figure is written as a PNG."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from alignkit.core import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 1000, path
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_every_plot_writes_a_png(tmp_path: Path):
    torch.manual_seed(0)
    paths = [
        plots.plot_similarity_matrix(torch.randn(80, 70), tmp_path / "sim.png", labels=[f"s{i}" for i in range(80)]),
        plots.plot_similarity_matrix(np.eye(5), tmp_path / "sim_small.png", labels=list("abcde")),
        plots.plot_confusion_matrix(torch.tensor([[3, 1], [0, 2]]), ["x", "y"], tmp_path / "cm.png"),
        plots.plot_confusion_matrix(torch.randint(0, 9, (30, 30)), [str(i) for i in range(30)],
                                    tmp_path / "cm_big.png", normalize=False),
        plots.plot_recall_at_k({"a2b": torch.linspace(0.2, 1, 50), "b2a": [0.1, 0.5, 0.9]}, tmp_path / "rk.png"),
        plots.plot_roc_curves(torch.rand(30, 3), torch.tensor([[1, 0, 0], [0, 1, 0]] * 15), ["a", "b", "c"],
                              tmp_path / "roc.png"),
    ]
    for p in paths:
        assert_png(p)
