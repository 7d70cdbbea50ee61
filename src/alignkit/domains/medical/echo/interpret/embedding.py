"""Embedding a split's studies for retrieval: :func:`embed_studies` (every video through a trained
:class:`~alignkit.domains.medical.echo.models.EchoClipModule`, grouped by study: :class:`StudySet`), the clip
ablations and perturbations of :func:`ablate_frames`, and :func:`retrieve_labels` (phenotypes of a query as the mean
labels of its top-``k`` keys)."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from alignkit.core.paired import build_decoder
from alignkit.domains.medical.echo.attention import pad_studies
from alignkit.domains.medical.echo.models import EchoClipModule

FRAME_MODES = ("full", "single", "shuffled")
"""Clip ablations: the clip as decoded, its first frame repeated (no motion) or its frames in random order."""
PERTURBATIONS = ("flipped", "cropped", "noise")
"""Out-of-distribution probes of a clip: mirrored left-right, its central half zoomed to the full size, or
replaced by Gaussian noise of the clip's mean and standard deviation (used to measure abstention)."""


def ablate_frames(video: Tensor, mode: str, generator: Optional[torch.Generator] = None) -> Tensor:
    """``(B, C, T, H, W)`` clips under ``mode`` (:data:`FRAME_MODES` or :data:`PERTURBATIONS`); ``"shuffled"``
    draws one permutation of the ``T`` frames per clip, ``"noise"`` its values, from ``generator``."""
    if mode == "full":
        return video
    if mode == "single":
        return video[:, :, :1].expand_as(video).contiguous()
    if mode == "flipped":
        return video.flip(-1)
    if mode == "cropped":
        h, w = video.shape[-2:]
        centre = video[..., h // 4: h // 4 + max(1, h // 2), w // 4: w // 4 + max(1, w // 2)]
        b, c, t = video.shape[:3]
        zoomed = F.interpolate(centre.reshape(b, c * t, *centre.shape[-2:]), size=(h, w), mode="bilinear",
                               align_corners=False)
        return zoomed.reshape_as(video)
    if mode == "noise":
        noise = torch.randn(video.shape, generator=generator)
        return noise.to(video) * video.std() + video.mean()
    if mode != "shuffled":
        raise ValueError(f"frame mode '{mode}' is not one of {', '.join(FRAME_MODES + PERTURBATIONS)}")
    order = torch.stack([torch.randperm(video.shape[2], generator=generator) for _ in range(len(video))])
    return torch.stack([clip[:, o] for clip, o in zip(video, order)])


def section_name(text: str) -> str:
    """The section of a ``"<section>: <text>"`` string (text_mode ``"sections"``), or ``"report"``."""
    head, sep, _ = text.partition(": ")
    return head if sep else "report"


def decoder_params(dataset: Any) -> Dict[str, Any]:
    """The clip decoding parameters of an echo dataset (its :class:`EchoClipDecoder`'s fields, JSON-ready)."""
    decoder = build_decoder(type(dataset), dataset.params)
    return {f.name: list(v) if isinstance(v, tuple) else v
            for f in fields(decoder) for v in [getattr(decoder, f.name)]}


@dataclass
class StudySet:
    """Embeddings of one split's videos grouped by study (``N`` videos, ``B`` studies, ``D`` dims, ``V`` views,
    ``F`` findings).

    ``video`` ``(N, D)`` normalised; ``view_logits`` ``(N, V)``; ``view_labels`` ``(N,)`` (-1: unknown);
    ``study`` ``(N,)`` study index; ``study_ids`` (B); ``report`` ``(B, D)`` normalised report embeddings;
    ``sections`` (B lists of report strings); ``ef`` ``(B,)``; ``labels`` ``(B, F)`` (-1: unknown); ``features``
    ``(N, E)``: the video encoder's outputs (None when not kept)."""

    video: Tensor
    view_logits: Tensor
    view_labels: Tensor
    study: Tensor
    study_ids: List[str]
    report: Tensor
    sections: List[List[str]]
    ef: Tensor
    labels: Tensor
    features: Optional[Tensor] = None

    def mean_study(self) -> Tensor:
        """``(B, D)``: the normalised mean of each study's video embeddings."""
        sums = self.video.new_zeros(len(self.study_ids), self.video.shape[1]).index_add(0, self.study, self.video)
        return F.normalize(sums, dim=-1)

    def padded(self, views: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor]:
        """Videos ``(B, M, D)``, their views ``(B, M)`` (default the predicted ones) and the mask ``(B, M)``."""
        views = self.view_logits.argmax(1) if views is None else views
        videos, mask = pad_studies(self.video, self.study, len(self.study_ids))
        padded_views, _ = pad_studies(views, self.study, len(self.study_ids))
        return videos, padded_views, mask


@torch.no_grad()
def embed_studies(module: EchoClipModule, loader: Any, frames: str = "full", seed: int = 0) -> StudySet:
    """Embed every batch of ``loader`` (an ``echo-studies`` loader) under the frame ablation ``frames``."""
    module.eval()
    generator = torch.Generator().manual_seed(seed)
    device = next(module.parameters()).device
    videos, logits, features, views, ids = [], [], [], [], []
    per_study: Dict[str, Tuple[List[str], float, List[float]]] = {}
    for batch in loader:
        z, lg, feat = module.video_features(ablate_frames(batch["video"], frames, generator).to(device))
        videos.append(z.float().cpu())
        features.append(feat.float().cpu())
        logits.append(lg.float().cpu())
        views.append(batch["label"] if "label" in batch else torch.full((len(z),), -1))
        for i, sid in enumerate(batch["study_id"]):
            text = batch["text"][i]
            per_study.setdefault(sid, ([text] if isinstance(text, str) else list(text), float(batch["ef"][i]),
                                       batch["labels"][i].tolist()))
            ids.append(sid)
    study_ids = list(per_study)
    position = {sid: k for k, sid in enumerate(study_ids)}
    sections = [per_study[s][0] for s in study_ids]
    report = module.embed(module.text_modality, sections).float().cpu()
    return StudySet(video=torch.cat(videos), view_logits=torch.cat(logits), view_labels=torch.cat(views).long(),
                    study=torch.tensor([position[s] for s in ids]), study_ids=study_ids, report=report,
                    sections=sections, ef=torch.tensor([per_study[s][1] for s in study_ids]),
                    labels=torch.tensor([per_study[s][2] for s in study_ids]), features=torch.cat(features))


@dataclass
class RetrievedLabels:
    """``pred`` ``(Q, M)``: per query the mean of the known (non-negative, non-NaN) labels of its top-``k`` keys
    (NaN if none); ``indices``/``similarity`` ``(Q, k)``: those keys and their cosine similarities."""

    pred: Tensor
    indices: Tensor
    similarity: Tensor


def retrieve_labels(query: Tensor, keys: Tensor, values: Tensor, k: int) -> RetrievedLabels:
    """Top-``k`` keys by cosine (inputs normalised ``(Q, D)``, ``(K, D)``) and the mean of their ``values``
    ``(K, M)``, where a value < 0 or NaN is unknown and left out of its mean."""
    similarity, indices = (query @ keys.T).topk(min(k, len(keys)), dim=1)
    picked = values[indices]  # (Q, k, M)
    known = (picked >= 0) & ~picked.isnan()
    total = torch.where(known, picked, torch.zeros_like(picked)).sum(1)
    pred = total / known.sum(1)  # 0/0 = NaN
    return RetrievedLabels(pred, indices, similarity)


