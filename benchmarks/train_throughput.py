"""Training throughput, model FLOP/s and utilisation of every domain's demo model and every GPU config.

Each row builds a shipped config through alignkit's own loading (``load_config`` with ``--set``-style
overrides, ``runner.build_model`` / ``runner.build_datamodule``) and trains it with ``lightning.Trainer``
on real batches of a small synthetic dataset written for the run (the same generators the config tests
use), the architecture unchanged and the batch and step count reduced (``--gpu-batch``, ``--cpu-batch``).

One step = what Lightning runs between ``on_train_batch_start`` and ``on_train_batch_end``: forward,
loss, backward and optimiser step on a batch already on the device (decoding, collation and the device
augmentations are outside it). ``--warmup`` untimed steps, then ``--steps`` timed steps (median,
``torch.cuda.synchronize`` around each), then one step counted (``FlopCounterMode``, see
:mod:`alignkit.core.flops`: matmuls, convolutions and attention, forward + backward) and not timed: the
steady state, where the first step also fills caches (a frozen text tower's memoised captions).

- ``samples/s = B / t_step``; ``model FLOP/s = F_step / t_step``. On CPU with ``--threads 1`` (the default)
  ``t_step`` and the matmul reference are this thread's CPU time (``--clock auto``): what a quiet core takes,
  on a machine other processes share; ``--clock wall`` times the wall clock.
- CPU (float32, ``trainer.precision=32-true``): ``of matmul = F_step / t_step / R_fp32``, ``R_fp32`` the
  float32 matmul rate (``--matmul-size``^3, best of 5) with the same ``--threads``: the best of its
  measurements before the first and after every row (a shared CPU's rate drifts with the load).
- CUDA (bf16-mixed, as every GPU config): ``MFU = F_step / t_step / P_bf16`` with ``P_bf16`` the device's
  dense bf16 peak (:data:`alignkit.core.flops.PEAK_BF16_FLOPS`, or ``--peak-tflops``); ``of matmul`` is
  against the bf16 matmul rate measured here.

The demos run at their configs' batch size on CPU; the GPU configs (``trainer.accelerator: gpu``) at
``min(batch, --gpu-batch)`` on CUDA and ``--cpu-batch`` on CPU (float32: this CPU emulates bf16).

    python benchmarks/train_throughput.py                  # demos + GPU configs on this machine
    python benchmarks/train_throughput.py --only demos     # the CPU demo models alone
    python benchmarks/train_throughput.py --dry-run        # narrowed towers, tiny data: seconds per row
"""
from __future__ import annotations

import argparse
import gc
import math
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import lightning as L
import torch
from omegaconf import OmegaConf

from alignkit.core.config import configs_dir, list_configs, load_config
from alignkit.core.flops import FlopCounting, matmul_flops_per_s, peak_bf16_flops, synchronize, utilisation

DEMOS = ("core/shapes_demo.yaml", "medical/xray_demo_convirt.yaml", "medical/xray_demo_gloria.yaml",
         "medical/echo_demo.yaml", "pointcloud/ulip_demo_stage2.yaml", "robotics/demo_babyai_gr1.yaml",
         "robotics/demo_babyai_voltron.yaml")
"""Each domain's CPU demo model: core shapes, X-ray ConVIRT / GLoRIA, echo, the ULIP point model (stage 2),
robotics GR-1 and Voltron."""

DRY_BATCH = 4


def gpu_configs() -> List[str]:
    """Every shipped run config whose ``trainer.accelerator`` is ``gpu``, except bench configs and those that start
    from imported released weights (``encoder: imported``: a tower needs an ``alignkit import-weights`` folder;
    their architectures are those of their from-scratch siblings, e.g. ``core/clip_vit_b16``)."""
    root = configs_dir()
    return [str(p.relative_to(root)) for p in list_configs(root) if "bench" not in p.relative_to(root).parts
            and "encoder: imported" not in p.read_text()
            and str(OmegaConf.load(p).trainer.get("accelerator")) == "gpu"]


# ---------------------------------------------------------------- tiny synthetic data per dataset
def _image_size(cfg: Any, default: int) -> int:
    return int(cfg.data.params.get("image_size") or default)


