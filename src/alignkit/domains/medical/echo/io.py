"""Echocardiography videos and the archive layouts that list them.

Videos: :func:`load_echo` reads an AVI/MP4 (PyAV) or a DICOM cine (pydicom) into an :class:`EchoVideo`:
uint8 RGB frames ``(T, H, W, 3)``, the frame rate and, for ultrasound DICOM, the *sector mask* (the scan
cone; everything outside it, i.e. text, ECG traces, calipers, logos, is set to 0). Only the frames a
``select`` callable asks for are decoded: a video seeks to the keyframe before the first one, a DICOM decodes
just those frames. :class:`EchoVideoReader` is the same loader as a MONAI ``ImageReader``, and
:class:`LoadEcho` / :class:`LoadEchod` are the MONAI array/dict transforms that start a pipeline
(then :mod:`alignkit.domains.medical.echo.transforms`)::

    Compose([LoadEchod("video"), SampleClipd("video", num_frames=16, stride=2),
             FrameTransformsd("video", image_size=64)])

Records: :class:`EchoNetReader` indexes the EchoNet-Dynamic layout (``Videos/*.avi``, ``FileList.csv``,
``VolumeTracings.csv``) into :class:`EchoVideoRecord` s; :class:`EchoStudyTableReader` indexes a study table
(one CSV row per video: study id, video, view, report, split, labels) into :class:`EchoStudy` s, each with
several videos and one report. Both list what ``skip_bad=True`` dropped in ``skipped``.

The CSV helpers (:func:`~alignkit.domains.medical.tables.read_table`,
:func:`~alignkit.domains.medical.tables.require_columns`, ``BadRowError``) are shared with the X-ray readers.
"""
from __future__ import annotations

import io
import logging
import math
from collections import abc
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from monai.data import MetaTensor
from monai.data.image_reader import ImageReader
from monai.transforms import MapTransform, Transform
from monai.utils import ImageMetaKey, MetaKeys, ensure_tuple

from alignkit.core.data import MISSING_VALUES
from alignkit.core.registry import ConfigError, check_choice
from alignkit.domains.medical.reports import ECHO_HEADERS, EmptyReportError, check_report_rule, report_text
from alignkit.domains.medical.dicom import is_dicom
from alignkit.domains.medical.tables import BadRowError, read_table, require_columns

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]
EchoSource = Union[str, Path, bytes]
FrameSelector = Callable[[int, float], np.ndarray]
"""``(total frames in the file, frames per second) -> int array of frame indices`` to decode, in output order
(indices may repeat)."""

VIDEO_SUFFIXES = (".avi", ".mp4", ".mov", ".mkv", ".webm")
DICOM_SUFFIXES = (".dcm", ".dicom")
ECHO_SUFFIXES = (*VIDEO_SUFFIXES, *DICOM_SUFFIXES)
"""File types :func:`load_echo` reads (a file without one of these is read as DICOM if it has the DICM mark)."""

SECTOR_MASKING = ("dicom", "all", "none")
"""``mask_sector`` choices: mask DICOM files only (default; EchoNet AVIs are already masked), every file, none."""

ECHONET_COLUMNS = ("FileName", "EF", "ESV", "EDV", "FrameHeight", "FrameWidth", "FPS", "NumberOfFrames", "Split")
TRACING_COLUMNS = ("FileName", "X1", "Y1", "X2", "Y2", "Frame")

ECHOPRIME_VIEWS: Tuple[str, ...] = (
    "A2C", "A3C", "A4C", "A5C", "Apical_Doppler", "Doppler_Parasternal_Long", "Doppler_Parasternal_Short",
    "Parasternal_Long", "Parasternal_Short", "SSN", "Subcostal")
"""The 11 echo views of EchoPrime's view classifier (apical 2/3/4/5-chamber, colour Doppler views, parasternal
long and short axis, suprasternal notch, subcostal); the default view vocabulary."""

REPORT_SECTIONS: Tuple[str, ...] = (
    "findings", "left ventricle", "left atrium", "right ventricle", "right atrium", "aortic valve", "mitral valve",
    "tricuspid valve", "pulmonic valve", "aorta", "pericardium", "conclusions")
"""Echo report sections a model trains on by default (every :data:`ECHO_HEADERS` section except indication and
general comments), in report order."""

