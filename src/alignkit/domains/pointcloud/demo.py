"""``alignkit demo pointcloud``: ULIP zero-shot classification and Text4Point segmentation on generated 3D data.

Steps (all on CPU, outputs under ``--out``):

1. write a procedural ModelNet40-layout folder of ``.off`` meshes (:func:`~alignkit.domains.pointcloud.synthetic.
   write_synthetic_modelnet`: 12 pretraining classes and 3 held-out classes, each with a structural relative);
2. ULIP without CLIP, two stages: ``configs/pointcloud/ulip_demo_stage1.yaml`` aligns an image tower to the frozen
   MiniLM on rendered views (rendered once, kept beside the meshes: the (cloud, image, text) triplets), then
   ``ulip_demo_stage2.yaml`` aligns a small PointNet++ to both locked towers (point-text + point-image);
3. zero-shot classification of held-out instances with ULIP's 64-template ensemble: over the 12 pretraining
   classes; over the 3 held-out classes among themselves (true zero-shot: their names never appear in
   pretraining); the held-out instances against all 15 names;
4. Text4Point: synthetic RGB-D scenes, dense point-pixel pretraining (``text4point_demo_pretrain.yaml``), then
   segmentation with the Text Querying Module (``text4point_demo_seg.yaml``) scored by mIoU.

Every figure is printed beside chance or its baseline and its target; ``metrics.json`` holds them all.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from rich.console import Console
from rich.table import Table

from alignkit.core.api import AlignedModel
from alignkit.core.config import configs_dir, load_config, to_plain
from alignkit.core.embeddings import embed_loader
from alignkit.core.metrics import class_embeddings, topk_accuracy, zero_shot_predict
from alignkit.core.registry import DATASETS, DEMOS
from alignkit.core.results import results_table
from alignkit.core.runner import CHECKPOINT_DIR, LAST_CHECKPOINT, train, write_metrics
from alignkit.core.workdir import fresh, generated
from alignkit.domains.pointcloud.evaluate import PointZeroShotEvaluator
from alignkit.domains.pointcloud.prompts import MODELNET40_64
from alignkit.domains.pointcloud.rgbd.synthetic import write_synthetic_scenes
from alignkit.domains.pointcloud.synthetic import HELD_OUT_RELATIVES, TRAIN_CLASSES, write_synthetic_modelnet

CONFIGS = ("ulip_demo_stage1.yaml", "ulip_demo_stage2.yaml", "text4point_demo_pretrain.yaml",
           "text4point_demo_seg.yaml")
HELD_OUT: Tuple[str, ...] = tuple(HELD_OUT_RELATIVES)
ALL: Tuple[str, ...] = TRAIN_CLASSES + HELD_OUT


@dataclass(frozen=True)
class DemoSize:
    """Data sizes, training steps and extra config overrides (per config file) of one demo mode."""

    per_class_train: int
    per_class_test: int
    scenes: int
    frames: int
    steps: Dict[str, int]
    overrides: Dict[str, List[str]] = field(default_factory=dict)


FULL = DemoSize(per_class_train=60, per_class_test=15, scenes=40, frames=6,
                steps={"ulip_demo_stage1.yaml": 300, "ulip_demo_stage2.yaml": 700,
                       "text4point_demo_pretrain.yaml": 150, "text4point_demo_seg.yaml": 300})
FAST = DemoSize(per_class_train=12, per_class_test=5, scenes=10, frames=4,
                steps={"ulip_demo_stage1.yaml": 30, "ulip_demo_stage2.yaml": 80,
                       "text4point_demo_pretrain.yaml": 15, "text4point_demo_seg.yaml": 40},
                overrides={"text4point_demo_pretrain.yaml": ["data.params.num_points=512"],
                           "text4point_demo_seg.yaml": ["data.params.num_points=512"]})


@dataclass(frozen=True)
class Target:
    """``metric >= bound`` (``--fast``: ``>= fast_bound``), printed beside ``baseline`` (a number or a metric)."""

    label: str
    metric: str
    baseline: Any
    bound: float
    fast_bound: float

    def baseline_value(self, metrics: Dict[str, float]) -> float:
        return float(metrics[self.baseline]) if isinstance(self.baseline, str) else float(self.baseline)

    def threshold(self, metrics: Dict[str, float], fast: bool) -> float:
        """The bound; a bound relative to a baseline metric (segmentation) is that metric plus the margin."""
        margin = self.fast_bound if fast else self.bound
        return self.baseline_value(metrics) + margin if isinstance(self.baseline, str) else margin


TARGETS: Tuple[Target, ...] = (
    Target("zero-shot top-1, 12 pretraining classes (held-out instances)", "zero_shot/top1", 1 / len(TRAIN_CLASSES),
           0.90, 0.60),
    Target("true zero-shot top-1, 3 unseen classes among themselves", "held_out/top1", 1 / len(HELD_OUT), 0.65, 0.45),
    Target("segmentation mIoU (Text4Point TQM)", "segmentation/mIoU", "segmentation/majority_mIoU", 0.15, 0.10),
)
REPORTED: Tuple[Tuple[str, str, float], ...] = (
    ("zero-shot top-5, 12 pretraining classes", "zero_shot/top5", 5 / len(TRAIN_CLASSES)),
    ("zero-shot mean per-class acc, 12 classes", "zero_shot/mean_per_class_acc", 1 / len(TRAIN_CLASSES)),
    ("unseen classes against all 15 names, top-1", "held_out_vs_all/top1", 1 / len(ALL)),
    ("point->text R@1 (class captions)", "retrieval/points2text_R@1", float("nan")),
    ("image->text zero-shot top-1 (stage 1, 1 template)", "stage1/zero_shot/top1", 1 / len(TRAIN_CLASSES)),
)


def _train(name: str, overrides: Sequence[str], out: Path, size: DemoSize, config_dir: Path) -> Dict[str, Any]:
    fresh(out / "runs" / Path(name).stem)  # a demo re-run starts over; the generated data and views are kept
    cfg = load_config(config_dir / name, [*overrides, *size.overrides.get(name, []), f"out_dir={out / 'runs'}",
                                          f"name={Path(name).stem}", f"trainer.max_steps={size.steps[name]}",
                                          "trainer.enable_progress_bar=false"])
    return train(cfg)


def zero_shot_among(model: AlignedModel, datamodule: Any, params: Dict[str, Any], classes: Sequence[str],
                    scored: Sequence[str], templates: Sequence[str] = MODELNET40_64) -> Dict[str, float]:
    """Top-1/top-5 of the test items of classes ``scored`` when every class of ``classes`` is a candidate."""
    data = DATASETS.build("modelnet40", split="test", **{**params, "classes": list(classes)})
    out = embed_loader(model, datamodule.loader_for(data), ["points"], progress=False, fields=["label"])
    names = data.class_names
    with torch.no_grad():
        text = class_embeddings(lambda texts: model.embed("text", texts), names, templates)
    logits = zero_shot_predict(out["points"], text)
    keep = torch.tensor([names[int(y)] in scored for y in out["label"]])
    return topk_accuracy(logits[keep], out["label"][keep], ks=(1, 5))


def _table(metrics: Dict[str, float], fast: bool) -> Table:
    rows = []
    for t in TARGETS:
        bound = t.threshold(metrics, fast)
        rows.append((t.label, metrics[t.metric], f"{t.baseline_value(metrics):.3f}", f">= {bound:.3f}",
                     "yes" if metrics[t.metric] >= bound else "NO"))
    rows += [(label, metrics[metric], "-" if chance != chance else f"{chance:.3f}", "-", "-")
             for label, metric, chance in REPORTED]
    return results_table(f"alignkit demo pointcloud{' --fast' if fast else ''}: held-out instances", rows,
                         columns=("metric", "value", "chance / baseline", "target", "met"))


@DEMOS.register("pointcloud")
def run_demo(out: Path, fast: bool = False, config: Optional[str | Path] = None) -> Dict[str, float]:
    """Run the demo (module docstring) into ``out``; ``config``: a folder holding the four demo configs
    (default ``configs/pointcloud``). Returns the flat metrics (also in ``out/metrics.json``)."""
    out, size, console = Path(out), FAST if fast else FULL, Console()
    config_dir = Path(config) if config is not None else configs_dir() / "pointcloud"
    start = time.time()
    torch.manual_seed(0)
    metrics: Dict[str, float] = {}

    meshes = generated(out / "data" / "modelnet", "synthetic.json", "procedural ModelNet40-layout meshes",
                       lambda root: write_synthetic_modelnet(root, size.per_class_train, size.per_class_test, seed=0),
                       console)
    cache = f"data.params.cache_dir={out / 'data' / 'cache'}"  # sampled clouds and views stay with the demo
    stage1 = _train(CONFIGS[0], [f"data.params.root={meshes}", cache], out, size, config_dir)
    metrics.update({f"stage1/{k}": v for k, v in stage1["metrics"].items()})
    checkpoint = stage1["run_dir"] / CHECKPOINT_DIR / LAST_CHECKPOINT
    stage2 = _train(CONFIGS[1], [f"data.params.root={meshes}", cache, f"model.params.pretrained={checkpoint}"],
                    out, size, config_dir)
    metrics.update(stage2["metrics"])
    model = AlignedModel(stage2["model"], to_plain(load_config(stage2["run_dir"] / "config.yaml")))
    params = to_plain(load_config(stage2["run_dir"] / "config.yaml").data.params)
    unseen = DATASETS.build("modelnet40", split="test", **{**params, "classes": list(HELD_OUT)})
    held = PointZeroShotEvaluator(progress=False)(model, None, stage2["datamodule"].loader_for(unseen),
                                                  out / "held_out")
    metrics.update({k.replace("zero_shot/", "held_out/"): v for k, v in held.items()})
    against_all = zero_shot_among(model, stage2["datamodule"], params, ALL, HELD_OUT)
    metrics.update({f"held_out_vs_all/{k}": v for k, v in against_all.items()})
    metrics["demo/ulip_seconds"] = time.time() - start

    scenes = generated(out / "data" / "scenes", "classes.txt", "synthetic RGB-D scenes",
                       lambda root: write_synthetic_scenes(root, num_scenes=size.scenes, frames_per_scene=size.frames,
                                                           image_size=64, seed=0, split_fractions=(0.75, 0.0, 0.25)),
                       console)
    pre = _train(CONFIGS[2], [f"data.params.root={scenes}"], out, size, config_dir)
    metrics.update({f"text4point_pretrain/{k}": v for k, v in pre["metrics"].items()})
    seg = _train(CONFIGS[3], [f"data.params.root={scenes}",
                              f"model.params.pretrained={pre['run_dir'] / CHECKPOINT_DIR / LAST_CHECKPOINT}"],
                 out, size, config_dir)
    metrics.update(seg["metrics"])
    metrics["demo/seconds"] = time.time() - start
    metrics = {k: float(v) for k, v in metrics.items() if _is_number(v)}
    write_metrics(out, metrics)
    console.print(_table(metrics, fast))
    console.print(f"{'fast ' if fast else ''}demo took {metrics['demo/seconds']:.0f} s; metrics: "
                  f"{out / 'metrics.json'}; runs: {out / 'runs'}")
    return metrics


def targets_met(metrics: Dict[str, float], fast: bool) -> List[Tuple[str, bool]]:
    """``(label, met)`` of every :data:`TARGETS` entry."""
    return [(t.label, metrics[t.metric] >= t.threshold(metrics, fast)) for t in TARGETS]


def _is_number(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.numel() == 1
    return isinstance(value, (int, float)) and not isinstance(value, bool)


__all__ = ["DemoSize", "FULL", "FAST", "Target", "TARGETS", "zero_shot_among", "run_demo", "targets_met"]
