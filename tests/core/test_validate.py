"""`alignkit validate`: every item of every split read through the configured readers, errors listed by file."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from alignkit.cli import main
from alignkit.core.validate import image_stats


@pytest.fixture
def shapes_copy(shapes_tiny: Path, tmp_path: Path) -> Path:
    root = tmp_path / "shapes"
    shutil.copytree(shapes_tiny, root)
    return root


def run_validate(root: Path, out: Path, capsys: pytest.CaptureFixture) -> tuple:
    code = main(["validate", "-c", "core/shapes_demo", f"data.params.root={root}", "--out", str(out),
                 "--workers", "2"])
    return code, capsys.readouterr().out, json.loads((out / "validation.json").read_text())


def test_clean_dataset_passes_with_counts_and_contact_sheets(shapes_copy: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    code, printed, report = run_validate(shapes_copy, tmp_path / "out", capsys)
    assert code == 0 and report["ok"]
    counts = {s["split"]: (s["listed"], s["decoded"], len(s["failed"])) for s in report["splits"]}
    assert counts == {"train": (32, 32, 0), "val": (24, 24, 0), "test": (40, 40, 0)}
    assert "train: 32 listed, 32 decoded, 0 failed" in printed
    for split in ("train", "val", "test"):
        sheet = Image.open(tmp_path / "out" / f"contact_{split}.png")
        assert sheet.size[0] > 200 and np.asarray(sheet).std() > 10  # decoded samples, not a blank page


def test_truncated_and_black_images_are_named_and_fail_the_run(shapes_copy: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(shapes_copy / "images/val/000001.png")
    cut = shapes_copy / "images/test/000002.png"
    cut.write_bytes(cut.read_bytes()[:200])
    code, printed, report = run_validate(shapes_copy, tmp_path / "out", capsys)
    assert code == 1 and not report["ok"]
    splits = {s["split"]: s for s in report["splits"]}
    assert splits["test"]["decoded"] == 39 and len(splits["test"]["failed"]) == 1
    assert "000002.png" in splits["test"]["failed"][0][1]
    flagged = splits["val"]["flagged"]
    assert len(flagged) == 1 and "constant" in flagged[0]["flags"] and "000001.png" in flagged[0]["item"]
    assert "FAILED" in printed and "000002.png" in printed and "ERROR" in printed


def test_missing_split_folder_is_reported_not_raised(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["validate", "-c", "core/shapes_demo", f"data.params.root={tmp_path / 'nowhere'}",
                 "--out", str(tmp_path / "out"), "--workers", "0"])
    printed = capsys.readouterr().out
    assert code == 1 and "nowhere" in printed and "FAILED" in printed


@pytest.mark.parametrize("values, flag", [
    (torch.zeros(3, 16, 16), "constant"),
    (torch.cat([torch.ones(3, 8, 16), torch.rand(3, 8, 16) * 0.5], 1), "saturated"),
    (torch.cat([torch.zeros(3, 16, 16), torch.rand(3, 1, 16) + 0.1], 1), "dark"),
    (torch.full((3, 16, 16), float("nan")), "non-finite"),
])
def test_grey_level_flags(values: torch.Tensor, flag: str) -> None:
    stats = image_stats("x", "image", values, saturated_fraction=0.25, dark_fraction=0.9)
    assert any(f.startswith(flag) for f in stats.flags), stats.flags
    assert not image_stats("x", "image", torch.rand(3, 16, 16), 0.25, 0.9).flags


@pytest.mark.parametrize("shape, frames", [((3, 16, 16), (1, 3, 16, 16)), ((1, 16, 16), (1, 1, 16, 16)),
                                           ((5, 3, 16, 16), (5, 3, 16, 16)),   # (T, C, H, W)
                                           ((3, 4, 16, 16), (4, 3, 16, 16)),   # (C, T, H, W), MONAI / echo clips
                                           ((2, 3, 4, 16, 16), (8, 3, 16, 16)),  # (V, C, T, H, W) studies
                                           ((1024, 3), None), ((4, 5, 16, 16), None), ((3, 4, 4), None)])
def test_images_and_videos_are_found_in_every_layout(shape: tuple, frames: tuple) -> None:
    from alignkit.core.validate import as_frames
    out = as_frames(torch.rand(shape))
    assert (out is None and frames is None) or tuple(out.shape) == frames
    assert as_frames(torch.zeros(shape, dtype=torch.long)) is None  # token ids, labels


def test_echo_clips_are_checked_frame_by_frame(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from alignkit.domains.medical.echo.synthetic.archive import write_synthetic_echo
    root = write_synthetic_echo(tmp_path / "echo", 6, image_size=32, frames=12, split_fractions=(0.5, 0.25, 0.25))
    code = main(["validate", "-c", "medical/echo_demo", f"data.params.root={root}", "data.params.image_size=32",
                 "data.params.num_frames=4", "--out", str(tmp_path / "out"), "--workers", "0"])
    report = json.loads((tmp_path / "out" / "validation.json").read_text())
    assert code == 0 and all(s["images"] == s["decoded"] > 0 for s in report["splits"]), report
    assert (tmp_path / "out" / "contact_train.png").is_file()
