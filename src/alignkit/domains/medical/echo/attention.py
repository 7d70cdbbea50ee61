"""View-informed anatomic attention: one learned weight per (report section, view) pools a study's video
embeddings into one embedding per section and a study embedding (EchoPrime's anatomical attention).

For a study with videos ``v_1..v_N`` (embeddings ``z_n``, views ``view_n``) and the logits ``A`` ``(S, V)``:

    w_sn = exp(A[s, view_n]) / sum_m exp(A[s, view_m])          (softmax over the study's videos; sum_n w_sn = 1)
    e_s  = normalize(sum_n w_sn z_n)                            (section s)
    e    = normalize(sum_s e_s)                                 (study)

:func:`train_section_attention` fits ``A`` on frozen embeddings: for each section, the symmetric InfoNCE (core
``clip_loss``) between the studies' ``e_s`` and the embeddings of their reports' section ``s``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alignkit.core.losses import clip_loss
from alignkit.core.registry import ConfigError


@dataclass
class SectionPooling:
    """Outputs of :class:`ViewSectionAttention` for ``B`` studies of up to ``N`` videos, ``S`` sections.

    ``sections``: ``(B, S, D)`` normalised section embeddings; ``study``: ``(B, D)`` normalised study embeddings;
    ``weights``: ``(B, S, N)`` attention over each study's videos (0 at padding; rows sum to 1)."""

    sections: Tensor
    study: Tensor
    weights: Tensor


class ViewSectionAttention(nn.Module):
    """Learned ``(section, view)`` logits ``A`` (``(S, V)``, initialised to 0: a plain mean); see the module
    docstring. ``sections``/``views`` name the rows and columns."""

    def __init__(self, sections: Sequence[str], views: Sequence[str]):
        super().__init__()
        if not sections or not views:
            raise ConfigError(f"ViewSectionAttention needs at least one section and one view; got {list(sections)}, "
                              f"{list(views)}")
        self.sections, self.views = list(sections), list(views)
        self.logits = nn.Parameter(torch.zeros(len(self.sections), len(self.views)))

    def forward(self, videos: Tensor, views: Tensor, mask: Tensor) -> SectionPooling:
        """``videos`` ``(B, N, D)`` (normalised), ``views`` ``(B, N)`` long view indices, ``mask`` ``(B, N)`` bool
        (True at real videos; every study needs one) -> :class:`SectionPooling`."""
        if not bool(mask.any(1).all()):
            raise ValueError("ViewSectionAttention: a study has no videos (a mask row is all False)")
        logits = self.logits[:, views.clamp_min(0)].permute(1, 0, 2)  # (B, S, N)
        weights = logits.masked_fill(~mask.unsqueeze(1), float("-inf")).softmax(-1)
        sections = F.normalize(weights @ videos, dim=-1)
        return SectionPooling(sections, F.normalize(sections.sum(1), dim=-1), weights)


def pad_studies(values: Tensor, study: Tensor, num_studies: int) -> Tuple[Tensor, Tensor]:
    """Per-video ``values`` ``(N, ...)`` with their study index ``(N,)`` -> padded ``(B, M, ...)`` (``M`` the most
    videos of a study, videos in their original order) and the mask ``(B, M)``."""
    counts = torch.bincount(study, minlength=num_studies)
    width = int(counts.max()) if len(counts) else 0
    order = torch.argsort(study, stable=True)
    slot = torch.arange(len(study)) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    padded = values.new_zeros((num_studies, width, *values.shape[1:]))
    mask = torch.zeros(num_studies, width, dtype=torch.bool)
    padded[study[order], slot] = values[order]
    mask[study[order], slot] = True
    return padded, mask


def train_section_attention(attention: ViewSectionAttention, videos: Tensor, views: Tensor, mask: Tensor,
                            section_text: Tensor, section_mask: Tensor, steps: int = 200, lr: float = 0.05,
                            temperature: float = 0.07) -> List[float]:
    """Fit ``attention.logits`` (Adam, ``steps`` full-batch steps) so each study's section embedding ``e_s``
    retrieves its own report's section ``s``: ``sum_s clip_loss(e_s[has_s], section_text[has_s, s])`` over the
    studies whose report has section ``s`` (``section_mask`` ``(B, S)``; sections with fewer than 2 such studies
    are left out). ``videos``/``views``/``mask`` as :meth:`ViewSectionAttention.forward`; ``section_text``
    ``(B, S, D)`` normalised. Returns the loss per step."""
    usable = [s for s in range(len(attention.sections)) if int(section_mask[:, s].sum()) >= 2]
    if not usable:
        raise ValueError("train_section_attention: no section is present in at least 2 studies' reports")
    scale = torch.tensor(1.0 / temperature).log()
    optimiser = torch.optim.Adam(attention.parameters(), lr=lr)
    history: List[float] = []
    for _ in range(steps):
        pooled = attention(videos, views, mask).sections
        loss = sum(clip_loss(pooled[section_mask[:, s], s], section_text[section_mask[:, s], s], scale,
                             distributed=False) for s in usable) / len(usable)
        optimiser.zero_grad()
        loss.backward()  # type: ignore[union-attr]
        optimiser.step()
        history.append(float(loss.detach()))  # type: ignore[union-attr]
    return history
