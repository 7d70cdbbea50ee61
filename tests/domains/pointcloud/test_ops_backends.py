"""The compiled CPU backend (``ops_native``) against the PyTorch reference and numpy loops: same indices,
ties and duplicates included, float32 and float64, batched; same gradients."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from alignkit.domains.pointcloud import ops, ops_native

pytestmark = pytest.mark.skipif(not ops_native.available(), reason="no C compiler: the native backend is off")
DTYPES = [torch.float32, torch.float64]


# ----------------------------------------------------------------------------- numpy references (input dtype)

def np_dist2(query: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(M, N) ``((dx*dx) + (dy*dy)) + (dz*dz)``, every operation rounded in the arrays' dtype."""
    d2 = None
    for a in range(3):
        diff = query[:, None, a] - points[None, :, a]
        d2 = diff * diff if d2 is None else d2 + diff * diff
    return d2


def np_fps(xyz: np.ndarray, npoint: int, start: int) -> np.ndarray:
    nearest = np.full(len(xyz), np.inf, dtype=xyz.dtype)
    chosen = [start]
    for _ in range(npoint - 1):
        nearest = np.minimum(nearest, np_dist2(xyz[chosen[-1]][None], xyz)[0])
        nearest[chosen[-1]] = -1
        chosen.append(int(np.argmax(nearest)))
    return np.array(chosen)


def np_knn(query: np.ndarray, points: np.ndarray, k: int) -> np.ndarray:
    d2 = np_dist2(query, points)
    return np.stack([np.lexsort((np.arange(len(points)), row))[:k] for row in d2])


def np_ball_query(query: np.ndarray, points: np.ndarray, radius: float, k: int) -> np.ndarray:
    d2 = np_dist2(query, points)
    r2 = np.asarray(radius * radius, dtype=points.dtype)
    rows = []
    for row in d2:
        inside = list(np.flatnonzero(row < r2)[:k]) or [int(np.argmin(row))]
        rows.append(inside + [inside[0]] * (k - len(inside)))
    return np.array(rows)


def clouds(dtype: torch.dtype, B: int = 3, N: int = 300, seed: int = 0) -> torch.Tensor:
    """(B, N, 3): one random cloud, one on a half-integer lattice (duplicates and exactly equal
    distances everywhere), one flat lattice plane; more random clouds beyond B = 3."""
    g = torch.Generator().manual_seed(seed)
    out = torch.randn(B, N, 3, generator=g, dtype=dtype)
    out[1] = torch.randint(-3, 4, (N, 3), generator=g).to(dtype) / 2
    out[2, :, :2] = torch.randint(-5, 6, (N, 2), generator=g).to(dtype)
    out[2, :, 2] = 0.25
    return out


