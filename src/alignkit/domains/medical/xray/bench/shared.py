"""What every BenchX protocol (Zhou et al., 2024, "BenchX", arXiv:2410.21969;
github.com/yangzhou12/BenchX) shares.

Every task takes splits as datasets (or DataLoaders, whose ``dataset`` is used) of sample dicts::

    {"image": (1, S, S) float, "text": str or list[str], "labels": (C,) float in {0, 1, -1 = ignore},
     "id": str, "group": int or str, ["masks": (K, S, S) bool]}

Here: reading splits (:func:`sample_loader`, :func:`dataset_labels`, :func:`checked_batches`,
:class:`DecodedSamples`), the image encoder of a model and its frozen features (:func:`image_encoder_of`,
:func:`encode_images`), label-efficiency subsets (:func:`label_subset`) and early stopping
(:func:`train_with_early_stopping`).
"""
from __future__ import annotations

import copy
import math
from typing import Any, Callable, Dict, Iterable, List, Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from alignkit.core.collate import collate_samples
from alignkit.core.encoders.base import FrozenTower

Split = Union[Dataset, DataLoader]


# =========================================================================== reading splits
def as_dataset(data: Split) -> Dataset:
    """The dataset behind ``data`` (a DataLoader's ``dataset``, or ``data`` itself)."""
    return data.dataset if isinstance(data, DataLoader) else data


def sample_loader(data: Split, batch_size: int, shuffle: bool = False, seed: int = 0) -> DataLoader:
    """A single-process loader of sample dicts collated with :func:`collate_samples`."""
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(as_dataset(data), batch_size=batch_size, shuffle=shuffle, generator=generator,
                      collate_fn=collate_samples)


def dataset_labels(data: Split, batch_size: int = 256) -> Tensor:
    """``(N, C)`` float labels of every sample (key ``"labels"``); read without decoding images when the
    dataset has a ``labels(i)`` method (the ``cxr`` dataset)."""
    dataset = as_dataset(data)
    if callable(getattr(dataset, "labels", None)):
        return torch.tensor([dataset.labels(i) for i in range(len(dataset))], dtype=torch.float32)
    batches = checked_batches(sample_loader(data, batch_size), ["labels"])
    return torch.cat([torch.as_tensor(batch["labels"]).float() for batch in batches])


def checked_batches(loader: DataLoader, keys: Sequence[str]) -> Iterable[Dict[str, Any]]:
    """The batches of ``loader``, each checked to hold ``keys`` (KeyError naming the batch otherwise)."""
    for i, batch in enumerate(loader):
        missing = [k for k in keys if k not in batch]
        if missing:
            raise KeyError(f"benchx: batch {i} lacks {missing} (keys {sorted(batch)}); samples need "
                           f"{list(keys)}, see the module docstring for the sample format")
        yield batch


def unwrap_encoder(encoder: nn.Module) -> nn.Module:
    """The inner encoder of a :class:`FrozenTower` (else ``encoder``)."""
    return encoder.module if isinstance(encoder, FrozenTower) else encoder


def image_encoder_of(model: Any, modality: str = "image") -> nn.Module:
    """The image encoder of an ``AlignmentModule`` or ``AlignedModel`` (``.module.towers[m].encoder``)."""
    module = getattr(model, "module", model)
    towers = getattr(module, "towers", None)
    if towers is None or modality not in towers:
        raise KeyError(f"benchx: the model has no tower '{modality}' (towers: "
                       f"{list(towers) if towers is not None else 'none'}); pass image_modality")
    return unwrap_encoder(towers[modality].encoder)


