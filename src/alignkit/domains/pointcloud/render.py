"""Multi-view CPU rendering of meshes and point clouds with Open3D ray casting (ULIP's image modality).

Every geometry is first normalised to the unit sphere
(:func:`~alignkit.domains.pointcloud.preprocess.normalize_unit_sphere` of its vertices / points) and seen by
:func:`orbit_cameras`: ``V`` pinhole cameras on a circle around the up axis at ``distance`` from the origin,
``elevation_deg`` above the horizon, with a field of view that holds the whole unit sphere. One
``RaycastingScene.cast_rays`` call traces all views.

- Meshes: the hit triangle's face normal (flat shading) and, when the mesh has them, its interpolated
  vertex colours (textures are converted to vertex colours by trimesh).
- Point clouds are splatted: each point becomes a small octahedron (8 triangles, circumradius ``r`` =
  ``splat_scale`` x the mean nearest-neighbour spacing) that the same ray caster hits, so occlusion is
  exact; the hit is shaded with the point's normal (estimated by PCA when the cloud has none) and colour.
  This is robust to any density and to missing normals, unlike surface reconstruction (ball pivoting or
  alpha shapes need a tuned radius and leave holes on thin parts).

Shading is Lambertian: ``I = colour * (ambient + (1 - ambient) * max(0, n . l))`` with ``n`` the normal
turned towards the camera (open surfaces render from both sides) and ``l`` a light above and beside the
camera. Depth is the planar distance along the camera's viewing axis.
Up axis: ``up_axis`` (``x``, ``y`` or ``z``, default ``z``) names the direction that is "up" in the file; the
cameras orbit it and it is the images' vertical. The default z is the convention of ModelNet40's ``.off`` meshes
(:class:`~alignkit.domains.pointcloud.layouts.ModelNet40MeshReader`), of trimesh and of Blender. Y-up sources need
``up_axis="y"``: ShapeNetCore OBJs, Point-BERT's ShapeNet-55 clouds (ULIP's pre-training data),
``modelnet40_normal_resampled`` and ScanObjectNN; the layout readers state their own (``up_axis`` of a reader,
which the datasets use unless their ``up_axis`` parameter overrides it).

Files (:func:`write_views`): ``shaded_XX.png`` (RGB, 8 bit, white background) and ``depth_XX.png``
(16 bit: ``1 + round(65534 (far - z) / (far - near))``, near bright, 0 = background; ``near``/``far`` and the
cameras are in ``views.json``, :func:`decode_depth` inverts it).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from alignkit.core.registry import ConfigError
from alignkit.domains.pointcloud.clouds import UP_AXES, PointCloud, estimate_normals, load_geometry, mesh_has_colors
from alignkit.domains.pointcloud.preprocess import default_cache_dir, normalize_unit_sphere

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]
VIEW_KINDS = ("shaded", "depth")
_AXIS = {"x": np.array([1.0, 0.0, 0.0]), "y": np.array([0.0, 1.0, 0.0]), "z": np.array([0.0, 0.0, 1.0])}
_OCTAHEDRON_VERTICES = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], np.float32)
_OCTAHEDRON_FACES = np.array([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]],
                             np.int64)


@dataclass(frozen=True)
class ViewCamera:
    """A pinhole camera at ``eye`` looking at ``center``; ``up`` orients the image; ``fov_deg`` is horizontal
    (images are square)."""

    eye: Tuple[float, float, float]
    center: Tuple[float, float, float]
    up: Tuple[float, float, float]
    fov_deg: float

    def basis(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Unit (forward, right, image-up) vectors of the camera in world coordinates."""
        forward = np.subtract(self.center, self.eye).astype(np.float64)
        forward /= np.linalg.norm(forward)
        right = np.cross(forward, self.up)
        right /= np.linalg.norm(right)
        return forward, right, np.cross(right, forward)


def orbit_cameras(num_views: int = 12, distance: float = 2.5, elevation_deg: float = 25.0, up_axis: str = "z",
                  margin: float = 1.05) -> List[ViewCamera]:
    """``num_views`` cameras at azimuths ``2 pi k / V`` around ``up_axis``, looking at the origin.

    The field of view ``2 asin(1 / distance) * margin`` holds the whole unit sphere.
    """
    if num_views < 1:
        raise ConfigError(f"num_views must be positive, got {num_views}")
    if up_axis not in UP_AXES:
        raise ConfigError(f"up_axis must be one of {', '.join(UP_AXES)}; got {up_axis!r}")
    if distance <= 1.0:
        raise ConfigError(f"camera distance must exceed the unit sphere's radius 1, got {distance}")
    up = _AXIS[up_axis]
    a = _AXIS["x"] if up_axis != "x" else _AXIS["y"]
    b = np.cross(up, a)
    fov = math.degrees(2 * math.asin(1.0 / distance)) * margin
    elevation = math.radians(elevation_deg)
    cameras = []
    for k in range(num_views):
        azimuth = 2 * math.pi * k / num_views
        direction = math.cos(elevation) * (math.cos(azimuth) * a + math.sin(azimuth) * b) + math.sin(elevation) * up
        cameras.append(ViewCamera(tuple((distance * direction).tolist()), (0.0, 0.0, 0.0), tuple(up.tolist()), fov))
    return cameras


