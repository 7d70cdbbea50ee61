"""Chest X-ray image decoding: PNG/JPEG (8- and 16-bit) and DICOM pixels to a float32 ``(H, W)`` array in
``[0, 1]`` where bone is bright.

:func:`load_xray` reads a file (DICOM through pydicom: modality LUT, VOI LUT or window, MONOCHROME1 inverted,
multi-frame), :func:`decode_xray` a file's bytes. :class:`XRayImageReader` is the same loader as a MONAI
``ImageReader``, and :class:`LoadXRay` / :class:`LoadXRayd` are the MONAI array/dict transforms that start a
pipeline::

    Compose([LoadXRayd("image"), EnsureChannelFirstd("image"), Resized("image", (224, 224)),
             ScaleIntensityd("image")])
"""
from __future__ import annotations

import io
from collections import abc
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from monai.data import MetaTensor
from monai.data.image_reader import ImageReader
from monai.transforms import EnsureChannelFirst, MapTransform, Transform
from monai.utils import ImageMetaKey, MetaKeys, ensure_tuple
from PIL import Image

from alignkit.core.registry import ConfigError, did_you_mean
from alignkit.domains.medical.dicom import decode_frame, frame_count, is_dicom, read_dataset

PathLike = Union[str, Path]
Window = Union[str, Tuple[float, float]]
ImageSize = Union[None, int, Tuple[int, int]]

XRAY_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
"""File types :func:`load_xray` reads (a file without one of these is read as DICOM if it has the DICM mark)."""

WINDOWS = ("auto", "none", "minmax")

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601, as Pillow's convert("L")


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
    ds = read_dataset(path, where)
    from pydicom.pixels import apply_modality_lut
    frames = frame_count(ds)
    if not 0 <= frame < frames:
        raise ValueError(f"frame {frame} requested but DICOM file {where} has {frames} frame(s)")
    stored = decode_frame(ds, frame if frames > 1 else None, where)
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
