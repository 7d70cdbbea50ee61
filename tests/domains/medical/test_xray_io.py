"""X-ray image IO (PNG/JPEG/DICOM, MONAI transforms) and the archive readers, on files the tests write and on
the real samples in ../shared/data/medical/cxr/."""
from __future__ import annotations

import csv
import gzip
import io
import math
from pathlib import Path
from typing import Dict, Sequence

import numpy as np
import pytest
import torch
from PIL import Image

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.sequence import Sequence as DicomSequence  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402

from alignkit.core.registry import ConfigError  # noqa: E402
from alignkit.domains.medical.reports import EmptyReportError  # noqa: E402
from alignkit.domains.medical.tables import BadRowError  # noqa: E402
from alignkit.domains.medical.xray.archives import (  # noqa: E402
    CheXpertReader, GenericCsvReader, MimicCxrJpgReader, NIHChestXray14Reader)
from alignkit.domains.medical.xray.images import LoadXRay, LoadXRayd, XRayImageReader, load_xray  # noqa: E402
from alignkit.domains.medical.xray.records import CHEXPERT_LABELS, NIH_LABELS  # noqa: E402

REPO = Path(__file__).resolve().parents[3]
CXR = REPO.parent / "shared" / "data" / "medical" / "cxr"
SIIM = CXR / "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"


# ------------------------------------------------------------------------------------------- helpers


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def write_jpg(path: Path, value: int = 128, size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, dtype=np.uint8)).save(path, quality=95)
    return path


