"""Point clouds from files: mesh and point formats, dataset layouts, fixed-size sampling and its cache.

Files (:func:`load_point_cloud`):

- meshes ``.off .obj .stl`` (and ``.ply`` with faces), through trimesh: area-weighted surface sampling of
  ``surface_points`` points, each with the normal of the face it lies on (and its colour when asked);
- clouds ``.ply`` (no faces) and ``.pcd`` through Open3D; text ``.xyz .xyzn .xyzrgb .pts .txt``
  (``.pts`` may start with a point-count line; ``,`` or whitespace separated) and ``.npy`` arrays.
  Coordinates stay float64 until :func:`prepare_points` centres them, so georeferenced clouds
  (x ~ 6.6e5 m) keep millimetres.

Layouts (readers index a dataset into :class:`PointRecord` s; bad entries raise :class:`PointFileError`
naming the file and line, or are listed in ``skipped`` with ``skip_bad=True``):
:class:`ModelNet40MeshReader` (``<class>/{train,test}/<name>.off``), :class:`ModelNet40ResampledReader`
(``modelnet40_normal_resampled``), :class:`ShapeNet55Reader` (Point-BERT's ``shapenet_pc`` +
``ShapeNet-55/{train,test}.txt``), :class:`ScanObjectNNReader` (``.h5`` with ``data``, ``label``) and
:class:`PointFolderReader` (any files listed in a labels CSV).

Preprocessing: :func:`prepare_points` centres, samples ``N`` points by farthest point sampling
(:func:`~alignkit.domains.pointcloud.ops.fps_numpy`) and scales to the unit sphere;
:class:`SampledCloudCache` keeps its results on disk keyed by file, mtime and parameters.
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from alignkit.core.data import MISSING_VALUES
from alignkit.core.registry import ConfigError, did_you_mean
from alignkit.domains.pointcloud.ops import fps_numpy
from alignkit.domains.pointcloud.prompts import readable_class_name

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]

MESH_SUFFIXES = (".off", ".obj", ".stl", ".ply")
"""Mesh formats (a ``.ply`` without faces is read as a point cloud)."""
TEXT_POINT_SUFFIXES = (".xyz", ".xyzn", ".xyzrgb", ".pts", ".txt")
POINT_SUFFIXES = (".ply", ".pcd", ".npy", *TEXT_POINT_SUFFIXES)
SUPPORTED_SUFFIXES = tuple(sorted(set(MESH_SUFFIXES + POINT_SUFFIXES)))

FEATURES: Dict[str, Tuple[str, ...]] = {"none": (), "normals": ("normals",), "colors": ("colors",),
                                        "normals+colors": ("normals", "colors")}
"""Per-point feature sets of :func:`prepare_points`: columns after xyz (3 per entry, in this order)."""
SAMPLING_METHODS = ("fps", "random")
UP_AXES = ("x", "y", "z")
CACHE_VERSION = 1
"""Bumped when :func:`prepare_points` changes, so old cache entries are not reused."""


class PointFileError(ValueError):
    """A mesh, point file or dataset listing that cannot be used; the message names the file (and line)."""


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


def _check_points(cloud: PointCloud, first_line: Optional[int] = None) -> PointCloud:
    """Raise :class:`PointFileError` if ``cloud`` is empty or holds NaN/inf (naming the point and line)."""
    if len(cloud) == 0:
        raise PointFileError(f"{cloud.source}: no points")
    for name, values in (("coordinate", cloud.xyz), ("normal", cloud.normals), ("colour", cloud.colors)):
        if values is None:
            continue
        bad = np.flatnonzero(~np.isfinite(values).all(axis=1))
        if len(bad):
            line = f" (line {first_line + int(bad[0])})" if first_line is not None else ""
            raise PointFileError(f"{cloud.source}: non-finite (NaN/inf) {name} at point {int(bad[0])}{line}, "
                                 f"{len(bad)} such points in all; fix or remove them")
    return cloud


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise PointFileError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise PointFileError(f"{path}: empty file (0 bytes)")


def _check_suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise PointFileError(f"{path}: unsupported file type '{suffix}'; supported: {', '.join(SUPPORTED_SUFFIXES)}")
    return suffix


# ============================================================================================ meshes


def _parse_mesh(path: Path, force_mesh: bool = True) -> "trimesh.Trimesh":  # noqa: F821
    import trimesh

    try:
        return trimesh.load(str(path), force="mesh" if force_mesh else None, process=False)
    except Exception as exc:  # trimesh raises many types on malformed files
        raise PointFileError(f"{path}: cannot be read as a mesh ({type(exc).__name__}: {exc})") from exc


def _check_mesh(mesh: "trimesh.Trimesh", path: Path) -> "trimesh.Trimesh":  # noqa: F821
    if len(mesh.faces) == 0:
        raise PointFileError(f"{path}: mesh has no faces ({len(mesh.vertices)} vertices); store a point cloud "
                             "as .ply (vertices only), .pcd, .xyz or .pts instead")
    if mesh.faces.min() < 0 or mesh.faces.max() >= len(mesh.vertices):
        raise PointFileError(f"{path}: a face refers to vertex {int(mesh.faces.max())} but the mesh has "
                             f"{len(mesh.vertices)} vertices (truncated or corrupt file)")
    bad = np.flatnonzero(~np.isfinite(mesh.vertices).all(axis=1))
    if len(bad):
        raise PointFileError(f"{path}: non-finite (NaN/inf) coordinate at vertex {int(bad[0])}, "
                             f"{len(bad)} such vertices in all; fix or remove them")
    if not mesh.area > 0:
        raise PointFileError(f"{path}: mesh has zero surface area; nothing to sample")
    return mesh


def load_mesh(path: PathLike) -> "trimesh.Trimesh":  # noqa: F821 (trimesh is imported lazily)
    """A mesh file as an unprocessed ``trimesh.Trimesh`` (vertices as stored; nothing merged or dropped).

    Raises :class:`PointFileError` for a missing/empty/unparsable file, a mesh without faces, NaN/inf
    vertices (naming the first one) or zero surface area.
    """
    path = Path(path)
    _check_file(path)
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
    return _check_points(PointCloud(np.asarray(xyz, dtype=np.float64), normals, rgb, source))


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
    with open(path, "r", encoding="utf-8", errors="replace") as f:
        head = [f.readline() for _ in range(2)]
    first = head[0].split()
    header = 1 if len(first) == 1 and first[0].isdigit() else 0
    delimiter = "," if "," in head[header] else None
    try:
        rows = np.loadtxt(path, dtype=np.float64, delimiter=delimiter, skiprows=header, comments="#", ndmin=2)
    except ValueError as exc:
        raise PointFileError(f"{path}: not a table of numbers ({exc}; rows counted after "
                             f"{header} header line{'s' if header != 1 else ''})") from exc
    if header and rows.shape[0] != int(first[0]):
        raise PointFileError(f"{path}: line 1 announces {int(first[0])} points but the file holds "
                             f"{rows.shape[0]} (truncated or wrong header)")
    return rows, header + 1


def read_point_file(path: PathLike) -> PointCloud:
    """A point-cloud file as a :class:`PointCloud` (all its points).

    - ``.pcd`` and vertex-only ``.ply``: Open3D (points, normals and colours when stored);
    - ``.npy``: an (N, 3+) array; text ``.xyz .xyzn .xyzrgb .pts .txt``: one point per line, columns
      separated by whitespace or ``,``; ``.pts`` may start with a line holding the point count.
      Columns: ``x y z``; ``x y z i`` (intensity, ignored); ``x y z a b c`` with ``abc`` normals when
      unit length, else colours (0-1 or 0-255) (``.xyzn`` / ``.xyzrgb`` say which);
      ``.pts`` ``x y z i r g b``.

    Coordinates are float64 as stored. Errors (:class:`PointFileError`) name the file and, for text
    files, the line of the first NaN/inf point.
    """
    path = Path(path)
    _check_file(path)
    suffix = _check_suffix(path)
    first_line: Optional[int] = None
    if suffix in (".pcd", ".ply"):
        import open3d as o3d

        cloud = o3d.io.read_point_cloud(str(path))
        xyz = np.asarray(cloud.points, dtype=np.float64)
        if len(xyz) == 0:
            raise PointFileError(f"{path}: no points (Open3D could not read any from the file)")
        normals = np.asarray(cloud.normals, dtype=np.float32) if cloud.has_normals() else None
        colors = np.asarray(cloud.colors, dtype=np.float32) if cloud.has_colors() else None
        return _check_points(PointCloud(xyz, normals, colors, str(path)))
    if suffix == ".npy":
        try:
            rows = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise PointFileError(f"{path}: not a readable .npy array ({exc})") from exc
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
    return _check_points(PointCloud(rows[:, :3], normals, colors, str(path)), first_line)


def load_geometry(path: PathLike) -> Union["trimesh.Trimesh", PointCloud]:  # noqa: F821
    """A mesh file as a checked ``trimesh.Trimesh`` (:func:`load_mesh`), a point file as a :class:`PointCloud`
    (:func:`read_point_file`); a ``.ply`` is a mesh when it has faces, else a cloud."""
    path = Path(path)
    suffix = _check_suffix(path)
    if suffix == ".ply":
        _check_file(path)
        loaded = _parse_mesh(path, force_mesh=False)
        if len(getattr(loaded, "faces", ())) > 0:
            return _check_mesh(loaded, path)
        return read_point_file(path)
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


# ===================================================================================== preprocessing


def normalize_unit_sphere(xyz: np.ndarray) -> np.ndarray:
    """``(x - c) / max_i ||x_i - c||`` with ``c`` the mean point, computed in float64; (N, 3) -> float32.

    A cloud of one repeated point maps to the origin.
    """
    xyz = np.asarray(xyz, dtype=np.float64)
    centred = xyz - xyz.mean(axis=0)
    radius = float(np.sqrt((centred ** 2).sum(axis=1)).max())
    return (centred / radius if radius > 0 else centred).astype(np.float32)


def sample_indices(xyz: np.ndarray, num_points: int, method: str = "fps", seed: int = 0) -> np.ndarray:
    """``num_points`` indices into ``xyz`` (N, 3).

    ``"fps"``: farthest point sampling (:func:`~alignkit.domains.pointcloud.ops.fps_numpy`);
    ``"random"``: uniform without replacement (seeded). A cloud with fewer than ``num_points``
    points keeps all of them, followed by seeded random repeats.
    """
    if method not in SAMPLING_METHODS:
        raise ConfigError(f"sampling must be one of {', '.join(SAMPLING_METHODS)}; got {method!r}"
                          f"{did_you_mean(method, SAMPLING_METHODS)}")
    if num_points < 1:
        raise ConfigError(f"num_points must be positive, got {num_points}")
    n = len(xyz)
    rng = np.random.default_rng(seed)
    if n < num_points:
        return np.concatenate([np.arange(n), rng.choice(n, num_points - n, replace=True)])
    if method == "random":
        return np.sort(rng.choice(n, num_points, replace=False))
    return fps_numpy(np.ascontiguousarray(xyz, dtype=np.float32), num_points, start=None)


def check_features(features: str) -> Tuple[str, ...]:
    """The feature names of ``features`` (a key of :data:`FEATURES`), or :class:`ConfigError`."""
    if features not in FEATURES:
        raise ConfigError(f"features must be one of {', '.join(FEATURES)}; got {features!r}"
                          f"{did_you_mean(str(features), FEATURES)}")
    return FEATURES[features]


def prepare_points(cloud: PointCloud, num_points: int, features: str = "none", sampling: str = "fps",
                   seed: int = 0) -> np.ndarray:
    """A fixed-size, normalised model input: float32 (num_points, 3 + 3 * len(FEATURES[features])).

    1. centre in float64 (``x - mean``), then float32 (keeps precision of georeferenced coordinates);
    2. :func:`sample_indices` (FPS by default);
    3. :func:`normalize_unit_sphere` of the sampled xyz;
    4. append the features: ``normals`` (estimated by :func:`estimate_normals` when the file has none)
       and/or ``colors`` in [0, 1] (a :class:`PointFileError` when the file has none).
    """
    names = check_features(features)
    centred = (cloud.xyz - cloud.xyz.mean(axis=0)).astype(np.float32)
    idx = sample_indices(centred, num_points, sampling, seed)
    columns = [normalize_unit_sphere(centred[idx])]
    for name in names:
        if name == "normals":
            normals = cloud.normals if cloud.normals is not None else estimate_normals(cloud.xyz)
            columns.append(normals[idx].astype(np.float32))
        else:
            if cloud.colors is None:
                raise PointFileError(f"{cloud.source}: features '{features}' need colours but the file has none; "
                                     "use features: none or normals")
            columns.append(cloud.colors[idx].astype(np.float32))
    return np.ascontiguousarray(np.concatenate(columns, axis=1))


def default_cache_dir() -> Path:
    """``$ALIGNKIT_CACHE/pointcloud``, by default ``~/.cache/alignkit/pointcloud``."""
    return Path(os.environ.get("ALIGNKIT_CACHE", Path.home() / ".cache" / "alignkit")) / "pointcloud"


class SampledCloudCache:
    """Prepared clouds on disk: ``<directory>/<key>.npy``, so an epoch does not resample meshes.

    ``key = sha1([CACHE_VERSION, resolved path, mtime_ns, size, row, params])``: editing or replacing the
    file, or changing any sampling parameter, gives a new key. Entries are written atomically (a
    temporary file renamed into place), so DataLoader workers may share the directory.
    """

    def __init__(self, directory: PathLike):
        self.directory = Path(directory)

    def key(self, source: PathLike, params: Mapping[str, object], row: Optional[int] = None) -> str:
        path = Path(source).resolve()
        stat = path.stat()
        blob = json.dumps([CACHE_VERSION, str(path), stat.st_mtime_ns, stat.st_size, row, dict(params)],
                          sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()

    def path(self, source: PathLike, params: Mapping[str, object], row: Optional[int] = None) -> Path:
        return self.directory / f"{self.key(source, params, row)}.npy"

    def fetch(self, source: PathLike, params: Mapping[str, object], compute: Callable[[], np.ndarray],
              row: Optional[int] = None) -> np.ndarray:
        """The cached array of ``(source, row, params)``, or ``compute()`` stored under that key."""
        target = self.path(source, params, row)
        if target.is_file():
            try:
                return np.load(target, allow_pickle=False)
            except (ValueError, OSError):
                logger.warning("point-cloud cache entry %s is unreadable; recomputing it", target)
        value = compute()
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f"{target.stem}.{os.getpid()}.tmp.npy")
        np.save(tmp, value)
        os.replace(tmp, target)
        return value


# ============================================================================================ layouts


@dataclass(frozen=True)
class PointRecord:
    """One item of a layout: the file holding it (the ``.h5`` for ScanObjectNN, with its ``row``), its
    label (index into the reader's ``class_names``), a unique ``id``, ``where`` it was listed (file or
    split file and line) and an optional per-item ``description`` (caption metadata)."""

    path: Path
    label: int
    id: str
    where: str
    row: Optional[int] = None
    description: Optional[str] = None


class PointLayoutReader:
    """Base of the layout readers.

    Attributes: ``records`` (:class:`PointRecord` list), ``class_keys`` (classes as the layout names them:
    folder names, synset ids), ``class_names`` (readable names for prompts), ``synonyms`` (per class, the
    names a caption may use, first = ``class_names[k]``), ``up_axis`` of the layout's shapes and
    ``skipped`` (``(where, reason)`` of entries dropped under ``skip_bad``).
    """

    up_axis = "z"

    def __init__(self, skip_bad: bool = False):
        self.skip_bad = skip_bad
        self.records: List[PointRecord] = []
        self.class_keys: List[str] = []
        self.synonyms: List[Tuple[str, ...]] = []
        self.skipped: List[Tuple[str, str]] = []

    @property
    def class_names(self) -> List[str]:
        return [names[0] for names in self.synonyms]

    def _set_classes(self, keys: Sequence[str], synonyms: Optional[Sequence[Tuple[str, ...]]] = None) -> None:
        self.class_keys = list(keys)
        self.synonyms = list(synonyms) if synonyms is not None else [(readable_class_name(k),) for k in keys]

    def _reject(self, where: str, reason: str) -> None:
        """Raise :class:`PointFileError` for a bad entry, or list it in ``skipped`` under ``skip_bad``."""
        if not self.skip_bad:
            raise PointFileError(f"{where}: {reason}; fix it, or pass skip_bad=True to skip such entries")
        self.skipped.append((where, reason))

    def _add_file(self, path: Path, label: int, item_id: str, where: str, description: Optional[str] = None) -> None:
        """Append a record for ``path`` after the cheap checks (exists, non-empty, supported type)."""
        try:
            _check_file(path)
            _check_suffix(path)
        except PointFileError as exc:
            self._reject(where, str(exc))
            return
        self.records.append(PointRecord(path, label, item_id, where, description=description))

    def _read_lines(self, path: Path) -> List[Tuple[int, str]]:
        """Non-blank stripped lines of a split file with their 1-based numbers ([] if the file is absent)."""
        if not path.is_file():
            logger.warning("%s not found: split has no items", path)
            return []
        return [(n, line.strip()) for n, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]

    def load(self, record: PointRecord, surface_points: int = 8192, seed: int = 0, colors: bool = False) -> PointCloud:
        """The record's points (:func:`load_point_cloud`)."""
        return load_point_cloud(record.path, surface_points=surface_points, seed=seed, colors=colors)


