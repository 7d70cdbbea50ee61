"""Video files with PyAV: encode, decode selected frames, seek, probe. One module for every domain.

Decoding:

* :func:`read_frames` decodes the frames a selector asks for from a path or bytes: it seeks to the
  keyframe at or before the first wanted frame and decodes forward to the last one (never the whole
  file), converting to RGB only the frames that are kept;
* :class:`VideoFrameReader` keeps one file open for random access by frame index (frame ``k`` is the
  frame at time ``k / fps``), decodes forward without seeking for nearby requests and keeps the last
  decoded frames; :class:`ReaderCache` holds a few open readers per process;
* :func:`probe_video`, :func:`video_frame_count` and :func:`video_feature_info` read the header.

Encoding: :class:`VideoWriter` appends frames to one file (frame ``n`` has pts ``n``, time ``n / fps``)
with any of :data:`VIDEO_CODECS`; :func:`write_video` writes a whole clip (or an animated GIF).

Only real video files are read: :func:`open_video` accepts the containers of :data:`VIDEO_DEMUXERS` and a
video stream whose codec is not text art (:data:`TEXT_ART_CODECS`). FFmpeg opens far more: its ``tty`` demuxer
turns a ``.txt`` report that starts with an ANSI escape into "frames", and its image demuxers
(``png_pipe``, ``jpeg_pipe``, ``image2``, ...) turn one still image (or a DICOM file's TIFF-like preamble)
into a one-frame "video"; all of these are refused. A truncated file gives a :class:`VideoError` or the
right frames, never fewer frames than the header promises and never frames decoded from garbage: frame
``k`` is the frame at ``k / fps`` after the first frame's time stamp, a container without a frame count
(Matroska, WebM) must hold packets for the duration its header states, and a frame the decoder marks
corrupt is an error.

Every failure is a :class:`VideoError` naming the file. Decoding runs one thread per file, so readers
are safe in DataLoader worker processes.
"""
from __future__ import annotations

import io
import math
import os
from collections import OrderedDict
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

PathLike = Union[str, Path]
VideoSource = Union[str, Path, bytes, bytearray]
FrameSelector = Callable[[int, float], np.ndarray]
"""``(total frames in the file, frames per second) -> int array of frame indices`` to decode, in output order
(indices may repeat)."""

VIDEO_CODECS: Dict[str, Tuple[str, bool]] = {
    "libx264": ("yuv420p", False),
    "libsvtav1": ("yuv420p", False),
    "libx264rgb": ("rgb24", True),
    "ffv1": ("bgr0", True),
}
"""Codec name -> (pixel format of RGB input, exactly lossless). ``libx264`` (H.264 yuv420p at ``crf``: small and
near-lossless at crf 18), ``libsvtav1`` (AV1, LeRobot's default), ``libx264rgb`` (H.264 in RGB at qp 0) and
``ffv1`` (both exactly lossless). Grey input to ``ffv1`` is stored as ``gray``."""

FORMATS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".gif")


VIDEO_DEMUXERS: Dict[str, str] = {
    "mov": "MP4/MOV", "mp4": "MP4/MOV", "avi": "AVI", "matroska": "MKV/WebM", "webm": "MKV/WebM",
    "mpeg": "MPEG-PS/TS", "mpegts": "MPEG-PS/TS", "ogg": "Ogg", "flv": "FLV", "asf": "ASF/WMV", "gif": "GIF"}
"""FFmpeg demuxer name -> what it reads: the containers :func:`open_video` accepts (FFmpeg names a demuxer
like ``mov,mp4,m4a,3gp,3g2,mj2``; one listed part is enough). GIF is accepted because :func:`write_video`
writes it; single images (``image2``, ``*_pipe``), raw elementary streams (``h264``, ``hevc``) and text
(``tty``, ``bin``, ``xbin``) are not videos."""

TEXT_ART_CODECS = ("ansi", "bintext", "xbin", "idf")
"""FFmpeg "video" codecs that draw text (ANSI art, BinText, XBin, iCEDraw): never the video of a file."""


