"""Type and range checks of config values against the annotations of the callables they configure.

A registered constructor states what each parameter accepts in its signature::

    def __init__(self, chunk_size: Annotated[Optional[int], Range(ge=1)] = None,
                 pooling: Annotated[str, OneOf(("mean", "cls"))] = "mean", lr: float = 1e-3): ...

:func:`check_value` checks a config value against such an annotation: ``bool``, ``int``, ``float`` (an int is
a float), ``str``, paths, ``Optional``/``Union``, ``Literal``, sequences and tuples, mappings, and the
:class:`Range` / :class:`OneOf` constraints of ``Annotated``. Annotations it does not know (tensors, modules,
callables, classes) accept anything: the constructor checks those itself. :func:`check_call` checks every
given keyword of a callable, naming the config key, the expected type or allowed values, and the value.
"""
from __future__ import annotations

import collections.abc as abc
import difflib
import inspect
import os
import sys
import typing
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Sequence, Tuple

_NONE = type(None)
CONFIG_TYPES = (type(None), bool, int, float, str, list, tuple, dict)
"""What a YAML config value can be; other values (arrays, tensors, modules) come from Python code and are left to
the constructor."""


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


@dataclass(frozen=True)
class Range:
    """Bounds of a number: ``ge <= x``, ``gt < x``, ``x <= le``, ``x < lt`` (each optional)."""
    ge: Optional[float] = None
    gt: Optional[float] = None
    le: Optional[float] = None
    lt: Optional[float] = None

    def allows(self, value: float) -> bool:
        return ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))

    def __str__(self) -> str:
        parts = [f">= {self.ge:g}" if self.ge is not None else "", f"> {self.gt:g}" if self.gt is not None else "",
                 f"<= {self.le:g}" if self.le is not None else "", f"< {self.lt:g}" if self.lt is not None else ""]
        return " and ".join(p for p in parts if p)


@dataclass(frozen=True)
class OneOf:
    """The allowed values of a parameter, given as a tuple the code also uses (``OneOf(TEXT_POOLINGS)``)."""
    choices: Tuple[Any, ...]

    def __str__(self) -> str:
        return "one of " + ", ".join(repr(c) for c in self.choices)


POSITIVE = Range(gt=0)
NON_NEGATIVE = Range(ge=0)
AT_LEAST_ONE = Range(ge=1)
FRACTION = Range(ge=0, le=1)


def describe(annotation: Any) -> str:
    """A short human name of an annotation, as error messages print it."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is _NONE or annotation is None:
        return "null"
    if origin is typing.Annotated:
        base, *extras = args
        limits = [str(e) for e in extras if isinstance(e, (Range, OneOf))]
        return describe(base) + (f" ({', '.join(limits)})" if limits else "")
    if origin is typing.Union:
        return " or ".join(describe(a) for a in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (list, tuple, abc.Sequence, abc.MutableSequence):
        inner = [a for a in args if a is not Ellipsis]
        return f"a list of {describe(inner[0])}" if len(set(inner)) == 1 else "a list"
    if origin in (dict, abc.Mapping, abc.MutableMapping):
        return "a mapping"
    if isinstance(annotation, type):
        return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(
            annotation, annotation.__name__)
    return str(annotation)


def _problem(value: Any, annotation: Any) -> Optional[str]:
    """None if ``value`` fits ``annotation``, else what is wrong (a phrase)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation in (Any, inspect.Parameter.empty) or isinstance(annotation, (str, typing.TypeVar)):
        return None
    if not isinstance(value, CONFIG_TYPES):  # arrays, tensors, modules, paths given in Python: not a config value
        return None
    if origin is typing.Annotated:
        base, *extras = args
        problem = _problem(value, base)
        if problem or value is None:
            return problem
        for extra in extras:
            if isinstance(extra, Range) and isinstance(value, (int, float)) and not extra.allows(value):
                return f"must be {extra}"
            if isinstance(extra, OneOf) and value not in extra.choices:
                hint = did_you_mean(value, [str(c) for c in extra.choices]) if isinstance(value, str) else ""
                return f"must be {extra}{hint}"
        return None
    if origin is typing.Union:
        problems = [_problem(value, a) for a in args]
        if any(p is None for p in problems):
            return None
        same_kind = [p for a, p in zip(args, problems) if _same_kind(value, a)]
        if len(same_kind) == 1:  # e.g. a mapping for Optional[Mapping[...]]: say what inside it is wrong
            return same_kind[0]
        return f"must be {describe(annotation)}"
    if origin is typing.Literal:
        hint = did_you_mean(value, [str(c) for c in args]) if isinstance(value, str) else ""
        return None if value in args else f"must be {describe(annotation)}{hint}"
    if annotation is _NONE or annotation is None:
        return None if value is None else "must be null"
    if annotation is bool:
        return None if isinstance(value, bool) else "must be true or false"
    if annotation is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "must be an integer"
    if annotation is float:
        return None if isinstance(value, (int, float)) and not isinstance(value, bool) else "must be a number"
    if annotation is str:
        return None if isinstance(value, str) else "must be a string"
    if annotation in (Path, PurePath, os.PathLike):
        return None if isinstance(value, (str, PurePath)) else "must be a path"
    if origin in (list, tuple, abc.Sequence, abc.MutableSequence):
        if not isinstance(value, (list, tuple)):
            return f"must be {describe(annotation)}"
        items = [a for a in args if a is not Ellipsis]
        if origin is tuple and args and Ellipsis not in args and len(args) != len(value):
            return f"must be a list of {len(args)} values"
        for k, item in enumerate(value):
            inner = items[k] if origin is tuple and Ellipsis not in args and items else (items[0] if items else Any)
            problem = _problem(item, inner)
            if problem:
                return f"item {k} ({item!r}) {problem}"
        return None
    if origin in (dict, abc.Mapping, abc.MutableMapping):
        if not isinstance(value, Mapping):
            return "must be a mapping"
        if len(args) == 2:
            for k, item in value.items():
                problem = _problem(item, args[1])
                if problem:
                    return f"entry {k!r} ({item!r}) {problem}"
        return None
    return None  # classes, tensors, callables: the constructor checks them


