"""A procedural ModelNet40-layout folder of ``.off`` meshes: furniture, vessels and vehicles built from parts.

:func:`write_synthetic_modelnet` writes ``root/<class>/{train,test}/<class>_<nnnn>.off`` (z up, like
ModelNet40), readable by :class:`~alignkit.domains.pointcloud.layouts.ModelNet40MeshReader` and the
``modelnet40`` dataset, plus ``root/synthetic.json`` (classes, held-out relatives, counts, seed).

Each class is a small program of parts (boxes, cylinders, surfaces of revolution, tube handles)
whose proportions are drawn at random per instance, e.g. a table is a top on four legs with random
width, depth, height, thickness and leg inset. Every mesh is then centred (bounding-box centre) and
scaled to the unit sphere (max vertex norm 1), so classes differ in shape and never in size.

:data:`TRAIN_CLASSES` are 12 classes for pretraining. :data:`HELD_OUT_RELATIVES` are 3 classes meant
to stay unseen (zero-shot), each a structural relative of a trained class: a cup (tapered, thin-walled,
small handle) of the mug, a stool (round seat, no back) of the chair, a bench (long, narrow, low top)
of the table. Every instance has its own random stream ``(seed, class, split, index)``, so test
instances have proportions never seen in training and adding classes does not change the others.

Parts are concatenated, not unioned: surface sampling covers every part's full surface (also where
parts touch), which is harmless for point-cloud learning. Pure numpy.
"""
from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from alignkit.core.registry import ConfigError, did_you_mean

PathLike = Union[str, Path]
Mesh = Tuple[np.ndarray, np.ndarray]
"""(vertices (V, 3) float64, triangles (F, 3) int64)."""

_UNIT_BOX_VERTICES = np.array([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)], np.float64)
_UNIT_BOX_FACES = np.array([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
                            [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]], np.int64)


class PartBuilder:
    """Collects parts of one object; :meth:`mesh` concatenates them (z is up, lengths in object units)."""

    def __init__(self, sections: int = 16):
        self.sections = sections
        self._vertices: List[np.ndarray] = []
        self._faces: List[np.ndarray] = []

    def add(self, vertices: np.ndarray, faces: np.ndarray) -> None:
        offset = sum(len(v) for v in self._vertices)
        self._vertices.append(np.asarray(vertices, np.float64))
        self._faces.append(np.asarray(faces, np.int64) + offset)

    def box(self, size: Sequence[float], center: Sequence[float]) -> None:
        """An axis-aligned box of extents ``size`` centred at ``center``."""
        self.add(_UNIT_BOX_VERTICES * np.asarray(size) + np.asarray(center), _UNIT_BOX_FACES)

    def revolve(self, profile: Sequence[Tuple[float, float]], center: Sequence[float] = (0.0, 0.0, 0.0),
                axis: str = "z") -> None:
        """The surface swept by the polyline ``profile`` of ``(radius, height)`` points around ``axis``
        through ``center`` (``sections`` steps)."""
        prof = np.asarray(profile, np.float64)
        theta = np.linspace(0.0, 2 * math.pi, self.sections, endpoint=False)
        radius, height = prof[:, :1], np.repeat(prof[:, 1:], self.sections, axis=1)
        local = np.stack([radius * np.cos(theta), radius * np.sin(theta), height], axis=-1).reshape(-1, 3)
        faces = _ring_faces(len(prof), self.sections)
        self.add(_orient(local, axis) + np.asarray(center), faces)

    def cylinder(self, radius: float, height: float, center: Sequence[float], axis: str = "z") -> None:
        """A closed cylinder (with caps) along ``axis``."""
        h = height / 2
        self.revolve([(0.0, -h), (radius, -h), (radius, h), (0.0, h)], center, axis)

    def handle(self, center: Sequence[float], reach: float, height: float, thickness: float, sides: int = 6) -> None:
        """A C-shaped tube in the x-z plane bulging towards +x by ``reach`` over ``height`` (a mug handle)."""
        phi = np.linspace(-math.pi / 2, math.pi / 2, 9)
        path = np.stack([reach * np.cos(phi), np.zeros_like(phi), height / 2 * np.sin(phi)], 1)
        psi = np.linspace(0.0, 2 * math.pi, sides, endpoint=False)
        radial = np.stack([np.cos(phi), np.zeros_like(phi), np.sin(phi)], 1)
        y = np.array([0.0, 1.0, 0.0])
        circle = (np.cos(psi)[None, :, None] * radial[:, None] + np.sin(psi)[None, :, None] * y) * thickness / 2
        vertices = (path[:, None] + circle).reshape(-1, 3) + np.asarray(center)
        faces = _ring_faces(len(phi), sides)
        self.add(vertices, faces)

    def legs(self, xy: Sequence[Tuple[float, float]], height: float, width: float, round_legs: bool = False) -> None:
        """Vertical legs from z = 0 to ``height`` at each ``(x, y)``."""
        for x, y in xy:
            if round_legs:
                self.cylinder(width / 2, height, (x, y, height / 2))
            else:
                self.box((width, width, height), (x, y, height / 2))

    def mesh(self) -> Mesh:
        return np.concatenate(self._vertices), np.concatenate(self._faces)


