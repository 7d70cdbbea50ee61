"""Language-conditioned policies: the action head and training base shared by GR-1 and the BC baseline, and
:class:`LanguagePolicy`, which runs a trained policy in (vectorised) environments.

Actions. A dataset ``action`` ``(B, T, A)`` is split into *arm* dimensions (continuous, standardised with the
dataset's ``stats`` and scored by smooth L1) and *gripper* dimensions (``gripper_dims``; binary targets
``a > gripper_threshold`` scored by BCE on logits; decoded to ``gripper_values[0]`` (closed-logit below 0)
or ``gripper_values[1]``). With ``num_actions > 0`` the action is one integer per step (e.g. BabyAI's 7 actions,
``A = 1``) scored by cross-entropy. The action loss is

    L_act = arm_weight * L_arm + gripper_weight * L_gripper + L_ce

averaged over the valid (non-padded) steps a model predicts.

The environment interface (``reset(instruction)``, ``act(obs_batch)``) is that of the rollout helpers:
observations are ``{"images": {camera: uint8 (N, H, W, 3)}, "state": (N, S)}`` or a list of ``N`` such dicts
with unbatched arrays.
"""
from __future__ import annotations

from collections.abc import Mapping as MappingABC
from dataclasses import dataclass
from typing import Any, Dict, Hashable, List, Mapping, Optional, Sequence, Tuple, Union

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alignkit.core.encoders import MLPHead, build_encoder, freeze
from alignkit.core.registry import ConfigError
from alignkit.domains.robotics.models.voltron import TextSpec, camera_frames, configure_adamw, frozen_text_tower

EncoderSpec = Union[str, Mapping[str, Any], nn.Module]
Stats = Mapping[str, Mapping[str, Sequence[float]]]


# =========================================================================== actions
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


def _stat(stats: Optional[Stats], key: str, name: str, dims: int, default: float) -> Tensor:
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
        self.arm_mean.copy_(_stat(stats, "action", "mean", self.action_dim, 0.0)[self.arm_dims])
        self.arm_std.copy_(_stat(stats, "action", "std", self.action_dim, 1.0).clamp_min(1e-6)[self.arm_dims])

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


# =========================================================================== training base
@dataclass
class PolicyInputs:
    """One batch of observation windows: ``images`` camera -> ``(B, T, C, H, W)`` in [0, 1]; ``texts`` ``B``
    instructions; ``state`` ``(B, T, S)`` or None; ``pad_mask`` ``(B, T)`` bool (False on padded history);
    ``frame_ids`` ``(B, T, 2)`` long ``(episode_index, frame_index)`` of every step, or None (keys of the
    feature cache); ``features`` camera -> ``(B, T, N, D)`` patch features already computed for ``images``
    (:class:`LanguagePolicy` encodes each new frame once and keeps the window's features), or None."""

    images: Dict[str, Tensor]
    texts: List[str]
    state: Optional[Tensor] = None
    pad_mask: Optional[Tensor] = None
    frame_ids: Optional[Tensor] = None
    features: Optional[Dict[str, Tensor]] = None

    def __post_init__(self) -> None:
        ref = next(iter(self.images.values()))
        if self.pad_mask is None:
            self.pad_mask = torch.ones(ref.shape[:2], dtype=torch.bool, device=ref.device)
        self.pad_mask = self.pad_mask.bool()

    @classmethod
    def from_batch(cls, batch: Mapping[str, Any], cameras: Sequence[str]) -> "PolicyInputs":
        """From a ``LeRobotDataset`` batch (``observation.images.<camera>``, ``observation.state``, ``task``,
        ``pad_mask``; ``episode_index`` and ``frame_index`` of the last step give ``frame_ids``: step ``j`` of
        a ``T``-step window shows frame ``max(0, frame_index - (T - 1 - j))``, as the dataset pads history
        with the first frame)."""
        images = camera_frames(batch, cameras)
        frame_ids = None
        if "episode_index" in batch and "frame_index" in batch:
            steps = next(iter(images.values())).shape[1]
            last = torch.as_tensor(batch["frame_index"]).view(-1, 1)
            frame = (last - torch.arange(steps - 1, -1, -1)).clamp_min(0)
            frame_ids = torch.stack([torch.as_tensor(batch["episode_index"]).view(-1, 1).expand_as(frame), frame], -1)
        return cls(images=images, texts=list(batch["task"]), state=batch.get("observation.state"),
                   pad_mask=batch.get("pad_mask"), frame_ids=frame_ids)


