"""Sectioned echo reports of synthetic studies (:func:`write_report`).

Sections: INDICATION, LEFT VENTRICLE (size, EF as a number or a range, systolic function graded as the ASE
does), RIGHT VENTRICLE, LEFT ATRIUM, optional RIGHT ATRIUM and valve sections, PERICARDIUM and CONCLUSIONS, in
varied phrasing with negations ("No pericardial effusion.", "The left atrium is not dilated.", "Pericardial
effusion is absent."); every finding is stated, positive or negated, in its section.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np

from alignkit.domains.medical.echo.synthetic.plans import FINDINGS, StudyPlan
from alignkit.domains.medical.reports import ef_grade

_INDICATIONS = ("Dyspnea.", "Evaluate left ventricular function.", "Chest pain.", "Murmur.", "Atrial fibrillation.",
                "Shortness of breath on exertion.", "Pre-operative assessment.", "Syncope.", "Hypertension.")


def _ef_sentence(ef: float, rng: np.random.Generator) -> str:
    value = int(round(ef))
    low = 5 * (value // 5)
    forms = (f"The left ventricular ejection fraction is {value}%.", f"LVEF is estimated at {low}-{low + 5}%.",
             f"Visually estimated ejection fraction of {value} percent.", f"EF {value}%.",
             f"Biplane ejection fraction measures {value}%.", f"The ejection fraction is approximately {value}%.")
    return _choose(rng, forms)


def _choose(rng: np.random.Generator, forms: Sequence[str]) -> str:
    return str(forms[int(rng.integers(len(forms)))])


def _lv_size(plan: StudyPlan, rng: np.random.Generator) -> str:
    if plan.findings["dilated_lv"]:
        grade = plan.severity["dilated_lv"]
        return _choose(rng, (f"The left ventricle is {grade}ly dilated.", f"{grade.capitalize()} left ventricular "
                             "dilatation.", "Left ventricular cavity size is increased.", "Dilated left ventricle."))
    return _choose(rng, ("The left ventricle is not dilated.", "Normal left ventricular cavity size.",
                         "Left ventricular size is normal.", "No left ventricular dilatation."))


def _la(plan: StudyPlan, rng: np.random.Generator) -> str:
    if plan.findings["dilated_la"]:
        grade = plan.severity["dilated_la"]
        return _choose(rng, (f"The left atrium is {grade}ly dilated.", f"{grade.capitalize()} left atrial "
                             "enlargement.", "The left atrium is enlarged.", "Dilated left atrium."))
    return _choose(rng, ("Normal left atrial size.", "The left atrium is not dilated.", "No left atrial enlargement.",
                         "Left atrial size is normal."))


def _rv(plan: StudyPlan, rng: np.random.Generator) -> str:
    if plan.findings["dilated_rv"]:
        grade = plan.severity["dilated_rv"]
        return _choose(rng, (f"The right ventricle is {grade}ly dilated.", "Right ventricular enlargement with "
                             "preserved systolic function.", "Dilated right ventricle."))
    return _choose(rng, ("Normal right ventricular size and systolic function.", "The right ventricle is not "
                         "dilated.", "No right ventricular dilatation. Normal RV function."))


def _pericardium(plan: StudyPlan, rng: np.random.Generator) -> str:
    if plan.findings["pericardial_effusion"]:
        size = {"mild": "small", "moderate": "moderate", "severe": "large"}[plan.severity["pericardial_effusion"]]
        return _choose(rng, (f"There is a {size} pericardial effusion.", f"{size.capitalize()} circumferential "
                             "pericardial effusion.", f"A {size} pericardial effusion is present, without "
                             "echocardiographic signs of tamponade.", f"{size.capitalize()} pericardial effusion."))
    return _choose(rng, ("No pericardial effusion.", "There is no pericardial effusion.",
                         "Pericardial effusion is absent.", "Normal pericardium without pericardial effusion.",
                         "Negative for pericardial effusion."))


_VALVES = {"AORTIC VALVE": ("Trileaflet aortic valve with normal opening.", "The aortic valve is mildly sclerotic "
                            "without stenosis."),
           "MITRAL VALVE": ("Structurally normal mitral valve. Trace mitral regurgitation.",
                            "Mild mitral annular calcification. Mild mitral regurgitation."),
           "TRICUSPID VALVE": ("Normal tricuspid valve. Trace tricuspid regurgitation.",
                               "Mild tricuspid regurgitation. Normal estimated pulmonary artery pressure.")}


def write_report(plan: StudyPlan, rng: np.random.Generator) -> str:
    """The sectioned report of ``plan`` (see the module docstring): headers in capitals with a colon, either
    on their own line or followed by the text; every simulated finding is stated positive or negated."""
    ef = 100.0 * plan.ef
    category = ef_grade(ef)
    function = _choose(rng, (f"Overall left ventricular systolic function is {category}.",
                             f"{category.capitalize()} global left ventricular systolic function."))
    sections: List[Tuple[str, str]] = [("INDICATION", _choose(rng, _INDICATIONS)),
                                       ("LEFT VENTRICLE", " ".join([_lv_size(plan, rng), _ef_sentence(ef, rng),
                                                                    function])),
                                       ("RIGHT VENTRICLE", _rv(plan, rng)), ("LEFT ATRIUM", _la(plan, rng))]
    if rng.random() < 0.5:
        sections.append(("RIGHT ATRIUM", "Normal right atrial size."))
    sections += [(name, _choose(rng, forms)) for name, forms in _VALVES.items() if rng.random() < 0.5]
    sections.append(("PERICARDIUM", _pericardium(plan, rng)))
    conclusions = [f"{category.capitalize()} left ventricular systolic function, EF {int(round(ef))}%."]
    named = {"dilated_lv": "dilated left ventricle", "dilated_la": "dilated left atrium",
             "dilated_rv": "dilated right ventricle", "pericardial_effusion": "pericardial effusion"}
    positives = [named[f] for f in FINDINGS if plan.findings[f]]
    if positives:
        conclusions.append(f"{', '.join(p.capitalize() if k == 0 else p for k, p in enumerate(positives))}.")
    elif rng.random() < 0.5:
        conclusions.append("No structural abnormality.")
    conclusion = " ".join(conclusions) if rng.random() < 0.5 else \
        "\n".join(f"{k}. {c}" for k, c in enumerate(conclusions, start=1))
    sections.append(("CONCLUSIONS", conclusion))
    inline = rng.random() < 0.5
    return "\n\n".join(f"{name}: {text}" if inline else f"{name}:\n{text}" for name, text in sections) + "\n"