class VideoError(ValueError):
    """A video file cannot be opened, decoded or written; the message names the file."""


def source_name(source: VideoSource, name: str = "") -> str:
    """``name``, else the path, else ``<bytes>``: how errors refer to a source."""
    return name or (str(source) if not isinstance(source, (bytes, bytearray)) else "<bytes>")


def _av() -> Any:
    try:
        import av
    except ImportError as exc:  # pragma: no cover - av is in the medical and robotics extras
        raise ImportError("video files need PyAV: pip install 'alignkit[medical]' or 'alignkit[robotics]'") from exc
    return av


# ------------------------------------------------------------------------------------------------ decoding
def open_video(source: VideoSource, where: str = "") -> Any:
    """An open PyAV container of ``source`` (path or bytes) that has a video stream; :class:`VideoError` if not.

    The demuxer must be one of :data:`VIDEO_DEMUXERS` and the first video stream's codec a real video codec
    (not :data:`TEXT_ART_CODECS`, not a cover picture); the error names what FFmpeg found and what is accepted.
    """
    av = _av()
    where = source_name(source, where)
    if not isinstance(source, (bytes, bytearray)) and not Path(source).is_file():
        raise FileNotFoundError(f"video file {where} not found")
    accepted = f"accepted containers: {', '.join(dict.fromkeys(VIDEO_DEMUXERS.values()))}"
    try:
        container = av.open(io.BytesIO(bytes(source)) if isinstance(source, (bytes, bytearray)) else str(source))
    except (av.FFmpegError, ValueError, OSError) as exc:
        raise VideoError(f"cannot open video {where} ({type(exc).__name__}: {exc}); the file is corrupt, "
                         f"truncated or not a video ({accepted})") from exc
    try:
        check_video_container(container, where, accepted)
    except VideoError:
        container.close()
        raise
    return container


def check_video_container(container: Any, where: str, accepted: str = "") -> None:
    """:class:`VideoError` unless ``container`` is a video container with a video stream (see :func:`open_video`)."""
    av = _av()
    demuxer = container.format.name
    if not set(demuxer.split(",")) & set(VIDEO_DEMUXERS):
        raise VideoError(f"{where} is not a video: FFmpeg reads it with its '{demuxer}' demuxer "
                         f"({container.format.long_name}); {accepted or 'see VIDEO_DEMUXERS'}")
    if not container.streams.video:
        raise VideoError(f"{where} holds no video stream (container '{demuxer}')")
    stream = container.streams.video[0]
    if stream.codec_context is None:
        raise VideoError(f"{where}: FFmpeg has no decoder for its video stream (unknown codec, or a damaged or "
                         "truncated header)")
    codec = stream.codec_context.name
    if codec in TEXT_ART_CODECS or stream.codec_context.type != "video":
        raise VideoError(f"{where}: its first video stream is '{codec}' ({stream.codec.long_name}), text drawn as "
                         "pictures, not a video")
    if stream.disposition & av.stream.Disposition.attached_pic:
        raise VideoError(f"{where}: its first video stream is an attached cover picture ('{codec}' in "
                         f"'{demuxer}'), not a video")


def stream_layout(container: Any, stream: Any, where: str = "") -> Tuple[int, float]:
    """``(frames, fps)`` from the container header; frames counted from the packets when the header has none.

    Counted frames must cover the duration the header states (``round(seconds * fps)`` frames; the stream's
    duration, or the container's when the video is its only stream): fewer means the end of the file is
    missing, a :class:`VideoError`.
    """
    fps = float(stream.average_rate or stream.guessed_rate or math.nan)
    total = int(stream.frames or 0)
    if total <= 0:
        av = _av()
        try:
            total = sum(1 for packet in container.demux(stream) if packet.size)
            container.seek(0)
        except av.FFmpegError as exc:
            raise VideoError(f"cannot read video {where or container.name} ({type(exc).__name__}: {exc}); the file is "
                             "corrupt or truncated") from exc
        seconds = header_seconds(container, stream)
        promised = round(seconds * fps) if seconds is not None and math.isfinite(fps) else 0
        if total < promised:
            raise VideoError(f"video {where or container.name}: its header gives {seconds:.3f} s ({promised} frames at "
                             f"{fps:g} fps) but the file holds {total} frame(s); the file is truncated")
    return total, fps


