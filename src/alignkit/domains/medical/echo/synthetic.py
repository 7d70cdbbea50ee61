"""A synthetic echocardiography archive in the EchoNet-Dynamic layout plus a study table (the data of
``alignkit demo echo``).

:func:`write_synthetic_echo` writes::

    root/
      Videos/<FileName>.avi     FFV1 (lossless, intra-only: keeps the speckle, decodes fast, seeks per frame);
                                grey, or RGB for the colour Doppler views; image_size x image_size, `frames` frames
      FileList.csv              FileName (no extension, as EchoNet), EF, ESV, EDV, FrameHeight, FrameWidth, FPS,
                                NumberOfFrames, Split (TRAIN / VAL / TEST)
      VolumeTracings.csv        FileName (with .avi), X1, Y1, X2, Y2, Frame: the LV of every apical view at its
                                ED and ES frames, 21 rows per frame (long axis, then 20 disk diameters)
      reports/<study_id>.txt    a sectioned echo report
      studies.csv               study_id, video (Videos/<FileName>.avi), view, report (reports/<id>.txt),
                                split (train / val / test), EF, ESV, EDV and one 0/1 column per finding

Studies. Each has a heart (:class:`StudyPlan`): an ejection fraction (EF; 70 % normal 52-72 %, 30 % reduced
15-50 %), an end-diastolic volume (EDV 80-140 mL, 180-260 mL with a dilated LV; ``ESV = EDV (1 - EF)``),
a heart rate of 62-100 /min and the findings of ``findings`` (each with probability ``finding_rate``), and
``videos_per_study`` clips in distinct views: ``required_views`` (default the apical four-chamber, which shows
every finding) plus random others.

Views (:data:`VIEW_GEOMETRY`, at least 8 of :data:`~alignkit.domains.medical.echo.io.ECHOPRIME_VIEWS`): each
a distinct arrangement of chambers, drawn as ellipses (dark blood pool inside a bright myocardial wall) on
speckled tissue inside an ultrasound sector, with near-duplicate pairs: A5C is A4C plus the aortic outflow
(the "fifth chamber"), A3C is A2C plus the aorta. The Doppler views add a colour box (red: flow towards the
probe in diastole, blue: away in systole); SSN shows the aortic arch, the subcostal view the liver above a
rotated heart. Every video gets its own tilt, zoom, shift, gain and speckle.

Motion. The LV volume follows ``V(t) = EDV (1 - EF s(phase))`` with the systolic curve
``s = sin^2(pi phase / (2 phase_es))`` for ``phase <= 2 phase_es`` (0 at end-diastole, 1 at end-systole, then
diastasis); its ellipse scales by ``(V / EDV)^(1/3)``, so the volume ratio of any two frames is exact and the
method of disks on the traced ED and ES frames gives back the EF. The RV contracts less, the atria fill in
systole, walls thicken. Each clip (``frames`` at ``fps``, default ``fps = 5 frames / 6``, i.e. 1.2 s) covers at
least one full beat and holds an exact ED frame and an exact ES frame (the traced ones).

Findings (:data:`FINDINGS`; each visible only in the views that show its structure, :func:`finding_views`):
``dilated_lv`` (EDV 180-260 mL), ``dilated_la`` (LA x1.35-1.6), ``pericardial_effusion`` (a dark rim of
5-10 % of the frame between the heart and the bright pericardium; in A4C, PLAX, PSAX and subcostal views) and
``dilated_rv`` (RV x1.35-1.55).

Reports (:func:`write_report`): INDICATION, LEFT VENTRICLE (size, EF as a number or a range, systolic
function), RIGHT VENTRICLE, LEFT ATRIUM, optional RIGHT ATRIUM and valve sections, PERICARDIUM and
CONCLUSIONS, in varied phrasing with negations ("No pericardial effusion.", "The left atrium is not dilated.",
"Pericardial effusion is absent."); every finding is stated, positive or negated, in its section.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from alignkit.core.registry import ConfigError, did_you_mean
from alignkit.domains.medical.echo.io import ECHONET_COLUMNS, ECHOPRIME_VIEWS, TRACING_COLUMNS

FINDINGS: Tuple[str, ...] = ("dilated_lv", "dilated_la", "pericardial_effusion", "dilated_rv")
"""Findings the generator can draw, in label order."""
DEFAULT_FINDINGS: Tuple[str, ...] = FINDINGS[:3]
SPLITS: Tuple[str, ...] = ("train", "val", "test")
APICAL_VIEWS = frozenset({"A2C", "A3C", "A4C", "A5C"})
"""Views whose LV is traced in VolumeTracings.csv (long axis in the image plane)."""
DISKS = 20
"""Disk diameters per traced frame (EchoNet-Dynamic traces 20)."""

_TISSUE, _MYOCARDIUM, _BLOOD, _PERICARDIUM, _FLUID, _LIVER = 0.30, 0.66, 0.035, 0.92, 0.02, 0.48
_APEX = (0.5, 0.03)  # sector apex, unit coordinates (x right, y down)


# ========================================================================================= geometry


@dataclass(frozen=True)
class Ellipse:
    """Centre ``(x, y)`` and semi-axes ``a`` (along ``angle``, degrees from +x towards +y) and ``b``, in units of
    the frame (0..1)."""

    x: float
    y: float
    a: float
    b: float
    angle: float = 0.0


@dataclass(frozen=True)
class Chamber:
    """A blood pool of ``role`` (``LV``, ``RV``, ``LA``, ``RA``, ``AO``, ``vessel``) with a wall of ``wall``
    (units of the frame; 0 for none)."""

    role: str
    shape: Ellipse
    wall: float = 0.022


@dataclass(frozen=True)
class ViewGeometry:
    """One view: its chambers, the pericardial envelope (effusion is drawn around it; None when the view does
    not show the pericardium), an optional liver, the colour Doppler box ``(x0, y0, x1, y1)`` and the sector's
    half-angle (degrees)."""

    chambers: Tuple[Chamber, ...]
    envelope: Optional[Ellipse] = None
    liver: Optional[Ellipse] = None
    doppler_box: Optional[Tuple[float, float, float, float]] = None
    half_angle: float = 40.0


_A4C = (Chamber("LV", Ellipse(0.60, 0.40, 0.24, 0.10, 95), 0.04),
        Chamber("RV", Ellipse(0.37, 0.42, 0.20, 0.08, 80)),
        Chamber("LA", Ellipse(0.60, 0.76, 0.09, 0.10, 90), 0.012),
        Chamber("RA", Ellipse(0.37, 0.76, 0.09, 0.09, 90), 0.012))
_A2C = (Chamber("LV", Ellipse(0.50, 0.40, 0.25, 0.11, 90), 0.04),
        Chamber("LA", Ellipse(0.50, 0.77, 0.10, 0.11, 90), 0.012))
_PLAX = (Chamber("RV", Ellipse(0.48, 0.24, 0.26, 0.05, 5)), Chamber("LV", Ellipse(0.42, 0.50, 0.25, 0.10, 10), 0.04),
         Chamber("AO", Ellipse(0.76, 0.42, 0.13, 0.05, 0), 0.015),
         Chamber("LA", Ellipse(0.76, 0.64, 0.10, 0.09, 0), 0.012))
_PSAX = (Chamber("LV", Ellipse(0.52, 0.56, 0.14, 0.14, 0), 0.035), Chamber("RV", Ellipse(0.36, 0.36, 0.17, 0.06, -35)))

VIEW_GEOMETRY: Dict[str, ViewGeometry] = {
    "A4C": ViewGeometry(_A4C, envelope=Ellipse(0.49, 0.57, 0.34, 0.30, 90)),
    "A5C": ViewGeometry(_A4C + (Chamber("AO", Ellipse(0.50, 0.62, 0.11, 0.035, 60), 0.012),)),
    "A2C": ViewGeometry(_A2C),
    "A3C": ViewGeometry((Chamber("LV", Ellipse(0.47, 0.40, 0.25, 0.10, 100), 0.04),
                         Chamber("LA", Ellipse(0.42, 0.77, 0.09, 0.10, 90), 0.012),
                         Chamber("AO", Ellipse(0.64, 0.68, 0.12, 0.04, 120), 0.015))),
    "Apical_Doppler": ViewGeometry(_A4C, doppler_box=(0.45, 0.45, 0.75, 0.85)),
    "Parasternal_Long": ViewGeometry(_PLAX, envelope=Ellipse(0.58, 0.47, 0.40, 0.28, 5)),
    "Doppler_Parasternal_Long": ViewGeometry(_PLAX, doppler_box=(0.55, 0.30, 0.90, 0.55)),
    "Parasternal_Short": ViewGeometry(_PSAX, envelope=Ellipse(0.47, 0.51, 0.29, 0.27, 0)),
    "Doppler_Parasternal_Short": ViewGeometry(_PSAX, doppler_box=(0.20, 0.22, 0.55, 0.50)),
    "SSN": ViewGeometry((Chamber("vessel", Ellipse(0.30, 0.52, 0.16, 0.05, 70), 0.015),
                         Chamber("vessel", Ellipse(0.50, 0.34, 0.18, 0.05, 0), 0.015),
                         Chamber("vessel", Ellipse(0.70, 0.52, 0.16, 0.05, 110), 0.015),
                         Chamber("vessel", Ellipse(0.50, 0.62, 0.06, 0.06, 0), 0.012)), half_angle=35.0),
    "Subcostal": ViewGeometry((Chamber("RV", Ellipse(0.50, 0.50, 0.17, 0.06, -30)),
                               Chamber("LV", Ellipse(0.64, 0.62, 0.20, 0.085, -30), 0.04),
                               Chamber("RA", Ellipse(0.40, 0.70, 0.08, 0.08, 0), 0.012),
                               Chamber("LA", Ellipse(0.55, 0.82, 0.08, 0.08, 0), 0.012)),
                              envelope=Ellipse(0.55, 0.66, 0.33, 0.22, -30),
                              liver=Ellipse(0.25, 0.22, 0.40, 0.20, 20), half_angle=45.0),
}
"""Geometry of every view the generator draws (the 11 EchoPrime views)."""

_FINDING_ROLE = {"dilated_lv": "LV", "dilated_la": "LA", "dilated_rv": "RV"}


def finding_views(finding: str, views: Sequence[str] = ECHOPRIME_VIEWS) -> List[str]:
    """The views of ``views`` in which ``finding`` is visible: those with its chamber (LV, LA, RV), or with a
    pericardial envelope for ``pericardial_effusion``."""
    if finding == "pericardial_effusion":
        return [v for v in views if VIEW_GEOMETRY[v].envelope is not None]
    return [v for v in views if any(c.role == _FINDING_ROLE[finding] for c in VIEW_GEOMETRY[v].chambers)]


# ============================================================================================ plans


@dataclass
class StudyPlan:
    """Everything about one synthetic study (the heart, its findings and the videos to draw).

    ``ef`` is a fraction (0..1); ``edv``/``esv`` in mL; ``period`` the beat length in frames; ``severity``:
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


