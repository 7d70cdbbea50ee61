"""The report index of an echo model: the training studies as retrieval candidates (:class:`ReportIndex`, built by
:func:`build_index`): their report embeddings, EF and findings, and for every report section the candidate texts
with their embeddings; saved in a folder as ``index.json`` + ``index.safetensors`` (+ ``attention.safetensors``),
with the clip decoding parameters, the abstention calibration (:mod:`.calibration`) and the model card
(:mod:`.card`) beside them."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor

from alignkit.core.checkpoints import load_safetensors, read_json
from alignkit.domains.medical.echo.attention import ViewSectionAttention
from alignkit.domains.medical.echo.interpret.calibration import InterpretCalibration
from alignkit.domains.medical.echo.interpret.card import ModelCard
from alignkit.domains.medical.echo.interpret.embedding import StudySet, section_name
from alignkit.domains.medical.echo.models import EchoClipModule

INDEX_FILES = ("index.json", "index.safetensors")
ATTENTION_FILE = "attention.safetensors"


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
    calibration: Optional[InterpretCalibration] = None
    card: Optional[ModelCard] = None

    @torch.no_grad()
    def pool(self, video: Tensor, views: Tensor) -> Tuple[Tensor, Dict[str, Tensor], Optional[Tensor]]:
        """One study's retrieval embedding ``(D,)``, its per-section queries (section -> ``(D,)``) and the attention
        weights ``(S, N)`` from its videos ``(N, D)`` with views ``(N,)``: the index's attention pooling when it has
        one, else the normalised mean (then every section's query is that mean, weights None)."""
        if self.attention is not None:
            pooled = self.attention(video[None], views[None], torch.ones(1, len(video), dtype=torch.bool))
            per_section = dict(zip(self.attention.sections, pooled.sections[0]))
            study, weights = pooled.study[0], pooled.weights[0]
        else:
            study, per_section, weights = F.normalize(video.mean(0), dim=-1), {}, None
        return study, {name: per_section.get(name, study) for name in self.sections}, weights

    def save(self, folder: str | Path) -> Path:
        """Write ``index.json`` + ``index.safetensors`` (+ ``attention.safetensors``, the calibration and the model
        card when present) to ``folder``."""
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
        if self.calibration is not None:
            self.calibration.save(folder)
        if self.card is not None:
            self.card.save(folder)
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
                   decoder=meta["decoder"], attention=attention, calibration=InterpretCalibration.load(folder),
                   card=ModelCard.load(folder))


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


