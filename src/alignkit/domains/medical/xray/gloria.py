"""GLoRIA's local alignment (Huang et al., ICCV 2021): word-to-region attention and word-level contrast.

A report's word features ``w_l`` attend to an image's region features ``v_r`` (the cells of a CNN
feature map or ViT patches); each word gets an attention-weighted region context ``c_l``; the
report-image score aggregates how well every word matches its context; the local loss is a
symmetric cross-entropy over the scores of all ``(report, image)`` pairs of the batch:

* attention (paper eq. 3):  ``a_lr = softmax_r(temp1 * cos(w_l, v_r))``,  ``c_l = sum_r a_lr v_r``;
* score (paper eq. 5):      ``Z(x, y) = log(sum_l exp(temp2 * cos(c_l, w_l)))^(1 / temp2)``
  ``= (1 / temp2) * logsumexp_l(temp2 * cos(c_l, w_l))`` over the report's valid words;
* loss (paper eq. 6-7):     ``L = 1/2 [CE(temp3 * Z, I) + CE(temp3 * Zᵀ, I)]``.

Where this follows the paper rather than the public code (marshuang80/gloria), so results can be
compared: the attention logits are ``temp1 *`` cosines with one softmax over regions (the code
uses raw dot products and a softmax over words first); the score keeps the paper's ``1 / temp2``
(the code drops it, which multiplies the logits by ``temp2``); the two cross-entropies are averaged
like :func:`alignkit.core.losses.clip_loss` (the code sums them: a factor 2 for the loss weight);
WordPiece pieces are averaged into words (the code sums them; only cosines of the merged features
are used, so both give the same loss when nothing sits between merging and this module).

The local loss runs over the local batch: under DDP it does not gather other ranks' words, whose
padded lengths differ (as in the public code).

Attention maps export as ``(B, L, h, w)`` grids (:func:`attention_maps`) and PNG overlays
(:func:`overlay_attention`, :func:`plot_word_attention`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.axes import Axes
from torch import Tensor, nn

from alignkit.core.losses import LossOutput
from alignkit.core.params import POSITIVE
from alignkit.core.plots import new_figure, save_figure
from alignkit.core.registry import LOSSES, ConfigError

ImageLike = Union[Tensor, np.ndarray]
Temperature = Annotated[float, POSITIVE]


class WordRegionAttention(NamedTuple):
    """``context (..., L, D)``: attention-weighted region features per word; ``attention (..., L, R)``."""

    context: Tensor
    attention: Tensor


class MergedWords(NamedTuple):
    """Word-level features ``(B, W, D)``, their mask ``(B, W)`` and the words, one list per sample."""

    features: Tensor
    mask: Tensor
    words: List[List[str]]


# --------------------------------------------------------------------------- pure functions
def word_region_attention(words: Tensor, word_mask: Tensor, regions: Tensor,
                          temp1: float = 4.0) -> WordRegionAttention:
    """Each word's attention over image regions and its attention-weighted region context.

    ``words (..., L, D)``, ``word_mask (..., L)`` (True = a real word), ``regions (..., R, D)``;
    leading dimensions broadcast, so ``words[:, None]`` against ``regions[None]`` pairs every
    report with every image. ``a_lr = softmax_r(temp1 * cos(w_l, v_r))`` and
    ``c_l = sum_r a_lr v_r`` (the raw region features). Rows of real words sum to 1; padded words
    get all-zero attention rows and zero contexts.
    """
    if words.shape[-1] != regions.shape[-1]:
        raise ValueError(f"word_region_attention: words have {words.shape[-1]} features but regions "
                         f"{regions.shape[-1]}; project both to one dimension first")
    logits = temp1 * F.normalize(words, dim=-1) @ F.normalize(regions, dim=-1).transpose(-1, -2)
    attention = logits.softmax(-1) * word_mask.to(logits.dtype).unsqueeze(-1)
    return WordRegionAttention(attention @ regions, attention)


def local_similarity(words: Tensor, word_mask: Tensor, contexts: Tensor, temp2: float = 5.0) -> Tensor:
    """``(B_reports, B_images)`` word-level matching scores of every report against every image.

    ``words (Bt, L, D)``, ``word_mask (Bt, L)``, ``contexts (Bt, Bi, L, D)``: report ``t``'s word
    contexts in image ``i`` (:func:`word_region_attention` of ``words[:, None]`` and
    ``regions[None]``). ``Z_ti = (1 / temp2) * log sum_{l valid} exp(temp2 * cos(c_til, w_tl))``.
    """
    mask = word_mask.bool()
    empty = (~mask.any(-1)).nonzero().flatten()
    if len(empty):
        raise ValueError(f"local_similarity: report {int(empty[0])} of the batch has no valid word in word_mask; "
                         "drop empty reports before computing the local loss")
    cos = (F.normalize(contexts, dim=-1) * F.normalize(words, dim=-1).unsqueeze(1)).sum(-1)
    return (temp2 * cos).masked_fill(~mask.unsqueeze(1), -torch.inf).logsumexp(-1) / temp2


def pairwise_local_similarity(words: Tensor, word_mask: Tensor, regions: Tensor, temp1: float = 4.0,
                              temp2: float = 5.0) -> Tensor:
    """``(Bt, Bi)`` scores ``Z_ti`` (:func:`local_similarity`) after every report's words attend to
    every image's regions: ``words (Bt, L, D)``, ``word_mask (Bt, L)``, ``regions (Bi, R, D)``.

    Memory grows as ``Bt * Bi * L * (R + D)``. Computed as :func:`word_region_attention` of ``words[:, None]``
    against ``regions[None]``, but with two large matrix products (``(Bt L, D) x (D, Bi R)`` for the logits, one
    ``(Bt L, R) x (R, D)`` per image for the contexts) instead of ``Bt * Bi`` small ones: several times faster on
    CPU, forward and backward.
    """
    if words.dim() != 3 or regions.dim() != 3 or word_mask.shape != words.shape[:2]:
        raise ValueError(f"GLoRIA local similarity: expected words (B, L, D), word_mask (B, L) and regions "
                         f"(B, R, D), got {tuple(words.shape)}, {tuple(word_mask.shape)} and {tuple(regions.shape)}")
    if words.shape[-1] != regions.shape[-1]:
        raise ValueError(f"word_region_attention: words have {words.shape[-1]} features but regions "
                         f"{regions.shape[-1]}; project both to one dimension first")
    logits = temp1 * torch.einsum("tld,ird->tilr", F.normalize(words, dim=-1), F.normalize(regions, dim=-1))
    attention = logits.softmax(-1) * word_mask.to(logits.dtype)[:, None, :, None]
    contexts = torch.einsum("tilr,ird->tild", attention, regions)
    return local_similarity(words, word_mask, contexts, temp2)


def _matching_cross_entropy(logits: Tensor) -> Tensor:
    """``1/2 [CE(logits, I) + CE(logitsᵀ, I)]`` for a square ``(B, B)`` matrix whose diagonal are the pairs."""
    if logits.shape[0] != logits.shape[1]:
        raise ValueError(f"GLoRIA local loss: needs as many reports as images, got {tuple(logits.shape)}")
    target = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def gloria_local_loss(words: Tensor, word_mask: Tensor, regions: Tensor, temp1: float = 4.0, temp2: float = 5.0,
                      temp3: float = 10.0) -> Tensor:
    """GLoRIA's local loss ``1/2 [CE(temp3 Z, I) + CE(temp3 Zᵀ, I)]`` with ``Z`` from
    :func:`pairwise_local_similarity`; report ``i`` (``words[i]``) is paired with image ``i``
    (``regions[i]``). Shapes: ``words (B, L, D)``, ``word_mask (B, L)``, ``regions (B, R, D)``.
    """
    return _matching_cross_entropy(temp3 * pairwise_local_similarity(words, word_mask, regions, temp1, temp2))


def merge_subwords(features: Tensor, tokens: Sequence[Sequence[str]], mask: Tensor) -> MergedWords:
    """Average WordPiece pieces (``"eff", "##usion"``) into word features, as GLoRIA does.

    ``features (B, T, D)`` token features, ``tokens`` the ``B`` token strings of length ``T``
    (``tokenizer.convert_ids_to_tokens``), ``mask (B, T)`` True for tokens to keep (the caller
    excludes padding and ``[CLS]``/``[SEP]``, e.g. ``attention_mask & ~special_tokens_mask``).
    A ``##`` piece joins the word of the kept token right before it; with none (first kept token,
    or right after a dropped one) it starts a word. Returns word features ``(B, W, D)`` with
    ``W`` the most words in a sample, zero rows where the word mask is False, and the words.
    """
    if features.dim() != 3 or mask.shape != features.shape[:2] or len(tokens) != features.shape[0]:
        raise ValueError(f"merge_subwords: expected features (B, T, D), {features.shape[0]} token lists and mask "
                         f"(B, T), got {tuple(features.shape)}, {len(tokens)} lists and {tuple(mask.shape)}")
    length = features.shape[1]
    keep = mask.bool().tolist()
    rows: List[int] = []
    slots: List[int] = []
    cols: List[int] = []
    words: List[List[str]] = []
    for b, (sample, kept) in enumerate(zip(tokens, keep)):
        if len(sample) != length:
            raise ValueError(f"merge_subwords: sample {b} has {len(sample)} tokens but features have {length}")
        names: List[str] = []
        previous_kept = False
        for t, (token, k) in enumerate(zip(sample, kept)):
            if k:
                if token.startswith("##") and previous_kept:
                    names[-1] += token[2:]
                else:
                    names.append(token[2:] if token.startswith("##") else token)
                rows.append(b)
                slots.append(len(names) - 1)
                cols.append(t)
            previous_kept = k
        words.append(names)
    num_words = max(1, max(len(w) for w in words))
    assign = features.new_zeros(features.shape[0], num_words, length)
    assign[rows, slots, cols] = 1.0
    counts = assign.sum(-1, keepdim=True)
    return MergedWords(assign.div(counts.clamp_min(1.0)) @ features, counts.squeeze(-1) > 0, words)


# --------------------------------------------------------------------------- module
@LOSSES.register("gloria_local")
class GloriaLocalLoss(nn.Module):
    """:func:`gloria_local_loss` holding its temperatures (fixed, as in the paper).

    Unlike the pairwise losses of ``LOSSES`` (``forward(a, b, **extras)`` on pooled ``(B, D)``
    embeddings), this term needs word and region features, so the GLoRIA model calls
    ``forward(word_features (B, L, D), word_mask (B, L), region_features (B, R, D))`` itself,
    beside its global (pairwise) loss. Logs ``local_accuracy``: the mean of the report-to-image
    and image-to-report top-1 accuracies of ``Z``.
    """

    def __init__(self, temp1: Temperature = 4.0, temp2: Temperature = 5.0, temp3: Temperature = 10.0):
        super().__init__()
        for name, value in (("temp1", temp1), ("temp2", temp2), ("temp3", temp3)):
            if value <= 0:
                raise ConfigError(f"gloria_local loss: {name} must be > 0, got {value}")
        self.temp1, self.temp2, self.temp3 = float(temp1), float(temp2), float(temp3)

    def forward(self, word_features: Tensor, word_mask: Tensor, region_features: Tensor) -> LossOutput:
        sim = pairwise_local_similarity(word_features, word_mask, region_features, self.temp1, self.temp2)
        loss = _matching_cross_entropy(self.temp3 * sim)
        target = torch.arange(sim.shape[0], device=sim.device)
        accuracy = 0.5 * ((sim.argmax(1) == target).float().mean() + (sim.argmax(0) == target).float().mean())
        return LossOutput(loss, {"local_accuracy": accuracy.detach()})


# --------------------------------------------------------------------------- attention maps
def _upsample(maps: Tensor, size: Tuple[int, int]) -> Tensor:
    """``(..., h, w) -> (..., H, W)`` bilinear."""
    flat = maps.reshape(-1, 1, *maps.shape[-2:]).float()
    return F.interpolate(flat, size=tuple(size), mode="bilinear", align_corners=False).reshape(*maps.shape[:-2],
                                                                                               *size)


def attention_maps(attention: Tensor, grid_hw: Tuple[int, int], size: Optional[Tuple[int, int]] = None) -> Tensor:
    """``attention (..., L, R)`` over a row-major ``h x w`` region grid as maps ``(..., L, h, w)``.

    With ``size = (H, W)`` the maps are bilinearly upsampled to ``(..., L, H, W)`` (image pixels).
    """
    h, w = grid_hw
    if attention.shape[-1] != h * w:
        raise ValueError(f"attention_maps: {attention.shape[-1]} regions do not form the grid {h}x{w}; "
                         "pass the (h, w) of the encoder's feature map")
    maps = attention.reshape(*attention.shape[:-1], h, w)
    return maps if size is None else _upsample(maps, size)


def _grey(image: ImageLike) -> np.ndarray:
    """``(H, W)`` or single-channel ``(1, H, W)`` image as a numpy array."""
    array = image.detach().cpu().float().numpy() if isinstance(image, Tensor) else np.asarray(image, dtype=np.float32)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise ValueError(f"attention overlay: expected a grey image (H, W) or (1, H, W), got shape {array.shape}")
    return array


def _draw_overlay(ax: Axes, image: np.ndarray, attn: ImageLike, title: Optional[str]) -> None:
    """Grey image (values in [0, 1]) under the attention upsampled to its size and min-max scaled to [0, 1]."""
    heat = _upsample(torch.as_tensor(attn, dtype=torch.float32).detach().cpu(), image.shape)
    span = heat.max() - heat.min()
    heat = (heat - heat.min()) / span if span > 0 else torch.zeros_like(heat)
    ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0)
    ax.imshow(heat.numpy(), cmap="jet", alpha=0.45, vmin=0.0, vmax=1.0)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)


def overlay_attention(image: ImageLike, attn: ImageLike, path: Union[str, Path], title: Optional[str] = None) -> Path:
    """Write a PNG of ``image (H, W)`` (values in [0, 1]) with the heat map of ``attn (h, w)``.

    The attention is bilinearly upsampled to ``(H, W)`` and min-max scaled for display.
    """
    grey = _grey(image)
    fig = new_figure(4.0, 4.0 * grey.shape[0] / grey.shape[1])
    _draw_overlay(fig.add_subplot(1, 1, 1), grey, attn, title)
    return save_figure(fig, path)


def plot_word_attention(image: ImageLike, words: Sequence[str], attention: ImageLike, path: Union[str, Path],
                        max_words: int = 6) -> Path:
    """PNG row: the image, then its overlay for each of the first ``max_words`` words.

    ``attention (L, h, w)``: one map per word of ``words`` (:func:`attention_maps` of one
    sample); pass the words of interest (and their rows) to show those.
    """
    if len(words) > len(attention):
        raise ValueError(f"plot_word_attention: {len(words)} words but only {len(attention)} attention maps")
    grey = _grey(image)
    shown = min(len(words), max_words)
    fig = new_figure(2.2 * (shown + 1), 2.4 * grey.shape[0] / grey.shape[1])
    ax = fig.add_subplot(1, shown + 1, 1)
    ax.imshow(grey, cmap="gray", vmin=0.0, vmax=1.0)
    ax.set_axis_off()
    ax.set_title("image", fontsize=9)
    for k in range(shown):
        _draw_overlay(fig.add_subplot(1, shown + 1, k + 2), grey, attention[k], words[k])
    return save_figure(fig, path)