def write_dicom(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int = 0,
                **attributes: object) -> Path:
    """A DX image (one frame (H, W) or frames (N, H, W)) in Explicit VR Little Endian."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.set_pixel_data(pixels, photometric, bits_stored or pixels.dtype.itemsize * 8)
    for key, value in attributes.items():
        setattr(ds, key, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def chest_phantom(size: int = 32, bits: int = 12) -> np.ndarray:
    """A left-right gradient (soft tissue) with a bright vertical stripe of "bone" in columns 12..15."""
    top = 2 ** bits - 1
    image = np.tile(np.linspace(0.1, 0.5, size), (size, 1))
    image[:, 12:16] = 0.95
    return np.round(image * top).astype(np.uint16)


def actual_range(stored: np.ndarray) -> np.ndarray:
    """What a DICOM of more than 8 bits without a window reads as: scaled from its 0.5th to 99.5th percentile."""
    lo, hi = np.percentile(stored, [0.5, 99.5])
    return np.clip((stored - lo) / (hi - lo), 0, 1)


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]], gz: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([["" if v is None else v for v in row] for row in rows])
    data = buffer.getvalue().encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def same_labels(a: Dict[str, float], b: Dict[str, float]) -> bool:
    return a.keys() == b.keys() and all((math.isnan(a[k]) and math.isnan(b[k])) or a[k] == b[k] for k in a)


# ----------------------------------------------------------------------------------------- PNG / JPEG


def test_png_8_and_16_bit_and_colour(tmp_path: Path):
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    np.testing.assert_allclose(load_xray(write_png(tmp_path / "g.png", grey)), grey / 255.0, atol=1e-7)
    deep = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    out = load_xray(write_png(tmp_path / "d.png", deep))
    assert out.dtype == np.float32 and out.shape == (8, 8)
    np.testing.assert_allclose(out, deep / 65535.0, atol=1e-7)
    rgb = np.zeros((4, 4, 3), dtype=np.uint8)
    rgb[..., 1] = 200
    np.testing.assert_allclose(load_xray(write_png(tmp_path / "c.png", rgb)), round(200 * 0.587) / 255, atol=1 / 255)
    jpg = load_xray(write_jpg(tmp_path / "j.jpg", value=128))
    np.testing.assert_allclose(jpg, 128 / 255, atol=2 / 255)


def test_png_windows_and_resize(tmp_path: Path):
    deep = np.array([[0, 1000, 2000, 3000]], dtype=np.uint16).repeat(4, axis=0)
    path = write_png(tmp_path / "d.png", deep)
    np.testing.assert_allclose(load_xray(path, window="minmax")[0], [0, 1 / 3, 2 / 3, 1], atol=1e-6)
    center, width = 1500.0, 2001.0  # DICOM linear window in stored units
    expected = np.clip((deep[0] - (center - 0.5)) / (width - 1) + 0.5, 0, 1)
    np.testing.assert_allclose(load_xray(path, window=(center, width))[0], expected, atol=1e-6)
    assert load_xray(path, image_size=2).shape == (2, 2)
    assert load_xray(path, image_size=(3, 6)).shape == (3, 6)
    with pytest.raises(ConfigError, match="did you mean 'minmax'"):
        load_xray(path, window="minmx")
    with pytest.raises(ConfigError, match="width must be > 1"):
        load_xray(path, window=(10, 1))


def test_corrupt_truncated_and_missing_bitmaps_name_the_file(tmp_path: Path):
    good = write_png(tmp_path / "good.png", np.full((64, 64), 7, dtype=np.uint8) + np.eye(64, dtype=np.uint8))
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:60])
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image at all")
    for bad in (truncated, junk):
        with pytest.raises(ValueError, match=bad.name):
            load_xray(bad)
    with pytest.raises(FileNotFoundError, match="nothing.png"):
        load_xray(tmp_path / "nothing.png")
    with pytest.raises(ValueError, match="frame 1 requested"):
        load_xray(good, frame=1)


# ---------------------------------------------------------------------------------------------- DICOM


def test_monochrome1_comes_out_with_bright_bone_like_monochrome2(tmp_path: Path):
    phantom = chest_phantom(bits=12)
    mono2 = load_xray(write_dicom(tmp_path / "m2.dcm", phantom, "MONOCHROME2", bits_stored=12))
    mono1 = load_xray(write_dicom(tmp_path / "m1.dcm", (4095 - phantom).astype(np.uint16), "MONOCHROME1",
                                  bits_stored=12))
    np.testing.assert_allclose(mono1, mono2, atol=1e-6)
    np.testing.assert_allclose(mono2, actual_range(phantom), atol=1e-6)
    bone, tissue = mono1[:, 12:16].mean(), mono1[:, :12].mean()
    assert bone > 0.9 and tissue < 0.4
    # with a window: MONOCHROME1 stores the mirrored values and the mirrored center
    windowed2 = load_xray(write_dicom(tmp_path / "w2.dcm", phantom, "MONOCHROME2", bits_stored=12,
                                      WindowCenter=1600, WindowWidth=2400))
    windowed1 = load_xray(write_dicom(tmp_path / "w1.dcm", (4095 - phantom).astype(np.uint16), "MONOCHROME1",
                                      bits_stored=12, WindowCenter=4095 - 1600, WindowWidth=2400))
    np.testing.assert_allclose(windowed1, windowed2, atol=1.0 / 2399 + 1e-6)  # the DICOM window's half-step offset
    assert windowed1[:, 12:16].mean() > windowed1[:, :12].mean() + 0.4


def test_16_bit_dicom_window_center_width(tmp_path: Path):
    stored = (np.arange(256, dtype=np.uint16).reshape(16, 16) * 64)  # 0 .. 16320
    path = write_dicom(tmp_path / "w.dcm", stored, bits_stored=16, WindowCenter=8000, WindowWidth=4000)
    expected = np.clip((stored - 7999.5) / 3999 + 0.5, 0, 1)
    np.testing.assert_allclose(load_xray(path), expected, atol=1e-6)
    np.testing.assert_allclose(load_xray(path, window="none"), stored / 65535.0, atol=1e-6)
    np.testing.assert_allclose(load_xray(path, window="minmax"), stored / 16320.0, atol=1e-6)
    np.testing.assert_allclose(load_xray(path, window=(1000, 2001)), np.clip((stored - 999.5) / 2000 + 0.5, 0, 1),
                               atol=1e-6)


def test_rescale_then_window_and_voi_lut_sequence(tmp_path: Path):
    stored = np.arange(0, 4096, 16, dtype=np.uint16).reshape(16, 16)
    rescaled = write_dicom(tmp_path / "r.dcm", stored, bits_stored=12, RescaleSlope=2, RescaleIntercept=-1024,
                           WindowCenter=1000, WindowWidth=2000)
    modality = stored * 2.0 - 1024
    np.testing.assert_allclose(load_xray(rescaled), np.clip((modality - 999.5) / 1999 + 0.5, 0, 1), atol=1e-6)
    np.testing.assert_allclose(load_xray(rescaled, window="none"), (modality + 1024) / (4095 * 2), atol=1e-6)
    lut = Dataset()
    lut.add_new(0x00283002, "US", [256, 1000, 8])  # LUT Descriptor: 256 entries from 1000, 8 bits
    lut.add_new(0x00283006, "US", list(range(256)))  # LUT Data: the identity ramp
    with_lut = write_dicom(tmp_path / "lut.dcm", stored, bits_stored=12, VOILUTSequence=DicomSequence([lut]))
    np.testing.assert_allclose(load_xray(with_lut), np.clip(stored - 1000.0, 0, 255) / 255, atol=1e-6)


def test_multi_frame_dicom(tmp_path: Path):
    frames = np.stack([np.full((8, 8), v, dtype=np.uint16) for v in (100, 2000, 4000)])
    path = write_dicom(tmp_path / "mf.dcm", frames, bits_stored=12)
    for k, value in enumerate((100, 2000, 4000)):
        np.testing.assert_allclose(load_xray(path, frame=k), value / 4095.0, atol=1e-6)
    with pytest.raises(ValueError, match=r"frame 3 requested but DICOM file .*mf\.dcm has 3 frame"):
        load_xray(path, frame=3)


def test_bad_dicom_files_name_the_file(tmp_path: Path):
    good = write_dicom(tmp_path / "good.dcm", chest_phantom(64), bits_stored=12)
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(good.read_bytes()[:-3000])
    with pytest.raises(ValueError, match="truncated.dcm"):
        load_xray(truncated)
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"\x00" * 40)
    with pytest.raises(ValueError, match="junk.dcm"):
        load_xray(junk)
    ds = pydicom.dcmread(good)
    del ds.PixelData
    ds.save_as(tmp_path / "report.dcm")
    with pytest.raises(ValueError, match=r"report\.dcm has no pixel data"):
        load_xray(tmp_path / "report.dcm")


def test_dicom_without_suffix_is_recognised(tmp_path: Path):
    path = write_dicom(tmp_path / "IM0001", chest_phantom(8), bits_stored=12)
    np.testing.assert_allclose(load_xray(path), actual_range(chest_phantom(8)), atol=1e-6)


def test_real_siim_dicom():
    image = load_xray(SIIM)
    assert image.shape == (1024, 1024) and image.dtype == np.float32
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert 0.3 < image.mean() < 0.8  # a chest radiograph: mostly mid-grey
    ds = pydicom.dcmread(SIIM)
    assert ds.PhotometricInterpretation == "MONOCHROME2" and "WindowCenter" not in ds
    np.testing.assert_allclose(image, ds.pixel_array / 255.0, atol=1e-6)  # 8 bits stored, no VOI: x / 255
    assert load_xray(SIIM, image_size=128).shape == (128, 128)


# ---------------------------------------------------------------------------------------------- MONAI


def test_monai_pipeline_on_the_real_files():
    from monai.transforms import Compose, EnsureChannelFirstd, Resized, ScaleIntensityd
    pipeline = Compose([LoadXRayd("image"), EnsureChannelFirstd("image"), Resized("image", (64, 64)),
                        ScaleIntensityd("image")])
    for path in (CXR / "00000001_000.png", SIIM):
        out = pipeline({"image": str(path), "text": "report"})
        image = out["image"]
        assert tuple(image.shape) == (1, 64, 64) and image.dtype == torch.float32
        assert float(image.min()) == 0.0 and float(image.max()) == pytest.approx(1.0)
        assert image.meta["filename_or_obj"] == str(path) and out["text"] == "report"


@pytest.mark.filterwarnings("ignore:NvImgCodecPydicomReader")  # LoadImage builds MONAI's default readers too
def test_load_xray_transform_and_reader_agree_with_load_xray(tmp_path: Path):
    from monai.transforms import LoadImage
    path = write_dicom(tmp_path / "a.dcm", chest_phantom(16), bits_stored=12)
    reference = load_xray(path)
    loaded = LoadXRay(ensure_channel_first=True)(path)
    assert tuple(loaded.shape) == (1, 16, 16)
    np.testing.assert_allclose(loaded[0].numpy(), reference)
    assert loaded.meta["photometric"] == "MONOCHROME2"
    via_monai = LoadImage(reader=XRayImageReader(), image_only=True)(path)
    np.testing.assert_allclose(np.asarray(via_monai), reference)
    stacked, meta = XRayImageReader().get_data(XRayImageReader().read([path, path]))
    assert stacked.shape == (2, 16, 16) and meta["original_channel_dim"] == 0
    assert XRayImageReader().verify_suffix(["a.dcm", "b.PNG"]) and not XRayImageReader().verify_suffix("a.nii")
    corrupt = tmp_path / "c.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(ValueError, match="c.png"):
        LoadXRayd("image")({"image": corrupt})


# ------------------------------------------------------------------------------------ MIMIC-CXR-JPG

MIMIC_REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)
 INDICATION:  ___ with cough
 FINDINGS:  Small left pleural effusion.
 IMPRESSION:  Effusion.
"""
IMPRESSION_ONLY = "FINAL REPORT\nIMPRESSION: No acute process.\n"
NO_SECTIONS = "FINAL REPORT\nEXAMINATION: CHEST\nINDICATION: cough\n"


