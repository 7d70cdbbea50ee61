"""Voltron (Karamcheti et al., RSS 2023): language-driven representation learning for robotics.

A ViT encodes the patches of one or two frames *jointly* with the token features of a caption from a frozen
text tower of the core (``minilm-l6`` by default): the sequence is ``[frame patches; projected language
tokens]`` and the encoder's visual outputs are the representation. Pretraining is masked autoencoding (MAE):
a random ``mask_ratio`` of the patches (the same patches in every frame) is dropped before the encoder and a
small decoder reconstructs the pixels of the dropped ones.

- ``v-cond``: one frame (the current one), language in the encoder.
- ``v-dual``: two frames of one episode (initial and current) with learned frame embeddings, one encoder.
- ``v-gen``: as ``v-dual``, and for a ``gen_ratio`` share of the examples the encoder gets a blank caption
  and the decoder generates the caption instead: its language positions hold the caption's non-contextual
  token embeddings under a prefix mask (patches see patches; token ``l`` sees all patches and tokens ``<= l``)
  and predict token ``l + 1``.

Loss: ``L = L_rec + lm_weight * L_lm`` with ``L_rec`` the mean over frames of
:func:`~alignkit.domains.robotics.models.patches.patch_mse` between the decoder's prediction and the per-patch
normalised target pixels on the masked patches, and ``L_lm`` the next-token cross-entropy of the generation
examples (:func:`next_token_loss`; zero for ``v-cond``/``v-dual``).

Downstream, :meth:`VoltronEncoder.extract_features` gives ``(B, N, C)`` patch features of unmasked frames
(optionally conditioned on an instruction); :meth:`VoltronEncoder.export` writes them as safetensors for
frozen use (``ENCODERS`` ``"voltron-pretrained"``).

Sizes. The defaults are tiny, for CPUs (64 px, patch 8, width 96, depth 4; decoder 64 x 2). The paper's
models (224 px, patch 16, language from DistilBERT, at most 20 tokens): ViT-Small encoder width 384, depth 12,
6 heads with a decoder of width 192, depth 6, 6 heads; ViT-Base encoder 768/12/12 with decoder 512/8/16;
``mask_ratio`` 0.75, ``gen_ratio`` 0.5, ``lm_weight`` 0.5, AdamW betas (0.9, 0.95), weight decay 0.05, learning
rate 1.5e-4 * batch / 256 with warm-up and cosine decay. The paper's blocks use RMSNorm, SwiGLU and LayerScale;
these use LayerNorm and GELU. Voltron's released checkpoints load into
:class:`~alignkit.domains.robotics.models.voltron.released.VoltronReleasedEncoder` (its exact architecture) instead.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import lightning as L
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn

from alignkit.core.checkpoints import load_safetensors, read_json
from alignkit.core.optim import configure_adamw
from alignkit.core.params import FRACTION, NON_NEGATIVE, POSITIVE, OneOf, Range, check_choice
from alignkit.core.registry import ENCODERS, MODELS, ConfigError
from alignkit.domains.robotics.models.inputs import (LossWeight, Size, TextSpec, camera_frames, check_model_section,
                                                     frozen_text_tower)
from alignkit.domains.robotics.models.patches import (normalize_patches, patch_mse, patchify, random_patch_mask,
                                                      sincos_position_embedding)
from alignkit.domains.robotics.models.perceiver import Transformer

VARIANTS = ("v-cond", "v-dual", "v-gen")
NUM_FRAMES = (1, 2)  # v-cond reads one frame; v-dual and v-gen two (initial and current)
MaskRatio = Annotated[float, Range(ge=0, lt=1)]  # as random_patch_mask checks it
EXPORT_FORMAT = "alignkit-voltron-encoder"


# =========================================================================== caption generation (V-Gen)
def next_token_loss(logits: Tensor, ids: Tensor, mask: Tensor, weight: Tensor) -> Tensor:
    """Caption generation loss: position ``l`` predicts token ``l + 1``.

    ``logits`` ``(B, L, V)``, ``ids`` ``(B, L)``, ``mask`` ``(B, L)`` (True at real tokens), ``weight`` ``(B,)``.
    Per example the mean cross-entropy over its real target tokens ``ids[:, 1:]``; then the ``weight``-weighted
    mean over examples (zero when all weights are zero)."""
    ce = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")  # (B, L-1)
    m = mask[:, 1:].to(ce.dtype)
    per_example = (ce * m).sum(1) / m.sum(1).clamp_min(1.0)
    w = weight.to(ce.dtype)
    return (per_example * w).sum() / w.sum().clamp_min(1e-8)


def prefix_lm_mask(num_prefix: int, token_mask: Tensor) -> Tensor:
    """``(B, P + L, P + L)`` bool attention mask of a prefix language model: the ``P`` prefix positions see each
    other only; token ``l`` sees the prefix and the real tokens ``<= l``. ``token_mask`` ``(B, L)``: True at real
    tokens."""
    b, length = token_mask.shape
    total = num_prefix + length
    allowed = torch.zeros(total, total, dtype=torch.bool, device=token_mask.device)
    allowed[:num_prefix, :num_prefix] = True
    allowed[num_prefix:, :num_prefix] = True
    allowed[num_prefix:, num_prefix:] = torch.ones(length, length, dtype=torch.bool,
                                                   device=token_mask.device).tril()
    keys = torch.cat([token_mask.new_ones(b, num_prefix, dtype=torch.bool), token_mask.bool()], dim=1)
    return allowed[None] & keys[:, None, :]


# =========================================================================== encoder
@ENCODERS.register("voltron")
class VoltronEncoder(nn.Module):
    """The Voltron ViT: frames and a caption in, visual token features out.

    Args:
        img_size, patch_size, in_channels: input frames are ``(C, img_size, img_size)`` cut into
            ``N = (img_size / patch_size)^2`` patches.
        width, depth, heads, mlp_ratio: the transformer.
        num_frames: 1 (``v-cond``) or 2 (``v-dual``, ``v-gen``: initial and current frame).
        text_encoder: a frozen core text encoder (``ENCODERS`` name or spec) giving token features.
        max_lang_tokens: captions are cut to this many tokens (special tokens included).

    Token ``n`` of frame ``f`` is ``E x_{f,n} + pos_n + frame_f + image_type``; a language token is
    ``W_l h_l + lang_type``. ``output_dim`` is ``width``.

    ``feature_layer`` (None: the last, normed) makes :meth:`extract_features` return the tokens after that many
    blocks (0: the patch embeddings with positions). A briefly pretrained encoder's last layer can blur what a
    single patch shows, while its first layers keep it (measured on BabyAI: ``docs/robotics.md``).
    """

    def __init__(self, img_size: Size = 64, patch_size: Size = 8, in_channels: Size = 3, width: Size = 96,
                 depth: Size = 4, heads: Size = 4, mlp_ratio: Annotated[float, POSITIVE] = 4.0,
                 num_frames: Annotated[int, OneOf(NUM_FRAMES)] = 1, text_encoder: TextSpec = "minilm-l6",
                 max_lang_tokens: Size = 20):
        super().__init__()
        if img_size % patch_size:
            raise ConfigError(f"voltron img_size {img_size} must be a multiple of patch_size {patch_size}")
        check_choice(num_frames, NUM_FRAMES, "voltron num_frames")
        self.config = dict(img_size=img_size, patch_size=patch_size, in_channels=in_channels, width=width, depth=depth,
                           heads=heads, mlp_ratio=mlp_ratio, num_frames=num_frames, text_encoder=text_encoder,
                           max_lang_tokens=max_lang_tokens)
        self.img_size, self.patch_size, self.in_channels = img_size, patch_size, in_channels
        self.num_frames, self.max_lang_tokens = num_frames, max_lang_tokens
        self.feature_layer: Optional[int] = None
        self.grid = img_size // patch_size
        self.output_dim = width
        self.patch_embed = nn.Conv2d(in_channels, width, kernel_size=patch_size, stride=patch_size)
        self.register_buffer("pos_embed", sincos_position_embedding(width, self.grid, self.grid), persistent=False)
        self.frame_embed = nn.Parameter(torch.randn(num_frames, width) * 0.02)
        self.image_type = nn.Parameter(torch.randn(width) * 0.02)
        self.lang_type = nn.Parameter(torch.randn(width) * 0.02)
        self.text = frozen_text_tower(text_encoder)
        self.lang_proj = nn.Linear(int(self.text.output_dim), width)
        self.transformer = Transformer(width, depth, heads, mlp_ratio)

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid

    def language(self, texts: Sequence[str]) -> Tuple[Tensor, Tensor]:
        """Projected token features ``(B, L, width)`` and mask ``(B, L)`` of ``texts`` (``L <= max_lang_tokens``);
        the empty string is the blank caption (``[CLS] [SEP]``)."""
        tokens = self.text.encode_tokens(list(texts))
        feats = tokens.features[:, :self.max_lang_tokens].to(self.lang_proj.weight)
        return self.lang_proj(feats) + self.lang_type, tokens.mask[:, :self.max_lang_tokens].to(feats.device)

    def embed_frames(self, frames: Tensor) -> Tensor:
        """``(B, F, C, H, W)`` frames in [0, 1] -> ``(B, F, N, width)`` patch tokens with positions, frame and type
        embeddings (``F == num_frames``)."""
        if frames.ndim != 5 or frames.shape[1] != self.num_frames or frames.shape[2] != self.in_channels:
            raise ValueError(f"voltron expects frames (B, {self.num_frames}, {self.in_channels}, H, W); "
                             f"got {tuple(frames.shape)}")
        if tuple(frames.shape[-2:]) != (self.img_size, self.img_size):
            raise ValueError(f"voltron was built for {self.img_size}x{self.img_size} frames; got "
                             f"{tuple(frames.shape[-2:])}: resize them (LeRobotDataset image_size) or set img_size")
        b, f = frames.shape[:2]
        x = self.patch_embed(frames.flatten(0, 1)).flatten(2).transpose(1, 2)  # (B*F, N, W)
        x = x.view(b, f, self.num_patches, -1) + self.pos_embed
        return x + self.frame_embed[:, None] + self.image_type

    def encode(self, visual: Tensor, lang: Tensor, lang_mask: Tensor, layers: Optional[int] = None) -> Tensor:
        """Joint encoding of ``[visual (B, M, W); lang (B, L, W)]`` (language padding hidden as keys); returns the
        visual outputs ``(B, M, W)`` (after the first ``layers`` blocks, unnormed, if given)."""
        keys = torch.cat([lang_mask.new_ones(visual.shape[:2]), lang_mask], dim=1)[:, None]  # (B, 1, M + L)
        return self.transformer(torch.cat([visual, lang], dim=1), keys, layers=layers)[:, :visual.shape[1]]

    def extract_features(self, frames: Tensor, instruction: Union[None, str, Sequence[str]] = None) -> Tensor:
        """Patch features ``(B, N, width)`` of the last frame, with nothing masked (of ``feature_layer``).

        ``frames``: ``(B, C, H, W)`` or ``(B, F, C, H, W)`` in [0, 1]; a two-frame encoder given one frame uses it
        as both initial and current frame. ``instruction``: None (blank caption), one string for the batch, or
        one per sample."""
        if frames.ndim == 4:
            frames = frames.unsqueeze(1).expand(-1, self.num_frames, -1, -1, -1)
        b = frames.shape[0]
        texts = [""] * b if instruction is None else [instruction] * b if isinstance(instruction, str) \
            else list(instruction)
        if len(texts) != b:
            raise ValueError(f"{len(texts)} instructions for {b} frames")
        lang, lang_mask = self.language(texts)
        tokens = self.embed_frames(frames)
        out = self.encode(tokens.flatten(1, 2), lang, lang_mask, layers=self.feature_layer)
        return out[:, -self.num_patches:]

    def forward_tokens(self, images: Tensor) -> Tensor:
        """``(B, C, H, W) -> (B, N, width)``: :meth:`extract_features` without an instruction."""
        return self.extract_features(images)

    def forward(self, images: Tensor) -> Tensor:
        """``(B, C, H, W) -> (B, width)``: the mean of the patch features."""
        return self.forward_tokens(images).mean(1)

    # ------------------------------------------------------------------ export
    def export(self, folder: Union[str, Path]) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (every weight but the frozen text tower, which is rebuilt
        from its spec on load, so it must be pretrained: a randomly initialised ``hf-text`` ``config`` is refused)."""
        spec = self.config["text_encoder"]
        if isinstance(spec, Mapping) and "config" in (spec.get("params") or {}):
            raise ConfigError("voltron export: the text tower is randomly initialised (hf-text config=...), so it "
                              "could not be rebuilt on load; use a pretrained text_encoder (e.g. minilm-l6)")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps({"format": EXPORT_FORMAT, "params": self.config}, indent=2))
        weights = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items() if not k.startswith("text.")}
        save_file(weights, str(folder / "model.safetensors"))
        return folder


