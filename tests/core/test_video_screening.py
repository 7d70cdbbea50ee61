"""The video readers read videos only, and a truncated video gives a named error or the right frames.

FFmpeg opens more than videos: its ``tty`` demuxer draws a ``.txt`` that starts with an ANSI escape as "frames",
its image demuxers read one PNG or JPEG as a one-frame video. Cutting a file anywhere must never give frames
decoded from garbage, frames labelled with the wrong index, or fewer frames than were asked for.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, List

import numpy as np
import pytest

av = pytest.importorskip("av")
from alignkit.core.video import (VideoError, VideoFrameReader, probe_video, read_frames,  # noqa: E402
                                 video_frame_count, write_video)

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
README = SHARED / "pointcloud" / "meshes" / "cow" / "README.md"
STILLS = [SHARED / "medical" / "cxr" / "00000001_000.png",
          SHARED / "pointcloud" / "rgbd" / "livingroom1" / "color" / "00000.jpg"]


def readers(path: Path) -> List[Callable[[], object]]:
    """Every way core.video opens a file."""
    return [lambda: read_frames(path), lambda: read_frames(path, lambda n, fps: np.array([0])),
            lambda: probe_video(path), lambda: video_frame_count(path), lambda: VideoFrameReader(path, fps=10)]


def gradient_video(frames: int = 24, height: int = 32, width: int = 48) -> np.ndarray:
    """uint8 (T, H, W, 3) frames that differ from each other everywhere (frame t shifted by 10 t)."""
    base = np.linspace(0, 255, height * width * 3).reshape(height, width, 3)
    return np.stack([(base + 10 * t) % 256 for t in range(frames)]).astype(np.uint8)


# ------------------------------------------------------------------------------------------- not a video


def test_a_report_with_an_ansi_escape_is_not_a_video(tmp_path: Path) -> None:
    report = tmp_path / "report.txt"
    report.write_bytes(b"\x1b[1mFINDINGS:\x1b[0m Normal left ventricular size and function.\n"
                       b"IMPRESSION: Normal study.\n" * 5)
    if "tty" in av.formats_available:  # the trap is real: FFmpeg itself draws this report as 640x400 frames
        with av.open(str(report)) as container:
            assert container.format.name == "tty" and container.streams.video[0].codec_context.name == "ansi"
    for read in readers(report):
        with pytest.raises(VideoError, match=r"report\.txt is not a video: .*'tty' demuxer.*accepted containers: "
                                             r"MP4/MOV, AVI, MKV/WebM"):
            read()


def test_a_real_readme_is_not_a_video() -> None:
    assert README.is_file(), f"sample data missing: {README} (see ../shared/data/README)"
    for read in readers(README):
        with pytest.raises(VideoError, match=rf"{README}.*not a video \(accepted containers"):
            read()


@pytest.mark.parametrize("still", STILLS, ids=lambda p: p.suffix)
def test_a_still_image_is_not_a_one_frame_video(still: Path) -> None:
    assert still.is_file(), f"sample data missing: {still} (see ../shared/data/README)"
    with pytest.raises(VideoError, match=rf"{still} is not a video: FFmpeg reads it with its '(png_pipe|image2)'"):
        read_frames(still)
    with pytest.raises(VideoError, match="is not a video"):
        read_frames(still.read_bytes(), name="a shard's mp4 field")


def test_an_audio_file_with_a_cover_picture_is_not_a_video(tmp_path: Path) -> None:
    path = tmp_path / "song.m4a"
    with av.open(str(path), "w", format="mp4") as out:
        audio = out.add_stream("aac", rate=8000)
        cover = out.add_stream("mjpeg", rate=1)
        cover.width, cover.height, cover.pix_fmt = 16, 16, "yuvj420p"
        cover.disposition = av.stream.Disposition.attached_pic
        for packet in cover.encode(av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")):
            out.mux(packet)
        for packet in cover.encode(None):
            out.mux(packet)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 8000, 0
        for packet in [*audio.encode(frame), *audio.encode(None)]:
            out.mux(packet)
    with av.open(str(path)) as container:
        video = container.streams.video
        assert video and video[0].disposition & av.stream.Disposition.attached_pic, \
            "the test file lost its cover-picture disposition: the case is not built"
    with pytest.raises(VideoError, match=r"song\.m4a: its first video stream is an attached cover picture"):
        read_frames(path)


def test_written_videos_and_gifs_still_read(tmp_path: Path) -> None:
    frames = gradient_video(6, 16, 16)
    for name, codec in (("a.mp4", "libx264rgb"), ("a.mkv", "ffv1"), ("a.avi", "ffv1")):
        path = write_video(tmp_path / name, frames, fps=10, codec=codec, gop=2)
        assert np.array_equal(read_frames(path).frames, frames), name
        assert np.array_equal(VideoFrameReader(path, fps=10).read([4, 1]), frames[[4, 1]]), name
    gif = write_video(tmp_path / "a.gif", frames, fps=10)
    assert read_frames(gif).frames.shape == (6, 16, 16, 3)
    assert np.array_equal(read_frames(gif, lambda n, fps: np.array([4])).frames, read_frames(gif).frames[[4]])


# ----------------------------------------------------------------------------------------- truncation


def test_h264_in_avi_indexes_frames_from_the_first_time_stamp(tmp_path: Path) -> None:
    """H.264 in AVI starts at pts 1: a seek read of frame k must give frame k, not frame k - 1 or an error."""
    path = write_video(tmp_path / "a.avi", gradient_video(), fps=10, codec="libx264rgb", gop=8)
    every = read_frames(path).frames
    for k in (1, 5, 12, 23):
        assert np.array_equal(read_frames(path, lambda n, fps: np.array([k])).frames[0], every[k]), k
    assert np.array_equal(VideoFrameReader(path, fps=10).read([0, 9, 23]), every[[0, 9, 23]])


CONTAINERS = [("mp4", "libx264"), ("avi", "libx264"), ("avi", "ffv1"), ("mkv", "ffv1"), ("mkv", "libx264")]


@pytest.mark.parametrize("suffix,codec", CONTAINERS, ids=[f"{s}-{c}" for s, c in CONTAINERS])
def test_a_truncated_video_gives_a_named_error_or_the_right_frames(tmp_path: Path, suffix: str, codec: str) -> None:
    """Cut the file at 16 offsets; every read (all frames, the last, the middle, random access) either raises a
    VideoError naming the file or returns exactly the frames of the whole file at the indices asked for."""
    frames = gradient_video()
    whole = write_video(tmp_path / f"whole.{suffix}", frames, fps=10, codec=codec, gop=8)
    data = whole.read_bytes()
    reference = read_frames(whole).frames
    if codec == "ffv1":
        assert np.array_equal(reference, frames)
    outcomes = set()
    for cut in np.linspace(0.02, 0.998, 16):
        path = tmp_path / f"cut{cut:.3f}.{suffix}"
        path.write_bytes(data[:int(len(data) * cut)])
        reads = {"all": lambda: read_frames(path), "last": lambda: read_frames(path, lambda n, fps: np.array([n - 1])),
                 "middle": lambda: read_frames(path, lambda n, fps: np.array([n // 2, n // 4]))}
        for what, read in reads.items():
            try:
                decoded = read()
            except VideoError as exc:
                assert str(path) in str(exc), (cut, what, exc)
                outcomes.add("error")
                continue
            assert decoded.total == len(frames), (cut, what, decoded.total)  # never fewer frames than there were
            assert np.array_equal(decoded.frames, reference[decoded.indices]), (cut, what)
            outcomes.add("frames")
        try:
            got = VideoFrameReader(path, fps=10).read(list(range(len(frames))))
        except VideoError as exc:
            assert str(path) in str(exc), (cut, exc)
        else:
            assert np.array_equal(got, reference), cut
    assert "error" in outcomes


def test_a_matroska_file_cut_short_does_not_pass_for_a_shorter_video(tmp_path: Path) -> None:
    """Matroska stores no frame count: frames are counted from packets, which must cover the header's duration."""
    whole = write_video(tmp_path / "whole.mkv", gradient_video(), fps=10, codec="ffv1", gop=1)
    data = whole.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[:len(data) // 2])
    with pytest.raises(VideoError, match=r"cut\.mkv: its header gives 2\.400 s \(24 frames at 10 fps\) but the file "
                                         r"holds \d+ frame\(s\); the file is truncated"):
        read_frames(cut)
    with pytest.raises(VideoError, match="truncated"):
        probe_video(cut)
    with pytest.raises(VideoError, match="truncated"):
        video_frame_count(cut)
