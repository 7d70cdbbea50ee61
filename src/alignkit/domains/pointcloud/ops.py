"""Point-cloud operations: batched, vectorised PyTorch (CPU or CUDA) and compiled CPU loops.

Shapes: ``B`` clouds, ``N`` points per cloud, ``M`` queries (or centres) per cloud,
``k`` neighbours, ``C`` feature channels. Coordinates are xyz in the last dim.

- :func:`farthest_point_sample`: iterative farthest point sampling (FPS), the
  PointNet++ sampler. Exact and deterministic given ``start``.
- :func:`fps_numpy`: FPS of one ``np.ndarray`` cloud for CPU preprocessing.
- :func:`knn`, :func:`ball_query`: neighbour search.
- :func:`gather_points`, :func:`group`, :func:`three_interpolate`: indexing and
  inverse-distance feature propagation.

Every squared distance is ``d2 = ((dx * dx) + (dy * dy)) + (dz * dz)`` (``dx = a_x - b_x``), each
operation rounded in the input dtype, so the backends agree bit for bit:

- ``"torch"``: the reference, vectorised PyTorch for CPU and CUDA; neighbour search works on
  (B, M', N) distance blocks of at most ``PAIRWISE_BUDGET`` pairs;
- ``"native"``: compiled C loops (:mod:`.ops_native`, CPU, float32/float64): FPS fused into one pass
  per step, kNN through a uniform grid, ball query stopping at the k-th point inside;
- ``"pytorch3d"``: pytorch3d's kernels when importable (FPS ties and kNN tie order may differ);
- ``"auto"``: native for CPU tensors when it can be built, else pytorch3d when importable, else torch.

Timings: ``benchmarks/point_ops.py`` and ``docs/pointcloud.md``.
"""
from __future__ import annotations

import functools
import importlib
from types import ModuleType
from typing import Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from alignkit.domains.pointcloud import ops_native

BACKENDS = ("auto", "torch", "native", "pytorch3d")

PAIRWISE_BUDGET = 2 ** 22
"""Largest number of (query, point) pairs one distance block holds (16 MB in float32)."""


@functools.lru_cache(maxsize=None)
def optional_module(name: str) -> Optional[ModuleType]:
    """The module ``name`` if it can be imported, else None (cached)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def resolve_backend(backend: str, *tensors: Tensor) -> str:
    """``"torch"``, ``"native"`` or ``"pytorch3d"`` for an op on ``tensors``.

    ``"auto"`` picks native when the tensors are CPU float32/float64 of one dtype and the compiled
    library builds, else pytorch3d when importable, else torch.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown point-op backend '{backend}'; choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        if tensors and ops_native.supports(*tensors):
            return "native"
        return "pytorch3d" if optional_module("pytorch3d.ops") is not None else "torch"
    if backend == "pytorch3d" and optional_module("pytorch3d.ops") is None:
        raise ValueError("backend 'pytorch3d' was requested but pytorch3d is not importable; "
                         "install pytorch3d or use backend='torch' / 'auto'")
    if backend == "native" and not ops_native.supports(*tensors):
        raise ValueError(f"backend 'native' needs CPU float32/float64 tensors of one dtype (got "
                         f"{[f'{t.device.type} {t.dtype}' for t in tensors]}) and a working C compiler "
                         f"(available: {ops_native.available()}); use backend='torch' or 'auto'")
    return backend


def check_xyz(xyz: Tensor, name: str) -> None:
    """Raise ValueError unless ``xyz`` is a finite float tensor of shape (B, N, 3)."""
    if xyz.dim() != 3 or xyz.shape[-1] != 3:
        raise ValueError(f"{name} must have shape (B, N, 3), got {tuple(xyz.shape)}")
    if not xyz.is_floating_point():
        raise ValueError(f"{name} must be a float tensor, got {xyz.dtype}")
    if bool(torch.isfinite(xyz.sum())):   # a sum is finite only when every term is (~15x faster than isfinite(x))
        return
    bad = ~torch.isfinite(xyz).all(dim=2).all(dim=1)    # or the sum overflowed: the exact test
    if bool(bad.any()):
        raise ValueError(f"{name} holds NaN or inf coordinates in batch item(s) "
                         f"{bad.nonzero().flatten().tolist()}; clean or drop those clouds first")


