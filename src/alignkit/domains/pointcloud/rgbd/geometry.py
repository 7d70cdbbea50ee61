"""Back-projection of depth images to camera- or world-frame points that keep their pixel.

Camera frame: OpenCV (x right, y down, z forward, metres); poses are 4x4 camera-to-world ``[[R, t], [0, 1]]``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor


@dataclass
class BackProjection:
    """Points ``(N, 3)`` float32 of the valid depth pixels and their ``pixels (N, 2)`` LongTensor ``(row, col)``,
    in row-major pixel order."""

    points: Tensor
    pixels: Tensor


def transform_points(points: Tensor, pose: Tensor) -> Tensor:
    """``(N, 3) -> (N, 3)``: ``p' = R p + t`` with ``pose = [[R, t], [0, 1]]`` (4x4)."""
    pose = pose.to(points.dtype)
    return points @ pose[:3, :3].T + pose[:3, 3]


def backproject(depth: Tensor, intrinsics: Tensor, pose: Optional[Tensor] = None, max_depth: Optional[float] = None
                ) -> BackProjection:
    """Back-project a depth image ``(H, W)`` (metres) with ``K (3, 3)`` to camera-frame (or, given the
    camera-to-world ``pose (4, 4)``, world-frame) points.

    For each pixel with ``0 < z`` (and ``z <= max_depth``) and finite ``z``:
    ``x = (col - cx) z / fx``, ``y = (row - cy) z / fy`` (``fx = K[0, 0]``, ``cx = K[0, 2]``, ...).
    """
    if depth.ndim != 2:
        raise ValueError(f"depth must be (H, W), got shape {tuple(depth.shape)}")
    k = intrinsics.to(torch.float64)
    valid = torch.isfinite(depth) & (depth > 0)
    if max_depth is not None:
        valid &= depth <= max_depth
    pixels = valid.nonzero()
    z = depth[valid].to(torch.float64)
    rows, cols = pixels[:, 0].to(torch.float64), pixels[:, 1].to(torch.float64)
    points = torch.stack([(cols - k[0, 2]) * z / k[0, 0], (rows - k[1, 2]) * z / k[1, 1], z], dim=1)
    if pose is not None:
        points = transform_points(points, pose.to(torch.float64))
    return BackProjection(points.float(), pixels)


__all__ = ["BackProjection", "transform_points", "backproject"]
