"""Multi-view ray-cast rendering of meshes and point clouds: cameras, depth, Lambert shading, splats, files."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import List, Tuple

import numpy as np
import pytest
import trimesh
from PIL import Image

from alignkit.core.registry import ConfigError
from alignkit.domains.pointcloud.clouds import SUPPORTED_SUFFIXES, PointCloud, load_geometry
from alignkit.domains.pointcloud.render import (camera_rays, decode_depth, default_views_dir, encode_depth,
                                                orbit_cameras, render_file, render_geometry, render_mesh,
                                                render_points)

REPO = Path(__file__).resolve().parents[3]
SHARED = REPO.parent / "shared" / "data" / "pointcloud"
SHARED_FILES = sorted(p for p in [*SHARED.glob("meshes/**/*"), *SHARED.glob("points/*")]
                      if p.suffix.lower() in SUPPORTED_SUFFIXES)


def test_orbit_cameras_circle_the_up_axis_and_see_the_unit_sphere() -> None:
    cameras = orbit_cameras(8, distance=3.0, elevation_deg=30.0, up_axis="y")
    eyes = np.array([c.eye for c in cameras])
    np.testing.assert_allclose(np.linalg.norm(eyes, axis=1), 3.0)
    np.testing.assert_allclose(eyes[:, 1], 3.0 * math.sin(math.radians(30)))  # height along y
    azimuths = np.arctan2(eyes[:, 0], eyes[:, 2])
    np.testing.assert_allclose(np.sort(np.mod(np.diff(np.unwrap(azimuths)), 2 * np.pi)), 2 * np.pi / 8, atol=1e-9)
    assert math.asin(1 / 3.0) < math.radians(cameras[0].fov_deg) / 2  # the sphere's silhouette fits
    with pytest.raises(ConfigError, match="distance"):
        orbit_cameras(4, distance=0.9)
    with pytest.raises(ConfigError, match="up_axis"):
        orbit_cameras(4, up_axis="w")


def test_rays_have_unit_forward_component_so_hits_are_planar_depth() -> None:
    camera = orbit_cameras(1, elevation_deg=10.0)[0]
    rays = camera_rays(camera, 65)
    forward = -np.asarray(camera.eye) / np.linalg.norm(camera.eye)
    np.testing.assert_allclose(rays[..., 3:] @ forward, 1.0, atol=1e-5)
    np.testing.assert_allclose(rays[32, 32, 3:], forward, atol=1e-6)  # centre pixel looks at the origin
    np.testing.assert_allclose(rays[..., :3], np.broadcast_to(camera.eye, (65, 65, 3)), atol=1e-6)


def test_sphere_depth_and_silhouette() -> None:
    views = render_mesh(trimesh.creation.icosphere(subdivisions=4), num_views=2, image_size=65, threads=1)
    assert abs(views.depth[0, 32, 32] - 1.5) < 0.01  # distance 2.5 minus radius 1
    half = math.tan(math.radians(views.cameras[0].fov_deg) / 2)
    expected = math.pi * (math.tan(math.asin(1 / 2.5)) / half) ** 2 / 4  # disc area / image area
    assert abs(views.mask.mean(axis=(1, 2)) - expected).max() < 0.03 * expected
    assert views.near == 1.5 and views.far == 3.5


@pytest.mark.parametrize("flip", [False, True])
def test_lambert_shading_of_a_plane_facing_the_camera(flip: bool) -> None:
    square = trimesh.Trimesh([[0, -1, -1], [0, 1, -1], [0, 1, 1], [0, -1, 1]], [[0, 1, 2], [0, 2, 3]], process=False)
    if flip:
        square.invert()  # two-sided: the back face shades like the front
    views = render_mesh(square, num_views=1, image_size=32, elevation_deg=0.0, ambient=0.3, threads=1)
    # camera on +x looking down -x, image up = z, right = y: light = (1, 0.3, 0.6) / |.|, normal = +x
    expected = 0.85 * (0.3 + 0.7 / math.sqrt(1 + 0.3 ** 2 + 0.6 ** 2))
    hit = views.mask[0]
    assert hit.mean() > 0.3
    np.testing.assert_allclose(views.shaded[0][hit], expected, atol=1e-5)
    np.testing.assert_allclose(views.shaded[0][~hit], 1.0)  # white background
    np.testing.assert_allclose(views.depth[0][hit], 2.5, atol=1e-5)  # planar depth, also at the edges


def test_vertex_colours_and_point_colours_tint_the_shading() -> None:
    box = trimesh.creation.box()
    box.visual.vertex_colors = np.tile([255, 0, 0, 255], (len(box.vertices), 1))
    shaded = render_mesh(box, num_views=1, image_size=32, threads=1)
    hit = shaded.mask[0]
    assert shaded.shaded[0][hit][:, 0].min() > 0.25 and shaded.shaded[0][hit][:, 1:].max() == 0.0
    points = trimesh.sample.sample_surface(trimesh.creation.icosphere(), 2000, seed=0)[0]
    cloud = PointCloud(points, colors=np.tile(np.float32([0, 0, 1]), (2000, 1)), source="blue")
    views = render_points(cloud, num_views=1, image_size=32, threads=1)
    hit = views.mask[0]
    assert views.shaded[0][hit][:, 2].min() > 0.25 and views.shaded[0][hit][:, :2].max() == 0.0


def test_point_splats_match_the_mesh_they_were_sampled_from() -> None:
    sphere = trimesh.creation.icosphere(subdivisions=4)
    mesh_views = render_mesh(sphere, num_views=3, image_size=64, threads=1)
    points = trimesh.sample.sample_surface(sphere, 4096, seed=0)[0]
    point_views = render_points(PointCloud(points, source="sphere"), num_views=3, image_size=64, threads=1)
    both = mesh_views.mask & point_views.mask
    iou = both.sum() / (mesh_views.mask | point_views.mask).sum()
    assert iou > 0.9
    assert np.median(np.abs(mesh_views.depth[both] - point_views.depth[both])) < 0.03
    # the estimated normals shade like the mesh: brightness agrees on common pixels
    assert np.median(np.abs(mesh_views.shaded[both] - point_views.shaded[both])) < 0.05


def test_depth_png_encoding_roundtrip() -> None:
    depth = np.array([[1.5, 2.0], [3.5, np.inf]], np.float32)
    encoded = encode_depth(depth, 1.5, 3.5)
    assert encoded.dtype == np.uint16 and encoded[0, 0] == 65535 and encoded[1, 0] == 1 and encoded[1, 1] == 0
    np.testing.assert_allclose(decode_depth(encoded, 1.5, 3.5)[np.isfinite(depth)], depth[np.isfinite(depth)],
                               atol=2.0 / 65534)
    assert np.isinf(decode_depth(encoded, 1.5, 3.5)[1, 1])


@pytest.mark.parametrize("path", SHARED_FILES, ids=lambda p: p.name)
def test_every_shared_file_renders_to_pngs(path: Path, tmp_path: Path) -> None:
    up = "y" if "bunny" in path.name or path.name == "cow.obj" else "z"
    written = render_file(path, tmp_path / "views", num_views=2, image_size=48, up_axis=up, threads=1)
    names = sorted(p.name for p in written)
    assert names == ["depth_00.png", "depth_01.png", "shaded_00.png", "shaded_01.png"]
    meta = json.loads((tmp_path / "views" / "views.json").read_text())
    assert len(meta["cameras"]) == 2 and meta["image_size"] == 48
    shaded = np.asarray(Image.open(tmp_path / "views" / "shaded_00.png"))
    depth_png = Image.open(tmp_path / "views" / "depth_00.png")
    assert shaded.shape == (48, 48, 3) and depth_png.mode.startswith("I")
    depth = decode_depth(np.asarray(depth_png), meta["near"], meta["far"])
    seen = np.isfinite(depth)
    assert seen.any() and (shaded[seen] < 255).any(axis=1).all()  # object pixels are shaded, not background
    assert np.all((depth[seen] >= meta["near"] - 1e-3) & (depth[seen] <= meta["far"] + 1e-3))


def _tree(folder: Path) -> List[Tuple[str, int]]:
    return sorted((str(p.relative_to(folder)), p.stat().st_mtime_ns) for p in folder.rglob("*"))


def test_views_never_go_beside_a_read_only_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    shutil.copy(SHARED / "meshes" / "ballA.off", dataset / "ballA.off")
    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path / "cache"))
    before = _tree(dataset)
    dataset.chmod(0o555)
    try:
        with pytest.raises(TypeError):
            render_file(dataset / "ballA.off", num_views=1)  # out_dir is required  # type: ignore[call-arg]
        default = default_views_dir(dataset / "ballA.off", 32)
        assert default.is_relative_to(tmp_path / "cache" / "pointcloud" / "views")
        written = render_file(dataset / "ballA.off", default, num_views=1, image_size=32, kinds=("shaded",),
                              threads=1)
        assert written == [default / "shaded_00.png"] and written[0].is_file()
        assert _tree(dataset) == before  # nothing new (and nothing touched) inside the dataset
        with pytest.raises(ConfigError, match="view kinds"):
            render_file(dataset / "ballA.off", tmp_path / "v", num_views=1, image_size=32, kinds=("normal",),
                        threads=1)
    finally:
        dataset.chmod(0o755)


def test_default_views_dir_changes_when_the_file_does(tmp_path: Path) -> None:
    path = tmp_path / "a.xyz"
    path.write_text("0 0 0\n1 0 0\n")
    first = default_views_dir(path, 32, tmp_path / "cache")
    assert first == default_views_dir(path, 32, tmp_path / "cache") and first.name.endswith("_a_views32")
    path.write_text("0 0 0\n1 0 0\n0 1 0\n")
    assert default_views_dir(path, 32, tmp_path / "cache") != first


def _silhouette_height_width(mask: np.ndarray) -> Tuple[int, int]:
    rows, cols = np.nonzero(mask)
    return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)


def test_a_y_up_mesh_renders_upright_with_up_axis_y(tmp_path: Path) -> None:
    tall = trimesh.creation.box(extents=(0.3, 1.0, 0.3))  # a pillar standing along y
    tall.export(tmp_path / "pillar.ply")
    views = render_geometry(load_geometry(tmp_path / "pillar.ply"), num_views=4, image_size=64, up_axis="y",
                            threads=1)
    for v in range(4):
        height, width = _silhouette_height_width(views.mask[v])
        assert height > 1.8 * width, (v, height, width)
    lying = render_geometry(load_geometry(tmp_path / "pillar.ply"), num_views=4, image_size=64, up_axis="z",
                            threads=1)  # the default z: the pillar lies on its side in some views
    assert any(np.subtract(*_silhouette_height_width(lying.mask[v])) < 0 for v in range(4))
    written = render_file(tmp_path / "pillar.ply", tmp_path / "views", num_views=1, image_size=64, up_axis="y",
                          kinds=("depth",), threads=1)
    height, width = _silhouette_height_width(np.asarray(Image.open(written[0])) > 0)
    assert height > 1.8 * width
