"""The DICOM display pipeline shared by the X-ray and echo readers (medical.dicom): every pixel-data file pydicom
ships against pydicom's own LUT functions, datasets built here for each step (rescale, window, MONOCHROME1,
palette, YBR, the actual range), malformed headers, undecodable transfer syntaxes and the echo modality screen."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
from pydicom.data import DATA_ROOT  # noqa: E402
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.encaps import encapsulate  # noqa: E402
from pydicom.pixels import (apply_color_lut, apply_modality_lut, apply_voi_lut, convert_color_space,  # noqa: E402
                            pixel_array)
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless, MPEG4HP41, generate_uid  # noqa: E402

from alignkit.core.paired import build_decoder  # noqa: E402
from alignkit.core.registry import ConfigError  # noqa: E402
from alignkit.domains.medical.dicom import (PERCENTILES, ULTRASOUND_MODALITIES, check_header,  # noqa: E402
                                            check_modality, frame_count, read_dataset, render_frame,
                                            render_frames)
from alignkit.domains.medical.echo.data import EchoNetDataset  # noqa: E402
from alignkit.domains.medical.echo.loading import load_echo, probe_echo  # noqa: E402
from alignkit.domains.medical.xray.images import load_xray  # noqa: E402

CORPUS = Path(DATA_ROOT) / "test_files"
CT_CLASS, US_CLASS, SC_CLASS = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.6.1", "1.2.840.10008.5.1.4.1.1.7"
# pydicom's test files that do not decode, and why (the corpus test accepts an error naming the file for these).
UNDECODABLE = {
    "JPEG-lossy.dcm": "corrupt 12-bit JPEG Extended stream (misplaced marker segment)",
    "JPGExtended.dcm": "12-bit JPEG Extended: only pylibjpeg-libjpeg (GPL-3.0, extra medical-libjpeg) decodes it",
    "JPEG2000-embedded-sequence-delimiter.dcm": "a sequence delimiter inside the JPEG 2000 stream",
    "MR_truncated.dcm": "PixelData shorter than Rows x Columns x 2",
    "badVR.dcm": "NumberOfFrames is '1A'",
    "meta_missing_tsyntax.dcm": "no Image Pixel tags (Rows, ...)",
    "nested_priv_SQ.dcm": "no Image Pixel tags (Rows, ...)",
}


# ------------------------------------------------------------------------------------------- helpers


def make_dataset(pixels: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int = 0, modality: str = "CT",
                 sop_class: str = CT_CLASS, **attributes: Any) -> Dataset:
    """A dataset (Explicit VR Little Endian) holding ``pixels``: (H, W[, 3]) or frames (N, H, W[, 3])."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, ds.file_meta.MediaStorageSOPInstanceUID
    if modality:
        ds.Modality = modality
    ds.set_pixel_data(pixels, photometric, bits_stored or pixels.dtype.itemsize * 8)
    for key, value in attributes.items():
        setattr(ds, key, value)
    return ds


