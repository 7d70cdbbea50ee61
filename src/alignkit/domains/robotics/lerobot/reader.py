"""Read a LeRobot dataset (codebase v3.0 or v2.1) as a map-style torch Dataset of history windows.

Sources (huggingface/lerobot): ``src/lerobot/datasets/lerobot_dataset.py`` (the episode metadata and the
from/to timestamps of episodes concatenated in one mp4) and ``v30/convert_dataset_v21_to_v30.py`` (the v2.1
layout). Frames are read by seeking to the keyframe before the wanted timestamp and decoding forward (never
the whole video) with :class:`alignkit.core.video.VideoFrameReader`, through a small per-process cache of
open decoders that is safe in DataLoader worker processes.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from alignkit.core.checkpoints import read_json
from alignkit.core.registry import ConfigError, did_you_mean
from alignkit.core.video import ReaderCache, VideoError, video_frame_count
from alignkit.domains.robotics.episode import Episode, EpisodeError
from alignkit.domains.robotics.lerobot.columns import check_image_column, column_values, decode_image_cells
from alignkit.domains.robotics.lerobot.layout import (ACTION, CAMERA_DTYPES, DEFAULT_CHUNK_SIZE, DEFAULT_FEATURES,
                                                      EPISODES_DIR,
                                                      INFO_PATH, LEGACY_EPISODES_PATH, LEGACY_EPISODES_STATS_PATH,
                                                      STATE, STATS_PATH, PathLike, camera_name, read_jsonl,
                                                      read_parquet, read_parquet_columns, read_tasks)
from alignkit.domains.robotics.lerobot.stats import Stats, aggregate_stats, stats_from_json

logger = logging.getLogger(__name__)


@dataclass
class _Episode:
    """One readable episode: its rows in the dataset's arrays and where its frames are in which videos."""

    episode_index: int
    length: int
    start: int  # first row in LeRobotDataset's concatenated arrays
    tasks: List[str]
    videos: Dict[str, Tuple[Path, np.ndarray]]  # video camera key -> (file, frame index in the file of each step)
    images: Dict[str, pa.Array]  # image camera key -> the episode's rows of its struct<bytes, path> column
    success: bool
    source: str


def check_stretch(video: Path, from_timestamp: float, to_timestamp: float, fps: float, frames: np.ndarray,
                  timestamps: np.ndarray) -> None:
    """EpisodeError unless an episode's rows fit its own stretch ``[from_timestamp, to_timestamp)`` of a shared
    video: its ``len(frames)`` rows within half a frame of ``(to - from) * fps``, and every row's video frame
    ``frames = rint((from + timestamp) * fps)`` in ``[rint(from * fps), rint(to * fps))``. Rows past the stretch
    would read the next episode's frames."""
    span = (to_timestamp - from_timestamp) * fps
    first, end = int(np.rint(from_timestamp * fps)), int(np.rint(to_timestamp * fps))
    outside = np.flatnonzero((frames < first) | (frames >= end))
    if abs(len(frames) - span) <= 0.5 and not len(outside):
        return
    where = (f"; row {int(outside[0])} (timestamp {float(timestamps[outside[0]]):.3f} s) is video frame "
             f"{int(frames[outside[0]])}, outside {first}..{end - 1}" if len(outside) else "")
    raise EpisodeError(f"its rows do not fit its stretch of {video}: {len(frames)} rows (frame_index 0.."
                       f"{len(frames) - 1}, timestamps {float(timestamps[0]):.3f}..{float(timestamps[-1]):.3f} s) "
                       f"but from_timestamp {from_timestamp:.3f} s .. to_timestamp {to_timestamp:.3f} s hold "
                       f"{span:g} frames at {fps:g} fps{where}; reading it would return another episode's frames")


