"""open_clip checkpoints imported onto alignkit towers equal open_clip's own outputs (fixtures made by
tests/fixtures/open_clip/make_fixtures.py with open_clip_torch 3.3.0 + timm 1.0.31)."""
from __future__ import annotations

import glob
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import alignkit
import alignkit.core.encoders.clip_text  # noqa: F401  (registers clip-text)
import alignkit.core.encoders.clip_vit  # noqa: F401  (registers clip-vit)
import alignkit.core.encoders.convnext  # noqa: F401  (registers convnext)
import alignkit.core.importing.open_clip  # noqa: F401  (registers open-clip)
from alignkit.core.encoders.clip_text import CLIPBPETokenizer
from alignkit.core.importing import WeightMismatchError, import_weights, load_imported_tower

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "open_clip"
BPE = FIXTURES / "bpe_tiny.txt.gz"
TEXTS = ["a photo of a cat.", "An ECHO of the LEFT ventricle &amp; the mitral valve, 55% EF!",
         "Café   naïve   résumé 12345 don't", "x" * 3 + " a very long caption " * 6]
FULL_TEXTS = TEXTS + ["<start_of_text>hello", "A\tB\nC  d", "ö" * 80]
CASES = {
    "vit_tok": ("vit_tok/epoch_1.pt", {"model_config": "vit_tok/model_config.json", "tokenizer": "bpe_tiny.txt.gz"}),
    "vit_avg": ("vit_avg/open_clip_model.safetensors", {"tokenizer": "bpe_tiny.txt.gz"}),
    "convnext": ("convnext", {"tokenizer": "bpe_tiny.txt.gz"}),
    "hf_text": ("hf_text/open_clip_pytorch_model.bin", {"tokenizer": "hf_text/bert", "vision_heads": "2"}),
}
ATOL = 1e-5


def _options(options):
    return {k: (str(FIXTURES / v) if k in ("model_config", "tokenizer") else v) for k, v in options.items()}


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    root = tmp_path_factory.mktemp("open_clip")
    return {name: import_weights("open-clip", FIXTURES / src, root / name, **_options(options))
            for name, (src, options) in CASES.items()}


def test_bpe_tokenizer_gives_open_clips_ids():
    recorded = np.load(FIXTURES / "tokenizer_ids.npz")
    ids = CLIPBPETokenizer(str(BPE), context_length=16)(TEXTS)
    np.testing.assert_array_equal(ids.numpy(), recorded["tiny"])
    assert ids[3, -1] == ids.max() and ids[0, 11:].eq(0).all()  # truncated with end-of-text; zero padded


def test_bpe_tokenizer_full_vocabulary():
    found = glob.glob("/tmp/anchor-venv/lib/python3*/site-packages/open_clip/bpe_simple_vocab_16e6.txt.gz")
    if not found:
        pytest.skip("open_clip's full BPE file (anchor venv) is not on this machine")
    tokenizer = CLIPBPETokenizer(found[0])
    assert tokenizer.vocab_size == 49408
    np.testing.assert_array_equal(tokenizer(FULL_TEXTS).numpy(), np.load(FIXTURES / "tokenizer_ids.npz")["full"])


@pytest.mark.parametrize("name", list(CASES))
def test_imported_model_matches_open_clip(imported, name):
    out, io = imported[name], np.load(FIXTURES / name / "io.npz")
    images = torch.from_numpy(io["images"])
    model = alignkit.load(out)
    module = model.module.eval()
    with torch.no_grad():
        image = module.embed("image", images, normalize=False)
        text = module.embed("text", TEXTS, normalize=False)
        tokens = load_imported_tower(out / "towers" / "image").eval().forward_tokens(images)
        loss = module.losses[0]
        logits = loss.logit_scale.exp() * torch.nn.functional.normalize(image, dim=-1) @ \
            torch.nn.functional.normalize(text, dim=-1).T + getattr(loss, "logit_bias", 0.0)
    np.testing.assert_allclose(image.numpy(), io["image_embeds"], atol=ATOL)
    np.testing.assert_allclose(text.numpy(), io["text_embeds"], atol=ATOL)
    np.testing.assert_allclose(tokens.numpy(), io["patch_tokens"], atol=ATOL)
    np.testing.assert_allclose(logits.numpy(), io["logits"], atol=1e-4)  # logit scale 20 times unit cosines
    reference = io["image_embeds"] / np.linalg.norm(io["image_embeds"], axis=1, keepdims=True)
    np.testing.assert_allclose(model.embed("image", images).numpy(), reference, atol=ATOL)


