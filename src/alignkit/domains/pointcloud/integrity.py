"""Mesh and point files checked against their own headers before a library parses them, and Open3D's failures.

trimesh and Open3D accept damaged files quietly: a text PLY or a PCD whose header promises more points than
it holds comes back from Open3D padded with uninitialised memory (Open3D prints a warning and returns), a
truncated OFF or ASCII PLY loses its last faces or vertices in trimesh, a truncated binary STL reads as an
empty mesh. :func:`check_declared_counts` compares what each header declares with what the file holds:

- PLY (ASCII and binary): every ``element <name> <count>``, in order; ASCII one element per line, binary
  ``count * row size`` bytes (list properties, e.g. faces, walked row by row);
- OFF: the ``vertices faces edges`` line against the lines that follow;
- STL: binary ``84 + 50 * facets`` bytes; ASCII every ``facet`` closed by ``endfacet`` and an ``endsolid``;
- OBJ: each face's vertex (and texture/normal) references against the ``v``/``vt``/``vn`` lines;
- PCD: ``WIDTH * HEIGHT == POINTS`` and ``POINTS`` rows (ASCII), bytes (binary) or the uncompressed size
  (binary_compressed).

:func:`read_open3d_cloud` reads a ``.ply``/``.pcd`` cloud with Open3D and turns the warning it prints on
a failed read (captured from the process's stdout/stderr) into a :class:`PointFileError`.
Each error names the file and both figures ("header declares 2048 vertices, file holds 1000").
"""
from __future__ import annotations

import contextlib
import ctypes
import io
import os
import re
import struct
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np


class PointFileError(ValueError):
    """A mesh, point file or dataset listing that cannot be used; the message names the file (and line)."""


PLY_TYPES: Dict[str, str] = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
                             "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
                             "float": "f4", "float32": "f4", "double": "f8", "float64": "f8"}
"""PLY property types -> NumPy dtype codes (without byte order)."""
PCD_TYPES = {("F", 4): "f4", ("F", 8): "f8", ("I", 1): "i1", ("I", 2): "i2", ("I", 4): "i4", ("I", 8): "i8",
             ("U", 1): "u1", ("U", 2): "u2", ("U", 4): "u4", ("U", 8): "u8"}
_PLURAL = {"vertex": "vertices", "face": "faces", "edge": "edges"}


def _plural(name: str) -> str:
    return _PLURAL.get(name, f"'{name}' elements")


def _data_lines(text: str, comment: Optional[str] = "#") -> List[str]:
    """The non-blank lines of ``text``, stripped, without the lines starting with ``comment``."""
    return [s for s in (line.strip() for line in text.splitlines()) if s and not (comment and s.startswith(comment))]


def _short(path: Path, element: str, declared: int, held: int, extra: str = "") -> PointFileError:
    return PointFileError(f"{path}: header declares {declared} {element}, file holds {held}{extra} "
                          "(truncated or corrupt file)")


# ----------------------------------------------------------------------------------------------- PLY


class _PlyElement:
    """One ``element`` of a PLY header: its name, row count and properties in order, each ``(dtype,)`` for a
    scalar or ``(count dtype, item dtype)`` for a list."""

    def __init__(self, name: str, count: int):
        self.name, self.count = name, count
        self.props: List[Tuple[str, ...]] = []

    def add(self, words: List[str], path: Path, line: int) -> None:
        try:
            types = words[2:4] if words[1] == "list" else words[1:2]
            self.props.append(tuple(PLY_TYPES[t] for t in types))
        except (IndexError, KeyError):
            raise PointFileError(f"{path}: header line {line} '{' '.join(words)}' is not a PLY property "
                                 f"(types: {', '.join(PLY_TYPES)})") from None

    def values_needed(self, tokens: List[str]) -> int:
        """How many values an ASCII row starting with ``tokens`` must have (lists: their count + 1)."""
        at = 0
        for prop in self.props:
            if len(prop) == 2 and at < len(tokens):
                try:
                    at += int(float(tokens[at]))
                except ValueError:
                    pass
            at += 1
        return at

    def fixed_bytes(self) -> int:
        return sum(np.dtype(p[0]).itemsize for p in self.props if len(p) == 1)


