"""Report-image pretraining models for chest X-rays: ConVIRT and GLoRIA on the core ``AlignmentModule``.

ConVIRT (Zhang et al., 2020) is the core :class:`~alignkit.core.module.AlignmentModule` as configured in
``configs/medical/convirt_resnet50.yaml`` (image and text towers, a global contrastive loss); it needs no
code. :class:`GloriaModule` (Huang et al., ICCV 2021) adds GLoRIA's local term to the configured global
objectives:

    L = sum_k w_k * loss_k(z_image, z_text)  +  local_weight * L_local(W w, V v)

with word features ``w`` (the text tower's token features, WordPiece pieces averaged into words, ``[CLS]``,
``[SEP]`` and padding excluded), region features ``v`` (the image tower's ``forward_tokens``: the cells of
its last feature map), two linear projections ``W``, ``V`` to ``embed_dim``, and ``L_local`` the
:class:`~alignkit.domains.medical.xray.gloria.GloriaLocalLoss` (``temp1``, ``temp2``, ``temp3``).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alignkit.core.encoders import FeatureMapEncoder, FrozenTower, TextItem, check_image, global_pool
from alignkit.core.module import AlignmentModule
from alignkit.core.registry import MODELS, ConfigError
from alignkit.domains.medical.xray.gloria import (GloriaLocalLoss, MergedWords, attention_maps, merge_subwords,
                                                  plot_word_attention, word_region_attention)


class RegionFeatures(NamedTuple):
    """Projected region features ``(B, R, D)`` on a row-major ``grid`` ``(h, w)`` with ``R = h * w``."""

    features: Tensor
    grid: Tuple[int, int]


class GloriaAttention(NamedTuple):
    """Per sample: its words, and their attention maps ``(B, W, H, S)`` over the image (``W``: most words)."""

    words: List[List[str]]
    maps: Tensor


def _inner(encoder: nn.Module) -> nn.Module:
    return encoder.module if isinstance(encoder, FrozenTower) else encoder


def _report_strings(texts: Sequence[TextItem]) -> List[str]:
    """Reports given as sentence lists are joined with spaces: word features need the report's tokens."""
    return [t if isinstance(t, str) else " ".join(t) for t in texts]


