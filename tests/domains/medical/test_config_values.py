"""Config values of the medical constructors are checked against their annotations when a config is loaded.

Every shipped medical config (and every method config of the bench configs) loads as it is; a value outside a
parameter's range or choices is a ``ConfigError`` naming the key, the value and what is allowed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, List

import pytest

from alignkit.core.config import configs_dir, list_configs, load_config
from alignkit.domains.medical.xray.bench.run import load_bench_config

CONFIGS = configs_dir() / "medical"
PACKAGE = "alignkit.domains.medical"  # its registered constructors: registered_constructor (tests/domains/conftest.py)
ROOT = ["data.params.root=/data"]  # loading checks values, it reads no data


def _run_configs() -> List[Path]:
    return [p for p in list_configs(CONFIGS) if "bench" not in p.relative_to(CONFIGS).parts]


def _bench_configs() -> List[Path]:
    return [p for p in list_configs(CONFIGS) if "bench" in p.relative_to(CONFIGS).parts]


def test_the_medical_configs_are_found() -> None:
    assert len(_run_configs()) >= 6 and len(_bench_configs()) >= 2


def weight_paths(path: Path) -> List[str]:
    """Overrides for the unset weight folders of a config over released weights (``...params.path: ???`` of its
    imported towers and local BERT folders): loading checks values, it reads no weights."""
    from omegaconf import OmegaConf
    missing = OmegaConf.missing_keys(OmegaConf.load(path))
    return [f"{key}=/weights" for key in sorted(missing) if key.startswith("model.") and key.endswith(".path")]


@pytest.mark.parametrize("path", _run_configs(), ids=lambda p: p.name)
def test_every_shipped_config_loads(path: Path) -> None:
    cfg = load_config(path, ROOT + weight_paths(path))
    assert cfg.data.params.root == "/data"
    if "released" in path.stem or "echoclip" in path.stem:
        assert weight_paths(path), f"{path.name}: its weight folders are to be given by the user (???)"


@pytest.mark.parametrize("path", _bench_configs(), ids=lambda p: p.name)
def test_every_method_of_a_bench_config_loads(path: Path) -> None:
    bench = load_bench_config(path, ['overrides=["data.params.root=/data"]'])
    for name, method in bench.methods.items():
        config = Path(method.config) if Path(method.config).is_file() else configs_dir() / method.config
        cfg = load_config(config, [*bench.overrides, *method.overrides, *bench.eval_overrides])
        assert cfg.data.params.root == "/data", name


def test_defaults_fit_their_annotations(registered_constructor: tuple, assert_defaults_fit: Callable) -> None:
    assert_defaults_fit(registered_constructor)


BAD_VALUES = [
    # config, override, the key in the message, the value as printed, what is allowed
    ("xray_demo_convirt.yaml", "data.params.layout=mimc", "data.params.layout", "'mimc'",
     "one of 'mimic', 'chexpert', 'nih', 'csv'"),
    ("xray_demo_convirt.yaml", "data.params.image_size=0", "data.params.image_size", "0", ">= 1"),
    ("convirt_resnet50.yaml", "data.params.uncertain=maybe", "data.params.uncertain", "'maybe'",
     "one of 'ignore', 'zeros', 'ones'"),
    ("xray_demo_gloria.yaml", "data.params.report_rule=every", "data.params.report_rule", "'every'",
     "one of 'any', 'first', 'all'"),
    ("xray_demo_gloria.yaml", "data.params.window=bone", "data.params.window", "'bone'",
     "one of 'auto', 'none', 'minmax'"),
    ("xray_demo_gloria.yaml", "data.params.std=0", "data.params.std", "0", "> 0"),
    ("xray_demo_gloria.yaml", "model.params.temp2=0", "model.params.temp2", "0", "> 0"),
    ("gloria_resnet50.yaml", "model.params.local_batch=1", "model.params.local_batch", "1", ">= 2"),
    ("xray_demo_gloria.yaml", "model.params.local_weight=-0.5", "model.params.local_weight", "-0.5", ">= 0"),
    ("echo_demo.yaml", "data.params.clip_start=middle", "data.params.clip_start", "'middle'",
     "one of 'auto', 'random', 'centre', 'first'"),
    ("echo_demo.yaml", "data.params.channels=2", "data.params.channels", "2", "one of 1, 3"),
    ("echo_demo.yaml", "data.params.num_frames=0", "data.params.num_frames", "0", ">= 1"),
    ("echo_echoprime.yaml", "data.params.beat_seconds=0", "data.params.beat_seconds", "0", "> 0"),
    ("echo_echoprime.yaml", "data.params.report_sections=[findings,summary]", "data.params.report_sections",
     "['findings', 'summary']", "one of 'left atrium', 'right atrium'"),
    ("echo_demo.yaml", "model.towers.video.params.pool=max", "model.towers.video.params.pool", "'max'",
     "one of 'mean', 'mean_std'"),
    ("echo_demo.yaml", "model.towers.video.params.temporal_smoothing=0",
     "model.towers.video.params.temporal_smoothing", "0", ">= 1"),
    ("echo_demo.yaml", "model.params.view_weight=-1.0", "model.params.view_weight", "-1.0", ">= 0"),
    ("echo_demo.yaml", "model.params.section_pool=words", "model.params.section_pool", "'words'",
     "one of 'embeddings', 'features'"),
    ("echo_demo.yaml", "eval.0.params.k=0", "eval[0].params.k", "0", ">= 1"),
    ("echo_echoprime.yaml", "eval.0.params.ks=[1,0]", "eval[0].params.ks", "[1, 0]", ">= 1"),
]


@pytest.mark.parametrize("config, override, key, shown, allowed", BAD_VALUES, ids=[c[1] for c in BAD_VALUES])
def test_a_bad_value_names_key_value_and_what_is_allowed(config: str, override: str, key: str, shown: str,
                                                          allowed: str, assert_refused: Callable) -> None:
    assert_refused(CONFIGS / config, [*ROOT, override], key, shown, allowed)


@pytest.mark.parametrize("kind, name, params, allowed", [
    ("encoder", "echo-video-vit", {"dropout": 1.0}, ">= 0 and < 1"),
    ("encoder", "echo-video-vit", {"pool": "max"}, "one of 'mean', 'mean_std'"),
    ("loss", "gloria_local", {"temp3": -1.0}, "> 0"),
    ("dataset", "echonet", {"short_clips": "pad"}, "one of 'repeat', 'loop', 'skip'"),
])
def test_constructors_no_shipped_config_uses_are_checked_too(kind: str, name: str, params: dict, allowed: str,
                                                              assert_params_refused: Callable) -> None:
    assert_params_refused(kind, name, params, allowed)
