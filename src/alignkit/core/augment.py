"""Training-batch augmentations that run on the accelerator (``data.augment`` in a run config).

They act on batched tensors already on the device, so DataLoader workers only decode: images ``(B, C, H, W)``,
video clips ``(B, C, T, H, W)`` (echo) and observation windows ``(B, T, C, H, W)`` (robot episodes) alike,
with one draw per sample shared by all its frames. Domains register their own (point clouds:
``alignkit.domains.pointcloud.augment``). Each is registered in :data:`~alignkit.core.registry.AUGMENTATIONS`
and is a callable ``batch -> batch`` applied by :class:`~alignkit.core.datamodule.AlignmentDataModule` to
*training* batches after they reach the device, so augmentation costs no DataLoader worker time and
validation/test batches stay untouched.
Random draws use torch's global generator, which Lightning seeds and alignkit checkpoints, so a resumed run
draws the same augmentations as an uninterrupted one.
"""
from __future__ import annotations

import math
from typing import Annotated, Any, Dict, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from alignkit.core.registry import AUGMENTATIONS, ConfigError
from alignkit.core.params import FRACTION, NON_NEGATIVE, POSITIVE


def _range(value: Sequence[float], name: str) -> tuple[float, float]:
    lo, hi = (float(v) for v in value)
    if lo > hi:
        raise ConfigError(f"augmentation {name} must be [low, high] with low <= high, got {list(value)}")
    return lo, hi


def _uniform(n: int, lo: float, hi: float, like: Tensor) -> Tensor:
    return torch.rand(n, device=like.device, dtype=like.dtype) * (hi - lo) + lo


@AUGMENTATIONS.register("affine-intensity")
class AffineIntensity:
    """Per-sample random affine warp and intensity gain/offset of the batch ``batch[key]`` ``(B, ..., H, W)``:
    images ``(B, C, H, W)``, clips ``(B, C, T, H, W)`` or windows ``(B, T, C, H, W)`` (every frame and channel of a
    sample gets that sample's draw; the dimensions between ``B`` and ``(H, W)`` are flattened for the warp).

    For sample ``b``: rotation ``theta_b ~ U(-rotate_degrees, rotate_degrees)``, isotropic scale
    ``s_b ~ U(scale)``, translation ``t_b ~ U(-translate, translate)^2`` (fraction of the image side), applied with
    ``F.affine_grid``/``F.grid_sample`` (bilinear, border padding); then ``x' = gain_b * x + bias_b`` with
    ``gain_b ~ U(gain)`` and ``bias_b ~ U(bias)`` in the (normalised) units of the batch. With probability
    ``1 - p`` a sample is left unchanged.
    """

    def __init__(self, key: str = "image", translate: Annotated[float, NON_NEGATIVE] = 0.05,
                 scale: Tuple[Annotated[float, POSITIVE], Annotated[float, POSITIVE]] = (0.95, 1.05),
                 rotate_degrees: Annotated[float, NON_NEGATIVE] = 5.0, gain: Tuple[float, float] = (0.9, 1.1),
                 bias: Tuple[float, float] = (-0.1, 0.1), p: Annotated[float, FRACTION] = 1.0):
        if not 0 <= p <= 1 or translate < 0 or rotate_degrees < 0:
            raise ConfigError(f"affine-intensity: need 0 <= p <= 1, translate >= 0, rotate_degrees >= 0; got p={p}, "
                              f"translate={translate}, rotate_degrees={rotate_degrees}")
        self.key, self.translate, self.rotate, self.p = key, float(translate), float(rotate_degrees), float(p)
        self.scale, self.gain, self.bias = _range(scale, "scale"), _range(gain, "gain"), _range(bias, "bias")

    def __call__(self, batch: Dict[str, Any]) -> Dict[str, Any]:
        if self.key not in batch:
            raise KeyError(f"affine-intensity: the batch has no '{self.key}' (keys {sorted(batch)}); set its key")
        x = batch[self.key]
        if not torch.is_tensor(x) or x.ndim < 4:
            raise ValueError(f"affine-intensity expects '{self.key}' as a (B, C, H, W) or (B, ..., H, W) tensor, "
                             f"got {getattr(x, 'shape', type(x))}")
        n, work = x.shape[0], x.float().reshape(x.shape[0], -1, *x.shape[-2:])
        angle = _uniform(n, -self.rotate, self.rotate, work) * (math.pi / 180)
        s = _uniform(n, *self.scale, work)
        shift = _uniform(2 * n, -self.translate, self.translate, work).view(n, 2) * 2  # grid units span [-1, 1]
        cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
        theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], -1), torch.stack([sin, cos, shift[:, 1]], -1)], 1)
        grid = F.affine_grid(theta, list(work.shape), align_corners=False)
        out = F.grid_sample(work, grid, mode="bilinear", padding_mode="border", align_corners=False)
        out = out * _uniform(n, *self.gain, work).view(n, 1, 1, 1) + _uniform(n, *self.bias, work).view(n, 1, 1, 1)
        if self.p < 1:
            keep = (torch.rand(n, device=x.device) >= self.p).view(n, 1, 1, 1)
            out = torch.where(keep, work, out)
        return {**batch, self.key: out.reshape(x.shape).to(x.dtype)}


