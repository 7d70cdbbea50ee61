"""Tests for alignkit.core.evaluate and alignkit.core.plots against hand-built references."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader, default_collate

from alignkit.core.data import collate_samples

from alignkit.core import evaluate as ev
from alignkit.core import plots
from alignkit.core.registry import EVALUATORS, ConfigError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The probes are many tiny ops; on a busy 2-core machine two intra-op threads make them ~100x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def assert_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 1000, path
    assert path.read_bytes()[:8] == PNG_MAGIC


# --------------------------------------------------------------------------- retrieval


def test_ranks_of_a_hand_built_similarity():
    sim = torch.tensor([[0.9, 0.1, 0.2, 0.0],    # match 0 best           -> rank 1
                        [0.8, 0.3, 0.5, 0.1],    # match 1 below 0 and 2  -> rank 3
                        [0.1, 0.2, 0.3, 0.4],    # match 2 below 3        -> rank 2
                        [0.5, 0.6, 0.7, 0.0]])   # match 3 last           -> rank 4
    assert ev.retrieval_ranks(sim).tolist() == [1, 3, 2, 4]
    m = ev.retrieval_metrics(sim, ks=(1, 2, 3))
    assert m["R@1"] == pytest.approx(0.25)
    assert m["R@2"] == pytest.approx(0.5)
    assert m["R@3"] == pytest.approx(0.75)
    assert m["median_rank"] == pytest.approx(2.5)  # mean of the middle ranks 2 and 3
    assert m["mean_rank"] == pytest.approx(2.5)
    assert ev.retrieval_metrics(sim[1:, 1:], ks=(1,))["median_rank"] == pytest.approx(2.0)  # ranks 2, 2, 3


def test_ties_count_against_the_query():
    sim = torch.tensor([[0.5, 0.5, 0.1],
                        [0.2, 0.2, 0.2],
                        [0.0, 0.3, 0.3]])
    # row 0: one wrong item tied -> 2; row 1: constant row -> last (3); row 2: tied with item 1 -> 2
    assert ev.retrieval_ranks(sim).tolist() == [2, 3, 2]


def test_duplicates_any_correct_item_is_a_hit():
    sim = torch.tensor([[0.1, 0.9, 0.5, 0.4],
                        [0.7, 0.2, 0.6, 0.3]])
    pos = torch.tensor([[True, False, False, True],    # best correct 0.4; 0.9 and 0.5 ahead -> 3
                        [False, True, True, False]])   # best correct 0.6; 0.7 ahead        -> 2
    assert ev.retrieval_ranks(sim, pos).tolist() == [3, 2]
    # gallery index per query (Q != G)
    assert ev.retrieval_ranks(sim, torch.tensor([1, 0])).tolist() == [1, 1]
    assert ev.retrieval_ranks(sim, torch.tensor([3, 3])).tolist() == [3, 3]


def test_retrieval_input_errors():
    with pytest.raises(ValueError, match="no correct gallery item"):
        ev.retrieval_ranks(torch.zeros(2, 2), torch.tensor([[True, False], [False, False]]))
    with pytest.raises(ValueError, match="Q must equal G|query i must match"):
        ev.retrieval_ranks(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="out of range"):
        ev.retrieval_ranks(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="NaN"):
        ev.retrieval_ranks(torch.full((2, 2), math.nan))


def test_recall_at_k_curve():
    sim = torch.tensor([[0.9, 0.1, 0.2, 0.0],
                        [0.8, 0.3, 0.5, 0.1],
                        [0.1, 0.2, 0.3, 0.4],
                        [0.5, 0.6, 0.7, 0.0]])  # ranks 1, 3, 2, 4
    curve = ev.recall_at_k_curve(sim, None, max_k=5)
    assert torch.allclose(curve, torch.tensor([0.25, 0.5, 0.75, 1.0, 1.0]))


def _onehot_embeddings(rows: List[int], dim: int) -> torch.Tensor:
    return F.one_hot(torch.tensor(rows), dim).float()


def test_bidirectional_retrieval_keys_and_groups():
    # a[0], a[1] point the same way; b[i] matches a[i]
    a = _onehot_embeddings([0, 0, 1], 3)
    b = _onehot_embeddings([0, 0, 1], 3)
    m = ev.bidirectional_retrieval(a, b, ks=(1, 2), names=("image", "text"))
    assert set(m) == {f"{d}_{k}" for d in ("image2text", "text2image")
                      for k in ("R@1", "R@2", "median_rank", "mean_rank")}
    # items 0 and 1 tie with each other's pair -> rank 2 when only the pair is correct
    assert m["image2text_R@1"] == pytest.approx(1 / 3)
    assert m["text2image_R@2"] == pytest.approx(1.0)
    # when 0 and 1 share a group, the tie is with a correct item -> all rank 1
    g = torch.tensor([7, 7, 3])
    m = ev.bidirectional_retrieval(a, b, g, g, ks=(1,), names=("image", "text"))
    assert m["image2text_R@1"] == m["text2image_R@1"] == 1.0
    # unpaired sizes with groups: 2 queries against 3 gallery items
    qa, gb = _onehot_embeddings([0, 2], 3), _onehot_embeddings([0, 0, 2], 3)
    r_ab, r_ba = ev.bidirectional_ranks(qa, gb, torch.tensor([5, 6]), torch.tensor([6, 5, 6]))
    # qa0 (group 5): correct gb1 tied with wrong gb0 -> 2; qa1 (group 6): correct gb2 top -> 1
    # gb0 (group 6): correct qa1 scores 0 < wrong qa0 -> 2; gb1, gb2 -> 1
    assert r_ab.tolist() == [2, 1] and r_ba.tolist() == [2, 1, 1]
    with pytest.raises(ValueError, match="both"):
        ev.bidirectional_ranks(a, b, g, None)


def test_num_candidates_blocks():
    torch.manual_seed(0)
    n = 30
    a = F.normalize(torch.randn(n, 8), dim=-1)
    b = F.normalize(a + 0.8 * torch.randn(n, 8), dim=-1)
    full = ev.bidirectional_retrieval(a, b, ks=(1,))
    assert ev.bidirectional_retrieval(a, b, ks=(1,), num_candidates=n) == full
    # galleries of one item hold only the match
    assert ev.bidirectional_retrieval(a, b, ks=(1,), num_candidates=1)["a2b_R@1"] == 1.0
    # smaller galleries are easier, and the result is fixed by the seed
    small = ev.bidirectional_retrieval(a, b, ks=(1,), num_candidates=5, seed=3)
    assert small["a2b_R@1"] > full["a2b_R@1"]
    assert small == ev.bidirectional_retrieval(a, b, ks=(1,), num_candidates=5, seed=3)
    # blocks of 7 -> 4 blocks, 2 items dropped; each block a shuffled slice
    blocks = ev.candidate_blocks(n, 7, seed=0)
    assert [len(x) for x in blocks] == [7] * 4 and len(torch.cat(blocks).unique()) == 28
    with pytest.warns(UserWarning, match="exceeds"):
        assert ev.bidirectional_retrieval(a, b, ks=(1,), num_candidates=100) == full


# --------------------------------------------------------------------------- zero-shot and single-label


def test_class_embeddings_template_ensemble():
    table = {"a cat": torch.tensor([3.0, 0.0, 0.0]), "the cat": torch.tensor([0.0, 1.0, 0.0]),
             "a dog": torch.tensor([0.0, 0.0, 2.0]), "the dog": torch.tensor([0.0, 0.0, 5.0])}
    calls: List[List[str]] = []

    def embed_text(texts: List[str]) -> torch.Tensor:
        calls.append(list(texts))
        return torch.stack([table[t] for t in texts])

    out = ev.class_embeddings(embed_text, ["cat", "dog"], ["a {}", "the {}"], batch_size=3)
    # normalise each prompt, average per class, renormalise
    expected = torch.tensor([[1 / math.sqrt(2), 1 / math.sqrt(2), 0.0], [0.0, 0.0, 1.0]])
    assert torch.allclose(out, expected, atol=1e-6)
    assert calls == [["a cat", "the cat", "a dog"], ["the dog"]]
    with pytest.raises(ValueError, match="placeholder"):
        ev.class_embeddings(embed_text, ["cat"], ["a photo"])


def test_zero_shot_predict_is_cosine():
    x = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    c = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    expected = torch.tensor([[1.0, 0.0], [1 / math.sqrt(2), 1 / math.sqrt(2)]])
    assert torch.allclose(ev.zero_shot_predict(x, c), expected, atol=1e-6)


def test_topk_accuracy_with_ties():
    logits = torch.tensor([[0.1, 0.9, 0.0],    # label 1 top       -> rank 1
                           [0.5, 0.5, 0.0],    # label 0 tied      -> rank 2
                           [0.3, 0.2, 0.1],    # label 2 last      -> rank 3
                           [0.2, 0.7, 0.9]])   # label 1 second    -> rank 2
    labels = torch.tensor([1, 0, 2, 1])
    acc = ev.topk_accuracy(logits, labels, ks=(1, 2, 5))
    assert acc == {"top1": 0.25, "top2": 0.75, "top5": 1.0}


def test_confusion_and_per_class_accuracy():
    pred = torch.tensor([0, 1, 1, 2, 0, 2])
    labels = torch.tensor([0, 1, 0, 2, 0, 1])
    cm = ev.confusion_matrix(pred, labels, 4)
    expected = torch.tensor([[2, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]])
    assert torch.equal(cm, expected)
    acc = ev.per_class_accuracy(pred, labels, 4)
    assert torch.allclose(acc[:3], torch.tensor([2 / 3, 0.5, 1.0])) and math.isnan(acc[3])
    m = ev.classification_metrics(F.one_hot(pred, 4).float(), labels, ks=(1,))
    assert m["top1"] == pytest.approx(4 / 6) and m["mean_per_class_acc"] == pytest.approx((2 / 3 + 0.5 + 1) / 3)


# --------------------------------------------------------------------------- multi-label


def test_binary_auroc_matches_sklearn_with_ties():
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        scores = (torch.rand(60, generator=g) * 5).round() / 5  # heavy ties
        targets = (torch.rand(60, generator=g) < 0.4).float()
        assert ev.binary_auroc(scores, targets) == pytest.approx(roc_auc_score(targets, scores), abs=1e-12)
    fpr, tpr, thr = ev.roc_curve(scores, targets)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1) and thr[0] == math.inf


def test_multilabel_auroc_ignore_and_single_class_columns():
    g = torch.Generator().manual_seed(1)
    scores = torch.rand(40, 4, generator=g)
    targets = (torch.rand(40, 4, generator=g) < 0.5).float()
    targets[torch.rand(40, 4, generator=g) < 0.25] = -1     # ignored entries
    targets[:, 2] = torch.where(targets[:, 2] == 0, 1.0, targets[:, 2])  # column 2: positives and ignores only
    targets[:, 3] = 0.0                                       # column 3: negatives only
    out = ev.multilabel_auroc(scores, targets, ["a", "b", "c", "d"])
    refs = []
    for c, name in enumerate("ab"):
        keep = targets[:, c] >= 0
        refs.append(roc_auc_score(targets[keep, c], scores[keep, c]))
        assert out[name] == pytest.approx(refs[-1], abs=1e-12)
    assert math.isnan(out["c"]) and math.isnan(out["d"])
    assert out["mean"] == pytest.approx(sum(refs) / 2)
    assert math.isnan(ev.multilabel_auroc(scores[:, 3:], targets[:, 3:])["mean"])
    with pytest.raises(ValueError, match="0, 1 or -1"):
        ev.binary_auroc(scores[:, 0], torch.full((40,), 0.5))


def test_f1_at_optimal_threshold_hand_case():
    scores = torch.tensor([[0.9, 0.2], [0.8, 0.1], [0.7, 0.5], [0.6, 0.3], [0.1, 0.4]])
    targets = torch.tensor([[1, 0], [0, 0], [1, -1], [1, 0], [0, 0]]).float()
    out = ev.f1_at_optimal_threshold(scores, targets)
    # class 0 (P=3): t=.9 -> 2/4, t=.8 -> 2/5, t=.7 -> 4/6, t=.6 -> 6/7, t=.1 -> 6/8
    assert out.f1[0] == pytest.approx(6 / 7) and out.threshold[0] == pytest.approx(0.6)
    assert math.isnan(out.f1[1]) and math.isnan(out.threshold[1])  # no positives left after ignoring
    # equal F1 at two thresholds -> the higher one
    # P=2: t=.9 -> 2/3, t=.8 -> 2/4, t=.7 -> 2/5, t=.6 -> 4/6
    tie = ev.f1_at_optimal_threshold(torch.tensor([[0.9], [0.8], [0.7], [0.6]]),
                                     torch.tensor([[1.0], [0.0], [0.0], [1.0]]))
    assert tie.f1[0] == pytest.approx(2 / 3) and tie.threshold[0] == pytest.approx(0.9)


# --------------------------------------------------------------------------- linear probe and kNN


def _separable(n: int, dim: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    w = torch.randn(dim, 3, generator=g)
    return x, (x @ w).argmax(1)


def test_linear_probe_separable_and_random_labels():
    x, y = _separable(600, 8, seed=0)
    res = ev.linear_probe(x[:400], y[:400], x[400:], y[400:], max_epochs=50, weight_decays=(1e-4, 1e-2))
    assert res.metrics["top1"] > 0.95
    assert res.test_scores.shape == (200, 3)
    assert res.metrics["weight_decay"] in (1e-4, 1e-2) and "val_top1" in res.metrics
    again = ev.linear_probe(x[:400], y[:400], x[400:], y[400:], max_epochs=50, weight_decays=(1e-4, 1e-2))
    assert torch.equal(res.test_scores, again.test_scores)

    g = torch.Generator().manual_seed(1)
    rx, ry = torch.randn(800, 16, generator=g), torch.randint(0, 2, (800,), generator=g)
    rand = ev.linear_probe(rx[:400], ry[:400], rx[400:], ry[400:], max_epochs=50, weight_decays=(1e-4, 1e-1))
    assert rand.metrics["top1"] < 0.7


def test_linear_probe_multilabel_and_inference_mode():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(300, 6, generator=g)
    y = (x[:, :3] > 0).float()
    y[torch.rand(300, 3, generator=g) < 0.1] = -1
    with torch.inference_mode():  # as inside Lightning's validation/test loops
        x_inf, y_inf = x.clone(), y.clone()
        res = ev.linear_probe(x_inf[:200], y_inf[:200], x_inf[200:], y_inf[200:], multilabel=True,
                              max_epochs=30, weight_decays=(1e-4,), class_names=["p", "q", "r"])
    assert res.metrics["auroc_mean"] > 0.95 and set(res.metrics) >= {"auroc/p", "auroc/r", "val_auroc_mean"}


def test_knn_weights_and_clusters():
    train_x = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    train_y = torch.tensor([0, 1, 1])
    out = ev.knn_classify(train_x, train_y, torch.tensor([[1.0, 0.0]]), k=2, temperature=0.5)
    w0, w1 = math.exp(1.0 / 0.5), math.exp(0.8 / 0.5)  # item 2 (sim 0) is not among the 2 nearest
    assert torch.allclose(out.probs, torch.tensor([[w0 / (w0 + w1), w1 / (w0 + w1)]]))
    assert out.pred.tolist() == [0]

    g = torch.Generator().manual_seed(3)
    centers = F.normalize(torch.randn(5, 16, generator=g), dim=-1) * 3
    ytr, yte = torch.arange(200) % 5, torch.arange(100) % 5
    xtr = centers[ytr] + 0.5 * torch.randn(200, 16, generator=g)
    xte = centers[yte] + 0.5 * torch.randn(100, 16, generator=g)
    acc = ev.knn_accuracy(xtr, ytr, xte, yte, k=10)
    assert acc["top1"] > 0.95 and acc["top5"] == 1.0
    assert ev.knn_accuracy(xtr, ytr[torch.randperm(200, generator=g)], xte, yte, k=10)["top1"] < 0.45


# --------------------------------------------------------------------------- files and plots


def test_export_load_round_trip(tmp_path: Path):
    emb = torch.randn(4, 3)
    path = ev.export_embeddings(tmp_path / "sub" / "emb.safetensors", image=emb, label=[0, 1, 1, 2],
                                id=["a", "b", "c", "d"], scores=np.arange(4.0))
    out = ev.load_embeddings(path)
    assert set(out) == {"image", "label", "id", "scores"}
    assert torch.equal(out["image"], emb) and out["label"].tolist() == [0, 1, 1, 2]
    assert out["id"] == ["a", "b", "c", "d"] and out["scores"].tolist() == [0.0, 1.0, 2.0, 3.0]
    with pytest.raises(TypeError, match="'bad'"):
        ev.export_embeddings(tmp_path / "x.safetensors", bad={"a": 1})


def test_every_plot_writes_a_png(tmp_path: Path):
    torch.manual_seed(0)
    paths = [
        plots.plot_similarity_matrix(torch.randn(80, 70), tmp_path / "sim.png", labels=[f"s{i}" for i in range(80)]),
        plots.plot_similarity_matrix(np.eye(5), tmp_path / "sim_small.png", labels=list("abcde")),
        plots.plot_confusion_matrix(torch.tensor([[3, 1], [0, 2]]), ["x", "y"], tmp_path / "cm.png"),
        plots.plot_confusion_matrix(torch.randint(0, 9, (30, 30)), [str(i) for i in range(30)],
                                    tmp_path / "cm_big.png", normalize=False),
        plots.plot_recall_at_k({"a2b": torch.linspace(0.2, 1, 50), "b2a": [0.1, 0.5, 0.9]}, tmp_path / "rk.png"),
        plots.plot_roc_curves(torch.rand(30, 3), torch.tensor([[1, 0, 0], [0, 1, 0]] * 15), ["a", "b", "c"],
                              tmp_path / "roc.png"),
    ]
    for p in paths:
        assert_png(p)


# --------------------------------------------------------------------------- evaluators end to end

DIM = 8
CLASSES = ["cat", "dog", "owl"]


class FakeModel:
    """``embed("image", (B, D) tensor)`` normalises the tensor; ``embed("text", list[str])`` looks strings up."""

    def __init__(self, text_table: Dict[str, torch.Tensor]):
        self.text_table = text_table
        self.calls: List[str] = []

    def embed(self, modality: str, inputs):
        self.calls.append(modality)
        if modality == "image":
            return F.normalize(inputs, dim=-1)
        return F.normalize(torch.stack([self.text_table[t] for t in inputs]), dim=-1)


class DictDataset(torch.utils.data.Dataset):
    def __init__(self, items: List[dict], class_names: List[str]):
        self.items, self.class_names = items, class_names

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


@pytest.fixture(scope="module")
def toy():
    """Paired image/text items around 3 class prototypes, a text table and train/test loaders."""
    g = torch.Generator().manual_seed(0)
    protos = F.normalize(torch.randn(3, DIM, generator=g), dim=-1) * 3
    table = {f"a photo of a {c}": protos[i] for i, c in enumerate(CLASSES)}
    splits = {}
    for split, n in (("train", 60), ("test", 30)):
        items = []
        for i in range(n):
            label = i % 3
            image = protos[label] + 0.6 * torch.randn(DIM, generator=g)
            caption = f"{split} caption {i}"
            table[caption] = image + 0.3 * torch.randn(DIM, generator=g)
            multi = torch.tensor([float(label == 0), float(label == 1), -1.0 if i % 5 == 0 else float(label == 2)])
            items.append({"image": image, "text": caption, "label": label, "id": f"{split}{i}", "group": label,
                          "labels": multi})
        splits[split] = DataLoader(DictDataset(items, CLASSES), batch_size=8, collate_fn=default_collate)
    return FakeModel(table), splits["train"], splits["test"]


def test_embed_loader_collects_fields(toy):
    model, _, test = toy
    out = ev.embed_loader(model, test, ["image", "text"], progress=False)
    assert out["image"].shape == out["text"].shape == (30, DIM)
    assert out["label"].tolist() == [i % 3 for i in range(30)] and out["id"][:2] == ["test0", "test1"]
    assert out["group"].dtype == torch.int64
    with pytest.raises(KeyError, match="point"):
        ev.embed_loader(model, test, ["point"], progress=False)


def test_evaluator_registry_names():
    assert {"retrieval", "zero_shot", "linear_probe", "knn"} <= set(EVALUATORS.names())
    with pytest.raises(ConfigError, match="num_candidate"):
        EVALUATORS.build("retrieval", num_candidate=5)


def test_retrieval_evaluator(toy, tmp_path: Path):
    model, train, test = toy
    evaluator = EVALUATORS.build("retrieval", query="text", gallery="image", ks=[1, 5], progress=False)
    m = evaluator(model, train, test, tmp_path)
    assert set(m) == {f"retrieval/{d}_{k}" for d in ("text2image", "image2text")
                      for k in ("R@1", "R@5", "median_rank", "mean_rank")}
    assert m["retrieval/text2image_R@1"] > 0.7 and m["retrieval/image2text_R@5"] > 0.9
    assert_png(tmp_path / "retrieval_text2image_similarity.png")
    assert_png(tmp_path / "retrieval_text_image_recall_at_k.png")
    # matching by label makes every same-class item correct -> at least as good
    by_label = ev.RetrievalEvaluator(match_key="label", progress=False)(model, train, test, tmp_path)
    assert by_label["retrieval/text2image_R@1"] >= m["retrieval/text2image_R@1"]
    assert by_label["retrieval/text2image_R@10"] == 1.0
    blocks = ev.RetrievalEvaluator(num_candidates=10, ks=(1,), progress=False)(model, train, test, tmp_path)
    assert blocks["retrieval/text2image_R@1"] >= m["retrieval/text2image_R@1"]
    with pytest.raises(ConfigError, match="match_key"):
        ev.RetrievalEvaluator(match_key="study", progress=False)(model, train, test, tmp_path)


def test_zero_shot_evaluator(toy, tmp_path: Path):
    model, train, test = toy
    m = ev.ZeroShotEvaluator(templates=["a photo of a {}"], progress=False)(model, train, test, tmp_path)
    assert set(m) == {"zero_shot/top1", "zero_shot/top5", "zero_shot/mean_per_class_acc"}
    assert m["zero_shot/top1"] > 0.9 and m["zero_shot/top5"] == 1.0
    assert_png(tmp_path / "zero_shot_confusion.png")

    multi = ev.ZeroShotEvaluator(templates=["a photo of a {}"], label_key="labels", multilabel=True,
                                 class_names=CLASSES, progress=False)(model, train, test, tmp_path / "ml")
    assert multi["zero_shot/auroc_mean"] > 0.9 and "zero_shot/auroc/owl" in multi
    assert_png(tmp_path / "ml" / "zero_shot_roc.png")


def test_linear_probe_and_knn_evaluators(toy, tmp_path: Path):
    model, train, test = toy
    lp = ev.LinearProbeEvaluator(max_epochs=30, weight_decays=[1e-3, 1e-1], progress=False)(
        model, train, test, tmp_path)
    assert lp["linear_probe/top1"] > 0.9 and "linear_probe/weight_decay" in lp
    assert_png(tmp_path / "linear_probe_confusion.png")
    knn = EVALUATORS.build("knn", k=5, progress=False)(model, train, test, tmp_path)
    assert set(knn) == {"knn/top1", "knn/top5", "knn/mean_per_class_acc"} and knn["knn/top1"] > 0.9
    assert_png(tmp_path / "knn_confusion.png")


def test_embedding_export_evaluator_round_trip(tmp_path) -> None:
    from alignkit.core.evaluate import EmbeddingExportEvaluator, load_embeddings

    class Fake:
        def embed(self, modality, inputs):
            x = inputs.float() if isinstance(inputs, torch.Tensor) else torch.tensor([[float(len(t)), 1.0] for t in inputs])
            return torch.nn.functional.normalize(x, dim=-1)

    samples = [{"image": torch.tensor([float(i), 1.0]), "text": "x" * (i + 1), "label": i % 2, "id": f"s{i}"}
               for i in range(5)]
    loader = torch.utils.data.DataLoader(samples, batch_size=2, collate_fn=collate_samples)
    metrics = EmbeddingExportEvaluator(progress=False)(Fake(), None, loader, tmp_path)
    assert metrics == {"export_embeddings/count": 5.0}
    back = load_embeddings(tmp_path / "embeddings.safetensors")
    assert back["image"].shape == (5, 2) and back["id"] == [f"s{i}" for i in range(5)]
    assert back["label"].tolist() == [0, 1, 0, 1, 0]
