"""Retrieval-augmented interpretation of echo studies (EchoPrime style).

- :func:`embed_studies`: every video of a split through a trained :class:`~alignkit.domains.medical.echo.models.
  EchoClipModule` (embedding + view logits), grouped by study, with each study's report embedding, sections,
  EF and findings (:class:`StudySet`).
- :class:`ReportIndex` (:func:`build_index`): the training studies' report embeddings, EF and findings, and for
  every report section the candidate texts with their embeddings; saved as ``index.json`` +
  ``index.safetensors`` (+ ``attention.safetensors``) in a folder, with the clip decoding parameters.
- :func:`retrieve_labels`: phenotypes of a query as the mean labels of its top-``k`` most similar keys.
- :func:`interpret_study`: a new study's videos -> views, study embedding (mean, or the view-informed
  :class:`~alignkit.domains.medical.echo.attention.ViewSectionAttention`), each section's text from its nearest
  candidate, EF and findings from the top-``k`` retrieved training studies (:class:`Interpretation`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor

from alignkit.core.checkpoints import load_safetensors, read_json
from alignkit.core.paired import build_decoder
from alignkit.domains.medical.echo.attention import ViewSectionAttention, pad_studies
from alignkit.domains.medical.echo.data import EchoClipDecoder
from alignkit.domains.medical.echo.loading import ECHO_SUFFIXES
from alignkit.domains.medical.echo.models import EchoClipModule

FRAME_MODES = ("full", "single", "shuffled")
"""Clip ablations: the clip as decoded, its first frame repeated (no motion) or its frames in random order."""
INDEX_FILES = ("index.json", "index.safetensors")
ATTENTION_FILE = "attention.safetensors"


def ablate_frames(video: Tensor, mode: str, generator: Optional[torch.Generator] = None) -> Tensor:
    """``(B, C, T, H, W)`` clips under ``mode`` (:data:`FRAME_MODES`); ``"shuffled"`` draws one permutation of
    the ``T`` frames per clip from ``generator``."""
    if mode == "full":
        return video
    if mode == "single":
        return video[:, :, :1].expand_as(video).contiguous()
    if mode != "shuffled":
        raise ValueError(f"frame mode '{mode}' is not one of {', '.join(FRAME_MODES)}")
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
    ``sections`` (B lists of report strings); ``ef`` ``(B,)``; ``labels`` ``(B, F)`` (-1: unknown)."""

    video: Tensor
    view_logits: Tensor
    view_labels: Tensor
    study: Tensor
    study_ids: List[str]
    report: Tensor
    sections: List[List[str]]
    ef: Tensor
    labels: Tensor

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
    videos, logits, views, ids = [], [], [], []
    per_study: Dict[str, Tuple[List[str], float, List[float]]] = {}
    for batch in loader:
        z, lg = module.video_outputs(ablate_frames(batch["video"], frames, generator).to(device))
        videos.append(z.float().cpu())
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
                    labels=torch.tensor([per_study[s][2] for s in study_ids]))


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