@torch.no_grad()
def encode_images(encoder: nn.Module, data: Split, batch_size: int = 64,
                  tokens: bool = False) -> Tensor:
    """Frozen features of every image: ``(N, output_dim)``, or ``(N, T, C)`` with ``tokens``
    (``encoder.forward_tokens``). Runs in eval mode and restores the encoder's mode."""
    was_training = encoder.training
    encoder.eval()
    try:
        fn = encoder.forward_tokens if tokens else encoder
        batches = checked_batches(sample_loader(data, batch_size), ["image"])
        return torch.cat([fn(b["image"]).float().cpu() for b in batches])
    finally:
        encoder.train(was_training)


class DecodedSamples(Dataset):
    """Every sample of ``dataset`` decoded once (with ``num_workers`` DataLoader workers) and kept in memory, so
    the BenchX tasks of several methods read the same split without decoding its files again.

    Memory: the decoded tensors of every sample (e.g. 3,000 grey 96 px images with six masks: ~300 MB); meant
    for CPU-sized benches. Carries the source's ``class_names``, ``mask_classes`` and ``labels(i)``.
    """

    def __init__(self, dataset: Dataset, num_workers: int = 0):
        source = as_dataset(dataset)
        loader = DataLoader(source, batch_size=None, num_workers=num_workers)
        self.samples: List[Dict[str, Any]] = list(loader)
        for attribute in ("class_names", "mask_classes"):
            setattr(self, attribute, getattr(source, attribute, None))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Dict[str, Any]:
        return self.samples[i]

    def labels(self, i: int) -> List[float]:
        return torch.as_tensor(self.samples[i]["labels"]).tolist()


# =========================================================================== label subsets and early stopping
def label_subset(labels: Tensor, fraction: float, seed: int) -> Tensor:
    """Indices (sorted LongTensor) of a random ``fraction`` of the ``N`` samples with labels ``(N, C)``.

    Rule: the size is ``n = max(1, round(fraction * N))``. First, visiting the classes in a random
    order, each class without a positive among the items picked so far gets one random positive
    (target 1; classes with no positive at all are skipped); then random other items fill the subset
    up to ``n``. So every class that has a positive keeps one; if that needs more than ``n`` items,
    the subset grows to that (at most ``C`` items). ``fraction=1`` returns every index.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"label fraction must be in (0, 1]; got {fraction}")
    n_total = labels.shape[0]
    if fraction == 1:
        return torch.arange(n_total)
    g = torch.Generator().manual_seed(seed)
    chosen: List[int] = []
    positive = labels == 1
    for c in torch.randperm(labels.shape[1], generator=g).tolist():
        candidates = positive[:, c].nonzero().flatten()
        if len(candidates) and not positive[chosen, c].any():
            chosen.append(int(candidates[torch.randint(len(candidates), (1,), generator=g)]))
    n = max(1, round(fraction * n_total), len(chosen))
    taken = set(chosen)
    rest = [i for i in torch.randperm(n_total, generator=g).tolist() if i not in taken]
    return torch.tensor(sorted(chosen + rest[: n - len(chosen)]))


def train_with_early_stopping(model: nn.Module, run_epoch: Callable[[int], None], validate: Callable[[], float],
                              epochs: int, patience: int) -> Tuple[float, int]:
    """Call ``run_epoch(epoch)`` for epochs 1..``epochs``, then ``validate()`` (higher is better, NaN counts
    as -inf); stop after ``patience`` epochs without improvement and restore the best epoch's weights
    into ``model`` (the first epoch's if no score was ever defined). Returns ``(best score, epochs run)``."""
    if epochs < 1:
        raise ValueError(f"train_with_early_stopping: epochs must be >= 1, got {epochs}")
    best, best_state, stale, epoch = -math.inf, None, 0, 0
    for epoch in range(1, epochs + 1):
        model.train()
        run_epoch(epoch)
        score = validate()
        score = -math.inf if math.isnan(score) else score
        if best_state is None or score > best:
            best, best_state, stale = score, copy.deepcopy(model.state_dict()), 0
        else:
            stale += 1
            if stale >= patience:
                break
    model.load_state_dict(best_state)
    return best, epoch
