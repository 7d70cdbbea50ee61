"""The blockwise engine of the contrastive losses: a scalar loss of ``L = s x yᵀ + bias`` in row blocks.

:func:`blockwise` never holds more than a ``(chunk, N)`` block of logits: the forward keeps per-line
statistics and the backward recomputes each block, so peak extra memory is O(chunk * N). The kernels:

* :class:`InfoNCEKernel`: softmax cross-entropies of the rows (and columns) with one-hot, label-smoothed,
  SupCon or ALBEF momentum-distillation targets;
* :class:`MultiPositiveKernel`: ``-log`` of the summed probability of each line's positives (MIL-NCE);
* :class:`SigmoidKernel`: SigLIP's pairwise sigmoid loss.

Precision: a line is summarised by its maximum, argmax and the sum of the other ``exp(L - max)`` terms
(:class:`_LineStats`), never by ``max + log(sum)``, and its largest logits are recomputed in float64
(:class:`_ExactLogits`), so a float32 loss near zero keeps about 1e-8 of relative accuracy where a float32
softmax cross-entropy keeps 1e-5 (at a logit scale of 100). Statistics merge across blocks in float64.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor


def row_blocks(rows: int, chunk: int) -> List[slice]:
    return [slice(i, min(i + chunk, rows)) for i in range(0, rows, chunk)]


def _bilinear(x_blk: Tensor, y: Tensor, scale: Tensor, bias: Optional[Tensor]) -> Tensor:
    """``(c, N)`` logits ``scale * x_blk @ y.T (+ bias)``."""
    logits = torch.mm(x_blk * scale, y.T)
    return logits.add_(bias) if bias is not None else logits


class BlockKernel:
    """A scalar loss ``sum f(L)`` over ``L = s x yᵀ + bias``, fed one row block at a time.

    ``forward_block`` returns the block's share of the loss (it may record per-row or per-column
    statistics), ``finish`` the part known only after all blocks, and ``grad_block`` returns
    ``d loss / d L`` for a block using the recorded statistics (it may overwrite ``L``).
    """

    exact: Optional["_ExactLogits"] = None

    def bind(self, x: Tensor, y: Tensor, scale: Tensor, bias: Optional[Tensor]) -> None:
        """Keep the factors of ``L`` so chosen logits can be recomputed in float64 (not needed for float64 input)."""
        self.exact = None if x.dtype == torch.float64 else _ExactLogits(x, y, scale, bias)

    def forward_block(self, logits: Tensor, rows: slice) -> Tensor:
        raise NotImplementedError

    def finish(self) -> Union[Tensor, float]:
        return 0.0

    def grad_block(self, logits: Tensor, rows: slice) -> Tensor:
        raise NotImplementedError


class BlockwiseBilinear(torch.autograd.Function):
    """``kernel``'s loss of ``L = scale * x yᵀ + bias`` computed in row blocks of ``chunk``.

    Saves only ``x (M, D)``, ``y (N, D)``, ``scale``, ``bias`` (and the kernel's O(M + N)
    statistics); the backward recomputes each block ``L_blk`` and with ``G = dloss/dL_blk``:
    ``dx_blk = s G y``, ``dy += s Gᵀ x_blk``, ``ds += sum(G * x_blk yᵀ) = sum(x_blk * (G y))``,
    ``dbias += sum(G)``. Peak extra memory is O(chunk * N).
    """

    @staticmethod
    def forward(ctx, x: Tensor, y: Tensor, scale: Tensor, bias: Optional[Tensor],  # type: ignore[override]
                kernel: BlockKernel, chunk: int) -> Tensor:
        kernel.bind(x, y, scale, bias)
        total = x.new_zeros((), dtype=torch.float64)  # sums of many small per-line losses
        for rows in row_blocks(x.shape[0], chunk):
            total += kernel.forward_block(_bilinear(x[rows], y, scale, bias), rows)
        total += kernel.finish()
        ctx.save_for_backward(x, y, scale, bias)
        ctx.kernel, ctx.chunk = kernel, chunk
        return total.to(x.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        x, y, scale, bias = ctx.saved_tensors
        grad_x, grad_y = torch.empty_like(x), torch.zeros_like(y)
        grad_scale, grad_bias = x.new_zeros(()), x.new_zeros(())
        for rows in row_blocks(x.shape[0], ctx.chunk):
            x_blk = x[rows]
            g_blk = ctx.kernel.grad_block(_bilinear(x_blk, y, scale, bias), rows)
            g_y = g_blk @ y
            grad_scale += (x_blk * g_y).sum()
            grad_x[rows] = g_y.mul_(scale)
            grad_y.addmm_(g_blk.T, x_blk * scale)
            if bias is not None:
                grad_bias += g_blk.sum()
        return (grad_x * grad, grad_y * grad, grad_scale * grad,
                grad_bias * grad if bias is not None else None, None, None)


def blockwise(x: Tensor, y: Tensor, scale: Tensor, bias: Optional[Tensor], kernel: BlockKernel,
               chunk_size: Optional[int]) -> Tensor:
    """Run ``kernel`` over blocks of ``chunk_size`` rows (all rows when None), in at least float32."""
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of rows or None, got {chunk_size}")
    chunk = max(x.shape[0], 1) if chunk_size is None else int(chunk_size)
    dtype = torch.promote_types(x.dtype, torch.float32)
    return BlockwiseBilinear.apply(x.to(dtype), y.to(dtype), scale.to(dtype),
                                    None if bias is None else bias.to(dtype), kernel, chunk)


# --------------------------------------------------------------------------- targets
def momentum_distillation_targets(teacher_x: Tensor, teacher_y: Tensor, scale: Tensor, alpha: float, *,
                                  offset: int = 0, normaliser: Optional[Tensor] = None) -> Tensor:
    """ALBEF soft targets ``(M, N)``: ``q_ij = alpha * exp(s tx_i·ty_j - n_i) + (1 - alpha) * 1[j = i + offset]``.

    ``teacher_x (M, D)``, ``teacher_y (N, D)`` are EMA-teacher embeddings, ``scale`` is the
    multiplier ``s = exp(logit_scale)``, ``n_i = logsumexp_j(s tx_i·ty_j)`` (a row softmax)
    unless ``normaliser (M,)`` is given. Rows sum to 1.
    """
    logits = scale * teacher_x @ teacher_y.T
    lse = logits.logsumexp(1) if normaliser is None else normaliser
    targets = (logits - lse[:, None]).exp_().mul_(alpha)
    targets.diagonal(offset).add_(1.0 - alpha)
    return targets


def _count_matches(queries: Tensor, keys: Tensor) -> Tensor:
    """``(len(queries),)``: how many entries of ``keys`` equal each query."""
    ordered = keys.sort().values
    return torch.searchsorted(ordered, queries, right=True) - torch.searchsorted(ordered, queries)


class _LineStats:
    """Softmax statistics of every line (row or column) of a logit matrix, merged block by block in float64.

    A line ``L_k`` is summarised by its maximum ``m``, the position ``a`` of that maximum and
    ``s = sum_{k != a} exp(L_k - m)``, so that ``lse = m + log1p(s)`` is never formed: a cross-entropy
    ``lse - sum_k q_k L_k`` with targets summing to 1 is ``log1p(s) + sum_k q_k (m - L_k)``, a probability is
    ``exp((L_k - m) - log1p(s))`` and at the maximum ``p_a - 1 = expm1(-log1p(s))``. Nothing of the size of the
    logit scale is subtracted from another such number, which keeps float32 losses near zero exact.
    """

    def __init__(self, size: int, like: Tensor):
        self.max = torch.full((size,), -math.inf, dtype=torch.float64, device=like.device)
        self.rest = torch.zeros(size, dtype=torch.float64, device=like.device)
        self.argmax = torch.zeros(size, dtype=torch.long, device=like.device)

    def merge(self, block: slice, m: Tensor, a: Tensor, s: Tensor) -> Tuple[Tensor, Tensor]:
        """Fold one block's ``(m, a, s)`` of lines ``block`` in; returns the lines' maxima before and after."""
        m, s = m.double(), s.double()
        old = self.max[block].clone()
        first = self.rest[block]
        keep = old >= m
        new = torch.maximum(old, m)
        self.rest[block] = torch.where(keep, first + (m - new).exp() * (1.0 + s),
                                       s + (old - new).exp() * (1.0 + first))
        self.argmax[block] = torch.where(keep, self.argmax[block], a)
        self.max[block] = new
        return old, new

    def log_rest(self) -> Tensor:
        return self.rest.log1p()


REFINED_ENTRIES = 8
REFINE_BELOW = 1.0
"""A line whose ``sum_{k != max} exp(L_k - max)`` is below :data:`REFINE_BELOW` (its loss below log 2) has its
:data:`REFINED_ENTRIES` largest logits recomputed in float64: they carry most of that sum, so the rounding of
float32 logits (about 1e-5 at a logit scale of 100) no longer reaches a loss near zero. Lines with larger losses
keep float32 logits, whose rounding is then far below the loss (and nothing is recomputed while a model is far
from fitting its batch)."""


class _ExactLogits:
    """The logits ``scale * x_i . y_j (+ bias)`` recomputed in float64 at chosen entries, a piece at a time."""

    PIECE = 1 << 22  # float64 values of the gathered factors per piece (32 MB)

    def __init__(self, x: Tensor, y: Tensor, scale: Tensor, bias: Optional[Tensor]):
        self.x, self.y = x, y
        self.scale = scale.detach().double()
        self.bias = None if bias is None else bias.detach().double()

    def __call__(self, i: Tensor, j: Tensor) -> Tensor:
        """float64 logits at the global rows ``i`` and columns ``j`` (index tensors of one shape)."""
        flat_i, flat_j = i.reshape(-1), j.reshape(-1)
        out = torch.empty(flat_i.shape, dtype=torch.float64, device=self.x.device)
        step = max(1, self.PIECE // max(1, self.x.shape[1]))
        for k in range(0, len(flat_i), step):
            out[k:k + step] = (self.x[flat_i[k:k + step]].double() * self.y[flat_j[k:k + step]].double()).sum(1)
        out.mul_(self.scale)
        if self.bias is not None:
            out += self.bias
        return out.view(i.shape)


def _max_rest(logits: Tensor, dim: int, exact: Optional[_ExactLogits] = None,
              row_start: int = 0) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Along ``dim``: ``(max, argmax, sum of exp(L - max) over the other entries, float32 max)``, float64 but for
    the last.

    With ``exact``, lines with a small sum (see :data:`REFINE_BELOW`) take their maximum and their largest terms
    from logits recomputed in float64. Entries at ``-inf`` (masked out) stay out; a line with no finite entry
    has maximum ``-inf`` and sum 0.
    """
    m, a = logits.max(dim)
    finite = torch.isfinite(m)
    safe = torch.where(finite, m, torch.zeros_like(m))
    e = (logits - safe.unsqueeze(dim)).exp_()
    e.scatter_(dim, a.unsqueeze(dim), 0.0)
    rest = e.sum(dim).double()
    m64 = m.double()
    if exact is None:
        return m64, a, rest, m
    lines = ((rest < REFINE_BELOW) & finite).nonzero().flatten()
    if len(lines) == 0:
        return m64, a, rest, m
    sub = e.index_select(1 - dim, lines)
    sub.scatter_(dim, a[lines].unsqueeze(dim), 2.0)  # the maximum is always among the refined entries
    top = sub.topk(min(REFINED_ENTRIES, logits.shape[dim]), dim).indices
    sub_rest = sub.scatter_(dim, top, 0.0).sum(dim).double()
    if dim == 1:
        i, j = lines[:, None].expand_as(top) + row_start, top
    else:
        i, j = top + row_start, lines[None, :].expand_as(top)
    refined = exact(i, j).masked_fill_(~torch.isfinite(logits.index_select(1 - dim, lines).gather(dim, top)),
                                       -math.inf)
    top_max, where = refined.max(dim)
    terms = (refined - top_max.unsqueeze(dim)).exp_()
    terms.scatter_(dim, where.unsqueeze(dim), 0.0)
    rest[lines] = terms.sum(dim) + sub_rest * (m64[lines] - top_max).exp()
    m64[lines] = top_max
    a = a.clone()
    a[lines] = top.gather(dim, where.unsqueeze(dim)).squeeze(dim)
    return m64, a, rest, m


