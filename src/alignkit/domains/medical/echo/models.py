"""Video-report pretraining with a view classifier: ``MODELS["echo-clip"]``.

:class:`EchoClipModule` is the core :class:`~alignkit.core.module.AlignmentModule` (a video tower and a report
tower aligned by the configured objectives, e.g. the core ``multi_positive`` loss over the dataset's ``group``:
every video of a study is a positive of its report) plus a view classifier on the video encoder's features:

    L = sum_k w_k loss_k(z_video, z_text) + view_weight * CE(W f_video + b, view)

where ``f_video`` ``(B, encoder.output_dim)`` is the video encoder's output (computed once per step for both
terms) and ``view`` the sample's ``label`` (its index in ``views``). Logged: ``view/loss``, ``view/accuracy``.

A report given as its sections (a list of ``S_b`` strings, ``text_mode: sections``) is embedded by
``section_pool``:

- ``"embeddings"`` (default): each section through the whole text tower on its own, then
  ``z_b = normalize(1/S_b sum_s normalize(head(enc(section_s))))``; the head sees one section at a time, so a
  short sentence that decides a finding ("No pericardial effusion." against "Small pericardial effusion.") is not
  averaged into the features of the other sections before the head can separate it;
- ``"features"``: the core tower's ``normalize(head(1/S_b sum_s enc(section_s)))``.
"""
from __future__ import annotations

from typing import Annotated, Any, Dict, List, Optional, Sequence, Tuple

import torch

import torch.nn.functional as F
from torch import Tensor, nn

from alignkit.core.module import AlignmentModule
from alignkit.core.params import NON_NEGATIVE, OneOf, check_choice
from alignkit.core.registry import MODELS, ConfigError
from alignkit.domains.medical.echo.archives import ECHOPRIME_VIEWS

SECTION_POOLS = ("embeddings", "features")


def section_mean(embeddings: Tensor, counts: Sequence[int]) -> Tensor:
    """``(sum_b S_b, D)`` section embeddings, ``S_b`` = ``counts[b]`` consecutive rows per report -> ``(B, D)``
    the mean of each report's rows."""
    sizes = torch.as_tensor(list(counts), device=embeddings.device)
    index = torch.repeat_interleave(torch.arange(len(sizes), device=embeddings.device), sizes)
    sums = embeddings.new_zeros(len(sizes), embeddings.shape[1]).index_add(0, index, embeddings)
    return sums / sizes.to(embeddings.dtype)[:, None]


@MODELS.register("echo-clip")
class EchoClipModule(AlignmentModule):
    """Video-report alignment plus a view classifier (see the module docstring).

    Args:
        model, optim: as :class:`~alignkit.core.module.AlignmentModule`.
        views: the view vocabulary (the classifier's classes, in the dataset's ``label`` order; default the 11
            EchoPrime views).
        view_weight: weight of the view cross-entropy (0: no view loss; the classifier stays untrained).
        video, text: the modalities of the video and report towers.
        label_key: the batch field holding each video's view index.
        section_pool: how a report given as its sections is embedded (see the module docstring).
    """

    def __init__(self, model: Dict[str, Any], optim: Optional[Dict[str, Any]] = None,
                 views: Sequence[str] = ECHOPRIME_VIEWS, view_weight: Annotated[float, NON_NEGATIVE] = 1.0,
                 video: str = "video", text: str = "text", label_key: str = "label",
                 section_pool: Annotated[str, OneOf(SECTION_POOLS)] = "embeddings"):
        super().__init__(model, optim)
        check_choice(section_pool, SECTION_POOLS, "echo-clip section_pool")
        self.section_pool = section_pool
        for name in (video, text):
            if name not in self.towers:
                raise ConfigError(f"echo-clip: model.towers has no '{name}' tower (towers: {', '.join(self.towers)})"
                                  "; set model.params.video / model.params.text to the video and report modalities")
        if view_weight < 0 or len(views) < 2:
            raise ConfigError(f"echo-clip needs view_weight >= 0 and at least 2 views; got {view_weight}, "
                              f"{list(views)}")
        self.views = list(views)
        self.video_modality, self.text_modality, self.label_key = video, text, label_key
        self.view_weight = float(view_weight)
        self.view_head = nn.Linear(int(self.towers[video].encoder.output_dim), len(self.views))
        self._features: Optional[Tensor] = None  # the video encoder's output of the current step

    def embed(self, modality: str, inputs: Any, normalize: bool = True) -> Tensor:
        """As the core's; the video tower's encoder output is kept for the view classifier of the same step, and a
        report given as a list of sections is embedded by ``section_pool``."""
        if modality == self.text_modality and self.section_pool == "embeddings" and \
                any(not isinstance(item, str) for item in inputs):
            return self._embed_sections(inputs, normalize)
        if modality != self.video_modality:
            return super().embed(modality, inputs, normalize)
        tower = self.towers[modality]
        self._features = tower.features(inputs).float()
        z = tower.head(self._features)
        return F.normalize(z, dim=-1) if normalize else z

    def _embed_sections(self, reports: Sequence[Any], normalize: bool) -> Tensor:
        """``B`` reports (strings or non-empty lists of section strings) -> ``(B, D)``: the normalised mean of
        their sections' normalised embeddings (unnormalised with ``normalize=False``, the mean itself)."""
        parts: List[List[str]] = [[item] if isinstance(item, str) else list(item) for item in reports]
        empty = [k for k, p in enumerate(parts) if not p]
        if empty:
            raise ValueError(f"echo-clip: report {empty[0]} of the batch has no sections (an empty list); give "
                             "it at least one section string")
        flat = [text for p in parts for text in p]
        mean = section_mean(self.towers[self.text_modality](flat, normalize=True), [len(p) for p in parts])
        return F.normalize(mean, dim=-1) if normalize else mean

    def video_outputs(self, videos: Tensor) -> Tuple[Tensor, Tensor]:
        """Normalised video embeddings ``(B, D)`` and view logits ``(B, len(views))`` from one encoder pass."""
        z, logits, _ = self.video_features(videos)
        return z, logits

    def video_features(self, videos: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """As :meth:`video_outputs`, plus the video encoder's output ``(B, encoder.output_dim)`` (the features the
        head and the view classifier read; the interpretation measures out-of-distribution distances on them)."""
        z = self.embed(self.video_modality, videos)
        assert self._features is not None
        features, self._features = self._features, None
        return z, self.view_head(features), features

    def compute_loss(self, batch: Dict[str, Any]) -> Dict[str, Tensor]:
        out = super().compute_loss(batch)
        if self.view_weight > 0:
            if self.label_key not in batch:
                raise KeyError(f"echo-clip: batches lack '{self.label_key}' (the view index) needed by the view "
                               f"classifier; give the dataset a view column or set model.params.view_weight: 0")
            assert self._features is not None
            logits = self.view_head(self._features)
            labels = batch[self.label_key].long()
            loss = F.cross_entropy(logits, labels)
            out["loss"] = out["loss"] + self.view_weight * loss
            out["view/loss"] = loss.detach()
            out["view/accuracy"] = (logits.argmax(1) == labels).float().mean().detach()
        self._features = None
        return out
