"""Benchmark ClipLoss (plain and chunked) against a naive full-matrix CLIP loss.

For each device (CPU, and CUDA when available) and batch size B (D = 512), every method runs in a
fresh subprocess: one forward+backward measures the peak memory (CPU: growth of the process's
``ru_maxrss``; CUDA: ``max_memory_allocated`` above the inputs), then a few more runs give the
median time. The table reports the loss and gradient differences to the naive reference
(``F.cross_entropy`` both ways over the full ``B x B`` logits) and time / peak-memory ratios.

On CPU a method whose estimated memory exceeds half the free memory is skipped with the reason. On CUDA
every method is tried: one that runs out of device memory (the naive loss at B = 65,536 needs about
5 B^2 float32 = 80 GiB) is reported as ``OOM`` in its row, and the ratios at that size are left empty.

    python benchmarks/contrastive_loss.py                  # B = 4096, 16384, 65536 on CPU and CUDA
    python benchmarks/contrastive_loss.py --quick          # B = 4096 only
    python benchmarks/contrastive_loss.py --devices cuda --sizes 16384 65536
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

METHODS = ("naive", "plain", "chunked")
TARGET_B, TARGET_MEMORY_RATIO, TARGET_TIME_RATIO = 16384, 0.25, 1.2
INIT_TEMPERATURE = 0.07


# ---------------------------------------------------------------- one measurement (subprocess)
def naive_clip(a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """The reference: full ``B x B`` logits and ``F.cross_entropy`` in both directions."""
    logits = logit_scale.exp().clamp(max=100.0) * a @ b.T
    labels = torch.arange(a.shape[0], device=a.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def peak_bytes(device: str) -> int:
    if device == "cuda":
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def measure(method: str, device: str, batch: int, dim: int, chunk: int, repeats: int, budget_s: float,
            grads_path: Optional[str]) -> Dict[str, object]:
    from alignkit.core.losses import ClipLoss

    gen = torch.Generator().manual_seed(0)
    a = F.normalize(torch.randn(batch, dim, generator=gen), dim=-1).to(device).requires_grad_()
    b = F.normalize(torch.randn(batch, dim, generator=gen), dim=-1).to(device).requires_grad_()
    if method == "naive":
        logit_scale = torch.tensor(math.log(1 / INIT_TEMPERATURE), device=device, requires_grad=True)

        def step() -> torch.Tensor:
            return naive_clip(a, b, logit_scale)
    else:
        chunk_size = chunk if method == "chunked" else None
        module = ClipLoss(init_temperature=INIT_TEMPERATURE, chunk_size=chunk_size).to(device)
        logit_scale = module.logit_scale

        def step() -> torch.Tensor:
            return module(a, b).loss

    def run() -> Tuple[float, float]:
        """(seconds, loss) of one forward + backward."""
        a.grad = b.grad = logit_scale.grad = None
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        loss = step()
        loss.backward()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start, float(loss.detach())

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() if device == "cuda" else peak_bytes(device)
    try:
        seconds, loss = run()
    except torch.cuda.OutOfMemoryError as exc:
        return {"oom": True, "error": str(exc).splitlines()[0], "peak": peak_bytes(device) - base}
    peak = peak_bytes(device) - base
    times = [seconds]
    while len(times) < repeats and sum(times) < budget_s:
        times.append(run()[0])
    if grads_path:
        torch.save({"a": a.grad.cpu(), "b": b.grad.cpu(), "logit_scale": logit_scale.grad.cpu()}, grads_path)
    return {"loss": loss, "time": statistics.median(times), "runs": len(times), "peak": peak}


# ---------------------------------------------------------------- driver
def available_bytes(device: str) -> int:
    if device == "cuda":
        return torch.cuda.mem_get_info()[0]
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def estimated_bytes(method: str, batch: int, dim: int, chunk: int) -> int:
    """Rough peak: naive holds ~5 float32 B x B matrices (logits, two log-softmaxes, their gradients),
    plain ~3, chunked ~4 blocks of chunk x B; plus inputs and gradients."""
    square = {"naive": 5 * batch, "plain": 3 * batch, "chunked": 4 * min(chunk, batch)}[method]
    return 4 * (square * batch + 4 * batch * dim)


def run_subprocess(method: str, device: str, batch: int, args: argparse.Namespace,
                   grads_path: Optional[str]) -> Dict[str, object]:
    """The worker's result; ``{"error": ...}`` (last line of its stderr) when it failed or was killed."""
    cmd = [sys.executable, __file__, "--worker", method, device, str(batch), str(args.dim), str(args.chunk_size),
           str(args.repeats), str(args.budget), grads_path or ""]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        tail = [line for line in out.stderr.strip().splitlines() if line.strip()] or [f"exit {out.returncode}"]
        oom = "OutOfMemoryError" in out.stderr or out.returncode == -9
        return {"error": tail[-1][:200], "oom": oom}
    return json.loads(out.stdout.strip().splitlines()[-1])


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def measure_all(device: str, batch: int, args: argparse.Namespace, tmp: str, notes: List[str]):
    """``{method: result}`` and ``{method: gradients}`` for the methods that fit in memory."""
    results: Dict[str, Dict[str, object]] = {}
    grads: Dict[str, Dict[str, torch.Tensor]] = {}
    for method in args.methods:
        need, free = estimated_bytes(method, batch, args.dim, args.chunk_size), available_bytes(device)
        if device != "cuda" and need > free / 2:  # CUDA: an out-of-memory error is caught and reported
            notes.append(f"{device} B={batch} {method}: skipped, estimated {human_bytes(need)} "
                         f"> half the free memory ({human_bytes(free)} free)")
            continue
        path = str(Path(tmp) / f"{method}.pt")
        print(f"running {device} B={batch} {method} ...", file=sys.stderr, flush=True)
        results[method] = run_subprocess(method, device, batch, args, path)
        if "error" in results[method]:
            kind = "out of memory" if results[method].get("oom") else "failed"
            notes.append(f"{device} B={batch} {method}: {kind} ({results[method]['error']})")
        else:
            grads[method] = torch.load(path)
    return results, grads


