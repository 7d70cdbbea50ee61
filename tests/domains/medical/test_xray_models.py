"""GloriaModule: global + local loss on tiny towers, word features, gradient flow, the local loss learning on a
constant batch, attention maps and their PNGs, and a cached frozen text tower."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict

import pytest
import torch

from alignkit.core.module import AlignmentModule
from alignkit.core.registry import MODELS, ConfigError
from alignkit.domains.medical.xray.gloria import gloria_local_loss
from alignkit.domains.medical.xray.models import GloriaModule

TINY_BERT = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
             "intermediate_size": 64, "max_position_embeddings": 64}
REPORTS = ["There is a small left pleural effusion.", "No pleural effusion. Mild cardiomegaly.",
           "Right upper lobe consolidation.", "No acute cardiopulmonary process."]


def tiny_model(text: Dict[str, Any] | None = None, frozen_text: bool = False) -> Dict[str, Any]:
    return {"embed_dim": 16,
            "towers": {"image": {"encoder": "small-cnn", "params": {"in_channels": 1, "widths": [8, 16]}},
                       "text": {"encoder": "hf-text", "frozen": frozen_text,
                                "params": text or {"config": TINY_BERT, "max_length": 32}}},
            "objectives": [{"a": "image", "b": "text", "loss": "multi_positive",
                            "params": {"init_temperature": 0.1, "learnable_temperature": False}}]}


def batch() -> Dict[str, Any]:
    torch.manual_seed(0)
    return {"image": torch.randn(4, 1, 16, 16), "text": list(REPORTS), "group": torch.tensor([0, 1, 2, 3])}


def test_loss_is_global_plus_weighted_local_and_all_towers_learn():
    torch.manual_seed(0)
    model = MODELS.build("gloria", model=tiny_model(), local_weight=0.5)
    assert isinstance(model, GloriaModule)
    out = model.compute_loss(batch())
    assert {"image-text/loss", "gloria_local/loss", "gloria_local/local_accuracy"} <= set(out)
    torch.testing.assert_close(out["loss"].detach(), out["image-text/loss"] + 0.5 * out["gloria_local/loss"])
    out["loss"].backward()
    for name in ("region_proj.weight", "word_proj.weight", "towers.image.encoder.body.0.conv.weight",
                 "towers.text.encoder.model.embeddings.word_embeddings.weight"):
        assert dict(model.named_parameters())[name].grad is not None, name
    # the global term reuses the image map: it equals the core module's loss with the same weights
    core = AlignmentModule(tiny_model())
    core.load_state_dict(model.state_dict(), strict=False)
    torch.testing.assert_close(core.compute_loss(batch())["image-text/loss"], out["image-text/loss"])


def test_local_term_matches_the_reference_on_projected_features():
    torch.manual_seed(0)
    model = GloriaModule(tiny_model(), temp1=3.0, temp2=4.0, temp3=7.0).eval()
    b = batch()
    with torch.no_grad():
        out = model.compute_loss(b)
        words = model.word_features(b["text"])
        regions = model.region_features(b["image"])
    assert words.words[1] == ["no", "pleural", "effusion", ".", "mild", "cardiomegaly", "."]  # no [CLS]/[SEP]
    assert words.mask.sum(1).tolist() == [len(w) for w in words.words]
    assert regions.features.shape == (4, 8 * 8, 16) and regions.grid == (8, 8)
    expected = gloria_local_loss(words.features, words.mask, regions.features, 3.0, 4.0, 7.0)
    torch.testing.assert_close(out["gloria_local/loss"], expected)
    with torch.no_grad():  # a report given as its sentences is joined for the word features
        joined = model.word_features([["No pleural effusion.", "Mild cardiomegaly."]])
    assert joined.words[0] == words.words[1]


def test_local_batch_limits_the_local_term_to_the_first_pairs():
    torch.manual_seed(0)
    model = GloriaModule(tiny_model(), local_batch=2).eval()
    b = batch()
    with torch.no_grad():
        out = model.compute_loss(b)
        words = model.word_features(b["text"][:2])
        regions = model.region_features(b["image"][:2])
    expected = gloria_local_loss(words.features, words.mask, regions.features, 4.0, 5.0, 10.0)
    torch.testing.assert_close(out["gloria_local/loss"], expected)
    with pytest.raises(ConfigError, match="local_batch"):
        GloriaModule(tiny_model(), local_batch=1)


def test_local_loss_decreases_on_a_constant_batch():
    torch.manual_seed(0)
    model = GloriaModule(tiny_model(), local_weight=1.0)
    b = batch()
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        out = model.compute_loss(b)
        optimiser.zero_grad()
        out["loss"].backward()
        optimiser.step()
        losses.append(out["gloria_local/loss"].item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_attention_maps_and_pngs(tmp_path: Path):
    torch.manual_seed(0)
    model = GloriaModule(tiny_model()).eval()
    b = batch()
    result = model.attention(b["image"][:2], b["text"][:2])
    assert result.words[0] == ["there", "is", "a", "small", "left", "pleural", "effusion", "."]
    assert result.maps.shape == (2, 8, 16, 16)  # 8 words at most (report 0), upsampled to the image
    assert (result.maps >= 0).all()
    assert not result.maps[1, len(result.words[1]):].any()  # padded word rows are zero
    paths = model.write_attention_pngs(b["image"][:2], b["text"][:2], tmp_path / "attn", ids=["s/1", "s2"])
    assert [p.name for p in paths] == ["s_1.png", "s2.png"]
    assert all(p.is_file() and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)


def test_frozen_cached_text_tower_runs_once_per_report():
    torch.manual_seed(0)
    model = GloriaModule(tiny_model(text={"config": TINY_BERT, "max_length": 32, "cache": True}, frozen_text=True))
    calls = [0]
    model.towers["text"].encoder.module.model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    b = batch()
    model.compute_loss(b)["loss"].backward()
    first = calls[0]
    model.compute_loss(copy.deepcopy(b))["loss"].backward()
    assert calls[0] == first  # pooled embeddings and token features both came from the cache
    assert model.word_proj.weight.grad is not None


def test_configuration_errors():
    with pytest.raises(ConfigError, match="no 'report' tower"):
        GloriaModule(tiny_model(), text="report")
    with pytest.raises(ConfigError, match="local_weight"):
        GloriaModule(tiny_model(), local_weight=-1.0)
