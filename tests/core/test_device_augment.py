"""Device augmentations on video clips and observation windows: one draw per sample shared by its frames, the
same draws as on single images, DrQ shifts equal to a padded crop."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from alignkit.core.augment import AffineIntensity, RandomShift
from alignkit.core.registry import ConfigError


def test_affine_intensity_warps_every_frame_of_a_clip_alike() -> None:
    clip = torch.rand(3, 2, 5, 12, 12)  # (B, C, T, H, W), an echo batch
    augment = AffineIntensity(key="video", translate=0.1, rotate_degrees=10)
    torch.manual_seed(0)
    out = augment({"video": clip})["video"]
    for t in range(clip.shape[2]):  # each frame as an image batch with the same seed: identical
        torch.manual_seed(0)
        frame = augment({"video": clip[:, :, t]})["video"]
        assert torch.allclose(out[:, :, t], frame, atol=1e-6)
    window = clip.transpose(1, 2).contiguous()  # (B, T, C, H, W), a robot observation window
    torch.manual_seed(0)
    assert torch.allclose(augment({"video": window})["video"].transpose(1, 2), out, atol=1e-6)


def _reference_shift(x: torch.Tensor, dy: int, dx: int, pad: int) -> torch.Tensor:
    flat = x.reshape(-1, *x.shape[-2:])[:, None]
    padded = F.pad(flat, (pad, pad, pad, pad), mode="replicate")[:, 0]
    return padded[:, dy:dy + x.shape[-2], dx:dx + x.shape[-1]].reshape(x.shape)


def test_random_shift_is_a_replicate_padded_crop_shared_by_frames() -> None:
    batch = {f"observation.images.{camera}": torch.rand(4, 3, 3, 10, 9) for camera in ("top", "wrist")}
    torch.manual_seed(1)
    out = RandomShift(keys=list(batch), pad=3, same_for_keys=True)(batch)
    torch.manual_seed(1)
    offsets = torch.randint(0, 7, (4, 2))
    for key in batch:
        for b, (dy, dx) in enumerate(offsets.tolist()):
            assert torch.equal(out[key][b], _reference_shift(batch[key][b], dy, dx, 3))
    torch.manual_seed(2)
    draws = torch.stack([RandomShift(pad=2)._offsets(1, torch.device("cpu"))[0] for _ in range(4000)])
    counts = torch.bincount(draws.flatten(), minlength=5).float() / draws.numel()
    assert torch.allclose(counts, torch.full((5,), 0.2), atol=0.02)  # U{0..2 pad}


def test_random_shift_errors() -> None:
    with pytest.raises(KeyError, match="no \\['video'\\]"):
        RandomShift(keys=["video"])({"image": torch.zeros(1, 1, 4, 4)})
    with pytest.raises(ConfigError, match="pad >= 0"):
        RandomShift(pad=-1)


def test_random_shift_from_a_config_entry() -> None:
    from alignkit.core.registry import AUGMENTATIONS
    AUGMENTATIONS.check_params("random-shift", {"keys": ["observation.images.top"], "pad": 4}, "data.augment[0].params")
    shift = AUGMENTATIONS.build("random-shift", keys=["observation.images.top"], pad=0)
    x = torch.rand(2, 4, 3, 8, 8)
    assert torch.equal(shift({"observation.images.top": x})["observation.images.top"], x)
