"""Strict text reading (core.text): byte order marks, BOM-less UTF-16, binary and undecodable files named with the
byte offset, empty reports, CSV tables in UTF-16 and CSV rows that are not text; and the paired-csv dataset on
those tables."""
from __future__ import annotations

import codecs
import gzip
import logging
from pathlib import Path

import pytest
from PIL import Image

from alignkit.core.paired_csv import PairedImageTextCSV
from alignkit.core.text import TextDecodeError, decode_text, detect_encoding, read_csv, read_text

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
REPORT = "FINDINGS: Größe des Herzens normal; kein Erguss. 心脏大小正常.\nIMPRESSION: Normal study — no effusion.\n"


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-be"])
def test_a_report_with_a_byte_order_mark_decodes_right(tmp_path: Path, encoding: str) -> None:
    path = tmp_path / "report.txt"
    data = REPORT.encode(encoding)
    if encoding in ("utf-16-le", "utf-16-be", "utf-32-be"):  # these codecs write no mark: add it
        data = {"utf-16-le": codecs.BOM_UTF16_LE, "utf-16-be": codecs.BOM_UTF16_BE,
                "utf-32-be": codecs.BOM_UTF32_BE}[encoding] + data
    path.write_bytes(data)
    assert read_text(path) == REPORT  # the mark is not part of the text


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be"])
def test_utf16_without_a_byte_order_mark_is_recognised(encoding: str) -> None:
    text = "FINDINGS: The heart is normal in size.\nIMPRESSION: No acute process.\n"
    assert detect_encoding(text.encode(encoding)) == (encoding, 0)
    assert decode_text(text.encode(encoding), "r.txt") == text


def test_utf32_without_a_mark_and_binary_files_are_refused_with_the_offset() -> None:
    with pytest.raises(TextDecodeError, match=r"r\.txt is binary, not text: a NUL byte at byte 1 "):
        decode_text("FINDINGS: normal.\n".encode("utf-32-le"), "r.txt")
    with pytest.raises(TextDecodeError, match=r"r\.txt is binary, not text: a NUL byte at byte 9 ") as err:
        decode_text(b"FINDINGS:\x00\x01\x02 normal", "r.txt")
    assert err.value.offset == 9
    # bytes that look like BOM-less UTF-16 but hold control characters: a binary file, not text
    with pytest.raises(TextDecodeError, match=r"looks like UTF-16 without a byte order mark but holds control"):
        decode_text(bytes([1, 0, 2, 0, 3, 0, 4, 0] * 8), "blob.txt")


def test_latin1_is_not_guessed_but_named_with_the_byte_offset(tmp_path: Path) -> None:
    path = tmp_path / "report.txt"
    path.write_bytes("FINDINGS: Größe normal.\n".encode("latin-1"))
    with pytest.raises(TextDecodeError, match=rf"report {path} is not UTF-8 text: byte 12 \(b'\\xf6") as err:
        read_text(path, what="report")
    assert err.value.offset == 12


@pytest.mark.parametrize("sample", ["medical/cxr/00000001_000.png", "medical/echo/US1_UNCR.dcm",
                                    "pointcloud/meshes/featuretype.STL"])
def test_real_binary_files_are_not_reports(tmp_path: Path, sample: str) -> None:
    source = SHARED / sample
    assert source.is_file(), f"sample data missing: {source} (see ../shared/data/README)"
    path = tmp_path / "report.txt"
    path.write_bytes(source.read_bytes())
    with pytest.raises(TextDecodeError, match=rf"report {path} is (binary|not UTF-8 text).* byte \d+") as err:
        read_text(path, what="report")
    assert err.value.offset is not None and err.value.offset < 200


def test_an_empty_or_blank_file_is_refused_where_text_is_required(tmp_path: Path) -> None:
    empty, blank = tmp_path / "empty.txt", tmp_path / "blank.txt"
    empty.write_bytes(b"")
    blank.write_bytes(codecs.BOM_UTF8 + b"  \n\t\n")
    assert read_text(empty) == "" and read_text(blank).strip() == ""
    with pytest.raises(TextDecodeError, match=rf"report {empty} is empty; it must hold text"):
        read_text(empty, required=True, what="report")
    with pytest.raises(TextDecodeError, match=rf"report {blank} is empty \(only whitespace\)"):
        read_text(blank, required=True, what="report")
    with pytest.raises(FileNotFoundError, match="report .*gone.txt not found"):
        read_text(tmp_path / "gone.txt", what="report")


