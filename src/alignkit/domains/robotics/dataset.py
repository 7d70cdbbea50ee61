"""The LeRobot dataset layout with pyarrow and PyAV: write codebase v3.0, read v3.0 and v2.1.

The ``lerobot`` package cannot be installed beside this torch, so the format is implemented here from
its documented fields. Sources (huggingface/lerobot, ``CODEBASE_VERSION = "v3.0"``):
``src/lerobot/datasets/utils.py`` (paths, ``DEFAULT_FEATURES``, ``create_empty_dataset_info``, chunk/file
rollover), ``lerobot_dataset.py`` (``save_episode``, ``_save_episode_data``, ``_save_episode_video``:
the episode metadata columns and the from/to timestamps of episodes concatenated in one mp4),
``compute_stats.py`` (per-feature min/max/mean/std/count, images per channel), ``video_utils.py``
(``get_video_info``, ``encode_video_frames``) and ``v30/convert_dataset_v21_to_v30.py`` (the v2.1
layout: ``meta/tasks.jsonl``, ``meta/episodes.jsonl``, ``meta/episodes_stats.jsonl``, one parquet
and one mp4 per episode).

v3.0 layout written by :class:`LeRobotWriter`::

    meta/info.json                  codebase_version "v3.0", fps, features {name: {dtype, shape, names, info}},
                                    chunks_size, data_files_size_in_mb, video_files_size_in_mb, data_path,
                                    video_path, total_episodes, total_frames, total_tasks, splits
    meta/stats.json                 {feature: {min, max, mean, std, count}} (images: per channel, (3, 1, 1), in [0, 1])
    meta/tasks.parquet              column task_index, indexed by the task string (as pandas writes it)
    meta/episodes/chunk-000/file-000.parquet
                                    episode_index, tasks, length, data/chunk_index, data/file_index,
                                    dataset_from_index, dataset_to_index, videos/<key>/{chunk_index, file_index,
                                    from_timestamp, to_timestamp}, stats/<feature>/<stat>,
                                    meta/episodes/{chunk_index, file_index} (+ alignkit's success, source)
    data/chunk-000/file-000.parquet observation.state, action, <extras>, timestamp, frame_index,
                                    episode_index, index, task_index (many episodes per file)
    videos/observation.images.<camera>/chunk-000/file-000.mp4
                                    many episodes concatenated; episode e spans [from_timestamp, to_timestamp)

Files roll over to the next ``file-NNN`` (and ``chunk-NNN`` after ``chunks_size`` files) when they would
exceed ``data_file_size_mb`` / ``video_file_size_mb``.

Video codecs (``codec=``): ``"libx264"`` (H.264, yuv420p, ``crf``; the default: small, plays everywhere,
near-lossless at crf 18), ``"libsvtav1"`` (AV1, lerobot's own default), and two exactly lossless choices
for round-trip tests and archives: ``"libx264rgb"`` (H.264 in RGB with ``qp 0``) and ``"ffv1"``. Every
codec is written with a short GOP (``gop`` frames between keyframes) so a random frame costs one seek
plus at most ``gop - 1`` decoded frames.

:class:`LeRobotDataset` reads frames by seeking to the keyframe before the wanted timestamp and
decoding forward (never the whole video), with a small per-process cache of open decoders and of
recently decoded frames; it is safe in DataLoader worker processes.
"""
from __future__ import annotations

import json
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import av
import numpy as np
from av.video.reformatter import VideoReformatter
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from alignkit.core.registry import DATASETS, ConfigError, did_you_mean
from alignkit.domains.robotics.episode import Episode, EpisodeError

logger = logging.getLogger(__name__)

CODEBASE_VERSION = "v3.0"
# lerobot/datasets/utils.py: DEFAULT_CHUNK_SIZE, DEFAULT_DATA_FILE_SIZE_IN_MB, DEFAULT_VIDEO_FILE_SIZE_IN_MB.
DEFAULT_CHUNK_SIZE = 1000
DEFAULT_DATA_FILE_SIZE_IN_MB = 100
DEFAULT_VIDEO_FILE_SIZE_IN_MB = 500
# lerobot/datasets/utils.py: INFO_PATH, STATS_PATH, DEFAULT_TASKS_PATH, DEFAULT_EPISODES_PATH, DEFAULT_DATA_PATH,
# DEFAULT_VIDEO_PATH and the LEGACY_* (v2.1) paths.
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
EPISODES_DIR = "meta/episodes"
EPISODES_PATH = EPISODES_DIR + "/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
LEGACY_TASKS_PATH = "meta/tasks.jsonl"
LEGACY_EPISODES_PATH = "meta/episodes.jsonl"
LEGACY_EPISODES_STATS_PATH = "meta/episodes_stats.jsonl"

