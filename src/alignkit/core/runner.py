"""Build a run from a validated config and train / evaluate it with Lightning.

A run folder ``{out_dir}/{name}/`` holds ``config.yaml`` (the resolved config), ``checkpoints/``
(``last.ckpt`` and periodic ones), ``tb/`` (TensorBoard), ``csv/metrics.csv`` and, at the end,
``metrics.json``: a flat ``{name: number}`` of the final training/validation figures and every
configured evaluator's metrics. Checkpoints are read with ``weights_only=True``.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, ProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from alignkit.core.checkpoints import check_torch_checkpoint, load_torch_checkpoint
from alignkit.core.config import ConfigError, save_config, to_plain
from alignkit.core.images import PREPROCESS_KEYS
from alignkit.core.registry import EVALUATORS, MODELS
from alignkit.core.progress import EvalModeCheck, StepProgressBar, quiet_start
from alignkit.core.resume import ResumeTracker

CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"


def build_model(cfg: DictConfig) -> L.LightningModule:
    """The LightningModule named by ``model.name``, built from the ``model`` and ``optim`` sections."""
    model = to_plain(cfg.model)
    params = model.pop("params", {})
    model.pop("name")
    return MODELS.build(cfg.model.name, where="model.params", model=model, optim=to_plain(cfg.optim), **params)


def build_datamodule(cfg: DictConfig) -> L.LightningDataModule:
    from alignkit.core.datamodule import AlignmentDataModule
    from alignkit.core.registry import AUGMENTATIONS
    d = to_plain(cfg.data)
    augment = [AUGMENTATIONS.build(a["name"], **a["params"]) for a in d.pop("augment")]
    return AlignmentDataModule(seed=int(cfg.seed), batch_transforms=augment, **d)


def trainer_kwargs(cfg: DictConfig) -> Dict[str, Any]:
    """The ``trainer`` section as ``lightning.Trainer`` keyword arguments (None passed through: it is meaningful,
    e.g. ``check_val_every_n_epoch: null`` validates every ``val_check_interval`` steps across epochs)."""
    return to_plain(cfg.trainer)


def build_trainer(cfg: DictConfig, run_dir: Path, callbacks: Sequence[L.Callback] = (),
                  **overrides: Any) -> L.Trainer:
    ck = cfg.checkpoint
    callbacks = [*callbacks,
        ResumeTracker(),
        LearningRateMonitor(logging_interval="step"),
        ModelCheckpoint(dirpath=run_dir / CHECKPOINT_DIR, every_n_train_steps=ck.every_n_train_steps,
                        every_n_epochs=ck.every_n_epochs, save_last=ck.save_last, save_top_k=ck.save_top_k,
                        filename="step{step:07d}", auto_insert_metric_name=False),
    ]
    loggers = [TensorBoardLogger(run_dir, name="tb", version=""), CSVLogger(run_dir, name="csv", version="")]
    kwargs = trainer_kwargs(cfg)
    kwargs.update(overrides)
    quiet_start()
    callbacks.append(EvalModeCheck())
    if kwargs.get("enable_progress_bar", True) and not any(isinstance(c, ProgressBar) for c in callbacks):
        callbacks.append(StepProgressBar())
    # the DataModule's samplers shard by rank themselves (seeded DistributedSampler / GroupedBatchSampler / shards)
    return L.Trainer(default_root_dir=str(run_dir), callbacks=callbacks, logger=loggers,
                     use_distributed_sampler=False, **kwargs)


def run_dir_of(cfg: DictConfig) -> Path:
    return Path(cfg.out_dir) / cfg.name


def _number(v: Any) -> Optional[float]:
    if isinstance(v, torch.Tensor):
        if v.numel() != 1:
            return None
        v = v.item()
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    return None


def write_metrics(run_dir: Path, metrics: Dict[str, Any]) -> Path:
    """Write ``metrics.json`` (flat name -> number; NaN written as null) and return its path."""
    flat = {}
    for k, v in sorted(metrics.items()):
        x = _number(v)
        if x is not None:
            flat[k] = None if math.isnan(x) else x
    path = Path(run_dir) / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(flat, indent=2))
    return path


def run_evaluators(cfg: DictConfig, model: Any, datamodule: Any, out_dir: Path) -> Dict[str, float]:
    """Run every configured evaluator on its split; returns the merged flat metrics."""
    from alignkit.core.api import AlignedModel
    if not cfg.eval:
        return {}
    aligned = model if isinstance(model, AlignedModel) else AlignedModel(model.eval(), to_plain(cfg))
    metrics: Dict[str, float] = {}
    train_loader = datamodule.eval_dataloader(cfg.data.train_split)
    for ev in cfg.eval:
        evaluator = EVALUATORS.build(ev.name, where="eval.params", **to_plain(ev.params))
        test_loader = datamodule.eval_dataloader(ev.split)
        if test_loader is None:
            raise ConfigError(f"evaluator '{ev.name}' asks for split '{ev.split}', which the dataset does not have")
        metrics.update(evaluator(aligned, train_loader, test_loader, Path(out_dir)))
    return metrics


MAX_THREADS_ENV = "ALIGNKIT_MAX_THREADS"


def config_threads(cfg: DictConfig) -> int:
    """The config's ``num_threads`` (0: leave torch's default), capped by the ``ALIGNKIT_MAX_THREADS``
    environment variable when it is set: a scheduler's CPU share, or one thread per pytest-xdist worker,
    since two processes each running two intra-op threads on two cores run several times slower."""
    threads = int(cfg.get("num_threads") or 0)
    cap = os.environ.get(MAX_THREADS_ENV)
    if cap:
        try:
            cap_threads = int(cap)
        except ValueError:
            raise ConfigError(f"{MAX_THREADS_ENV}={cap!r} is not a whole number of threads") from None
        if cap_threads < 1:
            raise ConfigError(f"{MAX_THREADS_ENV} must be at least 1; got {cap_threads}")
        threads = min(threads, cap_threads) if threads else cap_threads
    return threads


def resume_checkpoint(cfg: DictConfig, resume: Union[None, bool, str, Path]) -> Optional[Path]:
    """The checkpoint a run continues from: None for a new run; ``latest`` (or True) for the run folder's
    ``checkpoints/last.ckpt``; else the given checkpoint path. A new run refuses a folder that holds one.

    The checkpoint is read once (tensors memory-mapped, :func:`~alignkit.core.checkpoints.check_torch_checkpoint`)
    so that a truncated, foreign or refused file is named before any training starts."""
    last = run_dir_of(cfg) / CHECKPOINT_DIR / LAST_CHECKPOINT
    if resume is None or resume is False:
        if last.is_file():
            raise ConfigError(f"run folder {run_dir_of(cfg)} already holds a checkpoint; pass --resume to continue "
                              f"it or choose another name (name=...) or out_dir")
        return None
    ckpt = last if resume is True or str(resume) == "latest" else Path(resume)
    if not ckpt.is_file():
        raise ConfigError(f"--resume: no checkpoint at {ckpt}" + (" (the run has not saved one yet)"
                                                                  if ckpt == last else ""))
    try:
        check_torch_checkpoint(ckpt)
    except ValueError as exc:
        raise ConfigError(f"--resume: {exc}") from None
    return ckpt


def train(cfg: DictConfig, resume: Union[None, bool, str, Path] = None,
          callbacks: Sequence[L.Callback] = ()) -> Dict[str, Any]:
    """Train (or continue from ``resume``: ``latest`` or a checkpoint path), evaluate, write metrics.json.

    Returns ``{"run_dir", "metrics", "model", "trainer", "datamodule"}``.
    """
    quiet_start()
    run_dir = run_dir_of(cfg)
    ckpt = resume_checkpoint(cfg, resume)
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    threads = config_threads(cfg)
    if threads:
        torch.set_num_threads(threads)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    datamodule = build_datamodule(cfg)
    model = build_model(cfg)
    trainer = build_trainer(cfg, run_dir, callbacks)
    trainer.fit(model, datamodule=datamodule, ckpt_path=str(ckpt) if ckpt else None, weights_only=True)
    metrics: Dict[str, Any] = {k: v for k, v in trainer.callback_metrics.items()}
    metrics["trainer/global_step"] = trainer.global_step
    if trainer.is_global_zero:
        if not cfg.trainer.fast_dev_run:
            metrics.update(run_evaluators(cfg, model, datamodule, run_dir))
        write_metrics(run_dir, metrics)
    return {"run_dir": run_dir, "metrics": metrics, "model": model, "trainer": trainer, "datamodule": datamodule}


def load_checkpoint(cfg: DictConfig, ckpt: str | Path) -> L.LightningModule:
    """Rebuild the model of ``cfg`` and load ``ckpt`` into it with ``torch.load(weights_only=True)``
    (:func:`~alignkit.core.checkpoints.load_torch_checkpoint`: ValueError naming a broken or refused file)."""
    ckpt = Path(ckpt)
    if not ckpt.is_file():
        raise ConfigError(f"checkpoint not found: {ckpt}")
    model = build_model(cfg)
    state = load_torch_checkpoint(ckpt)
    if not isinstance(state, dict) or "state_dict" not in state:
        raise ValueError(f"{ckpt}: not a Lightning checkpoint (no 'state_dict' entry); give a run's "
                         "checkpoints/*.ckpt")
    model.load_state_dict(state["state_dict"])
    return model.eval()


def model_preprocess_overrides(cfg: DictConfig, preprocess: Dict[str, Any]) -> Dict[str, Tuple[Any, Any]]:
    """Set the config's data params named in :data:`~alignkit.core.images.PREPROCESS_KEYS` to the model folder's
    recorded preprocessing (an imported model is evaluated as its anchor preprocesses); returns ``{key: (old, new)}``
    of what changed."""
    changed: Dict[str, Tuple[Any, Any]] = {}
    params = cfg.data.get("params")
    if params is None:
        return changed
    for key in PREPROCESS_KEYS:
        value = params.get(key)
        old = to_plain(value) if OmegaConf.is_config(value) else value
        if key in preprocess and key in params and old != preprocess[key]:
            changed[key] = (old, preprocess[key])
            params[key] = preprocess[key]
    return changed


def evaluate(cfg: DictConfig, ckpt: Union[None, str, Path] = None, out_dir: Optional[Path] = None,
             model_dir: Union[None, str, Path] = None) -> Dict[str, Any]:
    """Evaluate with the config's evaluators and data: a run's checkpoint ``ckpt`` (the config's model), or a model
    folder ``model_dir`` (``alignkit export`` or ``alignkit import-weights``: evaluated without training, its
    recorded preprocessing applied to the data). Writes ``metrics.json`` and plots to ``out_dir``."""
    from alignkit.core.api import AlignedModel
    quiet_start()
    if (ckpt is None) == (model_dir is None):
        raise ConfigError("evaluate: give a checkpoint (--ckpt) or a model folder (--model), not both or neither")
    if model_dir is not None:
        model: Any = AlignedModel.load(model_dir)
        for key, (old, new) in model_preprocess_overrides(cfg, model.preprocess).items():
            print(f"data.params.{key}: {old} -> {new} (the model folder's preprocessing)")
        out = Path(out_dir) if out_dir else Path(model_dir).resolve() / "eval"
    else:
        model = load_checkpoint(cfg, ckpt)
        out = Path(out_dir) if out_dir else Path(ckpt).resolve().parent.parent / "eval"
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    datamodule = build_datamodule(cfg)
    metrics = run_evaluators(cfg, model, datamodule, out)
    write_metrics(out, metrics)
    return {"run_dir": out, "metrics": metrics}


def cfg_from_run(run_dir: Path) -> DictConfig:
    from alignkit.core.config import load_config
    return load_config(Path(run_dir) / "config.yaml")


__all__ = ["build_model", "build_datamodule", "build_trainer", "train", "evaluate", "load_checkpoint",
           "write_metrics", "run_evaluators", "cfg_from_run"]