def _existing_dir(root: PathLike, what: str) -> Path:
    path = Path(root)
    if not path.is_dir():
        raise ConfigError(f"{what} root {path} is not a folder")
    return path


class ModelNet40MeshReader(PointLayoutReader):
    """``root/<class>/<split>/<name>.off`` (ModelNet40 / ModelNet10 as distributed; z up).

    Classes are the sorted sub-folders holding a ``train`` or ``test`` folder; ``id`` is
    ``<class>/<split>/<name>``. Any supported mesh or point file type is accepted in place of ``.off``;
    hidden files are ignored, any other file is a bad entry.
    """

    up_axis = "z"

    def __init__(self, root: PathLike, split: str = "train", skip_bad: bool = False):
        super().__init__(skip_bad)
        self.root = _existing_dir(root, "ModelNet40")
        keys = sorted(d.name for d in self.root.iterdir()
                      if d.is_dir() and ((d / "train").is_dir() or (d / "test").is_dir()))
        if not keys:
            raise ConfigError(f"{self.root} holds no <class>/train or <class>/test folders (ModelNet40 mesh layout)")
        self._set_classes(keys)
        for label, key in enumerate(keys):
            folder = self.root / key / split
            files = sorted(folder.iterdir()) if folder.is_dir() else []
            for path in files:
                if path.is_file() and not path.name.startswith("."):
                    self._add_file(path, label, f"{key}/{split}/{path.stem}", str(path))


