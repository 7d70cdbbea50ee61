"""The two halves of a local Hugging Face CLIP as towers (``"hf-clip-text"``, ``"hf-clip-vision"``)."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alignkit.core.encoders.base import TextItem
from alignkit.core.encoders.image import check_image
from alignkit.core.encoders.text import flatten_texts, mean_per_item
from alignkit.core.registry import ENCODERS, ConfigError
from alignkit.core.params import AT_LEAST_ONE


def _clip_folder(path: str, key: str) -> str:
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(
            f"hf-clip: {key} '{path}' is not a local folder. alignkit never downloads weights: fetch a CLIP model "
            f"once (e.g. `huggingface-cli download openai/clip-vit-base-patch16 --local-dir <folder>`) and set {key} "
            f"to that folder.")
    return str(folder)


def _clip_half(model_class: Any, folder: str, half: str) -> Any:
    """``model_class`` (``CLIPTextModelWithProjection`` / ``CLIPVisionModelWithProjection``) from a local folder
    holding either that half or a full ``CLIPModel``; for a full model the half's config takes the top-level
    ``projection_dim`` (the half configs of a ``CLIPConfig`` may carry a stale default)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    if config.model_type == "clip":
        config = copy.deepcopy(getattr(config, f"{half}_config"))
        config.projection_dim = AutoConfig.from_pretrained(folder, local_files_only=True).projection_dim
    return model_class.from_pretrained(folder, config=config, local_files_only=True)


@ENCODERS.register("hf-clip-text")
class CLIPTextTower(nn.Module):
    """The text half of a local Hugging Face CLIP (``CLIPTextModelWithProjection``): ``forward(texts) ->
    (B, projection_dim)`` CLIP text embeddings (EOS-token state times the text projection; not normalised).

    Args:
        path: local folder of a CLIP checkpoint (a full ``CLIPModel`` folder works: its text half is read).
        tokenizer_path: local tokenizer folder (default ``path``).
        max_length: texts are truncated to this many tokens (CLIP: 77).
        cache: memoise embeddings per distinct string (CPU float32); only for a frozen tower (``frozen: true``),
            like ``hf-text``'s cache.

    A list item (several strings) is embedded as the mean of its strings' embeddings.
    """

    def __init__(self, path: str, tokenizer_path: Optional[str] = None, max_length: Annotated[int, AT_LEAST_ONE] = 77,
                 cache: bool = False):
        super().__init__()
        from transformers import AutoTokenizer, CLIPTextModelWithProjection

        self.tokenizer = AutoTokenizer.from_pretrained(
            _clip_folder(tokenizer_path or path, "tokenizer_path" if tokenizer_path else "path"), local_files_only=True)
        self.model = _clip_half(CLIPTextModelWithProjection, _clip_folder(path, "path"), "text")
        positions = int(self.model.config.max_position_embeddings)
        if max_length > positions:
            raise ConfigError(f"hf-clip-text max_length {max_length} exceeds the model's {positions} positions")
        self.max_length, self.cache = int(max_length), bool(cache)
        self.output_dim = int(self.model.config.projection_dim)
        self._cached: Dict[str, Tensor] = {}

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _embed(self, texts: Sequence[str]) -> Tensor:
        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="pt")
        batch = {k: v.to(self.device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
        return self.model(**batch).text_embeds

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
    """The image half of a local Hugging Face CLIP (``CLIPVisionModelWithProjection``).

    ``forward(images (B, 3, H, W)) -> (B, projection_dim)`` CLIP image embeddings; ``forward_tokens`` gives the
    patch tokens ``(B, N, hidden)`` (CLS dropped). Inputs must be normalised with CLIP's mean/std (set the
    dataset's ``image_mean``/``image_std``); other sizes than the model's ``image_size`` are resized bilinearly.
    """

    def __init__(self, path: str):
        super().__init__()
        from transformers import CLIPVisionModelWithProjection

        self.model = _clip_half(CLIPVisionModelWithProjection, _clip_folder(path, "path"), "vision")
        self.image_size = int(self.model.config.image_size)
        self.output_dim = int(self.model.config.projection_dim)

    def _pixels(self, images: Tensor) -> Tensor:
        check_image(images, 2, int(self.model.config.num_channels), "hf-clip-vision")
        if tuple(images.shape[-2:]) != (self.image_size, self.image_size):
            images = F.interpolate(images, size=(self.image_size, self.image_size), mode="bilinear",
                                   align_corners=False)
        return images

    def forward(self, images: Tensor) -> Tensor:
        return self.model(pixel_values=self._pixels(images)).image_embeds

    def forward_tokens(self, images: Tensor) -> Tensor:
        return self.model(pixel_values=self._pixels(images)).last_hidden_state[:, 1:]


__all__ = ["CLIPTextTower", "CLIPVisionTower"]
