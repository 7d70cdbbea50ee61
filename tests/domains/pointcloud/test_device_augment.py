"""Point-cloud augmentation on the training batch's device: the same distributions as the worker-side MONAI
transforms, and the decoder's device mode leaves the points to it."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from scipy.stats import ks_2samp

from alignkit.core.registry import AUGMENTATIONS
from alignkit.domains.pointcloud.augment import PointCloudAugment, point_augmentation, rotation_about, rotations_about
from alignkit.domains.pointcloud.data import PointCloudDecoder

DRAWS = 1500


def _cloud(normals: bool) -> np.ndarray:
    rng = np.random.default_rng(0)
    xyz = rng.normal(size=(32, 3)).astype(np.float32) * 0.5
    if not normals:
        return xyz
    n = rng.normal(size=(32, 3)).astype(np.float32)
    return np.concatenate([xyz, n / np.linalg.norm(n, axis=1, keepdims=True)], 1)


def _summaries(points: np.ndarray) -> dict:
    """Per augmented cloud (D, N, 3+F): norm and up-axis angle of point 1, height of point 2, dropped fraction."""
    return {"norm": np.linalg.norm(points[:, 1, :3], axis=1), "angle": np.arctan2(points[:, 1, 1], points[:, 1, 0]),
            "height": points[:, 2, 2], "dropped": (np.abs(points[:, 1:, :3] - points[:, :1, :3]).sum(-1) < 0.2).mean(1),
            "normal_z": np.round(points[:, 3, 5], 4) if points.shape[-1] >= 6 else np.zeros(len(points))}


@pytest.mark.parametrize("normals,dropout", [(False, 0.0), (True, 0.5)])
def test_device_augmentation_has_the_worker_distributions(normals: bool, dropout: float) -> None:
    cloud = _cloud(normals)
    worker = point_augmentation("z", normals, (0.8, 1.25), True, 0.01, dropout)
    worker.set_random_state(0)
    cpu = np.stack([worker(cloud) for _ in range(DRAWS)])
    torch.manual_seed(0)
    device = PointCloudAugment(up_axis="z", normals=normals, dropout=dropout)(
        {"points": torch.from_numpy(cloud).expand(DRAWS, -1, -1).contiguous()})["points"].numpy()
    for name, (a, b) in {k: (v, _summaries(device)[k]) for k, v in _summaries(cpu).items()}.items():
        if np.ptp(a) == 0:
            assert np.allclose(a, b), name
        else:
            assert ks_2samp(a, b).pvalue > 1e-3, name


def test_batch_rotations_match_the_worker_rotation() -> None:
    angles = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)
    for axis in range(3):
        got = rotations_about(torch.full((3,), axis), angles)
        for k in range(3):
            assert np.allclose(got[k].numpy(), rotation_about("xyz"[axis], float(angles[k])))


def test_decoder_device_mode_leaves_points_and_gives_the_up_axis() -> None:
    cloud = _cloud(False)
    buf = io.BytesIO()
    np.save(buf, cloud)
    raw = {"npy": buf.getvalue(), "cls": "1", "json": json.dumps({"id": "a", "names": ["chair"], "where": "w",
                                                                   "up": "y", "features": "none"})}
    sample = PointCloudDecoder(split="train", point_augment="device", image_kinds=())(raw)
    assert np.array_equal(sample["points"].numpy(), cloud) and sample["up_axis"] == 1
    assert not np.array_equal(PointCloudDecoder(split="train", image_kinds=())(raw)["points"].numpy(), cloud)
    augment = AUGMENTATIONS.build("point-cloud", dropout=0.0)
    batch = {"points": sample["points"][None], "up_axis": torch.tensor([sample["up_axis"]])}
    out = augment(batch)["points"][0]
    assert torch.allclose(out[:, 1], torch.from_numpy(cloud[:, 1]) * (out[:, 1] / sample["points"][:, 1]).median(),
                          atol=0.06)  # y (the up axis) is only scaled and jittered
    with pytest.raises(KeyError, match="up_axis"):
        augment({"points": sample["points"][None]})