def _ring_faces(rings: int, sides: int) -> np.ndarray:
    """Triangles joining consecutive closed rings of ``sides`` vertices (ring ``i`` holds vertices
    ``i * sides .. i * sides + sides - 1``): two per quad, (rings - 1) * sides * 2 in all."""
    k = np.arange(sides)
    a = np.arange(rings - 1)[:, None] * sides + k
    b = a - k + (k + 1) % sides
    return np.concatenate([np.stack([a, b, b + sides], -1), np.stack([a, b + sides, a + sides], -1)], 1).reshape(-1, 3)


def _orient(local: np.ndarray, axis: str) -> np.ndarray:
    """Map local z to ``axis`` (a cyclic permutation of the coordinates)."""
    return {"z": local, "x": local[:, [2, 0, 1]], "y": local[:, [1, 2, 0]]}[axis]


def _corners(half_x: float, half_y: float) -> List[Tuple[float, float]]:
    return [(sx * half_x, sy * half_y) for sx in (-1, 1) for sy in (-1, 1)]


# ------------------------------------------------------------------------------------------ classes
# Each builder draws its proportions from ``rng`` and adds parts; lengths are roughly metres.


def _table(rng: np.random.Generator, p: PartBuilder) -> None:
    w, d, h = rng.uniform(1.1, 1.9), rng.uniform(0.7, 1.1), rng.uniform(0.68, 0.85)
    top, leg, inset = rng.uniform(0.03, 0.07), rng.uniform(0.05, 0.09), rng.uniform(0.03, 0.12)
    p.box((w, d, top), (0, 0, h - top / 2))
    p.legs(_corners(w / 2 - inset - leg / 2, d / 2 - inset - leg / 2), h - top, leg, round_legs=rng.random() < 0.3)


def _bench(rng: np.random.Generator, p: PartBuilder) -> None:
    w, d, h = rng.uniform(1.4, 2.2), rng.uniform(0.3, 0.45), rng.uniform(0.4, 0.5)
    top, leg, inset = rng.uniform(0.04, 0.07), rng.uniform(0.05, 0.08), rng.uniform(0.05, 0.15)
    p.box((w, d, top), (0, 0, h - top / 2))
    p.legs(_corners(w / 2 - inset - leg / 2, d / 2 - leg / 2 - 0.02), h - top, leg, round_legs=rng.random() < 0.3)


def _chair(rng: np.random.Generator, p: PartBuilder) -> None:
    w, d, h = rng.uniform(0.42, 0.58), rng.uniform(0.42, 0.55), rng.uniform(0.42, 0.5)
    seat, leg, back = rng.uniform(0.04, 0.07), rng.uniform(0.035, 0.05), rng.uniform(0.4, 0.6)
    p.box((w, d, seat), (0, 0, h - seat / 2))
    p.legs(_corners(w / 2 - leg / 2, d / 2 - leg / 2), h - seat, leg)
    p.box((w, 0.04, back), (0, -d / 2 + 0.02, h + back / 2))


def _stool(rng: np.random.Generator, p: PartBuilder) -> None:
    r, h = rng.uniform(0.16, 0.24), rng.uniform(0.55, 0.8)
    seat, leg = rng.uniform(0.04, 0.07), rng.uniform(0.03, 0.045)
    p.cylinder(r, seat, (0, 0, h - seat / 2))
    spread = r * rng.uniform(0.65, 0.85)
    count = int(rng.integers(3, 5))
    angles = 2 * math.pi * np.arange(count) / count
    p.legs([(spread * math.cos(a), spread * math.sin(a)) for a in angles], h - seat, leg, round_legs=True)


