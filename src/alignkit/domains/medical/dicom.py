"""DICOM images shared by the X-ray and echo readers: reading a file, checking its header, decoding a frame and
rendering it for display as the standard defines.

Sources (DICOM PS3.3): Image Pixel Module C.7.6.3 (``Rows``, ``BitsStored``, ``PhotometricInterpretation``, ...),
Modality LUT C.11.1, VOI LUT C.11.2 (window, LINEAR / LINEAR_EXACT / SIGMOID), Palette Color LUT C.7.6.3.1.5;
PS3.4 N.2 for the order of the grayscale steps; PS3.5 for the transfer syntaxes, decoded by pydicom's pixel
plugins (``pip install 'alignkit[medical]'``: Pillow, pylibjpeg with openjpeg and rle, pyjpegls, python-gdcm).

:func:`render_frames`, for the stored values ``s`` of the frames asked for, gives float32 values in ``[0, 1]``::

    grey (MONOCHROME1/2)  m = slope * s + intercept           Rescale, or the Modality LUT Sequence
                          v = VOI(m)                          the file's first VOI LUT or window (window="auto")
                          y = clip((v - lo) / (hi - lo), 0, 1)  (lo, hi): see display_range
                          MONOCHROME1: y = 1 - y              low values bright, so bone is bright everywhere
    PALETTE COLOR         y = LUT(s) / (2^b - 1)              b: bits of the LUT entries (LUT Descriptor)
    RGB, YBR_FULL(_422),  y = rgb / (2^BitsStored - 1)        YBR and the JPEG 2000 colour transforms (YBR_ICT,
    YBR_ICT, YBR_RCT                                          YBR_RCT) converted to RGB by pydicom

Without a VOI, grey frames are scaled from their actual range (:func:`display_range`: the 0.5th to 99.5th
percentile), except 8-bit display values. The header is checked before decoding (:func:`check_header`), and
:func:`check_modality` screens files by modality (the echo readers take ultrasound only, unless asked).

Every failure is a ``ValueError`` naming the file, and the tag (keyword and ``(gggg,eeee)``) or the transfer
syntax (UID and name) at fault, with what to do.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, List, Optional, Sequence, Tuple, Union

import numpy as np

from alignkit.core.params import check_choice

PathLike = Union[str, Path]
Window = Union[str, Tuple[float, float]]
"""``"auto"``, ``"none"``, ``"minmax"`` or a DICOM linear window ``(center, width)`` (see :func:`render_frames`)."""

PERCENTILES = (0.5, 99.5)
"""The robust value range of an image without a VOI: these percentiles of its values, as viewers window."""
_PERCENTILE_SAMPLES = 1 << 22  # above this many values, the percentiles are taken on every k-th value

MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT")
PHOTOMETRICS = (*MONOCHROME, "PALETTE COLOR", *COLOUR)
"""Photometric interpretations rendered (PS3.3 C.7.6.3.1.2; YBR_PARTIAL_* belong to MPEG video syntaxes)."""

ULTRASOUND_MODALITIES = ("US", "IVUS")
"""The Modality values the echo readers accept by default (:func:`check_modality`)."""
DICOM_MODALITIES = (
    "ANN", "AR", "ASMT", "AU", "BDUS", "BI", "BMD", "CFM", "CR", "CT", "CTPROTOCOL", "DG", "DMS", "DOC", "DX",
    "ECG", "EEG", "EMG", "EOG", "EPS", "ES", "FID", "GM", "HC", "HD", "IO", "IOL", "IVOCT", "IVUS", "KER", "KO",
    "LEN", "LS", "M3D", "MG", "MR", "NM", "OAM", "OCT", "OP", "OPM", "OPT", "OPTBSV", "OPTENF", "OPV", "OSS", "OT",
    "PA", "PLAN", "POS", "PR", "PT", "PX", "REG", "RESP", "RF", "RG", "RTDOSE", "RTIMAGE", "RTINTENT", "RTPLAN",
    "RTRAD", "RTRECORD", "RTSEGANN", "RTSTRUCT", "RWV", "SEG", "SM", "SMR", "SR", "SRF", "STAIN", "TEXTUREMAP",
    "TG", "US", "VA", "XA", "XAPROTOCOL", "XC")
"""The defined terms of Modality (0008,0060), PS3.3 C.7.3.1.1.1."""

_STORAGE = "1.2.840.10008.5.1.4.1.1."
SOP_CLASS_MODALITIES = {_STORAGE + suffix: modalities for suffixes, modalities in (
    (("1",), ("CR",)), (("1.1", "1.1.1"), ("DX",)), (("1.2", "1.2.1", "13.1.3", "13.1.4", "13.1.5"), ("MG",)),
    (("1.3", "1.3.1"), ("IO",)), (("2", "2.1", "2.2"), ("CT",)), (("4", "4.1", "4.3", "4.4"), ("MR",)),
    (("3", "3.1", "6", "6.1", "6.2"), ULTRASOUND_MODALITIES), (("5", "20"), ("NM",)),
    (("128", "128.1", "130"), ("PT",)),
    (("12.1", "12.1.1", "12.3"), ("XA",)), (("12.2", "12.2.1"), ("RF",)), (("481.1",), ("RTIMAGE",)),
    (("481.2",), ("RTDOSE",)), (("66.4",), ("SEG",))) for suffix in suffixes}
"""Image storage SOP classes (PS3.4 B.5) that imply the modality of their images; secondary capture, visible
light and the other general classes imply none."""


# --------------------------------------------------------------------------------------------- reading


def is_dicom(path: PathLike) -> bool:
    """True for a ``.dcm``/``.dicom`` file name, False for ``.png``/``.jpg``/``.jpeg``; otherwise True for a file
    with the ``DICM`` mark at byte 128 (DICOM Part 10)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".dcm", ".dicom", ".png", ".jpg", ".jpeg"):
        return suffix in (".dcm", ".dicom")
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM"


