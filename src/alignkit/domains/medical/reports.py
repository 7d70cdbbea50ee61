"""Free-text radiology reports: sections, cleaning, sentences, the training text and negation (and the grading of
an echo report's ejection fraction, shared by the synthetic echo reports and the echo interpreter).

Shared by the chest X-ray and echocardiography readers. Every rule is stated where it is applied:

- :func:`extract_sections` finds headers (``FINDINGS:``, ``IMPRESSION:``, ... or a configured set such as
  :data:`ECHO_HEADERS`) and returns the text under each;
- :func:`clean_report` normalises whitespace, line breaks, hyphenation and de-identification placeholders;
- :func:`split_sentences` cuts text into sentences without breaking ``approx.``, ``3.5 cm`` or numbered lists;
- :func:`report_text` picks the text a model trains on by a stated rule, and raises
  :class:`EmptyReportError` (or returns None) when a report has none;
- :func:`is_negated`, :func:`negated_terms`, :func:`affirmed_terms`: a NegEx-style negation detector.
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from alignkit.core.registry import ConfigError

HeaderSet = Mapping[str, Sequence[str]]
"""Canonical section name -> the header spellings (aliases) that open it, e.g. ``{"impression": ("impression",
"conclusion")}``. Aliases are matched case-insensitively with any run of spaces between their words."""

CXR_HEADERS: Dict[str, Tuple[str, ...]] = {
    "findings": ("findings", "finding"),
    "impression": ("impression", "impressions", "conclusion", "conclusions"),
    "comparison": ("comparison", "comparisons"),
    "indication": ("indication", "indications", "reason for exam", "reason for examination"),
    "history": ("history", "clinical history", "clinical information"),
    "technique": ("technique",),
    "examination": ("examination", "exam"),
    "wet read": ("wet read",),
    "recommendation": ("recommendation", "recommendations", "recommendation(s)"),
    "notification": ("notification",),
    "addendum": ("addendum",),
}
"""Headers of chest radiology reports (MIMIC-CXR, Open-i, CheXpert Plus style)."""

ECHO_HEADERS: Dict[str, Tuple[str, ...]] = {
    "left atrium": ("left atrium", "left atrium/interatrial septum"),
    "right atrium": ("right atrium", "right atrium/interatrial septum"),
    "left ventricle": ("left ventricle",),
    "right ventricle": ("right ventricle",),
    "aorta": ("aorta",),
    "aortic valve": ("aortic valve",),
    "mitral valve": ("mitral valve",),
    "tricuspid valve": ("tricuspid valve",),
    "pulmonic valve": ("pulmonic valve", "pulmonic valve/pulmonary artery"),
    "pericardium": ("pericardium",),
    "findings": ("findings",),
    "conclusions": ("conclusions", "conclusion", "impression"),
    "indication": ("indication",),
    "general comments": ("general comments",),
}
"""Headers of transthoracic echocardiography reports (MIMIC-III/IV echo-note style)."""

PREAMBLE = "preamble"
"""Key of the text before the first header (the whole report when it has no header at all)."""

_BANNER = re.compile(r"^[ \t]*(?:final|preliminary)[ \t]+report[ \t]*$", re.IGNORECASE | re.MULTILINE)


class EmptyReportError(ValueError):
    """A report has no text under the sections the training rule asks for.

    ``source`` names the report (file, or file and row); ``sections`` are the sections that were looked for.
    """

    def __init__(self, message: str, source: Optional[str] = None, sections: Sequence[str] = ()):
        super().__init__(message)
        self.source = source
        self.sections = tuple(sections)


# ----------------------------------------------------------------------------------------- sections


def _alias_pattern(alias: str) -> str:
    words = [re.escape(w) for w in alias.strip().split()]
    return r"[ \t]+".join(words)


@lru_cache(maxsize=16)
def _header_regex(items: Tuple[Tuple[str, Tuple[str, ...]], ...]) -> Tuple["re.Pattern[str]", Dict[str, str]]:
    canonical: Dict[str, str] = {}
    for name, aliases in items:
        for alias in (name, *aliases):
            canonical[" ".join(alias.lower().split())] = name
    alternatives = sorted(canonical, key=len, reverse=True)  # longest first: "clinical history" before "history"
    pattern = (r"(?<![A-Za-z0-9])(?P<name>" + "|".join(_alias_pattern(a) for a in alternatives)
               + r")(?![A-Za-z0-9])[ \t]*(?P<colon>:)?")
    return re.compile(pattern, re.IGNORECASE), canonical


def _frozen(headers: HeaderSet) -> Tuple[Tuple[str, Tuple[str, ...]], ...]:
    return tuple((str(k), tuple(str(a) for a in v)) for k, v in headers.items())


def _header_spans(text: str, headers: HeaderSet) -> List[Tuple[int, int, str]]:
    """``(start, end, canonical name)`` of every accepted header in ``text`` (see :func:`extract_sections`)."""
    regex, canonical = _header_regex(_frozen(headers))
    spans = []
    for m in regex.finditer(text):
        line_start = text.rfind("\n", 0, m.start()) + 1
        before = text[line_start:m.start()]
        line_end = text.find("\n", m.end())
        after = text[m.end():line_end if line_end >= 0 else len(text)]
        at_line_start = not before.strip()
        if m.group("colon"):
            name = m.group("name")
            accepted = at_line_start or before.rstrip().endswith((".", ";", "!", "?")) or name.isupper()
        else:
            accepted = at_line_start and not after.strip()
        if accepted:
            spans.append((m.start(), m.end(), canonical[" ".join(m.group("name").lower().split())]))
    return spans


def extract_sections(text: str, headers: HeaderSet = CXR_HEADERS) -> Dict[str, str]:
    """Split a report into ``{section name: text}``, in the order the sections appear.

    Rules:

    - a *header* is one of the aliases in ``headers`` (case-insensitive; any spaces between its words and
      before the colon) followed by ``:``, accepted when it starts a line, follows a sentence end
      (``.``, ``;``, ``!``, ``?``), or is written in capitals anywhere (``... normal. IMPRESSION: ...``);
      an alias alone on its line opens a section without a colon too (``FINDINGS\\n...``);
    - a section's text runs from its header to the next header, stripped; a header that appears twice
      has its texts joined by a newline; a header with nothing under it gives ``""``;
    - MIMIC-CXR banner lines ``FINAL REPORT`` / ``PRELIMINARY REPORT`` are dropped;
    - text before the first header goes under :data:`PREAMBLE` (``"preamble"``) when not blank, so a
      report without any header comes back as ``{"preamble": <whole text>}``.

    Section texts are not cleaned (see :func:`clean_report`). Keys are the canonical names of ``headers``
    (``"findings"``, ``"impression"``, ...).
    """
    text = _BANNER.sub("", text)
    spans = _header_spans(text, headers)
    sections: Dict[str, str] = {}
    preamble = text[:spans[0][0] if spans else len(text)].strip()
    if preamble:
        sections[PREAMBLE] = preamble
    for k, (_, end, name) in enumerate(spans):
        body = text[end:spans[k + 1][0] if k + 1 < len(spans) else len(text)].strip()
        sections[name] = f"{sections[name]}\n{body}".strip() if name in sections else body
    return sections


# ----------------------------------------------------------------------------------------- cleaning

_PLACEHOLDER = re.compile(r"_{2,}|\[\*\*.*?\*\*\]|(?<![A-Za-z])X{4,}(?![A-Za-z])", re.DOTALL)
_HYPHEN_BREAK = re.compile(r"(?<=[A-Za-z])-[ \t]*\r?\n[ \t]*(?=[A-Za-z])")


def clean_report(text: str, lowercase: bool = False, placeholder: str = "", dehyphenate: bool = False) -> str:
    """Normalise report text for a tokenizer.

    In order:

    1. de-identification placeholders become ``placeholder`` (default: removed): runs of 2+ underscores
       (MIMIC-CXR ``___``), ``[** ... **]`` (MIMIC-III notes) and ``XXXX`` (Open-i);
    2. a word broken across lines after a hyphen is joined: ``left-\\nsided`` -> ``left-sided`` (line
       wrapping breaks after the hyphens of compound words); with ``dehyphenate=True`` the hyphen goes
       too, ``cardio-\\nmegaly`` -> ``cardiomegaly`` (typeset, syllable-hyphenated text);
    3. every run of whitespace (line breaks, tabs) becomes one space; spaces before ``.,;:!?)`` and after
       ``(`` are removed; a run of periods (``..``) becomes one; the result is stripped;
    4. ``lowercase=True`` lower-cases everything.
    """
    text = _PLACEHOLDER.sub(placeholder, text)
    text = _HYPHEN_BREAK.sub("" if dehyphenate else "-", text)
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"\s+([.,;:!?)])", r"\1", text)
    text = re.sub(r"\(\s+", "(", text)
    text = re.sub(r"\.{2,}", ".", text).strip()
    return text.lower() if lowercase else text


# ---------------------------------------------------------------------------------------- sentences

ABBREVIATIONS = frozenset({
    "approx", "appr", "e.g", "i.e", "eg", "ie", "vs", "cf", "fig", "figs", "dr", "mr", "mrs", "ms", "st", "resp",
    "incl", "est", "pt", "pts", "hx", "dx", "sx", "tx", "ca", "nos", "ref",
})
"""Words that take a period without ending a sentence (compared lower-cased, without the final period)."""

_BULLET_LINE = re.compile(r"^[ \t]*(?:[-*\u2022]|\d{1,2}[.)])[ \t]+", re.MULTILINE)
_NUMBER_MARK = re.compile(r"(?:(?<=\s)|^)(\d{1,2})[.)](?=\s+\S)")
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+")
_LEADING_MARK = re.compile(r"^(?:[-*\u2022]|(\d{1,2})[.)])\s+")


def _list_starts(block: str, last: Optional[int]) -> List[Tuple[int, int]]:
    """``(start, end)`` of the numbered-list markers of a block: ``1.`` at the block start or after ``:``/a
    sentence end, then each ``n.`` following an accepted ``n-1.`` (so ``measures 2. Small`` is no marker);
    ``last`` is the number of the marker that opened the block, if any."""
    marks: List[Tuple[int, int]] = []
    for m in _NUMBER_MARK.finditer(block):
        n = int(m.group(1))
        before = block[:m.start()].rstrip()
        opens = n == 1 and (not before or before.endswith((":", ".", ";", "!", "?")))
        if opens or (last is not None and n == last + 1):
            marks.append((m.start(), m.end()))
            last = n
    return marks


def _split_block(block: str) -> List[str]:
    block = re.sub(r"\s+", " ", block).strip()
    opening = _LEADING_MARK.match(block)  # the block starts with a list marker (see split_sentences)
    number = int(opening.group(1)) if opening and opening.group(1) else None
    block = block[opening.end():] if opening else block
    cuts = _list_starts(block, number)
    pieces, pos = [], 0
    for start, end in cuts:
        pieces.append(block[pos:start])
        pos = end
    pieces.append(block[pos:])
    sentences: List[str] = []
    for piece in pieces:
        start = 0
        for m in _SENTENCE_END.finditer(piece):
            left = piece[start:m.start()]
            word = left.rsplit(" ", 1)[-1].rstrip(".!?").lower()
            following = piece[m.end():m.end() + 1]
            if left.endswith(".") and (word in ABBREVIATIONS or following.islower()):
                continue  # "approx. 3 cm", "e.g. the", "etc. and": the period does not end a sentence
            sentences.append(piece[start:m.end()])
            start = m.end()
        sentences.append(piece[start:])
    return [s.strip() for s in sentences if s.strip()]


def split_sentences(text: str) -> List[str]:
    """Cut report text into sentences.

    Rules:

    - blank lines and lines opening with a list marker (``-``, ``*``, ``\u2022``, ``1.``, ``2)``) start a new
      sentence; other line breaks are spaces (wrapped lines);
    - numbered lists written on one line (``IMPRESSION: 1. Effusion 2. No pneumothorax``) are cut at each
      marker: ``1.`` after the start, a colon or a sentence end, then ``2.``, ``3.``, ... in sequence;
    - ``.``, ``!``, ``?`` followed by whitespace end a sentence, except a period after a word of
      :data:`ABBREVIATIONS` (``approx.``, ``e.g.``, ``vs.``) or before a lower-case word; decimals
      (``3.5 cm``) have no whitespace after the point and never split;
    - list markers are removed, whitespace is collapsed, empty sentences are dropped; the terminal
      punctuation stays with its sentence.
    """
    starts = sorted({0, *(m.start() for m in _BULLET_LINE.finditer(text)),
                     *(m.end() for m in re.finditer(r"\n[ \t]*\n", text))})
    blocks = [text[a:b] for a, b in zip(starts, [*starts[1:], len(text)])]
    return [s for block in blocks for s in _split_block(block)]


# ------------------------------------------------------------------------------------ training text

def ef_grade(ef: float) -> str:
    """ASE grading of an EF (%): >= 55 normal, 45-54 mildly, 30-44 moderately, < 30 severely reduced."""
    if ef >= 55:
        return "normal"
    if ef >= 45:
        return "mildly reduced"
    return "moderately reduced" if ef >= 30 else "severely reduced"


REPORT_RULES = ("any", "first", "all")


def check_report_rule(sections: Sequence[str], rule: str, headers: HeaderSet = CXR_HEADERS) -> None:
    """Raise :class:`ConfigError` unless ``rule`` is one of :data:`REPORT_RULES` and ``sections`` are non-empty
    canonical names of ``headers``."""
    if rule not in REPORT_RULES:
        raise ConfigError(f"unknown report rule '{rule}'; use one of {', '.join(REPORT_RULES)}")
    unknown = [s for s in sections if s not in headers]
    if unknown or not sections:
        raise ConfigError(f"report sections {list(sections)}: {unknown or 'none given'} not among the header "
                          f"set's sections {', '.join(headers)}")


def report_text(text: str, sections: Sequence[str] = ("findings", "impression"), rule: str = "any",
                source: Optional[str] = None, on_empty: str = "raise", use_unsectioned: bool = True,
                headers: HeaderSet = CXR_HEADERS, lowercase: bool = False) -> Optional[str]:
    """The text of a report a model trains on, chosen by a stated rule.

    Each section of ``sections`` is taken from :func:`extract_sections` (``headers``) and cleaned with
    :func:`clean_report` (``lowercase``); a missing section and one that is empty after cleaning (e.g. only
    ``___``) are both *empty*. Then, by ``rule``:

    - ``"any"`` (default): the non-empty ones of ``sections``, in the order of ``sections``, joined by a
      space. With the default ``("findings", "impression")``: findings + impression when both are
      present, else impression, else findings;
    - ``"first"``: the first non-empty section of ``sections`` (a priority list, e.g.
      ``("impression", "findings")``: impression, else findings);
    - ``"all"``: every section of ``sections``, joined; empty if any one is empty.

    If that gives nothing: a report with no recognised header at all (plain text, e.g. a CSV cell) is used
    whole (cleaned) when ``use_unsectioned`` is True; otherwise the report is empty and, by ``on_empty``,
    ``"raise"`` raises :class:`EmptyReportError` naming ``source`` and the sections looked for, ``"none"``
    returns None so the caller skips the study and lists it.
    """
    check_report_rule(sections, rule, headers)
    if on_empty not in ("raise", "none"):
        raise ConfigError(f"on_empty must be 'raise' or 'none', got '{on_empty}'")
    found = extract_sections(text, headers)
    parts = [clean_report(found.get(name, ""), lowercase=lowercase) for name in sections]
    present = [p for p in parts if p]
    if rule == "first":
        present = present[:1]
    elif rule == "all" and len(present) < len(parts):
        present = []
    if present:
        return " ".join(present)
    if use_unsectioned and set(found) <= {PREAMBLE}:
        whole = clean_report(found.get(PREAMBLE, ""), lowercase=lowercase)
        if whole:
            return whole
    if on_empty == "none":
        return None
    missing = [name for name, part in zip(sections, parts) if not part]
    raise EmptyReportError(f"{source or 'report'}: no text under {', '.join(s.upper() for s in missing)} "
                           f"(rule '{rule}' over sections {list(sections)}; sections found: "
                           f"{', '.join(found) or 'none'}); fix the report, choose other sections, or skip it",
                           source=source, sections=sections)


# ----------------------------------------------------------------------------------------- negation

PRE_NEGATIONS = ("no", "not", "without", "negative for", "free of", "no evidence of", "no signs of",
                 "no sign of", "absence of", "absent", "rules out", "ruled out", "resolved", "resolution of",
                 "no longer", "nor", "clear of")
"""Triggers that negate the terms after them (up to a scope end)."""

POST_NEGATIONS = ("is not seen", "are not seen", "not seen", "is absent", "are absent", "absent", "has resolved",
                  "have resolved", "resolved", "is not present", "are not present", "not present",
                  "not identified", "is not identified", "are not identified", "not appreciated",
                  "is no longer seen", "no longer seen", "is ruled out", "was ruled out")
"""Triggers that negate the terms before them in the same clause."""

PSEUDO_NEGATIONS = ("no change", "no interval change", "no significant change", "no significant interval change",
                    "no increase", "no decrease", "not only", "without change", "without interval change",
                    "not excluded", "not be excluded", "cannot be excluded", "can not be excluded",
                    "not ruled out", "cannot be ruled out", "not be ruled out", "not significantly changed",
                    "not changed")
"""Phrases that contain a trigger but do not negate (change statements, uncertainty); they are ignored."""

SCOPE_ENDS = ("but", "however", "although", "though", "except", "aside from", "apart from", "whereas", "which",
              "yet")
"""Words that end a negation's scope, like the punctuation ``.``, ``;``, ``:``, ``!``, ``?``."""


