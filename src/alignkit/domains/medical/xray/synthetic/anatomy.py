"""The normal frontal chest: thorax geometry of one image (:class:`Thorax`) and the density of body, lungs,
hila, mediastinum, heart, hemidiaphragms, ribs, clavicles, spine, breast shadows, vessels and texture, with what
the findings change in it (:class:`FrontalLayers`)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Tuple

import numpy as np

from alignkit.domains.medical.xray.synthetic.canvas import (Grid, LineCanvas, lowpass, random_curve, smooth_noise,
                                                            soft_step)
from alignkit.domains.medical.xray.synthetic.plans import StudyPlan


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
        return soft_step((1.0 - e) * self.heart_b, g.edge)

    def hemithorax(self, g: Grid, s: int, inset: float | np.ndarray = 0.0, top_inset: float = 0.0) -> np.ndarray:
        """Soft lung field of side ``s`` with the heart not yet removed; ``inset`` moves the lateral border in."""
        inward = self.lateral(g.v, s) - s * (g.u - self.cx) - inset
        medial = s * (g.u - self.cx) - self.mediastinum(g.v, s)
        return (soft_step(inward, g.edge) * soft_step(medial, g.edge) * soft_step(g.v - self.apex - top_inset, g.edge)
                * soft_step(self.dome_curve(g.u, s) - g.v, g.edge))

    def point(self, s: int, t: float, frac: float) -> Tuple[float, float]:
        """The point at height fraction ``t`` (0 apex .. 1 angle) and lateral fraction ``frac`` (0 medial ..
        1 lateral) of lung ``s``."""
        v = self.apex + t * (self.base(s) - self.apex) - 0.02 * t
        inner = float(self.mediastinum(np.array(v), s))
        if t > 0.45:  # beside the heart
            inner = max(inner, 0.85 * (self.heart_a + s * (self.heart_x - self.cx)))
        outer = float(self.lateral(np.array(v), s))
        return self.cx + s * (inner + frac * (outer - inner)), v


def sample_thorax(plan: StudyPlan, rng: np.random.Generator) -> Thorax:
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


def _vessels(canvas: LineCanvas, rng: np.random.Generator, th: Thorax, s: int, strength: float,
             upper_gain: float) -> None:
    """Branching vessels radiating from the hilum of lung ``s``, tapering outwards."""
    hx, hy = th.hilum(s)
    for _ in range(int(rng.integers(11, 16))):
        angle = math.radians(rng.uniform(-120, 95))  # 0 = lateral, negative = up
        direction = math.pi - angle if s < 0 else angle
        length = th.w * rng.uniform(0.45, 0.85) * (0.85 if abs(angle) > 1.3 else 1.0)
        pts = random_curve(rng, (hx - s * 0.01, hy + rng.normal(0, 0.01)), direction, length, 5, 0.18)
        gain = strength * (1.0 + (upper_gain if angle < -0.4 else 0.0))
        for i in range(5):
            canvas.polyline(pts[i:i + 2], width=1.5 - 0.25 * i, value=gain * (1 - 0.12 * i))
        if rng.random() < 0.8:
            j = int(rng.integers(1, 3))
            branch = random_curve(rng, tuple(pts[j]), direction + rng.choice([-0.6, 0.6]), length * 0.45, 3, 0.2)
            for i in range(3):
                canvas.polyline(branch[i:i + 2], width=0.9 - 0.2 * i, value=gain * (0.8 - 0.15 * i))


def draw_anatomy(plan: StudyPlan, th: Thorax, g: Grid, lung: np.ndarray, layers: FrontalLayers,
                 rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """Density of body, lungs (air less ``layers.fill``), bones, vessels, abdomen and soft tissue; and the
    soft body outline."""
    sub = plan.subject
    u, v, edge = g.u, g.v, g.edge
    xr = np.abs(u - th.cx) / th.w
    # body with shoulders and neck; the chest wall thickens laterally
    body_half = th.w + 0.05 + 0.05 * sub.fat
    shoulder = th.w + 0.12 + 0.04 * sub.fat
    half = np.where(v < th.apex + 0.02, body_half + (shoulder - body_half) * soft_step(v - th.apex + 0.06, 0.03),
                    body_half)
    neck = soft_step(v - th.apex + 0.08, 0.02)
    neck = neck + (1 - neck) * soft_step(0.09 - np.abs(u - th.cx), edge)
    body = soft_step(half - np.abs(u - th.cx), 2 * edge) * neck
    density = body * (0.85 + 0.3 * sub.fat + 0.15 * (v - 0.5) + 0.12 * soft_step(xr - 0.85, 0.03 / th.w))
    # lung air, less what the findings filled, plus pleural air
    texture = 1.0 + 0.06 * smooth_noise(rng, g.size, 4.0 * g.size / 96)
    density -= 0.72 * lung * (1 - layers.fill) * texture + 0.12 * layers.pleural_air
    # abdomen below the domes, gastric bubble, trachea, spine
    below = (np.minimum(soft_step(v - th.dome_curve(u, -1), edge) + (u > th.cx), 1)
             * np.minimum(soft_step(v - th.dome_curve(u, 1), edge) + (u < th.cx), 1))
    density += 0.12 * below * body
    if rng.random() < 0.7:
        gx, gy = th.cx + 0.45 * th.w, th.dome_l + 0.06
        density -= 0.3 * soft_step(0.035 - np.sqrt(((u - gx) / 1.5) ** 2 + (v - gy) ** 2), edge)
    density -= 0.25 * soft_step(0.016 - np.abs(u - th.cx - 0.005), edge) * soft_step(th.apex + 0.2 - v, 0.01)
    density += soft_step(0.032 - np.abs(u - th.cx), edge) * (0.16 + 0.05 * np.cos(2 * math.pi * (v - th.apex) / 0.055))
    for s in (-1, 1):  # hila
        hx, hy = th.hilum(s)
        density += (0.12 + 0.14 * sub.hilum) * g.gaussian(hx, hy, 0.035, 0.05) * lung
    # posterior ribs and clavicles
    ribs = np.zeros_like(u)
    spacing = (th.base(1) - th.apex + 0.05) / 9.5
    for i in range(10):
        y0 = th.apex - 0.035 + i * spacing + rng.normal(0, 0.004)
        ribs = np.maximum(ribs, soft_step(0.011 + 0.002 * i / 9 - np.abs(v - (y0 - 0.05 * xr + 0.13 * xr ** 2)), edge))
    density += 0.11 * ribs * soft_step(1.07 - xr, 0.02) * soft_step(xr - 0.1, 0.02) * body
    clavicle_y = (th.apex + (0.03 if plan.view == "PA" else -0.005) - 0.09 * np.clip(xr - 0.1, 0, 2)
                  + 0.025 * np.sin(math.pi * np.clip(xr, 0, 1.2)))
    density += (0.3 * soft_step(0.012 - np.abs(v - clavicle_y), edge) * soft_step(1.25 - xr, 0.02)
                * soft_step(xr - 0.08, 0.02))
    if sub.breast > 0:
        for s in (-1, 1):
            bx, by = th.cx + s * 0.6 * th.w, th.dome(s) + 0.02
            e = np.sqrt(((u - bx) / (0.38 * th.w)) ** 2 + ((v - by) / 0.13) ** 2)
            density += sub.breast * soft_step(1 - e, 0.2) * soft_step(v - by + 0.1, 0.04) * body
    # lung markings, absent beyond a pneumothorax's pleural line, blurred by edema; parenchymal texture
    canvas = LineCanvas(g.size)
    for s in (-1, 1):
        _vessels(canvas, rng, th, s, 0.32, layers.upper_vessels)
    markings = canvas.result()
    if layers.vessel_blur:
        markings = lowpass(markings, layers.vessel_blur)
    density += markings * lung * layers.markings + 0.03 * smooth_noise(rng, g.size, 1.2 * g.size / 96) * lung
    return density, body
