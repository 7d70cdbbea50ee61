"""Fill the registries: the core and every domain package whose dependencies are installed.

A domain whose optional dependencies are missing is left out; `alignkit configs` and
config validation then name the extra to install (``pip install alignkit[medical]``).
"""
from __future__ import annotations

import importlib
from typing import Dict

DOMAINS = ("medical", "pointcloud", "robotics")
_unavailable: Dict[str, str] = {}


def load_all() -> Dict[str, str]:
    """Register everything importable; returns ``{domain: reason}`` for domains that could not be imported."""
    from alignkit.core import register_core
    register_core()
    for domain in DOMAINS:
        if domain in _unavailable:
            continue
        try:
            importlib.import_module(f"alignkit.domains.{domain}")
        except ImportError as exc:  # an optional dependency of the domain is missing
            _unavailable[domain] = f"{exc} (install it with: pip install 'alignkit[{domain}]')"
    return dict(_unavailable)