IMAGES_PREFIX = "observation.images."
STATE = "observation.state"
ACTION = "action"
# lerobot/datasets/utils.py DEFAULT_FEATURES: the per-frame bookkeeping columns of every dataset.
DEFAULT_FEATURES: Dict[str, Dict[str, Any]] = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}

# codec name -> (pixel format, lossless). Options: lossy codecs get crf, lossless ones qp 0 (x264rgb) or none.
VIDEO_CODECS: Dict[str, Tuple[str, bool]] = {
    "libx264": ("yuv420p", False),
    "libsvtav1": ("yuv420p", False),
    "libx264rgb": ("rgb24", True),
    "ffv1": ("bgr0", True),
}

PathLike = Union[str, Path]
Stats = Dict[str, Dict[str, np.ndarray]]


# ------------------------------------------------------------------------------------------- statistics


def feature_stats(values: np.ndarray, image: bool = False) -> Dict[str, np.ndarray]:
    """lerobot's per-episode statistics of one feature over its ``N`` frames.

    ``values`` is ``(N,)`` or ``(N, D)`` (vectors: stats of shape ``(1,)`` / ``(D,)``), or uint8
    ``(N, H, W, 3)`` with ``image=True`` (stats per channel of ``values / 255``, shape ``(3, 1, 1)``).
    Returns ``{"min", "max", "mean", "std", "count"}``; ``std`` is the population standard deviation and
    ``count = [N]``.
    """
    if image and values.dtype == np.uint8:
        stats = _uint8_image_stats(values)
    else:
        if image:
            x = values.reshape(values.shape[0], -1, values.shape[-1]).astype(np.float64) / 255.0
            axes: Tuple[int, ...] = (0, 1)
        else:
            x = values.astype(np.float64).reshape(values.shape[0], -1)
            axes = (0,)
        stats = {"min": x.min(axis=axes), "max": x.max(axis=axes), "mean": x.mean(axis=axes), "std": x.std(axis=axes)}
    if image:
        stats = {k: v.reshape(-1, 1, 1) for k, v in stats.items()}
    stats["count"] = np.array([values.shape[0]])
    return stats


def _uint8_image_stats(values: np.ndarray) -> Dict[str, np.ndarray]:
    """Per-channel min/max/mean/std of ``values / 255`` from exact integer sums (half the time of the float64
    copy, which cost a fifth of demonstration collection)."""
    flat = values.reshape(-1, values.shape[-1])
    n = flat.shape[0]
    wide = flat.astype(np.uint16)
    total, squares = flat.sum(axis=0, dtype=np.uint64), (wide * wide).sum(axis=0, dtype=np.uint64)
    mean = total / n
    var = np.maximum(squares - total.astype(np.float64) * mean, 0.0) / n
    return {"min": flat.min(axis=0) / 255.0, "max": flat.max(axis=0) / 255.0, "mean": mean / 255.0,
            "std": np.sqrt(var) / 255.0}


def aggregate_stats(per_episode: Sequence[Stats]) -> Stats:
    """Combine per-episode statistics into dataset statistics (lerobot's ``aggregate_stats``).

    ``mean = sum_e n_e mean_e / n`` and ``var = sum_e n_e (std_e^2 + (mean_e - mean)^2) / n`` with
    ``n = sum_e n_e``; min/max are element-wise over episodes, ``count = [n]``.
    """
    out: Stats = {}
    for key in sorted({k for stats in per_episode for k in stats}):
        parts = [s[key] for s in per_episode if key in s]
        counts = np.array([float(p["count"][0]) for p in parts])
        total = counts.sum()
        means = np.stack([np.asarray(p["mean"], dtype=np.float64) for p in parts])
        weights = counts.reshape(-1, *([1] * (means.ndim - 1)))
        mean = (weights * means).sum(axis=0) / total
        var = (weights * (np.stack([np.asarray(p["std"], dtype=np.float64) for p in parts]) ** 2
                          + (means - mean) ** 2)).sum(axis=0) / total
        out[key] = {"min": np.min(np.stack([p["min"] for p in parts]), axis=0),
                    "max": np.max(np.stack([p["max"] for p in parts]), axis=0),
                    "mean": mean, "std": np.sqrt(var), "count": np.array([int(total)])}
    return out