def mimic_layout(root: Path, gz: bool = False) -> Path:
    """3 studies of 2 subjects, 5 images (one lateral): s50000001 (PA + LATERAL), s50000002 (AP), s50000003
    (PA, report without findings/impression), s50000004 (PA, no row in the chexpert csv)."""
    images = [("d1", "10000032", "50000001", "train", "PA"), ("d2", "10000032", "50000001", "train", "LATERAL"),
              ("d3", "10000032", "50000002", "validate", "AP"), ("d4", "11000011", "50000003", "test", "PA"),
              ("d5", "11000011", "50000004", "train", "PA")]
    reports = {"50000001": MIMIC_REPORT, "50000002": IMPRESSION_ONLY, "50000003": NO_SECTIONS,
               "50000004": IMPRESSION_ONLY}
    for dicom, subject, study, _, _ in images:
        folder = root / "files" / f"p{subject[:2]}" / f"p{subject}"
        write_jpg(folder / f"s{study}" / f"{dicom}.jpg")
        (folder / f"s{study}.txt").write_text(reports[study])
    ext = ".csv.gz" if gz else ".csv"
    write_csv(root / f"mimic-cxr-2.0.0-split{ext}", ["dicom_id", "study_id", "subject_id", "split"],
              [(d, st, su, sp) for d, su, st, sp, _ in images], gz=gz)
    write_csv(root / f"mimic-cxr-2.0.0-metadata{ext}",
              ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition"],
              [(d, su, st, "CHEST (PA AND LAT)", v) for d, su, st, _, v in images], gz=gz)
    labels = {"50000001": {"Pleural Effusion": "1.0", "Cardiomegaly": "-1.0", "No Finding": ""},
              "50000002": {"No Finding": "1.0", "Pleural Effusion": "0.0"},
              "50000003": {"Edema": "-1.0"}}
    write_csv(root / f"mimic-cxr-2.0.0-chexpert{ext}", ["subject_id", "study_id", *CHEXPERT_LABELS],
              [(su, st, *(labels[st].get(c, "") for c in CHEXPERT_LABELS))
               for su, st in [("10000032", "50000001"), ("10000032", "50000002"), ("11000011", "50000003")]], gz=gz)
    return root


