"""Minigrid/BabyAI levels as :class:`LanguageEnv`: the mission is the instruction, the BabyAI bot the expert.

Images. The agent's 7x7 partial view is given as one camera, ``"view"``, of ``7 * cell_pixels`` pixels
square, in one of two encodings:

- ``"symbolic"`` (default): each cell's ``(object, colour, state)`` indices, scaled to span 0..255 per
  channel (``object * 25``, ``colour * 51``, ``state * 127``), painted as a flat ``cell_pixels``-square
  block. A patch of ``cell_pixels`` is exactly one cell, so a linear patch embedding reads object and
  colour directly; flat blocks survive the lossy video codec of a LeRobot dataset.
- ``"rgb"``: Minigrid's own rendering of the view (``tile_size = cell_pixels``); closer to pixels from a
  camera, slower to encode and to learn from (figures in ``docs/robotics.md``).

State: the agent's heading one-hot (4) and its grid position divided by the grid size minus one (2).
Actions: ``Discrete(7)`` (left, right, forward, pickup, drop, toggle, done), stored in episodes as ``(1,)``.

:class:`BabyAIChainEnv` chains five pick-up instructions in one episode (CALVIN-style): when the agent
picks up the named object, the object is put away, the next instruction is issued (``info
["instruction"]``) and the episode goes on; each instruction has its own step budget.
"""
from __future__ import annotations

import contextlib
import io
from typing import Annotated, Any, Dict, List, Optional, Tuple, Union

import gymnasium as gym
import minigrid  # noqa: F401  (registers the BabyAI levels with gymnasium)
import numpy as np
from minigrid.envs.babyai.core.roomgrid_level import RoomGridLevel
from minigrid.envs.babyai.core.verifier import ObjDesc, PickupInstr
from minigrid.utils.baby_ai_bot import BabyAIBot

from alignkit.core.params import AT_LEAST_ONE, OneOf, Range
from alignkit.core.registry import ConfigError, did_you_mean
from alignkit.domains.robotics.envs.base import ENVS, LanguageEnv, Observation

IMAGE_MODES = ("symbolic", "rgb")
SYMBOLIC_SCALE = np.array([25, 51, 127], dtype=np.uint8)  # object 0..10, colour 0..5, state 0..2 -> 0..255
VIEW = 7  # cells in the agent's view (Minigrid's agent_view_size)
MIN_ROOM_SIZE = 3  # Minigrid's RoomGrid asserts room_size >= 3 (walls included)

ImageMode = Annotated[str, OneOf(IMAGE_MODES)]
Count = Annotated[int, AT_LEAST_ONE]


def symbolic_image(grid: np.ndarray, cell_pixels: int) -> np.ndarray:
    """uint8 ``(7 c, 7 c, 3)`` image of Minigrid's ``(7, 7, 3)`` view encoding (indexed ``[x, y]``).

    Rows are the view's y (the agent sits at the bottom centre, facing up), each cell a flat ``c``-pixel
    block of ``(object * 25, colour * 51, state * 127)``.
    """
    cells = grid.transpose(1, 0, 2).astype(np.uint8) * SYMBOLIC_SCALE
    return np.ascontiguousarray(cells.repeat(cell_pixels, axis=0).repeat(cell_pixels, axis=1))


def _quiet_reset(level: RoomGridLevel, seed: int) -> None:
    """Reset a BabyAI level; its rejection sampler prints each rejected layout, which is not news."""
    with contextlib.redirect_stdout(io.StringIO()):
        level.reset(seed=seed)


class _BabyAIBase(LanguageEnv):
    """Observation encoding, the bot and the discrete actions shared by single and chained missions."""

    def __init__(self, image_mode: str, cell_pixels: int, max_steps: int):
        if image_mode not in IMAGE_MODES:
            raise ConfigError(f"babyai: unknown image_mode {image_mode!r}{did_you_mean(image_mode, IMAGE_MODES)}; "
                              f"use one of {', '.join(IMAGE_MODES)}")
        self.image_mode = image_mode
        self.cell_pixels = int(cell_pixels)
        self.cameras = ["view"]
        self.image_size = VIEW * self.cell_pixels
        self.state_dim = 6
        self.action_space = gym.spaces.Discrete(7)
        self.max_steps = int(max_steps)
        self.fps = 10
        self._level: Optional[RoomGridLevel] = None
        self._bot: Optional[BabyAIBot] = None
        self._last_action: Optional[int] = None

    def _observe(self) -> Observation:
        level = self._level
        if self.image_mode == "symbolic":
            image = symbolic_image(level.gen_obs()["image"], self.cell_pixels)
        else:
            image = level.get_frame(highlight=False, tile_size=self.cell_pixels, agent_pov=True)
        heading = np.eye(4, dtype=np.float32)[level.agent_dir]
        position = np.asarray(level.agent_pos, np.float32) / np.array([level.width - 1, level.height - 1], np.float32)
        return {"images": {"view": image}, "state": np.concatenate([heading, position])}

    def _start(self, level: RoomGridLevel, seed: int) -> Tuple[Observation, str]:
        self._level = level
        _quiet_reset(level, seed)
        self._bot = BabyAIBot(level)
        self._last_action = None
        return self._observe(), level.mission

    def _act(self, action: Any) -> Tuple[float, bool, bool]:
        """Step the level with ``action`` (an int or a ``(1,)`` array); (reward, terminated, truncated)."""
        if self._level is None:
            raise RuntimeError(f"{type(self).__name__}: call reset(seed) before step()")
        self._last_action = int(np.asarray(action).reshape(-1)[0])
        _, reward, terminated, truncated, _ = self._level.step(self._last_action)
        return float(reward), bool(terminated), bool(truncated)

    def expert(self) -> np.ndarray:
        return np.array([self._bot.replan(self._last_action)], dtype=np.float32)


