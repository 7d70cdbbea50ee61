"""Stored weights and arrays read safely: ``.safetensors``, ``torch.save`` checkpoints, ``.npy`` and ``.npz``.

Every reader of weights or arrays in alignkit goes through these functions, so that a broken or foreign
file gives one kind of answer: a ``ValueError`` naming the file and saying what was found in it
(truncated, another format, objects where tensors were expected). Nothing here unpickles arbitrary objects:

- :func:`load_safetensors` checks the 8-byte header length, the JSON header and that the tensor data the
  header declares is all there (``8 + header + data`` bytes);
- :func:`load_torch_checkpoint` reads with ``torch.load(weights_only=True)``; a checkpoint holding
  other Python objects (a class from some module, an arbitrary object) is refused, because unpickling
  it would run code named by the file;
- :func:`load_npy` / :func:`load_npz` read with ``allow_pickle=False``; an object array is refused for
  the same reason;
- :func:`load_weights` gives the named tensors of either weight format, :func:`read_json` the
  ``config.json`` stored beside them.

A missing file raises ``FileNotFoundError`` naming it.
"""
from __future__ import annotations

import json
import pickle
import re
import struct
import zipfile
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor

PathLike = Union[str, Path]

_MAGIC = ((b"PK\x03\x04", "a zip archive (a torch.save checkpoint or an .npz)"),
          (b"\x93NUMPY", "a NumPy .npy array"),
          (b"\x89HDF", "an HDF5 file"))


def describe_start(path: Path) -> str:
    """What the first bytes of ``path`` look like (zip, npy, pickle, HDF5, safetensors, text), for messages."""
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        return "an empty file (0 bytes)"
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if head[0] == 0x80 and len(head) > 1 and head[1] <= pickle.HIGHEST_PROTOCOL:
        return f"a Python pickle (protocol {head[1]})"
    if len(head) >= 9 and head[8:9] == b"{":
        return "a safetensors file"
    if all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return f"text ({head.decode('ascii')!r}...)"
    return f"unknown bytes {head[:8].hex()}"


