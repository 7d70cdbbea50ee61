"""Shared pieces of the towers: freezing, counting parameters, building an encoder by name, input types."""
from __future__ import annotations

from typing import Any, Mapping, Sequence, Union

from torch import nn

from alignkit.core.registry import ENCODERS, ConfigError

SpatialSize = Union[int, Sequence[int]]
TextItem = Union[str, Sequence[str]]
"""One text of a batch: a string, or a list of strings (e.g. a report as its sentences)."""


class InnerAttributes:
    """Mixin for a wrapper ``nn.Module``: an attribute the wrapper lacks (``output_dim``, ``forward_tokens``,
    ``tokenizer``, ...) is looked up on its submodule named by ``_inner``. Put it before ``nn.Module`` in the bases."""

    _inner = "module"

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)  # type: ignore[misc]
        except AttributeError:
            inner = self.__dict__.get("_modules", {}).get(self._inner)
            if inner is None:  # during construction, copying or unpickling
                raise
            return getattr(inner, name)


class FrozenTower(InnerAttributes, nn.Module):
    """A module with ``requires_grad=False`` everywhere that stays in eval mode.

    ``train(mode)`` only sets this wrapper's own ``training`` flag and puts the inner module back
    in eval mode, so ``LightningModule.train()`` (called at every fit/validation switch) cannot turn
    on dropout or batch-norm statistics updates of a frozen tower. Attributes the wrapper lacks
    (``output_dim``, ``forward_tokens``, ``embed_texts``, ...) are looked up on the inner module.
    The inner module's state-dict keys gain a ``module.`` prefix.
    """

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> "FrozenTower":
        self.training = mode
        self.module.eval()
        return self

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)


def freeze(module: nn.Module) -> FrozenTower:
    """``module`` with all parameters frozen, kept in eval mode by a :class:`FrozenTower` (idempotent)."""
    return module if isinstance(module, FrozenTower) else FrozenTower(module)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters of ``module`` (only those with ``requires_grad`` if ``trainable_only``)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def build_encoder(spec: Union[str, Mapping[str, Any]], where: str = "", **params: Any) -> nn.Module:
    """An encoder from ``ENCODERS``: ``build_encoder("small-cnn", widths=[16, 32])`` or
    ``build_encoder({"name": "small-cnn", "params": {"widths": [16, 32]}})``; keyword ``params``
    override the spec's. Unknown parameters raise :class:`~alignkit.core.registry.ConfigError` (located by
    ``where``)."""
    if isinstance(spec, str):
        name, base = spec, {}
    else:
        extra = sorted(set(spec) - {"name", "params"})
        if "name" not in spec or extra:
            raise ConfigError(f"an encoder spec is {{'name': ..., 'params': {{...}}}}; got keys {sorted(spec)}"
                              + (f" at {where}" if where else ""))
        name, base = spec["name"], dict(spec.get("params") or {})
    return ENCODERS.build(name, where=where, **{**base, **params})


__all__ = ["SpatialSize", "TextItem", "InnerAttributes", "FrozenTower", "freeze", "count_parameters", "build_encoder"]
