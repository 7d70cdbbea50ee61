"""ConvNeXt (Liu et al. 2022) as a tower (``"convnext"``), in timm's state-dict layout inside open_clip's
``TimmModel`` (``trunk.*`` = timm's ``ConvNeXt``, ``head.*`` = open_clip's pooling/projection head).

Image ``x`` ``(B, 3, H, W)``, stage widths ``dims``, stage depths ``depths``:

    f = LN2d(conv_{p x p, stride p}(x))                          trunk.stem.{0,1}
    stage i: f = conv_{2x2, stride 2}(LN2d(f)) (i > 0)           trunk.stages.{i}.downsample.{0,1}
             f <- f + gamma * fc2(GELU(fc1(LN(dwconv_7x7(f)))))   trunk.stages.{i}.blocks.{j}.{conv_dw, norm,
                                                                      mlp.fc1, mlp.fc2, gamma}
    pooled = LN(mean_{hw} f)  ('avg'; 'max': max_{hw})           trunk.head.norm
    z = pooled W^T ('linear', head.proj, bias if proj_bias)      or fc2(GELU(fc1(pooled))) ('mlp', head.mlp.*,
        hidden 2 * output_dim), or trunk.head.fc (``proj='trunk'``: timm's classifier as projection, with bias),
        or ``pooled`` (``proj='none'``)

LayerNorms have eps 1e-6 (timm). ``forward_tokens`` gives the final feature map ``f`` as ``(B, h w, dims[-1])``
tokens (before the head norm). An open_clip ConvNeXt checkpoint (EchoCLIP, LAION ConvNeXt CLIPs) maps by
dropping its ``visual.`` prefix.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Annotated, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alignkit.core.encoders.image import check_image
from alignkit.core.params import AT_LEAST_ONE, OneOf, Range, check_choice
from alignkit.core.registry import ENCODERS, ConfigError

CONVNEXT_POOLS = ("avg", "max")
CONVNEXT_PROJECTIONS = ("linear", "mlp", "trunk", "none")


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of ``(B, C, H, W)`` (timm's ``LayerNorm2d``, eps 1e-6)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__(channels, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias,
                            self.eps).permute(0, 3, 1, 2)


class Mlp(nn.Module):
    """``fc2(GELU(fc1 x))`` on the last axis (timm's ``Mlp``)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, bias: Sequence[bool] = (True, True)):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden, bias=bias[0])
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, out_dim, bias=bias[1])

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ConvNeXtBlock(nn.Module):
    """``x + gamma * mlp(LN(dwconv(x)))`` with the MLP in channels-last layout, ``(B, C, H, W)``."""

    def __init__(self, dim: int, kernel_size: int = 7, mlp_ratio: float = 4.0, ls_init_value: Optional[float] = 1e-6):
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(mlp_ratio * dim), dim)
        self.gamma = nn.Parameter(ls_init_value * torch.ones(dim)) if ls_init_value is not None else None

    def forward(self, x: Tensor) -> Tensor:
        y = self.mlp(self.norm(self.conv_dw(x).permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
        if self.gamma is not None:
            y = y * self.gamma.reshape(1, -1, 1, 1)
        return x + y


class ConvNeXtStage(nn.Module):
    """``downsample`` (LN2d + 2x2 stride-2 conv, or identity for the first stage) then ``blocks``."""

    def __init__(self, in_dim: int, dim: int, depth: int, downsample: bool, kernel_size: int, mlp_ratio: float,
                 ls_init_value: Optional[float]):
        super().__init__()
        self.downsample = (nn.Sequential(LayerNorm2d(in_dim), nn.Conv2d(in_dim, dim, 2, stride=2)) if downsample
                           else nn.Identity())
        self.blocks = nn.Sequential(*[ConvNeXtBlock(dim, kernel_size, mlp_ratio, ls_init_value) for _ in range(depth)])

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.downsample(x))


class ConvNeXtTrunk(nn.Module):
    """timm's ``ConvNeXt`` (patch stem, ``head_norm_first=False``): ``stem``, ``stages``, ``head.norm``
    (and ``head.fc`` when it is the projection)."""

    def __init__(self, depths: Sequence[int], dims: Sequence[int], patch_size: int, kernel_size: int,
                 mlp_ratio: float, ls_init_value: Optional[float], fc_dim: Optional[int]):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, dims[0], patch_size, stride=patch_size), LayerNorm2d(dims[0]))
        self.stages = nn.Sequential(*[
            ConvNeXtStage(dims[max(i - 1, 0)], dims[i], depths[i], i > 0, kernel_size, mlp_ratio, ls_init_value)
            for i in range(len(depths))])
        head: "OrderedDict[str, nn.Module]" = OrderedDict(norm=LayerNorm2d(dims[-1]))
        if fc_dim:
            head["fc"] = nn.Linear(dims[-1], fc_dim)
        self.head = nn.ModuleDict(head)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.stages(self.stem(x))


