"""The registered evaluators (``EVALUATORS``): ``retrieval``, ``zero_shot``, ``linear_probe``, ``knn``,
``export_embeddings``.

Each is built from its config params and called as ``evaluator(model, train_loader, test_loader, out_dir)
-> {"<name>/<metric>": float}``: it embeds a split with :func:`~alignkit.core.embeddings.embed_loader`,
scores it with :mod:`alignkit.core.metrics` / :mod:`alignkit.core.probe` and writes PNG figures
(:mod:`alignkit.core.plots`) to ``out_dir``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Dict, List, Mapping, Optional, Sequence

import torch
from torch import Tensor

from alignkit.core import plots
from alignkit.core.embeddings import embed_loader, export_embeddings
from alignkit.core.metrics import (bidirectional_ranks, class_embeddings, classification_metrics, confusion_matrix,
                                   group_ids, per_class_accuracy, rank_metrics, recall_curve_from_ranks,
                                   zero_shot_predict)
from alignkit.core.probe import knn_classify, linear_probe
from alignkit.core.registry import EVALUATORS, ConfigError
from alignkit.core.params import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, Range

Ks = Sequence[Annotated[int, AT_LEAST_ONE]]
"""The K of recall@K / top-K figures."""


def _dataset_class_names(loader: Any, given: Optional[Sequence[str]], evaluator: str,
                         required: bool) -> Optional[List[str]]:
    """``given`` if set, else the loader dataset's ``class_names`` attribute (error if required and absent)."""
    if given is not None:
        return list(given)
    names = getattr(getattr(loader, "dataset", None), "class_names", None)
    if names is None and required:
        raise ConfigError(f"evaluator '{evaluator}' needs class names: pass class_names in its params "
                          "or give the dataset a `class_names` attribute")
    return None if names is None else list(names)


def _classification_plots(scores: Tensor, labels: Tensor, class_names: Optional[Sequence[str]], multilabel: bool,
                          stem: Path) -> None:
    """ROC curves (multi-label) or the confusion matrix (single-label) to ``{stem}_roc.png`` / ``_confusion.png``."""
    c = scores.shape[1]
    names = list(class_names) if class_names is not None else [str(i) for i in range(c)]
    if multilabel:
        plots.plot_roc_curves(scores, labels, names, stem.with_name(stem.name + "_roc.png"))
    else:
        cm = confusion_matrix(scores.argmax(1), labels, c)
        plots.plot_confusion_matrix(cm, names, stem.with_name(stem.name + "_confusion.png"))


def _prefixed(prefix: str, metrics: Mapping[str, float]) -> Dict[str, float]:
    return {f"{prefix}/{k}": float(v) for k, v in metrics.items()}


@EVALUATORS.register("retrieval")
class RetrievalEvaluator:
    """Cross-modal retrieval both ways on the test split.

    Metrics ``retrieval/{query}2{gallery}_R@k``, ``..._median_rank``, ``..._mean_rank`` and the
    reverse direction. Without ``match_key`` only an item's own pair is correct;
    with it (e.g. ``"group"``, ``"label"``) every gallery item whose field equals the
    query's is. ``num_candidates`` evaluates inside shuffled blocks of that many items
    (:func:`~alignkit.core.metrics.candidate_blocks`) and pools the ranks. Writes
    ``retrieval_{query}2{gallery}_similarity.png`` (first ``plot_items`` items) and
    ``retrieval_{query}_{gallery}_recall_at_k.png``.
    """

    def __init__(self, query: str = "text", gallery: str = "image", match_key: Optional[str] = None,
                 num_candidates: Optional[Annotated[int, Range(ge=2)]] = None, ks: Ks = (1, 5, 10), seed: int = 0,
                 plot_items: Annotated[int, NON_NEGATIVE] = 64, max_plot_k: Annotated[int, AT_LEAST_ONE] = 50,
                 progress: bool = True):
        if query == gallery:
            raise ConfigError(f"retrieval query and gallery are both '{query}'; name two different modalities")
        self.query, self.gallery, self.match_key = query, gallery, match_key
        self.num_candidates, self.ks, self.seed = num_candidates, tuple(ks), seed
        self.plot_items, self.max_plot_k, self.progress = plot_items, max_plot_k, progress

    def __call__(self, model: Any, train_loader: Any, test_loader: Any, out_dir: Path) -> Dict[str, float]:
        q, g = self.query, self.gallery
        fields = ["id"] + ([self.match_key] if self.match_key else [])
        out = embed_loader(model, test_loader, [q, g], self.progress, fields)
        if self.match_key is not None and self.match_key not in out:
            raise ConfigError(f"retrieval match_key '{self.match_key}' is not a field of the test batches; "
                              f"fields: {sorted(out)}")
        groups = None if self.match_key is None else group_ids(out[self.match_key])
        r_qg, r_gq = bidirectional_ranks(out[q], out[g], groups, groups, self.num_candidates, self.seed)
        metrics = {**rank_metrics(r_qg, self.ks, f"{q}2{g}_"), **rank_metrics(r_gq, self.ks, f"{g}2{q}_")}

        out_dir = Path(out_dir)
        n = self.plot_items
        ids = out.get("id")
        plots.plot_similarity_matrix(out[q][:n] @ out[g][:n].T, out_dir / f"retrieval_{q}2{g}_similarity.png",
                                     labels=ids[:n] if isinstance(ids, list) else None, max_items=n)
        gallery_size = min(len(out[g]), self.num_candidates or len(out[g]))
        max_k = max(1, min(self.max_plot_k, gallery_size))
        plots.plot_recall_at_k({f"{q}2{g}": recall_curve_from_ranks(r_qg, max_k),
                                f"{g}2{q}": recall_curve_from_ranks(r_gq, max_k)},
                               out_dir / f"retrieval_{q}_{g}_recall_at_k.png")
        return _prefixed("retrieval", metrics)


