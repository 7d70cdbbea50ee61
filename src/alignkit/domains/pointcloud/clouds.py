"""Point clouds and meshes from files: :class:`PointCloud`, the file readers, surface sampling, normals.

Files (:func:`load_point_cloud`):

- meshes ``.off .obj .stl`` (and ``.ply`` with faces), read unprocessed through trimesh: area-weighted
  surface sampling of ``surface_points`` points (``trimesh.sample.sample_surface``), each with the normal of
  the face it lies on (and its colour when asked);
- clouds ``.ply`` (no faces) and ``.pcd`` through Open3D (``open3d.io.read_point_cloud``); text
  ``.xyz .xyzn .xyzrgb .pts .txt`` (``.pts`` may start with a point-count line; ``,`` or whitespace
  separated) and ``.npy`` arrays. Coordinates stay float64 until
  :func:`~alignkit.domains.pointcloud.preprocess.prepare_points` centres them, so georeferenced clouds
  (x ~ 6.6e5 m) keep millimetres.

Before a library parses a file, its header's counts are checked against what the file holds
(:func:`~alignkit.domains.pointcloud.integrity.check_declared_counts`), and Open3D's printed read failures
are caught (:func:`~alignkit.domains.pointcloud.integrity.read_open3d_cloud`): neither library raises on a
truncated file. Every problem raises :class:`PointFileError` naming the file, what its header declares and
what it holds (and, for text files, the line).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np

from alignkit.core.checkpoints import load_npy
from alignkit.core.registry import ConfigError
from alignkit.domains.pointcloud.integrity import PointFileError, check_declared_counts, check_terminated, read_open3d_cloud

PathLike = Union[str, Path]

MESH_SUFFIXES = (".off", ".obj", ".stl", ".ply")
"""Mesh formats (a ``.ply`` without faces is read as a point cloud)."""
TEXT_POINT_SUFFIXES = (".xyz", ".xyzn", ".xyzrgb", ".pts", ".txt")
POINT_SUFFIXES = (".ply", ".pcd", ".npy", *TEXT_POINT_SUFFIXES)
SUPPORTED_SUFFIXES = tuple(sorted(set(MESH_SUFFIXES + POINT_SUFFIXES)))

UP_AXES = ("x", "y", "z")
"""Coordinate axes a dataset may name as its shapes' up direction."""


# ============================================================================================ clouds


@dataclass(frozen=True)
class PointCloud:
    """Points as read from a file.

    ``xyz`` (N, 3) float64 in file units; ``normals`` (N, 3) float32 unit vectors or None;
    ``colors`` (N, 3) float32 in [0, 1] or None; ``source`` names the file (for messages).
    """

    xyz: np.ndarray
    normals: Optional[np.ndarray] = None
    colors: Optional[np.ndarray] = None
    source: str = ""

    def __post_init__(self) -> None:
        if self.xyz.ndim != 2 or self.xyz.shape[1] != 3:
            raise PointFileError(f"{self.source}: points must have shape (N, 3), got {self.xyz.shape}")
        for name in ("normals", "colors"):
            value = getattr(self, name)
            if value is not None and value.shape != self.xyz.shape:
                raise PointFileError(f"{self.source}: {name} have shape {value.shape}, points {self.xyz.shape}")

    def __len__(self) -> int:
        return int(self.xyz.shape[0])

    def subset(self, idx: np.ndarray) -> "PointCloud":
        """The points ``idx`` (int array), with their normals and colours."""
        return replace(self, xyz=self.xyz[idx], normals=None if self.normals is None else self.normals[idx],
                       colors=None if self.colors is None else self.colors[idx])


def check_points(cloud: PointCloud, first_line: Optional[int] = None) -> PointCloud:
    """Raise :class:`PointFileError` if ``cloud`` is empty or holds NaN/inf (how many, the first point and line)."""
    if len(cloud) == 0:
        raise PointFileError(f"{cloud.source}: no points")
    for name, values in (("coordinate", cloud.xyz), ("normal", cloud.normals), ("colour", cloud.colors)):
        if values is None:
            continue
        bad = np.flatnonzero(~np.isfinite(values).all(axis=1))
        if len(bad):
            line = f" (line {first_line + int(bad[0])})" if first_line is not None else ""
            raise PointFileError(f"{cloud.source}: {len(bad)} of {len(cloud)} points have a non-finite (NaN/inf) "
                                 f"{name}, the first is point {int(bad[0])}{line}; fix or remove them")
    return cloud


