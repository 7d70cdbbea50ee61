"""The "cxr" paired dataset: samples from a tiny MIMIC-CXR-JPG layout written here, labels with -1, study
groups, sentence mode, skipped studies, shard round trip, and the real NIH PNGs and SIIM DICOM."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Dict, Sequence

import numpy as np
import pytest
import torch
from PIL import Image

from alignkit.core.collate import collate_samples
from alignkit.core.paired import build_decoder
from alignkit.core.registry import DATASETS, ENCODERS, ConfigError
from alignkit.domains.medical.xray.synthetic.plans import FINDING_COLUMNS
from alignkit.core.shards import ShardedIterableDataset, write_shards
from alignkit.domains.medical.reports import EmptyReportError, split_sentences
from alignkit.domains.medical.xray.data import XRayReportDataset
from alignkit.domains.medical.xray.images import LoadXRay, load_xray
from alignkit.domains.medical.xray.records import CHEXPERT_LABELS

REPO = Path(__file__).resolve().parents[3]
CXR = REPO.parent / "shared" / "data" / "medical" / "cxr"
SIIM = CXR / "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"

REPORT = """FINAL REPORT
INDICATION: dyspnea.
FINDINGS: There is a small left pleural effusion. The heart size is mildly enlarged.
IMPRESSION: Small left effusion. No pneumothorax.
"""
NORMAL = "FINAL REPORT\nIMPRESSION: No acute cardiopulmonary process.\n"
NO_SECTIONS = "FINAL REPORT\nEXAMINATION: CHEST\nINDICATION: cough\n"
# (dicom_id, subject, study, split, view)
IMAGES = [("d1", "10000032", "50000001", "train", "PA"), ("d2", "10000032", "50000001", "train", "AP"),
          ("d3", "10000032", "50000001", "train", "LATERAL"), ("d4", "10000032", "50000002", "train", "PA"),
          ("d5", "11000011", "50000003", "train", "PA"), ("d6", "11000011", "50000004", "test", "PA")]
REPORTS = {"50000001": REPORT, "50000002": NORMAL, "50000003": NO_SECTIONS, "50000004": NORMAL}
LABELS = {"50000001": {"Pleural Effusion": "1.0", "Cardiomegaly": "-1.0", "No Finding": "0.0"},
          "50000002": {"No Finding": "1.0", "Pleural Effusion": "0.0"},
          "50000004": {"No Finding": "1.0"}}


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def tiny_mimic(root: Path) -> Path:
    """4 studies: s1 has PA + AP + LATERAL images, s3's report has no findings/impression, s4 is in test."""
    rng = np.random.default_rng(0)
    for dicom, subject, study, _, _ in IMAGES:
        folder = root / "files" / f"p{subject[:2]}" / f"p{subject}"
        (folder / f"s{study}").mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (24, 20), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"s{study}" / f"{dicom}.jpg", quality=95)
        (folder / f"s{study}.txt").write_text(REPORTS[study])
    write_csv(root / "mimic-cxr-2.0.0-split.csv", ["dicom_id", "study_id", "subject_id", "split"],
              [(d, st, su, sp) for d, su, st, sp, _ in IMAGES])
    write_csv(root / "mimic-cxr-2.0.0-metadata.csv", ["dicom_id", "subject_id", "study_id", "ViewPosition"],
              [(d, su, st, v) for d, su, st, _, v in IMAGES])
    studies = sorted({(su, st) for _, su, st, _, _ in IMAGES})
    write_csv(root / "mimic-cxr-2.0.0-chexpert.csv", ["subject_id", "study_id", *CHEXPERT_LABELS],
              [(su, st, *(LABELS.get(st, {}).get(c, "") for c in CHEXPERT_LABELS)) for su, st in studies])
    return root


@pytest.fixture
def mimic(tmp_path: Path) -> Path:
    return tiny_mimic(tmp_path / "mimic")


def by_id(dataset: XRayReportDataset) -> Dict[str, dict]:
    return {s["id"]: s for s in (dataset[i] for i in range(len(dataset)))}


