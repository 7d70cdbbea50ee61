"""What a run prints: a progress bar that counts steps against ``max_steps``, and a quiet start.

:class:`StepProgressBar` is Lightning's rich bar, except that a run bounded by ``trainer.max_steps`` shows
one bar of optimiser steps ``k/max_steps`` across epochs (Lightning's own shows batches of the epoch and
``Epoch 9/-2`` when ``max_epochs`` is unset).

:func:`quiet_start` silences what every run would otherwise print without it meaning anything: Lightning's
advertisements (litlogger, litmodels), its warning that modules are in eval mode (alignkit's frozen towers
are, by design: :class:`EvalModeCheck` warns instead about modules that are in eval mode but not frozen), a
deprecation inside Lightning's own code, and transformers' weight-loading bar. Other warnings still show.
"""
from __future__ import annotations

import logging
import warnings
from typing import Any, List

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar

_ADVERTISEMENTS = ("litlogger", "litmodels")


class _DropAdvertisements(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("💡 Tip") or any(f"[{name}]" in message for name in _ADVERTISEMENTS))


_FILTER = _DropAdvertisements()


def quiet_start() -> None:
    """Install the filters (idempotent): see the module docstring for what they drop."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")
    try:
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass


def unfrozen_eval_modules(module: Any) -> List[str]:
    """Names of submodules in eval mode that are not inside a frozen tower (and so were probably left in eval
    mode by mistake); a frozen tower is a module with ``requires_grad=False`` everywhere."""
    frozen = [name for name, sub in module.named_modules()
              if name and not sub.training and list(sub.parameters())
              and not any(p.requires_grad for p in sub.parameters())]
    return [name for name, sub in module.named_modules()
            if name and not sub.training and not any(name == f or name.startswith(f + ".") for f in frozen)]


class EvalModeCheck(L.Callback):
    """At the start of training, warn about trainable modules left in eval mode (frozen towers are expected)."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        names = unfrozen_eval_modules(pl_module)
        if names:
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            warnings.warn(f"{len(names)} trainable module(s) are in eval mode at the start of training: {shown}; "
                          "dropout and batch-norm statistics will not train there", stacklevel=2)


class StepProgressBar(RichProgressBar):
    """Rich progress bar counting optimiser steps against ``trainer.max_steps`` when that bounds the run."""

    def _max_steps(self) -> int:
        steps = self.trainer.max_steps
        return steps if steps is not None and steps > 0 else 0

    @property
    def total_train_batches(self) -> Any:
        return self._max_steps() or super().total_train_batches

    def _get_train_description(self, current_epoch: int) -> str:
        if self._max_steps():
            description = f"Epoch {current_epoch} · steps"
        else:
            max_epochs = self.trainer.max_epochs
            description = f"Epoch {current_epoch}" + (f"/{max_epochs - 1}" if max_epochs and max_epochs > 0 else "")
        return f"{description:{len(self.validation_description)}}"

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        if self._max_steps():
            self._update(self.train_progress_bar_id, trainer.global_step)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not self._max_steps():
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if not self.is_disabled and self.train_progress_bar_id is None:
            self._initialize_train_progress_bar_id()  # a mid-epoch restart
        self._update(self.train_progress_bar_id, trainer.global_step)
        self._update_metrics(trainer, pl_module)
        self.refresh()
