"""Shared fixtures. Tests run offline: model weights only ever come from local folders."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def pytest_configure(config: pytest.Config) -> None:
    # Under pytest-xdist each worker gets one intra-op thread, so workers do not oversubscribe the cores; the
    # cap also holds for configs that ask for more (num_threads: 2 in the CPU demo configs), which otherwise ran
    # 3-6x slower beside another worker.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        from alignkit.core.runner import MAX_THREADS_ENV
        os.environ[MAX_THREADS_ENV] = "1"
        torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    """End-to-end runs (``slow``: the demos, each minutes long) start first, longest first, so that under
    pytest-xdist the two workers finish together instead of one running a demo alone at the end."""
    order = {"robotics": 0, "medical/test_xray": 1, "medical/echo": 2, "demos": 3, "pointcloud": 4}

    def rank(item: pytest.Item) -> tuple:
        if item.get_closest_marker("slow") is None:
            return (1, 0)
        where = item.nodeid
        return (0, next((v for k, v in order.items() if k in where), len(order)))
    items.sort(key=rank)  # stable: the other tests keep their order


@pytest.fixture(scope="session")
def shapes_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny shapes dataset in the paired-csv format: 4 blocks x 8 shapes for training, 24 val, 40 test."""
    from alignkit.demos.shapes import write_shapes_dataset
    root = tmp_path_factory.mktemp("shapes_tiny")
    write_shapes_dataset(root, train_replicas=1, max_train_blocks=4, num_val=24, num_test=40, image_size=32)
    return root


@pytest.fixture(scope="session")
def cxr_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic MIMIC-CXR-JPG tree of 30 studies at 64 px, 60/20/20 % train/validate/test."""
    from alignkit.domains.medical.xray.synthetic.archive import write_synthetic_mimic
    root = tmp_path_factory.mktemp("cxr_tiny")
    write_synthetic_mimic(root, 30, image_size=64, split_fractions=(0.6, 0.2, 0.2))
    return root


TINY_TRAIN = ["trainer.max_steps=4", "data.batch_size=16", "model.towers.image.params.widths=[8,16]",
              "trainer.val_check_interval=null", "trainer.limit_val_batches=1", "trainer.enable_progress_bar=false",
              "eval.0.params.num_candidates=20"]


@pytest.fixture(scope="session")
def exported_tiny_model(shapes_tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo config trained for 4 steps on ``shapes_tiny`` and exported with `alignkit export`."""
    from alignkit.cli import main
    from alignkit.core.config import configs_dir
    out = tmp_path_factory.mktemp("tiny_run")
    config = configs_dir() / "core" / "shapes_demo.yaml"
    assert main(["train", "-c", str(config), "--set", f"data.params.root={shapes_tiny}", f"out_dir={out}",
                 "name=tiny", *TINY_TRAIN]) == 0
    assert main(["export", str(out / "tiny"), "--out", str(out / "export")]) == 0
    return out / "export"
