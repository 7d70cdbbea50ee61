"""`alignkit demo pointcloud --fast`: ULIP zero-shot and Text4Point segmentation beat their baselines."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignkit.core.registry import DEMOS
from alignkit.domains.pointcloud import demo


@pytest.mark.slow
def test_fast_demo_beats_its_baselines(tmp_path: Path):
    metrics = DEMOS.get("pointcloud")(tmp_path, fast=True)
    assert json.loads((tmp_path / "metrics.json").read_text())["zero_shot/top1"] == pytest.approx(
        metrics["zero_shot/top1"])
    # margins far beyond chance (1/12, 1/3) and the majority-class mIoU
    assert metrics["zero_shot/top1"] >= 0.60, metrics["zero_shot/top1"]
    assert metrics["held_out/top1"] >= 0.45, metrics["held_out/top1"]
    assert metrics["segmentation/mIoU"] >= metrics["segmentation/majority_mIoU"] + 0.10
    assert all(met for _, met in demo.targets_met(metrics, fast=True)), demo.targets_met(metrics, fast=True)
    for png in ("runs/ulip_demo_stage2/zero_shot_confusion.png", "held_out/zero_shot_confusion.png",
                "runs/text4point_demo_seg/segmentation_clouds.png"):
        assert (tmp_path / png).is_file(), png
