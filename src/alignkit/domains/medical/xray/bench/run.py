"""Running BenchX: :func:`run_benchx` runs every protocol for several methods into one :class:`.table.BenchTable`,
and ``alignkit bench xray -c CONFIG`` pretrains the configured methods and compares them that way.

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
:func:`run_benchx` runs on the train/val/test splits of the first method's data and writes ``benchx.md`` and
``benchx.json`` (one comparison table) into ``{out_dir}/{name}``.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import lightning as L
from omegaconf import MISSING, OmegaConf

from alignkit.core.config import ConfigError, apply_overrides, configs_dir, load_config, to_plain
from alignkit.core.registry import BENCHES, did_you_mean
from alignkit.core.runner import build_datamodule, build_model, load_checkpoint, train
from alignkit.domains.medical.xray.bench.classification import finetune_classification, mean_std, percent, summarize
from alignkit.domains.medical.xray.bench.generation import evaluate_report_generation
from alignkit.domains.medical.xray.bench.retrieval import retrieval_report_image
from alignkit.domains.medical.xray.bench.segmentation import finetune_segmentation
from alignkit.domains.medical.xray.bench.shared import DecodedSamples, Split, as_dataset, image_encoder_of
from alignkit.domains.medical.xray.bench.table import BenchTable
from alignkit.domains.medical.xray.bench.zero_shot import PromptSets, zero_shot_multilabel


# =========================================================================== every protocol, several methods
BENCHX_TASKS = ("classification", "zero_shot", "retrieval", "segmentation", "generation")
EMPTY_BASELINE = "all-empty prediction"


@dataclass
class BenchXConfig:
    """Settings of :func:`run_benchx`; each task's parameters are those of its function."""

    fractions: Sequence[float] = (0.01, 0.1, 1.0)
    seeds: Sequence[int] = (0, 1, 2)
    epochs: int = 50
    lr: float = 1e-3
    batch_size: int = 64
    patience: int = 5
    freeze_encoder: bool = True
    class_names: Optional[Sequence[str]] = None
    prompts: Optional[PromptSets] = None  # default: default_prompts of the test dataset's class_names
    num_candidates: Optional[int] = 100
    ks: Sequence[int] = (1, 5, 10)
    tasks: Sequence[str] = BENCHX_TASKS
    segmentation_epochs: int = 20
    segmentation_lr: float = 1e-3
    segmentation_fraction: float = 1.0  # of the training images (label_subset of the classification labels)
    segmentation_output_stride: int = 1  # decoder resolution S / stride, logits resized to S
    generation_max_reports: Optional[int] = None  # score generation on the first N test images (None: all)
    generation_epochs: int = 20
    generation_lr: float = 1e-3
    generation_max_length: int = 96  # report words + <bos>/<eos>; longer reports are cut
    image_modality: str = "image"
    text_modality: str = "text"
    decode_once: bool = False  # keep every split decoded in memory (DecodedSamples) for all methods and tasks
    num_workers: int = 0  # DataLoader workers that decode the splits when decode_once is set


