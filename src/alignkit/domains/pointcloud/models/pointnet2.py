"""PointNet building blocks and PointNet++ single-scale grouping (SSG).

Source: Qi et al., "PointNet++: Deep Hierarchical Feature Learning on Point Sets in a Metric Space",
NeurIPS 2017 (arXiv 1706.02413); reference code charlesq34/pointnet2 ``models/pointnet2_cls_ssg.py`` (classification)
and ``models/pointnet2_sem_seg.py`` (feature propagation); ULIP's PyTorch port is salesforce/ULIP
``models/pointnet2/pointnet2.py``.

Every point encoder here takes ``points`` (B, N, 3 + in_features): xyz first, then optional
per-point features (normals, colours). It computes a :class:`PointFeatures` once and offers the
tower interface on top: ``forward -> (B, output_dim)``, ``forward_tokens -> (B, M, token_dim)``,
``forward_dense -> (B, N, dense_dim)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from alignkit.core.params import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, Range
from alignkit.core.registry import ENCODERS, ConfigError
from alignkit.domains.pointcloud import ops_native
from alignkit.domains.pointcloud.models.grouped_norm import batch_norm_relu_max
from alignkit.domains.pointcloud.models.linear_norm import (gathered_linear_batch_norm_relu, linear_batch_norm_relu,
                                                            linear_batch_norm_relu_max, narrow_batch_norm_relu,
                                                            narrow_stem)
from alignkit.domains.pointcloud.models.rows_linear import NARROW, linear_rows
from alignkit.domains.pointcloud.ops import ball_query, farthest_point_sample, gather_points, group, three_interpolate

Count = Annotated[int, AT_LEAST_ONE]
Widths = Sequence[Count]
"""The layer widths of a :class:`PointwiseMLP` (a config parameter of the point encoders)."""


@dataclass
class PointFeatures:
    """Outputs of a point encoder for a batch of B clouds of N points.

    ``embedding`` (B, output_dim) global; ``tokens`` (B, M, token_dim) local features (PointNet++:
    the last set-abstraction level; Point-BERT: patch tokens) located at ``token_xyz`` (B, M, 3);
    ``dense`` (B, N, dense_dim) per-point features, or None when not requested.
    """

    embedding: Tensor
    tokens: Tensor
    token_xyz: Tensor
    dense: Optional[Tensor] = None


class PointwiseMLP(nn.Sequential):
    """Shared MLP over the last dim, (..., in_dim) -> (..., dims[-1]).

    Each layer is Linear (no bias; with ``bias`` a bias, as the 1x1 convs of ULIP's code) - BatchNorm - ReLU
    (layer ``i`` at indices ``3i, 3i+1, 3i+2``); with ``last_linear`` the last layer is a plain Linear with bias
    (a 1x1 conv in the PointNet papers).
    """

    def __init__(self, in_dim: int, dims: Sequence[int], last_linear: bool = False, bias: bool = False):
        layers: List[nn.Module] = []
        for i, width in enumerate(dims):
            if last_linear and i == len(dims) - 1:
                layers.append(nn.Linear(in_dim, int(width)))
            else:
                layers += [nn.Linear(in_dim, int(width), bias=bias), nn.BatchNorm1d(int(width)), nn.ReLU(inplace=True)]
            in_dim = int(width)
        super().__init__(*layers)
        self.out_dim = in_dim

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], self.out_dim)


class PointEncoder(nn.Module):
    """Base of the point towers: subclasses set the dims and implement :meth:`features`.

    ``feature_fill``: when set, clouds given as xyz only (B, N, 3) get ``in_features`` constant columns of this
    value (ULIP-2 feeds uncoloured datasets such as ModelNet40 ``rgb = 0.4`` to its xyz+rgb Point-BERT).
    """

    in_features: int
    output_dim: int
    token_dim: int
    dense_dim: int
    feature_fill: Optional[float] = None

    def split(self, points: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        """(B, N, 3 + in_features) -> xyz (B, N, 3) and features (B, N, in_features) or None."""
        if (self.feature_fill is not None and self.in_features and points.dim() == 3 and points.shape[-1] == 3):
            points = torch.cat([points, points.new_full((*points.shape[:2], self.in_features),
                                                        float(self.feature_fill))], dim=-1)
        if points.dim() != 3 or points.shape[-1] != 3 + self.in_features:
            raise ValueError(f"{type(self).__name__} (in_features={self.in_features}) expects points of shape "
                             f"(B, N, {3 + self.in_features}) (xyz first); got {tuple(points.shape)}: "
                             f"set in_features to the number of per-point feature columns")
        return points[..., :3], (points[..., 3:] if self.in_features else None)

    def features(self, points: Tensor, dense: bool = False) -> PointFeatures:
        raise NotImplementedError

    def forward(self, points: Tensor) -> Tensor:
        return self.features(points).embedding

    def forward_tokens(self, points: Tensor) -> Tensor:
        return self.features(points).tokens

    def forward_dense(self, points: Tensor) -> Tensor:
        if not self.dense_dim:
            raise ValueError(f"{type(self).__name__} was built without a dense head (empty fp_mlps / dense_mlp, "
                             "as an imported ULIP tower): set them to get per-point features")
        return self.features(points, dense=True).dense


def with_features(xyz: Tensor, feats: Optional[Tensor]) -> Tensor:
    """[xyz, feats] along the last dim (xyz alone when feats is None)."""
    return xyz if feats is None else torch.cat([xyz, feats], dim=-1)


class SetAbstraction(nn.Module):
    """One PointNet++ SSG level.

    ``npoint`` centres c by FPS; for each, ``nsample`` neighbours p by ball query (``radius``);
    ``f_c = max_p MLP([(p - c) / radius, f_p])`` (``(p - c)`` unscaled without ``scale_by_radius``, as in
    ULIP's code). With ``npoint=None`` the level groups all points around the origin:
    ``f = max_p MLP([p, f_p])`` and the centre is (0, 0, 0).
    """

    def __init__(self, npoint: Optional[int], radius: float, nsample: int, in_channels: int, mlp: Sequence[int],
                 bias: bool = False, scale_by_radius: bool = True, fused: bool = True):
        super().__init__()
        self.npoint, self.radius, self.nsample, self.fused = npoint, radius, nsample, fused
        self.scale = radius if scale_by_radius else 1.0
        self.mlp = PointwiseMLP(3 + in_channels, mlp, bias=bias)
        self.out_dim = self.mlp.out_dim

    def forward(self, xyz: Tensor, feats: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        """xyz (B, N, 3), feats (B, N, C) or None -> centres (B, M, 3), features (B, M, out_dim)."""
        if self.npoint is None:
            centres = xyz.new_zeros(xyz.shape[0], 1, 3)
            grouped = with_features(xyz, feats).unsqueeze(1)
        else:
            centres = gather_points(xyz, farthest_point_sample(xyz, self.npoint))
            idx = ball_query(centres, xyz, self.radius, self.nsample)
            rel = (group(xyz, idx) - centres.unsqueeze(2)) / self.scale
            if feats is not None and self.gathers_first(feats):
                B, M, k, _ = rel.shape
                h = gathered_linear_batch_norm_relu(rel, feats, idx, self.mlp[0], self.mlp[1])
                return centres, self.run_layers(h, 3, B, M, k)
            grouped = with_features(rel, None if feats is None else group(feats, idx))
        return centres, self.pool(grouped)

    def gathers_first(self, feats: Tensor) -> bool:
        """Whether the first layer runs on the previous level's points before grouping
        (:func:`gathered_linear_batch_norm_relu`): fused, on CPU with the compiled loops, a plain first
        ``Linear - BatchNorm1d - ReLU`` that is not the level's last."""
        return self.fused and len(self.mlp) > 3 and self.plain_layers()[0] and ops_native.supports(feats)

    def plain_layers(self) -> List[bool]:
        """Per ``Linear - norm - activation`` layer: a plain BatchNorm1d and ReLU (what the fused ops replace)."""
        layers = list(self.mlp)
        return [type(layers[j + 1]) is nn.BatchNorm1d and isinstance(layers[j + 2], nn.ReLU)
                for j in range(0, len(layers), 3)]

    def pool(self, grouped: Tensor) -> Tensor:
        """(B, M, k, C_in) -> ``max_k MLP`` (B, M, out_dim).

        With ``fused`` (default) the level's last BatchNorm - ReLU and the max run as one op
        (:func:`batch_norm_relu_max`), and on CPU every ``Linear - BatchNorm - ReLU`` layer runs as one op
        (:mod:`.linear_norm`: the first two over xyz offsets together, the middle ones, the last with the max); same
        values and gradients up to rounding. A norm that is not a plain BatchNorm1d (SyncBatchNorm under DDP) runs as
        its module.
        """
        B, M, k, _ = grouped.shape
        h = grouped.reshape(-1, grouped.shape[-1])
        if not self.fused:
            return self.mlp(h).reshape(B, M, k, -1).amax(dim=2)
        return self.run_layers(h, 0, B, M, k)

    def run_layers(self, h: Tensor, start: int, B: int, M: int, k: int) -> Tensor:
        """The fused path of :meth:`pool` from layer index ``start`` (a multiple of 3) on rows h (B M k, C)."""
        layers = list(self.mlp)
        native = ops_native.supports(h)
        plain = self.plain_layers()
        i = start
        while i < len(layers):
            linear, norm, relu = layers[i:i + 3]
            if plain[i // 3] and i + 3 == len(layers):
                if native:
                    return linear_batch_norm_relu_max(h, linear, norm, k).reshape(B, M, -1)
                return batch_norm_relu_max(linear(h), norm, k).reshape(B, M, -1)
            if (i + 6 < len(layers) and native and plain[i // 3] and plain[i // 3 + 1] and h.shape[-1] <= NARROW
                    and not h.requires_grad):             # two layers, the first's output only in cache blocks
                h = narrow_stem(h, linear, norm, layers[i + 3], layers[i + 4])
                i += 6
                continue
            if native and plain[i // 3]:
                fused = narrow_batch_norm_relu if h.shape[-1] <= NARROW else linear_batch_norm_relu
                h = fused(h, linear, norm)
            else:
                h = relu(norm(linear_rows(h, linear) if native else linear(h)))
            i += 3
        return h.reshape(B, M, k, -1).amax(dim=2)       # the last norm was replaced (SyncBatchNorm): modules


class FeaturePropagation(nn.Module):
    """PointNet++ feature propagation: ``f_q = MLP([interp(known -> q), skip_q])`` (inverse-distance, 3-NN)."""

    def __init__(self, known_channels: int, skip_channels: int, mlp: Sequence[int]):
        super().__init__()
        self.mlp = PointwiseMLP(known_channels + skip_channels, mlp)
        self.out_dim = self.mlp.out_dim

    def forward(self, query_xyz: Tensor, skip: Tensor, known_xyz: Tensor, known_feat: Tensor) -> Tensor:
        """query_xyz (B, N, 3), skip (B, N, Cs), known_xyz (B, M, 3), known_feat (B, M, Ck) -> (B, N, out_dim)."""
        return self.mlp(torch.cat([three_interpolate(known_xyz, known_feat, query_xyz), skip], dim=-1))


@ENCODERS.register("pointnet2-ssg")
class PointNet2SSG(PointEncoder):
    """PointNet++ with single-scale grouping.

    Levels ``i = 1..L`` are :class:`SetAbstraction` (``npoints[i]``, ``radii[i]``, ``nsamples[i]``,
    ``mlps[i]``) followed by a group-all level (``global_mlp``): ``output_dim = global_mlp[-1]``.
    ``forward_tokens`` returns level L, ``(B, npoints[-1], mlps[-1][-1])``. ``forward_dense`` runs
    ``L + 1`` :class:`FeaturePropagation` layers (``fp_mlps``) from the global level back to the input
    points, whose skip features are ``[xyz, input features]``: ``dense_dim = fp_mlps[-1][-1]``.

    Defaults are a CPU demo size (~0.2M parameters, radii for clouds in the unit sphere). The paper's
    classification/ULIP size is ``npoints=(512, 128), radii=(0.2, 0.4), nsamples=(32, 64),
    mlps=((64, 64, 128), (128, 128, 256)), global_mlp=(256, 512, 1024)``, with
    ``fp_mlps=((256, 256), (256, 128), (128, 128, 128))`` for segmentation.

    ULIP's ``Pointnet2_Ssg`` (``models/pointnet2/pointnet2.py``, the tower of its released PointNet++ ssg
    checkpoint) is that size with ``mlp_bias=True`` (1x1 convs with bias), ``scale_by_radius=False`` (offsets
    ``p - c`` unscaled), ``head_mlp=(512, 256)`` (after the global level: ``Linear - BatchNorm - ReLU -
    Dropout(head_dropout=0.4)`` per width, ``output_dim = head_mlp[-1]``) and ``fp_mlps=()`` (no dense head).
    FPS starts at point 0 (ULIP's PyTorch FPS starts at a random point) and the ball holds ``|p - c| < r``
    (ULIP's ``<= r``: the same for real-valued data).

    ``fused`` (default True): each level's last ``BatchNorm - ReLU`` and its max over the group run as one op
    that never builds the (M k, C) normalised rows, and on CPU the level's other ``BatchNorm - ReLU`` pairs run
    as compiled two-pass loops (:mod:`.grouped_norm`); values and gradients equal the module path up to rounding,
    the state dict is the same. ``fused=False`` runs the modules one by one (the reference).
    """

    def __init__(self, in_features: Annotated[int, NON_NEGATIVE] = 0, npoints: Sequence[Count] = (64, 16),
                 radii: Sequence[Annotated[float, POSITIVE]] = (0.2, 0.4), nsamples: Sequence[Count] = (32, 16),
                 mlps: Sequence[Widths] = ((32, 32, 64), (64, 64, 128)), global_mlp: Widths = (128, 256),
                 fp_mlps: Sequence[Widths] = ((128, 128), (128, 128), (128, 128)), mlp_bias: bool = False,
                 scale_by_radius: bool = True, head_mlp: Sequence[Count] = (),
                 head_dropout: Annotated[float, Range(ge=0, lt=1)] = 0.4, feature_fill: Optional[float] = None,
                 fused: bool = True):
        super().__init__()
        if not len(npoints) == len(radii) == len(nsamples) == len(mlps) >= 1:
            raise ConfigError(f"pointnet2-ssg needs npoints, radii, nsamples and mlps of one equal length >= 1; got "
                              f"{len(npoints)}, {len(radii)}, {len(nsamples)}, {len(mlps)}")
        if len(fp_mlps) not in (0, len(npoints) + 1):
            raise ConfigError(f"pointnet2-ssg needs one fp_mlps entry per set-abstraction level plus one "
                              f"({len(npoints) + 1}), or none (no dense head); got {len(fp_mlps)}")
        self.in_features, self.feature_fill = in_features, feature_fill
        self.levels = nn.ModuleList()
        skip_dims = [3 + in_features]
        channels = in_features
        for npoint, radius, nsample, mlp in zip(npoints, radii, nsamples, mlps):
            self.levels.append(SetAbstraction(int(npoint), float(radius), int(nsample), channels, mlp, bias=mlp_bias,
                                              scale_by_radius=scale_by_radius, fused=fused))
            channels = self.levels[-1].out_dim
            skip_dims.append(channels)
        self.levels.append(SetAbstraction(None, 1.0, 1, channels, global_mlp, bias=mlp_bias, fused=fused))
        self.output_dim = self.levels[-1].out_dim
        self.global_head: Optional[nn.Sequential] = None
        if head_mlp:
            layers: List[nn.Module] = []
            for width in head_mlp:
                layers += [nn.Linear(self.output_dim, int(width)), nn.BatchNorm1d(int(width)), nn.ReLU(),
                           nn.Dropout(head_dropout)]
                self.output_dim = int(width)
            self.global_head = nn.Sequential(*layers)
        self.propagations = nn.ModuleList()
        channels = self.levels[-1].out_dim
        for skip, mlp in zip(reversed(skip_dims), fp_mlps):
            self.propagations.append(FeaturePropagation(channels, skip, mlp))
            channels = self.propagations[-1].out_dim
        self.token_dim = skip_dims[-1]
        self.dense_dim = channels if fp_mlps else 0

    def features(self, points: Tensor, dense: bool = False) -> PointFeatures:
        xyz, feats = self.split(points)
        centres: List[Tensor] = [xyz]
        level_feats: List[Optional[Tensor]] = [feats]
        for level in self.levels:
            c, f = level(centres[-1], level_feats[-1])
            centres.append(c)
            level_feats.append(f)
        embedding = level_feats[-1][:, 0]
        if self.global_head is not None:
            embedding = self.global_head(embedding)
        out = PointFeatures(embedding=embedding, tokens=level_feats[-2], token_xyz=centres[-2])
        if dense and self.dense_dim:
            skips = [with_features(xyz, feats)] + level_feats[1:-1]
            known_xyz, known_feat = centres[-1], level_feats[-1]
            for query_xyz, skip, fp in zip(reversed(centres[:-1]), reversed(skips), self.propagations):
                known_feat = fp(query_xyz, skip, known_xyz, known_feat)
                known_xyz = query_xyz
            out.dense = known_feat
        return out
