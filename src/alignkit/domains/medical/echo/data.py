"""Echo videos as alignkit paired datasets: ``DATASETS["echonet"]`` and ``DATASETS["echo-studies"]``.

Both follow the :class:`~alignkit.core.paired.PairedDataset` protocol, so they can be written to WebDataset
shards: ``raw(i)`` holds the video file's bytes (field named by its extension: ``avi``, ``mp4``, ``dcm``, ...),
the study's report (``txt``, studies only) and a ``json`` of ids and labels; :class:`EchoClipDecoder` turns
such a record into a sample. Decoding (PyAV or pydicom, only the clip's frames) and the MONAI frame transforms
run in the decoder, i.e. inside DataLoader workers; random spatial and intensity augmentation of training clips
runs on the accelerator, on the collated batch ``(B, C, T, S, S)``, one draw per clip shared by its frames:
``data.augment: [{name: affine-intensity, params: {key: video}}]`` (:mod:`alignkit.core.augment`).

- ``echonet`` (:class:`EchoNetDataset`): one item per video of an EchoNet-Dynamic folder; sample
  ``{"video": float (C, T, S, S), "ef": float (%, nan if unknown), "id": str}`` plus ``"view"`` (str) and
  ``"label"`` (its index in ``views``) when the FileList has a view column.
- ``echo-studies`` (:class:`EchoStudyDataset`): one item per video of a study table, with its study's report;
  sample ``{"video", "text", "view", "label", "group", "study_id", "id", "ef", "labels"}``. ``group`` is the
  study's index, so every video of a study is a positive of its report (the core ``multi_positive`` loss).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from monai.data import MetaTensor
from torch import Tensor

from alignkit.core.paired import PairedDataset, RawRecord, RawValue, raw_text
from alignkit.core.params import AT_LEAST_ONE, POSITIVE, OneOf, check_choice
from alignkit.core.registry import DATASETS, ConfigError, did_you_mean
from alignkit.domains.medical.dicom import DICOM_MODALITIES, ULTRASOUND_MODALITIES, check_modalities
from alignkit.domains.medical.echo.archives import (ECHOPRIME_VIEWS, REPORT_SECTIONS, EchoNetReader, EchoStudy,
                                                    EchoStudyTableReader, EchoVideoRecord)
from alignkit.domains.medical.echo.loading import ECHO_SUFFIXES, SECTOR_MASKING, load_echo, probe_echo
from alignkit.domains.medical.echo.transforms import (CLIP_STARTS, ECHONET_MEAN, ECHONET_STD, PAD_MODES, SQUARE_MODES,
                                                      SampleClip, beat_stride, clip_span, frame_transforms)
from alignkit.domains.medical.reports import (ECHO_HEADERS, REPORT_RULES, check_report_rule, clean_report,
                                              extract_sections, report_text, split_sentences)
from alignkit.domains.medical.tables import BadRowError

TEXT_MODES = ("report", "sentences", "sections")
SHORT_CLIPS = (*PAD_MODES, "skip")
"""What to do with a video shorter than a clip's span: pad by repeating its last frame or looping (see
:func:`~alignkit.domains.medical.echo.transforms.clip_indices`), or skip it while indexing (listed in
``skipped``)."""
MEASUREMENT_COLUMNS = ("EF", "ESV", "EDV")
"""Study-table columns that are measurements, not binary findings."""
IGNORE_LABEL = -1.0
"""Finding label of a blank cell: the core evaluators' multi-label convention ``{0, 1, -1 = ignore}``."""

_VIDEO_FIELDS = tuple(suffix.lstrip(".") for suffix in ECHO_SUFFIXES)
_DICOM_FIELDS = ("dcm", "dicom")
CLIP_START_CHOICES = ("auto", *CLIP_STARTS)
Stat = Union[float, Sequence[float]]
# what the datasets' parameters accept (checked when a config is loaded; the decoder checks them again)
Count = Annotated[int, AT_LEAST_ONE]
ClipStart = Annotated[str, OneOf(CLIP_START_CHOICES)]
ShortClips = Annotated[str, OneOf(SHORT_CLIPS)]
Channels = Annotated[int, OneOf((1, 3))]
Square = Annotated[str, OneOf(SQUARE_MODES)]
Std = Union[Annotated[float, POSITIVE], Sequence[Annotated[float, POSITIVE]]]
MaskSector = Annotated[str, OneOf(SECTOR_MASKING)]
ReportSections = Sequence[Annotated[str, OneOf(tuple(ECHO_HEADERS))]]
ReportRule = Annotated[str, OneOf(REPORT_RULES)]
Modalities = Optional[Sequence[Annotated[str, OneOf(DICOM_MODALITIES)]]]
"""DICOM Modality values a dataset reads (default US and IVUS); None reads any (a CT or MR file is refused by
default, naming its modality: :func:`~alignkit.domains.medical.dicom.check_modality`)."""


