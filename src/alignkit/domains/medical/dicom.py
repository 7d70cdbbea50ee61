"""Telling DICOM files from other medical images and videos (shared by the X-ray and echo readers)."""
from __future__ import annotations

from pathlib import Path
from typing import Union

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
