"""Screening a study folder before interpretation: only echocardiography cines and stills go on
(:func:`screen_study_folder`); everything else is listed as excluded with its reason.

Rules, per file (sorted by name):

- a video file (:data:`~alignkit.domains.medical.echo.loading.VIDEO_SUFFIXES`) has no tags: it goes on and the
  model judges it (view-classifier confidence and distance to the training videos, :mod:`.calibration`);
- a DICOM file (``.dcm``/``.dicom`` or the ``DICM`` mark) must be readable and of Modality US or IVUS
  (:func:`~alignkit.domains.medical.dicom.check_modality`); then its anatomy tags decide when they say something
  (:func:`cardiac_evidence`): cardiac goes on, anything else is excluded; without such tags the model judges it;
- any other file is excluded (not a video or DICOM file).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Tuple

from alignkit.domains.medical.dicom import ULTRASOUND_MODALITIES, check_modality, is_dicom, read_dataset
from alignkit.domains.medical.echo.loading import VIDEO_SUFFIXES

CARDIAC_WORDS = frozenset({"HEART", "CARDIAC", "CARDIO", "CARDIOLOGY", "ECHO", "ECHOCARDIOGRAPHY", "EPICARDIAL",
                           "INTRACARDIAC", "TRANSESOPHAGEAL", "TRANSTHORACIC", "TTE", "TEE", "APICAL", "PARASTERNAL",
                           "SUBCOSTAL", "SUPRASTERNAL", "CHAMBER", "CORONARY"})
"""Words of a tag value that mark cardiac imaging: the cardiac US image types of PS3.3 C.8.5.6.1.1 (value 3 of
ImageType: EPICARDIAL, INTRACARDIAC, TRANSESOPHAGEAL, TRANSTHORACIC), body parts and echo view names."""
NON_CARDIAC_WORDS = frozenset({
    "ABDOMINAL", "ABDOMEN", "ABD", "BREAST", "ENDOCAVITARY", "ENDORECTAL", "ENDOVAGINAL", "FETAL", "GYNECOLOGY", "GYN",
    "INTRAVASCULAR", "MUSCULOSKELETAL", "MSK", "NEONATAL", "OBSTETRICAL", "OBSTETRIC", "OB", "OPHTHALMIC", "PELVIC",
    "PELVIS", "RETROPERITONEAL", "SCROTAL", "SMALL", "PARTS", "TRANSCRANIAL", "TRANSRECTAL", "TRANSVAGINAL",
    "UROLOGIC", "VASCULAR", "THYROID", "NECK", "CAROTID", "LIVER", "KIDNEY", "RENAL", "BLADDER", "PROSTATE",
    "LYMPH", "TESTIS", "HEAD", "BRAIN", "EXTREMITY", "LEG", "ARM", "KNEE", "SHOULDER", "HIP", "SPINE", "EYE"})
"""Words that mark other anatomy: the other US image types of PS3.3 C.8.5.6.1.1 (ABDOMINAL, OBSTETRICAL, SMALL
PARTS, VASCULAR, FETAL HEART, ...), body parts (PS3.16 CID 4031) and vendor presets (``OB_GENERAL``)."""
ANATOMY_TAGS = ("BodyPartExamined", "ImageType", "ProcessingFunction", "StudyDescription", "SeriesDescription",
                "ProtocolName", "AnatomicRegionSequence", "ViewCodeSequence")


@dataclass
class ScreenedFile:
    """One file of a study folder: ``accepted`` for interpretation or not, and why (``reason``)."""

    path: Path
    accepted: bool
    reason: str

    @property
    def name(self) -> str:
        return self.path.name


def _tag_values(ds: Any) -> List[Tuple[str, str]]:
    """``(tag, value)`` of every anatomy tag present (code sequences by their CodeMeaning); ImageType by its
    value 3, the anatomic image type of ultrasound."""
    found = []
    for tag in ANATOMY_TAGS:
        value = ds.get(tag, None)
        if value is None or value == "":
            continue
        if tag.endswith("Sequence"):
            found += [(tag, str(item.get("CodeMeaning", ""))) for item in value if item.get("CodeMeaning", "")]
        elif tag == "ImageType":
            values = list(value) if not isinstance(value, str) else value.split("\\")
            if len(values) > 2 and str(values[2]).strip():
                found.append((tag, str(values[2])))
        else:
            found.append((tag, str(value)))
    return found


def cardiac_evidence(ds: Any) -> Tuple[Optional[bool], str]:
    """What a DICOM header's anatomy tags (:data:`ANATOMY_TAGS`) say: ``(True, why)`` when a value holds a
    :data:`CARDIAC_WORDS` word (and FETAL is not among its words), ``(False, why)`` when values hold only
    :data:`NON_CARDIAC_WORDS` evidence, ``(None, why)`` when the tags say neither."""
    cardiac, other = [], []
    for tag, value in _tag_values(ds):
        words = set(re.findall(r"[A-Z]+", value.upper()))
        if words & CARDIAC_WORDS and "FETAL" not in words:
            cardiac.append(f"{tag} {value}")
        elif words & NON_CARDIAC_WORDS:
            other.append(f"{tag} {value}")
    if cardiac:
        return True, "DICOM tags say cardiac (" + "; ".join(cardiac) + ")"
    if other:
        return False, "DICOM tags say non-cardiac ultrasound (" + "; ".join(other) + ")"
    return None, "no anatomy tags"


def screen_file(path: Path) -> ScreenedFile:
    """One file under the rules of the module docstring."""
    if path.is_dir():
        return ScreenedFile(path, False, "a folder, not a file (a study folder holds one study's files)")
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return ScreenedFile(path, True, "video file without tags: judged by the model")
    if not is_dicom(path):
        return ScreenedFile(path, False, "not a video or DICOM file")
    try:
        ds = read_dataset(path, path.name, pixels=False)
    except ValueError as exc:
        return ScreenedFile(path, False, str(exc))
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if modality and modality not in ULTRASOUND_MODALITIES:
        return ScreenedFile(path, False, f"DICOM Modality {modality}, not ultrasound: only echocardiography is "
                                         "interpreted")
    try:
        check_modality(ds, ULTRASOUND_MODALITIES, path.name)
    except ValueError as exc:
        return ScreenedFile(path, False, f"not an ultrasound image: {str(exc).split(' (accepted')[0]}")
    cardiac, why = cardiac_evidence(ds)
    if cardiac is False:
        return ScreenedFile(path, False, why)
    return ScreenedFile(path, True, why if cardiac else "ultrasound DICOM without anatomy tags: judged by the model")


def screen_study_folder(study_dir: str | Path) -> List[ScreenedFile]:
    """Every entry of ``study_dir`` screened (see the module docstring), sorted by name; hidden files are left
    out."""
    folder = Path(study_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"study folder {folder} does not exist (give a folder of one study's videos)")
    return [screen_file(p) for p in sorted(folder.iterdir()) if not p.name.startswith(".")]