def save(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def ct_slice(size: int = 32) -> np.ndarray:
    """int16 stored CT values (HU + 1024): -2000 padding outside a disc (the scanner's field of view), air 24,
    soft tissue ~1040..1100 and a bone ring at 2200."""
    ys, xs = np.mgrid[0:size, 0:size] - size / 2 + 0.5
    r = np.hypot(ys, xs) / (size / 2)
    image = np.where(r < 0.95, 24, -2000).astype(np.int16)
    image[r < 0.7] = (1040 + 60 * (xs[r < 0.7] + size / 2) / size).astype(np.int16)
    image[(r > 0.5) & (r < 0.6)] = 2200
    return image


def percentile_scaled(values: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(values, PERCENTILES)
    return np.clip((values - lo) / (hi - lo), 0, 1)


def reference_rendering(ds: Dataset) -> np.ndarray:
    """pydicom's own rendering of frame 0 through its LUT functions (same windowing rule without a VOI)."""
    stored = pixel_array(ds, index=0)  # YBR arrives as RGB
    photometric = ds.PhotometricInterpretation
    if photometric == "PALETTE COLOR":
        return apply_color_lut(stored, ds).astype(np.float64)
    if stored.ndim == 3:
        return stored.astype(np.float64)
    values = apply_modality_lut(stored, ds).astype(np.float64)
    if ds.get("VOILUTSequence") or ("WindowCenter" in ds and "WindowWidth" in ds):
        values = apply_voi_lut(values, ds).astype(np.float64)
    elif not (ds.BitsStored <= 8 and ds.PixelRepresentation == 0 and "RescaleSlope" not in ds):
        values = np.clip(values, *np.percentile(values, PERCENTILES))
    return -values if photometric == "MONOCHROME1" else values


def corpus_files() -> List[Path]:
    return sorted(p for p in CORPUS.rglob("*") if p.is_file())


# ------------------------------------------------------------------------------------------- pydicom's corpus


def test_every_pixel_file_pydicom_ships_decodes_as_pydicom_renders_it_or_names_itself():
    decoded: Dict[str, float] = {}
    refused: Dict[str, str] = {}
    for path in corpus_files():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path)
        except Exception:  # not DICOM (dumps, json, ...)
            continue
        if "PixelData" not in ds:
            continue
        name = str(path.relative_to(CORPUS))
        try:
            ours = render_frame(ds, 0, name)
        except ValueError as exc:
            assert name in str(exc), str(exc)
            assert path.name in UNDECODABLE, f"{name} does not decode: {exc}"
            refused[name] = str(exc).splitlines()[0]
            continue
        assert ours.dtype == np.float32 and 0.0 <= ours.min() and ours.max() <= 1.0, name
        reference = reference_rendering(pydicom.dcmread(path))
        assert ours.shape == reference.shape, name
        if reference.std() == 0:
            assert ours.std() == 0, name
            decoded[name] = 1.0
            continue
        assert ours.std() > 0, f"{name} comes back flat"
        decoded[name] = float(np.corrcoef(ours.reshape(-1), reference.reshape(-1))[0, 1])
        assert decoded[name] >= 0.99, (name, decoded[name])
    print(f"\n{len(decoded)} corpus files decode, {len(refused)} raise:", *refused.items(), sep="\n  ")
    assert len(decoded) >= 85 and len(refused) <= len(UNDECODABLE)


def test_a_jpeg_2000_image_without_a_window_is_not_flat():
    nm = render_frame(pydicom.dcmread(CORPUS / "JPEG2000.dcm"), 0, "JPEG2000.dcm")  # 16-bit signed, values -30..245
    assert nm.std() > 0.1 and nm.max() == 1.0 and nm.min() == 0.0  # the storable range (65536 levels) made it flat
    mr_j2k = render_frame(pydicom.dcmread(CORPUS / "MR_small_jp2klossless.dcm"), 0, "jp2k")
    np.testing.assert_allclose(mr_j2k, render_frame(pydicom.dcmread(CORPUS / "MR_small.dcm"), 0, "raw"), atol=1e-6)
    assert load_xray(CORPUS / "MR_small_jp2klossless.dcm", window="minmax").std() > 0.1


# ------------------------------------------------------------------------------------------- the pipeline's steps


def test_ct_without_a_window_uses_its_actual_range_and_keeps_negative_values():
    stored = ct_slice()
    ds = make_dataset(stored, bits_stored=16, PixelRepresentation=1, RescaleSlope=1, RescaleIntercept=-1024)
    image = render_frame(ds, 0, "ct.dcm")
    hu = stored.astype(np.float64) - 1024  # -3024 outside the field of view, -1000 air, ~0 tissue, 1176 bone
    np.testing.assert_allclose(image, percentile_scaled(hu), atol=1e-5)
    assert image.std() > 0.3 and image[16, 16] > 0.5 and image[0, 0] == 0.0
    assert image[16, 16] > image[16, 2] > image[0, 0]  # tissue above air above padding: negative values ordered
    assert render_frame(ds, 0, "ct.dcm", window="none").std() < 0.05  # what scaling over 2^16 levels gave


def test_a_window_in_the_file_is_applied_and_explicit_windows_override_it():
    stored = ct_slice()
    ds = make_dataset(stored, bits_stored=16, PixelRepresentation=1, RescaleSlope=1, RescaleIntercept=-1024,
                      WindowCenter=40, WindowWidth=400)
    hu = stored.astype(np.float64) - 1024
    np.testing.assert_allclose(render_frame(ds, 0, "w.dcm"), np.clip((hu - 39.5) / 399 + 0.5, 0, 1), atol=1e-5)
    np.testing.assert_allclose(render_frame(ds, 0, "w.dcm", window=(-600.0, 1500.0)),
                               np.clip((hu + 600.5) / 1499 + 0.5, 0, 1), atol=1e-5)
    sigmoid = make_dataset(stored, bits_stored=16, PixelRepresentation=1, RescaleSlope=1, RescaleIntercept=-1024,
                           WindowCenter=40, WindowWidth=400, VOILUTFunction="SIGMOID")
    expected = 1 / (1 + np.exp(-4 * (hu - 40) / 400))  # PS3.3 C.11.2.1.3.1, scaled to [0, 1]
    np.testing.assert_allclose(render_frame(sigmoid, 0, "s.dcm"), expected, atol=1e-4)


def test_monochrome1_is_inverted():
    stored = np.arange(0, 4096, 16, dtype=np.uint16).reshape(16, 16)
    mono2 = render_frame(make_dataset(stored, bits_stored=12), 0, "m2")
    mono1 = render_frame(make_dataset((4095 - stored).astype(np.uint16), "MONOCHROME1", 12), 0, "m1")
    np.testing.assert_allclose(mono1, mono2, atol=1e-5)
    assert mono1[0, 0] == 0.0 and mono1[-1, -1] == 1.0


def test_a_constant_image_stays_constant():
    flat = render_frame(make_dataset(np.full((8, 8), 1000, dtype=np.uint16), bits_stored=12), 0, "flat")
    np.testing.assert_allclose(flat, 1000 / 4095, atol=1e-6)  # its level in the storable range, no 0 / 0
    speck = np.zeros((40, 40), dtype=np.uint16)
    speck[0, 0] = 500  # 1 pixel in 1600: the percentiles meet, the minimum and maximum do not
    image = render_frame(make_dataset(speck, bits_stored=12), 0, "speck")
    assert image[0, 0] == 1.0 and image[1, 1] == 0.0


def test_palette_color_goes_through_its_lookup_tables():
    index = np.arange(256, dtype=np.uint8).reshape(16, 16)
    ds = make_dataset(index, "PALETTE COLOR", 8, modality="US", sop_class=US_CLASS)
    ramp = np.arange(256, dtype=np.uint16)
    for colour, lut in (("Red", ramp * 257), ("Green", (255 - ramp) * 257), ("Blue", np.full(256, 32896))):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
        setattr(ds, f"{colour}PaletteColorLookupTableData", lut.astype("<u2").tobytes())
    rgb = render_frame(ds, 0, "palette")
    assert rgb.shape == (16, 16, 3)
    np.testing.assert_allclose(rgb[..., 0], index / 255.0, atol=1e-6)
    np.testing.assert_allclose(rgb[..., 1], 1 - index / 255.0, atol=1e-6)
    np.testing.assert_allclose(rgb[..., 2], 32896 / 65535, atol=1e-6)


def test_ybr_full_becomes_rgb():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(2, 8, 8, 3), dtype=np.uint8)
    ds = make_dataset(convert_color_space(rgb, "RGB", "YBR_FULL"), "YBR_FULL", 8, NumberOfFrames=2)
    back = render_frames(ds, [1, 0], "ybr", uint8=True)
    assert back.shape == (2, 8, 8, 3) and back.dtype == np.uint8
    assert np.abs(back.astype(int) - rgb[[1, 0]].astype(int)).max() <= 2  # YBR round trip rounding


