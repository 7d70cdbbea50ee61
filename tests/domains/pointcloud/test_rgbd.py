"""RGB-D readers, back-projection, the synthetic scene generator and the rgbd-frames dataset."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.spatial import cKDTree

from alignkit.core.collate import collate_samples
from alignkit.core.registry import DATASETS, ConfigError
from alignkit.domains.pointcloud.rgbd.dataset import frame_to_cloud
from alignkit.domains.pointcloud.rgbd.files import (IGNORE_INDEX, decode_depth, decode_labels, read_intrinsics,
                                                    read_pose, read_trajectory_log)
from alignkit.domains.pointcloud.rgbd.geometry import backproject
from alignkit.domains.pointcloud.rgbd.scenes import DEPTH_SCALES, RGBDScene
from alignkit.domains.pointcloud.rgbd.synthetic import SYNTHETIC_CLASSES, write_synthetic_scenes

REPO = Path(__file__).resolve().parents[3]
SHARED = REPO.parent / "shared" / "data"
RGBD = SHARED / "pointcloud" / "rgbd"
LIVINGROOM = RGBD / "livingroom1"
TUM = RGBD / "tum"
needs_shared = pytest.mark.skipif(not RGBD.is_dir(), reason="shared RGB-D samples not present")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("rgbd_scenes")
    write_synthetic_scenes(root, num_scenes=3, frames_per_scene=2, image_size=(24, 32), seed=3,
                           split_fractions=(2, 0, 1))
    return root


# ------------------------------------------------------------------------------------------ back-projection


def test_backproject_matches_the_pinhole_formula_and_drops_invalid_depth():
    depth = torch.tensor([[1.0, 0.0, 2.0], [float("nan"), 4.0, 0.5]])
    k = torch.tensor([[2.0, 0.0, 1.0], [0.0, 4.0, 0.5], [0.0, 0.0, 1.0]])
    out = backproject(depth, k)
    assert out.pixels.tolist() == [[0, 0], [0, 2], [1, 1], [1, 2]]
    expected = [[(c - 1.0) * z / 2.0, (r - 0.5) * z / 4.0, z] for (r, c), z in
                zip([(0, 0), (0, 2), (1, 1), (1, 2)], [1.0, 2.0, 4.0, 0.5])]
    torch.testing.assert_close(out.points, torch.tensor(expected))
    assert len(backproject(depth, k, max_depth=1.5).points) == 2

    pose = torch.eye(4, dtype=torch.float64)
    pose[:3, :3] = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # 90 deg about z
    pose[:3, 3] = torch.tensor([10.0, 20.0, 30.0])
    world = backproject(depth, k, pose).points
    manual = torch.stack([-out.points[:, 1] + 10, out.points[:, 0] + 20, out.points[:, 2] + 30], dim=1)
    torch.testing.assert_close(world, manual)


def test_read_intrinsics_json_is_column_major_and_txt_3x3_or_4x4(tmp_path: Path):
    (tmp_path / "cam.json").write_text(json.dumps({"width": 4, "height": 3,
                                                   "intrinsic_matrix": [5, 0, 0, 0, 6, 0, 1.5, 1.0, 1]}))
    expected = torch.tensor([[5.0, 0, 1.5], [0, 6.0, 1.0], [0, 0, 1]], dtype=torch.float64)
    torch.testing.assert_close(read_intrinsics(tmp_path / "cam.json"), expected)
    np.savetxt(tmp_path / "k3.txt", expected.numpy())
    four = np.eye(4)
    four[:3, :3] = expected.numpy()
    np.savetxt(tmp_path / "k4.txt", four)
    for name in ("k3.txt", "k4.txt"):
        torch.testing.assert_close(read_intrinsics(tmp_path / name), expected)
    (tmp_path / "rowmajor.json").write_text(json.dumps({"intrinsic_matrix": [5, 0, 1.5, 0, 6, 1.0, 0, 0, 1]}))
    with pytest.raises(ValueError, match="rowmajor.json.*column-major"):
        read_intrinsics(tmp_path / "rowmajor.json")


def test_trajectory_log_and_pose_errors_name_the_file(tmp_path: Path):
    (tmp_path / "bad.log").write_text("0 0 1\n1 0 0 0\n0 1 0 0\n0 0 1 x\n0 0 0 1\n")
    with pytest.raises(ValueError, match=r"bad.log line 1"):
        read_trajectory_log(tmp_path / "bad.log")
    (tmp_path / "empty.log").write_text("\n")
    with pytest.raises(ValueError, match="empty.log: 0 non-empty lines"):
        read_trajectory_log(tmp_path / "empty.log")
    np.savetxt(tmp_path / "pose.txt", np.full((4, 4), -np.inf))
    with pytest.raises(ValueError, match="pose.txt must hold a finite 4x4"):
        read_pose(tmp_path / "pose.txt")


def test_decode_depth_needs_16_bit_and_a_positive_scale(tmp_path: Path):
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "d8.png")
    with pytest.raises(ValueError, match="16-bit"):
        decode_depth(tmp_path / "d8.png", 1000)
    Image.fromarray(np.array([[0, 1500]], np.uint16)).save(tmp_path / "d16.png")
    torch.testing.assert_close(decode_depth(tmp_path / "d16.png", 1000), torch.tensor([[0.0, 1.5]]))
    with pytest.raises(ConfigError, match="depth_scale"):
        decode_depth(tmp_path / "d16.png", 0)


# ------------------------------------------------------------------------------------------ real frames


@needs_shared
def test_livingroom_frames_load_with_millimetre_depth_and_primesense_intrinsics():
    scene = RGBDScene(LIVINGROOM, depth_scale=1000.0)
    assert len(scene) == 8 and scene.intrinsics_path.name == "camera_primesense.json"
    torch.testing.assert_close(scene.intrinsics, torch.tensor([[525.0, 0, 319.5], [0, 525.0, 239.5], [0, 0, 1]],
                                                              dtype=torch.float64))
    frame = scene[0]
    assert frame.color.shape == (3, 480, 640) and frame.depth.shape == (480, 640)
    assert 2.6 < float(frame.depth.max()) < 2.8  # "values up to about 2.7 m"
    assert frame.labels is None and frame.id == "livingroom1/00000"
    assert len(read_trajectory_log(LIVINGROOM / "trajectory.log")) == 211
    torch.testing.assert_close(scene.pose(0), torch.eye(4, dtype=torch.float64))


@needs_shared
def test_consecutive_livingroom_clouds_agree_after_their_poses():
    scene = RGBDScene(LIVINGROOM)
    frames = [scene[i] for i in range(8)]
    posed = [backproject(f.depth, f.intrinsics, f.pose).points.numpy() for f in frames]
    unposed = [backproject(f.depth, f.intrinsics).points.numpy() for f in frames]

    def median_nn(a: np.ndarray, b: np.ndarray) -> float:
        dist, _ = cKDTree(a).query(b[::20])
        return float(np.median(dist[dist < 0.1]))  # overlapping points

    for i in range(7):
        with_pose, without = median_nn(posed[i], posed[i + 1]), median_nn(unposed[i], unposed[i + 1])
        assert with_pose < 0.005, (i, with_pose)
        assert without > 2.5 * with_pose, (i, with_pose, without)
    assert median_nn(unposed[0], unposed[7]) > 10 * median_nn(posed[0], posed[7])


@needs_shared
def test_tum_pair_loads_with_depth_scale_5000():
    depth = decode_depth(TUM / "TUM_depth.png", 5000.0)
    assert depth.shape == (480, 640)
    assert float(depth.max()) == pytest.approx(46655 / 5000)
    assert float((depth == 0).float().mean()) == pytest.approx(0.19, abs=0.01)  # "about 19 % of pixels"
    cloud = backproject(depth, read_intrinsics(LIVINGROOM / "camera_primesense.json"))  # Open3D's PrimeSenseDefault
    assert len(cloud.points) == int((depth > 0).sum())
    assert 1.0 < float(cloud.points[:, 2].median()) < 4.0  # an office desk seen from a Kinect


# ------------------------------------------------------------------------------------------ synthetic scenes


def test_synthetic_scenes_layout_and_splits(scenes: Path):
    assert (scenes / "classes.txt").read_text().split() == list(SYNTHETIC_CLASSES)
    splits = {s: (scenes / f"{s}.txt").read_text().split() for s in ("train", "val", "test")}
    assert splits == {"train": ["scene_0000", "scene_0001"], "val": [], "test": ["scene_0002"]}
    scene = RGBDScene(scenes / "scene_0000")
    assert len(scene) == 2 and scene.intrinsics_path.name == "intrinsic_depth.txt"
    frame = scene[1]
    assert frame.color.shape == (3, 24, 32) and frame.labels.shape == (24, 32) and frame.pose is not None
    label_png = np.asarray(Image.open(scenes / "scene_0000" / "label" / "1.png"))
    assert set(np.unique(label_png)) <= set(range(len(SYNTHETIC_CLASSES))) | {255}
    assert ((frame.depth == 0) == (frame.labels == IGNORE_INDEX)).all()  # no hit: no depth and no label


def test_synthetic_geometry_is_consistent_with_intrinsics_and_poses(scenes: Path):
    """Floor pixels back-project onto z = 0 and wall pixels onto the wall planes, in world coordinates."""
    for name in ("scene_0000", "scene_0002"):
        scene = RGBDScene(scenes / name)
        for i in range(len(scene)):
            cloud = frame_to_cloud(scene[i], world_frame=True)
            xyz, seg = cloud.points[:, :3], cloud.seg
            floor = xyz[seg == SYNTHETIC_CLASSES.index("floor")]
            assert len(floor) > 20 and float(floor[:, 2].abs().max()) < 0.01  # depth stored in whole millimetres
            wall = xyz[seg == SYNTHETIC_CLASSES.index("wall")]
            on_plane = torch.minimum((wall[:, 0] + 3.0).abs(), (wall[:, 1] - 3.0).abs())
            assert float(on_plane.max()) < 0.01
            objects = seg >= 2
            assert float(xyz[objects, 2].min()) > -0.01 and float(xyz[objects, 2].max()) < 1.3


def test_write_synthetic_scenes_is_deterministic(tmp_path: Path, scenes: Path):
    write_synthetic_scenes(tmp_path, num_scenes=3, frames_per_scene=2, image_size=(24, 32), seed=3,
                           split_fractions=(2, 0, 1))
    for rel in ("scene_0001/depth/1.png", "scene_0002/label/0.png", "scene_0002/pose/1.txt"):
        assert (tmp_path / rel).read_bytes() == (scenes / rel).read_bytes()


# ------------------------------------------------------------------------------------------ dataset


def test_rgbd_frames_samples_keep_each_points_pixel(scenes: Path):
    ds = DATASETS.build("rgbd-frames", root=str(scenes), split="train", num_points=200)
    assert len(ds) == 4 and ds.class_names == list(SYNTHETIC_CLASSES)
    sample = ds[1]
    assert sample["points"].shape == (200, 6) and sample["pixels"].shape == (200, 2)
    assert sample["image"].shape == (3, 24, 32) and sample["seg"].shape == (200,)
    assert sample["id"] == "scene_0000/1" and sample["class_names"] == list(SYNTHETIC_CLASSES)
    rows, cols = sample["pixels"][:, 0], sample["pixels"][:, 1]
    torch.testing.assert_close(sample["points"][:, 3:], sample["image"][:, rows, cols].T)
    labels = decode_labels(scenes / "scene_0000" / "label" / "1.png")
    assert torch.equal(sample["seg"], labels[rows, cols])
    frame = RGBDScene(scenes / "scene_0000")[1]
    k = frame.intrinsics.float()
    z = frame.depth[rows, cols]
    torch.testing.assert_close(sample["points"][:, 0], (cols - k[0, 2]) * z / k[0, 0])
    torch.testing.assert_close(sample["points"][:, 1], (rows - k[1, 2]) * z / k[1, 1])


def test_rgbd_frames_sampling_seed_world_frame_centre_and_decoder(scenes: Path):
    fixed = DATASETS.build("rgbd-frames", root=str(scenes), split="test", num_points=100)
    assert torch.equal(fixed[0]["pixels"], fixed[0]["pixels"])
    fresh = DATASETS.build("rgbd-frames", root=str(scenes), split="test", num_points=100, seed=None)
    assert not torch.equal(fresh[0]["pixels"], fresh[0]["pixels"])
    decoder = DATASETS.get("rgbd-frames").decoder(num_points=100)  # from the raw record alone (shards)
    torch.testing.assert_close(decoder(fixed.raw(0))["points"], fixed[0]["points"])
    world = DATASETS.build("rgbd-frames", root=str(scenes), split="test", num_points=100, world_frame=True)[0]
    floor = world["points"][world["seg"] == 0]
    assert float(floor[:, 2].abs().max()) < 0.01
    centred = DATASETS.build("rgbd-frames", root=str(scenes), split="test", num_points=100, center=True)[0]
    torch.testing.assert_close(centred["points"][:, :3].mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    batch = collate_samples([fixed[0], fixed[1]])
    assert batch["points"].shape == (2, 100, 6) and batch["class_names"][1] == list(SYNTHETIC_CLASSES)


def test_rgbd_frames_bad_scene_is_named_or_skipped(tmp_path: Path, scenes: Path):
    root = tmp_path / "root"
    shutil.copytree(scenes, root)
    (root / "scene_0001" / "depth" / "0.png").unlink()
    with pytest.raises(ValueError, match=r"train.txt line 2 \(scene 'scene_0001'\).*no depth image"):
        DATASETS.build("rgbd-frames", root=str(root), split="train")
    ds = DATASETS.build("rgbd-frames", root=str(root), split="train", skip_bad=True)
    assert len(ds) == 2 and len(ds.skipped) == 1 and "scene_0001" in ds.skipped[0][0]
    with pytest.raises(FileNotFoundError, match="no split file .*other.txt"):
        DATASETS.build("rgbd-frames", root=str(root), split="other")


@needs_shared
def test_layouts_bring_their_documented_depth_scale(tmp_path: Path):
    """A TUM scene read with layout tum (depth_scale null) comes out in metres: a desk at 0.5-10 m, not 46 m."""
    scene = tmp_path / "root" / "fr1_desk"
    (scene / "color").mkdir(parents=True)
    (scene / "depth").mkdir()
    shutil.copy(TUM / "TUM_color.png", scene / "color" / "0.png")
    shutil.copy(TUM / "TUM_depth.png", scene / "depth" / "0.png")
    shutil.copy(LIVINGROOM / "camera_primesense.json", scene / "camera.json")  # Open3D's PrimeSenseDefault
    (tmp_path / "root" / "classes.txt").write_text("thing\n")
    (tmp_path / "root" / "test.txt").write_text("fr1_desk\n")
    tum = RGBDScene(scene, layout="tum")
    assert tum.depth_scale == DEPTH_SCALES["tum"] == 5000.0
    depth = tum[0].depth
    assert 0.5 < float(depth[depth > 0].median()) < 10.0 and float(depth.max()) < 10.0
    assert RGBDScene(scene).depth_scale == 1000.0  # default layout scannet: millimetres
    assert RGBDScene(scene, depth_scale=2500.0, layout="tum").depth_scale == 2500.0  # an explicit value overrides
    ds = DATASETS.build("rgbd-frames", root=str(tmp_path / "root"), split="test", layout="tum", depth_scale=None,
                        num_points=500)
    z = ds[0]["points"][:, 2]
    assert ds.depth_scale == 5000.0 and 0.5 < float(z.median()) < 10.0
    millimetres = DATASETS.build("rgbd-frames", root=str(tmp_path / "root"), split="test", num_points=500)
    assert float(millimetres[0]["points"][:, 2].median()) > 5.0  # the old 1000 default: a room metres too deep
    assert {k: DEPTH_SCALES[k] for k in ("scannet", "redwood", "7-scenes", "augmented-icl-nuim")} == dict.fromkeys(
        ("scannet", "redwood", "7-scenes", "augmented-icl-nuim"), 1000.0)
    with pytest.raises(ConfigError, match="layout"):
        DATASETS.build("rgbd-frames", root=str(tmp_path / "root"), split="test", layout="tumm")
    with pytest.raises(FileNotFoundError, match=r"intrinsics 'nope\.json' not found: looked for .*fr1_desk/nope"):
        RGBDScene(scene, intrinsics="nope.json")
