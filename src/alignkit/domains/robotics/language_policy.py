"""Run a trained policy in ``N`` (vectorised) environments: :class:`LanguagePolicy`.

The environment interface (``reset(instruction)``, ``act(obs_batch)``) is that of the rollout helpers
(:mod:`alignkit.domains.robotics.rollout`): observations are ``{"images": {camera: uint8 (N, H, W, 3)},
"state": (N, S)}`` or a list of ``N`` such dicts with unbatched arrays.
"""
from __future__ import annotations

from collections.abc import Mapping as MappingABC
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from alignkit.domains.robotics.models.policy_module import PolicyInputs, PolicyModule

Observation = Mapping[str, Any]


def push_step(window: Tensor, new: Tensor, fresh: Tensor) -> Tensor:
    """``window`` ``(N, T, ...)`` moved one step back with ``new`` ``(N, ...)`` as its last step; the rows where
    ``fresh`` (bool ``(N,)``) is True are filled with ``new`` at every step."""
    out = window.roll(-1, dims=1)
    out[:, -1] = new
    out[fresh] = new[fresh, None]
    return out


def stack_observations(obs_batch: Union[Observation, Sequence[Observation]]) -> Tuple[Dict[str, np.ndarray],
                                                                                      Optional[np.ndarray]]:
    """``({camera: uint8 (N, H, W, 3)}, state (N, S) or None)`` from a batched observation dict or a list of
    per-environment ones."""
    if isinstance(obs_batch, MappingABC):
        images = {c: np.asarray(v) for c, v in obs_batch["images"].items()}
        state = obs_batch.get("state")
        return images, None if state is None else np.asarray(state, dtype=np.float32)
    cams = obs_batch[0]["images"].keys()
    images = {c: np.stack([np.asarray(o["images"][c]) for o in obs_batch]) for c in cams}
    states = [o.get("state") for o in obs_batch]
    return images, None if states[0] is None else np.stack(states).astype(np.float32)