def check_file(path: Path) -> None:
    """Raise :class:`PointFileError` if ``path`` is not an existing, non-empty file."""
    if not path.is_file():
        raise PointFileError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise PointFileError(f"{path}: empty file (0 bytes)")


def check_suffix(path: Path) -> str:
    """The lower-case suffix of ``path``; :class:`PointFileError` unless it is in :data:`SUPPORTED_SUFFIXES`."""
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise PointFileError(f"{path}: unsupported file type '{suffix}'; supported: {', '.join(SUPPORTED_SUFFIXES)}")
    return suffix


# ============================================================================================ meshes


def _parse_mesh(path: Path, force_mesh: bool = True) -> "trimesh.Trimesh":  # noqa: F821
    """trimesh's reading of ``path`` (nothing merged or dropped), after its header counts are checked."""
    import trimesh

    check_declared_counts(path)
    try:
        return trimesh.load(str(path), force="mesh" if force_mesh else None, process=False)
    except Exception as exc:  # trimesh raises many types on malformed files
        raise PointFileError(f"{path}: cannot be read as a mesh ({type(exc).__name__}: {exc})") from exc


def _check_mesh(mesh: "trimesh.Trimesh", path: Path) -> "trimesh.Trimesh":  # noqa: F821
    if len(mesh.faces) == 0:
        raise PointFileError(f"{path}: mesh has no faces ({len(mesh.vertices)} vertices, 0 faces); store a point "
                             "cloud as .ply (vertices only), .pcd, .xyz or .pts instead")
    if mesh.faces.min() < 0 or mesh.faces.max() >= len(mesh.vertices):
        raise PointFileError(f"{path}: a face refers to vertex {int(mesh.faces.max())} but the mesh has "
                             f"{len(mesh.vertices)} vertices (truncated or corrupt file)")
    bad = np.flatnonzero(~np.isfinite(mesh.vertices).all(axis=1))
    if len(bad):
        raise PointFileError(f"{path}: {len(bad)} of {len(mesh.vertices)} vertices have a non-finite (NaN/inf) "
                             f"coordinate, the first is vertex {int(bad[0])}; fix or remove them")
    if not mesh.area > 0:
        raise PointFileError(f"{path}: mesh has zero surface area; nothing to sample")
    return mesh


def load_mesh(path: PathLike) -> "trimesh.Trimesh":  # noqa: F821 (trimesh is imported lazily)
    """A mesh file as an unprocessed ``trimesh.Trimesh`` (vertices as stored; nothing merged or dropped).

    Raises :class:`PointFileError` for a missing/empty/unparsable file, a header whose counts the file
    does not hold, a mesh without faces, NaN/inf vertices (naming the first one) or zero surface area.
    """
    path = Path(path)
    check_file(path)
    return _check_mesh(_parse_mesh(path), path)


def mesh_has_colors(mesh: "trimesh.Trimesh") -> bool:  # noqa: F821
    """True if the mesh carries vertex, face or texture colours."""
    return getattr(mesh.visual, "kind", None) in ("vertex", "face", "texture")


def sample_mesh_surface(mesh: "trimesh.Trimesh", count: int, seed: int = 0,  # noqa: F821
                        colors: bool = False, source: str = "") -> PointCloud:
    """``count`` points uniformly on the surface (faces drawn with probability proportional to area).

    Each point gets the unit normal of its face (``mesh.face_normals``) and, with ``colors``, the
    mesh colour there (vertex/face colours or the texture at its UV).
    """
    import trimesh

    if count < 1:
        raise ConfigError(f"surface_points must be positive, got {count}")
    if colors and not mesh_has_colors(mesh):
        raise PointFileError(f"{source}: colours were asked for but the mesh has none "
                             f"(visual kind {getattr(mesh.visual, 'kind', None)})")
    if colors:
        try:
            xyz, faces, rgba = trimesh.sample.sample_surface(mesh, count, seed=seed, sample_color=True)
        except Exception as exc:  # e.g. a texture without an image
            raise PointFileError(f"{source}: cannot sample the mesh colours ({type(exc).__name__}: {exc})") from exc
        rgb: Optional[np.ndarray] = np.asarray(rgba, dtype=np.float32)[:, :3] / 255.0
    else:
        xyz, faces = trimesh.sample.sample_surface(mesh, count, seed=seed)
        rgb = None
    normals = np.asarray(mesh.face_normals, dtype=np.float32)[faces]
    return check_points(PointCloud(np.asarray(xyz, dtype=np.float64), normals, rgb, source))