def test_mimic_reader_joins_the_three_csvs(tmp_path: Path):
    root = mimic_layout(tmp_path / "mimic", gz=True)
    reader = MimicCxrJpgReader(root, skip_bad=True)
    assert [r.image_id for r in reader] == ["d1", "d2", "d3", "d5"]
    assert reader.skipped == [(f"{root / 'mimic-cxr-2.0.0-split.csv.gz'} row 4", reader.skipped[0][1])]
    assert "s50000003.txt" in reader.skipped[0][1] and "FINDINGS, IMPRESSION" in reader.skipped[0][1]
    d1, d2, d3, d5 = reader.records
    assert d1.image_path == root / "files/p10/p10000032/s50000001/d1.jpg"
    assert d1.report_path == root / "files/p10/p10000032/s50000001.txt"
    assert d1.report_text == "Small left pleural effusion. Effusion." and d2.report_text == d1.report_text
    assert d3.report_text == "No acute process."
    assert (d1.study_id, d1.subject_id, d1.view, d1.split) == ("50000001", "10000032", "PA", "train")
    assert (d2.view, d3.view, d3.split) == ("LATERAL", "AP", "validate")
    assert d1.where.endswith("mimic-cxr-2.0.0-split.csv.gz row 1")
    expected = {c: math.nan for c in CHEXPERT_LABELS}
    expected.update({"Pleural Effusion": 1.0})  # -1 (Cardiomegaly) ignored, blank (No Finding) unknown
    assert same_labels(d1.labels, expected)
    assert d3.labels["No Finding"] == 1.0 and d3.labels["Pleural Effusion"] == 0.0
    assert all(math.isnan(v) for v in d5.labels.values())  # study without a chexpert row