def pydicom_module() -> Any:
    """``pydicom``, or an ImportError saying which extra installs it."""
    try:
        import pydicom
    except ImportError as exc:
        raise ImportError("reading DICOM needs pydicom: pip install 'alignkit[medical]'") from exc
    return pydicom


def read_dataset(source: Union[PathLike, bytes, bytearray, BinaryIO], where: str, pixels: bool = True) -> Any:
    """The pydicom dataset of a DICOM path, bytes or file object (named ``where`` in errors).

    ``pixels=False`` stops before the pixel data (headers only). A file pydicom cannot parse, or (with
    ``pixels``) one without Pixel Data (7FE0,0010), e.g. a structured report, is a ``ValueError`` naming it.
    """
    pydicom = pydicom_module()
    stream = io.BytesIO(bytes(source)) if isinstance(source, (bytes, bytearray)) else source
    try:
        ds = pydicom.dcmread(stream, stop_before_pixels=not pixels)
    except Exception as exc:  # pydicom raises InvalidDicomError, EOFError, struct.error, ... on bad files
        raise ValueError(f"cannot read DICOM file {where} ({type(exc).__name__}: {exc}); the file is corrupt, "
                         "truncated or not DICOM") from exc
    if pixels and "PixelData" not in ds:
        raise ValueError(f"DICOM file {where} has no pixel data (7FE0,0010) (SOP class "
                         f"{ds.get('SOPClassUID', 'unknown')}): it is not an image; remove it from the list")
    return ds


# --------------------------------------------------------------------------------------------- the header


def tag_name(keyword: str) -> str:
    """``"NumberOfFrames (0028,0008)"``: a keyword with its tag, as errors name it."""
    from pydicom.datadict import tag_for_keyword
    tag = tag_for_keyword(keyword)
    return keyword if tag is None else f"{keyword} ({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _bad(where: str, keyword: str, problem: str) -> ValueError:
    return ValueError(f"DICOM file {where}: {tag_name(keyword)} {problem}; the header is malformed: fix the tag "
                      "(e.g. with pydicom or dcmodify) or leave the file out")


