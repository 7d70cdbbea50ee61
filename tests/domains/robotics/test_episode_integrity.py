"""LeRobot episodes are checked against their own stretch of a shared video, and broken metadata is named (issue 20).

A v3.0 dataset concatenates many episodes in one mp4; episode ``e`` owns ``[from_timestamp, to_timestamp)``
of it. Rows past that stretch would silently read the next episode's frames. Also: RLDS ``.npz`` sources and
Voltron exports with broken or unsafe files.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alignkit.domains.robotics.episode import EpisodeError
from alignkit.domains.robotics.lerobot import LeRobotDataset, LeRobotSplit
from alignkit.domains.robotics.synthetic import write_synthetic_lerobot

LENGTH, FPS = 6, 10
VIDEO = "videos/observation.images.cam0/chunk-000/file-000.mp4"
EPISODES = "meta/episodes/chunk-000/file-000.parquet"
DATA = "data/chunk-000/file-000.parquet"


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Path:
    """Three 6-step episodes in one video file (frames 0-5, 6-11, 12-17), losslessly encoded."""
    return write_synthetic_lerobot(tmp_path_factory.mktemp("lerobot") / "ds", n=3, length=LENGTH, fps=FPS,
                                   codec="libx264rgb", image_size=16, state_dim=2, action_dim=2, tasks=2)


@pytest.fixture
def dataset(written: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(written, tmp_path / "ds"))


def edit_parquet(path: Path, edit) -> None:
    pq.write_table(edit(pq.read_table(path)), path)


def set_column(table: pa.Table, name: str, values) -> pa.Table:
    return table.set_column(table.column_names.index(name), name, pa.array(values, table.schema.field(name).type))


def test_intact_dataset_reads_each_episode_from_its_own_stretch(dataset: Path) -> None:
    ds = LeRobotDataset(dataset)
    assert ds.episode_indices == [0, 1, 2] and len(ds) == 3 * LENGTH
    assert [ep.videos["observation.images.cam0"][1].tolist() for ep in ds._episodes] == [
        list(range(0, 6)), list(range(6, 12)), list(range(12, 18))]


def test_rows_running_past_the_episodes_stretch_are_named(dataset: Path) -> None:
    """Episode 1 gains 3 rows (and its length says 9): today they read frames 12-14, episode 2's."""
    def longer(table: pa.Table) -> pa.Table:
        extra = table.filter(pa.array(table.column("episode_index").to_numpy() == 1)).slice(LENGTH - 3, 3)
        extra = set_column(extra, "frame_index", np.arange(LENGTH, LENGTH + 3))
        extra = set_column(extra, "timestamp", (np.arange(LENGTH, LENGTH + 3) / FPS).astype(np.float32))
        return pa.concat_tables([table, extra])

    edit_parquet(dataset / DATA, longer)
    edit_parquet(dataset / EPISODES, lambda t: set_column(t, "length", [LENGTH, LENGTH + 3, LENGTH]))
    with pytest.raises(EpisodeError) as err:
        LeRobotDataset(dataset)
    message = str(err.value)
    assert "episode 1 " in message and VIDEO in message
    assert "9 rows" in message and "hold 6 frames at 10 fps" in message and "0.600 s .. to_timestamp 1.200 s" in message
    ds = LeRobotDataset(dataset, skip_bad=True)
    assert ds.episode_indices == [0, 2] and "episode 1 " in ds.skipped[0][0] and "9 rows" in ds.skipped[0][1]


def test_stretch_shorter_than_the_rows_is_named(dataset: Path) -> None:
    """The metadata gives episode 1 only 0.3 s of the video: its last 3 rows would be episode 2's frames."""
    to = pq.read_table(dataset / EPISODES).column("videos/observation.images.cam0/to_timestamp").to_pylist()
    edit_parquet(dataset / EPISODES, lambda t: set_column(t, "videos/observation.images.cam0/to_timestamp",
                                                          [to[0], to[1] - 0.3, to[2]]))
    with pytest.raises(EpisodeError, match=r"episode 1 .*its rows do not fit its stretch of .*file-000\.mp4: 6 rows "
                                           r".*hold 3 frames at 10 fps; row 3 \(timestamp 0\.300 s\) is video frame 9, "
                                           r"outside 6\.\.8"):
        LeRobotDataset(dataset)


def test_timestamps_shifted_past_the_stretch_are_named(dataset: Path) -> None:
    def shifted(table: pa.Table) -> pa.Table:
        episode, ts = table.column("episode_index").to_numpy(), table.column("timestamp").to_numpy()
        return set_column(table, "timestamp", np.where(episode == 1, ts + 0.3, ts).astype(np.float32))

    edit_parquet(dataset / DATA, shifted)
    with pytest.raises(EpisodeError, match=r"episode 1 .*6 rows \(frame_index 0\.\.5, timestamps 0\.300\.\.0\.800 s\)"
                                           r".*row 3 \(timestamp 0\.600 s\) is video frame 12, outside 6\.\.11"):
        LeRobotDataset(dataset)


