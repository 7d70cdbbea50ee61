"""BenchX classification (linear probe): a linear head on the pretrained image encoder (or full fine-tuning)
trained on 1 %, 10 % and 100 % label subsets over fixed seeds, early-stopped on the validation mean multi-label
AUROC; test mean AUROC and mean F1 at the per-class thresholds that maximise F1 on validation.
:func:`summarize` gives mean +- std over seeds per fraction. Sample format: :mod:`.shared`.
"""
from __future__ import annotations

import copy
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from alignkit.core import plots
from alignkit.core.metrics import f1_at_optimal_threshold, multilabel_auroc
from alignkit.core.probe import masked_bce_with_logits
from alignkit.domains.medical.xray.bench.shared import (Split, as_dataset, dataset_labels, encode_images, label_subset,
                                                        train_with_early_stopping, unwrap_encoder)

Summary = Dict[str, Tuple[float, float]]


class _ImageLabels(Dataset):
    """``(image, labels)`` pairs of selected samples of a dataset of sample dicts."""

    def __init__(self, dataset: Dataset, indices: Sequence[int]):
        self.dataset, self.indices = dataset, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Tuple[Tensor, Tensor]:
        sample = self.dataset[self.indices[i]]
        return sample["image"], torch.as_tensor(sample["labels"]).float()


def f1_at_thresholds(scores: Tensor, targets: Tensor, thresholds: Tensor) -> Tensor:
    """``(C,)`` F1 = 2 TP / (2 TP + FP + FN) of predicting ``score >= thresholds[c]``, targets -1 ignored.

    NaN for a class whose threshold is NaN or whose kept targets have no positive."""
    keep = targets >= 0
    pred = (scores >= thresholds[None, :]) & keep
    truth = (targets == 1) & keep
    tp = (pred & truth).sum(0).double()
    fp = (pred & ~truth).sum(0).double()
    fn = (~pred & truth).sum(0).double()
    f1 = 2 * tp / (2 * tp + fp + fn).clamp_min(1)
    return torch.where(torch.isnan(thresholds) | (truth.sum(0) == 0), torch.full_like(f1, math.nan), f1).float()


def _nanmean(values: Tensor) -> float:
    values = values[~torch.isnan(values)]
    return float(values.mean()) if len(values) else math.nan


@dataclass
class ClassificationRun:
    """One (fraction, seed) run of :func:`finetune_classification`.

    ``test_f1`` uses, per class, the threshold maximising F1 on validation (``thresholds``, on the
    head's logits); ``test_auroc`` and ``test_f1_per_class`` map class name -> value (NaN if undefined).
    """

    fraction: float
    seed: int
    train_size: int
    epochs: int
    val_auroc: float
    test_auroc: float
    test_f1: float
    test_auroc_per_class: Dict[str, float]
    test_f1_per_class: Dict[str, float]
    thresholds: Tensor  # (C,)
    test_scores: Tensor  # (N_test, C) logits


@dataclass
class ClassificationResults:
    """All runs, the class names, the test targets and the ROC figures written."""

    runs: List[ClassificationRun]
    class_names: List[str]
    test_targets: Tensor  # (N_test, C)
    figures: List[Path] = field(default_factory=list)


def _predict(model: nn.Module, loader: DataLoader) -> Tuple[Tensor, Tensor]:
    """``(scores (N, C), targets (N, C))`` of ``model`` over a loader of ``(x, y)`` pairs, in eval mode."""
    model.eval()
    scores, targets = [], []
    with torch.no_grad():
        for x, y in loader:
            scores.append(model(x).float())
            targets.append(y.float())
    return torch.cat(scores), torch.cat(targets)


