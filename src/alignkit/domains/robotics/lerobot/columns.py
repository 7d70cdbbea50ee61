"""The parquet columns of a LeRobot v3.0 dataset's frames: their arrow types, the Hugging Face ``datasets``
schema metadata, and the conversion of columns to and from numpy (images stored in parquet included).

Source: huggingface/lerobot v0.4.4 ``src/lerobot/datasets/utils.py`` ``get_hf_features_from_features``, which
maps each non-video feature of ``meta/info.json`` to a ``datasets`` feature, and lerobot's loader casts every
data file to those features (a column of another type fails to load):

    dtype "image"          -> datasets.Image()        arrow struct<bytes: binary, path: string> (PNG bytes)
    shape (1,)             -> datasets.Value(dtype)   arrow scalar column
    shape (n,)             -> Sequence(length=n)      arrow fixed_size_list<dtype>[n]
    shape of 2 to 5 sides  -> datasets.Array2D..5D    (not written here; read as flat rows)

The data files carry the ``datasets`` schema in their parquet metadata under ``b"huggingface"``, as
``Dataset.to_parquet`` writes it (:func:`huggingface_schema_metadata`).
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np
import pyarrow as pa

IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
"""The arrow type of a ``datasets.Image()`` column."""


def is_scalar_feature(spec: Mapping[str, Any]) -> bool:
    """True for a feature stored as a scalar column: shape ``(1,)`` (lerobot's ``datasets.Value``)."""
    return list(spec.get("shape") or [1]) == [1]


def arrow_type(spec: Mapping[str, Any]) -> pa.DataType:
    """The arrow type of a non-video feature's column (see the module docstring)."""
    if spec["dtype"] == "image":
        return IMAGE_STRUCT
    value = pa.from_numpy_dtype(np.dtype(spec["dtype"]))
    if is_scalar_feature(spec):
        return value
    return pa.list_(value, int(np.prod(spec["shape"])))


def _hf_feature(spec: Mapping[str, Any]) -> Dict[str, Any]:
    if spec["dtype"] == "image":
        return {"_type": "Image"}
    value = {"dtype": spec["dtype"], "_type": "Value"}
    if is_scalar_feature(spec):
        return value
    return {"feature": value, "length": int(np.prod(spec["shape"])), "_type": "List"}


def huggingface_schema_metadata(features: Mapping[str, Mapping[str, Any]]) -> Dict[bytes, bytes]:
    """The parquet schema metadata ``{b"huggingface": {"info": {"features": ...}}}`` of a data file holding the
    non-video ``features`` (what ``datasets`` writes, so ``datasets.Dataset.from_parquet`` needs no guessing)."""
    hf = {k: _hf_feature(v) for k, v in features.items() if v["dtype"] != "video"}
    return {b"huggingface": json.dumps({"info": {"features": hf}}).encode()}


def to_column(values: np.ndarray, spec: Mapping[str, Any]) -> pa.Array:
    """``(N,)`` or ``(N, ...)`` values of a numeric feature as its column: scalars for shape ``(1,)``, otherwise a
    fixed-size list of ``prod(shape)`` values per row."""
    kind = arrow_type(spec)
    values = np.asarray(values)
    if pa.types.is_fixed_size_list(kind):
        flat = pa.array(values.reshape(-1), type=kind.value_type)
        return pa.FixedSizeListArray.from_arrays(flat, type=kind)
    return pa.array(values.reshape(len(values)), type=kind)


def column_values(column: pa.ChunkedArray, shape: Sequence[int], name: str) -> np.ndarray:
    """A numeric parquet column as numpy: ``(N,)`` for scalars, ``(N, D)`` for list columns of
    ``D = prod(shape)`` values.

    Raises ValueError naming the column on nulls or rows of another length.
    """
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if array.null_count:
        raise ValueError(f"column '{name}' has {array.null_count} null rows")
    width = int(np.prod(shape)) if shape else 1
    if not (pa.types.is_list(array.type) or pa.types.is_large_list(array.type)
            or pa.types.is_fixed_size_list(array.type)):
        if width != 1:
            raise ValueError(f"column '{name}' holds scalars but its feature has shape {list(shape)}")
        return array.to_numpy(zero_copy_only=False)
    lengths = np.full(len(array), array.type.list_size) if pa.types.is_fixed_size_list(array.type) \
        else array.value_lengths().to_numpy(zero_copy_only=False)
    if len(lengths) and (lengths.min() != width or lengths.max() != width):
        bad = int(np.flatnonzero(lengths != width)[0])
        raise ValueError(f"column '{name}' has a row of length {int(lengths[bad])} (row {bad}) but its feature has "
                         f"shape {list(shape)}")
    return array.flatten().to_numpy(zero_copy_only=False).reshape(len(array), width)


def check_image_column(column: pa.ChunkedArray, name: str) -> pa.Array:
    """An image column (``struct<bytes, path>``) as one array; ValueError naming the column otherwise."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if not pa.types.is_struct(array.type) or array.type.get_field_index("bytes") < 0:
        raise ValueError(f"column '{name}' is {array.type}, not an image column struct<bytes: binary, path: string>")
    return array


def decode_image_cells(array: pa.Array, rows: np.ndarray, root: Optional[Path], name: str) -> np.ndarray:
    """uint8 ``(len(rows), H, W, 3)`` RGB frames of the image column ``array`` at ``rows``: the cell's
    ``bytes``, or when they are null the file at its ``path`` (relative to ``root``). ValueError naming the
    column and row when a cell holds neither or cannot be decoded."""
    from PIL import Image

    data, paths = array.field("bytes"), array.field("path")
    frames = []
    for row in np.asarray(rows).tolist():
        raw, path = data[row].as_py(), paths[row].as_py()
        try:
            if raw is not None:
                image = Image.open(io.BytesIO(raw))
            elif path:
                image = Image.open(Path(path) if root is None or Path(path).is_absolute() else root / path)
            else:
                raise ValueError("neither bytes nor a path")
            frames.append(np.asarray(image.convert("RGB")))
        except (OSError, ValueError) as exc:
            raise ValueError(f"column '{name}' row {row}: not a readable image ({type(exc).__name__}: {exc})") from None
    return np.stack(frames)
