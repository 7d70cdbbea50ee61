"""LeRobot feature statistics: per episode, aggregated over a dataset, and their JSON form.

Source: huggingface/lerobot ``src/lerobot/datasets/compute_stats.py`` (per-feature min/max/mean/std/count,
images per channel, ``aggregate_stats``).
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Sequence, Tuple

import numpy as np

Stats = Dict[str, Dict[str, np.ndarray]]
"""``{feature: {"min", "max", "mean", "std", "count"}: array}``."""


def feature_stats(values: np.ndarray, image: bool = False) -> Dict[str, np.ndarray]:
    """lerobot's per-episode statistics of one feature over its ``N`` frames.

    ``values`` is ``(N,)`` or ``(N, D)`` (vectors: stats of shape ``(1,)`` / ``(D,)``), or uint8
    ``(N, H, W, 3)`` with ``image=True`` (stats per channel of ``values / 255``, shape ``(3, 1, 1)``).
    Returns ``{"min", "max", "mean", "std", "count"}``; ``std`` is the population standard deviation and
    ``count = [N]``.
    """
    if image and values.dtype == np.uint8:
        stats = _uint8_image_stats(values)
    else:
        if image:
            x = values.reshape(values.shape[0], -1, values.shape[-1]).astype(np.float64) / 255.0
            axes: Tuple[int, ...] = (0, 1)
        else:
            x = values.astype(np.float64).reshape(values.shape[0], -1)
            axes = (0,)
        stats = {"min": x.min(axis=axes), "max": x.max(axis=axes), "mean": x.mean(axis=axes), "std": x.std(axis=axes)}
    if image:
        stats = {k: v.reshape(-1, 1, 1) for k, v in stats.items()}
    stats["count"] = np.array([values.shape[0]])
    return stats


def _uint8_image_stats(values: np.ndarray) -> Dict[str, np.ndarray]:
    """Per-channel min/max/mean/std of ``values / 255`` from exact integer sums (no float64 copy of the frames):
    ``var = (sum x^2 - sum x * mean) / n``."""
    flat = values.reshape(-1, values.shape[-1])
    n = flat.shape[0]
    wide = flat.astype(np.uint16)
    total, squares = flat.sum(axis=0, dtype=np.uint64), (wide * wide).sum(axis=0, dtype=np.uint64)
    mean = total / n
    var = np.maximum(squares - total.astype(np.float64) * mean, 0.0) / n
    return {"min": flat.min(axis=0) / 255.0, "max": flat.max(axis=0) / 255.0, "mean": mean / 255.0,
            "std": np.sqrt(var) / 255.0}


def aggregate_stats(per_episode: Sequence[Stats]) -> Stats:
    """Combine per-episode statistics into dataset statistics (lerobot's ``aggregate_stats``).

    ``mean = sum_e n_e mean_e / n`` and ``var = sum_e n_e (std_e^2 + (mean_e - mean)^2) / n`` with
    ``n = sum_e n_e``; min/max are element-wise over episodes, ``count = [n]``.
    """
    out: Stats = {}
    for key in sorted({k for stats in per_episode for k in stats}):
        parts = [s[key] for s in per_episode if key in s]
        counts = np.array([float(p["count"][0]) for p in parts])
        total = counts.sum()
        means = np.stack([np.asarray(p["mean"], dtype=np.float64) for p in parts])
        weights = counts.reshape(-1, *([1] * (means.ndim - 1)))
        mean = (weights * means).sum(axis=0) / total
        var = (weights * (np.stack([np.asarray(p["std"], dtype=np.float64) for p in parts]) ** 2
                          + (means - mean) ** 2)).sum(axis=0) / total
        out[key] = {"min": np.min(np.stack([p["min"] for p in parts]), axis=0),
                    "max": np.max(np.stack([p["max"] for p in parts]), axis=0),
                    "mean": mean, "std": np.sqrt(var), "count": np.array([int(total)])}
    return out


def stats_to_json(stats: Stats) -> Dict[str, Dict[str, Any]]:
    """``stats`` with lists for arrays (``meta/stats.json``, ``meta/episodes_stats.jsonl``)."""
    return {k: {s: np.asarray(v).tolist() for s, v in d.items()} for k, d in stats.items()}


def stats_from_json(data: Mapping[str, Mapping[str, Any]]) -> Stats:
    """The inverse of :func:`stats_to_json`: every list back to a numpy array."""
    return {k: {s: np.asarray(v) for s, v in d.items()} for k, d in data.items()}
