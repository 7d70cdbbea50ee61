"""The point-cloud decoder and the registered point datasets (incl. shards); ULIP's prompt templates."""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Dict

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from alignkit.core.datamodule import AlignmentDataModule
from alignkit.core.images import ImageTextDecoder
from alignkit.core.paired import build_decoder
from alignkit.core.registry import DATASETS, ConfigError
from alignkit.core.shards import ShardedIterableDataset, write_shards
from alignkit.domains.pointcloud import data as pc_data
from alignkit.domains.pointcloud.clouds import SUPPORTED_SUFFIXES, PointFileError
from alignkit.domains.pointcloud.data import PointCloudDecoder
from alignkit.domains.pointcloud.prompts import MODELNET40_64, SHAPENET_64, class_prompts, resolve_templates
from alignkit.domains.pointcloud.synthetic import write_synthetic_modelnet

REPO = Path(__file__).resolve().parents[3]
SHARED = REPO.parent / "shared" / "data" / "pointcloud"
CLASSES = ["chair", "mug", "bottle", "cup", "stool", "bench"]


@pytest.fixture(scope="module")
def modelnet_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("modelnet")
    write_synthetic_modelnet(root, per_class_train=3, per_class_test=2, seed=0, classes=CLASSES)
    return root


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("point_cache")


# ----------------------------------------------------------------------------------------- prompts


def test_ulip_prompt_templates() -> None:
    assert len(MODELNET40_64) == 64 and len(set(MODELNET40_64)) == 64 and SHAPENET_64 == MODELNET40_64
    assert MODELNET40_64[0] == "a point cloud model of {}." and all(t.count("{}") == 1 for t in MODELNET40_64)
    assert "a black and white photo of a {}" in MODELNET40_64  # ULIP's list as released, without the full stop
    assert resolve_templates("modelnet40_64") == MODELNET40_64
    prompts = class_prompts("night_stand")
    assert len(prompts) == 64 and prompts[0] == "a point cloud model of night stand."
    with pytest.raises(ConfigError, match="did you mean 'modelnet40_64'"):
        resolve_templates("modelnet_64")
    with pytest.raises(ConfigError, match="exactly one"):
        resolve_templates(["a {} and a {}"])


# ----------------------------------------------------------------------------------------- decoder


def _png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _raw_record() -> Dict[str, Any]:
    points = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)
    buffer = io.BytesIO()
    np.save(buffer, points)
    meta = {"id": "night_stand_0001", "names": ["night stand", "nightstand"], "description": "with two drawers",
            "where": "test", "up": "z", "features": "none"}
    return {"npy": buffer.getvalue(), "cls": 3, "json": json.dumps(meta),
            **{f"shaded{v:02d}.png": _png(40 * v) for v in range(4)}}


def test_decoder_eval_is_fixed_and_train_is_random() -> None:
    raw = _raw_record()
    points = np.load(io.BytesIO(raw["npy"]))
    fixed = PointCloudDecoder(split="test", image_size=8)
    sample = fixed(raw)
    assert sample["text"] == "a point cloud model of night stand. with two drawers"
    assert sample["label"] == 3 and sample["id"] == "night_stand_0001"
    np.testing.assert_array_equal(sample["points"].numpy(), points)
    expected_image = ImageTextDecoder(image_size=8, channels=3, mean=(0.5,), std=(0.5,)).image(raw["shaded00.png"])
    torch.testing.assert_close(sample["image"], expected_image)
    assert fixed(raw)["text"] == sample["text"]

    train = PointCloudDecoder(split="train", image_size=8, seed=1)
    samples = [train(raw) for _ in range(30)]
    texts = {s["text"] for s in samples}
    assert len(texts) > 10 and {t.split(" with two drawers")[0] for t in texts} <= {
        tpl.replace("{}", n) for tpl in MODELNET40_64 for n in ("night stand", "nightstand")}
    assert any("nightstand" in t for t in texts) and any("night stand" in t for t in texts)
    assert len({round(float(s["image"].mean()), 4) for s in samples}) == 4  # all four views get drawn
    assert all(not torch.equal(s["points"], sample["points"]) for s in samples)
    replay = PointCloudDecoder(split="train", image_size=8, seed=1)
    assert [replay(raw)["text"] for _ in range(30)] == [s["text"] for s in samples]


class _RawRepeat(Dataset):
    def __init__(self, decoder: PointCloudDecoder):
        self.decoder, self.raw = decoder, _raw_record()

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> Dict[str, Any]:
        return self.decoder(self.raw)


