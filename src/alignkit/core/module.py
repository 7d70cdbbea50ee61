"""``AlignmentModule``: any number of modality towers aligned by pairwise losses, trained with Lightning.

Each modality ``m`` has a tower ``z_m = normalize(head_m(encoder_m(x_m)))``: an encoder from
``ENCODERS`` (frozen or trainable) and a projection head from ``HEADS``. The training loss is

    L = sum_k  w_k * loss_k(z_{a_k}, z_{b_k})

over the configured objectives ``(a_k, b_k, loss_k, w_k)``. With ``ema.enabled`` an EMA teacher of
all towers supplies ALBEF soft targets (``teacher_a``, ``teacher_b``, ``alpha``) to the losses.
The optimiser is AdamW (no weight decay on biases, norms and temperatures) with linear warm-up
followed by cosine decay over the run's optimiser steps. Distribution (DDP/FSDP), mixed precision
and gradient accumulation are the Trainer's.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alignkit.core.encoders.base import freeze
from alignkit.core.losses import EMATeacher, clamp_logit_scales_
from alignkit.core.optim import configure_adamw
from alignkit.core.registry import ENCODERS, HEADS, LOSSES, MODELS


class Tower(nn.Module):
    """Encoder + projection head of one modality; ``forward`` returns L2-normalised ``(B, D)`` embeddings."""

    def __init__(self, encoder: nn.Module, head: nn.Module, frozen: bool = False):
        super().__init__()
        self.encoder = freeze(encoder) if frozen else encoder
        self.frozen = frozen
        self.head = head

    def features(self, inputs: Any) -> Tensor:
        """Encoder output before the head, ``(B, encoder.output_dim)``."""
        if self.frozen:
            with torch.no_grad():
                return self.encoder(inputs).detach()
        return self.encoder(inputs)

    def forward(self, inputs: Any, normalize: bool = True) -> Tensor:
        z = self.head(self.features(inputs).float())
        return F.normalize(z, dim=-1) if normalize else z


def build_tower(name: str, spec: Dict[str, Any], embed_dim: int) -> Tower:
    encoder = ENCODERS.build(spec["encoder"], where=f"model.towers.{name}.params", **spec.get("params", {}))
    head = HEADS.build(spec.get("head", "linear"), where=f"model.towers.{name}.head_params",
                       in_dim=encoder.output_dim, out_dim=embed_dim, **spec.get("head_params", {}))
    return Tower(encoder, head, frozen=bool(spec.get("frozen", False)))


@MODELS.register("alignment")
class AlignmentModule(L.LightningModule):
    """Contrastive alignment of several modalities.

    Args:
        model: the ``model`` section of a run config as a plain dict (``embed_dim``, ``towers``,
            ``objectives``, ``ema``).
        optim: the ``optim`` section (``lr``, ``weight_decay``, ``betas``, ``eps``, ``warmup_steps``,
            ``min_lr_ratio``).
    """

    def __init__(self, model: Dict[str, Any], optim: Optional[Dict[str, Any]] = None):
        super().__init__()
        self.save_hyperparameters()
        self.model_cfg = model
        self.optim_cfg = dict(optim or {})
        self.embed_dim = int(model["embed_dim"])
        self.towers = nn.ModuleDict({m: build_tower(m, spec, self.embed_dim)
                                     for m, spec in model["towers"].items()})
        self.objectives: List[Dict[str, Any]] = [dict(o) for o in model.get("objectives", [])]
        self.losses = nn.ModuleList([
            LOSSES.build(o["loss"], where=f"model.objectives[{i}].params", **o.get("params", {}))
            for i, o in enumerate(self.objectives)])
        ema = model.get("ema") or {}
        self.ema_alpha = float(ema.get("alpha", 0.4))
        self.teacher: Optional[EMATeacher] = (EMATeacher(self.towers, decay=float(ema.get("decay", 0.995)))
                                              if ema.get("enabled") else None)

    @property
    def modalities(self) -> List[str]:
        return list(self.towers.keys())

    def input_key(self, modality: str) -> str:
        return self.model_cfg["towers"][modality].get("input_key") or modality

    def embed(self, modality: str, inputs: Any, normalize: bool = True) -> Tensor:
        """``(B, embed_dim)`` embeddings of ``inputs`` through the tower of ``modality``."""
        return self.towers[modality](inputs, normalize=normalize)

    # ------------------------------------------------------------------ training
    def compute_loss(self, batch: Dict[str, Any]) -> Dict[str, Tensor]:
        """Weighted sum of the objectives on one batch; returns ``{"loss": ..., "<a>-<b>/<metric>": ...}``."""
        needed = {m for o in self.objectives for m in (o["a"], o["b"])}
        emb = {m: self.embed(m, batch[self.input_key(m)]) for m in needed}
        teach: Dict[str, Tensor] = {}
        if self.teacher is not None:
            with torch.no_grad():
                teach = {m: self.teacher.module[m](batch[self.input_key(m)]) for m in needed}
        groups = batch.get("group")
        out: Dict[str, Tensor] = {}
        total = torch.zeros((), device=self.device)
        for obj, loss_fn in zip(self.objectives, self.losses):
            a, b = obj["a"], obj["b"]
            extras: Dict[str, Any] = {}
            if groups is not None:
                extras.update(groups_a=groups, groups_b=groups)
            if teach:
                extras.update(teacher_a=teach[a], teacher_b=teach[b], alpha=self.ema_alpha)
            res = loss_fn(emb[a], emb[b], **extras)
            total = total + float(obj.get("weight", 1.0)) * res.loss
            out[f"{a}-{b}/loss"] = res.loss.detach()
            for k, v in res.metrics.items():
                out[f"{a}-{b}/{k}"] = v.detach() if isinstance(v, Tensor) else torch.tensor(float(v))
        out["loss"] = total
        return out

    def training_step(self, batch: Dict[str, Any], batch_idx: int) -> Tensor:
        out = self.compute_loss(batch)
        bs = _batch_size(batch)
        self.log("train/loss", out["loss"], prog_bar=True, batch_size=bs)
        self.log_dict({f"train/{k}": v for k, v in out.items() if k != "loss"}, batch_size=bs)
        return out["loss"]

    def validation_step(self, batch: Dict[str, Any], batch_idx: int) -> None:
        out = self.compute_loss(batch)
        bs = _batch_size(batch)
        self.log("val/loss", out["loss"], prog_bar=True, batch_size=bs, sync_dist=True)
        self.log_dict({f"val/{k}": v for k, v in out.items() if k != "loss"}, batch_size=bs, sync_dist=True)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        clamp_logit_scales_(self)  # a temperature pushed past its cap sits at the cap and still learns
        if self.teacher is not None:
            self.teacher.update(self.towers)

    # ------------------------------------------------------------------ exact resume
    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        """Store the torch RNG state so a resumed run draws the same random numbers (dropout, negatives)."""
        checkpoint["torch_rng_state"] = torch.get_rng_state()

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        if "torch_rng_state" in checkpoint:
            torch.set_rng_state(checkpoint["torch_rng_state"])

    # ------------------------------------------------------------------ optimiser
    def configure_optimizers(self) -> Any:
        """AdamW + warm-up/cosine (:func:`alignkit.core.optim.configure_adamw`); the EMA teacher is not trained."""
        return configure_adamw(self, self.optim_cfg, skip_prefixes=("teacher.",))


def _batch_size(batch: Dict[str, Any]) -> int:
    for v in batch.values():
        if isinstance(v, Tensor) and v.ndim > 0:
            return int(v.shape[0])
        if isinstance(v, list):
            return len(v)
    return 1