# ========================================================================================== drawing


def systole(phase: np.ndarray, phase_es: float) -> np.ndarray:
    """Systolic curve ``s = sin^2(pi phase / (2 phase_es))`` for ``phase <= 2 phase_es``, else 0 (diastasis):
    0 at end-diastole (phase 0), 1 at end-systole (``phase_es``)."""
    s = np.sin(np.pi * phase / (2 * phase_es)) ** 2
    return np.where(phase <= 2 * phase_es, s, 0.0)


@dataclass(frozen=True)
class _Pose:
    """The per-video transform of unit coordinates to pixels: rotate by ``angle`` (degrees) and scale by ``zoom``
    about the frame centre, shift by ``shift`` (units), then multiply by ``size - 1``."""

    size: int
    angle: float
    zoom: float
    shift: Tuple[float, float]

    def point(self, x: float, y: float) -> Tuple[float, float]:
        c, s = math.cos(math.radians(self.angle)), math.sin(math.radians(self.angle))
        dx, dy = x - 0.5, y - 0.5
        ux = 0.5 + self.zoom * (c * dx - s * dy) + self.shift[0]
        uy = 0.5 + self.zoom * (s * dx + c * dy) + self.shift[1]
        return ux * (self.size - 1), uy * (self.size - 1)

    def length(self, value: float) -> float:
        return value * self.zoom * (self.size - 1)