MOTION_THRESHOLD = 0.5
"""Grey-level standard deviation over time (of 255) above which a pixel counts as moving (see :func:`sector_mask`)."""
MIN_MOVING_FRACTION = 0.02
"""A cine whose moving pixels cover less of the frame (or region) is treated as still (see :func:`sector_mask`)."""
SIGNAL_LEVEL = 8.0
"""Grey level (of 255) above which a pixel of a still image counts as signal; JPEG noise in black stays below."""

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601


# ============================================================================================= videos


@dataclass(frozen=True, eq=False)
class EchoVideo:
    """Decoded frames of one echo video.

    ``frames``: uint8 ``(T, H, W, 3)`` RGB (grey videos have three equal channels); ``indices``: int64 ``(T,)``,
    the file frame each row came from; ``total_frames``: frames in the file; ``fps``: frames per second
    (``nan`` when the file does not say); ``sector``: bool ``(H, W)``, True inside the scan cone (pixels outside
    are 0 in ``frames``), or None when not masked; ``source``: the file (or name of the bytes) read.
    """

    frames: np.ndarray
    indices: np.ndarray
    total_frames: int
    fps: float
    sector: Optional[np.ndarray]
    source: str


def _name(source: EchoSource, name: str) -> str:
    return name or (str(source) if not isinstance(source, (bytes, bytearray)) else "<bytes>")


def is_dicom_source(source: EchoSource) -> bool:
    """True for DICOM bytes (``DICM`` at byte 128) or a DICOM path (see
    :func:`~alignkit.domains.medical.dicom.is_dicom`); False for the :data:`VIDEO_SUFFIXES`."""
    if isinstance(source, (bytes, bytearray)):
        return bytes(source[128:132]) == b"DICM"
    return Path(source).suffix.lower() not in VIDEO_SUFFIXES and is_dicom(source)


def _selected(select: Optional[FrameSelector], total: int, fps: float, where: str) -> np.ndarray:
    if total < 1:
        raise ValueError(f"video {where} has no frames")
    if select is None:
        return np.arange(total, dtype=np.int64)
    indices = np.asarray(select(total, fps), dtype=np.int64).reshape(-1)
    if indices.size == 0 or indices.min() < 0 or indices.max() >= total:
        raise ValueError(f"frames {indices.tolist()} requested but video {where} has {total} frame(s)")
    return indices


def _check_file(source: EchoSource) -> None:
    if not isinstance(source, (bytes, bytearray)) and not Path(source).is_file():
        raise FileNotFoundError(f"echo video file {source} not found")


def _open_video(source: EchoSource, where: str) -> Any:
    import av
    _check_file(source)
    try:
        container = av.open(io.BytesIO(bytes(source)) if isinstance(source, (bytes, bytearray)) else str(source))
    except (av.FFmpegError, ValueError, OSError) as exc:
        raise ValueError(f"cannot open video {where} ({type(exc).__name__}: {exc}); the file is corrupt, "
                         "truncated or not a video") from exc
    if not container.streams.video:
        container.close()
        raise ValueError(f"{where} holds no video stream")
    return container


def _stream_layout(container: Any, stream: Any) -> Tuple[int, float]:
    """``(frames, fps)`` from the container header; frames counted from the packets when the header has none."""
    fps = float(stream.average_rate or stream.guessed_rate or math.nan)
    total = int(stream.frames or 0)
    if total <= 0:
        total = sum(1 for packet in container.demux(stream) if packet.size)
        container.seek(0)
    return total, fps


def _rgb(frame: Any) -> np.ndarray:
    """A PyAV frame as uint8 ``(H, W, 3)`` RGB; grey frames are read natively and repeated (swscale's grey to RGB
    conversion costs more than decoding)."""
    if frame.format.name == "gray":
        return np.repeat(frame.to_ndarray()[..., None], 3, axis=-1)
    return frame.to_ndarray(format="rgb24")


