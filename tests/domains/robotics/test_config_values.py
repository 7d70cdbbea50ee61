"""Config values of the robotics constructors are checked against their annotations when a config is loaded.

Every shipped robotics config loads as it is, and so do the values the constructors handle on purpose (a null
``image_size``, ``state_dim: 0``, ``patch_positions: false``, ...); a value outside a parameter's range or
choices is a ``ConfigError`` naming the key, the value and what is allowed. Environment specs (``EnvSpec``, the
``env`` mappings of ``alignkit collect`` and the demo) are checked the same way when they are made.
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Callable, List

import pytest

from alignkit.core.config import configs_dir, list_configs, load_config
from alignkit.core.params import check_value, resolved_hints
from alignkit.core.registry import REGISTRIES, ConfigError, registry_index
from alignkit.domains.robotics.envs import as_env_spec

CONFIGS = configs_dir() / "robotics"
PACKAGE = "alignkit.domains.robotics"  # its registered constructors: registered_constructor (tests/domains/conftest.py)
ROOT = ["data.params.root=/data"]  # loading checks values, it reads no data
EXPORT = "model.params.image_encoder.params.path=/voltron-export"  # the policies' frozen encoder (never opened)
ENV_NAMES = sorted(name for name, module in registry_index().get("environment", {}).items()
                   if module.startswith(PACKAGE))


def overrides(path: Path, *extra: str) -> List[str]:
    """What a shipped config needs to load (its ``???`` values) plus ``extra``."""
    needs_export = "image_encoder" in path.read_text() and "path: ???" in path.read_text()
    return [*ROOT, *([EXPORT] if needs_export else []), *extra]


def test_the_robotics_configs_are_found() -> None:
    assert len(list_configs(CONFIGS)) >= 10 and len(ENV_NAMES) >= 4


@pytest.mark.parametrize("path", list_configs(CONFIGS), ids=lambda p: p.name)
def test_every_shipped_config_loads(path: Path) -> None:
    cfg = load_config(path, overrides(path))
    assert cfg.data.params.root == "/data"


def test_defaults_fit_their_annotations(registered_constructor: tuple, assert_defaults_fit: Callable) -> None:
    assert_defaults_fit(registered_constructor)


@pytest.mark.parametrize("name", ENV_NAMES)
def test_env_defaults_fit_their_annotations(name: str, assert_defaults_fit: Callable) -> None:
    assert_defaults_fit(("environment", name))


@pytest.mark.parametrize("kind, name", [*[("model", n) for n in ("voltron", "gr1", "lcbc")],
                                        ("encoder", "voltron"), ("encoder", "voltron-pretrained"),
                                        ("dataset", "lerobot"), *[("environment", n) for n in ENV_NAMES]])
def test_every_annotation_is_read(kind: str, name: str) -> None:
    """An annotation that cannot be evaluated in its module is skipped by the check: none may be."""
    obj = REGISTRIES[kind].get(name)
    fn = obj.__init__ if inspect.isclass(obj) else obj
    assert set(resolved_hints(fn)) == set(fn.__annotations__)


ACCEPTED = [
    # values the constructors handle on purpose: they load
    ("voltron_vcond_vits.yaml", "data.params.image_size=null"),  # native frame size
    ("voltron_vcond_vits.yaml", "data.params.image_size=[224,160]"),  # (H, W)
    ("voltron_vcond_vits.yaml", "data.params.holdout=null"),
    ("voltron_vcond_vits.yaml", "model.params.mask_ratio=0.0"),
    ("voltron_vgen_vits.yaml", "model.params.gen_ratio=1.0"),
    ("voltron_vgen_vits.yaml", "model.params.lm_weight=0.0"),
    ("gr1_bridge.yaml", "model.params.patch_positions=false"),
    ("gr1_bridge.yaml", "model.params.patch_positions=learned"),
    ("gr1_bridge.yaml", "model.params.state_dim=0"),  # no state token
    ("gr1_bridge.yaml", "model.params.frame_weight=0"),
    ("gr1_bridge.yaml", "model.params.num_obs_queries=null"),  # num_latents + 1
    ("demo_babyai_gr1.yaml", "model.params.gripper_threshold=-0.5"),
    ("lcbc_bridge.yaml", "model.params.num_actions=0"),  # continuous actions
]


@pytest.mark.parametrize("config, override", ACCEPTED, ids=[c[1] for c in ACCEPTED])
def test_values_the_code_handles_on_purpose_load(config: str, override: str) -> None:
    load_config(CONFIGS / config, overrides(CONFIGS / config, override))


BAD_VALUES = [
    # config, override, the key in the message, the value as printed, what is allowed
    ("demo_babyai_voltron.yaml", "data.params.window=0", "data.params.window", "0", ">= 1"),
    ("voltron_vcond_vits.yaml", "data.params.image_size=0", "data.params.image_size", "0", ">= 1"),
    ("lcbc_bridge.yaml", "data.params.split_seed=-1", "data.params.split_seed", "-1", ">= 0"),
    ("demo_metaworld_voltron.yaml", "model.params.variant=v-cnd", "model.params.variant", "'v-cnd'",
     "one of 'v-cond', 'v-dual', 'v-gen'"),
    ("demo_metaworld_voltron.yaml", "model.params.mask_ratio=1.0", "model.params.mask_ratio", "1.0",
     ">= 0 and < 1"),
    ("voltron_vgen_vits.yaml", "model.params.gen_ratio=1.5", "model.params.gen_ratio", "1.5", ">= 0 and <= 1"),
    ("voltron_vgen_vits.yaml", "model.params.lm_weight=-0.5", "model.params.lm_weight", "-0.5", ">= 0"),
    ("voltron_vcond_vits.yaml", "model.params.patch_size=0", "model.params.patch_size", "0", ">= 1"),
    ("voltron_vcond_vits.yaml", "model.params.decoder_heads=0", "model.params.decoder_heads", "0", ">= 1"),
    ("gr1_bridge.yaml", "model.params.objective=videos", "model.params.objective", "'videos'",
     "one of 'policy', 'video'"),
    ("gr1_bridge.yaml", "model.params.patch_positions=grid", "model.params.patch_positions", "'grid'",
     "one of 'sincos', 'learned', 'none'"),
    ("gr1_bridge.yaml", "model.params.history=0", "model.params.history", "0", ">= 1"),
    ("gr1_bridge.yaml", "model.params.num_latents=0", "model.params.num_latents", "0", ">= 1"),
    ("gr1_bridge.yaml", "model.params.dropout=1.0", "model.params.dropout", "1.0", ">= 0 and < 1"),
    ("demo_babyai_gr1.yaml", "model.params.feature_scale=0", "model.params.feature_scale", "0", "> 0"),
    ("gr1_bridge.yaml", "model.params.frame_weight=-0.1", "model.params.frame_weight", "-0.1", ">= 0"),
    ("demo_babyai_gr1.yaml", "model.params.num_actions=-7", "model.params.num_actions", "-7", ">= 0"),
    ("demo_metaworld_lcbc.yaml", "model.params.state_dim=-1", "model.params.state_dim", "-1", ">= 0"),
    ("lcbc_bridge.yaml", "model.params.num_layers=0", "model.params.num_layers", "0", ">= 1"),
    ("lcbc_bridge.yaml", "model.params.action_dim=0", "model.params.action_dim", "0", ">= 1"),
    ("demo_babyai_lcbc.yaml", "model.params.dropout=-0.1", "model.params.dropout", "-0.1", ">= 0 and < 1"),
]


@pytest.mark.parametrize("config, override, key, shown, allowed", BAD_VALUES, ids=[c[1] for c in BAD_VALUES])
def test_a_bad_value_names_key_value_and_what_is_allowed(config: str, override: str, key: str, shown: str,
                                                          allowed: str, assert_refused: Callable) -> None:
    assert_refused(CONFIGS / config, overrides(CONFIGS / config, override), key, shown, allowed)


def test_a_holdout_fraction_outside_0_1_is_refused() -> None:
    """``holdout`` is an optional mapping of fractions: the message names the entry that is out of bounds."""
    path = CONFIGS / "voltron_vcond_vits.yaml"
    with pytest.raises(ConfigError, match=r"data.params.holdout = \{'val': 1.5\} for dataset 'lerobot': entry 'val'"):
        load_config(path, overrides(path, "data.params.holdout.val=1.5"))
    holdout = resolved_hints(REGISTRIES["dataset"].get("lerobot").__init__)["holdout"]
    assert check_value({"val": 0.05, "test": 0.1}, holdout) is None
    assert check_value({"val": 0.0}, holdout) and check_value({"val": 1.0}, holdout)


@pytest.mark.parametrize("kind, name, params, allowed", [
    ("encoder", "voltron", {"num_frames": 3}, "one of 1, 2"),
    ("encoder", "voltron", {"max_lang_tokens": 0}, ">= 1"),
    ("encoder", "voltron-pretrained", {"feature_layer": -1}, ">= 0"),
])
def test_constructors_no_shipped_config_uses_are_checked_too(kind: str, name: str, params: dict, allowed: str,
                                                              assert_params_refused: Callable) -> None:
    assert_params_refused(kind, name, params, allowed)


@pytest.mark.parametrize("spec, allowed", [
    ({"name": "babyai", "image_mode": "pixels"}, "one of 'symbolic', 'rgb'"),
    ({"name": "babyai", "cell_pixels": 0}, ">= 1"),
    ({"name": "babyai-chain", "room_size": 2}, ">= 3"),
    ({"name": "metaworld", "max_steps": 501}, ">= 1 and <= 500"),
    ({"name": "metaworld", "state_indices": [0, 39]}, ">= 0 and < 39"),
    ({"name": "ai2thor", "grid_size": 0}, "> 0"),
], ids=lambda v: str(v) if isinstance(v, str) else "-".join(map(str, v.values())))
def test_an_env_spec_with_a_bad_value_names_it(spec: dict, allowed: str) -> None:
    name, (key, value) = spec["name"], [item for item in spec.items() if item[0] != "name"][0]
    with pytest.raises(ConfigError) as err:
        as_env_spec(spec)
    assert f"{key} = {value!r} for environment '{name}'" in str(err.value) and allowed in str(err.value)
