"""The ``rgbd-frames`` dataset: frames of scene folders as point clouds that keep their pixel and label.

A dataset root holds scene folders (layout in :mod:`alignkit.domains.pointcloud.rgbd`), ``classes.txt``
(line k names label k) and ``train.txt`` / ``val.txt`` / ``test.txt`` listing the scene folders of each split.
"""
from __future__ import annotations

import json
import logging
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Dict, List, Optional, Union

import numpy as np
import torch
from torch import Tensor

from alignkit.core.paired import PairedDataset, RawRecord, RawValue, raw_text
from alignkit.core.params import AT_LEAST_ONE, POSITIVE, OneOf
from alignkit.core.registry import DATASETS, ConfigError
from alignkit.core.text import read_text
from alignkit.domains.pointcloud.rgbd.files import (COLOR_EXTENSIONS, IGNORE_INDEX, decode_color, decode_depth,
                                                    decode_labels)
from alignkit.domains.pointcloud.rgbd.geometry import BackProjection, backproject
from alignkit.domains.pointcloud.rgbd.scenes import RGBD_LAYOUTS, RGBDFrame, RGBDScene, layout_depth_scale

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]

SPLIT_NAMES = ("train", "val", "test")
"""The split files a dataset root may hold."""


@dataclass
class RGBDCloud:
    """A frame's points ``(N, 6)`` xyz + rgb, their ``pixels (N, 2)`` ``(row, col)`` and labels ``seg (N,)``."""

    points: Tensor
    pixels: Tensor
    seg: Tensor


def frame_to_cloud(frame: RGBDFrame, num_points: Optional[int] = None, world_frame: bool = False,
                   rng: Optional[np.random.Generator] = None) -> RGBDCloud:
    """Back-project ``frame`` and attach each point's colour and label (:data:`IGNORE_INDEX` without labels).

    ``num_points``: draw that many valid pixels uniformly (with replacement only if there are fewer);
    None keeps all. ``world_frame``: apply the frame's pose (required then).
    """
    if world_frame and frame.pose is None:
        raise ValueError(f"frame {frame.id} has no pose; world_frame needs pose/<frame>.txt or trajectory.log")
    proj = backproject(frame.depth, frame.intrinsics, frame.pose if world_frame else None)
    count = len(proj.pixels)
    if count == 0:
        raise ValueError(f"frame {frame.id} has no valid depth pixel (all zero or non-finite)")
    if num_points is not None:
        rng = rng if rng is not None else np.random.default_rng()
        pick = torch.from_numpy(np.sort(rng.choice(count, num_points, replace=count < num_points)))
        proj = BackProjection(proj.points[pick], proj.pixels[pick])
    rows, cols = proj.pixels[:, 0], proj.pixels[:, 1]
    rgb = frame.color[:, rows, cols].T
    seg = frame.labels[rows, cols] if frame.labels is not None else torch.full((len(rows),), IGNORE_INDEX)
    return RGBDCloud(torch.cat([proj.points, rgb], dim=1), proj.pixels, seg)


def _color_field(raw: RawRecord) -> str:
    for ext in COLOR_EXTENSIONS:
        if f"color{ext}" in raw:
            return f"color{ext}"
    raise ValueError(f"record has no colour field (color.jpg, color.jpeg or color.png); fields: {sorted(raw)}")


@dataclass(frozen=True)
class RGBDFrameDecoder:
    """Decodes an ``rgbd-frames`` record (see :meth:`RGBDFramesDataset.raw`) into a sample.

    Sample: ``points (N, 6)`` float32 xyz (metres; camera frame, or world with ``world_frame``; minus the
    cloud's centroid with ``center``) + rgb in [0, 1]; ``pixels (N, 2)`` int64 ``(row, col)`` of each point;
    ``image (3, H, W)`` float32 RGB in [0, 1]; ``seg (N,)`` int64 labels (:data:`IGNORE_INDEX` = unlabeled);
    ``class_names`` list[str]; ``id`` ``<scene>/<frame>``. The ``N = num_points`` pixels are drawn with
    ``numpy.random.default_rng([seed, crc32(id)])`` (the same points every epoch), or freshly each call
    when ``seed`` is None (augmentation).
    """

    num_points: int = 2048
    seed: Optional[int] = 0
    world_frame: bool = False
    center: bool = False

    def __post_init__(self) -> None:
        if self.num_points < 1:
            raise ConfigError(f"num_points must be >= 1, got {self.num_points}")

    def __call__(self, raw: RawRecord) -> Dict[str, Any]:
        meta = json.loads(raw_text(raw["json"]))
        frame_id = meta["id"]
        try:
            depth = decode_depth(bytes(raw["depth.png"]), meta["depth_scale"])  # type: ignore[arg-type]
            size = (depth.shape[0], depth.shape[1])
            color_key = _color_field(raw)
            labels = decode_labels(bytes(raw["label.png"]), size) if "label.png" in raw else None  # type: ignore
            frame = RGBDFrame(color=decode_color(bytes(raw[color_key]), size), depth=depth,  # type: ignore
                              intrinsics=torch.tensor(meta["intrinsics"], dtype=torch.float64),
                              pose=torch.tensor(meta["pose"], dtype=torch.float64) if meta.get("pose") else None,
                              labels=labels, id=frame_id)
            names = list(meta["class_names"])
            if labels is not None and len(names) and int(labels.max()) >= len(names):
                raise ValueError(f"label value {int(labels.max())} but only {len(names)} classes in classes.txt")
            rng = np.random.default_rng(None if self.seed is None else [self.seed, zlib.crc32(frame_id.encode())])
            cloud = frame_to_cloud(frame, self.num_points, self.world_frame, rng)
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot decode RGB-D frame '{frame_id}' ({meta['where']}): {exc}") from exc
        points = cloud.points
        if self.center:
            points = torch.cat([points[:, :3] - points[:, :3].mean(0), points[:, 3:]], dim=1)
        return {"points": points, "pixels": cloud.pixels, "image": frame.color, "seg": cloud.seg,
                "class_names": names, "id": frame_id}