def _vessel_profile(bottom: float, top: float, height: float, wall: float, base: float) -> List[Tuple[float, float]]:
    """Outer wall up, rim, inner wall down to the floor: an open, thick-walled vessel."""
    inner_bottom = max(bottom - wall, 1e-3)
    return [(0.0, 0.0), (bottom, 0.0), (top, height), (top - wall, height), (inner_bottom, base), (0.0, base)]


def _mug(rng: np.random.Generator, p: PartBuilder) -> None:
    r, h = rng.uniform(0.38, 0.48), rng.uniform(0.85, 1.15)
    p.revolve(_vessel_profile(r, r, h, rng.uniform(0.04, 0.07), 0.06))
    p.handle((r, 0, h * 0.5), reach=rng.uniform(0.25, 0.35), height=h * rng.uniform(0.5, 0.7),
             thickness=rng.uniform(0.07, 0.1))


def _cup(rng: np.random.Generator, p: PartBuilder) -> None:
    r, h = rng.uniform(0.3, 0.38), rng.uniform(0.6, 0.85)
    top = r * rng.uniform(1.25, 1.5)
    p.revolve(_vessel_profile(r, top, h, rng.uniform(0.02, 0.035), 0.04))
    p.handle(((r + top) / 2, 0, h * 0.55), reach=rng.uniform(0.15, 0.22), height=h * rng.uniform(0.35, 0.5),
             thickness=rng.uniform(0.04, 0.06))


def _bottle(rng: np.random.Generator, p: PartBuilder) -> None:
    r, body = rng.uniform(0.3, 0.42), rng.uniform(1.0, 1.5)
    neck, shoulder, neck_h = r * rng.uniform(0.25, 0.4), rng.uniform(0.2, 0.4), rng.uniform(0.3, 0.5)
    cap = rng.uniform(0.08, 0.15)
    top = body + shoulder + neck_h
    p.revolve([(0.0, 0.0), (r, 0.0), (r, body), (neck, body + shoulder), (neck, top), (neck * 1.15, top),
               (neck * 1.15, top + cap), (0.0, top + cap)])


def _bowl(rng: np.random.Generator, p: PartBuilder) -> None:
    r, depth, wall = rng.uniform(0.9, 1.2), rng.uniform(0.35, 0.55), rng.uniform(0.04, 0.07)
    foot = r * rng.uniform(0.35, 0.5)
    t = np.linspace(0.0, 1.0, 7)
    outer = [(foot + (r - foot) * math.sin(a * math.pi / 2), depth * (1 - math.cos(a * math.pi / 2))) for a in t]
    inner = [(max(x - wall, 1e-3), max(z, wall)) for x, z in outer[::-1]]
    p.revolve([(0.0, 0.0)] + outer + inner + [(0.0, wall)])


def _lamp(rng: np.random.Generator, p: PartBuilder) -> None:
    base_r, pole_h = rng.uniform(0.18, 0.28), rng.uniform(0.8, 1.3)
    shade_bottom, shade_top, shade_h = rng.uniform(0.25, 0.4), rng.uniform(0.1, 0.2), rng.uniform(0.25, 0.4)
    p.cylinder(base_r, 0.04, (0, 0, 0.02))
    p.cylinder(0.02, pole_h, (0, 0, 0.04 + pole_h / 2))
    z0 = 0.04 + pole_h - shade_h * 0.6
    p.revolve([(shade_bottom, 0.0), (shade_top, shade_h), (shade_top - 0.01, shade_h),
               (shade_bottom - 0.01, 0.0)], (0, 0, z0))


def _shelf(rng: np.random.Generator, p: PartBuilder) -> None:
    w, d, h = rng.uniform(0.6, 1.2), rng.uniform(0.25, 0.4), rng.uniform(1.2, 2.0)
    t, boards = rng.uniform(0.02, 0.04), int(rng.integers(3, 7))
    for sx in (-1, 1):
        p.box((t, d, h), (sx * (w / 2 - t / 2), 0, h / 2))
    for z in np.linspace(t / 2, h - t / 2, boards):
        p.box((w - 2 * t, d, t), (0, 0, z))
    p.box((w, t, h), (0, -d / 2 + t / 2, h / 2))


