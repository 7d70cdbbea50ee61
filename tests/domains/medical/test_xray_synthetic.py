"""The synthetic MIMIC-CXR-JPG archive: layout, CSVs, labels against the report text, masks, determinism."""
from __future__ import annotations

import copy
import csv
import re
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import pytest
from PIL import Image

from alignkit.domains.medical.xray.synthetic.archive import write_synthetic_mimic
from alignkit.domains.medical.xray.synthetic.plans import CHEXPERT_LABELS, FINDING_COLUMNS, FINDINGS, plan_archive
from alignkit.domains.medical.xray.synthetic.render import render_frontal

NUM_STUDIES = 150
SIZE = 64


def read_csv(path: Path) -> List[Dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_mimic(tmp_path_factory.mktemp("mimic"), NUM_STUDIES, image_size=SIZE, seed=3)


def report_path(root: Path, subject_id: str, study_id: str) -> Path:
    return root / "files" / f"p{subject_id[:2]}" / f"p{subject_id}" / f"s{study_id}.txt"


# --------------------------------------------------------------------------- layout


def test_csv_columns_and_joins(archive: Path) -> None:
    chexpert = read_csv(archive / "mimic-cxr-2.0.0-chexpert.csv")
    split = read_csv(archive / "mimic-cxr-2.0.0-split.csv")
    meta = read_csv(archive / "mimic-cxr-2.0.0-metadata.csv")
    assert list(chexpert[0]) == ["subject_id", "study_id", *CHEXPERT_LABELS]
    assert list(split[0]) == ["dicom_id", "study_id", "subject_id", "split"]
    assert list(meta[0])[:3] == ["dicom_id", "subject_id", "study_id"]
    assert {"ViewPosition", "Rows", "Columns", "StudyDate"} <= set(meta[0])
    assert len(chexpert) == NUM_STUDIES
    studies = {(r["subject_id"], r["study_id"]) for r in chexpert}
    assert len(studies) == NUM_STUDIES
    # split and metadata list the same images, and every image belongs to a labelled study
    assert sorted(r["dicom_id"] for r in split) == sorted(r["dicom_id"] for r in meta)
    by_dicom = {r["dicom_id"]: r for r in split}
    for r in meta:
        s = by_dicom[r["dicom_id"]]
        assert (s["subject_id"], s["study_id"]) == (r["subject_id"], r["study_id"])
    assert {(r["subject_id"], r["study_id"]) for r in meta} == studies
    # MIMIC splits by subject
    splits_of: Dict[str, set] = {}
    for r in split:
        splits_of.setdefault(r["subject_id"], set()).add(r["split"])
    assert all(len(v) == 1 for v in splits_of.values())
    assert set.union(*splits_of.values()) == {"train", "validate", "test"}
    assert len(splits_of) < NUM_STUDIES  # some subjects have several studies


def test_image_and_report_paths(archive: Path) -> None:
    meta = read_csv(archive / "mimic-cxr-2.0.0-metadata.csv")
    for r in meta:
        sub, study = r["subject_id"], r["study_id"]
        assert re.fullmatch(r"1\d{7}", sub) and re.fullmatch(r"5\d{7}", study)
        assert re.fullmatch(r"([0-9a-f]{8}-){4}[0-9a-f]{8}", r["dicom_id"])
        path = archive / "files" / f"p{sub[:2]}" / f"p{sub}" / f"s{study}" / f"{r['dicom_id']}.jpg"
        with Image.open(path) as im:
            assert im.format == "JPEG" and im.mode == "L"
            assert im.size == (int(r["Columns"]), int(r["Rows"])) == (SIZE, SIZE)
        assert report_path(archive, sub, study).read_text().lstrip().startswith("FINAL REPORT")


def test_lateral_images_beside_frontal_ones(archive: Path) -> None:
    meta = read_csv(archive / "mimic-cxr-2.0.0-metadata.csv")
    views: Dict[str, List[str]] = {}
    for r in meta:
        views.setdefault(r["study_id"], []).append(r["ViewPosition"])
    assert {v for vs in views.values() for v in vs} == {"PA", "AP", "LATERAL"}
    frontal = [r for r in meta if r["ViewPosition"] in ("PA", "AP")]
    assert len(frontal) == NUM_STUDIES  # a frontal-only filter keeps one image per study ...
    assert len(meta) - len(frontal) >= 10  # ... and drops the laterals
    assert all(sorted(vs) in (["AP"], ["PA"], ["LATERAL", "PA"]) for vs in views.values())


# --------------------------------------------------------------------------- reports and labels

TERMS = {  # how the six findings are written
    "Cardiomegaly": ("cardiomegaly", "enlarged cardiac silhouette", "enlargement of the cardiac silhouette"),
    "Pleural Effusion": ("effusion",),
    "Pneumothorax": ("pneumothora",),
    "Lung Lesion": ("nodule", "nodular"),
    "Consolidation": ("consolidation",),
    "Edema": ("edema", "vascular congestion"),
}
UNCERTAIN = re.compile(r"\b(possible|questionable|may|cannot be excluded)\b")
NEGATION = re.compile(r"\b(no|without)\b")


def body_of(report: str) -> str:
    """FINDINGS + IMPRESSION (the whole text after the banner when the report has no sections)."""
    starts = [m.end() for m in re.finditer(r"(FINDINGS|IMPRESSION):", report)]
    return report[min(starts):] if starts else report.split("FINAL REPORT", 1)[1]


def label_from_text(text: str, terms: tuple) -> Optional[float]:
    """A hand-written CheXpert-style rule: per mention, uncertain if the sentence has an uncertainty cue, negated if
    'no'/'without' precedes the term in its sentence, else positive; positive > uncertain > negated."""
    found = set()
    for sentence in re.split(r"(?<=\.)\s+", " ".join(text.lower().split())):
        for term in terms:
            for m in re.finditer(term, sentence):
                if UNCERTAIN.search(sentence):
                    found.add(-1.0)
                elif NEGATION.search(sentence[:m.start()]):
                    found.add(0.0)
                else:
                    found.add(1.0)
    for value in (1.0, -1.0, 0.0):
        if value in found:
            return value
    return None


def test_labels_agree_with_report_text(archive: Path) -> None:
    seen = {col: set() for col in TERMS}
    for row in read_csv(archive / "mimic-cxr-2.0.0-chexpert.csv"):
        text = body_of(report_path(archive, row["subject_id"], row["study_id"]).read_text())
        for col, terms in TERMS.items():
            expected = label_from_text(text, terms)
            got = float(row[col]) if row[col] else None
            assert got == expected, f"study {row['study_id']} {col}: csv {got}, text says {expected}:\n{text}"
            seen[col].add(got)
        if row["No Finding"] == "1.0":
            assert all(row[c] in ("", "0.0") for c in CHEXPERT_LABELS if c not in ("No Finding", "Support Devices"))
    for col, values in seen.items():  # every column has positives, negations and unmentioned studies
        assert {1.0, 0.0, None} <= values, (col, values)
    assert any(-1.0 in v for v in seen.values())


def test_report_phrasing_and_sections(archive: Path) -> None:
    reports = [p.read_text() for p in sorted((archive / "files").rglob("s*.txt"))]
    assert len(reports) == NUM_STUDIES
    low = " ".join(" ".join(r.lower().split()) for r in reports)
    for phrase in ("no pleural effusion", "without pneumothorax", "no acute cardiopulmonary process",
                   "examination:", "indication:", "comparison:"):
        assert phrase in low, phrase
    no_findings = [r for r in reports if "IMPRESSION:" in r and "FINDINGS:" not in r]
    assert no_findings, "some reports lack a FINDINGS section"
    assert sum("FINDINGS:" in r and "IMPRESSION:" in r for r in reports) > 0.8 * NUM_STUDIES
    # varied phrasing: many distinct sentences
    sentences = {s for r in reports for s in re.split(r"(?<=\.)\s+", " ".join(body_of(r).split()))}
    assert len(sentences) > 150


# --------------------------------------------------------------------------- masks and images


def test_masks_exactly_for_present_findings(archive: Path) -> None:
    labels = {r["study_id"]: r for r in read_csv(archive / "mimic-cxr-2.0.0-chexpert.csv")}
    frontal = {r["dicom_id"] for r in read_csv(archive / "mimic-cxr-2.0.0-metadata.csv")
               if r["ViewPosition"] != "LATERAL"}
    rows = read_csv(archive / "masks.csv")
    assert len(rows) == len(frontal) * len(FINDINGS)
    assert {r["dicom_id"] for r in rows} == frontal
    present_count = {f: 0 for f in FINDINGS}
    for r in rows:
        label = labels[r["study_id"]][FINDING_COLUMNS[r["finding"]]]
        if r["present"] == "1":
            present_count[r["finding"]] += 1
            mask = np.asarray(Image.open(archive / r["mask_path"]))
            assert mask.shape == (SIZE, SIZE) and set(np.unique(mask)) == {0, 255}
            assert (mask > 0).sum() == int(r["pixels"]) > 0
            assert 0 <= float(r["severity"]) <= 1
            assert label in ("1.0", "-1.0")  # a drawn finding is reported, as positive or (when subtle) uncertain
        else:
            assert r["mask_path"] == r["severity"] == "" and r["pixels"] == "0"
            assert not (archive / "masks" / f"{r['dicom_id']}_{r['finding']}.png").exists()
            assert label != "1.0"
    assert min(present_count.values()) >= 8
    assert len(list((archive / "masks").iterdir())) == sum(present_count.values())


@pytest.mark.parametrize("finding", FINDINGS)
def test_a_finding_changes_the_image_inside_its_mask(finding: str) -> None:
    """Drawing a finding into an otherwise identical study changes the pixels under its mask, hardly any others."""
    base = plan_archive(1, seed=11)[0]
    with_it, without = copy.deepcopy(base), copy.deepcopy(base)
    state = with_it.findings[finding]
    state.present, state.severity = True, 0.9
    state.radius = 0.04 if finding == "nodule" else state.radius
    without.findings[finding].present = False
    img_with, masks = render_frontal(with_it, 96)
    img_without, masks_without = render_frontal(without, 96)
    assert finding in masks and finding not in masks_without
    mask = masks[finding]
    diff = img_with.astype(float) - img_without.astype(float)
    inside, outside = diff[mask].mean(), np.abs(diff[~mask]).mean()
    if finding == "pneumothorax":  # pleural air: darker, no lung markings
        assert inside < -4 and abs(inside) > 3 * outside, (inside, outside)
    else:  # opacities
        assert inside > 8 and inside > 3 * outside, (inside, outside)


def test_findings_prevalence_and_severity() -> None:
    plans = plan_archive(3000, seed=0)
    for name in FINDINGS:
        present = [p.findings[name] for p in plans if p.findings[name].present]
        assert 0.15 <= len(present) / len(plans) <= 0.35, name
        severities = np.array([s.severity for s in present])
        assert (severities < 0.2).mean() > 0.1 and (severities > 0.8).mean() > 0.1, name
    co = np.mean([p.findings["edema"].present and p.findings["cardiomegaly"].present for p in plans])
    prev = [np.mean([p.findings[n].present for p in plans]) for n in ("edema", "cardiomegaly")]
    assert co > 1.5 * prev[0] * prev[1]  # heart failure: edema and cardiomegaly co-occur


# --------------------------------------------------------------------------- determinism


def test_same_seed_same_bytes_and_larger_archives_extend_smaller(tmp_path: Path) -> None:
    a = write_synthetic_mimic(tmp_path / "a", 8, image_size=48, seed=5)
    b = write_synthetic_mimic(tmp_path / "b", 8, image_size=48, seed=5)
    c = write_synthetic_mimic(tmp_path / "c", 8, image_size=48, seed=6)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert (a / "mimic-cxr-2.0.0-chexpert.csv").read_text() != (c / "mimic-cxr-2.0.0-chexpert.csv").read_text()
    small, large = plan_archive(5, seed=5), plan_archive(12, seed=5)
    assert [p.study_id for p in small] == [p.study_id for p in large[:5]]
    assert all(np.array_equal(render_frontal(p, 48)[0], render_frontal(q, 48)[0]) for p, q in zip(small, large))


def test_bad_arguments_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="split_fractions"):
        write_synthetic_mimic(tmp_path, 4, split_fractions=(0.5, 0.2, 0.2))
    with pytest.raises(ValueError, match="num_studies"):
        write_synthetic_mimic(tmp_path, 0)
