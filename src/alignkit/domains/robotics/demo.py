"""``alignkit demo robotics``: scripted demonstrations -> Voltron -> GR-1 and BC -> simulator rollouts, on CPU.

For each of two simulators (outputs under ``--out``):

1. collect scripted-expert demonstrations as a LeRobot v3.0 dataset (train layouts, successes only):
   BabyAI PickupLoc (the BabyAI bot) and four Meta-World tasks, two of which share one scene
   (``reach-v3`` and ``push-v3``: the same object and goal layout for a seed, so only the instruction tells
   them apart), with Meta-World's scripted policies;
2. pretrain Voltron V-Cond briefly on the dataset's frames and captions (``demo_<sim>_voltron.yaml``) and export
   its encoder;
3. train GR-1 (``demo_<sim>_gr1.yaml``) and the language-conditioned BC baseline (``demo_<sim>_lcbc.yaml``) on
   the frozen Voltron features, from the configs, with the core runner;
4. evaluate by rollouts on test layouts (never seen in training): GR-1 with the true and with a shuffled
   instruction (another episode's), BC, and a random policy; success with Wilson 95% intervals per task; on
   BabyAI also CALVIN-style chains of 5 pick-up instructions in one episode (average number completed in a row);
   rollout videos of the first episodes of each task.

One table prints every figure beside its baselines and its target; ``metrics.json`` holds them all.

With two or more CPU threads available (``ALIGNKIT_MAX_THREADS`` caps them; the tests set 1) the two simulators
run side by side in two processes of one thread each: these small models gain little from a second intra-op
thread, and two single-threaded pipelines use both cores.
"""
from __future__ import annotations

import multiprocessing
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from omegaconf import OmegaConf
from rich.console import Console

from alignkit.core.config import configs_dir, load_config
from alignkit.core.results import results_table
from alignkit.core.registry import DEMOS
from alignkit.core.runner import config_threads, train, write_metrics
from alignkit.domains.robotics.collect import write_demonstrations
from alignkit.domains.robotics.language_policy import LanguagePolicy
from alignkit.domains.robotics.rollout import RandomPolicy, RolloutResult, Rollouts

BABYAI_LEVEL = "BabyAI-PickupLoc-v0"
METAWORLD_TASKS = ("reach-v3", "push-v3", "drawer-open-v3", "button-press-v3")
SHARED_SCENE = ("reach-v3", "push-v3")
CHAIN_LEN = 5


@dataclass(frozen=True)
class DemoSize:
    """Demonstrations, training steps (per config file), evaluation episodes and config overrides of one mode."""

    babyai_demos: int
    metaworld_demos: int  # per task
    steps: Dict[str, int]
    babyai_episodes: int  # per condition
    metaworld_episodes: int  # per task and condition
    chains: int
    videos: int  # per task and condition
    overrides: Dict[str, List[str]] = field(default_factory=dict)


FULL = DemoSize(babyai_demos=5000, metaworld_demos=30, babyai_episodes=200, metaworld_episodes=20, chains=50,
                videos=2, steps={"demo_babyai_voltron.yaml": 300, "demo_babyai_gr1.yaml": 3000,
                                 "demo_babyai_lcbc.yaml": 800, "demo_metaworld_voltron.yaml": 200,
                                 "demo_metaworld_gr1.yaml": 1500, "demo_metaworld_lcbc.yaml": 800})
# --fast: fewer demonstrations, steps and episodes than FULL, except BabyAI's Voltron, which keeps its 300 steps:
# GR-1 needs patch embeddings that show what is in a cell (docs/robotics.md, "GR-1 on BabyAI")
FAST = DemoSize(babyai_demos=1500, metaworld_demos=10, babyai_episodes=100, metaworld_episodes=10, chains=10, videos=1,
                steps={"demo_babyai_voltron.yaml": 300, "demo_babyai_gr1.yaml": 1600, "demo_babyai_lcbc.yaml": 150,
                       "demo_metaworld_voltron.yaml": 40, "demo_metaworld_gr1.yaml": 500,
                       "demo_metaworld_lcbc.yaml": 150})


