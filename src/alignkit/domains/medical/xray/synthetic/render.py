"""Frontal and lateral images of a study plan.

Every study has one frontal image (PA or portable AP) and, with ``lateral_fraction``, a lateral one. Frontal
images are drawn as densities (bright = dense): the anatomy (:mod:`.anatomy`), the findings (:mod:`.findings`),
decoys and devices (:mod:`.overlays`); then windowed with a random contrast and gamma, rotated, zoomed and
shifted, blurred and given noise. Subjects differ in thorax size and position, inspiration, soft tissue and
exposure; AP images magnify the heart, are noisier and more often carry ECG leads and devices.
"""
from __future__ import annotations

import math
from typing import Dict, Tuple

import numpy as np
from PIL import Image

from alignkit.domains.medical.xray.synthetic.anatomy import draw_anatomy, sample_thorax
from alignkit.domains.medical.xray.synthetic.canvas import (Grid, affine_transform, component_rng, lowpass,
                                                            smooth_noise, soft_step)
from alignkit.domains.medical.xray.synthetic.findings import draw_findings
from alignkit.domains.medical.xray.synthetic.overlays import draw_decoys, draw_devices
from alignkit.domains.medical.xray.synthetic.plans import StudyPlan


def render_frontal(plan: StudyPlan, size: int) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
    """The frontal image ``(size, size)`` uint8 and a bool mask ``(size, size)`` per present finding.

    Densities (bright = dense) are composed in normalised units, windowed (random contrast and gamma, a
    slight exposure gradient), rotated/zoomed/shifted (masks with them), blurred and given noise.
    """
    g = Grid(size)
    anatomy_rng = component_rng(plan, "anatomy")
    th = sample_thorax(plan, anatomy_rng)
    heart = th.heart(g)
    hemi = {s: th.hemithorax(g, s) for s in (-1, 1)}
    lungs = {s: hemi[s] * (1 - heart) for s in (-1, 1)}
    lung = lungs[-1] + lungs[1]
    layers = draw_findings(plan, th, g, hemi, lungs, heart)
    density, body = draw_anatomy(plan, th, g, lung, layers, anatomy_rng)
    density += layers.density + draw_decoys(plan, th, g, lung, body)
    if plan.devices:
        density += draw_devices(plan, th, g)
    rng = component_rng(plan, "exposure")
    lo, hi = rng.uniform(-0.05, 0.15), rng.uniform(1.3, 1.75)
    image = np.clip((density - lo) / (hi - lo), 0, 1) ** rng.uniform(0.75, 1.3)
    image += rng.uniform(-0.06, 0.06) * (g.v - 0.5) + rng.uniform(-0.04, 0.04) * (g.u - 0.5)
    angle, zoom, shift = rng.normal(0, 3.0), rng.uniform(0.92, 1.08), rng.normal(0, 0.025, 2)
    image = affine_transform(image, angle, zoom, shift, Image.Resampling.BILINEAR)
    masks = {k: affine_transform(m.astype(np.float64), angle, zoom, shift, Image.Resampling.NEAREST) > 0.5
             for k, m in layers.masks.items()}
    image = lowpass(image, rng.uniform(0.35, 0.7))
    noise = rng.uniform(0.012, 0.03) * (1.4 if plan.view == "AP" else 1.0)
    image = image + noise * rng.standard_normal(image.shape)
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8), masks


def render_lateral(plan: StudyPlan, size: int) -> np.ndarray:
    """A lateral image ``(size, size)`` uint8: anterior to the left, spine to the right, heart antero-inferior;
    cardiomegaly enlarges the heart and an effusion fills the posterior costophrenic sulcus."""
    rng = component_rng(plan, "exposure")
    g = Grid(size)
    u, v = g.u, g.v
    sub = plan.subject
    depth = 0.3 + 0.04 * sub.fat + rng.uniform(-0.02, 0.02)
    cx = 0.5 + rng.normal(0, 0.01)
    density = soft_step(depth - np.abs(u - cx), 2 * g.edge) * (1.1 + 0.35 * sub.fat)
    apex, dome = sub.apex + 0.02, sub.dome - (0.05 if plan.low_volumes else 0.0)
    lung = soft_step(1 - np.sqrt(((u - cx) / (depth * 0.82)) ** 2
                                 + ((v - (apex + dome) / 2) / ((dome - apex) / 2 + 0.03)) ** 2), 0.02)
    cardio = plan.findings["cardiomegaly"]
    heart = g.disc(cx - 0.1, dome - 0.08, 0.12 + (0.05 * cardio.severity if cardio.present else 0.0), 1.4)
    eff = plan.findings["pleural_effusion"]
    fluid = np.zeros_like(u)
    if eff.present:
        level = dome + 0.05 - (0.03 + 0.15 * eff.severity) * np.clip((u - cx) / depth + 0.6, 0, 1.6)
        fluid = soft_step(v - level, 0.01)
    density -= 0.7 * lung * (1 - heart) * (1 - fluid)
    spine = soft_step(0.035 - np.abs(u - (cx + depth * 0.72)), g.edge)
    density += 0.22 * spine * (1 + 0.3 * np.cos(2 * math.pi * v / 0.055))
    density += 0.15 * soft_step(0.012 - np.abs(u - (cx - depth * 0.95)), g.edge) * (v > apex)  # sternum
    density += 0.05 * smooth_noise(rng, size, 1.5) * lung
    image = np.clip((density - rng.uniform(-0.05, 0.15)) / rng.uniform(1.1, 1.5), 0, 1)
    image = affine_transform(image, rng.normal(0, 3.0), rng.uniform(0.92, 1.06), rng.normal(0, 0.02, 2),
                             Image.Resampling.BILINEAR)
    image = lowpass(image, 0.6) + rng.uniform(0.015, 0.035) * rng.standard_normal(image.shape)
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