def _phrase_regex(phrases: Sequence[str]) -> "re.Pattern[str]":
    alternatives = sorted({" ".join(p.lower().split()) for p in phrases}, key=len, reverse=True)
    body = "|".join(r"\s+".join(re.escape(w) for w in a.split()) for a in alternatives)
    return re.compile(rf"(?<![\w-])(?:{body})(?![\w-])", re.IGNORECASE)


_PRE = _phrase_regex(PRE_NEGATIONS)
_POST = _phrase_regex(POST_NEGATIONS)
_PSEUDO = _phrase_regex(PSEUDO_NEGATIONS)
_SCOPE_WORDS = _phrase_regex(SCOPE_ENDS)
_SCOPE_PUNCT = re.compile(r"[;:!?]|\.(?!\d)")


@lru_cache(maxsize=256)
def _term_regex(term: str) -> "re.Pattern[str]":
    words = term.lower().split()
    if not words:
        raise ValueError("negation: the term is empty")
    body = r"\s+".join(re.escape(w) for w in words)
    return re.compile(rf"(?<![\w-]){body}(?:s|es)?(?![\w-])", re.IGNORECASE)


def _overlaps(span: Tuple[int, int], others: Sequence[Tuple[int, int]]) -> bool:
    return any(span[0] < b and a < span[1] for a, b in others)


