"""EchoClipModule: video-report multi-positive alignment over study groups plus the view classifier."""
from __future__ import annotations

from typing import Any, Dict

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("av")
from alignkit.core.collate import collate_samples  # noqa: E402
from alignkit.core.losses import multi_positive_infonce_loss  # noqa: E402
from alignkit.core.registry import DATASETS, MODELS, ConfigError  # noqa: E402
from alignkit.domains.medical.echo import data, encoders, models  # noqa: E402,F401  (registers)
from alignkit.domains.medical.echo.synthetic.archive import write_synthetic_echo  # noqa: E402

VIEWS = ["A2C", "A3C", "A4C", "A5C", "Parasternal_Long", "Parasternal_Short", "SSN", "Subcostal"]


def model_cfg() -> Dict[str, Any]:
    return {"embed_dim": 16, "towers": {
        "video": {"encoder": "echo-r2plus1d", "params": {"in_channels": 3, "widths": [8, 16]}},
        "text": {"encoder": "minilm-l6", "params": {"cache": True}, "frozen": True, "head": "linear"}},
        "objectives": [{"a": "video", "b": "text", "loss": "multi_positive"}]}


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    root = write_synthetic_echo(tmp_path_factory.mktemp("echo_models"), 3, image_size=32, frames=12, views=VIEWS,
                                videos_per_study=3, split_fractions=(1.0, 0.0, 0.0))
    dataset = DATASETS.build("echo-studies", root=str(root), split="train", text_mode="sections", views=VIEWS,
                             num_frames=4, image_size=32)
    return collate_samples([dataset[i] for i in range(len(dataset))])


def test_loss_is_multi_positive_plus_view_ce(batch: Dict[str, Any]):
    torch.manual_seed(0)
    module = MODELS.build("echo-clip", model=model_cfg(), optim={}, views=VIEWS, view_weight=0.5)
    out = module.compute_loss(batch)
    z_video, logits = module.video_outputs(batch["video"])
    z_text = module.embed("text", batch["text"])
    groups = batch["group"]
    assert len(set(groups.tolist())) == 3 and len(groups) == 9  # three videos per study, one report each
    contrastive = multi_positive_infonce_loss(z_video, z_text, module.losses[0].logit_scale, groups_a=groups,
                                              groups_b=groups, distributed=False)
    view = F.cross_entropy(logits, batch["label"])
    assert torch.allclose(out["loss"], contrastive + 0.5 * view, atol=1e-5)
    assert torch.allclose(out["view/loss"], view, atol=1e-6)
    out["loss"].backward()
    assert module.view_head.weight.grad is not None and module.view_head.weight.grad.abs().sum() > 0
    assert next(module.towers["video"].encoder.parameters()).grad is not None


def test_training_steps_fit_views(batch: Dict[str, Any]):
    torch.manual_seed(0)
    module = MODELS.build("echo-clip", model=model_cfg(), optim={}, views=VIEWS)
    opt = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=1e-2)
    first: Dict[str, float] = {}
    for _ in range(60):
        out = module.compute_loss(batch)
        first = first or {k: float(v) for k, v in out.items()}
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    assert float(out["view/loss"]) < 0.3 * first["view/loss"] and float(out["view/accuracy"]) == 1.0
    assert float(out["video-text/loss"]) < first["video-text/loss"] - 0.1


def test_bad_configs():
    with pytest.raises(ConfigError, match="no 'clip' tower"):
        MODELS.build("echo-clip", model=model_cfg(), optim={}, video="clip")
    with pytest.raises(ConfigError, match="view_weight"):
        MODELS.build("echo-clip", model=model_cfg(), optim={}, view_weight=-1.0)
    module = MODELS.build("echo-clip", model=model_cfg(), optim={})
    with pytest.raises(KeyError, match="view_weight: 0"):
        module.compute_loss({"video": torch.randn(2, 3, 4, 32, 32), "text": ["a", "b"]})


def test_sections_are_embedded_one_by_one_then_averaged():
    torch.manual_seed(0)
    module = MODELS.build("echo-clip", model=model_cfg(), optim={}, views=VIEWS).eval()
    reports = [["pericardium: No pericardial effusion.", "left atrium: Normal left atrial size."],
               ["pericardium: Small pericardial effusion."]]
    with torch.no_grad():
        z = module.embed("text", reports)
        single = module.towers["text"](reports[0], normalize=True)  # each section on its own
        assert torch.allclose(z[0], F.normalize(single.mean(0), dim=0), atol=1e-6)
        assert torch.allclose(z[1], module.towers["text"]([reports[1][0]])[0], atol=1e-6)
        # a plain string is one section; "features" is the core tower (mean of encoder features, then the head)
        assert torch.allclose(module.embed("text", [reports[1][0]]), z[1:], atol=1e-6)
        features = MODELS.build("echo-clip", model=model_cfg(), optim={}, views=VIEWS, section_pool="features")
        features.load_state_dict(module.state_dict())
        assert torch.allclose(features.eval().embed("text", reports), module.towers["text"](reports), atol=1e-6)
        assert not torch.allclose(features.embed("text", reports)[0], z[0], atol=1e-3)
    with pytest.raises(ValueError, match="report 1 of the batch has no sections"):
        module.embed("text", [["a"], []])
    with pytest.raises(ConfigError, match="section_pool"):
        MODELS.build("echo-clip", model=model_cfg(), optim={}, section_pool="words")
