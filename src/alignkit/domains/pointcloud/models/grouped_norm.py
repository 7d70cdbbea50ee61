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

:func:`linear_batch_norm_relu_max` takes the level's last linear layer in too: its backward never forms the
(G k, C) gradient of the linear output (the Gram matrix of the layer's input and the selected rows suffice).
:func:`batch_norm_relu` (the other BatchNorm - ReLU pairs) and :func:`linear_rows` (a 3-column first layer) are the
level's other CPU passes.

On CPU the statistics and the selection run as compiled loops (C source in :mod:`..native_norm_source`, built
into :mod:`..ops_native`'s library); elsewhere, or when z holds a NaN, the same computation runs in PyTorch.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

import torch
from torch import Tensor, nn

from alignkit.domains.pointcloud import ops_native
from alignkit.domains.pointcloud.models.rows_linear import NARROW, dense


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


def bn_relu_sums(grad: Tensor, y: Tensor, z: Tensor, mean: Tensor) -> Tuple[Tensor, Tensor]:
    """Per channel, in float64: ``sum dy`` and ``sum dy (z - mean)`` with ``dy = grad * (y > 0)``."""
    grad, y, z = grad.contiguous(), y.detach().contiguous(), z.detach().contiguous()
    mean, out = _vec(mean, z.dtype), torch.empty(2 * z.shape[1], dtype=torch.float64)
    ops_native.call("bnrelu_sums", z.dtype, grad.data_ptr(), y.data_ptr(), z.data_ptr(), z.shape[0], z.shape[1],
                    mean.data_ptr(), out.data_ptr())
    return out[:z.shape[1]], out[z.shape[1]:]


def bn_relu_backward(grad: Tensor, y: Tensor, z: Tensor, scale: Tensor, slope: Tensor, offset: Tensor) -> Tensor:
    """``scale * grad * (y > 0) + slope * z + offset`` over rows (R, C): batch norm + ReLU's input gradient."""
    grad, y, z = grad.contiguous(), y.detach().contiguous(), z.detach().contiguous()
    scale, slope, offset = _vec(scale, z.dtype), _vec(slope, z.dtype), _vec(offset, z.dtype)
    out = torch.empty_like(z)
    ops_native.call("bnrelu_backward", z.dtype, grad.data_ptr(), y.data_ptr(), z.data_ptr(), z.shape[0],
                    z.shape[1], scale.data_ptr(), slope.data_ptr(), offset.data_ptr(), out.data_ptr())
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


def _pick(z3: Tensor, scale: Tensor, shift: Tensor, native: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """``max_k ReLU(scale z + shift)`` of z3 (G, k, C): (the picked z, their rows, the output), picking the max of z
    where ``scale >= 0`` and the min where it is negative."""
    picked, rows = _select(z3, torch.where(scale < 0, -1.0, 1.0).to(z3.dtype), native)
    return picked, rows, torch.relu(torch.addcmul(shift, picked, scale))


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
        picked, rows, out = _pick(z3, scale, shift, native)
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


class _BatchNormRelu(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, z: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], mean: Tensor, var: Tensor,
                eps: float, batch_stats: bool) -> Tensor:
        invstd, scale, shift = _affine(weight, bias, mean, var, eps)
        out = bn_relu_forward(z, scale, shift)
        ctx.save_for_backward(z, out, mean, invstd, scale)
        ctx.batch_stats, ctx.affine = batch_stats, (weight is not None, bias is not None)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tuple[Optional[Tensor], ...]:
        z, out, mean, invstd, scale = ctx.saved_tensors
        dy_sum, moment = bn_relu_sums(grad, out, z, mean)
        dy_sum, dyx_sum = dy_sum.to(z.dtype), (moment * invstd).to(z.dtype)
        dz: Optional[Tensor] = None
        if ctx.needs_input_grad[0]:
            slope, offset = _input_grad_map(scale, invstd, mean, dy_sum, dyx_sum, z.shape[0], ctx.batch_stats)
            dz = bn_relu_backward(grad, out, z, scale, slope, offset)
        weight_grad = dyx_sum if ctx.affine[0] and ctx.needs_input_grad[1] else None
        bias_grad = dy_sum if ctx.affine[1] and ctx.needs_input_grad[2] else None
        return dz, weight_grad, bias_grad, None, None, None, None


def batch_norm_relu(z: Tensor, norm: nn.BatchNorm1d) -> Tensor:
    """``ReLU(norm(z))`` for rows z (R, C) in two compiled passes forward (statistics, apply) and two backward
    (sums, gradient) instead of batch norm's and ReLU's separate ones; ``norm`` used and updated as calling it
    would. Needs the compiled loops (:func:`ops_native.supports`); callers use the modules otherwise."""
    if z.dim() != 2:
        raise ValueError(f"batch_norm_relu expects rows (R, C); got {tuple(z.shape)}")
    _check_backend(z, "native")
    mean, var, batch_stats = _statistics(norm, z.shape[0], lambda: _stats(z.detach(), True))
    return _BatchNormRelu.apply(z.contiguous(), norm.weight, norm.bias, mean, var, norm.eps, batch_stats)


class _NarrowBatchNormRelu(torch.autograd.Function):
    """``ReLU(BN(x W^T + b))`` for x of few columns, z never formed: the forward is one compiled pass
    ``max(x (diag(scale) W)^T + (scale b + shift), 0)``; the backward needs only ``sum dy`` and ``P = dy^T x``
    (one pass over the output gradient and the output): with ``dz = scale dy + slope z + offset``,
    ``sum dy (z - mean) = rowsum(P * W) + sum dy (b - mean)``, ``dW = scale P + slope (W x^T x + b 1^T x) +
    offset 1^T x``; the input gradient ``dz W`` is formed only when x needs one."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, lbias: Optional[Tensor], nweight: Optional[Tensor],
                nbias: Optional[Tensor], mean: Tensor, var: Tensor, eps: float, batch_stats: bool, colsum: Tensor,
                gram: Tensor) -> Tensor:
        invstd, scale, shift = _affine(nweight, nbias, mean, var, eps)
        bias = torch.zeros_like(scale) if lbias is None else lbias
        wt, b = _vec((weight * scale[:, None]).t(), x.dtype), _vec(scale * bias + shift, x.dtype)
        out = torch.empty(x.shape[0], weight.shape[0], dtype=x.dtype)
        ops_native.call("narrow_relu", x.dtype, x.data_ptr(), x.shape[0], x.shape[1], weight.shape[0], wt.data_ptr(),
                        b.data_ptr(), out.data_ptr())
        ctx.save_for_backward(x, weight, bias, out, mean, invstd, scale, colsum, gram)
        ctx.batch_stats, ctx.has = batch_stats, (lbias is not None, nweight is not None, nbias is not None)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tuple[Optional[Tensor], ...]:
        x, weight, bias, out, mean, invstd, scale, colsum, gram = ctx.saved_tensors
        R, K = x.shape
        C = weight.shape[0]
        grad = grad.contiguous()
        sums = torch.empty((1 + K) * C, dtype=torch.float64)
        ops_native.call("narrow_sums", x.dtype, grad.data_ptr(), out.data_ptr(), x.data_ptr(), R, K, C,
                        sums.data_ptr())
        dy_sum, moment = sums[:C], sums[C:].view(K, C).t()                  # sum dy (C), P = dy^T x (C, K)
        w, b, mu, inv, sc = (t.double() for t in (weight, bias, mean, invstd, scale))     # (C)-sized: in double
        dyx_sum = ((moment * w).sum(1) + dy_sum * (b - mu)) * inv
        slope, offset = _input_grad_map(sc, inv, mu, dy_sum, dyx_sum, R, ctx.batch_stats)
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dz = scale * grad * (out > 0) + slope.to(x.dtype) * nn.functional.linear(x, weight, bias)
            dx = (dz + offset.to(x.dtype)) @ weight
        if ctx.needs_input_grad[1]:
            dw = sc[:, None] * moment + slope[:, None] * (w @ gram + b[:, None] * colsum[None, :])
            dw = (dw + offset[:, None] * colsum[None, :]).to(x.dtype)
        if ctx.has[0] and ctx.needs_input_grad[2]:
            db = (sc * dy_sum + slope * (colsum @ w.t() + R * b) + R * offset).to(x.dtype)
        nweight_grad = dyx_sum.to(x.dtype) if ctx.has[1] and ctx.needs_input_grad[3] else None
        nbias_grad = dy_sum.to(x.dtype) if ctx.has[2] and ctx.needs_input_grad[4] else None
        return dx, dw, db, nweight_grad, nbias_grad, None, None, None, None, None, None


def narrow_batch_norm_relu(x: Tensor, linear: nn.Linear, norm: nn.BatchNorm1d) -> Tensor:
    """``ReLU(norm(linear(x)))`` for rows x (R, K) of ``K <= NARROW`` columns (a first PointNet++ layer over xyz
    offsets): the (R, C) linear output is never formed (:class:`_NarrowBatchNormRelu`); its batch statistics come
    from x's mean and covariance (``mean_z = W mean_x + b``, ``var_z = diag(W cov_x W^T)``, float64). ``norm`` used
    and updated as calling it would; compiled loops needed. Same values and gradients as the modules up to
    rounding."""
    if x.dim() != 2 or x.shape[1] > NARROW:
        raise ValueError(f"narrow_batch_norm_relu expects rows (R, K) with K <= {NARROW}; got {tuple(x.shape)}")
    _check_backend(x, "native")
    x = x.contiguous()
    R, K = x.shape
    sums = torch.empty(K + K * K, dtype=torch.float64)
    ops_native.call("narrow_moments", x.dtype, x.data_ptr(), R, K, sums.data_ptr())
    colsum, gram = sums[:K], sums[K:].view(K, K)
    mean_x = colsum / R
    cov = gram / R - mean_x[:, None] * mean_x[None, :]

    def moments() -> Tuple[Tensor, Tensor]:
        w = linear.weight.detach().double()
        mean = w @ mean_x
        if linear.bias is not None:
            mean = mean + linear.bias.detach().double()
        return mean.to(x.dtype), ((w @ cov) * w).sum(1).clamp_min(0).to(x.dtype)

    mean, var, batch_stats = _statistics(norm, R, moments)
    return _NarrowBatchNormRelu.apply(x, linear.weight, linear.bias, norm.weight, norm.bias, mean, var, norm.eps,
                                      batch_stats, colsum, gram)


def rows_scatter(dx: Tensor, k: int, rows: Tensor, add: Tensor, weight: Tensor) -> None:
    """In place: ``dx[g k + rows[g, c]] += add[g, c] weight[c]`` for dx (G k, K), rows/add (G, C), weight (C, K)."""
    G, C = add.shape
    rows, add, weight = rows.to(index_dtype(dx.dtype)).contiguous(), _vec(add, dx.dtype), _vec(weight, dx.dtype)
    ops_native.call("rows_scatter", dx.dtype, dx.data_ptr(), G, k, dx.shape[1], C, rows.data_ptr(), add.data_ptr(),
                    weight.data_ptr())         # every pointer from a named tensor: alive through the call


def rows_gather(x: Tensor, k: int, rows: Tensor, add: Tensor) -> Tensor:
    """``out[c] = sum_g add[g, c] x[g k + rows[g, c]]`` (C, K) in float64, for x (G k, K), rows/add (G, C)."""
    G, C = add.shape
    rows, add = rows.to(index_dtype(x.dtype)).contiguous(), _vec(add, x.dtype)
    out = torch.empty(C, x.shape[1], dtype=torch.float64)
    ops_native.call("rows_gather", x.dtype, x.data_ptr(), G, k, x.shape[1], C, rows.data_ptr(), add.data_ptr(),
                    out.data_ptr())
    return out


BLOCK_BYTES = 1 << 20
""":func:`linear_stats_select` computes the linear output in blocks of whole groups of about this size (in cache)."""


def linear_stats_select(x: Tensor, weight: Tensor, bias: Optional[Tensor], sign: Tensor, k: int
                        ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """For ``z = x W^T + b`` over groups of k rows of x (G k, K), never stored whole: per-channel float64 (sum, sum
    of squares) of z, and per group and channel the value of z maximising ``sign * z`` (G, C) and its row
    (:func:`index_dtype`). z is computed (:func:`dense`) a block of groups of about :data:`BLOCK_BYTES` at a time
    and read while in cache (statistics and selection in one compiled pass): the (G k, C) output never reaches
    memory."""
    x, weight = x.detach().contiguous(), weight.detach()
    G, C = x.shape[0] // k, weight.shape[0]
    per = max(1, min(G, BLOCK_BYTES // max(1, k * C * x.element_size())))
    picked, rows = torch.empty(G, C, dtype=x.dtype), torch.empty(G, C, dtype=index_dtype(x.dtype))
    sums = torch.zeros(2 * C, dtype=torch.float64)
    sign = sign.to(x.dtype).contiguous()
    fn = getattr(ops_native.library(), f"stats_select_{ops_native.DTYPES[x.dtype][0]}")
    nan = False
    for g0 in range(0, G, per):
        g1 = min(G, g0 + per)
        z = dense(x[g0 * k:g1 * k], weight, None if bias is None else bias.detach())
        status = fn(z.data_ptr(), g1 - g0, k, C, sign.data_ptr(), picked[g0].data_ptr(), rows[g0].data_ptr(),
                    sums.data_ptr(), torch.get_num_threads())
        if status == 2:
            raise MemoryError("native point op 'stats_select' could not allocate its scratch memory")
        nan = nan or status == 1
    if nan:                                     # a NaN: PyTorch's max propagates it as the module path does
        z = nn.functional.linear(x, weight, None if bias is None else bias.detach())
        picked, rows = _select(z.view(G, k, C), sign, False)
        rows = rows.to(index_dtype(x.dtype))
    return sums[:C], sums[C:], picked * sign, rows


class _LinearBatchNormReluMax(torch.autograd.Function):
    """``max_k ReLU(BN(x W^T + b))`` whose backward never forms the (G k, C) gradient of ``z = x W^T + b``.

    With ``dz = slope z + offset + S`` (S: ``scale dy`` at the selected rows only), ``dx = x A + (slope b + offset) W
    + S W`` with ``A = W^T diag(slope) W`` (K x K), and ``dW = slope (W x^T x + b 1^T x) + offset 1^T x + S^T x``:
    one (G k, K) x (K, K) product and one Gram matrix ``x^T x`` instead of two (G k, C) x (C, K)-sized products
    over a stored dz, plus the selected rows' terms (compiled loops)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, lbias: Optional[Tensor], nweight: Optional[Tensor],
                nbias: Optional[Tensor], picked: Tensor, rows: Tensor, mean: Tensor, var: Tensor, eps: float,
                batch_stats: bool, k: int) -> Tensor:
        invstd, scale, shift = _affine(nweight, nbias, mean, var, eps)
        out = torch.relu(torch.addcmul(shift, picked, scale))
        ctx.save_for_backward(x, weight, lbias, rows, picked, out, mean, invstd, scale)
        ctx.batch_stats, ctx.k, ctx.has = batch_stats, k, (nweight is not None, nbias is not None)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tuple[Optional[Tensor], ...]:
        x, weight, lbias, rows, picked, out, mean, invstd, scale = ctx.saved_tensors
        rows_total, k = x.shape[0], ctx.k
        dy, dy_sum, dyx_sum = _picked_sums(grad, out, picked, mean, invstd)
        slope, offset = _input_grad_map(scale, invstd, mean, dy_sum, dyx_sum, rows_total, ctx.batch_stats)
        add = scale * dy                              # (G, C): dz at the selected rows beyond slope z + offset
        bias = torch.zeros_like(scale) if lbias is None else lbias
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            if ctx.batch_stats:
                dx = dense(x, weight.t() @ (slope[:, None] * weight), (slope * bias + offset) @ weight)  # A = A^T
            else:
                dx = torch.zeros_like(x)
            rows_scatter(dx, k, rows, add, weight)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            colsum = x.sum(0)
            if ctx.needs_input_grad[1]:
                dw = rows_gather(x, k, rows, add).to(x.dtype)
                if ctx.batch_stats:
                    ztx = weight @ (x.t() @ x) + bias[:, None] * colsum[None, :]
                    dw = dw + slope[:, None] * ztx + offset[:, None] * colsum[None, :]
            if lbias is not None and ctx.needs_input_grad[2]:
                db = add.sum(0)
                if ctx.batch_stats:
                    db = db + slope * (colsum @ weight.t() + rows_total * bias) + rows_total * offset
        nweight_grad = dyx_sum if ctx.has[0] and ctx.needs_input_grad[3] else None
        nbias_grad = dy_sum if ctx.has[1] and ctx.needs_input_grad[4] else None
        return dx, dw, db, nweight_grad, nbias_grad, None, None, None, None, None, None, None


def linear_batch_norm_relu_max(x: Tensor, linear: nn.Linear, norm: nn.BatchNorm1d, k: int) -> Tensor:
    """``max_k ReLU(norm(linear(x)))`` over groups of k rows of x (G k, K), the (G k, C) linear output used in the
    forward only (statistics and selection), never stored for or formed in the backward
    (:class:`_LinearBatchNormReluMax`). Same values and gradients as the modules up to rounding; compiled loops
    needed (callers use :func:`batch_norm_relu_max` after the linear layer otherwise)."""
    if x.dim() != 2 or x.shape[0] % k:
        raise ValueError(f"linear_batch_norm_relu_max expects x of shape (G * k, K) with k = {k}; "
                         f"got {tuple(x.shape)}")
    _check_backend(x, "native")
    x = x.contiguous()
    sign = torch.ones(linear.out_features, dtype=x.dtype)
    if norm.weight is not None:                 # the sign of batch norm's scale (gamma / std): gamma's
        sign = torch.where(norm.weight.detach() < 0, -1.0, 1.0).to(x.dtype)
    total, squares, picked, rows = linear_stats_select(x, linear.weight, linear.bias, sign, k)
    mean, var, batch_stats = _statistics(norm, x.shape[0], lambda: _moments(total, squares, x.shape[0], x.dtype))
    return _LinearBatchNormReluMax.apply(x, linear.weight, linear.bias, norm.weight, norm.bias, picked, rows, mean,
                                         var, norm.eps, batch_stats, k)
