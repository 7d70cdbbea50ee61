"""Ultrasound DICOM cines (pydicom): frames, frame rate and the scan region from the header.

:func:`read_dicom` decodes the frames a selector asks for (each once) to uint8 RGB; :func:`probe_dicom`
reads the header only. Telling DICOM from other files is :func:`~alignkit.domains.medical.dicom.is_dicom`,
shared with the X-ray readers. Sources (DICOM PS3.3): the Cine Module, C.7.6.5 (``FrameTime``,
``FrameTimeVector``, ``CineRate``, ``RecommendedDisplayFrameRate``); the Image Pixel Module, C.7.6.3
(``PhotometricInterpretation``, ``BitsStored``, ``PixelData`` (7FE0,0010)); the US Region Calibration Module,
C.8.5.5 (``SequenceOfUltrasoundRegions``).
"""
from __future__ import annotations

import math
from collections import abc
from typing import Any, Dict, Optional, Tuple

import numpy as np

from alignkit.core.video import DecodedFrames, FrameSelector, VideoProbe, VideoSource, select_frames
from alignkit.domains.medical.dicom import decode_frame, frame_count, read_dataset


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


def _to_rgb8(stored: np.ndarray, ds: Any, where: str) -> np.ndarray:
    """One decoded DICOM frame -> uint8 ``(H, W, 3)`` RGB.

    PALETTE COLOR goes through ``pydicom.pixels.apply_color_lut`` (16-bit entries divided by 257); RGB and YBR
    arrive as RGB from pydicom; MONOCHROME2 is repeated over three channels, MONOCHROME1 inverted first.
    Samples of more than 8 bits are scaled by ``255 / (2^BitsStored - 1)``.
    """
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    bits = int(ds.get("BitsStored", 8) or 8)
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut
        rgb = apply_color_lut(stored, ds)
        rgb = np.round(rgb / 257.0) if rgb.dtype.itemsize > 1 else rgb
    elif stored.ndim == 3 and stored.shape[-1] == 3:
        rgb = stored if bits <= 8 else stored * (255.0 / (2 ** bits - 1))
    elif stored.ndim == 2 and photometric in ("MONOCHROME1", "MONOCHROME2"):
        grey = stored.astype(np.float32) * (255.0 / (2 ** bits - 1)) if bits > 8 else stored
        grey = 255 - grey if photometric == "MONOCHROME1" else grey
        rgb = np.repeat(np.asarray(grey)[..., None], 3, axis=-1)
    else:
        raise ValueError(f"DICOM file {where}: photometric interpretation {photometric} with a frame of shape "
                         f"{stored.shape} is not supported (RGB, YBR_*, PALETTE COLOR, MONOCHROME1/2 are)")
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def read_dicom(source: VideoSource, select: Optional[FrameSelector],
               where: str) -> Tuple[DecodedFrames, Optional[np.ndarray]]:
    """Frames ``select`` asks for (each decoded once; all when None) of an existing DICOM path or bytes named
    ``where`` in errors, and the file's :func:`ultrasound_region` (None when it has no valid one).

    Frames are uint8 ``(N, H, W, 3)`` RGB (see :func:`_to_rgb8`); ``fps`` from :func:`_dicom_fps`; the total is
    ``NumberOfFrames`` (1 when absent). ``ValueError`` naming the file for an unreadable file, a file without
    pixel data, an undecodable frame, an unsupported photometric interpretation, or indices outside the frames.
    """
    ds = read_dataset(source, where)
    total, fps = frame_count(ds), _dicom_fps(ds)
    indices = select_frames(select, total, fps, where)
    decoded: Dict[int, np.ndarray] = {}
    for k in np.unique(indices):
        stored = decode_frame(ds, int(k), where)
        decoded[int(k)] = _to_rgb8(stored, ds, where)
    frames = np.stack([decoded[int(k)] for k in indices])
    return DecodedFrames(frames, indices, total, fps), ultrasound_region(ds, frames.shape[1], frames.shape[2])


def probe_dicom(source: VideoSource, where: str) -> VideoProbe:
    """Frame count (``NumberOfFrames``, 1 when absent), ``Rows``, ``Columns`` and :func:`_dicom_fps` of an existing
    DICOM path or bytes, read without its pixel data; ``ValueError`` naming ``where`` for an unreadable file."""
    ds = read_dataset(source, where, pixels=False)
    return VideoProbe(frames=frame_count(ds), height=int(ds.get("Rows", 0) or 0),
                      width=int(ds.get("Columns", 0) or 0), fps=_dicom_fps(ds))
