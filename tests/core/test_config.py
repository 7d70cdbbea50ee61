"""Config loading: schema validation, overrides, did-you-mean errors, registry parameter checks."""
from __future__ import annotations

from pathlib import Path

import pytest

from alignkit.core.config import load_config
from alignkit.core.registry import ConfigError

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "core" / "shapes_demo.yaml"


def test_demo_config_loads_and_overrides_apply(shapes_tiny: Path) -> None:
    cfg = load_config(CONFIG, [f"data.params.root={shapes_tiny}", "trainer.max_steps=7", "data.batch_size=16"])
    assert cfg.trainer.max_steps == 7 and cfg.data.batch_size == 16
    assert cfg.model.towers.text.frozen is True
    assert cfg.data.params.root == str(shapes_tiny)


@pytest.mark.parametrize("override, key, suggestion", [
    ("trainer.max_step=3", "trainer.max_step", "trainer.max_steps"),
    ("optim.weight_decy=0.1", "optim.weight_decy", "optim.weight_decay"),
    ("data.bach_size=4", "data.bach_size", "data.batch_size"),
])
def test_mistyped_section_key_names_key_and_closest(override: str, key: str, suggestion: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(CONFIG, ["data.params.root=/x", override])
    assert f"'{key}'" in str(err.value) and f"'{suggestion}'" in str(err.value)


def test_mistyped_key_in_yaml_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(CONFIG.read_text().replace("  batch_size: 256", "  batchsize: 256"))
    with pytest.raises(ConfigError) as err:
        load_config(bad, ["data.params.root=/x"])
    assert "data.batchsize" in str(err.value) and "data.batch_size" in str(err.value) and str(bad) in str(err.value)


@pytest.mark.parametrize("override, words", [
    ("model.towers.image.encoder=smal-cnn", ["smal-cnn", "small-cnn"]),
    ("model.towers.image.params.widht=[8]", ["widht", "widths"]),
    ("model.objectives.0.loss=clipp", ["clipp", "clip"]),
    ("data.params.text_colum=caption", ["text_colum", "text_column"]),
    ("data.dataset=paired-cvs", ["paired-cvs", "paired-csv"]),
])
def test_registry_names_and_params_are_checked_before_building(override: str, words: list) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(CONFIG, ["data.params.root=/x", override])
    for w in words:
        assert w in str(err.value)


def test_missing_required_value_is_reported() -> None:
    with pytest.raises(ConfigError, match="data.params.root"):
        load_config(CONFIG)


def test_objective_must_name_a_tower() -> None:
    with pytest.raises(ConfigError, match="imgae"):
        load_config(CONFIG, ["data.params.root=/x", "model.objectives.0.a=imgae"])


@pytest.mark.parametrize("asked, cap, expected", [(2, None, 2), (2, "1", 1), (1, "4", 1), (None, "3", 3),
                                                  (None, None, 0)])
def test_num_threads_is_capped_by_the_environment(asked, cap, expected, monkeypatch: pytest.MonkeyPatch) -> None:
    from alignkit.core.runner import MAX_THREADS_ENV, config_threads
    if cap is None:
        monkeypatch.delenv(MAX_THREADS_ENV, raising=False)
    else:
        monkeypatch.setenv(MAX_THREADS_ENV, cap)
    cfg = load_config(CONFIG, ["data.params.root=/x", f"num_threads={'null' if asked is None else asked}"])
    assert config_threads(cfg) == expected


@pytest.mark.parametrize("cap", ["0", "two"])
def test_a_bad_thread_cap_is_refused(cap: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from alignkit.core.runner import MAX_THREADS_ENV, config_threads
    monkeypatch.setenv(MAX_THREADS_ENV, cap)
    with pytest.raises(ConfigError, match=MAX_THREADS_ENV):
        config_threads(load_config(CONFIG, ["data.params.root=/x"]))
