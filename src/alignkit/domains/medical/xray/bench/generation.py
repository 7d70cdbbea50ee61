"""Report generation on a frozen X-ray image encoder (BenchX's generation task), and its retrieval baseline.

- :class:`ReportVocabulary`: word-level vocabulary of the training reports, with the tokenisation of
  :func:`alignkit.domains.medical.metrics.report_tokens` (lower-case alphanumeric words), so generated
  text is scored on the words it was trained on.
- :class:`ReportDecoder`: ``nn.TransformerDecoder`` over word embeddings (+ learned positions), with
  cross-attention to the frozen encoder's tokens ``forward_tokens(image) -> (B, N, C)`` projected to
  ``d_model``; trained with teacher forcing (cross-entropy on the next word), decoded greedily.
- :func:`retrieval_report_baseline`: the report of the nearest training image (cosine similarity).
- :func:`screened_retrieval_reports`: the same baseline under the rules of every report assembled from retrieval
  (:mod:`alignkit.domains.medical.retrieval_reports`): an image whose distance to its nearest training images is
  beyond a threshold calibrated leave-one-out on the training images abstains; a report whose best match is below
  the calibrated similarity, or whose top retrieved reports disagree with the finding scores, is "not assessed".
Both are scored with BLEU-1..4 and ROUGE-L (:func:`score_reports`; the screened one on the reports it gives).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, FrozenSet, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset, TensorDataset

from alignkit.domains.medical.metrics import bleu_scores, report_tokens, rouge_l
from alignkit.domains.medical.retrieval_reports import (ABOVE, AssessedSection, ScoreCheck, Threshold, assess_section,
                                                        decide_finding, knn_distance, lower_threshold, stated_finding,
                                                        top_candidates)
from alignkit.domains.medical.xray.bench.shared import Split, as_dataset, checked_batches, encode_images, sample_loader

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"


def report_string(text: Union[str, Sequence[str]]) -> str:
    """A sample's ``"text"``: a string, or a list of sentences joined with spaces."""
    return text if isinstance(text, str) else " ".join(text)


def dataset_reports(data: Split, batch_size: int = 256) -> List[str]:
    """Every sample's report as one string (:func:`report_string`)."""
    return [report_string(t) for b in checked_batches(sample_loader(data, batch_size), ["text"]) for t in b["text"]]


class ReportVocabulary:
    """Word <-> id; ids 0-3 are ``<pad> <bos> <eos> <unk>``, then words seen ``>= min_count`` times
    (most frequent first, ties alphabetical)."""

    def __init__(self, words: Sequence[str]):
        self.itos: List[str] = [PAD, BOS, EOS, UNK] + [w for w in words if w not in (PAD, BOS, EOS, UNK)]
        self.stoi: Dict[str, int] = {w: i for i, w in enumerate(self.itos)}

    @classmethod
    def build(cls, reports: Sequence[str], min_count: int = 1) -> "ReportVocabulary":
        counts = Counter(w for r in reports for w in report_tokens(r))
        return cls([w for w, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if c >= min_count])

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, report: str, max_length: int) -> Tensor:
        """LongTensor ``(max_length,)``: ``<bos> w_1 .. w_n <eos> <pad> ...`` (words cut to fit)."""
        ids = [self.stoi.get(w, self.stoi[UNK]) for w in report_tokens(report)][: max_length - 2]
        ids = [self.stoi[BOS]] + ids + [self.stoi[EOS]]
        return torch.tensor(ids + [self.stoi[PAD]] * (max_length - len(ids)))

    def decode(self, ids: Sequence[int]) -> str:
        """Words up to the first ``<eos>``, skipping ``<bos>``/``<pad>``, joined by spaces."""
        words = []
        for i in ids:
            word = self.itos[int(i)]
            if word == EOS:
                break
            if word not in (PAD, BOS):
                words.append(word)
        return " ".join(words)