@dataclass(frozen=True)
class Target:
    """``metric >= bound`` (``at_most``: ``<=``); ``--fast`` judges ``fast_bound`` instead."""

    label: str
    metric: str
    baselines: Tuple[Tuple[str, str], ...]  # (name, metric) printed beside the value
    bound: float
    fast_bound: float
    at_most: bool = False

    def met(self, metrics: Dict[str, float], fast: bool) -> bool:
        bound = self.fast_bound if fast else self.bound
        value = metrics[self.metric]
        return value <= bound if self.at_most else value >= bound


TARGETS: Tuple[Target, ...] = (
    Target("BabyAI PickupLoc: GR-1 success", "babyai/gr1/success",
           (("random", "babyai/random/success"), ("shuffled", "babyai/gr1_shuffled/success"),
            ("BC", "babyai/lcbc/success")), 0.55, 0.35),
    Target("BabyAI PickupLoc: GR-1 minus random policy", "babyai/gr1_minus_random", (), 0.25, 0.15),
    Target("BabyAI PickupLoc: GR-1 minus shuffled instruction", "babyai/gr1_minus_shuffled", (), 0.25, 0.10),
    Target("Meta-World mean success, 4 tasks: GR-1", "metaworld/gr1/success",
           (("random", "metaworld/random/success"), ("shuffled", "metaworld/gr1_shuffled/success"),
            ("BC", "metaworld/lcbc/success")), 0.75, 0.40),
    Target("Meta-World random policy success", "metaworld/random/success", (), 0.05, 0.05, at_most=True),
    Target("Meta-World reach+push (one scene): correct minus shuffled", "metaworld/shared_scene_gap",
           (), 0.30, 0.15),
)


# --------------------------------------------------------------------------- steps
def _train(config: str, overrides: Sequence[str], out: Path, size: DemoSize, config_dir: Path,
           threads: int = 0) -> Dict[str, Any]:
    run = out / "runs" / Path(config).stem
    if run.exists():  # a demo re-run trains again; the collected demonstrations are kept
        shutil.rmtree(run)
    cfg = load_config(config_dir / config, [*overrides, *size.overrides.get(config, []), f"out_dir={out / 'runs'}",
                                            f"name={Path(config).stem}", f"trainer.max_steps={size.steps[config]}",
                                            "trainer.enable_progress_bar=false",
                                            *([f"num_threads={threads}"] if threads else [])])
    return train(cfg)


def _collect(spec: Dict[str, Any], root: Path, n: int, codec: str, console: Console) -> Path:
    """The demonstrations at ``root``, collected unless a finished dataset of the same size is there."""
    done = root / "meta" / "info.json"
    marker = root / "demo_size.txt"
    if done.is_file() and marker.is_file() and marker.read_text() == str(n):
        return root
    if root.exists():
        shutil.rmtree(root)
    report = write_demonstrations(spec, root, n=n, seed=0, progress=False, codec=codec)
    marker.write_text(str(n))
    console.print(report.summary())
    return root


def _simulator(name: str, spec: Dict[str, Any], n_demos: int, codec: str, out: Path, size: DemoSize,
               config_dir: Path, console: Console, metrics: Dict[str, float], threads: int) -> Tuple[Any, Any]:
    """Collect, pretrain Voltron, train GR-1 and BC; returns the two trained policies (modules)."""
    start = time.time()
    data = _collect(spec, out / "data" / name, n_demos, codec, console)
    metrics[f"{name}/collect_seconds"] = time.time() - start
    root = [f"data.params.root={data}"]
    start = time.time()
    voltron = _train(f"demo_{name}_voltron.yaml", root, out, size, config_dir, threads)
    metrics[f"{name}/voltron/train_loss"] = float(voltron["metrics"]["train/loss"])
    encoder = voltron["model"].export_encoder(out / "runs" / f"demo_{name}_voltron" / "encoder")
    with_encoder = [*root, f"model.params.image_encoder.params.path={encoder}"]
    metrics[f"{name}/voltron_seconds"] = time.time() - start
    modules = []
    for policy in ("gr1", "lcbc"):
        start = time.time()
        run = _train(f"demo_{name}_{policy}.yaml", with_encoder, out, size, config_dir, threads)
        metrics[f"{name}/{policy}/train_loss"] = float(run["metrics"]["train/loss"])
        metrics[f"{name}/{policy}_seconds"] = time.time() - start
        modules.append(run["model"])
    return modules[0], modules[1]


