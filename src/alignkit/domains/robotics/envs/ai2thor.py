"""AI2-THOR as a :class:`LanguageEnv`, for users with an AI2-THOR build on disk (``ai2thor`` package + executable).

Tasks are ``"<verb>/<ObjectType>"`` with verbs ``pickup``, ``open``, ``close``, ``toggle_on``,
``toggle_off`` (e.g. ``"pickup/Apple"``, ``"open/Fridge"``); instructions come from several phrasings per
verb (``"grab the apple"``). ``reset(seed)`` loads a scene, scatters objects with ``InitialRandomSpawn``
(seeded), puts the agent at a seeded reachable pose and, for ``close``/``toggle_off``, first opens or
switches on the target so the task is not done at the start. Success: an object of the target type is
held / open / closed / on / off.

Actions: ``Discrete(10)`` over :data:`ACTIONS`. An interaction acts on the closest visible object that
affords it (pickupable, openable, toggleable), as the agent has no pointer. The expert follows AI2-THOR's
``GetShortestPath`` to the nearest target object, turns and tilts toward it and interacts once it is
visible. Observations: one ``"egocentric"`` camera and state ``(x, y, z, sin yaw, cos yaw, horizon / 90,
holding)``.

Without a build nothing can run; :func:`thor_build` fails first with what to install and where to point.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Annotated, Any, Dict, List, Mapping, Optional, Sequence, Tuple

import gymnasium as gym
import numpy as np

from alignkit.core.params import AT_LEAST_ONE, POSITIVE
from alignkit.core.registry import ConfigError, did_you_mean
from alignkit.domains.robotics.envs.base import ENVS, LanguageEnv, Observation
from alignkit.domains.robotics.envs.instructions import AI2THOR_INSTRUCTIONS, object_words, pick_phrasing

EXECUTABLE_ENV = "ALIGNKIT_AI2THOR_EXECUTABLE"
ACTIONS = ["MoveAhead", "RotateLeft", "RotateRight", "LookUp", "LookDown",
           "PickupObject", "OpenObject", "CloseObject", "ToggleObjectOn", "ToggleObjectOff"]
# verb -> (interaction action, affordance flag, state key, state value meaning success)
VERBS: Dict[str, Tuple[str, str, str, bool]] = {
    "pickup": ("PickupObject", "pickupable", "isPickedUp", True),
    "open": ("OpenObject", "openable", "isOpen", True),
    "close": ("CloseObject", "openable", "isOpen", False),
    "toggle_on": ("ToggleObjectOn", "toggleable", "isToggled", True),
    "toggle_off": ("ToggleObjectOff", "toggleable", "isToggled", False),
}
AFFORDANCE = {action: flag for action, flag, _, _ in VERBS.values()}


class SimulatorUnavailableError(RuntimeError):
    """A simulator's package or build is missing; the message says what to install or where to point."""


def thor_build(executable_path: Optional[str]) -> Tuple[Path, Any]:
    """The AI2-THOR executable and the ``ai2thor.controller`` module, or a :class:`SimulatorUnavailableError`.

    The path is ``executable_path`` or the ``ALIGNKIT_AI2THOR_EXECUTABLE`` environment variable.
    """
    path = executable_path or os.environ.get(EXECUTABLE_ENV)
    fetch = ("AI2-THOR builds are downloaded by the ai2thor package on first use (to ~/.ai2thor/releases/"
             "thor-Linux64-<commit>/thor-Linux64-<commit>) on a machine with network access, or built from "
             "https://github.com/allenai/ai2thor; headless Linux also needs Vulkan (platform='CloudRendering') "
             "or an X server")
    if not path:
        raise SimulatorUnavailableError(
            f"ai2thor: no AI2-THOR build given; pass executable_path=<build executable> or set {EXECUTABLE_ENV}. "
            f"{fetch}")
    if not Path(path).expanduser().is_file():
        raise SimulatorUnavailableError(f"ai2thor: no AI2-THOR executable at {path!r} (executable_path or "
                                        f"{EXECUTABLE_ENV}); point it at the build's executable file. {fetch}")
    try:
        import ai2thor.controller as controller
    except ImportError as err:
        raise SimulatorUnavailableError(
            f"ai2thor: the 'ai2thor' package is not installed ({err}); install it with "
            f"`pip install ai2thor -c constraints.txt` (the build at {path} is used as is)") from None
    return Path(path).expanduser(), controller


def parse_task(task: str) -> Tuple[str, str]:
    """``"open/Fridge"`` -> ``("open", "Fridge")``, checked against :data:`VERBS`."""
    verb, _, object_type = task.partition("/")
    if verb not in VERBS or not object_type:
        raise ConfigError(f"ai2thor: task {task!r} must be '<verb>/<ObjectType>' with a verb among "
                          f"{', '.join(VERBS)}{did_you_mean(verb, VERBS)} (e.g. 'pickup/Apple')")
    return verb, object_type


