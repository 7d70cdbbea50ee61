"""Point-cloud datasets (``DATASETS``: ``modelnet40``, ``shapenet55``, ``scanobjectnn``, ``point-folder``) and
their decoder.

Every dataset wraps a layout reader of :mod:`alignkit.domains.pointcloud.layouts` in the
:class:`~alignkit.core.paired.PairedDataset` protocol:

- ``raw(i)``: ``{"npy": the prepared cloud (num_points, 3+F) float32 as .npy bytes, "cls": label,
  "json": {id, names, description, where, up, features}, "<kind><vv>.png": rendered views}`` (views only with
  ``with_images``). The cloud comes from :func:`~alignkit.domains.pointcloud.preprocess.prepare_points` (meshes
  sampled on their surface, FPS to ``num_points``, unit sphere), kept in a
  :class:`~alignkit.domains.pointcloud.preprocess.SampledCloudCache` so later epochs read one small ``.npy``;
  views are rendered once (:mod:`~alignkit.domains.pointcloud.render`) and kept as PNGs in the cache folder
  (or under ``render_dir``), never inside the dataset.
- :class:`PointCloudDecoder` turns a record (from the folder or a shard) into the sample
  ``{"points": float Tensor (num_points, 3+F), "label": int, "text": str, "id": str, "image": float Tensor
  (3, S, S) (with_images)}``. In training (``augment``, default: split ``"train"``) it augments the points
  (:func:`~alignkit.domains.pointcloud.augment.point_augmentation`: scale, rotation about the up axis, jitter,
  dropout), draws a random caption template and class synonym, and a random rendered view; in evaluation it uses
  the first template and name and view 0. With ``point_augment="device"`` the decoder leaves the points as they
  are and adds ``"up_axis"`` (0/1/2); the training batch is then augmented on the accelerator by
  :class:`~alignkit.domains.pointcloud.augment.PointCloudAugment` (``data.augment: [{name: point-cloud}]``, same
  distributions), so DataLoader workers only decode.

Features ``F``: ``none`` (xyz), ``normals``, ``colors`` or ``normals+colors`` (3 columns each, after xyz).
Bad files or listings raise errors naming the file (and line); with ``skip_bad=True`` every item is
prepared (and rendered) at construction and failures are dropped and listed in ``skipped``.
"""
from __future__ import annotations

import inspect
import io
import json
import logging
import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from monai.transforms import Compose, Randomizable
from torch.utils.data import get_worker_info

from alignkit.core.images import ImageTextDecoder
from alignkit.core.paired import PairedDataset, RawRecord, RawValue, build_decoder, raw_text
from alignkit.core.params import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, OneOf, Range, check_choice
from alignkit.core.registry import DATASETS, ConfigError, did_you_mean
from alignkit.domains.pointcloud.augment import UP_AXIS_KEY, point_augmentation
from alignkit.domains.pointcloud.clouds import UP_AXES, PointFileError, load_geometry
from alignkit.domains.pointcloud.layouts import (ModelNet40MeshReader, ModelNet40ResampledReader, PointFolderReader,
                                                 PointLayoutReader, PointRecord, ScanObjectNNReader, ShapeNet55Reader,
                                                 detect_modelnet40_layout)
from alignkit.domains.pointcloud.preprocess import (FEATURES, SAMPLING_METHODS, SampledCloudCache, check_features,
                                                    default_cache_dir, prepare_points)
from alignkit.domains.pointcloud.prompts import Templates, point_caption, resolve_templates
from alignkit.domains.pointcloud.render import VIEW_KINDS, default_views_dir, render_geometry, view_file, write_views

logger = logging.getLogger(__name__)

POINT_AUGMENT_PLACES = ("worker", "device")
"""Where training points are augmented: in the decoder (DataLoader workers) or on the training batch's device."""


# =========================================================================================== decoder


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


