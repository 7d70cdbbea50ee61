"""Point-cloud IO: every file format and dataset layout, bad input, preprocessing and the sample cache."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import open3d as o3d
import pytest
import trimesh

from alignkit.core.registry import ConfigError
from alignkit.domains.pointcloud.io import (SHAPENET55_SYNSETS, ModelNet40MeshReader, ModelNet40ResampledReader,
                                            PointCloud, PointFileError, PointFolderReader, SampledCloudCache,
                                            ScanObjectNNReader, ShapeNet55Reader, detect_modelnet40_layout,
                                            load_geometry, load_mesh, load_point_cloud, normalize_unit_sphere,
                                            prepare_points, read_point_file, sample_indices)

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
    with pytest.raises(PointFileError, match=r"cut\.off: cannot be read as a mesh"):
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


# ------------------------------------------------------------------------------------ preprocessing


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


# ------------------------------------------------------------------------------------------ layouts


def _write_cube(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    trimesh.creation.box().export(path)


def test_modelnet40_mesh_layout(tmp_path: Path) -> None:
    for rel in ("chair/train/chair_0001.off", "chair/train/chair_0002.off", "night_stand/train/night_stand_0001.off",
                "night_stand/test/night_stand_0002.off"):
        _write_cube(tmp_path / rel)
    (tmp_path / "README.txt").write_text("not a class")
    reader = ModelNet40MeshReader(tmp_path, "train")
    assert reader.class_keys == ["chair", "night_stand"] and reader.class_names == ["chair", "night stand"]
    assert [(r.id, r.label) for r in reader.records] == [("chair/train/chair_0001", 0), ("chair/train/chair_0002", 0),
                                                         ("night_stand/train/night_stand_0001", 1)]
    assert len(ModelNet40MeshReader(tmp_path, "test").records) == 1
    assert ModelNet40MeshReader(tmp_path, "val").records == []
    assert detect_modelnet40_layout(tmp_path) == "mesh"
    (tmp_path / "chair" / "train" / "chair_0003.off").write_bytes(b"")
    with pytest.raises(PointFileError, match=r"chair_0003\.off.*empty file"):
        ModelNet40MeshReader(tmp_path, "train")
    reader = ModelNet40MeshReader(tmp_path, "train", skip_bad=True)
    assert len(reader.records) == 3 and "chair_0003.off" in reader.skipped[0][0]


def test_modelnet40_resampled_layout_and_unknown_class(tmp_path: Path) -> None:
    (tmp_path / "modelnet40_shape_names.txt").write_text("airplane\nflower_pot\n")
    (tmp_path / "modelnet40_train.txt").write_text("flower_pot_0001\nairplane_0001\n\nspaceship_0001\n")
    rows = np.hstack([np.eye(3), np.eye(3)])
    for name in ("airplane/airplane_0001", "flower_pot/flower_pot_0001"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        np.savetxt(tmp_path / f"{name}.txt", rows, delimiter=",")
    assert detect_modelnet40_layout(tmp_path) == "resampled"
    with pytest.raises(PointFileError, match=r"modelnet40_train\.txt line 4: unknown class 'spaceship'"):
        ModelNet40ResampledReader(tmp_path, "train")
    reader = ModelNet40ResampledReader(tmp_path, "train", skip_bad=True)
    assert [(r.id, r.label) for r in reader.records] == [("flower_pot_0001", 1), ("airplane_0001", 0)]
    assert reader.skipped[0][0].endswith("modelnet40_train.txt line 4") and reader.up_axis == "y"
    assert reader.class_names == ["airplane", "flower pot"]
    np.testing.assert_allclose(reader.load(reader.records[0]).normals, np.eye(3))


def test_shapenet55_layout_with_taxonomy_synonyms(tmp_path: Path) -> None:
    (tmp_path / "ShapeNet-55").mkdir()
    (tmp_path / "shapenet_pc").mkdir()
    names = ["02691156-1a04e3eab45ca15dd86060f189eb133.npy", "03001627-ff9915c51ece4848cfc689934e433906.npy"]
    for name in names:
        np.save(tmp_path / "shapenet_pc" / name, np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32))
    (tmp_path / "ShapeNet-55" / "train.txt").write_text("\n".join(names) + "\n99999999-abc.npy\n")
    (tmp_path / "taxonomy.json").write_text(json.dumps([{"synsetId": "02691156", "name": "airplane,aeroplane,plane"}]))
    with pytest.raises(PointFileError, match=r"train\.txt line 3: unknown ShapeNet-55 synset '99999999'"):
        ShapeNet55Reader(tmp_path, "train")
    reader = ShapeNet55Reader(tmp_path, "train", skip_bad=True)
    keys = sorted(SHAPENET55_SYNSETS)
    assert len(keys) == 55 and reader.class_keys == keys
    assert [r.label for r in reader.records] == [keys.index("02691156"), keys.index("03001627")]
    assert reader.synonyms[keys.index("02691156")] == ("airplane", "aeroplane", "plane")
    assert reader.records[0].id == "02691156-1a04e3eab45ca15dd86060f189eb133"
    assert len(reader.load(reader.records[1])) == 64


def _write_h5(path: Path, data: np.ndarray, labels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f["data"], f["label"] = data, labels


def test_scanobjectnn_h5_rows_bad_labels_and_truncation(tmp_path: Path) -> None:
    data = np.random.default_rng(0).normal(size=(5, 32, 3)).astype(np.float32)
    path = tmp_path / "main_split" / "training_objectdataset_augmentedrot_scale75.h5"
    _write_h5(path, data, np.array([[0], [14], [3], [15], [4]]))
    with pytest.raises(PointFileError, match=r"training_objectdataset_augmentedrot_scale75\.h5 row 3: label 15"):
        ScanObjectNNReader(tmp_path, "train")
    reader = ScanObjectNNReader(tmp_path, "train", skip_bad=True)
    assert [(r.row, r.label) for r in reader.records] == [(0, 0), (1, 14), (2, 3), (4, 4)]
    assert reader.class_names[14] == "toilet" and len(reader.skipped) == 1
    np.testing.assert_array_equal(reader.load(reader.records[2]).xyz, data[2])
    assert ScanObjectNNReader(tmp_path, "test").records == []  # no test file: empty split
    truncated = tmp_path / "main_split" / "test_objectdataset_augmentedrot_scale75.h5"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(PointFileError, match=r"test_objectdataset_augmentedrot_scale75\.h5: cannot read"):
        ScanObjectNNReader(tmp_path, "test")


def test_point_folder_csv(tmp_path: Path) -> None:
    _write_cube(tmp_path / "a" / "x.obj")
    np.savetxt(tmp_path / "b.xyz", np.eye(3))
    (tmp_path / "labels.csv").write_text("path,label,split,note\na/x.obj,box,train,a red box\nb.xyz,tri,test,\n"
                                         "missing.ply,box,train,\n")
    with pytest.raises(PointFileError, match=r"labels\.csv row 3: .*missing\.ply: file not found"):
        PointFolderReader(tmp_path, "train", text_column="note")
    reader = PointFolderReader(tmp_path, "train", text_column="note", skip_bad=True)
    assert reader.class_keys == ["box", "tri"]  # over every split
    assert [(r.id, r.label, r.description) for r in reader.records] == [("a/x.obj", 0, "a red box")]
    with pytest.raises(PointFileError, match="row 2: unknown class 'tri'"):
        PointFolderReader(tmp_path, "test", class_names=["box"])
    with pytest.raises(ConfigError, match="no column 'lable'"):
        PointFolderReader(tmp_path, "train", label_column="lable")