def camera_rays(camera: ViewCamera, size: int) -> np.ndarray:
    """(size, size, 6) float32 rays ``[origin, direction]`` through the pixel centres.

    Directions are ``forward + x right + y up`` (not unit length), so the ray parameter of a hit is its
    planar depth ``z``.
    """
    forward, right, up = camera.basis()
    half = math.tan(math.radians(camera.fov_deg) / 2)
    coords = ((2 * (np.arange(size) + 0.5) / size - 1) * half).astype(np.float32)
    x, y = np.meshgrid(coords, -coords)
    local = np.stack([x, y, np.ones_like(x)], axis=-1)  # (x, y, 1) in the (right, up, forward) frame
    rays = np.empty((size, size, 6), np.float32)
    rays[..., :3] = camera.eye
    rays[..., 3:] = local @ np.stack([right, up, forward]).astype(np.float32)
    return rays


@dataclass
class RenderedViews:
    """``shaded`` (V, H, W, 3) float32 in [0, 1] (background 1); ``depth`` (V, H, W) float32 planar depth,
    ``inf`` where no surface; the ``cameras`` and the depth range ``near``/``far`` of the unit sphere."""

    shaded: np.ndarray
    depth: np.ndarray
    cameras: List[ViewCamera]
    near: float
    far: float

    @property
    def mask(self) -> np.ndarray:
        """(V, H, W) bool: pixels that see the object."""
        return np.isfinite(self.depth)


def _raycast(vertices: np.ndarray, triangles: np.ndarray, cameras: Sequence[ViewCamera], size: int,
             normal_of: Callable[[np.ndarray, np.ndarray], np.ndarray],
             color_of: Optional[Callable[[np.ndarray, np.ndarray], np.ndarray]], ambient: float,
             threads: int) -> RenderedViews:
    """Trace all views of a triangle soup; ``normal_of``/``color_of`` map (hit triangle ids (K,), barycentric
    uvs (K, 2)) to (K, 3) normals / colours."""
    import open3d as o3d

    scene = o3d.t.geometry.RaycastingScene(nthreads=threads)
    scene.add_triangles(o3d.core.Tensor(np.ascontiguousarray(vertices, dtype=np.float32)),
                        o3d.core.Tensor(np.ascontiguousarray(triangles, dtype=np.uint32)))
    rays = np.stack([camera_rays(c, size) for c in cameras])
    hits = scene.cast_rays(o3d.core.Tensor(rays), nthreads=threads)
    depth = hits["t_hit"].numpy().astype(np.float32)
    hit = np.isfinite(depth)
    prims = hits["primitive_ids"].numpy()[hit].astype(np.int64)
    uvs = hits["primitive_uvs"].numpy()[hit]
    directions = rays[..., 3:][hit]
    normals = normal_of(prims, uvs)
    facing = np.sum(normals * directions, axis=1) > 0  # normal points away from the camera: flip it
    normals[facing] *= -1
    view_of_hit = np.nonzero(hit)[0]
    lights = np.stack([_light_direction(c) for c in cameras])[view_of_hit]
    lambert = np.clip(np.sum(normals * lights, axis=1), 0.0, 1.0)
    intensity = (ambient + (1 - ambient) * lambert)[:, None]
    base = color_of(prims, uvs) if color_of is not None else np.full((len(prims), 3), 0.85, np.float32)
    shaded = np.ones(depth.shape + (3,), np.float32)
    shaded[hit] = np.clip(base * intensity, 0.0, 1.0)
    distance = float(np.linalg.norm(cameras[0].eye))
    return RenderedViews(shaded, depth, list(cameras), near=distance - 1.0, far=distance + 1.0)


def _light_direction(camera: ViewCamera) -> np.ndarray:
    """Unit vector towards a light above, to the right of and behind the camera."""
    forward, right, up = camera.basis()
    light = -forward + 0.6 * up + 0.3 * right
    return (light / np.linalg.norm(light)).astype(np.float32)