def _integer(ds: Any, keyword: str, where: str, default: Optional[int] = None) -> int:
    """The integer value of ``keyword``; ``default`` when absent or empty (None: the tag is required)."""
    try:
        raw = ds.get(keyword)
    except Exception as exc:  # a value pydicom cannot convert on access
        raise _bad(where, keyword, f"cannot be read ({exc})") from exc
    if raw is None or str(raw).strip() == "":
        if default is None:
            raise _bad(where, keyword, "is missing")
        return default
    try:
        number = float(str(raw).strip())
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and number.is_integer()):
        raise _bad(where, keyword, f"is {str(raw)!r}, not an integer")
    return int(number)


def frame_count(ds: Any, where: str) -> int:
    """``NumberOfFrames`` (1 when absent or empty); a ``ValueError`` naming ``where`` and the tag when it is not an
    integer >= 1."""
    frames = _integer(ds, "NumberOfFrames", where, default=1)
    if frames < 1:
        raise _bad(where, "NumberOfFrames", f"is {frames}; an image has at least one frame")
    return frames


@dataclass(frozen=True)
class PixelHeader:
    """The checked Image Pixel values of a file (PS3.3 C.7.6.3); ``signed``: ``PixelRepresentation == 1``."""

    rows: int
    columns: int
    samples: int
    bits_allocated: int
    bits_stored: int
    signed: bool
    frames: int
    photometric: str

    def storable(self) -> Tuple[int, int]:
        """The range of every storable value: ``[0, 2^b - 1]``, or ``[-2^(b-1), 2^(b-1) - 1]`` when signed."""
        b = self.bits_stored
        return (-(2 ** (b - 1)), 2 ** (b - 1) - 1) if self.signed else (0, 2 ** b - 1)


def check_header(ds: Any, where: str) -> PixelHeader:
    """The Image Pixel tags of ``ds``, checked for what makes decoding fail or lie.

    ``ValueError`` naming ``where`` and the tag for: a missing or non-integer ``Rows``, ``Columns``,
    ``SamplesPerPixel``, ``BitsAllocated``, ``BitsStored`` or ``PixelRepresentation``; ``Rows`` or ``Columns``
    < 1; ``SamplesPerPixel`` not 1 or 3 (or not the count its ``PhotometricInterpretation`` has);
    ``BitsAllocated`` not 1 or a multiple of 8 up to 64; ``BitsStored`` outside ``1 .. BitsAllocated``;
    ``NumberOfFrames`` (see :func:`frame_count`); and, for a native (uncompressed) transfer syntax, Pixel Data
    shorter than ``ceil(frames * Rows * Columns * S * BitsAllocated / 8)`` bytes (``S`` = SamplesPerPixel, 2 for
    YBR_FULL_422's halved chroma).
    """
    rows, columns = _integer(ds, "Rows", where), _integer(ds, "Columns", where)
    for keyword, value in (("Rows", rows), ("Columns", columns)):
        if value < 1:
            raise _bad(where, keyword, f"is {value}; an image has at least one row and column")
    samples = _integer(ds, "SamplesPerPixel", where)
    if samples not in (1, 3):
        raise _bad(where, "SamplesPerPixel", f"is {samples}; images have 1 (grey, palette) or 3 (colour)")
    allocated, stored = _integer(ds, "BitsAllocated", where), _integer(ds, "BitsStored", where)
    if not (allocated == 1 or (allocated % 8 == 0 and 8 <= allocated <= 64)):
        raise _bad(where, "BitsAllocated", f"is {allocated}; it is 1 or a multiple of 8 up to 64")
    if not 1 <= stored <= allocated:
        raise _bad(where, "BitsStored", f"is {stored}, outside 1 .. BitsAllocated ({allocated})")
    representation = _integer(ds, "PixelRepresentation", where)
    if representation not in (0, 1):
        raise _bad(where, "PixelRepresentation", f"is {representation}; 0 is unsigned, 1 signed")
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    if not photometric:
        raise _bad(where, "PhotometricInterpretation", "is missing")
    expected = 3 if photometric in COLOUR else 1 if photometric in (*MONOCHROME, "PALETTE COLOR") else samples
    if samples != expected:
        raise _bad(where, "SamplesPerPixel", f"is {samples} but PhotometricInterpretation {photometric} has "
                                             f"{expected} sample(s) per pixel")
    header = PixelHeader(rows, columns, samples, allocated, stored, representation == 1, frame_count(ds, where),
                         photometric)
    _check_native_length(ds, header, where)
    return header