def test_frames_of_a_cine_share_one_range():
    frames = np.stack([np.linspace(0, 1000 * (k + 1), 64).reshape(8, 8) for k in range(3)]).astype(np.uint16)
    ds = make_dataset(frames, bits_stored=12, NumberOfFrames=3)
    images = render_frames(ds, [0, 1, 2], "cine")
    assert images[0].max() < images[1].max() < images[2].max() == 1.0  # not each stretched to [0, 1]
    with pytest.raises(ValueError, match=r"frame 3 requested but DICOM file cine has 3 frame\(s\) "
                                         r"\(NumberOfFrames \(0028,0008\)\)"):
        render_frames(ds, [3], "cine")


# ------------------------------------------------------------------------------------------- malformed headers


@pytest.mark.parametrize("tag, value, message", [
    ("NumberOfFrames", "2.5", r"NumberOfFrames \(0028,0008\) is '2\.5', not an integer"),
    ("NumberOfFrames", "0", r"NumberOfFrames \(0028,0008\) is 0"),
    ("BitsStored", 20, r"BitsStored \(0028,0101\) is 20, outside 1 \.\. BitsAllocated \(16\)"),
    ("Rows", 0, r"Rows \(0028,0010\) is 0"),
    ("Columns", 0, r"Columns \(0028,0011\) is 0"),
    ("SamplesPerPixel", 2, r"SamplesPerPixel \(0028,0002\) is 2"),
    ("SamplesPerPixel", 3, r"SamplesPerPixel \(0028,0002\) is 3 but PhotometricInterpretation MONOCHROME2 has 1"),
    ("BitsAllocated", 12, r"BitsAllocated \(0028,0100\) is 12"),
])
def test_malformed_headers_name_the_file_and_the_tag(tag: str, value: object, message: str):
    ds = make_dataset(np.zeros((4, 4), dtype=np.uint16), bits_stored=12)
    setattr(ds, tag, value)
    with pytest.raises(ValueError, match=r"DICOM file bad\.dcm: " + message):
        render_frame(ds, 0, "bad.dcm")


