"""Point-cloud classification evaluators (``EVALUATORS``: ``point_zero_shot``, ``point_finetune``).

- ``point_zero_shot``: the core ``zero_shot`` evaluator on the point tower with a named template set of
  :mod:`~alignkit.domains.pointcloud.prompts` (default ULIP's 64 ModelNet40 templates): ``top1``, ``top5``,
  ``mean_per_class_acc``, ``acc/<class>`` and ``zero_shot_confusion.png``; optionally restricted to a subset
  of the dataset's classes (e.g. the held-out ones, scored among themselves).
- ``point_finetune``: full fine-tuning classification: a copy of the trained point encoder plus a linear
  classifier, trained end to end with cross-entropy on the train split, scored on test
  (``top1``, ``mean_per_class_acc``, ``point_finetune_confusion.png``).

Linear probing and point<->text retrieval are the core ``linear_probe`` and ``retrieval`` evaluators with
``modality: points`` / ``query: points``.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from alignkit.core.encoders.base import FrozenTower
from alignkit.core.evaluators import Ks, ZeroShotEvaluator, _classification_plots, _dataset_class_names
from alignkit.core.metrics import classification_metrics
from alignkit.core.params import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE
from alignkit.core.registry import EVALUATORS, ConfigError
from alignkit.domains.pointcloud.prompts import Templates, resolve_templates


@EVALUATORS.register("point_zero_shot")
class PointZeroShotEvaluator(ZeroShotEvaluator):
    """Core zero-shot evaluation of the ``points`` tower with a named template set (module docstring).

    ``templates``: a set name of :data:`~alignkit.domains.pointcloud.prompts.TEMPLATE_SETS` or a list.
    ``class_names``: the prompts' names, one per label (default the dataset's ``class_names``).
    """

    def __init__(self, modality: str = "points", text_modality: str = "text",
                 class_names: Optional[List[str]] = None, templates: Templates = "modelnet40_64",
                 label_key: str = "label", ks: Ks = (1, 5), progress: bool = True):
        super().__init__(modality=modality, text_modality=text_modality, class_names=class_names,
                         templates=list(resolve_templates(templates)), label_key=label_key, ks=ks, per_class=True,
                         progress=progress)


def point_encoder(model: Any, modality: str) -> nn.Module:
    """The trained encoder of ``modality`` in ``model`` (an ``AlignedModel`` or an alignment module), unfrozen."""
    module = getattr(model, "module", model)
    towers = getattr(module, "towers", None)
    if towers is None or modality not in towers:
        raise ConfigError(f"point_finetune needs a model with a '{modality}' tower; it has "
                          f"{list(towers) if towers is not None else 'no towers'}")
    encoder = towers[modality].encoder
    return encoder.module if isinstance(encoder, FrozenTower) else encoder


@EVALUATORS.register("point_finetune")
class PointFineTuneEvaluator:
    """Full fine-tuning: ``logits = W encoder(points) + b`` with a copy of the trained encoder, AdamW on
    ``CE(logits, label)`` for ``epochs`` passes over the train loader (``lr`` for the head, ``lr *
    encoder_lr_ratio`` for the encoder; the model itself is untouched), the train split shuffled.
    Metrics ``point_finetune/top1``, ``.../mean_per_class_acc``; writes ``point_finetune_confusion.png``."""

    def __init__(self, modality: str = "points", label_key: str = "label", epochs: Annotated[int, AT_LEAST_ONE] = 5,
                 lr: Annotated[float, POSITIVE] = 1e-3, encoder_lr_ratio: Annotated[float, NON_NEGATIVE] = 0.1,
                 weight_decay: Annotated[float, NON_NEGATIVE] = 0.05, seed: int = 0, progress: bool = True):
        if epochs < 1 or lr <= 0 or encoder_lr_ratio < 0:
            raise ConfigError(f"point_finetune needs epochs >= 1, lr > 0, encoder_lr_ratio >= 0; got {epochs}, "
                              f"{lr}, {encoder_lr_ratio}")
        self.modality, self.label_key, self.epochs, self.lr = modality, label_key, int(epochs), float(lr)
        self.encoder_lr_ratio, self.weight_decay, self.seed = float(encoder_lr_ratio), float(weight_decay), seed
        self.progress = progress

    def __call__(self, model: Any, train_loader: Any, test_loader: Any, out_dir: Path) -> Dict[str, float]:
        if train_loader is None:
            raise ConfigError("point_finetune needs a train split to fine-tune on; the dataset has none")
        names = _dataset_class_names(test_loader, None, "point_finetune", required=True)
        torch.manual_seed(self.seed)
        encoder = copy.deepcopy(point_encoder(model, self.modality)).requires_grad_(True)
        device = next(encoder.parameters()).device
        classifier = nn.Sequential(encoder, nn.Linear(int(encoder.output_dim), len(names))).to(device)
        opt = torch.optim.AdamW([{"params": encoder.parameters(), "lr": self.lr * self.encoder_lr_ratio},
                                 {"params": classifier[1].parameters(), "lr": self.lr}],
                                weight_decay=self.weight_decay)
        size = train_loader.batch_size
        shuffled = DataLoader(train_loader.dataset, batch_size=size, shuffle=True, collate_fn=train_loader.collate_fn,
                              drop_last=len(train_loader.dataset) > size)
        with torch.inference_mode(False), torch.enable_grad():
            classifier.train()
            for _ in tqdm(range(self.epochs), desc="point_finetune", disable=not self.progress, leave=False):
                for batch in shuffled:
                    loss = F.cross_entropy(classifier(batch[self.modality].to(device)),
                                           batch[self.label_key].long().to(device))
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
        classifier.eval()
        scores: List[Tensor] = []
        labels: List[Tensor] = []
        with torch.no_grad():
            for batch in test_loader:
                scores.append(classifier(batch[self.modality].to(device)).float().cpu())
                labels.append(batch[self.label_key].long())
        logits, y = torch.cat(scores), torch.cat(labels)
        metrics = classification_metrics(logits, y, ks=(1,))
        _classification_plots(logits, y, names, False, Path(out_dir) / "point_finetune")
        return {f"point_finetune/{k}": float(v) for k, v in metrics.items()}


__all__ = ["PointZeroShotEvaluator", "point_encoder", "PointFineTuneEvaluator"]