class ModelNet40ResampledReader(PointLayoutReader):
    """``modelnet40_normal_resampled``: ``<prefix>_shape_names.txt`` (classes in label order),
    ``<prefix>_<split>.txt`` (one ``<class>_<nnnn>`` per line) and ``<class>/<class>_<nnnn>.txt``
    (rows ``x,y,z,nx,ny,nz``); ``prefix`` is ``modelnet40`` or ``modelnet10`` (None: the one present). y up.
    """

    up_axis = "y"

    def __init__(self, root: PathLike, split: str = "train", prefix: Optional[str] = None, skip_bad: bool = False):
        super().__init__(skip_bad)
        self.root = _existing_dir(root, "ModelNet40 resampled")
        if prefix is None:
            prefix = next((p for p in ("modelnet40", "modelnet10") if (self.root / f"{p}_shape_names.txt").is_file()),
                          "modelnet40")
        names_file = self.root / f"{prefix}_shape_names.txt"
        if not names_file.is_file():
            raise ConfigError(f"{names_file} not found (ModelNet40 resampled layout needs the class list)")
        keys = [line for _, line in self._read_lines(names_file)]
        self._set_classes(keys)
        index = {k: i for i, k in enumerate(keys)}
        split_file = self.root / f"{prefix}_{split}.txt"
        for n, name in self._read_lines(split_file):
            where = f"{split_file} line {n}"
            key = name.rsplit("_", 1)[0]
            if key not in index:
                self._reject(where, f"unknown class '{key}' of '{name}' (not in {names_file.name})"
                             f"{did_you_mean(key, keys)}")
                continue
            self._add_file(self.root / key / f"{name}.txt", index[key], name, where)