def _stats_to_json(stats: Stats) -> Dict[str, Dict[str, Any]]:
    return {k: {s: np.asarray(v).tolist() for s, v in d.items()} for k, d in stats.items()}


def _stats_from_json(data: Mapping[str, Mapping[str, Any]]) -> Stats:
    return {k: {s: np.asarray(v) for s, v in d.items()} for k, d in data.items()}


# ------------------------------------------------------------------------------------------------ video


def _next_file(chunk_index: int, file_index: int, chunks_size: int) -> Tuple[int, int]:
    """The file after ``(chunk, file)``, ``chunks_size`` files per chunk (lerobot's update_chunk_file_indices)."""
    return (chunk_index + 1, 0) if file_index >= chunks_size - 1 else (chunk_index, file_index + 1)


def _would_overflow(size_bytes: int, frames: int, new_frames: int, limit_mb: float) -> bool:
    """True if a file of ``size_bytes`` holding ``frames`` frames would pass ``limit_mb`` with ``new_frames`` more
    (estimated at its average bytes per frame, as lerobot does). An empty file never overflows."""
    if frames == 0:
        return False
    return size_bytes + size_bytes / frames * new_frames >= limit_mb * 1024 * 1024


class _VideoFileWriter:
    """One mp4 of one camera, open for appending episodes; frame ``n`` of the file has pts ``n`` (time ``n / fps``)."""

    def __init__(self, path: Path, fps: int, height: int, width: int, codec: str, crf: int, gop: int):
        pix_fmt, lossless = VIDEO_CODECS[codec]
        options = {"g": str(gop)}
        if codec == "libx264rgb":
            options["qp"] = "0"
        elif not lossless:
            options["crf"] = str(crf)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.fps = fps
        self.frames = 0
        self.bytes = 0
        self._container = av.open(str(path), "w")
        self._stream = self._container.add_stream(codec, rate=fps, options=options)
        self._stream.width, self._stream.height, self._stream.pix_fmt = width, height, pix_fmt
        self._stream.codec_context.thread_count = 1

    def append(self, frames: np.ndarray) -> Tuple[float, float]:
        """Encode uint8 ``(T, H, W, 3)`` frames; returns the episode's ``(from_timestamp, to_timestamp)`` in seconds."""
        start = self.frames
        for image in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = self.frames
            self._mux(self._stream.encode(frame))
            self.frames += 1
        return start / self.fps, self.frames / self.fps

    def _mux(self, packets: Sequence[av.Packet]) -> None:
        for packet in packets:
            self.bytes += packet.size
            self._container.mux(packet)

    def close(self) -> None:
        self._mux(self._stream.encode(None))
        self._container.close()


def video_info(path: PathLike) -> Dict[str, Any]:
    """The ``info`` of a video feature in ``meta/info.json`` (the keys of lerobot's ``get_video_info``)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        pix_fmt = stream.pix_fmt or ""
        return {"video.height": stream.height, "video.width": stream.width,
                "video.codec": stream.codec.canonical_name, "video.pix_fmt": pix_fmt,
                "video.is_depth_map": False, "video.fps": int(stream.base_rate),
                "video.channels": 1 if "gray" in pix_fmt else 4 if ("rgba" in pix_fmt or "yuva" in pix_fmt) else 3,
                "has_audio": bool(container.streams.audio)}


def video_frame_count(path: PathLike) -> int:
    """Number of frames in the first video stream of ``path`` (from the container header when it has one)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if stream.frames:
            return int(stream.frames)
        if stream.duration is not None and stream.average_rate:
            return int(round(float(stream.duration * stream.time_base * stream.average_rate)))
        return sum(1 for packet in container.demux(stream) if packet.size)


