"""Printed result tables: one row per figure beside its baseline and target, as every demo and bench prints them."""
from __future__ import annotations

from typing import Sequence, Tuple

from rich.table import Table


def results_table(title: str, rows: Sequence[Tuple[str, float, str, str, str]],
                  columns: Sequence[str] = ("metric", "value", "baseline", "target", "met")) -> Table:
    """A rich table: one row per figure ``(name, value, baseline, target, met)``, the value to 3 decimals."""
    table = Table(title=title)
    for col in columns:
        table.add_column(col, justify="left" if col == columns[0] else "right")
    for r in rows:
        table.add_row(r[0], f"{r[1]:.3f}", *r[2:])
    return table