SHAPENET55_SYNSETS: Dict[str, str] = {
    "02691156": "airplane", "02747177": "trash bin", "02773838": "bag", "02801938": "basket",
    "02808440": "bathtub", "02818832": "bed", "02828884": "bench", "02843684": "birdhouse",
    "02871439": "bookshelf", "02876657": "bottle", "02880940": "bowl", "02924116": "bus",
    "02933112": "cabinet", "02942699": "camera", "02946921": "can", "02954340": "cap", "02958343": "car",
    "02992529": "cellphone", "03001627": "chair", "03046257": "clock", "03085013": "keyboard",
    "03207941": "dishwasher", "03211117": "display", "03261776": "earphone", "03325088": "faucet",
    "03337140": "file cabinet", "03467517": "guitar", "03513137": "helmet", "03593526": "jar",
    "03624134": "knife", "03636649": "lamp", "03642806": "laptop", "03691459": "loudspeaker",
    "03710193": "mailbox", "03759954": "microphone", "03761084": "microwave", "03790512": "motorbike",
    "03797390": "mug", "03928116": "piano", "03938244": "pillow", "03948459": "pistol",
    "03991062": "flowerpot", "04004475": "printer", "04074963": "remote", "04090263": "rifle",
    "04099429": "rocket", "04225987": "skateboard", "04256520": "sofa", "04330267": "stove",
    "04379243": "table", "04401088": "telephone", "04460130": "tower", "04468005": "train",
    "04530566": "watercraft", "04554684": "washer",
}
"""The 55 ShapeNetCore.v2 synsets of ShapeNet-55, id -> short name (labels follow the sorted ids)."""


