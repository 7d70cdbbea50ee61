"""Scripted-expert demonstrations: roll an env's expert and yield :class:`Episode` s, or write a LeRobot dataset.

Episode ``k`` of a task is laid out from ``layout_seed(seed + k, split)`` (``split="train"`` by default,
disjoint from evaluation's ``"test"``). With ``success_only``, failed attempts are dropped and further
seeds tried, up to ``3 n + 10`` attempts per task. In a chain env (``babyai-chain``) every instruction's
stretch of an episode is one demonstration with that instruction.

    write_demonstrations({"name": "metaworld", "tasks": ["reach-v3", "push-v3"]}, "data/mw", n=30)
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Union

import numpy as np
from tqdm.auto import tqdm

from alignkit.domains.robotics.envs.base import LanguageEnv, SpecLike, as_env_spec, layout_seed
from alignkit.domains.robotics.episode import Episode
from alignkit.domains.robotics.lerobot import LeRobotWriter


def expert_episodes(env: LanguageEnv, task: str, seed: int, source: str) -> List[Episode]:
    """The expert's episode of ``task`` laid out from ``seed``, split at each new instruction (one piece otherwise).

    Each piece holds the observations before each action, the actions (``env.action_vector``), the
    rewards as the ``reward`` extra, and whether its instruction was carried out.
    """
    obs, instruction = env.reset(seed, task)
    pieces: List[Episode] = []
    steps: List[tuple] = []
    done = False
    while not done:
        action = env.expert()
        next_obs, reward, terminated, truncated, info = env.step(action)
        steps.append((obs, env.action_vector(action), reward))
        done = terminated or truncated
        next_instruction = info.get("instruction")  # a chain moved on
        if done or next_instruction:
            success = bool(info["success"]) or bool(next_instruction)
            where = f"{source} instruction {len(pieces)}" if next_instruction or pieces else source
            pieces.append(Episode(
                images={cam: np.stack([o["images"][cam] for o, _, _ in steps]) for cam in env.cameras},
                state=np.stack([o["state"] for o, _, _ in steps]), action=np.stack([a for _, a, _ in steps]),
                task=instruction, success=success, source=where,
                extras={"reward": np.array([r for _, _, r in steps], dtype=np.float32)}))
            steps, instruction = [], next_instruction or instruction
        obs = next_obs
    return pieces


@dataclass
class TaskCollection:
    """Demonstrations of one task, the expert episodes rolled for them, their frames and the wall time (s)."""

    episodes: int = 0
    attempts: int = 0
    frames: int = 0
    seconds: float = 0.0


@dataclass
class CollectionReport:
    """Demonstrations collected (and, by :func:`write_demonstrations`, written under ``root``), per task."""

    root: Optional[Path] = None
    per_task: Dict[str, TaskCollection] = field(default_factory=dict)

    @property
    def episodes(self) -> int:
        return sum(t.episodes for t in self.per_task.values())

    @property
    def frames(self) -> int:
        return sum(t.frames for t in self.per_task.values())

    def summary(self) -> str:
        lines = [f"{task}: {t.episodes} episodes ({t.attempts} rolled), {t.frames} frames, {t.seconds:.1f} s"
                 for task, t in self.per_task.items()]
        where = f" to {self.root}" if self.root else ""
        return "\n".join([*lines, f"{self.episodes} episodes, {self.frames} frames{where}"])


def _task_demonstrations(env: LanguageEnv, name: str, task: str, n: int, seed: int, success_only: bool,
                         split: str, bar: tqdm, tally: TaskCollection) -> Iterator[Episode]:
    """Yield ``n`` demonstrations of ``task``, counting them and the expert episodes rolled in ``tally``."""
    limit = 3 * n + 10
    while tally.episodes < n:
        if tally.attempts == limit:
            raise RuntimeError(f"collect: the {name} expert succeeded in only {tally.episodes} of {tally.attempts} "
                               f"episodes of {task!r}; ask for fewer demonstrations, pass success_only=False, or "
                               f"drop the task")
        s = layout_seed(seed + tally.attempts, split)
        tally.attempts += 1
        for episode in expert_episodes(env, task, s, f"{name}/{task} seed {s}"):
            if tally.episodes < n and (episode.success or not success_only):
                tally.episodes += 1
                tally.frames += episode.length
                bar.update(1)
                yield episode
        bar.set_postfix(task=task, attempts=tally.attempts)


def _collect(env: LanguageEnv, name: str, n: int, seed: int, success_only: bool, progress: bool, split: str,
             report: CollectionReport) -> Iterator[Episode]:
    """All tasks' demonstrations, task after task, with a progress bar; fills ``report`` (times include the
    consumer's, e.g. writing videos); closes ``env`` at the end."""
    bar = tqdm(total=n * len(env.task_names), desc=f"demonstrations ({name})", unit="ep", disable=not progress)
    try:
        for task in env.task_names:
            tally = report.per_task[task] = TaskCollection()
            start = time.perf_counter()
            yield from _task_demonstrations(env, name, task, n, seed, success_only, split, bar, tally)
            tally.seconds = time.perf_counter() - start
    finally:
        bar.close()
        env.close()


def collect_demonstrations(env_spec: SpecLike, n: int, seed: int = 0, success_only: bool = True,
                           progress: bool = True, split: str = "train",
                           report: Optional[CollectionReport] = None) -> Iterator[Episode]:
    """``n`` expert demonstrations of each task of ``env_spec``, task after task (see the module doc).

    Pass a :class:`CollectionReport` to get the counts and times per task.
    """
    spec = as_env_spec(env_spec)
    yield from _collect(spec.make(), spec.name, n, seed, success_only, progress, split,
                        report if report is not None else CollectionReport())


def write_demonstrations(env_spec: SpecLike, root: Union[str, Path], n: int, seed: int = 0,
                         success_only: bool = True, progress: bool = True, split: str = "train",
                         codec: str = "libx264") -> CollectionReport:
    """Collect ``n`` expert demonstrations per task and write them as a LeRobot v3.0 dataset at ``root``.

    ``root`` must be new or empty; ``codec`` is the video codec of :class:`LeRobotWriter` (``libx264``,
    or ``libx264rgb``/``ffv1`` for lossless frames). The dataset's fps is the env's control rate and
    its ``robot_type`` the env's name.
    """
    spec = as_env_spec(env_spec)
    env = spec.make()
    report = CollectionReport(Path(root))
    with LeRobotWriter(root, fps=env.fps, robot_type=spec.name, codec=codec) as writer:
        for episode in _collect(env, spec.name, n, seed, success_only, progress, split, report):
            writer.add_episode(episode)
    return report