def table_row(device: str, batch: int, method: str, res: Dict[str, object], ref: Optional[Dict[str, object]],
              grads: Dict[str, Dict[str, torch.Tensor]]) -> List[str]:
    if "error" in res:
        return [device, str(batch), method, "-", "-", "OOM" if res.get("oom") else "FAILED", "-", "-", "-"]
    loss_diff = grad_diff = time_ratio = mem_ratio = "-"
    if ref is not None and "error" not in ref:
        loss_diff = f"{abs(res['loss'] - ref['loss']):.1e}"
        grad_diff = f"{max(float((grads[method][k] - grads['naive'][k]).abs().max()) for k in grads[method]):.1e}"
        time_ratio = f"{res['time'] / ref['time']:.2f}"
        mem_ratio = f"{res['peak'] / ref['peak']:.3f}"
    return [device, str(batch), method, loss_diff, grad_diff, f"{res['time']:.3f} (n={res['runs']})", time_ratio,
            human_bytes(res["peak"]), mem_ratio]


def verdict(device: str, res: Dict[str, object], ref: Dict[str, object]) -> str:
    memory, seconds = res["peak"] / ref["peak"], res["time"] / ref["time"]
    return (f"{device} B={TARGET_B} chunked: peak memory {memory:.3f} of reference (target <= {TARGET_MEMORY_RATIO}: "
            f"{'met' if memory <= TARGET_MEMORY_RATIO else 'NOT met'}), time {seconds:.2f}x "
            f"(target <= {TARGET_TIME_RATIO}x: {'met' if seconds <= TARGET_TIME_RATIO else 'NOT met'})")


HEADER = ["device", "B", "method", "loss |diff|", "max grad |diff|", "time fwd+bwd s", "time ratio", "peak memory",
          "memory ratio"]


def collect(args: argparse.Namespace) -> Tuple[List[List[str]], List[str]]:
    """Table rows (:data:`HEADER`) and notes for ``args.devices`` x ``args.sizes`` x ``args.methods``."""
    devices = args.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    sizes = [4096] if args.quick else args.sizes
    rows: List[List[str]] = []
    notes: List[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for device in devices:
            for batch in sizes:
                results, grads = measure_all(device, batch, args, tmp, notes)
                ref = results.get("naive")
                rows += [table_row(device, batch, method, res, ref, grads) for method, res in results.items()]
                ok = ref is not None and "error" not in ref and "error" not in results.get("chunked", {"error": 1})
                if batch == TARGET_B and ok:
                    notes.append(verdict(device, results["chunked"], ref))
    if TARGET_B not in sizes:
        notes.append(f"targets are judged at B={TARGET_B}: run without --quick")
    return rows, notes


def benchmark(args: argparse.Namespace) -> None:
    rows, notes = collect(args)
    print_table(rows, args)
    for line in notes:
        print(line)


def print_table(rows: List[List[str]], args: argparse.Namespace) -> None:
    header = HEADER
    title = f"CLIP loss, D={args.dim}, chunk_size={args.chunk_size}, ratios vs naive"
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(title)
        widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
        for r in [header] + rows:
            print("  ".join(c.rjust(w) for c, w in zip(r, widths)))
        return
    table = Table(title=title)
    for h in header:
        table.add_column(h, justify="right")
    for r in rows:
        table.add_row(*r)
    Console(width=160).print(table)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        method, device, batch, dim, chunk, repeats, budget, grads_path = sys.argv[2:10]
        print(json.dumps(measure(method, device, int(batch), int(dim), int(chunk), int(repeats), float(budget),
                                 grads_path or None)))
        return
    benchmark(parse())


def parse(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="B = 4096 only")
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384, 65536])
    parser.add_argument("--devices", nargs="+", choices=("cpu", "cuda"), help="default: cpu, and cuda when available")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                        help="naive first: the reference")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--chunk-size", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per method (median)")
    parser.add_argument("--budget", type=float, default=120.0, help="stop adding timed runs after this many seconds")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main()
