"""Is the chest X-ray loader the bottleneck? Loader throughput against the training step's consumption.

Writes (or reuses) a synthetic MIMIC-CXR-JPG archive, then measures in the same run:

- loader: decoded + windowed + resized + normalised images per second of the ``cxr`` dataset through
  the core ``AlignmentDataModule`` train loader, for 0, 1 and 2 DataLoader workers;
- consumption: images per second of a training step (forward + backward + AdamW) of an image tower on
  batches already in memory: the CPU demo's small CNN and a MONAI ResNet-18 (configs for GPUs use
  ResNet-50/DenseNet-121), with the text tower frozen and cached as in the configs.

The loader keeps up when its rate is above the step's rate ("headroom" > 1).

    python benchmarks/xray_data.py [--studies 400] [--image-size 96] [--batches 12]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import torch
from rich.console import Console
from rich.table import Table

from alignkit.core.datamodule import AlignmentDataModule
from alignkit.core.registry import ENCODERS, HEADS
from alignkit.domains.medical.xray import data as _xray_data  # noqa: F401  (registers "cxr")
from alignkit.domains.medical.xray.synthetic.archive import write_synthetic_mimic


def loader_rate(root: Path, image_size: int, batch_size: int, workers: int, batches: int) -> float:
    dm = AlignmentDataModule("cxr", {"layout": "mimic", "root": str(root), "image_size": image_size},
                             batch_size=batch_size, num_workers=workers, val_split=None, test_split=None)
    loader = dm.train_dataloader()
    it = iter(loader)
    next(it)  # worker start-up is not throughput
    start, seen = time.perf_counter(), 0
    for _ in range(batches):
        try:
            seen += len(next(it)["image"])
        except StopIteration:
            break
    return seen / (time.perf_counter() - start)


def step_rate(encoder_name: str, params: Dict, image_size: int, batch_size: int, steps: int) -> float:
    encoder = ENCODERS.build(encoder_name, **params)
    head = HEADS.build("linear", in_dim=encoder.output_dim, out_dim=128)
    model = torch.nn.Sequential(encoder, head)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch_size, 1, image_size, image_size)
    target = torch.nn.functional.normalize(torch.randn(batch_size, 128), dim=-1)  # stands in for cached text
    def step() -> None:
        z = torch.nn.functional.normalize(model(x), dim=-1)
        loss = torch.nn.functional.cross_entropy(z @ target.T / 0.1, torch.arange(batch_size))
        opt.zero_grad()
        loss.backward()
        opt.step()
    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--studies", type=int, default=400)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--root", type=Path, help="an existing MIMIC-CXR-JPG tree (default: a synthetic one)")
    args = parser.parse_args()
    tmp = tempfile.TemporaryDirectory()
    root = args.root or write_synthetic_mimic(Path(tmp.name) / "mimic", args.studies, image_size=256)
    size, bs = args.image_size, args.batch_size
    loaders = {w: loader_rate(root, size, bs, w, args.batches) for w in (0, 1, 2)}
    towers = {"small-cnn (CPU demo)": ("small-cnn", {"in_channels": 1, "widths": [32, 64, 128]}),
              "monai-resnet 18": ("monai-resnet", {"depth": 18, "in_channels": 1})}
    steps = {name: step_rate(enc, p, size, bs, max(2, args.batches // 3)) for name, (enc, p) in towers.items()}

    table = Table(title=f"X-ray loader vs training step ({size} px, batch {bs}, {torch.get_num_threads()} threads)")
    for col in ("loader workers", "loader img/s", *[f"headroom vs {n}" for n in steps]):
        table.add_column(col, justify="right")
    for w, rate in loaders.items():
        table.add_row(str(w), f"{rate:.0f}", *[f"{rate / s:.2f}x" for s in steps.values()])
    Console().print(table)
    rows: List[str] = [f"{n}: {s:.0f} img/s per training step" for n, s in steps.items()]
    Console().print("training consumption: " + "; ".join(rows))


if __name__ == "__main__":
    main()
