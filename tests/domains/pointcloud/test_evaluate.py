"""Point-cloud evaluators: template-ensemble zero-shot (hand-computed) and full fine-tuning."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, List

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from alignkit.core.collate import collate_samples
from alignkit.core.registry import EVALUATORS, ConfigError
from alignkit.domains.pointcloud import evaluate as _evaluate  # noqa: F401  (registrations)
from alignkit.domains.pointcloud.evaluate import PointFineTuneEvaluator
from alignkit.domains.pointcloud.prompts import MODELNET40_64

NAMES = ["chair", "table", "lamp"]


class Items(Dataset):
    def __init__(self, items: List[Dict[str, Any]], class_names: List[str]):
        self.items, self.class_names = items, class_names

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Dict[str, Any]:
        return self.items[i]


class PromptModel:
    """``embed("points", x) = x`` (3-d one-hot-ish); a prompt embeds to the one-hot of the class it names, except
    that prompts with "photo" name the next class (so the ensemble, not the first template, decides)."""

    def __init__(self):
        self.prompts: List[str] = []

    def embed(self, modality: str, inputs: Any) -> Tensor:
        if modality == "points":
            return F.normalize(inputs.float(), dim=-1)
        self.prompts.extend(inputs)
        rows = []
        for text in inputs:
            c = next(i for i, n in enumerate(NAMES) if n in text)
            rows.append(F.one_hot(torch.tensor((c + 1) % 3 if "photo" in text else c), 3).float())
        return torch.stack(rows)


def loader(points: Tensor, labels: List[int], batch_size: int = 4) -> DataLoader:
    items = [{"points": p, "label": y} for p, y in zip(points, labels)]
    return DataLoader(Items(items, NAMES), batch_size=batch_size, collate_fn=collate_samples)


def test_point_zero_shot_uses_the_64_template_ensemble(tmp_path: Path):
    model = PromptModel()
    # class c's ensemble: (#non-photo templates) e_c + (#photo) e_{c+1}, normalised
    photo = sum("photo" in t for t in MODELNET40_64)
    other = len(MODELNET40_64) - photo
    assert photo > other  # photo templates dominate: the ensemble of class c points mostly at c + 1
    points = torch.eye(3)[[1, 2, 0, 0]] + 0.01  # items near e_1, e_2, e_0, e_0
    labels = [0, 1, 2, 1]
    metrics = EVALUATORS.build("point_zero_shot", progress=False)(model, None, loader(points, labels), tmp_path)
    assert len(model.prompts) == 64 * 3 and model.prompts[0] == "a point cloud model of chair."
    # e_1 is closest to class 0's ensemble (mostly e_1), e_2 to class 1's, e_0 to class 2's
    assert metrics["zero_shot/top1"] == pytest.approx(3 / 4)
    assert metrics["zero_shot/acc/chair"] == 1.0 and metrics["zero_shot/acc/table"] == 0.5
    assert metrics["zero_shot/mean_per_class_acc"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert metrics["zero_shot/top5"] == 1.0
    assert (tmp_path / "zero_shot_confusion.png").stat().st_size > 0
    single = EVALUATORS.build("point_zero_shot", templates=["a point cloud model of {}."], progress=False)
    assert single(PromptModel(), None, loader(points, labels), tmp_path)["zero_shot/top1"] == 0.0  # all off by one


class Towers(nn.Module):
    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.towers = nn.ModuleDict({"points": nn.Module()})
        self.towers["points"].encoder = encoder


class MeanPointNet(nn.Module):
    """A tiny point encoder: mean over points of a per-point MLP."""

    def __init__(self):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 16))
        self.output_dim = 16

    def forward(self, points: Tensor) -> Tensor:
        return self.mlp(points).mean(1)


def test_point_finetune_trains_a_copy_and_classifies(tmp_path: Path):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    labels = [i % 3 for i in range(60)]
    clouds = torch.stack([centres[y] + 0.2 * torch.randn(32, 3, generator=g) for y in labels])
    encoder = MeanPointNet()
    model = SimpleNamespace(module=Towers(encoder))
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    evaluator = EVALUATORS.build("point_finetune", epochs=20, lr=1e-2, encoder_lr_ratio=1.0, progress=False)
    metrics = evaluator(model, loader(clouds[:45], labels[:45], 8), loader(clouds[45:], labels[45:], 8), tmp_path)
    assert metrics["point_finetune/top1"] >= 0.9
    assert (tmp_path / "point_finetune_confusion.png").is_file()
    for k, v in encoder.state_dict().items():  # the evaluated model is not modified
        torch.testing.assert_close(v, before[k])
    with pytest.raises(ConfigError, match="needs a model with a 'cloud' tower"):
        EVALUATORS.build("point_finetune", modality="cloud")(model, loader(clouds, labels), loader(clouds, labels),
                                                             tmp_path)
    with pytest.raises(ConfigError, match="epochs >= 1"):
        PointFineTuneEvaluator(epochs=0)  # the constructor's own check (direct Python use)
    with pytest.raises(ConfigError, match="epochs = 0 for evaluator 'point_finetune': must be >= 1"):
        EVALUATORS.build("point_finetune", epochs=0)  # the registry checks the annotation first