def resolve_clip_start(clip_start: str, split: Optional[str]) -> str:
    """``"auto"``: ``"random"`` for training (split None or ``train``, case-insensitive; shards are training
    data) and ``"centre"`` for every other split; any other value of ``CLIP_STARTS`` as given."""
    check_choice(clip_start, CLIP_START_CHOICES, "clip_start")
    if clip_start != "auto":
        return clip_start
    return "random" if split is None or split.strip().lower() == "train" else "centre"


@dataclass(frozen=True)
class EchoClipDecoder:
    """Raw record -> sample; picklable, reads no files.

    ``video``: the clip's frames chosen by :class:`~alignkit.domains.medical.echo.transforms.SampleClip`
    (``num_frames``, ``stride``, ``clip_start``, ``beat_seconds``; a short video padded by ``short_clips``),
    decoded by :func:`~alignkit.domains.medical.echo.loading.load_echo` (``mask_sector``; DICOM files of a
    modality outside ``modalities`` are refused, None accepts any), then
    :func:`~alignkit.domains.medical.echo.transforms.frame_transforms` (``image_size``, ``channels``,
    ``square``, ``mean``, ``std``): float32 ``(channels, num_frames, image_size, image_size)``.

    ``text`` (records with a report): ``text_mode`` ``"report"`` gives the training text of
    :func:`~alignkit.domains.medical.reports.report_text` (``report_sections``, ``report_rule``, echo headers);
    ``"sentences"`` its sentences; ``"sections"`` one string per non-empty section of ``report_sections``, in
    report order, as ``"<section>: <cleaned text>"``.

    Random starts: before each clip the sampler's generator (MONAI ``Randomizable.R``) is seeded from a draw of
    torch's global generator, which DataLoader seeds differently in every worker and epoch; so workers draw
    different clips, and ``torch.manual_seed`` makes a run reproducible.
    """

    num_frames: int = 16
    stride: int = 2
    clip_start: str = "random"
    beat_seconds: Optional[float] = None
    short_clips: str = "repeat"
    image_size: int = 64
    channels: int = 3
    square: str = "crop"
    mean: Stat = ECHONET_MEAN
    std: Stat = ECHONET_STD
    mask_sector: str = "dicom"
    text_mode: str = "report"
    report_sections: Tuple[str, ...] = REPORT_SECTIONS
    report_rule: str = "any"
    modalities: Optional[Tuple[str, ...]] = ULTRASOUND_MODALITIES

    def __post_init__(self) -> None:
        object.__setattr__(self, "modalities", check_modalities(self.modalities))
        check_choice(self.short_clips, SHORT_CLIPS, "short_clips")
        check_choice(self.mask_sector, SECTOR_MASKING, "mask_sector")
        check_choice(self.text_mode, TEXT_MODES, "text_mode")
        object.__setattr__(self, "report_sections", tuple(self.report_sections))
        check_report_rule(self.report_sections, self.report_rule, ECHO_HEADERS)
        pad = "repeat" if self.short_clips == "skip" else self.short_clips
        object.__setattr__(self, "_sampler", SampleClip(num_frames=self.num_frames, stride=self.stride,
                                                        start=self.clip_start, beat_seconds=self.beat_seconds,
                                                        pad=pad))
        object.__setattr__(self, "_frames", frame_transforms(image_size=self.image_size, channels=self.channels,
                                                             square=self.square, mean=self.mean, std=self.std))

    def span(self, fps: float) -> int:
        """Frames a clip covers in a video at ``fps`` (the stride raised to cover ``beat_seconds``)."""
        return clip_span(self.num_frames, beat_stride(self.num_frames, self.stride, fps, self.beat_seconds))

    def _select(self, total: int, fps: float) -> np.ndarray:
        if self.short_clips == "skip" and total < self.span(fps):
            raise ValueError(f"the video has {total} frames, fewer than the {self.span(fps)} of a clip; "
                             "short_clips='skip' drops such videos while indexing, so its listed frame count is "
                             "wrong: fix the listing or choose short_clips='repeat'/'loop'")
        if self.clip_start == "random":
            self._sampler.set_random_state(seed=int(torch.randint(0, 2 ** 31 - 1, ())))
        return self._sampler.indices(total, fps)

    def video(self, data: bytes, name: str, dicom: Optional[bool] = None) -> Tensor:
        """Video file bytes -> the float32 clip ``(channels, num_frames, image_size, image_size)`` a tower sees."""
        decoded = load_echo(data, select=self._select, mask_sector=self.mask_sector, name=name, dicom=dicom,
                            modalities=self.modalities)
        clip = torch.from_numpy(decoded.frames).permute(3, 0, 1, 2).float()
        out = self._frames(clip)
        return (out.as_tensor() if isinstance(out, MetaTensor) else out).float().contiguous()

    def text(self, report: str) -> Union[str, List[str]]:
        """A report -> the text of ``text_mode`` (see the class docstring)."""
        chosen = report_text(report, self.report_sections, self.report_rule, headers=ECHO_HEADERS)
        assert chosen is not None  # on_empty="raise"
        if self.text_mode == "report":
            return chosen
        if self.text_mode == "sentences":
            return split_sentences(chosen) or [chosen]
        found = extract_sections(report, ECHO_HEADERS)
        sections = [f"{name}: {clean_report(body)}" for name, body in found.items()
                    if name in self.report_sections and clean_report(body)]
        return sections or [chosen]

    def __call__(self, raw: RawRecord) -> Dict[str, Any]:
        meta = json.loads(raw_text(raw["json"]))
        field = next((f for f in _VIDEO_FIELDS if f in raw), None)
        if field is None:
            raise ValueError(f"echo record '{meta['id']}' ({meta['where']}) has no video field (one of "
                             f"{', '.join(_VIDEO_FIELDS)}); its fields: {', '.join(sorted(raw))}")
        where = meta["where"] + (f", shard {raw['__url__']}" if "__url__" in raw else "")
        sample: Dict[str, Any] = {
            "video": self.video(bytes(raw[field]), f"'{meta['id']}' ({where})",  # type: ignore[arg-type]
                                dicom=field in _DICOM_FIELDS),
            "id": meta["id"], "ef": float(meta["ef"])}
        if "view" in meta:
            sample.update(view=meta["view"], label=int(meta["label"]))
        if "txt" in raw:
            sample["text"] = self.text(raw_text(raw["txt"]))
        if "group" in meta:
            sample.update(group=int(meta["group"]), study_id=meta["study"],
                          labels=torch.tensor(meta["labels"], dtype=torch.float32))
        return sample


