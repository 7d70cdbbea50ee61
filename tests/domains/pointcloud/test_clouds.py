"""Point and mesh files: every format, the shared real files, surface sampling and bad input."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import open3d as o3d
import pytest
import trimesh

from alignkit.domains.pointcloud.clouds import (PointFileError, load_geometry, load_mesh, load_point_cloud,
                                                read_point_file)
from alignkit.domains.pointcloud.preprocess import prepare_points

REPO = Path(__file__).resolve().parents[3]
SHARED = REPO.parent / "shared" / "data" / "pointcloud"
MESHES = SHARED / "meshes"
POINTS = SHARED / "points"


# ------------------------------------------------------------------------------- shared real files


@pytest.mark.parametrize("name, vertices, faces", [
    ("bunny.ply", 8171, 16301), ("fandisk.obj", 2877, 5750), ("featuretype.ply", 5096, 3476),
    ("ballA.off", 1900, 3796), ("ballB.off", 1900, 3796), ("cow/cow.obj", 3225, 5856)])
def test_shared_meshes_load_as_the_readme_says(name: str, vertices: int, faces: int) -> None:
    mesh = load_geometry(MESHES / name)
    assert isinstance(mesh, trimesh.Trimesh)
    assert mesh.vertices.shape == (vertices, 3) and mesh.faces.shape == (faces, 3)  # unprocessed: as stored
    cloud = load_point_cloud(MESHES / name, surface_points=2048, seed=0)
    assert cloud.xyz.shape == (2048, 3) and cloud.normals.shape == (2048, 3)
    np.testing.assert_allclose(np.linalg.norm(cloud.normals, axis=1), 1.0, atol=1e-4)
    lo, hi = mesh.bounds
    assert np.all(cloud.xyz >= lo - 1e-9) and np.all(cloud.xyz <= hi + 1e-9)
    prepared = prepare_points(cloud, 512, "normals")
    assert prepared.shape == (512, 6) and prepared.dtype == np.float32
    assert np.isclose(np.linalg.norm(prepared[:, :3], axis=1).max(), 1.0, atol=1e-6)


def test_shared_mesh_geometry_details() -> None:
    np.testing.assert_allclose(load_mesh(MESHES / "bunny.ply").extents, [0.156, 0.153, 0.121], atol=2e-3)
    ply, stl = load_mesh(MESHES / "featuretype.ply"), load_mesh(MESHES / "featuretype.STL")
    np.testing.assert_allclose(ply.bounds, [[-2.5, -1.25, 0.0], [2.5, 1.25, 1.375]], atol=1e-6)
    np.testing.assert_allclose(stl.bounds, ply.bounds, atol=1e-6)  # the same part in two formats
    assert len(stl.faces) == 3476
    a, b = load_mesh(MESHES / "ballA.off"), load_mesh(MESHES / "ballB.off")
    np.testing.assert_allclose(b.vertices, a.vertices + [8.0, 0.0, 0.0], atol=1e-4)  # B = A shifted +8 in x


def test_textured_cow_samples_colours_from_its_texture() -> None:
    mesh = load_mesh(MESHES / "cow" / "cow.obj")
    assert mesh.visual.kind == "texture"
    cloud = load_point_cloud(MESHES / "cow" / "cow.obj", surface_points=1024, colors=True)
    assert cloud.colors.shape == (1024, 3) and 0.0 <= cloud.colors.min() and cloud.colors.max() <= 1.0
    assert cloud.colors.std(axis=0).min() > 0.05  # black-and-white spots, not one flat colour
    with pytest.raises(PointFileError, match="has none"):
        load_point_cloud(MESHES / "bunny.ply", colors=True)


def test_shared_pts_with_count_header() -> None:
    cloud = read_point_file(POINTS / "bunnyData.pts")
    np.testing.assert_array_equal(cloud.xyz, np.loadtxt(POINTS / "bunnyData.pts", skiprows=1))
    assert len(cloud) == 30571 and cloud.normals is None and cloud.colors is None


def test_shared_georeferenced_xyz_keeps_float64_until_centred() -> None:
    path = POINTS / "points_agisoft.xyz"
    table = np.loadtxt(path)
    cloud = read_point_file(path)
    assert cloud.xyz.dtype == np.float64
    np.testing.assert_array_equal(cloud.xyz, table[:, :3])
    assert 6.6e5 < cloud.xyz[:, 0].min() and 5.6e6 < cloud.xyz[:, 1].min()
    np.testing.assert_allclose(cloud.colors * 255, table[:, 3:], atol=1e-3)
    assert round(float(cloud.colors.min() * 255)) == 11 and round(float(cloud.colors.max() * 255)) == 189
    # all 100 points, in file order ("random" without replacement of N from N is the identity)
    prepared = prepare_points(cloud, 100, "colors", sampling="random")
    centred = table[:, :3] - table[:, :3].mean(axis=0)
    reference = centred / np.linalg.norm(centred, axis=1).max()
    np.testing.assert_allclose(prepared[:, :3], reference, atol=1e-6)
    naive32 = table[:, :3].astype(np.float32)  # casting before centring loses centimetres at x ~ 6.6e5
    naive = (naive32 - naive32.mean(axis=0)) / np.linalg.norm(naive32 - naive32.mean(axis=0), axis=1).max()
    assert np.abs(naive - reference).max() > 1e-4
    np.testing.assert_allclose(prepared[:, 3:], table[:, 3:] / 255, atol=1e-6)


# ---------------------------------------------------------------------------------- generated files


@pytest.mark.parametrize("suffix", [".off", ".obj", ".stl", ".ply"])
def test_mesh_sampling_is_area_weighted_with_face_normals(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"box{suffix}"
    trimesh.creation.box(extents=(2.0, 1.0, 1.0)).export(path)
    cloud = load_point_cloud(path, surface_points=6000, seed=1)
    on_face = np.isclose(np.abs(cloud.xyz), [1.0, 0.5, 0.5], atol=1e-6)
    assert on_face.any(axis=1).all()  # every point on the surface
    axis = on_face.argmax(axis=1)
    # the normal of a point is its face's: along the axis it sits on, pointing outwards
    np.testing.assert_allclose(np.abs(cloud.normals[np.arange(6000), axis]), 1.0, atol=1e-6)
    assert np.all(np.sign(cloud.normals[np.arange(6000), axis]) == np.sign(cloud.xyz[np.arange(6000), axis]))
    # the two x faces hold 2 of the 10 unit areas of the surface
    assert abs(np.mean(axis == 0) - 0.2) < 0.03


def test_point_formats_roundtrip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    xyz = rng.normal(size=(50, 3))
    normals = xyz / np.linalg.norm(xyz, axis=1, keepdims=True)
    colors = rng.uniform(size=(50, 3))
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(xyz))
    cloud.normals, cloud.colors = o3d.utility.Vector3dVector(normals), o3d.utility.Vector3dVector(colors)
    for suffix in (".ply", ".pcd"):
        o3d.io.write_point_cloud(str(tmp_path / f"c{suffix}"), cloud)
        got = load_point_cloud(tmp_path / f"c{suffix}")
        np.testing.assert_allclose(got.xyz, xyz, atol=1e-5)
        np.testing.assert_allclose(got.normals, normals, atol=1e-5)
        np.testing.assert_allclose(got.colors, colors, atol=1e-2)
    np.savetxt(tmp_path / "n.txt", np.hstack([xyz, normals]), delimiter=",")  # ModelNet40 resampled rows
    got = read_point_file(tmp_path / "n.txt")
    np.testing.assert_allclose(got.normals, normals, atol=1e-6)
    assert got.colors is None
    np.savetxt(tmp_path / "c.xyz", np.hstack([xyz, np.round(colors * 255)]), fmt="%.6f")
    np.testing.assert_allclose(read_point_file(tmp_path / "c.xyz").colors, np.round(colors * 255) / 255, atol=1e-6)
    np.savetxt(tmp_path / "f.xyzrgb", np.hstack([xyz, colors]))
    np.testing.assert_allclose(read_point_file(tmp_path / "f.xyzrgb").colors, colors, atol=1e-6)
    np.savetxt(tmp_path / "f.xyzn", np.hstack([xyz, normals]))
    np.testing.assert_allclose(read_point_file(tmp_path / "f.xyzn").normals, normals, atol=1e-6)
    np.savetxt(tmp_path / "i.pts", np.hstack([xyz, np.ones((50, 1)), np.round(colors * 255)]), header="50",
               comments="")
    pts = read_point_file(tmp_path / "i.pts")  # x y z intensity r g b with a count line
    np.testing.assert_allclose(pts.xyz, xyz, atol=1e-6)
    np.testing.assert_allclose(pts.colors, np.round(colors * 255) / 255, atol=1e-6)
    np.save(tmp_path / "p.npy", xyz.astype(np.float32))
    np.testing.assert_allclose(read_point_file(tmp_path / "p.npy").xyz, xyz, atol=1e-6)


# --------------------------------------------------------------------------------------- bad input


def test_bad_files_raise_errors_naming_file_and_place(tmp_path: Path) -> None:
    (tmp_path / "noface.off").write_text("OFF\n3 0 0\n0 0 0\n1 0 0\n0 1 0\n")
    with pytest.raises(PointFileError, match=r"noface\.off.*no faces"):
        load_point_cloud(tmp_path / "noface.off")
    (tmp_path / "nan.off").write_text("OFF\n4 2 0\n0 0 0\n1 0 0\n0 1 0\nnan 0 1\n3 0 1 2\n3 0 1 3\n")
    with pytest.raises(PointFileError, match=r"nan\.off.*vertex 3"):
        load_point_cloud(tmp_path / "nan.off")  # trimesh's processing would silently drop it
    (tmp_path / "cut.off").write_text("OFF\n10 4 0\n0 0 0\n1 0 0\n")
    with pytest.raises(PointFileError, match=r"cut\.off: header declares 10 vertices, file holds 2"):
        load_point_cloud(tmp_path / "cut.off")
    (tmp_path / "empty.obj").write_bytes(b"")
    with pytest.raises(PointFileError, match=r"empty\.obj: empty file"):
        load_point_cloud(tmp_path / "empty.obj")
    (tmp_path / "inf.xyz").write_text("0 0 0\n1 1 1\n2 inf 2\n")
    with pytest.raises(PointFileError, match=r"inf\.xyz.*point 2 \(line 3\)"):
        read_point_file(tmp_path / "inf.xyz")
    (tmp_path / "nan.pts").write_text("3\n0 0 0\nnan 1 1\n2 2 2\n")
    with pytest.raises(PointFileError, match=r"nan\.pts.*point 1 \(line 3\)"):
        read_point_file(tmp_path / "nan.pts")
    (tmp_path / "short.pts").write_text("5\n0 0 0\n1 1 1\n")
    with pytest.raises(PointFileError, match="announces 5 points but the file holds 2"):
        read_point_file(tmp_path / "short.pts")
    (tmp_path / "odd.xyz").write_text("0 0 0 -5 3 9\n1 1 1 7 -2 4\n")
    with pytest.raises(PointFileError, match="normals .* or colours"):
        read_point_file(tmp_path / "odd.xyz")
    with pytest.raises(PointFileError, match="unsupported file type '.vtk'"):
        load_point_cloud(tmp_path / "mesh.vtk")
