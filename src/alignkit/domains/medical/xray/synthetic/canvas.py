"""Drawing primitives of the synthetic X-rays: soft edges, FFT blur, smooth noise, anti-aliased lines, the pixel
grid, per-component random streams and the image affine. Coordinates are normalised image units (0..1)."""
from __future__ import annotations

import math
from typing import Tuple

import numpy as np
from PIL import Image, ImageDraw

from alignkit.domains.medical.xray.synthetic.plans import FINDINGS, StudyPlan

LINE_SUPERSAMPLE = 4  # thin structures are drawn on a 4x canvas and box-averaged down (anti-aliasing)


def soft_step(d: np.ndarray, width: float) -> np.ndarray:
    """Soft indicator of ``d > 0``: ``0.5 (1 + tanh(d / width))``."""
    return 0.5 * (1.0 + np.tanh(d / width))


def lowpass(x: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian blur of a square array with standard deviation ``sigma_px`` pixels (FFT, periodic borders)."""
    n = x.shape[0]
    ky = np.fft.fftfreq(n)[:, None]
    kx = np.fft.rfftfreq(n)[None, :]
    gain = np.exp(-2.0 * (math.pi * sigma_px) ** 2 * (kx ** 2 + ky ** 2))
    return np.fft.irfft2(np.fft.rfft2(x) * gain, s=x.shape)


def smooth_noise(rng: np.random.Generator, size: int, sigma_px: float) -> np.ndarray:
    """Zero-mean, unit-std Gaussian noise low-passed at ``sigma_px`` pixels, ``(size, size)``."""
    x = lowpass(rng.standard_normal((size, size)), sigma_px)
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


def random_curve(rng: np.random.Generator, start: Tuple[float, float], angle: float, length: float, steps: int,
                 wiggle: float) -> np.ndarray:
    """A random-walk polyline ``(steps + 1, 2)`` from ``start`` heading ``angle`` (radians, image axes)."""
    angles = angle + np.cumsum(rng.normal(0, wiggle, steps))
    d = np.stack([np.cos(angles), np.sin(angles)], 1) * (length / steps)
    return np.vstack([start, start + np.cumsum(d, 0)])


COMPONENTS: Tuple[str, ...] = ("anatomy", "exposure", *FINDINGS, "nipples", "ecg", "skin_fold", "haze", "scapula",
                               "atelectasis", "devices")
"""Each component of an image draws from its own random stream, so toggling a finding changes its pixels only."""


def component_rng(plan: StudyPlan, component: str) -> np.random.Generator:
    """The random stream of ``component`` (one of :data:`COMPONENTS`) in ``plan``'s images."""
    return np.random.default_rng([plan.seed, COMPONENTS.index(component)])


class Grid:
    """Pixel centres of a ``size`` x ``size`` image in normalised units: ``u`` across (0 left), ``v`` down."""

    def __init__(self, size: int):
        self.size = size
        self.px = 1.0 / size
        self.edge = 0.7 * self.px  # soft-edge width of organ outlines
        self.v, self.u = (np.mgrid[0:size, 0:size] + 0.5) * self.px

    def disc(self, x: float, y: float, r: float, edge_px: float = 0.5) -> np.ndarray:
        return soft_step(r - np.sqrt((self.u - x) ** 2 + (self.v - y) ** 2), edge_px * self.px)

    def gaussian(self, x: float, y: float, sx: float, sy: float) -> np.ndarray:
        return np.exp(-(((self.u - x) / sx) ** 2 + ((self.v - y) / sy) ** 2))


def affine_transform(image: np.ndarray, angle_deg: float, zoom: float, shift: np.ndarray,
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