class LeRobotDataset(Dataset):
    """A LeRobot dataset (v3.0 or v2.1, detected from ``meta/info.json``), map-style over frames.

    Item ``i`` is frame ``t`` of some episode with a history window of ``T = window`` steps
    ``t - T + 1 .. t``; steps before the episode start repeat its first frame and have
    ``pad_mask`` False:

    - each camera's feature key (``"observation.images.<camera>"``, or another key such as PushT's
      ``"observation.image"``): float Tensor ``(T, 3, H, W)`` in [0, 1] (resized to ``image_size``
      (int or (H, W)) if given). A camera is a feature of dtype ``"video"`` (mp4 frames, several episodes
      per file) or ``"image"`` (PNG frames in the data parquet, ``struct<bytes, path>``);
    - ``"observation.state"`` ``(T, S)``, ``"action"`` ``(T, A)``, each extra feature ``(T,)`` or
      ``(T, k)``: float32 Tensors;
    - ``"pad_mask"``: bool Tensor ``(T,)``;
    - ``"task"`` (str) and ``"task_index"``, ``"episode_index"``, ``"frame_index"`` (int) of frame ``t``.

    ``cameras`` selects cameras by name (``"top"``, ``"observation.images.top"`` or a full key such as
    ``"observation.image"``); ``episodes`` keeps
    only those ``episode_index`` values. Bad episodes (missing frames, state/action vectors of the wrong
    length, a video shorter than its parquet, rows running outside the episode's own stretch
    ``[from_timestamp, to_timestamp)`` of a shared v3.0 video, an unknown task index, an unreadable data
    file) raise :class:`EpisodeError` naming the episode, or with ``skip_bad=True`` are left out and listed in
    ``skipped`` as ``(where, reason)``. An unreadable metadata file (``meta/info.json``, ``stats.json``, the
    tasks, the episodes parquet or jsonl) raises ValueError naming it.
    A frame that cannot be decoded when an item is read raises :class:`EpisodeError` naming the video file.

    ``cache_frames`` keeps every episode's decoded frames in memory (uint8, ``frames * H * W * 3`` bytes per
    camera) after its first read, so later epochs decode nothing: for small datasets trained many epochs
    (random windows otherwise cost a video seek each).
    """

    def __init__(self, root: PathLike, window: int = 1, cameras: Optional[Sequence[str]] = None,
                 image_size: Optional[Union[int, Tuple[int, int]]] = None, skip_bad: bool = False,
                 episodes: Optional[Sequence[int]] = None, cache_frames: bool = False):
        self.root = Path(root)
        if window < 1:
            raise ConfigError(f"window must be at least 1, got {window}")
        self.window = int(window)
        self.image_size = (image_size, image_size) if isinstance(image_size, int) else image_size
        self.skip_bad = skip_bad
        self.skipped: List[Tuple[str, str]] = []
        info_path = self.root / INFO_PATH
        if not info_path.is_file():
            raise FileNotFoundError(f"{self.root} is not a LeRobot dataset: no {INFO_PATH} (a LeRobotWriter writes it "
                                    "in finalize())")
        self.meta: Dict[str, Any] = read_json(info_path)
        if not isinstance(self.meta, dict):
            raise ValueError(f"{info_path}: a JSON {type(self.meta).__name__}, not an object of dataset fields")
        self.version = str(self.meta.get("codebase_version", ""))
        if not (self.version.startswith("v3.") or self.version.startswith("v2.")):
            raise ValueError(f"{info_path}: codebase_version {self.version!r} is not supported (v2.x and v3.x are)")
        missing = [k for k in ("fps", "features", "data_path") if k not in self.meta]
        fps = self.meta.get("fps")
        if missing or not isinstance(self.meta["features"], dict) or not isinstance(fps, (int, float)) or fps <= 0:
            raise ValueError(f"{info_path}: needs fps (a positive number, got {fps!r}), features (an object) and "
                             f"data_path{'; missing ' + ', '.join(missing) if missing else ''}")
        self.fps = float(fps)
        features: Dict[str, Dict[str, Any]] = self.meta["features"]
        self.features = features
        all_cameras = [camera_name(k) for k, v in features.items() if v["dtype"] in CAMERA_DTYPES]
        self.cameras = list(all_cameras) if cameras is None else [self._camera(c, all_cameras) for c in cameras]
        self.camera_keys = [k for k, v in features.items()
                            if v["dtype"] in CAMERA_DTYPES and camera_name(k) in self.cameras]
        self.video_keys = [k for k in self.camera_keys if features[k]["dtype"] == "video"]
        self.extra_keys = [k for k, v in features.items() if k not in DEFAULT_FEATURES and k not in (STATE, ACTION)
                           and v["dtype"] not in ("video", "image", "string")]
        self.tasks = read_tasks(self.root, self.version)
        self.stats = self._read_stats()
        self._readers = ReaderCache()
        self.cache_frames = bool(cache_frames)
        self._frame_cache: Dict[Tuple[int, str], np.ndarray] = {}
        self._load(episodes)

    @staticmethod
    def _camera(name: str, known: List[str]) -> str:
        short = camera_name(name)
        if short not in known:
            raise ConfigError(f"unknown camera '{name}'{did_you_mean(short, known)}; the dataset has "
                              f"{', '.join(known)}")
        return short

    def _read_stats(self) -> Stats:
        path, legacy = self.root / STATS_PATH, self.root / LEGACY_EPISODES_STATS_PATH
        try:
            if path.is_file():
                return stats_from_json(read_json(path))
            if legacy.is_file():
                path = legacy
                return aggregate_stats([stats_from_json(r["stats"]) for r in read_jsonl(legacy)])
        except (KeyError, TypeError, AttributeError, IndexError) as exc:
            raise ValueError(f"{path}: not LeRobot statistics {{feature: {{min, max, mean, std, count}}}} "
                             f"({type(exc).__name__}: {exc})") from None
        return {}

    # indexing -------------------------------------------------------------------------------------
    def _episode_records(self) -> List[Dict[str, Any]]:
        """Per-episode metadata rows, each with ``data_file`` and ``videos`` {key: (file, from_timestamp,
        to_timestamp)} (v2.1: one video per episode, from 0, no to_timestamp)."""
        if self.version.startswith("v2"):
            chunks = int(self.meta.get("chunks_size", DEFAULT_CHUNK_SIZE))
            records = []
            for row in read_jsonl(self.root / LEGACY_EPISODES_PATH):
                e = int(row["episode_index"])
                fmt = {"episode_chunk": e // chunks, "episode_index": e}
                records.append({**row, "data_file": self.root / self.meta["data_path"].format(**fmt),
                                "videos": {k: (self.root / self.meta["video_path"].format(video_key=k, **fmt), 0.0,
                                               None) for k in self.video_keys}})
            return records
        files = sorted((self.root / EPISODES_DIR).glob("chunk-*/file-*.parquet"))
        if not files:
            raise FileNotFoundError(f"{self.root}: no episode metadata under {EPISODES_DIR}/")
        records = []
        for path in files:
            names = read_parquet_columns(path)
            needed = ["episode_index", "length", "data/chunk_index", "data/file_index"] + [
                f"videos/{k}/{c}" for k in self.video_keys
                for c in ("chunk_index", "file_index", "from_timestamp", "to_timestamp")]
            missing = [n for n in needed if n not in names]
            if missing:
                raise ValueError(f"{path}: episode metadata without the columns {missing}")
            table = read_parquet(path, columns=[n for n in names if not n.startswith("stats/")])
            for row in table.to_pylist():
                fmt = {"chunk_index": row["data/chunk_index"], "file_index": row["data/file_index"]}
                videos = {k: (self.root / self.meta["video_path"].format(
                    video_key=k, chunk_index=row[f"videos/{k}/chunk_index"], file_index=row[f"videos/{k}/file_index"]),
                    float(row[f"videos/{k}/from_timestamp"]), float(row[f"videos/{k}/to_timestamp"]))
                    for k in self.video_keys}
                records.append({**row, "data_file": self.root / self.meta["data_path"].format(**fmt), "videos": videos})
        return records

    def _load(self, selected: Optional[Sequence[int]]) -> None:
        records = sorted(self._episode_records(), key=lambda r: int(r["episode_index"]))
        if selected is not None:
            known = {int(r["episode_index"]) for r in records}
            unknown = sorted(set(int(e) for e in selected) - known)
            if unknown:
                raise ConfigError(f"{self.root}: episodes {unknown} do not exist (episode_index {min(known)}.."
                                  f"{max(known)})")
            keep = set(int(e) for e in selected)
            records = [r for r in records if int(r["episode_index"]) in keep]
        tables: Dict[Path, Tuple[pa.Table, Dict[int, np.ndarray]]] = {}
        frame_counts: Dict[Path, int] = {}
        arrays: Dict[str, List[np.ndarray]] = {}
        self._episodes: List[_Episode] = []
        start = 0
        for record in records:
            e = int(record["episode_index"])
            where = f"{self.root}: episode {e} ({record['data_file'].relative_to(self.root)})"
            try:
                columns, episode = self._check_episode(record, start, tables, frame_counts)
            except (EpisodeError, ValueError, OSError, KeyError) as exc:
                if not self.skip_bad:
                    raise EpisodeError(f"{where}: {exc}; fix or remove this episode, or pass skip_bad=True to leave "
                                       "it out") from None
                self.skipped.append((where, str(exc)))
                continue
            for k, v in columns.items():
                arrays.setdefault(k, []).append(v)
            self._episodes.append(episode)
            start += episode.length
        if self.skipped:
            logger.warning("LeRobotDataset: skipped %d of %d episodes of %s (skip_bad=True); first: %s",
                           len(self.skipped), len(records), self.root, "; ".join(r for _, r in self.skipped[:2]))
        self._arrays = {k: np.concatenate(v) for k, v in arrays.items()}
        self._ends = np.cumsum([ep.length for ep in self._episodes])

    def _check_episode(self, record: Mapping[str, Any], start: int,
                       tables: Dict[Path, Tuple[pa.Table, Dict[int, np.ndarray]]],
                       frame_counts: Dict[Path, int]) -> Tuple[Dict[str, np.ndarray], _Episode]:
        """The episode's columns and index entry, or EpisodeError/ValueError saying what is wrong with it."""
        e, length = int(record["episode_index"]), int(record["length"])
        path: Path = record["data_file"]
        if path not in tables:  # one contiguous table per file: slices and takes then cost what they return
            table = read_parquet(path).combine_chunks()
            episode_of_row = table.column("episode_index").to_numpy()
            order = np.argsort(episode_of_row, kind="stable")
            found, first, count = np.unique(episode_of_row[order], return_index=True, return_counts=True)
            tables[path] = table, {int(k): order[a:a + n] for k, a, n in zip(found, first, count)}
        table, rows_of_episode = tables[path]
        rows = rows_of_episode.get(e, np.zeros(0, dtype=np.int64))
        contiguous = len(rows) and rows[-1] - rows[0] + 1 == len(rows)
        part = table.slice(int(rows[0]), len(rows)) if contiguous else table.take(pa.array(rows))
        if len(rows) != length:
            raise EpisodeError(f"missing frames: {len(rows)} rows in the parquet file but the episode's length is "
                               f"{length}")
        frame_index = part.column("frame_index").to_numpy()
        gaps = np.flatnonzero(frame_index != np.arange(length))
        if len(gaps):
            raise EpisodeError(f"missing frames: frame_index {frame_index[gaps[0]]} at step {gaps[0]} (expected "
                               f"0..{length - 1} in order)")
        columns: Dict[str, np.ndarray] = {}
        for name in (STATE, ACTION, *self.extra_keys):
            if name in self.features:
                values = column_values(part.column(name), self.features[name]["shape"], name).astype(np.float32)
                columns[name] = values.reshape(length, -1) if name in (STATE, ACTION) else values
            else:
                columns[name] = np.zeros((length, 0), dtype=np.float32)
        task_index = part.column("task_index").to_numpy().astype(np.int64)
        unknown = sorted(set(task_index.tolist()) - set(range(len(self.tasks))))
        if unknown:
            raise EpisodeError(f"unknown task_index {unknown} (meta/tasks has {len(self.tasks)} tasks)")
        columns["task_index"] = task_index
        timestamps = part.column("timestamp").to_numpy().astype(np.float64)
        videos: Dict[str, Tuple[Path, np.ndarray]] = {}
        images = {key: check_image_column(part.column(key), key)
                  for key in self.camera_keys if key not in self.video_keys}
        for key in self.video_keys:
            video, from_timestamp, to_timestamp = record["videos"][key]
            if not video.is_file():
                raise EpisodeError(f"its video {video} does not exist")
            if video not in frame_counts:
                frame_counts[video] = video_frame_count(video)
            frames = np.rint((from_timestamp + timestamps) * self.fps).astype(np.int64)
            if to_timestamp is not None:
                check_stretch(video, from_timestamp, to_timestamp, self.fps, frames, timestamps)
            if frames.max() >= frame_counts[video]:
                raise EpisodeError(f"the video is shorter than its parquet: {video} has {frame_counts[video]} frames "
                                   f"but the episode's {length} steps need frames up to {int(frames.max())}")
            videos[key] = (video, frames)
        tasks = record.get("tasks") or [self.tasks[int(task_index[0])]]
        episode = _Episode(episode_index=e, length=length, start=start, tasks=list(tasks), videos=videos, images=images,
                           success=bool(record.get("success", True)),
                           source=str(record.get("source") or f"{self.root} episode {e}"))
        return columns, episode

    # access ---------------------------------------------------------------------------------------
    @property
    def episode_indices(self) -> List[int]:
        """``episode_index`` of each episode of this dataset, in order."""
        return [ep.episode_index for ep in self._episodes]

    @property
    def episode_lengths(self) -> List[int]:
        return [ep.length for ep in self._episodes]

    @property
    def num_episodes(self) -> int:
        return len(self._episodes)

    def __len__(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    def locate(self, i: int) -> Tuple[int, int]:
        """``(episode position, frame)`` of item ``i``."""
        if not 0 <= i < len(self):
            raise IndexError(f"item {i} is outside [0, {len(self)}) of {self.root}")
        e = int(np.searchsorted(self._ends, i, side="right"))
        return e, i - (int(self._ends[e - 1]) if e else 0)

    def frames(self, position: int, camera_key: str, steps: Sequence[int]) -> np.ndarray:
        """uint8 ``(len(steps), H, W, 3)``: the frames of ``camera_key`` at ``steps`` of the ``position``-th episode.

        :class:`EpisodeError` naming the video file when a frame cannot be decoded."""
        ep = self._episodes[position]
        if not self.cache_frames:
            return self._decode(ep, camera_key, np.asarray(steps))
        key = (position, camera_key)
        if key not in self._frame_cache:
            self._frame_cache[key] = self._decode(ep, camera_key, np.arange(ep.length))
        return self._frame_cache[key][np.asarray(steps)]

    def _decode(self, ep: _Episode, camera_key: str, steps: np.ndarray) -> np.ndarray:
        if camera_key in ep.images:  # PNG frames stored in the data parquet
            try:
                return decode_image_cells(ep.images[camera_key], steps, self.root, camera_key)
            except ValueError as exc:
                raise EpisodeError(f"{self.root}: episode {ep.episode_index}: {exc}") from None
        video, frame_of_step = ep.videos[camera_key]
        try:
            return self._readers.get(video, self.fps).read(frame_of_step[steps])
        except VideoError as exc:
            raise EpisodeError(str(exc)) from exc

    def _images(self, frames: np.ndarray) -> Tensor:
        images = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div_(255.0)
        if self.image_size is not None and tuple(images.shape[-2:]) != tuple(self.image_size):
            images = F.interpolate(images, size=tuple(self.image_size), mode="bilinear", align_corners=False,
                                   antialias=True)
        return images

    def __getitem__(self, i: int) -> Dict[str, Any]:
        position, t = self.locate(int(i))
        ep = self._episodes[position]
        steps = np.arange(t - self.window + 1, t + 1)
        pad_mask = steps >= 0
        steps = np.maximum(steps, 0)
        rows = ep.start + steps
        item: Dict[str, Any] = {key: self._images(self.frames(position, key, steps)) for key in self.camera_keys}
        for name in (STATE, ACTION, *self.extra_keys):
            item[name] = torch.from_numpy(self._arrays[name][rows])
        task_index = int(self._arrays["task_index"][ep.start + t])
        item.update({"pad_mask": torch.from_numpy(pad_mask), "task": self.tasks[task_index], "task_index": task_index,
                     "episode_index": ep.episode_index, "frame_index": t})
        return item

    def episode(self, position: int) -> Episode:
        """The ``position``-th episode of this dataset (``episode_indices[position]``) read back whole."""
        ep = self._episodes[position]
        rows = slice(ep.start, ep.start + ep.length)
        steps = np.arange(ep.length)
        images = {camera_name(key): self.frames(position, key, steps) for key in self.camera_keys}
        return Episode(images=images, state=self._arrays[STATE][rows], action=self._arrays[ACTION][rows],
                       task=ep.tasks[0], success=ep.success, source=ep.source,
                       extras={k: self._arrays[k][rows] for k in self.extra_keys})

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        state["_readers"] = ReaderCache(self._readers.max_open)  # open decoders stay in their process
        return state
