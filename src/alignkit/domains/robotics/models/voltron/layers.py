"""The transformer pieces of Voltron's released models (``voltron/models/util/transformer.py`` of
siddk/voltron-robotics), with its parameter names, so that a released state dict loads key for key.

- :class:`RMSNorm`: ``y = x / max(||x||_2 / sqrt(D), eps) * g`` (eps ``1e-8``; parameter ``g``).
- :class:`SwishGLU`: ``[a, b] = W x + c`` split in halves, ``y = a * silu(b)`` (parameter ``project``).
- :class:`LayerScale`: ``y = gamma * x``.
- :class:`VoltronAttention`: ``softmax(Q K^T / sqrt(d_head)) V`` then ``proj``, with Voltron's masking: a ``(B, L)``
  0/1 mask hides *query rows*, not keys. A row with mask 0 gets all its scores set to the dtype's minimum, so
  its softmax is uniform: its output is the mean of ``V`` over all ``L`` positions. Rows with mask 1 attend to every
  key, padded language tokens included. This is what the released encoders computed, so it is kept.
- :class:`VoltronBlock`: pre-norm ``x += ls(Attn(N(x), mask))``; ``x += ls(MLP(N(x)))`` with V-Cond/V-Dual/V-Gen's
  RMSNorm + SwishGLU + LayerScale, or R-MVP's (MAE) LayerNorm (eps ``1e-6``) + GELU MLP and no LayerScale.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class RMSNorm(nn.Module):
    """``(..., D) -> (..., D)``: ``x / max(||x||_2 * D^-1/2, eps) * g``."""

    def __init__(self, dim: int, eps: float = 1e-8):
        super().__init__()
        self.scale, self.eps = dim ** -0.5, eps
        self.g = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        norm = torch.norm(x, dim=-1, keepdim=True) * self.scale
        return x / norm.clamp(min=self.eps) * self.g


class SwishGLU(nn.Module):
    """``(..., D_in) -> (..., D_out)``: ``a * silu(b)`` with ``[a, b] = project(x)`` (``2 * D_out`` outputs)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.project = nn.Linear(in_dim, 2 * out_dim)

    def forward(self, x: Tensor) -> Tensor:
        projected, gate = self.project(x).tensor_split(2, dim=-1)
        return projected * F.silu(gate)


class LayerScale(nn.Module):
    """``x * gamma`` with a learned ``(D,)`` ``gamma`` (CaiT; Voltron initialises it to 0.1)."""

    def __init__(self, dim: int, init_values: float = 0.1):
        super().__init__()
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class VoltronAttention(nn.Module):
    """Self-attention ``(B, L, D) -> (B, L, D)`` with Voltron's query-row masking (see the module docstring)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"voltron attention width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, H, L, d)
        if mask is not None:  # hidden query rows: uniform attention over all positions
            out = torch.where(mask.bool()[:, None, :, None], out, v.mean(dim=2, keepdim=True))
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class VoltronBlock(nn.Module):
    """One Voltron transformer block (``(B, L, D), mask (B, L) -> (B, L, D)``); ``voltron_style`` True: RMSNorm,
    SwishGLU, LayerScale (V-Cond/V-Dual/V-Gen); False: LayerNorm, GELU (R-MVP). Hidden width ``mlp_ratio * D``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, voltron_style: bool = True):
        super().__init__()
        hidden = int(mlp_ratio * dim)
        self.voltron_style = voltron_style
        self.pre_norm_attn = RMSNorm(dim) if voltron_style else nn.LayerNorm(dim, eps=1e-6)
        self.attn = VoltronAttention(dim, heads)
        self.pre_norm_mlp = RMSNorm(dim) if voltron_style else nn.LayerNorm(dim, eps=1e-6)
        act = SwishGLU(dim, hidden) if voltron_style else nn.Sequential(nn.Linear(dim, hidden), nn.GELU())
        self.mlp = nn.Sequential(act, nn.Identity(), nn.Linear(hidden, dim))  # index 1: Voltron's dropout (0)
        if voltron_style:
            self.layer_scale_attn = LayerScale(dim)
            self.layer_scale_mlp = LayerScale(dim)

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        if self.voltron_style:
            x = x + self.layer_scale_attn(self.attn(self.pre_norm_attn(x), mask))
            return x + self.layer_scale_mlp(self.mlp(self.pre_norm_mlp(x)))
        x = x + self.attn(self.pre_norm_attn(x), mask)
        return x + self.mlp(self.pre_norm_mlp(x))
