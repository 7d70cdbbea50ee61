"""RGB-D frames: readers, back-projection to points that keep their pixel, a synthetic scene generator, a dataset.

Layouts read (one *scene* folder of registered colour/depth frames, ScanNet- or Open3D/Redwood-like)::

    scene/color/<stem>.jpg|png     RGB (resized to the depth size if it differs, as ScanNet's 1296x968 colour)
    scene/depth/<stem>.png         uint16 depth, metres = value / depth_scale, 0 = no depth
    scene/label/<stem>.png         optional per-pixel class index (255 = unlabeled)
    scene/pose/<stem>.txt          optional 4x4 camera-to-world pose (ScanNet), or
    scene/trajectory.log           optional Open3D/Redwood log: per frame a "id id n" line and 4 matrix rows
    intrinsics: scene/intrinsic/intrinsic_depth.txt, intrinsic/intrinsic_color.txt or intrinsic.txt
                (3x3 or ScanNet's 4x4), else a *.json in the scene holding Open3D's PinholeCameraIntrinsic
                (``intrinsic_matrix``: 9 numbers, column-major)

Camera frame: OpenCV (x right, y down, z forward, metres). A pixel at ``(row, col)`` with depth ``z``
back-projects to ``(x, y, z) = ((col - cx) z / fx, (row - cy) z / fy, z)``; a pose ``T`` (camera to
world) maps it to ``R p + t``.

A dataset root (``rgbd-frames``) holds scene folders, ``classes.txt`` (line k names label k) and
``train.txt`` / ``val.txt`` / ``test.txt`` listing the scene folders of each split.
:func:`write_synthetic_scenes` writes such a root from procedural labelled objects on a floor.
"""
from __future__ import annotations

import io
import json
import logging
import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from alignkit.core.data import PairedDataset, RawRecord, RawValue, raw_text
from alignkit.core.registry import DATASETS, ConfigError

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]
ImageSize = Union[int, Sequence[int]]

IGNORE_INDEX = -100
"""Per-point label of unlabeled points (``torch.nn.functional.cross_entropy``'s default ``ignore_index``)."""
UNLABELED_PIXEL = 255
"""Value of an unlabeled pixel in a label PNG."""
COLOR_EXTENSIONS = (".jpg", ".jpeg", ".png")
INTRINSIC_TXT = ("intrinsic/intrinsic_depth.txt", "intrinsic/intrinsic_color.txt", "intrinsic.txt")
SPLIT_NAMES = ("train", "val", "test")


# ------------------------------------------------------------------------------------------ file readers


