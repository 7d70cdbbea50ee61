"""RLDS episodes (BridgeData TFRecords, or their npz twin) to the LeRobot layout, without TensorFlow.

An RLDS/TFDS ``.tfrecord`` file is a sequence of records framed as ``uint64 length, uint32
masked_crc32c(length bytes), bytes[length], uint32 masked_crc32c(bytes)`` (little-endian; the mask is
``((c >> 15) | (c << 17)) + 0xa282ead8`` mod 2^32). Each record is a serialized ``tf.train.Example``:
``Example{features: Features = 1}``, ``Features{map<string, Feature> feature = 1}``,
``Feature{oneof: BytesList bytes_list = 1, FloatList float_list = 2, Int64List int64_list = 3}``, the
lists holding ``repeated value = 1`` (floats and ints packed or not). Both are parsed here directly.

In an RLDS episode every per-step field is one flattened list under ``steps/<field>``
(``steps/observation/image_0`` holds one JPEG per step, ``steps/action`` ``T x 7`` floats) and the
episode's own fields are under ``episode_metadata/``. See ``../shared/data/robotics/README.md``.
"""
from __future__ import annotations

import io
import struct
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from alignkit.core.checkpoints import load_npz
from alignkit.core.text import TextDecodeError, decode_text
from alignkit.domains.robotics.episode import Episode, EpisodeError

PathLike = Union[str, Path]
FeatureValue = Union[List[bytes], np.ndarray]

BRIDGE_CAMERAS = ("image_0", "image_1", "image_2")
"""The three real cameras of BridgeData (``image_3`` is a blank placeholder)."""
# Octo's oxe_dataset_configs.py reads the Bridge state as POS_EULER and the action as EEF_POS deltas + gripper.
BRIDGE_STATE_NAMES = ["x", "y", "z", "roll", "pitch", "yaw", "gripper"]
BRIDGE_ACTION_NAMES = ["dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper"]
BRIDGE_FPS = 5  # BridgeData's control frequency (5 Hz in the Open X-Embodiment dataset sheet)
EXTRA_FIELDS = ("reward", "discount")
"""Per-step RLDS scalars kept as extra features (the is_first/is_last flags follow from the episode bounds)."""

_CRC32C_TABLE: List[int] = []


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli, reflected polynomial 0x82F63B78) of ``data``; ``crc32c(b"123456789") == 0xE3069283``."""
    if not _CRC32C_TABLE:
        for n in range(256):
            c = n
            for _ in range(8):
                c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
            _CRC32C_TABLE.append(c)
    table = _CRC32C_TABLE
    crc = 0xFFFFFFFF
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """TFRecord's checksum: ``((c >> 15) | (c << 17)) + 0xa282ead8`` mod 2^32 with ``c = crc32c(data)``."""
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_tfrecord(path: PathLike, verify_crc: bool = True) -> Iterator[bytes]:
    """The records of a TFRecord file, checking both checksums of each (``verify_crc``)."""
    data = Path(path).read_bytes()
    pos, k = 0, 0
    while pos < len(data):
        if pos + 12 > len(data):
            raise ValueError(f"{path}: truncated record header at byte {pos} (record {k})")
        header = data[pos:pos + 8]
        (length,), (length_crc,) = struct.unpack("<Q", header), struct.unpack("<I", data[pos + 8:pos + 12])
        end = pos + 12 + length + 4
        if end > len(data):
            raise ValueError(f"{path}: record {k} at byte {pos} claims {length} bytes but the file ends first")
        payload = data[pos + 12:pos + 12 + length]
        if verify_crc:
            (payload_crc,) = struct.unpack("<I", data[end - 4:end])
            if masked_crc32c(header) != length_crc or masked_crc32c(payload) != payload_crc:
                raise ValueError(f"{path}: record {k} at byte {pos} fails its CRC check (corrupt file)")
        yield payload
        pos, k = end, k + 1


# ------------------------------------------------------------------------------------------ protobuf wire