@dataclass
class ReportIndex:
    """Training studies as retrieval candidates (see the module docstring). ``sections``: per section name, its
    candidate texts, their studies' indices and embeddings ``(C_s, D)``; ``decoder``: the
    :class:`~alignkit.domains.medical.echo.data.EchoClipDecoder` parameters the videos were embedded with."""

    study_ids: List[str]
    report: Tensor
    ef: Tensor
    labels: Tensor
    finding_names: List[str]
    views: List[str]
    sections: Dict[str, Tuple[List[str], List[int], Tensor]]
    decoder: Dict[str, Any] = field(default_factory=dict)
    attention: Optional[ViewSectionAttention] = None

    def save(self, folder: str | Path) -> Path:
        """Write ``index.json`` + ``index.safetensors`` (+ ``attention.safetensors``) to ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {"report": self.report, "ef": self.ef, "labels": self.labels}
        tensors.update({f"section/{name}": emb for name, (_, _, emb) in self.sections.items()})
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / INDEX_FILES[1]))
        meta = {"study_ids": self.study_ids, "finding_names": self.finding_names, "views": self.views,
                "decoder": self.decoder, "sections": {n: [t, s] for n, (t, s, _) in self.sections.items()},
                "attention_sections": self.attention.sections if self.attention is not None else None}
        (folder / INDEX_FILES[0]).write_text(json.dumps(meta, indent=1))
        if self.attention is not None:
            save_file({"logits": self.attention.logits.detach().contiguous()}, str(folder / ATTENTION_FILE))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "ReportIndex":
        folder = Path(folder)
        missing = [f for f in INDEX_FILES if not (folder / f).is_file()]
        if missing:
            raise FileNotFoundError(f"{folder} is not an echo report index: {', '.join(missing)} missing (the demo "
                                    f"writes one to <out>/index; build one with build_index(...).save(folder))")
        meta = read_json(folder / INDEX_FILES[0])
        tensors = load_safetensors(folder / INDEX_FILES[1])
        attention = None
        if meta.get("attention_sections") is not None:
            attention = ViewSectionAttention(meta["attention_sections"], meta["views"])
            attention.logits.data.copy_(load_safetensors(folder / ATTENTION_FILE)["logits"])
        return cls(study_ids=meta["study_ids"], report=tensors["report"], ef=tensors["ef"], labels=tensors["labels"],
                   finding_names=meta["finding_names"], views=meta["views"],
                   sections={n: (t, s, tensors[f"section/{n}"]) for n, (t, s) in meta["sections"].items()},
                   decoder=meta["decoder"], attention=attention)


@torch.no_grad()
def build_index(module: EchoClipModule, train: StudySet, finding_names: Sequence[str],
                decoder: Optional[Dict[str, Any]] = None,
                attention: Optional[ViewSectionAttention] = None) -> ReportIndex:
    """The :class:`ReportIndex` of the training studies ``train``: each distinct section text embedded once."""
    grouped: Dict[str, Tuple[List[str], List[int]]] = {}
    for study, texts in enumerate(train.sections):
        for text in texts:
            texts_s, studies_s = grouped.setdefault(section_name(text), ([], []))
            texts_s.append(text)
            studies_s.append(study)
    distinct = sorted({t for texts, _ in grouped.values() for t in texts})
    embedded = dict(zip(distinct, module.embed(module.text_modality, distinct).float().cpu())) if distinct else {}
    sections = {name: (texts, studies, torch.stack([embedded[t] for t in texts]))
                for name, (texts, studies) in grouped.items()}
    return ReportIndex(study_ids=list(train.study_ids), report=train.report, ef=train.ef, labels=train.labels,
                       finding_names=list(finding_names), views=list(module.views), sections=sections,
                       decoder=dict(decoder or {}), attention=attention)


@dataclass
class Interpretation:
    """One study's assembled report with its evidence.

    ``videos``: file names; ``views``: predicted view per video; ``sections``: per section ``(text, study id,
    similarity)`` of its nearest candidate; ``ef``: mean EF (%) of the top-``k`` studies; ``findings``: per finding
    the fraction of the top-``k`` studies that have it; ``evidence``: those ``(study id, similarity)``;
    ``attention``: ``(S, N)`` section weights over the videos (None without attention) and ``attention_sections``."""

    videos: List[str]
    views: List[str]
    sections: Dict[str, Tuple[str, str, float]]
    ef: float
    findings: Dict[str, float]
    evidence: List[Tuple[str, float]]
    attention: Optional[Tensor] = None
    attention_sections: List[str] = field(default_factory=list)

    def format(self) -> str:
        """The report as text: views, sections (with the study each came from), phenotypes and evidence."""
        lines = ["VIDEOS: " + ", ".join(f"{n} ({v})" for n, v in zip(self.videos, self.views)), ""]
        for name, (text, sid, sim) in self.sections.items():
            body = text.partition(": ")[2] or text
            lines.append(f"{name.upper()}: {body}    [from {sid}, similarity {sim:.3f}]")
        lines += ["", f"ESTIMATED EF: {self.ef:.1f}%"]
        lines += [f"{name}: {p:.2f}" for name, p in self.findings.items()]
        lines += ["", "EVIDENCE (top-k retrieved training studies): "
                  + ", ".join(f"{sid} ({sim:.3f})" for sid, sim in self.evidence)]
        return "\n".join(lines)


@torch.no_grad()
def interpret_embeddings(video: Tensor, view_logits: Tensor, index: ReportIndex, k: int = 5,
                         names: Optional[Sequence[str]] = None) -> Interpretation:
    """:class:`Interpretation` of one study from its videos' embeddings ``(N, D)`` and view logits ``(N, V)``:
    the study embedding is the index's attention pooling (by the predicted views) when it has one, else the mean;
    a section's query is its attention-pooled embedding, else the study embedding."""
    views = view_logits.argmax(1)
    names = list(names) if names is not None else [f"video {n}" for n in range(len(video))]
    weights = None
    if index.attention is not None:
        pooled = index.attention(video[None], views[None], torch.ones(1, len(video), dtype=torch.bool))
        study, weights = pooled.study, pooled.weights[0]
        per_section = dict(zip(index.attention.sections, pooled.sections[0]))
    else:
        study, per_section = F.normalize(video.mean(0, keepdim=True), dim=-1), {}
    sections: Dict[str, Tuple[str, str, float]] = {}
    for name, (texts, studies, emb) in index.sections.items():
        query = per_section.get(name, study[0])
        sims = emb @ query
        best = int(sims.argmax())
        sections[name] = (texts[best], index.study_ids[studies[best]], float(sims[best]))
    values = torch.cat([index.ef[:, None], index.labels], dim=1)
    retrieved = retrieve_labels(study, index.report, values, k)
    return Interpretation(
        videos=names, views=[index.views[int(v)] for v in views], sections=sections, ef=float(retrieved.pred[0, 0]),
        findings=dict(zip(index.finding_names, retrieved.pred[0, 1:].tolist())),
        evidence=[(index.study_ids[int(i)], float(s)) for i, s in zip(retrieved.indices[0], retrieved.similarity[0])],
        attention=weights, attention_sections=index.attention.sections if index.attention is not None else [])


