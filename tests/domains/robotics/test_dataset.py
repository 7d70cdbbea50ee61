"""LeRobot layout: v3.0 write/read round trips, the documented fields, a hand-written v2.1 folder,
windows, random access, DataLoader workers and bad episodes."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import DataLoader

from alignkit.core.collate import collate_samples
from alignkit.core.registry import ConfigError
from alignkit.core.video import VideoFrameReader
from alignkit.domains.robotics.episode import Episode, EpisodeError
from alignkit.domains.robotics.lerobot import LeRobotDataset, LeRobotWriter

H, W = 32, 48
TASKS = ["pick up the red block", "open the drawer", "pick up the red block", "open the drawer"]
LENGTHS = [7, 12, 5, 9]


def smooth_frames(length: int, seed: int) -> np.ndarray:
    """uint8 (T, H, W, 3): soft gradients with a blob moving across; smooth, so lossy codecs stay close."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    frames = []
    for t in range(length):
        cx, cy = 8 + 3 * t + seed, 10 + seed
        blob = 120 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 40.0)
        frames.append(np.stack([40 + 2 * xx + blob, 60 + 3 * yy, 150 - blob * 0.5 + seed * 5], axis=-1))
    return np.clip(np.stack(frames), 0, 255).astype(np.uint8)


def make_episodes() -> List[Episode]:
    rng = np.random.default_rng(0)
    return [Episode(images={"top": smooth_frames(n, k), "wrist": smooth_frames(n, k + 7)[:, ::-1].copy()},
                    state=rng.normal(size=(n, 5)), action=rng.normal(size=(n, 3)), task=task, success=k != 2,
                    source=f"synthetic {k}", extras={"reward": rng.normal(size=n).astype(np.float32)})
            for k, (n, task) in enumerate(zip(LENGTHS, TASKS))]


def write(root: Path, episodes: List[Episode], **kwargs) -> Path:
    with LeRobotWriter(root, fps=10, robot_type="sim", **kwargs) as writer:
        for ep in episodes:
            writer.add_episode(ep)
    return root


@pytest.fixture(scope="module")
def episodes() -> List[Episode]:
    return make_episodes()


@pytest.fixture(scope="module")
def lossless(tmp_path_factory, episodes) -> Path:
    return write(tmp_path_factory.mktemp("lossless") / "ds", episodes, codec="libx264rgb")


@pytest.fixture(scope="module")
def lossy(tmp_path_factory, episodes) -> Path:
    return write(tmp_path_factory.mktemp("lossy") / "ds", episodes)


def decode_all(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(container.streams.video[0])])


# ----------------------------------------------------------------------------------------- round trips


def test_lossless_round_trip_is_exact(lossless, episodes):
    ds = LeRobotDataset(lossless)
    assert ds.version == "v3.0" and ds.tasks == ["pick up the red block", "open the drawer"]
    assert len(ds) == sum(LENGTHS) and ds.episode_indices == [0, 1, 2, 3] and ds.cameras == ["top", "wrist"]
    for k, ep in enumerate(episodes):
        back = ds.episode(k)
        assert back.task == ep.task and back.success == ep.success and back.source == ep.source
        assert back.images.keys() == ep.images.keys()
        for cam in ep.images:
            np.testing.assert_array_equal(back.images[cam], ep.images[cam])
        np.testing.assert_array_equal(back.state, ep.state)
        np.testing.assert_array_equal(back.action, ep.action)
        np.testing.assert_array_equal(back.extras["reward"], ep.extras["reward"])


def test_default_codec_round_trip_is_close(lossy, lossless, episodes):
    ds = LeRobotDataset(lossy)
    for k, ep in enumerate(episodes):
        back = ds.episode(k)
        np.testing.assert_array_equal(back.state, ep.state)
        assert back.task == ep.task
        for cam in ep.images:
            err = np.abs(back.images[cam].astype(int) - ep.images[cam])
            assert err.mean() < 3.0 and np.percentile(err, 99) <= 16, (cam, err.mean(), err.max())  # yuv420p
    video = "videos/observation.images.top/chunk-000/file-000.mp4"
    assert (lossy / video).stat().st_size < (lossless / video).stat().st_size / 3


