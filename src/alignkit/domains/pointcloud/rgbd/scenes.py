"""One RGB-D scene folder (layout in :mod:`alignkit.domains.pointcloud.rgbd`) as a sequence of :class:`RGBDFrame` s."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple, Union

from torch import Tensor

from alignkit.core.registry import ConfigError, did_you_mean
from alignkit.core.text import read_text
from alignkit.domains.pointcloud.rgbd.files import (COLOR_EXTENSIONS, decode_color, decode_depth, decode_labels,
                                                    read_intrinsics, read_pose, read_trajectory_log)

PathLike = Union[str, Path]

DEPTH_SCALES = {"scannet": 1000.0, "redwood": 1000.0, "augmented-icl-nuim": 1000.0, "7-scenes": 1000.0,
                "tum": 5000.0, "icl-nuim": 5000.0}
"""Depth PNG units per metre (``metres = value / depth_scale``) of each RGB-D dataset, as documented:

- ``scannet``: 16-bit PNG depth in millimetres (ScanNet's ``SensReader`` export; github.com/ScanNet/ScanNet);
- ``redwood`` / ``augmented-icl-nuim``: millimetres (Choi et al., "Robust Reconstruction of Indoor Scenes",
  redwood-data.org/indoor; the default ``depth_scale=1000`` of Open3D's ``create_from_color_and_depth``);
- ``7-scenes``: millimetres, 65535 = invalid (Microsoft RGB-D Dataset 7-Scenes page; its depth is not
  registered to the colour camera, and 65535 is not treated as missing here);
- ``tum``: depth scaled by a factor of 5000, a value of 5000 being 1 m (TUM RGB-D benchmark, "File Formats",
  cvg.cit.tum.de/data/datasets/rgbd-dataset/file_formats);
- ``icl-nuim``: the original ICL-NUIM release in TUM RGB-D format, same factor 5000 (Handa et al., ICRA 2014,
  www.doc.ic.ac.uk/~ahanda/VaFRIC/iclnuim.html).
"""
RGBD_LAYOUTS = tuple(DEPTH_SCALES)


def layout_depth_scale(layout: str, depth_scale: Optional[float] = None) -> float:
    """``depth_scale`` when given (an explicit value overrides), else the ``layout``'s :data:`DEPTH_SCALES` entry."""
    if layout not in DEPTH_SCALES:
        raise ConfigError(f"RGB-D layout must be one of {', '.join(RGBD_LAYOUTS)}; got {layout!r}"
                          f"{did_you_mean(str(layout), RGBD_LAYOUTS)}")
    return float(depth_scale) if depth_scale is not None else DEPTH_SCALES[layout]


INTRINSIC_TXT = ("intrinsic/intrinsic_depth.txt", "intrinsic/intrinsic_color.txt", "intrinsic.txt")
"""Intrinsics files looked for in a scene folder, in this order (paths relative to the scene)."""


@dataclass
class RGBDFrame:
    """One registered RGB-D frame.

    ``color (3, H, W)`` float in [0, 1]; ``depth (H, W)`` metres (0 = missing); ``intrinsics (3, 3)``;
    ``pose (4, 4)`` camera-to-world or None; ``labels (H, W)`` int64 class indices (:data:`IGNORE_INDEX`
    = unlabeled) or None; ``id``: ``<scene>/<stem>``.
    """

    color: Tensor
    depth: Tensor
    intrinsics: Tensor
    pose: Optional[Tensor]
    labels: Optional[Tensor]
    id: str


def find_intrinsics(scene: PathLike) -> Path:
    """The intrinsics file of a scene folder: the first of :data:`INTRINSIC_TXT` present, else the first ``*.json``
    holding ``intrinsic_matrix``; :class:`FileNotFoundError` if none."""
    scene = Path(scene)
    for rel in INTRINSIC_TXT:
        if (scene / rel).is_file():
            return scene / rel
    for candidate in sorted(scene.glob("*.json")):
        try:
            if "intrinsic_matrix" in json.loads(read_text(candidate, what="JSON file")):
                return candidate
        except (ValueError, TypeError):  # not text, not JSON (TextDecodeError, json.JSONDecodeError)
            continue
    raise FileNotFoundError(f"no camera intrinsics in {scene}: looked for {', '.join(INTRINSIC_TXT)} and a *.json "
                            "with Open3D's 'intrinsic_matrix'")


def _stem_order(stem: str) -> Tuple[int, Union[int, str]]:
    return (0, int(stem)) if stem.isdigit() else (1, stem)


class RGBDScene:
    """The frames of one scene folder (layout: :mod:`alignkit.domains.pointcloud.rgbd`), sorted by stem (numerically
    if digits).

    ``depth_scale`` (depth PNG units per metre): None = the ``layout``'s documented value (:data:`DEPTH_SCALES`:
    5000 for ``tum``, 1000 for ``scannet``, the default), an explicit value overrides it. ``intrinsics``: a file
    (relative to the scene folder unless absolute), else :func:`find_intrinsics`.

    A frame's pose comes from ``pose/<stem>.txt``, else from ``trajectory.log`` (the entry whose id is the
    integer stem, or the frame's position when stems are not integers), else it is None.
    """

    def __init__(self, folder: PathLike, depth_scale: Optional[float] = None, intrinsics: Optional[PathLike] = None,
                 layout: str = "scannet"):
        self.folder = Path(folder)
        self.layout = layout
        self.depth_scale = layout_depth_scale(layout, depth_scale)
        if not (self.folder / "color").is_dir() or not (self.folder / "depth").is_dir():
            raise FileNotFoundError(f"{self.folder} is not an RGB-D scene folder: it needs color/ and depth/ "
                                    "subfolders of frames with matching names")
        colors = {p.stem: p for p in (self.folder / "color").iterdir() if p.suffix.lower() in COLOR_EXTENSIONS}
        if not colors:
            raise FileNotFoundError(f"{self.folder / 'color'} holds no {'/'.join(COLOR_EXTENSIONS)} frames")
        self.stems = sorted(colors, key=_stem_order)
        self.color_paths = [colors[s] for s in self.stems]
        self.intrinsics_path = (self.folder / Path(intrinsics).expanduser() if intrinsics is not None
                                else find_intrinsics(self.folder))
        if not self.intrinsics_path.is_file():
            raise FileNotFoundError(f"intrinsics '{intrinsics}' not found: looked for {self.intrinsics_path} "
                                    f"(relative paths are resolved against the scene folder {self.folder})")
        self.intrinsics = read_intrinsics(self.intrinsics_path)
        log = self.folder / "trajectory.log"
        self._trajectory = read_trajectory_log(log) if log.is_file() else None

    def __len__(self) -> int:
        return len(self.stems)

    def depth_path(self, i: int) -> Path:
        path = self.folder / "depth" / f"{self.stems[i]}.png"
        if not path.is_file():
            raise FileNotFoundError(f"colour frame {self.color_paths[i]} has no depth image {path}")
        return path

    def label_path(self, i: int) -> Optional[Path]:
        path = self.folder / "label" / f"{self.stems[i]}.png"
        return path if path.is_file() else None

    def pose(self, i: int) -> Optional[Tensor]:
        path = self.folder / "pose" / f"{self.stems[i]}.txt"
        if path.is_file():
            return read_pose(path)
        if self._trajectory is None:
            return None
        stem = self.stems[i]
        key = int(stem) if stem.isdigit() else list(self._trajectory)[i]
        if key not in self._trajectory:
            raise ValueError(f"{self.folder / 'trajectory.log'} has no entry for frame {stem} (ids "
                             f"{min(self._trajectory)}..{max(self._trajectory)})")
        return self._trajectory[key]

    def frame_id(self, i: int) -> str:
        return f"{self.folder.name}/{self.stems[i]}"

    def __getitem__(self, i: int) -> RGBDFrame:
        depth = decode_depth(self.depth_path(i), self.depth_scale)
        size = (depth.shape[0], depth.shape[1])
        label_path = self.label_path(i)
        return RGBDFrame(color=decode_color(self.color_paths[i], size), depth=depth, intrinsics=self.intrinsics,
                         pose=self.pose(i), labels=decode_labels(label_path, size) if label_path else None,
                         id=self.frame_id(i))


__all__ = ["DEPTH_SCALES", "RGBD_LAYOUTS", "layout_depth_scale", "INTRINSIC_TXT", "RGBDFrame", "find_intrinsics", "RGBDScene"]