class VideoFrameReader:
    """Random access to the frames of one video file without decoding it whole.

    Frame ``k`` is the frame at time ``k / fps``. To read frames ``[a, b]``, the reader seeks to the
    keyframe at or before ``a`` and decodes forward to ``b``; a request that starts at most
    ``forward_limit`` frames after the decoder's position decodes forward without seeking (sequential
    reads). The last ``keep`` decoded frames are kept, so overlapping windows decode each frame once.
    Decoding uses one thread, so a reader is safe to drop in a forked process.
    """

    def __init__(self, path: PathLike, fps: float, keep: int = 32, forward_limit: int = 16):
        self.path = Path(path)
        self.fps = Fraction(fps).limit_denominator(1001)
        self.keep = keep
        self.forward_limit = forward_limit
        self._container = av.open(str(self.path))
        self._stream = self._container.streams.video[0]
        self._stream.codec_context.thread_count = 1
        self._to_rgb = VideoReformatter()  # keeps its swscale context: ~15x faster than frame.to_ndarray("rgb24")
        self._frames: Optional[Iterator[av.VideoFrame]] = None
        self._next = 0  # index of the frame the open decoder yields next
        self._recent: "OrderedDict[int, np.ndarray]" = OrderedDict()

    def read(self, indices: Sequence[int]) -> np.ndarray:
        """uint8 ``(len(indices), H, W, 3)`` RGB frames at the given frame indices (any order, repeats allowed)."""
        wanted = [int(i) for i in indices]
        found = {i: self._recent[i] for i in set(wanted) if i in self._recent}
        missing = sorted(set(wanted) - set(found))
        if missing:
            found.update(self._decode(missing))
        return np.stack([found[i] for i in wanted])

    def _decode(self, missing: List[int]) -> Dict[int, np.ndarray]:
        first, last = missing[0], missing[-1]
        if self._frames is None or not 0 <= first - self._next <= self.forward_limit:
            offset = int(first / (self.fps * self._stream.time_base))
            self._container.seek(offset, stream=self._stream, backward=True, any_frame=False)
            self._frames = self._container.decode(self._stream)
        remaining = set(missing)
        out: Dict[int, np.ndarray] = {}
        for frame in self._frames:
            index = int(round(frame.time * self.fps))
            self._next = index + 1
            if index >= first:
                image = self._to_rgb.reformat(frame, format="rgb24").to_ndarray()
                self._recent[index] = image
                if len(self._recent) > self.keep:
                    self._recent.popitem(last=False)
                if index in remaining:
                    out[index] = image
                    remaining.discard(index)
            if index >= last:
                break
        else:
            self._frames = None  # the decoder is exhausted: the next read seeks
        if remaining:
            first_missing = min(remaining)
            raise EpisodeError(f"{self.path}: no frame at index {first_missing} (time {first_missing / self.fps:.4f} "
                               f"s); the video ends before frame {self._next}")
        return out

    def close(self) -> None:
        self._container.close()


_INHERITED_READERS: List["OrderedDict[Path, VideoFrameReader]"] = []
"""Decoders a forked process inherited: kept alive and unused there, because freeing FFmpeg state copied from
the parent deadlocks the child (seen with DataLoader workers forked after the main process read items)."""


class _ReaderCache:
    """Open :class:`VideoFrameReader` per file, least recently used first out (at most ``max_open``), per process.

    A cache copied into another process (a forked DataLoader worker) is set aside there, neither used
    nor freed (see ``_INHERITED_READERS``): each worker opens its own decoders.
    """

    def __init__(self, max_open: int = 8):
        self.max_open = max_open
        self._pid = os.getpid()
        self._readers: "OrderedDict[Path, VideoFrameReader]" = OrderedDict()

    def get(self, path: Path, fps: float) -> VideoFrameReader:
        if self._pid != os.getpid():
            _INHERITED_READERS.append(self._readers)
            self._pid, self._readers = os.getpid(), OrderedDict()
        reader = self._readers.pop(path, None) or VideoFrameReader(path, fps)
        self._readers[path] = reader
        if len(self._readers) > self.max_open:
            self._readers.popitem(last=False)[1].close()
        return reader


# ----------------------------------------------------------------------------------------------- writer


def _vector_column(values: np.ndarray, dtype: pa.DataType) -> pa.Array:
    """``(N,)`` -> a scalar column, ``(N, D)`` -> a fixed-size list column of ``D`` values per row."""
    if values.ndim == 1:
        return pa.array(values, type=dtype)
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1), type=dtype), values.shape[1])


