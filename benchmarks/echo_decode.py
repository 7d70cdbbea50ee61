"""Is echo video decoding the bottleneck? Clips decoded and transformed per second against a training step.

Writes (or reuses) a synthetic EchoNet-Dynamic folder (FFV1 AVIs), then measures in the same run, in clips per
second of ``num_frames`` frames ``stride`` apart at ``image_size`` pixels:

- PyAV: the ``echonet`` dataset's decoder (seek to the clip, decode its range, convert the wanted frames, MONAI
  crop/resize/normalise), in-process and through a DataLoader with 1 and 2 workers; and PyAV decoding alone,
  of the clip's frames (what the reader does: ``load_echo(select=SampleClip.indices)``) against the whole
  file (``select=None``, then picking the clip);
- OpenCV (``cv2.VideoCapture``: seek with ``CAP_PROP_POS_FRAMES``, read the range, the same MONAI transforms);
  skipped with a message when ``cv2`` is not installed (``pip install opencv-python-headless``);
- the real 480 x 640 JPEG DICOM cine of ../shared/data/medical/echo (pydicom decodes only the clip's frames,
  then the sector mask; and, for comparison, every frame), when present;
- consumption: a training step (forward + backward + AdamW) of a small (2+1)D CNN (about 42k parameters:
  per block a 1x3x3 spatial and a 3x1x1 temporal convolution; the features pooled by their mean and standard
  deviation over time, as the prototype found essential for EF) on batches already in memory.

Decoding keeps up when its rate is above the step's ("headroom" > 1). "cores for GPU" is ``--gpu-rate`` (clips/s
one GPU training step consumes; default 1,000: an R(2+1)D-18-sized video encoder on 16 x 112 x 112 clips on one
H100 in bf16, an estimate, not measured here) divided by clips per CPU-second. One thread per process throughout. The
machine may be shared, so in-process rows also give clips per CPU-second of this process (all its threads;
``time.process_time``), which other processes do not disturb; headroom compares those when both have them.

    python benchmarks/echo_decode.py [--studies 60] [--image-size 64] [--frames 32] [--num-frames 16] [--stride 2]
                                     [--gpu-rate 1000]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from torch import Tensor, nn
from torch.utils.data import DataLoader

from alignkit.core.collate import collate_samples
from alignkit.domains.medical.echo.data import EchoClipDecoder, EchoNetDataset
from alignkit.domains.medical.echo.loading import load_echo
from alignkit.domains.medical.echo.synthetic.archive import write_synthetic_echo
from alignkit.domains.medical.echo.transforms import SampleClip, frame_transforms

CINE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "medical" / "echo" / "color3d_jpeg_baseline.dcm"


def rate(run: Callable[[int], int], seconds: float = 4.0) -> Tuple[float, float]:
    """``(clips per second, clips per CPU-second)`` of ``run(k)`` (returns clips done) over about ``seconds`` of
    wall time, after one warm-up call."""
    run(0)
    start, cpu, done, k = time.perf_counter(), time.process_time(), 0, 1
    while time.perf_counter() - start < seconds:
        done += run(k)
        k += 1
    return done / (time.perf_counter() - start), done / max(time.process_time() - cpu, 1e-9)


def loader_rate(dataset: EchoNetDataset, workers: int, batch_size: int, batches: int) -> float:
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers, collate_fn=collate_samples,
                        drop_last=True, persistent_workers=workers > 0)
    it = iter(loader)
    next(it)  # worker start-up is not throughput
    start, seen = time.perf_counter(), 0
    for _ in range(batches):
        try:
            seen += len(next(it)["video"])
        except StopIteration:
            break
    return seen / (time.perf_counter() - start)


def opencv_clip(path: Path, start: int, indices: np.ndarray, transform: Callable[[Tensor], Tensor]) -> Tensor:
    """The clip ``indices`` (absolute frame numbers, ``start`` the first) read with cv2 and transformed like the
    dataset's decoder does."""
    import cv2
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, 1])
    capture.set(cv2.CAP_PROP_POS_FRAMES, start)
    wanted, frames = set(indices.tolist()), {}
    for k in range(start, int(indices.max()) + 1):
        ok, frame = capture.read()
        if not ok:
            break
        if k in wanted:
            frames[k] = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    capture.release()
    clip = torch.from_numpy(np.stack([frames[int(k)] for k in indices])).permute(3, 0, 1, 2).float()
    return transform(clip)


class TwoPlusOneD(nn.Module):
    """A small (2+1)D CNN: blocks of (1x3x3 conv, stride 2 in space) + (3x1x1 conv), ReLU; then the mean and the
    standard deviation over time of the spatially averaged features -> linear to ``out_dim``."""

    def __init__(self, widths: List[int], out_dim: int = 128):
        super().__init__()
        layers: List[nn.Module] = []
        channels = 3
        for width in widths:
            layers += [nn.Conv3d(channels, width, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)), nn.ReLU(),
                       nn.Conv3d(width, width, (3, 1, 1), padding=(1, 0, 0)), nn.ReLU()]
            channels = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(2 * channels, out_dim)

    def forward(self, video: Tensor) -> Tensor:
        per_frame = self.features(video).mean(dim=(3, 4))  # (B, C, T)
        return self.head(torch.cat([per_frame.mean(-1), per_frame.std(-1)], dim=-1))


