"""One registry mechanism for the whole package, with lazy imports.

Models, encoders, heads, losses, datasets, evaluators, demos, benches, augmentations, commands (and a
domain's own kinds, e.g. environments) are chosen by name from YAML configs. Each kind has a
:class:`Registry`; a module registers its pieces at import time with ``@ENCODERS.register("name")``.

Lazy: the package ships ``alignkit/registry_index.json``, ``{kind: {name: module}}`` for every registered
name (written by ``python -m alignkit.plugins --write-index``, checked by a test). A name that is not
registered yet is looked up there and only its module is imported, so a config or an exported model pulls in
exactly the domains it names (loading a core model imports no simulator, no video or 3D library).
Third-party packages add modules through the entry-point group ``alignkit.plugins``.

``Registry.build(name, **params)`` checks ``params`` against the signature of the registered callable
*before* calling it: a mistyped key fails with the key, the entry and the closest valid key, and a value
that does not fit the parameter's annotation (type, :class:`~alignkit.core.params.Range`,
:class:`~alignkit.core.params.OneOf`, ``Literal``) fails naming the key and the allowed values.
"""
from __future__ import annotations

import importlib
import inspect
import json
import sys
from functools import lru_cache
from typing import Any, Callable, Dict, List

from alignkit.core.params import ConfigError, check_call, did_you_mean

INDEX_FILE = "registry_index.json"
PLUGIN_GROUP = "alignkit.plugins"


@lru_cache(maxsize=1)
def registry_index() -> Dict[str, Dict[str, str]]:
    """``{kind: {name: module}}`` from the packaged :data:`INDEX_FILE` (empty if it is missing)."""
    from importlib.resources import files
    path = files("alignkit") / INDEX_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def indexed_names(kind: str) -> List[str]:
    """The names of ``kind`` in the index, for a registry whose module is not imported (e.g. a help text)."""
    return sorted(registry_index().get(kind, {}))


_plugins_loaded = False


def load_plugins() -> None:
    """Import the modules third-party packages declare under the entry-point group :data:`PLUGIN_GROUP` (once)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    from importlib.metadata import entry_points
    for ep in entry_points(group=PLUGIN_GROUP):
        importlib.import_module(ep.value.split(":")[0])


REGISTRIES: Dict[str, "Registry"] = {}
"""Every registry by kind (the index writer walks them)."""


class Registry:
    """Named constructors of one kind (``encoder``, ``loss``, ...), imported on first use from the index."""

    def __init__(self, kind: str):
        if kind in REGISTRIES:
            raise ConfigError(f"a registry of kind '{kind}' exists already")
        self.kind = kind
        self._entries: Dict[str, Callable[..., Any]] = {}
        self.modules: Dict[str, str] = {}  # name -> the module that registered it
        REGISTRIES[kind] = self

    def register(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        module = sys._getframe(1).f_globals.get("__name__", "")

        def add(obj: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._entries and self._entries[name] is not obj:
                raise ConfigError(f"{self.kind} '{name}' is registered twice "
                                  f"({self._entries[name]!r} and {obj!r})")
            self._entries[name] = obj
            self.modules[name] = module
            return obj
        return add

    def _indexed(self) -> Dict[str, str]:
        return registry_index().get(self.kind, {})

    def names(self) -> List[str]:
        """Every name of this kind: registered or in the index (nothing is imported)."""
        return sorted(set(self._entries) | set(self._indexed()))

    def __contains__(self, name: str) -> bool:
        return name in self._entries or name in self._indexed()

    def get(self, name: str) -> Callable[..., Any]:
        if name not in self._entries:
            self._import(name)
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(
                f"unknown {self.kind} '{name}'{did_you_mean(name, self.names())}; "
                f"known: {', '.join(self.names()) or '(none registered)'}") from None

    def _import(self, name: str) -> None:
        """Import the module the index names for ``name`` (else the plugins'); an optional dependency that is
        missing becomes a :class:`ConfigError` saying which extra to install."""
        module = self._indexed().get(name)
        if module is None:
            load_plugins()
            return
        try:
            importlib.import_module(module)
        except ImportError as exc:
            parts = module.split(".")
            extra = parts[2] if len(parts) > 2 and parts[1] == "domains" else "all"
            raise ConfigError(f"{self.kind} '{name}' lives in {module}, which cannot be imported: {exc} "
                              f"(install it with: pip install 'alignkit[{extra}]')") from exc

    def check_params(self, name: str, params: Dict[str, Any], where: str = "") -> None:
        """Raise :class:`ConfigError` if ``params`` holds a key the constructor lacks or a value that does not fit
        its annotation (type, range, allowed values)."""
        obj = self.get(name)
        target = obj.__init__ if inspect.isclass(obj) else obj
        sig = inspect.signature(target)
        if not any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
            valid = [p for p in sig.parameters if p not in ("self",)]
            for key in params:
                if key not in valid:
                    at = f" at {where}" if where else ""
                    raise ConfigError(
                        f"unknown parameter '{key}'{at} for {self.kind} '{name}'"
                        f"{did_you_mean(key, valid)}; valid: {', '.join(valid)}")
        check_call(obj, params, f"{self.kind} '{name}'", where)

    def build(self, name: str, *args: Any, where: str = "", **params: Any) -> Any:
        self.check_params(name, params, where)
        return self.get(name)(*args, **params)


MODELS = Registry("model")
ENCODERS = Registry("encoder")
HEADS = Registry("head")
LOSSES = Registry("loss")
DATASETS = Registry("dataset")
EVALUATORS = Registry("evaluator")
DEMOS = Registry("demo")
BENCHES = Registry("bench")
AUGMENTATIONS = Registry("augmentation")
IMPORTERS = Registry("importer")
"""Released-checkpoint formats: ``name -> fn(src, *, allow_partial=False, **options) -> ImportedModel``
(see :mod:`alignkit.core.importing`)."""
COMMANDS = Registry("command")
"""Domain subcommands of the ``alignkit`` CLI: ``name -> add_parser(subparsers)``, which adds the subparser
``name`` and sets its ``func`` (``args -> exit code``); see :func:`alignkit.cli.build_parser`."""