def read_intrinsics(path: PathLike) -> Tensor:
    """The 3x3 camera matrix ``K = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]`` (float64) of a file.

    ``.json``: Open3D ``PinholeCameraIntrinsic`` (``intrinsic_matrix``: 9 numbers in column-major
    order). Otherwise a whitespace-separated text matrix, 3x3 or ScanNet's 4x4 (its top-left 3x3).
    """
    path = Path(path)
    try:
        if path.suffix.lower() == ".json":
            values = json.loads(path.read_text())["intrinsic_matrix"]
            if len(values) != 9:
                raise ValueError(f"intrinsic_matrix has {len(values)} numbers, expected 9")
            k = np.asarray(values, dtype=np.float64).reshape(3, 3).T  # column-major
        else:
            rows = np.loadtxt(path, dtype=np.float64, ndmin=2)
            if rows.shape not in ((3, 3), (4, 4)):
                raise ValueError(f"a {rows.shape[0]}x{rows.shape[1]} matrix, expected 3x3 or 4x4")
            k = rows[:3, :3]
    except (OSError, KeyError, ValueError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read camera intrinsics from {path}: {exc!r}") from None
    if not (np.allclose(k[2], [0, 0, 1]) and k[1, 0] == 0 and k[0, 0] > 0 and k[1, 1] > 0):
        raise ValueError(f"{path} holds no pinhole camera matrix [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] (read "
                         f"{k.tolist()}); an Open3D JSON lists intrinsic_matrix column-major")
    return torch.from_numpy(np.ascontiguousarray(k))


def read_pose(path: PathLike) -> Tensor:
    """A 4x4 camera-to-world pose (float64) from a text file (ScanNet ``pose/<frame>.txt``); must be finite."""
    try:
        pose = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read a pose from {path}: {exc!r}") from None
    if pose.shape != (4, 4) or not np.isfinite(pose).all():
        raise ValueError(f"{path} must hold a finite 4x4 camera-to-world matrix; got shape {pose.shape} "
                         f"(ScanNet marks frames without tracking with -inf: leave them out)")
    return torch.from_numpy(pose)


def read_trajectory_log(path: PathLike) -> Dict[int, Tensor]:
    """Open3D/Redwood ``.log`` poses: ``{frame id: 4x4 camera-to-world (float64)}`` in file order.

    Each entry is a metadata line whose first integer is the frame id, then 4 rows of 4 numbers.
    """
    path = Path(path)
    lines = [(n, line.split()) for n, line in enumerate(path.read_text().splitlines(), start=1) if line.strip()]
    if not lines or len(lines) % 5:
        raise ValueError(f"{path}: {len(lines)} non-empty lines; a trajectory log has 5 per frame "
                         "(a 'id id count' line and 4 matrix rows)")
    poses: Dict[int, Tensor] = {}
    for k in range(0, len(lines), 5):
        (n, meta), rows = lines[k], lines[k + 1:k + 5]
        try:
            frame = int(meta[0])
            matrix = np.array([[float(v) for v in r] for _, r in rows], dtype=np.float64)
        except (ValueError, IndexError):
            raise ValueError(f"{path} line {n}: malformed entry (expected 'id id count' then 4 rows of "
                             "4 numbers)") from None
        if matrix.shape != (4, 4) or not np.isfinite(matrix).all():
            raise ValueError(f"{path} line {n}: the pose of frame {frame} is not a finite 4x4 matrix")
        poses[frame] = torch.from_numpy(matrix)
    return poses


def _open_image(source: Union[PathLike, bytes]) -> Image.Image:
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
        img.load()
        return img


def decode_depth(source: Union[PathLike, bytes], depth_scale: float) -> Tensor:
    """Depth in metres ``(H, W)`` float32 from a single-channel integer PNG: ``value / depth_scale``, 0 = missing.

    ``depth_scale``: 1000 for millimetres (ScanNet, Redwood), 5000 for TUM RGB-D.
    """
    if depth_scale <= 0:
        raise ConfigError(f"depth_scale must be > 0 (1000 for millimetre PNGs, 5000 for TUM), got {depth_scale}")
    img = _open_image(source)
    if img.mode not in ("I;16", "I;16B", "I;16L", "I"):
        raise ValueError(f"depth image mode {img.mode!r}: expected a 16-bit single-channel PNG of "
                         "depth units (metres x depth_scale)")
    return torch.from_numpy(np.asarray(img).astype(np.float32) / np.float32(depth_scale))


def decode_color(source: Union[PathLike, bytes], size: Optional[Tuple[int, int]] = None) -> Tensor:
    """RGB ``(3, H, W)`` float32 in [0, 1]; resized (bilinear) to ``size = (H, W)`` if given and different."""
    img = _open_image(source).convert("RGB")
    if size is not None and img.size != (size[1], size[0]):
        img = img.resize((size[1], size[0]), Image.BILINEAR)
    return torch.from_numpy(np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0)


def decode_labels(source: Union[PathLike, bytes], size: Optional[Tuple[int, int]] = None) -> Tensor:
    """Per-pixel class indices ``(H, W)`` int64 with :data:`UNLABELED_PIXEL` mapped to :data:`IGNORE_INDEX`.

    Resized (nearest) to ``size = (H, W)`` if given and different.
    """
    img = _open_image(source)
    if img.mode not in ("L", "P", "I;16", "I;16B", "I;16L", "I"):
        raise ValueError(f"label image mode {img.mode!r}: expected a single-channel PNG of class indices")
    if size is not None and img.size != (size[1], size[0]):
        img = img.resize((size[1], size[0]), Image.NEAREST)
    labels = torch.from_numpy(np.asarray(img).astype(np.int64))
    return labels.masked_fill(labels == UNLABELED_PIXEL, IGNORE_INDEX)


# ------------------------------------------------------------------------------------------ geometry


@dataclass
class BackProjection:
    """Points ``(N, 3)`` float32 of the valid depth pixels and their ``pixels (N, 2)`` LongTensor ``(row, col)``,
    in row-major pixel order."""

    points: Tensor
    pixels: Tensor


def transform_points(points: Tensor, pose: Tensor) -> Tensor:
    """``(N, 3) -> (N, 3)``: ``p' = R p + t`` with ``pose = [[R, t], [0, 1]]`` (4x4)."""
    pose = pose.to(points.dtype)
    return points @ pose[:3, :3].T + pose[:3, 3]


def backproject(depth: Tensor, intrinsics: Tensor, pose: Optional[Tensor] = None, max_depth: Optional[float] = None
                ) -> BackProjection:
    """Back-project a depth image ``(H, W)`` (metres) with ``K (3, 3)`` to camera-frame (or, given the
    camera-to-world ``pose (4, 4)``, world-frame) points.

    For each pixel with ``0 < z`` (and ``z <= max_depth``) and finite ``z``:
    ``x = (col - cx) z / fx``, ``y = (row - cy) z / fy`` (``fx = K[0, 0]``, ``cx = K[0, 2]``, ...).
    """
    if depth.ndim != 2:
        raise ValueError(f"depth must be (H, W), got shape {tuple(depth.shape)}")
    k = intrinsics.to(torch.float64)
    valid = torch.isfinite(depth) & (depth > 0)
    if max_depth is not None:
        valid &= depth <= max_depth
    pixels = valid.nonzero()
    z = depth[valid].to(torch.float64)
    rows, cols = pixels[:, 0].to(torch.float64), pixels[:, 1].to(torch.float64)
    points = torch.stack([(cols - k[0, 2]) * z / k[0, 0], (rows - k[1, 2]) * z / k[1, 1], z], dim=1)
    if pose is not None:
        points = transform_points(points, pose.to(torch.float64))
    return BackProjection(points.float(), pixels)


# ------------------------------------------------------------------------------------------ scenes


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
    """The intrinsics file of a scene folder (order in the module docstring)."""
    scene = Path(scene)
    for rel in INTRINSIC_TXT:
        if (scene / rel).is_file():
            return scene / rel
    for candidate in sorted(scene.glob("*.json")):
        try:
            if "intrinsic_matrix" in json.loads(candidate.read_text()):
                return candidate
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError):
            continue
    raise FileNotFoundError(f"no camera intrinsics in {scene}: looked for {', '.join(INTRINSIC_TXT)} and a *.json "
                            "with Open3D's 'intrinsic_matrix'")


