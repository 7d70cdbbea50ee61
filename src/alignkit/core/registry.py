"""One registry mechanism for the whole package.

Models, encoders, heads, losses, datasets, evaluators and demos are chosen by
name from YAML configs. Each kind has a :class:`Registry`; a domain registers
its pieces at import time with ``@ENCODERS.register("name")``.

``Registry.build(name, **params)`` checks ``params`` against the signature of
the registered callable *before* calling it, so a mistyped key fails with the
key, the registry entry and the closest valid key.
"""
from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable, Dict, Iterable, List, Optional


def closest(word: str, choices: Iterable[str]) -> Optional[str]:
    """The closest of ``choices`` to ``word`` (difflib ratio >= 0.5), or None."""
    hits = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return hits[0] if hits else None


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` or an empty string."""
    hit = closest(word, choices)
    return f" (did you mean '{hit}'?)" if hit else ""


class ConfigError(ValueError):
    """A config names something that does not exist or has a wrong value."""


def check_choice(value: Any, choices: Sequence[Any], what: str) -> None:
    """Raise :class:`ConfigError` naming ``what`` if ``value`` is not one of ``choices``."""
    if value not in choices:
        hint = did_you_mean(value, [str(c) for c in choices]) if isinstance(value, str) else ""
        raise ConfigError(f"{what} must be one of {', '.join(map(str, choices))}; got {value!r}{hint}")


class Registry:
    """Named constructors of one kind (``encoder``, ``loss``, ...)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: Dict[str, Callable[..., Any]] = {}

    def register(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def add(obj: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._entries and self._entries[name] is not obj:
                raise ConfigError(f"{self.kind} '{name}' is registered twice "
                                  f"({self._entries[name]!r} and {obj!r})")
            self._entries[name] = obj
            return obj
        return add

    def names(self) -> List[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def get(self, name: str) -> Callable[..., Any]:
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(
                f"unknown {self.kind} '{name}'{did_you_mean(name, self._entries)}; "
                f"known: {', '.join(self.names()) or '(none registered)'}") from None

    def check_params(self, name: str, params: Dict[str, Any], where: str = "") -> None:
        """Raise :class:`ConfigError` if ``params`` holds a key the constructor lacks."""
        obj = self.get(name)
        target = obj.__init__ if inspect.isclass(obj) else obj
        sig = inspect.signature(target)
        if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
            return
        valid = [p for p in sig.parameters if p not in ("self",)]
        for key in params:
            if key not in valid:
                at = f" at {where}" if where else ""
                raise ConfigError(
                    f"unknown parameter '{key}'{at} for {self.kind} '{name}'"
                    f"{did_you_mean(key, valid)}; valid: {', '.join(valid)}")

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
COMMANDS = Registry("command")
"""Domain subcommands of the ``alignkit`` CLI: ``name -> add_parser(subparsers)``, which adds the subparser
``name`` and sets its ``func`` (``args -> exit code``); see :func:`alignkit.cli.build_parser`."""
