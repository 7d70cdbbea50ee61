"""Meta-World v3 (MuJoCo) as a :class:`LanguageEnv`: one task, MT10, MT50 or any task list, rendered on CPU.

Each task keeps one simulator, built on first use (``gym.make`` is slow) and reused across episodes.
Layouts: Meta-World ignores ``reset(seed=...)``, and its benchmarks pick among 50 preset layouts per task;
here the unwrapped env draws a fresh layout (object and goal positions, ``_last_rand_vec``) from its own
generator, seeded with the episode's seed through ``seeded_rand_vec``, so an episode's layout is a function
of its seed and train/test layouts are kept apart by :func:`~alignkit.domains.robotics.envs.base.layout_seed`.
Tasks that share a scene (reach, push and pick-place) get the same object and goal layout for the same seed,
so only the instruction tells them apart.

Observations: ``state`` is the 39-d observation (hand xyz, gripper opening, object poses, the previous
frame's 18 values and the goal xyz), or the ``state_indices`` subset; ``images`` are rendered with
``mujoco.Renderer`` without shadows, reflections, skybox and (unless ``antialias``) multisampling, which
more than halves a frame's CPU rendering time under OSMesa (``docs/robotics.md``). The scripted policies of
``metaworld.policies`` are the experts; episodes end on success or after ``max_steps`` steps.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Annotated, Any, Dict, List, Optional, Sequence, Tuple, Union

os.environ.setdefault("MUJOCO_GL", "osmesa")  # CPU rendering; must precede the first `import mujoco`

import gymnasium as gym  # noqa: E402
import mujoco  # noqa: E402
import numpy as np  # noqa: E402
from metaworld.env_dict import ALL_V3_ENVIRONMENTS, MT10_V3  # noqa: E402
from metaworld.policies import ENV_POLICY_MAP  # noqa: E402

from alignkit.core.params import AT_LEAST_ONE, Range  # noqa: E402
from alignkit.core.registry import ConfigError, did_you_mean  # noqa: E402
from alignkit.domains.robotics.envs.base import ENVS, LanguageEnv, Observation  # noqa: E402
from alignkit.domains.robotics.envs.instructions import METAWORLD_INSTRUCTIONS, pick_phrasing  # noqa: E402

OBS_DIM = 39
MAX_PATH_LENGTH = 500  # Meta-World refuses to step past this
BENCHMARKS = {"MT10": list(MT10_V3), "MT50": sorted(ALL_V3_ENVIRONMENTS)}


def metaworld_tasks(tasks: Union[str, Sequence[str]]) -> List[str]:
    """Task names from one task (``"reach-v3"``), a benchmark (``"MT10"``, ``"MT50"``) or a list of tasks."""
    names = BENCHMARKS.get(tasks, [tasks]) if isinstance(tasks, str) else list(tasks)
    if not names:
        raise ConfigError("metaworld: 'tasks' is empty; give a task (e.g. 'reach-v3'), 'MT10', 'MT50' or a list")
    for name in names:
        if name not in ALL_V3_ENVIRONMENTS:
            raise ConfigError(f"metaworld: unknown task {name!r}{did_you_mean(name, ALL_V3_ENVIRONMENTS)}; "
                              f"tasks are the 50 Meta-World v3 names (e.g. reach-v3) or MT10/MT50")
    return names


class OffscreenRenderer(mujoco.Renderer):
    """``mujoco.Renderer`` that frees its GPU objects in its own GL context.

    ``mujoco.Renderer.close`` (mujoco 3.3) destroys the GL context before freeing the ``MjrContext``,
    which then deletes textures and buffers of whichever context is current: under OSMesa, closing
    one renderer garbles every other live one (the next frames show font glyphs). Freeing the
    ``MjrContext`` first, with its own context current, keeps several renderers (one per task) usable.
    """

    def __init__(self, model: mujoco.MjModel, height: int, width: int):
        self._gl_context = self._mjr_context = None  # so that close() works when __init__ fails
        super().__init__(model, height, width)

    def close(self) -> None:
        if self._gl_context is not None and self._mjr_context is not None:
            self._gl_context.make_current()
            self._mjr_context.free()
            self._mjr_context = None
        super().close()


@dataclass
class _TaskSim:
    env: Any  # the unwrapped SawyerXYZEnv of one task
    expert: Any  # its scripted policy (metaworld.policies)
    renderer: Optional[OffscreenRenderer]


@ENVS.register("metaworld")
class MetaWorldEnv(LanguageEnv):
    """Meta-World v3 tasks with natural-language instructions (several phrasings per task).

    ``tasks``: a task, ``"MT10"``, ``"MT50"`` or a list. ``cameras``: Meta-World camera names
    (``corner``, ``corner2``, ``corner3``, ``corner4``, ``topview``, ``behindGripper``, ``gripperPOV``);
    an empty list renders nothing (state-only, fast). ``show_sites=False`` hides the site markers (the
    goal spheres, whose colour differs between tasks such as reach and push). ``paraphrase=False`` always
    gives a task's canonical instruction. Actions: float32 (4,) in [-1, 1] (hand dx, dy, dz, gripper).
    """

    def __init__(self, tasks: Union[str, List[str]] = "reach-v3", cameras: Sequence[str] = ("corner",),
                 image_size: Annotated[int, AT_LEAST_ONE] = 64,
                 state_indices: Optional[List[Annotated[int, Range(ge=0, lt=OBS_DIM)]]] = None,
                 max_steps: Annotated[int, Range(ge=1, le=MAX_PATH_LENGTH)] = 200,
                 paraphrase: bool = True, antialias: bool = False, show_sites: bool = True):
        self.task_names = metaworld_tasks(tasks)
        self.cameras = list(cameras)
        self.image_size = int(image_size)
        if not 0 < max_steps <= MAX_PATH_LENGTH:
            raise ConfigError(f"metaworld: max_steps must be in 1..{MAX_PATH_LENGTH}, got {max_steps}")
        self.max_steps = int(max_steps)
        self.state_indices = np.arange(OBS_DIM) if state_indices is None else np.asarray(state_indices, int)
        if self.state_indices.ndim != 1 or not np.all((self.state_indices >= 0) & (self.state_indices < OBS_DIM)):
            raise ConfigError(f"metaworld: state_indices must index the {OBS_DIM}-d observation, got {state_indices}")
        self.state_dim = len(self.state_indices)
        self.paraphrase = paraphrase
        self.antialias = antialias
        self.scene_option = mujoco.MjvOption()
        if not show_sites:
            self.scene_option.sitegroup[:] = 0
        self.action_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
        self.fps = 80  # 5 MuJoCo steps of 2.5 ms per action
        self._sims: Dict[str, _TaskSim] = {}
        self._sim: Optional[_TaskSim] = None
        self._raw: Optional[np.ndarray] = None
        self._steps = 0

    # ------------------------------------------------------------------ simulators
    def _task_sim(self, task: str) -> _TaskSim:
        if task not in self._sims:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Meta-World warns about its own observation bounds
                env = ALL_V3_ENVIRONMENTS[task]()
            env._partially_observable = False  # the 39-d observation includes the goal (as in MT1/MT10)
            del env.sawyer_observation_space  # a cached property computed for the hidden-goal layout
            env._freeze_rand_vec = False
            env.seeded_rand_vec = True  # draw layouts from env.np_random, seeded per episode in reset()
            env._set_task_called = True
            renderer = None
            if self.cameras:
                known = [env.model.camera(i).name for i in range(env.model.ncam)]
                for cam in self.cameras:
                    if cam not in known:
                        raise ConfigError(f"metaworld: unknown camera {cam!r}{did_you_mean(cam, known)}; "
                                          f"cameras: {', '.join(known)}")
                env.model.vis.quality.shadowsize = 0
                if not self.antialias:
                    env.model.vis.quality.offsamples = 0
                try:
                    renderer = OffscreenRenderer(env.model, self.image_size, self.image_size)
                except mujoco.FatalError as err:
                    raise RuntimeError(
                        f"metaworld: MuJoCo could not create an OpenGL context to render ({err}). MuJoCo reads "
                        f"MUJOCO_GL when it is first imported: set MUJOCO_GL=osmesa (CPU, needs libosmesa6) or egl "
                        f"(GPU) before anything imports mujoco or metaworld, or pass cameras=[] for state-only "
                        f"episodes") from None
                for flag in (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION,
                             mujoco.mjtRndFlag.mjRND_SKYBOX):
                    renderer.scene.flags[flag] = False
            self._sims[task] = _TaskSim(env, ENV_POLICY_MAP[task](), renderer)
        return self._sims[task]

    def _observe(self) -> Observation:
        sim = self._sim
        images = {}
        for cam in self.cameras:
            sim.renderer.update_scene(sim.env.data, camera=cam, scene_option=self.scene_option)
            images[cam] = np.ascontiguousarray(sim.renderer.render()[::-1])  # Meta-World cameras render upside down
        return {"images": images, "state": self._raw[self.state_indices].astype(np.float32)}

    # ------------------------------------------------------------------ LanguageEnv
    def instruction(self, seed: int, task: Optional[str] = None) -> str:
        return pick_phrasing(METAWORLD_INSTRUCTIONS[self.pick_task(seed, task)], seed, self.paraphrase)

    def reset(self, seed: int, task: Optional[str] = None) -> Tuple[Observation, str]:
        task = self.pick_task(seed, task)
        self._sim = self._task_sim(task)
        self._sim.env.seed(seed)
        self._raw, _ = self._sim.env.reset()
        self._steps = 0
        return self._observe(), self.instruction(seed, task)

    def step(self, action: Any) -> Tuple[Observation, float, bool, bool, Dict[str, Any]]:
        if self._sim is None:
            raise RuntimeError("metaworld: call reset(seed) before step()")
        action = np.clip(np.asarray(action, dtype=np.float32).reshape(4), -1.0, 1.0)
        self._raw, reward, _, _, info = self._sim.env.step(action)
        self._steps += 1
        success = bool(info["success"])
        return self._observe(), float(reward), success, self._steps >= self.max_steps and not success, \
            {"success": success}

    def expert(self) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the scripted policies warn that their gains may exceed [-1, 1]
            action = self._sim.expert.get_action(self._raw)
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    def close(self) -> None:
        for sim in self._sims.values():
            if sim.renderer is not None:
                sim.renderer.close()
            sim.env.close()
        self._sims.clear()
        self._sim = None