def _paint(canvas: np.ndarray, shape: Ellipse, pose: _Pose, scale: np.ndarray, grow: np.ndarray,
           value: float) -> np.ndarray:
    """Paint ellipse ``shape`` (semi-axes ``a * scale[t] + grow[t]``, ``b * scale[t] + grow[t]``) with ``value``
    into ``canvas`` ``(T, S, S)``, antialiased over one pixel; returns the coverage ``(T, S, S)`` in [0, 1]
    of its bounding window (zeros elsewhere)."""
    size = canvas.shape[-1]
    cx, cy = pose.point(shape.x, shape.y)
    a = pose.length(shape.a) * scale + pose.length(1.0) * grow
    b = pose.length(shape.b) * scale + pose.length(1.0) * grow
    reach = float(np.max(np.maximum(a, b))) + 2
    x0, x1 = max(int(cx - reach), 0), min(int(cx + reach) + 2, size)
    y0, y1 = max(int(cy - reach), 0), min(int(cy + reach) + 2, size)
    coverage = np.zeros_like(canvas)
    if x0 >= x1 or y0 >= y1:
        return coverage
    theta = math.radians(shape.angle + pose.angle)
    dx = (np.arange(x0, x1, dtype=np.float32) - cx)[None, None, :]
    dy = (np.arange(y0, y1, dtype=np.float32) - cy)[None, :, None]
    a3, b3 = a.astype(np.float32)[:, None, None], b.astype(np.float32)[:, None, None]
    u = (dx * math.cos(theta) + dy * math.sin(theta)) / a3
    v = (dy * math.cos(theta) - dx * math.sin(theta)) / b3
    radius = np.sqrt(u * u + v * v)
    alpha = np.clip((1.0 - radius) * np.minimum(a3, b3) + 0.5, 0.0, 1.0)
    window = canvas[:, y0:y1, x0:x1]
    window += alpha * (value - window)
    coverage[:, y0:y1, x0:x1] = alpha
    return coverage


