"""Training-batch augmentations that run on the accelerator (``data.augment`` in a run config).

Each is registered in :data:`~alignkit.core.registry.AUGMENTATIONS` and is a callable ``batch -> batch``
applied by :class:`~alignkit.core.datamodule.AlignmentDataModule` to *training* batches after they reach the
device, so augmentation costs no DataLoader worker time and validation/test batches stay untouched.
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
    """Per-sample random affine warp and intensity gain/offset of the image batch ``batch[key]`` ``(B, C, H, W)``.

    For sample ``b``: rotation ``theta_b ~ U(-rotate_degrees, rotate_degrees)``, isotropic scale
    ``s_b ~ U(scale)``, translation ``t_b ~ U(-translate, translate)^2`` (fraction of the image side), applied with
    ``F.affine_grid``/``F.grid_sample`` (bilinear, border padding); then ``x' = gain_b * x + bias_b`` with
    ``gain_b ~ U(gain)`` and ``bias_b ~ U(bias)`` in the (normalised) units of the batch. With probability
    ``1 - p`` a sample is left unchanged. Only 2-D images are supported.
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
        if not torch.is_tensor(x) or x.ndim != 4:
            raise ValueError(f"affine-intensity expects '{self.key}' as a (B, C, H, W) tensor, got "
                             f"{getattr(x, 'shape', type(x))}")
        n, work = x.shape[0], x.float()
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
        return {**batch, self.key: out.to(x.dtype)}