def test_import_records_preprocessing_and_objective(imported):
    report = json.loads((imported["vit_avg"] / "import.json").read_text())
    image = report["preprocessing"]["image"]
    assert (image["image_size"], image["mean"], image["interpolation"], image["resize_mode"]) == \
        (32, [0.5, 0.4, 0.3], "bilinear", "squash")
    assert report["preprocessing"]["text"]["context_length"] == 16
    config = json.loads((imported["vit_avg"] / "config.json").read_text())
    assert config["model"]["objectives"][0]["loss"] == "siglip"
    assert config["model"]["objectives"][0]["params"]["init_logit_bias"] == pytest.approx(-3.0)
    assert config["model"]["towers"]["image"]["params"]["act"] == "quick_gelu"
    tok = json.loads((imported["vit_tok"] / "import.json").read_text())["preprocessing"]["image"]
    assert tok["mean"] == pytest.approx([0.48145466, 0.4578275, 0.40821073]) and tok["interpolation"] == "bicubic"
    clip = json.loads((imported["convnext"] / "config.json").read_text())["model"]["objectives"][0]
    assert clip["loss"] == "clip" and clip["params"]["init_temperature"] == pytest.approx(0.05)


def _broken_checkpoint(tmp_path):
    state = torch.load(FIXTURES / "vit_tok" / "epoch_1.pt", weights_only=True)["state_dict"]
    del state["module.visual.ln_post.weight"]
    state["module.visual.transformer.resblocks.1.attn.out_proj.weight"] = torch.zeros(32, 31)
    state["module.extra.weight"] = torch.zeros(2)
    path = tmp_path / "broken.pt"
    torch.save({"state_dict": state}, path)
    return path


def test_bad_checkpoint_lists_keys_and_allow_partial_reports_them(tmp_path):
    path = _broken_checkpoint(tmp_path)
    options = _options(CASES["vit_tok"][1])
    with pytest.raises(WeightMismatchError, match=r"extra\.weight"):
        import_weights("open-clip", path, tmp_path / "out", **options)
    state = torch.load(path, weights_only=True)["state_dict"]
    del state["module.extra.weight"]
    torch.save(state, path)
    with pytest.raises(WeightMismatchError) as err:
        import_weights("open-clip", path, tmp_path / "out", **options)
    message = str(err.value)
    assert "ln_post.weight" in message and "missing" in message and str(path) in message
    assert "resblocks.1.attn.out_proj.weight: checkpoint (32, 31) vs model (32, 32)" in message
    out = import_weights("open-clip", path, tmp_path / "partial", allow_partial=True, **options)
    left = json.loads((out / "import.json").read_text())["left"]
    assert "image.encoder.ln_post.weight" in left
    assert "image.encoder.transformer.resblocks.1.attn.out_proj.weight" in left


def test_mlp_ratio_read_from_shapes_rebuilds_the_same_width():
    from alignkit.core.importing.open_clip import _ratio
    assert int(88 * (120 / 88)) == 119  # plain division can fall short of the checkpoint's MLP width
    assert all(int(w * _ratio(h, w)) == h for w, h in [(1664, 8192), (88, 120), (1280, 5120), (1408, 6144)])


def test_missing_options_and_architecture_keys_are_named(tmp_path):
    with pytest.raises(ValueError, match="model_config"):
        import_weights("open-clip", FIXTURES / "vit_tok" / "epoch_1.pt", tmp_path / "a", tokenizer=str(BPE))
    with pytest.raises(ValueError, match="tokenizer"):
        import_weights("open-clip", FIXTURES / "convnext", tmp_path / "b")
    state = torch.load(FIXTURES / "convnext" / "open_clip_pytorch_model.bin", weights_only=True)
    del state["visual.trunk.stages.2.blocks.0.conv_dw.weight"]
    (tmp_path / "c").mkdir()
    torch.save(state, tmp_path / "c" / "open_clip_pytorch_model.bin")
    with pytest.raises(WeightMismatchError, match=r"visual\.trunk\.stages\.2\.blocks\.0\.conv_dw\.weight"):
        import_weights("open-clip", tmp_path / "c" / "open_clip_pytorch_model.bin", tmp_path / "d", tokenizer=str(BPE),
                       model_config=str(FIXTURES / "convnext" / "open_clip_config.json"))
