"""Retrieval-augmented interpretation of echo studies (EchoPrime style) that abstains out of distribution, withholds
weakly supported sections and keeps its statements consistent with its figures.

- :mod:`.embedding`: :func:`embed_studies` (every video of a split through a trained
  :class:`~alignkit.domains.medical.echo.models.EchoClipModule`, grouped by study: :class:`StudySet`),
  :func:`ablate_frames` (clip ablations and out-of-distribution perturbations), :func:`retrieve_labels`;
- :mod:`.index`: :class:`ReportIndex` (:func:`build_index`): the training studies' reports, EF, findings and
  section candidates, saved with the calibration and the model card;
- :mod:`.calibration`: out-of-distribution scores and thresholds calibrated on held-out studies
  (:func:`fit_calibration`);
- :mod:`.card`: the :class:`ModelCard` every report begins with;
- :mod:`.screening`: which files of a study folder are echocardiography (:func:`screen_study_folder`);
- :mod:`.assemble`: :func:`interpret_embeddings` -> :class:`Interpretation` (abstention, sections, EF, findings,
  conclusions);
- :mod:`.study`: :func:`interpret_study` (a folder end to end) and :func:`load_echo_model`;
- :mod:`.html`: :func:`write_report_html`, the self-contained report page.
"""
from alignkit.domains.medical.echo.interpret.assemble import (EF_SENTENCE, FINDING_TERMS, EFEstimate, FindingTerms,
                                                              abstention_summary,
                                                              Interpretation, assemble_conclusions, ef_grade,
                                                              interpret_embeddings)
from alignkit.domains.medical.echo.interpret.calibration import (CALIBRATION_FILES, DEFAULT_RATE,
                                                                 InterpretCalibration, fit_calibration)
from alignkit.domains.medical.echo.interpret.card import ModelCard
from alignkit.domains.medical.echo.interpret.embedding import (FRAME_MODES, PERTURBATIONS, RetrievedLabels, StudySet,
                                                               ablate_frames, decoder_params, embed_studies,
                                                               retrieve_labels, section_name)
from alignkit.domains.medical.echo.interpret.html import write_report_html
from alignkit.domains.medical.echo.interpret.index import ATTENTION_FILE, INDEX_FILES, ReportIndex, build_index
from alignkit.domains.medical.echo.interpret.screening import ScreenedFile, cardiac_evidence, screen_study_folder
from alignkit.domains.medical.echo.interpret.study import (INDEX_DIR, interpret_study, load_echo_model, preview_gif,
                                                           study_videos)

__all__ = ["ablate_frames", "abstention_summary", "assemble_conclusions", "ATTENTION_FILE", "build_index",
           "CALIBRATION_FILES", "cardiac_evidence", "decoder_params", "DEFAULT_RATE", "ef_grade", "EF_SENTENCE",
           "EFEstimate", "embed_studies", "FINDING_TERMS", "FindingTerms", "fit_calibration", "FRAME_MODES",
           "INDEX_DIR", "INDEX_FILES", "interpret_embeddings", "interpret_study", "Interpretation",
           "InterpretCalibration", "load_echo_model", "ModelCard", "PERTURBATIONS", "preview_gif", "ReportIndex",
           "retrieve_labels", "RetrievedLabels", "screen_study_folder", "ScreenedFile", "section_name",
           "study_videos", "StudySet", "write_report_html"]
