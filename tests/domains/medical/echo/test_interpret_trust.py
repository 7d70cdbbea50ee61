"""An interpretation a clinician can trust: screening of a study folder, abstention out of distribution at the
calibrated rate, sections withheld on weak or contested evidence, statements consistent with the figures, the model
card first, and the report page rendered in headless Chromium.

One tiny echo-clip model (the demo config, 8/16-channel video tower, 12 steps on a 24-study synthetic archive) is
trained once for the module; its index is calibrated on the validation studies and checked on the test studies."""
from __future__ import annotations

import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("av")
pydicom = pytest.importorskip("pydicom")
from alignkit.core.collate import collate_samples  # noqa: E402
from alignkit.core.config import configs_dir, load_config, to_plain  # noqa: E402
from alignkit.core.registry import DATASETS  # noqa: E402
from alignkit.domains.medical.echo import cli, demo  # noqa: E402,F401  (registers)
from alignkit.domains.medical.echo.interpret import (FINDING_TERMS, INDEX_DIR, EFEstimate, ModelCard,  # noqa: E402
                                                     ReportIndex, abstention_summary, build_index,
                                                     decoder_params, embed_studies, fit_calibration,
                                                     interpret_embeddings, interpret_study, screen_study_folder,
                                                     write_report_html)
from alignkit.domains.medical.echo.synthetic.archive import write_synthetic_echo  # noqa: E402
from alignkit.domains.medical.retrieval_reports import stated_finding  # noqa: E402

SHARED = Path(__file__).resolve().parents[4].parent / "shared" / "data" / "medical" / "echo"
REAL_CINE = SHARED / "color3d_jpeg_baseline.dcm"
RATE = 0.1
TRAIN = ["eval=[]", "trainer.max_steps=12", "data.batch_size=32", "data.params.num_frames=8", "data.params.stride=2",
         "optim.warmup_steps=5", "trainer.val_check_interval=null", "trainer.limit_val_batches=0",
         "trainer.enable_progress_bar=false", "model.towers.video.params.widths=[8,16]", "data.num_workers=0"]


def _pydicom_file(name: str) -> Path:
    from pydicom.data import get_testdata_file
    return Path(get_testdata_file(name))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    from torch.utils.data import DataLoader

    from alignkit.core.runner import train
    out = tmp_path_factory.mktemp("echo_trust")
    root = write_synthetic_echo(out / "data", num_studies=24, image_size=32, frames=16, seed=0,
                                split_fractions=(0.5, 0.25, 0.25))
    cfg = load_config(configs_dir() / "medical" / "echo_demo.yaml",
                      [f"data.params.root={root}", f"out_dir={out}", "name=run", *TRAIN])
    result = train(cfg)
    module = result["model"].eval()

    def split(name: str):
        dataset = DATASETS.build(cfg.data.dataset, split=name, **{**to_plain(cfg.data.params), "clip_start": "centre"})
        return dataset, embed_studies(module, DataLoader(dataset, batch_size=64, collate_fn=collate_samples))
    (train_set, train_studies), (_, val), (test_set, test) = split("train"), split("val"), split("test")
    index = build_index(module, train_studies, train_set.finding_names, decoder=decoder_params(test_set))
    index.attention = demo.fit_attention(module, train_studies, index)
    index.calibration = fit_calibration(index, train_studies, val, rate=RATE, k=5, held_out_name="validation studies")
    index.card = ModelCard("tiny echo test model", "a 24-study synthetic echo archive", True, "2026-12-06",
                           {"view/accuracy": 0.5})
    index.save(result["run_dir"] / INDEX_DIR)
    return SimpleNamespace(module=module, index=ReportIndex.load(result["run_dir"] / INDEX_DIR), val=val, test=test,
                           test_set=test_set, run_dir=result["run_dir"], out=out)


def _study_folder(tiny: SimpleNamespace, name: str, extra: tuple = ()) -> Path:
    """A folder with the first test study's videos and copies of ``extra`` files."""
    folder = tiny.out / name
    folder.mkdir()
    for video in tiny.test_set.studies[0].videos:
        shutil.copy(video.path, folder / video.path.name)
    for path in extra:
        shutil.copy(path, folder / path.name)
    return folder


