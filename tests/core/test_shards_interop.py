"""Training from standard WebDataset shards: img2dataset's / open_clip's layout, no data root, no local paths."""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Dict, List, Optional

import pytest
import webdataset as wds
from PIL import Image

from alignkit.cli import main
from alignkit.core.config import ConfigError, load_config, resolve_config_path
from alignkit.core.datamodule import AlignmentDataModule
from alignkit.core.images import ImageTextDecoder
from alignkit.core.paired_csv import PairedImageTextCSV
from alignkit.core.shards import ShardedIterableDataset, shard_pattern, write_shards

CONFIG = "core/shapes_demo.yaml"
PER_SHARD = 16  # 32 training pairs in shapes_tiny -> two shards


def _train_rows(root: Path) -> List[Dict[str, str]]:
    with (root / "pairs.csv").open(newline="") as f:
        return [row for row in csv.DictReader(f) if row["split"] == "train"]


def _encoded(path: Path, fmt: str) -> bytes:
    buf = io.BytesIO()
    with Image.open(path) as img:
        img.convert("RGB").save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def write_img2dataset_shards(root: Path, out: Path, with_json: bool = True,
                             formats: tuple = (("jpg", "JPEG"),)) -> str:
    """The training pairs of ``root`` as img2dataset writes them: ``%09d`` keys, ``.jpg`` (or the given formats in
    turn), ``.txt`` caption and (``with_json``) a ``.json`` of img2dataset's own fields; returns the brace pattern."""
    out.mkdir(parents=True)
    rows = _train_rows(root)
    paths = []
    for s in range(math.ceil(len(rows) / PER_SHARD)):
        path = out / f"{s:05d}.tar"
        with wds.TarWriter(str(path)) as sink:
            for k, row in enumerate(rows[s * PER_SHARD:(s + 1) * PER_SHARD]):
                n = s * PER_SHARD + k
                key = f"{n:09d}"
                ext, fmt = formats[n % len(formats)]
                data = _encoded(root / row["path"], fmt)
                sample = {"__key__": key, ext: data, "txt": row["caption"]}
                if with_json:
                    with Image.open(io.BytesIO(data)) as img:
                        w, h = img.size
                    sample["json"] = json.dumps({
                        "url": f"https://example.com/{key}.{ext}", "caption": row["caption"], "key": key,
                        "status": "success", "error_message": None, "width": w, "height": h,
                        "original_width": w, "original_height": h, "exif": None, "sha256": None})
                sink.write(sample)
        paths.append(path)
    return shard_pattern(paths)


def _train_from_shards(pattern: str, out: Path, name: str, extra: Optional[List[str]] = None) -> Dict[str, float]:
    args = ["train", "-c", CONFIG, "--set", f"data.shards={pattern}", f"out_dir={out}", f"name={name}",
            "trainer.max_steps=2", "data.batch_size=8", "data.hard_negative_batches=false", "data.shard_shuffle=8",
            "model.towers.image.params.widths=[8,16]", "trainer.val_check_interval=null",
            "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1", "eval=[]", *(extra or [])]
    assert main(args) == 0
    return json.loads((out / name / "metrics.json").read_text())


def _assert_trained(metrics: Dict[str, float]) -> None:
    assert metrics["trainer/global_step"] == 2
    losses = [v for k, v in metrics.items() if "loss" in k]
    assert losses and all(v is not None and math.isfinite(v) for v in losses), metrics


# ----------------------------------------------------------------------------------------------- decoder


@pytest.mark.parametrize("with_json", [True, False])
def test_img2dataset_samples_decode(shapes_tiny: Path, tmp_path: Path, with_json: bool) -> None:
    pattern = write_img2dataset_shards(shapes_tiny, tmp_path / "shards", with_json=with_json)
    samples = list(ShardedIterableDataset(pattern, ImageTextDecoder(image_size=16), shuffle=0))
    rows = _train_rows(shapes_tiny)
    assert len(samples) == len(rows)
    assert [s["text"] for s in samples] == [r["caption"] for r in rows]
    assert [s["id"] for s in samples] == [f"{n:09d}" for n in range(len(rows))]  # the __key__
    assert samples[0]["image"].shape == (3, 16, 16) and "label" not in samples[0] and "group" not in samples[0]