def _bed(rng: np.random.Generator, p: PartBuilder) -> None:
    w, length = rng.uniform(1.0, 1.9), rng.uniform(1.9, 2.2)
    frame, mattress = rng.uniform(0.25, 0.35), rng.uniform(0.15, 0.25)
    head, foot = rng.uniform(0.5, 0.9), rng.uniform(0.05, 0.3)
    p.legs(_corners(w / 2 - 0.05, length / 2 - 0.05), 0.1, 0.08)
    p.box((w, length, frame - 0.1), (0, 0, 0.1 + (frame - 0.1) / 2))
    p.box((w * 0.97, length * 0.97, mattress), (0, 0, frame + mattress / 2))
    p.box((w, 0.06, frame + head), (0, -length / 2 - 0.03, (frame + head) / 2))
    p.box((w, 0.06, frame + foot), (0, length / 2 + 0.03, (frame + foot) / 2))


def _car(rng: np.random.Generator, p: PartBuilder) -> None:
    length, w, body = rng.uniform(3.8, 4.6), rng.uniform(1.6, 1.9), rng.uniform(0.5, 0.7)
    wheel, clearance = rng.uniform(0.3, 0.38), rng.uniform(0.15, 0.25)
    cabin_l, cabin_h = length * rng.uniform(0.45, 0.6), rng.uniform(0.4, 0.55)
    p.box((length, w, body), (0, 0, clearance + body / 2))
    p.box((cabin_l, w * 0.9, cabin_h), (-length * rng.uniform(0.0, 0.1), 0, clearance + body + cabin_h / 2))
    for x, y in _corners(length / 2 - wheel * 1.4, w / 2 - 0.12):
        p.cylinder(wheel, 0.22, (x, y, wheel), axis="y")


def _airplane(rng: np.random.Generator, p: PartBuilder) -> None:
    length, r = rng.uniform(3.0, 4.0), rng.uniform(0.16, 0.24)
    span, chord = rng.uniform(2.8, 3.8), rng.uniform(0.4, 0.7)
    p.cylinder(r, length, (0, 0, 0), axis="x")
    p.revolve([(r, 0.0), (0.0, r * 2.5)], (length / 2, 0, 0), axis="x")
    p.box((chord, span, 0.05), (length * rng.uniform(-0.05, 0.1), 0, 0))
    tail_x = -length / 2 + chord * 0.35
    p.box((chord * 0.6, span * rng.uniform(0.3, 0.4), 0.04), (tail_x, 0, 0))
    fin = rng.uniform(0.5, 0.8)
    p.box((chord * 0.6, 0.04, fin), (tail_x, 0, fin / 2))


def _sofa(rng: np.random.Generator, p: PartBuilder) -> None:
    w, d, base = rng.uniform(1.8, 2.4), rng.uniform(0.8, 1.0), rng.uniform(0.35, 0.45)
    back, back_t = rng.uniform(0.35, 0.55), rng.uniform(0.15, 0.25)
    arm, arm_w = rng.uniform(0.15, 0.3), rng.uniform(0.12, 0.25)
    p.box((w, d, base), (0, 0, base / 2))
    p.box((w, back_t, back), (0, -d / 2 + back_t / 2, base + back / 2))
    for sx in (-1, 1):
        p.box((arm_w, d, arm), (sx * (w / 2 - arm_w / 2), 0, base + arm / 2))


def _monitor(rng: np.random.Generator, p: PartBuilder) -> None:
    w = rng.uniform(1.0, 1.4)
    h, t = w * rng.uniform(0.55, 0.7), rng.uniform(0.04, 0.07)
    neck = rng.uniform(0.15, 0.3)
    p.box((w * rng.uniform(0.3, 0.5), rng.uniform(0.25, 0.35), 0.03), (0, 0, 0.015))
    p.box((0.08, 0.05, neck + h / 2), (0, 0, 0.03 + (neck + h / 2) / 2))
    p.box((w, t, h), (0, t, 0.03 + neck + h / 2))


CLASS_BUILDERS: Dict[str, Callable[[np.random.Generator, PartBuilder], None]] = {
    "table": _table, "chair": _chair, "lamp": _lamp, "mug": _mug, "bottle": _bottle, "bowl": _bowl,
    "shelf": _shelf, "bed": _bed, "car": _car, "airplane": _airplane, "sofa": _sofa, "monitor": _monitor,
    "cup": _cup, "stool": _stool, "bench": _bench,
}
TRAIN_CLASSES: Tuple[str, ...] = ("table", "chair", "lamp", "mug", "bottle", "bowl", "shelf", "bed", "car",
                                  "airplane", "sofa", "monitor")
