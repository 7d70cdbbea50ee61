"""Resizing and re-encoding the image of a raw record for smaller, faster shards (``alignkit shard --resize``).

An archive's images are often far larger than a tower's input: a MIMIC-CXR-JPG file is 3,056 x 2,544 pixels
(about 4 MB) and decodes in tens of milliseconds, while a ResNet sees 224 x 224. :class:`ImageEncoding` describes
what :func:`~alignkit.core.shards.write_shards` stores instead of the original bytes:

- ``size`` and ``resize``: ``"longest"`` scales the image by ``size / max(W, H)`` (aspect kept, rounded to whole
  pixels), ``"square"`` to ``(size, size)``; an image already within ``size`` is never enlarged
  (``"longest"``) and a square image of side ``size`` is left as it is;
- ``interpolation``: Pillow's filter (``lanczos``, ``bicubic``, ``bilinear``, ``box``, ``hamming``,
  ``nearest``), antialiased when shrinking;
- ``format`` and ``quality``: ``jpeg`` / ``webp`` (lossy, ``quality`` 1-100) or ``png`` (lossless); None keeps
  the file's own format (a JPEG stays JPEG at ``quality``);
- ``bit_depth``: None keeps the depth: a 16-bit grey image (X-rays) is resized in float32 and written as a 16-bit
  PNG whatever ``format`` says (JPEG and WebP have no 16 bits); ``8`` converts it to 8 bits
  (``round(x / 257)``) and writes it in ``format``.

The record field holding the image is the one named exactly by an image extension (``jpg``, ``png``, ...); it
is renamed to the new format's extension (``png`` -> ``jpg``). Other image fields (masks ``mask0.png``, rendered
views ``shaded00.png``) and DICOM files keep their bytes. Encoding is deterministic (same bytes for the same
input), so shards do not depend on how many processes wrote them.
"""
from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional, Tuple

import numpy as np
from PIL import Image

from alignkit.core.paired import RawValue
from alignkit.core.registry import ConfigError, did_you_mean

RESIZE_MODES = ("longest", "square")
INTERPOLATIONS = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
                  "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS,
                  "box": Image.Resampling.BOX, "hamming": Image.Resampling.HAMMING}
FORMATS = {"jpeg": ("JPEG", "jpg"), "png": ("PNG", "png"), "webp": ("WEBP", "webp")}
"""Output format -> (Pillow format name, record field / file extension)."""
RECODED_FIELDS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff")
"""Record fields holding the record's image: the ones :class:`ImageEncoding` re-encodes."""

_PIL_TO_FORMAT = {"JPEG": "jpeg", "PNG": "png", "WEBP": "webp"}
_HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _choice(value: Any, choices: Any, name: str) -> None:
    if value not in choices:
        raise ConfigError(f"unknown {name} '{value}'{did_you_mean(str(value), list(choices))}; use one of "
                          f"{', '.join(choices)}")