class ShapeNet55Reader(PointLayoutReader):
    """ShapeNet-55 as Point-BERT stores it: ``root/shapenet_pc/<synset>-<model>.npy`` (8192 x 3) listed in
    ``root/ShapeNet-55/<split>.txt``. y up.

    Labels index the 55 sorted synset ids of :data:`SHAPENET55_SYNSETS`. If ShapeNet's ``taxonomy.json``
    (entries ``{"synsetId", "name": "airplane,aeroplane,plane"}``) lies in ``root`` or ``root/ShapeNet-55``,
    its comma-separated names become each class's caption synonyms (after the short name).
    """

    up_axis = "y"

    def __init__(self, root: PathLike, split: str = "train", skip_bad: bool = False):
        super().__init__(skip_bad)
        self.root = _existing_dir(root, "ShapeNet-55")
        keys = sorted(SHAPENET55_SYNSETS)
        extra = self._taxonomy_names()
        self._set_classes(keys, [tuple(dict.fromkeys([SHAPENET55_SYNSETS[k], *extra.get(k, ())])) for k in keys])
        index = {k: i for i, k in enumerate(keys)}
        split_file = self.root / "ShapeNet-55" / f"{split}.txt"
        for n, name in self._read_lines(split_file):
            where = f"{split_file} line {n}"
            synset = name.split("-", 1)[0]
            if synset not in index:
                self._reject(where, f"unknown ShapeNet-55 synset '{synset}' in '{name}'")
                continue
            self._add_file(self.root / "shapenet_pc" / name, index[synset], Path(name).stem, where)

    def _taxonomy_names(self) -> Dict[str, Tuple[str, ...]]:
        for path in (self.root / "taxonomy.json", self.root / "ShapeNet-55" / "taxonomy.json"):
            if path.is_file():
                entries = json.loads(path.read_text())
                return {e["synsetId"]: tuple(s.strip() for s in e["name"].split(",") if s.strip())
                        for e in entries if "synsetId" in e and "name" in e}
        return {}


