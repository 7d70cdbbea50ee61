"""``alignkit interpret STUDY_DIR [--model DIR] [--index PATH] [-k K] [--attention-png PATH] [--html PATH]``: screen
a study folder, then print its report assembled from retrieved training studies with its evidence, or the
abstention and why (:func:`~alignkit.domains.medical.echo.interpret.interpret_study`).

``STUDY_DIR`` is a folder of one study's files (AVI/MP4/DICOM; other files are listed as excluded). ``--model``: a
run folder or an exported model folder of an ``echo-clip`` model (default ``runs/demo-echo/run``, where
``alignkit demo echo`` trains); ``--index``: its report index folder with the calibration and the model card
(default ``MODEL/echo_index``); ``--html``: also write the self-contained report page there.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Optional

from alignkit.core.registry import COMMANDS

DEFAULT_MODEL = Path("runs") / "demo-echo" / "run"


def print_interpretation(module: Any, index: Any, study_dir: str | Path, k: int = 5,
                         attention_png: Optional[str | Path] = None, html: Optional[str | Path] = None) -> Any:
    """Interpret ``study_dir`` with ``module`` (an ``echo-clip`` model) and its report ``index``
    (:func:`~alignkit.domains.medical.echo.interpret.interpret_study`), print the report (or the abstention) with
    its evidence and scores; with ``attention_png`` write the section attention over the videos there, with
    ``html`` the report page (:func:`~alignkit.domains.medical.echo.interpret.write_report_html`). Returns the
    :class:`~alignkit.domains.medical.echo.interpret.Interpretation`."""
    from alignkit.domains.medical.echo.evaluate import plot_section_attention
    from alignkit.domains.medical.echo.interpret import interpret_study, write_report_html
    result = interpret_study(module, index, study_dir, k=k, previews=html is not None)
    print(f"STUDY: {study_dir}")
    print(result.format())
    if attention_png and result.attention is not None:
        labels = [f"{n} ({v})" for n, v in zip(result.videos, result.views)]
        path = plot_section_attention(result.attention, result.attention_sections, labels, attention_png)
        print(f"attention: {path}")
    if html:
        print(f"report page: {write_report_html(result, html, title=f'Echo study {Path(study_dir).name}')}")
    return result


def run_interpret(args: argparse.Namespace) -> int:
    from alignkit.domains.medical.echo.interpret import INDEX_DIR, ReportIndex, load_echo_model
    model_dir = Path(args.model)
    index = ReportIndex.load(Path(args.index) if args.index else model_dir / INDEX_DIR)
    print_interpretation(load_echo_model(model_dir), index, args.study_dir, k=args.k,
                         attention_png=args.attention_png, html=args.html)
    return 0


@COMMANDS.register("interpret")
def add_parser(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("interpret", help="interpret an echo study: its report from retrieved training studies, or "
                                          "an abstention out of distribution")
    sp.add_argument("study_dir", help="a folder of one study's files (AVI/MP4/DICOM; others are listed as excluded)")
    sp.add_argument("--model", default=str(DEFAULT_MODEL), help=f"run or exported model folder (default "
                                                               f"{DEFAULT_MODEL})")
    sp.add_argument("--index", help="report index folder (default MODEL/echo_index)")
    sp.add_argument("-k", type=int, default=5, help="training studies retrieved for EF and findings")
    sp.add_argument("--attention-png", help="write the study's section attention over its videos here")
    sp.add_argument("--html", help="write the self-contained report page (cines, views, attention, sections with "
                                   "their evidence, scores, abstentions, model card) here")
    sp.set_defaults(func=run_interpret)