def _read_video(source: EchoSource, select: Optional[FrameSelector], where: str) -> Tuple[np.ndarray, np.ndarray,
                                                                                         int, float]:
    """Frames ``select`` asks for: decoded with PyAV from the keyframe before the first one to the last one, and
    converted to RGB only when wanted."""
    import av
    with _open_video(source, where) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1  # small frames: threads cost more than they give (workers parallelise)
        total, fps = _stream_layout(container, stream)
        indices = _selected(select, total, fps, where)
        first, last = int(indices.min()), int(indices.max())
        wanted = set(indices.tolist())
        base = stream.start_time or 0
        seekable = first > 0 and math.isfinite(fps) and stream.time_base is not None
        if seekable:
            container.seek(base + int(first / fps / stream.time_base), stream=stream, backward=True)
        decoded: Dict[int, np.ndarray] = {}
        reached = -1
        try:
            for count, frame in enumerate(container.decode(stream)):
                k = count if not seekable or frame.pts is None else \
                    round(float((frame.pts - base) * stream.time_base) * fps)
                reached = max(reached, k)
                if k > last:
                    break
                if k in wanted:
                    decoded[k] = _rgb(frame)
        except (av.FFmpegError, ValueError) as exc:
            raise ValueError(f"cannot decode video {where} ({type(exc).__name__}: {exc}); the file is corrupt "
                             "or truncated") from exc
    if len(decoded) < len(wanted):
        raise ValueError(f"video {where} ended after frame {reached} of the {total} its header lists (frames up to "
                         f"{last} wanted); the file is truncated or corrupt")
    return np.stack([decoded[int(k)] for k in indices]), indices, total, fps


# ---------------------------------------------------------------------------------------------- DICOM


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


def _read_dicom(source: EchoSource, select: Optional[FrameSelector],
                where: str) -> Tuple[np.ndarray, np.ndarray, int, float, Optional[np.ndarray]]:
    """Frames ``select`` asks for (each decoded once), fps and the ultrasound region of a DICOM file."""
    try:
        import pydicom
        from pydicom.pixels import pixel_array
    except ImportError as exc:
        raise ImportError("reading DICOM needs pydicom: pip install 'alignkit[medical]'") from exc
    _check_file(source)
    try:
        ds = pydicom.dcmread(io.BytesIO(bytes(source)) if isinstance(source, (bytes, bytearray)) else source)
    except Exception as exc:  # pydicom raises InvalidDicomError, EOFError, struct.error, ... on bad files
        raise ValueError(f"cannot read DICOM file {where} ({type(exc).__name__}: {exc}); the file is corrupt, "
                         "truncated or not DICOM") from exc
    if "PixelData" not in ds:
        raise ValueError(f"DICOM file {where} has no pixel data (7FE0,0010) (SOP class "
                         f"{ds.get('SOPClassUID', 'unknown')}): it is not an image; remove it from the list")
    total, fps = int(ds.get("NumberOfFrames", 1) or 1), _dicom_fps(ds)
    indices = _selected(select, total, fps, where)
    decoded: Dict[int, np.ndarray] = {}
    for k in np.unique(indices):
        try:
            stored = pixel_array(ds, index=int(k))
        except Exception as exc:  # decoders raise ValueError, RuntimeError, NotImplementedError, ...
            syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
            raise ValueError(f"cannot decode frame {k} of DICOM file {where} (transfer syntax {syntax}; "
                             f"{type(exc).__name__}: {exc}); the file is truncated or needs a decoder plugin "
                             "(Pillow or pylibjpeg for JPEG, gdcm)") from exc
        decoded[int(k)] = _to_rgb8(stored, ds, where)
    frames = np.stack([decoded[int(k)] for k in indices])
    return frames, indices, total, fps, ultrasound_region(ds, frames.shape[1], frames.shape[2])


# ---------------------------------------------------------------------------------------------- sector


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

    1. ``R``: ``region`` (e.g. :func:`ultrasound_region` from the DICOM header), or the whole frame;
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


# ---------------------------------------------------------------------------------------------- loading