def test_mimic_uncertain_and_blank_policies(tmp_path: Path):
    root = mimic_layout(tmp_path / "mimic")
    zeros = MimicCxrJpgReader(root, uncertain="zeros", skip_bad=True)[0].labels
    ones = MimicCxrJpgReader(root, uncertain="ones", blank="zeros", skip_bad=True)[0].labels
    assert zeros["Cardiomegaly"] == 0.0 and ones["Cardiomegaly"] == 1.0
    assert math.isnan(zeros["No Finding"]) and ones["No Finding"] == 0.0 and ones["Edema"] == 0.0
    with pytest.raises(ConfigError, match="did you mean 'ones'"):
        MimicCxrJpgReader(root, uncertain="one")


def test_mimic_frontal_only_split_and_label_subset(tmp_path: Path):
    root = mimic_layout(tmp_path / "mimic")
    frontal = MimicCxrJpgReader(root, frontal_only=True, skip_bad=True)
    assert [r.image_id for r in frontal] == ["d1", "d3", "d5"]
    assert frontal.dropped_views == {"LATERAL": 1}
    train = MimicCxrJpgReader(root, split="train", label_columns=["Pleural Effusion", "Edema"])
    assert [r.image_id for r in train] == ["d1", "d2", "d5"] and list(train[0].labels) == ["Pleural Effusion",
                                                                                          "Edema"]
    assert train.skipped == []  # the bad test-split study is not looked at
    labels_only = MimicCxrJpgReader(root, reports=False)
    assert len(labels_only) == 5 and labels_only[3].report_text is None and labels_only[3].report_path is None


