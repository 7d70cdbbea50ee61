"""Segmentation fine-tuning on a pretrained X-ray encoder (BenchX's segmentation task).

:class:`SegmentationHead` decodes the encoder's last feature map ``(B, C, h, w)`` back to per-pixel logits
``(B, K, S, S)`` for ``K`` finding masks with MONAI blocks: ``n = log2(S / h)`` stages of
``UpSample(x2, transposed conv) -> Convolution(3x3, BN, ReLU)`` halving the channels (at least
``min_channels``), then a 1x1 convolution. Only the last map is used (the encoders expose no
intermediate scales), a U-Net decoder without skip connections. Samples carry ``"masks": (K, S, S)`` bool.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Subset

from alignkit.domains.medical.metrics import dice_score
from alignkit.domains.medical.xray.bench.shared import (Split, as_dataset, checked_batches, dataset_labels,
                                                        label_subset, sample_loader, train_with_early_stopping,
                                                        unwrap_encoder)


class SegmentationHead(nn.Module):
    """Pretrained encoder + upsampling decoder: images ``(B, in_channels, S, S)`` -> logits ``(B, K, S, S)``.

    Args:
        encoder: a feature-map encoder (``feature_map(x) -> (B, map_channels, h, w)``, e.g. ``small-cnn``,
            ``monai-resnet``, ``monai-densenet``); a frozen tower is unwrapped.
        num_classes: ``K`` masks.
        image_size: ``S``, used once to measure the encoder's downsampling ``S / h``.
        freeze_encoder: keep the encoder fixed (eval mode, no gradients); default trains it too.
        output_stride: the decoder upsamples to ``S / output_stride`` and the logits are then bilinearly
            resized to ``S`` (2 or 4 make the decoder several times cheaper on CPU).
    """

    def __init__(self, encoder: nn.Module, num_classes: int, image_size: int, in_channels: int = 1,
                 min_channels: int = 16, freeze_encoder: bool = False, output_stride: int = 1):
        super().__init__()
        from monai.networks.blocks import Convolution, UpSample

        encoder = unwrap_encoder(encoder)
        if not hasattr(encoder, "feature_map"):
            raise TypeError(f"SegmentationHead needs an encoder with feature_map(x) -> (B, C, h, w); "
                            f"{type(encoder).__name__} has none (use small-cnn, monai-resnet or monai-densenet)")
        self.encoder = encoder.requires_grad_(not freeze_encoder)
        self.freeze_encoder = freeze_encoder
        was_training = encoder.training
        encoder.eval()
        with torch.no_grad():
            fmap = encoder.feature_map(torch.zeros(1, in_channels, image_size, image_size))
        encoder.train(was_training)
        channels = fmap.shape[1]
        if output_stride < 1:
            raise ValueError(f"SegmentationHead output_stride must be >= 1, got {output_stride}")
        stages = max(0, round(math.log2(image_size / output_stride / fmap.shape[-1])))
        layers: List[nn.Module] = []
        for _ in range(stages):
            out = max(min_channels, channels // 2)
            layers += [UpSample(2, channels, out, scale_factor=2, mode="deconv"),
                       Convolution(2, out, out, kernel_size=3, act="relu", norm="batch")]
            channels = out
        layers.append(nn.Conv2d(channels, num_classes, kernel_size=1))
        self.decoder = nn.Sequential(*layers)
        self.num_classes = num_classes

    def train(self, mode: bool = True) -> "SegmentationHead":
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        logits = self.decoder(self.encoder.feature_map(x))
        if logits.shape[-2:] != x.shape[-2:]:
            logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits


def dice_bce_loss(logits: Tensor, masks: Tensor) -> Tensor:
    """``BCE(logits, masks) + soft Dice loss`` of ``(B, K, S, S)`` logits and masks; the soft Dice is
    MONAI's ``DiceLoss(sigmoid=True)``: mean over images and masks of
    ``1 - (2 sum p t + 1e-5) / (sum p + sum t + 1e-5)`` with ``p = sigmoid(logits)``."""
    from monai.losses import DiceLoss

    target = masks.float()
    return F.binary_cross_entropy_with_logits(logits, target) + DiceLoss(sigmoid=True)(logits, target)


@dataclass
class SegmentationResult:
    """Test Dice per class (and ``"mean"``) of the model and of the all-empty prediction baseline, and the
    per-class minimum mask areas (pixels) chosen on validation (:func:`choose_min_areas`)."""

    dice: Dict[str, float]
    empty_baseline: Dict[str, float]
    val_dice: float
    epochs: int
    min_areas: Dict[str, int]


MIN_AREA_FRACTIONS = (0.0, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08)
"""Candidate minimum predicted-mask areas, as fractions of the image, for :func:`choose_min_areas`."""


def remove_small_masks(pred: Tensor, min_areas: Sequence[int]) -> Tensor:
    """``pred (N, K, S, S)`` bool with every mask of class ``k`` smaller than ``min_areas[k]`` pixels emptied."""
    areas = pred.flatten(2).sum(-1)  # (N, K)
    keep = areas >= torch.as_tensor(list(min_areas), device=pred.device)[None, :]
    return pred & keep[:, :, None, None]


def choose_min_areas(pred: Tensor, masks: Tensor, fractions: Sequence[float] = MIN_AREA_FRACTIONS) -> List[int]:
    """Per class, the minimum mask area (pixels; from ``fractions`` of the image) that maximises the mean Dice of
    :func:`remove_small_masks` on ``(pred, masks)`` (validation): the SIIM-ACR pneumothorax post-processing, which
    matters when most masks are empty and one stray pixel turns an empty-on-empty Dice of 1 into 0. Ties keep the
    smallest area."""
    pixels = pred.shape[-1] * pred.shape[-2]
    candidates = sorted({int(round(f * pixels)) for f in fractions})
    chosen = []
    for k in range(pred.shape[1]):
        scores = [float(dice_score(remove_small_masks(pred[:, k:k + 1], [a])[:, 0], masks[:, k]).mean())
                  for a in candidates]
        chosen.append(candidates[max(range(len(candidates)), key=lambda i: (scores[i], -i))])
    return chosen


def _image_masks(batch: Dict) -> Tuple[Tensor, Tensor]:
    return batch["image"], batch["masks"].bool()


def per_class_dice(pred: Tensor, masks: Tensor, names: Sequence[str]) -> Dict[str, float]:
    """Mean over images of :func:`dice_score` (empty-on-empty = 1) per class of ``(N, K, S, S)`` bool
    masks, plus ``"mean"`` over classes."""
    out = {name: float(dice_score(pred[:, k], masks[:, k]).mean()) for k, name in enumerate(names)}
    out["mean"] = sum(out.values()) / len(names)
    return out


@torch.no_grad()
def predict_masks(model: nn.Module, data: Split, batch_size: int = 32,
                  threshold: float = 0.5) -> Tuple[Tensor, Tensor]:
    """``(predicted, true)`` bool masks ``(N, K, S, S)``: ``sigmoid(logits) > threshold``."""
    model.eval()
    preds, trues = [], []
    for batch in checked_batches(sample_loader(data, batch_size), ["image", "masks"]):
        x, m = _image_masks(batch)
        preds.append(torch.sigmoid(model(x)) > threshold)
        trues.append(m)
    return torch.cat(preds), torch.cat(trues)


def finetune_segmentation(encoder: nn.Module, train: Split, val: Split, test: Split,
                          class_names: Optional[Sequence[str]] = None, epochs: int = 20, lr: float = 1e-3,
                          batch_size: int = 16, patience: int = 5, freeze_encoder: bool = False,
                          threshold: float = 0.5, seed: int = 0, fraction: float = 1.0,
                          output_stride: int = 1) -> SegmentationResult:
    """Train a :class:`SegmentationHead` on a deep copy of ``encoder`` with :func:`dice_bce_loss` (AdamW),
    early-stopped on the validation mean Dice (best epoch restored); report the test Dice per class
    and the all-empty baseline (its Dice is the fraction of empty test masks per class). Predicted masks smaller
    than a per-class area chosen on validation are emptied (:func:`choose_min_areas`). ``fraction < 1``
    trains on that share of the training images (:func:`~.shared.label_subset` of the samples' ``labels``,
    seeded by ``seed``), as BenchX's label-efficiency settings do."""
    sample = next(iter(sample_loader(train, 1)))
    image, masks = _image_masks(sample)
    names = list(class_names) if class_names is not None else [str(k) for k in range(masks.shape[1])]
    if len(names) != masks.shape[1]:
        raise ValueError(f"finetune_segmentation: {len(names)} class names for {masks.shape[1]} masks")
    torch.manual_seed(seed)
    model = SegmentationHead(copy.deepcopy(unwrap_encoder(encoder)), len(names), image_size=image.shape[-1],
                             in_channels=image.shape[1], freeze_encoder=freeze_encoder, output_stride=output_stride)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)

    if fraction < 1:
        train = Subset(as_dataset(train), label_subset(dataset_labels(train), fraction, seed).tolist())

    def run_epoch(epoch: int) -> None:
        shuffled = sample_loader(train, batch_size, shuffle=True, seed=seed + epoch)
        for batch in checked_batches(shuffled, ["image", "masks"]):
            x, m = _image_masks(batch)
            loss = dice_bce_loss(model(x), m)
            opt.zero_grad()
            loss.backward()
            opt.step()

    def validate() -> float:
        pred, true = predict_masks(model, val, batch_size, threshold)
        return per_class_dice(remove_small_masks(pred, choose_min_areas(pred, true)), true, names)["mean"]

    best, epochs_run = train_with_early_stopping(model, run_epoch, validate, epochs, patience)
    min_areas = choose_min_areas(*predict_masks(model, val, batch_size, threshold))
    pred, true = predict_masks(model, test, batch_size, threshold)
    return SegmentationResult(per_class_dice(remove_small_masks(pred, min_areas), true, names),
                              per_class_dice(torch.zeros_like(true), true, names), best, epochs_run,
                              dict(zip(names, min_areas)))
