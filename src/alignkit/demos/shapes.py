"""A procedural paired image-caption dataset: coloured shapes with captions in varied phrasing.

Written to disk in the plain ``paired-csv`` format that :class:`alignkit.core.paired_csv.PairedImageTextCSV`
reads (and any user can produce for their own data)::

    root/
      pairs.csv        path, caption, caption_unseen, label, label_name, split, shape, color, size,
                       position, replica
      classes.txt      the shape names, one per line, in label order
      images/<split>/<index>.png   RGB PNG, ``image_size`` x ``image_size``

Every image shows one of 8 shapes in one of 8 colours, 3 sizes and 9 positions (8 x 8 x 3 x 9 = 1,728
attribute combinations), jittered in position, scale, rotation and shade, on a noisy background.
``caption`` uses the training templates and synonyms; ``caption_unseen`` describes the same image with
templates that never appear in any ``caption`` (to test generalisation to new phrasing). ``label`` is the
shape index. In the training split every ``(color, size, position, replica)`` block holds all 8 shapes,
so a batch built from such blocks holds images that differ in shape alone (hard negatives).
"""
from __future__ import annotations

import csv
import itertools
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

SHAPES: Dict[str, List[str]] = {
    "circle": ["circle", "disc", "round dot"],
    "square": ["square", "box", "square block"],
    "triangle": ["triangle", "three-sided shape", "triangular shape"],
    "star": ["star", "five-pointed star", "star shape"],
    "cross": ["cross", "plus sign", "plus shape"],
    "ring": ["ring", "hollow circle", "donut"],
    "diamond": ["diamond", "rhombus", "diamond shape"],
    "heart": ["heart", "heart shape", "love heart"],
}
COLORS: Dict[str, Tuple[Tuple[int, int, int], List[str]]] = {
    "red": ((220, 30, 30), ["red", "crimson", "scarlet"]),
    "orange": ((245, 140, 20), ["orange", "tangerine", "amber"]),
    "yellow": ((240, 230, 40), ["yellow", "golden", "lemon"]),
    "green": ((40, 180, 60), ["green", "emerald", "grass-green"]),
    "cyan": ((40, 220, 230), ["cyan", "turquoise", "aqua"]),
    "blue": ((40, 70, 230), ["blue", "navy", "cobalt"]),
    "purple": ((150, 50, 210), ["purple", "violet", "lilac"]),
    "pink": ((250, 120, 190), ["pink", "rose", "magenta"]),
}
SIZES: Dict[str, Tuple[float, List[str]]] = {
    "small": (0.24, ["small", "tiny", "little"]),
    "medium": (0.33, ["medium", "medium-sized", "mid-sized"]),
    "large": (0.44, ["large", "big", "huge"]),
}
POSITIONS: Dict[str, Tuple[Tuple[float, float], List[str]]] = {
    "top left": ((0.2, 0.2), ["top left", "upper left", "top-left corner"]),
    "top": ((0.5, 0.2), ["top", "top middle", "upper centre"]),
    "top right": ((0.8, 0.2), ["top right", "upper right", "top-right corner"]),
    "left": ((0.2, 0.5), ["left", "middle left", "left side"]),
    "center": ((0.5, 0.5), ["center", "middle", "centre"]),
    "right": ((0.8, 0.5), ["right", "middle right", "right side"]),
    "bottom left": ((0.2, 0.8), ["bottom left", "lower left", "bottom-left corner"]),
    "bottom": ((0.5, 0.8), ["bottom", "bottom middle", "lower centre"]),
    "bottom right": ((0.8, 0.8), ["bottom right", "lower right", "bottom-right corner"]),
}
TRAIN_TEMPLATES = [
    "a {size} {color} {shape} in the {pos}",
    "a {color} {shape}, {size}, in the {pos}",
    "there is a {size} {color} {shape} at the {pos}",
    "{pos}: a {size} {color} {shape}",
    "the image shows a {size} {color} {shape} in the {pos}",
    "a {size} {shape} coloured {color} at the {pos}",
    "{size} {color} {shape}, {pos}",
    "picture of a {color} {shape} of {size} size in the {pos}",
]
UNSEEN_TEMPLATES = [
    "one {shape} that is {color} and {size}, positioned {pos}",
    "you can see a {color} {size} {shape} over at the {pos} of the frame",
    "in the {pos} sits a {shape}; it is {size} and {color}",
    "{color}, {size}, {shape} -- located {pos}",
]


@dataclass(frozen=True)
class ShapeSpec:
    shape: str
    color: str
    size: str
    position: str


