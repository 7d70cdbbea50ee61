"""WebDataset shards of a paired dataset: write them, read them back as a streaming training set.

The format is the one open_clip and img2dataset use: POSIX tar files in which each item is a few
files sharing a key (``row0000007.png``, ``row0000007.txt``, ``row0000007.cls``,
``row0000007.json``). :func:`write_shards` stores each item's undecoded ``raw(i)`` record plus a
``manifest.json`` (or, with an :class:`~alignkit.core.image_encoding.ImageEncoding`, its image resized and
re-encoded, in parallel processes); :class:`ShardedIterableDataset` streams them back and decodes each record with
the dataset class's ``decoder`` (no original folder needed).
"""
from __future__ import annotations

import json
import multiprocessing as mp
import random
import re
import sys
import warnings
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info
from tqdm.auto import tqdm

from alignkit.core.distributed import distributed_position
from alignkit.core.image_encoding import ImageEncoding, recode_record
from alignkit.core.paired import Decoder, PairedDataset, decoder_params
from alignkit.core.registry import DATASETS, registry_index

MANIFEST = "manifest.json"


def _registered_name(dataset: PairedDataset) -> Optional[str]:
    """The registry name of ``dataset``'s class. Only names whose module is already imported are looked at: the
    class's own module is (an instance exists), and importing every domain would take seconds."""
    index = registry_index().get(DATASETS.kind, {})
    for name in DATASETS.names():
        module = index.get(name)
        if module is not None and module not in sys.modules:
            continue
        if DATASETS.get(name) is type(dataset):
            return name
    return None


def _check_record(dataset: PairedDataset, i: int, key: str, record: Dict[str, Any]) -> None:
    if "." in key.rsplit("/", 1)[-1]:
        raise ValueError(f"{type(dataset).__name__}.key({i}) = {key!r} is not a valid key; keys must be unique and "
                         "contain no '.'")
    reserved = [k for k in record if k.startswith("_")]
    if reserved:
        raise ValueError(f"{type(dataset).__name__}.raw({i}) has fields {reserved}; names starting with "
                         "'_' are webdataset metadata")


def _item(dataset: PairedDataset, encoding: Optional[ImageEncoding], i: int) -> Tuple[str, Dict[str, Any], int]:
    """Item ``i`` as ``(key, record, bit depth)``: ``raw(i)``, re-encoded when ``encoding`` is set (depth 0 if not)."""
    key = dataset.key(i)
    record = dataset.raw(i)
    _check_record(dataset, i, key, record)
    if encoding is None:
        return key, record, 0
    record, depth = recode_record(record, encoding, f"item {i} ('{key}') of {type(dataset).__name__}")
    return key, record, depth


_WORKER_STATE: Dict[str, Any] = {}


def _worker_init(dataset: PairedDataset, encoding: Optional[ImageEncoding]) -> None:
    _WORKER_STATE.update(dataset=dataset, encoding=encoding)


def _worker_items(indices: Sequence[int]) -> List[Tuple[str, Dict[str, Any], int]]:
    return [_item(_WORKER_STATE["dataset"], _WORKER_STATE["encoding"], i) for i in indices]


def _items(dataset: PairedDataset, encoding: Optional[ImageEncoding], workers: int,
           chunk: int = 16) -> Iterator[Tuple[str, Dict[str, Any], int]]:
    """Every item in index order, prepared by ``workers`` processes (``fork`` where the platform has it, else
    ``spawn``: then the dataset must pickle). Chunks of ``chunk`` items, at most ``4 * workers`` chunks ahead."""
    if workers <= 1:
        yield from (_item(dataset, encoding, i) for i in range(len(dataset)))
        return
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    chunks = [range(s, min(s + chunk, len(dataset))) for s in range(0, len(dataset), chunk)]
    with ProcessPoolExecutor(workers, mp_context=mp.get_context(method), initializer=_worker_init,
                             initargs=(dataset, encoding)) as pool:
        pending: deque = deque()
        for c in chunks:
            pending.append(pool.submit(_worker_items, list(c)))
            if len(pending) >= 4 * workers:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()


