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
import torch.nn.functional as F
from torch import Tensor, nn

from alignkit.core.params import NON_NEGATIVE, POSITIVE, OneOf, Range, check_choice
from alignkit.core.registry import ENCODERS, ConfigError
from alignkit.domains.pointcloud.models.pointnet2 import (Count, PointEncoder, PointFeatures, PointwiseMLP, Widths,
                                                          with_features)
from alignkit.domains.pointcloud.ops import farthest_point_sample, gather_points, group, knn, three_interpolate


STYLES = ("alignkit", "ulip")
"""Layouts of :class:`PointBERT`: alignkit's own, or ULIP's ``PointTransformer`` (weights load 1:1)."""


class PatchEmbedding(nn.Module):
    """Mini-PointNet of one patch, (B, G, K, 3 + F) -> (B, G, out_dim).

    ``h = MLP1(x)`` per point; ``e = max_K MLP2([h, max_K h])`` (the last layer of each MLP is linear);
    with ``global_first`` ``e = max_K MLP2([max_K h, h])`` and ``bias`` gives every layer a bias (ULIP's
    ``Encoder``: ``first_conv`` = MLP1, ``second_conv`` = MLP2, 1x1 convs).
    """

    def __init__(self, in_dim: int, mlp1: Sequence[int], mlp2: Sequence[int], bias: bool = False,
                 global_first: bool = False):
        super().__init__()
        self.first = PointwiseMLP(in_dim, mlp1, last_linear=True, bias=bias)
        self.second = PointwiseMLP(2 * self.first.out_dim, mlp2, last_linear=True, bias=bias)
        self.out_dim = self.second.out_dim
        self.global_first = global_first

    def forward(self, patches: Tensor) -> Tensor:
        h = self.first(patches)
        pooled = h.max(dim=2, keepdim=True).values.expand_as(h)
        h = torch.cat([pooled, h] if self.global_first else [h, pooled], dim=-1)
        return self.second(h).max(dim=2).values


class ULIPAttention(nn.Module):
    """Multi-head self-attention of ULIP's Point-BERT: ``softmax(q k^T / sqrt(d_head)) v``, ``q, k, v = qkv(x)``
    (no bias), then ``proj``; (B, T, D) -> (B, T, D)."""

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        self.num_heads, self.dropout = num_heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(x).reshape(B, T, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, T, D)))


class ULIPMlp(nn.Module):
    """``fc2(GELU(fc1 x))`` with dropout after the activation and after ``fc2``."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class ULIPBlock(nn.Module):
    """ULIP's pre-norm transformer block: ``x += attn(norm1 x)``; ``x += mlp(norm2 x)`` (names as ULIP's)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, dropout: float = 0.0):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = ULIPAttention(dim, num_heads, dropout)
        self.mlp = ULIPMlp(dim, int(dim * mlp_ratio), dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


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

    ``style="ulip"`` is ULIP's ``PointTransformer`` (``models/pointbert/point_encoder.py``) layer for layer, so
    its checkpoints load 1:1 (``alignkit import-weights ulip-pointbert``): patch MLPs with biases and
    ``[max_K h, h]``, blocks :class:`ULIPBlock` (qkv without bias). ULIP-2's xyz+rgb model is
    ``in_features=3, depth=18`` with ``feature_fill=0.4`` for uncoloured clouds; ``dense_mlp=()`` builds no dense
    head. Patches are FPS from point 0 (as ULIP's CUDA ``furthest_point_sample``) and kNN; their order inside a
    patch does not matter (max pooling).
    """

    def __init__(self, in_features: Annotated[int, NON_NEGATIVE] = 0, num_groups: Count = 32, group_size: Count = 32,
                 embed_dim: Count = 128, depth: Count = 4, num_heads: Count = 4,
                 mlp_ratio: Annotated[float, POSITIVE] = 2.0, dropout: Annotated[float, Range(ge=0, lt=1)] = 0.0,
                 patch_mlp1: Widths = (64, 128), patch_mlp2: Widths = (256, 128), dense_mlp: Widths = (128, 128),
                 style: Annotated[str, OneOf(STYLES)] = "alignkit", feature_fill: Optional[float] = None):
        super().__init__()
        check_choice(style, STYLES, "pointbert style")
        if embed_dim % num_heads:
            raise ConfigError(f"pointbert embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        if min(num_groups, group_size, depth) < 1:
            raise ConfigError(f"pointbert needs num_groups, group_size and depth >= 1; "
                              f"got {num_groups}, {group_size}, {depth}")
        self.in_features, self.feature_fill, self.style = in_features, feature_fill, style
        self.num_groups, self.group_size = num_groups, group_size
        ulip = style == "ulip"
        self.patch_embed = PatchEmbedding(3 + in_features, patch_mlp1, patch_mlp2, bias=ulip, global_first=ulip)
        self.to_token = nn.Linear(self.patch_embed.out_dim, embed_dim)
        self.pos_embed = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, embed_dim))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.cls_pos = nn.Parameter(torch.zeros(1, 1, embed_dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.cls_pos, std=0.02)
        self.blocks = nn.ModuleList(
            ULIPBlock(embed_dim, num_heads, mlp_ratio, dropout) if ulip else
            nn.TransformerEncoderLayer(embed_dim, num_heads, int(embed_dim * mlp_ratio), dropout, activation="gelu",
                                       batch_first=True, norm_first=True)
            for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim)
        self.dense_head = PointwiseMLP(embed_dim + 3 + in_features, dense_mlp) if dense_mlp else None
        self.output_dim = 2 * embed_dim
        self.token_dim = embed_dim
        self.dense_dim = self.dense_head.out_dim if self.dense_head is not None else 0

    def fps_input(self, xyz: Tensor) -> Tensor:
        """The cloud FPS sees. ``style="ulip"``: ULIP's CUDA kernel (pointnet2_ops) never picks a point with
        ``|p|^2 <= 1e-3`` after point 0; moving those points onto point 0 (distance 0 to the first centre) gives
        the same centres."""
        if self.style != "ulip":
            return xyz
        near = xyz.square().sum(dim=-1, keepdim=True) <= 1e-3
        near[:, 0] = False
        return torch.where(near, xyz[:, :1], xyz)

    def patches(self, xyz: Tensor, feats: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        """Centres (B, G, 3) and patches (B, G, K, 3 + F) of relative xyz and features."""
        N = xyz.shape[1]
        if N < max(self.num_groups, self.group_size):
            raise ValueError(f"pointbert (num_groups={self.num_groups}, group_size={self.group_size}) needs at "
                             f"least {max(self.num_groups, self.group_size)} points per cloud; got {N}")
        centres = gather_points(xyz, farthest_point_sample(self.fps_input(xyz), self.num_groups))
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
        if dense and self.dense_head is not None:
            out.dense = self.dense_head(torch.cat([three_interpolate(centres, tokens, xyz),
                                                   with_features(xyz, feats)], dim=-1))
        return out
