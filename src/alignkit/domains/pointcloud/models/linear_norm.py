"""A PointNet++ level's ``Linear - BatchNorm - ReLU`` layers as single CPU ops over its (G k, K) grouped rows.

Batch norm is a per-channel affine map once its statistics are known, so the backward of ``BN(x W^T + b)`` is
``dz = scale dy + slope z + offset`` with per-channel ``slope``/``offset`` (:func:`.grouped_norm._input_grad_map`):
what a level needs of its linear outputs can be had without storing or re-reading all of them.

- :func:`narrow_batch_norm_relu`: the first layer over xyz offsets (``K <= 8`` columns): the forward is one pass
  ``max(x W'^T + b', 0)``, its statistics come from x's mean and covariance, its backward from ``sum dy`` and
  ``dy^T x``: the (G k, C) linear output is never formed. :func:`narrow_stem` runs it with the next layer as one op
  whose first output exists only a block of rows at a time in cache (recomputed from x in the backward).
- :func:`gathered_linear_batch_norm_relu`: the first layer of a level over the previous level's features, whose
  feature part runs on the points before they are grouped.
- :func:`linear_batch_norm_relu`: the middle layers: z is kept for the backward, but the output y is never read
  back (the ReLU mask is recomputed from z) and dz is formed a block of rows at a time in cache, consumed there by
  ``dW += dz^T x``, ``dx = dz W``.
- :func:`linear_batch_norm_relu_max`: the last layer with the max over each group: the linear output is computed
  a block at a time in cache with its statistics, selection, column sums and Gram matrix, never stored; the
  backward is ``dx = x A + const + S W``, ``dW`` from the Gram matrix and the selected rows.

Every op uses and updates the BatchNorm1d as calling it would (batch or running statistics, momentum,
``num_batches_tracked``), and equals ``Linear - BatchNorm - ReLU`` through autograd up to rounding (float32 results
are nearer the float64 truth than the module path's, the statistics and sums being accumulated in double). The
compiled loops (:mod:`..native_norm_source`) are needed: callers run the modules where they are not available.
"""
from __future__ import annotations

from typing import Any, Iterator, Optional, Tuple

import torch
from torch import Tensor, nn

from alignkit.domains.pointcloud import ops_native
from alignkit.domains.pointcloud.models.grouped_norm import (_affine, _check_backend, _input_grad_map, _moments,
                                                             _picked_sums, _select, _statistics, _stats, _vec,
                                                             batch_norm_stats, bn_relu_backward, bn_relu_forward,
                                                             bn_relu_sums, index_dtype)
from alignkit.domains.pointcloud.models.rows_linear import NARROW, dense

BLOCK_BYTES = 1 << 20
"""Blocks of rows of about this size (in cache) for the linear outputs and gradients formed a block at a time."""


