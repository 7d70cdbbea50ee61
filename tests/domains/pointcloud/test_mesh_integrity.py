"""Damaged mesh, point and weight files are named with what their header declares and what they hold (issue 20).

Each case builds its own broken file; the real samples in ``shared/data/pointcloud`` must still read.
"""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import open3d as o3d
import pytest
import trimesh

from alignkit.domains.pointcloud.clouds import PointFileError, load_geometry, load_point_cloud, read_point_file
from alignkit.domains.pointcloud.integrity import check_declared_counts, read_open3d_cloud
from alignkit.domains.pointcloud.layouts import ScanObjectNNReader

SHARED = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "pointcloud"
PLY_XYZ = ("ply\nformat {fmt} 1.0\nelement vertex {n}\nproperty float x\nproperty float y\nproperty float z\n"
           "end_header\n")


@pytest.mark.parametrize("name", ["bunny.ply", "featuretype.ply", "featuretype.STL", "fandisk.obj", "ballA.off",
                                  "cow/cow.obj"])
def test_shared_meshes_pass_their_header_checks(name: str) -> None:
    check_declared_counts(SHARED / "meshes" / name)
    assert len(load_point_cloud(SHARED / "meshes" / name, surface_points=64)) == 64


@pytest.mark.parametrize("fmt", ["ascii", "binary_little_endian"])
def test_ply_cloud_promising_more_vertices_than_it_holds(tmp_path: Path, fmt: str) -> None:
    """Open3D pads such a file with uninitialised points; the header check names both counts first."""
    path = tmp_path / f"short_{fmt}.ply"
    rows = np.arange(3000, dtype="<f4").reshape(1000, 3)
    body = "".join(f"{x} {y} {z}\n" for x, y, z in rows).encode() if fmt == "ascii" else rows.tobytes()
    path.write_bytes(PLY_XYZ.format(fmt=fmt, n=2048).encode() + body)
    for read in (read_point_file, load_geometry, load_point_cloud):
        with pytest.raises(PointFileError, match=rf"short_{fmt}\.ply: header declares 2048 vertices, file holds 1000"):
            read(path)


