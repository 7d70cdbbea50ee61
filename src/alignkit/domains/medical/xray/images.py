"""Chest X-ray image decoding: PNG/JPEG (8- and 16-bit) and DICOM pixels to a float32 ``(H, W)`` array in
``[0, 1]`` where bone is bright.

:func:`load_xray` reads a file (DICOM through the display pipeline shared with echo,
:mod:`alignkit.domains.medical.dicom`: modality LUT, VOI LUT or window or the actual range, MONOCHROME1 inverted,
multi-frame), :func:`decode_xray` a file's bytes. :class:`XRayImageReader` is the same loader as a MONAI
``ImageReader``, and :class:`LoadXRay` / :class:`LoadXRayd` are the MONAI array/dict transforms that start a
pipeline::

    Compose([LoadXRayd("image"), EnsureChannelFirstd("image"), Resized("image", (224, 224)),
             ScaleIntensityd("image")])
"""
from __future__ import annotations

import io
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

from alignkit.core.images import use_draft
from alignkit.core.registry import ConfigError, did_you_mean
from alignkit.domains.medical.dicom import Window, frame_count, is_dicom, read_dataset, render_frame

PathLike = Union[str, Path]
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


def _read_bitmap(path: Union[Path, BinaryIO], window: Window, frame: int, where: str = "",
                 image_size: ImageSize = None) -> Tuple[np.ndarray, Dict[str, Any]]:
    """PNG/JPEG (a file, or its bytes in a file object named ``where``) -> ``[0, 1]``: 8-bit (and colour, converted
    to luma) by 255, 16-bit (``I;16``, ``I``) by 65535. With ``image_size`` (the size the caller resizes to) a JPEG
    at least 4 times larger per side is decoded at a reduced DCT scale (:func:`~alignkit.core.images.use_draft`;
    ``meta["draft"]`` says whether); PNG, 16-bit and DICOM are always decoded in full."""
    where = where or str(path)
    values: Optional[np.ndarray] = None
    try:
        with Image.open(path) as img:
            frames = int(getattr(img, "n_frames", 1))
            full_shape = (img.size[1], img.size[0])
            drafted = False
            if 0 <= frame < frames:
                img.seek(frame)
                if image_size is not None and frame == 0:
                    height, width = _size_pair(image_size)
                    drafted = use_draft(img, (width, height), "L")
                img.load()
                if img.mode.startswith("I;16") or img.mode == "I":
                    values, value_range = np.asarray(img), (0.0, 65535.0)
                elif img.mode == "F":
                    values, value_range = np.asarray(img), (0.0, 1.0)
                else:
                    values, value_range = np.asarray(img if img.mode == "L" else img.convert("L")), (0.0, 255.0)
            meta = {"format": img.format, "mode": img.mode, "frames": frames, "frame": frame,
                    "photometric": "MONOCHROME2", "draft": drafted, "original_shape": full_shape}
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise ValueError(f"cannot decode image file {where} ({type(exc).__name__}: {exc}); the file is corrupt, "
                         "truncated or not an image") from exc
    if values is None:
        raise ValueError(f"frame {frame} requested but {where} has {frames} frame(s)")
    return _scale(values, value_range, window), meta


def _read_dicom(path: Union[Path, BinaryIO], window: Window, frame: int,
                where: str = "") -> Tuple[np.ndarray, Dict[str, Any]]:
    """DICOM (a file, or its bytes in a file object named ``where``) -> ``[0, 1]``, bone bright: frame ``frame``
    through the shared display pipeline (:func:`~alignkit.domains.medical.dicom.render_frame`), colour to luma."""
    where = where or str(path)
    ds = read_dataset(path, where)
    image = render_frame(ds, frame, where, window)
    if image.ndim == 3:  # RGB, YBR or PALETTE COLOR, rendered as RGB
        image = np.clip(image @ _LUMA, 0.0, 1.0).astype(np.float32)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    return image, {"format": "DICOM", "frames": frame_count(ds, where), "frame": frame, "photometric": photometric}


def _size_pair(image_size: Union[int, Tuple[int, int]]) -> Tuple[int, int]:
    """``S`` -> ``(S, S)``; ``(H, W)`` as ints."""
    if isinstance(image_size, int):
        return image_size, image_size
    height, width = (int(v) for v in image_size)
    return height, width


def _resize(image: np.ndarray, image_size: ImageSize) -> np.ndarray:
    """Bilinear resize (Pillow, antialiased when shrinking) to ``image_size``: ``S`` -> (S, S), or ``(H, W)``."""
    if image_size is None:
        return image
    height, width = _size_pair(image_size)
    if (height, width) == image.shape:
        return image
    resized = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32)).resize((width, height), Image.BILINEAR)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def _load(path: PathLike, image_size: ImageSize, window: Window, frame: int,
          draft: bool = True) -> Tuple[np.ndarray, Dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"X-ray image file {path} not found")
    window = check_window(window)
    if is_dicom(path):
        image, meta = _read_dicom(path, window, frame)
        meta["original_shape"] = image.shape
    else:
        image, meta = _read_bitmap(path, window, frame, image_size=image_size if draft else None)
    return np.ascontiguousarray(_resize(image, image_size)), meta


