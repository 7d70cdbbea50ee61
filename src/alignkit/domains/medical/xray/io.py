"""Chest X-ray images and the archive layouts that list them.

Images: :func:`load_xray` reads PNG/JPEG (8- and 16-bit) and DICOM (through pydicom: modality LUT, VOI LUT
or window, MONOCHROME1 inverted, multi-frame) into a float32 ``(H, W)`` array in ``[0, 1]`` where bone is
bright. :class:`XRayImageReader` is the same loader as a MONAI ``ImageReader``, and :class:`LoadXRay` /
:class:`LoadXRayd` are the MONAI array/dict transforms that start a pipeline::

    Compose([LoadXRayd("image"), EnsureChannelFirstd("image"), Resized("image", (224, 224)),
             ScaleIntensityd("image")])

Records: :class:`MimicCxrJpgReader`, :class:`CheXpertReader`, :class:`NIHChestXray14Reader` and
:class:`GenericCsvReader` index an archive into :class:`XRayRecord` s (one per image) with labels,
view, split, the report's training text and where each came from. Shared options (see
:class:`XRayRecordReader`): ``split``, ``frontal_only``, ``uncertain``, ``blank``, ``skip_bad``,
``verify_images``, ``report_sections`` / ``report_rule``.
"""
from __future__ import annotations

import io
import logging
import math
import re
from collections import Counter, abc
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from monai.data import MetaTensor
from monai.data.image_reader import ImageReader
from monai.transforms import EnsureChannelFirst, MapTransform, Transform
from monai.utils import ImageMetaKey, MetaKeys, ensure_tuple
from PIL import Image

from alignkit.core.data import MISSING_VALUES
from alignkit.core.registry import ConfigError, did_you_mean
from alignkit.domains.medical.dicom import is_dicom
from alignkit.domains.medical.reports import EmptyReportError, check_report_rule, report_text
from alignkit.domains.medical.tables import BadRowError, read_table, require_columns

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]
Window = Union[str, Tuple[float, float]]
ImageSize = Union[None, int, Tuple[int, int]]

XRAY_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
"""File types :func:`load_xray` reads (a file without one of these is read as DICOM if it has the DICM mark)."""

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

WINDOWS = ("auto", "none", "minmax")
UNCERTAIN_POLICIES = ("ignore", "zeros", "ones")
BLANK_POLICIES = ("ignore", "zeros")

MIMIC_SPLIT_CSV = "mimic-cxr-2.0.0-split.csv"
MIMIC_CHEXPERT_CSV = "mimic-cxr-2.0.0-chexpert.csv"
MIMIC_METADATA_CSV = "mimic-cxr-2.0.0-metadata.csv"

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601, as Pillow's convert("L")


# ============================================================================================= images


def check_window(window: Any) -> Window:
    """Validate a ``window`` option (see :func:`load_xray`); returns it with a pair as floats."""
    if isinstance(window, str):
        if window not in WINDOWS:
            raise ConfigError(f"unknown window '{window}'{did_you_mean(window, WINDOWS)}; use one of "
                              f"{', '.join(WINDOWS)} or a (center, width) pair")
        return window
    try:
        center, width = (float(v) for v in window)
    except (TypeError, ValueError):
        raise ConfigError(f"window must be one of {', '.join(WINDOWS)} or a (center, width) pair, "
                          f"got {window!r}") from None
    if not width > 1:
        raise ConfigError(f"window width must be > 1 (DICOM linear window), got {width}")
    return center, width


def _scale(values: np.ndarray, value_range: Tuple[float, float], window: Window) -> np.ndarray:
    """Map ``values`` to ``[0, 1]`` (float32, clipped).

    ``"auto"``/``"none"``: ``(x - lo) / (hi - lo)`` with ``(lo, hi) = value_range``; ``"minmax"``: the same
    with the image's own min and max; ``(c, w)``: the DICOM linear window ``(x - (c - 0.5)) / (w - 1) + 0.5``.
    A constant image under ``"minmax"`` (or an empty range) gives zeros.
    """
    x = np.asarray(values, dtype=np.float32)
    if isinstance(window, tuple):
        center, width = window
        out = (x - (center - 0.5)) / (width - 1.0) + 0.5
    else:
        lo, hi = (float(x.min()), float(x.max())) if window == "minmax" else value_range
        out = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
    return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)


