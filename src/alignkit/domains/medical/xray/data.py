"""Chest X-ray image-report pairs as an alignkit paired dataset (``DATASETS["cxr"]``).

:class:`XRayReportDataset` wraps the archive readers of :mod:`alignkit.domains.medical.xray.archives`
(MIMIC-CXR-JPG, CheXpert, NIH ChestX-ray14, a generic CSV) in the :class:`~alignkit.core.paired.PairedDataset`
protocol: ``raw(i)`` holds the image file's bytes, the report's training text and the labels, and
:class:`XRayReportDecoder` turns such a record (from the folder or from a WebDataset shard) into a sample.
"""
from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from alignkit.core.paired import PairedDataset, RawRecord, RawValue, raw_text
from alignkit.core.params import AT_LEAST_ONE, POSITIVE, OneOf, Range, check_choice
from alignkit.core.registry import DATASETS, ConfigError, did_you_mean
from alignkit.domains.medical.reports import CXR_HEADERS, REPORT_RULES, split_sentences
from alignkit.domains.medical.tables import read_table
from alignkit.domains.medical.xray.archives import (CheXpertReader, GenericCsvReader, MimicCxrJpgReader,
                                                    NIHChestXray14Reader, data_path)
from alignkit.domains.medical.xray.images import WINDOWS, Window, check_window, decode_xray
from alignkit.domains.medical.xray.records import (BLANK_POLICIES, CHEXPERT_LABELS, NIH_LABELS, NO_FINDING,
                                                   UNCERTAIN_POLICIES, XRayRecordReader)

LAYOUTS = ("mimic", "chexpert", "nih", "csv")
TEXT_MODES = ("report", "sentences")
IGNORE_LABEL = -1.0
"""Label value of an unknown (or uncertain, under ``uncertain="ignore"``) finding: the core evaluators'
multi-label convention ``{0, 1, -1 = ignore}``."""

DEFAULT_LABELS: Dict[str, Tuple[str, ...]] = {"mimic": CHEXPERT_LABELS, "chexpert": CHEXPERT_LABELS,
                                              "nih": (*NIH_LABELS, NO_FINDING), "csv": ()}
_DICOM_FIELDS = ("dcm", "dicom")
_IMAGE_FIELDS = ("png", "jpg", "jpeg", "webp", *_DICOM_FIELDS)

# what the dataset's parameters accept (checked when a config is loaded; the decoder and readers check them again)
WindowOption = Union[Annotated[str, OneOf(WINDOWS)], Tuple[float, Annotated[float, Range(gt=1)]]]
"""A named window or a DICOM linear window ``(center, width)`` with ``width > 1`` (:func:`check_window`)."""
GreyStd = Union[Annotated[float, POSITIVE], Sequence[Annotated[float, POSITIVE]]]
"""One positive number, or a list of one per channel (``channels``: 1, or 3 for an RGB tower)."""
CHANNELS = (1, 3)


def _channel_stat(value: Union[float, Sequence[float]], name: str, channels: int) -> Union[float, Tuple[float, ...]]:
    """``mean``/``std`` as one float (grey, ``channels=1``) or a 3-tuple (``channels=3``; one number is used for all
    three)."""
    values = [float(value)] if isinstance(value, (int, float)) else [float(v) for v in value]
    if channels == 1:
        if len(values) != 1:
            raise ConfigError(f"cxr {name} is one number for grey images (channels: 1), got {value!r}")
        return values[0]
    if len(values) not in (1, 3):
        raise ConfigError(f"cxr {name} is one number or three (channels: 3), got {value!r}")
    return tuple(values * 3 if len(values) == 1 else values)