@EVALUATORS.register("zero_shot")
class ZeroShotEvaluator:
    """Zero-shot classification with prompt-ensemble class embeddings
    (:func:`~alignkit.core.metrics.class_embeddings`).

    Single-label: ``zero_shot/top{k}``, ``zero_shot/mean_per_class_acc``, with ``per_class`` also
    ``zero_shot/acc/<class>`` (:func:`~alignkit.core.metrics.per_class_accuracy`, NaN for classes absent
    from the split), and ``zero_shot_confusion.png``. Multi-label (labels (C,) per item in {0, 1, -1}):
    ``zero_shot/auroc_mean``, ``zero_shot/auroc/<class>`` and ``zero_shot_roc.png``.
    Class names default to the test dataset's ``class_names`` attribute.
    """

    def __init__(self, modality: str = "image", text_modality: str = "text",
                 class_names: Optional[List[str]] = None, templates: Sequence[str] = ("{}",),
                 label_key: str = "label", multilabel: bool = False, ks: Ks = (1, 5),
                 per_class: bool = False, progress: bool = True):
        self.modality, self.text_modality = modality, text_modality
        self.per_class = per_class
        self.class_names, self.templates = class_names, list(templates)
        self.label_key, self.multilabel, self.ks, self.progress = label_key, multilabel, tuple(ks), progress

    def __call__(self, model: Any, train_loader: Any, test_loader: Any, out_dir: Path) -> Dict[str, float]:
        names = _dataset_class_names(test_loader, self.class_names, "zero_shot", required=True)
        out = embed_loader(model, test_loader, [self.modality], self.progress, [self.label_key])
        labels = out[self.label_key]
        with torch.no_grad():
            classes = class_embeddings(lambda texts: model.embed(self.text_modality, texts).float().cpu(),
                                       names, self.templates)
        scores = zero_shot_predict(out[self.modality], classes)
        metrics = classification_metrics(scores, labels, multilabel=self.multilabel, ks=self.ks, class_names=names)
        if self.per_class and not self.multilabel:
            accuracy = per_class_accuracy(scores.argmax(1), labels, len(names))
            metrics.update({f"acc/{name}": float(a) for name, a in zip(names, accuracy)})
        _classification_plots(scores, labels, names, self.multilabel, Path(out_dir) / "zero_shot")
        return _prefixed("zero_shot", metrics)