def _read_bitmap(path: Union[Path, BinaryIO], window: Window, frame: int,
                 where: str = "") -> Tuple[np.ndarray, Dict[str, Any]]:
    """PNG/JPEG (a file, or its bytes in a file object named ``where``) -> ``[0, 1]``: 8-bit (and colour, converted
    to luma) by 255, 16-bit (``I;16``, ``I``) by 65535."""
    where = where or str(path)
    values: Optional[np.ndarray] = None
    try:
        with Image.open(path) as img:
            frames = int(getattr(img, "n_frames", 1))
            if 0 <= frame < frames:
                img.seek(frame)
                img.load()
                if img.mode.startswith("I;16") or img.mode == "I":
                    values, value_range = np.asarray(img), (0.0, 65535.0)
                elif img.mode == "F":
                    values, value_range = np.asarray(img), (0.0, 1.0)
                else:
                    values, value_range = np.asarray(img if img.mode == "L" else img.convert("L")), (0.0, 255.0)
            meta = {"format": img.format, "mode": img.mode, "frames": frames, "frame": frame,
                    "photometric": "MONOCHROME2"}
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise ValueError(f"cannot decode image file {where} ({type(exc).__name__}: {exc}); the file is corrupt, "
                         "truncated or not an image") from exc
    if values is None:
        raise ValueError(f"frame {frame} requested but {where} has {frames} frame(s)")
    return _scale(values, value_range, window), meta


def _first(value: Any) -> float:
    """The first value of a DICOM element that may hold several (WindowCenter/Width list alternative windows)."""
    return float(value[0]) if isinstance(value, abc.Sequence) and not isinstance(value, str) else float(value)


def _modality_range(ds: Any) -> Tuple[float, float]:
    """The range of every storable value (``BitsStored``, ``PixelRepresentation``) after the modality LUT."""
    from pydicom.pixels import apply_modality_lut
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 8)))
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if int(ds.get("PixelRepresentation", 0)) else (0, 2 ** bits - 1)
    probe = np.arange(lo, hi + 1) if ds.get("ModalityLUTSequence") and hi - lo < 2 ** 16 else np.array([lo, hi])
    out = apply_modality_lut(probe, ds)
    return float(np.min(out)), float(np.max(out))


def _has_voi(ds: Any) -> bool:
    return bool(ds.get("VOILUTSequence")) or ("WindowCenter" in ds and "WindowWidth" in ds)


def _apply_voi(values: np.ndarray, ds: Any) -> Tuple[np.ndarray, Tuple[float, float]]:
    """``pydicom.pixels.apply_voi_lut`` with ``ds``'s first VOI, and that VOI's output range ``(lo, hi)``.

    The range is the span of the LUT entries (VOI LUT Sequence), or the two clamped ends of the window
    (Window Center/Width, LINEAR or SIGMOID). Inputs are clipped to a LUT's input range first: pydicom
    indexes the LUT in the LUT's own dtype, which overflows for 8-bit LUTs.
    """
    from pydicom.pixels import apply_voi_lut
    if ds.get("VOILUTSequence"):
        entries, first = (int(v) for v in ds.VOILUTSequence[0].LUTDescriptor[:2])
        probe = np.arange(first, first + (entries or 2 ** 16))  # every LUT entry
        values = np.clip(values, probe[0], probe[-1])
    else:
        center, width = _first(ds.WindowCenter), abs(_first(ds.WindowWidth))
        probe = np.array([center - 50 * width - 1, center + 50 * width + 1])
    ends = apply_voi_lut(probe, ds)
    return apply_voi_lut(values, ds), (float(np.min(ends)), float(np.max(ends)))