def _stem_order(stem: str) -> Tuple[int, Union[int, str]]:
    return (0, int(stem)) if stem.isdigit() else (1, stem)


class RGBDScene:
    """The frames of one scene folder (layout in the module docstring), sorted by stem (numerically if digits).

    A frame's pose comes from ``pose/<stem>.txt``, else from ``trajectory.log`` (the entry whose id is the
    integer stem, or the frame's position when stems are not integers), else it is None.
    """

    def __init__(self, folder: PathLike, depth_scale: float = 1000.0, intrinsics: Optional[PathLike] = None):
        self.folder = Path(folder)
        self.depth_scale = float(depth_scale)
        if not (self.folder / "color").is_dir() or not (self.folder / "depth").is_dir():
            raise FileNotFoundError(f"{self.folder} is not an RGB-D scene folder: it needs color/ and depth/ "
                                    "subfolders of frames with matching names")
        colors = {p.stem: p for p in (self.folder / "color").iterdir() if p.suffix.lower() in COLOR_EXTENSIONS}
        if not colors:
            raise FileNotFoundError(f"{self.folder / 'color'} holds no {'/'.join(COLOR_EXTENSIONS)} frames")
        self.stems = sorted(colors, key=_stem_order)
        self.color_paths = [colors[s] for s in self.stems]
        self.intrinsics_path = Path(intrinsics) if intrinsics is not None else find_intrinsics(self.folder)
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


