"""Structured run configs: YAML files validated against dataclasses with OmegaConf.

A run config has the sections ``model``, ``data``, ``optim``, ``trainer``,
``checkpoint`` and ``eval``. Loading merges the YAML (and ``--set key=value``
overrides) onto the dataclass schema in struct mode, so an unknown or mistyped
key fails before anything is built, naming the key and the closest valid one.
Registry names (encoders, losses, datasets, evaluators) and their parameters
are checked against the registries by :func:`validate`.
"""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import yaml
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from alignkit.core.paired import unset_params
from alignkit.core.params import AT_LEAST_ONE, FRACTION, NON_NEGATIVE, POSITIVE, OneOf, Range, check_fields
from alignkit.core.registry import (AUGMENTATIONS, DATASETS, ENCODERS, EVALUATORS, HEADS, LOSSES, MODELS,
                                    ConfigError, did_you_mean)

PRECISIONS = ("64", "64-true", "32", "32-true", "16", "16-mixed", "bf16", "bf16-mixed", "16-true", "bf16-true",
              "transformer-engine", "transformer-engine-float16")
"""``trainer.precision`` values Lightning accepts."""


@dataclass
class TowerConfig:
    """One modality's tower: an encoder from ``ENCODERS`` and a projection head from ``HEADS``."""
    encoder: str = MISSING
    params: Dict[str, Any] = field(default_factory=dict)
    head: str = "linear"
    head_params: Dict[str, Any] = field(default_factory=dict)
    frozen: bool = False
    input_key: Optional[str] = None  # batch field holding this modality's inputs (default: the modality name)


@dataclass
class ObjectiveConfig:
    """A pairwise alignment term: ``weight * LOSSES[loss](embed[a], embed[b])``."""
    a: str = MISSING
    b: str = MISSING
    loss: str = "clip"
    weight: float = field(default=1.0, metadata={"check": NON_NEGATIVE})
    params: Dict[str, Any] = field(default_factory=dict)


@dataclass
class EMAConfig:
    """Momentum (EMA) teacher of all towers; its embeddings give ALBEF soft targets mixed with ``alpha``."""
    enabled: bool = False
    decay: float = field(default=0.995, metadata={"check": FRACTION})
    alpha: float = field(default=0.4, metadata={"check": FRACTION})


@dataclass
class ModelConfig:
    name: str = "alignment"
    embed_dim: int = field(default=256, metadata={"check": AT_LEAST_ONE})
    towers: Dict[str, TowerConfig] = field(default_factory=dict)
    objectives: List[ObjectiveConfig] = field(default_factory=list)
    ema: EMAConfig = field(default_factory=EMAConfig)
    params: Dict[str, Any] = field(default_factory=dict)  # extra keyword arguments of the model class


@dataclass
class AugmentConfig:
    """A training-batch augmentation: ``AUGMENTATIONS[name](**params)`` (see :mod:`alignkit.core.augment`)."""
    name: str = MISSING
    params: Dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    dataset: str = MISSING
    params: Dict[str, Any] = field(default_factory=dict)
    batch_size: int = field(default=64, metadata={"check": AT_LEAST_ONE})
    eval_batch_size: Optional[int] = field(default=None, metadata={"check": AT_LEAST_ONE})
    num_workers: int = field(default=0, metadata={"check": NON_NEGATIVE})
    pin_memory: Optional[bool] = None  # None: pinned when CUDA is available
    persistent_workers: Optional[bool] = None  # None: True when num_workers > 0
    shards: Optional[str] = None  # WebDataset brace pattern / URL of training shards (`alignkit shard`)
    shard_shuffle: int = field(default=1000, metadata={"check": NON_NEGATIVE})
    hard_negative_batches: bool = False
    items_per_group: int = field(default=4, metadata={"check": AT_LEAST_ONE})
    train_split: str = "train"
    val_split: Optional[str] = "val"
    test_split: Optional[str] = "test"
    augment: List[AugmentConfig] = field(default_factory=list)  # on training batches, on the device


@dataclass
class OptimConfig:
    """AdamW with linear warm-up then cosine decay to ``min_lr_ratio * lr`` over the run's optimizer steps."""
    lr: float = field(default=1e-3, metadata={"check": POSITIVE})
    weight_decay: float = field(default=0.05, metadata={"check": NON_NEGATIVE})
    betas: List[float] = field(default_factory=lambda: [0.9, 0.98], metadata={"check": Range(ge=0, lt=1)})
    eps: float = field(default=1e-6, metadata={"check": POSITIVE})
    warmup_steps: int = field(default=0, metadata={"check": NON_NEGATIVE})
    min_lr_ratio: float = field(default=0.0, metadata={"check": FRACTION})


