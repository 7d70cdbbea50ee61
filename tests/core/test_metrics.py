"""Tests for alignkit.core.metrics against hand-built references."""
from __future__ import annotations

import math
from typing import List

import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from alignkit.core import metrics


# --------------------------------------------------------------------------- retrieval


def test_ranks_of_a_hand_built_similarity():
    sim = torch.tensor([[0.9, 0.1, 0.2, 0.0],    # match 0 best           -> rank 1
                        [0.8, 0.3, 0.5, 0.1],    # match 1 below 0 and 2  -> rank 3
                        [0.1, 0.2, 0.3, 0.4],    # match 2 below 3        -> rank 2
                        [0.5, 0.6, 0.7, 0.0]])   # match 3 last           -> rank 4
    assert metrics.retrieval_ranks(sim).tolist() == [1, 3, 2, 4]
    m = metrics.retrieval_metrics(sim, ks=(1, 2, 3))
    assert m["R@1"] == pytest.approx(0.25)
    assert m["R@2"] == pytest.approx(0.5)
    assert m["R@3"] == pytest.approx(0.75)
    assert m["median_rank"] == pytest.approx(2.5)  # mean of the middle ranks 2 and 3
    assert m["mean_rank"] == pytest.approx(2.5)
    assert metrics.retrieval_metrics(sim[1:, 1:], ks=(1,))["median_rank"] == pytest.approx(2.0)  # ranks 2, 2, 3


def test_ties_count_against_the_query():
    sim = torch.tensor([[0.5, 0.5, 0.1],
                        [0.2, 0.2, 0.2],
                        [0.0, 0.3, 0.3]])
    # row 0: one wrong item tied -> 2; row 1: constant row -> last (3); row 2: tied with item 1 -> 2
    assert metrics.retrieval_ranks(sim).tolist() == [2, 3, 2]


def test_duplicates_any_correct_item_is_a_hit():
    sim = torch.tensor([[0.1, 0.9, 0.5, 0.4],
                        [0.7, 0.2, 0.6, 0.3]])
    pos = torch.tensor([[True, False, False, True],    # best correct 0.4; 0.9 and 0.5 ahead -> 3
                        [False, True, True, False]])   # best correct 0.6; 0.7 ahead        -> 2
    assert metrics.retrieval_ranks(sim, pos).tolist() == [3, 2]
    # gallery index per query (Q != G)
    assert metrics.retrieval_ranks(sim, torch.tensor([1, 0])).tolist() == [1, 1]
    assert metrics.retrieval_ranks(sim, torch.tensor([3, 3])).tolist() == [3, 3]


def test_retrieval_input_errors():
    with pytest.raises(ValueError, match="no correct gallery item"):
        metrics.retrieval_ranks(torch.zeros(2, 2), torch.tensor([[True, False], [False, False]]))
    with pytest.raises(ValueError, match="Q must equal G|query i must match"):
        metrics.retrieval_ranks(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="out of range"):
        metrics.retrieval_ranks(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="NaN"):
        metrics.retrieval_ranks(torch.full((2, 2), math.nan))


def test_recall_at_k_curve():
    sim = torch.tensor([[0.9, 0.1, 0.2, 0.0],
                        [0.8, 0.3, 0.5, 0.1],
                        [0.1, 0.2, 0.3, 0.4],
                        [0.5, 0.6, 0.7, 0.0]])  # ranks 1, 3, 2, 4
    curve = metrics.recall_at_k_curve(sim, None, max_k=5)
    assert torch.allclose(curve, torch.tensor([0.25, 0.5, 0.75, 1.0, 1.0]))


def _onehot_embeddings(rows: List[int], dim: int) -> torch.Tensor:
    return F.one_hot(torch.tensor(rows), dim).float()


