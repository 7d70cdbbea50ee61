"""Truncation fuzzing: every file format alignkit reads, cut at several offsets, gives an error naming the file
or (when the cut only took bytes the reader does not need) exactly the data of the whole file: never other data.

Real files where they exist (pydicom's corpus, ../shared/data), otherwise files written by the tool that
writes them in the field (PyAV/FFmpeg, Open3D, h5py, NumPy, safetensors, pyarrow through the LeRobot writer).
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable, Dict

import numpy as np
import pytest
import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FRACTIONS = (0.0, 0.02, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99)


def cuts(size: int) -> list:
    """Offsets to cut a file of ``size`` bytes at: the fractions above plus the last byte and 16 bytes."""
    return sorted({int(size * f) for f in FRACTIONS} | {size - 1, max(0, size - 16)})


def as_arrays(value: Any) -> Dict[str, np.ndarray]:
    """What a reader returned, as named arrays to compare."""
    if isinstance(value, dict):
        return {k: np.asarray(v) for k, v in value.items()}
    if hasattr(value, "faces") and hasattr(value, "vertices"):  # trimesh
        return {"vertices": np.asarray(value.vertices), "faces": np.asarray(value.faces)}
    if hasattr(value, "xyz"):  # PointCloud
        return {"xyz": np.asarray(value.xyz)}
    if hasattr(value, "frames"):  # DecodedFrames / echo clips
        return {"frames": np.asarray(value.frames)}
    if isinstance(value, tuple):
        return {str(i): np.asarray(v) for i, v in enumerate(value) if isinstance(v, (np.ndarray, torch.Tensor))}
    return {"value": np.asarray(value)}


def assert_named_error_or_same(path: Path, read: Callable[[Path], Any], tmp_path: Path,
                               headerless: bool = False) -> None:
    """``headerless``: a text format with no count to check (XYZ): a cut just after a newline is a shorter
    valid file, so there the rows read must be the whole file's first rows (a cut inside a line is an error)."""
    data = path.read_bytes()
    target = tmp_path / path.name
    target.write_bytes(data)
    whole = as_arrays(read(target))
    for cut in cuts(len(data)):
        target.write_bytes(data[:cut])
        try:
            got = as_arrays(read(target))
        except ValueError as exc:  # FileNotFoundError is not expected: the file exists
            assert path.name in str(exc), f"cut at {cut}/{len(data)}: the error does not name the file: {exc}"
            continue
        if headerless and cut and data[cut - 1:cut] == b"\n":
            rows = len(got["xyz"])
            assert 0 < rows < len(whole["xyz"]) and np.array_equal(got["xyz"], whole["xyz"][:rows]), cut
            continue
        assert got.keys() == whole.keys() and all(np.array_equal(got[k], whole[k], equal_nan=True) for k in got), \
            f"{path.name} cut at {cut} of {len(data)} bytes came back as other data without an error"
        # only a cut of trailing bytes the data does not need (a delimiter, padding, an index) may read whole
        assert cut >= 0.98 * len(data), f"{path.name} cut at {cut} of {len(data)} bytes read as the whole file"


def pydicom_file(name: str) -> Path:
    from pydicom.data import get_testdata_file
    return Path(get_testdata_file(name))


def xray(path: Path) -> Any:
    from alignkit.domains.medical.xray.images import load_xray
    return load_xray(path)


def echo(path: Path) -> Any:
    from alignkit.domains.medical.echo.loading import load_echo
    return load_echo(path, modalities=None)


@pytest.mark.parametrize("name", ["CT_small.dcm", "JPEG2000.dcm", "MR_small_RLE.dcm", "SC_rgb_jpeg_dcmtk.dcm"])
def test_dicom_corpus_files(name: str, tmp_path: Path) -> None:
    assert_named_error_or_same(pydicom_file(name), xray, tmp_path)


@pytest.mark.parametrize("name", ["OBXXXX1A_rle.dcm", "examples_ybr_color.dcm"])
def test_echo_dicom_cines(name: str, tmp_path: Path) -> None:
    assert_named_error_or_same(SHARED / "medical" / "echo" / name, echo, tmp_path)


def test_real_chest_xray_png_and_a_jpeg_of_it(tmp_path: Path) -> None:
    from PIL import Image
    png = SHARED / "medical" / "cxr" / "00000001_000.png"
    assert_named_error_or_same(png, xray, tmp_path)
    jpg = tmp_path / "src" / "cxr.jpg"
    jpg.parent.mkdir()
    Image.open(png).convert("L").save(jpg, quality=90)
    assert_named_error_or_same(jpg, xray, tmp_path)