def _check_groups(groups_x: Tensor, groups_y: Tensor, columns: bool, dtype: torch.dtype
                  ) -> Tuple[Tensor, Optional[Tensor]]:
    """Positives per row (and per column): how many ids on the other side equal each id; every one needs one."""
    row_pos = _count_matches(groups_x, groups_y).to(dtype)
    col_pos = _count_matches(groups_y, groups_x).to(dtype) if columns else None
    lonely = (row_pos == 0).nonzero().flatten()
    if columns and len(lonely) == 0:
        lonely = (col_pos == 0).nonzero().flatten()
    if len(lonely):
        raise ValueError(f"contrastive groups: sample {int(lonely[0])} has no positive (no equal group id "
                         "on the other side); give every sample at least one partner")
    return row_pos, col_pos


class InfoNCEKernel(BlockKernel):
    """Summed softmax cross-entropies ``-sum_j q_ij log p_ij = lse_i - sum_j q_ij L_ij`` of the rows (and, with
    ``columns``, the columns) of ``L (M, N)``.

    Row ``i`` is a distribution over columns, ``p_ij = exp(L_ij - lse_i)``; column ``j`` one over rows
    (``columns`` needs a square ``L`` with ``offset = 0``). Targets ``q = (1 - eps) * t + eps / N`` where ``t``
    is the one-hot ``j = i + offset``, or the mask of same-group entries divided by its count (SupCon), or
    the ALBEF targets of the teacher; every target row sums to 1. Statistics are :class:`_LineStats`.
    """

    def __init__(self, rows: int, cols: int, like: Tensor, *, offset: int, columns: bool, smoothing: float,
                 groups_x: Optional[Tensor], groups_y: Optional[Tensor], teacher_x: Optional[Tensor],
                 teacher_y: Optional[Tensor], teacher_scale: Optional[Tensor], alpha: float, chunk: int):
        if columns and (rows != cols or offset != 0):
            raise ValueError(f"column terms need a square logit matrix, got {rows}x{cols} with offset {offset}")
        self.offset, self.columns = offset, columns
        self.keep, self.row_uniform, self.col_uniform = 1.0 - smoothing, smoothing / cols, smoothing / rows
        self.groups_x, self.groups_y = groups_x, groups_y
        self.teacher_x, self.teacher_y, self.teacher_scale, self.alpha = teacher_x, teacher_y, teacher_scale, alpha
        self.row_stats = _LineStats(rows, like)
        self.col_stats = _LineStats(cols, like) if columns else None
        if columns:  # sum_i q_ij (max_j - L_ij) and sum_i q_ij, over the blocks seen so far
            self.col_gap = torch.zeros(cols, dtype=torch.float64, device=like.device)
            self.col_weight = torch.zeros(cols, dtype=torch.float64, device=like.device)
        if groups_x is not None:
            self.row_pos, self.col_pos = _check_groups(groups_x, groups_y, columns, like.dtype)
        self.teacher_col_lse: Optional[Tensor] = None
        if teacher_x is not None and columns:  # column softmax of the teacher needs every row first
            lse = like.new_full((cols,), -math.inf)
            for blk in row_blocks(rows, chunk):
                lse = torch.logaddexp(lse, (teacher_scale * teacher_x[blk] @ teacher_y.T).logsumexp(0))
            self.teacher_col_lse = lse

    # targets ------------------------------------------------------------------------------------
    def _row_targets(self, rows: slice) -> Optional[Tensor]:
        """``(c, N)`` row targets of the block without the uniform part, or None for the one-hot diagonal."""
        if self.teacher_x is not None:
            q = momentum_distillation_targets(self.teacher_x[rows], self.teacher_y, self.teacher_scale, self.alpha,
                                              offset=rows.start + self.offset)
            return q.mul_(self.keep)
        if self.groups_x is not None:
            mask = (self.groups_x[rows, None] == self.groups_y[None, :]).to(self.row_pos.dtype)
            return mask.div_(self.row_pos[rows, None]).mul_(self.keep)
        return None

    def _col_targets(self, rows: slice) -> Optional[Tensor]:
        """``(c, N)`` column targets of the block's rows without the uniform part, or None for the diagonal."""
        if self.teacher_x is not None:
            q = momentum_distillation_targets(self.teacher_y, self.teacher_x[rows], self.teacher_scale, self.alpha,
                                              offset=-rows.start, normaliser=self.teacher_col_lse).T
            return q.mul(self.keep)
        if self.groups_x is not None:
            mask = (self.groups_x[rows, None] == self.groups_y[None, :]).to(self.col_pos.dtype)
            return mask.div_(self.col_pos[None, :]).mul_(self.keep)
        return None

    def _target_at(self, dense: Optional[Tensor], i: Tensor, j: Tensor, diagonal: Tensor, uniform: float) -> Tensor:
        """Targets at the block entries ``(i, j)``; ``diagonal`` marks the one-hot entries when ``dense`` is None."""
        q = dense[i, j] if dense is not None else diagonal.to(torch.float64) * self.keep
        return q.to(torch.float64) + uniform

    # forward ------------------------------------------------------------------------------------
    def forward_block(self, logits: Tensor, rows: slice) -> Tensor:
        m, a, s, m32 = _max_rest(logits, 1, self.exact, rows.start)
        self.row_stats.merge(rows, m, a, s)
        q = self._row_targets(rows)
        if q is None:
            local = torch.arange(logits.shape[0], device=logits.device)
            gap = self.keep * (m - self._logit_at(logits, rows, local, local + rows.start + self.offset))
        else:
            gap = self._dense_gap(logits, 1, m, m32, q)
        if self.row_uniform:
            gap = gap + self.row_uniform * self._spread(logits, 1, m, m32)
        if self.columns:
            self._column_block(logits, rows)
        return (s.log1p() + gap).sum()

    def _column_block(self, logits: Tensor, rows: slice) -> None:
        m, a, s, m32 = _max_rest(logits, 0, self.exact, rows.start)
        old, new = self.col_stats.merge(slice(0, logits.shape[1]), m, a + rows.start, s)
        q = self._col_targets(rows)
        if q is None:  # the columns whose positive (the diagonal) lies in this block
            idx = torch.arange(rows.start, rows.stop, device=logits.device)
            weight, gap = torch.zeros_like(m), torch.zeros_like(m)
            weight[idx] = self.keep
            gap[idx] = self.keep * (m[idx] - self._logit_at(logits, rows, idx - rows.start, idx))
        else:
            weight, gap = q.sum(0).double(), self._dense_gap(logits, 0, m, m32, q)
        if self.col_uniform:
            weight = weight + self.col_uniform * logits.shape[0]
            gap = gap + self.col_uniform * self._spread(logits, 0, m, m32)
        shift = torch.where(self.col_weight > 0, self.col_weight * (new - old), 0.0)
        self.col_gap += shift + gap + weight * (new - m)
        self.col_weight += weight

    def _logit_at(self, logits: Tensor, rows: slice, i: Tensor, j: Tensor) -> Tensor:
        """float64 logits at the block rows ``i`` and columns ``j`` (recomputed exactly when possible)."""
        return self.exact(i + rows.start, j) if self.exact is not None else logits[i, j].double()

    @staticmethod
    def _dense_gap(logits: Tensor, dim: int, m: Tensor, m32: Tensor, q: Tensor) -> Tensor:
        """``sum_k q_k (m - L_k)`` along ``dim`` (float64), ``m`` the exact maxima and ``m32`` the block's."""
        diff = m32.unsqueeze(dim) - logits
        return (q * diff).sum(dim).double() + (m - m32.double()) * q.sum(dim).double()

    @staticmethod
    def _spread(logits: Tensor, dim: int, m: Tensor, m32: Tensor) -> Tensor:
        """``sum_k (m - L_k)`` along ``dim`` (float64): the uniform targets' part."""
        return (m32.unsqueeze(dim) - logits).sum(dim).double() + logits.shape[dim] * (m - m32.double())

    def finish(self) -> Union[Tensor, float]:
        if not self.columns:
            return 0.0
        return (self.col_stats.log_rest() + self.col_gap).sum()

    # backward -----------------------------------------------------------------------------------
    def grad_block(self, logits: Tensor, rows: slice) -> Tensor:
        dtype, c, device = logits.dtype, logits.shape[0], logits.device
        stats = self.row_stats
        row_m, row_l = stats.max[rows], stats.log_rest()[rows]
        # the entries where a line peaks: p - q there is recomputed in float64 without rounding near 1
        ei, ej = torch.arange(c, device=device), stats.argmax[rows]
        if self.columns:
            cstats = self.col_stats
            col_m, col_l = cstats.max, cstats.log_rest()
            cj = ((cstats.argmax >= rows.start) & (cstats.argmax < rows.stop)).nonzero().flatten()
            ei, ej = torch.cat([ei, cstats.argmax[cj] - rows.start]), torch.cat([ej, cj])
        peak = self._logit_at(logits, rows, ei, ej)
        q = self._row_targets(rows)
        exact = self._exact_part(peak - row_m[ei] - row_l[ei], q, ei, ej, stats.argmax[rows][ei] == ej,
                                 ej == ei + rows.start + self.offset, self.row_uniform)
        grad = logits - row_m.to(dtype)[:, None]
        grad = grad.sub_(row_l.to(dtype)[:, None]).exp_()  # p of the rows
        if q is None:
            grad.diagonal(rows.start + self.offset).sub_(self.keep)
        else:
            grad -= q
        if self.row_uniform:
            grad -= self.row_uniform
        if self.columns:
            qc = self._col_targets(rows)
            exact += self._exact_part(peak - col_m[ej] - col_l[ej], qc, ei, ej, cstats.argmax[ej] == ei + rows.start,
                                      ej == ei + rows.start, self.col_uniform)
            grad += logits.sub_(col_m.to(dtype)[None, :]).sub_(col_l.to(dtype)[None, :]).exp_()  # p of the columns
            if qc is None:
                grad.diagonal(rows.start).sub_(self.keep)
            else:
                grad -= qc
            if self.col_uniform:
                grad -= self.col_uniform
        grad[ei, ej] = exact.to(dtype)
        return grad

    def _exact_part(self, logp: Tensor, q: Optional[Tensor], i: Tensor, j: Tensor, at_max: Tensor,
                    diagonal: Tensor, uniform: float) -> Tensor:
        """``p - q`` at the entries ``(i, j)`` from their float64 ``log p``: ``expm1(log p) + (1 - q)`` where the
        line peaks, so ``p`` near 1 is not rounded."""
        target = self._target_at(q, i, j, diagonal, uniform)
        return torch.where(at_max, logp.expm1() + (1.0 - target), logp.exp() - target)