# ============================================================================================ points


def _extra_columns(values: np.ndarray, path: Path, suffix: str) -> Tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    """(normals, colors) from the columns after xyz: see :func:`read_point_file`."""
    n = values.shape[1]
    if n == 0 or (n == 1 and suffix in (".pts", ".txt", ".xyz")):  # a lone 4th column is intensity
        return None, None
    if suffix == ".xyzn" and n == 3:
        return values.astype(np.float32), None
    if suffix == ".xyzrgb" and n == 3:
        return None, values.astype(np.float32)
    if n == 4 and suffix == ".pts":  # x y z intensity r g b (Leica/FARO .pts)
        return None, (values[:, 1:] / 255.0).astype(np.float32)
    if n == 3:
        finite = values[np.isfinite(values).all(axis=1)]
        norms = np.linalg.norm(finite, axis=1)
        if len(finite) and np.mean(np.abs(norms - 1.0) < 1e-2) > 0.99:
            return values.astype(np.float32), None
        if len(finite) and finite.min() >= 0 and finite.max() <= 255:
            scale = 255.0 if finite.max() > 1 else 1.0
            return None, (values / scale).astype(np.float32)
        raise PointFileError(f"{path}: cannot tell whether columns 4-6 are normals (unit length) or colours "
                             f"(0-1 or 0-255); rename the file .xyzn or .xyzrgb to say which")
    raise PointFileError(f"{path}: {3 + n} columns per point; expected x y z [nx ny nz | r g b] "
                         "(or x y z intensity [r g b] for .pts)")


def _read_text_points(path: Path) -> Tuple[np.ndarray, int]:
    """Rows of a text point file (float64) and the 1-based line number of the first row."""
    from alignkit.core.text import read_text
    text = read_text(path, what="point file")  # strict decoding: bad bytes name the file and offset
    check_terminated(path, text)
    lines = text.splitlines()
    head = (lines + ["", ""])[:2]
    first = head[0].split()
    header = 1 if len(first) == 1 and first[0].isdigit() else 0
    delimiter = "," if "," in head[header] else None
    try:
        rows = np.loadtxt(lines, dtype=np.float64, delimiter=delimiter, skiprows=header, comments="#", ndmin=2)
    except ValueError as exc:
        raise PointFileError(f"{path}: not a table of numbers ({exc}; rows counted after "
                             f"{header} header line{'s' if header != 1 else ''})") from exc
    if header and rows.shape[0] != int(first[0]):
        raise PointFileError(f"{path}: line 1 announces {int(first[0])} points but the file holds "
                             f"{rows.shape[0]} (truncated or wrong header)")
    return rows, header + 1


def read_point_file(path: PathLike) -> PointCloud:
    """A point-cloud file as a :class:`PointCloud` (all its points).

    - ``.pcd`` and vertex-only ``.ply``: Open3D (points, normals and colours when stored), after the header's
      ``POINTS`` / ``element vertex`` count is checked against the data and with Open3D's failures raised;
    - ``.npy``: an (N, 3+) numeric array (an object array is refused: no pickle); text ``.xyz .xyzn .xyzrgb .pts .txt``: one point per line, columns
      separated by whitespace or ``,``; ``.pts`` may start with a line holding the point count.
      Columns: ``x y z``; ``x y z i`` (intensity, ignored); ``x y z a b c`` with ``abc`` normals when
      unit length, else colours (0-1 or 0-255) (``.xyzn`` / ``.xyzrgb`` say which);
      ``.pts`` ``x y z i r g b``.

    Coordinates are float64 as stored. Errors (:class:`PointFileError`) name the file and, for text
    files, the line of the first NaN/inf point.
    """
    path = Path(path)
    check_file(path)
    suffix = check_suffix(path)
    if suffix in (".pcd", ".ply"):
        check_declared_counts(path)
    return _read_checked_point_file(path, suffix)