def test_decoder_reseeds_in_each_dataloader_worker() -> None:
    loader = DataLoader(_RawRepeat(PointCloudDecoder(split="train", seed=0)), batch_size=None, num_workers=2)
    first_of_each_worker = [s["points"] for s in loader][:2]  # items 0 and 1 come from workers 0 and 1
    assert not torch.equal(first_of_each_worker[0], first_of_each_worker[1])


# ---------------------------------------------------------------------------------------- datasets


def _modelnet(root: Path, cache: Path, **params: Any) -> pc_data.PointCloudDataset:
    params = {"num_points": 256, "surface_points": 2048, "cache_dir": str(cache), **params}
    return DATASETS.build("modelnet40", root=str(root), **params)


def test_modelnet40_samples_labels_and_captions(modelnet_root: Path, cache_dir: Path) -> None:
    ds = _modelnet(modelnet_root, cache_dir, split="test")
    assert ds.layout == "mesh" and ds.up_axis == "z" and ds.class_names == sorted(CLASSES) and len(ds) == 12
    for i in range(len(ds)):
        sample = ds[i]
        name = ds.class_names[sample["label"]]
        assert sample["id"].startswith(f"{name}/test/") and sample["text"] == f"a point cloud model of {name}."
        assert sample["points"].shape == (256, 3) and sample["points"].dtype == torch.float32
        assert abs(float(sample["points"].norm(dim=1).max()) - 1.0) < 1e-5
    train = _modelnet(modelnet_root, cache_dir, split="train", augment=True, features="normals")
    assert train[0]["points"].shape == (256, 6) and len(train) == 18


