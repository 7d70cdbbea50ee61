"""Attention building blocks of the robotics models: multi-head attention with a boolean mask, a pre-norm
transformer block, and the Flamingo perceiver resampler that GR-1 uses to pool patch features into a few tokens.

Masks are boolean with ``True`` where a query may attend to a key, shaped ``(B, Lq, Lk)`` or anything that
broadcasts to it (``(B, 1, Lk)`` for key padding, ``(Lq, Lk)`` for one pattern shared by the batch).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alignkit.core.registry import ConfigError


def feed_forward(dim: int, mlp_ratio: float, dropout: float = 0.0) -> nn.Sequential:
    """``x -> W_2 dropout(gelu(W_1 x))`` with hidden width ``mlp_ratio * dim``."""
    hidden = int(dim * mlp_ratio)
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))


class Attention(nn.Module):
    """Multi-head attention ``softmax(Q K^T / sqrt(d_head) + log mask) V`` followed by an output projection.

    ``forward(x (B, Lq, D), context (B, Lk, D) = x, mask)``: queries from ``x``, keys and values from ``context``.
    A query row whose mask is all False would be undefined; callers keep at least one key per row.
    """

    def __init__(self, dim: int, heads: int, dim_head: Optional[int] = None, dropout: float = 0.0):
        super().__init__()
        if dim_head is None:
            if dim % heads:
                raise ConfigError(f"attention width {dim} is not divisible by {heads} heads; change the width or heads")
            dim_head = dim // heads
        self.heads, self.dim_head, self.dropout = heads, dim_head, dropout
        self.to_q = nn.Linear(dim, heads * dim_head)
        self.to_kv = nn.Linear(dim, 2 * heads * dim_head)
        self.out = nn.Linear(heads * dim_head, dim)

    def forward(self, x: Tensor, context: Optional[Tensor] = None, mask: Optional[Tensor] = None) -> Tensor:
        context = x if context is None else context
        b, lq, lk = x.shape[0], x.shape[1], context.shape[1]
        q = self.to_q(x).view(b, lq, self.heads, self.dim_head).transpose(1, 2)
        k, v = self.to_kv(context).view(b, lk, 2, self.heads, self.dim_head).permute(2, 0, 3, 1, 4)
        if mask is not None:
            mask = mask.unsqueeze(-3) if mask.ndim == 3 else mask  # (B, 1, Lq, Lk): shared by the heads
        h = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        return self.out(h.transpose(1, 2).reshape(b, lq, self.heads * self.dim_head))


class TransformerBlock(nn.Module):
    """Pre-norm block: ``x += Attn(LN(x), mask)``; ``x += FFN(LN(x))`` (``(B, L, D) -> (B, L, D)``)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout=dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = feed_forward(dim, mlp_ratio, dropout)

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        x = x + self.attn(self.norm1(x), mask=mask)
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    """``depth`` :class:`TransformerBlock` s sharing one mask, then a final LayerNorm (``forward(x, mask, layers=k)``:
    the residual stream after the first ``k`` blocks instead, without the norm; ``k = 0`` is the input)."""

    def __init__(self, dim: int, depth: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        self.blocks = nn.ModuleList([TransformerBlock(dim, heads, mlp_ratio, dropout) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, mask: Optional[Tensor] = None, layers: Optional[int] = None) -> Tensor:
        if layers is not None and not 0 <= layers <= len(self.blocks):
            raise ValueError(f"layers {layers} is outside 0..{len(self.blocks)} (the transformer's depth)")
        for block in self.blocks[:layers]:
            x = block(x, mask)
        return self.norm(x) if layers is None else x


class PerceiverLayer(nn.Module):
    """Latents attend to ``[inputs; latents]``: ``z += Attn(LN(z), [LN'(x); LN(z)])``; ``z += FFN(LN(z))``."""

    def __init__(self, dim: int, heads: int, dim_head: int, mlp_ratio: float):
        super().__init__()
        self.norm_inputs = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dim_head=dim_head)
        self.norm_ff = nn.LayerNorm(dim)
        self.mlp = feed_forward(dim, mlp_ratio)

    def forward(self, latents: Tensor, inputs: Tensor, mask: Optional[Tensor]) -> Tensor:
        z = self.norm_latents(latents)
        latents = latents + self.attn(z, context=torch.cat([self.norm_inputs(inputs), z], dim=1), mask=mask)
        return latents + self.mlp(self.norm_ff(latents))


class PerceiverResampler(nn.Module):
    """Flamingo's perceiver resampler: ``(B, N, dim)`` tokens -> ``(B, num_latents, dim)``.

    ``num_latents`` learned queries ``z_0`` pass ``depth`` :class:`PerceiverLayer` s that cross-attend to the
    inputs (and to themselves), then a LayerNorm. ``mask`` ``(B, N)`` (True = real token) hides padded inputs;
    ``offset`` ``(B, dim)`` is added to the queries, ``z_0 = Z + offset`` (e.g. a projected instruction, so that
    the latents pool what the instruction asks for).
    GR-1 uses 9 latents, depth 3, 4 heads of 128 over ViT-B patch features.
    """

    def __init__(self, dim: int, num_latents: int = 9, depth: int = 2, heads: int = 4, dim_head: int = 32,
                 mlp_ratio: float = 4.0):
        super().__init__()
        if num_latents < 1 or depth < 1:
            raise ConfigError(f"perceiver resampler needs num_latents >= 1 and depth >= 1; got {num_latents}, {depth}")
        self.latents = nn.Parameter(torch.randn(num_latents, dim) * 0.02)
        self.layers = nn.ModuleList([PerceiverLayer(dim, heads, dim_head, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.num_latents = num_latents

    def forward(self, inputs: Tensor, mask: Optional[Tensor] = None, offset: Optional[Tensor] = None) -> Tensor:
        b = inputs.shape[0]
        latents = self.latents.expand(b, -1, -1) if offset is None else self.latents + offset[:, None]
        key_mask = None
        if mask is not None:  # latents always see each other
            key_mask = torch.cat([mask.bool(), mask.new_ones(b, self.num_latents, dtype=torch.bool)], dim=1)[:, None]
        for layer in self.layers:
            latents = layer(latents, inputs, key_mask)
        return self.norm(latents)
