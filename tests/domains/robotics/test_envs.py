"""The LanguageEnv adapters: Meta-World, BabyAI (single and chained missions), AI2-THOR without a build."""
from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from alignkit.core.registry import ConfigError
from alignkit.domains.robotics.envs import ENVS, EnvSpec, as_env_spec, layout_seed
from alignkit.domains.robotics.envs import ai2thor as thor
from alignkit.domains.robotics.envs.babyai import SYMBOLIC_SCALE
from alignkit.domains.robotics.envs.instructions import METAWORLD_INSTRUCTIONS, object_words
from alignkit.domains.robotics.envs.metaworld import metaworld_tasks


# --------------------------------------------------------------------------- specs and seeds
def test_layout_seeds_of_train_and_test_never_coincide():
    train = {layout_seed(s, "train") for s in range(1000)}
    test = {layout_seed(s, "test") for s in range(1000)}
    assert not train & test and len(train) == len(test) == 1000
    assert layout_seed(7, "train") == 14 and layout_seed(7, "test") == 15
    with pytest.raises(ConfigError, match="split"):
        layout_seed(0, "val")
    with pytest.raises(ConfigError, match=">= 0"):
        layout_seed(-1, "train")


def test_env_specs_from_names_and_configs_check_their_keys():
    assert {"metaworld", "babyai", "babyai-chain", "ai2thor"} <= set(ENVS.names())
    spec = as_env_spec({"name": "babyai", "levels": "BabyAI-GoToLocal-v0"})
    assert spec == EnvSpec("babyai", {"levels": "BabyAI-GoToLocal-v0"})
    assert as_env_spec("babyai").make().task_names == ["BabyAI-PickupLoc-v0"]
    assert spec.replace(max_steps=10).params == {"levels": "BabyAI-GoToLocal-v0", "max_steps": 10}
    with pytest.raises(ConfigError, match="did you mean 'levels'"):
        as_env_spec({"name": "babyai", "level": "BabyAI-PickupLoc-v0"})
    with pytest.raises(ConfigError, match="did you mean 'metaworld'"):
        as_env_spec("meta-world")
    with pytest.raises(ConfigError, match="'name'"):
        as_env_spec({"tasks": "MT10"})


# --------------------------------------------------------------------------- Meta-World
def test_every_metaworld_task_has_several_distinct_phrasings():
    assert set(METAWORLD_INSTRUCTIONS) == set(metaworld_tasks("MT50"))
    for task, phrasings in METAWORLD_INSTRUCTIONS.items():
        assert len(phrasings) >= 3 and len(set(phrasings)) == len(phrasings), task
        assert all(p.strip() == p and p for p in phrasings), task


def test_metaworld_task_lists():
    assert len(metaworld_tasks("MT10")) == 10 and "pick-place-v3" in metaworld_tasks("MT10")
    assert len(metaworld_tasks("MT50")) == 50
    assert metaworld_tasks(["reach-v3", "push-v3"]) == ["reach-v3", "push-v3"]
    with pytest.raises(ConfigError, match="did you mean 'reach-v3'"):
        metaworld_tasks("reach-v2")


def test_metaworld_reset_is_a_function_of_the_seed_and_renders_small_images():
    env = ENVS.build("metaworld", tasks=["reach-v3", "push-v3"], cameras=["corner", "topview"], image_size=32)
    obs, instruction = env.reset(4, "push-v3")
    assert instruction in METAWORLD_INSTRUCTIONS["push-v3"]
    assert obs["state"].dtype == np.float32 and obs["state"].shape == (39,)
    for cam in ("corner", "topview"):
        image = obs["images"][cam]
        assert image.dtype == np.uint8 and image.shape == (32, 32, 3) and image.std() > 10  # a scene, not blank
    again, instruction_again = env.reset(4, "push-v3")
    np.testing.assert_array_equal(obs["state"], again["state"])
    np.testing.assert_array_equal(obs["images"]["corner"], again["images"]["corner"])
    assert instruction_again == instruction == env.instruction(4, "push-v3")
    # reach and push share a scene: the same seed gives the same puck and goal layout (xy)
    reach, _ = env.reset(4, "reach-v3")
    np.testing.assert_allclose(reach["state"][4:6], obs["state"][4:6])
    np.testing.assert_allclose(reach["state"][36:38], obs["state"][36:38])
    # train and test seeds give different layouts
    env.reset(layout_seed(3, "train"), "push-v3")
    train_layout = env._sims["push-v3"].env._last_rand_vec.copy()
    env.reset(layout_seed(3, "test"), "push-v3")
    assert not np.allclose(train_layout, env._sims["push-v3"].env._last_rand_vec)
    # without a task, the seed picks one in round-robin order
    assert env.reset(0)[1] in METAWORLD_INSTRUCTIONS["reach-v3"]
    assert env.reset(1)[1] in METAWORLD_INSTRUCTIONS["push-v3"]
    env.close()