def _check_native_length(ds: Any, header: PixelHeader, where: str) -> None:
    if transfer_syntax(ds, where).is_encapsulated or ds["PixelData"].is_undefined_length:
        return
    per_pixel = 2 if header.photometric == "YBR_FULL_422" else header.samples
    need = math.ceil(header.frames * header.rows * header.columns * per_pixel * header.bits_allocated / 8)
    have = len(ds.PixelData or b"")
    if have < need:
        raise ValueError(f"DICOM file {where}: {tag_name('PixelData')} holds {have} bytes, fewer than the {need} "
                         f"that NumberOfFrames x Rows x Columns x SamplesPerPixel x BitsAllocated / 8 = "
                         f"{header.frames} x {header.rows} x {header.columns} x {per_pixel} x "
                         f"{header.bits_allocated} / 8 need: the file is truncated or its header is wrong")


def check_modality(ds: Any, modalities: Optional[Sequence[str]], where: str) -> None:
    """Refuse a file whose modality is not one of ``modalities`` (None: accept any file).

    The modality is ``Modality`` (0008,0060). A SOP class that implies a modality (:data:`SOP_CLASS_MODALITIES`:
    CT Image Storage -> CT, the ultrasound classes -> US or IVUS, ...) must imply an accepted one too, so a
    contradictory header is refused. Without a Modality tag the file is accepted only if its SOP class implies an
    accepted modality or is absent (nothing in the file says otherwise); a general class (secondary capture,
    visible light, private) without Modality is refused, as nothing says what it shows.
    """
    if modalities is None:
        return
    allowed = tuple(str(m).strip().upper() for m in modalities)
    modality = str(ds.get("Modality", "") or "").strip().upper()
    sop = str(ds.get("SOPClassUID", "") or getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", "")
              or "").strip()
    implied = SOP_CLASS_MODALITIES.get(sop)
    sop_name = f"{_uid_name(sop)} ({sop})" if sop else ""
    remedy = f"accepted: {', '.join(allowed)}; pass modalities=None to read every modality"
    if modality and modality not in allowed:
        raise ValueError(f"DICOM file {where} has {tag_name('Modality')} {modality}, not an accepted modality "
                         f"({remedy})")
    if implied is not None and not set(implied) & set(allowed):
        raise ValueError(f"DICOM file {where} has SOP class {sop_name}, whose images are {'/'.join(implied)}"
                         f"{f' (though its Modality says {modality})' if modality else ''}, not an accepted "
                         f"modality ({remedy})")
    if not modality and sop and implied is None:
        raise ValueError(f"DICOM file {where} has no {tag_name('Modality')} and its SOP class {sop_name} does not "
                         f"say what it shows ({remedy})")


def _uid_name(uid: str) -> str:
    from pydicom.uid import UID
    return UID(uid).name


# --------------------------------------------------------------------------------------------- decoding


_INSTALL = "pip install 'alignkit[medical]' (Pillow, pylibjpeg, pylibjpeg-openjpeg, pylibjpeg-rle, pyjpegls, " \
           "python-gdcm)"
