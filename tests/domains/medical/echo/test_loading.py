"""Loading echo videos (echo.loading, echo.dicom, echo.sector): PyAV videos, DICOM cines, sector masks and the
MONAI loaders, on files the tests write and on every real sample in ../shared/data/medical/echo/."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

pydicom = pytest.importorskip("pydicom")
av = pytest.importorskip("av")
from monai.data import MetaTensor  # noqa: E402
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.pixels import apply_color_lut, convert_color_space, pixel_array  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid  # noqa: E402

from alignkit.core.registry import ConfigError  # noqa: E402
from alignkit.core.video import write_video  # noqa: E402
from alignkit.domains.medical.echo.dicom import ultrasound_region  # noqa: E402
from alignkit.domains.medical.echo.loading import (EchoVideoReader, LoadEcho, LoadEchod, load_echo,  # noqa: E402
                                                   probe_echo)
from alignkit.domains.medical.echo.sector import sector_mask  # noqa: E402

REPO = Path(__file__).resolve().parents[4]
ECHO = REPO.parent / "shared" / "data" / "medical" / "echo"
CINE = ECHO / "color3d_jpeg_baseline.dcm"

# What each real file decodes to (the README's table): frames, rows, columns, frames per second.
REAL_FILES = {
    "color3d_jpeg_baseline.dcm": (120, 480, 640, 30.0),
    "examples_ybr_color.dcm": (30, 240, 320, 30.0),
    "examples_ybr_color_rle.dcm": (30, 240, 320, 30.0),
    "US1_UNCR.dcm": (1, 480, 640, math.nan),
    "OBXXXX1A_rle.dcm": (1, 600, 800, math.nan),
}
# (row, column) of burnt-in overlays and of the scan cone in the 640 x 480 cine (halved for the 320 x 240 copies).
CINE_OUTSIDE = {"green dot": (40, 380), "PLA": (14, 30), "Crd": (36, 610), "MI": (132, 620), "toolbar": (467, 300),
                "depth 19": (405, 583)}
CINE_INSIDE = {"centre": (250, 330), "left wing": (290, 100), "right wing": (290, 580), "apex": (50, 340)}

needs_samples = pytest.mark.skipif(not ECHO.is_dir(), reason="../shared/data/medical/echo not present")


# ------------------------------------------------------------------------------------------- helpers


def every_other(total: int, fps: float) -> np.ndarray:
    return np.arange(0, total, 2)


def write_dicom(path: Path, pixels: np.ndarray, photometric: str, bits_stored: int = 8, **attributes: object) -> Path:
    """An ultrasound image: one frame (H, W[, 3]) or a cine (N, H, W[, 3]), Explicit VR Little Endian."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.3.1"  # Ultrasound Multi-frame Image Storage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "US"
    ds.set_pixel_data(pixels, photometric, bits_stored)
    for key, value in attributes.items():
        setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def beating_frames(frames: int = 12, size: int = 40, text: bool = True) -> np.ndarray:
    """uint8 (T, S, S, 3): a speckled disc of radius 12 at the centre (changes every frame) on black, and a static
    white 'text' block in the top-left corner."""
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:size, 0:size]
    disc = (ys - size / 2) ** 2 + (xs - size / 2) ** 2 <= 12 ** 2
    grey = (rng.integers(20, 200, size=(frames, size, size)) * disc).astype(np.uint8)
    if text:
        grey[:, 1:5, 1:9] = 255
    return np.repeat(grey[..., None], 3, axis=-1)


def ramp_video(frames: int = 20, size: int = 16) -> np.ndarray:
    """Grey uint8 (T, S, S): frame k holds the value 10 k everywhere (a lossless codec gives it back exactly)."""
    return np.stack([np.full((size, size), 10 * k, dtype=np.uint8) for k in range(frames)])


# ------------------------------------------------------------------------------------------- real data


@needs_samples
def test_every_real_sample_is_covered():
    assert sorted(p.name for p in ECHO.glob("*.dcm")) == sorted(REAL_FILES)