@pytest.mark.parametrize("suffix, codec", [(".mp4", "libx264"), (".avi", "ffv1"), (".mkv", "libx264rgb")])
def test_videos(suffix: str, codec: str, tmp_path: Path) -> None:
    from alignkit.core.video import read_frames, write_video
    frames = np.random.default_rng(0).integers(0, 255, (12, 32, 32, 3), dtype=np.uint8)
    frames = frames if codec != "ffv1" else frames[..., 0]
    path = write_video(tmp_path / "src" / f"clip{suffix}", frames, codec=codec)
    assert_named_error_or_same(path, read_frames, tmp_path)


@pytest.mark.parametrize("name", ["bunny.ply", "ballA.off", "fandisk.obj", "featuretype.STL", "featuretype.ply"])
def test_meshes(name: str, tmp_path: Path) -> None:
    from alignkit.domains.pointcloud.clouds import load_geometry
    assert_named_error_or_same(SHARED / "pointcloud" / "meshes" / name, load_geometry, tmp_path)


@pytest.mark.parametrize("name", ["points_agisoft.xyz", "bunnyData.pts"])
def test_text_point_files(name: str, tmp_path: Path) -> None:
    from alignkit.domains.pointcloud.clouds import load_geometry
    assert_named_error_or_same(SHARED / "pointcloud" / "points" / name, load_geometry, tmp_path,
                               headerless=name.endswith(".xyz"))


@pytest.mark.parametrize("ascii_", [True, False])
def test_pcd_written_by_open3d(ascii_: bool, tmp_path: Path) -> None:
    import open3d as o3d
    from alignkit.domains.pointcloud.clouds import load_geometry
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.random.default_rng(0).random((500, 3))))
    path = tmp_path / "src" / "cloud.pcd"
    path.parent.mkdir()
    assert o3d.io.write_point_cloud(str(path), cloud, write_ascii=ascii_)
    assert_named_error_or_same(path, load_geometry, tmp_path)


def test_scanobjectnn_h5(tmp_path: Path) -> None:
    import h5py
    from alignkit.domains.pointcloud.layouts import ScanObjectNNReader
    source = tmp_path / "src" / "main_split" / "training_objectdataset.h5"
    source.parent.mkdir(parents=True)
    with h5py.File(source, "w") as f:
        f["data"] = np.random.default_rng(0).random((20, 64, 3)).astype(np.float32)
        f["label"] = np.arange(20) % 15
    root = tmp_path / "root"

    def read(path: Path) -> Any:
        (root / "main_split").mkdir(parents=True, exist_ok=True)
        shutil.copy(path, root / "main_split" / path.name)
        reader = ScanObjectNNReader(root, suffix="objectdataset")
        return {"xyz": np.stack([reader.load(r).xyz for r in reader.records])} if hasattr(reader, "load") else \
            {"n": np.asarray(len(reader.records))}
    assert_named_error_or_same(source, read, tmp_path)


def test_npz_and_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import save_file
    from alignkit.core.checkpoints import load_npz, load_safetensors
    (tmp_path / "src").mkdir()
    npz = tmp_path / "src" / "arrays.npz"
    np.savez(npz, a=np.arange(1000.0), b=np.ones((10, 10), np.int32))
    assert_named_error_or_same(npz, load_npz, tmp_path)
    weights = tmp_path / "src" / "model.safetensors"
    save_file({"w": torch.randn(64, 64), "b": torch.zeros(64)}, str(weights))
    assert_named_error_or_same(weights, load_safetensors, tmp_path)


def test_lerobot_parquet_metadata(tmp_path: Path) -> None:
    from alignkit.domains.robotics.lerobot import LeRobotDataset
    from alignkit.domains.robotics.synthetic import write_synthetic_lerobot
    root = write_synthetic_lerobot(tmp_path / "ds", n=3, length=6, fps=10, codec="libx264rgb", image_size=16,
                                   state_dim=2, action_dim=2, tasks=2)
    for name in ("meta/episodes/chunk-000/file-000.parquet", "meta/tasks.parquet", "data/chunk-000/file-000.parquet"):
        path = root / name
        data = path.read_bytes()
        for cut in cuts(len(data)):
            path.write_bytes(data[:cut])
            try:
                dataset = LeRobotDataset(root)
            except ValueError as exc:
                assert name in str(exc) or path.name in str(exc), exc
                continue
            assert dataset.num_episodes == 3 and cut >= len(data) - 16, f"{name} cut at {cut} read without error"
        path.write_bytes(data)
