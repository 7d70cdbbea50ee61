"""Training throughput of the point towers and the share of the machine's matmul FLOP/s they reach.

For each backbone (``pointnet2-ssg``, ``pointbert``) at its default (CPU demo) size, and PointNet++ once more with
``fused=False`` (its modules one by one, the reference for the fused level ends): batches of
``--batch`` clouds of ``--points`` points (unit sphere surface), one training step = forward +
backward + AdamW step on ``mean(embedding^2)`` (a stand-in objective; a contrastive loss over a
batch costs next to nothing beside the tower). Throughput is clouds/s over ``--steps`` timed steps
after ``--warmup`` steps.

Model FLOPs per step are counted by :func:`alignkit.core.flops.step_flops` (``FlopCounterMode``) over one
forward + backward of the module path (``fused=False`` for PointNet++: the model's FLOPs, whatever an
implementation executes; the "executed" column counts the timed model's own matmuls): matmuls, convolutions and
attention only, so elementwise ops, normalisation, max pooling,
FPS and neighbour search are free in this count and the fraction is a lower bound of the hardware's
use. The reference is the FLOP/s of a large float32 matmul (``--matmul-size``^3, best of 5) measured in
the same run with the same ``--threads`` (default 1: the machine is shared), in every round beside the steps it is
compared with (a neighbour's load then weighs on both). Times are this thread's CPU time
with one thread (what a quiet core would take; ``--clock wall`` for wall time), the median of ``--repeats``
rounds that alternate between the models.

``--allocator keep`` sets glibc's ``mallopt`` so that freed memory stays with the process (as jemalloc or
tcmalloc would keep it): with glibc's defaults a training step whose large tensors are freed and allocated
again pays a page fault for every 4 KiB page of each, which the unfused PointNet++ step does (~24,000 faults
per step at the default size); the table prints the faults per step either way.

    python benchmarks/pointcloud_train.py            # 10 timed steps x 3 rounds
    python benchmarks/pointcloud_train.py --quick    # 3 timed steps x 1 round
"""
from __future__ import annotations

import argparse
import ctypes
import platform
import resource
import time
from statistics import median_high
from typing import Callable, Dict, List, Optional, Tuple

import torch

import alignkit.domains.pointcloud.models  # noqa: F401  (registers the towers)
from alignkit.core.encoders.base import count_parameters
from alignkit.core.flops import matmul_flops_per_s, step_flops, utilisation
from alignkit.core.registry import ENCODERS

MODELS: Tuple[Tuple[str, str, dict, dict], ...] = (
    ("pointnet2-ssg", "pointnet2-ssg", {}, {"fused": False}),
    ("pointnet2-ssg fused=False", "pointnet2-ssg", {"fused": False}, {"fused": False}),
    ("pointbert", "pointbert", {}, {}),
)
"""(label, encoder, params, params of the twin whose FLOPs are counted): model FLOPs are the module path's, so an
implementation that reaches the same values with fewer multiplications is credited, as MFU counts."""


def keep_freed_memory() -> bool:
    """glibc: serve large allocations from the heap and never trim it (``M_MMAP_THRESHOLD`` 1 GiB,
    ``M_TRIM_THRESHOLD`` 2 GiB - 1), so a freed tensor's pages are reused without faults. False elsewhere."""
    if platform.system() != "Linux":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, 1 << 30)) and bool(libc.mallopt(m_trim_threshold, 2 ** 31 - 1))


def clouds(batch: int, points: int, seed: int) -> torch.Tensor:
    xyz = torch.randn(batch, points, 3, generator=torch.Generator().manual_seed(seed))
    return xyz / xyz.norm(dim=-1, keepdim=True)


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    model(x).pow(2).mean().backward()
    opt.step()


