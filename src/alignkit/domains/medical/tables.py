"""CSV tables of the medical readers (X-ray archives, echo study tables): reading one, checking its columns, and the
error of a listed item that cannot be used."""
from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from alignkit.core.registry import ConfigError, did_you_mean


class BadRowError(ValueError):
    """A listed image cannot be used (missing file, bad label, no report text); names the problem, not the row."""


def read_table(path: Path) -> Tuple[List[str], List[Dict[str, str]]]:
    """Header and rows of a CSV file (``.csv`` or gzipped ``.csv.gz``; UTF-8, BOM tolerated)."""
    if not path.is_file():
        raise FileNotFoundError(f"no CSV file {path}")
    raw = path.read_bytes()
    text = (gzip.decompress(raw) if path.suffix == ".gz" else raw).decode("utf-8-sig")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = list(reader.fieldnames or [])
    if not header:
        raise ValueError(f"{path} is empty; it needs a header row naming its columns")
    rows = [{k: (v if v is not None else "") for k, v in r.items() if k is not None} for r in reader]
    return header, rows


def require_columns(path: Path, header: Sequence[str], columns: Sequence[Tuple[str, Optional[str]]]) -> None:
    """Raise :class:`ConfigError` naming ``path``, the column's purpose and the closest column when a column of
    ``columns`` (``(purpose, column name or None)`` pairs; None is skipped) is not in ``header``."""
    for purpose, column in columns:
        if column is not None and column not in header:
            raise ConfigError(f"{path} (header row) has no column '{column}' ({purpose})"
                              f"{did_you_mean(column, header)}; its columns: {', '.join(header)}")