def run_benchx(methods: Mapping[str, Any], train: Split, val: Split, test: Split,
               config: Optional[BenchXConfig] = None, out_dir: Optional[Union[str, Path]] = None) -> BenchTable:
    """Run the configured tasks for every method (an ``AlignmentModule`` or ``AlignedModel``; include a
    randomly initialised model as a baseline) into one :class:`BenchTable`.

    Columns: ``cls_auroc@{pct}%`` and ``cls_f1@{pct}%`` (mean ± std over seeds), ``zero_shot_auroc``,
    ``image2report_R@k`` / ``report2image_R@k``, ``seg_dice`` (the row ``all-empty prediction`` holds the
    baseline Dice), ``gen_bleu1..4`` / ``gen_rouge_l`` of the decoder and ``gen_retrieval_*`` of the
    nearest-report baseline. Segmentation runs only if the samples have ``"masks"``. With ``out_dir``,
    figures go to ``out_dir/<method>/`` and the table to ``out_dir/benchx.md`` and ``.json``.
    """
    cfg = config or BenchXConfig()
    unknown = sorted(set(cfg.tasks) - set(BENCHX_TASKS))
    if unknown:
        raise ValueError(f"run_benchx: unknown tasks {unknown}; choose from {list(BENCHX_TASKS)}")
    if cfg.decode_once:
        train, val, test = (DecodedSamples(split, cfg.num_workers) for split in (train, val, test))
    has_masks = "masks" in as_dataset(train)[0]
    table = BenchTable()
    for name, model in methods.items():
        encoder = image_encoder_of(model, cfg.image_modality)
        method_dir = None if out_dir is None else Path(out_dir) / name
        if "classification" in cfg.tasks:
            with table.timed(name, "classification"):
                results = finetune_classification(
                    encoder, train, val, test, cfg.fractions, cfg.seeds, cfg.epochs, cfg.lr, cfg.batch_size,
                    cfg.patience, freeze_encoder=cfg.freeze_encoder, class_names=cfg.class_names, out_dir=method_dir)
                for fraction, summary in summarize(results).items():
                    table.add(name, f"cls_auroc@{percent(fraction)}%", *summary["auroc"])
                    table.add(name, f"cls_f1@{percent(fraction)}%", *summary["f1"])
                    runs = [r for r in results.runs if r.fraction == fraction]
                    table.add_per_class(name, f"cls_auroc@{percent(fraction)}%",
                                        {c: mean_std([r.test_auroc_per_class[c] for r in runs])[0]
                                         for c in results.class_names})
        if "zero_shot" in cfg.tasks:
            with table.timed(name, "zero_shot"):
                zs = zero_shot_multilabel(model, test, cfg.prompts, cfg.text_modality, cfg.image_modality,
                                          batch_size=cfg.batch_size, out_dir=method_dir)
                table.add(name, "zero_shot_auroc", zs.auroc["mean"])
                table.add_per_class(name, "zero_shot_auroc", zs.auroc)
        if "retrieval" in cfg.tasks:
            with table.timed(name, "retrieval"):
                ret = retrieval_report_image(model, test, cfg.num_candidates, cfg.ks, cfg.image_modality,
                                             cfg.text_modality, batch_size=cfg.batch_size)
                table.add_metrics(name, {k: v for k, v in ret.items() if "R@" in k})
        if "segmentation" in cfg.tasks and has_masks:
            with table.timed(name, "segmentation"):
                seg = finetune_segmentation(encoder, train, val, test, class_names=getattr(as_dataset(train),
                                                                                       "mask_classes", None),
                                            epochs=cfg.segmentation_epochs, lr=cfg.segmentation_lr,
                                            patience=cfg.patience, fraction=cfg.segmentation_fraction,
                                            output_stride=cfg.segmentation_output_stride)
                table.add(name, "seg_dice", seg.dice["mean"])
                table.add(EMPTY_BASELINE, "seg_dice", seg.empty_baseline["mean"])
                table.add_per_class(name, "seg_dice", seg.dice)
                table.add_per_class(EMPTY_BASELINE, "seg_dice", seg.empty_baseline)
        if "generation" in cfg.tasks:
            with table.timed(name, "generation"):
                gen = evaluate_report_generation(encoder, train, test, epochs=cfg.generation_epochs,
                                                 lr=cfg.generation_lr, batch_size=cfg.batch_size,
                                                 max_length=cfg.generation_max_length,
                                                 max_reports=cfg.generation_max_reports)
                table.add_metrics(name, gen.decoder, prefix="gen_")
                table.add_metrics(name, gen.retrieval, prefix="gen_retrieval_")
                table.add_metrics(name, gen.retrieval_screened, prefix="gen_retrieval_screened_")
    if out_dir is not None:
        table.write(out_dir)
    return table


# =========================================================================== `alignkit bench xray`
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
