"""Report sections, cleaning, sentences, the training-text rule and negation, against hand-written answers."""
from __future__ import annotations

import pytest

from alignkit.core.registry import ConfigError
from alignkit.domains.medical.reports import (
    ECHO_HEADERS, PREAMBLE, EmptyReportError, affirmed_terms, clean_report, extract_sections, is_negated,
    negated_terms, report_text, split_sentences)

MIMIC_REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with new onset ascites  // eval for infection

 TECHNIQUE:  Chest PA and lateral

 COMPARISON:  None.

 FINDINGS:

 There is no focal consolidation, pleural effusion or pneumothorax.  Bilateral
 nodular opacities that most likely represent nipple shadows. The
 cardiomediastinal silhouette is normal.

 IMPRESSION:

 No acute cardiopulmonary process.
"""

WET_READ_REPORT = """WET READ: ___ ___ 4:47 PM
  Small right pleural effusion.
 ______________________________________________________________________________
                                 FINAL REPORT
 HISTORY:  Dyspnea.

 IMPRESSION:  Small right pleural effusion, new since ___.
"""


# -------------------------------------------------------------------------------------------- sections


def test_mimic_report_sections_and_banner():
    sections = extract_sections(MIMIC_REPORT)
    assert list(sections) == ["examination", "indication", "technique", "comparison", "findings", "impression"]
    assert sections["examination"] == "CHEST (PA AND LAT)"
    assert sections["indication"] == "___F with new onset ascites  // eval for infection"
    assert sections["comparison"] == "None."
    assert sections["findings"].startswith("There is no focal consolidation")
    assert sections["findings"].endswith("silhouette is normal.")
    assert sections["impression"] == "No acute cardiopulmonary process."
    assert PREAMBLE not in sections  # the FINAL REPORT banner is dropped


def test_wet_read_preamble_is_its_own_section():
    sections = extract_sections(WET_READ_REPORT)
    assert sections["wet read"].startswith("___ ___ 4:47 PM\n  Small right pleural effusion.")
    assert sections["history"] == "Dyspnea."
    assert sections["impression"] == "Small right pleural effusion, new since ___."
    assert "findings" not in sections


def test_inline_headers_case_and_spacing():
    assert extract_sections("Findings: heart normal. Impression: no acute disease.") == {
        "findings": "heart normal.", "impression": "no acute disease."}
    text = "  findings  :  Lungs clear.\nCLINICAL   HISTORY : cough\nheart normal IMPRESSION: none"
    assert extract_sections(text) == {"findings": "Lungs clear.", "history": "cough\nheart normal",
                                      "impression": "none"}


def test_header_alone_on_its_line_without_colon():
    assert extract_sections("FINDINGS\nLungs are clear.\nImpression\nNormal.") == {
        "findings": "Lungs are clear.", "impression": "Normal."}


def test_words_inside_sentences_are_not_headers():
    text = "INDICATION: History: 65M with cough. Patient has a history: smoking.\nFINDINGS: the findings are stable."
    sections = extract_sections(text)
    assert sections == {"indication": "History: 65M with cough. Patient has a history: smoking.",
                        "findings": "the findings are stable."}


def test_repeated_and_empty_sections():
    sections = extract_sections("FINDINGS: a.\nIMPRESSION:\nFINDINGS: b.")
    assert sections == {"findings": "a.\nb.", "impression": ""}


def test_report_without_headers_is_preamble():
    text = "  The lungs are clear. No effusion.  "
    assert extract_sections(text) == {PREAMBLE: "The lungs are clear. No effusion."}
    assert extract_sections("") == {}


def test_echo_header_set():
    echo = ("LEFT ATRIUM: Normal size.\nLEFT VENTRICLE: Mild symmetric LVH. Normal LVEF.\n"
            "PERICARDIUM: No pericardial effusion.\n\nConclusions:\nThe left atrium is normal in size.")
    sections = extract_sections(echo, headers=ECHO_HEADERS)
    assert sections == {"left atrium": "Normal size.", "left ventricle": "Mild symmetric LVH. Normal LVEF.",
                        "pericardium": "No pericardial effusion.",
                        "conclusions": "The left atrium is normal in size."}
    assert list(extract_sections(echo)) == [PREAMBLE, "impression"]  # chest headers: only "Conclusions" is known
    assert report_text(echo, sections=("left ventricle", "pericardium"), headers=ECHO_HEADERS) == \
        "Mild symmetric LVH. Normal LVEF. No pericardial effusion."


def test_custom_header_set_with_aliases():
    headers = {"result": ("result", "results", "outcome")}
    assert extract_sections("Outcome: fine.\nRESULTS: ok.", headers) == {"result": "fine.\nok."}


# -------------------------------------------------------------------------------------------- cleaning


def test_clean_report_rules():
    text = "Compared to ___ study.  The left-\n  sided effusion ( stable ) ..\n[**2101-10-20**] XXXX seen"
    assert clean_report(text) == "Compared to study. The left-sided effusion (stable). seen"
    assert clean_report(text, lowercase=True, placeholder="[deid]") == \
        "compared to [deid] study. the left-sided effusion (stable). [deid] [deid] seen"
    assert clean_report("cardio-\nmegaly", dehyphenate=True) == "cardiomegaly"
    assert clean_report("cardio-\nmegaly") == "cardio-megaly"
    assert clean_report("XXXXL size, X-ray") == "XXXXL size, X-ray"  # only whole XXXX words are placeholders
    assert clean_report("  \n ___ \n") == ""


# ------------------------------------------------------------------------------------------- sentences


def test_split_sentences_abbreviations_and_numbers():
    text = "Effusion measures approx. 3.5 cm. Stable vs. prior, e.g. the base. Dr. Smith was notified!  Ok?"
    assert split_sentences(text) == ["Effusion measures approx. 3.5 cm.", "Stable vs. prior, e.g. the base.",
                                     "Dr. Smith was notified!", "Ok?"]


def test_split_sentences_numbered_inline_list():
    text = "IMPRESSION: 1. Small left effusion 2. No pneumothorax. 3. Lines in place."
    assert split_sentences(text) == ["IMPRESSION:", "Small left effusion", "No pneumothorax.", "Lines in place."]


def test_split_sentences_bullet_lines_and_paragraphs():
    text = ("- Lungs are clear\n- Heart size\n  is normal.\n\nNew paragraph without period\n"
            "1. First item.\n2. Second item measures 2.5 cm.")
    assert split_sentences(text) == ["Lungs are clear", "Heart size is normal.", "New paragraph without period",
                                     "First item.", "Second item measures 2.5 cm."]


def test_split_sentences_lone_number_is_not_a_list():
    assert split_sentences("Rib fractures numbering 2. No effusion.") == ["Rib fractures numbering 2.",
                                                                          "No effusion."]
    assert split_sentences("Stable at 2.3 cm and no change. etc. and more") == [
        "Stable at 2.3 cm and no change. etc. and more"]
    assert split_sentences("") == []


# ---------------------------------------------------------------------------------------- training text


def test_report_text_default_rule():
    assert report_text(MIMIC_REPORT) == (
        "There is no focal consolidation, pleural effusion or pneumothorax. Bilateral nodular opacities that most "
        "likely represent nipple shadows. The cardiomediastinal silhouette is normal. "
        "No acute cardiopulmonary process.")
    only_impression = "INDICATION: cough\nFINDINGS: ___\nIMPRESSION: Normal chest."
    assert report_text(only_impression) == "Normal chest."  # a section holding only a placeholder is empty
    assert report_text("FINDINGS: Clear lungs.\nCOMPARISON: None.") == "Clear lungs."
    assert report_text(WET_READ_REPORT) == "Small right pleural effusion, new since."


def test_report_text_first_and_all_rules():
    both = "FINDINGS: Clear lungs.\nIMPRESSION: Normal."
    assert report_text(both, sections=("impression", "findings"), rule="first") == "Normal."
    assert report_text("FINDINGS: Clear lungs.", sections=("impression", "findings"), rule="first") == "Clear lungs."
    assert report_text(both, rule="all") == "Clear lungs. Normal."
    assert report_text("FINDINGS: Clear lungs.", rule="all", on_empty="none") is None
    assert report_text(both, lowercase=True) == "clear lungs. normal."


def test_empty_report_raises_naming_the_file_or_returns_none():
    text = "FINAL REPORT\nEXAMINATION: CHEST\nINDICATION: cough\nIMPRESSION:\n"
    with pytest.raises(EmptyReportError, match=r"files/p10/s5\.txt.*FINDINGS, IMPRESSION") as info:
        report_text(text, source="files/p10/s5.txt")
    assert info.value.source == "files/p10/s5.txt" and info.value.sections == ("findings", "impression")
    assert report_text(text, on_empty="none") is None


def test_unsectioned_report_used_whole_only_when_allowed():
    plain = "The lungs are clear.\nNo ___ effusion."
    assert report_text(plain) == "The lungs are clear. No effusion."
    assert report_text(plain, use_unsectioned=False, on_empty="none") is None
    with pytest.raises(EmptyReportError):
        report_text("   ")


def test_report_text_config_errors():
    with pytest.raises(ConfigError, match="unknown report rule 'both'"):
        report_text("FINDINGS: x", rule="both")
    with pytest.raises(ConfigError, match="finding"):
        report_text("FINDINGS: x", sections=("finding",))
    with pytest.raises(ConfigError, match="on_empty"):
        report_text("FINDINGS: x", on_empty="skip")


# -------------------------------------------------------------------------------------------- negation


@pytest.mark.parametrize("sentence, term, negated", [
    ("No pleural effusion.", "pleural effusion", True),
    ("There is no focal consolidation, pleural effusion, or pneumothorax.", "pneumothorax", True),
    ("Without evidence of pneumonia.", "pneumonia", True),
    ("Negative for pneumothorax.", "pneumothorax", True),
    ("Lungs are free of consolidation.", "consolidation", True),
    ("No evidence of edema.", "edema", True),
    ("Resolved left pleural effusion.", "pleural effusion", True),
    ("Pneumothorax is not seen.", "pneumothorax", True),
    ("Effusion is absent.", "effusion", True),
    ("The pneumothorax has resolved.", "pneumothorax", True),
    ("The effusion resolved.", "effusion", True),
    ("The effusion resolved, there is a new pneumothorax.", "pneumothorax", False),  # "resolved" looks back here
    ("Small bilateral pleural effusions.", "pleural effusion", False),
    ("There is a pneumothorax.", "pneumothorax", False),
    ("No effusion but there is a pneumothorax.", "pneumothorax", False),
    ("No effusion; pneumothorax is present.", "pneumothorax", False),
    ("No effusion, however pneumothorax is present.", "pneumothorax", False),
    ("Effusion is not seen, pneumothorax is present.", "pneumothorax", False),
    ("Effusion is small, pneumothorax is absent.", "effusion", False),
    ("No change in the small pleural effusion.", "pleural effusion", False),
    ("Pneumonia cannot be excluded.", "pneumonia", False),
    ("Nodule in the right lung.", "nodule", False),  # "no" inside "nodule" is no trigger
    ("No edema.", "pneumothorax", False),  # not mentioned
])
def test_is_negated(sentence: str, term: str, negated: bool):
    assert is_negated(sentence, term) is negated


def test_negated_and_affirmed_terms_over_sentences():
    text = ("No pneumothorax. Small left pleural effusion. No right pleural effusion. "
            "Heart size is normal without cardiomegaly.")
    terms = ["pneumothorax", "pleural effusion", "cardiomegaly", "edema"]
    assert negated_terms(text, terms) == ["pneumothorax", "cardiomegaly"]
    assert affirmed_terms(text, terms) == ["pleural effusion"]  # one affirmed mention makes it affirmed
    assert negated_terms("no pleural effusion", ["pleural effusion"]) == ["pleural effusion"]  # prompt check
    assert affirmed_terms("there is a pleural effusion", ["pleural effusion"]) == ["pleural effusion"]
