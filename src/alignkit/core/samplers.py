"""Batch samplers: hard-negative batches built from blocks of items that share a key."""
from __future__ import annotations

import math
from typing import Dict, Hashable, Iterator, List, Optional, Sequence

import numpy as np
from torch.utils.data import Sampler

from alignkit.core.distributed import distributed_position
from alignkit.core.registry import ConfigError


class GroupedBatchSampler(Sampler[List[int]]):
    """Batches built from blocks of ``items_per_group`` items that share a key (hard negatives).

    Each epoch (order fixed by ``(seed, epoch)``; call :meth:`set_epoch`): the items of every key are
    shuffled and cut into blocks of ``items_per_group``; the items left over (keys with fewer items,
    remainders) are shuffled together and cut into *filler* blocks, which mix keys. The blocks are
    shuffled and concatenated, and the sequence is cut into batches of ``batch_size`` (a multiple of
    ``items_per_group``, so a batch is ``batch_size / items_per_group`` whole blocks). Every item
    appears exactly once per epoch (the last short batch is dropped if ``drop_last``).

    Distributed: every rank computes the same batch list and takes batches ``rank, rank + R, ...``
    (``R = num_replicas``); the list is cut (``drop_last``) or wrapped around (otherwise) to a multiple
    of ``R`` so every rank yields ``len(self)`` batches. ``batch_size`` is per rank.

    Lightning calls ``set_epoch`` on ``loader.batch_sampler.sampler``; :attr:`sampler` is this object
    so the call arrives here (also through :class:`alignkit.core.resume.SkippingBatchSampler`).
    """

    def __init__(self, keys: Sequence[Hashable], batch_size: int, items_per_group: int, drop_last: bool = True,
                 seed: int = 0, shuffle: bool = True, num_replicas: Optional[int] = None,
                 rank: Optional[int] = None):
        if items_per_group < 1 or batch_size < 1 or batch_size % items_per_group:
            raise ConfigError(f"batch_size ({batch_size}) must be a positive multiple of items_per_group "
                              f"({items_per_group})")
        self.batch_size = batch_size
        self.items_per_group = items_per_group
        self.drop_last = drop_last
        self.seed = seed
        self.shuffle = shuffle
        self.num_replicas, self.rank = distributed_position(num_replicas, rank)
        self.epoch = 0
        members: Dict[Hashable, List[int]] = {}
        for i, key in enumerate(keys):
            members.setdefault(key, []).append(i)
        self._members = [np.asarray(m) for m in members.values()]
        self._n = len(keys)

    @property
    def sampler(self) -> "GroupedBatchSampler":
        return self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _order(self, rng: np.random.Generator, items: np.ndarray) -> np.ndarray:
        return rng.permutation(items) if self.shuffle else items

    def _global_batches(self) -> List[List[int]]:
        rng = np.random.default_rng((self.seed, self.epoch))
        g = self.items_per_group
        keyed: List[np.ndarray] = []
        leftover: List[np.ndarray] = []
        for members in self._members:
            order = self._order(rng, members)
            full = len(order) // g * g
            keyed.extend(order[s:s + g] for s in range(0, full, g))
            leftover.append(order[full:])
        rest = self._order(rng, np.concatenate(leftover)) if leftover else np.zeros(0, dtype=np.int64)
        filler = [rest[s:s + g] for s in range(0, len(rest), g)]
        tail = filler.pop() if filler and len(filler[-1]) < g else None  # kept last: only the final batch is short
        blocks = keyed + filler
        if self.shuffle:
            blocks = [blocks[k] for k in rng.permutation(len(blocks))]
        if tail is not None:
            blocks.append(tail)
        flat = np.concatenate(blocks).tolist() if blocks else []
        batches = [flat[s:s + self.batch_size] for s in range(0, len(flat), self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        return batches

    def _per_rank(self, n_batches: int) -> int:
        if self.drop_last:
            return n_batches // self.num_replicas
        return math.ceil(n_batches / self.num_replicas)

    def __iter__(self) -> Iterator[List[int]]:
        batches = self._global_batches()
        total = self._per_rank(len(batches)) * self.num_replicas
        batches = [batches[k % len(batches)] for k in range(total)] if batches else []
        return iter(batches[self.rank::self.num_replicas])

    def __len__(self) -> int:
        n_batches = self._n // self.batch_size if self.drop_last else math.ceil(self._n / self.batch_size)
        return self._per_rank(n_batches)


__all__ = ["GroupedBatchSampler"]