def _lv_segments(shape: Ellipse, pose: _Pose, scale: float) -> np.ndarray:
    """``(1 + DISKS, 4)`` tracing of the LV ellipse at ``scale``: the long axis, then ``DISKS`` diameters at the
    centres of equal slices of it (method of disks)."""
    cx, cy = pose.point(shape.x, shape.y)
    a, b = pose.length(shape.a) * scale, pose.length(shape.b) * scale
    theta = math.radians(shape.angle + pose.angle)
    u = np.array([math.cos(theta), math.sin(theta)])
    v = np.array([-math.sin(theta), math.cos(theta)])
    centre = np.array([cx, cy])
    rows = [np.concatenate([centre - a * u, centre + a * u])]
    for k in range(DISKS):
        along = -a + (k + 0.5) * 2 * a / DISKS
        half = b * math.sqrt(max(1.0 - (along / a) ** 2, 0.0))
        mid = centre + along * u
        rows.append(np.concatenate([mid - half * v, mid + half * v]))
    return np.asarray(rows)


@dataclass
class RenderedVideo:
    """Frames ``(T, S, S)`` uint8 grey or ``(T, S, S, 3)`` RGB (Doppler views), the ED and ES frame indices and
    the LV tracings (frame -> ``(21, 4)``; empty for non-apical views)."""

    frames: np.ndarray
    ed_frame: int
    es_frame: int
    tracings: Dict[int, np.ndarray]


def _sector(size: int, pose: _Pose, half_angle: float) -> np.ndarray:
    """Bool ``(S, S)``: inside the scan sector (apex at :data:`_APEX` shifted with the video, radius 0.97 of the
    frame, +-``half_angle`` about the vertical)."""
    ax = (_APEX[0] + pose.shift[0]) * (size - 1)
    ay = _APEX[1] * (size - 1)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    depth = np.hypot(xs - ax, ys - ay)
    bearing = np.degrees(np.arctan2(xs - ax, ys - ay))
    return (depth <= 0.97 * (size - 1)) & (np.abs(bearing) <= half_angle) & (ys >= ay)