@pytest.mark.parametrize("name", [EPISODES, "meta/tasks.parquet"])
@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_metadata_parquet_is_named(dataset: Path, name: str, keep: float) -> None:
    path = dataset / name
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])
    with pytest.raises(ValueError, match=rf"{name}: not a readable parquet file \(Arrow\w*: .*\); it may be truncated"):
        LeRobotDataset(dataset)


def test_truncated_data_parquet_names_the_episodes_and_file(dataset: Path) -> None:
    path = dataset / DATA
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(EpisodeError, match=rf"episode 0 .*{DATA}: not a readable parquet file"):
        LeRobotDataset(dataset)
    assert LeRobotDataset(dataset, skip_bad=True).num_episodes == 0


@pytest.mark.parametrize("name", ["meta/info.json", "meta/stats.json"])
def test_broken_json_metadata_is_named(dataset: Path, name: str) -> None:
    path = dataset / name
    text = path.read_text()
    path.write_text(text[:len(text) // 2])
    with pytest.raises(ValueError, match=rf"{name}: not valid JSON at line \d+ column \d+"):
        LeRobotDataset(dataset)
    if name == "meta/info.json":
        with pytest.raises(ValueError, match=rf"{name}: not valid JSON"):
            LeRobotSplit(dataset)
    path.write_text("[1, 2]")  # JSON, but not the object the file holds
    with pytest.raises(ValueError, match=rf"{name}: (not LeRobot statistics|a JSON list, not an object)"):
        LeRobotDataset(dataset)


def as_v21(root: Path) -> None:
    """Relabel the dataset v2.1 and give it the v2.1 jsonl metadata (the errors come before any data is read)."""
    info = json.loads((root / "meta/info.json").read_text())
    (root / "meta/info.json").write_text(json.dumps({**info, "codebase_version": "v2.1"}))
    (root / "meta/tasks.jsonl").write_text('{"task_index": 0, "task": "task 0"}\n{"task_index": 1, "task": "task 1"}\n')
    (root / "meta/episodes.jsonl").write_text("".join(json.dumps({"episode_index": e, "tasks": ["task 0"],
                                                                  "length": LENGTH}) + "\n" for e in range(3)))


@pytest.mark.parametrize("name", ["meta/tasks.jsonl", "meta/episodes.jsonl", "meta/episodes_stats.jsonl"])
def test_broken_v21_jsonl_is_named_with_its_line(dataset: Path, name: str) -> None:
    as_v21(dataset)
    if name.endswith("episodes_stats.jsonl"):
        (dataset / "meta/stats.json").unlink()
        (dataset / name).write_text('{"episode_index": 0, "stats": {}}\n')
    path = dataset / name
    path.write_text(path.read_text() + '{"episode_index": 1, "tas')  # a last line cut short
    with pytest.raises(ValueError, match=rf"{name}: line \d+ is not valid JSON .*truncated"):
        LeRobotDataset(dataset)


# ---------------------------------------------------------------------------- RLDS npz and Voltron weights

NPZ = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "robotics" / "bridge_debug" / \
    "bridge_debug_train.npz"


@pytest.mark.skipif(not NPZ.is_file(), reason=f"sample data missing: {NPZ}")
def test_rlds_npz_object_arrays_are_refused_and_truncation_named(tmp_path: Path) -> None:
    from alignkit.domains.robotics.rlds import read_rlds_episodes

    assert len(list(read_rlds_episodes(NPZ))) == 25  # the real sample (str arrays, no pickle) still reads
    with np.load(NPZ) as data:
        arrays = {k: data[k][:2] for k in data.files}
    np.savez(tmp_path / "objects.npz", **{**arrays, "language_instruction": np.array(["a", None], dtype=object)})
    with pytest.raises(ValueError, match=r"objects\.npz: array 'language_instruction' holds Python objects .*"
                                         r"refused"):
        list(read_rlds_episodes(tmp_path / "objects.npz"))
    np.savez(tmp_path / "good.npz", **arrays)
    (tmp_path / "cut.npz").write_bytes((tmp_path / "good.npz").read_bytes()[:5000])
    with pytest.raises(ValueError, match=r"cut\.npz: not a readable \.npz archive"):
        list(read_rlds_episodes(tmp_path / "cut.npz"))


def test_voltron_export_with_broken_files_is_named(tmp_path: Path) -> None:
    import torch

    from alignkit.domains.robotics.models.voltron import VoltronEncoder, load_voltron_encoder

    torch.manual_seed(0)
    folder = VoltronEncoder(img_size=16, patch_size=4, width=32, depth=1, heads=2, num_frames=1).export(tmp_path / "v")
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match=r"model\.safetensors: truncated safetensors file"):
        load_voltron_encoder(str(folder))
    torch.save({"w": torch.ones(2)}, weights)
    with pytest.raises(ValueError, match=r"model\.safetensors: not a safetensors file: the file is a zip archive"):
        load_voltron_encoder(str(folder))
    text = (folder / "config.json").read_text()
    (folder / "config.json").write_text(text[:len(text) // 2])
    with pytest.raises(ValueError, match=r"config\.json: not valid JSON at line \d+"):
        load_voltron_encoder(str(folder))
