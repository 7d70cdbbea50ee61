"""Dice, BLEU-1..4 and ROUGE-L on hand-built cases whose values are worked out in the tests."""
from __future__ import annotations

import math

import pytest
import torch

from alignkit.domains.medical.metrics import bleu_scores, dice_score, mean_dice, report_tokens, rouge_l


# --------------------------------------------------------------------------- Dice
def _mask(*cells, shape=(4, 4)) -> torch.Tensor:
    m = torch.zeros(shape, dtype=torch.bool)
    for y, x in cells:
        m[y, x] = True
    return m


def test_dice_hand_cases():
    square = _mask((0, 0), (0, 1), (1, 0), (1, 1))
    other = _mask((3, 3), (3, 2))
    empty = _mask()
    partial_pred = _mask((0, 0), (0, 1), (1, 0), (2, 2))  # 4 pixels, 3 of them on the target
    partial_target = _mask((0, 0), (0, 1), (1, 0), (1, 1), (3, 0), (3, 1))  # 6 pixels
    pred = torch.stack([square, square, empty, empty, square, partial_pred])
    target = torch.stack([square, other, empty, square, empty, partial_target])
    expected = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 2 * 3 / (4 + 6)], dtype=torch.float64)
    torch.testing.assert_close(dice_score(pred, target), expected)
    assert mean_dice(pred, target) == pytest.approx(expected.mean().item())
    # the empty-empty convention is a parameter
    assert dice_score(pred, target, empty_value=0.0)[2] == 0.0


