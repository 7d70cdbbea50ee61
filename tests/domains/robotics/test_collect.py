"""Expert demonstrations: they succeed, are seeded on the train split, are filtered and are written as LeRobot."""
from __future__ import annotations

import numpy as np
import pytest

from alignkit.domains.robotics.collect import CollectionReport, collect_demonstrations, write_demonstrations
from alignkit.domains.robotics.envs import EnvSpec, layout_seed
from alignkit.domains.robotics.envs.instructions import METAWORLD_INSTRUCTIONS
from alignkit.domains.robotics.lerobot import LeRobotDataset


@pytest.mark.parametrize("task", ["reach-v3", "push-v3", "pick-place-v3", "drawer-open-v3", "button-press-v3"])
def test_metaworld_expert_demonstrations_succeed(task):
    spec = EnvSpec("metaworld", {"tasks": task, "cameras": []})  # state only: the expert does not look
    episodes = list(collect_demonstrations(spec, 5, seed=0, success_only=False, progress=False))
    assert len(episodes) == 5 and sum(e.success for e in episodes) >= 4
    for e in episodes:
        assert e.task in METAWORLD_INSTRUCTIONS[task] and e.state.shape == (e.length, 39)
        assert e.action.shape == (e.length, 4) and np.all(np.abs(e.action) <= 1)
        assert e.extras["reward"].shape == (e.length,)


def test_babyai_bot_demonstrations_succeed_and_use_train_seeds():
    report = CollectionReport()
    episodes = list(collect_demonstrations("babyai", 40, seed=0, success_only=False, progress=False, report=report))
    assert sum(e.success for e in episodes) >= 38
    assert [e.source for e in episodes[:2]] == [f"babyai/BabyAI-PickupLoc-v0 seed {layout_seed(k, 'train')}"
                                                for k in range(2)]
    e = episodes[0]
    assert e.images["view"].shape == (e.length, 56, 56, 3) and e.action.shape == (e.length, 1)
    assert set(np.unique(np.concatenate([x.action for x in episodes]))) <= {0.0, 1.0, 2.0, 3.0}
    assert e.task.startswith("pick up")
    tally = report.per_task["BabyAI-PickupLoc-v0"]
    assert (tally.episodes, tally.attempts) == (40, 40) and tally.frames == sum(x.length for x in episodes)


def test_success_filtering():
    hopeless = EnvSpec("metaworld", {"tasks": "pick-place-v3", "cameras": [], "max_steps": 5})  # too short
    kept = list(collect_demonstrations(hopeless, 2, success_only=False, progress=False))
    assert len(kept) == 2 and not any(e.success for e in kept)
    with pytest.raises(RuntimeError, match="only 0 of 13 episodes of 'pick-place-v3'"):
        list(collect_demonstrations(hopeless, 1, progress=False))


def test_chain_episodes_are_split_per_instruction():
    spec = EnvSpec("babyai-chain", {"chain_len": 3})
    env = spec.make()
    _, first = env.reset(layout_seed(0, "train"))
    episodes = list(collect_demonstrations(spec, 3, progress=False))
    assert [e.source for e in episodes] == [f"babyai-chain/pickup-chain seed 0 instruction {i}" for i in range(3)]
    assert episodes[0].task == first and len({e.task for e in episodes}) == 3 and all(e.success for e in episodes)
    # the pieces are consecutive: each starts where the previous one ended (the state holds the agent's pose)
    env.reset(layout_seed(0, "train"))
    states = []
    for e in episodes:
        for action in e.action:
            states.append(env.step(int(action[0]))[0]["state"])
    np.testing.assert_array_equal(np.stack(states[:-1]), np.concatenate([e.state for e in episodes])[1:])


def test_write_demonstrations_as_a_lerobot_dataset(tmp_path):
    spec = {"name": "babyai", "cell_pixels": 4}
    report = write_demonstrations(spec, tmp_path / "babyai", 4, seed=3, progress=False, codec="libx264rgb")
    expected = list(collect_demonstrations(spec, 4, seed=3, progress=False))
    dataset = LeRobotDataset(tmp_path / "babyai")
    assert report.episodes == 4 and report.frames == len(dataset) == sum(e.length for e in expected)
    assert dataset.meta["fps"] == 10 and dataset.meta["robot_type"] == "babyai"
    assert sorted(dataset.tasks) == sorted({e.task for e in expected})
    for i, episode in enumerate(expected):
        back = dataset.episode(i)
        assert back.task == episode.task
        np.testing.assert_array_equal(back.images["view"], episode.images["view"])  # lossless codec
        np.testing.assert_array_equal(back.action, episode.action)
        np.testing.assert_allclose(back.state, episode.state)
    mw = write_demonstrations({"name": "metaworld", "tasks": ["reach-v3"], "image_size": 32}, tmp_path / "mw", 1,
                              progress=False)
    assert mw.per_task["reach-v3"].episodes == 1 and mw.per_task["reach-v3"].seconds > 0
    assert LeRobotDataset(tmp_path / "mw").meta["fps"] == 80
    assert "1 episodes" in mw.summary()
