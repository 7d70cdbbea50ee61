"""open_clip's text transformer as a tower (``"clip-text"``) and its BPE tokenizer (:class:`CLIPBPETokenizer`).

Token ids ``s`` ``(B, L)`` (``L`` = ``context_length``; ``<start_of_text>`` ... ``<end_of_text>``, zero padded):

    t = token_embedding(s) + E_pos                   (B, L, w)
    t = ln_final(blocks(t, causal mask))             mask M_ij = -inf for j > i (none with ``causal=False``)
    pooled = t[b, argmax_l s_bl]                     'argmax': the end-of-text token (the largest id);
             t[:, 0] ('first') / t[:, -1] ('last')
    z = pooled @ text_projection -> (B, output_dim)  (a Linear with bias if ``proj_bias``; none if output_dim=None)

Parameter names follow open_clip's ``CLIP`` text half (``token_embedding``, ``positional_embedding``,
``transformer.resblocks.*``, ``ln_final``, ``text_projection``), so an open_clip checkpoint maps by keeping
those keys. Texts are strings or lists of strings (a list item is the mean of its strings' embeddings, as in
``hf-text``).
"""
from __future__ import annotations

import gzip
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from alignkit.core.encoders.base import TextItem
from alignkit.core.encoders.clip_vit import CLIP_ACTIVATIONS, Transformer
from alignkit.core.encoders.text import clean_text, flatten_texts, mean_per_item
from alignkit.core.params import AT_LEAST_ONE, OneOf, Range, check_choice
from alignkit.core.registry import ENCODERS, ConfigError

TEXT_POOLS = ("argmax", "first", "last")
OPENCLIP_MAX_MERGES = 49152 - 256 - 2
"""open_clip's SimpleTokenizer reads merges lines ``1 .. 48894`` of the BPE file (line 0 is a version header)."""
SPECIAL_TOKENS = ("<start_of_text>", "<end_of_text>")


