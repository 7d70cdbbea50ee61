"""A synthetic chest X-ray archive in the real MIMIC-CXR-JPG layout (the data of ``alignkit demo xray``).

:func:`write_synthetic_mimic` writes::

    root/
      files/p{subject_id[:2]}/p{subject_id}/s{study_id}/{dicom_id}.jpg   grey JPEG, image_size x image_size
      files/p{subject_id[:2]}/p{subject_id}/s{study_id}.txt              free-text report (MIMIC style)
      mimic-cxr-2.0.0-chexpert.csv    subject_id, study_id + the 14 CheXpert columns (1.0 / 0.0 / -1.0 / blank)
      mimic-cxr-2.0.0-split.csv       dicom_id, study_id, subject_id, split (train / validate / test, by subject)
      mimic-cxr-2.0.0-metadata.csv    dicom_id, subject_id, study_id, ViewPosition (PA / AP / LATERAL), Rows, ...
      masks/{dicom_id}_{finding}.png  uint8 0/255 mask of each finding present on a frontal image
      masks.csv                       one row per frontal image and finding: dicom_id, subject_id, study_id,
                                      finding, present (0/1: drawn), pixels (mask area), severity (0..1, blank
                                      if absent), mask_path (relative to root; blank for an empty mask)

Images: :mod:`.render`; findings and their masks: :mod:`.findings`; look-alikes and devices: :mod:`.overlays`;
reports and labels: :mod:`.reports`; study plans: :mod:`.plans`. A ``impression_only_fraction`` of reports has no
FINDINGS section, a ``findings_only_fraction`` no IMPRESSION, and an ``unsectioned_fraction`` no headers at all.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
from PIL import Image

from alignkit.domains.medical.xray.synthetic.plans import CHEXPERT_LABELS, FINDINGS, StudyPlan, plan_archive
from alignkit.domains.medical.xray.synthetic.render import render_frontal, render_lateral
from alignkit.domains.medical.xray.synthetic.reports import examination, write_report

METADATA_COLUMNS = ("dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition",
                    "Rows", "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning",
                    "ViewCodeSequence_CodeMeaning", "PatientOrientationCodeSequence_CodeMeaning")
MASK_COLUMNS = ("dicom_id", "subject_id", "study_id", "finding", "present", "pixels", "severity", "mask_path")


def _study_dir(root: Path, plan: StudyPlan) -> Path:
    sid = plan.subject.subject_id
    return root / "files" / f"p{sid[:2]}" / f"p{sid}" / f"s{plan.study_id}"


def write_synthetic_mimic(root: str | Path, num_studies: int, image_size: int = 96, seed: int = 0,
                          split_fractions: Sequence[float] = (0.8, 0.05, 0.15), lateral_fraction: float = 0.25,
                          impression_only_fraction: float = 0.04, findings_only_fraction: float = 0.04,
                          unsectioned_fraction: float = 0.01, jpeg_quality: int = 95) -> Path:
    """Write a synthetic MIMIC-CXR-JPG archive of ``num_studies`` studies under ``root`` (see the module
    docstring) and return ``root``. Deterministic given ``seed``; a larger archive extends a smaller one."""
    if num_studies < 1 or image_size < 32:
        raise ValueError(f"write_synthetic_mimic needs num_studies >= 1 and image_size >= 32; got {num_studies}, "
                         f"{image_size}")
    root = Path(root)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    plans = plan_archive(num_studies, seed, split_fractions, lateral_fraction, impression_only_fraction,
                         findings_only_fraction, unsectioned_fraction)
    chexpert_rows, split_rows, meta_rows, mask_rows = [], [], [], []
    for plan in plans:
        study_dir = _study_dir(root, plan)
        study_dir.mkdir(parents=True, exist_ok=True)
        sub = plan.subject
        image, masks = render_frontal(plan, image_size)
        images = [(plan.dicom_ids[0], image, plan.view)]
        if plan.has_lateral:
            images.append((plan.dicom_ids[1], render_lateral(plan, image_size), "LATERAL"))
        report, labels = write_report(plan, np.random.default_rng([seed, int(plan.study_id), 7]))
        (study_dir.parent / f"s{plan.study_id}.txt").write_text(report)
        chexpert_rows.append([sub.subject_id, plan.study_id] + [_label_cell(labels.get(c)) for c in CHEXPERT_LABELS])
        exam = examination(plan)
        for dicom_id, pixels, view in images:
            Image.fromarray(pixels, mode="L").save(study_dir / f"{dicom_id}.jpg", quality=jpeg_quality)
            split_rows.append([dicom_id, plan.study_id, sub.subject_id, sub.split])
            meaning = {"PA": "postero-anterior", "AP": "antero-posterior", "LATERAL": "lateral"}[view]
            meta_rows.append([dicom_id, sub.subject_id, plan.study_id, exam, view, image_size, image_size, plan.date,
                              plan.time, exam, meaning, "Recumbent" if plan.view == "AP" else "Erect"])
        dicom_id = plan.dicom_ids[0]
        for name in FINDINGS:
            st = plan.findings[name]
            pixels = int(masks[name].sum()) if name in masks else 0
            path = f"masks/{dicom_id}_{name}.png" if pixels else ""
            if pixels:
                Image.fromarray(masks[name].astype(np.uint8) * 255, mode="L").save(root / path)
            mask_rows.append([dicom_id, sub.subject_id, plan.study_id, name, int(st.present), pixels,
                              f"{st.severity:.3f}" if st.present else "", path])
    _write_csv(root / "mimic-cxr-2.0.0-chexpert.csv", ("subject_id", "study_id") + CHEXPERT_LABELS, chexpert_rows)
    _write_csv(root / "mimic-cxr-2.0.0-split.csv", ("dicom_id", "study_id", "subject_id", "split"), split_rows)
    _write_csv(root / "mimic-cxr-2.0.0-metadata.csv", METADATA_COLUMNS, meta_rows)
    _write_csv(root / "masks.csv", MASK_COLUMNS, mask_rows)
    return root


def _label_cell(value: Optional[float]) -> str:
    return "" if value is None else f"{value:.1f}"


def _write_csv(path: Path, header: Sequence[str], rows: List[list]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
