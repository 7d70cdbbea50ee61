"""The prepared GPU check: every GPU path of alignkit once, one table, under 8 minutes on one H100.

Rows (each catches its own failure and reports it in the table; rows started after ``--budget-s``
are reported as skipped):

- ``contrastive``: the CLIP loss at B = 16,384 and 65,536 (D = 512), naive full-matrix reference against
  the chunked ``ClipLoss``: forward + backward time (median of ``--repeats``, synchronised) and peak
  memory above the inputs (``torch.cuda.max_memory_allocated``); the naive loss at 65,536 needs ~80 GiB
  and is reported as ``OOM`` when it does not fit. (On CPU the peak is the growth of the process's
  peak RSS, indicative only; ``benchmarks/contrastive_loss.py`` measures it in fresh processes.)
- ``config``: one config per row (``train_throughput.gpu_configs``: ``trainer.accelerator: gpu``, those over
  imported released weights aside), trained in its own
  precision (bf16-mixed) on one GPU at ``min(batch, --gpu-batch)`` through Lightning: ``--warmup`` steps,
  ``--steps`` timed steps, then one counted step (model FLOPs); status ``ok`` needs a finite
  loss. Detail: samples/s, model TFLOP/s, MFU against the device's dense bf16 peak, peak memory.
- ``demo``: the same (bf16-mixed on CUDA) for each domain's CPU demo model at its own batch size (the
  training benchmarks' MFU on this device).
- ``point-ops``: ``farthest_point_sample``, ``knn`` and ``ball_query`` of
  ``alignkit.domains.pointcloud.ops`` on device tensors against their CPU results (same inputs): FPS
  indices all equal; kNN squared distances within 1e-4 and >= 99.9 % of the indices equal where distances
  are not tied; >= 99.9 % of the ball-query index rows equal (a point on the radius may flip); time on each
  device (TF32 off for these rows).

``--dry-run`` runs the same rows on CPU at tiny sizes (B = 256 / 1,024 losses, narrowed towers, 4 items,
small clouds) in seconds: the test suite runs it. The table is printed and written after every row to
``--out``/gpu_check.md and gpu_check.json.

    bash benchmarks/gpu_check.sh --out runs/gpu_check        # on a GPU machine
    bash benchmarks/gpu_check.sh --dry-run --out /tmp/check   # anywhere, seconds
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmarks, also when imported

import contrastive_loss  # noqa: E402
import train_throughput  # noqa: E402
from alignkit.core.flops import matmul_flops_per_s, peak_bf16_flops, synchronize, utilisation  # noqa: E402

HEADER = ["section", "check", "device", "status", "seconds", "detail"]
SECTIONS = ("contrastive", "config", "point-ops", "demo")
POINT_OPS = ("fps", "knn", "ball_query")


@dataclass
class Row:
    section: str
    check: str
    device: str
    status: str = "ok"
    seconds: float = 0.0
    detail: str = ""
    values: Dict[str, Any] = field(default_factory=dict)

    def cells(self) -> List[str]:
        return [self.section, self.check, self.device, self.status, f"{self.seconds:.1f}", self.detail]


@dataclass
class Plan:
    """Sizes of one check: the GPU run or the CPU dry run."""
    device: str
    loss_sizes: Tuple[int, ...]
    loss_dim: int
    loss_chunk: int
    repeats: int
    gpu_batch: int
    warmup: int
    steps: int
    dry: bool
    clouds: Tuple[int, int, int, int]  # B, N, M, k

    @staticmethod
    def of(args: argparse.Namespace) -> "Plan":
        if args.dry_run:
            return Plan("cpu", (256, 1024), 64, 256, 1, 4, 0, 1, True, (2, 256, 32, 8))
        device = "cuda" if torch.cuda.is_available() else "cpu"
        return Plan(device, (16384, 65536), 512, 2048, args.repeats, args.gpu_batch, args.warmup, args.steps, False,
                    (8, 8192, 1024, 32))


GiB = 1024 ** 3


# ---------------------------------------------------------------- contrastive loss
def loss_rows(plan: Plan, batch: int) -> List[Callable[[], Row]]:
    """Naive then chunked at ``batch`` (in this process; CUDA memory from ``max_memory_allocated``)."""
    results: Dict[str, Dict[str, Any]] = {}

    def one(method: str) -> Row:
        row = Row("contrastive", f"B={batch} {method}", plan.device)
        if plan.device == "cpu":  # host memory is not caught like CUDA's: refuse what would not fit
            need = contrastive_loss.estimated_bytes(method, batch, plan.loss_dim, plan.loss_chunk)
            free = contrastive_loss.available_bytes("cpu")
            if need > free / 2:
                row.status, row.detail = "SKIPPED", f"needs ~{need / GiB:.1f} GiB, {free / GiB:.1f} GiB free"
                return row
        res = contrastive_loss.measure(method, plan.device, batch, plan.loss_dim, plan.loss_chunk, plan.repeats,
                                       budget_s=60.0, grads_path=None)
        if plan.device == "cuda":
            torch.cuda.empty_cache()
        results[method] = res
        if res.get("oom"):
            row.status, row.detail = "OOM", f"out of device memory ({res['error'][:80]})"
            return row
        row.values = {"time_s": res["time"], "peak_bytes": res["peak"], "loss": res["loss"]}
        row.detail = f"{res['time']:.3f} s fwd+bwd, peak {res['peak'] / GiB:.2f} GiB"
        ref = results.get("naive")
        if method != "naive" and ref is not None and not ref.get("oom"):
            row.values.update(time_ratio=res["time"] / ref["time"], memory_ratio=res["peak"] / max(ref["peak"], 1),
                              loss_diff=abs(res["loss"] - ref["loss"]))
            row.detail += (f"; vs naive: time {row.values['time_ratio']:.2f}x, memory "
                           f"{row.values['memory_ratio']:.3f}x, |loss diff| {row.values['loss_diff']:.1e}")
            if row.values["loss_diff"] > 1e-3 * max(1.0, abs(ref["loss"])):
                row.status = "MISMATCH"
        return row
    return [lambda m=m: one(m) for m in ("naive", "chunked")]


# ---------------------------------------------------------------- training steps
def training_row(section: str, config: str, plan: Plan, peak: Optional[float], matmul: float) -> Callable[[], Row]:
    def run() -> Row:
        row = Row(section, config, plan.device)
        batch = plan.gpu_batch if section == "config" else None
        r = train_throughput.run_config(config, plan.device, batch, plan.warmup, plan.steps, dry=plan.dry)
        row.values = {"precision": r.precision, "batch": r.batch, "params": r.params, "flops_per_step": r.flops,
                      "step_s": r.step_s, "samples_per_s": r.samples_per_s, "loss": r.loss,
                      "of_matmul": utilisation(r.flops, r.step_s, matmul),
                      "mfu": utilisation(r.flops, r.step_s, peak) if peak else None, "peak_bytes": r.peak_bytes}
        row.detail = (f"{r.precision}, batch {r.batch}, loss {r.loss:.3g}, {r.samples_per_s:.1f} samples/s, "
                      f"{r.flops_per_s / 1e12:.3f} TFLOP/s, {row.values['of_matmul']:.1%} of matmul")
        if peak:
            row.detail += f", MFU {row.values['mfu']:.1%}"
        if r.peak_bytes is not None:
            row.detail += f", peak {r.peak_bytes / GiB:.1f} GiB"
        if not math.isfinite(r.loss):
            row.status = "LOSS NOT FINITE"
        if plan.device == "cuda":
            torch.cuda.empty_cache()
        return row
    return run


# ---------------------------------------------------------------- point ops
def timed(fn: Callable[[], Any], device: str) -> Tuple[Any, float]:
    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    return out, time.perf_counter() - start


def point_op_rows(plan: Plan) -> List[Callable[[], Row]]:
    """FPS, kNN and ball query on ``plan.device`` against CPU (on a CPU dry run: CPU against CPU)."""
    B, N, M, k = plan.clouds
    gen = torch.Generator().manual_seed(0)
    xyz = torch.rand(B, N, 3, generator=gen)
    query = xyz[:, torch.randperm(N, generator=gen)[:M]]
    radius = 0.2

    def compare(name: str, cpu_fn: Callable[[], Any], dev_fn: Callable[[], Any],
                check: Callable[[Any, Any], Tuple[bool, str]]) -> Row:
        row = Row("point-ops", name, plan.device)
        tf32 = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False  # TF32 distances would differ from float32 ones by ~1e-3
        try:
            dev_fn()  # warm-up (CUDA context, kernels)
            expected, cpu_s = timed(cpu_fn, "cpu")
            got, dev_s = timed(dev_fn, plan.device)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = tf32
        ok, detail = check(expected, got)
        row.status = "ok" if ok else "MISMATCH"
        row.values = {"cpu_s": cpu_s, "device_s": dev_s}
        row.detail = (f"{detail}; cpu {cpu_s * 1e3:.1f} ms, {plan.device} {dev_s * 1e3:.1f} ms "
                      f"(B={B}, N={N}, M={M}, k={k})")
        return row

    def fps() -> Row:
        from alignkit.domains.pointcloud.ops import farthest_point_sample

        def check(a: torch.Tensor, b: torch.Tensor) -> Tuple[bool, str]:
            same = float((a == b.cpu()).float().mean())
            return same == 1.0, f"indices equal: {same:.4f}"
        return compare("fps", lambda: farthest_point_sample(xyz, M),
                       lambda: farthest_point_sample(xyz.to(plan.device), M), check)

    def knn() -> Row:
        from alignkit.domains.pointcloud.ops import knn as knn_op

        def check(a: Tuple[torch.Tensor, torch.Tensor], b: Tuple[torch.Tensor, torch.Tensor]) -> Tuple[bool, str]:
            (d_cpu, i_cpu), (d_dev, i_dev) = a, (b[0].cpu(), b[1].cpu())
            diff = float((d_cpu - d_dev).abs().max())
            gaps = torch.cat([d_cpu[..., 1:] - d_cpu[..., :-1], torch.full_like(d_cpu[..., :1], math.inf)], -1)
            untied = gaps.minimum(torch.cat([torch.full_like(d_cpu[..., :1], math.inf), gaps[..., :-1]], -1)) > 1e-6
            same = float((i_cpu == i_dev)[untied].float().mean()) if bool(untied.any()) else 1.0
            return diff <= 1e-4 and same >= 0.999, f"max |dist2 diff| {diff:.1e}, untied indices equal: {same:.4f}"
        return compare("knn", lambda: knn_op(query, xyz, k),
                       lambda: knn_op(query.to(plan.device), xyz.to(plan.device), k), check)

    def ball() -> Row:
        from alignkit.domains.pointcloud.ops import ball_query

        def check(a: torch.Tensor, b: torch.Tensor) -> Tuple[bool, str]:
            rows_equal = (a == b.cpu()).all(dim=-1).float().mean()
            return float(rows_equal) >= 0.999, f"rows equal: {float(rows_equal):.4f} (radius {radius})"
        return compare("ball_query", lambda: ball_query(query, xyz, radius, k),
                       lambda: ball_query(query.to(plan.device), xyz.to(plan.device), radius, k), check)
    return [fps, knn, ball]


# ---------------------------------------------------------------- driver
def write_outputs(out: Optional[Path], title: str, rows: List[Row]) -> None:
    if out is None:
        return
    out.mkdir(parents=True, exist_ok=True)
    table = train_throughput.markdown_table(HEADER, [r.cells() for r in rows])
    (out / "gpu_check.md").write_text(f"{title}\n\n{table}\n")
    (out / "gpu_check.json").write_text(json.dumps({"title": title, "rows": [asdict(r) for r in rows]}, indent=1,
                                                   default=str))


def describe(plan: Plan, peak: Optional[Tuple[str, float]], matmul: float) -> str:
    if plan.device == "cuda":
        name = torch.cuda.get_device_name()
        peak_text = f"dense bf16 peak {peak[1] / 1e12:.0f} TFLOP/s ({peak[0]})" if peak else "bf16 peak unknown"
        return (f"GPU check on {name}, torch {torch.__version__}: {peak_text}; measured bf16 matmul "
                f"{matmul / 1e12:.0f} TFLOP/s")
    return (f"GPU check {'dry run ' if plan.dry else ''}on CPU, torch {torch.__version__}: float32 matmul "
            f"{matmul / 1e9:.1f} GFLOP/s (threads={torch.get_num_threads()})")


def check(args: argparse.Namespace) -> List[Row]:
    start = time.perf_counter()
    plan = Plan.of(args)
    if plan.dry:
        torch.set_num_threads(1)  # a shared CPU: one intra-op thread, as the test suite's workers
    if plan.device == "cuda":
        matmul = matmul_flops_per_s(8192, torch.bfloat16, "cuda")
        found = peak_bf16_flops()
        peak = ("--peak-tflops", args.peak_tflops * 1e12) if args.peak_tflops else found
    else:
        matmul, peak = matmul_flops_per_s(256 if plan.dry else 2048), None
    title = describe(plan, peak, matmul)
    print(title, flush=True)
    jobs: List[Tuple[str, str, Callable[[], Row]]] = []
    for batch in plan.loss_sizes:
        jobs += [("contrastive", f"B={batch} {m}", job) for m, job in zip(("naive", "chunked"), loss_rows(plan, batch))]
    jobs += [("point-ops", name, f) for name, f in zip(POINT_OPS, point_op_rows(plan))]
    for config in train_throughput.gpu_configs():
        jobs.append(("config", config, training_row("config", config, plan, peak and peak[1], matmul)))
    for config in train_throughput.DEMOS:
        jobs.append(("demo", config, training_row("demo", config, plan, peak and peak[1], matmul)))
    jobs = [job for job in jobs if job[0] in args.only]
    rows: List[Row] = []
    for section, name, job in jobs:
        if time.perf_counter() - start > args.budget_s:
            rows.append(Row(section, name, plan.device, "SKIPPED", 0.0, f"time budget of {args.budget_s:.0f} s spent"))
            continue
        began = time.perf_counter()
        try:
            row = job()
        except Exception as exc:  # each row reports its own failure
            traceback.print_exc(file=sys.stderr)
            message = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
            oom = isinstance(exc, torch.cuda.OutOfMemoryError)
            row = Row(section, name, plan.device, "OOM" if oom else "FAILED", detail=f"{type(exc).__name__}: {message}")
            gc.collect()
            if plan.device == "cuda":
                torch.cuda.empty_cache()
        row.seconds = time.perf_counter() - began
        rows.append(row)
        print(" | ".join(row.cells()), flush=True)
        write_outputs(args.out, title, rows)
    print()
    print(title)
    print(train_throughput.format_table(HEADER, [r.cells() for r in rows]))
    print(f"total {time.perf_counter() - start:.0f} s; {sum(r.status == 'ok' for r in rows)}/{len(rows)} rows ok")
    return rows


def parse(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dry-run", action="store_true", help="the same rows on CPU at tiny sizes (seconds)")
    p.add_argument("--out", type=Path, help="folder for gpu_check.md and gpu_check.json")
    p.add_argument("--gpu-batch", type=int, default=32, help="GPU configs: min(config batch, this)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=3, help="timed training steps per config (median)")
    p.add_argument("--repeats", type=int, default=3, help="timed loss runs (median)")
    p.add_argument("--budget-s", type=float, default=420.0, help="rows starting later are skipped")
    p.add_argument("--peak-tflops", type=float, help="dense bf16 peak when the device is not in the table")
    p.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="sections to run")
    return p.parse_args(argv)


if __name__ == "__main__":
    rows = check(parse())
    sys.exit(0)