def data_overrides(cfg: Any, tmp: Path, batch: int, dry: bool) -> List[str]:
    """``data.params`` overrides pointing the config at a synthetic dataset written under ``tmp`` with at least
    ``batch`` training items, at the config's own image size (tiny when ``dry``)."""
    dataset, p = str(cfg.data.dataset), cfg.data.params
    if dataset == "paired-csv":
        from alignkit.demos.shapes import write_shapes_dataset
        size = _image_size(cfg, 32)
        write_shapes_dataset(tmp / "shapes", train_replicas=1, max_train_blocks=max(1, math.ceil(batch / 8)),
                             num_val=8, num_test=8, image_size=size)
        return [f"data.params.root={tmp / 'shapes'}"]
    if dataset == "cxr":
        from alignkit.domains.medical.xray.synthetic.archive import write_synthetic_mimic
        size = 64 if dry else _image_size(cfg, 96)
        root = write_synthetic_mimic(tmp / "cxr", 2 * batch + 10, image_size=size, split_fractions=(0.8, 0.1, 0.1))
        return [f"data.params.root={root}", f"data.params.image_size={size}"]
    if dataset == "echo-studies":
        from alignkit.domains.medical.echo.synthetic.archive import write_synthetic_echo
        size = 32 if dry else _image_size(cfg, 64)
        frames = 4 if dry else int(p.get("num_frames", 16))
        stride = 1 if dry else int(p.get("stride", 1))
        root = write_synthetic_echo(tmp / "echo", math.ceil(1.2 * batch) + 4, image_size=size,
                                    frames=max(12, frames * stride + 4), split_fractions=(0.9, 0.05, 0.05))
        return [f"data.params.root={root}", f"data.params.image_size={size}", f"data.params.num_frames={frames}",
                f"data.params.stride={stride}"]
    if dataset == "modelnet40":
        from alignkit.domains.pointcloud.synthetic import write_synthetic_modelnet
        classes = list(p.get("classes") or [])
        per_class = max(1, math.ceil(batch / max(1, len(classes) or 15)))
        root = write_synthetic_modelnet(tmp / "modelnet", per_class, 1, classes=classes or None).root
        points = 256 if dry else int(p.get("num_points", 1024))
        size = 32 if dry else _image_size(cfg, 64)
        return [f"data.params.root={root}", f"data.params.num_points={points}",
                f"data.params.surface_points={max(2 * points, 1024)}", f"data.params.image_size={size}",
                "data.params.num_views=2", f"data.params.cache_dir={tmp / 'cache'}"]
    if dataset == "lerobot":
        return lerobot_overrides(cfg, tmp, batch, dry)
    raise ValueError(f"no synthetic data for dataset '{dataset}': add it to train_throughput.data_overrides")


def lerobot_overrides(cfg: Any, tmp: Path, batch: int, dry: bool) -> List[str]:
    """A synthetic LeRobot dataset shaped as the model reads it and, for a policy over a pretrained Voltron
    encoder, an export of the shipped Voltron config of that image size (a tiny one when ``dry`` or none)."""
    from alignkit.domains.robotics.synthetic import write_synthetic_lerobot
    params = cfg.model.params
    keys = [k for k in ("data.params.image_size", "model.params.image_size", "model.params.img_size")
            if OmegaConf.select(cfg, k) is not None]
    size = int(OmegaConf.select(cfg, keys[0])) if keys else 64
    if dry:
        size = 32
    window = int(cfg.data.params.get("window", 1))
    length = window + max(4, math.ceil(batch / 4)) + 2  # 6 episodes: enough training windows after a holdout
    root = write_synthetic_lerobot(tmp / "lerobot", 6, length, cameras=list(params.get("cameras") or ["image"]),
                                   image_size=size, state_dim=int(params.get("state_dim", 2)),
                                   action_dim=int(params.get("action_dim", 2)),
                                   num_actions=int(params.get("num_actions", 0)))
    out = [f"data.params.root={root}", *[f"{k}={size}" for k in keys]]
    encoder = params.get("image_encoder")
    if OmegaConf.is_dict(encoder) and encoder.name == "voltron-pretrained":
        from alignkit.domains.robotics.models.voltron import VoltronEncoder
        shape = voltron_shape(size) if not dry else None
        shape = shape or dict(patch_size=8, width=16, depth=1, heads=2)
        export = VoltronEncoder(img_size=size, **shape).export(tmp / "voltron")
        out.append(f"model.params.image_encoder.params.path={export}")
    if dry and "frame_patch_size" in params:
        out.append("model.params.frame_patch_size=8")
    return out


def voltron_shape(size: int) -> Optional[Dict[str, int]]:
    """Patch size, width, depth and heads of the first shipped v-cond Voltron config of ``img_size == size``."""
    for path in list_configs(configs_dir()):
        model = OmegaConf.load(path).get("model", {})
        params = model.get("params", {}) if model else {}
        if model and model.get("name") == "voltron" and params.get("variant") == "v-cond" \
                and int(params.get("img_size", 0)) == size:
            return {k: int(params[k]) for k in ("patch_size", "width", "depth", "heads")}
    return None


