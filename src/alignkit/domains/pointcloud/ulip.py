"""ULIP tri-modal pretraining: a point tower aligned to image and text towers.

Sources: Xue et al., "ULIP: Learning a Unified Representation of Language, Images, and Point Clouds for 3D
Understanding", CVPR 2023 (arXiv 2212.05171) and "ULIP-2: Towards Scalable Multimodal Pre-training for 3D
Understanding", CVPR 2024 (arXiv 2305.08275); reference code salesforce/ULIP (``models/ULIP_models.py``,
``models/losses.py``).

The towers and objectives are the core :class:`~alignkit.core.module.AlignmentModule`'s: with towers
``points``, ``image``, ``text`` the loss is

    L = w_pt clip(z_p, z_t) + w_pi clip(z_p, z_i) [+ w_it clip(z_i, z_t) when the image/text towers train]

configured as ``model.objectives``. ``ulip`` (:class:`ULIPModule`) adds what plain configs lack:

- ``pretrained`` + ``pretrained_towers``: whole towers (encoder and head) restored from an earlier run's
  checkpoint (a Lightning ``.ckpt`` or an exported ``model.safetensors``) and, with ``lock_pretrained``,
  locked (no gradient, eval mode). This is the two-stage recipe without CLIP: stage 1 aligns an image
  tower to the frozen MiniLM text tower (+ trainable text head) on rendered views; stage 2 loads both
  towers of stage 1, locks them, and aligns the point tower to them. The weights are copied when a fit
  starts from step 0 (:meth:`ULIPModule.on_fit_start`), never when a model is rebuilt from saved weights
  (resume, ``alignkit.load``), so an exported model does not need the stage-1 file.
- ``group_key``: a batch field (e.g. ``"label"``) copied to ``group`` so that group-aware losses
  (``multi_positive``) treat captions of one class as positives of each other, not as negatives.

With a frozen HF CLIP (``hf-clip-text`` / ``hf-clip-vision`` towers, ``frozen: true``, ``head: identity``)
no stage 1 is needed: the point tower is aligned to CLIP's joint space directly (ULIP-2's recipe).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from torch import Tensor

from alignkit.core.checkpoints import load_weights
from alignkit.core.module import AlignmentModule
from alignkit.core.registry import MODELS, ConfigError

logger = logging.getLogger(__name__)


def read_state_dict(path: str) -> Dict[str, Tensor]:
    """The weights of a Lightning checkpoint (its ``state_dict``) or of an exported ``model.safetensors``
    (:func:`alignkit.core.checkpoints.load_weights`: ValueError naming a broken or refused file)."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"pretrained checkpoint {file} does not exist; give an earlier run's "
                                "checkpoints/last.ckpt or an exported model.safetensors")
    return load_weights(file)


def tower_state(state: Dict[str, Tensor], modality: str) -> Dict[str, Tensor]:
    """The entries ``towers.<modality>.*`` of a model state dict, with that prefix removed."""
    prefix = f"towers.{modality}."
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


@MODELS.register("ulip")
class ULIPModule(AlignmentModule):
    """:class:`~alignkit.core.module.AlignmentModule` with pretrained, locked towers (module docstring).

    Args:
        model, optim: as :class:`~alignkit.core.module.AlignmentModule`.
        pretrained: checkpoint whose ``towers.<m>.*`` weights initialise each tower ``m`` of
            ``pretrained_towers`` when a fit starts from step 0 (None: the towers keep their own weights).
        pretrained_towers: modalities restored from ``pretrained`` (each must be a tower of both models).
        lock_pretrained: lock those towers, heads included: no gradients, always in eval mode.
        group_key: batch field copied to ``group`` for group-aware losses (None: no groups).
    """

    def __init__(self, model: Dict[str, Any], optim: Optional[Dict[str, Any]] = None, pretrained: Optional[str] = None,
                 pretrained_towers: Sequence[str] = ("image", "text"), lock_pretrained: bool = True,
                 group_key: Optional[str] = None):
        super().__init__(model, optim)
        missing = [m for m in pretrained_towers if m not in self.towers]
        if missing:
            raise ConfigError(f"ulip: pretrained_towers {missing} are not towers of this model "
                              f"(towers: {', '.join(self.towers)}); set model.params.pretrained_towers")
        self.pretrained = pretrained
        self.pretrained_towers: List[str] = list(pretrained_towers)
        self.lock_pretrained = bool(lock_pretrained)
        self.group_key = group_key
        if self.lock_pretrained:
            for m in self.pretrained_towers:
                self.towers[m].requires_grad_(False)
                self.towers[m].eval()

    def locked(self, modality: str) -> bool:
        return self.lock_pretrained and modality in self.pretrained_towers

    def train(self, mode: bool = True) -> "ULIPModule":
        """Lightning's train/eval switch; locked towers stay in eval mode (no batch-norm updates)."""
        super().train(mode)
        for m in self.pretrained_towers if self.lock_pretrained else ():
            self.towers[m].eval()
        return self

    def load_pretrained(self) -> List[str]:
        """Copy the ``pretrained_towers`` weights of ``pretrained`` into this model (strict per tower); returns them."""
        if self.pretrained is None:
            return []
        state = read_state_dict(self.pretrained)
        for m in self.pretrained_towers:
            weights = tower_state(state, m)
            if not weights:
                found = sorted({k.split(".")[1] for k in state if k.startswith("towers.")})
                raise ConfigError(f"ulip: {self.pretrained} has no tower '{m}' (its towers: {found or 'none'}); "
                                  f"set model.params.pretrained_towers to towers it holds")
            try:
                self.towers[m].load_state_dict(weights, strict=True)
            except RuntimeError as exc:
                raise ConfigError(f"ulip: the '{m}' tower of {self.pretrained} does not fit this config's '{m}' "
                                  f"tower (give both runs the same encoder, head and embed_dim): {exc}") from None
        return list(self.pretrained_towers)

    def on_fit_start(self) -> None:
        if self.trainer.global_step > 0:  # resumed: the checkpoint already holds every weight
            return
        if self.pretrained is None:
            if self.lock_pretrained and self.pretrained_towers:
                logger.warning("ulip: towers %s are locked but no pretrained checkpoint is set "
                               "(model.params.pretrained): they stay at their initial weights", self.pretrained_towers)
            return
        logger.info("ulip: towers %s restored from %s", self.load_pretrained(), self.pretrained)

    def compute_loss(self, batch: Dict[str, Any]) -> Dict[str, Tensor]:
        if self.group_key is not None:
            if self.group_key not in batch:
                raise KeyError(f"ulip group_key '{self.group_key}' is not a batch field; fields: {sorted(batch)}")
            batch = {**batch, "group": batch[self.group_key]}
        return super().compute_loss(batch)


__all__ = ["read_state_dict", "tower_state", "ULIPModule"]
