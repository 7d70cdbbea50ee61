"""MIMIC-style free-text reports of study plans and their CheXpert labels.

Reports have the MIMIC preamble (``FINAL REPORT``, ``EXAMINATION:``, ``INDICATION:``, ``TECHNIQUE:``,
``COMPARISON:``), then ``FINDINGS:`` and ``IMPRESSION:`` with varied phrasing: positive mentions with
severity, side and lobe ("Moderate right pleural effusion."), negations ("No pleural effusion or
pneumothorax.", "... without pneumothorax"), uncertain mentions ("Possible small left pleural effusion."),
normal statements ("No acute cardiopulmonary process."), devices, atelectasis and decoy descriptions.
A study plan's ``report_form`` drops the FINDINGS section (``impression_only``), the IMPRESSION
(``findings_only``) or every header (``unsectioned``).

Labels. The CheXpert columns come from the report text as the CheXpert labeler defines them: per column
1.0 if some mention is positive, else -1.0 if some mention is uncertain, else 0.0 if it is negated, else blank
(not mentioned). Every finding present on the image is mentioned (positive, or uncertain when subtle);
an absent finding is negated, not mentioned, or - rarely, next to its decoy - uncertain. The six findings
map to the columns of :data:`~.plans.FINDING_COLUMNS`; ``Atelectasis``, ``Pneumonia`` and ``Support Devices``
are labelled from their own sentences, ``No Finding`` is 1.0 when no other column but ``Support Devices`` is
1.0 or -1.0; ``Enlarged Cardiomediastinum``, ``Fracture``, ``Lung Opacity`` and ``Pleural Other`` stay blank.
"""
from __future__ import annotations

import textwrap
from typing import Dict, List, Sequence, Tuple

import numpy as np

from alignkit.domains.medical.xray.synthetic.plans import FINDING_COLUMNS, FINDINGS, FindingState, StudyPlan

POSITIVE, UNCERTAIN, NEGATIVE = 1.0, -1.0, 0.0


SEVERITY_WORDS = {
    "size": ("small", "moderate", "large"),
    "grade": ("mild", "moderate", "severe"),
    "cardio": ("mild", "moderate", "marked"),
    "cons": ("patchy", "focal", "dense"),
}


def _grade(severity: float, kind: str) -> str:
    words = SEVERITY_WORDS[kind]
    return words[0] if severity < 0.4 else words[1] if severity < 0.75 else words[2]


