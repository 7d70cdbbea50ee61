"""BenchX-style evaluation: label subsets, linear-head fine-tuning, zero-shot prompt scoring, retrieval,
segmentation, report generation and the comparison table, on tiny synthetic sample dicts whose labels are
visible patterns (class 0: a bright square top-left; class 1: stripes bottom-right)."""
from __future__ import annotations

import dataclasses
import json
import math
import statistics
from typing import Dict, List, Sequence

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from alignkit.core.collate import collate_samples
from alignkit.core.module import AlignmentModule
from alignkit.core.registry import ENCODERS
from alignkit.domains.medical.metrics import bleu_scores
from alignkit.domains.medical.xray.bench.classification import (f1_at_thresholds, finetune_classification, mean_std,
                                                            summarize)
from alignkit.domains.medical.xray.bench.generation import (ReportDecoder, ReportVocabulary, retrieval_report_baseline,
                                                            sinusoidal_positions, train_report_decoder)
from alignkit.domains.medical.xray.bench.retrieval import retrieval_report_image
from alignkit.domains.medical.xray.bench.run import BenchXConfig, run_benchx
from alignkit.domains.medical.xray.bench.segmentation import (SegmentationHead, choose_min_areas,
                                                              finetune_segmentation, remove_small_masks)
from alignkit.domains.medical.xray.bench.shared import label_subset
from alignkit.domains.medical.xray.bench.table import BenchTable
from alignkit.domains.medical.xray.bench.zero_shot import (CHEXPERT_PROMPTS, NORMAL_STATEMENTS,
                                                           SYNTHETIC_FINDING_PROMPTS, default_prompts, prompt_sets,
                                                           zero_shot_multilabel)
from alignkit.domains.medical.xray.records import CHEXPERT_LABELS

SIZE = 16
TINY_BERT = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
             "intermediate_size": 64, "max_position_embeddings": 64}


@pytest.fixture(autouse=True)
def setup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    torch.manual_seed(0)


