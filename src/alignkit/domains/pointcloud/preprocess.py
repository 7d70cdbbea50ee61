"""Fixed-size model inputs from a :class:`~alignkit.domains.pointcloud.clouds.PointCloud`, and their disk cache.

:func:`prepare_points` centres a cloud in float64, samples ``N`` points (farthest point sampling,
:func:`~alignkit.domains.pointcloud.ops.fps_numpy`, or uniformly at random), scales them to the unit
sphere (:func:`normalize_unit_sphere`, ``pc_normalize`` of ULIP's and PointNet++'s data loaders, applied after
sampling as in ULIP's ``data/dataset_3d.py``) and appends the per-point :data:`FEATURES`.
:class:`SampledCloudCache` keeps its results on disk keyed by file, mtime and parameters.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Callable, Dict, Mapping, Optional, Tuple, Union

import numpy as np

from alignkit.core.registry import ConfigError, did_you_mean
from alignkit.domains.pointcloud.clouds import PointCloud, PointFileError, estimate_normals
from alignkit.domains.pointcloud.ops import fps_numpy

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]

FEATURES: Dict[str, Tuple[str, ...]] = {"none": (), "normals": ("normals",), "colors": ("colors",),
                                        "normals+colors": ("normals", "colors")}
"""Per-point feature sets of :func:`prepare_points`: columns after xyz (3 per entry, in this order)."""
SAMPLING_METHODS = ("fps", "random")
CACHE_VERSION = 1
"""Bumped when :func:`prepare_points` changes, so old cache entries are not reused."""


def normalize_unit_sphere(xyz: np.ndarray) -> np.ndarray:
    """``(x - c) / max_i ||x_i - c||`` with ``c`` the mean point, computed in float64; (N, 3) -> float32.

    A cloud of one repeated point maps to the origin.
    """
    xyz = np.asarray(xyz, dtype=np.float64)
    centred = xyz - xyz.mean(axis=0)
    radius = float(np.sqrt((centred ** 2).sum(axis=1)).max())
    return (centred / radius if radius > 0 else centred).astype(np.float32)


def sample_indices(xyz: np.ndarray, num_points: int, method: str = "fps", seed: int = 0) -> np.ndarray:
    """``num_points`` indices into ``xyz`` (N, 3).

    ``"fps"``: farthest point sampling (:func:`~alignkit.domains.pointcloud.ops.fps_numpy`);
    ``"random"``: uniform without replacement (seeded). A cloud with fewer than ``num_points``
    points keeps all of them, followed by seeded random repeats.
    """
    if method not in SAMPLING_METHODS:
        raise ConfigError(f"sampling must be one of {', '.join(SAMPLING_METHODS)}; got {method!r}"
                          f"{did_you_mean(method, SAMPLING_METHODS)}")
    if num_points < 1:
        raise ConfigError(f"num_points must be positive, got {num_points}")
    n = len(xyz)
    rng = np.random.default_rng(seed)
    if n < num_points:
        return np.concatenate([np.arange(n), rng.choice(n, num_points - n, replace=True)])
    if method == "random":
        return np.sort(rng.choice(n, num_points, replace=False))
    return fps_numpy(np.ascontiguousarray(xyz, dtype=np.float32), num_points, start=None)


def check_features(features: str) -> Tuple[str, ...]:
    """The feature names of ``features`` (a key of :data:`FEATURES`), or :class:`ConfigError`."""
    if features not in FEATURES:
        raise ConfigError(f"features must be one of {', '.join(FEATURES)}; got {features!r}"
                          f"{did_you_mean(str(features), FEATURES)}")
    return FEATURES[features]


def prepare_points(cloud: PointCloud, num_points: int, features: str = "none", sampling: str = "fps",
                   seed: int = 0) -> np.ndarray:
    """A fixed-size, normalised model input: float32 (num_points, 3 + 3 * len(FEATURES[features])).

    1. centre in float64 (``x - mean``), then float32 (keeps precision of georeferenced coordinates);
    2. :func:`sample_indices` (FPS by default);
    3. :func:`normalize_unit_sphere` of the sampled xyz;
    4. append the features: ``normals`` (estimated by
       :func:`~alignkit.domains.pointcloud.clouds.estimate_normals` when the file has none) and/or
       ``colors`` in [0, 1] (a :class:`~alignkit.domains.pointcloud.clouds.PointFileError` when the file has none).
    """
    names = check_features(features)
    centred = (cloud.xyz - cloud.xyz.mean(axis=0)).astype(np.float32)
    idx = sample_indices(centred, num_points, sampling, seed)
    columns = [normalize_unit_sphere(centred[idx])]
    for name in names:
        if name == "normals":
            normals = cloud.normals if cloud.normals is not None else estimate_normals(cloud.xyz)
            columns.append(normals[idx].astype(np.float32))
        else:
            if cloud.colors is None:
                raise PointFileError(f"{cloud.source}: features '{features}' need colours but the file has none; "
                                     "use features: none or normals")
            columns.append(cloud.colors[idx].astype(np.float32))
    return np.ascontiguousarray(np.concatenate(columns, axis=1))


def default_cache_dir() -> Path:
    """``$ALIGNKIT_CACHE/pointcloud``, by default ``~/.cache/alignkit/pointcloud``."""
    return Path(os.environ.get("ALIGNKIT_CACHE", Path.home() / ".cache" / "alignkit")) / "pointcloud"


class SampledCloudCache:
    """Prepared clouds on disk: ``<directory>/<key>.npy``, so an epoch does not resample meshes.

    ``key = sha1([CACHE_VERSION, resolved path, mtime_ns, size, row, params])``: editing or replacing the
    file, or changing any sampling parameter, gives a new key. Entries are written atomically (a
    temporary file renamed into place), so DataLoader workers may share the directory.
    """

    def __init__(self, directory: PathLike):
        self.directory = Path(directory)

    def key(self, source: PathLike, params: Mapping[str, object], row: Optional[int] = None) -> str:
        path = Path(source).resolve()
        stat = path.stat()
        blob = json.dumps([CACHE_VERSION, str(path), stat.st_mtime_ns, stat.st_size, row, dict(params)],
                          sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()

    def path(self, source: PathLike, params: Mapping[str, object], row: Optional[int] = None) -> Path:
        return self.directory / f"{self.key(source, params, row)}.npy"

    def fetch(self, source: PathLike, params: Mapping[str, object], compute: Callable[[], np.ndarray],
              row: Optional[int] = None) -> np.ndarray:
        """The cached array of ``(source, row, params)``, or ``compute()`` stored under that key."""
        target = self.path(source, params, row)
        if target.is_file():
            try:
                return np.load(target, allow_pickle=False)
            except (ValueError, OSError):
                logger.warning("point-cloud cache entry %s is unreadable; recomputing it", target)
        value = compute()
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f"{target.stem}.{os.getpid()}.tmp.npy")
        np.save(tmp, value)
        os.replace(tmp, target)
        return value
