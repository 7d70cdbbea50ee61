"""What a plain `pip install` gets: the configs and the registry index travel inside the wheel."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_ships_every_config_and_the_registry_index(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
                           "-q", "-w", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    wheel = next(tmp_path.glob("alignkit-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = ROOT / "src" / "alignkit" / "configs"
    shipped = {f"alignkit/configs/{p.relative_to(configs).as_posix()}" for p in configs.rglob("*.yaml")}
    assert len(shipped) >= 20 and shipped <= names, sorted(shipped - names)
    assert "alignkit/registry_index.json" in names
    assert not any(n.startswith(("tests/", "configs/")) for n in names)
