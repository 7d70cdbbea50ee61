"""``alignkit bench xray -c CONFIG``: pretrain the configured methods and compare them the BenchX way.

A bench config is YAML with this schema (validated like run configs: a mistyped key names the closest one)::

    bench: xray
    name: xray-bench
    out_dir: runs
    overrides: ["data.params.root=/data/mimic-cxr-jpg"]   # applied to every method's run config
    eval_overrides: ["data.params.masks_csv=masks.csv"]   # only to the data BenchX evaluates on
    methods:
      convirt: {config: medical/convirt_resnet50.yaml, overrides: []}
      gloria:  {config: medical/gloria_resnet50.yaml}
      random-init: {config: medical/convirt_resnet50.yaml, train: false}   # the untrained baseline
    benchx: {fractions: [0.01, 0.1, 1.0], seeds: [0, 1, 2], num_candidates: 100}   # BenchXConfig fields

Each method with ``train: true`` is trained by the core runner (its own run folder under
``{out_dir}/{name}/{method}``; ``checkpoint: PATH`` evaluates an existing checkpoint instead); then
:func:`~alignkit.domains.medical.xray.benchx.run_benchx` runs on the train/val/test splits of the first
method's data and writes ``benchx.md`` and ``benchx.json`` (one comparison table) into ``{out_dir}/{name}``.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import lightning as L
from omegaconf import MISSING, OmegaConf

from alignkit.core.config import ConfigError, apply_overrides, configs_dir, load_config, to_plain
from alignkit.core.registry import BENCHES, did_you_mean
from alignkit.core.runner import build_datamodule, build_model, load_checkpoint, train
from alignkit.domains.medical.xray.benchx import BenchTable, BenchXConfig, run_benchx


@dataclass
class BenchMethod:
    config: str = MISSING
    overrides: List[str] = field(default_factory=list)
    train: bool = True
    checkpoint: Optional[str] = None


@dataclass
class XRayBenchConfig:
    bench: str = "xray"  # the `alignkit bench NAME` this config is for
    name: str = "xray-bench"
    out_dir: str = "runs"
    seed: int = 0
    overrides: List[str] = field(default_factory=list)
    eval_overrides: List[str] = field(default_factory=list)  # for the evaluation data only (e.g. masks_csv)
    methods: Dict[str, BenchMethod] = field(default_factory=dict)
    benchx: Dict[str, Any] = field(default_factory=dict)


def load_bench_config(path: str | Path, overrides: Sequence[str] = ()) -> Any:
    schema = OmegaConf.structured(XRayBenchConfig)
    try:
        cfg = OmegaConf.merge(schema, OmegaConf.load(path))
    except Exception as exc:  # noqa: BLE001  (OmegaConf raises several key/type errors; all mean a bad file)
        raise ConfigError(f"{path}: {exc}") from None
    cfg = apply_overrides(cfg, overrides)
    fields = [f.name for f in dataclasses.fields(BenchXConfig)]
    for key in cfg.benchx:
        if key not in fields:
            raise ConfigError(f"unknown benchx key '{key}' in {path}{did_you_mean(str(key), fields)}")
    if not cfg.methods:
        raise ConfigError(f"{path} names no methods")
    return cfg


def _method_config(path: str) -> Path:
    p = Path(path)
    return p if p.is_file() else configs_dir() / path


@dataclass
class XRayBenchResult:
    """The comparison ``table``, the evaluated ``models`` by method name, the ``datamodule`` whose splits were
    used, and the bench's output folder ``out_dir``."""

    table: BenchTable
    models: Dict[str, Any]
    datamodule: Any
    out_dir: Path


@BENCHES.register("xray")
def run_xray_bench(config: str | Path, overrides: Sequence[str] = (),
                   benchx: Optional[Mapping[str, Any]] = None) -> XRayBenchResult:
    """Train (or load, or leave untrained) every method of the bench config, then run BenchX on the first
    method's data splits. ``benchx`` entries override the config's ``benchx`` section (e.g. ``prompts``)."""
    bench = load_bench_config(config, overrides)
    out = Path(bench.out_dir) / bench.name
    models: Dict[str, Any] = {}
    datamodule = None
    pretraining: Dict[str, float] = {}
    for name, method in bench.methods.items():
        start = time.perf_counter()
        cfg = load_config(_method_config(method.config),
                          [*bench.overrides, *method.overrides, f"out_dir={out}", f"name={name}"])
        if datamodule is None:  # the evaluation splits: the first method's data plus eval_overrides
            datamodule = build_datamodule(apply_overrides(cfg, bench.eval_overrides))
        if method.checkpoint:
            models[name] = load_checkpoint(cfg, method.checkpoint)
        elif method.train:
            models[name] = train(cfg)["model"].eval()
        else:
            L.seed_everything(int(cfg.seed), verbose=False)
            models[name] = build_model(cfg).eval()
        pretraining[name] = time.perf_counter() - start
    assert datamodule is not None
    datamodule.setup()
    for role in ("train", "val", "test"):
        if getattr(datamodule, f"{role}_dataset") is None:
            raise ConfigError(f"BenchX needs a non-empty {role} split (early stopping and thresholds use val); "
                              f"split '{datamodule.splits[role]}' of the data has no items")
    settings = {**to_plain(bench.benchx), **dict(benchx or {})}
    table = run_benchx(models, datamodule.train_dataset, datamodule.val_dataset, datamodule.test_dataset,
                       BenchXConfig(**settings), out_dir=out)
    for name, seconds in pretraining.items():
        table.seconds.setdefault(name, {})["pretraining"] = seconds
    print(table.to_markdown())
    print(f"comparison table: {out / 'benchx.md'} and {out / 'benchx.json'}")
    return XRayBenchResult(table, models, datamodule, out)
