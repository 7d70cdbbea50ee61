"""`alignkit convert rlds` and `alignkit collect`: the robotics subcommands write LeRobot datasets."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from alignkit.cli import main
from alignkit.core.registry import ConfigError
from alignkit.domains.robotics.cli import env_params
from alignkit.domains.robotics.envs import layout_seed
from alignkit.domains.robotics.lerobot import LeRobotDataset

NPZ = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "robotics" / "bridge_debug" / \
    "bridge_debug_train.npz"


@pytest.mark.skipif(not NPZ.is_file(), reason=f"sample data missing: {NPZ}")
def test_convert_rlds_writes_every_episode(tmp_path, capsys):
    assert main(["convert", "rlds", str(NPZ), str(tmp_path / "bridge"), "--cameras", "image_0", "--codec",
                 "libx264rgb"]) == 0
    assert "wrote 25 episodes, 250 frames, 4 tasks" in capsys.readouterr().out
    dataset = LeRobotDataset(tmp_path / "bridge")
    with np.load(NPZ) as source:
        np.testing.assert_array_equal(dataset.episode(3).images["image_0"], source["image_0"][3])
        np.testing.assert_allclose(dataset.episode(3).action, source["action"][3])
    assert dataset.cameras == ["image_0"] and dataset.fps == 5


def test_collect_writes_successful_seeded_demonstrations(tmp_path, capsys):
    assert main(["collect", "babyai", str(tmp_path / "demos"), "-n", "3", "--seed", "5", "--quiet", "--set",
                 "levels=BabyAI-PickupLoc-v0", "cell_pixels=4"]) == 0
    assert "3 episodes" in capsys.readouterr().out
    dataset = LeRobotDataset(tmp_path / "demos")
    assert dataset.num_episodes == 3 and dataset.meta["robot_type"] == "babyai"
    assert dataset.episode(0).images["view"].shape[1:] == (28, 28, 3)
    assert dataset.episode(0).source.endswith(f"seed {layout_seed(5, 'train')}")
    assert all(dataset.episode(i).success for i in range(3))


def test_collect_keeps_failures_only_when_asked(tmp_path, capsys):
    hopeless = ["--set", "tasks=pick-place-v3", "cameras=[]", "max_steps=3"]
    with pytest.raises(RuntimeError, match="succeeded in only 0"):
        main(["collect", "metaworld", str(tmp_path / "none"), "-n", "1", "--quiet", *hopeless])
    assert main(["collect", "metaworld", str(tmp_path / "kept"), "-n", "2", "--quiet", "--keep-failures",
                 *hopeless]) == 0
    dataset = LeRobotDataset(tmp_path / "kept")
    assert dataset.num_episodes == 2 and not dataset.episode(0).success and len(dataset) == 6


def test_env_params_are_yaml_values():
    assert env_params(["tasks=[reach-v3, push-v3]", "image_size=32", "paraphrase=false"]) == {
        "tasks": ["reach-v3", "push-v3"], "image_size": 32, "paraphrase": False}
    with pytest.raises(ConfigError, match="key=value"):
        env_params(["tasks"])