@needs_samples
@pytest.mark.parametrize("name", sorted(REAL_FILES))
def test_real_dicom_frames_size_rgb_and_rate(name: str):
    frames, rows, cols, fps = REAL_FILES[name]
    path = ECHO / name
    info = probe_echo(path)
    assert (info.frames, info.height, info.width) == (frames, rows, cols)
    assert math.isclose(info.fps, fps, rel_tol=1e-3) or (math.isnan(fps) and math.isnan(info.fps))
    select = (lambda total, rate: np.array([0, total - 1])) if frames > 1 else None
    video = load_echo(path, select=select, mask_sector="none")
    assert video.frames.dtype == np.uint8 and video.frames.shape[1:] == (rows, cols, 3)
    assert video.total_frames == frames and video.sector is None
    reference = pydicom.dcmread(path)
    expected = np.stack([pixel_array(reference, index=k) for k in ([0, frames - 1] if frames > 1 else [0])])
    if reference.PhotometricInterpretation == "PALETTE COLOR":  # 16-bit palette entries -> 8 bits
        expected = np.round(apply_color_lut(expected, reference) / 257.0).astype(np.uint8)
    assert np.array_equal(video.frames, expected)


@needs_samples
def test_jpeg_cine_and_its_rle_twin_decode_identically():
    jpeg = load_echo(ECHO / "examples_ybr_color.dcm")
    rle = load_echo(ECHO / "examples_ybr_color_rle.dcm")
    assert np.array_equal(jpeg.frames, rle.frames) and np.array_equal(jpeg.sector, rle.sector)
    raw = load_echo(ECHO / "examples_ybr_color_rle.dcm", mask_sector="none")
    assert int(raw.frames.max()) == 220 and int(rle.frames.max()) < 220  # README: 0-220; the brightest is overlay
    picked = load_echo(ECHO / "examples_ybr_color_rle.dcm", select=lambda t, f: np.array([5, 2, 2]),
                       mask_sector="none")
    assert np.array_equal(picked.frames, pydicom.dcmread(ECHO / "examples_ybr_color_rle.dcm").pixel_array[[5, 2, 2]])
    assert picked.indices.tolist() == [5, 2, 2]


