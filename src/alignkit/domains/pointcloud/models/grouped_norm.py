"""The end of a PointNet++ level in one step: ``max_k ReLU(BatchNorm(z))`` over groups of k rows.

A set-abstraction level ends with ``Linear - BatchNorm - ReLU`` over all ``G k`` grouped rows and a
max over each group's k rows. Written out, the normalised (G k, C) tensor is built, rectified, reduced,
and in the backward an equally large gradient is filled, scattered, rectified and normalised again:
most of a CPU training step of a small PointNet++ goes there, not into its matmuls.

Batch norm is a per-channel affine map ``y = a z + b`` once its statistics are known (``a = gamma /
sqrt(var + eps)``, ``b = beta - a mean``), and an increasing map commutes with the max: so the level's
output is ``ReLU(a z* + b)`` with ``z*`` the maximum of z over the group where ``a >= 0`` and the minimum
where ``a < 0``. The forward reads z twice (statistics, selection) and writes only (G, C) values.
The backward is batch norm's, with the upstream gradient non-zero only at the selected rows:
``dz = a (dy - mean(dy) - xhat mean(dy xhat))`` is a per-channel affine map of z (one pass) plus
``a dy`` at the selected rows. Values and gradients equal the module path up to rounding
(statistics are accumulated in double on CPU); the running statistics are updated as
:class:`torch.nn.BatchNorm1d` does, ``num_batches_tracked`` included.

On CPU the statistics and the selection run as compiled loops (C source in :mod:`..native_norm_source`, built
into :mod:`..ops_native`'s library); elsewhere, or when z holds a NaN, the same computation runs in PyTorch. On CPU
the level's linear layers also run fused with their batch norms (:mod:`.linear_norm`), on the compiled passes and
the batch norm algebra this module holds.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

import torch
from torch import Tensor, nn

from alignkit.domains.pointcloud import ops_native


# ---------------------------------------------------------------- the compiled passes (ops_native's library)

def batch_norm_stats(z: Tensor) -> Tuple[Tensor, Tensor]:
    """Per-channel (sum, sum of squares) of the rows of z (R, C), float64, accumulated in double."""
    z = z.detach().contiguous()
    out = torch.empty(2 * z.shape[1], dtype=torch.float64)
    ops_native.call("bn_stats", z.dtype, z.data_ptr(), z.shape[0], z.shape[1], out.data_ptr())
    return out[:z.shape[1]], out[z.shape[1]:]


def index_dtype(dtype: torch.dtype) -> torch.dtype:
    """The integer of ``dtype``'s width: the index type of :func:`group_select` and :func:`group_unselect`."""
    return torch.int32 if dtype == torch.float32 else torch.int64


def group_select(z: Tensor, sign: Tensor) -> Optional[Tuple[Tensor, Tensor]]:
    """For z (G, k, C) and sign (C,) of +-1: ``sign * z`` maximised over k -> (values (G, C) of z, first
    arg (G, C) of :func:`index_dtype`); None when z holds a NaN (the caller's reference path then propagates it)."""
    z = z.detach().contiguous()
    G, k, C = z.shape
    sign = sign.to(z.dtype).contiguous()
    out = torch.empty(G, C, dtype=z.dtype)
    idx = torch.empty(G, C, dtype=index_dtype(z.dtype))
    suffix, _ = ops_native.DTYPES[z.dtype]
    select = getattr(ops_native.library(), f"group_select_{suffix}")
    nan = select(z.data_ptr(), G, k, C, sign.data_ptr(), out.data_ptr(), idx.data_ptr(), torch.get_num_threads())
    return None if nan else (out * sign, idx)


def group_unselect(z: Tensor, slope: Tensor, offset: Tensor, rows: Tensor, add: Tensor) -> Tensor:
    """``slope * z + offset`` (z (G, k, C); slope, offset (C,)) plus ``add`` (G, C) at row ``rows`` (G, C) of each
    group and channel: the gradient of :func:`group_select`'s pick through a batch norm, in one pass."""
    z = z.detach().contiguous()
    G, k, C = z.shape
    slope, offset = slope.to(z.dtype).contiguous(), offset.to(z.dtype).contiguous()
    rows, add = rows.to(index_dtype(z.dtype)).contiguous(), add.to(z.dtype).contiguous()
    dz = torch.empty_like(z)
    ops_native.call("group_unselect", z.dtype, z.data_ptr(), G, k, C, slope.data_ptr(), offset.data_ptr(),
                    rows.data_ptr(), add.data_ptr(), dz.data_ptr())
    return dz


def _vec(v: Tensor, dtype: torch.dtype) -> Tensor:
    return v.detach().to(dtype).contiguous()


