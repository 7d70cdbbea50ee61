"""The paired-dataset protocol every alignkit dataset follows, its record types and decoder helpers.

Every alignkit paired dataset (X-ray/report pairs, echo videos, point clouds, robot episodes)
follows :class:`PairedDataset`:

- ``raw(i)`` returns the *undecoded* record of item ``i`` as a dict of WebDataset fields keyed by
  extension (``{"png": b"...", "txt": "a caption", "cls": 3, "json": "{...}"}``); this is exactly
  what :func:`alignkit.core.shards.write_shards` stores, and what a shard gives back (as bytes);
- the classmethod ``decoder(**params)`` builds a picklable callable ``raw -> sample dict`` that
  needs no files, so training can read shards without the original folder;
- ``decode(raw)`` uses that decoder and ``__getitem__(i) = decode(raw(i))``, so the folder and its
  shards yield identical samples.

A sample is a dict of modalities (``"image"``: float Tensor (C, H, W), ``"text"``: str) plus the
optional ``"label"`` (int), ``"id"`` (str) and ``"group"`` (int: samples sharing a group are
positives of each other). :func:`~alignkit.core.collate.collate_samples` turns a list of samples into a
batch.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, Hashable, List, Mapping, Optional, Tuple, Union

from torch.utils.data import Dataset

RawValue = Union[bytes, str, int, float]
RawRecord = Mapping[str, RawValue]
Decoder = Callable[[RawRecord], Dict[str, Any]]

MISSING_VALUES = frozenset({"", "nan", "-nan", "na", "n/a", "<na>", "#n/a", "null", "none"})
"""CSV cells read as missing (compared lower-cased and stripped; the strings pandas writes and reads as NaN)."""


def raw_text(value: RawValue) -> str:
    """A raw field as text: ``raw(i)`` may hold ``str``/``int``, a record read back from a shard holds bytes."""
    return value.decode("utf-8") if isinstance(value, (bytes, bytearray)) else str(value)


UNSET = "???"
"""OmegaConf's mark of a mandatory value left unset (``root: ???`` in a config)."""


def unset_params(dataset_cls: type, params: Mapping[str, Any]) -> List[str]:
    """The constructor parameters of ``dataset_cls`` without a default (``split`` aside) that ``params`` leaves
    unset: absent, None or ``"???"``. These locate the dataset's files (paired-csv's ``root``): a run that
    trains from shards needs none of them."""
    unset = []
    for name, p in inspect.signature(dataset_cls.__init__).parameters.items():
        if name in ("self", "split") or p.default is not p.empty or \
                p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        value = params.get(name)
        if value is None or (isinstance(value, str) and value == UNSET):
            unset.append(name)
    return unset


def decoder_params(dataset_cls: type, params: Mapping[str, Any]) -> Dict[str, Any]:
    """The entries of ``params`` that ``dataset_cls.decoder``'s signature names.

    ``params`` are the dataset's constructor parameters (the config's ``data.params``); the ones that
    only locate files (``root``, ``csv``, ...) are not decoder parameters and are left out.
    """
    accepted = inspect.signature(dataset_cls.decoder).parameters
    return {k: v for k, v in params.items() if k in accepted}


def build_decoder(dataset_cls: type, params: Mapping[str, Any]) -> Decoder:
    """``dataset_cls.decoder(**decoder_params(dataset_cls, params))``."""
    return dataset_cls.decoder(**decoder_params(dataset_cls, params))


class PairedDataset(Dataset):
    """Base class of alignkit's paired datasets (map-style ``torch.utils.data.Dataset``).

    Subclasses implement ``__len__``, :meth:`raw` and the classmethod :meth:`decoder`, and pass their
    constructor arguments to ``super().__init__(params=locals())`` as the first statement (they are
    written to shard manifests and select the decoder's parameters). Optional attributes:

    - ``class_names``: ``list[str]``, name of label ``k`` at index ``k`` (zero-shot evaluation);
    - ``hard_negative_keys``: one hashable per item; items sharing a key are hard negatives of each
      other (:class:`~alignkit.core.samplers.GroupedBatchSampler` puts them in one batch); ``None`` if the
      dataset has none;
    - ``skipped``: ``(where, reason)`` of every item dropped under ``skip_bad=True``.
    """

    class_names: Optional[List[str]] = None
    hard_negative_keys: Optional[List[Hashable]] = None

    def __init__(self, params: Optional[Mapping[str, Any]] = None):
        self.params: Dict[str, Any] = {k: v for k, v in (params or {}).items() if k not in ("self", "__class__")}
        self.skipped: List[Tuple[str, str]] = []
        self._decoder: Optional[Decoder] = None

    def __len__(self) -> int:
        raise NotImplementedError(f"{type(self).__name__} must implement __len__")

    def raw(self, i: int) -> Dict[str, RawValue]:
        """The undecoded record of item ``i``: WebDataset fields keyed by extension (``png``, ``txt``, ...)."""
        raise NotImplementedError(f"{type(self).__name__} must implement raw(i)")

    def key(self, i: int) -> str:
        """A stable key of item ``i`` (unique in the dataset, no ``.``): the ``__key__`` of its shard record."""
        return f"{i:09d}"

    @classmethod
    def decoder(cls) -> Decoder:
        """A picklable callable ``raw record -> sample dict`` that reads no files (keyword params only)."""
        raise NotImplementedError(f"{cls.__name__} must implement the classmethod decoder(**params) to be "
                                  "decoded, e.g. when training from shards")

    def decode(self, raw: RawRecord) -> Dict[str, Any]:
        """``raw`` -> sample, with the decoder built from this dataset's ``params`` (see :func:`build_decoder`)."""
        if self._decoder is None:
            self._decoder = build_decoder(type(self), self.params)
        return self._decoder(raw)

    def __getitem__(self, i: int) -> Dict[str, Any]:
        return self.decode(self.raw(i))


__all__ = ["RawValue", "RawRecord", "Decoder", "MISSING_VALUES", "raw_text", "UNSET", "unset_params", "decoder_params", "build_decoder", "PairedDataset"]