def _read_dicom(path: Union[Path, BinaryIO], window: Window, frame: int,
                where: str = "") -> Tuple[np.ndarray, Dict[str, Any]]:
    """DICOM (a file, or its bytes in a file object named ``where``) -> ``[0, 1]``, bone bright. The steps are
    listed in :func:`load_xray`."""
    where = where or str(path)
    try:
        import pydicom
        from pydicom.pixels import apply_modality_lut, pixel_array
    except ImportError as exc:
        raise ImportError("reading DICOM needs pydicom: pip install 'alignkit[medical]'") from exc
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:  # pydicom raises InvalidDicomError, EOFError, struct.error, ... on bad files
        raise ValueError(f"cannot read DICOM file {where} ({type(exc).__name__}: {exc}); the file is corrupt, "
                         "truncated or not DICOM") from exc
    if "PixelData" not in ds:
        raise ValueError(f"DICOM file {where} has no pixel data (7FE0,0010) (SOP class "
                         f"{ds.get('SOPClassUID', 'unknown')}): it is not an image; remove it from the list")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if not 0 <= frame < frames:
        raise ValueError(f"frame {frame} requested but DICOM file {where} has {frames} frame(s)")
    try:
        stored = pixel_array(ds, index=frame if frames > 1 else None)
    except Exception as exc:  # decoders raise ValueError, RuntimeError, NotImplementedError, ...
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise ValueError(f"cannot decode the pixel data of DICOM file {where} (transfer syntax {syntax}; "
                         f"{type(exc).__name__}: {exc}); the file is truncated or needs a decoder plugin "
                         "(pylibjpeg, gdcm)") from exc
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    meta: Dict[str, Any] = {"format": "DICOM", "frames": frames, "frame": frame, "photometric": photometric}
    if photometric in ("MONOCHROME1", "MONOCHROME2") and stored.ndim == 2:
        values = apply_modality_lut(stored, ds)
        if window == "auto" and _has_voi(ds):
            values, value_range = _apply_voi(values, ds)
        else:
            value_range = _modality_range(ds)
        image = _scale(values, value_range, window)
        if photometric == "MONOCHROME1":
            image = 1.0 - image
    elif stored.ndim == 3 and stored.shape[-1] == 3:  # RGB, or YBR converted to RGB by pydicom
        bits = int(ds.get("BitsStored", 8))
        image = _scale(stored.astype(np.float32) @ _LUMA, (0.0, 2.0 ** bits - 1), window)
    else:
        raise ValueError(f"DICOM file {where}: photometric interpretation {photometric} with pixel array of shape "
                         f"{stored.shape} is not supported (MONOCHROME1, MONOCHROME2, RGB and YBR are)")
    return image, meta


def _resize(image: np.ndarray, image_size: ImageSize) -> np.ndarray:
    """Bilinear resize (Pillow, antialiased when shrinking) to ``image_size``: ``S`` -> (S, S), or ``(H, W)``."""
    if image_size is None:
        return image
    height, width = (image_size, image_size) if isinstance(image_size, int) else (int(v) for v in image_size)
    if (height, width) == image.shape:
        return image
    resized = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32)).resize((width, height), Image.BILINEAR)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def _load(path: PathLike, image_size: ImageSize, window: Window, frame: int) -> Tuple[np.ndarray, Dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"X-ray image file {path} not found")
    window = check_window(window)
    image, meta = (_read_dicom if is_dicom(path) else _read_bitmap)(path, window, frame)
    meta["original_shape"] = image.shape
    return np.ascontiguousarray(_resize(image, image_size)), meta


def decode_xray(data: bytes, name: str = "<bytes>", dicom: Optional[bool] = None, image_size: ImageSize = None,
                window: Window = "auto", frame: int = 0) -> np.ndarray:
    """:func:`load_xray` of a file's bytes (e.g. read back from a shard): the same decoding, windowing and resizing.

    ``dicom``: whether ``data`` is DICOM; None decides by the ``DICM`` mark at byte 128. ``name`` (the file or
    record the bytes came from) is what errors name.
    """
    window = check_window(window)
    is_dcm = data[128:132] == b"DICM" if dicom is None else dicom
    image, _ = (_read_dicom if is_dcm else _read_bitmap)(io.BytesIO(data), window, frame, name)
    return np.ascontiguousarray(_resize(image, image_size))