def test_samples_labels_groups_and_skipped_studies(mimic: Path):
    ds = DATASETS.build("cxr", layout="mimic", root=str(mimic), split="train", image_size=16, skip_bad=True)
    assert isinstance(ds, XRayReportDataset) and ds.class_names == list(CHEXPERT_LABELS)
    # LATERAL dropped by frontal_only (counted), s3 skipped for its report and listed with file and row
    assert [r.image_id for r in ds.records] == ["d1", "d2", "d4"] and dict(ds.dropped_views) == {"LATERAL": 1}
    assert len(ds.skipped) == 1 and ds.skipped[0][0] == f"{mimic / 'mimic-cxr-2.0.0-split.csv'} row 5"
    samples = by_id(ds)
    d1 = samples["d1"]
    assert d1["image"].shape == (1, 16, 16) and d1["image"].dtype == torch.float32
    expected = (LoadXRay(image_size=16, ensure_channel_first=True)(ds.records[0].image_path).as_tensor() - 0.5) / 0.5
    torch.testing.assert_close(d1["image"], expected)
    assert d1["text"].startswith("There is a small left pleural effusion.") and d1["text"].endswith("No pneumothorax.")
    labels = dict(zip(CHEXPERT_LABELS, d1["labels"].tolist()))
    assert labels["Pleural Effusion"] == 1.0 and labels["No Finding"] == 0.0
    assert labels["Cardiomegaly"] == -1.0 and labels["Edema"] == -1.0  # uncertain and blank are ignored
    assert samples["d1"]["group"] == samples["d2"]["group"] != samples["d4"]["group"]
    batch = collate_samples([samples["d1"], samples["d2"], samples["d4"]])
    assert batch["labels"].shape == (3, 14) and batch["group"].tolist()[0] == batch["group"].tolist()[1]
    with pytest.raises(EmptyReportError, match=r"split.csv row 5.*skip_bad=True"):
        XRayReportDataset(root=str(mimic), split="train")


def test_label_policies_views_and_splits(mimic: Path):
    ds = XRayReportDataset(root=str(mimic), split="train", image_size=8, skip_bad=True, uncertain="ones",
                           blank="zeros", frontal_only=False, label_columns=["Cardiomegaly", "Edema"])
    assert ds.class_names == ["Cardiomegaly", "Edema"] and len(ds) == 4 and not ds.dropped_views
    assert ds[0]["labels"].tolist() == [1.0, 0.0]
    assert [r.image_id for r in XRayReportDataset(root=str(mimic), split="test", image_size=8).records] == ["d6"]


def test_sentences_mode(mimic: Path):
    ds = XRayReportDataset(root=str(mimic), split="train", image_size=8, skip_bad=True, text_mode="sentences")
    d1 = ds[0]
    assert d1["text"] == split_sentences(ds.records[0].report_text)
    assert d1["text"][0] == "There is a small left pleural effusion." and len(d1["text"]) == 4
    batch = collate_samples([ds[0], ds[2]])
    assert batch["text"] == [d1["text"], ["No acute cardiopulmonary process."]]


def test_shards_give_the_folder_samples(mimic: Path, tmp_path: Path):
    ds = XRayReportDataset(root=str(mimic), split="train", image_size=12, skip_bad=True, text_mode="sentences",
                           mean=0.4, std=[0.3])
    shards = write_shards(ds, tmp_path / "shards", max_count=2, progress=False)
    assert len(shards) == 2
    stream = ShardedIterableDataset([str(p) for p in shards], decode=build_decoder(XRayReportDataset, ds.params),
                                    shuffle=0)
    streamed = {s["id"]: s for s in stream}
    folder = by_id(ds)
    assert streamed.keys() == folder.keys()
    for key, sample in folder.items():
        got = streamed[key]
        assert got.keys() - {"__key__"} == sample.keys()  # webdataset's map stage adds the record key
        assert torch.equal(got["image"], sample["image"]) and torch.equal(got["labels"], sample["labels"])
        assert got["text"] == sample["text"] and got["group"] == sample["group"]


def test_configuration_errors(mimic: Path):
    with pytest.raises(ConfigError, match="did you mean 'mimic'"):
        XRayReportDataset(layout="mimc", root=str(mimic))
    with pytest.raises(ConfigError, match="layout 'chexpert' needs csv, root"):
        XRayReportDataset(layout="chexpert")
    with pytest.raises(ConfigError, match="did you mean 'sentences'"):
        XRayReportDataset(root=str(mimic), text_mode="sentence")
    with pytest.raises(ConfigError, match="one number"):
        XRayReportDataset(root=str(mimic), mean=[0.5, 0.5, 0.5])
    with pytest.raises(ConfigError, match="no column 'Edma'"):
        XRayReportDataset(root=str(mimic), label_columns=["Edma"])


def test_corrupt_image_names_the_file_and_row(mimic: Path):
    (mimic / "files" / "p10" / "p10000032" / "s50000002" / "d4.jpg").write_bytes(b"\xff\xd8 truncated")
    ds = XRayReportDataset(root=str(mimic), split="train", image_size=8, skip_bad=True, verify_images=False)
    with pytest.raises(ValueError, match=r"'d4' \(.*split.csv row 4\).*corrupt"):
        ds[2]
    # skip_bad alone decodes every image while indexing: the corrupt one is skipped and listed, not accepted
    screened = XRayReportDataset(root=str(mimic), split="train", image_size=8, skip_bad=True)
    assert len(screened) == len(ds) - 1 and any("d4.jpg" in reason for _, reason in screened.skipped)