def _mention_negations(sentence: str, term: str) -> List[bool]:
    """One flag per mention of ``term`` in ``sentence``: True if that mention is negated (rules in :func:`is_negated`)."""
    scope_ends = sorted([m.start() for m in _SCOPE_WORDS.finditer(sentence)]
                        + [m.start() for m in _SCOPE_PUNCT.finditer(sentence)])
    commas = [m.start() for m in re.finditer(",", sentence)]

    def open_between(a: int, b: int, stops: Sequence[int]) -> bool:
        return not any(a <= s < b for s in stops)

    def opens_clause(start: int) -> bool:
        clause_start = max([0, *(s + 1 for s in scope_ends + commas if s < start)])
        return not re.search(r"\w", sentence[clause_start:start])

    pseudo = [m.span() for m in _PSEUDO.finditer(sentence)]
    post = [m.span() for m in _POST.finditer(sentence) if not _overlaps(m.span(), pseudo)]
    pre = [m.span() for m in _PRE.finditer(sentence) if not _overlaps(m.span(), pseudo)]
    both = [span for span in pre if span in post and opens_clause(span[0])]  # "Resolved effusion": forward
    post = [span for span in post if span not in both]
    pre = [span for span in pre if span in both or not _overlaps(span, post)]

    flags = []
    for m in _term_regex(term).finditer(sentence):
        s, e = m.span()
        negated = any(end <= s and open_between(end, s, scope_ends) for start, end in pre
                      if not _overlaps((start, end), [(s, e)]))
        negated = negated or any(start >= e and open_between(e, start, scope_ends + commas) for start, _ in post)
        flags.append(negated)
    return flags