def decode_xray(data: bytes, name: str = "<bytes>", dicom: Optional[bool] = None, image_size: ImageSize = None,
                window: Window = "auto", frame: int = 0, draft: bool = True) -> np.ndarray:
    """:func:`load_xray` of a file's bytes (e.g. read back from a shard): the same decoding, windowing and resizing.

    ``dicom``: whether ``data`` is DICOM; None decides by the ``DICM`` mark at byte 128. ``name`` (the file or
    record the bytes came from) is what errors name. ``draft``: see :func:`load_xray`.
    """
    window = check_window(window)
    is_dcm = data[128:132] == b"DICM" if dicom is None else dicom
    if is_dcm:
        image, _ = _read_dicom(io.BytesIO(data), window, frame, name)
    else:
        image, _ = _read_bitmap(io.BytesIO(data), window, frame, name, image_size if draft else None)
    return np.ascontiguousarray(_resize(image, image_size))


def load_xray(path: PathLike, image_size: ImageSize = None, window: Window = "auto", frame: int = 0,
              draft: bool = True) -> np.ndarray:
    """Read a chest X-ray as a float32 array ``(H, W)`` in ``[0, 1]``, bone bright (MONOCHROME2 convention).

    PNG / JPEG (Pillow): 8-bit grey and colour (converted to luma) are divided by 255, 16-bit grey
    (``I;16``) by 65535; ``frame`` picks a page of multi-page files.

    DICOM (pydicom; a ``.dcm``/``.dicom`` name or the ``DICM`` mark) goes through the display pipeline shared
    with the echo reader, :func:`~alignkit.domains.medical.dicom.render_frames`:

    1. decode frame ``frame`` of the pixel data (any transfer syntax pydicom's plugins decode; multi-frame
       files decode that frame only), after checking the header (malformed tags raise naming the tag);
    2. the modality LUT (Rescale Slope/Intercept or a Modality LUT Sequence);
    3. by ``window``:

       - ``"auto"`` (default): if the file has a VOI, its first one (a VOI LUT Sequence is preferred to Window
         Center/Width, LINEAR or SIGMOID, as in ``pydicom.pixels.apply_voi_lut``), scaled from that VOI's
         output range to ``[0, 1]``; otherwise the image's actual range: values of at most 8 bits without
         rescale are display values (``x / (2^BitsStored - 1)``, as a PNG), others are scaled from their 0.5th
         to 99.5th percentile (:func:`~alignkit.domains.medical.dicom.display_range`; a constant image keeps
         its level in the storable range);
       - ``"none"``: the file's VOI is ignored and every storable value (``BitsStored``,
         ``PixelRepresentation``, through the modality LUT) is scaled linearly to ``[0, 1]``;
       - ``"minmax"``: the image's own minimum and maximum become 0 and 1;
       - ``(center, width)``: the DICOM linear window on the modality values:
         ``clip((x - (center - 0.5)) / (width - 1) + 0.5, 0, 1)``;

    4. MONOCHROME1 (low values bright) is inverted, ``1 - y``, so bone is bright as in MONOCHROME2;
       RGB, YBR and PALETTE COLOR files are rendered as RGB (divided by ``2^bits - 1``) and converted to luma.

    For PNG/JPEG ``window`` works the same with the file's bit-depth range as the storable range
    (``"auto"`` = ``"none"``; a ``(center, width)`` pair is in stored units, e.g. 0..65535).

    ``image_size`` (``S`` or ``(H, W)``) resizes bilinearly (antialiased when shrinking); None keeps the size.
    ``draft`` (default True): a JPEG at least 4 times ``image_size`` per side is first decoded at a reduced DCT
    scale (1/2, 1/4 or 1/8, keeping at least twice the output size:
    :func:`~alignkit.core.images.use_draft`), about 1.5-2x faster for a MIMIC-CXR-JPG file at 224 px and within
    1-2 grey levels of 255 (mean absolute) of the full decode; PNG (8 and 16 bits) and DICOM are unaffected.

    Raises ``FileNotFoundError`` for a missing file, and ``ValueError`` naming the file for a corrupt or
    truncated file, a DICOM without pixel data, a malformed DICOM header (naming the tag), a transfer syntax no
    installed plugin decodes (naming it and what to install), an unsupported photometric interpretation or a
    ``frame`` outside the file's frames.
    """
    return _load(path, image_size, window, frame, draft)[0]


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