def study_videos(study_dir: str | Path) -> List[Path]:
    """The video files (:data:`~alignkit.domains.medical.echo.loading.ECHO_SUFFIXES`) of a study folder, sorted."""
    folder = Path(study_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"study folder {folder} does not exist (give a folder of one study's videos)")
    found = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in ECHO_SUFFIXES)
    if not found:
        raise FileNotFoundError(f"{folder} holds no videos ({', '.join(ECHO_SUFFIXES)})")
    return found


@torch.no_grad()
def interpret_study(module: EchoClipModule, index: ReportIndex, study_dir: str | Path, k: int = 5) -> Interpretation:
    """Decode every video of ``study_dir`` as the index's decoder did (centred clips), embed and interpret it."""
    decoder = EchoClipDecoder(**{**index.decoder, "clip_start": "centre"})
    paths = study_videos(study_dir)
    clips = torch.stack([decoder.video(p.read_bytes(), str(p)) for p in paths])
    module.eval()
    video, logits = module.video_outputs(clips.to(next(module.parameters()).device))
    return interpret_embeddings(video.float().cpu(), logits.float().cpu(), index, k, [p.name for p in paths])


INDEX_DIR = "echo_index"
"""The index folder inside a run (or exported model) folder, as ``alignkit demo echo`` writes it."""


def load_echo_model(path: str | Path) -> EchoClipModule:
    """An ``echo-clip`` model from an exported folder (``config.json``, see ``alignkit export``) or a run folder
    (``config.yaml`` + ``checkpoints/last.ckpt``), in eval mode on the CPU."""
    folder = Path(path)
    if (folder / "config.json").is_file():
        from alignkit.core.api import AlignedModel
        module = AlignedModel.load(folder).module
    elif (folder / "config.yaml").is_file():
        from alignkit.core.runner import CHECKPOINT_DIR, LAST_CHECKPOINT, cfg_from_run, load_checkpoint
        module = load_checkpoint(cfg_from_run(folder), folder / CHECKPOINT_DIR / LAST_CHECKPOINT)
    else:
        raise FileNotFoundError(f"{folder} is neither a run folder (config.yaml) nor an exported model folder "
                                f"(config.json); train one with `alignkit demo echo` or `alignkit train`")
    if not isinstance(module, EchoClipModule):
        raise ValueError(f"{folder} holds a {type(module).__name__}, not an echo-clip model (model.name: echo-clip)")
    return module.eval()
