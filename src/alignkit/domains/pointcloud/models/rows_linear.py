"""The linear layers of a PointNet++ level on CPU: ``x W^T + b`` over the (G k, K) grouped rows.

The shared MLP of a level multiplies tall inputs by narrow weights (K and C of 32-128 channels, 65,536 rows at
the demo size's first level). MKL's sgemm (``torch.mm``, what ``nn.Linear`` runs) reaches 40-57 GFLOP/s on those
shapes on one core here; oneDNN's linear primitive, ``torch.ops.mkldnn._linear_pointwise`` (the op PyTorch's
inductor emits for a CPU linear layer), 60-73 from about 16,384 rows (below that, no faster than MKL). For an
input of at most :data:`NARROW` columns (a first level's xyz offsets), BLAS runs ``g^T x`` several times slower
than ``(x^T g)^T``. :func:`dense` is the product outside autograd, :func:`linear_rows` a linear layer through both.
Values equal ``nn.Linear``'s up to rounding; oneDNN is used for CPU float32 only when it is present and agrees
with ``F.linear`` on a probe (:func:`onednn_linear`), ``F.linear`` otherwise.
"""
from __future__ import annotations

import functools
from typing import Any, Optional, Tuple

import torch
from torch import Tensor, nn

NARROW = 8
"""Inputs with at most this many columns take the weight gradient as ``(x^T g)^T``."""


@functools.lru_cache(maxsize=None)
def onednn_linear() -> bool:
    """True when this PyTorch has oneDNN's linear op and it equals ``F.linear`` on a probe."""
    try:
        op = torch.ops.mkldnn._linear_pointwise
        if not torch.backends.mkldnn.is_available():
            return False
        gen = torch.Generator().manual_seed(0)
        x, w, b = (torch.randn(37, 5, generator=gen), torch.randn(3, 5, generator=gen),
                   torch.randn(3, generator=gen))
        return bool(torch.allclose(op(x, w, b, "none", [], ""), nn.functional.linear(x, w, b), atol=1e-5,
                                   rtol=1e-5))
    except (AttributeError, RuntimeError):
        return False


ONEDNN_ROWS = 16384
"""Fewer rows than this take ``F.linear``: oneDNN's op costs ~25 us a call more than MKL's and is no faster there."""


def dense(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """``x W^T + b`` for rows x (R, K), weight (C, K), outside autograd: oneDNN's linear for CPU float32 inputs of
    more than :data:`NARROW` columns and at least :data:`ONEDNN_ROWS` rows (see the module docstring), ``F.linear``
    otherwise."""
    if (x.dtype == weight.dtype == torch.float32 and x.device.type == "cpu" and x.shape[-1] > NARROW
            and x.numel() >= ONEDNN_ROWS * x.shape[-1] and onednn_linear()):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return nn.functional.linear(x, weight, bias)


class _RowsLinear(torch.autograd.Function):
    """``x W^T + b`` through :func:`dense` both ways (``dx = g W`` too), the weight gradient as ``(x^T g)^T`` for a
    narrow x and ``g^T x`` otherwise."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return dense(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tuple[Optional[Tensor], ...]:
        x, weight = ctx.saved_tensors
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = dense(grad, weight.t().contiguous())
        if ctx.needs_input_grad[1]:
            dw = (x.t() @ grad).t() if x.shape[1] <= NARROW else grad.t() @ x
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = grad.sum(0)
        return dx, dw, db


def linear_rows(x: Tensor, linear: nn.Linear) -> Tensor:
    """``linear(x)`` for rows x (R, K) through :class:`_RowsLinear` (same values up to rounding)."""
    if x.dim() != 2:
        return linear(x)
    return _RowsLinear.apply(x, linear.weight, linear.bias)
