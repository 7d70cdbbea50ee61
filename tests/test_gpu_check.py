"""The prepared GPU check (benchmarks/gpu_check.sh) runs on CPU with --dry-run: every row present and ok."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))


def test_gpu_check_dry_run_reports_every_row(tmp_path: Path) -> None:
    import train_throughput
    out = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHON": sys.executable})
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads((tmp_path / "gpu_check.json").read_text())["rows"]
    found = {(r["section"], r["check"]) for r in rows}
    expected = {("contrastive", f"B={b} {m}") for b in (256, 1024) for m in ("naive", "chunked")}
    expected |= {("config", c) for c in train_throughput.gpu_configs()}
    expected |= {("point-ops", op) for op in ("fps", "knn", "ball_query")}
    expected |= {("demo", c) for c in train_throughput.DEMOS}
    assert found == expected
    bad = [(r["section"], r["check"], r["status"], r["detail"]) for r in rows if r["status"] != "ok"]
    assert not bad, bad
    for r in rows:
        if r["section"] in ("config", "demo"):
            assert r["values"]["flops_per_step"] > 0 and r["values"]["samples_per_s"] > 0, r
    table = (tmp_path / "gpu_check.md").read_text()
    assert all(f"| {check} |" in table for _, check in expected)
    assert "rows ok" in out.stdout


def test_a_failing_row_is_reported_not_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gpu_check
    import train_throughput
    monkeypatch.setattr(train_throughput, "gpu_configs", lambda: ["core/no_such_config.yaml"])
    rows = gpu_check.check(gpu_check.parse(["--dry-run", "--only", "config", "--out", str(tmp_path)]))
    assert [(r.check, r.status) for r in rows] == [("core/no_such_config.yaml", "FAILED")]
    assert "no_such_config" in rows[0].detail
    assert "FAILED" in (tmp_path / "gpu_check.md").read_text()
