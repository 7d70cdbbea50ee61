"""The shared data layer: paired-csv dataset, collation, hard-negative batching, shards, DataModule."""
from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path
from typing import Any, Dict, List

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from alignkit.core.collate import collate_samples
from alignkit.core.datamodule import AlignmentDataModule
from alignkit.core.paired import build_decoder
from alignkit.core.paired_csv import PairedImageTextCSV
from alignkit.core.registry import DATASETS, ConfigError
from alignkit.core.samplers import GroupedBatchSampler
from alignkit.core.shards import ShardedIterableDataset, read_manifest, shard_pattern, write_shards

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0)}
NAMES = list(COLOURS)
SIDE = 16  # image side in pixels; the square covers rows 4..11 and the left or right half


def item_spec(i: int) -> Dict[str, Any]:
    """Item i of the generated folder: a coloured square on the left or right of a black 16x16 image."""
    label = i % 4
    side = ("left", "right")[(i // 4) % 2]
    split = "train" if i < 24 else "val" if i < 32 else "test"
    return {"path": f"img/{i:03d}.png", "caption": f"a {NAMES[label]} square on the {side}", "label": label,
            "split": split, "side": side, "study": f"S{i // 2:02d}"}


def square(label: int, side: str) -> np.ndarray:
    """The hand-written image of an item, uint8 (H, W, 3)."""
    img = np.zeros((SIDE, SIDE, 3), dtype=np.uint8)
    cols = slice(0, 8) if side == "left" else slice(8, 16)
    img[4:12, cols] = COLOURS[NAMES[label]]
    return img


def make_folder(root: Path, n: int = 40) -> Path:
    """A paired-csv folder: ``img/*.png``, ``pairs.csv`` (path, caption, label, split, side, study), classes.txt."""
    (root / "img").mkdir(parents=True)
    specs = [item_spec(i) for i in range(n)]
    for s in specs:
        Image.fromarray(square(s["label"], s["side"])).save(root / s["path"])
    write_csv(root, specs)
    (root / "classes.txt").write_text("\n".join(NAMES) + "\n")
    return root


def write_csv(root: Path, specs: List[Dict[str, Any]]) -> None:
    with open(root / "pairs.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(specs[0]))
        writer.writeheader()
        writer.writerows(specs)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folder(tmp_path_factory.mktemp("pairs"))


def params(root: Path, **extra: Any) -> Dict[str, Any]:
    return {"root": str(root), "image_size": SIDE, "group_column": "study", **extra}


def as_tuples(samples: List[Dict[str, Any]]) -> List[tuple]:
    return sorted((s["id"], s["text"], s["label"], s["group"], s["image"]) for s in samples)


def assert_same_samples(got: List[Dict[str, Any]], want: List[Dict[str, Any]]) -> None:
    got_t, want_t = as_tuples(got), as_tuples(want)
    assert [t[:4] for t in got_t] == [t[:4] for t in want_t]
    for g, w in zip(got_t, want_t):
        assert torch.equal(g[4], w[4]), g[0]


# ------------------------------------------------------------------------------------------- dataset


def test_sample_matches_hand_written_reference(folder: Path) -> None:
    ds = DATASETS.build("paired-csv", **params(folder))
    assert len(ds) == 24 and ds.class_names == NAMES
    sample = ds[5]  # item 5: green (label 1), right side, study S02
    assert set(sample) == {"image", "text", "label", "id", "group"}
    assert sample["text"] == "a green square on the right" and sample["label"] == 1
    assert sample["id"] == "img/005.png" and sample["group"] == 2  # sorted studies S00.. -> index 2
    want = torch.from_numpy(square(1, "right")).permute(2, 0, 1).float() / 255 * 2 - 1  # (x - 0.5) / 0.5
    assert sample["image"].dtype == torch.float32 and torch.equal(sample["image"], want)
    assert len(DATASETS.build("paired-csv", **params(folder, split="val"))) == 8
    assert len(PairedImageTextCSV(str(folder), split_column=None)) == 40


def test_grey_and_resize_and_normalisation(folder: Path) -> None:
    ds = PairedImageTextCSV(str(folder), channels=1, image_size=SIDE, mean=[0.25], std=[0.5])
    image = ds[0]["image"]  # red square: PIL grey = 255 * 299/1000 -> 76
    assert image.shape == (1, SIDE, SIDE)
    assert image[0, 6, 2].item() == pytest.approx((76 / 255 - 0.25) / 0.5, abs=1e-6)
    assert image[0, 0, 0].item() == pytest.approx(-0.5)
    small = PairedImageTextCSV(str(folder), image_size=8)[0]["image"]
    assert small.shape == (3, 8, 8)
    with pytest.raises(ConfigError, match="mean needs 1 or 3 values"):
        PairedImageTextCSV(str(folder), mean=[0.1, 0.2])


def test_sixteen_bit_grey_keeps_its_range(tmp_path: Path) -> None:
    root = make_folder(tmp_path, n=4)
    pixels = np.zeros((SIDE, SIDE), dtype=np.uint16)
    pixels[0, 0], pixels[1, 1] = 65535, 1000  # 1000 would clip to 255 in an 8-bit conversion
    Image.fromarray(pixels).save(root / "img/000.png")
    image = PairedImageTextCSV(str(root), image_size=SIDE, mean=[0.0], std=[1.0])[0]["image"]
    assert image[:, 0, 0].tolist() == [1.0] * 3
    assert image[0, 1, 1].item() == pytest.approx(1000 / 65535)


def test_hard_negative_keys_and_dataset_params(folder: Path) -> None:
    ds = PairedImageTextCSV(str(folder), hard_negative_columns=["side"])
    assert ds.hard_negative_keys == [(item_spec(i)["side"],) for i in range(24)]
    assert PairedImageTextCSV(str(folder)).hard_negative_keys is None
    assert ds.params["hard_negative_columns"] == ["side"] and ds.params["root"] == str(folder)


# ---------------------------------------------------------------------------------------- collation


def test_collate_stacks_tensors_numbers_strings_and_nested_dicts() -> None:
    samples = [{"image": torch.full((2, 3), float(i)), "label": i, "w": 0.5 * i, "ok": i == 1, "text": f"t{i}",
                "arr": np.ones(2) * i, "obs": {"state": torch.tensor([i, i]), "name": "x"}, "none": None,
                "maybe": None if i == 0 else 3}
               for i in range(2)]
    batch = collate_samples(samples)
    assert torch.equal(batch["image"], torch.stack([torch.zeros(2, 3), torch.ones(2, 3)]))
    assert torch.equal(batch["label"], torch.tensor([0, 1])) and batch["label"].dtype == torch.int64
    assert batch["w"].dtype == torch.float32 and batch["w"].tolist() == [0.0, 0.5]
    assert batch["ok"].dtype == torch.bool and batch["ok"].tolist() == [False, True]
    assert batch["text"] == ["t0", "t1"]
    assert torch.equal(batch["arr"], torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=torch.float64))
    assert torch.equal(batch["obs"]["state"], torch.tensor([[0, 0], [1, 1]])) and batch["obs"]["name"] == ["x", "x"]
    assert batch["none"] is None and batch["maybe"] == [None, 3]


def test_collate_errors_name_the_key() -> None:
    with pytest.raises(ValueError, match=r"'obs.image'.*\(3, 4\).*\(3, 5\)"):
        collate_samples([{"obs": {"image": torch.zeros(3, 4)}}, {"obs": {"image": torch.zeros(3, 5)}}])
    with pytest.raises(ValueError, match=r"sample 1 lacks keys \['label'\]"):
        collate_samples([{"label": 1, "text": "a"}, {"text": "b"}])


# ---------------------------------------------------------------------------------------- bad input


def test_missing_column_names_csv_column_and_suggestion(folder: Path) -> None:
    with pytest.raises(ConfigError) as err:
        PairedImageTextCSV(str(folder), text_column="captoin")
    message = str(err.value)
    assert str(folder / "pairs.csv") in message and "'captoin'" in message and "did you mean 'caption'" in message
    with pytest.raises(ConfigError, match="hard_negative_columns\\[0\\].*did you mean 'side'"):
        PairedImageTextCSV(str(folder), hard_negative_columns=["sides"])


def corrupt(root: Path, case: str) -> None:
    """Break item 3 (CSV row 4, in the train split) in one of several ways."""
    if case == "missing file":
        (root / "img/003.png").unlink()
        return
    if case == "corrupt png":
        data = (root / "img/003.png").read_bytes()
        (root / "img/003.png").write_bytes(data[:40] + b"\x00" * 20)
        return
    specs = [item_spec(i) for i in range(40)]
    specs[3].update({"empty caption": {"caption": "  "}, "nan caption": {"caption": "NaN"},
                     "nan label": {"label": "nan"}, "bad label": {"label": "two"},
                     "label out of range": {"label": 7}, "empty group": {"study": "nan"}}[case])
    write_csv(root, specs)


ROW_CASES = {"missing file": "image file not found", "empty caption": "empty or NaN caption",
             "nan caption": "empty or NaN caption", "nan label": "NaN or empty label",
             "bad label": "not an integer", "label out of range": r"outside \[0, 4\)",
             "empty group": "empty or NaN group"}


@pytest.mark.parametrize("case", list(ROW_CASES))
def test_bad_rows_raise_with_file_and_row_or_are_skipped(tmp_path: Path, case: str,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    root = make_folder(tmp_path)
    corrupt(root, case)
    with pytest.raises(ValueError, match=ROW_CASES[case]) as err:
        PairedImageTextCSV(str(root), group_column="study")
    assert f"{root / 'pairs.csv'} row 4" in str(err.value) and str(root / "img/003.png") in str(err.value)
    with caplog.at_level(logging.WARNING, logger="alignkit.core.paired_csv"):
        ds = PairedImageTextCSV(str(root), group_column="study", skip_bad=True)
    assert len(ds) == 23 and "img/003.png" not in {ds[i]["id"] for i in range(len(ds))}
    assert len(ds.skipped) == 1 and "row 4" in ds.skipped[0][0] and "img/003.png" in ds.skipped[0][0]
    assert "skipped 1 of 24 rows" in caplog.text


def test_corrupt_image_raises_when_read_or_is_skipped_when_indexed(tmp_path: Path) -> None:
    root = make_folder(tmp_path)
    corrupt(root, "corrupt png")
    ds = PairedImageTextCSV(str(root))  # bytes are only decoded when read
    assert len(ds) == 24
    ds[2]
    with pytest.raises(ValueError, match=r"cannot decode image 'img/003.png' \(.*pairs.csv row 4"):
        ds[3]
    skipping = PairedImageTextCSV(str(root), skip_bad=True)
    assert len(skipping) == 23 and "corrupt image" in skipping.skipped[0][1]


# ----------------------------------------------------------------------------------- hard negatives


def test_grouped_batches_are_blocks_sharing_keys_and_cover_every_item() -> None:
    keys = [k for k in "abcdef" for _ in range(8)]  # 6 keys x 8 items
    sampler = GroupedBatchSampler(keys, batch_size=8, items_per_group=4, seed=3, num_replicas=1, rank=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 6
    for batch in batches:
        assert len(batch) == 8
        for block in (batch[:4], batch[4:]):
            assert len({keys[i] for i in block}) == 1
    assert sorted(i for b in batches for i in b) == list(range(48))
    assert list(sampler) == batches  # deterministic for one epoch
    sampler.set_epoch(1)
    assert list(sampler) != batches
    assert sampler.sampler is sampler  # where Lightning calls set_epoch


def test_grouped_batches_put_leftovers_in_filler_blocks() -> None:
    keys = ["a"] * 6 + ["b"] * 4 + ["c", "d"]  # a: one block + 2 left over; c, d: too small
    sampler = GroupedBatchSampler(keys, batch_size=4, items_per_group=4, seed=0, num_replicas=1, rank=0)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(12))
    key_sets = sorted(sorted({keys[i] for i in b}) for b in batches)
    assert ["a"] in key_sets and ["b"] in key_sets and ["a", "c", "d"] in key_sets
    short = GroupedBatchSampler(keys, batch_size=8, items_per_group=4, drop_last=False, num_replicas=1, rank=0)
    assert [len(b) for b in short] == [8, 4] and len(short) == 2
    with pytest.raises(ConfigError, match="multiple of items_per_group"):
        GroupedBatchSampler(keys, batch_size=6, items_per_group=4)


def test_grouped_batches_shard_across_ranks() -> None:
    keys = [i // 4 for i in range(40)]  # 10 blocks of 4 -> 5 batches of 8
    ranks = [list(GroupedBatchSampler(keys, 8, 4, seed=1, num_replicas=2, rank=r)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 2  # 5 batches cut to 4
    seen = [i for batches in ranks for b in batches for i in b]
    assert len(seen) == len(set(seen)) == 32
    padded = [list(GroupedBatchSampler(keys, 8, 4, drop_last=False, num_replicas=2, rank=r)) for r in range(2)]
    assert [len(p) for p in padded] == [3, 3]
    assert {i for p in padded for b in p for i in b} == set(range(40))


# ------------------------------------------------------------------------------------------- shards


@pytest.fixture(scope="module")
def sharded(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    ds = PairedImageTextCSV(**params(folder))
    out = tmp_path_factory.mktemp("shards")
    paths = write_shards(ds, out, max_count=5, progress=False)
    return {"dataset": ds, "paths": paths, "out": out}


def test_write_shards_files_manifest_and_pattern(sharded: Dict[str, Any]) -> None:
    out, paths = sharded["out"], sharded["paths"]
    assert [p.name for p in paths] == [f"shard-{k:06d}.tar" for k in range(5)] and all(p.is_file() for p in paths)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dataset"] == "paired-csv" and manifest["count"] == 24
    assert manifest["params"]["image_size"] == SIDE and manifest["pattern"] == "shard-{000000..000004}.tar"
    assert shard_pattern(paths) == f"{out}/shard-{{000000..000004}}.tar"
    assert read_manifest(shard_pattern(paths)) == manifest
    with pytest.raises(ValueError, match="not consecutively numbered"):
        shard_pattern([paths[0], paths[2]])
    with pytest.raises(FileExistsError, match="already holds 5 shards"):
        write_shards(sharded["dataset"], out, progress=False)


def test_shards_give_the_folder_samples_exactly(sharded: Dict[str, Any]) -> None:
    ds = sharded["dataset"]
    stream = ShardedIterableDataset(shard_pattern(sharded["paths"]), build_decoder(type(ds), ds.params), shuffle=7)
    from_shards = list(stream)
    assert_same_samples(from_shards, [ds[i] for i in range(len(ds))])
    assert [s["id"] for s in from_shards] != sorted(s["id"] for s in from_shards)  # shuffled
    assert [s["id"] for s in stream] != [s["id"] for s in from_shards]  # a new order in the next epoch
    stream.set_epoch(0)
    assert [s["id"] for s in stream] == [s["id"] for s in from_shards]  # and the same order for the same epoch


def test_shards_split_over_workers_and_ranks_without_loss_or_duplicates(sharded: Dict[str, Any]) -> None:
    ds = sharded["dataset"]
    decode = build_decoder(type(ds), ds.params)
    pattern = shard_pattern(sharded["paths"])
    loader = DataLoader(ShardedIterableDataset(pattern, decode, shuffle=5), batch_size=4, num_workers=2,
                        collate_fn=collate_samples)
    ids = [i for batch in loader for i in batch["id"]]
    assert sorted(ids) == sorted(item_spec(i)["path"] for i in range(24))
    per_rank = [[s["id"] for s in ShardedIterableDataset(pattern, decode, num_replicas=2, rank=r)] for r in range(2)]
    assert not set(per_rank[0]) & set(per_rank[1]) and len(per_rank[0]) + len(per_rank[1]) == 24
    resampled = ShardedIterableDataset(pattern, decode, epoch_length=30, num_replicas=2, rank=1)
    assert len(list(resampled)) == 30


def test_shards_decode_without_the_folder(folder: Path, tmp_path: Path) -> None:
    root = tmp_path / "copy"
    shutil.copytree(folder, root)
    ds = PairedImageTextCSV(**params(root))
    want = [ds[i] for i in range(len(ds))]
    paths = write_shards(ds, tmp_path / "shards", max_count=10, progress=False)
    shutil.rmtree(root)
    dm = AlignmentDataModule("paired-csv", params(root), batch_size=4, shards=shard_pattern(paths),
                             val_split=None, test_split=None)
    got = [{"id": i, "text": t, "label": int(y), "group": int(g), "image": x} for batch in dm.train_dataloader()
           for i, t, y, g, x in zip(batch["id"], batch["text"], batch["label"], batch["group"], batch["image"])]
    assert_same_samples(got, want)


# --------------------------------------------------------------------------------------- DataModule


def test_datamodule_loaders_yield_collated_batches(folder: Path) -> None:
    dm = AlignmentDataModule("paired-csv", params(folder), batch_size=8, eval_batch_size=5, test_split="holdout")
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert len(batches) == 3
    assert batches[0]["image"].shape == (8, 3, SIDE, SIDE) and batches[0]["label"].dtype == torch.int64
    assert len(batches[0]["text"]) == 8 and batches[0]["group"].shape == (8,)
    assert sorted(i for b in batches for i in b["id"]) == sorted(item_spec(i)["path"] for i in range(24))
    val = list(dm.val_dataloader())
    assert [len(b["id"]) for b in val] == [5, 3] and val[0]["id"][0] == "img/024.png"
    assert dm.test_dataset is None and dm.test_dataloader() == []  # no rows in split "holdout"
    with pytest.raises(ConfigError, match="must not set 'split'"):
        AlignmentDataModule("paired-csv", params(folder, split="train"))
    with pytest.raises(ConfigError, match="did you mean 'image_size'"):
        AlignmentDataModule("paired-csv", params(folder, imagesize=8))
    with pytest.raises(ValueError, match="fewer than batch_size=64"):
        AlignmentDataModule("paired-csv", params(folder)).train_dataloader()


def test_datamodule_hard_negative_batches(folder: Path) -> None:
    dm = AlignmentDataModule("paired-csv", params(folder, hard_negative_columns=["side"]), batch_size=8,
                             hard_negative_batches=True, items_per_group=4)
    for batch in dm.train_dataloader():
        for block in (batch["text"][:4], batch["text"][4:]):
            assert len({t.split()[-1] for t in block}) == 1  # one side per block; colours differ
    with pytest.raises(ConfigError, match="hard_negative_columns"):
        AlignmentDataModule("paired-csv", params(folder), batch_size=8, hard_negative_batches=True).train_dataloader()


class Recorder(L.LightningModule):
    """Records the images and ids it is given in training (per epoch) and validation."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.train_images: List[torch.Tensor] = []
        self.train_ids: Dict[int, List[str]] = {}
        self.val_images: List[torch.Tensor] = []

    def training_step(self, batch: Dict[str, Any], batch_idx: int) -> torch.Tensor:
        self.train_images.append(batch["image"])
        self.train_ids.setdefault(self.current_epoch, []).extend(batch["id"])
        return self.weight * batch["image"].mean()

    def validation_step(self, batch: Dict[str, Any], batch_idx: int) -> None:
        self.val_images.append(batch["image"])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(dm: AlignmentDataModule, **trainer_args: Any) -> Recorder:
    model = Recorder()
    trainer = L.Trainer(**{"accelerator": "cpu", "devices": 1, "max_epochs": 1, "num_sanity_val_steps": 0,
                           "logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
                           "enable_model_summary": False, **trainer_args})
    trainer.fit(model, datamodule=dm)
    return model


def test_batch_transforms_run_after_transfer_on_training_batches(folder: Path) -> None:
    def set_to_seven(batch: Dict[str, Any]) -> Dict[str, Any]:
        return {**batch, "image": torch.full_like(batch["image"], 7.0)}

    dm = AlignmentDataModule("paired-csv", params(folder), batch_size=8, batch_transforms=[set_to_seven])
    model = fit(dm, limit_train_batches=2, limit_val_batches=1)
    assert len(model.train_images) == 2 and all(bool((x == 7).all()) for x in model.train_images)
    assert len(model.val_images) == 1 and not bool((model.val_images[0] == 7).any())
    # a split without rows: no validation loop, training still runs
    model = fit(AlignmentDataModule("paired-csv", params(folder), batch_size=8, val_split="holdout"),
                limit_train_batches=2)
    assert len(model.train_images) == 2 and model.val_images == []


@pytest.mark.parametrize("hard_negatives", [False, True])
def test_trainer_reshuffles_every_epoch_and_covers_the_split(folder: Path, hard_negatives: bool) -> None:
    dm = AlignmentDataModule("paired-csv", params(folder, hard_negative_columns=["side"]), batch_size=8,
                             hard_negative_batches=hard_negatives, val_split=None)
    ids = fit(dm, max_epochs=2).train_ids
    everything = sorted(item_spec(i)["path"] for i in range(24))
    assert sorted(ids[0]) == sorted(ids[1]) == everything
    assert ids[0] != ids[1]  # Lightning's set_epoch reached the sampler