@ENCODERS.register("convnext")
class ConvNeXtEncoder(nn.Module):
    """ConvNeXt image tower with open_clip's ``TimmModel`` head: ``forward(x (B, 3, H, W)) -> (B, output_dim)``.

    Args:
        depths, dims: blocks and channels per stage (ConvNeXt-Base: ``[3, 3, 27, 3]``, ``[128, 256, 512, 1024]``).
        output_dim: the projection's output (ignored with ``proj='none'``: ``output_dim = dims[-1]``).
        proj: ``"linear"`` (open_clip ``timm_proj: linear``), ``"mlp"`` (``timm_proj: mlp``), ``"trunk"`` (timm's
            classifier ``trunk.head.fc``, open_clip ``timm_proj: ''``) or ``"none"``.
        proj_bias: bias of the projection's last layer (open_clip ``timm_proj_bias``).
        pool: ``"avg"`` or ``"max"`` global pooling. patch_size: stem stride. kernel_size: depth-wise kernel.
        ls_init_value: layer-scale ``gamma`` (None: no layer scale). image_size: recorded only (any size works).
    """

    def __init__(self, depths: Sequence[Annotated[int, AT_LEAST_ONE]] = (3, 3, 9, 3),
                 dims: Sequence[Annotated[int, AT_LEAST_ONE]] = (96, 192, 384, 768),
                 output_dim: Annotated[int, AT_LEAST_ONE] = 512,
                 proj: Annotated[str, OneOf(CONVNEXT_PROJECTIONS)] = "linear", proj_bias: bool = False,
                 pool: Annotated[str, OneOf(CONVNEXT_POOLS)] = "avg", patch_size: Annotated[int, AT_LEAST_ONE] = 4,
                 kernel_size: Annotated[int, AT_LEAST_ONE] = 7, mlp_ratio: Annotated[float, Range(gt=0)] = 4.0,
                 ls_init_value: Optional[float] = 1e-6, image_size: Annotated[int, AT_LEAST_ONE] = 224):
        super().__init__()
        check_choice(proj, CONVNEXT_PROJECTIONS, "convnext proj")
        check_choice(pool, CONVNEXT_POOLS, "convnext pool")
        if len(depths) != len(dims) or not depths:
            raise ConfigError(f"convnext depths {list(depths)} and dims {list(dims)} need the same non-zero length")
        self.pool, self.proj, self.image_size = pool, proj, int(image_size)
        self.trunk = ConvNeXtTrunk(depths, dims, patch_size, kernel_size, mlp_ratio, ls_init_value,
                                   output_dim if proj == "trunk" else None)
        head: "OrderedDict[str, nn.Module]" = OrderedDict()
        if proj == "linear":
            head["proj"] = nn.Linear(dims[-1], output_dim, bias=proj_bias)
        elif proj == "mlp":
            head["mlp"] = Mlp(dims[-1], 2 * output_dim, output_dim, bias=(True, proj_bias))
        self.head = nn.Sequential(head)
        self.output_dim = int(dims[-1] if proj == "none" else output_dim)

    def _features(self, x: Tensor) -> Tensor:
        return self.trunk.forward_features(check_image(x, 2, 3, "convnext"))

    def forward(self, x: Tensor) -> Tensor:
        f = self._features(x)
        pooled = f.mean((2, 3), keepdim=True) if self.pool == "avg" else f.amax((2, 3), keepdim=True)
        pooled = self.trunk.head["norm"](pooled).flatten(1)
        if "fc" in self.trunk.head:
            pooled = self.trunk.head["fc"](pooled)
        return self.head(pooled)

    def forward_tokens(self, x: Tensor) -> Tensor:
        """``(B, h w, dims[-1])`` final feature-map tokens (row-major over ``h, w``)."""
        return self._features(x).flatten(2).transpose(1, 2)


__all__ = ["CONVNEXT_POOLS", "CONVNEXT_PROJECTIONS", "LayerNorm2d", "ConvNeXtBlock", "ConvNeXtEncoder"]
