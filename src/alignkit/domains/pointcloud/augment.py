"""Point-cloud augmentations as MONAI ``RandomizableTransform`` s on ``(N, 3+F)`` float arrays.

xyz are columns 0:3; with ``normals`` the normals are columns 3:6 and are transformed with the points.
The transforms and their defaults follow PointNet++'s ``utils/provider.py`` (charlesq34/pointnet2), which ULIP's
``data/dataset_3d.py`` reuses: ``random_scale_point_cloud`` (one factor in ``[0.8, 1.25]`` per cloud),
``rotate_point_cloud`` (about the up axis), ``jitter_point_cloud`` (``sigma`` 0.01, clipped to 0.05) and
``random_point_dropout`` (ratio drawn in ``[0, 0.875)``, dropped points replaced by the first point).
:func:`point_augmentation` composes them. Random draws come from each transform's MONAI ``self.R``
(``set_random_state`` seeds it).

:class:`PointCloudAugment` (``AUGMENTATIONS["point-cloud"]``) is the same augmentation, with the same
distributions, on a training batch ``(B, N, 3+F)`` already on the accelerator (torch ops, torch's global
generator), so DataLoader workers only decode: set the dataset's ``point_augment: device`` and
``data.augment: [{name: point-cloud}]``.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from monai.transforms import Compose, RandomizableTransform
from torch import Tensor

from alignkit.core.params import check_choice
from alignkit.core.registry import AUGMENTATIONS, ConfigError
from alignkit.domains.pointcloud.clouds import UP_AXES

_AXIS_INDEX = {"x": 0, "y": 1, "z": 2}


class RandomPointTransform(RandomizableTransform):
    """A randomised transform of ``(N, 3+F)`` points: ``randomize(points)`` draws its parameters and
    :meth:`apply` uses them on a copy; with probability ``1 - prob`` the points pass unchanged."""

    def __call__(self, points: np.ndarray, randomize: bool = True) -> np.ndarray:
        if randomize:
            self.randomize(points)
        if not self._do_transform:
            return points
        return self.apply(points)

    def apply(self, points: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class RandomScalePoints(RandomPointTransform):
    """``x' = s x`` with ``s ~ U(low, high)`` per cloud (one factor, or one per axis if ``anisotropic``).

    Acts on (N, 3+F) float arrays; with ``normals`` (columns 3:6) they become ``normalize(n / s)``, the
    normals of the scaled surface.
    """

    def __init__(self, low: float = 0.8, high: float = 1.25, anisotropic: bool = False, normals: bool = False,
                 prob: float = 1.0):
        super().__init__(prob)
        if not 0 < low <= high:
            raise ConfigError(f"scale range must satisfy 0 < low <= high, got ({low}, {high})")
        self.low, self.high, self.anisotropic, self.normals = low, high, anisotropic, normals
        self._scale = np.ones(3)

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        self._scale = self.R.uniform(self.low, self.high, 3 if self.anisotropic else 1) * np.ones(3)

    def apply(self, points: np.ndarray) -> np.ndarray:
        out = points.copy()
        out[:, :3] *= self._scale
        if self.normals:
            n = out[:, 3:6] / self._scale
            out[:, 3:6] = n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
        return out


def rotation_about(axis: str, angle: float) -> np.ndarray:
    """(3, 3) right-handed rotation by ``angle`` radians about coordinate axis ``axis`` (``x``, ``y``, ``z``)."""
    c, s = np.cos(angle), np.sin(angle)
    i, j = [k for k in range(3) if k != _AXIS_INDEX[axis]]
    if axis == "y":  # keep right-handedness: about y the plane is (z, x)
        i, j = j, i
    rot = np.eye(3)
    rot[i, i], rot[i, j], rot[j, i], rot[j, j] = c, -s, s, c
    return rot


class RandomRotateUp(RandomPointTransform):
    """Rotation of xyz (and normals, columns 3:6) about the up axis by ``U(-max_angle, max_angle)`` radians."""

    def __init__(self, up_axis: str = "z", max_angle: float = float(np.pi), normals: bool = False, prob: float = 1.0):
        super().__init__(prob)
        check_choice(up_axis, UP_AXES, "up_axis")
        self.up_axis, self.max_angle, self.normals = up_axis, max_angle, normals
        self._rotation = np.eye(3)

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        self._rotation = rotation_about(self.up_axis, self.R.uniform(-self.max_angle, self.max_angle))

    def apply(self, points: np.ndarray) -> np.ndarray:
        out = points.copy()
        out[:, :3] = points[:, :3] @ self._rotation.T
        if self.normals:
            out[:, 3:6] = points[:, 3:6] @ self._rotation.T
        return out


class RandomJitterPoints(RandomPointTransform):
    """``x' = x + clip(sigma * N(0, 1), -clip, clip)`` per point and coordinate (xyz only)."""

    def __init__(self, sigma: float = 0.01, clip: float = 0.05, prob: float = 1.0):
        super().__init__(prob)
        self.sigma, self.clip = sigma, clip
        self._noise: Optional[np.ndarray] = None

    def randomize(self, data: Optional[np.ndarray] = None) -> None:
        super().randomize(None)
        n = 0 if data is None else len(data)
        self._noise = np.clip(self.sigma * self.R.standard_normal((n, 3)), -self.clip, self.clip)

    def apply(self, points: np.ndarray) -> np.ndarray:
        out = points.copy()
        out[:, :3] += self._noise
        return out


