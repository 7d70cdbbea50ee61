"""Vectorised rollouts: equal to sequential episodes, per-task Wilson intervals, shuffled instructions, chains,
videos and the random baseline."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Union

import av
import numpy as np
import pytest
from PIL import Image, ImageSequence

from alignkit.core.registry import ConfigError
from alignkit.domains.robotics.envs import EnvSpec, layout_seed
from alignkit.domains.robotics.envs.babyai import SYMBOLIC_SCALE
from alignkit.domains.robotics.rollout import (RandomPolicy, Rollouts, SuccessRate, evaluate_chains, evaluate_policy,
                                               wilson_interval, write_rollout_video as write_video)

BABYAI = EnvSpec("babyai")


class LookAndGrab:
    """Deterministic BabyAI policy with per-slot history: pick up whatever object is ahead, else wander.

    The symbolic view's cell ahead of the agent is row 5, column 3; its object index is the red channel / 25.
    The wandering pattern depends on the slot's own step count and instruction, so outcomes depend only on
    each episode, never on which slot runs it.
    """

    def __init__(self, cell: int = 8):
        self.cell = cell
        self.steps: Dict[int, int] = {}
        self.instructions: Dict[int, str] = {}
        self.resets: List[tuple] = []

    def reset(self, instructions: Union[str, Sequence[str]], env_ids: Optional[Sequence[int]] = None) -> None:
        ids = range(len(instructions)) if env_ids is None else env_ids
        for i, text in zip(ids, instructions):
            self.steps[i], self.instructions[i] = 0, text
            self.resets.append((i, text))

    def act(self, obs_batch) -> np.ndarray:
        actions = []
        for i, view in enumerate(obs_batch["images"]["view"]):
            ahead = view[5 * self.cell + 1, 3 * self.cell + 1] // SYMBOLIC_SCALE
            self.steps[i] = self.steps.get(i, 0) + 1
            if ahead[0] in (5, 6, 7):  # key, ball, box
                actions.append(3)
            elif ahead[0] == 1:  # empty floor
                actions.append(2 if (self.steps[i] + len(self.instructions.get(i, ""))) % 3 else 1)
            else:
                actions.append(0)
        return np.array(actions)


def sequential_reference(spec: EnvSpec, n: int, seed: int) -> List[tuple]:
    """(success, steps) of each episode, run one after another on a bare env."""
    env, out = spec.make(), []
    for k in range(n):
        policy = LookAndGrab()
        obs, instruction = env.reset(layout_seed(seed + k, "test"))
        policy.reset([instruction])
        steps, done = 0, False
        while not done:
            batch = {"images": {"view": obs["images"]["view"][None]}, "state": obs["state"][None]}
            obs, _, terminated, truncated, info = env.step(policy.act(batch)[0])
            steps, done = steps + 1, terminated or truncated
        out.append((info["success"], steps))
    return out


def test_wilson_interval_on_hand_computed_cases():
    # (k + z^2/2 -/+ z sqrt(k (n - k) / n + z^2/4)) / (n + z^2), z = 1.96: 0 of 10 gives [0, z^2 / (10 + z^2)]
    np.testing.assert_allclose(wilson_interval(5, 10), (0.236593, 0.763407), atol=1e-6)
    np.testing.assert_allclose(wilson_interval(0, 10), (0.0, 0.277533), atol=1e-6)
    np.testing.assert_allclose(wilson_interval(10, 10), (0.722467, 1.0), atol=1e-6)
    np.testing.assert_allclose(wilson_interval(1, 4), (0.045587, 0.699358), atol=1e-6)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(3, 2)
    rate = SuccessRate.of(3, 4)
    assert rate.rate == 0.75 and (rate.low, rate.high) == wilson_interval(3, 4)
    assert "75.0%" in str(rate) and "(3/4)" in str(rate)


@pytest.mark.parametrize("num_envs,vector", [(1, "sync"), (3, "sync"), (2, "async")])
def test_vector_evaluation_equals_sequential_episodes(num_envs, vector):
    reference = sequential_reference(BABYAI, 12, seed=5)
    assert 0 < sum(s for s, _ in reference) < 12  # the check needs both outcomes
    result = evaluate_policy(LookAndGrab(), BABYAI, 12, seed=5, num_envs=num_envs, vector=vector)
    assert [(o.success, o.steps) for o in result.episodes] == reference
    assert [o.seed for o in result.episodes] == [layout_seed(5 + k, "test") for k in range(12)]
    assert result.overall == SuccessRate.of(sum(s for s, _ in reference), 12)
    assert result.steps == sum(n for _, n in reference) and result.instructions == "true"


def test_more_slots_than_episodes_and_reused_envs():
    with Rollouts(BABYAI, num_envs=4) as rollouts:
        few = rollouts.evaluate(LookAndGrab(), 2, seed=5)
        again = rollouts.evaluate(LookAndGrab(), 2, seed=5)
    assert [(o.success, o.steps) for o in few.episodes] == sequential_reference(BABYAI, 2, seed=5)
    assert [(o.success, o.steps) for o in again.episodes] == [(o.success, o.steps) for o in few.episodes]


def test_slots_keep_to_one_task_and_outcomes_do_not_change():
    two = EnvSpec("babyai", {"levels": ["BabyAI-PickupLoc-v0", "BabyAI-PickupDist-v0"]})
    one_env = evaluate_policy(LookAndGrab(), two, 8, seed=3)
    with Rollouts(two, num_envs=3) as rollouts:
        result = rollouts.evaluate(LookAndGrab(), 8, seed=3)
        built = [sorted(slot.env._levels) for slot in rollouts.vector_env.envs]
    assert [(o.task, o.seed, o.success, o.steps) for o in result.episodes] == \
        [(o.task, o.seed, o.success, o.steps) for o in one_env.episodes]
    # jobs alternate between the two levels; a slot that takes the next job in order runs (and builds) both, one
    # that keeps to its level while it has jobs builds fewer (here 5 levels in all instead of 6)
    assert sum(map(len, built)) < 3 * 2


def test_a_subset_of_tasks_runs_the_full_evaluations_episodes():
    two = EnvSpec("babyai", {"levels": ["BabyAI-PickupLoc-v0", "BabyAI-PickupDist-v0"]})
    with Rollouts(two, num_envs=2) as rollouts:
        full = rollouts.evaluate(LookAndGrab(), 5, seed=2, instruction_override="shuffled")
        part = rollouts.evaluate(LookAndGrab(), 5, seed=2, instruction_override="shuffled",
                                 tasks=["BabyAI-PickupDist-v0"])
        with pytest.raises(ConfigError, match="not tasks of env"):
            rollouts.evaluate(LookAndGrab(), 1, tasks=["BabyAI-GoToLocal-v0"])
    same = [(o.seed, o.instruction, o.true_instruction, o.success, o.steps) for o in full.episodes
            if o.task == "BabyAI-PickupDist-v0"]
    assert [(o.seed, o.instruction, o.true_instruction, o.success, o.steps) for o in part.episodes] == same
    assert list(part.per_task) == ["BabyAI-PickupDist-v0"] and part.overall.episodes == 5
    # shuffled instructions come from both levels' episodes, as in the full evaluation
    assert any(o.instruction in {e.true_instruction for e in full.episodes if e.task == "BabyAI-PickupLoc-v0"}
               for o in part.episodes)


def test_shuffled_and_fixed_instructions():
    policy = LookAndGrab()
    true = evaluate_policy(policy, BABYAI, 10, seed=1)
    shuffled = evaluate_policy(LookAndGrab(), BABYAI, 10, seed=1, instruction_override="shuffled", num_envs=3)
    truths = [o.true_instruction for o in true.episodes]
    assert [o.instruction for o in true.episodes] == truths
    assert [o.true_instruction for o in shuffled.episodes] == truths  # same episodes
    given = [o.instruction for o in shuffled.episodes]
    assert sorted(given) == sorted(truths)  # every instruction handed to another episode
    assert sum(g != t for g, t in zip(given, truths)) >= 8 and shuffled.instructions == "shuffled"
    assert {text for _, text in policy.resets} == set(truths)
    fixed = evaluate_policy(LookAndGrab(), BABYAI, 3, instruction_override="go")
    assert fixed.instructions == "fixed" and {o.instruction for o in fixed.episodes} == {"go"}


def test_per_task_rates_on_metaworld_with_a_scripted_reacher():
    class Reacher:
        """Moves the hand to the goal (39-d state: hand xyz first, goal xyz last); never touches the puck."""

        def reset(self, instructions, env_ids=None):
            pass

        def act(self, obs_batch):
            state = obs_batch["state"]
            move = np.clip(10 * (state[:, 36:39] - state[:, 0:3]), -1, 1)
            return np.concatenate([move, -np.ones((len(state), 1))], axis=1)

    spec = EnvSpec("metaworld", {"tasks": ["reach-v3", "push-v3"], "cameras": [], "max_steps": 60})
    result = evaluate_policy(Reacher(), spec, 4, num_envs=2)
    assert list(result.per_task) == ["reach-v3", "push-v3"]
    assert result.per_task["reach-v3"].successes == 4 and result.per_task["push-v3"].successes == 0
    assert result.overall == SuccessRate.of(4, 8)
    assert result.metrics() == {"success/overall": 0.5, "success/reach-v3": 1.0, "success/push-v3": 0.0}
    assert "reach-v3" in result.summary() and "overall" in result.summary()


def test_random_baseline_is_poor_on_pickuploc():
    result = evaluate_policy(RandomPolicy.for_env(BABYAI, seed=0), BABYAI, 40, num_envs=4)
    assert result.overall.rate < 0.4
    actions = RandomPolicy.for_env(EnvSpec("metaworld", {"cameras": []}), seed=1).act({"state": np.zeros((3, 39))})
    assert actions.shape == (3, 4) and np.all(np.abs(actions) <= 1)


def test_rollout_videos(tmp_path):
    result = evaluate_policy(LookAndGrab(), BABYAI, 3, video_dir=tmp_path / "mp4", videos_per_task=2)
    assert [o.video is not None for o in result.episodes] == [True, True, False]
    for outcome in result.episodes[:2]:
        with av.open(str(outcome.video)) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        assert len(frames) == outcome.steps + 1 and frames[0].shape == (224, 224, 3)  # 56 px x 4
    gif = evaluate_policy(LookAndGrab(), BABYAI, 1, video_dir=tmp_path / "gif", video_format="gif")
    with Image.open(gif.videos[0]) as image:  # Pillow merges repeated frames into longer ones: count time
        durations = [frame.info["duration"] for frame in ImageSequence.Iterator(image)]
        assert image.size == (224, 224)
    assert sum(durations) == pytest.approx(100 * (gif.episodes[0].steps + 1))  # BabyAI plays at 10 fps
    with pytest.raises(ConfigError, match="no camera"):
        evaluate_policy(LookAndGrab(), EnvSpec("metaworld", {"cameras": []}), 1, video_dir=tmp_path)


def test_chains_count_instructions_completed_in_a_row():
    class BotThroughSlots(LookAndGrab):
        """Asks each slot's env for the BabyAI bot's action (possible with in-process sync vector envs)."""

        def __init__(self, rollouts):
            super().__init__()
            self.rollouts = rollouts

        def act(self, obs_batch):
            return np.array([slot.env.expert()[0] for slot in self.rollouts.vector_env.envs])

    with Rollouts(EnvSpec("babyai-chain", {"chain_len": 3}), num_envs=2) as rollouts:
        bot = BotThroughSlots(rollouts)
        result = rollouts.chains(bot, 4)
    assert result.completed == [3, 3, 3, 3] and result.average_completed == 3.0
    assert result.success_at == [1.0, 1.0, 1.0]
    assert len(bot.resets) == 2 + 2 + 4 * 2  # first reset of both slots, 2 refills, 2 new instructions per chain
    random = evaluate_chains(RandomPolicy.for_env("babyai-chain"), "babyai-chain", 6, chain_len=5, num_envs=3)
    assert random.average_completed < 1.0 and len(random.success_at) == 5
    assert random.success_at == sorted(random.success_at, reverse=True)
    with pytest.raises(ConfigError, match="unknown parameter 'chain_len'"):
        evaluate_chains(LookAndGrab(), BABYAI, 2)


def test_write_video_pads_odd_sizes_and_checks_its_input(tmp_path):
    frames = np.zeros((3, 5, 7, 3), np.uint8)
    frames[:, :, :, 0] = np.arange(3)[:, None, None] * 100  # red rising frame by frame
    path = write_video(tmp_path / "odd.mp4", frames, fps=5, scale=2)
    with av.open(str(path)) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == 3 and decoded[0].shape == (10, 14, 3)  # 5x7 doubled; already even
    np.testing.assert_allclose([d[..., 0].mean() for d in decoded], [0, 100, 200], atol=6)
    path = write_video(tmp_path / "odd2.mp4", frames, fps=5)
    with av.open(str(path)) as container:
        assert next(container.decode(video=0)).to_ndarray(format="rgb24").shape == (6, 8, 3)  # padded to even
    with pytest.raises(ValueError, match="must end in"):
        write_video(tmp_path / "x.avi", frames)
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "x.mp4", frames.astype(np.float32))