@MODELS.register("gloria")
class GloriaModule(AlignmentModule):
    """GLoRIA: the configured global objectives plus the local word-region loss (see the module docstring).

    Args:
        model, optim: as :class:`~alignkit.core.module.AlignmentModule`.
        local_weight: weight of the local loss.
        temp1, temp2, temp3: GLoRIA's attention, word-aggregation and matching temperatures (paper: 4, 5, 10).
        image, text: the modalities holding the image and report towers. The text encoder needs
            ``encode_tokens`` (``hf-text``, ``minilm-l6``), the image encoder ``forward_tokens``.

    Logged beside the global terms: ``gloria_local/loss`` and ``gloria_local/local_accuracy``. The local loss
    runs over the local batch (not gathered across ranks) and pairs report ``i`` with image ``i`` only, so
    two images of one study in a batch are local negatives of each other's report (as in the paper).
    A convolutional image tower (``FeatureMapEncoder``) computes its feature map once per step for both the
    global embedding and the regions; other towers (ViT) run twice.
    """

    def __init__(self, model: Dict[str, Any], optim: Optional[Dict[str, Any]] = None, local_weight: float = 1.0,
                 temp1: float = 4.0, temp2: float = 5.0, temp3: float = 10.0, image: str = "image",
                 text: str = "text"):
        super().__init__(model, optim)
        for name in (image, text):
            if name not in self.towers:
                raise ConfigError(f"gloria: model.towers has no '{name}' tower (towers: {', '.join(self.towers)}); "
                                  f"set model.params.image / model.params.text to the image and report modalities")
        text_encoder = _inner(self.towers[text].encoder)
        image_encoder = _inner(self.towers[image].encoder)
        if not hasattr(text_encoder, "encode_tokens") or not hasattr(image_encoder, "forward_tokens"):
            raise ConfigError(f"gloria needs a text encoder with encode_tokens (hf-text, minilm-l6) and an image "
                              f"encoder with forward_tokens; got {type(text_encoder).__name__} and "
                              f"{type(image_encoder).__name__}")
        if local_weight < 0:
            raise ConfigError(f"gloria local_weight must be >= 0, got {local_weight}")
        self.image_modality, self.text_modality = image, text
        self.local_weight = float(local_weight)
        region_dim = int(getattr(image_encoder, "map_channels", image_encoder.output_dim))
        self.region_proj = nn.Linear(region_dim, self.embed_dim)
        self.word_proj = nn.Linear(int(text_encoder.output_dim), self.embed_dim)
        self.local_loss = GloriaLocalLoss(temp1, temp2, temp3)
        self._pooled: Optional[Tuple[Tensor, Tensor]] = None  # (images, pooled features) of the current step

    # ------------------------------------------------------------------ local features
    def word_features(self, texts: Sequence[TextItem]) -> MergedWords:
        """Projected word features ``(B, W, D)``, word mask ``(B, W)`` and words of the reports ``texts``."""
        tower = self.towers[self.text_modality]
        encoder = _inner(tower.encoder)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not tower.frozen):
            tokens = tower.encoder.encode_tokens(_report_strings(texts))
        special = set(encoder.tokenizer.all_special_tokens)
        keep = tokens.mask & torch.tensor([[t not in special for t in row] for row in tokens.tokens],
                                          dtype=torch.bool, device=tokens.mask.device)
        merged = merge_subwords(tokens.features.float(), tokens.tokens, keep)
        return MergedWords(self.word_proj(merged.features), merged.mask, merged.words)

    def _image_map(self, images: Tensor) -> Tuple[Tensor, Optional[Tensor], Tuple[int, int]]:
        """Raw regions ``(B, R, C)``, the pooled encoder output when it derives from the same map (else None),
        and the region grid."""
        tower = self.towers[self.image_modality]
        encoder = _inner(tower.encoder)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not tower.frozen):
            if isinstance(encoder, FeatureMapEncoder):
                fmap = encoder.feature_map(check_image(images, encoder.spatial_dims, encoder.in_channels,
                                                       type(encoder).__name__))
                grid = tuple(fmap.shape[2:])
                return fmap.flatten(2).transpose(1, 2), global_pool(fmap, encoder.pool), grid  # type: ignore
            regions = encoder.forward_tokens(images)
        side = math.isqrt(regions.shape[1])
        if side * side != regions.shape[1]:
            raise ValueError(f"gloria: {regions.shape[1]} image regions do not form a square grid")
        return regions, None, (side, side)

    def region_features(self, images: Tensor) -> RegionFeatures:
        """Projected region features ``(B, R, D)`` of ``images`` and their grid ``(h, w)``."""
        regions, _, grid = self._image_map(images)
        return RegionFeatures(self.region_proj(regions.float()), grid)

    # ------------------------------------------------------------------ training
    def embed(self, modality: str, inputs: Any, normalize: bool = True) -> Tensor:
        """As :meth:`AlignmentModule.embed`; within a training/validation step the image tower's pooled features
        computed with the regions are reused."""
        if self._pooled is not None and modality == self.image_modality and inputs is self._pooled[0]:
            z = self.towers[modality].head(self._pooled[1].float())
            return F.normalize(z, dim=-1) if normalize else z
        return super().embed(modality, inputs, normalize)

    def compute_loss(self, batch: Dict[str, Any]) -> Dict[str, Tensor]:
        """Global objectives + ``local_weight`` x the local loss; adds ``gloria_local/*`` entries."""
        images = batch[self.input_key(self.image_modality)]
        regions, pooled, _ = self._image_map(images)
        self._pooled = (images, pooled) if pooled is not None else None
        try:
            out = super().compute_loss(batch)
        finally:
            self._pooled = None
        words = self.word_features(batch[self.input_key(self.text_modality)])
        local = self.local_loss(words.features, words.mask, self.region_proj(regions.float()))
        out["loss"] = out["loss"] + self.local_weight * local.loss
        out["gloria_local/loss"] = local.loss.detach()
        for k, v in local.metrics.items():
            out[f"gloria_local/{k}"] = v.detach()
        return out

    # ------------------------------------------------------------------ attention maps
    @torch.no_grad()
    def attention(self, images: Tensor, texts: Sequence[TextItem]) -> GloriaAttention:
        """Each report's words and their attention over its own image, upsampled to the image size.

        ``images (B, C, H, S)``, ``texts`` B reports -> words (B lists) and maps ``(B, W, H, S)``:
        ``a_lr = softmax_r(temp1 * cos(W w_l, V v_r))`` (:func:`~.gloria.word_region_attention`); rows of
        padded words are zero.
        """
        words = self.word_features(texts)
        regions = self.region_features(images)
        attention = word_region_attention(words.features, words.mask, regions.features, self.local_loss.temp1)
        maps = attention_maps(attention.attention, regions.grid, size=tuple(images.shape[-2:]))
        return GloriaAttention(words.words, maps)

    def write_attention_pngs(self, images: Tensor, texts: Sequence[TextItem], out_dir: Union[str, Path],
                             ids: Optional[Sequence[str]] = None, max_words: int = 6) -> List[Path]:
        """One PNG per sample, ``out_dir/<id>.png``: the image, then its overlay for each of its first
        ``max_words`` words (:func:`~.gloria.plot_word_attention`). Images are min-max scaled for display."""
        result = self.attention(images, texts)
        out = Path(out_dir)
        names = list(ids) if ids is not None else [f"sample{k:04d}" for k in range(len(texts))]
        paths = []
        for k, words in enumerate(result.words):
            grey = images[k, 0].detach().float().cpu()
            span = grey.max() - grey.min()
            grey = (grey - grey.min()) / span if span > 0 else torch.zeros_like(grey)
            safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in names[k])
            paths.append(plot_word_attention(grey, words, result.maps[k, :len(words)].cpu(), out / f"{safe}.png",
                                             max_words=max_words))
        return paths
