"""Voltron: MAE pieces against hand-written references, V-Cond masking, V-Dual / V-Gen objectives, language
conditioning of the features, export and reload, and a loss that falls on a tiny batch."""
from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from alignkit.core.collate import collate_samples
from alignkit.core.registry import ENCODERS, MODELS, ConfigError
from alignkit.domains.robotics.models.patches import (normalize_patches, patch_mse, patchify, random_patch_mask,
                                                      sincos_position_embedding)
from alignkit.domains.robotics.models.voltron import (VoltronEncoder, VoltronModule, load_voltron_encoder,
                                                      next_token_loss, prefix_lm_mask)

# a randomly initialised one-layer BERT with the packaged MiniLM tokenizer: fast, for everything but export
TINY_TEXT = {"name": "hf-text", "params": {"config": {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1,
                                                      "num_attention_heads": 2, "intermediate_size": 64}}}
ARCH = dict(img_size=16, patch_size=4, width=32, depth=1, heads=2, decoder_width=16, decoder_depth=1,
            decoder_heads=2)


def tiny_module(variant: str = "v-cond", **kw) -> VoltronModule:
    torch.manual_seed(0)
    return VoltronModule(variant=variant, text_encoder=TINY_TEXT, **{**ARCH, **kw})


def frames(b: int, f: int, size: int = 16) -> torch.Tensor:
    return torch.rand(b, f, 3, size, size, generator=torch.Generator().manual_seed(b * 10 + f))


# --------------------------------------------------------------------------- MAE pieces
def test_patchify_matches_a_loop_over_patches():
    x = torch.arange(2 * 3 * 8 * 12, dtype=torch.float32).view(2, 3, 8, 12)
    out = patchify(x, 4)
    assert out.shape == (2, 6, 48)
    for n, (r, c) in enumerate((r, c) for r in range(2) for c in range(3)):
        patch = x[:, :, 4 * r:4 * r + 4, 4 * c:4 * c + 4]  # (B, C, p, p)
        assert torch.equal(out[:, n], patch.permute(0, 2, 3, 1).reshape(2, 48))
    with pytest.raises(ValueError, match="not divisible"):
        patchify(torch.zeros(1, 3, 10, 10), 4)


def test_normalize_patches_and_patch_mse_by_hand():
    p = torch.tensor([[[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]]])
    z = normalize_patches(p)
    torch.testing.assert_close(z[0, 0], torch.tensor([-1.0, 0.0, 1.0]), atol=1e-5, rtol=0)  # unbiased std 1
    assert torch.all(z[0, 1] == 0)  # a flat patch standardises to zeros
    pred = torch.tensor([[[1.0, 1.0], [0.0, 0.0], [2.0, 0.0]]])
    target = torch.zeros(1, 3, 2)
    weight = torch.tensor([[1.0, 0.0, 1.0]])
    assert patch_mse(pred, target, weight).item() == pytest.approx((1.0 + 2.0) / 2)
    assert patch_mse(pred, target, torch.zeros(1, 3)).item() == 0.0


def test_sincos_position_embedding_rows_and_columns():
    e = sincos_position_embedding(8, 2, 3)
    assert e.shape == (6, 8)
    assert torch.equal(e[0, :4], e[2, :4]) and not torch.equal(e[0, 4:], e[2, 4:])  # same row, other column
    assert torch.equal(e[0, 4:], e[3, 4:]) and not torch.equal(e[0, :4], e[3, :4])  # same column, other row
    torch.testing.assert_close(e[0], torch.tensor([0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0]))
    with pytest.raises(ConfigError, match="divisible by 4"):
        sincos_position_embedding(6, 2, 2)


def test_random_patch_mask_keeps_one_quarter():
    torch.manual_seed(0)
    keep, mask = random_patch_mask(5, 16, 0.75)
    assert keep.shape == (5, 4) and mask.shape == (5, 16)
    assert torch.all(mask.sum(1) == 12)
    assert torch.all(~mask.gather(1, keep)) and torch.all(keep.diff(dim=1) > 0)
    assert len({tuple(k) for k in keep.tolist()}) > 1  # per-sample masks
    with pytest.raises(ConfigError, match="mask_ratio"):
        random_patch_mask(1, 4, 1.0)


