"""Policy evaluation by simulator rollouts: N episodes in parallel in gymnasium vector envs.

A policy is any object with ``reset(instructions, env_ids=None)`` and ``act(obs_batch) -> actions``
(the interface of :class:`alignkit.domains.robotics.language_policy.LanguagePolicy`):

- ``reset(instructions)`` with a list of ``N`` strings starts new episodes in all ``N`` slots of the
  batch (an idle slot gets ``""``); ``reset(instructions, env_ids)`` starts them only in the listed
  slots (one instruction each), also when a chain moves on to its next instruction. The policy clears
  the history of every slot it resets. A single string stands for the same instruction everywhere.
- ``act(obs_batch)`` gets ``{"images": {camera: uint8 (N, H, W, 3)}, "state": float32 (N, S)}`` and
  returns ``(N, A)`` actions (``(N,)`` or ``(N, 1)`` integers for discrete envs). Slots whose episode is
  over still appear in the batch; their actions are ignored.

Episodes are jobs ``(task, seed)`` handed to free slots in order, a free slot taking the first pending job of
the task it ran last if there is one (its simulator is built); an episode's layout depends
only on its seed, and a slot's episode only on its job, so a policy that acts on each slot's own
history gets the same outcomes with 1 or N envs. Episode ``k`` of each task is laid out from
``layout_seed(seed + k, split)`` (``split="test"`` by default, disjoint from the demonstrations).

Success rates come with Wilson 95% intervals per task and overall. ``instruction_override="shuffled"``
gives each episode another episode's instruction (a derangement of the true ones), a fixed string
gives every episode that string; :class:`RandomPolicy` is the random baseline. CALVIN-style chains
(:meth:`Rollouts.chains`) report the average number of instructions completed in a row. With a ``video_dir``,
the first episodes of each task are written as ``.mp4`` (H.264, yuv420p, crf 18) or ``.gif``
(:func:`write_rollout_video`).
"""
from __future__ import annotations

import copy
import math
import re
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Protocol, Sequence, Tuple, Union

import gymnasium as gym
import numpy as np

from alignkit.core.registry import ConfigError, did_you_mean
from alignkit.core.video import write_video
from alignkit.domains.robotics.envs.base import EnvSpec, LanguageEnv, SpecLike, as_env_spec, layout_seed

VECTOR_KINDS = ("sync", "async")
VIDEO_MAX_FPS = 20  # Meta-World runs at 80 steps/s: slower playback shows what the arm does
VIDEO_SIZE = 256  # rollout videos are upscaled (nearest neighbour) to about this many pixels
VIDEO_FORMATS = (".mp4", ".gif")
VIDEO_GOP = 250  # frames between keyframes of rollout MP4s: x264's default (videos are watched, not seeked)


