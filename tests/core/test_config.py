"""Config loading: schema validation, overrides, did-you-mean errors, registry parameter checks."""
from __future__ import annotations

from pathlib import Path

import pytest

from alignkit.core.config import configs_dir, load_config
from alignkit.core.registry import ConfigError

CONFIG = configs_dir() / "core" / "shapes_demo.yaml"


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


@pytest.mark.parametrize("override, words", [
    ("model.objectives.0.params.chunk_size=0", ["model.objectives[0].params.chunk_size", "0", ">= 1"]),
    ("model.objectives.0.params.init_temperature=-0.1", ["init_temperature", "> 0"]),
    ("model.objectives.0.params.label_smoothing=1.5", ["label_smoothing", ">= 0 and < 1"]),
    ("model.objectives.0.params.chunk_size=many", ["chunk_size", "'many'", "an integer"]),
    ("model.towers.text.params.pooling=max", ["model.towers.text.params.pooling", "'mean'", "'cls'"]),
    ("model.towers.image.params.widths=[16,0]", ["widths", "item 1"]),
    ("data.batch_size=0", ["data.batch_size", ">= 1"]),
    ("optim.lr=0", ["optim.lr", "> 0"]),
    ("optim.betas=[0.9,1.0]", ["optim.betas", "< 1"]),
    ("trainer.precision=fp8", ["trainer.precision", "'bf16-mixed'"]),
    ("model.ema.decay=2", ["model.ema.decay", "<= 1"]),
    ("eval.0.params.num_candidates=1", ["eval[0].params.num_candidates", ">= 2"]),
])
def test_values_are_type_and_range_checked_when_the_config_loads(override: str, words: list) -> None:
    """A value outside its type or range fails at load time (before data or model exist), naming the key, the
    value and what is allowed."""
    with pytest.raises(ConfigError) as err:
        load_config(CONFIG, ["data.params.root=/nowhere", override])
    for word in words:
        assert word in str(err.value), (word, str(err.value))


def test_a_shipped_config_is_found_by_name_and_a_wrong_name_gets_a_suggestion() -> None:
    import alignkit
    from alignkit.core.config import resolve_config_path
    found = resolve_config_path("core/shapes_demo")
    assert found == CONFIG and Path(alignkit.__file__).parent in found.parents  # inside the installed package
    with pytest.raises(ConfigError, match="did you mean 'core/shapes_demo.yaml'"):
        resolve_config_path("core/shape_demo")