def _ply_header(path: Path, data: bytes) -> Tuple[str, List[_PlyElement], int]:
    """``(format, elements, offset of the first data byte)`` of a PLY file."""
    end = data.find(b"end_header")
    if not data.startswith(b"ply") or end < 0:
        raise PointFileError(f"{path}: not a PLY file "
                             f"({'no end_header line' if data.startswith(b'ply') else 'does not start with ply'})")
    newline = data.find(b"\n", end)
    start = len(data) if newline < 0 else newline + 1
    fmt, elements = "", []
    for n, raw in enumerate(data[:end].decode("ascii", errors="replace").splitlines(), start=1):
        words = raw.split()
        if not words or words[0] in ("comment", "obj_info", "ply"):
            continue
        if words[0] == "format" and len(words) > 1:
            fmt = words[1]
        elif words[0] == "element" and len(words) == 3 and words[2].isdigit():
            elements.append(_PlyElement(words[1], int(words[2])))
        elif words[0] == "property" and elements:
            elements[-1].add(words, path, n)
        else:
            raise PointFileError(f"{path}: header line {n} '{raw.strip()}' is not a PLY header line")
    if fmt not in ("ascii", "binary_little_endian", "binary_big_endian"):
        raise PointFileError(f"{path}: PLY format '{fmt}' is not ascii, binary_little_endian or binary_big_endian")
    return fmt, elements, start


def _check_ply_ascii(path: Path, elements: Sequence[_PlyElement], body: bytes) -> None:
    lines = _data_lines(body.decode("ascii", errors="replace"), comment=None)
    at = 0
    for el in elements:
        held = min(el.count, len(lines) - at)
        if held < el.count:
            raise _short(path, _plural(el.name), el.count, held)
        if el.count:
            last = lines[at + el.count - 1].split()
            if len(last) < el.values_needed(last):
                raise PointFileError(f"{path}: the last of the {el.count} {_plural(el.name)} has {len(last)} values, "
                                     f"its properties need {el.values_needed(last)} (truncated file)")
        at += el.count


