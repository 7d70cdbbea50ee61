"""JPEG draft (DCT-scaled) decoding: used only when the target is much smaller than the file, and then within a
grey level or two of the full decode + resize."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from alignkit.core.images import ImageTextDecoder, load_image, use_draft


def photo(height: int, width: int, colour: bool, seed: int = 0) -> np.ndarray:
    """Smooth structure plus grain, uint8 (a realistic JPEG payload, not a flat image)."""
    rng = np.random.default_rng(seed)
    planes = []
    for _ in range(3 if colour else 1):
        coarse = rng.random((height // 24 + 2, width // 24 + 2)).astype(np.float32)
        field = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC))
        planes.append(np.clip(0.8 * field + 0.1 + rng.normal(0, 0.04, (height, width)), 0, 1))
    return (np.stack(planes, -1) if colour else planes[0]) * 255


def jpeg(array: np.ndarray, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array.astype(np.uint8)).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


@pytest.mark.parametrize("colour,channels", [(False, 1), (True, 3), (True, 1)])
def test_draft_stays_within_tolerance_of_the_full_decode(colour: bool, channels: int) -> None:
    data = jpeg(photo(612, 720, colour))
    with Image.open(io.BytesIO(data)) as img:
        assert use_draft(img, (64, 64), "L" if channels == 1 else "RGB") and img.size == (180, 153)  # scale 1/4
    fast, full = load_image(data, 64, channels), load_image(data, 64, channels, draft=False)
    difference = (fast - full).abs()
    assert 0 < difference.mean() < 1 / 255 and difference.max() < 6 / 255


def test_no_draft_for_small_reductions_or_other_formats() -> None:
    data = jpeg(photo(200, 240, False))
    with Image.open(io.BytesIO(data)) as img:
        assert not use_draft(img, (64, 64)) and img.size == (240, 200)  # 3.1x: below the 4x threshold
    assert load_image(data, 64, 1).equal(load_image(data, 64, 1, draft=False))
    buf = io.BytesIO()
    Image.fromarray(photo(612, 720, False).astype(np.uint8)).save(buf, "PNG")
    with Image.open(io.BytesIO(buf.getvalue())) as img:
        assert not use_draft(img, (16, 16))
    decoder = ImageTextDecoder(image_size=16, channels=1)
    assert decoder.image(buf.getvalue()).equal((load_image(buf.getvalue(), 16, 1, draft=False) - 0.5) / 0.5)