def test_image_and_caption_keys_are_configurable_and_errors_name_the_sample() -> None:
    png = io.BytesIO()
    Image.new("RGB", (4, 4), (255, 0, 0)).save(png, format="PNG")
    raw = {"__key__": "000000007", "__url__": "/data/s-00001.tar", "image.png": png.getvalue(), "caption": "red"}
    sample = ImageTextDecoder(image_size=4, image_key="jpg;image.png", caption_key=["txt", "caption"])(raw)
    assert sample["text"] == "red" and sample["id"] == "000000007" and sample["image"].shape == (3, 4, 4)
    with pytest.raises(ValueError, match=r"sample '000000007' of shard /data/s-00001.tar has no image field "
                                         r"\(one of jpg;png\).*image_key"):
        ImageTextDecoder(image_key="jpg;png")(raw)
    with pytest.raises(ValueError, match=r"sample '000000007' of shard /data/s-00001.tar has no caption field.*"
                                         r"caption_key"):
        ImageTextDecoder(image_key="image.png")(raw)
    broken = {**raw, "image.png": png.getvalue()[:20]}
    with pytest.raises(ValueError, match=r"cannot decode field 'image.png' \(sample '000000007' of shard "):
        ImageTextDecoder(image_key="image.png", caption_key="caption")(broken)
    with pytest.raises(ConfigError, match="image_key names no record field"):
        ImageTextDecoder(image_key=" ; ")


# ------------------------------------------------------------------------------------- no data root


def test_config_loads_without_root_when_training_from_shards() -> None:
    config = resolve_config_path(CONFIG)
    with pytest.raises(ConfigError, match="config values missing: data.params.root"):
        load_config(config)
    with pytest.raises(ConfigError, match=r"data.params.root is not set .* eval=\[\]"):
        load_config(config, ["data.shards=/x/s-{0..1}.tar"])  # the demo's evaluators need the test split
    cfg = load_config(config, ["data.shards=/x/s-{0..1}.tar", "eval=[]"])
    assert cfg.data.shards == "/x/s-{0..1}.tar"
    load_config(config, ["data.shards=/x/s-{0..1}.tar", "eval=[]", "data.params.root=null"])


def test_datamodule_without_root_has_only_the_shard_train_split(shapes_tiny: Path, tmp_path: Path) -> None:
    pattern = write_img2dataset_shards(shapes_tiny, tmp_path / "shards", with_json=False)
    dm = AlignmentDataModule("paired-csv", {"root": "???", "image_size": 16}, batch_size=8, shards=pattern)
    dm.setup("fit")
    assert dm.val_dataset is None and dm.test_dataset is None and dm.val_dataloader() == []
    assert dm.eval_dataloader("test") is None
    batches = list(dm.train_dataloader())
    assert len(batches) == 4 and batches[0]["image"].shape == (8, 3, 16, 16)
    with pytest.raises(ConfigError, match=r"data.params.root not set.*data.shards"):
        AlignmentDataModule("paired-csv", {"image_size": 16}, batch_size=8)


# -------------------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("with_json", [True, False])
def test_train_from_img2dataset_shards_without_root(shapes_tiny: Path, tmp_path: Path, with_json: bool) -> None:
    pattern = write_img2dataset_shards(shapes_tiny, tmp_path / "shards", with_json=with_json)
    assert pattern.endswith("{00000..00001}.tar")
    _assert_trained(_train_from_shards(pattern, tmp_path, "jpg"))


def test_train_from_png_and_webp_shards(shapes_tiny: Path, tmp_path: Path) -> None:
    pattern = write_img2dataset_shards(shapes_tiny, tmp_path / "shards", formats=(("webp", "WEBP"), ("png", "PNG")))
    _assert_trained(_train_from_shards(pattern, tmp_path, "mixed", ["data.params.image_key=webp;png"]))


# ---------------------------------------------------------------------------------- alignkit's shards


def test_alignkit_shards_hold_no_local_path_and_train(shapes_tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "alignkit_shards"
    paths = write_shards(PairedImageTextCSV(str(shapes_tiny), image_size=32), out, max_count=PER_SHARD,
                         progress=False)
    for blob in [p.read_bytes() for p in paths] + [(out / "manifest.json").read_bytes()]:
        assert str(shapes_tiny).encode() not in blob and str(tmp_path).encode() not in blob
    manifest = json.loads((out / "manifest.json").read_text())
    assert "root" not in manifest["params"] and manifest["params"]["image_size"] == 32
    first = next(iter(wds.DataPipeline(wds.SimpleShardList([str(paths[0])]), wds.tarfile_to_samples())))
    assert json.loads(first["json"])["where"] == "pairs.csv row 1"
    samples = list(ShardedIterableDataset(shard_pattern(paths), PairedImageTextCSV.decoder(), shuffle=0))
    assert samples[0]["id"] == "images/train/000000.png" and samples[0]["label"] == 0
    _assert_trained(_train_from_shards(shard_pattern(paths), tmp_path, "own"))
