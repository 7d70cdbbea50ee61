"""RLDS -> LeRobot: TFRecord framing and tf.train.Example parsed without TensorFlow, the npz twin, conversion."""
from __future__ import annotations

import struct
from collections import Counter
from pathlib import Path
from typing import Dict

import numpy as np
import pyarrow.parquet as pq
import pytest

from alignkit.domains.robotics.episode import EpisodeError
from alignkit.domains.robotics.lerobot import LeRobotDataset
from alignkit.domains.robotics.rlds import (BRIDGE_ACTION_NAMES, BRIDGE_STATE_NAMES, convert_rlds, crc32c,
                                            masked_crc32c, parse_example, read_rlds_episodes, read_tfrecord)

REPO = Path(__file__).resolve().parents[3]
SHARED = REPO.parent / "shared" / "data"
BRIDGE = SHARED / "robotics" / "bridge_debug"
TFDS = BRIDGE / "bridge_dataset" / "1.0.0"
TFRECORD = TFDS / "bridge_dataset-train.tfrecord-00000-of-00001"
NPZ = BRIDGE / "bridge_debug_train.npz"
CAMERAS = ("image_0", "image_1", "image_2")
TASK_COUNTS = {"put carrot on plate": 8, "put cup from counter or drying rack into sink": 6,
               "turn lever vertical to front": 6, "flip pot upright which is in sink": 5}  # the data README

pytestmark = pytest.mark.skipif(not NPZ.is_file(), reason=f"sample data missing: {BRIDGE}")


@pytest.fixture(scope="module")
def source() -> Dict[str, np.ndarray]:
    with np.load(NPZ) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Dict[str, Path]:
    root = tmp_path_factory.mktemp("bridge")
    return {"tfrecord": convert_rlds(TFDS, root / "from_tfrecord", codec="libx264rgb").root,
            "npz": convert_rlds(NPZ, root / "from_npz", codec="libx264rgb").root}


# -------------------------------------------------------------------------------------- wire format


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def field(number: int, payload: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def test_crc32c_matches_known_values():
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    assert crc32c(b"") == 0 and crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720 B.4 test vector
    header = TFRECORD.read_bytes()[:12]
    assert masked_crc32c(header[:8]) == struct.unpack("<I", header[8:])[0]


def test_parse_example_reads_packed_unpacked_and_negative_values():
    def entry(key: str, feature: bytes) -> bytes:
        return field(1, field(1, key.encode()) + field(2, feature))

    unpacked_floats = b"".join(varint(1 << 3 | 5) + struct.pack("<f", v) for v in (1.5, -2.0))
    packed_ints = field(1, varint(7) + varint(-3) + varint(2 ** 40))
    unpacked_ints = varint(1 << 3 | 0) + varint(-1)
    example = field(1, entry("a", field(1, field(1, b"x") + field(1, b"")))
                    + entry("b", field(2, field(1, struct.pack("<3f", 0.25, 3.0, -1.0))))
                    + entry("c", field(2, unpacked_floats))
                    + entry("d", field(3, packed_ints))
                    + entry("e", field(3, unpacked_ints)))
    parsed = parse_example(example)
    assert parsed["a"] == [b"x", b""]
    np.testing.assert_array_equal(parsed["b"], np.float32([0.25, 3.0, -1.0]))
    np.testing.assert_array_equal(parsed["c"], np.float32([1.5, -2.0]))
    assert parsed["d"].tolist() == [7, -3, 2 ** 40] and parsed["e"].tolist() == [-1]


def test_bad_tfrecords_fail_with_their_position(tmp_path):
    data = bytearray(TFRECORD.read_bytes())
    data[100] ^= 0xFF
    (tmp_path / "flipped.tfrecord").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="record 0 at byte 0 fails its CRC check"):
        list(read_tfrecord(tmp_path / "flipped.tfrecord"))
    (tmp_path / "cut.tfrecord").write_bytes(TFRECORD.read_bytes()[:50_000])
    with pytest.raises(ValueError, match="but the file ends first"):
        list(read_tfrecord(tmp_path / "cut.tfrecord"))


# ------------------------------------------------------------------------------------------ episodes


def test_tfrecord_and_npz_give_the_same_episodes(source):
    from_tfrecord = list(read_rlds_episodes(TFDS))
    from_npz = list(read_rlds_episodes(NPZ))
    assert len(from_tfrecord) == len(from_npz) == 25
    for k, (a, b) in enumerate(zip(from_tfrecord, from_npz)):
        assert a.task == b.task == source["language_instruction"][k]
        for cam in CAMERAS:
            np.testing.assert_array_equal(a.images[cam], source[cam][k])
            np.testing.assert_array_equal(b.images[cam], source[cam][k])
        for ep in (a, b):
            np.testing.assert_array_equal(ep.state, source["state"][k])
            np.testing.assert_array_equal(ep.action, source["action"][k])
            np.testing.assert_array_equal(ep.extras["reward"], source["reward"][k])
            np.testing.assert_array_equal(ep.extras["discount"], source["discount"][k])
        assert str(source["file_path"][k]) in a.source and "record" in a.source