@pytest.mark.parametrize("encoding", ["ascii", "binary"])
def test_ply_mesh_cut_inside_its_faces(tmp_path: Path, encoding: str) -> None:
    path = tmp_path / "ico.ply"
    trimesh.creation.icosphere(subdivisions=2).export(path, encoding=encoding)  # 162 vertices, 320 faces
    data = path.read_bytes()
    path.write_bytes(data[:-40])
    with pytest.raises(PointFileError, match=r"ico\.ply: header declares 320 faces, file holds 31[0-9]"):
        load_point_cloud(path)
    path.write_bytes(data[:len(data) // 4])  # inside the vertices
    with pytest.raises(PointFileError, match=r"ico\.ply: header declares 162 vertices, file holds \d+"):
        load_geometry(path)


def test_ascii_ply_with_a_number_open3d_cannot_parse_is_open3ds_failure(tmp_path: Path) -> None:
    """The counts are right, so only Open3D's printed "Read PLY failed" tells: it becomes the error."""
    path = tmp_path / "word.ply"
    path.write_text(PLY_XYZ.format(fmt="ascii", n=3) + "0 0 0\n1 abc 1\n2 2 2\n")
    with pytest.raises(PointFileError, match=r"word\.ply: Open3D could not read the file: .*Read PLY failed"):
        read_point_file(path)
    good = tmp_path / "good.ply"
    good.write_text(PLY_XYZ.format(fmt="ascii", n=3) + "0 0 0\n1 1 1\n2 2 2\n")
    assert np.asarray(read_open3d_cloud(good).points).shape == (3, 3)


def test_truncated_off(tmp_path: Path) -> None:
    (tmp_path / "faces.off").write_text("OFF\n4 2 0\n0 0 0\n1 0 0\n0 1 0\n0 0 1\n3 0 1 2\n")
    with pytest.raises(PointFileError, match=r"faces\.off: header declares 2 faces, file holds 1"):
        load_point_cloud(tmp_path / "faces.off")  # trimesh alone returns the one face
    (tmp_path / "line.off").write_text("OFF\n4 2 0\n0 0 0\n1 0 0\n0 1 0\n0 0 1\n3 0 1 2\n3 0 1")
    with pytest.raises(PointFileError, match=r"line\.off: the last of the 2 faces \('3 0 1'\) is incomplete"):
        load_point_cloud(tmp_path / "line.off")
    (tmp_path / "modelnet.off").write_text("OFF4 2 0\n0 0 0\n1 0 0\n0 1 0\n0 0 1\n3 0 1 2\n3 0 1 3\n")
    assert len(load_geometry(tmp_path / "modelnet.off").faces) == 2  # ModelNet's counts on the OFF line


def test_truncated_binary_and_ascii_stl(tmp_path: Path) -> None:
    box = trimesh.creation.box()
    box.export(tmp_path / "box.stl")
    data = (tmp_path / "box.stl").read_bytes()
    assert len(data) == 84 + 50 * 12
    for cut in (84 + 50 * 5, 84 + 50 * 5 + 20, 100):
        (tmp_path / "cut.stl").write_bytes(data[:cut])  # trimesh reads these as an empty mesh
        with pytest.raises(PointFileError, match=rf"cut\.stl: binary STL header declares 12 facets .*684 bytes.*"
                                                 rf"file has {cut} bytes, {(cut - 84) // 50} complete facets"):
            load_point_cloud(tmp_path / "cut.stl")
    box.export(tmp_path / "text.stl", file_type="stl_ascii")
    lines = (tmp_path / "text.stl").read_text().splitlines()
    (tmp_path / "text.stl").write_text("\n".join(lines[:30]) + "\n")
    with pytest.raises(PointFileError, match=r"text\.stl: ASCII STL with 5 facets begun, 4 closed"):
        load_geometry(tmp_path / "text.stl")


def test_obj_face_referring_to_a_missing_vertex(tmp_path: Path) -> None:
    (tmp_path / "a.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\nf 1 2 7\n")
    with pytest.raises(PointFileError, match=r"a\.obj: line 5: face refers to vertex 7 but the file defines 3"):
        load_point_cloud(tmp_path / "a.obj")
    (tmp_path / "rel.obj").write_text("v 0 0 0\nv 1 0 0\nf -1 -2 -4\nv 0 1 0\n")
    with pytest.raises(PointFileError, match=r"rel\.obj: line 3: face refers to vertex -4 .* 2 vertices before it"):
        load_point_cloud(tmp_path / "rel.obj")


def pcd(points: int, rows: int, width: int = 0) -> str:
    header = (f"# .PCD v0.7\nVERSION 0.7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nCOUNT 1 1 1\nWIDTH {width or points}\n"
              f"HEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS {points}\nDATA ascii\n")
    return header + "".join(f"{i} {i} {i}\n" for i in range(rows))


def test_pcd_with_fewer_points_than_points(tmp_path: Path) -> None:
    (tmp_path / "few.pcd").write_text(pcd(1024, 10))  # Open3D returns 1024 points, 1014 of them garbage
    with pytest.raises(PointFileError, match=r"few\.pcd: PCD header declares POINTS 1024, file holds 10"):
        read_point_file(tmp_path / "few.pcd")
    (tmp_path / "wh.pcd").write_text(pcd(10, 10, width=12))
    with pytest.raises(PointFileError, match=r"wh\.pcd: PCD header WIDTH \* HEIGHT = 12 \* 1 = 12 but POINTS 10"):
        read_point_file(tmp_path / "wh.pcd")
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.random.default_rng(0).random((100, 3))))
    for compressed in (False, True):
        path = tmp_path / f"c{int(compressed)}.pcd"
        o3d.io.write_point_cloud(str(path), cloud, compressed=compressed)
        assert len(read_point_file(path)) == 100
        path.write_bytes(path.read_bytes()[:-100])
        with pytest.raises(PointFileError, match=rf"c{int(compressed)}\.pcd: .*declares .*file holds"):
            read_point_file(path)