class PointCloudDecoder(Randomizable):
    """Raw point record (:meth:`PointCloudDataset.raw`) -> sample; picklable, reads no files.

    ``augment`` None means "augment iff ``split == "train"``"; the same flag makes the caption template,
    the class synonym, the view kind and the view random (else: first template, first name, first kind,
    view 0). Random draws come from MONAI ``self.R`` seeded with ``seed``; inside a DataLoader worker the
    decoder reseeds itself once from the worker's seed, so workers draw different augmentations.

    ``point_augment``: ``"worker"`` (default) augments the points here, ``"device"`` leaves them to
    :class:`~alignkit.domains.pointcloud.augment.PointCloudAugment` on the training batch and adds the sample
    field ``"up_axis"`` (index 0/1/2 of the record's up axis) when training.
    """

    def __init__(self, split: str = "train", augment: Optional[bool] = None,
                 scale: Optional[Sequence[float]] = (0.8, 1.25), rotate: bool = True, jitter: float = 0.01,
                 dropout: float = 0.0, caption_templates: Union[str, Sequence[str]] = "shapenet_64",
                 image_size: int = 64, image_kinds: Sequence[str] = ("shaded",),
                 image_mean: Sequence[float] = (0.5,), image_std: Sequence[float] = (0.5,), seed: int = 0,
                 point_augment: str = "worker"):
        self.training = bool(augment) if augment is not None else split == "train"
        check_choice(point_augment, POINT_AUGMENT_PLACES, "point_augment")
        self.point_augment = point_augment
        self.scale = tuple(scale) if scale is not None else None
        if self.scale is not None and len(self.scale) != 2:
            raise ConfigError(f"scale must be [low, high] or null, got {scale}")
        self.rotate, self.jitter, self.dropout = rotate, jitter, dropout
        self.templates = resolve_templates(caption_templates)
        self.image_kinds = tuple(image_kinds)
        for kind in self.image_kinds:
            check_choice(kind, VIEW_KINDS, "image_kinds entry")
        self.images = ImageTextDecoder(image_size=image_size, channels=3, mean=tuple(image_mean), std=tuple(image_std))
        self.seed = seed
        self._augmenters: Dict[Tuple[str, bool], Compose] = {}
        self._seeded_for: Optional[Tuple[int, Optional[int]]] = None
        self.set_random_state(seed)

    def _reseed_in_worker(self) -> None:
        info = get_worker_info()
        token = (os.getpid(), None if info is None else info.seed)
        if token != self._seeded_for:
            if self._seeded_for is not None or info is not None:
                self.set_random_state((info.seed if info is not None else self.seed) % 2 ** 32)
                self._augmenters.clear()
            self._seeded_for = token

    def _augmenter(self, up: str, normals: bool) -> Compose:
        if (up, normals) not in self._augmenters:
            augmenter = point_augmentation(up, normals, self.scale, self.rotate, self.jitter, self.dropout)
            augmenter.set_random_state(int(self.R.randint(0, 2 ** 31)))
            self._augmenters[(up, normals)] = augmenter
        return self._augmenters[(up, normals)]

    def _pick(self, count: int) -> int:
        return int(self.R.randint(count)) if self.training else 0

    def __call__(self, raw: RawRecord) -> Dict[str, Any]:
        self._reseed_in_worker()
        meta = json.loads(raw_text(raw["json"]))
        where = meta["where"] + (f", shard {raw['__url__']}" if "__url__" in raw else "")
        try:
            points = np.load(io.BytesIO(bytes(raw["npy"])), allow_pickle=False)  # type: ignore[arg-type]
        except (ValueError, OSError) as exc:
            raise ValueError(f"cannot decode the points of '{meta['id']}' ({where}): {exc}") from exc
        if self.training and self.point_augment == "worker":
            normals = "normals" in check_features(meta["features"])
            points = self._augmenter(meta["up"], normals)(points)
        names = meta["names"]
        text = point_caption(self.templates[self._pick(len(self.templates))], names[self._pick(len(names))],
                             meta.get("description"))
        sample: Dict[str, Any] = {"points": torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32)),
                                  "label": int(raw_text(raw["cls"])), "text": text, "id": meta["id"]}
        if self.training and self.point_augment == "device":
            sample[UP_AXIS_KEY] = "xyz".index(meta["up"])
        kinds = [k for k in self.image_kinds if f"{k}00.png" in raw]
        if kinds:
            kind = kinds[self._pick(len(kinds))]
            views = sorted(k for k in raw if k.startswith(kind) and k.endswith(".png"))
            sample["image"] = self.images.image(bytes(raw[views[self._pick(len(views))]]))  # type: ignore[arg-type]
        elif self.image_kinds and any(k.endswith(".png") for k in raw):
            raise ValueError(f"record '{meta['id']}' ({where}) has no views of kinds {list(self.image_kinds)}")
        return sample


