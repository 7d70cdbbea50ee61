"""Config values of the point-cloud constructors are checked against their annotations when a config is loaded.

Every shipped point-cloud config loads as it is; a value outside a parameter's range or choices is a
``ConfigError`` naming the key, the value and what is allowed. The datasets' shared parameters
(:func:`~alignkit.domains.pointcloud.data.point_dataset_params`) are checked like their own.
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Callable

import pytest

from alignkit.core.config import configs_dir, list_configs, load_config
from alignkit.core.params import resolved_hints
from alignkit.core.registry import REGISTRIES, ConfigError
from alignkit.domains.pointcloud.data import point_dataset_params

CONFIGS = configs_dir() / "pointcloud"
PACKAGE = "alignkit.domains.pointcloud"  # its registered constructors: registered_constructor (tests/domains/conftest.py)
ROOT = ["data.params.root=/data"]  # loading checks values, it reads no data


def test_the_pointcloud_configs_are_found() -> None:
    assert len(list_configs(CONFIGS)) >= 6


@pytest.mark.parametrize("path", list_configs(CONFIGS), ids=lambda p: p.name)
def test_every_shipped_config_loads(path: Path) -> None:
    cfg = load_config(path, ROOT)
    assert cfg.data.params.root == "/data"


def test_defaults_fit_their_annotations(registered_constructor: tuple, assert_defaults_fit: Callable) -> None:
    assert_defaults_fit(registered_constructor)


@pytest.mark.parametrize("name", ["modelnet40", "shapenet55", "scanobjectnn", "point-folder"])
def test_every_point_dataset_checks_the_shared_parameters(name: str) -> None:
    hints = resolved_hints(REGISTRIES["dataset"].get(name).__init__)
    assert set(inspect.signature(point_dataset_params).parameters) <= set(hints)
    with pytest.raises(ConfigError, match=r"data.params.num_views = 0 for dataset .*>= 1"):
        REGISTRIES["dataset"].check_params(name, {"root": "/data", "num_views": 0}, "data.params")


BAD_VALUES = [
    # config, override, the key in the message, the value as printed, what is allowed
    ("ulip_demo_stage2.yaml", "data.params.num_points=0", "data.params.num_points", "0", ">= 1"),
    ("ulip_demo_stage2.yaml", "data.params.features=rgb", "data.params.features", "'rgb'",
     "one of 'none', 'normals', 'colors', 'normals+colors'"),
    ("ulip_demo_stage1.yaml", "data.params.caption_templates=shapenet64", "data.params.caption_templates",
     "'shapenet64'", "one of 'modelnet40_64', 'shapenet_64', 'point_cloud_1'"),
    ("ulip2_pointnet2.yaml", "data.params.image_kinds=[shaded,normal]", "data.params.image_kinds",
     "['shaded', 'normal']", "one of 'shaded', 'depth'"),
    ("ulip_demo_stage1.yaml", "data.params.dropout=1.0", "data.params.dropout", "1.0", ">= 0 and < 1"),
    ("ulip_demo_stage1.yaml", "data.params.up_axis=w", "data.params.up_axis", "'w'", "one of 'x', 'y', 'z'"),
    ("ulip2_pointbert.yaml", "data.params.layout=meshes", "data.params.layout", "'meshes'",
     "one of 'auto', 'mesh', 'resampled'"),
    ("text4point_demo_pretrain.yaml", "data.params.depth_scale=0", "data.params.depth_scale", "0", "> 0"),
    ("text4point_demo_seg.yaml", "data.params.num_points=-1", "data.params.num_points", "-1", ">= 1"),
    ("ulip2_pointnet2.yaml", "model.towers.points.params.radii=[0.2,-0.4]", "model.towers.points.params.radii",
     "[0.2, -0.4]", "> 0"),
    ("ulip2_pointbert.yaml", "model.towers.points.params.num_groups=0", "model.towers.points.params.num_groups",
     "0", ">= 1"),
    ("ulip2_pointbert.yaml", "model.towers.points.params.dropout=1.5", "model.towers.points.params.dropout",
     "1.5", ">= 0 and < 1"),
    ("text4point_demo_pretrain.yaml", "model.towers.image.params.pool=max", "model.towers.image.params.pool",
     "'max'", "one of 'avg', 'avgmax'"),
    ("text4point_demo_pretrain.yaml", "model.params.num_pairs=1", "model.params.num_pairs", "1", ">= 2"),
    ("text4point_demo_seg.yaml", "model.params.init_temperature=0", "model.params.init_temperature", "0", "> 0"),
    ("ulip_demo_stage2.yaml", "eval.0.params.templates=modelnet40", "eval[0].params.templates", "'modelnet40'",
     "one of 'modelnet40_64', 'shapenet_64', 'point_cloud_1'"),
    ("ulip2_pointbert.yaml", "eval.2.params.lr=0", "eval[2].params.lr", "0", "> 0"),
    ("ulip2_pointbert.yaml", "eval.2.params.epochs=0", "eval[2].params.epochs", "0", ">= 1"),
    ("text4point_demo_seg.yaml", "eval.0.params.plot_clouds=-1", "eval[0].params.plot_clouds", "-1", ">= 0"),
]


@pytest.mark.parametrize("config, override, key, shown, allowed", BAD_VALUES,
                         ids=[f"{c[0].split('.')[0]}:{c[1]}" for c in BAD_VALUES])
def test_a_bad_value_names_key_value_and_what_is_allowed(config: str, override: str, key: str, shown: str,
                                                          allowed: str, assert_refused: Callable) -> None:
    assert_refused(CONFIGS / config, [*ROOT, override], key, shown, allowed)
