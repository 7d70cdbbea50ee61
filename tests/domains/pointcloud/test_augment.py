"""Point augmentations: scale, rotation about an axis, jitter, dropout (MONAI randomizable transforms)."""
from __future__ import annotations

import math

import numpy as np

from alignkit.domains.pointcloud.augment import (RandomJitterPoints, RandomPointDropout, RandomRotateUp,
                                                 RandomScalePoints, rotation_about)


def test_scale_matches_a_hand_computed_draw_and_keeps_normals_perpendicular() -> None:
    points = np.random.default_rng(0).normal(size=(20, 3)).astype(np.float32)
    scale = RandomScalePoints(0.5, 2.0)
    scale.set_random_state(seed=5)
    reference = np.random.RandomState(5)
    reference.rand()  # the prob draw of RandomizableTransform.randomize
    np.testing.assert_allclose(scale(points), points * reference.uniform(0.5, 2.0, 1), rtol=1e-6)
    # the plane z = x with normal (1, 0, -1)/sqrt2, scaled per axis: normals stay perpendicular to the plane
    t, u = np.meshgrid(np.linspace(-1, 1, 5), np.linspace(-1, 1, 5))
    plane = np.stack([t.ravel(), u.ravel(), t.ravel()], 1)
    normals = np.tile([1 / math.sqrt(2), 0, -1 / math.sqrt(2)], (len(plane), 1))
    aniso = RandomScalePoints(0.5, 2.0, anisotropic=True, normals=True)
    aniso.set_random_state(seed=1)
    out = aniso(np.hstack([plane, normals]).astype(np.float64))
    tangents = [out[1, :3] - out[0, :3], out[5, :3] - out[0, :3]]
    for tangent in tangents:
        np.testing.assert_allclose(out[:, 3:] @ tangent, 0.0, atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(out[:, 3:], axis=1), 1.0)


def test_rotations_about_each_axis_are_right_handed() -> None:
    e = np.eye(3)
    np.testing.assert_allclose(rotation_about("z", math.pi / 2) @ e[0], e[1], atol=1e-12)  # x -> y
    np.testing.assert_allclose(rotation_about("x", math.pi / 2) @ e[1], e[2], atol=1e-12)  # y -> z
    np.testing.assert_allclose(rotation_about("y", math.pi / 2) @ e[2], e[0], atol=1e-12)  # z -> x
    points = np.random.default_rng(1).normal(size=(30, 6))
    rotate = RandomRotateUp("y", normals=True)
    rotate.set_random_state(seed=0)
    out = rotate(points)
    np.testing.assert_allclose(out[:, 1], points[:, 1])  # the up coordinate is unchanged
    np.testing.assert_allclose(np.linalg.norm(out[:, :3], axis=1), np.linalg.norm(points[:, :3], axis=1))
    np.testing.assert_allclose(np.sum(out[:, :3] * out[:, 3:], 1), np.sum(points[:, :3] * points[:, 3:], 1))
    assert not np.allclose(out, points)


def test_jitter_and_dropout() -> None:
    points = np.random.default_rng(2).normal(size=(4000, 6))
    jitter = RandomJitterPoints(sigma=0.01, clip=0.02)
    jitter.set_random_state(seed=0)
    moved = jitter(points) - points
    assert np.abs(moved[:, :3]).max() <= 0.02 + 1e-12 and np.all(moved[:, 3:] == 0)
    assert 0.007 < moved[:, :3].std() < 0.01  # N(0, 0.01) clipped at 2 sigma
    dropout = RandomPointDropout(max_ratio=0.9)
    dropout.set_random_state(seed=3)
    out = dropout(points)
    dropped = ~np.all(out == points, axis=1)
    assert out.shape == points.shape and dropped.any() and dropped.mean() < 0.9
    np.testing.assert_array_equal(out[dropped], np.broadcast_to(points[0], out[dropped].shape))
    again = RandomPointDropout(max_ratio=0.9)
    again.set_random_state(seed=3)
    np.testing.assert_array_equal(again(points), out)  # seeded: reproducible
    off = RandomScalePoints(prob=0.0)
    np.testing.assert_array_equal(off(points), points)
