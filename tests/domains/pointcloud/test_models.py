"""Point towers: shapes, permutation invariance, gradients, and learning a toy task."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from alignkit.core.registry import ENCODERS, ConfigError
from alignkit.domains.pointcloud.models import PointBERT, PointNet2SSG

# tiny configurations; nsamples >= the points of each level so a ball holds every neighbour
TINY = {
    "pointnet2-ssg": dict(npoints=(32, 8), radii=(0.4, 0.8), nsamples=(128, 32), mlps=((16, 16), (16, 32)),
                          global_mlp=(32,), fp_mlps=((32,), (32,), (16,))),
    "pointbert": dict(num_groups=16, group_size=16, embed_dim=32, depth=2, num_heads=2, patch_mlp1=(16, 16),
                      patch_mlp2=(32, 32), dense_mlp=(16,)),
}
NAMES = list(TINY)


def cloud(batch: int, n: int = 128, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, n, 3, generator=g) * 2 - 1


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("in_features", [0, 3])
def test_shapes_of_all_outputs(name, in_features):
    torch.manual_seed(0)
    model = ENCODERS.build(name, in_features=in_features, **TINY[name])
    points = torch.cat([cloud(2), torch.randn(2, 128, in_features)], dim=-1)
    out = model.features(points, dense=True)
    groups = 8 if name == "pointnet2-ssg" else 16
    assert model(points).shape == (2, model.output_dim)
    assert model.forward_tokens(points).shape == (2, groups, model.token_dim)
    assert out.token_xyz.shape == (2, groups, 3)
    assert model.forward_dense(points).shape == (2, 128, model.dense_dim)
    assert model.features(points).dense is None
    # token centres are input points
    assert all(torch.isclose(out.token_xyz[0, g], points[0, :, :3]).all(-1).any() for g in range(groups))


def test_paper_size_dims():
    assert PointNet2SSG(npoints=(512, 128), radii=(0.2, 0.4), nsamples=(32, 64),
                        mlps=((64, 64, 128), (128, 128, 256)), global_mlp=(256, 512, 1024),
                        fp_mlps=((256, 256), (256, 128), (128, 128, 128))).output_dim == 1024
    bert = PointBERT(embed_dim=384, depth=1, num_heads=6, mlp_ratio=4.0, patch_mlp1=(128, 256), patch_mlp2=(512, 256))
    assert (bert.output_dim, bert.token_dim) == (768, 384)


@pytest.mark.parametrize("name", NAMES)
def test_features_are_used(name):
    torch.manual_seed(1)
    model = ENCODERS.build(name, in_features=2, **TINY[name]).eval()
    points = torch.cat([cloud(1), torch.zeros(1, 128, 2)], dim=-1)
    other = points.clone()
    other[..., 3:] = 1.0
    with torch.no_grad():
        assert not torch.allclose(model(points), model(other))


@pytest.mark.parametrize("name", NAMES)
def test_permutation_invariance_with_fixed_first_point(name):
    """FPS starts at point 0; with point 0 kept first, shuffling the rest changes nothing
    (ball queries hold every neighbour, kNN patches are sets, pooling is max)."""
    torch.manual_seed(2)
    model = ENCODERS.build(name, **TINY[name]).eval()
    points = cloud(2)
    perm = torch.cat([torch.zeros(1, dtype=torch.long), 1 + torch.randperm(127)])
    shuffled = points[:, perm]
    with torch.no_grad():
        a, b = model.features(points, dense=True), model.features(shuffled, dense=True)
    torch.testing.assert_close(b.embedding, a.embedding, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b.tokens, a.tokens, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b.dense, a.dense[:, perm], rtol=1e-5, atol=1e-5)  # equivariant per point
    with torch.no_grad():  # a different first point gives different centres: the test is not vacuous
        assert not torch.allclose(model(points[:, perm.flip(0)]), a.embedding, atol=1e-3)


@pytest.mark.parametrize("name", NAMES)
def test_gradient_reaches_every_parameter(name):
    torch.manual_seed(3)
    model = ENCODERS.build(name, in_features=1, **TINY[name])
    out = model.features(torch.cat([cloud(3), torch.randn(3, 128, 1)], dim=-1), dense=True)
    (out.embedding.pow(2).mean() + out.dense.pow(2).mean()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def sphere_or_cube(n_per_class: int, points: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Surface samples of random-size spheres (label 0) and cubes (label 1), (2n, points, 3)."""
    g = torch.Generator().manual_seed(seed)
    sphere = torch.randn(n_per_class, points, 3, generator=g)
    sphere = sphere / sphere.norm(dim=-1, keepdim=True)
    cube = torch.rand(n_per_class, points, 3, generator=g) * 2 - 1
    face = torch.randint(0, 3, (n_per_class, points), generator=g)
    sign = torch.randint(0, 2, (n_per_class, points), generator=g).float() * 2 - 1
    cube.scatter_(2, face.unsqueeze(-1), sign.unsqueeze(-1))
    scale = 0.5 + 0.5 * torch.rand(2 * n_per_class, 1, 1, generator=g)
    return torch.cat([sphere, cube / math.sqrt(3)]) * scale, torch.arange(2).repeat_interleave(n_per_class)


@pytest.mark.parametrize("name", NAMES)
def test_tiny_model_learns_sphere_vs_cube(name):
    torch.manual_seed(4)
    x, y = sphere_or_cube(8, 128, seed=0)
    encoder = ENCODERS.build(name, **TINY[name])
    model = nn.Sequential(encoder, nn.Linear(encoder.output_dim, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(40):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    assert loss.item() < 0.1
    with torch.no_grad():  # train mode: BatchNorm's running statistics lag after 40 fast steps
        assert (model(x).argmax(-1) == y).all()


def test_config_and_input_errors():
    with pytest.raises(ConfigError, match="equal length"):
        PointNet2SSG(npoints=(32, 8), radii=(0.2,))
    with pytest.raises(ConfigError, match="fp_mlps"):
        PointNet2SSG(fp_mlps=((8,),))
    with pytest.raises(ConfigError, match="divisible"):
        PointBERT(embed_dim=30, num_heads=4)
    with pytest.raises(ConfigError, match="unknown parameter 'num_group'"):
        ENCODERS.build("pointbert", num_group=8)
    with pytest.raises(ValueError, match=r"in_features=0.*\(B, N, 3\).*got \(2, 128, 6\)"):
        PointNet2SSG(**TINY["pointnet2-ssg"])(torch.rand(2, 128, 6))
    with pytest.raises(ValueError, match="at least 16 points"):
        PointBERT(**TINY["pointbert"])(torch.rand(1, 10, 3))