class LeRobotWriter:
    """Writes :class:`~alignkit.domains.robotics.episode.Episode` s as a LeRobot v3.0 dataset under ``root``.

    ``root`` must not exist or be empty. ``features`` adds metadata to the inferred features, e.g.
    ``{"observation.state": {"names": ["x", "y", "z", ...]}}`` (a ``dtype``/``shape`` given there must
    match the episodes). Features: ``observation.images.<camera>`` (video, ``[H, W, 3]``),
    ``observation.state`` and ``action`` (float32 ``[S]``/``[A]``), one float32 feature per episode
    extra, and lerobot's ``timestamp``/``frame_index``/``episode_index``/``index``/``task_index``.
    Every episode must have the cameras and shapes of the first. ``codec``/``crf``/``gop``: see the
    module docstring. Use as a context manager, or call :meth:`finalize` (which writes ``meta/``).
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
        if codec not in VIDEO_CODECS:
            raise ConfigError(f"unknown video codec '{codec}'{did_you_mean(codec, VIDEO_CODECS)}; "
                              f"choose one of {', '.join(VIDEO_CODECS)}")
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
        self._videos: Dict[str, _VideoFileWriter] = {}
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
        row.update({f"stats/{name}/{k}": v.tolist() for name, s in stats.items() for k, v in s.items()})
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
        table = pa.table({k: _vector_column(np.asarray(columns[k]), pa.from_numpy_dtype(columns[k].dtype))
                          for k in names})
        path = self.root / DATA_PATH.format(chunk_index=self._data_file[0], file_index=self._data_file[1])
        if self._data_writer is not None and _would_overflow(path.stat().st_size, self._data_frames, length,
                                                             self.data_file_size_mb):
            self._data_writer.close()
            self._data_writer, self._data_frames = None, 0
            self._data_file = _next_file(*self._data_file, self.chunks_size)
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
        if writer is not None and _would_overflow(writer.bytes, writer.frames, len(frames), self.video_file_size_mb):
            writer.close()
            writer = None
            chunk, file = _next_file(chunk, file, self.chunks_size)
        if writer is None:
            path = self.root / VIDEO_PATH.format(video_key=key, chunk_index=chunk, file_index=file)
            writer = _VideoFileWriter(path, self.fps, frames.shape[1], frames.shape[2], self.codec, self.crf, self.gop)
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
                spec["info"] = video_info(self.root / VIDEO_PATH.format(video_key=key, chunk_index=0, file_index=0))
        meta = self.root / "meta"
        meta.mkdir(parents=True, exist_ok=True)
        episodes_path = self.root / EPISODES_PATH.format(chunk_index=0, file_index=0)
        episodes_path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(self._episodes), episodes_path, compression="snappy")
        _write_tasks(list(self.tasks), self.root / TASKS_PATH)
        (self.root / STATS_PATH).write_text(json.dumps(_stats_to_json(aggregate_stats(self._episode_stats)), indent=4))
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


def _write_tasks(tasks: List[str], path: Path) -> None:
    """``meta/tasks.parquet`` as lerobot writes it: ``pd.DataFrame({"task_index": ...}, index=tasks).to_parquet``."""
    import pandas as pd  # lerobot reads the task strings back as the pandas index

    pd.DataFrame({"task_index": list(range(len(tasks)))}, index=tasks).to_parquet(path)


# ----------------------------------------------------------------------------------------------- reader


@dataclass
class _Episode:
    """One readable episode: its rows in the dataset's arrays and where its frames are in which videos."""

    episode_index: int
    length: int
    start: int  # first row in LeRobotDataset's concatenated arrays
    tasks: List[str]
    videos: Dict[str, Tuple[Path, np.ndarray]]  # camera key -> (file, frame index in the file of each step)
    success: bool
    source: str


def _read_tasks(root: Path, version: str) -> List[str]:
    if version.startswith("v2"):
        rows = [json.loads(line) for line in (root / LEGACY_TASKS_PATH).read_text().splitlines() if line.strip()]
        by_index = {int(r["task_index"]): str(r["task"]) for r in rows}
    else:
        table = pq.read_table(root / TASKS_PATH)
        # the task string is pandas' index column (lerobot's write_tasks); a "task" column also reads
        names = table.schema.pandas_metadata.get("index_columns", []) if table.schema.pandas_metadata else []
        column = "task" if "task" in table.column_names else next((n for n in names if isinstance(n, str)), None)
        if column is None:
            raise ValueError(f"{root / TASKS_PATH} has no task strings (no 'task' column and no pandas index)")
        by_index = dict(zip(table.column("task_index").to_pylist(), table.column(column).to_pylist()))
    if sorted(by_index) != list(range(len(by_index))):
        raise ValueError(f"{root}: task indices {sorted(by_index)} are not 0..{len(by_index) - 1}")
    return [by_index[i] for i in range(len(by_index))]


