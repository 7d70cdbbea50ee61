"""``alignkit demo core``: align an image encoder to the frozen pretrained MiniLM on procedural shapes.

Steps: write the shapes dataset (:mod:`alignkit.demos.shapes`) in the plain ``paired-csv`` format,
train ``configs/core/shapes_demo.yaml`` with Lightning on CPU (hard-negative batches of images that
differ in shape alone), evaluate on held-out images with the core evaluators, and print one table
beside chance and the ceiling that duplicate attribute combinations among the candidates impose.
Writes ``metrics.json`` and the run folder under ``--out``.
"""
from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import torch
from rich.console import Console

from alignkit.core.api import AlignedModel
from alignkit.core.config import configs_dir, load_config, to_plain
from alignkit.core.metrics import candidate_blocks
from alignkit.core.registry import DATASETS, DEMOS, EVALUATORS
from alignkit.core.results import results_table
from alignkit.core.runner import train, write_metrics
from alignkit.core.workdir import fresh, generated
from alignkit.demos.shapes import SHAPES, attribute_key, write_shapes_dataset

CANDIDATES = 200
TARGETS = {"text2image_R@1": 0.85, "unseen_text2image_R@1": 0.70, "zero_shot_shape_top1": 0.80}
# `--fast` (tests): a quarter of the data, a narrower CNN and fewer steps; it must still beat chance widely.
FAST_OVERRIDES = ["trainer.max_steps=220", "model.towers.image.params.widths=[16,32,64]", "optim.warmup_steps=20"]
FAST_REPLICAS, FULL_REPLICAS = 2, 8


def duplicate_ceiling(keys: Sequence[str], blocks: Sequence[torch.Tensor]) -> float:
    """Best expected R@1 of a model that sees only the attributes: mean over queries of 1 / #same-key candidates."""
    vals: List[float] = []
    for idx in blocks:
        block = [keys[i] for i in idx.tolist()]
        counts: Dict[str, int] = {}
        for k in block:
            counts[k] = counts.get(k, 0) + 1
        vals.extend(1.0 / counts[k] for k in block)
    return float(np.mean(vals))


def _test_attribute_keys(root: Path, ids: Sequence[str]) -> List[str]:
    with open(root / "pairs.csv", newline="") as f:
        by_path = {r["path"]: attribute_key(r) for r in csv.DictReader(f)}
    return [by_path[i] for i in ids]


@DEMOS.register("core")
def run_demo(out: Path, fast: bool = False, config: str | Path | None = None) -> Dict[str, float]:
    out = Path(out)
    t0 = time.time()
    console = Console()
    data_root = generated(out / "data", "pairs.csv", "the shapes dataset", lambda root: write_shapes_dataset(
        root, train_replicas=FAST_REPLICAS if fast else FULL_REPLICAS), console)
    fresh(out / "run")  # a demo re-run starts over; the generated data is kept
    overrides = [f"data.params.root={data_root}", f"out_dir={out}", "name=run"]
    overrides += FAST_OVERRIDES if fast else []
    cfg = load_config(config or configs_dir() / "core" / "shapes_demo.yaml", overrides)
    result = train(cfg)
    metrics: Dict[str, float] = dict(result["metrics"])
    train_seconds = time.time() - t0

    # the same retrieval protocol on captions written with templates never used in training
    model = AlignedModel(result["model"], to_plain(cfg))
    params = {**to_plain(cfg.data.params), "text_column": "caption_unseen"}
    unseen = DATASETS.build(cfg.data.dataset, split="test", **params)
    loader = result["datamodule"].loader_for(unseen)
    retrieval = [e for e in cfg.eval if e.name == "retrieval"][0]
    unseen_metrics = EVALUATORS.build("retrieval", **to_plain(retrieval.params))(model, None, loader, out / "unseen")
    metrics.update({f"unseen_{k}": v for k, v in unseen_metrics.items()})

    keys = _test_attribute_keys(data_root, unseen.ids)
    blocks = candidate_blocks(len(keys), CANDIDATES, seed=int(retrieval.params.get("seed", 0)))
    ceiling = duplicate_ceiling(keys, blocks)
    metrics["retrieval/duplicate_ceiling_R@1"] = ceiling
    metrics["demo/seconds"] = time.time() - t0
    metrics["demo/train_seconds"] = train_seconds
    write_metrics(out, metrics)

    chance_r1 = f"{1 / CANDIDATES:.3f}"
    rows = [
        ("text->image R@1 (200 candidates)", metrics["retrieval/text2image_R@1"], chance_r1,
         f"{ceiling:.3f} / >= {TARGETS['text2image_R@1']}"),
        ("image->text R@1 (200 candidates)", metrics["retrieval/image2text_R@1"], chance_r1, f"{ceiling:.3f} / -"),
        ("text->image R@5 (200 candidates)", metrics["retrieval/text2image_R@5"], f"{5 / CANDIDATES:.3f}", "- / -"),
        ("text->image R@1, unseen templates", metrics["unseen_retrieval/text2image_R@1"], chance_r1,
         f"{ceiling:.3f} / >= {TARGETS['unseen_text2image_R@1']}"),
        ("zero-shot shape top-1 (8 names)", metrics["zero_shot/top1"], f"{1 / len(SHAPES):.3f}",
         f"1.000 / >= {TARGETS['zero_shot_shape_top1']}"),
    ]
    judged = {"text->image R@1 (200 candidates)": TARGETS["text2image_R@1"],
              "text->image R@1, unseen templates": TARGETS["unseen_text2image_R@1"],
              "zero-shot shape top-1 (8 names)": TARGETS["zero_shot_shape_top1"]}
    table_rows = [(*r, ("yes" if r[1] >= judged[r[0]] else "NO") if r[0] in judged else "-") for r in rows]
    console.print(results_table("alignkit demo core: held-out shapes", table_rows,
                                ("metric", "value", "chance", "ceiling / target", "met")))
    console.print(f"{'fast ' if fast else ''}demo took {metrics['demo/seconds']:.0f} s; "
                  f"metrics: {out / 'metrics.json'}; run folder: {result['run_dir']}")
    return metrics