@dataclass(frozen=True)
class XRayReportDecoder:
    """Raw record (:meth:`XRayReportDataset.raw`) -> sample; picklable, reads no files.

    Sample: ``image`` float Tensor ``(1, S, S)`` = ``(decode_xray(bytes, image_size=S, window) - mean) / std``
    (the :func:`~alignkit.domains.medical.xray.images.load_xray` decoding, bone bright in ``[0, 1]`` before
    normalising); with ``channels=3`` (an RGB tower such as BiomedCLIP's or an ImageNet ResNet) the grey image is
    repeated into ``(3, S, S)`` and each channel normalised with its own ``mean[c]``, ``std[c]``, as those models'
    preprocessing converts a grey radiograph to RGB; ``text`` the report (``text_mode="report"``) or its sentences
    (:func:`~alignkit.domains.medical.reports.split_sentences`, ``"sentences"``), absent when the archive has no
    reports; ``labels`` float Tensor ``(C,)`` in ``{0, 1, -1 = ignore}``; ``id`` the image id; ``group`` the
    study index (images of one study share it).
    """

    image_size: int = 224
    window: Window = "auto"
    mean: Union[float, Tuple[float, ...]] = 0.5
    std: Union[float, Tuple[float, ...]] = 0.5
    text_mode: str = "report"
    channels: int = 1

    def __post_init__(self) -> None:
        check_choice(self.text_mode, TEXT_MODES, "cxr text_mode")
        if self.image_size < 1:
            raise ConfigError(f"cxr image_size must be positive, got {self.image_size}")
        window = self.window if isinstance(self.window, str) else tuple(self.window)
        object.__setattr__(self, "window", check_window(window))
        check_choice(self.channels, CHANNELS, "cxr channels")
        object.__setattr__(self, "mean", _channel_stat(self.mean, "mean", self.channels))
        object.__setattr__(self, "std", _channel_stat(self.std, "std", self.channels))
        if min(self.std if isinstance(self.std, tuple) else (self.std,)) <= 0:
            raise ConfigError(f"cxr std must be positive, got {self.std}")

    def __call__(self, raw: RawRecord) -> Dict[str, Any]:
        meta = json.loads(raw_text(raw["json"]))
        field = next((f for f in _IMAGE_FIELDS if f in raw), None)
        if field is None:
            raise ValueError(f"X-ray record '{meta['id']}' ({meta['where']}) has no image field (one of "
                             f"{', '.join(_IMAGE_FIELDS)}); its fields: {', '.join(sorted(raw))}")
        where = meta["where"] + (f", shard {raw['__url__']}" if "__url__" in raw else "")
        pixels = decode_xray(bytes(raw[field]), name=f"'{meta['id']}' ({where})",  # type: ignore[arg-type]
                             dicom=field in _DICOM_FIELDS, image_size=self.image_size, window=self.window)
        image = torch.from_numpy(pixels).unsqueeze(0)
        if self.channels == 1:
            image = (image - self.mean) / self.std
        else:
            mean, std = torch.tensor(self.mean).view(3, 1, 1), torch.tensor(self.std).view(3, 1, 1)
            image = (image.expand(3, -1, -1) - mean) / std
        sample: Dict[str, Any] = {"image": image}
        if "txt" in raw:
            report = raw_text(raw["txt"])
            sample["text"] = (split_sentences(report) or [report]) if self.text_mode == "sentences" else report
        sample.update(labels=torch.tensor(meta["labels"], dtype=torch.float32), id=meta["id"],
                      group=int(meta["group"]))
        if "mask_classes" in meta:
            sample["masks"] = self._masks(raw, len(meta["mask_classes"]), where)
        return sample

    def _masks(self, raw: RawRecord, count: int, where: str) -> Tensor:
        """``(K, S, S)`` bool: field ``mask{k}.png`` resized (nearest) to the image size; absent = empty mask."""
        masks = torch.zeros(count, self.image_size, self.image_size, dtype=torch.bool)
        for k in range(count):
            data = raw.get(f"mask{k}.png")
            if data is None:
                continue
            try:
                with Image.open(io.BytesIO(bytes(data))) as img:  # type: ignore[arg-type]
                    small = img.convert("L").resize((self.image_size, self.image_size), Image.Resampling.NEAREST)
            except (OSError, ValueError) as exc:
                raise ValueError(f"cannot decode mask {k} of {where}: {exc}") from exc
            masks[k] = torch.from_numpy(np.asarray(small) > 127)
        return masks