def queries(points: torch.Tensor, M: int) -> torch.Tensor:
    """(B, M, 3): half of them on points, a quarter random, a quarter far outside the cloud."""
    g = torch.Generator().manual_seed(1)
    B, dtype = points.shape[0], points.dtype
    far = torch.randn(B, M // 4, 3, generator=g, dtype=dtype) * 50
    near = torch.randn(B, M - M // 2 - M // 4, 3, generator=g, dtype=dtype)
    return torch.cat([points[:, : M // 2], near, far], dim=1)


# ----------------------------------------------------------------------------- FPS

@pytest.mark.parametrize("dtype", DTYPES)
def test_fps_native_equals_torch_and_numpy_with_ties(dtype):
    xyz = clouds(dtype, B=4)
    start = torch.tensor([0, 17, 299, 5])
    native = ops.farthest_point_sample(xyz, 120, start, backend="native")
    assert torch.equal(native, ops.farthest_point_sample(xyz, 120, start, backend="torch"))
    for b in range(4):
        np.testing.assert_array_equal(native[b].numpy(), np_fps(xyz[b].numpy(), 120, int(start[b])))
    # every index once, duplicates last, also when npoint = N
    full = ops.farthest_point_sample(xyz, 300, start, backend="native")
    assert torch.equal(full, ops.farthest_point_sample(xyz, 300, start, backend="torch"))
    assert (full.sort(dim=1).values == torch.arange(300)).all()


def test_fps_auto_is_native_on_cpu_and_fps_numpy_uses_it():
    xyz = clouds(torch.float32)[1:2]
    assert ops.resolve_backend("auto", xyz) == "native"
    np.testing.assert_array_equal(ops.fps_numpy(xyz[0].numpy(), 64, start=9),
                                  ops.farthest_point_sample(xyz, 64, torch.tensor([9]), backend="torch")[0].numpy())


# ----------------------------------------------------------------------------- kNN

@pytest.mark.parametrize("dtype", DTYPES)
def test_knn_native_grid_and_scan_equal_torch_and_numpy(dtype):
    points = clouds(dtype)
    query = queries(points, 40)
    for k in (1, 7, 300):
        d_t, i_t = ops.knn(query, points, k, backend="torch")
        d_n, i_n = ops.knn(query, points, k, backend="native")
        assert torch.equal(i_n, i_t) and torch.equal(d_n, d_t)
        assert torch.equal(ops_native.knn(query, points, k, grid=True), i_t)
        assert torch.equal(ops_native.knn(query, points, k, grid=False), i_t)
        for b in range(3):
            np.testing.assert_array_equal(i_t[b].numpy(), np_knn(query[b].numpy(), points[b].numpy(), k))


@pytest.mark.parametrize("shape", ["point", "line", "plane"])
def test_knn_grid_on_degenerate_clouds(shape):
    g = torch.Generator().manual_seed(2)
    points = torch.zeros(2, 400, 3)
    if shape != "point":
        points[..., 0] = torch.randint(0, 9, (2, 400), generator=g).float()
    if shape == "plane":
        points[..., 1] = torch.rand(2, 400, generator=g)
    query = queries(points, 32)
    grid = ops_native.knn(query, points, 12, grid=True)
    assert torch.equal(grid, ops.knn(query, points, 12, backend="torch")[1])
    assert torch.equal(grid, ops_native.knn(query, points, 12, grid=False))


def test_knn_gradients_equal_across_backends_and_the_former_formula():
    points = clouds(torch.float64)
    query = queries(points, 24)
    grads = []
    for backend in ("torch", "native"):
        q, p = query.clone().requires_grad_(), points.clone().requires_grad_()
        dist2, idx = ops.knn(q, p, 5, backend=backend)
        (dist2 * torch.linspace(0.5, 2, 5, dtype=dist2.dtype)).sum().backward()
        grads.append((q.grad, p.grad))
        # the former ``(gather(points) - query).square().sum(-1)``: the same values and gradients
        q2, p2 = query.clone().requires_grad_(), points.clone().requires_grad_()
        former = (ops.gather_points(p2, idx) - q2.unsqueeze(2)).square().sum(-1)
        (former * torch.linspace(0.5, 2, 5, dtype=former.dtype)).sum().backward()
        torch.testing.assert_close(dist2, former)
        torch.testing.assert_close(q.grad, q2.grad)
        torch.testing.assert_close(p.grad, p2.grad)
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])


# ----------------------------------------------------------------------------- ball query

@pytest.mark.parametrize("dtype", DTYPES)
def test_ball_query_native_equals_torch_and_numpy(dtype):
    points = clouds(dtype)
    query = queries(points, 40)
    for radius, k in [(0.3, 8), (1.0, 16), (1.5, 400), (1e-3, 4)]:  # exact lattice distances, k > N, empty balls
        native = ops.ball_query(query, points, radius, k, backend="native")
        assert torch.equal(native, ops.ball_query(query, points, radius, k, backend="torch"))
        for b in range(3):
            np.testing.assert_array_equal(native[b].numpy(),
                                          np_ball_query(query[b].numpy(), points[b].numpy(), radius, k))


def test_native_threads_give_the_same_indices():
    points = clouds(torch.float32, B=5, N=600)
    query = queries(points, 64)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = [ops_native.fps(points, 50, torch.zeros(5, dtype=torch.long)), ops_native.knn(query, points, 9),
               ops_native.ball_query(query, points, 0.25, 9)]
        torch.set_num_threads(3)
        three = [ops_native.fps(points, 50, torch.zeros(5, dtype=torch.long)), ops_native.knn(query, points, 9),
                 ops_native.ball_query(query, points, 0.25, 9)]
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, b) for a, b in zip(one, three))


# ----------------------------------------------------------------------------- selection and fallbacks

def test_backend_errors_and_fallback_without_compiler(monkeypatch):
    half = torch.rand(1, 10, 3).half()
    with pytest.raises(ValueError, match="native.*float32/float64"):
        ops.knn(half, half, 2, backend="native")
    with pytest.raises(ValueError, match="no pytorch3d backend"):
        ops.ball_query(half.float(), half.float(), 0.1, 2, backend="pytorch3d")
    monkeypatch.setattr(ops_native, "available", lambda: False)
    xyz = clouds(torch.float32)[1:2]
    assert ops.resolve_backend("auto", xyz) in ("torch", "pytorch3d")
    with pytest.raises(ValueError, match="C compiler"):
        ops.farthest_point_sample(xyz, 4, backend="native")


def test_library_builds_into_the_cache_directory(monkeypatch, tmp_path):
    monkeypatch.setenv("ALIGNKIT_NATIVE_CACHE", str(tmp_path / "cache"))
    ops_native.library.cache_clear()
    try:
        assert ops_native.library() is not None
        assert len(list((tmp_path / "cache").glob("pointops-*.so"))) == 1
    finally:
        ops_native.library.cache_clear()


def test_gather_points_equals_the_former_gather_with_gradients():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 20, 7, generator=g)[..., 1:5]  # non-contiguous, as points[..., :3] is
    idx = torch.randint(0, 20, (3, 6, 4), generator=g)
    weight = torch.randn(3, 6, 4, 4, generator=g)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    new = ops.gather_points(x1, idx)
    former = x2.gather(1, idx.reshape(3, -1, 1).expand(-1, -1, 4)).reshape(3, 6, 4, 4)
    assert torch.equal(new, former)
    (new * weight).sum().backward()
    (former * weight).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=0, atol=1e-6)
