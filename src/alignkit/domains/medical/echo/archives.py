"""Echo archive listings: the EchoNet-Dynamic layout and study tables, and the view and report vocabulary.

:class:`EchoNetReader` indexes the EchoNet-Dynamic layout (``Videos/*.avi``, ``FileList.csv``,
``VolumeTracings.csv``; Ouyang et al., "Video-based AI for beat-to-beat assessment of cardiac function",
Nature 2020) into :class:`EchoVideoRecord` s; :class:`EchoStudyTableReader` indexes a study table (one CSV row
per video: study id, video, view, report, split, labels) into :class:`EchoStudy` s, each with several videos and
one report. Both list what ``skip_bad=True`` dropped in ``skipped``. :class:`LVTracing` and :func:`ed_es_frames`
read EchoNet's left-ventricle tracings.

The CSV helpers (:func:`~alignkit.domains.medical.tables.read_table`,
:func:`~alignkit.domains.medical.tables.require_columns`, ``BadRowError``) are shared with the X-ray readers.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from alignkit.core.paired import MISSING_VALUES
from alignkit.core.registry import ConfigError
from alignkit.core.text import TextDecodeError, read_text
from alignkit.domains.medical.echo.loading import ECHO_SUFFIXES, VIDEO_SUFFIXES, load_echo
from alignkit.domains.medical.reports import ECHO_HEADERS, EmptyReportError, check_report_rule, report_text
from alignkit.domains.medical.tables import BadRowError, read_table, require_columns

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]

ECHONET_COLUMNS = ("FileName", "EF", "ESV", "EDV", "FrameHeight", "FrameWidth", "FPS", "NumberOfFrames", "Split")
TRACING_COLUMNS = ("FileName", "X1", "Y1", "X2", "Y2", "Frame")

ECHOPRIME_VIEWS: Tuple[str, ...] = (
    "A2C", "A3C", "A4C", "A5C", "Apical_Doppler", "Doppler_Parasternal_Long", "Doppler_Parasternal_Short",
    "Parasternal_Long", "Parasternal_Short", "SSN", "Subcostal")
"""The 11 echo views of EchoPrime's view classifier (Vukadinovic et al., "EchoPrime: a multi-video
view-informed vision-language model for comprehensive echocardiography interpretation", 2024): apical
2/3/4/5-chamber, colour Doppler views, parasternal long and short axis, suprasternal notch, subcostal. The
default view vocabulary."""

REPORT_SECTIONS: Tuple[str, ...] = (
    "findings", "left ventricle", "left atrium", "right ventricle", "right atrium", "aortic valve", "mitral valve",
    "tricuspid valve", "pulmonic valve", "aorta", "pericardium", "conclusions")
"""Echo report sections a model trains on by default (every :data:`ECHO_HEADERS` section except indication and
general comments), in report order."""


@dataclass(frozen=True, eq=False)
class LVTracing:
    """The left-ventricle tracing of one frame (EchoNet-Dynamic ``VolumeTracings.csv``).

    ``segments``: float ``(K + 1, 4)`` rows ``(X1, Y1, X2, Y2)`` in pixels: row 0 the long axis (apex to the
    mitral annulus), rows 1..K the disk diameters perpendicular to it.
    """

    frame: int
    segments: np.ndarray

    @property
    def volume(self) -> float:
        """Method of disks (single-plane Simpson), in pixel^3: ``V = sum_k pi (d_k / 2)^2 * L / K`` with ``L``
        the long-axis length and ``d_k`` the diameters."""
        lengths = np.hypot(self.segments[:, 2] - self.segments[:, 0], self.segments[:, 3] - self.segments[:, 1])
        disks = lengths[1:]
        if disks.size == 0:
            return math.nan
        return float(np.sum(np.pi * (disks / 2) ** 2) * lengths[0] / disks.size)


def ed_es_frames(tracings: Sequence[LVTracing]) -> Tuple[int, int]:
    """``(end-diastolic frame, end-systolic frame)``: the traced frames of largest and smallest
    :attr:`LVTracing.volume` (EchoNet traces one of each; their order in the CSV is not reliable)."""
    if len(tracings) < 2:
        raise ValueError(f"ED/ES frames need two traced frames, got {len(tracings)}")
    ordered = sorted(tracings, key=lambda t: t.volume)
    return ordered[-1].frame, ordered[0].frame


@dataclass(frozen=True)
class EchoVideoRecord:
    """One video of an archive.

    ``where``: the file and 1-based data row it was listed on. ``ef`` (%), ``esv``, ``edv`` (mL): ``nan``
    when unknown. ``fps``, ``frames``, ``height``, ``width``: from the listing (EchoNet's FileList), ``nan``/0
    when it does not say. ``view``: the view name or None. ``tracings``: the LV tracings (EchoNet).
    """

    path: Path
    video_id: str
    where: str
    split: Optional[str] = None
    view: Optional[str] = None
    ef: float = math.nan
    esv: float = math.nan
    edv: float = math.nan
    fps: float = math.nan
    frames: int = 0
    height: int = 0
    width: int = 0
    tracings: Tuple[LVTracing, ...] = ()


@dataclass(frozen=True)
class EchoStudy:
    """One study of a study table: several videos and one report.

    ``report``: the report as written (sections intact; it has text under the reader's training sections,
    see :func:`~alignkit.domains.medical.reports.report_text`); ``report_path``: its file, when reports are
    files. ``labels``: column -> value (``nan`` when blank). ``where``: the table and its rows.
    """

    study_id: str
    videos: Tuple[EchoVideoRecord, ...]
    report: str
    labels: Dict[str, float]
    split: Optional[str]
    where: str
    report_path: Optional[Path] = None


def _number(value: str, column: str) -> float:
    """A numeric CSV cell: ``nan`` for a missing value (:data:`~alignkit.core.paired.MISSING_VALUES`)."""
    text = value.strip()
    if text.lower() in MISSING_VALUES:
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise BadRowError(f"column '{column}' holds {value!r}, not a number") from None


def _count(value: str, column: str) -> int:
    number = _number(value, column)
    if math.isnan(number):
        return 0
    if not number.is_integer() or number < 0:
        raise BadRowError(f"column '{column}' holds {value!r}, not a count")
    return int(number)


def _same_split(value: Optional[str], wanted: Optional[str]) -> bool:
    """Splits compare case-insensitively (EchoNet writes ``TRAIN``/``VAL``/``TEST``); None wants every split."""
    return wanted is None or (value or "").strip().lower() == wanted.strip().lower()


class EchoRecordReader:
    """Base of the echo listing readers: bad-row handling and video checks.

    ``skipped``: ``(where, reason)`` of every row dropped under ``skip_bad=True``. A bad row (missing or
    unsupported video file, non-numeric cell, missing or empty report, a report file that is not text
    (:func:`~alignkit.core.text.read_text`), a study whose rows disagree, and with
    ``verify_videos`` a video that cannot be decoded) raises a ``ValueError`` naming the file and row when
    ``skip_bad`` is False; when True it is dropped and listed (one warning is logged). Unknown columns are
    config errors (:class:`ConfigError`) either way. ``verify_videos`` decodes every video once while indexing
    (the default under ``skip_bad``, so that a truncated or foreign file is skipped and listed rather than
    accepted; ``verify_videos=False`` opts out on a large archive); otherwise corrupt files raise when loaded.
    ``modalities``: the DICOM modalities accepted (see :func:`~alignkit.domains.medical.echo.loading.load_echo`).
    """

    def __init__(self, split: Optional[str] = None, skip_bad: bool = False, verify_videos: Optional[bool] = None,
                 modalities: Optional[Sequence[str]] = ("US", "IVUS")):
        self.split = split
        self.skip_bad = skip_bad
        self.verify_videos = skip_bad if verify_videos is None else verify_videos
        self.modalities = modalities
        self.skipped: List[Tuple[str, str]] = []

    def _guard(self, where: str, make: Callable[[], Any]) -> Optional[Any]:
        """``make()``; a :class:`BadRowError` / ``EmptyReportError`` raises naming ``where`` or, under
        ``skip_bad``, is listed and gives None."""
        try:
            return make()
        except (BadRowError, EmptyReportError) as exc:
            if self.skip_bad:
                self.skipped.append((where, str(exc)))
                return None
            message = f"{where}: {exc}; fix the row, or pass skip_bad=True to skip it and list it in .skipped"
            if isinstance(exc, EmptyReportError):
                raise EmptyReportError(message, source=exc.source, sections=exc.sections) from None
            raise BadRowError(message) from None

    def _video(self, path: Path) -> Path:
        if path.suffix.lower() not in ECHO_SUFFIXES:
            raise BadRowError(f"video {path} has an unsupported type (supported: {', '.join(ECHO_SUFFIXES)})")
        if not path.is_file():
            raise BadRowError(f"video file {path} not found")
        if self.verify_videos:
            try:
                load_echo(path, mask_sector="none", modalities=self.modalities)
            except ValueError as exc:
                raise BadRowError(str(exc)) from None
        return path

    def _finish(self, name: str, source: Path, kept: int) -> None:
        if self.skipped:
            logger.warning("%s: skipped %d rows of %s (skip_bad=True; %d kept); first: %s", name, len(self.skipped),
                           source, kept, "; ".join(f"{w}: {r}" for w, r in self.skipped[:3]))


def _video_key(name: str) -> str:
    """EchoNet names a video ``0X1A2B...`` in FileList.csv and ``0X1A2B....avi`` in VolumeTracings.csv."""
    name = name.strip()
    return name[: -len(Path(name).suffix)] if Path(name).suffix.lower() in VIDEO_SUFFIXES else name


class EchoNetReader(EchoRecordReader):
    """EchoNet-Dynamic: one :class:`EchoVideoRecord` per row of ``FileList.csv``.

    Layout under ``root``: ``FileList.csv`` with :data:`ECHONET_COLUMNS` (``FileName`` with or without
    ``.avi``; ``Split`` ``TRAIN``/``VAL``/``TEST``, compared case-insensitively with ``split``),
    ``Videos/<FileName>.avi`` (``videos_dir``) and, optionally, ``VolumeTracings.csv`` with
    :data:`TRACING_COLUMNS` (row ``k`` of a frame is segment ``k``; the first the long axis). ``view_column``
    names an optional FileList column holding each video's view (EchoNet itself is all apical four-chamber).

    ``records`` (also ``len``, indexing, iteration) are the kept videos; bad rows (see
    :class:`EchoRecordReader`) include a tracing row with a non-numeric cell (its video is dropped).
    """

    def __init__(self, root: PathLike, split: Optional[str] = None, videos_dir: str = "Videos",
                 file_list: str = "FileList.csv", tracings: Optional[str] = "VolumeTracings.csv",
                 view_column: Optional[str] = None, skip_bad: bool = False, verify_videos: Optional[bool] = None,
                 modalities: Optional[Sequence[str]] = ("US", "IVUS")):
        super().__init__(split=split, skip_bad=skip_bad, verify_videos=verify_videos, modalities=modalities)
        self.root = Path(root)
        self.file_list = self.root / file_list
        header, rows = read_table(self.file_list)
        require_columns(self.file_list, header, [("EchoNet FileList", c) for c in ECHONET_COLUMNS]
                        + [("view_column", view_column)])
        traced, bad_tracings = self._tracings(tracings)
        self.records: List[EchoVideoRecord] = []

        def make(row: Mapping[str, str], where: str) -> EchoVideoRecord:
            key = _video_key(row["FileName"])
            if not key:
                raise BadRowError("empty FileName")
            if key in bad_tracings:
                raise BadRowError(bad_tracings[key])
            name = row["FileName"].strip()
            path = self._video(self.root / videos_dir / (name if Path(name).suffix else f"{name}.avi"))
            return EchoVideoRecord(
                path=path, video_id=key, where=where, split=row["Split"].strip() or None,
                view=(row[view_column].strip() or None) if view_column else None,
                ef=_number(row["EF"], "EF"), esv=_number(row["ESV"], "ESV"), edv=_number(row["EDV"], "EDV"),
                fps=_number(row["FPS"], "FPS"), frames=_count(row["NumberOfFrames"], "NumberOfFrames"),
                height=_count(row["FrameHeight"], "FrameHeight"), width=_count(row["FrameWidth"], "FrameWidth"),
                tracings=traced.get(key, ()))

        for n, row in enumerate(rows, start=1):
            if not _same_split(row["Split"], split):
                continue
            record = self._guard(f"{self.file_list} row {n}", lambda: make(row, f"{self.file_list} row {n}"))
            if record is not None:
                self.records.append(record)
        self._finish("EchoNet", self.file_list, len(self.records))

    def _tracings(self, name: Optional[str]) -> Tuple[Dict[str, Tuple[LVTracing, ...]], Dict[str, str]]:
        """Video key -> its tracings (by frame), and video key -> the first bad tracing row's complaint."""
        path = self.root / name if name else None
        if path is None or not path.is_file():
            return {}, {}
        header, rows = read_table(path)
        require_columns(path, header, [("EchoNet VolumeTracings", c) for c in TRACING_COLUMNS])
        segments: Dict[str, Dict[int, List[List[float]]]] = {}
        bad: Dict[str, str] = {}
        for n, row in enumerate(rows, start=1):
            key = _video_key(row["FileName"])
            try:
                frame = _count(row["Frame"], "Frame")
                values = [_number(row[c], c) for c in ("X1", "Y1", "X2", "Y2")]
                if any(math.isnan(v) for v in values):
                    raise BadRowError("a blank coordinate")
            except BadRowError as exc:
                bad.setdefault(key, f"{path} row {n}: {exc}")
                continue
            segments.setdefault(key, {}).setdefault(frame, []).append(values)
        traced = {key: tuple(LVTracing(frame=f, segments=np.asarray(s, dtype=np.float64))
                             for f, s in sorted(frames.items())) for key, frames in segments.items()}
        return traced, bad

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> EchoVideoRecord:
        return self.records[i]

    def __iter__(self) -> Iterator[EchoVideoRecord]:
        return iter(self.records)


class EchoStudyTableReader(EchoRecordReader):
    """A study table: one CSV row per video, the rows of a study sharing its id; one :class:`EchoStudy` per study.

    Columns (named by the parameters): ``study_column`` (study id), ``video_column`` (video path relative to
    ``root``, default the CSV's folder), ``view_column`` (optional; None for no views), ``report_column`` (a
    report file relative to ``root``, or with ``report_is_path=False`` the report text), ``split_column``
    (optional), ``label_columns`` (numbers, blank = ``nan``; default: every other column). A study's rows must
    agree on report, split and labels.

    Reports are checked with :func:`~alignkit.domains.medical.reports.report_text` (``ECHO_HEADERS``,
    ``report_sections``, ``report_rule``): a study with no report file, an empty report cell or no text under
    those sections is bad, as is a report file that is binary or not UTF-8 / UTF-16 / UTF-32 text (read strictly
    by :func:`~alignkit.core.text.read_text`, never with replacement characters). Bad studies and bad video rows
    (see :class:`EchoRecordReader`) raise naming the table and rows, or under ``skip_bad`` are listed in
    ``skipped``: a bad video row drops that video, a bad report (or a study left without videos) drops the whole
    study.
    """

    def __init__(self, csv: PathLike, root: Optional[PathLike] = None, split: Optional[str] = None,
                 study_column: str = "study_id", video_column: str = "video", view_column: Optional[str] = "view",
                 report_column: str = "report", report_is_path: bool = True, split_column: Optional[str] = "split",
                 label_columns: Optional[Sequence[str]] = None,
                 report_sections: Sequence[str] = REPORT_SECTIONS, report_rule: str = "any",
                 skip_bad: bool = False, verify_videos: Optional[bool] = None,
                 modalities: Optional[Sequence[str]] = ("US", "IVUS")):
        super().__init__(split=split, skip_bad=skip_bad, verify_videos=verify_videos, modalities=modalities)
        check_report_rule(report_sections, report_rule, ECHO_HEADERS)
        if split is not None and split_column is None:
            raise ConfigError(f"split='{split}' needs split_column (the column of {csv} naming each split)")
        self.csv_path = Path(csv)
        self.root = Path(root) if root is not None else self.csv_path.parent
        self.report_sections, self.report_rule = tuple(report_sections), report_rule
        header, rows = read_table(self.csv_path)
        structural = [study_column, video_column, view_column, report_column, split_column]
        self.label_columns: List[str] = [c for c in header if c not in structural] if label_columns is None \
            else list(label_columns)
        require_columns(self.csv_path, header, [
            ("study_column", study_column), ("video_column", video_column), ("view_column", view_column),
            ("report_column", report_column), ("split_column", split_column),
            *[(f"label_columns[{k}]", c) for k, c in enumerate(self.label_columns)]])
        self.columns = dict(study=study_column, video=video_column, view=view_column, report=report_column,
                            split=split_column)
        self.report_is_path = report_is_path
        members: Dict[str, List[Tuple[int, Dict[str, str]]]] = {}
        for n, row in enumerate(rows, start=1):
            members.setdefault(row[study_column].strip(), []).append((n, row))
        self.studies: List[EchoStudy] = []
        for study_id, study_rows in members.items():
            if split is not None and not _same_split(study_rows[0][1][split_column], split):
                continue
            numbers = ", ".join(str(n) for n, _ in study_rows)
            where = f"{self.csv_path} row{'s' if len(study_rows) > 1 else ''} {numbers}"
            study = self._guard(where, lambda: self._study(study_id, study_rows, where))
            if study is not None:
                self.studies.append(study)
        self._finish("echo study table", self.csv_path, len(self.studies))

    def _study(self, study_id: str, rows: List[Tuple[int, Dict[str, str]]], where: str) -> EchoStudy:
        if not study_id:
            raise BadRowError(f"empty study id in column '{self.columns['study']}'")
        shared = [c for c in (self.columns["report"], self.columns["split"], *self.label_columns) if c]
        first_n, first = rows[0]
        for n, row in rows[1:]:
            for column in shared:
                if row[column].strip() != first[column].strip():
                    raise BadRowError(f"rows {first_n} and {n} of study '{study_id}' disagree on column '{column}' "
                                      f"({first[column]!r} vs {row[column]!r}); a study has one report, split and "
                                      "label set")
        report, report_path = self._report(first[self.columns["report"]])
        labels = {c: _number(first[c], c) for c in self.label_columns}
        videos = []
        for n, row in rows:
            try:
                videos.append(self._video_row(row, f"{self.csv_path} row {n}"))
            except BadRowError as exc:
                if not self.skip_bad:
                    raise BadRowError(f"row {n}: {exc}") from None
                self.skipped.append((f"{self.csv_path} row {n}", str(exc)))
        if not videos:
            raise BadRowError(f"study '{study_id}' has no usable video left")
        split_value = (first[self.columns["split"]].strip() or None) if self.columns["split"] else None
        return EchoStudy(study_id=study_id, videos=tuple(videos), report=report, labels=labels, split=split_value,
                         where=where, report_path=report_path)

    def _video_row(self, row: Mapping[str, str], where: str) -> EchoVideoRecord:
        rel = row[self.columns["video"]].strip()
        if not rel:
            raise BadRowError(f"empty video path in column '{self.columns['video']}'")
        view = (row[self.columns["view"]].strip() or None) if self.columns["view"] else None
        return EchoVideoRecord(path=self._video(self.root / rel), video_id=rel, where=where, view=view)

    def _report(self, cell: str) -> Tuple[str, Optional[Path]]:
        """The report (text, file) of a study's report cell; raises for a missing or empty one."""
        column = self.columns["report"]
        if cell.strip().lower() in MISSING_VALUES:
            raise BadRowError(f"the study has no report (column '{column}' is empty)")
        path: Optional[Path] = None
        if self.report_is_path:
            path = self.root / cell.strip()
            if not path.is_file():
                raise BadRowError(f"report file {path} not found")
            try:
                text = read_text(path, what="report")
            except TextDecodeError as exc:
                raise BadRowError(str(exc)) from None
        else:
            text = cell
        report_text(text, self.report_sections, self.report_rule, source=str(path or f"column '{column}'"),
                    on_empty="raise", headers=ECHO_HEADERS)
        return text, path

    def __len__(self) -> int:
        return len(self.studies)

    def __getitem__(self, i: int) -> EchoStudy:
        return self.studies[i]

    def __iter__(self) -> Iterator[EchoStudy]:
        return iter(self.studies)
