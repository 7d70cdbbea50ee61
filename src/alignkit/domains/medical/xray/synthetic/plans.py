"""Study plans of the synthetic archive: subjects, findings, decoys, devices and report form of every study.

Findings (:data:`FINDINGS`, each in 15-35 % of studies, co-occurring through a heart-failure and a pneumonia
factor) have a random severity in [0, 1], so that some positives are subtle, and a report mention (positive,
uncertain when subtle, negated or not mentioned). Everything is drawn from seeded ``numpy`` generators: the
drawing (:mod:`.render`) and the report (:mod:`.reports`) only read a :class:`StudyPlan`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

import numpy as np

FINDINGS: Tuple[str, ...] = ("cardiomegaly", "pleural_effusion", "pneumothorax", "nodule", "consolidation", "edema")
"""The six findings drawn on the images, in label order."""

CHEXPERT_LABELS: Tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture",
    "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia",
    "Pneumothorax", "Support Devices")
"""The 14 label columns of ``mimic-cxr-2.0.0-chexpert.csv``, in the file's order."""

FINDING_COLUMNS: Dict[str, str] = {
    "cardiomegaly": "Cardiomegaly", "pleural_effusion": "Pleural Effusion", "pneumothorax": "Pneumothorax",
    "nodule": "Lung Lesion", "consolidation": "Consolidation", "edema": "Edema"}
"""The CheXpert column that labels each finding."""

SIDES = {"right": -1, "left": 1}  # patient side -> image side (-1: image left, PA display convention)
LOBES: Dict[str, Tuple[int, float, float]] = {  # lobe -> (image side, height t in the lung, lateral fraction)
    "right upper lobe": (-1, 0.22, 0.55), "right middle lobe": (-1, 0.64, 0.28), "right lower lobe": (-1, 0.8, 0.6),
    "left upper lobe": (1, 0.3, 0.55), "lingula": (1, 0.62, 0.3), "left lower lobe": (1, 0.82, 0.62)}
ZONES: Dict[str, Tuple[float, float]] = {"upper": (0.12, 0.36), "mid": (0.38, 0.6), "lower": (0.62, 0.86)}

FINDING_PROMPTS: Dict[str, Tuple[str, ...]] = {
    "cardiomegaly": ("Cardiomegaly.", "Moderate cardiomegaly.", "Enlargement of the cardiac silhouette."),
    "pleural_effusion": ("Small right pleural effusion.", "Small left pleural effusion.",
                         "Moderate bilateral pleural effusions."),
    "pneumothorax": ("Small right pneumothorax.", "Small left pneumothorax.", "Right apical pneumothorax."),
    "nodule": ("Nodule in the right upper lung.", "Nodule in the left upper lung.", "Nodule in the right mid lung.",
               "Nodule in the left mid lung.", "Nodule in the right lung base.", "Nodule in the left lung base."),
    "consolidation": tuple(f"Consolidation in the {lobe}." for lobe in LOBES),
    "edema": ("Pulmonary edema.", "Moderate pulmonary edema.", "Mild interstitial edema with Kerley B lines.")}
"""Positive zero-shot prompts per finding (an ensemble), each scored against :data:`NORMAL_PROMPTS`."""

NORMAL_PROMPTS: Tuple[str, ...] = ("No acute cardiopulmonary process.",)

SPLITS = ("train", "validate", "test")
SPLITS = ("train", "validate", "test")


@dataclass
class FindingState:
    """One finding of one study: drawn if ``present``; ``mention`` is how the report states it
    (``"positive"``, ``"uncertain"``, ``"negative"`` or ``"none"``)."""

    present: bool = False
    severity: float = 0.0
    side: str = ""  # "right", "left" or "bilateral" (patient sides)
    place: str = ""  # lobe (consolidation) or "<side> <zone>" (nodule)
    mention: str = "none"
    radius: float = 0.0  # nodule radius (normalised units; about 300 mm across the image)


@dataclass
class Subject:
    """Body habitus shared by a subject's studies (normalised image units, before the per-image affine)."""

    subject_id: str
    split: str
    female: bool
    age: int
    half_width: float  # thorax half-width w
    apex: float  # lung apex height
    dome: float  # right hemidiaphragm dome height (the left sits lower)
    ctr: float  # cardiothoracic ratio of the heart when normal
    fat: float  # soft-tissue thickness, 0..1
    hilum: float  # hilar prominence, 0..1
    breast: float  # breast-shadow density (0 for men)


