"""Benchmark alignkit's point ops against per-sample references and C++/Rust libraries.

Operations (B clouds of N points on the unit sphere, float32):
- ``fps``: farthest point sampling N -> M from index 0;
- ``knn``: the k nearest of N points for M queries;
- ``ball_query``: the first k points within ``radius`` of M queries (PointNet++ semantics).

Methods: ``reference`` (a straightforward per-sample PyTorch loop), ``alignkit-torch`` (the vectorised
PyTorch path, ``backend="torch"``: the CUDA path and the reference of the other backends),
``alignkit-auto`` (the default backend: on CPU the compiled loops of ``ops_native``), ``pytorch3d``
(when importable) and the CPU libraries: for FPS ``open3d`` (``PointCloud.farthest_point_down_sample``,
C++), ``fpsample`` (``fps_sampling``, exact, Rust) and ``fpsample-quickfps``
(``bucket_fps_kdline_sampling``, exact FPS but from a start of its own choosing); for kNN
``ckdtree`` (scipy ``cKDTree`` build + ``query(k)``) and ``open3d-knn`` (``core.nns``
``knn_index`` + ``knn_search``); for ball query ``ckdtree-all`` (build + ``query_ball_point``,
returning all neighbours, a superset of the work) and ``open3d-hybrid`` (``hybrid_index`` +
``hybrid_search(radius, max_knn=k)``: the k nearest inside the ball, not the first k by index). Library
inputs (Open3D point clouds, numpy arrays in the library's dtype) are built before timing; index and
tree building are timed.

Every (op, method, device) runs in a fresh subprocess with ``--threads`` intra-op threads (default 1;
``OMP_NUM_THREADS`` too, and ``workers`` for scipy). ``cpu s`` is the process CPU time per call (of the
first call when there are no repeats), which shows a library that uses more threads than asked. Peak
memory: on CPU the growth of the process's peak resident set (``getrusage`` ``ru_maxrss``, so
allocations inside Open3D/fpsample count too; resolution is a few pages) during the first call after the
inputs exist, with glibc's ``MALLOC_MMAP_THRESHOLD_=65536`` so that memory freed while preparing the
inputs is returned to the OS rather than silently reused; on CUDA ``torch.cuda.max_memory_allocated``
above the inputs. Time is the median of the following calls. ``vs ref`` is the time ratio to the
per-sample reference; ``vs lib`` the ratio to the fastest library method of the same op and device whose
result agrees with the reference (agree >= 0.999); ``cpu vs lib`` the same for CPU time (steadier on a
shared machine). ``agree`` is the fraction of the method's output that matches the reference (FPS:
sampled indices in the reference's set; kNN, open3d-hybrid: neighbours in the reference's row set; ball
query: equal entries, ``ckdtree-all`` cut to the first k by index and padded as PointNet++ does, outside
the timing).

    python benchmarks/point_ops.py            # B=32, N=8192, M=1024, k=32, radius 0.2
    python benchmarks/point_ops.py --quick    # B=8, N=2048, M=256, k=16
"""
from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

OPS = ("fps", "knn", "ball_query")
CPU_LIBRARIES = {"fps": ("open3d", "fpsample", "fpsample-quickfps"), "knn": ("ckdtree", "open3d-knn"),
                 "ball_query": ("ckdtree-all", "open3d-hybrid")}
LIBRARY_MODULE = {"open3d": "open3d", "fpsample": "fpsample", "ckdtree": "scipy"}


# ---------------------------------------------------------------- per-sample PyTorch references
def fps_reference(xyz: torch.Tensor, npoint: int) -> torch.Tensor:
    out = []
    for cloud in xyz:
        nearest = torch.full((cloud.shape[0],), float("inf"), device=cloud.device)
        chosen = [0]
        for _ in range(npoint - 1):
            nearest = torch.minimum(nearest, ((cloud - cloud[chosen[-1]]) ** 2).sum(-1))
            chosen.append(int(nearest.argmax()))
        out.append(torch.tensor(chosen))
    return torch.stack(out)


def knn_reference(query: torch.Tensor, points: torch.Tensor, k: int) -> torch.Tensor:
    out = []
    for q, p in zip(query, points):
        d2 = ((q[:, None, :] - p[None, :, :]) ** 2).sum(-1)
        out.append(d2.topk(k, dim=-1, largest=False).indices)
    return torch.stack(out)


def ball_query_reference(query: torch.Tensor, points: torch.Tensor, radius: float, k: int) -> torch.Tensor:
    out = []
    for q, p in zip(query, points):
        d2 = ((q[:, None, :] - p[None, :, :]) ** 2).sum(-1)
        n = p.shape[0]
        first = torch.where(d2 < radius ** 2, torch.arange(n, device=p.device), n).sort(dim=-1).values[:, :k]
        head = torch.where(first[:, :1] < n, first[:, :1], d2.argmin(-1, keepdim=True))
        out.append(torch.where(first < n, first, head))
    return torch.stack(out)


