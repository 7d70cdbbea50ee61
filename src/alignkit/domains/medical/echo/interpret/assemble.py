"""Assembling one study's report from retrieval under the rules of
:mod:`alignkit.domains.medical.retrieval_reports` (:func:`interpret_embeddings` -> :class:`Interpretation`).

In order:

1. videos whose scores are out of range (:class:`~.calibration.InterpretCalibration`: distance to the training
   videos, view-classifier confidence) are excluded, each with its scores;
2. the study abstains (no report, the reasons and the scores printed) when no video is left, when the index has no
   calibration, or when a study score is out of range (distance to the training studies, evidence similarity);
3. EF and findings come from the top-``k`` training studies nearest the study embedding: EF as their mean with
   their standard deviation and range (the uncertainty from the neighbours), a finding as the fraction that have
   it, decided present (``>= 2/3``), absent (``<= 1/3``) or uncertain (:func:`~alignkit.domains.medical.
   retrieval_reports.decide_finding`);
4. each section (except the conclusions) from its top-``k`` candidate sentences: sentences about the EF or the
   LV systolic function are removed from every candidate and the EF statement is written from the estimate
   instead (in the left-ventricle section); a section that states a finding of :data:`FINDING_TERMS` is reported
   only with a candidate that agrees with the decided finding, and not at all when the finding is uncertain or
   when fewer than half its top candidates agree with it; any section is withheld below its calibrated
   similarity (never below 0) (:func:`~alignkit.domains.medical.retrieval_reports.assess_section`);
5. the conclusions are assembled from the reported sections only: the LV function with the EF (when the left
   ventricle is reported), the findings decided present in reported sections, and the list of sections not
   assessed.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from alignkit.domains.medical.echo.interpret.calibration import SUMMARY_SECTIONS
from alignkit.domains.medical.echo.interpret.card import MISSING_CARD
from alignkit.domains.medical.echo.interpret.embedding import StudySet, retrieve_labels
from alignkit.domains.medical.echo.interpret.index import ReportIndex
from alignkit.domains.medical.reports import clean_report, ef_grade
from alignkit.domains.medical.retrieval_reports import (AssessedSection, ScoreCheck, assess_section, check_scores,
                                                        decide_finding, drop_sentences, stated_finding,
                                                        top_candidates)


@dataclass(frozen=True)
class FindingTerms:
    """How a report section states a finding: ``present`` terms (affirmed: present, negated: absent), ``normal``
    terms (affirmed: absent) and the ``phrase`` the conclusions name it by."""

    section: str
    present: Tuple[str, ...]
    normal: Tuple[str, ...]
    phrase: str


_DILATED = ("dilated", "dilatation", "dilation", "enlarged", "enlargement", "increased")
FINDING_TERMS: Dict[str, FindingTerms] = {
    "dilated_lv": FindingTerms("left ventricle", _DILATED, ("normal",), "dilated left ventricle"),
    "dilated_la": FindingTerms("left atrium", _DILATED, ("normal",), "dilated left atrium"),
    "dilated_rv": FindingTerms("right ventricle", _DILATED, ("normal",), "dilated right ventricle"),
    "pericardial_effusion": FindingTerms("pericardium", ("pericardial effusion", "effusion"), (),
                                         "pericardial effusion"),
}
"""Findings whose statements are checked against their scores (the synthetic archive's findings); a finding of
another name is reported as a score only."""
EF_SENTENCE = re.compile(r"\b(?:ejection fraction|LVEF|EF)\b|(?:left ventricular|LV) (?:systolic )?function",
                         re.IGNORECASE)
"""Sentences about the EF or the LV systolic function: removed from retrieved text (the estimate speaks instead)."""
EF_SECTION = "left ventricle"


@dataclass
class EFEstimate:
    """The EF (%) as the mean of the retrieved studies' EFs ``values``; ``sd`` their standard deviation."""

    values: List[float]

    @property
    def mean(self) -> float:
        return sum(self.values) / len(self.values) if self.values else float("nan")

    @property
    def sd(self) -> float:
        return float(torch.tensor(self.values).std()) if len(self.values) > 1 else float("nan")

    def statement(self) -> str:
        """``"LVEF 54% (5 retrieved studies: 48-61%, SD 5.0). Mildly reduced left ventricular systolic function."``;
        the grade says so when the range spans several grades."""
        if not self.values:
            return "LVEF not assessed (no retrieved study has an EF)."
        value = round(self.mean)
        lo, hi = round(min(self.values)), round(max(self.values))
        grade = ef_grade(value)
        spread = {ef_grade(lo), ef_grade(hi)} - {grade}
        grade_text = grade.capitalize() + (f" (the retrieved studies range to {' and '.join(sorted(spread))})"
                                           if spread else "")
        return (f"LVEF {value}% ({len(self.values)} retrieved studies: {lo}-{hi}%, SD {self.sd:.1f}). "
                f"{grade_text} left ventricular systolic function.")


@dataclass
class Interpretation:
    """One study's report with its evidence and everything that was withheld.

    ``card``: the model card lines (the first says whether the model is synthetic-trained); ``videos``/``views``/
    ``view_confidence``: the accepted videos; ``video_checks``: per decoded video its scores; ``excluded``:
    ``(file, reason)`` of everything not interpreted; ``study_checks``: the study's scores; ``abstained`` with
    ``reasons``: no report is given; ``sections``: per section its :class:`AssessedSection` (the conclusions
    assembled); ``ef``: :class:`EFEstimate`; ``findings``: per finding its score and ``decisions``;
    ``evidence``: the top-``k`` ``(study id, similarity)``; ``attention``: ``(S, N)`` over the accepted videos;
    ``previews``: per decoded file an animated GIF (bytes) for the report page."""

    card: List[str]
    videos: List[str]
    views: List[str]
    view_confidence: List[float] = field(default_factory=list)
    video_checks: Dict[str, List[ScoreCheck]] = field(default_factory=dict)
    excluded: List[Tuple[str, str]] = field(default_factory=list)
    study_checks: List[ScoreCheck] = field(default_factory=list)
    abstained: bool = False
    reasons: List[str] = field(default_factory=list)
    sections: Dict[str, AssessedSection] = field(default_factory=dict)
    ef: EFEstimate = field(default_factory=lambda: EFEstimate([]))
    findings: Dict[str, float] = field(default_factory=dict)
    decisions: Dict[str, Optional[bool]] = field(default_factory=dict)
    evidence: List[Tuple[str, float]] = field(default_factory=list)
    attention: Optional[Tensor] = None
    attention_sections: List[str] = field(default_factory=list)
    previews: Dict[str, bytes] = field(default_factory=dict)

    @property
    def conclusions(self) -> str:
        section = self.sections.get("conclusions")
        return section.text or "" if section is not None else ""

    def format(self) -> str:
        """The report as text: the model card first, then the videos, exclusions and scores, then either the
        abstention or the sections, EF, findings and evidence."""
        lines = list(self.card)
        lines += ["", "VIDEOS: " + (", ".join(f"{n} ({v}, confidence {c:.2f})" for n, v, c in
                                             zip(self.videos, self.views, self.view_confidence)) or "none")]
        lines += [f"EXCLUDED: {name}: {reason}" for name, reason in self.excluded]
        lines += ["STUDY SCORES: " + ("; ".join(c.describe() for c in self.study_checks) or "none")]
        if self.abstained:
            return "\n".join(lines + ["", "NO REPORT: " + " ".join(self.reasons)])
        lines.append("")
        for name, section in self.sections.items():
            lines.append(f"{name.upper()}: {section.describe() if name != 'conclusions' else section.text}")
        lines += ["", f"ESTIMATED EF: {self.ef.mean:.1f}% ({self.ef.statement()})"]
        lines += [f"{name}: {p:.2f} ({_decision(self.decisions.get(name))})" for name, p in self.findings.items()]
        lines += ["", "EVIDENCE (top-k retrieved training studies): "
                  + ", ".join(f"{sid} ({sim:.3f})" for sid, sim in self.evidence)]
        return "\n".join(lines)


def _decision(value: Optional[bool]) -> str:
    return "present" if value is True else "absent" if value is False else "uncertain"


def _body(text: str) -> str:
    """A candidate ``"<section>: <text>"`` -> its text, without EF / LV-function sentences."""
    body = text.partition(": ")[2] if ": " in text else text
    return drop_sentences(clean_report(body), EF_SENTENCE)


def assess_sections(index: ReportIndex, queries: Dict[str, Tensor], decisions: Dict[str, Optional[bool]],
                    findings: Dict[str, float], thresholds: Dict[str, float], m: int) -> Dict[str, AssessedSection]:
    """Every retrieved section (see the module docstring, step 4) from its query ``(D,)``."""
    linked = {terms.section: (name, terms) for name, terms in FINDING_TERMS.items() if name in decisions}
    out: Dict[str, AssessedSection] = {}
    for name, (texts, studies, emb) in index.sections.items():
        if name in SUMMARY_SECTIONS:
            continue
        bodies = [_body(t) for t in texts]
        sources = [index.study_ids[s] for s in studies]
        finding = linked.get(name)
        keys = [stated_finding(b, finding[1].present, finding[1].normal) for b in bodies] if finding else bodies
        candidates = top_candidates(bodies, sources, emb @ queries[name], m, keys)
        threshold = thresholds.get(name, 0.0)
        if finding and decisions[finding[0]] is None:
            section = assess_section(name, candidates, threshold)
            section.text = None
            section.reason = section.reason or (f"the finding score of {finding[0]} ({findings[finding[0]]:.2f}) is "
                                                "uncertain")
        else:
            section = assess_section(name, candidates, threshold, wanted=decisions[finding[0]] if finding else None)
        out[name] = section
    return out


def assemble_conclusions(sections: Dict[str, AssessedSection], decisions: Dict[str, Optional[bool]],
                         ef: EFEstimate) -> str:
    """The conclusions from the reported sections only (see the module docstring, step 5)."""
    parts = []
    lv = sections.get(EF_SECTION)
    if lv is not None and lv.reported and ef.values:
        parts.append(f"{ef_grade(round(ef.mean)).capitalize()} left ventricular systolic function, "
                     f"LVEF {round(ef.mean)}%.")
    present = [terms.phrase for name, terms in FINDING_TERMS.items()
               if decisions.get(name) is True and terms.section in sections and sections[terms.section].reported]
    if present:
        parts.append(", ".join(present).capitalize() + ".")
    elif any(s.reported for s in sections.values()):
        parts.append("No abnormality in the reported sections.")
    withheld = [name for name, s in sections.items() if not s.reported]
    if withheld:
        parts.append(f"Not assessed: {', '.join(withheld)}.")
    return " ".join(parts)


@torch.no_grad()
def interpret_embeddings(video: Tensor, view_logits: Tensor, index: ReportIndex, k: int = 5,
                         names: Optional[Sequence[str]] = None, excluded: Sequence[Tuple[str, str]] = (),
                         features: Optional[Tensor] = None) -> Interpretation:
    """:class:`Interpretation` of one study from its decoded videos' embeddings ``(N, D)``, view logits ``(N, V)``
    and encoder ``features`` ``(N, E)`` (needed by the calibration's distances) under the index's
    calibration (see the module docstring); ``excluded``: files already excluded by the screening, listed first."""
    names = list(names) if names is not None else [f"video {n}" for n in range(len(video))]
    card = index.card.lines() if index.card is not None else list(MISSING_CARD)
    result = Interpretation(card=card, videos=[], views=[], excluded=list(excluded))
    calibration = index.calibration
    if calibration is None:
        result.abstained = True
        result.reasons.append("The report index has no out-of-distribution calibration, so nothing tells whether "
                              "this study resembles the training archive (calibrate it with fit_calibration; the "
                              "demo does).")
        return result
    if features is None:
        raise ValueError("interpret_embeddings needs the videos' encoder features (EchoClipModule.video_features) "
                         "to measure their distance to the training videos")
    views = view_logits.argmax(1)
    scores = calibration.video_scores(features, view_logits)
    keep = []
    for n, name in enumerate(names):
        checks = check_scores({s: float(v[n]) for s, v in scores.items()}, calibration.video)
        result.video_checks[name] = checks
        failed = [c.describe() for c in checks if not c.passed]
        if failed:
            result.excluded.append((name, "not like the training echo videos: " + "; ".join(failed)))
        else:
            keep.append(n)
            result.videos.append(name)
            result.views.append(index.views[int(views[n])])
            result.view_confidence.append(float(scores["view_confidence"][n]))
    if not keep:
        result.abstained = True
        result.reasons.append("No echocardiography video of this study passed the screening, so no report is "
                              "given.")
        return result
    video, views = video[keep], views[keep]
    study, queries, weights = index.pool(video, views)
    result.study_checks = check_scores(calibration.study_scores(features[keep], study, index.report),
                                       calibration.study)
    failed = [c.describe() for c in result.study_checks if not c.passed]
    if failed:
        result.abstained = True
        result.reasons.append("The study is out of the training distribution (" + "; ".join(failed) + "), so no "
                              "report is given.")
        return result
    values = torch.cat([index.ef[:, None], index.labels], dim=1)
    retrieved = retrieve_labels(study[None], index.report, values, k)
    ef_values = [float(v) for v in index.ef[retrieved.indices[0]] if math.isfinite(float(v))]
    result.ef = EFEstimate(ef_values)
    result.findings = dict(zip(index.finding_names, retrieved.pred[0, 1:].tolist()))
    result.decisions = {name: decide_finding(p) for name, p in result.findings.items()}
    result.evidence = [(index.study_ids[int(i)], float(s))
                       for i, s in zip(retrieved.indices[0], retrieved.similarity[0])]
    sections = assess_sections(index, queries, result.decisions, result.findings, calibration.sections, k)
    lv = sections.get(EF_SECTION)
    if lv is not None and lv.reported:
        lv.text = (lv.text + " " + result.ef.statement()).strip()
    conclusions = assemble_conclusions(sections, result.decisions, result.ef)
    sections["conclusions"] = AssessedSection("conclusions", conclusions, float("nan"), float("nan"), float("nan"),
                                              "assembled from the reported sections")
    result.sections = sections
    if weights is not None and index.attention is not None:
        result.attention, result.attention_sections = weights, list(index.attention.sections)
    return result


@torch.no_grad()
def abstention_summary(index: ReportIndex, studies: StudySet, k: int = 5) -> Dict[str, float]:
    """Each study of ``studies`` interpreted from its embeddings: ``abstained`` (fraction of studies without a
    report), ``videos_excluded`` (fraction of videos excluded), ``sections_not_assessed`` (fraction of the retrieved
    sections withheld, over the studies with a report)."""
    abstained = excluded = withheld = total_sections = 0
    for s in range(len(studies.study_ids)):
        members = studies.study == s
        result = interpret_embeddings(studies.video[members], studies.view_logits[members], index, k,
                                      features=studies.features[members] if studies.features is not None else None)
        abstained += result.abstained
        excluded += int(members.sum()) - len(result.videos)
        retrieved = [v for n, v in result.sections.items() if n not in SUMMARY_SECTIONS]
        withheld += sum(not v.reported for v in retrieved)
        total_sections += len(retrieved)
    return {"abstained": abstained / max(1, len(studies.study_ids)),
            "videos_excluded": excluded / max(1, len(studies.video)),
            "sections_not_assessed": withheld / total_sections if total_sections else float("nan")}