def bn_relu_forward(z: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """``max(scale * z + shift, 0)`` for rows z (R, C), per-channel scale and shift (C,)."""
    z = z.detach().contiguous()
    scale, shift, out = _vec(scale, z.dtype), _vec(shift, z.dtype), torch.empty_like(z)
    ops_native.call("bnrelu_forward", z.dtype, z.data_ptr(), z.shape[0], z.shape[1], scale.data_ptr(),
                    shift.data_ptr(), out.data_ptr())
    return out


def bn_relu_sums(grad: Tensor, z: Tensor, scale: Tensor, shift: Tensor, mean: Tensor) -> Tuple[Tensor, Tensor]:
    """Per channel, in float64: ``sum dy`` and ``sum dy (z - mean)`` with ``dy = grad`` where :func:`bn_relu_forward`'s
    ``scale * z + shift > 0`` (recomputed from z, same roundings: the output is not read)."""
    grad, z = grad.contiguous(), z.detach().contiguous()
    scale, shift, mean = _vec(scale, z.dtype), _vec(shift, z.dtype), _vec(mean, z.dtype)
    out = torch.empty(2 * z.shape[1], dtype=torch.float64)
    ops_native.call("bnrelu_sums", z.dtype, grad.data_ptr(), z.data_ptr(), z.shape[0], z.shape[1], scale.data_ptr(),
                    shift.data_ptr(), mean.data_ptr(), out.data_ptr())
    return out[:z.shape[1]], out[z.shape[1]:]


def bn_relu_backward(grad: Tensor, z: Tensor, scale: Tensor, shift: Tensor, slope: Tensor, offset: Tensor,
                     out: Optional[Tensor] = None) -> Tensor:
    """``scale * grad * (scale * z + shift > 0) + slope * z + offset`` over rows (R, C): batch norm + ReLU's input
    gradient (into ``out`` when given, a contiguous (R, C) tensor)."""
    grad, z = grad.contiguous(), z.detach().contiguous()
    scale, shift, slope, offset = (_vec(v, z.dtype) for v in (scale, shift, slope, offset))
    out = torch.empty_like(z) if out is None else out
    ops_native.call("bnrelu_backward", z.dtype, grad.data_ptr(), z.data_ptr(), z.shape[0], z.shape[1],
                    scale.data_ptr(), shift.data_ptr(), slope.data_ptr(), offset.data_ptr(), out.data_ptr())
    return out


def _moments(total: Tensor, squares: Tensor, rows: int, dtype: torch.dtype) -> Tuple[Tensor, Tensor]:
    """Biased mean and variance in ``dtype`` from float64 per-channel sums and sums of squares over ``rows`` rows."""
    mean = total / rows
    var = (squares / rows - mean * mean).clamp_min(0)
    return mean.to(dtype), var.to(dtype)


def _stats(z: Tensor, native: bool) -> Tuple[Tensor, Tensor]:
    """Biased per-channel mean and variance of z (R, C), in z's dtype."""
    if native:
        return _moments(*batch_norm_stats(z), z.shape[0], z.dtype)
    var, mean = torch.var_mean(z, dim=0, unbiased=False)
    return mean, var


def _select(z3: Tensor, sign: Tensor, native: bool) -> Tuple[Tensor, Tensor]:
    """z3 (G, k, C): per (group, channel) the value of z maximising ``sign * z`` over k and its row."""
    if native:
        picked = group_select(z3, sign)
        if picked is not None:
            return picked
    top, top_idx = z3.max(dim=1)  # NaN: propagated, as the module path does
    if bool((sign > 0).all()):
        return top, top_idx
    low, low_idx = z3.min(dim=1)
    keep = sign > 0
    return torch.where(keep, top, low), torch.where(keep, top_idx, low_idx)


def _affine(weight: Optional[Tensor], bias: Optional[Tensor], mean: Tensor, var: Tensor, eps: float
            ) -> Tuple[Tensor, Tensor, Tensor]:
    """Batch norm as the per-channel map ``scale z + shift``: (invstd, scale, shift)."""
    invstd = torch.rsqrt(var + eps)
    scale = invstd if weight is None else weight * invstd
    shift = -mean * scale if bias is None else bias - mean * scale
    return invstd, scale, shift


def _input_grad_map(scale: Tensor, invstd: Tensor, mean: Tensor, dy_sum: Tensor, dyx_sum: Tensor, rows: int,
                    batch_stats: bool) -> Tuple[Tensor, Tensor]:
    """(slope, offset): batch norm's input gradient is ``scale dy + slope z + offset``; the last two come through the
    batch mean and variance (``dy_sum = sum dy``, ``dyx_sum = sum dy xhat`` over ``rows`` rows), zero with running
    statistics."""
    if not batch_stats:
        return torch.zeros_like(scale), torch.zeros_like(scale)
    slope = -scale * invstd * dyx_sum / rows
    return slope, -scale * dy_sum / rows - slope * mean


def _picked_sums(grad: Tensor, out: Tensor, picked: Tensor, mean: Tensor, invstd: Tensor
                 ) -> Tuple[Tensor, Tensor, Tensor]:
    """At the selected rows of a fused max: ``dy = grad (out > 0)`` (G, C), ``sum dy`` and ``sum dy xhat``."""
    dy = grad * (out > 0)
    return dy, dy.sum(0), (dy * (picked - mean) * invstd).sum(0)


class _BatchNormReluMax(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, z3: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], mean: Tensor,
                var: Tensor, eps: float, batch_stats: bool, native: bool) -> Tensor:
        invstd, scale, shift = _affine(weight, bias, mean, var, eps)
        picked, rows = _select(z3, torch.where(scale < 0, -1.0, 1.0).to(z3.dtype), native)   # the min where scale < 0
        out = torch.relu(torch.addcmul(shift, picked, scale))
        ctx.save_for_backward(z3, rows, picked, out, mean, invstd, scale)
        ctx.batch_stats, ctx.native, ctx.affine = batch_stats, native, (weight is not None, bias is not None)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tuple[Optional[Tensor], ...]:
        z3, rows, picked, out, mean, invstd, scale = ctx.saved_tensors
        G, k, C = z3.shape
        dy, dy_sum, dyx_sum = _picked_sums(grad, out, picked, mean, invstd)
        dz: Optional[Tensor] = None
        if ctx.needs_input_grad[0]:
            slope, offset = _input_grad_map(scale, invstd, mean, dy_sum, dyx_sum, G * k, ctx.batch_stats)
            if ctx.native and rows.dtype == index_dtype(z3.dtype):
                dz = group_unselect(z3, slope, offset, rows, scale * dy)
            else:
                dz = torch.addcmul(offset, z3, slope)
                dz.scatter_add_(1, rows.long().unsqueeze(1), (scale * dy).unsqueeze(1))
        weight_grad = dyx_sum if ctx.affine[0] and ctx.needs_input_grad[1] else None
        bias_grad = dy_sum if ctx.affine[1] and ctx.needs_input_grad[2] else None
        return dz, weight_grad, bias_grad, None, None, None, None, None


