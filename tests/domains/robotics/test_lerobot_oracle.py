"""LeRobot v3.0 both ways.

Without lerobot: datasets laid out field for field as lerobot v0.4.x's writer lays them out (built here with
pyarrow/pandas: PNG images in the parquet, a PushT-style ``observation.image`` camera, scalar shape-(1,)
columns, several cameras and episodes per mp4) read by alignkit with the right frames; alignkit's writer gives
lerobot's column types, schema metadata, statistics (with quantiles), episode and task tables.

With lerobot (the oracle, skipped when absent): the real ``lerobot.datasets.lerobot_dataset.LeRobotDataset``
loads what ``collect babyai``/``metaworld``, ``convert rlds`` and ``write_synthetic_lerobot`` write, with the
same frames, actions, states and tasks as alignkit reads. Install it with
``pip install --no-deps --target /tmp/lerobot_oracle 'lerobot==0.4.*' 'datasets>=4,<5' dill multiprocess xxhash
httpx httpcore`` (or point ALIGNKIT_LEROBOT_ORACLE at such a folder).
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from alignkit.core.video import VideoWriter
from alignkit.domains.robotics.lerobot import LeRobotDataset, feature_stats
from alignkit.domains.robotics.lerobot.stats import QUANTILE_KEYS, sample_count
from alignkit.domains.robotics.models.inputs import camera_frames
from alignkit.domains.robotics.synthetic import write_synthetic_lerobot

HERE = Path(__file__).resolve().parent
ORACLE = Path(os.environ.get("ALIGNKIT_LEROBOT_ORACLE", "/tmp/lerobot_oracle"))
DEFAULTS = {"timestamp": "float32", "frame_index": "int64", "episode_index": "int64", "index": "int64",
            "task_index": "int64"}


# ------------------------------------------------------------------ a dataset as lerobot's writer lays it out
def _png(frame: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG")
    return buffer.getvalue()


def _hf_type(spec):
    if spec["dtype"] == "image":
        return {"_type": "Image"}
    if spec["shape"] == [1]:
        return {"dtype": spec["dtype"], "_type": "Value"}
    return {"feature": {"dtype": spec["dtype"], "_type": "Value"}, "length": spec["shape"][0], "_type": "List"}


def write_lerobot_layout(root: Path, fps: int, episodes, image_cameras=(), video_cameras=()):
    """Write ``episodes`` (dicts: task, state (T, 2), action (T,) for a shape-(1,) action, frames {key: (T, H, W,
    3)}) exactly as lerobot v0.4.x's LeRobotDataset.save_episode/finalize lay them out: one data file, one mp4
    per video camera holding every episode, meta/info.json, stats.json, tasks.parquet, episodes parquet."""
    shape = next(iter(episodes[0]["frames"].values())).shape[1:]
    features = {k: {"dtype": "image", "shape": list(shape), "names": ["height", "width", "channels"]}
                for k in image_cameras}
    features.update({k: {"dtype": "video", "shape": list(shape), "names": ["height", "width", "channels"],
                         "info": {"video.fps": fps, "video.codec": "h264", "video.pix_fmt": "gbrp"}}
                     for k in video_cameras})
    features["observation.state"] = {"dtype": "float32", "shape": [2], "names": None}
    features["action"] = {"dtype": "float32", "shape": [1], "names": None}
    features.update({k: {"dtype": d, "shape": [1], "names": None} for k, d in DEFAULTS.items()})
    tasks = list(dict.fromkeys(ep["task"] for ep in episodes))
    columns = {k: [] for k in features if features[k]["dtype"] != "video"}
    rows, total = [], 0
    videos = {k: VideoWriter(root / f"videos/{k}/chunk-000/file-000.mp4", fps, shape[0], shape[1],
                             codec="libx264rgb", gop=4) for k in video_cameras}
    for e, ep in enumerate(episodes):
        n = len(ep["state"])
        for k in image_cameras:
            columns[k] += [{"bytes": _png(f), "path": f"frame-{t:06d}.png"} for t, f in enumerate(ep["frames"][k])]
        columns["observation.state"] += list(ep["state"])
        columns["action"] += list(ep["action"])
        columns["timestamp"] += list(np.arange(n, dtype=np.float32) / fps)
        columns["frame_index"] += list(range(n))
        columns["episode_index"] += [e] * n
        columns["index"] += list(range(total, total + n))
        columns["task_index"] += [tasks.index(ep["task"])] * n
        row = {"episode_index": e, "tasks": [ep["task"]], "length": n, "data/chunk_index": 0, "data/file_index": 0,
               "dataset_from_index": total, "dataset_to_index": total + n}
        for k in video_cameras:
            start, stop = videos[k].append(ep["frames"][k])
            row.update({f"videos/{k}/chunk_index": 0, f"videos/{k}/file_index": 0,
                        f"videos/{k}/from_timestamp": start, f"videos/{k}/to_timestamp": stop})
        row.update({"stats/action/min": [float(np.min(ep["action"]))], "stats/action/count": [n],
                    "meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
        rows.append(row)
        total += n
    for writer in videos.values():
        writer.close()
    types = {"image": pa.struct([("bytes", pa.binary()), ("path", pa.string())])}
    table = pa.table({k: pa.array(v, type=types.get(features[k]["dtype"]) or (
        pa.list_(pa.float32(), 2) if k == "observation.state" else pa.from_numpy_dtype(np.dtype(features[k]["dtype"]))))
        for k, v in columns.items()})
    hf = {k: _hf_type(v) for k, v in features.items() if v["dtype"] != "video"}
    table = table.replace_schema_metadata({b"huggingface": json.dumps({"info": {"features": hf}}).encode()})
    (root / "data/chunk-000").mkdir(parents=True)
    pq.write_table(table, root / "data/chunk-000/file-000.parquet", compression="snappy")
    (root / "meta/episodes/chunk-000").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), root / "meta/episodes/chunk-000/file-000.parquet")
    pd.DataFrame({"task_index": range(len(tasks))}, index=tasks).to_parquet(root / "meta/tasks.parquet")
    actions = np.concatenate([ep["action"] for ep in episodes])
    (root / "meta/stats.json").write_text(json.dumps({"action": {
        "min": [float(actions.min())], "max": [float(actions.max())], "mean": [float(actions.mean())],
        "std": [float(actions.std())], "count": [len(actions)], "q01": [float(np.quantile(actions, 0.01))]}}))
    info = {"codebase_version": "v3.0", "robot_type": None, "total_episodes": len(episodes), "total_frames": total,
            "total_tasks": len(tasks), "chunks_size": 1000, "data_files_size_in_mb": 100,
            "video_files_size_in_mb": 200, "fps": fps, "splits": {"train": f"0:{len(episodes)}"},
            "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
            "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4" if video_cameras
            else None, "features": features}
    (root / "meta/info.json").write_text(json.dumps(info, indent=4))
    return root


def _episodes(keys, lengths=(5, 7, 4), size=(12, 16)):
    rng = np.random.default_rng(0)
    return [{"task": f"push the block {e % 2}", "state": rng.normal(size=(n, 2)).astype(np.float32),
             "action": rng.normal(size=n).astype(np.float32),
             "frames": {k: rng.integers(0, 256, (n, *size, 3), dtype=np.uint8) for k in keys}}
            for e, n in enumerate(lengths)]


def _check_items(ds: LeRobotDataset, episodes, keys):
    i = 0
    for ep in episodes:
        for t in range(len(ep["state"])):
            item = ds[i]
            assert item["task"] == ep["task"] and item["frame_index"] == t
            np.testing.assert_array_equal(item["observation.state"][-1].numpy(), ep["state"][t])
            assert item["action"].shape == (ds.window, 1) and item["action"][-1, 0].item() == ep["action"][t]
            for k in keys:
                expected = torch.from_numpy(ep["frames"][k][t]).permute(2, 0, 1).float() / 255.0
                torch.testing.assert_close(item[k][-1], expected, rtol=0, atol=0)
            i += 1
    assert i == len(ds)


def test_reads_images_stored_in_parquet_under_a_pusht_style_key(tmp_path):
    episodes = _episodes(["observation.image"])
    root = write_lerobot_layout(tmp_path / "pusht", 10, episodes, image_cameras=["observation.image"])
    ds = LeRobotDataset(root, window=2)
    assert ds.cameras == ["observation.image"] and ds.camera_keys == ["observation.image"]
    _check_items(ds, episodes, ["observation.image"])
    assert ds.stats["action"]["q01"].shape == (1,)
    batch = torch.utils.data.default_collate([ds[3], ds[9]])
    assert camera_frames(batch, ["observation.image"])["observation.image"].shape == (2, 2, 3, 12, 16)
    assert list(camera_frames(batch, None)) == ["observation.image"]
    cached = LeRobotDataset(root, cameras=["observation.image"], cache_frames=True)
    _check_items(cached, episodes, ["observation.image"])
    back = ds.episode(1)
    np.testing.assert_array_equal(back.images["observation.image"], episodes[1]["frames"]["observation.image"])
    assert back.action.shape == (7, 1)


def test_reads_several_cameras_and_several_episodes_per_video_file(tmp_path):
    keys = ["observation.images.wrist", "observation.image"]
    episodes = _episodes(keys)
    root = write_lerobot_layout(tmp_path / "two", 10, episodes, image_cameras=["observation.image"],
                                video_cameras=["observation.images.wrist"])
    ds = LeRobotDataset(root)
    assert sorted(ds.cameras) == ["observation.image", "wrist"]
    _check_items(ds, episodes, keys)
    only = LeRobotDataset(root, cameras=["observation.images.wrist"])
    assert only.camera_keys == ["observation.images.wrist"]
    batch = torch.utils.data.default_collate([ds[0], ds[6]])
    frames = camera_frames(batch, ["wrist", "observation.image"])
    assert list(frames) == ["wrist", "observation.image"]
    with pytest.raises(KeyError, match="lacks cameras \\['top'\\]"):
        camera_frames(batch, ["top"])


def test_writer_lays_out_columns_stats_episodes_and_tasks_as_lerobot(tmp_path):
    root = write_synthetic_lerobot(tmp_path / "syn", n=3, length=6, cameras=["view"], image_size=16, state_dim=3,
                                   action_dim=1)
    data = pq.read_table(root / "data/chunk-000/file-000.parquet")
    types = {f.name: f.type for f in data.schema}
    assert types["action"] == pa.float32() and types["timestamp"] == pa.float32()  # shape (1,) -> a scalar
    assert types["observation.state"] == pa.list_(pa.float32(), 3) and types["index"] == pa.int64()
    hf = json.loads(data.schema.metadata[b"huggingface"])["info"]["features"]
    assert hf["action"] == {"dtype": "float32", "_type": "Value"}
    assert hf["observation.state"] == {"feature": {"dtype": "float32", "_type": "Value"}, "length": 3, "_type": "List"}
    stats = json.loads((root / "meta/stats.json").read_text())
    for key in ("observation.images.view", "observation.state", "action", "timestamp", "index"):
        assert list(stats[key]) == ["min", "max", "mean", "std", "count", *QUANTILE_KEYS], key
    assert np.shape(stats["observation.images.view"]["q99"]) == (3, 1, 1) and stats["action"]["count"] == [18]
    episodes = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet")
    names = episodes.column_names
    assert names[:7] == ["episode_index", "tasks", "length", "data/chunk_index", "data/file_index",
                         "dataset_from_index", "dataset_to_index"]
    assert names[7:11] == [f"videos/observation.images.view/{c}" for c in
                           ("chunk_index", "file_index", "from_timestamp", "to_timestamp")]
    assert names[11:21] == [f"stats/observation.images.view/{s}" for s in
                            ("min", "max", "mean", "std", "count", *QUANTILE_KEYS)]
    assert "stats/action/q01" in names and names.index("meta/episodes/chunk_index") > names.index("stats/index/q99")
    tasks = pd.read_parquet(root / "meta/tasks.parquet")
    assert list(tasks["task_index"]) == list(range(len(tasks))) and tasks.index[0] == "task 0"
    ds = LeRobotDataset(root)
    assert ds[0]["action"].shape == (1, 1) and set(QUANTILE_KEYS) <= set(ds.stats["action"])


def test_quantiles_follow_the_histogram_estimate_and_images_are_subsampled():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2000, 2))
    stats = feature_stats(x)
    width, ranked = (x.max(0) - x.min(0)) / 5000, np.sort(x, axis=0)
    for key, q in zip(QUANTILE_KEYS, (0.01, 0.10, 0.50, 0.90, 0.99)):  # between the values ranked around q * n
        k = int(q * len(x))
        assert np.all(ranked[k - 2] - width <= stats[key]) and np.all(stats[key] <= ranked[k + 1] + width), key
    one = feature_stats(np.array([[3.0, 4.0]]))
    assert one["q01"].tolist() == [3.0, 4.0] and one["count"].tolist() == [1]
    frames = rng.integers(0, 256, (150, 8, 8, 3), dtype=np.uint8)
    image = feature_stats(frames, image=True)
    assert sample_count(150) == 100 and image["count"].tolist() == [100] and image["q50"].shape == (3, 1, 1)


# ------------------------------------------------------------------------------------------ the oracle
def _alignkit_written(kind: str, root: Path) -> Path:
    if kind == "synthetic":
        return write_synthetic_lerobot(root, n=3, length=6, cameras=["view", "top"], image_size=32, state_dim=3,
                                       action_dim=1)
    if kind == "rlds":
        from alignkit.domains.robotics.rlds import convert_rlds

        npz = HERE.parents[2].parent / "shared/data/robotics/bridge_debug/bridge_debug_train.npz"
        if not npz.is_file():
            pytest.skip(f"no {npz}")
        return convert_rlds(npz, root, codec="libx264rgb").root
    from alignkit.domains.robotics.collect import write_demonstrations

    spec = {"name": "babyai"} if kind == "babyai" else {"name": "metaworld", "tasks": "reach-v3", "max_steps": 30}
    write_demonstrations(spec, root, n=2, progress=False, success_only=kind == "babyai")
    return root


@pytest.mark.skipif(not (ORACLE / "lerobot" / "datasets" / "lerobot_dataset.py").is_file(),
                    reason=f"no lerobot oracle at {ORACLE}")
@pytest.mark.parametrize("kind", ["synthetic", "babyai", "metaworld", "rlds"])
def test_real_lerobot_loads_what_alignkit_writes(kind, tmp_path):
    root = _alignkit_written(kind, tmp_path / kind)
    out = tmp_path / "oracle.npz"
    run = subprocess.run([sys.executable, str(HERE / "lerobot_oracle_script.py"), str(ORACLE), str(root), str(out)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    theirs = dict(np.load(out))
    meta = json.loads(Path(str(out) + ".json").read_text())
    ours = LeRobotDataset(root)
    assert int(theirs["num_frames"]) == len(ours) and int(theirs["num_episodes"]) == ours.num_episodes
    items = [ours[i] for i in range(len(ours))]
    assert meta["tasks"] == [item["task"] for item in items]
    np.testing.assert_array_equal(theirs["action"].reshape(len(ours), -1),
                                  np.stack([item["action"][-1].numpy() for item in items]))
    np.testing.assert_array_equal(theirs["observation.state"].reshape(len(ours), -1),
                                  np.stack([item["observation.state"][-1].numpy() for item in items]))
    assert sorted(meta["camera_keys"]) == sorted(ours.camera_keys)
    for key in ours.camera_keys:
        mine = np.stack([item[key][-1].numpy() for item in items])
        np.testing.assert_allclose(theirs[f"camera/{key}"], mine, rtol=0, atol=1.5 / 255)
    for key in ("observation.state", "action"):
        for stat in ("min", "max", "mean", "std", "count", *QUANTILE_KEYS):
            np.testing.assert_allclose(theirs[f"stats/{key}/{stat}"], ours.stats[key][stat], rtol=1e-6)