SCANOBJECTNN_CLASSES: Tuple[str, ...] = ("bag", "bin", "box", "cabinet", "chair", "desk", "display", "door",
                                         "shelf", "table", "bed", "pillow", "sink", "sofa", "toilet")
"""ScanObjectNN's 15 classes in label order."""


class ScanObjectNNReader(PointLayoutReader):
    """ScanObjectNN ``.h5``: ``root/<variant>/{training,test}_<suffix>.h5`` with ``data`` (M, P, 3) float
    and ``label`` (M,) or (M, 1) ints in ``[0, 15)``; one record per row (``id`` ``<file stem>/<row>``).

    ``variant`` e.g. ``main_split``, ``main_split_nobg``, ``split1``; ``suffix`` e.g.
    ``objectdataset_augmentedrot_scale75`` (PB_T50_RS, the hardest) or ``objectdataset``. The split
    ``train`` reads the ``training_`` file, any other split ``<split>_``. y up.

    An unreadable (e.g. truncated) file raises :class:`PointFileError` naming it; a label outside the
    classes is rejected per row (skipped under ``skip_bad``); rows whose data cannot be read fail when loaded.
    """

    up_axis = "y"

    def __init__(self, root: PathLike, split: str = "train", variant: str = "main_split",
                 suffix: str = "objectdataset_augmentedrot_scale75", skip_bad: bool = False):
        import h5py

        super().__init__(skip_bad)
        self.root = _existing_dir(root, "ScanObjectNN")
        self._set_classes(list(SCANOBJECTNN_CLASSES))
        self.path = self.root / variant / f"{'training' if split == 'train' else split}_{suffix}.h5"
        if not self.path.is_file():
            logger.warning("%s not found: split has no items", self.path)
            return
        try:
            with h5py.File(self.path, "r") as f:
                missing = [k for k in ("data", "label") if k not in f]
                if missing:
                    raise PointFileError(f"{self.path}: no dataset {missing} (has {sorted(f)})")
                shape = f["data"].shape
                labels = np.asarray(f["label"][()]).reshape(-1)
        except OSError as exc:
            raise PointFileError(f"{self.path}: cannot read the .h5 file ({exc}); it may be truncated - "
                                 "download it again") from exc
        if len(shape) != 3 or shape[2] < 3 or shape[0] != len(labels):
            raise PointFileError(f"{self.path}: data {shape} and label ({len(labels)},) do not match "
                                 "(expected data (M, P, 3+) and M labels)")
        for row, label in enumerate(labels.tolist()):
            where = f"{self.path} row {row}"
            if not 0 <= int(label) < len(SCANOBJECTNN_CLASSES):
                self._reject(where, f"label {label} is not a ScanObjectNN class index (0..14)")
                continue
            self.records.append(PointRecord(self.path, int(label), f"{self.path.stem}/{row}", where, row=row))

    def load(self, record: PointRecord, surface_points: int = 8192, seed: int = 0, colors: bool = False) -> PointCloud:
        """Row ``record.row`` of ``data`` (xyz; ScanObjectNN stores no colours)."""
        import h5py

        source = f"{record.path} row {record.row}"
        if colors:
            raise PointFileError(f"{source}: colours were asked for but ScanObjectNN .h5 files store xyz only")
        try:
            with h5py.File(record.path, "r") as f:
                xyz = np.asarray(f["data"][record.row], dtype=np.float64)[:, :3]
        except (OSError, KeyError) as exc:
            raise PointFileError(f"{source}: cannot read ({exc}); the file may be truncated") from exc
        return _check_points(PointCloud(xyz, source=source))


