"""``alignkit import-weights voltron``: tiny V-Cond, V-Dual, V-Gen and R-MVP checkpoints made with Voltron's own code
(tests/fixtures/voltron/make_fixtures.py) import onto ``voltron-released`` and give Voltron's representations to 1e-5;
the robotics loader (``voltron-pretrained``) gives them from [0, 1] frames; shapes are inferred without the config;
a checkpoint that does not fit is refused naming its keys unless ``allow_partial``; and the config
robotics/gr1_voltron_released runs one step over the imported V-Cond."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import alignkit
import alignkit.domains.robotics.importing  # noqa: F401  (registers the "voltron" importer)
from alignkit.core.importing import WeightMismatchError, import_weights, load_imported_tower, read_import_report
from alignkit.domains.robotics.models.voltron import VoltronReleasedEncoder, load_voltron_encoder

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "voltron"
LM = str(FIXTURES / "distilbert-tiny")
ATOL = 1e-5


def expected(name: str) -> dict:
    return dict(np.load(FIXTURES / f"{name}.npz"))


def close(actual: torch.Tensor, want: np.ndarray) -> None:
    torch.testing.assert_close(actual, torch.from_numpy(want), atol=ATOL, rtol=0)


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("voltron")
    return {name: import_weights("voltron", FIXTURES / f"{name}.pt", out / name, language_model=LM)
            for name in ("v-cond", "v-dual", "v-gen", "r-mvp")}


@pytest.mark.parametrize("name", ["v-cond", "v-dual", "v-gen"])
def test_language_conditioned_encoders_give_voltrons_representations(imported, name):
    ref = expected(name)
    encoder = load_imported_tower(imported[name] / "towers" / "image").eval()
    pixels, language = torch.from_numpy(ref["pixels"]), [str(s) for s in ref["language"]]
    with torch.no_grad():
        for mode in ("multimodal", "visual"):
            close(encoder.get_representations(pixels, language, mode=mode), ref[mode])
            close(encoder.get_representations(pixels, None, mode=mode), ref[f"{mode}_blank"])
        close(encoder.get_representations(pixels, [str(ref["tiled_language"][0])], mode="visual"), ref["visual_tiled"])
    assert ref["multimodal"].shape[1] == encoder.num_patches + 20
    report = read_import_report(imported[name])
    assert report["preprocessing"]["image"]["mean"] == [0.485, 0.456, 0.406]
    if name == "v-cond":  # alignkit.load: the tower's (B, D) embedding is the mean visual token, L2-normalised
        model = alignkit.load(imported[name])
        pooled = torch.nn.functional.normalize(torch.from_numpy(ref["visual_blank"]).mean(1), dim=-1)
        torch.testing.assert_close(model.embed("image", pixels), pooled, atol=ATOL, rtol=0)
    assert any(k.startswith("decoder_blocks.") for k in report["left"])  # the MAE decoder is not imported


def test_mae_reproduction_gives_patch_and_cls_tokens(imported):
    ref = expected("r-mvp")
    encoder = load_imported_tower(imported["r-mvp"] / "towers" / "image").eval()
    with torch.no_grad():
        close(encoder.get_representations(torch.from_numpy(ref["pixels"]), mode="patch"), ref["patch"])
        close(encoder.get_representations(torch.from_numpy(ref["pixels"]), mode="cls"), ref["cls"])


@pytest.mark.parametrize("name", ["v-cond", "v-gen", "r-mvp"])
def test_policy_loader_standardises_unit_frames_itself(imported, name):
    ref = expected(name)
    encoder = load_voltron_encoder(str(imported[name]))  # the import folder, as a GR-1 config names it
    frames = torch.from_numpy(ref["raw"]).float() / 255.0
    with torch.no_grad():
        if name == "r-mvp":
            close(encoder.forward_tokens(frames), ref["patch"])
            return
        close(encoder.extract_features(frames, [str(s) for s in ref["language"]]), ref["visual"])
        close(encoder.forward_tokens(frames), ref["visual_blank"])
        if name == "v-cond":  # feature_layer 0: the patch embeddings with positions and the image token
            embedded = encoder.patch2embed(torch.from_numpy(ref["pixels"])) + encoder.encoder_pe + encoder.img_token
            first = load_voltron_encoder(str(imported[name]), feature_layer=0).forward_tokens(frames)
            torch.testing.assert_close(first, embedded, atol=ATOL, rtol=0)


def test_shapes_are_inferred_without_the_config(tmp_path):
    shutil.copy(FIXTURES / "v-dual.pt", tmp_path / "v-dual.pt")  # no v-dual-config.json beside it
    with pytest.raises(ValueError, match="head count is not in the weights.*heads=H"):
        import_weights("voltron", tmp_path / "v-dual.pt", tmp_path / "a", language_model=LM)
    with pytest.raises(ValueError, match="model=v-cond: .* holds a v-dual checkpoint"):
        import_weights("voltron", tmp_path / "v-dual.pt", tmp_path / "b", language_model=LM, model="v-cond", heads="2")
    with pytest.raises(ValueError, match="needs language_model="):
        import_weights("voltron", tmp_path / "v-dual.pt", tmp_path / "c", model="v-dual", heads="2")
    out = import_weights("voltron", tmp_path / "v-dual.pt", tmp_path / "d", language_model=LM, model="v-dual",
                         heads="2")
    ref = expected("v-dual")
    with torch.no_grad():
        got = load_imported_tower(out / "towers" / "image").eval().get_representations(
            torch.from_numpy(ref["pixels"]), [str(s) for s in ref["language"]], mode="multimodal")
    close(got, ref["multimodal"])
    # V-Cond's config beside V-Dual's weights
    with pytest.raises(ValueError, match=r"v-cond-config.json: patch_size 8 disagrees .*patch_size 16"):
        import_weights("voltron", tmp_path / "v-dual.pt", tmp_path / "e", language_model=LM,
                       config=str(FIXTURES / "v-cond-config.json"))


def test_a_checkpoint_that_does_not_fit_is_refused_unless_partial(tmp_path):
    state, optim = torch.load(FIXTURES / "v-cond.pt", weights_only=True)
    state["encoder_blocks.0.attn.qkvx.weight"] = state.pop("encoder_blocks.0.attn.qkv.weight")
    state["encoder_blocks.1.layer_scale_mlp.gamma"] = state["encoder_blocks.1.layer_scale_mlp.gamma"][:16]
    torch.save([state, optim], tmp_path / "v-cond.pt")
    shutil.copy(FIXTURES / "v-cond-config.json", tmp_path)
    with pytest.raises(WeightMismatchError) as err:
        import_weights("voltron", tmp_path / "v-cond.pt", tmp_path / "out", language_model=LM)
    message = str(err.value)
    assert str(tmp_path / "v-cond.pt") in message
    for key in ("encoder_blocks.0.attn.qkv.weight", "encoder_blocks.0.attn.qkvx.weight",
                "encoder_blocks.1.layer_scale_mlp.gamma: checkpoint (16,) vs model (32,)"):
        assert key in message
    out = import_weights("voltron", tmp_path / "v-cond.pt", tmp_path / "out", language_model=LM,
                         allow_partial=True)
    left = read_import_report(out)["left"]
    assert {"image.encoder.encoder_blocks.0.attn.qkv.weight", "image.encoder.encoder_blocks.0.attn.qkvx.weight",
            "image.encoder.encoder_blocks.1.layer_scale_mlp.gamma"} <= set(left)


def test_gr1_voltron_released_config_runs_one_step_on_the_imported_encoder(imported, tmp_path):
    from alignkit.core.config import configs_dir, load_config
    from alignkit.core.runner import train
    from alignkit.domains.robotics.synthetic import write_synthetic_lerobot
    root = write_synthetic_lerobot(tmp_path / "lerobot", 3, 6, cameras=["image_0"], image_size=32, state_dim=7,
                                   action_dim=7)
    small = ["model.params.width=32", "model.params.depth=1", "model.params.heads=2", "model.params.num_latents=2",
             "model.params.perceiver_depth=1", "model.params.history=2", "data.params.window=2",
             "model.params.frame_offset=1", "model.params.image_size=32", "model.params.frame_patch_size=8"]
    one_step = ["trainer.fast_dev_run=true", "trainer.accelerator=cpu", "trainer.devices=1", "trainer.strategy=auto",
                "trainer.precision=32-true", "trainer.enable_progress_bar=false", "data.batch_size=4",
                "data.num_workers=0", f"out_dir={tmp_path}"]
    cfg = load_config(configs_dir() / "robotics" / "gr1_voltron_released.yaml",
                      [f"data.params.root={root}", "data.params.image_size=32",
                       f"model.params.image_encoder.params.path={imported['v-cond']}", *small, *one_step])
    result = train(cfg)
    assert result["trainer"].global_step == 1
    encoder = result["model"].image_encoder.module  # frozen: a FrozenTower around the imported encoder
    assert isinstance(encoder, VoltronReleasedEncoder) and encoder.normalize
