"""The shape of the package: no import circles, arrows one way, light entry points, a current registry index."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Set

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
HEAVY = ("mujoco", "metaworld", "minigrid", "gymnasium", "av", "open3d", "trimesh", "imageio")
"""Simulators, video and 3D libraries: only the domains that need them may import them. (pydicom
is not listed: MONAI, a core dependency, imports it itself when it is installed.)"""


def module_files() -> Dict[str, Path]:
    files = {}
    for path in (SRC / "alignkit").rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        files[".".join(parts)] = path
    return files


def imports_of(name: str, path: Path, modules: Set[str]) -> Set[str]:
    """The package modules ``name`` imports, at the top level or inside functions (``from p import m`` counts
    as importing the module ``p.m`` when it is one, else ``p``)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: Set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in modules else source for a in node.names]
        else:
            continue
        found.update(t for t in targets if t in modules and t != name)
    return found


def import_graph() -> Dict[str, Set[str]]:
    files = module_files()
    return {name: imports_of(name, path, set(files)) for name, path in files.items()}


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components of more than one module (Tarjan), each as a closed path."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_planted_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle_anywhere_in_src() -> None:
    found = cycles(import_graph())
    assert not found, "import circles: " + "; ".join(" <-> ".join(c) for c in found)


def test_arrows_run_one_way() -> None:
    """cli -> demos -> domains -> core: core imports no domain or demo; a domain imports no other domain; only
    the command line and the demos' own package import the demos."""
    bad = []
    for name, targets in import_graph().items():
        for t in targets:
            if name.startswith("alignkit.core") and t.startswith(("alignkit.domains", "alignkit.demos")):
                bad.append(f"{name} -> {t}")
            if name.startswith("alignkit.domains.") and t.startswith("alignkit.domains."):
                if name.split(".")[2] != t.split(".")[2]:
                    bad.append(f"{name} -> {t}")
            if t.startswith("alignkit.demos") and not name.startswith(("alignkit.demos", "alignkit.cli")):
                bad.append(f"{name} -> {t}")
    assert not bad, bad


def test_no_module_grows_past_a_few_hundred_lines() -> None:
    long = {name: n for name, path in module_files().items() if (n := len(path.read_text().splitlines())) > 600}
    assert not long, f"split these by role: {long}"


def _modules_after(code: str) -> List[str]:
    done = subprocess.run([sys.executable, "-c", code + "\nimport json, sys; print(json.dumps(sorted(sys.modules)))"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _heavy(modules: List[str]) -> List[str]:
    return sorted({m for m in modules if m.split(".")[0] in HEAVY})


def test_loading_a_core_model_imports_no_domain(exported_tiny_model: Path) -> None:
    modules = _modules_after(f"import alignkit; alignkit.load({str(exported_tiny_model)!r})")
    assert "alignkit.core.module" in modules  # it did load
    assert not [m for m in modules if m.startswith("alignkit.domains")], "a core model pulled in a domain"
    assert not _heavy(modules)


@pytest.mark.parametrize("argv", [["--help"], ["configs"], ["train", "--help"]])
def test_the_command_line_starts_without_simulators_or_video(argv: List[str]) -> None:
    code = ("import contextlib, io\nfrom alignkit.cli import main\n"
            f"with contextlib.redirect_stdout(io.StringIO()):\n    try:\n        main({argv!r})\n"
            "    except SystemExit:\n        pass")
    modules = _modules_after(code)
    assert not _heavy(modules), _heavy(modules)
    assert "lightning" not in modules and "transformers" not in modules


def test_the_registry_index_is_current() -> None:
    done = subprocess.run([sys.executable, "-m", "alignkit.plugins", "--check"], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def test_registries_import_only_the_module_they_need() -> None:
    modules = _modules_after("from alignkit.core.registry import LOSSES, DATASETS\n"
                             "LOSSES.get('clip'); assert 'lerobot' in DATASETS.names()")
    assert "alignkit.core.losses" in modules
    assert not [m for m in modules if m.startswith("alignkit.domains.robotics.lerobot")]


def test_public_names_are_the_package_own() -> None:
    """``alignkit.core`` exports its losses, module, registries and builders; no ``__all__`` in the package
    re-exports a third-party class or function."""
    import importlib
    import inspect

    import alignkit.core as core
    for name in ("ClipLoss", "AlignmentModule", "ENCODERS", "load_config", "build_model", "train", "AlignedModel"):
        assert name in core.__all__ and getattr(core, name) is not None
    foreign = []
    for name in module_files():
        module = importlib.import_module(name)
        for public in getattr(module, "__all__", []):
            obj = getattr(module, public)
            owner = getattr(obj, "__module__", None)
            if (inspect.isclass(obj) or inspect.isfunction(obj)) and owner and not owner.startswith("alignkit"):
                foreign.append(f"{name}.{public} ({owner})")
    assert not foreign, foreign