def _polygon(n: int, r: float, cx: float, cy: float, rot: float, inner: float = 0.0) -> List[Tuple[float, float]]:
    """Vertices of a regular polygon (or a star when ``inner`` > 0: alternating radius ``r`` and ``inner``)."""
    pts = []
    steps = n * 2 if inner else n
    for i in range(steps):
        rad = (inner if inner and i % 2 else r)
        a = rot + 2 * math.pi * i / steps - math.pi / 2
        pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
    return pts


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, rot: float,
                fill: Tuple[int, int, int], bg: Tuple[int, int, int]) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        ri = r * 0.55
        draw.ellipse([cx - ri, cy - ri, cx + ri, cy + ri], fill=bg)
    elif shape == "square":
        draw.polygon(_polygon(4, r * 1.2, cx, cy, rot + math.pi / 4), fill=fill)
    elif shape == "diamond":
        pts = _polygon(4, r * 1.15, cx, cy, rot)
        pts = [(cx + (x - cx) * 0.7, y) for x, y in pts]
        draw.polygon(pts, fill=fill)
    elif shape == "triangle":
        draw.polygon(_polygon(3, r * 1.2, cx, cy + r * 0.15, rot), fill=fill)
    elif shape == "star":
        draw.polygon(_polygon(5, r * 1.25, cx, cy, rot, inner=r * 0.5), fill=fill)
    elif shape == "cross":
        w = r * 0.38
        c, s = math.cos(rot), math.sin(rot)
        for (dx, dy) in ((1, 0), (0, 1)):
            hx, hy = dx * r * 1.1, dy * r * 1.1
            px, py = -dy * w, dx * w
            corners = [(hx + px, hy + py), (hx - px, hy - py), (-hx - px, -hy - py), (-hx + px, -hy + py)]
            draw.polygon([(cx + x * c - y * s, cy + x * s + y * c) for x, y in corners], fill=fill)
    elif shape == "heart":
        pts = []
        for i in range(40):
            t = 2 * math.pi * i / 40
            x = 16 * math.sin(t) ** 3
            y = -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t))
            x, y = x * r / 16, y * r / 16
            pts.append((cx + x * math.cos(rot) - y * math.sin(rot), cy + x * math.sin(rot) + y * math.cos(rot)))
        draw.polygon(pts, fill=fill)
    else:
        raise ValueError(f"unknown shape '{shape}'")


def render_shape(spec: ShapeSpec, image_size: int, rng: random.Random, supersample: int = 4) -> Image.Image:
    """One RGB image of ``spec`` with jitter (position, scale, rotation, shade) and background noise."""
    s = image_size * supersample
    bg = tuple(int(v) for v in np.clip(np.array([40, 40, 45]) + rng.uniform(-12, 12), 0, 255))
    img = Image.new("RGB", (s, s), bg)
    draw = ImageDraw.Draw(img)
    (px, py), _ = POSITIONS[spec.position]
    frac, _ = SIZES[spec.size]
    r = 0.5 * frac * s * rng.uniform(0.9, 1.1)
    cx = (px + rng.uniform(-0.04, 0.04)) * s
    cy = (py + rng.uniform(-0.04, 0.04)) * s
    rot = math.radians(rng.uniform(-15, 15))
    base, _ = COLORS[spec.color]
    fill = tuple(int(np.clip(c + rng.uniform(-20, 20), 0, 255)) for c in base)
    _draw_shape(draw, spec.shape, cx, cy, r, rot, fill, bg)
    img = img.resize((image_size, image_size), Image.Resampling.LANCZOS)
    arr = np.asarray(img).astype(np.float32)
    arr += np.random.default_rng(rng.randrange(2**31)).normal(0, 6, arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def caption(spec: ShapeSpec, template: str, rng: random.Random) -> str:
    """Fill ``template`` with a random synonym of each attribute of ``spec``."""
    return template.format(shape=rng.choice(SHAPES[spec.shape]), color=rng.choice(COLORS[spec.color][1]),
                           size=rng.choice(SIZES[spec.size][1]), pos=rng.choice(POSITIONS[spec.position][1]))


def all_specs() -> List[ShapeSpec]:
    return [ShapeSpec(*t) for t in itertools.product(SHAPES, COLORS, SIZES, POSITIONS)]


def write_shapes_dataset(root: str | Path, train_replicas: int = 8, num_val: int = 500, num_test: int = 1000,
                         image_size: int = 32, seed: int = 0, max_train_blocks: Optional[int] = None) -> Path:
    """Generate the dataset under ``root`` (see the module docstring) and return the CSV path.

    The training split holds ``train_replicas`` jittered copies of every one of the 1,728 attribute
    combinations (or of all 8 shapes in ``max_train_blocks`` random (colour, size, position) blocks, for
    tiny test sets); val and test hold ``num_val`` / ``num_test`` combinations drawn at random with new jitter.
    """
    root = Path(root)
    rng = random.Random(seed)
    shape_names = list(SHAPES)
    rows = []
    blocks = list(itertools.product(COLORS, SIZES, POSITIONS))
    if max_train_blocks is not None:
        blocks = rng.sample(blocks, max_train_blocks)
    plan: List[Tuple[str, ShapeSpec, int]] = []
    for rep in range(train_replicas):
        for color, size, pos in blocks:
            plan.extend(("train", ShapeSpec(sh, color, size, pos), rep) for sh in shape_names)
    specs = all_specs()
    plan.extend(("val", rng.choice(specs), 0) for _ in range(num_val))
    plan.extend(("test", rng.choice(specs), 0) for _ in range(num_test))
    counters: Dict[str, int] = {}
    for split, spec, rep in plan:
        i = counters.get(split, 0)
        counters[split] = i + 1
        rel = f"images/{split}/{i:06d}.png"
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        render_shape(spec, image_size, rng).save(path)
        rows.append({"path": rel, "caption": caption(spec, rng.choice(TRAIN_TEMPLATES), rng),
                     "caption_unseen": caption(spec, rng.choice(UNSEEN_TEMPLATES), rng),
                     "label": shape_names.index(spec.shape), "label_name": spec.shape, "split": split,
                     "shape": spec.shape, "color": spec.color, "size": spec.size, "position": spec.position,
                     "replica": rep})
    csv_path = root / "pairs.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (root / "classes.txt").write_text("\n".join(shape_names) + "\n")
    return csv_path


def attribute_key(row: Dict[str, str], attributes: Sequence[str] = ("shape", "color", "size", "position")) -> str:
    return "|".join(str(row[a]) for a in attributes)
