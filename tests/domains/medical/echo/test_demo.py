"""`alignkit demo echo --fast`: views and findings by retrieval beat their baselines on held-out studies,
and the EF figure collapses without motion (a single repeated frame); see demo.TARGETS for the fast bounds."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("av")
from alignkit.core.registry import DEMOS  # noqa: E402
from alignkit.domains.medical.echo import demo  # noqa: E402,F401  (registers the demo)
from alignkit.domains.medical.echo.demo import TARGETS  # noqa: E402


@pytest.mark.slow
def test_fast_demo_beats_its_baselines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    metrics = DEMOS.get("echo")(tmp_path, fast=True)
    missed = [f"{t.label}: {metrics[t.metric]:.3f} not {t.op} {t.threshold(metrics, fast=True):.3f}"
              for t in TARGETS if not t.met(metrics, fast=True)]
    assert not missed, missed
    # margins over the baselines that every fast bound above stands for
    assert metrics["view/accuracy"] >= metrics["view/majority"] + 0.5
    assert metrics["single/ef/retrieval_mae"] > metrics["ef/retrieval_mae"] + 2.0
    assert metrics["findings/auroc_mean"] >= metrics["chance/auroc"] + 0.1
    assert json.loads((tmp_path / "metrics.json").read_text())["ef/retrieval_mae"] == pytest.approx(
        metrics["ef/retrieval_mae"])
    # the held-out study interpreted as `alignkit interpret` does: its report, EF, findings, evidence, attention PNG
    printed = capsys.readouterr().out
    assert "ESTIMATED EF:" in printed and "EVIDENCE (top-k retrieved training studies)" in printed
    assert "PERICARDIUM:" in printed and "pericardial_effusion:" in printed
    assert list(tmp_path.glob("attention_*.png")) and (tmp_path / "view_confusion.png").is_file()
    assert (tmp_path / "run" / "echo_index" / "index.json").is_file()
