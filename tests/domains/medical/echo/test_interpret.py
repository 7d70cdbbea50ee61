"""Anatomic attention (weights sum to one per section, hand-computed pooling), retrieval of labels, the report
index round trip, interpretation of a study, and `alignkit interpret` on a held-out study."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("av")
from alignkit.cli import main  # noqa: E402
from alignkit.core.registry import COMMANDS  # noqa: E402
from alignkit.domains.medical.echo import cli, encoders, models  # noqa: E402,F401  (registers)
from alignkit.domains.medical.echo.attention import (ViewSectionAttention, pad_studies,  # noqa: E402
                                                     train_section_attention)
from alignkit.domains.medical.echo.interpret import (ReportIndex, ablate_frames, retrieve_labels,  # noqa: E402
                                                     section_name)


def test_attention_weights_sum_to_one_per_section():
    torch.manual_seed(0)
    attention = ViewSectionAttention(["left ventricle", "pericardium"], ["A2C", "A4C", "SSN"])
    attention.logits.data = torch.tensor([[0.0, 2.0, -1.0], [1.0, 0.0, 0.5]])
    videos = F.normalize(torch.randn(2, 3, 8), dim=-1)
    views = torch.tensor([[1, 2, 0], [0, 0, 0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    out = attention(videos, views, mask)
    assert out.weights.shape == (2, 2, 3)
    assert torch.allclose(out.weights.sum(-1), torch.ones(2, 2))
    assert torch.equal(out.weights[1, :, 1:], torch.zeros(2, 2))  # padding gets no weight
    # study 0, left ventricle: softmax of A[lv, (A4C, SSN, A2C)] = softmax(2, -1, 0)
    w = torch.tensor([2.0, -1.0, 0.0]).softmax(0)
    assert torch.allclose(out.weights[0, 0], w)
    assert torch.allclose(out.sections[0, 0], F.normalize((w[:, None] * videos[0]).sum(0), dim=0), atol=1e-6)
    assert torch.allclose(out.sections[1, 1], videos[1, 0], atol=1e-6)  # one video: the section is that video
    assert torch.allclose(out.study[0], F.normalize(out.sections[0].sum(0), dim=0), atol=1e-6)
    with pytest.raises(ValueError, match="no videos"):
        attention(videos, views, torch.zeros(2, 3, dtype=torch.bool))


def test_pad_studies_keeps_order():
    values = torch.tensor([[1.0], [2.0], [3.0], [4.0], [5.0]])
    padded, mask = pad_studies(values, torch.tensor([1, 0, 1, 2, 1]), 3)
    assert padded[..., 0].tolist() == [[2, 0, 0], [1, 3, 5], [4, 0, 0]]
    assert mask.tolist() == [[True, False, False], [True, True, True], [True, False, False]]


def test_attention_learns_the_informative_view():
    """Section 0's text matches the A4C video, section 1's the SSN video; the other views are noise."""
    torch.manual_seed(0)
    b, d = 64, 16
    a4c, ssn, noise = (F.normalize(torch.randn(b, d), dim=-1) for _ in range(3))
    videos = torch.stack([noise, a4c, ssn], dim=1)  # views A2C, A4C, SSN
    views = torch.tensor([0, 1, 2]).expand(b, 3)
    text = torch.stack([a4c, ssn], dim=1)
    attention = ViewSectionAttention(["s0", "s1"], ["A2C", "A4C", "SSN"])
    history = train_section_attention(attention, videos, views, torch.ones(b, 3, dtype=torch.bool), text,
                                      torch.ones(b, 2, dtype=torch.bool), steps=100, lr=0.1)
    assert history[-1] < 0.5 * history[0]
    weights = attention(videos, views, torch.ones(b, 3, dtype=torch.bool)).weights[0]
    assert weights[0, 1] > 0.8 and weights[1, 2] > 0.8


def test_retrieve_labels_reference():
    keys = F.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.7, 0.7]]), dim=-1)
    values = torch.tensor([[60.0, 1.0], [40.0, -1.0], [20.0, 0.0], [30.0, 0.0]])
    out = retrieve_labels(torch.tensor([[1.0, 0.0]]), keys, values, k=2)
    assert out.indices.tolist() == [[0, 1]]
    assert torch.allclose(out.pred, torch.tensor([[50.0, 1.0]]))  # -1 is unknown: left out of the mean
    assert math.isnan(float(retrieve_labels(torch.tensor([[1.0, 0.0]]), keys[1:2], values[1:2], 1).pred[0, 1]))


def test_frame_ablations():
    video = torch.arange(2 * 1 * 4 * 1 * 1, dtype=torch.float32).view(2, 1, 4, 1, 1)
    assert torch.equal(ablate_frames(video, "full"), video)
    single = ablate_frames(video, "single")
    assert torch.equal(single[:, :, 3], video[:, :, 0])
    shuffled = ablate_frames(video, "shuffled", torch.Generator().manual_seed(1))
    assert torch.equal(shuffled.sort(dim=2).values, video) and not torch.equal(shuffled, video)
    with pytest.raises(ValueError, match="frame mode"):
        ablate_frames(video, "reversed")


def test_index_round_trip(tmp_path: Path):
    attention = ViewSectionAttention(["pericardium"], ["A4C", "SSN"])
    attention.logits.data.fill_(0.3)
    index = ReportIndex(study_ids=["S1", "S2"], report=torch.eye(2), ef=torch.tensor([55.0, 30.0]),
                        labels=torch.tensor([[1.0], [0.0]]), finding_names=["pericardial_effusion"],
                        views=["A4C", "SSN"], sections={"pericardium": (["pericardium: No effusion."], [1],
                                                                        torch.ones(1, 2))},
                        decoder={"num_frames": 4}, attention=attention)
    loaded = ReportIndex.load(index.save(tmp_path / "index"))
    assert loaded.study_ids == ["S1", "S2"] and loaded.decoder == {"num_frames": 4}
    assert loaded.sections["pericardium"][0] == ["pericardium: No effusion."]
    assert torch.equal(loaded.attention.logits, attention.logits) and torch.equal(loaded.ef, index.ef)
    assert section_name("left ventricle: Normal size.") == "left ventricle" and section_name("x") == "report"
    with pytest.raises(FileNotFoundError, match="not an echo report index"):
        ReportIndex.load(tmp_path)


def test_interpret_command_is_registered():
    assert "interpret" in COMMANDS
    with pytest.raises(SystemExit):
        main(["interpret", "--help"])


def test_load_echo_model_from_an_exported_folder(tmp_path: Path):
    """`alignkit interpret --model` accepts an exported folder (config.json + model.safetensors)."""
    from alignkit.core.api import AlignedModel
    from alignkit.core.registry import MODELS
    from alignkit.domains.medical.echo.interpret import load_echo_model
    cfg = {"embed_dim": 16, "towers": {"video": {"encoder": "echo-r2plus1d", "params": {"widths": [8, 16]}},
                                       "text": {"encoder": "minilm-l6", "params": {"cache": True}, "frozen": True}},
           "objectives": [{"a": "video", "b": "text", "loss": "multi_positive"}]}
    torch.manual_seed(0)
    module = MODELS.build("echo-clip", model=cfg, optim={}, views=["A2C", "A4C", "SSN"]).eval()
    AlignedModel(module, {"model": {**cfg, "name": "echo-clip", "params": {"views": ["A2C", "A4C", "SSN"]}}}).save(
        tmp_path / "model")
    loaded = load_echo_model(tmp_path / "model")
    clips = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        assert loaded.views == ["A2C", "A4C", "SSN"]
        assert torch.allclose(loaded.video_outputs(clips)[1], module.video_outputs(clips)[1], atol=1e-6)
    with pytest.raises(FileNotFoundError, match="neither a run folder"):
        load_echo_model(tmp_path)