@dataclass
class StudyPlan:
    """Everything :func:`~.render.render_frontal`, :func:`~.render.render_lateral` and
    :func:`~.reports.write_report` need for one study."""

    subject: Subject
    study_id: str
    dicom_ids: List[str]  # frontal first, then the lateral if any
    view: str  # "PA" or "AP"
    seed: int  # seed of the per-image randomness (texture, noise, vessels)
    findings: Dict[str, FindingState]
    low_volumes: bool = False
    decoys: Dict[str, str] = field(default_factory=dict)  # decoy name -> side/details ("" if none)
    devices: List[str] = field(default_factory=list)
    atelectasis: str = ""  # "", "right", "left", "bibasilar"
    report_form: str = "full"  # "full", "impression_only", "findings_only", "unsectioned"
    date: str = ""
    time: str = ""

    @property
    def has_lateral(self) -> bool:
        return len(self.dicom_ids) > 1


def _hex_id(rng: np.random.Generator) -> str:
    return "-".join(f"{int(x):08x}" for x in rng.integers(0, 2 ** 32, size=5))


def _sample_subject(rng: np.random.Generator, subject_id: str, split: str) -> Subject:
    female = bool(rng.random() < 0.5)
    return Subject(subject_id=subject_id, split=split, female=female, age=int(rng.integers(20, 95)),
                   half_width=float(rng.uniform(0.33, 0.41)), apex=float(rng.uniform(0.1, 0.17)),
                   dome=float(rng.uniform(0.66, 0.76)), ctr=float(rng.uniform(0.39, 0.49)),
                   fat=float(rng.uniform(0, 1)), hilum=float(rng.uniform(0, 1)),
                   breast=float(rng.uniform(0.08, 0.22)) if female else 0.0)


def _side(rng: np.random.Generator, bilateral: float) -> str:
    return "bilateral" if rng.random() < bilateral else str(rng.choice(["right", "left"]))


def _finding_mention(rng: np.random.Generator, state: FindingState, negate: float) -> str:
    if state.present:
        return "uncertain" if state.severity < 0.3 and rng.random() < 0.3 else "positive"
    return "negative" if rng.random() < negate else "none"