@dataclass
class PolicyOutput:
    """``actions`` over the last ``actions.steps`` steps of the window; ``obs_tokens`` ``(B, T, Q, W)`` (GR-1's
    [OBS] outputs, for frame prediction) or None."""

    actions: ActionPrediction
    obs_tokens: Optional[Tensor] = None


def build_image_encoder(spec: EncoderSpec, frozen: bool) -> nn.Module:
    """An image encoder with ``forward_tokens`` (``(B, C, H, W) -> (B, N, C')``): an ``ENCODERS`` spec
    (e.g. ``{"name": "voltron-pretrained", "params": {"path": ...}}``, ``"small-cnn"``) or a module; frozen
    (kept in eval mode, no gradients) when ``frozen``."""
    encoder = spec if isinstance(spec, nn.Module) else build_encoder(spec, where="image_encoder")
    if not hasattr(encoder, "forward_tokens"):
        raise ConfigError(f"image_encoder {type(encoder).__name__} has no forward_tokens (patch features); use "
                          f"voltron, voltron-pretrained, monai-vit or a convolutional tower")
    return freeze(encoder) if frozen else encoder


class FeatureCache:
    """Frozen features of frames by key, kept on the CPU in float16 rows of one growing tensor per feature shape (one
    per camera resolution): a batch's lookup is a single ``index_select`` instead of stacking its 256 separate
    tensors (measured: a CPU training step of the BabyAI GR-1 went from 0.130 s to 0.122 s)."""

    def __init__(self) -> None:
        self.rows: Dict[Hashable, Tuple[Tuple[int, ...], int]] = {}
        self.stores: Dict[Tuple[int, ...], Tensor] = {}
        self.used: Dict[Tuple[int, ...], int] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def __contains__(self, key: Hashable) -> bool:
        return key in self.rows

    def add(self, keys: Sequence[Hashable], values: Tensor) -> None:
        """Store ``values[i]`` under ``keys[i]``."""
        values = values.half().cpu()
        shape = tuple(values.shape[1:])
        start = self.used.get(shape, 0)
        end = start + len(keys)
        store = self.stores.get(shape)
        if store is None or end > store.shape[0]:
            grown = values.new_empty((max(1024, end, 2 * (0 if store is None else store.shape[0])), *shape))
            if store is not None:
                grown[:start] = store[:start]
            self.stores[shape] = store = grown
        store[start:end] = values
        self.used[shape] = end
        self.rows.update((k, (shape, start + i)) for i, k in enumerate(keys))

    def get(self, keys: Sequence[Hashable]) -> Tensor:
        """``(len(keys), ...)`` float16 features of ``keys`` (all present, of one shape)."""
        entries = [self.rows[k] for k in keys]
        shapes = {shape for shape, _ in entries}
        if len(shapes) != 1:
            raise ValueError(f"feature cache lookup mixes feature shapes {sorted(shapes)}; look up one camera at a time")
        rows = torch.tensor([row for _, row in entries], dtype=torch.long)
        return self.stores[shapes.pop()].index_select(0, rows)

    def clear(self) -> None:
        self.rows.clear()
        self.stores.clear()
        self.used.clear()


