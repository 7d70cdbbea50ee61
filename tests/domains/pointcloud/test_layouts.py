"""Dataset layouts: ModelNet40 (mesh and resampled), ShapeNet-55, ScanObjectNN, point folders; bad entries."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import trimesh

from alignkit.core.registry import ConfigError
from alignkit.domains.pointcloud.clouds import PointFileError
from alignkit.domains.pointcloud.layouts import (SHAPENET55_SYNSETS, ModelNet40MeshReader, ModelNet40ResampledReader,
                                                 PointFolderReader, ScanObjectNNReader, ShapeNet55Reader,
                                                 detect_modelnet40_layout)


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
