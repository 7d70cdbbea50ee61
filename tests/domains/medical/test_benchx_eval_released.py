"""`alignkit eval --model` of imported released weights without training: BenchX zero-shot and retrieval on a chest
X-ray archive (medical/benchx_eval_released, a BiomedCLIP-layout open_clip checkpoint: timm ViT + BERT, RGB input
from grey radiographs) and retrieval on a paired CSV (core/clip_finetune_openclip's evaluator). The metrics equal the
BenchX protocols run directly on the same model and split, read with the model's own preprocessing."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import alignkit
import alignkit.core.importing.open_clip  # noqa: F401  (registers open-clip)
from alignkit.cli import main
from alignkit.core.importing import import_weights
from alignkit.core.registry import DATASETS
from alignkit.domains.medical.xray.bench.retrieval import retrieval_report_image
from alignkit.domains.medical.xray.bench.zero_shot import zero_shot_multilabel

OPEN_CLIP = Path(__file__).resolve().parents[2] / "fixtures" / "open_clip"


@pytest.fixture(scope="module")
def biomedclip_like(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("biomedclip") / "import"
    return import_weights("open-clip", OPEN_CLIP / "hf_text" / "open_clip_pytorch_model.bin", out,
                          tokenizer=str(OPEN_CLIP / "hf_text" / "bert"), vision_heads="2")


def test_benchx_eval_of_an_imported_model(biomedclip_like: Path, cxr_tiny: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    assert main(["eval", "-c", "medical/benchx_eval_released", "--model", str(biomedclip_like), "--out",
                 str(tmp_path), f"data.params.root={cxr_tiny}", "data.num_workers=0", "data.batch_size=8",
                 "eval.1.params.num_candidates=4"]) == 0
    assert "data.params.image_size: 224 -> 32 (the model folder's preprocessing)" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    model = alignkit.load(biomedclip_like)
    test = DATASETS.build("cxr", layout="mimic", root=str(cxr_tiny), split="test", image_size=32, channels=3,
                          mean=model.preprocess["mean"], std=model.preprocess["std"])
    assert test[0]["image"].shape == (3, 32, 32)
    expected = zero_shot_multilabel(model, test, batch_size=8).auroc
    assert metrics["benchx_zero_shot/auroc_mean"] == pytest.approx(expected["mean"], abs=1e-6)
    assert not math.isnan(metrics["benchx_zero_shot/auroc_mean"])
    ret = retrieval_report_image(model, test, num_candidates=4, batch_size=8)
    for key in ("image2report_R@1", "report2image_R@5"):
        assert metrics[f"benchx_retrieval/{key}"] == pytest.approx(ret[key], abs=1e-6)
    assert (tmp_path / "zero_shot_roc.png").is_file()


def test_grey_radiographs_become_rgb_with_per_channel_statistics(cxr_tiny: Path) -> None:
    grey = DATASETS.build("cxr", layout="mimic", root=str(cxr_tiny), split="test", image_size=32, mean=0.5, std=0.25)
    rgb = DATASETS.build("cxr", layout="mimic", root=str(cxr_tiny), split="test", image_size=32, channels=3,
                         mean=[0.4, 0.5, 0.6], std=[0.2, 0.25, 0.3])
    pixels = grey[0]["image"][0] * 0.25 + 0.5
    for c, (m, s) in enumerate(((0.4, 0.2), (0.5, 0.25), (0.6, 0.3))):
        assert torch.allclose(rgb[0]["image"][c], (pixels - m) / s, atol=1e-5)
    with pytest.raises(ValueError, match="one number or three"):
        DATASETS.build("cxr", layout="mimic", root=str(cxr_tiny), split="test", channels=3, mean=[0.1, 0.2])


def test_paired_csv_retrieval_of_an_imported_clip(shapes_tiny: Path, tmp_path: Path) -> None:
    out = import_weights("open-clip", OPEN_CLIP / "vit_tok" / "epoch_1.pt", tmp_path / "vit",
                         model_config=str(OPEN_CLIP / "vit_tok" / "model_config.json"),
                         tokenizer=str(OPEN_CLIP / "bpe_tiny.txt.gz"))
    assert main(["eval", "-c", "core/clip_finetune_openclip", "--model", str(out), "--out", str(tmp_path / "eval"),
                 f"data.params.root={shapes_tiny}", "data.num_workers=0", "eval.0.params.num_candidates=20"]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert 0.0 <= metrics["retrieval/text2image_R@1"] <= metrics["retrieval/text2image_R@10"] <= 1.0