@ENVS.register("babyai")
class BabyAIEnv(_BabyAIBase):
    """One or several BabyAI levels (gymnasium ids, e.g. ``"BabyAI-PickupLoc-v0"``); the mission is the instruction.

    ``max_steps`` fixes every level's step limit (64 is PickupLoc's own; multi-room levels need more).
    Success is the level's own verdict (its instruction verifier). GoToLocal counts facing the target as
    success, which a random policy often reaches (``docs/robotics.md``): PickupLoc is the better language test.
    """

    def __init__(self, levels: Union[str, List[str]] = "BabyAI-PickupLoc-v0", image_mode: ImageMode = "symbolic",
                 cell_pixels: Count = 8, max_steps: Count = 64):
        super().__init__(image_mode, cell_pixels, max_steps)
        self.task_names = [levels] if isinstance(levels, str) else list(levels)
        known = [name for name in gym.registry if name.startswith("BabyAI-")]
        for name in self.task_names:
            if name not in known:
                raise ConfigError(f"babyai: unknown level {name!r}{did_you_mean(name, known)}; levels are the "
                                  f"gymnasium ids registered by minigrid (BabyAI-PickupLoc-v0, BabyAI-GoToLocal-v0, ...)")
        self._levels: Dict[str, RoomGridLevel] = {}

    def reset(self, seed: int, task: Optional[str] = None) -> Tuple[Observation, str]:
        task = self.pick_task(seed, task)
        if task not in self._levels:
            self._levels[task] = gym.make(task, max_steps=self.max_steps).unwrapped
        return self._start(self._levels[task], seed)

    def step(self, action: Any) -> Tuple[Observation, float, bool, bool, Dict[str, Any]]:
        reward, terminated, truncated = self._act(action)
        return self._observe(), reward, terminated, truncated, {"success": terminated and reward > 0}


class PickupChainLevel(RoomGridLevel):
    """One room with ``num_objs`` distinct objects; the mission is to pick up ``chain_len`` of them in turn.

    ``chain`` holds the objects' descriptions in order; ``instrs`` is the current pick-up instruction.
    """

    def __init__(self, chain_len: int = 5, num_objs: int = 8, room_size: int = 8, max_steps: int = 321):
        self.chain_len = chain_len
        self.num_objs = num_objs
        self.chain: List[ObjDesc] = []
        super().__init__(room_size=room_size, num_rows=1, num_cols=1, max_steps=max_steps)

    def gen_mission(self) -> None:
        self.place_agent()
        objs = self.add_distractors(num_distractors=self.num_objs, all_unique=True)
        self.check_objs_reachable()
        order = self.np_random.permutation(len(objs))[:self.chain_len]
        self.chain = [ObjDesc(objs[i].type, objs[i].color) for i in order]
        self.instrs = PickupInstr(self.chain[0])

    def issue(self, k: int) -> str:
        """Put away what the agent carries and make ``chain[k]`` the current instruction; its text."""
        self.carrying = None
        self.instrs = PickupInstr(self.chain[k])
        self.instrs.reset_verifier(self)
        self.mission = self.instrs.surface(self)
        return self.mission


@ENVS.register("babyai-chain")
class BabyAIChainEnv(_BabyAIBase):
    """CALVIN-style chains: ``chain_len`` pick-up instructions in one episode of a one-room level.

    ``reset`` returns the first instruction; ``step`` reports ``info["completed"]`` (instructions done so
    far) and, when one is done and another follows, the next one in ``info["instruction"]``. The episode
    terminates with ``success`` when all are done, and is truncated when an instruction is not done
    within ``subtask_steps`` steps. The expert is the BabyAI bot, replanned for each instruction.
    """

    def __init__(self, chain_len: Count = 5, num_objs: Count = 8,
                 room_size: Annotated[int, Range(ge=MIN_ROOM_SIZE)] = 8, subtask_steps: Count = 64,
                 image_mode: ImageMode = "symbolic", cell_pixels: Count = 8):
        if not 1 <= chain_len <= num_objs:
            raise ConfigError(f"babyai-chain: chain_len must be in 1..num_objs ({num_objs}), got {chain_len}")
        super().__init__(image_mode, cell_pixels, chain_len * subtask_steps)
        self.chain_len = chain_len
        self.subtask_steps = subtask_steps
        self.task_names = ["pickup-chain"]
        self._chain_level = PickupChainLevel(chain_len, num_objs, room_size, max_steps=self.max_steps + 1)
        self._completed = 0
        self._subtask_step = 0

    def reset(self, seed: int, task: Optional[str] = None) -> Tuple[Observation, str]:
        self.pick_task(seed, task)
        self._completed = 0
        self._subtask_step = 0
        return self._start(self._chain_level, seed)

    def step(self, action: Any) -> Tuple[Observation, float, bool, bool, Dict[str, Any]]:
        reward, done, _ = self._act(action)
        self._subtask_step += 1
        info: Dict[str, Any] = {"success": False}
        if done and reward > 0:
            self._completed += 1
            self._subtask_step = 0
            if self._completed == self.chain_len:
                info["success"] = True
            else:
                info["instruction"] = self._chain_level.issue(self._completed)
                self._bot = BabyAIBot(self._chain_level)
                self._last_action = None
        info["completed"] = self._completed
        truncated = not info["success"] and self._subtask_step >= self.subtask_steps
        return self._observe(), reward, info["success"], truncated, info