def test_metaworld_renderers_survive_other_renderers_closing():
    """mujoco.Renderer.close frees GL objects in the wrong context; OffscreenRenderer must not."""
    first = ENVS.build("metaworld", tasks="reach-v3", image_size=32)
    second = ENVS.build("metaworld", tasks="drawer-open-v3", image_size=32)
    first.reset(0)
    before = second.reset(0)[0]["images"]["corner"]  # the second renderer's GL context is now current
    first.close()
    after = second.reset(0)[0]["images"]["corner"]
    np.testing.assert_array_equal(before, after)
    second.close()


def test_metaworld_options_state_subset_truncation_canonical_instruction_and_errors():
    env = ENVS.build("metaworld", tasks="reach-v3", cameras=[], state_indices=[0, 1, 2], max_steps=5,
                     paraphrase=False)
    obs, instruction = env.reset(0)
    assert instruction == METAWORLD_INSTRUCTIONS["reach-v3"][0] and obs["images"] == {}
    assert env.state_dim == 3 and obs["state"].shape == (3,)
    for step in range(5):
        obs, reward, terminated, truncated, info = env.step(np.zeros(4, np.float32))
        assert truncated == (step == 4) and not terminated and info == {"success": False}
    assert env.observation_space["state"].shape == (3,)
    with pytest.raises(ConfigError, match="did you mean 'corner'"):
        ENVS.build("metaworld", tasks="reach-v3", cameras=["cornr"]).reset(0)
    with pytest.raises(ConfigError, match="state_indices"):
        ENVS.build("metaworld", state_indices=[39])
    with pytest.raises(ConfigError, match="max_steps"):
        ENVS.build("metaworld", max_steps=501)
    with pytest.raises(ConfigError, match="unknown task"):
        env.reset(0, "push-v3")


# --------------------------------------------------------------------------- BabyAI
def test_babyai_observation_is_the_symbolic_view_as_flat_blocks():
    env = ENVS.build("babyai", cell_pixels=4)
    obs, mission = env.reset(11)
    level = env._level
    assert mission == level.mission and mission.startswith("pick up")
    image = obs["images"]["view"]
    assert image.shape == (28, 28, 3) and image.dtype == np.uint8
    cells = image[2::4, 2::4] // SYMBOLIC_SCALE  # the centre pixel of each 4x4 block
    np.testing.assert_array_equal(cells, level.gen_obs()["image"].transpose(1, 0, 2))
    assert np.all(image.reshape(7, 4, 7, 4, 3) == image[::4, ::4][:, None, :, None])  # flat blocks
    np.testing.assert_array_equal(obs["state"][:4], np.eye(4)[level.agent_dir])
    np.testing.assert_allclose(obs["state"][4:], np.array(level.agent_pos) / 7)
    rgb = ENVS.build("babyai", image_mode="rgb").reset(11)[0]["images"]["view"]
    assert rgb.shape == (56, 56, 3) and not np.array_equal(rgb, ENVS.build("babyai").reset(11)[0]["images"]["view"])
    with pytest.raises(ConfigError, match="image_mode"):
        ENVS.build("babyai", image_mode="pixels")
    with pytest.raises(ConfigError, match="did you mean 'BabyAI-PickupLoc-v0'"):
        ENVS.build("babyai", levels="BabyAI-PickupLc-v0")


def test_babyai_episode_steps_and_the_level_verdict():
    env = ENVS.build("babyai", max_steps=8)
    env.reset(5)
    for step in range(8):  # turning in place never picks anything up
        _, reward, terminated, truncated, info = env.step(0)
        assert not terminated and reward == 0 and info == {"success": False}
    assert truncated
    env.reset(5)
    done = False
    while not done:
        _, reward, terminated, truncated, info = env.step(env.expert())
        done = terminated or truncated
    assert terminated and info["success"] and reward > 0