class PolicyModule(L.LightningModule):
    """Base of the language-conditioned policies (GR-1, BC): frozen instruction embedding, image patch features,
    state standardisation, the action head and its loss, optimiser, Lightning steps and :meth:`predict_action`.

    Subclasses build ``self.action_head`` (an :class:`ActionHead`) and implement ``forward(inputs) ->
    PolicyOutput``; ``history`` is the number of observation steps the policy reads.
    """

    history: int = 1

    def __init__(self, cameras: Sequence[str], image_encoder: EncoderSpec, freeze_image_encoder: bool,
                 feature_cache: bool, condition_features: bool, text_encoder: TextSpec, state_dim: int,
                 stats: Optional[Stats], arm_weight: float, gripper_weight: float, optim: Optional[Dict[str, Any]]):
        super().__init__()
        if not cameras:
            raise ConfigError("a policy needs at least one camera (the <camera> of observation.images.<camera>)")
        self.cameras = list(cameras)
        self.text = frozen_text_tower(text_encoder)
        self.image_encoder = build_image_encoder(image_encoder, frozen=freeze_image_encoder)
        self.frozen_image_encoder = freeze_image_encoder
        if feature_cache and not freeze_image_encoder:
            raise ConfigError("feature_cache needs freeze_image_encoder: a trained encoder's features change")
        self.feature_cache: Optional[FeatureCache] = FeatureCache() if feature_cache else None
        self.condition_features = condition_features
        if condition_features and not hasattr(self.image_encoder, "extract_features"):
            raise ConfigError("condition_features needs a language-conditioned image encoder (voltron)")
        self.feature_dim = int(getattr(self.image_encoder, "map_channels", self.image_encoder.output_dim))
        self.state_dim = int(state_dim)
        self.register_buffer("state_mean", torch.zeros(self.state_dim))
        self.register_buffer("state_std", torch.ones(self.state_dim))
        self._set_state_stats(stats)
        self.stats_given = stats is not None
        self.arm_weight, self.gripper_weight = float(arm_weight), float(gripper_weight)
        self.optim_cfg = dict(optim or {})
        self.action_head: ActionHead

    # ------------------------------------------------------------------ dataset statistics
    def set_stats(self, stats: Stats) -> None:
        """Standardise states and arm actions with a dataset's ``stats`` (``LeRobotDataset.stats``); they are kept
        in the buffers (checkpoints) and the hyperparameters (``stats``)."""
        plain = plain_stats(stats)
        self._set_state_stats(plain)
        self.action_head.set_stats(plain)
        self.hparams["stats"] = plain
        self.stats_given = True

    def _set_state_stats(self, stats: Optional[Stats]) -> None:
        if self.state_dim:  # a policy without a state token ignores the dataset's state statistics
            self.state_mean.copy_(_stat(stats, "observation.state", "mean", self.state_dim, 0.0))
            self.state_std.copy_(_stat(stats, "observation.state", "std", self.state_dim, 1.0).clamp_min(1e-6))

    def setup(self, stage: str) -> None:
        """At the start of a fit from a config (``alignkit train``), a policy built without ``stats`` takes them
        from the DataModule's training dataset (:meth:`set_stats`)."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        if stage == "fit" and not self.stats_given and datamodule is not None:
            stats = getattr(datamodule.train_dataset, "stats", None)
            if stats:
                self.set_stats(stats)

    # ------------------------------------------------------------------ features
    def instruction_embedding(self, texts: Sequence[str]) -> Tensor:
        """``(B, d_text)`` L2-normalised pooled embeddings of the instructions (frozen, memoised per string)."""
        return F.normalize(self.text(list(texts)).to(self.device).float(), dim=-1)

    def encode_frames(self, frames: Tensor, texts: Sequence[str]) -> Tensor:
        """``(M, C, H, W) -> (M, N, feature_dim)`` patch features (conditioned on ``texts``, one per frame, when
        ``condition_features``); without gradients when the encoder is frozen."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen_image_encoder):
            if self.condition_features:
                return self.image_encoder.extract_features(frames, list(texts)).float()
            return self.image_encoder.forward_tokens(frames).float()

    def image_tokens(self, inputs: PolicyInputs, camera: str, last: bool = False) -> Tensor:
        """``(B, T, N, feature_dim)`` patch features of ``camera``'s frames (only the last step with ``last``);
        ``inputs.features`` when it holds them.

        With ``feature_cache``, in training mode and when the batch has ``frame_ids``, each frame's features are
        computed once and kept on the CPU in float16 (``frames * N * feature_dim * 2`` bytes), keyed by
        ``(camera, episode_index, frame_index)``: one module must then train on one dataset
        (:meth:`clear_feature_cache` otherwise)."""
        if inputs.features is not None and camera in inputs.features:
            given = inputs.features[camera]
            return (given[:, -1:] if last else given).to(self.device)
        frames, ids = inputs.images[camera], inputs.frame_ids
        if last:
            frames, ids = frames[:, -1:], None if ids is None else ids[:, -1:]
        b, t = frames.shape[:2]
        flat = frames.flatten(0, 1)
        texts = [s for s in inputs.texts for _ in range(t)]
        if self.feature_cache is None or ids is None or not self.training:
            tokens = self.encode_frames(flat.to(self.device), texts)
            return tokens.view(b, t, *tokens.shape[1:])
        keys = [(camera, e, f) for e, f in ids.reshape(-1, 2).tolist()]
        missing = {k: i for i, k in reversed(list(enumerate(keys))) if k not in self.feature_cache}
        if missing:
            rows = list(missing.values())
            tokens = self.encode_frames(flat[rows].to(self.device), [texts[i] for i in rows])
            self.feature_cache.add(list(missing), tokens.detach())
        tokens = self.feature_cache.get(keys).to(self.device).float()
        return tokens.view(b, t, *tokens.shape[1:])

    def clear_feature_cache(self) -> None:
        """Forget the cached frame features (before training on another dataset)."""
        if self.feature_cache is not None:
            self.feature_cache.clear()

    def normalized_state(self, state: Tensor) -> Tensor:
        """``(..., S)`` standardised with the dataset's ``observation.state`` stats."""
        if state.shape[-1] != self.state_dim:
            raise ValueError(f"observation.state has {state.shape[-1]} dimensions; the model was built for "
                             f"state_dim {self.state_dim}")
        return (state.float() - self.state_mean) / self.state_std

    def forward(self, inputs: PolicyInputs) -> PolicyOutput:
        raise NotImplementedError

    # ------------------------------------------------------------------ losses
    def action_terms(self, out: PolicyOutput, action: Tensor, pad_mask: Tensor) -> Dict[str, Tensor]:
        """The action head's terms on the last ``K = out.actions.steps`` steps plus their weighted sum
        ``action_loss``."""
        k = out.actions.steps
        terms = self.action_head.loss(out.actions, action[:, -k:].to(self.device).float(), pad_mask[:, -k:])
        weights = {"ce": 1.0, "arm": self.arm_weight, "gripper": self.gripper_weight}
        terms["action_loss"] = sum(w * terms[k] for k, w in weights.items() if k in terms)
        return terms

    def compute_loss(self, batch: Mapping[str, Any]) -> Dict[str, Tensor]:
        """``{"loss": L_act, ...terms}`` on a dataset batch (``action`` ``(B, T, A)``)."""
        inputs = PolicyInputs.from_batch(batch, self.cameras)
        terms = self.action_terms(self(inputs), batch["action"], inputs.pad_mask)
        terms["loss"] = terms["action_loss"]
        return terms

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def predict_action(self, inputs: PolicyInputs, temperature: float = 0.0,
                       generator: Optional[torch.Generator] = None) -> Tensor:
        """Environment actions ``(B, A)`` for the last step of each window (discrete actions: sampled at
        ``temperature > 0``, see :meth:`ActionHead.decode`)."""
        pred = self(inputs).actions
        last = ActionPrediction(**{k: None if v is None else v[:, -1:] for k, v in vars(pred).items()})
        return self.action_head.decode(last, temperature, generator)[:, -1]

    # ------------------------------------------------------------------ Lightning
    def _log_terms(self, terms: Dict[str, Tensor], stage: str, batch_size: int) -> None:
        self.log(f"{stage}/loss", terms["loss"], prog_bar=True, batch_size=batch_size)
        self.log_dict({f"{stage}/{k}": v.detach() for k, v in terms.items() if k != "loss"}, batch_size=batch_size)

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        terms = self.compute_loss(batch)
        self._log_terms(terms, "train", len(batch["task"]))
        return terms["loss"]

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._log_terms(self.compute_loss(batch), "val", len(batch["task"]))

    def configure_optimizers(self) -> Any:
        return configure_adamw(self, self.optim_cfg)