# ---------------------------------------------------------------- narrowing for --dry-run
TOWER_NARROW = {
    "monai-vit": {"hidden_size": 32, "mlp_dim": 64, "num_layers": 1, "num_heads": 2},
    "hf-text": {"config.hidden_size": 32, "config.num_hidden_layers": 1, "config.num_attention_heads": 2,
                "config.intermediate_size": 64},
    "monai-resnet": {"depth": 10},
    "pointnet2-ssg": {"npoints": [32, 8], "nsamples": [8, 8]},
    "pointbert": {"num_groups": 16, "group_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2},
    "minilm-l6": {"max_length": 8},
}
MODEL_NARROW = {
    "voltron": {"width": 32, "depth": 1, "heads": 2, "decoder_width": 32, "decoder_depth": 1, "decoder_heads": 2,
                "patch_size": 8},
    "gr1": {"width": 32, "depth": 1, "heads": 2, "perceiver_depth": 1, "perceiver_heads": 2},
    "lcbc": {"hidden_dim": 32, "num_layers": 1},
}


def narrow_overrides(cfg: Any) -> List[str]:
    """Overrides shrinking the towers of ``cfg`` to a few thousand parameters (architecture family, losses,
    heads and precision unchanged), for the seconds-long ``--dry-run``."""
    out: List[str] = []
    towers = cfg.model.get("towers") or {}
    for name, tower in towers.items():
        for key, value in TOWER_NARROW.get(str(tower.encoder), {}).items():
            if key.split(".")[0] in tower.params or tower.encoder == "monai-resnet":
                out.append(f"model.towers.{name}.params.{key}={value}")
        if tower.encoder == "minilm-l6" and not tower.get("frozen", False):
            out.append(f"model.towers.{name}.frozen=true")  # pretrained, cannot narrow: forward only
        if tower.encoder == "monai-vit":
            side = 2 * int(tower.params.patch_size)
            out += [f"model.towers.{name}.params.img_size={side}", f"data.params.image_size={side}"]
    model_params = cfg.model.get("params") or {}
    for key, value in MODEL_NARROW.get(str(cfg.model.get("name", "alignment")), {}).items():
        if key in model_params:
            out.append(f"model.params.{key}={value}")
    return out


# ---------------------------------------------------------------- one row
class StepMeter(L.Callback):
    """Steps ``0 .. warmup - 1`` run untimed; steps ``warmup .. warmup + steps - 1`` are timed with ``clock``
    (synchronised); the next step is counted (model FLOPs), untimed: the steady state beside the timed steps,
    not the first step, which also fills caches (a frozen text tower's memoised captions)."""

    def __init__(self, device: torch.device, warmup: int, steps: int,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.device, self.warmup, self.steps, self.clock = device, warmup, steps, clock
        self.calls, self.start = 0, 0.0
        self.counting = FlopCounting()
        self.flops: Optional[int] = None
        self.times: List[float] = []
        self.samples: Optional[int] = None
        self.loss: Optional[float] = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self.samples = batch_items(batch)
        if self.calls == self.warmup + self.steps:
            self.counting.start()
        elif self.calls >= self.warmup:
            synchronize(self.device)
            self.start = self.clock()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.calls == self.warmup + self.steps:
            self.flops = self.counting.stop()
        elif self.calls >= self.warmup:
            synchronize(self.device)
            self.times.append(self.clock() - self.start)
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            self.loss = float(loss.detach().float())
        self.calls += 1

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if self.counting._mode is not None:
            self.counting.stop()


def batch_items(batch: Any) -> Optional[int]:
    """The leading size of the first tensor found in ``batch`` (dicts and sequences searched depth-first)."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else None
    values = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (list, tuple)) else ()
    for value in values:
        found = batch_items(value)
        if found is not None:
            return found
    return None


@dataclass
class StepResult:
    """One config's measured training step on one device."""
    config: str
    device: str
    precision: str
    batch: int
    params: int
    flops: int
    step_s: float
    loss: float
    peak_bytes: Optional[int] = None
    notes: List[str] = field(default_factory=list)

    @property
    def samples_per_s(self) -> float:
        return self.batch / self.step_s

    @property
    def flops_per_s(self) -> float:
        return self.flops / self.step_s


def run_config(config: str, device: str, batch: Optional[int], warmup: int, steps: int, dry: bool = False,
               workdir: Optional[Path] = None, clock: Callable[[], float] = time.perf_counter) -> StepResult:
    """Train ``config`` (relative to the configs folder) for ``warmup + steps + 1`` steps on ``device`` and
    measure it (module docstring) with ``clock``. ``batch`` None: the config's. CPU runs in float32
    (``32-true``), CUDA in ``bf16-mixed`` (every GPU config's precision; the CPU demos too) on one device."""
    from alignkit.core.progress import quiet_start
    from alignkit.core.runner import build_datamodule, build_model, trainer_kwargs
    quiet_start()
    raw = OmegaConf.load(configs_dir() / config)
    batch = min(int(raw.data.batch_size), batch) if batch else int(raw.data.batch_size)
    if dry:
        batch = int(raw.data.get("items_per_group", 4)) if raw.data.get("hard_negative_batches") else DRY_BATCH
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        overrides = data_overrides(raw, Path(tmp), batch, dry) + (narrow_overrides(raw) if dry else [])
        precision = "bf16-mixed" if device == "cuda" else "32-true"
        overrides += ["trainer.accelerator=" + ("gpu" if device == "cuda" else "cpu"), "trainer.devices=1",
                      "trainer.num_nodes=1", "trainer.strategy=auto", f"trainer.precision={precision}",
                      f"trainer.max_steps={1 + warmup + steps}", "trainer.max_epochs=-1", "trainer.fast_dev_run=false",
                      "trainer.limit_val_batches=0", "trainer.val_check_interval=null",
                      "trainer.check_val_every_n_epoch=1", "trainer.enable_progress_bar=false",
                      f"data.batch_size={batch}", "data.num_workers=0", "data.shards=null", "eval=[]",
                      f"out_dir={tmp}"]
        cfg = load_config(configs_dir() / config, overrides)
        L.seed_everything(int(cfg.seed), verbose=False)
        datamodule, model = build_datamodule(cfg), build_model(cfg)
        meter = StepMeter(torch.device(device), warmup, steps, clock)
        kwargs = trainer_kwargs(cfg)
        kwargs.update(logger=False, enable_checkpointing=False, enable_model_summary=False, callbacks=[meter],
                      default_root_dir=tmp)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        L.Trainer(**kwargs).fit(model, datamodule=datamodule)
    if not meter.times or meter.flops is None:
        raise RuntimeError(f"{config}: trained {meter.calls} steps, fewer than {warmup} + {steps} + 1")
    params = sum(p.numel() for p in model.parameters())
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else None
    del model, datamodule, kwargs
    gc.collect()  # the trainer, model and optimiser state of this row, before the next row builds its own
    if device == "cuda":
        torch.cuda.empty_cache()
    notes = [] if meter.samples in (None, batch) else [f"batch holds {meter.samples} items"]
    return StepResult(config, device, precision, meter.samples or batch, params, meter.flops,
                      statistics.median(meter.times), meter.loss if meter.loss is not None else float("nan"), peak,
                      notes)


# ---------------------------------------------------------------- the table
HEADER = ["config", "device", "precision", "batch", "params", "GFLOP/sample", "step s", "samples/s",
          "model TFLOP/s", "matmul TFLOP/s", "of matmul", "MFU"]


@dataclass
class Reference:
    """What a step's FLOP/s are compared with on this device."""
    device: str
    matmul: float  # measured matmul FLOP/s (float32 on CPU, bf16 on CUDA)
    matmul_label: str
    peak: Optional[float] = None  # dense bf16 peak (CUDA)
    peak_label: str = "-"


def measure_reference(device: str, matmul_size: int, peak_tflops: Optional[float] = None,
                      clock: Callable[[], float] = time.perf_counter) -> Reference:
    if device != "cuda":
        rate = matmul_flops_per_s(matmul_size, clock=clock)
        return Reference("cpu", rate, f"float32 matmul {matmul_size}^3: {rate / 1e9:.1f} GFLOP/s "
                                      f"(threads={torch.get_num_threads()}, {clock.__name__})")
    size = max(matmul_size, 8192)
    bf16 = matmul_flops_per_s(size, torch.bfloat16, "cuda")
    tf32 = matmul_flops_per_s(size, torch.float32, "cuda", tf32=True)
    name = torch.cuda.get_device_name()
    found = peak_bf16_flops(name)
    peak, label = (peak_tflops * 1e12, "--peak-tflops") if peak_tflops else (found[1], found[0]) if found \
        else (None, "unknown")
    return Reference("cuda", bf16, f"{name}: bf16 matmul {size}^3 {bf16 / 1e12:.0f} TFLOP/s, "
                                   f"tf32 {tf32 / 1e12:.0f} TFLOP/s; bf16 dense peak "
                                   f"{'-' if peak is None else f'{peak / 1e12:.0f} TFLOP/s'} ({label})", peak, label)


def table_row(r: StepResult, ref: Reference) -> List[str]:
    of_matmul = f"{utilisation(r.flops, r.step_s, ref.matmul):.1%}"
    mfu = f"{utilisation(r.flops, r.step_s, ref.peak):.1%}" if ref.peak and r.device == "cuda" else "-"
    return [r.config, r.device, r.precision, str(r.batch), f"{r.params / 1e6:.2f}M",
            f"{r.flops / r.batch / 1e9:.3f}", f"{r.step_s:.3f}", f"{r.samples_per_s:.1f}",
            f"{r.flops_per_s / 1e12:.3f}", f"{ref.matmul / 1e12:.3f}", of_matmul, mfu]


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Plain aligned columns (also valid as the body of a markdown table when ``markdown``)."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in [header, *rows])


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c).replace("|", "/") for c in r) + " |" for r in rows])


