"""The echo datasets: samples, splits, clip starts, text modes, the multi-positive grouping (every video of a study
is a positive of its report), short clips, bad studies, shards, and the real cine through a study table."""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import torch

pytest.importorskip("av")
from alignkit.core.collate import collate_samples  # noqa: E402
from alignkit.core.losses import multi_positive_infonce_loss  # noqa: E402
from alignkit.core.paired import build_decoder  # noqa: E402
from alignkit.core.registry import DATASETS, ConfigError  # noqa: E402
from alignkit.core.shards import ShardedIterableDataset, write_shards  # noqa: E402
from alignkit.domains.medical.echo.data import EchoNetDataset, EchoStudyDataset, resolve_clip_start  # noqa: E402
from alignkit.domains.medical.echo.archives import ECHOPRIME_VIEWS  # noqa: E402
from alignkit.domains.medical.echo.loading import load_echo  # noqa: E402
from alignkit.domains.medical.echo.synthetic.archive import write_synthetic_echo  # noqa: E402
from alignkit.domains.medical.echo.transforms import frame_transforms  # noqa: E402
from alignkit.domains.medical.reports import ECHO_HEADERS, extract_sections, report_text  # noqa: E402
from alignkit.domains.medical.tables import BadRowError  # noqa: E402

REPO = Path(__file__).resolve().parents[4]
CINE = REPO.parent / "shared" / "data" / "medical" / "echo" / "color3d_jpeg_baseline.dcm"
SMALL = dict(num_frames=4, stride=2, image_size=24)


