"""The registry index: which module registers each name, so that registries import lazily.

``alignkit/registry_index.json`` maps ``{kind: {name: module}}`` for every registration in the package
(:mod:`alignkit.core.registry` reads it on a registry miss and imports just that module). After adding,
renaming or moving a registration, rewrite it::

    python -m alignkit.plugins --write-index    # imports every module of the package, writes the index
    python -m alignkit.plugins --check          # exit status 1 and the differences if the index is stale
"""
from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys
from pathlib import Path
from typing import Dict, List, Optional

import alignkit
from alignkit.core.registry import INDEX_FILE, REGISTRIES

Index = Dict[str, Dict[str, str]]


def package_modules() -> List[str]:
    """Every module of the ``alignkit`` package, sorted."""
    names = [info.name for info in pkgutil.walk_packages(alignkit.__path__, prefix="alignkit.")]
    return sorted(n for n in names if not n.endswith("__main__"))


def discover() -> Index:
    """Import every module of the package and read back what each registry holds: ``{kind: {name: module}}``."""
    for name in package_modules():
        importlib.import_module(name)
    return {kind: dict(sorted(reg.modules.items())) for kind, reg in sorted(REGISTRIES.items()) if reg.modules}


def index_path() -> Path:
    return Path(alignkit.__file__).parent / INDEX_FILE


def differences(current: Index, written: Index) -> List[str]:
    """What the written index gets wrong, one line per name."""
    lines = []
    for kind in sorted(set(current) | set(written)):
        now, old = current.get(kind, {}), written.get(kind, {})
        for name in sorted(set(now) | set(old)):
            if now.get(name) != old.get(name):
                lines.append(f"{kind} '{name}': registered in {now.get(name, '(nowhere)')}, "
                             f"index says {old.get(name, '(missing)')}")
    return lines


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m alignkit.plugins", description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write-index", action="store_true", help=f"rewrite {INDEX_FILE}")
    mode.add_argument("--check", action="store_true", help=f"compare {INDEX_FILE} with the registrations")
    args = parser.parse_args(argv)
    current = discover()
    path = index_path()
    if args.write_index:
        path.write_text(json.dumps(current, indent=1) + "\n")
        print(f"wrote {path}: {sum(len(v) for v in current.values())} names of {len(current)} kinds")
        return 0
    written = json.loads(path.read_text()) if path.is_file() else {}
    problems = differences(current, written)
    for line in problems:
        print(line, file=sys.stderr)
    if problems:
        print(f"{path} is stale: run python -m alignkit.plugins --write-index", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
