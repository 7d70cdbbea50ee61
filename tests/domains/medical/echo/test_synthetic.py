"""The synthetic echo archive: EchoNet layout and study table, views, beating chambers with a consistent EF,
findings visible in their views only, and reports that state them (with negations) in their sections."""
from __future__ import annotations

import csv
import re
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest

pytest.importorskip("av")
from alignkit.core.registry import ConfigError  # noqa: E402
from alignkit.domains.medical.echo.archives import ECHOPRIME_VIEWS, EchoNetReader, ed_es_frames  # noqa: E402
from alignkit.domains.medical.echo.loading import load_echo, probe_echo  # noqa: E402
from alignkit.domains.medical.echo.synthetic.archive import write_synthetic_echo  # noqa: E402
from alignkit.domains.medical.echo.synthetic.plans import FINDINGS, plan_study  # noqa: E402
from alignkit.domains.medical.echo.synthetic.render import VIEW_GEOMETRY, finding_views, render_video  # noqa: E402
from alignkit.domains.medical.echo.synthetic.reports import write_report  # noqa: E402
from alignkit.domains.medical.reports import ECHO_HEADERS, affirmed_terms, extract_sections  # noqa: E402

# The words that state each finding, and the report section it belongs to.
FINDING_TERMS = {"dilated_lv": ("left ventricle", ("dilated", "dilatation", "increased")),
                 "dilated_la": ("left atrium", ("dilated", "enlarged", "enlargement")),
                 "pericardial_effusion": ("pericardium", ("pericardial effusion",)),
                 "dilated_rv": ("right ventricle", ("dilated", "dilatation", "enlargement"))}