def task_instruction(task: str, seed: int, paraphrase: bool = True) -> str:
    """The instruction of ``task`` for episode ``seed``: ``"open/Fridge"`` -> ``"open the fridge"``."""
    verb, object_type = parse_task(task)
    return pick_phrasing(AI2THOR_INSTRUCTIONS[verb], seed, paraphrase).format(obj=object_words(object_type))


def task_success(task: str, objects: Sequence[Mapping[str, Any]]) -> bool:
    """Whether an object of the task's type is in the goal state (held, open, closed, on or off)."""
    verb, object_type = parse_task(task)
    _, _, key, value = VERBS[verb]
    return any(o["objectType"] == object_type and bool(o.get(key)) == value for o in objects)


def step_arguments(action: int, objects: Sequence[Mapping[str, Any]], rotate_degrees: float,
                   look_degrees: float) -> Dict[str, Any]:
    """The ``controller.step`` keywords of discrete ``action`` (an index into :data:`ACTIONS`).

    Rotations and tilts carry their degrees; an interaction targets the closest visible object with the
    action's affordance, or becomes the no-op ``"Done"`` when there is none.
    """
    if not 0 <= action < len(ACTIONS):
        raise ValueError(f"ai2thor: action {action} is outside 0..{len(ACTIONS) - 1} ({', '.join(ACTIONS)})")
    name = ACTIONS[action]
    if name.startswith("Rotate"):
        return {"action": name, "degrees": rotate_degrees}
    if name.startswith("Look"):
        return {"action": name, "degrees": look_degrees}
    if name == "MoveAhead":
        return {"action": name}
    candidates = [o for o in objects if o.get("visible") and o.get(AFFORDANCE[name])]
    if not candidates:
        return {"action": "Done"}
    return {"action": name, "objectId": min(candidates, key=lambda o: o["distance"])["objectId"]}


def heading_action(position: Mapping[str, float], yaw: float, target: Mapping[str, float],
                   rotate_degrees: float) -> str:
    """``RotateLeft``/``RotateRight`` toward ``target`` (on the floor plane) or ``MoveAhead`` once facing it.

    Unity's yaw is clockwise from +z seen from above: the heading to ``target`` is
    ``atan2(dx, dz)``; the agent turns while the wrapped difference exceeds half a rotation step.
    """
    wanted = math.degrees(math.atan2(target["x"] - position["x"], target["z"] - position["z"]))
    diff = (wanted - yaw + 180.0) % 360.0 - 180.0
    if abs(diff) <= rotate_degrees / 2:
        return "MoveAhead"
    return "RotateRight" if diff > 0 else "RotateLeft"


def look_action(camera: Mapping[str, float], horizon: float, target: Mapping[str, float],
                look_degrees: float) -> Optional[str]:
    """``LookDown``/``LookUp`` toward ``target`` from the camera position, or None when within half a step.

    The wanted horizon (positive looks down) is ``atan2(camera_y - target_y, horizontal distance)``.
    """
    flat = math.hypot(target["x"] - camera["x"], target["z"] - camera["z"])
    wanted = math.degrees(math.atan2(camera["y"] - target["y"], flat))
    if abs(wanted - horizon) <= look_degrees / 2:
        return None
    return "LookDown" if wanted > horizon else "LookUp"