def _barycentric(values: np.ndarray, triangles: np.ndarray, prims: np.ndarray, uvs: np.ndarray) -> np.ndarray:
    """Per-vertex ``values`` (M, C) interpolated at hits: ``(1 - u - v) a + u b + v c``."""
    corners = values[triangles[prims]]  # (K, 3, C)
    u, v = uvs[:, :1], uvs[:, 1:2]
    return ((1 - u - v) * corners[:, 0] + u * corners[:, 1] + v * corners[:, 2]).astype(np.float32)


def _vertex_colors(mesh: "trimesh.Trimesh") -> Optional[np.ndarray]:  # noqa: F821
    """(V, 3) float32 vertex colours in [0, 1] (textures looked up at the vertex UVs), or None with a
    warning when the texture cannot be read (the mesh is then shaded grey)."""
    try:
        visual = mesh.visual.to_color() if mesh.visual.kind == "texture" else mesh.visual
        return np.asarray(visual.vertex_colors, dtype=np.float32)[:, :3] / 255.0
    except Exception as exc:  # trimesh raises various errors for textures without images or UVs
        logger.warning("cannot read the colours of a mesh (%s: %s); rendering it grey", type(exc).__name__, exc)
        return None


def render_mesh(mesh: "trimesh.Trimesh", num_views: int = 12, image_size: int = 224,  # noqa: F821
                up_axis: str = "z", distance: float = 2.5, elevation_deg: float = 25.0, ambient: float = 0.3,
                colors: bool = True, threads: int = 0) -> RenderedViews:
    """Shaded and depth views of a mesh normalised to the unit sphere (flat shading; vertex or texture
    colours when ``colors`` and the mesh has them)."""
    vertices = normalize_unit_sphere(np.asarray(mesh.vertices))
    triangles = np.asarray(mesh.faces, dtype=np.int64)
    face_normals = np.asarray(mesh.face_normals, dtype=np.float32)
    vertex_colors = _vertex_colors(mesh) if colors and mesh_has_colors(mesh) else None
    color_of = None
    if vertex_colors is not None:
        color_of = lambda prims, uvs: _barycentric(vertex_colors, triangles, prims, uvs)  # noqa: E731
    return _raycast(vertices, triangles, orbit_cameras(num_views, distance, elevation_deg, up_axis), image_size,
                    lambda prims, uvs: face_normals[prims].copy(), color_of, ambient, threads)


def splat_radius(xyz: np.ndarray, scale: float = 1.0) -> float:
    """``scale`` x the mean distance of each point to its nearest neighbour (KD-tree)."""
    from scipy.spatial import cKDTree

    if len(xyz) < 2:
        return 0.02 * scale
    dist, _ = cKDTree(xyz).query(xyz, k=2)
    spacing = float(np.mean(dist[:, 1]))
    return scale * (spacing if spacing > 0 else 0.02)


