"""The optimiser and learning-rate schedule of every module that trains: AdamW with warm-up + cosine decay.

:func:`configure_adamw` is what a LightningModule's ``configure_optimizers`` returns: AdamW over the
trainable parameters in two groups (weight decay on matrices; none on biases, norms, learned tokens and
temperatures) and a per-step :func:`warmup_cosine` schedule over the run's optimiser steps
(``trainer.estimated_stepping_batches``). The ``optim`` mapping is a config's ``optim`` section:
``lr``, ``weight_decay``, ``betas``, ``eps``, ``warmup_steps``, ``min_lr_ratio``.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

NO_DECAY_NAMES = ("logit", "norm")
"""Parameters whose name contains one of these get no weight decay, whatever their shape."""


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """LR multiplier: ``(step + 1) / warmup`` during warm-up, then ``min + (1 - min) * (1 + cos(pi * t)) / 2`` with
    ``t`` the fraction of the post-warm-up steps done (1 after ``total_steps``)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if total_steps <= warmup_steps:
        return 1.0
    t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


def decay_groups(named: Iterable[Tuple[str, nn.Parameter]], weight_decay: float,
                 skip_prefixes: Sequence[str] = ()) -> List[Dict[str, Any]]:
    """Two AdamW groups of the trainable parameters: ``weight_decay`` on tensors of >= 2 dims, none on the rest
    and on names containing :data:`NO_DECAY_NAMES`; names starting with ``skip_prefixes`` are left out."""
    decay, no_decay = [], []
    for name, p in named:
        if not p.requires_grad or any(name.startswith(s) for s in skip_prefixes):
            continue
        (no_decay if p.ndim < 2 or any(n in name for n in NO_DECAY_NAMES) else decay).append(p)
    return [{"params": decay, "weight_decay": float(weight_decay)}, {"params": no_decay, "weight_decay": 0.0}]


def configure_adamw(module: Any, optim: Mapping[str, Any], *, skip_prefixes: Sequence[str] = (),
                    betas: Sequence[float] = (0.9, 0.98), eps: float = 1e-6,
                    parameters: Optional[Iterable[Tuple[str, nn.Parameter]]] = None) -> Dict[str, Any]:
    """``configure_optimizers`` output for ``module``: AdamW (:func:`decay_groups`) + per-step :func:`warmup_cosine`.

    ``optim`` keys (defaults): ``lr`` (1e-3), ``weight_decay`` (0.05), ``betas`` and ``eps`` (the keyword
    defaults), ``warmup_steps`` (0), ``min_lr_ratio`` (0). ``parameters`` defaults to
    ``module.named_parameters()``. The schedule's length is the trainer's estimated optimiser steps (1 outside
    a trainer).
    """
    named = module.named_parameters() if parameters is None else parameters
    opt = torch.optim.AdamW(decay_groups(named, float(optim.get("weight_decay", 0.05)), skip_prefixes),
                            lr=float(optim.get("lr", 1e-3)), betas=tuple(optim.get("betas", betas)),
                            eps=float(optim.get("eps", eps)))
    trainer = getattr(module, "_trainer", None)
    total = int(module.trainer.estimated_stepping_batches) if trainer is not None else 1
    warm, min_ratio = int(optim.get("warmup_steps", 0)), float(optim.get("min_lr_ratio", 0.0))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, warm, total, min_ratio))
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
