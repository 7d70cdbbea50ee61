"""Model FLOP counts against the analytic count, the device-peak table and the utilisation formula."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from alignkit.core.flops import FlopCounting, matmul_flops_per_s, peak_bf16_flops, step_flops, utilisation


def test_linear_step_flops_equal_the_analytic_count() -> None:
    """Two layers on a (B, 16) input that needs no gradient: forward 2 B (16*32 + 32*8); backward: the weight
    gradients of both layers (same FLOPs as their forwards) and the input gradient of the second layer only."""
    torch.manual_seed(0)
    B = 4
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    x = torch.randn(B, 16)
    first, second = 2 * B * 16 * 32, 2 * B * 32 * 8
    expected = (first + second) + (first + 2 * second)
    assert step_flops(lambda: model(x).square().mean().backward()) == expected


def test_conv_step_flops_equal_the_analytic_count() -> None:
    """Conv2d 3 -> 8, 3x3, padding 1 on (2, 3, 10, 10) with an input that needs a gradient: forward
    2 * (2*8*10*10 outputs) * (3*3*3) multiply-adds; the input and weight gradients cost one forward each."""
    conv = nn.Conv2d(3, 8, kernel_size=3, padding=1)
    x = torch.randn(2, 3, 10, 10, requires_grad=True)
    forward = 2 * (2 * 8 * 10 * 10) * (3 * 3 * 3)
    assert step_flops(lambda: conv(x).sum().backward()) == 3 * forward


@pytest.mark.skipif(not hasattr(torch.ops.mkldnn, "_linear_pointwise"), reason="no oneDNN linear op in this torch")
def test_onednn_linear_counts_as_its_matmul() -> None:
    """The point towers run float32 rows through oneDNN's linear op: counted as ``2 rows in out``, as F.linear."""
    x, w, b = torch.randn(6, 10, 16), torch.randn(8, 16), torch.randn(8)
    onednn = step_flops(lambda: torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], ""))
    assert onednn == step_flops(lambda: nn.functional.linear(x, w, b)) == 2 * 60 * 16 * 8


def test_flop_counting_by_hand_matches_step_flops() -> None:
    layer, x = nn.Linear(8, 8), torch.randn(3, 8)
    counting = FlopCounting()
    counting.start()
    layer(x).sum().backward()
    assert counting.stop() == step_flops(lambda: layer(x).sum().backward()) == 2 * (2 * 3 * 8 * 8)
    with pytest.raises(RuntimeError, match="before start"):
        counting.stop()


@pytest.mark.parametrize("name, device, flops", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM", 989.4e12),
    ("NVIDIA H100 PCIe", "H100 PCIe", 756e12),
    ("NVIDIA H100 NVL", "H100 NVL", 835e12),
    ("NVIDIA H200", "H200 SXM", 989.4e12),
    ("NVIDIA A100-SXM4-80GB", "A100", 312e12),
    ("NVIDIA A100 80GB PCIe", "A100", 312e12),
    ("NVIDIA A10", "A10", 125e12),
    ("NVIDIA L4", "L4", 121e12),
    ("NVIDIA L40S", "L40S", 362e12),
])
def test_peak_bf16_flops_by_device_name(name: str, device: str, flops: float) -> None:
    assert peak_bf16_flops(name) == (device, flops)


@pytest.mark.parametrize("name", ["Tesla V100-SXM2-16GB", "NVIDIA A10G", "Tesla T4"])
def test_devices_without_a_listed_bf16_peak(name: str) -> None:
    assert peak_bf16_flops(name) is None


def test_utilisation_formula_and_cpu_matmul_rate() -> None:
    assert utilisation(6e12, 2.0, 1e13) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="step_seconds"):
        utilisation(1.0, 0.0, 1.0)
    rate = matmul_flops_per_s(64, repeats=2)
    assert math.isfinite(rate) and rate > 1e6