def check_same_batch(query: Tensor, points: Tensor) -> None:
    if query.shape[0] != points.shape[0]:
        raise ValueError(f"query and points must have the same batch size, "
                         f"got {query.shape[0]} and {points.shape[0]}")


def farthest_point_sample(xyz: Tensor, npoint: int, start: Optional[Tensor] = None,
                          backend: str = "auto") -> Tensor:
    """Indices of ``npoint`` farthest-point samples of each cloud.

    ``idx[:, 0] = start``; then ``idx[:, i] = argmax_n min_{j<i} |x_n - x_idx[j]|^2``
    over not-yet-selected ``n`` (the first maximal index on ties), so indices are distinct even when
    the cloud repeats points.

    Args:
        xyz: (B, N, 3) coordinates.
        npoint: number of samples, ``1 <= npoint <= N``.
        start: (B,) long index of the first sample of each cloud; default 0.
        backend: ``"torch"``, ``"native"``, ``"pytorch3d"`` or ``"auto"`` (module docstring).

    Returns:
        LongTensor (B, npoint), distinct indices per cloud in selection order (the same for the torch
        and native backends, ties included).
    """
    check_xyz(xyz, "xyz")
    B, N, _ = xyz.shape
    if not 1 <= npoint <= N:
        raise ValueError(f"farthest_point_sample needs 1 <= npoint <= N, got npoint={npoint}, N={N}")
    if start is None:
        start = torch.zeros(B, dtype=torch.long, device=xyz.device)
    start = start.to(device=xyz.device, dtype=torch.long)
    if start.shape != (B,) or bool(((start < 0) | (start >= N)).any()):
        raise ValueError(f"start must be a (B,)=({B},) long tensor with values in [0, {N}), got {start.tolist()}")
    with torch.no_grad():
        chosen = resolve_backend(backend, xyz)
        if chosen == "native":
            return ops_native.fps(xyz, npoint, start)
        if chosen == "pytorch3d":
            return _fps_pytorch3d(xyz, npoint, start)
        return _fps_torch(xyz, npoint, start)


def _fps_torch(xyz: Tensor, npoint: int, start: Tensor) -> Tensor:
    """Per step: one (B, N) distance update from contiguous coordinate planes into preallocated buffers
    (not ``((xyz - c) ** 2).sum(-1)``, which reduces over a stride-3 axis), one elementwise kernel per
    operation of ``d2`` so the rounding is the native backend's."""
    B, N, _ = xyz.shape
    batch = torch.arange(B, device=xyz.device)
    planes = xyz.permute(2, 0, 1).contiguous()  # (3, B, N)
    idx = torch.empty(B, npoint, dtype=torch.long, device=xyz.device)
    nearest = torch.full((B, N), float("inf"), dtype=xyz.dtype, device=xyz.device)
    d2, diff = torch.empty_like(nearest), torch.empty_like(nearest)
    last = start
    for i in range(npoint):
        idx[:, i] = last
        if i + 1 == npoint:
            break
        torch.sub(planes[0], planes[0][batch, last].unsqueeze(1), out=d2)
        d2.mul_(d2)
        for coord in planes[1:]:
            torch.sub(coord, coord[batch, last].unsqueeze(1), out=diff)
            d2.add_(diff.mul_(diff))
        torch.minimum(nearest, d2, out=nearest)
        nearest[batch, last] = -1.0  # never re-pick a sample, even among duplicate points
        last = nearest.argmax(dim=-1)
    return idx


