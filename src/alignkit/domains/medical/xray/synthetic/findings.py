"""The six findings drawn on a frontal image, each with its pixel mask:

- ``cardiomegaly``: cardiothoracic ratio 0.52-0.68 (normal 0.39-0.49), drawn by the heart size of
  :func:`~.anatomy.sample_thorax`;
- ``pleural_effusion``: basal fluid with a meniscus rising laterally, blunted costophrenic angle, lost
  hemidiaphragm outline; one side or both;
- ``pneumothorax``: a visceral pleural line with dark pleural air and no lung markings beyond it, apical
  to lateral;
- ``nodule``: a round solid opacity of 13-32 mm in one lung zone;
- ``consolidation``: patchy lobar airspace opacity, air bronchograms when dense; the middle lobe and lingula
  efface the heart border;
- ``edema``: bilateral perihilar haze, Kerley B lines, blurred and upper-lobe-dominant vessels.

Masks: heart silhouette, fluid, pleural air, nodule, consolidated lung, oedematous lung.
"""
from __future__ import annotations

import math
from typing import Dict, Tuple

import numpy as np

from alignkit.domains.medical.xray.synthetic.anatomy import FrontalLayers, Thorax
from alignkit.domains.medical.xray.synthetic.canvas import (Grid, LineCanvas, component_rng, random_curve, smooth_noise,
                                                            soft_step)
from alignkit.domains.medical.xray.synthetic.plans import LOBES, SIDES, ZONES, StudyPlan


def image_sides(side: str) -> Tuple[int, ...]:
    return (-1, 1) if side == "bilateral" else (SIDES[side],)


def draw_findings(plan: StudyPlan, th: Thorax, g: Grid, hemi: Dict[int, np.ndarray],
                  lungs: Dict[int, np.ndarray], heart: np.ndarray) -> FrontalLayers:
    zeros = np.zeros_like(g.u)
    out = FrontalLayers(fill=zeros.copy(), pleural_air=zeros.copy(), markings=np.ones_like(g.u), density=zeros.copy())
    fnd = plan.findings
    lung = lungs[-1] + lungs[1]
    if fnd["cardiomegaly"].present:  # drawn by the heart size of sample_thorax
        out.masks["cardiomegaly"] = heart > 0.5

    st = fnd["pleural_effusion"]
    if st.present:
        rng = component_rng(plan, "pleural_effusion")
        fluid = zeros.copy()
        for s in image_sides(st.side):
            inner, outer = th.mediastinum(g.v, s), th.lateral(g.v, s)
            lateral = np.clip((s * (g.u - th.cx) - inner) / np.maximum(outer - inner, 1e-3), 0, 1)
            height = (0.035 + 0.2 * st.severity) * rng.uniform(0.8, 1.2)
            top = th.base(s) - height * (0.4 + 0.6 * lateral ** 1.5)  # the meniscus rises laterally
            fluid = np.maximum(fluid, soft_step(g.v - top, 0.006 + 0.02 * st.severity) * hemi[s])
        out.fill = np.maximum(out.fill, fluid * rng.uniform(0.85, 1.0))
        out.masks["pleural_effusion"] = fluid > 0.5

    st = fnd["consolidation"]
    if st.present:
        rng = component_rng(plan, "consolidation")
        s, t, frac = LOBES[st.place]
        x0, y0 = th.point(s, t, frac)
        rx = (0.07 + 0.09 * st.severity) * th.w / 0.37
        patch = soft_step(g.gaussian(x0, y0, rx, rx * rng.uniform(0.7, 1.1))
                          + 0.35 * smooth_noise(rng, g.size, 1.8 * g.size / 96) - 0.55, 0.08)
        # middle lobe and lingula lie against the heart and efface its border (the silhouette sign)
        region = patch * (hemi[s] if st.place in ("right middle lobe", "lingula") else lungs[s])
        out.fill = np.maximum(out.fill, region * (0.55 + 0.35 * st.severity))
        out.masks["consolidation"] = region > 0.5
        if st.severity > 0.35 and rng.random() < 0.7:  # air bronchograms
            canvas = LineCanvas(g.size)
            for _ in range(int(rng.integers(2, 5))):
                heading = (math.pi if s < 0 else 0.0) + s * math.pi / 2 * rng.uniform(0.3, 1.3)
                canvas.polyline(random_curve(rng, (x0 - s * 0.03, y0 - 0.02), heading, 0.07, 3, 0.25), 0.7, 1.0)
            out.density -= 0.22 * canvas.result() * (region > 0.5)

    st = fnd["edema"]
    if st.present:
        rng = component_rng(plan, "edema")
        haze = zeros.copy()
        for s in (-1, 1):
            hx, hy = th.cx + s * 0.2 * th.w, th.apex + 0.45 * (th.base(s) - th.apex)
            haze = np.maximum(haze, g.gaussian(hx, hy, (0.35 + 0.25 * st.severity) * th.w, 0.14 + 0.08 * st.severity))
        haze = haze * (1 + 0.25 * smooth_noise(rng, g.size, 3.0 * g.size / 96)) * lung
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
        rng = component_rng(plan, "pneumothorax")
        s = SIDES[st.side]
        gap = (0.018 + 0.09 * st.severity) * rng.uniform(0.85, 1.15)
        end = th.apex + (0.3 + 0.5 * st.severity) * (th.base(s) - th.apex)
        collapsed = th.hemithorax(g, s, inset=gap * soft_step(end - g.v, 0.04), top_inset=0.8 * gap) * (1 - heart)
        air = np.clip(lungs[s] - collapsed, 0, 1)
        out.pleural_air = air
        out.markings = 1 - air
        out.fill = np.maximum(out.fill, 0.2 * st.severity * collapsed)  # the collapsed lung holds less air
        out.density += (0.3 * np.clip(4 * collapsed * (1 - collapsed), 0, 1) * lungs[s]
                        * soft_step(end + 0.02 - g.v, 0.02))
        out.masks["pneumothorax"] = air > 0.5

    st = fnd["nodule"]
    if st.present:
        rng = component_rng(plan, "nodule")
        side, zone = st.place.split(" ")
        x0, y0 = th.point(SIDES[side], rng.uniform(*ZONES[zone]), rng.uniform(0.3, 0.85))
        blob = g.disc(x0, y0, st.radius)
        out.density += (0.38 + 0.2 * st.severity) * blob * (1 + 0.1 * smooth_noise(rng, g.size, 1.0))
        out.masks["nodule"] = blob > 0.5
    return out
