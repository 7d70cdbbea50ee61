"""GR-1 (Wu et al., ICLR 2024, "Unleashing Large-Scale Video Generative Pre-training for Visual Robot
Manipulation"): a GPT-style causal transformer over a history of observations that predicts actions and the
future frame.

Tokens of step ``t`` (``S`` per step, all plus a learned time embedding ``e_t`` and slot embedding):

    [ L(instruction) | S(state_t) | K image tokens per camera | [ACT] | Q x [OBS] ]

``L`` projects the L2-normalised pooled embedding of a frozen core text encoder (memoised per string); the
image tokens are the patch features of a frozen image encoder (a Voltron/MAE export, or any ``ENCODERS``
tower with ``forward_tokens``) mapped to ``width`` by a per-patch 2-layer MLP and pooled by a
:class:`PerceiverResampler` to ``K`` latents, plus a camera embedding; [ACT] and [OBS] are learned queries.
Attention (:func:`gr1_attention_mask`): every token of step ``t`` sees the observation tokens (instruction,
state, image) of the valid steps ``<= t``; queries are seen by nobody else; padded history steps are hidden.

Changes to GR-1 for frozen features of a briefly pretrained encoder on a CPU (what they were measured to do
on BabyAI and Meta-World is in ``docs/robotics.md``):

- the per-patch MLP instead of GR-1's linear projection, with its input multiplied by ``feature_scale``;
- ``instruction_queries``: resampler latents offset by the projected instruction, ``z_0 = Z + W_q l``, so that
  they pool the patches the instruction asks about;
- ``patch_positions``: the resampler is blind to the order of its inputs and a frozen MAE-style encoder need
  not keep where a patch lies (its decoder adds positions again), so a position embedding is added to the
  projected patch tokens: a fixed 2-D sine-cosine one (``"sincos"``) or one trained vector per patch
  (``"learned"``). Instructions such as "the ball on your left" are about position.

Heads: [ACT] -> :class:`~alignkit.domains.robotics.models.action_head.ActionHead` (smooth L1 arm, BCE gripper,
or cross-entropy for discrete actions). [OBS] -> future-frame prediction as in GR-1: the ``Q`` outputs and one
mask token per patch (with 2-D sine-cosine positions) pass a small transformer decoder that predicts the
pixels of every patch of frame ``t + frame_offset`` (:func:`~alignkit.domains.robotics.models.patches.patch_mse`
on target patches standardised when ``norm_pixel_loss``, over steps whose own and target frames are valid).

    L = L_act + frame_weight * L_frame       (objective "policy")
    L = L_frame                              (objective "video": video-only pretraining, no actions needed)

Pretrain with ``objective="video"`` on videos with captions, then fine-tune a module built with the same
architecture and ``objective="policy"`` after ``load_state_dict(pretrained.state_dict())``.

GR-1's own sizes (CALVIN): width 384, 12 layers, 12 heads, history 10, 9 latents (resampler depth 3, 4 heads
of 128) over a frozen MAE ViT-B, CLIP ViT-B/32 text, gripper loss weight 0.01, frames 3 steps ahead.
The defaults here are small, for CPUs.
"""
from __future__ import annotations

from typing import Annotated, Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from alignkit.core.encoders.heads import MLPHead
from alignkit.core.params import NON_NEGATIVE, POSITIVE, OneOf, check_choice
from alignkit.core.registry import MODELS, ConfigError
from alignkit.domains.robotics.models.perceiver import PerceiverResampler, Transformer
from alignkit.domains.robotics.models.action_head import ActionHead, Stats, plain_stats
from alignkit.domains.robotics.models.inputs import Dropout, LossWeight, Size, TextSpec, check_model_section
from alignkit.domains.robotics.models.patches import normalize_patches, patch_mse, patchify, sincos_position_embedding
from alignkit.domains.robotics.models.policy_module import (EncoderSpec, NumActions, PolicyInputs, PolicyModule,
                                                            PolicyOutput, StateDim)

OBJECTIVES = ("policy", "video")
PATCH_POSITIONS = ("sincos", "learned", "none")