# --------------------------------------------------------------------------- statistics
def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> Tuple[float, float]:
    """Wilson score interval of a success probability from ``successes`` out of ``n`` trials.

    ``p = k / n``; centre ``(p + z^2 / 2n) / (1 + z^2 / n)``; half-width
    ``z / (1 + z^2 / n) * sqrt(p (1 - p) / n + z^2 / 4n^2)``. ``z = 1.96`` gives 95%. ``n = 0`` gives (0, 1).
    """
    if not 0 <= successes <= n:
        raise ValueError(f"wilson_interval: need 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return 0.0, 1.0
    p, z2 = successes / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class SuccessRate:
    """``successes`` of ``episodes``, their ``rate`` and its Wilson 95% interval ``[low, high]``."""

    successes: int
    episodes: int
    rate: float
    low: float
    high: float

    @classmethod
    def of(cls, successes: int, episodes: int) -> "SuccessRate":
        low, high = wilson_interval(successes, episodes)
        return cls(successes, episodes, successes / max(episodes, 1), low, high)

    def __str__(self) -> str:
        return f"{100 * self.rate:5.1f}% [{100 * self.low:5.1f}, {100 * self.high:5.1f}] ({self.successes}/{self.episodes})"


# --------------------------------------------------------------------------- results
@dataclass
class EpisodeOutcome:
    """One evaluated episode: its task and seed, the instruction the policy got and the true one."""

    task: str
    seed: int
    instruction: str
    true_instruction: str
    success: bool
    steps: int
    completed: int  # instructions done (chains); 1 or 0 otherwise
    video: Optional[Path] = None


@dataclass
class RolloutResult:
    """Success per task and overall (Wilson 95% intervals) of one evaluation, with its episodes.

    ``instructions`` is ``"true"``, ``"shuffled"`` or ``"fixed"``; ``seconds`` the wall time and
    ``steps`` the environment steps of all episodes.
    """

    per_task: Dict[str, SuccessRate]
    overall: SuccessRate
    episodes: List[EpisodeOutcome]
    instructions: str
    seconds: float
    steps: int
    videos: List[Path] = field(default_factory=list)

    def metrics(self, prefix: str = "success") -> Dict[str, float]:
        """Flat ``{"<prefix>/overall": rate, "<prefix>/<task>": rate, ...}`` for loggers and tables."""
        out = {f"{prefix}/overall": self.overall.rate}
        out.update({f"{prefix}/{task}": rate.rate for task, rate in self.per_task.items()})
        return out

    def summary(self) -> str:
        width = max(len(t) for t in [*self.per_task, "overall"])
        lines = [f"{task:<{width}}  {rate}" for task, rate in self.per_task.items()]
        return "\n".join([*lines, f"{'overall':<{width}}  {self.overall}"])


@dataclass
class ChainResult:
    """CALVIN-style chains: instructions completed in a row per chain, their mean and success at each length.

    ``success_at[k - 1]`` is the fraction of chains that completed at least ``k`` instructions.
    """

    average_completed: float
    completed: List[int]
    success_at: List[float]
    episodes: List[EpisodeOutcome]
    seconds: float
    videos: List[Path] = field(default_factory=list)


def write_rollout_video(path: Union[str, Path], frames: np.ndarray, fps: int = 10, scale: int = 1) -> Path:
    """Write an episode's uint8 ``(T, H, W, 3)`` ``frames`` to ``path`` and return it: ``.mp4`` (H.264, yuv420p,
    crf 18, odd sizes padded) or ``.gif`` (imageio), each pixel repeated ``scale`` times along H and W
    (:func:`alignkit.core.video.write_video`). ValueError for another suffix or for invalid frames."""
    path = Path(path)
    if path.suffix not in VIDEO_FORMATS:
        raise ValueError(f"write_rollout_video: {path} must end in one of {', '.join(VIDEO_FORMATS)}")
    return write_video(path, frames, fps=fps, scale=scale, codec="libx264", crf=18, gop=VIDEO_GOP)


# --------------------------------------------------------------------------- policies
class Policy(Protocol):
    """What rollouts need of a policy (see the module docstring)."""

    def reset(self, instructions: Union[str, Sequence[str]], env_ids: Optional[Sequence[int]] = None) -> None:
        ...

    def act(self, obs_batch: Mapping[str, Any]) -> np.ndarray:
        ...


class RandomPolicy:
    """Uniformly random actions from an env's action space (the random baseline)."""

    def __init__(self, action_space: gym.Space, seed: int = 0):
        self.action_space = copy.deepcopy(action_space)
        self.action_space.seed(seed)

    @classmethod
    def for_env(cls, spec: SpecLike, seed: int = 0) -> "RandomPolicy":
        env = as_env_spec(spec).make()
        try:
            return cls(env.action_space, seed)
        finally:
            env.close()

    def reset(self, instructions: Union[str, Sequence[str]], env_ids: Optional[Sequence[int]] = None) -> None:
        """Random actions ignore the instructions."""

    def act(self, obs_batch: Mapping[str, Any]) -> np.ndarray:
        return np.stack([self.action_space.sample() for _ in range(len(obs_batch["state"]))])


# --------------------------------------------------------------------------- vector env slots
class _SlotEnv(gym.Env):
    """Slot ``slot`` of a vector env: runs the episodes handed to it, then idles.

    It never reports termination to the vector env (which would auto-reset it with no seed); the end
    of an episode is ``info["done"]``, after which steps are no-ops until the next ``reset``, whose
    task is ``options["tasks"][slot]``. A reset with task None leaves the slot idle (blank observation).
    """

    def __init__(self, spec: EnvSpec, slot: int):
        self.env: LanguageEnv = spec.make()
        self.slot = slot
        self.observation_space = self.env.observation_space
        self.action_space = self.env.action_space
        self._obs: Dict[str, Any] = {
            "images": {cam: np.zeros(space.shape, np.uint8) for cam, space in self.observation_space["images"].items()},
            "state": np.zeros(self.env.state_dim, np.float32)}
        self._done = True

    def reset(self, *, seed: Optional[int] = None, options: Optional[Dict[str, Any]] = None):
        task = options["tasks"][self.slot]
        if task is None:
            self._done = True
            return self._obs, {"instruction": ""}
        self._obs, instruction = self.env.reset(seed, task)
        self._done = False
        return self._obs, {"instruction": instruction}

    def step(self, action: Any):
        if self._done:
            return self._obs, 0.0, False, False, {"done": True, "success": False, "completed": 0, "instruction": ""}
        self._obs, reward, terminated, truncated, info = self.env.step(action)
        self._done = bool(terminated or truncated)
        success = bool(info["success"])
        return self._obs, float(reward), False, False, {
            "done": self._done, "success": success, "completed": int(info.get("completed", success)),
            "instruction": info.get("instruction", "")}

    def close(self) -> None:
        self.env.close()


@dataclass
class _Job:
    task: str
    seed: int
    instruction: Optional[str]  # given to the policy instead of the env's (None: the env's own)
    video: Optional[Path]  # where to write this episode's video (None: not recorded)


@dataclass
class _Running:
    job: _Job
    index: int
    instruction: str
    true_instruction: str
    steps: int = 0
    frames: List[np.ndarray] = field(default_factory=list)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


# --------------------------------------------------------------------------- runner
class Rollouts:
    """Evaluation of policies in ``num_envs`` reusable copies of one environment.

    ``vector="sync"`` steps the copies in this process (cheap simulators such as BabyAI);
    ``"async"`` in one worker process each (simulators that render, such as Meta-World). Async workers
    are spawned, not forked (a fork of a process that has rendered with OSMesa hangs), so they take
    a few seconds to start and a script using them needs the ``if __name__ == "__main__":`` guard.
    Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, env_spec: SpecLike, num_envs: int = 1, vector: str = "sync"):
        if vector not in VECTOR_KINDS:
            raise ConfigError(f"rollouts: unknown vector kind {vector!r}{did_you_mean(vector, VECTOR_KINDS)}; "
                              f"use one of {', '.join(VECTOR_KINDS)}")
        if num_envs < 1:
            raise ConfigError(f"rollouts: num_envs must be >= 1, got {num_envs}")
        self.spec = as_env_spec(env_spec)
        self.env = self.spec.make()  # task names, instructions and fps, without touching the workers
        fns = [partial(_SlotEnv, self.spec, slot) for slot in range(num_envs)]
        kind = gym.vector.SyncVectorEnv if vector == "sync" else gym.vector.AsyncVectorEnv
        extra = {} if vector == "sync" else {"context": "spawn"}
        self.vector_env = kind(fns, autoreset_mode=gym.vector.AutoresetMode.DISABLED, **extra)
        self.num_envs = num_envs
        self._slot_task: Dict[int, str] = {}  # the task each slot ran last (see _next_job)

    def __enter__(self) -> "Rollouts":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.vector_env.close()
        self.env.close()

    # ------------------------------------------------------------------ public
    def evaluate(self, policy: Policy, n_episodes: int, seed: int = 0, instruction_override: Optional[str] = None,
                 split: str = "test", video_dir: Optional[Union[str, Path]] = None, videos_per_task: int = 2,
                 video_format: str = "mp4", tasks: Optional[Sequence[str]] = None) -> RolloutResult:
        """``n_episodes`` episodes of each task (episode ``k`` from ``layout_seed(seed + k, split)``).

        ``instruction_override``: None (the true instruction), ``"shuffled"`` (another episode's, from a
        seeded derangement) or any other string (given to every episode). With ``video_dir``, the first
        ``videos_per_task`` episodes of each task are written there as ``.mp4`` or ``.gif``. ``tasks``: run
        only these of the env's tasks; their episodes, and the instructions a shuffle gives them (drawn from the
        episodes of all tasks), are those of the full evaluation.
        """
        start = time.perf_counter()
        unknown = [t for t in tasks or () if t not in self.env.task_names]
        if unknown:
            raise ConfigError(f"rollouts: tasks {unknown} are not tasks of env {self.spec.name!r} "
                              f"({', '.join(self.env.task_names)})")
        plan = [(task, layout_seed(seed + k, split), k) for k in range(n_episodes) for task in self.env.task_names]
        given = self._override(plan, instruction_override, seed)
        mode = "true" if instruction_override is None else (
            "shuffled" if instruction_override == "shuffled" else "fixed")
        tasks = list(tasks) if tasks is not None else self.env.task_names
        chosen = [i for i, (task, _, _) in enumerate(plan) if task in tasks]
        plan, given = [plan[i] for i in chosen], [given[i] for i in chosen]
        jobs = [_Job(task, s, given[i], self._video_path(video_dir, video_format, task, k, mode)
                     if k < videos_per_task else None) for i, (task, s, k) in enumerate(plan)]
        outcomes, steps = self._run(policy, jobs)
        per_task = {task: SuccessRate.of(sum(o.success for o in outcomes if o.task == task),
                                         sum(o.task == task for o in outcomes)) for task in tasks}
        return RolloutResult(per_task, SuccessRate.of(sum(o.success for o in outcomes), len(outcomes)), outcomes,
                             mode, time.perf_counter() - start, steps, [o.video for o in outcomes if o.video])

    def chains(self, policy: Policy, n_chains: int, seed: int = 0, split: str = "test",
               video_dir: Optional[Union[str, Path]] = None, videos: int = 2, video_format: str = "mp4") -> ChainResult:
        """``n_chains`` chained episodes of a chain env (e.g. ``babyai-chain``); see :class:`ChainResult`."""
        chain_len = getattr(self.env, "chain_len", None)
        if chain_len is None:
            raise ConfigError(f"rollouts: env {self.spec.name!r} does not chain instructions; use an env with "
                              f"'chain_len' (e.g. babyai-chain)")
        start = time.perf_counter()
        task = self.env.task_names[0]
        jobs = [_Job(task, layout_seed(seed + k, split), None,
                     self._video_path(video_dir, video_format, task, k, "chain") if k < videos else None)
                for k in range(n_chains)]
        outcomes, _ = self._run(policy, jobs)
        completed = [o.completed for o in outcomes]
        return ChainResult(float(np.mean(completed)), completed,
                           [float(np.mean([c >= k for c in completed])) for k in range(1, chain_len + 1)],
                           outcomes, time.perf_counter() - start, [o.video for o in outcomes if o.video])

    # ------------------------------------------------------------------ internals
    def _override(self, plan: List[Tuple[str, int, int]], override: Optional[str], seed: int) -> List[Optional[str]]:
        if override is None:
            return [None] * len(plan)
        if override != "shuffled":
            return [override] * len(plan)
        if len(plan) < 2:
            raise ConfigError("rollouts: shuffled instructions need at least 2 episodes")
        true = [self.env.instruction(s, task) for task, s, _ in plan]
        order = np.random.default_rng(seed).permutation(len(plan))
        donor = np.empty(len(plan), dtype=int)
        donor[order] = np.roll(order, -1)  # each episode takes the next one's in a random cycle: no fixed point
        return [true[d] for d in donor]

    @staticmethod
    def _video_path(video_dir: Optional[Union[str, Path]], video_format: str, task: str, k: int,
                    mode: str) -> Optional[Path]:
        if video_dir is None:
            return None
        return Path(video_dir) / f"{_slug(task)}_{mode}_{k:03d}.{video_format.lstrip('.')}"

    def _frame(self, obs: Mapping[str, Any], slot: int) -> np.ndarray:
        return np.concatenate([obs["images"][cam][slot] for cam in self.env.cameras], axis=1)

    def _start(self, obs: Mapping[str, Any], info: Mapping[str, Any], slot: int, job: _Job, index: int) -> _Running:
        true = str(info["instruction"][slot])
        run = _Running(job, index, job.instruction if job.instruction is not None else true, true)
        if job.video is not None:
            run.frames.append(self._frame(obs, slot))
        return run

    def _reset(self, slots: Sequence[int], jobs: Sequence[_Job], every_slot: bool) -> Tuple[Dict[str, Any], Dict[str, Any]]:
        """Start ``jobs`` in ``slots``; with ``every_slot`` the other slots are reset to idle too."""
        seeds: List[Optional[int]] = [None] * self.num_envs
        tasks: List[Optional[str]] = [None] * self.num_envs
        mask = np.zeros(self.num_envs, dtype=bool)
        for slot, job in zip(slots, jobs):
            seeds[slot], tasks[slot], mask[slot] = job.seed, job.task, True
        options: Dict[str, Any] = {"tasks": tasks} if every_slot else {"tasks": tasks, "reset_mask": mask}
        return self.vector_env.reset(seed=seeds, options=options)

    def _run(self, policy: Policy, jobs: List[_Job]) -> Tuple[List[EpisodeOutcome], int]:
        if any(job.video is not None for job in jobs) and not self.env.cameras:
            raise ConfigError(f"rollouts: env {self.spec.name!r} renders no camera, so it has no videos; "
                              f"configure cameras or drop video_dir")
        outcomes: List[Optional[EpisodeOutcome]] = [None] * len(jobs)
        pending = list(enumerate(jobs))
        running: Dict[int, _Running] = {}
        steps = 0
        free = list(range(self.num_envs))
        obs: Dict[str, Any] = {}
        first = True
        while pending or running:
            if free and pending:
                batch = [(slot, *self._next_job(pending, slot)) for slot in free[:len(pending)]]
                obs, info = self._reset([b[0] for b in batch], [b[2] for b in batch], every_slot=first)
                started = {slot: self._start(obs, info, slot, job, index) for slot, index, job in batch}
                running.update(started)
                if first:
                    policy.reset([running[s].instruction if s in running else "" for s in range(self.num_envs)])
                else:
                    policy.reset([run.instruction for run in started.values()], list(started))
                first = False
                free = free[len(batch):]
            actions = np.asarray(policy.act(obs))
            actions = actions.reshape(self.vector_env.action_space.shape).astype(self.vector_env.action_space.dtype)
            obs, _, _, _, info = self.vector_env.step(actions)
            for slot in sorted(running):
                run = running[slot]
                run.steps += 1
                if run.job.video is not None:
                    run.frames.append(self._frame(obs, slot))
                if info["done"][slot]:
                    outcomes[run.index] = self._finish(run, bool(info["success"][slot]), int(info["completed"][slot]))
                    steps += run.steps
                    del running[slot]
                    free.append(slot)
                elif info["instruction"][slot]:  # a chain moved on to its next instruction
                    policy.reset([str(info["instruction"][slot])], [slot])
            free.sort()
        return outcomes, steps

    def _next_job(self, pending: List[Tuple[int, _Job]], slot: int) -> Tuple[int, _Job]:
        """Remove and return the first pending job of the task ``slot`` ran last, else the first pending job.

        A slot's environment builds one simulator per task it meets, so keeping a slot on one task builds about
        ``num_envs`` simulators instead of ``num_envs x tasks``; outcomes do not depend on which slot runs a job."""
        last = self._slot_task.get(slot)
        at = next((i for i, (_, job) in enumerate(pending) if job.task == last), 0)
        index, job = pending.pop(at)
        self._slot_task[slot] = job.task
        return index, job

    def _finish(self, run: _Running, success: bool, completed: int) -> EpisodeOutcome:
        video = None
        if run.job.video is not None:
            video = write_rollout_video(run.job.video, np.stack(run.frames), fps=min(self.env.fps, VIDEO_MAX_FPS),
                                        scale=max(1, VIDEO_SIZE // self.env.image_size))
        return EpisodeOutcome(run.job.task, run.job.seed, run.instruction, run.true_instruction, success,
                              run.steps, completed, video)


def evaluate_policy(policy: Policy, env_spec: SpecLike, n_episodes: int, seed: int = 0,
                    num_envs: int = 1, instruction_override: Optional[str] = None, split: str = "test",
                    vector: str = "sync", video_dir: Optional[Union[str, Path]] = None, videos_per_task: int = 2,
                    video_format: str = "mp4") -> RolloutResult:
    """One-off :meth:`Rollouts.evaluate` (``n_episodes`` per task); reuse a :class:`Rollouts` for several."""
    with Rollouts(env_spec, num_envs, vector) as rollouts:
        return rollouts.evaluate(policy, n_episodes, seed, instruction_override, split, video_dir, videos_per_task,
                                 video_format)


def evaluate_chains(policy: Policy, env_spec: SpecLike, n_chains: int,
                    chain_len: int = 5, seed: int = 0, num_envs: int = 1, split: str = "test", vector: str = "sync",
                    video_dir: Optional[Union[str, Path]] = None, videos: int = 2) -> ChainResult:
    """CALVIN-style evaluation: ``n_chains`` episodes of ``chain_len`` instructions in a chain env.

    ``ChainResult.average_completed`` is the mean number of instructions completed in a row.
    """
    spec = as_env_spec(env_spec).replace(chain_len=chain_len)  # a ConfigError for envs without chains
    with Rollouts(spec, num_envs, vector) as rollouts:
        return rollouts.chains(policy, n_chains, seed, split, video_dir, videos)