def _block_rows(width: int, dtype: torch.dtype, multiple: int = 1) -> int:
    """Rows per block: whole multiples of ``multiple`` (a group's k rows), rows of ``width`` values of ``dtype``."""
    return multiple * max(1, BLOCK_BYTES // max(1, multiple * width * dtype.itemsize))


def _dz_blocks(grad: Tensor, z: Tensor, scale: Tensor, shift: Tensor, slope: Tensor, offset: Tensor, width: int
               ) -> Iterator[Tuple[int, int, Tensor]]:
    """Batch norm + ReLU's input gradient dz (:func:`bn_relu_backward`) a block of rows at a time, each written into
    one reused in-cache buffer (blocks sized for rows of ``width`` values): yields (first row, end row, dz)."""
    R, C = z.shape
    per = _block_rows(width, z.dtype)
    block = torch.empty(min(per, R), C, dtype=z.dtype)
    for r0 in range(0, R, per):
        r1 = min(R, r0 + per)
        yield r0, r1, bn_relu_backward(grad[r0:r1], z[r0:r1], scale, shift, slope, offset, out=block[:r1 - r0])


def _bn_relu_grad_terms(grad: Tensor, z: Tensor, mean: Tensor, invstd: Tensor, scale: Tensor, shift: Tensor,
                        batch_stats: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """For ``y = ReLU(scale z + shift)`` (batch norm): ``sum dy``, ``sum dy xhat`` (the norm's bias and weight
    gradients) and the (slope, offset) of its input gradient ``scale dy + slope z + offset``, in z's dtype; one
    compiled pass over grad and z."""
    dy_sum, moment = bn_relu_sums(grad, z, scale, shift, mean)
    dy_sum, dyx_sum = dy_sum.to(z.dtype), (moment * invstd).to(z.dtype)
    slope, offset = _input_grad_map(scale, invstd, mean, dy_sum, dyx_sum, z.shape[0], batch_stats)
    return dy_sum, dyx_sum, _vec(slope, z.dtype), _vec(offset, z.dtype)


class _BatchNormRelu(torch.autograd.Function):
    """``ReLU(BN(z))`` over rows z (R, C): one compiled pass forward; backward one pass for the sums and one for the
    input gradient, over grad and z only (the ReLU mask recomputed from z)."""

    @staticmethod
    def forward(ctx: Any, z: Tensor, nweight: Optional[Tensor], nbias: Optional[Tensor], mean: Tensor, var: Tensor,
                eps: float, batch_stats: bool) -> Tensor:
        invstd, scale, shift = _affine(nweight, nbias, mean, var, eps)
        scale, shift = _vec(scale, z.dtype), _vec(shift, z.dtype)
        ctx.save_for_backward(z, mean, invstd, scale, shift)
        ctx.batch_stats, ctx.has = batch_stats, (nweight is not None, nbias is not None)
        return bn_relu_forward(z, scale, shift)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tuple[Optional[Tensor], ...]:
        z, mean, invstd, scale, shift = ctx.saved_tensors
        grad = grad.contiguous()
        dy_sum, dyx_sum, slope, offset = _bn_relu_grad_terms(grad, z, mean, invstd, scale, shift, ctx.batch_stats)
        dz = bn_relu_backward(grad, z, scale, shift, slope, offset) if ctx.needs_input_grad[0] else None
        nweight_grad = dyx_sum if ctx.has[0] and ctx.needs_input_grad[1] else None
        nbias_grad = dy_sum if ctx.has[1] and ctx.needs_input_grad[2] else None
        return dz, nweight_grad, nbias_grad, None, None, None, None


class _GatheredLinear(torch.autograd.Function):
    """``z = [rel, f[rows]] W^T + b`` for rel (R, P), f (N, F), rows (R,), without the (R, F) gathered rows: the
    feature part of the layer runs on the N points before the gather, ``(f W_f^T)[rows] + rel W_r^T + b``. Backward:
    ``dP = index_add(dz)`` (N, C), ``df = dP W_f``, ``dW_f = dP^T f``, ``dW_r = (rel^T dz)^T``."""

    @staticmethod
    def forward(ctx: Any, rel: Tensor, feats: Tensor, rows: Tensor, weight: Tensor, bias: Optional[Tensor]
                ) -> Tensor:
        p = rel.shape[1]
        z = dense(feats, weight[:, p:].contiguous()).index_select(0, rows)
        z += nn.functional.linear(rel, weight[:, :p], bias)
        ctx.save_for_backward(rel, feats, rows, weight)
        ctx.has_bias = bias is not None
        return z

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tuple[Optional[Tensor], ...]:
        rel, feats, rows, weight = ctx.saved_tensors
        grad = grad.contiguous()
        p = rel.shape[1]
        d_rel = d_feats = dw = db = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[3]:
            per_point = grad.new_zeros(feats.shape[0], grad.shape[1]).index_add_(0, rows, grad)
            if ctx.needs_input_grad[1]:
                d_feats = dense(per_point, weight[:, p:].t().contiguous())
            if ctx.needs_input_grad[3]:
                dw = torch.cat([(rel.t() @ grad).t(), per_point.t() @ feats], dim=1)
        if ctx.needs_input_grad[0]:
            d_rel = grad @ weight[:, :p]
        if ctx.has_bias and ctx.needs_input_grad[4]:
            db = grad.sum(0)
        return d_rel, d_feats, None, dw, db


def gathered_linear_batch_norm_relu(rel: Tensor, feats: Tensor, idx: Tensor, linear: nn.Linear,
                                    norm: nn.BatchNorm1d) -> Tensor:
    """``ReLU(norm(linear([rel, group(feats, idx)])))`` -> (B M k, C) for rel (B, M, k, P) (xyz offsets), feats
    (B, N, F), idx (B, M, k): the first layer of a level over the previous level's features, whose feature part runs
    on the B N points before grouping (:class:`_GatheredLinear`: k M / N times fewer multiplications, no grouped
    feature rows), its batch norm and ReLU as :class:`_BatchNormRelu`. ``norm`` used and updated as calling it
    would; compiled loops needed. Same values and gradients as the modules up to rounding."""
    B, N, F = feats.shape
    if rel.dim() != 4 or idx.shape != rel.shape[:3] or linear.in_features != rel.shape[-1] + F:
        raise ValueError(f"gathered_linear_batch_norm_relu: rel (B, M, k, P), feats (B, N, F), idx (B, M, k) and "
                         f"a linear layer of P + F inputs; got {tuple(rel.shape)}, {tuple(feats.shape)}, "
                         f"{tuple(idx.shape)}, {linear.in_features}")
    _check_backend(feats, "native")
    rows = (idx + torch.arange(B, device=idx.device).mul_(N).view(B, 1, 1)).reshape(-1)
    z = _GatheredLinear.apply(rel.reshape(-1, rel.shape[-1]).contiguous(), feats.reshape(B * N, F).contiguous(),
                              rows, linear.weight, linear.bias)
    mean, var, batch_stats = _statistics(norm, z.shape[0], lambda: _stats(z.detach(), True))
    return _BatchNormRelu.apply(z, norm.weight, norm.bias, mean, var, norm.eps, batch_stats)


class _LinearBatchNormRelu(torch.autograd.Function):
    """``ReLU(BN(x W^T + b))`` with z given (computed outside, for the statistics): the forward applies the batch norm
    and ReLU in one pass; the backward takes the gradient sums in one pass over grad and z (the ReLU mask from z),
    then forms dz a block of rows at a time and uses it there: ``dW += dz^T x``, ``dx = dz W``, ``db += sum dz``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, lbias: Optional[Tensor], nweight: Optional[Tensor],
                nbias: Optional[Tensor], z: Tensor, mean: Tensor, var: Tensor, eps: float, batch_stats: bool
                ) -> Tensor:
        invstd, scale, shift = _affine(nweight, nbias, mean, var, eps)
        scale, shift = _vec(scale, z.dtype), _vec(shift, z.dtype)   # the backward's mask: the very same values
        ctx.save_for_backward(x, weight, z, mean, invstd, scale, shift)
        ctx.batch_stats, ctx.has = batch_stats, (lbias is not None, nweight is not None, nbias is not None)
        return bn_relu_forward(z, scale, shift)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tuple[Optional[Tensor], ...]:
        x, weight, z, mean, invstd, scale, shift = ctx.saved_tensors
        grad = grad.contiguous()
        dy_sum, dyx_sum, slope, offset = _bn_relu_grad_terms(grad, z, mean, invstd, scale, shift, ctx.batch_stats)
        dx = torch.empty_like(x) if ctx.needs_input_grad[0] else None
        dw = torch.zeros_like(weight) if ctx.needs_input_grad[1] else None
        db = torch.zeros_like(dy_sum) if ctx.has[0] and ctx.needs_input_grad[2] else None
        if dx is not None or dw is not None or db is not None:
            for r0, r1, dz in _dz_blocks(grad, z, scale, shift, slope, offset, max(z.shape[1], x.shape[1])):
                if dw is not None:
                    dw.addmm_(dz.t(), x[r0:r1])
                if dx is not None:
                    torch.mm(dz, weight, out=dx[r0:r1])
                if db is not None:
                    db += dz.sum(0)
        nweight_grad = dyx_sum if ctx.has[1] and ctx.needs_input_grad[3] else None
        nbias_grad = dy_sum if ctx.has[2] and ctx.needs_input_grad[4] else None
        return dx, dw, db, nweight_grad, nbias_grad, None, None, None, None, None


def linear_batch_norm_relu(x: Tensor, linear: nn.Linear, norm: nn.BatchNorm1d) -> Tensor:
    """``ReLU(norm(linear(x)))`` for rows x (R, K): the linear output z (:func:`dense`) kept for the backward, its
    statistics and the normalised, rectified output in one compiled pass each; the backward never stores dz nor
    reads the output (:class:`_LinearBatchNormRelu`). ``norm`` used and updated as calling it would; compiled loops
    needed."""
    if x.dim() != 2:
        raise ValueError(f"linear_batch_norm_relu expects rows (R, K); got {tuple(x.shape)}")
    _check_backend(x, "native")
    x = x.contiguous()
    with torch.no_grad():
        z = dense(x, linear.weight, linear.bias).contiguous()
    mean, var, batch_stats = _statistics(norm, x.shape[0], lambda: _stats(z, True))
    return _LinearBatchNormRelu.apply(x, linear.weight, linear.bias, norm.weight, norm.bias, z, mean, var, norm.eps,
                                      batch_stats)


def _narrow_fold(weight: Tensor, bias: Tensor, scale: Tensor, shift: Tensor, dtype: torch.dtype
                 ) -> Tuple[Tensor, Tensor]:
    """A linear layer followed by batch norm as one affine map: ``(diag(scale) W)^T`` (K, C) and ``scale b + shift``."""
    return _vec((weight * scale[:, None]).t(), dtype), _vec(scale * bias + shift, dtype)


def narrow_relu(x: Tensor, wt: Tensor, b: Tensor, out: Optional[Tensor] = None) -> Tensor:
    """``max(x wt + b, 0)`` for rows x (R, K <= 8), wt (K, C), b (C,): one compiled pass (into ``out`` if given)."""
    out = torch.empty(x.shape[0], wt.shape[1], dtype=x.dtype) if out is None else out
    ops_native.call("narrow_relu", x.dtype, x.data_ptr(), x.shape[0], x.shape[1], wt.shape[1], wt.data_ptr(),
                    b.data_ptr(), out.data_ptr())
    return out


def narrow_sums(grad: Tensor, y: Tensor, x: Tensor, sums: Tensor) -> None:
    """``sums += (sum dy, dy^T x)`` ((1 + K) C float64, the second (K, C)) with ``dy = grad`` where y > 0."""
    part = torch.empty_like(sums)
    ops_native.call("narrow_sums", x.dtype, grad.data_ptr(), y.data_ptr(), x.data_ptr(), x.shape[0], x.shape[1],
                    y.shape[1], part.data_ptr())
    sums += part


class _NarrowGrads:
    """A narrow first layer's gradients from ``sums = (sum dy, dy^T x)`` (:func:`narrow_sums`), all in float64:
    ``sum dy (z - mean) = rowsum(P * W) + sum dy (b - mean)``, batch norm's (slope, offset), ``dW = scale P +
    slope (W x^T x + b 1^T x) + offset 1^T x`` and ``db = sum dz``."""

    def __init__(self, sums: Tensor, rows: int, weight: Tensor, bias: Tensor, mean: Tensor, invstd: Tensor,
                 scale: Tensor, colsum: Tensor, gram: Tensor, batch_stats: bool):
        C = weight.shape[0]
        self.dy_sum, self.moment = sums[:C], sums[C:].view(-1, C).t()          # sum dy (C), P = dy^T x (C, K)
        self.w, self.b, mu, inv, self.scale = (t.double() for t in (weight, bias, mean, invstd, scale))
        self.dyx_sum = ((self.moment * self.w).sum(1) + self.dy_sum * (self.b - mu)) * inv
        self.slope, self.offset = _input_grad_map(self.scale, inv, mu, self.dy_sum, self.dyx_sum, rows, batch_stats)
        self.rows, self.colsum, self.gram = rows, colsum, gram

    def weight_grad(self, dtype: torch.dtype) -> Tensor:
        dw = self.scale[:, None] * self.moment + self.slope[:, None] * (self.w @ self.gram
                                                                          + self.b[:, None] * self.colsum[None, :])
        return (dw + self.offset[:, None] * self.colsum[None, :]).to(dtype)

    def bias_grad(self, dtype: torch.dtype) -> Tensor:
        return (self.scale * self.dy_sum + self.slope * (self.colsum @ self.w.t() + self.rows * self.b)
                + self.rows * self.offset).to(dtype)


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
        wt, b = _narrow_fold(weight, bias, scale, shift, x.dtype)
        out = narrow_relu(x, wt, b)
        ctx.save_for_backward(x, weight, bias, out, mean, invstd, scale, colsum, gram)
        ctx.batch_stats, ctx.has = batch_stats, (lbias is not None, nweight is not None, nbias is not None)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tuple[Optional[Tensor], ...]:
        x, weight, bias, out, mean, invstd, scale, colsum, gram = ctx.saved_tensors
        sums = torch.zeros((1 + x.shape[1]) * weight.shape[0], dtype=torch.float64)
        narrow_sums(grad.contiguous(), out, x, sums)
        terms = _NarrowGrads(sums, x.shape[0], weight, bias, mean, invstd, scale, colsum, gram, ctx.batch_stats)
        dx = None
        if ctx.needs_input_grad[0]:
            dz = scale * grad * (out > 0) + terms.slope.to(x.dtype) * nn.functional.linear(x, weight, bias)
            dx = (dz + terms.offset.to(x.dtype)) @ weight
        return (dx, terms.weight_grad(x.dtype) if ctx.needs_input_grad[1] else None,
                terms.bias_grad(x.dtype) if ctx.has[0] and ctx.needs_input_grad[2] else None,
                terms.dyx_sum.to(x.dtype) if ctx.has[1] and ctx.needs_input_grad[3] else None,
                terms.dy_sum.to(x.dtype) if ctx.has[2] and ctx.needs_input_grad[4] else None,
                None, None, None, None, None, None)


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
    mean, var, batch_stats, colsum, gram = _narrow_statistics(x, linear, norm)
    return _NarrowBatchNormRelu.apply(x, linear.weight, linear.bias, norm.weight, norm.bias, mean, var, norm.eps,
                                      batch_stats, colsum, gram)


def _narrow_statistics(x: Tensor, linear: nn.Linear, norm: nn.BatchNorm1d) -> Tuple[Tensor, Tensor, bool, Tensor,
                                                                                  Tensor]:
    """``norm``'s (mean, var, batch_stats) for ``linear(x)``, x (R, K <= 8), from x's mean and covariance (float64;
    running statistics updated), and x's column sums and Gram matrix (float64)."""
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
    return mean, var, batch_stats, colsum, gram


class _NarrowStem(torch.autograd.Function):
    """Two layers, ``ReLU(BN2(ReLU(BN1(x W1^T + b1)) W2^T + b2))`` for x (R, K <= 8) that needs no gradient, given z2
    (computed a block at a time from in-cache blocks of the first layer's output, which is never stored). Backward:
    the second norm's sums (one pass over grad and z2), then a block of rows at a time in cache: dz2, the first
    layer's output recomputed from x, ``dW2 += dz2^T y1``, ``dy1 = dz2 W2`` and the first layer's ``(sum dy1,
    dy1^T x)``, from which its gradients follow (:class:`_NarrowGrads`): dz2 and dy1 never reach memory."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, w1: Tensor, lb1: Optional[Tensor], g1: Optional[Tensor], be1: Optional[Tensor],
                w2: Tensor, lb2: Optional[Tensor], g2: Optional[Tensor], be2: Optional[Tensor], first: Tuple,
                z2: Tensor, mean2: Tensor, var2: Tensor, eps2: float, batch_stats2: bool) -> Tensor:
        mean1, invstd1, scale1, bias1, wt1, b1, colsum, gram, batch_stats1 = first
        _, scale2, shift2 = _affine(g2, be2, mean2, var2, eps2)
        invstd2 = torch.rsqrt(var2 + eps2)
        scale2, shift2 = _vec(scale2, z2.dtype), _vec(shift2, z2.dtype)
        ctx.save_for_backward(x, w1, bias1, wt1, b1, mean1, invstd1, scale1, colsum, gram, w2, z2, mean2, invstd2,
                              scale2, shift2)
        ctx.batch_stats = (batch_stats1, batch_stats2)
        ctx.has = (lb1 is not None, g1 is not None, be1 is not None, lb2 is not None, g2 is not None,
                   be2 is not None)
        return bn_relu_forward(z2, scale2, shift2)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tuple[Optional[Tensor], ...]:
        (x, w1, bias1, wt1, b1, mean1, invstd1, scale1, colsum, gram, w2, z2, mean2, invstd2, scale2,
         shift2) = ctx.saved_tensors
        grad = grad.contiguous()
        R, C1, C2 = x.shape[0], w1.shape[0], w2.shape[0]
        dy_sum2, dyx_sum2, slope2, offset2 = _bn_relu_grad_terms(grad, z2, mean2, invstd2, scale2, shift2,
                                                                 ctx.batch_stats[1])
        dw2, db2 = torch.zeros_like(w2), torch.zeros(C2, dtype=z2.dtype)
        sums = torch.zeros((1 + x.shape[1]) * C1, dtype=torch.float64)
        width = max(C1, C2)
        y1_block, dy1_block = (torch.empty(min(_block_rows(width, z2.dtype), R), C1, dtype=z2.dtype) for _ in range(2))
        for r0, r1, dz2 in _dz_blocks(grad, z2, scale2, shift2, slope2, offset2, width):
            y1 = narrow_relu(x[r0:r1], wt1, b1, out=y1_block[:r1 - r0])
            dw2.addmm_(dz2.t(), y1)
            db2 += dz2.sum(0)
            narrow_sums(torch.mm(dz2, w2, out=dy1_block[:r1 - r0]), y1, x[r0:r1], sums)
        first = _NarrowGrads(sums, R, w1, bias1, mean1, invstd1, scale1, colsum, gram, ctx.batch_stats[0])
        has, needs = ctx.has, ctx.needs_input_grad
        return (None, first.weight_grad(x.dtype) if needs[1] else None,
                first.bias_grad(x.dtype) if has[0] and needs[2] else None,
                first.dyx_sum.to(x.dtype) if has[1] and needs[3] else None,
                first.dy_sum.to(x.dtype) if has[2] and needs[4] else None,
                dw2 if needs[5] else None, db2 if has[3] and needs[6] else None,
                dyx_sum2 if has[4] and needs[7] else None, dy_sum2 if has[5] and needs[8] else None,
                None, None, None, None, None, None)


def narrow_stem(x: Tensor, linear1: nn.Linear, norm1: nn.BatchNorm1d, linear2: nn.Linear,
                norm2: nn.BatchNorm1d) -> Tensor:
    """``ReLU(norm2(linear2(ReLU(norm1(linear1(x))))))`` for rows x (R, K <= 8) of xyz offsets that need no gradient
    (a first level's first two layers) as one op (:class:`_NarrowStem`): the first layer as
    :func:`narrow_batch_norm_relu` computes it, but its output only ever exists a block of rows at a time in cache
    (forward: fed to ``linear2``; backward: recomputed from x). Both norms used and updated as calling them would;
    compiled loops needed. Same values and gradients as the modules up to rounding."""
    if x.dim() != 2 or x.shape[1] > NARROW or x.requires_grad:
        raise ValueError(f"narrow_stem expects rows (R, K) with K <= {NARROW} that need no gradient; got "
                         f"{tuple(x.shape)}, requires_grad={x.requires_grad}")
    _check_backend(x, "native")
    x = x.contiguous()
    mean1, var1, batch_stats1, colsum, gram = _narrow_statistics(x, linear1, norm1)
    with torch.no_grad():
        invstd1, scale1, shift1 = _affine(norm1.weight, norm1.bias, mean1, var1, norm1.eps)
        bias1 = torch.zeros_like(scale1) if linear1.bias is None else linear1.bias.detach()
        wt1, b1 = _narrow_fold(linear1.weight.detach(), bias1, scale1, shift1, x.dtype)
        R, C1, C2 = x.shape[0], linear1.out_features, linear2.out_features
        z2, total, squares = torch.empty(R, C2, dtype=x.dtype), 0, 0
        per = _block_rows(max(C1, C2), x.dtype)
        y1_block, w2t = torch.empty(min(per, R), C1, dtype=x.dtype), linear2.weight.detach().t()
        for r0 in range(0, R, per):
            r1 = min(R, r0 + per)
            y1 = narrow_relu(x[r0:r1], wt1, b1, out=y1_block[:r1 - r0])
            if linear2.bias is None:
                torch.mm(y1, w2t, out=z2[r0:r1])
            else:
                torch.addmm(linear2.bias.detach(), y1, w2t, out=z2[r0:r1])
            block_sum, block_squares = batch_norm_stats(z2[r0:r1])
            total, squares = total + block_sum, squares + block_squares
    mean2, var2, batch_stats2 = _statistics(norm2, R, lambda: _moments(total, squares, R, x.dtype))
    first = (mean1, invstd1, scale1, bias1, wt1, b1, colsum, gram, batch_stats1)
    return _NarrowStem.apply(x, linear1.weight, linear1.bias, norm1.weight, norm1.bias, linear2.weight, linear2.bias,
                             norm2.weight, norm2.bias, first, z2, mean2, var2, norm2.eps, batch_stats2)


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


def linear_stats_select(x: Tensor, weight: Tensor, bias: Optional[Tensor], sign: Tensor, k: int, gram: bool = False
                        ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Optional[Tensor], Optional[Tensor]]:
    """For ``z = x W^T + b`` over groups of k rows of x (G k, K), never stored whole: z's per-channel biased mean and
    variance (float64), per group and channel the value of z maximising ``sign * z`` (G, C) and its row
    (:func:`index_dtype`), and with ``gram`` x's column sums and Gram matrix ``x^T x`` (else None). z is computed
    (:func:`dense`) a block of groups of about :data:`BLOCK_BYTES` at a time and read while in cache (statistics and
    selection in one compiled sweep, sums of ``z - z[0]``; the Gram matrix from the same block of x): the (G k, C)
    output never reaches memory and x is read once. A NaN or infinity in z: PyTorch's max and statistics instead, as
    the module path computes them."""
    x, weight = x.detach().contiguous(), weight.detach()
    G, C = x.shape[0] // k, weight.shape[0]
    per = _block_rows(max(C, x.shape[1]), x.dtype, k) // k
    picked, rows = torch.empty(G, C, dtype=x.dtype), torch.empty(G, C, dtype=index_dtype(x.dtype))
    sums = torch.zeros(2 * C, dtype=torch.float64)
    colsum = torch.zeros(x.shape[1], dtype=x.dtype) if gram else None
    squares = torch.zeros(x.shape[1], x.shape[1], dtype=x.dtype) if gram else None
    sign, shift = sign.to(x.dtype).contiguous(), torch.zeros(C, dtype=x.dtype)
    fn = getattr(ops_native.library(), f"stats_select_{ops_native.DTYPES[x.dtype][0]}")
    for g0 in range(0, G, per):
        g1 = min(G, g0 + per)
        block = x[g0 * k:g1 * k]
        z = dense(block, weight, None if bias is None else bias.detach())
        if g0 == 0:
            shift = z[0].clone()
        if fn(z.data_ptr(), g1 - g0, k, C, sign.data_ptr(), shift.data_ptr(), picked[g0].data_ptr(),
              rows[g0].data_ptr(), sums.data_ptr(), torch.get_num_threads()):
            raise MemoryError("native point op 'stats_select' could not allocate its scratch memory")
        if colsum is not None and squares is not None:
            colsum += block.sum(0)
            squares.addmm_(block.t(), block)
    if not bool(torch.isfinite(sums).all()):       # NaN / inf: the module path's max and statistics
        z = nn.functional.linear(x, weight, None if bias is None else bias.detach())
        picked, rows = _select(z.view(G, k, C), sign, False)
        var, mean = torch.var_mean(z.double(), dim=0, unbiased=False)
        return mean, var, picked * sign, rows.to(index_dtype(x.dtype)), colsum, squares
    centred = sums[:C] / x.shape[0]
    return shift.double() + centred, sums[C:] / x.shape[0] - centred * centred, picked * sign, rows, colsum, squares


class _LinearBatchNormReluMax(torch.autograd.Function):
    """``max_k ReLU(BN(x W^T + b))`` whose backward never forms the (G k, C) gradient of ``z = x W^T + b``.

    With ``dz = slope z + offset + S`` (S: ``scale dy`` at the selected rows only), ``dx = x A + (slope b + offset) W
    + S W`` with ``A = W^T diag(slope) W`` (K x K), and ``dW = slope (W x^T x + b 1^T x) + offset 1^T x + S^T x``:
    one (G k, K) x (K, K) product and one Gram matrix ``x^T x`` instead of two (G k, C) x (C, K)-sized products
    over a stored dz, plus the selected rows' terms (compiled loops)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, lbias: Optional[Tensor], nweight: Optional[Tensor],
                nbias: Optional[Tensor], picked: Tensor, rows: Tensor, mean: Tensor, var: Tensor, eps: float,
                batch_stats: bool, k: int, colsum: Optional[Tensor], gram: Optional[Tensor]) -> Tensor:
        invstd, scale, shift = _affine(nweight, nbias, mean, var, eps)
        out = torch.relu(torch.addcmul(shift, picked, scale))
        ctx.save_for_backward(x, weight, lbias, rows, picked, out, mean, invstd, scale, colsum, gram)
        ctx.batch_stats, ctx.k, ctx.has = batch_stats, k, (nweight is not None, nbias is not None)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tuple[Optional[Tensor], ...]:
        x, weight, lbias, rows, picked, out, mean, invstd, scale, colsum, gram = ctx.saved_tensors
        rows_total, k = x.shape[0], ctx.k
        dy, dy_sum, dyx_sum = _picked_sums(grad, out, picked, mean, invstd)
        slope, offset = _input_grad_map(scale, invstd, mean, dy_sum, dyx_sum, rows_total, ctx.batch_stats)
        add = scale * dy                              # (G, C): dz at the selected rows beyond slope z + offset
        bias = torch.zeros_like(scale) if lbias is None else lbias
        dx = dw = db = None
        if ctx.needs_input_grad[0]:                   # in blocks of groups: the scatter finds its rows in cache
            dx = torch.empty_like(x) if ctx.batch_stats else torch.zeros_like(x)
            square, const = weight.t() @ (slope[:, None] * weight), (slope * bias + offset) @ weight
            per = _block_rows(x.shape[1], x.dtype, k) // k
            for g0 in range(0, rows.shape[0], per):
                g1 = min(rows.shape[0], g0 + per)
                if ctx.batch_stats:
                    torch.addmm(const, x[g0 * k:g1 * k], square, out=dx[g0 * k:g1 * k])
                rows_scatter(dx[g0 * k:g1 * k], k, rows[g0:g1], add[g0:g1], weight)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            colsum = x.sum(0) if colsum is None else colsum        # the forward's, when it knew they were needed
            if ctx.needs_input_grad[1]:
                dw = rows_gather(x, k, rows, add).to(x.dtype)
                if ctx.batch_stats:
                    ztx = weight @ (x.t() @ x if gram is None else gram) + bias[:, None] * colsum[None, :]
                    dw = dw + slope[:, None] * ztx + offset[:, None] * colsum[None, :]
            if lbias is not None and ctx.needs_input_grad[2]:
                db = add.sum(0)
                if ctx.batch_stats:
                    db = db + slope * (colsum @ weight.t() + rows_total * bias) + rows_total * offset
        nweight_grad = dyx_sum if ctx.has[0] and ctx.needs_input_grad[3] else None
        nbias_grad = dy_sum if ctx.has[1] and ctx.needs_input_grad[4] else None
        return dx, dw, db, nweight_grad, nbias_grad, None, None, None, None, None, None, None, None, None


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
    gram = torch.is_grad_enabled() and linear.weight.requires_grad
    batch_mean, batch_var, picked, rows, colsum, xtx = linear_stats_select(x, linear.weight, linear.bias, sign, k,
                                                                           gram)
    mean, var, batch_stats = _statistics(norm, x.shape[0],
                                         lambda: (batch_mean.to(x.dtype), batch_var.clamp_min(0).to(x.dtype)))
    return _LinearBatchNormReluMax.apply(x, linear.weight, linear.bias, norm.weight, norm.bias, picked, rows, mean,
                                         var, norm.eps, batch_stats, k, colsum, xtx)
