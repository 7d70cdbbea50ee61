"""Image, volume and video towers (``"small-cnn"``, ``"monai-resnet"``, ``"monai-densenet"``,
``"monai-densenet121"``, ``"monai-vit"``).

Input ``(B, C, H, W)`` with ``spatial_dims=2`` or ``(B, C, D, H, W)`` with ``spatial_dims=3`` (a video
clip is ``(B, C, T, H, W)``); ``forward -> (B, output_dim)``, ``forward_tokens -> (B, N, C)``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alignkit.core.encoders.base import SpatialSize
from alignkit.core.params import check_choice
from alignkit.core.registry import ENCODERS, ConfigError
from alignkit.core.params import AT_LEAST_ONE, OneOf, Range

SPATIAL_DIMS = (2, 3)
IMAGE_POOLS = ("avg", "avgmax")
SpatialDims = Annotated[int, OneOf(SPATIAL_DIMS)]
Channels = Annotated[int, AT_LEAST_ONE]
Pool = Annotated[str, OneOf(IMAGE_POOLS)]


def global_pool(x: Tensor, pool: str) -> Tensor:
    """``(B, C, *S) -> (B, C)`` mean over ``S`` (``"avg"``), or ``(B, 2C)`` ``[mean, max]`` (``"avgmax"``)."""
    flat = x.flatten(2)
    mean = flat.mean(-1)
    return torch.cat([mean, flat.amax(-1)], dim=1) if pool == "avgmax" else mean


def check_image(x: Tensor, spatial_dims: int, in_channels: int, owner: str,
                size: Optional[Tuple[int, ...]] = None) -> Tensor:
    """``x`` if it is ``(B, in_channels, *S)`` with ``len(S) == spatial_dims`` (and ``S == size`` if given)."""
    layout = "(B, C, H, W)" if spatial_dims == 2 else "(B, C, D, H, W) (a video is (B, C, T, H, W))"
    if x.ndim != spatial_dims + 2 or x.shape[1] != in_channels:
        raise ValueError(f"{owner} (spatial_dims={spatial_dims}, in_channels={in_channels}) expects {layout}; "
                         f"got shape {tuple(x.shape)}")
    if size is not None and tuple(x.shape[2:]) != size:
        raise ValueError(f"{owner} was built for img_size {size}; got {tuple(x.shape[2:])}: set img_size "
                         f"to the input size or resize the inputs")
    return x


class FeatureMapEncoder(nn.Module):
    """A convolutional tower: ``feature_map(x) -> (B, map_channels, *S)``; ``forward`` pools it globally
    (:func:`global_pool`), ``forward_tokens`` flattens it to ``(B, prod(S), map_channels)``.
    Subclasses build their layers after ``super().__init__`` and set ``map_channels``."""

    map_channels: int

    def __init__(self, spatial_dims: int, in_channels: int, pool: str):
        super().__init__()
        check_choice(spatial_dims, SPATIAL_DIMS, f"{type(self).__name__} spatial_dims")
        check_choice(pool, IMAGE_POOLS, f"{type(self).__name__} pool")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.pool = pool

    @property
    def output_dim(self) -> int:
        return self.map_channels * (2 if self.pool == "avgmax" else 1)

    def feature_map(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _map(self, x: Tensor) -> Tensor:
        return self.feature_map(check_image(x, self.spatial_dims, self.in_channels, type(self).__name__))

    def forward(self, x: Tensor) -> Tensor:
        return global_pool(self._map(x), self.pool)

    def forward_tokens(self, x: Tensor) -> Tensor:
        return self._map(x).flatten(2).transpose(1, 2)


@ENCODERS.register("small-cnn")
class SmallCNN(FeatureMapEncoder):
    """A fast CPU tower for demos and tests.

    Stage ``i`` (width ``widths[i]``) is ``convs_per_stage`` x (conv3x3 - BatchNorm - ReLU), preceded for
    ``i > 0`` by a stride-2 max-pool; the very first conv has stride ``stem_stride``. The last map has side
    ``H / (stem_stride * 2^(len(widths) - 1))`` and ``widths[-1]`` channels; ``output_dim`` is ``widths[-1]``
    (``pool="avg"``) or twice that (``"avgmax"``). ``stem_stride=2`` halves the side of every map (a quarter
    of the pixels), for inputs of 64 px and more. Measured throughput: ``docs/core.md``.
    """

    def __init__(self, in_channels: Channels = 3, widths: Sequence[Annotated[int, AT_LEAST_ONE]] = (32, 64, 128, 128),
                 convs_per_stage: Annotated[int, AT_LEAST_ONE] = 1, spatial_dims: SpatialDims = 2, pool: Pool = "avg",
                 stem_stride: Annotated[int, AT_LEAST_ONE] = 1):
        from monai.networks.blocks import Convolution
        from monai.networks.layers import Pool

        if not widths or convs_per_stage < 1:
            raise ConfigError(f"small-cnn needs at least one width and convs_per_stage >= 1; "
                              f"got widths={list(widths)}, convs_per_stage={convs_per_stage}")
        super().__init__(spatial_dims, in_channels, pool)
        self.map_channels = int(widths[-1])
        layers: List[nn.Module] = []
        channels = in_channels
        for i, width in enumerate(widths):
            if i > 0:
                layers.append(Pool[Pool.MAX, spatial_dims](kernel_size=2, stride=2))
            for j in range(convs_per_stage):
                layers.append(Convolution(spatial_dims, channels, int(width), strides=stem_stride if i == j == 0 else 1,
                                          kernel_size=3, act=("relu", {"inplace": True}), norm="batch", bias=False))
                channels = int(width)
        self.body = nn.Sequential(*layers)

    def feature_map(self, x: Tensor) -> Tensor:
        return self.body(x)


RESNET_DEPTHS = (10, 18, 34, 50, 101, 152)
RESNET_WIDTHS = (64, 128, 256, 512)
RESNET_LAYERS = {10: [1, 1, 1, 1], 18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3],
                 152: [3, 8, 36, 3]}  # blocks per stage, as MONAI's resnet10 ... resnet152


@ENCODERS.register("monai-resnet")
class MonaiResNet(FeatureMapEncoder):
    """MONAI's ResNet without the classifier; ``output_dim`` ``widths[3]`` (depth 10/18/34: 512) or
    ``4 * widths[3]`` (50/101/152: 2048), x2 for ``avgmax``.

    ``conv1_t_size``/``conv1_t_stride``/``no_max_pool`` shape the stem (stride 1 and no max-pool keep small
    inputs large). ``weights``: optional local file with a MONAI ResNet state dict (e.g. MedicalNet, 3D,
    ``in_channels=1``); weights are never downloaded. ``widths``: the planes of the four stages (the stem has
    ``widths[0]`` channels). ``bias_downsample``: a bias on the 1x1 shortcut convolutions (MONAI's default);
    with ``bias_downsample=False`` and the default stem the network is torchvision's ResNet (v1.5: stride on the
    3x3 convolution, 3x3/2 max-pool, shortcut B), key for key (``alignkit import-weights torchvision-resnet``).
    """

    def __init__(self, depth: Annotated[int, OneOf(RESNET_DEPTHS)] = 18, spatial_dims: SpatialDims = 2,
                 in_channels: Channels = 3, pool: Pool = "avg", conv1_t_size: Annotated[int, AT_LEAST_ONE] = 7,
                 conv1_t_stride: Annotated[int, AT_LEAST_ONE] = 2, no_max_pool: bool = False,
                 weights: Optional[str] = None,
                 widths: Sequence[Annotated[int, AT_LEAST_ONE]] = RESNET_WIDTHS, bias_downsample: bool = True):
        from monai.networks.nets import resnet

        super().__init__(spatial_dims, in_channels, pool)
        check_choice(depth, RESNET_DEPTHS, "monai-resnet depth")
        if len(widths) != 4 or any(int(w) < 1 for w in widths):
            raise ConfigError(f"monai-resnet widths are the planes of its 4 stages (e.g. [64, 128, 256, 512]); "
                              f"got {list(widths)}")
        if weights is not None and not Path(weights).is_file():
            raise FileNotFoundError(f"monai-resnet weights '{weights}' is not a file; give a local state-dict path")
        self.net = resnet.ResNet(
            resnet.ResNetBlock if depth < 50 else resnet.ResNetBottleneck, RESNET_LAYERS[depth],
            [int(w) for w in widths], spatial_dims=spatial_dims, n_input_channels=in_channels,
            conv1_t_size=conv1_t_size, conv1_t_stride=conv1_t_stride, no_max_pool=no_max_pool, feed_forward=False,
            bias_downsample=bias_downsample)
        if weights:
            state = torch.load(weights, map_location="cpu", weights_only=True)
            self.net.load_state_dict({k.replace("module.", ""): v for k, v in state.items()}, strict=True)
        self.map_channels = self.net.in_planes

    def feature_map(self, x: Tensor) -> Tensor:
        n = self.net
        x = n.act(n.bn1(n.conv1(x)))
        if not n.no_max_pool:
            x = n.maxpool(x)
        return n.layer4(n.layer3(n.layer2(n.layer1(x))))


DENSENET_BLOCKS = {121: (6, 12, 24, 16), 169: (6, 12, 32, 32), 201: (6, 12, 48, 32), 264: (6, 12, 64, 48)}


@ENCODERS.register("monai-densenet")
class MonaiDenseNet(FeatureMapEncoder):
    """MONAI's DenseNet (depth 121/169/201/264) without the classifier; the map is ``relu(features(x))``."""

    def __init__(self, depth: Annotated[int, OneOf(tuple(DENSENET_BLOCKS))] = 121, spatial_dims: SpatialDims = 2,
                 in_channels: Channels = 3, pool: Pool = "avg", init_features: Annotated[int, AT_LEAST_ONE] = 64,
                 growth_rate: Annotated[int, AT_LEAST_ONE] = 32, dropout: Annotated[float, Range(ge=0, lt=1)] = 0.0):
        from monai.networks.nets import DenseNet

        super().__init__(spatial_dims, in_channels, pool)
        check_choice(depth, tuple(DENSENET_BLOCKS), "monai-densenet depth")
        net = DenseNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=1,
                       init_features=init_features, growth_rate=growth_rate, block_config=DENSENET_BLOCKS[depth],
                       dropout_prob=dropout)
        self.features = net.features  # the classifier (class_layers) is dropped
        self.map_channels = net.class_layers.out.in_features

    def feature_map(self, x: Tensor) -> Tensor:
        return F.relu(self.features(x))