def test_dice_rejects_soft_or_mismatched_masks():
    with pytest.raises(TypeError, match="threshold first"):
        dice_score(torch.rand(2, 4, 4), torch.zeros(2, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="one shape"):
        dice_score(torch.zeros(2, 4, 4, dtype=torch.bool), torch.zeros(2, 4, 5, dtype=torch.bool))


# --------------------------------------------------------------------------- BLEU
HYPOTHESES = ["No pleural effusion.", "The the heart is normal"]
REFERENCES = [["There is no pleural effusion.", "No effusion seen"], ["The heart is normal in size."]]


def test_tokenisation_lowercases_and_splits_on_non_alphanumerics():
    assert report_tokens("No pleural-effusion; T11/T12 stable.\n") == ["no", "pleural", "effusion", "t11", "t12",
                                                                      "stable"]


def test_bleu_hand_computed_corpus():
    # hypothesis 1 "no pleural effusion" (3 words): every 1/2/3-gram is in reference 1, no 4-grams;
    #   closest reference length: |5 - 3| = 2 vs |3 - 3| = 0 -> 3.
    # hypothesis 2 "the the heart is normal" (5 words) vs "the heart is normal in size" (6 words):
    #   unigrams: "the" x2 clipped to 1 -> 4/5; bigrams: "the the" misses -> 3/4;
    #   trigrams: "the the heart" misses -> 2/3; 4-grams: "the heart is normal" hits -> 1/2.
    p = [(3 + 4) / (3 + 5), (2 + 3) / (2 + 4), (1 + 2) / (1 + 3), (0 + 1) / (0 + 2)]
    c, r = 3 + 5, 3 + 6
    bp = math.exp(1 - r / c)  # c < r
    expected = {f"bleu{n}": bp * math.exp(sum(math.log(x) for x in p[:n]) / n) for n in range(1, 5)}
    got = bleu_scores(REFERENCES, HYPOTHESES)
    assert got.keys() == expected.keys()
    for key in expected:
        assert got[key] == pytest.approx(expected[key], abs=1e-12)
    assert bleu_scores(REFERENCES, HYPOTHESES, max_n=2) == pytest.approx({k: expected[k] for k in ("bleu1", "bleu2")})


def test_bleu_closest_reference_prefers_the_shorter_on_ties():
    # hypothesis length 4, references of 3 and 5 words: the shorter (3) is used, so c > r and BP = 1
    assert bleu_scores([["a b c", "a b c d e"]], ["a b c d"])["bleu1"] == pytest.approx(1.0)
    # a single 5-word reference would give BP = exp(1 - 5/4)
    assert bleu_scores(["a b c d e"], ["a b c d"])["bleu1"] == pytest.approx(math.exp(-0.25))


def test_bleu_identical_and_disjoint():
    texts = ["Heart size is normal.", "There is a small left pleural effusion."]
    assert bleu_scores(texts, texts) == pytest.approx({"bleu1": 1.0, "bleu2": 1.0, "bleu3": 1.0, "bleu4": 1.0})
    assert bleu_scores(texts, ["lungs clear", "no pneumothorax seen today"]) == {f"bleu{n}": 0.0 for n in range(1, 5)}
    # unigrams match but no bigram does: BLEU-1 > 0, BLEU-2.. = 0 (no smoothing)
    partial = bleu_scores(["normal heart size"], ["size heart normal"])
    assert partial["bleu1"] == pytest.approx(1.0) and partial["bleu2"] == 0.0 and partial["bleu4"] == 0.0
    assert bleu_scores(["a b"], [""]) == {f"bleu{n}": 0.0 for n in range(1, 5)}


def test_bleu_input_errors():
    with pytest.raises(ValueError, match="one reference"):
        bleu_scores(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="hypothesis 0 has an empty list of references"):
        bleu_scores([[]], ["a"])


def test_bleu_matches_nltk_corpus_bleu():
    nltk_bleu = pytest.importorskip(
        "nltk.translate.bleu_score",
        reason="nltk is not installed in this environment (the hand-computed BLEU tests cover the definition)")
    # nltk floors a short hypothesis's n-gram count at 1 and smooths zero precisions to a tiny number:
    # compare on hypotheses of >= 4 words with some match at every order, where the definitions agree
    references = [["There is no pleural effusion.", "No effusion seen"], ["The heart is normal in size."],
                  ["Small left pleural effusion with adjacent atelectasis."]]
    hypotheses = ["There is no effusion seen", "The the heart is normal", "Small pleural effusion with atelectasis"]
    refs = [[report_tokens(r) for r in group] for group in references]
    hyps = [report_tokens(h) for h in hypotheses]
    got = bleu_scores(references, hypotheses)
    for n in range(1, 5):
        assert got[f"bleu{n}"] == pytest.approx(nltk_bleu.corpus_bleu(refs, hyps, weights=(1.0 / n,) * n))


# --------------------------------------------------------------------------- ROUGE-L
def test_rouge_l_hand_computed_lcs():
    # LCS("the heart size is normal", "heart size is within normal limits") = heart size is normal = 4
    p, r, beta = 4 / 5, 4 / 6, 1.2
    single = (1 + beta ** 2) * p * r / (r + beta ** 2 * p)
    assert rouge_l(["Heart size is within normal limits."], ["The heart size is normal."]) == pytest.approx(single)
    # several references: precision and recall are maximised separately (as pycocoevalcap does):
    # "no effusion" gives LCS 2 -> P 2/3, R 1; the 7-word reference gives LCS 3 -> P 1, R 3/7; F(1, 1) = 1
    multi = rouge_l([["No effusion.", "There is no pleural effusion or pneumothorax."]], ["No pleural effusion."])
    assert multi == pytest.approx(1.0)
    corpus = rouge_l([["Heart size is within normal limits."], ["No effusion.", "There is no pleural effusion or "
                                                                "pneumothorax."]],
                     ["The heart size is normal.", "No pleural effusion."])
    assert corpus == pytest.approx((single + 1.0) / 2)
    # beta = 1 is the plain harmonic mean
    assert rouge_l(["Heart size is within normal limits."], ["The heart size is normal."],
                   beta=1.0) == pytest.approx(2 * p * r / (p + r))


def test_rouge_l_identical_and_disjoint():
    assert rouge_l(["lungs are clear"], ["Lungs are clear."]) == pytest.approx(1.0)
    assert rouge_l(["lungs are clear"], ["no pneumothorax"]) == 0.0
    assert rouge_l(["lungs are clear"], [""]) == 0.0
