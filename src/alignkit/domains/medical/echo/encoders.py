"""Echo video towers (``ENCODERS``): a CPU-sized (2+1)D CNN, a factorised video ViT, and an image encoder run frame
by frame (``echo-frames``: EchoCLIP-style, e.g. over an imported open_clip ConvNeXt).

Both take clips ``(B, C, T, H, W)`` (as :class:`~alignkit.domains.medical.echo.data.EchoClipDecoder` makes them),
compute per-frame features ``f_t`` (``(B, T', C')``) and pool them over time with :func:`temporal_pool`:
``"mean_std"`` gives ``[mean_t f_t, std_t f_t]`` (``(B, 2C')``). The standard deviation over time carries how much
the heart moves, which a mean over frames discards (see docs/medical.md, Echocardiography, for what it did to EF).
``forward_tokens`` returns the local features ``(B, T' h w, C')`` (frames x spatial positions).

For MONAI's 3D ResNet (the EchoPrime-style GPU config) use the core ``monai-resnet`` with ``spatial_dims: 3``.
"""
from __future__ import annotations

from typing import Annotated, Any, Dict, List, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alignkit.core.encoders.base import build_encoder
from alignkit.core.encoders.image import check_image
from alignkit.core.params import AT_LEAST_ONE, POSITIVE, OneOf, Range, check_choice
from alignkit.core.registry import ENCODERS, ConfigError

TEMPORAL_POOLS = ("mean", "mean_std")
TemporalPool = Annotated[str, OneOf(TEMPORAL_POOLS)]
Count = Annotated[int, AT_LEAST_ONE]


def temporal_pool(frames: Tensor, pool: str) -> Tensor:
    """``(B, T, C) -> (B, C)`` mean over time (``"mean"``), or ``(B, 2C)`` ``[mean_t, std_t]`` (``"mean_std"``;
    population std ``sqrt(mean_t (f_t - mean)^2 + 1e-6)``, finite gradient at zero motion)."""
    mean = frames.mean(1)
    if pool == "mean":
        return mean
    std = ((frames - mean.unsqueeze(1)).pow(2).mean(1) + 1e-6).sqrt()
    return torch.cat([mean, std], dim=1)