def read_class_names(root: PathLike) -> List[str]:
    """``root/classes.txt``: line k (blank lines ignored) names label k."""
    path = Path(root) / "classes.txt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: list the class names, one per line, line k naming label k")
    return [line.strip() for line in read_text(path, what="class list").splitlines() if line.strip()]


@dataclass(frozen=True)
class _FrameRef:
    scene: RGBDScene
    index: int


@DATASETS.register("rgbd-frames")
class RGBDFramesDataset(PairedDataset):
    """Frames of the scene folders listed in ``root/<split>.txt`` (see the module docstring).

    Every frame is one sample (:class:`RGBDFrameDecoder`): ``points (N, 6)``, ``pixels (N, 2)``,
    ``image (3, H, W)``, ``seg (N,)``, ``class_names``, ``id``. All frames of a split must share one
    image size to be batched. ``depth_scale`` converts the depth PNGs to metres (``value / depth_scale``):
    None (the default) takes the ``layout``'s documented value
    (:data:`~alignkit.domains.pointcloud.rgbd.scenes.DEPTH_SCALES`: ``tum`` and ``icl-nuim`` 5000; ``scannet``,
    ``redwood``, ``augmented-icl-nuim`` and ``7-scenes`` 1000), an explicit value overrides it. Scene folders
    listed in the split files are relative to ``root`` (an absolute one stays as given).
    Bad scenes or frames (missing depth, unreadable intrinsics or pose, no valid depth) raise a
    ``ValueError`` naming the file while indexing; with ``skip_bad`` they are dropped and listed in
    ``skipped`` instead. Frames are checked when read (decoded), not while indexing.
    """

    def __init__(self, root: str, split: str = "train", num_points: Annotated[int, AT_LEAST_ONE] = 2048,
                 layout: Annotated[str, OneOf(RGBD_LAYOUTS)] = "scannet",
                 depth_scale: Optional[Annotated[float, POSITIVE]] = None, seed: Optional[int] = 0,
                 world_frame: bool = False, center: bool = False, skip_bad: bool = False):
        super().__init__(params=locals())
        self._decoder = RGBDFrameDecoder(num_points=num_points, seed=seed, world_frame=world_frame, center=center)
        self.root = Path(root)
        self.layout = layout
        self.depth_scale = layout_depth_scale(layout, depth_scale)
        self.class_names = read_class_names(self.root)
        split_file = self.root / f"{split}.txt"
        if not split_file.is_file():
            raise FileNotFoundError(f"rgbd-frames: no split file {split_file}; list the scene folders of split "
                                    f"'{split}' in it, one per line")
        self._frames: List[_FrameRef] = []
        for n, line in enumerate(read_text(split_file, what="split file").splitlines(), start=1):
            name = line.strip()
            if not name:
                continue
            try:
                scene = RGBDScene(self.root / name, depth_scale=self.depth_scale, layout=layout)
                refs = [_FrameRef(scene, i) for i in range(len(scene))]
                for ref in refs:
                    scene.depth_path(ref.index)
                    scene.pose(ref.index)
            except (OSError, ValueError) as exc:
                if not skip_bad:
                    raise ValueError(f"{split_file} line {n} (scene '{name}'): {exc}; fix it, or pass "
                                     "skip_bad=True to leave bad scenes out") from None
                self.skipped.append((f"{split_file} line {n} ({name})", str(exc)))
                continue
            self._frames.extend(refs)
        if self.skipped:
            logger.warning("rgbd-frames: skipped %d scenes of split '%s' in %s (skip_bad=True); first: %s",
                           len(self.skipped), split, self.root, self.skipped[0])

    @classmethod
    def decoder(cls, num_points: int = 2048, seed: Optional[int] = 0, world_frame: bool = False,
                center: bool = False) -> RGBDFrameDecoder:
        return RGBDFrameDecoder(num_points=num_points, seed=seed, world_frame=world_frame, center=center)

    def __len__(self) -> int:
        return len(self._frames)

    def key(self, i: int) -> str:
        ref = self._frames[i]
        return ref.scene.frame_id(ref.index).replace("/", "_").replace(".", "_")

    def raw(self, i: int) -> Dict[str, RawValue]:
        """``{"color.<ext>", "depth.png", ["label.png"]: file bytes, "json": '{"id", "where", "intrinsics",
        "pose", "depth_scale", "class_names"}'}``."""
        ref = self._frames[i]
        scene, k = ref.scene, ref.index
        pose = scene.pose(k)
        meta = {"id": scene.frame_id(k), "where": str(scene.color_paths[k]),
                "intrinsics": scene.intrinsics.tolist(), "pose": None if pose is None else pose.tolist(),
                "depth_scale": scene.depth_scale, "class_names": self.class_names}
        record: Dict[str, RawValue] = {f"color{scene.color_paths[k].suffix.lower()}": scene.color_paths[k].read_bytes(),
                                       "depth.png": scene.depth_path(k).read_bytes(), "json": json.dumps(meta)}
        label = scene.label_path(k)
        if label is not None:
            record["label.png"] = label.read_bytes()
        return record


__all__ = ["SPLIT_NAMES", "RGBDCloud", "frame_to_cloud", "RGBDFrameDecoder", "read_class_names", "RGBDFramesDataset"]
