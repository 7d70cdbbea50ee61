"""The shared contrastive alignment core: losses, towers, the Lightning module, data, evaluation.

The public names below import their module on first use (``alignkit.core.ClipLoss`` loads the losses, not
Lightning's trainer), so ``import alignkit.core`` is cheap::

    from alignkit.core import AlignmentModule, ClipLoss, ENCODERS, load_config, train
"""
from __future__ import annotations

import importlib
from typing import Any, Dict, List

_PUBLIC: Dict[str, str] = {
    # losses
    **{name: "alignkit.core.losses" for name in (
        "LossOutput", "clip_loss", "multi_positive_infonce_loss", "siglip_loss", "logit_multiplier",
        "clamp_logit_scales_", "ClipLoss", "MultiPositiveInfoNCELoss", "SigLipLoss", "MatryoshkaLoss", "EMATeacher",
        "ITMHead", "sample_hard_negatives")},
    # the alignment module and its optimiser
    "AlignmentModule": "alignkit.core.module", "Tower": "alignkit.core.module", "build_tower": "alignkit.core.module",
    "configure_adamw": "alignkit.core.optim", "warmup_cosine": "alignkit.core.optim",
    # registries
    **{name: "alignkit.core.registry" for name in (
        "Registry", "ConfigError", "MODELS", "ENCODERS", "HEADS", "LOSSES", "DATASETS", "EVALUATORS", "DEMOS",
        "BENCHES", "AUGMENTATIONS", "COMMANDS")},
    # configs and builders
    "load_config": "alignkit.core.config", "RunConfig": "alignkit.core.config",
    "build_encoder": "alignkit.core.encoders.base",
    **{name: "alignkit.core.runner" for name in (
        "build_model", "build_datamodule", "build_trainer", "train", "evaluate", "load_checkpoint")},
    # use outside training
    "AlignedModel": "alignkit.core.api",
}

__all__: List[str] = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'alignkit.core' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(__all__))