def _read_checked_point_file(path: Path, suffix: str) -> PointCloud:
    """:func:`read_point_file` of a file whose header counts were checked."""
    first_line: Optional[int] = None
    if suffix in (".pcd", ".ply"):
        cloud = read_open3d_cloud(path)
        xyz = np.asarray(cloud.points, dtype=np.float64)
        if len(xyz) == 0:
            raise PointFileError(f"{path}: no points (Open3D read 0 from the file)")
        normals = np.asarray(cloud.normals, dtype=np.float32) if cloud.has_normals() else None
        colors = np.asarray(cloud.colors, dtype=np.float32) if cloud.has_colors() else None
        return check_points(PointCloud(xyz, normals, colors, str(path)))
    if suffix == ".npy":
        try:
            rows = load_npy(path)  # object arrays are refused (no pickle)
        except ValueError as exc:
            raise PointFileError(str(exc)) from None
        if rows.dtype.kind not in "fiub":
            raise PointFileError(f"{path}: array of dtype {rows.dtype}; expected numbers (N, 3+)")
        if rows.ndim != 2 or rows.shape[1] < 3:
            raise PointFileError(f"{path}: array of shape {rows.shape}; expected (N, 3+) points")
        rows = rows.astype(np.float64)
    else:
        rows, first_line = _read_text_points(path)
        if rows.shape[1] < 3:
            raise PointFileError(f"{path}: {rows.shape[1]} columns; each line needs at least x y z")
    if rows.shape[0] == 0:
        raise PointFileError(f"{path}: no points")
    normals, colors = _extra_columns(rows[:, 3:], path, suffix)
    return check_points(PointCloud(rows[:, :3], normals, colors, str(path)), first_line)


def load_geometry(path: PathLike) -> Union["trimesh.Trimesh", PointCloud]:  # noqa: F821
    """A mesh file as a checked ``trimesh.Trimesh`` (:func:`load_mesh`), a point file as a :class:`PointCloud`
    (:func:`read_point_file`); a ``.ply`` is a mesh when it has faces, else a cloud."""
    path = Path(path)
    suffix = check_suffix(path)
    if suffix == ".ply":
        check_file(path)
        loaded = _parse_mesh(path, force_mesh=False)  # checks the header counts
        if len(getattr(loaded, "faces", ())) > 0:
            return _check_mesh(loaded, path)
        return _read_checked_point_file(path, suffix)
    if suffix in MESH_SUFFIXES:
        return load_mesh(path)
    return read_point_file(path)


def load_point_cloud(path: PathLike, surface_points: int = 8192, seed: int = 0, colors: bool = False) -> PointCloud:
    """Any supported file as a :class:`PointCloud`.

    Meshes (``.off .obj .stl``, ``.ply`` with faces) give ``surface_points`` area-weighted surface
    samples with face normals (:func:`sample_mesh_surface`; ``colors`` samples the mesh colours);
    point files give all their points (:func:`read_point_file`).
    """
    geometry = load_geometry(path)
    if isinstance(geometry, PointCloud):
        return geometry
    return sample_mesh_surface(geometry, surface_points, seed=seed, colors=colors, source=str(path))


def estimate_normals(xyz: np.ndarray, k: int = 30) -> np.ndarray:
    """(N, 3) float32 unit normals by PCA over each point's ``k`` nearest neighbours (Open3D).

    The sign is chosen to point away from the centroid (outward on closed, roughly convex shapes).
    """
    import open3d as o3d

    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.asarray(xyz, dtype=np.float64)))
    cloud.estimate_normals(o3d.geometry.KDTreeSearchParamKNN(knn=max(3, min(k, len(xyz)))))
    normals = np.asarray(cloud.normals, dtype=np.float32)
    outward = np.sum(normals * (xyz - xyz.mean(axis=0)), axis=1) < 0
    normals[outward] *= -1
    return normals

