"""The two halves of a local Hugging Face CLIP or SigLIP as towers (``"hf-clip-text"``, ``"hf-clip-vision"``).

Each half is read from a local CLIP/SigLIP folder (``path``) or built randomly initialised from the half's config
dict (``config``: ``{"model_type": "clip_vision_model" | "clip_text_model" | "siglip_vision_model" |
"siglip_text_model", ...}``), as an imported tower is (``alignkit import-weights hf-clip``: its weights are loaded
afterwards). CLIP: the projected embeddings (``image_embeds`` / ``text_embeds``); SigLIP: the pooled outputs (the
attention-pooling head of the vision half, the head over the last token of the text half), no projection.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alignkit.core.encoders.base import TextItem
from alignkit.core.encoders.image import check_image
from alignkit.core.encoders.text import flatten_texts, mean_per_item
from alignkit.core.registry import ENCODERS, ConfigError
from alignkit.core.params import AT_LEAST_ONE, OneOf

TEXT_PADDINGS = ("longest", "max_length")


def _clip_folder(path: str, key: str) -> str:
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(
            f"hf-clip: {key} '{path}' is not a local folder. alignkit never downloads weights: fetch a CLIP model "
            f"once (e.g. `huggingface-cli download openai/clip-vit-base-patch16 --local-dir <folder>`) and set {key} "
            f"to that folder.")
    return str(folder)


def _family(model_type: str) -> str:
    """``"siglip"`` for SigLIP configs, else ``"clip"``."""
    return "siglip" if str(model_type).startswith("siglip") else "clip"


def _half_class(family: str, half: str) -> Any:
    import transformers

    names = {("clip", "text"): "CLIPTextModelWithProjection", ("clip", "vision"): "CLIPVisionModelWithProjection",
             ("siglip", "text"): "SiglipTextModel", ("siglip", "vision"): "SiglipVisionModel"}
    return getattr(transformers, names[family, half])


def _one_source(path: Optional[str], config: Optional[Dict[str, Any]], owner: str) -> None:
    if (path is None) == (config is None):
        raise ConfigError(f"{owner} needs exactly one of path (a local CLIP folder) or config (the half's "
                          f"transformers config dict, as an imported tower has)")


def _clip_half(path: Optional[str], config: Optional[Dict[str, Any]], half: str, owner: str) -> Tuple[Any, str]:
    """The ``half`` (``"text"``/``"vision"``) model and its family: from a local folder holding that half or a full
    ``CLIPModel``/``SiglipModel`` (a full CLIP's half takes the top-level ``projection_dim``: the half configs of a
    ``CLIPConfig`` may carry a stale default), or randomly initialised from a half's config dict."""
    from transformers import AutoConfig

    from alignkit.core.encoders.hf_vision import vision_config

    _one_source(path, config, owner)
    if config is not None:
        half_config = vision_config(config, owner)
        family = _family(half_config.model_type)
        return _half_class(family, half)(half_config), family
    folder = _clip_folder(path, "path")
    full = AutoConfig.from_pretrained(folder, local_files_only=True)
    family = _family(full.model_type)
    half_config = full
    if full.model_type in ("clip", "siglip"):
        half_config = copy.deepcopy(getattr(full, f"{half}_config"))
        if family == "clip":
            half_config.projection_dim = full.projection_dim
    return _half_class(family, half).from_pretrained(folder, config=half_config, local_files_only=True), family


