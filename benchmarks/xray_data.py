"""Can CPUs feed a GPU with chest X-rays? Decoding rates per core at archive resolution, and the loader against the
training step.

1. Archive resolution (the GPU question). Writes ``--images`` synthetic MIMIC-CXR-JPG studies at full size
   (3,056 x 2,544 pixels, JPEG quality 95, about 4 MB each like MIMIC-CXR-JPG's files: the synthetic
   radiograph upsampled, with detector grain and mottle so the files carry realistic entropy, not flat
   areas), then measures images per CPU-second of one process (one thread: images/s per core) of

   - the original file, full decode + resize to ``--target`` px (``decode_xray(..., draft=False)``);
   - the original file with JPEG draft decoding (DCT-scaled to 1/4, the reader's default);
   - resized shards (``alignkit shard --resize 512`` and ``--resize 256``, longest side, JPEG quality 90) read
     back through the ``cxr`` decoder from the tar files (tar parsing, decode, resize, normalise);
   - writing resized shards with 1 and 2 worker processes (``write_shards(encoding=..., workers=N)``, wall clock).

   and prints the cores needed to feed ``--gpu-rate`` images/s: default 3,000, roughly what a ResNet-50
   training step consumes on one H100 in bf16 (an estimate, not measured here).

2. The loader against the step on this machine (skip with ``--no-loader``): decoded + windowed + resized +
   normalised images per second of the ``cxr`` dataset through the core ``AlignmentDataModule`` for 0, 1 and 2
   DataLoader workers, against a training step (forward + backward + AdamW) of the CPU demo's small CNN and a
   MONAI ResNet-18 on batches in memory. The loader keeps up when "headroom" > 1.

    python benchmarks/xray_data.py [--images 6] [--target 224] [--gpu-rate 3000] [--no-loader]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.table import Table

from alignkit.core.datamodule import AlignmentDataModule
from alignkit.core.image_encoding import ImageEncoding
from alignkit.core.paired import build_decoder
from alignkit.core.registry import ENCODERS, HEADS
from alignkit.core.shards import ShardedIterableDataset, write_shards
from alignkit.domains.medical.xray.data import XRayReportDataset
from alignkit.domains.medical.xray.images import decode_xray
from alignkit.domains.medical.xray.synthetic.archive import write_synthetic_mimic

MIMIC_SIZE = (2544, 3056)  # (W, H): MIMIC-CXR-JPG's typical portrait frontal


def write_full_resolution_archive(root: Path, studies: int) -> Path:
    """A synthetic MIMIC-CXR-JPG tree whose JPEGs are 2,544 x 3,056 (W x H), quality 95, about 4 MB: each rendered
    radiograph (384 px) upsampled bicubically, plus mottle (smooth noise, sigma 4 grey levels, 4 px grain) and
    detector noise (sigma 10): the entropy that gives MIMIC's files their size."""
    write_synthetic_mimic(root, studies, image_size=384, lateral_fraction=0.0)
    rng = np.random.default_rng(0)
    for path in sorted(root.rglob("*.jpg")):
        if path.parent.name == "masks":
            continue
        with Image.open(path) as img:
            big = np.asarray(img.convert("L").resize(MIMIC_SIZE, Image.BICUBIC), dtype=np.float32)
        coarse = rng.normal(0, 1, (MIMIC_SIZE[1] // 4, MIMIC_SIZE[0] // 4)).astype(np.float32)
        mottle = np.asarray(Image.fromarray(coarse).resize(MIMIC_SIZE, Image.BICUBIC)) * 4
        noisy = big + mottle + rng.normal(0, 10, big.shape).astype(np.float32)
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(path, quality=95)
    return root


def per_core(run: Callable[[int], int], seconds: float) -> Tuple[float, float]:
    """``(images per CPU-second of this process, images per wall second)`` of ``run(k)`` (returns images done),
    over about ``seconds`` of wall time after one warm-up call. One thread, so CPU-seconds = core-seconds;
    other processes on a shared machine do not change the first figure."""
    run(0)
    start, cpu, done, k = time.perf_counter(), time.process_time(), 0, 1
    while time.perf_counter() - start < seconds:
        done += run(k)
        k += 1
    return done / max(time.process_time() - cpu, 1e-9), done / (time.perf_counter() - start)


def archive_rates(root: Path, target: int, seconds: float, out: Path) -> List[Tuple[str, float, float, float]]:
    """Rows ``(path, kB per image, images per core-second, images per wall second)`` (see the module docstring)."""
    dataset = XRayReportDataset(root=str(root), split=None, image_size=target)
    files = [r.image_path.read_bytes() for r in dataset.records]
    kb = float(np.mean([len(f) for f in files])) / 1e3
    with Image.open(dataset.records[0].image_path) as img:
        assert img.size == MIMIC_SIZE, img.size
    rows = []
    for name, draft in (("original JPEG, full decode + resize", False), ("original JPEG, draft decode + resize", True)):
        rate = per_core(lambda k, d=draft: int(decode_xray(files[k % len(files)], image_size=target, draft=d)
                                               .shape[0] > 0), seconds)
        rows.append((name, kb, *rate))
    decoder = build_decoder(XRayReportDataset, dataset.params)
    for size in (512, 256):
        encoding = ImageEncoding(size=size, resize="longest", format="jpeg", quality=90)
        shards = write_shards(dataset, out / f"shards{size}", max_count=len(dataset), progress=False,
                              encoding=encoding, workers=1)
        stream = ShardedIterableDataset([str(p) for p in shards], decode=decoder, shuffle=0)
        shard_kb = sum(p.stat().st_size for p in shards) / len(dataset) / 1e3
        rate = per_core(lambda k: sum(1 for _ in stream), seconds)
        rows.append((f"shard resized to {size} (longest side, JPEG q90)", shard_kb, *rate))
    for workers in (1, 2):
        start = time.perf_counter()
        write_shards(dataset, out / f"write{workers}", max_count=len(dataset), progress=False,
                     encoding=ImageEncoding(size=512, format="jpeg", quality=90), workers=workers)
        wall = len(dataset) / (time.perf_counter() - start)
        rows.append((f"writing 512-px shards, {workers} worker process{'es' if workers > 1 else ''}", kb,
                     float("nan"), wall))
    return rows


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


def print_archive(rows: List[Tuple[str, float, float, float]], target: int, gpu_rate: float) -> None:
    table = Table(title=f"X-rays at MIMIC-CXR-JPG resolution ({MIMIC_SIZE[0]} x {MIMIC_SIZE[1]}) -> {target} px, "
                        f"one thread; cores to feed {gpu_rate:.0f} img/s")
    for col in ("path", "kB/image", "img/s per core", "ms/image", "img/s wall", f"cores for {gpu_rate:.0f} img/s"):
        table.add_column(col, justify="right" if col != "path" else "left")
    for name, kb, core, wall in rows:
        known = not np.isnan(core)
        table.add_row(name, f"{kb:.0f}", f"{core:.1f}" if known else "-", f"{1000 / core:.1f}" if known else "-",
                      f"{wall:.1f}", f"{gpu_rate / core:.0f}" if known else "-")
    Console().print(table)
    Console().print(f"--gpu-rate {gpu_rate:.0f}: images/s one training step consumes on the GPU (default 3000: "
                    "ResNet-50 at 224 px in bf16 on one H100, an estimate). Cores = gpu-rate / (img/s per core).")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=6, help="full-resolution studies to write")
    parser.add_argument("--target", type=int, default=224, help="model input side, pixels")
    parser.add_argument("--gpu-rate", type=float, default=3000.0,
                        help="images/s the GPU step consumes (default 3000: ResNet-50 on one H100, an estimate)")
    parser.add_argument("--seconds", type=float, default=3.0, help="wall time per measured row")
    parser.add_argument("--no-loader", action="store_true", help="skip the loader-vs-step table")
    parser.add_argument("--studies", type=int, default=400)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--root", type=Path, help="an existing MIMIC-CXR-JPG tree (default: a synthetic one)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    tmp = tempfile.TemporaryDirectory()
    full = write_full_resolution_archive(Path(tmp.name) / "full", args.images)
    print_archive(archive_rates(full, args.target, args.seconds, Path(tmp.name)), args.target, args.gpu_rate)
    if args.no_loader:
        return
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