_JPEG_12_BIT = ("1.2.840.10008.1.2.4.51",)
_GPL_LIBJPEG = "pip install 'alignkit[medical-libjpeg]' (pylibjpeg-libjpeg, GPL-3.0)"


def transfer_syntax(ds: Any, where: str) -> Any:
    """The pixel data's transfer syntax (a pydicom ``UID``). A file meta without ``TransferSyntaxUID`` (0002,0010)
    and with native pixel data gets the syntax the data set was read in (written into ``ds.file_meta``);
    encapsulated pixel data without it is a ``ValueError`` naming the file and the tag."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
    meta = getattr(ds, "file_meta", None)
    syntax = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    if syntax:
        return syntax
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if ds["PixelData"].is_undefined_length or implicit is None:
        raise _bad(where, "TransferSyntaxUID", "is missing from the file meta, so its compressed pixel data "
                                               "cannot be decoded")
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else \
        ExplicitVRLittleEndian if little else ExplicitVRBigEndian
    return meta.TransferSyntaxUID


def decode_frame(ds: Any, index: int, where: str) -> Tuple[np.ndarray, str]:
    """Frame ``index`` (from 0) as stored, ``(H, W)`` or ``(H, W, 3)``, and the photometric interpretation of that
    array (pydicom returns YBR_FULL(_422), YBR_ICT and YBR_RCT frames as RGB); through
    ``pydicom.pixels.get_decoder(syntax).as_array``.

    A failure is a ``ValueError`` naming the file, the frame, the transfer syntax (UID and name) and what to
    install: a syntax no installed plugin decodes, one pydicom has no decoder for (MPEG/HEVC video, JPEG XL), or
    data every installed plugin failed on (corrupt, or a variant they lack, e.g. 12-bit JPEG Extended, which only
    pylibjpeg-libjpeg decodes).
    """
    from pydicom.pixels import get_decoder
    syntax = transfer_syntax(ds, where)
    what = f"frame {index} of DICOM file {where} ({tag_name('TransferSyntaxUID')} {syntax}, {syntax.name})"
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as exc:
        raise ValueError(f"cannot decode {what}: pydicom has no decoder for this transfer syntax; convert the "
                         "file to an uncompressed, JPEG or JPEG 2000 syntax (e.g. with gdcmconv or dcmtk)") from exc
    if not decoder.is_available:
        extra = f", or {_GPL_LIBJPEG}" if syntax in _JPEG_12_BIT else ""
        raise ValueError(f"cannot decode {what}: no decoder plugin for it is installed; {_INSTALL}{extra}")
    try:
        array, meta = decoder.as_array(ds, index=index)
    except Exception as exc:  # decoders raise ValueError, RuntimeError, NotImplementedError, ...
        plugins = ", ".join(decoder.available_plugins)
        extra = f"; 12-bit JPEG Extended needs {_GPL_LIBJPEG}" if syntax in _JPEG_12_BIT else ""
        raise ValueError(f"cannot decode {what} with the installed plugins ({plugins}): {type(exc).__name__}: "
                         f"{' '.join(str(exc).split())}; the pixel data is corrupt or truncated, or a variant these "
                         f"plugins lack ({_INSTALL}){extra}") from exc
    return array, str(meta.get("photometric_interpretation", ds.PhotometricInterpretation)).strip().upper()


# --------------------------------------------------------------------------------------------- display


def _first(value: Any) -> float:
    """The first value of an element that may hold several (WindowCenter/Width list alternative windows)."""
    from pydicom.multival import MultiValue
    return float(value[0]) if isinstance(value, (list, tuple, MultiValue)) else float(value)


def has_modality_lut(ds: Any) -> bool:
    """True if the modality LUT is not the identity: a Modality LUT Sequence, or slope != 1 or intercept != 0."""
    return bool(ds.get("ModalityLUTSequence")) or float(ds.get("RescaleSlope", 1) or 1) != 1.0 \
        or float(ds.get("RescaleIntercept", 0) or 0) != 0.0


def has_voi(ds: Any) -> bool:
    """True if ``ds`` has a VOI LUT Sequence or both Window Center and Window Width."""
    return bool(ds.get("VOILUTSequence")) or ("WindowCenter" in ds and "WindowWidth" in ds)


def modality_range(ds: Any, header: PixelHeader) -> Tuple[float, float]:
    """The range of every storable value (:meth:`PixelHeader.storable`) after the modality LUT."""
    from pydicom.pixels import apply_modality_lut
    lo, hi = header.storable()
    probe = np.arange(lo, hi + 1) if ds.get("ModalityLUTSequence") and hi - lo < 2 ** 16 else np.array([lo, hi])
    out = apply_modality_lut(probe, ds)
    return float(np.min(out)), float(np.max(out))


def apply_voi(values: np.ndarray, ds: Any, where: str) -> Tuple[np.ndarray, Tuple[float, float]]:
    """``pydicom.pixels.apply_voi_lut`` with ``ds``'s first VOI, and that VOI's output range ``(lo, hi)``.

    A VOI LUT Sequence is preferred to Window Center/Width (as in pydicom). The range is the span of the LUT
    entries, or the two clamped ends of the window (LINEAR, LINEAR_EXACT or SIGMOID, probed 50 widths out).
    Inputs are clipped to a LUT's input range first: pydicom indexes the LUT in the LUT's own dtype, which
    overflows for 8-bit LUTs. A window pydicom refuses (e.g. width < 1) is a ``ValueError`` naming the tag.
    """
    from pydicom.pixels import apply_voi_lut
    keyword = "VOILUTSequence" if ds.get("VOILUTSequence") else "WindowWidth"
    try:
        if keyword == "VOILUTSequence":
            entries, first = (int(v) for v in ds.VOILUTSequence[0].LUTDescriptor[:2])
            probe = np.arange(first, first + (entries or 2 ** 16))  # every LUT entry
            values = np.clip(values, probe[0], probe[-1])
        else:
            center, width = _first(ds.WindowCenter), abs(_first(ds.WindowWidth))
            probe = np.array([center - 50 * width - 1, center + 50 * width + 1])
        ends = apply_voi_lut(probe, ds)
        return apply_voi_lut(values, ds), (float(np.min(ends)), float(np.max(ends)))
    except Exception as exc:
        raise ValueError(f"DICOM file {where}: its VOI ({tag_name(keyword)}) cannot be applied ({exc}); read it "
                         "with window='none' or fix the tag") from exc


def display_range(values: Sequence[np.ndarray], header: PixelHeader, ds: Any) -> Tuple[float, float]:
    """``(lo, hi)`` that 0 and 1 stand for in grey frames without a VOI (``values``: after the modality LUT).

    - Stored values of at most 8 bits, unsigned, with an identity modality LUT are display values already
      (ultrasound, secondary capture, 8-bit exports): ``(0, 2^BitsStored - 1)``, as an 8-bit PNG is read;
    - otherwise the actual range: the :data:`PERCENTILES` (0.5 %, 99.5 %) of all the frames' values (every k-th
      value past 2^22 of them); if they meet, the minimum and maximum; if those meet too (a constant image), the
      storable range through the modality LUT (:func:`modality_range`), so a constant image stays constant at
      its level instead of dividing by zero.
    """
    if header.bits_stored <= 8 and not header.signed and not has_modality_lut(ds):
        return 0.0, float(2 ** header.bits_stored - 1)
    step = math.ceil(sum(v.size for v in values) / _PERCENTILE_SAMPLES)
    sample = np.concatenate([v.reshape(-1)[::step] for v in values])
    lo, hi = (float(v) for v in np.percentile(sample, PERCENTILES))
    if hi <= lo:
        lo, hi = min(float(v.min()) for v in values), max(float(v.max()) for v in values)
    return modality_range(ds, header) if hi <= lo else (lo, hi)


def scale_to_unit(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``clip((x - lo) / (hi - lo), 0, 1)`` as float32; zeros when ``hi <= lo``."""
    x = np.asarray(values, dtype=np.float32)
    out = (x - np.float32(lo)) / np.float32(hi - lo) if hi > lo else np.zeros_like(x)
    return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)