def fit_classifier(model: nn.Module, train: DataLoader, val: DataLoader, epochs: int, lr: float,
                   patience: int, weight_decay: float = 0.0) -> Tuple[float, int]:
    """AdamW on :func:`masked_bce_with_logits` over ``(x, y)`` batches, early-stopped on the validation
    mean multi-label AUROC (:func:`~.shared.train_with_early_stopping`). Returns ``(best val AUROC, epochs run)``."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)

    def run_epoch(epoch: int) -> None:
        for x, y in train:
            loss = masked_bce_with_logits(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()

    return train_with_early_stopping(model, run_epoch, lambda: multilabel_auroc(*_predict(model, val))["mean"],
                                     epochs, patience)


def finetune_classification(image_encoder: nn.Module, train: Split, val: Split, test: Split,
                            fractions: Sequence[float] = (0.01, 0.1, 1.0), seeds: Sequence[int] = (0, 1, 2),
                            epochs: int = 50, lr: float = 1e-3, batch_size: int = 64, patience: int = 5,
                            weight_decay: float = 0.0, freeze_encoder: bool = True,
                            class_names: Optional[Sequence[str]] = None,
                            out_dir: Optional[Union[str, Path]] = None) -> ClassificationResults:
    """BenchX classification: for every fraction and seed, train a fresh linear head on a label subset.

    ``freeze_encoder=True`` (the issue's linear head): features ``encoder(image)`` are computed once
    per split, and ``logits = W f + b`` is trained on them. ``False``: a deep copy of the encoder is
    fine-tuned together with the head on images. Subsets: :func:`~.shared.label_subset`. Training and early
    stopping: :func:`fit_classifier` (seeded with the run's seed). ``class_names`` default to the train
    dataset's ``class_names`` attribute, else ``"0", "1", ...``. Test metrics: mean AUROC and
    mean F1 at the per-class F1-optimal threshold chosen on validation (:func:`f1_at_thresholds`),
    means over classes where defined. With ``out_dir``, ``classification_roc_{pct}pct.png`` holds the
    test ROC curves per class of the run with the best validation AUROC at each fraction.
    """
    encoder = unwrap_encoder(image_encoder)
    train_labels, test_targets = dataset_labels(train), dataset_labels(test)
    num_classes = train_labels.shape[1]
    class_names = class_names or getattr(as_dataset(train), "class_names", None)
    names = [str(c) for c in range(num_classes)] if class_names is None else list(class_names)
    if len(names) != num_classes:
        raise ValueError(f"finetune_classification: {len(names)} class names for {num_classes} label columns")
    if freeze_encoder:
        feats = {name: encode_images(encoder, split, batch_size) for name, split in
                 (("train", train), ("val", val), ("test", test))}
        val_loader = DataLoader(TensorDataset(feats["val"], dataset_labels(val)), batch_size=batch_size)
        test_loader = DataLoader(TensorDataset(feats["test"], test_targets), batch_size=batch_size)
    else:
        val_loader = DataLoader(_ImageLabels(as_dataset(val), range(len(as_dataset(val)))), batch_size=batch_size)
        test_loader = DataLoader(_ImageLabels(as_dataset(test), range(len(as_dataset(test)))), batch_size=batch_size)
    runs: List[ClassificationRun] = []
    for fraction in fractions:
        for seed in seeds:
            idx = label_subset(train_labels, fraction, seed)
            torch.manual_seed(seed)
            head = nn.Linear(encoder.output_dim, num_classes)
            if freeze_encoder:
                model: nn.Module = head
                subset: Dataset = TensorDataset(feats["train"][idx], train_labels[idx])
            else:
                model = nn.Sequential(copy.deepcopy(encoder).requires_grad_(True), head)
                subset = _ImageLabels(as_dataset(train), idx.tolist())
            loader = DataLoader(subset, batch_size=batch_size, shuffle=True,
                                generator=torch.Generator().manual_seed(seed))
            val_auroc, epochs_run = fit_classifier(model, loader, val_loader, epochs, lr, patience, weight_decay)
            val_scores, val_targets = _predict(model, val_loader)
            thresholds = f1_at_optimal_threshold(val_scores, val_targets).threshold
            test_scores, _ = _predict(model, test_loader)
            auroc = multilabel_auroc(test_scores, test_targets, names)
            f1 = f1_at_thresholds(test_scores, test_targets, thresholds)
            runs.append(ClassificationRun(
                fraction=fraction, seed=seed, train_size=len(idx), epochs=epochs_run, val_auroc=val_auroc,
                test_auroc=auroc.pop("mean"), test_f1=_nanmean(f1), test_auroc_per_class=auroc,
                test_f1_per_class=dict(zip(names, f1.tolist())), thresholds=thresholds, test_scores=test_scores))
    results = ClassificationResults(runs, names, test_targets)
    if out_dir is not None:
        for fraction in fractions:
            best = max((r for r in runs if r.fraction == fraction), key=lambda r: r.val_auroc)
            path = Path(out_dir) / f"classification_roc_{percent(fraction)}pct.png"
            results.figures.append(plots.plot_roc_curves(best.test_scores, test_targets, names, path))
    return results


def percent(fraction: float) -> str:
    """A label fraction as a percentage for names: ``0.01`` -> ``"1"``, ``1.0`` -> ``"100"``."""
    return f"{fraction * 100:g}"


def mean_std(values: Sequence[float]) -> Tuple[float, float]:
    """Mean and sample standard deviation (n - 1 in the denominator; 0 for a single value) of ``values``,
    NaN values left out (NaN, NaN if none remain)."""
    kept = [float(v) for v in values if not math.isnan(v)]
    if not kept:
        return math.nan, math.nan
    return statistics.fmean(kept), statistics.stdev(kept) if len(kept) > 1 else 0.0


def summarize(results: ClassificationResults) -> Dict[float, Summary]:
    """``{fraction: {"auroc": (mean, std), "f1": (mean, std), "train_size": (mean, std)}}`` over seeds
    (:func:`mean_std`)."""
    out: Dict[float, Summary] = {}
    for fraction in dict.fromkeys(r.fraction for r in results.runs):
        runs = [r for r in results.runs if r.fraction == fraction]
        out[fraction] = {"auroc": mean_std([r.test_auroc for r in runs]), "f1": mean_std([r.test_f1 for r in runs]),
                         "train_size": mean_std([r.train_size for r in runs])}
    return out
