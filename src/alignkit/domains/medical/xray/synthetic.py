"""A synthetic chest X-ray archive in the real MIMIC-CXR-JPG layout (the data of ``alignkit demo xray``).

:func:`write_synthetic_mimic` writes::

    root/
      files/p{subject_id[:2]}/p{subject_id}/s{study_id}/{dicom_id}.jpg   grey JPEG, image_size x image_size
      files/p{subject_id[:2]}/p{subject_id}/s{study_id}.txt              free-text report (MIMIC style)
      mimic-cxr-2.0.0-chexpert.csv    subject_id, study_id + the 14 CheXpert columns (1.0 / 0.0 / -1.0 / blank)
      mimic-cxr-2.0.0-split.csv       dicom_id, study_id, subject_id, split (train / validate / test, by subject)
      mimic-cxr-2.0.0-metadata.csv    dicom_id, subject_id, study_id, ViewPosition (PA / AP / LATERAL), Rows, ...
      masks/{dicom_id}_{finding}.png  uint8 0/255 mask of each finding present on a frontal image
      masks.csv                       one row per frontal image and finding: dicom_id, subject_id, study_id,
                                      finding, present (0/1: drawn), pixels (mask area), severity (0..1, blank
                                      if absent), mask_path (relative to root; blank for an empty mask)

Images. Every study has one frontal image (PA or portable AP) and, with ``lateral_fraction``, a lateral
one. Frontal images are drawn as densities (bright = dense): a body outline, two lung fields (dark) with
vessel markings that taper towards the periphery, hila, mediastinum with trachea and aortic knob, the heart,
hemidiaphragms with a gastric bubble, posterior ribs, clavicles, spine, breast shadows, parenchymal texture;
then windowed with a random contrast and gamma, rotated, zoomed and shifted, blurred and given noise.
Subjects differ in thorax size and position, inspiration, soft tissue and exposure; AP images magnify the
heart, are noisier and more often carry ECG leads and devices.

Findings (:data:`FINDINGS`, each in 15-35 % of studies, co-occurring through a heart-failure and a
pneumonia factor), each with a random severity in [0, 1] so that some positives are subtle; beside each,
the normal look-alikes (decoys) it must be told apart from:

- ``cardiomegaly``: cardiothoracic ratio 0.52-0.68 (normal 0.39-0.49). Decoys: AP magnification of a
  normal heart (x1.08-1.16), low lung volumes.
- ``pleural_effusion``: basal fluid with a meniscus rising laterally, blunted costophrenic angle, lost
  hemidiaphragm outline; one side or both. Decoys: breast shadows, a raised hemidiaphragm, basal atelectasis.
- ``pneumothorax``: a visceral pleural line with dark pleural air and no lung markings beyond it, apical
  to lateral. Decoys: skin folds (an edge running past the lung border, markings on both sides), scapular
  borders, device lines.
- ``nodule``: a round solid opacity of 13-32 mm in one lung zone. Decoys: nipple shadows (soft-edged, lower
  zones, often paired), ECG electrodes (rings with wires), end-on vessels and rib crossings.
- ``consolidation``: patchy lobar airspace opacity, air bronchograms when dense; the middle lobe and lingula
  efface the heart border. Decoys: overlying soft-tissue haze (smooth, not confined to the lung), plate
  atelectasis.
- ``edema``: bilateral perihilar haze, Kerley B lines, blurred and upper-lobe-dominant vessels. Decoys: low
  lung volumes, soft-tissue haze, under-exposure, prominent hila.

Devices (pacemaker, central line, endotracheal and enteric tubes, sternotomy wires) are drawn and reported.

Reports have the MIMIC preamble (``FINAL REPORT``, ``EXAMINATION:``, ``INDICATION:``, ``TECHNIQUE:``,
``COMPARISON:``), then ``FINDINGS:`` and ``IMPRESSION:`` with varied phrasing: positive mentions with
severity, side and lobe ("Moderate right pleural effusion."), negations ("No pleural effusion or
pneumothorax.", "... without pneumothorax"), uncertain mentions ("Possible small left pleural effusion."),
normal statements ("No acute cardiopulmonary process."), devices, atelectasis and decoy descriptions.
A ``impression_only_fraction`` of reports has no FINDINGS section, a ``findings_only_fraction`` no
IMPRESSION, and an ``unsectioned_fraction`` no headers at all.

Labels. The CheXpert columns come from the report text as the CheXpert labeler defines them: per column
1.0 if some mention is positive, else -1.0 if some mention is uncertain, else 0.0 if it is negated, else blank
(not mentioned). Every finding present on the image is mentioned (positive, or uncertain when subtle);
an absent finding is negated, not mentioned, or - rarely, next to its decoy - uncertain. The six findings
map to the columns of :data:`FINDING_COLUMNS`; ``Atelectasis``, ``Pneumonia`` and ``Support Devices`` are
labelled from their own sentences, ``No Finding`` is 1.0 when no other column but ``Support Devices`` is
1.0 or -1.0; ``Enlarged Cardiomediastinum``, ``Fracture``, ``Lung Opacity`` and ``Pleural Other`` stay blank.
Masks give the pixels of each finding present on a frontal image (heart silhouette, fluid, pleural air,
nodule, consolidated lung, oedematous lung); an absent finding has no mask file (an empty mask).
"""
from __future__ import annotations

import csv
import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

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
METADATA_COLUMNS = ("dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition",
                    "Rows", "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning",
                    "ViewCodeSequence_CodeMeaning", "PatientOrientationCodeSequence_CodeMeaning")
MASK_COLUMNS = ("dicom_id", "subject_id", "study_id", "finding", "present", "pixels", "severity", "mask_path")

POSITIVE, UNCERTAIN, NEGATIVE = 1.0, -1.0, 0.0
LINE_SUPERSAMPLE = 4  # thin structures are drawn on a 4x canvas and box-averaged down (anti-aliasing)


# =========================================================================== study plans


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
    """Everything :func:`render_frontal`, :func:`render_lateral` and :func:`write_report` need for one study."""

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


# =========================================================================== drawing primitives


def _step(d: np.ndarray, width: float) -> np.ndarray:
    """Soft indicator of ``d > 0``: ``0.5 (1 + tanh(d / width))``."""
    return 0.5 * (1.0 + np.tanh(d / width))


