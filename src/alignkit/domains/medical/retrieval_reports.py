"""Rules for reports assembled from retrieved training reports: shared by the echo interpretation
(:mod:`alignkit.domains.medical.echo.interpret`) and the X-ray retrieval baseline
(:mod:`alignkit.domains.medical.xray.bench.generation`).

A retrieved report is only as good as the match behind it, so every report assembled from retrieval follows
three rules:

1. **Out of distribution -> abstain.** An input gets scores of how unlike the training archive it is, e.g.
   :func:`knn_distance` ``d(x) = 1 - mean_{j in top-k} cos(z_x, z_j)`` to the training embeddings. Each score has
   a threshold calibrated on held-out inputs (:func:`upper_threshold` / :func:`lower_threshold`, split-conformal:
   a new in-distribution input crosses it with probability <= ``rate``); beyond any threshold no report is given
   and the scores are printed (:class:`ScoreCheck`).
2. **Weak or contested evidence -> "not assessed".** A section is reported only when its best evidence has a
   similarity at or above its calibrated threshold (never below 0) and the top retrieved candidates agree
   (:func:`assess_section`); otherwise it is printed as not assessed, with its score and the reason.
3. **Consistency.** Statements that can be checked against a figure are: :func:`stated_finding` reads whether a
   sentence affirms or denies a finding (NegEx rules of :mod:`alignkit.domains.medical.reports`),
   :func:`decide_finding` turns a finding score into present / absent / uncertain, and a section's text must
   agree with that decision; summaries (conclusions, impressions) are assembled from the reported sections only.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Hashable, List, Optional, Sequence

from torch import Tensor

from alignkit.domains.medical.reports import affirmed_terms, negated_terms, split_sentences

ABOVE, BELOW = "above", "below"


def knn_distance(query: Tensor, keys: Tensor, k: int, leave_one_out: bool = False) -> Tensor:
    """``(Q,)`` distances ``1 - mean_{top-k} cos(query_q, keys_j)`` (deep nearest neighbours, Sun et al., ICML 2022)
    of normalised ``query`` ``(Q, D)`` to normalised ``keys`` ``(K, D)``. ``leave_one_out``: ``query`` is ``keys``
    and each row's own match is left out (a held-out estimate from the training set itself)."""
    sims = query.float() @ keys.float().T
    if leave_one_out:
        sims.fill_diagonal_(-float("inf"))
    top = sims.topk(max(1, min(k, keys.shape[0] - int(leave_one_out))), dim=1).values
    return 1.0 - top.mean(1)


def upper_threshold(scores: Sequence[float] | Tensor, rate: float) -> float:
    """Split-conformal upper threshold: the ``ceil((n + 1)(1 - rate))``-th smallest of ``n`` held-out scores, so a
    new exchangeable score exceeds it with probability ``<= rate``; the largest score when ``n`` is too small for
    ``rate`` (then the guarantee is ``1 / (n + 1)``)."""
    values = sorted(float(s) for s in (scores.tolist() if isinstance(scores, Tensor) else scores)
                    if math.isfinite(float(s)))
    if not values:
        raise ValueError("cannot calibrate a threshold on no held-out scores; give at least one held-out input")
    if not 0 < rate < 1:
        raise ValueError(f"the false-abstention rate must lie in (0, 1), got {rate}")
    rank = math.ceil((len(values) + 1) * (1 - rate))
    return values[min(rank, len(values)) - 1]


def lower_threshold(scores: Sequence[float] | Tensor, rate: float) -> float:
    """The mirror of :func:`upper_threshold`: a new held-out-like score falls below it with probability
    ``<= rate``."""
    values = scores.tolist() if isinstance(scores, Tensor) else list(scores)
    return -upper_threshold([-float(v) for v in values], rate)


@dataclass
class Threshold:
    """A calibrated threshold: inputs whose score lies ``side`` (``"above"``/``"below"``) ``value`` are out of
    distribution. ``rate``: the false-abstention rate it was calibrated at, on ``n`` held-out inputs."""

    value: float
    side: str
    rate: float
    n: int

    @classmethod
    def fit(cls, scores: Sequence[float] | Tensor, side: str, rate: float) -> "Threshold":
        fit = upper_threshold if side == ABOVE else lower_threshold
        return cls(fit(scores, rate), side, rate, len(scores))

    def crossed(self, score: float) -> bool:
        """True when ``score`` is beyond the threshold (NaN counts as beyond)."""
        if not math.isfinite(score):
            return True
        return score > self.value if self.side == ABOVE else score < self.value


@dataclass
class ScoreCheck:
    """One score of an input against its threshold (``passed``: not beyond it)."""

    name: str
    value: float
    threshold: Threshold

    @property
    def passed(self) -> bool:
        return not self.threshold.crossed(self.value)

    def describe(self) -> str:
        limit = f"{'max' if self.threshold.side == ABOVE else 'min'} {self.threshold.value:.3f}"
        return f"{self.name} {self.value:.3f} ({limit}{'' if self.passed else ', OUT OF RANGE'})"