@ENCODERS.register("monai-densenet121")
def monai_densenet121(spatial_dims: int = 2, in_channels: int = 3, pool: str = "avg",
                      dropout: float = 0.0) -> MonaiDenseNet:
    """DenseNet-121 (1024 channels): ``monai-densenet`` with ``depth=121``."""
    return MonaiDenseNet(depth=121, spatial_dims=spatial_dims, in_channels=in_channels, pool=pool, dropout=dropout)


VIT_POOLS = ("cls", "mean")


@ENCODERS.register("monai-vit")
class MonaiViT(nn.Module):
    """MONAI's ViT (patch embedding, transformer blocks, final LayerNorm) as a tower.

    ``pool="cls"`` prepends a learnable CLS token and returns its final state; ``"mean"`` averages the
    patch tokens. ``forward_tokens`` returns the ``N = prod(img_size / patch_size)`` patch tokens
    ``(B, N, hidden_size)``. Inputs must have spatial size ``img_size``.
    """

    def __init__(self, in_channels: Channels = 3, img_size: SpatialSize = 224, patch_size: SpatialSize = 16,
                 hidden_size: Annotated[int, AT_LEAST_ONE] = 768, mlp_dim: Annotated[int, AT_LEAST_ONE] = 3072,
                 num_layers: Annotated[int, AT_LEAST_ONE] = 12, num_heads: Annotated[int, AT_LEAST_ONE] = 12,
                 spatial_dims: SpatialDims = 2, pool: Annotated[str, OneOf(VIT_POOLS)] = "cls",
                 dropout: Annotated[float, Range(ge=0, lt=1)] = 0.0, qkv_bias: bool = False,
                 pos_embed_type: str = "learnable"):
        super().__init__()
        from monai.networks.nets import ViT

        check_choice(spatial_dims, SPATIAL_DIMS, "monai-vit spatial_dims")
        check_choice(pool, VIT_POOLS, "monai-vit pool")
        self.vit = ViT(in_channels=in_channels, img_size=img_size, patch_size=patch_size, hidden_size=hidden_size,
                       mlp_dim=mlp_dim, num_layers=num_layers, num_heads=num_heads, pos_embed_type=pos_embed_type,
                       classification=False, dropout_rate=dropout, spatial_dims=spatial_dims, qkv_bias=qkv_bias)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden_size)) if pool == "cls" else None
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.img_size = tuple(img_size) if isinstance(img_size, Sequence) else (int(img_size),) * spatial_dims
        self.pool = pool
        self.output_dim = hidden_size

    def _sequence(self, x: Tensor) -> Tensor:
        """``(B, [1 +] N, hidden)`` final LayerNorm-ed states (CLS first when ``pool="cls"``)."""
        h = self.vit.patch_embedding(check_image(x, self.spatial_dims, self.in_channels, "monai-vit", self.img_size))
        if self.cls_token is not None:
            h = torch.cat([self.cls_token.expand(h.shape[0], -1, -1), h], dim=1)
        for block in self.vit.blocks:
            h = block(h)
        return self.vit.norm(h)

    def forward(self, x: Tensor) -> Tensor:
        h = self._sequence(x)
        return h[:, 0] if self.cls_token is not None else h.mean(1)

    def forward_tokens(self, x: Tensor) -> Tensor:
        h = self._sequence(x)
        return h[:, 1:] if self.cls_token is not None else h


__all__ = ["SPATIAL_DIMS", "IMAGE_POOLS", "global_pool", "check_image", "FeatureMapEncoder", "SmallCNN",
           "MonaiResNet", "MonaiDenseNet", "monai_densenet121", "MonaiViT"]
