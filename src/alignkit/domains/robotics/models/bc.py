"""Language-conditioned behaviour cloning (the baseline of GR-1): an MLP on the current observation only.

    a_t = ActionHead(MLP([mean_n v_{c,n} for each camera c ; normalize(text(instruction)) ; standardise(s_t)]))

with ``v_{c,n}`` the patch features of the same frozen image encoder as GR-1 and the same frozen instruction
embedding; no history, no perceiver, no frame prediction. Losses and decoding are GR-1's
(:class:`~alignkit.domains.robotics.models.action_head.ActionHead`).
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from alignkit.core.encoders.heads import MLPHead
from alignkit.core.registry import MODELS
from alignkit.domains.robotics.models.action_head import ActionHead, Stats, plain_stats
from alignkit.domains.robotics.models.inputs import Dropout, LossWeight, Size, TextSpec, check_model_section
from alignkit.domains.robotics.models.policy_module import (EncoderSpec, NumActions, PolicyInputs, PolicyModule,
                                                            PolicyOutput, StateDim)


@MODELS.register("lcbc")
class LCBCModule(PolicyModule):
    """Language-conditioned BC (see the module docstring). Shared arguments as
    :class:`~alignkit.domains.robotics.models.gr1.GR1Module`; ``hidden_dim``, ``num_layers``, ``dropout``
    shape the MLP trunk (LayerNorm-GELU between layers)."""

    history = 1

    def __init__(self, cameras: Sequence[str] = ("image",), image_encoder: EncoderSpec = "voltron",
                 freeze_image_encoder: bool = True, feature_cache: bool = False, condition_features: bool = False,
                 text_encoder: TextSpec = "minilm-l6", state_dim: StateDim = 0, action_dim: Size = 7,
                 num_actions: NumActions = 0, gripper_dims: Sequence[int] = (), gripper_threshold: float = 0.0,
                 gripper_values: Tuple[float, float] = (-1.0, 1.0), stats: Optional[Stats] = None,
                 hidden_dim: Size = 256, num_layers: Size = 2, dropout: Dropout = 0.0, arm_weight: LossWeight = 1.0,
                 gripper_weight: LossWeight = 0.01, optim: Optional[Dict[str, Any]] = None,
                 model: Optional[Dict[str, Any]] = None):
        stats = plain_stats(stats)  # saved with the hyperparameters
        super().__init__(cameras, image_encoder, freeze_image_encoder, feature_cache, condition_features,
                         text_encoder, state_dim, stats, arm_weight, gripper_weight, optim)
        check_model_section(model, "lcbc")
        self.save_hyperparameters(ignore=["model", "image_encoder"] if isinstance(image_encoder, nn.Module)
                                  else ["model"])
        in_dim = self.feature_dim * len(self.cameras) + int(self.text.output_dim) + self.state_dim
        self.trunk = MLPHead(in_dim, hidden_dim, hidden_dim=hidden_dim, num_layers=num_layers, dropout=dropout,
                             layer_norm=True)
        self.action_head = ActionHead(hidden_dim, action_dim, num_actions, gripper_dims, gripper_threshold,
                                      gripper_values, stats)

    def forward(self, inputs: PolicyInputs) -> PolicyOutput:
        """Actions for the last step of each window (``K = 1``)."""
        parts = [self.image_tokens(inputs, c, last=True)[:, 0].mean(1) for c in self.cameras]
        parts.append(self.instruction_embedding(inputs.texts))
        if self.state_dim:
            if inputs.state is None:
                raise KeyError(f"lcbc was built with state_dim {self.state_dim} but the batch has no observation.state")
            parts.append(self.normalized_state(inputs.state[:, -1].to(self.device)))
        features = self.trunk(torch.cat(parts, dim=1))
        return PolicyOutput(actions=self.action_head(features[:, None]))
