"""Point ops against brute-force per-sample references written with numpy loops."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from alignkit.domains.pointcloud import ops

HAS_PYTORCH3D = importlib.util.find_spec("pytorch3d") is not None
HAS_FPSAMPLE = importlib.util.find_spec("fpsample") is not None


# ----------------------------------------------------------------------------- references

def ref_fps(xyz: np.ndarray, npoint: int, start: int = 0) -> np.ndarray:
    """Textbook FPS of one cloud; ties -> first index; selected points are never re-picked."""
    nearest = np.full(len(xyz), np.inf)
    chosen = [start]
    for _ in range(npoint - 1):
        nearest = np.minimum(nearest, ((xyz - xyz[chosen[-1]]) ** 2).sum(1))
        nearest[chosen] = -1.0
        chosen.append(int(np.argmax(nearest)))
    return np.array(chosen)


def ref_dist2(query: np.ndarray, points: np.ndarray) -> np.ndarray:
    return ((query[:, None, :].astype(np.float64) - points[None, :, :]) ** 2).sum(-1)


def ref_ball_query(query: np.ndarray, points: np.ndarray, radius: float, k: int) -> np.ndarray:
    out = np.zeros((len(query), k), dtype=np.int64)
    d2 = ref_dist2(query, points)
    for m in range(len(query)):
        inside = [n for n in range(len(points)) if d2[m, n] < radius ** 2][:k]
        if not inside:
            inside = [int(np.argmin(d2[m]))]
        out[m] = inside + [inside[0]] * (k - len(inside))
    return out


def ref_three_interpolate(known_xyz, known_feat, query_xyz, k=3):
    out = np.zeros((len(query_xyz), known_feat.shape[1]))
    for n, q in enumerate(query_xyz):
        d = np.sqrt(((known_xyz - q) ** 2).sum(1))
        near = np.argsort(d, kind="stable")[:k]
        w = 1.0 / (d[near] + 1e-8)
        out[n] = (w[:, None] * known_feat[near]).sum(0) / w.sum()
    return out


def grid_with_duplicates() -> torch.Tensor:
    """(1, 40, 3): integer grid points, each present twice (exact ties everywhere)."""
    g = torch.stack(torch.meshgrid(torch.arange(5.0), torch.arange(4.0), torch.zeros(1), indexing="ij"), -1)
    g = g.reshape(-1, 3)
    return torch.cat([g, g])[None]


# ----------------------------------------------------------------------------- FPS

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fps_matches_reference_per_cloud(dtype):
    torch.manual_seed(0)
    xyz = torch.randn(3, 200, 3, dtype=dtype)
    start = torch.tensor([0, 17, 199])
    idx = ops.farthest_point_sample(xyz, 32, start, backend="torch")
    assert idx.shape == (3, 32) and idx.dtype == torch.long
    for b in range(3):
        np.testing.assert_array_equal(idx[b].numpy(), ref_fps(xyz[b].double().numpy(), 32, int(start[b])))


def test_fps_default_start_is_zero_and_batch_items_are_independent():
    torch.manual_seed(1)
    xyz = torch.randn(2, 64, 3)
    both = ops.farthest_point_sample(xyz, 16, backend="torch")
    assert both[:, 0].tolist() == [0, 0]
    single = ops.farthest_point_sample(xyz[1:], 16, backend="torch")
    assert torch.equal(both[1:], single)


def test_fps_ties_and_duplicates_first_index_and_distinct():
    xyz = grid_with_duplicates()
    idx = ops.farthest_point_sample(xyz, 40, backend="torch")[0]
    np.testing.assert_array_equal(idx.numpy(), ref_fps(xyz[0].numpy(), 40))
    assert len(set(idx.tolist())) == 40
    # the 20 distinct positions are all covered before any duplicate
    assert len({tuple(p) for p in xyz[0, idx[:20]].tolist()}) == 20


def test_fps_rejects_bad_input():
    with pytest.raises(ValueError, match="npoint"):
        ops.farthest_point_sample(torch.rand(1, 5, 3), 6)
    with pytest.raises(ValueError, match="NaN or inf.*\\[1\\]"):
        ops.farthest_point_sample(torch.tensor([[[0.0, 0, 0]], [[float("nan"), 0, 0]]]), 1)
    with pytest.raises(ValueError, match="NaN or inf.*\\[0\\]"):
        ops.farthest_point_sample(torch.tensor([[[0.0, float("-inf"), 0]], [[1.0, 0, 0]]]), 1)
    huge = torch.full((2, 4, 3), 3e38)                       # finite, but their sum overflows: not rejected
    assert ops.farthest_point_sample(huge, 2).shape == (2, 2)
    with pytest.raises(ValueError, match="start"):
        ops.farthest_point_sample(torch.rand(1, 5, 3), 2, start=torch.tensor([5]))
    with pytest.raises(ValueError, match="backend"):
        ops.farthest_point_sample(torch.rand(1, 5, 3), 2, backend="cuda")


@pytest.mark.skipif(HAS_PYTORCH3D, reason="pytorch3d is importable")
def test_auto_backend_is_torch_without_pytorch3d():
    assert ops.resolve_backend("auto") == "torch"
    with pytest.raises(ValueError, match="pytorch3d is not importable"):
        ops.resolve_backend("pytorch3d")


@pytest.mark.skipif(not HAS_PYTORCH3D, reason="pytorch3d is not importable")
def test_pytorch3d_backend_agrees_with_torch():
    torch.manual_seed(2)
    xyz = torch.randn(3, 300, 3)
    start = torch.tensor([0, 5, 299])
    assert torch.equal(ops.farthest_point_sample(xyz, 50, start, backend="pytorch3d"),
                       ops.farthest_point_sample(xyz, 50, start, backend="torch"))
    d_t, i_t = ops.knn(xyz[:, :40], xyz, 8, backend="torch")
    d_p, i_p = ops.knn(xyz[:, :40], xyz, 8, backend="pytorch3d")
    torch.testing.assert_close(d_p, d_t)
    assert torch.equal(i_p, i_t)


@pytest.mark.skipif(not HAS_FPSAMPLE, reason="fpsample is not importable")
@pytest.mark.parametrize("start", [0, 123])
def test_fps_numpy_with_start_equals_torch_path(start):
    rng = np.random.default_rng(3)
    pts = rng.standard_normal((2000, 6)).astype(np.float32)  # xyz + normals
    idx = ops.fps_numpy(pts, 256, start=start)
    assert idx.dtype == np.int64
    torch_idx = ops.farthest_point_sample(torch.from_numpy(pts[None, :, :3]), 256, torch.tensor([start]))
    np.testing.assert_array_equal(idx, torch_idx[0].numpy())


@pytest.mark.skipif(not HAS_FPSAMPLE, reason="fpsample is not importable")
def test_fps_numpy_quickfps_is_exact_fps_from_its_own_start():
    rng = np.random.default_rng(4)
    pts = rng.standard_normal((4096, 3)).astype(np.float32)
    idx = ops.fps_numpy(pts, 512, start=None)
    assert len(set(idx.tolist())) == 512
    np.testing.assert_array_equal(idx, ref_fps(pts.astype(np.float64), 512, int(idx[0])))
    np.testing.assert_array_equal(idx, ops.fps_numpy(pts, 512, start=None))  # deterministic


@pytest.mark.parametrize("start", [0, None])
def test_fps_numpy_with_duplicate_points_returns_distinct_indices(start):
    xyz = grid_with_duplicates()[0].numpy()
    idx = ops.fps_numpy(xyz, 40, start=start)
    assert sorted(idx.tolist()) == list(range(40))
    assert len({tuple(p) for p in xyz[idx[:20]].tolist()}) == 20


def test_fps_numpy_falls_back_to_torch_without_fpsample(monkeypatch):
    real = ops.optional_module
    monkeypatch.setattr(ops, "optional_module", lambda name: None if name == "fpsample" else real(name))
    rng = np.random.default_rng(5)
    pts = rng.standard_normal((300, 3))
    np.testing.assert_array_equal(ops.fps_numpy(pts, 40, start=7), ref_fps(pts, 40, 7))
    np.testing.assert_array_equal(ops.fps_numpy(pts, 40, start=None), ref_fps(pts, 40, 0))


def test_fps_numpy_rejects_bad_input():
    with pytest.raises(ValueError, match="shape"):
        ops.fps_numpy(np.zeros((5, 2)), 2)
    with pytest.raises(ValueError, match="NaN"):
        ops.fps_numpy(np.array([[0.0, np.inf, 0.0], [0, 0, 0]]), 1)
    with pytest.raises(ValueError, match="npoint"):
        ops.fps_numpy(np.zeros((5, 3)), 6)


# ----------------------------------------------------------------------------- kNN

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_knn_matches_reference(dtype):
    torch.manual_seed(6)
    query, points = torch.randn(2, 30, 3, dtype=dtype), torch.randn(2, 100, 3, dtype=dtype)
    dist2, idx = ops.knn(query, points, 7)
    assert dist2.shape == idx.shape == (2, 30, 7) and dist2.dtype == dtype
    for b in range(2):
        ref = ref_dist2(query[b].numpy(), points[b].numpy())
        np.testing.assert_array_equal(idx[b].numpy(), np.argsort(ref, axis=1, kind="stable")[:, :7])
        np.testing.assert_allclose(dist2[b].numpy(), np.sort(ref, axis=1)[:, :7], rtol=1e-5, atol=1e-6)


def test_knn_with_ties_returns_a_correct_neighbour_set():
    xyz = grid_with_duplicates()
    dist2, idx = ops.knn(xyz, xyz, 5)
    ref = ref_dist2(xyz[0].numpy(), xyz[0].numpy())
    # distances are exactly the 5 smallest (ties included) and match the returned indices
    np.testing.assert_array_equal(dist2[0].numpy(), np.sort(ref, axis=1)[:, :5])
    np.testing.assert_array_equal(np.take_along_axis(ref, idx[0].numpy(), 1), dist2[0].numpy())
    assert all(len(set(row)) == 5 for row in idx[0].tolist())
    assert (dist2[0, :, :2] == 0).all()  # each point and its duplicate come first


def test_knn_chunked_equals_unchunked_and_k_equal_n(monkeypatch):
    torch.manual_seed(7)
    query, points = torch.randn(3, 50, 3, dtype=torch.float64), torch.randn(3, 20, 3, dtype=torch.float64)
    whole = ops.knn(query, points, 20)
    monkeypatch.setattr(ops, "PAIRWISE_BUDGET", 100)  # 1 query per block
    chunked = ops.knn(query, points, 20)
    assert torch.equal(whole[1], chunked[1]) and torch.equal(whole[0], chunked[0])
    assert (whole[1].sort(-1).values == torch.arange(20)).all()
    with pytest.raises(ValueError, match="k <= N"):
        ops.knn(query, points, 21)


def test_knn_far_from_origin_float64_and_gradients():
    torch.manual_seed(8)
    points = (torch.rand(1, 200, 3, dtype=torch.float64) + 1e6).requires_grad_()
    query = points[:, :10].detach().clone() + 1e-3
    dist2, idx = ops.knn(query, points, 4)
    ref = ref_dist2(query[0].numpy(), points[0].detach().numpy())
    np.testing.assert_array_equal(idx[0].numpy(), np.argsort(ref, axis=1, kind="stable")[:, :4])
    dist2.sum().backward()
    assert points.grad is not None and points.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- ball query

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ball_query_matches_reference(dtype):
    torch.manual_seed(9)
    points = torch.rand(2, 120, 3, dtype=dtype)
    query = torch.cat([points[:, :20], torch.full((2, 2, 3), 5.0, dtype=dtype)], dim=1)  # 2 far queries
    idx = ops.ball_query(query, points, radius=0.2, k=16)
    assert idx.shape == (2, 22, 16)
    for b in range(2):
        np.testing.assert_array_equal(idx[b].numpy(), ref_ball_query(query[b].numpy(), points[b].numpy(), 0.2, 16))
    # far queries get their nearest point everywhere
    nearest = ref_dist2(query[0, 20:].numpy(), points[0].numpy()).argmin(1)
    assert (idx[0, 20:] == torch.from_numpy(nearest)[:, None]).all()


def test_ball_query_k_larger_than_ball_and_than_n_and_duplicates(monkeypatch):
    xyz = grid_with_duplicates()
    idx = ops.ball_query(xyz, xyz, radius=1.5, k=64)  # k > N = 40
    np.testing.assert_array_equal(idx[0].numpy(), ref_ball_query(xyz[0].numpy(), xyz[0].numpy(), 1.5, 64))
    # radius is strict: neighbours at exactly distance 1 are excluded with radius 1
    strict = ops.ball_query(xyz, xyz, radius=1.0, k=4)[0]
    assert strict[0].tolist() == [0, 20, 0, 0]
    monkeypatch.setattr(ops, "PAIRWISE_BUDGET", 50)
    assert torch.equal(ops.ball_query(xyz, xyz, radius=1.5, k=64), idx)


# ----------------------------------------------------------------------------- gather / group / interpolate

def test_gather_points_and_group_match_indexing_and_carry_gradients():
    torch.manual_seed(10)
    x = torch.randn(2, 10, 4, requires_grad=True)
    idx = torch.randint(0, 10, (2, 5, 3))
    out = ops.group(x, idx)
    assert out.shape == (2, 5, 3, 4)
    for b in range(2):
        torch.testing.assert_close(out[b], x[b][idx[b]])
    assert ops.gather_points(x, idx[:, :, 0]).shape == (2, 5, 4)
    out.sum().backward()
    counts = torch.stack([torch.bincount(idx[b].flatten(), minlength=10) for b in range(2)]).float()
    torch.testing.assert_close(x.grad, counts[..., None].expand(-1, -1, 4))
    with pytest.raises(ValueError, match="group needs idx"):
        ops.group(x, idx[:, :, 0])


def test_three_interpolate_matches_reference_and_reproduces_known_points():
    torch.manual_seed(11)
    known = torch.rand(2, 16, 3, dtype=torch.float64)
    feat = torch.randn(2, 16, 5, dtype=torch.float64, requires_grad=True)
    query = torch.rand(2, 40, 3, dtype=torch.float64)
    out = ops.three_interpolate(known, feat, query)
    for b in range(2):
        np.testing.assert_allclose(out[b].detach().numpy(),
                                   ref_three_interpolate(known[b].numpy(), feat[b].detach().numpy(), query[b].numpy()),
                                   rtol=1e-10)
    at_known = ops.three_interpolate(known, feat, known)
    torch.testing.assert_close(at_known, feat, rtol=1e-6, atol=1e-6)
    out.sum().backward()
    assert feat.grad.abs().sum() > 0
    # fewer known points than k: uses all of them
    two = ops.three_interpolate(known[:, :2], feat[:, :2], query)
    assert two.shape == (2, 40, 5)