def _as_tuple(value: Stat) -> Stat:
    return value if isinstance(value, (int, float)) else tuple(float(v) for v in value)


class EchoVideoDataset(PairedDataset):
    """Shared parts of the echo datasets: view labels, the short-clip rule and reading a video's bytes.

    Subclasses fill ``videos`` (one :class:`~alignkit.domains.medical.echo.archives.EchoVideoRecord` per item) through
    :meth:`_keep`, and set ``views`` (the view vocabulary; ``class_names`` when the items have views).
    """

    def _setup(self, decoder: EchoClipDecoder, views: Sequence[str], skip_bad: bool) -> None:
        self._decoder = decoder
        self.views: List[str] = list(views)
        self.skip_bad = skip_bad
        self.videos: List[EchoVideoRecord] = []

    def _bad(self, record: EchoVideoRecord, reason: str) -> bool:
        """Raise naming the row, or under ``skip_bad`` list it; False (the record is not kept)."""
        if not self.skip_bad:
            raise BadRowError(f"{record.where}: {reason}; fix the row, or pass skip_bad=True to skip it")
        self.skipped.append((record.where, reason))
        return False

    def _keep(self, record: EchoVideoRecord, with_view: bool) -> bool:
        """Check ``record``'s view and length; True if it becomes an item. A view outside ``views`` (and, when the
        length must be probed, an unreadable video) is a bad row; a short video under ``short_clips="skip"`` is
        listed in ``skipped``."""
        if with_view and record.view not in self.views:
            hint = did_you_mean(record.view or "", self.views)
            return self._bad(record, f"view {record.view!r} is not one of the dataset's views{hint} "
                                     f"({', '.join(self.views)}; add it to views)")
        decoder: EchoClipDecoder = self._decoder  # type: ignore[assignment]
        if decoder.short_clips == "skip":
            frames, fps = record.frames, record.fps
            if frames <= 0 or (decoder.beat_seconds is not None and not math.isfinite(fps)):
                try:
                    info = probe_echo(record.path, modalities=decoder.modalities)
                except ValueError as exc:
                    return self._bad(record, str(exc))
                frames, fps = info.frames, info.fps
            if frames < decoder.span(fps):
                self.skipped.append((record.where, f"video {record.path} has {frames} frames, fewer than the "
                                                   f"{decoder.span(fps)} of a clip (short_clips='skip')"))
                return False
        self.videos.append(record)
        return True

    def _video_field(self, i: int) -> Tuple[str, bytes]:
        record = self.videos[i]
        ext = record.path.suffix.lower().lstrip(".")
        try:
            return ("dcm" if ext in _DICOM_FIELDS else ext), record.path.read_bytes()
        except OSError as exc:
            raise ValueError(f"cannot read video file {record.path} (listed at {record.where}): {exc}") from exc

    def view_meta(self, record: EchoVideoRecord) -> Dict[str, Any]:
        """``{"view", "label"}`` of a record with a view, else ``{}``."""
        return {"view": record.view, "label": self.views.index(record.view)} if record.view is not None else {}

    def __len__(self) -> int:
        return len(self.videos)