def _record(metrics: Dict[str, float], prefix: str, result: RolloutResult) -> None:
    """``<prefix>/<task>`` success per task, ``<prefix>/success`` overall and its Wilson interval."""
    metrics.update({f"{prefix}/{task}": rate.rate for task, rate in result.per_task.items()})
    metrics[f"{prefix}/success"] = result.overall.rate
    metrics[f"{prefix}/success_low"], metrics[f"{prefix}/success_high"] = result.overall.low, result.overall.high


def _evaluate(name: str, spec: Dict[str, Any], gr1: Any, lcbc: Any, episodes: int, num_envs: int, out: Path,
              videos: int, metrics: Dict[str, float], random_spec: Optional[Dict[str, Any]] = None) -> None:
    """GR-1 (true and shuffled instruction), BC and random rollouts of ``episodes`` per task on test layouts."""
    start = time.time()
    video_dir = out / "videos" / name
    with Rollouts(spec, num_envs=num_envs) as rollouts:
        runs = {"gr1": (LanguagePolicy(gr1), None), "gr1_shuffled": (LanguagePolicy(gr1), "shuffled"),
                "lcbc": (LanguagePolicy(lcbc), None)}
        for prefix, (policy, override) in runs.items():
            result = rollouts.evaluate(policy, episodes, seed=0, instruction_override=override,
                                       video_dir=video_dir / prefix, videos_per_task=videos)
            _record(metrics, f"{name}/{prefix}", result)
    # the random policy ignores observations: an env that renders nothing has the same layouts and outcomes
    with Rollouts(random_spec or spec, num_envs=num_envs) as rollouts:
        result = rollouts.evaluate(RandomPolicy(rollouts.env.action_space, seed=0), episodes, seed=0)
        _record(metrics, f"{name}/random", result)
    metrics[f"{name}/eval_seconds"] = time.time() - start


def _chains(gr1: Any, n: int, num_envs: int, out: Path, videos: int, metrics: Dict[str, float]) -> None:
    spec = {"name": "babyai-chain", "chain_len": CHAIN_LEN}
    with Rollouts(spec, num_envs=num_envs) as rollouts:
        for prefix, policy in (("gr1", LanguagePolicy(gr1)), ("random", RandomPolicy(rollouts.env.action_space))):
            result = rollouts.chains(policy, n, seed=0, video_dir=out / "videos" / "babyai-chain" / prefix,
                                     videos=videos if prefix == "gr1" else 0)
            metrics[f"babyai/chain/{prefix}/avg_completed"] = result.average_completed
            for k, rate in enumerate(result.success_at, start=1):
                metrics[f"babyai/chain/{prefix}/success_at_{k}"] = rate


# --------------------------------------------------------------------------- table
def _fmt(metrics: Dict[str, float], baselines: Sequence[Tuple[str, str]]) -> str:
    return " / ".join(f"{name} {metrics[key]:.3f}" for name, key in baselines) or "-"


def results_rows(metrics: Dict[str, float], fast: bool) -> List[Tuple[str, float, str, str, str]]:
    """The table's rows ``(figure, value, baselines, target, met)``: the targets, then per-task and chain figures."""
    rows = []
    for t in TARGETS:
        bound = t.fast_bound if fast else t.bound
        rows.append((t.label, metrics[t.metric], _fmt(metrics, t.baselines), f"{'<=' if t.at_most else '>='} "
                     f"{bound:.2f}", "yes" if t.met(metrics, fast) else "NO"))
    for task in METAWORLD_TASKS:
        rows.append((f"Meta-World {task}: GR-1", metrics[f"metaworld/gr1/{task}"],
                     _fmt(metrics, [(n, f"metaworld/{p}/{task}") for n, p in
                                    (("shuffled", "gr1_shuffled"), ("BC", "lcbc"), ("random", "random"))]), "-", "-"))
    rows.append((f"BabyAI chains of {CHAIN_LEN}: GR-1 instructions completed",
                 metrics["babyai/chain/gr1/avg_completed"], _fmt(metrics, [("random", "babyai/chain/random/avg_completed")]), "-", "-"))
    return rows