def _statistics(norm: nn.BatchNorm1d, rows: int, moments: Callable[[], Tuple[Tensor, Tensor]]
                ) -> Tuple[Tensor, Tensor, bool]:
    """(mean, var, batch_stats) that ``norm`` would normalise a batch of ``rows`` rows with (``moments()``: their
    biased mean and variance, called only when the batch's are used); updates its running statistics and
    ``num_batches_tracked`` as :class:`torch.nn.BatchNorm1d`'s forward does."""
    batch_stats = norm.training or norm.running_mean is None
    factor = 0.0
    if norm.training and norm.track_running_stats and norm.num_batches_tracked is not None:
        norm.num_batches_tracked.add_(1)
        factor = 1.0 / float(norm.num_batches_tracked) if norm.momentum is None else float(norm.momentum)
    if not batch_stats:
        assert norm.running_mean is not None and norm.running_var is not None
        return norm.running_mean.detach(), norm.running_var.detach(), False
    with torch.no_grad():
        mean, var = moments()
        if norm.training and norm.running_mean is not None and norm.running_var is not None:
            norm.running_mean.mul_(1 - factor).add_(mean, alpha=factor)
            norm.running_var.mul_(1 - factor).add_(var * (rows / max(rows - 1, 1)), alpha=factor)
    return mean, var, True


def _check_backend(z: Tensor, backend: str) -> bool:
    """True to use the compiled loops for z."""
    if backend not in ("auto", "native", "torch"):
        raise ValueError(f"unknown backend {backend!r}: use 'auto', 'native' or 'torch'")
    native = backend != "torch" and ops_native.supports(z)
    if backend == "native" and not native:
        raise ValueError("backend 'native' needs a CPU float32/float64 tensor and a C compiler; use 'auto'")
    return native


def batch_norm_relu_max(z: Tensor, norm: nn.BatchNorm1d, k: int, backend: str = "auto") -> Tensor:
    """``ReLU(norm(z)).view(G, k, C).amax(1)`` for z (G k, C) without the (G k, C) intermediates.

    Uses and updates ``norm`` exactly as calling it would (training: batch statistics, running
    statistics updated with its momentum; eval: running statistics). ``backend``: ``"native"``
    (compiled CPU loops), ``"torch"``, or ``"auto"`` (native for CPU float32/float64 when it builds).
    """
    if z.dim() != 2 or z.shape[0] % k:
        raise ValueError(f"batch_norm_relu_max expects z of shape (G * k, C) with k = {k}; got {tuple(z.shape)}")
    native = _check_backend(z, backend)
    mean, var, batch_stats = _statistics(norm, z.shape[0], lambda: _stats(z.detach(), native))
    z3 = z.reshape(z.shape[0] // k, k, z.shape[1])
    return _BatchNormReluMax.apply(z3, norm.weight, norm.bias, mean, var, norm.eps, batch_stats, native)