def test_bidirectional_retrieval_keys_and_groups():
    # a[0], a[1] point the same way; b[i] matches a[i]
    a = _onehot_embeddings([0, 0, 1], 3)
    b = _onehot_embeddings([0, 0, 1], 3)
    m = metrics.bidirectional_retrieval(a, b, ks=(1, 2), names=("image", "text"))
    assert set(m) == {f"{d}_{k}" for d in ("image2text", "text2image")
                      for k in ("R@1", "R@2", "median_rank", "mean_rank")}
    # items 0 and 1 tie with each other's pair -> rank 2 when only the pair is correct
    assert m["image2text_R@1"] == pytest.approx(1 / 3)
    assert m["text2image_R@2"] == pytest.approx(1.0)
    # when 0 and 1 share a group, the tie is with a correct item -> all rank 1
    g = torch.tensor([7, 7, 3])
    m = metrics.bidirectional_retrieval(a, b, g, g, ks=(1,), names=("image", "text"))
    assert m["image2text_R@1"] == m["text2image_R@1"] == 1.0
    # unpaired sizes with groups: 2 queries against 3 gallery items
    qa, gb = _onehot_embeddings([0, 2], 3), _onehot_embeddings([0, 0, 2], 3)
    r_ab, r_ba = metrics.bidirectional_ranks(qa, gb, torch.tensor([5, 6]), torch.tensor([6, 5, 6]))
    # qa0 (group 5): correct gb1 tied with wrong gb0 -> 2; qa1 (group 6): correct gb2 top -> 1
    # gb0 (group 6): correct qa1 scores 0 < wrong qa0 -> 2; gb1, gb2 -> 1
    assert r_ab.tolist() == [2, 1] and r_ba.tolist() == [2, 1, 1]
    with pytest.raises(ValueError, match="both"):
        metrics.bidirectional_ranks(a, b, g, None)


def test_num_candidates_blocks():
    torch.manual_seed(0)
    n = 30
    a = F.normalize(torch.randn(n, 8), dim=-1)
    b = F.normalize(a + 0.8 * torch.randn(n, 8), dim=-1)
    full = metrics.bidirectional_retrieval(a, b, ks=(1,))
    assert metrics.bidirectional_retrieval(a, b, ks=(1,), num_candidates=n) == full
    # galleries of one item hold only the match
    assert metrics.bidirectional_retrieval(a, b, ks=(1,), num_candidates=1)["a2b_R@1"] == 1.0
    # smaller galleries are easier, and the result is fixed by the seed
    small = metrics.bidirectional_retrieval(a, b, ks=(1,), num_candidates=5, seed=3)
    assert small["a2b_R@1"] > full["a2b_R@1"]
    assert small == metrics.bidirectional_retrieval(a, b, ks=(1,), num_candidates=5, seed=3)
    # blocks of 7 -> 4 blocks, 2 items dropped; each block a shuffled slice
    blocks = metrics.candidate_blocks(n, 7, seed=0)
    assert [len(x) for x in blocks] == [7] * 4 and len(torch.cat(blocks).unique()) == 28
    with pytest.warns(UserWarning, match="exceeds"):
        assert metrics.bidirectional_retrieval(a, b, ks=(1,), num_candidates=100) == full


# --------------------------------------------------------------------------- zero-shot and single-label


def test_class_embeddings_template_ensemble():
    table = {"a cat": torch.tensor([3.0, 0.0, 0.0]), "the cat": torch.tensor([0.0, 1.0, 0.0]),
             "a dog": torch.tensor([0.0, 0.0, 2.0]), "the dog": torch.tensor([0.0, 0.0, 5.0])}
    calls: List[List[str]] = []

    def embed_text(texts: List[str]) -> torch.Tensor:
        calls.append(list(texts))
        return torch.stack([table[t] for t in texts])

    out = metrics.class_embeddings(embed_text, ["cat", "dog"], ["a {}", "the {}"], batch_size=3)
    # normalise each prompt, average per class, renormalise
    expected = torch.tensor([[1 / math.sqrt(2), 1 / math.sqrt(2), 0.0], [0.0, 0.0, 1.0]])
    assert torch.allclose(out, expected, atol=1e-6)
    assert calls == [["a cat", "the cat", "a dog"], ["the dog"]]
    with pytest.raises(ValueError, match="placeholder"):
        metrics.class_embeddings(embed_text, ["cat"], ["a photo"])


def test_zero_shot_predict_is_cosine():
    x = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    c = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    expected = torch.tensor([[1.0, 0.0], [1 / math.sqrt(2), 1 / math.sqrt(2)]])
    assert torch.allclose(metrics.zero_shot_predict(x, c), expected, atol=1e-6)