def header_seconds(container: Any, stream: Any) -> Optional[float]:
    """The video's duration in seconds as the header states it (None when it states none)."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None and len(container.streams) == 1:
        return container.duration / 1_000_000  # AV_TIME_BASE
    return None


def first_pts(container: Any, stream: Any) -> int:
    """The time stamp (pts) of frame 0: the least pts among the packets before the second keyframe (H.264 in
    AVI starts at pts 1 while the stream's start time says 0), else the start time. Demuxes from the current
    position: seek before decoding."""
    lowest: Optional[int] = None
    keyframes = 0
    for n, packet in enumerate(container.demux(stream)):
        keyframes += bool(packet.is_keyframe)
        if not packet.size or keyframes > 1 or n >= 256:
            break
        if packet.pts is not None:
            lowest = packet.pts if lowest is None else min(lowest, packet.pts)
    return lowest if lowest is not None else int(stream.start_time or 0)


def decode_from(container: Any, stream: Any, target: int, index: Callable[[Any], int], first: int) -> Iterator[Any]:
    """Decoded frames of ``stream`` from the keyframe at or before pts ``target`` (frame ``first``; ``index`` maps a
    frame to its index). When the seek lands after frame ``first`` or at the end (an AVI whose index is cut off
    seeks by guessing), decoding starts again from the beginning of the file."""
    container.seek(target, stream=stream, backward=True, any_frame=False)
    frames = container.decode(stream)
    head = next(frames, None)
    if head is None or (head.pts is not None and index(head) > first):
        container.seek(0)
        frames = container.decode(stream)
        head = next(frames, None)
    if head is None:
        return  # (an exhausted PyAV generator raises StopIteration again when resumed by ``yield from``)
    yield head
    yield from frames


def frame_rgb(frame: Any) -> np.ndarray:
    """A PyAV frame as uint8 ``(H, W, 3)`` RGB; grey frames are read natively and repeated (swscale's grey to RGB
    conversion costs more than decoding)."""
    if frame.format.name == "gray":
        return np.repeat(frame.to_ndarray()[..., None], 3, axis=-1)
    return frame.to_ndarray(format="rgb24")


def select_frames(select: Optional[FrameSelector], total: int, fps: float, where: str) -> np.ndarray:
    """The frame indices ``select(total, fps)`` asks for (all frames when None), checked against ``total``."""
    if total < 1:
        raise VideoError(f"video {where} has no frames")
    if select is None:
        return np.arange(total, dtype=np.int64)
    indices = np.asarray(select(total, fps), dtype=np.int64).reshape(-1)
    if indices.size == 0 or indices.min() < 0 or indices.max() >= total:
        raise VideoError(f"frames {indices.tolist()} requested but video {where} has {total} frame(s)")
    return indices


@dataclass(frozen=True)
class DecodedFrames:
    """``frames`` uint8 ``(N, H, W, 3)`` at the file's frame ``indices`` ``(N,)``, of ``total`` frames at ``fps``."""
    frames: np.ndarray
    indices: np.ndarray
    total: int
    fps: float


def read_frames(source: VideoSource, select: Optional[FrameSelector] = None, name: str = "") -> DecodedFrames:
    """Decode the frames ``select`` asks for (all when None) from a video path or bytes.

    Seeks to the keyframe at or before the first wanted frame and decodes forward to the last one; a
    frame's index is its presentation time after frame 0's (:func:`first_pts`) times the stream's frame rate.
    :class:`VideoError` when a wanted frame is missing (the file ends early), corrupt, or cannot be decoded.
    """
    av = _av()
    where = source_name(source, name)
    with open_video(source, where) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1  # small frames: threads cost more than they give (workers parallelise)
        total, fps = stream_layout(container, stream, where)
        indices = select_frames(select, total, fps, where)
        first, last = int(indices.min()), int(indices.max())
        wanted = set(indices.tolist())
        seekable = first > 0 and math.isfinite(fps) and stream.time_base is not None
        decoded: Dict[int, np.ndarray] = {}
        reached = -1
        try:
            base = first_pts(container, stream) if seekable else 0

            def index(frame: Any) -> int:
                return round(float((frame.pts - base) * stream.time_base) * fps)

            frames = decode_from(container, stream, base + int(first / fps / stream.time_base), index, first) \
                if seekable else container.decode(stream)
            for count, frame in enumerate(frames):
                if seekable and frame.pts is None:
                    raise VideoError(f"video {where}: a frame without a time stamp; frames after a seek cannot be "
                                     "indexed")
                k = index(frame) if seekable else count
                reached = max(reached, k)
                if k > last:
                    break
                if k in wanted:
                    if frame.is_corrupt:
                        raise VideoError(f"frame {k} of video {where} decodes corrupt; the file is damaged")
                    decoded[k] = frame_rgb(frame)
        except (av.FFmpegError, ValueError) as exc:
            if isinstance(exc, VideoError):
                raise
            raise VideoError(f"cannot decode video {where} ({type(exc).__name__}: {exc}); the file is corrupt "
                             "or truncated") from exc
    missing = sorted(wanted - set(decoded))
    if missing:
        raise VideoError(f"video {where}: no frame {', '.join(map(str, missing[:5]))} (of the {total} its header "
                         f"lists; decoding reached frame {reached}); the file is truncated or corrupt")
    return DecodedFrames(np.stack([decoded[int(k)] for k in indices]), indices, total, fps)


@dataclass(frozen=True)
class VideoProbe:
    """Frame count, size and rate of a video from its header (``fps`` is nan when the header has none)."""
    frames: int
    height: int
    width: int
    fps: float


def probe_video(source: VideoSource, name: str = "") -> VideoProbe:
    """:class:`VideoProbe` of ``source`` without decoding pixels (frames counted from packets if the header has
    no count)."""
    where = source_name(source, name)
    with open_video(source, where) as container:
        stream = container.streams.video[0]
        total, fps = stream_layout(container, stream, where)
        return VideoProbe(frames=total, height=int(stream.height), width=int(stream.width), fps=fps)


def video_frame_count(path: PathLike) -> int:
    """Number of frames in the first video stream of ``path`` (from the container header when it has one)."""
    with open_video(path) as container:
        stream = container.streams.video[0]
        if not stream.frames and stream.duration is not None and stream.average_rate:
            return int(round(float(stream.duration * stream.time_base * stream.average_rate)))
        return stream_layout(container, stream, str(path))[0]  # counts packets when the header has no count


def video_feature_info(path: PathLike) -> Dict[str, Any]:
    """The ``info`` of a video feature as LeRobot's ``get_video_info`` writes it in ``meta/info.json``."""
    with open_video(path) as container:
        stream = container.streams.video[0]
        pix_fmt = stream.pix_fmt or ""
        return {"video.height": stream.height, "video.width": stream.width,
                "video.codec": stream.codec.canonical_name, "video.pix_fmt": pix_fmt,
                "video.is_depth_map": False, "video.fps": int(stream.base_rate),
                "video.channels": 1 if "gray" in pix_fmt else 4 if ("rgba" in pix_fmt or "yuva" in pix_fmt) else 3,
                "has_audio": bool(container.streams.audio)}


class VideoFrameReader:
    """Random access to the frames of one video file without decoding it whole.

    Frame ``k`` is the frame at time ``k / fps`` after frame 0's (:func:`first_pts`). To read frames ``[a, b]``,
    the reader seeks to the keyframe at or before ``a`` and decodes forward to ``b``; a request that starts at most
    ``forward_limit`` frames after the decoder's position decodes forward without seeking (sequential
    reads). The last ``keep`` decoded frames are kept, so overlapping windows decode each frame once.
    Decoding uses one thread, so a reader is safe to drop in a forked process.
    """

    def __init__(self, path: PathLike, fps: float, keep: int = 32, forward_limit: int = 16):
        from av.video.reformatter import VideoReformatter
        self.path = Path(path)
        self.fps = Fraction(fps).limit_denominator(1001)
        self.keep = keep
        self.forward_limit = forward_limit
        self._container = open_video(self.path)
        self._stream = self._container.streams.video[0]
        self._stream.codec_context.thread_count = 1
        try:
            self._origin = first_pts(self._container, self._stream)
        except _av().FFmpegError as exc:
            self._container.close()
            raise VideoError(f"cannot read video {self.path} ({type(exc).__name__}: {exc}); the file is corrupt or "
                             "truncated") from exc
        self._to_rgb = VideoReformatter()  # keeps its swscale context: ~15x faster than frame.to_ndarray("rgb24")
        self._frames: Optional[Iterator[Any]] = None
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
        av = _av()
        first, last = missing[0], missing[-1]
        remaining = set(missing)
        out: Dict[int, np.ndarray] = {}
        try:
            if self._frames is None or not 0 <= first - self._next <= self.forward_limit:
                offset = self._origin + int(first / (self.fps * self._stream.time_base))
                self._frames = decode_from(self._container, self._stream, offset, self._index, first)
            for frame in self._frames:
                if frame.pts is None:
                    raise VideoError(f"{self.path}: a frame without a time stamp; frames cannot be indexed by time")
                index = self._index(frame)
                self._next = index + 1
                if frame.is_corrupt and index in remaining:
                    raise VideoError(f"frame {index} of video {self.path} decodes corrupt; the file is damaged")
                if index >= first and not frame.is_corrupt:  # a corrupt frame is never kept for a later read
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
        except (av.FFmpegError, VideoError) as exc:
            self._frames = None
            if isinstance(exc, VideoError):
                raise
            raise VideoError(f"cannot decode video {self.path} ({type(exc).__name__}: {exc}); the file is corrupt "
                             "or truncated") from exc
        if remaining:
            first_missing = min(remaining)
            raise VideoError(f"{self.path}: no frame at index {first_missing} (time "
                             f"{float(first_missing / self.fps):.4f} s); the video ends before frame {self._next}")
        return out

    def _index(self, frame: Any) -> int:
        return int(round((frame.pts - self._origin) * self._stream.time_base * self.fps))

    def close(self) -> None:
        self._container.close()


_INHERITED_READERS: List["OrderedDict[Path, VideoFrameReader]"] = []
"""Decoders a forked process inherited: kept alive and unused there, because freeing FFmpeg state copied from
the parent deadlocks the child (seen with DataLoader workers forked after the main process read items)."""


class ReaderCache:
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


# ------------------------------------------------------------------------------------------------ encoding
def check_codec(codec: str) -> None:
    """:class:`~alignkit.core.registry.ConfigError` naming the valid codecs when ``codec`` is not one."""
    from alignkit.core.registry import ConfigError, did_you_mean
    if codec not in VIDEO_CODECS:
        raise ConfigError(f"unknown video codec '{codec}'{did_you_mean(codec, VIDEO_CODECS)}; "
                          f"choose one of {', '.join(VIDEO_CODECS)}")


class VideoWriter:
    """One video file open for appending frames; frame ``n`` of the file has pts ``n`` (time ``n / fps``).

    ``codec`` from :data:`VIDEO_CODECS`; lossy codecs are written at ``crf``, ``libx264rgb`` at qp 0, with a
    keyframe every ``gop`` frames (so a random frame costs one seek plus at most ``gop - 1`` decoded frames).
    ``grey=True`` takes ``(H, W)`` frames (``ffv1`` only, stored as ``gray``). ``bytes`` counts what was written.
    """

    def __init__(self, path: PathLike, fps: int, height: int, width: int, codec: str = "libx264", crf: int = 18,
                 gop: int = 8, grey: bool = False):
        av = _av()
        check_codec(codec)
        pix_fmt, lossless = VIDEO_CODECS[codec]
        if grey and codec != "ffv1":
            raise VideoError(f"{path}: grey frames are written with codec 'ffv1' only, not '{codec}'")
        if not lossless and codec != "libx264rgb" and (height % 2 or width % 2):
            raise VideoError(f"{path}: {codec} stores yuv420p, which needs even frame sizes; got {height}x{width}")
        options = {"g": str(gop)}
        if codec == "libx264rgb":
            options["qp"] = "0"
        elif not lossless:
            options["crf"] = str(crf)
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fps, self.grey = fps, grey
        self.frames = 0
        self.bytes = 0
        self._container = av.open(str(self.path), "w")
        self._stream = self._container.add_stream(codec, rate=fps, options=options)
        self._stream.width, self._stream.height = width, height
        self._stream.pix_fmt = "gray" if grey else pix_fmt
        self._stream.codec_context.thread_count = 1
        if codec == "ffv1":
            self._stream.codec_context.gop_size = gop

    def append(self, frames: np.ndarray) -> Tuple[float, float]:
        """Encode uint8 ``(T, H, W, 3)`` frames (``(T, H, W)`` when grey); returns their ``(from, to)`` times in s."""
        av = _av()
        start = self.frames
        fmt = "gray" if self.grey else "rgb24"
        for image in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format=fmt)
            frame.pts = self.frames
            self._mux(self._stream.encode(frame))
            self.frames += 1
        return start / self.fps, self.frames / self.fps

    def _mux(self, packets: Sequence[Any]) -> None:
        for packet in packets:
            self.bytes += packet.size
            self._container.mux(packet)

    def close(self) -> None:
        self._mux(self._stream.encode(None))
        self._container.close()

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def write_video(path: PathLike, frames: Union[np.ndarray, Sequence[np.ndarray]], fps: int = 10, scale: int = 1,
                codec: str = "libx264", crf: int = 18, gop: int = 8) -> Path:
    """Write uint8 ``frames`` to ``path`` and return it; the suffix chooses the container (:data:`FORMATS`).

    ``(T, H, W, 3)`` RGB or, with ``codec="ffv1"``, ``(T, H, W)`` grey. ``scale`` repeats every pixel
    ``scale`` times along H and W (nearest neighbour) so small frames stay sharp when viewed. yuv420p codecs
    need even sizes: odd frames are padded by edge replication. ``.gif`` is written with imageio (frames last
    ``1000 / fps`` ms; browsers raise delays under 20 ms to 100 ms, so keep ``fps <= 50``).
    """
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise VideoError(f"write_video: {path} must end in one of {', '.join(FORMATS)}")
    video = np.asarray(frames)
    grey = video.ndim == 3
    if video.dtype != np.uint8 or len(video) == 0 or not (video.ndim == 4 and video.shape[-1] == 3 or grey):
        raise VideoError(f"write_video: frames for {path} must be uint8 (T, H, W, 3) or grey (T, H, W) with T >= 1, "
                         f"got {video.dtype} {video.shape}")
    if scale > 1:
        video = video.repeat(scale, axis=1).repeat(scale, axis=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".gif":
        import imageio.v3 as iio
        iio.imwrite(path, video if not grey else np.repeat(video[..., None], 3, -1), extension=".gif",
                    duration=1000 / fps, loop=0)
        return path
    check_codec(codec)
    if VIDEO_CODECS[codec][0] == "yuv420p":
        h, w = video.shape[1:3]
        pad = ((0, 0), (0, h % 2), (0, w % 2)) + (((0, 0),) if not grey else ())
        video = np.pad(video, pad, mode="edge")
    with VideoWriter(path, fps, video.shape[1], video.shape[2], codec=codec, crf=crf, gop=gop, grey=grey) as writer:
        writer.append(video)
    return path