# ========================================================================================== datasets


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


class PointCloudDataset(PairedDataset):
    """Base of the point-cloud datasets: a layout reader's records as prepared, cached clouds (+ views).

    Subclasses (decorated with :func:`with_point_params`) pass their own parameters and the shared ones
    (:func:`point_dataset_params`, resolved) to ``super().__init__(params=...)``, build their reader and call
    :meth:`_index`. The shared parameters (keyword-only, in every subclass):

    - ``num_points`` (N), ``surface_points`` (samples drawn on a mesh before FPS), ``features``,
      ``sampling`` (``fps`` | ``random``), ``seed``: :func:`~alignkit.domains.pointcloud.preprocess.prepare_points`;
    - ``augment``, ``scale`` ([low, high] or null), ``rotate``, ``jitter`` (sigma), ``dropout`` (max ratio),
      ``point_augment`` (``worker`` or ``device``: where the points are augmented),
      ``caption_templates`` (a set of :mod:`~alignkit.domains.pointcloud.prompts` or a list),
      ``image_size``, ``image_kinds``, ``image_mean``, ``image_std``: the :class:`PointCloudDecoder`'s;
    - ``up_axis``: the shapes' up axis (None: the layout's; rotation and rendering use it);
    - ``with_images``, ``num_views``, ``render_dir``: render ``num_views`` views of ``image_size`` px per item
      (shaded and depth) once, into ``render_dir/<id>_views<size>/``, or by default into the cache
      (:func:`~alignkit.domains.pointcloud.render.default_views_dir` under ``cache_dir``; ``.h5`` rows in
      ``<row>/`` below it). Nothing is ever written inside ``root``: a read-only dataset works;
    - ``cache``, ``cache_dir``: keep prepared clouds on disk (default dir
      :func:`~alignkit.domains.pointcloud.preprocess.default_cache_dir`, ``~/.cache/alignkit/pointcloud`` or
      ``$ALIGNKIT_CACHE/pointcloud``; the demos and runs pass a folder under the run);
    - ``root`` and ``csv`` (point-folder): a relative ``csv`` is resolved against ``root``;
    - ``classes``: keep only these classes (layout keys or readable names), labelled in this order;
    - ``skip_bad``: drop and list (``skipped``) bad entries instead of raising.
    """

    def _index(self, reader: PointLayoutReader) -> None:
        p = self.params
        check_features(p["features"])
        self.reader = reader
        self.up_axis: str = p["up_axis"] if p["up_axis"] is not None else reader.up_axis
        check_choice(self.up_axis, UP_AXES, "up_axis")
        if p["with_images"] and p["num_views"] < 1:
            raise ConfigError(f"num_views must be positive with with_images, got {p['num_views']}")
        self._decoder = build_decoder(type(self), p)  # validates the decoder parameters now
        self._cache = SampledCloudCache(p["cache_dir"] or default_cache_dir()) if p["cache"] else None
        self.skipped = list(reader.skipped)
        keep, self.synonyms = self._select_classes(reader, p["classes"])
        self.class_names: List[str] = [names[0] for names in self.synonyms]
        self.records: List[PointRecord] = [replace(r, label=keep[r.label]) for r in reader.records if r.label in keep]
        if p["skip_bad"]:
            self._drop_unreadable()
        if not self.records:
            logger.warning("%s: split '%s' has no items", type(self).__name__, p["split"])

    @staticmethod
    def _select_classes(reader: PointLayoutReader, classes: Optional[Sequence[str]]
                        ) -> Tuple[Dict[int, int], List[Tuple[str, ...]]]:
        """(old label -> new label, synonyms per new label) for the ``classes`` filter (None keeps all)."""
        if classes is None:
            return {k: k for k in range(len(reader.class_keys))}, list(reader.synonyms)
        lookup = {key: k for k, key in enumerate(reader.class_keys)}
        lookup.update({name: k for k, name in enumerate(reader.class_names)})
        keep: Dict[int, int] = {}
        for new, name in enumerate(classes):
            if name not in lookup:
                raise ConfigError(f"classes: '{name}' is not a class of this dataset{did_you_mean(name, lookup)}; "
                                  f"classes: {', '.join(reader.class_names)}")
            keep[lookup[name]] = new
        return keep, [reader.synonyms[old] for old in keep]

    def _drop_unreadable(self) -> None:
        """Prepare (and render) every item now; drop and list the ones that fail (``skip_bad``)."""
        good = []
        for record in self.records:
            try:
                self.points(record)
                if self.params["with_images"]:
                    self.views(record)
            except PointFileError as exc:
                self.skipped.append((record.where, str(exc)))
                continue
            good.append(record)
        if self.skipped:
            logger.warning("%s: skipped %d entries (skip_bad=True); first: %s", type(self).__name__,
                           len(self.skipped), "; ".join(f"{w}: {r}" for w, r in self.skipped[:3]))
        self.records = good

    def __len__(self) -> int:
        return len(self.records)

    def points(self, record: PointRecord) -> np.ndarray:
        """The prepared cloud (num_points, 3+F) float32 of ``record`` (from the cache when present)."""
        p = self.params
        sampling = {"num_points": p["num_points"], "surface_points": p["surface_points"], "features": p["features"],
                    "sampling": p["sampling"], "seed": p["seed"]}

        def compute() -> np.ndarray:
            cloud = self.reader.load(record, p["surface_points"], p["seed"], colors="colors" in p["features"])
            return prepare_points(cloud, p["num_points"], p["features"], p["sampling"], p["seed"])

        if self._cache is None:
            return compute()
        return self._cache.fetch(record.path, sampling, compute, row=record.row)

    def views_dir(self, record: PointRecord) -> Path:
        """Folder of the record's rendered views (see the class docstring)."""
        size = self.params["image_size"]
        if self.params["render_dir"] is not None:
            return Path(self.params["render_dir"]) / f"{_safe_name(record.id)}_views{size}"
        folder = default_views_dir(record.path, size, self.params["cache_dir"])
        return folder / str(record.row) if record.row is not None else folder

    def views(self, record: PointRecord) -> Dict[str, Path]:
        """``{"<kind><vv>.png": path}`` of the record's views, rendering them first if absent."""
        p = self.params
        folder = self.views_dir(record)
        files = {f"{kind}{v:02d}.png": view_file(folder, kind, v) for kind in p["image_kinds"]
                 for v in range(p["num_views"])}
        if not ((folder / "views.json").is_file() and all(f.is_file() for f in files.values())):
            geometry = self.reader.load(record) if record.row is not None else load_geometry(record.path)
            views = render_geometry(geometry, p["num_views"], p["image_size"], self.up_axis)
            write_views(views, folder)
        return files

    def raw(self, i: int) -> Dict[str, RawValue]:
        """``{"npy": points .npy bytes, "cls": label, "json": meta, "<kind><vv>.png": view bytes...}``."""
        record = self.records[i]
        meta = {"id": record.id, "names": list(self.synonyms[record.label]), "description": record.description,
                "where": record.where, "up": self.up_axis, "features": self.params["features"]}
        out: Dict[str, RawValue] = {"npy": _npy_bytes(self.points(record)), "cls": record.label,
                                    "json": json.dumps(meta)}
        if self.params["with_images"]:
            out.update({field: path.read_bytes() for field, path in self.views(record).items()})
        return out

    @classmethod
    def decoder(cls, split: str = "train", augment: Optional[bool] = None,
                scale: Optional[Sequence[float]] = (0.8, 1.25), rotate: bool = True, jitter: float = 0.01,
                dropout: float = 0.0, caption_templates: Union[str, Sequence[str]] = "shapenet_64",
                image_size: int = 64, image_kinds: Sequence[str] = ("shaded",), image_mean: Sequence[float] = (0.5,),
                image_std: Sequence[float] = (0.5,), seed: int = 0, point_augment: str = "worker") -> PointCloudDecoder:
        return PointCloudDecoder(split=split, augment=augment, scale=scale, rotate=rotate, jitter=jitter,
                                 dropout=dropout, caption_templates=caption_templates, image_size=image_size,
                                 image_kinds=image_kinds, image_mean=image_mean, image_std=image_std, seed=seed,
                                 point_augment=point_augment)