@ENVS.register("ai2thor")
class AI2ThorEnv(LanguageEnv):
    """AI2-THOR scenes with verb/object tasks (see the module doc); needs ``executable_path`` to a build."""

    def __init__(self, executable_path: Optional[str] = None, scenes: Sequence[str] = ("FloorPlan1",),
                 tasks: Sequence[str] = ("pickup/Apple", "open/Fridge", "open/Microwave", "toggle_on/Faucet"),
                 image_size: Annotated[int, AT_LEAST_ONE] = 64, max_steps: Annotated[int, AT_LEAST_ONE] = 100,
                 grid_size: Annotated[float, POSITIVE] = 0.25, rotate_degrees: Annotated[float, POSITIVE] = 90.0,
                 look_degrees: Annotated[float, POSITIVE] = 30.0, platform: Optional[str] = None,
                 paraphrase: bool = True):
        for task in tasks:
            parse_task(task)
        self.task_names = list(tasks)
        self.scenes = list(scenes)
        self.cameras = ["egocentric"]
        self.image_size = int(image_size)
        self.state_dim = 7
        self.action_space = gym.spaces.Discrete(len(ACTIONS))
        self.max_steps = int(max_steps)
        self.fps = 5
        self.rotate_degrees = rotate_degrees
        self.look_degrees = look_degrees
        self.paraphrase = paraphrase
        path, controller = thor_build(executable_path)
        extra = {}
        if platform is not None:
            import ai2thor.platform
            extra["platform"] = getattr(ai2thor.platform, platform)
        self.controller = controller.Controller(
            local_executable_path=str(path), scene=self.scenes[0], width=self.image_size, height=self.image_size,
            gridSize=grid_size, rotateStepDegrees=rotate_degrees, **extra)
        self._event = None
        self._task = self.task_names[0]
        self._steps = 0

    # ------------------------------------------------------------------ helpers
    def _objects(self) -> List[Dict[str, Any]]:
        return self._event.metadata["objects"]

    def _target(self) -> Dict[str, Any]:
        """The nearest object of the task's type not yet in its goal state (any of that type once done)."""
        verb, object_type = parse_task(self._task)
        _, _, key, value = VERBS[verb]
        same = [o for o in self._objects() if o["objectType"] == object_type]
        pending = [o for o in same if bool(o.get(key)) != value] or same
        return min(pending, key=lambda o: o["distance"])

    def _observe(self) -> Observation:
        agent = self._event.metadata["agent"]
        yaw = math.radians(agent["rotation"]["y"])
        p = agent["position"]
        holding = float(bool(self._event.metadata.get("inventoryObjects")))
        state = np.array([p["x"], p["y"], p["z"], math.sin(yaw), math.cos(yaw), agent["cameraHorizon"] / 90.0,
                          holding], dtype=np.float32)
        return {"images": {"egocentric": np.ascontiguousarray(self._event.frame, dtype=np.uint8)}, "state": state}

    # ------------------------------------------------------------------ LanguageEnv
    def instruction(self, seed: int, task: Optional[str] = None) -> str:
        return task_instruction(self.pick_task(seed, task), seed, self.paraphrase)

    def reset(self, seed: int, task: Optional[str] = None) -> Tuple[Observation, str]:
        self._task = self.pick_task(seed, task)
        rng = np.random.default_rng(seed)
        scene = self.scenes[int(rng.integers(len(self.scenes)))]
        self.controller.reset(scene=scene)
        self.controller.step(action="InitialRandomSpawn", randomSeed=int(seed) % 2**31, forceVisible=True,
                             numPlacementAttempts=5)
        verb, object_type = parse_task(self._task)
        self._event = self.controller.step(action="GetReachablePositions")
        if not any(o["objectType"] == object_type for o in self._objects()):
            raise ConfigError(f"ai2thor: scene {scene} has no {object_type} for task {self._task!r}; choose "
                              f"scenes that contain it (kitchens are FloorPlan1..30)")
        positions = self._event.metadata["actionReturn"]
        start = positions[int(rng.integers(len(positions)))]
        yaw = float(rng.integers(360 // int(self.rotate_degrees))) * self.rotate_degrees
        self._event = self.controller.step(action="Teleport", position=start, rotation={"x": 0, "y": yaw, "z": 0},
                                           horizon=0.0)
        if verb in ("close", "toggle_off"):  # start from the opposite state, or the task is done already
            undo = "OpenObject" if verb == "close" else "ToggleObjectOn"
            self._event = self.controller.step(action=undo, objectId=self._target()["objectId"], forceAction=True)
        self._steps = 0
        return self._observe(), self.instruction(seed, self._task)

    def step(self, action: Any) -> Tuple[Observation, float, bool, bool, Dict[str, Any]]:
        if self._event is None:
            raise RuntimeError("ai2thor: call reset(seed) before step()")
        args = step_arguments(int(np.asarray(action).reshape(-1)[0]), self._objects(), self.rotate_degrees,
                              self.look_degrees)
        self._event = self.controller.step(**args)
        self._steps += 1
        success = task_success(self._task, self._objects())
        return self._observe(), float(success), success, self._steps >= self.max_steps and not success, \
            {"success": success}

    def expert(self) -> np.ndarray:
        target = self._target()
        verb, _ = parse_task(self._task)
        if target.get("visible"):
            return np.array([ACTIONS.index(VERBS[verb][0])], dtype=np.float32)
        agent = self._event.metadata["agent"]
        event = self.controller.step(action="GetShortestPath", objectId=target["objectId"],
                                     position=agent["position"], rotation=agent["rotation"])
        corners = event.metadata["actionReturn"]["corners"] if event.metadata["lastActionSuccess"] else []
        ahead = [c for c in corners if math.hypot(c["x"] - agent["position"]["x"],
                                                  c["z"] - agent["position"]["z"]) > 0.1]
        if ahead:
            name = heading_action(agent["position"], agent["rotation"]["y"], ahead[0], self.rotate_degrees)
        else:  # at the end of the path: face the object, then tilt the camera toward it
            name = heading_action(agent["position"], agent["rotation"]["y"], target["position"], self.rotate_degrees)
            if name == "MoveAhead":
                camera = self._event.metadata.get("cameraPosition", agent["position"])
                name = look_action(camera, agent["cameraHorizon"], target["position"], self.look_degrees) or name
        return np.array([ACTIONS.index(name)], dtype=np.float32)

    def close(self) -> None:
        self.controller.stop()
