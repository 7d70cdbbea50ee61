"""`alignkit shard --resize/--format/--workers`: resized, re-encoded shards that are the same for any worker count,
keep 16-bit images 16-bit, record the settings in the manifest and read back by webdataset and alignkit."""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from alignkit.cli import main
from alignkit.core.image_encoding import ImageEncoding
from alignkit.core.images import ImageTextDecoder, load_image
from alignkit.core.paired import PairedDataset, RawValue
from alignkit.core.registry import ConfigError
from alignkit.core.shards import ShardedIterableDataset, write_shards


def textured(height: int, width: int, seed: int) -> np.ndarray:
    """A smooth random field plus grain, float in [0, 1] (compresses like a photograph, not like a flat image)."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((height // 16 + 2, width // 16 + 2))
    field = np.asarray(Image.fromarray(coarse.astype(np.float32)).resize((width, height), Image.BICUBIC))
    return np.clip(0.8 * field + 0.1 + rng.normal(0, 0.03, (height, width)), 0, 1)


def encoded(array: np.ndarray, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt, **kwargs)
    return buf.getvalue()


class Pictures(PairedDataset):
    """Item 0: a 16-bit grey PNG 320 x 256; item 1: an 8-bit grey PNG with a mask field; others RGB JPEGs 400 x 300."""

    def __init__(self, count: int = 7):
        super().__init__(params=locals())
        self.count = count

    def __len__(self) -> int:
        return self.count

    def raw(self, i: int) -> Dict[str, RawValue]:
        if i == 0:
            image = (textured(256, 320, i) * 65535).astype(np.uint16)
            return {"png": encoded(image, "PNG"), "txt": "sixteen bits"}
        if i == 1:
            grey = (textured(200, 200, i) * 255).astype(np.uint8)
            return {"png": encoded(grey, "PNG"), "mask0.png": encoded((grey > 128).astype(np.uint8) * 255, "PNG"),
                    "txt": "grey with a mask"}
        rgb = (np.stack([textured(300, 400, i + k) for k in range(3)], -1) * 255).astype(np.uint8)
        return {"jpg": encoded(rgb, "JPEG", quality=95), "txt": f"photo {i}", "cls": str(i % 3)}

    @classmethod
    def decoder(cls, count: int = 7) -> ImageTextDecoder:
        return ImageTextDecoder(image_size=32, channels=1)


def records(shards: List[Path]) -> List[Dict[str, bytes]]:
    return list(wds.DataPipeline(wds.SimpleShardList([str(p) for p in shards]), wds.tarfile_to_samples()))


ENCODING = ImageEncoding(size=128, resize="longest", interpolation="lanczos", format="jpeg", quality=85)


def test_same_shards_for_any_worker_count(tmp_path: Path):
    one = write_shards(Pictures(), tmp_path / "one", max_count=3, progress=False, encoding=ENCODING, workers=1)
    two = write_shards(Pictures(), tmp_path / "two", max_count=3, progress=False, encoding=ENCODING, workers=2)
    assert [p.name for p in one] == [p.name for p in two] and len(one) == 3
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(one, two))
    assert (tmp_path / "one/manifest.json").read_text() == (tmp_path / "two/manifest.json").read_text()


def test_sizes_formats_bit_depths_and_manifest(tmp_path: Path):
    dataset = Pictures()
    shards = write_shards(dataset, tmp_path / "s", progress=False, encoding=ENCODING)
    got = {r["__key__"]: r for r in records(shards)}
    sixteen = got[dataset.key(0)]
    assert "jpg" not in sixteen  # 16-bit stays a 16-bit PNG although jpeg was asked for
    with Image.open(io.BytesIO(sixteen["png"])) as img:
        assert img.mode == "I;16" and img.size == (128, 102)
        stored = np.asarray(img, dtype=np.float64) / 65535
    with Image.open(io.BytesIO(dataset.raw(0)["png"])) as img:  # type: ignore[arg-type]
        reference = np.asarray(Image.fromarray(np.asarray(img, dtype=np.float32)).resize((128, 102), Image.LANCZOS))
    assert np.abs(stored - reference / 65535).max() < 1e-4  # no 8-bit detour: error ~ 1 / 65535
    grey = got[dataset.key(1)]
    assert grey["mask0.png"] == dataset.raw(1)["mask0.png"]  # other image fields keep their bytes
    with Image.open(io.BytesIO(grey["jpg"])) as img:
        assert img.format == "JPEG" and img.size == (128, 128) and img.mode == "L"
    with Image.open(io.BytesIO(got[dataset.key(2)]["jpg"])) as img:
        assert img.size == (128, 96) and img.mode == "RGB"
    manifest = json.loads((tmp_path / "s/manifest.json").read_text())
    assert manifest["images"] == {"size": 128, "resize": "longest", "interpolation": "lanczos", "format": "jpeg",
                                  "quality": 85, "bit_depth": "kept", "bit_depths": {"16": 1, "8": 6}}
    # alignkit's reader decodes the resized shards to nearly what it decodes from the originals
    stream = ShardedIterableDataset([str(p) for p in shards], decode=Pictures.decoder(), shuffle=0)
    decoded = {s["id"]: s["image"] for s in stream}
    for i in range(len(dataset)):
        assert (decoded[dataset.key(i)] - dataset[i]["image"]).abs().mean() < 0.02


def test_square_eight_bits_and_webp(tmp_path: Path):
    encoding = ImageEncoding(size=48, resize="square", format="webp", quality=80, bit_depth=8)
    shards = write_shards(Pictures(3), tmp_path / "s", progress=False, encoding=encoding)
    samples = list(wds.WebDataset([str(p) for p in shards], shardshuffle=False).decode("pil"))
    assert [sorted(k for k in s if not k.startswith("__")) for s in samples] == \
        [["txt", "webp"], ["mask0.png", "txt", "webp"], ["cls", "txt", "webp"]]
    assert all(s["webp"].size == (48, 48) for s in samples)
    full = load_image(Pictures(3).raw(0)["png"], 48, 1)  # type: ignore[arg-type]
    stored = torch.from_numpy(np.asarray(samples[0]["webp"].convert("L"), dtype=np.float32) / 255)
    assert (stored - full).abs().mean() < 0.03
    manifest = json.loads((tmp_path / "s/manifest.json").read_text())
    assert manifest["images"]["bit_depth"] == 8 and manifest["images"]["bit_depths"] == {"8": 3}


def test_encoding_errors_name_the_option_and_item(tmp_path: Path):
    with pytest.raises(ConfigError, match="interpolation 'lanczoz'.*lanczos"):
        ImageEncoding(size=8, interpolation="lanczoz")
    with pytest.raises(ConfigError, match="quality"):
        ImageEncoding(quality=0)

    class Broken(Pictures):
        def raw(self, i: int) -> Dict[str, RawValue]:
            return {"jpg": b"not a jpeg", "txt": "x"}
    with pytest.raises(ValueError, match=r"item 0 \('000000000'\) of Broken"):
        write_shards(Broken(2), tmp_path / "b", progress=False, encoding=ENCODING)


def test_cli_resizes_in_workers_and_keeps_originals_by_default(shapes_tiny: Path, tmp_path: Path, capsys):
    base = ["shard", "-c", "core/shapes_demo", f"data.params.root={shapes_tiny}", "--max-count", "16"]
    assert main([*base, "--out", str(tmp_path / "orig")]) == 0
    manifest = json.loads((tmp_path / "orig/manifest.json").read_text())
    assert "images" not in manifest
    first = records(sorted((tmp_path / "orig").glob("*.tar")))[0]
    originals = {p.read_bytes() for p in shapes_tiny.rglob("*.png")}
    assert first["png"] in originals
    assert main([*base, "--out", str(tmp_path / "small"), "--resize", "16", "--format", "jpeg", "--quality", "80",
                 "--workers", "2"]) == 0
    manifest = json.loads((tmp_path / "small/manifest.json").read_text())
    assert manifest["images"]["size"] == 16 and manifest["images"]["format"] == "jpeg"
    first = records(sorted((tmp_path / "small").glob("*.tar")))[0]
    with Image.open(io.BytesIO(first["jpg"])) as img:
        assert img.size == (16, 16)
    assert "data.shards=" in capsys.readouterr().out