@ENCODERS.register("voltron-pretrained")
def load_voltron_encoder(path: str, feature_layer: Optional[Annotated[int, NON_NEGATIVE]] = None) -> nn.Module:
    """A frozen-use Voltron encoder (in eval mode) giving the features of ``feature_layer`` (None: the last layer):

    - from a folder written by :meth:`VoltronEncoder.export` (``config.json``, ``model.safetensors``), a
      :class:`VoltronEncoder`;
    - from a released Voltron checkpoint imported by ``alignkit import-weights voltron`` (the import's folder, or its
      ``towers/image``), a :class:`~alignkit.domains.robotics.models.voltron.released.VoltronReleasedEncoder`."""
    folder = Path(path)
    tower = next((d for d in (folder, folder / "towers" / "image") if (d / "tower.json").is_file()), None)
    if tower is not None:
        return _load_imported_voltron(tower, feature_layer)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{folder} holds no config.json: give a folder written by VoltronEncoder.export "
                                f"(VoltronModule.export_encoder) or by `alignkit import-weights voltron`")
    meta = read_json(config_file)
    if meta.get("format") != EXPORT_FORMAT:
        raise ConfigError(f"{config_file} is not a Voltron encoder export (format {meta.get('format')!r})")
    encoder = VoltronEncoder(**meta["params"])
    missing, unexpected = encoder.load_state_dict(load_safetensors(folder / "model.safetensors"), strict=False)
    bad = [k for k in missing if not k.startswith("text.")] + list(unexpected)
    if bad:
        raise ConfigError(f"{folder / 'model.safetensors'} does not match its config.json: keys {bad[:5]}")
    depth = int(meta["params"].get("depth", len(encoder.transformer.blocks)))
    _check_feature_layer(feature_layer, depth, config_file)
    encoder.feature_layer = feature_layer
    return encoder.eval()