@DATASETS.register("echonet")
class EchoNetDataset(EchoVideoDataset):
    """EchoNet-Dynamic videos (:class:`~alignkit.domains.medical.echo.archives.EchoNetReader`), one item per video.

    Args:
        root: the folder holding ``FileList.csv``, ``Videos/`` (``videos_dir``) and ``VolumeTracings.csv``.
        split: ``train``/``val``/``test`` (compared case-insensitively with the FileList's ``Split``); None: all.
        num_frames, stride, clip_start, beat_seconds, short_clips, image_size, channels, square, mean, std,
            mask_sector, modalities: the decoder's (:class:`EchoClipDecoder`); ``clip_start="auto"`` is random for
            training and centred otherwise (:func:`resolve_clip_start`); ``modalities``: the DICOM Modality
            values read (default US, IVUS; None: any).
        view_column, views: an optional FileList column naming each video's view, and the view vocabulary
            (``class_names``; ``label`` is the index of the view).
        skip_bad, verify_videos: the reader's (bad rows raise naming file and row, or are listed in ``skipped``).

    Sample: ``{"video": float (channels, num_frames, S, S), "ef": float, "id": FileName}`` (+ ``"view"``,
    ``"label"`` with ``view_column``). ``videos[i].tracings``: the LV tracings of item ``i`` (EchoNet's ED/ES).
    """

    def __init__(self, root: str, split: Optional[str] = None, num_frames: Count = 16, stride: Count = 2,
                 clip_start: ClipStart = "auto", beat_seconds: Optional[Annotated[float, POSITIVE]] = None,
                 short_clips: ShortClips = "repeat", image_size: Count = 64, channels: Channels = 3,
                 square: Square = "crop", mean: Stat = ECHONET_MEAN, std: Std = ECHONET_STD,
                 mask_sector: MaskSector = "dicom", videos_dir: str = "Videos",
                 file_list: str = "FileList.csv", view_column: Optional[str] = None,
                 views: Sequence[str] = ECHOPRIME_VIEWS, skip_bad: bool = False, verify_videos: Optional[bool] = None,
                 modalities: Modalities = ULTRASOUND_MODALITIES):
        super().__init__(params=locals())
        self._setup(self.decoder(split=split, num_frames=num_frames, stride=stride, clip_start=clip_start,
                                 beat_seconds=beat_seconds, short_clips=short_clips, image_size=image_size,
                                 channels=channels, square=square, mean=mean, std=std, mask_sector=mask_sector,
                                 modalities=modalities),
                    views, skip_bad)
        self.reader = EchoNetReader(root, split=split, videos_dir=videos_dir, file_list=file_list,
                                    view_column=view_column, skip_bad=skip_bad, verify_videos=verify_videos,
                                    modalities=modalities)
        self.skipped = list(self.reader.skipped)
        for record in self.reader.records:
            self._keep(record, with_view=view_column is not None)
        self.class_names = list(views) if view_column is not None else None

    @property
    def ids(self) -> List[str]:
        """The ``"id"`` (FileName) of every item, without decoding."""
        return [r.video_id for r in self.videos]

    def raw(self, i: int) -> Dict[str, RawValue]:
        """``{<ext>: video file bytes, "json": {id, where, ef, view?, label?}}``."""
        record = self.videos[i]
        field, data = self._video_field(i)
        meta = {"id": record.video_id, "where": record.where, "ef": record.ef, **self.view_meta(record)}
        return {field: data, "json": json.dumps(meta)}

    @classmethod
    def decoder(cls, split: Optional[str] = None, num_frames: int = 16, stride: int = 2, clip_start: str = "auto",
                beat_seconds: Optional[float] = None, short_clips: str = "repeat", image_size: int = 64,
                channels: int = 3, square: str = "crop", mean: Stat = ECHONET_MEAN, std: Stat = ECHONET_STD,
                mask_sector: str = "dicom",
                modalities: Optional[Sequence[str]] = ULTRASOUND_MODALITIES) -> EchoClipDecoder:
        return EchoClipDecoder(num_frames=num_frames, stride=stride, clip_start=resolve_clip_start(clip_start, split),
                               beat_seconds=beat_seconds, short_clips=short_clips, image_size=image_size,
                               channels=channels, square=square, mean=_as_tuple(mean), std=_as_tuple(std),
                               mask_sector=mask_sector, modalities=check_modalities(modalities))