# =========================================================================== environment wrapper
Observation = Mapping[str, Any]


def push_step(window: Tensor, new: Tensor, fresh: Tensor) -> Tensor:
    """``window`` ``(N, T, ...)`` moved one step back with ``new`` ``(N, ...)`` as its last step; the rows where
    ``fresh`` (bool ``(N,)``) is True are filled with ``new`` at every step."""
    out = window.roll(-1, dims=1)
    out[:, -1] = new
    out[fresh] = new[fresh, None]
    return out


def stack_observations(obs_batch: Union[Observation, Sequence[Observation]]) -> Tuple[Dict[str, np.ndarray],
                                                                                      Optional[np.ndarray]]:
    """``({camera: uint8 (N, H, W, 3)}, state (N, S) or None)`` from a batched observation dict or a list of
    per-environment ones."""
    if isinstance(obs_batch, MappingABC):
        images = {c: np.asarray(v) for c, v in obs_batch["images"].items()}
        state = obs_batch.get("state")
        return images, None if state is None else np.asarray(state, dtype=np.float32)
    cams = obs_batch[0]["images"].keys()
    images = {c: np.stack([np.asarray(o["images"][c]) for o in obs_batch]) for c in cams}
    states = [o.get("state") for o in obs_batch]
    return images, None if states[0] is None else np.stack(states).astype(np.float32)


