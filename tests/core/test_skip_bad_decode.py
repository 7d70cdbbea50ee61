"""skip_bad screens images by decoding them in full: ``PIL.Image.verify`` reads a JPEG's headers only and passes a
truncated one. Truncated real JPEGs and PNGs, cut at several offsets, are skipped and listed with skip_bad and
raise a ValueError naming the file and row without it; Pillow never pads a truncated image with grey."""
from __future__ import annotations

import io
from pathlib import Path
from typing import List

import pytest
from PIL import Image, ImageFile

from alignkit.core.images import check_image_decodes, load_image
from alignkit.core.paired_csv import PairedImageTextCSV

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
JPEG = SHARED / "pointcloud" / "rgbd" / "livingroom1" / "color" / "00000.jpg"
PNG = SHARED / "medical" / "cxr" / "00000001_000.png"
CUTS = (0.1, 0.4, 0.7, 0.95, 0.995)


def truncated(source: Path, fraction: float) -> bytes:
    assert source.is_file(), f"sample data missing: {source} (see ../shared/data/README)"
    data = source.read_bytes()
    return data[:int(len(data) * fraction)]


def folder_with(root: Path, images: List[bytes], suffix: str) -> Path:
    """A paired-csv folder: row 1 a good image, rows 2.. the given image bytes."""
    (root / "img").mkdir(parents=True)
    Image.new("RGB", (8, 8), (10, 200, 30)).save(root / "img" / f"good{suffix}")
    names = [f"good{suffix}"]
    for k, data in enumerate(images):
        (root / "img" / f"cut{k}{suffix}").write_bytes(data)
        names.append(f"cut{k}{suffix}")
    (root / "pairs.csv").write_text("path,caption\n" + "".join(f"img/{n},a photo\n" for n in names))
    return root


def test_verify_passes_a_truncated_jpeg_but_the_screening_does_not(tmp_path: Path) -> None:
    for fraction in CUTS:
        path = tmp_path / f"cut{fraction}.jpg"
        path.write_bytes(truncated(JPEG, fraction))
        if fraction >= 0.4:  # the trap: verify() reads the headers only
            with Image.open(path) as img:
                img.verify()
        with pytest.raises(ValueError, match=rf"corrupt image {path}: it does not decode in full"):
            check_image_decodes(path)
    check_image_decodes(JPEG)
    check_image_decodes(PNG)


def test_pillow_never_pads_a_truncated_image_with_grey() -> None:
    import alignkit.core
    import alignkit.domains.medical.xray.data
    import alignkit.domains.pointcloud.rgbd.dataset  # noqa: F401  (nothing in the package may switch the flag on)
    assert alignkit.core is not None and ImageFile.LOAD_TRUNCATED_IMAGES is False
    for fraction in CUTS:
        with pytest.raises(OSError):
            load_image(truncated(JPEG, fraction), image_size=8, channels=3)
    with Image.open(io.BytesIO(truncated(JPEG, 1.0))) as whole:
        whole.load()


@pytest.mark.parametrize("source,suffix", [(JPEG, ".jpg"), (PNG, ".png")], ids=["jpeg", "png"])
def test_skip_bad_skips_and_lists_truncated_images(tmp_path: Path, source: Path, suffix: str) -> None:
    root = folder_with(tmp_path, [truncated(source, f) for f in CUTS], suffix)
    ds = PairedImageTextCSV(str(root), split_column=None, label_column=None, image_size=8, skip_bad=True)
    assert ds.ids == [f"img/good{suffix}"]
    assert [where for where, _ in ds.skipped] == [f"{root / 'pairs.csv'} row {k + 2} (img/cut{k}{suffix})"
                                                 for k in range(len(CUTS))]
    assert all("corrupt image" in reason and "does not decode in full" in reason for _, reason in ds.skipped)


@pytest.mark.parametrize("source,suffix", [(JPEG, ".jpg"), (PNG, ".png")], ids=["jpeg", "png"])
def test_without_skip_bad_a_truncated_image_raises_naming_file_and_row(tmp_path: Path, source: Path,
                                                                       suffix: str) -> None:
    root = folder_with(tmp_path, [truncated(source, f) for f in CUTS], suffix)
    ds = PairedImageTextCSV(str(root), split_column=None, label_column=None, image_size=8)
    assert len(ds) == 1 + len(CUTS)  # indexing does not decode: reading does
    ds[0]
    for k in range(len(CUTS)):
        with pytest.raises(ValueError, match=rf"cannot decode image 'img/cut{k}\{suffix}' \(.*pairs\.csv row {k + 2}"):
            ds[k + 1]
