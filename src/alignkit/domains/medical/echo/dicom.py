"""Ultrasound DICOM cines (pydicom): frames, frame rate and the scan region from the header.

:func:`read_dicom` decodes the frames a selector asks for (each once) to uint8 RGB through the display pipeline
shared with the X-ray readers (:mod:`alignkit.domains.medical.dicom`: modality LUT, VOI or actual range,
MONOCHROME1, palette and YBR to RGB), and refuses files of other modalities (CT, MR, ...) unless asked;
:func:`probe_dicom` reads the header only. Telling DICOM from other files is
:func:`~alignkit.domains.medical.dicom.is_dicom`, shared with the X-ray readers. Sources (DICOM PS3.3): the Cine
Module, C.7.6.5 (``FrameTime``, ``FrameTimeVector``, ``CineRate``, ``RecommendedDisplayFrameRate``); the Image
Pixel Module, C.7.6.3 (``PhotometricInterpretation``, ``BitsStored``, ``PixelData`` (7FE0,0010)); the US Region
Calibration Module, C.8.5.5 (``SequenceOfUltrasoundRegions``).
"""
from __future__ import annotations

import math
from collections import abc
from typing import Any, Optional, Sequence, Tuple

import numpy as np

from alignkit.core.video import DecodedFrames, FrameSelector, VideoProbe, VideoSource, select_frames
from alignkit.domains.medical.dicom import (ULTRASOUND_MODALITIES, check_modality, frame_count, read_dataset,
                                            render_frames)


def _dicom_fps(ds: Any) -> float:
    """Frames per second: ``1000 / FrameTime`` (ms), else ``CineRate``, else ``RecommendedDisplayFrameRate``, else
    ``1000 / mean(FrameTimeVector)``; ``nan`` if none is given."""
    if ds.get("FrameTime"):
        return 1000.0 / float(ds.FrameTime)
    for keyword in ("CineRate", "RecommendedDisplayFrameRate"):
        if ds.get(keyword):
            return float(ds.get(keyword))
    vector = ds.get("FrameTimeVector")
    if vector:
        times = [float(v) for v in (vector if isinstance(vector, abc.Sequence) else [vector])]
        increments = [t for t in times[1:] if t > 0] or times
        return 1000.0 / float(np.mean(increments)) if np.mean(increments) > 0 else math.nan
    return math.nan


def ultrasound_region(ds: Any, rows: int, columns: int) -> Optional[np.ndarray]:
    """Bool ``(rows, columns)`` mask of the 2D image regions of ``SequenceOfUltrasoundRegions``, or None.

    Regions with ``RegionSpatialFormat`` 1 (2D tissue or flow) count; their boxes ``[MinX0, MaxX1] x
    [MinY0, MaxY1]`` (inclusive pixel coordinates) are united. A box reaching past the frame by more than one
    pixel is *stale* (e.g. kept from a resized copy of the file) and ignored; None when no box is left.
    """
    mask = np.zeros((rows, columns), dtype=bool)
    for item in ds.get("SequenceOfUltrasoundRegions", None) or []:
        if int(item.get("RegionSpatialFormat", 0) or 0) != 1:
            continue
        x0, y0 = int(item.RegionLocationMinX0), int(item.RegionLocationMinY0)
        x1, y1 = int(item.RegionLocationMaxX1), int(item.RegionLocationMaxY1)
        if x1 > columns or y1 > rows or x0 > x1 or y0 > y1:
            continue
        mask[y0:min(y1, rows - 1) + 1, x0:min(x1, columns - 1) + 1] = True
    return mask if mask.any() else None


def read_dicom(source: VideoSource, select: Optional[FrameSelector], where: str,
               modalities: Optional[Sequence[str]] = ULTRASOUND_MODALITIES
               ) -> Tuple[DecodedFrames, Optional[np.ndarray]]:
    """Frames ``select`` asks for (each decoded once; all when None) of an existing DICOM path or bytes named
    ``where`` in errors, and the file's :func:`ultrasound_region` (None when it has no valid one).

    The file must be of one of ``modalities`` (default US and IVUS; None accepts any;
    :func:`~alignkit.domains.medical.dicom.check_modality`). Frames are uint8 ``(N, H, W, 3)`` RGB from the shared
    display pipeline (:func:`~alignkit.domains.medical.dicom.render_frames`, ``window="auto"``, one grey range for
    all decoded frames; grey repeated over three channels): ``round(255 y)``. ``fps`` from :func:`_dicom_fps`; the
    total is ``NumberOfFrames`` (1 when absent). ``ValueError`` naming the file for an unreadable file, one of
    another modality, one without pixel data, a malformed header, an undecodable frame, an unsupported
    photometric interpretation, or indices outside the frames.
    """
    ds = read_dataset(source, where)
    check_modality(ds, modalities, where)
    total, fps = frame_count(ds, where), _dicom_fps(ds)
    indices = select_frames(select, total, fps, where)
    unique, inverse = np.unique(indices, return_inverse=True)
    rendered = render_frames(ds, [int(k) for k in unique], where, uint8=True)
    if rendered.ndim == 3:  # grey
        rendered = np.repeat(rendered[..., None], 3, axis=-1)
    frames = rendered[inverse.reshape(-1)]
    return DecodedFrames(frames, indices, total, fps), ultrasound_region(ds, frames.shape[1], frames.shape[2])


def probe_dicom(source: VideoSource, where: str,
                modalities: Optional[Sequence[str]] = ULTRASOUND_MODALITIES) -> VideoProbe:
    """Frame count (``NumberOfFrames``, 1 when absent), ``Rows``, ``Columns`` and :func:`_dicom_fps` of an existing
    DICOM path or bytes, read without its pixel data; ``ValueError`` naming ``where`` for an unreadable file, a
    malformed NumberOfFrames, or a modality outside ``modalities`` (as :func:`read_dicom`)."""
    ds = read_dataset(source, where, pixels=False)
    check_modality(ds, modalities, where)
    return VideoProbe(frames=frame_count(ds, where), height=int(ds.get("Rows", 0) or 0),
                      width=int(ds.get("Columns", 0) or 0), fps=_dicom_fps(ds))
