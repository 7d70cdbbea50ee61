"""The synthetic echo archive writer, :func:`write_synthetic_echo`, which writes::

    root/
      Videos/<FileName>.avi     FFV1 (lossless, intra-only: keeps the speckle, decodes fast, seeks per frame);
                                grey, or RGB for the colour Doppler views; image_size x image_size, `frames` frames
      FileList.csv              FileName (no extension, as EchoNet), EF, ESV, EDV, FrameHeight, FrameWidth, FPS,
                                NumberOfFrames, Split (TRAIN / VAL / TEST)
      VolumeTracings.csv        FileName (with .avi), X1, Y1, X2, Y2, Frame: the LV of every apical view at its
                                ED and ES frames, 21 rows per frame (long axis, then 20 disk diameters)
      reports/<study_id>.txt    a sectioned echo report
      studies.csv               study_id, video (Videos/<FileName>.avi), view, report (reports/<id>.txt),
                                split (train / val / test), EF, ESV, EDV and one 0/1 column per finding

Studies are planned by :func:`~alignkit.domains.medical.echo.synthetic.plans.plan_study`, drawn by
:func:`~alignkit.domains.medical.echo.synthetic.render.render_video` and reported by
:func:`~alignkit.domains.medical.echo.synthetic.reports.write_report`, each from its own seeded generator.
Each clip (``frames`` at ``fps``, default ``fps = 5 frames / 6``, i.e. 1.2 s) covers at least one full beat.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from alignkit.core.registry import ConfigError, did_you_mean
from alignkit.core.video import write_video
from alignkit.domains.medical.echo.archives import ECHONET_COLUMNS, ECHOPRIME_VIEWS, TRACING_COLUMNS
from alignkit.domains.medical.echo.synthetic.plans import DEFAULT_FINDINGS, FINDINGS, SPLITS, plan_study
from alignkit.domains.medical.echo.synthetic.render import VIEW_GEOMETRY, render_video
from alignkit.domains.medical.echo.synthetic.reports import write_report


def _file_name(seed: int, index: int, video: int) -> str:
    rng = np.random.default_rng([seed, index, video, 2])
    return "0X" + "".join(f"{int(b):02X}" for b in rng.integers(0, 256, size=8))


def write_synthetic_echo(root: str | Path, num_studies: int, image_size: int = 64, frames: int = 32, seed: int = 0,
                         views: Sequence[str] = ECHOPRIME_VIEWS, findings: Sequence[str] = DEFAULT_FINDINGS,
                         videos_per_study: int = 4, required_views: Sequence[str] = ("A4C",),
                         finding_rate: float = 0.3, fps: Optional[int] = None,
                         split_fractions: Sequence[float] = (0.7, 0.15, 0.15)) -> Path:
    """Write a synthetic echo archive of ``num_studies`` studies under ``root`` (see the module docstring) and
    return ``root``. Deterministic given ``seed``; a larger archive extends a smaller one.

    ``views``: at least 8 of :data:`VIEW_GEOMETRY`; ``findings``: a subset of :data:`FINDINGS`;
    ``fps``: default ``round(5 * frames / 6)`` (clips of 1.2 s; beats last at most 0.97 s).
    """
    views, findings, required_views = list(views), list(findings), list(required_views)
    unknown = [v for v in views + required_views if v not in VIEW_GEOMETRY]
    if unknown:
        raise ConfigError(f"unknown view '{unknown[0]}'{did_you_mean(unknown[0], VIEW_GEOMETRY)}; the generator "
                          f"draws {', '.join(VIEW_GEOMETRY)}")
    if len(set(views)) < 8 or not set(required_views) <= set(views):
        raise ConfigError(f"write_synthetic_echo needs at least 8 distinct views, including required_views "
                          f"{required_views}; got {views}")
    bad = [f for f in findings if f not in FINDINGS]
    if bad:
        raise ConfigError(f"unknown finding '{bad[0]}'{did_you_mean(bad[0], FINDINGS)}; choose from "
                          f"{', '.join(FINDINGS)}")
    fps = fps or max(1, round(5 * frames / 6))
    if num_studies < 1 or image_size < 32 or frames < 8 or frames / fps < 60 / 62:
        raise ValueError(f"write_synthetic_echo needs num_studies >= 1, image_size >= 32, frames >= 8 and clips of "
                         f"at least one beat (frames / fps >= 0.97 s); got {num_studies}, {image_size}, {frames}, "
                         f"fps {fps}")
    if len(split_fractions) != len(SPLITS) or abs(sum(split_fractions) - 1) > 1e-6:
        raise ValueError(f"split_fractions needs {len(SPLITS)} fractions ({', '.join(SPLITS)}) summing to 1, got "
                         f"{list(split_fractions)}")
    root = Path(root)
    (root / "Videos").mkdir(parents=True, exist_ok=True)
    (root / "reports").mkdir(parents=True, exist_ok=True)
    file_rows, tracing_rows, study_rows = [], [], []
    for index in range(num_studies):
        plan = plan_study(index, seed, views, findings, videos_per_study, required_views, finding_rate,
                          split_fractions)
        report_rel = f"reports/{plan.study_id}.txt"
        (root / report_rel).write_text(write_report(plan, np.random.default_rng([seed, index, 3])))
        labels = [f"{100 * plan.ef:.2f}", f"{plan.esv:.2f}", f"{plan.edv:.2f}",
                  *[int(plan.findings[f]) for f in findings]]
        for k, view in enumerate(plan.views):
            name = _file_name(seed, index, k)
            plan.file_names.append(name)
            video = render_video(plan, view, frames, image_size, fps, np.random.default_rng([seed, index, k, 4]))
            write_video(root / "Videos" / f"{name}.avi", video.frames, fps, codec="ffv1", gop=1)
            file_rows.append([name, labels[0], labels[1], labels[2], image_size, image_size, fps, frames,
                              plan.split.upper()])
            for frame, segments in sorted(video.tracings.items()):
                tracing_rows += [[f"{name}.avi", *(f"{v:.4f}" for v in row), frame] for row in segments]
            study_rows.append([plan.study_id, f"Videos/{name}.avi", view, report_rel, plan.split, *labels])
    _write_csv(root / "FileList.csv", ECHONET_COLUMNS, file_rows)
    _write_csv(root / "VolumeTracings.csv", TRACING_COLUMNS, tracing_rows)
    _write_csv(root / "studies.csv", ("study_id", "video", "view", "report", "split", "EF", "ESV", "EDV", *findings),
               study_rows)
    return root


def _write_csv(path: Path, header: Sequence[str], rows: List[list]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