def test_real_nih_pngs_and_siim_dicom(tmp_path: Path):
    nih = XRayReportDataset(layout="nih", csv=str(CXR / "Data_Entry_2017_v2020_sample.csv"), images_dir=str(CXR),
                            image_size=32)
    assert [r.image_id for r in nih.records] == ["00000001_000.png", "00027426_000.png"]
    first = nih[0]
    assert "text" not in first and first["image"].shape == (1, 32, 32)
    assert first["labels"][nih.class_names.index("Cardiomegaly")] == 1.0
    assert nih[1]["labels"][nih.class_names.index("No Finding")] == 1.0
    torch.testing.assert_close(first["image"], (torch.from_numpy(load_xray(CXR / "00000001_000.png", 32)) - 0.5)[None]
                               / 0.5)
    listing = tmp_path / "list.csv"
    write_csv(listing, ["path", "report", "Pneumothorax"], [(str(SIIM), "FINDINGS: Left pneumothorax.", "1")])
    siim = XRayReportDataset(layout="csv", csv=str(listing), root="/", report_column="report",
                             label_columns=["Pneumothorax"], frontal_only=False, image_size=32)
    sample = siim[0]
    assert sample["text"] == "Left pneumothorax." and sample["labels"].tolist() == [1.0]
    assert set(siim.raw(0)) == {"dcm", "txt", "json"}
    torch.testing.assert_close(sample["image"], (torch.from_numpy(load_xray(SIIM, 32)) - 0.5)[None] / 0.5)
    shards = write_shards(siim, tmp_path / "shards", progress=False)  # DICOM bytes decode from a shard too
    streamed = next(iter(ShardedIterableDataset([str(p) for p in shards],
                                                decode=build_decoder(XRayReportDataset, siim.params), shuffle=0)))
    assert torch.equal(streamed["image"], sample["image"])
    torch.manual_seed(0)
    tower = ENCODERS.build("small-cnn", in_channels=1, widths=[8, 16]).eval()
    with torch.no_grad():
        embedded = tower(torch.stack([nih[0]["image"], nih[1]["image"], sample["image"]]))
    assert embedded.shape == (3, 16) and torch.isfinite(embedded).all()


def test_masks_from_the_synthetic_archive_follow_the_labels(cxr_tiny) -> None:
    from alignkit.domains.medical.xray.data import XRayReportDataset
    ds = XRayReportDataset(layout="mimic", root=str(cxr_tiny), split="train", image_size=64, masks_csv="masks.csv")
    assert ds.mask_classes and len(ds.mask_classes) == 6
    seen_mask = False
    for i in range(len(ds)):
        sample = ds[i]
        masks = sample["masks"]
        assert masks.shape == (6, 64, 64) and masks.dtype == torch.bool
        for k, name in enumerate(ds.mask_classes):
            if masks[k].any():
                seen_mask = True
                # a finding with a mask is labelled present (or uncertain, -1) in its CheXpert column
                assert sample["labels"][ds.class_names.index(FINDING_COLUMNS[name])] != 0.0
    assert seen_mask


def test_masks_csv_errors_name_the_file(tmp_path, cxr_tiny) -> None:
    import shutil
    from alignkit.domains.medical.xray.data import XRayReportDataset
    root = tmp_path / "copy"
    shutil.copytree(cxr_tiny, root)
    text = (root / "masks.csv").read_text().replace("mask_path", "maskpath")
    (root / "masks.csv").write_text(text)
    with pytest.raises(ConfigError, match="mask_path"):
        XRayReportDataset(layout="mimic", root=str(root), split="train", image_size=64, masks_csv="masks.csv")


def test_path_parameters_are_resolved_against_root_not_the_current_folder(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "archive"
    (root / "lists").mkdir(parents=True)
    write_csv(root / "lists" / "train.csv", ["path", "Cardiomegaly"], [(str(CXR / "00000001_000.png"), "1")])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the current folder holds no lists/train.csv
    ds = XRayReportDataset(layout="csv", csv="lists/train.csv", root=str(root), label_columns=["Cardiomegaly"],
                           frontal_only=False, image_size=8)
    assert len(ds) == 1 and ds.reader.csv_path == root / "lists" / "train.csv"
    absolute = XRayReportDataset(layout="csv", csv=str(root / "lists" / "train.csv"), root="/", frontal_only=False,
                                 label_columns=["Cardiomegaly"], image_size=8)  # an absolute path stays as given
    assert len(absolute) == 1
    with pytest.raises(FileNotFoundError, match=r"csv .*'lists/missing\.csv' not found: looked for "
                                                 rf"{root}/lists/missing\.csv .*resolved against root"):
        XRayReportDataset(layout="csv", csv="lists/missing.csv", root=str(root), frontal_only=False)
    with pytest.raises(FileNotFoundError, match=rf"masks_csv 'masks\.csv' not found: looked for {root}/masks\.csv"):
        XRayReportDataset(layout="csv", csv="lists/train.csv", root=str(root), label_columns=["Cardiomegaly"],
                          frontal_only=False, masks_csv="masks.csv")
    nih = XRayReportDataset(layout="nih", csv="Data_Entry_2017_v2020_sample.csv", root=str(CXR), image_size=8)
    assert len(nih) == 2  # NIH's csv is found under root too
