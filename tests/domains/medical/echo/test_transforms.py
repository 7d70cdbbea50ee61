"""Echo clip sampling and frame transforms (MONAI array and dict versions) against hand-written references."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose

from alignkit.core.registry import ConfigError
from alignkit.domains.medical.echo.transforms import (CropToSquare, FrameTransformsd, SampleClip, SampleClipd, ToGrey,
                                                      beat_stride, clip_indices, clip_span, frame_transforms)


def numbered_video(frames: int = 20, height: int = 6, width: int = 8) -> torch.Tensor:
    """(3, T, H, W): every pixel of frame k holds k, so a clip shows which frames it took."""
    return torch.arange(frames, dtype=torch.float32).view(1, frames, 1, 1).expand(3, frames, height, width).clone()


def test_clip_indices_and_padding_rules():
    assert clip_indices(20, 4, 3, 2).tolist() == [2, 5, 8, 11]
    assert clip_indices(5, 4, 2, 0, pad="repeat").tolist() == [0, 2, 4, 4]
    assert clip_indices(5, 4, 2, 0, pad="loop").tolist() == [0, 2, 4, 1]
    assert clip_span(16, 2) == 31
    with pytest.raises(ValueError, match="0 <= start < total"):
        clip_indices(5, 4, 1, 5)
    with pytest.raises(ConfigError, match="clip pad"):
        clip_indices(5, 4, 1, 0, pad="mirror")


def test_beat_stride_covers_a_beat():
    assert beat_stride(16, 1, fps=50.0, beat_seconds=1.0) == 4  # ceil((50 - 1) / 15); 61 frames >= 50
    assert clip_span(16, 4) >= 50 > clip_span(16, 3)
    assert beat_stride(16, 5, fps=50.0, beat_seconds=1.0) == 5  # never below the asked stride
    assert beat_stride(16, 2, fps=math.nan, beat_seconds=None) == 2
    with pytest.raises(ValueError, match="frame rate"):
        beat_stride(16, 1, fps=math.nan, beat_seconds=1.0)


def test_sample_clip_starts():
    video = numbered_video(20)
    centre = SampleClip(num_frames=4, stride=2, start="centre")(video)
    assert centre.shape == (3, 4, 6, 8) and centre[0, :, 0, 0].tolist() == [6, 8, 10, 12]  # (20 - 7) // 2 = 6
    assert SampleClip(num_frames=4, stride=2, start="first")(video)[0, :, 0, 0].tolist() == [0, 2, 4, 6]
    short = SampleClip(num_frames=4, stride=3, start="random", pad="repeat")(numbered_video(5))
    assert short[0, :, 0, 0].tolist() == [0, 3, 4, 4]  # longer than the video: start 0, last frame repeated
    sampler = SampleClip(num_frames=4, stride=2, start="random").set_random_state(seed=3)
    starts = [int(sampler(video)[0, 0, 0, 0]) for _ in range(200)]
    assert set(starts) == set(range(14))  # every start whose clip fits (20 - 7 + 1)
    again = SampleClip(num_frames=4, stride=2, start="random").set_random_state(seed=3)
    assert [int(again(video)[0, 0, 0, 0]) for _ in range(200)] == starts


def test_sample_clip_covers_a_beat_from_the_frame_rate():
    video = MetaTensor(numbered_video(60), meta={"fps": 20.0})
    clip = SampleClip(num_frames=5, stride=1, start="first", beat_seconds=1.0)(video)
    assert clip[0, :, 0, 0].tolist() == [0, 5, 10, 15, 20]  # stride ceil(19 / 4) = 5: spans 21 >= 20 frames
    plain = SampleClip(num_frames=5, stride=1, start="first", beat_seconds=1.0)(numbered_video(60), fps=10.0)
    assert plain[0, :, 0, 0].tolist() == [0, 3, 6, 9, 12]
    with pytest.raises(ValueError, match="frame rate"):
        SampleClip(num_frames=5, beat_seconds=1.0)(numbered_video(60))


def test_sample_clipd_takes_the_same_frames_for_every_key():
    data = {"video": numbered_video(30), "mask": numbered_video(30)[:1] * 10, "fps": 30.0, "text": "report"}
    out = SampleClipd(["video", "mask"], num_frames=3, stride=4, beat_seconds=0.5, fps_key="fps").set_random_state(1)(
        data)
    picked = out["video"][0, :, 0, 0]
    assert out["mask"][0, :, 0, 0].tolist() == (picked * 10).tolist() and out["text"] == "report"
    assert (picked[1:] - picked[:-1]).tolist() == [7, 7]  # stride max(4, ceil(14 / 2)) = 7


def test_crop_to_square_and_grey():
    video = torch.arange(2 * 4 * 6, dtype=torch.float32).view(1, 2, 4, 6).expand(3, 2, 4, 6)
    cropped = CropToSquare("crop")(video)
    assert cropped.shape == (3, 2, 4, 4) and torch.equal(cropped, video[..., 1:5])
    padded = CropToSquare("pad")(video)
    assert padded.shape == (3, 2, 6, 6) and torch.equal(padded[..., 1:5, :], video) and padded[..., 0, :].sum() == 0
    assert CropToSquare("none")(video) is video
    rgb = torch.zeros(3, 1, 2, 2)
    rgb[0], rgb[1], rgb[2] = 100.0, 50.0, 10.0
    assert torch.allclose(ToGrey()(rgb), torch.full((1, 1, 2, 2), 0.299 * 100 + 0.587 * 50 + 0.114 * 10))
    with pytest.raises(ConfigError, match="square mode"):
        CropToSquare("fit")


def test_frame_transforms_normalise_per_channel():
    video = torch.full((3, 4, 20, 30), 127.5)
    video[1] = 255.0
    out = frame_transforms(image_size=10, channels=3, mean=(0.5, 0.5, 0.0), std=0.25)(video)
    assert out.shape == (3, 4, 10, 10)
    assert torch.allclose(out[0], torch.zeros(4, 10, 10), atol=1e-5)  # (0.5 - 0.5) / 0.25
    assert torch.allclose(out[1], torch.full((4, 10, 10), 2.0))  # (1 - 0.5) / 0.25
    assert torch.allclose(out[2], torch.full((4, 10, 10), 2.0))  # (0.5 - 0) / 0.25
    grey = frame_transforms(image_size=8, channels=1, square="pad", mean=0.0, std=1.0)(torch.full((3, 2, 4, 8), 51.0))
    assert grey.shape == (1, 2, 8, 8) and torch.isclose(grey.max(), torch.tensor(0.2), atol=1e-5)
    d = FrameTransformsd("video", image_size=10, mean=0.0, std=1.0)({"video": video, "id": "x"})
    assert d["video"].shape == (3, 4, 10, 10) and d["id"] == "x"
    with pytest.raises(ConfigError, match="std needs 1 or 3 values"):
        frame_transforms(std=(0.2, 0.3))
    with pytest.raises(ConfigError, match="channels"):
        frame_transforms(channels=2)


def test_a_full_pipeline_from_a_loaded_video():
    video = MetaTensor(numbered_video(40, 30, 40) * 6, meta={"fps": 25.0})
    pipeline = Compose([SampleClip(num_frames=8, stride=2, start="centre"),
                        *frame_transforms(image_size=16, mean=0.0, std=1.0).transforms])
    clip = pipeline(video)
    assert clip.shape == (3, 8, 16, 16)
    expected = (torch.arange(12, 28, 2, dtype=torch.float32) * 6 / 255.0)  # centre start (40 - 15) // 2 = 12
    assert torch.allclose(clip[0, :, 8, 8], expected, atol=1e-5)
    assert np.isclose(float(clip.mean()), float(expected.mean()), atol=1e-5)
