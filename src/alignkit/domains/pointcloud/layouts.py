"""Dataset layouts: readers that index a dataset folder into :class:`PointRecord` s and load their points.

:class:`ModelNet40MeshReader` (``<class>/{train,test}/<name>.off``, ModelNet40 / ModelNet10 as distributed),
:class:`ModelNet40ResampledReader` (``modelnet40_normal_resampled``, the layout ULIP's and PointNet++'s ModelNet
loaders read), :class:`ShapeNet55Reader` (Point-BERT's ``shapenet_pc`` + ``ShapeNet-55/{train,test}.txt``),
:class:`ScanObjectNNReader` (``.h5`` with ``data``, ``label``) and :class:`PointFolderReader` (any files listed
in a labels CSV); :func:`detect_modelnet40_layout` tells the two ModelNet40 layouts apart.

Bad entries raise :class:`~alignkit.domains.pointcloud.clouds.PointFileError` naming the file and line, or
are listed in ``skipped`` with ``skip_bad=True``. Class lists, split lists, ``taxonomy.json`` and label CSVs are
decoded strictly (:mod:`alignkit.core.text`): a file that is not text raises a ``ValueError`` naming it and the
byte offset (a CSV row that is not UTF-8 is a bad entry). A reader's ``load`` gives a record's points
(:func:`~alignkit.domains.pointcloud.clouds.load_point_cloud`).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from alignkit.core.paired import MISSING_VALUES
from alignkit.core.paths import data_path as core_data_path
from alignkit.core.registry import ConfigError, did_you_mean
from alignkit.core.text import read_csv, read_text
from alignkit.domains.pointcloud.clouds import (UP_AXES, PointCloud, PointFileError, check_file, check_points,
                                                check_suffix, load_point_cloud)
from alignkit.domains.pointcloud.prompts import readable_class_name

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]

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
            check_file(path)
            check_suffix(path)
        except PointFileError as exc:
            self._reject(where, str(exc))
            return
        self.records.append(PointRecord(path, label, item_id, where, description=description))

    def _read_lines(self, path: Path, what: str = "split file") -> List[Tuple[int, str]]:
        """Non-blank stripped lines of a split file with their 1-based numbers ([] if the file is absent)."""
        if not path.is_file():
            logger.warning("%s not found: split has no items", path)
            return []
        lines = read_text(path, what=what).splitlines()
        return [(n, line.strip()) for n, line in enumerate(lines, 1) if line.strip()]

    def load(self, record: PointRecord, surface_points: int = 8192, seed: int = 0, colors: bool = False) -> PointCloud:
        """The record's points (:func:`load_point_cloud`)."""
        return load_point_cloud(record.path, surface_points=surface_points, seed=seed, colors=colors)


def data_path(value: PathLike, root: PathLike, param: str) -> Path:
    """:func:`alignkit.core.paths.data_path` with a missing file a :class:`ConfigError` (a dataset parameter)."""
    return core_data_path(value, root, param, error=ConfigError)


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
        keys = [line for _, line in self._read_lines(names_file, what="class list")]
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
                entries = json.loads(read_text(path, what="ShapeNet taxonomy"))
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
        return check_points(PointCloud(xyz, source=source))


class PointFolderReader(PointLayoutReader):
    """Any supported files listed in a CSV: ``csv_name`` (relative to ``root`` unless absolute) with columns ``path_column`` (relative to
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
        self.csv_path = data_path(csv_name, self.root, "point-folder csv")
        table = read_csv(self.csv_path, bad_rows="list" if skip_bad else "raise")
        header, rows = table.header, table.rows
        for param, column in (("path_column", path_column), ("label_column", label_column),
                              ("split_column", split_column), ("text_column", text_column)):
            if column is not None and column not in header:
                raise ConfigError(f"{self.csv_path} has no column '{column}' (parameter {param})"
                                  f"{did_you_mean(column, header)}; its columns: {', '.join(header)}")
        labels = [(r[label_column] or "").strip() for r in rows]
        keys = list(class_names) if class_names is not None else sorted(
            {v for n, v in enumerate(labels, start=1)
             if v.lower() not in MISSING_VALUES and n not in table.undecodable})
        self._set_classes(keys)
        index = {k: i for i, k in enumerate(keys)}
        for n, (row, label) in enumerate(zip(rows, labels), start=1):
            if split_column is not None and (row[split_column] or "").strip() != split:
                continue
            where = f"{self.csv_path} row {n}"
            rel = (row[path_column] or "").strip()
            if n in table.undecodable:
                self._reject(where, table.undecodable[n])
                continue
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
