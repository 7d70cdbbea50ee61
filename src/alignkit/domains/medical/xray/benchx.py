"""BenchX-style evaluation of pretrained chest X-ray models (Zhou et al., 2024, "BenchX").

Every task takes splits as datasets (or DataLoaders, whose ``dataset`` is used) of sample dicts::

    {"image": (1, S, S) float, "text": str or list[str], "labels": (C,) float in {0, 1, -1 = ignore},
     "id": str, "group": int or str, ["masks": (K, S, S) bool]}

- :func:`finetune_classification`: a linear head on the pretrained image encoder (or full fine-tuning)
  trained on 1 %, 10 % and 100 % label subsets over fixed seeds, early-stopped on the validation mean
  multi-label AUROC; test mean AUROC and mean F1 at the per-class thresholds that maximise F1 on
  validation. :func:`summarize` gives mean +- std over seeds per fraction.
- :func:`zero_shot_multilabel`: per-class positive/negative prompt sets, CheXzero's softmax scoring.
- :func:`retrieval_report_image`: image <-> report R@K among ``num_candidates`` studies.
- Segmentation and report generation live in :mod:`.segmentation` and :mod:`.generation`.
- :class:`BenchTable` collects ``method -> metric -> (mean, std)`` and writes markdown + JSON;
  :func:`run_benchx` runs every task for several methods into one table.
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from alignkit.core import plots
from alignkit.core.data import collate_samples
from alignkit.core.encoders import FrozenTower
from alignkit.core.evaluate import (bidirectional_retrieval, class_embeddings, embed_loader, f1_at_optimal_threshold,
                                    group_ids, masked_bce_with_logits, multilabel_auroc)

Split = Union[Dataset, DataLoader]
Summary = Dict[str, Tuple[float, float]]


# =========================================================================== data plumbing
def as_dataset(data: Split) -> Dataset:
    """The dataset behind ``data`` (a DataLoader's ``dataset``, or ``data`` itself)."""
    return data.dataset if isinstance(data, DataLoader) else data


def sample_loader(data: Split, batch_size: int, shuffle: bool = False, seed: int = 0) -> DataLoader:
    """A single-process loader of sample dicts collated with :func:`collate_samples`."""
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(as_dataset(data), batch_size=batch_size, shuffle=shuffle, generator=generator,
                      collate_fn=collate_samples)


def dataset_labels(data: Split, batch_size: int = 256) -> Tensor:
    """``(N, C)`` float labels of every sample (key ``"labels"``); read without decoding images when the
    dataset has a ``labels(i)`` method (the ``cxr`` dataset)."""
    dataset = as_dataset(data)
    if callable(getattr(dataset, "labels", None)):
        return torch.tensor([dataset.labels(i) for i in range(len(dataset))], dtype=torch.float32)
    batches = checked_batches(sample_loader(data, batch_size), ["labels"])
    return torch.cat([torch.as_tensor(batch["labels"]).float() for batch in batches])


def checked_batches(loader: DataLoader, keys: Sequence[str]) -> Iterable[Dict[str, Any]]:
    """The batches of ``loader``, each checked to hold ``keys`` (KeyError naming the batch otherwise)."""
    for i, batch in enumerate(loader):
        missing = [k for k in keys if k not in batch]
        if missing:
            raise KeyError(f"benchx: batch {i} lacks {missing} (keys {sorted(batch)}); samples need "
                           f"{list(keys)}, see the module docstring for the sample format")
        yield batch


def unwrap_encoder(encoder: nn.Module) -> nn.Module:
    """The inner encoder of a :class:`FrozenTower` (else ``encoder``)."""
    return encoder.module if isinstance(encoder, FrozenTower) else encoder


def image_encoder_of(model: Any, modality: str = "image") -> nn.Module:
    """The image encoder of an ``AlignmentModule`` or ``AlignedModel`` (``.module.towers[m].encoder``)."""
    module = getattr(model, "module", model)
    towers = getattr(module, "towers", None)
    if towers is None or modality not in towers:
        raise KeyError(f"benchx: the model has no tower '{modality}' (towers: "
                       f"{list(towers) if towers is not None else 'none'}); pass image_modality")
    return unwrap_encoder(towers[modality].encoder)


@torch.no_grad()
def encode_images(encoder: nn.Module, data: Split, batch_size: int = 64,
                  tokens: bool = False) -> Tensor:
    """Frozen features of every image: ``(N, output_dim)``, or ``(N, T, C)`` with ``tokens``
    (``encoder.forward_tokens``). Runs in eval mode and restores the encoder's mode."""
    was_training = encoder.training
    encoder.eval()
    try:
        fn = encoder.forward_tokens if tokens else encoder
        batches = checked_batches(sample_loader(data, batch_size), ["image"])
        return torch.cat([fn(b["image"]).float().cpu() for b in batches])
    finally:
        encoder.train(was_training)


class DecodedSamples(Dataset):
    """Every sample of ``dataset`` decoded once (with ``num_workers`` DataLoader workers) and kept in memory, so
    the BenchX tasks of several methods read the same split without decoding its files again.

    Memory: the decoded tensors of every sample (e.g. 3,000 grey 96 px images with six masks: ~300 MB); meant
    for CPU-sized benches. Carries the source's ``class_names``, ``mask_classes`` and ``labels(i)``.
    """

    def __init__(self, dataset: Dataset, num_workers: int = 0):
        source = as_dataset(dataset)
        loader = DataLoader(source, batch_size=None, num_workers=num_workers)
        self.samples: List[Dict[str, Any]] = list(loader)
        for attribute in ("class_names", "mask_classes"):
            setattr(self, attribute, getattr(source, attribute, None))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Dict[str, Any]:
        return self.samples[i]

    def labels(self, i: int) -> List[float]:
        return torch.as_tensor(self.samples[i]["labels"]).tolist()


class _ImageLabels(Dataset):
    """``(image, labels)`` pairs of selected samples of a dataset of sample dicts."""

    def __init__(self, dataset: Dataset, indices: Sequence[int]):
        self.dataset, self.indices = dataset, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Tuple[Tensor, Tensor]:
        sample = self.dataset[self.indices[i]]
        return sample["image"], torch.as_tensor(sample["labels"]).float()


# =========================================================================== label subsets
def label_subset(labels: Tensor, fraction: float, seed: int) -> Tensor:
    """Indices (sorted LongTensor) of a random ``fraction`` of the ``N`` samples with labels ``(N, C)``.

    Rule: the size is ``n = max(1, round(fraction * N))``. First, visiting the classes in a random
    order, each class without a positive among the items picked so far gets one random positive
    (target 1; classes with no positive at all are skipped); then random other items fill the subset
    up to ``n``. So every class that has a positive keeps one; if that needs more than ``n`` items,
    the subset grows to that (at most ``C`` items). ``fraction=1`` returns every index.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"label fraction must be in (0, 1]; got {fraction}")
    n_total = labels.shape[0]
    if fraction == 1:
        return torch.arange(n_total)
    g = torch.Generator().manual_seed(seed)
    chosen: List[int] = []
    positive = labels == 1
    for c in torch.randperm(labels.shape[1], generator=g).tolist():
        candidates = positive[:, c].nonzero().flatten()
        if len(candidates) and not positive[chosen, c].any():
            chosen.append(int(candidates[torch.randint(len(candidates), (1,), generator=g)]))
    n = max(1, round(fraction * n_total), len(chosen))
    taken = set(chosen)
    rest = [i for i in torch.randperm(n_total, generator=g).tolist() if i not in taken]
    return torch.tensor(sorted(chosen + rest[: n - len(chosen)]))


# =========================================================================== classification
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


def train_with_early_stopping(model: nn.Module, run_epoch: Callable[[int], None], validate: Callable[[], float],
                              epochs: int, patience: int) -> Tuple[float, int]:
    """Call ``run_epoch(epoch)`` for epochs 1..``epochs``, then ``validate()`` (higher is better, NaN counts
    as -inf); stop after ``patience`` epochs without improvement and restore the best epoch's weights
    into ``model`` (the first epoch's if no score was ever defined). Returns ``(best score, epochs run)``."""
    if epochs < 1:
        raise ValueError(f"train_with_early_stopping: epochs must be >= 1, got {epochs}")
    best, best_state, stale, epoch = -math.inf, None, 0, 0
    for epoch in range(1, epochs + 1):
        model.train()
        run_epoch(epoch)
        score = validate()
        score = -math.inf if math.isnan(score) else score
        if best_state is None or score > best:
            best, best_state, stale = score, copy.deepcopy(model.state_dict()), 0
        else:
            stale += 1
            if stale >= patience:
                break
    model.load_state_dict(best_state)
    return best, epoch


def fit_classifier(model: nn.Module, train: DataLoader, val: DataLoader, epochs: int, lr: float,
                   patience: int, weight_decay: float = 0.0) -> Tuple[float, int]:
    """AdamW on :func:`masked_bce_with_logits` over ``(x, y)`` batches, early-stopped on the validation
    mean multi-label AUROC (:func:`train_with_early_stopping`). Returns ``(best val AUROC, epochs run)``."""
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
    fine-tuned together with the head on images. Subsets: :func:`label_subset`. Training and early
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
            path = Path(out_dir) / f"classification_roc_{_percent(fraction)}pct.png"
            results.figures.append(plots.plot_roc_curves(best.test_scores, test_targets, names, path))
    return results


def _percent(fraction: float) -> str:
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


# =========================================================================== zero-shot
NORMAL_STATEMENTS: Tuple[str, ...] = ("No acute cardiopulmonary process.", "No acute cardiopulmonary abnormality.")
"""Default negative prompts: normal statements (the prototype found them better than negated findings)."""

SYNTHETIC_FINDING_PROMPTS: Dict[str, Tuple[str, ...]] = {
    "cardiomegaly": ("Cardiomegaly.", "The heart is enlarged.", "Moderate cardiomegaly."),
    "pleural_effusion": ("Pleural effusion.", "There is a pleural effusion.", "Small left pleural effusion."),
    "pneumothorax": ("Pneumothorax.", "There is a pneumothorax.", "Small right apical pneumothorax."),
    "nodule": ("Pulmonary nodule.", "There is a nodule in the lung.", "A rounded nodular opacity."),
    "consolidation": ("Focal consolidation.", "Airspace consolidation.", "Consolidation in the lower lobe."),
    "edema": ("Pulmonary edema.", "Interstitial edema.", "Mild pulmonary vascular congestion and edema."),
}
"""Positive prompts for the six findings of the synthetic generator (``xray.synthetic.FINDINGS``)."""

CHEXPERT_PROMPTS: Dict[str, Tuple[str, ...]] = {
    "No Finding": ("No acute cardiopulmonary process.", "The lungs are clear. Normal heart size."),
    "Enlarged Cardiomediastinum": ("Enlarged cardiomediastinal silhouette.", "Widened mediastinum."),
    "Cardiomegaly": ("Cardiomegaly.", "The heart is enlarged."),
    "Lung Opacity": ("Lung opacity.", "There is an opacity in the lung."),
    "Lung Lesion": ("Lung lesion.", "Pulmonary nodule or mass."),
    "Edema": ("Pulmonary edema.", "Interstitial edema."),
    "Consolidation": ("Focal consolidation.", "Airspace consolidation."),
    "Pneumonia": ("Pneumonia.", "Findings consistent with pneumonia."),
    "Atelectasis": ("Atelectasis.", "Bibasilar atelectasis."),
    "Pneumothorax": ("Pneumothorax.", "There is a pneumothorax."),
    "Pleural Effusion": ("Pleural effusion.", "There is a pleural effusion."),
    "Pleural Other": ("Pleural thickening.", "Pleural abnormality."),
    "Fracture": ("Rib fracture.", "There is a fracture."),
    "Support Devices": ("Support devices are in place.", "Endotracheal tube and central line."),
}
"""Positive prompts for the 14 CheXpert observations (``xray.io.CHEXPERT_LABELS``, same order)."""

PromptSets = Dict[str, Dict[str, List[str]]]


def prompt_sets(positives: Mapping[str, Sequence[str]],
                negatives: Union[Sequence[str], Mapping[str, Sequence[str]]] = NORMAL_STATEMENTS) -> PromptSets:
    """``{class: {"positive": [...], "negative": [...]}}``; ``negatives`` is one list for every class
    (default :data:`NORMAL_STATEMENTS`) or a per-class mapping. ``"No Finding"`` gets, as negatives, the
    other classes' first positive prompts (a normal statement cannot be its own opposite)."""
    out: PromptSets = {}
    for name, pos in positives.items():
        neg = negatives[name] if isinstance(negatives, Mapping) else negatives
        if name == "No Finding" and not isinstance(negatives, Mapping):
            neg = [p[0] for other, p in positives.items() if other != name]
        out[name] = {"positive": list(pos), "negative": list(neg)}
    return out


def default_prompts(class_names: Optional[Sequence[str]] = None) -> PromptSets:
    """Prompt sets for ``class_names`` (default: the six synthetic findings), each name looked up in
    :data:`SYNTHETIC_FINDING_PROMPTS` then :data:`CHEXPERT_PROMPTS`, negatives by :func:`prompt_sets`."""
    known = {**CHEXPERT_PROMPTS, **SYNTHETIC_FINDING_PROMPTS}
    names = list(SYNTHETIC_FINDING_PROMPTS) if class_names is None else list(class_names)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise KeyError(f"no default zero-shot prompts for classes {unknown}; known: {sorted(known)}. "
                       "Pass prompts={class: {'positive': [...], 'negative': [...]}}")
    return prompt_sets({n: known[n] for n in names})


@dataclass
class ZeroShotResult:
    """``auroc``: class -> AUROC plus ``"mean"``; ``probs`` (N, C) = P(positive prompt) per class."""

    auroc: Dict[str, float]
    probs: Tensor
    targets: Tensor


def zero_shot_multilabel(model: Any, loader: Split, prompts: Optional[PromptSets] = None,
                         text_modality: str = "text", image_modality: str = "image", label_key: str = "labels",
                         temperature: float = 1.0, batch_size: int = 64,
                         out_dir: Optional[Union[str, Path]] = None) -> ZeroShotResult:
    """Zero-shot multi-label classification with positive/negative prompt sets (CheXzero / BenchX).

    Each set is embedded as a prompt ensemble ``e = normalize(mean_k normalize(embed_text(p_k)))``
    (:func:`class_embeddings`); for image embedding ``z`` the class score is the softmax over the pair
    ``p_c = exp(z.e_pos / T) / (exp(z.e_pos / T) + exp(z.e_neg / T))`` (``T = temperature``; AUROC does
    not depend on it). Labels of -1 are ignored. ``prompts`` default: :func:`default_prompts` of the
    dataset's ``class_names`` attribute (else of the six synthetic findings), negatives
    :data:`NORMAL_STATEMENTS`. With ``out_dir`` writes ``zero_shot_roc.png``.
    """
    prompts = prompts or default_prompts(getattr(as_dataset(loader), "class_names", None))
    loader = loader if isinstance(loader, DataLoader) else sample_loader(loader, batch_size)
    out = embed_loader(model, loader, [image_modality], progress=False, fields=[label_key])
    if label_key not in out:
        raise KeyError(f"zero_shot_multilabel: batches have no '{label_key}' field; pass label_key")
    targets = out[label_key].float()
    names = list(prompts)
    if targets.shape[1] != len(names):
        raise ValueError(f"zero_shot_multilabel: {len(names)} prompt sets ({names}) for {targets.shape[1]} label "
                         "columns; give one prompt set per label column, in column order")

    def embed_text(texts: List[str]) -> Tensor:
        return model.embed(text_modality, texts).float().cpu()

    with torch.no_grad():
        pos = torch.stack([_ensemble(embed_text, prompts[c]["positive"], c) for c in names])
        neg = torch.stack([_ensemble(embed_text, prompts[c]["negative"], c) for c in names])
    image = F.normalize(out[image_modality], dim=-1)
    probs = torch.sigmoid(((image @ pos.T) - (image @ neg.T)) / temperature)  # = softmax over (pos, neg)
    auroc = multilabel_auroc(probs, targets, names)
    if out_dir is not None:
        plots.plot_roc_curves(probs, targets, names, Path(out_dir) / "zero_shot_roc.png")
    return ZeroShotResult(auroc, probs, targets)


def _ensemble(embed_text: Callable[[List[str]], Tensor], texts: Sequence[str], name: str) -> Tensor:
    """``(D,)`` normalised mean of the normalised embeddings of ``texts``."""
    if not texts:
        raise ValueError(f"zero_shot_multilabel: class '{name}' has an empty prompt list")
    return F.normalize(class_embeddings(embed_text, list(texts)).mean(0), dim=-1)


# =========================================================================== retrieval
def retrieval_report_image(model: Any, loader: Split, num_candidates: Optional[int] = 100,
                           ks: Sequence[int] = (1, 5, 10), image_modality: str = "image",
                           text_modality: str = "text", group_key: str = "group", seed: int = 0,
                           batch_size: int = 64) -> Dict[str, float]:
    """Image <-> report retrieval among ``num_candidates`` studies (:func:`bidirectional_retrieval`).

    Images and reports of one study (equal ``group_key``) are correct for each other; without that
    field only an item's own pair is. Keys ``image2report_R@k``, ``report2image_R@k``, median and mean rank.
    """
    loader = loader if isinstance(loader, DataLoader) else sample_loader(loader, batch_size)
    out = embed_loader(model, loader, [image_modality, text_modality], progress=False, fields=[group_key])
    groups = group_ids(out[group_key]) if group_key in out else None
    return bidirectional_retrieval(out[image_modality], out[text_modality], groups, groups, ks,
                                   names=("image", "report"), num_candidates=num_candidates, seed=seed)


# =========================================================================== the table
class BenchTable:
    """Rows of ``method -> metric -> (mean, std)``; ``std`` is None for a single measurement."""

    def __init__(self) -> None:
        self.rows: Dict[str, Dict[str, Tuple[float, Optional[float]]]] = {}
        self.per_class: Dict[str, Dict[str, Dict[str, float]]] = {}  # metric -> method -> class -> value
        self.seconds: Dict[str, Dict[str, float]] = {}  # method -> task -> wall-clock seconds

    @contextlib.contextmanager
    def timed(self, method: str, task: str) -> Iterator[None]:
        """Record the wall-clock seconds of the ``with`` block as ``seconds[method][task]``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds.setdefault(method, {})[task] = time.perf_counter() - start

    def add_per_class(self, method: str, metric: str, values: Mapping[str, float]) -> None:
        """Per-class values of ``metric`` (e.g. AUROC per finding) for ``method``; ``"mean"`` is left out."""
        self.per_class.setdefault(metric, {})[method] = {c: float(v) for c, v in values.items() if c != "mean"}

    def add(self, method: str, metric: str, mean: float, std: Optional[float] = None) -> None:
        self.rows.setdefault(method, {})[metric] = (float(mean), None if std is None else float(std))

    def add_metrics(self, method: str, metrics: Mapping[str, Union[float, Tuple[float, float]]],
                    prefix: str = "") -> None:
        """Add every ``name -> value`` or ``name -> (mean, std)`` of ``metrics`` as ``{prefix}{name}``."""
        for name, value in metrics.items():
            mean, std = value if isinstance(value, tuple) else (value, None)
            self.add(method, f"{prefix}{name}", mean, std)

    @property
    def metrics(self) -> List[str]:
        """Every metric name in first-seen order (the table's columns)."""
        return list(dict.fromkeys(m for row in self.rows.values() for m in row))

    @staticmethod
    def _cell(value: Optional[Tuple[float, Optional[float]]]) -> str:
        if value is None:
            return "-"
        mean, std = value
        return f"{mean:.3f}" if std is None else f"{mean:.3f} ± {std:.3f}"

    def to_markdown(self) -> str:
        """One row per method, one column per metric; cells ``mean ± std`` (3 decimals), ``-`` if absent; then
        one table per metric with per-class values (:meth:`add_per_class`)."""
        cols = self.metrics
        lines = ["| method | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
        for method, row in self.rows.items():
            lines.append(f"| {method} | " + " | ".join(self._cell(row.get(c)) for c in cols) + " |")
        for metric, by_method in self.per_class.items():
            classes = list(dict.fromkeys(c for values in by_method.values() for c in values))
            lines += ["", f"{metric} per class:", "", "| method | " + " | ".join(classes) + " |",
                      "|---|" + "---|" * len(classes)]
            for method, values in by_method.items():
                lines.append(f"| {method} | " + " | ".join(self._cell((values[c], None)) if c in values else "-"
                                                         for c in classes) + " |")
        return "\n".join(lines) + "\n"

    def to_json(self) -> Dict[str, Any]:
        """``{method: {metric: {"mean": m, "std": s or None}, "<metric>/per_class": {class: value}}}``; NaN -> None."""
        def clean(x: Optional[float]) -> Optional[float]:
            return None if x is None or math.isnan(x) else x
        out: Dict[str, Any] = {method: {m: {"mean": clean(mean), "std": clean(std)} for m, (mean, std) in row.items()}
                               for method, row in self.rows.items()}
        for metric, by_method in self.per_class.items():
            for method, values in by_method.items():
                out.setdefault(method, {})[f"{metric}/per_class"] = {c: clean(v) for c, v in values.items()}
        return out

    def write(self, out_dir: Union[str, Path], stem: str = "benchx") -> Tuple[Path, Path]:
        """Write ``{stem}.md`` and ``{stem}.json`` into ``out_dir``; returns both paths."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        md, js = out / f"{stem}.md", out / f"{stem}.json"
        md.write_text(self.to_markdown())
        js.write_text(json.dumps(self.to_json(), indent=2))
        return md, js


# =========================================================================== the whole protocol
BENCHX_TASKS = ("classification", "zero_shot", "retrieval", "segmentation", "generation")
EMPTY_BASELINE = "all-empty prediction"


@dataclass
class BenchXConfig:
    """Settings of :func:`run_benchx`; each task's parameters are those of its function."""

    fractions: Sequence[float] = (0.01, 0.1, 1.0)
    seeds: Sequence[int] = (0, 1, 2)
    epochs: int = 50
    lr: float = 1e-3
    batch_size: int = 64
    patience: int = 5
    freeze_encoder: bool = True
    class_names: Optional[Sequence[str]] = None
    prompts: Optional[PromptSets] = None  # default: default_prompts of the test dataset's class_names
    num_candidates: Optional[int] = 100
    ks: Sequence[int] = (1, 5, 10)
    tasks: Sequence[str] = BENCHX_TASKS
    segmentation_epochs: int = 20
    segmentation_lr: float = 1e-3
    segmentation_fraction: float = 1.0  # of the training images (label_subset of the classification labels)
    segmentation_output_stride: int = 1  # decoder resolution S / stride, logits resized to S
    generation_max_reports: Optional[int] = None  # score generation on the first N test images (None: all)
    generation_epochs: int = 20
    generation_lr: float = 1e-3
    generation_max_length: int = 96  # report words + <bos>/<eos>; longer reports are cut
    image_modality: str = "image"
    text_modality: str = "text"
    decode_once: bool = False  # keep every split decoded in memory (DecodedSamples) for all methods and tasks
    num_workers: int = 0  # DataLoader workers that decode the splits when decode_once is set


def run_benchx(methods: Mapping[str, Any], train: Split, val: Split, test: Split,
               config: Optional[BenchXConfig] = None, out_dir: Optional[Union[str, Path]] = None) -> BenchTable:
    """Run the configured tasks for every method (an ``AlignmentModule`` or ``AlignedModel``; include a
    randomly initialised model as a baseline) into one :class:`BenchTable`.

    Columns: ``cls_auroc@{pct}%`` and ``cls_f1@{pct}%`` (mean ± std over seeds), ``zero_shot_auroc``,
    ``image2report_R@k`` / ``report2image_R@k``, ``seg_dice`` (the row ``all-empty prediction`` holds the
    baseline Dice), ``gen_bleu1..4`` / ``gen_rouge_l`` of the decoder and ``gen_retrieval_*`` of the
    nearest-report baseline. Segmentation runs only if the samples have ``"masks"``. With ``out_dir``,
    figures go to ``out_dir/<method>/`` and the table to ``out_dir/benchx.md`` and ``.json``.
    """
    from alignkit.domains.medical.xray.generation import evaluate_report_generation
    from alignkit.domains.medical.xray.segmentation import finetune_segmentation

    cfg = config or BenchXConfig()
    unknown = sorted(set(cfg.tasks) - set(BENCHX_TASKS))
    if unknown:
        raise ValueError(f"run_benchx: unknown tasks {unknown}; choose from {list(BENCHX_TASKS)}")
    if cfg.decode_once:
        train, val, test = (DecodedSamples(split, cfg.num_workers) for split in (train, val, test))
    has_masks = "masks" in as_dataset(train)[0]
    table = BenchTable()
    for name, model in methods.items():
        encoder = image_encoder_of(model, cfg.image_modality)
        method_dir = None if out_dir is None else Path(out_dir) / name
        if "classification" in cfg.tasks:
            with table.timed(name, "classification"):
                results = finetune_classification(
                    encoder, train, val, test, cfg.fractions, cfg.seeds, cfg.epochs, cfg.lr, cfg.batch_size,
                    cfg.patience, freeze_encoder=cfg.freeze_encoder, class_names=cfg.class_names, out_dir=method_dir)
                for fraction, summary in summarize(results).items():
                    table.add(name, f"cls_auroc@{_percent(fraction)}%", *summary["auroc"])
                    table.add(name, f"cls_f1@{_percent(fraction)}%", *summary["f1"])
                    runs = [r for r in results.runs if r.fraction == fraction]
                    table.add_per_class(name, f"cls_auroc@{_percent(fraction)}%",
                                        {c: mean_std([r.test_auroc_per_class[c] for r in runs])[0]
                                         for c in results.class_names})
        if "zero_shot" in cfg.tasks:
            with table.timed(name, "zero_shot"):
                zs = zero_shot_multilabel(model, test, cfg.prompts, cfg.text_modality, cfg.image_modality,
                                          batch_size=cfg.batch_size, out_dir=method_dir)
                table.add(name, "zero_shot_auroc", zs.auroc["mean"])
                table.add_per_class(name, "zero_shot_auroc", zs.auroc)
        if "retrieval" in cfg.tasks:
            with table.timed(name, "retrieval"):
                ret = retrieval_report_image(model, test, cfg.num_candidates, cfg.ks, cfg.image_modality,
                                             cfg.text_modality, batch_size=cfg.batch_size)
                table.add_metrics(name, {k: v for k, v in ret.items() if "R@" in k})
        if "segmentation" in cfg.tasks and has_masks:
            with table.timed(name, "segmentation"):
                seg = finetune_segmentation(encoder, train, val, test, class_names=getattr(as_dataset(train),
                                                                                       "mask_classes", None),
                                            epochs=cfg.segmentation_epochs, lr=cfg.segmentation_lr,
                                            patience=cfg.patience, fraction=cfg.segmentation_fraction,
                                            output_stride=cfg.segmentation_output_stride)
                table.add(name, "seg_dice", seg.dice["mean"])
                table.add(EMPTY_BASELINE, "seg_dice", seg.empty_baseline["mean"])
                table.add_per_class(name, "seg_dice", seg.dice)
                table.add_per_class(EMPTY_BASELINE, "seg_dice", seg.empty_baseline)
        if "generation" in cfg.tasks:
            with table.timed(name, "generation"):
                gen = evaluate_report_generation(encoder, train, test, epochs=cfg.generation_epochs,
                                                 lr=cfg.generation_lr, batch_size=cfg.batch_size,
                                                 max_length=cfg.generation_max_length,
                                                 max_reports=cfg.generation_max_reports)
                table.add_metrics(name, gen.decoder, prefix="gen_")
                table.add_metrics(name, gen.retrieval, prefix="gen_retrieval_")
    if out_dir is not None:
        table.write(out_dir)
    return table