def linear_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """The DICOM linear window (PS3.3 C.11.2.1.2.1): ``clip((x - (c - 0.5)) / (w - 1) + 0.5, 0, 1)``, float32."""
    x = np.asarray(values, dtype=np.float32)
    return np.clip((x - np.float32(center - 0.5)) / np.float32(width - 1.0) + 0.5, 0.0, 1.0).astype(np.float32)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    """``round(255 y)`` as uint8, ``y`` in ``[0, 1]``."""
    return np.round(image * np.float32(255.0)).astype(np.uint8)


def _grey(stored: List[np.ndarray], ds: Any, header: PixelHeader, window: Window, where: str,
          uint8: bool) -> List[np.ndarray]:
    """Grey frames -> ``[0, 1]`` (MONOCHROME1 inverted; :func:`_to_uint8` with ``uint8``); one range for all."""
    from pydicom.pixels import apply_modality_lut
    voi = window == "auto" and has_voi(ds)
    value_range: Optional[Tuple[float, float]] = None
    values = []
    for frame in stored:
        v = apply_modality_lut(frame, ds)
        if voi:
            v, value_range = apply_voi(v, ds, where)
        values.append(np.asarray(v, dtype=np.float32))
    if not isinstance(window, tuple):
        if window == "none":
            value_range = modality_range(ds, header)
        elif window == "minmax":
            lo, hi = min(float(v.min()) for v in values), max(float(v.max()) for v in values)
            value_range = (lo, hi) if hi > lo else modality_range(ds, header)
        elif value_range is None:  # "auto" without a VOI
            value_range = display_range(values, header, ds)
    images = []
    for v in values:
        y = linear_window(v, *window) if isinstance(window, tuple) else scale_to_unit(v, *value_range)
        y = 1.0 - y if header.photometric == "MONOCHROME1" else y
        images.append(_to_uint8(y) if uint8 else y)
    return images


