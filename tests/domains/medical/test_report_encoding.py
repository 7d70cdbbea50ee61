"""Report files are read strictly (core.text): UTF-16 and UTF-8-BOM reports decode right, a binary or Latin-1
report is a bad row naming the file, row and byte (skipped and listed under skip_bad), never text full of U+FFFD;
a text file given as an echo video is refused, not drawn as ANSI-art frames."""
from __future__ import annotations

import codecs
import csv
import shutil
from pathlib import Path
from typing import List, Sequence

import numpy as np
import pytest

from alignkit.domains.medical.tables import BadRowError, read_table
from alignkit.domains.medical.xray.archives import GenericCsvReader

REPO = Path(__file__).resolve().parents[3]
CXR = REPO.parent / "shared" / "data" / "medical" / "cxr"
NIH_PNGS = ["00000001_000.png", "00027426_000.png"]
REPORT = "FINDINGS: Herzgröße normal. Kein Pleuraerguss.\nIMPRESSION: Unauffälliger Befund — no effusion.\n"


def write_csv(path: Path, header: Sequence[str], rows: List[list], encoding: str = "utf-8") -> Path:
    with open(path, "w", newline="", encoding=encoding) as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture
def cxr_folder(tmp_path: Path) -> Path:
    """The two real NIH PNGs with reports: a.txt UTF-16 (BOM), b.txt UTF-8 with a BOM."""
    for name in NIH_PNGS:
        assert (CXR / name).is_file(), f"sample data missing: {CXR / name} (see ../shared/data/README)"
        shutil.copy(CXR / name, tmp_path / name)
    (tmp_path / "a.txt").write_bytes(REPORT.encode("utf-16"))
    (tmp_path / "b.txt").write_bytes(codecs.BOM_UTF8 + REPORT.encode("utf-8"))
    write_csv(tmp_path / "list.csv", ["path", "report"], [[NIH_PNGS[0], "a.txt"], [NIH_PNGS[1], "b.txt"]])
    return tmp_path


def reader(folder: Path, **options) -> GenericCsvReader:
    return GenericCsvReader(folder / "list.csv", folder, report_column="report", report_is_path=True, **options)


def test_utf16_and_utf8_bom_reports_decode_right(cxr_folder: Path) -> None:
    records = reader(cxr_folder).records
    expected = "Herzgröße normal. Kein Pleuraerguss. Unauffälliger Befund — no effusion."
    assert [r.report_text for r in records] == [expected, expected]
    assert not any("\ufffd" in r.report_text or "\ufeff" in r.report_text for r in records)


@pytest.mark.parametrize("bad", ["png", "latin-1"])
def test_a_binary_or_latin1_report_is_a_bad_row(cxr_folder: Path, bad: str) -> None:
    report = cxr_folder / "b.txt"
    latin1 = REPORT.replace("—", "-").encode("latin-1")
    report.write_bytes((CXR / NIH_PNGS[0]).read_bytes() if bad == "png" else latin1)
    offset = 0 if bad == "png" else latin1.index("ö".encode("latin-1"))
    with pytest.raises(BadRowError, match=rf"list\.csv row 2: report {report} is not UTF-8 text: byte {offset} .*"
                                          "skip_bad=True"):
        reader(cxr_folder)
    skipping = reader(cxr_folder, skip_bad=True)
    assert [r.image_id for r in skipping.records] == [NIH_PNGS[0]]
    assert skipping.skipped == [(f"{cxr_folder / 'list.csv'} row 2", skipping.skipped[0][1])]
    assert f"report {report} is not UTF-8 text: byte {offset}" in skipping.skipped[0][1]


def test_a_utf16_listing_reads_right(cxr_folder: Path) -> None:
    rows = [[NIH_PNGS[0], "a.txt"], [NIH_PNGS[1], "b.txt"]]
    write_csv(cxr_folder / "list.csv", ["path", "report"], rows, encoding="utf-16")
    assert read_table(cxr_folder / "list.csv") == (["path", "report"], [dict(zip(["path", "report"], r)) for r in rows])
    assert len(reader(cxr_folder)) == 2
    (cxr_folder / "list.csv").write_bytes(b"path,report\n" + NIH_PNGS[0].encode() + b",a.txt\nx\xff.png,b.txt\n")
    with pytest.raises(ValueError, match=r"list\.csv row 2 \(line 3\) is not UTF-8 text: byte \d+"):
        reader(cxr_folder)


# ------------------------------------------------------------------------------------------------- echo


av = pytest.importorskip("av")


def echo_study_table(root: Path, reports: dict) -> Path:
    from alignkit.core.video import write_video
    ramp = np.stack([np.full((16, 16), 10 * k, dtype=np.uint8) for k in range(8)])
    write_video(root / "a.avi", ramp, fps=25, codec="ffv1", gop=1)
    for name, data in reports.items():
        (root / name).write_bytes(data)
    rows = [[f"s{k}", "a.avi", "A4C", name, "train", 50] for k, name in enumerate(reports)]
    return write_csv(root / "studies.csv", ["study_id", "video", "view", "report", "split", "EF"], rows)


def test_echo_reports_are_read_strictly(tmp_path: Path) -> None:
    from alignkit.domains.medical.echo.archives import EchoStudyTableReader
    text = "LEFT VENTRICLE: Normale Größe.\nPERICARDIUM: Kein Perikarderguss.\n"
    table = echo_study_table(tmp_path, {"utf16.txt": text.encode("utf-16"), "bom.txt": codecs.BOM_UTF8 + text.encode(),
                                        "latin1.txt": text.encode("latin-1")})
    offset = text.encode("latin-1").index("ö".encode("latin-1"))
    with pytest.raises(BadRowError, match=rf"studies\.csv row 3: report .*latin1\.txt is not UTF-8 text: "
                                          rf"byte {offset} "):
        EchoStudyTableReader(table)
    studies = EchoStudyTableReader(table, skip_bad=True)
    assert [s.report for s in studies] == [text, text]
    assert studies.skipped[0][0] == f"{table} row 3" and "latin1.txt is not UTF-8 text" in studies.skipped[0][1]


def test_a_report_given_as_an_echo_video_is_refused(tmp_path: Path) -> None:
    from alignkit.domains.medical.echo.loading import load_echo, probe_echo
    report = tmp_path / "report.txt"
    report.write_bytes(b"\x1b[1mLEFT VENTRICLE:\x1b[0m Normal size.\nPERICARDIUM: No effusion.\n" * 8)  # 504 bytes
    if "tty" in av.formats_available:  # the trap is real: FFmpeg draws this report as ANSI-art frames
        with av.open(str(report)) as container:
            assert container.format.name == "tty"
    for read in (load_echo, probe_echo):
        with pytest.raises(ValueError, match=rf"{report} is not a video: FFmpeg reads it with its 'tty' demuxer"):
            read(report)
    with pytest.raises(ValueError, match=r"<bytes> is not a video|cannot open video <bytes>"):
        load_echo(report.read_bytes(), dicom=False)