@AUGMENTATIONS.register("random-shift")
class RandomShift:
    """DrQ's random shift (Kostrikov et al. 2020; the crop augmentation of robot policies): each sample of
    ``batch[k]`` ``(B, ..., H, W)`` for every ``k`` in ``keys`` is padded by ``pad`` pixels (edge values repeated)
    and cut back to ``(H, W)`` at an offset ``(dy_b, dx_b) ~ U{0..2 pad}^2``, i.e. moved by ``pad - d`` pixels.

    One shift per sample, shared by all its frames and channels (a history window moves as one) and by all
    ``keys`` when ``same_for_keys`` (cameras of one robot), else one per key. Integer shifts: pixel values
    are moved, never interpolated.
    """

    def __init__(self, keys: Sequence[str] = ("image",), pad: Annotated[int, NON_NEGATIVE] = 4,
                 same_for_keys: bool = False):
        if isinstance(keys, str):
            keys = (keys,)
        if not keys or pad < 0:
            raise ConfigError(f"random-shift: needs at least one key and pad >= 0; got keys={list(keys)}, pad={pad}")
        self.keys, self.pad, self.same_for_keys = tuple(keys), int(pad), bool(same_for_keys)

    def _offsets(self, n: int, device: torch.device) -> Tensor:
        return torch.randint(0, 2 * self.pad + 1, (n, 2), device=device)

    def __call__(self, batch: Dict[str, Any]) -> Dict[str, Any]:
        missing = [k for k in self.keys if k not in batch]
        if missing:
            raise KeyError(f"random-shift: the batch has no {missing} (keys {sorted(batch)}); set its keys")
        out, shared = dict(batch), None
        for key in self.keys:
            x = batch[key]
            if not torch.is_tensor(x) or x.ndim < 3:
                raise ValueError(f"random-shift expects '{key}' as a (B, ..., H, W) tensor, got "
                                 f"{getattr(x, 'shape', type(x))}")
            if self.same_for_keys and shared is not None and shared.shape[0] != x.shape[0]:
                raise ValueError(f"random-shift: '{key}' has {x.shape[0]} samples, the other keys {shared.shape[0]}")
            offsets = shared if self.same_for_keys and shared is not None else self._offsets(x.shape[0], x.device)
            shared = offsets
            out[key] = shift_images(x, offsets, self.pad)
        return out


def shift_images(x: Tensor, offsets: Tensor, pad: int) -> Tensor:
    """``x`` ``(B, ..., H, W)`` edge-padded by ``pad`` and cropped to ``(H, W)`` at ``offsets`` ``(B, 2)``
    (row, column in ``0..2 pad``): ``out[b, ..., i, j] = x[b, ..., clamp(i + dy_b - pad), clamp(j + dx_b - pad)]``."""
    if pad == 0:
        return x
    height, width = x.shape[-2:]
    rows = (torch.arange(height, device=x.device) + offsets[:, :1] - pad).clamp(0, height - 1)  # (B, H)
    cols = (torch.arange(width, device=x.device) + offsets[:, 1:] - pad).clamp(0, width - 1)  # (B, W)
    flat = x.reshape(x.shape[0], -1, height, width)
    index = rows[:, None, :, None].expand(-1, flat.shape[1], -1, width)
    picked = flat.gather(2, index)
    index = cols[:, None, None, :].expand(-1, flat.shape[1], height, -1)
    return picked.gather(3, index).reshape(x.shape)
