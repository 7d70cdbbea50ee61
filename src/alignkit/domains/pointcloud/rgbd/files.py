"""RGB-D frame files: camera intrinsics, camera-to-world poses, and the depth, colour and label images.

Formats in :mod:`alignkit.domains.pointcloud.rgbd`. Images are decoded with Pillow from a path or from bytes
(records of a shard). The label conventions every RGB-D module shares live here: :data:`UNLABELED_PIXEL` in
label PNGs becomes :data:`IGNORE_INDEX` per point.
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from alignkit.core.registry import ConfigError
from alignkit.core.text import read_text

PathLike = Union[str, Path]

IGNORE_INDEX = -100
"""Per-point label of unlabeled points (``torch.nn.functional.cross_entropy``'s default ``ignore_index``)."""
UNLABELED_PIXEL = 255
"""Value of an unlabeled pixel in a label PNG."""
COLOR_EXTENSIONS = (".jpg", ".jpeg", ".png")


def read_intrinsics(path: PathLike) -> Tensor:
    """The 3x3 camera matrix ``K = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]`` (float64) of a file.

    ``.json``: Open3D ``PinholeCameraIntrinsic`` (``intrinsic_matrix``: 9 numbers in column-major
    order). Otherwise a whitespace-separated text matrix, 3x3 or ScanNet's 4x4 (its top-left 3x3).
    """
    path = Path(path)
    try:
        if path.suffix.lower() == ".json":
            values = json.loads(read_text(path, what="intrinsics file"))["intrinsic_matrix"]
            if len(values) != 9:
                raise ValueError(f"intrinsic_matrix has {len(values)} numbers, expected 9")
            k = np.asarray(values, dtype=np.float64).reshape(3, 3).T  # column-major
        else:
            rows = np.loadtxt(path, dtype=np.float64, ndmin=2)
            if rows.shape not in ((3, 3), (4, 4)):
                raise ValueError(f"a {rows.shape[0]}x{rows.shape[1]} matrix, expected 3x3 or 4x4")
            k = rows[:3, :3]
    except (OSError, KeyError, ValueError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read camera intrinsics from {path}: {exc!r}") from None
    if not (np.allclose(k[2], [0, 0, 1]) and k[1, 0] == 0 and k[0, 0] > 0 and k[1, 1] > 0):
        raise ValueError(f"{path} holds no pinhole camera matrix [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] (read "
                         f"{k.tolist()}); an Open3D JSON lists intrinsic_matrix column-major")
    return torch.from_numpy(np.ascontiguousarray(k))


def read_pose(path: PathLike) -> Tensor:
    """A 4x4 camera-to-world pose (float64) from a text file (ScanNet ``pose/<frame>.txt``); must be finite."""
    try:
        pose = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read a pose from {path}: {exc!r}") from None
    if pose.shape != (4, 4) or not np.isfinite(pose).all():
        raise ValueError(f"{path} must hold a finite 4x4 camera-to-world matrix; got shape {pose.shape} "
                         f"(ScanNet marks frames without tracking with -inf: leave them out)")
    return torch.from_numpy(pose)


def read_trajectory_log(path: PathLike) -> Dict[int, Tensor]:
    """Open3D/Redwood ``.log`` poses: ``{frame id: 4x4 camera-to-world (float64)}`` in file order.

    Each entry is a metadata line whose first integer is the frame id, then 4 rows of 4 numbers.
    """
    path = Path(path)
    text = read_text(path, what="trajectory log")
    lines = [(n, line.split()) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if not lines or len(lines) % 5:
        raise ValueError(f"{path}: {len(lines)} non-empty lines; a trajectory log has 5 per frame "
                         "(a 'id id count' line and 4 matrix rows)")
    poses: Dict[int, Tensor] = {}
    for k in range(0, len(lines), 5):
        (n, meta), rows = lines[k], lines[k + 1:k + 5]
        try:
            frame = int(meta[0])
            matrix = np.array([[float(v) for v in r] for _, r in rows], dtype=np.float64)
        except (ValueError, IndexError):
            raise ValueError(f"{path} line {n}: malformed entry (expected 'id id count' then 4 rows of "
                             "4 numbers)") from None
        if matrix.shape != (4, 4) or not np.isfinite(matrix).all():
            raise ValueError(f"{path} line {n}: the pose of frame {frame} is not a finite 4x4 matrix")
        poses[frame] = torch.from_numpy(matrix)
    return poses


def _open_image(source: Union[PathLike, bytes]) -> Image.Image:
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
        img.load()
        return img


def decode_depth(source: Union[PathLike, bytes], depth_scale: float) -> Tensor:
    """Depth in metres ``(H, W)`` float32 from a single-channel integer PNG: ``value / depth_scale``, 0 = missing.

    ``depth_scale``: 1000 for millimetres (ScanNet, Redwood), 5000 for TUM RGB-D.
    """
    if depth_scale <= 0:
        raise ConfigError(f"depth_scale must be > 0 (1000 for millimetre PNGs, 5000 for TUM), got {depth_scale}")
    img = _open_image(source)
    if img.mode not in ("I;16", "I;16B", "I;16L", "I"):
        raise ValueError(f"depth image mode {img.mode!r}: expected a 16-bit single-channel PNG of "
                         "depth units (metres x depth_scale)")
    return torch.from_numpy(np.asarray(img).astype(np.float32) / np.float32(depth_scale))


def decode_color(source: Union[PathLike, bytes], size: Optional[Tuple[int, int]] = None) -> Tensor:
    """RGB ``(3, H, W)`` float32 in [0, 1]; resized (bilinear) to ``size = (H, W)`` if given and different."""
    img = _open_image(source).convert("RGB")
    if size is not None and img.size != (size[1], size[0]):
        img = img.resize((size[1], size[0]), Image.BILINEAR)
    return torch.from_numpy(np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0)


def decode_labels(source: Union[PathLike, bytes], size: Optional[Tuple[int, int]] = None) -> Tensor:
    """Per-pixel class indices ``(H, W)`` int64 with :data:`UNLABELED_PIXEL` mapped to :data:`IGNORE_INDEX`.

    Resized (nearest) to ``size = (H, W)`` if given and different.
    """
    img = _open_image(source)
    if img.mode not in ("L", "P", "I;16", "I;16B", "I;16L", "I"):
        raise ValueError(f"label image mode {img.mode!r}: expected a single-channel PNG of class indices")
    if size is not None and img.size != (size[1], size[0]):
        img = img.resize((size[1], size[0]), Image.NEAREST)
    labels = torch.from_numpy(np.asarray(img).astype(np.int64))
    return labels.masked_fill(labels == UNLABELED_PIXEL, IGNORE_INDEX)


__all__ = ["IGNORE_INDEX", "UNLABELED_PIXEL", "COLOR_EXTENSIONS", "read_intrinsics", "read_pose",
           "read_trajectory_log", "decode_depth", "decode_color", "decode_labels"]
