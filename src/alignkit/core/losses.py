"""Contrastive alignment losses: each a pure function plus a thin ``nn.Module`` in ``LOSSES``.

Every module's ``forward(a, b, **extras) -> LossOutput`` takes two ``(B, D)`` L2-normalised
embedding batches whose row ``i`` is a positive pair. Extras a loss may use: ``groups_a``,
``groups_b`` (``(B,)`` ids, equal ids are positives), ``teacher_a``, ``teacher_b`` (EMA-teacher
embeddings) and ``alpha`` (distillation weight); a loss ignores the extras it does not use.

Distributed: under DDP every loss all-gathers the other ranks' embeddings *with* gradients and
scores its ``B`` local rows against the ``W * B`` global ones, normalised by the local batch.
The mean over ranks of the local losses is then the single-process loss of the global batch, and
DDP's gradient averaging yields exactly that loss's gradients.

Chunking: the InfoNCE and sigmoid losses run through :class:`_BlockwiseBilinear`, which never
holds more than a ``(chunk, N)`` block of logits: the forward keeps only row/column log-sum-exps
and the backward recomputes each block. ``chunk_size=None`` is a single block.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alignkit.core.distributed import gather_no_grad, gather_with_grad, is_distributed, local_row_offset
from alignkit.core.registry import LOSSES, ConfigError


@dataclass
class LossOutput:
    """A scalar training loss and detached scalars to log (``logit_scale``, ``accuracy``, ...)."""

    loss: Tensor
    metrics: Dict[str, Tensor] = field(default_factory=dict)


# --------------------------------------------------------------------------- blockwise engine
def _row_blocks(rows: int, chunk: int) -> List[slice]:
    return [slice(i, min(i + chunk, rows)) for i in range(0, rows, chunk)]


def _bilinear(x_blk: Tensor, y: Tensor, scale: Tensor, bias: Optional[Tensor]) -> Tensor:
    """``(c, N)`` logits ``scale * x_blk @ y.T (+ bias)``."""
    logits = torch.mm(x_blk * scale, y.T)
    return logits.add_(bias) if bias is not None else logits


class _BlockKernel:
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


class _BlockwiseBilinear(torch.autograd.Function):
    """``kernel``'s loss of ``L = scale * x yᵀ + bias`` computed in row blocks of ``chunk``.

    Saves only ``x (M, D)``, ``y (N, D)``, ``scale``, ``bias`` (and the kernel's O(M + N)
    statistics); the backward recomputes each block ``L_blk`` and with ``G = dloss/dL_blk``:
    ``dx_blk = s G y``, ``dy += s Gᵀ x_blk``, ``ds += sum(G * x_blk yᵀ) = sum(x_blk * (G y))``,
    ``dbias += sum(G)``. Peak extra memory is O(chunk * N).
    """

    @staticmethod
    def forward(ctx, x: Tensor, y: Tensor, scale: Tensor, bias: Optional[Tensor],  # type: ignore[override]
                kernel: _BlockKernel, chunk: int) -> Tensor:
        kernel.bind(x, y, scale, bias)
        total = x.new_zeros((), dtype=torch.float64)  # sums of many small per-line losses
        for rows in _row_blocks(x.shape[0], chunk):
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
        for rows in _row_blocks(x.shape[0], ctx.chunk):
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


def _blockwise(x: Tensor, y: Tensor, scale: Tensor, bias: Optional[Tensor], kernel: _BlockKernel,
               chunk_size: Optional[int]) -> Tensor:
    """Run ``kernel`` over blocks of ``chunk_size`` rows (all rows when None), in at least float32."""
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of rows or None, got {chunk_size}")
    chunk = max(x.shape[0], 1) if chunk_size is None else int(chunk_size)
    dtype = torch.promote_types(x.dtype, torch.float32)
    return _BlockwiseBilinear.apply(x.to(dtype), y.to(dtype), scale.to(dtype),
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
"""Entries per line whose logits are recomputed in float64: the line's largest, which carry most of
``sum exp(L - max)``, so the rounding of float32 logits (about 1e-5 at a logit scale of 100) no longer
reaches a loss near zero."""


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
    """Along ``dim``: ``(max, argmax, sum of exp(L - max) over the other entries, float32 max)``.

    With ``exact`` the :data:`REFINED_ENTRIES` largest entries of each line are recomputed in float64: the
    maximum (float64) and their terms of the sum come from those, the rest from the float32 block. Entries at
    ``-inf`` (masked out) stay out; a line with no finite entry has maximum ``-inf`` and sum 0.
    """
    m, a = logits.max(dim)
    safe = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e = (logits - safe.unsqueeze(dim)).exp_()
    if exact is None:
        e.scatter_(dim, a.unsqueeze(dim), 0.0)
        return m.double(), a, e.sum(dim).double(), m
    top = e.topk(min(REFINED_ENTRIES, logits.shape[dim]), dim).indices
    e.scatter_(dim, top, 0.0)
    rest = e.sum(dim).double()
    lines = torch.arange(logits.shape[1 - dim], device=logits.device)
    if dim == 1:
        i, j = lines[:, None].expand_as(top) + row_start, top
    else:
        i, j = top + row_start, lines[None, :].expand_as(top)
    refined = exact(i, j).masked_fill_(~torch.isfinite(logits.gather(dim, top)), -math.inf)
    m64, where = refined.max(dim)
    safe64 = torch.where(torch.isfinite(m64), m64, torch.zeros_like(m64))
    terms = (refined - safe64.unsqueeze(dim)).exp_()
    terms.scatter_(dim, where.unsqueeze(dim), 0.0)
    rest = terms.sum(dim) + rest * (safe.double() - safe64).exp()
    return m64, top.gather(dim, where.unsqueeze(dim)).squeeze(dim), rest, m


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


class _InfoNCEKernel(_BlockKernel):
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
            for blk in _row_blocks(rows, chunk):
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


class _MultiPositiveKernel(_BlockKernel):
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


class _SigmoidKernel(_BlockKernel):
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


# --------------------------------------------------------------------------- pure losses
def logit_multiplier(logit_scale: Tensor, max_logit_scale: float) -> Tensor:
    """``s = exp(min(logit_scale, log(max_logit_scale)))``, the multiplier of the cosine logits.

    The cap is applied to the log, where the clamp's gradient is inclusive: a ``logit_scale`` exactly at the
    cap (``init_temperature = 1 / max``, or a parameter put back there by :func:`clamp_logit_scales_`) still
    receives its gradient and can learn back down. (Clamping ``exp(logit_scale)`` instead loses it for good:
    ``exp(float32(log 100)) = 100.0000076`` is already past the cap.)
    """
    return logit_scale.clamp(max=math.log(max_logit_scale)).exp()


@torch.no_grad()
def clamp_logit_scales_(module: nn.Module) -> None:
    """Clamp in place every learnable ``logit_scale`` in ``module`` (a loss with a ``max_logit_scale``) to
    ``<= log(max_logit_scale)``, as open_clip does after each optimiser step, so a scale the optimiser pushed
    past the cap sits at the cap, where it receives gradient again."""
    for sub in module.modules():
        scale = getattr(sub, "logit_scale", None)
        cap = getattr(sub, "max_logit_scale", None)
        if isinstance(scale, nn.Parameter) and cap is not None:
            scale.clamp_(max=math.log(float(cap)))


def _check_pair(a: Tensor, b: Tensor, where: str) -> None:
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"{where}: expected a and b of equal shape (B, D), got {tuple(a.shape)} and {tuple(b.shape)}")


def _both_or_neither(x: Optional[Tensor], y: Optional[Tensor], names: str, where: str) -> bool:
    if (x is None) != (y is None):
        raise ValueError(f"{where}: pass both {names} or neither")
    return x is not None


def _symmetric_infonce(a: Tensor, b: Tensor, scale: Tensor, *, mode: str, smoothing: float,
                       groups_a: Optional[Tensor], groups_b: Optional[Tensor],
                       teacher_a: Optional[Tensor], teacher_b: Optional[Tensor], alpha: float,
                       chunk_size: Optional[int], distributed: bool) -> Tensor:
    """``1/2 [mean_i CE(row i of s a bᵀ) + mean_j CE(row j of s b aᵀ)]`` over the (global) batch."""
    rows, dtype = a.shape[0], torch.promote_types(a.dtype, torch.float32)
    a, b, scale = a.to(dtype), b.to(dtype), scale.to(dtype)
    if teacher_a is not None:
        teacher_a, teacher_b = teacher_a.detach().to(dtype), teacher_b.detach().to(dtype)
    teacher_scale = scale.detach() if teacher_a is not None else None

    def one_way(x: Tensor, y: Tensor, *, teacher_x: Optional[Tensor], teacher_y: Optional[Tensor],
                **kw: Any) -> Tensor:
        if mode == "logsum":
            kernel: _BlockKernel = _MultiPositiveKernel(x.shape[0], y.shape[0], x.detach(), **kw)
        else:
            kernel = _InfoNCEKernel(x.shape[0], y.shape[0], x.detach(), smoothing=smoothing, teacher_x=teacher_x,
                                    teacher_y=teacher_y, teacher_scale=teacher_scale, alpha=alpha,
                                    chunk=chunk_size or rows, **kw)
        return _blockwise(x, y, scale, None, kernel, chunk_size)

    if not (distributed and is_distributed()):
        return one_way(a, b, offset=0, columns=True, groups_x=groups_a, groups_y=groups_b,
                       teacher_x=teacher_a, teacher_y=teacher_b) / (2 * rows)

    def gathered(t: Optional[Tensor]) -> Optional[Tensor]:
        return None if t is None else gather_no_grad(t)

    offset = local_row_offset(rows)
    a_all, b_all = gather_with_grad(a), gather_with_grad(b)
    a_to_b = one_way(a, b_all, offset=offset, columns=False, groups_x=groups_a, groups_y=gathered(groups_b),
                     teacher_x=teacher_a, teacher_y=gathered(teacher_b))
    b_to_a = one_way(b, a_all, offset=offset, columns=False, groups_x=groups_b, groups_y=gathered(groups_a),
                     teacher_x=teacher_b, teacher_y=gathered(teacher_a))
    return (a_to_b + b_to_a) / (2 * rows)


def clip_loss(a: Tensor, b: Tensor, logit_scale: Tensor, *, max_logit_scale: float = 100.0,
              label_smoothing: float = 0.0, teacher_a: Optional[Tensor] = None, teacher_b: Optional[Tensor] = None,
              alpha: float = 0.4, chunk_size: Optional[int] = None, distributed: bool = True) -> Tensor:
    """Symmetric InfoNCE (CLIP): ``L = 1/2 [CE(s a bᵀ, I) + CE(s b aᵀ, I)]``, ``s = min(exp(logit_scale), max)``.

    ``a``, ``b``: ``(B, D)``; ``logit_scale``: scalar log of the logit multiplier. CE is the mean
    over rows of ``-sum_j q_ij log softmax_j``. Targets ``q = (1 - eps) t + eps / N`` (label
    smoothing ``eps``, ``N`` columns) with ``t = I``, or, given the EMA-teacher embeddings
    ``teacher_a``, ``teacher_b``, the ALBEF momentum-distillation targets
    ``t = alpha * softmax(s_teacher ta tbᵀ) + (1 - alpha) I`` (row-wise for ``a -> b``, and
    ``softmax(s tb taᵀ)`` for ``b -> a``; ``s_teacher = s`` without gradient).
    ``chunk_size`` rows per block bounds the logits memory to ``O(chunk_size * B)``.
    """
    _check_pair(a, b, "clip_loss")
    if _both_or_neither(teacher_a, teacher_b, "teacher_a and teacher_b", "clip_loss"):
        _check_pair(teacher_a, teacher_b, "clip_loss teacher")
    else:
        alpha = 0.0
    return _symmetric_infonce(a, b, logit_multiplier(logit_scale, max_logit_scale), mode="linear", smoothing=label_smoothing,
                              groups_a=None, groups_b=None, teacher_a=teacher_a, teacher_b=teacher_b, alpha=alpha,
                              chunk_size=chunk_size, distributed=distributed)


MULTI_POSITIVE_MODES = ("logsum", "supcon")


def multi_positive_infonce_loss(a: Tensor, b: Tensor, logit_scale: Tensor, *, groups_a: Optional[Tensor] = None,
                                groups_b: Optional[Tensor] = None, mode: str = "logsum",
                                max_logit_scale: float = 100.0, chunk_size: Optional[int] = None,
                                distributed: bool = True) -> Tensor:
    """InfoNCE with several positives per anchor, symmetric in both directions.

    Positives ``P(i) = {j : groups_a[i] == groups_b[j]}``; ``p_ij = softmax_j(s a_i·b_j)``.

    * ``mode="logsum"`` (log of summed positive probability, MIL-NCE / UniCL):
      ``L_i = -log sum_{j in P(i)} p_ij``;
    * ``mode="supcon"`` (mean over positives of the log probability, SupCon "out"):
      ``L_i = -1/|P(i)| sum_{j in P(i)} log p_ij``.

    ``L = 1/2 [mean_i L_i(a -> b) + mean_j L_j(b -> a)]``. Without groups the positives are
    ``j = i`` and both modes equal :func:`clip_loss`. Every sample needs at least one positive.
    """
    _check_pair(a, b, "multi_positive_infonce_loss")
    if mode not in MULTI_POSITIVE_MODES:
        raise ValueError(f"multi_positive_infonce_loss: unknown mode '{mode}'; use one of {MULTI_POSITIVE_MODES}")
    if _both_or_neither(groups_a, groups_b, "groups_a and groups_b", "multi_positive_infonce_loss"):
        if groups_a.shape != (a.shape[0],) or groups_b.shape != (b.shape[0],):
            raise ValueError(f"multi_positive_infonce_loss: groups must be (B,)={a.shape[0]} ids, got "
                             f"{tuple(groups_a.shape)} and {tuple(groups_b.shape)}")
    else:
        mode = "linear"  # one positive per row: both modes are the one-hot cross-entropy
    return _symmetric_infonce(a, b, logit_multiplier(logit_scale, max_logit_scale),
                              mode="linear" if mode == "supcon" else mode, smoothing=0.0,
                              groups_a=groups_a, groups_b=groups_b, teacher_a=None, teacher_b=None, alpha=0.0,
                              chunk_size=chunk_size, distributed=distributed)


def siglip_loss(a: Tensor, b: Tensor, logit_scale: Tensor, logit_bias: Tensor, *, max_logit_scale: float = 100.0,
                chunk_size: Optional[int] = None, distributed: bool = True) -> Tensor:
    """Sigmoid loss (SigLIP): ``L = -1/B sum_ij log sigmoid(z_ij (t a_i·b_j + bias))``.

    ``z_ij = +1`` for ``i = j`` and -1 otherwise, ``t = min(exp(logit_scale), max)``, ``B`` the
    local batch; the sum over ``j`` runs over the global batch under DDP.
    """
    _check_pair(a, b, "siglip_loss")
    rows = a.shape[0]
    if distributed and is_distributed():
        b, offset = gather_with_grad(b), local_row_offset(rows)
    else:
        offset = 0
    return _blockwise(a, b, logit_multiplier(logit_scale, max_logit_scale), logit_bias, _SigmoidKernel(offset),
                      chunk_size) / rows


# --------------------------------------------------------------------------- modules
def _register_scalar(module: nn.Module, name: str, value: float, learnable: bool) -> None:
    """A scalar parameter (trained) or persistent buffer (fixed) called ``name``."""
    tensor = torch.tensor(float(value))
    if learnable:
        module.register_parameter(name, nn.Parameter(tensor))
    else:
        module.register_buffer(name, tensor)


def _check_temperature(init_temperature: float, where: str) -> float:
    if init_temperature <= 0:
        raise ConfigError(f"{where}: init_temperature must be > 0, got {init_temperature}")
    return math.log(1.0 / init_temperature)


@LOSSES.register("clip")
class ClipLoss(nn.Module):
    """:func:`clip_loss` owning ``logit_scale = log(1 / init_temperature)``; uses ``teacher_a/b``, ``alpha`` extras."""

    def __init__(self, init_temperature: float = 0.07, learnable_temperature: bool = True,
                 max_logit_scale: float = 100.0, label_smoothing: float = 0.0, chunk_size: Optional[int] = None,
                 distributed: bool = True):
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"clip loss: label_smoothing must be in [0, 1), got {label_smoothing}")
        _register_scalar(self, "logit_scale", _check_temperature(init_temperature, "clip loss"),
                         learnable_temperature)
        self.max_logit_scale, self.label_smoothing = float(max_logit_scale), float(label_smoothing)
        self.chunk_size, self.distributed = chunk_size, distributed

    def forward(self, a: Tensor, b: Tensor, teacher_a: Optional[Tensor] = None, teacher_b: Optional[Tensor] = None,
                alpha: float = 0.4, **extras: Any) -> LossOutput:
        loss = clip_loss(a, b, self.logit_scale, max_logit_scale=self.max_logit_scale,
                         label_smoothing=self.label_smoothing, teacher_a=teacher_a, teacher_b=teacher_b, alpha=alpha,
                         chunk_size=self.chunk_size, distributed=self.distributed)
        return LossOutput(loss, {"logit_scale": logit_multiplier(self.logit_scale, self.max_logit_scale).detach()})


@LOSSES.register("multi_positive")
class MultiPositiveInfoNCELoss(nn.Module):
    """:func:`multi_positive_infonce_loss` owning its ``logit_scale``; uses ``groups_a/b`` extras."""

    def __init__(self, init_temperature: float = 0.07, learnable_temperature: bool = True,
                 max_logit_scale: float = 100.0, mode: str = "logsum", chunk_size: Optional[int] = None,
                 distributed: bool = True):
        super().__init__()
        if mode not in MULTI_POSITIVE_MODES:
            raise ConfigError(f"multi_positive loss: unknown mode '{mode}'; use one of {MULTI_POSITIVE_MODES}")
        _register_scalar(self, "logit_scale", _check_temperature(init_temperature, "multi_positive loss"),
                         learnable_temperature)
        self.max_logit_scale, self.mode = float(max_logit_scale), mode
        self.chunk_size, self.distributed = chunk_size, distributed

    def forward(self, a: Tensor, b: Tensor, groups_a: Optional[Tensor] = None, groups_b: Optional[Tensor] = None,
                **extras: Any) -> LossOutput:
        loss = multi_positive_infonce_loss(a, b, self.logit_scale, groups_a=groups_a, groups_b=groups_b,
                                           mode=self.mode, max_logit_scale=self.max_logit_scale,
                                           chunk_size=self.chunk_size, distributed=self.distributed)
        return LossOutput(loss, {"logit_scale": logit_multiplier(self.logit_scale, self.max_logit_scale).detach()})


@LOSSES.register("siglip")
class SigLipLoss(nn.Module):
    """:func:`siglip_loss` owning ``logit_scale`` (log of ``t``) and ``logit_bias``."""

    def __init__(self, init_logit_scale: float = math.log(10.0), init_logit_bias: float = -10.0,
                 learnable: bool = True, max_logit_scale: float = 100.0, chunk_size: Optional[int] = None,
                 distributed: bool = True):
        super().__init__()
        _register_scalar(self, "logit_scale", init_logit_scale, learnable)
        _register_scalar(self, "logit_bias", init_logit_bias, learnable)
        self.max_logit_scale, self.chunk_size, self.distributed = float(max_logit_scale), chunk_size, distributed

    def forward(self, a: Tensor, b: Tensor, **extras: Any) -> LossOutput:
        loss = siglip_loss(a, b, self.logit_scale, self.logit_bias, max_logit_scale=self.max_logit_scale,
                           chunk_size=self.chunk_size, distributed=self.distributed)
        return LossOutput(loss, {"logit_scale": logit_multiplier(self.logit_scale, self.max_logit_scale).detach(),
                                 "logit_bias": self.logit_bias.detach()})


@LOSSES.register("matryoshka")
class MatryoshkaLoss(nn.Module):
    """Matryoshka: ``L = sum_k w_k * inner(n(a[:, :d_k]), n(b[:, :d_k]))``, ``n`` = L2 normalisation.

    ``loss`` is a module or a registered loss name built with ``loss_params`` (so a YAML config
    can say ``loss: clip, loss_params: {label_smoothing: 0.1}``); one inner loss (one temperature)
    serves every prefix. ``weights`` (default equal) are normalised to sum to 1. Teacher extras
    are cut and re-normalised like the embeddings.
    """

    def __init__(self, dims: Sequence[int], loss: Union[str, nn.Module] = "clip",
                 loss_params: Optional[Dict[str, Any]] = None, weights: Optional[Sequence[float]] = None):
        super().__init__()
        if not dims or any(int(d) < 1 for d in dims):
            raise ConfigError(f"matryoshka loss: dims must be a non-empty list of positive sizes, got {dims}")
        weights = [1.0] * len(dims) if weights is None else [float(w) for w in weights]
        if len(weights) != len(dims) or any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ConfigError(f"matryoshka loss: weights {weights} must be {len(dims)} non-negative numbers "
                              "with a positive sum, one per entry of dims")
        if isinstance(loss, str):
            self.inner = LOSSES.build(loss, where="matryoshka.loss_params", **dict(loss_params or {}))
        elif loss_params:
            raise ConfigError("matryoshka loss: loss_params only apply when loss is a registered name")
        else:
            self.inner = loss
        self.dims = [int(d) for d in dims]
        self.weights = [w / sum(weights) for w in weights]

    def forward(self, a: Tensor, b: Tensor, **extras: Any) -> LossOutput:
        if max(self.dims) > a.shape[1]:
            raise ValueError(f"matryoshka loss: dims {self.dims} exceed the embedding size {a.shape[1]}")
        total, metrics = a.new_zeros(()), {}
        for dim, weight in zip(self.dims, self.weights):
            cut = {k: F.normalize(v[:, :dim], dim=-1) if k in ("teacher_a", "teacher_b") and v is not None else v
                   for k, v in extras.items()}
            out = self.inner(F.normalize(a[:, :dim], dim=-1), F.normalize(b[:, :dim], dim=-1), **cut)
            total = total + weight * out.loss
            metrics[f"loss@{dim}"] = out.loss.detach()
            metrics.update({f"{k}@{dim}": v for k, v in out.metrics.items()})
        return LossOutput(total, metrics)


# --------------------------------------------------------------------------- momentum distillation
class EMATeacher(nn.Module):
    """A frozen deep copy of ``module`` tracking it by exponential moving average (ALBEF, MoCo).

    ``update(student)``: ``p_t <- decay * p_t + (1 - decay) * p_s`` for every parameter, buffers
    (e.g. batch-norm statistics) copied. Calling the teacher runs the copy without gradients.
    """

    def __init__(self, module: nn.Module, decay: float = 0.995):
        super().__init__()
        if not 0.0 <= decay <= 1.0:
            raise ConfigError(f"EMA teacher: decay must be in [0, 1], got {decay}")
        self.module = copy.deepcopy(module).requires_grad_(False)
        self.decay = float(decay)

    @torch.no_grad()
    def update(self, student: nn.Module) -> None:
        params, buffers = dict(student.named_parameters()), dict(student.named_buffers())
        for name, p in self.module.named_parameters():
            if name not in params:
                raise ValueError(f"EMA teacher: the student has no parameter '{name}'; update() needs the module "
                                 "the teacher was copied from (unwrap DDP/compile wrappers first)")
            p.lerp_(params[name].detach(), 1.0 - self.decay)
        for name, buf in self.module.named_buffers():
            buf.copy_(buffers[name])

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with torch.no_grad():
            return self.module(*args, **kwargs)


# --------------------------------------------------------------------------- image-text matching
def sample_hard_negatives(sim: Tensor, groups: Optional[Tensor] = None, col_groups: Optional[Tensor] = None, *,
                          offset: int = 0, generator: Optional[torch.Generator] = None) -> Tensor:
    """``(M,)`` LongTensor: for each row of ``sim (M, N)`` one column drawn from ``softmax_j(sim_ij)``
    over its negatives.

    Positives (never drawn) are ``j = i + offset`` and, with ``groups (M,)``, every ``j`` with
    ``col_groups[j] == groups[i]`` (``col_groups`` defaults to ``groups``).
    """
    rows, cols = sim.shape
    positive = torch.zeros(rows, cols, dtype=torch.bool, device=sim.device)
    positive.diagonal(offset).fill_(True)
    if groups is not None:
        positive |= groups[:, None] == (groups if col_groups is None else col_groups)[None, :]
    full = positive.all(1).nonzero().flatten()
    if len(full):
        raise ValueError(f"sample_hard_negatives: row {int(full[0])} has no negative (every column is a positive); "
                         "the batch needs samples of at least two groups")
    probs = sim.detach().float().masked_fill(positive, -math.inf).softmax(1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


@LOSSES.register("itm")
class ITMHead(nn.Module):
    """Image-text matching (ALBEF): a binary pair classifier trained on positives and hard negatives.

    A pair ``(x, y)`` is scored by ``MLP([x, y, x*y, |x-y|]) -> 2`` logits (class 1 = matched).
    Per batch: the ``B`` positive pairs ``(a_i, b_i)``, for each ``a_i`` a negative ``b_j`` and for
    each ``b_j`` a negative ``a_i`` drawn by :func:`sample_hard_negatives` from
    ``softmax(a bᵀ / negative_temperature)``; ``L = CE`` over these ``3B`` pairs. With
    ``groups_a/b`` extras, same-group pairs are never used as negatives. ``dim`` is the
    embedding size ``D``; ``hidden`` defaults to ``dim``.
    """

    def __init__(self, dim: int, hidden: Optional[int] = None, negative_temperature: float = 0.07,
                 distributed: bool = True):
        super().__init__()
        hidden = hidden or dim
        self.dim, self.negative_temperature, self.distributed = int(dim), float(negative_temperature), distributed
        self.mlp = nn.Sequential(nn.Linear(4 * dim, hidden), nn.GELU(), nn.Linear(hidden, 2))

    def score(self, x: Tensor, y: Tensor) -> Tensor:
        """``(P, 2)`` match logits of the pairs ``(x_p, y_p)``, ``x, y: (P, dim)``."""
        return self.mlp(torch.cat([x, y, x * y, (x - y).abs()], dim=-1))

    def forward(self, a: Tensor, b: Tensor, groups_a: Optional[Tensor] = None, groups_b: Optional[Tensor] = None,
                **extras: Any) -> LossOutput:
        _check_pair(a, b, "itm loss")
        if a.shape[1] != self.dim:
            raise ValueError(f"itm loss: built with dim={self.dim} but got embeddings of size {a.shape[1]}; "
                             "set the loss parameter dim to the model's embed_dim")
        rows = a.shape[0]
        with_groups = groups_a is not None and groups_b is not None
        if self.distributed and is_distributed():
            a_all, b_all, offset = gather_with_grad(a), gather_with_grad(b), local_row_offset(rows)
            ga_all, gb_all = (gather_no_grad(groups_a), gather_no_grad(groups_b)) if with_groups else (None, None)
        else:
            a_all, b_all, offset = a, b, 0
            ga_all, gb_all = (groups_a, groups_b) if with_groups else (None, None)
        with torch.no_grad():
            neg_b = sample_hard_negatives(a @ b_all.T / self.negative_temperature,
                                          groups_a if with_groups else None, gb_all, offset=offset)
            neg_a = sample_hard_negatives(b @ a_all.T / self.negative_temperature,
                                          groups_b if with_groups else None, ga_all, offset=offset)
        logits = self.score(torch.cat([a, a, a_all[neg_a]]), torch.cat([b, b_all[neg_b], b]))
        labels = torch.zeros(3 * rows, dtype=torch.long, device=a.device)
        labels[:rows] = 1
        loss = F.cross_entropy(logits, labels)
        return LossOutput(loss, {"accuracy": (logits.argmax(1) == labels).float().mean().detach()})
