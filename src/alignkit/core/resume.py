"""Exact mid-epoch resume: data loaders that skip the batches a checkpointed run already consumed.

Lightning saves the ``state_dict`` of every training loader that has one (its ``_Stateful`` protocol)
and hands it back through ``load_state_dict`` before the first ``iter()`` of a resumed run.
:class:`ResumableDataLoader` stores how many batches of the current epoch the *training loop*
completed (set by :class:`ResumeTracker`, not counted at ``next()``, because Lightning pre-fetches
one batch ahead) and, when resumed, skips that many batches at the batch-sampler level, before any
sample is read or decoded. With a sampler whose order depends only on ``(seed, epoch)``
(:class:`SeededRandomSampler`, ``DistributedSampler``, ``GroupedBatchSampler``) the resumed run sees
exactly the batches the uninterrupted run would have seen.
"""
from __future__ import annotations

import itertools
from typing import Any, Dict, Iterator, List, Sized

import lightning as L
import torch
from torch.utils.data import BatchSampler, DataLoader, Sampler


class SeededRandomSampler(Sampler[int]):
    """A random permutation of ``range(n)`` that depends only on ``(seed, epoch)``; Lightning calls ``set_epoch``."""

    def __init__(self, data_source: Sized, seed: int = 0):
        self.n = len(data_source)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


class SkippingBatchSampler(Sampler[List[int]]):
    """Wraps a batch sampler; the next ``__iter__`` drops its first ``skip`` batches (then ``skip`` resets)."""

    def __init__(self, batch_sampler: Any):
        self.batch_sampler = batch_sampler
        self.sampler = getattr(batch_sampler, "sampler", None)  # Lightning looks here for set_epoch
        self.skip = 0

    def set_epoch(self, epoch: int) -> None:
        for target in (self.batch_sampler, self.sampler):
            if target is not None and hasattr(target, "set_epoch"):
                target.set_epoch(epoch)

    def __iter__(self) -> Iterator[List[int]]:
        skip, self.skip = self.skip, 0
        return itertools.islice(iter(self.batch_sampler), skip, None)

    def __len__(self) -> int:
        return len(self.batch_sampler)


class ResumableDataLoader(DataLoader):
    """A map-style ``DataLoader`` whose position within an epoch is saved in Lightning checkpoints.

    Takes the arguments of ``DataLoader``; pass either ``batch_sampler`` or ``batch_size`` with
    ``sampler`` / ``shuffle`` (``shuffle=True`` becomes a :class:`SeededRandomSampler` with ``seed``).
    """

    def __init__(self, dataset: Any, batch_size: int = 1, shuffle: bool = False, sampler: Any = None,
                 batch_sampler: Any = None, drop_last: bool = False, seed: int = 0, **kwargs: Any):
        if batch_sampler is None:
            if sampler is None:
                sampler = (SeededRandomSampler(dataset, seed) if shuffle
                           else torch.utils.data.SequentialSampler(dataset))
            batch_sampler = BatchSampler(sampler, batch_size, drop_last)
        super().__init__(dataset, batch_sampler=SkippingBatchSampler(batch_sampler), **kwargs)
        self.epoch = 0  # the training epoch, and
        self.consumed = 0  # the batches of it completed by the training loop

    def state_dict(self) -> Dict[str, int]:
        return {"epoch": int(self.epoch), "consumed": int(self.consumed)}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        """Position the sampler before Lightning's first ``iter()`` of the resumed run.

        Lightning creates that iterator (and pre-fetches from it) before it calls ``set_epoch``, so the
        epoch is set here too; a checkpoint written after an epoch's last batch resumes at the next epoch.
        """
        epoch, consumed = int(state.get("epoch", 0)), int(state.get("consumed", 0))
        if consumed >= len(self.batch_sampler):
            epoch, consumed = epoch + 1, 0
        self.epoch, self.consumed = epoch, consumed
        self.batch_sampler.set_epoch(epoch)
        self.batch_sampler.skip = consumed


class ResumeTracker(L.Callback):
    """Keeps each :class:`ResumableDataLoader`'s ``consumed`` equal to the batches trained this epoch.

    Lightning runs checkpoint callbacks after all others, so the count is current when a
    checkpoint is written at the end of a training batch.
    """

    @staticmethod
    def _loaders(trainer: L.Trainer) -> List[ResumableDataLoader]:
        loader = trainer.fit_loop._combined_loader
        flat = loader.flattened if loader is not None else []
        return [dl for dl in flat if isinstance(dl, ResumableDataLoader)]

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        for dl in self._loaders(trainer):
            dl.epoch, dl.consumed = trainer.current_epoch, done

    def on_train_epoch_end(self, trainer: L.Trainer, *args: Any) -> None:
        for dl in self._loaders(trainer):
            dl.epoch, dl.consumed = trainer.current_epoch + 1, 0
