"""Train/validation/test episodes of a LeRobot dataset, and the registered ``lerobot`` dataset of configs."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from alignkit.core.checkpoints import read_json
from alignkit.core.params import AT_LEAST_ONE, NON_NEGATIVE, Range
from alignkit.core.registry import DATASETS, ConfigError
from alignkit.domains.robotics.lerobot.layout import INFO_PATH, PathLike
from alignkit.domains.robotics.lerobot.reader import LeRobotDataset

Side = Annotated[int, AT_LEAST_ONE]
HoldoutFraction = Annotated[float, Range(gt=0, lt=1)]  # as split_episodes checks it


def split_episodes(info: Mapping[str, Any], split: str, holdout: Optional[Mapping[str, float]] = None,
                   seed: int = 0) -> List[int]:
    """The ``episode_index`` values of ``split`` of a dataset whose ``meta/info.json`` is ``info``.

    ``info["splits"]`` maps split names to ranges ``"a:b"`` (episodes ``a .. b - 1``; several may be joined
    by commas), as lerobot writes them (``{"train": "0:N"}``); without it every one of ``total_episodes``
    episodes is ``train``. ``holdout`` (``{"val": 0.1, "test": 0.1}``) moves ``round(f * n)`` (at least one)
    of the ``n`` train episodes, chosen by a permutation seeded with ``seed``, into each named split. A split
    that is neither listed nor held out has no episodes.
    """
    ranges = dict(info.get("splits") or {"train": f"0:{int(info.get('total_episodes', 0))}"})
    listed: Dict[str, List[int]] = {}
    for name, spec in ranges.items():
        episodes: List[int] = []
        for part in str(spec).split(","):
            start, sep, stop = part.partition(":")
            if not sep:
                raise ConfigError(f"meta/info.json splits[{name!r}] = {spec!r}: expected ranges 'a:b'")
            episodes.extend(range(int(start), int(stop)))
        listed[name] = episodes
    holdout = dict(holdout or {})
    if not holdout:
        return listed.get(split, [])
    if "train" in holdout or any(not 0.0 < f < 1.0 for f in holdout.values()):
        raise ConfigError(f"holdout {holdout}: give fractions in (0, 1) of the train episodes for other splits "
                          "(e.g. {val: 0.1, test: 0.1})")
    order = np.random.default_rng(seed).permutation(listed.get("train", []))
    taken: Dict[str, List[int]] = {}
    start = 0
    for name in sorted(holdout):
        count = max(1, int(round(holdout[name] * len(order))))
        taken[name] = sorted(int(e) for e in order[start:start + count])
        start += count
    if start >= len(order):
        raise ConfigError(f"holdout {holdout} leaves none of the {len(order)} train episodes for training")
    taken["train"] = sorted(int(e) for e in order[start:])
    return taken[split] if split in taken else listed.get(split, [])


@DATASETS.register("lerobot")
class LeRobotSplit(LeRobotDataset):
    """A LeRobot dataset (v3.0 or v2.1) in a config: ``data: {dataset: lerobot, params: {root: ...}}``.

    The items are :class:`LeRobotDataset`'s (windows of ``window`` steps; ``window: 1`` gives single frames,
    as Voltron's V-Cond reads them); ``split`` selects episodes with :func:`split_episodes`
    (``holdout`` and ``split_seed`` carve validation/test episodes out of the train ones). A split with no
    episodes is empty (the DataModule then skips it).

    Workers only decode: augment training windows ``(B, T, 3, H, W)`` on the accelerator with the core's
    ``data.augment: [{name: random-shift, params: {keys: [observation.images.<camera>], pad: 4}}]`` (DrQ's shift,
    one per window) or ``affine-intensity`` (:mod:`alignkit.core.augment`).
    """

    def __init__(self, root: PathLike, split: str = "train", window: Annotated[int, AT_LEAST_ONE] = 1,
                 cameras: Optional[Sequence[str]] = None, image_size: Optional[Union[Side, Tuple[Side, Side]]] = None,
                 skip_bad: bool = False, holdout: Optional[Mapping[str, HoldoutFraction]] = None,
                 split_seed: Annotated[int, NON_NEGATIVE] = 0, cache_frames: bool = False):
        info_path = Path(root) / INFO_PATH
        if not info_path.is_file():
            raise FileNotFoundError(f"{root} is not a LeRobot dataset: no {INFO_PATH}")
        self.split = split
        info = read_json(info_path)
        if not isinstance(info, dict):
            raise ValueError(f"{info_path}: a JSON {type(info).__name__}, not an object of dataset fields")
        episodes = split_episodes(info, split, holdout, split_seed)
        super().__init__(root, window=window, cameras=cameras, image_size=image_size, skip_bad=skip_bad,
                         episodes=episodes, cache_frames=cache_frames)
