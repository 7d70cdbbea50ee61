"""Hugging Face vision and CLIP folders -> hf-vision / hf-clip towers, outputs equal to transformers' own
(fixtures: tests/fixtures/hf/make_fixtures.py, transformers 5.25.0 in the anchor venv), and key errors."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import alignkit.core.importing.hf  # noqa: F401  (registers the formats)
from alignkit.core.importing import WeightMismatchError, import_weights, load_imported_tower
from alignkit.core.registry import ENCODERS, ConfigError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "hf"
TEXTS = ["a chest x-ray", "no acute findings"]


@pytest.fixture(scope="module")
def ref() -> dict:
    return load_file(str(FIXTURES / "outputs.safetensors"))


@pytest.mark.parametrize("name", ["vit", "dinov2", "swin", "convnext", "resnet"])
def test_vision_folder_round_trips(name: str, ref: dict, tmp_path: Path) -> None:
    out = import_weights("hf-vision", FIXTURES / name, tmp_path / "out")
    tower = load_imported_tower(str(out / "towers" / "image")).eval()
    with torch.no_grad():
        torch.testing.assert_close(tower(ref["images"]), ref[f"{name}_pooled"], atol=1e-5, rtol=0)
        torch.testing.assert_close(tower.forward_tokens(ref["images"]), ref[f"{name}_tokens"], atol=1e-5, rtol=0)
    assert tower.output_dim == 16
    report = json.loads((out / "import.json").read_text())
    assert report["left"] == ([] if name == "dinov2" else
                              ["classifier.1.bias", "classifier.1.weight"] if name == "resnet" else
                              ["classifier.bias", "classifier.weight"])
    pre = report["preprocessing"]["image"]
    assert pre["image_size"] == 32 and len(pre["mean"]) == 3
    if name == "convnext":  # ConvNeXt's processor: resize to 32 / crop_pct 0.875, center crop 32, bicubic
        assert (pre["resize"], pre["crop"], pre["interpolation"]) == (36, "center", "bicubic")


def test_pool_choices(ref: dict, tmp_path: Path) -> None:
    out = import_weights("hf-vision", FIXTURES / "vit", tmp_path / "mean", pool="mean")
    with torch.no_grad():
        pooled = load_imported_tower(str(out / "towers" / "image")).eval()(ref["images"])
    torch.testing.assert_close(pooled, ref["vit_tokens"].mean(1), atol=1e-5, rtol=0)
    with pytest.raises(ConfigError, match="resnet model has no class token"):
        import_weights("hf-vision", FIXTURES / "resnet", tmp_path / "cls", pool="cls")
    with pytest.raises(ValueError, match="option pool='max'"):
        import_weights("hf-vision", FIXTURES / "resnet", tmp_path / "max", pool="max")
    with pytest.raises(ConfigError, match="did you mean 'swin'"):
        ENCODERS.build("hf-vision", config={"model_type": "swim"})
    with pytest.raises(FileNotFoundError, match="not a local Hugging Face folder"):
        ENCODERS.build("hf-vision", path=str(tmp_path))


def test_mismatched_folder_is_listed_or_partial(tmp_path: Path) -> None:
    folder = tmp_path / "vit"
    shutil.copytree(FIXTURES / "vit", folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(num_hidden_layers=2, intermediate_size=48)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightMismatchError) as err:
        import_weights("hf-vision", folder, tmp_path / "out")
    text = str(err.value)
    assert str(folder) in text and "(16 missing, 0 unexpected, 3 mis-shaped keys)" in text
    assert "layers.1." in text and ".weight: checkpoint (32, 16) vs model (48, 16)" in text
    out = import_weights("hf-vision", folder, tmp_path / "out", allow_partial=True)
    left = json.loads((out / "import.json").read_text())["left"]
    assert len([k for k in left if k.startswith("layers.1.")]) == 16 and len(left) == 16 + 3 + 2  # + classifier


def test_clip_folder_round_trips(ref: dict, tmp_path: Path) -> None:
    import alignkit

    out = import_weights("hf-clip", FIXTURES / "clip", tmp_path / "out")
    text_tower = load_imported_tower(str(out / "towers" / "text")).eval()
    assert text_tower.tokenizer(TEXTS, padding=True, return_tensors="pt")["input_ids"].equal(ref["clip_ids"])
    image_tower = load_imported_tower(str(out / "towers" / "image")).eval()
    with torch.no_grad():
        torch.testing.assert_close(text_tower(TEXTS), ref["clip_text"], atol=1e-5, rtol=0)
        torch.testing.assert_close(image_tower(ref["images"]), ref["clip_image"], atol=1e-5, rtol=0)
    model = alignkit.load(out)
    image, text = model.embed("image", ref["images"]), model.embed("text", TEXTS)
    torch.testing.assert_close(image, F.normalize(ref["clip_image"], dim=-1), atol=1e-5, rtol=0)
    scale = model.module.losses[0].logit_scale.exp()
    torch.testing.assert_close(scale * image @ text.T, ref["clip_logits"], atol=1e-4, rtol=1e-5)
    report = json.loads((out / "import.json").read_text())
    assert report["preprocessing"]["text"]["context_length"] == 16 and report["left"] == []
    with pytest.raises(ValueError, match="holds a 'vit' model"):
        import_weights("hf-clip", FIXTURES / "vit", tmp_path / "bad")


def test_siglip_folder_round_trips(ref: dict, tmp_path: Path) -> None:
    import alignkit

    out = import_weights("hf-clip", FIXTURES / "siglip", tmp_path / "out")
    text_tower = load_imported_tower(str(out / "towers" / "text")).eval()
    assert text_tower.tokenizer(TEXTS, padding="max_length", max_length=16,
                                return_tensors="pt")["input_ids"].equal(ref["siglip_ids"])
    with torch.no_grad():
        torch.testing.assert_close(text_tower(TEXTS), ref["siglip_text"], atol=1e-5, rtol=0)
        image_tower = load_imported_tower(str(out / "towers" / "image")).eval()
        torch.testing.assert_close(image_tower(ref["images"]), ref["siglip_image"], atol=1e-5, rtol=0)
    model = alignkit.load(out)
    loss = model.module.losses[0]
    logits = loss.logit_scale.exp() * model.embed("image", ref["images"]) @ model.embed("text", TEXTS).T
    torch.testing.assert_close(logits + loss.logit_bias, ref["siglip_logits"], atol=1e-5, rtol=1e-5)
    assert json.loads((out / "import.json").read_text())["preprocessing"]["text"]["padding"] == "max_length"