def test_calibration_round_trip_and_held_out_rates(tiny: SimpleNamespace):
    calibration = tiny.index.calibration
    assert tiny.index.card.synthetic and calibration.rate == RATE
    # in-sample (validation): each score crosses its threshold on at most rate / 3 of the held-out inputs
    scores = calibration.video_scores(tiny.val.features, tiny.val.view_logits)
    for name, threshold in calibration.video.items():
        crossed = sum(threshold.crossed(float(v)) for v in scores[name])
        assert crossed <= RATE / 3 * len(tiny.val.video) + 1e-9, name
    # out of sample (test studies): the false-abstention rate at the calibrated level, which with this few validation
    # inputs is 3 / (n + 1) (no threshold on n inputs promises less than 1 / (n + 1)); one study of slack
    for level, n in (("study", len(tiny.val.study_ids)), ("video", len(tiny.val.video))):
        assert calibration.bound(level) == pytest.approx(min(1.0, 3 * max(RATE / 3, 1 / (n + 1))))
    summary = abstention_summary(tiny.index, tiny.test, 5)
    assert summary["abstained"] <= calibration.bound("study") + 1 / len(tiny.test.study_ids)
    assert summary["videos_excluded"] <= calibration.bound("video") + 1 / len(tiny.test.video)
    noise = torch.randn(16, 3, 8, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # four studies of four noise clips: all abstain
        video, logits, features = tiny.module.video_features(noise)
    assert all(interpret_embeddings(video[i:i + 4], logits[i:i + 4], tiny.index, features=features[i:i + 4]).abstained
               for i in range(0, 16, 4))


def test_non_cardiac_and_foreign_files_are_excluded(tmp_path: Path):
    for path in (_pydicom_file("CT_small.dcm"), _pydicom_file("MR_small.dcm"), SHARED / "US1_UNCR.dcm",
                 SHARED / "OBXXXX1A_rle.dcm", REAL_CINE):
        shutil.copy(path, tmp_path / path.name)
    (tmp_path / "notes.txt").write_text("not a video")
    screened = {s.name: s for s in screen_study_folder(tmp_path)}
    assert "Modality CT" in screened["CT_small.dcm"].reason and "Modality MR" in screened["MR_small.dcm"].reason
    assert "OBSTETRICAL" in screened["OBXXXX1A_rle.dcm"].reason and "SMALL PARTS" in screened["US1_UNCR.dcm"].reason
    assert screened["notes.txt"].reason == "not a video or DICOM file"
    assert [n for n, s in screened.items() if s.accepted] == [REAL_CINE.name]  # tags say EPICARDIAL: the model judges
    assert "EPICARDIAL" in screened[REAL_CINE.name].reason


def test_real_echo_cine_abstains(tiny: SimpleNamespace, tmp_path: Path):
    shutil.copy(REAL_CINE, tmp_path / REAL_CINE.name)
    result = interpret_study(tiny.module, tiny.index, tmp_path)
    assert result.abstained and not result.sections and result.ef.values == []
    text = result.format()
    assert text.splitlines()[0].startswith("SYNTHETIC-TRAINED MODEL") and "NO REPORT:" in text
    assert "ESTIMATED EF" not in text and "OUT OF RANGE" in text  # the scores are printed beside the abstention


def test_mixed_study_reports_only_the_cardiac_videos(tiny: SimpleNamespace, capsys: pytest.CaptureFixture[str]):
    from alignkit.cli import main
    others = (SHARED / "US1_UNCR.dcm", SHARED / "OBXXXX1A_rle.dcm", _pydicom_file("CT_small.dcm"))
    folder = _study_folder(tiny, "mixed", others)
    html = tiny.out / "mixed.html"
    assert main(["interpret", str(folder), "--model", str(tiny.run_dir), "--html", str(html)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[1].startswith("SYNTHETIC-TRAINED MODEL")  # the report begins with the model card
    cardiac = {v.path.name for v in tiny.test_set.studies[0].videos}
    videos = next(line for line in printed if line.startswith("VIDEOS: "))
    reported = set(re.findall(r"(\S+) \(\w+, confidence", videos))
    assert reported and reported <= cardiac
    assert all(any(line.startswith(f"EXCLUDED: {p.name}: ") for line in printed) for p in others)
    assert html.read_text().count("data:image/gif;base64,") >= len(reported)  # the cines are on the page


def _check_consistency(result, index: ReportIndex) -> None:
    """The issue's consistency properties on one interpretation with a report."""
    value = round(result.ef.mean)
    report = result.format()
    assert set(re.findall(r"LVEF (\d+)%", report)) <= {str(value)} and f"LVEF {value}%" in report
    for name, section in result.sections.items():
        if name == "conclusions":
            continue
        if section.reported:  # never a finding below the calibrated similarity, nor a negative one
            assert section.similarity >= max(section.threshold, 0.0)
            assert section.agreement >= 0.5
        if section.similarity < 0:
            assert not section.reported
    for finding, terms in FINDING_TERMS.items():
        if finding not in result.decisions:
            continue
        section = result.sections.get(terms.section)
        if section is not None and section.reported:  # statements agree with the finding scores
            assert stated_finding(section.text, terms.present, terms.normal) == result.decisions[finding]
        if terms.phrase in result.conclusions.lower():  # conclusions only from reported sections
            assert section is not None and section.reported and result.decisions[finding] is True
    lv = result.sections.get("left ventricle")
    assert ("LVEF" in result.conclusions) == bool(lv is not None and lv.reported)


def test_held_out_reports_are_consistent(tiny: SimpleNamespace):
    reported = 0
    for s in range(len(tiny.test.study_ids)):
        members = tiny.test.study == s
        result = interpret_embeddings(tiny.test.video[members], tiny.test.view_logits[members], tiny.index,
                                      features=tiny.test.features[members])
        if not result.abstained:
            reported += 1
            _check_consistency(result, tiny.index)
    assert reported >= 1  # at least one report checked (abstentions are bounded in the calibration test)


def _toy_index(sections: dict, calibrated: bool = True) -> ReportIndex:
    """Four training studies along the axes of R^4; the query will sit on study 0's axis."""
    from alignkit.domains.medical.echo.interpret import InterpretCalibration
    from alignkit.domains.medical.retrieval_reports import ABOVE, BELOW, Threshold
    eye = torch.eye(4)
    index = ReportIndex(study_ids=["S0", "S1", "S2", "S3"], report=eye, ef=torch.tensor([40.0, 50.0, 60.0, 70.0]),
                        labels=torch.tensor([[1.0], [1.0], [0.0], [1.0]]), finding_names=["pericardial_effusion"],
                        views=["A4C", "SSN"], sections=sections)
    if calibrated:
        index.calibration = InterpretCalibration(
            rate=0.05, k=4, video={"training_distance": Threshold(2.0, ABOVE, 0.05, 10),
                                   "view_confidence": Threshold(0.0, BELOW, 0.05, 10)},
            study={"training_distance": Threshold(2.0, ABOVE, 0.05, 10),
                   "feature_zscore": Threshold(10.0, ABOVE, 0.05, 10),
                   "evidence_similarity": Threshold(-1.0, BELOW, 0.05, 10)},
            sections={"pericardium": 0.1, "mitral valve": 0.1, "left ventricle": 0.1}, train_videos=eye,
            train_studies=eye, feature_mean=torch.zeros(4), feature_std=torch.ones(4))
    return index


def test_sections_follow_the_scores_and_the_estimate():
    query = F.normalize(torch.tensor([[1.0, 0.6, 0.6, 0.6]]), dim=-1)  # EF of the 4 studies: mean 55
    away = F.normalize(torch.tensor([[0.0, 1.0, -1.0, 0.0]]), dim=-1)  # orthogonal to the query
    pericardium = (["pericardium: No pericardial effusion.", "pericardium: Small pericardial effusion.",
                    "pericardium: There is a small pericardial effusion.", "pericardium: Large pericardial effusion."],
                   [0, 1, 2, 3], F.normalize(query + torch.tensor([[0.0], [0.2], [0.5], [0.8]]) * away, dim=-1))
    mitral = (["mitral valve: Mild mitral regurgitation."], [0], -query)  # negative similarity
    lv = (["left ventricle: The left ventricle is not dilated. EF 35%. Severely reduced LV systolic function."], [1],
          query)
    index = _toy_index({"pericardium": pericardium, "mitral valve": mitral, "left ventricle": lv})
    result = interpret_embeddings(query, torch.tensor([[3.0, 0.0]]), index, k=4, features=query)
    assert not result.abstained and result.findings["pericardial_effusion"] == 0.75
    # the best candidate says "No pericardial effusion." but 3 of 4 retrieved studies have one: the agreeing text
    assert result.sections["pericardium"].text == "Small pericardial effusion."
    assert not result.sections["mitral valve"].reported and "below" in result.sections["mitral valve"].reason
    assert result.sections["left ventricle"].text == ("The left ventricle is not dilated. LVEF 55% (4 retrieved "
                                                      "studies: 40-70%, SD 12.9). Normal (the retrieved studies range "
                                                      "to moderately reduced) left ventricular systolic function.")
    assert result.conclusions == ("Normal left ventricular systolic function, LVEF 55%. Pericardial effusion. "
                                  "Not assessed: mitral valve.")
    _check_consistency(result, index)
    uncalibrated = interpret_embeddings(query, torch.tensor([[3.0, 0.0]]), _toy_index({}, calibrated=False))
    assert uncalibrated.abstained and "no out-of-distribution calibration" in uncalibrated.reasons[0]
    assert uncalibrated.format().startswith("NO MODEL CARD")


def test_ef_statement():
    assert EFEstimate([54.0, 55.0, 53.0]).statement().startswith("LVEF 54% (3 retrieved studies: 53-55%, SD 1.0). "
                                                                 "Mildly reduced (the retrieved studies range to "
                                                                 "normal)")
    assert EFEstimate([]).statement() == "LVEF not assessed (no retrieved study has an EF)."


CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def test_report_page_renders_in_chromium(tiny: SimpleNamespace):
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install "
                                                                   "playwright; the browser is the system chromium)")
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is absent (apt-get install chromium)")
    folder = _study_folder(tiny, "page", (SHARED / "OBXXXX1A_rle.dcm",))
    result = interpret_study(tiny.module, tiny.index, folder, previews=True)
    page_path = write_report_html(result, tiny.out / "page.html")
    errors: list = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1000, "height": 1400})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(page_path.as_uri())
        page.wait_for_load_state("load")
        png = page.screenshot(full_page=False)
        headings = page.eval_on_selector_all("h2", "els => els.map(e => e.id)")
        h3 = page.eval_on_selector_all("h3", "els => els.map(e => e.textContent)")
        images = page.eval_on_selector_all("img", "els => els.map(e => e.naturalWidth)")
        browser.close()
    assert not errors, errors
    assert {"model-card", "videos", "excluded", "scores", "report"} <= set(headings)
    if not result.abstained:
        assert "PERICARDIUM" in h3 and "CONCLUSIONS" in h3 and "attention" in headings
    assert len(images) == len(result.previews) and all(w > 0 for w in images)  # every cine decoded by the browser
    from io import BytesIO

    import numpy as np
    from PIL import Image
    pixels = np.asarray(Image.open(BytesIO(png)).convert("L"), dtype=np.float32)
    assert pixels.std() > 10 and (pixels < 128).mean() > 0.01  # not blank: text and cines drawn


def test_exported_model_carries_its_index_calibration_and_card(tiny: SimpleNamespace,
                                                               capsys: pytest.CaptureFixture[str]):
    """`alignkit export` copies the run's echo_index/ (calibration + model card), so `alignkit interpret --model
    EXPORT` screens, abstains and begins with the card exactly as from the run folder."""
    from alignkit.cli import main
    export = tiny.out / "export"
    assert main(["export", str(tiny.run_dir), "--out", str(export)]) == 0
    assert "echo_index/" in capsys.readouterr().out
    assert (export / INDEX_DIR / "model_card.json").is_file()
    folder = _study_folder(tiny, "from_export")
    assert main(["interpret", str(folder), "--model", str(tiny.run_dir)]) == 0
    from_run = capsys.readouterr().out
    assert main(["interpret", str(folder), "--model", str(export)]) == 0
    assert capsys.readouterr().out == from_run
