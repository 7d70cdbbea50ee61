"""``alignkit demo xray``: ConVIRT and GLoRIA pretrained on a synthetic MIMIC-CXR-JPG archive, compared the BenchX way.

Steps: write the synthetic archive (:func:`~alignkit.domains.medical.xray.synthetic.archive.write_synthetic_mimic`:
a real MIMIC-CXR-JPG layout with six findings among decoys, masks and free-text reports), run the bench config
``configs/medical/bench/xray_demo.yaml`` (CPU-sized ConVIRT and GLoRIA against the same CNN at random
initialisation; linear probes at 1/10/100 % of the labels over seeds, zero-shot with the generator's finding
prompts against a normal statement, report<->image retrieval over 100 candidates, segmentation Dice against an
all-empty prediction, report generation against nearest-report retrieval), write GLoRIA's word-attention
overlays, and print every target beside its baseline. Outputs under ``--out``: ``data/``, ``bench/`` (each
method's run folder, ROC PNGs, ``benchx.md``/``.json``), ``gloria_attention/`` and ``metrics.json``.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from rich.console import Console
from rich.table import Table

from alignkit.core.config import configs_dir
from alignkit.core.registry import DEMOS
from alignkit.core.runner import write_metrics
from alignkit.core.workdir import fresh, generated
from alignkit.domains.medical.reports import split_sentences
from alignkit.domains.medical.xray.bench.run import XRayBenchResult, run_xray_bench
from alignkit.domains.medical.xray.bench.table import BenchTable
from alignkit.domains.medical.xray.bench.zero_shot import PromptSets, prompt_sets
from alignkit.domains.medical.xray.synthetic.archive import write_synthetic_mimic
from alignkit.domains.medical.xray.synthetic.plans import FINDING_COLUMNS, FINDING_PROMPTS, NORMAL_PROMPTS

PRETRAINED = ("convirt", "gloria")
BASELINE = "random-init"
CANDIDATES = 100
NUM_STUDIES, FAST_NUM_STUDIES = 4000, 1000
SPLIT_FRACTIONS = (0.7, 0.1, 0.2)  # train / validate / test studies: validation picks epochs and thresholds
FAST_OVERRIDES = [
    'methods.convirt.overrides=["trainer.max_steps=120", "trainer.val_check_interval=120"]',
    'methods.gloria.overrides=["trainer.max_steps=40", "trainer.val_check_interval=40"]',
    "benchx.seeds=[0,1]", "benchx.segmentation_epochs=4", "benchx.generation_epochs=2",
    "benchx.generation_max_reports=60",
]
FINDING_WORDS = {"Cardiomegaly": r"cardi|heart", "Pleural Effusion": r"effusion", "Pneumothorax": r"pneumothorax",
                 "Lung Lesion": r"nodul", "Consolidation": r"consolidat", "Edema": r"edema"}
"""A pattern that finds the sentence naming each finding (to show its words' attention)."""


@dataclass(frozen=True)
class Target:
    """``metric`` (a key of the demo's metrics) compared with ``bound`` (``>=`` or ``<=``); ``fast_bound`` is the
    looser bound of ``--fast`` (fewer steps and studies), which must still beat the baseline."""

    label: str
    metric: str
    baseline: Optional[str]
    op: str
    bound: float
    fast_bound: float

    def met(self, metrics: Dict[str, float], fast: bool) -> bool:
        bound = self.fast_bound if fast else self.bound
        value = metrics[self.metric]
        return value >= bound if self.op == ">=" else value <= bound


TARGETS: Tuple[Target, ...] = (
    Target("random-init probe @10%: mean AUROC (task hardness)", "random_init/probe@10%", None, "<=", 0.75, 0.80),
    Target("random-init probe @10%: findings <= 0.60", "random_init/findings_at_most_0.60", None, ">=", 2, 1),
    Target("zero-shot mean AUROC (best method)", "best/zero_shot_auroc", "random_init/zero_shot_auroc", ">=", 0.85,
           0.70),
    Target("zero-shot worst finding (best method)", "best/zero_shot_min_finding", "random_init/zero_shot_min_finding",
           ">=", 0.65, 0.55),
    Target("probe gain over random init @1%", "best/probe_gain@1%", None, ">=", 0.15, 0.03),
    Target("probe gain over random init @10%", "best/probe_gain@10%", None, ">=", 0.10, 0.03),
    Target("report->image R@1 (100 candidates)", "best/report2image_R@1", "random_init/report2image_R@1", ">=", 0.25,
           0.05),
    Target("report->image R@5 (100 candidates)", "best/report2image_R@5", "random_init/report2image_R@5", ">=", 0.55,
           0.15),
    Target("segmentation Dice (best method)", "best/seg_dice", "all_empty/seg_dice", ">=", 0.0, 0.0),
)
"""The issue's targets on held-out studies. Segmentation's bound is relative: checked as Dice - all-empty Dice
>= :data:`SEG_MARGIN` in :func:`judge`."""
SEG_MARGIN, FAST_SEG_MARGIN = 0.05, 0.0


def finding_prompts() -> PromptSets:
    """Zero-shot prompt sets keyed by the CheXpert columns of the six findings: the generator's phrasings as the
    positive ensemble, a normal statement as the negative (why: docs/medical.md)."""
    return prompt_sets({FINDING_COLUMNS[f]: FINDING_PROMPTS[f] for f in FINDING_PROMPTS}, NORMAL_PROMPTS)


def _mean(table: BenchTable, method: str, metric: str) -> float:
    return table.rows[method][metric][0]


def summarize(table: BenchTable) -> Dict[str, float]:
    """Flat demo metrics from the bench table: every method's columns and per-class values, plus ``best/*`` (the
    best pretrained method per figure), ``random_init/*`` and the derived hardness and gain figures."""
    metrics: Dict[str, float] = {}
    for method, row in table.rows.items():
        for metric, (mean, _) in row.items():
            metrics[f"{method}/{metric}"] = mean
    for metric, by_method in table.per_class.items():
        for method, values in by_method.items():
            for cls, value in values.items():
                metrics[f"{method}/{metric}/{cls}"] = value
    base = table.rows[BASELINE]
    probe10 = table.per_class["cls_auroc@10%"][BASELINE]
    metrics["random_init/probe@10%"] = base["cls_auroc@10%"][0]
    metrics["random_init/findings_at_most_0.60"] = float(sum(v <= 0.60 for v in probe10.values()))
    methods = [m for m in PRETRAINED if m in table.rows]

    def best(values: Dict[str, float]) -> float:
        return max(values.values())

    zs_min = {m: min(table.per_class["zero_shot_auroc"][m].values()) for m in methods}
    metrics["best/zero_shot_auroc"] = best({m: _mean(table, m, "zero_shot_auroc") for m in methods})
    metrics["best/zero_shot_min_finding"] = best(zs_min)
    metrics["random_init/zero_shot_auroc"] = base["zero_shot_auroc"][0]
    metrics["random_init/zero_shot_min_finding"] = min(table.per_class["zero_shot_auroc"][BASELINE].values())
    for pct in ("1", "10", "100"):
        key = f"cls_auroc@{pct}%"
        if key in base:
            metrics[f"best/probe@{pct}%"] = best({m: _mean(table, m, key) for m in methods})
            metrics[f"best/probe_gain@{pct}%"] = metrics[f"best/probe@{pct}%"] - base[key][0]
            metrics[f"random_init/probe@{pct}%"] = base[key][0]
    for k in ("report2image_R@1", "report2image_R@5"):
        metrics[f"best/{k}"] = best({m: _mean(table, m, k) for m in methods})
        metrics[f"random_init/{k}"] = base[k][0]
    if "seg_dice" in base:
        metrics["best/seg_dice"] = best({m: _mean(table, m, "seg_dice") for m in methods})
        metrics["all_empty/seg_dice"] = table.rows["all-empty prediction"]["seg_dice"][0]
    return metrics


def judge(metrics: Dict[str, float], fast: bool) -> List[Tuple[Target, bool]]:
    """Each target with whether it is met (segmentation: Dice above the all-empty Dice by the margin)."""
    out = []
    for target in TARGETS:
        if target.metric not in metrics:
            continue
        if target.metric == "best/seg_dice":
            margin = FAST_SEG_MARGIN if fast else SEG_MARGIN
            ok = metrics["best/seg_dice"] - metrics["all_empty/seg_dice"] >= margin
        else:
            ok = target.met(metrics, fast)
        out.append((target, ok))
    return out


def _targets_table(metrics: Dict[str, float], fast: bool) -> Table:
    table = Table(title=f"alignkit demo xray{' --fast' if fast else ''}: held-out studies (best of ConVIRT/GLoRIA)")
    for col in ("figure", "value", "baseline", "target", "met"):
        table.add_column(col, justify="left" if col == "figure" else "right")
    for target, ok in judge(metrics, fast):
        bound = target.fast_bound if fast else target.bound
        if target.metric == "best/seg_dice":
            baseline, goal = f"{metrics['all_empty/seg_dice']:.3f} (all-empty)", \
                f"> baseline + {FAST_SEG_MARGIN if fast else SEG_MARGIN}"
        else:
            baseline = f"{metrics[target.baseline]:.3f} (random init)" if target.baseline else "-"
            goal = f"{target.op} {bound:g}"
        value = metrics[target.metric]
        table.add_row(target.label, f"{value:.0f}" if "findings" in target.metric else f"{value:.3f}", baseline, goal,
                      "yes" if ok else "NO")
    table.add_row("report->image chance R@1 / R@5", f"{1 / CANDIDATES:.3f} / {5 / CANDIDATES:.3f}", "-", "-", "-")
    return table


def _methods_table(table: BenchTable) -> Table:
    cols = ["cls_auroc@1%", "cls_auroc@10%", "cls_auroc@100%", "zero_shot_auroc", "report2image_R@1",
            "report2image_R@5", "seg_dice", "gen_bleu4", "gen_rouge_l", "gen_retrieval_bleu4", "gen_retrieval_rouge_l"]
    out = Table(title="BenchX table (mean ± std over seeds; generation: decoder vs nearest-report retrieval)")
    out.add_column("method")
    present = [c for c in cols if any(c in row for row in table.rows.values())]
    for c in present:
        out.add_column(c.replace("cls_auroc", "probe").replace("report2image_", "r2i ").replace("gen_", ""),
                       justify="right")
    for method, row in table.rows.items():
        out.add_row(method, *[BenchTable._cell(row.get(c)) for c in present])
    return out


def _per_class_table(table: BenchTable, metric: str, title: str) -> Table:
    by_method = table.per_class[metric]
    classes = list(next(iter(by_method.values())))
    out = Table(title=title)
    out.add_column("method")
    for c in classes:
        out.add_column(c, justify="right")
    for method, values in by_method.items():
        out.add_row(method, *[f"{values[c]:.3f}" for c in classes])
    return out


def write_attention_overlays(result: XRayBenchResult, out_dir: Path, count: int = 4) -> List[Path]:
    """GLoRIA word-attention PNGs for the first ``count`` test images with a positive finding, each over the
    report sentence that names the finding."""
    model = result.models.get("gloria")
    if model is None or not hasattr(model, "write_attention_pngs"):
        return []
    dataset = result.datamodule.test_dataset
    names = list(dataset.class_names)
    images, texts, ids = [], [], []
    for i in range(len(dataset)):
        labels = dataset.labels(i)
        positive = [names[c] for c, v in enumerate(labels) if v == 1 and names[c] in FINDING_WORDS]
        if not positive:
            continue
        sample = dataset[i]
        report = sample["text"] if isinstance(sample["text"], str) else " ".join(sample["text"])
        pattern = FINDING_WORDS[positive[0]]
        sentence = next((s for s in split_sentences(report) if re.search(pattern, s, re.I)), None)
        if sentence is None:
            continue
        images.append(sample["image"])
        texts.append(sentence)
        ids.append(f"{sample['id']}_{positive[0].replace(' ', '_')}")
        if len(images) == count:
            break
    if not images:
        return []
    return model.write_attention_pngs(torch.stack(images), texts, out_dir, ids=ids, max_words=8)


@DEMOS.register("xray")
def run_demo(out: Path, fast: bool = False, config: str | Path | None = None) -> Dict[str, float]:
    out = Path(out)
    t0 = time.time()
    console = Console(width=140)
    num_studies = FAST_NUM_STUDIES if fast else NUM_STUDIES
    data_root = generated(out / "data", "mimic-cxr-2.0.0-metadata.csv",
                          f"a synthetic MIMIC-CXR-JPG archive of {num_studies} studies",
                          lambda root: write_synthetic_mimic(root, num_studies, image_size=96, seed=0,
                                                             split_fractions=SPLIT_FRACTIONS), console)
    fresh(out / "bench")  # a re-run starts over; the generated data is kept
    overrides: Sequence[str] = [f'overrides=["data.params.root={data_root}"]', f"out_dir={out}", "name=bench",
                                *(FAST_OVERRIDES if fast else [])]
    result = run_xray_bench(config or configs_dir() / "medical" / "bench" / "xray_demo.yaml", overrides,
                            benchx={"prompts": finding_prompts()})
    attention = write_attention_overlays(result, out / "gloria_attention")
    metrics = summarize(result.table)
    for method, tasks in result.table.seconds.items():
        metrics.update({f"seconds/{method}/{task}": value for task, value in tasks.items()})
    metrics["demo/seconds"] = time.time() - t0
    metrics["demo/targets_met"] = float(all(ok for _, ok in judge(metrics, fast)))
    write_metrics(out, metrics)

    console.print(_methods_table(result.table))
    console.print(_per_class_table(result.table, "cls_auroc@10%", "linear probe @10% labels: AUROC per finding"))
    console.print(_per_class_table(result.table, "zero_shot_auroc", "zero-shot AUROC per finding"))
    console.print(_targets_table(metrics, fast))
    console.print("wall-clock seconds: " + "; ".join(
        f"{method}: " + ", ".join(f"{task} {value:.0f}" for task, value in tasks.items())
        for method, tasks in result.table.seconds.items()))
    console.print(f"{'fast ' if fast else ''}demo took {metrics['demo/seconds']:.0f} s; metrics: {out / 'metrics.json'}"
                  f"; table: {result.out_dir / 'benchx.md'}; ROC curves: {result.out_dir}/<method>/*.png; "
                  f"GLoRIA attention: {len(attention)} PNGs in {out / 'gloria_attention'}")
    return metrics