def _check_feature_layer(feature_layer: Optional[int], depth: int, where: Path) -> None:
    if feature_layer is not None and not 0 <= feature_layer <= depth:
        raise ConfigError(f"voltron-pretrained feature_layer {feature_layer} is outside 0..{depth} (the encoder's "
                          f"depth, {where})")


def _load_imported_voltron(tower: Path, feature_layer: Optional[int]) -> nn.Module:
    """The imported tower in ``tower`` (``tower.json``: encoder ``voltron-released``), weights loaded strictly, taking
    frames in [0, 1] (its ``normalize`` on)."""
    from alignkit.core.importing import load_imported_tower
    spec = read_json(tower / "tower.json")
    if spec.get("encoder") != "voltron-released":
        raise ConfigError(f"{tower / 'tower.json'} holds a {spec.get('encoder')!r} tower, not an imported Voltron "
                          f"encoder (voltron-released): use encoder 'imported' for it")
    encoder = load_imported_tower(tower)
    _check_feature_layer(feature_layer, len(encoder.encoder_blocks), tower / "tower.json")
    encoder.feature_layer = feature_layer
    encoder.normalize = True  # policies give frames in [0, 1]; Voltron's ImageNet standardisation happens inside
    return encoder.eval()


# =========================================================================== pretraining module
@dataclass
class VoltronOutput:
    """``loss = reconstruction + lm_weight * language``; ``predictions`` ``(B, F, N, p*p*C)`` (normalised-pixel
    space), ``mask`` ``(B, N)`` True on masked patches, ``generate`` ``(B,)`` True on caption-generation examples."""

    loss: Tensor
    reconstruction: Tensor
    language: Tensor
    predictions: Tensor
    mask: Tensor
    generate: Tensor


