"""The encoders of Voltron's released models (siddk/voltron-robotics ``voltron.load``): V-Cond, V-Dual, V-Gen and the
R-MVP reproduction of MVP (an MAE ViT), computing what Voltron's ``get_representations`` computes.

Tokens (``N = (img_size / patch_size)^2`` patches of width ``D``; ``L = 20`` language tokens):

- ``v-cond``: ``[P(x) + pe + t_img ; W_l h + b_l + t_lang]`` with ``h`` ``(L, d_lm)`` the last hidden states of the
  frozen DistilBERT (``lm``) over the tokenised caption (padded to ``L``; the blank caption is ``[CLS]`` then ids 0
  with mask ``[1, 0, ...]``), through ``depth`` :class:`~.layers.VoltronBlock` s (the language padding hides only its
  own rows, see :mod:`.layers`) and the final RMSNorm. ``multimodal``: the ``N + L`` outputs; ``visual``: the ``N``.
- ``v-dual`` / ``v-gen``: two frames (initial, current) ``P(x_f) + pe + ctx_f + t_img`` (``2N`` tokens) then the
  language; the outputs drop the initial frame: ``multimodal`` ``N + L``, ``visual`` the current frame's ``N``.
  V-Gen's encoder is V-Dual's (its checkpoint names the tokens ``img_enc_token`` / ``lang_enc_token``).
- ``r-mvp``: ``[c + pe_0 ; P(x) + pe_{1..N}]`` through LayerNorm/GELU blocks and a final LayerNorm (eps 1e-6);
  ``patch``: the ``N`` patch outputs, ``cls``: the first.

Images: :meth:`VoltronReleasedEncoder.get_representations` takes them as Voltron's preprocess gives them (resized
and centre-cropped to ``img_size``, in [0, 1], then ``(x - mean) / std`` with ImageNet's mean and std);
:meth:`~VoltronReleasedEncoder.forward_tokens` / :meth:`~VoltronReleasedEncoder.extract_features` take frames in
[0, 1] of ``img_size`` and normalise them themselves when ``normalize`` (the robotics policies' convention).

The weights come from a released checkpoint (``alignkit import-weights voltron``, which also copies the DistilBERT
folder named by ``language_model``: its ``config.json`` and tokenizer; the language model's weights are the
checkpoint's ``lm.*``). The fixed position table ``encoder_pe`` is a buffer read from the checkpoint, so a freshly
built encoder holds zeros there until loaded. The MAE decoders are not part of the encoder.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from alignkit.core.images import IMAGENET_MEAN, IMAGENET_STD  # voltron.models.materialize.NORMALIZATION
from alignkit.core.importing import local_hf_folder
from alignkit.core.params import NON_NEGATIVE, POSITIVE, OneOf, check_choice
from alignkit.core.registry import ENCODERS, ConfigError
from alignkit.domains.robotics.models.inputs import Size
from alignkit.domains.robotics.models.voltron.layers import RMSNorm, VoltronBlock

RELEASED_VARIANTS = ("v-cond", "v-dual", "v-gen", "r-mvp")
POOLINGS = ("mean", "cls")
Language = Union[None, str, Sequence[str]]


class PatchEmbed(nn.Module):
    """``(B, C, H, W) -> (B, N, D)``: a stride-``p`` convolution (``proj``), patches in row-major order."""

    def __init__(self, patch_size: int, in_channels: int, width: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, width, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


def _local_language_model(path: Optional[str], variant: str) -> Path:
    try:
        return local_hf_folder(path, f"voltron-released {variant} language_model", "distilbert-base-uncased")
    except ValueError as exc:  # a config value: reported as a config error
        raise ConfigError(str(exc)) from None


@ENCODERS.register("voltron-released")
class VoltronReleasedEncoder(nn.Module):
    """Voltron's released encoders (see the module docstring), parameter names as in Voltron's state dicts.

    Args:
        variant: ``v-cond``, ``v-dual``, ``v-gen`` or ``r-mvp``.
        img_size, patch_size, in_channels: Voltron's ``resolution``, ``patch_size``, ``in_channels``.
        width, depth, heads, mlp_ratio: ``encoder_embed_dim``, ``encoder_depth``, ``encoder_n_heads``, ``mlp_ratio``.
        language_model: local DistilBERT folder (config and tokenizer; not for ``r-mvp``).
        language_dim: the language model's width (768 for DistilBERT).
        max_lang_tokens: captions are padded or cut to this many tokens (Voltron: 20).
        normalize: :meth:`forward_tokens` / :meth:`extract_features` standardise [0, 1] frames with ImageNet's
            mean and std (Voltron's preprocess) before encoding.
        pooling: :meth:`forward`'s ``(B, D)`` vector: the ``"mean"`` of the visual tokens, or ``"cls"`` (r-mvp).
        feature_layer: None (the final, normed outputs) or the number of blocks after which
            :meth:`forward_tokens` / :meth:`extract_features` read the visual tokens (unnormed; 0: embeddings).
    """

    def __init__(self, variant: Annotated[str, OneOf(RELEASED_VARIANTS)] = "v-cond", img_size: Size = 224,
                 patch_size: Size = 16, in_channels: Size = 3, width: Size = 384, depth: Size = 12, heads: Size = 6,
                 mlp_ratio: Annotated[float, POSITIVE] = 4.0, language_model: Optional[str] = None,
                 language_dim: Size = 768, max_lang_tokens: Size = 20, normalize: bool = True,
                 pooling: Annotated[str, OneOf(POOLINGS)] = "mean",
                 feature_layer: Optional[Annotated[int, NON_NEGATIVE]] = None):
        super().__init__()
        check_choice(variant, RELEASED_VARIANTS, "voltron-released variant")
        check_choice(pooling, POOLINGS, "voltron-released pooling")
        if img_size % patch_size:
            raise ConfigError(f"voltron-released img_size {img_size} must be a multiple of patch_size {patch_size}")
        if pooling == "cls" and variant != "r-mvp":
            raise ConfigError(f"voltron-released pooling 'cls' needs the <CLS> token of r-mvp; {variant} has none")
        if feature_layer is not None and feature_layer > depth:
            raise ConfigError(f"voltron-released feature_layer {feature_layer} is outside 0..{depth} (depth)")
        self.variant, self.img_size, self.patch_size, self.in_channels = variant, img_size, patch_size, in_channels
        self.max_lang_tokens, self.normalize, self.pooling = max_lang_tokens, normalize, pooling
        self.feature_layer = feature_layer
        self.language = variant != "r-mvp"
        self.num_frames = 2 if variant in ("v-dual", "v-gen") else 1
        self.num_patches = (img_size // patch_size) ** 2
        self.output_dim = width
        self.patch2embed = PatchEmbed(patch_size, in_channels, width)
        if not self.language:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.register_buffer("encoder_pe", torch.zeros(1, self.num_patches + (0 if self.language else 1), width))
        self.encoder_blocks = nn.ModuleList(VoltronBlock(width, heads, mlp_ratio, voltron_style=self.language)
                                            for _ in range(depth))
        self.encoder_norm = RMSNorm(width) if self.language else nn.LayerNorm(width, eps=1e-6)
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(3, 1, 1), persistent=False)
        if not self.language:
            return
        self.lang2encoder = nn.Linear(language_dim, width)
        self.img_token = nn.Parameter(torch.zeros(1, 1, width) if self.num_frames == 1 else torch.zeros(1, 1, 1, width))
        self.lang_token = nn.Parameter(torch.zeros(1, 1, width))
        if self.num_frames == 2:
            self.ctx_enc_pe = nn.Parameter(torch.zeros(1, 2, 1, width))
        from transformers import AutoConfig, AutoModel, AutoTokenizer
        folder = _local_language_model(language_model, variant)
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        self.lm = AutoModel.from_config(AutoConfig.from_pretrained(str(folder), local_files_only=True))
        lm_dim = getattr(self.lm.config, "dim", None) or self.lm.config.hidden_size
        if lm_dim != language_dim:
            raise ConfigError(f"voltron-released language_dim {language_dim} differs from the width {lm_dim} of the "
                              f"language model in {folder}")
        self.lm.requires_grad_(False).eval()

    # ------------------------------------------------------------------ Voltron's API
    def tokenize(self, language: Language, batch: int) -> Tuple[Tensor, Tensor]:
        """Token ids and 0/1 mask ``(B, max_lang_tokens)`` as Voltron's ``get_representations`` makes them: None ->
        ``[CLS]`` then zeros (mask ``[1, 0, ...]``); strings padded to ``max_lang_tokens``; fewer strings than
        ``batch`` are tiled (``"b L -> (batch b) L"``)."""
        device = self.lang_token.device
        if language is None:
            ids = torch.zeros(batch, self.max_lang_tokens, dtype=torch.long, device=device)
            mask = torch.zeros_like(ids)
            ids[:, 0], mask[:, 0] = self.tokenizer.cls_token_id, 1
            return ids, mask
        texts = [language] if isinstance(language, str) else list(language)
        tokens = self.tokenizer(texts, return_tensors="pt", max_length=self.max_lang_tokens, padding="max_length",
                                truncation=True)
        ids, mask = tokens["input_ids"].to(device), tokens["attention_mask"].to(device)
        if len(ids) != batch:
            if batch % len(ids):
                raise ValueError(f"{len(ids)} instructions for {batch} images: give one per image or one for all")
            ids, mask = ids.repeat(batch // len(ids), 1), mask.repeat(batch // len(ids), 1)
        return ids, mask

    def encode_language(self, ids: Tensor, mask: Tensor) -> Tensor:
        """``(B, L, language_dim)``: the frozen language model's last hidden states (no gradients)."""
        self.lm.eval()
        with torch.no_grad():
            return self.lm(input_ids=ids, attention_mask=mask).last_hidden_state

    def encode(self, pixels: Tensor, ids: Optional[Tensor] = None, mask: Optional[Tensor] = None,
               layers: Optional[int] = None) -> Tensor:
        """Voltron's ``encode``: preprocessed ``pixels`` ``(B, C, H, W)`` (``(B, 2, C, H, W)`` for v-dual/v-gen) and
        tokens -> ``(B, N + L, D)`` (v-*, initial frame dropped) or ``(B, 1 + N, D)`` (r-mvp). After ``layers`` blocks
        (unnormed) when given."""
        self._check_pixels(pixels)
        blocks = self.encoder_blocks if layers is None else self.encoder_blocks[:layers]
        if not self.language:
            patches = self.patch2embed(pixels) + self.encoder_pe[:, 1:]
            cls = (self.cls_token + self.encoder_pe[:, :1]).expand(pixels.shape[0], -1, -1)
            x = torch.cat([cls, patches], dim=1)
            for block in blocks:
                x = block(x)
            return x if layers is not None else self.encoder_norm(x)
        lang = self.lang2encoder(self.encode_language(ids, mask))
        if self.num_frames == 1:
            visual = self.patch2embed(pixels) + self.encoder_pe + self.img_token
        else:
            b = pixels.shape[0]
            patches = (self.patch2embed(pixels.flatten(0, 1)) + self.encoder_pe).view(b, 2, self.num_patches, -1)
            visual = (patches + self.ctx_enc_pe[:, :2] + self.img_token).flatten(1, 2)
        x = torch.cat([visual, lang + self.lang_token], dim=1)
        rows = torch.cat([torch.ones_like(visual[..., -1], dtype=mask.dtype), mask], dim=1)
        for block in blocks:
            x = block(x, rows)
        if layers is None:
            x = self.encoder_norm(x)
        return x[:, (self.num_frames - 1) * self.num_patches:]

    def get_representations(self, pixels: Tensor, language: Language = None, mode: str = "multimodal") -> Tensor:
        """Voltron's ``get_representations``: ``mode`` ``multimodal`` ``(B, N + L, D)`` or ``visual`` ``(B, N, D)``
        for v-*; ``patch`` ``(B, N, D)`` or ``cls`` ``(B, 1, D)`` for r-mvp. ``pixels`` preprocessed as Voltron's."""
        modes = ("multimodal", "visual") if self.language else ("patch", "cls")
        check_choice(mode, modes, f"voltron-released {self.variant} mode")
        if not self.language:
            out = self.encode(pixels)
            return out[:, 1:] if mode == "patch" else out[:, :1]
        ids, mask = self.tokenize(language, pixels.shape[0])
        out = self.encode(pixels, ids, mask)
        return out if mode == "multimodal" else out[:, :-mask.shape[-1]]

    # ------------------------------------------------------------------ alignkit's image-encoder API
    def preprocess(self, frames: Tensor) -> Tensor:
        """Frames in [0, 1] -> Voltron's input: ``(x - mean) / std`` when ``normalize``, and a single frame
        ``(B, C, H, W)`` doubled as initial and current frame for v-dual/v-gen."""
        if frames.ndim == 4 and self.num_frames == 2:
            frames = frames.unsqueeze(1).expand(-1, 2, -1, -1, -1)
        if self.normalize:
            frames = (frames - self.pixel_mean.to(frames)) / self.pixel_std.to(frames)
        return frames

    def extract_features(self, frames: Tensor, instruction: Language = None) -> Tensor:
        """``(B, N, D)`` visual tokens of ``frames`` in [0, 1] (``(B, C, H, W)``, or ``(B, 2, C, H, W)`` for
        v-dual/v-gen), conditioned on ``instruction`` (None: the blank caption; one string or one per frame), read
        after ``feature_layer`` blocks when set."""
        pixels = self.preprocess(frames)
        if not self.language:
            return self.encode(pixels, layers=self.feature_layer)[:, 1:]
        ids, mask = self.tokenize(instruction, pixels.shape[0])
        return self.encode(pixels, ids, mask, layers=self.feature_layer)[:, :self.num_patches]

    def forward_tokens(self, images: Tensor) -> Tensor:
        """``(B, C, H, W)`` in [0, 1] -> ``(B, N, D)``: :meth:`extract_features` without an instruction."""
        return self.extract_features(images)

    def forward(self, images: Tensor) -> Tensor:
        """``(B, C, H, W)`` in [0, 1] -> ``(B, D)``: the mean of the visual tokens, or r-mvp's <CLS> output."""
        if self.pooling == "cls":
            return self.encode(self.preprocess(images), layers=self.feature_layer)[:, 0]
        return self.forward_tokens(images).mean(1)

    def _check_pixels(self, pixels: Tensor) -> None:
        want = (self.in_channels, self.img_size, self.img_size)
        frames = () if self.num_frames == 1 else (2,)
        if tuple(pixels.shape[1:]) != (*frames, *want):
            raise ValueError(f"voltron-released {self.variant} takes images (B, {', '.join(map(str, frames + want))}); "
                             f"got {tuple(pixels.shape)}: resize and centre-crop frames to {self.img_size} px "
                             f"(its preprocessing) or set the dataset's image_size")


def released_encoder_names(variant: str) -> List[str]:
    """The checkpoint prefixes of ``variant``'s encoder (everything else of a Voltron checkpoint is its decoder)."""
    names = ["patch2embed.", "encoder_pe", "encoder_blocks.", "encoder_norm."]
    if variant == "r-mvp":
        return names + ["cls_token"]
    names += ["lang2encoder.", "lm."]
    names += ["img_enc_token", "lang_enc_token"] if variant == "v-gen" else ["img_token", "lang_token"]
    return names + (["ctx_enc_pe"] if variant in ("v-dual", "v-gen") else [])