def test_cached_clouds_are_not_resampled(modelnet_root: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = _modelnet(modelnet_root, cache_dir, split="test")
    expected = [first[i]["points"] for i in range(len(first))]
    again = _modelnet(modelnet_root, cache_dir, split="test")

    def no_loading(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a cached cloud was loaded and sampled again")

    monkeypatch.setattr(again.reader, "load", no_loading)
    for i, points in enumerate(expected):
        torch.testing.assert_close(again[i]["points"], points)


def test_class_filter_relabels_in_the_given_order(modelnet_root: Path, cache_dir: Path) -> None:
    held_out = _modelnet(modelnet_root, cache_dir, split="test", classes=["cup", "stool", "bench"])
    assert held_out.class_names == ["cup", "stool", "bench"] and len(held_out) == 6
    assert [held_out[i]["label"] for i in range(6)] == [2, 2, 0, 0, 1, 1]  # records sorted by folder
    with pytest.raises(ConfigError, match="'chiar' is not a class.*did you mean 'chair'"):
        _modelnet(modelnet_root, cache_dir, split="test", classes=["chiar"])
    with pytest.raises(ConfigError, match="unknown parameter 'num_point'"):
        DATASETS.build("modelnet40", root=str(modelnet_root), num_point=5)


def test_views_are_rendered_once_and_fed_as_images(modelnet_root: Path, cache_dir: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    params = dict(split="test", with_images=True, num_views=3, image_size=32, image_kinds=["shaded", "depth"],
                  render_dir=str(tmp_path / "renders"), classes=["mug", "chair"])
    ds = _modelnet(modelnet_root, cache_dir, **params)
    raw = ds.raw(0)
    assert sorted(k for k in raw if k.endswith(".png")) == [f"{k}{v:02d}.png" for k in ("depth", "shaded")
                                                            for v in range(3)]
    sample = ds[0]
    assert sample["image"].shape == (3, 32, 32) and sample["image"].min() >= -1 and sample["image"].max() <= 1
    expected = ImageTextDecoder(image_size=32, channels=3).image(raw["shaded00.png"])  # eval: first kind, view 0
    torch.testing.assert_close(sample["image"], expected)
    again = _modelnet(modelnet_root, cache_dir, **params)
    monkeypatch.setattr(pc_data, "render_geometry", lambda *a, **k: pytest.fail("views were rendered twice"))
    assert again[0]["image"].shape == (3, 32, 32)


def _sphere_rows(n: int, seed: int) -> np.ndarray:
    direction = np.random.default_rng(seed).normal(size=(n, 3))
    unit = direction / np.linalg.norm(direction, axis=1, keepdims=True)
    return np.hstack([unit * 2.0 + 5.0, unit])


def test_resampled_layout_with_file_normals(tmp_path: Path) -> None:
    (tmp_path / "modelnet40_shape_names.txt").write_text("ball\n")
    (tmp_path / "modelnet40_test.txt").write_text("ball_0001\n")
    (tmp_path / "ball").mkdir()
    np.savetxt(tmp_path / "ball" / "ball_0001.txt", _sphere_rows(500, 0), delimiter=",", fmt="%.6f")
    ds = DATASETS.build("modelnet40", root=str(tmp_path), split="test", num_points=64, features="normals",
                        cache=False)
    assert ds.layout == "resampled" and ds.up_axis == "y"
    points = ds[0]["points"].numpy()
    radial = points[:, :3] / np.linalg.norm(points[:, :3], axis=1, keepdims=True)
    assert np.sum(radial * points[:, 3:], axis=1).min() > 0.99


def test_shapenet55_captions_use_synonyms(tmp_path: Path) -> None:
    (tmp_path / "ShapeNet-55").mkdir()
    (tmp_path / "shapenet_pc").mkdir()
    np.save(tmp_path / "shapenet_pc" / "02691156-abc.npy", _sphere_rows(300, 1)[:, :3].astype(np.float32))
    (tmp_path / "ShapeNet-55" / "train.txt").write_text("02691156-abc.npy\n")
    (tmp_path / "taxonomy.json").write_text(json.dumps([{"synsetId": "02691156", "name": "airplane,aeroplane"}]))
    ds = DATASETS.build("shapenet55", root=str(tmp_path), split="train", num_points=128, cache=False,
                        caption_templates=["{}"])
    assert ds.up_axis == "y" and len(ds.class_names) == 55
    assert {ds[0]["text"] for _ in range(30)} == {"airplane", "aeroplane"}


def test_scanobjectnn_dataset(tmp_path: Path) -> None:
    path = tmp_path / "main_split_nobg" / "test_objectdataset.h5"
    path.parent.mkdir()
    with h5py.File(path, "w") as f:
        f["data"] = np.random.default_rng(0).normal(size=(3, 100, 3)).astype(np.float32)
        f["label"] = np.array([2, 9, 14])
    ds = DATASETS.build("scanobjectnn", root=str(tmp_path), split="test", variant="main_split_nobg",
                        suffix="objectdataset", num_points=64, cache_dir=str(tmp_path / "cache"))
    assert [ds[i]["label"] for i in range(3)] == [2, 9, 14] and ds[2]["text"] == "a point cloud model of toilet."
    assert ds[1]["points"].shape == (64, 3) and ds[1]["id"] == "test_objectdataset/1"


def test_point_folder_over_every_shared_file(tmp_path: Path) -> None:
    files = sorted(p.relative_to(SHARED) for p in [*SHARED.glob("meshes/**/*"), *SHARED.glob("points/*")]
                   if p.suffix.lower() in SUPPORTED_SUFFIXES)
    rows = ["path,label,split,note"] + [f"{p},{'mesh' if p.parts[0] == 'meshes' else 'scan'},test,from {p.name}"
                                        for p in files]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    ds = DATASETS.build("point-folder", root=str(SHARED), csv=str(tmp_path / "labels.csv"), split="test",
                        text_column="note", num_points=256, surface_points=2048, with_images=True, num_views=2,
                        image_size=32, render_dir=str(tmp_path / "views"), cache_dir=str(tmp_path / "cache"))
    assert len(ds) == len(files) == 9 and ds.class_names == ["mesh", "scan"]
    for i, rel in enumerate(files):
        sample = ds[i]
        assert sample["points"].shape == (256, 3) and sample["image"].shape == (3, 32, 32)
        assert sample["id"] == str(rel) and sample["text"].endswith(f"from {rel.name}")
        assert torch.isfinite(sample["points"]).all()


def test_bad_items_are_listed_with_skip_bad_or_raise_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "good.xyz").write_text("0 0 0\n1 0 0\n0 1 0\n0 0 1\n")
    (tmp_path / "noface.off").write_text("OFF\n3 0 0\n0 0 0\n1 0 0\n0 1 0\n")
    (tmp_path / "nan.xyz").write_text("0 0 0\nnan 1 1\n")
    (tmp_path / "labels.csv").write_text("path,label\ngood.xyz,a\nnoface.off,a\nnan.xyz,b\n")
    params = dict(root=str(tmp_path), split_column=None, num_points=8, cache=False)
    lenient = DATASETS.build("point-folder", skip_bad=True, **params)
    assert len(lenient) == 1 and lenient[0]["points"].shape == (8, 3)
    assert [w for w, _ in lenient.skipped] == [f"{tmp_path / 'labels.csv'} row 2", f"{tmp_path / 'labels.csv'} row 3"]
    assert "no faces" in lenient.skipped[0][1] and "line 2" in lenient.skipped[1][1]
    strict = DATASETS.build("point-folder", **params)
    assert len(strict) == 3
    with pytest.raises(PointFileError, match=r"noface\.off: mesh has no faces"):
        strict[1]


def test_shards_decode_like_the_folder(modelnet_root: Path, cache_dir: Path, tmp_path: Path) -> None:
    params = dict(root=str(modelnet_root), augment=False, num_points=128, surface_points=1024,
                  cache_dir=str(cache_dir), with_images=True, num_views=2, image_size=16,
                  render_dir=str(tmp_path / "renders"), classes=["cup", "mug"])
    ds = DATASETS.build("modelnet40", split="train", **params)
    write_shards(ds, tmp_path / "shards", max_count=4, progress=False)
    decode = build_decoder(type(ds), ds.params)
    streamed = {s["id"]: s for s in ShardedIterableDataset(str(tmp_path / "shards" / "shard-{000000..000001}.tar"),
                                                           decode=decode, shuffle=0)}
    assert len(streamed) == len(ds) == 6
    for i in range(len(ds)):
        folder = ds[i]
        shard = streamed[folder["id"]]
        assert shard["text"] == folder["text"] and shard["label"] == folder["label"]
        torch.testing.assert_close(shard["points"], folder["points"])
        torch.testing.assert_close(shard["image"], folder["image"])


def test_datamodule_batches_point_clouds(modelnet_root: Path, cache_dir: Path) -> None:
    dm = AlignmentDataModule("modelnet40", params={"root": str(modelnet_root), "num_points": 64,
                                                   "surface_points": 512, "cache_dir": str(cache_dir)}, batch_size=4)
    batch = next(iter(dm.train_dataloader()))
    assert batch["points"].shape == (4, 64, 3) and batch["label"].shape == (4,) and len(batch["text"]) == 4
    assert dm.val_dataset is None  # ModelNet40 has no "val" split
    assert len(dm.test_dataset) == 12


@pytest.mark.parametrize("name", ["modelnet40", "shapenet55", "scanobjectnn", "point-folder"])
def test_every_dataset_accepts_exactly_the_shared_parameters(name: str) -> None:
    """The registry sees the shared parameters of every point dataset (no ``**kwargs`` hole): valid keys pass, a
    typo fails with the closest key, before anything is read."""
    shared = dict(pc_data.point_dataset_params())
    DATASETS.check_params(name, {"root": "r", "split": "test", **shared})
    with pytest.raises(ConfigError, match="did you mean 'num_points'"):
        DATASETS.check_params(name, {"root": "r", "num_point": 512})
    with pytest.raises(ConfigError, match="did you mean 'skip_bad'"):  # direct construction checks too
        DATASETS.get(name)("r", skip_badd=True)


def test_dataset_params_hold_the_filled_shared_defaults(modelnet_root: Path, cache_dir: Path) -> None:
    data = DATASETS.build("modelnet40", root=str(modelnet_root), split="test", num_points=64,
                          cache_dir=str(cache_dir))
    assert data.params["num_points"] == 64 and data.params["layout"] == "auto"
    assert {k: v for k, v in data.params.items() if k in pc_data.point_dataset_params()} == \
        pc_data.point_dataset_params(num_points=64, cache_dir=str(cache_dir))


def test_a_read_only_dataset_prepares_and_renders_without_writing_into_it(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "dataset"
    (root / "lists").mkdir(parents=True)
    for name in ("ballA.off", "featuretype.STL"):
        (root / name).write_bytes((SHARED / "meshes" / name).read_bytes())
    (root / "lists" / "labels.csv").write_text("path,label,split\nballA.off,ball,test\nfeaturetype.STL,part,test\n")
    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path / "user-cache"))  # the default cache_dir's parent
    monkeypatch.chdir(tmp_path)  # the current folder is not root: csv is found under root
    before = sorted((str(p.relative_to(root)), p.stat().st_mtime_ns) for p in root.rglob("*"))
    for folder in [root / "lists", root]:
        folder.chmod(0o555)
    try:
        ds = DATASETS.build("point-folder", root=str(root), csv="lists/labels.csv", split="test", num_points=64,
                            surface_points=512, with_images=True, num_views=2, image_size=16)
        assert len(ds) == 2
        for i in range(len(ds)):
            assert ds[i]["points"].shape == (64, 3) and ds[i]["image"].shape == (3, 16, 16)
        assert sorted((str(p.relative_to(root)), p.stat().st_mtime_ns) for p in root.rglob("*")) == before
        cache = tmp_path / "user-cache" / "pointcloud"
        assert len(list(cache.glob("*.npy"))) == 2 and len(list((cache / "views").glob("*/views.json"))) == 2
        with pytest.raises(ConfigError, match=r"csv 'lists/nope\.csv' not found: looked for "
                                              rf"{root}/lists/nope\.csv \(relative paths are resolved against root"):
            DATASETS.build("point-folder", root=str(root), csv="lists/nope.csv")
    finally:
        for folder in [root, root / "lists"]:
            folder.chmod(0o755)
