"""Preprocessing: point sampling, unit-sphere normalisation, prepared features and the sample cache."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from alignkit.core.registry import ConfigError
from alignkit.domains.pointcloud.clouds import PointCloud, PointFileError
from alignkit.domains.pointcloud.preprocess import (SampledCloudCache, normalize_unit_sphere, prepare_points,
                                                    sample_indices)


def test_fps_keeps_far_points_and_small_clouds_are_padded() -> None:
    rng = np.random.default_rng(0)
    corners = np.array([[x, y, z] for x in (-5, 5) for y in (-5, 5) for z in (-5, 5)], float)
    xyz = np.vstack([rng.normal(scale=0.01, size=(992, 3)), corners])
    idx = sample_indices(xyz, 9, "fps")
    assert set(range(992, 1000)) <= set(idx.tolist())  # all 8 far corners are among 9 FPS samples
    assert len(set(sample_indices(xyz, 9, "random", seed=0).tolist()) & set(range(992, 1000))) < 8
    small = sample_indices(xyz[:5], 8, "fps", seed=3)
    assert len(small) == 8 and set(small[:5].tolist()) == set(range(5)) and set(small.tolist()) <= set(range(5))
    with pytest.raises(ConfigError, match="sampling"):
        sample_indices(xyz, 4, "uniform")


def test_unit_sphere_normalisation_and_estimated_normals() -> None:
    rng = np.random.default_rng(1)
    direction = rng.normal(size=(2000, 3))
    sphere = 3.0 * direction / np.linalg.norm(direction, axis=1, keepdims=True) + [10.0, -4.0, 2.0]
    normalised = normalize_unit_sphere(sphere)
    assert np.isclose(np.linalg.norm(normalised, axis=1).max(), 1.0) and np.abs(normalised.mean(axis=0)).max() < 1e-6
    prepared = prepare_points(PointCloud(sphere, source="sphere"), 256, "normals")
    radial = prepared[:, :3] / np.linalg.norm(prepared[:, :3], axis=1, keepdims=True)
    assert np.mean(np.sum(prepared[:, 3:] * radial, axis=1) > 0.95) > 0.97  # PCA normals, oriented outwards
    with pytest.raises(PointFileError, match="need colours"):
        prepare_points(PointCloud(sphere, source="sphere"), 16, "colors")
    with pytest.raises(ConfigError, match="features"):
        prepare_points(PointCloud(sphere, source="sphere"), 16, "rgb")


def test_cache_reuses_entries_until_file_or_params_change(tmp_path: Path) -> None:
    source = tmp_path / "a.xyz"
    source.write_text("0 0 0\n1 1 1\n")
    cache = SampledCloudCache(tmp_path / "cache")
    calls = []

    def compute() -> np.ndarray:
        calls.append(1)
        return np.full((2, 3), float(len(calls)), np.float32)

    first = cache.fetch(source, {"num_points": 2}, compute)
    np.testing.assert_array_equal(cache.fetch(source, {"num_points": 2}, compute), first)
    assert len(calls) == 1 and len(list((tmp_path / "cache").glob("*.npy"))) == 1
    cache.fetch(source, {"num_points": 3}, compute)  # other parameters: another entry
    assert len(calls) == 2
    source.write_text("0 0 0\n2 2 2\n5 5 5\n")  # edited file: new mtime and size
    assert cache.fetch(source, {"num_points": 2}, compute)[0, 0] == 3.0 and len(calls) == 3
    assert cache.key(source, {"n": 1}, row=0) != cache.key(source, {"n": 1}, row=1)
