"""LeRobot feature statistics: per episode, aggregated over a dataset, and their JSON form.

Source: huggingface/lerobot v0.4.4 (codebase v3.0) ``src/lerobot/datasets/compute_stats.py``:

- every feature gets ``min``, ``max``, ``mean``, ``std`` (population), ``count`` and the quantiles
  ``q01, q10, q50, q90, q99`` (:data:`QUANTILES`; pi0/pi0.5 normalise with q01/q99);
- vectors ``(N,)``/``(N, D)``: per dimension over the ``N`` frames, stats of shape ``(1,)``/``(D,)``;
- images/videos ``(N, H, W, 3)`` uint8: per channel of ``frames / 255`` over the pixels of a subsample of
  ``sample_count(N)`` evenly spaced frames (:func:`sample_indices`), each strided down when a side reaches 300
  pixels (:func:`downsample_stride`); stats of shape ``(3, 1, 1)`` and ``count = [frames sampled]``;
- quantiles come from a 5000-bin histogram spanning ``[min - 1e-10, max + 1e-10]`` per dimension, linearly
  interpolated inside the bin where the cumulative count reaches ``q * M`` (``M`` values); with fewer than two
  values every quantile is the mean (lerobot's ``RunningQuantileStats`` and ``_compute_basic_stats``);
- :func:`aggregate_stats`: count-weighted mean and pooled variance, element-wise min/max, and each quantile
  as the count-weighted mean of the episodes' quantiles (lerobot's ``aggregate_feature_stats``).

Deliberate difference: lerobot v0.4.4 squares uint8 pixels without widening them (the image ``std`` wraps
around); as lerobot's later versions do, values are widened first, so the image ``std`` is the true one.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

Stats = Dict[str, Dict[str, np.ndarray]]
"""``{feature: {"min", "max", "mean", "std", "count", "q01", ...}: array}``."""

QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
QUANTILE_KEYS = tuple(f"q{int(q * 100):02d}" for q in QUANTILES)
HISTOGRAM_BINS = 5000


# ------------------------------------------------------------------------------------------- subsampling
def sample_count(frames: int, least: int = 100, most: int = 10_000, power: float = 0.75) -> int:
    """Frames sampled from an episode of ``frames`` frames: ``max(min(least, frames), min(int(frames ** power),
    most))`` (lerobot's ``estimate_num_samples``: all of up to 100 frames, 177 of 1000, 1000 of 10000)."""
    return max(min(least, frames), min(int(frames ** power), most))


def sample_indices(frames: int) -> np.ndarray:
    """The frame indices sampled for image statistics: ``rint(linspace(0, frames - 1, sample_count(frames)))``."""
    return np.round(np.linspace(0, frames - 1, sample_count(frames))).astype(int)


def downsample_stride(height: int, width: int, target: int = 150, threshold: int = 300) -> int:
    """The stride of both image axes for statistics: 1 below ``threshold`` pixels a side, otherwise
    ``int(longer side / target)`` (lerobot's ``auto_downsample_height_width``)."""
    if max(height, width) < threshold:
        return 1
    return int(width / target) if width > height else int(height / target)


# --------------------------------------------------------------------------------------------- quantiles
def _histogram_quantile(hist: np.ndarray, edges: np.ndarray, target: float) -> float:
    cumsum = np.cumsum(hist)
    idx = int(np.searchsorted(cumsum, target))
    if idx == 0:
        return float(edges[0])
    if idx >= len(cumsum):
        return float(edges[-1])
    before = cumsum[idx - 1]
    inside = cumsum[idx] - before
    if inside == 0:
        return float(edges[idx])
    return float(edges[idx] + (target - before) / inside * (edges[idx + 1] - edges[idx]))


def histogram_quantiles(values: np.ndarray, lo: float, hi: float, weights: Optional[np.ndarray] = None) -> np.ndarray:
    """The :data:`QUANTILES` of ``values`` (each counted ``weights`` times, default once) from a
    :data:`HISTOGRAM_BINS`-bin histogram over ``[lo - 1e-10, hi + 1e-10]``, as lerobot estimates them."""
    edges = np.linspace(lo - 1e-10, hi + 1e-10, HISTOGRAM_BINS + 1)
    bins = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, HISTOGRAM_BINS - 1)
    hist = np.bincount(bins, weights=weights, minlength=HISTOGRAM_BINS)
    total = float(hist.sum())
    return np.array([_histogram_quantile(hist, edges, q * total) for q in QUANTILES])


def _vector_stats(x: np.ndarray) -> Dict[str, np.ndarray]:
    """Stats over the rows of ``x`` ``(M, D)`` per column (min/max keep the dtype of ``x``)."""
    wide = x.astype(np.float64)
    mean = wide.mean(axis=0)
    stats = {"min": x.min(axis=0), "max": x.max(axis=0), "mean": mean, "std": wide.std(axis=0)}
    if len(x) < 2:
        quantiles = [mean.copy() for _ in QUANTILES]
    else:
        per_dim = np.stack([histogram_quantiles(wide[:, d], wide[:, d].min(), wide[:, d].max())
                            for d in range(x.shape[1])], axis=1)
        quantiles = list(per_dim)
    stats.update(zip(QUANTILE_KEYS, quantiles))
    return stats