def _varint(buf: bytes, pos: int) -> Tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes) -> Iterator[Tuple[int, int, Union[int, bytes]]]:
    """``(field number, wire type, value)`` of a protobuf message: ints for varints, bytes otherwise."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield number, wire, value
        elif wire == 2:
            size, pos = _varint(buf, pos)
            yield number, wire, buf[pos:pos + size]
            pos += size
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            yield number, wire, buf[pos:pos + size]
            pos += size
        else:
            raise ValueError(f"unsupported protobuf wire type {wire} (field {number})")


def _feature(buf: bytes) -> FeatureValue:
    """A ``tf.train.Feature``: list of bytes, float32 array or int64 array."""
    for kind, _, payload in _fields(buf):
        values = [v for _, _, v in _fields(payload)] if isinstance(payload, bytes) else []
        if kind == 1:  # BytesList
            return [bytes(v) for v in values if isinstance(v, bytes)]
        if kind == 2:  # FloatList: packed (wire 2) or one fixed32 per value (wire 5), both little-endian float32
            return np.frombuffer(b"".join(v for v in values if isinstance(v, bytes)), dtype="<f4").astype(np.float32)
        if kind == 3:  # Int64List: packed varints (wire 2) or one varint per value (wire 0)
            ints: List[int] = []
            for v in values:
                if isinstance(v, bytes):
                    pos = 0
                    while pos < len(v):
                        n, pos = _varint(v, pos)
                        ints.append(n)
                else:
                    ints.append(v)
            return np.array(ints, dtype=np.uint64).astype(np.int64)  # varints hold negatives as two's complement
    return []


def parse_example(record: bytes) -> Dict[str, FeatureValue]:
    """A serialized ``tf.train.Example`` -> ``{name: list of bytes | float32 array | int64 array}``."""
    out: Dict[str, FeatureValue] = {}
    for number, _, features in _fields(record):
        if number != 1 or not isinstance(features, bytes):
            continue
        for entry_number, _, entry in _fields(features):
            if entry_number != 1 or not isinstance(entry, bytes):
                continue
            parts = {n: v for n, _, v in _fields(entry) if isinstance(v, bytes)}
            out[parts[1].decode("utf-8")] = _feature(parts.get(2, b""))
    return out


# ------------------------------------------------------------------------------------------------- episodes


def _decode_jpeg(data: bytes, where: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, EOFError) as exc:  # a full decode: a truncated JPEG raises here
        raise EpisodeError(f"{where}: cannot decode its JPEG ({type(exc).__name__}: {exc})") from None


def _instruction(value: bytes, where: str) -> str:
    """A step's language instruction as text (:func:`~alignkit.core.text.decode_text`: UTF-8, never replaced)."""
    try:
        return decode_text(bytes(value), where)
    except TextDecodeError as exc:
        raise EpisodeError(str(exc)) from None


def _single_task(instructions: Sequence[str], where: str) -> str:
    tasks = sorted(set(instructions))
    if len(tasks) > 1:
        raise EpisodeError(f"{where}: the language instruction changes within the episode ({tasks}); an Episode "
                           "holds one task")
    return tasks[0] if tasks else ""


def episode_from_example(example: Dict[str, FeatureValue], cameras: Sequence[str], where: str) -> Episode:
    """An RLDS episode (parsed :func:`parse_example`) as an :class:`Episode` (cameras, state, action, task, extras)."""
    instructions = [_instruction(v, f"{where} step {t} language_instruction")
                    for t, v in enumerate(example.get("steps/language_instruction", []))]
    steps = len(instructions) or len(example.get("steps/is_first", []))
    if steps == 0:
        raise EpisodeError(f"{where}: no steps (no steps/language_instruction or steps/is_first)")

    def per_step(name: str) -> np.ndarray:
        """``steps/<name>`` as float32 ``(steps, D)``."""
        if f"steps/{name}" not in example:
            raise EpisodeError(f"{where}: no 'steps/{name}' in the record (its keys: {', '.join(sorted(example))})")
        values = np.asarray(example[f"steps/{name}"], dtype=np.float32)
        if values.size % steps:
            raise EpisodeError(f"{where}: steps/{name} has {values.size} values, not a multiple of its {steps} steps")
        return values.reshape(steps, -1)

    images = {}
    for cam in cameras:
        jpegs = example.get(f"steps/observation/{cam}")
        if jpegs is None:
            raise EpisodeError(f"{where}: no camera '{cam}' (steps/observation/{cam})")
        images[cam] = np.stack([_decode_jpeg(bytes(j), f"{where} camera {cam} step {t}") for t, j in enumerate(jpegs)])
    path = example.get("episode_metadata/file_path", [b""])
    source = f"{where} ({bytes(path[0]).decode('utf-8')})" if len(path) else where
    return Episode(images=images, state=per_step("observation/state"), action=per_step("action"),
                   task=_single_task(instructions, where), source=source,
                   extras={k: per_step(k)[:, 0] for k in EXTRA_FIELDS if f"steps/{k}" in example})


def read_rlds_episodes(src: PathLike, cameras: Sequence[str] = BRIDGE_CAMERAS, split: str = "train",
                       skipped: Optional[List[Tuple[str, str]]] = None) -> Iterator[Episode]:
    """The episodes of an RLDS source, in file order, without TensorFlow.

    ``src``: a TFDS folder (its ``*-<split>.tfrecord*`` shards are read in name order), a TFRecord file,
    or an ``.npz`` laid out like ``bridge_debug_train.npz`` (``image_k`` ``(N, T, H, W, 3)``,
    ``state``/``action`` ``(N, T, D)``, ``language_instruction`` ``(N,)``, ``reward``/``discount``
    ``(N, T)``, ``file_path`` ``(N,)``). With a ``skipped`` list, bad episodes (EpisodeError) are
    appended to it as ``(where, reason)`` instead of raising.
    """
    src = Path(src)
    loaders = _npz_loaders(src, cameras) if src.suffix == ".npz" else _tfrecord_loaders(src, cameras, split)
    for where, load in loaders:
        try:
            yield load()
        except EpisodeError as exc:
            if skipped is None:
                raise
            skipped.append((where, str(exc)))