def temporal_smooth(frames: Tensor, width: int) -> Tensor:
    """``(B, T, C) -> (B, T, C)``: a centred box filter of ``width`` (odd) frames over time,
    ``g_t = mean_{|k - t| <= width // 2, 0 <= k < T} f_k`` (edges average the frames they have); ``width`` 1 is the
    identity."""
    if width == 1:
        return frames
    smoothed = F.avg_pool1d(frames.transpose(1, 2), width, stride=1, padding=width // 2, count_include_pad=False)
    return smoothed.transpose(1, 2)


def _pooled_dim(channels: int, pool: str) -> int:
    return channels * (2 if pool == "mean_std" else 1)


class _R2Plus1DBlock(nn.Sequential):
    """Spatial conv ``1 x 3 x 3`` (stride ``1 x s x s``) - BN - ReLU, then temporal conv ``k x 1 x 1`` (edge frames
    replicated, so a still clip gives identical features at every frame) - BN - ReLU."""

    def __init__(self, cin: int, cout: int, spatial_stride: int, temporal_kernel: int):
        super().__init__(
            nn.Conv3d(cin, cout, (1, 3, 3), stride=(1, spatial_stride, spatial_stride), padding=(0, 1, 1), bias=False),
            nn.BatchNorm3d(cout), nn.ReLU(inplace=True),
            nn.Conv3d(cout, cout, (temporal_kernel, 1, 1), padding=(temporal_kernel // 2, 0, 0),
                      padding_mode="replicate", bias=False),
            nn.BatchNorm3d(cout), nn.ReLU(inplace=True))


@ENCODERS.register("echo-r2plus1d")
class R2Plus1DEncoder(nn.Module):
    """A small (2+1)D CNN for CPU runs: one :class:`_R2Plus1DBlock` per width, each halving the frame side
    (``spatial_stride`` 2), keeping every frame. Map ``(B, widths[-1], T, H / 2^n, W / 2^n)``; per-frame features
    are its spatial mean, smoothed over time by :func:`temporal_smooth` (``temporal_smoothing`` frames: averages
    out the speckle that flickers from frame to frame and keeps the beat, which spans many frames of a clip; a clip
    whose frames are out of order loses most of its apparent motion there); ``forward`` -> :func:`temporal_pool`,
    then BatchNorm (the temporal std of frame features
    is orders of magnitude smaller than their mean; normalising puts both on one scale for the heads):
    ``(B, output_dim)`` with ``output_dim`` = ``widths[-1]`` (``"mean"``) or ``2 widths[-1]`` (``"mean_std"``).
    Default widths: 40.3k parameters; a batch of 64 RGB clips of 16 x 64 x 64 trained at ~30 clips/s on a shared,
    loaded 2-core machine.
    """

    def __init__(self, in_channels: Count = 3, widths: Sequence[Count] = (16, 32, 64), temporal_kernel: Count = 3,
                 pool: TemporalPool = "mean_std", temporal_smoothing: Count = 1):
        super().__init__()
        check_choice(pool, TEMPORAL_POOLS, "echo-r2plus1d pool")
        if not widths or temporal_kernel < 1 or temporal_kernel % 2 == 0 or temporal_smoothing < 1 or \
                temporal_smoothing % 2 == 0:
            raise ConfigError(f"echo-r2plus1d needs at least one width and an odd temporal_kernel and "
                              f"temporal_smoothing; got widths={list(widths)}, temporal_kernel={temporal_kernel}, "
                              f"temporal_smoothing={temporal_smoothing}")
        self.in_channels, self.pool, self.temporal_smoothing = in_channels, pool, temporal_smoothing
        blocks: List[nn.Module] = []
        channels = in_channels
        for width in widths:
            blocks.append(_R2Plus1DBlock(channels, int(width), 2, temporal_kernel))
            channels = int(width)
        self.body = nn.Sequential(*blocks)
        self.map_channels = channels
        self.output_dim = _pooled_dim(channels, pool)
        self.norm = nn.BatchNorm1d(self.output_dim)

    def feature_map(self, x: Tensor) -> Tensor:
        """``(B, C, T, H, W) -> (B, map_channels, T, h, w)``."""
        return self.body(check_image(x, 3, self.in_channels, "echo-r2plus1d"))

    def forward(self, x: Tensor) -> Tensor:
        frames = self.feature_map(x).mean((3, 4)).transpose(1, 2)  # (B, T, C)
        return self.norm(temporal_pool(temporal_smooth(frames, self.temporal_smoothing), self.pool))

    def forward_tokens(self, x: Tensor) -> Tensor:
        """``(B, T h w, map_channels)``, frame-major."""
        return self.feature_map(x).flatten(2).transpose(1, 2)


class _FactorisedBlock(nn.Module):
    """Pre-norm spatial self-attention within each frame, then temporal self-attention at each patch position."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.spatial = nn.TransformerEncoderLayer(dim, heads, hidden, dropout, activation="gelu", batch_first=True,
                                                  norm_first=True)
        self.temporal = nn.TransformerEncoderLayer(dim, heads, hidden, dropout, activation="gelu", batch_first=True,
                                                   norm_first=True)

    def forward(self, x: Tensor) -> Tensor:
        b, t, n, d = x.shape
        x = self.spatial(x.reshape(b * t, n, d)).reshape(b, t, n, d)
        x = self.temporal(x.transpose(1, 2).reshape(b * n, t, d)).reshape(b, n, t, d).transpose(1, 2)
        return x


@ENCODERS.register("echo-video-vit")
class FactorisedVideoViT(nn.Module):
    """A factorised video ViT (ViViT model 3 style) for GPU configs.

    Tubelets ``tubelet x patch_size x patch_size`` are embedded by a strided Conv3d into tokens ``(B, T', N, dim)``
    (``T' = num_frames / tubelet``, ``N = (image_size / patch_size)^2``) plus learned spatial and temporal position
    embeddings; each of ``depth`` blocks attends over the ``N`` patches of a frame, then over the ``T'`` frames of a
    patch position. Per-frame features are the mean over patches after a final LayerNorm; ``forward`` ->
    :func:`temporal_pool`, ``output_dim`` = ``dim`` or ``2 dim``.
    """

    def __init__(self, in_channels: Count = 3, image_size: Count = 112, num_frames: Count = 16, patch_size: Count = 16,
                 tubelet: Count = 2, dim: Count = 384, depth: Count = 6, heads: Count = 6,
                 mlp_ratio: Annotated[float, POSITIVE] = 4.0, dropout: Annotated[float, Range(ge=0, lt=1)] = 0.0,
                 pool: TemporalPool = "mean_std"):
        super().__init__()
        check_choice(pool, TEMPORAL_POOLS, "echo-video-vit pool")
        if image_size % patch_size or num_frames % tubelet or dim % heads:
            raise ConfigError(f"echo-video-vit needs image_size divisible by patch_size, num_frames by tubelet and "
                              f"dim by heads; got {image_size}/{patch_size}, {num_frames}/{tubelet}, {dim}/{heads}")
        self.in_channels, self.pool = in_channels, pool
        self.input_size = (num_frames, image_size, image_size)
        self.embed = nn.Conv3d(in_channels, dim, (tubelet, patch_size, patch_size),
                               stride=(tubelet, patch_size, patch_size))
        self.spatial_pos = nn.Parameter(torch.zeros(1, 1, (image_size // patch_size) ** 2, dim))
        self.temporal_pos = nn.Parameter(torch.zeros(1, num_frames // tubelet, 1, dim))
        nn.init.trunc_normal_(self.spatial_pos, std=0.02)
        nn.init.trunc_normal_(self.temporal_pos, std=0.02)
        self.blocks = nn.ModuleList([_FactorisedBlock(dim, heads, mlp_ratio, dropout) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.map_channels = dim
        self.output_dim = _pooled_dim(dim, pool)

    def tokens(self, x: Tensor) -> Tensor:
        """``(B, C, T, H, W) -> (B, T', N, dim)`` normalised tokens."""
        x = self.embed(check_image(x, 3, self.in_channels, "echo-video-vit", self.input_size))
        x = x.flatten(3).permute(0, 2, 3, 1) + self.spatial_pos + self.temporal_pos  # (B, T', N, dim)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward(self, x: Tensor) -> Tensor:
        return temporal_pool(self.tokens(x).mean(2), self.pool)

    def forward_tokens(self, x: Tensor) -> Tensor:
        """``(B, T' N, dim)``, frame-major."""
        return self.tokens(x).flatten(1, 2)


@ENCODERS.register("echo-frames")
class FrameEncoder(nn.Module):
    """An image encoder applied to every frame of a clip ``(B, C, T, H, W)``; the frame features ``(B, T, D)`` pooled
    over time (``"mean"``: EchoCLIP's video embedding, the mean of its frame embeddings; ``"mean_std"``: ``2D``).

    ``image_encoder`` is an encoder spec ``{name, params}``, e.g. ``{name: imported, params: {path:
    runs/echoclip/towers/image}}`` for EchoCLIP's ConvNeXt imported with ``alignkit import-weights open-clip``.
    """

    def __init__(self, image_encoder: Dict[str, Any], pool: TemporalPool = "mean"):
        super().__init__()
        check_choice(pool, TEMPORAL_POOLS, "echo-frames pool")
        self.image = build_encoder(image_encoder, where="echo-frames.image_encoder")
        self.pool = pool
        self.output_dim = _pooled_dim(int(self.image.output_dim), pool)

    def frame_features(self, x: Tensor) -> Tensor:
        """``(B, C, T, H, W) -> (B, T, D)``: each frame through the image encoder."""
        if x.ndim != 5:
            raise ValueError(f"echo-frames expects clips (B, C, T, H, W); got shape {tuple(x.shape)}")
        b, c, t, h, w = x.shape
        return self.image(x.transpose(1, 2).reshape(b * t, c, h, w)).reshape(b, t, -1)

    def forward(self, x: Tensor) -> Tensor:
        return temporal_pool(self.frame_features(x), self.pool)