# ------------------------------------------------------------------------------------------------- CSV

ROWS = "path,caption\nimg/a.png,Größe normal\nimg/b.png,\"two\nlines\"\nimg/c.png,café\n"


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-32"])
def test_a_csv_in_utf16_or_with_a_mark_reads_right(tmp_path: Path, encoding: str) -> None:
    path = tmp_path / "pairs.csv"
    path.write_bytes(ROWS.encode(encoding))  # utf-16-le: no mark, recognised by its NULs
    table = read_csv(path)
    assert table.header == ["path", "caption"]  # no '\ufeffpath'
    assert [r["caption"] for r in table.rows] == ["Größe normal", "two\nlines", "café"] and not table.undecodable
    gz = tmp_path / "pairs.csv.gz"
    gz.write_bytes(gzip.compress(ROWS.encode(encoding)))
    assert read_csv(gz).rows == table.rows


def test_an_undecodable_csv_row_is_named_or_listed(tmp_path: Path) -> None:
    path = tmp_path / "pairs.csv"
    path.write_bytes(ROWS.replace("café", "caf\xe9").encode("utf-8").replace(b"caf\xc3\xa9", b"caf\xe9"))
    offset = path.read_bytes().index(b"\xe9")
    with pytest.raises(TextDecodeError, match=rf"CSV file {path} row 3 \(line 5\) is not UTF-8 text: byte {offset} "):
        read_csv(path)
    table = read_csv(path, bad_rows="list")
    assert [r["path"] for r in table.rows] == ["img/a.png", "img/b.png", "img/c.png"]
    assert list(table.undecodable) == [3] and "column 'caption' holds byte b'\\xe9'" in table.undecodable[3]
    path.write_bytes(b"pa\xfft\xffh,caption\nimg/a.png,x\n")
    with pytest.raises(TextDecodeError, match=r"header row \(line 1\) is not UTF-8 text: byte 2 "):
        read_csv(path, bad_rows="list")  # a header that is not text is never skipped


# ------------------------------------------------------------------------------------------ paired-csv


def paired_folder(root: Path, csv_bytes: bytes) -> Path:
    (root / "img").mkdir(parents=True)
    for name in "abc":
        Image.new("RGB", (8, 8), (40, 80, 120)).save(root / "img" / f"{name}.png")
    (root / "pairs.csv").write_bytes(csv_bytes)
    return root


def test_paired_csv_reads_a_utf16_table_and_class_list(tmp_path: Path) -> None:
    rows = "path,caption,label\nimg/a.png,Größe,0\nimg/b.png,心脏,1\nimg/c.png,ok,1\n"
    root = paired_folder(tmp_path, rows.encode("utf-16"))
    (root / "classes.txt").write_bytes(codecs.BOM_UTF16_BE + "normal\nvergrößert\n".encode("utf-16-be"))
    ds = PairedImageTextCSV(str(root), split_column=None, image_size=8)
    assert [ds[i]["text"] for i in range(3)] == ["Größe", "心脏", "ok"] and ds.class_names == ["normal", "vergrößert"]
    (root / "classes.txt").write_bytes(b"normal\nvergr\xf6\xdfert\n")
    with pytest.raises(ValueError, match=r"class list .*classes\.txt is not UTF-8 text: byte 12"):
        PairedImageTextCSV(str(root), split_column=None, image_size=8)


def test_paired_csv_names_an_undecodable_caption_or_skips_it(tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    root = paired_folder(tmp_path, b"path,caption\nimg/a.png,fine\nimg/b.png,caf\xe9\nimg/c.png,ok\n")
    with pytest.raises(ValueError, match=r"pairs\.csv row 2 \(line 3\) is not UTF-8 text: byte \d+"):
        PairedImageTextCSV(str(root), split_column=None, label_column=None, image_size=8)
    with caplog.at_level(logging.WARNING, logger="alignkit.core.paired_csv"):
        ds = PairedImageTextCSV(str(root), split_column=None, label_column=None, image_size=8, skip_bad=True)
    assert ds.ids == ["img/a.png", "img/c.png"]
    assert ds.skipped[0][0] == f"{root / 'pairs.csv'} row 2 (img/b.png)" and "b'\\xe9'" in ds.skipped[0][1]
    assert "skipped 1 of 3 rows" in caplog.text