def sinusoidal_positions(n: int, dim: int) -> Tensor:
    """``(n, dim)`` Transformer encoding: ``[sin(p w_0), cos(p w_0), sin(p w_1), ...]``, ``w_i = 10000^(-2i/dim)``."""
    position = torch.arange(n, dtype=torch.float32)[:, None]
    freq = torch.pow(10000.0, -torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    out = torch.zeros(n, dim)
    out[:, 0::2] = torch.sin(position * freq)
    out[:, 1::2] = torch.cos(position * freq)[:, : dim // 2]
    return out


class ReportDecoder(nn.Module):
    """Transformer decoder of reports conditioned on image tokens.

    ``forward(memory (B, N, memory_dim), ids (B, L)) -> logits (B, L, V)``: ``h = E[ids] + P[:L]`` (learned
    positions); memory ``m = W memory + S`` with the fixed sinusoidal encoding ``S`` of the token index
    (:func:`sinusoidal_positions`, so where a region lies is known for any ``N``);
    ``TransformerDecoder(h, m)`` with a causal mask and padding mask; a linear layer to the vocabulary.
    """

    def __init__(self, vocab: ReportVocabulary, memory_dim: int, d_model: int = 128, nhead: int = 4,
                 num_layers: int = 2, dim_feedforward: int = 256, dropout: float = 0.1, max_length: int = 64):
        super().__init__()
        self.vocab, self.max_length = vocab, max_length
        self.embed = nn.Embedding(len(vocab), d_model, padding_idx=vocab.stoi[PAD])
        self.position = nn.Parameter(torch.zeros(1, max_length, d_model))
        nn.init.trunc_normal_(self.position, std=0.02)
        self.memory = nn.Linear(memory_dim, d_model)
        layer = nn.TransformerDecoderLayer(d_model, nhead, dim_feedforward, dropout, batch_first=True)
        self.decoder = nn.TransformerDecoder(layer, num_layers)
        self.out = nn.Linear(d_model, len(vocab))

    def forward(self, memory: Tensor, ids: Tensor) -> Tensor:
        n = ids.shape[1]
        causal = torch.ones(n, n, dtype=torch.bool, device=ids.device).triu(1)  # True = may not attend
        memory = self.memory(memory) + sinusoidal_positions(memory.shape[1], self.position.shape[-1]).to(memory)
        h = self.decoder(self.embed(ids) + self.position[:, :n], memory, tgt_mask=causal,
                         tgt_is_causal=True, tgt_key_padding_mask=ids == self.vocab.stoi[PAD])
        return self.out(h)

    @torch.no_grad()
    def generate(self, memory: Tensor) -> List[str]:
        """Greedy decoding from ``<bos>`` until ``<eos>`` or ``max_length`` tokens, for memory ``(B, N, C)``."""
        self.eval()
        ids = torch.full((memory.shape[0], 1), self.vocab.stoi[BOS], dtype=torch.long)
        done = torch.zeros(memory.shape[0], dtype=torch.bool)
        for _ in range(self.max_length - 1):
            nxt = self(memory, ids)[:, -1].argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, self.vocab.stoi[PAD]), nxt)
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            done |= nxt == self.vocab.stoi[EOS]
            if done.all():
                break
        return [self.vocab.decode(row.tolist()) for row in ids]


def teacher_forcing_loss(decoder: ReportDecoder, memory: Tensor, ids: Tensor) -> Tensor:
    """Cross-entropy of predicting ``ids[:, 1:]`` from ``ids[:, :-1]``, ``<pad>`` targets ignored."""
    logits = decoder(memory, ids[:, :-1])
    return F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(), ignore_index=decoder.vocab.stoi[PAD])


