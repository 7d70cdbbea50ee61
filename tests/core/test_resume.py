"""A run stopped after k steps and resumed ends with the same weights as an uninterrupted run."""
from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from alignkit.core.config import configs_dir, load_config
from alignkit.core.runner import train

CONFIG = configs_dir() / "core" / "shapes_demo.yaml"


class StopAt(L.Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True


def _cfg(root: Path, out: Path, name: str):
    return load_config(CONFIG, [
        f"data.params.root={root}", f"out_dir={out}", f"name={name}", "trainer.max_steps=10",
        "data.batch_size=16", "data.items_per_group=8", "trainer.val_check_interval=null",
        "trainer.check_val_every_n_epoch=1", "trainer.limit_val_batches=1", "trainer.enable_progress_bar=false",
        "model.towers.image.params.widths=[8,16]", "optim.warmup_steps=3", "checkpoint.every_n_train_steps=1",
        "checkpoint.save_top_k=-1", "eval=[]"])


def test_resume_mid_epoch_matches_uninterrupted(shapes_tiny: Path, tmp_path: Path) -> None:
    # 32 training images, batches of 16: 2 batches per epoch; stop at step 5 = inside epoch 3
    full = train(_cfg(shapes_tiny, tmp_path, "full"))["model"]
    first = train(_cfg(shapes_tiny, tmp_path, "split"), callbacks=[StopAt(5)])
    assert first["trainer"].global_step == 5
    resumed = train(_cfg(shapes_tiny, tmp_path, "split"), resume=True)
    assert resumed["trainer"].global_step == 10
    a, b = full.state_dict(), resumed["model"].state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"weights differ after resume: {k}"
    # training moved the weights after the interruption, so the equality above is not trivial
    at_stop = torch.load(tmp_path / "split" / "checkpoints" / "step0000005.ckpt", weights_only=True)["state_dict"]
    assert any(not torch.equal(a[k], at_stop[k]) for k in a if a[k].is_floating_point())


def test_resume_refuses_without_checkpoint(tmp_path: Path, shapes_tiny: Path) -> None:
    import pytest
    from alignkit.core.registry import ConfigError
    with pytest.raises(ConfigError, match="no checkpoint"):
        train(_cfg(shapes_tiny, tmp_path, "nothing"), resume=True)
