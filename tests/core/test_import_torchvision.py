"""torchvision ResNet state dicts -> monai-resnet: outputs equal to torchvision's own (fixtures made by
tests/fixtures/torchvision/make_fixtures.py with torchvision 0.29.1), every real ResNet-50 key mapped, errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import alignkit.core.importing.torchvision  # noqa: F401  (registers the format)
from alignkit.core.importing import WeightMismatchError, import_weights, load_imported_tower
from alignkit.core.importing.torchvision import infer_resnet
from alignkit.core.registry import ENCODERS

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "torchvision"
GLORIA = FIXTURES / "gloria_like.ckpt"
R18 = FIXTURES / "resnet18_narrow.pth"


@pytest.fixture(scope="module")
def ref() -> dict:
    return load_file(str(FIXTURES / "outputs.safetensors"))


def test_every_real_resnet50_key_maps_with_its_shape() -> None:
    real = {k: tuple(v) for k, v in json.loads((FIXTURES / "resnet50_keys.json").read_text()).items()}
    assert len(real) == 320 and real["fc.weight"] == (1000, 2048)
    with torch.device("meta"):
        tower = ENCODERS.build("monai-resnet", depth=50, bias_downsample=False)
    own = {k: tuple(v.shape) for k, v in tower.state_dict().items()}
    assert own == {f"net.{k}": shape for k, shape in real.items() if not k.startswith("fc.")}
    depth, widths, channels = infer_resnet({k: torch.empty(s, device="meta") for k, s in real.items()}, GLORIA)
    assert (depth, widths, channels) == (50, [64, 128, 256, 512], 3)


def test_gloria_checkpoint_round_trips(ref: dict, tmp_path: Path) -> None:
    out = import_weights("torchvision-resnet", GLORIA, tmp_path / "out")
    tower = load_imported_tower(str(out / "towers" / "image")).eval()
    with torch.no_grad():
        torch.testing.assert_close(tower(ref["images"]), ref["r50_pooled"], atol=1e-5, rtol=0)
        tokens = tower.forward_tokens(ref["images"])
    torch.testing.assert_close(tokens, ref["r50_map"].flatten(2).transpose(1, 2), atol=1e-5, rtol=0)
    meta = json.loads((out / "towers" / "image" / "tower.json").read_text())
    assert meta["params"] == {"depth": 50, "spatial_dims": 2, "in_channels": 3, "bias_downsample": False,
                              "widths": [4, 8, 16, 32]}
    assert meta["preprocessing"]["mean"] == [0.485, 0.456, 0.406] and meta["preprocessing"]["image_size"] == 224
    report = json.loads((out / "import.json").read_text())
    assert report["left"] == [] and any("3 checkpoint keys outside prefix 'gloria.img_encoder.model.'" in n
                                        for n in report["notes"])


def test_grey_stem_equals_replicated_rgb(ref: dict, tmp_path: Path) -> None:
    out = import_weights("torchvision-resnet", GLORIA, tmp_path / "out", in_channels="1", norm="half",
                         prefix="gloria.img_encoder.model.", arch="resnet50")
    tower = load_imported_tower(str(out / "towers" / "image")).eval()
    with torch.no_grad():
        torch.testing.assert_close(tower(ref["grey"]), ref["r50_grey_pooled"], atol=1e-5, rtol=0)
    pre = json.loads((out / "towers" / "image" / "tower.json").read_text())["preprocessing"]
    assert pre["channels"] == 1 and pre["mean"] == [0.5] and pre["std"] == [0.5]


def test_resnet18_fc_left_out_or_kept(ref: dict, tmp_path: Path) -> None:
    out = import_weights("torchvision-resnet", R18, tmp_path / "plain")
    report = json.loads((out / "import.json").read_text())
    assert report["left"] == ["fc.bias", "fc.weight"]
    with torch.no_grad():
        tower = load_imported_tower(str(out / "towers" / "image")).eval()
        torch.testing.assert_close(tower(ref["images"]), ref["r18_pooled"], atol=1e-5, rtol=0)
        torch.testing.assert_close(tower.feature_map(ref["images"]), ref["r18_map"], atol=1e-5, rtol=0)
        out = import_weights("torchvision-resnet", R18, tmp_path / "fc", keep_fc="true")
        logits = load_imported_tower(str(out / "towers" / "image")).eval()(ref["images"])
    torch.testing.assert_close(logits, ref["r18_logits"], atol=1e-5, rtol=0)


def test_mismatched_checkpoints_are_listed_or_partial(ref: dict, tmp_path: Path) -> None:
    state = {k: v.contiguous() for k, v in torch.load(R18, weights_only=True).items()}
    state["layer1.1.conv2.weight"] = torch.zeros(4, 4, 1, 1)
    state["extra.weight"] = torch.zeros(2)
    del state["layer4.1.bn2.bias"]
    bad = tmp_path / "bad.safetensors"
    save_file(state, str(bad))
    with pytest.raises(WeightMismatchError) as err:
        import_weights("torchvision-resnet", bad, tmp_path / "out", prefix="", arch="resnet18")
    text = str(err.value)
    assert str(bad) in text and "missing (1): net.layer4.1.bn2.bias" in text
    assert "unexpected (1): net.extra.weight" in text
    assert "net.layer1.1.conv2.weight: checkpoint (4, 4, 1, 1) vs model (4, 4, 3, 3)" in text
    out = import_weights("torchvision-resnet", bad, tmp_path / "out", allow_partial=True, prefix="", arch="resnet18")
    left = json.loads((out / "import.json").read_text())["left"]
    assert {"image.encoder.net.layer4.1.bn2.bias", "image.encoder.net.extra.weight",
            "image.encoder.net.layer1.1.conv2.weight"} <= set(left)
    read_as_r50 = r"198 missing, 0 unexpected, 23 mis-shaped(.|\n)*net.layer1.0.conv3.weight"
    with pytest.raises(WeightMismatchError, match=read_as_r50):  # an R18 file read as a ResNet-50
        import_weights("torchvision-resnet", R18, tmp_path / "r50", arch="resnet50")


def test_option_and_layout_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no key starts with prefix='visual.'"):
        import_weights("torchvision-resnet", GLORIA, tmp_path / "a", prefix="visual.")
    with pytest.raises(ValueError, match="option arch='resnet42'"):
        import_weights("torchvision-resnet", R18, tmp_path / "b", arch="resnet42")
    with pytest.raises(ValueError, match="option keep_fc='maybe'"):
        import_weights("torchvision-resnet", R18, tmp_path / "c", keep_fc="maybe")
    with pytest.raises(ValueError, match="keep_fc=true but the checkpoint has no fc"):
        import_weights("torchvision-resnet", GLORIA, tmp_path / "d", keep_fc="true")
    save_file({"visual.proj": torch.zeros(2)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(ValueError, match="no torchvision ResNet found"):
        import_weights("torchvision-resnet", tmp_path / "x.safetensors", tmp_path / "e")