def test_converted_dataset_keeps_every_frame_action_state_and_instruction(converted, source):
    ds = LeRobotDataset(converted["tfrecord"], window=2)
    assert ds.num_episodes == 25 and len(ds) == 250 and ds.cameras == list(CAMERAS)
    assert Counter(ds.episode(k).task for k in range(25)) == TASK_COUNTS
    for k in range(25):
        ep = ds.episode(k)
        assert ep.task == source["language_instruction"][k]
        for cam in CAMERAS:
            np.testing.assert_array_equal(ep.images[cam], source[cam][k])
        np.testing.assert_array_equal(ep.state, source["state"][k])
        np.testing.assert_array_equal(ep.action, source["action"][k])
        np.testing.assert_array_equal(ep.extras["reward"], source["reward"][k])
    assert ds.meta["fps"] == 5 and ds.meta["robot_type"] == "widowx"
    assert ds.meta["features"]["observation.state"]["names"] == BRIDGE_STATE_NAMES
    assert ds.meta["features"]["action"]["names"] == BRIDGE_ACTION_NAMES
    item = ds[13]  # episode 1, step 3
    assert item["observation.images.image_2"].shape == (2, 3, 64, 64) and item["pad_mask"].all()
    np.testing.assert_array_equal(item["action"].numpy(), source["action"][1][2:4])


def test_tfrecord_and_npz_conversions_agree(converted):
    a, b = (LeRobotDataset(converted[k]) for k in ("tfrecord", "npz"))
    assert a.tasks == b.tasks
    data = [pq.read_table(root / "data/chunk-000/file-000.parquet") for root in converted.values()]
    assert data[0].equals(data[1])
    for k in (0, 11, 24):
        ea, eb = a.episode(k), b.episode(k)
        for cam in CAMERAS:
            np.testing.assert_array_equal(ea.images[cam], eb.images[cam])


def test_bad_episodes_raise_or_are_skipped(tmp_path, source):
    arrays = {k: v[:3] for k, v in source.items()}
    arrays["language_instruction"] = np.array(["put carrot on plate", "", "put carrot on plate"])
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(EpisodeError, match="bad.npz episode 1 .*empty task instruction"):
        convert_rlds(tmp_path / "bad.npz", tmp_path / "strict")
    report = convert_rlds(tmp_path / "bad.npz", tmp_path / "lenient", skip_bad=True)
    assert (report.episodes, report.frames, report.tasks) == (2, 20, ["put carrot on plate"])
    assert len(report.skipped) == 1 and "bad.npz episode 1" in report.skipped[0][0]
    assert LeRobotDataset(report.root).num_episodes == 2


# ------------------------------------------------------------------------------------------ training on it


def test_gr1_action_loss_falls_on_the_converted_bridge_data(converted, tmp_path):
    """`alignkit train -c robotics/gr1_bridge.yaml` at a CPU size: 100 steps (13 epochs) on the 25 real episodes;
    the action loss (smooth L1 on standardised arm actions + 0.01 BCE gripper) ends far below where it started,
    and the action standardisation was taken from the dataset's stats."""
    import csv

    from alignkit.core.config import configs_dir, load_config
    from alignkit.core.runner import train
    small = ["model.params.image_encoder=voltron", "model.params.history=2", "model.params.width=64",
             "model.params.depth=2", "model.params.heads=4", "model.params.num_latents=4",
             "model.params.perceiver_depth=1", "model.params.perceiver_heads=2", "model.params.image_size=64",
             "model.params.frame_patch_size=16", "model.params.feature_cache=true", "data.params.window=2",
             "data.params.image_size=null", "data.params.holdout=null", "data.batch_size=32", "data.num_workers=0",
             "trainer.accelerator=cpu", "trainer.devices=1", "trainer.precision=32-true", "trainer.max_steps=100",
             "trainer.log_every_n_steps=1", "trainer.val_check_interval=null", "trainer.enable_progress_bar=false",
             "optim.lr=3e-3", "optim.warmup_steps=0", "num_threads=1"]
    cfg = load_config(configs_dir() / "robotics" / "gr1_bridge.yaml",
                      [f"data.params.root={converted['npz']}", f"out_dir={tmp_path}", *small])
    result = train(cfg)
    assert result["trainer"].global_step == 100
    model = result["model"]
    stats = LeRobotDataset(converted["npz"]).stats
    np.testing.assert_allclose(model.action_head.arm_std.numpy(), np.asarray(stats["action"]["std"])[:6], rtol=1e-5)
    with open(result["run_dir"] / "csv" / "metrics.csv") as f:
        losses = [float(r["train/action_loss"]) for r in csv.DictReader(f) if r.get("train/action_loss")]
    first, last = np.mean(losses[:3]), np.mean(losses[-5:])
    assert last < 0.6 * first, losses  # measured: 0.36 -> 0.20