@needs_samples
@pytest.mark.parametrize("name, scale", [("color3d_jpeg_baseline.dcm", 1), ("examples_ybr_color.dcm", 2)])
def test_cine_sector_mask_removes_overlays_and_keeps_the_cone(name: str, scale: int):
    video = load_echo(ECHO / name, select=lambda total, fps: np.arange(0, total, total // 30))
    mask = video.sector
    for what, (y, x) in CINE_OUTSIDE.items():
        assert not mask[y // scale, x // scale], what
        assert not video.frames[:, y // scale, x // scale].any(), what
    for what, (y, x) in CINE_INSIDE.items():
        assert mask[y // scale, x // scale], what
    assert 0.3 < mask.mean() < 0.45
    raw = load_echo(ECHO / name, select=lambda total, fps: np.arange(0, total, total // 30), mask_sector="none")
    assert np.array_equal(video.frames[:, mask], raw.frames[:, mask])  # inside the cone nothing changes


@needs_samples
def test_ultrasound_regions_are_used_when_they_fit_the_frame():
    full = pydicom.dcmread(CINE, stop_before_pixels=True)
    region = ultrasound_region(full, 480, 640)
    ys, xs = np.nonzero(region)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (84, 595, 31, 414)
    assert load_echo(CINE, select=lambda t, f: np.arange(0, t, 4)).sector[~region].sum() == 0
    stale = pydicom.dcmread(ECHO / "examples_ybr_color.dcm", stop_before_pixels=True)
    assert ultrasound_region(stale, 240, 320) is None  # the 640x480 geometry does not fit 320x240


@needs_samples
def test_single_frame_masks_use_the_signal_region():
    us1 = load_echo(ECHO / "US1_UNCR.dcm", mask_sector="all")
    assert not us1.sector[20, 60] and not us1.sector[470, 500]  # header text, bottom text
    assert us1.sector[220, 320] and us1.sector[120, 100]  # the tissue rectangle
    ob = load_echo(ECHO / "OBXXXX1A_rle.dcm")
    region = ultrasound_region(pydicom.dcmread(ECHO / "OBXXXX1A_rle.dcm", stop_before_pixels=True), 600, 800)
    assert region is not None and not ob.sector[~region].any()  # within the 2D region
    assert ob.sector[100, 460] and not ob.sector[20, 40] and not ob.sector[150, 30]  # cone; PHILIPS; left text
    assert ob.frames[0, 100, 460].any() and not ob.frames[0, 20, 40].any()


# ------------------------------------------------------------------------------------------- DICOM files


def test_dicom_colour_models_become_rgb(tmp_path: Path):
    rgb = beating_frames(frames=4, size=16, text=False)
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    back = load_echo(write_dicom(tmp_path / "ybr.dcm", ybr, "YBR_FULL", NumberOfFrames=4), mask_sector="none")
    assert back.frames.shape == (4, 16, 16, 3)
    assert np.abs(back.frames.astype(int) - rgb.astype(int)).max() <= 2  # YBR round trip rounding
    grey = rgb[..., 0]
    mono = load_echo(write_dicom(tmp_path / "mono.dcm", grey, "MONOCHROME2"), mask_sector="none")
    assert np.array_equal(mono.frames, np.repeat(grey[..., None], 3, axis=-1))
    inverted = load_echo(write_dicom(tmp_path / "mono1.dcm", grey, "MONOCHROME1"), mask_sector="none")
    assert np.array_equal(inverted.frames[..., 1], 255 - grey)
    ten_bits = grey.astype(np.uint16) * 4
    deep = load_echo(write_dicom(tmp_path / "deep.dcm", ten_bits, "MONOCHROME2", bits_stored=10), mask_sector="none")
    # more than 8 bits and no window: scaled from the actual range of the decoded frames (0.5th..99.5th percentile)
    lo, hi = np.percentile(ten_bits, [0.5, 99.5])
    assert np.abs(deep.frames[..., 0] - np.clip((ten_bits - lo) / (hi - lo), 0, 1) * 255).max() <= 0.51


def test_rle_cine_frame_rate_and_selected_frames(tmp_path: Path):
    rgb = beating_frames(frames=6, size=24)
    path = write_dicom(tmp_path / "cine.dcm", rgb, "RGB", FrameTime=20.0)
    ds = pydicom.dcmread(path)
    ds.compress(RLELossless)
    ds.save_as(path)
    video = load_echo(path, select=lambda total, fps: np.array([4, 1]), mask_sector="none")
    assert np.array_equal(video.frames, rgb[[4, 1]]) and video.fps == 50.0 and video.total_frames == 6
    single = load_echo(write_dicom(tmp_path / "one.dcm", rgb[0], "RGB", CineRate=25), mask_sector="none")
    assert single.frames.shape == (1, 24, 24, 3) and single.fps == 25.0


def test_bad_dicom_files_name_the_file(tmp_path: Path):
    no_pixels = Dataset()
    no_pixels.file_meta = FileMetaDataset()
    no_pixels.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    no_pixels.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.33"  # a structured report
    no_pixels.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    no_pixels.SOPClassUID = no_pixels.file_meta.MediaStorageSOPClassUID
    no_pixels.save_as(tmp_path / "report.dcm", enforce_file_format=True)
    with pytest.raises(ValueError, match=r"report\.dcm has no pixel data"):
        load_echo(tmp_path / "report.dcm")
    data = write_dicom(tmp_path / "cine.dcm", beating_frames(frames=6, size=24), "RGB").read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.dcm"):
        load_echo(tmp_path / "cut.dcm")
    with pytest.raises(FileNotFoundError, match="missing.dcm"):
        load_echo(tmp_path / "missing.dcm")
    with pytest.raises(ValueError, match="has 6 frame"):
        load_echo(tmp_path / "cine.dcm", select=lambda total, fps: np.array([6]))


# ------------------------------------------------------------------------------------------- sector rule


def test_sector_mask_keeps_the_moving_cone_and_drops_static_text():
    frames = beating_frames()
    mask = sector_mask(frames)
    ys, xs = np.mgrid[0:40, 0:40]
    disc = (ys - 20) ** 2 + (xs - 20) ** 2 <= 12 ** 2
    assert mask[disc].mean() > 0.97 and not mask[1:5, 1:9].any()
    assert (mask & ~disc).sum() <= 0.1 * disc.sum()  # the hull of a disc is the disc (plus its rim)
    region = np.zeros((40, 40), dtype=bool)
    region[:, :20] = True
    assert not sector_mask(frames, region)[:, 20:].any()


def test_sector_mask_of_a_still_image_uses_the_signal():
    still = beating_frames(frames=1)
    mask = sector_mask(still)
    ys, xs = np.mgrid[0:40, 0:40]
    disc = (ys - 20) ** 2 + (xs - 20) ** 2 <= 12 ** 2
    assert mask[disc].mean() > 0.97 and not mask[1:5, 1:9].any()  # the larger component wins
    black = np.zeros((2, 8, 8, 3), dtype=np.uint8)
    assert sector_mask(black).all()  # nothing qualifies: nothing is removed


# ------------------------------------------------------------------------------------------- videos


def test_avi_ranges_decode_exactly(tmp_path: Path):
    frames = ramp_video()
    write_video(tmp_path / "ramp.avi", frames, fps=25, codec="ffv1", gop=1)
    info = probe_echo(tmp_path / "ramp.avi")
    assert (info.frames, info.height, info.width, info.fps) == (20, 16, 16, 25.0)
    video = load_echo(tmp_path / "ramp.avi", select=lambda total, fps: np.array([7, 3, 3, 19]))
    assert video.frames.shape == (4, 16, 16, 3) and video.sector is None
    assert video.frames[:, 0, 0, 0].tolist() == [70, 30, 30, 190] and video.fps == 25.0
    from_bytes = load_echo((tmp_path / "ramp.avi").read_bytes(), select=every_other, name="ramp from a shard")
    assert from_bytes.frames[:, 5, 5, 2].tolist() == list(range(0, 200, 20))
    # Matroska has no frame count: the packets are counted
    write_video(tmp_path / "ramp.mkv", frames, fps=25, codec="ffv1", gop=1)
    assert probe_echo(tmp_path / "ramp.mkv").frames == 20
    matroska = load_echo(tmp_path / "ramp.mkv", select=lambda total, fps: np.array([15, 4]))
    assert matroska.frames[:, 0, 0, 0].tolist() == [150, 40]
    rgb = np.stack([np.full((8, 8, 3), (10 * k, 2 * k, 100), dtype=np.uint8) for k in range(6)])
    write_video(tmp_path / "rgb.avi", rgb, fps=10, codec="ffv1", gop=1)
    assert np.array_equal(load_echo(tmp_path / "rgb.avi").frames, rgb)


def test_mp4_seeks_to_the_wanted_frames(tmp_path: Path):
    frames = np.repeat(ramp_video(frames=24, size=32)[..., None], 3, axis=-1)
    with av.open(str(tmp_path / "clip.mp4"), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=24)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        stream.codec_context.gop_size = 6
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    video = load_echo(tmp_path / "clip.mp4", select=lambda total, fps: np.array([15, 16, 22]))
    assert video.total_frames == 24
    assert np.abs(video.frames[:, 16, 16, 0].astype(int) - [150, 160, 220]).max() <= 6  # lossy codec


def test_bad_videos_name_the_file(tmp_path: Path):
    write_video(tmp_path / "ramp.avi", ramp_video(), fps=25, codec="ffv1", gop=1)
    data = (tmp_path / "ramp.avi").read_bytes()
    (tmp_path / "cut.avi").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.avi"):
        load_echo(tmp_path / "cut.avi")
    (tmp_path / "junk.avi").write_bytes(b"not a video" * 50)
    with pytest.raises(ValueError, match=r"cannot open video .*junk\.avi"):
        load_echo(tmp_path / "junk.avi")
    with pytest.raises(ValueError, match="has 20 frame"):
        load_echo(tmp_path / "ramp.avi", select=lambda total, fps: np.array([20]))
    with pytest.raises(ConfigError, match="mask_sector"):
        load_echo(tmp_path / "ramp.avi", mask_sector="dicm")


def test_monai_reader_and_loaders(tmp_path: Path):
    write_video(tmp_path / "ramp.avi", ramp_video(), fps=25, codec="ffv1", gop=1)
    reader = EchoVideoReader(mask_sector="none")
    assert reader.verify_suffix(tmp_path / "ramp.avi") and not reader.verify_suffix("x.png")
    array, meta = reader.get_data(reader.read(tmp_path / "ramp.avi"))
    assert array.shape == (20, 16, 16, 3) and meta["fps"] == 25.0 and meta["original_channel_dim"] == -1
    video = LoadEcho()(tmp_path / "ramp.avi")
    assert isinstance(video, MetaTensor) and video.shape == (3, 20, 16, 16) and video.dtype == torch.float32
    assert video[0, 5, 0, 0] == 50 and video.meta["fps"] == 25.0
    assert str(tmp_path / "ramp.avi") in video.meta["filename_or_obj"]
    d = LoadEchod("video")({"video": tmp_path / "ramp.avi", "text": "x"})
    assert d["video"].shape == (3, 20, 16, 16) and d["text"] == "x"
    with pytest.raises(ValueError, match="one video at a time"):
        reader.read([tmp_path / "ramp.avi", tmp_path / "ramp.avi"])