class RandomPointDropout(RandomPointTransform):
    """PointNet++ point dropout: draw ``r ~ U(0, max_ratio)``, then replace each point with probability ``r``
    by the first point (the cloud keeps its size, so batches still stack)."""

    def __init__(self, max_ratio: float = 0.875, prob: float = 1.0):
        super().__init__(prob)
        if not 0 <= max_ratio < 1:
            raise ConfigError(f"dropout max_ratio must be in [0, 1), got {max_ratio}")
        self.max_ratio = max_ratio
        self._drop: Optional[np.ndarray] = None

    def randomize(self, data: Optional[np.ndarray] = None) -> None:
        super().randomize(None)
        ratio = self.R.uniform(0.0, self.max_ratio)
        self._drop = self.R.random_sample(0 if data is None else len(data)) < ratio

    def apply(self, points: np.ndarray) -> np.ndarray:
        out = points.copy()
        out[self._drop] = points[0]
        return out


def point_augmentation(up_axis: str = "z", normals: bool = False, scale: Optional[Sequence[float]] = (0.8, 1.25),
                       rotate: bool = True, jitter: float = 0.01, dropout: float = 0.0) -> Compose:
    """The training augmentation: dropout (if ``dropout`` > 0), scale (if ``scale``), rotation about
    ``up_axis`` (if ``rotate``), jitter (if ``jitter`` > 0), as a MONAI ``Compose`` of the transforms above."""
    steps: List[RandomizableTransform] = []
    if dropout > 0:
        steps.append(RandomPointDropout(dropout))
    if scale is not None:
        low, high = scale
        steps.append(RandomScalePoints(low, high, normals=normals))
    if rotate:
        steps.append(RandomRotateUp(up_axis, normals=normals))
    if jitter > 0:
        steps.append(RandomJitterPoints(jitter))
    return Compose(steps)


UP_AXIS_KEY = "up_axis"
"""Sample field the decoders add under ``point_augment="device"``: the cloud's up axis, 0/1/2 for x/y/z."""


def rotations_about(axes: Tensor, angles: Tensor) -> Tensor:
    """``(B, 3, 3)`` rotations by ``angles`` ``(B,)`` radians about coordinate axes ``axes`` ``(B,)`` (0, 1, 2 =
    x, y, z): :func:`rotation_about` for a batch."""
    c, s = torch.cos(angles), torch.sin(angles)
    out = torch.eye(3, dtype=angles.dtype, device=angles.device).repeat(len(angles), 1, 1)
    planes = torch.tensor([[1, 2], [2, 0], [0, 1]], device=axes.device)[axes]  # (i, j) of each axis, right-handed
    b = torch.arange(len(angles), device=angles.device)
    i, j = planes[:, 0], planes[:, 1]
    out[b, i, i], out[b, i, j], out[b, j, i], out[b, j, j] = c, -s, s, c
    return out