def test_nan_points_and_empty_meshes_are_named_with_counts(tmp_path: Path) -> None:
    xyz = np.random.default_rng(0).random((1024, 3))
    xyz[[3, 500, 900]] = np.nan
    np.savetxt(tmp_path / "nan.xyz", xyz)
    with pytest.raises(PointFileError, match=r"nan\.xyz: 3 of 1024 points have a non-finite \(NaN/inf\) coordinate, "
                                             r"the first is point 3 \(line 4\)"):
        read_point_file(tmp_path / "nan.xyz")
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(xyz))
    o3d.io.write_point_cloud(str(tmp_path / "nan.pcd"), cloud)
    with pytest.raises(PointFileError, match=r"nan\.pcd: 3 of 1024 points .* the first is point 3"):
        read_point_file(tmp_path / "nan.pcd")
    (tmp_path / "vertices.off").write_text("OFF\n12 0 0\n" + "0 0 0\n" * 12)
    with pytest.raises(PointFileError, match=r"vertices\.off: mesh has no faces \(12 vertices, 0 faces\)"):
        load_point_cloud(tmp_path / "vertices.off")
    (tmp_path / "zero.off").write_text("OFF\n0 0 0\n")
    with pytest.raises(PointFileError, match=r"zero\.off: mesh has no faces \(0 vertices, 0 faces\)"):
        load_point_cloud(tmp_path / "zero.off")
    (tmp_path / "empty.pcd").write_text(pcd(0, 0))
    with pytest.raises(PointFileError, match=r"empty\.pcd: .*no points|empty\.pcd: Open3D could not read"):
        read_point_file(tmp_path / "empty.pcd")


def test_npy_cloud_with_object_array_is_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "objects.npy", np.array([[0.0, 1.0, 2.0], [1, 2, {"a": 1}]], dtype=object), allow_pickle=True)
    with pytest.raises(PointFileError, match=r"objects\.npy: the array holds Python objects .*refused"):
        read_point_file(tmp_path / "objects.npy")
    np.save(tmp_path / "cut.npy", np.ones((100, 3)))
    (tmp_path / "cut.npy").write_bytes((tmp_path / "cut.npy").read_bytes()[:500])
    with pytest.raises(PointFileError, match=r"cut\.npy: not a readable \.npy array"):
        read_point_file(tmp_path / "cut.npy")


def test_truncated_scanobjectnn_h5_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "main_split" / "training_objectdataset.h5"
    path.parent.mkdir()
    with h5py.File(path, "w") as f:
        f["data"] = np.random.default_rng(0).random((20, 64, 3)).astype(np.float32)
        f["label"] = np.arange(20) % 15
    assert len(ScanObjectNNReader(tmp_path, suffix="objectdataset").records) == 20
    data = path.read_bytes()
    for cut in (100, len(data) // 2, len(data) - 100):
        path.write_bytes(data[:cut])
        with pytest.raises(PointFileError, match=r"training_objectdataset\.h5: cannot read the \.h5 file.*truncated"):
            ScanObjectNNReader(tmp_path, suffix="objectdataset")


# ----------------------------------------------------------------------------------- pretrained weights


class ForeignState(dict):
    """A state dict whose class is not torch's: refused by the safe loader."""


def test_pretrained_weights_that_are_truncated_or_foreign_are_named(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from alignkit.domains.pointcloud.text4point import load_encoder_weights
    from alignkit.domains.pointcloud.ulip import read_state_dict

    state = {"towers.points.encoder.w": torch.ones(64)}
    save_file(state, str(tmp_path / "model.safetensors"))
    torch.save({"state_dict": state}, tmp_path / "last.ckpt")
    torch.save(ForeignState(state_dict=state), tmp_path / "foreign.ckpt")
    assert torch.equal(read_state_dict(str(tmp_path / "last.ckpt"))["towers.points.encoder.w"], torch.ones(64))
    for name in ("model.safetensors", "last.ckpt"):
        (tmp_path / f"cut_{name}").write_bytes((tmp_path / name).read_bytes()[:-20])
    encoder = torch.nn.Linear(2, 2)
    for name, found in [("cut_model.safetensors", "truncated safetensors file"),
                        ("cut_last.ckpt", "not a readable torch checkpoint"),
                        ("foreign.ckpt", "refused for safety: .*ForeignState")]:
        for load in (lambda p: read_state_dict(p), lambda p: load_encoder_weights(encoder, p, "towers.points.")):
            with pytest.raises(ValueError, match=rf"{name}: {found}") as err:
                load(str(tmp_path / name))
            assert "weights_only=False" not in str(err.value)
