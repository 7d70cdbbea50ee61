"""The shared data layer: sample collation, the paired-dataset protocol, hard-negative batching, the DataModule.

Every alignkit paired dataset (X-ray/report pairs, echo videos, point clouds, robot episodes)
follows :class:`PairedDataset`:

- ``raw(i)`` returns the *undecoded* record of item ``i`` as a dict of WebDataset fields keyed by
  extension (``{"png": b"...", "txt": "a caption", "cls": 3, "json": "{...}"}``); this is exactly
  what :func:`alignkit.core.shards.write_shards` stores, and what a shard gives back (as bytes);
- the classmethod ``decoder(**params)`` builds a picklable callable ``raw -> sample dict`` that
  needs no files, so training can read shards without the original folder;
- ``decode(raw)`` uses that decoder and ``__getitem__(i) = decode(raw(i))``, so the folder and its
  shards yield identical samples.

A sample is a dict of modalities (``"image"``: float Tensor (C, H, W), ``"text"``: str) plus the
optional ``"label"`` (int), ``"id"`` (str) and ``"group"`` (int: samples sharing a group are
positives of each other). :func:`collate_samples` turns a list of samples into a batch.
"""
from __future__ import annotations

import csv
import inspect
import io
import json
import logging
import math
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Hashable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from alignkit.core.distributed import distributed_position
from alignkit.core.registry import DATASETS, ConfigError, did_you_mean
from alignkit.core.resume import ResumableDataLoader

logger = logging.getLogger(__name__)

RawValue = Union[bytes, str, int, float]
RawRecord = Mapping[str, RawValue]
Decoder = Callable[[RawRecord], Dict[str, Any]]

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "bmp", "tif", "tiff", "webp")
"""Image file types a raw record may hold; the record's field is named by the extension."""

MISSING_VALUES = frozenset({"", "nan", "-nan", "na", "n/a", "<na>", "#n/a", "null", "none"})
"""CSV cells read as missing (compared lower-cased and stripped; the strings pandas writes and reads as NaN)."""


# ----------------------------------------------------------------------------------------- collation


