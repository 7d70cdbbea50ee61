"""What overlies a frontal chest besides the findings: the normal look-alikes (decoys) each finding must be told
apart from, and support devices.

- cardiomegaly: AP magnification of a normal heart (x1.08-1.16) and low lung volumes (:mod:`.anatomy`);
- pleural effusion: breast shadows, a raised hemidiaphragm, basal (plate) atelectasis;
- pneumothorax: skin folds (an edge running past the lung border, markings on both sides), scapular borders,
  device lines;
- nodule: nipple shadows (soft-edged, lower zones, often paired), ECG electrodes (rings with wires), end-on
  vessels and rib crossings;
- consolidation: overlying soft-tissue haze (smooth, not confined to the lung), plate atelectasis;
- edema: low lung volumes, soft-tissue haze, under-exposure, prominent hila.

Devices: pacemaker, central line, endotracheal and enteric tubes, sternotomy wires.
"""
from __future__ import annotations

import math

import numpy as np

from alignkit.domains.medical.xray.synthetic.anatomy import Thorax
from alignkit.domains.medical.xray.synthetic.canvas import Grid, LineCanvas, component_rng, random_curve, soft_step
from alignkit.domains.medical.xray.synthetic.plans import SIDES, StudyPlan


def draw_decoys(plan: StudyPlan, th: Thorax, g: Grid, lung: np.ndarray, body: np.ndarray) -> np.ndarray:
    """Density of the normal look-alikes of findings: nipple shadows, ECG electrodes and wires, skin folds,
    soft-tissue haze, scapular borders and plate atelectasis."""
    u, v = g.u, g.v
    density = np.zeros_like(u)
    decoys = plan.decoys
    if "nipples" in decoys:
        rng = component_rng(plan, "nipples")
        for s in (-1, 1) if decoys["nipples"] == "bilateral" else (SIDES[decoys["nipples"]],):
            x0, y0 = th.cx + s * th.w * rng.uniform(0.5, 0.72), th.dome(s) - rng.uniform(0.02, 0.1)
            density += rng.uniform(0.18, 0.32) * g.disc(x0, y0, rng.uniform(0.014, 0.024), rng.uniform(1.0, 2.0))
    if "ecg" in decoys:
        rng = component_rng(plan, "ecg")
        wires = LineCanvas(g.size)
        for _ in range(int(decoys["ecg"])):
            x0, y0 = th.cx + rng.uniform(-1.1, 1.1) * th.w, rng.uniform(th.apex - 0.05, th.base(1))
            r = rng.uniform(0.011, 0.016)
            ring = g.disc(x0, y0, r) - 0.5 * g.disc(x0, y0, 0.6 * r)
            density += rng.uniform(0.35, 0.5) * ring + 0.3 * g.disc(x0, y0, 0.005)
            wires.polyline(random_curve(rng, (x0, y0), rng.uniform(0, 2 * math.pi), rng.uniform(0.15, 0.4), 6, 0.3),
                           0.5, 1.0)
        density += 0.3 * wires.result()
    if "skin_fold" in decoys:  # an edge (not a line) that runs past the lung border, markings on both sides
        rng = component_rng(plan, "skin_fold")
        s = SIDES[decoys["skin_fold"]]
        fold = th.cx + s * (th.w * rng.uniform(0.6, 0.92) + rng.uniform(-0.05, 0.05) * ((v - 0.4) / 0.3) ** 2)
        inside = s * (fold - u)
        density += (0.13 * soft_step(inside, 0.6 * g.px) * np.exp(-np.clip(inside, 0, None) / 0.035)
                    * soft_step(v - th.apex + 0.05, 0.03) * soft_step(th.base(s) - v, 0.05))
    if "haze" in decoys:  # overlying soft tissue: smooth, not confined to the lung
        rng = component_rng(plan, "haze")
        x0, y0 = th.point(SIDES[decoys["haze"]], rng.uniform(0.2, 0.85), rng.uniform(0.2, 0.9))
        sig = rng.uniform(0.06, 0.13)
        density += rng.uniform(0.08, 0.2) * g.gaussian(x0, y0, sig * math.sqrt(2), sig * math.sqrt(2)) * body
    if "scapula" in decoys:  # medial scapular borders over the upper lungs (AP)
        rng = component_rng(plan, "scapula")
        for s in (-1, 1):
            border = th.cx + s * th.w * (rng.uniform(0.72, 0.84) - 0.25 * np.clip((v - th.apex) / 0.35, 0, 1))
            density += rng.uniform(0.07, 0.11) * (soft_step(s * (u - border), 1.5 * g.edge)
                                                  * soft_step(th.apex + 0.38 - v, 0.03)
                                                  * soft_step(v - th.apex + 0.05, 0.02))
    if plan.atelectasis:
        rng = component_rng(plan, "atelectasis")
        canvas = LineCanvas(g.size)
        for side in ("right", "left") if plan.atelectasis == "bibasilar" else (plan.atelectasis,):
            x0, y0 = th.point(SIDES[side], 0.86, rng.uniform(0.3, 0.6))
            ang, half = rng.uniform(-0.25, 0.25), rng.uniform(0.025, 0.05)
            d = np.array([math.cos(ang), math.sin(ang)]) * half
            canvas.polyline(np.array([[x0, y0] - d, [x0, y0] + d]), 1.2, 1.0)
        density += 0.22 * canvas.result() * np.maximum(lung, 0.3)
    return density


def draw_devices(plan: StudyPlan, th: Thorax, g: Grid) -> np.ndarray:
    """Density of the support devices and sternotomy wires of ``plan``."""
    rng = component_rng(plan, "devices")
    u, v = g.u, g.v
    canvas = LineCanvas(g.size)
    extra = np.zeros_like(u)
    ra = (th.heart_x - 0.55 * th.heart_a, th.heart_y - 0.3 * th.heart_b)
    rv = (th.heart_x + 0.3 * th.heart_a, th.heart_y + 0.35 * th.heart_b)
    for device in plan.devices:
        if device == "pacemaker":
            bx, by = th.cx + 0.72 * th.w, th.apex + 0.04
            extra += soft_step(0.032 - np.abs(u - bx), g.edge) * soft_step(0.022 - np.abs(v - by), g.edge)
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