@ENCODERS.register("hf-clip-text")
class CLIPTextTower(nn.Module):
    """The text half of a local Hugging Face CLIP (``CLIPTextModelWithProjection``): ``forward(texts) ->
    (B, projection_dim)`` CLIP text embeddings (EOS-token state times the text projection; not normalised), or for a
    SigLIP folder (``SiglipTextModel``) its pooled output ``(B, projection_size)``.

    Args:
        path: local folder of a CLIP checkpoint (a full ``CLIPModel`` folder works: its text half is read).
        config: instead of ``path``, the text half's config dict (randomly initialised; needs ``tokenizer_path``).
        tokenizer_path: local tokenizer folder (default ``path``).
        padding: ``"longest"`` (CLIP: its EOS token is pooled) or ``"max_length"`` (SigLIP, trained on texts padded
            to ``max_length`` whose last position is pooled; a SigLIP half is fed ``input_ids`` only, as its
            processor does).
        max_length: texts are truncated to this many tokens (CLIP: 77).
        cache: memoise embeddings per distinct string (CPU float32); only for a frozen tower (``frozen: true``),
            like ``hf-text``'s cache.

    A list item (several strings) is embedded as the mean of its strings' embeddings.
    """

    def __init__(self, path: Optional[str] = None, tokenizer_path: Optional[str] = None,
                 max_length: Annotated[int, AT_LEAST_ONE] = 77, cache: bool = False,
                 config: Optional[Dict[str, Any]] = None, padding: Annotated[str, OneOf(TEXT_PADDINGS)] = "longest"):
        super().__init__()
        from transformers import AutoTokenizer

        _one_source(path, config, "hf-clip-text")
        if tokenizer_path is None and path is None:
            raise ConfigError("hf-clip-text built from config needs tokenizer_path (a local tokenizer folder)")
        if padding not in TEXT_PADDINGS:
            raise ConfigError(f"hf-clip-text padding must be one of {', '.join(TEXT_PADDINGS)}; got {padding!r}")
        self.tokenizer = AutoTokenizer.from_pretrained(
            _clip_folder(tokenizer_path or path, "tokenizer_path" if tokenizer_path else "path"), local_files_only=True)
        self.model, self.family = _clip_half(path, config, "text", "hf-clip-text")
        positions = int(self.model.config.max_position_embeddings)
        if max_length > positions:
            raise ConfigError(f"hf-clip-text max_length {max_length} exceeds the model's {positions} positions")
        self.max_length, self.cache, self.padding = int(max_length), bool(cache), padding
        cfg = self.model.config
        self.output_dim = int(cfg.projection_dim if self.family == "clip" else
                              getattr(cfg, "projection_size", None) or cfg.hidden_size)
        self._cached: Dict[str, Tensor] = {}

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _embed(self, texts: Sequence[str]) -> Tensor:
        batch = self.tokenizer(list(texts), padding=self.padding, truncation=True, max_length=self.max_length,
                               return_tensors="pt")
        keys = ("input_ids", "attention_mask") if self.family == "clip" else ("input_ids",)
        out = self.model(**{k: v.to(self.device) for k, v in batch.items() if k in keys})
        return out.text_embeds if self.family == "clip" else out.pooler_output

    def forward(self, texts: Sequence[TextItem]) -> Tensor:
        """``(B, output_dim)``; with ``cache`` only unseen strings run through the model (without gradients)."""
        strings, counts = flatten_texts(texts)
        if self.cache:
            if self.training or any(p.requires_grad for p in self.parameters()):
                raise RuntimeError("hf-clip-text cache=True on a trainable encoder: freeze the tower (frozen: true) "
                                   "or set cache: false")
            new = list(dict.fromkeys(t for t in strings if t not in self._cached))
            with torch.no_grad():
                for i in range(0, len(new), 64):
                    self._cached.update(zip(new[i:i + 64], self._embed(new[i:i + 64]).float().cpu()))
            embeddings = torch.stack([self._cached[t] for t in strings]).to(self.device)
        else:
            embeddings = self._embed(strings)
        return embeddings if counts is None else mean_per_item(embeddings, counts)


@ENCODERS.register("hf-clip-vision")
class CLIPVisionTower(nn.Module):
    """The image half of a local Hugging Face CLIP (``CLIPVisionModelWithProjection``) or SigLIP
    (``SiglipVisionModel``).

    ``forward(images (B, 3, H, W)) -> (B, projection_dim)`` CLIP image embeddings (SigLIP: ``(B, hidden)`` pooled
    output); ``forward_tokens`` gives the patch tokens ``(B, N, hidden)`` (CLIP's CLS dropped). Inputs must be normalised with CLIP's mean/std (set the
    dataset's ``image_mean``/``image_std``); other sizes than the model's ``image_size`` are resized bilinearly.
    ``config``: instead of ``path``, the vision half's config dict (randomly initialised).
    """

    def __init__(self, path: Optional[str] = None, config: Optional[Dict[str, Any]] = None):
        super().__init__()
        self.model, self.family = _clip_half(path, config, "vision", "hf-clip-vision")
        self.image_size = int(self.model.config.image_size)
        cfg = self.model.config
        self.output_dim = int(cfg.projection_dim if self.family == "clip" else cfg.hidden_size)

    def _pixels(self, images: Tensor) -> Tensor:
        check_image(images, 2, int(self.model.config.num_channels), "hf-clip-vision")
        if tuple(images.shape[-2:]) != (self.image_size, self.image_size):
            images = F.interpolate(images, size=(self.image_size, self.image_size), mode="bilinear",
                                   align_corners=False)
        return images

    def forward(self, images: Tensor) -> Tensor:
        out = self.model(pixel_values=self._pixels(images))
        return out.image_embeds if self.family == "clip" else out.pooler_output

    def forward_tokens(self, images: Tensor) -> Tensor:
        """``(B, N, hidden)`` patch tokens (CLIP's class token dropped; SigLIP has none)."""
        hidden = self.model(pixel_values=self._pixels(images)).last_hidden_state
        return hidden[:, 1:] if self.family == "clip" else hidden


__all__ = ["CLIPTextTower", "CLIPVisionTower"]