def _colour(stored: List[np.ndarray], photometric: str, ds: Any, header: PixelHeader, window: Window,
            where: str, uint8: bool) -> List[np.ndarray]:
    """Palette or colour frames -> RGB in ``[0, 1]`` (no VOI applies to colour, PS3.3 C.11.2; :func:`_to_uint8`
    with ``uint8``, which leaves 8-bit samples as they are)."""
    from pydicom.pixels import apply_color_lut, convert_color_space
    if photometric == "PALETTE COLOR":
        try:
            rgb = [apply_color_lut(frame, ds) for frame in stored]
            bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
        except Exception as exc:
            raise ValueError(f"DICOM file {where}: PALETTE COLOR without a usable palette "
                             f"({tag_name('RedPaletteColorLookupTableDescriptor')} and its LUT data: {exc}); fix "
                             "the palette tags or leave the file out") from exc
        top = float(2 ** (bits if bits in (8, 16) else 8 * rgb[0].dtype.itemsize) - 1)
    else:
        rgb = [convert_color_space(f, photometric, "RGB") if photometric in ("YBR_FULL", "YBR_FULL_422") else f
               for f in stored]
        top = float(2 ** header.bits_stored - 1)
    lo, hi = 0.0, top
    if window == "minmax":
        lo, hi = min(float(f.min()) for f in rgb), max(float(f.max()) for f in rgb)
        lo, hi = (lo, hi) if hi > lo else (0.0, top)
    if uint8 and (lo, hi) == (0.0, 255.0) and not isinstance(window, tuple) and rgb[0].dtype == np.uint8:
        return rgb  # round(255 * s / 255) = s
    images = []
    for f in rgb:
        y = linear_window(f, *window) if isinstance(window, tuple) else scale_to_unit(f, lo, hi)
        images.append(_to_uint8(y) if uint8 else y)
    return images


