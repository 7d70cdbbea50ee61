"""The LeRobot dataset layout: codebase version, file paths, default features, task tables, file rollover, and
readers of its metadata files that name a broken file (:func:`read_jsonl`, :func:`read_parquet`).

Sources (huggingface/lerobot, ``CODEBASE_VERSION = "v3.0"``): ``src/lerobot/datasets/utils.py`` (paths,
``DEFAULT_FEATURES``, ``create_empty_dataset_info``, chunk/file rollover) and
``v30/convert_dataset_v21_to_v30.py`` (the v2.1 layout: ``meta/tasks.jsonl``, ``meta/episodes.jsonl``,
``meta/episodes_stats.jsonl``, one parquet and one mp4 per episode).

v3.0 layout (written by :class:`~alignkit.domains.robotics.lerobot.writer.LeRobotWriter`)::

    meta/info.json                  codebase_version "v3.0", fps, features {name: {dtype, shape, names, info}},
                                    chunks_size, data_files_size_in_mb, video_files_size_in_mb, data_path,
                                    video_path, total_episodes, total_frames, total_tasks, splits
    meta/stats.json                 {feature: {min, max, mean, std, count, q01, q10, q50, q90, q99}} (images: per
                                    channel, (3, 1, 1), in [0, 1]; see :mod:`.stats`)
    meta/tasks.parquet              column task_index, indexed by the task string (as pandas writes it)
    meta/episodes/chunk-000/file-000.parquet
                                    episode_index, tasks, length, data/chunk_index, data/file_index,
                                    dataset_from_index, dataset_to_index, videos/<key>/{chunk_index, file_index,
                                    from_timestamp, to_timestamp}, stats/<feature>/<stat>,
                                    meta/episodes/{chunk_index, file_index} (+ alignkit's success, source)
    data/chunk-000/file-000.parquet observation.state, action, <extras>, timestamp, frame_index,
                                    episode_index, index, task_index (many episodes per file); column types
                                    as lerobot's get_hf_features_from_features (:mod:`.columns`): shape (1,)
                                    scalars, (n,) fixed-size lists, dtype "image" PNG struct<bytes, path>
    videos/<camera key>/chunk-000/file-000.mp4
                                    many episodes concatenated; episode e spans [from_timestamp, to_timestamp)

A camera is any feature of dtype "video" (frames in mp4 files) or "image" (PNG frames in the data parquet),
whatever its key: ``observation.images.<name>`` (written here) or e.g. PushT's ``observation.image``.

Files roll over to the next ``file-NNN`` (and ``chunk-NNN`` after ``chunks_size`` files) when they would
exceed their size limit (:func:`would_overflow`, :func:`next_file`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import pyarrow as pa
import pyarrow.parquet as pq

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

PathLike = Union[str, Path]


CAMERA_DTYPES = ("video", "image")


def camera_name(key: str) -> str:
    """``"observation.images.top"`` -> ``"top"``; a key without the prefix (``"observation.image"``) is its own
    name."""
    return key[len(IMAGES_PREFIX):] if key.startswith(IMAGES_PREFIX) else key


# ------------------------------------------------------------------------------------------ file rollover
def next_file(chunk_index: int, file_index: int, chunks_size: int) -> Tuple[int, int]:
    """The file after ``(chunk, file)``, ``chunks_size`` files per chunk (lerobot's update_chunk_file_indices)."""
    return (chunk_index + 1, 0) if file_index >= chunks_size - 1 else (chunk_index, file_index + 1)


def would_overflow(size_bytes: int, frames: int, new_frames: int, limit_mb: float) -> bool:
    """True if a file of ``size_bytes`` holding ``frames`` frames would pass ``limit_mb`` with ``new_frames`` more
    (estimated at its average bytes per frame, as lerobot does). An empty file never overflows."""
    if frames == 0:
        return False
    return size_bytes + size_bytes / frames * new_frames >= limit_mb * 1024 * 1024


# ------------------------------------------------------------------------------------------------ tasks
def write_tasks(tasks: List[str], path: Path) -> None:
    """``meta/tasks.parquet`` as lerobot writes it: ``pd.DataFrame({"task_index": ...}, index=tasks).to_parquet``."""
    import pandas as pd  # lerobot reads the task strings back as the pandas index

    pd.DataFrame({"task_index": list(range(len(tasks)))}, index=tasks).to_parquet(path)


# ------------------------------------------------------------------------------------- metadata files
def read_jsonl(path: Path) -> List[Dict[str, Any]]:
    """The JSON objects of a ``.jsonl`` file, one per non-blank line; ValueError naming the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a UTF-8 text file ({exc}); copy or write it again") from None
    rows = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: line {n} is not valid JSON ({exc.msg} at column {exc.colno}); the file may be "
                             "truncated - copy or write it again") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}: line {n} is a JSON {type(row).__name__}, not an object")
        rows.append(row)
    return rows


def read_parquet(path: Path, columns: Optional[Sequence[str]] = None) -> pa.Table:
    """The table in ``path`` (only ``columns`` when given); ValueError naming the file when it is truncated or
    not parquet (pyarrow's own ``ArrowInvalid`` does not name it)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such parquet file")
    try:
        return pq.read_table(path, columns=list(columns) if columns is not None else None)
    except (pa.ArrowException, OSError) as exc:
        raise ValueError(f"{path}: not a readable parquet file ({type(exc).__name__}: {exc}); it may be truncated - "
                         "copy or write it again") from None


def read_parquet_columns(path: Path) -> List[str]:
    """The column names of the parquet file ``path`` (its footer only); ValueError naming a broken file."""
    try:
        return list(pq.read_schema(path).names)
    except (pa.ArrowException, OSError) as exc:
        raise ValueError(f"{path}: not a readable parquet file ({type(exc).__name__}: {exc}); it may be truncated - "
                         "copy or write it again") from None


def read_tasks(root: Path, version: str) -> List[str]:
    """The task strings of the dataset at ``root`` by ``task_index`` (``meta/tasks.jsonl`` for v2.x,
    ``meta/tasks.parquet`` otherwise); ValueError when they are not indexed ``0..n-1``."""
    if version.startswith("v2"):
        rows = read_jsonl(root / LEGACY_TASKS_PATH)
        try:
            by_index = {int(r["task_index"]): str(r["task"]) for r in rows}
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{root / LEGACY_TASKS_PATH}: a row lacks task_index/task or holds another type "
                             f"({type(exc).__name__}: {exc})") from None
    else:
        table = read_parquet(root / TASKS_PATH)
        # the task string is pandas' index column (lerobot's write_tasks); a "task" column also reads
        names = table.schema.pandas_metadata.get("index_columns", []) if table.schema.pandas_metadata else []
        column = "task" if "task" in table.column_names else next((n for n in names if isinstance(n, str)), None)
        if column is None:
            raise ValueError(f"{root / TASKS_PATH} has no task strings (no 'task' column and no pandas index)")
        if "task_index" not in table.column_names:
            raise ValueError(f"{root / TASKS_PATH} has no column 'task_index' (columns: {table.column_names})")
        by_index = dict(zip(table.column("task_index").to_pylist(), table.column(column).to_pylist()))
    if sorted(by_index) != list(range(len(by_index))):
        raise ValueError(f"{root}: task indices {sorted(by_index)} are not 0..{len(by_index) - 1}")
    return [by_index[i] for i in range(len(by_index))]
