"""The import framework: a released checkpoint (here a toy format whose keys are renamed, as every real format's
are) becomes a model folder that alignkit.load reads, a tower a config starts from, and a model `alignkit eval`
evaluates; keys or shapes that do not fit are listed, never loaded partially unless asked."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

import alignkit
from alignkit.cli import main
from alignkit.core.config import configs_dir
from alignkit.core.encoders.base import build_encoder
from alignkit.core.importing import (ImportedModel, ImportedTower, WeightMismatchError, import_weights,
                                     load_imported_tower, match_state_dict)
from alignkit.core.registry import IMPORTERS

CNN = {"in_channels": 3, "widths": [8, 16], "convs_per_stage": 1, "pool": "avg"}


@IMPORTERS.register("toy-twin")
def import_toy(src: Path, *, allow_partial: bool = False, scale: float = 10.0) -> ImportedModel:
    """A toy published layout: ``visual.<key>`` and ``sketch.<key>`` of two small CNNs, plus a ``proj`` matrix
    (out, in) of the visual tower, and ``logit_scale``."""
    raw = load_file(str(src))
    towers = {}
    for name, prefix in (("image", "visual."), ("sketch", "sketch.")):
        state = {k[len(prefix):]: v for k, v in raw.items() if k.startswith(prefix)}
        towers[name] = ImportedTower("small-cnn", dict(CNN), state, preprocessing={"image_size": 32, "mean": [0.5] * 3,
                                                                                   "std": [0.25] * 3})
    towers["image"].head, towers["image"].head_params = "linear", {"bias": False}
    towers["image"].head_state = {"weight": raw["proj"]}
    towers["sketch"].head = "linear"
    towers["sketch"].head_params = {"bias": False}
    towers["sketch"].head_state = {"weight": raw["sketch_proj"]}
    return ImportedModel("toy-twin", str(src), towers, embed_dim=raw["proj"].shape[0], loss="clip",
                         loss_params={"init_temperature": float(1 / raw["logit_scale"].exp())},
                         notes=[f"toy format, scale {scale!r}"])


def _toy_checkpoint(path: Path, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    visual, sketch = build_encoder("small-cnn", **CNN), build_encoder("small-cnn", **CNN)
    raw = {**{f"visual.{k}": v for k, v in visual.state_dict().items()},
           **{f"sketch.{k}": v for k, v in sketch.state_dict().items()},
           "proj": torch.randn(24, visual.output_dim), "sketch_proj": torch.randn(24, sketch.output_dim),
           "logit_scale": torch.tensor(2.5)}
    save_file({k: v.contiguous() for k, v in raw.items()}, str(path))
    return {"visual": visual.eval(), "sketch": sketch.eval(), **raw}


def test_imported_folder_reproduces_the_checkpoint(tmp_path: Path) -> None:
    ref = _toy_checkpoint(tmp_path / "toy.safetensors")
    out = import_weights("toy-twin", tmp_path / "toy.safetensors", tmp_path / "out")
    x = torch.rand(3, 3, 32, 32)
    expected = torch.nn.functional.normalize(ref["visual"](x) @ ref["proj"].T, dim=-1)
    model = alignkit.load(out)
    assert torch.allclose(model.embed("image", x), expected, atol=1e-5)
    tower = load_imported_tower(str(out / "towers" / "image"))  # the encoder + its imported projection
    assert tower.output_dim == 24
    assert torch.allclose(torch.nn.functional.normalize(tower.eval()(x), dim=-1), expected, atol=1e-5)
    assert torch.allclose(model.module.losses[0].logit_scale, torch.tensor(2.5), atol=1e-6)
    report = json.loads((out / "import.json").read_text())
    assert report["format"] == "toy-twin" and report["left"] == [] and report["notes"] == ["toy format, scale 10.0"]
    assert len(report["files"]["toy.safetensors"]) == 64  # sha256 of the source
    assert report["preprocessing"]["image"]["image_size"] == 32
    assert model.preprocess == {"image_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3}


def test_mismatched_checkpoint_lists_keys_and_loads_nothing_unless_partial(tmp_path: Path) -> None:
    _toy_checkpoint(tmp_path / "toy.safetensors")
    raw = load_file(str(tmp_path / "toy.safetensors"))
    key = next(k for k in raw if k.startswith("visual.") and k.endswith("weight") and raw[k].dim() == 4)
    raw.pop(key)
    raw["visual.extra.weight"] = torch.zeros(2)
    shaped = next(k for k in raw if k.startswith("sketch.") and raw[k].dim() == 4)
    raw[shaped] = torch.zeros(1, 1, 1, 1)
    save_file(raw, str(tmp_path / "bad.safetensors"))
    with pytest.raises(WeightMismatchError) as err:
        import_weights("toy-twin", tmp_path / "bad.safetensors", tmp_path / "out")
    text = str(err.value)
    assert "bad.safetensors" in text and key[len("visual."):] in text and "extra.weight" in text
    assert "1 missing, 1 unexpected, 0 mis-shaped" in text
    assert not (tmp_path / "out" / "model.safetensors").exists()
    out = import_weights("toy-twin", tmp_path / "bad.safetensors", tmp_path / "partial", allow_partial=True)
    left = json.loads((out / "import.json").read_text())["left"]
    assert f"image.encoder.{key[len('visual.'):]}" in left and "image.encoder.extra.weight" in left
    assert f"sketch.encoder.{shaped[len('sketch.'):]}" in left


def test_match_state_dict_names_shapes() -> None:
    module = torch.nn.Linear(4, 3)
    with pytest.raises(WeightMismatchError, match=r"weight: checkpoint \(3, 5\) vs model \(3, 4\)"):
        match_state_dict(module, {"weight": torch.zeros(3, 5), "bias": torch.zeros(3)}, source="ckpt.pt")
    before = module.weight.detach().clone()
    left = match_state_dict(module, {"weight": torch.zeros(3, 5), "bias": torch.ones(3)}, source="ckpt.pt",
                            allow_partial=True)
    assert left == ["weight"] and torch.equal(module.weight, before) and torch.equal(module.bias, torch.ones(3))


def test_cli_imports_and_a_config_trains_from_the_imported_tower(tmp_path: Path, shapes_tiny: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    _toy_checkpoint(tmp_path / "toy.safetensors")
    assert main(["import-weights", "toy-twin", str(tmp_path / "toy.safetensors"), "--out", str(tmp_path / "out"),
                 "scale=2.0"]) == 0
    printed = capsys.readouterr().out
    assert "note: toy format, scale 2.0" in printed and "encoder: imported" in printed
    tower = tmp_path / "out" / "towers" / "image"
    cfg = OmegaConf.load(configs_dir() / "core" / "shapes_demo.yaml")
    cfg.model.towers.image = {"encoder": "imported", "params": {"path": str(tower)}, "head": "linear"}
    OmegaConf.save(cfg, tmp_path / "from_imported.yaml")
    assert main(["train", "-c", str(tmp_path / "from_imported.yaml"), f"data.params.root={shapes_tiny}",
                 f"out_dir={tmp_path}", "name=from-imported", "trainer.max_steps=2", "data.batch_size=16",
                 "trainer.val_check_interval=null", "trainer.limit_val_batches=1",
                 "trainer.enable_progress_bar=false", "eval=[]"]) == 0
    assert main(["import-weights", "toy-twin", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "x")]) == 2
    assert "missing.pt does not exist" in capsys.readouterr().err


def test_eval_of_a_model_folder_without_training(tmp_path: Path, shapes_tiny: Path, exported_tiny_model: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    assert main(["eval", "-c", "core/shapes_demo", "--model", str(exported_tiny_model), "--out", str(tmp_path),
                 f"data.params.root={shapes_tiny}", "eval.0.params.num_candidates=20",
                 "data.params.image_size=48"]) == 0
    printed = capsys.readouterr().out
    assert "data.params.image_size: 48 -> 32 (the model folder's preprocessing)" in printed
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert any(k.startswith("retrieval") or "R@" in k for k in metrics), metrics
    with pytest.raises(SystemExit):  # neither --ckpt nor --model
        main(["eval", "-c", "core/shapes_demo", f"data.params.root={shapes_tiny}"])