def sample_study(rng: np.random.Generator, subject: Subject, study_id: str, lateral_fraction: float,
                 impression_only_fraction: float, findings_only_fraction: float,
                 unsectioned_fraction: float) -> StudyPlan:
    """Draw the view, findings (with severity, side, place and report mention), decoys and devices of a study."""
    view = "AP" if rng.random() < 0.4 else "PA"
    heart_failure = rng.random() < 0.22
    pneumonia = rng.random() < 0.24
    prob = {"cardiomegaly": 0.55 if heart_failure else 0.14,
            "pleural_effusion": (0.45 if heart_failure else 0.1) + (0.2 if pneumonia else 0.0),
            "pneumothorax": 0.24 if view == "AP" else 0.14,
            "nodule": 0.2,
            "consolidation": 0.75 if pneumonia else 0.04,
            "edema": 0.6 if heart_failure else 0.07}
    findings: Dict[str, FindingState] = {}
    for name in FINDINGS:
        state = FindingState(present=bool(rng.random() < prob[name]))
        if state.present:
            state.severity = float(rng.random())
        if name == "pleural_effusion":
            state.side = _side(rng, 0.4 if heart_failure else 0.2)
        elif name == "pneumothorax":
            state.side = _side(rng, 0.0)
        elif name == "nodule":
            state.side = _side(rng, 0.0)
            state.place = f"{state.side} {rng.choice(list(ZONES))}"
            state.radius = (0.024 + 0.024 * state.severity) * float(rng.uniform(0.9, 1.1))
        elif name == "consolidation":
            state.place = str(rng.choice(list(LOBES)))
            state.side = "right" if state.place.startswith("right") else "left"
        negate = {"cardiomegaly": 0.35, "pleural_effusion": 0.75, "pneumothorax": 0.75, "nodule": 0.2,
                  "consolidation": 0.7, "edema": 0.4}[name]
        state.mention = _finding_mention(rng, state, negate)
        findings[name] = state
    decoys: Dict[str, str] = {}
    if rng.random() < (0.45 if subject.female else 0.25):
        decoys["nipples"] = "bilateral" if rng.random() < 0.7 else str(rng.choice(["right", "left"]))
    if rng.random() < (0.6 if view == "AP" else 0.18):
        decoys["ecg"] = str(int(rng.integers(2, 6)))
    if rng.random() < (0.22 if view == "AP" else 0.1):
        decoys["skin_fold"] = str(rng.choice(["right", "left"]))
    if rng.random() < 0.25:
        decoys["haze"] = str(rng.choice(["right", "left"]))
    if rng.random() < 0.1:
        decoys["raised_hemidiaphragm"] = str(rng.choice(["right", "left"]))
    if view == "AP" and rng.random() < 0.5:
        decoys["scapula"] = "bilateral"
    # An absent nodule next to a nipple shadow or electrode is sometimes called possible (an uncertain label).
    if not findings["nodule"].present and ("nipples" in decoys or "ecg" in decoys) and rng.random() < 0.08:
        findings["nodule"].mention = "uncertain"
        findings["nodule"].side = decoys.get("nipples", "right").replace("bilateral", "left")
        findings["nodule"].place = f"{findings['nodule'].side} lower"
    devices = [name for name, p in (("pacemaker", 0.07), ("central line", 0.25 if view == "AP" else 0.06),
                                    ("endotracheal tube", 0.2 if view == "AP" else 0.0),
                                    ("enteric tube", 0.18 if view == "AP" else 0.02),
                                    ("sternotomy", 0.08)) if rng.random() < p]
    atelectasis = str(rng.choice(["right", "left", "bibasilar"])) if rng.random() < 0.15 else ""
    u = rng.random()
    form = ("impression_only" if u < impression_only_fraction else
            "findings_only" if u < impression_only_fraction + findings_only_fraction else
            "unsectioned" if u < impression_only_fraction + findings_only_fraction + unsectioned_fraction else "full")
    num_images = 2 if view == "PA" and rng.random() < lateral_fraction / 0.6 else 1  # 60 % of studies are PA
    date = f"21{int(rng.integers(10, 99))}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}"
    time = f"{int(rng.integers(0, 24)):02d}{int(rng.integers(0, 60)):02d}{int(rng.integers(0, 60)):02d}.000"
    return StudyPlan(subject=subject, study_id=study_id, dicom_ids=[_hex_id(rng) for _ in range(num_images)],
                     view=view, seed=int(rng.integers(0, 2 ** 31)), findings=findings,
                     low_volumes=bool(rng.random() < (0.3 if view == "AP" else 0.12)), decoys=decoys,
                     devices=devices, atelectasis=atelectasis, report_form=form, date=date, time=time)


def plan_archive(num_studies: int, seed: int = 0, split_fractions: Sequence[float] = (0.8, 0.05, 0.15),
                 lateral_fraction: float = 0.25, impression_only_fraction: float = 0.04,
                 findings_only_fraction: float = 0.04, unsectioned_fraction: float = 0.01) -> List[StudyPlan]:
    """``num_studies`` study plans of 1-4 studies per subject; subjects are split by ``split_fractions``.

    Subject ``j`` draws from ``numpy.random.default_rng([seed, j])``, so a larger archive extends a smaller one.
    """
    if len(split_fractions) != 3 or min(split_fractions) < 0 or not math.isclose(sum(split_fractions), 1.0):
        raise ValueError(f"split_fractions must be 3 non-negative numbers (train, validate, test) summing to 1; "
                         f"got {list(split_fractions)}")
    plans: List[StudyPlan] = []
    j = 0
    while len(plans) < num_studies:
        rng = np.random.default_rng([seed, j])
        u = rng.random()
        split = SPLITS[0] if u < split_fractions[0] else SPLITS[1] if u < split_fractions[0] + split_fractions[1] \
            else SPLITS[2]
        subject = _sample_subject(rng, f"1{j:07d}", split)
        for k in range(min(int(rng.choice([1, 1, 1, 2, 2, 3, 4])), num_studies - len(plans))):
            plans.append(sample_study(rng, subject, f"5{j:05d}{k:02d}", lateral_fraction, impression_only_fraction,
                                      findings_only_fraction, unsectioned_fraction))
        j += 1
    return plans