# ------------------------------------------------------------------------------------------ dataset


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
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


@dataclass(frozen=True)
class _FrameRef:
    scene: RGBDScene
    index: int


@DATASETS.register("rgbd-frames")
class RGBDFramesDataset(PairedDataset):
    """Frames of the scene folders listed in ``root/<split>.txt`` (see the module docstring).

    Every frame is one sample (:class:`RGBDFrameDecoder`): ``points (N, 6)``, ``pixels (N, 2)``,
    ``image (3, H, W)``, ``seg (N,)``, ``class_names``, ``id``. All frames of a split must share one
    image size to be batched. ``depth_scale`` converts the depth PNGs to metres.
    Bad scenes or frames (missing depth, unreadable intrinsics or pose, no valid depth) raise a
    ``ValueError`` naming the file while indexing; with ``skip_bad`` they are dropped and listed in
    ``skipped`` instead. Frames are checked when read (decoded), not while indexing.
    """

    def __init__(self, root: str, split: str = "train", num_points: int = 2048, depth_scale: float = 1000.0,
                 seed: Optional[int] = 0, world_frame: bool = False, center: bool = False, skip_bad: bool = False):
        super().__init__(params=locals())
        self._decoder = RGBDFrameDecoder(num_points=num_points, seed=seed, world_frame=world_frame, center=center)
        self.root = Path(root)
        self.depth_scale = float(depth_scale)
        self.class_names = read_class_names(self.root)
        split_file = self.root / f"{split}.txt"
        if not split_file.is_file():
            raise FileNotFoundError(f"rgbd-frames: no split file {split_file}; list the scene folders of split "
                                    f"'{split}' in it, one per line")
        self._frames: List[_FrameRef] = []
        for n, line in enumerate(split_file.read_text().splitlines(), start=1):
            name = line.strip()
            if not name:
                continue
            try:
                scene = RGBDScene(self.root / name, depth_scale=depth_scale)
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


# ------------------------------------------------------------------------------------------ synthetic scenes

SYNTHETIC_CLASSES = ("floor", "wall", "table", "chair", "ball", "bin", "cone", "box")
"""Classes of :func:`write_synthetic_scenes`; label k is ``SYNTHETIC_CLASSES[k]``."""
_OBJECT_COLORS = {"table": (0.55, 0.35, 0.20), "chair": (0.20, 0.35, 0.80), "ball": (0.85, 0.15, 0.15),
                  "bin": (0.20, 0.65, 0.30), "cone": (0.95, 0.55, 0.10), "box": (0.90, 0.85, 0.30)}
_ROOM_HALF, _WALL_HEIGHT, _FLOOR_HALF = 3.0, 2.5, 6.0


def _slab(extents: Sequence[float], center: Sequence[float]) -> Any:
    import trimesh
    return trimesh.creation.box(extents=extents, transform=trimesh.transformations.translation_matrix(center))


