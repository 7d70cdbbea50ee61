"""Text files that people write (reports, captions, class and split lists, CSV listings), decoded strictly.

:func:`decode_text` turns a file's bytes into ``str`` or raises :class:`TextDecodeError` naming the file and the
byte offset of the first bad byte; nothing is ever replaced by U+FFFD. The encoding is decided in this order:

1. a byte order mark: UTF-32 LE/BE, UTF-8, UTF-16 LE/BE (UTF-32 first: its LE mark begins like UTF-16's),
   decoded as that encoding without the mark;
2. no mark but the NUL pattern of UTF-16 text (most bytes at odd offsets NUL and few at even ones, or the
   reverse, over the first 4 KiB): UTF-16 LE (or BE), kept only when it decodes strictly to text without
   control characters, else refused as binary;
3. otherwise strict UTF-8.

Decoded text holding a NUL character is refused (a binary file, or UTF-32 without its mark). :func:`read_text`
reads a file (``required=True`` also refuses an empty or whitespace-only one); :func:`read_csv` reads a CSV
table by the same rules and names the row of a bad byte.
"""
from __future__ import annotations

import codecs
import csv
import gzip
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

PathLike = Union[str, Path]

BYTE_ORDER_MARKS: Tuple[Tuple[bytes, str], ...] = (
    (codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"), (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))
"""Byte order mark -> the encoding of the text after it, in the order they are tried."""

_SNIFF = 4096
_WHITESPACE_CONTROLS = frozenset("\t\n\v\f\r")


class TextDecodeError(ValueError):
    """A text file is binary or not in a supported encoding; ``offset`` is the first bad byte (None: the whole
    file, e.g. empty); the message names the file."""

    def __init__(self, message: str, offset: Optional[int] = None):
        super().__init__(message)
        self.offset = offset


def detect_encoding(data: bytes) -> Tuple[str, int]:
    """``(encoding, length of its byte order mark)`` of ``data`` (see the module docstring; ``utf-8`` by default)."""
    for mark, encoding in BYTE_ORDER_MARKS:
        if data.startswith(mark):
            return encoding, len(mark)
    head = data[:_SNIFF - _SNIFF % 2]
    if len(head) >= 4:
        even, odd = head[0::2], head[1::2]
        even_nul, odd_nul = even.count(0) / len(even), odd.count(0) / len(odd)
        if odd_nul > 0.3 and even_nul < 0.05:
            return "utf-16-le", 0
        if even_nul > 0.3 and odd_nul < 0.05:
            return "utf-16-be", 0
    return "utf-8", 0


def decode_text(data: bytes, where: str) -> str:
    """``data`` decoded by the rules of the module docstring; :class:`TextDecodeError` naming ``where`` and the
    byte offset of the first bad byte."""
    encoding, start = detect_encoding(data)
    label = f"{encoding.upper()}{' (byte order mark)' if start else ''}"
    undecodable: Optional[UnicodeDecodeError] = None
    try:
        text = data[start:].decode(encoding)
    except UnicodeDecodeError as exc:
        undecodable = exc
        text = data[start:start + exc.start].decode(encoding)  # the text before the first bad byte
    if "\x00" in text:
        offset = start + len(text[:text.index("\x00")].encode(encoding))
        raise TextDecodeError(f"{where} is binary, not text: a NUL byte at byte {offset} (read as {label}; "
                              "UTF-32 text needs a byte order mark)", offset)
    if undecodable is not None:
        offset = start + undecodable.start
        raise TextDecodeError(f"{where} is not {label} text: byte {offset} ({data[offset:offset + 4]!r}...) cannot "
                              f"be decoded ({undecodable.reason}); save it as UTF-8", offset)
    if encoding.startswith("utf-16") and not start:
        bad = next((i for i, c in enumerate(text) if c < " " and c not in _WHITESPACE_CONTROLS), None)
        if bad is not None:
            offset = len(text[:bad].encode(encoding))
            raise TextDecodeError(f"{where} looks like UTF-16 without a byte order mark but holds control character "
                                  f"{text[bad]!r} at byte {offset}: a binary file? Save text as UTF-8", offset)
    return text


def read_text(path: PathLike, required: bool = False, what: str = "text file") -> str:
    """The text of ``path`` (:func:`decode_text`); ``required=True`` also refuses an empty or whitespace-only file.

    ``what`` names the file's role in errors (``"report"``, ``"class list"``). ``FileNotFoundError`` for a
    missing file, :class:`TextDecodeError` (a ``ValueError``) naming the file for a bad one.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} not found")
    text = decode_text(path.read_bytes(), f"{what} {path}")
    if required and not text.strip():
        raise TextDecodeError(f"{what} {path} is empty{' (only whitespace)' if text else ''}; it must hold text")
    return text


@dataclass
class CsvTable:
    """A CSV file's ``header`` and ``rows`` (column -> cell, ``""`` for a missing cell; rows numbered from 1
    after the header, blank lines skipped). ``undecodable``: data row -> complaint, for the rows that
    ``read_csv(..., bad_rows="list")`` kept although they hold bytes that are not text."""

    header: List[str]
    rows: List[Dict[str, str]]
    undecodable: Dict[int, str] = field(default_factory=dict)


def _csv_position(text_before: str) -> Tuple[str, int]:
    """``("header row" | "row N", line)`` of the character that follows ``text_before`` in a CSV file."""
    records = [r for r in csv.reader(io.StringIO(text_before + "x", newline="")) if r]
    line = text_before.count("\n") + 1
    return ("header row" if len(records) <= 1 else f"row {len(records) - 1}"), line


def _parse(text: str) -> Tuple[List[str], List[Dict[str, str]]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = list(reader.fieldnames or [])
    rows = [{k: (v if v is not None else "") for k, v in r.items() if k is not None} for r in reader]
    return header, rows


def _undecodable(row: Dict[str, str]) -> Optional[str]:
    """The complaint about a row parsed with ``surrogateescape`` when a cell holds bytes that are not UTF-8."""
    for column, value in row.items():
        bad = next((c for c in value if "\udc80" <= c <= "\udcff" or c == "\x00"), None)
        if bad is not None:
            byte = b"\x00" if bad == "\x00" else bytes([ord(bad) - 0xDC00])
            return (f"column '{column}' holds byte {byte!r}, which is not UTF-8 text; save the file as UTF-8 "
                    "(or UTF-16 with a byte order mark)")
    return None


def read_csv(path: PathLike, bad_rows: str = "raise") -> CsvTable:
    """A CSV file (``.csv``, or gzipped ``.gz``) decoded by :func:`decode_text`, as a :class:`CsvTable`.

    A bad byte raises :class:`TextDecodeError` naming the file, the row (or header row), the line and the byte
    offset. With ``bad_rows="list"`` a UTF-8 file whose bad bytes lie in data rows is read anyway: those rows
    are listed in ``undecodable`` (their cells hold the bad bytes as lone surrogates), for a reader that
    skips bad rows. ``FileNotFoundError`` for a missing file; ``ValueError`` for a file without a header.
    """
    if bad_rows not in ("raise", "list"):
        raise ValueError(f"bad_rows must be 'raise' or 'list', got {bad_rows!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no CSV file {path}")
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise ValueError(f"{path} is not a readable gzip file ({exc}); it may be truncated") from None
    try:
        header, rows = _parse(decode_text(raw, f"CSV file {path}"))
        undecodable: Dict[int, str] = {}
    except TextDecodeError as exc:
        encoding, start = detect_encoding(raw)
        if exc.offset is None:
            raise
        row, line = _csv_position(raw[start:exc.offset].decode(encoding, errors="replace"))
        if bad_rows != "list" or encoding != "utf-8" or row == "header row":
            decode_text(raw, f"CSV file {path} {row} (line {line})")  # raises again, naming the row
        header, rows = _parse(raw[start:].decode("utf-8", errors="surrogateescape"))
        undecodable = {n: reason for n, r in enumerate(rows, start=1) if (reason := _undecodable(r))}
    if not header:
        raise ValueError(f"{path} is empty; it needs a header row naming its columns")
    return CsvTable(header, rows, undecodable)


__all__ = ["BYTE_ORDER_MARKS", "TextDecodeError", "detect_encoding", "decode_text", "read_text", "CsvTable",
           "read_csv"]