@lru_cache()
def bytes_to_unicode() -> Dict[int, str]:
    """GPT-2's reversible map of the 256 byte values to printable unicode characters (as open_clip's)."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


class CLIPBPETokenizer:
    """open_clip's ``SimpleTokenizer``: byte-level BPE over a merges file (``bpe_simple_vocab_16e6.txt.gz``).

    Vocabulary: the 256 byte symbols, the same with ``</w>``, one entry per merge (at most
    :data:`OPENCLIP_MAX_MERGES`), then ``<start_of_text>`` and ``<end_of_text>``. ``__call__(texts)`` gives
    ``(B, context_length)`` int64 ids ``[sot, bpe(clean(text)), eot]``, truncated to ``context_length`` with the last
    id set to ``eot``, zero padded.
    """

    def __init__(self, bpe_path: str, context_length: int = 77):
        import regex

        path = Path(bpe_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"clip-text: tokenizer_path '{bpe_path}' is not a file; give open_clip's BPE "
                                    f"merges file (bpe_simple_vocab_16e6.txt.gz, shipped with open_clip_torch, or "
                                    f"the tokenizer copied by `alignkit import-weights open-clip`)")
        raw = path.read_bytes()
        raw = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw  # gzip magic, whatever the file's name
        lines = raw.decode("utf-8").split("\n")[1:OPENCLIP_MAX_MERGES + 1]
        merges = [tuple(line.split()) for line in lines if line.strip()]
        bad = [k + 2 for k, m in enumerate(merges) if len(m) != 2]
        if bad:
            raise ValueError(f"clip-text: {path} line {bad[0]} is not a BPE merge 'a b'; is this a merges file?")
        self.byte_encoder = bytes_to_unicode()
        vocab = list(self.byte_encoder.values())
        vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges] + list(SPECIAL_TOKENS)
        self.encoder = {v: k for k, v in enumerate(vocab)}
        self.bpe_ranks = {m: k for k, m in enumerate(merges)}
        self.cache: Dict[str, str] = {t: t for t in SPECIAL_TOKENS}
        self.pattern = regex.compile("|".join(SPECIAL_TOKENS)
                                     + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
                                     regex.IGNORECASE)
        self.vocab_size = len(self.encoder)
        self.sot_token_id, self.eot_token_id = (self.encoder[t] for t in SPECIAL_TOKENS)
        self.context_length = int(context_length)

    def bpe(self, token: str) -> str:
        """The space-separated BPE symbols of one pre-token (lowest-rank merge first, repeated)."""
        if token in self.cache:
            return self.cache[token]
        word: Tuple[str, ...] = tuple(token[:-1]) + (token[-1] + "</w>",)
        while len(word) > 1:
            pairs = set(zip(word[:-1], word[1:]))
            bigram = min(pairs, key=lambda pair: self.bpe_ranks.get(pair, float("inf")))
            if bigram not in self.bpe_ranks:
                break
            merged: List[str] = []
            i = 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == bigram[0] and word[i + 1] == bigram[1]:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        self.cache[token] = " ".join(word)
        return self.cache[token]

    def encode(self, text: str) -> List[int]:
        """BPE ids of ``clean_text(text)`` without start/end tokens."""
        ids: List[int] = []
        for token in self.pattern.findall(clean_text(text)):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[piece] for piece in self.bpe(token).split(" "))
        return ids

    def __call__(self, texts: Sequence[str], context_length: Optional[int] = None) -> Tensor:
        length = int(context_length or self.context_length)
        result = torch.zeros(len(texts), length, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = [self.sot_token_id] + self.encode(text) + [self.eot_token_id]
            if len(ids) > length:
                ids = ids[:length]
                ids[-1] = self.eot_token_id
            result[i, :len(ids)] = torch.tensor(ids)
        return result


@ENCODERS.register("clip-text")
class CLIPTextTransformer(nn.Module):
    """open_clip's ``TextTransformer``: ``forward(texts) -> (B, output_dim)`` (see the module docstring).

    Args:
        tokenizer_path: open_clip's BPE merges file (gzipped or plain text).
        context_length: token positions (texts are truncated to it; open_clip: 77).
        vocab_size: rows of ``token_embedding`` (default: the tokenizer's vocabulary; may be larger).
        width, layers, heads, mlp_ratio, act, ls_init_value: the transformer (as ``clip-vit``).
        output_dim: ``text_projection`` ``(width, output_dim)``; None: no projection (``output_dim = width``).
        proj_bias: the projection is a Linear with bias (keys ``text_projection.weight``/``.bias``).
        pool: ``"argmax"`` (end-of-text token), ``"first"`` or ``"last"``. causal: the causal attention mask.
    """

    def __init__(self, tokenizer_path: str, context_length: Annotated[int, AT_LEAST_ONE] = 77,
                 vocab_size: Optional[Annotated[int, AT_LEAST_ONE]] = None, width: Annotated[int, AT_LEAST_ONE] = 512,
                 layers: Annotated[int, AT_LEAST_ONE] = 12, heads: Annotated[int, AT_LEAST_ONE] = 8,
                 mlp_ratio: Annotated[float, Range(gt=0)] = 4.0,
                 output_dim: Optional[Annotated[int, AT_LEAST_ONE]] = 512,
                 act: Annotated[str, OneOf(CLIP_ACTIVATIONS)] = "gelu", ls_init_value: Optional[float] = None,
                 proj_bias: bool = False, pool: Annotated[str, OneOf(TEXT_POOLS)] = "argmax", causal: bool = True):
        super().__init__()
        check_choice(pool, TEXT_POOLS, "clip-text pool")
        self.tokenizer = CLIPBPETokenizer(tokenizer_path, context_length)
        vocab_size = int(vocab_size or self.tokenizer.vocab_size)
        if vocab_size < self.tokenizer.vocab_size:
            raise ConfigError(f"clip-text vocab_size {vocab_size} is smaller than the tokenizer's "
                              f"{self.tokenizer.vocab_size} ({tokenizer_path}); drop vocab_size or use the model's "
                              f"own BPE file")
        self.context_length, self.pool = int(context_length), pool
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(0.01 * torch.randn(context_length, width))
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        self.transformer = Transformer(width, layers, heads, mlp_ratio, ls_init_value, act)
        self.ln_final = nn.LayerNorm(width)
        mask = torch.full((context_length, context_length), float("-inf")).triu_(1) if causal else None
        self.register_buffer("attn_mask", mask, persistent=False)
        self.text_projection: Optional[nn.Module | nn.Parameter] = None
        if output_dim and proj_bias:
            self.text_projection = nn.Linear(width, output_dim)
        elif output_dim:
            self.text_projection = nn.Parameter(width ** -0.5 * torch.randn(width, output_dim))
        self.output_dim = int(output_dim or width)

    @property
    def device(self) -> torch.device:
        return self.token_embedding.weight.device

    def tokenize(self, texts: Sequence[str]) -> Tensor:
        """``(B, context_length)`` int64 ids on the model's device (open_clip's ids exactly)."""
        return self.tokenizer(list(texts)).to(self.device)

    def encode_ids(self, ids: Tensor) -> Tensor:
        """``(B, context_length)`` ids -> ``(B, output_dim)``."""
        t = self.token_embedding(ids) + self.positional_embedding
        t = self.ln_final(self.transformer(t, self.attn_mask))
        if self.pool == "argmax":
            pooled = t[torch.arange(t.shape[0], device=t.device), ids.argmax(dim=-1)]
        else:
            pooled = t[:, 0] if self.pool == "first" else t[:, -1]
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(pooled)
        return pooled @ self.text_projection if self.text_projection is not None else pooled

    def forward(self, texts: Sequence[TextItem]) -> Tensor:
        strings, counts = flatten_texts(texts)
        embeddings = self.encode_ids(self.tokenize(strings))
        return embeddings if counts is None else mean_per_item(embeddings, counts)

    def forward_tokens(self, texts: Sequence[str]) -> Tensor:
        """``(B, context_length, width)`` token features after ``ln_final`` (padding positions included)."""
        ids = self.tokenize(texts)
        t = self.token_embedding(ids) + self.positional_embedding
        return self.ln_final(self.transformer(t, self.attn_mask))


__all__ = ["TEXT_POOLS", "OPENCLIP_MAX_MERGES", "bytes_to_unicode", "CLIPBPETokenizer",
           "CLIPTextTransformer"]