def _object_mesh(name: str, rng: np.random.Generator) -> Tuple[Any, float]:
    """A procedural object standing on ``z = 0`` around the origin, and its footprint radius."""
    import trimesh
    if name == "table":
        w, d, h = rng.uniform(0.8, 1.3), rng.uniform(0.5, 0.8), rng.uniform(0.6, 0.8)
        parts = [_slab((w, d, 0.05), (0, 0, h - 0.025))]
        parts += [_slab((0.06, 0.06, h - 0.05), (sx * (w / 2 - 0.06), sy * (d / 2 - 0.06), (h - 0.05) / 2))
                  for sx in (-1, 1) for sy in (-1, 1)]
        mesh, radius = trimesh.util.concatenate(parts), math.hypot(w, d) / 2
    elif name == "chair":
        s, h, back = rng.uniform(0.4, 0.5), rng.uniform(0.4, 0.5), rng.uniform(0.4, 0.6)
        parts = [_slab((s, s, 0.05), (0, 0, h - 0.025)), _slab((s, 0.05, back), (0, s / 2 - 0.025, h + back / 2))]
        parts += [_slab((0.04, 0.04, h - 0.05), (sx * (s / 2 - 0.04), sy * (s / 2 - 0.04), (h - 0.05) / 2))
                  for sx in (-1, 1) for sy in (-1, 1)]
        mesh, radius = trimesh.util.concatenate(parts), s * 0.75
    elif name == "ball":
        r = rng.uniform(0.15, 0.3)
        mesh, radius = trimesh.creation.icosphere(subdivisions=2, radius=r), r
        mesh.apply_translation((0, 0, r))
    elif name == "bin":
        r, h = rng.uniform(0.15, 0.25), rng.uniform(0.4, 0.7)
        mesh, radius = trimesh.creation.cylinder(radius=r, height=h, sections=24), r
        mesh.apply_translation((0, 0, h / 2))
    elif name == "cone":
        r, h = rng.uniform(0.15, 0.25), rng.uniform(0.45, 0.75)
        mesh, radius = trimesh.creation.cone(radius=r, height=h, sections=24), r
    elif name == "box":
        e = rng.uniform(0.3, 0.5, size=3)
        mesh, radius = _slab(e, (0, 0, e[2] / 2)), float(np.hypot(e[0], e[1]) / 2)
    else:
        raise ValueError(f"unknown synthetic object '{name}'")
    mesh.apply_transform(trimesh.transformations.rotation_matrix(rng.uniform(0, 2 * np.pi), (0, 0, 1)))
    return mesh, radius


def _look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """4x4 camera-to-world pose of an OpenCV camera at ``eye`` looking at ``target`` (world z up)."""
    forward = (target - eye) / np.linalg.norm(target - eye)
    right = np.cross(forward, (0.0, 0.0, 1.0))
    right /= np.linalg.norm(right)
    pose = np.eye(4)
    pose[:3, :3] = np.stack([right, np.cross(forward, right), forward], axis=1)
    pose[:3, 3] = eye
    return pose


def _image_hw(image_size: ImageSize) -> Tuple[int, int]:
    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(int(v) for v in image_size)
    if h < 8 or w < 8:
        raise ConfigError(f"image_size must be at least 8 pixels, got {image_size}")
    return h, w


@dataclass
class _Surface:
    mesh: Any
    label: int
    color: np.ndarray


