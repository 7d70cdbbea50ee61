"""The installed environment is one that works with the CPU torch here."""
from __future__ import annotations

import importlib.util


def test_torchvision_is_not_installed() -> None:
    # torchvision from PyPI beside the CPU torch 2.13 breaks `import transformers` and MONAI
    # ("operator torchvision::nms does not exist"); LitData, timm and open_clip pull it in.
    assert importlib.util.find_spec("torchvision") is None, "torchvision is installed: uninstall it"
    for pkg in ("litdata", "timm", "open_clip"):
        assert importlib.util.find_spec(pkg) is None, f"{pkg} pulls in torchvision: uninstall it"


def test_core_imports_work() -> None:
    import monai.networks.nets  # noqa: F401
    import torch
    import transformers  # noqa: F401
    assert torch.__version__.startswith("2.13.0")