@dataclass
class TrainerConfig:
    """Arguments of ``lightning.Trainer``: DDP/FSDP on many GPUs and nodes is a change here."""
    accelerator: str = "auto"
    devices: Any = "auto"
    num_nodes: int = field(default=1, metadata={"check": AT_LEAST_ONE})
    strategy: str = "auto"
    precision: str = field(default="32-true", metadata={"check": OneOf(PRECISIONS)})
    max_steps: int = field(default=-1, metadata={"check": Range(ge=-1)})
    max_epochs: Optional[int] = field(default=None, metadata={"check": Range(ge=-1)})
    max_time: Optional[str] = None
    accumulate_grad_batches: int = field(default=1, metadata={"check": AT_LEAST_ONE})
    gradient_clip_val: Optional[float] = field(default=None, metadata={"check": NON_NEGATIVE})
    val_check_interval: Optional[Any] = None
    check_val_every_n_epoch: Optional[int] = 1
    limit_train_batches: Optional[Any] = None
    limit_val_batches: Optional[Any] = None
    log_every_n_steps: int = field(default=50, metadata={"check": AT_LEAST_ONE})
    fast_dev_run: Any = False
    deterministic: bool = False
    enable_progress_bar: bool = True
    num_sanity_val_steps: int = field(default=0, metadata={"check": Range(ge=-1)})


@dataclass
class CheckpointConfig:
    every_n_train_steps: Optional[int] = field(default=None, metadata={"check": AT_LEAST_ONE})
    every_n_epochs: Optional[int] = field(default=None, metadata={"check": AT_LEAST_ONE})
    save_last: bool = True
    save_top_k: int = field(default=0, metadata={"check": Range(ge=-1)})


@dataclass
class EvaluatorConfig:
    name: str = MISSING
    params: Dict[str, Any] = field(default_factory=dict)
    split: str = "test"


@dataclass
class RunConfig:
    name: str = "run"
    seed: int = field(default=0, metadata={"check": NON_NEGATIVE})
    out_dir: str = "runs"
    num_threads: Optional[int] = field(default=None, metadata={"check": AT_LEAST_ONE})  # torch intra-op threads
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: List[EvaluatorConfig] = field(default_factory=list)


def _valid_keys(schema: Any, dotted: str) -> List[str]:
    """Keys valid beside ``dotted`` (the dotted path of an offending key) in ``schema``."""
    node = schema
    parts = [p for p in dotted.split(".")[:-1] if p]
    for part in parts:
        try:
            node = node[int(part)] if isinstance(node, (list,)) or OmegaConf.is_list(node) else node[part]
        except (KeyError, IndexError, ValueError, OmegaConfBaseException):
            return []
    if OmegaConf.is_dict(node):
        return [str(k) for k in node.keys()]
    return []


def _raise_key_error(exc: OmegaConfBaseException, schema: DictConfig, source: str) -> None:
    full = getattr(exc, "full_key", None) or ""
    key = str(getattr(exc, "key", "") or full.split(".")[-1])
    if not full:
        full = key
    valid = _valid_keys(schema, full)
    hint = did_you_mean(key, valid)
    prefix = full.rsplit(".", 1)[0] + "." if "." in full else ""
    suggestion = ""
    if hint:
        best = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)[0]
        suggestion = f" (did you mean '{prefix}{best}'?)"
    raise ConfigError(f"unknown config key '{full}' in {source}{suggestion}") from None