def is_negated(sentence: str, term: str) -> bool:
    """True if ``term`` is mentioned in ``sentence`` and every mention is negated (NegEx-style).

    Rules (case-insensitive, whole words; ``term`` also matches its plural ``-s``/``-es``):

    - a mention is negated by a :data:`PRE_NEGATIONS` trigger before it (``no``, ``without``, ``negative
      for``, ``free of``, ``no evidence of``, ``resolved``, ...) when no scope end lies between them;
      scope ends are ``.``, ``;``, ``:``, ``!``, ``?`` and :data:`SCOPE_ENDS` (``but``, ``however``, ...);
      commas do *not* end it, so lists stay negated: ``no effusion, consolidation or pneumothorax``;
    - or by a :data:`POST_NEGATIONS` trigger after it (``is not seen``, ``absent``, ``has resolved``)
      within the same clause: no scope end *and no comma* between them;
    - :data:`PSEUDO_NEGATIONS` (``no change``, ``cannot be excluded``, ...) negate nothing, and a ``not``
      inside a post-trigger (``is not seen``) does not also act as a pre-trigger;
    - a word that is both (``resolved``, ``absent``) negates forward when it opens its clause
      (``Resolved left effusion``), backward otherwise (``the effusion resolved``).

    A term that is not mentioned is not negated (False).
    """
    flags = _mention_negations(sentence, term)
    return bool(flags) and all(flags)


def negated_terms(text: str, terms: Sequence[str]) -> List[str]:
    """The ``terms`` mentioned in ``text`` whose every mention, in every sentence, is negated.

    ``text`` is cut with :func:`split_sentences`; each sentence is judged by the rules of :func:`is_negated`.
    Order follows ``terms``.
    """
    sentences = split_sentences(text)
    result = []
    for term in terms:
        flags = [f for s in sentences for f in _mention_negations(s, term)]
        if flags and all(flags):
            result.append(term)
    return result


def affirmed_terms(text: str, terms: Sequence[str]) -> List[str]:
    """The ``terms`` with at least one mention in ``text`` that is not negated (rules of :func:`is_negated`)."""
    sentences = split_sentences(text)
    return [term for term in terms if any(not f for s in sentences for f in _mention_negations(s, term))]