def load_echo(source: EchoSource, select: Optional[FrameSelector] = None, mask_sector: str = "dicom",
              name: str = "", dicom: Optional[bool] = None) -> EchoVideo:
    """Read an echo video (a path, or a file's bytes, e.g. from a shard) into an :class:`EchoVideo`.

    - AVI/MP4/MOV/MKV/WebM (PyAV): frames as RGB24; ``fps`` the stream's average rate; the frame count from the
      container header (counted from the packets when absent). With ``select``, decoding seeks to the keyframe
      before the first wanted frame and stops after the last (an intra-only codec such as FFV1 decodes just
      that range).
    - DICOM (pydicom; a ``.dcm``/``.dicom`` name or the ``DICM`` mark): multi-frame cines and single frames;
      YBR_FULL / YBR_FULL_422 are converted to RGB by pydicom, PALETTE COLOR through its lookup table,
      MONOCHROME1/2 repeated over three channels; JPEG Baseline needs Pillow (or pylibjpeg/gdcm), RLE and
      uncompressed need nothing more. ``fps`` from ``FrameTime`` (see :func:`_dicom_fps`). Only the wanted
      frames are decoded.

    ``select(total, fps)`` returns the frame indices to decode, in output order (e.g.
    :meth:`~alignkit.domains.medical.echo.transforms.SampleClip.indices`); None decodes every frame.
    ``mask_sector`` (:data:`SECTOR_MASKING`): ``"dicom"`` masks DICOM files, ``"all"`` every file, ``"none"``
    nothing; masked frames are 0 outside :func:`sector_mask` (estimated from the decoded frames, within the
    DICOM's ultrasound region when it has a valid one). ``dicom`` forces the file type (None decides by name and
    mark); ``name`` is what errors call the source.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file for an unreadable,
    corrupt or truncated one, a DICOM without pixel data, an unsupported photometric interpretation, or
    indices outside the file's frames.
    """
    check_choice(mask_sector, SECTOR_MASKING, "mask_sector")
    where = _name(source, name)
    as_dicom = is_dicom_source(source) if dicom is None else dicom
    region: Optional[np.ndarray] = None
    if as_dicom:
        frames, indices, total, fps, region = _read_dicom(source, select, where)
    else:
        frames, indices, total, fps = _read_video(source, select, where)
    sector = None
    if mask_sector == "all" or (mask_sector == "dicom" and as_dicom):
        sector = sector_mask(frames, region)
        frames = frames * sector[None, :, :, None]
    return EchoVideo(frames=np.ascontiguousarray(frames), indices=indices, total_frames=total, fps=fps,
                     sector=sector, source=where)


@dataclass(frozen=True)
class VideoInfo:
    """Header facts of an echo video: ``frames`` (count), ``height``, ``width`` (pixels), ``fps`` (``nan`` if
    unknown)."""

    frames: int
    height: int
    width: int
    fps: float


def probe_echo(source: EchoSource, name: str = "") -> VideoInfo:
    """Frame count, size and rate of a video or DICOM from its header, without decoding pixel data."""
    where = _name(source, name)
    if is_dicom_source(source):
        import pydicom
        _check_file(source)
        try:
            ds = pydicom.dcmread(io.BytesIO(bytes(source)) if isinstance(source, (bytes, bytearray)) else source,
                                 stop_before_pixels=True)
        except Exception as exc:  # see _read_dicom
            raise ValueError(f"cannot read DICOM file {where} ({type(exc).__name__}: {exc})") from exc
        return VideoInfo(frames=int(ds.get("NumberOfFrames", 1) or 1), height=int(ds.get("Rows", 0) or 0),
                         width=int(ds.get("Columns", 0) or 0), fps=_dicom_fps(ds))
    with _open_video(source, where) as container:
        stream = container.streams.video[0]
        total, fps = _stream_layout(container, stream)
        return VideoInfo(frames=total, height=int(stream.height), width=int(stream.width), fps=fps)


# ------------------------------------------------------------------------------------ MONAI reader/loaders


