"""Rank helpers and all-gather with gradients, for losses that see the global batch.

Every helper is the identity (rank 0 of a world of 1) when ``torch.distributed`` is not
initialised, so the losses run unchanged in a single process.

Under DDP each rank holds a local batch ``x_r`` of ``B`` rows (the same ``B`` on every rank:
``all_gather`` needs equal shapes, which ``DistributedSampler`` guarantees). A loss gathers
``X = cat(x_0, ..., x_{W-1})`` of ``W * B`` rows and scores its local rows, which sit at
``X[local_row_offset(B) : local_row_offset(B) + B]``, against ``X``.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    """True when ``torch.distributed`` is initialised with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of ranks (1 without ``torch.distributed``)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 without ``torch.distributed``)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def distributed_position(num_replicas: Optional[int] = None, rank: Optional[int] = None) -> Tuple[int, int]:
    """``(num_replicas, rank)``: the given values, else those of the process group (``(1, 0)`` without one)."""
    own_rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    return (world_size() if num_replicas is None else int(num_replicas), own_rank if rank is None else int(rank))


def local_row_offset(local_batch: int) -> int:
    """Row of the gathered batch where this rank's ``local_batch`` rows start: ``rank * local_batch``."""
    return rank() * local_batch


def _all_gather_cat(x: Tensor) -> Tensor:
    """``(W * B, ...)``: every rank's ``x`` of shape ``(B, ...)``, concatenated in rank order."""
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x)
    return torch.cat(parts, dim=0)


class _AllGatherWithGrad(torch.autograd.Function):
    """All-gather whose backward sums every rank's gradient of the gathered tensor and
    hands each rank the rows it contributed: ``dx_r = sum_k dL_k/dX [rows of r]``."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.rows = x.shape[0]
        return _all_gather_cat(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = local_row_offset(ctx.rows)
        return grad[start:start + ctx.rows]


def gather_with_grad(x: Tensor) -> Tensor:
    """``(W * B, ...)`` all ranks' ``x`` in rank order; gradients flow back to every rank.

    The gradient reaching rank r's ``x`` is the sum over all ranks of their loss's gradient with
    respect to rank r's rows, so after DDP averages parameter gradients they equal the gradient of
    the mean over ranks of the local losses. Identity when not distributed.
    """
    return _AllGatherWithGrad.apply(x) if is_distributed() else x


def gather_no_grad(x: Tensor) -> Tensor:
    """``(W * B, ...)`` all ranks' ``x`` in rank order, detached (targets, group ids, teacher outputs)."""
    if not is_distributed():
        return x.detach()
    with torch.no_grad():
        return _all_gather_cat(x.detach())