@dataclass(frozen=True)
class ImageEncoding:
    """How shards store a record's image (see the module docstring); ``size`` None keeps the pixel size."""

    size: Optional[int] = None
    resize: str = "longest"
    interpolation: str = "lanczos"
    format: Optional[str] = None
    quality: int = 90
    bit_depth: Optional[int] = None

    def __post_init__(self) -> None:
        _choice(self.resize, RESIZE_MODES, "resize mode")
        _choice(self.interpolation, INTERPOLATIONS, "interpolation")
        if self.format is not None:
            _choice(self.format, FORMATS, "image format")
        if self.size is not None and self.size < 1:
            raise ConfigError(f"resize size must be a positive number of pixels, got {self.size}")
        if not 1 <= self.quality <= 100:
            raise ConfigError(f"quality must be in 1..100, got {self.quality}")
        if self.bit_depth not in (None, 8):
            raise ConfigError(f"bit_depth must be None (keep) or 8, got {self.bit_depth}")

    def manifest(self) -> Dict[str, Any]:
        """The settings as recorded in ``manifest.json`` (``images``)."""
        return {**asdict(self), "bit_depth": self.bit_depth or "kept"}

    def target_size(self, width: int, height: int) -> Tuple[int, int]:
        """``(W', H')`` of an image of ``(width, height)``: ``"square"`` ``(S, S)``; ``"longest"``
        ``round(side * S / max(W, H))`` per side (at least 1) when ``max(W, H) > S``, else unchanged."""
        if self.size is None:
            return width, height
        if self.resize == "square":
            return self.size, self.size
        longest = max(width, height)
        if longest <= self.size:
            return width, height
        return (max(1, round(width * self.size / longest)), max(1, round(height * self.size / longest)))

    def encode(self, data: bytes, name: str) -> Tuple[str, bytes, int]:
        """Image file bytes -> ``(field, bytes, bit depth)`` of the stored image. ``ValueError`` naming ``name``
        when the bytes do not decode."""
        try:
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                source = _PIL_TO_FORMAT.get(img.format or "", "png")
                if img.mode in _HIGH_DEPTH_MODES and self.bit_depth != 8:
                    return "png", self._encode_16bit(img), 16
                if img.mode in _HIGH_DEPTH_MODES:
                    img = Image.fromarray(np.rint(np.asarray(img, dtype=np.float64) / 257.0).clip(0, 255)
                                          .astype(np.uint8))
                elif img.mode == "F":
                    img = Image.fromarray(np.rint(np.asarray(img).clip(0, 1) * 255).astype(np.uint8))
                fmt = self.format or source
                img = self._resized(self._mode_for(img, fmt))
                return FORMATS[fmt][1], self._save(img, fmt), 8
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise ValueError(f"cannot re-encode the image of {name} ({type(exc).__name__}: {exc}); the file is "
                             "corrupt or not an image: fix it, or write its original bytes (no --resize/--format)"
                             ) from exc

    def _mode_for(self, img: Image.Image, fmt: str) -> Image.Image:
        if img.mode in ("L", "RGB") or (fmt != "jpeg" and img.mode in ("LA", "RGBA")):
            return img
        if img.mode == "1":
            return img.convert("L")
        if fmt != "jpeg" and ("A" in img.mode or "transparency" in img.info):
            return img.convert("RGBA")
        return img.convert("RGB")

    def _resized(self, img: Image.Image) -> Image.Image:
        size = self.target_size(*img.size)
        return img if size == img.size else img.resize(size, INTERPOLATIONS[self.interpolation])

    def _encode_16bit(self, img: Image.Image) -> bytes:
        values = np.asarray(img, dtype=np.float32)
        size = self.target_size(*img.size)
        if size != img.size:
            resized = Image.fromarray(values).resize(size, INTERPOLATIONS[self.interpolation])  # mode "F"
            values = np.asarray(resized, dtype=np.float32)
        out = Image.fromarray(np.rint(values).clip(0, 65535).astype(np.uint16))  # mode "I;16"
        return self._save(out, "png")

    def _save(self, img: Image.Image, fmt: str) -> bytes:
        buffer = io.BytesIO()
        if fmt == "jpeg":
            img.save(buffer, "JPEG", quality=self.quality, optimize=False, progressive=False)
        elif fmt == "webp":
            img.save(buffer, "WEBP", quality=self.quality, method=4)
        else:
            img.save(buffer, "PNG", compress_level=6)
        return buffer.getvalue()


def recode_record(record: Dict[str, RawValue], encoding: ImageEncoding, name: str) -> Tuple[Dict[str, RawValue], int]:
    """``record`` with its image field (the first of :data:`RECODED_FIELDS` it holds) re-encoded by ``encoding``
    and renamed to the new extension; returns ``(record, bit depth)``, depth 0 when the record has no such field."""
    field = next((f for f in RECODED_FIELDS if f in record), None)
    if field is None:
        return record, 0
    new_field, data, depth = encoding.encode(bytes(record[field]), name)  # type: ignore[arg-type]
    out = {k: v for k, v in record.items() if k != field}
    if new_field in out:
        raise ValueError(f"{name}: re-encoding field '{field}' as '{new_field}' would overwrite its existing "
                         f"'{new_field}' field; choose another --format")
    out[new_field] = data
    return out, depth


__all__ = ["RESIZE_MODES", "INTERPOLATIONS", "FORMATS", "RECODED_FIELDS", "ImageEncoding", "recode_record"]