@DATASETS.register("cxr")
class XRayReportDataset(PairedDataset):
    """Chest X-rays with their reports and labels, one item per image, from one archive layout.

    Args:
        layout: ``"mimic"`` (:class:`~alignkit.domains.medical.xray.archives.MimicCxrJpgReader`, needs ``root``),
            ``"chexpert"`` (``csv`` + ``root``), ``"nih"`` (``csv`` + ``images_dir``, default ``root``) or
            ``"csv"`` (:class:`~alignkit.domains.medical.xray.archives.GenericCsvReader`: ``csv`` + ``root`` and the
            ``*_column`` parameters).
        split: the archive's split (MIMIC: ``train``/``validate``/``test``); None keeps every image.
        image_size, window, mean, std, text_mode, channels: the decoder's (:class:`XRayReportDecoder`).
        frontal_only, uncertain, blank, skip_bad, verify_images, report_sections, report_rule: the readers'
            options (:class:`~alignkit.domains.medical.xray.records.XRayRecordReader`; ``frontal_only`` defaults to
            True here, as ConVIRT and GLoRIA train on frontal views); ``uncertain="ignore"`` and blank cells
            under ``blank="ignore"`` give the label ``-1``.
        reports_root, image_extension (MIMIC), images_dir (NIH), image_column, report_column, report_is_path,
            split_column, view_column, study_column, subject_column (``csv``): passed to the layout's reader.
        label_columns: the findings, in order (``class_names``); default the layout's (CheXpert's 14 for
            MIMIC/CheXpert, NIH's 14 + ``No Finding``, none for ``csv``).

    Path parameters (``csv``, ``images_dir``, ``reports_root``, ``masks_csv``) are resolved against ``root``
    when relative (an absolute path stays as given; without ``root``, against the current folder); a missing
    one raises :class:`FileNotFoundError` naming the value given and the path looked at.

    ``masks_csv`` (e.g. the synthetic archive's ``masks.csv``): per-image segmentation
    masks, rows ``dicom_id, finding, mask_path``; samples then carry ``masks`` ``(K, S, S)`` bool in
    ``mask_classes`` order (default: the CSV's findings, sorted); a class without a row or file is empty.

    ``skipped`` lists ``(where, reason)`` of every image ``skip_bad=True`` dropped (from the reader); nothing
    else is dropped silently (``frontal_only`` drops are counted in ``dropped_views``). ``group`` of an item
    is the index of its ``(subject, study)`` among this dataset's sorted studies: the images of one study are
    positives of its report (use the ``multi_positive`` loss).
    """

    def __init__(self, layout: Annotated[str, OneOf(LAYOUTS)] = "mimic", root: Optional[str] = None,
                 csv: Optional[str] = None, images_dir: Optional[str] = None, reports_root: Optional[str] = None,
                 image_extension: str = "jpg", split: Optional[str] = None,
                 image_size: Annotated[int, AT_LEAST_ONE] = 224, window: WindowOption = "auto",
                 frontal_only: bool = True, uncertain: Annotated[str, OneOf(UNCERTAIN_POLICIES)] = "ignore",
                 blank: Annotated[str, OneOf(BLANK_POLICIES)] = "ignore", skip_bad: bool = False,
                 verify_images: Optional[bool] = None, label_columns: Optional[Sequence[str]] = None,
                 text_mode: Annotated[str, OneOf(TEXT_MODES)] = "report",
                 report_sections: Sequence[Annotated[str, OneOf(tuple(CXR_HEADERS))]] = ("findings", "impression"),
                 report_rule: Annotated[str, OneOf(REPORT_RULES)] = "any", image_column: str = "path",
                 report_column: Optional[str] = None,
                 report_is_path: bool = False, split_column: Optional[str] = None, view_column: Optional[str] = None,
                 study_column: Optional[str] = None, subject_column: Optional[str] = None,
                 mean: Union[float, Sequence[float]] = 0.5, std: GreyStd = 0.5,
                 channels: Annotated[int, OneOf(CHANNELS)] = 1, masks_csv: Optional[str] = None, mask_classes: Optional[Sequence[str]] = None):
        super().__init__(params=locals())
        check_choice(layout, LAYOUTS, "cxr layout")
        self._decoder = self.decoder(image_size=image_size, window=window, mean=mean, std=std, text_mode=text_mode,
                                     channels=channels)
        self.layout = layout
        self.class_names: List[str] = list(DEFAULT_LABELS[layout] if label_columns is None else label_columns)
        self.reader = self._reader(layout, root, csv, images_dir, reports_root, image_extension, split, frontal_only,
                                   uncertain, blank, skip_bad, verify_images, report_sections, report_rule,
                                   image_column, report_column, report_is_path, split_column, view_column,
                                   study_column, subject_column)
        self.records = self.reader.records
        self.skipped = list(self.reader.skipped)
        self.dropped_views = self.reader.dropped_views
        studies = sorted({(r.subject_id, r.study_id) for r in self.records})
        index = {s: k for k, s in enumerate(studies)}
        self.groups: List[int] = [index[(r.subject_id, r.study_id)] for r in self.records]
        self.mask_classes: Optional[List[str]] = None
        self._mask_paths: Dict[str, Dict[str, Path]] = {}
        if masks_csv is not None:
            self._read_masks(data_path(masks_csv, root, "cxr masks_csv"), mask_classes)

    def _read_masks(self, path: Path, classes: Optional[Sequence[str]]) -> None:
        """Index ``masks_csv``: rows ``dicom_id, finding, mask_path`` (relative to the CSV's folder; an empty
        ``mask_path`` or an image without a row means an empty mask for that class)."""
        if not path.is_file():
            raise ConfigError(f"cxr masks_csv not found: {path}")
        header, rows = read_table(path)
        for column in ("dicom_id", "finding", "mask_path"):
            if column not in header:
                raise ConfigError(f"{path} has no column '{column}'{did_you_mean(column, header)}")
        found = sorted({r["finding"] for r in rows})
        self.mask_classes = list(classes) if classes is not None else found
        for n, row in enumerate(rows, start=1):
            if row["finding"] not in self.mask_classes:
                raise ValueError(f"{path} row {n}: finding '{row['finding']}' is not in mask_classes "
                                 f"{self.mask_classes}")
            if not row["mask_path"].strip():
                continue
            mask = path.parent / row["mask_path"].strip()
            if not mask.is_file():
                raise ValueError(f"{path} row {n}: mask file {mask} not found")
            self._mask_paths.setdefault(row["dicom_id"], {})[row["finding"]] = mask

    def _reader(self, layout: str, root: Optional[str], csv: Optional[str], images_dir: Optional[str],
                reports_root: Optional[str], image_extension: str, split: Optional[str], frontal_only: bool,
                uncertain: str, blank: str, skip_bad: bool, verify_images: Optional[bool], report_sections: Sequence[str],
                report_rule: str, image_column: str, report_column: Optional[str], report_is_path: bool,
                split_column: Optional[str], view_column: Optional[str], study_column: Optional[str],
                subject_column: Optional[str]) -> XRayRecordReader:
        needs = {"mimic": ("root",), "chexpert": ("csv", "root"), "nih": ("csv",), "csv": ("csv", "root")}[layout]
        given = {"root": root, "csv": csv}
        missing = [k for k in needs if given[k] is None]
        if layout == "nih" and images_dir is None and root is None:
            missing.append("images_dir (or root)")
        if missing:
            raise ConfigError(f"cxr layout '{layout}' needs {', '.join(missing)} in data.params")
        csv = str(data_path(csv, root, f"cxr csv (layout '{layout}')")) if csv is not None else None
        images_dir = str(data_path(images_dir, root, "cxr images_dir")) if images_dir is not None else None
        reports_root = str(data_path(reports_root, root, "cxr reports_root")) if reports_root is not None else None
        common = dict(split=split, frontal_only=frontal_only, skip_bad=skip_bad, verify_images=verify_images)
        labelled = dict(common, uncertain=uncertain, blank=blank)
        reports = dict(report_sections=tuple(report_sections), report_rule=report_rule)
        if layout == "mimic":
            return MimicCxrJpgReader(root, reports_root=reports_root, image_extension=image_extension,
                                     label_columns=self.class_names, **labelled, **reports)
        if layout == "chexpert":
            return CheXpertReader(csv, root, label_columns=self.class_names, **labelled)
        if layout == "nih":
            unknown = sorted(set(self.class_names) - set(DEFAULT_LABELS["nih"]))
            if unknown:
                raise ConfigError(f"cxr layout 'nih': label_columns {unknown} are not NIH ChestX-ray14 findings; "
                                  f"choose from {', '.join(DEFAULT_LABELS['nih'])}")
            return NIHChestXray14Reader(csv, images_dir if images_dir is not None else root, **common)
        return GenericCsvReader(csv, root, image_column=image_column, report_column=report_column,
                                label_columns=self.class_names, split_column=split_column, view_column=view_column,
                                study_column=study_column, subject_column=subject_column,
                                report_is_path=report_is_path, **labelled, **reports)

    def __len__(self) -> int:
        return len(self.records)

    def labels(self, i: int) -> List[float]:
        """Item ``i``'s labels in ``class_names`` order: 1.0, 0.0, or ``-1.0`` for unknown / ignored."""
        values = self.records[i].labels
        return [IGNORE_LABEL if math.isnan(values[c]) else float(values[c]) for c in self.class_names]

    def raw(self, i: int) -> Dict[str, RawValue]:
        """``{<ext>: image file bytes, "txt": report (if any), "json": {id, group, study, where, labels}}``."""
        record = self.records[i]
        ext = record.image_path.suffix.lower().lstrip(".")
        try:
            data = record.image_path.read_bytes()
        except OSError as exc:
            raise ValueError(f"cannot read image file {record.image_path} (listed at {record.where}): {exc}") from exc
        out: Dict[str, RawValue] = {"dcm" if ext in _DICOM_FIELDS else ext: data}
        if record.report_text is not None:
            out["txt"] = record.report_text
        meta = {"id": record.image_id, "group": self.groups[i], "study": record.study_id, "where": record.where,
                "labels": self.labels(i)}
        if self.mask_classes is not None:
            meta["mask_classes"] = self.mask_classes
            for k, name in enumerate(self.mask_classes):
                mask = self._mask_paths.get(record.image_id, {}).get(name)
                if mask is not None:
                    out[f"mask{k}.png"] = mask.read_bytes()
        out["json"] = json.dumps(meta)
        return out

    @classmethod
    def decoder(cls, image_size: int = 224, window: Window = "auto", mean: Union[float, Sequence[float]] = 0.5,
                std: Union[float, Sequence[float]] = 0.5, text_mode: str = "report",
                channels: int = 1) -> XRayReportDecoder:
        return XRayReportDecoder(image_size=image_size, window=window, mean=mean,  # type: ignore[arg-type]
                                 std=std, text_mode=text_mode, channels=channels)  # type: ignore[arg-type]