_Floats = Sequence[float]
_Count = Annotated[int, AT_LEAST_ONE]
_Positive = Annotated[float, POSITIVE]


def point_dataset_params(num_points: _Count = 1024, surface_points: _Count = 8192,
                         features: Annotated[str, OneOf(tuple(FEATURES))] = "none",
                         sampling: Annotated[str, OneOf(SAMPLING_METHODS)] = "fps", augment: Optional[bool] = None,
                         scale: Optional[Tuple[_Positive, _Positive]] = (0.8, 1.25), rotate: bool = True,
                         jitter: Annotated[float, NON_NEGATIVE] = 0.01,
                         dropout: Annotated[float, Range(ge=0, lt=1)] = 0.0,
                         point_augment: Annotated[str, OneOf(POINT_AUGMENT_PLACES)] = "worker",
                         up_axis: Optional[Annotated[str, OneOf(UP_AXES)]] = None,
                         caption_templates: Templates = "shapenet_64", with_images: bool = False,
                         num_views: _Count = 12, image_size: _Count = 64,
                         image_kinds: Sequence[Annotated[str, OneOf(VIEW_KINDS)]] = ("shaded",),
                         image_mean: _Floats = (0.5,), image_std: Sequence[_Positive] = (0.5,),
                         render_dir: Optional[str] = None, cache: bool = True, cache_dir: Optional[str] = None,
                         classes: Optional[Sequence[str]] = None, skip_bad: bool = False,
                         seed: int = 0) -> Dict[str, Any]:
    """The parameters every point-cloud dataset shares (meaning: :class:`PointCloudDataset`), defaults filled."""
    return dict(locals())


