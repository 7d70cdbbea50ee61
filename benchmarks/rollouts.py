"""Environment steps per second, single env vs. vectorised, and expert demonstration collection time per task.

Rollouts: a random policy in BabyAI PickupLoc (symbolic 56x56 view) and Meta-World reach-v3 (one 64x64
``corner`` camera rendered on CPU with OSMesa), stepped

- ``single``: a bare :class:`LanguageEnv` loop (no vector env, no policy batching);
- ``sync N`` / ``async N``: :class:`Rollouts` with a ``SyncVectorEnv`` (N envs in this process) or an
  ``AsyncVectorEnv`` (one worker process per env), episodes handed to free slots.

Collection: :func:`collect_demonstrations` wall time per task (episodes, frames, ms per frame) for
BabyAI PickupLoc and the Meta-World tasks of the robotics demo, rendering included.

    python benchmarks/rollouts.py [--episodes 8] [--demos 10] [--skip-collection]
"""
from __future__ import annotations

import argparse
import time
from typing import Dict, List, Tuple

import numpy as np
from rich.console import Console
from rich.table import Table

from alignkit.domains.robotics.collect import CollectionReport, collect_demonstrations
from alignkit.domains.robotics.envs import EnvSpec
from alignkit.domains.robotics.rollout import RandomPolicy, Rollouts

ROLLOUT_ENVS = {
    "BabyAI PickupLoc": EnvSpec("babyai"),
    "Meta-World reach (64 px)": EnvSpec("metaworld", {"tasks": "reach-v3", "max_steps": 50}),
}
VECTORS: List[Tuple[str, int]] = [("sync", 1), ("sync", 4), ("async", 2), ("async", 4)]
DEMO_TASKS = {"BabyAI PickupLoc": EnvSpec("babyai"),
              "Meta-World (64 px)": EnvSpec("metaworld", {"tasks": ["reach-v3", "push-v3", "drawer-open-v3",
                                                                    "button-press-v3"]})}


def single_env_rate(spec: EnvSpec, episodes: int) -> float:
    """Steps per second of a bare env loop with random actions."""
    env = spec.make()
    rng = np.random.default_rng(0)
    env.action_space.seed(0)
    env.reset(0)  # build the simulator (and its renderer) outside the timing
    steps, start = 0, time.perf_counter()
    for k in range(episodes):
        env.reset(int(rng.integers(1 << 20)))
        done = False
        while not done:
            _, _, terminated, truncated, _ = env.step(env.action_space.sample())
            steps, done = steps + 1, terminated or truncated
    rate = steps / (time.perf_counter() - start)
    env.close()
    return rate


def vector_rate(spec: EnvSpec, vector: str, num_envs: int, episodes: int) -> float:
    """Steps per second of :meth:`Rollouts.evaluate` with a random policy (env construction not timed)."""
    with Rollouts(spec, num_envs, vector) as rollouts:
        policy = RandomPolicy(rollouts.env.action_space, seed=0)
        rollouts.evaluate(policy, max(1, num_envs // 2), seed=10_000)  # warm-up: workers build their simulators
        result = rollouts.evaluate(policy, episodes, seed=0)
    return result.steps / result.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--episodes", type=int, default=8, help="episodes per measurement")
    parser.add_argument("--demos", type=int, default=10, help="demonstrations per task in the collection table")
    parser.add_argument("--skip-collection", action="store_true")
    args = parser.parse_args()
    console = Console(width=120)

    table = Table(title="environment steps per second (random policy)")
    table.add_column("environment")
    table.add_column("single", justify="right")
    for vector, n in VECTORS:
        table.add_column(f"{vector} {n}", justify="right")
    for name, spec in ROLLOUT_ENVS.items():
        rates: Dict[str, float] = {"single": single_env_rate(spec, args.episodes)}
        for vector, n in VECTORS:
            rates[f"{vector} {n}"] = vector_rate(spec, vector, n, args.episodes)
        table.add_row(name, *(f"{r:,.0f}" for r in rates.values()))
    console.print(table)

    if args.skip_collection:
        return
    table = Table(title=f"expert demonstration collection ({args.demos} per task, success only)")
    for column in ("environment", "task", "episodes (rolled)", "frames", "seconds", "ms / frame"):
        table.add_column(column, justify="left" if column in ("environment", "task") else "right")
    for name, spec in DEMO_TASKS.items():
        report = CollectionReport()
        for _ in collect_demonstrations(spec, args.demos, progress=False, report=report):
            pass
        for task, t in report.per_task.items():
            table.add_row(name, task, f"{t.episodes} ({t.attempts})", str(t.frames), f"{t.seconds:.1f}",
                          f"{1000 * t.seconds / t.frames:.1f}")
    console.print(table)


if __name__ == "__main__":
    main()
