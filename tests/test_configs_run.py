"""Every config in configs/ instantiates and runs one training step on tiny data (fast_dev_run)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Dict, List

import pytest
import torch

from alignkit.core.config import configs_dir, list_configs, load_config
from alignkit.core.runner import train

CONFIGS = configs_dir()
TINY_IMAGE = 64  # frames of the tiny robotics datasets at most this side

def lerobot_tiny(request: pytest.FixtureRequest) -> List[str]:
    """A synthetic LeRobot dataset shaped as the config's model reads it (cameras, image size, state, actions) and,
    for a policy over a pretrained Voltron export, a small random export of that image size."""
    from omegaconf import OmegaConf
    from alignkit.domains.robotics.models.voltron import VoltronEncoder
    from alignkit.domains.robotics.synthetic import write_synthetic_lerobot
    cfg = OmegaConf.load(request.node.callspec.params["path"])
    tmp, params = request.getfixturevalue("tmp_path"), cfg.model.params
    size = int(cfg.data.params.get("image_size") or params.get("image_size") or params.get("img_size") or TINY_IMAGE)
    shrink = []
    if size > TINY_IMAGE:  # GPU configs (224 px) run their step on tiny frames, as the X-ray ResNet-50 configs do
        size = TINY_IMAGE
        shrink = [f"{key}={size}" for key, value in (("data.params.image_size", cfg.data.params.get("image_size")),
                                                     ("model.params.image_size", params.get("image_size")),
                                                     ("model.params.img_size", params.get("img_size")))
                  if value is not None]
    cameras = list(params.get("cameras") or ["image"])
    root = write_synthetic_lerobot(tmp / "lerobot", 3, 6, cameras=cameras, image_size=size,
                                   state_dim=int(params.get("state_dim", 2)),
                                   action_dim=int(params.get("action_dim", 2)),
                                   num_actions=int(params.get("num_actions", 0)))
    overrides = [f"data.params.root={root}", *shrink]
    encoder = params.get("image_encoder")
    if OmegaConf.is_dict(encoder) and encoder.name == "voltron-pretrained":
        patch = 16 if size >= 128 else 8
        export = VoltronEncoder(img_size=size, patch_size=patch, width=16, depth=1, heads=2).export(tmp / "voltron")
        overrides.append(f"model.params.image_encoder.params.path={export}")
    return overrides


def paired_csv_tiny(request: pytest.FixtureRequest) -> List[str]:
    """The tiny shapes dataset; a ViT image tower of a GPU config (224 px) reads it at two patches a side, as the
    robotics and X-ray GPU configs run their step on tiny frames (architecture and loss unchanged)."""
    from omegaconf import OmegaConf
    cfg = OmegaConf.load(request.node.callspec.params["path"])
    overrides = [f"data.params.root={request.getfixturevalue('shapes_tiny')}"]
    for name, tower in cfg.model.towers.items():
        if tower.encoder == "monai-vit" and int(tower.params.get("img_size", 0)) > TINY_IMAGE:
            side = 2 * int(tower.params.patch_size)
            overrides += [f"model.towers.{name}.params.img_size={side}", f"data.params.image_size={side}"]
    return overrides


# tiny-data overrides per dataset name: each returns `--set` items pointing the config at tiny inputs
TINY_DATA: Dict[str, Callable[[pytest.FixtureRequest], List[str]]] = {
    "paired-csv": lambda request: paired_csv_tiny(request),
    "cxr": lambda request: [f"data.params.root={request.getfixturevalue('cxr_tiny')}", "data.params.image_size=64"],
    "echo-studies": lambda request: [f"data.params.root={__import__('alignkit.domains.medical.echo.synthetic.archive', fromlist=['_']).write_synthetic_echo(request.getfixturevalue('tmp_path') / 'echo', 6, image_size=32, frames=12, split_fractions=(0.5, 0.25, 0.25))}", "data.params.image_size=32", "data.params.num_frames=4"],
    "modelnet40": lambda request: [f"data.params.root={__import__('alignkit.domains.pointcloud.synthetic', fromlist=['_']).write_synthetic_modelnet(request.getfixturevalue('tmp_path') / 'modelnet', 1, 1).root}", "data.params.num_points=1024", "data.params.surface_points=2048", "data.params.image_size=32", "data.params.num_views=2", f"data.params.cache_dir={request.getfixturevalue('tmp_path') / 'cache'}"],
    "lerobot": lerobot_tiny,
    "rgbd-frames": lambda request: [f"data.params.root={__import__('alignkit.domains.pointcloud.rgbd.synthetic', fromlist=['_']).write_synthetic_scenes(request.getfixturevalue('tmp_path') / 'scenes', 4, 4, image_size=32, split_fractions=(3, 0, 1)).root}", "data.params.num_points=256"],
}

# one step on one CPU process; the config's model, losses, optimiser and precision stay as published
SINGLE_PROCESS = ["trainer.fast_dev_run=true", "trainer.accelerator=cpu", "trainer.devices=1",
                  "trainer.strategy=auto", "trainer.num_nodes=1", "data.batch_size=8", "data.num_workers=0",
                  "trainer.enable_progress_bar=false", "data.shards=null"]


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16/AMX); elsewhere PyTorch emulates it, and one bf16-mixed
    step of a ViT-L takes minutes where float32 takes seconds."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cpu_precision(path: Path) -> List[str]:
    """A GPU config's bf16-mixed steps in float32 on a CPU that would emulate bf16: the published architecture at
    full width and depth still builds and steps; `test_bf16_config_runs_one_step_narrow` keeps bf16-mixed."""
    from omegaconf import OmegaConf
    precision = str(OmegaConf.load(path).trainer.get("precision", "32-true"))
    return ["trainer.precision=32-true"] if precision.startswith("bf16") and not native_bf16() else []


ONE_STEP_TEST = "# one-step test: "
"""Header line of a config that starts from released weights (`encoder: imported`): the test that imports a tiny
anchor-made fixture of those weights and runs the config for one step (the fixture belongs to the format's tests)."""


def released_weights_test(path: Path) -> str:
    """The test file named by the config's ``# one-step test:`` line ('' for a config that imports nothing)."""
    lines = [line for line in path.read_text().splitlines() if line.startswith(ONE_STEP_TEST)]
    return lines[0][len(ONE_STEP_TEST):].strip() if lines else ""


def _released(path: Path) -> bool:
    """A config over imported weights: an ``imported`` tower, or a ``# one-step test:`` line (a policy over an
    imported encoder through its own loader)."""
    text = path.read_text()
    return "encoder: imported" in text or "name: imported" in text or ONE_STEP_TEST in text


def _config_ids() -> List[Path]:
    """Run configs; bench configs (under a `bench/` folder) are run by test_bench_config_runs, configs that start
    from imported weights by the test their header names (test_released_weight_configs_have_their_test)."""
    return [p for p in list_configs(CONFIGS) if "bench" not in p.relative_to(CONFIGS).parts and not _released(p)]


def _released_ids() -> List[Path]:
    return [p for p in list_configs(CONFIGS) if _released(p)]


@pytest.mark.parametrize("path", _released_ids(), ids=lambda p: str(p.relative_to(CONFIGS)))
def test_released_weight_configs_have_their_test(path: Path) -> None:
    """Each config over imported towers names a test that exists and runs it (by its shipped name)."""
    named = released_weights_test(path)
    assert named, f"{path}: starts from imported weights; name its one-step test in a '{ONE_STEP_TEST}FILE' line"
    test_file = Path(__file__).parent.parent / named
    assert test_file.is_file(), f"{path}: its one-step test {test_file} does not exist"
    assert path.stem in test_file.read_text(), f"{test_file} does not run {path.stem}"


def _bench_ids() -> List[Path]:
    return [p for p in list_configs(CONFIGS) if "bench" in p.relative_to(CONFIGS).parts]


def test_there_are_configs() -> None:
    assert len(_config_ids()) >= 4


@pytest.mark.parametrize("path", _config_ids(), ids=lambda p: str(p.relative_to(CONFIGS)))
def test_config_runs_one_step(path: Path, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    from omegaconf import OmegaConf
    dataset = OmegaConf.load(path).data.dataset
    assert dataset in TINY_DATA, f"{path}: add a tiny-data fixture for dataset '{dataset}' to TINY_DATA"
    overrides = TINY_DATA[dataset](request) + SINGLE_PROCESS + cpu_precision(path) + [f"out_dir={tmp_path}"]
    cfg = load_config(path, overrides)
    result = train(cfg)
    assert result["trainer"].global_step == 1
    assert (result["run_dir"] / "metrics.json").is_file()
    assert (result["run_dir"] / "config.yaml").is_file()


# narrow widths for the generic towers of the core GPU configs: their objectives, EMA, heads and precision unchanged
NARROW = {"monai-vit": {"hidden_size": 32, "mlp_dim": 64, "num_layers": 1, "num_heads": 2},
          "hf-text": {"config.hidden_size": 32, "config.num_hidden_layers": 1, "config.num_attention_heads": 2,
                      "config.intermediate_size": 64}}


def _bf16_ids() -> List[Path]:
    from omegaconf import OmegaConf
    return [p for p in _config_ids() if p.relative_to(CONFIGS).parts[0] == "core"
            and str(OmegaConf.load(p).trainer.get("precision", "")).startswith("bf16")]


@pytest.mark.parametrize("path", _bf16_ids(), ids=lambda p: str(p.relative_to(CONFIGS)))
def test_bf16_config_runs_one_step_narrow(path: Path, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """The bf16-mixed step of each core GPU config (its losses, EMA and ITM heads under autocast), towers narrowed."""
    from omegaconf import OmegaConf
    cfg = OmegaConf.load(path)
    narrow = [f"model.towers.{name}.params.{key}={value}" for name, tower in cfg.model.towers.items()
              for key, value in NARROW[tower.encoder].items()]
    overrides = TINY_DATA[cfg.data.dataset](request) + SINGLE_PROCESS + narrow + [f"out_dir={tmp_path}"]
    loaded = load_config(path, overrides)
    assert str(loaded.trainer.precision).startswith("bf16")
    result = train(loaded)
    assert result["trainer"].global_step == 1
    losses = json.loads((result["run_dir"] / "metrics.json").read_text())
    assert losses and all(v == v for v in losses.values() if isinstance(v, float)), losses


# bench configs: every method trains one step on tiny data, then a one-seed, one-epoch BenchX pass
TINY_BENCHX = ["benchx.fractions=[1.0]", "benchx.seeds=[0]", "benchx.epochs=1", "benchx.segmentation_epochs=1",
               "benchx.generation_epochs=1", "benchx.num_candidates=4", "benchx.batch_size=8"]


@pytest.mark.parametrize("path", _bench_ids(), ids=lambda p: str(p.relative_to(CONFIGS)))
def test_bench_config_runs(path: Path, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    from alignkit.core.registry import BENCHES
    from omegaconf import OmegaConf
    bench = OmegaConf.load(path).bench
    per_method = TINY_DATA["cxr"](request) + SINGLE_PROCESS
    result = BENCHES.get(bench)(path, [f"overrides={per_method!r}".replace("'", '"'), f"out_dir={tmp_path}",
                                      *TINY_BENCHX])
    written = json.loads(next(tmp_path.rglob("benchx.json")).read_text())
    assert result.table.to_markdown() and written