def train_report_decoder(decoder: ReportDecoder, memory: Tensor, reports: Sequence[str], epochs: int = 20,
                         lr: float = 1e-3, batch_size: int = 32, seed: int = 0) -> List[float]:
    """AdamW with teacher forcing on precomputed image tokens ``(N, T, C)`` and their reports; returns the
    mean loss per epoch."""
    ids = torch.stack([decoder.vocab.encode(r, decoder.max_length) for r in reports])
    loader = DataLoader(TensorDataset(memory, ids), batch_size=batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    opt = torch.optim.AdamW(decoder.parameters(), lr=lr)
    history = []
    for _ in range(epochs):
        decoder.train()
        losses = []
        for m, y in loader:
            loss = teacher_forcing_loss(decoder, m, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        history.append(sum(losses) / len(losses))
    return history


def score_reports(references: Sequence[str], hypotheses: Sequence[str]) -> Dict[str, float]:
    """``bleu1``..``bleu4`` (:func:`bleu_scores`) and ``rouge_l`` (:func:`rouge_l`)."""
    return {**bleu_scores(list(references), list(hypotheses)), "rouge_l": rouge_l(list(references), list(hypotheses))}


def retrieval_report_baseline(train_embeddings: Tensor, train_reports: Sequence[str],
                              test_embeddings: Tensor) -> List[str]:
    """For each test embedding ``(M, D)``, the report of the most cosine-similar train embedding ``(N, D)``
    (the first on ties)."""
    if len(train_embeddings) != len(train_reports):
        raise ValueError(f"retrieval_report_baseline: {len(train_embeddings)} train embeddings but "
                         f"{len(train_reports)} reports")
    sim = F.normalize(test_embeddings.float(), dim=-1) @ F.normalize(train_embeddings.float(), dim=-1).T
    return [train_reports[i] for i in sim.argmax(1).tolist()]


CXR_FINDING_TERMS: Dict[str, Tuple[str, ...]] = {
    "cardiomegaly": ("cardiomegaly", "enlarged heart", "enlarged cardiac silhouette", "cardiac enlargement"),
    "pleural_effusion": ("pleural effusion", "effusion"),
    "pneumothorax": ("pneumothorax",),
    "nodule": ("nodule", "mass", "lung lesion"),
    "consolidation": ("consolidation", "pneumonia", "airspace opacity", "airspace disease"),
    "edema": ("edema", "vascular congestion"),
}
"""How chest reports state each finding (terms affirmed: present; negated: absent), for the consistency check."""


@dataclass
class RetrievalCalibration:
    """Thresholds of the screened retrieval baseline, calibrated leave-one-out on the training images at
    ``rate``: ``distance`` on :func:`~alignkit.domains.medical.retrieval_reports.knn_distance` (``k`` neighbours,
    abstain above; ``rate / 2``) and ``similarity``, the best match's lower ``rate / 2`` quantile (not assessed below,
    never below 0)."""

    distance: Threshold
    similarity: float
    k: int
    rate: float

    @classmethod
    def fit(cls, train_embeddings: Tensor, rate: float = 0.05, k: int = 5) -> "RetrievalCalibration":
        keys = F.normalize(train_embeddings.float(), dim=-1)
        sims = keys @ keys.T
        sims.fill_diagonal_(-float("inf"))
        return cls(Threshold.fit(knn_distance(keys, keys, k, leave_one_out=True), ABOVE, rate / 2),
                   lower_threshold(sims.max(1).values, rate / 2), k, rate)


@dataclass
class ScreenedReport:
    """One test image's screened report: ``text`` (None: no report, see ``reason``), ``abstained`` (out of
    distribution), its score ``checks``, the assessed ``section`` and the finding scores of the retrieved reports."""

    text: Optional[str]
    abstained: bool
    reason: str
    checks: List[ScoreCheck]
    section: Optional[AssessedSection] = None
    findings: Dict[str, float] = field(default_factory=dict)


def stated_findings(text: str, terms: Dict[str, Tuple[str, ...]]) -> FrozenSet[str]:
    """The findings of ``terms`` that ``text`` affirms (NegEx rules: a negated mention does not count)."""
    return frozenset(name for name, words in terms.items() if stated_finding(text, words) is True)


def screened_retrieval_reports(train_embeddings: Tensor, train_reports: Sequence[str], test_embeddings: Tensor,
                               calibration: Optional[RetrievalCalibration] = None, rate: float = 0.05, k: int = 5,
                               terms: Optional[Dict[str, Tuple[str, ...]]] = None) -> List[ScreenedReport]:
    """:func:`retrieval_report_baseline` under the shared rules (see the module docstring): per test image the
    ``k`` nearest training reports; a finding's score is the fraction of them that affirm it, decided present
    (``>= 2/3``), absent (``<= 1/3``) or uncertain; the report given is the most similar one whose affirmed
    findings equal the decided ones, when at least half of the ``k`` agree with them and its similarity reaches the
    calibrated one. ``calibration``: default fitted on ``train_embeddings`` (:meth:`RetrievalCalibration.fit`)."""
    if len(train_embeddings) != len(train_reports):
        raise ValueError(f"screened_retrieval_reports: {len(train_embeddings)} train embeddings but "
                         f"{len(train_reports)} reports")
    terms = CXR_FINDING_TERMS if terms is None else terms
    calibration = calibration or RetrievalCalibration.fit(train_embeddings, rate, k)
    keys = F.normalize(train_embeddings.float(), dim=-1)
    queries = F.normalize(test_embeddings.float(), dim=-1)
    stated = [stated_findings(r, terms) for r in train_reports]
    sources = [f"train image {i}" for i in range(len(train_reports))]
    distances = knn_distance(queries, keys, calibration.k)
    out = []
    for q, sims in enumerate(queries @ keys.T):
        checks = [ScoreCheck("training_distance", float(distances[q]), calibration.distance)]
        if not checks[0].passed:
            out.append(ScreenedReport(None, True, "out of the training distribution: " + checks[0].describe(), checks))
            continue
        candidates = top_candidates(train_reports, sources, sims, calibration.k, stated)
        scores = {name: sum(name in c.key for c in candidates) / len(candidates) for name in terms}
        decided = {name: decide_finding(p) for name, p in scores.items()}
        uncertain = [name for name, d in decided.items() if d is None]
        wanted = frozenset(name for name, d in decided.items() if d)
        section = assess_section("report", candidates, calibration.similarity, wanted=wanted)
        if uncertain and section.reported:
            section.text, section.reason = None, f"uncertain finding scores: {', '.join(uncertain)}"
        out.append(ScreenedReport(section.text, False, section.reason, checks, section, scores))
    return out


def screened_scores(references: Sequence[str], screened: Sequence[ScreenedReport]) -> Dict[str, float]:
    """:func:`score_reports` over the images given a report, and the fractions ``abstained`` and
    ``not_assessed``."""
    given = [(r, s.text) for r, s in zip(references, screened) if s.text is not None]
    scores = score_reports([r for r, _ in given], [t for _, t in given]) if given else {}
    n = max(1, len(screened))
    return {**scores, "abstained": sum(s.abstained for s in screened) / n,
            "not_assessed": sum(not s.abstained and s.text is None for s in screened) / n}


@dataclass
class GenerationResult:
    """Scores (:func:`score_reports`) of the decoder, of the retrieval baseline and of the screened baseline
    (:func:`screened_scores`), and the generated text."""

    decoder: Dict[str, float]
    retrieval: Dict[str, float]
    generated: List[str]
    retrieved: List[str]
    references: List[str]
    retrieval_screened: Dict[str, float] = field(default_factory=dict)
    screened: List[ScreenedReport] = field(default_factory=list)


def evaluate_report_generation(encoder: nn.Module, train: Split, test: Split, epochs: int = 20, lr: float = 1e-3,
                               batch_size: int = 32, d_model: int = 128, num_layers: int = 2,
                               max_length: int = 64, min_count: int = 1, seed: int = 0,
                               max_reports: Optional[int] = None) -> GenerationResult:
    """Train a :class:`ReportDecoder` on the frozen ``encoder``'s tokens of ``train`` (vocabulary from the
    train reports) and generate the ``test`` reports greedily; the baseline retrieves the report of the
    nearest train image by the encoder's pooled features. ``max_reports``: score the first that many test
    images only (greedy decoding without a key/value cache costs ~``max_length / 2`` training epochs of them)."""
    if max_reports is not None and max_reports < len(as_dataset(test)):
        test = Subset(as_dataset(test), range(max_reports))
    train_reports, references = dataset_reports(train), dataset_reports(test)
    train_tokens, test_tokens = (encode_images(encoder, s, batch_size, tokens=True) for s in (train, test))
    torch.manual_seed(seed)
    decoder = ReportDecoder(ReportVocabulary.build(train_reports, min_count), train_tokens.shape[-1], d_model=d_model,
                            num_layers=num_layers, max_length=max_length)
    train_report_decoder(decoder, train_tokens, train_reports, epochs, lr, batch_size, seed)
    generated = [s for chunk in test_tokens.split(batch_size) for s in decoder.generate(chunk)]
    train_pooled, test_pooled = encode_images(encoder, train, batch_size), encode_images(encoder, test, batch_size)
    retrieved = retrieval_report_baseline(train_pooled, train_reports, test_pooled)
    screened = screened_retrieval_reports(train_pooled, train_reports, test_pooled)
    return GenerationResult(score_reports(references, generated), score_reports(references, retrieved),
                            generated, retrieved, references, screened_scores(references, screened), screened)