def collate_samples(samples: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
    """Collate a list of sample dicts into one batch dict.

    Per key, over the B samples:

    - tensors / numpy arrays of equal shape ``S`` -> one Tensor ``(B, *S)`` (``torch.stack``);
      differing shapes raise a ``ValueError`` naming the key and both shapes;
    - numbers (bool, int, float, numpy scalars) -> Tensor ``(B,)`` (bool, int64 or float32);
    - dicts -> collated recursively (errors name the dotted key, e.g. ``obs.image``);
    - strings and anything else -> a list of length B;
    - ``None`` in every sample -> ``None``; ``None`` in some samples -> the plain list of values.

    Every sample must have the same keys.
    """
    if not samples:
        raise ValueError("collate_samples got an empty list of samples")
    return _collate_dicts(samples, prefix="")


def _collate_dicts(samples: Sequence[Mapping[str, Any]], prefix: str) -> Dict[str, Any]:
    keys = list(samples[0])
    for j, sample in enumerate(samples[1:], start=1):
        if set(sample) != set(keys):
            missing = sorted(set(keys) - set(sample))
            extra = sorted(set(sample) - set(keys))
            raise ValueError(f"cannot collate{' ' + repr(prefix[:-1]) if prefix else ''}: sample {j} lacks keys "
                             f"{missing} / has extra keys {extra} compared with sample 0 (keys {keys}); "
                             "every sample of a batch must have the same keys")
    return {k: _collate_values([s[k] for s in samples], f"{prefix}{k}") for k in keys}


def _collate_values(values: List[Any], key: str) -> Any:
    n_none = sum(v is None for v in values)
    if n_none == len(values):
        return None
    if n_none:
        return values
    if all(isinstance(v, Mapping) for v in values):
        return _collate_dicts(values, prefix=f"{key}.")
    if any(isinstance(v, (Tensor, np.ndarray)) for v in values):
        tensors = []
        for j, v in enumerate(values):
            if not isinstance(v, (Tensor, np.ndarray)):
                raise ValueError(f"cannot collate key '{key}': sample 0 holds a {type(values[0]).__name__} "
                                 f"but sample {j} holds a {type(v).__name__}")
            tensors.append(torch.as_tensor(v))
        for j, t in enumerate(tensors):
            if t.shape != tensors[0].shape:
                raise ValueError(f"cannot stack key '{key}': sample 0 has shape {tuple(tensors[0].shape)} but "
                                 f"sample {j} has shape {tuple(t.shape)}; resize/pad these to one shape in "
                                 "the dataset's decoder")
        return torch.stack(tensors)
    if all(isinstance(v, (numbers.Real, np.bool_)) for v in values):
        return torch.tensor(values)
    return values


# ----------------------------------------------------------------------------------- the protocol


def raw_text(value: RawValue) -> str:
    """A raw field as text: ``raw(i)`` may hold ``str``/``int``, a record read back from a shard holds bytes."""
    return value.decode("utf-8") if isinstance(value, (bytes, bytearray)) else str(value)


def build_decoder(dataset_cls: type, params: Mapping[str, Any]) -> Decoder:
    """``dataset_cls.decoder(**p)`` with ``p`` the entries of ``params`` that the decoder's signature names.

    ``params`` are the dataset's constructor parameters (the config's ``data.params``); the ones that
    only locate files (``root``, ``csv``, ...) are not decoder parameters and are left out.
    """
    accepted = inspect.signature(dataset_cls.decoder).parameters
    return dataset_cls.decoder(**{k: v for k, v in params.items() if k in accepted})


class PairedDataset(Dataset):
    """Base class of alignkit's paired datasets (map-style ``torch.utils.data.Dataset``).

    Subclasses implement ``__len__``, :meth:`raw` and the classmethod :meth:`decoder`, and pass their
    constructor arguments to ``super().__init__(params=locals())`` as the first statement (they are
    written to shard manifests and select the decoder's parameters). Optional attributes:

    - ``class_names``: ``list[str]``, name of label ``k`` at index ``k`` (zero-shot evaluation);
    - ``hard_negative_keys``: one hashable per item; items sharing a key are hard negatives of each
      other (:class:`GroupedBatchSampler` puts them in one batch); ``None`` if the dataset has none;
    - ``skipped``: ``(where, reason)`` of every item dropped under ``skip_bad=True``.
    """

    class_names: Optional[List[str]] = None
    hard_negative_keys: Optional[List[Hashable]] = None

    def __init__(self, params: Optional[Mapping[str, Any]] = None):
        self.params: Dict[str, Any] = {k: v for k, v in (params or {}).items() if k not in ("self", "__class__")}
        self.skipped: List[Tuple[str, str]] = []
        self._decoder: Optional[Decoder] = None

    def __len__(self) -> int:
        raise NotImplementedError(f"{type(self).__name__} must implement __len__")

    def raw(self, i: int) -> Dict[str, RawValue]:
        """The undecoded record of item ``i``: WebDataset fields keyed by extension (``png``, ``txt``, ...)."""
        raise NotImplementedError(f"{type(self).__name__} must implement raw(i)")

    def key(self, i: int) -> str:
        """A stable key of item ``i`` (unique in the dataset, no ``.``): the ``__key__`` of its shard record."""
        return f"{i:09d}"

    @classmethod
    def decoder(cls) -> Decoder:
        """A picklable callable ``raw record -> sample dict`` that reads no files (keyword params only)."""
        raise NotImplementedError(f"{cls.__name__} must implement the classmethod decoder(**params) to be "
                                  "decoded, e.g. when training from shards")

    def decode(self, raw: RawRecord) -> Dict[str, Any]:
        """``raw`` -> sample, with the decoder built from this dataset's ``params`` (see :func:`build_decoder`)."""
        if self._decoder is None:
            self._decoder = build_decoder(type(self), self.params)
        return self._decoder(raw)

    def __getitem__(self, i: int) -> Dict[str, Any]:
        return self.decode(self.raw(i))


# ------------------------------------------------------------------------------ images and captions


def load_image(data: bytes, image_size: int, channels: int) -> Tensor:
    """Decode image file bytes (PNG, JPEG, ... via Pillow) to a float Tensor (C, S, S) in [0, 1].

    Resized (bilinear) to the square ``S = image_size``. ``channels`` 1 gives grey, 3 gives RGB.
    16-bit and 32-bit grey images (X-rays) are scaled by 1/65535 without a lossy 8-bit detour.
    """
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
            scale = 1.0 if img.mode == "F" else 65535.0
            grey = Image.fromarray(np.asarray(img, dtype=np.float32) / scale)  # mode "F"
            arr = np.asarray(grey.resize((image_size, image_size), Image.BILINEAR), dtype=np.float32)
            arr = np.clip(arr, 0.0, 1.0)[:, :, None].repeat(channels, axis=2)
        else:
            img = img.convert("L" if channels == 1 else "RGB").resize((image_size, image_size), Image.BILINEAR)
            arr = np.asarray(img, dtype=np.float32).reshape(image_size, image_size, channels) / 255.0
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def _image_field(raw: RawRecord) -> str:
    for ext in IMAGE_EXTENSIONS:
        if ext in raw:
            return ext
    raise ValueError(f"record has no image field (one of {', '.join(IMAGE_EXTENSIONS)}); "
                     f"its fields: {', '.join(sorted(raw))}")


@dataclass(frozen=True)
class ImageTextDecoder:
    """Decodes a paired image-text record (see :meth:`PairedImageTextCSV.raw`) into a sample.

    ``image = (load_image(bytes) - mean) / std`` per channel, float Tensor (C, S, S);
    ``text`` from ``txt``; ``label`` from ``cls`` (if present); ``id`` and ``group`` from ``json``.
    """

    image_size: int = 32
    channels: int = 3
    mean: Tuple[float, ...] = (0.5,)
    std: Tuple[float, ...] = (0.5,)

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ConfigError(f"channels must be 1 (grey) or 3 (RGB), got {self.channels}")
        if self.image_size < 1:
            raise ConfigError(f"image_size must be positive, got {self.image_size}")
        for name in ("mean", "std"):
            value = tuple(float(v) for v in getattr(self, name))
            if len(value) not in (1, self.channels):
                raise ConfigError(f"{name} needs 1 or {self.channels} values (channels={self.channels}), got {value}")
            object.__setattr__(self, name, value)
        if min(self.std) <= 0:
            raise ConfigError(f"std must be positive, got {self.std}")

    def image(self, data: bytes) -> Tensor:
        """Image file bytes -> the normalised float Tensor (C, S, S) a tower sees."""
        image = load_image(data, self.image_size, self.channels)
        return (image - torch.tensor(self.mean).view(-1, 1, 1)) / torch.tensor(self.std).view(-1, 1, 1)

    def __call__(self, raw: RawRecord) -> Dict[str, Any]:
        meta = json.loads(raw_text(raw["json"]))
        where = meta["where"] + (f", shard {raw['__url__']}" if "__url__" in raw else "")
        try:
            image = self.image(bytes(raw[_image_field(raw)]))  # type: ignore[arg-type]
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise ValueError(f"cannot decode image '{meta['id']}' ({where}): {exc}") from exc
        sample: Dict[str, Any] = {"image": image, "text": raw_text(raw["txt"]), "id": meta["id"]}
        if "cls" in raw:
            sample["label"] = int(raw_text(raw["cls"]))
        if "group" in meta:
            sample["group"] = int(meta["group"])
        return sample


@dataclass(frozen=True)
class _Item:
    path: Path
    id: str
    caption: str
    label: Optional[int]
    group: Optional[int]
    row: int
    hard_key: Optional[Tuple[str, ...]]


@DATASETS.register("paired-csv")
class PairedImageTextCSV(PairedDataset):
    """Image-caption pairs: a folder of images and a CSV listing them.

    ``root/csv`` has a header row; columns are named by the parameters: ``image_column`` (path
    relative to ``root``), ``text_column`` (caption), ``label_column`` (integer class, or None),
    ``split_column`` (rows whose value equals ``split`` are used; None uses every row),
    ``group_column`` (None, or any value; items sharing it get the same ``"group"`` int: the index of
    the value among the CSV's sorted distinct values), ``hard_negative_columns`` (items sharing the
    values of all these columns share a hard-negative key).

    Sample: ``{"image": float Tensor (channels, image_size, image_size), normalised
    (x - mean) / std; "text": str; "label": int (if label_column); "id": the CSV's image path;
    "group": int (if group_column)}``.

    ``class_names`` come from an optional ``classes.txt`` beside the CSV, one name per line, line k
    (0-based, blank lines ignored) naming label k; labels must then lie in ``[0, len(names))``.
    Without that file ``class_names`` is None.

    Bad rows (CSV rows counted 1-based after the header): a missing or unsupported image file, an
    empty/NaN caption, a NaN or non-integer label, an empty/NaN group raise ``ValueError`` naming the image file and CSV
    row while indexing; an image that exists but cannot be decoded raises when the item is read.
    With ``skip_bad=True`` all of these (corrupt images too, checked with ``PIL.Image.verify`` while
    indexing) are dropped instead, listed in ``self.skipped`` and counted in one logged warning.
    """

    def __init__(self, root: str, split: str = "train", csv: str = "pairs.csv", image_column: str = "path",
                 text_column: str = "caption", label_column: Optional[str] = "label",
                 split_column: Optional[str] = "split", group_column: Optional[str] = None,
                 hard_negative_columns: Optional[List[str]] = None, image_size: int = 32, channels: int = 3,
                 mean: Sequence[float] = (0.5,), std: Sequence[float] = (0.5,), skip_bad: bool = False):
        super().__init__(params=locals())
        self._decoder = build_decoder(type(self), self.params)  # validates image_size/channels/mean/std now
        self.root = Path(root)
        self.csv_path = self.root / csv
        if isinstance(hard_negative_columns, str):
            hard_negative_columns = [hard_negative_columns]
        header, rows = self._read_csv()
        named = {"image_column": image_column, "text_column": text_column, "label_column": label_column,
                 "split_column": split_column, "group_column": group_column}
        named.update({f"hard_negative_columns[{k}]": c for k, c in enumerate(hard_negative_columns or [])})
        for param, column in named.items():
            if column is not None and column not in header:
                raise ConfigError(f"{self.csv_path} has no column '{column}' (parameter {param})"
                                  f"{did_you_mean(column, header)}; its columns: {', '.join(header)}")
        classes_file = self.csv_path.parent / "classes.txt"
        self.class_names = ([line.strip() for line in classes_file.read_text().splitlines() if line.strip()]
                            if classes_file.is_file() else None)
        group_ids = ({v: k for k, v in enumerate(sorted({r[group_column] for r in rows}))}
                     if group_column is not None else {})  # missing values are rejected per row below
        self._items: List[_Item] = []
        in_split = 0
        for n, row in enumerate(rows, start=1):
            if split_column is not None and row[split_column].strip() != split:
                continue
            in_split += 1
            rel = row[image_column].strip()
            where = f"{self.csv_path} row {n}"
            try:
                caption = self._caption(row[text_column])
                label = self._label(row[label_column]) if label_column is not None else None
                if group_column is not None and row[group_column].strip().lower() in MISSING_VALUES:
                    raise ValueError(f"empty or NaN group ({row[group_column]!r})")
                path = self._image_path(rel, check_decodable=skip_bad)
            except ValueError as exc:
                if not skip_bad:
                    raise ValueError(f"{where}, image '{self.root / rel}': {exc}; fix the row, or pass "
                                     "skip_bad=True to drop bad rows") from None
                self.skipped.append((f"{where} ({rel})", str(exc)))
                continue
            self._items.append(_Item(
                path=path, id=rel, caption=caption, label=label, row=n,
                group=group_ids[row[group_column]] if group_column is not None else None,
                hard_key=tuple(row[c] for c in hard_negative_columns) if hard_negative_columns else None))
        if self.skipped:
            logger.warning("paired-csv: skipped %d of %d rows of split '%s' in %s (skip_bad=True); first: %s",
                           len(self.skipped), in_split, split, self.csv_path,
                           "; ".join(f"{w}: {r}" for w, r in self.skipped[:3]))
        self.hard_negative_keys = [it.hard_key for it in self._items] if hard_negative_columns else None

    @classmethod
    def decoder(cls, image_size: int = 32, channels: int = 3, mean: Sequence[float] = (0.5,),
                std: Sequence[float] = (0.5,)) -> ImageTextDecoder:
        return ImageTextDecoder(image_size=image_size, channels=channels, mean=tuple(mean), std=tuple(std))

    def _read_csv(self) -> Tuple[List[str], List[Dict[str, str]]]:
        if not self.csv_path.is_file():
            raise FileNotFoundError(f"paired-csv: no CSV file {self.csv_path}; set root to the folder holding it "
                                    "and csv to its file name")
        with open(self.csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            rows = [{k: (v if v is not None else "") for k, v in r.items()} for r in reader]
        if not header:
            raise ValueError(f"{self.csv_path} is empty; it needs a header row naming its columns")
        return header, rows

    @staticmethod
    def _caption(value: str) -> str:
        if value.strip().lower() in MISSING_VALUES:
            raise ValueError(f"empty or NaN caption ({value!r})")
        return value

    def _label(self, value: str) -> int:
        text = value.strip()
        if text.lower() in MISSING_VALUES:
            raise ValueError(f"NaN or empty label ({value!r})")
        try:
            number = float(text)
        except ValueError:
            raise ValueError(f"label {value!r} is not an integer class index") from None
        if not number.is_integer():
            raise ValueError(f"label {value!r} is not an integer class index")
        if self.class_names is not None and not 0 <= number < len(self.class_names):
            raise ValueError(f"label {int(number)} is outside [0, {len(self.class_names)}) of "
                             f"{self.csv_path.parent / 'classes.txt'}")
        return int(number)

    def _image_path(self, rel: str, check_decodable: bool) -> Path:
        if not rel:
            raise ValueError("empty image path")
        path = self.root / rel
        ext = path.suffix.lower().lstrip(".")
        if ext not in IMAGE_EXTENSIONS:
            raise ValueError(f"unsupported image type '.{ext}' (supported: {', '.join(IMAGE_EXTENSIONS)})")
        if not path.is_file():
            raise ValueError("image file not found")
        if check_decodable:
            try:
                with Image.open(path) as img:
                    img.verify()
            except Exception as exc:  # Pillow raises many types for corrupt files
                raise ValueError(f"corrupt image ({type(exc).__name__}: {exc})") from None
        return path

    def __len__(self) -> int:
        return len(self._items)

    @property
    def ids(self) -> List[str]:
        """The ``"id"`` of every item (its image path in the CSV), without reading any image."""
        return [it.id for it in self._items]

    def key(self, i: int) -> str:
        """``row<CSV row>``: stable for a given CSV and unique across its splits."""
        return f"row{self._items[i].row:07d}"

    def raw(self, i: int) -> Dict[str, RawValue]:
        """``{<image ext>: file bytes, "txt": caption, "cls": label (if any), "json": '{"id", "where", "group"}'}``."""
        item = self._items[i]
        where = f"{self.csv_path} row {item.row}"
        try:
            data = item.path.read_bytes()
        except OSError as exc:
            raise ValueError(f"cannot read image '{item.path}' ({where}): {exc}") from exc
        meta: Dict[str, Any] = {"id": item.id, "where": where}
        if item.group is not None:
            meta["group"] = item.group
        record: Dict[str, RawValue] = {item.path.suffix.lower().lstrip("."): data, "txt": item.caption,
                                       "json": json.dumps(meta)}
        if item.label is not None:
            record["cls"] = item.label
        return record


# ------------------------------------------------------------------------------------------ batching


class GroupedBatchSampler(Sampler[List[int]]):
    """Batches built from blocks of ``items_per_group`` items that share a key (hard negatives).

    Each epoch (order fixed by ``(seed, epoch)``; call :meth:`set_epoch`): the items of every key are
    shuffled and cut into blocks of ``items_per_group``; the items left over (keys with fewer items,
    remainders) are shuffled together and cut into *filler* blocks, which mix keys. The blocks are
    shuffled and concatenated, and the sequence is cut into batches of ``batch_size`` (a multiple of
    ``items_per_group``, so a batch is ``batch_size / items_per_group`` whole blocks). Every item
    appears exactly once per epoch (the last short batch is dropped if ``drop_last``).

    Distributed: every rank computes the same batch list and takes batches ``rank, rank + R, ...``
    (``R = num_replicas``); the list is cut (``drop_last``) or wrapped around (otherwise) to a multiple
    of ``R`` so every rank yields ``len(self)`` batches. ``batch_size`` is per rank.

    Lightning calls ``set_epoch`` on ``loader.batch_sampler.sampler``; :attr:`sampler` is this object
    so the call arrives here (also through :class:`alignkit.core.resume.SkippingBatchSampler`).
    """

    def __init__(self, keys: Sequence[Hashable], batch_size: int, items_per_group: int, drop_last: bool = True,
                 seed: int = 0, shuffle: bool = True, num_replicas: Optional[int] = None,
                 rank: Optional[int] = None):
        if items_per_group < 1 or batch_size < 1 or batch_size % items_per_group:
            raise ConfigError(f"batch_size ({batch_size}) must be a positive multiple of items_per_group "
                              f"({items_per_group})")
        self.batch_size = batch_size
        self.items_per_group = items_per_group
        self.drop_last = drop_last
        self.seed = seed
        self.shuffle = shuffle
        self.num_replicas, self.rank = distributed_position(num_replicas, rank)
        self.epoch = 0
        members: Dict[Hashable, List[int]] = {}
        for i, key in enumerate(keys):
            members.setdefault(key, []).append(i)
        self._members = [np.asarray(m) for m in members.values()]
        self._n = len(keys)

    @property
    def sampler(self) -> "GroupedBatchSampler":
        return self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _order(self, rng: np.random.Generator, items: np.ndarray) -> np.ndarray:
        return rng.permutation(items) if self.shuffle else items

    def _global_batches(self) -> List[List[int]]:
        rng = np.random.default_rng((self.seed, self.epoch))
        g = self.items_per_group
        keyed: List[np.ndarray] = []
        leftover: List[np.ndarray] = []
        for members in self._members:
            order = self._order(rng, members)
            full = len(order) // g * g
            keyed.extend(order[s:s + g] for s in range(0, full, g))
            leftover.append(order[full:])
        rest = self._order(rng, np.concatenate(leftover)) if leftover else np.zeros(0, dtype=np.int64)
        filler = [rest[s:s + g] for s in range(0, len(rest), g)]
        tail = filler.pop() if filler and len(filler[-1]) < g else None  # kept last: only the final batch is short
        blocks = keyed + filler
        if self.shuffle:
            blocks = [blocks[k] for k in rng.permutation(len(blocks))]
        if tail is not None:
            blocks.append(tail)
        flat = np.concatenate(blocks).tolist() if blocks else []
        batches = [flat[s:s + self.batch_size] for s in range(0, len(flat), self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        return batches

    def _per_rank(self, n_batches: int) -> int:
        if self.drop_last:
            return n_batches // self.num_replicas
        return math.ceil(n_batches / self.num_replicas)

    def __iter__(self) -> Iterator[List[int]]:
        batches = self._global_batches()
        total = self._per_rank(len(batches)) * self.num_replicas
        batches = [batches[k % len(batches)] for k in range(total)] if batches else []
        return iter(batches[self.rank::self.num_replicas])

    def __len__(self) -> int:
        n_batches = self._n // self.batch_size if self.drop_last else math.ceil(self._n / self.batch_size)
        return self._per_rank(n_batches)


# -------------------------------------------------------------------------------------- DataModule


class AlignmentDataModule(L.LightningDataModule):
    """Train/val/test loaders of a registered dataset, optionally trained from WebDataset shards.

    Each split is ``DATASETS.build(dataset, split=<split>, **params)``. ``val_split``/``test_split`` may be
    None; a val/test split that is None or has no items gives ``val_dataset``/``test_dataset`` None and
    an empty list from its ``*_dataloader`` hook (Lightning skips the loop; it rejects a None loader).
    Evaluation loaders are sequential, rank-sharded by ``DistributedSampler`` when distributed.
    The train split must have at least ``batch_size`` items.

    Training loader (``drop_last``, collated by :func:`collate_samples`):

    - default: a :class:`~alignkit.core.resume.ResumableDataLoader` over a shuffling
      ``DistributedSampler`` (rank-sharded, order fixed by ``(seed, epoch)``);
    - ``hard_negative_batches``: a :class:`GroupedBatchSampler` over the dataset's
      ``hard_negative_keys``, ``items_per_group`` items per key block;
    - ``shards``: a :class:`~alignkit.core.shards.ShardedIterableDataset` reading the WebDataset brace
      pattern / URL ``shards`` (see :func:`~alignkit.core.shards.write_shards`), decoded by the
      dataset class's ``decoder`` built from ``params`` (no folder needed). One process: one pass over
      all shards per epoch; each DataLoader worker batches its own stream, so up to
      ``num_workers x (batch_size - 1)`` samples (shuffled, so different ones) are left out per epoch.
      Several processes: resampled shards, ``count // world_size`` samples per rank per epoch rounded
      down to whole batches per worker, with ``count`` from the ``manifest.json`` beside the shards
      (required then), so every rank runs the same number of steps. Shuffle buffer ``shard_shuffle``;
      a new order per epoch needs ``persistent_workers`` (the default with workers). Mid-epoch resume
      is exact for the map-style loaders only.

    Samplers are built in the ``*_dataloader`` hooks, after the process group exists, and shard by
    rank themselves: run the Trainer with ``use_distributed_sampler=False``.

    ``batch_transforms`` (callables ``batch -> batch``) run in ``on_after_batch_transfer``, i.e. on the
    accelerator, on *training* batches only (GPU augmentation); validation/test batches pass unchanged.
    """

    def __init__(self, dataset: str, params: Optional[Mapping[str, Any]] = None, batch_size: int = 64,
                 eval_batch_size: Optional[int] = None, num_workers: int = 0, pin_memory: Optional[bool] = None,
                 persistent_workers: Optional[bool] = None, shards: Optional[str] = None, shard_shuffle: int = 1000,
                 hard_negative_batches: bool = False, items_per_group: int = 4, train_split: str = "train",
                 val_split: Optional[str] = "val", test_split: Optional[str] = "test",
                 batch_transforms: Optional[List[Callable[[Dict[str, Any]], Dict[str, Any]]]] = None,
                 seed: int = 0):
        super().__init__()
        self.dataset = dataset
        self.params = dict(params or {})
        if "split" in self.params:
            raise ConfigError("data.params must not set 'split': the DataModule passes train_split, val_split "
                              "and test_split")
        DATASETS.check_params(dataset, self.params, "data.params")
        if hard_negative_batches and shards:
            raise ConfigError("hard_negative_batches needs random access to the dataset; it cannot be combined "
                              "with shards")
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.persistent_workers = num_workers > 0 if persistent_workers is None else persistent_workers
        self.shards = shards
        self.shard_shuffle = shard_shuffle
        self.hard_negative_batches = hard_negative_batches
        self.items_per_group = items_per_group
        self.splits = {"train": train_split, "val": val_split, "test": test_split}
        self.batch_transforms = list(batch_transforms or [])
        self.seed = seed
        self._built: Dict[str, Optional[PairedDataset]] = {}
        self._train_shards: Optional[Dataset] = None

    # datasets ------------------------------------------------------------------------------------
    def _split_dataset(self, role: str) -> Optional[PairedDataset]:
        """The dataset of ``role`` ("train", "val", "test"), built once; None if unset or empty."""
        if role not in self._built:
            split = self.splits[role]
            dataset = DATASETS.build(self.dataset, split=split, where="data.params", **self.params) \
                if split is not None else None
            self._built[role] = dataset if dataset is not None and len(dataset) > 0 else None
        return self._built[role]

    def _sharded_train(self) -> Dataset:
        from alignkit.core.shards import ShardedIterableDataset, read_manifest
        assert self.shards is not None
        manifest = read_manifest(self.shards)
        if manifest is not None and manifest.get("dataset") not in (None, self.dataset):
            raise ConfigError(f"the shards {self.shards} were written from dataset '{manifest['dataset']}' but "
                              f"data.dataset is '{self.dataset}'")
        world, _ = distributed_position()
        epoch_length = None
        if world > 1:
            if manifest is None:
                raise ConfigError(f"training from shards on {world} processes needs the sample count to give "
                                  f"every rank the same number of batches: put the manifest.json written by "
                                  f"write_shards beside {self.shards}")
            per_step = self.batch_size * max(1, self.num_workers)  # every worker yields whole batches
            epoch_length = int(manifest["count"]) // world // per_step * per_step
            if epoch_length == 0:
                raise ConfigError(f"{manifest['count']} samples in {self.shards} are fewer than one batch for each "
                                  f"of {world} ranks x {max(1, self.num_workers)} workers x batch_size "
                                  f"{self.batch_size}")
        return ShardedIterableDataset(self.shards, decode=build_decoder(DATASETS.get(self.dataset), self.params),
                                      shuffle=self.shard_shuffle, seed=self.seed, epoch_length=epoch_length)

    @property
    def train_dataset(self) -> Dataset:
        if self.shards:
            if self._train_shards is None:
                self._train_shards = self._sharded_train()
            return self._train_shards
        dataset = self._split_dataset("train")
        if dataset is None:
            raise ValueError(f"dataset '{self.dataset}' has no items in train split '{self.splits['train']}' "
                             f"(params {self.params})")
        if len(dataset) < self.batch_size:
            raise ValueError(f"train split '{self.splits['train']}' of '{self.dataset}' has {len(dataset)} items, "
                             f"fewer than batch_size={self.batch_size}: no full batch (training drops the last)")
        return dataset

    @property
    def val_dataset(self) -> Optional[PairedDataset]:
        return self._split_dataset("val")

    @property
    def test_dataset(self) -> Optional[PairedDataset]:
        return self._split_dataset("test")

    def setup(self, stage: Optional[str] = None) -> None:
        """Index the splits the stage needs (all for None/predict), so bad data fails before training starts."""
        roles = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(stage or "",
                                                                                      ("train", "val", "test"))
        for role in roles:
            getattr(self, f"{role}_dataset")

    # loaders -------------------------------------------------------------------------------------
    def _loader_kwargs(self) -> Dict[str, Any]:
        return {"num_workers": self.num_workers, "pin_memory": self.pin_memory, "collate_fn": collate_samples,
                "persistent_workers": self.persistent_workers and self.num_workers > 0}

    def train_dataloader(self) -> DataLoader:
        if self.shards:
            self._train_shards = self._sharded_train()  # rebuilt here: the rank is known now
            return DataLoader(self._train_shards, batch_size=self.batch_size, drop_last=True,
                              **self._loader_kwargs())
        dataset = self.train_dataset
        if self.hard_negative_batches:
            keys = getattr(dataset, "hard_negative_keys", None)
            if keys is None:
                raise ConfigError(f"hard_negative_batches=True but dataset '{self.dataset}' gives no "
                                  "hard_negative_keys (for paired-csv set params.hard_negative_columns)")
            batches = GroupedBatchSampler(keys, self.batch_size, self.items_per_group, drop_last=True,
                                          seed=self.seed)
            return ResumableDataLoader(dataset, batch_sampler=batches, **self._loader_kwargs())
        world, rank = distributed_position()
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=self.seed,
                                     drop_last=True)
        return ResumableDataLoader(dataset, batch_size=self.batch_size, sampler=sampler, drop_last=True,
                                   **self._loader_kwargs())

    def _eval_loader(self, dataset: Optional[PairedDataset]) -> Union[DataLoader, List[DataLoader]]:
        if dataset is None:
            return []  # Lightning's "no loader" (it rejects None)
        world, rank = distributed_position()
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False)
        return DataLoader(dataset, batch_size=self.eval_batch_size, sampler=sampler, **self._loader_kwargs())

    def val_dataloader(self) -> Union[DataLoader, List[DataLoader]]:
        return self._eval_loader(self.val_dataset)

    def loader_for(self, dataset: PairedDataset) -> DataLoader:
        """A sequential, single-process-view loader over ``dataset`` for evaluators (run on rank 0)."""
        return DataLoader(dataset, batch_size=self.eval_batch_size, shuffle=False, **self._loader_kwargs())

    def eval_dataloader(self, split: Optional[str]) -> Optional[DataLoader]:
        """:meth:`loader_for` the dataset's ``split`` (e.g. "train", "test"), or None when it has no items."""
        if split is None:
            return None
        role = next((r for r, s in self.splits.items() if s == split), None)
        if role is not None and not (role == "train" and self.shards):
            dataset = self._split_dataset(role)
        else:
            key = f"split:{split}"
            if key not in self._built:
                built = DATASETS.build(self.dataset, split=split, where="data.params", **self.params)
                self._built[key] = built if len(built) > 0 else None
            dataset = self._built[key]
        return self.loader_for(dataset) if dataset is not None else None

    def test_dataloader(self) -> Union[DataLoader, List[DataLoader]]:
        return self._eval_loader(self.test_dataset)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Apply ``batch_transforms`` in order to training batches (already on the accelerator)."""
        if self.trainer is not None and self.trainer.training:
            for transform in self.batch_transforms:
                batch = transform(batch)
        return batch
