"""The ultrasound sector mask: which pixels of an echo cine lie inside the scan cone.

:func:`sector_mask` estimates the cone from decoded frames alone (a beating heart moves; burnt-in text, ECG
traces, calipers, logos and colour bars do not), optionally within a region from the file header (see
:func:`~alignkit.domains.medical.echo.dicom.ultrasound_region`). Grey levels are ITU-R BT.601 luma
``RGB . (0.299, 0.587, 0.114)`` on the 0..255 scale throughout.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

MOTION_THRESHOLD = 0.5
"""Grey-level standard deviation over time (of 255) above which a pixel counts as moving (see :func:`sector_mask`)."""
MIN_MOVING_FRACTION = 0.02
"""A cine whose moving pixels cover less of the frame (or region) is treated as still (see :func:`sector_mask`)."""
SIGNAL_LEVEL = 8.0
"""Grey level (of 255) above which a pixel of a still image counts as signal; JPEG noise in black stays below."""

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601


def _grey_statistics(frames: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Per pixel over time: the standard deviation and the maximum of the grey value ``RGB . (0.299, 0.587,
    0.114)`` (float64 accumulators, one frame at a time)."""
    total = np.zeros(frames.shape[1:3])
    squares = np.zeros(frames.shape[1:3])
    peak = np.zeros(frames.shape[1:3])
    for frame in frames:
        grey = frame.astype(np.float32) @ _LUMA
        total += grey
        squares += grey.astype(np.float64) ** 2
        np.maximum(peak, grey, out=peak)
    mean = total / len(frames)
    return np.sqrt(np.maximum(squares / len(frames) - mean ** 2, 0.0)), peak


def _convex_fill(component: np.ndarray) -> np.ndarray:
    """The filled convex hull of a bool mask's pixels (the mask itself when its pixels are collinear)."""
    from PIL import Image, ImageDraw
    from scipy import ndimage
    from scipy.spatial import ConvexHull, QhullError
    rim = component & ~ndimage.binary_erosion(component)
    ys, xs = np.nonzero(rim)
    points = np.stack([xs, ys], axis=1).astype(np.float64)
    try:
        hull = ConvexHull(points)
    except (QhullError, ValueError):
        return component
    canvas = Image.new("1", (component.shape[1], component.shape[0]), 0)
    ImageDraw.Draw(canvas).polygon([tuple(points[v]) for v in hull.vertices], fill=1, outline=1)
    return np.asarray(canvas, dtype=bool) | component


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of ``mask`` (all False when it is empty)."""
    from scipy import ndimage
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), bool))
    if count == 0:
        return mask
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, count + 1))
    return labels == 1 + int(np.argmax(sizes))


def _touching(mask: np.ndarray, core: np.ndarray) -> np.ndarray:
    """The 8-connected components of ``mask`` that overlap ``core``."""
    from scipy import ndimage
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3), bool))
    keep = np.unique(labels[core & mask])
    return np.isin(labels, keep[keep > 0])


def sector_mask(frames: np.ndarray, region: Optional[np.ndarray] = None, motion_threshold: float = MOTION_THRESHOLD,
                min_moving_fraction: float = MIN_MOVING_FRACTION, signal_level: float = SIGNAL_LEVEL) -> np.ndarray:
    """Bool ``(H, W)``: the ultrasound scan cone of uint8 RGB ``frames`` ``(T, H, W, 3)``.

    Rule (pixel values are grey levels ``RGB . (0.299, 0.587, 0.114)`` in 0..255; *cleaned* = opened 3x3 to
    drop isolated specks, then closed 5x5 to bridge speckle gaps):

    1. ``R``: ``region`` (e.g. :func:`~alignkit.domains.medical.echo.dicom.ultrasound_region`
       from the DICOM header), or the whole frame;
    2. *signal* pixels: maximum over time ``>= signal_level`` within ``R``; *moving* pixels: standard deviation
       over time ``>= motion_threshold`` within ``R`` (a beating heart moves; burnt-in text, logos, calipers and
       colour bars do not);
    3. the *core*: the largest component of the cleaned moving pixels, when there are at least two frames and
       they cover ``>= min_moving_fraction`` of ``R``; otherwise (one frame, or a frozen cine) the largest
       component of the cleaned signal pixels;
    4. the cone: the components of the cleaned signal pixels that overlap the core (so the dim, nearly still
       edges of the cone join it while separate overlays do not);
    5. the mask is the filled convex hull of the cone, within ``R`` (a scan sector, a linear rectangle and a
       curved-array fan are convex).

    When no pixel qualifies, the mask is ``R`` (nothing is removed beyond the header region).
    """
    from scipy import ndimage
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"sector_mask needs uint8 RGB frames (T, H, W, 3), got shape {frames.shape}")
    inside = np.ones(frames.shape[1:3], dtype=bool) if region is None else np.asarray(region, dtype=bool)
    spread, peak = _grey_statistics(frames)

    def cleaned(mask: np.ndarray) -> np.ndarray:
        return ndimage.binary_closing(ndimage.binary_opening(mask & inside, np.ones((3, 3), bool)),
                                      np.ones((5, 5), bool))

    signal = cleaned(peak >= signal_level)
    moving = (spread >= motion_threshold) & inside
    still = len(frames) < 2 or moving.sum() < min_moving_fraction * inside.sum()
    core = _largest_component(signal if still else cleaned(moving))
    if not core.any():
        return inside
    return _convex_fill(_touching(signal, core) | core) & inside