# ---------------------------------------------------------------- one measurement (subprocess)
def make_clouds(batch: int, num_points: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    xyz = torch.randn(batch, num_points, 3, generator=g)
    return xyz / xyz.norm(dim=-1, keepdim=True)


def open3d_fps_indices(clouds: List[object], xyz: np.ndarray, npoint: int) -> np.ndarray:
    """Open3D returns points, not indices: map them back by exact coordinates (outside the timing)."""
    out = []
    for pcd, cloud in zip(clouds, xyz):
        where = {p.tobytes(): i for i, p in enumerate(cloud.astype(np.float64))}
        out.append([where[p.tobytes()] for p in np.asarray(pcd.points)])
    return np.array(out)


def first_k_padded(neighbours: List[List[int]], k: int) -> np.ndarray:
    """cKDTree's all-neighbour lists -> (M, k) PointNet++ rows: first k by index, padded with the first."""
    rows = []
    for row in neighbours:
        row = sorted(row)[:k] or [-1]
        rows.append(row + [row[0]] * (k - len(row)))
    return np.array(rows)


def build_call(op: str, method: str, device: str, a: argparse.Namespace) -> Callable[[], object]:
    """A zero-argument call doing the work of ``method`` on prepared inputs."""
    from alignkit.domains.pointcloud import ops

    xyz = make_clouds(a.batch, a.points).to(device)
    query = xyz[:, : a.npoint]
    arrays = [np.ascontiguousarray(c) for c in xyz.cpu().numpy()]
    backend = {"alignkit-torch": "torch", "alignkit-auto": "auto", "pytorch3d": "pytorch3d"}.get(method)
    if method.startswith("ckdtree"):
        from scipy.spatial import cKDTree
    if method.startswith("open3d-"):
        import open3d.core as o3c
    if op == "fps":
        if method == "reference":
            return lambda: fps_reference(xyz, a.npoint)
        if backend:
            return lambda: ops.farthest_point_sample(xyz, a.npoint, backend=backend)
        if method == "open3d":
            import open3d as o3d
            clouds = [o3d.geometry.PointCloud(o3d.utility.Vector3dVector(c.astype(np.float64))) for c in arrays]
            return lambda: [c.farthest_point_down_sample(a.npoint, 0) for c in clouds]
        import fpsample
        if method == "fpsample":
            return lambda: np.stack([fpsample.fps_sampling(c, a.npoint, start_idx=0) for c in arrays])
        height = min(7, int(np.log2(a.points)))
        return lambda: np.stack([fpsample.bucket_fps_kdline_sampling(c, a.npoint, height, start_idx=0)
                                 for c in arrays])
    if op == "knn":
        if method == "reference":
            return lambda: knn_reference(query, xyz, a.k)
        if backend:
            return lambda: ops.knn(query, xyz, a.k, backend=backend)[1]
        if method == "ckdtree":
            pts = [c.astype(np.float64) for c in arrays]
            return lambda: np.stack([cKDTree(p).query(p[: a.npoint], a.k, workers=a.threads)[1] for p in pts])

        def open3d_knn() -> np.ndarray:
            out = []
            for c in arrays:
                nns = o3c.nns.NearestNeighborSearch(o3c.Tensor.from_numpy(c))
                nns.knn_index()
                out.append(nns.knn_search(o3c.Tensor.from_numpy(c[: a.npoint]), a.k)[0].numpy())
            return np.stack(out)
        return open3d_knn
    if method == "reference":
        return lambda: ball_query_reference(query, xyz, a.radius, a.k)
    if backend:
        if "backend" in inspect.signature(ops.ball_query).parameters:
            return lambda: ops.ball_query(query, xyz, a.radius, a.k, backend=backend)
        return lambda: ops.ball_query(query, xyz, a.radius, a.k)  # alignkit before the backend argument
    if method == "ckdtree-all":
        pts = [c.astype(np.float64) for c in arrays]
        return lambda: [cKDTree(p).query_ball_point(p[: a.npoint], a.radius, workers=a.threads) for p in pts]

    def open3d_hybrid() -> np.ndarray:
        out = []
        for c in arrays:
            nns = o3c.nns.NearestNeighborSearch(o3c.Tensor.from_numpy(c))
            nns.hybrid_index(a.radius)
            out.append(nns.hybrid_search(o3c.Tensor.from_numpy(c[: a.npoint]), a.radius, a.k)[0].numpy())
        return np.stack(out)
    return open3d_hybrid


def peak_bytes(device: str) -> int:
    if device == "cuda":
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def measure(op: str, method: str, device: str, a: argparse.Namespace, out_path: str) -> Dict[str, object]:
    torch.set_num_threads(a.threads)
    call = build_call(op, method, device, a)

    def timed() -> tuple[float, object]:
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = call()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start, result

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() if device == "cuda" else peak_bytes(device)
    cpu_start = time.process_time()
    first, result = timed()
    cpu_first = time.process_time() - cpu_start
    peak = peak_bytes(device) - base
    times: List[float] = []
    cpu_start = time.process_time()
    while len(times) < a.repeats and sum(times) + first < a.budget:
        times.append(timed()[0])
    cpu = (time.process_time() - cpu_start) / len(times) if times else cpu_first
    if method == "open3d":
        result = open3d_fps_indices(result, make_clouds(a.batch, a.points).numpy(), a.npoint)
    if method == "ckdtree-all":
        result = np.stack([first_k_padded(rows, a.k) for rows in result])
    np.save(out_path, np.asarray(result.cpu() if isinstance(result, torch.Tensor) else result, dtype=np.int64))
    return {"time": statistics.median(times or [first]), "runs": max(1, len(times)), "peak": peak, "cpu": cpu}


# ---------------------------------------------------------------- driver
def methods(op: str, device: str) -> List[str]:
    names = ["reference", "alignkit-torch", "alignkit-auto"]
    if importlib.util.find_spec("pytorch3d") is not None and op != "ball_query":
        names.append("pytorch3d")
    if device == "cpu":
        names += [m for m in CPU_LIBRARIES[op]
                  if importlib.util.find_spec(LIBRARY_MODULE.get(m.split("-")[0], m)) is not None]
    return names


def agreement(op: str, method: str, out: np.ndarray, ref: np.ndarray) -> float:
    if op == "ball_query" and method != "open3d-hybrid":
        return float((out == ref).mean())
    rows_out, rows_ref = out.reshape(-1, out.shape[-1]), ref.reshape(-1, ref.shape[-1])
    return float(np.mean([len(set(o) & set(r)) / len(r) for o, r in zip(rows_out.tolist(), rows_ref.tolist())]))


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def run_worker(op: str, method: str, device: str, a: argparse.Namespace, out_path: str) -> Dict[str, object]:
    cmd = [sys.executable, __file__, "--worker", op, method, device, out_path, "--batch", str(a.batch),
           "--points", str(a.points), "--npoint", str(a.npoint), "--k", str(a.k), "--radius", str(a.radius),
           "--repeats", str(a.repeats), "--budget", str(a.budget), "--threads", str(a.threads)]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(64 * 1024),  # freed blocks go back to the OS
           "OMP_NUM_THREADS": str(a.threads)}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(f"worker {op} {method} {device} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def benchmark(a: argparse.Namespace) -> None:
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    header = ["op", "device", "method", "time s (runs)", "cpu s", "vs ref", "vs lib", "cpu vs lib", "peak memory",
              "memory ratio", "agree"]
    rows: List[List[str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for op in OPS:
            for device in devices:
                results: Dict[str, Dict[str, object]] = {}
                ref_out: Optional[np.ndarray] = None
                for method in methods(op, device):
                    print(f"running {op} {device} {method} ...", file=sys.stderr, flush=True)
                    path = str(Path(tmp) / f"{op}-{device}-{method}.npy")
                    res = run_worker(op, method, device, a, path)
                    out = np.load(path)
                    if method == "reference":
                        ref_out = out
                    results[method] = {**res, "agree": agreement(op, method, out, ref_out)}
                ref = results["reference"]
                libraries = [r for m, r in results.items()
                             if m in CPU_LIBRARIES[op] + ("pytorch3d",) and r["agree"] >= 0.999]
                fastest = min(libraries, key=lambda r: r["time"]) if libraries else None
                cheapest = min(libraries, key=lambda r: r["cpu"]) if libraries else None
                for method, res in results.items():
                    mem_ratio = f"{res['peak'] / ref['peak']:.2f}" if ref["peak"] > 0 else "-"
                    vs_lib = f"{res['time'] / fastest['time']:.2f}" if fastest else "-"
                    cpu_vs_lib = f"{res['cpu'] / cheapest['cpu']:.2f}" if cheapest else "-"
                    rows.append([op, device, method, f"{res['time']:.4f} ({res['runs']})", f"{res['cpu']:.4f}",
                                 f"{res['time'] / ref['time']:.3f}", vs_lib, cpu_vs_lib, human_bytes(res["peak"]),
                                 mem_ratio, f"{res['agree']:.4f}"])
    print(f"point ops: B={a.batch}, N={a.points}, M={a.npoint}, k={a.k}, radius={a.radius}, "
          f"threads={a.threads}; vs ref: time / per-sample reference; vs lib: time / fastest agreeing library; "
          f"CPU memory = peak RSS growth (ru_maxrss)")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    for r in [header] + rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))


def parse(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small run: B=8, N=2048, M=256, k=16")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--points", type=int, default=8192)
    p.add_argument("--npoint", type=int, default=1024, help="FPS samples and number of queries")
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--radius", type=float, default=0.2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--budget", type=float, default=20.0, help="seconds of timing per method at most")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--worker", nargs=4, metavar=("OP", "METHOD", "DEVICE", "OUT"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.quick:
        a.batch, a.points, a.npoint, a.k = 8, 2048, 256, 16
    return a


if __name__ == "__main__":
    args = parse()
    if args.worker:
        op, method, device, out = args.worker
        print(json.dumps(measure(op, method, device, args, out)))
    else:
        benchmark(args)
