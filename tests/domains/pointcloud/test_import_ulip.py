"""ULIP / ULIP-2 checkpoints imported onto pointbert / pointnet2-ssg equal ULIP's own code's outputs
(tests/fixtures/ulip, made by make_fixtures.py from salesforce/ULIP), and the ULIP-2 zero-shot config runs."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Dict

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import alignkit.domains.pointcloud.evaluate  # noqa: F401  (registers point_zero_shot)
import alignkit.domains.pointcloud.importing  # noqa: F401  (registers ulip-pointbert, ulip-pointnet2)
from alignkit.core.collate import collate_samples
from alignkit.core.config import load_config, to_plain
from alignkit.core.importing import WeightMismatchError, import_weights, load_imported_tower
from alignkit.core.registry import DATASETS, ENCODERS, ConfigError
from alignkit.core.runner import evaluate
from alignkit.domains.pointcloud.models.pointbert import PointBERT
from alignkit.domains.pointcloud.ops import farthest_point_sample, gather_points
from alignkit.domains.pointcloud.prompts import MODELNET40_64
from alignkit.domains.pointcloud.synthetic import write_synthetic_modelnet

ROOT = Path(__file__).resolve().parents[3]
FIX = ROOT / "tests" / "fixtures" / "ulip"
OPEN_CLIP = ROOT / "tests" / "fixtures" / "open_clip"
CONFIG = ROOT / "src" / "alignkit" / "configs" / "pointcloud" / "ulip2_zeroshot_modelnet40.yaml"
REF = dict(np.load(FIX / "ulip_outputs.npz"))
CASES = {
    "ulip2_pointbert": ("ulip-pointbert", "ulip2_pointbert_xyzrgb.pt",
                        {"config": str(FIX / "ulip2_pointbert_xyzrgb.yaml")}),
    "ulip_pointbert": ("ulip-pointbert", "ulip_pointbert_xyz.pt", {"num_heads": "2", "group_size": "8",
                                                                   "num_groups": "16"}),
    "ulip_pointnet2": ("ulip-pointnet2", "ulip_pointnet2_ssg.pt", {"npoints": "32,8", "radii": "0.4,0.8",
                                                                   "nsamples": "8,8"}),
}
TEXT = {"text": str(OPEN_CLIP / "vit_tok" / "epoch_1.pt"),
        "text_config": str(OPEN_CLIP / "vit_tok" / "model_config.json"),
        "text_tokenizer": str(OPEN_CLIP / "bpe_tiny.txt.gz")}


def ref(name: str) -> torch.Tensor:
    return torch.from_numpy(REF[name])


def imported(case: str, out: Path, **extra: Any) -> Path:
    if "text" in extra:
        import alignkit.core.importing.open_clip  # noqa: F401  (registers "open-clip", which text= calls)
    fmt, ckpt, options = CASES[case]
    return import_weights(fmt, FIX / ckpt, out, **{**options, **extra})


@pytest.mark.parametrize("case", sorted(CASES))
def test_imported_tower_equals_ulip(case: str, tmp_path: Path):
    out = imported(case, tmp_path / "out")
    tower = load_imported_tower(out / "towers" / "points").eval()
    with torch.no_grad():
        points = ref(f"{case}_points")
        torch.testing.assert_close(tower.encoder(points), ref(f"{case}_feat"), atol=1e-5, rtol=0)
        torch.testing.assert_close(tower(points), ref(f"{case}_embed"), atol=1e-5, rtol=0)
    report = json.loads((out / "import.json").read_text())
    assert report["left"] == [] and report["embed_dim"] == REF[f"{case}_embed"].shape[1]
    assert report["preprocessing"]["points"]["normalization"].startswith("unit_sphere")
    assert any("not imported" in n for n in report["notes"])  # the checkpoint's other towers


def test_ulip2_tower_fills_rgb_for_xyz_clouds(tmp_path: Path):
    tower = load_imported_tower(imported("ulip2_pointbert", tmp_path / "out") / "towers" / "points").eval()
    meta = json.loads((tmp_path / "out" / "towers" / "points" / "tower.json").read_text())
    assert meta["preprocessing"] == {"num_points": 96, "sampling": "fps", "features": "xyz+rgb",
                                     "normalization": meta["preprocessing"]["normalization"],
                                     "rgb_for_uncoloured": 0.4}
    with torch.no_grad():  # ULIP-2's loader gives uncoloured clouds rgb = 0.4
        torch.testing.assert_close(tower.encoder(ref("ulip2_pointbert_points")[..., :3]),
                                   ref("ulip2_pointbert_grey_feat"), atol=1e-5, rtol=0)


def test_ulip_fps_skips_points_at_the_origin_as_the_cuda_kernel():
    points, centres = ref("fps_points"), ref("fps_centres")
    model = PointBERT(style="ulip", num_groups=12, group_size=4, dense_mlp=())
    got = gather_points(points, farthest_point_sample(model.fps_input(points), 12))
    torch.testing.assert_close(got, centres, atol=0, rtol=0)
    plain = gather_points(points, farthest_point_sample(points, 12))
    assert not torch.equal(plain, centres)  # the fixture is one where the kernel's rule matters


def _edited_checkpoint(tmp_path: Path) -> Path:
    with torch.serialization.safe_globals([argparse.Namespace]):  # ULIP saves its args beside the weights
        ckpt = torch.load(FIX / "ulip_pointnet2_ssg.pt", weights_only=True)
    state: Dict[str, torch.Tensor] = ckpt["state_dict"]
    del state["module.point_encoder.sa2.mlp_bns.1.running_var"]
    state["module.point_encoder.sa9.extra"] = torch.zeros(2)
    state["module.point_encoder.fc2.weight"] = torch.zeros(12, 7)
    path = tmp_path / "edited.pt"
    torch.save(ckpt, path)
    return path


def test_mismatched_checkpoint_names_its_keys_and_partial_import_lists_them(tmp_path: Path):
    path = _edited_checkpoint(tmp_path)
    options = CASES["ulip_pointnet2"][2]
    with pytest.raises(WeightMismatchError) as err:
        import_weights("ulip-pointnet2", path, tmp_path / "out", **options)
    message = str(err.value)
    assert str(path) in message
    for key in ("levels.1.mlp.4.running_var", "sa9.extra",
                "global_head.4.weight: checkpoint (12, 7) vs model (12, 24)"):
        assert key in message
    out = import_weights("ulip-pointnet2", path, tmp_path / "partial", allow_partial=True, **options)
    left = json.loads((out / "import.json").read_text())["left"]
    assert left == ["points.encoder.global_head.4.weight", "points.encoder.levels.1.mlp.4.running_var",
                    "points.encoder.sa9.extra"]


def test_wrong_format_yaml_and_options_raise_naming_them(tmp_path: Path):
    with pytest.raises(ValueError, match=r"module\.point_encoder\.sa<i>"):
        import_weights("ulip-pointnet2", FIX / "ulip_pointbert_xyz.pt", tmp_path / "a")
    with pytest.raises(ValueError, match=r"encoder\.first_conv\.0\.weight"):
        import_weights("ulip-pointbert", FIX / "ulip_pointnet2_ssg.pt", tmp_path / "b")
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text((FIX / "ulip2_pointbert_xyzrgb.yaml").read_text().replace("depth: 2", "depth: 18"))
    with pytest.raises(ValueError, match=r"model\.depth = 18 but the checkpoint .* has 2"):
        import_weights("ulip-pointbert", FIX / "ulip2_pointbert_xyzrgb.pt", tmp_path / "c", config=str(wrong))
    with pytest.raises(ValueError, match="unknown option 'num_group'"):
        import_weights("ulip-pointbert", FIX / "ulip_pointbert_xyz.pt", tmp_path / "d", num_group="16")
    with pytest.raises(ValueError, match=r"option radii: needs 2 values"):
        import_weights("ulip-pointnet2", FIX / "ulip_pointnet2_ssg.pt", tmp_path / "e", radii="0.4")
    with pytest.raises(ValueError, match="joint space is 16-d but .* maps to 12"):
        imported("ulip_pointbert", tmp_path / "f", **TEXT)


def test_ulip2_zero_shot_config_on_synthetic_modelnet(tmp_path: Path):
    """``alignkit eval --model DIR -c ulip2_zeroshot_modelnet40.yaml`` (runner.evaluate) on an imported ULIP-2
    Point-BERT + open_clip text tower: the metrics are ULIP's zero-shot recipe (main.py test_zeroshot_3d_core)
    computed here by hand."""
    out = imported("ulip2_pointbert", tmp_path / "model", **TEXT)
    report = json.loads((out / "import.json").read_text())
    assert report["preprocessing"]["text"]  # the text tower came through the open-clip importer
    classes = ["chair", "table", "lamp"]
    write_synthetic_modelnet(tmp_path / "modelnet", per_class_train=0, per_class_test=2, classes=classes, sections=6)
    cfg = load_config(CONFIG, overrides=[f"data.params.root={tmp_path / 'modelnet'}", "data.params.layout=mesh",
                                         "data.params.num_points=96", "data.params.surface_points=256",
                                         "data.num_workers=0"])
    metrics = evaluate(cfg, model_dir=out, out_dir=tmp_path / "eval")["metrics"]
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["zero_shot/top1"] == metrics["zero_shot/top1"]
    dataset = DATASETS.build(cfg.data.dataset, split=cfg.data.test_split, **to_plain(cfg.data.params))

    tower = load_imported_tower(out / "towers" / "points").eval()
    text = load_imported_tower(out / "towers" / "text").eval()
    with torch.no_grad():
        batch = collate_samples([dataset[i] for i in range(len(dataset))])
        assert batch["points"].shape == (6, 96, 3)  # xyz only: the tower adds rgb = 0.4
        pc = F.normalize(tower(batch["points"]), dim=-1)
        rows = []
        for name in dataset.class_names:
            emb = F.normalize(text([t.format(name) for t in MODELNET40_64]), dim=-1).mean(0)
            rows.append(F.normalize(emb, dim=0))
        pred = (pc @ torch.stack(rows).T).argmax(-1)
    assert metrics["zero_shot/top1"] == pytest.approx((pred == batch["label"]).float().mean().item())
    for k, name in enumerate(dataset.class_names):
        mine = batch["label"] == k
        assert metrics[f"zero_shot/acc/{name}"] == pytest.approx((pred[mine] == k).float().mean().item())
    assert metrics["zero_shot/top5"] == 1.0  # 3 classes


def test_ulip2_zero_shot_config_on_scanobjectnn_h5(tmp_path: Path):
    """``ulip2_zeroshot_scanobjectnn.yaml`` evaluates an imported ULIP-2 model on ScanObjectNN's .h5 layout: every
    test row scored over the 15 classes, top-1 = the hand-computed prompt-ensemble prediction's accuracy."""
    import h5py
    out = imported("ulip2_pointbert", tmp_path / "model", **TEXT)
    rng = np.random.default_rng(0)
    (tmp_path / "sonn" / "main_split").mkdir(parents=True)
    with h5py.File(tmp_path / "sonn" / "main_split" / "test_objectdataset.h5", "w") as f:
        f["data"] = rng.normal(size=(5, 128, 3)).astype(np.float32)
        f["label"] = np.array([0, 3, 7, 7, 14], dtype=np.int64)
    config = CONFIG.with_name("ulip2_zeroshot_scanobjectnn.yaml")
    cfg = load_config(config, overrides=[f"data.params.root={tmp_path / 'sonn'}", "data.params.num_points=64",
                                         "data.num_workers=0"])
    metrics = evaluate(cfg, model_dir=out, out_dir=tmp_path / "eval")["metrics"]
    dataset = DATASETS.build(cfg.data.dataset, split=cfg.data.test_split, **to_plain(cfg.data.params))
    assert len(dataset) == 5 and len(dataset.class_names) == 15
    tower = load_imported_tower(out / "towers" / "points").eval()
    text = load_imported_tower(out / "towers" / "text").eval()
    with torch.no_grad():
        batch = collate_samples([dataset[i] for i in range(len(dataset))])
        pc = F.normalize(tower(batch["points"]), dim=-1)
        rows = [F.normalize(F.normalize(text([t.format(n) for t in MODELNET40_64]), dim=-1).mean(0), dim=0)
                for n in dataset.class_names]
        pred = (pc @ torch.stack(rows).T).argmax(-1)
    assert metrics["zero_shot/top1"] == pytest.approx((pred == batch["label"]).float().mean().item())
    assert metrics["zero_shot/top5"] >= metrics["zero_shot/top1"]


def test_ulip_style_options_are_checked():
    with pytest.raises(ConfigError, match="style"):
        ENCODERS.build("pointbert", style="ulip2")
    tower = ENCODERS.build("pointnet2-ssg", npoints=[8], radii=[0.5], nsamples=[4], mlps=[[8]], global_mlp=[8],
                           fp_mlps=[], head_mlp=[4])
    assert tower.output_dim == 4 and tower(torch.rand(2, 16, 3)).shape == (2, 4)
    with pytest.raises(ValueError, match="without a dense head"):
        tower.forward_dense(torch.rand(2, 16, 3))