def step_rate(num_frames: int, image_size: int, batch_size: int, steps: int) -> Tuple[Tuple[float, float], int]:
    model = TwoPlusOneD([16, 32, 48])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    video = torch.randn(batch_size, 3, num_frames, image_size, image_size)
    target = nn.functional.normalize(torch.randn(batch_size, 128), dim=-1)  # stands in for cached text

    def step(_: int) -> int:
        z = nn.functional.normalize(model(video), dim=-1)
        loss = nn.functional.cross_entropy(z @ target.T / 0.07, torch.arange(batch_size))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return batch_size

    return rate(step, seconds=max(2.0, steps * 0.1)), sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--studies", type=int, default=60)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--frames", type=int, default=32, help="frames per synthetic video")
    parser.add_argument("--num-frames", type=int, default=16, help="frames per clip")
    parser.add_argument("--stride", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--root", type=Path, help="an existing EchoNet-Dynamic folder (default: a synthetic one)")
    parser.add_argument("--gpu-rate", type=float, default=1000.0,
                        help="clips/s a GPU training step consumes (default 1000: R(2+1)D-18-sized, one H100, "
                             "an estimate)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    tmp = tempfile.TemporaryDirectory()
    root = args.root or write_synthetic_echo(Path(tmp.name) / "echo", args.studies, image_size=args.image_size,
                                             frames=args.frames)
    clip = dict(num_frames=args.num_frames, stride=args.stride, image_size=args.image_size)
    dataset = EchoNetDataset(root=str(root), split=None, clip_start="random", **clip)
    paths = [r.path for r in dataset.videos]
    decoder: EchoClipDecoder = dataset.decoder(clip_start="random", **clip)
    transform = frame_transforms(image_size=args.image_size)
    nan = float("nan")
    rows: List[Tuple[str, Tuple[float, float], Optional[str]]] = []

    sampler = SampleClip(num_frames=args.num_frames, stride=args.stride, start="random")

    def decode_only(k: int) -> int:
        load_echo(paths[k % len(paths)], select=sampler.indices)
        return 1

    def decode_and_transform(k: int) -> int:
        dataset[k % len(dataset)]
        return 1

    def decode_whole(k: int) -> int:
        video = load_echo(paths[k % len(paths)])
        video.frames[sampler.indices(len(video.frames))]
        return 1

    rows.append(("PyAV decode only (load_echo, clip frames)", rate(decode_only), None))
    rows.append(("PyAV decode only, whole file then pick the clip", rate(decode_whole), "what the reader avoids"))
    rows.append(("PyAV + MONAI transforms (dataset, in-process)", rate(decode_and_transform), None))
    for workers in (1, 2):
        rows.append((f"PyAV + transforms, DataLoader {workers} worker{'s' if workers > 1 else ''}",
                     (loader_rate(dataset, workers, args.batch_size, args.batches), nan), "wall clock only"))
    try:
        import cv2
        cv2.setNumThreads(1)
        span = (args.num_frames - 1) * args.stride + 1

        def opencv(k: int) -> int:
            start = int(np.random.default_rng(k).integers(0, max(args.frames - span, 0) + 1))
            indices = np.minimum(start + args.stride * np.arange(args.num_frames), args.frames - 1)
            opencv_clip(paths[k % len(paths)], start, indices, transform)
            return 1

        rows.append(("OpenCV + MONAI transforms (in-process)", rate(opencv), None))
    except ImportError:
        rows.append(("OpenCV + MONAI transforms", (nan, nan),
                     "skipped: cv2 is not installed (pip install opencv-python-headless)"))
    if CINE.is_file():
        data = CINE.read_bytes()

        def cine(k: int) -> int:
            decoder.video(data, "cine", dicom=True)
            return 1

        rows.append(("real JPEG DICOM cine 480x640 (pydicom, sector mask)", rate(cine, seconds=6.0), None))

        def cine_whole(k: int) -> int:
            load_echo(data, name="cine", dicom=True)
            return 1

        rows.append(("real JPEG DICOM cine, every frame decoded (load_echo, no select)", rate(cine_whole, seconds=6.0),
                     "what the reader avoids"))
    consumption, params = step_rate(args.num_frames, args.image_size, args.batch_size, args.batches)

    table = Table(title=f"Echo clips/s: {args.num_frames} frames (stride {args.stride}) at {args.image_size} px, "
                        f"FFV1 AVIs of {args.frames} frames")
    for column in ("source", "clips/s", "clips/CPU-s", "headroom vs step", f"cores for {args.gpu_rate:.0f} clips/s",
                   "note"):
        table.add_column(column)

    def shown(value: float) -> str:
        return "-" if np.isnan(value) else f"{value:.0f}" if value >= 10 else f"{value:.2g}"

    for name, (wall, cpu), note in rows:
        headroom = cpu / consumption[1] if not np.isnan(cpu) else wall / consumption[0]
        table.add_row(name, shown(wall), shown(cpu), "-" if np.isnan(headroom) else f"{headroom:.1f}x",
                      shown(args.gpu_rate / cpu), note or "")
    table.add_row(f"training step: (2+1)D CNN, {params / 1000:.0f}k params, batch {args.batch_size}",
                  shown(consumption[0]), shown(consumption[1]), "1.0x", "-", "forward + backward + AdamW, 1 thread")
    Console().print(table)
    tmp.cleanup()


if __name__ == "__main__":
    main()