def write_shards(dataset: PairedDataset, out_dir: Union[str, Path], max_count: int = 1000,
                 max_size: int = 1_000_000_000, prefix: str = "shard", progress: bool = True,
                 encoding: Optional[ImageEncoding] = None, workers: int = 1) -> List[Path]:
    """Write ``dataset.raw(i)`` of every item to ``out_dir/<prefix>-000000.tar, ...``; return the shard paths.

    A shard holds at most ``max_count`` items and about ``max_size`` bytes. Each record is
    ``{"__key__": dataset.key(i), **dataset.raw(i)}``; webdataset encodes the fields by extension
    (bytes as they are, ``str`` as UTF-8, ``int`` for ``cls`` as its digits). Tar entries get mtime 0,
    so the same dataset gives byte-identical shards. ``out_dir/manifest.json`` records the registry
    name of the dataset, its decoder's params (:func:`~alignkit.core.paired.decoder_params`: what
    decoding needs; the ones locating files, such as ``root``, are left out so that no local path is
    written), the item count and the shard file names and brace pattern (see :func:`shard_pattern`,
    relative to ``out_dir``), e.g. ``shard-{000000..000012}.tar`` for the training config.

    ``encoding`` (:class:`~alignkit.core.image_encoding.ImageEncoding`): store each record's image resized and
    re-encoded instead of its original bytes (the default, None); the manifest's ``images`` then records the
    settings (size, resize mode, interpolation, format, quality, bit depth) and ``bit_depths``, the count of
    stored images per bit depth (``{"8": n, "16": m}``). ``workers`` > 1 reads and encodes items in that many
    processes; the items are written in index order by this process, so the shards are byte-identical for
    any ``workers``. Refuses to write into a folder that already holds ``<prefix>-*.tar`` files.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    existing = sorted(out.glob(f"{prefix}-*.tar"))
    if existing:
        raise FileExistsError(f"{out} already holds {len(existing)} shards ({existing[0].name}, ...); "
                              "delete them or choose another out_dir or prefix")
    if len(dataset) == 0:
        raise ValueError(f"cannot write shards of an empty dataset ({type(dataset).__name__})")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    written: List[Path] = []
    seen: Dict[str, int] = {}
    depths: Dict[str, int] = {}
    with wds.ShardWriter(str(out / f"{prefix}-%06d.tar"), maxcount=max_count, maxsize=max_size,
                         post=lambda name: written.append(Path(name)), verbose=0, mtime=0.0) as sink:
        items = _items(dataset, encoding, workers)
        for i, (key, record, depth) in enumerate(tqdm(items, total=len(dataset), disable=not progress,
                                                      desc=f"writing shards to {out}")):
            if key in seen:
                raise ValueError(f"{type(dataset).__name__}.key({i}) = {key!r} is a duplicate of item {seen[key]}"
                                 "; keys must be unique and contain no '.'")
            seen[key] = i
            if depth:
                depths[str(depth)] = depths.get(str(depth), 0) + 1
            sink.write({"__key__": key, **record})
    manifest: Dict[str, Any] = {"dataset": _registered_name(dataset),
                                "params": decoder_params(type(dataset), dataset.params), "count": len(dataset),
                                "shards": [p.name for p in written], "pattern": Path(shard_pattern(written)).name}
    if encoding is not None:
        manifest["images"] = {**encoding.manifest(), "bit_depths": dict(sorted(depths.items()))}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
    return written


def shard_pattern(paths: Sequence[Union[str, Path]]) -> str:
    """The brace pattern of consecutively numbered shards.

    ``[d/s-000000.tar, d/s-000001.tar]`` -> ``d/s-{000000..000001}.tar``; one path is returned as it is.
    """
    if not paths:
        raise ValueError("shard_pattern needs at least one shard path")
    parts = []
    for p in paths:
        match = re.fullmatch(r"(.*?)(\d+)(\.[^/]*)", str(p))
        if match is None:
            raise ValueError(f"shard path {p} does not end in <number>.<extension>")
        parts.append(match.groups())
    head, first, tail = parts[0]
    numbers = [int(n) for _, n, _ in parts]
    if any((h, len(n), t) != (head, len(first), tail) for h, n, t in parts) or \
            numbers != list(range(numbers[0], numbers[0] + len(parts))):
        raise ValueError(f"shards {[str(p) for p in paths]} are not consecutively numbered files of one pattern")
    return str(paths[0]) if len(parts) == 1 else f"{head}{{{first}..{parts[-1][1]}}}{tail}"


def read_manifest(pattern: str) -> Optional[Dict[str, Any]]:
    """The ``manifest.json`` beside the first shard of ``pattern`` (local or http(s)), or None if absent."""
    first = wds.shardlists.expand_urls(pattern)[0]
    if first.startswith("pipe:"):
        return None
    sibling = (first.rsplit("/", 1)[0] + "/" if "/" in first else "") + MANIFEST
    try:
        with wds.gopen(sibling, "rb") as f:
            return json.loads(f.read())
    except Exception:  # absent or unreachable: the manifest is optional
        return None


def _split_by_rank(urls: Iterable[Dict[str, str]], rank: int, num_replicas: int) -> Iterator[Dict[str, str]]:
    return islice(urls, rank, None, num_replicas)


class ShardedIterableDataset(IterableDataset):
    """Stream of decoded samples from WebDataset shards (``wds.DataPipeline``).

    ``pattern``: a brace pattern or list of shard URLs; local paths, ``http(s)://`` and ``pipe:``
    URLs are opened by webdataset's ``gopen``. Per epoch (``set_epoch``, or +1 for every ``iter()``
    of this object, which persistent DataLoader workers keep):

    - ``epoch_length=None``: one pass. The shard list is shuffled identically on every rank (seed
      ``seed + epoch``, if ``shuffle``), split by rank (like ``wds.split_by_node``, but with the rank
      taken when the dataset is built, so spawned workers get it right) and by DataLoader worker
      (``wds.split_by_worker``): every sample is read exactly once per epoch over all ranks and
      workers. Ranks may receive different sample counts.
    - ``epoch_length=N``: shards resampled with replacement (``wds.ResampledShards``, seeded by seed,
      epoch, rank and worker); each rank yields exactly ``N`` samples per epoch, split over its
      workers, so all ranks run the same number of steps (what multi-GPU training needs).

    Then a shuffle buffer of ``shuffle`` samples (0: none; seeded by seed, epoch, rank, worker) and
    ``decode(raw record) -> sample``.
    """

    def __init__(self, pattern: Union[str, List[str]], decode: Decoder, shuffle: int = 1000, seed: int = 0,
                 epoch_length: Optional[int] = None, num_replicas: Optional[int] = None,
                 rank: Optional[int] = None):
        super().__init__()
        self.urls = wds.shardlists.expand_urls(pattern) if isinstance(pattern, str) else list(pattern)
        if not self.urls:
            raise ValueError(f"no shards in {pattern!r}")
        self.decode = decode
        self.shuffle = shuffle
        self.seed = seed
        self.epoch_length = epoch_length
        self.num_replicas, self.rank = distributed_position(num_replicas, rank)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        stream_seed = wds.utils.make_seed(self.seed, epoch, self.rank, worker)
        stages: List[Any]
        if self.epoch_length is None:
            if len(self.urls) < self.num_replicas * workers:
                warnings.warn(f"{len(self.urls)} shards for {self.num_replicas} ranks x {workers} workers: some "
                              "readers get no shard; write smaller shards (max_count) for more parallelism")
            stages = [wds.SimpleShardList(self.urls, seed=self.seed + epoch if self.shuffle else None),
                      partial(_split_by_rank, rank=self.rank, num_replicas=self.num_replicas),
                      wds.split_by_worker]
        else:
            stages = [wds.ResampledShards(self.urls, seed=stream_seed, deterministic=True)]
        stages.append(wds.tarfile_to_samples())
        if self.shuffle:
            stages.append(wds.shuffle(self.shuffle, rng=random.Random(stream_seed)))
        stages.append(wds.map(self.decode))
        samples = iter(wds.DataPipeline(*stages))
        if self.epoch_length is None:
            return samples
        share = self.epoch_length // workers + (worker < self.epoch_length % workers)
        return islice(samples, share)
