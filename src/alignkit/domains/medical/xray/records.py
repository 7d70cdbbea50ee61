"""Chest X-ray archive records: :class:`XRayRecord` (one image with labels, view, split, the report's training
text and where it came from) and :class:`XRayRecordReader`, the base of the archive readers (:mod:`.archives`):
options, label parsing, view filtering and bad-row handling. Shared options: ``split``, ``frontal_only``,
``uncertain``, ``blank``, ``skip_bad``, ``verify_images``, ``report_sections`` / ``report_rule``.
"""
from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from alignkit.core.paired import MISSING_VALUES
from alignkit.core.registry import ConfigError, did_you_mean
from alignkit.core.text import TextDecodeError, read_text
from alignkit.domains.medical.reports import EmptyReportError, check_report_rule, report_text
from alignkit.domains.medical.tables import BadRowError
from alignkit.domains.medical.xray.images import XRAY_SUFFIXES, load_xray

logger = logging.getLogger(__name__)

CHEXPERT_LABELS: Tuple[str, ...] = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture",
    "Support Devices")
"""The 14 CheXpert labeler observations, in the column order of CheXpert and ``mimic-cxr-2.0.0-chexpert.csv``."""

NIH_LABELS: Tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax",
    "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia")
"""The 14 findings of NIH ChestX-ray14 (spelled as in ``Finding Labels``)."""

NO_FINDING = "No Finding"
FRONTAL_VIEWS = frozenset({"PA", "AP"})
"""View positions kept by ``frontal_only`` (upper-cased; every other view, and a missing one, is dropped)."""

UNCERTAIN_POLICIES = ("ignore", "zeros", "ones")
BLANK_POLICIES = ("ignore", "zeros")


@dataclass(frozen=True)
class XRayRecord:
    """One image of an archive.

    ``labels``: observation name -> 1.0 (positive), 0.0 (negative) or ``nan`` (unknown, or uncertain under
    ``uncertain="ignore"``: mask it in losses and metrics). ``view``: upper-cased view position (``PA``, ``AP``,
    ``LATERAL``, ...) or None. ``where``: the file and 1-based data row the image was listed on.
    ``report_text``: the report's training text (:func:`~alignkit.domains.medical.reports.report_text`), or
    None when the archive has no reports; ``report_path``: the report file, when reports are files.
    """

    image_path: Path
    image_id: str
    study_id: str
    subject_id: str
    labels: Dict[str, float]
    view: Optional[str]
    split: Optional[str]
    where: str
    report_path: Optional[Path] = None
    report_text: Optional[str] = None


