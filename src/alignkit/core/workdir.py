"""Work folders of applications (demos, benches): generated data is written once and kept, a run starts afresh."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable, Optional


def generated(root: Path, marker: str, what: str, write: Callable[[Path], Any], console: Optional[Any] = None) -> Path:
    """``root`` holding generated data: ``write(root)`` runs (announced as ``writing WHAT to ROOT ...``) unless
    ``root / marker`` exists from an earlier run, whose data is then kept as it is."""
    root = Path(root)
    if not (root / marker).is_file():
        (console.print if console is not None else print)(f"writing {what} to {root} ...")
        write(root)
    return root


def fresh(folder: Path) -> Path:
    """``folder`` with nothing left from an earlier run in it (removed if it exists; created by whoever writes)."""
    folder = Path(folder)
    if folder.exists():
        shutil.rmtree(folder)
    return folder
