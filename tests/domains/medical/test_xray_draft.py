"""X-ray JPEGs far larger than the model input are draft-decoded within tolerance; 16-bit PNGs are not touched."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from alignkit.domains.medical.xray.images import decode_xray


def radiograph(height: int, width: int) -> np.ndarray:
    """A chest-like intensity field (bright sides and mediastinum, dark lungs) with grain, float in [0, 1]."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width] / np.array([height, width])[:, None, None]
    lungs = np.exp(-(((x - 0.3) / 0.13) ** 2 + ((y - 0.5) / 0.3) ** 2)) + np.exp(-(((x - 0.7) / 0.13) ** 2 +
                                                                                   ((y - 0.5) / 0.3) ** 2))
    ribs = 0.08 * np.sin(y * 60) * (lungs > 0.2)
    return np.clip(0.85 - 0.6 * lungs + ribs + rng.normal(0, 0.03, (height, width)), 0, 1)


def test_jpeg_draft_close_to_full_decode_and_png16_unaffected() -> None:
    image = radiograph(1020, 850)
    buf = io.BytesIO()
    Image.fromarray((image * 255).astype(np.uint8)).save(buf, "JPEG", quality=95)
    fast = decode_xray(buf.getvalue(), image_size=56)
    full = decode_xray(buf.getvalue(), image_size=56, draft=False)
    assert fast.shape == full.shape == (56, 56)
    assert 0 < np.abs(fast - full).mean() < 1 / 255 and np.abs(fast - full).max() < 6 / 255
    buf = io.BytesIO()
    Image.fromarray((image * 65535).astype(np.uint16)).save(buf, "PNG")
    assert np.array_equal(decode_xray(buf.getvalue(), image_size=56), decode_xray(buf.getvalue(), image_size=56,
                                                                                  draft=False))


def test_resized_shards_read_back_by_the_cxr_decoder(cxr_tiny, tmp_path) -> None:
    from alignkit.core.image_encoding import ImageEncoding
    from alignkit.core.paired import build_decoder
    from alignkit.core.shards import ShardedIterableDataset, write_shards
    from alignkit.domains.medical.xray.data import XRayReportDataset
    dataset = XRayReportDataset(root=str(cxr_tiny), split="train", image_size=24)
    shards = write_shards(dataset, tmp_path / "s", progress=False, workers=2,
                          encoding=ImageEncoding(size=32, format="png"))
    stream = ShardedIterableDataset([str(p) for p in shards], decode=build_decoder(XRayReportDataset, dataset.params),
                                    shuffle=0)
    folder = {dataset[i]["id"]: dataset[i]["image"] for i in range(len(dataset))}
    streamed = {s["id"]: s["image"] for s in stream}
    assert streamed.keys() == folder.keys()
    assert all((streamed[k] - folder[k]).abs().mean() < 0.03 for k in folder)  # 64 -> 32 -> 24 px against 64 -> 24
