"""Tests for alignkit.core.embeddings (safetensors round trip) and the export_embeddings evaluator."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from alignkit.core import embeddings
from alignkit.core.collate import collate_samples


def test_export_load_round_trip(tmp_path: Path):
    emb = torch.randn(4, 3)
    path = embeddings.export_embeddings(tmp_path / "sub" / "emb.safetensors", image=emb, label=[0, 1, 1, 2],
                                        id=["a", "b", "c", "d"], scores=np.arange(4.0))
    out = embeddings.load_embeddings(path)
    assert set(out) == {"image", "label", "id", "scores"}
    assert torch.equal(out["image"], emb) and out["label"].tolist() == [0, 1, 1, 2]
    assert out["id"] == ["a", "b", "c", "d"] and out["scores"].tolist() == [0.0, 1.0, 2.0, 3.0]
    with pytest.raises(TypeError, match="'bad'"):
        embeddings.export_embeddings(tmp_path / "x.safetensors", bad={"a": 1})


def test_embedding_export_evaluator_round_trip(tmp_path) -> None:
    from alignkit.core.embeddings import load_embeddings
    from alignkit.core.evaluators import EmbeddingExportEvaluator

    class Fake:
        def embed(self, modality, inputs):
            x = inputs.float() if isinstance(inputs, torch.Tensor) else torch.tensor([[float(len(t)), 1.0] for t in inputs])
            return torch.nn.functional.normalize(x, dim=-1)

    samples = [{"image": torch.tensor([float(i), 1.0]), "text": "x" * (i + 1), "label": i % 2, "id": f"s{i}"}
               for i in range(5)]
    loader = torch.utils.data.DataLoader(samples, batch_size=2, collate_fn=collate_samples)
    metrics = EmbeddingExportEvaluator(progress=False)(Fake(), None, loader, tmp_path)
    assert metrics == {"export_embeddings/count": 5.0}
    back = load_embeddings(tmp_path / "embeddings.safetensors")
    assert back["image"].shape == (5, 2) and back["id"] == [f"s{i}" for i in range(5)]
    assert back["label"].tolist() == [0, 1, 0, 1, 0]
