"""One demonstration episode in memory: what simulators and converters produce and dataset writers consume."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List

import numpy as np


class EpisodeError(ValueError):
    """An episode whose arrays disagree with each other; the message names the episode."""


@dataclass
class Episode:
    """A demonstration of ``T`` steps.

    ``images[camera]`` is uint8 ``(T, H, W, 3)`` (the observation before the action of each step);
    ``state`` is float32 ``(T, S)`` (proprioception, or the simulator's low-dimensional observation);
    ``action`` is float32 ``(T, A)`` (the action taken at each step); ``task`` is the instruction in
    natural language. ``success`` tells whether the episode reached its goal; ``source`` names where it
    came from (``"metaworld/reach-v3 seed 12"``, a file path, ...) for error messages. ``extras`` holds
    further per-step float arrays of length ``T`` (``reward``, ...), written as extra features.
    """

    images: Dict[str, np.ndarray]
    state: np.ndarray
    action: np.ndarray
    task: str
    success: bool = True
    source: str = ""
    extras: Dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.state = np.asarray(self.state, dtype=np.float32)
        self.action = np.asarray(self.action, dtype=np.float32)
        self.validate()

    @property
    def length(self) -> int:
        return int(self.action.shape[0])

    @property
    def cameras(self) -> List[str]:
        return sorted(self.images)

    def validate(self) -> None:
        """Raise :class:`EpisodeError` naming the episode when lengths, ranks or dtypes disagree."""
        where = self.source or "episode"
        if self.action.ndim != 2 or self.state.ndim != 2:
            raise EpisodeError(f"{where}: action and state must be (T, A) and (T, S), got {self.action.shape} "
                               f"and {self.state.shape}")
        t = self.length
        if t == 0:
            raise EpisodeError(f"{where}: empty episode (no steps)")
        if self.state.shape[0] != t:
            raise EpisodeError(f"{where}: {self.state.shape[0]} states for {t} actions")
        for cam, frames in self.images.items():
            if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
                raise EpisodeError(f"{where}: camera {cam!r} must be uint8 (T, H, W, 3), got {frames.dtype} "
                                   f"{frames.shape}")
            if frames.shape[0] != t:
                raise EpisodeError(f"{where}: camera {cam!r} has {frames.shape[0]} frames for {t} actions")
        for name, values in self.extras.items():
            if len(values) != t:
                raise EpisodeError(f"{where}: extra {name!r} has {len(values)} values for {t} actions")
        if not self.task.strip():
            raise EpisodeError(f"{where}: empty task instruction")
