"""ULIP pretraining (ulip model: pretrained, locked towers; groups) and the Hugging Face CLIP towers."""
from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, List

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from alignkit.core.api import AlignedModel
from alignkit.core.collate import collate_samples
from alignkit.core.encoders.text import packaged_minilm_dir
from alignkit.core.losses import clip_loss, multi_positive_infonce_loss
from alignkit.core.registry import ENCODERS, MODELS, ConfigError
from alignkit.domains.pointcloud import models as _models  # noqa: F401  (registers the point towers)
from alignkit.domains.pointcloud.ulip import ULIPModule, read_state_dict, tower_state

POINTS = {"encoder": "pointnet2-ssg", "params": {"npoints": [16, 4], "radii": [0.4, 0.8], "nsamples": [16, 8],
                                                 "mlps": [[8, 8], [8, 16]], "global_mlp": [16]}}
IMAGE = {"encoder": "small-cnn", "params": {"widths": [8, 16]}}
TEXT = {"encoder": "minilm-l6", "params": {"cache": True}, "frozen": True, "head": "mlp",
        "head_params": {"hidden_dim": 32}}
CLASSES = ["chair", "table", "lamp", "mug"]


def stage1() -> Any:
    model = {"embed_dim": 16, "towers": {"image": IMAGE, "text": TEXT},
             "objectives": [{"a": "image", "b": "text", "loss": "clip"}]}
    return MODELS.build("alignment", model=model, optim={"lr": 1e-2})


def ulip_section(loss: str = "clip") -> Dict[str, Any]:
    return {"embed_dim": 16, "towers": {"points": POINTS, "image": IMAGE, "text": TEXT},
            "objectives": [{"a": "points", "b": "text", "loss": loss},
                           {"a": "points", "b": "image", "loss": loss, "weight": 0.5}]}


def ulip(loss: str = "clip", **params: Any) -> ULIPModule:
    return MODELS.build("ulip", model=ulip_section(loss), optim={"lr": 1e-2}, **params)


def samples(n: int = 16) -> List[Dict[str, Any]]:
    g = torch.Generator().manual_seed(0)
    return [{"points": torch.rand(64, 3, generator=g) * 2 - 1, "image": torch.rand(3, 16, 16, generator=g),
             "text": f"a point cloud model of {CLASSES[i % 4]}.", "label": i % 4} for i in range(n)]


def batch(n: int = 8) -> Dict[str, Any]:
    return collate_samples(samples(n))


def fit(module: L.LightningModule, steps: int) -> None:
    loader = DataLoader(samples(), batch_size=8, shuffle=True, collate_fn=collate_samples)
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, loader)


@pytest.fixture(scope="module")
def stage1_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("ulip") / "stage1.ckpt"
    torch.save({"state_dict": stage1().state_dict()}, path)
    return path


def test_loss_is_the_weighted_sum_of_core_clip_losses():
    torch.manual_seed(0)
    model = ulip()
    b = batch()
    out = model.compute_loss(b)
    z = {m: model.embed(m, b[m]) for m in ("points", "image", "text")}
    pt = clip_loss(z["points"], z["text"], model.losses[0].logit_scale)
    pi = clip_loss(z["points"], z["image"], model.losses[1].logit_scale)
    torch.testing.assert_close(out["loss"], pt + 0.5 * pi)
    torch.testing.assert_close(out["points-text/loss"], pt.detach())


def test_group_key_makes_same_class_captions_positives():
    torch.manual_seed(0)
    model = ulip(loss="multi_positive", group_key="label", lock_pretrained=False)
    b = batch()
    out = model.compute_loss(b)
    z = {m: model.embed(m, b[m]) for m in ("points", "text")}
    labels = b["label"]
    expected = multi_positive_infonce_loss(z["points"], z["text"], model.losses[0].logit_scale, groups_a=labels,
                                           groups_b=labels)
    torch.testing.assert_close(out["points-text/loss"], expected.detach())
    without = multi_positive_infonce_loss(z["points"], z["text"], model.losses[0].logit_scale)
    assert not torch.allclose(expected, without)  # the groups change the loss: duplicates are not negatives
    with pytest.raises(KeyError, match="group_key 'cls'"):
        ulip(group_key="cls").compute_loss(b)


def test_pretrained_towers_are_restored_at_fit_start_and_stay_locked(stage1_ckpt: Path):
    torch.manual_seed(0)
    model = ulip(pretrained=str(stage1_ckpt))
    reference = tower_state(read_state_dict(str(stage1_ckpt)), "image")
    assert not torch.equal(model.towers["image"].state_dict()["head.weight"], reference["head.weight"])
    assert all(not p.requires_grad for m in ("image", "text") for p in model.towers[m].parameters())
    points_before = {k: v.clone() for k, v in model.towers["points"].state_dict().items()}
    fit(model, steps=3)
    for m in ("image", "text"):  # restored, then untouched by training (batch-norm statistics included)
        for key, value in tower_state(read_state_dict(str(stage1_ckpt)), m).items():
            torch.testing.assert_close(model.towers[m].state_dict()[key], value, msg=key)
    assert not model.towers["image"].training  # locked towers stay in eval mode while the rest trains
    changed = [k for k, v in model.towers["points"].state_dict().items() if not torch.equal(v, points_before[k])]
    assert changed, "the point tower did not train"