def read_rows(path: Path) -> List[Dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 studies x 4 videos, 48 px, 16 frames, every finding, a high finding rate."""
    return write_synthetic_echo(tmp_path_factory.mktemp("echo_synthetic"), 12, image_size=48, frames=16,
                                findings=FINDINGS, finding_rate=0.5)


def test_layout_lists_every_file(archive: Path):
    files, studies = read_rows(archive / "FileList.csv"), read_rows(archive / "studies.csv")
    assert list(files[0]) == ["FileName", "EF", "ESV", "EDV", "FrameHeight", "FrameWidth", "FPS", "NumberOfFrames",
                              "Split"]
    assert list(studies[0]) == ["study_id", "video", "view", "report", "split", "EF", "ESV", "EDV", *FINDINGS]
    assert len(files) == len(studies) == 48 and sorted(p.name for p in (archive / "Videos").iterdir()) == \
        sorted(f"{r['FileName']}.avi" for r in files)
    assert {r["Split"] for r in files} == {"TRAIN", "VAL", "TEST"} and {r["split"] for r in studies} == set(
        ("train", "val", "test"))
    for row in files[:6]:
        info = probe_echo(archive / "Videos" / f"{row['FileName']}.avi")
        assert (info.frames, info.height, info.width, info.fps) == (16, 48, 48, 13.0)  # fps = round(5 * 16 / 6)
        assert (int(row["NumberOfFrames"]), int(row["FrameHeight"]), float(row["FPS"])) == (16, 48, 13.0)
    by_study: Dict[str, List[Dict[str, str]]] = {}
    for row in studies:
        by_study.setdefault(row["study_id"], []).append(row)
    for rows in by_study.values():
        views = [r["view"] for r in rows]
        assert views[0] == "A4C" and len(set(views)) == 4 and len({r["report"] for r in rows}) == 1
        assert (archive / rows[0]["report"]).is_file()


def test_ef_volumes_and_tracings_agree(archive: Path):
    for row in read_rows(archive / "FileList.csv"):
        ef, esv, edv = float(row["EF"]), float(row["ESV"]), float(row["EDV"])
        assert abs(100 * (edv - esv) / edv - ef) < 0.05
    traced = [r for r in EchoNetReader(archive) if r.tracings]
    views = {r["video"].split("/")[1][:-4]: r["view"] for r in read_rows(archive / "studies.csv")}
    assert traced and {views[r.video_id] for r in traced} <= {"A2C", "A3C", "A4C", "A5C"}
    for record in traced:
        ed, es = ed_es_frames(record.tracings)
        volume = {t.frame: t.volume for t in record.tracings}
        assert abs(100 * (1 - volume[es] / volume[ed]) - record.ef) < 0.05  # method of disks gives the EF back
        frames = load_echo(record.path).frames[..., 0]
        dark = [(frames[k] < 25).sum() for k in (ed, es)]
        assert dark[0] > dark[1]  # the blood pool is largest at end-diastole


def test_each_clip_covers_a_full_beat():
    plan = plan_study(0, 0, ECHOPRIME_VIEWS, FINDINGS, 4, ("A4C",), 0.3, (0.7, 0.15, 0.15))
    for heart_rate in (62.0, 100.0):
        plan.heart_rate = heart_rate
        video = render_video(plan, "A4C", 32, 48, fps=27, rng=np.random.default_rng(1))
        period = 60.0 / heart_rate * 27
        assert period <= 32 and 0 <= video.ed_frame < video.es_frame < 32
        assert video.es_frame - video.ed_frame == round(0.35 * period)


def test_findings_show_in_their_views_only():
    assert finding_views("pericardial_effusion") == ["A4C", "Parasternal_Long", "Parasternal_Short", "Subcostal"]
    assert "SSN" not in finding_views("dilated_lv") and "A2C" not in finding_views("dilated_rv")
    plan = plan_study(1, 0, ECHOPRIME_VIEWS, FINDINGS, 4, ("A4C",), 0.0, (0.7, 0.15, 0.15))
    effusion = plan_study(1, 0, ECHOPRIME_VIEWS, FINDINGS, 4, ("A4C",), 0.0, (0.7, 0.15, 0.15))
    effusion.findings["pericardial_effusion"], effusion.effusion = True, 0.04
    for view in ECHOPRIME_VIEWS:
        same = np.array_equal(render_video(plan, view, 16, 48, 13, np.random.default_rng(2)).frames,
                              render_video(effusion, view, 16, 48, 13, np.random.default_rng(2)).frames)
        assert same == (view not in finding_views("pericardial_effusion")), view


def test_views_are_distinct_and_doppler_views_are_colour():
    assert len(VIEW_GEOMETRY) == 11 and set(VIEW_GEOMETRY) == set(ECHOPRIME_VIEWS)
    plan = plan_study(2, 0, ECHOPRIME_VIEWS, FINDINGS, 4, ("A4C",), 0.0, (0.7, 0.15, 0.15))
    mean = {}
    for view in ECHOPRIME_VIEWS:
        frames = render_video(plan, view, 16, 48, 13, np.random.default_rng(3)).frames
        assert (frames.ndim == 4) == ("Doppler" in view), view
        if frames.ndim == 4:
            assert (frames[..., 0].astype(int) - frames[..., 2]).std() > 5  # red and blue flow
        mean[view] = (frames if frames.ndim == 3 else frames.mean(-1)).mean(0)
    for a, b in (("A4C", "A5C"), ("A2C", "A3C")):  # the near-duplicate pairs differ by the aortic outflow
        assert np.abs(mean[a] - mean[b]).max() > 40, (a, b)


def test_reports_state_every_finding_and_the_ef(archive: Path):
    studies = {r["study_id"]: r for r in read_rows(archive / "studies.csv")}
    negated_somewhere = set()
    for study_id, row in studies.items():
        report = (archive / row["report"]).read_text()
        sections = extract_sections(report, ECHO_HEADERS)
        assert {"indication", "left ventricle", "left atrium", "right ventricle", "pericardium",
                "conclusions"} <= set(sections)
        for finding, (section, terms) in FINDING_TERMS.items():
            affirmed = affirmed_terms(sections[section], terms)
            assert bool(affirmed) == (row[finding] == "1"), (study_id, finding, sections[section])
            negated_somewhere |= {finding} if row[finding] == "0" and any(
                t in sections[section].lower() for t in terms) else set()
        numbers = [int(n) for n in re.findall(r"(\d+)(?:%| percent)", sections["left ventricle"])]
        ranges = re.findall(r"(\d+)-(\d+)%", sections["left ventricle"])
        ef = float(row["EF"])
        assert round(ef) in numbers or any(int(lo) <= ef <= int(hi) for lo, hi in ranges)
    assert negated_somewhere == set(FINDINGS)  # negative findings are also written as negations


def test_report_phrasing_varies():
    plan = plan_study(3, 0, ECHOPRIME_VIEWS, FINDINGS, 4, ("A4C",), 0.0, (0.7, 0.15, 0.15))
    reports = {write_report(plan, np.random.default_rng(k)) for k in range(30)}
    pericardium = {extract_sections(r, ECHO_HEADERS)["pericardium"] for r in reports}
    assert len(reports) == 30 and len(pericardium) >= 4


def test_deterministic_and_extensible(tmp_path: Path, archive: Path):
    small = write_synthetic_echo(tmp_path / "small", 3, image_size=48, frames=16, findings=FINDINGS, finding_rate=0.5)
    rows, full = read_rows(small / "studies.csv"), read_rows(archive / "studies.csv")
    assert rows == full[:len(rows)]
    first = rows[0]["video"]
    assert (small / first).read_bytes() == (archive / first).read_bytes()
    assert (small / rows[0]["report"]).read_text() == (archive / rows[0]["report"]).read_text()


def test_speed_and_configuration_errors(tmp_path: Path):
    start = time.process_time()
    write_synthetic_echo(tmp_path / "timed", 10)  # 64 px, 32 frames, 4 videos per study
    assert (time.process_time() - start) / 10 < 0.2  # ~0.04 s per study measured: 1000 studies well under a minute
    with pytest.raises(ConfigError, match="did you mean 'A4C'"):
        write_synthetic_echo(tmp_path / "x", 1, views=(*ECHOPRIME_VIEWS[:-1], "A4c"))
    with pytest.raises(ConfigError, match="at least 8 distinct views"):
        write_synthetic_echo(tmp_path / "x", 1, views=("A4C", "A5C", "A2C", "A3C"))
    with pytest.raises(ConfigError, match="did you mean 'pericardial_effusion'"):
        write_synthetic_echo(tmp_path / "x", 1, findings=("pericardial_efusion",))
    with pytest.raises(ValueError, match="at least one beat"):
        write_synthetic_echo(tmp_path / "x", 1, frames=16, fps=30)
