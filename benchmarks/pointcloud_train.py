"""Training throughput of the point towers and the share of the machine's matmul FLOP/s they reach.

For each backbone (``pointnet2-ssg``, ``pointbert``) at its default (CPU demo) size: batches of
``--batch`` clouds of ``--points`` points (unit sphere surface), one training step = forward +
backward + AdamW step on ``mean(embedding^2)`` (a stand-in objective; a contrastive loss over a
batch costs next to nothing beside the tower). Throughput is clouds/s over ``--steps`` timed steps
after ``--warmup`` steps.

Model FLOPs per step are counted by :func:`alignkit.core.flops.step_flops` (``FlopCounterMode``) over one
forward + backward: matmuls, convolutions and attention only, so elementwise ops, normalisation, max pooling,
FPS and neighbour search are free in this count and the fraction is a lower bound of the hardware's
use. The reference is the FLOP/s of a large float32 matmul (``--matmul-size``^3, best of 5) measured in
the same run with the same ``--threads`` (default 1: the machine is shared).

    python benchmarks/pointcloud_train.py            # 10 timed steps
    python benchmarks/pointcloud_train.py --quick    # 3 timed steps
"""
from __future__ import annotations

import argparse
import time
from typing import List, Optional

import torch

import alignkit.domains.pointcloud.models  # noqa: F401  (registers the towers)
from alignkit.core.encoders.base import count_parameters
from alignkit.core.flops import matmul_flops_per_s, step_flops, utilisation
from alignkit.core.registry import ENCODERS

BACKBONES = ("pointnet2-ssg", "pointbert")


def clouds(batch: int, points: int, seed: int) -> torch.Tensor:
    xyz = torch.randn(batch, points, 3, generator=torch.Generator().manual_seed(seed))
    return xyz / xyz.norm(dim=-1, keepdim=True)


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    model(x).pow(2).mean().backward()
    opt.step()


def measure(name: str, a: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    model = ENCODERS.build(name).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = clouds(a.batch, a.points, seed=0)
    flops = step_flops(lambda: model(x).pow(2).mean().backward())
    for _ in range(a.warmup):
        train_step(model, opt, x)
    start = time.perf_counter()
    for _ in range(a.steps):
        train_step(model, opt, x)
    seconds = (time.perf_counter() - start) / a.steps
    return {"params": count_parameters(model), "flops": flops, "step_s": seconds}


def benchmark(a: argparse.Namespace) -> None:
    torch.set_num_threads(a.threads)
    peak = matmul_flops_per_s(a.matmul_size)
    header = ["backbone", "params", "GFLOP/cloud (fwd+bwd)", "step s", "clouds/s", "GFLOP/s", "of matmul"]
    rows: List[List[str]] = []
    for name in BACKBONES:
        r = measure(name, a)
        achieved = r["flops"] / r["step_s"]
        rows.append([name, f"{r['params'] / 1e6:.2f}M", f"{r['flops'] / a.batch / 1e9:.3f}", f"{r['step_s']:.3f}",
                     f"{a.batch / r['step_s']:.1f}", f"{achieved / 1e9:.2f}",
                     f"{utilisation(r['flops'], r['step_s'], peak):.1%}"])
    print(f"training throughput: batch {a.batch} x {a.points} points, AdamW, threads={a.threads}; "
          f"matmul {a.matmul_size}^3 float32: {peak / 1e9:.1f} GFLOP/s")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    for r in [header] + rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))


def parse(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="3 timed steps after 1 warm-up step")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--points", type=int, default=1024)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--matmul-size", type=int, default=2048)
    a = p.parse_args(argv)
    if a.quick:
        a.steps, a.warmup = 3, 1
    return a


if __name__ == "__main__":
    benchmark(parse())