class _Report:
    """Sentences of a report with the CheXpert mentions each makes (``column -> 1.0 / 0.0 / -1.0``)."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.findings: List[str] = []
        self.impression: List[str] = []
        self.mentions: List[Tuple[str, float]] = []

    def pick(self, options: Sequence[str]) -> str:
        return str(options[int(self.rng.integers(len(options)))])

    def add(self, section: str, sentence: str, *mentions: Tuple[str, float]) -> None:
        (self.findings if section == "findings" else self.impression).append(sentence[0].upper() + sentence[1:])
        self.mentions.extend(mentions)


def _positive_sentences(name: str, st: FindingState, plan: StudyPlan, r: _Report) -> Tuple[str, str]:
    """(FINDINGS sentence, IMPRESSION phrase) of a finding the report calls positive."""
    if name == "cardiomegaly":
        g = _grade(st.severity, "cardio")
        return (r.pick([f"{g.capitalize()} cardiomegaly.", f"{g.capitalize()}ly enlarged cardiac silhouette.",
                        f"There is {g} enlargement of the cardiac silhouette.",
                        f"{g.capitalize()} enlargement of the cardiac silhouette is noted."]),
                r.pick([f"{g.capitalize()} cardiomegaly.", "Cardiomegaly.", f"{g.capitalize()} cardiomegaly, stable."
                        if plan.subject.age > 60 else "Cardiomegaly."]))
    if name == "pleural_effusion":
        g = _grade(st.severity, "size")
        if st.side == "bilateral":
            f = r.pick([f"{g.capitalize()} bilateral pleural effusions.", f"There are {g} bilateral pleural effusions.",
                        f"{g.capitalize()} bilateral effusions with blunting of both costophrenic angles."])
            return f, r.pick([f"{g.capitalize()} bilateral pleural effusions.", "Bilateral pleural effusions."])
        f = r.pick([f"{g.capitalize()} {st.side} pleural effusion.", f"There is a {g} {st.side} pleural effusion.",
                    f"{g.capitalize()} {st.side}-sided pleural effusion is present.",
                    f"Blunting of the {st.side} costophrenic angle is consistent with a {g} pleural effusion."])
        return f, r.pick([f"{g.capitalize()} {st.side} pleural effusion.", f"{st.side.capitalize()} pleural effusion."])
    if name == "pneumothorax":
        g = _grade(st.severity, "size")
        f = r.pick([f"There is a {g} {st.side} apical pneumothorax.", f"{g.capitalize()} {st.side} pneumothorax.",
                    f"A {g} {st.side}-sided pneumothorax is seen, with a visible visceral pleural line.",
                    f"{st.side.capitalize()} pneumothorax, {g} in size."])
        return f, r.pick([f"{g.capitalize()} {st.side} pneumothorax.", f"{st.side.capitalize()} pneumothorax."])
    if name == "nodule":
        side, zone = st.place.split(" ")
        where = r.pick([f"{side} {zone} lung", f"{side} {zone} zone"]) if zone != "lower" else \
            r.pick([f"{side} lung base", f"{side} lower lung"])
        mm = int(round(2 * st.radius * 300))  # the image spans about 300 mm
        an = "an" if str(mm).startswith(("8", "11", "18")) else "a"
        f = r.pick([f"{mm} mm nodule in the {where}.", f"There is {an} {mm} mm nodular opacity in the {where}.",
                    f"{an.capitalize()} {mm} mm pulmonary nodule projects over the {where}.",
                    f"Rounded {mm} mm nodule in the {where}."])
        return f, r.pick([f"{mm} mm {where} nodule; recommend chest CT for further evaluation.",
                          f"{side.capitalize()} {zone} lung nodule.", f"Pulmonary nodule in the {where}."])
    if name == "consolidation":
        g = _grade(st.severity, "cons")
        f = r.pick([f"{g.capitalize()} consolidation in the {st.place}.",
                    f"There is {g} airspace consolidation in the {st.place}.",
                    f"{g.capitalize()} airspace opacity in the {st.place}, compatible with consolidation.",
                    f"Consolidation is seen in the {st.place}."])
        imp = r.pick([f"{st.place.capitalize()} consolidation.", f"{g.capitalize()} {st.place} consolidation."])
        return f, imp
    g = _grade(st.severity, "grade")  # edema
    f = r.pick([f"{g.capitalize()} pulmonary edema.", f"There is {g} pulmonary edema with perihilar haziness.",
                f"{g.capitalize()} interstitial edema with Kerley B lines." if st.severity < 0.5 else
                f"{g.capitalize()} alveolar edema with bilateral perihilar opacities.",
                f"Findings are consistent with {g} pulmonary edema."])
    return f, r.pick([f"{g.capitalize()} pulmonary edema.", "Pulmonary edema.", f"{g.capitalize()} edema."])


UNCERTAIN_SENTENCES = {
    "cardiomegaly": ("Possible mild cardiomegaly.", "Mild cardiomegaly cannot be excluded on this view.",
                     "The cardiac silhouette may be mildly enlarged, possible cardiomegaly."),
    "pleural_effusion": ("Possible small {side} pleural effusion.",
                         "A small {side} pleural effusion cannot be excluded.",
                         "Questionable trace {side} pleural effusion."),
    "pneumothorax": ("Possible tiny {side} apical pneumothorax.", "A small {side} pneumothorax cannot be excluded.",
                     "Questionable {side} apical pneumothorax; repeat imaging may help."),
    "nodule": ("Possible nodule in the {side} lower lung, which may represent a nipple shadow.",
               "A nodular opacity in the {side} lung cannot be excluded.",
               "Questionable small nodule in the {side} lung."),
    "consolidation": ("Possible early consolidation in the {place}.",
                      "Subtle opacity in the {place} may reflect consolidation.",
                      "Consolidation in the {place} cannot be excluded."),
    "edema": ("Possible mild interstitial edema.", "Mild pulmonary edema cannot be excluded.",
              "Possible mild pulmonary vascular congestion."),
}

NEGATIVE_SENTENCES = {
    "cardiomegaly": ("No cardiomegaly.", "There is no cardiomegaly."),
    "pleural_effusion": ("No pleural effusion.", "There is no pleural effusion.", "No effusion is seen."),
    "pneumothorax": ("No pneumothorax.", "There is no pneumothorax.", "No pneumothorax is seen."),
    "nodule": ("No suspicious pulmonary nodules.", "No pulmonary nodule is identified."),
    "consolidation": ("No focal consolidation.", "There is no focal consolidation."),
    "edema": ("No pulmonary edema.", "There is no pulmonary vascular congestion or edema."),
}

NORMAL_IMPRESSIONS = ("No acute cardiopulmonary process.", "No acute intrathoracic process.",
                      "No acute cardiopulmonary abnormality.", "Normal chest radiograph.")

DEVICE_SENTENCES = {
    "pacemaker": ("Left-sided pacemaker with leads terminating in the right atrium and right ventricle.",
                  "A dual-chamber pacemaker is in place with leads in the right atrium and right ventricle."),
    "central line": ("Right internal jugular central venous catheter terminates in the mid SVC.",
                     "A right IJ line ends in the SVC."),
    "endotracheal tube": ("Endotracheal tube terminates 4 cm above the carina.",
                          "The ET tube is in standard position."),
    "enteric tube": ("Enteric tube courses below the diaphragm, tip in the stomach.",
                     "A nasogastric tube extends into the stomach."),
}


def write_report(plan: StudyPlan, rng: np.random.Generator) -> Tuple[str, Dict[str, float]]:
    """The report text of ``plan`` and its CheXpert labels (column -> 1.0 / 0.0 / -1.0; absent = blank)."""
    r = _Report(rng)
    fnd = plan.findings
    view_sentence = r.pick(["PA and lateral views of the chest provided.", "PA and lateral chest radiographs."]) \
        if plan.has_lateral else r.pick(["Single portable AP view of the chest.", "Portable AP chest radiograph."]) \
        if plan.view == "AP" else "Single PA view of the chest."
    if rng.random() < 0.5:
        r.add("findings", view_sentence)
    for device in plan.devices:
        if device == "sternotomy":
            r.add("findings", r.pick(["Median sternotomy wires are intact.", "Sternotomy wires are noted."]))
        else:
            r.add("findings", r.pick(DEVICE_SENTENCES[device]), ("Support Devices", POSITIVE))
    if plan.low_volumes:
        r.add("findings", r.pick(["Lung volumes are low.",
                                  "Low lung volumes accentuate the bronchovascular markings."]))
    positives: List[Tuple[str, str]] = []
    negated: List[str] = []
    for name in ("consolidation", "edema", "nodule", "pleural_effusion", "pneumothorax", "cardiomegaly"):
        st = fnd[name]
        col = FINDING_COLUMNS[name]
        if st.mention == "positive":
            f, imp = _positive_sentences(name, st, plan, r)
            r.add("findings", f, (col, POSITIVE))
            positives.append((imp, col))
        elif st.mention == "uncertain":
            s = r.pick(UNCERTAIN_SENTENCES[name]).format(side=st.side if st.side != "bilateral" else "right",
                                                         place=st.place or "right lower lobe")
            r.add("findings", s, (col, UNCERTAIN))
        elif st.mention == "negative":
            negated.append(name)
    # negations: the classic combined sentence or one by one
    trio = [n for n in ("consolidation", "pleural_effusion", "pneumothorax") if n in negated]
    if len(trio) == 3 and rng.random() < 0.6:
        r.add("findings", r.pick(["No focal consolidation, pleural effusion, or pneumothorax.",
                                  "There is no focal consolidation, effusion, or pneumothorax.",
                                  "The lungs are clear without consolidation, effusion, or pneumothorax."]),
              *((FINDING_COLUMNS[n], NEGATIVE) for n in trio))
        negated = [n for n in negated if n not in trio]
    elif {"pleural_effusion", "pneumothorax"} <= set(negated) and rng.random() < 0.6:
        r.add("findings", r.pick(["No pleural effusion or pneumothorax.", "There is no effusion or pneumothorax."]),
              ("Pleural Effusion", NEGATIVE), ("Pneumothorax", NEGATIVE))
        negated = [n for n in negated if n not in ("pleural_effusion", "pneumothorax")]
    if "skin_fold" in plan.decoys and fnd["pneumothorax"].mention in ("none", "negative"):
        r.add("findings", f"A skin fold projects over the {plan.decoys['skin_fold']} hemithorax, without pneumothorax.",
              ("Pneumothorax", NEGATIVE))
        negated = [n for n in negated if n != "pneumothorax"]
    for name in negated:
        r.add("findings", r.pick(NEGATIVE_SENTENCES[name]), (FINDING_COLUMNS[name], NEGATIVE))
    if not any(fnd[n].mention in ("positive", "uncertain") for n in ("consolidation", "edema")):
        if rng.random() < 0.5:
            r.add("findings", r.pick(["The lungs are clear.", "Lungs are well expanded and clear."]))
    if fnd["cardiomegaly"].mention in ("none", "negative") and rng.random() < 0.7:
        r.add("findings", r.pick(["Heart size is difficult to assess on this AP view but likely within normal limits."]
                                 if plan.view == "AP" else ["Heart size is normal.",
                                                            "The cardiomediastinal silhouette is within normal limits.",
                                                            "Normal heart size. Mediastinal and hilar contours are "
                                                            "unremarkable."]))
    if plan.atelectasis:
        where = "bibasilar" if plan.atelectasis == "bibasilar" else f"{plan.atelectasis} basilar"
        r.add("findings", r.pick([f"Mild {where} atelectasis.",
                                  f"Linear opacities likely reflect {where} atelectasis."]),
              ("Atelectasis", POSITIVE))
    if "nipples" in plan.decoys and fnd["nodule"].mention == "none" and rng.random() < 0.3:
        r.add("findings", "Bilateral nipple shadows are noted." if plan.decoys["nipples"] == "bilateral"
              else f"A {plan.decoys['nipples']} nipple shadow is noted.")
    if "ecg" in plan.decoys and rng.random() < 0.3:
        r.add("findings", r.pick(["EKG leads overlie the chest.", "Monitoring leads project over the chest."]))
    if rng.random() < 0.4:
        r.add("findings", r.pick(["No acute osseous abnormality.", "The osseous structures are intact."]))
    # impression
    for imp, col in positives:  # restated, unless the findings go under IMPRESSION themselves
        if plan.report_form != "impression_only" and rng.random() < 0.85:
            r.add("impression", imp, (col, POSITIVE))
    if fnd["consolidation"].mention == "positive" and rng.random() < 0.5:
        r.add("impression", r.pick(["Findings concerning for pneumonia.", "Pneumonia is possible."]),
              ("Pneumonia", UNCERTAIN))
    acute = any(fnd[n].mention == "positive" for n in FINDINGS if n != "nodule")
    if not acute and not any(fnd[n].mention == "uncertain" for n in FINDINGS) and (
            not positives or rng.random() < 0.3):
        r.add("impression", r.pick(NORMAL_IMPRESSIONS))
    if not r.impression and not (plan.report_form == "impression_only" and r.findings):
        r.add("impression", r.pick(["As above.", "See findings."]) if r.findings else r.pick(NORMAL_IMPRESSIONS))
    labels = _chexpert(r.mentions)
    return _format_report(plan, r, rng), labels


def _chexpert(mentions: Sequence[Tuple[str, float]]) -> Dict[str, float]:
    """Aggregate mentions per column: positive over uncertain over negative; ``No Finding`` as documented."""
    rank = {POSITIVE: 2, UNCERTAIN: 1, NEGATIVE: 0}
    labels: Dict[str, float] = {}
    for col, value in mentions:
        if col not in labels or rank[value] > rank[labels[col]]:
            labels[col] = value
    if not any(v in (POSITIVE, UNCERTAIN) for c, v in labels.items() if c != "Support Devices"):
        labels["No Finding"] = POSITIVE
    return labels


INDICATIONS = ("___-year-old {sex} with shortness of breath.",
               "___ year old {sex} with cough and fever, evaluate for pneumonia.", "___{mf} with chest pain.",
               "Dyspnea.", "History: ___{mf} with hypoxia.", "Evaluate for interval change.",
               "___-year-old {sex} with fall, evaluate for acute process.", "Preoperative chest radiograph.",
               "___{mf} with tachypnea and leg swelling.")
EXAMINATIONS = {"PA": "CHEST (PA)", "AP": "CHEST (PORTABLE AP)", "PA+LATERAL": "CHEST (PA AND LAT)"}


def examination(plan: StudyPlan) -> str:
    return EXAMINATIONS["PA+LATERAL" if plan.has_lateral else plan.view]


def _format_report(plan: StudyPlan, r: _Report, rng: np.random.Generator) -> str:
    """MIMIC-style text: banner, preamble, FINDINGS and IMPRESSION wrapped at 78 columns."""
    sex, mf = ("woman", "F") if plan.subject.female else ("man", "M")
    exam = examination(plan)
    indication = str(rng.choice(INDICATIONS)).format(sex=sex, mf=mf)
    comparison = str(rng.choice(["___.", "None.", "Chest radiograph from ___."]))

    def para(sentences: Sequence[str]) -> str:
        return "\n".join(" " + line for line in textwrap.wrap("  ".join(sentences), 77))

    if plan.report_form == "unsectioned":
        return ("                                 FINAL REPORT\n" + para(
            [f"{'Portable AP' if plan.view == 'AP' else 'PA'} chest radiograph performed on ___."] + r.findings
            + r.impression) + "\n")
    parts = ["                                 FINAL REPORT", f" EXAMINATION:  {exam}", "",
             f" INDICATION:  {indication}", ""]
    if rng.random() < 0.5:
        parts += [" TECHNIQUE:  " + ("PA and lateral views of the chest." if plan.has_lateral else
                                     f"Single {'portable AP' if plan.view == 'AP' else 'PA'} view of the chest."), ""]
    parts += [f" COMPARISON:  {comparison}", ""]
    if plan.report_form == "impression_only":
        return "\n".join(parts + [" IMPRESSION: ", "", para(r.findings + r.impression), ""])
    parts += [" FINDINGS: ", "", para(r.findings), ""]
    if plan.report_form == "findings_only":
        return "\n".join(parts[:-1] + [para(r.impression), ""])
    return "\n".join(parts + [" IMPRESSION: ", "", para(r.impression), ""])
