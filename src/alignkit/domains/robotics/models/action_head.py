"""The action head of the language-conditioned policies (GR-1, BC): features -> actions, their loss and decoding.

A dataset ``action`` ``(B, T, A)`` is split into *arm* dimensions (continuous, standardised with the dataset's
``stats`` and scored by smooth L1) and *gripper* dimensions (``gripper_dims``; binary targets
``a > gripper_threshold`` scored by BCE on logits; decoded to ``gripper_values[0]`` (closed-logit below 0) or
``gripper_values[1]``). With ``num_actions > 0`` the action is one integer per step (e.g. BabyAI's 7 actions,
``A = 1``) scored by cross-entropy. The action loss is

    L_act = arm_weight * L_arm + gripper_weight * L_gripper + L_ce

averaged over the valid (non-padded) steps a model predicts (the weights are the policy's,
:meth:`~alignkit.domains.robotics.models.policy_module.PolicyModule.action_terms`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alignkit.core.encoders.heads import MLPHead
from alignkit.core.registry import ConfigError

Stats = Mapping[str, Mapping[str, Sequence[float]]]
"""LeRobot ``stats.json`` content: ``{feature: {"mean": [...], "std": [...], ...}}``."""


@dataclass
class ActionPrediction:
    """Per-step action outputs over ``K`` steps: ``arm`` ``(B, K, A_arm)`` in standardised units, ``gripper``
    ``(B, K, G)`` logits, ``logits`` ``(B, K, num_actions)`` for discrete actions (unused fields are None)."""

    arm: Optional[Tensor] = None
    gripper: Optional[Tensor] = None
    logits: Optional[Tensor] = None

    @property
    def steps(self) -> int:
        return next(t for t in (self.arm, self.gripper, self.logits) if t is not None).shape[1]


def masked_mean(values: Tensor, valid: Tensor) -> Tensor:
    """``sum(values * valid) / max(1, sum(valid))`` over all elements (``valid`` broadcast to ``values``)."""
    w = valid.to(values.dtype).expand_as(values)
    return (values * w).sum() / w.sum().clamp_min(1.0)


def stats_vector(stats: Optional[Stats], key: str, name: str, dims: int, default: float) -> Tensor:
    """``stats[key][name]`` as a float32 ``(dims,)`` tensor, ``default`` everywhere when absent; ConfigError when
    it has another number of values."""
    values = ((stats or {}).get(key) or {}).get(name)
    if values is None:
        return torch.full((dims,), default)
    t = torch.as_tensor(np.asarray(values, dtype=np.float32)).flatten()
    if t.numel() != dims:
        raise ConfigError(f"stats['{key}']['{name}'] has {t.numel()} values; the model has {dims} dimensions")
    return t


def plain_stats(stats: Optional[Stats]) -> Optional[Dict[str, Dict[str, List[float]]]]:
    """The ``mean``/``std`` of ``action`` and ``observation.state`` in ``stats`` as float lists (what a policy
    uses, in a form checkpoints load with ``weights_only=True``); None stays None."""
    if stats is None:
        return None
    return {key: {name: np.asarray(values, dtype=np.float64).ravel().tolist()
                  for name, values in stats[key].items() if name in ("mean", "std")}
            for key in ("action", "observation.state") if key in stats}


class ActionHead(nn.Module):
    """Feature ``(B, K, in_dim)`` -> :class:`ActionPrediction` through a 2-layer GELU MLP; scores and decodes actions.

    Args:
        action_dim: ``A`` of the dataset's actions (1 for discrete actions).
        num_actions: > 0 for one discrete action per step with this many choices.
        gripper_dims: indices (negative allowed) of the binary gripper dimensions among the ``A``.
        gripper_threshold, gripper_values: binary target ``a > threshold``; decoded values (off, on).
        stats: LeRobot ``stats.json`` content; ``stats["action"]["mean"/"std"]`` standardise the arm dimensions.
    """

    def __init__(self, in_dim: int, action_dim: int, num_actions: int = 0, gripper_dims: Sequence[int] = (),
                 gripper_threshold: float = 0.0, gripper_values: Tuple[float, float] = (-1.0, 1.0),
                 stats: Optional[Stats] = None):
        super().__init__()
        if num_actions and (action_dim != 1 or gripper_dims):
            raise ConfigError(f"discrete actions (num_actions={num_actions}) need action_dim 1 and no gripper_dims; "
                              f"got action_dim {action_dim}, gripper_dims {list(gripper_dims)}")
        if any(not -action_dim <= d < action_dim for d in gripper_dims):
            raise ConfigError(f"gripper_dims {list(gripper_dims)} out of range for action_dim {action_dim}")
        grip = sorted({d % action_dim for d in gripper_dims})
        self.action_dim, self.num_actions = action_dim, num_actions
        self.gripper_dims = grip
        self.arm_dims = [d for d in range(action_dim) if d not in grip] if not num_actions else []
        self.gripper_threshold = float(gripper_threshold)
        self.register_buffer("gripper_values", torch.tensor([float(v) for v in gripper_values]))
        self.register_buffer("arm_mean", torch.zeros(len(self.arm_dims)))
        self.register_buffer("arm_std", torch.ones(len(self.arm_dims)))
        self.set_stats(stats)
        out = num_actions or len(self.arm_dims) + len(grip)
        self.mlp = MLPHead(in_dim, out, hidden_dim=in_dim, num_layers=2)

    def set_stats(self, stats: Optional[Stats]) -> None:
        """Standardise the arm dimensions with ``stats["action"]["mean"/"std"]`` (0 and 1 where absent)."""
        self.arm_mean.copy_(stats_vector(stats, "action", "mean", self.action_dim, 0.0)[self.arm_dims])
        self.arm_std.copy_(stats_vector(stats, "action", "std", self.action_dim, 1.0).clamp_min(1e-6)[self.arm_dims])

    def forward(self, features: Tensor) -> ActionPrediction:
        y = self.mlp(features)
        if self.num_actions:
            return ActionPrediction(logits=y)
        n_arm = len(self.arm_dims)
        return ActionPrediction(arm=y[..., :n_arm] if n_arm else None,
                                gripper=y[..., n_arm:] if self.gripper_dims else None)

    def loss(self, pred: ActionPrediction, action: Tensor, valid: Tensor) -> Dict[str, Tensor]:
        """Unweighted terms over the valid steps: ``arm`` (smooth L1 on standardised arm actions), ``gripper``
        (BCE), ``ce`` and ``accuracy`` (discrete). ``action`` ``(B, K, A)``, ``valid`` ``(B, K)`` bool."""
        if action.shape[-1] != self.action_dim:
            raise ValueError(f"actions have {action.shape[-1]} dimensions; the model was built for action_dim "
                             f"{self.action_dim}")
        terms: Dict[str, Tensor] = {}
        if pred.logits is not None:
            target = action[..., 0].round().long()
            if target.min() < 0 or target.max() >= self.num_actions:
                raise ValueError(f"discrete actions must lie in [0, {self.num_actions}); got "
                                 f"[{int(target.min())}, {int(target.max())}]")
            ce = F.cross_entropy(pred.logits.transpose(1, 2), target, reduction="none")
            terms["ce"] = masked_mean(ce, valid)
            terms["accuracy"] = masked_mean((pred.logits.argmax(-1) == target).float(), valid).detach()
        if pred.arm is not None:
            target = (action[..., self.arm_dims] - self.arm_mean) / self.arm_std
            terms["arm"] = masked_mean(F.smooth_l1_loss(pred.arm, target, reduction="none"), valid[..., None])
        if pred.gripper is not None:
            target = (action[..., self.gripper_dims] > self.gripper_threshold).to(pred.gripper.dtype)
            bce = F.binary_cross_entropy_with_logits(pred.gripper, target, reduction="none")
            terms["gripper"] = masked_mean(bce, valid[..., None])
        return terms

    def decode(self, pred: ActionPrediction, temperature: float = 0.0,
               generator: Optional[torch.Generator] = None) -> Tensor:
        """Environment actions ``(B, K, A)``: arm de-standardised, gripper ``gripper_values[logit > 0]``, discrete
        the argmax (as float), or with ``temperature > 0`` a sample of ``softmax(logits / temperature)``."""
        if pred.logits is not None:
            if temperature > 0:
                probs = torch.softmax(pred.logits.float() / temperature, dim=-1)
                flat = torch.multinomial(probs.flatten(0, -2).cpu(), 1, generator=generator)
                return flat.view(*probs.shape[:-1], 1).float().to(pred.logits.device)
            return pred.logits.argmax(-1, keepdim=True).float()
        ref = pred.arm if pred.arm is not None else pred.gripper
        out = ref.new_zeros(*ref.shape[:-1], self.action_dim)
        if pred.arm is not None:
            out[..., self.arm_dims] = pred.arm * self.arm_std + self.arm_mean
        if pred.gripper is not None:
            out[..., self.gripper_dims] = self.gripper_values[(pred.gripper > 0).long()]
        return out