@EVALUATORS.register("linear_probe")
class LinearProbeEvaluator:
    """Logistic-regression probe on frozen embeddings of train, scored on test
    (:func:`~alignkit.core.probe.linear_probe`).

    Metrics ``linear_probe/top1`` and ``.../mean_per_class_acc`` (or ``.../auroc_mean`` and
    per-class AUROC if ``multilabel``), ``.../weight_decay``, ``.../val_top1`` (``val_auroc_mean``);
    writes ``linear_probe_confusion.png`` or ``linear_probe_roc.png``.
    """

    def __init__(self, modality: str = "image", label_key: str = "label", multilabel: bool = False,
                 val_fraction: Annotated[float, Range(gt=0, lt=1)] = 0.1,
                 weight_decays: Sequence[Annotated[float, NON_NEGATIVE]] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0),
                 max_epochs: Annotated[int, AT_LEAST_ONE] = 100, seed: int = 0, progress: bool = True):
        self.modality, self.label_key, self.multilabel = modality, label_key, multilabel
        self.val_fraction, self.weight_decays = val_fraction, tuple(weight_decays)
        self.max_epochs, self.seed, self.progress = max_epochs, seed, progress

    def __call__(self, model: Any, train_loader: Any, test_loader: Any, out_dir: Path) -> Dict[str, float]:
        if train_loader is None:
            raise ConfigError("linear_probe needs a train split to fit on; the dataset has none")
        train = embed_loader(model, train_loader, [self.modality], self.progress, [self.label_key])
        test = embed_loader(model, test_loader, [self.modality], self.progress, [self.label_key])
        names = _dataset_class_names(test_loader, None, "linear_probe", required=False)
        result = linear_probe(train[self.modality], train[self.label_key], test[self.modality],
                              test[self.label_key], multilabel=self.multilabel, val_fraction=self.val_fraction,
                              weight_decays=self.weight_decays, max_epochs=self.max_epochs, seed=self.seed,
                              class_names=names)
        _classification_plots(result.test_scores, test[self.label_key], names, self.multilabel,
                              Path(out_dir) / "linear_probe")
        return _prefixed("linear_probe", result.metrics)


@EVALUATORS.register("knn")
class KNNEvaluator:
    """Weighted kNN (:func:`~alignkit.core.probe.knn_classify`) with train embeddings as the memory bank;
    single-label only.

    Metrics ``knn/top{k}`` and ``knn/mean_per_class_acc``; writes ``knn_confusion.png``.
    """

    def __init__(self, modality: str = "image", label_key: str = "label", k: Annotated[int, AT_LEAST_ONE] = 20,
                 temperature: Annotated[float, POSITIVE] = 0.07, ks: Ks = (1, 5), progress: bool = True):
        self.modality, self.label_key, self.k, self.temperature = modality, label_key, k, temperature
        self.ks, self.progress = tuple(ks), progress

    def __call__(self, model: Any, train_loader: Any, test_loader: Any, out_dir: Path) -> Dict[str, float]:
        if train_loader is None:
            raise ConfigError("knn needs a train split as its memory bank; the dataset has none")
        train = embed_loader(model, train_loader, [self.modality], self.progress, [self.label_key])
        test = embed_loader(model, test_loader, [self.modality], self.progress, [self.label_key])
        train_y, test_y = train[self.label_key].long(), test[self.label_key].long()
        names = _dataset_class_names(test_loader, None, "knn", required=False)
        c = len(names) if names is not None else int(max(train_y.max(), test_y.max())) + 1
        probs = knn_classify(train[self.modality], train_y, test[self.modality], self.k, self.temperature, c).probs
        metrics = classification_metrics(probs, test_y, ks=self.ks)
        _classification_plots(probs, test_y, names, False, Path(out_dir) / "knn")
        return _prefixed("knn", metrics)


@EVALUATORS.register("export_embeddings")
class EmbeddingExportEvaluator:
    """Embed the evaluated split and write ``embeddings.safetensors`` (one tensor per modality plus
    ``label``/``group`` when present; string ids in the metadata) for downstream heads. Returns
    ``export_embeddings/count``."""

    def __init__(self, modalities: Sequence[str] = ("image", "text"), filename: str = "embeddings.safetensors",
                 progress: bool = True):
        self.modalities, self.filename, self.progress = list(modalities), filename, progress

    def __call__(self, model: Any, train_loader: Any, test_loader: Any, out_dir: Path) -> Dict[str, float]:
        out = embed_loader(model, test_loader, self.modalities, self.progress)
        export_embeddings(Path(out_dir) / self.filename, **out)
        return {"export_embeddings/count": float(len(out[self.modalities[0]]))}


__all__ = ["RetrievalEvaluator", "ZeroShotEvaluator", "LinearProbeEvaluator", "KNNEvaluator",
           "EmbeddingExportEvaluator"]