class EchoVideoReader(ImageReader):
    """A MONAI ``ImageReader`` that reads echo videos with :func:`load_echo` (same ``mask_sector``).

    One file at a time. ``get_data`` gives the uint8 array ``(T, H, W, 3)`` with metadata ``spatial_shape``
    ``(T, H, W)``, ``original_channel_dim`` -1, ``fps``, ``total_frames`` and ``sector`` (the mask or None).
    """

    def __init__(self, mask_sector: str = "dicom"):
        super().__init__()
        check_choice(mask_sector, SECTOR_MASKING, "mask_sector")
        self.mask_sector = mask_sector

    def verify_suffix(self, filename: Union[Sequence[PathLike], PathLike]) -> bool:
        return all(Path(f).suffix.lower() in ECHO_SUFFIXES for f in ensure_tuple(filename))

    def read(self, data: Union[Sequence[PathLike], PathLike], **kwargs: Any) -> EchoVideo:
        """Decode one file (``kwargs`` are accepted for MONAI's interface and unused)."""
        files = ensure_tuple(data)
        if len(files) != 1:
            raise ValueError(f"EchoVideoReader reads one video at a time, got {len(files)} files; videos differ "
                             "in length, so load them separately")
        return load_echo(files[0], mask_sector=self.mask_sector)

    def get_data(self, img: EchoVideo) -> Tuple[np.ndarray, Dict[str, Any]]:
        meta: Dict[str, Any] = {MetaKeys.SPATIAL_SHAPE: np.asarray(img.frames.shape[:3]),
                                MetaKeys.ORIGINAL_CHANNEL_DIM: -1, "fps": img.fps, "total_frames": img.total_frames,
                                "sector": img.sector}
        return img.frames, meta


class LoadEcho(Transform):
    """MONAI array transform: file path -> ``MetaTensor`` float32 ``(3, T, H, W)`` of values 0..255 (channel
    first), every frame, with the reader's metadata (``fps``, ``total_frames``, ``sector``, ``filename_or_obj``).

    Errors are not swallowed: a corrupt file raises the ``ValueError`` naming it.
    """

    def __init__(self, mask_sector: str = "dicom"):
        self.reader = EchoVideoReader(mask_sector=mask_sector)

    def __call__(self, filename: PathLike) -> MetaTensor:
        array, meta = self.reader.get_data(self.reader.read(filename))
        meta[ImageMetaKey.FILENAME_OR_OBJ] = str(filename)
        video = torch.from_numpy(np.ascontiguousarray(array.transpose(3, 0, 1, 2))).float()
        return MetaTensor(video, meta=meta)


class LoadEchod(MapTransform):
    """Dictionary version of :class:`LoadEcho`: replaces each ``keys`` path by its video ``MetaTensor``."""

    def __init__(self, keys: Union[str, Sequence[str]], mask_sector: str = "dicom", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadEcho(mask_sector=mask_sector)

    def __call__(self, data: Mapping[str, Any]) -> Dict[str, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.loader(d[key])
        return d


# ============================================================================================ records


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
    """A numeric CSV cell: ``nan`` for a missing value (:data:`~alignkit.core.data.MISSING_VALUES`)."""
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
    unsupported video file, non-numeric cell, missing or empty report, a study whose rows disagree, and with
    ``verify_videos`` a video that cannot be decoded) raises a ``ValueError`` naming the file and row when
    ``skip_bad`` is False; when True it is dropped and listed (one warning is logged). Unknown columns are
    config errors (:class:`ConfigError`) either way. ``verify_videos`` decodes every video once while indexing
    (slow; for small archives or a one-off check); otherwise corrupt files raise when loaded.
    """

    def __init__(self, split: Optional[str] = None, skip_bad: bool = False, verify_videos: bool = False):
        self.split = split
        self.skip_bad = skip_bad
        self.verify_videos = verify_videos
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
                load_echo(path, mask_sector="none")
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
                 view_column: Optional[str] = None, skip_bad: bool = False, verify_videos: bool = False):
        super().__init__(split=split, skip_bad=skip_bad, verify_videos=verify_videos)
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
    those sections is bad. Bad studies and bad video rows (see :class:`EchoRecordReader`) raise naming the
    table and rows, or under ``skip_bad`` are listed in ``skipped``: a bad video row drops that video, a bad
    report (or a study left without videos) drops the whole study.
    """

    def __init__(self, csv: PathLike, root: Optional[PathLike] = None, split: Optional[str] = None,
                 study_column: str = "study_id", video_column: str = "video", view_column: Optional[str] = "view",
                 report_column: str = "report", report_is_path: bool = True, split_column: Optional[str] = "split",
                 label_columns: Optional[Sequence[str]] = None,
                 report_sections: Sequence[str] = REPORT_SECTIONS, report_rule: str = "any",
                 skip_bad: bool = False, verify_videos: bool = False):
        super().__init__(split=split, skip_bad=skip_bad, verify_videos=verify_videos)
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
            text = path.read_text(encoding="utf-8", errors="replace")
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
