"""What every robotics model reads: the camera frames of a dataset batch, a frozen core text tower, the
config's ``model`` section (which must not configure towers or objectives), and the bounds of the config values
the models share (:data:`Size`, :data:`Dropout`, :data:`LossWeight`, checked when a config is loaded).
"""
from __future__ import annotations

from typing import Annotated, Any, Dict, List, Mapping, Optional, Sequence, Union

from torch import Tensor, nn

from alignkit.core.encoders.base import build_encoder, freeze
from alignkit.core.params import AT_LEAST_ONE, NON_NEGATIVE, Range
from alignkit.core.registry import ConfigError

IMAGE_KEY_PREFIX = "observation.images."
IMAGE_KEY_STEM = "observation.image"  # also the whole key of single-camera datasets (PushT)
TextSpec = Union[str, Mapping[str, Any]]
"""A core text encoder: an ``ENCODERS`` name or ``{"name", "params"}``."""
Size = Annotated[int, AT_LEAST_ONE]
"""A count or size of at least one: widths, depths, heads, image and patch sides, history steps, latents."""
Dropout = Annotated[float, Range(ge=0, lt=1)]
"""A dropout probability in [0, 1)."""
LossWeight = Annotated[float, NON_NEGATIVE]
"""The weight of a loss term (0 turns the term off)."""


def check_model_section(model: Optional[Mapping[str, Any]], name: str) -> None:
    """The runner hands every model its config's ``model`` section besides ``name`` and ``params``
    (``embed_dim``, ``towers``, ``objectives``, ``ema``); the robotics models are configured by ``model.params``
    alone, so towers or objectives there are a mistake and raise :class:`ConfigError`."""
    if model and (model.get("towers") or model.get("objectives") or (model.get("ema") or {}).get("enabled")):
        raise ConfigError(f"model '{name}' is configured by model.params only; remove model.towers, "
                          f"model.objectives and model.ema from its config")


def frozen_text_tower(spec: TextSpec) -> nn.Module:
    """A frozen core text encoder (``ENCODERS`` name or ``{"name", "params"}``) that memoises per-string outputs."""
    return freeze(build_encoder(spec, where="text_encoder", cache=True))


def camera_key(batch: Mapping[str, Any], camera: str) -> Optional[str]:
    """The batch key of ``camera``: the name itself when the batch has it (a full feature key such as
    ``"observation.image"`` or ``"observation.images.top"``), else ``"observation.images.<camera>"``; None when
    the batch has neither."""
    for key in (camera, IMAGE_KEY_PREFIX + camera):
        if key in batch:
            return key
    return None


def batch_cameras(batch: Mapping[str, Any]) -> List[str]:
    """The cameras of a dataset batch by name: ``<camera>`` for each ``observation.images.<camera>`` key and the
    full key of every other ``observation.image*`` key (PushT's ``observation.image``)."""
    return sorted(k[len(IMAGE_KEY_PREFIX):] if k.startswith(IMAGE_KEY_PREFIX) else k
                  for k in batch if k.startswith(IMAGE_KEY_STEM))


def camera_frames(batch: Mapping[str, Any], cameras: Optional[Sequence[str]]) -> Dict[str, Tensor]:
    """``{camera: (B, T, C, H, W)}`` of a dataset batch, keyed by the names in ``cameras`` (all of
    :func:`batch_cameras` when None). A camera is found by its full feature key (``"observation.image"``,
    ``"observation.images.top"``) or by ``<camera>`` of ``observation.images.<camera>``; a missing camera
    raises naming the cameras present."""
    wanted = list(cameras) if cameras else batch_cameras(batch)
    keys = {c: camera_key(batch, c) for c in wanted}
    missing = [c for c, k in keys.items() if k is None]
    if missing or not wanted:
        raise KeyError(f"batch lacks cameras {missing or '(any)'} (looked for the keys themselves and "
                       f"{[IMAGE_KEY_PREFIX + c for c in missing]}); it has cameras {batch_cameras(batch)}: set "
                       "cameras to some of these")
    return {c: batch[k] for c, k in keys.items()}