def _tfrecord_loaders(src: Path, cameras: Sequence[str], split: str) -> Iterator[Tuple[str, Callable[[], Episode]]]:
    if src.is_file():
        files = [src]
    else:
        files = sorted(p for p in src.rglob(f"*-{split}.tfrecord*") if p.is_file())
        if not files:
            raise FileNotFoundError(f"no '*-{split}.tfrecord*' file under {src}; point SRC at an RLDS/TFDS dataset "
                                    "folder, a .tfrecord file or an .npz")
    for path in files:
        for k, record in enumerate(read_tfrecord(path)):
            where = f"{path} record {k}"
            yield where, partial(_example_episode, record, cameras, where)


def _example_episode(record: bytes, cameras: Sequence[str], where: str) -> Episode:
    return episode_from_example(parse_example(record), cameras, where)


def _npz_loaders(src: Path, cameras: Sequence[str]) -> Iterator[Tuple[str, Callable[[], Episode]]]:
    arrays = load_npz(src)  # ValueError naming a truncated archive or an object array (refused)
    missing = [k for k in (*cameras, "state", "action", "language_instruction") if k not in arrays]
    if missing:
        raise KeyError(f"{src} lacks arrays {missing}; it has {sorted(arrays)}")
    for k in range(len(arrays["action"])):
        where = f"{src} episode {k}"
        yield where, partial(_npz_episode, arrays, k, cameras, where)


def _npz_episode(arrays: Dict[str, np.ndarray], k: int, cameras: Sequence[str], where: str) -> Episode:
    source = f"{where} ({arrays['file_path'][k]})" if "file_path" in arrays else where
    return Episode(images={c: arrays[c][k] for c in cameras}, state=arrays["state"][k], action=arrays["action"][k],
                   task=str(arrays["language_instruction"][k]), source=source,
                   extras={f: arrays[f][k].astype(np.float32) for f in EXTRA_FIELDS if f in arrays})


@dataclass
class ConversionReport:
    """What :func:`convert_rlds` wrote: the dataset folder, counts, tasks and the episodes it left out."""

    root: Path
    episodes: int
    frames: int
    tasks: List[str]
    skipped: List[Tuple[str, str]] = field(default_factory=list)


def convert_rlds(src: PathLike, dst: PathLike, fps: int = BRIDGE_FPS, cameras: Sequence[str] = BRIDGE_CAMERAS,
                 split: str = "train", codec: str = "libx264", robot_type: str = "widowx",
                 state_names: Optional[Sequence[str]] = BRIDGE_STATE_NAMES,
                 action_names: Optional[Sequence[str]] = BRIDGE_ACTION_NAMES, skip_bad: bool = False,
                 progress: bool = False) -> ConversionReport:
    """Convert RLDS episodes (see :func:`read_rlds_episodes`) into a LeRobot v3.0 dataset at ``dst``.

    Every step is kept: camera ``c`` -> ``observation.images.c``, ``observation/state`` ->
    ``observation.state`` (dimension names ``state_names``), ``action`` (``action_names``), the
    instruction -> the episode's task, ``reward``/``discount`` -> extra features. ``codec="libx264rgb"``
    stores the frames losslessly (see :mod:`alignkit.domains.robotics.lerobot.writer`). Bad episodes raise, or
    are skipped and reported with ``skip_bad``. ``progress`` shows a tqdm bar.
    """
    skipped: List[Tuple[str, str]] = []
    features = {name: {"names": list(names)} for name, names in
                (("observation.state", state_names), ("action", action_names)) if names is not None}
    episodes: Iterator[Episode] = read_rlds_episodes(src, cameras=cameras, split=split,
                                                     skipped=skipped if skip_bad else None)
    if progress:
        from tqdm.auto import tqdm
        episodes = iter(tqdm(episodes, desc=f"convert {Path(src).name}", unit="episode"))
    from alignkit.domains.robotics.lerobot.writer import LeRobotWriter  # pyarrow and torch: only when writing
    with LeRobotWriter(dst, fps=fps, robot_type=robot_type, features=features, codec=codec) as writer:
        for episode in episodes:
            try:
                writer.add_episode(episode)
            except EpisodeError as exc:  # differs from the first episode; nothing of it was written
                if not skip_bad:
                    raise
                skipped.append((episode.source, str(exc)))
    return ConversionReport(root=Path(dst), episodes=writer.num_episodes, frames=writer.num_frames,
                            tasks=list(writer.tasks), skipped=skipped)