class LanguagePolicy:
    """A trained :class:`PolicyModule` acting in ``N`` environments at once, each with its own instruction and
    observation history.

    ``reset(instruction, env_ids=None)``: a string for every environment (or the listed ``env_ids``), or one
    instruction per environment / per listed id; the histories of the reset environments are cleared.
    ``act(obs_batch)`` appends each environment's observation to its window of the last ``module.history``
    steps (the first observation after a reset fills the window and the earlier slots are marked padding,
    as the dataset pads history before an episode's start) and returns ``(N, A)`` float32 actions, or ``(N,)``
    int64 for discrete actions. ``image_size`` resizes camera images (bilinear) to what the model was trained on.
    Each new frame is encoded once: the window keeps its patch features (``PolicyInputs.features``).
    ``temperature > 0`` samples discrete actions from the policy's softmax (``seed`` seeds the draws) instead of
    taking the argmax: a greedy policy that is unsure in a state it does not leave (BabyAI: walking into a
    wall leaves the view unchanged) repeats the same action until the episode times out.
    """

    def __init__(self, module: PolicyModule, image_size: Optional[int] = None, temperature: float = 0.0,
                 seed: int = 0):
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0: greedy); got {temperature}")
        self.module = module.eval()
        self.temperature = float(temperature)
        self._generator = torch.Generator().manual_seed(seed)
        self.history = int(module.history)
        self.image_size = image_size
        self.instructions: List[str] = []
        self._default: Optional[str] = None
        self._frames: Dict[str, Tensor] = {}
        self._features: Dict[str, Tensor] = {}
        self._state: Optional[Tensor] = None
        self._valid = torch.zeros(0, self.history, dtype=torch.bool)
        self._fresh = torch.zeros(0, dtype=torch.bool)

    def reset(self, instruction: Union[str, Sequence[str]], env_ids: Optional[Sequence[int]] = None) -> None:
        """Start new episodes: in every environment (``env_ids`` None; a list gives one instruction each and sets
        the number of environments, a string is used for all) or in the listed ones."""
        if env_ids is None:
            if isinstance(instruction, str):
                self._default, self.instructions = instruction, []
                self._fresh = torch.zeros(0, dtype=torch.bool)
            else:
                self._default, self.instructions = None, list(instruction)
                self._fresh = torch.ones(len(self.instructions), dtype=torch.bool)
            return
        texts = [instruction] * len(env_ids) if isinstance(instruction, str) else list(instruction)
        if len(texts) != len(env_ids):
            raise ValueError(f"{len(texts)} instructions for {len(env_ids)} env_ids")
        for i, text in zip(env_ids, texts):
            if not 0 <= i < len(self.instructions):
                raise IndexError(f"env_id {i} out of range: the policy serves {len(self.instructions)} environments "
                                 f"(call reset with all instructions first)")
            self.instructions[i] = text
            self._fresh[i] = True

    def _observe(self, images: Dict[str, np.ndarray], state: Optional[np.ndarray]) -> None:
        n = next(iter(images.values())).shape[0]
        if not self.instructions:
            if self._default is None:
                raise RuntimeError("call reset(instruction) before act")
            self.instructions = [self._default] * n
            self._fresh = torch.ones(n, dtype=torch.bool)
        if n != len(self.instructions):
            raise ValueError(f"observations of {n} environments; reset gave {len(self.instructions)} instructions")
        new = {c: self._to_tensor(v) for c, v in images.items()}
        new_state = None if state is None else torch.as_tensor(state, dtype=torch.float32)
        with torch.no_grad():  # each frame is encoded once; the window keeps its features
            feats = {c: self.module.encode_frames(new[c].to(self.module.device), self.instructions).cpu()
                     for c in self.module.cameras}
        if not self._frames or self._valid.shape[0] != n:
            self._frames = {c: v[:, None].repeat(1, self.history, 1, 1, 1) for c, v in new.items()}
            self._features = {c: v[:, None].repeat(1, self.history, 1, 1) for c, v in feats.items()}
            self._state = None if new_state is None else new_state[:, None].repeat(1, self.history, 1)
            self._valid = torch.zeros(n, self.history, dtype=torch.bool)
        fresh = self._fresh
        self._frames = {c: push_step(self._frames[c], v, fresh) for c, v in new.items()}
        self._features = {c: push_step(self._features[c], v, fresh) for c, v in feats.items()}
        if new_state is not None and self._state is not None:
            self._state = push_step(self._state, new_state, fresh)
        self._valid = push_step(self._valid, torch.ones(n, dtype=torch.bool), fresh)
        self._valid[fresh, :-1] = False
        self._fresh = torch.zeros(n, dtype=torch.bool)

    def _to_tensor(self, frames: np.ndarray) -> Tensor:
        x = torch.as_tensor(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255.0
        if self.image_size is not None and tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False,
                              antialias=True)
        return x

    def window(self) -> PolicyInputs:
        """The current observation windows of all environments."""
        device = self.module.device
        images = {c: self._frames[c].to(device) for c in self.module.cameras}
        state = None if self._state is None else self._state.to(device)
        return PolicyInputs(images=images, texts=list(self.instructions), state=state,
                            pad_mask=self._valid.to(device),
                            features={c: self._features[c].to(device) for c in self.module.cameras})

    def act(self, obs_batch: Union[Observation, Sequence[Observation]]) -> np.ndarray:
        """Actions of all environments for their current observations (see the class docstring)."""
        images, state = stack_observations(obs_batch)
        missing = [c for c in self.module.cameras if c not in images]
        if missing:
            raise KeyError(f"observations lack cameras {missing} the policy was trained on; they have "
                           f"{sorted(images)}")
        self._observe(images, state if self.module.state_dim else None)
        actions = self.module.predict_action(self.window(), self.temperature, self._generator).cpu()
        if self.module.action_head.num_actions:
            return actions[:, 0].long().numpy()
        return actions.numpy().astype(np.float32)
