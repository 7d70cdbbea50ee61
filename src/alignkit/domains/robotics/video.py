"""Write a sequence of frames to an MP4 (PyAV, H.264) or an animated GIF (imageio), e.g. a rollout."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence, Union

import av
import imageio.v3 as iio
import numpy as np

FORMATS = (".mp4", ".gif")


def write_video(path: Union[str, Path], frames: Union[np.ndarray, Sequence[np.ndarray]], fps: int = 10,
                scale: int = 1) -> Path:
    """Write uint8 ``(T, H, W, 3)`` ``frames`` to ``path`` (``.mp4`` or ``.gif``, by suffix); the path.

    ``scale`` repeats every pixel ``scale`` times along H and W (nearest neighbour), so 64x64 frames
    stay sharp when viewed. MP4 is H.264 in yuv420p at CRF 18 (frames padded by edge replication to
    even sizes, as the codec requires); GIF frames last ``1000 / fps`` ms (browsers raise delays under
    20 ms to 100 ms, so keep ``fps <= 50``).
    """
    path = Path(path)
    if path.suffix not in FORMATS:
        raise ValueError(f"write_video: {path} must end in one of {', '.join(FORMATS)}")
    video = np.asarray(frames)
    if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3 or len(video) == 0:
        raise ValueError(f"write_video: frames for {path} must be uint8 (T, H, W, 3) with T >= 1, got "
                         f"{video.dtype} {video.shape}")
    if scale > 1:
        video = video.repeat(scale, axis=1).repeat(scale, axis=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gif":
        iio.imwrite(path, video, extension=".gif", duration=1000 / fps, loop=0)
        return path
    h, w = video.shape[1:3]
    video = np.pad(video, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = video.shape[2], video.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18"}
        for frame in video:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path