def gr1_attention_mask(pad_mask: Tensor, per_step: int, observed: int) -> Tensor:
    """``(B, T*S, T*S)`` bool mask (True = may attend) over ``T`` steps of ``S = per_step`` tokens whose first
    ``observed`` are observation tokens and the rest queries.

    Token ``(t, i)`` attends to ``(t', j)`` iff ``j < observed``, ``t' <= t`` and step ``t'`` is valid
    (``pad_mask[:, t']``), or ``(t', j) == (t, i)`` (so every row has a key)."""
    b, steps = pad_mask.shape
    device = pad_mask.device
    step = torch.arange(steps, device=device).repeat_interleave(per_step)
    slot = torch.arange(per_step, device=device).repeat(steps)
    allowed = (step[None, :] <= step[:, None]) & (slot < observed)[None, :]
    keys = pad_mask.bool().repeat_interleave(per_step, dim=1)  # (B, T*S)
    mask = allowed[None] & keys[:, None, :]
    return mask | torch.eye(steps * per_step, dtype=torch.bool, device=device)[None]


@MODELS.register("gr1")
class GR1Module(PolicyModule):
    """GR-1 on ``LeRobotDataset`` windows (see the module docstring).

    Args:
        cameras: the cameras the policy reads: ``<camera>`` of ``observation.images.<camera>``, or a full feature
            key such as ``observation.image`` (see :func:`~alignkit.domains.robotics.models.inputs.camera_frames`).
        image_encoder: ``ENCODERS`` spec or module with ``forward_tokens`` (default: a tiny Voltron ViT; pass
            ``{"name": "voltron-pretrained", "params": {"path": ...}}`` for a pretrained export).
        freeze_image_encoder: keep it frozen (GR-1) or fine-tune it.
        feature_cache: compute each training frame's frozen features once (see
            :meth:`~alignkit.domains.robotics.models.policy_module.PolicyModule.image_tokens`).
        condition_features: feed the instruction to a Voltron encoder when extracting features.
        text_encoder: frozen core text encoder of the instruction.
        state_dim: ``S`` of ``observation.state`` (0: no state token).
        action_dim, num_actions, gripper_dims, gripper_threshold, gripper_values, stats: see
            :class:`~alignkit.domains.robotics.models.action_head.ActionHead` (``stats`` also standardises the
            state).
        history: the number of steps the policy reads (dataset ``window``).
        width, depth, heads, mlp_ratio, dropout: the causal transformer.
        num_latents, perceiver_depth, perceiver_heads: the resampler (``K = num_latents`` tokens per camera).
        instruction_queries: offset the resampler's latents by the projected instruction (see above).
        patch_positions: the position embedding added to the projected patch tokens before the resampler, which
            is blind to token order (see above): ``"sincos"`` (``True``; fixed 2-D sine-cosine), ``"learned"`` (one
            learned vector per patch, drawn from ``N(0, learned_position_std^2)``) or ``"none"`` (``False``).
        learned_position_std: the initial scale of ``"learned"`` positions.
        feature_scale: multiplies the frozen features before the per-patch MLP (see above).
        objective: ``"policy"`` (actions + frames) or ``"video"`` (frames only).
        predict_frames: add the [OBS] queries and the frame loss.
        frame_camera: the camera whose future frame is predicted (default the first).
        frame_offset: predict frame ``t + frame_offset``.
        image_size, frame_patch_size: frames are ``image_size`` square, predicted in patches of this side.
        num_obs_queries: ``Q`` (default ``num_latents + 1`` as GR-1).
        frame_decoder_depth: layers of the frame decoder.
        norm_pixel_loss: standardise each target patch (MAE); leave it off for images of flat cells (BabyAI's
            symbolic view), whose standardised patches are all zero.
        arm_weight, gripper_weight, frame_weight: loss weights.
        optim: see :func:`alignkit.core.optim.configure_adamw` (betas (0.9, 0.95) and eps 1e-8 unless set).
        model: the config's model section (see :func:`~alignkit.domains.robotics.models.inputs.check_model_section`).
            Without ``stats``, a fit from a config takes them from the training dataset
            (:meth:`~alignkit.domains.robotics.models.policy_module.PolicyModule.setup`).
    """

    def __init__(self, cameras: Sequence[str] = ("image",), image_encoder: EncoderSpec = "voltron",
                 freeze_image_encoder: bool = True, feature_cache: bool = False, condition_features: bool = False,
                 text_encoder: TextSpec = "minilm-l6", state_dim: StateDim = 0, action_dim: Size = 7,
                 num_actions: NumActions = 0, gripper_dims: Sequence[int] = (), gripper_threshold: float = 0.0,
                 gripper_values: Tuple[float, float] = (-1.0, 1.0), stats: Optional[Stats] = None, history: Size = 4,
                 width: Size = 64, depth: Size = 2, heads: Size = 4, mlp_ratio: Annotated[float, POSITIVE] = 4.0,
                 dropout: Dropout = 0.0, num_latents: Size = 6, perceiver_depth: Size = 2, perceiver_heads: Size = 4,
                 instruction_queries: bool = True,
                 patch_positions: Union[bool, Annotated[str, OneOf(PATCH_POSITIONS)]] = True,
                 learned_position_std: Annotated[float, NON_NEGATIVE] = 0.5,
                 feature_scale: Annotated[float, POSITIVE] = 1.0,
                 objective: Annotated[str, OneOf(OBJECTIVES)] = "policy",
                 predict_frames: bool = True, frame_camera: Optional[str] = None, frame_offset: Size = 1,
                 image_size: Size = 64, frame_patch_size: Size = 8, num_obs_queries: Optional[Size] = None,
                 frame_decoder_depth: Size = 1, norm_pixel_loss: bool = True, arm_weight: LossWeight = 1.0,
                 gripper_weight: LossWeight = 0.01, frame_weight: LossWeight = 0.1,
                 optim: Optional[Dict[str, Any]] = None, model: Optional[Dict[str, Any]] = None):
        stats = plain_stats(stats)  # saved with the hyperparameters
        super().__init__(cameras, image_encoder, freeze_image_encoder, feature_cache, condition_features,
                         text_encoder, state_dim, stats, arm_weight, gripper_weight, optim)
        check_model_section(model, "gr1")
        self.save_hyperparameters(ignore=["model", "image_encoder"] if isinstance(image_encoder, nn.Module)
                                  else ["model"])
        check_choice(objective, OBJECTIVES, "gr1 objective")
        if objective == "video" and not predict_frames:
            raise ConfigError("gr1 objective 'video' trains the frame prediction only: set predict_frames true")
        if history < 1 or frame_offset < 1:
            raise ConfigError(f"gr1 needs history >= 1 and frame_offset >= 1; got {history}, {frame_offset}")
        if image_size % frame_patch_size:
            raise ConfigError(f"gr1 image_size {image_size} must be a multiple of frame_patch_size {frame_patch_size}")
        self.history, self.objective, self.predict_frames = int(history), objective, predict_frames
        self.frame_camera = frame_camera or self.cameras[0]
        if self.frame_camera not in self.cameras:
            raise ConfigError(f"gr1 frame_camera {frame_camera!r} is not one of the cameras {self.cameras}")
        self.frame_offset, self.image_size, self.frame_patch_size = frame_offset, image_size, frame_patch_size
        self.norm_pixel_loss, self.frame_weight = norm_pixel_loss, float(frame_weight)
        self.feature_scale = float(feature_scale)

        self.lang_proj = nn.Linear(int(self.text.output_dim), width)
        self.state_proj = nn.Linear(state_dim, width) if state_dim else None
        self.feature_proj = MLPHead(self.feature_dim, width, hidden_dim=2 * width, num_layers=2)
        self.resampler = PerceiverResampler(width, num_latents=num_latents, depth=perceiver_depth,
                                            heads=perceiver_heads, dim_head=width // perceiver_heads)
        self.query_proj = nn.Linear(int(self.text.output_dim), width) if instruction_queries else None
        self.patch_positions = {True: "sincos", False: "none"}.get(patch_positions, patch_positions)
        check_choice(self.patch_positions, PATCH_POSITIONS, "gr1 patch_positions")
        self._patch_pos: Dict[int, Tensor] = {}
        self.learned_positions = None
        if self.patch_positions == "learned":
            with torch.no_grad():  # the encoder's patch count at the policy's image size
                probe = torch.zeros(1, 3, image_size, image_size)
                patches = self.encode_frames(probe, [""]).shape[1]
            self.learned_positions = nn.Parameter(torch.randn(patches, width) * learned_position_std)
        self.camera_embed = nn.Parameter(torch.randn(len(self.cameras), width) * 0.02)
        self.observed = 1 + (1 if state_dim else 0) + num_latents * len(self.cameras)
        self.num_obs_queries = (num_obs_queries or num_latents + 1) if predict_frames else 0
        self.queries = nn.Parameter(torch.randn(1 + self.num_obs_queries, width) * 0.02)  # [ACT], [OBS] x Q
        self.per_step = self.observed + 1 + self.num_obs_queries
        self.time_embed = nn.Parameter(torch.randn(self.history, width) * 0.02)
        self.slot_embed = nn.Parameter(torch.randn(self.per_step, width) * 0.02)
        self.embed_norm = nn.LayerNorm(width)
        self.transformer = Transformer(width, depth, heads, mlp_ratio, dropout)
        self.action_head = ActionHead(width, action_dim, num_actions, gripper_dims, gripper_threshold,
                                      gripper_values, stats)
        if predict_frames:
            grid = image_size // frame_patch_size
            self.frame_in = nn.Linear(width, width)
            self.frame_mask_token = nn.Parameter(torch.randn(width) * 0.02)
            self.register_buffer("frame_pos", sincos_position_embedding(width, grid, grid), persistent=False)
            self.frame_decoder = Transformer(width, frame_decoder_depth, heads, mlp_ratio)
            self.frame_head = nn.Linear(width, frame_patch_size * frame_patch_size * 3)

    # ------------------------------------------------------------------ forward
    def observation_tokens(self, inputs: PolicyInputs) -> Tensor:
        """``(B, T, observed, width)``: instruction, state and image tokens of every step."""
        b, t = inputs.pad_mask.shape
        instruction = self.instruction_embedding(inputs.texts)
        lang = self.lang_proj(instruction)
        tokens = [lang[:, None, None].expand(b, t, 1, -1)]
        offset = None
        if self.query_proj is not None:
            offset = self.query_proj(instruction)[:, None].expand(b, t, -1).flatten(0, 1)
        if self.state_proj is not None:
            if inputs.state is None:
                raise KeyError(f"gr1 was built with state_dim {self.state_dim} but the batch has no observation.state")
            tokens.append(self.state_proj(self.normalized_state(inputs.state.to(self.device)))[:, :, None])
        # padded history steps are hidden from every other token: their image tokens are left zero, not computed
        valid = inputs.pad_mask.to(self.device).flatten()
        keep = None if bool(valid.all()) else valid.nonzero().squeeze(1)
        if offset is not None and keep is not None:
            offset = offset.index_select(0, keep)
        for i, camera in enumerate(self.cameras):
            feats = self.image_tokens(inputs, camera).flatten(0, 1)
            feats = self.feature_proj((feats if keep is None else feats.index_select(0, keep)) * self.feature_scale)
            if self.patch_positions != "none":
                feats = feats + self.patch_position_embedding(feats.shape[-2]).to(feats)
            latents = self.resampler(feats, offset=offset)
            if keep is not None:
                latents = latents.new_zeros(b * t, *latents.shape[1:]).index_copy(0, keep, latents)
            tokens.append(latents.view(b, t, *latents.shape[1:]) + self.camera_embed[i])
        return torch.cat(tokens, dim=2)

    def patch_position_embedding(self, n: int) -> Tensor:
        """``(n, width)`` position embedding of ``n`` patch tokens: the learned table (``"learned"``), or the fixed
        2-D sine-cosine over a square grid when ``n`` is a square, else over one row of ``n`` (memoised per ``n``)."""
        if self.learned_positions is not None:
            if n != self.learned_positions.shape[0]:
                raise ValueError(f"gr1 learned {self.learned_positions.shape[0]} patch positions (image_size "
                                 f"{self.image_size}); the image encoder gave {n} patches")
            return self.learned_positions
        if n not in self._patch_pos:
            side = int(round(n ** 0.5))
            grid = (side, side) if side * side == n else (1, n)
            self._patch_pos[n] = sincos_position_embedding(self.queries.shape[-1], *grid).to(self.device)
        return self._patch_pos[n]

    def forward(self, inputs: PolicyInputs) -> PolicyOutput:
        """Actions for all ``T`` steps and the [OBS] outputs ``(B, T, Q, width)`` (None without frame prediction)."""
        b, t = inputs.pad_mask.shape
        if t > self.history:
            raise ValueError(f"gr1 was built for a history of {self.history} steps; got windows of {t}")
        obs = self.observation_tokens(inputs)
        x = torch.cat([obs, self.queries.expand(b, t, -1, -1)], dim=2)
        x = self.embed_norm(x + self.time_embed[:t, None] + self.slot_embed)
        mask = gr1_attention_mask(inputs.pad_mask.to(self.device), self.per_step, self.observed)
        h = self.transformer(x.flatten(1, 2), mask).view(b, t, self.per_step, -1)
        return PolicyOutput(actions=self.action_head(h[:, :, self.observed]),
                            obs_tokens=h[:, :, self.observed + 1:] if self.predict_frames else None)

    def predict_frame_patches(self, obs_tokens: Tensor) -> Tensor:
        """[OBS] outputs ``(B, T, Q, width)`` -> predicted patches ``(B, T, N, p * p * 3)`` of frame
        ``t + frame_offset``."""
        b, t, q = obs_tokens.shape[:3]
        queries = (self.frame_mask_token + self.frame_pos).expand(b * t, -1, -1)
        h = self.frame_decoder(torch.cat([self.frame_in(obs_tokens).flatten(0, 1), queries], dim=1))
        return self.frame_head(h[:, q:]).view(b, t, queries.shape[1], -1)

    def frame_loss(self, obs_tokens: Tensor, inputs: PolicyInputs) -> Tensor:
        """:func:`patch_mse` between predicted and true patches of frame ``t + frame_offset`` over the steps where
        both frames are valid (zero when the window is not longer than ``frame_offset``)."""
        frames = inputs.images[self.frame_camera].to(self.device)
        if tuple(frames.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(f"gr1 predicts {self.image_size}x{self.image_size} frames (image_size); camera "
                             f"{self.frame_camera!r} has {tuple(frames.shape[-2:])}")
        k, t = self.frame_offset, frames.shape[1]
        if t <= k:
            return obs_tokens.sum() * 0.0
        pred = self.predict_frame_patches(obs_tokens[:, :t - k])
        target = patchify(frames[:, k:], self.frame_patch_size)
        if self.norm_pixel_loss:
            target = normalize_patches(target)
        valid = inputs.pad_mask[:, :t - k] & inputs.pad_mask[:, k:]
        return patch_mse(pred, target, valid.to(self.device)[..., None].expand(-1, -1, target.shape[2]))

    def compute_loss(self, batch: Mapping[str, Any]) -> Dict[str, Tensor]:
        """``{"loss", "action_loss", "frame", ...}``: see the module docstring."""
        inputs = PolicyInputs.from_batch(batch, self.cameras)
        out = self(inputs)
        terms: Dict[str, Tensor] = {}
        loss = torch.zeros((), device=self.device)
        if self.objective == "policy":
            terms.update(self.action_terms(out, batch["action"], inputs.pad_mask))
            loss = loss + terms["action_loss"]
        if self.predict_frames:
            terms["frame"] = self.frame_loss(out.obs_tokens, inputs)
            loss = loss + (terms["frame"] if self.objective == "video" else self.frame_weight * terms["frame"])
        terms["loss"] = loss
        return terms