def test_mimic_bad_inputs_name_file_and_row(tmp_path: Path):
    root = mimic_layout(tmp_path / "mimic")
    split_csv = root / "mimic-cxr-2.0.0-split.csv"
    with pytest.raises(EmptyReportError, match=r"split\.csv row 4: .*s50000003\.txt: no text under FINDINGS"):
        MimicCxrJpgReader(root)
    (root / "files/p10/p10000032/s50000002/d3.jpg").unlink()
    (root / "files/p10/p10000032/s50000001.txt").unlink()
    with pytest.raises(BadRowError, match=r"split\.csv row 1: report file .*s50000001\.txt not found"):
        MimicCxrJpgReader(root, split="train")
    reader = MimicCxrJpgReader(root, skip_bad=True)
    assert [r.image_id for r in reader] == ["d5"]
    assert [w for w, _ in reader.skipped] == [f"{split_csv} row {n}" for n in (1, 2, 3, 4)]
    assert "d3.jpg not found" in reader.skipped[2][1]
    with pytest.raises(ConfigError, match=r"chexpert\.csv \(header row\) has no column 'Pleural Efusion'.*"
                                          r"did you mean 'Pleural Effusion'"):
        MimicCxrJpgReader(root, label_columns=["Pleural Efusion"])
    write_csv(root / "mimic-cxr-2.0.0-chexpert.csv", ["subject_id", "study_id", "Edema"],
              [("10000032", "50000001", "maybe")])
    with pytest.raises(BadRowError, match=r"split\.csv row 1: .*chexpert\.csv row 1: label column 'Edema' "
                                          r"holds 'maybe'"):
        MimicCxrJpgReader(root, label_columns=["Edema"], reports=False, split="train")
    (root / "mimic-cxr-2.0.0-metadata.csv").unlink()
    with pytest.raises(FileNotFoundError, match="mimic-cxr-2.0.0-metadata.csv"):
        MimicCxrJpgReader(root)


def test_mimic_verify_images_skips_corrupt_files(tmp_path: Path):
    root = mimic_layout(tmp_path / "mimic")
    (root / "files/p10/p10000032/s50000002/d3.jpg").write_bytes(b"\xff\xd8 truncated")
    reader = MimicCxrJpgReader(root, split="validate", verify_images=True, skip_bad=True)
    assert len(reader) == 0 and "cannot decode image file" in reader.skipped[0][1]
    assert len(MimicCxrJpgReader(root, split="validate")) == 1  # without verify_images it fails only when loaded


# ------------------------------------------------------------------------------------------- CheXpert


def chexpert_layout(root: Path) -> Path:
    rows = []
    for rel, frontal, appa, effusion in [
            ("CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg", "Frontal", "AP", "1.0"),
            ("CheXpert-v1.0-small/train/patient00001/study1/view2_lateral.jpg", "Lateral", "", "1.0"),
            ("CheXpert-v1.0-small/train/patient00002/study2/view1_frontal.jpg", "Frontal", "PA", "-1.0"),
            ("CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg", "Frontal", "PA", "")]:
        write_jpg(root / rel)
        labels = {c: "0.0" for c in CHEXPERT_LABELS}
        labels["Pleural Effusion"] = effusion
        rows.append((rel, "Female", 68, frontal, appa, *labels.values()))
    return write_csv(root / "CheXpert-v1.0-small" / "train.csv",
                     ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_LABELS], rows)


