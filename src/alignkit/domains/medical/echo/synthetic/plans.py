"""Plans of synthetic echo studies: the heart, its findings and the views to draw, drawn from a seed.

Each study has a heart (:class:`StudyPlan`): an ejection fraction (EF; 70 % normal 52-72 %, 30 % reduced
15-50 %), an end-diastolic volume (EDV 80-140 mL, 180-260 mL with a dilated LV; ``ESV = EDV (1 - EF)``),
a heart rate of 62-100 /min and the findings of ``findings`` (each with probability ``finding_rate``), and
``videos_per_study`` clips in distinct views: ``required_views`` (default the apical four-chamber, which shows
every finding) plus random others.

Findings (:data:`FINDINGS`): ``dilated_lv`` (EDV 180-260 mL), ``dilated_la`` (LA x1.35-1.6),
``pericardial_effusion`` (a rim of 5-10 % of the frame) and ``dilated_rv`` (RV x1.35-1.55), each graded
mild / moderate / severe (probabilities 0.4 / 0.4 / 0.2; a dilated LV graded by its EDV).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

import numpy as np

FINDINGS: Tuple[str, ...] = ("dilated_lv", "dilated_la", "pericardial_effusion", "dilated_rv")
"""Findings the generator can draw, in label order."""
DEFAULT_FINDINGS: Tuple[str, ...] = FINDINGS[:3]
SPLITS: Tuple[str, ...] = ("train", "val", "test")


@dataclass
class StudyPlan:
    """Everything about one synthetic study (the heart, its findings and the videos to draw).

    ``ef`` is a fraction (0..1); ``edv``/``esv`` in mL; ``heart_rate`` in beats per minute; ``severity``:
    finding -> ``"mild"``/``"moderate"``/``"severe"`` for the present ones; ``scales``: chamber role -> size
    factor; ``effusion``: rim width (units of the frame, 0 = none).
    """

    study_id: str
    index: int
    split: str
    ef: float
    edv: float
    heart_rate: float
    findings: Dict[str, bool]
    severity: Dict[str, str]
    scales: Dict[str, float]
    effusion: float
    views: List[str]
    file_names: List[str] = field(default_factory=list)

    @property
    def esv(self) -> float:
        return self.edv * (1.0 - self.ef)


def _split(index: int, fractions: Sequence[float]) -> str:
    """Study ``index``'s split: a low-discrepancy sequence ``frac(0.5 + index * 0.618...)`` against the cumulative
    ``fractions``, so every prefix of an archive holds about the requested fractions."""
    u = (0.5 + index * (math.sqrt(5) - 1) / 2) % 1.0
    return SPLITS[min(int(np.searchsorted(np.cumsum(fractions), u, side="right")), len(SPLITS) - 1)]


def _grade(rng: np.random.Generator) -> str:
    return str(rng.choice(["mild", "moderate", "severe"], p=[0.4, 0.4, 0.2]))


def plan_study(index: int, seed: int, views: Sequence[str], findings: Sequence[str], videos_per_study: int,
               required_views: Sequence[str], finding_rate: float, split_fractions: Sequence[float]) -> StudyPlan:
    """The plan of study ``index`` (deterministic given ``seed`` and ``index``; see the module docstring)."""
    rng = np.random.default_rng([seed, index, 1])
    present = {f: f in findings and bool(rng.random() < finding_rate) for f in FINDINGS}
    severity = {f: _grade(rng) for f, on in present.items() if on}
    level = {"mild": 0.0, "moderate": 0.5, "severe": 1.0}
    ef = rng.uniform(0.52, 0.72) if rng.random() < 0.7 else rng.uniform(0.15, 0.50)
    edv = rng.uniform(180, 260) if present["dilated_lv"] else rng.uniform(80, 140)
    if present["dilated_lv"]:
        severity["dilated_lv"] = "mild" if edv < 205 else ("moderate" if edv < 235 else "severe")
    scales = {"LV": (edv / 110.0) ** (1 / 3),
              "LA": 1.35 + 0.25 * level[severity["dilated_la"]] if present["dilated_la"] else rng.uniform(0.9, 1.1),
              "RV": 1.35 + 0.2 * level[severity["dilated_rv"]] if present["dilated_rv"] else rng.uniform(0.9, 1.1),
              "RA": rng.uniform(0.9, 1.1), "AO": rng.uniform(0.9, 1.1), "vessel": rng.uniform(0.9, 1.1)}
    effusion = 0.05 + 0.05 * level[severity["pericardial_effusion"]] if present["pericardial_effusion"] else 0.0
    others = [v for v in views if v not in required_views]
    count = max(0, min(videos_per_study, len(views)) - len(required_views))
    chosen = list(required_views) + [others[k] for k in sorted(rng.choice(len(others), size=count, replace=False))]
    return StudyPlan(study_id=f"S{index:06d}", index=index, split=_split(index, split_fractions), ef=float(ef),
                     edv=float(edv), heart_rate=float(rng.uniform(62, 100)), findings=present, severity=severity,
                     scales=scales, effusion=effusion, views=chosen)