def plain(value: Any) -> Any:
    """OmegaConf containers (``DictConfig``, ``ListConfig``) as plain dicts and lists; other values unchanged."""
    if type(value).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf
        return OmegaConf.to_container(value, resolve=True)
    return value


def _same_kind(value: Any, annotation: Any) -> bool:
    """Whether ``annotation`` is the kind of thing ``value`` is (a mapping, a list, a string, a number)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _same_kind(value, typing.get_args(annotation)[0])
    if isinstance(value, Mapping):
        return origin in (dict, abc.Mapping, abc.MutableMapping)
    if isinstance(value, (list, tuple)):
        return origin in (list, tuple, abc.Sequence, abc.MutableSequence)
    if isinstance(value, str):
        return annotation is str or origin is typing.Literal
    if isinstance(value, (int, float)):
        return annotation in (int, float, bool)
    return False


def check_value(value: Any, annotation: Any) -> Optional[str]:
    """None if ``value`` fits ``annotation``; else the problem, e.g. ``"must be an integer (>= 1)"``."""
    return _problem(value, annotation)


def resolved_hints(target: Callable[..., Any]) -> Dict[str, Any]:
    """The parameter annotations of ``target`` as objects (string annotations evaluated in its module); a
    parameter whose annotation cannot be evaluated is left out (and so not checked)."""
    raw = getattr(target, "__annotations__", {}) or {}
    module = sys.modules.get(getattr(target, "__module__", ""), None)
    namespace = dict(vars(typing))
    namespace.update(vars(module) if module else {})
    hints = {}
    for name, annotation in raw.items():
        if isinstance(annotation, str):
            try:
                annotation = eval(annotation, namespace)  # noqa: S307 - the package's own annotations
            except Exception:  # a forward reference or a name imported only for type checkers
                continue
        hints[name] = annotation
    return hints


def check_call(target: Callable[..., Any], params: Mapping[str, Any], what: str, where: str = "") -> None:
    """Raise ``ConfigError`` for the first keyword of ``params`` whose value does not fit ``target``'s annotation.

    ``what`` names the callable (``loss 'clip'``), ``where`` the config section (``model.objectives[0].params``).
    """
    fn = target.__init__ if inspect.isclass(target) else target
    hints = resolved_hints(fn)
    for key, value in plain(params).items():
        if key not in hints:
            continue
        problem = check_value(value, hints[key])
        if problem:
            at = f"{where}.{key}" if where else key
            raise ConfigError(f"{at} = {value!r} for {what}: {problem}")


def check_fields(instance_cls: type, values: Mapping[str, Any], where: str) -> None:
    """Check the values of a config section against the :class:`Range`/:class:`OneOf` bounds of its dataclass
    fields (``field(metadata={"check": Range(ge=1)})``)."""
    from dataclasses import fields
    for f in fields(instance_cls):
        check = f.metadata.get("check") if f.metadata else None
        if check is None or f.name not in values:
            continue
        value = values[f.name]
        items = value if isinstance(value, Sequence) and not isinstance(value, str) else [value]
        for item in items:
            if item is None:
                continue
            ok = check.allows(item) if isinstance(check, Range) and isinstance(item, (int, float)) else \
                item in check.choices if isinstance(check, OneOf) else True
            if not ok:
                raise ConfigError(f"{where}.{f.name} = {value!r}: must be {check}")
