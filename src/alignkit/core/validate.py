"""Check a dataset before a long run: read every item of every split through the configured readers.

:func:`validate_dataset` builds each split of a config's dataset exactly as training does
(``DATASETS.build(data.dataset, split=..., **data.params)``), then decodes every item in parallel DataLoader
workers, catching each item's error instead of stopping at the first. It reports

- per split: items listed, items decoded, items that failed (with the reader's error, which names the file),
  items skipped at indexing under ``skip_bad`` (the dataset's ``skipped`` list, with their reasons);
- grey-level statistics of every decoded image or video (fields shaped ``(C, H, W)``, ``(T, C, H, W)`` or
  ``(C, T, H, W)`` with ``C`` in 1, 3; see :func:`as_frames`): an item is *constant* when its values span less than ``1e-6`` (a black or flat image: almost
  always a decoding fault), *saturated* when at least ``saturated_fraction`` of its pixels sit at its maximum
  or *dark* when at least ``dark_fraction`` sit at its minimum (clipping, an inverted or unwindowed DICOM);
- a contact sheet (PNG) of decoded samples per split, each scaled to its own range, and a JSON report.

Errors (failed items, constant images) make the report not ``ok``; saturated and dark images are warnings.
The statistics are computed in the workers on the decoded tensors, after the dataset's own normalisation;
the flags compare an item with its own extremes, so they do not depend on that normalisation.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

THUMB = 96  # contact-sheet cell side, pixels


@dataclass
class ImageStats:
    """Grey-level statistics of one decoded image/video field of an item."""
    item: str
    key: str
    minimum: float
    maximum: float
    mean: float
    std: float
    at_min: float  # fraction of pixels equal to the item's minimum
    at_max: float  # fraction of pixels equal to the item's maximum
    flags: List[str] = field(default_factory=list)


@dataclass
class SplitReport:
    """What :func:`validate_dataset` found in one split."""
    split: str
    listed: int = 0
    decoded: int = 0
    failed: List[Tuple[str, str]] = field(default_factory=list)     # (item, error)
    skipped: List[Tuple[str, str]] = field(default_factory=list)    # (where, reason), from skip_bad indexing
    flagged: List[ImageStats] = field(default_factory=list)
    images: int = 0
    contact_sheet: Optional[str] = None

    @property
    def errors(self) -> int:
        return len(self.failed) + sum("constant" in s.flags for s in self.flagged)


@dataclass
class ValidationReport:
    dataset: str
    splits: List[SplitReport]

    @property
    def ok(self) -> bool:
        return all(s.errors == 0 for s in self.splits)

    def to_json(self) -> Dict[str, Any]:
        return {"dataset": self.dataset, "ok": self.ok,
                "splits": [{**asdict(s), "errors": s.errors} for s in self.splits]}


def as_frames(value: torch.Tensor) -> Optional[torch.Tensor]:
    """An image or video tensor as frames ``(N, C, H, W)`` (``C`` in 1, 3; ``H, W >= 8``), or None when it is not
    one: ``(C, H, W)``; videos ``(T, C, H, W)`` or ``(C, T, H, W)`` (MONAI's layout, the echo clips); a stack of
    videos ``(V, C, T, H, W)`` / ``(V, T, C, H, W)``. Point clouds ``(N, 3)``, token ids and labels are not."""
    if not value.is_floating_point() or value.ndim not in (3, 4, 5) or min(value.shape[-2:]) < 8:
        return None
    if value.ndim == 3:
        return value[None] if value.shape[0] in (1, 3) else None
    if value.ndim == 5:
        value = value.flatten(0, 1) if value.shape[2] in (1, 3) else value.transpose(1, 2).flatten(0, 1)
        return value if value.shape[1] in (1, 3) else None
    if value.shape[1] in (1, 3):
        return value
    return value.transpose(0, 1) if value.shape[0] in (1, 3) else None


def image_fields(sample: Mapping[str, Any]) -> Iterator[Tuple[str, torch.Tensor]]:
    """The image-like fields of a decoded sample as frames ``(N, C, H, W)`` (see :func:`as_frames`)."""
    for key, value in sample.items():
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(value)
        frames = as_frames(value) if isinstance(value, torch.Tensor) else None
        if frames is not None:
            yield key, frames


def image_stats(item: str, key: str, value: torch.Tensor, saturated_fraction: float,
                dark_fraction: float) -> ImageStats:
    """:class:`ImageStats` of ``value`` with its flags (see the module docstring)."""
    v = value.detach().float()
    if not torch.isfinite(v).all():
        bad = int((~torch.isfinite(v)).sum())
        return ImageStats(item, key, math.nan, math.nan, math.nan, math.nan, 0.0, 0.0,
                          [f"non-finite ({bad} of {v.numel()} values)", "constant"])
    lo, hi = float(v.min()), float(v.max())
    at_min, at_max = float((v == lo).float().mean()), float((v == hi).float().mean())
    stats = ImageStats(item, key, lo, hi, float(v.mean()), float(v.std()) if v.numel() > 1 else 0.0, at_min, at_max)
    if hi - lo < 1e-6:
        stats.flags.append("constant")
    else:
        if at_max >= saturated_fraction:
            stats.flags.append(f"saturated ({at_max:.0%} of pixels at the maximum)")
        if at_min >= dark_fraction:
            stats.flags.append(f"dark ({at_min:.0%} of pixels at the minimum)")
    return stats


def thumbnail(frames: torch.Tensor) -> np.ndarray:
    """A ``(THUMB, THUMB, 3)`` uint8 view of frames ``(N, C, H, W)`` (the middle one), scaled to its own range."""
    v = frames.detach().float()
    v = v[v.shape[0] // 2]
    v = torch.nn.functional.interpolate(v[None], size=(THUMB, THUMB), mode="area")[0]
    lo, hi = float(v.min()), float(v.max())
    v = (v - lo) / (hi - lo) if hi > lo else torch.zeros_like(v)
    v = v.expand(3, -1, -1) if v.shape[0] == 1 else v
    return (v.permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)


def item_name(dataset: Any, i: int, sample: Optional[Mapping[str, Any]] = None) -> str:
    """How item ``i`` is named in the report: the dataset's ``where(i)`` if it has one, else the sample's ``id``,
    else the dataset's ``key(i)``."""
    where = getattr(dataset, "where", None)
    if callable(where):
        return str(where(i))
    if sample is not None and sample.get("id") is not None:
        return f"item {i} ({sample['id']})"
    key = getattr(dataset, "key", None)
    return f"item {i}" + (f" ({key(i)})" if callable(key) else "")


class _Checked(Dataset):
    """Item ``i`` decoded in a worker and summarised: its name, error (or None), image stats and a thumbnail."""

    def __init__(self, dataset: Any, saturated_fraction: float, dark_fraction: float, thumbnails: int):
        self.dataset, self.saturated, self.dark, self.thumbnails = dataset, saturated_fraction, dark_fraction, thumbnails

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Dict[str, Any]:
        try:
            sample = self.dataset[i]
        except Exception as exc:  # any reader failure is reported for this item; the rest go on
            return {"index": i, "item": item_name(self.dataset, i), "error": f"{type(exc).__name__}: {exc}"}
        name = item_name(self.dataset, i, sample)
        fields = list(image_fields(sample))
        stats = [image_stats(name, key, value, self.saturated, self.dark) for key, value in fields]
        thumb = thumbnail(fields[0][1]) if fields and i < self.thumbnails else None
        return {"index": i, "item": name, "error": None, "stats": stats, "thumb": thumb}


def _identity(batch: Any) -> Any:
    return batch


def check_split(dataset: Any, split: str, workers: int = 0, saturated_fraction: float = 0.25,
                dark_fraction: float = 0.95, thumbnails: int = 32, progress: bool = True) -> Tuple[SplitReport,
                                                                                                  List[np.ndarray]]:
    """Decode every item of ``dataset`` in ``workers`` processes; the :class:`SplitReport` and the thumbnails of
    the first ``thumbnails`` items that have an image."""
    report = SplitReport(split, listed=len(dataset), skipped=[tuple(s) for s in getattr(dataset, "skipped", [])])
    thumbs: List[Tuple[int, np.ndarray]] = []
    loader = DataLoader(_Checked(dataset, saturated_fraction, dark_fraction, thumbnails), batch_size=None,
                        shuffle=False, num_workers=workers, collate_fn=_identity)
    from tqdm.auto import tqdm
    for out in tqdm(loader, total=len(dataset), desc=f"validate {split}", unit="item", disable=not progress):
        if out["error"] is not None:
            report.failed.append((out["item"], out["error"]))
            continue
        report.decoded += 1
        report.images += len(out["stats"])
        report.flagged.extend(s for s in out["stats"] if s.flags)
        if out["thumb"] is not None:
            thumbs.append((out["index"], out["thumb"]))
    return report, [t for _, t in sorted(thumbs, key=lambda p: p[0])]


def write_contact_sheet(thumbs: Sequence[np.ndarray], path: Path, title: str) -> Path:
    """A grid (8 columns) of ``thumbs`` as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cols = min(8, len(thumbs))
    rows = math.ceil(len(thumbs) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.3 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, thumb in zip(axes.flat, thumbs):
        ax.imshow(thumb)
    fig.suptitle(title, fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def validate_dataset(dataset: str, params: Mapping[str, Any], splits: Sequence[str], out_dir: Path,
                     workers: Optional[int] = None, progress: bool = True, **limits: float) -> ValidationReport:
    """Build and check each split of registered ``dataset`` (see the module docstring); writes
    ``out_dir/validation.json`` and ``out_dir/contact_<split>.png``. A split that cannot be built at all (a
    missing folder, a bad CSV) is reported as one failed entry naming the split."""
    from alignkit.core.registry import DATASETS
    workers = min(4, os.cpu_count() or 1) if workers is None else workers
    out_dir = Path(out_dir)
    reports = []
    for split in splits:
        try:
            data = DATASETS.build(dataset, split=split, where="data.params", **dict(params))
        except Exception as exc:  # the split's index is unreadable: report it, check the other splits
            reports.append(SplitReport(split, failed=[(f"split '{split}'", f"{type(exc).__name__}: {exc}")]))
            continue
        report, thumbs = check_split(data, split, workers=workers, progress=progress, **limits)
        if thumbs:
            sheet = write_contact_sheet(thumbs, out_dir / f"contact_{split}.png",
                                        f"{dataset} / {split}: first {len(thumbs)} decoded items")
            report.contact_sheet = str(sheet)
        reports.append(report)
    result = ValidationReport(dataset, reports)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "validation.json").write_text(json.dumps(result.to_json(), indent=2, default=str))
    return result


def format_report(report: ValidationReport, limit: int = 50) -> List[str]:
    """The report as lines for a terminal: per-split counts, then every failure and skip (the first ``limit``
    flagged images per split; all of them are in the JSON)."""
    lines = []
    for s in report.splits:
        flags = sum(bool(f.flags) for f in s.flagged)
        lines.append(f"{s.split}: {s.listed} listed, {s.decoded} decoded, {len(s.failed)} failed, "
                     f"{len(s.skipped)} skipped at indexing, {s.images} images checked, {flags} flagged")
        lines += [f"  FAILED  {item}: {error}" for item, error in s.failed]
        lines += [f"  SKIPPED {where}: {reason}" for where, reason in s.skipped]
        lines += [f"  {'ERROR' if 'constant' in f.flags else 'WARN'}    {f.item} [{f.key}]: {', '.join(f.flags)} "
                  f"(min {f.minimum:.4g}, max {f.maximum:.4g}, std {f.std:.4g})" for f in s.flagged[:limit]]
        if len(s.flagged) > limit:
            lines.append(f"  ... {len(s.flagged) - limit} more flagged images in the JSON report")
        if s.contact_sheet:
            lines.append(f"  contact sheet: {s.contact_sheet}")
    lines.append("OK: no errors" if report.ok else
                 f"ERRORS: {sum(s.errors for s in report.splits)} (failed items and constant images)")
    return lines


__all__ = ["ImageStats", "SplitReport", "ValidationReport", "as_frames", "image_fields", "image_stats", "check_split",
           "validate_dataset", "format_report", "write_contact_sheet"]