def _render(surfaces: List[_Surface], pose: np.ndarray, k: np.ndarray, hw: Tuple[int, int], light: np.ndarray,
            rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ray-cast ``surfaces`` (Open3D) into depth (metres, 0 = no hit), RGB uint8 and labels (255 = none)."""
    import open3d as o3d

    scene = o3d.t.geometry.RaycastingScene()
    for s in surfaces:
        scene.add_triangles(o3d.core.Tensor(np.asarray(s.mesh.vertices, dtype=np.float32)),
                            o3d.core.Tensor(np.asarray(s.mesh.faces, dtype=np.uint32)))
    h, w = hw
    rows, cols = np.mgrid[0:h, 0:w]
    cam_dirs = np.stack([(cols - k[0, 2]) / k[0, 0], (rows - k[1, 2]) / k[1, 1], np.ones((h, w))], -1)
    dirs = cam_dirs.reshape(-1, 3) @ pose[:3, :3].T  # camera z = 1, so the hit distance t is the depth
    rays = np.concatenate([np.broadcast_to(pose[:3, 3], dirs.shape), dirs], 1).astype(np.float32)
    hit = scene.cast_rays(o3d.core.Tensor(rays))
    t = hit["t_hit"].numpy().astype(np.float64)
    ids = hit["geometry_ids"].numpy().astype(np.int64)
    normals = hit["primitive_normals"].numpy().astype(np.float64)
    valid = np.isfinite(t)
    labels = np.full(h * w, UNLABELED_PIXEL, dtype=np.uint8)
    rgb = np.zeros((h * w, 3))
    hit_ids = ids[valid]
    labels[valid] = np.array([s.label for s in surfaces])[hit_ids]
    base = np.stack([s.color for s in surfaces])[hit_ids]
    world = rays[valid, :3] + t[valid, None] * dirs[valid]
    floor = labels[valid] == SYNTHETIC_CLASSES.index("floor")
    checker = (np.floor(world[:, 0] / 0.5) + np.floor(world[:, 1] / 0.5)) % 2
    base[floor] *= (0.85 + 0.15 * checker[floor])[:, None]
    n = normals[valid]
    n *= np.where((n * dirs[valid]).sum(1) > 0, -1.0, 1.0)[:, None]  # face the camera
    shade = 0.45 + 0.55 * np.clip(n @ light, 0.0, None)
    rgb[valid] = base * shade[:, None] + rng.normal(0, 0.015, size=(int(valid.sum()), 3))
    depth = np.where(valid, t, 0.0)
    return (depth.reshape(h, w), (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8).reshape(h, w, 3),
            labels.reshape(h, w))


def _scene_surfaces(rng: np.random.Generator) -> List[_Surface]:
    """Floor, two walls and 4-6 objects of distinct random classes at non-overlapping spots."""
    import trimesh

    floor_color = rng.uniform(0.45, 0.65) * np.array([1.0, 0.95, 0.85])
    wall_color = rng.uniform(0.75, 0.9, size=3)
    f, r = _FLOOR_HALF, _ROOM_HALF
    floor = trimesh.Trimesh(vertices=[(-f, -f, 0), (f, -f, 0), (f, f, 0), (-f, f, 0)], faces=[(0, 1, 2), (0, 2, 3)])
    surfaces = [_Surface(floor, SYNTHETIC_CLASSES.index("floor"), floor_color),
                _Surface(_slab((2 * f, 0.1, _WALL_HEIGHT), (0, r + 0.05, _WALL_HEIGHT / 2)),
                         SYNTHETIC_CLASSES.index("wall"), wall_color),
                _Surface(_slab((0.1, 2 * f, _WALL_HEIGHT), (-r - 0.05, 0, _WALL_HEIGHT / 2)),
                         SYNTHETIC_CLASSES.index("wall"), wall_color * rng.uniform(0.9, 1.0))]
    names = list(_OBJECT_COLORS)
    placed: List[Tuple[np.ndarray, float]] = []
    for name in rng.choice(names, size=int(rng.integers(4, 7)), replace=False):
        mesh, radius = _object_mesh(str(name), rng)
        for _ in range(100):
            xy = rng.uniform(-1.8, 1.8, size=2)
            if all(np.linalg.norm(xy - c) > radius + rc + 0.1 for c, rc in placed):
                break
        else:
            continue  # no free spot: leave the object out
        placed.append((xy, radius))
        mesh.apply_translation((xy[0], xy[1], 0.0))
        color = np.clip(np.array(_OBJECT_COLORS[str(name)]) + rng.uniform(-0.07, 0.07, size=3), 0, 1)
        surfaces.append(_Surface(mesh, SYNTHETIC_CLASSES.index(str(name)), color))
    return surfaces


@dataclass
class SyntheticScenes:
    """What :func:`write_synthetic_scenes` wrote: the root, class names and scene folder names per split."""

    root: Path
    class_names: List[str]
    splits: Dict[str, List[str]]


def write_synthetic_scenes(root: PathLike, num_scenes: int = 20, frames_per_scene: int = 8,
                           image_size: ImageSize = 64, seed: int = 0,
                           split_fractions: Tuple[float, float, float] = (0.7, 0.1, 0.2)) -> SyntheticScenes:
    """Write an ``rgbd-frames`` root of procedural rooms rendered by ray casting (Open3D).

    Each scene: a checkered floor, two walls and 4-6 objects of distinct classes among table, chair,
    ball, bin, cone and box (each its own shape and hue, random proportions, yaw, placement and colour
    jitter), lit by one random directional light plus ambient. ``frames_per_scene`` cameras look at the
    room centre from random positions 2.3-3.3 m away at 1.2-2.0 m height. Per scene folder
    ``scene_XXXX/``: ``color/<i>.jpg``, ``depth/<i>.png`` (uint16 millimetres, depth_scale 1000, 0 = no
    hit), ``label/<i>.png`` (uint8 class index, 255 = no hit), ``pose/<i>.txt`` (4x4 camera-to-world,
    OpenCV camera) and ``intrinsic/intrinsic_depth.txt`` (3x3, ``fx = fy = 0.9 W``, ``c = (size - 1) / 2``).
    The root gets ``classes.txt`` (:data:`SYNTHETIC_CLASSES`) and ``train.txt`` / ``val.txt`` / ``test.txt``
    splitting the scenes by ``split_fractions`` (at least one training scene). ``image_size`` is ``S`` or
    ``(H, W)``.
    """
    if num_scenes < 1 or frames_per_scene < 1:
        raise ConfigError(f"need num_scenes >= 1 and frames_per_scene >= 1, got {num_scenes}, {frames_per_scene}")
    if len(split_fractions) != 3 or min(split_fractions) < 0 or sum(split_fractions) <= 0:
        raise ConfigError(f"split_fractions are three non-negative (train, val, test) weights, got {split_fractions}")
    root = Path(root)
    hw = _image_hw(image_size)
    k = np.array([[0.9 * hw[1], 0, (hw[1] - 1) / 2], [0, 0.9 * hw[1], (hw[0] - 1) / 2], [0, 0, 1]])
    rng = np.random.default_rng(seed)
    names: List[str] = []
    for s in range(num_scenes):
        scene = root / f"scene_{s:04d}"
        names.append(scene.name)
        for sub in ("color", "depth", "label", "pose", "intrinsic"):
            (scene / sub).mkdir(parents=True, exist_ok=True)
        np.savetxt(scene / "intrinsic" / "intrinsic_depth.txt", k, fmt="%.6f")
        surfaces = _scene_surfaces(rng)
        light = np.array([rng.uniform(-0.5, 0.5), rng.uniform(-0.5, 0.5), 1.0])
        light /= np.linalg.norm(light)
        for i in range(frames_per_scene):
            azimuth, distance = rng.uniform(-np.pi / 2 + 0.25, -0.25), rng.uniform(2.3, 3.3)
            eye = np.array([distance * np.cos(azimuth), distance * np.sin(azimuth), rng.uniform(1.2, 2.0)])
            pose = _look_at(eye, np.array([*rng.uniform(-0.5, 0.5, size=2), rng.uniform(0.0, 0.4)]))
            depth, rgb, labels = _render(surfaces, pose, k, hw, light, rng)
            Image.fromarray(rgb).save(scene / "color" / f"{i}.jpg", quality=95, subsampling=0)
            Image.fromarray(np.round(depth * 1000).astype(np.uint16)).save(scene / "depth" / f"{i}.png")
            Image.fromarray(labels).save(scene / "label" / f"{i}.png")
            np.savetxt(scene / "pose" / f"{i}.txt", pose, fmt="%.8f")
    (root / "classes.txt").write_text("\n".join(SYNTHETIC_CLASSES) + "\n")
    fractions = np.asarray(split_fractions, dtype=np.float64) / sum(split_fractions)
    n_test = min(int(round(fractions[2] * num_scenes)), num_scenes - 1)
    n_val = min(int(round(fractions[1] * num_scenes)), num_scenes - 1 - n_test)
    n_train = num_scenes - n_val - n_test
    splits = {"train": names[:n_train], "val": names[n_train:n_train + n_val], "test": names[n_train + n_val:]}
    for split, members in splits.items():
        (root / f"{split}.txt").write_text("".join(f"{m}\n" for m in members))
    return SyntheticScenes(root=root, class_names=list(SYNTHETIC_CLASSES), splits=splits)


__all__ = ["IGNORE_INDEX", "UNLABELED_PIXEL", "SYNTHETIC_CLASSES", "read_intrinsics", "read_pose",
           "read_trajectory_log", "decode_depth", "decode_color", "decode_labels", "BackProjection",
           "transform_points", "backproject", "RGBDFrame", "find_intrinsics", "RGBDScene", "RGBDCloud",
           "frame_to_cloud", "RGBDFrameDecoder", "read_class_names", "RGBDFramesDataset", "SyntheticScenes",
           "write_synthetic_scenes"]