def render_frames(ds: Any, indices: Sequence[int], where: str, window: Window = "auto",
                  uint8: bool = False) -> np.ndarray:
    """Frames ``indices`` of ``ds`` (a dataset with pixel data, named ``where`` in errors) for display: float32
    in ``[0, 1]``, ``(N, H, W)`` grey or ``(N, H, W, 3)`` RGB; ``uint8=True`` gives ``round(255 y)`` as uint8.

    The header is checked first (:func:`check_header`); each frame is decoded once per index
    (:func:`decode_frame`). Grey frames (MONOCHROME1/2) then, by ``window``:

    - ``"auto"``: the modality LUT, then the file's first VOI (:func:`apply_voi`), scaled from that VOI's output
      range; without a VOI, scaled from :func:`display_range` of all N frames together (one range, so a cine
      does not flicker);
    - ``"none"``: the modality LUT, scaled from every storable value's range through it (:func:`modality_range`);
    - ``"minmax"``: the modality LUT, scaled from the frames' own minimum and maximum (a constant image: as
      ``"none"``);
    - ``(center, width)``: the modality LUT, then :func:`linear_window`;

    and MONOCHROME1 is inverted (``1 - y``). PALETTE COLOR goes through its LUTs, RGB and YBR arrive as RGB;
    colour is divided by ``2^bits - 1`` (``"minmax"`` and ``(center, width)`` act on the samples as on grey).

    ``ValueError`` naming the file for a malformed header, an index outside ``0 .. NumberOfFrames - 1``
    (naming NumberOfFrames), an undecodable frame or an unsupported photometric interpretation.
    """
    header = check_header(ds, where)
    for k in indices:
        if not 0 <= int(k) < header.frames:
            raise ValueError(f"frame {int(k)} requested but DICOM file {where} has {header.frames} frame(s) "
                             f"({tag_name('NumberOfFrames')})")
    decoded = [decode_frame(ds, int(k), where) for k in indices]
    photometric = decoded[0][1] if decoded else header.photometric
    stored = [frame for frame, _ in decoded]
    if photometric in MONOCHROME and all(f.ndim == 2 for f in stored):
        images = _grey(stored, ds, header, window, where, uint8)
    elif photometric == "PALETTE COLOR" and all(f.ndim == 2 for f in stored) or \
            photometric in ("RGB", "YBR_FULL", "YBR_FULL_422") and all(f.ndim == 3 for f in stored):
        images = _colour(stored, photometric, ds, header, window, where, uint8)
    else:
        raise _bad(where, "PhotometricInterpretation", f"is {header.photometric} (decoded as {photometric}, shape "
                                                       f"{stored[0].shape}), which is not rendered "
                                                       f"({', '.join(PHOTOMETRICS)} are)")
    return np.stack(images)


def render_frame(ds: Any, index: int, where: str, window: Window = "auto") -> np.ndarray:
    """Frame ``index`` of ``ds`` for display: float32 ``(H, W)`` grey or ``(H, W, 3)`` RGB in ``[0, 1]``
    (:func:`render_frames` of one frame)."""
    return render_frames(ds, [index], where, window)[0]


def check_modalities(modalities: Optional[Sequence[str]]) -> Optional[Tuple[str, ...]]:
    """``modalities`` as a tuple of :data:`DICOM_MODALITIES` (None stays None, a bare string is one code); a
    ``ConfigError`` naming a code that is not a defined term (with the closest one)."""
    if modalities is None:
        return None
    if isinstance(modalities, str):
        modalities = [modalities]
    for m in modalities:
        check_choice(m, DICOM_MODALITIES, "modalities")
    return tuple(modalities)