_SHARED = inspect.signature(point_dataset_params).parameters


def with_point_params(cls: type) -> type:
    """Class decorator of a :class:`PointCloudDataset` whose ``__init__(self, <own params>, **shared)`` takes the
    shared parameters as keywords: its signature becomes ``(own..., *, <point_dataset_params' parameters>)``, and
    its annotations gain theirs, so the registry's parameter check, did-you-mean and value check
    (:func:`~alignkit.core.params.check_call`) see every valid key (no ``**kwargs`` hole)."""
    init = cls.__init__
    own = [q for q in inspect.signature(init).parameters.values() if q.kind is not q.VAR_KEYWORD]
    shared = [q.replace(kind=inspect.Parameter.KEYWORD_ONLY) for q in _SHARED.values()]
    init.__signature__ = inspect.Signature(own + shared)
    init.__annotations__ = {**init.__annotations__, **{k: v for k, v in point_dataset_params.__annotations__.items()
                                                       if k != "return"}}
    return cls


def _shared_params(dataset: str, shared: Dict[str, Any]) -> Dict[str, Any]:
    unknown = [k for k in shared if k not in _SHARED]
    if unknown:
        raise ConfigError(f"unknown parameter '{unknown[0]}' for dataset {dataset}{did_you_mean(unknown[0], _SHARED)}")
    return point_dataset_params(**shared)


