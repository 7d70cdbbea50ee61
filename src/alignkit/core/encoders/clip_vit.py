"""open_clip's vision transformer as a tower (``"clip-vit"``), in open_clip's state-dict layout.

Image ``x`` ``(B, 3, H, W)``, patch size ``p``, grid ``n = (H/p)(W/p)``, width ``w``:

    t = conv1(x) -> (B, n, w)                       patch embedding (no bias unless ``patch_bias``)
    t = [c; t] + E_pos                               class token ``c`` (``class_token``), E_pos (n + 1, w)
    t = ln_pre(t); t = blocks(t)                     pre-norm residual attention blocks
    t_l <- t_l + ls_1 * MHA(ln_1(t_l)); t_l <- t_l + ls_2 * c_proj(act(c_fc(ln_2(t_l))))
    pooled = ln_post(t)[:, 0] ('tok') or mean_i ln_post(t)[:, 1:] ('avg')   (open_clip order)
             ln_post(t[:, 0] / mean_i t[:, 1:]) with ``final_ln_after_pool``
    z = pooled @ proj -> (B, output_dim)             ``proj`` (w, output_dim), absent with ``output_dim=None``

``act`` is GELU (erf) or QuickGELU ``x sigmoid(1.702 x)`` (OpenAI weights). ``forward_tokens`` returns the patch
tokens ``ln_post(t)[:, 1:]`` ``(B, n, w)`` as open_clip's ``output_tokens`` does. Parameter names follow
open_clip's ``VisionTransformer`` (``conv1``, ``class_embedding``, ``positional_embedding``, ``ln_pre``,
``transformer.resblocks.{i}.{ln_1, attn.in_proj_weight, attn.out_proj, ls_1.gamma, ln_2, mlp.c_fc, mlp.c_proj,
ls_2.gamma}``, ``ln_post``, ``proj``) so an open_clip checkpoint maps by dropping its ``visual.`` prefix.
``patch_bias``, ``ln_pre=False`` and ``norm_eps=1e-6`` describe timm's ViT (BiomedCLIP's image trunk).

The residual attention block and transformer here are shared with :mod:`~alignkit.core.encoders.clip_text`.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Annotated, Optional

import torch
from torch import Tensor, nn

from alignkit.core.encoders.image import check_image
from alignkit.core.params import AT_LEAST_ONE, OneOf, Range, check_choice
from alignkit.core.registry import ENCODERS, ConfigError

CLIP_ACTIVATIONS = ("gelu", "quick_gelu")
VIT_POOLS = ("tok", "avg")


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)``: the activation of OpenAI's CLIP weights."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class LayerScale(nn.Module):
    """``x * gamma``, ``gamma`` ``(dim,)`` (initialised to ``init_value``)."""

    def __init__(self, dim: int, init_value: float):
        super().__init__()
        self.gamma = nn.Parameter(init_value * torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class ResidualAttentionBlock(nn.Module):
    """Pre-norm block: ``x + ls_1(MHA(ln_1 x))`` then ``x + ls_2(c_proj(act(c_fc(ln_2 x))))``, ``(B, L, w)``."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, ls_init_value: Optional[float] = None,
                 act: str = "gelu", norm_eps: float = 1e-5):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=norm_eps)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ls_1 = LayerScale(width, ls_init_value) if ls_init_value is not None else nn.Identity()
        self.ln_2 = nn.LayerNorm(width, eps=norm_eps)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, hidden)),
                                              ("gelu", QuickGELU() if act == "quick_gelu" else nn.GELU()),
                                              ("c_proj", nn.Linear(hidden, width))]))
        self.ls_2 = LayerScale(width, ls_init_value) if ls_init_value is not None else nn.Identity()

    def forward(self, x: Tensor, attn_mask: Optional[Tensor] = None) -> Tensor:
        h = self.ln_1(x)
        x = x + self.ls_1(self.attn(h, h, h, need_weights=False, attn_mask=attn_mask)[0])
        return x + self.ls_2(self.mlp(self.ln_2(x)))


class Transformer(nn.Module):
    """``layers`` :class:`ResidualAttentionBlock` s (``resblocks``) over ``(B, L, width)``."""

    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float = 4.0,
                 ls_init_value: Optional[float] = None, act: str = "gelu", norm_eps: float = 1e-5):
        super().__init__()
        check_choice(act, CLIP_ACTIVATIONS, "clip transformer act")
        if width % heads:
            raise ConfigError(f"clip transformer width {width} is not divisible by heads {heads}")
        self.resblocks = nn.ModuleList([ResidualAttentionBlock(width, heads, mlp_ratio, ls_init_value, act, norm_eps)
                                        for _ in range(layers)])

    def forward(self, x: Tensor, attn_mask: Optional[Tensor] = None) -> Tensor:
        for block in self.resblocks:
            x = block(x, attn_mask)
        return x