def test_next_token_loss_by_hand():
    logits = torch.zeros(2, 3, 4)
    logits[0, 0, 2] = 10.0  # predicts the second token of example 0
    ids = torch.tensor([[1, 2, 3], [1, 2, 0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    ce_uniform = torch.log(torch.tensor(4.0))
    ce_sure = F.cross_entropy(torch.tensor([[0.0, 0.0, 10.0, 0.0]]), torch.tensor([2]))
    per0 = (ce_sure + ce_uniform) / 2  # targets 2 and 3
    per1 = ce_uniform  # target 2 only (the padded target is ignored)
    torch.testing.assert_close(next_token_loss(logits, ids, mask, torch.tensor([1.0, 1.0])), (per0 + per1) / 2)
    torch.testing.assert_close(next_token_loss(logits, ids, mask, torch.tensor([0.0, 1.0])), per1)
    assert next_token_loss(logits, ids, mask, torch.zeros(2)).item() == 0.0


def test_prefix_lm_mask_by_hand():
    m = prefix_lm_mask(2, torch.tensor([[True, True, False]]))[0]
    expected = torch.tensor([[1, 1, 0, 0, 0],
                             [1, 1, 0, 0, 0],
                             [1, 1, 1, 0, 0],
                             [1, 1, 1, 1, 0],
                             [1, 1, 1, 1, 0]], dtype=torch.bool)  # the padded token is nobody's key
    assert torch.equal(m, expected)


# --------------------------------------------------------------------------- pretraining objectives
def test_vcond_masks_three_quarters_and_scores_only_masked_patches():
    m = tiny_module("v-cond")
    x = frames(3, 1)
    torch.manual_seed(1)
    out = m(x, ["pick up the ball", "open the drawer", "push"])
    assert out.predictions.shape == (3, 1, 16, 48)
    assert torch.all(out.mask.sum(1) == 12)  # 16 patches at mask_ratio 0.75
    target = normalize_patches(patchify(x, 4))
    per_patch = (out.predictions - target).pow(2).mean(-1)[:, 0]
    torch.testing.assert_close(out.reconstruction, per_patch[out.mask].mean())
    assert out.language.item() == 0.0 and torch.equal(out.loss, out.reconstruction)
    assert not out.generate.any()


def test_masked_pixels_do_not_reach_the_predictions():
    m = tiny_module("v-cond")
    x = frames(2, 1)
    torch.manual_seed(3)
    first = m(x, ["a", "b"])
    changed = x.clone()
    patches = patchify(changed, 4).clone()
    patches[first.mask[:, None].expand(-1, 1, -1)] = 0.5  # overwrite every masked patch
    changed = patches.view(2, 1, 4, 4, 4, 4, 3).permute(0, 1, 6, 2, 4, 3, 5).reshape(2, 1, 3, 16, 16)
    assert torch.equal(patchify(changed, 4), patches)
    torch.manual_seed(3)
    second = m(changed, ["a", "b"])
    assert torch.equal(first.mask, second.mask)
    torch.testing.assert_close(first.predictions, second.predictions)
    assert not torch.allclose(first.reconstruction, second.reconstruction)


def test_vdual_reconstructs_both_frames_with_one_mask():
    m = tiny_module("v-dual")
    batch = {"observation.images.wrist": frames(2, 5), "task": ["a", "b"]}
    x, texts = m.select_frames(batch)
    assert torch.equal(x, batch["observation.images.wrist"][:, [0, -1]]) and texts == ["a", "b"]
    torch.manual_seed(0)
    out = m(x, texts)
    assert out.predictions.shape == (2, 2, 16, 48) and out.mask.shape == (2, 16)
    target = normalize_patches(patchify(x, 4))
    per_patch = (out.predictions - target).pow(2).mean(-1)  # (B, 2, N)
    frame_losses = [per_patch[:, f][out.mask].mean() for f in range(2)]
    torch.testing.assert_close(out.reconstruction, (frame_losses[0] + frame_losses[1]) / 2)


def test_vgen_generates_captions_for_the_gen_ratio_share():
    m = tiny_module("v-gen", gen_ratio=1.0, lm_weight=0.5)
    torch.manual_seed(0)
    out = m(frames(2, 2), ["pick up the red ball", "open the top drawer"])
    assert out.generate.all() and out.language.item() > 0
    torch.testing.assert_close(out.loss, out.reconstruction + 0.5 * out.language)
    never = tiny_module("v-gen", gen_ratio=0.0)
    assert never(frames(2, 2), ["a", "b"]).language.item() == 0.0


def test_select_frames_stacks_cameras_and_repeats_captions():
    m = tiny_module("v-cond")
    batch = {"observation.images.a": frames(2, 3), "observation.images.b": frames(2, 3) + 1, "task": ["x", "y"]}
    x, texts = m.select_frames(batch)
    assert x.shape == (4, 1, 3, 16, 16) and texts == ["x", "y", "x", "y"]
    assert torch.equal(x[2:, 0], batch["observation.images.b"][:, -1])
    with pytest.raises(KeyError, match="cameras"):
        VoltronModule(cameras=["top"], text_encoder=TINY_TEXT, **ARCH).select_frames(batch)


def test_features_depend_on_the_instruction():
    torch.manual_seed(0)
    enc = VoltronEncoder(img_size=16, patch_size=4, width=32, depth=1, heads=2, text_encoder=TINY_TEXT).eval()
    x = frames(2, 1)[:, 0]
    with torch.no_grad():
        a = enc.extract_features(x, "pick up the red ball")
        b = enc.extract_features(x, ["pick up the red ball", "open the drawer"])
        blank = enc.extract_features(x)
    assert a.shape == (2, 16, 32) and enc.forward(x).shape == (2, 32)
    torch.testing.assert_close(a[0], b[0])
    assert not torch.allclose(a[1], b[1])
    torch.testing.assert_close(blank, enc.extract_features(x, ""))
    with pytest.raises(ValueError, match="16x16"):
        enc.extract_features(torch.rand(1, 3, 32, 32))


def test_vcond_loss_falls_on_a_tiny_batch():
    m = tiny_module("v-cond", norm_pixel_loss=False)
    colours = torch.rand(4, 1, 3, 1, 1, generator=torch.Generator().manual_seed(0))
    ramp = torch.linspace(0, 0.3, 16).view(1, 1, 1, 1, 16)
    x, texts = (colours + ramp).clamp(0, 1).expand(4, 1, 3, 16, 16), ["a", "b", "c", "d"]  # flat colour + ramp
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    losses = []
    for step in range(60):
        torch.manual_seed(step % 4)  # a few fixed masks
        out = m(x, texts)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert sum(losses[-4:]) / 4 < 0.5 * sum(losses[:4]) / 4


def test_export_and_reload_give_the_same_features(tmp_path):
    torch.manual_seed(0)
    enc = VoltronEncoder(img_size=16, patch_size=4, width=32, depth=1, heads=2, num_frames=2).eval()
    folder = enc.export(tmp_path / "voltron")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    again = ENCODERS.build("voltron-pretrained", path=str(folder))
    x = frames(2, 2)
    with torch.no_grad():
        torch.testing.assert_close(again.extract_features(x, "go"), enc.extract_features(x, "go"))
    assert not any(k.startswith("text.") for k in load_file(str(folder / "model.safetensors")))
    with pytest.raises(ConfigError, match="randomly initialised"):
        VoltronEncoder(img_size=16, patch_size=4, width=32, depth=1, heads=2, text_encoder=TINY_TEXT).export(tmp_path)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_voltron_encoder(str(tmp_path / "missing"))


def test_feature_layer_gives_the_residual_stream_of_that_block(tmp_path):
    torch.manual_seed(0)
    enc = VoltronEncoder(img_size=16, patch_size=4, width=32, depth=2, heads=2, num_frames=1).eval()
    folder = enc.export(tmp_path / "voltron")
    x = frames(2, 1)[:, 0]
    with torch.no_grad():
        tokens = enc.embed_frames(x[:, None]).flatten(1, 2)  # the patch embeddings with positions
        lang, mask = enc.language(["", ""])
        stream = torch.cat([tokens, lang], dim=1)
        keys = torch.cat([mask.new_ones(tokens.shape[:2]), mask], dim=1)[:, None]
        after_one = enc.transformer.blocks[0](stream, keys)[:, :16]
        layer0 = load_voltron_encoder(str(folder), feature_layer=0).forward_tokens(x)
        layer1 = load_voltron_encoder(str(folder), feature_layer=1).forward_tokens(x)
        last = load_voltron_encoder(str(folder)).forward_tokens(x)
    torch.testing.assert_close(layer0, tokens)
    torch.testing.assert_close(layer1, after_one)
    torch.testing.assert_close(last, enc.forward_tokens(x))
    assert not torch.allclose(layer1, last)
    with pytest.raises(ConfigError, match="feature_layer 3 is outside 0..2"):
        load_voltron_encoder(str(folder), feature_layer=3)


def test_lightning_fits_a_dataset_batch(tmp_path):
    m = MODELS.build("voltron", variant="v-dual", text_encoder=TINY_TEXT, optim={"lr": 1e-3, "warmup_steps": 1},
                     **ARCH)
    items = [{"observation.images.cam": torch.rand(3, 3, 16, 16), "task": f"task {i % 2}"} for i in range(4)]
    loader = torch.utils.data.DataLoader(items, batch_size=2, collate_fn=collate_samples)
    trainer = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=str(tmp_path))
    trainer.fit(m, loader)
    assert trainer.global_step == 2 and torch.isfinite(trainer.callback_metrics["train/loss"])


def test_bad_configurations_are_named():
    with pytest.raises(ConfigError, match="variant"):
        VoltronModule(variant="v-cnd", text_encoder=TINY_TEXT, **ARCH)
    with pytest.raises(ConfigError, match="multiple of patch_size"):
        VoltronEncoder(img_size=18, patch_size=4, text_encoder=TINY_TEXT)
    with pytest.raises(ConfigError, match="gen_ratio"):
        VoltronModule(variant="v-gen", gen_ratio=1.5, text_encoder=TINY_TEXT, **ARCH)