def test_topk_accuracy_with_ties():
    logits = torch.tensor([[0.1, 0.9, 0.0],    # label 1 top       -> rank 1
                           [0.5, 0.5, 0.0],    # label 0 tied      -> rank 2
                           [0.3, 0.2, 0.1],    # label 2 last      -> rank 3
                           [0.2, 0.7, 0.9]])   # label 1 second    -> rank 2
    labels = torch.tensor([1, 0, 2, 1])
    acc = metrics.topk_accuracy(logits, labels, ks=(1, 2, 5))
    assert acc == {"top1": 0.25, "top2": 0.75, "top5": 1.0}


def test_confusion_and_per_class_accuracy():
    pred = torch.tensor([0, 1, 1, 2, 0, 2])
    labels = torch.tensor([0, 1, 0, 2, 0, 1])
    cm = metrics.confusion_matrix(pred, labels, 4)
    expected = torch.tensor([[2, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]])
    assert torch.equal(cm, expected)
    acc = metrics.per_class_accuracy(pred, labels, 4)
    assert torch.allclose(acc[:3], torch.tensor([2 / 3, 0.5, 1.0])) and math.isnan(acc[3])
    m = metrics.classification_metrics(F.one_hot(pred, 4).float(), labels, ks=(1,))
    assert m["top1"] == pytest.approx(4 / 6) and m["mean_per_class_acc"] == pytest.approx((2 / 3 + 0.5 + 1) / 3)


# --------------------------------------------------------------------------- multi-label


def test_binary_auroc_matches_sklearn_with_ties():
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        scores = (torch.rand(60, generator=g) * 5).round() / 5  # heavy ties
        targets = (torch.rand(60, generator=g) < 0.4).float()
        assert metrics.binary_auroc(scores, targets) == pytest.approx(roc_auc_score(targets, scores), abs=1e-12)
    fpr, tpr, thr = metrics.roc_curve(scores, targets)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1) and thr[0] == math.inf


def test_multilabel_auroc_ignore_and_single_class_columns():
    g = torch.Generator().manual_seed(1)
    scores = torch.rand(40, 4, generator=g)
    targets = (torch.rand(40, 4, generator=g) < 0.5).float()
    targets[torch.rand(40, 4, generator=g) < 0.25] = -1     # ignored entries
    targets[:, 2] = torch.where(targets[:, 2] == 0, 1.0, targets[:, 2])  # column 2: positives and ignores only
    targets[:, 3] = 0.0                                       # column 3: negatives only
    out = metrics.multilabel_auroc(scores, targets, ["a", "b", "c", "d"])
    refs = []
    for c, name in enumerate("ab"):
        keep = targets[:, c] >= 0
        refs.append(roc_auc_score(targets[keep, c], scores[keep, c]))
        assert out[name] == pytest.approx(refs[-1], abs=1e-12)
    assert math.isnan(out["c"]) and math.isnan(out["d"])
    assert out["mean"] == pytest.approx(sum(refs) / 2)
    assert math.isnan(metrics.multilabel_auroc(scores[:, 3:], targets[:, 3:])["mean"])
    with pytest.raises(ValueError, match="0, 1 or -1"):
        metrics.binary_auroc(scores[:, 0], torch.full((40,), 0.5))


def test_f1_at_optimal_threshold_hand_case():
    scores = torch.tensor([[0.9, 0.2], [0.8, 0.1], [0.7, 0.5], [0.6, 0.3], [0.1, 0.4]])
    targets = torch.tensor([[1, 0], [0, 0], [1, -1], [1, 0], [0, 0]]).float()
    out = metrics.f1_at_optimal_threshold(scores, targets)
    # class 0 (P=3): t=.9 -> 2/4, t=.8 -> 2/5, t=.7 -> 4/6, t=.6 -> 6/7, t=.1 -> 6/8
    assert out.f1[0] == pytest.approx(6 / 7) and out.threshold[0] == pytest.approx(0.6)
    assert math.isnan(out.f1[1]) and math.isnan(out.threshold[1])  # no positives left after ignoring
    # equal F1 at two thresholds -> the higher one
    # P=2: t=.9 -> 2/3, t=.8 -> 2/4, t=.7 -> 2/5, t=.6 -> 4/6
    tie = metrics.f1_at_optimal_threshold(torch.tensor([[0.9], [0.8], [0.7], [0.6]]),
                                          torch.tensor([[1.0], [0.0], [0.0], [1.0]]))
    assert tie.f1[0] == pytest.approx(2 / 3) and tie.threshold[0] == pytest.approx(0.9)
