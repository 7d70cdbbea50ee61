"""The configs that start from imported open_clip towers run one training step on the tiny open_clip fixtures:
core/clip_finetune_openclip, core/siglip_finetune_openclip and medical/echo_echoclip."""
from __future__ import annotations

from pathlib import Path
from typing import List

import pytest

import alignkit.core.importing.open_clip  # noqa: F401  (registers open-clip and its towers)
from alignkit.core.config import configs_dir, load_config
from alignkit.core.importing import import_weights
from alignkit.core.registry import ENCODERS
from alignkit.core.runner import train

def _config_runner():
    """tests/test_configs_run.py as a module (its one-process overrides and CPU precision rule)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("_configs_run", Path(__file__).resolve().parents[1] /
                                                  "test_configs_run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_RUNNER = _config_runner()
SINGLE_PROCESS, cpu_precision = _RUNNER.SINGLE_PROCESS, _RUNNER.cpu_precision
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "open_clip"
BPE = str(FIXTURES / "bpe_tiny.txt.gz")


def _run(config: str, overrides: List[str], tmp_path: Path) -> None:
    path = configs_dir() / f"{config}.yaml"
    cfg = load_config(path, overrides + SINGLE_PROCESS + cpu_precision(path) + [f"out_dir={tmp_path}"])
    result = train(cfg)
    assert result["trainer"].global_step == 1
    assert (result["run_dir"] / "metrics.json").is_file()


@pytest.mark.parametrize("config, fixture, embed_dim", [("core/clip_finetune_openclip", "vit_tok", 16),
                                                        ("core/siglip_finetune_openclip", "vit_avg", 32)])
def test_clip_configs_from_imported_open_clip_run_one_step(config, fixture, embed_dim, shapes_tiny, tmp_path):
    options = {"model_config": str(FIXTURES / "vit_tok" / "model_config.json")} if fixture == "vit_tok" else {}
    src = FIXTURES / fixture / ("epoch_1.pt" if fixture == "vit_tok" else "open_clip_model.safetensors")
    out = import_weights("open-clip", src, tmp_path / "imported", tokenizer=BPE, **options)
    _run(config, [f"model.embed_dim={embed_dim}", f"model.towers.image.params.path={out / 'towers' / 'image'}",
                  f"model.towers.text.params.path={out / 'towers' / 'text'}", f"data.params.root={shapes_tiny}",
                  "data.params.image_size=32"], tmp_path / "run")


def test_echoclip_config_from_imported_convnext_runs_one_step(tmp_path):
    import alignkit.domains.medical.echo.encoders  # noqa: F401  (registers the echo video towers)
    assert "echo-frames" in ENCODERS.names()  # the frame-by-frame video tower medical/echo_echoclip names
    from alignkit.domains.medical.echo.synthetic.archive import write_synthetic_echo
    root = write_synthetic_echo(tmp_path / "echo", 6, image_size=32, frames=12, split_fractions=(0.5, 0.25, 0.25))
    out = import_weights("open-clip", FIXTURES / "convnext", tmp_path / "imported", tokenizer=BPE)
    _run("medical/echo_echoclip", [
        "model.embed_dim=16", f"model.towers.video.params.image_encoder.params.path={out / 'towers' / 'image'}",
        f"model.towers.text.params.path={out / 'towers' / 'text'}", f"data.params.root={root}",
        "data.params.image_size=32", "data.params.num_frames=4"], tmp_path / "run")