"""The 12 pretraining classes."""
HELD_OUT_RELATIVES: Dict[str, str] = {"cup": "mug", "stool": "chair", "bench": "table"}
"""Held-out (zero-shot) class -> its structural relative among :data:`TRAIN_CLASSES`."""
ALL_CLASSES: Tuple[str, ...] = TRAIN_CLASSES + tuple(HELD_OUT_RELATIVES)
SPLITS: Tuple[str, ...] = ("train", "test")


def normalize_mesh(vertices: np.ndarray) -> np.ndarray:
    """Centre on the bounding-box centre and scale to the unit sphere (max vertex norm 1)."""
    centred = vertices - (vertices.min(axis=0) + vertices.max(axis=0)) / 2
    return centred / np.linalg.norm(centred, axis=1).max()


def build_object(name: str, rng: np.random.Generator, sections: int = 16) -> Mesh:
    """One random instance of class ``name`` (a key of :data:`CLASS_BUILDERS`), normalised (:func:`normalize_mesh`)."""
    if name not in CLASS_BUILDERS:
        raise ConfigError(f"unknown synthetic class '{name}'{did_you_mean(name, CLASS_BUILDERS)}; "
                          f"known: {', '.join(CLASS_BUILDERS)}")
    parts = PartBuilder(sections)
    CLASS_BUILDERS[name](rng, parts)
    vertices, faces = parts.mesh()
    return normalize_mesh(vertices), faces


def off_text(vertices: np.ndarray, faces: np.ndarray) -> str:
    """An OFF file: ``OFF``, ``V F 0``, one ``x y z`` line per vertex, one ``3 a b c`` line per triangle."""
    buffer = io.StringIO()
    buffer.write(f"OFF\n{len(vertices)} {len(faces)} 0\n")
    np.savetxt(buffer, vertices, fmt="%.5f")
    np.savetxt(buffer, np.concatenate([np.full((len(faces), 1), 3), faces], axis=1), fmt="%d")
    return buffer.getvalue()


@dataclass
class SyntheticModelNet:
    """What :func:`write_synthetic_modelnet` wrote: ``root``, the classes, the held-out ones and
    ``counts[class][split]``."""

    root: Path
    classes: List[str]
    held_out: Dict[str, str]
    counts: Dict[str, Dict[str, int]] = field(default_factory=dict)

    @property
    def train_classes(self) -> List[str]:
        return [c for c in self.classes if c not in self.held_out]


def write_synthetic_modelnet(root: PathLike, per_class_train: int = 40, per_class_test: int = 10, seed: int = 0,
                             classes: Optional[Sequence[str]] = None, sections: int = 16) -> SyntheticModelNet:
    """Write ``root/<class>/{train,test}/<class>_<nnnn>.off`` for every class and ``root/synthetic.json``.

    ``classes`` defaults to :data:`ALL_CLASSES` (the 12 pretraining and the 3 held-out classes); instance
    ``i`` of a class in a split is built from the random stream ``(seed, class index in ALL_CLASSES,
    split index, i)``. Numbering continues across splits (train 0001.., test after them), as in ModelNet40.
    """
    names = list(classes) if classes is not None else list(ALL_CLASSES)
    for name in names:
        if name not in CLASS_BUILDERS:
            raise ConfigError(f"unknown synthetic class '{name}'{did_you_mean(name, CLASS_BUILDERS)}; "
                              f"known: {', '.join(CLASS_BUILDERS)}")
    if per_class_train < 0 or per_class_test < 0:
        raise ConfigError("per_class_train and per_class_test must be >= 0")
    out = Path(root)
    counts: Dict[str, Dict[str, int]] = {}
    for name in names:
        class_id = ALL_CLASSES.index(name)
        number = 0
        counts[name] = {}
        for split_id, (split, count) in enumerate(zip(SPLITS, (per_class_train, per_class_test))):
            folder = out / name / split
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                number += 1
                rng = np.random.default_rng((seed, class_id, split_id, i))
                vertices, faces = build_object(name, rng, sections)
                (folder / f"{name}_{number:04d}.off").write_text(off_text(vertices, faces))
            counts[name][split] = count
    held = {c: r for c, r in HELD_OUT_RELATIVES.items() if c in names}
    (out / "synthetic.json").write_text(json.dumps(
        {"classes": names, "train_classes": [c for c in names if c not in held], "held_out": held,
         "counts": counts, "seed": seed, "up_axis": "z"}, indent=1))
    return SyntheticModelNet(out, names, held, counts)