def test_a_resumed_fit_does_not_reload_and_an_export_does_not_need_the_checkpoint(stage1_ckpt: Path, tmp_path: Path,
                                                                                 monkeypatch: pytest.MonkeyPatch):
    torch.manual_seed(0)
    copy = tmp_path / "stage1.ckpt"
    copy.write_bytes(stage1_ckpt.read_bytes())
    model = ulip(pretrained=str(copy))
    before = model.towers["image"].state_dict()["head.weight"].clone()
    monkeypatch.setattr(ULIPModule, "trainer", property(lambda self: SimpleNamespace(global_step=7)))
    model.on_fit_start()
    torch.testing.assert_close(model.towers["image"].state_dict()["head.weight"], before)
    monkeypatch.undo()
    model.load_pretrained()
    config = {"model": {"name": "ulip", **ulip_section(), "params": {"pretrained": str(copy)}}}
    AlignedModel(model, config).save(tmp_path / "export")
    copy.unlink()
    loaded = AlignedModel.load(tmp_path / "export")
    b = batch(4)
    expected = AlignedModel(model, config).embed("image", b["image"])
    torch.testing.assert_close(loaded.embed("image", b["image"]), expected)


def test_configuration_errors_name_the_problem(stage1_ckpt: Path, tmp_path: Path):
    with pytest.raises(ConfigError, match=r"pretrained_towers \['depth'\]"):
        ulip(pretrained_towers=["depth"])
    with pytest.raises(ConfigError, match="has no tower 'points'"):
        ulip(pretrained=str(stage1_ckpt), pretrained_towers=["points"]).load_pretrained()
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        ulip(pretrained=str(tmp_path / "missing.ckpt")).load_pretrained()


# --------------------------------------------------------------------------- Hugging Face CLIP towers


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny CLIPModel folder whose text side uses the packaged MiniLM (BERT) tokenizer."""
    from transformers import AutoTokenizer, CLIPConfig, CLIPModel
    tokenizer = AutoTokenizer.from_pretrained(str(packaged_minilm_dir()), local_files_only=True)
    config = CLIPConfig(
        text_config={"vocab_size": len(tokenizer), "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 64, "eos_token_id": tokenizer.sep_token_id,
                     "pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.cls_token_id},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
        projection_dim=12)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_clip")
    CLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_clip_towers_match_the_full_clip_model(tiny_clip: Path):
    from transformers import AutoTokenizer, CLIPModel
    full = CLIPModel.from_pretrained(str(tiny_clip), local_files_only=True).eval()
    text = ENCODERS.build("hf-clip-text", path=str(tiny_clip), max_length=32).eval()
    vision = ENCODERS.build("hf-clip-vision", path=str(tiny_clip)).eval()
    assert text.output_dim == vision.output_dim == 12
    texts = ["a chair", "a very tall lamp"]
    tok = AutoTokenizer.from_pretrained(str(tiny_clip))(texts, padding=True, return_tensors="pt")
    ids = tok["input_ids"]
    with torch.no_grad():
        hidden = full.text_model(input_ids=ids, attention_mask=tok["attention_mask"]).last_hidden_state
        eos = (ids == text.model.config.eos_token_id).int().argmax(-1)  # the first EOS ([SEP]) of each text
        expected = full.text_projection(hidden[torch.arange(len(ids)), eos])
        torch.testing.assert_close(text(texts), expected)
        images = torch.randn(2, 3, 32, 32)
        expected_img = full.visual_projection(full.vision_model(pixel_values=images).pooler_output)
        torch.testing.assert_close(vision(images), expected_img)
        resized = F.interpolate(torch.randn(2, 3, 24, 24), size=(32, 32), mode="bilinear", align_corners=False)
        assert vision(torch.randn(2, 3, 24, 24)).shape == (2, 12) and vision(resized).shape == (2, 12)
        assert vision.forward_tokens(images).shape == (2, 16, 16)  # (32 / 8)^2 patches, hidden 16


def test_clip_text_cache_needs_a_frozen_tower_and_gives_the_same_embeddings(tiny_clip: Path):
    from alignkit.core.encoders.base import freeze
    plain = ENCODERS.build("hf-clip-text", path=str(tiny_clip), max_length=32).eval()
    cached = freeze(ENCODERS.build("hf-clip-text", path=str(tiny_clip), max_length=32, cache=True))
    texts = ["a chair", ["a mug", "with a handle"]]
    with torch.no_grad():
        expected = torch.stack([plain(["a chair"])[0], plain(["a mug", "with a handle"]).mean(0)])
    torch.testing.assert_close(cached(texts), expected)
    assert set(cached.module._cached) == {"a chair", "a mug", "with a handle"}
    with pytest.raises(RuntimeError, match="cache=True on a trainable encoder"):
        ENCODERS.build("hf-clip-text", path=str(tiny_clip), max_length=32, cache=True)(["a chair"])
    with pytest.raises(ConfigError, match="max_length 77 exceeds the model.s 64 positions"):
        ENCODERS.build("hf-clip-text", path=str(tiny_clip))
    with pytest.raises(FileNotFoundError, match="never downloads"):
        ENCODERS.build("hf-clip-vision", path=str(tiny_clip / "nope"))
    assert math.isfinite(float(expected.sum()))