def test_non_integer_frame_count_in_a_file_names_it(tmp_path: Path):
    path = save(make_dataset(np.zeros((2, 4, 4), dtype=np.uint8), modality="US", sop_class=US_CLASS,
                             NumberOfFrames="2"), tmp_path / "cine.dcm")
    element = b"\x28\x00\x08\x00IS\x02\x002 "  # (0028,0008) IS, 2 bytes: "2 "
    assert path.read_bytes().count(element) == 1
    bad = tmp_path / "bad_frames.dcm"
    bad.write_bytes(path.read_bytes().replace(element, element[:-2] + b"2A"))
    message = r"DICOM file .*bad_frames\.dcm: NumberOfFrames \(0028,0008\) is '2A', not an integer"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the invalid IS
        with pytest.raises(ValueError, match=message):
            frame_count(read_dataset(bad, str(bad)), str(bad))
        for read in (load_echo, probe_echo, load_xray):
            with pytest.raises(ValueError, match=message):
                read(bad)


def test_truncated_native_pixel_data_names_the_file(tmp_path: Path):
    ds = make_dataset(np.zeros((16, 16), dtype=np.uint16), bits_stored=12)
    ds.PixelData = ds.PixelData[:300]
    with pytest.raises(ValueError, match=r"short\.dcm: PixelData \(7FE0,0010\) holds 300 bytes, fewer than the 512"):
        check_header(ds, "short.dcm")
    with pytest.raises(ValueError, match=r"short\.dcm: PixelData \(7FE0,0010\)"):
        load_xray(save(ds, tmp_path / "short.dcm"))


def test_undecodable_transfer_syntaxes_name_the_file_the_syntax_and_what_to_install(monkeypatch):
    ds = make_dataset(np.zeros((8, 8), dtype=np.uint8), bits_stored=8)
    ds.file_meta.TransferSyntaxUID = MPEG4HP41
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3 not really video"])
    ds["PixelData"].is_undefined_length = True
    with pytest.raises(ValueError, match=r"frame 0 of DICOM file clip\.dcm \(TransferSyntaxUID \(0002,0010\) "
                                         r"1\.2\.840\.10008\.1\.2\.4\.102, MPEG-4 AVC/H\.264 High Profile.*no decoder"):
        render_frame(ds, 0, "clip.dcm")
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    ds.PixelData = encapsulate([b"\xff\xd8 broken JPEG-LS"])
    with pytest.raises(ValueError, match=r"jls\.dcm \(TransferSyntaxUID \(0002,0010\) 1\.2\.840\.10008\.1\.2\.4\.80, "
                                         r"JPEG-LS Lossless Image Compression\) with the installed plugins.*"
                                         r"pip install 'alignkit\[medical\]'"):
        render_frame(ds, 0, "jls.dcm")
    decoder_class = type(pydicom.pixels.get_decoder(JPEGLSLossless))
    monkeypatch.setattr(decoder_class, "is_available", property(lambda self: False))
    with pytest.raises(ValueError, match=r"jls\.dcm.*JPEG-LS Lossless.*no decoder plugin for it is installed; "
                                         r"pip install 'alignkit\[medical\]'"):
        render_frame(ds, 0, "jls.dcm")


