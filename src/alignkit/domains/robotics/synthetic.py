"""Synthetic demonstration episodes: for tests, benchmarks and one-step config checks, not for learning.

Frames are a smooth moving blob over gradients (they compress like rendered scenes); states are Gaussian;
actions are Gaussian, or integers in ``[0, num_actions)`` for discrete-action envs; tasks cycle through
``tasks`` instructions. Every value is drawn from ``numpy.random.default_rng(seed)``.

    write_synthetic_lerobot("tiny", n=3, length=6, cameras=["view"], image_size=56, state_dim=6, action_dim=1,
                            num_actions=7)
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence, Union

import numpy as np

from alignkit.domains.robotics.episode import Episode
from alignkit.domains.robotics.lerobot import LeRobotWriter


def synthetic_episodes(n: int, length: int, cameras: Sequence[str] = ("cam0",), image_size: int = 64,
                       state_dim: int = 8, action_dim: int = 4, num_actions: int = 0, tasks: int = 4,
                       seed: int = 0) -> Iterator[Episode]:
    """``n`` episodes of ``length`` steps: uint8 ``(length, S, S, 3)`` frames per camera (``S = image_size``;
    camera ``c`` is the first one rolled by ``7 c`` pixels), float32 ``(length, state_dim)`` states and
    ``(length, action_dim)`` actions, task ``"task k mod tasks"``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:image_size, 0:image_size].astype(np.float32)
    for k in range(n):
        cx, cy = rng.uniform(0.15, 0.85, size=2) * image_size
        vx, vy = rng.uniform(-0.6, 0.6, size=2)
        frames = []
        for t in range(length):
            blob = 180 * np.exp(-((xx - cx - vx * t) ** 2 + (yy - cy - vy * t) ** 2) / 30.0)
            frames.append(np.stack([30 + xx + blob, 50 + yy, 120 - blob / 2 + 2 * k % 60], axis=-1))
        images = np.clip(np.stack(frames), 0, 255).astype(np.uint8)
        action = rng.integers(0, num_actions, size=(length, 1)) if num_actions else \
            rng.normal(size=(length, action_dim))
        yield Episode(images={cam: np.roll(images, 7 * c, axis=2) for c, cam in enumerate(cameras)},
                      state=rng.normal(size=(length, state_dim)), action=action, task=f"task {k % tasks}",
                      source=f"synthetic {k}")


def write_synthetic_lerobot(root: Union[str, Path], n: int, length: int, fps: int = 10, codec: str = "libx264",
                            gop: int = 8, **episode_params) -> Path:
    """Write :func:`synthetic_episodes` (``episode_params`` are its keywords) as a LeRobot v3.0 dataset."""
    with LeRobotWriter(root, fps=fps, codec=codec, gop=gop) as writer:
        for episode in synthetic_episodes(n, length, **episode_params):
            writer.add_episode(episode)
    return Path(root)
