"""Tests for the registered evaluators (alignkit.core.evaluators) and embed_loader, end to end on a toy model."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, default_collate

from alignkit.core import evaluators
from alignkit.core.embeddings import embed_loader
from alignkit.core.registry import EVALUATORS, ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 1000, path
    assert path.read_bytes()[:8] == PNG_MAGIC


# --------------------------------------------------------------------------- evaluators end to end

DIM = 8
CLASSES = ["cat", "dog", "owl"]


class FakeModel:
    """``embed("image", (B, D) tensor)`` normalises the tensor; ``embed("text", list[str])`` looks strings up."""

    def __init__(self, text_table: Dict[str, torch.Tensor]):
        self.text_table = text_table
        self.calls: List[str] = []

    def embed(self, modality: str, inputs):
        self.calls.append(modality)
        if modality == "image":
            return F.normalize(inputs, dim=-1)
        return F.normalize(torch.stack([self.text_table[t] for t in inputs]), dim=-1)


class DictDataset(torch.utils.data.Dataset):
    def __init__(self, items: List[dict], class_names: List[str]):
        self.items, self.class_names = items, class_names

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


@pytest.fixture(scope="module")
def toy():
    """Paired image/text items around 3 class prototypes, a text table and train/test loaders."""
    g = torch.Generator().manual_seed(0)
    protos = F.normalize(torch.randn(3, DIM, generator=g), dim=-1) * 3
    table = {f"a photo of a {c}": protos[i] for i, c in enumerate(CLASSES)}
    splits = {}
    for split, n in (("train", 60), ("test", 30)):
        items = []
        for i in range(n):
            label = i % 3
            image = protos[label] + 0.6 * torch.randn(DIM, generator=g)
            caption = f"{split} caption {i}"
            table[caption] = image + 0.3 * torch.randn(DIM, generator=g)
            multi = torch.tensor([float(label == 0), float(label == 1), -1.0 if i % 5 == 0 else float(label == 2)])
            items.append({"image": image, "text": caption, "label": label, "id": f"{split}{i}", "group": label,
                          "labels": multi})
        splits[split] = DataLoader(DictDataset(items, CLASSES), batch_size=8, collate_fn=default_collate)
    return FakeModel(table), splits["train"], splits["test"]


def test_embed_loader_collects_fields(toy):
    model, _, test = toy
    out = embed_loader(model, test, ["image", "text"], progress=False)
    assert out["image"].shape == out["text"].shape == (30, DIM)
    assert out["label"].tolist() == [i % 3 for i in range(30)] and out["id"][:2] == ["test0", "test1"]
    assert out["group"].dtype == torch.int64
    with pytest.raises(KeyError, match="point"):
        embed_loader(model, test, ["point"], progress=False)


def test_evaluator_registry_names():
    assert {"retrieval", "zero_shot", "linear_probe", "knn"} <= set(EVALUATORS.names())
    with pytest.raises(ConfigError, match="num_candidate"):
        EVALUATORS.build("retrieval", num_candidate=5)


def test_retrieval_evaluator(toy, tmp_path: Path):
    model, train, test = toy
    evaluator = EVALUATORS.build("retrieval", query="text", gallery="image", ks=[1, 5], progress=False)
    m = evaluator(model, train, test, tmp_path)
    assert set(m) == {f"retrieval/{d}_{k}" for d in ("text2image", "image2text")
                      for k in ("R@1", "R@5", "median_rank", "mean_rank")}
    assert m["retrieval/text2image_R@1"] > 0.7 and m["retrieval/image2text_R@5"] > 0.9
    assert_png(tmp_path / "retrieval_text2image_similarity.png")
    assert_png(tmp_path / "retrieval_text_image_recall_at_k.png")
    # matching by label makes every same-class item correct -> at least as good
    by_label = evaluators.RetrievalEvaluator(match_key="label", progress=False)(model, train, test, tmp_path)
    assert by_label["retrieval/text2image_R@1"] >= m["retrieval/text2image_R@1"]
    assert by_label["retrieval/text2image_R@10"] == 1.0
    blocks = evaluators.RetrievalEvaluator(num_candidates=10, ks=(1,), progress=False)(model, train, test, tmp_path)
    assert blocks["retrieval/text2image_R@1"] >= m["retrieval/text2image_R@1"]
    with pytest.raises(ConfigError, match="match_key"):
        evaluators.RetrievalEvaluator(match_key="study", progress=False)(model, train, test, tmp_path)


def test_zero_shot_evaluator(toy, tmp_path: Path):
    model, train, test = toy
    m = evaluators.ZeroShotEvaluator(templates=["a photo of a {}"], progress=False)(model, train, test, tmp_path)
    assert set(m) == {"zero_shot/top1", "zero_shot/top5", "zero_shot/mean_per_class_acc"}
    assert m["zero_shot/top1"] > 0.9 and m["zero_shot/top5"] == 1.0
    assert_png(tmp_path / "zero_shot_confusion.png")

    multi = evaluators.ZeroShotEvaluator(templates=["a photo of a {}"], label_key="labels", multilabel=True,
                                         class_names=CLASSES, progress=False)(model, train, test, tmp_path / "ml")
    assert multi["zero_shot/auroc_mean"] > 0.9 and "zero_shot/auroc/owl" in multi
    assert_png(tmp_path / "ml" / "zero_shot_roc.png")


def test_linear_probe_and_knn_evaluators(toy, tmp_path: Path):
    model, train, test = toy
    lp = evaluators.LinearProbeEvaluator(max_epochs=30, weight_decays=[1e-3, 1e-1], progress=False)(
        model, train, test, tmp_path)
    assert lp["linear_probe/top1"] > 0.9 and "linear_probe/weight_decay" in lp
    assert_png(tmp_path / "linear_probe_confusion.png")
    knn = EVALUATORS.build("knn", k=5, progress=False)(model, train, test, tmp_path)
    assert set(knn) == {"knn/top1", "knn/top5", "knn/mean_per_class_acc"} and knn["knn/top1"] > 0.9
    assert_png(tmp_path / "knn_confusion.png")