def test_babyai_chain_issues_instructions_in_turn_and_the_bot_completes_them():
    env = ENVS.build("babyai-chain", chain_len=5)
    assert env.task_names == ["pickup-chain"] and env.max_steps == 5 * 64
    for seed in range(3):
        obs, first = env.reset(seed)
        instructions, done, info = [first], False, {}
        while not done:
            obs, _, terminated, truncated, info = env.step(env.expert())
            done = terminated or truncated
            if "instruction" in info:
                instructions.append(info["instruction"])
                assert env._level.carrying is None  # the picked object was put away
        assert terminated and info == {"success": True, "completed": 5}
        assert len(set(instructions)) == 5 and all(i.startswith("pick up the ") for i in instructions)
    env = ENVS.build("babyai-chain", chain_len=2, subtask_steps=6)
    env.reset(0)
    for step in range(6):
        _, _, terminated, truncated, info = env.step(6)  # "done" does nothing in BabyAI
    assert truncated and not terminated and info == {"success": False, "completed": 0}
    with pytest.raises(ConfigError, match="chain_len"):
        ENVS.build("babyai-chain", chain_len=9, num_objs=8)


# --------------------------------------------------------------------------- AI2-THOR without a build
def test_ai2thor_says_what_to_install_and_where_to_point(tmp_path, monkeypatch):
    monkeypatch.delenv(thor.EXECUTABLE_ENV, raising=False)
    with pytest.raises(thor.SimulatorUnavailableError, match=f"executable_path.*{thor.EXECUTABLE_ENV}"):
        ENVS.build("ai2thor")
    with pytest.raises(thor.SimulatorUnavailableError, match="no AI2-THOR executable at '/nowhere/thor'"):
        ENVS.build("ai2thor", executable_path="/nowhere/thor")
    build = tmp_path / "thor-Linux64-local"
    build.write_text("")
    monkeypatch.setenv(thor.EXECUTABLE_ENV, str(build))
    monkeypatch.setitem(sys.modules, "ai2thor", None)  # as if the package were not installed
    monkeypatch.setitem(sys.modules, "ai2thor.controller", None)
    with pytest.raises(thor.SimulatorUnavailableError, match="pip install ai2thor"):
        ENVS.build("ai2thor")


def test_ai2thor_tasks_and_instructions():
    assert thor.parse_task("toggle_on/CoffeeMachine") == ("toggle_on", "CoffeeMachine")
    assert object_words("CellPhone") == "cell phone" and object_words("Apple") == "apple"
    assert thor.task_instruction("open/Fridge", 0, paraphrase=False) == "open the fridge"
    phrasings = {thor.task_instruction("pickup/CellPhone", s) for s in range(20)}
    assert phrasings == {"pick up the cell phone", "grab the cell phone", "take the cell phone"}
    for bad in ("fly/Apple", "pickup", "pickup/"):
        with pytest.raises(ConfigError, match="<verb>/<ObjectType>"):
            thor.parse_task(bad)
    objects = [{"objectType": "Apple", "isPickedUp": False}, {"objectType": "Fridge", "isOpen": True}]
    assert not thor.task_success("pickup/Apple", objects) and thor.task_success("open/Fridge", objects)
    assert not thor.task_success("close/Fridge", objects) and not thor.task_success("open/Microwave", objects)


def test_ai2thor_action_mapping():
    objects = [
        {"objectId": "Apple|1", "visible": True, "pickupable": True, "distance": 1.2},
        {"objectId": "Mug|1", "visible": True, "pickupable": True, "distance": 0.8},
        {"objectId": "Mug|2", "visible": False, "pickupable": True, "distance": 0.3},
        {"objectId": "Fridge|1", "visible": True, "openable": True, "distance": 1.4},
    ]
    act = {name: i for i, name in enumerate(thor.ACTIONS)}
    assert thor.step_arguments(act["RotateLeft"], objects, 90, 30) == {"action": "RotateLeft", "degrees": 90}
    assert thor.step_arguments(act["LookDown"], objects, 90, 30) == {"action": "LookDown", "degrees": 30}
    assert thor.step_arguments(act["MoveAhead"], objects, 90, 30) == {"action": "MoveAhead"}
    assert thor.step_arguments(act["PickupObject"], objects, 90, 30) == {"action": "PickupObject", "objectId": "Mug|1"}
    assert thor.step_arguments(act["OpenObject"], objects, 90, 30) == {"action": "OpenObject", "objectId": "Fridge|1"}
    assert thor.step_arguments(act["ToggleObjectOn"], objects, 90, 30) == {"action": "Done"}
    with pytest.raises(ValueError, match="outside"):
        thor.step_arguments(len(thor.ACTIONS), objects, 90, 30)
    origin = {"x": 0.0, "y": 0.9, "z": 0.0}
    assert thor.heading_action(origin, 0.0, {"x": 0.0, "z": 2.0}, 90) == "MoveAhead"  # yaw 0 faces +z
    assert thor.heading_action(origin, 0.0, {"x": 2.0, "z": 0.0}, 90) == "RotateRight"  # +x is yaw 90
    assert thor.heading_action(origin, 0.0, {"x": -2.0, "z": 0.1}, 90) == "RotateLeft"
    assert thor.heading_action(origin, 350.0, {"x": 0.1, "z": 2.0}, 90) == "MoveAhead"  # wraps around 360
    camera = {"x": 0.0, "y": 1.5, "z": 0.0}
    below = {"x": 0.0, "y": 0.5, "z": 1.0}  # 45 degrees down
    assert thor.look_action(camera, 0.0, below, 30) == "LookDown"
    assert thor.look_action(camera, 45.0, below, 30) is None
    assert thor.look_action(camera, 90.0, below, 30) == "LookUp"