@AUGMENTATIONS.register("point-cloud")
class PointCloudAugment:
    """:func:`point_augmentation` on a batch ``batch[key]`` ``(B, N, 3+F)`` on its device, per cloud ``b``:

    1. dropout (``dropout`` > 0): ``r_b ~ U(0, dropout)``, each point replaced by the cloud's first point with
       probability ``r_b``;
    2. scale (``scale`` = [low, high]): ``xyz *= s_b``, ``s_b ~ U(low, high)``; normals become
       ``normalize(n / s_b)``;
    3. rotation (``rotate``): by ``U(-pi, pi)`` about the up axis (``up_axis`` ``"x"``/``"y"``/``"z"``, or
       ``"sample"``: each cloud's own from ``batch["up_axis"]`` ``(B,)``, which the point datasets add under
       ``point_augment="device"``); normals rotate with the points;
    4. jitter (``jitter`` = sigma > 0): ``xyz += clip(sigma N(0, 1), -clip, clip)`` per point and coordinate.

    ``normals``: columns 3:6 are normals. Draws use torch's global generator on the batch's device.
    """

    def __init__(self, key: str = "points", up_axis: str = "sample", normals: bool = False,
                 scale: Optional[Sequence[float]] = (0.8, 1.25), rotate: bool = True, jitter: float = 0.01,
                 clip: float = 0.05, dropout: float = 0.0):
        check_choice(up_axis, ("sample", *UP_AXES), "point-cloud up_axis")
        if scale is not None and not (len(scale) == 2 and 0 < float(scale[0]) <= float(scale[1])):
            raise ConfigError(f"point-cloud scale must be [low, high] with 0 < low <= high, or null; got {scale}")
        if not 0 <= dropout < 1 or jitter < 0 or clip < 0:
            raise ConfigError(f"point-cloud: need 0 <= dropout < 1, jitter >= 0, clip >= 0; got dropout={dropout}, "
                              f"jitter={jitter}, clip={clip}")
        self.key, self.up_axis, self.normals, self.rotate = key, up_axis, bool(normals), bool(rotate)
        self.scale = (float(scale[0]), float(scale[1])) if scale is not None else None
        self.jitter, self.clip, self.dropout = float(jitter), float(clip), float(dropout)

    def _axes(self, batch: Dict[str, Any], n: int, device: torch.device) -> Tensor:
        if self.up_axis != "sample":
            return torch.full((n,), _AXIS_INDEX[self.up_axis], dtype=torch.long, device=device)
        if UP_AXIS_KEY not in batch:
            raise KeyError(f"point-cloud augmentation with up_axis='sample' needs the batch's '{UP_AXIS_KEY}' (the "
                           "point datasets add it with point_augment='device'); or set up_axis to x, y or z")
        return torch.as_tensor(batch[UP_AXIS_KEY], device=device).long().view(n)

    def __call__(self, batch: Dict[str, Any]) -> Dict[str, Any]:
        if self.key not in batch:
            raise KeyError(f"point-cloud augmentation: the batch has no '{self.key}' (keys {sorted(batch)})")
        x = batch[self.key]
        if not torch.is_tensor(x) or x.ndim != 3 or x.shape[-1] < (6 if self.normals else 3):
            raise ValueError(f"point-cloud augmentation expects '{self.key}' as (B, N, 3+F) points"
                             f"{' with normals in columns 3:6' if self.normals else ''}, got "
                             f"{getattr(x, 'shape', type(x))}")
        n, count = x.shape[:2]
        work = x.float().clone()
        if self.dropout > 0:
            ratio = torch.rand(n, 1, device=x.device) * self.dropout
            drop = torch.rand(n, count, device=x.device) < ratio
            work = torch.where(drop[..., None], work[:, :1], work)
        xyz, normals = work[..., :3], work[..., 3:6] if self.normals else None
        if self.scale is not None:
            s = (torch.rand(n, 1, 1, device=x.device) * (self.scale[1] - self.scale[0]) + self.scale[0])
            xyz = xyz * s
            if normals is not None:
                normals = torch.nn.functional.normalize(normals / s, dim=-1, eps=1e-12)
        if self.rotate:
            angles = (torch.rand(n, device=x.device) * 2 - 1) * math.pi
            rot = rotations_about(self._axes(batch, n, x.device), angles)
            xyz = xyz @ rot.transpose(1, 2)
            if normals is not None:
                normals = normals @ rot.transpose(1, 2)
        if self.jitter > 0:
            xyz = xyz + (torch.randn(n, count, 3, device=x.device) * self.jitter).clamp(-self.clip, self.clip)
        parts = [xyz] + ([normals, work[..., 6:]] if normals is not None else [work[..., 3:]])
        return {**batch, self.key: torch.cat(parts, -1).to(x.dtype)}


__all__ = ["RandomPointTransform", "RandomScalePoints", "rotation_about", "RandomRotateUp", "RandomJitterPoints",
           "RandomPointDropout", "point_augmentation", "UP_AXIS_KEY", "rotations_about", "PointCloudAugment"]