def _list_rows(el: _PlyElement, data: bytes, offset: int, order: str) -> Tuple[int, int]:
    """``(complete rows, bytes they take)`` of a binary element with list properties, from ``offset``."""
    lists = [k for k, p in enumerate(el.props) if len(p) == 2]
    if len(lists) == 1 and el.count:  # the usual face element: try the stride of equal-length rows first
        cdt, idt = (np.dtype(order + t) for t in el.props[lists[0]])
        first = offset + sum(np.dtype(p[0]).itemsize for p in el.props[:lists[0]])
        if first + cdt.itemsize <= len(data):
            k = int(np.frombuffer(data, cdt, 1, first)[0])
            stride = el.fixed_bytes() + cdt.itemsize + k * idt.itemsize
            rows = min(el.count, (len(data) - offset) // stride)
            counts = np.ndarray((rows,), cdt, data, first, (stride,)) if rows else np.zeros(0, cdt)
            if np.all(counts == k) and (rows == el.count or len(data) - offset - rows * stride < stride):
                return rows, rows * stride
    at, rows = offset, 0
    for _ in range(el.count):  # rows of different lengths: walk them
        row_at = at
        for prop in el.props:
            size = np.dtype(prop[0]).itemsize
            if row_at + size > len(data):
                return rows, at - offset
            if len(prop) == 2:
                size += int(np.frombuffer(data, np.dtype(order + prop[0]), 1, row_at)[0]) * np.dtype(prop[1]).itemsize
            row_at += size
        if row_at > len(data):
            break
        at, rows = row_at, rows + 1
    return rows, at - offset


def _check_ply_binary(path: Path, elements: Sequence[_PlyElement], data: bytes, start: int, fmt: str) -> None:
    order = "<" if fmt == "binary_little_endian" else ">"
    at = start
    for el in elements:
        if any(len(p) == 2 for p in el.props):
            rows, used = _list_rows(el, data, at, order)
        else:
            row = el.fixed_bytes()
            rows = min(el.count, (len(data) - at) // row) if row else el.count
            used = rows * row
        if rows < el.count:
            raise _short(path, _plural(el.name), el.count, rows, f" in the {len(data) - at} bytes left for them")
        at += used


def check_ply(path: Path) -> None:
    """:class:`PointFileError` unless every element the PLY header declares is in the file (see module docstring)."""
    data = path.read_bytes()
    fmt, elements, start = _ply_header(path, data)
    if fmt == "ascii":
        _check_ply_ascii(path, elements, data[start:])
    else:
        _check_ply_binary(path, elements, data, start, fmt)


# ----------------------------------------------------------------------------------------------- OFF


def check_off(path: Path) -> None:
    """:class:`PointFileError` unless an ASCII OFF holds the vertex and face lines its counts line declares."""
    lines = _data_lines(path.read_text(encoding="utf-8", errors="replace"))
    keyword = lines[0].upper().find("OFF") if lines else -1
    if keyword < 0 or lines[0][:keyword].strip("CNSTcnst4"):
        raise PointFileError(f"{path}: not an OFF file (the first line is not OFF)")
    if "BINARY" in lines[0].upper():
        return
    inline = lines[0][keyword + 3:].split()  # ModelNet's "OFF490 518 0"
    counts = inline or (lines[1].split() if len(lines) > 1 else [])
    body = lines[1:] if inline else lines[2:]
    try:
        vertices, faces = int(counts[0]), int(counts[1])
    except (IndexError, ValueError):
        raise PointFileError(f"{path}: no 'vertices faces edges' counts line after OFF (found {counts})") from None
    if len(body) < vertices:
        raise _short(path, "vertices", vertices, len(body))
    if len(body) < vertices + faces:
        raise _short(path, "faces", faces, len(body) - vertices, f" after its {vertices} vertices")
    if faces:
        last = body[vertices + faces - 1].split()
        if not last[0].isdigit() or len(last) < 1 + int(last[0]):
            raise PointFileError(f"{path}: the last of the {faces} faces ('{' '.join(last)}') is incomplete "
                                 "(truncated file)")


# ----------------------------------------------------------------------------------------------- STL


def check_stl(path: Path) -> None:
    """:class:`PointFileError` unless a binary STL has ``84 + 50 * n`` bytes for its ``n`` facets, or an ASCII
    STL closes every facet and its solid."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(1024)
    declared = struct.unpack("<I", head[80:84])[0] if len(head) >= 84 else None
    if declared is not None and size == 84 + 50 * declared:
        return
    if head.lstrip().lower().startswith(b"solid") and (b"facet" in head or b"endsolid" in head):
        text = path.read_text(encoding="ascii", errors="replace").lower()
        begun, ended = len(re.findall(r"\bfacet\b", text)), len(re.findall(r"\bendfacet\b", text))
        if begun != ended or not re.search(r"\bendsolid\b", text):
            raise PointFileError(f"{path}: ASCII STL with {begun} facets begun, {ended} closed by endfacet"
                                 f"{'' if re.search(r'endsolid', text) else ' and no endsolid line'} (truncated file)")
        return
    if declared is None:
        raise PointFileError(f"{path}: {size} bytes: too short for a binary STL (an 84-byte header) and not ASCII STL")
    expected = 84 + 50 * declared
    found = (f"{max(0, (size - 84) // 50)} complete facets (truncated or corrupt file)" if size < expected else
             "more than declared (not a binary STL of that many facets, nor an ASCII STL)")
    raise PointFileError(f"{path}: binary STL header declares {declared} facets (84 + 50 * {declared} = {expected} "
                         f"bytes), file has {size} bytes, {found}")


# ----------------------------------------------------------------------------------------------- OBJ


def check_terminated(path: Path, text: str) -> None:
    """A text format without counts in a header (OBJ, XYZ/PTS) cannot tell a cut at a line end from a shorter
    file, but a cut inside a line leaves the last line without its newline: :class:`PointFileError` naming
    the line (every writer we know of, Open3D, trimesh, MeshLab, Blender, ends its lines)."""
    if text and not text.endswith(("\n", "\r")):
        lines = text.splitlines()
        raise PointFileError(f"{path}: line {len(lines)} ({lines[-1][:40]!r}) ends without a newline: the file looks "
                             "truncated inside that line; if it is complete, end it with a newline")


def check_obj(path: Path) -> None:
    """:class:`PointFileError` naming the line of the first face that refers to a vertex (or texture
    coordinate, normal) the OBJ does not define; negative (relative) references count back from that line;
    and for a last line cut short (:func:`check_terminated`)."""
    from alignkit.core.text import read_text
    text = read_text(path, what="OBJ file")
    check_terminated(path, text)
    lines = text.splitlines()
    totals = {"v": 0, "vt": 0, "vn": 0}
    for line in lines:
        key = line.split(maxsplit=1)[0] if line.strip() else ""
        if key in totals:
            totals[key] += 1
    seen = {"v": 0, "vt": 0, "vn": 0}
    names = (("v", "vertex", "vertices"), ("vt", "texture coordinate", "texture coordinates"),
             ("vn", "normal", "normals"))
    for n, line in enumerate(lines, start=1):
        words = line.split()
        if not words:
            continue
        if words[0] in seen:
            seen[words[0]] += 1
        elif words[0] in ("f", "l", "p"):
            for token in words[1:]:
                for (key, one, many), ref in zip(names, token.split("/")):
                    if not ref:
                        continue
                    index = int(ref) if ref.lstrip("-").isdigit() else 0
                    valid = 1 <= index <= totals[key] if index > 0 else 1 <= seen[key] + index + 1 <= seen[key]
                    if not valid:
                        defined = totals[key] if index > 0 else seen[key]
                        raise PointFileError(f"{path}: line {n}: face refers to {one} {ref} but the file defines "
                                             f"{defined} {many}{'' if index > 0 else ' before it'} (truncated or "
                                             "corrupt file)")


# ----------------------------------------------------------------------------------------------- PCD


def _pcd_header(path: Path, data: bytes) -> Tuple[Dict[str, List[str]], int]:
    fields: Dict[str, List[str]] = {}
    at = 0
    while at < len(data):
        newline = data.find(b"\n", at)
        end = len(data) if newline < 0 else newline + 1
        words = data[at:end].decode("ascii", errors="replace").split()
        at = end
        if words and not words[0].startswith("#"):
            fields[words[0].upper()] = words[1:]
            if words[0].upper() == "DATA":
                return fields, at
    raise PointFileError(f"{path}: PCD header has no DATA line (found {sorted(fields)})")


def check_pcd(path: Path) -> None:
    """:class:`PointFileError` unless ``WIDTH * HEIGHT == POINTS`` and the data holds ``POINTS`` points."""
    data = path.read_bytes()
    header, start = _pcd_header(path, data)
    try:
        width, height = int(header["WIDTH"][0]), int(header.get("HEIGHT", ["1"])[0])
        points = int(header.get("POINTS", [width * height])[0])
        sizes, types = [int(s) for s in header["SIZE"]], header["TYPE"]
        counts = [int(c) for c in header.get("COUNT", ["1"] * len(sizes))]
        kind = header["DATA"][0].lower()
    except (KeyError, IndexError, ValueError) as exc:
        raise PointFileError(f"{path}: PCD header lacks or garbles {exc} (needs WIDTH, HEIGHT, POINTS, SIZE, TYPE, "
                             "COUNT, DATA)") from None
    if width * height != points:
        raise PointFileError(f"{path}: PCD header WIDTH * HEIGHT = {width} * {height} = {width * height} but POINTS "
                             f"{points}")
    row = sum(s * c for s, c in zip(sizes, counts))
    if kind == "ascii":
        lines = _data_lines(data[start:].decode("ascii", errors="replace"))
        if len(lines) < points:
            raise PointFileError(f"{path}: PCD header declares POINTS {points}, file holds {len(lines)} (truncated "
                                 "or corrupt file)")
        if points and len(lines[points - 1].split()) < sum(counts):
            raise PointFileError(f"{path}: the last of the {points} points has {len(lines[points - 1].split())} "
                                 f"values, the fields need {sum(counts)} (truncated file)")
    elif kind == "binary":
        held = (len(data) - start) // row if row else points
        if held < points:
            raise PointFileError(f"{path}: PCD header declares POINTS {points} ({points * row} bytes), file holds "
                                 f"{held} ({len(data) - start} bytes; truncated or corrupt file)")
    elif kind == "binary_compressed":
        if len(data) - start < 8:
            raise PointFileError(f"{path}: binary_compressed PCD without its 8-byte size prefix (truncated file)")
        compressed, uncompressed = struct.unpack("<II", data[start:start + 8])
        if uncompressed != points * row:
            raise PointFileError(f"{path}: PCD header declares POINTS {points} ({points * row} bytes) but the "
                                 f"compressed block unpacks to {uncompressed} bytes")
        if len(data) - start - 8 < compressed:
            raise PointFileError(f"{path}: the compressed block declares {compressed} bytes, file holds "
                                 f"{len(data) - start - 8} (truncated file)")
    else:
        raise PointFileError(f"{path}: PCD DATA '{kind}' is not ascii, binary or binary_compressed")
    unknown = [f"{t}{s}" for t, s in zip(types, sizes) if (t.upper(), s) not in PCD_TYPES]
    if unknown:
        raise PointFileError(f"{path}: PCD field types {unknown} are not F4/F8/I1-8/U1-8")


# ---------------------------------------------------------------------------------------------- dispatch

CHECKS = {".ply": check_ply, ".off": check_off, ".stl": check_stl, ".obj": check_obj, ".pcd": check_pcd}
"""File suffix -> its header check."""


def check_declared_counts(path: Path) -> None:
    """Run the header check of ``path``'s format (:data:`CHECKS`; other formats pass)."""
    check = CHECKS.get(path.suffix.lower())
    if check is not None:
        check(path)


# ----------------------------------------------------------------------------------------------- Open3D

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _flush_c_streams() -> None:
    try:
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):  # no C library handle on this platform: Python's flush is all we can do
        pass


def read_open3d_cloud(path: Path) -> "open3d.geometry.PointCloud":  # noqa: F821 (imported lazily)
    """``open3d.io.read_point_cloud(path)``, raising :class:`PointFileError` when Open3D reports a failed read.

    Open3D prints "Read PLY failed" (through Python's ``sys.stdout``) and RPly its reason (on the C
    ``stderr``) instead of raising; both are captured for the call (Python's stdout, and file descriptors
    1 and 2; Open3D's verbosity raised to Warning), and any other output is written back. The capture is
    process-wide, so output of other threads during the read passes through it.
    """
    import open3d as o3d

    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    printed = io.StringIO()
    with tempfile.TemporaryFile() as log:
        for fd in saved:
            os.dup2(log.fileno(), fd)
        try:
            with contextlib.redirect_stdout(printed), \
                    o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Warning):
                cloud = o3d.io.read_point_cloud(str(path))
        finally:
            _flush_c_streams()
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
        log.seek(0)
        output = log.read().decode("utf-8", errors="replace")
    text = printed.getvalue() + output
    lines = [_ANSI.sub("", line).strip() for line in text.splitlines()]
    failures = [line for line in lines if "WARNING" in line or "Error" in line or "failed" in line.lower()]
    if failures:
        raise PointFileError(f"{path}: Open3D could not read the file: {'; '.join(failures[:3])}")
    if text:
        sys.stdout.write(text)
    return cloud
