"""Episode loader throughput against a training step's consumption.

Writes a synthetic LeRobot v3.0 dataset (``--episodes`` x ``--length`` frames, ``--cameras`` 64x64
cameras, default codec libx264 with GOP ``--gop``), then measures

- the loader: :class:`~alignkit.domains.robotics.lerobot.reader.LeRobotDataset` with a 4-frame window in a
  DataLoader (batch ``--batch``, shuffled, i.e. random access) with 0, 1 and 2 workers, plus the
  sequential order with 0 workers; samples/s (windows) and images/s (decoded frames delivered =
  samples x window x cameras), after the first batch (worker start-up excluded);
- a training step: a small causal transformer (width 64, 10 tokens per frame: 9 pooled patch tokens
  + 1 state token, 4-frame history, a task embedding token) forward + backward + AdamW on such a batch;
  samples/s.

The loader keeps up when its samples/s is at least the step's. One torch thread everywhere.

Per core (in-process, windows per CPU-second of this process, so other processes on a shared machine do not
change it): a random window read as the reader does (seek to the keyframe before the window, decode forward to
its last frame) against decoding the whole episode and picking the window; and the cores needed to feed
``--gpu-rate`` windows/s (default 2,000: a diffusion-policy/ACT-sized policy, a ResNet-18 per camera, on one H100
in bf16, an estimate, not measured here).

    python benchmarks/robot_data.py            # 40 episodes x 50 frames, 1 camera
    python benchmarks/robot_data.py --quick    # 12 episodes, fewer batches
    python benchmarks/robot_data.py --size 224 --gpu-rate 2000
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from alignkit.core.collate import collate_samples
from alignkit.domains.robotics.lerobot import LeRobotDataset
from alignkit.domains.robotics.synthetic import write_synthetic_lerobot

WINDOW, SIZE, STATE, ACTION, WIDTH = 4, 64, 8, 4, 64


class TinyCausalPolicy(nn.Module):
    """Tokens per frame: 9 pooled 8x8-patch tokens per camera + 1 state token; a task token first;
    block-causal attention over frames (a token sees its frame and earlier ones); action from the last token."""

    def __init__(self, cameras: int, tasks: int = 4, layers: int = 2):
        super().__init__()
        self.patch = nn.Conv2d(3, WIDTH, kernel_size=8, stride=8)
        self.pool = nn.AdaptiveAvgPool2d(3)
        self.state = nn.Linear(STATE, WIDTH)
        self.task = nn.Embedding(tasks, WIDTH)
        self.tokens_per_frame = 9 * cameras + 1
        self.position = nn.Parameter(torch.zeros(1, 1 + WINDOW * self.tokens_per_frame, WIDTH))
        layer = nn.TransformerEncoderLayer(WIDTH, nhead=4, dim_feedforward=4 * WIDTH, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers)
        self.head = nn.Linear(WIDTH, ACTION)
        frame_of_token = torch.cat([torch.zeros(1), torch.arange(WINDOW).repeat_interleave(self.tokens_per_frame) + 1])
        self.register_buffer("mask", frame_of_token[None, :] > frame_of_token[:, None])  # True = may not attend

    def forward(self, images: List[torch.Tensor], state: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        b = state.shape[0]
        per_camera = [self.pool(self.patch(x.flatten(0, 1))).flatten(2).transpose(1, 2).reshape(b, WINDOW, 9, WIDTH)
                      for x in images]
        frames = torch.cat([*per_camera, self.state(state)[:, :, None]], dim=2).flatten(1, 2)
        tokens = torch.cat([self.task(task)[:, None], frames], dim=1) + self.position
        return self.head(self.encoder(tokens, mask=self.mask)[:, -1])


def loader_rate(ds: LeRobotDataset, workers: int, batch: int, batches: int, shuffle: bool) -> Dict[str, float]:
    loader = DataLoader(ds, batch_size=batch, shuffle=shuffle, num_workers=workers, collate_fn=collate_samples,
                        drop_last=True, generator=torch.Generator().manual_seed(0), timeout=120 if workers else 0)
    it = iter(loader)
    start = time.perf_counter()
    next(it)
    first = time.perf_counter() - start
    start = time.perf_counter()
    n = 0
    for _ in range(batches):
        try:
            next(it)
        except StopIteration:
            break
        n += batch
    seconds = time.perf_counter() - start
    del it
    return {"samples_s": n / seconds, "images_s": n * WINDOW * len(ds.camera_keys) / seconds, "first_batch_s": first}


def per_core(run: Callable[[int], int], seconds: float) -> float:
    """Windows per CPU-second of this process of ``run(k)`` (returns windows done), after one warm-up call."""
    run(0)
    start, cpu, done, k = time.perf_counter(), time.process_time(), 0, 1
    while time.perf_counter() - start < seconds:
        done += run(k)
        k += 1
    return done / max(time.process_time() - cpu, 1e-9)


def window_rates(ds: LeRobotDataset, seconds: float) -> Dict[str, float]:
    """Windows per core-second: ``ds[i]`` at random ``i`` (the reader: only the window's frames are decoded), and
    decoding each camera's whole episode per window, then picking the window."""
    rng = np.random.default_rng(0)
    order = rng.permutation(len(ds))

    def needed(k: int) -> int:
        ds[int(order[k % len(order)])]
        return 1

    def whole(k: int) -> int:
        position, t = ds.locate(int(order[k % len(order)]))
        length = ds.episode_lengths[position]
        for key in ds.camera_keys:
            ds.frames(position, key, np.arange(length))[max(t - WINDOW + 1, 0):t + 1]
        return 1

    return {"window frames only (the reader)": per_core(needed, seconds),
            "whole episode per window": per_core(whole, seconds)}


def train_rate(ds: LeRobotDataset, batch: int, steps: int) -> float:
    torch.manual_seed(0)
    model = TinyCausalPolicy(len(ds.camera_keys))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    data = collate_samples([ds[i] for i in range(batch)])
    images = [data[k] for k in ds.camera_keys]

    def step() -> None:
        loss = F.mse_loss(model(images, data["observation.state"], data["task_index"]), data["action"][:, -1])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=40)
    parser.add_argument("--length", type=int, default=50)
    parser.add_argument("--cameras", type=int, default=1)
    parser.add_argument("--gop", type=int, default=8)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--size", type=int, default=SIZE, help="camera image side, pixels")
    parser.add_argument("--seconds", type=float, default=3.0, help="wall time per per-core row")
    parser.add_argument("--gpu-rate", type=float, default=2000.0,
                        help="windows/s a GPU policy step consumes (default 2000: ACT/diffusion-policy sized, one "
                             "H100, an estimate)")
    args = parser.parse_args()
    if args.quick:
        args.episodes, args.batches = 12, 6
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ds"
        start = time.perf_counter()
        write_synthetic_lerobot(root, args.episodes, args.length, gop=args.gop, image_size=args.size, state_dim=STATE,
                                action_dim=ACTION, cameras=[f"cam{c}" for c in range(args.cameras)])
        write_s = time.perf_counter() - start
        ds = LeRobotDataset(root, window=WINDOW)
        frames = len(ds) * args.cameras
        print(f"dataset: {args.episodes} episodes x {args.length} frames x {args.cameras} camera(s) "
              f"{args.size}x{args.size}, "
              f"gop {args.gop}: written in {write_s:.1f} s ({frames / write_s:.0f} frames/s), "
              f"{sum(p.stat().st_size for p in root.rglob('*.mp4')) / 1e3:.0f} kB of mp4")
        step = train_rate(ds, args.batch, steps=max(5, args.batches // 2))
        rows = [("shuffled", w, loader_rate(ds, w, args.batch, args.batches, True)) for w in (0, 1, 2)]
        rows.append(("sequential", 0, loader_rate(ds, 0, args.batch, args.batches, False)))
        cores = window_rates(ds, args.seconds)
    print(f"\ntraining step (batch {args.batch}, window {WINDOW}): {step:.0f} samples/s\n")
    print(f"{'order':<11}{'workers':>8}{'samples/s':>11}{'images/s':>10}{'first batch':>13}{'loader/step':>13}")
    for order, workers, r in rows:
        print(f"{order:<11}{workers:>8}{r['samples_s']:>11.0f}{r['images_s']:>10.0f}{r['first_batch_s']:>12.2f}s"
              f"{r['samples_s'] / step:>12.2f}x")
    print(f"\nper core (window {WINDOW}, {args.cameras} camera(s) {args.size} px; cores to feed {args.gpu_rate:.0f} "
          f"windows/s, the --gpu-rate estimate for one H100):")
    print(f"{'read':<34}{'windows/s/core':>15}{'images/s/core':>14}{'cores':>8}")
    for name, rate in cores.items():
        print(f"{name:<34}{rate:>15.0f}{rate * WINDOW * args.cameras:>14.0f}{args.gpu_rate / rate:>8.1f}")


if __name__ == "__main__":
    main()
