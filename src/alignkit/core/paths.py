"""Path parameters of datasets: relative to the data root, never to the current folder."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Type, Union

PathLike = Union[str, Path]


def data_path(value: PathLike, root: Optional[PathLike], param: str, must_exist: bool = True,
              error: Type[Exception] = FileNotFoundError) -> Path:
    """A path parameter of a dataset: ``value`` as given when absolute (or when there is no ``root``), else
    ``root/value`` (relative paths are resolved against the dataset's root, not the current folder).

    ``must_exist``: a missing file or folder raises ``error`` naming the parameter, the value given and the
    path looked at.
    """
    given = Path(value).expanduser()
    path = given if given.is_absolute() or root is None else Path(root).expanduser() / given
    if must_exist and not path.exists():
        where = "" if given.is_absolute() or root is None else f" (relative paths are resolved against root {root})"
        raise error(f"{param} '{value}' not found: looked for {path}{where}")
    return path


__all__ = ["data_path"]