def render_video(plan: StudyPlan, view: str, frames: int, size: int, fps: float,
                 rng: np.random.Generator) -> RenderedVideo:
    """Draw one clip of ``plan``'s heart in ``view`` (see the module docstring)."""
    geometry = VIEW_GEOMETRY[view]
    period = 60.0 / plan.heart_rate * fps
    es_offset = max(1, round(0.35 * period))
    ed = int(rng.integers(0, max(1, min(int(period), frames - 1 - es_offset))))
    phase = ((np.arange(frames) - ed) / period) % 1.0
    s = systole(phase, es_offset / period)
    pose = _Pose(size=size, angle=float(rng.uniform(-7, 7)), zoom=float(rng.uniform(0.92, 1.08)),
                 shift=(float(rng.uniform(-0.03, 0.03)), float(rng.uniform(-0.02, 0.03))))
    jitter = {role: float(rng.uniform(0.96, 1.04)) for role in ("LV", "RV", "LA", "RA", "AO", "vessel")}
    lv_scale = plan.scales["LV"] * jitter["LV"] * (1.0 - plan.ef * s) ** (1 / 3)
    motion = {"LV": lv_scale, "RV": plan.scales["RV"] * jitter["RV"] * (1.0 - 0.25 * s),
              "LA": plan.scales["LA"] * jitter["LA"] * (1.0 + 0.10 * s),
              "RA": plan.scales["RA"] * jitter["RA"] * (1.0 + 0.10 * s),
              "AO": plan.scales["AO"] * jitter["AO"] * (1.0 + 0.06 * s),
              "vessel": plan.scales["vessel"] * jitter["vessel"] * (1.0 + 0.05 * s)}
    zero = np.zeros(frames)
    canvas = np.full((frames, size, size), _TISSUE, dtype=np.float32)
    if geometry.liver is not None:
        _paint(canvas, geometry.liver, pose, zero + 1.0, zero, _LIVER)
    if geometry.envelope is not None:
        beat = 1.0 - 0.04 * s
        heart = np.maximum(plan.scales["LV"], 1.0)
        _paint(canvas, geometry.envelope, pose, beat * heart, zero + plan.effusion + 0.012, _PERICARDIUM)
        if plan.effusion > 0:
            _paint(canvas, geometry.envelope, pose, beat * heart, zero + plan.effusion, _FLUID)
        _paint(canvas, geometry.envelope, pose, beat * heart, zero, _TISSUE + 0.05)
    thickening = 1.0 + 0.2 * s
    for chamber in geometry.chambers:
        if chamber.wall > 0:
            _paint(canvas, chamber.shape, pose, motion[chamber.role], chamber.wall * thickening, _MYOCARDIUM)
    blood = np.zeros_like(canvas)
    for chamber in geometry.chambers:
        blood = np.maximum(blood, _paint(canvas, chamber.shape, pose, motion[chamber.role], zero, _BLOOD))
    sector = _sector(size, pose, geometry.half_angle)
    speckle = np.sqrt(-2.0 * np.log(1.0 - rng.random((size, size), dtype=np.float32)))  # Rayleigh, mean 1.25
    speckle = 0.25 * (speckle + np.roll(speckle, 1, 0) + np.roll(speckle, 1, 1) + np.roll(speckle, (1, 1), (0, 1)))
    flicker = rng.random((frames, size, size), dtype=np.float32)
    depth = np.linspace(0.0, 1.0, size, dtype=np.float32)[None, :, None]
    gain = float(rng.uniform(0.85, 1.15)) * (1.15 - 0.45 * depth)
    image = canvas * (0.65 * speckle / 1.25 + 0.7 * flicker) * gain + 0.015 * flicker
    grey = (np.clip(image, 0.0, 1.0) * 255.0 * sector).astype(np.uint8)
    tracings: Dict[int, np.ndarray] = {}
    if view in APICAL_VIEWS:
        lv = next(c for c in geometry.chambers if c.role == "LV")
        tracings = {ed: _lv_segments(lv.shape, pose, float(lv_scale[ed])),
                    ed + es_offset: _lv_segments(lv.shape, pose, float(lv_scale[ed + es_offset]))}
    if geometry.doppler_box is None:
        return RenderedVideo(grey, ed, ed + es_offset, tracings)
    return RenderedVideo(_colour_flow(grey, blood, geometry.doppler_box, pose, s, sector, rng), ed, ed + es_offset,
                         tracings)