class LanguagePolicy:
    """A trained :class:`PolicyModule` acting in ``N`` environments at once, each with its own instruction and
    observation history.

    ``reset(instruction, env_ids=None)``: a string for every environment (or the listed ``env_ids``), or one
    instruction per environment / per listed id; the histories of the reset environments are cleared.
    ``act(obs_batch)`` appends each environment's observation to its window of the last ``module.history``
    steps (the first observation after a reset fills the window and the earlier slots are marked padding,
    as the dataset pads history before an episode's start) and returns ``(N, A)`` float32 actions, or ``(N,)``
    int64 for discrete actions. ``image_size`` resizes camera images (bilinear) to what the model was trained on.
    Each new frame is encoded once: the window keeps its patch features (``PolicyInputs.features``).
    ``temperature > 0`` samples discrete actions from the policy's softmax (``seed`` seeds the draws) instead of
    taking the argmax: a greedy policy that is unsure in a state it does not leave (BabyAI: walking into a
    wall leaves the view unchanged) repeats the same action until the episode times out.
    """

    def __init__(self, module: PolicyModule, image_size: Optional[int] = None, temperature: float = 0.0,
                 seed: int = 0):
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0: greedy); got {temperature}")
        self.module = module.eval()
        self.temperature = float(temperature)
        self._generator = torch.Generator().manual_seed(seed)
        self.history = int(module.history)
        self.image_size = image_size
        self.instructions: List[str] = []
        self._default: Optional[str] = None
        self._frames: Dict[str, Tensor] = {}
        self._features: Dict[str, Tensor] = {}
        self._state: Optional[Tensor] = None
        self._valid = torch.zeros(0, self.history, dtype=torch.bool)
        self._fresh = torch.zeros(0, dtype=torch.bool)

    def reset(self, instruction: Union[str, Sequence[str]], env_ids: Optional[Sequence[int]] = None) -> None:
        """Start new episodes: in every environment (``env_ids`` None; a list gives one instruction each and sets
        the number of environments, a string is used for all) or in the listed ones."""
        if env_ids is None:
            if isinstance(instruction, str):
                self._default, self.instructions = instruction, []
                self._fresh = torch.zeros(0, dtype=torch.bool)
            else:
                self._default, self.instructions = None, list(instruction)
                self._fresh = torch.ones(len(self.instructions), dtype=torch.bool)
            return
        texts = [instruction] * len(env_ids) if isinstance(instruction, str) else list(instruction)
        if len(texts) != len(env_ids):
            raise ValueError(f"{len(texts)} instructions for {len(env_ids)} env_ids")
        for i, text in zip(env_ids, texts):
            if not 0 <= i < len(self.instructions):
                raise IndexError(f"env_id {i} out of range: the policy serves {len(self.instructions)} environments "
                                 f"(call reset with all instructions first)")
            self.instructions[i] = text
            self._fresh[i] = True

    def _observe(self, images: Dict[str, np.ndarray], state: Optional[np.ndarray]) -> None:
        n = next(iter(images.values())).shape[0]
        if not self.instructions:
            if self._default is None:
                raise RuntimeError("call reset(instruction) before act")
            self.instructions = [self._default] * n
            self._fresh = torch.ones(n, dtype=torch.bool)
        if n != len(self.instructions):
            raise ValueError(f"observations of {n} environments; reset gave {len(self.instructions)} instructions")
        new = {c: self._to_tensor(v) for c, v in images.items()}
        new_state = None if state is None else torch.as_tensor(state, dtype=torch.float32)
        with torch.no_grad():  # each frame is encoded once; the window keeps its features
            feats = {c: self.module.encode_frames(new[c].to(self.module.device), self.instructions).cpu()
                     for c in self.module.cameras}
        if not self._frames or self._valid.shape[0] != n:
            self._frames = {c: v[:, None].repeat(1, self.history, 1, 1, 1) for c, v in new.items()}
            self._features = {c: v[:, None].repeat(1, self.history, 1, 1) for c, v in feats.items()}
            self._state = None if new_state is None else new_state[:, None].repeat(1, self.history, 1)
            self._valid = torch.zeros(n, self.history, dtype=torch.bool)
        fresh = self._fresh
        self._frames = {c: push_step(self._frames[c], v, fresh) for c, v in new.items()}
        self._features = {c: push_step(self._features[c], v, fresh) for c, v in feats.items()}
        if new_state is not None and self._state is not None:
            self._state = push_step(self._state, new_state, fresh)
        self._valid = push_step(self._valid, torch.ones(n, dtype=torch.bool), fresh)
        self._valid[fresh, :-1] = False
        self._fresh = torch.zeros(n, dtype=torch.bool)

    def _to_tensor(self, frames: np.ndarray) -> Tensor:
        x = torch.as_tensor(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255.0
        if self.image_size is not None and tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False,
                              antialias=True)
        return x

    def window(self) -> PolicyInputs:
        """The current observation windows of all environments."""
        device = self.module.device
        images = {c: self._frames[c].to(device) for c in self.module.cameras}
        state = None if self._state is None else self._state.to(device)
        return PolicyInputs(images=images, texts=list(self.instructions), state=state,
                            pad_mask=self._valid.to(device),
                            features={c: self._features[c].to(device) for c in self.module.cameras})

    def act(self, obs_batch: Union[Observation, Sequence[Observation]]) -> np.ndarray:
        """Actions of all environments for their current observations (see the class docstring)."""
        images, state = stack_observations(obs_batch)
        missing = [c for c in self.module.cameras if c not in images]
        if missing:
            raise KeyError(f"observations lack cameras {missing} the policy was trained on; they have "
                           f"{sorted(images)}")
        self._observe(images, state if self.module.state_dim else None)
        actions = self.module.predict_action(self.window(), self.temperature, self._generator).cpu()
        if self.module.action_head.num_actions:
            return actions[:, 0].long().numpy()
        return actions.numpy().astype(np.float32)