class MultiPositiveKernel(BlockKernel):
    """Summed ``-log sum_{j in P(i)} p_ij = lse_i - lse_{P(i)}`` over the rows (and, with ``columns``, the
    columns) of ``L (M, N)``, ``P(i)`` the same-group entries (MIL-NCE / UniCL).

    With ``pmax``/``P`` the maximum and ``sum exp(L - pmax)`` over the positives and ``nmax``/``Q`` over the
    negatives, the loss of a line is ``softplus(nmax - pmax + log Q - log P)``: exact in float32 however small.
    """

    def __init__(self, rows: int, cols: int, like: Tensor, *, offset: int, columns: bool, groups_x: Tensor,
                 groups_y: Tensor):
        if columns and (rows != cols or offset != 0):
            raise ValueError(f"column terms need a square logit matrix, got {rows}x{cols} with offset {offset}")
        self.columns, self.groups_x, self.groups_y = columns, groups_x, groups_y
        _check_groups(groups_x, groups_y, columns, like.dtype)
        self.rows = [torch.empty(rows, dtype=torch.float64, device=like.device) for _ in range(4)]
        if columns:
            self.cols = [torch.full((cols,), -math.inf, dtype=torch.float64, device=like.device),
                         torch.zeros(cols, dtype=torch.float64, device=like.device),
                         torch.full((cols,), -math.inf, dtype=torch.float64, device=like.device),
                         torch.zeros(cols, dtype=torch.float64, device=like.device)]

    def _mask(self, rows: slice) -> Tensor:
        return self.groups_x[rows, None] == self.groups_y[None, :]

    def _side(self, logits: Tensor, mask: Tensor, dim: int, row_start: int) -> List[Tensor]:
        """``[pmax, P, nmax, Q]`` along ``dim`` (float64): the maximum of the positives and ``sum exp(L - pmax)``
        over them, the same over the negatives (``-inf`` and 0 where a line has none)."""
        out = []
        for select in (mask, ~mask):
            m, _, rest, _ = _max_rest(logits.masked_fill(~select, -math.inf), dim, self.exact, row_start)
            out += [m, torch.where(torch.isfinite(m), 1.0 + rest, torch.zeros_like(rest))]
        return out

    @staticmethod
    def _loss(pmax: Tensor, p: Tensor, nmax: Tensor, q: Tensor) -> Tensor:
        return F.softplus(nmax - pmax + q.log() - p.log()).nan_to_num(nan=0.0)

    def forward_block(self, logits: Tensor, rows: slice) -> Tensor:
        mask = self._mask(rows)
        stats = self._side(logits, mask, 1, rows.start)
        for store, value in zip(self.rows, stats):
            store[rows] = value
        if self.columns:
            block = self._side(logits, mask, 0, rows.start)
            for k in (0, 2):  # merge (max, sum) pairs
                m, s = self.cols[k], self.cols[k + 1]
                new = torch.maximum(m, block[k])
                fin = ~torch.isinf(new)
                s = torch.where(fin, s * (m - new).exp() + block[k + 1] * (block[k] - new).exp(), 0.0)
                self.cols[k], self.cols[k + 1] = new, s.nan_to_num(nan=0.0)
        return self._loss(*stats).sum()

    def finish(self) -> Union[Tensor, float]:
        return self._loss(*self.cols).sum() if self.columns else 0.0

    @classmethod
    def _grad(cls, logits: Tensor, mask: Tensor, stats: Sequence[Tensor], dim: int) -> Tensor:
        """``p - p_pos * [positive]`` of the lines along ``dim``: ``p_pos * expm1(-loss)`` on the positives,
        ``p`` elsewhere."""
        pmax, p, nmax, q = stats
        loss = cls._loss(pmax, p, nmax, q).to(logits.dtype).unsqueeze(dim)
        base = logits - pmax.to(logits.dtype).unsqueeze(dim)
        base -= p.log().to(logits.dtype).unsqueeze(dim)  # log p_pos
        return torch.where(mask, base.exp() * torch.expm1(-loss), (base - loss).exp())

    def grad_block(self, logits: Tensor, rows: slice) -> Tensor:
        mask = self._mask(rows)
        grad = self._grad(logits, mask, [s[rows] for s in self.rows], 1)
        if self.columns:
            grad += self._grad(logits, mask, self.cols, 0)
        return grad


class SigmoidKernel(BlockKernel):
    """``sum_ij -log sigmoid(z_ij L_ij) = sum_ij softplus(-z_ij L_ij)``, ``z = +1`` at ``j = i + offset``, else -1."""

    def __init__(self, offset: int):
        self.offset = offset

    def forward_block(self, logits: Tensor, rows: slice) -> Tensor:
        terms = F.softplus(logits)  # negatives: softplus(L); the positives' entries are replaced by softplus(-L)
        terms.diagonal(rows.start + self.offset).copy_(F.softplus(-logits.diagonal(rows.start + self.offset)))
        return terms.double().sum()

    def grad_block(self, logits: Tensor, rows: slice) -> Tensor:
        grad = logits.sigmoid_()
        grad.diagonal(rows.start + self.offset).sub_(1.0)
        return grad


