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
from typing import Any, Dict, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from alignkit.core.paired import RawRecord, raw_text
from alignkit.core.registry import ConfigError

PREPROCESS_KEYS = ("image_size", "channels", "mean", "std")
"""The parameters of :class:`ImageTextDecoder` that make a model folder's recorded image preprocessing
(``config.json`` ``preprocess``)."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
"""The ImageNet channel statistics torchvision's, timm's and Voltron's preprocessing normalise with (RGB)."""
IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "bmp", "tif", "tiff", "webp")
"""Image file types a raw record may hold; the record's field is named by the extension."""


DRAFT_OVERSAMPLE = 2
"""JPEG draft decoding keeps at least this many decoded pixels per output pixel along each side (see
:func:`use_draft`)."""


def use_draft(img: Image.Image, size: Tuple[int, int], mode: str | None = None) -> bool:
    """Ask Pillow to decode a JPEG ``img`` (opened, not yet loaded) at a DCT scale of 1/2, 1/4 or 1/8 when the
    output ``size`` ``(W, H)`` is much smaller: the largest scale whose decoded image is still at least
    ``DRAFT_OVERSAMPLE * size`` per side, so the antialiased resize that follows averages over 2 or more decoded
    pixels per output pixel and the result stays within a few grey levels (1-2 of 255, mean absolute) of a full
    decode + resize, at a fraction of the decoding time (a 3,056 x 2,544 X-ray to 224 px decodes at 1/4 scale).
    ``mode`` (``"L"``, ``"RGB"``) also lets the decoder produce that mode directly (a colour JPEG's luma plane for
    ``"L"``). Returns whether a reduced scale was chosen; other formats and small reductions are left alone."""
    if img.format != "JPEG":
        return False
    want = (DRAFT_OVERSAMPLE * size[0], DRAFT_OVERSAMPLE * size[1])
    if img.size[0] < 2 * want[0] or img.size[1] < 2 * want[1]:
        return False
    full = img.size
    img.draft(mode if mode in ("L", "RGB") and img.mode in ("L", "RGB") else None, want)
    return img.size != full


def load_image(data: bytes, image_size: int, channels: int, draft: bool = True) -> Tensor:
    """Decode image file bytes (PNG, JPEG, ... via Pillow) to a float Tensor (C, S, S) in [0, 1].

    Resized (bilinear) to the square ``S = image_size``. ``channels`` 1 gives grey, 3 gives RGB.
    16-bit and 32-bit grey images (X-rays) are scaled by 1/65535 without a lossy 8-bit detour. ``draft``: a JPEG
    at least 4 times ``S`` per side is decoded at a reduced DCT scale first (:func:`use_draft`).
    """
    with Image.open(io.BytesIO(data)) as img:
        if draft:
            use_draft(img, (image_size, image_size), "L" if channels == 1 else "RGB")
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
        load_image(path.read_bytes(), image_size=1, channels=3, draft=False)
    except Exception as exc:  # Pillow raises OSError, SyntaxError, EOFError, ValueError, struct.error, ...
        raise ValueError(f"corrupt image {path}: it does not decode in full ({type(exc).__name__}: {exc}); the file "
                         "is damaged, truncated or not an image") from None


DEFAULT_IMAGE_KEY = ";".join((*IMAGE_EXTENSIONS, "image"))
"""The record fields searched for the image, in order: every :data:`IMAGE_EXTENSIONS` entry, then ``image``."""

DEFAULT_CAPTION_KEY = "txt"
"""The record field holding the caption: ``txt``, as img2dataset and open_clip write it."""


def field_names(spec: str | Sequence[str], what: str) -> Tuple[str, ...]:
    """``"jpg;png;webp"`` (webdataset's ``to_tuple`` / open_clip's ``--csv-img-key`` convention) or a list of names
    -> ``("jpg", "png", "webp")``; names are case-sensitive record fields (a file's extension in a shard)."""
    names = tuple(n.strip() for n in (spec.split(";") if isinstance(spec, str) else spec) if str(n).strip())
    if not names:
        raise ConfigError(f"{what} names no record field; give one or more names separated by ';', e.g. 'jpg;png'")
    bad = [n for n in names if n.startswith(("_", "."))]
    if bad:
        raise ConfigError(f"{what}: field names {bad} must not start with '_' (webdataset metadata) or '.'")
    return names


def record_where(raw: RawRecord) -> str:
    """Where a shard record came from: ``sample '<__key__>' of shard <__url__>`` (webdataset's metadata), or
    ``""`` for a record that is not read from a shard."""
    parts = []
    if "__key__" in raw:
        parts.append(f"sample '{raw_text(raw['__key__'])}'")
    if "__url__" in raw:
        parts.append(f"shard {raw_text(raw['__url__'])}")
    return " of ".join(parts)