def check_scores(scores: Dict[str, float], thresholds: Dict[str, Threshold]) -> List[ScoreCheck]:
    """Every score that has a threshold, as a :class:`ScoreCheck`, in ``thresholds`` order."""
    return [ScoreCheck(name, float(scores[name]), t) for name, t in thresholds.items() if name in scores]


def thresholds_to_json(thresholds: Dict[str, Threshold]) -> Dict[str, Any]:
    return {name: asdict(t) for name, t in thresholds.items()}


def thresholds_from_json(data: Dict[str, Any]) -> Dict[str, Threshold]:
    return {name: Threshold(**t) for name, t in data.items()}


# ----------------------------------------------------------------------------------------- consistency

def stated_finding(text: str, present: Sequence[str], normal: Sequence[str] = ()) -> Optional[bool]:
    """What ``text`` says about a finding: True when a ``present`` term is affirmed ("Dilated left ventricle."),
    False when a ``present`` term is negated ("No pericardial effusion.") or a ``normal`` term is affirmed
    ("Normal left atrial size."), None when it says neither (negation rules of
    :func:`~alignkit.domains.medical.reports.is_negated`)."""
    if affirmed_terms(text, present):
        return True
    if negated_terms(text, present) or (normal and affirmed_terms(text, normal)):
        return False
    return None


def decide_finding(score: float, low: float = 1 / 3, high: float = 2 / 3) -> Optional[bool]:
    """A finding score (the fraction of the retrieved studies that have it) as a decision: present when
    ``score >= high``, absent when ``score <= low``, None (uncertain) in between or when NaN."""
    if not math.isfinite(score):
        return None
    return True if score >= high - 1e-9 else False if score <= low + 1e-9 else None


def drop_sentences(text: str, pattern: "re.Pattern[str]") -> str:
    """``text`` without its sentences (:func:`~alignkit.domains.medical.reports.split_sentences`) that match
    ``pattern``."""
    return " ".join(s for s in split_sentences(text) if not pattern.search(s))


@dataclass
class Candidate:
    """One retrieved candidate for a section: its text, where it came from, its similarity to the query and its
    agreement key (e.g. the finding it states)."""

    text: str
    source: str
    similarity: float
    key: Hashable = None


@dataclass
class AssessedSection:
    """A section as reported: ``text`` (None: not assessed, see ``reason``), the similarity of its best evidence
    and the calibrated ``threshold``, the ``agreement`` of the top candidates, and the ``evidence`` candidates."""

    name: str
    text: Optional[str]
    similarity: float
    threshold: float
    agreement: float
    reason: str = ""
    evidence: List[Candidate] = field(default_factory=list)

    @property
    def reported(self) -> bool:
        return self.text is not None

    def describe(self) -> str:
        """``TEXT    [similarity s >= t, agreement a]`` or ``not assessed (reason)``."""
        score = f"similarity {self.similarity:.3f}, threshold {self.threshold:.3f}, agreement {self.agreement:.2f}"
        return f"{self.text}    [{score}]" if self.reported else f"not assessed ({self.reason}; {score})"


def assess_section(name: str, candidates: Sequence[Candidate], threshold: float, wanted: Hashable = None,
                   min_agreement: float = 0.5) -> AssessedSection:
    """Report a section from its top retrieved ``candidates`` (best first) or withhold it.

    With ``t = max(threshold, 0)``: not assessed when the best similarity is below ``t``; when ``wanted`` is
    None the reference key is the best candidate's, otherwise ``wanted`` (e.g. the finding decided by the score);
    ``agreement`` = the fraction of the candidates whose key equals the reference, and below ``min_agreement`` the
    candidates disagree (not assessed). Otherwise the text is the best candidate with the reference key."""
    threshold = max(float(threshold), 0.0)
    if not candidates:
        return AssessedSection(name, None, float("nan"), threshold, 0.0, "no candidate text in the index")
    best = candidates[0].similarity
    reference = candidates[0].key if wanted is None else wanted
    agreeing = [c for c in candidates if c.key == reference]
    agreement = len(agreeing) / len(candidates)
    section = AssessedSection(name, None, best, threshold, agreement, evidence=list(candidates))
    if not best >= threshold:
        section.reason = f"evidence similarity {best:.3f} below the calibrated {threshold:.3f}"
    elif agreement < min_agreement or not agreeing or agreeing[0].similarity < threshold:
        section.reason = (f"the top {len(candidates)} retrieved sentences disagree"
                          f"{'' if wanted is None else ' with the finding score'}: {len(agreeing)} agree")
    else:
        section.text = agreeing[0].text
    return section


def top_candidates(texts: Sequence[str], sources: Sequence[str], similarities: Tensor, m: int,
                   keys: Optional[Sequence[Hashable]] = None) -> List[Candidate]:
    """The ``m`` most similar of the candidates (``similarities`` ``(C,)``), best first, as :class:`Candidate` s."""
    values, order = similarities.float().topk(min(m, len(texts)))
    return [Candidate(texts[i], sources[i], float(v), keys[i] if keys is not None else None)
            for v, i in zip(values.tolist(), order.tolist())]

