"""The README's Python API example runs as written against an exported model."""
from __future__ import annotations

import re
from pathlib import Path

import torch

import alignkit

README = Path(__file__).resolve().parents[2] / "README.md"


def _readme_example() -> str:
    text = README.read_text()
    match = re.search(r"<!-- api-example.*?-->\s*```python\n(.*?)```", text, re.S)
    assert match, "README lost its api-example block"
    return match.group(1)


def test_readme_api_example_runs(exported_tiny_model: Path, shapes_tiny: Path, capsys) -> None:
    image = sorted((shapes_tiny / "images" / "test").glob("*.png"))[0]
    scope = {"MODEL_DIR": str(exported_tiny_model), "IMAGE_PATH": str(image)}
    exec(compile(_readme_example(), str(README), "exec"), scope)
    assert scope["z_text"].shape == (2, 128) and scope["z_img"].shape == (1, 128)
    assert scope["pred"].probs.shape == (1, 3) and scope["hits"].indices.shape == (2, 1)
    assert "tensor" in capsys.readouterr().out


def test_loaded_model_matches_checkpoint_embeddings(exported_tiny_model: Path, shapes_tiny: Path) -> None:
    from alignkit.core.config import load_config
    from alignkit.core.runner import load_checkpoint
    run = exported_tiny_model.parent / "tiny"
    original = load_checkpoint(load_config(run / "config.yaml"), run / "checkpoints" / "last.ckpt")
    loaded = alignkit.load(exported_tiny_model)
    texts = ["a tiny red heart at the top", "a big green ring in the middle"]
    with torch.no_grad():
        ref = original.embed("text", texts)
    assert torch.allclose(loaded.embed("text", texts), ref, atol=1e-5)
    image = sorted((shapes_tiny / "images" / "test").glob("*.png"))[:3]
    z = loaded.embed("image", image)
    batch = torch.stack([loaded._image_tensor(p) for p in image])
    with torch.no_grad():
        assert torch.allclose(z, original.embed("image", batch), atol=1e-5)
    # retrieval and zero-shot agree with the embeddings they are built on
    hits = loaded.retrieve(z, z, k=1)
    assert hits.indices.flatten().tolist() == [0, 1, 2]


def test_a_text_given_as_sentences_is_embedded_as_their_mean(exported_tiny_model: Path) -> None:
    loaded = alignkit.load(exported_tiny_model)
    sentences = ["a tiny red heart.", "it is at the top."]
    with torch.no_grad():
        ref = loaded.module.embed("text", [sentences])  # the module's own sentence-list path
    assert torch.allclose(loaded.embed("text", [sentences]), ref, atol=1e-6)
    assert not torch.allclose(loaded.embed("text", [str(sentences)]), ref, atol=1e-3)
