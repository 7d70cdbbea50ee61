"""A procedural ``rgbd-frames`` root: labelled objects in a room, ray cast from random cameras with Open3D's
``open3d.t.geometry.RaycastingScene``.

:func:`write_synthetic_scenes` writes the layout of :mod:`alignkit.domains.pointcloud.rgbd`; the same
arguments (seed included) give the same files byte for byte.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from alignkit.core.registry import ConfigError
from alignkit.domains.pointcloud.rgbd.files import UNLABELED_PIXEL

PathLike = Union[str, Path]
ImageSize = Union[int, Sequence[int]]

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


__all__ = ["SYNTHETIC_CLASSES", "SyntheticScenes", "write_synthetic_scenes"]
