"""Sample collation: a list of sample dicts -> one batch dict (the ``collate_fn`` of every alignkit loader)."""
from __future__ import annotations

import numbers
from typing import Any, Dict, List, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor


def collate_samples(samples: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
    """Collate a list of sample dicts into one batch dict.

    Per key, over the B samples:

    - tensors / numpy arrays of equal shape ``S`` -> one Tensor ``(B, *S)`` (``torch.stack``);
      differing shapes raise a ``ValueError`` naming the key and both shapes;
    - numbers (bool, int, float, numpy scalars) -> Tensor ``(B,)`` (bool, int64 or float32);
    - dicts -> collated recursively (errors name the dotted key, e.g. ``obs.image``);
    - strings and anything else -> a list of length B;
    - ``None`` in every sample -> ``None``; ``None`` in some samples -> the plain list of values.

    Every sample must have the same keys.
    """
    if not samples:
        raise ValueError("collate_samples got an empty list of samples")
    return _collate_dicts(samples, prefix="")


def _collate_dicts(samples: Sequence[Mapping[str, Any]], prefix: str) -> Dict[str, Any]:
    keys = list(samples[0])
    for j, sample in enumerate(samples[1:], start=1):
        if set(sample) != set(keys):
            missing = sorted(set(keys) - set(sample))
            extra = sorted(set(sample) - set(keys))
            raise ValueError(f"cannot collate{' ' + repr(prefix[:-1]) if prefix else ''}: sample {j} lacks keys "
                             f"{missing} / has extra keys {extra} compared with sample 0 (keys {keys}); "
                             "every sample of a batch must have the same keys")
    return {k: _collate_values([s[k] for s in samples], f"{prefix}{k}") for k in keys}


def _collate_values(values: List[Any], key: str) -> Any:
    n_none = sum(v is None for v in values)
    if n_none == len(values):
        return None
    if n_none:
        return values
    if all(isinstance(v, Mapping) for v in values):
        return _collate_dicts(values, prefix=f"{key}.")
    if any(isinstance(v, (Tensor, np.ndarray)) for v in values):
        tensors = []
        for j, v in enumerate(values):
            if not isinstance(v, (Tensor, np.ndarray)):
                raise ValueError(f"cannot collate key '{key}': sample 0 holds a {type(values[0]).__name__} "
                                 f"but sample {j} holds a {type(v).__name__}")
            tensors.append(torch.as_tensor(v))
        for j, t in enumerate(tensors):
            if t.shape != tensors[0].shape:
                raise ValueError(f"cannot stack key '{key}': sample 0 has shape {tuple(tensors[0].shape)} but "
                                 f"sample {j} has shape {tuple(t.shape)}; resize/pad these to one shape in "
                                 "the dataset's decoder")
        return torch.stack(tensors)
    if all(isinstance(v, (numbers.Real, np.bool_)) for v in values):
        return torch.tensor(values)
    return values


__all__ = ["collate_samples"]
