"""The Lightning DataModule: train/val/test loaders of a registered paired dataset, from its folder or shards."""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Optional, Union

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from alignkit.core.collate import collate_samples
from alignkit.core.distributed import distributed_position
from alignkit.core.paired import PairedDataset, build_decoder, unset_params
from alignkit.core.registry import DATASETS, ConfigError
from alignkit.core.resume import ResumableDataLoader
from alignkit.core.samplers import GroupedBatchSampler
from alignkit.core.shards import ShardedIterableDataset, read_manifest


class AlignmentDataModule(L.LightningDataModule):
    """Train/val/test loaders of a registered dataset, optionally trained from WebDataset shards.

    Each split is ``DATASETS.build(dataset, split=<split>, **params)``. ``val_split``/``test_split`` may be
    None; a val/test split that is None or has no items gives ``val_dataset``/``test_dataset`` None and
    an empty list from its ``*_dataloader`` hook (Lightning skips the loop; it rejects a None loader).
    Evaluation loaders are sequential, rank-sharded by ``DistributedSampler`` when distributed.
    The train split must have at least ``batch_size`` items.

    Training loader (``drop_last``, collated by :func:`~alignkit.core.collate.collate_samples`):

    - default: a :class:`~alignkit.core.resume.ResumableDataLoader` over a shuffling
      ``DistributedSampler`` (rank-sharded, order fixed by ``(seed, epoch)``);
    - ``hard_negative_batches``: a :class:`~alignkit.core.samplers.GroupedBatchSampler` over the dataset's
      ``hard_negative_keys``, ``items_per_group`` items per key block;
    - ``shards``: a :class:`~alignkit.core.shards.ShardedIterableDataset` reading the WebDataset brace
      pattern / URL ``shards`` (see :func:`~alignkit.core.shards.write_shards`), decoded by the
      dataset class's ``decoder`` built from ``params`` (no folder needed). One process: one pass over
      all shards per epoch; each DataLoader worker batches its own stream, so up to
      ``num_workers x (batch_size - 1)`` samples (shuffled, so different ones) are left out per epoch.
      Several processes: resampled shards, ``count // world_size`` samples per rank per epoch rounded
      down to whole batches per worker, with ``count`` from the ``manifest.json`` beside the shards
      (required then), so every rank runs the same number of steps. Shuffle buffer ``shard_shuffle``;
      a new order per epoch needs ``persistent_workers`` (the default with workers). Mid-epoch resume
      is exact for the map-style loaders only.

    Training from shards needs no folder: the dataset parameters that locate it (those without a default,
    e.g. paired-csv's ``root``) may be left unset (absent, None or ``"???"``). The train split then comes from
    the shards alone and there are no val/test splits (``val_dataset``/``test_dataset`` None, ``[]`` loaders;
    :meth:`eval_dataloader` gives None); set the folder to validate and test on its splits. Without shards an
    unset one is a :class:`ConfigError`.

    Samplers are built in the ``*_dataloader`` hooks, after the process group exists, and shard by
    rank themselves: run the Trainer with ``use_distributed_sampler=False``.

    ``batch_transforms`` (callables ``batch -> batch``) run in ``on_after_batch_transfer``, i.e. on the
    accelerator, on *training* batches only (GPU augmentation); validation/test batches pass unchanged.
    """

    def __init__(self, dataset: str, params: Optional[Mapping[str, Any]] = None, batch_size: int = 64,
                 eval_batch_size: Optional[int] = None, num_workers: int = 0, pin_memory: Optional[bool] = None,
                 persistent_workers: Optional[bool] = None, shards: Optional[str] = None, shard_shuffle: int = 1000,
                 hard_negative_batches: bool = False, items_per_group: int = 4, train_split: str = "train",
                 val_split: Optional[str] = "val", test_split: Optional[str] = "test",
                 batch_transforms: Optional[List[Callable[[Dict[str, Any]], Dict[str, Any]]]] = None,
                 seed: int = 0):
        super().__init__()
        self.dataset = dataset
        self.params = dict(params or {})
        if "split" in self.params:
            raise ConfigError("data.params must not set 'split': the DataModule passes train_split, val_split "
                              "and test_split")
        self.unset = unset_params(DATASETS.get(dataset), self.params)
        if self.unset and not shards:
            names = ", ".join(f"data.params.{k}" for k in self.unset)
            raise ConfigError(f"{names} not set: give the folder of dataset '{dataset}', or train from shards "
                              "(data.shards)")
        self.params = {k: v for k, v in self.params.items() if k not in self.unset}
        DATASETS.check_params(dataset, self.params, "data.params")
        if hard_negative_batches and shards:
            raise ConfigError("hard_negative_batches needs random access to the dataset; it cannot be combined "
                              "with shards")
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.persistent_workers = num_workers > 0 if persistent_workers is None else persistent_workers
        self.shards = shards
        self.shard_shuffle = shard_shuffle
        self.hard_negative_batches = hard_negative_batches
        self.items_per_group = items_per_group
        self.splits = {"train": train_split, "val": val_split, "test": test_split}
        self.batch_transforms = list(batch_transforms or [])
        self.seed = seed
        self._built: Dict[str, Optional[PairedDataset]] = {}
        self._train_shards: Optional[Dataset] = None

    # datasets ------------------------------------------------------------------------------------
    def _split_dataset(self, role: str) -> Optional[PairedDataset]:
        """The dataset of ``role`` ("train", "val", "test"), built once; None if unset, empty or without folder."""
        if role not in self._built:
            split = self.splits[role] if not self.unset else None
            dataset = DATASETS.build(self.dataset, split=split, where="data.params", **self.params) \
                if split is not None else None
            self._built[role] = dataset if dataset is not None and len(dataset) > 0 else None
        return self._built[role]

    def _sharded_train(self) -> Dataset:
        assert self.shards is not None
        manifest = read_manifest(self.shards)
        if manifest is not None and manifest.get("dataset") not in (None, self.dataset):
            raise ConfigError(f"the shards {self.shards} were written from dataset '{manifest['dataset']}' but "
                              f"data.dataset is '{self.dataset}'")
        world, _ = distributed_position()
        epoch_length = None
        if world > 1:
            if manifest is None:
                raise ConfigError(f"training from shards on {world} processes needs the sample count to give "
                                  f"every rank the same number of batches: put the manifest.json written by "
                                  f"write_shards beside {self.shards}")
            per_step = self.batch_size * max(1, self.num_workers)  # every worker yields whole batches
            epoch_length = int(manifest["count"]) // world // per_step * per_step
            if epoch_length == 0:
                raise ConfigError(f"{manifest['count']} samples in {self.shards} are fewer than one batch for each "
                                  f"of {world} ranks x {max(1, self.num_workers)} workers x batch_size "
                                  f"{self.batch_size}")
        return ShardedIterableDataset(self.shards, decode=build_decoder(DATASETS.get(self.dataset), self.params),
                                      shuffle=self.shard_shuffle, seed=self.seed, epoch_length=epoch_length)

    @property
    def train_dataset(self) -> Dataset:
        if self.shards:
            if self._train_shards is None:
                self._train_shards = self._sharded_train()
            return self._train_shards
        dataset = self._split_dataset("train")
        if dataset is None:
            raise ValueError(f"dataset '{self.dataset}' has no items in train split '{self.splits['train']}' "
                             f"(params {self.params})")
        if len(dataset) < self.batch_size:
            raise ValueError(f"train split '{self.splits['train']}' of '{self.dataset}' has {len(dataset)} items, "
                             f"fewer than batch_size={self.batch_size}: no full batch (training drops the last)")
        return dataset

    @property
    def val_dataset(self) -> Optional[PairedDataset]:
        return self._split_dataset("val")

    @property
    def test_dataset(self) -> Optional[PairedDataset]:
        return self._split_dataset("test")

    def setup(self, stage: Optional[str] = None) -> None:
        """Index the splits the stage needs (all for None/predict), so bad data fails before training starts."""
        roles = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(stage or "",
                                                                                      ("train", "val", "test"))
        for role in roles:
            getattr(self, f"{role}_dataset")

    # loaders -------------------------------------------------------------------------------------
    def _loader_kwargs(self) -> Dict[str, Any]:
        return {"num_workers": self.num_workers, "pin_memory": self.pin_memory, "collate_fn": collate_samples,
                "persistent_workers": self.persistent_workers and self.num_workers > 0}

    def train_dataloader(self) -> DataLoader:
        if self.shards:
            self._train_shards = self._sharded_train()  # rebuilt here: the rank is known now
            return DataLoader(self._train_shards, batch_size=self.batch_size, drop_last=True,
                              **self._loader_kwargs())
        dataset = self.train_dataset
        if self.hard_negative_batches:
            keys = getattr(dataset, "hard_negative_keys", None)
            if keys is None:
                raise ConfigError(f"hard_negative_batches=True but dataset '{self.dataset}' gives no "
                                  "hard_negative_keys (for paired-csv set params.hard_negative_columns)")
            batches = GroupedBatchSampler(keys, self.batch_size, self.items_per_group, drop_last=True,
                                          seed=self.seed)
            return ResumableDataLoader(dataset, batch_sampler=batches, **self._loader_kwargs())
        world, rank = distributed_position()
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=self.seed,
                                     drop_last=True)
        return ResumableDataLoader(dataset, batch_size=self.batch_size, sampler=sampler, drop_last=True,
                                   **self._loader_kwargs())

    def _eval_loader(self, dataset: Optional[PairedDataset]) -> Union[DataLoader, List[DataLoader]]:
        if dataset is None:
            return []  # Lightning's "no loader" (it rejects None)
        world, rank = distributed_position()
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False)
        return DataLoader(dataset, batch_size=self.eval_batch_size, sampler=sampler, **self._loader_kwargs())

    def val_dataloader(self) -> Union[DataLoader, List[DataLoader]]:
        return self._eval_loader(self.val_dataset)

    def loader_for(self, dataset: PairedDataset) -> DataLoader:
        """A sequential, single-process-view loader over ``dataset`` for evaluators (run on rank 0)."""
        return DataLoader(dataset, batch_size=self.eval_batch_size, shuffle=False, **self._loader_kwargs())

    def eval_dataloader(self, split: Optional[str]) -> Optional[DataLoader]:
        """:meth:`loader_for` the dataset's ``split`` (e.g. "train", "test"), or None when it has no items."""
        if split is None or self.unset:
            return None
        role = next((r for r, s in self.splits.items() if s == split), None)
        if role is not None and not (role == "train" and self.shards):
            dataset = self._split_dataset(role)
        else:
            key = f"split:{split}"
            if key not in self._built:
                built = DATASETS.build(self.dataset, split=split, where="data.params", **self.params)
                self._built[key] = built if len(built) > 0 else None
            dataset = self._built[key]
        return self.loader_for(dataset) if dataset is not None else None

    def test_dataloader(self) -> Union[DataLoader, List[DataLoader]]:
        return self._eval_loader(self.test_dataset)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Apply ``batch_transforms`` in order to training batches (already on the accelerator)."""
        if self.trainer is not None and self.trainer.training:
            for transform in self.batch_transforms:
                batch = transform(batch)
        return batch


__all__ = ["AlignmentDataModule"]