def test_layout_uses_lerobot_v3_fields(lossless, episodes):
    info = json.loads((lossless / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == 10 and info["robot_type"] == "sim"
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (4, sum(LENGTHS), 2)
    assert info["chunks_size"] == 1000 and info["splits"] == {"train": "0:4"}
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    top = info["features"]["observation.images.top"]
    assert top["dtype"] == "video" and top["shape"] == [H, W, 3] and top["names"] == ["height", "width", "channels"]
    assert top["info"]["video.codec"] == "h264" and top["info"]["video.fps"] == 10 and top["info"]["video.height"] == H
    assert info["features"]["observation.state"] == {"dtype": "float32", "shape": [5], "names": None, "fps": 10}
    assert info["features"]["index"]["dtype"] == "int64" and info["features"]["timestamp"]["dtype"] == "float32"

    data = pq.read_table(lossless / "data/chunk-000/file-000.parquet")
    assert set(data.column_names) == {"observation.state", "action", "reward", "timestamp", "frame_index",
                                      "episode_index", "index", "task_index"}
    assert data.column("index").to_pylist() == list(range(sum(LENGTHS)))
    np.testing.assert_allclose(data.column("timestamp").to_numpy()[:LENGTHS[0]], np.arange(LENGTHS[0]) / 10, atol=1e-6)
    assert data.column("task_index").to_pylist()[:LENGTHS[0] + 1] == [0] * LENGTHS[0] + [1]

    rows = pq.read_table(lossless / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [r["episode_index"] for r in rows] == [0, 1, 2, 3] and [r["length"] for r in rows] == LENGTHS
    assert rows[1]["tasks"] == ["open the drawer"]
    ends = np.cumsum(LENGTHS).tolist()
    assert [(r["dataset_from_index"], r["dataset_to_index"]) for r in rows] == list(zip([0] + ends[:-1], ends))
    assert [(r["data/chunk_index"], r["data/file_index"]) for r in rows] == [(0, 0)] * 4
    key = "videos/observation.images.wrist"
    assert [(r[f"{key}/from_timestamp"], r[f"{key}/to_timestamp"]) for r in rows] == \
        [(s / 10, e / 10) for s, e in zip([0] + ends[:-1], ends)]  # episodes concatenated in one mp4
    assert rows[0]["stats/action/count"] == [LENGTHS[0]]
    np.testing.assert_allclose(rows[0]["stats/action/mean"], episodes[0].action.mean(0), rtol=1e-6)

    import pandas as pd  # lerobot reads tasks.parquet with pandas: the task string is the index
    tasks = pd.read_parquet(lossless / "meta/tasks.parquet")
    assert list(tasks.index) == ["pick up the red block", "open the drawer"] and list(tasks["task_index"]) == [0, 1]

    stats = json.loads((lossless / "meta/stats.json").read_text())
    all_state = np.concatenate([ep.state for ep in episodes])
    np.testing.assert_allclose(stats["observation.state"]["mean"], all_state.mean(0), rtol=1e-5)
    np.testing.assert_allclose(stats["observation.state"]["std"], all_state.std(0), rtol=1e-5)
    np.testing.assert_allclose(stats["observation.state"]["min"], all_state.min(0), rtol=1e-6)
    assert stats["observation.state"]["count"] == [sum(LENGTHS)]
    pixels = np.concatenate([ep.images["top"] for ep in episodes]).reshape(-1, 3) / 255.0
    assert np.asarray(stats["observation.images.top"]["mean"]).shape == (3, 1, 1)
    np.testing.assert_allclose(np.asarray(stats["observation.images.top"]["mean"]).ravel(), pixels.mean(0), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(stats["observation.images.top"]["std"]).ravel(), pixels.std(0), rtol=1e-6)
    assert LeRobotDataset(lossless).stats["action"]["count"].tolist() == [sum(LENGTHS)]


def test_files_roll_over_at_their_size_limit(tmp_path, episodes):
    root = write(tmp_path / "ds", episodes, codec="libx264rgb", chunks_size=2, data_file_size_mb=1e-4,
                 video_file_size_mb=1e-4)
    assert len(list((root / "data").glob("chunk-*/file-*.parquet"))) == 4  # one episode per file at this limit
    assert (root / "data/chunk-001/file-001.parquet").is_file()
    assert (root / "videos/observation.images.top/chunk-001/file-000.mp4").is_file()
    ds = LeRobotDataset(root)
    for k, ep in enumerate(episodes):
        np.testing.assert_array_equal(ds.episode(k).images["wrist"], ep.images["wrist"])
        np.testing.assert_array_equal(ds.episode(k).action, ep.action)


# ------------------------------------------------------------------------------------------------ v2.1


def write_v21(root: Path, episodes: List[Episode]) -> None:
    """A v2.1 folder written by hand (pyarrow + PyAV ffv1), as lerobot 2.1 laid it out."""
    (root / "meta").mkdir(parents=True)
    tasks = list(dict.fromkeys(ep.task for ep in episodes))
    features = {"observation.images.top": {"dtype": "video", "shape": [H, W, 3],
                                           "names": ["height", "width", "channel"],
                                           "info": {"video.fps": 10, "video.codec": "ffv1"}},
                "observation.state": {"dtype": "float32", "shape": [5], "names": None},
                "action": {"dtype": "float32", "shape": [3], "names": None},
                **{k: {"dtype": d, "shape": [1], "names": None} for k, d in
                   [("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"),
                    ("index", "int64"), ("task_index", "int64")]}}
    info = {"codebase_version": "v2.1", "robot_type": "unknown", "total_episodes": len(episodes),
            "total_frames": sum(ep.length for ep in episodes), "total_tasks": len(tasks), "total_videos": len(episodes),
            "total_chunks": 1, "chunks_size": 1000, "fps": 10, "splits": {"train": f"0:{len(episodes)}"},
            "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
            "video_path": "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4",
            "features": features}
    (root / "meta/info.json").write_text(json.dumps(info))
    (root / "meta/tasks.jsonl").write_text("".join(json.dumps({"task_index": i, "task": t}) + "\n"
                                                   for i, t in enumerate(tasks)))
    (root / "meta/episodes.jsonl").write_text("".join(json.dumps({"episode_index": e, "tasks": [ep.task],
                                                                  "length": ep.length}) + "\n"
                                                      for e, ep in enumerate(episodes)))
    (root / "meta/episodes_stats.jsonl").write_text("".join(json.dumps(
        {"episode_index": e, "stats": {"action": {"min": ep.action.min(0).tolist(), "max": ep.action.max(0).tolist(),
                                                  "mean": ep.action.mean(0).tolist(), "std": ep.action.std(0).tolist(),
                                                  "count": [ep.length]}}}) + "\n" for e, ep in enumerate(episodes)))
    start = 0
    for e, ep in enumerate(episodes):
        n = ep.length
        table = pa.table({"observation.state": pa.array(ep.state.tolist(), type=pa.list_(pa.float32())),
                          "action": pa.array(ep.action.tolist(), type=pa.list_(pa.float32())),
                          "timestamp": pa.array(np.arange(n) / 10, type=pa.float32()),
                          "frame_index": pa.array(np.arange(n)), "episode_index": pa.array(np.full(n, e)),
                          "index": pa.array(np.arange(start, start + n)),
                          "task_index": pa.array(np.full(n, tasks.index(ep.task)))})
        path = root / f"data/chunk-000/episode_{e:06d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
        video = root / f"videos/chunk-000/observation.images.top/episode_{e:06d}.mp4"
        video.parent.mkdir(parents=True, exist_ok=True)
        with av.open(str(video), "w") as container:
            stream = container.add_stream("ffv1", rate=10)
            stream.width, stream.height, stream.pix_fmt = W, H, "bgr0"
            for t, image in enumerate(ep.images["top"]):
                frame = av.VideoFrame.from_ndarray(image, format="rgb24")
                frame.pts = t
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
        start += n


def test_reads_a_handwritten_v21_folder(tmp_path, episodes):
    write_v21(tmp_path / "v21", episodes[:3])
    ds = LeRobotDataset(tmp_path / "v21", window=2)
    assert ds.version == "v2.1" and ds.tasks == ["pick up the red block", "open the drawer"]
    assert len(ds) == sum(LENGTHS[:3]) and ds.cameras == ["top"]
    for k, ep in enumerate(episodes[:3]):
        back = ds.episode(k)
        np.testing.assert_array_equal(back.images["top"], ep.images["top"])
        np.testing.assert_array_equal(back.state, ep.state)
        np.testing.assert_array_equal(back.action, ep.action)
        assert back.task == ep.task
    item = ds[LENGTHS[0] + 3]  # episode 1, frame 3
    assert item["episode_index"] == 1 and item["frame_index"] == 3 and item["task"] == "open the drawer"
    np.testing.assert_array_equal(item["action"].numpy(), episodes[1].action[2:4])
    expected = torch.from_numpy(episodes[1].images["top"][2:4]).permute(0, 3, 1, 2).float() / 255
    assert torch.equal(item["observation.images.top"], expected)
    assert ds.stats["action"]["count"].tolist() == [sum(LENGTHS[:3])]  # aggregated from episodes_stats.jsonl
    all_action = np.concatenate([ep.action for ep in episodes[:3]])
    np.testing.assert_allclose(ds.stats["action"]["std"], all_action.std(0), rtol=1e-5)


# ---------------------------------------------------------------------------------- windows and access


def test_windows_pad_the_history_with_the_first_frame(lossless, episodes):
    ds = LeRobotDataset(lossless, window=4)
    first = ds[LENGTHS[0]]  # episode 1, frame 0
    assert first["pad_mask"].tolist() == [False, False, False, True]
    assert (first["episode_index"], first["frame_index"], first["task_index"]) == (1, 0, 1)
    np.testing.assert_array_equal(first["observation.state"].numpy(), np.repeat(episodes[1].state[:1], 4, axis=0))
    frame0 = torch.from_numpy(episodes[1].images["top"][0]).permute(2, 0, 1).float() / 255
    assert all(torch.equal(img, frame0) for img in first["observation.images.top"])
    mid = ds[LENGTHS[0] + 5]
    assert mid["pad_mask"].all() and mid["frame_index"] == 5
    np.testing.assert_array_equal(mid["action"].numpy(), episodes[1].action[2:6])
    np.testing.assert_array_equal(mid["reward"].numpy(), episodes[1].extras["reward"][2:6])
    expected = torch.from_numpy(episodes[1].images["wrist"][2:6]).permute(0, 3, 1, 2).float() / 255
    assert torch.equal(mid["observation.images.wrist"], expected)
    second = ds[1]
    assert second["pad_mask"].tolist() == [False, False, True, True]

    small = LeRobotDataset(lossless, window=2, cameras=["observation.images.top"], image_size=16, episodes=[2, 3])
    item = small[0]
    assert small.episode_indices == [2, 3] and len(small) == LENGTHS[2] + LENGTHS[3]
    assert item["observation.images.top"].shape == (2, 3, 16, 16) and "observation.images.wrist" not in item
    assert item["episode_index"] == 2 and item["task"] == "pick up the red block"


def test_random_access_equals_sequential_decode(lossy):
    sequential = decode_all(lossy / "videos/observation.images.top/chunk-000/file-000.mp4")
    assert len(sequential) == sum(LENGTHS)
    ds = LeRobotDataset(lossy)
    order = np.random.default_rng(1).permutation(len(ds))
    for i in order:
        got = (ds[int(i)]["observation.images.top"][0].permute(1, 2, 0) * 255).round().byte().numpy()
        np.testing.assert_array_equal(got, sequential[i])
    reader = VideoFrameReader(lossy / "videos/observation.images.top/chunk-000/file-000.mp4", fps=10, keep=4)
    picks = [30, 2, 2, 17, 16, 31, 0, 32]
    np.testing.assert_array_equal(reader.read(picks), sequential[picks])
    np.testing.assert_array_equal(reader.read(range(len(sequential))), sequential)  # forward, past `keep`
    reader.close()


def test_cached_frames_equal_decoded_ones_and_are_decoded_once(lossy):
    plain, cached = LeRobotDataset(lossy, window=3), LeRobotDataset(lossy, window=3, cache_frames=True)
    order = np.random.default_rng(2).permutation(len(plain))
    for i in [*order, *order[:5]]:
        a, b = plain[int(i)], cached[int(i)]
        torch.testing.assert_close(a["observation.images.top"], b["observation.images.top"], rtol=0, atol=0)
    assert len(cached._frame_cache) == cached.num_episodes * len(cached.camera_keys)  # one decode per episode, camera
    cached._readers = None  # a second pass reads from memory only
    for i in order[:5]:
        torch.testing.assert_close(plain[int(i)]["observation.images.top"],
                                   cached[int(i)]["observation.images.top"], rtol=0, atol=0)


def test_dataloader_workers_give_the_same_items(lossless):
    ds = LeRobotDataset(lossless, window=3)
    direct = collate_samples([ds[i] for i in range(8)])  # opens decoders in this process first
    loader = DataLoader(torch.utils.data.Subset(ds, range(8)), batch_size=4, num_workers=2,
                        collate_fn=collate_samples, timeout=240)  # a hung worker fails; slow under load
    batches = list(loader)
    for key in ("observation.images.top", "observation.state", "pad_mask"):
        assert torch.equal(torch.cat([b[key] for b in batches]), direct[key])
    assert sum((b["task"] for b in batches), []) == direct["task"]


# ---------------------------------------------------------------------------------------- bad episodes


def rewrite_data(root: Path, edit) -> None:
    path = root / "data/chunk-000/file-000.parquet"
    pq.write_table(edit(pq.read_table(path)), path)


def drop_a_row(table: pa.Table) -> pa.Table:  # episode 1 loses its frame 4
    keep = np.ones(table.num_rows, dtype=bool)
    keep[LENGTHS[0] + 4] = False
    return table.filter(pa.array(keep))


def short_actions(table: pa.Table) -> pa.Table:  # episode 1's actions have 2 values instead of 3
    episode = table.column("episode_index").to_numpy()
    actions = [a[:2] if e == 1 else a for a, e in zip(table.column("action").to_pylist(), episode)]
    return table.set_column(table.column_names.index("action"), "action", pa.array(actions, pa.list_(pa.float32())))


def unknown_task(table: pa.Table) -> pa.Table:  # episode 1 points at task 7 of 2
    task = np.where(table.column("episode_index").to_numpy() == 1, 7, table.column("task_index").to_numpy())
    return table.set_column(table.column_names.index("task_index"), "task_index", pa.array(task))


def truncate_video(root: Path) -> None:  # the top camera's mp4 loses the last 3 frames (of episode 3)
    path = root / "videos/observation.images.top/chunk-000/file-000.mp4"
    frames = decode_all(path)[:-3]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264rgb", rate=10, options={"qp": "0"})
        stream.width, stream.height, stream.pix_fmt = W, H, "rgb24"
        for t, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = t
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


@pytest.mark.parametrize("damage, episode, reason", [
    (lambda root: rewrite_data(root, drop_a_row), 1, "missing frames"),
    (lambda root: rewrite_data(root, short_actions), 1, "column 'action' has a row of length 2"),
    (lambda root: rewrite_data(root, unknown_task), 1, "unknown task_index [7]"),
    (truncate_video, 3, "the video is shorter than its parquet"),
], ids=["missing-frames", "action-length", "unknown-task", "short-video"])
def test_bad_episodes_raise_or_are_skipped(tmp_path, episodes, damage, episode, reason):
    root = write(tmp_path / "ds", episodes, codec="libx264rgb")
    damage(root)
    with pytest.raises(EpisodeError) as err:
        LeRobotDataset(root)
    assert f"episode {episode} " in str(err.value) and reason in str(err.value) and "skip_bad" in str(err.value)
    ds = LeRobotDataset(root, skip_bad=True)
    assert len(ds.skipped) == 1 and f"episode {episode} " in ds.skipped[0][0] and reason in ds.skipped[0][1]
    assert ds.episode_indices == [e for e in range(4) if e != episode]
    assert len(ds) == sum(LENGTHS) - LENGTHS[episode]
    kept = [e for e in range(4) if e != episode]
    np.testing.assert_array_equal(ds.episode(len(kept) - 1).images["wrist"], episodes[kept[-1]].images["wrist"])


def test_writer_rejects_bad_input(tmp_path, episodes):
    with pytest.raises(ConfigError, match="did you mean 'libx264rgb'"):
        LeRobotWriter(tmp_path / "a", fps=10, codec="libx264rbg")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(FileExistsError, match="not an empty folder"):
        LeRobotWriter(tmp_path / "full", fps=10)
    writer = LeRobotWriter(tmp_path / "b", fps=10)
    writer.add_episode(episodes[0])
    other = Episode(images={"top": episodes[1].images["top"]}, state=episodes[1].state, action=episodes[1].action,
                    task="x", source="one camera")
    with pytest.raises(EpisodeError, match="one camera: features"):
        writer.add_episode(other)
    writer.finalize()
    assert len(LeRobotDataset(tmp_path / "b")) == LENGTHS[0]  # the rejected episode wrote nothing
    odd = Episode(images={"top": np.zeros((3, 7, 8, 3), np.uint8)}, state=np.zeros((3, 1)), action=np.zeros((3, 1)),
                  task="t", source="odd")
    with pytest.raises(EpisodeError, match="odd: camera 'top' frames are 7x8"):
        LeRobotWriter(tmp_path / "c", fps=10).add_episode(odd)
    with pytest.raises(ConfigError, match="has 2 names"):
        LeRobotWriter(tmp_path / "d", fps=10, features={"action": {"names": ["a", "b"]}}).add_episode(episodes[0])
    with pytest.raises(RuntimeError, match="boom"), LeRobotWriter(tmp_path / "e", fps=10) as failing:
        failing.add_episode(episodes[0])
        raise RuntimeError("boom")
    with pytest.raises(FileNotFoundError, match="no meta/info.json"):
        LeRobotDataset(tmp_path / "e")


def test_image_stats_equal_the_float_reference():
    from alignkit.domains.robotics.lerobot.stats import feature_stats

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (7, 12, 10, 3), dtype=np.uint8)
    frames[..., 2] = rng.integers(17, 40, (7, 12, 10))  # a channel that never reaches 0 or 255
    stats = feature_stats(frames, image=True)
    x = frames.reshape(7, -1, 3).astype(np.float64) / 255.0
    for key, ref in (("min", x.min((0, 1))), ("max", x.max((0, 1))), ("mean", x.mean((0, 1))),
                     ("std", x.std((0, 1)))):
        assert stats[key].shape == (3, 1, 1)
        np.testing.assert_allclose(stats[key].ravel(), ref, rtol=0, atol=1e-12)
    assert stats["count"].tolist() == [7]