def test_chexpert_reader(tmp_path: Path):
    csv_path = chexpert_layout(tmp_path)
    reader = CheXpertReader(csv_path, tmp_path)
    assert len(reader) == 4
    first, lateral, uncertain, valid = reader.records
    assert first.image_path == tmp_path / "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg"
    assert (first.subject_id, first.study_id, first.view, first.split) == ("patient00001", "patient00001/study1",
                                                                            "AP", "train")
    assert (lateral.view, valid.split, valid.view) == ("LATERAL", "valid", "PA")
    assert first.labels["Pleural Effusion"] == 1.0 and first.labels["Cardiomegaly"] == 0.0
    assert math.isnan(uncertain.labels["Pleural Effusion"]) and math.isnan(valid.labels["Pleural Effusion"])
    assert CheXpertReader(csv_path, tmp_path, uncertain="ones")[2].labels["Pleural Effusion"] == 1.0
    frontal = CheXpertReader(csv_path, tmp_path / "CheXpert-v1.0-small", frontal_only=True, split="train")
    assert [r.image_path.name for r in frontal] == ["view1_frontal.jpg", "view1_frontal.jpg"]
    assert frontal.dropped_views == {"LATERAL": 1}  # root given as the CheXpert folder itself works too


def test_chexpert_bad_rows(tmp_path: Path):
    csv_path = chexpert_layout(tmp_path)
    (tmp_path / "CheXpert-v1.0-small/train/patient00002/study2/view1_frontal.jpg").unlink()
    with pytest.raises(BadRowError, match=r"train\.csv row 3: image file .*patient00002/study2/view1_frontal\.jpg "
                                          r"not found"):
        CheXpertReader(csv_path, tmp_path)
    reader = CheXpertReader(csv_path, tmp_path, skip_bad=True)
    assert len(reader) == 3 and reader.skipped[0][0] == f"{csv_path} row 3"
    with pytest.raises(ConfigError, match="did you mean 'Cardiomegaly'"):
        CheXpertReader(csv_path, tmp_path, label_columns=["Cardiomegally"])


# ------------------------------------------------------------------------------------------------ NIH


def test_nih_reader_on_the_real_sample():
    reader = NIHChestXray14Reader(CXR / "Data_Entry_2017_v2020_sample.csv", CXR)
    assert [r.image_id for r in reader] == ["00000001_000.png", "00027426_000.png"]
    cardiomegaly, normal = reader.records
    assert cardiomegaly.labels["Cardiomegaly"] == 1.0 and cardiomegaly.labels[NIH_LABELS[0]] == 0.0
    assert cardiomegaly.labels["No Finding"] == 0.0 and sum(cardiomegaly.labels.values()) == 1.0
    assert normal.labels["No Finding"] == 1.0 and sum(normal.labels.values()) == 1.0
    assert (cardiomegaly.subject_id, cardiomegaly.study_id, cardiomegaly.view, cardiomegaly.split) == \
        ("1", "00000001_000", "PA", None)
    for record in reader:
        image = load_xray(record.image_path)
        assert image.shape == (512, 512) and 0.0 <= image.min() and image.max() <= 1.0
        assert 0.2 < image.mean() < 0.8


def test_nih_reader_nested_folders_splits_and_bad_rows(tmp_path: Path):
    images = tmp_path / "images_001" / "images"
    for name in ("00000001_000.png", "00000002_000.png", "00000003_001.png"):
        write_png(images / name, np.full((4, 4), 50, dtype=np.uint8))
    header = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender",
              "View Position"]
    csv_path = write_csv(tmp_path / "Data_Entry_2017.csv", header, [
        ("00000001_000.png", "Effusion|Infiltration", 0, 1, 57, "M", "PA"),
        ("00000002_000.png", "No Finding", 0, 2, 40, "F", "AP"),
        ("00000003_001.png", "Efusion", 1, 3, 30, "F", "PA"),
        ("00000004_000.png", "Mass", 0, 4, 30, "F", "PA")])
    with pytest.raises(BadRowError, match=r"row 3: unknown finding 'Efusion'.*did you mean 'Effusion'"):
        NIHChestXray14Reader(csv_path, tmp_path)
    reader = NIHChestXray14Reader(csv_path, tmp_path, skip_bad=True)
    assert [r.image_id for r in reader] == ["00000001_000.png", "00000002_000.png"]
    assert reader[0].image_path == images / "00000001_000.png"  # found below images_dir
    labels = reader[0].labels
    assert [k for k, v in labels.items() if v == 1.0] == ["Effusion", "Infiltration"]
    assert [w.rsplit(" ", 1)[-1] for w, _ in reader.skipped] == ["3", "4"]
    assert "00000004_000.png not found" in reader.skipped[1][1]
    with pytest.raises(ConfigError, match="train_val_list.txt"):
        NIHChestXray14Reader(csv_path, tmp_path, split="test")
    (tmp_path / "train_val_list.txt").write_text("00000001_000.png\n00000003_001.png\n")
    (tmp_path / "test_list.txt").write_text("00000002_000.png\n00000004_000.png\n")
    test = NIHChestXray14Reader(csv_path, tmp_path, split="test", skip_bad=True)
    assert [(r.image_id, r.split) for r in test] == [("00000002_000.png", "test")]
    frontal = NIHChestXray14Reader(csv_path, tmp_path, split="test", frontal_only=True, skip_bad=True)
    assert len(frontal) == 1 and not frontal.dropped_views  # AP is frontal


