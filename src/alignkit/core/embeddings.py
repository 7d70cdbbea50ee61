"""Embeddings of a split: run a model over a loader (:func:`embed_loader`), write and read them as safetensors.

:func:`embed_loader` is what every evaluator (:mod:`alignkit.core.evaluators`) calls first;
:func:`export_embeddings` / :func:`load_embeddings` store its output for downstream heads.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Sequence, Union

import numpy as np
import torch
from safetensors.torch import save_file
from torch import Tensor, nn
from tqdm.auto import tqdm

from alignkit.core.checkpoints import load_safetensors_with_metadata

# --------------------------------------------------------------------------- embedding files

_STRING_FIELDS = "alignkit_string_fields"


def export_embeddings(path: Union[str, Path], **fields: Union[Tensor, np.ndarray, Sequence[Any]]) -> Path:
    """Write named embeddings, labels and ids to one safetensors file.

    Tensors and arrays are stored as tensors; sequences of numbers become tensors;
    sequences of strings (e.g. sample ids) go into the file's metadata as JSON
    under ``alignkit_string_fields``. Read back with :func:`load_embeddings`.
    """
    tensors: Dict[str, Tensor] = {}
    strings: Dict[str, List[str]] = {}
    for name, value in fields.items():
        if isinstance(value, Tensor):
            tensors[name] = value.detach().cpu().contiguous().clone()
        elif isinstance(value, np.ndarray):
            tensors[name] = torch.from_numpy(np.ascontiguousarray(value).copy())
        elif isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            strings[name] = list(value)
        elif isinstance(value, (list, tuple)):
            tensors[name] = torch.as_tensor(value)
        else:
            raise TypeError(f"export_embeddings field '{name}' is a {type(value).__name__}; "
                            "pass a tensor, an array, or a list of numbers or strings")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={_STRING_FIELDS: json.dumps(strings)})
    return path


def load_embeddings(path: Union[str, Path]) -> Dict[str, Union[Tensor, List[str]]]:
    """Fields written by :func:`export_embeddings`: tensors, and lists of strings from the metadata.

    ValueError naming the file when it is truncated, not safetensors, or its string fields are not JSON."""
    tensors, metadata = load_safetensors_with_metadata(path)
    out: Dict[str, Union[Tensor, List[str]]] = dict(tensors)
    try:
        out.update(json.loads(metadata.get(_STRING_FIELDS, "{}")))
    except ValueError as exc:
        raise ValueError(f"{path}: metadata '{_STRING_FIELDS}' is not JSON ({exc})") from None
    return out


# --------------------------------------------------------------------------- running a model over a loader


def _concat(parts: List[Any], field: str) -> Union[Tensor, List[Any]]:
    """Join per-batch values of one field: tensors are concatenated, lists flattened (numbers -> tensor)."""
    if all(isinstance(p, Tensor) for p in parts):
        return torch.cat(parts).cpu()
    flat = [v for p in parts for v in (p.tolist() if isinstance(p, Tensor) else p)]
    if all(isinstance(v, str) for v in flat):
        return flat
    try:
        return torch.as_tensor(flat)
    except (TypeError, ValueError) as err:
        raise TypeError(f"field '{field}' mixes values that are neither all strings nor all numbers") from err


def embed_loader(model: Any, loader: Any, modalities: Sequence[str], progress: bool = True,
                 fields: Sequence[str] = ("label", "id", "group")) -> Dict[str, Union[Tensor, List[str]]]:
    """Embed every batch of ``loader`` with ``model.embed(modality, batch[modality])``.

    Batches are collated dicts. Runs under ``torch.no_grad``; an ``nn.Module`` model
    is put in eval mode and restored afterwards. ``model.embed`` receives inputs as
    the loader yields them (on CPU) and moves them to its device.

    Returns:
        ``{modality: float32 (N, D) on CPU}`` plus each of ``fields`` present in the
        first batch: tensors (N, ...) for numbers, ``list[str]`` for strings.
    """
    parts: Dict[str, List[Any]] = {}
    was_training = isinstance(model, nn.Module) and model.training
    if isinstance(model, nn.Module):
        model.eval()
    try:
        with torch.no_grad():
            for i, batch in enumerate(tqdm(loader, desc=f"embed {'+'.join(modalities)}", disable=not progress,
                                           leave=False)):
                if i == 0:
                    missing = [m for m in modalities if m not in batch]
                    if missing:
                        raise KeyError(f"batches lack modalities {missing}; keys are {sorted(batch)}. "
                                       "Check the evaluator's modality names against the dataset")
                    keys = list(modalities) + [f for f in fields if f in batch and f not in modalities]
                for key in keys:
                    if key not in batch:
                        raise KeyError(f"batch {i} lacks '{key}', which the first batch had")
                    value = batch[key]
                    parts.setdefault(key, []).append(
                        model.embed(key, value).float().cpu() if key in modalities else value)
    finally:
        if isinstance(model, nn.Module):
            model.train(was_training)
    if not parts:
        raise ValueError("the loader yielded no batches; nothing to evaluate")
    return {key: _concat(values, key) for key, values in parts.items()}


__all__ = ["export_embeddings", "load_embeddings", "embed_loader"]
