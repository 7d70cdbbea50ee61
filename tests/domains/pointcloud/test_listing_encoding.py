"""The text files of the point-cloud layouts (class and split lists, label CSVs, RGB-D trajectory logs and
intrinsics) are read strictly (core.text): UTF-16 and UTF-8-BOM files read right, a file that is not text is
named with the byte offset, and a CSV row that is not UTF-8 is a bad entry (listed under skip_bad)."""
from __future__ import annotations

import codecs
import shutil
from pathlib import Path

import pytest
import torch

from alignkit.core.registry import DATASETS
from alignkit.domains.pointcloud.layouts import ModelNet40ResampledReader, PointFolderReader
from alignkit.domains.pointcloud.rgbd.scenes import RGBDScene
from alignkit.domains.pointcloud.rgbd.synthetic import SYNTHETIC_CLASSES, write_synthetic_scenes

REPO = Path(__file__).resolve().parents[3]
SHARED = REPO.parent / "shared" / "data" / "pointcloud"
LIVINGROOM = SHARED / "rgbd" / "livingroom1"
XYZ = SHARED / "points" / "points_agisoft.xyz"
needs_shared = pytest.mark.skipif(not LIVINGROOM.is_dir() or not XYZ.is_file(), reason="shared samples not present")


@needs_shared
def test_point_folder_reads_a_utf16_csv_and_lists_an_undecodable_row(tmp_path: Path) -> None:
    for name in ("a.xyz", "b.xyz", "c.xyz"):
        shutil.copy(XYZ, tmp_path / name)
    rows = "path,label,split,text\na.xyz,Stuhl,train,ein großer Stuhl\nb.xyz,Tisch,train,\nc.xyz,Tisch,train,\n"
    (tmp_path / "labels.csv").write_bytes(rows.encode("utf-16"))
    reader = PointFolderReader(tmp_path, text_column="text")
    assert reader.class_keys == ["Stuhl", "Tisch"] and reader.records[0].description == "ein großer Stuhl"
    (tmp_path / "labels.csv").write_bytes(rows.replace("Stuhl,train", "St\xfchl,train").encode("latin-1"))
    with pytest.raises(ValueError, match=r"labels\.csv row 1 \(line 2\) is not UTF-8 text: byte \d+"):
        PointFolderReader(tmp_path)
    skipping = PointFolderReader(tmp_path, text_column="text", skip_bad=True)
    assert skipping.class_keys == ["Tisch"]  # the undecodable label is no class
    assert [r.id for r in skipping.records] == ["b.xyz", "c.xyz"]
    assert skipping.skipped[0][0] == f"{tmp_path / 'labels.csv'} row 1" and "b'\\xfc'" in skipping.skipped[0][1]


def test_modelnet_class_and_split_lists_in_utf16_or_binary(tmp_path: Path) -> None:
    (tmp_path / "modelnet10_shape_names.txt").write_bytes("chair\ntable\n".encode("utf-16"))
    (tmp_path / "modelnet10_train.txt").write_bytes(codecs.BOM_UTF8 + b"chair_0001\ntable_0001\n")
    for name in ("chair/chair_0001.txt", "table/table_0001.txt"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("0,0,0,0,0,1\n1,0,0,0,0,1\n")
    reader = ModelNet40ResampledReader(tmp_path, prefix="modelnet10")
    assert reader.class_keys == ["chair", "table"] and [r.id for r in reader.records] == ["chair_0001", "table_0001"]
    (tmp_path / "modelnet10_train.txt").write_bytes(b"chair_0001\x00\x00\x07\x00")
    with pytest.raises(ValueError, match=r"split file .*modelnet10_train\.txt is binary, not text: a NUL byte at "
                                         r"byte 10"):
        ModelNet40ResampledReader(tmp_path, prefix="modelnet10")


@needs_shared
def test_a_utf16_trajectory_log_and_bom_intrinsics_read_right(tmp_path: Path) -> None:
    scene = shutil.copytree(LIVINGROOM, tmp_path / "livingroom1")
    (scene / "trajectory.log").write_bytes((LIVINGROOM / "trajectory.log").read_text().encode("utf-16"))
    (scene / "camera_primesense.json").write_bytes(codecs.BOM_UTF8 + (LIVINGROOM / "camera_primesense.json")
                                                   .read_bytes())
    original, copy = RGBDScene(LIVINGROOM), RGBDScene(scene)
    torch.testing.assert_close(copy.intrinsics, original.intrinsics)
    torch.testing.assert_close(copy.pose(5), original.pose(5))
    (scene / "trajectory.log").write_bytes((LIVINGROOM / "color" / "00000.jpg").read_bytes())
    with pytest.raises(ValueError, match=r"trajectory log .*trajectory\.log is not UTF-8 text: byte 0"):
        RGBDScene(scene)


def test_rgbd_frames_read_utf16_lists_and_name_an_undecodable_split_file(tmp_path: Path) -> None:
    write_synthetic_scenes(tmp_path, num_scenes=2, frames_per_scene=1, image_size=(12, 16), seed=0,
                           split_fractions=(1, 0, 1))
    (tmp_path / "classes.txt").write_bytes("\n".join(SYNTHETIC_CLASSES).encode("utf-16"))
    train = (tmp_path / "train.txt").read_text()
    (tmp_path / "train.txt").write_bytes(train.encode("utf-16-le"))  # no byte order mark
    ds = DATASETS.build("rgbd-frames", root=str(tmp_path), split="train", num_points=16)
    assert ds.class_names == list(SYNTHETIC_CLASSES) and len(ds) == 1
    (tmp_path / "train.txt").write_bytes(b"sc\xe8ne_0000\n")
    with pytest.raises(ValueError, match=r"split file .*train\.txt is not UTF-8 text: byte 2"):
        DATASETS.build("rgbd-frames", root=str(tmp_path), split="train")
