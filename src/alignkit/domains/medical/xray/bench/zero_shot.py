"""BenchX zero-shot classification: per-class positive/negative prompt sets scored the CheXzero way (Tiu et al.,
2022, "Expert-level detection of pathologies from unannotated chest X-ray images via self-supervised learning").
Sample format: :mod:`.shared`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader

from alignkit.core import plots
from alignkit.core.embeddings import embed_loader
from alignkit.core.metrics import class_embeddings, multilabel_auroc
from alignkit.domains.medical.xray.bench.shared import Split, as_dataset, sample_loader

NORMAL_STATEMENTS: Tuple[str, ...] = ("No acute cardiopulmonary process.", "No acute cardiopulmonary abnormality.")
"""Default negative prompts: normal statements (rather than negated findings; see docs/medical.md)."""

SYNTHETIC_FINDING_PROMPTS: Dict[str, Tuple[str, ...]] = {
    "cardiomegaly": ("Cardiomegaly.", "The heart is enlarged.", "Moderate cardiomegaly."),
    "pleural_effusion": ("Pleural effusion.", "There is a pleural effusion.", "Small left pleural effusion."),
    "pneumothorax": ("Pneumothorax.", "There is a pneumothorax.", "Small right apical pneumothorax."),
    "nodule": ("Pulmonary nodule.", "There is a nodule in the lung.", "A rounded nodular opacity."),
    "consolidation": ("Focal consolidation.", "Airspace consolidation.", "Consolidation in the lower lobe."),
    "edema": ("Pulmonary edema.", "Interstitial edema.", "Mild pulmonary vascular congestion and edema."),
}
"""Positive prompts for the six findings of the synthetic generator (``xray.synthetic.plans.FINDINGS``)."""

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
"""Positive prompts for the 14 CheXpert observations (``xray.records.CHEXPERT_LABELS``, same order)."""

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
