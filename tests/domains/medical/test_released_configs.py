"""ConVIRT / GLoRIA from released weights: each config trains one step from a tiny imported torchvision ResNet-50
(tests/fixtures/torchvision) and a tiny local BERT folder."""
from __future__ import annotations

from pathlib import Path
from typing import List

import pytest

import alignkit.core.importing.torchvision  # noqa: F401  (registers the format)
from alignkit.core.config import configs_dir, load_config
from alignkit.core.encoders.image import FeatureMapEncoder
from alignkit.core.importing import import_weights
from alignkit.core.runner import train

from tests.test_configs_run import SINGLE_PROCESS, TINY_DATA

GLORIA_CKPT = Path(__file__).resolve().parents[2] / "fixtures" / "torchvision" / "gloria_like.ckpt"


def released_overrides(tmp_path: Path) -> List[str]:
    """Overrides pointing a *_from_released config at a tiny imported ResNet-50 (grey stem, as the configs say) and
    a tiny random BERT folder (the packaged MiniLM's tokenizer, 1 layer of width 16)."""
    from transformers import AutoTokenizer, BertConfig, BertModel
    from alignkit.core.encoders.text import packaged_minilm_dir
    imported = import_weights("torchvision-resnet", GLORIA_CKPT, tmp_path / "import", in_channels="1", norm="half")
    tokenizer = AutoTokenizer.from_pretrained(str(packaged_minilm_dir()), local_files_only=True)
    bert = tmp_path / "bert"
    BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=128)).save_pretrained(bert)
    tokenizer.save_pretrained(bert)
    return [f"model.towers.image.params.path={imported / 'towers' / 'image'}", f"model.towers.text.params.path={bert}"]


@pytest.mark.parametrize("name", ["convirt_from_released", "gloria_from_released"])
def test_released_config_runs_one_step(name: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    path = configs_dir() / "medical" / f"{name}.yaml"
    overrides = TINY_DATA["cxr"](request) + SINGLE_PROCESS + ["trainer.precision=32-true", f"out_dir={tmp_path}"]
    cfg = load_config(path, overrides + released_overrides(tmp_path))
    result = train(cfg)
    assert result["trainer"].global_step == 1
    image = result["model"].towers["image"].encoder  # the imported monai-resnet: GLoRIA reads its feature map
    assert isinstance(image, FeatureMapEncoder) and image.in_channels == 1 and image.map_channels == 128
    assert (result["run_dir"] / "metrics.json").is_file()
