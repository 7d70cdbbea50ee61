"""Image patches for masked autoencoding and frame prediction: patchify, per-patch target normalisation, the
masked-patch pixel loss, the fixed 2-D sine-cosine position embedding and random patch masking.

Source: MAE (He et al., CVPR 2022; ``facebookresearch/mae`` ``models_mae.py`` and ``util/pos_embed.py``), as used by
Voltron's pretraining and GR-1's future-frame prediction.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from alignkit.core.registry import ConfigError


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """``(..., C, H, W) -> (..., N, p * p * C)``: row-major ``p x p`` patches (``N = H W / p^2``), each flattened
    in ``(p_row, p_col, C)`` order."""
    *lead, c, h, w = images.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"image size {h}x{w} is not divisible by the patch size {p}")
    x = images.reshape(*lead, c, h // p, p, w // p, p)
    x = x.movedim(-5, -1)  # (..., h/p, p, w/p, p, C)
    x = x.transpose(-4, -3)  # (..., h/p, w/p, p, p, C)
    return x.reshape(*lead, (h // p) * (w // p), p * p * c)


def normalize_patches(patches: Tensor, eps: float = 1e-6) -> Tensor:
    """Per-patch standardisation of MAE targets: ``(x - mean(x)) / sqrt(var(x) + eps)`` over the last dim
    (unbiased variance)."""
    mean = patches.mean(-1, keepdim=True)
    var = patches.var(-1, unbiased=True, keepdim=True)
    return (patches - mean) / (var + eps).sqrt()


def patch_mse(pred: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """Masked-patch pixel loss ``sum_n w_n * mean_d (pred_nd - target_nd)^2 / sum_n w_n``.

    ``pred``, ``target``: ``(..., N, D)``; ``weight``: ``(..., N)`` 0/1 (1 on the patches that count: the masked ones
    for MAE, the valid steps for frame prediction). Zero when no weight is positive."""
    per_patch = (pred - target).pow(2).mean(-1)
    w = weight.to(per_patch.dtype)
    return (per_patch * w).sum() / w.sum().clamp_min(1.0)


def sincos_position_embedding(dim: int, grid_h: int, grid_w: int) -> Tensor:
    """Fixed 2-D sine-cosine embedding ``(grid_h * grid_w, dim)`` in row-major order: the first half of the
    channels encodes the row, the second the column, each as ``[sin(pos * w_k), cos(pos * w_k)]`` with
    ``w_k = 10000^(-k / (dim / 4))``, ``k < dim / 4``."""
    if dim % 4:
        raise ConfigError(f"the 2-D sine-cosine position embedding needs a width divisible by 4; got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    rows, cols = torch.meshgrid(torch.arange(grid_h, dtype=torch.float64), torch.arange(grid_w, dtype=torch.float64),
                                indexing="ij")

    def encode(pos: Tensor) -> Tensor:
        angles = pos.reshape(-1, 1) * omega
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([encode(rows), encode(cols)], dim=1).float()


def random_patch_mask(batch: int, num_patches: int, mask_ratio: float,
                      device: Optional[torch.device] = None) -> Tuple[Tensor, Tensor]:
    """Per-sample random masking: ``keep`` ``(B, n_keep)`` indices of the visible patches (ascending) and ``mask``
    ``(B, N)`` bool, True on the ``N - n_keep`` masked patches, with ``n_keep = int(N * (1 - mask_ratio))``."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ConfigError(f"mask_ratio must be in [0, 1); got {mask_ratio}")
    n_keep = max(1, int(num_patches * (1.0 - mask_ratio)))
    order = torch.rand(batch, num_patches, device=device).argsort(dim=1)
    keep = order[:, :n_keep].sort(dim=1).values
    mask = torch.ones(batch, num_patches, dtype=torch.bool, device=device)
    mask.scatter_(1, keep, False)
    return keep, mask