def _merge(schema: DictConfig, other: Any, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(schema, other)
    except (ConfigKeyError, ConfigAttributeError) as exc:
        _raise_key_error(exc, schema, source)
    except ValidationError as exc:
        raise ConfigError(f"invalid value in {source}: {exc}") from None
    raise AssertionError("unreachable")


def apply_overrides(cfg: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """Apply ``key=value`` items (dotted keys, list indices as ``objectives.0.loss``; YAML values)."""
    cfg = cfg.copy()
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"override '{item}': the value is not valid YAML ({exc})") from None
        try:
            OmegaConf.update(cfg, key, value, merge=True)
        except (ConfigKeyError, ConfigAttributeError) as exc:
            if getattr(exc, "full_key", None) in (None, ""):
                exc.full_key = key  # type: ignore[attr-defined]
            _raise_key_error(exc, cfg, f"override '{item}'")
        except (ValidationError, IndexError, OmegaConfBaseException) as exc:
            raise ConfigError(f"override '{item}': {exc}") from None
    return cfg


def load_config(path: Optional[str | Path] = None, overrides: Sequence[str] = (),
                base: Optional[Dict[str, Any]] = None, model: Optional[Dict[str, Any]] = None) -> DictConfig:
    """Load a YAML run config (or a dict ``base``) onto the :class:`RunConfig` schema, apply overrides, validate.
    ``model`` replaces the config's model section before the overrides (a model folder evaluated with the config's
    data and evaluators: ``alignkit eval --model``)."""
    schema = OmegaConf.structured(RunConfig)
    cfg = schema
    if base is not None:
        cfg = _merge(cfg, OmegaConf.create(base), "the given config")
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        cfg = _merge(cfg, OmegaConf.load(path), str(path))
    if model is not None:
        loaded = OmegaConf.to_container(cfg, resolve=False)
        loaded["model"] = model
        cfg = _merge(schema, OmegaConf.create(loaded), "the model folder's config.json")
    if overrides:
        cfg = apply_overrides(cfg, overrides)
    validate(cfg)
    return cfg


def validate(cfg: DictConfig) -> None:
    """Check every registry name and parameter key in ``cfg`` before anything is built."""
    missing = OmegaConf.missing_keys(cfg)
    if cfg.data.shards:  # training from shards: data.params that locate the folder (root: ???) may stay unset
        missing = {key for key in missing if not key.startswith("data.params.")}
    if missing:
        raise ConfigError(f"config values missing: {', '.join(sorted(missing))}")
    check_ranges(cfg)
    MODELS.check_params(cfg.model.name, _plain(cfg.model.params), "model.params")
    for name, tower in cfg.model.towers.items():
        ENCODERS.check_params(tower.encoder, _plain(tower.params), f"model.towers.{name}.params")
        HEADS.check_params(tower.head, _plain(tower.head_params), f"model.towers.{name}.head_params")
    for i, obj in enumerate(cfg.model.objectives):
        for side in (obj.a, obj.b):
            if side not in cfg.model.towers:
                raise ConfigError(f"model.objectives[{i}] names modality '{side}' which has no tower"
                                  f"{did_you_mean(side, cfg.model.towers.keys())}")
        LOSSES.check_params(obj.loss, _plain(obj.params), f"model.objectives[{i}].params")
    if cfg.data.dataset is not None:
        _check_data_params(cfg)
    for i, aug in enumerate(cfg.data.augment):
        AUGMENTATIONS.check_params(aug.name, _plain(aug.params), f"data.augment[{i}].params")
    for i, ev in enumerate(cfg.eval):
        EVALUATORS.check_params(ev.name, _plain(ev.params), f"eval[{i}].params")


def _check_data_params(cfg: DictConfig) -> None:
    """``data.params`` against the dataset's constructor. With ``data.shards`` set, the parameters locating the
    folder may be unset (``???`` or null): the train split then comes from the shards alone, there are no
    val/test splits, and evaluators (which read those splits) are refused unless ``eval`` is empty."""
    params = _plain(cfg.data.params)
    unset = unset_params(DATASETS.get(cfg.data.dataset), params) if cfg.data.shards else []
    if unset and cfg.eval:
        names = ", ".join(f"data.params.{k}" for k in unset)
        raise ConfigError(f"eval runs evaluators on the dataset's '{cfg.eval[0].split}' split, but {names} "
                          f"{'is' if len(unset) == 1 else 'are'} not set (training from data.shards needs no "
                          f"folder): set {names} to the dataset folder, or pass eval=[] to skip evaluation")
    DATASETS.check_params(cfg.data.dataset, {k: v for k, v in params.items() if k not in unset}, "data.params")


SECTIONS = {"model": ModelConfig, "data": DataConfig, "optim": OptimConfig, "trainer": TrainerConfig,
            "checkpoint": CheckpointConfig}


def check_ranges(cfg: DictConfig) -> None:
    """Check every value of the schema against its field's bounds (``Range``/``OneOf`` metadata); the error
    names the key, the value and what is allowed."""
    plain = _plain(cfg)
    check_fields(RunConfig, plain, "config")
    for name, cls in SECTIONS.items():
        check_fields(cls, plain[name], name)
    check_fields(EMAConfig, plain["model"]["ema"], "model.ema")
    for i, objective in enumerate(plain["model"]["objectives"]):
        check_fields(ObjectiveConfig, objective, f"model.objectives[{i}]")


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def to_plain(cfg: DictConfig) -> Dict[str, Any]:
    """The resolved config as plain Python containers."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def save_config(cfg: DictConfig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(OmegaConf.to_yaml(cfg, resolve=True))


def configs_dir() -> Path:
    """The configs shipped inside the package (``alignkit/configs``), or ``$ALIGNKIT_CONFIGS`` when set."""
    env = os.environ.get("ALIGNKIT_CONFIGS")
    root = Path(env) if env else Path(__file__).resolve().parents[1] / "configs"
    if not root.is_dir():
        raise ConfigError(f"configs folder not found at {root}" + (" (from ALIGNKIT_CONFIGS)" if env else
                                                                   "; the installed package lacks its configs"))
    return root


def resolve_config_path(name: str | Path) -> Path:
    """A config as given: an existing file, else a name under :func:`configs_dir` (with or without ``.yaml``,
    e.g. ``core/shapes_demo``); a missing one is a :class:`ConfigError` listing the closest shipped names."""
    path = Path(name)
    if path.is_file():
        return path
    root = configs_dir()
    for candidate in (root / path, root / f"{path}.yaml"):
        if candidate.is_file():
            return candidate
    shipped = [str(p.relative_to(root)) for p in list_configs(root)]
    raise ConfigError(f"config file not found: {name} (neither a file nor a config under {root})"
                      f"{did_you_mean(str(path), shipped)}; `alignkit configs` lists them")


def list_configs(root: Path) -> List[Path]:
    """Every ``*.yaml`` under ``root`` (the repository's ``configs/``), sorted."""
    return sorted(root.rglob("*.yaml"))