class Subject:
    """One model under test: built once, timed over several rounds."""

    def __init__(self, label: str, name: str, params: dict, counted: dict, x: torch.Tensor):
        torch.manual_seed(0)
        self.label, self.x = label, x
        self.model = ENCODERS.build(name, **params).train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3)
        self.executed = step_flops(lambda: self.model(x).pow(2).mean().backward())
        self.flops = self.executed
        if {**params, **counted} != params:   # model FLOPs from the twin only where it differs from the timed model
            twin = ENCODERS.build(name, **{**params, **counted}).train()
            self.flops = step_flops(lambda: twin(x).pow(2).mean().backward())
        self.times: List[float] = []
        self.fractions: List[float] = []
        self.faults: List[float] = []

    def round(self, warmup: int, steps: int, clock: Callable[[], float], peak: float) -> None:
        for _ in range(warmup):
            train_step(self.model, self.opt, self.x)
        faults, start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, clock()
        for _ in range(steps):
            train_step(self.model, self.opt, self.x)
        self.times.append((clock() - start) / steps)
        self.fractions.append(utilisation(self.flops, self.times[-1], peak))
        self.faults.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / steps)


def benchmark(a: argparse.Namespace) -> None:
    torch.set_num_threads(a.threads)
    kept = keep_freed_memory() if a.allocator == "keep" else False
    clock = time.thread_time if a.clock == "cpu" else time.perf_counter
    x = clouds(a.batch, a.points, seed=0)
    subjects = [Subject(label, name, params, counted, x) for label, name, params, counted in MODELS]
    peaks: List[float] = []
    for _ in range(a.repeats):      # the matmul rate is measured in each round, beside the steps it is compared with
        peaks.append(matmul_flops_per_s(a.matmul_size, clock=clock, repeats=3))
        for subject in subjects:
            subject.round(a.warmup, a.steps, clock, peaks[-1])
    peak = median_high(peaks)
    header = ["backbone", "params", "GFLOP/cloud (fwd+bwd)", "executed", "step s", "clouds/s", "GFLOP/s", "of matmul",
              "page faults/step"]
    rows: List[List[str]] = []
    rates: Dict[str, float] = {}
    for s in subjects:
        seconds = median_high(s.times)
        rates[s.label] = a.batch / seconds
        rows.append([s.label, f"{count_parameters(s.model) / 1e6:.2f}M", f"{s.flops / a.batch / 1e9:.3f}",
                     f"{s.executed / a.batch / 1e9:.3f}", f"{seconds:.3f}", f"{a.batch / seconds:.1f}",
                     f"{s.flops / seconds / 1e9:.2f}",
                     f"{median_high(s.fractions):.1%}", f"{median_high(s.faults):.0f}"])
    allocator = "glibc keeping freed memory (mallopt)" if kept else "the system allocator as configured"
    print(f"training throughput: batch {a.batch} x {a.points} points, AdamW, threads={a.threads}, {a.clock} time, "
          f"median of {a.repeats} rounds, {allocator}; matmul {a.matmul_size}^3 float32: {peak / 1e9:.1f} GFLOP/s "
          f"(median; rounds {min(peaks) / 1e9:.1f}-{max(peaks) / 1e9:.1f}); \"of matmul\": median over rounds of the "
          "round's model FLOP/s over the round's matmul rate")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    for r in [header] + rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    print(f"pointnet2-ssg fused / modules: {rates['pointnet2-ssg'] / rates['pointnet2-ssg fused=False']:.2f}x "
          "clouds/s")


def parse(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="3 timed steps after 1 warm-up step, 1 round")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--points", type=int, default=1024)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--matmul-size", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=3, help="rounds alternating between the models (median)")
    p.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                   help="cpu: this thread's CPU time (needs --threads 1 to mean the step's time); wall: wall time")
    p.add_argument("--allocator", choices=("system", "keep"), default="system",
                   help="keep: glibc mallopt so freed memory is reused without page faults (module docstring)")
    a = p.parse_args(argv)
    if a.quick:
        a.steps, a.warmup, a.repeats = 3, 1, 1
    if a.clock == "cpu" and a.threads != 1:
        p.error("--clock cpu times one thread: use --threads 1, or --clock wall")
    return a


if __name__ == "__main__":
    benchmark(parse())
