"""Drawing synthetic echo clips: view geometry, the beating heart and the ultrasound image.

Views (:data:`VIEW_GEOMETRY`, the 11 :data:`~alignkit.domains.medical.echo.archives.ECHOPRIME_VIEWS`): each
a distinct arrangement of chambers, drawn as ellipses (dark blood pool inside a bright myocardial wall) on
speckled tissue inside an ultrasound sector, with near-duplicate pairs: A5C is A4C plus the aortic outflow
(the "fifth chamber"), A3C is A2C plus the aorta. The Doppler views add a colour box (red: flow towards the
probe in diastole, blue: away in systole); SSN shows the aortic arch, the subcostal view the liver above a
rotated heart. Every video gets its own tilt, zoom, shift, gain and speckle.

Motion. The LV volume follows ``V(t) = EDV (1 - EF s(phase))`` with the systolic curve
``s = sin^2(pi phase / (2 phase_es))`` for ``phase <= 2 phase_es`` (0 at end-diastole, 1 at end-systole, then
diastasis); its ellipse scales by ``(V / EDV)^(1/3)``, so the volume ratio of any two frames is exact and the
method of disks on the traced ED and ES frames gives back the EF. The RV contracts less, the atria fill in
systole, walls thicken. A clip of at least one beat holds an exact ED frame and an exact ES frame (the traced
ones, :data:`APICAL_VIEWS` only).

Findings (:data:`~alignkit.domains.medical.echo.synthetic.plans.FINDINGS`) are visible only in the views that
show their structure (:func:`finding_views`): a dilated chamber is scaled up; ``pericardial_effusion`` is a dark
rim between the heart and the bright pericardium (in A4C, PLAX, PSAX and subcostal views).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from alignkit.domains.medical.echo.archives import ECHOPRIME_VIEWS
from alignkit.domains.medical.echo.synthetic.plans import StudyPlan

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
