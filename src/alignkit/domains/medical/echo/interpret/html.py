"""The report page of one interpreted study (:func:`write_report_html`): a single self-contained HTML file (no
scripts, no external resources; cines as base64 animated GIFs) with, in order, the model card, the study's cines
with their views and scores, the excluded files and why, the study's scores and the abstention, the attention of
each section over the videos, each section with its evidence sentences and similarities, the EF and the findings.
Headings carry ids (``model-card``, ``videos``, ``excluded``, ``scores``, ``attention``, ``report``,
``measurements``) so that a reader or a test can find them."""
from __future__ import annotations

import base64
from html import escape
from pathlib import Path
from typing import List, Sequence

from alignkit.domains.medical.echo.interpret.assemble import Interpretation
from alignkit.domains.medical.retrieval_reports import ScoreCheck

STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;max-width:1100px;color:#111;background:#fff}
.banner{padding:10px 14px;border-radius:6px;font-weight:600;background:#fde68a;border:1px solid #d97706}
.abstain{padding:10px 14px;border-radius:6px;background:#fee2e2;border:1px solid #dc2626;font-weight:600}
figure{display:inline-block;margin:6px;padding:6px;border:1px solid #ccc;border-radius:6px;vertical-align:top}
figure img{display:block;image-rendering:pixelated;min-width:128px}
.out{border-color:#dc2626}.na{color:#92400e}.ok{color:#065f46}
table{border-collapse:collapse;margin:6px 0}td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px}
"""


def _checks(checks: Sequence[ScoreCheck]) -> str:
    return "<br>".join(escape(c.describe()) for c in checks) or "-"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Cells are HTML already (escape text before)."""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _videos(result: Interpretation) -> List[str]:
    excluded = dict(result.excluded)
    out = []
    for name, gif in result.previews.items():
        if name in result.videos:
            i = result.videos.index(name)
            label = f"{escape(result.views[i])} (confidence {result.view_confidence[i]:.2f})"
        else:
            label = "excluded: " + escape(excluded.get(name, ""))
        source = "data:image/gif;base64," + base64.b64encode(gif).decode("ascii")
        out.append(f'<figure class="{"ok" if name in result.videos else "out"}"><img alt="{escape(name)}" '
                   f'src="{source}"><figcaption><b>{escape(name)}</b><br>view: {label}<br>'
                   f'{_checks(result.video_checks.get(name, []))}</figcaption></figure>')
    return out or ["<p>No cine could be shown.</p>"]


def _attention(result: Interpretation) -> str:
    if result.attention is None:
        return "<p>No attention (the index pools the videos by their mean).</p>"
    rows = []
    for s, section in enumerate(result.attention_sections):
        cells = []
        for n in range(len(result.videos)):
            w = float(result.attention[s, n])
            cells.append(f'<span style="display:block;background:rgba(37,99,235,{w:.2f})">{w:.2f}</span>')
        rows.append([escape(section), *cells])
    return _table(["section", *(f"{n} ({v})" for n, v in zip(result.videos, result.views))], rows)


def _sections(result: Interpretation) -> List[str]:
    out = []
    for name, section in result.sections.items():
        if name == "conclusions":
            out.append(f'<h3>{escape(name.upper())}</h3><p class="ok">{escape(section.text or "")}</p>'
                       f"<p><i>{escape(section.reason)}</i></p>")
            continue
        status = (f'<p class="ok">{escape(section.text or "")}</p>' if section.reported
                  else f'<p class="na">Not assessed: {escape(section.reason)}</p>')
        score = (f"best similarity {section.similarity:.3f} (threshold {section.threshold:.3f}), agreement of the top "
                 f"candidates {section.agreement:.2f}")
        evidence = _table(["training study", "sentence", "similarity", "states"],
                          [[escape(c.source), escape(c.text), f"{c.similarity:.3f}", escape(str(c.key))
                            if not isinstance(c.key, str) else "-"] for c in section.evidence])
        out.append(f"<h3>{escape(name.upper())}</h3>{status}<p>{escape(score)}</p>{evidence}")
    return out


def write_report_html(result: Interpretation, path: str | Path, title: str = "Echo study interpretation") -> Path:
    """Write ``result`` as one self-contained HTML page at ``path`` (see the module docstring); returns it."""
    card = result.card
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{escape(title)}</title>"
             f"<style>{STYLE}</style></head><body><h1>{escape(title)}</h1>",
             f'<p class="banner">{escape(card[0] if card else "")}</p>',
             '<h2 id="model-card">Model card</h2><pre>' + escape("\n".join(card)) + "</pre>",
             '<h2 id="videos">Videos</h2>', *_videos(result),
             '<h2 id="excluded">Excluded files</h2>',
             _table(["file", "reason"], [[escape(n), escape(r)] for n, r in result.excluded])
             if result.excluded else "<p>None.</p>",
             '<h2 id="scores">Out-of-distribution scores</h2>', f"<p>Study: {_checks(result.study_checks)}</p>"]
    if result.abstained:
        parts.append('<h2 id="report">Report</h2><p class="abstain">No report is given. '
                     + escape(" ".join(result.reasons)) + "</p>")
    else:
        parts += ['<h2 id="attention">Section attention over the videos</h2>', _attention(result),
                  '<h2 id="report">Report</h2>', *_sections(result),
                  '<h2 id="measurements">Measurements</h2>',
                  f"<p>Estimated EF {result.ef.mean:.1f}%: {escape(result.ef.statement())}</p>",
                  _table(["finding", "score (fraction of the retrieved studies)", "decision"],
                         [[escape(n), f"{p:.2f}", escape({True: "present", False: "absent"}.get(
                             result.decisions.get(n), "uncertain"))] for n, p in result.findings.items()]),
                  "<p>Retrieved training studies: " + escape(", ".join(f"{sid} ({sim:.3f})"
                                                                      for sid, sim in result.evidence)) + "</p>"]
    parts.append("</body></html>")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