def _uint8_image_stats(pixels: np.ndarray) -> Dict[str, np.ndarray]:
    """Per-channel stats of uint8 ``pixels`` ``(M, C)`` from each channel's 256-value counts (exact sums, the
    same histogram as over the pixels themselves)."""
    levels = np.arange(256, dtype=np.float64)
    counts = np.stack([np.bincount(pixels[:, c], minlength=256) for c in range(pixels.shape[1])]).astype(np.float64)
    n = counts.sum(axis=1)
    mean = counts @ levels / n
    var = np.maximum(counts @ (levels ** 2) / n - mean ** 2, 0.0)
    stats = {"min": pixels.min(axis=0).astype(np.float64), "max": pixels.max(axis=0).astype(np.float64),
             "mean": mean, "std": np.sqrt(var)}
    if len(pixels) < 2:
        quantiles = [mean.copy() for _ in QUANTILES]
    else:
        per_channel = np.stack([histogram_quantiles(levels, stats["min"][c], stats["max"][c], counts[c])
                                for c in range(pixels.shape[1])], axis=1)
        quantiles = list(per_channel)
    stats.update(zip(QUANTILE_KEYS, quantiles))
    return stats


# -------------------------------------------------------------------------------------------- statistics
def feature_stats(values: np.ndarray, image: bool = False) -> Dict[str, np.ndarray]:
    """lerobot's per-episode statistics of one feature over its ``N`` frames (see the module docstring).

    ``values`` is ``(N,)`` or ``(N, D)`` (vectors: stats of shape ``(1,)`` / ``(D,)``, ``count = [N]``), or
    ``(N, H, W, C)`` with ``image=True`` (uint8, or floats in [0, 255]: stats of ``values / 255`` per channel,
    shape ``(C, 1, 1)``, over the sampled frames, ``count = [frames sampled]``).
    """
    if not image:
        return _ordered(_vector_stats(values.reshape(values.shape[0], -1)), values.shape[0])
    frames = values[sample_indices(len(values))]
    stride = downsample_stride(frames.shape[1], frames.shape[2])
    frames = frames[:, ::stride, ::stride]
    pixels = frames.reshape(-1, frames.shape[-1])
    stats = _uint8_image_stats(pixels) if pixels.dtype == np.uint8 else _vector_stats(pixels)
    stats = {k: np.asarray(v, dtype=np.float64).reshape(-1, 1, 1) / 255.0 for k, v in stats.items()}
    return _ordered(stats, len(frames))


def _ordered(stats: Dict[str, np.ndarray], count: int) -> Dict[str, np.ndarray]:
    """``stats`` in lerobot's order: min, max, mean, std, count, then the quantiles."""
    return {**{k: stats[k] for k in ("min", "max", "mean", "std")}, "count": np.array([count]),
            **{k: stats[k] for k in QUANTILE_KEYS}}


def aggregate_stats(per_episode: Sequence[Stats]) -> Stats:
    """Combine per-episode statistics into dataset statistics (lerobot's ``aggregate_stats``).

    ``mean = sum_e n_e mean_e / n`` and ``var = sum_e n_e (std_e^2 + (mean_e - mean)^2) / n`` with
    ``n = sum_e n_e``; min/max are element-wise over episodes, ``count = [n]``; each quantile present in every
    episode is ``sum_e n_e q_e / n``.
    """
    out: Stats = {}
    for key in sorted({k for stats in per_episode for k in stats}):
        parts = [s[key] for s in per_episode if key in s]
        counts = np.array([float(np.asarray(p["count"]).ravel()[0]) for p in parts])
        total = counts.sum()
        means = np.stack([np.asarray(p["mean"], dtype=np.float64) for p in parts])
        weights = counts.reshape(-1, *([1] * (means.ndim - 1)))
        mean = (weights * means).sum(axis=0) / total
        var = (weights * (np.stack([np.asarray(p["std"], dtype=np.float64) for p in parts]) ** 2
                          + (means - mean) ** 2)).sum(axis=0) / total
        merged = {"min": np.min(np.stack([p["min"] for p in parts]), axis=0),
                  "max": np.max(np.stack([p["max"] for p in parts]), axis=0),
                  "mean": mean, "std": np.sqrt(var), "count": np.array([int(total)])}  # lerobot's order
        for q in QUANTILE_KEYS:
            if all(q in p for p in parts):
                merged[q] = (weights * np.stack([np.asarray(p[q], dtype=np.float64) for p in parts])).sum(0) / total
        out[key] = merged
    return out


def stats_to_json(stats: Stats) -> Dict[str, Dict[str, Any]]:
    """``stats`` with lists for arrays (``meta/stats.json``, ``meta/episodes_stats.jsonl``)."""
    return {k: {s: np.asarray(v).tolist() for s, v in d.items()} for k, d in stats.items()}


def stats_from_json(data: Mapping[str, Mapping[str, Any]]) -> Stats:
    """The inverse of :func:`stats_to_json`: every list back to a numpy array."""
    return {k: {s: np.asarray(v) for s, v in d.items()} for k, d in data.items()}


def stats_columns(stats: Stats, order: Sequence[str]) -> Dict[str, List[Any]]:
    """An episode's ``stats/<feature>/<stat>`` metadata columns (lists, as lerobot's ``flatten_dict`` of
    ``{"stats": ...}`` gives them) for the features in ``order`` that have stats."""
    return {f"stats/{name}/{k}": np.asarray(v).tolist() for name in order if name in stats
            for k, v in stats[name].items()}