def _fps_pytorch3d(xyz: Tensor, npoint: int, start: Tensor) -> Tensor:
    """pytorch3d always starts at point 0: roll each cloud so ``start`` comes first."""
    ops = optional_module("pytorch3d.ops")
    N = xyz.shape[1]
    roll = (torch.arange(N, device=xyz.device) + start.unsqueeze(1)) % N
    _, idx = ops.sample_farthest_points(gather_points(xyz, roll), K=npoint)
    return roll.gather(1, idx)


def fps_numpy(points: np.ndarray, npoint: int, start: Optional[int] = 0) -> np.ndarray:
    """Farthest point sampling of one cloud for CPU preprocessing.

    Args:
        points: (N, D) array, D >= 3; the first three columns are xyz.
        npoint: number of samples, ``1 <= npoint <= N``.
        start: index of the first sample. With an int the result equals
            :func:`farthest_point_sample` from that start (the native backend, else
            ``fpsample.fps_sampling``, else the torch path). ``None`` lets
            ``fpsample.bucket_fps_kdline_sampling`` (QuickFPS: ``docs/pointcloud.md``) choose the start:
            exact FPS from ``result[0]``, deterministic for a given cloud. (fpsample 1.0.2's bucket
            samplers do not honour their ``start_idx``, hence this split.)

    Returns:
        int64 array (npoint,), distinct indices in selection order, computed on float32 xyz. Uses the
        path for an int start (start 0 when ``None``) when fpsample is not importable or repeats an
        index (fpsample 1.0.2 does once ``npoint`` exceeds the distinct positions).
    """
    xyz = np.asarray(points)
    if xyz.ndim != 2 or xyz.shape[1] < 3:
        raise ValueError(f"fps_numpy needs points of shape (N, 3+), got {xyz.shape}")
    N = xyz.shape[0]
    if not 1 <= npoint <= N:
        raise ValueError(f"fps_numpy needs 1 <= npoint <= N, got npoint={npoint}, N={N}")
    if not np.isfinite(xyz[:, :3]).all():
        raise ValueError("fps_numpy: points hold NaN or inf coordinates; clean the cloud first")
    if start is not None and not 0 <= start < N:
        raise ValueError(f"fps_numpy: start={start} is outside [0, {N})")
    fpsample = optional_module("fpsample")
    xyz = np.ascontiguousarray(xyz[:, :3], dtype=np.float32)
    cloud = torch.from_numpy(xyz)[None]
    if fpsample is not None and (start is None or not ops_native.supports(cloud)):
        if start is None and N >= 2:
            idx = fpsample.bucket_fps_kdline_sampling(xyz, npoint, min(7, int(np.log2(N))), start_idx=0)
        else:
            idx = fpsample.fps_sampling(xyz, npoint, start_idx=int(start or 0))
        if len(np.unique(idx)) == npoint:
            return idx.astype(np.int64)
    return farthest_point_sample(cloud, npoint, torch.tensor([start or 0]))[0].numpy()