def cases(only: str) -> List[str]:
    return ([*DEMOS] if only in ("all", "demos") else []) + (gpu_configs() if only in ("all", "gpu") else [])


def benchmark(a: argparse.Namespace) -> None:
    torch.set_num_threads(a.threads)
    device = "cuda" if torch.cuda.is_available() and not a.cpu else "cpu"
    clock = run_clock(device, a.clock)
    ref = measure_reference(device, a.matmul_size, a.peak_tflops, clock)
    results: List[Any] = []  # StepResult, or the row of a failed config
    notes: List[str] = []
    gpu = set(gpu_configs())
    for config in a.configs or cases(a.only):
        batch = (a.gpu_batch if device == "cuda" else a.cpu_batch) if config in gpu else None
        print(f"running {config} on {device} ...", file=sys.stderr, flush=True)
        try:
            r = run_config(config, device, batch, a.warmup, a.steps, dry=a.dry_run, clock=clock)
        except Exception as exc:  # one row's failure is reported in its row
            traceback.print_exc(file=sys.stderr)
            results.append([config, device, *["-"] * (len(HEADER) - 3), f"FAILED: {type(exc).__name__}"])
            notes.append(f"{config}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            continue
        if device == "cpu":  # a shared CPU's rate drifts: measured again after each row, the best one is kept
            again = measure_reference(device, a.matmul_size, clock=clock)
            ref = again if again.matmul > ref.matmul else ref
        results.append(r)
        notes += [f"{config}: {n}" for n in r.notes]
    rows = [table_row(r, ref) if isinstance(r, StepResult) else r for r in results]
    print(f"training throughput ({'dry run, ' if a.dry_run else ''}{a.warmup} warm-up, {a.steps} timed, 1 counted "
          f"step); reference: {ref.matmul_label}")
    print(format_table(HEADER, rows))
    for line in notes:
        print(line)


def run_clock(device: str, clock: str) -> Callable[[], float]:
    """``time.thread_time`` (this thread's CPU time) for ``cpu`` on CPU with one intra-op thread, where the whole
    step runs in this thread: a step and the matmul reference are then timed as a quiet core would run them,
    however many other processes share the machine. Wall time (``time.perf_counter``) otherwise."""
    if clock == "cpu" or (clock == "auto" and device == "cpu" and torch.get_num_threads() == 1):
        if device == "cuda" or torch.get_num_threads() != 1:
            raise ValueError("--clock cpu times one CPU thread: use it on CPU with --threads 1")
        return time.thread_time
    return time.perf_counter


def parse(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", choices=("all", "demos", "gpu"), default="all")
    p.add_argument("--configs", nargs="+", help="config names relative to the configs folder (default: --only)")
    p.add_argument("--steps", type=int, default=3, help="timed steps (median)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps after the counted one")
    p.add_argument("--gpu-batch", type=int, default=64, help="GPU configs on CUDA: min(config batch, this)")
    p.add_argument("--cpu-batch", type=int, default=2, help="GPU configs on CPU: this batch")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    p.add_argument("--matmul-size", type=int, default=2048)
    p.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak when the table lacks it")
    p.add_argument("--cpu", action="store_true", help="run on CPU even when CUDA is available")
    p.add_argument("--clock", choices=("auto", "wall", "cpu"), default="auto",
                   help="auto: this thread's CPU time on CPU with --threads 1 (a shared machine), else wall time")
    p.add_argument("--dry-run", action="store_true", help="narrowed towers, tiny data, batch 4")
    return p.parse_args(argv)


if __name__ == "__main__":
    benchmark(parse())
