"""Training-batch augmentations (``data.augment``)."""
from __future__ import annotations

import pytest
import torch

from alignkit.core.augment import AffineIntensity
from alignkit.core.config import ConfigError, configs_dir, load_config
from alignkit.core.runner import build_datamodule

IDENTITY = dict(translate=0.0, scale=(1.0, 1.0), rotate_degrees=0.0, gain=(1.0, 1.0), bias=(0.0, 0.0))


def _batch(n: int = 3, side: int = 16) -> dict:
    torch.manual_seed(0)
    return {"image": torch.rand(n, 1, side, side), "text": ["a"] * n}


def test_identity_settings_leave_images_unchanged() -> None:
    batch = _batch()
    out = AffineIntensity(**IDENTITY)(batch)
    assert torch.allclose(out["image"], batch["image"], atol=1e-5)
    assert out["text"] is batch["text"]


def test_gain_and_bias_are_affine_in_intensity() -> None:
    batch = _batch(n=2)
    out = AffineIntensity(**{**IDENTITY, "gain": (2.0, 2.0), "bias": (0.5, 0.5)})(batch)["image"]
    assert torch.allclose(out, 2 * batch["image"] + 0.5, atol=1e-5)


def test_integer_pixel_translation_matches_a_roll() -> None:
    side = 16
    x = torch.zeros(1, 1, side, side)
    x[0, 0, 6:10, 6:10] = 1.0
    aug = AffineIntensity(**{**IDENTITY, "translate": 0.25})
    torch.manual_seed(1)  # replay the call's draws: angle (B,), scale (B,), shift (2B,)
    draws = torch.rand(1), torch.rand(1), torch.rand(2)
    torch.manual_seed(1)
    out = aug({"image": x})["image"][0, 0]
    shift_px = (draws[2] * 2 - 1) * 0.25 * 2 * side / 2  # grid units -> pixels (x, y)
    # the square's centre of mass moves by -shift (grid_sample samples the input at the shifted location)
    ys, xs = torch.meshgrid(torch.arange(side).float(), torch.arange(side).float(), indexing="ij")
    com = lambda img: torch.stack([(img * xs).sum() / img.sum(), (img * ys).sum() / img.sum()])  # noqa: E731
    moved = com(out) - com(x[0, 0])
    assert torch.allclose(moved, -shift_px, atol=0.35)


def test_p_zero_keeps_every_sample() -> None:
    batch = _batch()
    out = AffineIntensity(translate=0.2, rotate_degrees=20, gain=(0.5, 1.5), p=0.0)(batch)
    assert torch.allclose(out["image"], batch["image"], atol=1e-6)


def test_bad_settings_and_missing_key_are_clear() -> None:
    with pytest.raises(ConfigError, match="low <= high"):
        AffineIntensity(gain=(1.2, 0.8))
    with pytest.raises(KeyError, match="no 'image'"):
        AffineIntensity()({"pixels": torch.zeros(1, 1, 4, 4)})


def test_config_builds_the_augmentations_and_names_typos(shapes_tiny) -> None:
    overrides = [f"data.params.root={shapes_tiny}", "data.augment=[{name: affine-intensity, params: {translate: 0.1}}]"]
    path = configs_dir() / "core" / "shapes_demo.yaml"
    cfg = load_config(path, overrides)
    dm = build_datamodule(cfg)
    assert len(dm.batch_transforms) == 1 and dm.batch_transforms[0].translate == 0.1
    with pytest.raises(ConfigError, match="affine-intensity"):
        load_config(path, [f"data.params.root={shapes_tiny}", "data.augment=[{name: affine-intensty}]"])
