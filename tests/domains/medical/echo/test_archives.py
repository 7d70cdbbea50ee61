"""The echo archive readers (echo.archives): EchoNet-Dynamic listings with LV tracings and study tables, on the
synthetic EchoNet layout and on listings the tests write."""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import List, Sequence

import numpy as np
import pytest

av = pytest.importorskip("av")
from alignkit.core.registry import ConfigError  # noqa: E402
from alignkit.core.video import write_video  # noqa: E402
from alignkit.domains.medical.echo.archives import (EchoNetReader, EchoStudyTableReader, LVTracing,  # noqa: E402
                                                    ed_es_frames)
from alignkit.domains.medical.echo.synthetic.archive import write_synthetic_echo  # noqa: E402
from alignkit.domains.medical.reports import EmptyReportError  # noqa: E402
from alignkit.domains.medical.tables import BadRowError  # noqa: E402

# ------------------------------------------------------------------------------------------- helpers


def ramp_video(frames: int = 20, size: int = 16) -> np.ndarray:
    """Grey uint8 (T, S, S): frame k holds the value 10 k everywhere (a lossless codec gives it back exactly)."""
    return np.stack([np.full((size, size), 10 * k, dtype=np.uint8) for k in range(frames)])


def write_table(path: Path, header: Sequence[str], rows: List[list]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic EchoNet layout + study table: 6 studies x 3 videos, 48 px, 16 frames."""
    return write_synthetic_echo(tmp_path_factory.mktemp("echo_io"), 6, image_size=48, frames=16, videos_per_study=3,
                                split_fractions=(0.5, 0.25, 0.25))


# ------------------------------------------------------------------------------------------- tracings


def test_disk_volume_and_ed_es_frames():
    long_axis = [0.0, 0.0, 0.0, 10.0]
    small = LVTracing(frame=7, segments=np.array([long_axis, [-2, 2.5, 2, 2.5], [-2, 7.5, 2, 7.5]]))
    assert math.isclose(small.volume, 2 * math.pi * 2 ** 2 * 10 / 2)  # sum pi (d/2)^2 * L / K
    large = LVTracing(frame=3, segments=np.array([long_axis, [-3, 5, 3, 5]]))
    assert ed_es_frames([small, large]) == (3, 7)


# ------------------------------------------------------------------------------------------- readers


def test_echonet_reader_on_the_synthetic_layout(synthetic: Path):
    reader = EchoNetReader(synthetic)
    with open(synthetic / "FileList.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(reader) == len(rows) == 18 and not reader.skipped
    first = reader[0]
    assert first.path == synthetic / "Videos" / f"{rows[0]['FileName']}.avi" and first.video_id == rows[0]["FileName"]
    assert first.ef == float(rows[0]["EF"]) and first.frames == 16 and first.height == first.width == 48
    assert first.where == f"{synthetic / 'FileList.csv'} row 1"
    traced = [r for r in reader if r.tracings]
    assert traced and all(len(r.tracings) == 2 and r.tracings[0].segments.shape == (21, 4) for r in traced)
    for record in traced:
        ed, es = ed_es_frames(record.tracings)
        volumes = {t.frame: t.volume for t in record.tracings}
        assert abs(100 * (1 - volumes[es] / volumes[ed]) - record.ef) < 0.2  # EF from the method of disks
    train = EchoNetReader(synthetic, split="train")
    assert 0 < len(train) < len(reader) and all(r.split == "TRAIN" for r in train)


def test_echonet_bad_rows_raise_or_are_listed(tmp_path: Path, synthetic: Path):
    root = tmp_path / "echonet"
    (root / "Videos").mkdir(parents=True)
    header = ["FileName", "EF", "ESV", "EDV", "FrameHeight", "FrameWidth", "FPS", "NumberOfFrames", "Split"]
    write_video(root / "Videos" / "good.avi", ramp_video(), fps=25, codec="ffv1", gop=1)
    write_video(root / "Videos" / "other.avi", ramp_video(), fps=25, codec="ffv1", gop=1)
    (root / "Videos" / "cut.avi").write_bytes((root / "Videos" / "good.avi").read_bytes()[:500])
    rows = [["good", "55", "40", "90", 16, 16, 25, 20, "TRAIN"], ["missing", "50", "", "", 16, 16, 25, 20, "TRAIN"],
            ["other.avi", "abc", "", "", 16, 16, 25, 20, "TRAIN"], ["cut", "60", "", "", 16, 16, 25, 20, "VAL"]]
    write_table(root / "FileList.csv", header, rows)
    write_table(root / "VolumeTracings.csv", ["FileName", "X1", "Y1", "X2", "Y2", "Frame"],
                [["good.avi", 1, 1, 1, 9, 3], ["good.avi", 0, 5, 2, 5, 3], ["cut.avi", "x", 1, 1, 1, 2]])
    with pytest.raises(BadRowError, match=r"FileList\.csv row 2: video file .*missing\.avi not found"):
        EchoNetReader(root)
    reader = EchoNetReader(root, skip_bad=True)
    assert [r.video_id for r in reader] == ["good"] and reader[0].esv == 40.0
    assert reader[0].tracings[0].frame == 3 and reader[0].tracings[0].segments.shape == (2, 4)
    reasons = dict(reader.skipped)
    assert "not found" in reasons[f"{root / 'FileList.csv'} row 2"]
    assert "'EF' holds 'abc'" in reasons[f"{root / 'FileList.csv'} row 3"]
    assert "VolumeTracings.csv row 3" in reasons[f"{root / 'FileList.csv'} row 4"]
    write_table(root / "VolumeTracings.csv", ["FileName", "X1", "Y1", "X2", "Y2", "Frame"], [])
    verified = EchoNetReader(root, split="val", skip_bad=True, verify_videos=True)
    assert len(verified) == 0 and "cut.avi" in verified.skipped[0][1]
    screened = EchoNetReader(root, split="val", skip_bad=True)  # skip_bad decodes every video by default
    assert len(screened) == 0 and "cut.avi" in screened.skipped[0][1]
    assert len(EchoNetReader(root, split="val", skip_bad=True, verify_videos=False)) == 1  # opted out: fails on load
    write_table(root / "FileList.csv", ["FileName", "EF"], [["good", 50]])
    with pytest.raises(ConfigError, match="no column 'ESV'"):
        EchoNetReader(root)


def test_study_table_groups_videos_and_checks_reports(synthetic: Path):
    reader = EchoStudyTableReader(synthetic / "studies.csv")
    assert len(reader) == 6 and all(len(s.videos) == 3 for s in reader)
    study = reader[0]
    assert study.videos[0].view == "A4C" and study.report_path == synthetic / "reports" / f"{study.study_id}.txt"
    assert "PERICARDIUM" in study.report and set(study.labels) >= {"EF", "dilated_lv", "pericardial_effusion"}
    assert study.where == f"{synthetic / 'studies.csv'} rows 1, 2, 3"
    only_val = EchoStudyTableReader(synthetic / "studies.csv", split="VAL")
    assert 0 < len(only_val) < 6 and all(s.split == "val" for s in only_val)


def test_study_table_bad_studies(tmp_path: Path):
    write_video(tmp_path / "a.avi", ramp_video(), fps=25, codec="ffv1", gop=1)
    (tmp_path / "good.txt").write_text("LEFT VENTRICLE: Normal size.\nPERICARDIUM: No pericardial effusion.\n")
    (tmp_path / "indication_only.txt").write_text("INDICATION: Dyspnea.\n")
    header = ["study_id", "video", "view", "report", "split", "EF", "dilated_lv"]
    rows = [["s1", "a.avi", "A4C", "good.txt", "train", 55, 0], ["s1", "gone.avi", "A2C", "good.txt", "train", 55, 0],
            ["s2", "a.avi", "A4C", "", "train", 40, 1], ["s3", "a.avi", "A4C", "indication_only.txt", "train", 40, 1],
            ["s4", "a.avi", "A4C", "good.txt", "train", 40, 1], ["s4", "a.avi", "A2C", "good.txt", "train", 45, 1]]
    table = write_table(tmp_path / "studies.csv", header, rows)
    with pytest.raises(BadRowError, match=r"studies\.csv rows 1, 2: row 2: video file .*gone\.avi not found; fix"):
        EchoStudyTableReader(table)
    reader = EchoStudyTableReader(table, skip_bad=True)
    assert [s.study_id for s in reader] == ["s1"] and len(reader[0].videos) == 1
    reasons = dict(reader.skipped)
    assert "gone.avi not found" in reasons[f"{table} row 2"]
    assert "no report" in reasons[f"{table} row 3"]
    assert "no text under" in reasons[f"{table} row 4"]
    assert "disagree on column 'EF'" in reasons[f"{table} rows 5, 6"]
    del rows[1:3]
    write_table(table, header, rows)
    with pytest.raises(EmptyReportError, match=r"studies\.csv row 2: .*indication_only\.txt: no text under"):
        EchoStudyTableReader(table)
    with pytest.raises(ConfigError, match="did you mean 'view'"):
        EchoStudyTableReader(table, view_column="views")
