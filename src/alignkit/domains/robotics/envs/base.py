"""The language-conditioned simulator interface every adapter implements, env specs, and seeded layouts.

A :class:`LanguageEnv` runs one episode at a time: ``reset(seed, task)`` lays out a scene from ``seed``
and returns the first observation with the episode's instruction in natural language; ``step(action)``
advances it; ``expert()`` is a scripted expert's action for the current state (it may read the
simulator's privileged state). An observation is ``{"images": {camera: uint8 (H, W, 3)},
"state": float32 (S,)}``.

Environments are chosen by name from :data:`ENVS` (``metaworld``, ``babyai``, ``babyai-chain``,
``ai2thor``); an :class:`EnvSpec` (a name and constructor keywords, picklable) builds them, also in
vector-env worker processes.

Train and test layouts are kept apart by :func:`layout_seed`: episode ``k`` of a run with base seed ``s``
is laid out from ``2 (s + k)`` for the ``train`` split and ``2 (s + k) + 1`` for ``test``, so no
seed, and hence no layout drawn from it, is shared between the splits. Demonstration collection uses
``train`` and evaluation ``test`` by default.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import gymnasium as gym
import numpy as np

from alignkit.core.registry import ConfigError, Registry

ENVS = Registry("environment")

Observation = Dict[str, Any]
"""``{"images": {camera: uint8 (H, W, 3)}, "state": float32 (S,)}``."""

SPLITS = ("train", "test")


def layout_seed(seed: int, split: str) -> int:
    """The simulator seed of an episode: ``2 seed`` for ``train``, ``2 seed + 1`` for ``test``.

    Even and odd seeds never coincide, so train and test layouts are disjoint whatever base seeds
    and episode counts the two runs use.
    """
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    if seed < 0:
        raise ConfigError(f"episode seeds must be >= 0, got {seed}")
    return 2 * seed + SPLITS.index(split)


class LanguageEnv(ABC):
    """A simulator whose episodes come with a natural-language instruction.

    Subclasses set ``task_names`` (the tasks ``reset`` can lay out), ``cameras`` (image keys, possibly
    empty), ``image_size`` (H = W of every camera), ``state_dim``, ``action_space``, ``max_steps``
    (episodes are truncated after that many steps) and ``fps`` (the control rate, for datasets and
    videos). ``step`` returns ``info["success"]`` (bool); episodes terminate on success.
    """

    task_names: List[str]
    cameras: List[str]
    image_size: int
    state_dim: int
    action_space: gym.Space
    max_steps: int
    fps: int

    @abstractmethod
    def reset(self, seed: int, task: Optional[str] = None) -> Tuple[Observation, str]:
        """Lay out ``task`` (default ``task_names[seed % len(task_names)]``) from ``seed``; (obs, instruction)."""

    @abstractmethod
    def step(self, action: Any) -> Tuple[Observation, float, bool, bool, Dict[str, Any]]:
        """(obs, reward, terminated, truncated, info with ``"success"``)."""

    @abstractmethod
    def expert(self) -> np.ndarray:
        """The scripted expert's action for the current state (in this env's action format)."""

    def instruction(self, seed: int, task: Optional[str] = None) -> str:
        """The instruction ``reset(seed, task)`` would return.

        This default resets the env (ending its current episode), as BabyAI must generate a level to
        know its mission; Meta-World and AI2-THOR compute it without touching the simulator.
        """
        return self.reset(seed, task)[1]

    def close(self) -> None:
        """Release simulator resources (renderers, processes)."""

    @property
    def observation_space(self) -> gym.spaces.Dict:
        size = (self.image_size, self.image_size, 3)
        images = gym.spaces.Dict({cam: gym.spaces.Box(0, 255, size, np.uint8) for cam in self.cameras})
        state = gym.spaces.Box(-np.inf, np.inf, (self.state_dim,), np.float32)
        return gym.spaces.Dict({"images": images, "state": state})

    def action_vector(self, action: Any) -> np.ndarray:
        """``action`` as the float32 ``(A,)`` row stored in an :class:`Episode` (a discrete action as ``(1,)``)."""
        return np.asarray(action, dtype=np.float32).reshape(-1)

    def pick_task(self, seed: int, task: Optional[str]) -> str:
        """``task`` checked against ``task_names``, or the seed's task in round-robin order."""
        if task is None:
            return self.task_names[seed % len(self.task_names)]
        if task not in self.task_names:
            raise ConfigError(f"{type(self).__name__}: unknown task {task!r}; this env runs "
                              f"{', '.join(self.task_names)}")
        return task


@dataclass(frozen=True)
class EnvSpec:
    """A registered environment name and its constructor keywords (picklable; builds envs in workers)."""

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        ENVS.check_params(self.name, dict(self.params), where=f"env spec {self.name!r}")

    def make(self) -> LanguageEnv:
        return ENVS.build(self.name, **dict(self.params))

    def replace(self, **params: Any) -> "EnvSpec":
        """This spec with some constructor keywords changed."""
        return EnvSpec(self.name, {**self.params, **params})


SpecLike = Union[str, EnvSpec, Mapping[str, Any]]
"""An :class:`EnvSpec`, a registered env name, or a config mapping ``{"name": ..., **params}``."""


def as_env_spec(spec: SpecLike) -> EnvSpec:
    """An :class:`EnvSpec` from a spec, a registered name, or a config mapping ``{"name": ..., **params}``."""
    if isinstance(spec, EnvSpec):
        return spec
    if isinstance(spec, str):
        return EnvSpec(spec)
    params = dict(spec)
    if "name" not in params:
        raise ConfigError(f"an env config needs a 'name' (one of {', '.join(ENVS.names())}), got keys "
                          f"{sorted(params)}")
    name = params.pop("name")
    return EnvSpec(name, params)
