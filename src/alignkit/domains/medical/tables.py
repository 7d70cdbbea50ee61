"""CSV tables of the medical readers (X-ray archives, echo study tables): reading one, checking its columns, and the
error of a listed item that cannot be used."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from alignkit.core.registry import ConfigError, did_you_mean
from alignkit.core.text import read_csv


class BadRowError(ValueError):
    """A listed image cannot be used (missing file, bad label, no report text); names the problem, not the row."""


def read_table(path: Path) -> Tuple[List[str], List[Dict[str, str]]]:
    """Header and rows of a CSV file (``.csv`` or gzipped ``.csv.gz``), decoded by :func:`~alignkit.core.text.read_csv`:
    UTF-8, or UTF-16/32 with a byte order mark; a byte that is not text raises a ``ValueError`` naming the row."""
    table = read_csv(path)
    return table.header, table.rows


def require_columns(path: Path, header: Sequence[str], columns: Sequence[Tuple[str, Optional[str]]]) -> None:
    """Raise :class:`ConfigError` naming ``path``, the column's purpose and the closest column when a column of
    ``columns`` (``(purpose, column name or None)`` pairs; None is skipped) is not in ``header``."""
    for purpose, column in columns:
        if column is not None and column not in header:
            raise ConfigError(f"{path} (header row) has no column '{column}' ({purpose})"
                              f"{did_you_mean(column, header)}; its columns: {', '.join(header)}")
