"""Point-cloud augmentations as MONAI ``RandomizableTransform`` s on ``(N, 3+F)`` float arrays.

xyz are columns 0:3; with ``normals`` the normals are columns 3:6 and are transformed with the points.
The transforms and their defaults follow PointNet++'s ``utils/provider.py`` (charlesq34/pointnet2), which ULIP's
``data/dataset_3d.py`` reuses: ``random_scale_point_cloud`` (one factor in ``[0.8, 1.25]`` per cloud),
``rotate_point_cloud`` (about the up axis), ``jitter_point_cloud`` (``sigma`` 0.01, clipped to 0.05) and
``random_point_dropout`` (ratio drawn in ``[0, 0.875)``, dropped points replaced by the first point).
:func:`point_augmentation` composes them. Random draws come from each transform's MONAI ``self.R``
(``set_random_state`` seeds it).
"""
from __future__ import annotations

from typing import Any, List, Optional, Sequence

import numpy as np
from monai.transforms import Compose, RandomizableTransform

from alignkit.core.params import check_choice
from alignkit.core.registry import ConfigError
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


__all__ = ["RandomPointTransform", "RandomScalePoints", "rotation_about", "RandomRotateUp", "RandomJitterPoints", "RandomPointDropout",
           "point_augmentation"]
