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
from typing import Annotated, Any, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alignkit.core.encoders.base import FrozenTower, TextItem
from alignkit.core.encoders.image import FeatureMapEncoder, check_image, global_pool
from alignkit.core.module import AlignmentModule
from alignkit.core.params import NON_NEGATIVE, Range
from alignkit.core.registry import MODELS, ConfigError
from alignkit.domains.medical.xray.gloria import (GloriaLocalLoss, MergedWords, Temperature, attention_maps,
                                                  merge_subwords, plot_word_attention, word_region_attention)


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


def _report_parts(texts: Sequence[TextItem]) -> Tuple[List[str], List[Tuple[int, int]]]:
    """The strings to encode (a report, or each sentence of a report given as sentences) and each report's span."""
    flat: List[str] = []
    spans: List[Tuple[int, int]] = []
    for text in texts:
        parts = [text] if isinstance(text, str) else list(text)
        spans.append((len(flat), len(flat) + len(parts)))
        flat.extend(parts)
    return flat, spans


@MODELS.register("gloria")
class GloriaModule(AlignmentModule):
    """GLoRIA: the configured global objectives plus the local word-region loss (see the module docstring).

    Args:
        model, optim: as :class:`~alignkit.core.module.AlignmentModule`.
        local_weight: weight of the local loss.
        temp1, temp2, temp3: GLoRIA's attention, word-aggregation and matching temperatures (paper: 4, 5, 10).
        image, text: the modalities holding the image and report towers. The text encoder needs
            ``encode_tokens`` (``hf-text``, ``minilm-l6``), the image encoder ``forward_tokens``.
        local_batch: compute the local loss over the first ``local_batch`` pairs of each (shuffled) batch
            only; None uses the whole batch. Its cost grows with the square of the pairs (every report's words
            attend over every image's regions), so a CPU run with large global batches keeps it small.

    Logged beside the global terms: ``gloria_local/loss`` and ``gloria_local/local_accuracy``. The local loss
    runs over the local batch (not gathered across ranks) and pairs report ``i`` with image ``i`` only, so
    two images of one study in a batch are local negatives of each other's report (as in the paper).
    A convolutional image tower (``FeatureMapEncoder``) computes its feature map once per step for both the
    global embedding and the regions; other towers (ViT) run twice.
    """

    def __init__(self, model: Dict[str, Any], optim: Optional[Dict[str, Any]] = None,
                 local_weight: Annotated[float, NON_NEGATIVE] = 1.0, temp1: Temperature = 4.0,
                 temp2: Temperature = 5.0, temp3: Temperature = 10.0, image: str = "image", text: str = "text",
                 local_batch: Optional[Annotated[int, Range(ge=2)]] = None):
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
        if local_batch is not None and local_batch < 2:
            raise ConfigError(f"gloria local_batch must be >= 2 (the loss contrasts pairs) or null, got {local_batch}")
        self.local_batch = local_batch
        self.image_modality, self.text_modality = image, text
        self.local_weight = float(local_weight)
        region_dim = int(getattr(image_encoder, "map_channels", image_encoder.output_dim))
        self.region_proj = nn.Linear(region_dim, self.embed_dim)
        self.word_proj = nn.Linear(int(text_encoder.output_dim), self.embed_dim)
        self.local_loss = GloriaLocalLoss(temp1, temp2, temp3)
        self._pooled: Optional[Tuple[Tensor, Tensor]] = None  # (images, pooled features) of the current step

    # ------------------------------------------------------------------ local features
    def word_features(self, texts: Sequence[TextItem]) -> MergedWords:
        """Projected word features ``(B, W, D)``, word mask ``(B, W)`` and words of the reports ``texts``.

        A report given as a list of sentences has each sentence encoded on its own (so a frozen, cached tower
        encodes every distinct sentence once, not every distinct report) and their words concatenated."""
        tower = self.towers[self.text_modality]
        encoder = _inner(tower.encoder)
        flat, spans = _report_parts(texts)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not tower.frozen):
            tokens = tower.encoder.encode_tokens(flat)
        special = set(encoder.tokenizer.all_special_tokens)
        keep = (tokens.mask & torch.tensor([[t not in special for t in row] for row in tokens.tokens],
                                           dtype=torch.bool, device=tokens.mask.device)).tolist()
        features = tokens.features.float()
        if all(end - start == 1 for start, end in spans):  # one string per report: merge in place
            merged = merge_subwords(features, tokens.tokens, torch.tensor(keep, device=features.device))
            return MergedWords(self.word_proj(merged.features), merged.mask, merged.words)
        # reports given as sentences: each sentence was encoded on its own; concatenate their kept tokens
        rows = [[(i, t) for i in range(start, end) for t, k in enumerate(keep[i]) if k] for start, end in spans]
        length = max(1, max(len(r) for r in rows))
        joined = features.new_zeros(len(rows), length, features.shape[-1])
        mask = torch.zeros(len(rows), length, dtype=torch.bool, device=features.device)
        pad = str(encoder.tokenizer.pad_token)
        strings = []
        for b, row in enumerate(rows):
            if row:
                index = torch.tensor(row, device=features.device)
                joined[b, :len(row)] = features[index[:, 0], index[:, 1]]
                mask[b, :len(row)] = True
            strings.append([tokens.tokens[i][t] for i, t in row] + [pad] * (length - len(row)))
        merged = merge_subwords(joined, strings, mask)
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
        k = len(regions) if self.local_batch is None else min(self.local_batch, len(regions))
        words = self.word_features(list(batch[self.input_key(self.text_modality)])[:k])
        local = self.local_loss(words.features, words.mask, self.region_proj(regions[:k].float()))
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