def _read_jsonl(path: Path) -> List[Dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _column_values(column: pa.ChunkedArray, shape: Sequence[int], name: str) -> np.ndarray:
    """A parquet column as numpy: ``(N,)`` for scalars, ``(N, D)`` for list columns of ``D = prod(shape)`` values.

    Raises ValueError naming the column on nulls or rows of another length.
    """
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if array.null_count:
        raise ValueError(f"column '{name}' has {array.null_count} null rows")
    width = int(np.prod(shape)) if shape else 1
    if not (pa.types.is_list(array.type) or pa.types.is_large_list(array.type)
            or pa.types.is_fixed_size_list(array.type)):
        if width != 1:
            raise ValueError(f"column '{name}' holds scalars but its feature has shape {list(shape)}")
        return array.to_numpy(zero_copy_only=False)
    lengths = np.full(len(array), array.type.list_size) if pa.types.is_fixed_size_list(array.type) \
        else array.value_lengths().to_numpy(zero_copy_only=False)
    if len(lengths) and (lengths.min() != width or lengths.max() != width):
        bad = int(np.flatnonzero(lengths != width)[0])
        raise ValueError(f"column '{name}' has a row of length {int(lengths[bad])} (row {bad}) but its feature has "
                         f"shape {list(shape)}")
    return array.flatten().to_numpy(zero_copy_only=False).reshape(len(array), width)


class LeRobotDataset(Dataset):
    """A LeRobot dataset (v3.0 or v2.1, detected from ``meta/info.json``), map-style over frames.

    Item ``i`` is frame ``t`` of some episode with a history window of ``T = window`` steps
    ``t - T + 1 .. t``; steps before the episode start repeat its first frame and have
    ``pad_mask`` False:

    - ``"observation.images.<camera>"``: float Tensor ``(T, 3, H, W)`` in [0, 1] (resized to
      ``image_size`` (int or (H, W)) if given);
    - ``"observation.state"`` ``(T, S)``, ``"action"`` ``(T, A)``, each extra feature ``(T,)`` or
      ``(T, k)``: float32 Tensors;
    - ``"pad_mask"``: bool Tensor ``(T,)``;
    - ``"task"`` (str) and ``"task_index"``, ``"episode_index"``, ``"frame_index"`` (int) of frame ``t``.

    ``cameras`` selects cameras by name (``"top"`` or ``"observation.images.top"``); ``episodes`` keeps
    only those ``episode_index`` values. Bad episodes (missing frames, state/action vectors of the wrong
    length, a video shorter than its parquet, an unknown task index) raise :class:`EpisodeError` naming
    the episode, or with ``skip_bad=True`` are left out and listed in ``skipped`` as ``(where, reason)``.

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
        self.meta: Dict[str, Any] = json.loads(info_path.read_text())
        self.version = str(self.meta.get("codebase_version", ""))
        if not (self.version.startswith("v3.") or self.version.startswith("v2.")):
            raise ValueError(f"{info_path}: codebase_version {self.version!r} is not supported (v2.x and v3.x are)")
        self.fps = float(self.meta["fps"])
        features: Dict[str, Dict[str, Any]] = self.meta["features"]
        self.features = features
        stored = [k for k, v in features.items() if v["dtype"] == "image"]
        if stored:
            raise ValueError(f"{info_path}: image features stored in parquet ({', '.join(stored)}) are not supported; "
                             "only video features are")
        all_cameras = [k[len(IMAGES_PREFIX):] if k.startswith(IMAGES_PREFIX) else k
                       for k, v in features.items() if v["dtype"] == "video"]
        self.cameras = list(all_cameras) if cameras is None else [self._camera(c, all_cameras) for c in cameras]
        self.camera_keys = [k for k, v in features.items() if v["dtype"] == "video"
                            and (k[len(IMAGES_PREFIX):] if k.startswith(IMAGES_PREFIX) else k) in self.cameras]
        self.extra_keys = [k for k, v in features.items() if k not in DEFAULT_FEATURES and k not in (STATE, ACTION)
                           and v["dtype"] not in ("video", "image", "string")]
        self.tasks = _read_tasks(self.root, self.version)
        self.stats = self._read_stats()
        self._readers = _ReaderCache()
        self.cache_frames = bool(cache_frames)
        self._frame_cache: Dict[Tuple[int, str], np.ndarray] = {}
        self._load(episodes)

    @staticmethod
    def _camera(name: str, known: List[str]) -> str:
        short = name[len(IMAGES_PREFIX):] if name.startswith(IMAGES_PREFIX) else name
        if short not in known:
            raise ConfigError(f"unknown camera '{name}'{did_you_mean(short, known)}; the dataset has "
                              f"{', '.join(known)}")
        return short

    def _read_stats(self) -> Stats:
        if (self.root / STATS_PATH).is_file():
            return _stats_from_json(json.loads((self.root / STATS_PATH).read_text()))
        legacy = self.root / LEGACY_EPISODES_STATS_PATH
        if legacy.is_file():
            return aggregate_stats([_stats_from_json(r["stats"]) for r in _read_jsonl(legacy)])
        return {}

    # indexing -------------------------------------------------------------------------------------
    def _episode_records(self) -> List[Dict[str, Any]]:
        """Per-episode metadata rows, each with ``data_file`` and ``videos`` {key: (file, from_timestamp)}."""
        if self.version.startswith("v2"):
            chunks = int(self.meta.get("chunks_size", DEFAULT_CHUNK_SIZE))
            records = []
            for row in _read_jsonl(self.root / LEGACY_EPISODES_PATH):
                e = int(row["episode_index"])
                fmt = {"episode_chunk": e // chunks, "episode_index": e}
                records.append({**row, "data_file": self.root / self.meta["data_path"].format(**fmt),
                                "videos": {k: (self.root / self.meta["video_path"].format(video_key=k, **fmt), 0.0)
                                           for k in self.camera_keys}})
            return records
        files = sorted((self.root / EPISODES_DIR).glob("chunk-*/file-*.parquet"))
        if not files:
            raise FileNotFoundError(f"{self.root}: no episode metadata under {EPISODES_DIR}/")
        records = []
        for path in files:
            schema = pq.read_schema(path)
            table = pq.read_table(path, columns=[n for n in schema.names if not n.startswith("stats/")])
            for row in table.to_pylist():
                fmt = {"chunk_index": row["data/chunk_index"], "file_index": row["data/file_index"]}
                videos = {k: (self.root / self.meta["video_path"].format(
                    video_key=k, chunk_index=row[f"videos/{k}/chunk_index"], file_index=row[f"videos/{k}/file_index"]),
                    float(row[f"videos/{k}/from_timestamp"])) for k in self.camera_keys}
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
            table = pq.read_table(path).combine_chunks()
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
                values = _column_values(part.column(name), self.features[name]["shape"], name).astype(np.float32)
                columns[name] = values
            else:
                columns[name] = np.zeros((length, 0), dtype=np.float32)
        task_index = part.column("task_index").to_numpy().astype(np.int64)
        unknown = sorted(set(task_index.tolist()) - set(range(len(self.tasks))))
        if unknown:
            raise EpisodeError(f"unknown task_index {unknown} (meta/tasks has {len(self.tasks)} tasks)")
        columns["task_index"] = task_index
        timestamps = part.column("timestamp").to_numpy().astype(np.float64)
        videos: Dict[str, Tuple[Path, np.ndarray]] = {}
        for key in self.camera_keys:
            video, from_timestamp = record["videos"][key]
            if not video.is_file():
                raise EpisodeError(f"its video {video} does not exist")
            if video not in frame_counts:
                frame_counts[video] = video_frame_count(video)
            frames = np.rint((from_timestamp + timestamps) * self.fps).astype(np.int64)
            if frames.max() >= frame_counts[video]:
                raise EpisodeError(f"the video is shorter than its parquet: {video} has {frame_counts[video]} frames "
                                   f"but the episode's {length} steps need frames up to {int(frames.max())}")
            videos[key] = (video, frames)
        tasks = record.get("tasks") or [self.tasks[int(task_index[0])]]
        episode = _Episode(episode_index=e, length=length, start=start, tasks=list(tasks), videos=videos,
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
        """uint8 ``(len(steps), H, W, 3)``: the frames of ``camera_key`` at ``steps`` of the ``position``-th episode."""
        ep = self._episodes[position]
        video, frame_of_step = ep.videos[camera_key]
        if not self.cache_frames:
            return self._readers.get(video, self.fps).read(frame_of_step[np.asarray(steps)])
        key = (position, camera_key)
        if key not in self._frame_cache:
            self._frame_cache[key] = self._readers.get(video, self.fps).read(frame_of_step)
        return self._frame_cache[key][np.asarray(steps)]

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
        images = {key[len(IMAGES_PREFIX):] if key.startswith(IMAGES_PREFIX) else key: self.frames(position, key, steps)
                  for key in self.camera_keys}
        return Episode(images=images, state=self._arrays[STATE][rows], action=self._arrays[ACTION][rows],
                       task=ep.tasks[0], success=ep.success, source=ep.source,
                       extras={k: self._arrays[k][rows] for k in self.extra_keys})

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        state["_readers"] = _ReaderCache(self._readers.max_open)  # open decoders stay in their process
        return state


def split_episodes(info: Mapping[str, Any], split: str, holdout: Optional[Mapping[str, float]] = None,
                   seed: int = 0) -> List[int]:
    """The ``episode_index`` values of ``split`` of a dataset whose ``meta/info.json`` is ``info``.

    ``info["splits"]`` maps split names to ranges ``"a:b"`` (episodes ``a .. b - 1``; several may be joined
    by commas), as lerobot writes them (``{"train": "0:N"}``); without it every one of ``total_episodes``
    episodes is ``train``. ``holdout`` (``{"val": 0.1, "test": 0.1}``) moves ``round(f * n)`` (at least one)
    of the ``n`` train episodes, chosen by a permutation seeded with ``seed``, into each named split. A split
    that is neither listed nor held out has no episodes.
    """
    ranges = dict(info.get("splits") or {"train": f"0:{int(info.get('total_episodes', 0))}"})
    listed: Dict[str, List[int]] = {}
    for name, spec in ranges.items():
        episodes: List[int] = []
        for part in str(spec).split(","):
            start, sep, stop = part.partition(":")
            if not sep:
                raise ConfigError(f"meta/info.json splits[{name!r}] = {spec!r}: expected ranges 'a:b'")
            episodes.extend(range(int(start), int(stop)))
        listed[name] = episodes
    holdout = dict(holdout or {})
    if not holdout:
        return listed.get(split, [])
    if "train" in holdout or any(not 0.0 < f < 1.0 for f in holdout.values()):
        raise ConfigError(f"holdout {holdout}: give fractions in (0, 1) of the train episodes for other splits "
                          "(e.g. {val: 0.1, test: 0.1})")
    order = np.random.default_rng(seed).permutation(listed.get("train", []))
    taken: Dict[str, List[int]] = {}
    start = 0
    for name in sorted(holdout):
        count = max(1, int(round(holdout[name] * len(order))))
        taken[name] = sorted(int(e) for e in order[start:start + count])
        start += count
    if start >= len(order):
        raise ConfigError(f"holdout {holdout} leaves none of the {len(order)} train episodes for training")
    taken["train"] = sorted(int(e) for e in order[start:])
    return taken[split] if split in taken else listed.get(split, [])


@DATASETS.register("lerobot")
class LeRobotSplit(LeRobotDataset):
    """A LeRobot dataset (v3.0 or v2.1) in a config: ``data: {dataset: lerobot, params: {root: ...}}``.

    The items are :class:`LeRobotDataset`'s (windows of ``window`` steps; ``window: 1`` gives single frames,
    as Voltron's V-Cond reads them); ``split`` selects episodes with :func:`split_episodes`
    (``holdout`` and ``split_seed`` carve validation/test episodes out of the train ones). A split with no
    episodes is empty (the DataModule then skips it).
    """

    def __init__(self, root: PathLike, split: str = "train", window: int = 1, cameras: Optional[Sequence[str]] = None,
                 image_size: Optional[Union[int, Tuple[int, int]]] = None, skip_bad: bool = False,
                 holdout: Optional[Mapping[str, float]] = None, split_seed: int = 0, cache_frames: bool = False):
        info_path = Path(root) / INFO_PATH
        if not info_path.is_file():
            raise FileNotFoundError(f"{root} is not a LeRobot dataset: no {INFO_PATH}")
        self.split = split
        episodes = split_episodes(json.loads(info_path.read_text()), split, holdout, split_seed)
        super().__init__(root, window=window, cameras=cameras, image_size=image_size, skip_bad=skip_bad,
                         episodes=episodes, cache_frames=cache_frames)