# ------------------------------------------------------------------------------------------- the echo reader


def test_the_echo_reader_refuses_a_ct_unless_asked(tmp_path: Path):
    path = save(make_dataset(ct_slice(), bits_stored=16, PixelRepresentation=1, RescaleSlope=1,
                             RescaleIntercept=-1024), tmp_path / "ct.dcm")
    with pytest.raises(ValueError, match=r"ct\.dcm has Modality \(0008,0060\) CT, not an accepted modality "
                                         r"\(accepted: US, IVUS; pass modalities=None"):
        load_echo(path)
    with pytest.raises(ValueError, match=r"ct\.dcm has Modality \(0008,0060\) CT"):
        probe_echo(path)
    video = load_echo(path, modalities=None, mask_sector="none")
    assert video.frames.shape == (1, 32, 32, 3) and video.frames.dtype == np.uint8
    grey = np.round(percentile_scaled(ct_slice().astype(np.float64) - 1024) * 255)
    np.testing.assert_array_equal(video.frames[0, ..., 1], grey)
    assert load_echo(path, modalities=["CT"], mask_sector="none").frames.shape == (1, 32, 32, 3)
    with pytest.raises(ConfigError, match="did you mean 'CT'"):
        load_echo(path, modalities=["CTT"])


@pytest.mark.parametrize("modality, sop_class, accepted", [
    ("US", US_CLASS, True),
    ("", US_CLASS, True),  # no Modality, but an ultrasound SOP class
    ("", "", True),  # nothing says otherwise
    ("US", SC_CLASS, True),  # a secondary capture of an echo
    ("", SC_CLASS, False),  # nothing says what it shows
    ("", CT_CLASS, False),  # a CT class without Modality
    ("US", CT_CLASS, False),  # contradictory
    ("IVUS", US_CLASS, True),
    ("MR", US_CLASS, False),
])
def test_the_modality_screen(modality: str, sop_class: str, accepted: bool):
    ds = make_dataset(np.full((6, 6, 3), 128, dtype=np.uint8), "RGB", 8, modality=modality,
                      sop_class=sop_class or US_CLASS)
    if not sop_class:
        del ds.SOPClassUID
        del ds.file_meta.MediaStorageSOPClassUID
    if accepted:
        check_modality(ds, ULTRASOUND_MODALITIES, "us.dcm")
    else:
        with pytest.raises(ValueError, match=r"us\.dcm has .*pass modalities=None"):
            check_modality(ds, ULTRASOUND_MODALITIES, "us.dcm")
    check_modality(ds, None, "us.dcm")


def test_the_echo_datasets_thread_modalities_to_their_decoder(tmp_path: Path,
                                                              assert_params_refused: Callable) -> None:
    data = save(make_dataset(ct_slice(16), bits_stored=16, PixelRepresentation=1, RescaleSlope=1,
                             RescaleIntercept=-1024), tmp_path / "ct.dcm").read_bytes()
    strict = build_decoder(EchoNetDataset, {"num_frames": 2, "stride": 1, "image_size": 8})
    with pytest.raises(ValueError, match=r"'ct' .*has Modality \(0008,0060\) CT"):
        strict.video(data, "'ct'", dicom=True)
    lenient = build_decoder(EchoNetDataset, {"num_frames": 2, "stride": 1, "image_size": 8, "modalities": None})
    assert lenient.modalities is None and tuple(lenient.video(data, "'ct'", dicom=True).shape) == (3, 2, 8, 8)
    assert_params_refused("dataset", "echonet", {"modalities": ["CTT"]}, "'CT'")
    assert_params_refused("dataset", "echo-studies", {"modalities": ["us"]}, "'US'")


def test_real_ultrasound_samples_keep_rendering_as_before():
    echo = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "medical" / "echo"
    if not echo.is_dir():
        pytest.skip("../shared/data/medical/echo not present")
    for name in ("US1_UNCR.dcm", "OBXXXX1A_rle.dcm"):
        ds = pydicom.dcmread(echo / name)
        video = load_echo(echo / name, mask_sector="none")
        reference = reference_rendering(ds)
        np.testing.assert_array_equal(video.frames[0], reference.astype(np.uint8) if reference.max() <= 255
                                      else np.round(reference / 257).astype(np.uint8))