def _alignkit_meta(raw: RawRecord) -> Dict[str, Any]:
    """The record's ``json`` if alignkit wrote it (it holds ``id`` and ``where``); ``{}`` when absent or foreign
    (img2dataset's ``{"url", "caption", "key", "status", ...}``)."""
    if "json" not in raw:
        return {}
    try:
        meta = json.loads(raw_text(raw["json"]))
    except (ValueError, UnicodeDecodeError):
        return {}
    return meta if isinstance(meta, dict) and "id" in meta and "where" in meta else {}


@dataclass(frozen=True)
class ImageTextDecoder:
    """Decodes a paired image-text record into a sample: alignkit's own (see
    :meth:`~alignkit.core.paired_csv.PairedImageTextCSV.raw`) or a WebDataset shard in the layout img2dataset and
    open_clip write (``000000001.jpg``, ``000000001.txt``, optional ``000000001.json`` of their own fields).

    ``image = (load_image(bytes) - mean) / std`` per channel, float Tensor (C, S, S), from the first field of
    ``image_key`` the record holds (``"jpg;png;webp"``: names separated by ``;``); ``text`` from the first field of
    ``caption_key``; ``label`` from ``cls`` (if present). ``id`` and ``group`` come from ``json`` when it holds
    alignkit's fields (``id``, ``where``); otherwise ``id`` is the record's ``__key__`` (if any) and there is no
    group. Errors name the sample's ``__key__`` and shard ``__url__``.
    """

    image_size: int = 32
    channels: int = 3
    mean: Tuple[float, ...] = (0.5,)
    std: Tuple[float, ...] = (0.5,)
    image_key: str | Tuple[str, ...] = DEFAULT_IMAGE_KEY
    caption_key: str | Tuple[str, ...] = DEFAULT_CAPTION_KEY

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
        object.__setattr__(self, "image_key", field_names(self.image_key, "image_key"))
        object.__setattr__(self, "caption_key", field_names(self.caption_key, "caption_key"))

    def image(self, data: bytes) -> Tensor:
        """Image file bytes -> the normalised float Tensor (C, S, S) a tower sees (large JPEGs draft-decoded:
        :func:`use_draft`)."""
        image = load_image(data, self.image_size, self.channels)
        return (image - torch.tensor(self.mean).view(-1, 1, 1)) / torch.tensor(self.std).view(-1, 1, 1)

    def _field(self, raw: RawRecord, names: Tuple[str, ...], what: str, param: str, where: str) -> str:
        for name in names:
            if name in raw:
                return name
        fields = sorted(k for k in raw if not k.startswith("__"))
        raise ValueError(f"{where or 'record'} has no {what} field (one of {';'.join(names)}); its fields: "
                         f"{', '.join(fields) or 'none'}; set data.params.{param} to the name its shards use")

    def __call__(self, raw: RawRecord) -> Dict[str, Any]:
        meta = _alignkit_meta(raw)
        where = ", ".join(w for w in (meta.get("where", ""), record_where(raw)) if w)
        image_field = self._field(raw, self.image_key, "image", "image_key", where)  # type: ignore[arg-type]
        caption_field = self._field(raw, self.caption_key, "caption", "caption_key", where)  # type: ignore[arg-type]
        try:
            image = self.image(bytes(raw[image_field]))  # type: ignore[arg-type]
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            name = f"image '{meta['id']}'" if "id" in meta else f"field '{image_field}'"
            raise ValueError(f"cannot decode {name} ({where or 'record'}): {exc}") from exc
        sample: Dict[str, Any] = {"image": image, "text": raw_text(raw[caption_field])}
        if "id" in meta:
            sample["id"] = meta["id"]
        elif "__key__" in raw:
            sample["id"] = raw_text(raw["__key__"])
        if "cls" in raw:
            try:
                sample["label"] = int(raw_text(raw["cls"]).strip())
            except ValueError:
                raise ValueError(f"{where or 'record'}: cls {raw_text(raw['cls'])!r} is not an integer class "
                                 "index") from None
        if "group" in meta:
            sample["group"] = int(meta["group"])
        return sample


__all__ = ["PREPROCESS_KEYS", "IMAGENET_MEAN", "IMAGENET_STD", "DRAFT_OVERSAMPLE", "use_draft", "IMAGE_EXTENSIONS",
           "DEFAULT_IMAGE_KEY", "DEFAULT_CAPTION_KEY", "field_names", "record_where", "load_image",
           "check_image_decodes", "ImageTextDecoder"]