def _colour_flow(grey: np.ndarray, blood: np.ndarray, box: Tuple[float, float, float, float], pose: _Pose,
                 s: np.ndarray, sector: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """RGB ``(T, S, S, 3)``: ``grey`` with colour flow on the blood pools inside the Doppler ``box``. Velocity
    ``v = -ds/dt`` scaled to a peak of 1: filling in diastole is red (towards the probe), ejection in systole
    blue; the colour weight ``min(2 |v|, 1)`` carries a mosaic noise."""
    size = grey.shape[-1]
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    (x0, y0), (x1, y1) = pose.point(box[0], box[1]), pose.point(box[2], box[3])
    xs = slice(max(int(min(x0, x1)), 0), min(int(max(x0, x1)) + 1, size))
    ys = slice(max(int(min(y0, y1)), 0), min(int(max(y0, y1)) + 1, size))
    velocity = -np.gradient(s)
    velocity = velocity / max(float(np.max(np.abs(velocity))), 1e-6)
    flow = (blood[:, ys, xs] > 0.5) & sector[None, ys, xs]
    mosaic = 0.6 + 0.4 * rng.random(flow.shape, dtype=np.float32)
    weight = (np.minimum(2 * np.abs(velocity), 1.0)[:, None, None] * mosaic * flow)[..., None]
    colour = np.where((velocity > 0)[:, None, None, None], np.array([235, 45, 35], np.float32),
                      np.array([45, 110, 245], np.float32))
    window = rgb[:, ys, xs]
    rgb[:, ys, xs] = np.clip(window * (1.0 - weight) + colour * weight, 0, 255).astype(np.uint8)
    return rgb


def write_avi(path: Path, frames: np.ndarray, fps: int) -> None:
    """Write ``frames`` (grey ``(T, H, W)`` or RGB ``(T, H, W, 3)`` uint8) as FFV1 with PyAV, in an AVI (or the
    container ``path``'s suffix names, e.g. ``.mkv``); every frame a keyframe (GOP 1, so a reader can seek to any
    frame)."""
    import av
    rgb = frames.ndim == 4
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("ffv1", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "bgr0" if rgb else "gray"
        stream.codec_context.gop_size = 1
        for frame in frames:
            packet_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24" if rgb else "gray")
            container.mux(stream.encode(packet_frame))
        container.mux(stream.encode())


# ========================================================================================== reports

_INDICATIONS = ("Dyspnea.", "Evaluate left ventricular function.", "Chest pain.", "Murmur.", "Atrial fibrillation.",
                "Shortness of breath on exertion.", "Pre-operative assessment.", "Syncope.", "Hypertension.")


def _ef_category(ef: float) -> str:
    """ASE grading of the EF (%): >= 55 normal, 45-54 mildly, 30-44 moderately, < 30 severely reduced."""
    if ef >= 55:
        return "normal"
    if ef >= 45:
        return "mildly reduced"
    return "moderately reduced" if ef >= 30 else "severely reduced"


def _ef_sentence(ef: float, rng: np.random.Generator) -> str:
    value = int(round(ef))
    low = 5 * (value // 5)
    forms = (f"The left ventricular ejection fraction is {value}%.", f"LVEF is estimated at {low}-{low + 5}%.",
             f"Visually estimated ejection fraction of {value} percent.", f"EF {value}%.",
             f"Biplane ejection fraction measures {value}%.", f"The ejection fraction is approximately {value}%.")
    return _choose(rng, forms)


def _choose(rng: np.random.Generator, forms: Sequence[str]) -> str:
    return str(forms[int(rng.integers(len(forms)))])


def _lv_size(plan: StudyPlan, rng: np.random.Generator) -> str:
    if plan.findings["dilated_lv"]:
        grade = plan.severity["dilated_lv"]
        return _choose(rng, (f"The left ventricle is {grade}ly dilated.", f"{grade.capitalize()} left ventricular "
                             "dilatation.", "Left ventricular cavity size is increased.", "Dilated left ventricle."))
    return _choose(rng, ("The left ventricle is not dilated.", "Normal left ventricular cavity size.",
                         "Left ventricular size is normal.", "No left ventricular dilatation."))


def _la(plan: StudyPlan, rng: np.random.Generator) -> str:
    if plan.findings["dilated_la"]:
        grade = plan.severity["dilated_la"]
        return _choose(rng, (f"The left atrium is {grade}ly dilated.", f"{grade.capitalize()} left atrial "
                             "enlargement.", "The left atrium is enlarged.", "Dilated left atrium."))
    return _choose(rng, ("Normal left atrial size.", "The left atrium is not dilated.", "No left atrial enlargement.",
                         "Left atrial size is normal."))


def _rv(plan: StudyPlan, rng: np.random.Generator) -> str:
    if plan.findings["dilated_rv"]:
        grade = plan.severity["dilated_rv"]
        return _choose(rng, (f"The right ventricle is {grade}ly dilated.", "Right ventricular enlargement with "
                             "preserved systolic function.", "Dilated right ventricle."))
    return _choose(rng, ("Normal right ventricular size and systolic function.", "The right ventricle is not "
                         "dilated.", "No right ventricular dilatation. Normal RV function."))


def _pericardium(plan: StudyPlan, rng: np.random.Generator) -> str:
    if plan.findings["pericardial_effusion"]:
        size = {"mild": "small", "moderate": "moderate", "severe": "large"}[plan.severity["pericardial_effusion"]]
        return _choose(rng, (f"There is a {size} pericardial effusion.", f"{size.capitalize()} circumferential "
                             "pericardial effusion.", f"A {size} pericardial effusion is present, without "
                             "echocardiographic signs of tamponade.", f"{size.capitalize()} pericardial effusion."))
    return _choose(rng, ("No pericardial effusion.", "There is no pericardial effusion.",
                         "Pericardial effusion is absent.", "Normal pericardium without pericardial effusion.",
                         "Negative for pericardial effusion."))


_VALVES = {"AORTIC VALVE": ("Trileaflet aortic valve with normal opening.", "The aortic valve is mildly sclerotic "
                            "without stenosis."),
           "MITRAL VALVE": ("Structurally normal mitral valve. Trace mitral regurgitation.",
                            "Mild mitral annular calcification. Mild mitral regurgitation."),
           "TRICUSPID VALVE": ("Normal tricuspid valve. Trace tricuspid regurgitation.",
                               "Mild tricuspid regurgitation. Normal estimated pulmonary artery pressure.")}


def write_report(plan: StudyPlan, rng: np.random.Generator) -> str:
    """The sectioned report of ``plan`` (see the module docstring): headers in capitals with a colon, either
    on their own line or followed by the text; every simulated finding is stated positive or negated."""
    ef = 100.0 * plan.ef
    category = _ef_category(ef)
    function = _choose(rng, (f"Overall left ventricular systolic function is {category}.",
                             f"{category.capitalize()} global left ventricular systolic function."))
    sections: List[Tuple[str, str]] = [("INDICATION", _choose(rng, _INDICATIONS)),
                                       ("LEFT VENTRICLE", " ".join([_lv_size(plan, rng), _ef_sentence(ef, rng),
                                                                    function])),
                                       ("RIGHT VENTRICLE", _rv(plan, rng)), ("LEFT ATRIUM", _la(plan, rng))]
    if rng.random() < 0.5:
        sections.append(("RIGHT ATRIUM", "Normal right atrial size."))
    sections += [(name, _choose(rng, forms)) for name, forms in _VALVES.items() if rng.random() < 0.5]
    sections.append(("PERICARDIUM", _pericardium(plan, rng)))
    conclusions = [f"{category.capitalize()} left ventricular systolic function, EF {int(round(ef))}%."]
    named = {"dilated_lv": "dilated left ventricle", "dilated_la": "dilated left atrium",
             "dilated_rv": "dilated right ventricle", "pericardial_effusion": "pericardial effusion"}
    positives = [named[f] for f in FINDINGS if plan.findings[f]]
    if positives:
        conclusions.append(f"{', '.join(p.capitalize() if k == 0 else p for k, p in enumerate(positives))}.")
    elif rng.random() < 0.5:
        conclusions.append("No structural abnormality.")
    conclusion = " ".join(conclusions) if rng.random() < 0.5 else \
        "\n".join(f"{k}. {c}" for k, c in enumerate(conclusions, start=1))
    sections.append(("CONCLUSIONS", conclusion))
    inline = rng.random() < 0.5
    return "\n\n".join(f"{name}: {text}" if inline else f"{name}:\n{text}" for name, text in sections) + "\n"


# ========================================================================================== archive


def _file_name(seed: int, index: int, video: int) -> str:
    rng = np.random.default_rng([seed, index, video, 2])
    return "0X" + "".join(f"{int(b):02X}" for b in rng.integers(0, 256, size=8))


def write_synthetic_echo(root: str | Path, num_studies: int, image_size: int = 64, frames: int = 32, seed: int = 0,
                         views: Sequence[str] = ECHOPRIME_VIEWS, findings: Sequence[str] = DEFAULT_FINDINGS,
                         videos_per_study: int = 4, required_views: Sequence[str] = ("A4C",),
                         finding_rate: float = 0.3, fps: Optional[int] = None,
                         split_fractions: Sequence[float] = (0.7, 0.15, 0.15)) -> Path:
    """Write a synthetic echo archive of ``num_studies`` studies under ``root`` (see the module docstring) and
    return ``root``. Deterministic given ``seed``; a larger archive extends a smaller one.

    ``views``: at least 8 of :data:`VIEW_GEOMETRY`; ``findings``: a subset of :data:`FINDINGS`;
    ``fps``: default ``round(5 * frames / 6)`` (clips of 1.2 s; beats last at most 0.97 s).
    """
    views, findings, required_views = list(views), list(findings), list(required_views)
    unknown = [v for v in views + required_views if v not in VIEW_GEOMETRY]
    if unknown:
        raise ConfigError(f"unknown view '{unknown[0]}'{did_you_mean(unknown[0], VIEW_GEOMETRY)}; the generator "
                          f"draws {', '.join(VIEW_GEOMETRY)}")
    if len(set(views)) < 8 or not set(required_views) <= set(views):
        raise ConfigError(f"write_synthetic_echo needs at least 8 distinct views, including required_views "
                          f"{required_views}; got {views}")
    bad = [f for f in findings if f not in FINDINGS]
    if bad:
        raise ConfigError(f"unknown finding '{bad[0]}'{did_you_mean(bad[0], FINDINGS)}; choose from "
                          f"{', '.join(FINDINGS)}")
    fps = fps or max(1, round(5 * frames / 6))
    if num_studies < 1 or image_size < 32 or frames < 8 or frames / fps < 60 / 62:
        raise ValueError(f"write_synthetic_echo needs num_studies >= 1, image_size >= 32, frames >= 8 and clips of "
                         f"at least one beat (frames / fps >= 0.97 s); got {num_studies}, {image_size}, {frames}, "
                         f"fps {fps}")
    if len(split_fractions) != len(SPLITS) or abs(sum(split_fractions) - 1) > 1e-6:
        raise ValueError(f"split_fractions needs {len(SPLITS)} fractions ({', '.join(SPLITS)}) summing to 1, got "
                         f"{list(split_fractions)}")
    root = Path(root)
    (root / "Videos").mkdir(parents=True, exist_ok=True)
    (root / "reports").mkdir(parents=True, exist_ok=True)
    file_rows, tracing_rows, study_rows = [], [], []
    for index in range(num_studies):
        plan = plan_study(index, seed, views, findings, videos_per_study, required_views, finding_rate,
                          split_fractions)
        report_rel = f"reports/{plan.study_id}.txt"
        (root / report_rel).write_text(write_report(plan, np.random.default_rng([seed, index, 3])))
        labels = [f"{100 * plan.ef:.2f}", f"{plan.esv:.2f}", f"{plan.edv:.2f}",
                  *[int(plan.findings[f]) for f in findings]]
        for k, view in enumerate(plan.views):
            name = _file_name(seed, index, k)
            plan.file_names.append(name)
            video = render_video(plan, view, frames, image_size, fps, np.random.default_rng([seed, index, k, 4]))
            write_avi(root / "Videos" / f"{name}.avi", video.frames, fps)
            file_rows.append([name, labels[0], labels[1], labels[2], image_size, image_size, fps, frames,
                              plan.split.upper()])
            for frame, segments in sorted(video.tracings.items()):
                tracing_rows += [[f"{name}.avi", *(f"{v:.4f}" for v in row), frame] for row in segments]
            study_rows.append([plan.study_id, f"Videos/{name}.avi", view, report_rel, plan.split, *labels])
    _write_csv(root / "FileList.csv", ECHONET_COLUMNS, file_rows)
    _write_csv(root / "VolumeTracings.csv", TRACING_COLUMNS, tracing_rows)
    _write_csv(root / "studies.csv", ("study_id", "video", "view", "report", "split", "EF", "ESV", "EDV", *findings),
               study_rows)
    return root


def _write_csv(path: Path, header: Sequence[str], rows: List[list]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
