"""The procedural ModelNet40-layout generator: layout, determinism, normalisation, shape separability."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from alignkit.core.registry import ConfigError
from alignkit.domains.pointcloud.clouds import load_mesh, load_point_cloud
from alignkit.domains.pointcloud.layouts import ModelNet40MeshReader
from alignkit.domains.pointcloud.preprocess import normalize_unit_sphere
from alignkit.domains.pointcloud.synthetic import (ALL_CLASSES, HELD_OUT_RELATIVES, TRAIN_CLASSES, PartBuilder,
                                                   off_text, write_synthetic_modelnet)


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic_modelnet")
    write_synthetic_modelnet(root, per_class_train=8, per_class_test=4, seed=7)
    return root


def test_layout_counts_and_manifest(synthetic_root: Path) -> None:
    assert len(TRAIN_CLASSES) >= 12 and set(HELD_OUT_RELATIVES.values()) <= set(TRAIN_CLASSES)
    assert HELD_OUT_RELATIVES == {"cup": "mug", "stool": "chair", "bench": "table"}
    meta = json.loads((synthetic_root / "synthetic.json").read_text())
    assert meta["held_out"] == HELD_OUT_RELATIVES and meta["train_classes"] == list(TRAIN_CLASSES)
    for name in ALL_CLASSES:
        train = sorted((synthetic_root / name / "train").glob("*.off"))
        test = sorted((synthetic_root / name / "test").glob("*.off"))
        assert [p.name for p in train] == [f"{name}_{i:04d}.off" for i in range(1, 9)]
        assert [p.name for p in test] == [f"{name}_{i:04d}.off" for i in range(9, 13)]  # numbering continues
    reader = ModelNet40MeshReader(synthetic_root, "test")
    assert reader.class_keys == sorted(ALL_CLASSES) and len(reader.records) == 4 * len(ALL_CLASSES)


def test_meshes_are_valid_and_normalised_so_size_tells_nothing(synthetic_root: Path) -> None:
    for path in sorted(synthetic_root.glob("*/*/*.off")):
        mesh = load_mesh(path)  # faces, finite vertices, positive area
        norms = np.linalg.norm(mesh.vertices, axis=1)
        assert abs(norms.max() - 1.0) < 1e-4, path
        np.testing.assert_allclose(mesh.bounds.sum(axis=0), 0.0, atol=1e-4)  # bounding-box centre at the origin


def test_generation_is_deterministic_per_instance(synthetic_root: Path, tmp_path: Path) -> None:
    written = write_synthetic_modelnet(tmp_path / "again", per_class_train=8, per_class_test=4, seed=7,
                                       classes=["mug", "bench"])
    assert written.train_classes == ["mug"] and written.held_out == {"bench": "table"}
    assert written.counts == {"mug": {"train": 8, "test": 4}, "bench": {"train": 8, "test": 4}}
    for rel in ("mug/train/mug_0003.off", "bench/test/bench_0010.off"):
        assert (tmp_path / "again" / rel).read_text() == (synthetic_root / rel).read_text()  # other classes: no effect
    write_synthetic_modelnet(tmp_path / "other", per_class_train=1, per_class_test=0, seed=8, classes=["mug"])
    assert (tmp_path / "other" / "mug/train/mug_0001.off").read_text() != (synthetic_root / "mug/train/mug_0001.off"
                                                                              ).read_text()
    texts = [p.read_text() for p in sorted((synthetic_root / "cup").glob("*/*.off"))]
    assert len(set(texts)) == len(texts)  # every instance (train and test) has its own proportions


def _shape_descriptor(path: Path) -> np.ndarray:
    """D2 distance histogram + height and radial histograms of 2048 surface samples (a hand-made shape code)."""
    xyz = normalize_unit_sphere(load_point_cloud(path, surface_points=2048, seed=0).xyz)
    pairs = np.random.default_rng(0).integers(0, len(xyz), (4000, 2))
    d2 = np.histogram(np.linalg.norm(xyz[pairs[:, 0]] - xyz[pairs[:, 1]], axis=1), 16, (0, 2))[0] / 4000
    height = np.histogram(xyz[:, 2], 16, (-1, 1))[0] / len(xyz)
    radial = np.histogram(np.linalg.norm(xyz[:, :2], axis=1), 8, (0, 1))[0] / len(xyz)
    return np.concatenate([d2, height, radial])


def test_classes_are_told_apart_by_shape(synthetic_root: Path) -> None:
    centroids = np.stack([np.mean([_shape_descriptor(p) for p in sorted((synthetic_root / c / "train").glob("*.off"))],
                                  axis=0) for c in ALL_CLASSES])
    hits = [np.argmin(((centroids - _shape_descriptor(p)) ** 2).sum(axis=1)) == k
            for k, c in enumerate(ALL_CLASSES) for p in sorted((synthetic_root / c / "test").glob("*.off"))]
    assert np.mean(hits) >= 0.8  # nearest centroid on held-out instances; chance is 1/15


def test_part_builder_and_off_writer(tmp_path: Path) -> None:
    parts = PartBuilder(sections=8)
    parts.box((2.0, 1.0, 1.0), (0.0, 0.0, 0.5))
    parts.cylinder(0.5, 1.0, (3.0, 0.0, 0.0), axis="x")
    vertices, faces = parts.mesh()
    assert len(vertices) == 8 + 4 * 8 and len(faces) == 12 + 3 * 2 * 8 and faces.max() == len(vertices) - 1
    (tmp_path / "m.off").write_text(off_text(vertices, faces))
    mesh = load_mesh(tmp_path / "m.off")
    np.testing.assert_allclose(mesh.vertices, vertices, atol=1e-5)
    cylinder = mesh.vertices[8:]
    assert cylinder[:, 0].min() == pytest.approx(2.5) and cylinder[:, 0].max() == pytest.approx(3.5)
    assert np.linalg.norm(cylinder[:, 1:], axis=1).max() == pytest.approx(0.5)  # axis along x


def test_unknown_class_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown synthetic class 'mugg'.*did you mean 'mug'"):
        write_synthetic_modelnet(tmp_path, 1, 1, classes=["mugg"])
