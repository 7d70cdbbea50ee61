"""What a run prints: a step-counting progress bar, a quiet start, and warnings that still mean something."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from alignkit.core.encoders.base import freeze
from alignkit.core.progress import EvalModeCheck, StepProgressBar, unfrozen_eval_modules


class StuckInEval(nn.Dropout):
    """A trainable part that stays in eval mode whatever ``train()`` says (the mistake the check catches)."""

    def __init__(self, p: float):
        super().__init__(p)
        self.eval()

    def train(self, mode: bool = True) -> "StuckInEval":
        return super().train(False)


class Tiny(L.LightningModule):
    """A trainable layer beside a frozen tower (which stays in eval mode, as alignkit's frozen towers do)."""

    def __init__(self, stray_eval: bool = False):
        super().__init__()
        self.frozen = freeze(nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1)))
        self.head = nn.Sequential(nn.Linear(4, 1), StuckInEval(0.1) if stray_eval else nn.Dropout(0.1))

    def training_step(self, batch, batch_idx):
        return self.head(self.frozen(batch[0])).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.head.parameters(), lr=0.1)


def _loader() -> DataLoader:
    return DataLoader(TensorDataset(torch.randn(12, 4)), batch_size=4)


def test_progress_bar_counts_steps_against_max_steps_across_epochs(tmp_path) -> None:
    bar = StepProgressBar()
    trainer = L.Trainer(max_steps=7, callbacks=[bar], logger=False, enable_checkpointing=False,
                        default_root_dir=tmp_path, enable_model_summary=False)
    trainer.fit(Tiny(), _loader())  # 3 batches an epoch: 3 epochs
    task = bar.progress.tasks[bar.train_progress_bar_id]
    assert (task.total, task.completed) == (7, 7)
    assert "Epoch 2" in task.description and "steps" in task.description and "-2" not in task.description


def test_eval_mode_check_accepts_frozen_towers_and_names_stray_modules() -> None:
    model = Tiny().train()
    assert not model.frozen.module.training and unfrozen_eval_modules(model) == []
    model.head[1].eval()
    assert unfrozen_eval_modules(model) == ["head.1"]
    with pytest.warns(UserWarning, match=r"1 trainable module\(s\) are in eval mode .*head\.1"):
        EvalModeCheck().on_train_start(None, model)


def test_a_run_starts_quietly_but_real_warnings_still_show(tmp_path) -> None:
    script = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(tmp_path)!r})
        import lightning as L, torch
        from alignkit.core.progress import EvalModeCheck, StepProgressBar, quiet_start
        sys.path.insert(0, {str(__import__('pathlib').Path(__file__).parent)!r})
        from test_progress import Tiny, _loader
        quiet_start()
        for stray in (False, True):
            L.Trainer(max_steps=2, callbacks=[StepProgressBar(), EvalModeCheck()], logger=False,
                      enable_checkpointing=False, default_root_dir={str(tmp_path)!r}).fit(Tiny(stray), _loader())
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = done.stdout + done.stderr
    assert "litlogger" not in printed and "Tip:" not in printed
    assert "This may lead to unexpected behavior" not in printed  # Lightning's generic eval-mode warning
    assert printed.count("trainable module(s) are in eval mode") == 1  # ours, for the stray module only