def _existing(path: PathLike, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such {what} file")
    return path


# ---------------------------------------------------------------------------------------- safetensors


def check_safetensors(path: PathLike) -> Dict[str, Any]:
    """The parsed JSON header of a safetensors file; ValueError naming the file unless the file holds all
    ``8 + header length + data`` bytes the header declares (``data`` = the largest tensor end offset)."""
    path = _existing(path, "safetensors")
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise ValueError(f"{path}: not a safetensors file: {size} bytes, fewer than its 8-byte header length "
                             "(truncated?)")
        (length,) = struct.unpack("<Q", prefix)
        if length > size - 8:
            kind = describe_start(path)
            plausible = length <= 100_000_000 and f.read(1) in (b"{", b"")  # a JSON header, or nothing left of it
            if not plausible:
                raise ValueError(f"{path}: not a safetensors file: the file is {kind} (read as safetensors, its first "
                                 f"8 bytes would declare a {length}-byte header in a {size}-byte file)")
            raise ValueError(f"{path}: truncated safetensors file: its first 8 bytes declare a {length}-byte header "
                             f"but the file has {size} bytes; copy or download it again")
        raw = f.read(length)
    try:
        header = json.loads(raw)
        ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise ValueError(f"{path}: not a safetensors file: its {length}-byte header is not the JSON table of "
                         f"tensors ({exc}); the file is {describe_start(path)}") from None
    expected = 8 + length + max(ends, default=0)
    if size < expected:
        raise ValueError(f"{path}: truncated safetensors file: its header declares {len(ends)} tensors in "
                         f"{expected} bytes (8 + {length} header + {expected - 8 - length} data), the file has "
                         f"{size}; copy or download it again")
    return header


def load_safetensors_with_metadata(path: PathLike, device: str = "cpu") -> Tuple[Dict[str, Tensor], Dict[str, str]]:
    """``(tensors, metadata)`` of a safetensors file (:func:`check_safetensors` first)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    check_safetensors(path)
    try:
        with safe_open(str(path), framework="pt", device=device) as f:
            return {name: f.get_tensor(name) for name in f.keys()}, dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{path}: not a readable safetensors file ({type(exc).__name__}: {exc})") from None


def load_safetensors(path: PathLike, device: str = "cpu") -> Dict[str, Tensor]:
    """The tensors of a safetensors file, on ``device``; ValueError naming a truncated or foreign file."""
    return load_safetensors_with_metadata(path, device)[0]


# ------------------------------------------------------------------------------------- torch checkpoints

_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+) was not an allowed global")
_REFUSED_OPERAND = re.compile(r"Unsupported operand (\d+)")


def _refused(path: Path, exc: BaseException) -> ValueError:
    name, operand = _REFUSED_GLOBAL.search(str(exc)), _REFUSED_OPERAND.search(str(exc))
    detail = (f"it names the Python object {name.group(1)}" if name else
              f"its pickle opcode {operand.group(1)} is outside what a tensor checkpoint uses" if operand else
              "it is not a pickle of tensors")
    return ValueError(f"{path}: refused for safety: this checkpoint contains objects other than tensors and plain "
                      f"containers ({detail}), and loading them could run code named by the file. Use a checkpoint "
                      "written by alignkit or Lightning, or a state_dict of tensors re-saved from a copy you trust "
                      "(torch.save(model.state_dict(), path) or safetensors)")


def _reason(exc: BaseException) -> str:
    """``Type: first sentence`` of an exception (or the type alone when it has no message)."""
    message = str(exc).split(". ")[0].strip()
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def load_torch_checkpoint(path: PathLike, map_location: Any = "cpu", mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)``: tensors, numbers, strings and containers of them.

    ``mmap``: map the tensor data instead of reading it (zip-format checkpoints; an old-format one is read
    whole), so checking a large checkpoint costs little memory. ValueError naming the file for a checkpoint
    that is truncated, not a torch checkpoint, or holds other objects (refused, see the module docstring).
    """
    path = _existing(path, "checkpoint")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: empty checkpoint file (0 bytes)")
    is_zip = zipfile.is_zipfile(path)
    kind = describe_start(path)
    if not is_zip and not kind.startswith(("a zip", "a Python pickle")):
        hint = " (give it the suffix .safetensors to read it as one)" if kind == "a safetensors file" else ""
        raise ValueError(f"{path}: not a torch checkpoint: the file is {kind}{hint}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap and is_zip)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" in str(exc) or "Unsupported" in str(exc):
            raise _refused(path, exc) from None
        raise ValueError(f"{path}: not a readable torch checkpoint ({_reason(exc)}); the file is {kind}") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError) as exc:
        if kind.startswith("a zip") and not is_zip:
            kind = "the start of a zip archive whose end is missing (truncated)"
        raise ValueError(f"{path}: not a readable torch checkpoint ({_reason(exc)}); "
                         f"the file is {kind}; copy or save it again") from None


def check_torch_checkpoint(path: PathLike) -> None:
    """:func:`load_torch_checkpoint` with ``mmap=True``: ValueError naming a broken or refused checkpoint,
    without reading its tensors into memory."""
    load_torch_checkpoint(path, mmap=True)


# ------------------------------------------------------------------------------------------ numpy files

_OBJECT_ARRAYS = "Object arrays cannot be loaded"


def _object_array(path: Path, key: Optional[str]) -> ValueError:
    where = f"array '{key}'" if key is not None else "the array"
    return ValueError(f"{path}: {where} holds Python objects (dtype object); refused for safety, because loading "
                      "it would unpickle code from the file. Store numbers as numeric arrays and text as a fixed-width "
                      "string array (np.array(list_of_str))")


def _numpy_error(path: Path, exc: BaseException, kind: str, key: Optional[str]) -> ValueError:
    """The ValueError for ``np.load`` failing on ``path`` (``kind``: "a .npy array" / "an .npz archive";
    ``key``: the array being read from an archive): an object array or a pickle refused, else unreadable."""
    if _OBJECT_ARRAYS in str(exc):
        return _object_array(path, key)
    if "pickled" in str(exc):
        return ValueError(f"{path}: refused for safety: the file is {describe_start(path)}, not {kind}, and "
                          "unpickling it could run code named by the file")
    where = f" (array '{key}')" if key is not None else ""
    return ValueError(f"{path}: not {kind.replace('a ', 'a readable ', 1).replace('an ', 'a readable ', 1)}{where} "
                      f"({type(exc).__name__}: {exc}); the file is {describe_start(path)}; it may be truncated - copy "
                      "or download it again")


def load_npy(path: PathLike, mmap_mode: Optional[str] = None) -> np.ndarray:
    """``np.load(path, allow_pickle=False)`` of a ``.npy`` file; ValueError naming a truncated or foreign file or
    an object array (refused)."""
    path = _existing(path, ".npy")
    try:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise _numpy_error(path, exc, "a .npy array", None) from None


def load_npz(path: PathLike) -> Dict[str, np.ndarray]:
    """Every array of a ``.npz`` archive, read whole with ``allow_pickle=False``; ValueError naming the file
    (and the array) when the archive is truncated or an array holds Python objects (refused)."""
    path = _existing(path, ".npz")
    key: Optional[str] = None
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ValueError(f"{path}: a single .npy array, not an .npz archive of named arrays")
        with data:
            arrays = {}
            for key in data.files:
                arrays[key] = data[key]
            return arrays
    except ValueError as exc:
        if str(exc).startswith(str(path)):
            raise
        raise _numpy_error(path, exc, "an .npz archive", key) from None
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise _numpy_error(path, exc, "an .npz archive", key) from None


# ------------------------------------------------------------------------------------------------ weights


def read_json(path: PathLike) -> Any:
    """The JSON document beside stored weights (a model folder's ``config.json``); ValueError naming the file
    and the line when it is not JSON (e.g. cut short)."""
    path = _existing(path, "JSON")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a JSON text file ({exc}); the file is {describe_start(path)}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON at line {exc.lineno} column {exc.colno} ({exc.msg}); the file may "
                         "be truncated - copy or write it again") from None


def load_weights(path: PathLike) -> Dict[str, Tensor]:
    """The weights of a ``.safetensors`` file, or of a ``torch.save`` / Lightning checkpoint (its
    ``"state_dict"`` entry when it has one), on the CPU. ValueError naming the file when it is broken, refused,
    or holds something other than named tensors."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return load_safetensors(path)
    state = load_torch_checkpoint(path)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        values = state.values() if isinstance(state, dict) else [state]
        kinds = sorted({type(v).__name__ for v in values})
        raise ValueError(f"{path}: holds {', '.join(kinds)}, not a state dict of named tensors (nor a Lightning "
                         "checkpoint with one under 'state_dict')")
    return state
