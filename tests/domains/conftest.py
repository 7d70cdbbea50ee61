"""Fixtures shared by the domain tests."""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Callable, List, Sequence, Tuple

import pytest

from alignkit.core.config import load_config
from alignkit.core.params import check_value, resolved_hints
from alignkit.core.registry import REGISTRIES, ConfigError, registry_index

CONSTRUCTOR_KINDS = ("dataset", "encoder", "model", "loss", "evaluator", "head", "augmentation")


def registered_constructors(package: str) -> List[Tuple[str, str]]:
    """``(kind, name)`` of every constructor the registry index lists under ``package`` (nothing is imported)."""
    return [(kind, name) for kind, names in registry_index().items() if kind in CONSTRUCTOR_KINDS
            for name, module in sorted(names.items()) if module.startswith(package)]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test taking ``registered_constructor`` runs once per ``(kind, name)`` registered under its module's
    ``PACKAGE``."""
    if "registered_constructor" in metafunc.fixturenames:
        entries = registered_constructors(metafunc.module.PACKAGE)
        metafunc.parametrize("registered_constructor", entries, ids=[f"{k}:{n}" for k, n in entries])


@pytest.fixture
def assert_defaults_fit() -> Callable[[Tuple[str, str]], None]:
    """``(kind, name)``: every default of the registered constructor fits its own annotation."""
    def check(entry: Tuple[str, str]) -> None:
        kind, name = entry
        obj = REGISTRIES[kind].get(name)
        fn = obj.__init__ if inspect.isclass(obj) else obj
        hints = resolved_hints(fn)
        for param in inspect.signature(fn).parameters.values():
            if param.name in hints and param.default is not param.empty:
                assert check_value(param.default, hints[param.name]) is None, (name, param.name, param.default)
    return check


@pytest.fixture
def assert_refused() -> Callable[[Path, Sequence[str], str, str, str], None]:
    """``(config, overrides, key, shown, allowed)``: loading ``config`` with ``overrides`` raises a
    ``ConfigError`` naming ``key``, the value as ``shown`` (its repr) and what is ``allowed``."""
    def check(config: Path, overrides: Sequence[str], key: str, shown: str, allowed: str) -> None:
        with pytest.raises(ConfigError) as err:
            load_config(config, overrides)
        message = str(err.value)
        assert f"{key} = {shown} for " in message and allowed in message, message
    return check


@pytest.fixture
def assert_params_refused() -> Callable[[str, str, dict, str], None]:
    """``(kind, name, {key: value}, allowed)``: the registry refuses that one parameter of the constructor,
    naming the key, the value and what is ``allowed`` (for constructors no shipped config uses)."""
    def check(kind: str, name: str, params: dict, allowed: str) -> None:
        (key, value), = params.items()
        with pytest.raises(ConfigError) as err:
            REGISTRIES[kind].check_params(name, params, "params")
        message = str(err.value)
        assert f"params.{key} = {value!r} for {kind} '{name}'" in message and allowed in message, message
    return check