def query_chunks(query: Tensor, num_points: int) -> Tuple[Tensor, ...]:
    """Split (B, M, 3) queries along M so each block has <= PAIRWISE_BUDGET pairs."""
    return query.split(max(1, PAIRWISE_BUDGET // max(1, query.shape[0] * num_points)), dim=1)


def pairwise_dist2(query: Tensor, points: Tensor) -> Tensor:
    """Squared distances (B, M, N): ``((dx * dx) + (dy * dy)) + (dz * dz)``, ``dx = q_x - p_x``.

    One elementwise kernel per operation (no fused multiply-add), so each entry is rounded exactly as
    the native backend rounds it; accurate far from the origin (no ``|q|^2 + |p|^2 - 2 q.p`` cancellation).
    """
    d2: Optional[Tensor] = None
    for axis in range(3):
        diff = query[..., axis].unsqueeze(2) - points[..., axis].unsqueeze(1)
        diff = diff.mul_(diff)
        d2 = diff if d2 is None else d2.add_(diff)
    return d2


def neighbour_dist2(query: Tensor, neighbours: Tensor) -> Tensor:
    """query (B, M, 3), neighbours (B, M, k, 3) -> (B, M, k) squared distances, rounded as in
    :func:`pairwise_dist2`; differentiable w.r.t. both."""
    d2: Optional[Tensor] = None
    for axis in range(3):
        diff = query[..., axis].unsqueeze(2) - neighbours[..., axis]
        d2 = diff * diff if d2 is None else d2 + diff * diff
    return d2


def knn(query: Tensor, points: Tensor, k: int, backend: str = "auto") -> Tuple[Tensor, Tensor]:
    """The ``k`` nearest ``points`` of every query, ascending by ``(d2, index)``.

    Args:
        query: (B, M, 3); points: (B, N, 3); ``1 <= k <= N``.
        backend: ``"torch"``, ``"native"``, ``"pytorch3d"`` (``knn_points``) or ``"auto"``.

    Returns:
        ``dist2`` (B, M, k) squared Euclidean distances ``|q - p|^2`` (:func:`pairwise_dist2`),
        ascending (differentiable w.r.t. both inputs), and ``idx`` LongTensor (B, M, k). Equal
        distances are ordered by index (the lower first), so the torch and native backends give the
        same indices; pytorch3d's tie order is its own.
    """
    check_xyz(query, "query")
    check_xyz(points, "points")
    check_same_batch(query, points)
    N = points.shape[1]
    if not 1 <= k <= N:
        raise ValueError(f"knn needs 1 <= k <= N, got k={k}, N={N}")
    with torch.no_grad():
        chosen = resolve_backend(backend, query, points)
        if chosen == "native":
            idx = ops_native.knn(query, points, k)
        elif chosen == "pytorch3d":
            idx = optional_module("pytorch3d.ops").knn_points(query, points, K=k, return_sorted=True).idx
        else:
            idx = torch.cat([_knn_block(q, points, k) for q in query_chunks(query, N)], dim=1)
    dist2 = neighbour_dist2(query, gather_points(points, idx))
    if chosen == "pytorch3d":
        dist2, order = dist2.sort(dim=-1, stable=True)
        idx = idx.gather(-1, order)
    return dist2, idx


def _knn_block(query: Tensor, points: Tensor, k: int) -> Tensor:
    """The k smallest of each row of :func:`pairwise_dist2` by ``(d2, index)``: with ``t`` the k-th
    smallest value, every point below ``t`` and the lowest-index points equal to it, then sorted.
    (When no row has two points at ``t``, topk's set is already that set.)"""
    N = points.shape[1]
    d2 = pairwise_dist2(query, points)
    values, chosen = d2.topk(k, dim=-1, largest=False, sorted=False)
    kth = values.amax(dim=-1, keepdim=True)
    tie = d2 == kth
    if bool((tie.sum(dim=-1) > 1).any()):
        below = d2 < kth
        take = below | (tie & (tie.cumsum(dim=-1) <= k - below.sum(dim=-1, keepdim=True)))
        chosen = torch.where(take, torch.arange(N, device=points.device), N)
        chosen = chosen.topk(k, dim=-1, largest=False, sorted=False).values
    chosen = chosen.sort(dim=-1).values
    order = d2.gather(-1, chosen).sort(dim=-1, stable=True).indices
    return chosen.gather(-1, order)


def ball_query(query: Tensor, points: Tensor, radius: float, k: int, backend: str = "auto") -> Tensor:
    """PointNet++ ball query: up to ``k`` points with ``d2 < radius^2`` per query.

    Takes the first ``k`` points inside the ball in index order and pads the row
    with the first one found; a query with an empty ball gets its nearest point
    (the lowest index among equally near ones) in every slot. ``d2`` is :func:`pairwise_dist2` and
    ``radius^2`` is rounded to the input dtype, so every backend gives the same indices.

    Args:
        query: (B, M, 3); points: (B, N, 3); radius > 0; k >= 1 (may exceed N).
        backend: ``"torch"``, ``"native"`` or ``"auto"`` (native for CPU tensors when it builds).

    Returns:
        LongTensor (B, M, k) of point indices.
    """
    check_xyz(query, "query")
    check_xyz(points, "points")
    check_same_batch(query, points)
    if radius <= 0 or k < 1:
        raise ValueError(f"ball_query needs radius > 0 and k >= 1, got radius={radius}, k={k}")
    if backend == "pytorch3d":
        raise ValueError("ball_query has no pytorch3d backend (its ball_query returns other indices); "
                         "use 'torch', 'native' or 'auto'")
    r2 = float(torch.tensor(radius * radius, dtype=query.dtype))
    with torch.no_grad():
        if resolve_backend(backend, query, points) == "native":
            return ops_native.ball_query(query, points, r2, k)
        N = points.shape[1]
        arange = torch.arange(N, dtype=torch.int32, device=points.device)
        blocks = []
        for q in query_chunks(query, N):
            d2 = pairwise_dist2(q, points)
            order = torch.where(d2 < r2, arange, N)  # int32 halves the block's memory
            first = order.topk(min(k, N), dim=-1, largest=False, sorted=True).values.long()
            head = torch.where(first[..., :1] < N, first[..., :1], d2.argmin(dim=-1, keepdim=True))
            first = torch.where(first < N, first, head)
            blocks.append(torch.cat([first, head.expand(-1, -1, k - first.shape[-1])], dim=-1))
        return torch.cat(blocks, dim=1)


def gather_points(x: Tensor, idx: Tensor) -> Tensor:
    """Rows of ``x`` picked per cloud: ``out[b, ...] = x[b, idx[b, ...]]``.

    Args:
        x: (B, N, C); idx: LongTensor (B, ...) with values in [0, N).

    Returns:
        (B, ..., C), differentiable w.r.t. ``x``.
    """
    if x.dim() != 3 or idx.shape[0] != x.shape[0]:
        raise ValueError(f"gather_points needs x (B, N, C) and idx (B, ...), "
                         f"got {tuple(x.shape)} and {tuple(idx.shape)}")
    B, N, C = x.shape
    offset = torch.arange(B, device=idx.device).mul_(N).view(B, *[1] * (idx.dim() - 1))
    rows = (idx + offset).reshape(-1)  # one index_select of whole rows: about 2x a gather's speed on CPU
    return x.reshape(B * N, C).index_select(0, rows).reshape(*idx.shape, C)


def group(x: Tensor, idx: Tensor) -> Tensor:
    """Neighbourhoods of features: x (B, N, C), idx (B, M, k) -> (B, M, k, C)."""
    if idx.dim() != 3:
        raise ValueError(f"group needs idx of shape (B, M, k), got {tuple(idx.shape)}")
    return gather_points(x, idx)


def three_interpolate(known_xyz: Tensor, known_feat: Tensor, query_xyz: Tensor, k: int = 3) -> Tensor:
    """Inverse-distance interpolation of features (PointNet++ feature propagation).

    ``out[b, n] = sum_j w_j f[b, idx_j] / sum_j w_j`` with ``w_j = 1 / (d_j + 1e-8)``
    over the ``min(k, M)`` nearest known points, ``d_j`` the Euclidean distance.

    Args:
        known_xyz: (B, M, 3); known_feat: (B, M, C); query_xyz: (B, N, 3).

    Returns:
        (B, N, C), differentiable w.r.t. ``known_feat``.
    """
    if known_feat.shape[:2] != known_xyz.shape[:2]:
        raise ValueError(f"known_feat (B, M, C) must match known_xyz (B, M, 3), "
                         f"got {tuple(known_feat.shape)} and {tuple(known_xyz.shape)}")
    with torch.no_grad():
        dist2, idx = knn(query_xyz, known_xyz, min(k, known_xyz.shape[1]))
        weight = 1.0 / (dist2.sqrt() + 1e-8)
        weight = weight / weight.sum(dim=-1, keepdim=True)
    return (group(known_feat, idx) * weight.unsqueeze(-1).to(known_feat.dtype)).sum(dim=2)
