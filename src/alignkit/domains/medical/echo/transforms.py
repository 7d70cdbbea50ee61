"""Clip sampling and frame transforms for echo videos, as MONAI transforms (array and dict versions).

A video here is a channel-first tensor ``(C, T, H, W)`` (what :class:`~alignkit.domains.medical.echo.loading.LoadEcho`
gives: float values 0..255); MONAI treats ``(T, H, W)`` as its spatial dimensions, so its crops, pads and
``Resize`` with ``-1`` for ``T`` act on the frames only. A training pipeline::

    Compose([LoadEcho(), SampleClip(num_frames=16, stride=2), *frame_transforms(image_size=64, channels=3)])

gives float32 ``(3, 16, 64, 64)``. The datasets of :mod:`alignkit.domains.medical.echo.data` decode only the
frames :meth:`SampleClip.indices` picks, then apply :func:`frame_transforms`, inside DataLoader workers.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Hashable, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from monai.transforms import (CenterSpatialCrop, Compose, MapTransform, NormalizeIntensity, Randomizable, Resize,
                              ScaleIntensityRange, SpatialPad, Transform)
from torch import Tensor

from alignkit.core.params import check_choice
from alignkit.core.registry import ConfigError

CLIP_STARTS = ("random", "centre", "first")
PAD_MODES = ("repeat", "loop")
SQUARE_MODES = ("crop", "pad", "none")

ECHONET_MEAN = 0.13
ECHONET_STD = 0.19
"""Pixel mean and standard deviation of EchoNet-Dynamic videos (about 33 and 49 of 255), per channel."""

_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601


def clip_span(num_frames: int, stride: int) -> int:
    """Frames a clip of ``num_frames`` frames ``stride`` apart covers: ``(num_frames - 1) * stride + 1``."""
    return (num_frames - 1) * stride + 1


def beat_stride(num_frames: int, stride: int, fps: float, beat_seconds: Optional[float]) -> int:
    """The stride of a clip that covers a full beat: the smallest ``s >= stride`` with
    ``clip_span(num_frames, s) >= beat_seconds * fps``, i.e. ``s = max(stride, ceil((beat_seconds * fps - 1) /
    (num_frames - 1)))``; ``stride`` when ``beat_seconds`` is None. Needs a finite ``fps`` then."""
    if beat_seconds is None or num_frames < 2:
        return stride
    if not math.isfinite(fps) or fps <= 0:
        raise ValueError(f"covering a beat of {beat_seconds} s needs the video's frame rate, but it is {fps}; "
                         "set beat_seconds=None (and choose stride) for videos without one")
    return max(stride, math.ceil((beat_seconds * fps - 1) / (num_frames - 1)))


def clip_indices(total: int, num_frames: int, stride: int, start: int, pad: str = "repeat") -> np.ndarray:
    """Int64 ``(num_frames,)`` frame indices ``start + k * stride`` of a video of ``total`` frames.

    Indices past the last frame follow ``pad``: ``"repeat"`` holds the last frame (``min(i, total - 1)``),
    ``"loop"`` wraps around (``i mod total``; natural for a cine that holds whole beats).
    """
    check_choice(pad, PAD_MODES, "clip pad")
    if total < 1 or num_frames < 1 or stride < 1 or not 0 <= start < total:
        raise ValueError(f"clip_indices: needs total >= 1, num_frames >= 1, stride >= 1 and 0 <= start < total; got "
                         f"total={total}, num_frames={num_frames}, stride={stride}, start={start}")
    wanted = start + stride * np.arange(num_frames, dtype=np.int64)
    return np.minimum(wanted, total - 1) if pad == "repeat" else wanted % total


def _video_fps(video: Any, fps: Optional[float]) -> float:
    if fps is not None:
        return float(fps)
    meta = getattr(video, "meta", None) or {}
    return float(meta.get("fps", math.nan))


class SampleClip(Randomizable, Transform):
    """Pick ``num_frames`` frames ``stride`` apart from a video ``(C, T, H, W)`` -> ``(C, num_frames, H, W)``.

    - ``start``: ``"random"`` (uniform over every start whose clip fits, drawn from ``self.R``), ``"centre"``
      (``(T - span) // 2``) or ``"first"`` (0); a clip longer than the video starts at 0;
    - ``beat_seconds``: when set, the stride is raised so that the clip spans at least one beat of that
      length (:func:`beat_stride`; needs the frame rate: ``fps`` argument, or ``meta["fps"]`` of a MetaTensor);
    - ``pad``: a video shorter than the clip's span is padded by :func:`clip_indices` (``"repeat"`` the last
      frame, or ``"loop"``).

    :meth:`indices` gives the frame indices alone, so a decoder can read just those frames.
    """

    def __init__(self, num_frames: int = 16, stride: int = 1, start: str = "random",
                 beat_seconds: Optional[float] = None, pad: str = "repeat"):
        check_choice(start, CLIP_STARTS, "clip start")
        check_choice(pad, PAD_MODES, "clip pad")
        if num_frames < 1 or stride < 1:
            raise ConfigError(f"num_frames and stride must be >= 1, got {num_frames} and {stride}")
        if beat_seconds is not None and not beat_seconds > 0:
            raise ConfigError(f"beat_seconds must be positive or None, got {beat_seconds}")
        self.num_frames, self.stride, self.start = num_frames, stride, start
        self.beat_seconds, self.pad = beat_seconds, pad
        self._offset = 0

    def randomize(self, data: int) -> None:
        """Draw the start among the ``data + 1`` starts whose clip fits (``data`` = frames to spare)."""
        self._offset = int(self.R.randint(0, data + 1))

    def indices(self, total: int, fps: float = math.nan) -> np.ndarray:
        """Int64 ``(num_frames,)`` indices into a video of ``total`` frames at ``fps`` (a new draw when random)."""
        stride = beat_stride(self.num_frames, self.stride, fps, self.beat_seconds)
        spare = max(total - clip_span(self.num_frames, stride), 0)
        if self.start == "random":
            self.randomize(spare)
            offset = self._offset
        else:
            offset = spare // 2 if self.start == "centre" else 0
        return clip_indices(total, self.num_frames, stride, offset, self.pad)

    def __call__(self, video: Tensor, fps: Optional[float] = None) -> Tensor:
        if video.ndim != 4:
            raise ValueError(f"SampleClip needs a video (C, T, H, W), got shape {tuple(video.shape)}")
        picked = torch.as_tensor(self.indices(int(video.shape[1]), _video_fps(video, fps)), device=video.device)
        return video.index_select(1, picked)


class SampleClipd(Randomizable, MapTransform):
    """Dictionary version of :class:`SampleClip`: the same frames (drawn once, from the first key's length) for
    every key. The frame rate is ``data[fps_key]`` when ``fps_key`` is set, else the first video's ``meta["fps"]``."""

    def __init__(self, keys: Union[Hashable, Sequence[Hashable]], num_frames: int = 16, stride: int = 1,
                 start: str = "random", beat_seconds: Optional[float] = None, pad: str = "repeat",
                 fps_key: Optional[str] = None, allow_missing_keys: bool = False):
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.sampler = SampleClip(num_frames=num_frames, stride=stride, start=start, beat_seconds=beat_seconds,
                                  pad=pad)
        self.fps_key = fps_key

    def set_random_state(self, seed: Optional[int] = None,
                         state: Optional[np.random.RandomState] = None) -> "SampleClipd":
        super().set_random_state(seed, state)
        self.sampler.set_random_state(seed, state)
        return self

    def randomize(self, data: int) -> None:
        self.sampler.randomize(data)

    def __call__(self, data: Mapping[Hashable, Any]) -> Dict[Hashable, Any]:
        d = dict(data)
        keys = list(self.key_iterator(d))
        if not keys:
            return d
        first = d[keys[0]]
        fps = _video_fps(first, float(d[self.fps_key]) if self.fps_key else None)
        picked = torch.as_tensor(self.sampler.indices(int(first.shape[1]), fps))
        for key in keys:
            d[key] = d[key].index_select(1, picked.to(d[key].device))
        return d


class CropToSquare(Transform):
    """``(C, T, H, W)`` -> ``(C, T, S, S)``: ``"crop"`` the centred ``S = min(H, W)`` square (MONAI
    ``CenterSpatialCrop``), ``"pad"`` to ``S = max(H, W)`` with zeros, centred (MONAI ``SpatialPad``; keeps the
    whole sector), or ``"none"`` (unchanged)."""

    def __init__(self, mode: str = "crop"):
        check_choice(mode, SQUARE_MODES, "square mode")
        self.mode = mode

    def __call__(self, video: Tensor) -> Tensor:
        height, width = int(video.shape[-2]), int(video.shape[-1])
        if self.mode == "none" or height == width:
            return video
        if self.mode == "crop":
            side = min(height, width)
            return CenterSpatialCrop(roi_size=(-1, side, side))(video)
        side = max(height, width)
        return SpatialPad(spatial_size=(-1, side, side))(video)


class ToGrey(Transform):
    """``(3, T, H, W)`` RGB -> ``(1, T, H, W)`` luma ``0.299 R + 0.587 G + 0.114 B`` (ITU-R 601)."""

    def __call__(self, video: Tensor) -> Tensor:
        if video.shape[0] != 3:
            raise ValueError(f"ToGrey needs 3 channels (C, T, H, W), got shape {tuple(video.shape)}")
        weights = torch.tensor(_LUMA, dtype=video.dtype, device=video.device).view(3, 1, 1, 1)
        return (video * weights).sum(0, keepdim=True)


def _per_channel(value: Union[float, Sequence[float]], channels: int, name: str) -> List[float]:
    values = [float(value)] if isinstance(value, (int, float)) else [float(v) for v in value]
    if len(values) not in (1, channels):
        raise ConfigError(f"{name} needs 1 or {channels} values (channels={channels}), got {value!r}")
    return values * channels if len(values) == 1 else values


def frame_transforms(image_size: int = 64, channels: int = 3, square: str = "crop",
                     mean: Union[float, Sequence[float]] = ECHONET_MEAN,
                     std: Union[float, Sequence[float]] = ECHONET_STD, resize_mode: str = "area") -> Compose:
    """The per-frame pipeline of an echo clip ``(3, T, H, W)`` of values 0..255 -> float32
    ``(channels, T, image_size, image_size)``, in order:

    1. :class:`ToGrey` when ``channels == 1``;
    2. :class:`CropToSquare` (``square``);
    3. MONAI ``Resize`` to ``(T, image_size, image_size)`` (``resize_mode``, default ``"area"``: averaging, no
       aliasing of the speckle when shrinking);
    4. MONAI ``ScaleIntensityRange`` 0..255 -> 0..1;
    5. MONAI ``NormalizeIntensity``, per channel ``(x - mean) / std`` (one value is used for every channel).
    """
    if channels not in (1, 3):
        raise ConfigError(f"channels must be 1 (grey) or 3 (RGB), got {channels}")
    if image_size < 1:
        raise ConfigError(f"image_size must be positive, got {image_size}")
    means, stds = _per_channel(mean, channels, "mean"), _per_channel(std, channels, "std")
    if min(stds) <= 0:
        raise ConfigError(f"std must be positive, got {std!r}")
    steps: List[Any] = [ToGrey()] if channels == 1 else []
    steps += [CropToSquare(square), Resize(spatial_size=(-1, image_size, image_size), mode=resize_mode),
              ScaleIntensityRange(a_min=0.0, a_max=255.0, b_min=0.0, b_max=1.0),
              NormalizeIntensity(subtrahend=means, divisor=stds, channel_wise=True)]
    return Compose(steps)


class FrameTransformsd(MapTransform):
    """Dictionary version of :func:`frame_transforms` (same parameters) for each of ``keys``."""

    def __init__(self, keys: Union[Hashable, Sequence[Hashable]], image_size: int = 64, channels: int = 3,
                 square: str = "crop", mean: Union[float, Sequence[float]] = ECHONET_MEAN,
                 std: Union[float, Sequence[float]] = ECHONET_STD, resize_mode: str = "area",
                 allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.transform = frame_transforms(image_size=image_size, channels=channels, square=square, mean=mean,
                                          std=std, resize_mode=resize_mode)

    def __call__(self, data: Mapping[Hashable, Any]) -> Dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key])
        return d

