"""A Point-BERT-style transformer over point patches (one of ULIP's point backbones; ULIP-2's released
models use it).

Source: Yu et al., "Point-BERT: Pre-training 3D Point Cloud Transformers with Masked Point Modeling", CVPR 2022
(arXiv 2111.14819); reference code Julie-tang00/Point-BERT ``models/Point_BERT.py`` and ULIP's copy
salesforce/ULIP ``models/pointbert/point_encoder.py``.

Tokenizer: ``G`` centres by farthest point sampling, each with its ``K`` nearest points as a
patch; a mini-PointNet embeds every patch. A transformer encoder runs over ``[CLS, patches]``
with a positional MLP of the centres added before every block.
"""
from __future__ import annotations

from typing import Annotated, Optional, Sequence

import torch
from torch import Tensor, nn

from alignkit.core.params import NON_NEGATIVE, POSITIVE, Range
from alignkit.core.registry import ENCODERS, ConfigError
from alignkit.domains.pointcloud.models.pointnet2 import (Count, PointEncoder, PointFeatures, PointwiseMLP, Widths,
                                                          with_features)
from alignkit.domains.pointcloud.ops import farthest_point_sample, gather_points, group, knn, three_interpolate


class PatchEmbedding(nn.Module):
    """Mini-PointNet of one patch, (B, G, K, 3 + F) -> (B, G, out_dim).

    ``h = MLP1(x)`` per point; ``e = max_K MLP2([h, max_K h])`` (the last layer of each MLP is linear).
    """

    def __init__(self, in_dim: int, mlp1: Sequence[int], mlp2: Sequence[int]):
        super().__init__()
        self.first = PointwiseMLP(in_dim, mlp1, last_linear=True)
        self.second = PointwiseMLP(2 * self.first.out_dim, mlp2, last_linear=True)
        self.out_dim = self.second.out_dim

    def forward(self, patches: Tensor) -> Tensor:
        h = self.first(patches)
        h = torch.cat([h, h.max(dim=2, keepdim=True).values.expand_as(h)], dim=-1)
        return self.second(h).max(dim=2).values


@ENCODERS.register("pointbert")
class PointBERT(PointEncoder):
    """Point-BERT-style encoder.

    Patches: ``c_g`` = FPS(``num_groups``) of the xyz; patch ``g`` = the ``group_size`` nearest points
    ``p`` of ``c_g`` as ``[p - c_g, f_p]``; token ``t_g = W PatchEmbedding(patch_g)`` (``embed_dim``);
    position ``e_g = Linear-GELU-Linear(c_g)``. ``x = [cls, t]``, ``pos = [cls_pos, e]``; every block is
    ``x = TransformerEncoderLayer(x + pos)`` (pre-norm, GELU); then LayerNorm.
    ``forward`` = ``[x_cls, max_g x_g]`` (``output_dim = 2 * embed_dim``); ``forward_tokens`` =
    ``x_g`` (B, num_groups, embed_dim); ``forward_dense`` = ``MLP([three_interpolate(c, x_g -> p), p, f_p])``
    per input point (``dense_dim = dense_mlp[-1]``).

    Defaults are a CPU demo size (~0.7M parameters). The paper/ULIP size is ``embed_dim=384, depth=12,
    num_heads=6, mlp_ratio=4.0, group_size=32, patch_mlp1=(128, 256), patch_mlp2=(512, 256)`` with
    ``num_groups=64`` for 1024 points (Point-BERT) or ``num_groups=512`` for 8192 points (ULIP).
    """

    def __init__(self, in_features: Annotated[int, NON_NEGATIVE] = 0, num_groups: Count = 32, group_size: Count = 32,
                 embed_dim: Count = 128, depth: Count = 4, num_heads: Count = 4,
                 mlp_ratio: Annotated[float, POSITIVE] = 2.0, dropout: Annotated[float, Range(ge=0, lt=1)] = 0.0,
                 patch_mlp1: Widths = (64, 128), patch_mlp2: Widths = (256, 128), dense_mlp: Widths = (128, 128)):
        super().__init__()
        if embed_dim % num_heads:
            raise ConfigError(f"pointbert embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        if min(num_groups, group_size, depth) < 1:
            raise ConfigError(f"pointbert needs num_groups, group_size and depth >= 1; "
                              f"got {num_groups}, {group_size}, {depth}")
        self.in_features = in_features
        self.num_groups, self.group_size = num_groups, group_size
        self.patch_embed = PatchEmbedding(3 + in_features, patch_mlp1, patch_mlp2)
        self.to_token = nn.Linear(self.patch_embed.out_dim, embed_dim)
        self.pos_embed = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, embed_dim))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.cls_pos = nn.Parameter(torch.zeros(1, 1, embed_dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.cls_pos, std=0.02)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(embed_dim, num_heads, int(embed_dim * mlp_ratio), dropout, activation="gelu",
                                       batch_first=True, norm_first=True)
            for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim)
        self.dense_head = PointwiseMLP(embed_dim + 3 + in_features, dense_mlp)
        self.output_dim = 2 * embed_dim
        self.token_dim = embed_dim
        self.dense_dim = self.dense_head.out_dim

    def patches(self, xyz: Tensor, feats: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        """Centres (B, G, 3) and patches (B, G, K, 3 + F) of relative xyz and features."""
        N = xyz.shape[1]
        if N < max(self.num_groups, self.group_size):
            raise ValueError(f"pointbert (num_groups={self.num_groups}, group_size={self.group_size}) needs at "
                             f"least {max(self.num_groups, self.group_size)} points per cloud; got {N}")
        centres = gather_points(xyz, farthest_point_sample(xyz, self.num_groups))
        _, idx = knn(centres, xyz, self.group_size)
        rel = group(xyz, idx) - centres.unsqueeze(2)
        return centres, with_features(rel, None if feats is None else group(feats, idx))

    def features(self, points: Tensor, dense: bool = False) -> PointFeatures:
        xyz, feats = self.split(points)
        centres, patches = self.patches(xyz, feats)
        B = xyz.shape[0]
        x = torch.cat([self.cls_token.expand(B, -1, -1), self.to_token(self.patch_embed(patches))], dim=1)
        pos = torch.cat([self.cls_pos.expand(B, -1, -1), self.pos_embed(centres)], dim=1)
        for block in self.blocks:
            x = block(x + pos)
        x = self.norm(x)
        tokens = x[:, 1:]
        out = PointFeatures(embedding=torch.cat([x[:, 0], tokens.max(dim=1).values], dim=-1), tokens=tokens,
                            token_xyz=centres)
        if dense:
            out.dense = self.dense_head(torch.cat([three_interpolate(centres, tokens, xyz),
                                                   with_features(xyz, feats)], dim=-1))
        return out