def load_xray(path: PathLike, image_size: ImageSize = None, window: Window = "auto", frame: int = 0) -> np.ndarray:
    """Read a chest X-ray as a float32 array ``(H, W)`` in ``[0, 1]``, bone bright (MONOCHROME2 convention).

    PNG / JPEG (Pillow): 8-bit grey and colour (converted to luma) are divided by 255, 16-bit grey
    (``I;16``) by 65535; ``frame`` picks a page of multi-page files.

    DICOM (pydicom; a ``.dcm``/``.dicom`` name or the ``DICM`` mark), in this order:

    1. decode frame ``frame`` of the pixel data (``pydicom.pixels.pixel_array``; multi-frame files
       decode that frame only);
    2. ``pydicom.pixels.apply_modality_lut`` (Rescale Slope/Intercept or a Modality LUT);
    3. by ``window``:

       - ``"auto"`` (default): if the file has a VOI, ``pydicom.pixels.apply_voi_lut`` applies its first one
         (a VOI LUT Sequence is preferred to Window Center/Width, as in pydicom) and the result is scaled
         from that VOI's output range to ``[0, 1]``; otherwise as ``"none"``;
       - ``"none"``: the file's VOI is ignored and every storable value (``BitsStored``,
         ``PixelRepresentation``, through the modality LUT) is scaled linearly to ``[0, 1]``;
       - ``"minmax"``: the image's own minimum and maximum become 0 and 1;
       - ``(center, width)``: the DICOM linear window on the modality values:
         ``clip((x - (center - 0.5)) / (width - 1) + 0.5, 0, 1)``;

    4. MONOCHROME1 (low values bright) is inverted, ``1 - y``, so bone is bright as in MONOCHROME2;
       RGB/YBR files are converted to luma.

    For PNG/JPEG ``window`` works the same with the file's bit-depth range as the storable range
    (``"auto"`` = ``"none"``; a ``(center, width)`` pair is in stored units, e.g. 0..65535).

    ``image_size`` (``S`` or ``(H, W)``) resizes bilinearly (antialiased when shrinking); None keeps the size.

    Raises ``FileNotFoundError`` for a missing file, and ``ValueError`` naming the file for a corrupt or
    truncated file, a DICOM without pixel data, an unsupported photometric interpretation or a ``frame``
    outside the file's frames.
    """
    return _load(path, image_size, window, frame)[0]


@dataclass
class _Decoded:
    array: np.ndarray
    meta: Dict[str, Any]


class XRayImageReader(ImageReader):
    """A MONAI ``ImageReader`` that reads X-rays with :func:`load_xray` (same ``image_size``/``window``/``frame``).

    Use it wherever MONAI takes a reader, e.g. ``LoadImage(reader=XRayImageReader())``. ``get_data`` gives an
    array ``(H, W)`` (rows first, the orientation the image displays in, unlike MONAI's ``PILReader`` default)
    or ``(N, H, W)`` for a list of N files of one size, with metadata ``spatial_shape`` ``(H, W)``,
    ``original_channel_dim`` (``nan`` = no channel, or 0), ``format``, ``photometric``, ``frames``, ``frame``
    and ``original_shape``.
    """

    def __init__(self, image_size: ImageSize = None, window: Window = "auto", frame: int = 0):
        super().__init__()
        self.image_size = image_size
        self.window = check_window(window)
        self.frame = frame

    def verify_suffix(self, filename: Union[Sequence[PathLike], PathLike]) -> bool:
        return all(Path(f).suffix.lower() in XRAY_SUFFIXES for f in ensure_tuple(filename))

    def read(self, data: Union[Sequence[PathLike], PathLike], **kwargs: Any) -> Union[_Decoded, List[_Decoded]]:
        """Decode each file (``kwargs`` are accepted for MONAI's interface and unused)."""
        decoded = [_Decoded(*_load(f, self.image_size, self.window, self.frame)) for f in ensure_tuple(data)]
        return decoded if len(decoded) > 1 else decoded[0]

    def get_data(self, img: Union[_Decoded, List[_Decoded]]) -> Tuple[np.ndarray, Dict[str, Any]]:
        items = img if isinstance(img, list) else [img]
        shapes = {it.array.shape for it in items}
        if len(shapes) > 1:
            raise ValueError(f"cannot stack X-rays of different sizes {sorted(shapes)}; set image_size")
        meta = dict(items[0].meta)
        meta[MetaKeys.SPATIAL_SHAPE] = np.asarray(items[0].array.shape)
        if len(items) > 1:
            meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = 0
            return np.stack([it.array for it in items]), meta
        meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = float("nan")
        return items[0].array, meta


