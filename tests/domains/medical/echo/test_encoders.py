"""Echo video towers: the mean/std temporal pooling against a hand-written reference, shapes, motion sensitivity."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from alignkit.core.registry import ENCODERS, ConfigError
from alignkit.domains.medical.echo.encoders import (FactorisedVideoViT, R2Plus1DEncoder, temporal_pool,
                                                   temporal_smooth)


def test_temporal_pool_reference():
    frames = torch.tensor([[[1.0, 0.0], [3.0, 0.0], [5.0, 0.0]]])  # (B=1, T=3, C=2)
    assert torch.allclose(temporal_pool(frames, "mean"), torch.tensor([[3.0, 0.0]]))
    std = (8.0 / 3.0 + 1e-6) ** 0.5
    assert torch.allclose(temporal_pool(frames, "mean_std"), torch.tensor([[3.0, 0.0, std, 1e-3]]), atol=1e-6)


def test_temporal_smooth_reference():
    frames = torch.tensor([[[0.0], [3.0], [6.0], [0.0]]])  # (B=1, T=4, C=1)
    assert torch.equal(temporal_smooth(frames, 1), frames)
    assert torch.allclose(temporal_smooth(frames, 3)[0, :, 0], torch.tensor([1.5, 3.0, 3.0, 3.0]))  # edges: 2 frames
    # a smooth beat keeps most of its temporal std; the same frames out of order lose most of it
    beat = torch.sin(torch.linspace(0, 2 * torch.pi, 16)).view(1, 16, 1)
    shuffled = beat[:, torch.tensor([0, 8, 3, 12, 5, 14, 1, 10, 7, 15, 2, 9, 4, 13, 6, 11])]
    std = lambda f: float(temporal_smooth(f, 3).std())  # noqa: E731
    assert std(beat) > 0.85 * float(beat.std()) and std(shuffled) < 0.6 * float(beat.std())


def test_r2plus1d_shapes_and_size():
    torch.manual_seed(0)
    encoder = ENCODERS.build("echo-r2plus1d", in_channels=3, widths=[16, 32, 64])
    assert 35_000 < sum(p.numel() for p in encoder.parameters()) < 45_000  # CPU-sized, as the prototype's 42k
    x = torch.randn(2, 3, 8, 32, 32)
    assert encoder(x).shape == (2, encoder.output_dim) == (2, 128)
    assert encoder.forward_tokens(x).shape == (2, 8 * 4 * 4, 64)
    assert ENCODERS.build("echo-r2plus1d", pool="mean").output_dim == 64
    with pytest.raises(ValueError, match=r"\(B, C, D, H, W\)"):
        encoder(torch.randn(2, 3, 32, 32))
    with pytest.raises(ConfigError):
        R2Plus1DEncoder(temporal_kernel=2)
    with pytest.raises(ConfigError, match="temporal_smoothing"):
        R2Plus1DEncoder(temporal_smoothing=2)


def test_std_pooling_sees_motion():
    """A still clip has (almost) zero temporal std; a moving one does not: the feature the EF needs."""
    torch.manual_seed(0)
    encoder = R2Plus1DEncoder(in_channels=1, widths=[8, 16]).eval()
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    radius = torch.tensor([4.0, 6, 8, 10, 12, 10, 8, 6]).view(8, 1, 1)  # a beating disc
    moving = (((yy - 16) ** 2 + (xx - 16) ** 2).sqrt() < radius).float().view(1, 1, 8, 32, 32)
    still = moving[:, :, :1].expand(1, 1, 8, 32, 32)
    with torch.no_grad():
        s_still, s_moving = encoder(still)[0, 16:], encoder(moving)[0, 16:]
    assert torch.allclose(s_still, torch.full_like(s_still, 1e-3), atol=1e-5)  # sqrt(0 + 1e-6)
    assert float(s_moving.max()) > 5e-3


def test_factorised_vit():
    torch.manual_seed(0)
    vit = FactorisedVideoViT(in_channels=3, image_size=32, num_frames=8, patch_size=8, tubelet=2, dim=32, depth=2,
                             heads=4)
    x = torch.randn(2, 3, 8, 32, 32)
    z = vit(x)
    assert z.shape == (2, vit.output_dim) == (2, 64)
    assert vit.forward_tokens(x).shape == (2, 4 * 16, 32)
    z.sum().backward()
    assert vit.embed.weight.grad is not None and vit.temporal_pos.grad is not None
    with pytest.raises(ValueError, match="img_size"):
        vit(torch.randn(1, 3, 8, 64, 64))
    with pytest.raises(ConfigError):
        FactorisedVideoViT(image_size=30, patch_size=8)


CINE = Path(__file__).resolve().parents[4].parent / "shared" / "data" / "medical" / "echo" / "color3d_jpeg_baseline.dcm"


@pytest.mark.skipif(not CINE.is_file(), reason="the shared echo sample data is not present")
def test_embeds_the_real_cine():
    """The real DICOM cine (JPEG Baseline YBR, 120 frames) decoded as training clips and embedded by both towers."""
    pytest.importorskip("pydicom")
    from alignkit.domains.medical.echo.data import EchoClipDecoder
    clip = EchoClipDecoder(num_frames=8, stride=4, clip_start="centre", image_size=32).video(CINE.read_bytes(),
                                                                                              str(CINE))
    assert clip.shape == (3, 8, 32, 32) and clip.std() > 0
    torch.manual_seed(0)
    cnn = R2Plus1DEncoder().eval()
    vit = FactorisedVideoViT(image_size=32, num_frames=8, patch_size=8, dim=32, depth=1, heads=4).eval()
    with torch.no_grad():
        for encoder in (cnn, vit):
            z = encoder(clip[None])
            assert z.shape == (1, encoder.output_dim) and bool(z.isfinite().all())
            assert float(z[0, z.shape[1] // 2:].abs().max()) > 1e-4  # the cine moves: temporal std is not zero
