"""Readers of chest X-ray archive layouts, each indexing an archive into :class:`~.records.XRayRecord` s (one per
image): :class:`MimicCxrJpgReader` (MIMIC-CXR-JPG on PhysioNet, physionet.org/content/mimic-cxr-jpg),
:class:`CheXpertReader`, :class:`NIHChestXray14Reader` and :class:`GenericCsvReader`. Shared options:
:class:`~.records.XRayRecordReader`.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

from alignkit.core.paths import data_path
from alignkit.core.registry import ConfigError, did_you_mean
from alignkit.core.text import read_text
from alignkit.domains.medical.reports import EmptyReportError
from alignkit.domains.medical.tables import BadRowError, read_table, require_columns
from alignkit.domains.medical.xray.images import XRAY_SUFFIXES, PathLike
from alignkit.domains.medical.xray.records import (CHEXPERT_LABELS, FRONTAL_VIEWS, NIH_LABELS, NO_FINDING, XRayRecord,
                                                   XRayRecordReader)

MIMIC_SPLIT_CSV = "mimic-cxr-2.0.0-split.csv"
MIMIC_CHEXPERT_CSV = "mimic-cxr-2.0.0-chexpert.csv"
MIMIC_METADATA_CSV = "mimic-cxr-2.0.0-metadata.csv"


def _label_columns(columns: Sequence[str]) -> List[Tuple[str, Optional[str]]]:
    return [(f"label_columns[{k}]", c) for k, c in enumerate(columns)]


def _clean_id(value: str) -> str:
    """An id cell as text: stripped, ``"10000032.0"`` (a float written by pandas) -> ``"10000032"``."""
    text = value.strip()
    return text[:-2] if re.fullmatch(r"\d+\.0", text) else text


def _table_file(root: Path, name: str) -> Path:
    """``root/name``, or ``root/name.gz`` as PhysioNet ships it."""
    gz = root / f"{name}.gz"
    return gz if not (root / name).is_file() and gz.is_file() else root / name


class MimicCxrJpgReader(XRayRecordReader):
    """MIMIC-CXR-JPG (PhysioNet 2.0.0/2.1.0): one record per image of ``mimic-cxr-2.0.0-split.csv``.

    Layout under ``root`` (each CSV may be gzipped, ``.csv.gz``):

    - ``mimic-cxr-2.0.0-split.csv``: ``dicom_id, study_id, subject_id, split`` (``train``/``validate``/``test``);
    - ``mimic-cxr-2.0.0-metadata.csv``: ``dicom_id`` and ``ViewPosition`` (+ other columns, unused);
    - ``mimic-cxr-2.0.0-chexpert.csv``: ``subject_id, study_id`` + ``label_columns`` (1.0, 0.0, -1.0, blank);
      a study without a row there has every label ``nan``;
    - images ``files/p{subject_id[:2]}/p{subject_id}/s{study_id}/{dicom_id}.{image_extension}``
      (``"dcm"`` reads the MIMIC-CXR DICOM release);
    - reports ``files/p{subject_id[:2]}/p{subject_id}/s{study_id}.txt`` under ``reports_root`` (default
      ``root``); ``reports=False`` reads none (label-only use).

    The three CSVs are joined on ``dicom_id`` (view) and ``(subject_id, study_id)`` (labels). ``where`` is the
    split CSV and row. Other options: :class:`~.records.XRayRecordReader`.
    """

    def __init__(self, root: PathLike, split: Optional[str] = None, reports_root: Optional[PathLike] = None,
                 reports: bool = True, image_extension: str = "jpg", label_columns: Sequence[str] = CHEXPERT_LABELS,
                 frontal_only: bool = False, uncertain: str = "ignore", blank: str = "ignore", skip_bad: bool = False,
                 verify_images: Optional[bool] = None, report_sections: Sequence[str] = ("findings", "impression"),
                 report_rule: str = "any"):
        super().__init__(split=split, frontal_only=frontal_only, uncertain=uncertain, blank=blank, skip_bad=skip_bad,
                         verify_images=verify_images, report_sections=report_sections, report_rule=report_rule)
        self.root = Path(root)
        self.reports_root = Path(reports_root) if reports_root is not None else self.root
        label_columns = list(label_columns)
        split_path = _table_file(self.root, MIMIC_SPLIT_CSV)
        split_header, split_rows = read_table(split_path)
        require_columns(split_path, split_header, [("split csv", c) for c in ("dicom_id", "study_id", "subject_id",
                                                                             "split")])
        meta_path = _table_file(self.root, MIMIC_METADATA_CSV)
        meta_header, meta_rows = read_table(meta_path)
        require_columns(meta_path, meta_header, [("metadata csv", "dicom_id"), ("metadata csv", "ViewPosition")])
        views = {_clean_id(r["dicom_id"]): r["ViewPosition"].strip().upper() or None for r in meta_rows}
        labels_path = _table_file(self.root, MIMIC_CHEXPERT_CSV)
        labels_header, labels_rows = read_table(labels_path)
        require_columns(labels_path, labels_header, [("chexpert csv", "subject_id"), ("chexpert csv", "study_id"),
                                                     *_label_columns(label_columns)])
        study_labels = {(_clean_id(r["subject_id"]), _clean_id(r["study_id"])): (n, r)
                        for n, r in enumerate(labels_rows, start=1)}
        reports_cache: Dict[Tuple[str, str], Union[str, BadRowError, EmptyReportError]] = {}

        def make(dicom: str, subject: str, study: str, row_split: str, view: Optional[str], where: str) -> XRayRecord:
            if not (dicom and subject and study):
                raise BadRowError("empty dicom_id, subject_id or study_id")
            folder = self.root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"
            image = self._image(folder / f"{dicom}.{image_extension.lstrip('.')}")
            if (subject, study) in study_labels:
                n, row = study_labels[(subject, study)]
                labels = self._labels(row, label_columns, where=f"{labels_path} row {n}")
            else:
                labels = {c: math.nan for c in label_columns}
            report_path, text = None, None
            if reports:
                report_path = self.reports_root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}.txt"
                if (subject, study) not in reports_cache:  # a study's images share one report
                    try:
                        reports_cache[(subject, study)] = self._report_file(report_path)
                    except (BadRowError, EmptyReportError) as exc:
                        reports_cache[(subject, study)] = exc
                cached = reports_cache[(subject, study)]
                if isinstance(cached, Exception):
                    raise cached
                text = cached
            return XRayRecord(image_path=image, image_id=dicom, study_id=study, subject_id=subject, labels=labels,
                              view=view, split=row_split, where=where, report_path=report_path, report_text=text)

        for n, row in enumerate(split_rows, start=1):
            row_split = row["split"].strip()
            if split is not None and row_split != split:
                continue
            dicom = _clean_id(row["dicom_id"])
            view = views.get(dicom)
            if not self._keep_view(view, view in FRONTAL_VIEWS):
                continue
            where = f"{split_path} row {n}"
            self._add(where, lambda: make(dicom, _clean_id(row["subject_id"]), _clean_id(row["study_id"]),
                                          row_split, view, where))
        self._finish("MIMIC-CXR-JPG", split_path)


_CHEXPERT_STUDY = re.compile(r"(patient\d+)[/\\](study\d+)")


class CheXpertReader(XRayRecordReader):
    """CheXpert (``train.csv`` / ``valid.csv``): one record per row.

    ``csv``: relative to ``root`` unless absolute. Columns: ``Path`` (relative to ``root``; when ``root`` is the ``CheXpert-v1.0(-small)`` folder itself, the
    path's first folder is dropped), ``Sex``, ``Age`` (unused), ``Frontal/Lateral``, ``AP/PA`` and
    ``label_columns`` (default the 14 :data:`~.records.CHEXPERT_LABELS`; 1.0, 0.0, -1.0, blank).

    ``subject_id`` / ``study_id``: ``patientNNNNN`` / ``patientNNNNN/studyN`` from the path; ``split``: the
    path's ``train``/``valid``/``test`` folder; ``view``: ``LATERAL`` for lateral images, else the ``AP/PA``
    value (``FRONTAL`` if blank). ``frontal_only`` keeps ``Frontal/Lateral == Frontal``. No reports.
    Other options: :class:`~.records.XRayRecordReader`.
    """

    def __init__(self, csv: PathLike, root: PathLike, split: Optional[str] = None,
                 label_columns: Sequence[str] = CHEXPERT_LABELS, frontal_only: bool = False,
                 uncertain: str = "ignore", blank: str = "ignore", skip_bad: bool = False, verify_images: Optional[bool] = None):
        super().__init__(split=split, frontal_only=frontal_only, uncertain=uncertain, blank=blank, skip_bad=skip_bad,
                         verify_images=verify_images)
        self.root = Path(root)
        self.csv_path = data_path(csv, self.root, "csv")
        label_columns = list(label_columns)
        header, rows = read_table(self.csv_path)
        require_columns(self.csv_path, header, [("image column", "Path"),
                                                ("frontal_only", "Frontal/Lateral" if frontal_only else None),
                                                *_label_columns(label_columns)])

        def make(rel: str, view: Optional[str], row: Mapping[str, str], row_split: Optional[str],
                 where: str) -> XRayRecord:
            if not rel:
                raise BadRowError("empty Path")
            parts = Path(rel).parts
            candidates = [self.root / rel] + ([self.root.joinpath(*parts[1:])] if len(parts) > 1 else [])
            image = self._image(next((c for c in candidates if c.is_file()), candidates[0]))
            match = _CHEXPERT_STUDY.search(rel)
            subject, study = (match.group(1), f"{match.group(1)}/{match.group(2)}") if match else \
                (Path(rel).parent.parent.name, str(Path(rel).parent))
            return XRayRecord(image_path=image, image_id=rel, study_id=study, subject_id=subject,
                              labels=self._labels(row, label_columns), view=view, split=row_split, where=where)

        for n, row in enumerate(rows, start=1):
            rel = row["Path"].strip()
            row_split = next((p for p in Path(rel).parts if p in ("train", "valid", "test")), None)
            if split is not None and row_split != split:
                continue
            orientation = row.get("Frontal/Lateral", "").strip().lower()
            view = ("LATERAL" if orientation == "lateral" else (row.get("AP/PA", "").strip().upper() or "FRONTAL")) \
                if orientation else None
            if not self._keep_view(view, orientation == "frontal"):
                continue
            where = f"{self.csv_path} row {n}"
            self._add(where, lambda: make(rel, view, row, row_split, where))
        self._finish("CheXpert", self.csv_path)


class NIHChestXray14Reader(XRayRecordReader):
    """NIH ChestX-ray14: ``Data_Entry_2017*.csv`` (``Image Index``, ``Finding Labels``, ``Patient ID``,
    ``View Position``, ...), one record per row.

    ``Finding Labels`` is pipe-separated (``Effusion|Infiltration``) or ``No Finding``. ``labels``: each of
    :data:`NIH_LABELS` 1.0 if listed else 0.0 (the dataset has no uncertain or blank labels), plus
    ``"No Finding"`` (1.0 iff nothing is listed). An unknown finding name, or ``No Finding`` together with a
    finding, is a bad row.

    Images: ``images_dir/<Image Index>``, or anywhere below ``images_dir`` (the release spreads them over
    ``images_001/images/`` ... ``images_012/images/``; the folder is indexed once when needed).
    ``subject_id``: ``Patient ID``; ``study_id``: the image name without suffix (each follow-up is a study);
    ``view``: ``View Position``. ``split``: ``train`` / ``test`` from the official ``train_val_list.txt`` /
    ``test_list.txt`` beside the CSV when present, else None (then ``split`` cannot be filtered on).
    No reports. Other options: :class:`~.records.XRayRecordReader`.
    """

    def __init__(self, csv: PathLike, images_dir: PathLike, split: Optional[str] = None, frontal_only: bool = False,
                 skip_bad: bool = False, verify_images: Optional[bool] = None):
        super().__init__(split=split, frontal_only=frontal_only, skip_bad=skip_bad, verify_images=verify_images)
        self.images_dir = Path(images_dir)
        self.csv_path = data_path(csv, None, "csv")
        header, rows = read_table(self.csv_path)
        require_columns(self.csv_path, header, [("image column", "Image Index"), ("label column", "Finding Labels")])
        splits = self._official_splits()
        if split is not None and splits is None:
            raise ConfigError(f"split='{split}' needs the official train_val_list.txt and test_list.txt beside "
                              f"{self.csv_path}; put them there or pass split=None")
        self._by_name: Optional[Dict[str, Path]] = None

        def make(name: str, findings: str, row: Mapping[str, str], view: Optional[str], row_split: Optional[str],
                 where: str) -> XRayRecord:
            if not name:
                raise BadRowError("empty Image Index")
            names = [f.strip() for f in findings.split("|") if f.strip()]
            unknown = [f for f in names if f not in NIH_LABELS and f != NO_FINDING]
            if unknown:
                raise BadRowError(f"unknown finding '{unknown[0]}' in Finding Labels {findings!r}"
                                  f"{did_you_mean(unknown[0], (*NIH_LABELS, NO_FINDING))}")
            if not names or (NO_FINDING in names and len(names) > 1):
                raise BadRowError(f"Finding Labels {findings!r} must list findings or be 'No Finding' alone")
            labels = {label: float(label in names) for label in NIH_LABELS}
            labels[NO_FINDING] = float(names == [NO_FINDING])
            return XRayRecord(image_path=self._image(self._find(name)), image_id=name, study_id=Path(name).stem,
                              subject_id=_clean_id(row.get("Patient ID", "")), labels=labels, view=view,
                              split=row_split, where=where)

        for n, row in enumerate(rows, start=1):
            name = row["Image Index"].strip()
            row_split = splits.get(name) if splits is not None else None
            if split is not None and row_split != split:
                continue
            view = row.get("View Position", "").strip().upper() or None
            if not self._keep_view(view, view in FRONTAL_VIEWS):
                continue
            where = f"{self.csv_path} row {n}"
            self._add(where, lambda: make(name, row["Finding Labels"], row, view, row_split, where))
        self._finish("NIH ChestX-ray14", self.csv_path)

    def _official_splits(self) -> Optional[Dict[str, str]]:
        lists = {"train": self.csv_path.parent / "train_val_list.txt", "test": self.csv_path.parent / "test_list.txt"}
        if not all(p.is_file() for p in lists.values()):
            return None
        return {line.strip(): name for name, p in lists.items()
                for line in read_text(p, what="split list").splitlines() if line.strip()}

    def _find(self, name: str) -> Path:
        direct = self.images_dir / name
        if direct.is_file():
            return direct
        if self._by_name is None:
            self._by_name = {p.name: p for p in self.images_dir.rglob("*") if p.suffix.lower() in XRAY_SUFFIXES}
        return self._by_name.get(name, direct)


class GenericCsvReader(XRayRecordReader):
    """Any CSV that lists images: one record per row, columns named by the parameters.

    ``csv``: relative to ``root`` unless absolute. ``image_column``: image path relative to ``root``; ``report_column``: the report text (or, with
    ``report_is_path``, a report file relative to ``root``), None for no reports; ``label_columns``: label
    columns holding 1, 0, -1 or blank; ``split_column``, ``view_column``, ``study_column``,
    ``subject_column``: optional (``study_id`` defaults to the image path, ``subject_id`` to ``""``).
    ``frontal_only`` needs ``view_column`` (PA/AP kept); ``split`` needs ``split_column``.
    Other options: :class:`~.records.XRayRecordReader`.
    """

    def __init__(self, csv: PathLike, root: PathLike, image_column: str = "path", report_column: Optional[str] = None,
                 label_columns: Sequence[str] = (), split: Optional[str] = None, split_column: Optional[str] = None,
                 view_column: Optional[str] = None, study_column: Optional[str] = None,
                 subject_column: Optional[str] = None, report_is_path: bool = False, frontal_only: bool = False,
                 uncertain: str = "ignore", blank: str = "ignore", skip_bad: bool = False, verify_images: Optional[bool] = None,
                 report_sections: Sequence[str] = ("findings", "impression"), report_rule: str = "any"):
        super().__init__(split=split, frontal_only=frontal_only, uncertain=uncertain, blank=blank, skip_bad=skip_bad,
                         verify_images=verify_images, report_sections=report_sections, report_rule=report_rule)
        self.root = Path(root)
        self.csv_path = data_path(csv, self.root, "csv")
        label_columns = [label_columns] if isinstance(label_columns, str) else list(label_columns)
        if split is not None and split_column is None:
            raise ConfigError(f"split='{split}' needs split_column (the column of {self.csv_path} naming each split)")
        if frontal_only and view_column is None:
            raise ConfigError("frontal_only=True needs view_column (the column holding PA/AP/LATERAL)")
        header, rows = read_table(self.csv_path)
        require_columns(self.csv_path, header, [
            ("image_column", image_column), ("report_column", report_column), ("split_column", split_column),
            ("view_column", view_column), ("study_column", study_column), ("subject_column", subject_column),
            *_label_columns(label_columns)])

        def make(row: Mapping[str, str], view: Optional[str], row_split: Optional[str], where: str) -> XRayRecord:
            rel = row[image_column].strip()
            if not rel:
                raise BadRowError(f"empty image path in column '{image_column}'")
            image = self._image(self.root / rel)
            report_path, text = None, None
            if report_column is not None:
                cell = row[report_column]
                if report_is_path:
                    report_path = self.root / cell.strip()
                    text = self._report_file(report_path)
                else:
                    text = self._report(cell, source=f"report column '{report_column}'")
            return XRayRecord(image_path=image, image_id=rel,
                              study_id=_clean_id(row[study_column]) if study_column else rel,
                              subject_id=_clean_id(row[subject_column]) if subject_column else "",
                              labels=self._labels(row, label_columns), view=view, split=row_split, where=where,
                              report_path=report_path, report_text=text)

        for n, row in enumerate(rows, start=1):
            row_split = row[split_column].strip() if split_column else None
            if split is not None and row_split != split:
                continue
            view = (row[view_column].strip().upper() or None) if view_column else None
            if not self._keep_view(view, view in FRONTAL_VIEWS):
                continue
            where = f"{self.csv_path} row {n}"
            self._add(where, lambda: make(row, view, row_split, where))
        self._finish("generic CSV", self.csv_path)
