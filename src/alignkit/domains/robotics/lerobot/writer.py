"""Write :class:`~alignkit.domains.robotics.episode.Episode` s as a LeRobot v3.0 dataset.

Sources (huggingface/lerobot): ``src/lerobot/datasets/lerobot_dataset.py`` (``save_episode``,
``_save_episode_data``, ``_save_episode_video``: the episode metadata columns and the from/to timestamps of
episodes concatenated in one mp4) and ``video_utils.py`` (``get_video_info``, ``encode_video_frames``). The
layout is described in :mod:`~alignkit.domains.robotics.lerobot.layout`.

Video codecs (``codec=``, :data:`alignkit.core.video.VIDEO_CODECS`): ``"libx264"`` (H.264, yuv420p, ``crf``;
the default: small, plays everywhere, near-lossless at crf 18), ``"libsvtav1"`` (AV1, lerobot's own default),
and two exactly lossless choices for round-trip tests and archives: ``"libx264rgb"`` (H.264 in RGB with
``qp 0``) and ``"ffv1"``. Every codec is written with a short GOP (``gop`` frames between keyframes) so a
random frame costs one seek plus at most ``gop - 1`` decoded frames.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from alignkit.core.registry import ConfigError, did_you_mean
from alignkit.core.video import VIDEO_CODECS, VideoWriter, check_codec, video_feature_info
from alignkit.domains.robotics.episode import Episode, EpisodeError
from alignkit.domains.robotics.lerobot.layout import (ACTION, CODEBASE_VERSION, DATA_PATH, DEFAULT_CHUNK_SIZE,
                                                      DEFAULT_DATA_FILE_SIZE_IN_MB, DEFAULT_FEATURES,
                                                      DEFAULT_VIDEO_FILE_SIZE_IN_MB, EPISODES_PATH, IMAGES_PREFIX,
                                                      INFO_PATH, STATE, STATS_PATH, TASKS_PATH, VIDEO_PATH, PathLike,
                                                      next_file, would_overflow, write_tasks)
from alignkit.domains.robotics.lerobot.columns import huggingface_schema_metadata, to_column
from alignkit.domains.robotics.lerobot.stats import (Stats, aggregate_stats, feature_stats, stats_columns,
                                                     stats_to_json)


class LeRobotWriter:
    """Writes :class:`~alignkit.domains.robotics.episode.Episode` s as a LeRobot v3.0 dataset under ``root``.

    ``root`` must not exist or be empty. ``features`` adds metadata to the inferred features, e.g.
    ``{"observation.state": {"names": ["x", "y", "z", ...]}}`` (a ``dtype``/``shape`` given there must
    match the episodes). Features: ``observation.images.<camera>`` (video, ``[H, W, 3]``),
    ``observation.state`` and ``action`` (float32 ``[S]``/``[A]``), one float32 feature per episode
    extra, and lerobot's ``timestamp``/``frame_index``/``episode_index``/``index``/``task_index``; their
    parquet columns have the types lerobot's loader casts to (:mod:`~alignkit.domains.robotics.lerobot.columns`:
    a shape-``[1]`` feature is a scalar column) and the statistics carry lerobot's quantiles
    (:mod:`~alignkit.domains.robotics.lerobot.stats`).
    Every episode must have the cameras and shapes of the first. ``codec``/``crf``/``gop``: see the
    module docstring. Data and video files roll over to the next file when they would pass
    ``data_file_size_mb`` / ``video_file_size_mb``. Use as a context manager, or call :meth:`finalize`
    (which writes ``meta/``).
    """

    def __init__(self, root: PathLike, fps: int, robot_type: str = "",
                 features: Optional[Mapping[str, Mapping[str, Any]]] = None, codec: str = "libx264", crf: int = 18,
                 gop: int = 8, chunks_size: int = DEFAULT_CHUNK_SIZE,
                 data_file_size_mb: float = DEFAULT_DATA_FILE_SIZE_IN_MB,
                 video_file_size_mb: float = DEFAULT_VIDEO_FILE_SIZE_IN_MB):
        self.root = Path(root)
        if self.root.exists() and (not self.root.is_dir() or any(self.root.iterdir())):
            raise FileExistsError(f"{self.root} exists and is not an empty folder; write the dataset to a new folder "
                                  "or delete this one")
        check_codec(codec)
        if int(fps) != fps or fps <= 0:
            raise ConfigError(f"fps must be a positive integer (meta/info.json stores an int), got {fps}")
        if gop < 1 or chunks_size < 1 or data_file_size_mb <= 0 or video_file_size_mb <= 0:
            raise ConfigError(f"gop ({gop}), chunks_size ({chunks_size}) and the file size limits "
                              f"({data_file_size_mb}, {video_file_size_mb} MB) must be positive")
        self.fps = int(fps)
        self.robot_type = robot_type
        self.codec, self.crf, self.gop = codec, crf, gop
        self.chunks_size = chunks_size
        self.data_file_size_mb, self.video_file_size_mb = data_file_size_mb, video_file_size_mb
        self._extra_metadata = {k: dict(v) for k, v in (features or {}).items()}
        self.features: Optional[Dict[str, Dict[str, Any]]] = None
        self.tasks: Dict[str, int] = {}
        self._episodes: List[Dict[str, Any]] = []
        self._episode_stats: List[Stats] = []
        self._total_frames = 0
        self._data_file = (0, 0)
        self._data_writer: Optional[pq.ParquetWriter] = None
        self._data_frames = 0  # frames in the open data file
        self._videos: Dict[str, VideoWriter] = {}
        self._video_files: Dict[str, Tuple[int, int]] = {}
        self._finalized = False

    # features --------------------------------------------------------------------------------------
    def _infer_features(self, ep: Episode) -> Dict[str, Dict[str, Any]]:
        features: Dict[str, Dict[str, Any]] = {}
        for cam in ep.cameras:
            _, h, w, _ = ep.images[cam].shape
            if not VIDEO_CODECS[self.codec][1] and (h % 2 or w % 2):
                raise EpisodeError(f"{ep.source or 'episode'}: camera {cam!r} frames are {h}x{w}; {self.codec} stores "
                                   "yuv420p, which needs even sizes: crop/resize them or use codec='libx264rgb'")
            features[IMAGES_PREFIX + cam] = {"dtype": "video", "shape": [h, w, 3],
                                             "names": ["height", "width", "channels"]}
        features[STATE] = {"dtype": "float32", "shape": [ep.state.shape[1]], "names": None}
        features[ACTION] = {"dtype": "float32", "shape": [ep.action.shape[1]], "names": None}
        for name, values in sorted(ep.extras.items()):
            values = np.asarray(values)
            features[name] = {"dtype": "float32", "shape": [1] if values.ndim == 1 else list(values.shape[1:]),
                              "names": None}
        for name, meta in self._extra_metadata.items():
            if name not in features:
                raise ConfigError(f"features names '{name}'{did_you_mean(name, features)}, which the episodes do not "
                                  f"have; their features: {', '.join(features)}")
            for key in ("dtype", "shape"):
                if key in meta and list(np.atleast_1d(meta[key])) != list(np.atleast_1d(features[name][key])):
                    raise ConfigError(f"features['{name}']['{key}'] is {meta[key]} but the episodes give "
                                      f"{features[name][key]}")
            names = meta.get("names")
            if isinstance(names, (list, tuple)) and len(names) != int(np.prod(features[name]["shape"])):
                raise ConfigError(f"features['{name}']['names'] has {len(names)} names but the episodes' '{name}' "
                                  f"has shape {features[name]['shape']}")
            features[name].update(meta)
        for name, spec in features.items():
            if spec["dtype"] != "video":
                spec["fps"] = self.fps  # v3.0 gives non-video features their fps (convert_dataset_v21_to_v30)
        return {**features, **{k: {**v, "fps": self.fps} for k, v in DEFAULT_FEATURES.items()}}

    def _check_matches(self, ep: Episode) -> None:
        assert self.features is not None
        where = ep.source or f"episode {len(self._episodes)}"
        expected = {k: v["shape"] for k, v in self.features.items() if k not in DEFAULT_FEATURES}
        given = {IMAGES_PREFIX + c: [*ep.images[c].shape[1:]] for c in ep.cameras}
        given.update({STATE: [ep.state.shape[1]], ACTION: [ep.action.shape[1]]})
        given.update({k: [1] if np.ndim(v) == 1 else [*np.shape(v)[1:]] for k, v in ep.extras.items()})
        if given != expected:
            raise EpisodeError(f"{where}: features {given} differ from the dataset's {expected} (set by its first "
                               "episode); every episode needs the same cameras, image sizes, state/action sizes "
                               "and extras")

    @property
    def num_episodes(self) -> int:
        return len(self._episodes)

    @property
    def num_frames(self) -> int:
        return self._total_frames

    # writing ---------------------------------------------------------------------------------------
    def add_episode(self, ep: Episode) -> int:
        """Append ``ep`` (frames, state, action, extras, task); returns its ``episode_index``.

        Raises :class:`EpisodeError` (nothing written) if its arrays disagree or differ from the first episode's.
        """
        if self._finalized:
            raise RuntimeError(f"{self.root}: the writer is finalized; open a new LeRobotWriter to write more")
        ep.validate()
        if self.features is None:
            self.features = self._infer_features(ep)
        self._check_matches(ep)
        index = len(self._episodes)
        length = ep.length
        task_index = self.tasks.setdefault(ep.task, len(self.tasks))
        columns: Dict[str, np.ndarray] = {STATE: ep.state, ACTION: ep.action}
        columns.update({k: np.asarray(v, dtype=np.float32) for k, v in ep.extras.items()})
        columns.update({
            "timestamp": (np.arange(length) / self.fps).astype(np.float32),
            "frame_index": np.arange(length, dtype=np.int64),
            "episode_index": np.full(length, index, dtype=np.int64),
            "index": np.arange(self._total_frames, self._total_frames + length, dtype=np.int64),
            "task_index": np.full(length, task_index, dtype=np.int64),
        })
        row: Dict[str, Any] = {"episode_index": index, "tasks": [ep.task], "length": length}
        row.update(self._write_data(columns))
        for cam in ep.cameras:
            row.update(self._write_video(IMAGES_PREFIX + cam, ep.images[cam]))
        stats = {name: feature_stats(values) for name, values in columns.items()}
        stats.update({IMAGES_PREFIX + cam: feature_stats(ep.images[cam], image=True) for cam in ep.cameras})
        row.update(stats_columns(stats, list(self.features)))
        row.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0,
                    "success": bool(ep.success), "source": ep.source})
        self._episodes.append(row)
        self._episode_stats.append(stats)
        self._total_frames += length
        return index

    def _write_data(self, columns: Mapping[str, np.ndarray]) -> Dict[str, Any]:
        assert self.features is not None
        length = len(columns["index"])
        names = [k for k in self.features if self.features[k]["dtype"] != "video"]
        table = pa.table({k: to_column(np.asarray(columns[k], dtype=self.features[k]["dtype"]), self.features[k])
                          for k in names}).replace_schema_metadata(huggingface_schema_metadata(self.features))
        path = self.root / DATA_PATH.format(chunk_index=self._data_file[0], file_index=self._data_file[1])
        if self._data_writer is not None and would_overflow(path.stat().st_size, self._data_frames, length,
                                                            self.data_file_size_mb):
            self._data_writer.close()
            self._data_writer, self._data_frames = None, 0
            self._data_file = next_file(*self._data_file, self.chunks_size)
            path = self.root / DATA_PATH.format(chunk_index=self._data_file[0], file_index=self._data_file[1])
        if self._data_writer is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._data_writer = pq.ParquetWriter(path, table.schema, compression="snappy")
        self._data_writer.write_table(table)
        self._data_frames += length
        return {"data/chunk_index": self._data_file[0], "data/file_index": self._data_file[1],
                "dataset_from_index": self._total_frames, "dataset_to_index": self._total_frames + length}

    def _write_video(self, key: str, frames: np.ndarray) -> Dict[str, Any]:
        writer = self._videos.get(key)
        chunk, file = self._video_files.get(key, (0, 0))
        if writer is not None and would_overflow(writer.bytes, writer.frames, len(frames), self.video_file_size_mb):
            writer.close()
            writer = None
            chunk, file = next_file(chunk, file, self.chunks_size)
        if writer is None:
            path = self.root / VIDEO_PATH.format(video_key=key, chunk_index=chunk, file_index=file)
            writer = VideoWriter(path, self.fps, frames.shape[1], frames.shape[2], codec=self.codec, crf=self.crf,
                                 gop=self.gop)
            self._videos[key], self._video_files[key] = writer, (chunk, file)
        start, stop = writer.append(frames)
        return {f"videos/{key}/chunk_index": chunk, f"videos/{key}/file_index": file,
                f"videos/{key}/from_timestamp": start, f"videos/{key}/to_timestamp": stop}

    def _close_files(self) -> None:
        if self._data_writer is not None:
            self._data_writer.close()
            self._data_writer = None
        for writer in self._videos.values():
            writer.close()
        self._videos = {}

    def finalize(self) -> Path:
        """Close the data and video files and write ``meta/`` (info, stats, tasks, episodes); returns ``root``."""
        if self._finalized:
            return self.root
        self._close_files()
        self._finalized = True
        if self.features is None:
            raise ValueError(f"{self.root}: no episode was added; a LeRobot dataset needs at least one")
        for key, spec in self.features.items():
            if spec["dtype"] == "video":
                spec["info"] = video_feature_info(self.root / VIDEO_PATH.format(video_key=key, chunk_index=0,
                                                                                 file_index=0))
        meta = self.root / "meta"
        meta.mkdir(parents=True, exist_ok=True)
        episodes_path = self.root / EPISODES_PATH.format(chunk_index=0, file_index=0)
        episodes_path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(self._episodes), episodes_path, compression="snappy")
        write_tasks(list(self.tasks), self.root / TASKS_PATH)
        (self.root / STATS_PATH).write_text(json.dumps(stats_to_json(aggregate_stats(self._episode_stats)), indent=4))
        has_video = any(spec["dtype"] == "video" for spec in self.features.values())
        info = {"codebase_version": CODEBASE_VERSION, "robot_type": self.robot_type,
                "total_episodes": len(self._episodes), "total_frames": self._total_frames,
                "total_tasks": len(self.tasks), "chunks_size": self.chunks_size,
                "data_files_size_in_mb": self.data_file_size_mb, "video_files_size_in_mb": self.video_file_size_mb,
                "fps": self.fps, "splits": {"train": f"0:{len(self._episodes)}"}, "data_path": DATA_PATH,
                "video_path": VIDEO_PATH if has_video else None, "features": self.features}
        (self.root / INFO_PATH).write_text(json.dumps(info, indent=4, ensure_ascii=False))
        return self.root

    def __enter__(self) -> "LeRobotWriter":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.finalize()
        else:  # leave no open files; without meta/info.json the folder does not read as a dataset
            self._close_files()