def targets_met(metrics: Dict[str, float], fast: bool) -> List[Tuple[str, bool]]:
    """``(label, met)`` of every :data:`TARGETS` entry."""
    return [(t.label, t.met(metrics, fast)) for t in TARGETS]


# --------------------------------------------------------------------------- the demo
def _babyai(out: Path, size: DemoSize, config_dir: Path, threads: int) -> Dict[str, float]:
    """BabyAI PickupLoc: collect, Voltron, GR-1 and BC, rollouts, chains (``threads`` per config; 0: the configs')."""
    torch.manual_seed(0)
    console, metrics = Console(), {}
    babyai = {"name": "babyai", "levels": BABYAI_LEVEL}
    # flat symbolic cells are stored losslessly (tiny files); rendered Meta-World frames with H.264
    gr1, lcbc = _simulator("babyai", babyai, size.babyai_demos, "libx264rgb", out, size, config_dir, console, metrics,
                           threads)
    _evaluate("babyai", babyai, gr1, lcbc, size.babyai_episodes, 20, out, size.videos, metrics)
    metrics["babyai/gr1_minus_random"] = metrics["babyai/gr1/success"] - metrics["babyai/random/success"]
    metrics["babyai/gr1_minus_shuffled"] = metrics["babyai/gr1/success"] - metrics["babyai/gr1_shuffled/success"]
    _chains(gr1, size.chains, 10, out, size.videos, metrics)
    return metrics


def _metaworld(out: Path, size: DemoSize, config_dir: Path, threads: int) -> Dict[str, float]:
    """Meta-World's four tasks: collect, Voltron, GR-1 and BC, rollouts."""
    torch.manual_seed(0)
    console, metrics = Console(), {}
    metaworld = {"name": "metaworld", "tasks": list(METAWORLD_TASKS), "cameras": ["corner"], "max_steps": 150}
    gr1, lcbc = _simulator("metaworld", metaworld, size.metaworld_demos, "libx264", out, size, config_dir, console,
                           metrics, threads)
    _evaluate("metaworld", metaworld, gr1, lcbc, size.metaworld_episodes, 8, out, size.videos, metrics,
              random_spec={**metaworld, "cameras": []})
    metrics["metaworld/shared_scene_gap"] = float(np.mean(
        [metrics[f"metaworld/gr1/{t}"] - metrics[f"metaworld/gr1_shuffled/{t}"] for t in SHARED_SCENE]))
    return metrics


@DEMOS.register("robotics")
def run_demo(out: Path, fast: bool = False, config: Optional[str | Path] = None) -> Dict[str, float]:
    """Run the demo (module docstring) into ``out``; ``config``: a folder holding the six demo configs (default
    ``configs/robotics``). Returns the flat metrics (also in ``out/metrics.json``)."""
    out, size, console = Path(out), FAST if fast else FULL, Console()
    config_dir = Path(config) if config is not None else configs_dir() / "robotics"
    start = time.time()
    threads = config_threads(OmegaConf.create({"num_threads": min(2, os.cpu_count() or 1)}))
    metrics: Dict[str, float] = {}
    if threads >= 2:  # one process per simulator, one thread each: small models use two cores better that way
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=2, mp_context=context) as pool:
            jobs = [pool.submit(part, out, size, config_dir, 1) for part in (_babyai, _metaworld)]
            for job in jobs:
                metrics.update(job.result())
    else:
        for part in (_babyai, _metaworld):
            metrics.update(part(out, size, config_dir, threads))
    metrics["demo/parallel"] = float(threads >= 2)
    metrics["demo/seconds"] = time.time() - start
    write_metrics(out, metrics)
    console.print(results_table(f"alignkit demo robotics{' --fast' if fast else ''}: rollouts on test layouts",
                                results_rows(metrics, fast), ("figure", "value", "baselines", "target", "met")))
    console.print(f"{'fast ' if fast else ''}demo took {metrics['demo/seconds']:.0f} s; metrics: "
                  f"{out / 'metrics.json'}; videos: {out / 'videos'}; runs: {out / 'runs'}")
    return metrics


__all__ = ["DemoSize", "FULL", "FAST", "Target", "TARGETS", "results_rows", "run_demo", "targets_met"]
