"""Text4Point: pixel-feature sampling, the dense image tower, the Text Querying Module, pretraining and segmentation."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from alignkit.core.api import AlignedModel
from alignkit.core.collate import collate_samples
from alignkit.core.losses import clip_loss
from alignkit.core.registry import ENCODERS, MODELS, ConfigError
from alignkit.domains.pointcloud.rgbd.dataset import RGBDFramesDataset
from alignkit.domains.pointcloud.rgbd.files import IGNORE_INDEX
from alignkit.domains.pointcloud.rgbd.synthetic import write_synthetic_scenes
from alignkit.domains.pointcloud.segmentation import SegmentationEvaluator
from alignkit.domains.pointcloud.text4point import (TextQueryingModule, batch_class_names, load_encoder_weights,
                                                    sample_pairs, sample_pixel_features)


@ENCODERS.register("test-tiny-pointnet")
class TinyPointNet(nn.Module):
    """Test-only stand-in for a point tower (one-level PointNet segmentation net): a shared MLP with batch norm,
    concatenated with its max-pool over the cloud, mixed per point."""

    def __init__(self, in_features: int = 3, width: int = 32):
        super().__init__()
        self.local = nn.Sequential(nn.Linear(3 + in_features, width), nn.BatchNorm1d(width), nn.ReLU(),
                                   nn.Linear(width, width), nn.BatchNorm1d(width), nn.ReLU())
        self.mix = nn.Sequential(nn.Linear(2 * width, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Linear(width, width))
        self.output_dim = self.dense_dim = width

    def forward_dense(self, points: Tensor) -> Tensor:
        b, n, _ = points.shape
        h = self.local(points.flatten(0, 1)).view(b, n, -1)
        return self.mix(torch.cat([h, h.amax(1, keepdim=True).expand_as(h)], dim=-1).flatten(0, 1)).view(b, n, -1)

    def forward(self, points: Tensor) -> Tensor:
        return self.forward_dense(points).amax(1)


POINT_TOWER = {"encoder": "test-tiny-pointnet", "params": {"width": 32}}
IMAGE_TOWER = {"encoder": "monai-basicunet", "params": {"dense_dim": 16, "features": [8, 8, 16, 16, 16, 8]}}
TEXT_TOWER = {"encoder": "minilm-l6", "params": {"cache": True}, "frozen": True}


def pretrain_model(**params: Any) -> Any:
    model = {"embed_dim": 16, "towers": {"points": POINT_TOWER, "image": IMAGE_TOWER}, "objectives": []}
    return MODELS.build("text4point-pretrain", model=model, optim={"lr": 3e-3}, **params)


def seg_model(lr: float = 1e-2, **params: Any) -> Any:
    model = {"embed_dim": 16, "towers": {"points": POINT_TOWER, "text": TEXT_TOWER}, "objectives": []}
    return MODELS.build("text4point-seg", model=model, optim={"lr": lr}, **params)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("t4p_scenes")
    write_synthetic_scenes(root, num_scenes=8, frames_per_scene=3, image_size=32, seed=0, split_fractions=(6, 0, 2))
    return root


def loader(root: Path, split: str, batch_size: int, shuffle: bool) -> DataLoader:
    ds = RGBDFramesDataset(str(root), split, num_points=256, center=True, seed=None if shuffle else 0)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, drop_last=shuffle, collate_fn=collate_samples)


def fit(module: L.LightningModule, data: DataLoader, steps: int) -> Dict[str, float]:
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, data)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


# --------------------------------------------------------------------------- correspondences


def test_sample_pixel_features_is_an_exact_lookup_at_full_resolution_and_bilinear_below():
    torch.manual_seed(0)
    fmap = torch.randn(2, 5, 6, 7)
    pixels = torch.stack([torch.randint(0, 6, (2, 9)), torch.randint(0, 7, (2, 9))], dim=-1)
    out = sample_pixel_features(fmap, pixels, (6, 7))
    expected = torch.stack([fmap[b, :, pixels[b, :, 0], pixels[b, :, 1]].T for b in range(2)])
    torch.testing.assert_close(out, expected)
    # a half-resolution map that is linear in its column index: the sample is linear in the image column
    low = torch.arange(4.0).view(1, 1, 1, 4).expand(1, 1, 3, 4).contiguous()
    cols = torch.tensor([[1, 2, 5, 0, 7]])
    got = sample_pixel_features(low, torch.stack([torch.zeros_like(cols), cols], -1), (6, 8))[0, :, 0]
    continuous = ((cols[0].float() + 0.5) / 8 * 4 - 0.5).clamp(0, 3)  # map column coordinate, border-clamped
    torch.testing.assert_close(got, continuous)


def test_sample_pairs_draws_distinct_points_per_frame():
    torch.manual_seed(0)
    idx = sample_pairs(3, 50, 20, torch.device("cpu"))
    assert idx.shape == (3, 20) and all(len(set(row.tolist())) == 20 for row in idx)
    assert sample_pairs(2, 8, 100, torch.device("cpu")).shape == (2, 8)


def test_basicunet_encoder_gives_full_resolution_dense_features():
    enc = ENCODERS.build("monai-basicunet", dense_dim=8, features=[4, 4, 8, 8, 8, 4])
    x = torch.randn(2, 3, 36, 44)
    assert enc.forward_dense(x).shape == (2, 8, 36, 44)
    assert enc(x).shape == (2, enc.output_dim) and enc.output_dim == 8
    torch.testing.assert_close(enc(x), enc.forward_dense(x).mean((2, 3)))
    with pytest.raises(ValueError, match="at least 32 px"):
        enc(torch.randn(2, 3, 20, 40))
    with pytest.raises(ConfigError, match="6 widths"):
        ENCODERS.build("monai-basicunet", features=[4, 8])


# --------------------------------------------------------------------------- text querying module


def test_text_querying_module_matches_its_formula_and_is_label_permutation_equivariant():
    torch.manual_seed(0)
    tqm = TextQueryingModule(point_dim=8, text_dim=6, embed_dim=5, num_heads=2, init_temperature=0.1).eval()
    f, t = torch.randn(2, 7, 8), torch.randn(4, 6)
    out = tqm(f, t)
    assert out.features.shape == (2, 7, 8) and out.logits.shape == (2, 7, 4) and out.attention.shape == (2, 7, 4)
    torch.testing.assert_close(out.attention.sum(-1), torch.ones(2, 7))
    # by hand: h = f + MHA(LN f, W_t t, W_t t); f' = h + FFN(LN h); logits = 10 * cos(P f', Q t)
    u = tqm.text_proj(t).expand(2, -1, -1)
    h = f + tqm.attention(tqm.norm_query(f), u, u)[0]
    feats = h + tqm.ffn(tqm.norm_ffn(h))
    logits = 10.0 * F.cosine_similarity(tqm.point_head(feats)[:, :, None], tqm.class_head(t)[None, None], dim=-1)
    torch.testing.assert_close(out.features, feats)
    torch.testing.assert_close(out.logits, logits)
    perm = torch.tensor([2, 0, 3, 1])
    permuted = tqm(f, t[perm])
    torch.testing.assert_close(permuted.logits, out.logits[..., perm])
    torch.testing.assert_close(permuted.features, out.features)  # attention pools the same set of labels
    assert not torch.allclose(tqm(f, torch.randn(4, 6)).features, out.features)  # features depend on the texts
    with pytest.raises(ConfigError, match="divisible"):
        TextQueryingModule(point_dim=10, text_dim=6, num_heads=4)


# --------------------------------------------------------------------------- pretraining


def test_pretraining_loss_is_the_core_clip_loss_on_projected_correspondences(scenes: Path):
    torch.manual_seed(0)
    pre = pretrain_model(num_pairs=32, dense_dim=16)
    batch = next(iter(loader(scenes, "train", 4, False)))
    dense = pre.dense_contrast(batch)
    assert dense.points.shape == dense.pixels.shape == (4 * 32, 16)
    torch.testing.assert_close(dense.loss, clip_loss(dense.points, dense.pixels, pre.dense_loss.logit_scale))
    out = pre.compute_loss(batch)
    assert {"loss", "dense/loss", "dense/accuracy", "dense/logit_scale"} <= set(out)
    out["loss"].backward()
    for name in ("towers.points.encoder.local.0.weight", "towers.image.encoder.net.final_conv.weight",
                 "towers.image.encoder.net.conv_0.conv_0.conv.weight",
                 "point_proj.weight", "pixel_proj.weight", "dense_loss.logit_scale"):
        grad = dict(pre.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    frozen_image = pretrain_model(num_pairs=8)
    frozen_image.towers["image"] = type(frozen_image.towers["image"])(frozen_image.towers["image"].encoder,
                                                                      frozen_image.towers["image"].head, frozen=True)
    frozen_image.compute_loss(batch)["loss"].backward()
    assert all(p.grad is None for p in frozen_image.towers["image"].encoder.parameters())


def test_pretraining_needs_dense_towers():
    model = {"embed_dim": 8, "towers": {"points": POINT_TOWER, "image": {"encoder": "small-cnn",
                                                                          "params": {"widths": [8]}}}}
    with pytest.raises(ConfigError, match="'image' encoder has no dense_dim"):
        MODELS.build("text4point-pretrain", model=model, optim={})
    with pytest.raises(ConfigError, match="no 'pixels' tower"):
        pretrain_model(image="pixels")


# --------------------------------------------------------------------------- segmentation


def test_segmentation_loss_ignores_unlabeled_points_and_caches_label_embeddings(monkeypatch: pytest.MonkeyPatch):
    torch.manual_seed(0)
    seg = seg_model(templates=["a {} in a room"])
    names = ["floor", "wall", "chair"]
    points = torch.randn(2, 10, 6)
    target = torch.randint(0, 3, (2, 10))
    target[:, :4] = IGNORE_INDEX
    batch = {"points": points, "seg": target, "class_names": [names, names]}
    out = seg.compute_loss(batch)
    logits = seg.segment_logits(points, names)
    keep = target != IGNORE_INDEX
    torch.testing.assert_close(out["loss"], F.cross_entropy(logits[keep], target[keep]))
    assert float(out["seg/accuracy"]) == pytest.approx(float((logits.argmax(-1) == target)[keep].float().mean()))
    unlabeled = seg.compute_loss({**batch, "seg": torch.full_like(target, IGNORE_INDEX)})["loss"]
    assert float(unlabeled.detach()) == 0.0

    calls = []
    monkeypatch.setattr(seg.towers["text"], "features", lambda texts: calls.append(texts) or torch.zeros(0))
    seg.label_embeddings(names)  # cached: the text tower is not asked again
    assert calls == []
    expected = F.normalize(seg.towers["text"].encoder.embed_texts(["a chair in a room"]), dim=-1)[0]
    torch.testing.assert_close(seg.label_embeddings(names)[2], expected, atol=1e-5, rtol=0)

    with pytest.raises(ValueError, match="different class_names"):
        batch_class_names({"class_names": [names, ["a", "b", "c"]]})
    unfrozen = {"embed_dim": 8, "towers": {"points": POINT_TOWER, "text": {**TEXT_TOWER, "frozen": False,
                                                                          "params": {}}}}
    with pytest.raises(ConfigError, match="must be frozen"):
        MODELS.build("text4point-seg", model=unfrozen, optim={})


def test_load_encoder_weights_from_a_pretraining_checkpoint(tmp_path: Path):
    torch.manual_seed(0)
    pre = pretrain_model()
    path = tmp_path / "pre.ckpt"
    torch.save({"state_dict": pre.state_dict()}, path)
    seg = seg_model(pretrained=str(path))
    assert seg.load_pretrained() == len(pre.towers["points"].encoder.state_dict())
    for key, value in pre.towers["points"].encoder.state_dict().items():
        torch.testing.assert_close(seg.towers["points"].encoder.state_dict()[key], value)
    with pytest.raises(ConfigError, match=r"no weights under 'towers.cloud.encoder.'.*towers.points.encoder."):
        load_encoder_weights(seg.towers["points"].encoder, str(path), "towers.cloud.encoder.")
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        seg_model(pretrained=str(tmp_path / "missing.ckpt")).load_pretrained()


@pytest.mark.slow
def test_pretraining_then_text_querying_segmentation_beats_the_majority_baseline(scenes: Path, tmp_path: Path):
    """Tiny end-to-end run: dense pretraining, TQM fine-tuning from its checkpoint, segmentation evaluator."""
    torch.manual_seed(0)
    pre = pretrain_model(num_pairs=64, dense_dim=16)
    probe = next(iter(loader(scenes, "train", 6, False)))
    with torch.no_grad():
        before = float(pre.dense_contrast(probe).loss)
    fit(pre, loader(scenes, "train", 6, True), steps=40)
    with torch.no_grad():
        after = float(pre.eval().dense_contrast(probe).loss)
    assert after < min(before, math.log(6 * 64)) - 0.5, (before, after)  # log(B M): matching at chance
    ckpt = tmp_path / "pre.ckpt"
    torch.save({"state_dict": pre.state_dict()}, ckpt)

    seg = seg_model(templates=["a {} in a room"], pretrained=str(ckpt))
    fit(seg, loader(scenes, "train", 6, True), steps=120)
    aligned = AlignedModel(seg, {"model": {}})  # what the runner hands to evaluators
    evaluator = SegmentationEvaluator(plot_clouds=2, progress=False)
    metrics = evaluator(aligned, loader(scenes, "train", 6, False), loader(scenes, "test", 6, False), tmp_path)
    assert metrics["segmentation/mIoU"] >= metrics["segmentation/majority_mIoU"] + 0.15, metrics
    assert (tmp_path / "segmentation_clouds.png").is_file()