class _FakeEvent:
    def __init__(self, metadata, size):
        self.metadata = metadata
        self.frame = np.full((size, size, 3), 7, np.uint8)


class _FakeController:
    """A one-room AI2-THOR stand-in: the agent at the origin facing +z, an apple ahead, a closed fridge."""

    def __init__(self, local_executable_path, scene, width, height, gridSize, rotateStepDegrees):
        self.size, self.calls = width, []
        self.objects = [
            {"objectId": "Apple|1", "objectType": "Apple", "visible": False, "pickupable": True, "isPickedUp": False,
             "distance": 2.0, "position": {"x": 0.0, "y": 0.9, "z": 2.0}},
            {"objectId": "Fridge|1", "objectType": "Fridge", "visible": True, "openable": True, "isOpen": False,
             "distance": 1.0, "position": {"x": 1.0, "y": 0.9, "z": 0.0}},
        ]
        self.agent = {"position": {"x": 0.0, "y": 0.9, "z": 0.0}, "rotation": {"x": 0, "y": 0.0, "z": 0},
                      "cameraHorizon": 0.0}

    def _event(self, action_return=None):
        return _FakeEvent({"objects": self.objects, "agent": self.agent, "actionReturn": action_return,
                           "lastActionSuccess": True, "inventoryObjects": []}, self.size)

    def reset(self, scene):
        self.calls.append(("reset", scene))

    def step(self, action, **kwargs):
        self.calls.append((action, kwargs))
        if action == "GetReachablePositions":
            return self._event([{"x": 0.0, "y": 0.9, "z": 0.0}])
        if action == "GetShortestPath":
            return self._event({"corners": [dict(self.agent["position"]), {"x": 0.0, "y": 0.9, "z": 1.0}]})
        if action == "MoveAhead":
            self.agent["position"]["z"] += 1.0
            self.objects[0]["distance"] -= 1.0
            self.objects[0]["visible"] = self.objects[0]["distance"] <= 1.0
        if action == "PickupObject" and kwargs["objectId"] == "Apple|1" and self.objects[0]["visible"]:
            self.objects[0]["isPickedUp"] = True
        if action in ("OpenObject", "CloseObject"):
            self.objects[1]["isOpen"] = action == "OpenObject"
        return self._event()

    def stop(self):
        self.calls.append(("stop", {}))


def test_ai2thor_adapter_runs_an_episode_on_a_stand_in_controller(tmp_path, monkeypatch):
    fake = types.SimpleNamespace(Controller=_FakeController)
    monkeypatch.setattr(thor, "thor_build", lambda path: (tmp_path / "thor", fake))
    env = ENVS.build("ai2thor", tasks=["pickup/Apple", "close/Fridge"], image_size=16)
    obs, instruction = env.reset(0, "pickup/Apple")
    assert instruction in {"pick up the apple", "grab the apple", "take the apple"}
    assert obs["images"]["egocentric"].shape == (16, 16, 3) and obs["state"].shape == (7,)
    np.testing.assert_allclose(obs["state"][3:5], [0.0, 1.0])  # sin, cos of yaw 0
    assert ("InitialRandomSpawn", {"randomSeed": 0, "forceVisible": True, "numPlacementAttempts": 5}) in \
        env.controller.calls
    actions = []
    done = False
    while not done:
        action = env.expert()
        actions.append(thor.ACTIONS[int(action[0])])
        _, reward, terminated, truncated, info = env.step(action)
        done = terminated or truncated
    assert actions == ["MoveAhead", "PickupObject"] and info["success"] and reward == 1.0
    _, instruction = env.reset(1, "close/Fridge")  # the fridge is opened first, so closing it is not free
    assert env.controller.objects[1]["isOpen"] and instruction in {"close the fridge", "shut the fridge",
                                                                   "push the fridge closed"}
    env.close()
    assert env.controller.calls[-1][0] == "stop"
