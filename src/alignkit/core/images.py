"""Image decoding for paired records: file bytes -> float tensor, and the image-caption record decoder.

Decoding is strict: Pillow's ``ImageFile.LOAD_TRUNCATED_IMAGES`` stays False (alignkit never sets it), so a
truncated JPEG or PNG raises instead of coming back padded with grey. :func:`check_image_decodes` is the
screening ``skip_bad`` readers run while indexing: a full decode, because ``Image.verify`` reads only a PNG's
chunk checksums and a JPEG's headers and passes a truncated file.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Tuple

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from alignkit.core.paired import RawRecord, raw_text
from alignkit.core.registry import ConfigError

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "bmp", "tif", "tiff", "webp")
"""Image file types a raw record may hold; the record's field is named by the extension."""


def load_image(data: bytes, image_size: int, channels: int) -> Tensor:
    """Decode image file bytes (PNG, JPEG, ... via Pillow) to a float Tensor (C, S, S) in [0, 1].

    Resized (bilinear) to the square ``S = image_size``. ``channels`` 1 gives grey, 3 gives RGB.
    16-bit and 32-bit grey images (X-rays) are scaled by 1/65535 without a lossy 8-bit detour.
    """
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
            scale = 1.0 if img.mode == "F" else 65535.0
            grey = Image.fromarray(np.asarray(img, dtype=np.float32) / scale)  # mode "F"
            arr = np.asarray(grey.resize((image_size, image_size), Image.BILINEAR), dtype=np.float32)
            arr = np.clip(arr, 0.0, 1.0)[:, :, None].repeat(channels, axis=2)
        else:
            img = img.convert("L" if channels == 1 else "RGB").resize((image_size, image_size), Image.BILINEAR)
            arr = np.asarray(img, dtype=np.float32).reshape(image_size, image_size, channels) / 255.0
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def check_image_decodes(path: Path) -> None:
    """``ValueError`` unless the image file at ``path`` decodes in full (:func:`load_image`: every pixel is read and
    converted), naming the file and Pillow's complaint."""
    try:
        load_image(path.read_bytes(), image_size=1, channels=3)
    except Exception as exc:  # Pillow raises OSError, SyntaxError, EOFError, ValueError, struct.error, ...
        raise ValueError(f"corrupt image {path}: it does not decode in full ({type(exc).__name__}: {exc}); the file "
                         "is damaged, truncated or not an image") from None


def _image_field(raw: RawRecord) -> str:
    for ext in IMAGE_EXTENSIONS:
        if ext in raw:
            return ext
    raise ValueError(f"record has no image field (one of {', '.join(IMAGE_EXTENSIONS)}); "
                     f"its fields: {', '.join(sorted(raw))}")


@dataclass(frozen=True)
class ImageTextDecoder:
    """Decodes a paired image-text record (see :meth:`~alignkit.core.paired_csv.PairedImageTextCSV.raw`) into a
    sample.

    ``image = (load_image(bytes) - mean) / std`` per channel, float Tensor (C, S, S);
    ``text`` from ``txt``; ``label`` from ``cls`` (if present); ``id`` and ``group`` from ``json``.
    """

    image_size: int = 32
    channels: int = 3
    mean: Tuple[float, ...] = (0.5,)
    std: Tuple[float, ...] = (0.5,)

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ConfigError(f"channels must be 1 (grey) or 3 (RGB), got {self.channels}")
        if self.image_size < 1:
            raise ConfigError(f"image_size must be positive, got {self.image_size}")
        for name in ("mean", "std"):
            value = tuple(float(v) for v in getattr(self, name))
            if len(value) not in (1, self.channels):
                raise ConfigError(f"{name} needs 1 or {self.channels} values (channels={self.channels}), got {value}")
            object.__setattr__(self, name, value)
        if min(self.std) <= 0:
            raise ConfigError(f"std must be positive, got {self.std}")

    def image(self, data: bytes) -> Tensor:
        """Image file bytes -> the normalised float Tensor (C, S, S) a tower sees."""
        image = load_image(data, self.image_size, self.channels)
        return (image - torch.tensor(self.mean).view(-1, 1, 1)) / torch.tensor(self.std).view(-1, 1, 1)

    def __call__(self, raw: RawRecord) -> Dict[str, Any]:
        meta = json.loads(raw_text(raw["json"]))
        where = meta["where"] + (f", shard {raw['__url__']}" if "__url__" in raw else "")
        try:
            image = self.image(bytes(raw[_image_field(raw)]))  # type: ignore[arg-type]
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise ValueError(f"cannot decode image '{meta['id']}' ({where}): {exc}") from exc
        sample: Dict[str, Any] = {"image": image, "text": raw_text(raw["txt"]), "id": meta["id"]}
        if "cls" in raw:
            sample["label"] = int(raw_text(raw["cls"]))
        if "group" in meta:
            sample["group"] = int(meta["group"])
        return sample


__all__ = ["IMAGE_EXTENSIONS", "load_image", "check_image_decodes", "ImageTextDecoder"]