def pattern_samples(n: int, seed: int, ignore_fraction: float = 0.1) -> List[Dict]:
    """Samples with labels (2,): class 0 = bright 5x5 square top-left, class 1 = stripes bottom-right;
    masks (2, S, S) mark the patterns; some class-1 labels are -1 (ignored)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        image = 0.1 * torch.rand(1, SIZE, SIZE, generator=g)
        masks = torch.zeros(2, SIZE, SIZE, dtype=torch.bool)
        labels = (torch.rand(2, generator=g) < 0.4).float()
        if labels[0]:
            masks[0, 1:6, 1:6] = True
        if labels[1]:
            masks[1, 10:15:2, 9:15] = True
        image[0][masks[0]] = 1.0
        image[0][masks[1]] = 0.8
        words = ["bright square top left." if labels[0] else "no square.",
                 "stripes bottom right." if labels[1] else "no stripes."]
        if torch.rand(1, generator=g) < ignore_fraction:
            labels[1] = -1
        out.append({"image": image, "text": " ".join(words), "labels": labels, "id": f"s{seed}-{i}",
                    "group": i, "masks": masks})
    return out


@pytest.fixture(scope="module")
def splits() -> Dict[str, List[Dict]]:
    return {"train": pattern_samples(160, 0), "val": pattern_samples(60, 1), "test": pattern_samples(80, 2)}


def small_cnn() -> torch.nn.Module:
    torch.manual_seed(0)
    return ENCODERS.build("small-cnn", in_channels=1, widths=[8, 16], pool="avgmax")


# --------------------------------------------------------------------------- label subsets
def test_label_subset_keeps_a_positive_per_class_and_has_the_stated_size() -> None:
    labels = torch.zeros(50, 3)
    labels[:20, 0] = 1
    labels[47, 1] = 1  # a rare class: one positive
    labels[:, 2] = -1  # a class without positives is skipped
    for seed in range(5):
        idx = label_subset(labels, 0.1, seed)
        assert len(idx) == 5 and len(set(idx.tolist())) == 5  # round(0.1 * 50)
        assert 47 in idx.tolist() and bool((labels[idx, 0] == 1).any())
    assert label_subset(labels, 0.1, 0).tolist() != label_subset(labels, 0.1, 1).tolist()
    assert label_subset(labels, 0.1, 3).tolist() == label_subset(labels, 0.1, 3).tolist()
    assert label_subset(labels, 1.0, 0).tolist() == list(range(50))
    # 1 % of 50 rounds to 0 -> 1 item, but two classes need a positive: the subset grows to 2
    tiny = label_subset(labels, 0.01, 0)
    assert len(tiny) == 2 and 47 in tiny.tolist()
    with pytest.raises(ValueError, match="fraction"):
        label_subset(labels, 0.0, 0)


def test_f1_at_thresholds_by_hand() -> None:
    scores = torch.tensor([[0.9, 0.2], [0.6, 0.8], [0.4, 0.1], [0.1, 0.7]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0], [0.0, 0.0]])
    f1 = f1_at_thresholds(scores, targets, torch.tensor([0.5, math.nan]))
    # class 0: predicted {0, 1}, true {0, 2}: TP 1, FP 1, FN 1 -> 2 / 4
    assert f1[0].item() == pytest.approx(0.5) and math.isnan(f1[1].item())
    f1 = f1_at_thresholds(scores, targets, torch.tensor([0.3, 0.75]))
    # class 0: predicted {0, 1, 2}: TP 2, FP 1 -> 4 / 5; class 1: predicted {1} (row 2 ignored), TP 1 -> 1
    assert f1.tolist() == pytest.approx([0.8, 1.0])


def test_mean_std_is_the_sample_std() -> None:
    assert mean_std([0.5, 0.7, 0.9]) == pytest.approx((0.7, statistics.stdev([0.5, 0.7, 0.9])))
    assert mean_std([0.6]) == (0.6, 0.0) and mean_std([0.6, math.nan]) == (0.6, 0.0)


# --------------------------------------------------------------------------- classification
def test_linear_head_beats_chance_and_runs_are_bookkept(splits, tmp_path) -> None:
    encoder = small_cnn()
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    results = finetune_classification(encoder, splits["train"], splits["val"], splits["test"], fractions=(0.1, 1.0),
                                      seeds=(0, 1), epochs=60, lr=1e-2, batch_size=32, patience=10,
                                      class_names=["square", "stripes"], out_dir=tmp_path)
    assert [(r.fraction, r.seed) for r in results.runs] == [(0.1, 0), (0.1, 1), (1.0, 0), (1.0, 1)]
    labels = torch.stack([s["labels"] for s in splits["train"]])
    for run in results.runs:
        assert run.train_size == len(label_subset(labels, run.fraction, run.seed))
        assert 1 <= run.epochs <= 60 and run.thresholds.shape == (2,)
        assert set(run.test_auroc_per_class) == {"square", "stripes"}
    assert [r.train_size for r in results.runs] == [16, 16, 160, 160]
    full = [r for r in results.runs if r.fraction == 1.0]
    assert all(r.test_auroc > 0.8 for r in full), [r.test_auroc for r in full]
    summary = summarize(results)
    assert list(summary) == [0.1, 1.0]
    for fraction, runs in ((0.1, results.runs[:2]), (1.0, full)):
        assert summary[fraction]["auroc"] == pytest.approx(mean_std([r.test_auroc for r in runs]))
        assert summary[fraction]["f1"][0] == pytest.approx(statistics.fmean(r.test_f1 for r in runs))
    assert summary[1.0]["train_size"] == (160, 0.0)
    assert [p.name for p in results.figures] == ["classification_roc_10pct.png", "classification_roc_100pct.png"]
    assert all(p.stat().st_size > 0 for p in results.figures)
    assert all(torch.equal(v, before[k]) for k, v in encoder.state_dict().items())  # frozen: untouched


def test_full_finetuning_trains_a_copy(splits) -> None:
    encoder = small_cnn()
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    train = DataLoader(splits["train"][:64], batch_size=8, collate_fn=collate_samples)  # a loader works too
    results = finetune_classification(encoder, train, splits["val"][:32], splits["test"][:32],
                                      fractions=(1.0,), seeds=(0,), epochs=2, lr=1e-2, batch_size=32,
                                      freeze_encoder=False)
    assert len(results.runs) == 1 and results.runs[0].train_size == 64
    assert all(torch.equal(v, before[k]) for k, v in encoder.state_dict().items())


def test_samples_without_labels_are_reported() -> None:
    data = [{"image": torch.zeros(1, SIZE, SIZE), "label": 1}]
    with pytest.raises(KeyError, match=r"lacks \['labels'\]"):
        finetune_classification(small_cnn(), data, data, data, fractions=(1.0,), seeds=(0,))


# --------------------------------------------------------------------------- zero-shot and retrieval
class LookupModel:
    """``embed("image", x) = x`` (rows of the batch) and ``embed("text", texts)`` = a fixed table."""

    def __init__(self, table: Dict[str, Sequence[float]]):
        self.table = {k: torch.tensor(v, dtype=torch.float32) for k, v in table.items()}

    def embed(self, modality: str, inputs) -> torch.Tensor:
        if modality == "image":
            return F.normalize(inputs.float(), dim=-1)
        return F.normalize(torch.stack([self.table[t] for t in inputs]), dim=-1)


def test_zero_shot_scores_positive_against_negative_prompts() -> None:
    thetas = [0.1, 0.3, 0.5, 0.7, 0.9, 1.1]
    labels_a, labels_b = [1, 1, 0, 1, 0, 0], [0, 0, 1, -1, 1, 1]
    data = [{"image": torch.tensor([math.cos(t), math.sin(t)]), "labels": torch.tensor([a, b], dtype=torch.float32)}
            for t, a, b in zip(thetas, labels_a, labels_b)]
    model = LookupModel({"a1": [1, 0.1], "a2": [1, -0.1], "x": [0, 1], "b": [0, 1], "y": [1, 0]})
    prompts = {"a": {"positive": ["a1", "a2"], "negative": ["x"]}, "b": {"positive": ["b"], "negative": ["y"]}}
    result = zero_shot_multilabel(model, data, prompts)
    # class a: score cos - sin falls with theta; positives at ranks 1, 2, 4 of 6 -> 8 of 9 pairs ordered
    assert result.auroc["a"] == pytest.approx(8 / 9)
    assert result.auroc["b"] == pytest.approx(1.0)  # sin - cos rises; the -1 label is ignored
    assert result.auroc["mean"] == pytest.approx((8 / 9 + 1) / 2)
    t = thetas[0]  # softmax over (positive, negative) cosine similarities
    expected = torch.softmax(torch.tensor([math.cos(t), math.sin(t)]), 0)[0]
    assert result.probs[0, 0].item() == pytest.approx(expected.item(), abs=1e-6)


def test_default_prompt_sets() -> None:
    sets = prompt_sets(SYNTHETIC_FINDING_PROMPTS)
    assert list(sets) == ["cardiomegaly", "pleural_effusion", "pneumothorax", "nodule", "consolidation", "edema"]
    assert all(s["negative"] == list(NORMAL_STATEMENTS) for s in sets.values())
    chexpert = prompt_sets(CHEXPERT_PROMPTS)
    assert tuple(chexpert) == CHEXPERT_LABELS
    assert "No acute cardiopulmonary process." not in chexpert["No Finding"]["negative"]
    assert "Cardiomegaly." in chexpert["No Finding"]["negative"]
    assert default_prompts() == sets
    assert default_prompts(["Edema", "nodule"]) == {"Edema": chexpert["Edema"], "nodule": sets["nodule"]}
    with pytest.raises(KeyError, match="'zebra'"):
        default_prompts(["Edema", "zebra"])


def test_retrieval_uses_study_groups_as_positives() -> None:
    eye = torch.eye(6)
    texts = [f"r{i}" for i in range(6)]
    data = [{"image": eye[i], "text": texts[i], "group": min(i, 4)} for i in range(6)]
    table = {f"r{i}": eye[i].tolist() for i in range(5)}
    table["r5"] = eye[4].tolist()  # study 4 has two images and two report copies
    metrics = retrieval_report_image(LookupModel(table), data, num_candidates=None, ks=(1, 5))
    # image 5 matches r4/r5 at similarity 0, tied with the 4 wrong reports -> rank 5; all others rank 1
    assert metrics["image2report_R@1"] == pytest.approx(5 / 6) and metrics["image2report_R@5"] == 1.0
    assert metrics["report2image_R@1"] == 1.0


# --------------------------------------------------------------------------- segmentation
def test_segmentation_head_shapes() -> None:
    head = SegmentationHead(small_cnn(), num_classes=3, image_size=SIZE)
    assert head(torch.randn(2, 1, SIZE, SIZE)).shape == (2, 3, SIZE, SIZE)
    odd = SegmentationHead(ENCODERS.build("small-cnn", in_channels=1, widths=[8, 8, 8]), 2, image_size=20)
    assert odd(torch.randn(1, 1, 20, 20)).shape == (1, 2, 20, 20)  # 20 -> 5 -> x4, exact
    with pytest.raises(TypeError, match="feature_map"):
        SegmentationHead(torch.nn.Linear(2, 2), 1, image_size=SIZE)


def test_segmentation_beats_the_all_empty_prediction(splits) -> None:
    result = finetune_segmentation(small_cnn(), splits["train"][:96], splits["val"][:32], splits["test"][:48],
                                   class_names=["square", "stripes"], epochs=8, lr=1e-2, batch_size=16)
    masks = torch.stack([s["masks"] for s in splits["test"][:48]])
    empty = (masks.flatten(2).sum(-1) == 0).float().mean(0)  # empty-on-empty = 1, else 0
    assert result.empty_baseline["square"] == pytest.approx(empty[0].item())
    assert result.empty_baseline["stripes"] == pytest.approx(empty[1].item())
    assert result.dice["square"] > result.empty_baseline["square"] + 0.2
    assert result.dice["mean"] > result.empty_baseline["mean"] + 0.1


def test_small_predicted_masks_are_removed_at_the_area_chosen_on_validation() -> None:
    true = torch.zeros(4, 1, 8, 8, dtype=torch.bool)
    true[0, 0, :4, :4] = True  # one real 16-pixel mask, three empty images
    pred = true.clone()
    pred[1, 0, 0, 0] = pred[2, 0, 7, 7] = True  # single stray pixels on empty images
    assert remove_small_masks(pred, [2]).sum() == 16 and remove_small_masks(pred, [17]).sum() == 0
    # Dice: keeping strays gives (1 + 0 + 0 + 1) / 4; an area of 1-16 pixels gives 1; the smallest such wins
    chosen = choose_min_areas(pred, true, fractions=(0.0, 1 / 64, 2 / 64, 16 / 64, 0.5))
    assert chosen == [2]


# --------------------------------------------------------------------------- report generation
REPORTS = ["No acute cardiopulmonary process.", "Moderate right pleural effusion. No pneumothorax.",
           "Enlarged heart with mild pulmonary edema.", "Small left apical pneumothorax, no effusion."]


def test_vocabulary_round_trip() -> None:
    vocab = ReportVocabulary.build(REPORTS)
    ids = vocab.encode("No pleural zebra.", max_length=8)
    assert ids.tolist()[:5] == [1, vocab.stoi["no"], vocab.stoi["pleural"], 3, 2] and ids.tolist()[5:] == [0] * 3
    assert vocab.decode(ids.tolist()) == "no pleural <unk>"


def test_report_decoder_overfits_four_reports() -> None:
    torch.manual_seed(0)
    memory = torch.randn(4, 5, 8)  # 4 images, 5 tokens of 8 channels
    vocab = ReportVocabulary.build(REPORTS)
    decoder = ReportDecoder(vocab, memory_dim=8, d_model=32, nhead=2, num_layers=1, dim_feedforward=64,
                            dropout=0.0, max_length=16)
    losses = train_report_decoder(decoder, memory, REPORTS, epochs=80, lr=3e-3, batch_size=4)
    assert losses[-1] < 0.05 * losses[0]
    generated = decoder.generate(memory)
    assert bleu_scores(REPORTS, generated)["bleu4"] > 0.95, generated


def test_retrieval_baseline_returns_the_nearest_report() -> None:
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    test = torch.tensor([[0.1, 1.0], [-2.0, 0.5], [3.0, 0.1]])
    assert retrieval_report_baseline(train, ["a", "b", "c"], test) == ["b", "c", "a"]
    with pytest.raises(ValueError, match="2 reports"):
        retrieval_report_baseline(train, ["a", "b"], test)


# --------------------------------------------------------------------------- table and the whole protocol
def test_bench_table_markdown_and_json(tmp_path) -> None:
    table = BenchTable()
    table.add("convirt", "cls_auroc@1%", 0.91234, 0.0123)
    table.add("convirt", "zero_shot_auroc", 0.88)
    table.add_metrics("random", {"cls_auroc@1%": (0.6, 0.05), "seg_dice": math.nan})
    assert table.metrics == ["cls_auroc@1%", "zero_shot_auroc", "seg_dice"]
    assert table.to_markdown() == ("| method | cls_auroc@1% | zero_shot_auroc | seg_dice |\n|---|---|---|---|\n"
                                   "| convirt | 0.912 ± 0.012 | 0.880 | - |\n"
                                   "| random | 0.600 ± 0.050 | - | nan |\n")
    md, js = table.write(tmp_path, stem="bench")
    assert md.read_text() == table.to_markdown()
    assert json.loads(js.read_text()) == {
        "convirt": {"cls_auroc@1%": {"mean": 0.91234, "std": 0.0123}, "zero_shot_auroc": {"mean": 0.88, "std": None}},
        "random": {"cls_auroc@1%": {"mean": 0.6, "std": 0.05}, "seg_dice": {"mean": None, "std": None}}}


def test_run_benchx_fills_one_table(splits, tmp_path) -> None:
    torch.manual_seed(0)
    model = AlignmentModule({
        "embed_dim": 16,
        "towers": {"image": {"encoder": "small-cnn", "params": {"in_channels": 1, "widths": [8, 16]}},
                   "text": {"encoder": "hf-text", "params": {"config": TINY_BERT, "max_length": 32}}},
        "objectives": [{"a": "image", "b": "text", "loss": "clip"}]})
    prompts = {"square": {"positive": ["bright square top left."], "negative": ["no square."]},
               "stripes": {"positive": ["stripes bottom right."], "negative": ["no stripes."]}}
    cfg = BenchXConfig(fractions=(0.5, 1.0), seeds=(0, 1), epochs=3, batch_size=32, prompts=prompts,
                       num_candidates=20, ks=(1, 5), segmentation_epochs=1, generation_epochs=1)
    data = {k: v[:40] for k, v in splits.items()}
    table = run_benchx({"tiny": model}, data["train"], data["val"], data["test"], cfg, out_dir=tmp_path)
    assert list(table.rows) == ["tiny", "all-empty prediction"]
    row = table.rows["tiny"]
    assert {"cls_auroc@50%", "cls_f1@50%", "cls_auroc@100%", "zero_shot_auroc", "image2report_R@1",
            "report2image_R@5", "seg_dice", "gen_bleu4", "gen_rouge_l", "gen_retrieval_bleu1"} <= set(row)
    assert row["cls_auroc@50%"][1] is not None and row["zero_shot_auroc"][1] is None
    assert (tmp_path / "benchx.md").is_file() and (tmp_path / "tiny" / "zero_shot_roc.png").is_file()
    decoded = run_benchx({"tiny": model}, data["train"], data["val"], data["test"],
                         dataclasses.replace(cfg, decode_once=True, tasks=("classification", "retrieval")))
    assert decoded.rows["tiny"]["cls_auroc@100%"] == table.rows["tiny"]["cls_auroc@100%"]
    written = json.loads((tmp_path / "benchx.json").read_text())["tiny"]
    assert {k for k in written if not k.endswith("/per_class")} == set(row)
    assert set(written["zero_shot_auroc/per_class"]) == {"square", "stripes"}
    assert len(table.per_class["cls_auroc@50%"]["tiny"]) == 2  # the fixture names no classes: "0", "1"
    assert "zero_shot_auroc per class:" in (tmp_path / "benchx.md").read_text()


def test_sinusoidal_positions_by_hand() -> None:
    pos = sinusoidal_positions(3, 4)  # frequencies 1 and 1/100
    expected = torch.tensor([[math.sin(p), math.cos(p), math.sin(p / 100), math.cos(p / 100)] for p in range(3)])
    torch.testing.assert_close(pos, expected)
    assert sinusoidal_positions(2, 5).shape == (2, 5)