def render_points(cloud: PointCloud, num_views: int = 12, image_size: int = 224, up_axis: str = "z",
                  distance: float = 2.5, elevation_deg: float = 25.0, ambient: float = 0.3,
                  splat_scale: float = 1.5, max_points: int = 100_000, colors: bool = True, seed: int = 0,
                  threads: int = 0) -> RenderedViews:
    """Shaded and depth views of a point cloud normalised to the unit sphere, splatted as octahedra.

    Clouds larger than ``max_points`` are randomly subsampled (seeded) first. Normals come from the cloud
    or :func:`~alignkit.domains.pointcloud.clouds.estimate_normals`; colours from the cloud when ``colors``.
    """
    if len(cloud) > max_points:
        cloud = cloud.subset(np.sort(np.random.default_rng(seed).choice(len(cloud), max_points, replace=False)))
    xyz = normalize_unit_sphere(cloud.xyz)
    normals = cloud.normals if cloud.normals is not None else estimate_normals(xyz)
    normals = normals.astype(np.float32)
    radius = splat_radius(xyz, splat_scale)
    vertices = (xyz[:, None, :] + radius * _OCTAHEDRON_VERTICES[None]).reshape(-1, 3)
    triangles = (_OCTAHEDRON_FACES[None] + 6 * np.arange(len(xyz))[:, None, None]).reshape(-1, 3)
    per_point = len(_OCTAHEDRON_FACES)
    color_of = None
    if colors and cloud.colors is not None:
        point_colors = cloud.colors.astype(np.float32)
        color_of = lambda prims, uvs: point_colors[prims // per_point]  # noqa: E731
    return _raycast(vertices, triangles, orbit_cameras(num_views, distance, elevation_deg, up_axis), image_size,
                    lambda prims, uvs: normals[prims // per_point].copy(), color_of, ambient, threads)


def encode_depth(depth: np.ndarray, near: float, far: float) -> np.ndarray:
    """Planar depth (H, W) -> uint16: ``1 + round(65534 (far - z) / (far - near))`` (z clipped to
    [near, far]); ``inf`` (no surface) -> 0."""
    hit = np.isfinite(depth)
    out = np.zeros(depth.shape, np.uint16)
    scaled = (far - np.clip(depth[hit], near, far)) / (far - near)
    out[hit] = 1 + np.round(scaled * 65534).astype(np.uint16)
    return out


def decode_depth(values: np.ndarray, near: float, far: float) -> np.ndarray:
    """Inverse of :func:`encode_depth`: uint16 (H, W) -> float32 depth, ``inf`` where 0."""
    values = np.asarray(values)
    depth = np.full(values.shape, np.inf, np.float32)
    hit = values > 0
    depth[hit] = far - (values[hit].astype(np.float64) - 1) / 65534 * (far - near)
    return depth


def view_file(out_dir: PathLike, kind: str, index: int) -> Path:
    """``out_dir/<kind>_<index:02d>.png`` (``kind`` ``shaded`` or ``depth``)."""
    return Path(out_dir) / f"{kind}_{index:02d}.png"


def write_views(views: RenderedViews, out_dir: PathLike, kinds: Sequence[str] = VIEW_KINDS) -> List[Path]:
    """Write each view as :func:`view_file` PNGs plus ``views.json`` (cameras, near, far); return the PNGs."""
    unknown = [k for k in kinds if k not in VIEW_KINDS]
    if unknown:
        raise ConfigError(f"view kinds {unknown} unknown; choose from {', '.join(VIEW_KINDS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for v in range(len(views.cameras)):
        if "shaded" in kinds:
            rgb = np.round(views.shaded[v] * 255).astype(np.uint8)
            Image.fromarray(rgb, "RGB").save(view_file(out, "shaded", v))
            written.append(view_file(out, "shaded", v))
        if "depth" in kinds:
            Image.fromarray(encode_depth(views.depth[v], views.near, views.far)).save(view_file(out, "depth", v))
            written.append(view_file(out, "depth", v))
    meta = {"near": views.near, "far": views.far, "image_size": int(views.depth.shape[-1]),
            "cameras": [{"eye": c.eye, "center": c.center, "up": c.up, "fov_deg": c.fov_deg} for c in views.cameras]}
    (out / "views.json").write_text(json.dumps(meta, indent=1))
    return written


def default_views_dir(path: PathLike, image_size: int, cache_dir: Optional[PathLike] = None) -> Path:
    """Where the views of ``path`` go when no folder is given: never beside the file (datasets may be
    read-only and shared), but ``<cache_dir>/views/<key>_<stem>_views<image_size>/`` with ``cache_dir``
    default :func:`~alignkit.domains.pointcloud.preprocess.default_cache_dir` (``~/.cache/alignkit/pointcloud``)
    and ``key`` the first 16 hex digits of ``sha1(resolved path, mtime_ns, size)``, so an edited or replaced
    file gets new views."""
    path = Path(path)
    resolved = path.resolve()
    stat = resolved.stat()
    key = hashlib.sha1(f"{resolved}\0{stat.st_mtime_ns}\0{stat.st_size}".encode()).hexdigest()[:16]
    base = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return base / "views" / f"{key}_{path.stem}_views{image_size}"


def render_geometry(geometry: Union["trimesh.Trimesh", PointCloud], num_views: int = 12,  # noqa: F821
                    image_size: int = 224, up_axis: str = "z", threads: int = 0) -> RenderedViews:
    """:func:`render_points` for a :class:`~alignkit.domains.pointcloud.clouds.PointCloud`, else :func:`render_mesh`."""
    if isinstance(geometry, PointCloud):
        return render_points(geometry, num_views, image_size, up_axis, threads=threads)
    return render_mesh(geometry, num_views, image_size, up_axis, threads=threads)


def render_file(path: PathLike, out_dir: PathLike, num_views: int = 12, image_size: int = 224,
                up_axis: str = "z", kinds: Sequence[str] = VIEW_KINDS, threads: int = 0) -> List[Path]:
    """Render a mesh or point file (:func:`~alignkit.domains.pointcloud.clouds.load_geometry`) to PNGs in
    ``out_dir`` (required: nothing is written beside the source file, which may sit in a read-only dataset;
    :func:`default_views_dir` gives a per-file folder under the user cache); return the written PNG paths.

    ``up_axis``: the file's up direction (see the module docstring); a y-up mesh rendered with the default z
    lies on its side."""
    if out_dir is None:
        raise ConfigError(f"render_file({path}): give out_dir, the folder for the views (for example "
                          f"default_views_dir(path, image_size)); views are never written beside the source file")
    views = render_geometry(load_geometry(path), num_views, image_size, up_axis, threads)
    return write_views(views, out_dir, kinds)
