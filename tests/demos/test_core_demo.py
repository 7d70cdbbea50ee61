"""`alignkit demo core --fast` learns the shapes far above chance, through the CLI, in a few minutes."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignkit.cli import main


@pytest.mark.slow
def test_demo_core_fast_beats_chance(tmp_path: Path, capsys) -> None:
    assert main(["demo", "core", "--fast", "--out", str(tmp_path)]) == 0
    m = json.loads((tmp_path / "metrics.json").read_text())
    # chance: R@1 among 200 candidates = 0.005; shape among 8 names = 0.125
    assert m["retrieval/text2image_R@1"] >= 0.5
    assert m["unseen_retrieval/text2image_R@1"] >= 0.4
    assert m["zero_shot/top1"] >= 0.6
    assert 0.85 <= m["retrieval/duplicate_ceiling_R@1"] <= 1.0
    assert (tmp_path / "run" / "config.yaml").is_file()
    out = capsys.readouterr().out
    assert "zero-shot shape top-1" in out and "ceiling" in out