def _lowpass(x: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian blur of a square array with standard deviation ``sigma_px`` pixels (FFT, periodic borders)."""
    n = x.shape[0]
    ky = np.fft.fftfreq(n)[:, None]
    kx = np.fft.rfftfreq(n)[None, :]
    gain = np.exp(-2.0 * (math.pi * sigma_px) ** 2 * (kx ** 2 + ky ** 2))
    return np.fft.irfft2(np.fft.rfft2(x) * gain, s=x.shape)


def _smooth_noise(rng: np.random.Generator, size: int, sigma_px: float) -> np.ndarray:
    """Zero-mean, unit-std Gaussian noise low-passed at ``sigma_px`` pixels, ``(size, size)``."""
    x = _lowpass(rng.standard_normal((size, size)), sigma_px)
    return (x - x.mean()) / (x.std() + 1e-8)


class LineCanvas:
    """Thin structures (vessels, wires, lines) drawn at ``LINE_SUPERSAMPLE`` x resolution, box-averaged to ``size``.

    Coordinates are normalised image units (0..1); widths are in output pixels. A stroke sets its pixels to its
    value (the maximum of overlapping strokes is not taken)."""

    def __init__(self, size: int):
        self.size = size
        self.scale = size * LINE_SUPERSAMPLE
        self.image = Image.new("F", (self.scale, self.scale), 0.0)
        self.draw = ImageDraw.Draw(self.image)

    def polyline(self, points: np.ndarray, width: float, value: float) -> None:
        xy = [(float(x) * self.scale, float(y) * self.scale) for x, y in points]
        self.draw.line(xy, fill=float(value), width=max(1, int(round(width * LINE_SUPERSAMPLE))), joint="curve")

    def result(self) -> np.ndarray:
        return np.asarray(self.image.resize((self.size, self.size), Image.Resampling.BOX), dtype=np.float64)


def _curve(rng: np.random.Generator, start: Tuple[float, float], angle: float, length: float, steps: int,
           wiggle: float) -> np.ndarray:
    """A random-walk polyline ``(steps + 1, 2)`` from ``start`` heading ``angle`` (radians, image axes)."""
    angles = angle + np.cumsum(rng.normal(0, wiggle, steps))
    d = np.stack([np.cos(angles), np.sin(angles)], 1) * (length / steps)
    return np.vstack([start, start + np.cumsum(d, 0)])


# =========================================================================== the frontal chest

COMPONENTS: Tuple[str, ...] = ("anatomy", "exposure", *FINDINGS, "nipples", "ecg", "skin_fold", "haze", "scapula",
                               "atelectasis", "devices")
"""Each component of an image draws from its own random stream, so toggling a finding changes its pixels only."""


def _component_rng(plan: StudyPlan, component: str) -> np.random.Generator:
    return np.random.default_rng([plan.seed, COMPONENTS.index(component)])


class Grid:
    """Pixel centres of a ``size`` x ``size`` image in normalised units: ``u`` across (0 left), ``v`` down."""

    def __init__(self, size: int):
        self.size = size
        self.px = 1.0 / size
        self.edge = 0.7 * self.px  # soft-edge width of organ outlines
        self.v, self.u = (np.mgrid[0:size, 0:size] + 0.5) * self.px

    def disc(self, x: float, y: float, r: float, edge_px: float = 0.5) -> np.ndarray:
        return _step(r - np.sqrt((self.u - x) ** 2 + (self.v - y) ** 2), edge_px * self.px)

    def gaussian(self, x: float, y: float, sx: float, sy: float) -> np.ndarray:
        return np.exp(-(((self.u - x) / sx) ** 2 + ((self.v - y) / sy) ** 2))


@dataclass
class Thorax:
    """Frontal thorax geometry of one image (normalised units; image side ``s = -1`` is the patient's right)."""

    cx: float
    w: float  # half-width of the rib cage
    apex: float
    dome_r: float
    dome_l: float
    heart_a: float  # heart semi-axes and centre
    heart_b: float
    heart_x: float
    heart_y: float
    dome_depth: float = 0.07

    def dome(self, s: int) -> float:
        return self.dome_r if s < 0 else self.dome_l

    def base(self, s: int) -> float:
        """Height of the costophrenic angle."""
        return self.dome(s) + self.dome_depth

    def hilum(self, s: int) -> Tuple[float, float]:
        return self.cx + s * (0.11 * self.w / 0.37 + 0.02), self.apex + 0.42 * (self.base(s) - self.apex)

    def mediastinum(self, v: np.ndarray, s: int) -> np.ndarray:
        """Half-width of the upper mediastinum at height ``v`` on image side ``s`` (aortic knob on the left)."""
        knob = 0.028 * np.exp(-((v - self.apex - 0.14) / 0.035) ** 2) if s > 0 else 0.0
        return 0.045 + 0.02 * self.w / 0.37 + knob

    def lateral(self, v: np.ndarray, s: int) -> np.ndarray:
        """Distance of the lateral lung border from the midline at height ``v`` (the rib-cage profile)."""
        t = np.clip((v - self.apex) / (self.base(s) - self.apex), 0, 1)
        return self.w * (0.3 + 0.7 * np.sin(np.clip(t / 0.62, 0, 1) * math.pi / 2) ** 0.75)

    def dome_curve(self, u: np.ndarray, s: int) -> np.ndarray:
        """Height of hemidiaphragm ``s`` at ``u`` (highest mid-hemithorax, down to the angles)."""
        return self.dome(s) + self.dome_depth * ((u - (self.cx + s * 0.5 * self.w)) / (0.5 * self.w)) ** 2

    def heart(self, g: Grid) -> np.ndarray:
        """Soft heart silhouette: an ellipse tilted 15 degrees."""
        c, sn = math.cos(0.26), math.sin(0.26)
        x, y = g.u - self.heart_x, g.v - self.heart_y
        e = np.sqrt(((c * x + sn * y) / self.heart_a) ** 2 + ((-sn * x + c * y) / self.heart_b) ** 2)
        return _step((1.0 - e) * self.heart_b, g.edge)

    def hemithorax(self, g: Grid, s: int, inset: float | np.ndarray = 0.0, top_inset: float = 0.0) -> np.ndarray:
        """Soft lung field of side ``s`` with the heart not yet removed; ``inset`` moves the lateral border in."""
        inward = self.lateral(g.v, s) - s * (g.u - self.cx) - inset
        medial = s * (g.u - self.cx) - self.mediastinum(g.v, s)
        return (_step(inward, g.edge) * _step(medial, g.edge) * _step(g.v - self.apex - top_inset, g.edge)
                * _step(self.dome_curve(g.u, s) - g.v, g.edge))

    def point(self, s: int, t: float, frac: float) -> Tuple[float, float]:
        """The point at height fraction ``t`` (0 apex .. 1 angle) and lateral fraction ``frac`` (0 medial ..
        1 lateral) of lung ``s``."""
        v = self.apex + t * (self.base(s) - self.apex) - 0.02 * t
        inner = float(self.mediastinum(np.array(v), s))
        if t > 0.45:  # beside the heart
            inner = max(inner, 0.85 * (self.heart_a + s * (self.heart_x - self.cx)))
        outer = float(self.lateral(np.array(v), s))
        return self.cx + s * (inner + frac * (outer - inner)), v


def _thorax(plan: StudyPlan, rng: np.random.Generator) -> Thorax:
    """This image's thorax: the subject's habitus with jitter, inspiration, view magnification and heart size."""
    sub = plan.subject
    w = sub.half_width * rng.uniform(0.98, 1.02)
    dome_r = sub.dome + rng.normal(0, 0.01) - (0.055 if plan.low_volumes else 0.0) - (0.02 if plan.view == "AP" else 0)
    dome_l = dome_r + rng.uniform(0.015, 0.035)
    raised = plan.decoys.get("raised_hemidiaphragm")
    lift = rng.uniform(0.04, 0.07)
    dome_r -= lift if raised == "right" else 0.0
    dome_l -= lift if raised == "left" else 0.0
    cardio = plan.findings["cardiomegaly"]
    ctr = 0.52 + 0.16 * cardio.severity if cardio.present else sub.ctr
    ctr *= rng.uniform(1.08, 1.16) if plan.view == "AP" else 1.0  # AP projection magnifies the heart
    ctr *= 1.06 if plan.low_volumes else 1.0
    a = ctr * w
    b = 0.7 * a + 0.03
    cx = 0.5 + rng.normal(0, 0.008)
    return Thorax(cx=cx, w=w, apex=sub.apex + rng.normal(0, 0.008), dome_r=dome_r, dome_l=dome_l,
                  heart_a=a, heart_b=b, heart_x=cx + 0.24 * a, heart_y=dome_l - 0.4 * b)


@dataclass
class FrontalLayers:
    """What the findings do to a frontal image, before the anatomy is composed.

    ``fill``: fraction of lung air replaced by fluid or cells (effusion, consolidation, edema);
    ``pleural_air``: extra air outside a collapsed lung; ``markings``: 1 where lung markings show (0 beyond
    a pneumothorax's pleural line); ``density``: added structures (pleural line, Kerley lines, nodule, ...);
    ``vessel_blur`` and ``upper_vessels``: vessel blurring (px) and upper-lobe vessel gain (edema);
    ``masks``: per finding, ``(size, size)`` bool.
    """

    fill: np.ndarray
    pleural_air: np.ndarray
    markings: np.ndarray
    density: np.ndarray
    vessel_blur: float = 0.0
    upper_vessels: float = 0.0
    masks: Dict[str, np.ndarray] = field(default_factory=dict)


def _draw_findings(plan: StudyPlan, th: Thorax, g: Grid, hemi: Dict[int, np.ndarray],
                   lungs: Dict[int, np.ndarray], heart: np.ndarray) -> FrontalLayers:
    zeros = np.zeros_like(g.u)
    out = FrontalLayers(fill=zeros.copy(), pleural_air=zeros.copy(), markings=np.ones_like(g.u), density=zeros.copy())
    fnd = plan.findings
    lung = lungs[-1] + lungs[1]
    if fnd["cardiomegaly"].present:  # drawn by the heart size of _thorax
        out.masks["cardiomegaly"] = heart > 0.5

    st = fnd["pleural_effusion"]
    if st.present:
        rng = _component_rng(plan, "pleural_effusion")
        fluid = zeros.copy()
        for s in _image_sides(st.side):
            inner, outer = th.mediastinum(g.v, s), th.lateral(g.v, s)
            lateral = np.clip((s * (g.u - th.cx) - inner) / np.maximum(outer - inner, 1e-3), 0, 1)
            height = (0.035 + 0.2 * st.severity) * rng.uniform(0.8, 1.2)
            top = th.base(s) - height * (0.4 + 0.6 * lateral ** 1.5)  # the meniscus rises laterally
            fluid = np.maximum(fluid, _step(g.v - top, 0.006 + 0.02 * st.severity) * hemi[s])
        out.fill = np.maximum(out.fill, fluid * rng.uniform(0.85, 1.0))
        out.masks["pleural_effusion"] = fluid > 0.5

    st = fnd["consolidation"]
    if st.present:
        rng = _component_rng(plan, "consolidation")
        s, t, frac = LOBES[st.place]
        x0, y0 = th.point(s, t, frac)
        rx = (0.07 + 0.09 * st.severity) * th.w / 0.37
        patch = _step(g.gaussian(x0, y0, rx, rx * rng.uniform(0.7, 1.1))
                      + 0.35 * _smooth_noise(rng, g.size, 1.8 * g.size / 96) - 0.55, 0.08)
        # middle lobe and lingula lie against the heart and efface its border (the silhouette sign)
        region = patch * (hemi[s] if st.place in ("right middle lobe", "lingula") else lungs[s])
        out.fill = np.maximum(out.fill, region * (0.55 + 0.35 * st.severity))
        out.masks["consolidation"] = region > 0.5
        if st.severity > 0.35 and rng.random() < 0.7:  # air bronchograms
            canvas = LineCanvas(g.size)
            for _ in range(int(rng.integers(2, 5))):
                heading = (math.pi if s < 0 else 0.0) + s * math.pi / 2 * rng.uniform(0.3, 1.3)
                canvas.polyline(_curve(rng, (x0 - s * 0.03, y0 - 0.02), heading, 0.07, 3, 0.25), 0.7, 1.0)
            out.density -= 0.22 * canvas.result() * (region > 0.5)

    st = fnd["edema"]
    if st.present:
        rng = _component_rng(plan, "edema")
        haze = zeros.copy()
        for s in (-1, 1):
            hx, hy = th.cx + s * 0.2 * th.w, th.apex + 0.45 * (th.base(s) - th.apex)
            haze = np.maximum(haze, g.gaussian(hx, hy, (0.35 + 0.25 * st.severity) * th.w, 0.14 + 0.08 * st.severity))
        haze = haze * (1 + 0.25 * _smooth_noise(rng, g.size, 3.0 * g.size / 96)) * lung
        out.fill = np.maximum(out.fill, haze * (0.2 + 0.5 * st.severity))
        out.masks["edema"] = haze > 0.45
        out.vessel_blur = 0.6 + 0.8 * st.severity
        out.upper_vessels = 0.5 * st.severity  # cephalisation
        canvas = LineCanvas(g.size)  # Kerley B lines at the lateral bases
        for s in (-1, 1):
            for _ in range(int(rng.integers(3, 7 + int(5 * st.severity)))):
                y = th.base(s) - rng.uniform(0.02, 0.14)
                wall = th.cx + s * float(th.lateral(np.array(y), s))
                canvas.polyline(np.array([[wall, y], [wall - s * rng.uniform(0.02, 0.045), y]]), 0.6, 1.0)
        out.density += (0.18 + 0.2 * st.severity) * canvas.result() * np.maximum(lung, 0.3)

    st = fnd["pneumothorax"]
    if st.present:
        rng = _component_rng(plan, "pneumothorax")
        s = SIDES[st.side]
        gap = (0.018 + 0.09 * st.severity) * rng.uniform(0.85, 1.15)
        end = th.apex + (0.3 + 0.5 * st.severity) * (th.base(s) - th.apex)
        collapsed = th.hemithorax(g, s, inset=gap * _step(end - g.v, 0.04), top_inset=0.8 * gap) * (1 - heart)
        air = np.clip(lungs[s] - collapsed, 0, 1)
        out.pleural_air = air
        out.markings = 1 - air
        out.fill = np.maximum(out.fill, 0.2 * st.severity * collapsed)  # the collapsed lung holds less air
        out.density += 0.3 * np.clip(4 * collapsed * (1 - collapsed), 0, 1) * lungs[s] * _step(end + 0.02 - g.v, 0.02)
        out.masks["pneumothorax"] = air > 0.5

    st = fnd["nodule"]
    if st.present:
        rng = _component_rng(plan, "nodule")
        side, zone = st.place.split(" ")
        x0, y0 = th.point(SIDES[side], rng.uniform(*ZONES[zone]), rng.uniform(0.3, 0.85))
        blob = g.disc(x0, y0, st.radius)
        out.density += (0.38 + 0.2 * st.severity) * blob * (1 + 0.1 * _smooth_noise(rng, g.size, 1.0))
        out.masks["nodule"] = blob > 0.5
    return out


def _vessels(canvas: LineCanvas, rng: np.random.Generator, th: Thorax, s: int, strength: float,
             upper_gain: float) -> None:
    """Branching vessels radiating from the hilum of lung ``s``, tapering outwards."""
    hx, hy = th.hilum(s)
    for _ in range(int(rng.integers(11, 16))):
        angle = math.radians(rng.uniform(-120, 95))  # 0 = lateral, negative = up
        direction = math.pi - angle if s < 0 else angle
        length = th.w * rng.uniform(0.45, 0.85) * (0.85 if abs(angle) > 1.3 else 1.0)
        pts = _curve(rng, (hx - s * 0.01, hy + rng.normal(0, 0.01)), direction, length, 5, 0.18)
        gain = strength * (1.0 + (upper_gain if angle < -0.4 else 0.0))
        for i in range(5):
            canvas.polyline(pts[i:i + 2], width=1.5 - 0.25 * i, value=gain * (1 - 0.12 * i))
        if rng.random() < 0.8:
            j = int(rng.integers(1, 3))
            branch = _curve(rng, tuple(pts[j]), direction + rng.choice([-0.6, 0.6]), length * 0.45, 3, 0.2)
            for i in range(3):
                canvas.polyline(branch[i:i + 2], width=0.9 - 0.2 * i, value=gain * (0.8 - 0.15 * i))


def _anatomy(plan: StudyPlan, th: Thorax, g: Grid, lung: np.ndarray, layers: FrontalLayers,
             rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """Density of body, lungs (air less ``layers.fill``), bones, vessels, abdomen and soft tissue; and the
    soft body outline."""
    sub = plan.subject
    u, v, edge = g.u, g.v, g.edge
    xr = np.abs(u - th.cx) / th.w
    # body with shoulders and neck; the chest wall thickens laterally
    body_half = th.w + 0.05 + 0.05 * sub.fat
    shoulder = th.w + 0.12 + 0.04 * sub.fat
    half = np.where(v < th.apex + 0.02, body_half + (shoulder - body_half) * _step(v - th.apex + 0.06, 0.03), body_half)
    neck = _step(v - th.apex + 0.08, 0.02)
    neck = neck + (1 - neck) * _step(0.09 - np.abs(u - th.cx), edge)
    body = _step(half - np.abs(u - th.cx), 2 * edge) * neck
    density = body * (0.85 + 0.3 * sub.fat + 0.15 * (v - 0.5) + 0.12 * _step(xr - 0.85, 0.03 / th.w))
    # lung air, less what the findings filled, plus pleural air
    texture = 1.0 + 0.06 * _smooth_noise(rng, g.size, 4.0 * g.size / 96)
    density -= 0.72 * lung * (1 - layers.fill) * texture + 0.12 * layers.pleural_air
    # abdomen below the domes, gastric bubble, trachea, spine
    below = (np.minimum(_step(v - th.dome_curve(u, -1), edge) + (u > th.cx), 1)
             * np.minimum(_step(v - th.dome_curve(u, 1), edge) + (u < th.cx), 1))
    density += 0.12 * below * body
    if rng.random() < 0.7:
        gx, gy = th.cx + 0.45 * th.w, th.dome_l + 0.06
        density -= 0.3 * _step(0.035 - np.sqrt(((u - gx) / 1.5) ** 2 + (v - gy) ** 2), edge)
    density -= 0.25 * _step(0.016 - np.abs(u - th.cx - 0.005), edge) * _step(th.apex + 0.2 - v, 0.01)
    density += _step(0.032 - np.abs(u - th.cx), edge) * (0.16 + 0.05 * np.cos(2 * math.pi * (v - th.apex) / 0.055))
    for s in (-1, 1):  # hila
        hx, hy = th.hilum(s)
        density += (0.12 + 0.14 * sub.hilum) * g.gaussian(hx, hy, 0.035, 0.05) * lung
    # posterior ribs and clavicles
    ribs = np.zeros_like(u)
    spacing = (th.base(1) - th.apex + 0.05) / 9.5
    for i in range(10):
        y0 = th.apex - 0.035 + i * spacing + rng.normal(0, 0.004)
        ribs = np.maximum(ribs, _step(0.011 + 0.002 * i / 9 - np.abs(v - (y0 - 0.05 * xr + 0.13 * xr ** 2)), edge))
    density += 0.11 * ribs * _step(1.07 - xr, 0.02) * _step(xr - 0.1, 0.02) * body
    clavicle_y = (th.apex + (0.03 if plan.view == "PA" else -0.005) - 0.09 * np.clip(xr - 0.1, 0, 2)
                  + 0.025 * np.sin(math.pi * np.clip(xr, 0, 1.2)))
    density += 0.3 * _step(0.012 - np.abs(v - clavicle_y), edge) * _step(1.25 - xr, 0.02) * _step(xr - 0.08, 0.02)
    if sub.breast > 0:
        for s in (-1, 1):
            bx, by = th.cx + s * 0.6 * th.w, th.dome(s) + 0.02
            e = np.sqrt(((u - bx) / (0.38 * th.w)) ** 2 + ((v - by) / 0.13) ** 2)
            density += sub.breast * _step(1 - e, 0.2) * _step(v - by + 0.1, 0.04) * body
    # lung markings, absent beyond a pneumothorax's pleural line, blurred by edema; parenchymal texture
    canvas = LineCanvas(g.size)
    for s in (-1, 1):
        _vessels(canvas, rng, th, s, 0.32, layers.upper_vessels)
    markings = canvas.result()
    if layers.vessel_blur:
        markings = _lowpass(markings, layers.vessel_blur)
    density += markings * lung * layers.markings + 0.03 * _smooth_noise(rng, g.size, 1.2 * g.size / 96) * lung
    return density, body


def _draw_decoys(plan: StudyPlan, th: Thorax, g: Grid, lung: np.ndarray, body: np.ndarray) -> np.ndarray:
    """Density of the normal look-alikes of findings: nipple shadows, ECG electrodes and wires, skin folds,
    soft-tissue haze, scapular borders and plate atelectasis."""
    u, v = g.u, g.v
    density = np.zeros_like(u)
    decoys = plan.decoys
    if "nipples" in decoys:
        rng = _component_rng(plan, "nipples")
        for s in (-1, 1) if decoys["nipples"] == "bilateral" else (SIDES[decoys["nipples"]],):
            x0, y0 = th.cx + s * th.w * rng.uniform(0.5, 0.72), th.dome(s) - rng.uniform(0.02, 0.1)
            density += rng.uniform(0.18, 0.32) * g.disc(x0, y0, rng.uniform(0.014, 0.024), rng.uniform(1.0, 2.0))
    if "ecg" in decoys:
        rng = _component_rng(plan, "ecg")
        wires = LineCanvas(g.size)
        for _ in range(int(decoys["ecg"])):
            x0, y0 = th.cx + rng.uniform(-1.1, 1.1) * th.w, rng.uniform(th.apex - 0.05, th.base(1))
            r = rng.uniform(0.011, 0.016)
            ring = g.disc(x0, y0, r) - 0.5 * g.disc(x0, y0, 0.6 * r)
            density += rng.uniform(0.35, 0.5) * ring + 0.3 * g.disc(x0, y0, 0.005)
            wires.polyline(_curve(rng, (x0, y0), rng.uniform(0, 2 * math.pi), rng.uniform(0.15, 0.4), 6, 0.3), 0.5, 1.0)
        density += 0.3 * wires.result()
    if "skin_fold" in decoys:  # an edge (not a line) that runs past the lung border, markings on both sides
        rng = _component_rng(plan, "skin_fold")
        s = SIDES[decoys["skin_fold"]]
        fold = th.cx + s * (th.w * rng.uniform(0.6, 0.92) + rng.uniform(-0.05, 0.05) * ((v - 0.4) / 0.3) ** 2)
        inside = s * (fold - u)
        density += (0.13 * _step(inside, 0.6 * g.px) * np.exp(-np.clip(inside, 0, None) / 0.035)
                    * _step(v - th.apex + 0.05, 0.03) * _step(th.base(s) - v, 0.05))
    if "haze" in decoys:  # overlying soft tissue: smooth, not confined to the lung
        rng = _component_rng(plan, "haze")
        x0, y0 = th.point(SIDES[decoys["haze"]], rng.uniform(0.2, 0.85), rng.uniform(0.2, 0.9))
        sig = rng.uniform(0.06, 0.13)
        density += rng.uniform(0.08, 0.2) * g.gaussian(x0, y0, sig * math.sqrt(2), sig * math.sqrt(2)) * body
    if "scapula" in decoys:  # medial scapular borders over the upper lungs (AP)
        rng = _component_rng(plan, "scapula")
        for s in (-1, 1):
            border = th.cx + s * th.w * (rng.uniform(0.72, 0.84) - 0.25 * np.clip((v - th.apex) / 0.35, 0, 1))
            density += rng.uniform(0.07, 0.11) * (_step(s * (u - border), 1.5 * g.edge)
                                                  * _step(th.apex + 0.38 - v, 0.03) * _step(v - th.apex + 0.05, 0.02))
    if plan.atelectasis:
        rng = _component_rng(plan, "atelectasis")
        canvas = LineCanvas(g.size)
        for side in ("right", "left") if plan.atelectasis == "bibasilar" else (plan.atelectasis,):
            x0, y0 = th.point(SIDES[side], 0.86, rng.uniform(0.3, 0.6))
            ang, half = rng.uniform(-0.25, 0.25), rng.uniform(0.025, 0.05)
            d = np.array([math.cos(ang), math.sin(ang)]) * half
            canvas.polyline(np.array([[x0, y0] - d, [x0, y0] + d]), 1.2, 1.0)
        density += 0.22 * canvas.result() * np.maximum(lung, 0.3)
    return density


def _draw_devices(plan: StudyPlan, th: Thorax, g: Grid) -> np.ndarray:
    """Density of the support devices and sternotomy wires of ``plan``."""
    rng = _component_rng(plan, "devices")
    u, v = g.u, g.v
    canvas = LineCanvas(g.size)
    extra = np.zeros_like(u)
    ra = (th.heart_x - 0.55 * th.heart_a, th.heart_y - 0.3 * th.heart_b)
    rv = (th.heart_x + 0.3 * th.heart_a, th.heart_y + 0.35 * th.heart_b)
    for device in plan.devices:
        if device == "pacemaker":
            bx, by = th.cx + 0.72 * th.w, th.apex + 0.04
            extra += _step(0.032 - np.abs(u - bx), g.edge) * _step(0.022 - np.abs(v - by), g.edge)
            mid = (th.cx + 0.1 * th.w, th.apex + 0.12)
            for tip in (ra, rv):
                bend = ((mid[0] + tip[0]) / 2, (mid[1] + tip[1]) / 2 - 0.02)
                canvas.polyline(np.array([[bx, by], mid, bend, tip]), 0.6, 0.8)
        elif device == "central line":
            tip_y = th.apex + rng.uniform(0.16, 0.26)
            canvas.polyline(np.array([[th.cx - 0.16, 0.0], [th.cx - 0.09, th.apex - 0.02],
                                      [th.cx - 0.045, th.apex + 0.08], [th.cx - 0.03, tip_y]]), 0.6, 0.7)
        elif device == "endotracheal tube":
            canvas.polyline(np.array([[th.cx + 0.005, 0.0], [th.cx + 0.005, th.apex + rng.uniform(0.08, 0.15)]]),
                            1.0, 0.45)
        elif device == "enteric tube":
            canvas.polyline(np.array([[th.cx + 0.01, 0.0], [th.cx + 0.015, th.apex + 0.3], [th.cx + 0.03, th.dome_l],
                                      [th.cx + 0.4 * th.w, th.dome_l + 0.09]]), 0.6, 0.6)
        elif device == "sternotomy":
            for k in range(5):
                y = th.apex + 0.12 + k * 0.045
                extra += 0.7 * np.clip(g.disc(th.cx, y, 0.011) - g.disc(th.cx, y, 0.006), 0, 1)
    return extra + canvas.result()


def render_frontal(plan: StudyPlan, size: int) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
    """The frontal image ``(size, size)`` uint8 and a bool mask ``(size, size)`` per present finding.

    Densities (bright = dense) are composed in normalised units, windowed (random contrast and gamma, a
    slight exposure gradient), rotated/zoomed/shifted (masks with them), blurred and given noise.
    """
    g = Grid(size)
    anatomy_rng = _component_rng(plan, "anatomy")
    th = _thorax(plan, anatomy_rng)
    heart = th.heart(g)
    hemi = {s: th.hemithorax(g, s) for s in (-1, 1)}
    lungs = {s: hemi[s] * (1 - heart) for s in (-1, 1)}
    lung = lungs[-1] + lungs[1]
    layers = _draw_findings(plan, th, g, hemi, lungs, heart)
    density, body = _anatomy(plan, th, g, lung, layers, anatomy_rng)
    density += layers.density + _draw_decoys(plan, th, g, lung, body)
    if plan.devices:
        density += _draw_devices(plan, th, g)
    rng = _component_rng(plan, "exposure")
    lo, hi = rng.uniform(-0.05, 0.15), rng.uniform(1.3, 1.75)
    image = np.clip((density - lo) / (hi - lo), 0, 1) ** rng.uniform(0.75, 1.3)
    image += rng.uniform(-0.06, 0.06) * (g.v - 0.5) + rng.uniform(-0.04, 0.04) * (g.u - 0.5)
    angle, zoom, shift = rng.normal(0, 3.0), rng.uniform(0.92, 1.08), rng.normal(0, 0.025, 2)
    image = _affine(image, angle, zoom, shift, Image.Resampling.BILINEAR)
    masks = {k: _affine(m.astype(np.float64), angle, zoom, shift, Image.Resampling.NEAREST) > 0.5
             for k, m in layers.masks.items()}
    image = _lowpass(image, rng.uniform(0.35, 0.7))
    noise = rng.uniform(0.012, 0.03) * (1.4 if plan.view == "AP" else 1.0)
    image = image + noise * rng.standard_normal(image.shape)
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8), masks


def _image_sides(side: str) -> Tuple[int, ...]:
    return (-1, 1) if side == "bilateral" else (SIDES[side],)


def _affine(image: np.ndarray, angle_deg: float, zoom: float, shift: np.ndarray,
            resample: Image.Resampling) -> np.ndarray:
    """Rotate by ``angle_deg`` about the centre, zoom and shift (normalised units); outside is 0."""
    n = image.shape[0]
    a = math.radians(angle_deg)
    c, s = math.cos(a) / zoom, math.sin(a) / zoom
    ox, oy = n / 2 + shift[0] * n, n / 2 + shift[1] * n
    # output (x, y) -> input (x', y') = centre + R(-angle) (out - centre - shift) / zoom
    coeffs = (c, s, n / 2 - c * ox - s * oy, -s, c, n / 2 + s * ox - c * oy)
    out = Image.fromarray(image.astype(np.float32), mode="F").transform(
        (n, n), Image.Transform.AFFINE, coeffs, resample=resample, fillcolor=0.0)
    return np.asarray(out, dtype=np.float64)


# =========================================================================== the lateral view


def render_lateral(plan: StudyPlan, size: int) -> np.ndarray:
    """A lateral image ``(size, size)`` uint8: anterior to the left, spine to the right, heart antero-inferior;
    cardiomegaly enlarges the heart and an effusion fills the posterior costophrenic sulcus."""
    rng = _component_rng(plan, "exposure")
    g = Grid(size)
    u, v = g.u, g.v
    sub = plan.subject
    depth = 0.3 + 0.04 * sub.fat + rng.uniform(-0.02, 0.02)
    cx = 0.5 + rng.normal(0, 0.01)
    density = _step(depth - np.abs(u - cx), 2 * g.edge) * (1.1 + 0.35 * sub.fat)
    apex, dome = sub.apex + 0.02, sub.dome - (0.05 if plan.low_volumes else 0.0)
    lung = _step(1 - np.sqrt(((u - cx) / (depth * 0.82)) ** 2
                             + ((v - (apex + dome) / 2) / ((dome - apex) / 2 + 0.03)) ** 2), 0.02)
    cardio = plan.findings["cardiomegaly"]
    heart = g.disc(cx - 0.1, dome - 0.08, 0.12 + (0.05 * cardio.severity if cardio.present else 0.0), 1.4)
    eff = plan.findings["pleural_effusion"]
    fluid = np.zeros_like(u)
    if eff.present:
        level = dome + 0.05 - (0.03 + 0.15 * eff.severity) * np.clip((u - cx) / depth + 0.6, 0, 1.6)
        fluid = _step(v - level, 0.01)
    density -= 0.7 * lung * (1 - heart) * (1 - fluid)
    spine = _step(0.035 - np.abs(u - (cx + depth * 0.72)), g.edge)
    density += 0.22 * spine * (1 + 0.3 * np.cos(2 * math.pi * v / 0.055))
    density += 0.15 * _step(0.012 - np.abs(u - (cx - depth * 0.95)), g.edge) * (v > apex)  # sternum
    density += 0.05 * _smooth_noise(rng, size, 1.5) * lung
    image = np.clip((density - rng.uniform(-0.05, 0.15)) / rng.uniform(1.1, 1.5), 0, 1)
    image = _affine(image, rng.normal(0, 3.0), rng.uniform(0.92, 1.06), rng.normal(0, 0.02, 2),
                    Image.Resampling.BILINEAR)
    image = _lowpass(image, 0.6) + rng.uniform(0.015, 0.035) * rng.standard_normal(image.shape)
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)


# =========================================================================== reports

SEVERITY_WORDS = {
    "size": ("small", "moderate", "large"),
    "grade": ("mild", "moderate", "severe"),
    "cardio": ("mild", "moderate", "marked"),
    "cons": ("patchy", "focal", "dense"),
}


def _grade(severity: float, kind: str) -> str:
    words = SEVERITY_WORDS[kind]
    return words[0] if severity < 0.4 else words[1] if severity < 0.75 else words[2]


class _Report:
    """Sentences of a report with the CheXpert mentions each makes (``column -> 1.0 / 0.0 / -1.0``)."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.findings: List[str] = []
        self.impression: List[str] = []
        self.mentions: List[Tuple[str, float]] = []

    def pick(self, options: Sequence[str]) -> str:
        return str(options[int(self.rng.integers(len(options)))])

    def add(self, section: str, sentence: str, *mentions: Tuple[str, float]) -> None:
        (self.findings if section == "findings" else self.impression).append(sentence[0].upper() + sentence[1:])
        self.mentions.extend(mentions)


def _positive_sentences(name: str, st: FindingState, plan: StudyPlan, r: _Report) -> Tuple[str, str]:
    """(FINDINGS sentence, IMPRESSION phrase) of a finding the report calls positive."""
    if name == "cardiomegaly":
        g = _grade(st.severity, "cardio")
        return (r.pick([f"{g.capitalize()} cardiomegaly.", f"{g.capitalize()}ly enlarged cardiac silhouette.",
                        f"There is {g} enlargement of the cardiac silhouette.",
                        f"{g.capitalize()} enlargement of the cardiac silhouette is noted."]),
                r.pick([f"{g.capitalize()} cardiomegaly.", "Cardiomegaly.", f"{g.capitalize()} cardiomegaly, stable."
                        if plan.subject.age > 60 else "Cardiomegaly."]))
    if name == "pleural_effusion":
        g = _grade(st.severity, "size")
        if st.side == "bilateral":
            f = r.pick([f"{g.capitalize()} bilateral pleural effusions.", f"There are {g} bilateral pleural effusions.",
                        f"{g.capitalize()} bilateral effusions with blunting of both costophrenic angles."])
            return f, r.pick([f"{g.capitalize()} bilateral pleural effusions.", "Bilateral pleural effusions."])
        f = r.pick([f"{g.capitalize()} {st.side} pleural effusion.", f"There is a {g} {st.side} pleural effusion.",
                    f"{g.capitalize()} {st.side}-sided pleural effusion is present.",
                    f"Blunting of the {st.side} costophrenic angle is consistent with a {g} pleural effusion."])
        return f, r.pick([f"{g.capitalize()} {st.side} pleural effusion.", f"{st.side.capitalize()} pleural effusion."])
    if name == "pneumothorax":
        g = _grade(st.severity, "size")
        f = r.pick([f"There is a {g} {st.side} apical pneumothorax.", f"{g.capitalize()} {st.side} pneumothorax.",
                    f"A {g} {st.side}-sided pneumothorax is seen, with a visible visceral pleural line.",
                    f"{st.side.capitalize()} pneumothorax, {g} in size."])
        return f, r.pick([f"{g.capitalize()} {st.side} pneumothorax.", f"{st.side.capitalize()} pneumothorax."])
    if name == "nodule":
        side, zone = st.place.split(" ")
        where = r.pick([f"{side} {zone} lung", f"{side} {zone} zone"]) if zone != "lower" else \
            r.pick([f"{side} lung base", f"{side} lower lung"])
        mm = int(round(2 * st.radius * 300))  # the image spans about 300 mm
        an = "an" if str(mm).startswith(("8", "11", "18")) else "a"
        f = r.pick([f"{mm} mm nodule in the {where}.", f"There is {an} {mm} mm nodular opacity in the {where}.",
                    f"{an.capitalize()} {mm} mm pulmonary nodule projects over the {where}.",
                    f"Rounded {mm} mm nodule in the {where}."])
        return f, r.pick([f"{mm} mm {where} nodule; recommend chest CT for further evaluation.",
                          f"{side.capitalize()} {zone} lung nodule.", f"Pulmonary nodule in the {where}."])
    if name == "consolidation":
        g = _grade(st.severity, "cons")
        f = r.pick([f"{g.capitalize()} consolidation in the {st.place}.",
                    f"There is {g} airspace consolidation in the {st.place}.",
                    f"{g.capitalize()} airspace opacity in the {st.place}, compatible with consolidation.",
                    f"Consolidation is seen in the {st.place}."])
        imp = r.pick([f"{st.place.capitalize()} consolidation.", f"{g.capitalize()} {st.place} consolidation."])
        return f, imp
    g = _grade(st.severity, "grade")  # edema
    f = r.pick([f"{g.capitalize()} pulmonary edema.", f"There is {g} pulmonary edema with perihilar haziness.",
                f"{g.capitalize()} interstitial edema with Kerley B lines." if st.severity < 0.5 else
                f"{g.capitalize()} alveolar edema with bilateral perihilar opacities.",
                f"Findings are consistent with {g} pulmonary edema."])
    return f, r.pick([f"{g.capitalize()} pulmonary edema.", "Pulmonary edema.", f"{g.capitalize()} edema."])


UNCERTAIN_SENTENCES = {
    "cardiomegaly": ("Possible mild cardiomegaly.", "Mild cardiomegaly cannot be excluded on this view.",
                     "The cardiac silhouette may be mildly enlarged, possible cardiomegaly."),
    "pleural_effusion": ("Possible small {side} pleural effusion.",
                         "A small {side} pleural effusion cannot be excluded.",
                         "Questionable trace {side} pleural effusion."),
    "pneumothorax": ("Possible tiny {side} apical pneumothorax.", "A small {side} pneumothorax cannot be excluded.",
                     "Questionable {side} apical pneumothorax; repeat imaging may help."),
    "nodule": ("Possible nodule in the {side} lower lung, which may represent a nipple shadow.",
               "A nodular opacity in the {side} lung cannot be excluded.",
               "Questionable small nodule in the {side} lung."),
    "consolidation": ("Possible early consolidation in the {place}.",
                      "Subtle opacity in the {place} may reflect consolidation.",
                      "Consolidation in the {place} cannot be excluded."),
    "edema": ("Possible mild interstitial edema.", "Mild pulmonary edema cannot be excluded.",
              "Possible mild pulmonary vascular congestion."),
}

NEGATIVE_SENTENCES = {
    "cardiomegaly": ("No cardiomegaly.", "There is no cardiomegaly."),
    "pleural_effusion": ("No pleural effusion.", "There is no pleural effusion.", "No effusion is seen."),
    "pneumothorax": ("No pneumothorax.", "There is no pneumothorax.", "No pneumothorax is seen."),
    "nodule": ("No suspicious pulmonary nodules.", "No pulmonary nodule is identified."),
    "consolidation": ("No focal consolidation.", "There is no focal consolidation."),
    "edema": ("No pulmonary edema.", "There is no pulmonary vascular congestion or edema."),
}

NORMAL_IMPRESSIONS = ("No acute cardiopulmonary process.", "No acute intrathoracic process.",
                      "No acute cardiopulmonary abnormality.", "Normal chest radiograph.")

DEVICE_SENTENCES = {
    "pacemaker": ("Left-sided pacemaker with leads terminating in the right atrium and right ventricle.",
                  "A dual-chamber pacemaker is in place with leads in the right atrium and right ventricle."),
    "central line": ("Right internal jugular central venous catheter terminates in the mid SVC.",
                     "A right IJ line ends in the SVC."),
    "endotracheal tube": ("Endotracheal tube terminates 4 cm above the carina.",
                          "The ET tube is in standard position."),
    "enteric tube": ("Enteric tube courses below the diaphragm, tip in the stomach.",
                     "A nasogastric tube extends into the stomach."),
}


def write_report(plan: StudyPlan, rng: np.random.Generator) -> Tuple[str, Dict[str, float]]:
    """The report text of ``plan`` and its CheXpert labels (column -> 1.0 / 0.0 / -1.0; absent = blank)."""
    r = _Report(rng)
    fnd = plan.findings
    view_sentence = r.pick(["PA and lateral views of the chest provided.", "PA and lateral chest radiographs."]) \
        if plan.has_lateral else r.pick(["Single portable AP view of the chest.", "Portable AP chest radiograph."]) \
        if plan.view == "AP" else "Single PA view of the chest."
    if rng.random() < 0.5:
        r.add("findings", view_sentence)
    for device in plan.devices:
        if device == "sternotomy":
            r.add("findings", r.pick(["Median sternotomy wires are intact.", "Sternotomy wires are noted."]))
        else:
            r.add("findings", r.pick(DEVICE_SENTENCES[device]), ("Support Devices", POSITIVE))
    if plan.low_volumes:
        r.add("findings", r.pick(["Lung volumes are low.",
                                  "Low lung volumes accentuate the bronchovascular markings."]))
    positives: List[Tuple[str, str]] = []
    negated: List[str] = []
    for name in ("consolidation", "edema", "nodule", "pleural_effusion", "pneumothorax", "cardiomegaly"):
        st = fnd[name]
        col = FINDING_COLUMNS[name]
        if st.mention == "positive":
            f, imp = _positive_sentences(name, st, plan, r)
            r.add("findings", f, (col, POSITIVE))
            positives.append((imp, col))
        elif st.mention == "uncertain":
            s = r.pick(UNCERTAIN_SENTENCES[name]).format(side=st.side if st.side != "bilateral" else "right",
                                                         place=st.place or "right lower lobe")
            r.add("findings", s, (col, UNCERTAIN))
        elif st.mention == "negative":
            negated.append(name)
    # negations: the classic combined sentence or one by one
    trio = [n for n in ("consolidation", "pleural_effusion", "pneumothorax") if n in negated]
    if len(trio) == 3 and rng.random() < 0.6:
        r.add("findings", r.pick(["No focal consolidation, pleural effusion, or pneumothorax.",
                                  "There is no focal consolidation, effusion, or pneumothorax.",
                                  "The lungs are clear without consolidation, effusion, or pneumothorax."]),
              *((FINDING_COLUMNS[n], NEGATIVE) for n in trio))
        negated = [n for n in negated if n not in trio]
    elif {"pleural_effusion", "pneumothorax"} <= set(negated) and rng.random() < 0.6:
        r.add("findings", r.pick(["No pleural effusion or pneumothorax.", "There is no effusion or pneumothorax."]),
              ("Pleural Effusion", NEGATIVE), ("Pneumothorax", NEGATIVE))
        negated = [n for n in negated if n not in ("pleural_effusion", "pneumothorax")]
    if "skin_fold" in plan.decoys and fnd["pneumothorax"].mention in ("none", "negative"):
        r.add("findings", f"A skin fold projects over the {plan.decoys['skin_fold']} hemithorax, without pneumothorax.",
              ("Pneumothorax", NEGATIVE))
        negated = [n for n in negated if n != "pneumothorax"]
    for name in negated:
        r.add("findings", r.pick(NEGATIVE_SENTENCES[name]), (FINDING_COLUMNS[name], NEGATIVE))
    if not any(fnd[n].mention in ("positive", "uncertain") for n in ("consolidation", "edema")):
        if rng.random() < 0.5:
            r.add("findings", r.pick(["The lungs are clear.", "Lungs are well expanded and clear."]))
    if fnd["cardiomegaly"].mention in ("none", "negative") and rng.random() < 0.7:
        r.add("findings", r.pick(["Heart size is difficult to assess on this AP view but likely within normal limits."]
                                 if plan.view == "AP" else ["Heart size is normal.",
                                                            "The cardiomediastinal silhouette is within normal limits.",
                                                            "Normal heart size. Mediastinal and hilar contours are "
                                                            "unremarkable."]))
    if plan.atelectasis:
        where = "bibasilar" if plan.atelectasis == "bibasilar" else f"{plan.atelectasis} basilar"
        r.add("findings", r.pick([f"Mild {where} atelectasis.",
                                  f"Linear opacities likely reflect {where} atelectasis."]),
              ("Atelectasis", POSITIVE))
    if "nipples" in plan.decoys and fnd["nodule"].mention == "none" and rng.random() < 0.3:
        r.add("findings", "Bilateral nipple shadows are noted." if plan.decoys["nipples"] == "bilateral"
              else f"A {plan.decoys['nipples']} nipple shadow is noted.")
    if "ecg" in plan.decoys and rng.random() < 0.3:
        r.add("findings", r.pick(["EKG leads overlie the chest.", "Monitoring leads project over the chest."]))
    if rng.random() < 0.4:
        r.add("findings", r.pick(["No acute osseous abnormality.", "The osseous structures are intact."]))
    # impression
    for imp, col in positives:  # restated, unless the findings go under IMPRESSION themselves
        if plan.report_form != "impression_only" and rng.random() < 0.85:
            r.add("impression", imp, (col, POSITIVE))
    if fnd["consolidation"].mention == "positive" and rng.random() < 0.5:
        r.add("impression", r.pick(["Findings concerning for pneumonia.", "Pneumonia is possible."]),
              ("Pneumonia", UNCERTAIN))
    acute = any(fnd[n].mention == "positive" for n in FINDINGS if n != "nodule")
    if not acute and not any(fnd[n].mention == "uncertain" for n in FINDINGS) and (
            not positives or rng.random() < 0.3):
        r.add("impression", r.pick(NORMAL_IMPRESSIONS))
    if not r.impression and not (plan.report_form == "impression_only" and r.findings):
        r.add("impression", r.pick(["As above.", "See findings."]) if r.findings else r.pick(NORMAL_IMPRESSIONS))
    labels = _chexpert(r.mentions)
    return _format_report(plan, r, rng), labels


def _chexpert(mentions: Sequence[Tuple[str, float]]) -> Dict[str, float]:
    """Aggregate mentions per column: positive over uncertain over negative; ``No Finding`` as documented."""
    rank = {POSITIVE: 2, UNCERTAIN: 1, NEGATIVE: 0}
    labels: Dict[str, float] = {}
    for col, value in mentions:
        if col not in labels or rank[value] > rank[labels[col]]:
            labels[col] = value
    if not any(v in (POSITIVE, UNCERTAIN) for c, v in labels.items() if c != "Support Devices"):
        labels["No Finding"] = POSITIVE
    return labels


INDICATIONS = ("___-year-old {sex} with shortness of breath.",
               "___ year old {sex} with cough and fever, evaluate for pneumonia.", "___{mf} with chest pain.",
               "Dyspnea.", "History: ___{mf} with hypoxia.", "Evaluate for interval change.",
               "___-year-old {sex} with fall, evaluate for acute process.", "Preoperative chest radiograph.",
               "___{mf} with tachypnea and leg swelling.")
EXAMINATIONS = {"PA": "CHEST (PA)", "AP": "CHEST (PORTABLE AP)", "PA+LATERAL": "CHEST (PA AND LAT)"}


def _examination(plan: StudyPlan) -> str:
    return EXAMINATIONS["PA+LATERAL" if plan.has_lateral else plan.view]


def _format_report(plan: StudyPlan, r: _Report, rng: np.random.Generator) -> str:
    """MIMIC-style text: banner, preamble, FINDINGS and IMPRESSION wrapped at 78 columns."""
    sex, mf = ("woman", "F") if plan.subject.female else ("man", "M")
    exam = _examination(plan)
    indication = str(rng.choice(INDICATIONS)).format(sex=sex, mf=mf)
    comparison = str(rng.choice(["___.", "None.", "Chest radiograph from ___."]))

    def para(sentences: Sequence[str]) -> str:
        return "\n".join(" " + line for line in textwrap.wrap("  ".join(sentences), 77))

    if plan.report_form == "unsectioned":
        return ("                                 FINAL REPORT\n" + para(
            [f"{'Portable AP' if plan.view == 'AP' else 'PA'} chest radiograph performed on ___."] + r.findings
            + r.impression) + "\n")
    parts = ["                                 FINAL REPORT", f" EXAMINATION:  {exam}", "",
             f" INDICATION:  {indication}", ""]
    if rng.random() < 0.5:
        parts += [" TECHNIQUE:  " + ("PA and lateral views of the chest." if plan.has_lateral else
                                     f"Single {'portable AP' if plan.view == 'AP' else 'PA'} view of the chest."), ""]
    parts += [f" COMPARISON:  {comparison}", ""]
    if plan.report_form == "impression_only":
        return "\n".join(parts + [" IMPRESSION: ", "", para(r.findings + r.impression), ""])
    parts += [" FINDINGS: ", "", para(r.findings), ""]
    if plan.report_form == "findings_only":
        return "\n".join(parts[:-1] + [para(r.impression), ""])
    return "\n".join(parts + [" IMPRESSION: ", "", para(r.impression), ""])


# =========================================================================== the archive


def _study_dir(root: Path, plan: StudyPlan) -> Path:
    sid = plan.subject.subject_id
    return root / "files" / f"p{sid[:2]}" / f"p{sid}" / f"s{plan.study_id}"


def write_synthetic_mimic(root: str | Path, num_studies: int, image_size: int = 96, seed: int = 0,
                          split_fractions: Sequence[float] = (0.8, 0.05, 0.15), lateral_fraction: float = 0.25,
                          impression_only_fraction: float = 0.04, findings_only_fraction: float = 0.04,
                          unsectioned_fraction: float = 0.01, jpeg_quality: int = 95) -> Path:
    """Write a synthetic MIMIC-CXR-JPG archive of ``num_studies`` studies under ``root`` (see the module
    docstring) and return ``root``. Deterministic given ``seed``; a larger archive extends a smaller one."""
    if num_studies < 1 or image_size < 32:
        raise ValueError(f"write_synthetic_mimic needs num_studies >= 1 and image_size >= 32; got {num_studies}, "
                         f"{image_size}")
    root = Path(root)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    plans = plan_archive(num_studies, seed, split_fractions, lateral_fraction, impression_only_fraction,
                         findings_only_fraction, unsectioned_fraction)
    chexpert_rows, split_rows, meta_rows, mask_rows = [], [], [], []
    for plan in plans:
        study_dir = _study_dir(root, plan)
        study_dir.mkdir(parents=True, exist_ok=True)
        sub = plan.subject
        image, masks = render_frontal(plan, image_size)
        images = [(plan.dicom_ids[0], image, plan.view)]
        if plan.has_lateral:
            images.append((plan.dicom_ids[1], render_lateral(plan, image_size), "LATERAL"))
        report, labels = write_report(plan, np.random.default_rng([seed, int(plan.study_id), 7]))
        (study_dir.parent / f"s{plan.study_id}.txt").write_text(report)
        chexpert_rows.append([sub.subject_id, plan.study_id] + [_label_cell(labels.get(c)) for c in CHEXPERT_LABELS])
        exam = _examination(plan)
        for dicom_id, pixels, view in images:
            Image.fromarray(pixels, mode="L").save(study_dir / f"{dicom_id}.jpg", quality=jpeg_quality)
            split_rows.append([dicom_id, plan.study_id, sub.subject_id, sub.split])
            meaning = {"PA": "postero-anterior", "AP": "antero-posterior", "LATERAL": "lateral"}[view]
            meta_rows.append([dicom_id, sub.subject_id, plan.study_id, exam, view, image_size, image_size, plan.date,
                              plan.time, exam, meaning, "Recumbent" if plan.view == "AP" else "Erect"])
        dicom_id = plan.dicom_ids[0]
        for name in FINDINGS:
            st = plan.findings[name]
            pixels = int(masks[name].sum()) if name in masks else 0
            path = f"masks/{dicom_id}_{name}.png" if pixels else ""
            if pixels:
                Image.fromarray(masks[name].astype(np.uint8) * 255, mode="L").save(root / path)
            mask_rows.append([dicom_id, sub.subject_id, plan.study_id, name, int(st.present), pixels,
                              f"{st.severity:.3f}" if st.present else "", path])
    _write_csv(root / "mimic-cxr-2.0.0-chexpert.csv", ("subject_id", "study_id") + CHEXPERT_LABELS, chexpert_rows)
    _write_csv(root / "mimic-cxr-2.0.0-split.csv", ("dicom_id", "study_id", "subject_id", "split"), split_rows)
    _write_csv(root / "mimic-cxr-2.0.0-metadata.csv", METADATA_COLUMNS, meta_rows)
    _write_csv(root / "masks.csv", MASK_COLUMNS, mask_rows)
    return root


def _label_cell(value: Optional[float]) -> str:
    return "" if value is None else f"{value:.1f}"


def _write_csv(path: Path, header: Sequence[str], rows: List[list]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