MODELNET40_LAYOUTS = ("auto", "mesh", "resampled")


@DATASETS.register("modelnet40")
@with_point_params
class ModelNet40Dataset(PointCloudDataset):
    """ModelNet40 (or ModelNet10): the mesh layout ``root/<class>/{train,test}/*.off`` (z up) or
    ``modelnet40_normal_resampled`` (y up), chosen by ``layout`` (``auto`` detects it). Shared parameters:
    :class:`PointCloudDataset`."""

    def __init__(self, root: str, split: str = "train", layout: Annotated[str, OneOf(MODELNET40_LAYOUTS)] = "auto",
                 **shared: Any):
        super().__init__(params={"root": root, "split": split, "layout": layout,
                                 **_shared_params(type(self).__name__, shared)})
        check_choice(layout, MODELNET40_LAYOUTS, "modelnet40 layout")
        self.layout = detect_modelnet40_layout(root) if layout == "auto" else layout
        reader_cls = ModelNet40MeshReader if self.layout == "mesh" else ModelNet40ResampledReader
        self._index(reader_cls(root, split, skip_bad=self.params["skip_bad"]))


@DATASETS.register("shapenet55")
@with_point_params
class ShapeNet55Dataset(PointCloudDataset):
    """ShapeNet-55 in Point-BERT's layout (:class:`~alignkit.domains.pointcloud.layouts.ShapeNet55Reader`; y up);
    captions use the synset's names (ShapeNet ``taxonomy.json`` synonyms when present). Shared parameters:
    :class:`PointCloudDataset`."""

    def __init__(self, root: str, split: str = "train", **shared: Any):
        super().__init__(params={"root": root, "split": split, **_shared_params(type(self).__name__, shared)})
        self._index(ShapeNet55Reader(root, split, skip_bad=self.params["skip_bad"]))


@DATASETS.register("scanobjectnn")
@with_point_params
class ScanObjectNNDataset(PointCloudDataset):
    """ScanObjectNN ``.h5`` files (:class:`~alignkit.domains.pointcloud.layouts.ScanObjectNNReader`: ``variant``,
    ``suffix``; y up). Shared parameters: :class:`PointCloudDataset`."""

    def __init__(self, root: str, split: str = "train", variant: str = "main_split",
                 suffix: str = "objectdataset_augmentedrot_scale75", **shared: Any):
        super().__init__(params={"root": root, "split": split, "variant": variant, "suffix": suffix,
                                 **_shared_params(type(self).__name__, shared)})
        self._index(ScanObjectNNReader(root, split, variant=variant, suffix=suffix,
                                       skip_bad=self.params["skip_bad"]))


@DATASETS.register("point-folder")
@with_point_params
class PointFolderDataset(PointCloudDataset):
    """Any mesh/point files listed in a labels CSV (:class:`~alignkit.domains.pointcloud.layouts.PointFolderReader`:
    ``csv``, ``path_column``, ``label_column`` (class names), ``split_column``, ``text_column`` (per-item
    caption metadata)); ``up_axis`` defaults to z. Shared parameters: :class:`PointCloudDataset`."""

    def __init__(self, root: str, split: str = "train", csv: str = "labels.csv", path_column: str = "path",
                 label_column: str = "label", split_column: Optional[str] = "split", text_column: Optional[str] = None,
                 **shared: Any):
        super().__init__(params={"root": root, "split": split, "csv": csv, "path_column": path_column,
                                 "label_column": label_column, "split_column": split_column,
                                 "text_column": text_column, **_shared_params(type(self).__name__, shared)})
        p = self.params
        self._index(PointFolderReader(root, split, csv_name=csv, path_column=path_column, label_column=label_column,
                                      split_column=split_column, text_column=text_column,
                                      up_axis=p["up_axis"] or "z", skip_bad=p["skip_bad"]))
