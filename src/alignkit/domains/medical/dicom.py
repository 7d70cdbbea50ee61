"""DICOM files shared by the X-ray and echo readers: telling them apart, reading a dataset, decoding a frame.

Every failure is a ``ValueError`` naming the file (DICOM PS3.10 for the file format, PS3.5 for the transfer
syntaxes pydicom's pixel plugins decode).
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any, BinaryIO, Optional, Union

import numpy as np

PathLike = Union[str, Path]


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


def frame_count(ds: Any) -> int:
    """``NumberOfFrames`` (1 when absent or empty)."""
    return int(ds.get("NumberOfFrames", 1) or 1)


def decode_frame(ds: Any, index: Optional[int], where: str) -> np.ndarray:
    """The stored values of frame ``index`` (None: the only frame) through ``pydicom.pixels.pixel_array``; a
    decoder failure is a ``ValueError`` naming the file, the frame and the transfer syntax."""
    from pydicom.pixels import pixel_array
    try:
        return pixel_array(ds, index=index)
    except Exception as exc:  # decoders raise ValueError, RuntimeError, NotImplementedError, ...
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        what = "the pixel data" if index is None else f"frame {index}"
        raise ValueError(f"cannot decode {what} of DICOM file {where} (transfer syntax {syntax}; "
                         f"{type(exc).__name__}: {exc}); the file is truncated or needs a decoder plugin "
                         "(Pillow or pylibjpeg for JPEG, gdcm)") from exc
