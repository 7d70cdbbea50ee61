"""The training base of the language-conditioned policies (GR-1, BC): inputs, outputs, frozen features, losses.

:class:`PolicyModule` holds what GR-1 and the BC baseline share: the frozen instruction embedding, the image
encoder's patch features (optionally cached per frame, :class:`FeatureCache`), state standardisation, the
:class:`~alignkit.domains.robotics.models.action_head.ActionHead` and its loss, the optimiser
(:func:`alignkit.core.optim.configure_adamw`, betas (0.9, 0.95) and eps 1e-8 unless ``optim`` sets them), the
Lightning steps and :meth:`PolicyModule.predict_action`. A batch is a :class:`PolicyInputs`; a model's forward
returns a :class:`PolicyOutput`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Dict, Hashable, List, Mapping, Optional, Sequence, Tuple, Union

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alignkit.core.encoders.base import build_encoder, freeze
from alignkit.core.optim import configure_adamw
from alignkit.core.params import NON_NEGATIVE
from alignkit.core.registry import ConfigError
from alignkit.domains.robotics.models.action_head import ActionHead, ActionPrediction, Stats, plain_stats, stats_vector
from alignkit.domains.robotics.models.inputs import TextSpec, camera_frames, frozen_text_tower

EncoderSpec = Union[str, Mapping[str, Any], nn.Module]
"""An image encoder: an ``ENCODERS`` name, ``{"name", "params"}`` or a module."""
StateDim = Annotated[int, NON_NEGATIVE]
"""``S`` of ``observation.state`` (0: the policy reads no state)."""
NumActions = Annotated[int, NON_NEGATIVE]
"""The number of discrete actions (0: continuous actions, see :class:`ActionHead`)."""


@dataclass
class PolicyInputs:
    """One batch of observation windows: ``images`` camera -> ``(B, T, C, H, W)`` in [0, 1]; ``texts`` ``B``
    instructions; ``state`` ``(B, T, S)`` or None; ``pad_mask`` ``(B, T)`` bool (False on padded history);
    ``frame_ids`` ``(B, T, 2)`` long ``(episode_index, frame_index)`` of every step, or None (keys of the
    feature cache); ``features`` camera -> ``(B, T, N, D)`` patch features already computed for ``images``
    (:class:`~alignkit.domains.robotics.language_policy.LanguagePolicy` encodes each new frame once and keeps the
    window's features), or None."""

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
    per camera resolution): a batch's lookup is a single ``index_select`` instead of stacking one tensor per
    frame."""

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
            self.state_mean.copy_(stats_vector(stats, "observation.state", "mean", self.state_dim, 0.0))
            self.state_std.copy_(stats_vector(stats, "observation.state", "std", self.state_dim, 1.0).clamp_min(1e-6))

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
        return configure_adamw(self, self.optim_cfg, betas=(0.9, 0.95), eps=1e-8)