class LoadXRay(Transform):
    """MONAI array transform: file path -> ``MetaTensor`` float32 ``(H, W)`` in ``[0, 1]`` (see :func:`load_xray`).

    ``ensure_channel_first=True`` gives ``(1, H, W)``. Errors are not swallowed: unlike ``LoadImage`` with
    several readers, a corrupt file raises the ``ValueError`` naming it.
    """

    def __init__(self, image_size: ImageSize = None, window: Window = "auto", frame: int = 0,
                 ensure_channel_first: bool = False):
        self.reader = XRayImageReader(image_size=image_size, window=window, frame=frame)
        self.ensure_channel_first = ensure_channel_first

    def __call__(self, filename: Union[Sequence[PathLike], PathLike]) -> MetaTensor:
        array, meta = self.reader.get_data(self.reader.read(filename))
        meta[ImageMetaKey.FILENAME_OR_OBJ] = str(ensure_tuple(filename)[0])
        image = MetaTensor(torch.from_numpy(array), meta=meta)
        return EnsureChannelFirst()(image) if self.ensure_channel_first else image


class LoadXRayd(MapTransform):
    """Dictionary version of :class:`LoadXRay`: replaces each ``keys`` path by its image ``MetaTensor``."""

    def __init__(self, keys: Union[str, Sequence[str]], image_size: ImageSize = None, window: Window = "auto",
                 frame: int = 0, ensure_channel_first: bool = False, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadXRay(image_size=image_size, window=window, frame=frame,
                               ensure_channel_first=ensure_channel_first)

    def __call__(self, data: Mapping[str, Any]) -> Dict[str, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.loader(d[key])
        return d


# ============================================================================================ records


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


def _label_columns(columns: Sequence[str]) -> List[Tuple[str, Optional[str]]]:
    return [(f"label_columns[{k}]", c) for k, c in enumerate(columns)]


def _clean_id(value: str) -> str:
    """An id cell as text: stripped, ``"10000032.0"`` (a float written by pandas) -> ``"10000032"``."""
    text = value.strip()
    return text[:-2] if re.fullmatch(r"\d+\.0", text) else text


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
      report without the wanted sections, and with ``verify_images`` an undecodable image) raises a
      ``ValueError`` naming the file and row when False; when True it is skipped and listed in ``skipped``
      (one warning is logged). Unknown columns are config errors (:class:`ConfigError`) either way;
    - ``verify_images``: decode every image once while indexing (slow; for small archives or a one-off
      check) so corrupt files count as bad rows; otherwise they raise when loaded;
    - ``report_sections``, ``report_rule``: the training-text rule of
      :func:`~alignkit.domains.medical.reports.report_text` (default: findings + impression if present, else
      impression, else findings; a report without any header is used whole).
    """

    def __init__(self, split: Optional[str] = None, frontal_only: bool = False, uncertain: str = "ignore",
                 blank: str = "ignore", skip_bad: bool = False, verify_images: bool = False,
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
        self.verify_images = verify_images
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
        return self._report(path.read_text(encoding="utf-8", errors="replace"), source=str(path))


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
    split CSV and row. Other options: :class:`XRayRecordReader`.
    """

    def __init__(self, root: PathLike, split: Optional[str] = None, reports_root: Optional[PathLike] = None,
                 reports: bool = True, image_extension: str = "jpg", label_columns: Sequence[str] = CHEXPERT_LABELS,
                 frontal_only: bool = False, uncertain: str = "ignore", blank: str = "ignore", skip_bad: bool = False,
                 verify_images: bool = False, report_sections: Sequence[str] = ("findings", "impression"),
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

    Columns: ``Path`` (relative to ``root``; when ``root`` is the ``CheXpert-v1.0(-small)`` folder itself, the
    path's first folder is dropped), ``Sex``, ``Age`` (unused), ``Frontal/Lateral``, ``AP/PA`` and
    ``label_columns`` (default the 14 :data:`CHEXPERT_LABELS`; 1.0, 0.0, -1.0, blank).

    ``subject_id`` / ``study_id``: ``patientNNNNN`` / ``patientNNNNN/studyN`` from the path; ``split``: the
    path's ``train``/``valid``/``test`` folder; ``view``: ``LATERAL`` for lateral images, else the ``AP/PA``
    value (``FRONTAL`` if blank). ``frontal_only`` keeps ``Frontal/Lateral == Frontal``. No reports.
    Other options: :class:`XRayRecordReader`.
    """

    def __init__(self, csv: PathLike, root: PathLike, split: Optional[str] = None,
                 label_columns: Sequence[str] = CHEXPERT_LABELS, frontal_only: bool = False,
                 uncertain: str = "ignore", blank: str = "ignore", skip_bad: bool = False, verify_images: bool = False):
        super().__init__(split=split, frontal_only=frontal_only, uncertain=uncertain, blank=blank, skip_bad=skip_bad,
                         verify_images=verify_images)
        self.csv_path, self.root = Path(csv), Path(root)
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
    No reports. Other options: :class:`XRayRecordReader`.
    """

    def __init__(self, csv: PathLike, images_dir: PathLike, split: Optional[str] = None, frontal_only: bool = False,
                 skip_bad: bool = False, verify_images: bool = False):
        super().__init__(split=split, frontal_only=frontal_only, skip_bad=skip_bad, verify_images=verify_images)
        self.csv_path, self.images_dir = Path(csv), Path(images_dir)
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
        return {line.strip(): name for name, p in lists.items() for line in p.read_text().splitlines() if line.strip()}

    def _find(self, name: str) -> Path:
        direct = self.images_dir / name
        if direct.is_file():
            return direct
        if self._by_name is None:
            self._by_name = {p.name: p for p in self.images_dir.rglob("*") if p.suffix.lower() in XRAY_SUFFIXES}
        return self._by_name.get(name, direct)


class GenericCsvReader(XRayRecordReader):
    """Any CSV that lists images: one record per row, columns named by the parameters.

    ``image_column``: image path relative to ``root``; ``report_column``: the report text (or, with
    ``report_is_path``, a report file relative to ``root``), None for no reports; ``label_columns``: label
    columns holding 1, 0, -1 or blank; ``split_column``, ``view_column``, ``study_column``,
    ``subject_column``: optional (``study_id`` defaults to the image path, ``subject_id`` to ``""``).
    ``frontal_only`` needs ``view_column`` (PA/AP kept); ``split`` needs ``split_column``.
    Other options: :class:`XRayRecordReader`.
    """

    def __init__(self, csv: PathLike, root: PathLike, image_column: str = "path", report_column: Optional[str] = None,
                 label_columns: Sequence[str] = (), split: Optional[str] = None, split_column: Optional[str] = None,
                 view_column: Optional[str] = None, study_column: Optional[str] = None,
                 subject_column: Optional[str] = None, report_is_path: bool = False, frontal_only: bool = False,
                 uncertain: str = "ignore", blank: str = "ignore", skip_bad: bool = False, verify_images: bool = False,
                 report_sections: Sequence[str] = ("findings", "impression"), report_rule: str = "any"):
        super().__init__(split=split, frontal_only=frontal_only, uncertain=uncertain, blank=blank, skip_bad=skip_bad,
                         verify_images=verify_images, report_sections=report_sections, report_rule=report_rule)
        self.csv_path, self.root = Path(csv), Path(root)
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