class XRayRecordReader:
    """Base of the archive readers: options, label parsing, view filtering and bad-row handling.

    A reader indexes its archive when constructed and holds:

    - ``records``: the :class:`XRayRecord` s kept (also ``len(reader)``, ``reader[i]``, iteration);
    - ``skipped``: ``(where, reason)`` of every image dropped under ``skip_bad=True``;
    - ``dropped_views``: ``Counter`` of view -> images dropped by ``frontal_only`` (``"UNKNOWN"`` = no view).

    Options:

    - ``split``: keep only images of that split (None: all);
    - ``frontal_only``: keep frontal views only (:data:`FRONTAL_VIEWS`, PA/AP; CheXpert: ``Frontal``);
      the others are dropped and counted in ``dropped_views``, not listed as bad;
    - ``uncertain``: the label ``-1`` becomes ``nan`` (``"ignore"``: masked in losses and metrics), ``0.0``
      (``"zeros"``) or ``1.0`` (``"ones"``);
    - ``blank``: a blank label cell (not mentioned) becomes ``nan`` (``"ignore"``) or ``0.0`` (``"zeros"``);
    - ``skip_bad``: a bad image row (missing image file, label cell other than 1/0/-1/blank, missing report,
      report that is not text (:func:`~alignkit.core.text.read_text`: binary, or bytes that are not UTF-8 /
      UTF-16 / UTF-32), report without the wanted sections, and with ``verify_images`` an undecodable image) raises a
      ``ValueError`` naming the file and row when False; when True it is skipped and listed in ``skipped``
      (one warning is logged). Unknown columns are config errors (:class:`ConfigError`) either way;
    - ``verify_images``: decode every image once while indexing so corrupt files count as bad rows (the
      default under ``skip_bad``, so that a truncated image is skipped and listed rather than accepted;
      ``verify_images=False`` opts out on a large archive); otherwise they raise when loaded;
    - ``report_sections``, ``report_rule``: the training-text rule of
      :func:`~alignkit.domains.medical.reports.report_text` (default: findings + impression if present, else
      impression, else findings; a report without any header is used whole).
    """

    def __init__(self, split: Optional[str] = None, frontal_only: bool = False, uncertain: str = "ignore",
                 blank: str = "ignore", skip_bad: bool = False, verify_images: Optional[bool] = None,
                 report_sections: Sequence[str] = ("findings", "impression"), report_rule: str = "any"):
        if uncertain not in UNCERTAIN_POLICIES:
            raise ConfigError(f"unknown uncertain policy '{uncertain}'{did_you_mean(uncertain, UNCERTAIN_POLICIES)}; "
                              f"use one of {', '.join(UNCERTAIN_POLICIES)}")
        if blank not in BLANK_POLICIES:
            raise ConfigError(f"unknown blank policy '{blank}'; use one of {', '.join(BLANK_POLICIES)}")
        check_report_rule(report_sections, report_rule)
        self.split = split
        self.frontal_only = frontal_only
        self.uncertain = uncertain
        self.blank = blank
        self.skip_bad = skip_bad
        self.verify_images = skip_bad if verify_images is None else verify_images
        self.report_sections = tuple(report_sections)
        self.report_rule = report_rule
        self.records: List[XRayRecord] = []
        self.skipped: List[Tuple[str, str]] = []
        self.dropped_views: Counter = Counter()

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> XRayRecord:
        return self.records[i]

    def __iter__(self) -> Iterator[XRayRecord]:
        return iter(self.records)

    # building blocks for the subclasses ------------------------------------------------------------
    def _keep_view(self, view: Optional[str], frontal: bool) -> bool:
        """False (and counted) when ``frontal_only`` drops an image that is not ``frontal``."""
        if self.frontal_only and not frontal:
            self.dropped_views[view or "UNKNOWN"] += 1
            return False
        return True

    def _add(self, where: str, make: Callable[[], XRayRecord]) -> None:
        """Append ``make()``; a :class:`BadRowError` / ``EmptyReportError`` raises or is skipped (``skip_bad``)."""
        try:
            record = make()
        except (BadRowError, EmptyReportError) as exc:
            if self.skip_bad:
                self.skipped.append((where, str(exc)))
                return
            message = f"{where}: {exc}; fix the row, or pass skip_bad=True to skip it and list it in .skipped"
            if isinstance(exc, EmptyReportError):
                raise EmptyReportError(message, source=exc.source, sections=exc.sections) from None
            raise BadRowError(message) from None
        self.records.append(record)

    def _finish(self, name: str, source: Path) -> None:
        if self.skipped:
            logger.warning("%s: skipped %d images of %s (skip_bad=True); first: %s", name, len(self.skipped), source,
                           "; ".join(f"{w}: {r}" for w, r in self.skipped[:3]))
        if self.dropped_views:
            logger.info("%s: frontal_only dropped %d images of %s (%s)", name, sum(self.dropped_views.values()),
                        source, dict(self.dropped_views))

    def _label(self, value: str, column: str) -> float:
        text = value.strip().lower()
        if text in MISSING_VALUES:
            return math.nan if self.blank == "ignore" else 0.0
        try:
            number = float(text)
        except ValueError:
            number = math.inf
        if number == 1.0:
            return 1.0
        if number == 0.0:
            return 0.0
        if number == -1.0:
            return {"ignore": math.nan, "zeros": 0.0, "ones": 1.0}[self.uncertain]
        raise BadRowError(f"label column '{column}' holds {value!r}; labels are 1, 0, -1 (uncertain) or blank")

    def _labels(self, row: Mapping[str, str], columns: Sequence[str], where: str = "") -> Dict[str, float]:
        try:
            return {c: self._label(row[c], c) for c in columns}
        except BadRowError as exc:
            raise BadRowError(f"{where}: {exc}" if where else str(exc)) from None

    def _image(self, path: Path) -> Path:
        if path.suffix.lower() not in XRAY_SUFFIXES:
            raise BadRowError(f"image {path} has an unsupported type (supported: {', '.join(XRAY_SUFFIXES)})")
        if not path.is_file():
            raise BadRowError(f"image file {path} not found")
        if self.verify_images:
            try:
                load_xray(path)
            except ValueError as exc:
                raise BadRowError(str(exc)) from None
        return path

    def _report(self, text: str, source: str) -> str:
        result = report_text(text, self.report_sections, self.report_rule, source=source, on_empty="raise")
        assert result is not None  # on_empty="raise"
        return result

    def _report_file(self, path: Path) -> str:
        if not path.is_file():
            raise BadRowError(f"report file {path} not found")
        try:
            text = read_text(path, what="report")
        except TextDecodeError as exc:
            raise BadRowError(str(exc)) from None
        return self._report(text, source=str(path))