class PointFolderReader(PointLayoutReader):
    """Any supported files listed in a CSV: ``root/<csv>`` with columns ``path_column`` (relative to
    ``root``), ``label_column`` (a class name), optional ``split_column`` (rows equal to ``split``; None
    keeps all) and ``text_column`` (a per-item description appended to captions).

    Classes: ``class_names`` when given (a row with another label is rejected), else the sorted labels
    of all rows (every split, so labels agree across splits).
    """

    def __init__(self, root: PathLike, split: str = "train", csv_name: str = "labels.csv", path_column: str = "path",
                 label_column: str = "label", split_column: Optional[str] = "split",
                 text_column: Optional[str] = None, class_names: Optional[Sequence[str]] = None,
                 up_axis: str = "z", skip_bad: bool = False):
        super().__init__(skip_bad)
        self.root = _existing_dir(root, "point-folder")
        if up_axis not in UP_AXES:
            raise ConfigError(f"up_axis must be one of {', '.join(UP_AXES)}; got {up_axis!r}")
        self.up_axis = up_axis
        self.csv_path = self.root / csv_name
        if not self.csv_path.is_file():
            raise ConfigError(f"point-folder: no CSV {self.csv_path}; set csv to the labels file in root")
        with open(self.csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            rows = list(reader)
        for param, column in (("path_column", path_column), ("label_column", label_column),
                              ("split_column", split_column), ("text_column", text_column)):
            if column is not None and column not in header:
                raise ConfigError(f"{self.csv_path} has no column '{column}' (parameter {param})"
                                  f"{did_you_mean(column, header)}; its columns: {', '.join(header)}")
        labels = [(r[label_column] or "").strip() for r in rows]
        keys = list(class_names) if class_names is not None else sorted({v for v in labels
                                                                         if v.lower() not in MISSING_VALUES})
        self._set_classes(keys)
        index = {k: i for i, k in enumerate(keys)}
        for n, (row, label) in enumerate(zip(rows, labels), start=1):
            if split_column is not None and (row[split_column] or "").strip() != split:
                continue
            where = f"{self.csv_path} row {n}"
            rel = (row[path_column] or "").strip()
            if label not in index:
                self._reject(where, f"unknown class '{label}'{did_you_mean(label, keys)}")
                continue
            if not rel:
                self._reject(where, "empty path")
                continue
            text = (row[text_column] or "").strip() if text_column is not None else ""
            self._add_file(self.root / rel, index[label], rel, where,
                           description=text if text.lower() not in MISSING_VALUES else None)


def detect_modelnet40_layout(root: PathLike) -> str:
    """``"resampled"`` if ``root`` holds ``modelnet40_shape_names.txt`` (or the modelnet10 one), ``"mesh"``
    if it holds ``<class>/train`` or ``<class>/test`` folders; else :class:`ConfigError`."""
    path = _existing_dir(root, "ModelNet40")
    if any((path / f"{p}_shape_names.txt").is_file() for p in ("modelnet40", "modelnet10")):
        return "resampled"
    if any(d.is_dir() and ((d / "train").is_dir() or (d / "test").is_dir()) for d in path.iterdir()):
        return "mesh"
    raise ConfigError(f"{path} is neither a ModelNet40 mesh folder (<class>/train/*.off) nor "
                      "modelnet40_normal_resampled (modelnet40_shape_names.txt + <class>/*.txt)")
