"""Out-of-distribution scores and the calibrated thresholds of the echo interpretation (:class:`InterpretCalibration`,
fitted by :func:`fit_calibration` on held-out studies, stored beside the report index as ``calibration.json`` +
``calibration.safetensors``).

Scores (``f`` the video encoder's outputs ``(N, E)``, before the projection head, which maps much of what it has
never seen onto the training manifold; ``mu``, ``sd`` their per-dimension mean and standard deviation over the
training videos; ``k`` neighbours; :func:`~alignkit.domains.medical.retrieval_reports.knn_distance`):

- per video: ``training_distance = 1 - mean_{top-k} cos(f_n, f_train_video)`` and ``feature_zscore =
  mean_e ((f_ne - mu_e) / sd_e)^2`` (abstain above), ``view_confidence = max_v softmax(view logits)_v`` (abstain
  below);
- per study (its accepted videos): ``training_distance = 1 - mean_{top-k} cos(mean_n f_n, f_train_study)`` with the
  training studies' mean video features and ``feature_zscore`` of ``mean_n f_n`` (abstain above; calibrated on the
  held-out studies' means, so a study must look like a whole study of the archive), and
  ``evidence_similarity = max_j cos(e, r_j)`` of the study embedding ``e`` used for retrieval against the training
  reports ``r`` (abstain below);
- per section: the similarity of its best candidate; threshold at the held-out studies' lower ``rate`` quantile,
  never below 0.

Each score's threshold is split-conformal on the held-out studies at ``rate / 3`` (three scores per level, so by the
union bound an in-distribution video is excluded, and a study abstains, with probability ``<= rate``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor

from alignkit.core.checkpoints import load_safetensors, read_json
from alignkit.domains.medical.retrieval_reports import (ABOVE, BELOW, Threshold, knn_distance, lower_threshold,
                                                        thresholds_from_json, thresholds_to_json)
from alignkit.domains.medical.echo.interpret.embedding import StudySet

CALIBRATION_FILES = ("calibration.json", "calibration.safetensors")
DEFAULT_RATE = 0.05
"""The false-abstention rate the demo calibrates at (held-out in-distribution studies)."""
SUMMARY_SECTIONS = ("conclusions",)
"""Sections assembled from the reported ones, never retrieved."""


@dataclass
class InterpretCalibration:
    """Thresholds (see the module docstring) and the training features the distances are measured to:
    ``train_videos`` ``(N, E)``, ``train_studies`` ``(B, E)`` (normalised), and their per-dimension ``feature_mean``,
    ``feature_std`` ``(E,)``. ``held_out``: what they were calibrated on, in words;
    ``measured``: figures measured with them (e.g. the false-abstention rate on the test studies)."""

    rate: float
    k: int
    video: Dict[str, Threshold]
    study: Dict[str, Threshold]
    sections: Dict[str, float]
    train_videos: Tensor
    train_studies: Tensor
    feature_mean: Tensor
    feature_std: Tensor
    held_out: str = ""
    measured: Dict[str, float] = field(default_factory=dict)

    def zscore(self, features: Tensor) -> Tensor:
        """``(N,)``: ``mean_e ((f_ne - mu_e) / sd_e)^2``."""
        return ((features.float() - self.feature_mean) / self.feature_std).pow(2).mean(-1)

    def video_scores(self, features: Tensor, view_logits: Tensor) -> Dict[str, Tensor]:
        """``(N,)`` scores per video (encoder features ``(N, E)``, logits ``(N, V)``)."""
        return {"training_distance": knn_distance(F.normalize(features.float(), dim=-1), self.train_videos, self.k),
                "feature_zscore": self.zscore(features),
                "view_confidence": view_logits.float().softmax(-1).max(-1).values}

    def study_scores(self, features: Tensor, query: Tensor, reports: Tensor) -> Dict[str, float]:
        """Scores of one study from its accepted videos' features ``(N, E)``, its retrieval embedding ``(D,)`` and the
        training reports ``(B, D)``."""
        mean = features.float().mean(0, keepdim=True)
        return {"training_distance": float(knn_distance(F.normalize(mean, dim=-1), self.train_studies, self.k)[0]),
                "feature_zscore": float(self.zscore(mean)[0]),
                "evidence_similarity": float((reports.float() @ query.float()).max())}

    def bound(self, level: str = "study") -> float:
        """The false-abstention rate the thresholds of ``level`` (``"video"``/``"study"``) guarantee: the sum over
        its scores of ``max(rate_s, 1 / (n + 1))`` (with ``n`` held-out inputs no threshold can promise less than
        ``1 / (n + 1)``); equals ``rate`` once ``n + 1 >= 3 / rate``."""
        thresholds = self.study if level == "study" else self.video
        return min(1.0, sum(max(t.rate, 1.0 / (t.n + 1)) for t in thresholds.values()))

    def describe(self) -> str:
        return (f"abstention thresholds calibrated on {self.held_out} at a false-abstention rate of {self.rate:.0%} "
                f"({self.rate / 3:.1%} per score, k = {self.k}; guaranteed <= {self.bound('study'):.1%} per study "
                f"and {self.bound('video'):.1%} per video with this many held-out inputs)"
                + (("; measured: " + ", ".join(f"{k} {v:.3f}" for k, v in self.measured.items()))
                   if self.measured else ""))

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        save_file({"train_videos": self.train_videos.contiguous(), "train_studies": self.train_studies.contiguous(),
                   "feature_mean": self.feature_mean.contiguous(), "feature_std": self.feature_std.contiguous()},
                  str(folder / CALIBRATION_FILES[1]))
        meta = {"rate": self.rate, "k": self.k, "video": thresholds_to_json(self.video),
                "study": thresholds_to_json(self.study), "sections": self.sections, "held_out": self.held_out,
                "measured": self.measured}
        (folder / CALIBRATION_FILES[0]).write_text(json.dumps(meta, indent=1))

    @classmethod
    def load(cls, folder: str | Path) -> Optional["InterpretCalibration"]:
        """The calibration in ``folder``, or None when it has none."""
        folder = Path(folder)
        if not (folder / CALIBRATION_FILES[0]).is_file():
            return None
        meta: Dict[str, Any] = read_json(folder / CALIBRATION_FILES[0])
        tensors = load_safetensors(folder / CALIBRATION_FILES[1])
        return cls(rate=meta["rate"], k=meta["k"], video=thresholds_from_json(meta["video"]),
                   study=thresholds_from_json(meta["study"]), sections=dict(meta["sections"]),
                   train_videos=tensors["train_videos"], train_studies=tensors["train_studies"],
                   feature_mean=tensors["feature_mean"], feature_std=tensors["feature_std"],
                   held_out=meta.get("held_out", ""), measured=dict(meta.get("measured", {})))


def section_similarities(index: Any, video: Tensor, views: Tensor) -> Dict[str, float]:
    """The best candidate's similarity per retrieved section for one study (videos ``(N, D)``, views ``(N,)``) under
    ``index`` (a :class:`~alignkit.domains.medical.echo.interpret.index.ReportIndex`, which imports this module)."""
    _, per_section, _ = index.pool(video, views)
    return {name: float((emb @ per_section[name]).max()) for name, (_, _, emb) in index.sections.items()
            if name not in SUMMARY_SECTIONS}


@torch.no_grad()
def fit_calibration(index: Any, train: StudySet, held_out: StudySet, rate: float = DEFAULT_RATE,
                    k: int = 5, held_out_name: str = "held-out studies") -> InterpretCalibration:
    """Calibrate the thresholds of ``index`` (a :class:`~alignkit.domains.medical.echo.interpret.index.ReportIndex`)
    on ``held_out`` studies (never trained on), with ``train``'s embeddings as the reference (see the module
    docstring)."""
    if train.features is None or held_out.features is None:
        raise ValueError("fit_calibration needs the video encoder's features of both study sets (embed_studies keeps "
                         "them)")
    study_features = train.features.new_zeros(len(train.study_ids), train.features.shape[1])
    study_features = F.normalize(study_features.index_add(0, train.study, train.features), dim=-1)
    calibration = InterpretCalibration(rate=rate, k=k, video={}, study={}, sections={},
                                       train_videos=F.normalize(train.features, dim=-1), train_studies=study_features,
                                       feature_mean=train.features.mean(0),
                                       feature_std=train.features.std(0).clamp_min(1e-6),
                                       held_out=f"{len(held_out.study_ids)} {held_out_name} "
                                                f"({len(held_out.video)} videos)")
    video_scores = calibration.video_scores(held_out.features, held_out.view_logits)
    sides = {"training_distance": ABOVE, "feature_zscore": ABOVE, "view_confidence": BELOW,
             "evidence_similarity": BELOW}
    calibration.video = {name: Threshold.fit(v, sides[name], rate / 3) for name, v in video_scores.items()}
    study_scores: List[Dict[str, float]] = []
    sections: Dict[str, List[float]] = {}
    views = held_out.view_logits.argmax(1)
    for s in range(len(held_out.study_ids)):
        members = held_out.study == s
        query, _, _ = index.pool(held_out.video[members], views[members])
        study_scores.append(calibration.study_scores(held_out.features[members], query, index.report))
        for name, sim in section_similarities(index, held_out.video[members], views[members]).items():
            sections.setdefault(name, []).append(sim)
    calibration.study = {name: Threshold.fit([s[name] for s in study_scores], sides[name], rate / 3)
                         for name in study_scores[0]}
    calibration.sections = {name: lower_threshold(sims, rate) for name, sims in sections.items()}
    return calibration