# -------------------------------------------------------------------------------------------- generic


def test_generic_csv_reader(tmp_path: Path):
    for name in ("a.png", "b.png", "c.png"):
        write_png(tmp_path / "img" / name, np.full((4, 4), 9, dtype=np.uint8))
    (tmp_path / "rep").mkdir()
    (tmp_path / "rep" / "a.txt").write_text("FINDINGS: Clear.\nIMPRESSION: Normal.")
    header = ["file", "report", "report_file", "effusion", "edema", "view", "fold", "patient"]
    csv_path = write_csv(tmp_path / "list.csv", header, [
        ("img/a.png", "FINDINGS: Clear.\nIMPRESSION: Normal.", "rep/a.txt", 1, -1, "pa", "train", "P1"),
        ("img/b.png", "Plain text report, no headers.", "rep/b.txt", 0, "", "LATERAL", "train", "P2"),
        ("img/c.png", "INDICATION: cough", "rep/c.txt", "", 0, "AP", "test", "P3")])
    reader = GenericCsvReader(csv_path, tmp_path, image_column="file", report_column="report",
                              label_columns=["effusion", "edema"], view_column="view", split_column="fold",
                              subject_column="patient", skip_bad=True)
    a, b = reader.records
    assert a.report_text == "Clear. Normal." and b.report_text == "Plain text report, no headers."
    assert same_labels(a.labels, {"effusion": 1.0, "edema": math.nan}) and a.view == "PA" and a.subject_id == "P1"
    assert (a.study_id, a.split, a.image_path) == ("img/a.png", "train", tmp_path / "img/a.png")
    assert reader.skipped[0][0] == f"{csv_path} row 3" and "no text under FINDINGS" in reader.skipped[0][1]
    frontal = GenericCsvReader(csv_path, tmp_path, image_column="file", view_column="view", frontal_only=True,
                               split_column="fold", split="train")
    assert [r.image_id for r in frontal] == ["img/a.png"] and frontal.dropped_views == {"LATERAL": 1}
    by_path = GenericCsvReader(csv_path, tmp_path, image_column="file", report_column="report_file",
                               report_is_path=True, skip_bad=True)
    assert by_path[0].report_path == tmp_path / "rep/a.txt" and by_path[0].report_text == "Clear. Normal."
    assert "rep/b.txt not found" in by_path.skipped[0][1]
    with pytest.raises(ConfigError, match=r"list\.csv \(header row\) has no column 'efusion'.*'effusion'"):
        GenericCsvReader(csv_path, tmp_path, image_column="file", label_columns=["efusion"])
    with pytest.raises(ConfigError, match="needs view_column"):
        GenericCsvReader(csv_path, tmp_path, image_column="file", frontal_only=True)
    with pytest.raises(ConfigError, match="needs split_column"):
        GenericCsvReader(csv_path, tmp_path, image_column="file", split="train")