@ENCODERS.register("clip-vit")
class CLIPViT(nn.Module):
    """open_clip's ``VisionTransformer``: ``forward(x (B, 3, H, W)) -> (B, output_dim)`` (see the module docstring).

    Args:
        image_size, patch_size: input side and patch side in pixels (``image_size`` divisible by ``patch_size``).
        width, layers, heads, mlp_ratio: transformer width, depth, attention heads, MLP hidden = ``width * mlp_ratio``.
        output_dim: the projection ``proj`` ``(width, output_dim)``; None: no projection (``output_dim = width``).
        act: ``"gelu"`` or ``"quick_gelu"``. ls_init_value: layer scale ``ls_1``/``ls_2`` (None: none).
        pool: ``"tok"`` (class token) or ``"avg"`` (mean of patch tokens). final_ln_after_pool: ``ln_post`` after
            pooling instead of before. class_token: prepend the learned class token.
        ln_pre: a LayerNorm before the blocks. patch_bias: a bias in ``conv1``. norm_eps: LayerNorm epsilon.
    """

    def __init__(self, image_size: Annotated[int, AT_LEAST_ONE] = 224, patch_size: Annotated[int, AT_LEAST_ONE] = 16,
                 width: Annotated[int, AT_LEAST_ONE] = 768, layers: Annotated[int, AT_LEAST_ONE] = 12,
                 heads: Annotated[int, AT_LEAST_ONE] = 12, mlp_ratio: Annotated[float, Range(gt=0)] = 4.0,
                 output_dim: Optional[Annotated[int, AT_LEAST_ONE]] = 512,
                 act: Annotated[str, OneOf(CLIP_ACTIVATIONS)] = "gelu", ls_init_value: Optional[float] = None,
                 pool: Annotated[str, OneOf(VIT_POOLS)] = "tok", final_ln_after_pool: bool = False,
                 class_token: bool = True, ln_pre: bool = True, patch_bias: bool = False,
                 norm_eps: Annotated[float, Range(gt=0)] = 1e-5):
        super().__init__()
        check_choice(pool, VIT_POOLS, "clip-vit pool")
        if image_size % patch_size:
            raise ConfigError(f"clip-vit image_size {image_size} is not divisible by patch_size {patch_size}")
        if pool == "tok" and not class_token:
            raise ConfigError("clip-vit pool 'tok' needs class_token: true; use pool: avg")
        self.image_size, self.patch_size, self.width = int(image_size), int(patch_size), int(width)
        self.pool, self.final_ln_after_pool = pool, bool(final_ln_after_pool)
        self.num_prefix = 1 if class_token else 0
        grid = (image_size // patch_size) ** 2
        scale = width ** -0.5
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=patch_bias)
        self.class_embedding = nn.Parameter(scale * torch.randn(width)) if class_token else None
        self.positional_embedding = nn.Parameter(scale * torch.randn(grid + self.num_prefix, width))
        self.ln_pre = nn.LayerNorm(width, eps=norm_eps) if ln_pre else nn.Identity()
        self.transformer = Transformer(width, layers, heads, mlp_ratio, ls_init_value, act, norm_eps)
        self.ln_post = nn.LayerNorm(width, eps=norm_eps)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim)) if output_dim else None
        self.output_dim = int(output_dim or width)

    def _tokens(self, x: Tensor) -> Tensor:
        """``(B, 3, H, W) -> (B, prefix + n, width)`` after the blocks (before ``ln_post``)."""
        check_image(x, 2, 3, "clip-vit", (self.image_size, self.image_size))
        t = self.conv1(x).flatten(2).transpose(1, 2)
        if self.class_embedding is not None:
            t = torch.cat([self.class_embedding.to(t.dtype).expand(t.shape[0], 1, -1), t], dim=1)
        t = self.ln_pre(t + self.positional_embedding.to(t.dtype))
        return self.transformer(t)

    def _pool(self, t: Tensor) -> Tensor:
        if self.final_ln_after_pool:
            return self.ln_post(t[:, 0] if self.pool == "tok" else t[:, self.num_prefix:].mean(1))
        t = self.ln_post(t)
        return t[:, 0] if self.pool == "tok" else t[:, self.num_prefix:].mean(1)

    def forward(self, x: Tensor) -> Tensor:
        pooled = self._pool(self._tokens(x))
        return pooled @ self.proj if self.proj is not None else pooled

    def forward_tokens(self, x: Tensor) -> Tensor:
        """``(B, n, width)`` patch tokens (class token dropped); ``ln_post`` applied unless
        ``final_ln_after_pool`` (as open_clip's ``output_tokens``)."""
        t = self._tokens(x)
        return (t if self.final_ln_after_pool else self.ln_post(t))[:, self.num_prefix:]


__all__ = ["CLIP_ACTIVATIONS", "VIT_POOLS", "QuickGELU", "LayerScale", "ResidualAttentionBlock", "Transformer",
           "CLIPViT"]