@DATASETS.register("echo-studies")
class EchoStudyDataset(EchoVideoDataset):
    """Echo studies of a study table (:class:`~alignkit.domains.medical.echo.archives.EchoStudyTableReader`), one item
    per video, each with its study's report.

    Args:
        root: the folder of the table; csv: the table (relative to ``root``; default ``studies.csv``, as
            :func:`~alignkit.domains.medical.echo.synthetic.archive.write_synthetic_echo` writes it).
        split: the table's split (``split_column``, case-insensitive); None: all.
        text_mode, report_sections, report_rule: the report text (:class:`EchoClipDecoder`); studies without
            text under ``report_sections`` are bad (raise, or listed under ``skip_bad``).
        views: the view vocabulary (``class_names``; a video's ``label`` is its view's index); with
            ``view_column=None`` samples carry no view.
        ef_column: the EF column (``"ef"`` of samples; None: ``nan``); finding_columns: binary columns (0, 1,
            blank = ``-1``) in ``labels`` order (``finding_names``); default every column other than the
            structural ones and :data:`MEASUREMENT_COLUMNS`.
        study_column, video_column, view_column, report_column, report_is_path, split_column: the table's columns.
        num_frames, ..., mask_sector, skip_bad, verify_videos, modalities: as for :class:`EchoNetDataset`.

    ``groups[i]`` (the sample's ``group``) is the index of item ``i``'s study among ``studies``: all videos of a
    study are positives of its report.
    """

    def __init__(self, root: str, csv: str = "studies.csv", split: Optional[str] = None,
                 text_mode: Annotated[str, OneOf(TEXT_MODES)] = "report",
                 report_sections: ReportSections = REPORT_SECTIONS, report_rule: ReportRule = "any",
                 views: Sequence[str] = ECHOPRIME_VIEWS, ef_column: Optional[str] = "EF",
                 finding_columns: Optional[Sequence[str]] = None, study_column: str = "study_id",
                 video_column: str = "video", view_column: Optional[str] = "view", report_column: str = "report",
                 report_is_path: bool = True, split_column: Optional[str] = "split", num_frames: Count = 16,
                 stride: Count = 2, clip_start: ClipStart = "auto",
                 beat_seconds: Optional[Annotated[float, POSITIVE]] = None, short_clips: ShortClips = "repeat",
                 image_size: Count = 64, channels: Channels = 3, square: Square = "crop",
                 mean: Stat = ECHONET_MEAN, std: Std = ECHONET_STD, mask_sector: MaskSector = "dicom",
                 skip_bad: bool = False, verify_videos: Optional[bool] = None, modalities: Modalities = ULTRASOUND_MODALITIES):
        super().__init__(params=locals())
        self._setup(self.decoder(split=split, num_frames=num_frames, stride=stride, clip_start=clip_start,
                                 beat_seconds=beat_seconds, short_clips=short_clips, image_size=image_size,
                                 channels=channels, square=square, mean=mean, std=std, mask_sector=mask_sector,
                                 text_mode=text_mode, report_sections=report_sections, report_rule=report_rule,
                                 modalities=modalities),
                    views, skip_bad)
        self.reader = EchoStudyTableReader(
            Path(root) / csv, root=root, split=split, study_column=study_column, video_column=video_column,
            view_column=view_column, report_column=report_column, report_is_path=report_is_path,
            split_column=split_column, report_sections=report_sections, report_rule=report_rule, skip_bad=skip_bad,
            verify_videos=verify_videos, modalities=modalities)
        if ef_column is not None and ef_column not in self.reader.label_columns:
            raise ConfigError(f"ef_column '{ef_column}' is not a column of {self.reader.csv_path}"
                              f"{did_you_mean(ef_column, self.reader.label_columns)}; set ef_column=None if it "
                              "has no EF")
        self.finding_names: List[str] = [c for c in self.reader.label_columns if c != ef_column
                                          and c not in MEASUREMENT_COLUMNS] if finding_columns is None \
            else list(finding_columns)
        missing = [c for c in self.finding_names if c not in self.reader.label_columns]
        if missing:
            raise ConfigError(f"finding column '{missing[0]}' is not a column of {self.reader.csv_path}"
                              f"{did_you_mean(missing[0], self.reader.label_columns)}")
        self.ef_column = ef_column
        self.skipped = list(self.reader.skipped)
        self.studies: List[EchoStudy] = []
        self.groups: List[int] = []
        for study in self.reader.studies:
            bad = [(c, study.labels[c]) for c in self.finding_names
                   if not (math.isnan(study.labels[c]) or study.labels[c] in (0.0, 1.0))]
            if bad:
                reason = f"finding column '{bad[0][0]}' holds {bad[0][1]}; findings are 0, 1 or blank"
                if not skip_bad:
                    raise BadRowError(f"{study.where}: {reason}; fix it, or pass skip_bad=True to skip the study")
                self.skipped.append((study.where, reason))
                continue
            kept = [self._keep(video, with_view=view_column is not None) for video in study.videos]
            if any(kept):
                self.groups += [len(self.studies)] * sum(kept)
                self.studies.append(study)
        self.class_names = list(views) if view_column is not None else None

    @property
    def ids(self) -> List[str]:
        """The ``"id"`` (video path in the table) of every item, without decoding."""
        return [r.video_id for r in self.videos]

    def labels(self, i: int) -> List[float]:
        """Item ``i``'s findings in ``finding_names`` order: 1.0, 0.0, or ``-1.0`` for blank."""
        values = self.studies[self.groups[i]].labels
        return [IGNORE_LABEL if math.isnan(values[c]) else values[c] for c in self.finding_names]

    def raw(self, i: int) -> Dict[str, RawValue]:
        """``{<ext>: video file bytes, "txt": the study's report, "json": {id, where, group, study, ef, labels,
        view?, label?}}``."""
        record, study = self.videos[i], self.studies[self.groups[i]]
        field, data = self._video_field(i)
        ef = study.labels[self.ef_column] if self.ef_column is not None else math.nan
        meta = {"id": record.video_id, "where": record.where, "group": self.groups[i], "study": study.study_id,
                "ef": ef, "labels": self.labels(i), **self.view_meta(record)}
        return {field: data, "txt": study.report, "json": json.dumps(meta)}

    @classmethod
    def decoder(cls, split: Optional[str] = None, num_frames: int = 16, stride: int = 2, clip_start: str = "auto",
                beat_seconds: Optional[float] = None, short_clips: str = "repeat", image_size: int = 64,
                channels: int = 3, square: str = "crop", mean: Stat = ECHONET_MEAN, std: Stat = ECHONET_STD,
                mask_sector: str = "dicom", text_mode: str = "report",
                report_sections: Sequence[str] = REPORT_SECTIONS, report_rule: str = "any",
                modalities: Optional[Sequence[str]] = ULTRASOUND_MODALITIES) -> EchoClipDecoder:
        return EchoClipDecoder(num_frames=num_frames, stride=stride, clip_start=resolve_clip_start(clip_start, split),
                               beat_seconds=beat_seconds, short_clips=short_clips, image_size=image_size,
                               channels=channels, square=square, mean=_as_tuple(mean), std=_as_tuple(std),
                               mask_sector=mask_sector, text_mode=text_mode, report_sections=tuple(report_sections),
                               report_rule=report_rule, modalities=check_modalities(modalities))