@MODELS.register("voltron")
class VoltronModule(L.LightningModule):
    """Voltron pretraining (see the module docstring) on ``LeRobotDataset`` windows.

    A batch holds ``observation.images.<camera>`` ``(B, T, C, H, W)`` and ``task`` (``B`` captions). ``v-cond``
    uses the window's last frame; ``v-dual``/``v-gen`` its first and last (the first is the episode's first
    frame when the window reaches back before the start: the dataset pads with it). Every camera in
    ``cameras`` (default: all in the batch) gives its own examples. ``optim``: see
    :func:`alignkit.core.optim.configure_adamw` (betas (0.9, 0.95) and eps 1e-8 unless ``optim`` sets them);
    ``model``: the config's model section (see :func:`check_model_section`).
    ``norm_pixel_loss`` standardises each target patch (MAE); turn it off for images made of flat patches
    (BabyAI's symbolic view), whose standardised targets are all zero and teach nothing.
    """

    def __init__(self, variant: Annotated[str, OneOf(VARIANTS)] = "v-cond", img_size: Size = 64, patch_size: Size = 8,
                 in_channels: Size = 3, width: Size = 96, depth: Size = 4, heads: Size = 4,
                 mlp_ratio: Annotated[float, POSITIVE] = 4.0, decoder_width: Size = 64, decoder_depth: Size = 2,
                 decoder_heads: Size = 4, mask_ratio: MaskRatio = 0.75, text_encoder: TextSpec = "minilm-l6",
                 max_lang_tokens: Size = 20, gen_ratio: Annotated[float, FRACTION] = 0.5, lm_weight: LossWeight = 0.5,
                 norm_pixel_loss: bool = True, cameras: Optional[Sequence[str]] = None,
                 optim: Optional[Dict[str, Any]] = None, model: Optional[Mapping[str, Any]] = None):
        super().__init__()
        check_model_section(model, "voltron")
        check_choice(variant, VARIANTS, "voltron variant")
        if not 0.0 <= gen_ratio <= 1.0:
            raise ConfigError(f"voltron gen_ratio must be in [0, 1]; got {gen_ratio}")
        self.save_hyperparameters(ignore=["model"])
        self.variant, self.mask_ratio, self.gen_ratio = variant, mask_ratio, gen_ratio
        self.lm_weight, self.norm_pixel_loss = lm_weight, norm_pixel_loss
        self.cameras = list(cameras) if cameras else None
        self.optim_cfg = dict(optim or {})
        self.encoder = VoltronEncoder(img_size, patch_size, in_channels, width, depth, heads, mlp_ratio,
                                      num_frames=1 if variant == "v-cond" else 2, text_encoder=text_encoder,
                                      max_lang_tokens=max_lang_tokens)
        grid, frames = self.encoder.grid, self.encoder.num_frames
        self.enc_to_dec = nn.Linear(width, decoder_width)
        self.mask_token = nn.Parameter(torch.randn(decoder_width) * 0.02)
        self.register_buffer("decoder_pos", sincos_position_embedding(decoder_width, grid, grid), persistent=False)
        self.decoder_frame = nn.Parameter(torch.randn(frames, decoder_width) * 0.02)
        self.decoder = Transformer(decoder_width, decoder_depth, decoder_heads, mlp_ratio)
        self.pixel_head = nn.Linear(decoder_width, patch_size * patch_size * in_channels)
        if variant == "v-gen":
            text = self.encoder.text
            if not (hasattr(text, "tokenizer") and hasattr(getattr(text, "model", None), "embeddings")):
                raise ConfigError("voltron v-gen needs a Hugging Face text_encoder (hf-text, minilm-l6) for its "
                                  "tokenizer and token embeddings")
            self.lang_to_dec = nn.Linear(int(text.output_dim), decoder_width)
            self.lm_head = nn.Linear(decoder_width, len(text.tokenizer))

    # ------------------------------------------------------------------ forward
    def select_frames(self, batch: Mapping[str, Any]) -> Tuple[Tensor, List[str]]:
        """Frames ``(B * cameras, F, C, H, W)`` and their captions from a dataset batch."""
        per_camera = camera_frames(batch, self.cameras)
        index = [-1] if self.variant == "v-cond" else [0, -1]
        frames = torch.cat([v[:, index] for v in per_camera.values()], dim=0)
        return frames, list(batch["task"]) * len(per_camera)

    def _caption_tokens(self, texts: Sequence[str]) -> Tuple[Tensor, Tensor, Tensor]:
        """Token ids ``(B, Lg)``, mask and frozen non-contextual embeddings ``(B, Lg, d_text)`` of the captions."""
        text = self.encoder.text
        tok = text.tokenizer(list(texts), padding="longest", truncation=True, max_length=self.encoder.max_lang_tokens,
                             return_tensors="pt")
        ids, mask = tok["input_ids"].to(self.device), tok["attention_mask"].to(self.device).bool()
        with torch.no_grad():
            emb = text.model.embeddings(input_ids=ids.to(text.model.device)).to(self.device)
        return ids, mask, emb.float()

    def forward(self, frames: Tensor, texts: Sequence[str]) -> VoltronOutput:
        """``frames`` ``(B, F, C, H, W)`` in [0, 1] and ``B`` captions -> :class:`VoltronOutput`."""
        enc = self.encoder
        b, f, n = frames.shape[0], enc.num_frames, enc.num_patches
        tokens = enc.embed_frames(frames)  # (B, F, N, W)
        keep, mask = random_patch_mask(b, n, self.mask_ratio, frames.device)
        k = keep.shape[1]
        visible = tokens.gather(2, keep[:, None, :, None].expand(-1, f, -1, tokens.shape[-1]))
        generate = (torch.rand(b, device=frames.device) < self.gen_ratio) if self.variant == "v-gen" \
            else torch.zeros(b, dtype=torch.bool, device=frames.device)
        cond = ["" if g else t for g, t in zip(generate.tolist(), texts)]
        lang, lang_mask = enc.language(cond)
        h = self.enc_to_dec(enc.encode(visible.flatten(1, 2), lang, lang_mask)).view(b, f, k, -1)
        tokens_in = self.mask_token.to(h.dtype).expand(b, f, n, h.shape[-1])  # bf16 under autocast
        full = tokens_in.scatter(2, keep[:, None, :, None].expand_as(h), h)
        seq = (full + self.decoder_pos + self.decoder_frame[:, None]).flatten(1, 2)  # (B, F*N, Wd)
        attn_mask = None
        if self.variant == "v-gen":
            ids, id_mask, emb = self._caption_tokens(texts)
            seq = torch.cat([seq, self.lang_to_dec(emb)], dim=1)
            attn_mask = prefix_lm_mask(f * n, id_mask)
        out = self.decoder(seq, attn_mask)
        pred = self.pixel_head(out[:, :f * n]).view(b, f, n, -1)
        target = patchify(frames, enc.patch_size)
        if self.norm_pixel_loss:
            target = normalize_patches(target)
        reconstruction = patch_mse(pred, target, mask[:, None].expand(-1, f, -1))
        language = next_token_loss(self.lm_head(out[:, f * n:]), ids, id_mask, generate) \
            if self.variant == "v-gen" else reconstruction.new_zeros(())
        return VoltronOutput(loss=reconstruction + self.lm_weight * language, reconstruction=reconstruction,
                             language=language, predictions=pred, mask=mask, generate=generate)

    # ------------------------------------------------------------------ Lightning
    def _step(self, batch: Mapping[str, Any], stage: str) -> Tensor:
        frames, texts = self.select_frames(batch)
        out = self(frames, texts)
        self.log(f"{stage}/loss", out.loss, prog_bar=True, batch_size=frames.shape[0])
        self.log(f"{stage}/reconstruction", out.reconstruction.detach(), batch_size=frames.shape[0])
        if self.variant == "v-gen":
            self.log(f"{stage}/language", out.language.detach(), batch_size=frames.shape[0])
        return out.loss

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._step(batch, "val")

    def configure_optimizers(self) -> Any:
        return configure_adamw(self, self.optim_cfg, betas=(0.9, 0.95), eps=1e-8)

    def export_encoder(self, folder: Union[str, Path]) -> Path:
        """Write the encoder for frozen downstream use (:meth:`VoltronEncoder.export`)."""
        return self.encoder.export(folder)