def read_rows(path: Path) -> List[Dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_rows(path: Path, rows: List[Dict[str, str]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture(scope="module")
def echo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 studies x 3 videos, 32 px, 12 frames (fps 10), 50/25/25 % train/val/test."""
    return write_synthetic_echo(tmp_path_factory.mktemp("echo_data"), 8, image_size=32, frames=12, videos_per_study=3,
                                split_fractions=(0.5, 0.25, 0.25))


def test_echonet_samples(echo: Path):
    files = {r["FileName"]: r for r in read_rows(echo / "FileList.csv")}
    train = DATASETS.build("echonet", root=str(echo), split="train", **SMALL)
    assert 0 < len(train) < len(files) and train.class_names is None and not train.skipped
    sample = train[0]
    assert set(sample) == {"video", "ef", "id"}
    assert sample["video"].shape == (3, 4, 24, 24) and sample["video"].dtype == torch.float32
    assert sample["ef"] == float(files[sample["id"]]["EF"]) and files[sample["id"]]["Split"] == "TRAIN"
    val = EchoNetDataset(root=str(echo), split="val", **SMALL)
    assert sorted(train.ids + val.ids + EchoNetDataset(root=str(echo), split="test", **SMALL).ids) == sorted(files)
    batch = collate_samples([val[0], val[1]])
    assert batch["video"].shape == (2, 3, 4, 24, 24) and batch["ef"].dtype == torch.float32


def test_echonet_video_is_the_decoded_clip(echo: Path):
    ds = EchoNetDataset(root=str(echo), split="val", clip_start="centre", num_frames=4, stride=2, image_size=32,
                        mean=0.0, std=1.0)
    frames = load_echo(ds.videos[0].path).frames  # 12 frames; centre start (12 - 7) // 2 = 2
    expected = torch.from_numpy(frames[[2, 4, 6, 8]]).permute(3, 0, 1, 2).float() / 255.0
    assert torch.allclose(ds[0]["video"], expected, atol=1e-6)


def test_views_become_labels(echo: Path, tmp_path: Path):
    rows = read_rows(echo / "FileList.csv")
    views = {r["video"].split("/")[1][:-4]: r["view"] for r in read_rows(echo / "studies.csv")}
    for row in rows:
        row["View"] = views[row["FileName"]]
    write_rows(echo / "FileList_views.csv", rows)
    ds = EchoNetDataset(root=str(echo), file_list="FileList_views.csv", view_column="View", **SMALL)
    sample = ds[0]
    assert ds.class_names == list(ECHOPRIME_VIEWS) and sample["view"] == views[sample["id"]]
    assert sample["label"] == ECHOPRIME_VIEWS.index(sample["view"])
    with pytest.raises(BadRowError, match=r"FileList_views\.csv row \d+: view '.*' is not one of the dataset's views"):
        EchoNetDataset(root=str(echo), file_list="FileList_views.csv", view_column="View", views=("A4C", "A2C"))
    narrowed = EchoNetDataset(root=str(echo), file_list="FileList_views.csv", view_column="View",
                              views=("A4C", "A2C"), skip_bad=True, **SMALL)
    kept = {s["view"] for s in narrowed}
    assert len(narrowed) + len(narrowed.skipped) == len(rows) and "A4C" in kept and kept <= {"A4C", "A2C"}


def test_studies_group_every_video_with_its_report(echo: Path):
    ds = DATASETS.build("echo-studies", root=str(echo), **SMALL)
    table = read_rows(echo / "studies.csv")
    assert len(ds) == len(table) == 24 and ds.finding_names == ["dilated_lv", "dilated_la", "pericardial_effusion"]
    samples = [ds[i] for i in range(len(ds))]
    assert set(samples[0]) == {"video", "text", "view", "label", "group", "study_id", "id", "ef", "labels"}
    by_video = {r["video"]: r for r in table}
    for sample in samples:
        row = by_video[sample["id"]]
        report = (echo / row["report"]).read_text()
        assert sample["study_id"] == row["study_id"] and sample["view"] == row["view"]
        assert sample["text"] == report_text(report, ds.reader.report_sections, headers=ECHO_HEADERS)
        assert sample["labels"].tolist() == [float(row[c]) for c in ds.finding_names]
        assert sample["ef"] == float(row["EF"])
    batch = collate_samples(samples)
    groups, studies = batch["group"], batch["study_id"]
    same_group = groups[:, None] == groups[None, :]
    same_study = torch.tensor([[a == b for b in studies] for a in studies])
    assert torch.equal(same_group, same_study) and same_group.sum(1).tolist() == [3] * 24
    for i in range(24):  # positives of a report are exactly its study's videos, all carrying that report
        assert {batch["text"][j] for j in torch.nonzero(same_group[i]).flatten().tolist()} == {batch["text"][i]}
    torch.manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(24, 8), dim=-1)
    grouped = multi_positive_infonce_loss(a, a, torch.tensor(0.0), groups_a=groups, groups_b=groups,
                                          distributed=False)  # logit scale exp(0) = 1
    p = torch.softmax(a @ a.T, dim=1)
    expected = -torch.log((p * same_study).sum(1)).mean()  # symmetric, so both directions are equal
    assert torch.isclose(grouped, expected, atol=1e-5)


def test_text_modes(echo: Path):
    report = (echo / read_rows(echo / "studies.csv")[0]["report"]).read_text()
    sections = EchoStudyDataset(root=str(echo), text_mode="sections", **SMALL)[0]["text"]
    found = extract_sections(report, ECHO_HEADERS)
    assert sections[0].startswith("left ventricle: ") and len(sections) == len(
        [k for k in found if k not in ("indication", "preamble")])
    assert any(s.startswith("pericardium: ") for s in sections)
    sentences = EchoStudyDataset(root=str(echo), text_mode="sentences", **SMALL)[0]["text"]
    assert len(sentences) > len(sections) and all(s.endswith(".") for s in sentences)
    narrow = EchoStudyDataset(root=str(echo), report_sections=("pericardium",), **SMALL)[0]["text"]
    assert narrow == found["pericardium"].strip()
    with pytest.raises(ConfigError, match="text_mode"):
        EchoStudyDataset(root=str(echo), text_mode="paragraphs")


def test_random_clips_follow_the_torch_seed(echo: Path):
    assert resolve_clip_start("auto", "train") == "random" and resolve_clip_start("auto", None) == "random"
    assert resolve_clip_start("auto", "VAL") == "centre" and resolve_clip_start("first", "train") == "first"
    ds = EchoNetDataset(root=str(echo), split="train", num_frames=2, stride=1, image_size=8)

    def draws() -> List[float]:
        return [float(ds[0]["video"].mean()) for _ in range(8)]

    torch.manual_seed(1)
    first = draws()
    torch.manual_seed(1)
    assert draws() == first and len(set(first)) > 1  # reproducible, and random within a process
    torch.manual_seed(2)
    assert draws() != first  # another torch seed (as in each DataLoader worker and epoch) draws other clips
    val = EchoNetDataset(root=str(echo), split="val", num_frames=2, stride=1, image_size=8)
    assert len({float(val[0]["video"].mean()) for _ in range(4)}) == 1  # centred outside training


def test_short_clips_are_padded_or_skipped(echo: Path):
    long = dict(num_frames=8, stride=2, image_size=16, mean=0.0, std=1.0, clip_start="first")  # span 15 > 12
    repeat = EchoNetDataset(root=str(echo), split="val", short_clips="repeat", **long)
    video = repeat[0]["video"]
    frames = torch.from_numpy(load_echo(repeat.videos[0].path).frames).permute(3, 0, 1, 2).float()
    expected = frame_transforms(image_size=16, mean=0.0, std=1.0)(frames[:, [0, 2, 4, 6, 8, 10, 11, 11]])
    assert torch.allclose(video, expected.as_tensor(), atol=1e-6)  # the last frame is held
    loop = EchoNetDataset(root=str(echo), split="val", short_clips="loop", **long)
    expected = frame_transforms(image_size=16, mean=0.0, std=1.0)(frames[:, [0, 2, 4, 6, 8, 10, 0, 2]])
    assert torch.allclose(loop[0]["video"], expected.as_tensor(), atol=1e-6)
    skip = EchoNetDataset(root=str(echo), split="val", short_clips="skip", **long)
    assert len(skip) == 0 and len(skip.skipped) == len(repeat)
    assert "has 12 frames, fewer than the 15 of a clip" in skip.skipped[0][1]
    beat = EchoStudyDataset(root=str(echo), short_clips="skip", num_frames=4, stride=1, beat_seconds=1.4)
    assert len(beat) == 0 and "fewer than the 16" in beat.skipped[0][1]  # 1.4 s at 10 fps: stride 5, span 16


def test_bad_studies_raise_or_are_listed(echo: Path, tmp_path: Path):
    rows = read_rows(echo / "studies.csv")
    for row in rows:
        row["video"] = str(echo / row["video"])
        row["report"] = str(echo / row["report"])
    rows[0]["dilated_la"] = ""  # blank: ignored in the loss and metrics
    rows[1]["dilated_la"] = rows[2]["dilated_la"] = ""
    rows[3]["report"] = rows[4]["report"] = rows[5]["report"] = ""  # study 2 has no report
    rows[6]["video"] = str(tmp_path / "gone.avi")
    rows[9]["pericardial_effusion"] = rows[10]["pericardial_effusion"] = rows[11]["pericardial_effusion"] = "2"
    write_rows(tmp_path / "studies.csv", rows)
    with pytest.raises(BadRowError, match=r"studies\.csv rows 4, 5, 6: the study has no report"):
        EchoStudyDataset(root=str(tmp_path), **SMALL)
    ds = EchoStudyDataset(root=str(tmp_path), skip_bad=True, **SMALL)
    assert len(ds) == 24 - 3 - 1 - 3 and ds[0]["labels"].tolist()[1] == -1.0
    reasons = dict(ds.skipped)
    assert "no report" in reasons[f"{tmp_path / 'studies.csv'} rows 4, 5, 6"]
    assert "gone.avi not found" in reasons[f"{tmp_path / 'studies.csv'} row 7"]
    assert "'pericardial_effusion' holds 2.0" in reasons[f"{tmp_path / 'studies.csv'} rows 10, 11, 12"]
    assert ds.groups == sorted(ds.groups) and max(ds.groups) == len(ds.studies) - 1 == 5
    with pytest.raises(ConfigError, match="ef_column 'LVEF'"):
        EchoStudyDataset(root=str(echo), ef_column="LVEF")


def test_shards_give_the_folder_samples(echo: Path, tmp_path: Path):
    ds = EchoStudyDataset(root=str(echo), split="train", clip_start="centre", text_mode="sentences", **SMALL)
    shards = write_shards(ds, tmp_path / "shards", max_count=4, progress=False)
    stream = ShardedIterableDataset([str(p) for p in shards], decode=build_decoder(EchoStudyDataset, ds.params),
                                    shuffle=0)
    streamed = {s["id"]: s for s in stream}
    assert len(streamed) == len(ds)
    for i in range(len(ds)):
        sample, got = ds[i], streamed[ds.ids[i]]
        assert got.keys() - {"__key__"} == sample.keys()
        assert torch.equal(got["video"], sample["video"]) and got["text"] == sample["text"]
        assert got["group"] == sample["group"] and torch.equal(got["labels"], sample["labels"])


@pytest.mark.skipif(not CINE.is_file(), reason="../shared/data/medical/echo not present")
def test_the_real_cine_through_a_study_table(tmp_path: Path):
    (tmp_path / "report.txt").write_text("LEFT VENTRICLE: Normal size and function.\nPERICARDIUM: No effusion.\n")
    with open(tmp_path / "studies.csv", "w", newline="") as f:
        csv.writer(f).writerows([["study_id", "video", "view", "report", "EF"],
                                 ["real", str(CINE), "A4C", "report.txt", ""]])
    ds = EchoStudyDataset(root=str(tmp_path), split_column=None, beat_seconds=1.0, clip_start="centre")
    sample = ds[0]
    assert sample["video"].shape == (3, 16, 64, 64) and torch.isfinite(sample["video"]).all()
    assert math.isnan(sample["ef"]) and sample["labels"].shape == (0,) and sample["view"] == "A4C"
    assert sample["text"] == "Normal size and function. No effusion."
    raw = ds.raw(0)
    assert set(raw) == {"dcm", "txt", "json"} and raw["dcm"][128:132] == b"DICM"
    corner = sample["video"][:, :, :4, :4]  # outside the cone (masked): the normalised black level everywhere
    assert torch.allclose(corner, torch.full_like(corner, -0.13 / 0.19), atol=1e-4)
    assert np.isclose(ds.decoder(beat_seconds=1.0).span(30.0), 31)  # 1 s at 30 fps: stride 2 for 16 frames
