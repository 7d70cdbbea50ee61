"""The registered ``paired-csv`` dataset: image-caption pairs listed in a CSV beside their image folder."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Dict, List, Optional, Sequence, Tuple, Union

from alignkit.core.images import (DEFAULT_CAPTION_KEY, DEFAULT_IMAGE_KEY, IMAGE_EXTENSIONS, ImageTextDecoder,
                                  check_image_decodes)
from alignkit.core.paired import MISSING_VALUES, PairedDataset, RawValue, build_decoder
from alignkit.core.registry import DATASETS, ConfigError, did_you_mean
from alignkit.core.params import AT_LEAST_ONE, POSITIVE, OneOf
from alignkit.core.text import read_csv, read_text

logger = logging.getLogger(__name__)


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

    The CSV and ``classes.txt`` are decoded strictly (:mod:`alignkit.core.text`): UTF-8, or UTF-16/32 with a byte
    order mark (BOM-less UTF-16 is recognised); a byte that is not text raises a ``ValueError`` naming the file,
    row and byte offset.

    Bad rows (CSV rows counted 1-based after the header): a missing or unsupported image file, an
    empty/NaN caption, a NaN or non-integer label, an empty/NaN group, a cell that is not UTF-8 text raise
    ``ValueError`` naming the image file and CSV row while indexing; an image that exists but cannot be decoded
    raises when the item is read. With ``skip_bad=True`` all of these (undecodable images too: every image is
    decoded in full while indexing, so a truncated JPEG or PNG is caught) are dropped instead, listed in
    ``self.skipped`` and counted in one logged warning.

    Training from WebDataset shards (``data.shards``) needs no folder: ``root`` may stay unset and only the
    decoder's parameters matter (``image_size``, ``channels``, ``mean``, ``std``, ``image_key``,
    ``caption_key``; see :class:`~alignkit.core.images.ImageTextDecoder`). Shards written by
    ``alignkit shard`` and shards in img2dataset's / open_clip's layout (``<key>.jpg``, ``<key>.txt``, optional
    ``<key>.json``) both decode; ``image_key``/``caption_key`` name other fields (``"jpg;png;webp"``: the first
    present is used).
    """

    def __init__(self, root: str, split: str = "train", csv: str = "pairs.csv", image_column: str = "path",
                 text_column: str = "caption", label_column: Optional[str] = "label",
                 split_column: Optional[str] = "split", group_column: Optional[str] = None,
                 hard_negative_columns: Optional[List[str]] = None, image_size: Annotated[int, AT_LEAST_ONE] = 32,
                 channels: Annotated[int, OneOf((1, 3))] = 3, mean: Sequence[float] = (0.5,),
                 std: Sequence[Annotated[float, POSITIVE]] = (0.5,), skip_bad: bool = False,
                image_key: Union[str, List[str]] = DEFAULT_IMAGE_KEY,
                caption_key: Union[str, List[str]] = DEFAULT_CAPTION_KEY):
        super().__init__(params=locals())
        self._decoder = build_decoder(type(self), self.params)  # validates image_size/channels/mean/std now
        self.root = Path(root)
        self.csv_path = self.root / csv
        self._csv_name = Path(csv).name if Path(csv).is_absolute() else str(csv)  # no local path in records
        if isinstance(hard_negative_columns, str):
            hard_negative_columns = [hard_negative_columns]
        header, rows, undecodable = self._read_csv(skip_bad)
        named = {"image_column": image_column, "text_column": text_column, "label_column": label_column,
                 "split_column": split_column, "group_column": group_column}
        named.update({f"hard_negative_columns[{k}]": c for k, c in enumerate(hard_negative_columns or [])})
        for param, column in named.items():
            if column is not None and column not in header:
                raise ConfigError(f"{self.csv_path} has no column '{column}' (parameter {param})"
                                  f"{did_you_mean(column, header)}; its columns: {', '.join(header)}")
        classes_file = self.csv_path.parent / "classes.txt"
        self.class_names = ([line.strip() for line in read_text(classes_file, what="class list").splitlines()
                             if line.strip()] if classes_file.is_file() else None)
        group_ids = ({v: k for k, v in enumerate(sorted({r[group_column] for n, r in enumerate(rows, start=1)
                                                         if n not in undecodable}))}
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
                if n in undecodable:
                    raise ValueError(undecodable[n])
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
                std: Sequence[float] = (0.5,), image_key: Union[str, Sequence[str]] = DEFAULT_IMAGE_KEY,
                caption_key: Union[str, Sequence[str]] = DEFAULT_CAPTION_KEY) -> ImageTextDecoder:
        return ImageTextDecoder(image_size=image_size, channels=channels, mean=tuple(mean), std=tuple(std),
                                image_key=image_key if isinstance(image_key, str) else tuple(image_key),
                                caption_key=caption_key if isinstance(caption_key, str) else tuple(caption_key))

    def _read_csv(self, skip_bad: bool) -> Tuple[List[str], List[Dict[str, str]], Dict[int, str]]:
        """Header, rows and (under ``skip_bad``) the rows holding bytes that are not text, with the complaint."""
        if not self.csv_path.is_file():
            raise FileNotFoundError(f"paired-csv: no CSV file {self.csv_path}; set root to the folder holding it "
                                    "and csv to its file name")
        table = read_csv(self.csv_path, bad_rows="list" if skip_bad else "raise")
        return table.header, table.rows, table.undecodable

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
            check_image_decodes(path)
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
        """``{<image ext>: file bytes, "txt": caption, "cls": label (if any), "json": '{"id", "where", "group"}'}``.

        ``where`` is relative (``"pairs.csv row 12"``), so shards hold no local path. The image field is the
        file's extension when ``image_key`` lists it, else the first ``image_key`` name; the caption field is
        the first ``caption_key`` name: the folder and its shards decode alike.
        """
        item = self._items[i]
        try:
            data = item.path.read_bytes()
        except OSError as exc:
            raise ValueError(f"cannot read image '{item.path}' ({self.csv_path} row {item.row}): {exc}") from exc
        meta: Dict[str, Any] = {"id": item.id, "where": f"{self._csv_name} row {item.row}"}
        if item.group is not None:
            meta["group"] = item.group
        decoder = self._decoder
        assert isinstance(decoder, ImageTextDecoder)
        ext = item.path.suffix.lower().lstrip(".")
        image_field = ext if ext in decoder.image_key else decoder.image_key[0]
        record: Dict[str, RawValue] = {image_field: data, decoder.caption_key[0]: item.caption,
                                       "json": json.dumps(meta)}
        if item.label is not None:
            record["cls"] = item.label
        return record


__all__ = ["PairedImageTextCSV"]
