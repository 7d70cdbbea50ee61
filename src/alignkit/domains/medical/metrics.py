"""Medical evaluation metrics: Dice for segmentation, BLEU-1..4 and ROUGE-L for generated reports.

Text is tokenised by :func:`report_tokens`: lower-cased, split on every non-alphanumeric
character, keeping the alphanumeric words (``"No pleural effusion."`` -> ``no pleural effusion``;
``"T11-T12"`` -> ``t11 t12``); punctuation is dropped, as the PTB tokeniser of pycocoevalcap does.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from typing import Dict, List, Sequence, Tuple, Union

import torch
from torch import Tensor

ROUGE_BETA = 1.2  # pycocoevalcap's Rouge: recall weighted 1.2 times precision
_WORD = re.compile(r"[a-z0-9]+")

References = Union[Sequence[str], Sequence[Sequence[str]]]


# --------------------------------------------------------------------------- segmentation
def dice_score(pred: Tensor, target: Tensor, empty_value: float = 1.0) -> Tensor:
    """``(N,)`` float64 Dice ``2 |P ∩ T| / (|P| + |T|)`` of each of ``N`` bool masks ``(N, H, W)`` (or ``(N, ...)``).

    An empty prediction on an empty mask scores ``empty_value`` (1: correctly finding nothing
    is a perfect answer); an empty prediction on a non-empty mask, or the reverse, scores 0.
    Computed by MONAI's ``compute_dice`` (``ignore_empty=False``, which scores empty-on-empty 1) on the
    one-hot pair ``(background, mask)`` of each mask, flattened, with the background channel left out.
    """
    from monai.metrics import compute_dice

    if pred.shape != target.shape or pred.dim() < 2:
        raise ValueError(f"dice_score: pred {tuple(pred.shape)} and target {tuple(target.shape)} must be masks of "
                         "one shape (N, H, W)")
    if pred.dtype != torch.bool or target.dtype != torch.bool:
        raise TypeError(f"dice_score: masks must be bool, got {pred.dtype} and {target.dtype}; threshold first "
                        "(e.g. probs > 0.5, labels == class_index)")
    pred, target = pred.flatten(1), target.flatten(1)
    one_hot_pred = torch.stack([~pred, pred], dim=1)  # (N, 2, H * W)
    one_hot_target = torch.stack([~target, target], dim=1).double()  # float64 sums, as the Dice is returned
    dice = compute_dice(one_hot_pred, one_hot_target, include_background=False, ignore_empty=False)[:, 0].double()
    both_empty = ~(pred.any(1) | target.any(1))
    return torch.where(both_empty, torch.full_like(dice, float(empty_value)), dice)


def mean_dice(pred: Tensor, target: Tensor, empty_value: float = 1.0) -> float:
    """Mean over the ``N`` masks of :func:`dice_score`."""
    return float(dice_score(pred, target, empty_value).mean())


# --------------------------------------------------------------------------- text
def report_tokens(text: str) -> List[str]:
    """Lower-cased alphanumeric words of ``text``; every other character separates words."""
    return _WORD.findall(text.lower())


def _tokenised_pairs(references: References, hypotheses: Sequence[str],
                     where: str) -> List[Tuple[List[List[str]], List[str]]]:
    """Per hypothesis its tokenised references (one string or a list of strings each) and its tokens."""
    if len(references) != len(hypotheses) or not hypotheses:
        raise ValueError(f"{where}: needs one reference (or list of references) per hypothesis and at least one "
                         f"pair, got {len(references)} references and {len(hypotheses)} hypotheses")
    pairs = []
    for i, (refs, hyp) in enumerate(zip(references, hypotheses)):
        refs = [refs] if isinstance(refs, str) else list(refs)
        if not refs:
            raise ValueError(f"{where}: hypothesis {i} has an empty list of references")
        pairs.append(([report_tokens(r) for r in refs], report_tokens(hyp)))
    return pairs


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def bleu_scores(references: References, hypotheses: Sequence[str], max_n: int = 4) -> Dict[str, float]:
    """Corpus BLEU-1..``max_n`` (Papineni et al. 2002), no smoothing: ``{"bleu1": ..., "bleu4": ...}``.

    ``references[i]`` is the reference (a string) or references (a list) of ``hypotheses[i]``.
    Modified precision ``p_n = sum_i sum_g min(c_i(g), max_r c_ir(g)) / sum_i sum_g c_i(g)``
    over the hypotheses' n-grams ``g`` (counts clipped by the most in any one reference),
    summed over the corpus before dividing. Brevity penalty ``BP = 1`` if ``c > r`` else
    ``exp(1 - r / c)`` with ``c`` the total hypothesis length and ``r`` the sum of each
    hypothesis's closest reference length (the shorter one on ties); ``BP = 0`` if ``c = 0``.
    ``BLEU-N = BP * exp(1/N sum_{n <= N} log p_n)``, 0 when some ``p_n = 0``.

    This is pycocoevalcap's Bleu (used by report-generation papers) without its 1e-9/1e-15
    guards, and nltk's ``corpus_bleu`` with uniform weights, except that nltk counts at least
    one n-gram in the denominator of a hypothesis shorter than ``n`` words (ours counts none,
    as Papineni et al.) and returns a tiny positive number where ours returns 0.
    """
    if max_n < 1:
        raise ValueError(f"bleu_scores: max_n must be >= 1, got {max_n}")
    matched, total = [0] * max_n, [0] * max_n
    hyp_len = ref_len = 0
    for refs, hyp in _tokenised_pairs(references, hypotheses, "bleu_scores"):
        hyp_len += len(hyp)
        ref_len += min((len(r) for r in refs), key=lambda length: (abs(length - len(hyp)), length))
        for n in range(1, max_n + 1):
            counts = _ngrams(hyp, n)
            most: Counter = Counter()
            for ref in refs:
                most |= _ngrams(ref, n)
            matched[n - 1] += sum(min(c, most[g]) for g, c in counts.items())
            total[n - 1] += sum(counts.values())
    if hyp_len == 0:
        return {f"bleu{n}": 0.0 for n in range(1, max_n + 1)}
    penalty = 1.0 if hyp_len > ref_len else math.exp(1.0 - ref_len / hyp_len)
    scores, log_sum = {}, 0.0
    for n in range(1, max_n + 1):
        log_sum += math.log(matched[n - 1] / total[n - 1]) if matched[n - 1] else -math.inf
        scores[f"bleu{n}"] = penalty * math.exp(log_sum / n)
    return scores


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of ``a`` and ``b`` (dynamic programming, O(|a| |b|))."""
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(references: References, hypotheses: Sequence[str], beta: float = ROUGE_BETA) -> float:
    """Mean over hypotheses of the sentence-level ROUGE-L F-measure, as pycocoevalcap's Rouge.

    For hypothesis ``h`` and references ``r_k``: ``P = max_k LCS(h, r_k) / |h|``,
    ``R = max_k LCS(h, r_k) / |r_k|``, ``F = (1 + beta²) P R / (R + beta² P)`` (0 when ``P`` or
    ``R`` is 0), with ``beta = 1.2`` by default (recall weighs more than precision).
    """
    scores = []
    for refs, hyp in _tokenised_pairs(references, hypotheses, "rouge_l"):
        lcs = [_lcs_length(hyp, ref) for ref in refs]
        precision = max(m / len(hyp) if hyp else 0.0 for m in lcs)
        recall = max(m / len(ref) if ref else 0.0 for m, ref in zip(lcs, refs))
        scores.append((1 + beta ** 2) * precision * recall / (recall + beta ** 2 * precision)
                      if precision > 0 and recall > 0 else 0.0)
    return sum(scores) / len(scores)
