"""The shared rules of reports assembled from retrieval: conformal thresholds, nearest-neighbour distances, section
gating and stated findings; and the X-ray retrieval baseline under the same rules (abstention out of distribution,
"not assessed" for weak or contested evidence, text that agrees with the finding scores)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from alignkit.domains.medical.retrieval_reports import (ABOVE, BELOW, Candidate, Threshold, assess_section,
                                                        decide_finding, knn_distance, lower_threshold,
                                                        stated_finding, upper_threshold)
from alignkit.domains.medical.xray.bench.generation import (RetrievalCalibration, screened_retrieval_reports,
                                                            screened_scores, stated_findings)


def test_conformal_thresholds():
    scores = list(range(1, 20))  # n = 19: rank ceil(20 * 0.9) = 18
    assert upper_threshold(scores, 0.1) == 18
    assert upper_threshold(scores, 0.01) == 19  # too few scores for 1 %: the largest
    assert lower_threshold(scores, 0.1) == 2
    t = Threshold.fit(scores, BELOW, 0.1)
    assert t.crossed(1.5) and not t.crossed(2.0) and t.crossed(float("nan")) and t.n == 19
    assert Threshold.fit(scores, ABOVE, 0.1).crossed(18.5)
    with pytest.raises(ValueError, match="rate"):
        upper_threshold(scores, 1.5)
    with pytest.raises(ValueError, match="no held-out scores"):
        upper_threshold([], 0.1)


def test_knn_distance_reference():
    keys = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), dim=-1)
    d = knn_distance(torch.tensor([[1.0, 0.0]]), keys, k=2)
    assert d.item() == pytest.approx(1 - (1 + 0.5 ** 0.5) / 2)
    loo = knn_distance(keys, keys, k=1, leave_one_out=True)  # own match left out: the 45-degree neighbour
    assert loo.tolist() == pytest.approx([1 - 0.5 ** 0.5] * 3)


def test_stated_finding_and_decisions():
    present, normal = ("dilated", "enlargement"), ("normal",)
    assert stated_finding("Dilated left ventricle.", present, normal) is True
    assert stated_finding("The left ventricle is not dilated.", present, normal) is False
    assert stated_finding("Normal left atrial size.", present, normal) is False
    assert stated_finding("Trace mitral regurgitation.", present, normal) is None
    assert [decide_finding(p) for p in (0.0, 0.2, 0.4, 0.6, 0.8, float("nan"))] == [False, False, None, None, True,
                                                                                     None]


def test_assess_section_withholds_weak_and_contested_evidence():
    def cands(sims, keys):
        return [Candidate(f"text {i}", f"S{i}", s, k) for i, (s, k) in enumerate(zip(sims, keys))]
    ok = assess_section("pericardium", cands([0.5, 0.4, 0.3], [True, True, False]), threshold=0.2)
    assert ok.reported and ok.text == "text 0" and ok.agreement == pytest.approx(2 / 3)
    # the best candidate disagrees with the score's decision: the best agreeing one is reported
    chosen = assess_section("pericardium", cands([0.5, 0.4, 0.3], [True, False, False]), 0.2, wanted=False)
    assert chosen.text == "text 1"
    weak = assess_section("mitral valve", cands([0.15, 0.1], ["a", "a"]), threshold=0.2)
    assert not weak.reported and "below the calibrated 0.200" in weak.reason and "not assessed" in weak.describe()
    negative = assess_section("mitral valve", cands([-0.2, -0.3], ["a", "a"]), threshold=-0.5)
    assert not negative.reported and negative.threshold == 0.0  # never reported below 0
    contested = assess_section("pericardium", cands([0.5, 0.4, 0.3, 0.3], [True, False, None, False]), 0.2,
                               wanted=True)
    assert not contested.reported and "disagree" in contested.reason


# ------------------------------------------------------------------------------ the X-ray retrieval baseline
EFFUSION = "Small right pleural effusion."
CLEAR = "No pleural effusion. No pneumothorax."
PNEUMO = "Large left pneumothorax."


def _cluster(centre: torch.Tensor, n: int, seed: int, spread: float = 0.05) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return centre + spread * torch.randn(n, len(centre), generator=g)


def test_screened_xray_retrieval_baseline():
    a, b = torch.tensor([1.0, 0.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0, 0.0])
    train = torch.cat([_cluster(a, 12, 0), _cluster(b, 12, 1), _cluster((a + b) / 2, 6, 2, 0.01)])
    reports = [EFFUSION] * 12 + [CLEAR] * 12 + [EFFUSION, CLEAR, PNEUMO, CLEAR, EFFUSION, PNEUMO]
    calibration = RetrievalCalibration.fit(train, rate=0.1, k=5)
    test = torch.stack([a, b, torch.tensor([0.0, 0.0, 0.0, 1.0]), (a + b) / 2])
    out = screened_retrieval_reports(train, reports, test, calibration)
    assert out[0].text == EFFUSION and out[0].findings["pleural_effusion"] == 1.0
    assert stated_findings(out[0].text, {"pleural_effusion": ("pleural effusion",)}) == {"pleural_effusion"}
    assert out[1].text == CLEAR and out[1].findings["pleural_effusion"] == 0.0
    assert out[2].abstained and out[2].text is None and "training_distance" in out[2].reason  # orthogonal: OOD
    assert not out[3].abstained and out[3].text is None  # the mixed neighbours disagree: not assessed
    scores = screened_scores([EFFUSION, CLEAR, CLEAR, CLEAR], out)
    assert scores["abstained"] == 0.25 and scores["not_assessed"] == 0.25 and scores["bleu1"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="2 reports"):
        screened_retrieval_reports(train, reports[:2], test)
